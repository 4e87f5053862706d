import numpy as np
import pytest
import torch
import xarray as xr

from slams.nn import AutoEncoder
from slams.train import (
    TrainingDiverged,
    TrainSettings,
    WindowDataset,
    autoencoder_channels,
    autoencoder_inputs,
    consecutive_starts,
    fit,
    load_model,
    save_checkpoint,
    train_score,
)


def split_dataset(days=6, levels=3, h=8, w=16):
    rng = np.random.default_rng(0)
    coords = {
        "time": np.arange(np.datetime64("2000-01-01"), np.datetime64("2000-01-01") + days),
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
    )


def test_autoencoder_inputs_stack_values_and_masks():
    ds = split_dataset()
    x = autoencoder_inputs(ds, "both")
    assert x.shape == (6, autoencoder_channels(3, "both"), 8, 16) == (6, 7, 8, 16)
    np.testing.assert_allclose(x[:, 3], ds["precip"].values, rtol=1e-6)
    np.testing.assert_array_equal(x[:, 4], ds["precip_mask"].values)
    np.testing.assert_array_equal(x[:, 6], ds["olr_mask"].values)
    assert autoencoder_inputs(ds, "none").shape[1] == 3
    assert autoencoder_inputs(ds, "exsitu").shape[1] == 5


def test_windows_never_span_a_missing_day():
    times = np.array(
        [
            "2000-01-01",
            "2000-01-02",
            "2000-01-03",
            "2000-01-05",
            "2000-01-06",
            "2000-01-07",
            "2000-01-08",
        ],
        dtype="datetime64[ns]",
    )
    assert consecutive_starts(times, 3).tolist() == [0, 3, 4]
    states = torch.arange(7 * 2 * 4 * 4, dtype=torch.float32).reshape(7, 2, 4, 4)
    data = WindowDataset(states, consecutive_starts(times, 3), 3)
    assert len(data) == 3 and data[1].shape == (6, 4, 4)
    torch.testing.assert_close(data[1][:2], states[3])


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
    assert lines[0].startswith("epoch,train_loss,val_loss") and len(lines) == 61


def test_nan_loss_stops_training_with_a_message(tmp_path):
    model = AutoEncoder(3, 3, latent_channels=2, hidden=4, layers=2, kernel_size=3)
    x = torch.randn(4, 3, 8, 16)
    x[0, 0, 0, 0] = float("nan")
    settings = TrainSettings(epochs=1, batch_size=4, learning_rate=1e-3, weight_decay=0.0)
    with pytest.raises(TrainingDiverged, match="loss became nan in epoch 1"):
        fit(model, lambda m, b, g: (m(b) - b).square().mean(), x, x, settings, tmp_path / "l.csv")


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
    save_checkpoint(tmp_path / "ae.pt", model, "autoencoder", kwargs, {"modalities": "insitu"})
    loaded, meta = load_model(tmp_path / "ae.pt")
    assert meta == {"modalities": "insitu"}
    assert not loaded.training
    assert all(not m.training for m in loaded.modules())
    assert not any(p.requires_grad for p in loaded.parameters())
    x = torch.randn(2, 3, 8, 16)
    model.eval()
    torch.testing.assert_close(loaded(x), model(x))


def test_train_score_saves_a_window_network(tmp_path):
    times = np.arange(np.datetime64("2000-01-01"), np.datetime64("2000-01-13")).astype(
        "datetime64[ns]"
    )
    states = torch.randn(12, 2, 8, 16)
    settings = TrainSettings(epochs=1, batch_size=4, learning_rate=1e-3, weight_decay=0.0)
    train_score(
        states,
        times,
        states,
        times,
        5,
        {"hidden": [4, 8], "blocks": [1, 1]},
        settings,
        tmp_path / "s.pt",
        tmp_path / "s.csv",
    )
    net, meta = load_model(tmp_path / "s.pt")
    assert meta["window"] == 5 and meta["state_channels"] == 2
    out = net(torch.randn(3, 10, 8, 16), torch.rand(3))
    assert out.shape == (3, 10, 8, 16)
