"""Each job's peak resident memory, predicted from the config's sizes.

A job's peak is the process it runs in (the interpreter with PyTorch and the data libraries
imported, measured) plus the arrays its stage holds at once, each counted from the config:

- the **state** of an analysis, ``members x days x channels x grid`` float32 (the score
  network's space), of which the sampler holds at most three copies (the state, the network's
  output, DPM-Solver++(2M)'s history: :mod:`slams.diffusion.sampler`), and the **analysis**
  in kelvin, ``members x days x levels x grid``;
- the **activations** of one network call, ``windows_per_call`` Markov-blanket windows (or a
  training batch) with their graph: ``ACTIVATION_FACTOR`` float32 tensors per channel and
  pixel of every residual block of the U-Net (its levels halve the grid), measured;
- the **dataset** a job reads: a split's temperature levels, precipitation and OLR on the
  target grid.

Each constant below was fitted once to the peaks the jobs' logs end with (the kernel's
high-water mark of the process, ``slams.workflow.log_resources``) on the demo and at the
paper's size (``presets/paper-scale.yaml``), and is checked against both by
``benchmarks/memory.py --check RUN`` (within 25 % for every kind of job). What a warm-start
child shares with its server (``resources.warm_start``) is not counted: Slurm jobs start cold.

    python -m slams.memory [presets/demo.yaml ...] [--docs]   # overlays of config.yaml

prints each kind of job's predicted peak beside its request, and the GPU memory of the jobs
that use one (the network's parameters, activations and state on the device).
"""

from __future__ import annotations

import calendar
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass

MB = 2**20
FLOAT = 4  # bytes of float32

# A process with PyTorch, xarray and the library imported, before any data (MB; measured).
# A job's process before its data: the interpreter, Snakemake's script header, PyTorch, xarray
# and the library (the climatology of a demo cell, 364 MB; a data stage's, 326-347 MB).
TORCH_PROCESS_MB = 360
DATA_PROCESS_MB = 330
# What running a network or a large linear solve adds whatever its size (oneDNN's primitives
# and scratch buffers, the allocator's arenas per thread): 140-250 MB in the demo's jobs.
COMPUTE_MB = 200
# Float32 values a window's forward pass keeps for its backward pass, and the backward pass's
# own peak, per channel and pixel of a residual block (ACTIVATION_FACTOR) and per channel
# and pixel of the window's input and output (IO_FACTOR: the head, the tail and the
# preconditioning), for a network made ready for sampling (slams.models.for_sampling).
# Fitted to the growth of the peak per window of a forward and backward pass: 6.3 MB for the
# demo's pixel U-Net, 477 MB for the paper's (measured, 2 and 4 window counts each).
ACTIVATION_FACTOR = 6.4
IO_FACTOR = 2.5
# The same for the autoencoder's convolution, BatchNorm and ReLU of each hidden layer.
AUTOENCODER_FACTOR = 4.0
# Copies of the ensemble state the sampler holds at its peak (measured by
# benchmarks/memory.py: the slope of the peak between two member counts).
SAMPLER_COPIES = 3.0
# Copies of a split's arrays a job holds while it reads, converts and keeps them (the loaded
# test split, the truth in kelvin, the climatology of its days and the observations).
DATASET_COPIES = 3.0
# Blocks of 2^25 source values in float64 a regridding job holds at once: the values and the
# weighted sums; with missing values (CPC: gauges over land) their mask and its sums as well.
REGRID_BLOCK_COPIES = (2.5, 3.5)  # (complete, with missing values)
# Years of the dataset's fields the dataset stage holds at once.
DATASET_YEAR_COPIES = 4.0
# Float32 copies of the ensemble an OI analysis holds, and more per observed day (it solves
# every member-day at once in float64): fitted to 8-member analyses at the paper's grid of 30,
# 60 and 90 days observed every day (122 MB a day) and of 60 and 120 days observed every
# fourth day (36 MB a day).
OI_COPIES = 0.8
OI_OBSERVED_COPIES = 12.5


