import copy
import pickle

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn

from slams.data.samples import NetCDFSamples, file_times
from slams.models import autoencoder_channels, autoencoder_inputs, load_model, save_model
from slams.nn import AutoEncoder
from slams.train import (
    TrainingDiverged,
    TrainSettings,
    WeightAverage,
    autoencoder_loss,
    consecutive_starts,
    day_samples,
    encode_splits,
    epochs_since_best,
    evaluate_loss,
    export_model,
    export_unfinished,
    fit,
    plateau_scale,
    stop_reason,
    train_autoencoder,
    train_score,
    window_samples,
)


def split_dataset(days=6, levels=3, h=8, w=16, seed=0, start="2000-01-01"):
    rng = np.random.default_rng(seed)
    first = np.datetime64(start)
    coords = {
        "time": np.arange(first, first + days).astype("datetime64[ns]"),
        "level": np.arange(levels) * 100.0 + 100,
        "lat": np.linspace(-80, 80, h),
        "lon": np.linspace(0, 350, w),
    }
    precip_mask = (rng.random((days, h, w)) > 0.5).astype(np.float32)
    return xr.Dataset(
        {
            "t": (("time", "level", "lat", "lon"), rng.normal(size=(days, levels, h, w))),
            "precip": (("time", "lat", "lon"), rng.normal(size=(days, h, w)) * precip_mask),
            "precip_mask": (("time", "lat", "lon"), precip_mask),
            "olr": (("time", "lat", "lon"), rng.normal(size=(days, h, w))),
            "olr_mask": (("time", "lat", "lon"), np.ones((days, h, w), np.float32)),
        },
        coords=coords,
    ).astype("float32")


def write_split(tmp_path, name="train", **kwargs):
    path = tmp_path / f"{name}.nc"
    split_dataset(**kwargs).to_netcdf(path)
    return path


def test_streamed_days_match_the_in_memory_stack(tmp_path):
    path = write_split(tmp_path, days=6)
    ds = xr.open_dataset(path)
    expected = autoencoder_inputs(ds, "both")
    assert expected.shape == (6, autoencoder_channels(3, "both"), 8, 16) == (6, 7, 8, 16)
    np.testing.assert_array_equal(expected[:, 3], ds["precip"].values)
    np.testing.assert_array_equal(expected[:, 4], ds["precip_mask"].values)
    samples = day_samples(path, "both")
    assert len(samples) == 6 and samples.channels == 7
    for i in range(6):
        np.testing.assert_array_equal(samples[i].numpy(), expected[i])
    assert day_samples(path, "none")[0].shape == (3, 8, 16)
    assert day_samples(path, "exsitu")[0].shape == (5, 8, 16)


def test_windows_never_span_a_missing_day(tmp_path):
    times = np.array(
        ["2000-01-01", "2000-01-02", "2000-01-03", "2000-01-05", "2000-01-06", "2000-01-07",
         "2000-01-08"],
        dtype="datetime64[ns]",
    )  # fmt: skip
    assert consecutive_starts(times, 3).tolist() == [0, 3, 4]
    ds = split_dataset(days=7).assign_coords(time=times)
    ds.to_netcdf(tmp_path / "gappy.nc")
    np.testing.assert_array_equal(file_times(tmp_path / "gappy.nc"), times.astype("datetime64[D]"))
    data = window_samples(tmp_path / "gappy.nc", "pixel", 3)
    assert len(data) == 3 and data[1].shape == (9, 8, 16)
    # window 1 starts on day index 3 (2000-01-05): state-major, levels of day 3 first
    np.testing.assert_array_equal(data[1][:3].numpy(), ds["t"].values[3])
    np.testing.assert_array_equal(data[1][6:].numpy(), ds["t"].values[5])


def test_samples_hold_no_data_and_standardise(tmp_path):
    path = write_split(tmp_path, days=200, levels=10, h=16, w=32)  # ~4 MB of temperature
    samples = NetCDFSamples(path, ["t"], np.arange(196), window=5)
    assert len(pickle.dumps(samples)) < 20_000  # what DataLoader workers receive
    samples[0]  # an open handle is not pickled either
    assert len(pickle.dumps(samples)) < 20_000
    offset, scale = np.arange(10.0), np.full(10, 2.0)
    standardised = NetCDFSamples(path, ["t"], np.arange(10), offset=offset, scale=scale)
    raw = NetCDFSamples(path, ["t"], np.arange(10))
    np.testing.assert_allclose(
        standardised[4].numpy(), (raw[4].numpy() - offset[:, None, None]) / 2, rtol=1e-6
    )
    with pytest.raises(IndexError, match="out of range"):
        NetCDFSamples(path, ["t"], np.array([198]), window=5)
    with pytest.raises(KeyError, match="no variable 'q'"):
        NetCDFSamples(path, ["q"], np.arange(3))


