"""Zero-copy, constant-memory reading of a stream in pieces of given lengths.

Regular files are read through a read-only `mmap`, so AES-GCM and SHA-256 read the page cache
directly: at AES-NI/VAES speed a memcpy costs as much as the cipher. Other streams are read
into one reused buffer. Used by the file format and by the stores' digest re-reads.
"""

from __future__ import annotations

import mmap
import os
import stat
from collections.abc import Iterator
from typing import BinaryIO

# Mapped pages already consumed are unmapped in batches of this size: RSS stays flat, and one
# madvise call per batch (not per segment) keeps its cost out of the throughput.
DROP_EVERY = 8 * 1024 * 1024


def _readfull(src: BinaryIO, buf: memoryview) -> int:
    """Fill `buf` from `src`; returns the byte count (< len(buf) only at end of stream)."""
    got = 0
    while got < len(buf):
        n = src.readinto(buf[got:])
        if not n:
            break
        got += n
    return got


def _map_file(src: BinaryIO) -> mmap.mmap | None:
    """A read-only map of `src` when it is a regular file with bytes left, else None.

    AES-GCM then reads the page cache directly instead of a copy: at AES-NI/VAES speed a
    copy costs as much as the cipher. (A file truncated by another process while mapped
    raises SIGBUS; checkpoint sources are private to the process that encrypts them.)
    """
    try:
        fd = src.fileno()
        pos = src.tell()
    except (AttributeError, OSError, ValueError):
        return None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size <= pos:
        return None
    mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    mm.madvise(mmap.MADV_SEQUENTIAL)
    return mm


def read_views(
    src: BinaryIO, lengths: Iterator[int], buf: memoryview | int, *, ring: int = 1
) -> Iterator[memoryview]:
    """Views of the next `lengths` bytes of `src` (shorter only at end of stream); `src` is
    left positioned after what was consumed, as if read. Memory stays constant: `buf` (a
    buffer, or the size of one to allocate only if `src` cannot be mapped) is reused, or, for
    a mapped file, pages already consumed are dropped from the mapping. With `ring` > 1 (and
    `buf` a size) the last `ring` views stay valid: view k uses buffer k % ring, and mapped
    pages are dropped only behind them (for consumers in other threads)."""
    mm = _map_file(src)
    if mm is None:
        bufs = [memoryview(bytearray(buf)) for _ in range(ring)] if isinstance(buf, int) else [buf]
        for k, n in enumerate(lengths):
            b = bufs[k % len(bufs)]
            yield b[: _readfull(src, b[:n])]
        return
    keep = ring * buf if isinstance(buf, int) and ring > 1 else 0
    off = src.tell()
    dropped = 0
    whole = memoryview(mm)
    try:
        for n in lengths:
            view = whole[off : off + n]
            off += len(view)
            yield view
            del view
            # The page cache keeps the file; unmapping consumed pages keeps RSS flat.
            done = max(0, off - keep) // mmap.PAGESIZE * mmap.PAGESIZE
            if done - dropped >= DROP_EVERY:
                mm.madvise(mmap.MADV_DONTNEED, dropped, done - dropped)
                dropped = done
    finally:
        src.seek(off)
    # No explicit close: the map is released with the last view of it.
