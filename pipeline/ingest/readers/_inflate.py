"""A gzip inflater for mostly-empty masks that never writes the empty stretches (numba kernel).

TotalSegmentator ships a case as 117 per-structure masks of the full CT grid: 117 x 75 MiB of
uncompressed bytes per case, almost all zeros, that an ordinary inflater writes out in full (1 s per case
with ISA-L before a byte of it is looked at; docs/benchmarks.md, B10). In the deflate stream those zeros
are long back-references to zeros (a 258-byte match at distance 1, a few bits each). This inflater decodes
the same stream symbol by symbol but keeps only the last 32 KiB window, and a match whose source is zero
while the window holds no non-zero byte is just counted: nothing is written. What it hands back is every
image row (``row`` bytes from the data offset) that holds a non-zero byte, trimmed to its first and last
non-zero voxel: a segment a row, packed end to end (a structure's rows are ~10x shorter trimmed).

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
    _CLORDER,
    _DBASE,
    _DEXT,
    _FDIST,
    _FLIT,
    _LBASE,
    _LEXT,
    CRC_T,
    CRC_Z,
    gzip_payload_start,
)

try:  # numba is a hard dependency of the project; the fallback only keeps the module importable.
    from numba import njit
    from numba.core import cgutils
    from numba.extending import intrinsic

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only on installs without numba
    HAVE_NUMBA = False

W = 1 << 15  # the deflate window; also the ring size
SPARSE_MAX_BYTES = 1 << 28  # compressed files up to this size are read whole into memory
_M = W - 1
FB = 10  # bits of the first-level Huffman lookup table
OK, BAD, MORE = 0, 1, 2  # MORE: the symbol loop stopped for larger outputs

# ----------------------------------------------------------------------------------------------------
# kernel (plain Python functions, compiled below)
# ----------------------------------------------------------------------------------------------------


def _refill_py(inp, ip, bb, bc):  # pragma: no cover - compiled
    """Top the bit buffer up to at least 56 bits; past the end of ``inp`` zero bytes are fed (``ip`` keeps
    counting, so the caller can tell a stream that reads beyond its input)."""
    n = inp.size
    while bc <= 56:
        if ip < n:
            bb |= np.uint64(inp[ip]) << np.uint64(bc)
        ip += 1
        bc += 8
    return ip, bb, bc


def _build_py(lens, n, ft, cnt, srt):  # pragma: no cover - compiled
    """Canonical Huffman code of ``lens[:n]``: the ``FB``-bit lookup ``ft`` (``sym << 4 | len``, 0 when the
    code is longer) plus counts and sorted symbols for the bit-by-bit path. False if over-subscribed."""
    cnt[:] = 0
    for s in range(n):
        cnt[lens[s]] += 1
    cnt[0] = 0
    left = 1
    for ln in range(1, 16):
        left = (left << 1) - cnt[ln]
        if left < 0:
            return False
    offs = np.zeros(16, np.int64)
    for ln in range(1, 15):
        offs[ln + 1] = offs[ln] + cnt[ln]
    ft[:] = 0
    code = 0
    nxt = np.zeros(16, np.int64)
    for ln in range(1, 16):
        code = (code + cnt[ln - 1]) << 1 if ln > 1 else 0
        nxt[ln] = code
    for s in range(n):
        ln = lens[s]
        if ln == 0:
            continue
        srt[offs[ln]] = s
        offs[ln] += 1
        c = nxt[ln]
        nxt[ln] += 1
        if ln <= FB:
            rev = 0
            for i in range(ln):
                rev |= ((c >> i) & 1) << (ln - 1 - i)
            for f in range(rev, 1 << FB, 1 << ln):
                ft[f] = (s << 4) | ln
    return True


def _decode_py(bb, bc, ft, cnt, srt):  # pragma: no cover - compiled
    """One symbol: ``(symbol, bits used)``; symbol -1 for a code that is not in the table."""
    e = ft[np.int64(bb & np.uint64((1 << FB) - 1))]
    if e != 0:
        return e >> 4, e & 15
    code = 0
    first = 0
    index = 0
    for ln in range(1, 16):
        code |= np.int64((bb >> np.uint64(ln - 1)) & np.uint64(1))
        count = cnt[ln]
        if code - count < first:
            return srt[index + code - first], ln
        index += count
        first = (first + count) << 1
        code <<= 1
    return -1, 0


def _dynamic_py(inp, ip, bb, bc, lft, lcnt, lsrt, dft, dcnt, dsrt):  # pragma: no cover - compiled
    """Read a dynamic block's code tables into the literal/length and distance decoders."""
    ip, bb, bc = _refill(inp, ip, bb, bc)
    nlen = np.int64(bb & np.uint64(31)) + 257
    ndist = np.int64((bb >> np.uint64(5)) & np.uint64(31)) + 1
    ncode = np.int64((bb >> np.uint64(10)) & np.uint64(15)) + 4
    bb >>= np.uint64(14)
    bc -= 14
    if nlen > 286 or ndist > 30:
        return False, ip, bb, bc
    lens = np.zeros(320, np.int64)
    for i in range(ncode):
        ip, bb, bc = _refill(inp, ip, bb, bc)
        lens[_CLORDER[i]] = np.int64(bb & np.uint64(7))
        bb >>= np.uint64(3)
        bc -= 3
    if not _build(lens, 19, lft, lcnt, lsrt):
        return False, ip, bb, bc
    code_lens = np.zeros(320, np.int64)
    i = 0
    while i < nlen + ndist:
        ip, bb, bc = _refill(inp, ip, bb, bc)
        sym, used = _decode(bb, bc, lft, lcnt, lsrt)
        if sym < 0:
            return False, ip, bb, bc
        bb >>= np.uint64(used)
        bc -= used
        if sym < 16:
            code_lens[i] = sym
            i += 1
            continue
        rep, val = _repeat(sym, bb, code_lens, i)
        extra = 2 if sym == 16 else (3 if sym == 17 else 7)
        bb >>= np.uint64(extra)
        bc -= extra
        if rep < 0 or i + rep > nlen + ndist:
            return False, ip, bb, bc
        code_lens[i : i + rep] = val
        i += rep
    if code_lens[256] == 0:
        return False, ip, bb, bc
    ok = _build(code_lens[:nlen], nlen, lft, lcnt, lsrt) and _build(code_lens[nlen : nlen + ndist], ndist, dft,
                                                                     dcnt, dsrt)
    return ok, ip, bb, bc


