"""Tests of the networks: periodic padding, U-Net and autoencoder shapes and behaviour."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slams.nn import AutoEncoder, ChannelLayerNorm, PeriodicConv2d, ScoreUNet


def _ones_conv(kernel_size: int = 3, stride: int = 1) -> PeriodicConv2d:
    conv = PeriodicConv2d(1, 1, kernel_size, stride=stride)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        conv.bias.zero_()
    return conv


def test_periodic_conv_wraps_longitude_only():
    height, width = 6, 10
    conv = _ones_conv()

    east = torch.zeros(1, 1, height, width)
    east[..., 3, width - 1] = 1.0  # impulse at the east edge
    out = conv(east)
    assert out.shape == east.shape
    assert out[0, 0, 3, 0] == 1.0  # ... reaches the west edge across the antimeridian
    assert out[0, 0, 2:5, 0].tolist() == [1.0, 1.0, 1.0]
    assert out[0, 0, 3, 1] == 0.0  # but no further than the kernel radius

    north = torch.zeros(1, 1, height, width)
    north[..., height - 1, 4] = 1.0  # impulse at the northernmost row
    out = conv(north)
    assert out[0, 0, height - 2, 4] == 1.0  # its southern neighbour sees it
    assert out[0, 0, 0].abs().sum() == 0.0  # the southernmost row does not (no wrap)

    # zero padding in latitude: a constant field loses a third of its mass at the poles
    out = conv(torch.ones(1, 1, height, width))
    assert torch.all(out[0, 0, 1:-1] == 9.0)
    assert torch.all(out[0, 0, [0, -1]] == 6.0)


def test_periodic_conv_shapes_and_kernel():
    x = torch.randn(2, 3, 8, 16)
    assert PeriodicConv2d(3, 5, 5)(x).shape == (2, 5, 8, 16)
    assert PeriodicConv2d(3, 5, 3, stride=2)(x).shape == (2, 5, 4, 8)
    assert PeriodicConv2d(3, 5, 1)(x).shape == (2, 5, 8, 16)
    with pytest.raises(ValueError, match="odd kernel_size"):
        PeriodicConv2d(3, 5, 4)
    # a periodic conv commutes with rolls in longitude
    conv = PeriodicConv2d(3, 4, 5)
    torch.testing.assert_close(conv(x.roll(3, dims=-1)), conv(x).roll(3, dims=-1))


def test_channel_layer_norm():
    x = 3 + 2 * torch.randn(4, 6, 5, 7)
    y = ChannelLayerNorm()(x)
    torch.testing.assert_close(y.mean(dim=1), torch.zeros(4, 5, 7), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(dim=1, unbiased=False), torch.ones(4, 5, 7), atol=1e-3, rtol=0)
    # the same numbers and gradients as PyTorch's own layer norm over a channels-last copy
    x.requires_grad_(True)
    reference = F.layer_norm(x.movedim(1, -1), (6,), eps=1e-5).movedim(-1, 1)
    torch.testing.assert_close(ChannelLayerNorm()(x), reference, atol=1e-5, rtol=1e-5)
    weights = torch.randn_like(x)
    (ours,) = torch.autograd.grad((ChannelLayerNorm()(x) * weights).sum(), x)
    (theirs,) = torch.autograd.grad((reference * weights).sum(), x)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    ("hidden", "blocks", "shape"),
    [
        ((8, 16, 32), (1, 2, 1), (2, 5, 8, 16)),
        ((8,), (2,), (1, 3, 5, 7)),
        ((8, 16), (1, 1), (3, 4, 6, 10)),
    ],
)
def test_unet_shapes(hidden, blocks, shape):
    net = ScoreUNet(shape[1], hidden=hidden, blocks=blocks, time_features=16, time_hidden=32)
    out = net(torch.randn(shape), torch.rand(shape[0]))
    assert out.shape == shape
    assert torch.isfinite(out).all()


def test_unet_rejects_grids_that_do_not_halve():
    net = ScoreUNet(2, hidden=(8, 16, 32), blocks=(1, 1, 1), time_features=16, time_hidden=32)
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.randn(1, 2, 6, 16), torch.rand(1))
    with pytest.raises(ValueError, match="one entry per level"):
        ScoreUNet(2, hidden=(8, 16), blocks=(1,))


def test_unet_time_argument_and_dependence():
    torch.manual_seed(0)
    net = ScoreUNet(3, hidden=(8, 16), blocks=(1, 1), time_features=16, time_hidden=32)
    x = torch.randn(2, 3, 8, 16)
    with torch.no_grad():
        batched = net(x, torch.full((2,), 0.25))
        torch.testing.assert_close(net(x, torch.tensor(0.25)), batched)
        torch.testing.assert_close(net(x, 0.25), batched)
        assert not torch.allclose(net(x, torch.full((2,), 0.75)), batched)
        # batch members are independent (LayerNorm, no batch statistics)
        torch.testing.assert_close(net(x[1:], torch.full((1,), 0.25)), batched[1:])


def test_unet_is_periodic_in_longitude_but_not_latitude():
    torch.manual_seed(0)
    net = ScoreUNet(2, hidden=(8, 16, 32), blocks=(1, 1, 1), time_features=16, time_hidden=32)
    x, t = torch.randn(1, 2, 8, 16), torch.tensor([0.4])
    with torch.no_grad():
        out = net(x, t)
        # rolling by a multiple of the coarsest cell (4) commutes with the whole network
        torch.testing.assert_close(net(x.roll(4, dims=-1), t), out.roll(4, dims=-1))
        # latitude is zero padded: the same roll in latitude does not commute
        shifted = net(x.roll(4, dims=-2), t)
        assert (shifted - out.roll(4, dims=-2)).abs().max() > 1e-2


def test_zonal_mixing_starts_as_the_paper_network_and_sees_the_whole_circle():
    """``zonal_mixing`` (beyond the paper): zero at start, so the network computes what the
    paper's does with the same weights; once trained (here: weights set), a change at one
    longitude reaches the opposite one in one level, which the paper's convolutions do not."""
    torch.manual_seed(0)
    paper = ScoreUNet(2, hidden=(8,), blocks=(2,))
    zonal = ScoreUNet(2, hidden=(8,), blocks=(2,), zonal_mixing=True)
    missing = zonal.load_state_dict(paper.state_dict(), strict=False).missing_keys
    assert missing and all(key.startswith("zonal.") for key in missing)
    x = torch.randn(1, 2, 8, 32)
    with torch.no_grad():
        torch.testing.assert_close(zonal(x, 0.5), paper(x, 0.5), rtol=0, atol=0)
        for mix in zonal.zonal:
            nn.init.normal_(mix.weight, std=0.3)
        moved = x.clone()
        moved[..., 0] += 1.0  # one longitude changes
        for net, reaches in ((paper, False), (zonal, True)):
            change = (net(moved, 0.5) - net(x, 0.5))[..., 16].abs().max().item()
            assert (change > 1e-4) is reaches, (net.zonal, change)


