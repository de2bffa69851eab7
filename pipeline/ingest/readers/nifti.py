"""NIfTI reading (nibabel) without float64 blow-up, with clear errors.

Before any voxel is read, the raw header is checked (docs/formats.md, "Damaged and hostile input"):
the claimed data size against the file (uncompressed ``.nii``: the bytes after ``vox_offset``; ``.nii.gz``:
deflate's maximum ratio) and against the decode limit (:mod:`pipeline.core.limits`); a zero or negative
voxel size (``pixdim``) is an error unless an sform gives the geometry (then a note).  After reading,
NaN/inf voxels are replaced by the lowest finite value with a note (images) or refused (label maps).
"""

from __future__ import annotations

import gzip
import io
import zlib
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.openers import ImageOpener

from pipeline.core.limits import check_claim
from pipeline.core.paths import shown
from pipeline.ingest.readers import ReadError

_HINT_DAMAGED = "the file is truncated or not NIfTI; re-download it and compare its sha256"


def _raw_header(path: Path, name: str):  # noqa: ANN202 - a nibabel Nifti1Header / Nifti2Header
    """The header as stored (nibabel's load "fixes" zero pixdims silently; this one is not fixed)."""
    try:
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


def _check_header(path: Path, name: str, hdr, notes: list[str] | None) -> None:  # noqa: ANN001
    dim = [int(d) for d in hdr["dim"]]
    if not 1 <= dim[0] <= 7 or any(d < 1 for d in dim[1 : dim[0] + 1]):
        raise ReadError(f"{name}: header dim {dim[: dim[0] + 1] if 0 <= dim[0] <= 7 else dim} is not a valid shape",
                        file=str(path), hint="the header is damaged; re-export the file")
    n = int(np.prod(np.asarray(dim[1 : dim[0] + 1], dtype=np.float64)))
    claimed = n * hdr.get_data_dtype().itemsize
    size = path.stat().st_size
    if str(path).endswith(".gz"):
        check_claim(claimed, file=str(path), name=name, what="voxel data", available=size, compressed=True)
    else:
        check_claim(claimed, file=str(path), name=name, what="voxel data",
                    available=max(0, size - int(hdr.get_data_offset())))
    pixdim = np.asarray(hdr["pixdim"][1 : 1 + min(3, dim[0])], dtype=float)
    if np.all(np.isfinite(pixdim)) and np.all(pixdim > 0):
        return
    if int(hdr["sform_code"]) > 0:
        if notes is not None:
            notes.append(f"{name}: header voxel size (pixdim) is {pixdim.tolist()}; geometry taken from the sform")
        return
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


def read_nifti(path: str | Path, *, integer_labels: bool = False,
               notes: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(array, affine)``; the affine maps voxel indices to RAS+ mm.

    Image data keep their stored dtype when the header has no scaling (int16 CT stays int16); labels
    are returned as an unsigned/signed integer array and rejected if they are not integral.  Findings
    that do not stop the read (NaN voxels replaced, pixdim overridden by the sform) go to ``notes``.
    """
    path = Path(path)
    name = shown(path)
    if not path.is_file():
        raise ReadError(f"file not found: {name}", file=str(path), hint="check the card's layout paths/globs")
    _check_header(path, name, _raw_header(path, name), notes)
    try:
        img: Any = nib.load(str(path))  # a Nifti1Image/Nifti2Image (FileBasedImage in the stubs)
        arr = np.asanyarray(img.dataobj)
    except (EOFError, OSError, zlib.error, gzip.BadGzipFile, nib.filebasedimages.ImageFileError, ValueError) as exc:
        raise ReadError(f"cannot read NIfTI {name}: {type(exc).__name__}: {exc}", file=str(path),
                        hint=_HINT_DAMAGED) from exc
    if arr.ndim == 4 and arr.shape[3] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise ReadError(f"{name}: expected a 3-D volume, got shape {arr.shape}", file=str(path),
                        hint="split 4-D series into one volume per case")
    affine = img.affine
    if affine is None or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise ReadError(f"{name}: no usable affine (sform/qform)", file=str(path), hint="fix the header geometry")
    arr = _finite(arr, path, name, integer_labels, notes)
    if integer_labels:
        if not np.issubdtype(arr.dtype, np.integer):
            rounded = np.rint(arr)
            if not np.array_equal(rounded, arr):
                raise ReadError(f"{name}: label map has non-integer values", file=str(path),
                                hint="a label map must hold integer ids; is this the image instead of the labels?")
            arr = rounded.astype(np.int32)
        if arr.size and arr.min() < 0:
            raise ReadError(f"{name}: label map has negative ids", file=str(path), hint="labels must be >= 0")
    return arr, np.asarray(affine, dtype=float)
