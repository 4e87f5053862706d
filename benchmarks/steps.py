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
        [--tau-reference-steps 0 16 64] [--correction-grid-steps 0 16] [--max-calls 512]
        [--seeds 0 1 2] [--resume]
    python benchmarks/steps.py --from-csv a.csv b.csv [--plot steps.png]

``--tau-reference-steps`` is an axis too (0: the paper's Langevin step, ``tau`` per step;
N: ``tau x N / steps``, a Langevin time that does not grow with the steps), and so is
``--correction-grid-steps`` (0: corrections after every step; N: only at the noise levels of an
N-step grid, whatever the steps, with ``tau x reference / min(steps, N)``; both default to the
run's). ``--max-calls``
leaves out the combinations that cost more network calls; ``--resume`` keeps the rows already
in ``--csv`` and measures only the others, so a long grid can be stopped and continued.
``--from-csv`` measures nothing: it merges the CSVs of earlier runs, prints the choice and
plots. The choice is printed twice: per method and case, and per method over all its cases
(the sampler with the fewest calls that is within 2 % of the best CRPS with spread/skill in
0.8-1.2 in every case measured).

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

from slams.config import method_assimilation, run_config
from slams.diffusion import VPSDE
from slams.diffusion.sampler import corrected_steps
from slams.metrics import score_analysis
from slams.runs import assimilate_case


def network_calls(
    steps: int, corrections: int, min_sigma: float, grid_steps: int | None = None
) -> int:
    """Guided evaluations of one sampling: one per step and one per correction at the steps
    whose noise level ``sigma(t - dt)`` is at least ``min_sigma`` (and, with ``grid_steps``,
    that reach the times of a grid of that many steps; 0 or ``None``: every step)."""
    corrected = corrected_steps(steps, min_sigma, VPSDE(), grid_steps or None)
    return steps + corrections * sum(corrected)


SAMPLER = ["solver", "corrections", "guidance", "min_sigma", "tau_reference_steps", "grid_steps"]
MEASURED = ["method", "case", *SAMPLER, "steps", "calls"]  # one sampler in one cell
MARGIN = 1.02  # the rule: within 2 % of the cell's best mean CRPS ...
WINDOW = (0.8, 1.2)  # ... with spread/skill in this window


def with_seed(frame: pd.DataFrame, default: int = 0) -> pd.DataFrame:
    """``frame`` with a ``seed`` column: rows written before ``--seeds`` existed were measured
    at the run's seed, ``default``; and a ``grid_steps`` column: rows written before
    ``--correction-grid-steps`` existed corrected after every step (0)."""
    if "grid_steps" not in frame:
        frame = frame.assign(grid_steps=0)
    frame = frame.assign(grid_steps=frame.grid_steps.fillna(0).astype(int))
    if "seed" not in frame:
        return frame.assign(seed=default)
    return frame.assign(seed=frame.seed.fillna(default).astype(int))


def read_rows(paths) -> pd.DataFrame:
    """The per-seed rows of the ``steps.py`` CSVs ``paths``, a measurement repeated in several
    kept once (the last)."""
    frame = pd.concat([with_seed(pd.read_csv(p)) for p in paths], ignore_index=True)
    return frame.drop_duplicates(["method", "case", *SAMPLER, "steps", "seed"], keep="last")


def aggregate(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per sampler and cell (``method``, ``case``) of the per-seed rows ``frame``: RMSE,
    CRPS, spread/skill and seconds averaged over its seeds, ``seeds`` measured, ``crps_sd`` (sd
    over seeds) and ``paired_share_sd``: the sd over seeds of its CRPS over the same seed's CRPS
    of the cell's best sampler (lowest mean CRPS), NaN with fewer than two seeds in common."""
    frame = with_seed(frame)
    table = frame.groupby(MEASURED, as_index=False).agg(
        rmse=("rmse", "mean"), crps=("crps", "mean"), spread_skill=("spread_skill", "mean"),
        seconds=("seconds", "mean"), seeds=("seed", "nunique"), crps_sd=("crps", "std"),
    )  # fmt: skip
    best = table.loc[table.groupby(["method", "case"]).crps.idxmin()]
    reference = frame.merge(best[MEASURED], on=MEASURED)[["method", "case", "seed", "crps"]]
    paired = frame.merge(reference, on=["method", "case", "seed"], suffixes=("", "_best"))
    paired["share"] = paired.crps / paired.crps_best
    spread = paired.groupby(MEASURED, as_index=False).agg(paired_share_sd=("share", "std"))
    return table.merge(spread, on=MEASURED, how="left")


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


def scored(frame: pd.DataFrame) -> pd.DataFrame:
    """The per-seed rows ``frame`` averaged over seeds (:func:`aggregate`), with each sampler's
    mean CRPS as a share of its cell's best, and whether it is within 2 % of it with
    spread/skill in 0.8-1.2."""
    frame = aggregate(frame)
    best = frame.groupby(["method", "case"])["crps"].transform("min")
    return frame.assign(
        crps_share_of_best=frame["crps"] / best,
        good=(frame["crps"] / best <= MARGIN) & frame.spread_skill.between(*WINDOW),
    )


def choose(frame: pd.DataFrame) -> None:
    """Print the fewest network calls within 2 % of the best CRPS with spread/skill in 0.8-1.2:
    per method and case, then per method over all its measured cases (``frame`` from
    :func:`scored`)."""
    seeds = frame.seeds.max()
    if seeds > 1:
        noise = frame.paired_share_sd[frame.crps_share_of_best > 1].dropna()  # not the best
        print(f"\nMeans over {seeds} seeds. The noise of a share of the best, seed to seed "
              f"(paired): median sd {noise.median():.3f}, largest {noise.max():.3f}; the "
              f"standard error of a mean over {seeds} seeds is then "
              f"{noise.median() / seeds**0.5:.3f}, against the 2 % margin.")  # fmt: skip
    print("\nThe fewest network calls within 2 % of each case's best CRPS, spread/skill 0.8-1.2:")
    for (method, case), group in frame.groupby(["method", "case"]):
        good = group[group.good]
        if good.empty:
            near = group.sort_values("crps").iloc[0]
            print(f"- {method}, {case}: none (the best CRPS, {near.crps:.3f} K, has spread/skill "
                  f"{near.spread_skill:.2f})")  # fmt: skip
            continue
        best = good.sort_values(["calls", "crps"]).iloc[0]
        print(f"- {method}, {case}: {_name(best)}: {best.calls} calls, CRPS {best.crps:.3f} K "
              f"({best.crps_share_of_best:.3f}{_noise(best)} of the best)")  # fmt: skip
    print("\nPer method in every case measured, and for all of them together (one sampler for "
          "the config; worst share of the best CRPS in brackets):")  # fmt: skip
    frame = frame.assign(cell=frame.method + "/" + frame.case)
    groups = [*frame.groupby("method"), ("all methods", frame)]
    for method, group in groups:
        cases = group.cell.nunique()
        by = group.groupby([*SAMPLER, "steps", "calls"])
        table = by.agg(cases=("cell", "nunique"), good=("good", "sum"),
                       worst=("crps_share_of_best", "max"),
                       ss_low=("spread_skill", "min"), ss_high=("spread_skill", "max"))  # fmt: skip
        table = table[table.cases == cases].reset_index()
        fine = table[table.good == cases].sort_values(["calls", "worst"])
        if not fine.empty:
            best = fine.iloc[0]
            print(f"- {method}: {_name(best)}: {best.calls} calls ({best.worst:.3f})")
            continue
        near = fallback(table)
        spread = f"{near.ss_low:.2f}-{near.ss_high:.2f}"
        if near.worst <= MARGIN:
            print(f"- {method}: none in the spread/skill window; the fallback, within 2 % and "
                  f"nearest the window, is {_name(near)} ({near.calls} calls, worst "
                  f"{near.worst:.3f}, spread/skill {spread})")  # fmt: skip
        else:
            print(f"- {method}: none; the nearest is {_name(near)} ({near.calls} calls, worst "
                  f"{near.worst:.3f}, spread/skill {spread})")  # fmt: skip


def fallback(table: pd.DataFrame) -> pd.Series:
    """The rule's choice when no sampler of ``table`` (one row per sampler: ``worst`` share of
    the best CRPS over the cells, lowest and highest spread/skill ``ss_low``, ``ss_high``,
    ``calls``) meets it in every cell: among the samplers within 2 % of the best in every
    cell, the one whose spread/skill lies nearest the 0.8-1.2 window (its distance rounded to
    0.01, as printed), then the fewest calls, then the smallest worst share; with none within
    2 %, the smallest worst share."""
    within = table[table.worst <= MARGIN]
    if within.empty:
        return table.sort_values("worst").iloc[0]
    outside = pd.concat([WINDOW[0] - within.ss_low, within.ss_high - WINDOW[1]], axis=1)
    distance = outside.max(axis=1).clip(lower=0).round(2)
    return within.assign(distance=distance).sort_values(["distance", "calls", "worst"]).iloc[0]


def _noise(row) -> str:
    """`` ± sd`` of a share of the best over seeds, where there is one."""
    return "" if pd.isna(row.paired_share_sd) else f" ± {row.paired_share_sd:.3f}"


def pivot(frame: pd.DataFrame) -> str:
    """A markdown table, one row per sampler, one column per method and case: CRPS (K), its
    share of that cell's best, spread/skill; RMSE is in the CSV (``frame`` from :func:`scored`)."""
    frame = frame.assign(cell=frame.method + ", " + frame.case)
    cells = sorted(frame.cell.unique())
    keys = [*SAMPLER, "steps", "calls"]
    lines = ["| sampler | calls | " + " | ".join(cells) + " |",
             "|---|---:|" + "---:|" * len(cells)]  # fmt: skip
    for key, group in frame.sort_values(["calls", *SAMPLER]).groupby(keys, sort=False):
        row = dict(zip(keys, key, strict=True))
        by_cell = group.set_index("cell")
        values = []
        for cell in cells:
            if cell not in by_cell.index:
                values.append("–")
                continue
            r = by_cell.loc[cell]
            values.append(f"{r.crps:.3f} ({r.crps_share_of_best:.3f}) / {r.spread_skill:.2f}")
        lines.append(f"| {_name(pd.Series(row))} | {row['calls']} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def _name(row) -> str:
    text = f"{row.solver} {row.steps} + {row.corrections} ({row.guidance}"
    if row.corrections and row.min_sigma:
        text += f", σ ≥ {row.min_sigma:g}"
    if row.corrections and row.tau_reference_steps:
        text += f", τ × {row.tau_reference_steps} / steps"
    if row.corrections and row.grid_steps:
        text += f", corrections at {row.grid_steps} steps' σ"
    return text + ")"


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
            assimilation["sampler"].update(
                steps=n, corrections=corrections, guidance=guidance, solver=solver,
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
