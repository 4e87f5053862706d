"""Guided sampling of a whole trajectory through the Markov blanket, against an exact Gaussian
posterior: an AR(1)-in-time, smooth-in-space prior whose exact window scores are composed by
:class:`MarkovBlanketDenoiser`, observed on some days through coarsening and a mask, with a
different error variance at every point."""

import numpy as np
import pytest
import torch

from slams.assimilation import Context, SamplerSettings, assimilate_states
from slams.diffusion import (
    VPSDE,
    GaussianGuidance,
    MarkovBlanketDenoiser,
    MomentMatchingGuidance,
    sample,
)
from slams.diffusion.analytic import GaussianTrajectory, posterior_agreement
from slams.nn import ScoreUNet
from slams.observations import Measurement, Observations, ObservedField

F64 = torch.float64
DAYS = (2, 5, 6, 9)


def trajectory_case(days=DAYS, seed=0):
    """The prior, its observations (2 x 2 block means of the given days, one block in four
    masked, variances 0.05-0.3) as the workflow holds them, and the exact posterior."""
    prior = GaussianTrajectory(length=12, height=4, width=8)
    case = prior.observation_case(days, seed)
    field = ObservedField("t", case.y, case.mask, case.variance, case.operator, (4, 8))
    observations = Observations("physical", Measurement(coarsen=2), case.observed, {"t": field})
    return prior, observations, case.mean, case.cov


def analyse(prior, observations, guidance, steps, corrections, members=1000, window=3, seed=1,
            segment_days=None, chunk=None, **sampler):  # fmt: skip
    context = Context(
        paths={}, stats={}, climatology_k=np.empty(0), members=members,
        segment_days=segment_days or prior.length, blanket_days=window, progress=False,
        sampler=SamplerSettings(steps=steps, corrections=corrections, guidance=guidance,
                                mmps_iterations=3, **sampler),
    )  # fmt: skip
    denoiser = MarkovBlanketDenoiser(prior.window_net(window), window=window, chunk=chunk)
    return assimilate_states(
        denoiser, observations, lambda x: {"t": x}, prior.state, context,
        torch.Generator().manual_seed(seed),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("guidance", "steps", "sampler"),
    [("sda", 64, {}), ("mmps", 32, {}), ("sda", 64, {"solver": "dpm2m"}),
     ("sda", 64, {"correction_min_sigma": 0.1}), ("sda", 128, {"tau_reference_steps": 64})],
    ids=["sda", "mmps", "sda-dpm2m", "sda-corrections-above-0.1", "sda-langevin-time-of-64"],
)  # fmt: skip
def test_trajectory_posterior_through_the_blanket(guidance, steps, sampler):
    """The workflow's 5-day windows and one Langevin correction (the default): the guided
    ensemble's mean closes > 92 % of what as many exact posterior samples close (1000 of them
    close ~95 % of the prior-to-posterior gap: the sampling floor), its spread within 15 %.
    So does DPM-Solver++(2M) (93.6 % of the floor at 64 + 1, as DDIM), and so do corrections
    above sigma = 0.1 only (256 + 1: 98.9 % of the floor against 99.1 % at every step): the
    blanket needs the corrections at intermediate noise, not at low noise. With the Langevin time
    of 64 steps spread over 128 (``tau_reference_steps``), 94.9 % (64 + 1 itself: 93.6 %).
    Without the correction MMPS closes only ~84 % (CHANGELOG.md): inside the blanket
    the composed denoiser is approximate at intermediate noise, so MMPS is not exact there."""
    prior, observations, mean, cov = trajectory_case()
    members = 1000
    samples = analyse(prior, observations, guidance, steps, 1, members=members, window=5,
                      **sampler)  # fmt: skip
    exact = mean + torch.randn(members, len(mean), dtype=F64,
        generator=torch.Generator().manual_seed(2)) @ torch.linalg.cholesky(cov).T  # fmt: skip
    floor = posterior_agreement(exact, torch.zeros_like(mean), mean, cov)
    agreement = posterior_agreement(samples.reshape(len(samples), -1), torch.zeros_like(mean),
                                    mean, cov)  # fmt: skip
    print(guidance, steps, agreement, floor)
    assert agreement["gap_closed"] > 0.92 * floor["gap_closed"]
    assert 0.85 < agreement["spread_ratio"] < 1.15


