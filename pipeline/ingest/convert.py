"""Study -> display slices with regions (geometry, intensity, boxes).  One call per case.

Detection boxes (``Study.boxes``) are emitted as regions as given.  On a 3-D study a box lies on the
axial slice ``slice_index`` (canonical axis 0) in pixel coordinates of the axial display image before
square-pixel resampling (x = column, patient right -> left; y = row, anterior -> posterior); it is
resampled with the image exactly as a label mask would be.  Boxes exist on axial images only:
coronal/sagittal images of a study with boxes carry its label layers only, and a note counts the boxes
not shown there.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from pipeline.ingest import geometry
from pipeline.regions.boxes import regions_2d
from pipeline.regions.counts import SliceLabelCounts, slice_label_counts
from pipeline.regions.coords import normalise_box
from pipeline.ingest.intensity import Window, window_for
from pipeline.core.types import DisplaySlice, PixelBoxAnnotation, Region, Study
from schemas.card import BoxPolicy, SourceCard
from schemas.config import SlicingConfig


@dataclass
class ConvertResult:
    slices: list[DisplaySlice]
    notes: list[str] = field(default_factory=list)
    window: str = "none"
    # what did not become a region or a slice, by reason (region:dust, region:unknown_label,
    # region:min_box, slice:empty)
    dropped: Counter[str] = field(default_factory=Counter)


def _to_regions(found, width: int, height: int) -> list[Region]:
    out = []
    for r in found:
        out.append(
            Region(
                term=r.term,
                box_px=(int(r.box_px[0]), int(r.box_px[1]), int(r.box_px[2]), int(r.box_px[3])),
                box=normalise_box(r.box_px, width, height),
                area=int(r.area),
                component=int(r.component),
                label_id=int(r.label_id) if r.label_id is not None else None,
            )
        )
    return out


def _layer_regions(study: Study, label_slices: list[np.ndarray], policy: BoxPolicy,
                   dropped: Counter[str] | None = None) -> list[Region]:
    h, w = label_slices[0].shape[:2] if label_slices else study.image.shape[1:3]
    regions: list[Region] = []
    for layer, lab in zip(study.layers, label_slices, strict=True):
        found = regions_2d(
            lab,
            layer.names,
            policy=policy.mode,
            min_pixels=policy.min_pixels,
            min_fraction=policy.min_fraction,
            connectivity=policy.connectivity,
            instance=layer.instance,
            dropped=dropped,
        )
        for r in _to_regions(found, w, h):
            if min(r.box_px[2] - r.box_px[0], r.box_px[3] - r.box_px[1]) + 1 >= policy.min_box_px:
                regions.append(r)
            elif dropped is not None:
                dropped["region:min_box"] += 1
    return regions


def _box_regions(boxes: list[PixelBoxAnnotation], in_hw: tuple[int, int], out_hw: tuple[int, int]) -> list[Region]:
    """Detection boxes (inclusive pixel indices on an ``in_hw`` image; fractional edges widen to the pixels
    they touch) as regions on the ``out_hw`` image: the box of the box's mask resampled exactly like the
    label layers (nearest neighbour, pixel centres), so label and detection boxes of one study agree."""
    (h_in, w_in), (h, w) = in_hw, out_hw
    rows = geometry.nearest_index(h_in, h)
    cols = geometry.nearest_index(w_in, w)
    out = []
    for b in boxes:
        x0, y0, x1, y1 = b.box
        px0, py0 = int(np.clip(np.floor(x0), 0, w_in - 1)), int(np.clip(np.floor(y0), 0, h_in - 1))
        px1, py1 = int(np.clip(np.ceil(x1), 0, w_in - 1)), int(np.clip(np.ceil(y1), 0, h_in - 1))
        c0 = int(np.searchsorted(cols, px0, "left"))
        r0 = int(np.searchsorted(rows, py0, "left"))
        px = (c0, r0, max(c0, int(np.searchsorted(cols, px1, "right")) - 1),
              max(r0, int(np.searchsorted(rows, py1, "right")) - 1))
        area = (px[2] - px[0] + 1) * (px[3] - px[1] + 1)
        out.append(Region(term=b.term, box_px=px, box=normalise_box(px, w, h), area=area))
    return out


def _sort_regions(regions: list[Region]) -> list[Region]:
    return sorted(regions, key=lambda r: (r.box_px[1], r.box_px[0], r.box_px[3], r.box_px[2], r.term))


def convert_2d(study: Study, policy: BoxPolicy) -> ConvertResult:
    image = study.image[0]
    if image.dtype != np.uint8:
        win = window_for(study.modality, study.intensity_preset, image, (0.5, 99.5))
        image = win.apply(image)
        wname = win.name
    else:
        wname = "none (stored 8-bit)"
    h, w = image.shape[:2]
    labels = [layer.array[0] for layer in study.layers]
    dropped: Counter[str] = Counter()
    regions = _layer_regions(study, labels, policy, dropped) if labels else []
    regions = _sort_regions(regions + _box_regions(study.boxes, (h, w), (h, w)))
    sl = DisplaySlice(
        case_id=study.ref.case_id,
        axis="2d",
        index=0,
        position_mm=None,
        image=np.ascontiguousarray(image),
        regions=regions,
        window=wname,
        label_slices=labels,
    )
    return ConvertResult([sl] if regions else [], window=wname, dropped=dropped)


def _boxes_by_slice(study: Study, notes: list[str]) -> dict[int, list[PixelBoxAnnotation]]:
    """A 3-D study's detection boxes per axial slice; boxes off the volume are noted and left out."""
    k, rows, cols = study.image.shape[:3]
    by_slice: dict[int, list[PixelBoxAnnotation]] = {}
    outside = 0
    for b in study.boxes:
        x0, y0, x1, y1 = b.box
        if not (0 <= b.slice_index < k) or x1 < 0 or y1 < 0 or x0 > cols - 1 or y0 > rows - 1 or x1 < x0 or y1 < y0:
            outside += 1
            continue
        by_slice.setdefault(int(b.slice_index), []).append(b)
    if outside:
        notes.append(f"{outside} detection box(es) lie outside the {k}x{rows}x{cols} volume or are empty; not emitted")
    return by_slice


