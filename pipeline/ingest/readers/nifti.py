"""NIfTI reading without float64 blow-up, with clear errors and a fast gzip path.

Before any voxel is read, the raw header is checked (docs/formats.md, "Damaged and hostile input"):
the claimed data size against the file (uncompressed ``.nii``: the bytes after ``vox_offset``; ``.nii.gz``:
deflate's maximum ratio) and against the decode limit (:mod:`pipeline.core.limits`); a zero or negative
voxel size (``pixdim``) is an error unless an sform gives the geometry (then a note).  After reading,
NaN/inf voxels are replaced by the lowest finite value with a note (images) or refused (label maps).

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
from nibabel.openers import ImageOpener
from nibabel.spatialimages import SpatialImage
from nibabel.volumeutils import apply_read_scaling

from pipeline.core.limits import check_claim
from pipeline.core.paths import shown
from pipeline.ingest.buffers import take
from pipeline.ingest.packing import MaskRuns, runs_of_chunk
from pipeline.ingest.readers import ReadError
from pipeline.ingest.readers._inflate import SPARSE_MAX_BYTES, sparse_inflate_on, sparse_segments
from pipeline.ingest.readers.gz import GzipError, backend, gunzip_chunks

_HINT_DAMAGED = "the file is truncated or not NIfTI; re-download it and compare its sha256"
_NIFTI_ERRORS = (EOFError, OSError, zlib.error, gzip.BadGzipFile, GzipError, nib.filebasedimages.ImageFileError,
                 ValueError)


def _raw_header(path: Path, name: str, prefix: bytes | None = None):  # a nibabel Nifti1Header / Nifti2Header
    """The header as stored (nibabel's load "fixes" zero pixdims silently; this one is not fixed), from
    the file or from ``prefix``, its first decompressed bytes when the caller has them."""
    try:
        if prefix is not None:
            head = prefix[:540]
        else:
            with ImageOpener(str(path)) as fh:
                head = fh.read(540)
    except (EOFError, OSError, zlib.error, gzip.BadGzipFile) as exc:
        raise ReadError(f"cannot read NIfTI {name}: {type(exc).__name__}", file=str(path), hint=_HINT_DAMAGED) from exc
    for klass, size in ((nib.Nifti1Header, 348), (nib.Nifti2Header, 540)):
        for order in ("<", ">"):
            if len(head) >= size and int(np.frombuffer(head[:4], f"{order}i4")[0]) == size:
                try:
                    return klass.from_fileobj(io.BytesIO(head[:size]), check=False)
                except (ValueError, nib.spatialimages.HeaderDataError) as exc:
                    raise ReadError(f"{name}: damaged NIfTI header ({exc})", file=str(path),
                                    hint=_HINT_DAMAGED) from exc
    raise ReadError(f"{name}: not a NIfTI-1/NIfTI-2 file (header size field is wrong or the file is truncated)",
                    file=str(path), hint=_HINT_DAMAGED)


def _check_header(path: Path, name: str, hdr, notes: list[str] | None, size: int | None = None) -> int | None:
    """The header's shape, claimed size (against the file's ``size``, default: its size on disk) and voxel
    size; a ReadError naming the file, or a note. Returns the claimed data bytes when nothing was noted
    (another file with this header needs only the size check), else None."""
    dim = [int(d) for d in hdr["dim"]]
    if not 1 <= dim[0] <= 7 or any(d < 1 for d in dim[1 : dim[0] + 1]):
        raise ReadError(f"{name}: header dim {dim[: dim[0] + 1] if 0 <= dim[0] <= 7 else dim} is not a valid shape",
                        file=str(path), hint="the header is damaged; re-export the file")
    n = int(np.prod(np.asarray(dim[1 : dim[0] + 1], dtype=np.float64)))
    claimed = n * hdr.get_data_dtype().itemsize
    size = path.stat().st_size if size is None else size
    if str(path).endswith(".gz"):
        check_claim(claimed, file=str(path), name=name, what="voxel data", available=size, compressed=True)
    else:
        check_claim(claimed, file=str(path), name=name, what="voxel data",
                    available=max(0, size - int(hdr.get_data_offset())))
    pixdim = np.asarray(hdr["pixdim"][1 : 1 + min(3, dim[0])], dtype=float)
    if np.all(np.isfinite(pixdim)) and np.all(pixdim > 0):
        return claimed
    if int(hdr["sform_code"]) > 0:
        if notes is not None:
            notes.append(f"{name}: header voxel size (pixdim) is {pixdim.tolist()}; geometry taken from the sform")
        return None
    raise ReadError(f"{name}: header voxel size (pixdim) is {pixdim.tolist()} and no sform gives the geometry",
                    file=str(path), hint="fix the header: set the voxel size (pixdim[1..3] > 0) or an sform")


def _finite(arr: np.ndarray, path: Path, name: str, integer_labels: bool, notes: list[str] | None) -> np.ndarray:
    """Refuse (labels) or replace (images) NaN/inf voxels, never silently."""
    if arr.dtype.kind not in "fc":
        return arr
    ok = np.isfinite(arr)
    bad = int(ok.size - np.count_nonzero(ok))
    if not bad:
        return arr
    if integer_labels:
        raise ReadError(f"{name}: label map holds {bad} NaN/inf value(s)", file=str(path),
                        hint="a label map must hold integer ids; re-export it (is it the image, not the labels?)")
    if bad == arr.size:
        raise ReadError(f"{name}: every voxel is NaN/inf", file=str(path),
                        hint="the image is empty or damaged; re-export it")
    low = arr[ok].min()
    if not arr.flags.writeable:
        arr = arr.copy()
    arr[~ok] = low
    if notes is not None:
        notes.append(f"{name}: {bad} NaN/inf voxel(s) ({bad / arr.size:.2%}) replaced by the lowest value "
                     f"{float(low):g}")
    return arr


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
    buf = take(nbytes)  # a previous case's buffer when one is free (pipeline/ingest/buffers.py)
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


def _check_shape(arr_shape: tuple[int, ...], path: Path, name: str) -> tuple[int, ...]:
    shape = arr_shape[:3] if len(arr_shape) == 4 and arr_shape[3] == 1 else arr_shape
    if len(shape) != 3:
        raise ReadError(f"{name}: expected a 3-D volume, got shape {arr_shape}", file=str(path),
                        hint="split 4-D series into one volume per case")
    return shape


def _check_affine(affine: np.ndarray | None, path: Path, name: str) -> None:
    if affine is None or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise ReadError(f"{name}: no usable affine (sform/qform)", file=str(path), hint="fix the header geometry")


def read_nifti(path: str | Path, *, integer_labels: bool = False, notes: list[str] | None = None,
               backend_name: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(array, affine)``; the affine maps voxel indices to RAS+ mm.

    Image data keep their stored dtype when the header has no scaling (int16 CT stays int16); labels
    are returned as an unsigned/signed integer array and rejected if they are not integral.  Findings
    that do not stop the read (NaN voxels replaced, pixdim overridden by the sform) go to ``notes``.
    ``backend_name`` picks the gzip inflater (``"isal"`` or ``"zlib"``; default: isal when installed).
    """
    path = Path(path)
    name = shown(path)
    if not path.is_file():
        raise ReadError(f"file not found: {name}", file=str(path), hint="check the card's layout paths/globs")
    _check_header(path, name, _raw_header(path, name), notes)
    try:
        arr, affine = _load(path, backend_name)
    except _NIFTI_ERRORS as exc:
        raise ReadError(f"cannot read NIfTI {name}: {type(exc).__name__}: {exc}", file=str(path),
                        hint=_HINT_DAMAGED) from exc
    shape = _check_shape(arr.shape, path, name)
    arr = arr.reshape(shape) if arr.ndim == 4 else arr
    _check_affine(affine, path, name)
    arr = _finite(arr, path, name, integer_labels, notes)
    if integer_labels:
        arr = _integer_labels(arr, path, name)
    return arr, affine