@pytest.mark.parametrize(
    ("method", "share"),
    [("latent-both", 0.84), ("pixel", 0.84), ("latent-none", 0.84)],
    ids=["shared", "pixel", "latent-none"],
)
def test_trajectory_posterior_with_the_config_sampler(root, method, share):
    """config.yaml's samplers (chosen on learned networks, README "Choosing the sampler") on the
    exact trajectory, all with the Langevin time of 8 steps: the shared dpm2m 32 + 1 closes
    85.6 % of what the exact samples close (2000 members, langevin_tradeoff.py), pixel's dpm2m
    16 + 1 85.4 % and latent-none's ddim 16 + 1 85.3 %; short of the 92 % that 64 + 1 reaches
    (and of the 90.0 % of the shared sampler before, ddim 16 + 2 at twice the Langevin time).
    Less Langevin time composes the blanket less well; on learned scores more of it makes
    analyses worse. This guards the measured values; it does not claim the 92 %."""
    from slams.config import load_config, method_assimilation

    config = load_config(root / "config.yaml")
    sampler = method_assimilation(config["assimilation"], method)["sampler"]
    prior, observations, mean, cov = trajectory_case()
    members = 1000
    samples = analyse(prior, observations, "sda", sampler["steps"], sampler["corrections"],
                      members=members, window=5, tau=sampler["tau"],
                      tau_reference_steps=sampler["tau_reference_steps"],
                      correction_min_sigma=sampler["correction_min_sigma"],
                      correction_grid_steps=sampler["correction_grid_steps"],
                      solver=sampler["solver"])  # fmt: skip
    exact = mean + torch.randn(members, len(mean), dtype=F64,
        generator=torch.Generator().manual_seed(2)) @ torch.linalg.cholesky(cov).T  # fmt: skip
    floor = posterior_agreement(exact, torch.zeros_like(mean), mean, cov)
    agreement = posterior_agreement(samples.reshape(len(samples), -1), torch.zeros_like(mean),
                                    mean, cov)  # fmt: skip
    print(method, agreement["gap_closed"] / floor["gap_closed"], agreement["spread_ratio"])
    assert agreement["gap_closed"] > share * floor["gap_closed"]
    assert 0.9 < agreement["spread_ratio"] < 1.1


def test_trajectory_posterior_with_the_second_order_sampler_at_64_calls():
    """Issue 25's second-order goal: DPM-Solver++(2M) at 8 steps + 7 corrections with the
    Langevin time of 96 steps (64 network calls) closes what 256 + 1 closes to within 2 points
    (CHANGELOG.md, over four sampler seeds: 0.943 against 0.946). Here, against the
    92 % of the exact samples' closure that the first-order test asks at 64 + 1 (128 calls), and
    its ensemble no more than 15 % too wide (measured 10 %)."""
    prior, observations, mean, cov = trajectory_case()
    members = 1000
    samples = analyse(prior, observations, "sda", 8, 7, members=members, window=5,
                      solver="dpm2m", tau_reference_steps=96)  # fmt: skip
    exact = mean + torch.randn(members, len(mean), dtype=F64,
        generator=torch.Generator().manual_seed(2)) @ torch.linalg.cholesky(cov).T  # fmt: skip
    floor = posterior_agreement(exact, torch.zeros_like(mean), mean, cov)
    agreement = posterior_agreement(samples.reshape(len(samples), -1), torch.zeros_like(mean),
                                    mean, cov)  # fmt: skip
    print(agreement, floor)
    assert agreement["gap_closed"] > 0.92 * floor["gap_closed"]
    assert 0.85 < agreement["spread_ratio"] < 1.15


def test_trajectory_posterior_with_the_corrections_of_16_steps_at_64():
    """Issue 25's safe corrector on the exact answer: 2 corrections where sigma >= 0.3 with the
    Langevin time of 32 steps, on the noise levels of a 16-step grid (``correction_grid_steps``)
    while the predictor takes 64 steps, closes > 92 % of what the exact samples close (here
    0.923 of it, spread 1.02; with 2000 members 0.924 at 16, 64 and 256 steps alike,
    CHANGELOG.md). The corrections are those of 16 steps whatever the steps."""
    prior, observations, mean, cov = trajectory_case()
    members = 1000
    samples = analyse(prior, observations, "sda", 64, 2, members=members, window=5,
                      correction_min_sigma=0.3, tau_reference_steps=32,
                      correction_grid_steps=16)  # fmt: skip
    exact = mean + torch.randn(members, len(mean), dtype=F64,
        generator=torch.Generator().manual_seed(2)) @ torch.linalg.cholesky(cov).T  # fmt: skip
    floor = posterior_agreement(exact, torch.zeros_like(mean), mean, cov)
    agreement = posterior_agreement(samples.reshape(len(samples), -1), torch.zeros_like(mean),
                                    mean, cov)  # fmt: skip
    print(agreement["gap_closed"] / floor["gap_closed"], agreement["spread_ratio"])
    assert agreement["gap_closed"] > 0.92 * floor["gap_closed"]
    assert 0.85 < agreement["spread_ratio"] < 1.15


