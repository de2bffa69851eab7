"""How much memory an input file may make the tool allocate, checked before allocating.

A header claims sizes (NIfTI ``dim``, DICOM ``Rows x Columns x NumberOfFrames``, image width x height).
Readers check the claim before they allocate or decode anything:

* against the file: uncompressed pixel data cannot be larger than the file that holds it, and deflate
  (gzip, zlib, PNG) cannot expand data more than :data:`DEFLATE_MAX_RATIO` times;
* against :func:`max_decoded_bytes`: ``MEDREG_MAX_DECODED_MB`` (environment; a driver may set a release
  config's value per case with :func:`decode_limit`) or :data:`DEFAULT_MAX_DECODED_MB` - enough for a
  1000-slice 512x512 float32 volume.

A refused file is a per-case :class:`~pipeline.core.errors.ReadError` that names the file, the claim and
the limit; the other cases build.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from pipeline.core.errors import ReadError

ENV_MAX_DECODED_MB = "MEDREG_MAX_DECODED_MB"
DEFAULT_MAX_DECODED_MB = 2048
# deflate's best case is ~1032:1 (a run of one byte); anything claiming more is a lie or a bomb
DEFLATE_MAX_RATIO = 1032


_OVERRIDE_MB: ContextVar[float | None] = ContextVar("medreg_max_decoded_mb", default=None)


@contextmanager
def decode_limit(mb: float | None) -> Iterator[None]:
    """Within this block the limit is ``mb`` MiB (a release config's value; None keeps env/default)."""
    token = _OVERRIDE_MB.set(mb)
    try:
        yield
    finally:
        _OVERRIDE_MB.reset(token)


def max_decoded_bytes() -> int:
    """The largest decoded array (bytes) one input file may claim: :func:`decode_limit`, else
    ``MEDREG_MAX_DECODED_MB``, else :data:`DEFAULT_MAX_DECODED_MB` (MiB)."""
    mb = _OVERRIDE_MB.get()
    if mb is None:
        raw = os.environ.get(ENV_MAX_DECODED_MB, "")
        try:
            mb = float(raw) if raw.strip() else DEFAULT_MAX_DECODED_MB
        except ValueError:
            mb = DEFAULT_MAX_DECODED_MB
    return max(1, int(mb * 2**20))


def _mb(n: float) -> str:
    if n < 2**20:
        return f"{int(n):,} bytes"
    return f"{n / 2**20:,.1f} MiB" if n < 2**30 else f"{n / 2**30:,.1f} GiB"


def check_claim(claimed: int, *, file: str, name: str, what: str, available: int | None = None,
                compressed: bool = False) -> None:
    """Refuse a header that claims ``claimed`` decoded bytes for ``what``.

    ``available`` is the number of bytes the file can hold for that data: with ``compressed`` false it
    must cover the claim (else the file is truncated or the header lies); with ``compressed`` true the
    claim may be at most :data:`DEFLATE_MAX_RATIO` times larger.  ``name`` is how the message names the
    file (:func:`pipeline.core.paths.shown`).
    """
    if claimed < 0:
        raise ReadError(f"{name}: header gives a negative size for {what}", file=file,
                        hint="the header is damaged; re-download or re-export the file")
    if available is not None:
        room = available * DEFLATE_MAX_RATIO if compressed else available
        if claimed > room:
            if compressed:
                msg = (f"{name}: header claims {_mb(claimed)} of {what}, more than {DEFLATE_MAX_RATIO}x its "
                       f"{_mb(available)} of compressed data can hold")
            else:
                msg = f"{name}: header claims {_mb(claimed)} of {what} but the file holds only {_mb(available)}"
            raise ReadError(msg, file=file,
                            hint="the file is truncated or its header is wrong; re-download it and compare its sha256")
    limit = max_decoded_bytes()
    if claimed > limit:
        raise ReadError(
            f"{name}: header claims {_mb(claimed)} of {what}, over the decode limit of {_mb(limit)}",
            file=file,
            hint=f"if the file is genuine, raise the limit with {ENV_MAX_DECODED_MB} (MiB); otherwise its header is "
            "wrong",
        )
