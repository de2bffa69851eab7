"""What is this file or folder?  Facts a user needs to write a source card.

``inspect_path(path) -> dict`` recognises NIfTI volumes (shape, dtype, orientation, spacing, label-map
or image, label ids), DICOM folders/files (image series with modality, slices, spacing, orientation,
gaps; SEG segments with labels and codes; RTSTRUCT ROIs; which series each annotation refers to), 2-D
images and masks (size, mode, distinct values), detection tables (ChestX-ray14-style CSV: columns,
labels, counts) and JSON (COCO: images, categories, counts; other JSON: structure).
``format_inspection(d) -> str`` (:mod:`pipeline.ingest.inspect_text`) renders the dict for a terminal
(``medreg inspect``).  DICOM files are recognised by content, whatever their names; a folder whose binary
masks all look like a field of view is named (:mod:`pipeline.ingest.inspect_masks`).

Privacy: only geometry, intensity, label and structure facts are reported.  Patient names, ids,
birth dates, study dates, UIDs, accession numbers, institution names and NIfTI ``descrip`` text are
never read into the result.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.ingest.inspect_masks import field_of_view_facts, roi_like_folders
from pipeline.ingest.readers.pet import pet_summary

_NIFTI = (".nii", ".nii.gz")
_IMAGES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif")
_MAX_LISTED = 40  # ids/values listed in full up to this many
_MAX_FILES_DETAILED = 12  # per kind in a folder


def _suffix(p: Path) -> str:
    name = p.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else p.suffix.lower()


# --- NIfTI ---------------------------------------------------------------------------------------------

def inspect_nifti(path: Path) -> dict[str, Any]:
    import nibabel as nib

    img = nib.load(str(path))
    if not isinstance(img, nib.Nifti1Image):  # NIfTI-2 images are Nifti1Image subclasses
        raise TypeError(f"{path.name} did not load as a NIfTI image ({type(img).__name__})")
    hdr = img.header
    arr = np.asanyarray(img.dataobj)
    out: dict[str, Any] = {
        "kind": "nifti",
        "path": str(path),
        "shape": list(arr.shape),
        "dtype": str(arr.dtype),
        "orientation": "".join(nib.aff2axcodes(img.affine)),
        "spacing_mm": [round(float(z), 4) for z in hdr.get_zooms()[:3]],
        "sform_code": int(hdr["sform_code"]),
        "qform_code": int(hdr["qform_code"]),
    }
    if arr.size == 0:
        return out
    integral = np.issubdtype(arr.dtype, np.integer)
    if not integral:
        sample = arr.ravel()[:: max(1, arr.size // 200_000)]
        integral = bool(np.all(np.isfinite(sample)) and np.array_equal(sample, np.rint(sample)))
    vmin, vmax = float(np.min(arr)), float(np.max(arr))
    out["range"] = [vmin, vmax]
    labels = None
    if integral and vmin >= 0 and vmax <= 65535:
        labels = np.unique(np.asarray(arr).astype(np.int64, copy=False), return_counts=True)
    if labels is not None and len(labels[0]) <= 1000:
        ids, counts = labels
        out["looks_like"] = "label map"
        nz = [(int(i), int(c)) for i, c in zip(ids, counts, strict=True) if i != 0]
        out["label_ids"] = [i for i, _ in nz]
        out["label_voxels"] = {str(i): c for i, c in nz[:_MAX_LISTED]}
        base = path.name[:-3] if path.name.endswith(".gz") else path.name
        for side in (path.with_name(base + ".txt"), path.with_name(path.name + ".txt"),
                     path.with_name(base.rsplit(".nii", 1)[0] + ".txt")):
            if side.is_file():
                out["sidecar_names"] = side.name
                break
    else:
        out["looks_like"] = "image"
        if out["dtype"].startswith("int") and vmin < -500:
            out["hint"] = "signed values below -500: probably CT in HU"
    return out


# --- DICOM ---------------------------------------------------------------------------------------------

def _orientation_name(iop: np.ndarray) -> str:
    n = np.cross(iop[:3], iop[3:])
    axis = int(np.argmax(np.abs(n)))
    name = ("sagittal", "coronal", "axial")[axis]
    tilt = float(np.degrees(np.arccos(min(1.0, abs(n[axis]) / np.linalg.norm(n)))))
    return name if tilt < 1 else f"{name} (oblique {tilt:.1f} deg)"


def _series_summary(group, number: int, root: Path) -> dict[str, Any]:
    from pipeline.ingest.geometry import lps_to_ras_affine, orientation_codes
    from pipeline.ingest.readers import ReadError
    from pipeline.ingest.readers.dicom import sort_slices

    slices = [s for f in group.files for s in f.slices]
    first = group.files[0]
    out: dict[str, Any] = {
        "series": number,
        "modality": group.modality,
        "slices": len(slices),
        "files": len(group.files),
        "example_file": _rel(Path(first.path), root),
        "rows_cols": [slices[0].rows, slices[0].cols] if slices else None,
        "transfer_syntax": first.transfer_syntax,
        "bits": f"{first.bits_stored}/{first.bits_allocated} {'signed' if first.pixel_representation else 'unsigned'}",
    }
    try:
        sl, normal, facts = sort_slices(slices)
    except ReadError as exc:
        out["problem"] = str(exc)
        out["hint"] = exc.hint
        return out
    first_ipp, first_iop, ps = sl[0].placement()
    aff = np.eye(4)
    aff[:3, 0] = facts["step"]
    aff[:3, 1] = facts["col_dir"] * ps[0]
    aff[:3, 2] = facts["row_dir"] * ps[1]
    aff[:3, 3] = first_ipp
    out.update({
        "orientation": _orientation_name(first_iop),
        "axis_codes": "".join(orientation_codes(lps_to_ras_affine(aff))),  # (slice, row, col) in sorted order
        "spacing_mm": [round(float(facts["spacing"]), 4), round(float(ps[0]), 4), round(float(ps[1]), 4)],
        "rescale": sorted({(s.slope, s.intercept) for s in sl})[:3],
        "notes": facts["notes"],
    })
    if group.modality == "PT":  # units, SUV type, decay correction, slope range; never weight or dose
        out["pet"] = pet_summary([f.path for f in group.files])
    return out


def _rel(p: Path, root: Path) -> str:
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return p.name


def inspect_dicom(path: Path) -> dict[str, Any]:
    from pipeline.ingest.readers.dicom import index_dicom

    idx = index_dicom(path)
    root = path if path.is_dir() else path.parent
    series_no: dict[str, int] = {}
    series = []
    sop_to_series: dict[str, int] = {}
    for i, (uid, g) in enumerate(idx.series.items(), start=1):
        series_no[uid] = i
        series.append(_series_summary(g, i, root))
        for f in g.files:
            sop_to_series[f.sop_uid] = i

    def which(series_uids, sop_uids) -> int | str:
        for u in series_uids:
            if u in series_no:
                return series_no[u]
        for s in sop_uids:
            if s in sop_to_series:
                return sop_to_series[s]
        return "not in this folder"

    segs = []
    for h in idx.segs:
        segs.append({
            "file": _rel(Path(h.path), root),
            "type": h.segmentation_type,
            "frames": h.n_frames,
            "rows_cols": [h.rows, h.cols],
            "refers_to_series": which(h.referenced_series_uids, h.referenced_sop_uids),
            "segments": [
                {
                    "number": s.number,
                    "label": s.label,
                    "code": s.property_type.key if s.property_type else None,
                    "meaning": s.property_type.meaning if s.property_type else None,
                    "category": s.category.meaning if s.category else None,
                    "laterality": s.laterality,
                }
                for s in h.segments.values()
            ],
        })
    rts = []
    for h in idx.rtstructs:
        rts.append({
            "file": _rel(Path(h.path), root),
            "refers_to_series": which(h.referenced_series_uids, h.referenced_sop_uids),
            "rois": [
                {"number": r.number, "name": r.name, "type": r.interpreted_type, "contours": r.n_contours,
                 "geometry": list(r.geometric_types), "code": r.code.key if r.code else None}
                for r in h.rois.values()
            ],
        })
    out: dict[str, Any] = {"kind": "dicom", "path": str(path), "series": series, "segmentations": segs,
                           "structure_sets": rts}
    if idx.skipped:
        out["non_dicom_files"] = len(idx.skipped)
    if idx.damaged:  # look like DICOM but cannot be read: a build fails the cases that need them
        out["damaged_dicom_files"] = [f"{_rel(Path(p), root)}: {why}" for p, why in idx.damaged]
    if segs:
        out["suggested_adapter"] = "dicom_seg"
    elif rts:
        out["suggested_adapter"] = "dicom_rtstruct"
    return out


def _is_dicom_file(p: Path) -> bool:
    """DICOM by content: the ``DICM`` preamble, else (files without one) a header pydicom can read that
    names a SOP class."""
    try:
        with open(p, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    if head[128:132] == b"DICM":
        return True
    import pydicom

    try:
        ds = pydicom.dcmread(str(p), force=True, stop_before_pixels=True, specific_tags=["SOPClassUID"])
        return bool(ds.get("SOPClassUID"))
    except Exception:  # not DICOM: any parse failure
        return False


_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
_OTHER_KNOWN = (*_NIFTI, *_IMAGES, ".csv", ".tsv", ".json", ".txt", ".md", ".yaml", ".yml", ".xml", ".html",
                ".py", ".zip", ".gz", ".nrrd", ".mha", ".mhd")


def is_dicom(p: Path) -> bool:
    """A DICOM file, whatever its name: a DICOM extension, or (any other name that is not a known
    non-DICOM type, e.g. ``CT.1.3.12.2...16573`` or no extension at all) DICOM content."""
    suf = _suffix(p)
    if suf in _DICOM_SUFFIXES:
        return True
    return suf not in _OTHER_KNOWN and _is_dicom_file(p)


# --- 2-D images ----------------------------------------------------------------------------------------

def inspect_image(path: Path) -> dict[str, Any]:
    from PIL import Image

    with Image.open(path) as im:
        mode, size = im.mode, im.size
        arr = np.asarray(im)
    out: dict[str, Any] = {"kind": "image", "path": str(path), "size_wh": list(size), "mode": mode}
    if arr.ndim == 3:
        chans = arr[..., :3]
        out["channels_equal"] = bool(np.array_equal(chans[..., 0], chans[..., 1])
                                     and np.array_equal(chans[..., 0], chans[..., 2]))
        if arr.shape[2] == 4:
            out["alpha_constant"] = bool(arr[..., 3].min() == arr[..., 3].max())
        grey = chans[..., 0] if out["channels_equal"] else None
    else:
        grey = arr
    if grey is not None:
        vals, cnt = np.unique(grey, return_counts=True)
        out["distinct_values"] = int(vals.size)
        if vals.size <= _MAX_LISTED:
            out["values"] = {str(v): int(c) for v, c in zip(vals.tolist(), cnt.tolist(), strict=True)}
        if grey.dtype == np.uint8:
            extreme = np.count_nonzero((grey <= 15) | (grey >= 240)) / grey.size
            if vals.size <= 2:
                out["looks_like"] = "binary mask"
                out.update(field_of_view_facts(grey > 127 if vals.max() > 1 else grey > 0))
            elif vals.size <= 64 and extreme > 0.995:
                out["looks_like"] = "near-binary mask (compression noise: threshold at 127)"
                out.update(field_of_view_facts(grey > 127))
            elif vals.size <= 64:
                out["looks_like"] = "label-value mask (or palette image)"
            else:
                out["looks_like"] = "image"
        else:
            out["looks_like"] = "image" if vals.size > 64 else "label-value mask"
    else:
        rgb = arr[..., :3].astype(np.uint32)
        colours = np.unique((rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2])
        out["distinct_colours"] = int(len(colours))
        out["looks_like"] = "colour image" if len(colours) > 64 else "colour-coded mask"
    return out


# --- tables and JSON ----------------------------------------------------------------------------------

def _num(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def inspect_csv(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    rows = [r for r in csv.reader(text.splitlines()) if any(c.strip() for c in r)]
    out: dict[str, Any] = {"kind": "csv", "path": str(path), "rows": max(0, len(rows) - 1)}
    if not rows:
        return out
    header = rows[0]
    body = rows[1:]
    widths = Counter(len([c for c in r if c.strip() != ""]) for r in body)
    out["header"] = header
    out["fields_per_row"] = dict(sorted(widths.items()))
    out["columns"] = max(widths, key=lambda w: widths[w]) if widths else len(header)
    names: list[str] = []
    depth = 0
    for h in header:  # re-join names that an unquoted comma inside brackets split ("Bbox [x,y,w,h]")
        if depth > 0:
            names[-1] += "," + h
        else:
            names.append(h)
        depth += h.count("[") + h.count("(") - h.count("]") - h.count(")")
    if len(names) < len(header):
        out["header_quirk"] = (f"the header has {len(names)} names for {len(header)} columns ({names!r}: an unquoted "
                               "comma inside brackets splits a name); read columns by position")
    elif widths and len([h for h in header if h.strip()]) != out["columns"]:
        out["header_quirk"] = (f"the header has {len([h for h in header if h.strip()])} names for {out['columns']} "
                               "fields (names with commas or trailing empty columns): read columns by position")
    boxes = [r for r in body if len(r) >= 6 and all(_num(c) for c in r[2:6]) and not _num(r[0])]
    if body and len(boxes) >= 0.9 * len(body):
        labels = Counter(r[1].strip() for r in boxes)
        images = Counter(r[0].strip() for r in boxes)
        xs = [float(r[2]) + float(r[4]) for r in boxes]
        ys = [float(r[3]) + float(r[5]) for r in boxes]
        out["looks_like"] = "detection boxes (image, label, x, y, w, h)"
        out["boxes"] = len(boxes)
        out["images"] = len(images)
        out["max_boxes_per_image"] = max(images.values())
        out["labels"] = dict(labels.most_common())
        out["max_right_bottom"] = [round(max(xs), 2), round(max(ys), 2)]
        out["non_positive_sizes"] = sum(1 for r in boxes if float(r[4]) <= 0 or float(r[5]) <= 0)
        out["suggested_adapter"] = "cxr14_csv"
    return out


def inspect_json(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8-sig"))
    out: dict[str, Any] = {"kind": "json", "path": str(path), "top_level": type(data).__name__}
    if isinstance(data, dict) and {"images", "annotations"} <= set(data):
        cats = {c.get("id"): c.get("name") for c in data.get("categories") or []}
        per_cat = Counter(cats.get(a.get("category_id"), str(a.get("category_id"))) for a in data["annotations"])
        out.update({
            "looks_like": "COCO",
            "images": len(data["images"]),
            "annotations": len(data["annotations"]),
            "with_bbox": sum(1 for a in data["annotations"] if a.get("bbox")),
            "with_segmentation": sum(1 for a in data["annotations"] if a.get("segmentation")),
            "categories": {str(k): v for k, v in cats.items()},
            "per_category": dict(per_cat.most_common()),
            "suggested_adapter": "coco_json",
        })
        return out
    if isinstance(data, dict):
        out["entries"] = len(data)
        first_key = next(iter(data), None)
        if first_key is not None:
            first = data[first_key]
            out["example_key"] = str(first_key)[:80]
            out["entry_type"] = type(first).__name__
            if isinstance(first, dict):
                out["entry_keys"] = list(first)[:20]
        labels: Counter = Counter()
        for v in data.values():
            if isinstance(v, dict):
                for key in ("bbox", "boxes", "annotations"):
                    for b in v.get(key) or [] if isinstance(v.get(key), list) else []:
                        if isinstance(b, dict) and "label" in b:
                            labels[str(b["label"])] += 1
        if labels:
            out["box_labels"] = dict(labels.most_common())
            out["looks_like"] = "per-image box lists"
    elif isinstance(data, list):
        out["entries"] = len(data)
        if data and isinstance(data[0], dict):
            out["entry_keys"] = list(data[0])[:20]
    return out


# --- dispatch ------------------------------------------------------------------------------------------

def inspect_path(path: str | Path) -> dict[str, Any]:
    """Describe a file or folder (see the module docstring).  Never raises on unreadable files: they
    are reported with an ``error`` entry."""
    path = Path(path).expanduser()
    if not path.exists():
        return {"kind": "missing", "path": str(path), "error": "no such file or folder"}
    if path.is_file():
        return _inspect_file(path)
    return _inspect_folder(path)


def _inspect_file(path: Path) -> dict[str, Any]:
    suf = _suffix(path)
    try:
        if suf in _NIFTI:
            return inspect_nifti(path)
        if suf in _IMAGES:
            return inspect_image(path)
        if suf in (".csv", ".tsv"):
            return inspect_csv(path)
        if suf == ".json":
            return inspect_json(path)
        if is_dicom(path):
            return inspect_dicom(path)
    except Exception as exc:  # inspection must describe broken files, not crash on them
        return {"kind": "unreadable", "path": str(path), "error": f"{type(exc).__name__}: {exc}"}
    return {"kind": "unknown", "path": str(path), "size_bytes": path.stat().st_size}


def _inspect_folder(path: Path) -> dict[str, Any]:
    files = sorted(p for p in path.rglob("*")
                   if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
    dicom_like = {p for p in files if is_dicom(p)}
    by_ext = Counter("DICOM (by content)" if p in dicom_like and _suffix(p) not in _DICOM_SUFFIXES
                     else _suffix(p) or "(none)" for p in files)
    out: dict[str, Any] = {"kind": "folder", "path": str(path), "files": len(files),
                           "by_extension": dict(by_ext.most_common())}
    if dicom_like:
        try:
            out["dicom"] = inspect_dicom(path)
        except Exception as exc:
            out["dicom"] = {"kind": "unreadable", "error": f"{type(exc).__name__}: {exc}"}
    details: dict[str, list] = {"nifti": [], "images": [], "tables": []}
    for p in files:
        suf = _suffix(p)
        key = ("nifti" if suf in _NIFTI else "images" if suf in _IMAGES
               else "tables" if suf in (".csv", ".tsv", ".json") else None)
        if key and len(details[key]) < _MAX_FILES_DETAILED:
            d = _inspect_file(p)
            d["path"] = _rel(p, path)
            details[key].append(d)
    for key, items in details.items():
        if items:
            out[key] = items
    roi = roi_like_folders(out.get("images", []))
    if roi:
        out["roi_like_folders"] = roi
    n_images = sum(by_ext.get(e, 0) for e in _IMAGES)
    if n_images > _MAX_FILES_DETAILED:
        out["images_note"] = f"{n_images} images; the first {_MAX_FILES_DETAILED} are described"
    out["suggested_adapter"] = _suggest(out)
    return out


def _suggest(out: dict[str, Any]) -> str | None:
    if out.get("dicom", {}).get("suggested_adapter"):
        return out["dicom"]["suggested_adapter"]
    for t in out.get("tables", []):
        if t.get("suggested_adapter"):
            return t["suggested_adapter"]
    nifti = out.get("nifti", [])
    if any(n.get("looks_like") == "label map" for n in nifti) and any(n.get("looks_like") == "image" for n in nifti):
        return "nifti_labelmap"
    imgs = out.get("images", [])
    if any("mask" in str(i.get("looks_like")) for i in imgs) and any("image" in str(i.get("looks_like")) for i in imgs):
        return "mask_folder_2d"
    return None


def format_inspection(d: dict[str, Any], indent: int = 0) -> str:
    """Human-readable rendering of :func:`inspect_path`'s result (see :mod:`pipeline.ingest.inspect_text`)."""
    from pipeline.ingest.inspect_text import format_inspection as fmt

    return fmt(d, indent)