def guidance_problem():
    """The case's observations as one guidance's arguments ``(observe, y, variance, mask)``,
    the observed days, and a noised state of 3 members at 3 noise levels."""
    prior, observations, _, _ = trajectory_case()
    local, fields = observations.segment(0, prior.length)
    field = fields["t"]

    def observe(x):
        return field.operator(x[:, local]).flatten(1)

    likelihood = (observe, field.values.flatten(), field.variance.flatten(), field.mask.flatten())
    x = torch.randn(3, prior.length, *prior.state, generator=torch.Generator().manual_seed(4),
                    dtype=F64)  # fmt: skip
    t = torch.tensor([0.2, 0.5, 0.8], dtype=F64)
    return prior, likelihood, local.tolist(), x, t


def test_chunked_blanket_gives_the_same_guided_noise():
    """A trajectory in chunks of 2 windows: the same noise prediction and the same guided noise
    (SDA and MMPS) as all windows at once."""
    prior, (observe, y, variance, mask), _, x, t = guidance_problem()
    whole = MarkovBlanketDenoiser(prior.window_net(3), window=3)
    parts = MarkovBlanketDenoiser(prior.window_net(3), window=3, chunk=2)
    assert parts.chunked(x) and not whole.chunked(x)
    torch.testing.assert_close(parts(x, t), whole(x, t))
    for guidance in (GaussianGuidance(observe, y, variance, mask),
                     MomentMatchingGuidance(observe, y, variance, mask)):  # fmt: skip
        torch.testing.assert_close(
            guidance.guided_eps(parts, x, t, VPSDE()), guidance.guided_eps(whole, x, t, VPSDE())
        )


class _Recording(torch.nn.Module):
    """A window network that records, per call, how many windows it saw and whether autograd
    was recording."""

    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, []

    def forward(self, x, t):
        self.calls.append((len(x), torch.is_grad_enabled()))
        return self.net(x, t)


def _conv_window_net(window, channels, seed=0):
    """A nonlinear window network in float64 (the exactness below is not special to the linear
    analytic one)."""
    torch.manual_seed(seed)
    net = ScoreUNet(window * channels, hidden=(4, 8), blocks=(1, 1), time_features=8,
                    time_hidden=16).double()  # fmt: skip
    return net


@pytest.mark.parametrize("chunk", [None, 2])
@pytest.mark.parametrize("network", ["exact", "unet"])
def test_graph_only_through_the_windows_of_observed_days(chunk, network):
    """Given the days the observation reads, only the windows that own one keep a graph (or,
    in chunks, are recomputed, ``chunk`` of them at a time), and the noise and the guided
    noise (SDA and MMPS) are those of the whole graph, to float64 rounding."""
    prior, (observe, y, variance, mask), days, x, t = guidance_problem()
    window = 3
    if network == "exact":
        net = prior.window_net(window)
    else:
        net = _conv_window_net(window, prior.state[0])
    recording = _Recording(net)
    whole = MarkovBlanketDenoiser(net, window=window, chunk=chunk)
    sparse = MarkovBlanketDenoiser(recording, window=window, chunk=chunk)
    # DAYS = (2, 5, 6, 9) of 12 days, window 3: windows 1, 4, 5 and 8 of 10 own them
    assert sorted({sparse.owner(d, prior.length) for d in days}) == [1, 4, 5, 8]
    for kind in (GaussianGuidance, MomentMatchingGuidance):
        reference = kind(observe, y, variance, mask).guided_eps(whole, x, t, VPSDE())
        recording.calls.clear()
        guided = kind(observe, y, variance, mask, days=days).guided_eps(sparse, x, t, VPSDE())
        torch.testing.assert_close(guided, reference, rtol=1e-9, atol=1e-10)
        with_graph = [n for n, grad in recording.calls if grad]
        if chunk is None:  # one graph, through 4 windows of each of the 3 members
            assert with_graph == [3 * 4]
        else:  # every vjp recomputes windows {1, 4} and {5, 8} of each member
            vjps = 1 if kind is GaussianGuidance else 4
            assert with_graph == [2] * (2 * 3 * vjps)
    eps, vjp = sparse.linearise(x, t, days)
    torch.testing.assert_close(eps, whole(x, t), rtol=1e-12, atol=1e-12)
    v = torch.zeros_like(x)
    v[:, days] = 1.0
    torch.testing.assert_close(vjp(v), whole.linearise(x, t)[1](v), rtol=1e-9, atol=1e-10)
    v[:, 3] = 1.0  # day 3 belongs to window 2, which keeps no graph
    with pytest.raises(ValueError, match="outside the days"):
        vjp(v)