def _tiny_problem(seed=0):
    torch.manual_seed(seed)
    x = torch.randn(16, 3, 8, 16)
    model = AutoEncoder(3, 3, latent_channels=3, hidden=8, layers=3, kernel_size=3)

    def loss(m, batch, generator):
        # the generator's noise makes the RNG state part of the result
        noise = torch.randn(batch.shape, generator=generator, device=batch.device)
        return (m(batch + 0.1 * noise) - batch).square().mean()

    return x, model, loss


def test_fit_overfits_a_tiny_batch_and_logs_losses(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(8, 3, 8, 16)
    model = AutoEncoder(3, 3, latent_channels=3, hidden=16, layers=3, kernel_size=3)

    def loss(m, batch, generator):
        return (m(batch) - batch).square().mean()

    settings = TrainSettings(epochs=60, batch_size=8, learning_rate=2e-2, weight_decay=0.0)
    history = fit(model, loss, x, x, settings, tmp_path / "losses.csv")
    assert history[-1]["train_loss"] < history[0]["train_loss"] / 10
    lines = (tmp_path / "losses.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,train_loss,val_loss,lr,samples_per_s") and len(lines) == 61


class _Killed(Exception):
    """A job killed mid-epoch (a preempted node)."""


def _killed_at(loss_fn, call: int):
    """``loss_fn`` that raises :class:`_Killed` at its ``call``-th call, training and validation
    batches counted alike."""
    calls = {"n": 0}

    def dying(m, batch, generator):
        calls["n"] += 1
        if calls["n"] == call:
            raise _Killed
        return loss_fn(m, batch, generator)

    return dying


def test_a_killed_run_resumes_to_the_same_weights(tmp_path):
    settings = TrainSettings(epochs=4, batch_size=4, learning_rate=1e-2, weight_decay=1e-3)

    x, model, loss = _tiny_problem()
    fit(model, loss, x, x[:8], settings, tmp_path / "a.csv", tmp_path / "a")
    uninterrupted = {k: v.clone() for k, v in model.state_dict().items()}

    dying_loss = _killed_at(loss, 2 * (4 + 2) + 2)  # epoch 3, 2nd batch (4 train + 2 val)

    x, model, _ = _tiny_problem()
    with pytest.raises(_Killed):
        fit(model, dying_loss, x, x[:8], settings, tmp_path / "b.csv", tmp_path / "b")
    assert {p.name for p in (tmp_path / "b").iterdir()} == {"best.pt", "last.pt"}
    state = torch.load(tmp_path / "b" / "last.pt", weights_only=False)
    assert state["epoch"] == 2 and len(state["history"]) == 2
    best = torch.load(tmp_path / "b" / "best.pt", weights_only=False)
    assert best["best"] == min(r["val_loss"] for r in state["history"])

    _, fresh, _ = _tiny_problem(seed=1)  # other initial weights: all must come from last.pt
    history = fit(fresh, loss, x, x[:8], settings, tmp_path / "b.csv", tmp_path / "b")
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    for name, value in fresh.state_dict().items():
        assert torch.equal(value, uninterrupted[name]), name
    assert len((tmp_path / "b.csv").read_text().splitlines()) == 5

    # Control: other settings do not resume from that checkpoint, they start afresh.
    x, other, _ = _tiny_problem()
    changed = TrainSettings(epochs=4, batch_size=4, learning_rate=2e-2, weight_decay=1e-3)
    fit(other, loss, x, x[:8], changed, tmp_path / "c.csv", tmp_path / "b")
    assert not torch.equal(
        other.state_dict()["encoder.0.weight"], uninterrupted["encoder.0.weight"]
    )


def test_the_weight_average_follows_its_formula_with_warm_up():
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    average = WeightAverage(model, decay=0.9)
    expected = torch.ones(1, 2)
    for n, value in enumerate([3.0, -1.0, 5.0, 2.0] + [0.0] * 100, start=1):
        with torch.no_grad():
            model.weight.fill_(value)
        average.update(model)
        decay = min(0.9, (1 + n) / (10 + n))  # warm-up: 0.18, 0.25, ... until 0.9
        expected = decay * expected + (1 - decay) * value
        torch.testing.assert_close(average.model.weight, expected)
    assert average.current_decay() == 0.9 and not average.model.weight.requires_grad


def test_training_with_a_weight_average_exports_it_and_resumes_to_it(tmp_path):
    settings = TrainSettings(epochs=4, batch_size=4, learning_rate=1e-2, weight_decay=1e-3,
                             ema_decay=0.8)  # fmt: skip
    raw = TrainSettings(epochs=4, batch_size=4, learning_rate=1e-2, weight_decay=1e-3)
    assert settings.fingerprint() != raw.fingerprint()
    # without it the fingerprint is the one of before the key existed (computed by that code),
    # so networks trained then resume rather than retrain
    assert raw.fingerprint() == "5959fc3c973d50b7"
    weighted = TrainSettings(**{**raw.__dict__, "loss_weighting": "min-snr"})
    assert weighted.fingerprint() != raw.fingerprint()
    with pytest.raises(ValueError, match="loss_weighting must be one of"):
        TrainSettings(**{**raw.__dict__, "loss_weighting": "snr"})
    perturbed = TrainSettings(**{**raw.__dict__, "input_perturbation": 0.1})
    assert perturbed.fingerprint() != raw.fingerprint()
    with pytest.raises(ValueError, match="input_perturbation must be >= 0"):
        TrainSettings(**{**raw.__dict__, "input_perturbation": -0.1})
    with pytest.raises(ValueError, match="ema_decay must be in"):
        TrainSettings(epochs=1, batch_size=1, learning_rate=1.0, weight_decay=0.0, ema_decay=1.0)
    export = {"kind": "autoencoder", "kwargs": {}, "meta": {}}

    x, model, loss = _tiny_problem()
    history = fit(
        model, loss, x, x[:8], settings, tmp_path / "a.csv", tmp_path / "a", export=export
    )
    last = torch.load(tmp_path / "a" / "last.pt", weights_only=False)
    best = torch.load(tmp_path / "a" / "best.pt", weights_only=False)
    assert last["ema"]["updates"] == 4 * 4  # one per optimisation step
    averaged = last["ema"]["model"]
    assert not torch.equal(averaged["encoder.0.weight"], model.state_dict()["encoder.0.weight"])
    meta = export_model(tmp_path / "a" / "best.pt", tmp_path / "m.pt", epochs=len(history))
    exported = torch.load(tmp_path / "m.pt", weights_only=False)
    assert meta["weights"] == "ema"
    for name, value in best["ema"]["model"].items():
        assert torch.equal(exported["state_dict"][name], value), name
    # the validation loss is the average's: evaluated again with it, the same number
    check = copy.deepcopy(model)
    check.load_state_dict(averaged)
    val = evaluate_loss(check, loss, torch.utils.data.DataLoader(x[:8], batch_size=4),
                        torch.device("cpu"), settings.seed + 2)  # fmt: skip
    assert val == pytest.approx(history[-1]["val_loss"], rel=1e-6)

    dying_loss = _killed_at(loss, 2 * (4 + 2) + 2)  # epoch 3, 2nd batch
    x, model, _ = _tiny_problem()
    with pytest.raises(_Killed):
        fit(model, dying_loss, x, x[:8], settings, tmp_path / "b.csv", tmp_path / "b")
    _, fresh, _ = _tiny_problem(seed=1)
    fit(fresh, loss, x, x[:8], settings, tmp_path / "b.csv", tmp_path / "b")
    resumed = torch.load(tmp_path / "b" / "last.pt", weights_only=False)["ema"]
    assert resumed["updates"] == 16
    for name, value in averaged.items():
        assert torch.equal(resumed["model"][name], value), name


def _plateau_loss(loss, validation=(1.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1)):
    """``loss`` in training; in evaluation a validation loss that is best at epoch 2 and then
    only rises (one validation batch per epoch)."""
    epochs = {"n": 0}

    def scripted(m, batch, generator):
        if m.training:
            return loss(m, batch, generator)
        epochs["n"] += 1
        return torch.tensor(validation[epochs["n"] - 1])

    return scripted


def test_training_stops_once_the_validation_loss_stops_improving(tmp_path, caplog):
    settings = TrainSettings(epochs=8, batch_size=8, learning_rate=1e-2, weight_decay=0.0,
                             patience=2)  # fmt: skip
    x, model, loss = _tiny_problem()
    with caplog.at_level("INFO", logger="slams.train"):
        history = fit(model, _plateau_loss(loss), x, x[:8], settings, tmp_path / "a.csv",
                      tmp_path / "a", description="net")  # fmt: skip
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]  # epochs 3 and 4 did not improve
    assert len((tmp_path / "a.csv").read_text().splitlines()) == 5
    assert torch.load(tmp_path / "a" / "best.pt", weights_only=False)["epoch"] == 2
    assert (
        "net: stopped early after epoch 4 of at most 8: no validation improvement for 2 epochs "
        "(patience 2; best epoch 2, 0.50000)" in caplog.text
    )
    # without a patience every epoch runs
    x, model, loss = _tiny_problem()
    settings.patience = None
    with caplog.at_level("INFO", logger="slams.train"):
        history = fit(model, _plateau_loss(loss), x, x[:8], settings, tmp_path / "b.csv",
                      description="net")  # fmt: skip
    assert len(history) == 8 and "net: reached the maximum of 8 epochs" in caplog.text


