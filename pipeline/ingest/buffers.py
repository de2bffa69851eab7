"""Large read buffers reused from one case to the next.

A full-size CT case decompresses into ~235 MB of fresh memory (the 157 MB image and the 78 MB label map).
Fresh memory is mapped and faulted in page by page (huge pages, compacted on demand), every case again:
~0.08 s a case, and it is the part two worker processes slow each other down on (B5: per-case time
+10 % with two workers; with the memory reused, the same as one). So while cases are being built, a
volume's buffer comes from a small pool: a buffer no array refers to any more (every image, label map
and view of the previous case is gone) is handed out again, faults already paid.

* In a build's worker processes the pool is always on (they exist to build cases).
* In any other process only inside :func:`reuse_buffers` (the driver wraps its cases phase in it), and it
  is emptied when the outermost one ends: a notebook that reads one case keeps nothing.
* Only buffers of at least :data:`MIN_BYTES` are pooled, at most :data:`MAX_BUFFERS` of them and
  :data:`MAX_POOL_BYTES` in all; a buffer is reused for a request of half its size or more.

A buffer is never handed out while any array still uses its memory (its reference count says so), so a
slice kept beyond its case only keeps that buffer out of the pool.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from pipeline.core.cores import in_worker_process

MIN_BYTES = 16 << 20
MAX_BUFFERS = 4
MAX_POOL_BYTES = 2 << 30

_lock = threading.Lock()
_pool: list[np.ndarray] = []
_depth = 0


def _refs(buf: np.ndarray) -> int:
    return sys.getrefcount(buf)


# The references a pooled buffer has when no array uses it, measured the way every caller counts (the
# pool's list, the caller's local variable, _refs's parameter, getrefcount's argument) rather than assumed:
# how many of those an interpreter counts differs between Python versions.
_FREE_REFS = next(_refs(b) for b in [np.empty(1)])


def _enabled() -> bool:
    return _depth > 0 or in_worker_process()


def take(nbytes: int) -> np.ndarray:
    """A writable uint8 array of ``nbytes`` (contents undefined, like ``np.empty``): a free pooled buffer
    when there is one of the right size, else new memory (pooled when there is room)."""
    if nbytes < MIN_BYTES or not _enabled():
        return np.empty(nbytes, np.uint8)
    with _lock:
        for buf in _pool:
            if nbytes <= buf.nbytes <= 2 * nbytes and _refs(buf) <= _FREE_REFS:
                return buf[:nbytes]
        for i in range(len(_pool) - 1, -1, -1):  # make room: drop free buffers of other sizes
            if len(_pool) < MAX_BUFFERS and sum(b.nbytes for b in _pool) + nbytes <= MAX_POOL_BYTES:
                break
            old = _pool[i]
            if _refs(old) <= _FREE_REFS:
                del _pool[i]
            del old
        buf = np.empty(nbytes, np.uint8)
        if len(_pool) < MAX_BUFFERS and sum(b.nbytes for b in _pool) + nbytes <= MAX_POOL_BYTES:
            _pool.append(buf)
        return buf[:nbytes]


def zeros(nbytes: int) -> np.ndarray:
    """:func:`take`, zeroed: a pooled buffer is cleared (a memset, cheaper than faulting fresh memory in);
    outside the pool ``np.zeros`` (the kernel's zero pages: a sparse layer never touches most of them)."""
    if nbytes < MIN_BYTES or not _enabled():
        return np.zeros(nbytes, np.uint8)
    buf = take(nbytes)
    buf.fill(0)
    return buf


def pooled() -> list[tuple[int, bool]]:
    """(bytes, free) of every pooled buffer (tests, diagnostics)."""
    with _lock:
        return [(b.nbytes, _refs(b) <= _FREE_REFS) for b in _pool]


def clear() -> None:
    with _lock:
        _pool.clear()


@contextmanager
def reuse_buffers() -> Iterator[None]:
    """Pool large read buffers from case to case inside this block (see the module docstring)."""
    global _depth
    with _lock:
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and not in_worker_process():
                _pool.clear()
