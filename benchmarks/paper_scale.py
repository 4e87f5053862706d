"""The paper's grid and network sizes, mechanically: every stage at full size.

Runs the workflow with ``presets/paper-scale.yaml`` (three years of the synthetic world at the
real sources' grids, regridded to 1.5 degrees; the dataset stage; ``config.yaml``'s network
sizes trained for one capped epoch; one analysis of each method family, 2 members x 10 days,
in one pass) and writes one table: every job's seconds, peak resident memory (the kernel's
high-water mark, from the last line of its log; Snakemake's own benchmark samples every 30 s
after its first 30 and can miss a peak) and output size, then the same summed by stage.

Usage::

    python benchmarks/paper_scale.py [--workdir DIR] [--cores 2] [--backend builtin|xesmf]
        [--csv OUT.csv] [--table-only] [--preset presets/smoke.yaml --cell coarsen-2]

``--workdir`` (default ``paper-scale/`` in the current folder) is a Snakemake working folder of
its own: ``resources/`` and ``results/`` go there (~11 GB of raw files and ~3 GB of
results), and a rerun resumes what is missing. ``--table-only`` reads a finished run again.
Not a test: run it by hand on a quiet machine (~28 min on 2 cores, measured).
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from slams.paths import analysis_path, run_dir

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "presets" / "paper-scale.yaml"
METHODS = ("pixel", "latent-none", "oi", "climatology")
RUN_LOG = "paper-scale-run.log"
PEAK = re.compile(r"peak resident memory (\d+) MB, CPU (\d+) s")
STAGES = ("synthetic", "regrid", "dataset", "train_autoencoder", "encode", "train_score",
          "oi_background", "assimilate")  # fmt: skip


def targets(preset: Path, cell: str) -> list[str]:
    """One analysis of each method family under the physical protocol, at ``cell``."""
    import yaml

    name = yaml.safe_load(preset.read_text())["name"]
    axis, value = cell.split("-", 1)
    return [analysis_path(run_dir(name), "physical", method, axis, value) for method in METHODS]


def run_workflow(workdir: Path, cores: int, backend: str, preset: Path, cell: str,
                 overlays: list[Path]) -> float:  # fmt: skip
    """Snakemake on the targets, its output teed to ``workdir/RUN_LOG``; the wall seconds."""
    overlay = workdir / "backend.yaml"
    overlay.write_text(f"data:\n  regrid_backend: {backend}\n")
    command = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory",
               str(workdir), *targets(preset, cell), "--cores", str(cores),
               "--rerun-incomplete", "--configfile", str(preset), str(overlay),
               *map(str, overlays)]  # fmt: skip
    started = time.monotonic()
    with (workdir / RUN_LOG).open("a") as log:
        log.write(f"# {' '.join(command)}\n")
        log.flush()
        process = subprocess.Popen(command, cwd=workdir, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)  # fmt: skip
        for line in process.stdout:
            log.write(line)
            if re.match(r"(local)?rule |Finished jobid|\d+ of \d+ steps|Error", line):
                print(line.rstrip(), flush=True)
        process.wait()
    if process.returncode:
        sys.exit(f"snakemake failed (exit {process.returncode}); see {workdir / RUN_LOG}")
    return time.monotonic() - started


def jobs_of(run_log: str) -> list[dict]:
    """The jobs Snakemake listed in its output: rule, wildcards, outputs, log and benchmark."""
    jobs, job = [], None
    for line in run_log.splitlines():
        started = re.match(r"^(?:local)?rule (\w+):$", line)
        if started:
            job = {"rule": started.group(1), "output": [], "log": None, "benchmark": None,
                   "wildcards": ""}  # fmt: skip
            jobs.append(job)
            continue
        if not line.startswith("    "):  # the job's block ends (e.g. at "Error in rule")
            job = None
            continue
        field = re.match(r"^    (output|log|benchmark|wildcards): (.*)$", line)
        if job is not None and field:
            key, value = field.groups()
            job[key] = [v.strip() for v in value.split(",")] if key == "output" else value
    return list({job["log"]: job for job in jobs if job["log"]}.values())  # last listing wins


def measure(workdir: Path, job: dict) -> dict:
    """One job's row: seconds (Snakemake's benchmark), peak memory and CPU (its log's last
    line), Snakemake's sampled peak, and its outputs' size."""
    row = {"stage": job["rule"], "job": job["wildcards"].replace(" ", "")}
    log = workdir / job["log"].split(",")[0].strip()
    found = PEAK.findall(log.read_text()) if log.exists() else []
    row["peak_mb"], row["cpu_s"] = (int(found[-1][0]), int(found[-1][1])) if found else (None, None)
    seconds = sampled = None
    if job["benchmark"] and (workdir / job["benchmark"]).exists():
        with (workdir / job["benchmark"]).open() as handle:
            record = next(csv.DictReader(handle, delimiter="\t"))
        seconds = float(record["s"])
        sampled = float(record["max_rss"]) if record["max_rss"] not in ("", "NA", "-") else None
    row["seconds"], row["sampled_peak_mb"] = seconds, sampled
    row["output_gb"] = (
        sum((workdir / path).stat().st_size for path in job["output"] if (workdir / path).exists())
        / 1e9
    )
    return row


def stage_rows(rows: list[dict]) -> list[dict]:
    by_stage = defaultdict(list)
    for row in rows:
        by_stage[row["stage"]].append(row)
    order = {stage: i for i, stage in enumerate(STAGES)}
    out = []
    for stage in sorted(by_stage, key=lambda s: order.get(s, len(order))):
        group = by_stage[stage]
        peaks = [r["peak_mb"] for r in group if r["peak_mb"] is not None]
        out.append({
            "stage": stage,
            "jobs": len(group),
            "seconds": sum(r["seconds"] or 0 for r in group),
            "largest_job_s": max((r["seconds"] or 0) for r in group),
            "peak_mb": max(peaks) if peaks else None,
            "output_gb": sum(r["output_gb"] for r in group),
        })  # fmt: skip
    return out


def _gb(mb) -> str:
    return "–" if mb is None else f"{mb / 1024:.2f}"


def print_tables(rows: list[dict], wall: float | None) -> None:
    print("| stage | job | seconds | peak memory (GB) | Snakemake's sampled peak (GB) | CPU s | "
          "output (GB) |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|")
    order = {stage: i for i, stage in enumerate(STAGES)}
    for row in sorted(rows, key=lambda r: (order.get(r["stage"], 99), r["job"])):
        print(f"| {row['stage']} | {row['job']} | {row['seconds'] or 0:.0f} | "
              f"{_gb(row['peak_mb'])} | {_gb(row['sampled_peak_mb'])} | {row['cpu_s'] or 0} | "
              f"{row['output_gb']:.3f} |")  # fmt: skip
    print()
    print("| stage | jobs | job seconds | longest job (s) | largest peak (GB) | output (GB) |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in stage_rows(rows):
        print(
            f"| {row['stage']} | {row['jobs']} | {row['seconds']:.0f} | "
            f"{row['largest_job_s']:.0f} | {_gb(row['peak_mb'])} | {row['output_gb']:.3f} |"
        )
    total = sum(r["seconds"] or 0 for r in rows)
    print(f"\n{len(rows)} jobs, {total:.0f} job-seconds"
          + (f", {wall / 60:.1f} min of wall time" if wall else ""))  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("paper-scale"))
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--backend", choices=("builtin", "xesmf"), default="builtin")
    parser.add_argument(
        "--preset",
        type=Path,
        default=PRESET,
        help="overlay on config.yaml (default: presets/paper-scale.yaml)",
    )
    parser.add_argument("--cell", default="coarsen-4", help="the analyses' cell (axis-value)")
    parser.add_argument(
        "--overlay",
        type=Path,
        nargs="*",
        default=[],
        help="further config overlays, after the preset",
    )
    parser.add_argument("--csv", type=Path, help="also write the per-job rows here")
    parser.add_argument("--table-only", action="store_true", help="read a finished run again")
    args = parser.parse_args(argv)
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    wall = None
    if not args.table_only:
        overlays = [path.resolve() for path in args.overlay]
        wall = run_workflow(workdir, args.cores, args.backend, args.preset.resolve(), args.cell,
                            overlays)  # fmt: skip
    rows = [measure(workdir, job) for job in jobs_of((workdir / RUN_LOG).read_text())]
    print_tables(rows, wall)
    if args.csv:
        with args.csv.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
