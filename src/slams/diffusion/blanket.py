"""Markov-blanket composition of a trajectory's noise prediction from short windows (SDA)."""

from __future__ import annotations

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


class MarkovBlanketDenoiser(nn.Module):
    """Noise prediction of a whole trajectory composed from a window network (SDA, K = 2k + 1).

    ``net((N, K*C, H, W), t (N,)) -> (N, K*C, H, W)`` predicts the noise of windows of
    ``K`` consecutive states. For a trajectory ``x (B, L, C, H, W)`` the ``L - K + 1``
    windows of every batch member go through ONE batched ``net`` call; with ``k = K // 2``
    the trajectory's noise is taken from

    - states ``0 .. k-1``: the first ``k`` states of the first window,
    - state ``i`` (``k <= i < L - k``): the centre (position ``k``) of window ``i - k``,
    - states ``L-k .. L-1``: the last ``k`` states of the last window.

    For a Markov chain of order ``<= k`` this is exact for the clean process, since every
    state's Markov blanket then lies inside the window it is read from; for the noised
    process ``x(t)`` (no longer Markov) it is SDA's approximation.

    Shapes: ``x (B, L, C, H, W)``, ``t`` scalar or ``(B,)`` -> ``eps (B, L, C, H, W)``.
    """

    def __init__(self, net: nn.Module, window: int = 5):
        super().__init__()
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.net = net
        self.window = window

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        batch, length, channels, height, width = x.shape
        window, half = self.window, self.window // 2
        count = length - window + 1
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        t = t.expand(batch) if t.ndim == 0 else t.reshape(batch)

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