def _repeat_py(sym, bb, code_lens, i):  # pragma: no cover - compiled
    """Code-length repeat codes 16/17/18: (count, value); count -1 when 16 has nothing to repeat."""
    if sym == 16:
        if i == 0:
            return -1, 0
        return 3 + np.int64(bb & np.uint64(3)), code_lens[i - 1]
    if sym == 17:
        return 3 + np.int64(bb & np.uint64(7)), 0
    return 11 + np.int64(bb & np.uint64(127)), 0


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
            ring[d0 + i] = ring[s0 + i]
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
    for i in range(length):
        ring[(pos + i) & _M] = 0


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
        for j in range(c0, c1):
            data[used + j - c0] = ring[(a + j) & _M]
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
    status = BAD
    pbits, pmask, prep, pbytes = 0, np.uint64(0), np.uint64(0), 0  # the repeated zero match, if any
    while ip <= limit:
        if pbits and last_nz < pos - W:
            ip, bb, bc, pos, zrun = _skip_repeats(inp, ip, bb, bc, pos, zrun, pbits, pmask, prep, pbytes)
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
                pbits, pmask, prep, pbytes = _pattern(bb0, bc0 - bc, length)
        elif dist > 0 and last_nz < pos - dist:
            _zero_run(ring, pos, length)
            zrun += length
        else:
            st[0], st[2] = last_nz, zrun
            _copy(ring, words, pos, length, dist, st, t, z, off, dend, row)
            last_nz, zrun = st[0], st[2]
        pos += length
        if st[3] >= 0 and pos >= off + (st[3] + 1) * row:  # a pending row is complete
            n = _flush(ring, words, pos, st, off, row, item, starts, offs, data, n)
            if n + room > starts.size or offs[n] + room * row > data.size:
                status = MORE
                break
    st[0], st[2] = last_nz, zrun
    return status, ip, bb, bc, pos, n


