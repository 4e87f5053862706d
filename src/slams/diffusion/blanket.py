"""Markov-blanket composition of a trajectory's noise prediction from short windows (SDA)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

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
        t = self._times(x, t)
        if self.chunked(x):
            out = torch.empty_like(x)  # filled chunk by chunk: no list of pieces to join
            count = x.shape[1] - self.window + 1
            for b in range(len(x)):
                for first, last in self._spans(count):
                    part = x[b : b + 1, first : last + self.window]
                    (start, stop), owned = self._owned(part, t[b : b + 1], first, last, count)
                    out[b : b + 1, start:stop] = owned
            return out
        count = x.shape[1] - self.window + 1
        eps = self.net(windows(x, self.window), t.repeat_interleave(count))
        return self._assemble(eps.reshape(len(x), count, self.window, *x.shape[2:]))

    def _assemble(self, eps: Tensor) -> Tensor:
        """The trajectory's noise ``(B, L, C, H, W)`` from every window's ``(B, count, K, C, H,
        W)``: each day from the one window that owns it (see the class docstring)."""
        window, half = self.window, self.window // 2
        length = eps.shape[1] + window - 1
        return torch.cat(
            [
                eps[:, 0, :half],
                eps[:, : length - 2 * half, half],
                eps[:, -1, window - half :],
            ],
            dim=1,
        )

    def owner(self, day: int, length: int) -> int:
        """The window (its first day) whose noise prediction gives day ``day`` of a trajectory of
        ``length`` days."""
        return min(max(day - self.window // 2, 0), length - self.window)

    def _net_windows(self, x: Tensor, t: Tensor, starts: list[int]) -> Tensor:
        """The network on the windows that begin on days ``starts``: ``(B, len(starts), K, C, H,
        W)``."""
        batch, _, *state = x.shape
        stacked = torch.stack([x[:, j : j + self.window] for j in starts], 1)
        eps = self.net(
            stacked.reshape(batch * len(starts), self.window * state[0], *state[1:]),
            t.repeat_interleave(len(starts)),
        )
        return eps.reshape(batch, len(starts), self.window, *state)

    def _spans(self, count: int):
        """``(first, last)`` of each chunk of ``count`` consecutive windows."""
        for first in range(0, count, self.chunk):
            yield first, min(first + self.chunk, count) - 1

    def _span(self, first: int, last: int, count: int) -> tuple[int, int]:
        """``(start, stop)``: the days windows ``first .. last`` (of ``count``) own."""
        half = self.window // 2
        start = 0 if first == 0 else first + half
        stop = last + self.window if last == count - 1 else last + half + 1
        return start, stop

    def _owned(self, part: Tensor, t: Tensor, first: int, last: int, count: int):
        """The noise of the days windows ``first .. last`` own, from the days they read."""
        window = self.window
        n = last - first + 1
        eps = self.net(windows(part, window), t.repeat_interleave(n))
        eps = eps.reshape(1, n, window, *part.shape[2:])
        length = count + window - 1
        s, p, _ = self._owned_positions(list(range(first, last + 1)), length, eps.device)
        return self._span(first, last, count), eps[:, s, p]

    def linearise(
        self, x: Tensor, t: Tensor | float, days: Sequence[int] | None = None
    ) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        """The noise prediction at ``x`` and its vector-Jacobian product.

        Returns ``eps`` (detached) and ``vjp(v) = (d eps / d x)^T v`` for ``v`` shaped like
        ``x``. Unchunked, ``vjp`` backpropagates through one graph of the forward pass (it
        may be called many times). Chunked, the forward pass keeps no graph and each ``vjp``
        recomputes the chunks with their gradient, one chunk at a time: exact, since every
        day's noise comes from one window, at the price of one more forward pass.

        ``days``: the days on which ``v`` can be nonzero (an observation operator's days;
        ``None``: any day). Only the windows that own one of them then keep a graph (or, in
        chunks, are recomputed): ``(d eps / d x)^T v`` takes nothing from the others, as
        their days' cotangent is zero. The same numbers up to float rounding, for the price of
        a backward pass through those windows alone: with an observation every 4 days about a
        quarter of them. ``vjp`` raises if ``v`` is nonzero on a day those windows do not
        own.
        """
        t = self._times(x, t)
        length = x.shape[1]
        count = length - self.window + 1
        if days is not None and any(not 0 <= int(d) < length for d in days):
            raise ValueError(f"days {list(days)} must lie in the trajectory's 0 .. {length - 1}")
        wanted = None if days is None else sorted({self.owner(int(d), length) for d in days})
        if wanted is not None and len(wanted) == count:
            wanted = None  # every window: the plain graph
        unowned = (
            []
            if wanted is None
            else [d for d in range(length) if self.owner(d, length) not in wanted]
        )
        if self.chunked(x):
            return self._chunked_linearise(x, t, wanted, unowned)
        if wanted is None:
            return autograd_linearise(self, x, t)

        rest = [j for j in range(count) if j not in wanted]
        x = x.detach()
        with torch.no_grad():
            eps = x.new_empty(len(x), count, self.window, *x.shape[2:])
            if rest:
                eps[:, rest] = self._net_windows(x, t, rest)
        if wanted:
            with torch.enable_grad():
                leaf = x.detach().requires_grad_(True)
                owned = self._net_windows(leaf, t, wanted)
            eps[:, wanted] = owned.detach()
        s, p, day = self._owned_positions(wanted, length, x.device)

        def vjp(v: Tensor) -> Tensor:
            self._check_support(v, unowned)
            if not wanted:
                return torch.zeros_like(x)
            cotangent = torch.zeros_like(owned)
            cotangent[:, s, p] = v[:, day]
            with torch.enable_grad():
                (grad,) = torch.autograd.grad(owned, leaf, cotangent, retain_graph=True)
            return grad

        return self._assemble(eps), vjp

    def _owned_positions(self, starts: list[int], length: int, device) -> tuple[Tensor, ...]:
        """Index tensors ``(s, p, day)``: every day that window ``starts[s]`` owns, at its
        position ``p``."""
        owned = [
            (s, p, j + p)
            for s, j in enumerate(starts)
            for p in range(self.window)
            if self.owner(j + p, length) == j
        ]
        return torch.tensor(owned, dtype=torch.long, device=device).reshape(-1, 3).unbind(1)

    def _chunked_linearise(
        self, x: Tensor, t: Tensor, wanted: list[int] | None, unowned: list[int]
    ):
        with torch.no_grad():
            eps = self(x, t)
        x = x.detach()
        length = x.shape[1]
        count = length - self.window + 1
        if wanted is None:
            spans = list(self._spans(count))

            def vjp(v: Tensor) -> Tensor:
                grad = torch.zeros_like(x)
                for b in range(x.shape[0]):
                    for first, last in spans:
                        with torch.enable_grad():
                            part = x[b : b + 1, first : last + self.window].requires_grad_(True)
                            (start, stop), owned = self._owned(
                                part, t[b : b + 1], first, last, count
                            )
                            (piece,) = torch.autograd.grad(owned, part, v[b : b + 1, start:stop])
                        grad[b : b + 1, first : last + self.window] += piece
                return grad

            return eps, vjp

        # Only the owning windows, ``chunk`` of them at a time, each stacked into a leaf of
        # its own (the memory of ``chunk`` windows however far apart they lie).
        groups = [wanted[i : i + self.chunk] for i in range(0, len(wanted), self.chunk)]
        positions = [self._owned_positions(group, length, x.device) for group in groups]

        def vjp(v: Tensor) -> Tensor:
            self._check_support(v, unowned)
            grad = torch.zeros_like(x)
            for b in range(x.shape[0]):
                for group, where in zip(groups, positions, strict=True):
                    leaf = torch.stack([x[b, j : j + self.window] for j in group])
                    with torch.enable_grad():
                        leaf.requires_grad_(True)
                        owned = self.net(leaf.flatten(1, 2), t[b].expand(len(group)))
                        owned = owned.reshape(leaf.shape)
                    s, p, day = where
                    cotangent = torch.zeros_like(owned)
                    cotangent[s, p] = v[b, day]
                    with torch.enable_grad():
                        (piece,) = torch.autograd.grad(owned, leaf, cotangent)
                    for s, j in enumerate(group):
                        grad[b, j : j + self.window] += piece[s]
            return grad

        return eps, vjp

    @staticmethod
    def _check_support(v: Tensor, unowned: list[int]) -> None:
        """Raise if ``v`` is nonzero on an ``unowned`` day (nonzeros counted per day, without a
        copy of those days)."""
        if unowned and torch.count_nonzero(v, dim=[0, *range(2, v.ndim)])[unowned].any():
            raise ValueError(
                "the cotangent is nonzero on a day outside the days given to linearise"
            )
