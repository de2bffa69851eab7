"""2-D image and mask reading (PNG, JPEG, GIF, TIFF, BMP; grey, RGB, RGBA, palette, 16-bit)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.core.limits import check_claim
from pipeline.core.paths import shown
from pipeline.ingest.readers import ReadError

_LOSSY = {"JPEG", "MPO", "WEBP"}  # compression noise: a near-zero value is not a label


_BANDS_BYTES = {"1": 1, "L": 1, "P": 1, "LA": 2, "RGB": 3, "YCbCr": 3, "RGBA": 4, "CMYK": 4, "I": 4, "F": 4}


def _open(path: Path) -> Image.Image:
    name = shown(path)
    if not path.is_file():
        raise ReadError(f"file not found: {name}", file=str(path), hint="check the card's layout globs")
    try:
        im = Image.open(path)  # reads the header only
        w, h = im.size
        # the size claimed by the header, checked before decoding (PNG: deflate cannot expand more than ~1032x)
        check_claim(w * h * _BANDS_BYTES.get(im.mode, 2), file=str(path), name=name, what="pixels",
                    available=path.stat().st_size if im.format == "PNG" else None, compressed=True)
        im.load()
        return im
    except Image.DecompressionBombError as exc:
        raise ReadError(f"{name}: header claims more than Pillow's limit of {2 * (Image.MAX_IMAGE_PIXELS or 0):,} "
                        "pixels (a decompression bomb?)", file=str(path),
                        hint="the image header is wrong or the image is not a medical image; re-export it") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ReadError(f"cannot read image {name}: {type(exc).__name__}", file=str(path),
                        hint="the file is truncated or not an image; re-download it") from exc


def read_image(path: str | Path) -> np.ndarray:
    """Image as uint8 ``(H, W)`` grey or ``(H, W, 3)`` RGB.

    Alpha is dropped (composited on nothing: channels kept as stored); an RGB image whose three
    channels are equal becomes grey; 16-bit/float images are scaled by their 0.5-99.5 percentiles.
    """
    path = Path(path)
    im = _open(path)
    if im.mode == "P":
        im = im.convert("RGB")
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im).astype(np.float32)
        lo, hi = np.percentile(arr, [0.5, 99.5])
        hi = hi if hi > lo else lo + 1
        return np.clip((arr - lo) * (255.0 / (hi - lo)) + 0.5, 0, 255).astype(np.uint8)
    if im.mode in ("RGBA", "LA", "CMYK", "YCbCr", "1"):
        im = im.convert("RGB" if im.mode != "LA" and im.mode != "1" else "L")
    arr = np.asarray(im)
    if arr.ndim == 3:
        if arr.shape[2] > 3:
            arr = arr[..., :3]
        if np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]):
            arr = arr[..., 0]
    return np.ascontiguousarray(arr, dtype=np.uint8)


def read_mask(path: str | Path, *, threshold: int = 127, mode: str = "binary") -> np.ndarray:
    """Mask as ``(H, W)`` array.

    ``mode="binary"``: foreground where the grey value (mean of colour channels; alpha ignored) is above
    ``threshold`` — robust to JPEG compression noise, which stays near 0 and 255.  Returns uint8 {0,1}.
    ``mode="values"``: the stored label values (palette indices for palette PNGs), as int32.
    """
    path = Path(path)
    im = _open(path)
    if mode == "values":
        if im.mode in ("RGB", "RGBA"):
            arr = np.asarray(im.convert("RGB"))
            if not (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])):
                raise ReadError(f"{path.name}: colour label map; values mode needs grey or palette masks",
                                file=str(path), hint="use mode 'binary' per file, or a palette/grey label PNG")
            return arr[..., 0].astype(np.int32)
        return np.asarray(im).astype(np.int32)
    if im.mode == "P":
        return (np.asarray(im) > 0).astype(np.uint8)
    if im.mode == "1":
        return np.asarray(im).astype(np.uint8)
    arr = np.asarray(im)
    if arr.ndim == 3:
        chans = arr[..., :3] if arr.shape[2] >= 3 else arr[..., :1]
        grey = chans.astype(np.uint16).sum(axis=2) / chans.shape[2]
    else:
        grey = arr
    if grey.dtype != np.uint8 and np.issubdtype(grey.dtype, np.integer) and grey.max(initial=0) > 255:
        return (grey > 0).astype(np.uint8)
    return _binary(grey, threshold, path, im.format or "")


def _binary(grey: np.ndarray, threshold: int, path: Path, fmt: str) -> np.ndarray:
    """Foreground above ``threshold``.  A losslessly stored mask that is non-zero somewhere but never
    above the threshold would silently become empty: 0/1 masks are read as 0/1 (foreground > 0), any
    other such mask is an error saying which threshold would work (JPEG noise near 0 stays background)."""
    fg = grey > threshold
    top = float(grey.max(initial=0))
    if fg.any() or top == 0 or fmt in _LOSSY:
        return fg.astype(np.uint8)
    if top == 1:
        return (grey > 0).astype(np.uint8)
    raise ReadError(f"mask {shown(path)}: every value is <= the threshold {threshold} (largest {top:g}), so it "
                    "would be empty", file=str(path),
                    hint=f"the mask stores small values: set the card's layout.threshold below {top:g} (e.g. 0)")