def _integer_labels(arr: np.ndarray, path: Path, name: str) -> np.ndarray:
    if not np.issubdtype(arr.dtype, np.integer):
        rounded = np.rint(arr)
        if not np.array_equal(rounded, arr):
            raise ReadError(f"{name}: label map has non-integer values", file=str(path),
                            hint="a label map must hold integer ids; is this the image instead of the labels?")
        arr = rounded.astype(np.int32)
    if arr.size and arr.min() < 0:
        raise ReadError(f"{name}: label map has negative ids", file=str(path), hint="labels must be >= 0")
    return arr


def read_mask_runs(path: str | Path, *, notes: list[str] | None = None, backend_name: str | None = None,
                   ) -> tuple[MaskRuns, np.ndarray] | None:
    """A binary mask (any non-zero voxel is foreground) as :class:`MaskRuns` in the file's (Fortran) order,
    plus its affine, read in slices without building the full volume.

    Returns None when the file needs the general reader (not gzip, a scaled or non-integer mask, an
    unusual header): call :func:`read_nifti` then.  Raises ReadError for a broken file.

    By default the file goes through the sparse inflater (:mod:`pipeline.ingest.readers._inflate`), which
    never writes the mask's empty stretches; ``backend_name`` (``"isal"``, ``"zlib"``) or
    ``MEDREG_MASK_INFLATE=stream`` inflates every byte through that backend instead (same runs).
    """
    path = Path(path)
    if not path.name.endswith(".gz"):
        return None
    name = shown(path)
    buf = head = None
    size = path.stat().st_size
    if backend_name is None and sparse_inflate_on() and size <= SPARSE_MAX_BYTES:
        buf = path.read_bytes()
        head = _gz_prefix(buf)
    try:
        if buf is not None and head is not None:
            info = _header_size(head)
            if info is not None and len(head) >= max(info[2], info[1] + 4):  # else an unusual or long header
                return _mask_runs_sparse(path, name, buf, head, info, notes)
        _check_header(path, name, _raw_header(path, name, head), notes, size)
        return _mask_runs_gz(path, name, backend_name)
    except _NIFTI_ERRORS as exc:
        raise ReadError(f"cannot read NIfTI {name}: {type(exc).__name__}: {exc}", file=str(path),
                        hint=_HINT_DAMAGED) from exc


