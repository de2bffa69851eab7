"""Content-addressed PNG store: ``images/ab/<sha256>.png``; each image is written once."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.core.atomic import write_bytes_atomic
from pipeline.core.ids import sha256_hex


def encode_png(img: np.ndarray, compress_level: int = 1) -> bytes:
    """Deterministic PNG bytes (no timestamps or text chunks) of a uint8 grey or RGB image."""
    if img.dtype != np.uint8:
        raise TypeError(f"encode_png expects uint8, got {img.dtype}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img)).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def rel_path(sha: str) -> str:
    return f"images/{sha[:2]}/{sha}.png"


class ImageStore:
    """A folder holding ``images/ab/<sha>.png``; shared by runs so cached cases keep their images."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def put(self, png: bytes) -> tuple[str, str]:
        sha = sha256_hex(png)
        rel = rel_path(sha)
        path = self.root / rel
        if not path.exists():
            write_bytes_atomic(path, png)
        return sha, rel

    def path(self, rel: str) -> Path:
        return self.root / rel

    def has(self, rel: str) -> bool:
        return (self.root / rel).is_file()