def _axis_candidates(study: Study, axis: str, slicing: SlicingConfig, notes: list[str],
                     counts: list[dict[int, SliceLabelCounts]]) -> set[int]:
    """Slices of ``axis`` where a known label has at least ``min_label_pixels`` (``counts``: per layer, the
    voxel counts of every label on every slice of each shown axis, from one pass over the layer)."""
    ax = geometry.axis_index(axis)
    candidates: set[int] = set()
    for layer, per_axis in zip(study.layers, counts, strict=True):
        c = per_axis[ax]
        known = np.isin(c.label, np.fromiter(layer.names, dtype=np.int64, count=len(layer.names)))
        unknown = sorted(set(c.label[~known].tolist()))
        if unknown and axis == slicing.axes[0]:
            notes.append(f"label ids {unknown} in {layer.origin or 'the label map'} have no term; not emitted")
        good = known & (c.count >= slicing.min_label_pixels)
        candidates.update(c.slice[good].tolist())
    return candidates


def convert_3d(study: Study, card: SourceCard, policy: BoxPolicy, slicing: SlicingConfig) -> ConvertResult:
    vol = study.image
    spec = card.intensity
    win: Window = window_for(study.modality, study.intensity_preset, vol, spec.percentiles,
                             fixed=spec.window, invert=spec.invert)
    notes: list[str] = []
    slices: list[DisplaySlice] = []
    dropped: Counter[str] = Counter()
    box_slices = _boxes_by_slice(study, notes) if study.boxes else {}
    shown = tuple(geometry.axis_index(a) for a in slicing.axes)
    counts = [slice_label_counts(layer.array, shown) for layer in study.layers]  # one pass per layer
    for axis in slicing.axes:
        ax = geometry.axis_index(axis)
        sr, sc = geometry.inplane_spacing(study.spacing, axis)
        shape0 = geometry.display_view(vol, axis, 0).shape[:2]
        out_shape = geometry.square_shape(shape0, (sr, sc))
        factor = geometry.upscale_factor(out_shape, card.display.upscale_to_px)
        if factor > 1:  # recorded in the rows' transform (a small volume shown enlarged)
            study.transform.setdefault("display_upscale", {})[axis] = factor
            out_shape = (out_shape[0] * factor, out_shape[1] * factor)
        if min(out_shape) < slicing.min_image_px:
            notes.append(
                f"{axis} images would be {out_shape[1]}x{out_shape[0]} px (< slicing.min_image_px "
                f"{slicing.min_image_px}): {axis} axis skipped"
            )
            continue
        candidates = _axis_candidates(study, axis, slicing, notes, counts)
        boxes_here = box_slices if axis == "axial" else {}
        if box_slices and axis != "axial":
            n = sum(len(v) for v in box_slices.values())
            notes.append(f"{n} detection box(es) are given on axial slices: not emitted on {axis} images")
        candidates.update(boxes_here)
        picked = geometry.select_slices(
            np.array(sorted(candidates), dtype=np.int64), study.spacing[ax], slicing.min_spacing_mm,
            slicing.max_slices_per_case,
        )
        for idx in picked:
            sl = _display_slice(study, win, axis, idx, (sr, sc), factor, policy, boxes_here.get(idx, []), dropped)
            if sl is not None:
                slices.append(sl)
    return ConvertResult(slices, notes=notes, window=win.name, dropped=dropped)


