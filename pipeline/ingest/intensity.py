"""Intensity windows: CT by named preset (HU), MR/PET/US by foreground percentiles, or a fixed window
from the card (PET: SUV, e.g. 0-10); optionally inverted (PET readers' inverted grey); output uint8."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# width, level in HU
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "abdomen": (400.0, 40.0),
    "soft_tissue": (400.0, 40.0),
    "liver": (150.0, 30.0),
    "mediastinum": (350.0, 50.0),
    "lung": (1500.0, -600.0),
    "bone": (1800.0, 400.0),
    "brain": (80.0, 40.0),
    "head_neck": (350.0, 60.0),
    "whole_body": (800.0, 40.0),
}


@dataclass(frozen=True)
class Window:
    low: float
    high: float
    name: str
    invert: bool = False  # high values dark (255 at ``low``, 0 at ``high``)

    def apply(self, img: np.ndarray) -> np.ndarray:
        """Map ``[low, high]`` linearly to 0..255 (clipped; 255..0 when inverted), uint8, without float64
        temporaries."""
        scale = np.float32(255.0 / max(self.high - self.low, 1e-6))
        out = (img.astype(np.float32, copy=False) - np.float32(self.low)) * scale
        np.clip(out, 0, 255, out=out)
        if self.invert:
            np.subtract(np.float32(255.0), out, out=out)
        return (out + np.float32(0.5)).astype(np.uint8)


def ct_window(preset: str | None) -> Window:
    name = preset or "abdomen"
    if name not in CT_WINDOWS:
        raise ValueError(f"unknown CT window preset {name!r}; known: {', '.join(sorted(CT_WINDOWS))}")
    width, level = CT_WINDOWS[name]
    return Window(level - width / 2, level + width / 2, f"CT {name} W{width:g}/L{level:g}")


def percentile_window(volume: np.ndarray, lo: float = 0.5, hi: float = 99.5, max_samples: int = 2_000_000) -> Window:
    """Percentile window on the foreground (voxels above the volume minimum) of a volume.

    Uses a deterministic strided subsample for large volumes (percentiles are robust to it).
    """
    flat = volume.reshape(-1)
    if flat.size > max_samples:
        flat = flat[:: int(np.ceil(flat.size / max_samples))]
    flat = flat.astype(np.float32, copy=False)
    fg = flat[flat > flat.min()] if flat.size else flat
    if fg.size == 0:
        fg = flat
    if fg.size == 0:
        return Window(0.0, 1.0, f"percentile {lo:g}-{hi:g}")
    low, high = np.percentile(fg, [lo, hi])
    if high <= low:
        high = low + 1.0
    return Window(float(low), float(high), f"percentile {lo:g}-{hi:g}")


def fixed_window(modality: str, low: float, high: float) -> Window:
    """A card's fixed window in the image's values; PET values are SUV (pipeline/ingest/readers/pet.py)."""
    unit = {"PET": "SUV ", "CT": "HU "}.get(modality.upper(), "")
    return Window(float(low), float(high), f"{modality} {unit}{low:g}-{high:g}")


def window_for(modality: str, preset: str | None, volume: np.ndarray, percentiles: tuple[float, float],
               *, fixed: tuple[float, float] | None = None, invert: bool = False) -> Window:
    """The display window of a volume: a card's ``fixed`` window, a CT preset, or foreground percentiles;
    ``invert`` (PET readers' inverted grey) is stated in the window's name."""
    if fixed is not None:
        win = fixed_window(modality, *fixed)
    elif modality.upper() == "CT":
        win = ct_window(preset)
    else:
        win = percentile_window(volume, *percentiles)
    if invert:
        win = Window(win.low, win.high, f"{win.name}, inverted grey", invert=True)
    return win
