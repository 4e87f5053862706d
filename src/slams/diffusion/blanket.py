"""Markov-blanket composition of a trajectory's noise prediction from short windows (SDA)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


def windows(x: Tensor, window: int) -> Tensor:
    """All windows of ``window`` consecutive states (stride 1), stacked on channels.

    ``x (B, L, C, H, W) -> (B * (L - K + 1), K * C, H, W)`` with ``K = window``. Row
    ``b * (L - K + 1) + j`` holds states ``j .. j + K - 1`` of trajectory ``b``; channel
    ``k * C + c`` is channel ``c`` of the window's ``k``-th state (state-major, as
    ``x[b, j : j + K].flatten(0, 1)``).
    """
    if x.ndim != 5:
        raise ValueError(f"windows expects x of shape (B, L, C, H, W), got {tuple(x.shape)}")
    batch, length, channels, height, width = x.shape
    if length < window:
        raise ValueError(f"a trajectory of length {length} is shorter than the window {window}")
    count = length - window + 1
    # unfold -> (B, count, C, H, W, K); put the window axis next to the channels.
    stacked = x.unfold(1, window, 1).permute(0, 1, 5, 2, 3, 4)
    return stacked.reshape(batch * count, window * channels, height, width)


def autograd_linearise(
    fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, t: Tensor
) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """``eps = fn(x, t)`` (detached) and ``v -> (d eps / d x)^T v`` by autograd through one
    forward pass, whose graph every call of the product reuses."""
    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        eps = fn(leaf, t)

    def vjp(v: Tensor) -> Tensor:
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(eps, leaf, v, retain_graph=True)
        return grad

    return eps.detach(), vjp


class MarkovBlanketDenoiser(nn.Module):
    """Noise prediction of a whole trajectory composed from a window network (SDA, K = 2k + 1).

    ``net((N, K*C, H, W), t (N,)) -> (N, K*C, H, W)`` predicts the noise of windows of
    ``K`` consecutive states. For a trajectory ``x (B, L, C, H, W)`` with ``k = K // 2``
    the trajectory's noise is taken from

    - states ``0 .. k-1``: the first ``k`` states of the first window,
    - state ``i`` (``k <= i < L - k``): the centre (position ``k``) of window ``i - k``,
    - states ``L-k .. L-1``: the last ``k`` states of the last window,

    so each state's noise comes from exactly one window. For a Markov chain of order ``<= k``
    this is exact for the clean process, since every state's Markov blanket then lies inside
    the window it is read from; for the noised process ``x(t)`` (no longer Markov) it is SDA's
    approximation.

    ``chunk``: the most windows in one ``net`` call (``None``: all ``B (L - K + 1)`` at
    once). A whole year in one pass is thousands of windows; in chunks the network's memory
    is that of ``chunk`` windows, whatever the length (:meth:`linearise` keeps it so for
    the guidance's gradients too).

    Shapes: ``x (B, L, C, H, W)``, ``t`` scalar or ``(B,)`` -> ``eps (B, L, C, H, W)``.
    """

    def __init__(self, net: nn.Module, window: int = 5, chunk: int | None = None):
        super().__init__()
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if chunk is not None and chunk < 1:
            raise ValueError(f"chunk must be >= 1 window, got {chunk}")
        self.net = net
        self.window = window
        self.chunk = chunk

    def _times(self, x: Tensor, t: Tensor | float) -> Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        return t.expand(x.shape[0]) if t.ndim == 0 else t.reshape(x.shape[0])

    def chunked(self, x: Tensor) -> bool:
        """Whether ``x`` has more windows than one network call takes."""
        count = x.shape[1] - self.window + 1
        return self.chunk is not None and x.shape[0] * count > self.chunk

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        batch, length, channels, height, width = x.shape
        window, half = self.window, self.window // 2
        count = length - window + 1
        t = self._times(x, t)
        if self.chunked(x):
            return torch.cat(
                [torch.cat(list(self._chunks(x[b : b + 1], t[b : b + 1])), 1) for b in range(batch)]
            )
        eps = self.net(windows(x, window), t.repeat_interleave(count))
        eps = eps.reshape(batch, count, window, channels, height, width)
        return torch.cat(
            [
                eps[:, 0, :half],
                eps[:, : length - 2 * half, half],
                eps[:, -1, window - half :],
            ],
            dim=1,
        )

    def _chunks(self, x: Tensor, t: Tensor):
        """For one trajectory ``x (1, L, C, H, W)``: the noise ``(1, owned, C, H, W)`` of the
        days each chunk of consecutive windows owns, in order (together: every day)."""
        window, half = self.window, self.window // 2
        count = x.shape[1] - window + 1
        for first, last in self._spans(count):
            yield self._owned(x[:, first : last + window], t, first, last, count, half)[1]

    def _spans(self, count: int):
        """``(first, last)`` of each chunk of ``count`` consecutive windows."""
        for first in range(0, count, self.chunk):
            yield first, min(first + self.chunk, count) - 1

    def _owned(self, part: Tensor, t: Tensor, first: int, last: int, count: int, half: int):
        """The noise of the days windows ``first .. last`` own, from the days they read."""
        window = self.window
        n = last - first + 1
        eps = self.net(windows(part, window), t.repeat_interleave(n))
        eps = eps.reshape(1, n, window, *part.shape[2:])
        pieces, start = [], first + half
        if first == 0:
            pieces.append(eps[:, 0, :half])
            start = 0
        pieces.append(eps[:, :, half])
        stop = last + half + 1
        if last == count - 1:
            pieces.append(eps[:, -1, window - half :])
            stop = last + window
        return (start, stop), torch.cat(pieces, dim=1)

    def linearise(self, x: Tensor, t: Tensor | float) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        """The noise prediction at ``x`` and its vector-Jacobian product.

        Returns ``eps`` (detached) and ``vjp(v) = (d eps / d x)^T v`` for ``v`` shaped like
        ``x``. Unchunked, ``vjp`` backpropagates through the one graph of the forward pass
        (it may be called many times). Chunked, the forward pass keeps no graph and each
        ``vjp`` recomputes every chunk with its gradient, one chunk at a time: exact, since
        every day's noise comes from one window, at the price of one more forward pass.
        """
        t = self._times(x, t)
        if not self.chunked(x):
            return autograd_linearise(self, x, t)

        with torch.no_grad():
            eps = self(x, t)
        x = x.detach()

        def vjp(v: Tensor) -> Tensor:
            grad = torch.zeros_like(x)
            half, count = self.window // 2, x.shape[1] - self.window + 1
            for b in range(x.shape[0]):
                for first, last in self._spans(count):
                    with torch.enable_grad():
                        part = x[b : b + 1, first : last + self.window].requires_grad_(True)
                        (start, stop), owned = self._owned(
                            part, t[b : b + 1], first, last, count, half
                        )
                        (piece,) = torch.autograd.grad(owned, part, v[b : b + 1, start:stop])
                    grad[b : b + 1, first : last + self.window] += piece
            return grad

        return eps, vjp
