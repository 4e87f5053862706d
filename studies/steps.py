"""Sampler steps against skill: CRPS, RMSE and spread/skill of a finished run's named cases,
assimilated again with 8 ... 512 steps, 0, 1 or 2 corrections, both predictors (``ddim``,
``dpm2m``), SDA and MMPS guidance.

On the networks and test period of a finished run (default ``results/demo``; its own config,
``config.resolved.yaml``), each method assimilates each named case under one protocol
(default ``physical``) with every combination of ``--steps``, ``--corrections``,
``--solvers``, ``--guidance`` and ``--correction-min-sigma``. Scored on the observed days,
means over the levels. Network calls per analysed window batch are ``steps x (1 +
corrections)`` guided evaluations (an SDA evaluation is one forward and one backward pass, an
MMPS one ``mmps_iterations + 1`` backward passes; corrections skipped below
``correction_min_sigma`` are not counted). The last column is the CRPS as a share of the best
CRPS of the same method and case (> 1 is worse), filled in once all rows of that case are in.
Prints a markdown table, one row as soon as it is measured; ``--csv`` also writes the rows,
``--plot`` a figure of CRPS against network calls (one panel per method and case, one line per
solver x corrections x guidance). Usage::

    python studies/steps.py [results/demo] [--methods pixel latent-none]
        [--cases ideal coarse] [--steps 8 16 32 64 128 256 512] [--corrections 0 1 2]
        [--solvers ddim dpm2m] [--guidance sda mmps mmps-cg] [--correction-min-sigma 0]
        [--members 4] [--period 2007-01-01 2007-01-08] [--csv steps.csv] [--plot steps.png]
        [--tau-reference-steps 0 16 64] [--correction-grid-steps 0 16] [--max-calls 512]
        [--seeds 0 1 2] [--resume]
    python studies/steps.py --from-csv a.csv b.csv [--plot steps.png]

``--tau-reference-steps`` is an axis too (0: the paper's Langevin step, ``tau`` per step; N:
``tau x N / steps``, a Langevin time that does not grow with the steps), and so is
``--correction-grid-steps`` (0: corrections after every step; N: only at the noise levels of an
N-step grid, whatever the steps, with ``tau x reference / min(steps, N)``; both default to the
run's). ``--max-calls`` leaves out the combinations that cost more network calls; ``--resume``
keeps the rows already in ``--csv`` and measures only the others, so a long grid can be stopped
and continued. ``--guidance mmps`` takes the run's ``mmps_solver`` (GMRES unless the run says
otherwise); ``mmps-gmres`` and ``mmps-cg`` name the Krylov solver. ``--from-csv`` measures
nothing: it merges the CSVs of earlier runs, prints the choice and plots. The choice is printed
twice: per method and case, and per method over all its cases (the sampler with the fewest
calls that is within 2 % of the best CRPS with spread/skill in 0.8-1.2 in every case measured).

``--seeds`` measures every sampler again with other draws of the observations' noise and of
the sampler's (default: the run's seed; the seeds are the outer loop, so a stopped run holds
whole seeds). The CSV keeps one row per seed (rows of older CSVs without a ``seed`` column are
the run's seed, 0 in every preset); the tables, the choice and the plot are on the means over
the seeds measured. With two or more seeds the choice also prints the noise it stands on: the
seed-to-seed sd of each sampler's share of its cell's best, paired (the same seed's
observations for both), and its standard error over the seeds, against the 2 % margin.
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import pandas as pd
import torch

from slams.assimilation import assimilate_case
from slams.config import method_assimilation, run_config
from slams.diffusion.sampler import network_calls
from slams.metrics import score_analysis
from slams.studies.sampler_choice import (
    SAMPLER,
    choose,
    pivot,
    read_rows,
    scored,
    with_seed,
)


def _line(row: dict) -> tuple:
    return tuple(row[k] for k in SAMPLER)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    panels = sorted({(r["method"], r["case"]) for r in rows})
    columns = len(panels) if len(panels) <= 4 else 3  # rows of three beyond four panels
    lines = -(-len(panels) // columns)
    fig, axes = plt.subplots(lines, columns, figsize=(4.2 * columns, 3.6 * lines), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    # one colour per line over the whole figure (tab20 beyond the ten of the default cycle)
    keys = sorted({_line(r) for r in rows})
    palette = plt.get_cmap("tab10" if len(keys) <= 10 else "tab20")
    colour = {key: palette(i % palette.N) for i, key in enumerate(keys)}
    for ax, (method, case) in zip(axes.flat, panels, strict=False):
        mine = [r for r in rows if (r["method"], r["case"]) == (method, case)]
        for key in sorted({_line(r) for r in mine}):
            solver, corrections, guidance, min_sigma, reference, grid = key
            picked = sorted((r["calls"], r["crps"]) for r in mine if _line(r) == key)
            label = f"{solver} +{corrections}" + (f" {guidance}" if guidance != "sda" else "")
            label += f" σ≥{min_sigma:g}" if min_sigma and corrections else ""
            label += f" τ×{reference}/steps" if reference and corrections else ""
            label += f" at {grid} steps' σ" if grid and corrections else ""
            ax.plot(*zip(*picked, strict=True), marker="o", ms=3,
                    ls="-" if solver == "dpm2m" else "--", label=label,
                    color=colour[key])  # fmt: skip
        ax.set_xscale("log", base=2)
        calls = sorted({r["calls"] for r in mine})
        if len(calls) <= 8:  # few costs (a narrow grid): each one named, not only powers of 2
            ax.set_xticks(calls, [str(c) for c in calls])
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xlabel("network calls per analysis")
        ax.set_title(f"{method}, {case}")
        ax.grid(alpha=0.3)
    for row in axes:
        row[0].set_ylabel("CRPS (K), observed days, level mean")
    axes.flat[len(panels) - 1].legend(fontsize=7)
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
    parser.add_argument("--guidance", nargs="+", default=["sda", "mmps"],
                        choices=["sda", "mmps", "mmps-gmres", "mmps-cg"])  # fmt: skip
    parser.add_argument("--correction-min-sigma", type=float, nargs="+", default=[0.0])
    parser.add_argument("--tau-reference-steps", type=int, nargs="+",
                        help="0: tau per step (the paper's); default: the run's")  # fmt: skip
    parser.add_argument("--correction-grid-steps", type=int, nargs="+",
                        help="corrections at the times of N steps (0: every step); default: "
                             "the run's")  # fmt: skip
    parser.add_argument("--max-calls", type=int, help="leave out samplers that cost more calls")
    parser.add_argument("--members", type=int, help="default: the run's")
    parser.add_argument("--period", nargs=2, metavar=("FIRST", "LAST"), help="default: the run's")
    parser.add_argument("--seeds", type=int, nargs="+", help="default: the run's seed")
    parser.add_argument("--csv", type=Path)
    parser.add_argument("--resume", action="store_true", help="keep the rows already in --csv")
    parser.add_argument("--from-csv", type=Path, nargs="+", help="merge these, measure nothing")
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--table", action="store_true",
                        help="with --from-csv: a row per sampler, a column per cell")  # fmt: skip
    args = parser.parse_args()
    if args.from_csv:
        frame = scored(read_rows(args.from_csv))
        choose(frame)
        if args.table:
            print("\nCRPS (K) (share of the cell's best) / spread/skill:\n")
            print(pivot(frame))
        if args.plot:
            plot(frame.to_dict("records"), args.plot)
        return
    torch.set_num_threads(1)
    config = run_config(args.run)
    section = config["assimilation"]
    if args.members:
        section["members"] = args.members
    if args.period:
        section["period"] = list(args.period)
    references = args.tau_reference_steps or [section["sampler"].get("tau_reference_steps") or 0]
    grids = args.correction_grid_steps or [section["sampler"].get("correction_grid_steps") or 0]
    rows = []
    if args.resume and args.csv and args.csv.exists():
        rows = pd.read_csv(args.csv).drop(columns=["crps_share_of_best", "good"], errors="ignore")
        rows = with_seed(rows, config["seed"]).to_dict("records")
    done = {(r["method"], r["case"], *_line(r), r["steps"], r["seed"]) for r in rows}
    print("| method | case | solver | corrections | σ min | τ reference | correction grid "
          "| guidance | steps | seed | network calls | RMSE (K) | CRPS (K) | spread/skill "
          "| s |")  # fmt: skip
    print("|---|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for seed, method, case in itertools.product(
        args.seeds or [config["seed"]], args.methods, args.cases
    ):
        for solver, corrections, guidance, min_sigma, reference, grid, n in itertools.product(
            args.solvers, args.corrections, args.guidance, args.correction_min_sigma,
            references, grids, sorted(args.steps),
        ):  # fmt: skip
            if corrections == 0 and (
                min_sigma != min(args.correction_min_sigma) or reference != references[0]
                or grid != grids[0]
            ):  # fmt: skip
                continue  # no correction to skip or to scale: the same sampler
            calls = network_calls(n, corrections, min_sigma, grid)
            if args.max_calls and calls > args.max_calls:
                continue
            key = (method, case, solver, corrections, guidance, min_sigma, reference, grid, n,
                   seed)  # fmt: skip
            if key in done:
                continue
            assimilation = method_assimilation(section, method)  # its network's sampler
            # "mmps" is MMPS with the config's Krylov solver; "mmps-gmres", "mmps-cg" name it
            kind, _, linear = guidance.partition("-")
            if linear:
                assimilation["sampler"]["mmps_solver"] = linear
            assimilation["sampler"].update(
                steps=n, corrections=corrections, guidance=kind, solver=solver,
                correction_min_sigma=min_sigma, tau_reference_steps=reference or None,
                correction_grid_steps=grid or None,
            )  # fmt: skip
            start = time.perf_counter()
            ds = assimilate_case(args.run, config, args.protocol, method, case, assimilation,
                                 seed)  # fmt: skip
            seconds = time.perf_counter() - start
            mean = score_analysis(ds, observed_only=True).groupby("metric")["score"].mean()
            row = {"method": method, "case": case, "solver": solver,
                   "corrections": corrections, "min_sigma": min_sigma, "guidance": guidance,
                   "tau_reference_steps": reference, "grid_steps": grid, "steps": n,
                   "seed": seed, "calls": calls,
                   "rmse": mean["rmse"], "crps": mean["crps"],
                   "spread_skill": mean["spread_skill"], "seconds": seconds}  # fmt: skip
            rows.append(row)
            print(f"| {method} | {case} | {solver} | {corrections} | {min_sigma:g} "
                  f"| {reference or '-'} | {grid or '-'} | {guidance} | {n} | {seed} | {calls} "
                  f"| {row['rmse']:.3f} "
                  f"| {row['crps']:.3f} | {row['spread_skill']:.3f} | {seconds:.0f} |",
                  flush=True)  # fmt: skip
            if args.csv:
                pd.DataFrame(rows).to_csv(args.csv, index=False)
    frame = scored(pd.DataFrame(rows))
    choose(frame)
    if args.plot:
        plot(frame.to_dict("records"), args.plot)


if __name__ == "__main__":
    main()
