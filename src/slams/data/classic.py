"""The size a classic netCDF file must have, from its header alone.

netCDF-C reads a classic-format file (CDF-1, CDF-2 or CDF-5: NOAA PSL's packed OLR, for
example) that was cut short without complaint: the values past the end of the file come back
as zeros, and a packed zero unpacks to ``add_offset``, a plausible value. The header, which
comes first and survives a truncation, says where every variable's data begin and how many
records there are, so the size the file must have is known before any value is read
(:func:`classic_size`). HDF5-based netCDF-4 files need no such check: the HDF5 library compares
the end-of-file address in the superblock with the file's size and refuses a truncated file.

The format is NetCDF's "Classic Format Specification" (Unidata): magic ``CDF`` + version
byte; ``numrecs``; the dimension, global attribute and variable lists; each variable with its
dimension ids, attributes, type, ``vsize`` and ``begin`` offset. Big-endian throughout;
``numrecs``, list lengths, dimension lengths and ids are 8 bytes in CDF-5, 4 otherwise; ``begin``
is 4 bytes in CDF-1, 8 in CDF-2 and CDF-5.
"""

from __future__ import annotations

from pathlib import Path

# external type sizes (bytes) by nc_type
_TYPE_SIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 4, 6: 8, 7: 1, 8: 2, 9: 4, 10: 8, 11: 8}
_DIMENSION, _VARIABLE, _ATTRIBUTE = 10, 11, 12
_STREAMING = {4: 0xFFFFFFFF, 8: 0xFFFFFFFFFFFFFFFF}


class _Header:
    """A reader of the header's big-endian integers and padded names."""

    def __init__(self, data: bytes, version: int):
        self.data, self.at = data, 4
        self.count_bytes = 8 if version == 5 else 4
        self.offset_bytes = 4 if version == 1 else 8

    def integer(self, size: int) -> int:
        if self.at + size > len(self.data):
            raise ValueError("header cut short")
        value = int.from_bytes(self.data[self.at : self.at + size], "big")
        self.at += size
        return value

    def count(self) -> int:
        return self.integer(self.count_bytes)

    def skip_padded(self, n_bytes: int) -> None:
        self.at += (n_bytes + 3) // 4 * 4
        if self.at > len(self.data):
            raise ValueError("header cut short")

    def name(self) -> None:
        self.skip_padded(self.count())

    def attributes(self) -> None:
        tag, n = self.integer(4), self.count()
        if tag not in (0, _ATTRIBUTE):
            raise ValueError(f"unexpected tag {tag} where attributes belong")
        for _ in range(n):
            self.name()
            nc_type = self.integer(4)
            self.skip_padded(self.count() * _TYPE_SIZE.get(nc_type, 1))


def classic_size(path: str | Path, header_bytes: int = 1 << 20) -> int | None:
    """The least size in bytes a classic netCDF file must have to hold all its data, or
    ``None`` when ``path`` is not a classic file (e.g. HDF5) or its record count is unknown
    (a file still being written, "streaming"). Raises ValueError when the header itself is
    unreadable. Reads only the header (``header_bytes``, grown if the header is longer)."""
    with open(path, "rb") as file:
        data = file.read(header_bytes)
        if data[:3] != b"CDF" or len(data) < 4 or data[3] not in (1, 2, 5):
            return None
        while True:
            try:
                return _size(data)
            except ValueError:
                more = file.read(len(data))
                if not more:
                    raise
                data += more


def _size(data: bytes) -> int | None:
    header = _Header(data, data[3])
    numrecs = header.count()
    tag, n_dims = header.integer(4), header.count()
    if tag not in (0, _DIMENSION):
        raise ValueError(f"unexpected tag {tag} where dimensions belong")
    lengths = []
    for _ in range(n_dims):
        header.name()
        lengths.append(header.count())
    header.attributes()
    tag, n_vars = header.integer(4), header.count()
    if tag not in (0, _VARIABLE):
        raise ValueError(f"unexpected tag {tag} where variables belong")
    fixed_end, records = header.at, []
    for _ in range(n_vars):
        header.name()
        dims = [header.count() for _ in range(header.count())]
        header.attributes()
        nc_type = header.integer(4)
        header.count()  # vsize: wrong for variables over 4 GiB in CDF-1/2; computed below
        begin = header.integer(header.offset_bytes)
        size = _TYPE_SIZE.get(nc_type, 1)
        is_record = bool(dims) and lengths[dims[0]] == 0
        for dim in dims[1:] if is_record else dims:
            size *= lengths[dim]
        if is_record:
            records.append((begin, size))
        else:
            fixed_end = max(fixed_end, begin + size)
    if not records:
        return fixed_end
    if numrecs == _STREAMING[header.count_bytes]:
        return None
    # one record holds every record variable's slab, each padded to 4 bytes unless it is the
    # only record variable; the file must reach the end of the last variable's last slab
    padded = [size if len(records) == 1 else (size + 3) // 4 * 4 for _, size in records]
    record_size = sum(padded)
    if numrecs == 0:
        return fixed_end
    last = max(begin + (numrecs - 1) * record_size + size for begin, size in records)
    return max(fixed_end, last)


def check_classic_size(path: str | Path) -> tuple[int, int] | None:
    """``(actual, expected)`` sizes when ``path`` is a classic netCDF file shorter than its
    header implies, else ``None``."""
    expected = classic_size(path)
    actual = Path(path).stat().st_size
    if expected is not None and actual < expected:
        return actual, expected
    return None
