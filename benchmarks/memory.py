"""How many copies of its ensemble an analysis holds at its peak: the slope of a job's peak
resident memory between two member counts, in units of one member's state.

Each member count runs in a fresh process, as an `assimilate` job does (its threads, glibc's
kept memory, the analysis written to netCDF), on the networks and dataset of a finished run,
with the whole test split (or ``--days`` of it) in one pass, ``--chunk`` Markov-blanket
windows per network call and a few sampler steps (memory does not grow with steps)::

    python benchmarks/memory.py --run results/demo --method pixel --members 4 8
    python benchmarks/memory.py --run /work/ps/results/paper-scale --method latent-none \
        --members 2 4 --days 365 --solver dpm2m --guidance mmps --corrections 1
    python benchmarks/memory.py --check results/demo [--csv out.csv]

With ``--csv`` the slope's row is appended to that file (``benchmarks/measured/copies.csv``
is the one docs/benchmarks.md's table of copies is generated from), labelled by ``--label``
(e.g. the run and the code measured).

``--check RUN`` compares every job of a finished run with :mod:`slams.memory`'s prediction:
the peak its log ends with against the predicted peak, one row per kind of job (the largest
ratio of the kind). Run it on a run made with ``resources.warm_start: false``: a warm-start
child's peak includes the pages it shares with its server.

The state of one member is ``days x channels x height x width`` float32 (the score network's
space: temperature levels for pixel, the latent code for latent methods); the analysis in
kelvin is ``days x levels x H x W``. Everything that grows with the members is counted: the
sampler's state and buffers, the decoded ensemble, its conversion to kelvin and the writing.
``copies`` divides the slope by the state, ``output copies`` by the analysis (the same for
pixel). The slope cancels what does not grow with members: the interpreter, the networks,
their activations per chunk (a chunk is one member's windows at most) and the dataset.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(args: argparse.Namespace) -> dict:
    """One analysis in this process; its peak resident memory and sizes."""
    import torch

    from slams.assimilation import assimilate_case
    from slams.config import method_assimilation, run_config
    from slams.paths import dataset_path
    from slams.workflow import set_threads

    set_threads(args.threads)
    config = run_config(args.run)
    section = method_assimilation(config["assimilation"], args.method)
    section.update(members=args.members, windows_per_call=args.chunk, segment_days=None)
    with __import__("xarray").open_dataset(dataset_path(args.run, "test")) as test:
        times = test["time"].values
    days = min(args.days or len(times), len(times))
    section["period"] = [str(times[0])[:10], str(times[days - 1])[:10]]
    sampler = section["sampler"]
    sampler.update(steps=args.steps, corrections=args.corrections)
    for key in ("solver", "guidance"):
        if getattr(args, key):
            sampler[key] = getattr(args, key)
    started = time.monotonic()
    ds = assimilate_case(args.run, config, args.protocol, args.method, args.case, section)
    with tempfile.TemporaryDirectory() as folder:
        ds.to_netcdf(Path(folder) / "analysis.nc")
    seconds = time.monotonic() - started
    analysis = ds["analysis"]
    member_output = analysis[0].size * 4
    state = _state_bytes(args, config, analysis, days)
    del ds, analysis
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"members": args.members, "days": days, "peak": peak, "member_state": state,
            "member_output": member_output, "seconds": seconds, "solver": sampler["solver"],
            "guidance": sampler["guidance"]}  # fmt: skip


def _state_bytes(args, config, analysis, days: int) -> int:
    """One member's sampled state in bytes (float32)."""
    from slams.methods import METHODS

    spec = METHODS[args.method]
    levels, height, width = analysis.shape[2:]
    if spec.modalities is None:  # pixel space: the levels (and, for pixel-both, 2 more)
        channels = levels + 2 * (args.method == "pixel-both")
        return days * channels * height * width * 4
    from slams.models import load_model
    from slams.paths import autoencoder_name, model_path

    autoencoder, _ = load_model(model_path(args.run, autoencoder_name(spec.modalities)), "cpu")
    down = autoencoder.downsample
    channels = config["autoencoder"]["latent_channels"]
    return days * channels * (height // down) * (width // down) * 4


def measure(args: argparse.Namespace, members: int) -> dict:
    command = [sys.executable, __file__, "--child", "--members", str(members)]
    for key in ("run", "method", "protocol", "case", "days", "chunk", "steps", "corrections",
                "threads", "solver", "guidance"):  # fmt: skip
        value = getattr(args, key)
        if value is not None:
            command += [f"--{key}", str(value)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the analysis with {members} members failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


PEAK = re.compile(r"peak resident memory (\d+) MB")


def job_logs(run: Path, config: dict):
    """``(rule, wildcards, peak MB)`` of every job log of a run (and of its dataset's
    resources/ logs) that ends with its peak."""
    resources = run.parents[1] / "resources" / config["data"]["dataset"] / "logs"
    for log in sorted([*run.glob("logs/**/*.log"), *resources.glob("**/*.log")]):
        found = PEAK.findall(log.read_text(errors="replace"))
        if not found:
            continue
        parts = log.relative_to(run / "logs" if run in log.parents else resources).parts
        rule, wildcards = _rule_of(parts, config)
        yield rule, wildcards, int(found[-1]), log


def _rule_of(parts: tuple[str, ...], config: dict) -> tuple[str, dict]:
    """The rule and wildcards of a log path (``assimilate/physical/pixel/coarsen-4.log``)."""
    from slams.methods import METHODS

    stem = [p.removesuffix(".log") for p in parts]
    head = stem[0]
    if head == "assimilate":
        protocol, method, cell = stem[1:]
        axis, value = cell.split("-", 1)
        rule = "assimilate" if METHODS[method].space else "assimilate_classical"
        return rule, {"protocol": protocol, "method": method, "axis": axis, "value": value}
    if head in ("train_score",):
        return head, {"space": stem[1]}
    if head in ("train_autoencoder", "encode"):
        return head, {"modalities": stem[1]}
    if head == "oi_background":
        return head, {"method": stem[1]}
    if head.startswith("regrid-"):
        source, year = stem[1].rsplit("-", 1)
        return "regrid", {"source": source, "year": year}
    if head == "figures" and len(stem) > 1:
        return (
            "protocol_figures"
            if stem[-1] == "scores"
            else "spread_error_maps"
            if stem[-1] == "spread-error"
            else "case_figure"
        ), {}
    return head, {}


def check(run: Path, csv_path: Path | None, overlays: list[Path], own: bool = False) -> int:
    """Every job's measured peak against its prediction; one row per kind of job."""
    from slams.config import load_config, run_config
    from slams.memory import predicted_peak_mb

    if overlays:  # a run without its resolved config (report_config not among its targets)
        config = load_config(ROOT / "config.yaml", *overlays)
    else:
        config = run_config(run)
    kinds: dict[str, list] = {}
    rows = []
    for rule, wildcards, peak, log in job_logs(run, config):
        if own and run not in log.parents:  # the dataset's shared resources/ logs
            continue
        predicted = predicted_peak_mb(rule, wildcards, config)
        kind = rule
        if rule in ("assimilate", "assimilate_classical"):
            from slams.methods import METHODS

            spec = METHODS[wildcards["method"]]
            kind = f"{rule} {spec.family if spec.space is None else spec.space.split('-')[0]}"
        rows.append((kind, str(log.relative_to(run.parents[1])), peak, predicted))
        kinds.setdefault(kind, []).append((peak, predicted))
    print(f"{run}: measured peak against predicted (MB); ratio = measured / predicted")
    print("| kind of job | jobs | measured (MB) | predicted (MB) | ratio, worst |")
    print("|---|---:|---:|---:|---:|")
    worst_all = 0.0
    for kind, pairs in sorted(kinds.items()):
        known = [(m, p) for m, p in pairs if p]
        if not known:
            print(f"| {kind} | {len(pairs)} | {max(m for m, _ in pairs)} | – | – |")
            continue
        m, p = max(known, key=lambda pair: abs(math.log(pair[0] / pair[1])))
        worst_all = max(worst_all, abs(m / p - 1))
        low, high = min(x for x, _ in known), max(x for x, _ in known)
        measured = f"{low}–{high}" if low != high else f"{low}"
        plow, phigh = min(x for _, x in known), max(x for _, x in known)
        predicted = f"{plow}–{phigh}" if plow != phigh else f"{plow}"
        print(f"| {kind} | {len(pairs)} | {measured} | {predicted} | {m / p:.2f} |")
    print(f"largest error {worst_all:.0%}")
    if csv_path:
        with open(csv_path, "w", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(["kind", "log", "measured_mb", "predicted_mb"])
            writer.writerows(rows)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="a finished run's folder, results/<name>")
    parser.add_argument(
        "--check",
        type=Path,
        help="compare a finished run's peaks with the predictions of slams.memory",
    )
    parser.add_argument(
        "--csv",
        type=Path,
        help="--check: every job's row to this file; else the slope's row, appended",
    )
    parser.add_argument(
        "--own-logs",
        action="store_true",
        help="--check: only the run's own jobs, not its dataset's downloads",
    )
    parser.add_argument("--label", default="", help="the slope's row: what was measured")
    parser.add_argument(
        "--configfile",
        type=Path,
        nargs="*",
        default=[],
        help="--check: the run's overlays of config.yaml, where the run has no "
        "config.resolved.yaml",
    )
    parser.add_argument("--method", default="pixel")
    parser.add_argument("--protocol", default="physical")
    parser.add_argument("--case", default="ideal", help="a named case or a cell (coarsen-4)")
    parser.add_argument("--members", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--days", type=int, default=None, help="default: the whole test split")
    parser.add_argument("--chunk", type=int, default=8, help="windows per network call")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--corrections", type=int, default=1)
    parser.add_argument("--solver", default=None, help="default: the run's")
    parser.add_argument("--guidance", default=None, help="default: the run's")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.check:
        return check(args.check.resolve(), args.csv, args.configfile, args.own_logs)
    if args.run is None:
        parser.error("--run or --check is needed")
    if args.child:
        (args.members,) = args.members
        print(json.dumps(child(args)))
        return 0
    rows = [measure(args, m) for m in args.members]
    mb = 2**20
    print(f"{args.method} ({args.protocol}, {args.case}), {rows[0]['days']} days, chunk "
          f"{args.chunk}, {args.steps} steps + {args.corrections}, solver "
          f"{args.solver or 'run'}, guidance {args.guidance or 'run'}")  # fmt: skip
    print("| members | peak (MiB) | seconds |")
    print("|---:|---:|---:|")
    for row in rows:
        print(f"| {row['members']} | {row['peak'] / mb:.0f} | {row['seconds']:.0f} |")
    first, last = rows[0], rows[-1]
    slope = (last["peak"] - first["peak"]) / (last["members"] - first["members"])
    print(f"state per member {first['member_state'] / mb:.1f} MiB, analysis per member "
          f"{first['member_output'] / mb:.1f} MiB; peak per member {slope / mb:.1f} MiB: "
          f"{slope / first['member_state']:.2f} copies of the state, "
          f"{slope / first['member_output']:.2f} of the analysis")  # fmt: skip
    if args.csv:
        append_copies(args.csv, args, rows)
    return 0


COPIES_FIELDS = ("label", "method", "days", "chunk", "steps", "corrections", "solver",
                 "guidance", "members", "peak_mib", "state_mib", "output_mib")  # fmt: skip


def append_copies(path: Path, args: argparse.Namespace, rows: list[dict]) -> None:
    """The slope's measurement as one CSV row (the header first in a new file): the member
    counts and their peaks joined by spaces, one member's state and analysis in MiB."""
    mb = 2**20
    new = not path.exists()
    with open(path, "a", newline="") as out:
        writer = csv.writer(out)
        if new:
            writer.writerow(COPIES_FIELDS)
        writer.writerow([args.label, args.method, rows[0]["days"], args.chunk, args.steps,
                         args.corrections, rows[0]["solver"], rows[0]["guidance"],
                         " ".join(str(r["members"]) for r in rows),
                         " ".join(f"{r['peak'] / mb:.0f}" for r in rows),
                         f"{rows[0]['member_state'] / mb:.4f}",
                         f"{rows[0]['member_output'] / mb:.4f}"])  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