def test_an_early_stop_resumes_exactly_and_a_longer_patience_continues_it(tmp_path, caplog):
    settings = TrainSettings(epochs=8, batch_size=8, learning_rate=1e-2, weight_decay=1e-3,
                             patience=2)  # fmt: skip
    x, model, loss = _tiny_problem()
    fit(model, _plateau_loss(loss), x, x[:8], settings, tmp_path / "a.csv", tmp_path / "a")
    uninterrupted = {k: v.clone() for k, v in model.state_dict().items()}

    dying = _killed_at(_plateau_loss(loss), 2 * (2 + 1) + 2)  # epoch 3, 2nd batch

    x, model, _ = _tiny_problem()
    with pytest.raises(_Killed):
        fit(model, dying, x, x[:8], settings, tmp_path / "b.csv", tmp_path / "b")
    _, fresh, _ = _tiny_problem(seed=1)
    resumed_plateau = _plateau_loss(loss, validation=(0.6, 0.7, 0.8, 0.9, 1.0, 1.1))
    history = fit(fresh, resumed_plateau, x, x[:8], settings, tmp_path / "b.csv", tmp_path / "b")
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    for name, value in fresh.state_dict().items():
        assert torch.equal(value, uninterrupted[name]), name

    # a rerun after the early stop trains nothing more
    _, again, _ = _tiny_problem(seed=2)
    assert len(fit(again, loss, x, x[:8], settings, tmp_path / "b.csv", tmp_path / "b")) == 4
    # a longer patience continues from the stopped run: the same epochs as a run with it
    longer = TrainSettings(**{**settings.__dict__, "patience": 3})
    with caplog.at_level("INFO", logger="slams.train"):
        continued = fit(again, _plateau_loss(loss, validation=(0.9,)), x, x[:8], longer,
                        tmp_path / "b.csv", tmp_path / "b")  # fmt: skip
    assert "resuming after epoch 4" in caplog.text and len(continued) == 5