def _pattern_py(bits, nbits, length):  # pragma: no cover - compiled
    """The code of one zero match (its ``nbits`` low bits of ``bits``) repeated as often as 56 bits hold:
    (bits, mask, repeated code, bytes covered)."""
    one = bits & ((np.uint64(1) << np.uint64(nbits)) - np.uint64(1))
    k = 56 // nbits
    rep = np.uint64(0)
    for i in range(k):
        rep |= one << np.uint64(i * nbits)
    return k * nbits, (np.uint64(1) << np.uint64(k * nbits)) - np.uint64(1), rep, k * length


def _skip_repeats_py(inp, ip, bb, bc, pos, zrun, pbits, pmask, prep, pbytes):  # pragma: no cover - compiled
    """Skip whole groups of the remembered zero match while the bit stream repeats it."""
    while True:
        if bc < 56:
            ip, bb, bc = _refill(inp, ip, bb, bc)
        if (bb & pmask) != prep or ip > inp.size + 8:
            return ip, bb, bc, pos, zrun
        bb >>= np.uint64(pbits)
        bc -= pbits
        pos += pbytes
        zrun += pbytes


def _match_py(sym, bb, bc, dft, dcnt, dsrt):  # pragma: no cover - compiled
    """Length and distance of the match that length code ``sym`` starts (distance -1 when invalid)."""
    li = sym - 257
    if li >= 29:
        return 0, -1, bb, bc
    length = _LBASE[li] + np.int64(bb & np.uint64((1 << _LEXT[li]) - 1))
    bb >>= np.uint64(_LEXT[li])
    bc -= _LEXT[li]
    dsym, used = _decode(bb, bc, dft, dcnt, dsrt)
    if dsym < 0 or dsym >= 30:
        return 0, -1, bb, bc
    bb >>= np.uint64(used)
    bc -= used
    dist = _DBASE[dsym] + np.int64(bb & np.uint64((1 << _DEXT[dsym]) - 1))
    bb >>= np.uint64(_DEXT[dsym])
    bc -= _DEXT[dsym]
    return length, dist, bb, bc


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

    @intrinsic
    def _unowned(typingctx, arr):
        """The array without its owner (meminfo): numba's reference counting of it is then a no-op. Only for
        views that the caller outlives (the symbol loop's arrays, which :func:`_inflate` keeps)."""

        def codegen(context, builder, sig, args):
            view = cgutils.create_struct_proxy(sig.return_type)(context, builder, value=args[0])
            view.meminfo = cgutils.get_null_value(view.meminfo.type)
            view.parent = cgutils.get_null_value(view.parent.type)
            return view._getvalue()

        return arr(arr), codegen

    _helper = njit(cache=True, nogil=True, inline="always")
    _refill = _helper(_refill_py)
    _decode = _helper(_decode_py)
    _repeat = _helper(_repeat_py)
    _zero_run = _helper(_zero_run_py)
    _match = _helper(_match_py)
    _pattern = _helper(_pattern_py)
    _skip_repeats = _helper(_skip_repeats_py)
    _flush = _helper(_flush_py)
    _nonzero = _helper(_nonzero_py)
    _copy = _helper(_copy_py)
    _room = njit(cache=True, nogil=True)(_room_py)
    _zeros = njit(cache=True, nogil=True)(_zeros_py)
    _build = njit(cache=True, nogil=True)(_build_py)
    _dynamic = njit(cache=True, nogil=True)(_dynamic_py)
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
