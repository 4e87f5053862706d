"""Training throughput (samples per second) and peak memory of the three kinds of network.

For each preset (demo, paper) and autoencoder downsampling factor, times a few optimiser steps
(forward, backward, AdamW) on random batches of the configured shapes:

- ``autoencoder``: one day of temperature + both modalities with masks -> temperature;
- ``pixel``: the pixel score U-Net on Markov-blanket windows of temperature;
- ``latent``: the latent score U-Net on windows of latent codes (grid / downsample).

Each case runs in its own process so that its peak resident memory (CPU) or peak allocated
GPU memory is its own. The data loading is not included (docs/method.md, "Training", says how
the training streams its samples). Usage::

    python benchmarks/train_throughput.py [--preset demo paper] [--downsample 1 2]
        [--batch N] [--steps 3] [--device cpu|cuda] [--precision fp32 bf16]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import subprocess
import sys
import time

import torch

from slams.benchmark import PRESETS


def build(preset: str, model: str, downsample: int):
    """Model, loss and input shape (without the batch) of one case."""
    from slams.config import grid_shape, load_config
    from slams.diffusion import VPSDE
    from slams.nn import AutoEncoder, ScoreUNet
    from slams.train import autoencoder_loss, score_loss

    config = load_config(*PRESETS[preset])
    height, width = grid_shape(config["data"]["resolution"])
    levels = len(config["data"]["levels"])
    ae, window = config["autoencoder"], config["score"]["blanket_days"]
    if model == "autoencoder":
        net = AutoEncoder(levels + 4, levels, ae["latent_channels"], ae["hidden"], ae["layers"],
                          ae["kernel_size"], downsample=downsample)  # fmt: skip
        return net, autoencoder_loss(levels), (levels + 4, height, width)
    if model == "pixel":
        channels, grid, spec = levels, (height, width), config["score"]["pixel"]
    else:
        channels = ae["latent_channels"]
        grid, spec = (height // downsample, width // downsample), config["score"]["latent"]
    net = ScoreUNet(window * channels, spec["hidden"], spec["blocks"])
    return net, score_loss(VPSDE()), (window * channels, *grid)


def training_days(preset: str) -> float:
    """Days of the training split (one sample per day for every kind of network)."""
    from slams.config import load_config

    config = load_config(*PRESETS[preset])
    first, last = config["split"]["train"]
    return 365.25 * (last - first + 1)


def run_one(args) -> dict:
    torch.manual_seed(0)
    device = torch.device(args.device)
    net, loss_fn, shape = build(args.preset[0], args.model, args.downsample[0])
    net.to(device).train()
    optimiser = torch.optim.AdamW(net.parameters(), lr=2e-4, weight_decay=1e-3)
    batch = torch.randn(args.batch, *shape, device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if args.precision[0] == "bf16"
        else contextlib.nullcontext()
    )
    times = []
    for step in range(args.steps + 1):  # step 0 warms up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with autocast:
            loss = loss_fn(net, batch, generator).float()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step:
            times.append(time.perf_counter() - start)
    seconds = sorted(times)[len(times) // 2]
    result = {
        "samples_per_s": args.batch / seconds,
        "s_per_step": seconds,
        "parameters": sum(p.numel() for p in net.parameters()),
        "input": "x".join(map(str, shape)),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if device.type == "cuda":
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", nargs="+", default=["demo", "paper"], choices=list(PRESETS))
    parser.add_argument("--model", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--models", nargs="+", default=["autoencoder", "pixel", "latent"])
    parser.add_argument("--downsample", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=None, help="default: 8 (paper), config (demo)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    args = parser.parse_args()
    if args.model:  # a child process: one case
        print(json.dumps(run_one(args)))
        return
    print(f"device {args.device}, {torch.get_num_threads()} threads, {args.steps} timed steps")
    print("| preset | model | downsample | precision | input | batch | samples/s | peak memory "
          "(MB) | 64 epochs (h) |")  # fmt: skip
    print("|---|---|---:|---|---|---:|---:|---:|---:|")
    for preset in args.preset:
        batch = args.batch or (8 if preset == "paper" else 16)
        for model in args.models:
            for downsample in args.downsample:
                if model == "pixel" and downsample != args.downsample[0]:
                    continue  # the pixel network does not depend on the autoencoder
                for precision in args.precision:
                    command = [sys.executable, __file__, "--model", model, "--preset", preset,
                               "--downsample", str(downsample), "--batch", str(batch),
                               "--steps", str(args.steps), "--device", args.device,
                               "--precision", precision]  # fmt: skip
                    out = subprocess.run(command, capture_output=True, text=True)
                    if out.returncode:
                        print(f"| {preset} | {model} | {downsample} | {precision} | failed: "
                              f"{out.stderr.strip().splitlines()[-1]} |")  # fmt: skip
                        continue
                    r = json.loads(out.stdout.strip().splitlines()[-1])
                    memory = r.get("peak_gpu_mb", r["peak_rss_mb"])
                    hours = 64 * training_days(preset) / r["samples_per_s"] / 3600
                    print(f"| {preset} | {model} | {downsample if model != 'pixel' else '-'} "
                          f"| {precision} | {r['input']} | {batch} | {r['samples_per_s']:.1f} "
                          f"| {memory:.0f} | {hours:.1f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
