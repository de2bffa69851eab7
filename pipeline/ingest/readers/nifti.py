"""NIfTI reading (nibabel) without float64 blow-up, with clear errors."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from pipeline.ingest.readers import ReadError


def read_nifti(path: str | Path, *, integer_labels: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(array, affine)``; the affine maps voxel indices to RAS+ mm.

    Image data keep their stored dtype when the header has no scaling (int16 CT stays int16); labels
    are returned as an unsigned/signed integer array and rejected if they are not integral.
    """
    path = Path(path)
    if not path.is_file():
        raise ReadError(f"file not found: {path}", file=str(path), hint="check the card's layout paths/globs")
    try:
        img = nib.load(str(path))
        arr = np.asanyarray(img.dataobj)
    except (EOFError, OSError, zlib.error, gzip.BadGzipFile, nib.filebasedimages.ImageFileError, ValueError) as exc:
        raise ReadError(
            f"cannot read NIfTI {path.name}: {type(exc).__name__}: {exc}",
            file=str(path),
            hint="the file is truncated or not NIfTI; re-download it and compare its sha256",
        ) from exc
    if arr.ndim == 4 and arr.shape[3] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise ReadError(
            f"{path.name}: expected a 3-D volume, got shape {arr.shape}",
            file=str(path),
            hint="split 4-D series into one volume per case",
        )
    affine = img.affine
    if affine is None or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise ReadError(f"{path.name}: no usable affine (sform/qform)", file=str(path), hint="fix the header geometry")
    if integer_labels:
        if not np.issubdtype(arr.dtype, np.integer):
            rounded = np.rint(arr)
            if not np.array_equal(rounded, arr):
                raise ReadError(f"{path.name}: label map has non-integer values", file=str(path),
                                hint="a label map must hold integer ids; is this the image instead of the labels?")
            arr = rounded.astype(np.int32)
        if arr.size and arr.min() < 0:
            raise ReadError(f"{path.name}: label map has negative ids", file=str(path), hint="labels must be >= 0")
    return arr, np.asarray(affine, dtype=float)
