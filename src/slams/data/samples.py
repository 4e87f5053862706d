"""Training samples streamed from the dataset store: days or Markov-blanket windows of days.

The split files (``dataset/{split}.nc``) and latent files (``latents/{set}/{split}.nc``) are
read lazily, one sample at a time, so memory does not grow with the number of years: the
paper's 16 training years at 1.5 degrees are ~3.7 GB of float32 temperature alone. Each
DataLoader worker opens its own file handle (HDF5 handles must not cross a fork).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import netCDF4
import numpy as np
import torch
from torch import Tensor


class NetCDFSamples(torch.utils.data.Dataset):
    """Samples ``x[s : s + window]`` of the named variables, stacked on channels.

    Every variable has ``time`` first and ``(lat, lon)`` last; a 4-D variable
    ``(time, level, lat, lon)`` contributes ``level`` channels, a 3-D one a single channel.
    Item ``i`` starts at day ``starts[i]`` and is ``(window * C, H, W)`` float32, state-major
    (the layout of :func:`slams.diffusion.windows`); with ``window = 1`` it is one day
    ``(C, H, W)``. ``offset`` and ``scale`` (``(C,)``) standardise the channels:
    ``(x - offset) / scale``.

    Only the path, the start indices and the small per-channel arrays are held (and pickled
    to workers); the data stay on disk.
    """

    def __init__(
        self,
        path: str | Path,
        variables: Sequence[str],
        starts: np.ndarray,
        window: int = 1,
        offset: np.ndarray | None = None,
        scale: np.ndarray | None = None,
    ):
        self.path = str(path)
        self.variables = list(variables)
        self.starts = np.asarray(starts, dtype=np.int64)
        self.window = window
        self._handle: netCDF4.Dataset | None = None
        with netCDF4.Dataset(self.path) as ds:
            shapes = []
            for name in self.variables:
                if name not in ds.variables:
                    raise KeyError(f"{self.path} has no variable {name!r}")
                var = ds.variables[name]
                if var.dimensions[0] != "time" or var.ndim not in (3, 4):
                    raise ValueError(
                        f"{self.path}:{name} must be (time, [level,] lat, lon), "
                        f"got {var.dimensions}"
                    )
                shapes.append(var.shape)
            self.n_days = shapes[0][0]
            self.grid = tuple(shapes[0][-2:])
            self.channels = sum(s[1] if len(s) == 4 else 1 for s in shapes)
        if len(self.starts) and (self.starts.min() < 0 or self.starts.max() + window > self.n_days):
            raise IndexError(f"window starts out of range for {self.n_days} days in {self.path}")
        self.offset = None if offset is None else np.asarray(offset, np.float32)[:, None, None]
        self.scale = None if scale is None else np.asarray(scale, np.float32)[:, None, None]

    def __len__(self) -> int:
        return len(self.starts)

    def _open(self) -> netCDF4.Dataset:
        if self._handle is None:
            self._handle = netCDF4.Dataset(self.path)
            self._handle.set_auto_mask(False)
        return self._handle

    def read(self, start: int, days: int) -> np.ndarray:
        """Days ``start .. start + days - 1`` of every variable: ``(days, C, H, W)`` float32."""
        ds = self._open()
        parts = []
        for name in self.variables:
            values = ds.variables[name][start : start + days]
            parts.append(values if values.ndim == 4 else values[:, None])
        x = np.concatenate(parts, axis=1).astype(np.float32, copy=False)
        if self.offset is not None:
            x = x - self.offset
        if self.scale is not None:
            x = x / self.scale
        return x

    def __getitem__(self, i: int) -> Tensor:
        x = torch.from_numpy(np.ascontiguousarray(self.read(int(self.starts[i]), self.window)))
        return x.flatten(0, 1) if self.window > 1 else x[0]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handle"] = None  # each worker opens its own
        return state

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass


def file_times(path: str | Path) -> np.ndarray:
    """The ``time`` coordinate of a netCDF file as ``datetime64[D]``."""
    with netCDF4.Dataset(str(path)) as ds:
        time = ds.variables["time"]
        dates = netCDF4.num2date(
            time[:], time.units, getattr(time, "calendar", "standard"),
            only_use_cftime_datetimes=False, only_use_python_datetimes=True,
        )  # fmt: skip
    return np.array([np.datetime64(d.date(), "D") for d in dates])
