"""A gzip inflater for mostly-empty masks that never writes the empty stretches (numba kernel).

TotalSegmentator ships a case as 117 per-structure masks of the full CT grid: 117 x 75 MiB of
uncompressed bytes per case, almost all zeros, that an ordinary inflater writes out in full (1 s per case
with ISA-L before a byte of it is looked at; docs/benchmarks.md, B10). In the deflate stream those zeros
are long back-references to zeros (a 258-byte match at distance 1, a few bits each). This inflater decodes
the same stream symbol by symbol but keeps only the last 32 KiB window, and a match whose source is zero
while the window holds no non-zero byte is just counted: nothing is written. What it hands back is every
image row (``row`` bytes from the data offset) that holds a non-zero byte, trimmed to its first and last
non-zero voxel: a segment a row, packed end to end (a structure's rows are ~10x shorter trimmed).
A zero stretch is one short match code repeated: it is skipped a group of codes at a time (with zeros
written to the ring while the window still holds foreground), then bytewise (:func:`_skip_repeats_py`).

The gzip CRC-32 and length are checked as usual: a run of ``n`` zero bytes advances the CRC through
precomputed operators for ``2**k`` zeros (the CRC of zeros is linear in the register), so no byte is
hashed twice and none is skipped. Anything the kernel does not take on (a corrupt or truncated stream,
rows wider than a quarter of the window, more than one gzip member) is reported by status and the caller
reads the file with the general chunked reader, which gives the precise error.

Numba counts references to every array a helper inlined into the symbol loop is given (an atomic
increment and decrement per call: ~20 % of the time here), so the loop works on views without an owner
(:func:`_unowned`) while :func:`_inflate` keeps the arrays; when the output is about to fill up the loop
returns ``MORE`` at a symbol boundary and is called again with larger outputs.

Invariant that makes skipping safe: the ring slot of position ``p`` always holds the byte at ``p - 32768``
(or zero before the start), and a write is skipped only when that byte and every source byte are zero
(``last_nz`` is the position of the last non-zero byte written).
"""

from __future__ import annotations

import os

import numpy as np

from pipeline.ingest.readers._inflate_tables import (
    _FDIST,
    _FLIT,
    CRC_T,
    CRC_Z,
    gzip_payload_start,
)
from pipeline.ingest.readers._inflate_huffman import FB, HAVE_NUMBA

if HAVE_NUMBA:
    from numba import njit

    from pipeline.ingest.readers._inflate_huffman import _build, _decode, _dynamic, _helper, _match, _refill, _unowned

W = 1 << 15  # the deflate window; also the ring size
SPARSE_MAX_BYTES = 1 << 28  # compressed files up to this size are read whole into memory
_M = W - 1
OK, BAD, MORE = 0, 1, 2  # MORE: the symbol loop stopped for larger outputs

# ----------------------------------------------------------------------------------------------------
# kernel (plain Python functions, compiled below)
# ----------------------------------------------------------------------------------------------------


def _zeros_py(crc, n, z):  # pragma: no cover - compiled
    """The CRC register after ``n`` zero bytes."""
    k = 0
    while n:
        if n & 1:
            crc = z[k, 0, crc & 0xFF] ^ z[k, 1, (crc >> 8) & 0xFF] ^ z[k, 2, (crc >> 16) & 0xFF] \
                ^ z[k, 3, (crc >> 24) & 0xFF]
        n >>= 1
        k += 1
    return crc