def _gz_prefix(buf: bytes) -> bytes | None:
    """Up to 16 KiB of the start of the gzip file ``buf``, decompressed (the header and its extensions); None
    if that fails (the general reader then reports why)."""
    try:
        return backend().decompressobj(wbits=31).decompress(buf[: 1 << 14], 1 << 14)
    except Exception:  # isal's and zlib's errors alike: the general reader names the problem
        return None


# header bytes -> (raw header, claimed data bytes when the header checks note nothing, parsed header, mask shape)
_HEADERS: dict[bytes, tuple[object, int | None, NiftiHeader | None, tuple[int, ...] | None]] = {}


def _mask_runs_sparse(path: Path, name: str, buf: bytes, head: bytes, info: tuple[type[nib.Nifti1Header], int, int],
                      notes: list[str] | None) -> tuple[MaskRuns, np.ndarray] | None:
    """The mask through the sparse inflater (``head``: the file's first bytes decompressed, with the whole
    header; ``info``: what :func:`_header_size` found in it). A file the inflater does not take is read
    in full.

    The masks of a case share one header byte for byte (TotalSegmentator: 117 of them), so the parse and
    geometry checks of a header are kept by its bytes (a few per process, :data:`_HEADERS`) and done once;
    a header that fails a check is never kept, so every file with it gets its own error. The claimed size
    is checked against every file; the other checks of :func:`_check_header` run again for a file only
    when its header made them note something."""
    key = head[: max(info[2], 540)]
    got = _HEADERS.get(key)
    if got is not None and got[1] is not None:  # a clean header seen before: only this file's size to check
        check_claim(got[1], file=str(path), name=name, what="voxel data", available=len(buf), compressed=True)
    else:
        raw = _raw_header(path, name, head) if got is None else got[0]
        claimed = _check_header(path, name, raw, notes, len(buf))
    if got is None:
        nh, _ = _stream_header(iter([head]))
        if nh is not None:
            nh.affine.setflags(write=False)  # shared by every file with this header
        got = (raw, claimed, nh, _mask_shape(nh, path, name))
        if len(_HEADERS) >= 32:
            _HEADERS.clear()
        _HEADERS[key] = got
    _, _, nh, shape = got
    if nh is None or shape is None:
        return None
    item = nh.dtype.itemsize
    segs = sparse_segments(buf, nh.offset, prod(shape) * item, shape[0] * item, item)
    if segs is None:  # corrupt, truncated or multi-member: the general reader gives the error or reads it
        return _mask_runs_gz(path, name, None)
    return _segments_to_runs(shape, nh.dtype, *segs), nh.affine


def _mask_runs_gz(path: Path, name: str, backend_name: str | None) -> tuple[MaskRuns, np.ndarray] | None:
    chunks = gunzip_chunks(path, backend_name=backend_name)
    nh, head = _stream_header(chunks)
    shape = _mask_shape(nh, path, name)
    if nh is None or shape is None:
        return None
    return _stream_runs(chunks, head, nh, shape, name), nh.affine


def _mask_shape(nh: NiftiHeader | None, path: Path, name: str) -> tuple[int, ...] | None:
    """The 3-D shape of a mask the run readers take, after the geometry checks; None for one they leave to
    :func:`read_nifti` (an unusual header; scaled, signed or float data: read_nifti rejects negative ids)."""
    if nh is None or nh.scaled or nh.dtype.kind not in "bu":
        return None
    shape = _check_shape(nh.shape, path, name)
    _check_affine(nh.affine, path, name)
    return shape


def _segments_to_runs(shape: tuple[int, ...], dtype: np.dtype, starts: np.ndarray, offs: np.ndarray,
                      data: np.ndarray) -> MaskRuns:
    """The sparse inflater's foreground segments (byte offsets; Fortran order: a row runs along the first
    axis) as packed runs in voxels; the values are a view of ``data``."""
    item = dtype.itemsize
    if item > 1:
        starts, offs = starts // item, offs // item
    return MaskRuns(shape, "F", packed=(starts, offs, data.view(dtype)))


def _stream_runs(chunks: Iterator[bytes], head: bytes, nh: NiftiHeader, shape: tuple[int, ...], name: str,
                 ) -> MaskRuns:
    """The mask's runs from the decompressed stream, chunk by chunk (every byte inflated and scanned)."""
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
            raise ValueError(f"{name}: decompressed chunk not aligned to {item}-byte voxels")
    if pos < total:
        raise EOFError(f"expected {total * item} data bytes, got {pos * item}")
    return runs


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
