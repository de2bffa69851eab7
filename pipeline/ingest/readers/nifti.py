"""NIfTI reading (nibabel headers) without float64 blow-up, with clear errors and a fast gzip path.

``.nii.gz`` files are inflated through :mod:`pipeline.ingest.readers.gz` (ISA-L when installed) in
cache-sized chunks; the header is parsed by nibabel's own header classes and the data are scaled exactly
as nibabel's ``ArrayProxy`` scales them, so arrays are identical to ``np.asanyarray(nib.load(p).dataobj)``
(tested). Uncompressed ``.nii`` files and anything unusual (a header/image pair, an unknown magic) go
through ``nib.load``.

:func:`read_mask_runs` reads a binary mask without materialising it: only the non-empty stretches of
each slice are kept (TotalSegmentator ships 117 full-size mask files per case, most of each file zeros).
"""

from __future__ import annotations

import gzip
import io
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import cast

import nibabel as nib
import numpy as np
from nibabel.spatialimages import SpatialImage
from nibabel.volumeutils import apply_read_scaling

from pipeline.ingest.packing import MaskRuns, runs_of_chunk
from pipeline.ingest.readers import ReadError
from pipeline.ingest.readers.gz import GzipError, gunzip_chunks

_NIFTI_ERRORS = (EOFError, OSError, zlib.error, gzip.BadGzipFile, GzipError, nib.filebasedimages.ImageFileError,
                 ValueError)
_TRUNCATED_HINT = "the file is truncated or not NIfTI; re-download it and compare its sha256"


@dataclass(frozen=True)
class NiftiHeader:
    """What the readers need from a header: data shape (3-D), dtype, voxel offset, affine, scaling."""

    header: nib.Nifti1Header
    shape: tuple[int, ...]
    dtype: np.dtype
    offset: int
    affine: np.ndarray

    @property
    def scaled(self) -> bool:
        slope, inter = self.header.get_slope_inter()
        return (slope is not None and slope != 1) or (inter is not None and inter != 0)


def _header_size(prefix: bytes) -> tuple[type[nib.Nifti1Header], int, int] | None:
    """(header class, header bytes, data offset) from the first bytes of a single-file NIfTI, or None."""
    if len(prefix) < 348:
        return None
    for order in ("<", ">"):
        size = int(np.frombuffer(prefix[:4], f"{order}i4")[0])
        if size == 348 and prefix[344:348] == b"n+1\0":
            return nib.Nifti1Header, 348, int(np.frombuffer(prefix[108:112], f"{order}f4")[0])
        if size == 540 and len(prefix) >= 540 and prefix[4:8] == b"n+2\0":
            return nib.Nifti2Header, 540, int(np.frombuffer(prefix[168:176], f"{order}i8")[0])
    return None


def _stream_header(chunks: Iterator[bytes]) -> tuple[NiftiHeader | None, bytes]:
    """Parse the header from the first chunks; returns (header or None when unusual, bytes read so far)."""
    head = b""
    for c in chunks:
        head += c
        if len(head) >= 540:
            break
    info = _header_size(head)
    if info is None:
        return None, head
    klass, size, offset = info
    while len(head) < max(offset, size + 4):
        nxt = next(chunks, None)
        if nxt is None:
            raise EOFError("file ends inside the NIfTI header")
        head += nxt
    hdr = klass.from_fileobj(io.BytesIO(head[: max(offset, size + 4)]))
    nh = NiftiHeader(hdr, tuple(int(s) for s in hdr.get_data_shape()), hdr.get_data_dtype(),
                     int(hdr.get_data_offset()), np.asarray(hdr.get_best_affine(), dtype=float))
    return nh, head


def _scale_like_nibabel(raw: np.ndarray, header: nib.Nifti1Header) -> np.ndarray:
    """nibabel ArrayProxy's read scaling (``_get_scaled`` with no dtype), step for step."""
    slope, inter = header.get_slope_inter()
    scl_slope = np.asanyarray(1.0 if slope is None else slope)
    scl_inter = np.asanyarray(0.0 if inter is None else inter)
    if np.can_cast(scl_inter, scl_slope.dtype):
        scl_inter = scl_inter.astype(scl_slope.dtype)
    # numpy scalars of the 0-d arrays' dtypes: apply_read_scaling promotes them exactly as it does the arrays
    return apply_read_scaling(raw, scl_slope.dtype.type(scl_slope), scl_inter.dtype.type(scl_inter))


def _read_gz(path: Path, backend_name: str | None) -> tuple[np.ndarray, np.ndarray] | None:
    chunks = gunzip_chunks(path, backend_name=backend_name)
    nh, head = _stream_header(chunks)
    if nh is None:
        return None
    nbytes = prod(nh.shape) * nh.dtype.itemsize
    buf = np.empty(nbytes, np.uint8)
    first = head[nh.offset : nh.offset + nbytes]
    buf[: len(first)] = np.frombuffer(first, np.uint8)
    pos = len(first)
    for c in chunks:
        if pos >= nbytes:
            continue  # trailing bytes are ignored (as nibabel does), but the stream is still checked
        n = min(len(c), nbytes - pos)
        buf[pos : pos + n] = np.frombuffer(c, np.uint8, count=n)
        pos += n
    if pos < nbytes:
        raise EOFError(f"expected {nbytes} data bytes, got {pos}")
    raw = np.ndarray(nh.shape, nh.dtype, buffer=buf, order="F")
    return _scale_like_nibabel(raw, nh.header), nh.affine


