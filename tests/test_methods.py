"""The methods and the two observation protocols: what reaches an analysis, and from where."""

import numpy as np
import pytest
import torch
import xarray as xr
from methods_world import ASSIMILATION, MEASUREMENT, WINDOW, make_split, method_paths, write_world

from slams.assimilation import Context, SamplerSettings, assimilate_states, run_cell
from slams.diffusion import MarkovBlanketDenoiser
from slams.diffusion.analytic import GaussianPrior, posterior_agreement
from slams.methods import METHODS, observed_fields
from slams.methods.latent import decoded_fields
from slams.observations import (
    Measurement,
    MeasurementOperator,
    Observations,
    ObservedField,
    build_observations,
)

PHYSICAL = ["pixel", "pixel-both", "latent-both", "oi", "oi-both", "climatology"]


def analyse(paths, protocol, method) -> xr.Dataset:
    return run_cell(
        protocol, method, "coarsen", "2", MEASUREMENT, ASSIMILATION, WINDOW,
        method_paths(paths, method, protocol), seed=0, progress=False,
    )  # fmt: skip


def changed_where_unobserved(split: xr.Dataset) -> xr.Dataset:
    """The same test period, the truth changed only where nothing is observed (every 2nd day
    observed through 2 x 2 block means): inside one block, keeping its mean; on an
    unobserved day; precipitation where there is no gauge."""
    changed = split.copy(deep=True)
    t = changed["t"].values
    t[0, 0, 0, 0] += 0.5  # one block of an observed day: its mean is kept exactly
    t[0, 0, 1, 1] -= 0.5
    t[1] += 1.0  # an unobserved day
    changed["precip"].values[1] += 1.0
    changed["olr"].values[1] -= 1.0
    ocean = changed["precip_mask"].values[0] == 0
    changed["precip"].values[0][ocean] = 3.0  # no gauge there
    return changed


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    """The same networks and seed on two truths that differ only where nothing is observed."""
    split = make_split()
    first = write_world(tmp_path_factory.mktemp("truth"), split)
    second = write_world(tmp_path_factory.mktemp("changed"), changed_where_unobserved(split))
    return first, second


def test_physical_analyses_depend_on_the_truth_only_through_the_observations(worlds):
    first, second = worlds
    for method in PHYSICAL:
        one, two = analyse(first, "physical", method), analyse(second, "physical", method)
        assert not np.array_equal(one["truth"], two["truth"])  # the truth did change
        np.testing.assert_array_equal(one["analysis"].values, two["analysis"].values, method)
        assert np.isfinite(one["analysis"]).all()


def test_the_paper_protocol_leaks_unobserved_truth_into_latent_analyses(worlds):
    first, second = worlds
    # the latent observation A(E(truth)) sees inside the blocks and the masked gauges
    one, two = analyse(first, "paper", "latent-both"), analyse(second, "paper", "latent-both")
    assert not np.array_equal(one["analysis"].values, two["analysis"].values)
    assert not np.array_equal(one["observation_latent"].values, two["observation_latent"].values)
    # pixel-space methods observe the same way under both protocols
    for method in ("pixel", "oi"):
        np.testing.assert_array_equal(
            analyse(first, "paper", method)["analysis"].values,
            analyse(second, "paper", method)["analysis"].values,
        )


def test_every_method_of_a_setting_gets_the_same_observations(worlds):
    first, _ = worlds
    files = {m: analyse(first, "physical", m) for m in PHYSICAL}
    for method, ds in files.items():
        used = observed_fields(method, "physical")
        assert ds.attrs["observations"] == (",".join(used) or "none")
        assert ("observation" in ds) == ("t" in used)
        for name in ("precip", "olr"):
            assert (f"observation_{name}" in ds) == (name in used)
            assert (f"observation_{name}_mask" in ds) == (name in used)
    reference = files["pixel"]["observation"]
    for method in ("pixel-both", "latent-both", "oi", "oi-both"):
        xr.testing.assert_identical(files[method]["observation"], reference)
    for name in ("observation_precip", "observation_precip_mask", "observation_olr"):
        xr.testing.assert_identical(files["pixel-both"][name], files["latent-both"][name])
    # precipitation is observed on land only, on the observed days only
    mask = files["pixel-both"]["observation_precip_mask"].values
    assert mask[1::2].sum() == 0 and mask[0].sum() == (first_land := 4 * 6)
    assert np.isfinite(files["pixel-both"]["observation_precip"].values[0]).sum() == first_land
    # the paper protocol's pixel observation is the physical protocol's
    xr.testing.assert_identical(analyse(first, "paper", "pixel")["observation"], reference)


