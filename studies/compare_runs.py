"""Two finished runs side by side (e.g. the demo and the study): training, job seconds, the
named cases and the multimodality differences (docs/results.md has the study's, generated).

Prints markdown:

1. every network's training: epochs run, the exported (best) epoch, its validation loss, how
   much the best validation loss fell in the last 5 epochs (a plateau: about 0), whether it
   stopped early (patience) or at the maximum, the last learning rate and the minutes;
2. wall time by stage: the sum of the Snakemake benchmarks' seconds per rule;
3. every method on the named cases under each protocol: RMSE and CRPS (level mean, observed
   days) with their 95 % bootstrap intervals (``intervals.csv``) and spread/skill
   (``scores.csv``), one column per run;
4. the multimodality differences (``oi-both - oi``, ``latent-both - latent-none``,
   ``pixel-both - pixel``) at the given settings under ``physical`` with their intervals
   (``significance.csv``, level mean).

Usage::

    python studies/compare_runs.py results/demo results/study [--settings coarsen-8 gap-8]
        [--days observed]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import pandas as pd
import torch

from slams.config import format_value, run_config
from slams.figures.summary import ordered_methods
from slams.methods import MODALITY_SETS, SCORE_NETWORKS
from slams.paths import (
    autoencoder_name,
    benchmarks_dir,
    losses_path,
    model_path,
    resources_dir,
    score_name,
    table_path,
)

PAIRS = [("oi-both", "oi"), ("latent-both", "latent-none"), ("pixel-both", "pixel")]


def training_rows(run: Path) -> list[list[str]]:
    config = run_config(run)
    rows = []
    networks = [("autoencoder", autoencoder_name(m)) for m in MODALITY_SETS]
    networks += [("score", score_name(space)) for space in SCORE_NETWORKS]
    for kind, name in networks:
        path, model = Path(losses_path(run, name)), Path(model_path(run, name))
        if not (path.exists() and model.exists()):
            continue  # not trained in this run, or still training
        with path.open() as handle:
            history = list(csv.DictReader(handle))
        meta = torch.load(model, map_location="cpu", weights_only=False)["meta"]
        section = config[kind]
        ran = len(history)
        how = "maximum" if ran >= section["epochs"] else "early (patience)"
        last_lr = float(history[-1]["lr"])
        seconds = sum(float(r["seconds"]) for r in history)
        losses = [float(r["val_loss"]) for r in history]
        recent = (
            f"{100 * (1 - min(losses[-5:]) / min(losses[:-5])):+.1f} %" if ran > 5 else "–"
        )  # how much the best validation loss fell in the last 5 epochs
        rows.append([name, f"{ran} / {section['epochs']}", str(meta["epoch"]),
                     f"{meta['val_loss']:.4f}", recent, how, f"{last_lr:.2g}",
                     f"{seconds / 60:.1f}"])  # fmt: skip
    return rows


def stage_rows(run: Path, dataset_resources: Path) -> dict[str, float]:
    seconds: dict[str, float] = {}
    for root in (Path(benchmarks_dir(dataset_resources)), Path(benchmarks_dir(run))):
        for tsv in root.rglob("*.tsv"):
            # benchmarks/<rule>/..., <rule>.tsv or regrid-<resolution>deg/...
            rule = tsv.relative_to(root).parts[0].removesuffix(".tsv").split("-")[0]
            frame = pd.read_csv(tsv, sep="\t")
            seconds[rule] = seconds.get(rule, 0.0) + float(frame["s"].iloc[-1])
    return seconds


def select(frame: pd.DataFrame, **conditions) -> pd.DataFrame:
    """The rows of a scores table where every column equals its condition (values and levels
    compared as the config writes them)."""
    keep = pd.Series(True, index=frame.index)
    for column, wanted in conditions.items():
        values = frame[column]
        if column == "value":
            values = values.map(format_value)
        elif column == "level":
            values = values.astype(str)
        keep &= values == wanted
    return frame[keep]


def _interval(score, low, high, sign: str = "") -> str:
    return f"{score.iloc[0]:{sign}.2f} [{low.iloc[0]:{sign}.2f}, {high.iloc[0]:{sign}.2f}]"


def case_table(runs: list[Path], configs: list[dict], days: str) -> list[str]:
    lines = []
    cases = configs[0]["assimilation"]["cases"]
    frames = []
    for run in runs:
        intervals = pd.read_csv(table_path(run, "intervals"))
        scores = pd.read_csv(table_path(run, "scores"))
        frames.append((intervals, scores))
    names = " | ".join(f"{r.name} RMSE | {r.name} CRPS | {r.name} spread/skill" for r in runs)
    lines.append(f"| protocol | case | method | {names} |")
    lines.append("|---|---|---|" + "---:|" * 3 * len(runs))
    protocols = sorted(set(frames[0][0]["protocol"]), key=["physical", "paper"].index)
    for protocol in protocols:
        for case, setting in cases.items():
            axis, value = setting.split("-", 1)
            methods = ordered_methods(
                list(frames[0][0].query("protocol == @protocol")["method"].unique())
            )
            for method in methods:
                cells = []
                for intervals, scores in frames:
                    where = {"protocol": protocol, "method": method, "axis": axis,
                             "value": value, "days": days}  # fmt: skip
                    pick = select(intervals, level="mean", **where)
                    for metric in ("rmse", "crps"):
                        row = pick[pick.metric == metric]
                        cells.append(_interval(row.score, row.low, row.high) if len(row) else "–")
                    ss = select(scores, metric="spread_skill", **where)
                    cells.append(f"{ss.score.mean():.2f}" if len(ss) else "–")
                lines.append(f"| {protocol} | {case} | {method} | " + " | ".join(cells) + " |")
    return lines


def modality_table(runs: list[Path], settings: list[str], days: str) -> list[str]:
    lines = ["| run | setting | " + " | ".join(f"`{a} − {b}`" for a, b in PAIRS) + " |",
             "|---|---|" + "---:|" * len(PAIRS)]  # fmt: skip
    for run in runs:
        significance = pd.read_csv(table_path(run, "significance"))
        for setting in settings:
            axis, value = setting.split("-", 1)
            cells = []
            for method, reference in PAIRS:
                row = select(significance, protocol="physical", axis=axis, value=value,
                             days=days, level="mean", metric="rmse", method=method,
                             reference=reference)  # fmt: skip
                if len(row):
                    text = _interval(row.difference, row.low, row.high, sign="+")
                    cells.append(f"**{text}**" if bool(row.significant.iloc[0]) else text)
                else:
                    cells.append("–")
            lines.append(f"| {run.name} | {setting} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--settings", nargs="+", default=["coarsen-8", "gap-8"])
    parser.add_argument("--days", default="observed", choices=["observed", "all"])
    args = parser.parse_args()
    configs = [run_config(run) for run in args.runs]
    for run, config in zip(args.runs, configs, strict=True):
        print(f"## {run}: training\n")
        print("| network | epochs run | best epoch | validation loss | fall in the last 5 epochs "
              "| stopped | last rate | min |")  # fmt: skip
        print("|---|---:|---:|---:|---:|---|---:|---:|")
        for row in training_rows(run):
            print("| " + " | ".join(row) + " |")
        # the run's working directory holds results/<name> and resources/<dataset>
        resources = run.resolve().parents[1] / resources_dir(config["data"]["dataset"])
        stages = stage_rows(run, resources)
        print(f"\n## {run}: job seconds by rule (sum over jobs; {sum(stages.values()) / 60:.1f} "
              "min in all)\n")  # fmt: skip
        print("| rule | jobs' seconds |\n|---|---:|")
        for rule, seconds in sorted(stages.items(), key=lambda kv: -kv[1]):
            print(f"| {rule} | {seconds:.0f} |")
        print()
    print(f"## Named cases ({args.days} days, level mean; 95 % intervals)\n")
    print("\n".join(case_table(args.runs, configs, args.days)))
    print(f"\n## Multimodality (physical, RMSE, {args.days} days, level mean)\n")
    print("\n".join(modality_table(args.runs, args.settings, args.days)))


if __name__ == "__main__":
    main()
