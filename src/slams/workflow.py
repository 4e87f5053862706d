"""Glue between Snakemake scripts and the library: logging to the rule's log file."""

from __future__ import annotations

import atexit
import logging
import sys
from pathlib import Path

_LOGGED_RESOURCES = []  # whether this process has logged its peak memory (log_resources)


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
    atexit.register(log_resources)


def log_resources() -> None:
    """Log the process's peak resident memory and CPU time, once: the last line of every job's
    log (at exit; a warm-start child calls it before it ends). The kernel's high-water mark,
    so exact, unlike Snakemake's benchmark, which samples the job every 30 s after its first."""
    if _LOGGED_RESOURCES:
        return
    _LOGGED_RESOURCES.append(True)
    try:
        import resource
    except ImportError:  # not on Unix
        return
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak_kb = usage.ru_maxrss if sys.platform != "darwin" else usage.ru_maxrss / 1024
    logging.getLogger("slams").info(
        "peak resident memory %.0f MB, CPU %.0f s (user %.0f s, system %.0f s)",
        peak_kb / 1024,
        usage.ru_utime + usage.ru_stime,
        usage.ru_utime,
        usage.ru_stime,
    )


def set_threads(threads: int) -> None:
    """Use exactly the cores Snakemake gave the job (torch defaults to all of the machine's),
    and keep freed memory for reuse (:func:`keep_freed_memory`)."""
    import torch

    torch.set_num_threads(max(1, int(threads)))
    keep_freed_memory()


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Have glibc's malloc serve blocks up to ``mmap_threshold`` bytes (its largest allowed,
    32 MiB) from its heap and keep up to ``trim_threshold`` bytes of freed heap, rather than
    mapping every large block afresh and handing it back when freed.

    A PyTorch process on the CPU allocates and frees tensors of a few MB hundreds of times a
    second. By default glibc maps many of them afresh and hands them back when freed (its
    thresholds adapt only to the largest block freed so far), and the kernel zeroes every new
    page on first touch: 220,000-810,000 page faults and 0.6-1.6 s of system time in an 11 s
    latent assimilation job of the demo, ~157,000 and 0.5 s with this (the changelog,
    "The sampling layout"). The process keeps its peak memory until it exits, which a workflow
    job does soon. Nothing else changes: the same numbers, faster. Returns whether it
    applied (not on other C libraries or systems).
    """
    import ctypes

    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(
        mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    )


def train_settings(smk, optimisation: dict):
    """:class:`slams.train.TrainSettings` of a training rule: the model's optimisation keys, the
    shared ``training`` section, the device and seed, DataLoader workers from the rule's
    threads (which are also torch's compute threads)."""
    from slams.train import loader_workers

    set_threads(smk.threads)
    device = smk.params.device
    return optimisation_settings(
        optimisation, smk.params.training_options, smk.params.seed, device,
        loader_workers(smk.threads, device),
    )  # fmt: skip


def optimisation_settings(
    optimisation: dict, options: dict, seed: int, device: str = "cpu", workers: int = 0
):
    """:class:`slams.train.TrainSettings` from a model's config section (``autoencoder`` or
    ``score``: its optimisation keys) and the ``training`` section (``options``)."""
    from slams.train import TrainSettings

    return TrainSettings(
        epochs=optimisation["epochs"],
        patience=optimisation["patience"],
        min_improvement=optimisation["min_improvement"],
        schedule=optimisation["schedule"],
        lr_patience=optimisation["lr_patience"],
        grad_clip=optimisation["grad_clip"],
        max_batches=optimisation["max_batches"],
        batch_size=optimisation["batch_size"],
        learning_rate=optimisation["learning_rate"],
        weight_decay=optimisation["weight_decay"],
        ema_decay=optimisation.get("ema_decay"),
        loss_weighting=optimisation.get("loss_weighting", "uniform"),
        input_perturbation=optimisation.get("input_perturbation", 0.0),
        seed=seed,
        device=device,
        precision=options["precision"],
        compile=options["compile"],
        workers=workers,
    )
