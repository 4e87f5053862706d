"""The GPU benchmark: sampler step times, projected analysis times and training throughput, in
one table, in a few minutes (``make gpu-benchmark`` on a CUDA machine).

1. Sampler: seconds per step (predictor + one Langevin correction) of the guided sampler at
   the paper's size (1.5 degrees: pixel = 10 levels x 120 x 240 with the pixel U-Net; latent
   = 8 channels x 120 x 240 with the latent U-Net), fp32 and bf16 autocast, SDA and MMPS
   guidance, on a batch of ``--batch`` Markov-blanket windows (random weights: the time does
   not depend on them).
2. Projection: one analysis of ``--members`` members x ``--days`` days passes
   ``members x (days - K + 1)`` windows through the network per evaluation; its time is the
   step time x (those windows / batch) x steps, at 512 steps + 1 correction (the paper) and
   at the sampler of ``--config`` (default ``config.yaml``, the paper configuration's chosen
   sampler, each network at its own, ``assimilation.sampler_by_space``, the latent U-Net at
   the costliest latent network's; ``--chosen-steps`` / ``--chosen-corrections`` override
   it). An analysis's time
   scales with its network calls, ``steps + corrections x (corrected steps)``, the count
   ``studies/steps.py`` reports (corrections skipped below ``correction_min_sigma`` cost
   nothing; one call is half the timed step of predictor + correction). Every window
   of the timed batch is observed, so where observations skip days (only the windows that
   own an observed day need the backward pass) the projection is an upper bound.
3. Training: samples per second and peak memory of the autoencoder and both score networks,
   fp32 and bf16 (``train_throughput.py``, each case in its own process).

``--device cpu --quick`` runs the same at the demo's size with fewer repeats (a check that the
script works where no GPU is). Usage::

    python benchmarks/gpu.py [--device cuda] [--quick] [--out results/gpu-benchmark.md]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from slams.benchmark import (
    PROJECTED_NETWORKS,
    costliest_sampler,
    guided_problem,
    network_sizes,
    time_step,
)
from slams.config import load_config
from slams.diffusion import VPSDE
from slams.paths import PROJECT_ROOT, schema_path

HERE = Path(__file__).resolve().parent


def sampler_rows(args, device: torch.device) -> list[dict]:
    preset = "demo" if args.quick else "paper"
    rows = []
    for space, (channels, (height, width), network) in network_sizes(preset).items():
        denoiser, shape, guidances = guided_problem(
            channels, height, width, network, args.window, args.batch, device
        )
        for dtype in ("fp32", "bf16"):
            for name, guidance in guidances.items():

                def run(x, t, guidance=guidance, bf16=dtype == "bf16", denoiser=denoiser):
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                        return guidance.guided_eps(
                            lambda x, t: denoiser(x, t).float(), x, t, VPSDE()
                        )

                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                try:
                    seconds = statistics.median(
                        time_step(run, shape, device, torch.float32, args.repeats)
                    )
                except Exception as error:  # out of memory, or a path never run on this device
                    if isinstance(error, torch.cuda.OutOfMemoryError):
                        failure = "out of memory"
                    else:
                        first = (str(error).splitlines() or [""])[0][:160]
                        failure = f"failed: {type(error).__name__}: {first}"
                    rows.append({"space": space, "dtype": dtype, "guidance": name,
                                 "failure": failure})  # fmt: skip
                    print(f"  sampler {space} {dtype} {name}: {failure}", file=sys.stderr,
                          flush=True)  # fmt: skip
                    continue
                windows = args.members * (args.days - args.window + 1)
                per_step = seconds * windows / args.batch
                rows.append({
                    "space": space, "state": f"{channels} x {height} x {width}", "dtype": dtype,
                    "guidance": name, "ms_per_step": 1000 * seconds,
                    "analysis_512_s": 512 * per_step,
                    "analysis_chosen_s": args.chosen[space][0] * per_step / 2,
                    "chosen": args.chosen[space][1],
                    "peak_gb": torch.cuda.max_memory_allocated() / 2**30
                    if device.type == "cuda" else float("nan"),
                })  # fmt: skip
                print(f"  sampler {space} {dtype} {name}: {1000 * seconds:.1f} ms/step",
                      file=sys.stderr, flush=True)  # fmt: skip
    return rows


def training_rows(args) -> list[dict]:
    preset = "demo" if args.quick else "paper"
    rows = []
    for model in ("autoencoder", "pixel", "latent"):
        for precision in ("fp32", "bf16"):
            command = [sys.executable, str(HERE / "train_throughput.py"), "--model", model,
                       "--preset", preset, "--downsample", "1", "--batch", str(args.train_batch),
                       "--steps", str(args.repeats), "--device", args.device,
                       "--precision", precision]  # fmt: skip
            out = subprocess.run(command, capture_output=True, text=True)
            if out.returncode:
                error = (out.stderr.strip().splitlines() or ["?"])[-1]
                rows.append({"model": model, "precision": precision, "error": error})
                continue
            result = json.loads(out.stdout.strip().splitlines()[-1])
            memory = result.get("peak_gpu_mb", result["peak_rss_mb"]) / 1024
            rows.append({"model": model, "precision": precision, "input": result["input"],
                         "samples_per_s": result["samples_per_s"], "peak_gb": memory})  # fmt: skip
            print(f"  training {model} {precision}: {result['samples_per_s']:.1f} samples/s",
                  file=sys.stderr, flush=True)  # fmt: skip
    return rows


def table(args, device, sampler, training, seconds: float) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    size = "demo size (--quick)" if args.quick else "paper size (1.5 degrees)"
    lines = [
        f"GPU benchmark on {device} ({name or 'cpu'}, torch {torch.__version__}), {size}, "
        f"{time.strftime('%Y-%m-%d')}, {seconds:.0f} s",
        "",
        f"Sampler: batch {args.batch} windows of {args.window} days; analysis = {args.members} "
        f"members x {args.days} days ({args.members * (args.days - args.window + 1)} windows), "
        "ms/step = predictor + one correction (two guided network calls).",
        "",
        "| space | state | precision | guidance | ms/step | analysis, 512 + 1 (s) "
        "| analysis, the config's sampler (s) | peak memory (GB) |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for r in sampler:
        if "failure" in r:
            lines.append(
                f"| {r['space']} | | {r['dtype']} | {r['guidance']} | {r['failure']} | | | |"
            )
            continue
        lines.append(
            f"| {r['space']} | {r['state']} | {r['dtype']} | {r['guidance']} "
            f"| {r['ms_per_step']:.1f} | {r['analysis_512_s']:.0f} "
            f"| {r['analysis_chosen_s']:.0f} ({r['chosen']}) "
            f"| {'–' if r['peak_gb'] != r['peak_gb'] else format(r['peak_gb'], '.1f')} |"
        )
    lines += [
        "",
        f"Training: batch {args.train_batch}, forward + backward + AdamW.",
        "",
        "| model | precision | input | samples/s | peak memory (GB) |",
        "|---|---|---|---:|---:|",
    ]
    for r in training:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['precision']} | failed: {r['error']} | | |")
            continue
        lines.append(f"| {r['model']} | {r['precision']} | {r['input']} "
                     f"| {r['samples_per_s']:.1f} | {r['peak_gb']:.2f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="demo size, fewer repeats")
    parser.add_argument("--batch", type=int, default=None, help="windows per network call")
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--window", type=int, default=5)
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--days", type=int, default=29)
    parser.add_argument("--config", type=Path, nargs="+", default=[PROJECT_ROOT / "config.yaml"],
                        help="project this config's sampler (default: config.yaml; overlays "
                        "after it, as --configfile)")  # fmt: skip
    parser.add_argument("--chosen-steps", type=int, help="default: the config's")
    parser.add_argument("--chosen-corrections", type=int, help="default: the config's")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu.py: no CUDA device here; use --device cpu --quick to check the script")
    section = load_config(*args.config, schema_path=schema_path())["assimilation"]
    args.chosen = {
        space: costliest_sampler(section, methods, args.chosen_steps, args.chosen_corrections)
        for space, methods in PROJECTED_NETWORKS.items()
    }
    args.batch = args.batch or (8 if args.quick else 40)
    args.repeats = args.repeats or (1 if args.quick else 3)
    start = time.perf_counter()
    sampler = sampler_rows(args, device)
    training = training_rows(args)
    text = table(args, device, sampler, training, time.perf_counter() - start)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
