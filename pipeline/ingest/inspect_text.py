"""Terminal rendering of :func:`pipeline.ingest.inspect.inspect_path` results (``medreg inspect``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_MAX_LISTED = 40  # ids/values listed in full up to this many


def _fmt_dict(d: dict, limit: int = 12) -> str:
    items = list(d.items())
    text = ", ".join(f"{k}: {v}" for k, v in items[:limit])
    return text + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def format_inspection(d: dict[str, Any], indent: int = 0) -> str:
    """Human-readable rendering of :func:`inspect_path`'s result."""
    pad = "  " * indent
    head = f"{pad}{d.get('path', '')}"
    render = _RENDER.get(str(d.get("kind")))
    if render is None:
        return f"{head}: {d.get('kind')}" + (f" ({d['error']})" if d.get("error") else "")
    return "\n".join(render(d, pad, head, indent))


def _folder(d: dict[str, Any], pad: str, head: str, indent: int) -> list[str]:
    lines = [f"{head}: folder, {d['files']} files ({_fmt_dict(d['by_extension'])})"]
    if "dicom" in d:
        lines.append(format_inspection({**d["dicom"], "path": "DICOM"}, indent + 1))
    for key in ("nifti", "images", "tables"):
        lines.extend(format_inspection(item, indent + 1) for item in d.get(key, []))
    if d.get("images_note"):
        lines.append(f"{pad}  {d['images_note']}")
    for folder, text in d.get("roi_like_folders", {}).items():
        lines.append(f"{pad}  field of view? {folder}/: {text}")
    if d.get("suggested_adapter"):
        lines.append(f"{pad}suggested adapter: {d['suggested_adapter']}  (see docs/adding-a-source.md)")
    return lines


def _nifti(d: dict[str, Any], pad: str, head: str, indent: int) -> list[str]:
    lines = [f"{head}: NIfTI {d['shape']} {d['dtype']}, orientation {d['orientation']}, spacing {d['spacing_mm']} "
             f"mm, sform {d['sform_code']} / qform {d['qform_code']}"]
    if d.get("looks_like") == "label map":
        ids = d["label_ids"]
        more = " ..." if len(ids) > _MAX_LISTED else ""
        lines.append(f"{pad}  label map with {len(ids)} ids: {ids[:_MAX_LISTED]}{more}")
        if d.get("sidecar_names"):
            lines.append(f"{pad}  label names probably in {d['sidecar_names']}")
    else:
        lines.append(f"{pad}  image, values {d.get('range')}" + (f" ({d['hint']})" if d.get("hint") else ""))
    return lines


def _series(s: dict[str, Any], pad: str) -> list[str]:
    desc = (f"{pad}  series {s['series']}: {s['modality']} {s['slices']} slices of {s['rows_cols']}, "
            f"e.g. {s['example_file']}")
    if "problem" in s:
        return [desc + f"\n{pad}    problem: {s['problem']} ({s.get('hint', '')})"]
    lines = [desc + f", {s['orientation']}, spacing {s['spacing_mm']} mm (slice, row, col), "
             f"axes {s['axis_codes']}, stored {s['bits']}, rescale {s['rescale']}"]
    if s.get("pet"):
        from pipeline.ingest.readers.pet import format_pet_summary

        lines.append(f"{pad}    {format_pet_summary(s['pet'])}")
    lines.extend(f"{pad}    note: {n}" for n in s.get("notes", []))
    return lines


def _dicom(d: dict[str, Any], pad: str, head: str, indent: int) -> list[str]:
    lines = [f"{head}: {len(d['series'])} image series, {len(d['segmentations'])} SEG, "
             f"{len(d['structure_sets'])} RTSTRUCT"
             + (f", {d['non_dicom_files']} non-DICOM files" if d.get("non_dicom_files") else "")]
    lines.extend(f"{pad}  damaged: {x}" for x in d.get("damaged_dicom_files", []))
    for s in d["series"]:
        lines.extend(_series(s, pad))
    for g in d["segmentations"]:
        lines.append(f"{pad}  SEG {g['file']}: {g['type']}, {g['frames']} frames, "
                     f"refers to series {g['refers_to_series']}")
        for s in g["segments"]:
            lat = f", {s['laterality']}" if s.get("laterality") else ""
            lines.append(f"{pad}    segment {s['number']}: {s['label']!r} {s['code']} ({s['meaning']}{lat})")
    for r in d["structure_sets"]:
        lines.append(f"{pad}  RTSTRUCT {r['file']}: refers to series {r['refers_to_series']}")
        for roi in r["rois"]:
            code = f" {roi['code']}" if roi.get("code") else ""
            lines.append(f"{pad}    ROI {roi['number']}: {roi['name']!r} {roi['type'] or ''} "
                         f"{roi['contours']} contours {'/'.join(roi['geometry'])}{code}")
    if d.get("suggested_adapter") and indent == 0:
        lines.append(f"{pad}suggested adapter: {d['suggested_adapter']}")
    return lines


def _image(d: dict[str, Any], pad: str, head: str, indent: int) -> list[str]:
    if "distinct_values" in d:
        extra = f", {d['distinct_values']} distinct values"
    else:
        extra = f", {d.get('distinct_colours')} colours"
    vals = f" {d['values']}" if d.get("values") and len(d["values"]) <= 8 else ""
    fov = " (one large convex region reaching the border: a field of view?)" if d.get("fov_like") else ""
    return [f"{head}: image {d['size_wh'][0]}x{d['size_wh'][1]} {d['mode']}{extra}{vals} -> {d.get('looks_like')}{fov}"]


def _csv(d: dict[str, Any], pad: str, head: str, indent: int) -> list[str]:
    lines = [f"{head}: CSV, {d['rows']} rows, {d.get('columns')} columns; header {d.get('header')}"]
    if d.get("header_quirk"):
        lines.append(f"{pad}  note: {d['header_quirk']}")
    if d.get("looks_like"):
        lines.append(f"{pad}  {d['looks_like']}: {d['boxes']} boxes on {d['images']} images "
                     f"(max {d['max_boxes_per_image']} per image); labels {_fmt_dict(d['labels'])}; "
                     f"max right/bottom edge {d['max_right_bottom']}")
    return lines


def _json(d: dict[str, Any], pad: str, head: str, indent: int) -> list[str]:
    if d.get("looks_like") == "COCO":
        return [f"{head}: COCO JSON, {d['images']} images, {d['annotations']} annotations "
                f"({d['with_bbox']} with bbox); per category {_fmt_dict(d['per_category'])}"]
    return [f"{head}: JSON {d['top_level']} with {d.get('entries')} entries"
            + (f"; entry keys {d['entry_keys']}" if d.get("entry_keys") else "")
            + (f"; box labels {_fmt_dict(d['box_labels'])}" if d.get("box_labels") else "")]


_RENDER: dict[str, Callable[[dict[str, Any], str, str, int], list[str]]] = {
    "folder": _folder, "nifti": _nifti, "dicom": _dicom, "image": _image, "csv": _csv, "json": _json,
}
