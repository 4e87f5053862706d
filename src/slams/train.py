"""Training of the autoencoders and score networks: one plain PyTorch loop shared by all models.

AdamW with a learning rate decayed linearly to zero over all steps (the paper's) or halved on a
validation plateau (``schedule: plateau``), a validation loss every epoch, early stopping,
losses per epoch in a CSV, ``last`` and ``best`` checkpoints (model, optimiser, scheduler,
epoch, RNG states, history) from which a killed job resumes to the same result, optionally an
exponential moving average of the weights (:class:`WeightAverage`), which is then what is
validated and exported, and an exported model file that rebuilds the network without the
config. Data are streamed from the dataset
store (:class:`slams.data.samples.NetCDFSamples`).
"""

from __future__ import annotations

import contextlib
import copy
import csv
import hashlib
import itertools
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import netCDF4
import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn
from tqdm.auto import tqdm

from slams.data.dataset import MODALITY_VARIABLES
from slams.data.samples import NetCDFSamples, file_times
from slams.diffusion import VPSDE, denoising_loss
from slams.diffusion.sde import LOSS_WEIGHTINGS
from slams.models import (
    MODELS,
    autoencoder_variables,
    load_model,
    resolve_device,
    save_atomic,
)
from slams.nn import AutoEncoder, ScoreUNet
from slams.paths import autoencoder_name, score_name

log = logging.getLogger(__name__)

# The state variables of each pixel-space score network, stacked on channels.
PIXEL_SPACES = {"pixel": ("t",), "pixel-both": ("t", "precip", "olr")}
LOSS_COLUMNS = [
    "epoch", "train_loss", "val_loss", "lr", "samples_per_s", "seconds", "grad_norm_max",
]  # fmt: skip

