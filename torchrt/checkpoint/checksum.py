"""CRC-32 of checkpoint files, as fast as this machine allows.

Every file in a manifest carries its CRC-32 (zlib's polynomial, the value
``zlib.crc32`` returns). Computing it is the largest CPU cost of a save after
the staging copy (~2.5 GB/s per core with zlib here), so the same function is
taken from a SIMD implementation when one is installed: ``isal``
(``isal.isal_zlib.crc32``, ~6.6 GB/s per core here) or ``zlib-ng``
(``zlib_ng.zlib_ng.crc32``). They return identical values, so checkpoints
written with one are verified with any other. All of them release the GIL
on large buffers, so writer threads checksum in parallel.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

__all__ = ["CRC32_IMPL", "crc32"]

crc32: Callable[..., int]
try:
    from isal.isal_zlib import crc32  # type: ignore[no-redef]

    CRC32_IMPL = "isal"
except ImportError:
    try:
        from zlib_ng.zlib_ng import crc32  # type: ignore[no-redef]

        CRC32_IMPL = "zlib-ng"
    except ImportError:
        crc32 = zlib.crc32
        CRC32_IMPL = "zlib"
