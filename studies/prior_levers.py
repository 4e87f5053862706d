"""Which training levers give a score network the data's spread? One lever at a time.

For each score network named and each lever, the network is trained again on a finished
run's data with that one change to the run's ``score`` settings (same seed, data and sampler;
resumable: checkpoints under ``<out>/checkpoints``), and the spread of its unconditional
samples is measured as ``studies/prior_spread.py`` does (:mod:`slams.studies.prior_spread`:
per level, over the training years' standard deviation, which is 1; the goal is 0.95-1.05).
The ``baseline`` is the run's own network, not retrained. Levers:

- ``ema``: ``score.ema_decay: 0.999`` (sample with a moving average of the weights);
- ``min-snr``: ``score.loss_weighting: min-snr`` (less weight on the lowest noise levels);
- ``wide``: twice the channels at every resolution of the network's U-Net;
- ``wide4``: four times (``config.yaml``'s widths, the paper's, over the study's);
- ``long``: twice the patience and no minimum improvement (training runs longer);
- ``zonal``: ``zonal_mixing`` in the U-Net (beyond the paper: the coarsest level sees the
  zonal mean of its features, :class:`slams.nn.ScoreUNet`);
- ``perturbed``: ``score.input_perturbation: 0.1`` (beyond the paper: the training inputs a
  little noisier than their level, against the sampler's exposure bias,
  :func:`slams.diffusion.denoising_loss`).

Writes ``<out>/prior-levers.csv`` (one row per network and lever: epochs trained, best
validation loss (of the loss it trained with), the paper's loss on the validation windows
(``paper_loss``: comparable across levers), the mean ratio and one column per level; the rows
of the networks and levers not run this time stay) and prints it as a table, with the spread
an exact score keeps under the same sampler. With ``--unfinished``, a lever whose training has
not finished is not trained on: its best checkpoint so far is measured instead (column
``finished`` false; rerun without the flag to resume the training from its checkpoint). Usage::

    python studies/prior_levers.py results/study [--networks latent-none pixel]
        [--levers baseline ema min-snr wide wide4 long zonal perturbed] [--out RUN/levers]
        [--members 8] [--days 8] [--bands] [--unfinished]
"""

from __future__ import annotations

import argparse
import copy
import csv
import logging
import time
from pathlib import Path

import torch

from slams.config import run_config
from slams.diffusion import VPSDE
from slams.methods import score_network
from slams.models import for_sampling, load_model
from slams.paths import model_path, score_name
from slams.studies.prior_spread import (
    RunData,
    band_table,
    exact_ratio,
    network_sampler,
    sample_options,
    split_path,
)
from slams.train import (
    evaluate_loss,
    export_unfinished,
    score_loss,
    train_score,
    window_samples,
)
from slams.workflow import optimisation_settings

LEVERS = {
    "baseline": lambda score, network: None,
    "ema": lambda score, network: score.update(ema_decay=0.999),
    "min-snr": lambda score, network: score.update(loss_weighting="min-snr"),
    "wide": lambda score, network: network.update(hidden=[2 * h for h in network["hidden"]]),
    "wide4": lambda score, network: network.update(hidden=[4 * h for h in network["hidden"]]),
    "long": lambda score, network: score.update(
        patience=2 * score["patience"], min_improvement=0.0
    ),
    "zonal": lambda score, network: network.update(zonal_mixing=True),
    "perturbed": lambda score, network: score.update(input_perturbation=0.1),
}


def lever_network(
    run: Path, config: dict, space: str, lever: str, out: Path, unfinished: bool = False
) -> tuple[Path, bool]:
    """The model file of ``space``'s network under ``lever`` and whether its training finished:
    the run's own for the baseline, else trained (or resumed) into ``out``; with
    ``unfinished``, a training not finished is left as it is and its best checkpoint so far
    exported instead (to ``<name>-<lever>-unfinished.pt``)."""
    if lever == "baseline":
        return Path(model_path(run, score_name(space))), True
    target = out / f"{score_name(space)}-{lever}.pt"
    checkpoints = out / "checkpoints" / f"{score_name(space)}-{lever}"
    if target.exists():
        return target, True
    if unfinished:
        partial = out / f"{score_name(space)}-{lever}-unfinished.pt"
        try:
            export_unfinished(checkpoints, partial)
        except FileNotFoundError as error:
            raise SystemExit(f"{space} {lever}: {error}; train it first") from None
        return partial, False
    score = copy.deepcopy(config["score"])
    network = copy.deepcopy(score_network(config, space))
    LEVERS[lever](score, network)
    paths = {split: split_path(run, space, split) for split in ("train", "validation")}
    settings = optimisation_settings(score, config["training"], config["seed"])
    train_score(
        paths["train"], paths["validation"], space, score["blanket_days"], network,
        settings, target, out / f"{score_name(space)}-{lever}-losses.csv",
        checkpoint_dir=checkpoints,
    )  # fmt: skip
    return target, True