def _copy_py(ring, words, pos, length, dist, st, t, z, off, dend, row):  # pragma: no cover - compiled
    """Write ``length`` bytes copied from ``dist`` back (a literal is a copy of itself, ``dist`` 0 with
    the byte preset), tracking non-zero bytes, the CRC and the rows to hand back. ``words``: the ring as
    uint64. ``st``: last_nz, crc, pending zero bytes, first and last pending row.

    A match that neither wraps the ring nor overlaps its source is copied first and then scanned eight
    bytes at a time: near a structure every byte is within the window of a non-zero one, so this path
    sees ~6x more bytes than the mask has foreground voxels, mostly zeros."""
    last_nz, crc, zrun, lo, hi = st[0], st[1], st[2], st[3], st[4]
    hi_end = off + (hi + 1) * row if lo >= 0 else -1  # rows below this end are already marked
    d0 = pos & _M
    s0 = (pos - dist) & _M
    if dist >= length and d0 + length <= W and s0 + length <= W:
        for i in range(length):
            ring[np.uint64(d0 + i)] = ring[np.uint64(s0 + i)]
        q = pos  # the first position whose zero bytes are not counted yet
        i = 0
        while i < length:
            if (d0 + i) & 7 == 0:
                while i + 8 <= length and words[(d0 + i) >> 3] == 0:
                    i += 8
                if i >= length:
                    break
            b = ring[d0 + i]
            if b != 0:
                p = pos + i
                zrun += p - q
                q = p + 1
                last_nz, crc, zrun, lo, hi, hi_end = _nonzero(p, b, crc, zrun, lo, hi, hi_end, t, z, off, dend,
                                                              row)
            i += 1
        zrun += pos + length - q
    else:
        for i in range(length):
            p = pos + i
            b = ring[(p - dist) & _M]
            ring[p & _M] = b
            if b == 0:
                zrun += 1
            else:
                last_nz, crc, zrun, lo, hi, hi_end = _nonzero(p, b, crc, zrun, lo, hi, hi_end, t, z, off, dend,
                                                              row)
    st[0], st[1], st[2], st[3], st[4] = last_nz, crc, zrun, lo, hi


def _nonzero_py(p, b, crc, zrun, lo, hi, hi_end, t, z, off, dend, row):  # pragma: no cover - compiled
    """Account for the non-zero byte ``b`` at ``p``: the CRC (after the pending zeros) and its row."""
    if zrun:
        crc = _zeros(crc, zrun, z)
        zrun = 0
    crc = t[(crc ^ b) & 0xFF] ^ (crc >> 8)
    if p >= hi_end and off <= p < dend:
        hi = (p - off) // row
        hi_end = off + (hi + 1) * row
        if lo < 0:
            lo = hi
    return p, crc, zrun, lo, hi, hi_end


def _zero_run_py(ring, pos, length):  # pragma: no cover - compiled
    """Write ``length`` zero bytes at ``pos`` (the window still holds a non-zero byte); a loop, not a
    slice assignment, which costs more than the ~250 bytes it writes."""
    d0 = pos & _M
    a = min(length, W - d0)
    for i in range(a):  # unsigned indices: no negative-index wrap, so these loops are vectorised
        ring[np.uint64(d0 + i)] = 0
    for i in range(length - a):
        ring[np.uint64(i)] = 0


