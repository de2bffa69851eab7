"""Constant tables of the sparse inflater (:mod:`pipeline.ingest.readers._inflate`): deflate's length and
distance codes (RFC 1951, 3.2.5), the CRC-32 table and the zero-run CRC operators, and the gzip member
header (RFC 1952, 2.3)."""

from __future__ import annotations

import numpy as np

_LBASE = np.array([3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115,
                   131, 163, 195, 227, 258], np.int64)
_LEXT = np.array([0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0], np.int64)
_DBASE = np.array([1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537,
                   2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577], np.int64)
_DEXT = np.array([0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12,
                  13, 13], np.int64)
_CLORDER = np.array([16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15], np.int64)


def _crc_table() -> np.ndarray:
    t = np.zeros(256, np.uint64)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
        t[i] = c
    return t


def _zero_ops(t: np.ndarray, levels: int = 48) -> np.ndarray:
    """``z[k, j, b]``: the CRC register after ``2**k`` zero bytes, from the register ``b << 8j`` (linear)."""
    z = np.zeros((levels, 4, 256), np.uint64)
    basis = (np.arange(256, dtype=np.uint64)[None, :] << (8 * np.arange(4, dtype=np.uint64))[:, None])
    z[0] = t[basis & 0xFF] ^ (basis >> 8)
    for k in range(1, levels):
        prev = z[k - 1]
        once = prev[0][basis & 0xFF] ^ prev[1][(basis >> 8) & 0xFF] ^ prev[2][(basis >> 16) & 0xFF] \
            ^ prev[3][(basis >> 24) & 0xFF]
        z[k] = prev[0][once & 0xFF] ^ prev[1][(once >> 8) & 0xFF] ^ prev[2][(once >> 16) & 0xFF] \
            ^ prev[3][(once >> 24) & 0xFF]
    return z


CRC_T = _crc_table()
CRC_Z = _zero_ops(CRC_T).astype(np.int64)  # values < 2**32; int64 keeps numba's integer arithmetic signed
CRC_T = CRC_T.astype(np.int64)


def _fixed_lengths() -> tuple[np.ndarray, np.ndarray]:
    lit = np.zeros(288, np.int64)
    lit[:144], lit[144:256], lit[256:280], lit[280:] = 8, 9, 7, 8
    return lit, np.full(30, 5, np.int64)


_FLIT, _FDIST = _fixed_lengths()  # the fixed Huffman code's literal/length and distance code lengths


def gzip_payload_start(buf: bytes) -> int | None:
    """Offset of the deflate data after a gzip member header, or None if ``buf`` is not gzip as expected."""
    if len(buf) < 18 or buf[:3] != b"\x1f\x8b\x08" or buf[3] & 0xE0:
        return None
    flags, i = buf[3], 10
    try:
        if flags & 4:
            i += 2 + (buf[i] | buf[i + 1] << 8)
        if flags & 8:
            i = buf.index(0, i) + 1
        if flags & 16:
            i = buf.index(0, i) + 1
    except (IndexError, ValueError):
        return None
    if flags & 2:
        i += 2
    return i if i < len(buf) else None
