"""Put a label map that lives on another grid onto the image grid, in physical space."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from pipeline.ingest.readers import ReadError


def _corners(shape: tuple[int, ...]) -> np.ndarray:
    ranges = [(-0.5, n - 0.5) for n in shape[:3]]
    return np.array([[a, b, c, 1.0] for a in ranges[0] for b in ranges[1] for c in ranges[2]]).T


def align_labels_to_image(
    labels: np.ndarray,
    label_affine: np.ndarray,
    image_shape: tuple[int, ...],
    image_affine: np.ndarray,
    *,
    label_file: str = "",
    image_file: str = "",
) -> tuple[np.ndarray, str]:
    """Nearest-neighbour resample ``labels`` (voxel->mm ``label_affine``) onto the image grid.

    Both affines map voxel indices to the same physical frame (RAS+ for NIfTI).  Never trusts array
    indices: a label map with the same shape but another affine is moved too.  Raises ReadError when
    the two grids do not overlap in physical space.
    """
    m = np.linalg.inv(np.asarray(label_affine, float)) @ np.asarray(image_affine, float)
    # physical overlap test: image grid corners in label index space vs the label grid extent
    pts = m @ _corners(image_shape)
    lo, hi = pts[:3].min(axis=1), pts[:3].max(axis=1)
    lab_hi = np.array(labels.shape[:3]) - 0.5
    overlap = np.minimum(hi, lab_hi) - np.maximum(lo, -0.5)
    if np.any(overlap <= 0):
        raise ReadError(
            f"label map {Path(label_file).name or '?'} does not overlap image {Path(image_file).name or '?'} in "
            "physical space (affines place them apart)",
            file=label_file or None,
            hint="the label map belongs to another scan, or one header's geometry is wrong",
        )
    out = ndimage.affine_transform(
        labels, m[:3, :3], offset=m[:3, 3], output_shape=tuple(image_shape[:3]), order=0, mode="grid-constant", cval=0
    )
    frac = float(np.clip(overlap / (hi - lo), 0, 1).prod())
    note = (
        f"label map {Path(label_file).name} resampled onto the image grid in physical space "
        f"(nearest neighbour; {frac:.0%} of the image box overlaps the label grid)"
    )
    return out, note