def _history(validation):
    return [{"epoch": i + 1, "train_loss": 9.0, "val_loss": v} for i, v in enumerate(validation)]


def test_an_improvement_is_a_relative_fall_beyond_min_improvement():
    history = _history([1.0, 0.9, 0.899, 0.898, 0.85])
    assert epochs_since_best(history) == 0  # every fall counts
    assert epochs_since_best(history[:4]) == 0
    # 0.899 and 0.898 are within 1 % of 0.9: not improvements, 0.85 is
    assert epochs_since_best(history[:4], min_improvement=0.01) == 2
    assert epochs_since_best(history, min_improvement=0.01) == 0
    assert epochs_since_best([]) == 0


def test_the_stop_message_names_the_threshold_that_made_the_best_epoch_stale():
    """With min_improvement the best epoch can be one of the stale ones (a fall under the
    threshold): the message says what did not happen, so it does not contradict itself."""
    settings = TrainSettings(epochs=10, batch_size=8, learning_rate=1.0, weight_decay=0.0,
                             patience=3, min_improvement=0.01)  # fmt: skip
    history = _history([1.0, 0.9, 0.899, 0.898, 0.897])
    assert stop_reason(history[:4], settings) is None
    assert stop_reason(history, settings) == (
        "stopped early after epoch 5 of at most 10: no validation improvement of more than 0.01 "
        "for 3 epochs (patience 3; best epoch 5, 0.89700)"
    )
    settings.min_improvement = 0.0
    assert stop_reason(history, settings) is None  # every fall counts: epoch 5 improved


