"""Sampler steps against skill: CRPS, RMSE and spread/skill of a finished run's named cases,
assimilated again with 8 ... 512 steps, 0, 1 or 2 corrections, both predictors (``ddim``,
``dpm2m``), SDA and MMPS guidance.

On the networks and test period of a finished run (default ``results/demo``; its own config,
``config.resolved.yaml``), each method assimilates each named case under one protocol
(default ``physical``) with every combination of ``--steps``, ``--corrections``,
``--solvers``, ``--guidance`` and ``--correction-min-sigma``. Scored on the observed days,
means over the levels. Network calls per analysed window batch are ``steps x (1 +
corrections)`` guided evaluations (an SDA evaluation is one forward and one backward pass, an
MMPS one ``cg_iterations + 1`` backward passes; corrections skipped below
``correction_min_sigma`` are not counted). The last column is the CRPS as a share of the best
CRPS of the same method and case (> 1 is worse), filled in once all rows of that case are in.
Prints a markdown table, one row as soon as it is measured; ``--csv`` also writes the rows,
``--plot`` a figure of CRPS against network calls (one panel per method and case, one line per
solver x corrections x guidance). Usage::

    python benchmarks/steps.py [results/demo] [--methods pixel latent-none]
        [--cases ideal coarse] [--steps 8 16 32 64 128 256 512] [--corrections 0 1 2]
        [--solvers ddim dpm2m] [--guidance sda mmps] [--correction-min-sigma 0]
        [--members 4] [--period 2007-01-01 2007-01-08] [--csv steps.csv] [--plot steps.png]
"""

from __future__ import annotations

import argparse
import copy
import itertools
import time
from pathlib import Path

import pandas as pd
import torch

from slams.config import run_config
from slams.diffusion import VPSDE
from slams.diffusion.sampler import corrected_steps
from slams.metrics import score_analysis
from slams.runs import assimilate_case


def network_calls(steps: int, corrections: int, min_sigma: float) -> int:
    """Guided evaluations of one sampling: one per step and one per correction at the steps
    whose noise level ``sigma(t - dt)`` is at least ``min_sigma``."""
    return steps + corrections * sum(corrected_steps(steps, min_sigma, VPSDE()))


def _line(row: dict) -> tuple:
    return row["solver"], row["corrections"], row["guidance"], row["min_sigma"]


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["method"], r["case"]) for r in rows})
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (method, case) in zip(axes[0], panels, strict=True):
        mine = [r for r in rows if (r["method"], r["case"]) == (method, case)]
        for key in sorted({_line(r) for r in mine}):
            solver, corrections, guidance, min_sigma = key
            picked = sorted((r["calls"], r["crps"]) for r in mine if _line(r) == key)
            label = f"{solver} +{corrections}" + (f" {guidance}" if guidance != "sda" else "")
            label += f" σ≥{min_sigma:g}" if min_sigma and corrections else ""
            ax.plot(*zip(*picked, strict=True), marker="o", ms=3,
                    ls="-" if solver == "dpm2m" else "--", label=label)  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_xlabel("network calls per analysis")
        ax.set_title(f"{method}, {case}")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("CRPS (K), observed days, level mean")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", default="results/demo", type=Path)
    parser.add_argument("--methods", nargs="+", default=["pixel", "latent-none"])
    parser.add_argument("--protocol", default="physical")
    parser.add_argument("--cases", nargs="+", default=["ideal", "coarse"])
    parser.add_argument("--steps", type=int, nargs="+", default=[8, 16, 32, 64, 128, 256, 512])
    parser.add_argument("--corrections", type=int, nargs="+", default=[1])
    parser.add_argument("--solvers", nargs="+", default=["ddim"])
    parser.add_argument("--guidance", nargs="+", default=["sda", "mmps"])
    parser.add_argument("--correction-min-sigma", type=float, nargs="+", default=[0.0])
    parser.add_argument("--tau-reference-steps", type=int, help="default: the run's (none)")
    parser.add_argument("--members", type=int, help="default: the run's")
    parser.add_argument("--period", nargs=2, metavar=("FIRST", "LAST"), help="default: the run's")
    parser.add_argument("--csv", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = run_config(args.run)
    section = config["assimilation"]
    if args.members:
        section["members"] = args.members
    if args.period:
        section["period"] = list(args.period)
    print("| method | case | solver | corrections | σ min | guidance | steps | network calls "
          "| RMSE (K) | CRPS (K) | spread/skill | s |")  # fmt: skip
    print("|---|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    rows = []
    for method in args.methods:
        for case in args.cases:
            for solver, corrections, guidance, min_sigma, n in itertools.product(
                args.solvers, args.corrections, args.guidance, args.correction_min_sigma,
                sorted(args.steps),
            ):  # fmt: skip
                if corrections == 0 and min_sigma != min(args.correction_min_sigma):
                    continue  # no correction to skip: the same sampler
                assimilation = copy.deepcopy(section)
                assimilation["sampler"].update(
                    steps=n, corrections=corrections, guidance=guidance, solver=solver,
                    correction_min_sigma=min_sigma,
                )  # fmt: skip
                if args.tau_reference_steps:
                    assimilation["sampler"]["tau_reference_steps"] = args.tau_reference_steps
                start = time.perf_counter()
                ds = assimilate_case(args.run, config, args.protocol, method, case, assimilation)
                seconds = time.perf_counter() - start
                mean = score_analysis(ds, observed_only=True).groupby("metric")["score"].mean()
                row = {"method": method, "case": case, "solver": solver,
                       "corrections": corrections, "min_sigma": min_sigma, "guidance": guidance,
                       "steps": n, "calls": network_calls(n, corrections, min_sigma),
                       "rmse": mean["rmse"], "crps": mean["crps"],
                       "spread_skill": mean["spread_skill"], "seconds": seconds}  # fmt: skip
                rows.append(row)
                print(f"| {method} | {case} | {solver} | {corrections} | {min_sigma:g} "
                      f"| {guidance} | {n} | {row['calls']} | {row['rmse']:.3f} "
                      f"| {row['crps']:.3f} | {row['spread_skill']:.3f} | {seconds:.0f} |",
                      flush=True)  # fmt: skip
                if args.csv:
                    pd.DataFrame(rows).to_csv(args.csv, index=False)
    frame = pd.DataFrame(rows)
    frame["crps_share_of_best"] = frame["crps"] / frame.groupby(["method", "case"])[
        "crps"
    ].transform("min")
    if args.csv:
        frame.to_csv(args.csv, index=False)
    print("\nThe fewest network calls within 2 % of each case's best CRPS, spread/skill 0.8-1.2:")
    good = frame[(frame.crps_share_of_best <= 1.02) & frame.spread_skill.between(0.8, 1.2)]
    for (method, case), group in good.groupby(["method", "case"]):
        best = group.sort_values(["calls", "crps"]).iloc[0]
        print(f"- {method}, {case}: {best.solver} {best.steps} + {best.corrections} "
              f"(σ ≥ {best.min_sigma:g}, {best.guidance}): {best.calls} calls, CRPS "
              f"{best.crps:.3f} K ({best.crps_share_of_best:.3f} of the best)")  # fmt: skip
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