def test_build_observations_draws_each_field_with_its_own_variance():
    split = make_split()
    stats = {"t": {"std": [10.0, 12.0], "anomaly_std": [2.0, 3.0]}}
    variances = {"precip": 0.5, "olr": 2.0}
    big = split.copy(deep=True)
    for name in ("t", "precip", "olr"):
        big[name].values[:] = 0.0
    big = xr.concat([big] * 40, dim="time")
    big["time"] = np.arange(big.sizes["time"])
    measurement = Measurement(coarsen=1, gap=1, noise=0.1, every=1)
    obs = build_observations("physical", big, measurement, stats, 0, variances)
    assert set(obs.fields) == {"t", "precip", "olr"}
    t = obs.fields["t"].values
    # noise variance 0.1 in the paper's units = 0.1 (std / anomaly_std)^2 in the state's
    assert float(t[:, 0].var()) == pytest.approx(0.1 * 25, rel=0.1)
    assert float(t[:, 1].var()) == pytest.approx(0.1 * 16, rel=0.1)
    land = obs.fields["precip"].mask
    assert float(obs.fields["precip"].values[land].var()) == pytest.approx(0.5, rel=0.1)
    assert (obs.fields["precip"].values[~land] == 0).all()
    assert float(obs.fields["olr"].values.var()) == pytest.approx(2.0, rel=0.1)
    # the same seed draws the same observations; the temperature noise is the paper's
    again = build_observations("physical", big, measurement, stats, 0, variances)
    assert all(torch.equal(obs.fields[n].values, again.fields[n].values) for n in obs.fields)
    # a method that observes OLR only draws the same OLR observations
    olr_only = build_observations("physical", big, measurement, stats, 0, {"olr": 2.0},
                                  fields=("t", "olr"))  # fmt: skip
    assert set(olr_only.fields) == {"t", "olr"}
    assert torch.equal(olr_only.fields["olr"].values, obs.fields["olr"].values)
    paper = build_observations("paper", big, measurement, stats, 0)
    assert set(paper.fields) == {"t"} and torch.equal(paper.fields["t"].values, t)


def test_method_table_is_consistent():
    for method, spec in METHODS.items():
        for protocol in spec.protocols:
            fields = observed_fields(method, protocol)
            assert set(fields) <= {"t", "precip", "olr", "z"}
        if spec.protocol_free:
            assert all(observed_fields(method, p) == spec.observes for p in spec.protocols)
    assert observed_fields("latent-insitu", "physical") == ("t", "precip")
    assert observed_fields("latent-insitu", "paper") == ("z",)
    assert METHODS["pixel-both"].protocols == ("physical",)


class _Exact(torch.nn.Module):
    """The exact noise prediction of a Gaussian prior, as a window network of one state."""

    def __init__(self, prior: GaussianPrior):
        super().__init__()
        self.prior = prior

    def forward(self, x, t):
        return self.prior.eps(x.double(), t.double()).to(x.dtype)


