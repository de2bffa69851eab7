"""Study -> display slices with regions (geometry, intensity, boxes).  One call per case."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.ingest import geometry
from pipeline.regions.boxes import regions_2d, slice_label_boxes
from pipeline.regions.coords import normalise_box
from pipeline.ingest.intensity import Window, window_for
from pipeline.core.types import DisplaySlice, Region, Study
from schemas.card import BoxPolicy, SourceCard
from schemas.config import SlicingConfig


@dataclass
class ConvertResult:
    slices: list[DisplaySlice]
    notes: list[str] = field(default_factory=list)
    window: str = "none"


def _to_regions(found, width: int, height: int) -> list[Region]:
    out = []
    for r in found:
        out.append(
            Region(
                term=r.term,
                box_px=tuple(int(v) for v in r.box_px),
                box=normalise_box(r.box_px, width, height),
                area=int(r.area),
                component=int(r.component),
                label_id=int(r.label_id) if r.label_id is not None else None,
            )
        )
    return out


def _layer_regions(study: Study, label_slices: list[np.ndarray], policy: BoxPolicy) -> list[Region]:
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
        )
        regions.extend(
            r for r in _to_regions(found, w, h)
            if r.box_px[2] - r.box_px[0] + 1 >= policy.min_box_px and r.box_px[3] - r.box_px[1] + 1 >= policy.min_box_px
        )
    return regions


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
    regions = _layer_regions(study, labels, policy) if labels else []
    for b in study.boxes:
        x0, y0, x1, y1 = b.box
        px = (
            int(np.clip(np.floor(x0), 0, w - 1)),
            int(np.clip(np.floor(y0), 0, h - 1)),
            int(np.clip(np.ceil(x1), 0, w - 1)),
            int(np.clip(np.ceil(y1), 0, h - 1)),
        )
        area = (px[2] - px[0] + 1) * (px[3] - px[1] + 1)
        regions.append(Region(term=b.term, box_px=px, box=normalise_box(px, w, h), area=area))
    regions.sort(key=lambda r: (r.box_px[1], r.box_px[0], r.box_px[3], r.box_px[2], r.term))
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
    return ConvertResult([sl] if regions else [], window=wname)


def convert_3d(study: Study, card: SourceCard, policy: BoxPolicy, slicing: SlicingConfig) -> ConvertResult:
    vol = study.image
    spec = card.intensity
    win: Window = window_for(study.modality, study.intensity_preset, vol, spec.percentiles,
                             fixed=spec.window, invert=spec.invert)
    notes: list[str] = []
    slices: list[DisplaySlice] = []
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
        # one pass per layer over the voxels: which labels are on which slice, with how many pixels
        candidates: set[int] = set()
        for layer in study.layers:
            arr = layer.array if ax == 0 else np.moveaxis(layer.array, ax, 0)
            boxes = slice_label_boxes(arr)
            known = np.isin(boxes.label, np.fromiter(layer.names, dtype=np.int64, count=len(layer.names)))
            unknown = sorted(set(boxes.label[~known].tolist()))
            if unknown and axis == slicing.axes[0]:
                notes.append(f"label ids {unknown} in {layer.origin or 'the label map'} have no term; not emitted")
            good = known & (boxes.count >= slicing.min_label_pixels)
            candidates.update(boxes.slice[good].tolist())
        picked = geometry.select_slices(
            np.array(sorted(candidates), dtype=np.int64),
            study.spacing[ax],
            slicing.min_spacing_mm,
            slicing.max_slices_per_case,
        )
        for idx in picked:
            raw = geometry.display_view(vol, axis, idx)
            shape = geometry.square_shape(raw.shape[:2], (sr, sc))
            shape = (shape[0] * factor, shape[1] * factor)
            img = win.apply(raw)
            if shape != raw.shape[:2]:
                img = win.apply(geometry.resample_linear(raw, shape))
            labs = [geometry.resample_nearest(geometry.display_view(layer.array, axis, idx), shape)
                    for layer in study.layers]
            regions = _layer_regions(study, labs, policy)
            if not regions:
                continue
            pos = None
            if study.origin_mm is not None:
                pos = float(study.origin_mm[ax] + idx * study.spacing[ax])
            slices.append(
                DisplaySlice(
                    case_id=study.ref.case_id,
                    axis=axis,
                    index=int(idx),
                    position_mm=pos,
                    image=np.ascontiguousarray(img),
                    regions=regions,
                    window=win.name,
                    label_slices=labs,
                )
            )
    return ConvertResult(slices, notes=notes, window=win.name)


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
