"""RT Structure Sets (RTSTRUCT) rasterised on the geometry of their image series.

* Each CLOSED_PLANAR contour is matched to a slice by the position of its points along the slice normal
  (within a quarter of the slice spacing: exporters write contour z a few hundredths of a mm off the
  slice z) and, failing that, by the SOP Instance UID in its ContourImageSequence.  UIDs that name no
  image of the series are not fatal when the SeriesInstanceUID matches (a note says so); the largest
  off-plane distance is noted.
* Points (patient mm, LPS) map to continuous (row, col) through the matched slice's
  ImagePositionPatient, ImageOrientationPatient and PixelSpacing.
* Polygons are filled with the even-odd rule at pixel centres: a pixel is inside when its centre is
  inside the polygon.  All contours of one ROI on one slice are filled together, so a contour drawn
  inside another one cuts a hole (XOR), as the standard intends for CLOSED_PLANAR.
* POINT, OPEN_PLANAR and OPEN_NONPLANAR contours are not areas and are skipped with a note.
* An RTSTRUCT that references another series (by SeriesInstanceUID and SOP Instance UIDs) raises
  ReadError.

Only ROI numbers, names, interpreted types, codes and contour geometry are read; no patient data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from pipeline.core.paths import shown
from pipeline.ingest.readers import ReadError
from pipeline.ingest.readers.dicom import RTSTRUCT_SOP_CLASS, DicomSeries, short_uid
from pipeline.ingest.readers.dicom_seg import Code, _code, _pack


@dataclass
class RoiInfo:
    number: int
    name: str
    interpreted_type: str = ""  # ORGAN, EXTERNAL, PTV, CTV, GTV, AVOIDANCE, ...
    code: Code | None = None  # RTROIIdentificationCodeSequence
    n_contours: int = 0
    geometric_types: tuple[str, ...] = ()


@dataclass
class RtStructHeader:
    path: str
    frame_of_reference_uid: str
    referenced_series_uids: list[str]
    referenced_sop_uids: list[str]
    rois: dict[int, RoiInfo]


@dataclass
class RtStructVolume:
    """ROIs on the series grid (series sorted order ``(K, R, C)``), packed like SEG segments: each layer
    holds ROI numbers without overlap (an ROI that overlaps another, e.g. an organ inside BODY, goes to
    another layer)."""

    header: RtStructHeader
    layers: list[np.ndarray]
    layer_rois: list[list[int]]
    overlaps: list[tuple[int, int]]
    notes: list[str] = field(default_factory=list)

    def mask(self, number: int) -> np.ndarray:
        for arr, rois in zip(self.layers, self.layer_rois, strict=True):  # one ROI list per layer
            if number in rois:
                return arr == number
        return np.zeros(self.layers[0].shape if self.layers else (0, 0, 0), dtype=bool)

    def number_of(self, name: str) -> int | None:
        for n, roi in self.header.rois.items():
            if roi.name == name:
                return n
        return None


def _open(path: str | Path):
    path = str(path)
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise ReadError(f"cannot read RTSTRUCT {Path(path).name}: {type(exc).__name__}: {exc}", file=path,
                        hint="the file is truncated or not DICOM; re-download it") from exc
    if str(ds.get("SOPClassUID", "")) != RTSTRUCT_SOP_CLASS and ds.get("Modality") != "RTSTRUCT":
        raise ReadError(f"{Path(path).name} is not an RT Structure Set (modality {ds.get('Modality', '?')})",
                        file=path, hint="check the card's layout (rtstruct glob)")
    return ds


def read_rtstruct_header(path: str | Path, ds=None) -> RtStructHeader:
    if ds is None:
        ds = _open(path)
    series_uids, sops, frame_ref = _references(ds)
    return RtStructHeader(
        path=str(path),
        frame_of_reference_uid=frame_ref or str(ds.get("FrameOfReferenceUID", "")),
        referenced_series_uids=list(dict.fromkeys(series_uids)),
        referenced_sop_uids=list(dict.fromkeys(sops)),
        rois=_rois(ds),
    )


def _rois(ds) -> dict[int, RoiInfo]:
    """ROI number -> name, interpreted type, code and contour facts."""
    rois: dict[int, RoiInfo] = {}
    for it in ds.get("StructureSetROISequence") or []:
        n = int(it.get("ROINumber", 0) or 0)
        rois[n] = RoiInfo(number=n, name=str(it.get("ROIName", "") or "").strip())
    for it in ds.get("RTROIObservationsSequence") or []:
        n = int(it.get("ReferencedROINumber", -1) or -1)
        if n in rois:
            rois[n].interpreted_type = str(it.get("RTROIInterpretedType", "") or "")
            seq = it.get("RTROIIdentificationCodeSequence") or []
            rois[n].code = _code(seq[0]) if seq else None
    for it in ds.get("ROIContourSequence") or []:
        n = int(it.get("ReferencedROINumber", -1) or -1)
        if n in rois:
            cs = it.get("ContourSequence") or []
            rois[n].n_contours = len(cs)
            rois[n].geometric_types = tuple(sorted({str(c.get("ContourGeometricType", "")) for c in cs}))
    return rois


def _references(ds) -> tuple[list[str], list[str], str]:
    """(referenced series UIDs, referenced SOP instance UIDs, first FrameOfReferenceUID), in file order."""
    series_uids: list[str] = []
    sops: list[str] = []
    frame_ref = ""
    for fr in ds.get("ReferencedFrameOfReferenceSequence") or []:
        frame_ref = frame_ref or str(fr.get("FrameOfReferenceUID", ""))
        for st in fr.get("RTReferencedStudySequence") or []:
            for se in st.get("RTReferencedSeriesSequence") or []:
                if se.get("SeriesInstanceUID"):
                    series_uids.append(str(se.SeriesInstanceUID))
                for im in se.get("ContourImageSequence") or []:
                    if im.get("ReferencedSOPInstanceUID"):
                        sops.append(str(im.ReferencedSOPInstanceUID))
    for it in ds.get("ROIContourSequence") or []:
        for c in it.get("ContourSequence") or []:
            for im in c.get("ContourImageSequence") or []:
                if im.get("ReferencedSOPInstanceUID"):
                    sops.append(str(im.ReferencedSOPInstanceUID))
    return series_uids, sops, frame_ref


MAX_COORD_MM = 1e5  # 100 m: no patient coordinate is further from the origin
_HINT_CONTOUR = ("the structure set's ContourData are damaged or belong to another frame of reference; "
                 "re-export the RTSTRUCT")


def _check_points(pts: np.ndarray, path: str, roi: str) -> None:
    """Refuse contour points that cannot be real: non-finite or beyond 100 m."""
    worst = float(np.abs(pts).max())
    if not np.isfinite(worst) or worst > MAX_COORD_MM:
        raise ReadError(f"{shown(path)}: a contour of ROI {roi!r} has a point at {worst:.3g} mm", file=path,
                        hint=_HINT_CONTOUR)


def _check_in_plane(rc: np.ndarray, shape: tuple[int, int], path: str, roi: str) -> None:
    """Refuse a contour reaching more than a whole image size outside its slice: a damaged file would
    otherwise fill the whole image and give a full-image box."""
    R, C = shape
    lo, hi = rc.min(axis=0), rc.max(axis=0)
    if lo[0] < -R or lo[1] < -C or hi[0] > 2 * R or hi[1] > 2 * C:
        raise ReadError(f"{shown(path)}: a contour of ROI {roi!r} reaches more than an image size outside the "
                        f"{C}x{R} slice", file=path, hint=_HINT_CONTOUR)


def fill_even_odd(polygons: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Rasterise polygons given as (N, 2) continuous (row, col) vertices with the even-odd rule.

    A pixel is foreground when its centre ``(r, c)`` lies inside an odd number of polygons (several
    polygons XOR: a polygon inside another makes a hole).  Scanline algorithm, vectorised over edges
    and rows; a centre exactly on a left edge is inside, on a right edge outside (half-open).
    """
    R, C = shape
    diff = np.zeros((R, C + 1), dtype=np.int32)
    r0s, c0s, r1s, c1s = [], [], [], []
    for p in polygons:
        p = np.asarray(p, dtype=float)
        if len(p) < 3:
            continue
        q = np.roll(p, -1, axis=0)
        r0s.append(p[:, 0])
        c0s.append(p[:, 1])
        r1s.append(q[:, 0])
        c1s.append(q[:, 1])
    if not r0s:
        return np.zeros(shape, dtype=bool)
    r0, c0, r1, c1 = (np.concatenate(a) for a in (r0s, c0s, r1s, c1s))
    keep = r0 != r1  # horizontal edges never cross a scanline under the half-open rule
    r0, c0, r1, c1 = r0[keep], c0[keep], r1[keep], c1[keep]
    lo, hi = np.minimum(r0, r1), np.maximum(r0, r1)
    # integer rows y with lo <= y < hi
    ystart = np.maximum(np.ceil(lo), 0).astype(np.int64)
    yend = np.minimum(np.ceil(hi) - 1, R - 1).astype(np.int64)
    n = np.maximum(yend - ystart + 1, 0)
    if n.sum() == 0:
        return np.zeros(shape, dtype=bool)
    edge = np.repeat(np.arange(len(r0)), n)
    offs = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
    y = ystart[edge] + offs
    x = c0[edge] + (y - r0[edge]) * (c1[edge] - c0[edge]) / (r1[edge] - r0[edge])
    order = np.lexsort((x, y))
    y, x = y[order], x[order]
    # crossings come in pairs per row (each closed polygon crosses a row an even number of times)
    ya, xa, xb = y[0::2], x[0::2], x[1::2]
    start = np.clip(np.ceil(xa), 0, C).astype(np.int64)
    stop = np.clip(np.ceil(xb), 0, C).astype(np.int64)  # exclusive
    ok = stop > start
    np.add.at(diff, (ya[ok], start[ok]), 1)
    np.add.at(diff, (ya[ok], stop[ok]), -1)
    return np.cumsum(diff[:, :C], axis=1) > 0


