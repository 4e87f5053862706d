"""Sampler steps against skill: CRPS, RMSE and spread/skill of a finished run's named cases,
assimilated again with 8 ... 512 steps, SDA and MMPS guidance.

On the networks and test period of a finished run (default ``results/demo``), each method
assimilates each named case under one protocol (default ``physical``) with every step count,
SDA guidance (``gamma`` of the config) and MMPS (``cg_iterations`` of the config), each with
``--corrections`` Langevin corrections (default 1, see benchmarks/README.md on MMPS inside the
Markov blanket). Scored on the observed days, means over the levels. Network calls per analysed
window batch are ``steps x (1 + corrections)`` guided evaluations (an SDA evaluation is one
forward and one backward pass, an MMPS one ``cg_iterations + 1`` backward passes). The last
column is the CRPS as a share of the CRPS with the most steps of the same method, case and
guidance (> 1 is worse). Prints a markdown table, one row as soon as it is measured. Usage::

    python benchmarks/steps.py [results/demo] [--methods pixel latent-none]
        [--cases ideal coarse] [--steps 8 16 32 64 128 256 512] [--guidance sda mmps]
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

from slams.config import load_config
from slams.metrics import score_analysis
from slams.runs import ROOT, assimilate_case


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", default="results/demo", type=Path)
    parser.add_argument("--preset", default=str(ROOT / "presets/demo.yaml"))
    parser.add_argument("--methods", nargs="+", default=["pixel", "latent-none"])
    parser.add_argument("--protocol", default="physical")
    parser.add_argument("--cases", nargs="+", default=["ideal", "coarse"])
    parser.add_argument("--steps", type=int, nargs="+", default=[8, 16, 32, 64, 128, 256, 512])
    parser.add_argument("--guidance", nargs="+", default=["sda", "mmps"])
    parser.add_argument("--corrections", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = load_config(ROOT / "config.yaml", args.preset)
    section = config["assimilation"]
    print("| method | case | guidance | steps | network calls | RMSE (K) | CRPS (K) "
          "| spread/skill | s | CRPS / CRPS at most steps |")  # fmt: skip
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    steps = sorted(args.steps, reverse=True)  # the most steps first: the reference
    for method in args.methods:
        for case in args.cases:
            for guidance in args.guidance:
                reference = None
                for n in steps:
                    assimilation = copy.deepcopy(section)
                    assimilation["sampler"].update(
                        steps=n, corrections=args.corrections, guidance=guidance
                    )
                    start = time.perf_counter()
                    ds = assimilate_case(
                        args.run, config, args.protocol, method, case, assimilation
                    )
                    seconds = time.perf_counter() - start
                    scores = score_analysis(ds, observed_only=True)
                    mean = scores.groupby("metric")["score"].mean()
                    reference = reference or mean["crps"]
                    print(
                        f"| {method} | {case} | {guidance} | {n} | {n * (1 + args.corrections)} "
                        f"| {mean['rmse']:.3f} | {mean['crps']:.3f} | {mean['spread_skill']:.3f} "
                        f"| {seconds:.0f} | {mean['crps'] / reference:.3f} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
