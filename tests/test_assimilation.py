import numpy as np
import pytest
import torch
import xarray as xr

from slams.assimilation import (
    Context,
    SamplerSettings,
    analysis_dataset,
    assimilate_states,
    relabel_copy,
    segment_slices,
)
from slams.diffusion import VPSDE, MarkovBlanketDenoiser
from slams.observations import Measurement, build_observations


class StandardNormalEps(torch.nn.Module):
    """Exact epsilon of an i.i.d. N(0, 1) prior: eps(x_t, t) = sigma x_t / (mu^2 + sigma^2)."""

    def __init__(self):
        super().__init__()
        self.sde = VPSDE()

    def forward(self, x, t):
        t = torch.as_tensor(t).reshape(-1, *([1] * (x.ndim - 1)))
        mu, sigma = self.sde.mu(t), self.sde.sigma(t)
        return sigma * x / (mu**2 + sigma**2)


def test_segment_slices_cover_the_period_without_short_segments():
    slices = segment_slices(20, 10, 5)
    assert [(s.start, s.stop) for s in slices] == [(0, 10), (10, 20)]
    slices = segment_slices(23, 10, 5)  # a 3-day remainder joins the previous segment
    assert [(s.start, s.stop) for s in slices] == [(0, 10), (10, 23)]
    assert sum(s.stop - s.start for s in segment_slices(365, 29, 5)) == 365
    with pytest.raises(ValueError, match="fewer than the 5 days of one Markov-blanket window"):
        segment_slices(3, 10, 5)


def temperature_observations(truth, measurement, seed, variance_ratio=1.0):
    """Observations of ``truth (T, C, H, W)`` through the workflow's builder, with the state in
    the paper's units (``std == anomaly_std``: the noise variance is the state's)."""
    days, channels = truth.shape[:2]
    split = xr.Dataset(
        {"t": (("time", "level", "lat", "lon"), truth.numpy())},
        coords={"time": np.arange(days), "level": np.arange(channels)},
    )
    stats = {"t": {"std": [variance_ratio**0.5] * channels, "anomaly_std": [1.0] * channels}}
    return build_observations("paper", split, measurement, stats, seed)


def test_observations_follow_the_schedule_and_variance():
    measurement = Measurement(coarsen=2, gap=1, noise=0.5, every=4)
    obs = temperature_observations(torch.zeros(12, 2, 8, 16), measurement, 0)
    assert obs.observed.tolist() == [i % 4 == 0 for i in range(12)]
    y = obs.fields["t"].values
    assert y.shape == (3, 2, 4, 8)
    assert float(y.var()) == pytest.approx(0.5, rel=0.3)  # a variance, not a std
    local, fields = obs.segment(3, 10)  # days 4 and 8 are observed in days 3..9
    assert local.tolist() == [1, 5]
    assert torch.equal(fields["t"].values, y[1:3])


@pytest.mark.parametrize("guidance", ["sda", "mmps"])
def test_guided_ensemble_matches_the_observed_block_means(guidance):
    """Exact prior N(0, I), observe 2x2 block means with small noise on every 2nd day.

    The exact posterior mean of each block is y / (1 + n v) with n = 4 pixels, v = noise
    variance; unobserved days keep the prior mean 0.
    """
    torch.manual_seed(0)
    days, shape = 10, (1, 4, 8)
    truth = torch.randn(days, *shape)
    measurement = Measurement(coarsen=2, gap=1, noise=0.01, every=2)
    obs = temperature_observations(truth, measurement, 1)
    context = Context(
        paths={},
        stats={},
        climatology_k=np.empty(0),
        sampler=SamplerSettings(steps=64, corrections=1, tau=0.5, gamma=1e-2, guidance=guidance),
        members=64,
        segment_days=10,
        blanket_days=5,
        progress=False,
    )
    analysis = assimilate_states(
        MarkovBlanketDenoiser(StandardNormalEps(), window=5),
        obs,
        lambda x: {"t": x},
        shape,
        context,
        generator=torch.Generator().manual_seed(2),
    )
    assert analysis.shape == (64, days, *shape)
    observed = obs.observed
    block_means = measurement.operator()(analysis.mean(0))
    expected = obs.fields["t"].values / (1 + 4 * 0.01)
    error = (block_means[observed] - expected).abs().mean() / expected.abs().mean()
    assert error < 0.15
    # days without observations stay near the prior mean (|mean of 64 members| ~ 1/8)
    assert analysis.mean(0)[~observed].abs().mean() < 0.25