def _plane_tolerance(series: DicomSeries) -> float:
    """How far (mm, along the normal) a contour may lie from a slice plane and still be on that slice."""
    return max(0.01, 0.25 * series.slice_spacing)


def _place(series: DicomSeries, pts: np.ndarray, contour, sop_index: dict[str, int]) -> tuple[int | None, int | None]:
    """(slice by position, slice by ContourImageSequence UID) of one contour; either may be None.

    Position comes first: exporters write contour z a few hundredths of a mm off the slice z (rounding),
    and some reference SOP Instance UIDs that no image carries (re-exported series).
    """
    k_pos = series.index_at(pts.mean(axis=0), tol=_plane_tolerance(series))
    for im in contour.get("ContourImageSequence") or []:
        k_uid = sop_index.get(str(im.get("ReferencedSOPInstanceUID", "")))
        if k_uid is not None:
            return k_pos, k_uid
    return k_pos, None


def _check_references(hdr: RtStructHeader, series: DicomSeries, name: str) -> list[str]:
    """Raise ReadError when the structure set belongs to another series; notes on loose references."""
    path = hdr.path
    notes: list[str] = []
    series_sops = set(series.sop_uids)
    matched = set(hdr.referenced_sop_uids) & series_sops
    same_series = series.series_uid in hdr.referenced_series_uids
    other_frame = bool(hdr.frame_of_reference_uid and series.frame_of_reference_uid
                       and hdr.frame_of_reference_uid != series.frame_of_reference_uid)
    if (hdr.referenced_series_uids or hdr.referenced_sop_uids) and not same_series and not matched:
        uids = ", ".join(short_uid(u) for u in hdr.referenced_series_uids) or "?"
        raise ReadError(
            f"{name} references another series (UID {uids}, {len(hdr.referenced_sop_uids)} image(s)); none of the "
            f"{len(series.sop_uids)} images of the series read "
            f"(e.g. {Path(series.files[0]).name if series.files else '?'}) is referenced",
            file=path,
            hint="the structure set was drawn on another series: point the card at that series, or add its files",
        )
    if not (hdr.referenced_series_uids or hdr.referenced_sop_uids):
        if other_frame:
            raise ReadError(f"{name} references no image and its FrameOfReferenceUID differs from the series'",
                            file=path, hint="the structure set belongs to another scan")
        notes.append(f"{name} references no image; contours matched to slices by position only")
    elif other_frame:
        notes.append(f"{name}: FrameOfReferenceUID differs from the series' although its images are referenced")
    unnamed = len(set(hdr.referenced_sop_uids) - series_sops)
    if unnamed and same_series:
        notes.append(f"{name}: {unnamed} of {len(hdr.referenced_sop_uids)} SOP Instance UID(s) in its "
                     "ContourImageSequence name no image of the series (its SeriesInstanceUID matches); "
                     "contours placed by position")
    return notes


