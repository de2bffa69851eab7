"""Deflate's Huffman side for the sparse inflater (:mod:`pipeline.ingest.readers._inflate`): the bit
buffer, canonical code tables, symbol decoding, a dynamic block's code lengths and a match's length and
distance (RFC 1951), compiled with numba; and :func:`_unowned`, the owner-less array view its loops use."""

from __future__ import annotations

import numpy as np

from pipeline.ingest.readers._inflate_tables import _CLORDER, _DBASE, _DEXT, _LBASE, _LEXT

try:  # numba is a hard dependency of the project; the fallback only keeps the module importable.
    from numba import njit
    from numba.core import cgutils
    from numba.extending import intrinsic

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only on installs without numba
    HAVE_NUMBA = False

FB = 10  # bits of the first-level Huffman lookup table


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

    _helper = njit(cache=True, nogil=True, inline="always")  # the helpers inlined into the symbol loop (both modules)
    _refill = _helper(_refill_py)
    _decode = _helper(_decode_py)
    _repeat = _helper(_repeat_py)
    _match = _helper(_match_py)
    _build = njit(cache=True, nogil=True)(_build_py)
    _dynamic = njit(cache=True, nogil=True)(_dynamic_py)