def test_the_plateau_schedule_halves_the_rate_after_lr_patience_stale_epochs():
    settings = TrainSettings(epochs=20, batch_size=8, learning_rate=1.0, weight_decay=0.0,
                             schedule="plateau", lr_patience=2)  # fmt: skip
    scales = [plateau_scale(_history([1.0, 0.9, 0.95, 0.92, 0.91, 0.8, 0.85][:n]), settings)
              for n in range(8)]  # fmt: skip
    # stale epochs 3 and 4 halve it once, epoch 5 is stale again, 6 improves, 7 is stale
    assert scales == [1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5]
    settings.lr_patience = 1
    assert plateau_scale(_history([1.0, 1.1, 1.2]), settings) == 0.25


def test_training_under_the_plateau_schedule_logs_the_rates_stops_and_resumes_exactly(tmp_path):
    settings = TrainSettings(epochs=10, batch_size=8, learning_rate=1e-2, weight_decay=1e-3,
                             patience=3, schedule="plateau", lr_patience=2)  # fmt: skip
    x, model, loss = _tiny_problem()
    history = fit(model, _plateau_loss(loss), x, x[:8], settings, tmp_path / "a.csv",
                  tmp_path / "a")  # fmt: skip
    # best at epoch 2, epochs 3 and 4 stale: the rate halves for epoch 5, which stops it
    assert [r["epoch"] for r in history] == [1, 2, 3, 4, 5]
    assert [r["lr"] for r in history] == [1e-2, 1e-2, 1e-2, 1e-2, 5e-3]
    uninterrupted = {k: v.clone() for k, v in model.state_dict().items()}

    dying = _killed_at(_plateau_loss(loss), 4 * (2 + 1) + 1)  # epoch 5, 1st: after the halving

    x, model, _ = _tiny_problem()
    with pytest.raises(_Killed):
        fit(model, dying, x, x[:8], settings, tmp_path / "b.csv", tmp_path / "b")
    _, fresh, _ = _tiny_problem(seed=1)
    resumed = fit(fresh, _plateau_loss(loss, validation=(0.8,)), x, x[:8], settings,
                  tmp_path / "b.csv", tmp_path / "b")  # fmt: skip
    assert [r["lr"] for r in resumed] == [r["lr"] for r in history]
    for name, value in fresh.state_dict().items():
        assert torch.equal(value, uninterrupted[name]), name


def test_gradient_clipping_changes_the_steps_and_every_epoch_records_its_largest_norm(tmp_path):
    settings = TrainSettings(epochs=2, batch_size=4, learning_rate=1e-2, weight_decay=0.0)
    runs = {}
    for clip in (None, 1e-4):
        x, model, loss = _tiny_problem()
        settings.grad_clip = clip
        history = fit(model, loss, x, x[:8], settings, tmp_path / f"{clip}.csv")
        runs[clip] = (history, {k: v.clone() for k, v in model.state_dict().items()})
    # the norms before clipping: the same first step, then far apart
    assert all(r["grad_norm_max"] > 1e-3 for r in runs[None][0])
    assert "grad_norm_max" in (tmp_path / "None.csv").read_text().splitlines()[0]
    assert not torch.equal(runs[None][1]["encoder.0.weight"], runs[1e-4][1]["encoder.0.weight"])
    clipped = TrainSettings(**{**settings.__dict__, "grad_clip": 1.0})
    assert (
        clipped.fingerprint()
        != TrainSettings(**{**settings.__dict__, "grad_clip": None}).fingerprint()
    )


def test_max_batches_caps_the_training_and_validation_batches_of_an_epoch(tmp_path):
    x, model, loss = _tiny_problem()
    seen = {True: [], False: []}

    def counting(m, batch, generator):
        seen[m.training].append(len(batch))
        return loss(m, batch, generator)

    # 16 training samples in batches of 4 = 4 batches, 12 validation samples = 3 batches
    settings = TrainSettings(epochs=2, batch_size=4, learning_rate=1e-3, weight_decay=0.0,
                             max_batches=2)  # fmt: skip
    history = fit(model, counting, x, x[:12], settings, tmp_path / "capped.csv")
    assert seen[True] == [4, 4] * 2 and seen[False] == [4, 4] * 2
    assert len(history) == 2
    # the linear decay spans the capped epochs: it reaches zero at the last capped step
    assert history[-1]["lr"] == pytest.approx(0.0)
    uncapped = TrainSettings(**{**settings.__dict__, "max_batches": None})
    assert uncapped.fingerprint() != settings.fingerprint()


