"""The sampler-choice rule of ``studies/steps.py``, on its measurements.

Each measured row is one sampler (:data:`SAMPLER`, with its ``steps`` and network ``calls``) in
one cell (a method and a named case) at one seed, with its RMSE, CRPS, spread/skill and
seconds. The rule: the fewest network calls whose mean CRPS over the seeds is within 2 %
(:data:`MARGIN`) of the cell's best with spread/skill in 0.8-1.2 (:data:`WINDOW`), per cell and
for every cell of a method at once (:func:`choose`, :func:`fallback` where none qualifies).
"""

from __future__ import annotations

import pandas as pd

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
    """The per-seed rows of the ``studies/steps.py`` CSVs ``paths``, a measurement repeated in
    several kept once (the last)."""
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
        print(f"- {method}, {case}: {sampler_name(best)}: {best.calls} calls, CRPS "
              f"{best.crps:.3f} K ({best.crps_share_of_best:.3f}{_noise(best)} of the "
              "best)")  # fmt: skip
    print("\nPer method in every case measured, and for all of them together (one sampler for "
          "the config; worst share of the best CRPS in brackets):")  # fmt: skip
    frame = frame.assign(cell=frame.method + "/" + frame.case)
    groups = [*frame.groupby("method"), ("all methods", frame)]
    for method, group in groups:
        near, met = one_choice(group)
        if met:
            print(f"- {method}: {sampler_name(near)}: {near.calls} calls ({near.worst:.3f})")
            continue
        spread = f"{near.ss_low:.2f}-{near.ss_high:.2f}"
        if near.worst <= MARGIN:
            print(f"- {method}: none in the spread/skill window; the fallback, within 2 % and "
                  f"nearest the window, is {sampler_name(near)} ({near.calls} calls, worst "
                  f"{near.worst:.3f}, spread/skill {spread})")  # fmt: skip
        else:
            print(f"- {method}: none; the nearest is {sampler_name(near)} ({near.calls} calls, "
                  f"worst {near.worst:.3f}, spread/skill {spread})")  # fmt: skip


def one_choice(frame: pd.DataFrame) -> tuple[pd.Series, bool]:
    """The rule's sampler for all the cells of ``frame`` together (rows of :func:`scored`, with a
    ``cell`` column): the fewest calls within 2 % of each cell's best with spread/skill in
    0.8-1.2 in every cell, and ``True``; where none is, :func:`fallback`'s and ``False``. The
    row has the sampler, ``calls``, the ``worst`` share of the best and the lowest and highest
    spread/skill ``ss_low``, ``ss_high`` over the cells."""
    cases = frame.cell.nunique()
    table = frame.groupby([*SAMPLER, "steps", "calls"]).agg(
        cases=("cell", "nunique"), good=("good", "sum"), worst=("crps_share_of_best", "max"),
        ss_low=("spread_skill", "min"), ss_high=("spread_skill", "max"),
    )  # fmt: skip
    table = table[table.cases == cases].reset_index()
    fine = table[table.good == cases].sort_values(["calls", "worst"])
    if not fine.empty:
        return fine.iloc[0], True
    return fallback(table), False


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
        lines.append(
            f"| {sampler_name(pd.Series(row))} | {row['calls']} | " + " | ".join(values) + " |"
        )
    return "\n".join(lines)


def sampler_name(row) -> str:
    """A sampler as the tables name it: ``ddim 16 + 1 (sda, τ × 8 / steps)``."""
    text = f"{row.solver} {row.steps} + {row.corrections} ({row.guidance}"
    if row.corrections and row.min_sigma:
        text += f", σ ≥ {row.min_sigma:g}"
    if row.corrections and row.tau_reference_steps:
        text += f", τ × {row.tau_reference_steps} / steps"
    if row.corrections and row.grid_steps:
        text += f", corrections at {row.grid_steps} steps' σ"
    return text + ")"


def choose_eps_scale(frame: pd.DataFrame) -> pd.DataFrame:
    """The sampler rule applied to the epsilon scaling (``assimilation.sampler.eps_scale``),
    which costs no network call: per method, over the rows ``frame`` (``method``, ``case``,
    ``eps_scale``, ``crps``, ``spread_skill``; 1 is off), the scale whose CRPS is within 2 % of
    each case's best over the scales measured with spread/skill in 0.8-1.2 in every case, the
    lowest worst share of the best among those; where none is, :func:`fallback`'s. One row per
    method and scale: ``worst`` share of the best, ``ss_low``, ``ss_high``, ``good`` cases, and
    ``chosen``."""
    best = frame.groupby(["method", "case"])["crps"].transform("min")
    frame = frame.assign(share=frame.crps / best)
    frame = frame.assign(good=(frame.share <= MARGIN) & frame.spread_skill.between(*WINDOW))
    table = frame.groupby(["method", "eps_scale"], as_index=False).agg(
        cases=("case", "nunique"), good=("good", "sum"), worst=("share", "max"),
        ss_low=("spread_skill", "min"), ss_high=("spread_skill", "max"),
    )  # fmt: skip
    table = table.assign(calls=0, chosen=False)
    for method, group in table.groupby("method"):
        complete = group[group.cases == group.cases.max()]
        fine = complete[complete.good == complete.cases].sort_values("worst")
        pick = fine.iloc[0] if not fine.empty else fallback(complete)
        table.loc[(table.method == method) & (table.eps_scale == pick.eps_scale), "chosen"] = True
    return table.drop(columns="calls")