def test_no_observed_day_needs_no_graph():
    prior = GaussianTrajectory(length=8, height=4, width=8)
    recording = _Recording(prior.window_net(3))
    denoiser = MarkovBlanketDenoiser(recording, window=3)
    x = torch.randn(2, 8, *prior.state, dtype=F64)
    eps, vjp = denoiser.linearise(x, 0.5, days=[])
    assert torch.equal(vjp(torch.zeros_like(x)), torch.zeros_like(x))
    assert recording.calls == [(2 * 6, False)]
    torch.testing.assert_close(eps, denoiser(x, 0.5))
    with pytest.raises(ValueError, match=r"must lie in the trajectory's 0 \.\. 7"):
        denoiser.linearise(x, 0.5, days=[3, 8])


def test_one_pass_carries_an_observation_across_a_former_window_boundary():
    """Observe only day 6. In one pass its information reaches day 5 through the blanket; cut
    into windows of 6 days (the boundary between days 5 and 6), day 5 never sees it."""
    results = {}
    for segment_days in (None, 6):
        for shift in (0.0, 3.0):
            prior, observations, _, _ = trajectory_case(days=(6,))
            field = observations.fields["t"]
            field.values = field.values + shift * field.mask
            samples = analyse(prior, observations, "sda", 16, 1, members=64,
                              segment_days=segment_days)  # fmt: skip
            results[segment_days, shift] = samples.mean(0)
    one_pass = (results[None, 3.0] - results[None, 0.0])[5].mean()
    windowed = results[6, 3.0] - results[6, 0.0]
    assert one_pass > 0.3  # day 5 warms with the observation of day 6 (AR(1), a = 0.8)
    assert torch.equal(windowed[:6], torch.zeros_like(windowed[:6]))
    assert windowed[6].mean() > 1.0


def test_the_first_order_predictor_under_disperses_the_prior_at_few_steps():
    """Unconditional draws of the exact trajectory through the 5-day blanket at 16 steps and no
    correction: DDIM keeps 0.88 of the prior's spread (its first-order error; an exact score is
    not enough), DPM-Solver++(2M) 0.96 (measured, 2000 members, 16 days). Part of what a learned
    network's prior seems to lack is the predictor's, and ``prior_spread.py`` prints this
    exact ratio beside every network's for that reason."""
    prior = GaussianTrajectory(length=16, height=4, width=8)
    denoiser = MarkovBlanketDenoiser(prior.window_net(5), window=5)
    spread = {}
    for solver in ("ddim", "dpm2m"):
        x = sample(denoiser, (2000, 16, *prior.state), VPSDE(), steps=16, corrections=0,
                   generator=torch.Generator().manual_seed(0), progress=False, dtype=F64,
                   solver=solver)  # fmt: skip
        spread[solver] = x.reshape(2000, -1).std(dim=0).mean().item()
    print(spread)
    assert spread["ddim"] < 0.9
    assert 0.93 < spread["dpm2m"] < 1.02


def test_a_larger_sda_gamma_weakens_the_pull_towards_the_observations():
    """The exact-trajectory study's ``--gamma`` axis (studies/sda-gamma): each gamma is its
    own SDA guidance, and a larger one closes less of the prior-to-posterior mean gap while
    widening the ensemble, the trade the study reports."""
    from slams.studies.exact_posterior import TrajectoryProblem, timed_sample

    problem = TrajectoryProblem(window=3, members=400, gammas=(1e-2, 1.0))
    assert {"sda", "sda-gamma1"} <= set(problem.guidances)
    assert problem.guidances["sda"].gamma == 1e-2 and problem.guidances["sda-gamma1"].gamma == 1.0
    settings = SamplerSettings(steps=16, corrections=0, solver="dpm2m")
    agreement = {}
    for label in ("sda", "sda-gamma1"):
        x, _ = timed_sample(problem.eps_fn(label), problem.shape, settings)
        agreement[label] = problem.agreement(x)
    assert agreement["sda-gamma1"]["gap_closed"] < agreement["sda"]["gap_closed"] - 0.3
    assert agreement["sda-gamma1"]["spread_ratio"] > agreement["sda"]["spread_ratio"] + 0.1


