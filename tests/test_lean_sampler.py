"""The lean sampler (in-place predictor and corrector steps, guidance a group of members at a
time, the network's output filled chunk by chunk) against the sampler before it
(``reference_sampler.py``: every update a new tensor, the guidance on the whole batch at once):
the same analyses (in float64, to 1e-9: the same arithmetic, reordered) for every solver and
guidance, with and without
corrections, in pixel space and through a decoder as the latent methods observe; and the
number of ensemble-sized tensors it keeps alive."""

import weakref

import pytest
import torch
from reference_sampler import reference_sample
from torch.utils._python_dispatch import TorchDispatchMode

from slams.diffusion import VPSDE, GaussianGuidance, MarkovBlanketDenoiser, sample
from slams.diffusion.guidance import MomentMatchingGuidance, members_per_call
from slams.nn import ScoreUNet

SDE = VPSDE()
F64 = torch.float64
MEMBERS, DAYS, CHANNELS, HEIGHT, WIDTH = 3, 9, 2, 8, 8
OBSERVED_DAYS = [1, 4, 7]


def _net(seed: int = 0) -> ScoreUNet:
    torch.manual_seed(seed)
    return ScoreUNet(3 * CHANNELS, hidden=(4, 8), blocks=(1, 1), time_features=8,
                     time_hidden=16).double().eval()  # fmt: skip


def _problem(through_decoder: bool):
    """Observations of 2 x 2 block means on three days, of the state itself (pixel) or of a
    small nonlinear decoder's output (latent); one block in five masked."""
    torch.manual_seed(1)
    decoder = torch.nn.Sequential(torch.nn.Conv2d(CHANNELS, 3, 3, padding=1), torch.nn.Tanh())
    decoder = decoder.double()

    def observe(x):
        days = x[:, OBSERVED_DAYS]
        if through_decoder:
            days = decoder(days.flatten(0, 1)).unflatten(0, days.shape[:2])
        blocks = torch.nn.functional.avg_pool2d(days.flatten(0, 1), 2)
        return blocks.reshape(len(x), -1)

    size = observe(torch.zeros(1, DAYS, CHANNELS, HEIGHT, WIDTH, dtype=F64)).shape[1]
    generator = torch.Generator().manual_seed(2)
    y = torch.randn(size, generator=generator, dtype=F64)
    mask = torch.rand(size, generator=generator) > 0.2
    variance = 0.05 + 0.3 * torch.rand(size, generator=generator, dtype=F64)
    return observe, y, variance, mask


CASES = [
    pytest.param(
        solver,
        guidance,
        corrections,
        decoder,
        id=f"{solver}-{guidance}-{corrections}c-{'latent' if decoder else 'pixel'}",
    )
    for solver in ("ddim", "dpm2m")
    for guidance in ("sda", "mmps")
    for corrections, decoder in ((1, False), (1, True), (0, False), (2, True))
]


@pytest.mark.parametrize(("solver", "guidance", "corrections", "decoder"), CASES)
def test_the_lean_sampler_gives_the_analyses_of_the_one_before(
    solver, guidance, corrections, decoder
):
    observe, y, variance, mask = _problem(decoder)
    if guidance == "sda":
        likelihood = GaussianGuidance(observe, y, variance, mask, days=OBSERVED_DAYS)
    else:
        likelihood = MomentMatchingGuidance(observe, y, variance, mask, iterations=2,
                                            days=OBSERVED_DAYS)  # fmt: skip
    net = _net()
    # 7 windows a member, 3 per call: the lean guidance takes one member at a time, in chunks
    chunked = MarkovBlanketDenoiser(net, window=3, chunk=3)
    whole = MarkovBlanketDenoiser(net, window=3)
    shape = (MEMBERS, DAYS, CHANNELS, HEIGHT, WIDTH)
    options = dict(steps=6, corrections=corrections, tau=0.3, solver=solver, progress=False,
                   dtype=F64, correction_grid_steps=3 if corrections == 2 else None)  # fmt: skip
    lean = sample(lambda x, t: likelihood.guided_eps(chunked, x, t, SDE), shape, SDE,
                  generator=torch.Generator().manual_seed(5), **options)  # fmt: skip
    before = reference_sample(lambda x, t: likelihood._guided_eps(whole, x, t, SDE), shape, SDE,
                              generator=torch.Generator().manual_seed(5), **options)  # fmt: skip
    assert members_per_call(chunked, lean) == 1
    assert lean.abs().max() > 0.1  # a real analysis, not a degenerate one
    torch.testing.assert_close(lean, before, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("solver", ["ddim", "dpm2m"])
def test_unguided_sampling_is_unchanged(solver):
    denoiser = MarkovBlanketDenoiser(_net(3), window=3, chunk=4)
    shape = (2, DAYS, CHANNELS, HEIGHT, WIDTH)
    options = dict(steps=5, corrections=1, tau=0.4, solver=solver, progress=False, dtype=F64)
    lean = sample(denoiser, shape, SDE, generator=torch.Generator().manual_seed(7), **options)
    before = reference_sample(denoiser, shape, SDE, generator=torch.Generator().manual_seed(7),
                              **options)  # fmt: skip
    torch.testing.assert_close(lean, before, rtol=1e-9, atol=1e-9)


def test_members_per_call_fills_a_chunk():
    x = torch.zeros(8, 10, 1, 2, 2)  # 6 windows of 5 days a member
    net = _net()
    assert members_per_call(MarkovBlanketDenoiser(net, window=5, chunk=13), x) == 2
    assert members_per_call(MarkovBlanketDenoiser(net, window=5, chunk=4), x) == 1
    assert members_per_call(MarkovBlanketDenoiser(net, window=5), x) == 8
    assert members_per_call(lambda x, t: x, x) == 8


class _LiveEnsembleTensors(TorchDispatchMode):
    """Counts the tensors of at least ``size`` elements alive at once (by the storage they
    own), over every operation run under it: the sampler's peak in ensemble-sized tensors."""

    def __init__(self, size: int):
        super().__init__()
        self.size, self.live, self.peak = size, {}, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, tuple | list) else (out,):
            if isinstance(tensor, torch.Tensor) and tensor.numel() >= self.size:
                key = tensor.untyped_storage().data_ptr()
                if key not in self.live:
                    self.live[key] = weakref.finalize(tensor.untyped_storage(),
                                                      self.live.pop, key, None)  # fmt: skip
                self.peak = max(self.peak, len(self.live))
        return out


