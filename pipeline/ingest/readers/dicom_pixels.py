"""DICOM pixel data: stored values of a series read into one (K, R, C) stack, and per-slice rescale.

Uncompressed little-endian pixel data are read straight from the file into numpy (``readinto``, no
intermediate copy); compressed transfer syntaxes go through pydicom's pixel handlers (pylibjpeg, pyjpegls,
...).  RescaleSlope/RescaleIntercept are applied per slice (int16 when the result is integral and fits,
else int32/float32).  Part of the DICOM series reader (:mod:`pipeline.ingest.readers.dicom`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom

from pipeline.ingest.readers import ReadError
from pipeline.ingest.readers.dicom_header import FileInfo, _map

def _read_native(info: FileInfo) -> np.ndarray | None:
    """Uncompressed little-endian pixel data straight from the file (None when not applicable)."""
    if info.pixel_tell is None or info.pixel_length is None or info.samples_per_pixel != 1 \
            or info.bits_allocated not in (8, 16, 32):
        return None
    rows, cols = info.slices[0].rows, info.slices[0].cols
    n = rows * cols * info.n_frames
    itemsize = info.bits_allocated // 8
    if info.pixel_length < n * itemsize:
        return None
    kind = "i" if info.pixel_representation == 1 else "u"
    dtype = np.dtype(f"<{kind}{itemsize}")
    arr = np.fromfile(info.path, dtype=dtype, count=n, offset=info.pixel_tell)
    if arr.size != n:
        return None
    bs = info.bits_stored
    if bs < info.bits_allocated:
        if kind == "u":
            arr &= dtype.type((1 << bs) - 1)
        else:
            shift = info.bits_allocated - bs
            arr = (arr << shift) >> shift
    return arr.reshape(info.n_frames, rows, cols)


def _read_pixels(info: FileInfo) -> np.ndarray:
    """(frames, R, C) stored values of one file."""
    arr = _read_native(info)
    if arr is not None:
        return arr
    if info.samples_per_pixel != 1:
        raise ReadError(
            f"{Path(info.path).name}: {info.samples_per_pixel} samples per pixel ({info.photometric}); "
            "only greyscale cross-sectional series are supported",
            file=info.path, hint="colour DICOM (ultrasound, secondary capture) is not a CT/MR/PET series")
    try:
        ds = pydicom.dcmread(info.path)
        arr = ds.pixel_array
    except Exception as exc:  # decoder plugins raise many types (RuntimeError, NotImplementedError, ...)
        raise ReadError(
            f"cannot decode pixel data of {Path(info.path).name} (transfer syntax {info.transfer_syntax}): "
            f"{type(exc).__name__}: {exc}",
            file=info.path,
            hint="install the decoder for this transfer syntax (pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg, "
            "pylibjpeg-rle, pyjpegls), or the file is damaged",
        ) from exc
    if arr.ndim == 2:
        arr = arr[None]
    return arr


def _native_dtype(info: FileInfo) -> np.dtype | None:
    """numpy dtype of a file's pixel data when it can be read straight from the file, else None."""
    if info.pixel_tell is None or info.pixel_length is None or info.samples_per_pixel != 1 \
            or info.bits_allocated not in (8, 16, 32):
        return None
    itemsize = info.bits_allocated // 8
    rows, cols = info.slices[0].rows, info.slices[0].cols
    if info.pixel_length < rows * cols * info.n_frames * itemsize:
        return None
    return np.dtype(f"<{'i' if info.pixel_representation == 1 else 'u'}{itemsize}")