def test_the_plateau_keys_change_the_fingerprint_only_under_the_plateau_schedule():
    linear = TrainSettings(epochs=4, batch_size=4, learning_rate=1e-2, weight_decay=0.0)
    unused = TrainSettings(**{**linear.__dict__, "lr_patience": 7, "min_improvement": 0.1})
    assert linear.fingerprint() == unused.fingerprint()
    plateau = TrainSettings(**{**linear.__dict__, "schedule": "plateau"})
    assert plateau.fingerprint() != linear.fingerprint()
    assert plateau.fingerprint() != TrainSettings(**{**plateau.__dict__,
                                                     "lr_patience": 7}).fingerprint()  # fmt: skip
    with pytest.raises(ValueError, match="schedule must be"):
        TrainSettings(epochs=1, batch_size=1, learning_rate=1.0, weight_decay=0.0,
                      schedule="cosine")  # fmt: skip


def test_a_rerun_after_the_last_epoch_writes_the_losses_again(tmp_path):
    """Snakemake deletes a job's outputs before it reruns it (e.g. --forcerun): a run that
    finds a finished checkpoint trains nothing but must still write its losses file."""
    settings = TrainSettings(epochs=2, batch_size=4, learning_rate=1e-2, weight_decay=1e-3)
    x, model, loss = _tiny_problem()
    first = fit(model, loss, x, x[:8], settings, tmp_path / "losses.csv", tmp_path / "ckpt")
    written = (tmp_path / "losses.csv").read_text()
    (tmp_path / "losses.csv").unlink()

    def no_training(m, batch, generator):
        raise AssertionError("a finished run must not train again")

    x, again, _ = _tiny_problem(seed=1)
    history = fit(again, no_training, x, x[:8], settings, tmp_path / "losses.csv",
                  tmp_path / "ckpt")  # fmt: skip
    assert history == first
    assert (tmp_path / "losses.csv").read_text() == written
    for name, value in again.state_dict().items():
        assert torch.equal(value, model.state_dict()[name]), name


def test_nan_loss_stops_training_with_a_message(tmp_path):
    model = AutoEncoder(3, 3, latent_channels=2, hidden=4, layers=2, kernel_size=3)
    x = torch.randn(4, 3, 8, 16)
    x[0, 0, 0, 0] = float("nan")
    settings = TrainSettings(epochs=1, batch_size=4, learning_rate=1e-3, weight_decay=0.0)
    with pytest.raises(TrainingDiverged, match="loss became nan in epoch 1"):
        fit(model, lambda m, b, g: (m(b) - b).square().mean(), x, x, settings, tmp_path / "l.csv")


def test_bf16_autocast_trains(tmp_path):
    x, model, loss = _tiny_problem()
    settings = TrainSettings(epochs=2, batch_size=8, learning_rate=1e-2, weight_decay=0.0,
                             precision="bf16")  # fmt: skip
    history = fit(model, loss, x, x, settings, tmp_path / "l.csv")
    assert all(np.isfinite(r["train_loss"]) for r in history)
    assert next(model.parameters()).dtype == torch.float32  # weights stay float32
    with pytest.raises(ValueError, match="precision"):
        TrainSettings(epochs=1, batch_size=1, learning_rate=1, weight_decay=0, precision="fp16")


def test_checkpoint_rebuilds_a_frozen_model_in_eval_mode(tmp_path):
    kwargs = {
        "in_channels": 3,
        "out_channels": 2,
        "latent_channels": 2,
        "hidden": 4,
        "layers": 2,
        "kernel_size": 3,
    }
    model = AutoEncoder(**kwargs)
    model.train()
    model(torch.randn(4, 3, 8, 16))  # moves the BatchNorm running statistics
    save_model(tmp_path / "ae.pt", model, "autoencoder", kwargs, {"modalities": "insitu"})
    loaded, meta = load_model(tmp_path / "ae.pt")
    assert meta == {"modalities": "insitu"}
    assert not loaded.training
    assert all(not m.training for m in loaded.modules())
    assert not any(p.requires_grad for p in loaded.parameters())
    x = torch.randn(2, 3, 8, 16)
    model.eval()
    torch.testing.assert_close(loaded(x), model(x))


def test_the_exported_model_counts_every_epoch_trained_not_only_those_up_to_the_best(tmp_path):
    """best.pt's history ends at its epoch; the model file says how many epochs ran in all (an
    autoencoder that ran all 60 and was best at 59 was logged as "epoch 59 of 59")."""
    history = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": v}
               for e, v in [(1, 0.9), (2, 0.5)]]  # fmt: skip
    state = {"kind": "score", "kwargs": {}, "meta": {"space": "pixel"}, "model": {}, "epoch": 2,
             "history": history}  # fmt: skip
    torch.save(state, tmp_path / "best.pt")
    meta = export_model(tmp_path / "best.pt", tmp_path / "m.pt", epochs=4)
    assert (meta["epoch"], meta["epochs"], meta["val_loss"]) == (2, 4, 0.5)
    assert torch.load(tmp_path / "m.pt", weights_only=False)["meta"] == meta