@pytest.mark.parametrize(
    ("guidance", "steps", "corrections", "solver"),
    [("sda", 128, 1, "ddim"), ("mmps", 64, 0, "ddim"), ("sda", 128, 1, "dpm2m"),
     ("mmps", 32, 0, "dpm2m")],
)  # fmt: skip
def test_decoder_space_guidance_matches_the_exact_posterior(guidance, steps, corrections, solver):
    """A Gaussian latent prior and an affine decoder to two fields: temperature observed as
    2 x 2 block means, "precipitation" on a mask, each with its own variance. The posterior is
    Gaussian and known exactly; the guided sampler must find it through the decoder."""
    prior = GaussianPrior(height=4, width=8)
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(2 * 32, 32, generator=generator, dtype=torch.float64) / 32**0.5
    bias = torch.randn(2 * 32, generator=generator, dtype=torch.float64)

    def decoder(z):
        flat = z.reshape(z.shape[0], -1).to(torch.float64) @ weight.T + bias
        return flat.reshape(z.shape[0], 2, 4, 8).to(z.dtype)

    coarsen = MeasurementOperator(coarsen=2)
    mask = torch.rand(1, 1, 4, 8, generator=generator) < 0.5
    variances = {"t": 0.05, "precip": 0.2}
    outputs = [("t", 1), ("precip", 1)]
    state_fields = decoded_fields(decoder, outputs, torch.zeros(1, 1, 1), torch.ones(1, 1, 1))

    def observe(z):  # z (n, 1, 4, 8) -> the observed values (n, N) of both fields, no noise
        fields = state_fields(z[:, None])
        t, p = coarsen(fields["t"][:, 0]), fields["precip"][:, 0]
        return torch.cat([t.flatten(1), p[:, mask[0]].flatten(1)], dim=1)

    basis = torch.eye(32, dtype=torch.float64).reshape(32, 1, 4, 8)
    offset = observe(torch.zeros(1, 1, 4, 8, dtype=torch.float64))[0]
    matrix = (observe(basis) - offset).T  # (N, 32)
    n_t = 2 * 4
    noise_var = torch.cat([torch.full((n_t,), 0.05), torch.full((int(mask.sum()),), 0.2)])
    truth = prior.draw(1, generator)[0].reshape(1, 1, 4, 8)
    y = observe(truth)[0] + noise_var.sqrt().double() * torch.randn(
        len(noise_var), generator=generator, dtype=torch.float64
    )
    innovation = matrix @ prior.cov @ matrix.T + torch.diag(noise_var.double())
    gain = prior.cov @ matrix.T @ torch.linalg.inv(innovation)
    post_mean = prior.mean + gain @ (y - offset - matrix @ prior.mean)
    post_cov = prior.cov - gain @ matrix @ prior.cov

    y_t = y[:n_t].reshape(1, 1, 2, 4).float()  # (observed days, channels, h, w)
    y_p = torch.zeros(1, 1, 4, 8)
    y_p[mask] = y[n_t:].float()
    observations = Observations(
        "physical", Measurement(coarsen=2), torch.ones(1, dtype=torch.bool),
        {"t": ObservedField("t", y_t, torch.ones_like(y_t, dtype=torch.bool),
                            torch.tensor(variances["t"]), coarsen, (4, 8)),
         "precip": ObservedField("precip", y_p, mask, torch.tensor(variances["precip"]))},
    )  # fmt: skip
    context = Context(
        paths={}, stats={}, climatology_k=np.empty(0), members=2000, segment_days=1, blanket_days=1,
        sampler=SamplerSettings(steps=steps, corrections=corrections, guidance=guidance,
                                mmps_iterations=8, solver=solver), progress=False,
    )  # fmt: skip
    samples = assimilate_states(
        MarkovBlanketDenoiser(_Exact(prior), window=1), observations, state_fields,
        (1, 4, 8), context, torch.Generator().manual_seed(1),
    )  # fmt: skip
    agreement = posterior_agreement(samples[:, 0], prior.mean, post_mean, post_cov)
    print(guidance, agreement)
    assert agreement["gap_closed"] > 0.9
    assert 0.85 < agreement["spread_ratio"] < 1.15


def test_decoder_error_variance_is_measured_through_each_fields_operator(tmp_path):
    """A decoder that is off by known amounts: temperature by 0.5 on one level, precipitation
    by 2 everywhere (its error counts on gauges only), OLR exactly right."""
    from methods_world import LEVELS

    from slams.methods.latent import decoder_error_variance, validation_reconstruction

    class Offset(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(()))

        def forward(self, inputs):  # inputs: t levels, precip, precip mask, olr, olr mask
            t = inputs[:, :LEVELS].clone()
            t[:, 1] += 0.5
            precip = inputs[:, [LEVELS]] + 2.0  # the ocean too, where it must not count
            return torch.cat([t, precip, inputs[:, [LEVELS + 2]]], dim=1)

    split = make_split(seed=3)
    split.to_netcdf(tmp_path / "validation.nc")
    measurement = Measurement(coarsen=2, gap=1, noise=0.1, every=1)
    stats = {"t": {"std": [1.0] * LEVELS, "anomaly_std": [1.0] * LEVELS}}
    observations = build_observations("physical", split, measurement, stats, 0,
                                      {"precip": 0.1, "olr": 0.1})  # fmt: skip
    outputs = [("t", LEVELS), ("precip", 1), ("olr", 1)]
    reconstruction = validation_reconstruction(Offset(), {"modalities": "both"}, outputs,
                                               tmp_path / "validation.nc")  # fmt: skip
    extra = decoder_error_variance(reconstruction, observations)
    torch.testing.assert_close(extra["t"].flatten(), torch.tensor([0.0, 0.25]))
    assert float(extra["precip"]) == pytest.approx(4.0)
    assert float(extra["olr"]) == 0.0