def _display_slice(study: Study, win: Window, axis: str, idx: int, spacing_rc: tuple[float, float], factor: int,
                   policy: BoxPolicy, boxes: list[PixelBoxAnnotation], dropped: Counter[str]) -> DisplaySlice | None:
    """One display image of ``axis`` at ``idx`` (square pixels, enlarged ``factor`` times) with its regions
    (None when it has none)."""
    raw = geometry.display_view(study.image, axis, idx)
    shape = geometry.square_shape(raw.shape[:2], spacing_rc)
    shape = (shape[0] * factor, shape[1] * factor)
    img = win.apply(raw) if shape == raw.shape[:2] else win.apply(geometry.resample_linear(raw, shape))
    labs = [geometry.resample_nearest(geometry.display_view(layer.array, axis, idx), shape) for layer in study.layers]
    regions = _layer_regions(study, labs, policy, dropped) + _box_regions(boxes, raw.shape[:2], shape)
    if not regions:
        dropped["slice:empty"] += 1
        return None
    ax = geometry.axis_index(axis)
    pos = None if study.origin_mm is None else float(study.origin_mm[ax] + idx * study.spacing[ax])
    return DisplaySlice(
        case_id=study.ref.case_id,
        axis=axis,
        index=int(idx),
        position_mm=pos,
        image=np.ascontiguousarray(img),
        regions=_sort_regions(regions) if boxes else regions,
        window=win.name,
        label_slices=labs,
    )


def _attach_report(study: Study, res: ConvertResult) -> ConvertResult:
    """Each slice carries the study's report sentences whose term has a region on it (a 3-D sentence reaches
    exactly the slices its region was found on)."""
    if study.report:
        for sl in res.slices:
            present = {r.term for r in sl.regions}
            sl.report = [s for s in study.report if s.term in present]
    return res


def convert(study: Study, card: SourceCard, policy: BoxPolicy, slicing: SlicingConfig) -> ConvertResult:
    if study.is_3d:
        return _attach_report(study, convert_3d(study, card, policy, slicing))
    return _attach_report(study, convert_2d(study, policy))