@dataclass
class _Placed:
    """Contours of the wanted ROIs placed on slices, with counts of what was not placed."""

    path: str = ""  # the RTSTRUCT (error messages)
    roi_names: dict[int, str] = field(default_factory=dict)
    polys: dict[int, dict[int, list[np.ndarray]]] = field(default_factory=dict)
    skipped_types: dict[str, int] = field(default_factory=dict)
    off_slice: int = 0
    disagree: int = 0
    off_plane: float = 0.0  # largest distance of a placed contour point from its slice plane (mm)

    def add(self, series: DicomSeries, n: int, contour, sop_index: dict[str, int]) -> None:
        gtype = str(contour.get("ContourGeometricType", "") or "").upper()
        if gtype not in ("CLOSED_PLANAR", "CLOSEDPLANAR_XOR"):
            self.skipped_types[gtype] = self.skipped_types.get(gtype, 0) + 1
            return
        data = contour.get("ContourData")
        if not data or len(data) < 9 or len(data) % 3:
            key = f"{gtype} with fewer than 3 points"  # counted and noted like other non-area contours
            self.skipped_types[key] = self.skipped_types.get(key, 0) + 1
            return
        pts = np.asarray([float(v) for v in data], dtype=float).reshape(-1, 3)
        _check_points(pts, self.path, self.roi_names.get(n, str(n)))
        k, k_uid = _place(series, pts, contour, sop_index)
        if k is not None and k_uid is not None and k != k_uid:
            self.disagree += 1
        k = k if k is not None else k_uid
        if k is None:
            self.off_slice += 1
            return
        self.off_plane = max(self.off_plane, float(np.max(np.abs(pts @ series.normal - series.slice_offsets[k]))))
        rc = series.to_rc(pts, k)
        _check_in_plane(rc, (series.shape[1], series.shape[2]), self.path, self.roi_names.get(n, str(n)))
        self.polys.setdefault(n, {}).setdefault(k, []).append(rc)

    def notes(self, name: str, series: DicomSeries) -> list[str]:
        out = [f"{name}: {cnt} {gtype or 'untyped'} contour(s) skipped (not closed areas)"
               for gtype, cnt in sorted(self.skipped_types.items())]
        if self.off_slice:
            out.append(f"{name}: {self.off_slice} contour(s) lie on no slice of the series and were skipped")
        if self.disagree:
            out.append(f"{name}: {self.disagree} contour(s) reference an image at another position; placed by position")
        if self.off_plane > 1e-3:
            out.append(f"{name}: contour points lie up to {self.off_plane:.3f} mm off their slice planes "
                       f"(matched within {_plane_tolerance(series):.3f} mm, a quarter of the slice spacing)")
        return out