def test_decoder_residuals_add_spread_and_keep_the_ensemble_mean():
    """Centred residuals: the ensemble mean is unchanged; the members' variance about it gains
    the residuals' variance (in expectation); one member gets a residual as drawn."""
    from slams.methods.latent import add_decoder_residuals

    generator = torch.Generator().manual_seed(0)
    residuals = 2.0 * torch.randn(64, 3, 4, 8, generator=generator)  # variance 4
    members = torch.randn(8, 30, 3, 4, 8, generator=generator) * 0.1
    perturbed = add_decoder_residuals(members, residuals, seed=5)
    torch.testing.assert_close(perturbed.mean(0), members.mean(0), atol=1e-5, rtol=0)
    gained = perturbed.var(0).mean() - members.var(0).mean()
    assert 3.6 < gained < 4.4
    # the same seed gives the same perturbation, another seed another one
    assert torch.equal(add_decoder_residuals(members, residuals, seed=5), perturbed)
    assert not torch.equal(add_decoder_residuals(members, residuals, seed=6), perturbed)
    single = add_decoder_residuals(members[:1], residuals, seed=5) - members[:1]
    assert any(torch.allclose(single[0, 0], r, atol=1e-6) for r in residuals)


def test_oi_both_is_the_exact_joint_analysis_with_each_days_masks():
    """oi-both on a joint state (2 temperature levels, precipitation, OLR) with a dense
    background: the members' mean and variance are the exact Kalman analysis of each day, with
    that day's gauge and OLR masks (two days share a pattern) and each field's variance."""
    from slams.methods.oi import Background, _joint_days

    f64, levels, h, w, days = torch.float64, 2, 4, 8, 3
    shape = (levels + 2, h, w)
    dim = int(np.prod(shape))
    generator = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(dim, 8, generator=generator, dtype=f64))
    residual = 0.05 + 0.1 * torch.rand(shape, generator=generator, dtype=f64)
    variances = torch.linspace(6.0, 0.5, 8, dtype=f64)
    background = Background(q.T.reshape(8, *shape), variances, residual)
    measurement = Measurement(coarsen=2, gap=1, noise=0.1, every=1)
    operator = measurement.operator()
    truth = background.sample(days, generator)
    t_var = torch.tensor([0.2, 0.4], dtype=f64)[:, None, None]
    precip_mask = torch.rand(days, 1, h, w, generator=generator) > 0.5
    precip_mask[2] = precip_mask[0]
    olr_mask = torch.ones(days, 1, h, w, dtype=torch.bool)
    olr_mask[1, :, :2] = False
    sizes = {"t": (levels, h // 2, w // 2), "p": (1, h, w), "o": (1, h, w)}
    noise = {n: torch.randn(days, *s, generator=generator, dtype=f64) for n, s in sizes.items()}
    fields = {
        "t": ObservedField("t", operator(truth[:, :levels]) + t_var.sqrt() * noise["t"],
                           torch.ones(days, levels, h // 2, w // 2), t_var, operator, (h, w)),
        "precip": ObservedField("precip", truth[:, 2:3] + 0.5**0.5 * noise["p"], precip_mask,
                                torch.tensor(0.5, dtype=f64).reshape(1, 1, 1), grid=(h, w)),
        "olr": ObservedField("olr", truth[:, 3:4] + 0.3**0.5 * noise["o"], olr_mask,
                             torch.tensor(0.3, dtype=f64).reshape(1, 1, 1), grid=(h, w)),
    }  # fmt: skip
    observations = Observations("physical", measurement, torch.ones(days, dtype=torch.bool), fields)
    members = _joint_days(background, observations, 4000, torch.Generator().manual_seed(1))
    b = background.dense()
    basis = torch.eye(dim, dtype=f64).reshape(dim, *shape)
    for day in range(days):
        rows = [operator(basis[:, :levels]).reshape(dim, -1).T]
        values = [fields["t"].values[day].flatten()]
        variances = [t_var.expand(levels, h // 2, w // 2).flatten()]
        for k, name in enumerate(("precip", "olr")):
            where = fields[name].mask[day, 0].flatten()
            rows.append(basis[:, levels + k].reshape(dim, -1).T[where])
            values.append(fields[name].values[day, 0].flatten()[where])
            variances.append(fields[name].variance.flatten().expand(int(where.sum())))
        hmat, y, r = torch.cat(rows), torch.cat(values), torch.cat(variances)
        gain = b @ hmat.T @ torch.linalg.inv(hmat @ b @ hmat.T + torch.diag(r))
        got = members[:, day].double().reshape(4000, -1)
        torch.testing.assert_close(got.mean(0), gain @ y, atol=0.1, rtol=0)
        ratio = got.var(0) / (b - gain @ hmat @ b).diag()
        assert 0.9 < float(ratio.mean()) < 1.1, day
