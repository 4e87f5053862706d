"""Likelihood guidance for a Gaussian observation process.

Two approximations of ``grad_x log p(y | x(t))`` for ``y = A(x) + noise``:

- :class:`GaussianGuidance`, the paper's (SDA, eqs. 6-9): ``p(y | x(t)) ~= N(y | A(x0_hat),
  var_y + gamma sigma^2 / mu^2)``, a diagonal stand-in for the unknown posterior covariance;
- :class:`MomentMatchingGuidance` (beyond the paper, MMPS): ``p(y | x(t)) ~= N(y | A(x0_hat),
  var_y + A V A^T)`` with Tweedie's covariance ``V = Cov[x | x(t)] = sigma^2 / mu * d x0_hat /
  d x(t)``, applied through vector-Jacobian products and inverted by a few Krylov iterations
  (GMRES by default: a learned ``J`` is neither symmetric nor positive definite).

For a Gaussian prior and a linear ``A`` the second is exact at every ``t``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from slams.diffusion.blanket import autograd_linearise
from slams.diffusion.sde import VPSDE


class _Likelihood:
    """Observations ``y``, per-point variances and the validity mask, shared by both guidances."""

    def __init__(
        self,
        observe: Callable[[Tensor], Tensor],
        y: Tensor,
        variance: Tensor | float,
        mask: Tensor | None = None,
        days: Sequence[int] | None = None,
    ):
        self.observe = observe
        self.days = days
        y = torch.as_tensor(y)
        variance = torch.as_tensor(variance, dtype=y.dtype, device=y.device)
        if mask is None:
            mask = torch.ones_like(y, dtype=torch.bool)
        mask = torch.as_tensor(mask, device=y.device).bool()
        shape = torch.broadcast_shapes(y.shape, mask.shape, variance.shape)
        self.mask = mask.expand(shape)
        # Unobserved points get finite placeholders so that NaN data or zero variance there
        # cannot leak into the value or the gradient (0 * NaN is NaN).
        self.y = torch.where(self.mask, y.expand(shape), torch.zeros((), dtype=y.dtype))
        self.variance = torch.where(
            self.mask, variance.expand(shape), torch.ones((), dtype=y.dtype)
        )
        if (self.variance < 0).any():
            raise ValueError("observation variance must be non-negative")
        # observations given per batch member (y of shape (B, N)) tie the guidance to the whole
        # batch; the workflow's are shared by every member
        self._batched = len(shape) > 1 and shape[0] > 1

    def _on(self, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.y.to(like), self.variance.to(like), self.mask.to(like.device)

    def guided_eps(
        self,
        denoiser: Callable[[Tensor, Tensor], Tensor],
        x: Tensor,
        t: Tensor,
        sde: VPSDE,
    ) -> Tensor:
        """The guided noise prediction shaped like ``x``, detached, written into one new tensor
        a group of batch members at a time (:func:`members_per_call`): the members are
        independent, so the result is that of the whole batch at once, while the guidance's
        own temporaries (the data prediction, the likelihood's gradient, the vector-Jacobian
        products) are those of one group, not of the ensemble. ``t`` is a scalar or ``(B,)``.
        """
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t.reshape(x.shape[0])
        size = x.shape[0] if self._batched else members_per_call(denoiser, x)
        if size >= x.shape[0]:
            return self._guided_eps(denoiser, x, t, sde)
        out = torch.empty_like(x)
        for first in range(0, x.shape[0], size):
            group = slice(first, first + size)
            out[group] = self._guided_eps(denoiser, x[group], t[group], sde)
        return out

    @staticmethod
    def _per_member(x: Tensor, t: Tensor, sde: VPSDE) -> tuple[Tensor, Tensor, Tensor]:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t.reshape(x.shape[0])
        per_member = (-1,) + (1,) * (x.ndim - 1)
        return t, sde.mu(t).reshape(per_member), sde.sigma(t).reshape(per_member)


class GaussianGuidance(_Likelihood):
    """Guided noise prediction for observations ``y = A(x) + noise``, noise of variance ``var_y``.

    With Tweedie's estimate ``x0_hat = (x - sigma eps) / mu`` the likelihood of the noised
    state is approximated by (paper eq. 9)

        ``log p(y | x(t)) ~= -1/2 sum mask * (y - A(x0_hat))^2 / (var_y + gamma sigma^2 / mu^2)``

    and the guided noise is ``eps - sigma * grad_x log p(y | x(t))`` (the score is
    ``-eps / sigma``). The gradient flows through the denoiser with autograd; the variance
    term is treated as a constant.

    ``observe`` maps a state batch shaped like ``x`` to observation space; ``y`` has that
    output shape (broadcastable over the batch). ``variance`` is a float or a per-point
    tensor broadcastable to ``y``, always a VARIANCE (not a standard deviation). ``mask``
    (broadcastable to ``y``; 1 observed, 0 not) removes points from the likelihood: masked
    points contribute nothing, even if ``y`` holds NaN there. ``gamma`` is the paper's
    stability constant. ``days``: the days (axis 1 of a trajectory ``x (B, L, C, H, W)``)
    that ``observe`` reads, if it reads only some; the denoiser's backward pass then skips
    the rest (:meth:`~slams.diffusion.MarkovBlanketDenoiser.linearise`), with the same
    result.
    """

    def __init__(
        self,
        observe: Callable[[Tensor], Tensor],
        y: Tensor,
        variance: Tensor | float,
        mask: Tensor | None = None,
        gamma: float = 1e-2,
        days: Sequence[int] | None = None,
    ):
        super().__init__(observe, y, variance, mask, days)
        self.gamma = gamma
        if gamma <= 0 and (self.variance == 0).any():
            raise ValueError("zero observation variance needs gamma > 0 to keep it finite")

    def log_likelihood(self, x0_hat: Tensor, t: Tensor, sde: VPSDE) -> Tensor:
        """``-1/2 sum mask (y - A(x0_hat))^2 / (var_y + gamma sigma^2 / mu^2)``, a scalar
        summed over the batch (batch members are independent, so the gradient of the sum is
        the per-member gradient)."""
        predicted = self.observe(x0_hat)
        per_member = (-1,) + (1,) * (predicted.ndim - 1)
        ratio = (sde.sigma(t) / sde.mu(t)).to(predicted).reshape(per_member)
        y, variance, mask = self._on(predicted)
        residual = torch.where(mask, y - predicted, torch.zeros((), dtype=predicted.dtype))
        return -0.5 * (residual.square() / (variance + self.gamma * ratio**2)).sum()

    def _guided_eps(
        self,
        denoiser: Callable[[Tensor, Tensor], Tensor],
        x: Tensor,
        t: Tensor,
        sde: VPSDE,
    ) -> Tensor:
        """``eps_phi(x, t) - sigma(t) grad_x log p(y | x(t))``, detached, shaped like ``x``.

        ``t`` is a scalar or ``(B,)``. With ``g = d log p / d x0_hat`` (through ``observe``
        only) the chain rule through ``x0_hat = (x - sigma eps) / mu`` gives
        ``grad_x log p = (g - sigma J^T g) / mu``, ``J = d eps / d x`` applied by the
        denoiser's vector-Jacobian product (:func:`linearise`; in chunks for a long
        trajectory). Works whether or not ``x`` requires grad, also within the sampler's
        ``torch.no_grad()``.
        """
        t, mu, sigma = self._per_member(x, t, sde)
        eps, vjp = linearise(denoiser, x, t, self.days)
        with torch.enable_grad():
            x0_hat = ((x.detach() - sigma * eps) / mu).requires_grad_(True)
            (g,) = torch.autograd.grad(self.log_likelihood(x0_hat, t, sde), x0_hat)
        score = (g - sigma * vjp(g)) / mu
        return eps - sigma * score


class MomentMatchingGuidance(_Likelihood):
    """Moment-matching posterior sampling (MMPS, Rozet et al. 2024), beyond the paper.

    The likelihood of the noised state keeps the first two moments of ``p(x | x(t))``:

        ``p(y | x(t)) ~= N(y | A(x0_hat), var_y + A V A^T)``,
        ``V = Cov[x | x(t)] = sigma^2 / mu * J``, ``J = d x0_hat / d x(t)`` (Tweedie),

    and, holding the covariance constant as MMPS does, the guided noise is
    ``eps - sigma J^T A^T u`` with ``u = M^{-1} (y - A(x0_hat))``, ``M = var_y + A V A^T``.
    ``u`` is solved per batch member by ``iterations`` iterations of a Krylov method whose
    matrix-vector product ``v -> var_y v + sigma^2 / mu A J^T A^T v`` costs one
    vector-Jacobian product through the denoiser (``A J^T A^T v`` is the Jacobian of ``A``
    at ``x0_hat`` applied to ``(A J)^T v``, by forward-mode AD, so ``A`` may be nonlinear).

    ``linear_solver``: ``gmres`` (the default, :func:`gmres`) assumes nothing of ``M``.
    ``cg`` (:func:`conjugate_gradient`) assumes ``M`` symmetric positive definite, which it is
    for an exact score (``J`` is then a covariance) but not for a learned one: its Jacobian
    is not symmetric, and along a sampling path ``v^T M v`` turns negative (measured near
    ``t ~ 0.94`` on the demo's networks), where CG's step is undefined and the analyses
    degrade or diverge. Both are exact for a Gaussian prior and a linear ``A`` once
    ``iterations`` reaches the number of observed points; a few iterations capture the
    leading directions. Costs ``iterations + 1`` backward passes per call against 1 for
    :class:`GaussianGuidance`. ``variance`` must be positive at observed points (the system
    is singular otherwise as ``t -> 0``); masked points take no part, and ``days`` works, as
    in :class:`GaussianGuidance`.
    """

    def __init__(
        self,
        observe: Callable[[Tensor], Tensor],
        y: Tensor,
        variance: Tensor | float,
        mask: Tensor | None = None,
        iterations: int = 3,
        linear_solver: str = "gmres",
        days: Sequence[int] | None = None,
    ):
        super().__init__(observe, y, variance, mask, days)
        if iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")
        if linear_solver not in LINEAR_SOLVERS:
            raise ValueError(
                f"linear_solver must be one of {tuple(LINEAR_SOLVERS)}, got {linear_solver!r}"
            )
        if (self.variance == 0).any():
            raise ValueError("moment-matching guidance needs a positive observation variance")
        self.iterations = iterations
        self.linear_solver = linear_solver

    def _guided_eps(
        self,
        denoiser: Callable[[Tensor, Tensor], Tensor],
        x: Tensor,
        t: Tensor,
        sde: VPSDE,
    ) -> Tensor:
        """Guided noise prediction shaped like ``x``, detached (see the class docstring).

        ``J^T`` is ``J_x0^T = (I - sigma J_eps^T) / mu`` with ``J_eps^T`` the denoiser's
        vector-Jacobian product (:func:`linearise`), and ``A^T`` a vector-Jacobian product
        of ``observe`` at ``x0_hat``.
        """
        t, mu, sigma = self._per_member(x, t, sde)
        eps, vjp = linearise(denoiser, x, t, self.days)
        anchor = (x.detach() - sigma * eps) / mu
        with torch.enable_grad():
            leaf = anchor.clone().requires_grad_(True)
            predicted = self.observe(leaf)
        y, variance, mask = self._on(predicted)
        zero = torch.zeros((), dtype=predicted.dtype, device=predicted.device)
        residual = torch.where(mask, y - predicted.detach(), zero)
        scale = (sigma**2 / mu).reshape((-1,) + (1,) * (predicted.ndim - 1))

        def pullback(v: Tensor) -> Tensor:
            """``J_x0^T A^T v``, shaped like ``x``."""
            with torch.enable_grad():
                (w,) = torch.autograd.grad(predicted, leaf, v, retain_graph=True)
            return (w - sigma * vjp(w)) / mu

        def matvec(v: Tensor) -> Tensor:
            _, forward = torch.func.jvp(self.observe, (anchor,), (pullback(v),))
            return variance * v + torch.where(mask, scale * forward, zero)

        u = LINEAR_SOLVERS[self.linear_solver](matvec, residual, self.iterations)
        return eps - sigma * pullback(u)


def members_per_call(denoiser: Callable[[Tensor, Tensor], Tensor], x: Tensor) -> int:
    """How many members of ``x (B, L, ...)`` the guidance takes at once: those whose
    Markov-blanket windows fit in one of the denoiser's network calls (its ``chunk``; at
    least one), or the whole batch for a denoiser that is not chunked."""
    chunk, window = getattr(denoiser, "chunk", None), getattr(denoiser, "window", None)
    if chunk is None or window is None or x.ndim != 5:
        return x.shape[0]
    return max(1, chunk // (x.shape[1] - window + 1))


def linearise(
    denoiser: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    t: Tensor,
    days: Sequence[int] | None = None,
) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """``eps = denoiser(x, t)`` (detached) and ``v -> (d eps / d x)^T v``: the denoiser's own
    :meth:`~slams.diffusion.MarkovBlanketDenoiser.linearise` if it has one (chunked for long
    trajectories; a graph only through the windows that own ``days``), else autograd through
    one forward pass."""
    if hasattr(denoiser, "linearise"):
        return denoiser.linearise(x, t, days)
    return autograd_linearise(denoiser, x, t)


def _member_dot(a: Tensor, c: Tensor) -> Tensor:
    """Dot products of ``a`` and ``c`` per batch member (over all non-batch dimensions), shaped
    ``(B, 1, ...)`` to broadcast against them."""
    return (a * c).reshape(a.shape[0], -1).sum(1).reshape((-1,) + (1,) * (a.ndim - 1))


def conjugate_gradient(matvec: Callable[[Tensor], Tensor], b: Tensor, iterations: int) -> Tensor:
    """Approximate ``M^{-1} b`` for a symmetric positive-definite ``M`` by ``iterations``
    conjugate-gradient iterations from zero, independently per batch member.

    With ``r_0 = p_0 = b``: ``alpha = r^T r / p^T M p``, ``u += alpha p``, ``r -= alpha M p``,
    ``p = r + (r_new^T r_new / r^T r) p``. Where ``p^T M p <= 0`` (``M`` not positive definite
    along ``p``) the step is undefined; it is taken as zero, so the result stays finite but
    is not the solution.
    """
    tiny = torch.finfo(b.dtype).tiny
    u = torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    rr = _member_dot(r, r)
    for _ in range(iterations):
        mp = matvec(p)
        pmp = _member_dot(p, mp)
        # A member whose residual is already zero (e.g. nothing observed) stays put.
        alpha = torch.where(pmp > 0, rr / pmp.clamp(min=tiny), 0.0)
        u = u + alpha * p
        r = r - alpha * mp
        rr_next = _member_dot(r, r)
        beta = torch.where(rr > 0, rr_next / rr.clamp(min=tiny), 0.0)
        p = r + beta * p
        rr = rr_next
    return u


def gmres(matvec: Callable[[Tensor], Tensor], b: Tensor, iterations: int) -> Tensor:
    """Approximate ``M^{-1} b`` for any non-singular ``M`` by ``iterations`` steps of GMRES
    (Saad & Schultz 1986) from zero, without restart, independently per batch member.

    Arnoldi with modified Gram-Schmidt builds an orthonormal basis ``V_k`` of the Krylov space
    ``span{b, M b, ..., M^{k-1} b}`` and the ``(k+1) x k`` Hessenberg ``H`` with
    ``M V_k = V_{k+1} H``; the iterate ``u = V_k y`` minimises ``|b - M u|`` over that space,
    ``y = argmin |beta e_1 - H y|``, ``beta = |b|`` (solved by the pseudo-inverse, so that a
    breakdown, ``H[j+1, j] = 0``, or a zero ``b`` gives the exact or the zero answer). No
    symmetry or definiteness is assumed; the residual never grows with ``k``. Costs ``k``
    products with ``M`` (as many as CG) and keeps ``k + 1`` vectors shaped like ``b``.
    """
    members = b.shape[0]
    tiny = torch.finfo(b.dtype).tiny
    beta = _member_dot(b, b).sqrt()
    basis = [b / beta.clamp(min=tiny)]
    hessenberg = b.new_zeros(members, iterations + 1, iterations)
    for j in range(iterations):
        w = matvec(basis[j])
        for i, v in enumerate(basis):
            h = _member_dot(w, v)
            hessenberg[:, i, j] = h.reshape(members)
            w = w - h * v
        norm = _member_dot(w, w).sqrt()
        hessenberg[:, j + 1, j] = norm.reshape(members)
        if j + 1 < iterations:
            basis.append(w / norm.clamp(min=tiny))
    rhs = b.new_zeros(members, iterations + 1, 1)
    rhs[:, 0, 0] = beta.reshape(members)
    coefficients = (torch.linalg.pinv(hessenberg) @ rhs)[..., 0]
    u = torch.zeros_like(b)
    for j, v in enumerate(basis):
        u = u + coefficients[:, j].reshape(beta.shape) * v
    return u


LINEAR_SOLVERS: dict[str, Callable[[Callable[[Tensor], Tensor], Tensor, int], Tensor]] = {
    "gmres": gmres,
    "cg": conjugate_gradient,
}
