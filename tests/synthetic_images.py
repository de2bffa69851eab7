"""Blank images for detection tests (not part of the pipeline): the CSV edge cases need image files with the
right names and sizes, not real radiographs.  Imported as ``from synthetic_images import synthesise_blank_images``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def synthesise_blank_images(folder: str | Path, names: list[str], size: tuple[int, int] = (1024, 1024)) -> None:
    """Write blank grey PNGs named ``names`` (for CSV edge cases; the card and the demo use the real
    images of the nih-cxr14-images sample)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    blank = Image.fromarray(np.zeros((size[1], size[0]), dtype=np.uint8))
    for n in names:
        blank.save(folder / n, optimize=False, compress_level=1)
