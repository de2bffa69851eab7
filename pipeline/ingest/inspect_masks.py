"""Is this binary mask a field of view?  (``medreg inspect`` warns before a card pairs it as an object.)

Fundus, dermoscopy and endoscopy datasets often ship a *field-of-view* (FOV) / region-of-interest mask next
to the object masks (DRIVE: ``mask/21_training_mask.gif``).  Paired as an object by a loose ``masks`` glob,
it becomes a huge "vessel" box that every rule passes.  A FOV mask is one large, convex region that
reaches the image border or the border circle (the disc inscribed in the image):

* one connected component holds (nearly) all foreground,
* it covers at least ``MIN_FRACTION`` of the image,
* it is convex: ``area / convex hull area >= MIN_SOLIDITY``,
* its extent reaches the image border, or its centroid sits near the image centre and its boundary
  reaches the inscribed circle (``>= MIN_EXTENT`` of the image width or height).
"""

from __future__ import annotations

from typing import Any

import numpy as np

MIN_FRACTION = 0.3
MIN_SOLIDITY = 0.95
MIN_EXTENT = 0.9
MAIN_COMPONENT = 0.99  # share of the foreground in the largest component


def field_of_view_facts(mask: np.ndarray) -> dict[str, Any]:
    """Shape facts of a binary mask (``mask > 0``) and whether it looks like a field of view."""
    from skimage.measure import label, regionprops

    fg = np.asarray(mask) > 0
    h, w = fg.shape[:2]
    total = int(fg.sum())
    facts: dict[str, Any] = {"fov_like": False, "foreground_fraction": round(total / fg.size, 4)}
    if total == 0:
        return facts
    lab = label(fg, connectivity=2)
    props = max(regionprops(lab), key=lambda p: p.area)
    r0, c0, r1, c1 = props.bbox  # exclusive max
    extent = max((r1 - r0) / h, (c1 - c0) / w)
    touches_border = r0 == 0 or c0 == 0 or r1 == h or c1 == w
    cy, cx = props.centroid
    centred = abs(cy - (h - 1) / 2) < 0.1 * h and abs(cx - (w - 1) / 2) < 0.1 * w
    facts.update({
        "components": int(lab.max()),
        "main_component_share": round(props.area / total, 4),
        "solidity": round(float(props.solidity), 4),
        "extent": round(float(extent), 4),
        "touches_border": bool(touches_border),
    })
    facts["fov_like"] = bool(
        props.area / total >= MAIN_COMPONENT
        and total / fg.size >= MIN_FRACTION
        and props.solidity >= MIN_SOLIDITY
        and (touches_border or (centred and extent >= MIN_EXTENT))
    )
    return facts


def roi_like_folders(images: list[dict[str, Any]]) -> dict[str, str]:
    """Folders whose described masks all look like fields of view -> a sentence for the user."""
    by_folder: dict[str, list[bool]] = {}
    for d in images:
        if "fov_like" in d:
            folder = d["path"].rsplit("/", 1)[0] if "/" in d["path"] else "."
            by_folder.setdefault(folder, []).append(bool(d["fov_like"]))
    out = {}
    for folder, flags in sorted(by_folder.items()):
        if flags and all(flags):
            out[folder] = (f"{len(flags)} of {len(flags)} masks described here are one large convex region reaching "
                           "the image border: a field of view / ROI, not an object. Name it layout.roi_masks "
                           "(mask_folder_2d), and keep it out of layout.masks")
    return out