def test_an_unfinished_training_exports_its_best_checkpoint_and_counts_its_epochs(tmp_path):
    settings = TrainSettings(epochs=3, batch_size=4, learning_rate=1e-2, weight_decay=1e-3)
    export = {"kind": "autoencoder", "kwargs": {}, "meta": {}}
    with pytest.raises(FileNotFoundError, match="no training checkpoint under"):
        export_unfinished(tmp_path / "a", tmp_path / "m.pt")
    x, model, loss = _tiny_problem()
    history = fit(
        model, loss, x, x[:8], settings, tmp_path / "a.csv", tmp_path / "a", export=export
    )
    best = torch.load(tmp_path / "a" / "best.pt", weights_only=False)
    meta = export_unfinished(tmp_path / "a", tmp_path / "m.pt")
    assert (meta["epoch"], meta["epochs"]) == (best["epoch"], len(history)) and meta["epochs"] == 3
    exported = torch.load(tmp_path / "m.pt", weights_only=False)
    for name, value in best["model"].items():
        assert torch.equal(exported["state_dict"][name], value), name


def test_train_score_exports_the_best_window_network(tmp_path):
    train = write_split(tmp_path, "train", days=12, levels=2)
    validation = write_split(tmp_path, "validation", days=8, levels=2, seed=1)
    settings = TrainSettings(epochs=2, batch_size=4, learning_rate=1e-3, weight_decay=0.0)
    train_score(train, validation, "pixel", 5, {"hidden": [4, 8], "blocks": [1, 1]}, settings,
                tmp_path / "s.pt", tmp_path / "s.csv", metadata={"config": {"a": 1}})  # fmt: skip
    net, meta = load_model(tmp_path / "s.pt")
    assert meta["window"] == 5 and meta["state_channels"] == 2 and meta["space"] == "pixel"
    assert meta["config"] == {"a": 1} and meta["epochs"] == 2 and meta["epoch"] in (1, 2)
    assert (tmp_path / "checkpoints" / "s" / "last.pt").exists()  # default checkpoint place
    out = net(torch.randn(3, 10, 8, 16), torch.rand(3))
    assert out.shape == (3, 10, 8, 16)
    assert (
        len(net.zonal) == 0
        and "zonal_mixing" not in torch.load(tmp_path / "s.pt", weights_only=False)["kwargs"]
    )  # the paper's network, as before
    network = {"hidden": [4, 8], "blocks": [1, 1], "zonal_mixing": True}
    train_score(train, validation, "pixel", 5, network, settings, tmp_path / "z.pt",
                tmp_path / "z.csv")  # fmt: skip
    zonal, _ = load_model(tmp_path / "z.pt")
    assert len(zonal.zonal) == 1 and zonal.zonal[0].weight.abs().max() > 0  # trained from zero


