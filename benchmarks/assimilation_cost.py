"""Seconds per analysed day per member of each assimilation method, from a finished run.

Reads Snakemake's per-job benchmark files (``results/<name>/benchmarks/assimilate/<protocol>/
<method>/<setting>.tsv``: wall seconds, peak memory) and the analysis files (members, days), and
prints a markdown table per protocol and method (median over the ablation settings) and the
pixel / latent ratio.
Usage::

    python benchmarks/assimilation_cost.py [results/demo]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import xarray as xr

from slams.paths import analysis_path, benchmarks_dir


def costs(run: Path) -> pd.DataFrame:
    rows = []
    for tsv in sorted((Path(benchmarks_dir(run)) / "assimilate").glob("*/*/*.tsv")):
        protocol, method, setting = tsv.parent.parent.name, tsv.parent.name, tsv.stem
        analysis = Path(analysis_path(run, protocol, method, *setting.split("-", 1)))
        if not analysis.exists():
            continue
        bench = pd.read_csv(tsv, sep="\t")
        with xr.open_dataset(analysis) as ds:
            members, days = ds.sizes["member"], ds.sizes["time"]
        seconds = float(bench["s"].iloc[-1])
        rows.append(
            {
                "protocol": protocol,
                "method": method,
                "setting": setting,
                "seconds": seconds,
                "members": members,
                "days": days,
                "s_per_day_member": seconds / (members * days),
                "max_rss_mb": float(bench["max_rss"].iloc[-1]),
            }
        )
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", type=Path, default=Path("results/demo"),
                        help="a finished run's folder (default: results/demo)")  # fmt: skip
    run = parser.parse_args().run
    table = costs(run)
    if table.empty:
        raise SystemExit(f"no assimilation benchmarks under {run}/benchmarks/assimilate")
    summary = table.groupby(["protocol", "method"]).agg(
        jobs=("setting", "size"),
        members=("members", "first"),
        days=("days", "first"),
        seconds_median=("seconds", "median"),
        s_per_day_member=("s_per_day_member", "median"),
        max_rss_mb=("max_rss_mb", "max"),
        total_s=("seconds", "sum"),
    )
    print(f"run {run}: {len(table)} analyses, {table['seconds'].sum():.0f} s of job time\n")
    print(summary.to_markdown(floatfmt=".3g"))
    per_method = table.groupby("method")["s_per_day_member"].median()
    latent = per_method[per_method.index.str.startswith("latent-")]
    if "pixel" in per_method.index and len(latent):
        ratio = per_method["pixel"] / latent.median()
        print(f"\npixel / latent (median over the latent sets), s per day per member: {ratio:.2f}")


if __name__ == "__main__":
    main()