@dataclass(frozen=True)
class Sizes:
    """The sizes a config gives, in elements."""

    grid: int  # pixels of the target grid
    height: int
    width: int
    levels: int
    members: int
    test_days: int
    train_days: int
    windows_per_call: int
    blanket_days: int

    @classmethod
    def of(cls, config: Mapping) -> Sizes:
        resolution = float(config["data"]["resolution"])
        height, width = round(180 / resolution), round(360 / resolution)
        section = config["assimilation"]
        period = section.get("period")
        if period:
            test_days = _days_between(period[0], period[1])
        else:
            first, last = config["split"]["test"]
            test_days = _days_in_years(first, last)
        train = config["split"]["train"]
        return cls(
            grid=height * width,
            height=height,
            width=width,
            levels=len(config["data"]["levels"]),
            members=int(section.get("members", 1)),
            test_days=test_days,
            train_days=_days_in_years(*train),
            windows_per_call=int(section.get("windows_per_call") or 64),
            blanket_days=int(config["score"]["blanket_days"]),
        )


def _days_in_years(first: int, last: int) -> int:
    return sum(366 if calendar.isleap(y) else 365 for y in range(int(first), int(last) + 1))


def _days_between(first: str, last: str) -> int:
    import datetime

    a, b = (datetime.date.fromisoformat(str(d)[:10]) for d in (first, last))
    return (b - a).days + 1


def window_activations(hidden: list[int], blocks: list[int], channels: int, pixels: int,
                       window: int) -> float:  # fmt: skip
    """Bytes one window's forward and backward pass through a ScoreUNet holds."""
    features = ACTIVATION_FACTOR * unet_features(hidden, blocks, pixels)
    return FLOAT * (features + IO_FACTOR * window * channels * pixels)