def test_sampler_settings_reject_unknown_guidance():
    with pytest.raises(ValueError, match="guidance must be"):
        SamplerSettings(guidance="dps")


def test_analysis_dataset_holds_every_member_day_and_level():
    truth = xr.DataArray(
        np.full((3, 2, 4, 8), 250.0),
        dims=("time", "level", "lat", "lon"),
        coords={
            "time": np.arange("2004-01-01", "2004-01-04", dtype="datetime64[D]"),
            "level": [500.0, 850.0],
            "lat": np.linspace(-67.5, 67.5, 4),
            "lon": np.arange(8) * 45.0 + 22.5,
        },
    )
    ds = analysis_dataset(
        np.full((5, 3, 2, 4, 8), 251.0), truth, {}, np.array([1, 0, 1]), {"method": "pixel"}
    )
    assert ds["analysis"].dims == ("member", "time", "level", "lat", "lon")
    assert ds.sizes["member"] == 5 and ds["observed"].values.tolist() == [1, 0, 1]
    assert ds.attrs["method"] == "pixel" and ds["analysis"].attrs["units"] == "K"


def test_relabel_copy_files_the_analysis_under_another_cell(tmp_path):
    truth = xr.DataArray(
        np.full((2, 1, 4, 8), 250.0),
        dims=("time", "level", "lat", "lon"),
        coords={"time": np.arange("2004-01-01", "2004-01-03", dtype="datetime64[D]")},
    )
    rng = np.random.default_rng(0)
    attrs = {"protocol": "paper", "method": "pixel", "axis": "coarsen", "value": 2.0,
             "coarsen": 2, "seed": 1}  # fmt: skip
    ds = analysis_dataset(rng.normal(250, 3, (3, 2, 1, 4, 8)), truth, {}, np.ones(2), attrs)
    source, target = tmp_path / "coarsen-2.nc", tmp_path / "noise-0.1.nc"
    ds.to_netcdf(source)
    relabel_copy(source, target, "noise", "0.1")
    with xr.open_dataset(source) as original, xr.open_dataset(target) as copy:
        assert (copy.attrs["axis"], copy.attrs["value"]) == ("noise", 0.1)
        assert copy.attrs["same_setting_as"] == "coarsen-2" and copy.attrs["coarsen"] == 2
        assert original.attrs["axis"] == "coarsen"  # the source is left as it was
        xr.testing.assert_identical(copy["analysis"], original["analysis"])
    # the same analysis filed under the other protocol (pixel observes the same way in both)
    other = tmp_path / "physical-coarsen-2.nc"
    relabel_copy(source, other, "coarsen", "2", protocol="physical")
    with xr.open_dataset(other) as copy:
        assert copy.attrs["protocol"] == "physical"
        assert copy.attrs["same_analysis_as"] == "paper/coarsen-2"
        assert "same_setting_as" not in copy.attrs


def test_a_non_finite_analysis_fails_with_the_member_and_day():
    from slams.assimilation import AnalysisDiverged, check_finite

    times = np.arange("2004-01-01", "2004-01-05", dtype="datetime64[D]")
    analysis = np.full((3, 4, 2, 4, 8), 250.0)
    check_finite(analysis, times, "pixel coarsen-2 (physical protocol)")  # finite: fine
    analysis[1, 2, 0, 1, 1] = np.nan
    analysis[2, 3] = np.inf
    with pytest.raises(AnalysisDiverged, match=r"^pixel coarsen-2 \(physical protocol\): "
                       r"member 1, day 2004-01-03 is not finite \(65 values in all\)"):  # fmt: skip
        check_finite(analysis, times, "pixel coarsen-2 (physical protocol)")