def paper_loss(path: Path, space: str, window: int, net, seed: int) -> float:
    """The paper's denoising loss (uniform weighting, no input perturbation) of ``net`` over
    the validation windows of ``path`` with a fixed noise seed: comparable across levers,
    whichever loss each was trained and validated with."""
    samples = window_samples(path, space, window, overlapping=False)
    loader = torch.utils.data.DataLoader(samples, batch_size=64)
    with torch.no_grad():
        return evaluate_loss(net, score_loss(VPSDE()), loader, torch.device("cpu"), seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--networks", nargs="+", default=["latent-none"])
    parser.add_argument("--levers", nargs="+", default=list(LEVERS), choices=list(LEVERS))
    parser.add_argument("--out", type=Path, help="default: RUN/levers")
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--days", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bands", action="store_true", help="the variance per zonal band too")
    parser.add_argument(
        "--unfinished", action="store_true",
        help="measure a lever whose training has not finished at its best checkpoint so far",
    )  # fmt: skip
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    out = args.out or args.run / "levers"
    out.mkdir(parents=True, exist_ok=True)
    config = run_config(args.run)
    window = config["score"]["blanket_days"]
    data = RunData(args.run)
    table = out / "prior-levers.csv"
    rows = []
    if table.exists():  # the rows of what is not run again stay
        rerun = {(space, lever) for space in args.networks for lever in args.levers}
        with open(table, newline="") as handle:
            rows = [row for row in csv.DictReader(handle)
                    if (row["network"], row["lever"]) not in rerun]  # fmt: skip
        for row in rows:  # rows from before the column: only finished trainings were measured
            row["finished"] = row.get("finished") or True
    bands = []
    for space in args.networks:
        sampler = network_sampler(config, space)  # its own (assimilation.sampler_by_space)
        options = sample_options(sampler, sampler["steps"], sampler["corrections"])
        exact = exact_ratio(max(args.days, window), window, options)
        for lever in args.levers:
            start = time.perf_counter()
            path, finished = lever_network(args.run, config, space, lever, out, args.unfinished)
            net, meta = load_model(path)
            for_sampling(net)
            spread = data.measure(space, net, meta, window, options, args.members, args.days)
            validation = split_path(args.run, space, "validation")
            row = {
                "network": space, "lever": lever, "epochs": meta.get("epochs"),
                "best_epoch": meta.get("epoch"), "finished": finished,
                "val_loss": meta.get("val_loss"),
                "paper_loss": paper_loss(validation, space, window, net, config["seed"]),
                "steps": sampler["steps"], "corrections": sampler["corrections"],
                "exact_score": exact, "mean": float(spread.trained.mean()),
                "min": float(spread.trained.min()),
                "seconds": time.perf_counter() - start,
            }  # fmt: skip
            for hpa, value in zip(data.pressure, spread.trained, strict=True):
                row[f"hpa_{hpa}"] = float(value)
            rows.append(row)
            rows.sort(key=lambda r: (r["network"], list(LEVERS).index(r["lever"])))
            with open(table, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(row), restval="")
                writer.writeheader()
                writer.writerows(rows)
            levels = " ".join(f"{v:.2f}" for v in spread.trained)
            trained = f"{row['best_epoch']}/{row['epochs']}" + ("" if finished else " unfinished")
            print(f"| {space} | {lever} | {trained} | "
                  f"{row['val_loss']:.4f} | {row['paper_loss']:.4f} | {row['mean']:.2f} | "
                  f"{row['min']:.2f} | {exact:.2f} | {levels} |", flush=True)  # fmt: skip
            bands.append(((space, lever), spread.bands))
    if args.bands:
        print("\n".join(band_table(data.train_bands(), bands, ("network", "lever"))))


if __name__ == "__main__":
    main()