@pytest.mark.parametrize("solver", ["ddim", "dpm2m"])
@pytest.mark.parametrize("guidance", ["sda", "mmps"])
def test_the_sampler_holds_at_most_three_ensemble_states(solver, guidance):
    """Eight members guided one at a time: besides one member's temporaries, the state, the
    network's output and (DPM-Solver++(2M)) one of history; the sampler before held up to 8."""
    observe, y, variance, mask = _problem(through_decoder=True)
    cls = GaussianGuidance if guidance == "sda" else MomentMatchingGuidance
    likelihood = cls(observe, y, variance, mask, days=OBSERVED_DAYS)
    denoiser = MarkovBlanketDenoiser(_net(), window=3, chunk=3)
    members = 8
    shape = (members, DAYS, CHANNELS, HEIGHT, WIDTH)
    # anything over two members' worth is the ensemble's, not one member's
    counter = _LiveEnsembleTensors(3 * DAYS * CHANNELS * HEIGHT * WIDTH)
    with counter:
        sample(lambda x, t: likelihood.guided_eps(denoiser, x, t, SDE), shape, SDE, steps=4,
               corrections=1, solver=solver, generator=torch.Generator().manual_seed(0),
               progress=False, dtype=F64)  # fmt: skip
    assert counter.peak <= 3
    with _LiveEnsembleTensors(counter.size) as before:
        reference_sample(lambda x, t: likelihood._guided_eps(denoiser, x, t, SDE), shape, SDE,
                         steps=4, corrections=1, solver=solver,
                         generator=torch.Generator().manual_seed(0), progress=False,
                         dtype=F64)  # fmt: skip
    assert before.peak > counter.peak  # the counter sees what the old sampler held


def test_the_decoder_in_chunks_gives_the_same_guidance():
    """The latent methods' observation through the decoder, decoded 2 states at a time under
    activation checkpointing: the same fields and the same SDA and MMPS guided noise as all at
    once (MMPS pulls back through the decoder several times and pushes forward by jvp)."""
    from slams.methods.latent import decoded_fields

    torch.manual_seed(4)
    decoder = torch.nn.Sequential(torch.nn.Conv2d(CHANNELS, 4, 3, padding=1),
                                  torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                  torch.nn.Conv2d(4, 3, 3, padding=1)).double().eval()  # fmt: skip
    outputs = [("t", 2), ("precip", 1)]
    z_mean, z_std = torch.tensor(0.1, dtype=F64), torch.tensor(1.5, dtype=F64)
    whole = decoded_fields(decoder, outputs, z_mean, z_std)
    parts = decoded_fields(decoder, outputs, z_mean, z_std, chunk=2)

    def observer(fields):
        def observe(x):
            full = fields(x[:, OBSERVED_DAYS])
            return torch.cat([full[n].flatten(1) for n in ("t", "precip")], 1)

        return observe

    x = torch.randn(2, DAYS, CHANNELS, HEIGHT, WIDTH, dtype=F64)
    size = observer(whole)(x).shape[1]
    y = torch.randn(size, dtype=F64)
    t = torch.tensor([0.3, 0.7], dtype=F64)
    denoiser = MarkovBlanketDenoiser(_net(), window=3, chunk=3)
    for cls in (GaussianGuidance, MomentMatchingGuidance):
        results = [cls(observer(f), y, 0.2, days=OBSERVED_DAYS).guided_eps(denoiser, x, t, SDE)
                   for f in (whole, parts)]  # fmt: skip
        torch.testing.assert_close(results[1], results[0], rtol=1e-10, atol=1e-10)
    leaf = x.clone().requires_grad_(True)
    torch.testing.assert_close(parts(leaf)["t"], whole(x)["t"])