def read_rtstruct(path: str | Path, series: DicomSeries, *, rois: list[int] | None = None) -> RtStructVolume:
    """Rasterise the ROIs (all, or the numbers in ``rois``) of the RTSTRUCT at ``path`` on ``series``."""
    path = str(path)
    name = Path(path).name
    ds = _open(path)
    hdr = read_rtstruct_header(path, ds)
    notes = _check_references(hdr, series, name)
    sop_index = series.sop_to_index
    K, R, C = series.shape
    placed = _Placed(path=path, roi_names={n: r.name for n, r in hdr.rois.items()})
    for it in ds.get("ROIContourSequence") or []:
        n = int(it.get("ReferencedROINumber", -1) or -1)
        if n not in hdr.rois or (rois is not None and n not in rois):
            continue
        for c in it.get("ContourSequence") or []:
            placed.add(series, n, c, sop_index)
    masks: dict[int, dict[int, np.ndarray]] = {}
    for n, by_slice in placed.polys.items():
        masks[n] = {k: fill_even_odd(ps, (R, C)) for k, ps in sorted(by_slice.items())}
    notes.extend(placed.notes(name, series))
    for n, roi in hdr.rois.items():
        if (rois is None or n in rois) and n not in masks and roi.n_contours:
            notes.append(f"{name}: ROI {roi.name!r} has no closed contour on the series")
    layers, layer_rois, overlaps = _pack(masks, (K, R, C))
    return RtStructVolume(hdr, layers, layer_rois, overlaps, notes)