def _read_stack(files: list[FileInfo], index: dict, shape: tuple[int, int, int], workers: int | None) -> np.ndarray:
    """Stored values of every slice, at their sorted indices, in one (K, R, C) array.

    Uncompressed little-endian single-frame files are read straight into the stack (``readinto``, no
    intermediate copy); anything else goes through :func:`_read_pixels` (pydicom's decoders).
    """
    dtypes = {_native_dtype(f) for f in files}
    dtype = dtypes.pop() if len(dtypes) == 1 else None  # one dtype, and every file readable straight
    if dtype is not None and all(f.n_frames == 1 for f in files):
        stack = np.empty(shape, dtype=dtype)
        nbytes = shape[1] * shape[2] * dtype.itemsize

        def load(info: FileInfo) -> FileInfo | None:
            k, tell = index[(info.path, None)], info.pixel_tell
            if tell is None:  # not read straight (cannot happen: _native_dtype checked it); the generic path
                return info
            with open(info.path, "rb") as fh:
                fh.seek(tell)
                got = fh.readinto(memoryview(stack[k]).cast("B"))
            if got != nbytes:
                return info  # truncated: let the generic path produce the error
            bs = info.bits_stored
            if bs < info.bits_allocated:
                plane = stack[k]
                if dtype.kind == "u":
                    plane &= dtype.type((1 << bs) - 1)
                else:
                    shift = info.bits_allocated - bs
                    plane <<= shift
                    plane >>= shift
            return None

        failed = [f for f in _map(load, files, workers) if f is not None]
        for info in failed:
            _read_pixels(info)  # raises a ReadError naming the file
            raise ReadError(f"{Path(info.path).name}: pixel data shorter than Rows x Columns", file=info.path,
                            hint="the file is truncated; re-download it")
        return stack

    def load_any(info: FileInfo):
        return info, _read_pixels(info)

    results = _map(load_any, files, workers)
    common = np.result_type(*[r[1].dtype for r in results])
    stack = np.empty(shape, dtype=common)
    for info, px in results:
        if px.shape[1:] != shape[1:] or px.shape[0] != max(1, len(info.slices)):
            raise ReadError(
                f"{Path(info.path).name}: pixel data shape {px.shape} does not match Rows/Columns/NumberOfFrames",
                file=info.path, hint="the file is damaged or its header is wrong")
        for s, frame in zip(info.slices, px, strict=False):  # counts checked above (no slices: nothing placed)
            stack[index[(s.path, s.frame)]] = frame
    return stack


def _stored_range(stack: np.ndarray, bits: tuple[int, int] | None) -> tuple[int, int]:
    """(min, max) the stored values can take: from BitsStored/PixelRepresentation when that is
    narrow enough to decide, else measured."""
    if bits is not None:
        bs, signed = bits
        lo, hi = (-(1 << (bs - 1)), (1 << (bs - 1)) - 1) if signed else (0, (1 << bs) - 1)
        if lo - 4096 >= -32768 and hi + 4096 <= 32767:
            return lo, hi
    if not stack.size:
        return 0, 0
    return int(stack.min()), int(stack.max())


def _rescale(stack: np.ndarray, slopes: np.ndarray, intercepts: np.ndarray,
             bits: tuple[int, int] | None = None) -> tuple[np.ndarray, bool]:
    """Apply per-slice slope/intercept.  Works in place on ``stack`` where the result fits its memory."""
    identity = bool(np.all(slopes == 1.0) and np.all(intercepts == 0.0))
    if identity:
        if stack.dtype == np.uint16 and stack.size and _stored_range(stack, bits)[1] <= np.iinfo(np.int16).max:
            return stack.view(np.int16), False
        return stack, False
    integral = bool(np.all(slopes == np.round(slopes)) and np.all(intercepts == np.round(intercepts)))
    if integral:
        lo, hi = _stored_range(stack, bits)
        cand = [lo * s + b for s in slopes for b in intercepts] + [hi * s + b for s in slopes for b in intercepts]
        target = np.int16 if min(cand) >= -32768 and max(cand) <= 32767 else np.int32
        if np.all(slopes == 1.0) and np.all(intercepts == intercepts[0]):
            if target is np.int16 and stack.dtype in (np.int16, np.uint16) and hi <= 32767:
                out = stack.view(np.int16)  # in place: values fit int16 before and after
            else:
                out = stack.astype(target)
            out += target(intercepts[0])
            return out, True
        out = (stack.astype(np.int32) * slopes.astype(np.int32)[:, None, None]
               + intercepts.astype(np.int32)[:, None, None])
        return out.astype(target), True
    scaled = stack.astype(np.float32)
    scaled *= slopes.astype(np.float32)[:, None, None]
    scaled += intercepts.astype(np.float32)[:, None, None]
    return scaled, True