def graph_windows(sizes: Sizes, every: int) -> int:
    """The most windows whose graph one guided evaluation holds at once: the windows that own
    an observed day (one day in ``every``) of the members one call takes (all of a member's
    windows fit in ``windows_per_call``: as many members as fit; else a member,
    ``windows_per_call`` windows at a time)."""
    count = max(1, sizes.test_days - sizes.blanket_days + 1)
    owned = min(count, max(1, math.ceil(count / max(1, every))) + 1)
    if count <= sizes.windows_per_call:
        group = min(sizes.members, max(1, sizes.windows_per_call // count))
        return group * owned
    return min(sizes.windows_per_call, owned)


def unet_features(hidden: list[int], blocks: list[int], pixels: int) -> int:
    """Channel-pixels of every residual block of a :class:`~slams.nn.ScoreUNet` on a grid of
    ``pixels``: level ``i`` (``pixels / 4^i``) has ``blocks[i]`` blocks on the way down and,
    above the lowest level, as many on the way up, plus the convolutions between levels."""
    total = 0
    for i, (channels, count) in enumerate(zip(hidden, blocks, strict=True)):
        up = count + 2 if i < len(hidden) - 1 else 0  # decoder blocks, upsample, merge
        total += channels * (pixels // 4**i) * (count + up)
    return total


def unet_parameters(hidden: list[int], blocks: list[int], channels: int) -> int:
    """About the parameter count of a ScoreUNet (two 3x3 convolutions a block)."""
    total = 2 * 9 * channels * hidden[0]
    for i, (width, count) in enumerate(zip(hidden, blocks, strict=True)):
        total += count * (1 + (i < len(hidden) - 1)) * 9 * width * width
        if i < len(hidden) - 1:
            total += 3 * 9 * width * hidden[i + 1]
    return total


def _score_space(config: Mapping, method: str) -> tuple[int, int, list[int], list[int]]:
    """``(channels, pixels, hidden, blocks)`` of the score network a method samples with."""
    from slams.methods import METHODS, score_network

    sizes = Sizes.of(config)
    spec = METHODS[method]
    network = score_network(config, spec.space)
    if spec.modalities is None:  # pixel space: the levels, and for pixel-both 2 fields more
        channels = sizes.levels + 2 * (method == "pixel-both")
        return channels, sizes.grid, list(network["hidden"]), list(network["blocks"])
    down = int(config["autoencoder"].get("downsample", 1))
    channels = int(config["autoencoder"]["latent_channels"])
    return channels, sizes.grid // down**2, list(network["hidden"]), list(network["blocks"])


def _autoencoder_features(config: Mapping, pixels: int) -> int:
    """Channel-pixels of the autoencoder's hidden layers, one way (encoder or decoder)."""
    section = config["autoencoder"]
    return (int(section["layers"]) - 1) * int(section["hidden"]) * pixels


def _split_bytes(sizes: Sizes, days: int) -> int:
    """A split's temperature levels, precipitation and OLR (and their masks) as float32."""
    return days * (sizes.levels + 4) * sizes.grid * FLOAT


@dataclass(frozen=True)
class Prediction:
    """A job's predicted peak: host memory and, for a job on a GPU, device memory (MB)."""

    host_mb: int
    gpu_mb: int = 0
    parts: tuple[tuple[str, float], ...] = ()


def _mb(parts: dict[str, float]) -> int:
    return math.ceil(sum(parts.values()) / MB)


def _observed_every(config: Mapping, wildcards: Mapping[str, str] | None) -> int:
    """One day in how many the cell observes (1, every day, where no cell is named)."""
    if not wildcards or "axis" not in wildcards:
        return 1
    from slams.config import setting_parameters

    return int(setting_parameters(config, wildcards["axis"], float(wildcards["value"]))["every"])


def analysis(config: Mapping, method: str, wildcards: Mapping[str, str] | None = None
             ) -> Prediction:  # fmt: skip
    """One analysis of the test period (rule assimilate or assimilate_classical) of the cell
    ``wildcards`` names (``axis``, ``value``; without them, the cell that observes every
    day, the largest)."""
    from slams.methods import METHODS

    sizes = Sizes.of(config)
    spec = METHODS[method]
    days, members = sizes.test_days, sizes.members
    analysis_bytes = members * days * sizes.levels * sizes.grid * FLOAT
    parts = {
        "process": TORCH_PROCESS_MB * MB,
        "dataset": DATASET_COPIES * _split_bytes(sizes, days),
    }
    if spec.space is None:  # optimal interpolation or the climatology
        if spec.family == "oi":
            rank = int(config["assimilation"].get("oi", {}).get("rank", 200))
            channels = sizes.levels + 2 * (method == "oi-both")
            # its EOFs and their float64 copy
            parts["background"] = 4 * rank * channels * sizes.grid * FLOAT
            # every member-day at once, in float64, with the observed days' increments
            every = _observed_every(config, wildcards)
            copies = OI_COPIES + OI_OBSERVED_COPIES / every
            parts["analysis"] = copies * members * days * channels * sizes.grid * FLOAT
        else:
            parts["analysis"] = 2 * days * sizes.levels * sizes.grid * FLOAT
        return Prediction(_mb(parts), 0, tuple(parts.items()))
    parts["compute"] = COMPUTE_MB * MB
    channels, pixels, hidden, blocks = _score_space(config, method)
    state = members * days * channels * pixels * FLOAT
    windows = graph_windows(sizes, _observed_every(config, wildcards))
    activations = windows * window_activations(hidden, blocks, channels, pixels, sizes.blanket_days)
    sampling = {"state": SAMPLER_COPIES * state, "activations": activations}
    if spec.modalities is not None:
        # the decoder's activations of a chunk of days (checkpointed) and one member's decoded
        # observed fields; then the decoded ensemble, converted in place
        decoded_days = min(days, sizes.windows_per_call)
        sampling["decoder"] = (AUTOENCODER_FACTOR * FLOAT * decoded_days *
                               _autoencoder_features(config, sizes.grid))  # fmt: skip
        sampling["decoded member"] = days * (sizes.levels + 2) * sizes.grid * FLOAT
    output = {"state": state, "analysis": 2 * analysis_bytes}
    if sum(output.values()) > sum(sampling.values()):
        parts.update(output)
    else:
        parts.update(sampling)
    params = unet_parameters(hidden, blocks, channels * sizes.blanket_days) * FLOAT
    gpu = _mb({"parameters": params, "activations": activations,
               "state": SAMPLER_COPIES * state, "context": 500 * MB})  # fmt: skip
    return Prediction(_mb(parts), gpu, tuple(parts.items()))


def training(config: Mapping, space: str) -> Prediction:
    """Training the score network of ``space`` (``pixel``, ``pixel-both``, ``latent-<m>``)."""
    sizes = Sizes.of(config)
    channels, pixels, hidden, blocks = _score_space(config, space)
    batch = int(config["score"]["batch_size"])
    activations = batch * window_activations(hidden, blocks, channels, pixels, sizes.blanket_days)
    params = unet_parameters(hidden, blocks, channels * sizes.blanket_days) * FLOAT
    parts = {
        "process": TORCH_PROCESS_MB * MB,
        "compute": COMPUTE_MB * MB,
        "activations": activations,
        "parameters, gradients, AdamW": 4 * params,
        "batches": 4 * batch * sizes.blanket_days * channels * pixels * FLOAT,
    }
    gpu = _mb({"parameters": 4 * params, "activations": activations, "context": 500 * MB})
    return Prediction(_mb(parts), gpu, tuple(parts.items()))


def autoencoder_training(config: Mapping) -> Prediction:
    sizes = Sizes.of(config)
    batch = int(config["autoencoder"]["batch_size"])
    features = 2 * _autoencoder_features(config, sizes.grid)  # encoder and decoder
    activations = AUTOENCODER_FACTOR * FLOAT * batch * features
    parts = {
        "process": TORCH_PROCESS_MB * MB,
        "compute": COMPUTE_MB * MB,
        "activations": activations,
        "batches": 4 * batch * (sizes.levels + 2) * sizes.grid * FLOAT,
    }
    gpu = _mb({"activations": activations, "context": 500 * MB})
    return Prediction(_mb(parts), gpu, tuple(parts.items()))


def encoding(config: Mapping) -> Prediction:
    """Encoding every split with a trained autoencoder (rule encode), in batches."""
    sizes = Sizes.of(config)
    batch = int(config["autoencoder"]["batch_size"])
    latent = int(config["autoencoder"]["latent_channels"])
    down = int(config["autoencoder"].get("downsample", 1))
    parts = {
        "process": TORCH_PROCESS_MB * MB,
        "compute": COMPUTE_MB * MB,
        # no graph: a few of a batch's hidden layers alive at once
        "activations": 4 * FLOAT * batch * int(config["autoencoder"]["hidden"]) * sizes.grid,
        "latents": sizes.train_days * latent * sizes.grid // down**2 * FLOAT,
    }
    return Prediction(_mb(parts), _mb({"a": parts["activations"], "c": 500 * MB}),
                      tuple(parts.items()))  # fmt: skip


def regridding(config: Mapping, source: str) -> Prediction:
    """One source-year regridded (rule regrid): blocks of ``2^25`` source values in float64
    (the values, their validity and the two weighted sums), and the year on the target grid."""
    sizes = Sizes.of(config)
    levels = sizes.levels if source == "era5" else 1
    resolution = _source_resolution(config, source)
    source_pixels = round(180 / resolution + 1) * round(360 / resolution)
    parts = {
        "process": DATA_PROCESS_MB * MB,
        "blocks": REGRID_BLOCK_COPIES[source == "cpc"]
        * min(2**25, 366 * levels * source_pixels)
        * 8,
        "year": 366 * levels * sizes.grid * FLOAT,
    }
    return Prediction(_mb(parts), 0, tuple(parts.items()))


# The grids the real sources come on (degrees); the synthetic world states its own.
SOURCE_RESOLUTION = {"era5": 0.25, "cpc": 0.5, "olr": 2.5}


def _source_resolution(config: Mapping, source: str) -> float:
    synthetic = config["data"].get("synthetic") or {}
    if config["data"]["source"] == "synthetic" and f"{source}_resolution" in synthetic:
        return float(synthetic[f"{source}_resolution"])
    return SOURCE_RESOLUTION.get(source, 0.25)


def dataset_building(config: Mapping) -> Prediction:
    """The dataset stage (rule dataset): a year of every field at a time, with its statistics."""
    sizes = Sizes.of(config)
    parts = {
        "process": DATA_PROCESS_MB * MB,
        "years": DATASET_YEAR_COPIES * _split_bytes(sizes, 366),
    }
    return Prediction(_mb(parts), 0, tuple(parts.items()))


def oi_background(config: Mapping, method: str) -> Prediction:
    """The OI background covariance (rule oi_background): a randomised range finder over the
    training days, ``rank + 10`` columns of the state in float64, 64 days a pass."""
    sizes = Sizes.of(config)
    rank = int(config["assimilation"].get("oi", {}).get("rank", 200))
    channels = sizes.levels + 2 * (method == "oi-both")
    dim = channels * sizes.grid
    parts = {
        "process": TORCH_PROCESS_MB * MB,
        "compute": COMPUTE_MB * MB,
        "range": 3 * (rank + 10) * dim * 8,
        "days": 64 * dim * 8 * 2,
    }
    return Prediction(_mb(parts), 0, tuple(parts.items()))


SCORING_RULES = ("evaluate", "significance", "case_figure", "protocol_figures",
                 "spread_error_maps", "figures")  # fmt: skip


def predicted(rule: str, wildcards: Mapping[str, str], config: Mapping) -> Prediction | None:
    """The prediction for one job of ``rule``, or None for a rule without one (the local
    rules: downloads, copies)."""
    if rule in ("assimilate", "assimilate_classical"):
        return analysis(config, wildcards["method"], wildcards)
    if rule == "train_score":
        return training(config, wildcards["space"])
    if rule == "train_autoencoder":
        return autoencoder_training(config)
    if rule == "encode":
        return encoding(config)
    if rule == "regrid":
        return regridding(config, wildcards.get("source", "era5"))
    if rule == "dataset":
        return dataset_building(config)
    if rule == "oi_background":
        return oi_background(config, wildcards.get("method", "oi"))
    # the scoring and figure jobs (SCORING_RULES) have no prediction: none of them has run at
    # the paper's size, and a guess could stop the run there for nothing
    if rule == "report_config":
        return Prediction(DATA_PROCESS_MB)
    return None


def predicted_peak_mb(rule: str, wildcards: Mapping[str, str], config: Mapping) -> int | None:
    """The predicted peak resident memory (MB) of one job of ``rule`` with ``wildcards``
    (e.g. ``"assimilate"``, ``{"method": "pixel", "protocol": "physical", ...}``), or None
    for a rule without a prediction."""
    prediction = predicted(rule, wildcards, config)
    return None if prediction is None else prediction.host_mb


MEMORY_KEYS = {
    "assimilate": "resources.assimilate_mem_mb",
    "assimilate_classical": "resources.classical_mem_mb",
    "encode": "resources.assimilate_mem_mb",
    "train_score": "resources.train_mem_mb",
    "train_autoencoder": "resources.train_mem_mb",
}


def memory_key(rule: str, wildcards: Mapping[str, str] | None = None) -> str | None:
    """The config key that sets the memory request of ``rule``'s jobs, or None where the rule
    states its own."""
    return MEMORY_KEYS.get(rule)


def requests_table(config: Mapping) -> str:
    """One row per kind of job of the config that uses its ``resources``: the predicted peak
    beside the request and, for the jobs on a GPU, the device memory they need."""
    from slams.methods import METHODS

    resources = config["resources"]
    methods = config["assimilation"]["methods"]
    rows = []
    for method in methods:
        rule = "assimilate" if METHODS[method].space else "assimilate_classical"
        rows.append((f"`{rule}` {method}", analysis(config, method), rule))
    spaces = [s for s in dict.fromkeys(METHODS[m].space for m in methods) if s]
    for space in spaces:
        rows.append((f"`train_score` {space}", training(config, space), "train_score"))
    if any(METHODS[m].modalities for m in methods):
        rows.append(("`train_autoencoder`", autoencoder_training(config), "train_autoencoder"))
        rows.append(("`encode`", encoding(config), "encode"))
    gpu = bool(resources.get("gpu_rules_use_gpu"))
    lines = ["| job | predicted peak (MB) | request (MB) | key | GPU memory (MB, predicted) |",
             "| --- | ---: | ---: | --- | ---: |"]  # fmt: skip
    for name, prediction, rule in rows:
        key = memory_key(rule)
        request = resources.get(key.split(".")[1], "") if key else ""
        device = prediction.gpu_mb if gpu and prediction.gpu_mb else "–"
        lines.append(f"| {name} | {prediction.host_mb} | {request} | `{key}` | {device} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    import argparse
    from pathlib import Path

    from slams.config import load_config
    from slams.paths import PROJECT_ROOT as root

    parser = argparse.ArgumentParser(
        prog="python -m slams.memory",
        description="Each kind of job's predicted peak memory beside its request, for "
        "config.yaml and the overlays given (docs/cluster.md).",
    )
    parser.add_argument("overlays", nargs="*", type=Path, help="config overlays, in order")
    parser.add_argument("--docs", action="store_true", help="rewrite docs/cluster.md's table")
    args = parser.parse_args(argv)
    config = load_config(root / "config.yaml", *args.overlays)
    text = requests_table(config)
    if args.docs:  # the table in docs/cluster.md, of config.yaml
        from slams.docgen import write_block

        write_block(root / "docs/cluster.md", "python -m slams.memory", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