@pytest.mark.parametrize("downsample", [1, 2])
def test_autoencoder_training_and_streamed_encoding(tmp_path, downsample):
    paths = {
        "train": write_split(tmp_path, "train", days=10),
        "validation": write_split(tmp_path, "validation", days=4, seed=1),
        "test": write_split(tmp_path, "test", days=5, seed=2),
    }
    network = {"latent_channels": 2, "hidden": 4, "layers": 3, "kernel_size": 3,
               "downsample": downsample}  # fmt: skip
    settings = TrainSettings(epochs=1, batch_size=4, learning_rate=1e-3, weight_decay=0.0)
    train_autoencoder(paths["train"], paths["validation"], "insitu", network, settings,
                      tmp_path / "ae.pt", tmp_path / "ae.csv")  # fmt: skip
    model, meta = load_model(tmp_path / "ae.pt")
    assert meta["modalities"] == "insitu" and model.downsample == downsample
    # the decoder reconstructs what the encoder reads: 3 levels and the precipitation
    assert meta["decodes"] == ["t", "precip"]
    decoded = model(torch.from_numpy(autoencoder_inputs(split_dataset(days=2), "insitu")))
    assert decoded.shape == (2, 3 + 1, 8, 16)
    outs = {s: tmp_path / "latents" / f"{s}.nc" for s in paths}
    encode_splits(tmp_path / "ae.pt", paths, outs, batch_size=3)  # batches straddle the splits
    for split, path in paths.items():
        with xr.open_dataset(path) as ds:
            expected = model.encode(torch.from_numpy(autoencoder_inputs(ds, "insitu"))).numpy()
        z = xr.open_dataset(outs[split])
        assert z["z"].shape == (len(expected), 2, 8 // downsample, 16 // downsample)
        np.testing.assert_allclose(z["z"].values, expected, rtol=1e-5, atol=1e-6)
        if split == "train":
            train_z = expected
        np.testing.assert_allclose(z["z_mean"].values, train_z.mean(axis=(0, 2, 3)), rtol=1e-4,
                                   atol=1e-6)  # fmt: skip
        np.testing.assert_allclose(z["z_std"].values, train_z.std(axis=(0, 2, 3)) + 1e-6,
                                   rtol=1e-4)  # fmt: skip
    windows = window_samples(outs["train"], "latent-insitu", 5)
    assert windows[0].shape == (10, 8 // downsample, 16 // downsample)
    assert abs(float(torch.stack([windows[i] for i in range(len(windows))]).mean())) < 0.5


def test_two_runs_with_the_same_seed_give_the_same_network(tmp_path):
    train = write_split(tmp_path, "train", days=10, levels=2)
    settings = TrainSettings(epochs=2, batch_size=4, learning_rate=1e-3, weight_decay=0.0)
    network = {"hidden": [4, 8], "blocks": [1, 1]}
    torch.manual_seed(123)  # whatever the global state before: the seed decides
    first = train_score(train, train, "pixel", 3, network, settings, tmp_path / "a.pt",
                        tmp_path / "a.csv")  # fmt: skip
    torch.manual_seed(456)
    second = train_score(train, train, "pixel", 3, network, settings, tmp_path / "b.pt",
                         tmp_path / "b.csv")  # fmt: skip
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    reseeded = TrainSettings(epochs=2, batch_size=4, learning_rate=1e-3, weight_decay=0.0, seed=1)
    third = train_score(train, train, "pixel", 3, network, reseeded, tmp_path / "c.pt",
                        tmp_path / "c.csv")  # fmt: skip
    assert not torch.equal(next(first.parameters()), next(third.parameters()))


def test_autoencoder_loss_weighs_every_decoded_channel_and_masks_missing_gauges():
    """The loss is the mean over decoded channels of each channel's mean squared error; a
    modality's error counts on its valid points only."""
    batch = torch.from_numpy(autoencoder_inputs(split_dataset(days=4, levels=3), "both"))

    class Fixed(torch.nn.Module):
        def __init__(self, out):
            super().__init__()
            self.out = out

        def forward(self, x):
            return self.out

    levels = 3
    decoded = torch.cat([batch[:, :levels], batch[:, [levels]], batch[:, [levels + 2]]], 1)
    loss = autoencoder_loss(levels, "both")
    assert float(loss(Fixed(decoded), batch, None)) == 0.0
    off = decoded.clone()
    off[:, levels] += 2.0  # precipitation off by 2 everywhere: error 4 on the valid points
    assert float(loss(Fixed(off), batch, None)) == pytest.approx(4.0 / (levels + 2))
    masked = decoded.clone()
    missing = batch[:, levels + 1] == 0
    masked[:, levels][missing] = 100.0  # wrong only where there is no gauge
    assert float(loss(Fixed(masked), batch, None)) == 0.0
    # temperature only: the paper's reconstruction loss
    t_only = autoencoder_loss(levels, "none")
    assert float(t_only(Fixed(batch[:, :levels] + 1.0), batch[:, :levels], None)) == 1.0


def test_validation_windows_do_not_overlap(tmp_path):
    path = write_split(tmp_path, "validation", days=12, levels=2)
    every = window_samples(path, "pixel", 5)
    disjoint = window_samples(path, "pixel", 5, overlapping=False)
    assert every.starts.tolist() == list(range(8))
    assert disjoint.starts.tolist() == [0, 5]  # days 0-4 and 5-9; 10-11 make no window


def test_pixel_both_windows_stack_temperature_precipitation_and_olr(tmp_path):
    path = write_split(tmp_path, "train", days=8, levels=2)
    windows = window_samples(path, "pixel-both", 3)
    assert len(windows) == 6 and windows[0].shape == (3 * (2 + 2), 8, 16)
    with xr.open_dataset(path) as ds:
        np.testing.assert_array_equal(windows[1][4 + 2].numpy(), ds["precip"].values[2])
        np.testing.assert_array_equal(windows[1][4 + 3].numpy(), ds["olr"].values[2])
