"""Tests of the measurement operator A (coarsening, sparsity, noise variance)."""

from __future__ import annotations

import math

import pytest
import torch

from slams.observations import MeasurementOperator, observed_days


def test_block_average_exact_values():
    x = torch.arange(4 * 6, dtype=torch.float64).reshape(1, 4, 6)
    y = MeasurementOperator(coarsen=2)(x)
    # block (rows 0-1, cols 0-1) = mean(0, 1, 6, 7) = 3.5, blocks step 2 in a row, 12 per row
    expected = torch.tensor([[[3.5, 5.5, 7.5], [15.5, 17.5, 19.5]]], dtype=torch.float64)
    torch.testing.assert_close(y, expected)
    # leading dimensions are kept; the identity for coarsen = gap = 1
    z = torch.randn(2, 3, 5, 8, 16)
    assert MeasurementOperator(coarsen=4)(z).shape == (2, 3, 5, 2, 4)
    torch.testing.assert_close(MeasurementOperator()(z), z)
    with pytest.raises(ValueError, match="must divide the grid"):
        MeasurementOperator(coarsen=3)(z)


def test_gap_keeps_every_gth_point():
    x = torch.arange(8 * 12, dtype=torch.float64).reshape(8, 12)
    y = MeasurementOperator(gap=4)(x)
    assert y.shape == (2, 3)
    torch.testing.assert_close(y, x[[0, 4]][:, [0, 4, 8]])
    # ceil division when the gap does not divide the grid
    assert MeasurementOperator(gap=3)(x).shape == (3, 4)
    # coarsen then gap: gap applies to the coarse grid
    both = MeasurementOperator(coarsen=2, gap=2)(x)
    torch.testing.assert_close(both, MeasurementOperator(coarsen=2)(x)[::2, ::2])


def test_noise_is_a_variance_not_a_std():
    x = torch.randn(200, 16, 32, generator=torch.Generator().manual_seed(0))
    for variance in (0.1, 4.0):
        operator = MeasurementOperator(coarsen=2, noise_variance=variance)
        noise = operator.noisy(x, torch.Generator().manual_seed(1)) - operator(x)
        # 25600 samples: the sample variance has relative standard error sqrt(2/n) < 1 %
        assert abs(noise.var().item() / variance - 1) < 0.04
        assert abs(noise.mean().item()) < 4 * math.sqrt(variance / noise.numel())
    # reproducible with a generator; noise-free operator adds nothing
    operator = MeasurementOperator(noise_variance=0.5)
    first = operator.noisy(x, torch.Generator().manual_seed(3))
    assert torch.equal(first, operator.noisy(x, torch.Generator().manual_seed(3)))
    torch.testing.assert_close(MeasurementOperator(gap=2).noisy(x), x[..., ::2, ::2])


@pytest.mark.parametrize(("coarsen", "gap"), [(1, 1), (2, 1), (1, 3), (2, 2), (4, 2)])
def test_operator_is_linear_and_its_adjoint_is_the_vjp(coarsen, gap):
    operator = MeasurementOperator(coarsen=coarsen, gap=gap)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 8, 16, generator=generator, dtype=torch.float64)
    z = torch.randn(3, 8, 16, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(operator(2 * x - 3 * z), 2 * operator(x) - 3 * operator(z))
    y = torch.randn(operator(x).shape, generator=generator, dtype=torch.float64)
    _, adjoint_y = torch.func.vjp(operator, x)
    (adjoint_y,) = adjoint_y(y)
    # <A x, y> = <x, A^T y>
    torch.testing.assert_close((operator(x) * y).sum(), (x * adjoint_y).sum())
    # the adjoint spreads y / coarsen^2 over each observed block and is zero elsewhere
    expected = torch.zeros_like(x)
    spread = y.repeat_interleave(coarsen, -2).repeat_interleave(coarsen, -1) / coarsen**2
    for i in range(y.shape[-2]):
        for j in range(y.shape[-1]):
            rows = slice(i * gap * coarsen, (i * gap + 1) * coarsen)
            cols = slice(j * gap * coarsen, (j * gap + 1) * coarsen)
            expected[..., rows, cols] = spread[..., i * coarsen : (i + 1) * coarsen,
                                               j * coarsen : (j + 1) * coarsen]  # fmt: skip
    torch.testing.assert_close(adjoint_y, expected)


def test_upsample_blocks_and_gaps():
    x = torch.arange(8 * 8, dtype=torch.float64).reshape(1, 8, 8)
    coarse = MeasurementOperator(coarsen=4)
    up = coarse.upsample(coarse(x), x.shape)
    assert up.shape == x.shape
    torch.testing.assert_close(up[0, :4, :4], torch.full((4, 4), coarse(x)[0, 0, 0].item(),
                                                         dtype=torch.float64))  # fmt: skip
    torch.testing.assert_close(coarse(up), coarse(x))  # A(upsample(y)) = y

    sparse = MeasurementOperator(gap=4)
    up = sparse.upsample(sparse(x), (8, 8))
    observed = ~torch.isnan(up)
    assert observed.sum() == 4 and observed[0, ::4, ::4].all()
    torch.testing.assert_close(up[observed], x[observed])

    both = MeasurementOperator(coarsen=2, gap=2)
    up = both.upsample(both(x), x.shape)
    # observed coarse cells (0, 0), (0, 2), (2, 0), (2, 2) fill 2 x 2 blocks: 16 points
    assert (~torch.isnan(up)).sum() == 16
    assert torch.isnan(up[0, 2:4]).all() and not torch.isnan(up[0, 0:2, 0:2]).any()
    with pytest.raises(ValueError, match="do not fit a grid"):
        both.upsample(torch.zeros(1, 3, 3), (8, 8))


def test_observed_days():
    days = observed_days(10, 4)
    assert days.dtype == torch.bool
    assert days.nonzero().flatten().tolist() == [0, 4, 8]
    assert MeasurementOperator.observed_days(3, 1).all()
    with pytest.raises(ValueError):
        observed_days(5, 0)


def test_invalid_arguments():
    with pytest.raises(ValueError):
        MeasurementOperator(coarsen=0)
    with pytest.raises(ValueError, match="noise_variance"):
        MeasurementOperator(noise_variance=-1.0)