def test_unet_backward_in_the_paper_latent_configuration():
    # the paper's latent configuration accepts a 5-day window of 10 channels on 32 x 64
    net = ScoreUNet(50, hidden=(32, 64, 128), blocks=(3, 3, 3))
    x = torch.randn(2, 50, 32, 64)
    loss = net(x, torch.rand(2)).square().mean()
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())


def test_autoencoder_structure_and_shapes():
    ae = AutoEncoder(in_channels=14, out_channels=10, latent_channels=6, hidden=16, layers=5)
    for part in (ae.encoder, ae.decoder):
        convs = [m for m in part if isinstance(m, PeriodicConv2d)]
        assert len(convs) == 5
        assert all(c.kernel_size == (5, 5) and c.stride == (1, 1) for c in convs)
        assert sum(isinstance(m, nn.BatchNorm2d) for m in part) == 4
        assert sum(isinstance(m, nn.ReLU) for m in part) == 4
        assert isinstance(part[-1], PeriodicConv2d)  # nothing after the last layer
    x = torch.randn(3, 14, 8, 16)
    z = ae.encode(x)
    assert z.shape == (3, 6, 8, 16)  # latent grid = input grid
    assert ae.decode(z).shape == (3, 10, 8, 16)
    assert ae(x).shape == (3, 10, 8, 16)
    single = AutoEncoder(2, 3, 4, layers=1)
    assert len(single.encoder) == 1 and single(torch.randn(1, 2, 4, 8)).shape == (1, 3, 4, 8)


