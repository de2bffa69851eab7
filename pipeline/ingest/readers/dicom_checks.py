"""Integrity checks of DICOM files before their pixels are decoded (series, SEG).

A damaged DICOM file must fail its case, never vanish: a slice whose PixelData is missing or truncated
would otherwise drop out of its series (and a SEG frame on it would be "dropped" with a note), and a SEG
cut in half would decode half its frames as empty.  The checks here use only the header and the file
size, so a header claiming 10^7 frames or 65535 x 65535 pixels is refused before anything is allocated.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.core.limits import check_claim
from pipeline.core.paths import shown
from pipeline.ingest.readers import ReadError

_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
_UNDEFINED = 0xFFFFFFFF
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # PixelData, FloatPixelData, DoubleFloatPixelData
HINT_DAMAGED = ("the file is truncated or its header is wrong: re-download or re-export it (or remove it from the "
                "folder if it does not belong there)")


def looks_like_dicom(path: str | Path) -> bool:
    """A file that claims to be DICOM: a DICOM suffix, or the ``DICM`` magic at byte 128."""
    p = Path(path)
    if p.name.lower().endswith(_DICOM_SUFFIXES):
        return True
    try:
        with open(p, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def expected_pixel_bytes(rows: int, cols: int, frames: int, bits: int, samples: int = 1) -> int:
    """Bytes of native (uncompressed) pixel data; 1-bit data (BINARY SEG) is packed across frames."""
    return (rows * cols * frames * samples * bits + 7) // 8


def pixel_problem(ds, path: str, *, rows: int, cols: int, frames: int, bits: int, samples: int = 1,
                  per_frame: int | None = None) -> str | None:
    """Why the pixel data of ``ds`` (read with deferred large values) cannot be complete, or None.

    Checks: PixelData present; NumberOfFrames agrees with the per-frame functional groups (when the file
    has them); native data: the declared length covers Rows x Columns x frames and the file really holds
    that many bytes after the value's offset (a truncated file has a shorter tail than its header says).
    Encapsulated (compressed) data cannot be sized from the header: their decoder reports damage.
    """
    if rows <= 0 or cols <= 0:
        return f"Rows x Columns is {rows} x {cols}"
    if frames <= 0:
        return f"NumberOfFrames is {frames}"
    if per_frame is not None and per_frame != frames:
        return f"NumberOfFrames is {frames} but the file describes {per_frame} frame(s) (PerFrameFunctionalGroups)"
    elem = next((ds.get_item(t, keep_deferred=True) for t in _PIXEL_TAGS if t in ds), None)
    if elem is None:
        return "has no PixelData"
    length = getattr(elem, "length", None)
    value = getattr(elem, "value", None)
    if isinstance(value, (bytes, bytearray)):
        length = len(value)
    if length is None or length == _UNDEFINED:
        return None  # encapsulated: sized by its fragments
    need = expected_pixel_bytes(rows, cols, frames, bits, samples)
    if length < need:
        return f"PixelData holds {length} bytes but Rows x Columns x frames needs {need}"
    tell = getattr(elem, "value_tell", None)
    if tell is not None and not isinstance(value, (bytes, bytearray)):
        size = os.path.getsize(path)
        if tell + need > size:
            return f"the file ends {tell + need - size} bytes before the end of its pixel data (truncated)"
    return None


def raise_if_damaged(path: str, problem: str | None) -> None:
    if problem:
        raise ReadError(f"{shown(path)}: {problem}", file=path, hint=HINT_DAMAGED)


def check_decoded(nbytes: int, path: str, what: str) -> None:
    """Refuse decoding more than the limit (:mod:`pipeline.core.limits`) for one series/SEG."""
    check_claim(int(nbytes), file=path, name=shown(path), what=what)


def damaged_file_error(path: str, reason: str) -> ReadError:
    """The error of a file that looks like DICOM but cannot be parsed."""
    return ReadError(f"{shown(path)} looks like a DICOM file but cannot be read ({reason})", file=path,
                     hint=HINT_DAMAGED)
