"""Glue between Snakemake scripts and the library: logging to the rule's log file."""

from __future__ import annotations

import logging
import sys
from pathlib import Path


def setup_logging(log_path: str | Path | None = None, level: int = logging.INFO) -> None:
    """Send library logs (and warnings) to the rule's log file and to stderr."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w"))
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )
    logging.captureWarnings(True)

    def log_uncaught(kind, error, traceback):
        # the job's log file then ends with the error (and its traceback), not only stderr
        logging.getLogger("slams").error(
            "%s: %s", kind.__name__, error, exc_info=(kind, error, traceback)
        )

    sys.excepthook = log_uncaught


def set_threads(threads: int) -> None:
    """Use exactly the cores Snakemake gave the job (torch defaults to all of the machine's)."""
    import torch

    torch.set_num_threads(max(1, int(threads)))


def train_settings(smk, optimisation: dict):
    """:class:`slams.train.TrainSettings` of a training rule: the model's optimisation keys, the
    shared ``training`` section, the device and seed, DataLoader workers from the rule's
    threads (which are also torch's compute threads)."""
    from slams.train import TrainSettings, loader_workers

    set_threads(smk.threads)
    device = smk.params.device
    return TrainSettings(
        epochs=optimisation["epochs"],
        batch_size=optimisation["batch_size"],
        learning_rate=optimisation["learning_rate"],
        weight_decay=optimisation["weight_decay"],
        seed=smk.params.seed,
        device=device,
        precision=smk.params.training_options["precision"],
        compile=smk.params.training_options["compile"],
        workers=loader_workers(smk.threads, device),
    )
