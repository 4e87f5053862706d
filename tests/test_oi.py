import numpy as np
import pytest
import torch

from slams.methods.oi import Background, OptimalInterpolation, estimate_background
from slams.observations import MeasurementOperator

F64 = torch.float64


def _background(shape=(2, 4, 8), rank=6, seed=0) -> Background:
    generator = torch.Generator().manual_seed(seed)
    dim = int(np.prod(shape))
    q, _ = torch.linalg.qr(torch.randn(dim, rank, generator=generator, dtype=F64))
    variances = torch.linspace(5.0, 0.5, rank, dtype=F64)
    residual = 0.05 + 0.1 * torch.rand(shape, generator=generator, dtype=F64)
    return Background(q.T.reshape(rank, *shape), variances, residual)


@pytest.mark.parametrize(
    "operator",
    [MeasurementOperator(coarsen=2), MeasurementOperator(gap=2), MeasurementOperator(2, 2)],
    ids=["coarsen-2", "gap-2", "coarsen-2-gap-2"],
)
def test_oi_is_the_exact_kalman_analysis(operator):
    background = _background()
    shape = tuple(background.residual.shape)
    dim = int(np.prod(shape))
    b = background.dense()
    basis = torch.eye(dim, dtype=F64).reshape(dim, *shape)
    h = operator(basis).reshape(dim, -1).T  # (m, D)
    variance = 0.3
    s = h @ b @ h.T + variance * torch.eye(h.shape[0], dtype=F64)
    gain = b @ h.T @ torch.linalg.inv(s)
    generator = torch.Generator().manual_seed(1)
    y = torch.randn(3, *operator(basis[:1]).shape[1:], generator=generator, dtype=F64)
    # diag(A D A^T) of block means and subsampling is A(D) / coarsen^2
    diagonal = operator(background.residual[None])[0] / operator.coarsen**2
    exact_diagonal = torch.diag(h @ torch.diag(background.residual.flatten()) @ h.T)
    torch.testing.assert_close(diagonal.flatten(), exact_diagonal)
    oi = OptimalInterpolation(background, operator, diagonal, variance)
    expected = (y.reshape(3, -1) @ gain.T).reshape(3, *shape)
    torch.testing.assert_close(oi.mean(y).double(), expected, rtol=1e-4, atol=1e-5)

    # Perturbed-observation members are draws from the exact analysis distribution.
    members = oi.ensemble(y[:1], 4000, torch.Generator().manual_seed(2))[:, 0].double()
    members = members.reshape(4000, -1)
    posterior = b - gain @ h @ b
    torch.testing.assert_close(members.mean(0), expected[0].flatten(), atol=0.1, rtol=0)
    ratio = members.var(0) / posterior.diag()
    assert 0.9 < float(ratio.mean()) < 1.1 and float(ratio.min()) > 0.75


def test_background_estimate_recovers_a_low_rank_covariance():
    truth = _background(rank=4)
    shape = tuple(truth.residual.shape)
    truth = Background(truth.modes, truth.variances, 0.01 + 0 * truth.residual)
    draws = truth.sample(3000, torch.Generator().manual_seed(3)).float()

    def days():
        return iter(draws.split(256))

    estimate = estimate_background(days, len(draws), shape, rank=4, progress=False)
    # the same subspace: the projections of the true modes on the estimated ones
    overlap = truth.modes.reshape(4, -1).float() @ estimate.modes.reshape(4, -1).T
    assert torch.linalg.svdvals(overlap).min() > 0.95
    torch.testing.assert_close(estimate.variances, truth.variances.float(), rtol=0.1, atol=0)
    total = torch.diag(truth.dense()).float()
    torch.testing.assert_close(torch.diag(estimate.dense()), total, rtol=0.15, atol=0.02)
    with pytest.raises(ValueError, match="expected 3001 days"):
        estimate_background(days, 3001, shape, rank=4, progress=False)
