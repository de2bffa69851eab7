"""gzip decompression in chunks, through ISA-L (``isal``) when installed, else the standard library's zlib.

Medical volumes are stored as ``.nii.gz``; decompression is most of the cost of reading them
(docs/benchmarks.md, B2 and B10). ISA-L's inflate gives the same bytes about three times faster than
zlib on CT data. Decompressing into chunks of half a megabyte that stay in the CPU cache, rather than
into one buffer of the whole file, also avoids writing (and page-faulting) a volume of zeros for a
mostly empty mask: callers keep only the chunks they need (:mod:`pipeline.ingest.readers.nifti`).

Multi-member files (concatenated gzip streams) are read member after member; trailing zero padding is
ignored; anything else after a member, a truncated stream or a corrupt one raises ``GzipError``.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

_isal: ModuleType | None
try:
    from isal import isal_zlib as _isal
except ImportError:  # pragma: no cover - isal is a dependency; the fallback keeps zlib-only installs working
    _isal = None
HAVE_ISAL = _isal is not None

CHUNK = 1 << 19  # output bytes per step: stays in the CPU cache (512 KiB measured best of 256 KiB..1 MiB)
_READ = 1 << 22  # compressed bytes read from the file per step
_MAGIC = b"\x1f\x8b"


class GzipError(ValueError):
    """The file is not gzip, or its stream is truncated or corrupt."""


def backend(name: str | None = None) -> ModuleType:
    """The zlib-compatible module to inflate with: ``"isal"`` or ``"zlib"``; default: the environment
    variable ``MEDREG_GZIP`` when set, else isal when installed (benchmarks compare the two)."""
    if name is None:
        name = os.environ.get("MEDREG_GZIP") or ("isal" if HAVE_ISAL else "zlib")
    if name == "isal":
        if _isal is None:
            raise ValueError("gzip backend 'isal' requested but the isal package is not installed")
        return _isal
    if name == "zlib":
        return zlib
    raise ValueError(f"unknown gzip backend {name!r}; use 'isal' or 'zlib'")


def _file_blocks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while block := fh.read(_READ):
            yield block


def gunzip_chunks(path: str | Path, *, chunk: int = CHUNK, backend_name: str | None = None) -> Iterator[bytes]:
    """Yield the decompressed bytes of the gzip file ``path`` in pieces of at most ``chunk`` bytes."""
    mod = backend(backend_name)
    errors = (zlib.error, mod.error) if mod is not zlib else (zlib.error,)
    d = mod.decompressobj(wbits=31)
    started = False
    for block in _file_blocks(Path(path)):
        if not started:
            if block[:2] != _MAGIC:
                raise GzipError(f"{Path(path).name} is not a gzip file (no gzip magic bytes)")
            started = True
        data = block
        while data:
            try:
                out = d.decompress(data, chunk)
            except errors as exc:
                raise GzipError(f"{Path(path).name}: corrupt gzip stream ({exc})") from exc
            if out:
                yield out
            if d.eof:
                rest = d.unused_data
                if rest[:2] == _MAGIC:  # next member
                    d = mod.decompressobj(wbits=31)
                    data = rest
                    continue
                if rest.strip(b"\0"):
                    raise GzipError(f"{Path(path).name}: unexpected data after the gzip stream")
                data = b""
                continue
            data = d.unconsumed_tail
        # the compressed block is consumed; more output may be buffered inside the decompressor
        while not d.eof:
            try:
                out = d.decompress(b"", chunk)
            except errors as exc:
                raise GzipError(f"{Path(path).name}: corrupt gzip stream ({exc})") from exc
            if not out:
                break
            yield out
    if not started:
        raise GzipError(f"{Path(path).name} is empty")
    if not d.eof:
        raise GzipError(f"{Path(path).name}: the gzip stream ends early (truncated file)")