def _load(path: Path, backend_name: str | None) -> tuple[np.ndarray, np.ndarray]:
    if path.name.endswith(".gz"):
        got = _read_gz(path, backend_name)
        if got is not None:
            return got
    img = cast(SpatialImage, nib.load(str(path)))
    return np.asanyarray(img.dataobj), np.asarray(img.affine, dtype=float)


def _check_shape(arr_shape: tuple[int, ...], path: Path) -> tuple[int, ...]:
    shape = arr_shape[:3] if len(arr_shape) == 4 and arr_shape[3] == 1 else arr_shape
    if len(shape) != 3:
        raise ReadError(f"{path.name}: expected a 3-D volume, got shape {arr_shape}", file=str(path),
                        hint="split 4-D series into one volume per case")
    return shape


def _check_affine(affine: np.ndarray | None, path: Path) -> None:
    if affine is None or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise ReadError(f"{path.name}: no usable affine (sform/qform)", file=str(path), hint="fix the header geometry")


def read_nifti(path: str | Path, *, integer_labels: bool = False,
               backend_name: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(array, affine)``; the affine maps voxel indices to RAS+ mm.

    Image data keep their stored dtype when the header has no scaling (int16 CT stays int16); labels
    are returned as an unsigned/signed integer array and rejected if they are not integral.
    ``backend_name`` picks the gzip inflater (``"isal"`` or ``"zlib"``; default: isal when installed).
    """
    path = Path(path)
    if not path.is_file():
        raise ReadError(f"file not found: {path}", file=str(path), hint="check the card's layout paths/globs")
    try:
        arr, affine = _load(path, backend_name)
    except _NIFTI_ERRORS as exc:
        raise ReadError(f"cannot read NIfTI {path.name}: {type(exc).__name__}: {exc}", file=str(path),
                        hint=_TRUNCATED_HINT) from exc
    shape = _check_shape(arr.shape, path)
    arr = arr.reshape(shape) if arr.ndim == 4 else arr
    _check_affine(affine, path)
    if integer_labels:
        arr = _integer_labels(arr, path)
    return arr, affine


def _integer_labels(arr: np.ndarray, path: Path) -> np.ndarray:
    if not np.issubdtype(arr.dtype, np.integer):
        rounded = np.rint(arr)
        if not np.array_equal(rounded, arr):
            raise ReadError(f"{path.name}: label map has non-integer values", file=str(path),
                            hint="a label map must hold integer ids; is this the image instead of the labels?")
        arr = rounded.astype(np.int32)
    if arr.size and arr.min() < 0:
        raise ReadError(f"{path.name}: label map has negative ids", file=str(path), hint="labels must be >= 0")
    return arr


def read_mask_runs(path: str | Path, *, backend_name: str | None = None) -> tuple[MaskRuns, np.ndarray] | None:
    """A binary mask (any non-zero voxel is foreground) as :class:`MaskRuns` in the file's (Fortran) order,
    plus its affine, read in slices without building the full volume.

    Returns None when the file needs the general reader (not gzip, a scaled or non-integer mask, an
    unusual header): call :func:`read_nifti` then.  Raises ReadError for a broken file.
    """
    path = Path(path)
    if not path.name.endswith(".gz"):
        return None
    try:
        return _mask_runs_gz(path, backend_name)
    except _NIFTI_ERRORS as exc:
        raise ReadError(f"cannot read NIfTI {path.name}: {type(exc).__name__}: {exc}", file=str(path),
                        hint=_TRUNCATED_HINT) from exc


def _mask_runs_gz(path: Path, backend_name: str | None) -> tuple[MaskRuns, np.ndarray] | None:
    chunks = gunzip_chunks(path, backend_name=backend_name)
    nh, head = _stream_header(chunks)
    if nh is None or nh.scaled or nh.dtype.kind not in "bu":
        return None  # signed masks go through read_nifti (which rejects negative ids)
    shape = _check_shape(nh.shape, path)
    _check_affine(nh.affine, path)
    item, total = nh.dtype.itemsize, prod(shape)
    runs = MaskRuns(shape, "F")
    carry = head[nh.offset :]
    pos = 0  # voxel index of the next byte to process
    for c in _with_first(carry, chunks):
        if pos >= total:
            continue  # trailing bytes: ignored, the stream is still checked to its end
        n = min(len(c) // item, total - pos)
        runs.extend(runs_of_chunk(np.frombuffer(c, nh.dtype, count=n), pos, runs.row, copy=True))  # skips empty
        pos += n
        if len(c) % item and pos < total:
            raise ValueError(f"{path.name}: decompressed chunk not aligned to {item}-byte voxels")
    if pos < total:
        raise EOFError(f"expected {total * item} data bytes, got {pos * item}")
    return runs, nh.affine


def _with_first(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    """The first bytes, then the rest, re-cut so that every piece but the last is a multiple of 8 bytes."""
    carry = first
    for c in rest:
        if len(carry) % 8 == 0:
            if carry:
                yield carry
            carry = c
        else:
            k = 8 - len(carry) % 8
            yield carry + c[:k]
            carry = c[k:]
    if carry:
        yield carry