LossFn = Callable[[nn.Module, Tensor, torch.Generator], Tensor]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class TrainSettings:
    """Optimisation settings (config ``autoencoder.*`` / ``score.*`` and ``training.*``).

    ``precision``: ``fp32`` or ``bf16`` (autocast of the forward pass; weights, optimiser and
    loss stay float32). ``compile``: ``torch.compile`` the model for the forward pass.
    ``workers``: DataLoader worker processes (0 reads in the training process).
    ``epochs`` is a maximum: with ``patience``, training stops once the validation loss has not
    improved for that many epochs (``None``: never early); an improvement is a relative fall of
    more than ``min_improvement`` below the best so far. ``schedule``: ``linear`` decays the
    learning rate to zero over ``epochs`` (the paper's; the end is then set by the maximum, since
    the last improvements come from the decay), ``plateau`` keeps it constant and multiplies it by
    ``lr_factor`` whenever ``lr_patience`` epochs pass without an improvement, so that the
    patience finds a plateau that does not depend on the maximum. ``grad_clip``: the most
    gradient norm of a step (``None``: no clipping, the paper's); the losses CSV records the
    largest norm of every epoch, before clipping, either way. ``max_batches``: the most batches
    of an epoch, in training (a random subset: the order is shuffled) and in the validation
    loss (the first ones); ``None`` takes them all. A cap for mechanical runs at full size.
    ``ema_decay``: keep an exponential moving average of the weights with this decay
    (:class:`WeightAverage`); the validation loss, the best epoch and the exported model are
    then those of the average (``None``: the raw weights, the paper's). ``loss_weighting``
    (score networks): the weighting of the denoising loss across noise levels
    (:func:`slams.diffusion.sde.loss_weight`; ``uniform`` is the paper's).
    ``input_perturbation`` (score networks; 0 is the paper's): the extra input noise of
    :func:`slams.diffusion.sde.denoising_loss`.
    """

    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    seed: int = 0
    device: str = "cpu"
    precision: str = "fp32"
    compile: bool = False
    workers: int = 0
    patience: int | None = None
    schedule: str = "linear"
    min_improvement: float = 0.0
    lr_patience: int = 2
    lr_factor: float = 0.5
    grad_clip: float | None = None
    max_batches: int | None = None
    ema_decay: float | None = None
    loss_weighting: str = "uniform"
    input_perturbation: float = 0.0

    def __post_init__(self):
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {self.precision!r}")
        if self.schedule not in ("linear", "plateau"):
            raise ValueError(f"schedule must be 'linear' or 'plateau', got {self.schedule!r}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in (0, 1), got {self.ema_decay}")
        if self.input_perturbation < 0:
            raise ValueError(f"input_perturbation must be >= 0, got {self.input_perturbation}")
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(
                f"loss_weighting must be one of {LOSS_WEIGHTINGS}, got {self.loss_weighting!r}"
            )

    def fingerprint(self, **extra) -> str:
        """What a resumable run must share with the checkpoint it resumes from (everything that
        changes the result; not the device, workers or compilation, nor the patience: epochs do
        not depend on it, so a run stopped early continues exactly with a longer patience; the
        plateau keys only where the schedule uses them)."""
        keys = asdict(self)
        for k in ("device", "workers", "compile", "patience"):
            keys.pop(k)
        if self.schedule == "linear":  # the paper's fingerprints stay what they were
            for k in ("schedule", "min_improvement", "lr_patience", "lr_factor"):
                keys.pop(k)
        for k in ("grad_clip", "max_batches", "ema_decay"):  # without them: as they were
            if keys[k] is None:
                keys.pop(k)
        if keys["loss_weighting"] == "uniform":
            keys.pop("loss_weighting")
        if not keys["input_perturbation"]:
            keys.pop("input_perturbation")
        text = json.dumps({**keys, **extra}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class WeightAverage:
    """An exponential moving average of a model's parameters, updated after every step.

    After the ``n``-th update ``w_avg <- d w_avg + (1 - d) w`` with
    ``d = min(decay, (1 + n) / (10 + n))``: the warm-up keeps the average from remembering the
    initial weights when training is short against ``1 / (1 - decay)`` steps. Buffers (none in
    the project's networks) are copied. The average lives in its own copy of the model
    (:attr:`model`, in eval mode, without gradients): one more copy of the weights.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        weight = 1.0 - self.current_decay()
        for average, live in zip(self.model.parameters(), model.parameters(), strict=True):
            average.lerp_(live.detach(), weight)
        for average, live in zip(self.model.buffers(), model.buffers(), strict=True):
            average.copy_(live)

    def state_dict(self) -> dict:
        return {
            "updates": self.updates,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.updates = state["updates"]
        self.model.load_state_dict(state["model"])


def loader_workers(threads: int, device: str) -> int:
    """DataLoader workers for a job with ``threads`` cores: on a GPU all but one core read data
    (the GPU computes); on the CPU the cores compute and the training process reads."""
    return max(0, int(threads) - 1) if resolve_device(device).type == "cuda" else 0


def _improvements(history: list[dict], min_improvement: float) -> list[bool]:
    """Whether each epoch improved the selection score (validation loss, else training): a
    fall of more than ``min_improvement`` (relative) below the best so far; the first always."""
    flags, reference = [], math.inf
    for row in history:
        score = _selection_score(row)
        improved = not math.isfinite(reference) or score < reference * (1.0 - min_improvement)
        reference = score if improved else reference
        flags.append(improved)
    return flags


def epochs_since_best(history: list[dict], min_improvement: float = 0.0) -> int:
    """Epochs after the last improvement of the selection score (see :func:`_improvements`)."""
    flags = _improvements(history, min_improvement)
    return len(flags) - 1 - max(i for i, improved in enumerate(flags) if improved) if flags else 0


def plateau_scale(history: list[dict], settings: TrainSettings) -> float:
    """The ``plateau`` schedule's factor on the learning rate after ``history``: ``lr_factor``
    to the number of times ``lr_patience`` epochs passed without an improvement."""
    reductions = stale = 0
    for improved in _improvements(history, settings.min_improvement):
        stale = 0 if improved else stale + 1
        if stale >= settings.lr_patience:
            reductions, stale = reductions + 1, 0
    return settings.lr_factor**reductions


def _selection_score(row: dict) -> float:
    # Validation loss selects the best model; without validation windows, the training loss.
    return row["val_loss"] if math.isfinite(row["val_loss"]) else row["train_loss"]


def stop_reason(history: list[dict], settings: TrainSettings) -> str | None:
    """Why training is over after ``history``, or None while it goes on."""
    if history and settings.patience is not None:
        stale = epochs_since_best(history, settings.min_improvement)
        if stale >= settings.patience:
            best = min(history, key=_selection_score)
            # with a threshold the best epoch may be among the stale ones (a fall below it)
            by = f" of more than {settings.min_improvement:g}" if settings.min_improvement else ""
            return (f"stopped early after epoch {len(history)} of at most {settings.epochs}: "
                    f"no validation improvement{by} for {stale} epochs (patience "
                    f"{settings.patience}; best epoch {best['epoch']}, "
                    f"{_selection_score(best):.5f})")  # fmt: skip
    if len(history) >= settings.epochs:
        return f"reached the maximum of {settings.epochs} epochs"
    return None


def consecutive_starts(times: np.ndarray, window: int) -> np.ndarray:
    """Start indices of windows of ``window`` consecutive days (no window spans a missing day)."""
    days = (times.astype("datetime64[D]") - times[0].astype("datetime64[D]")).astype(np.int64)
    starts = np.arange(len(days) - window + 1)
    return starts[days[starts + window - 1] - days[starts] == window - 1]


# --------------------------------------------------------------------------- checkpoints


def _rng_state(generator: torch.Generator) -> dict:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": np.random.get_state(),  # noqa: NPY002 (the global state, whoever uses it)
        "python": random.getstate(),
        "noise": generator.get_state(),
    }


def _restore_rng(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    random.setstate(state["python"])
    generator.set_state(state["noise"])


def _write_losses(path: Path, history: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=LOSS_COLUMNS)
        writer.writeheader()
        writer.writerows(history)
    os.replace(tmp, path)


def _loader(data, settings: TrainSettings, shuffle: bool, device: torch.device):
    generator = torch.Generator().manual_seed(settings.seed)
    return torch.utils.data.DataLoader(
        data,
        batch_size=settings.batch_size,
        shuffle=shuffle,
        generator=generator,
        drop_last=False,
        num_workers=settings.workers,
        persistent_workers=settings.workers > 0,
        pin_memory=device.type == "cuda",
    )


def fit(
    model: nn.Module,
    loss_fn: LossFn,
    train_data: torch.utils.data.Dataset,
    validation_data: torch.utils.data.Dataset,
    settings: TrainSettings,
    losses_csv: str | Path,
    checkpoint_dir: str | Path | None = None,
    description: str = "training",
    export: dict | None = None,
) -> list[dict]:
    """Train ``model`` in place and return the history (one dict per epoch).

    ``loss_fn(model, batch, generator)`` returns the scalar loss of a batch; ``generator``
    draws the training noise (saved in checkpoints). The validation loss uses its own fixed
    seed, so the curve is comparable between epochs.

    With ``checkpoint_dir``, ``last.pt`` is written after every epoch and ``best.pt`` whenever
    the validation loss improves; both hold the model, optimiser, scheduler, epoch, RNG states,
    history and ``export`` (what :func:`export_model` needs: kind, constructor arguments,
    metadata) and, with ``settings.ema_decay``, the weight average (``ema``), whose
    validation loss then selects the best epoch. A later call with the same settings and data
    resumes from ``last.pt`` and ends with the same weights as an uninterrupted run; a
    ``last.pt`` of different settings is ignored (with a warning) and training starts afresh.
    """
    device = resolve_device(settings.device)
    model.to(device)
    forward_model = torch.compile(model) if settings.compile else model
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    train_loader = _loader(train_data, settings, True, device)
    validation_loader = _loader(validation_data, settings, False, device)
    batches = len(train_loader)
    if settings.max_batches is not None:
        batches = min(batches, settings.max_batches)
    total_steps = max(1, settings.epochs * batches)
    linear = settings.schedule == "linear"
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser,
        (lambda step: max(0.0, 1.0 - step / total_steps)) if linear else (lambda step: 1.0),
    )
    noise = torch.Generator(device=device).manual_seed(settings.seed + 1)
    average = WeightAverage(model, settings.ema_decay) if settings.ema_decay else None
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if settings.precision == "bf16"
        else contextlib.nullcontext()
    )
    fingerprint = settings.fingerprint(
        description=description,
        train=len(train_data),
        validation=len(validation_data),
        parameters=sum(p.numel() for p in model.parameters()),
    )
    losses_csv = Path(losses_csv)
    losses_csv.parent.mkdir(parents=True, exist_ok=True)
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None

    history: list[dict] = []
    best = math.inf
    first_epoch = 1
    last_path = checkpoint_dir / "last.pt" if checkpoint_dir else None
    if last_path is not None and last_path.exists():
        state = torch.load(last_path, map_location="cpu", weights_only=False)
        if state.get("fingerprint") == fingerprint:
            model.load_state_dict(state["model"])
            optimiser.load_state_dict(state["optimiser"])
            schedule.load_state_dict(state["scheduler"])
            _restore_rng(state["rng"], noise)
            if average is not None:
                average.load_state_dict(state["ema"])
            history, best = state["history"], state["best"]
            first_epoch = state["epoch"] + 1
            log.info("%s: resuming after epoch %d from %s", description, state["epoch"], last_path)
        else:
            log.warning(
                "%s: ignoring %s, written with other settings or data; starting afresh",
                description,
                last_path,
            )

    def checkpoint(epoch: int) -> dict:
        return {
            "fingerprint": fingerprint,
            "epoch": epoch,
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimiser": optimiser.state_dict(),
            "scheduler": schedule.state_dict(),
            "rng": _rng_state(noise),
            "history": history,
            "best": best,
            **({"ema": average.state_dict()} if average is not None else {}),
            **(export or {}),
        }

    for epoch in range(first_epoch, settings.epochs + 1):
        if stop_reason(history, settings):  # a resumed run that had already stopped early
            break
        if not linear:  # the plateau schedule: one rate per epoch, from the history
            for group in optimiser.param_groups:
                group["lr"] = settings.learning_rate * plateau_scale(history, settings)
        model.train()
        train_loader.generator.manual_seed(settings.seed + epoch)  # order fixed by the epoch
        start, seen, total, largest = time.perf_counter(), 0, 0.0, 0.0
        bar = tqdm(
            itertools.islice(train_loader, batches),
            desc=f"{description} {epoch}/{settings.epochs}",
            total=batches,
            leave=False,
        )
        for batch in bar:
            batch = batch.to(device, non_blocking=True)
            with autocast:
                loss = loss_fn(forward_model, batch, noise).float()
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"{description}: loss became {loss.item()} in epoch {epoch}; "
                    "lower the learning rate or check the inputs for NaN"
                )
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(
                model.parameters(), settings.grad_clip or math.inf
            )
            largest = max(largest, float(norm))
            optimiser.step()
            if average is not None:
                average.update(model)
            if linear:
                schedule.step()
            seen += len(batch)
            total += loss.item() * len(batch)
            rate = seen / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix(loss=f"{loss.item():.4f}", samples_per_s=f"{rate:.1f}")
        elapsed = time.perf_counter() - start
        with autocast:
            val_loss = evaluate_loss(
                forward_model if average is None else average.model,
                loss_fn,
                validation_loader,
                device,
                settings.seed + 2,
                settings.max_batches,
            )
        row = {
            "epoch": epoch,
            "train_loss": total / max(seen, 1),
            "val_loss": val_loss,
            "lr": schedule.get_last_lr()[0] if linear else optimiser.param_groups[0]["lr"],
            "samples_per_s": seen / max(elapsed, 1e-9),
            "seconds": elapsed,
            "grad_norm_max": largest,
        }
        history.append(row)
        _write_losses(losses_csv, history)
        log.info(
            "%s epoch %d/%d: train %.5f, validation %.5f, %.1f samples/s",
            description,
            epoch,
            settings.epochs,
            row["train_loss"],
            val_loss,
            row["samples_per_s"],
        )
        score = _selection_score(row)
        improved = score < best
        best = min(best, score)
        if checkpoint_dir is not None:
            state = checkpoint(epoch)
            if improved:
                save_atomic(state, checkpoint_dir / "best.pt")
            save_atomic(state, checkpoint_dir / "last.pt")
    if len(history) < first_epoch:  # no epoch ran (a rerun that finds a finished
        # checkpoint, whose old losses file Snakemake deleted): write it from the history
        _write_losses(losses_csv, history)
    log.info("%s: %s", description, stop_reason(history, settings))
    return history


@torch.no_grad()
def evaluate_loss(
    model: nn.Module,
    loss_fn: LossFn,
    loader: torch.utils.data.DataLoader,
    device: torch.device,
    seed: int,
    max_batches: int | None = None,
) -> float:
    """Mean loss over a loader (its first ``max_batches`` batches, None: all) with the model in
    eval mode and a fixed noise seed."""
    model.eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    total, seen = 0.0, 0
    for batch in itertools.islice(loader, max_batches):
        batch = batch.to(device, non_blocking=True)
        total += loss_fn(model, batch, generator).float().item() * len(batch)
        seen += len(batch)
    return total / seen if seen else math.nan


# --------------------------------------------------------------------------- model files


def export_model(checkpoint_path: str | Path, model_path: str | Path, epochs: int) -> dict:
    """Write the model file the workflow consumes from a training checkpoint (``best.pt``):
    kind, constructor arguments, metadata (the exported epoch and its losses, and ``epochs``:
    how many were trained in all, which ``best.pt``'s own history, cut at its epoch, cannot
    tell, and ``weights``: ``ema`` or ``raw``) and the weights: the moving average where the
    training kept one."""
    state = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    epoch = state["epoch"]
    row = next(r for r in state["history"] if r["epoch"] == epoch)
    averaged = "ema" in state
    meta = {**state["meta"], "epoch": epoch, "train_loss": row["train_loss"],
            "val_loss": row["val_loss"], "epochs": epochs,
            "weights": "ema" if averaged else "raw"}  # fmt: skip
    weights = state["ema"]["model"] if averaged else state["model"]
    save_atomic(
        {"kind": state["kind"], "kwargs": state["kwargs"], "meta": meta,
         "state_dict": weights},
        Path(model_path),
    )  # fmt: skip
    return meta


def export_unfinished(checkpoint_dir: str | Path, model_path: str | Path) -> dict:
    """:func:`export_model` of a training that has not finished (stopped, or still running):
    its best checkpoint so far, with ``epochs`` the number trained up to its last checkpoint.
    Resuming the training later is unaffected."""
    checkpoint_dir = Path(checkpoint_dir)
    if not (checkpoint_dir / "best.pt").exists():
        raise FileNotFoundError(f"no training checkpoint under {checkpoint_dir}")
    last = torch.load(checkpoint_dir / "last.pt", map_location="cpu", weights_only=False)
    return export_model(checkpoint_dir / "best.pt", model_path, len(last["history"]))


def _train_and_export(
    kind: str,
    kwargs: dict,
    loss_fn: LossFn,
    train_data,
    validation_data,
    settings: TrainSettings,
    model_path: str | Path,
    losses_csv: str | Path,
    checkpoint_dir: str | Path | None,
    description: str,
    meta: dict,
) -> nn.Module:
    torch.manual_seed(settings.seed)  # the initial weights are part of the seeded run
    model = MODELS[kind](**kwargs)
    export = {"kind": kind, "kwargs": kwargs, "meta": meta}
    if checkpoint_dir is None:
        checkpoint_dir = Path(model_path).parent / "checkpoints" / Path(model_path).stem
    history = fit(model, loss_fn, train_data, validation_data, settings, losses_csv,
                  checkpoint_dir, description, export)  # fmt: skip
    exported = export_model(Path(checkpoint_dir) / "best.pt", model_path, len(history))
    log.info(
        "%s: exported epoch %d of %d (validation loss %.5f) to %s",
        description, exported["epoch"], exported["epochs"], exported["val_loss"], model_path,
    )  # fmt: skip
    return model


# --------------------------------------------------------------------------- autoencoder


def autoencoder_loss(n_levels: int, modalities: str = "none") -> LossFn:
    """Mean squared reconstruction error over every decoded channel: the ``n_levels``
    temperature levels, then each observation modality of the set on its valid points only.

    The batch is the encoder input (temperature levels, then per modality its value and its
    validity mask); the decoder outputs the temperature levels, then one channel per modality.
    Each decoded channel weighs the same; a modality's error is averaged over its valid points
    (a missing gauge, filled with 0 in the dataset, is not a value to reconstruct). For the
    ``none`` set this is the paper's temperature reconstruction loss.
    """
    names = MODALITY_VARIABLES[modalities]

    def loss(model: nn.Module, batch: Tensor, generator: torch.Generator) -> Tensor:
        decoded = model(batch).float()
        total = (decoded[:, :n_levels] - batch[:, :n_levels]).square().mean() * n_levels
        for k in range(len(names)):
            value, mask = batch[:, n_levels + 2 * k], batch[:, n_levels + 2 * k + 1]
            error = (decoded[:, n_levels + k] - value).square() * mask
            total = total + error.sum() / mask.sum().clamp(min=1.0)
        return total / (n_levels + len(names))

    return loss


def day_samples(path: str | Path, modalities: str) -> NetCDFSamples:
    """Every day of a split file as autoencoder input ``(C, H, W)``, streamed."""
    with netCDF4.Dataset(str(path)) as ds:
        n_days = len(ds.dimensions["time"])
    return NetCDFSamples(path, autoencoder_variables(modalities), np.arange(n_days))


def train_autoencoder(
    train_path: str | Path,
    validation_path: str | Path,
    modalities: str,
    network: dict,
    settings: TrainSettings,
    model_path: str | Path,
    losses_csv: str | Path,
    checkpoint_dir: str | Path | None = None,
    metadata: dict | None = None,
) -> AutoEncoder:
    """Train the autoencoder of one modality set from the split files; export its model file.

    The encoder reads temperature and the set's modalities (with their masks); the decoder
    reconstructs every one of them, so that the ``physical`` protocol can observe
    precipitation and OLR through it (its metadata's ``decodes`` lists them in order)."""
    with netCDF4.Dataset(str(train_path)) as ds:
        levels = ds.variables["level"][:].tolist()
    train_data = day_samples(train_path, modalities)
    kwargs = {
        "in_channels": train_data.channels,
        "out_channels": len(levels) + len(MODALITY_VARIABLES[modalities]),
        "latent_channels": network["latent_channels"],
        "hidden": network["hidden"],
        "layers": network["layers"],
        "kernel_size": network["kernel_size"],
        "downsample": network.get("downsample", 1),
    }
    return _train_and_export(
        "autoencoder",
        kwargs,
        autoencoder_loss(len(levels), modalities),
        train_data,
        day_samples(validation_path, modalities),
        settings,
        model_path,
        losses_csv,
        checkpoint_dir,
        autoencoder_name(modalities),
        {
            "modalities": modalities,
            "levels": levels,
            "decodes": ["t", *MODALITY_VARIABLES[modalities]],
            **(metadata or {}),
        },
    )


# --------------------------------------------------------------------------- score networks


def score_loss(sde: VPSDE, weighting: str = "uniform", input_perturbation: float = 0.0) -> LossFn:
    """Denoising score matching ``w(t) ||eps_phi(mu x + sigma eps, t) - eps||^2``,
    ``t ~ U(0, 1)``, ``w`` of ``weighting`` (:func:`slams.diffusion.sde.loss_weight`), the
    input noised further by ``input_perturbation`` (:func:`slams.diffusion.denoising_loss`)."""

    def loss(model: nn.Module, batch: Tensor, generator: torch.Generator) -> Tensor:
        return denoising_loss(model, batch, sde, generator=generator, weighting=weighting,
                              input_perturbation=input_perturbation)  # fmt: skip

    return loss


def window_samples(
    path: str | Path, space: str, window: int, overlapping: bool = True
) -> NetCDFSamples:
    """Markov-blanket windows ``(K * C, H, W)`` of standardised states, streamed: temperature
    for ``pixel``, temperature, precipitation and OLR for ``pixel-both``, latent codes
    standardised by the training split's ``z_mean``/``z_std`` otherwise.

    Training uses every window (a start on every day); with ``overlapping=False`` no two
    windows share a day (the validation loss: the same days, a fifth of the cost for K = 5).
    """
    times = file_times(path)
    starts = consecutive_starts(times, window)
    if not overlapping:
        days = (times.astype("datetime64[D]") - times[0].astype("datetime64[D]")).astype(int)
        kept, last_day = [], -1
        for start in starts:
            if days[start] > last_day:
                kept.append(start)
                last_day = days[start] + window - 1
        starts = np.asarray(kept, dtype=starts.dtype)
    if space in PIXEL_SPACES:
        return NetCDFSamples(path, list(PIXEL_SPACES[space]), starts, window)
    with netCDF4.Dataset(str(path)) as ds:
        offset, scale = ds.variables["z_mean"][:], ds.variables["z_std"][:]
    return NetCDFSamples(path, ["z"], starts, window, offset=offset, scale=scale)


def train_score(
    train_path: str | Path,
    validation_path: str | Path,
    space: str,
    window: int,
    network: dict,
    settings: TrainSettings,
    model_path: str | Path,
    losses_csv: str | Path,
    checkpoint_dir: str | Path | None = None,
    metadata: dict | None = None,
) -> ScoreUNet:
    """Train a score U-Net on Markov-blanket windows of daily states; export its model file."""
    train_data = window_samples(train_path, space, window)
    if len(train_data) == 0:
        raise ValueError(f"{train_path} holds no run of {window} consecutive days to train on")
    kwargs = {
        "in_channels": window * train_data.channels,
        "hidden": list(network["hidden"]),
        "blocks": list(network["blocks"]),
    }
    if network.get("zonal_mixing"):  # only when on: the paper's networks' files stay as they were
        kwargs["zonal_mixing"] = True
    meta = {"window": window, "state_channels": train_data.channels, "space": space}
    return _train_and_export(
        "score",
        kwargs,
        score_loss(VPSDE(), settings.loss_weighting, settings.input_perturbation),
        train_data,
        window_samples(validation_path, space, window, overlapping=False),
        settings,
        model_path,
        losses_csv,
        checkpoint_dir,
        score_name(space),
        {**meta, **(metadata or {})},
    )


# --------------------------------------------------------------------------- latents


@torch.no_grad()
def encode_splits(
    model_path: str | Path,
    split_paths: dict[str, str | Path],
    out_paths: dict[str, str | Path],
    device: str = "cpu",
    batch_size: int = 64,
) -> None:
    """Encode every day of every split once with the frozen encoder (eval mode), streaming.

    Writes ``z`` ``(time, channel, lat, lon)`` batch by batch, then the per-channel
    ``z_mean``/``z_std`` of the TRAINING split (the latent score network works on standardised
    codes) into every output file. Memory holds one batch, whatever the number of years.
    """
    if "train" not in split_paths:
        raise ValueError("encode_splits needs the train split (its latent statistics)")
    torch_device = resolve_device(device)
    model, meta = load_model(model_path, torch_device)
    total = total_sq = count = None
    ordered = ["train"] + [s for s in split_paths if s != "train"]
    for split in ordered:
        samples = day_samples(split_paths[split], meta["modalities"])
        out_path = Path(out_paths[split])
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}")
        with xr.open_dataset(split_paths[split]) as ds:
            coords = xr.Dataset(coords={"time": ds["time"], "lat": ds["lat"], "lon": ds["lon"]})
            coords.to_netcdf(tmp, engine="netcdf4")
        try:
            with netCDF4.Dataset(str(tmp), "a") as out:
                out.setncattr("modalities", meta["modalities"])
                out.setncattr("encoder", str(model_path))
                z_var = None
                index = 0
                for start in range(0, len(samples), batch_size):
                    days = min(batch_size, len(samples) - start)
                    x = torch.from_numpy(samples.read(start, days)).to(torch_device)
                    z = model.encode(x).float().cpu().numpy()
                    if z_var is None:
                        out.createDimension("channel", z.shape[1])
                        lat, lon = out.dimensions["lat"].size, out.dimensions["lon"].size
                        if z.shape[2:] != (lat, lon):
                            # A downsampling encoder: the latent grid is coarser.
                            lat_name, lon_name = "latent_lat", "latent_lon"
                            out.createDimension(lat_name, z.shape[2])
                            out.createDimension(lon_name, z.shape[3])
                        else:
                            lat_name, lon_name = "lat", "lon"
                        z_var = out.createVariable(
                            "z", "f4", ("time", "channel", lat_name, lon_name),
                            chunksizes=(1, *z.shape[1:]),
                        )  # fmt: skip
                        z_var.long_name = "latent code of the frozen encoder"
                    z_var[index : index + days] = z
                    index += days
                    if split == "train":
                        flat = z.astype(np.float64).transpose(1, 0, 2, 3).reshape(z.shape[1], -1)
                        if total is None:
                            total = np.zeros(z.shape[1])
                            total_sq = np.zeros(z.shape[1])
                            count = 0
                        total += flat.sum(1)
                        total_sq += np.square(flat).sum(1)
                        count += flat.shape[1]
                samples.close()
            os.replace(tmp, out_path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    z_mean = total / count
    z_std = np.sqrt(np.maximum(total_sq / count - z_mean**2, 0.0)) + 1e-6
    for split in ordered:
        with netCDF4.Dataset(str(out_paths[split]), "a") as out:
            for name, values in (("z_mean", z_mean), ("z_std", z_std)):
                var = out.createVariable(name, "f4", ("channel",))
                var[:] = values.astype(np.float32)