@pytest.mark.parametrize("factor", [2, 4])
def test_autoencoder_downsampling_shrinks_the_latent_grid(factor):
    ae = AutoEncoder(14, 10, latent_channels=6, hidden=8, layers=5, kernel_size=3,
                     downsample=factor)  # fmt: skip
    strides = [m.stride for m in ae.encoder if isinstance(m, PeriodicConv2d)]
    steps = factor.bit_length() - 1
    assert strides == [(2, 2)] * steps + [(1, 1)] * (5 - steps)
    assert sum(isinstance(m, nn.Upsample) for m in ae.decoder) == steps
    x = torch.randn(2, 14, 16, 32)
    z = ae.encode(x)
    assert z.shape == (2, 6, 16 // factor, 32 // factor)
    assert ae.decode(z).shape == (2, 10, 16, 32)
    with pytest.raises(ValueError, match="downsample must be"):
        AutoEncoder(14, 10, 6, downsample=3)


def test_autoencoder_eval_mode_is_batch_independent():
    torch.manual_seed(0)
    ae = AutoEncoder(3, 3, 2, hidden=8, layers=3)
    x = torch.randn(4, 3, 8, 16)
    other = torch.cat([x[:1], 10 * x[1:]])  # same first member, different rest of the batch
    ae.train()
    # in training mode BatchNorm uses batch statistics: a member's code depends on the batch
    assert not torch.allclose(ae.encode(x)[:1], ae.encode(other)[:1])
    ae.eval()  # what the caller must do when the autoencoder is frozen
    with torch.no_grad():
        torch.testing.assert_close(ae.encode(x)[:1], ae.encode(x[:1]))
        torch.testing.assert_close(ae.encode(x)[:1], ae.encode(other)[:1])


def test_unet_is_exact_at_pure_noise_whatever_its_weights():
    """At t = 1 the data signal is mu(1) = 1e-3 of x_t, so eps = x_t / sigma up to ~1e-3.

    The residual is scaled by mu / sqrt(mu^2 + sigma^2): even a random, untrained network
    returns that answer, which keeps the sampler's first (1/mu-amplifying) steps stable.
    """
    torch.manual_seed(0)
    net = ScoreUNet(50, hidden=(8, 16), blocks=(1, 1))
    with torch.no_grad():  # a network whose own output is of order one (as trained ones are)
        net.skip.weight.normal_(std=0.5)
        net.skip.bias.fill_(0.5)
    x = torch.randn(2, 50, 8, 16)
    eps = net(x, torch.ones(2))
    relative = (eps - x).norm() / x.norm()
    assert relative < 0.01
    mid = net(x, torch.full((2,), 0.5))
    assert (mid - x).norm() / x.norm() > 0.1  # away from t = 1 the network does the work


def test_wrap_longitude_is_circular_padding_with_its_gradient():
    import torch.nn.functional as F

    from slams.nn.layers import wrap_longitude

    x = torch.randn(2, 3, 4, 6, dtype=torch.float64, requires_grad=True)
    for p in (1, 2):
        torch.testing.assert_close(wrap_longitude(x, p), F.pad(x, (p, p, 0, 0), mode="circular"))
        assert torch.autograd.gradcheck(lambda v, p=p: wrap_longitude(v, p), (x,))
        # forward mode and vmap too: MMPS pushes tangents through the decoder (torch.func.jvp)
        assert torch.autograd.gradcheck(lambda v, p=p: wrap_longitude(v, p), (x,),
                                        check_forward_ad=True)  # fmt: skip
        v = torch.randn_like(x)
        ours = torch.func.jvp(lambda u, p=p: wrap_longitude(u, p).square(), (x.detach(),), (v,))
        reference = torch.func.jvp(
            lambda u, p=p: F.pad(u, (p, p, 0, 0), mode="circular").square(), (x.detach(),), (v,)
        )
        torch.testing.assert_close(ours, reference)
        torch.testing.assert_close(
            torch.func.vmap(lambda u, p=p: wrap_longitude(u, p))(x.detach()),
            F.pad(x.detach(), (p, p, 0, 0), mode="circular"),
        )
    assert wrap_longitude(x, 0) is x


def test_mmps_guidance_runs_through_a_real_decoder():
    """MMPS guidance through an autoencoder's decoder (periodic convolutions), as the latent
    methods use it under the physical protocol: a finite guided noise that differs from the
    unguided one. (Broken until the padding had a forward-mode rule.)"""
    from slams.diffusion import VPSDE, MomentMatchingGuidance

    torch.manual_seed(0)
    model = AutoEncoder(3, 3, latent_channels=2, hidden=8, layers=2).eval()
    decoder = model.decode
    y = torch.randn(1, 3, 8, 16)
    guidance = MomentMatchingGuidance(lambda z: decoder(z), y, 0.1, iterations=2)
    z = torch.randn(2, 2, 8, 16)
    t = torch.tensor([0.3, 0.6])

    def eps_net(x, t):
        return 0.5 * x

    guided = guidance.guided_eps(eps_net, z, t, VPSDE())
    assert torch.isfinite(guided).all()
    assert not torch.allclose(guided, eps_net(z, t))


def test_sampling_layout_gives_the_same_networks_to_rounding():
    """for_sampling (BatchNorms folded into the convolutions, channels-last weights on the CPU)
    changes the memory layout, the channel LayerNorm's kernel and the modulation's fused
    multiply-add, not what the networks compute:
    the U-Net's and the decoder's outputs and input gradients agree with the trained layout's to
    float32 rounding, and the activations really run channels-last."""
    from slams.models import for_sampling
    from slams.nn.layers import is_channels_last

    torch.manual_seed(0)
    unet = ScoreUNet(6, hidden=(8, 16), blocks=(1, 1)).eval().requires_grad_(False)
    ae = AutoEncoder(5, 3, latent_channels=2, hidden=8, layers=3, downsample=2)
    ae = ae.eval().requires_grad_(False)
    with torch.no_grad():  # non-trivial skip and BatchNorm statistics
        unet.skip.bias.normal_()
        for module in ae.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
    x = torch.randn(3, 6, 8, 16)
    z = torch.randn(3, 2, 4, 8)
    t = torch.tensor([0.1, 0.5, 0.9])

    def value_and_input_grad(f, inp):
        leaf = inp.clone().requires_grad_(True)
        out = f(leaf)
        (grad,) = torch.autograd.grad(out, leaf, torch.cos(torch.arange(out.numel())).view_as(out))
        return out.detach(), grad

    references = [value_and_input_grad(lambda v: unet(v, t), x), value_and_input_grad(ae.decode, z)]
    seen = []
    hook = unet.encoder[0][0].conv1.register_forward_pre_hook(
        lambda _m, args: seen.append(is_channels_last(args[0]))
    )
    for_sampling(unet), for_sampling(ae)
    assert is_channels_last(unet.head.weight) and is_channels_last(ae.decoder[0].weight)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in ae.modules())  # folded
    results = [value_and_input_grad(lambda v: unet(v, t), x), value_and_input_grad(ae.decode, z)]
    hook.remove()
    assert seen == [True]
    for (out, grad), (ref_out, ref_grad) in zip(results, references, strict=True):
        torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-5)
    # and forward mode through the decoder, as MMPS pushes tangents (torch.func.jvp)
    tangent = torch.randn_like(z)
    _, ours = torch.func.jvp(ae.decode, (z,), (tangent,))
    assert torch.isfinite(ours).all() and ours.abs().sum() > 0


def test_channel_layer_norm_channels_last_path():
    from slams.nn.layers import is_channels_last

    x = 3 + 2 * torch.randn(4, 6, 5, 7, dtype=torch.float64)
    last = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    y = ChannelLayerNorm()(last)
    assert is_channels_last(y)
    torch.testing.assert_close(y, ChannelLayerNorm()(x))
    assert torch.autograd.gradcheck(ChannelLayerNorm(), (last,))
    assert not is_channels_last(
        torch.randn(2, 1, 4, 4).contiguous(memory_format=torch.channels_last)
    )