def test_zonal_bands_split_the_variance_by_wavenumber():
    """``prior_spread.py --bands``: the bands sum to the mean square (Parseval, the Nyquist
    wave counted once), a zonally uniform field is all zonal mean, and a wave 2 or 7 lands in
    its own band, on a grid of even and of odd width."""
    from slams.studies.prior_spread import ZONAL_BANDS, zonal_band_variance

    for width in (64, 63):
        lon = 2 * np.pi * np.arange(width) / width
        x = np.random.default_rng(0).normal(size=(3, 2, 4, width))
        bands = zonal_band_variance(x)
        assert bands.shape == (2, len(ZONAL_BANDS))
        np.testing.assert_allclose(bands.sum(axis=1), (x**2).mean(axis=(0, 2, 3)), rtol=1e-10)
        fields = {"k 0": np.full((1, 1, 4, width), 2.0), "k 1-3": np.cos(2 * lon)[None, None, None],
                  "k 4-10": np.sin(7 * lon)[None, None, None]}  # fmt: skip
        for name, field in fields.items():
            bands = zonal_band_variance(field)[0]
            expected = np.zeros(len(ZONAL_BANDS))
            expected[list(ZONAL_BANDS).index(name)] = (field**2).mean()
            np.testing.assert_allclose(bands, expected, atol=1e-12)


def test_denoiser_calibration_tells_the_bayes_estimator_from_a_shrunk_one():
    """``studies/denoiser_calibration.py``: the exact Gaussian window denoiser (the Bayes
    estimator) regresses on the truth with slope 1 at every noise level; one whose estimate is
    shrunk by 0.8 shows it (1.25), with less variance and a larger error."""
    from slams.studies.prior_spread import denoiser_calibration

    prior = GaussianTrajectory(length=5, height=4, width=8)
    exact = prior.window_net(5)
    windows = prior.draw(4000, torch.Generator().manual_seed(0))[:, :, 0]  # (N, 5, 4, 8)
    sde = VPSDE()

    def shrunk(x, t):  # eps of the estimate 0.8 x_hat: x(t) - sigma eps = 0.8 (x(t) - sigma eps*)
        sigma = sde.sigma(t)[:, None, None, None]
        return (x - 0.8 * (x - sigma * exact(x, t))) / sigma

    times = (0.2, 0.5, 0.8)
    rows = {name: denoiser_calibration(net, windows, times, torch.Generator().manual_seed(1),
                                       batch=1000)
            for name, net in (("exact", exact), ("shrunk", shrunk))}  # fmt: skip
    for bayes, worse in zip(rows["exact"], rows["shrunk"], strict=True):
        assert abs(bayes["slope"] - 1) < 0.02 and abs(bayes["zonal_slope"] - 1) < 0.03, bayes
        assert abs(worse["slope"] - 1.25) < 0.03, worse
        assert worse["variance"] < bayes["variance"] and worse["mse"] > bayes["mse"]


def test_path_spread_finds_no_gap_for_an_exact_score_and_one_for_a_shrunk_one():
    """``studies/prior_path.py``: with the exact Gaussian window score, the estimate of the
    clean window has the same variance on the sampler's states as on noised data at every call,
    and the draws keep the prior's variance; a score whose estimate is shrunk by 0.8 falls
    behind along the path and its draws are narrower."""
    from slams.studies.prior_spread import path_spread

    prior = GaussianTrajectory(length=5, height=4, width=8)
    exact = prior.window_net(5)
    windows = prior.draw(2000, torch.Generator().manual_seed(0))[:, :, 0]
    sde = VPSDE()

    def shrunk(x, t):
        sigma = sde.sigma(t)[:, None, None, None]
        return (x - 0.8 * (x - sigma * exact(x, t))) / sigma

    options = {"steps": 32, "corrections": 0, "solver": "dpm2m"}
    gaps, finals = {}, {}
    for name, net in (("exact", exact), ("shrunk", shrunk)):
        *calls, final = path_spread(net, windows, options, torch.Generator().manual_seed(1))
        assert len(calls) == 32 and final["t"] is None
        gaps[name] = max(row["estimate_data"] - row["estimate_path"] for row in calls)
        finals[name] = final["state"]
    print(gaps, finals)
    assert gaps["exact"] < 0.05 and 0.93 < finals["exact"] < 1.05, (gaps, finals)
    assert gaps["shrunk"] > 0.1 and finals["shrunk"] < 0.8, (gaps, finals)