def _flush_py(ring, words, pos, st, off, row, item, starts, offs, data, n):  # pragma: no cover - compiled
    """Hand back the pending rows that are complete, each trimmed to its first and last non-zero
    ``item``-byte voxel (the outputs have room: :func:`_room`). Returns the segment count.

    Called as soon as ``pos`` passes the end of the first pending row, so at most the rows one match
    covers are handed back at once and every one is still in the ring (a structure that fills whole rows
    never completes its last pending row before the next one starts)."""
    last = min(st[4], (pos - off) // row - 1)  # the last complete pending row
    if st[3] < 0 or last < st[3]:
        return n
    used = offs[n]
    for r in range(st[3], last + 1):
        a = off + r * row
        j0 = 0
        if (a | row) & 7 == 0:  # whole words from both ends (the ring wraps at a word boundary)
            while j0 < row and words[((a + j0) & _M) >> 3] == 0:
                j0 += 8
        while j0 < row and ring[(a + j0) & _M] == 0:
            j0 += 1
        if j0 == row:
            continue  # a row between two marked ones, all zeros
        j1 = row - 1
        if (a | row) & 7 == 0:
            while words[((a + j1 - 7) & _M) >> 3] == 0:
                j1 -= 8
        while ring[(a + j1) & _M] == 0:
            j1 -= 1
        c0 = j0 // item * item
        c1 = (j1 // item + 1) * item
        s0 = (a + c0) & _M
        k = min(c1 - c0, W - s0)  # the row's bytes up to the ring's end, then from its start
        for j in range(k):  # unsigned indices: vectorised copies
            data[np.uint64(used + j)] = ring[np.uint64(s0 + j)]
        for j in range(k, c1 - c0):
            data[np.uint64(used + j)] = ring[np.uint64(j - k)]
        used += c1 - c0
        starts[n] = r * row + c0
        n += 1
        offs[n] = used
    st[3] = -1 if last == st[4] else last + 1
    return n


def _room_py(starts, offs, data, n, row):  # pragma: no cover - compiled
    """The outputs, grown (doubled) unless the rows the ring can hold still fit."""
    k = W // row + 2
    if n + k <= starts.size and offs[n] + k * row <= data.size:
        return starts, offs, data
    size = max(2 * starts.size, n + k)
    starts2 = np.empty(size, np.int64)
    starts2[:n] = starts[:n]
    offs2 = np.empty(size + 1, np.int64)
    offs2[: n + 1] = offs[: n + 1]
    data2 = np.empty(max(2 * data.size, offs[n] + k * row), np.uint8)
    data2[: offs[n]] = data[: offs[n]]
    return starts2, offs2, data2


def _block_py(inp, ip, bb, bc, ring, pos, st, lft, lcnt, lsrt, dft, dcnt, dsrt, t, z, off, dend, row, item,
              starts, offs, data, n):  # pragma: no cover - compiled
    """Decode one compressed block's symbols up to its end-of-block code. The hot state (last non-zero
    position, pending zero bytes) lives in locals and goes back to ``st`` around the rare byte copies.

    Long zero stretches are one match repeated (at level 1, length 258 at distance 258: ~9 bits): its
    bits are remembered, and while the window is clean as many repeats as fit in the bit buffer are
    compared with one mask and skipped at once.

    Returns ``MORE`` (at a symbol boundary) when the outputs may not hold the next rows: call it again,
    without a new block header, once :func:`_room` made them larger."""
    inp, ring, st, t, z = _unowned(inp), _unowned(ring), _unowned(st), _unowned(t), _unowned(z)
    lft, lcnt, lsrt = _unowned(lft), _unowned(lcnt), _unowned(lsrt)
    dft, dcnt, dsrt = _unowned(dft), _unowned(dcnt), _unowned(dsrt)
    starts, offs, data = _unowned(starts), _unowned(offs), _unowned(data)
    words = ring.view(np.uint64)
    room = W // row + 2
    limit = inp.size + 16
    last_nz, zrun = st[0], st[2]
    never = np.int64(1) << 62
    due = off + (st[3] + 1) * row if st[3] >= 0 else never  # where the first pending row ends
    status = BAD
    pbits, pmask, prep, pbytes, mbits = 0, np.uint64(0), np.uint64(0), 0, 0  # the repeated zero match, if any
    pdist = 0  # its distance
    while ip <= limit:
        if pbits:
            ip, bb, bc, pos, zrun = _skip(inp, ip, bb, bc, ring, pos, zrun, pbits, pmask, prep, pbytes, mbits, pdist,
                                          last_nz, due)
        if bc < 48:
            ip, bb, bc = _refill(inp, ip, bb, bc)
        bb0, bc0 = bb, bc
        sym, used = _decode(bb, bc, lft, lcnt, lsrt)
        bb >>= np.uint64(used)
        bc -= used
        if sym < 256:
            if sym < 0:
                break
            length, dist = 1, 0
            ring[pos & _M] = sym
        elif sym == 256:
            status = OK
            break
        else:
            length, dist, bb, bc = _match(sym, bb, bc, dft, dcnt, dsrt)
            if dist <= 0 or dist > pos:
                break
        if last_nz < pos - W and (dist == 0 and sym == 0 or dist > 0 and last_nz < pos - dist):
            zrun += length  # zeros into a window of zeros: nothing to write
            if dist > 0 and 2 * (bc0 - bc) <= 56:
                pbits, pmask, prep, pbytes, mbits = _pattern(bb0, bc0 - bc, length)
                pdist = dist
        elif dist > 0 and last_nz < pos - dist:
            _zero_run(ring, pos, length)
            zrun += length
            if 2 * (bc0 - bc) <= 56:
                pbits, pmask, prep, pbytes, mbits = _pattern(bb0, bc0 - bc, length)
                pdist = dist
        else:
            st[0], st[2] = last_nz, zrun
            _copy(ring, words, pos, length, dist, st, t, z, off, dend, row)
            last_nz, zrun = st[0], st[2]
            due = off + (st[3] + 1) * row if st[3] >= 0 else never
        pos += length
        if pos >= due:  # a pending row is complete
            n = _flush(ring, words, pos, st, off, row, item, starts, offs, data, n)
            due = off + (st[3] + 1) * row if st[3] >= 0 else never
            if n + room > starts.size or offs[n] + room * row > data.size:
                status = MORE
                break
    st[0], st[2] = last_nz, zrun
    return status, ip, bb, bc, pos, n


def _pattern_py(bits, nbits, length):  # pragma: no cover - compiled
    """The code of one zero match (its ``nbits`` low bits of ``bits``) repeated as often as 56 bits hold:
    (bits, mask, repeated code, bytes covered, ``nbits``)."""
    one = bits & ((np.uint64(1) << np.uint64(nbits)) - np.uint64(1))
    k = 56 // nbits
    rep = np.uint64(0)
    for i in range(k):
        rep |= one << np.uint64(i * nbits)
    return k * nbits, (np.uint64(1) << np.uint64(k * nbits)) - np.uint64(1), rep, k * length, nbits


def _skip_repeats_py(inp, ip, bb, bc, pos, zrun, pbits, pmask, prep, pbytes, mbits):  # pragma: no cover - compiled
    """Skip whole groups of the remembered zero match while the bit stream repeats it.

    Once ``8 * mbits + 7`` bits (``mbits``: the bits of a single match) are seen to repeat it, the rest of the
    stretch is found bytewise: a stream that repeats an ``mbits``-bit code repeats its bytes every ``mbits``
    bytes, so the stretch goes on up to the first byte that differs from the byte ``mbits`` before it (the
    bytes behind are the code, so by induction every byte up to there is). Those whole matches are
    skipped at once, and the group check goes on from there: it is what ends the stretch."""
    seen = 0  # bits of the stream seen to repeat the code since the call, -1 after the bytewise skip
    while True:
        if bc < 56:
            ip, bb, bc = _refill(inp, ip, bb, bc)
        if (bb & pmask) != prep or ip > inp.size + 8:
            return ip, bb, bc, pos, zrun
        bb >>= np.uint64(pbits)
        bc -= pbits
        pos += pbytes
        zrun += pbytes
        if seen >= 0:
            seen += pbits
            if seen >= 8 * mbits + 7:
                at = ip * 8 - bc  # the bit position of the next symbol
                m = (8 * _same_bytes_to(inp, at >> 3, mbits) - at) // mbits  # whole matches ahead
                if m > 0:
                    at += m * mbits
                    pos += m * (pbytes // (pbits // mbits))
                    zrun += m * (pbytes // (pbits // mbits))
                    ip, bb, bc = _refill(inp, at >> 3, np.uint64(0), 0)
                    bb >>= np.uint64(at & 7)
                    bc -= at & 7
                seen = -1


def _skip_py(inp, ip, bb, bc, ring, pos, zrun, pbits, pmask, prep, pbytes, mbits, pdist, last_nz,
             due):  # pragma: no cover - compiled
    """Skip what the remembered zero match (``pdist`` back) repeats: in a clean window without writing,
    else while its source lies past the last non-zero byte."""
    if last_nz < pos - W:
        return _skip_repeats(inp, ip, bb, bc, pos, zrun, pbits, pmask, prep, pbytes, mbits)
    if last_nz < pos - pdist:
        return _skip_dirty(inp, ip, bb, bc, ring, pos, zrun, pbits, pmask, prep, pbytes, last_nz, due)
    return ip, bb, bc, pos, zrun


def _skip_dirty_py(inp, ip, bb, bc, ring, pos, zrun, pbits, pmask, prep, pbytes, last_nz,
                   due):  # pragma: no cover - compiled
    """Skip whole groups of the remembered zero match while the window still holds a non-zero byte (the
    32 KiB after a structure's last row): its source lies past that byte, so it copies zeros, which are
    written to the ring (the invariant) a group at a time. Stops before a pending row completes (the symbol
    loop hands it back) and once the window is clean (:func:`_skip_repeats` writes nothing)."""
    while last_nz >= pos - W and pos + pbytes <= due:
        if bc < 56:
            ip, bb, bc = _refill(inp, ip, bb, bc)
        if (bb & pmask) != prep or ip > inp.size + 8:
            break
        bb >>= np.uint64(pbits)
        bc -= pbits
        _zero_run(ring, pos, pbytes)
        pos += pbytes
        zrun += pbytes
    return ip, bb, bc, pos, zrun


def _same_bytes_to_py(inp, j, lag):  # pragma: no cover - compiled
    """The first index from ``j`` on whose byte differs from the byte ``lag`` before it (or the end)."""
    n = inp.size
    while j + 64 <= n:
        acc = np.uint8(0)
        for i in range(64):  # unsigned indices: no negative-index wrap, so the loop is vectorised (30x)
            acc |= inp[np.uint64(j + i)] ^ inp[np.uint64(j + i - lag)]
        if acc:
            break
        j += 64
    while j < n and inp[j] == inp[j - lag]:
        j += 1
    return j


def _stored_py(inp, ip, bb, bc, ring, pos, st, t, z, off, dend, row, item, starts, offs, data,
               n):  # pragma: no cover - compiled
    """An uncompressed block: LEN, NLEN, then LEN literal bytes."""
    words = ring.view(np.uint64)
    drop = bc & 7
    bb >>= np.uint64(drop)
    bc -= drop
    ip, bb, bc = _refill(inp, ip, bb, bc)
    size = np.int64(bb & np.uint64(0xFFFF))
    nsize = np.int64((bb >> np.uint64(16)) & np.uint64(0xFFFF))
    bb >>= np.uint64(32)
    bc -= 32
    if size != (~nsize & 0xFFFF):
        return BAD, ip, bb, bc, pos, starts, offs, data, n
    for _ in range(size):
        if bc < 8:
            ip, bb, bc = _refill(inp, ip, bb, bc)
        ring[pos & _M] = np.uint8(bb & np.uint64(0xFF))
        bb >>= np.uint64(8)
        bc -= 8
        _copy(ring, words, pos, 1, 0, st, t, z, off, dend, row)
        pos += 1
        starts, offs, data = _room(starts, offs, data, n, row)
        n = _flush(ring, words, pos, st, off, row, item, starts, offs, data, n)
    return OK, ip, bb, bc, pos, starts, offs, data, n


def _inflate_py(inp, start, off, nbytes, row, item, t, z, flit, fdist):  # pragma: no cover - compiled
    """Inflate the deflate stream at ``inp[start:]``; see :func:`sparse_segments`. Returns (status, end of
    the gzip trailer in ``inp``, segment starts, segment offsets, segment bytes)."""
    ring = np.zeros(W, np.uint8)
    st = np.zeros(5, np.int64)
    st[0] = -(W + 1)
    st[1] = 0xFFFFFFFF
    st[3] = -1
    lft, dft = np.zeros(1 << FB, np.int64), np.zeros(1 << FB, np.int64)
    lcnt, dcnt = np.zeros(16, np.int64), np.zeros(16, np.int64)
    lsrt, dsrt = np.zeros(320, np.int64), np.zeros(320, np.int64)
    starts, offs, data = np.empty(0, np.int64), np.zeros(1, np.int64), np.empty(0, np.uint8)
    n = 0
    ip, bb, bc, pos = start, np.uint64(0), 0, 0
    dend = off + nbytes
    final = False
    while not final:
        ip, bb, bc = _refill(inp, ip, bb, bc)
        final = (bb & np.uint64(1)) == 1
        kind = np.int64((bb >> np.uint64(1)) & np.uint64(3))
        bb >>= np.uint64(3)
        bc -= 3
        if kind == 0:
            status, ip, bb, bc, pos, starts, offs, data, n = _stored(inp, ip, bb, bc, ring, pos, st, t, z, off,
                                                                     dend, row, item, starts, offs, data, n)
        elif kind == 3:
            status = BAD
        else:
            good = True
            if kind == 1:
                _build(flit, 288, lft, lcnt, lsrt)
                _build(fdist, 30, dft, dcnt, dsrt)
            else:
                good, ip, bb, bc = _dynamic(inp, ip, bb, bc, lft, lcnt, lsrt, dft, dcnt, dsrt)
            status = MORE if good else BAD
            while status == MORE:
                starts, offs, data = _room(starts, offs, data, n, row)
                status, ip, bb, bc, pos, n = _block(inp, ip, bb, bc, ring, pos, st, lft, lcnt, lsrt, dft, dcnt,
                                                    dsrt, t, z, off, dend, row, item, starts, offs, data, n)
        if status != OK or ip > inp.size + 16:
            return BAD, 0, starts[:0], offs[:1], data[:0]
    return _trailer(inp, ip, bb, bc, pos, st, z, dend, starts, offs, data, n)


def _trailer_py(inp, ip, bb, bc, pos, st, z, dend, starts, offs, data, n):  # pragma: no cover - compiled
    """Check the CRC-32 and length of the gzip trailer; the segments when they match."""
    end = ip - (bc >> 3) + 8  # the trailer's end: unread whole bytes of the bit buffer are given back
    if end > inp.size or pos < dend or st[3] >= 0:
        return BAD, 0, starts[:0], offs[:1], data[:0]
    crc = _zeros(st[1], st[2], z) ^ 0xFFFFFFFF
    at = end - 8
    want_crc, size = 0, 0
    for k in range(4):
        want_crc |= np.int64(inp[at + k]) << (8 * k)
        size |= np.int64(inp[at + 4 + k]) << (8 * k)
    if crc != want_crc or size != (pos & 0xFFFFFFFF):
        return BAD, 0, starts[:0], offs[:1], data[:0]
    return OK, end, starts[:n], offs[: n + 1], data[: offs[n]]


if HAVE_NUMBA:
    _zero_run = _helper(_zero_run_py)
    _pattern = _helper(_pattern_py)
    _same_bytes_to = _helper(_same_bytes_to_py)
    _skip_repeats = _helper(_skip_repeats_py)
    _skip_dirty = _helper(_skip_dirty_py)
    _skip = _helper(_skip_py)
    _flush = _helper(_flush_py)
    _nonzero = _helper(_nonzero_py)
    _copy = _helper(_copy_py)
    _room = njit(cache=True, nogil=True)(_room_py)
    _zeros = njit(cache=True, nogil=True)(_zeros_py)
    _block = njit(cache=True, nogil=True)(_block_py)
    _stored = njit(cache=True, nogil=True)(_stored_py)
    _trailer = njit(cache=True, nogil=True)(_trailer_py)
    _inflate = njit(cache=True, nogil=True)(_inflate_py)


def sparse_inflate_on() -> bool:
    """Whether masks go through this inflater: yes unless ``MEDREG_MASK_INFLATE=stream`` (benchmarks and
    triage compare it with inflating every byte)."""
    mode = os.environ.get("MEDREG_MASK_INFLATE", "sparse")
    if mode not in ("sparse", "stream"):
        raise ValueError(f"MEDREG_MASK_INFLATE={mode!r}: use 'sparse' (default) or 'stream'")
    return mode == "sparse" and HAVE_NUMBA


def sparse_segments(buf: bytes, offset: int, nbytes: int, row: int, item: int = 1,
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The non-zero stretches of the uncompressed gzip file ``buf`` over the ``nbytes`` bytes from
    ``offset``, cut into rows of ``row`` bytes: ``(starts, offs, data)``. Segment ``k`` is the bytes
    ``data[offs[k]:offs[k + 1]]``, at byte ``starts[k]`` counted from ``offset``; it lies inside one row and
    begins and ends with a non-zero ``item``-byte voxel (``row`` and ``offs`` are multiples of ``item``).
    Segments are in file order; every non-zero byte of the range is in one.

    None when the kernel does not take the file (see the module doc): read it with the general reader.
    """
    start = gzip_payload_start(buf)
    if not HAVE_NUMBA or start is None or row <= 0 or row > W // 4 or offset < 0 or nbytes < 0:
        return None
    if item <= 0 or row % item:
        raise ValueError(f"row of {row} bytes is not a whole number of {item}-byte voxels")
    inp = np.frombuffer(buf, np.uint8)
    status, end, starts, offs, data = _inflate(inp, start, offset, nbytes, row, item, CRC_T, CRC_Z, _FLIT, _FDIST)
    if status != OK or buf[end:].strip(b"\0"):
        return None  # corrupt, or more members: the general reader gives the error or reads them all
    return starts, offs, data
