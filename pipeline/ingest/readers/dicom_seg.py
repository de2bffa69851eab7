"""DICOM Segmentation (SEG) objects placed on the grid of their image series.

Traps handled (see docs/formats.md):

* Frame order means nothing.  Every frame is mapped to a slice of the series by the SOP Instance UID it
  references (PerFrameFunctionalGroups > DerivationImageSequence > SourceImageSequence) or by its
  ImagePositionPatient (PlanePositionSequence) along the slice normal.  dcmqi's sample stores its
  frames in reverse slice order.
* BINARY (1-bit packed), FRACTIONAL (foreground where value >= 0.5 x MaximumFractionalValue) and
  LABELMAP (pixel value = segment number) segmentations; several segments; sparse frames (slices
  without a frame are empty); overlapping segments.
* A SEG that does not share the image grid (other matrix, spacing, orientation or in-plane origin) is
  rebuilt on its own grid and resampled onto the image grid in physical space (pipeline.ingest.align).
* A SEG whose frames reference images, none of which belongs to the series, is rejected
  (ReadError): it was made on another series.

Only segment descriptions (numbers, labels, coded concepts) and geometry are read; no patient data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from pipeline.ingest.align import align_labels_to_image
from pipeline.core.paths import shown
from pipeline.ingest.packing import LayerPacker, MaskRuns
from pipeline.ingest.readers import ReadError
from pipeline.ingest.readers.dicom import SEG_SOP_CLASS, DicomSeries, short_uid
from pipeline.ingest.readers.dicom_checks import check_decoded, pixel_problem, raise_if_damaged
from pipeline.ingest.readers.dicom_header import _vec

LABELMAP_SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.7"


@dataclass(frozen=True)
class Code:
    scheme: str  # CodingSchemeDesignator (SCT, SRT, FMA, DCM, ...)
    value: str  # CodeValue
    meaning: str  # CodeMeaning

    @property
    def key(self) -> str:
        return f"{self.scheme}:{self.value}"


def _code(item) -> Code | None:
    if item is None:
        return None
    value = item.get("CodeValue") or item.get("LongCodeValue") or item.get("URNCodeValue")
    if not value:
        return None
    return Code(str(item.get("CodingSchemeDesignator", "")), str(value), str(item.get("CodeMeaning", "")))


def _codes(parent, keyword: str) -> list[Code]:
    seq = parent.get(keyword) if parent is not None else None
    return [c for c in (_code(it) for it in (seq or [])) if c is not None]


@dataclass
class SegmentInfo:
    number: int
    label: str  # SegmentLabel (free text)
    description: str = ""
    category: Code | None = None
    property_type: Code | None = None
    type_modifiers: list[Code] = field(default_factory=list)
    anatomic_region: Code | None = None
    region_modifiers: list[Code] = field(default_factory=list)
    algorithm_type: str = ""

    def code_keys(self) -> list[str]:
        """Lookup keys for the card's code table, most specific first (``SCT:10200004``...)."""
        out = []
        if self.property_type is not None:
            out.append(self.property_type.key)
            # SNOMED-RT (SRT) and SNOMED CT (SCT) designators are both used for the same concepts
            if self.property_type.scheme in ("SRT", "SNM3"):
                out.append("SRT:" + self.property_type.value)
        return out

    @property
    def laterality(self) -> str | None:
        """``left``/``right`` from a type or region modifier (SCT 7771000 left, 24028007 right)."""
        for m in self.type_modifiers + self.region_modifiers:
            text = (m.meaning or "").lower()
            if m.value in ("7771000", "G-A101") or text == "left":
                return "left"
            if m.value in ("24028007", "G-A100") or text == "right":
                return "right"
        return None


@dataclass
class SegHeader:
    path: str
    sop_uid: str
    frame_of_reference_uid: str
    segmentation_type: str  # BINARY, FRACTIONAL, LABELMAP
    max_fractional: int
    rows: int
    cols: int
    n_frames: int
    segments: dict[int, SegmentInfo]
    referenced_series_uids: list[str]
    referenced_sop_uids: list[str]  # every SOP instance the SEG refers to (frames + common references)


def _open(path: str | Path, *, pixels: bool):
    path = str(path)
    try:  # large values (PixelData) deferred: their offset and length are known, nothing is read
        ds = pydicom.dcmread(path, defer_size=None if pixels else 4096)
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise ReadError(f"cannot read DICOM-SEG {shown(path)}: {type(exc).__name__}", file=path,
                        hint="the file is truncated or not DICOM; re-download it") from exc
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class not in (SEG_SOP_CLASS, LABELMAP_SEG_SOP_CLASS) and ds.get("Modality") != "SEG":
        raise ReadError(f"{Path(path).name} is not a DICOM Segmentation (SOP class {sop_class}, modality "
                        f"{ds.get('Modality', '?')})", file=path, hint="check the card's layout (seg glob)")
    return ds


def read_seg_header(path: str | Path, ds=None) -> SegHeader:
    """Segments, coded concepts and references of a SEG (pixels not read)."""
    if ds is None:
        ds = _open(path, pixels=False)
    segments: dict[int, SegmentInfo] = {}
    for it in ds.get("SegmentSequence") or []:
        n = int(it.get("SegmentNumber", 0) or 0)
        segments[n] = SegmentInfo(
            number=n,
            label=str(it.get("SegmentLabel", "") or ""),
            description=str(it.get("SegmentDescription", "") or ""),
            category=next(iter(_codes(it, "SegmentedPropertyCategoryCodeSequence")), None),
            property_type=next(iter(_codes(it, "SegmentedPropertyTypeCodeSequence")), None),
            type_modifiers=[c for t in (it.get("SegmentedPropertyTypeCodeSequence") or [])
                            for c in _codes(t, "SegmentedPropertyTypeModifierCodeSequence")],
            anatomic_region=next(iter(_codes(it, "AnatomicRegionSequence")), None),
            region_modifiers=[c for t in (it.get("AnatomicRegionSequence") or [])
                              for c in _codes(t, "AnatomicRegionModifierSequence")],
            algorithm_type=str(it.get("SegmentAlgorithmType", "") or ""),
        )
    series_uids, sops = [], []
    for s in ds.get("ReferencedSeriesSequence") or []:
        if s.get("SeriesInstanceUID"):
            series_uids.append(str(s.SeriesInstanceUID))
        for inst in s.get("ReferencedInstanceSequence") or []:
            if inst.get("ReferencedSOPInstanceUID"):
                sops.append(str(inst.ReferencedSOPInstanceUID))
    for fr in ds.get("PerFrameFunctionalGroupsSequence") or []:
        sops.extend(uid for uid, _ in _frame_sources(fr))
    return SegHeader(
        path=str(path),
        sop_uid=str(ds.get("SOPInstanceUID", "")),
        frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "")),
        segmentation_type=str(ds.get("SegmentationType", "BINARY") or "BINARY").upper(),
        max_fractional=int(ds.get("MaximumFractionalValue", 255) or 255),
        rows=int(ds.get("Rows", 0) or 0),
        cols=int(ds.get("Columns", 0) or 0),
        n_frames=int(ds.get("NumberOfFrames", 1) or 1),
        segments=segments,
        referenced_series_uids=series_uids,
        referenced_sop_uids=list(dict.fromkeys(sops)),
    )


def _frame_sources(fg) -> list[tuple[str, int | None]]:
    """(ReferencedSOPInstanceUID, ReferencedFrameNumber or None) of one functional-group item."""
    out: list[tuple[str, int | None]] = []
    for der in fg.get("DerivationImageSequence") or []:
        for src in der.get("SourceImageSequence") or []:
            uid = src.get("ReferencedSOPInstanceUID")
            if uid:
                frames = src.get("ReferencedFrameNumber")
                if frames is None or frames == "":
                    out.append((str(uid), None))
                else:
                    for f in (frames if isinstance(frames, (list, pydicom.multival.MultiValue)) else [frames]):
                        out.append((str(uid), int(f)))
    return out


@dataclass
class _Frame:
    index: int
    segment: int | None  # None for LABELMAP frames (values are segment numbers)
    sources: list[tuple[str, int | None]]
    ipp: np.ndarray | None


@dataclass
class SegVolume:
    """Segments of a SEG on the series grid (series sorted order, ``(K, R, C)``).

    ``layers`` packs segments into as few integer arrays as possible without overlap: each voxel of a
    layer holds one segment number (0 = none).  With no overlap there is exactly one layer; a segment
    that overlaps another goes to another layer.
    """

    header: SegHeader
    layers: list[np.ndarray]  # (K, R, C) uint16 arrays of segment numbers
    layer_segments: list[list[int]]  # segment numbers present in each layer
    overlaps: list[tuple[int, int]]  # pairs of segment numbers that share voxels
    mapping: str  # "grid" (UID / position) or "physical" (resampled)
    notes: list[str] = field(default_factory=list)

    def mask(self, number: int) -> np.ndarray:
        for arr, segs in zip(self.layers, self.layer_segments, strict=True):
            if number in segs:
                return arr == number
        return np.zeros(self.layers[0].shape if self.layers else (0, 0, 0), dtype=bool)


def _frames(ds, hdr: SegHeader) -> list[_Frame]:
    shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0]
    per = ds.get("PerFrameFunctionalGroupsSequence") or []
    out = []
    for i in range(hdr.n_frames):
        fg = per[i] if i < len(per) else None
        seg = None
        for grp in (fg, shared):
            sid = (grp.get("SegmentIdentificationSequence") or [None])[0] if grp is not None else None
            if sid is not None and sid.get("ReferencedSegmentNumber") is not None:
                seg = int(sid.ReferencedSegmentNumber)
                break
        if seg is None and hdr.segmentation_type != "LABELMAP":
            if len(hdr.segments) == 1:
                seg = next(iter(hdr.segments))
            else:
                raise ReadError(f"{Path(hdr.path).name}: frame {i + 1} names no segment "
                                "(SegmentIdentificationSequence)",
                                file=hdr.path, hint="the SEG is malformed; re-export it")
        sources = _frame_sources(fg) if fg is not None else []
        if not sources and shared is not None:
            sources = _frame_sources(shared)
        ipp = None
        for grp in (fg, shared):
            pp = (grp.get("PlanePositionSequence") or [None])[0] if grp is not None else None
            if pp is not None:
                ipp = _vec(pp.get("ImagePositionPatient"), 3)
                break
        out.append(_Frame(i, seg, sources, ipp))
    return out


def _shared_geometry(ds) -> tuple[np.ndarray | None, np.ndarray | None, float | None]:
    shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0]
    per = ds.get("PerFrameFunctionalGroupsSequence") or []
    first = per[0] if per else None
    iop = ps = thick = None
    for grp in (shared, first):
        if grp is None:
            continue
        o = (grp.get("PlaneOrientationSequence") or [None])[0]
        if iop is None and o is not None:
            iop = _vec(o.get("ImageOrientationPatient"), 6)
        m = (grp.get("PixelMeasuresSequence") or [None])[0]
        if m is not None:
            if ps is None:
                ps = _vec(m.get("PixelSpacing"), 2)
            if thick is None:
                for kw in ("SpacingBetweenSlices", "SliceThickness"):
                    v = m.get(kw)
                    if v not in (None, ""):
                        thick = float(v)
                        break
    return iop, ps, thick


def _check_pixels(ds, hdr: SegHeader) -> None:
    """Before any frame is built or decoded: the frame count and pixel data the header claims must be in
    the file (a truncated SEG would decode its lost frames as empty) and under the decode limit."""
    per = ds.get("PerFrameFunctionalGroupsSequence") if "PerFrameFunctionalGroupsSequence" in ds else None
    bits = int(ds.get("BitsAllocated", 1 if hdr.segmentation_type == "BINARY" else 8) or 1)
    raise_if_damaged(hdr.path, pixel_problem(ds, hdr.path, rows=hdr.rows, cols=hdr.cols, frames=hdr.n_frames,
                                             bits=bits, per_frame=len(per) if per is not None else None))
    check_decoded(hdr.n_frames * hdr.rows * hdr.cols, hdr.path, f"SEG frames ({hdr.n_frames})")


def _binarise(frame: np.ndarray, hdr: SegHeader) -> np.ndarray:
    if hdr.segmentation_type == "FRACTIONAL":
        return frame >= 0.5 * hdr.max_fractional
    return frame > 0


def read_seg(path: str | Path, series: DicomSeries) -> SegVolume:
    """Place every segment of the SEG at ``path`` on the grid of ``series``."""
    path = str(path)
    ds = _open(path, pixels=False)
    hdr = read_seg_header(path, ds)
    name = Path(path).name
    notes: list[str] = []
    if not hdr.segments:
        raise ReadError(f"{name}: the SEG describes no segment (empty SegmentSequence)", file=path,
                        hint="the SEG is malformed or empty; re-export it")
    _check_pixels(ds, hdr)
    frames = _frames(ds, hdr)
    _check_same_series(path, hdr, series)
    iop, ps, thick = _shared_geometry(ds)
    placed = _grid_targets(frames, hdr, series, iop, ps)
    if placed is None:
        return _read_physical(path, ds, hdr, frames, iop, ps, thick, series, notes)
    targets, n_disagree = placed
    if n_disagree:
        notes.append(f"{name}: {n_disagree} frame(s) reference a source image at another position than their "
                     "PlanePosition; placed by position")
    dropped = sum(t is None for t in targets)
    if dropped == len(targets):
        raise ReadError(f"{name}: none of its {len(targets)} frames lies on a slice of the series "
                        f"({len(series.sop_uids)} slices)",
                        file=path, hint="the SEG belongs to another series or its geometry is wrong")
    if dropped:
        notes.append(f"{name}: {dropped} of {len(targets)} frame(s) match no slice of the series and were dropped")
    masks = _accumulate(path, hdr, frames, targets, series.shape)
    layers, layer_segs, overlaps = _pack(masks, series.shape)
    return SegVolume(hdr, layers, layer_segs, overlaps, "grid", notes)


def _check_same_series(path: str, hdr: SegHeader, series: DicomSeries) -> None:
    """Raise when the SEG was made on another series (by referenced images, else by frame of reference)."""
    name = Path(path).name
    referenced = set(hdr.referenced_sop_uids)
    if referenced and not referenced & set(series.sop_uids):
        raise ReadError(
            f"{name}: its frames reference {len(referenced)} image(s) of another series (UID "
            f"{', '.join(short_uid(u) for u in hdr.referenced_series_uids) or '?'}), none of which is in the image "
            f"series read ({len(series.sop_uids)} slices, e.g. {Path(series.files[0]).name if series.files else '?'})",
            file=path,
            hint="the SEG was made on another series: point the card at the series it references, or add "
            "that series' files",
        )
    if not referenced and hdr.frame_of_reference_uid and series.frame_of_reference_uid and \
            hdr.frame_of_reference_uid != series.frame_of_reference_uid:
        raise ReadError(
            f"{name}: references no source image and its FrameOfReferenceUID differs from the series'",
            file=path, hint="the SEG belongs to another scan")


def _grid_targets(
    frames: list[_Frame], hdr: SegHeader, series: DicomSeries, iop, ps
) -> tuple[list[int | None], int] | None:
    """Slice index of every frame when the SEG shares the series' grid (by position, else by referenced
    image), and how many frames disagree between the two; None when the grid differs."""
    K, R, C = series.shape
    same_grid = (hdr.rows, hdr.cols) == (R, C)
    if iop is not None:
        same_grid &= bool(np.allclose(iop, np.r_[series.row_dir, series.col_dir], atol=1e-3))
    if ps is not None:
        same_grid &= bool(np.allclose(ps, series.pixel_spacing, rtol=1e-3, atol=1e-4))
    if not same_grid:
        return None
    sop_index = series.sop_to_index
    frame_index = {(u, (f + 1) if f is not None else None): k
                   for k, (u, f) in enumerate(zip(series.sop_uids, series.frames, strict=True))}

    def uid_index(fr: _Frame) -> int | None:
        for uid, num in fr.sources:
            k = frame_index.get((uid, num)) if num is not None else sop_index.get(uid)
            if k is not None:
                return k
        return None

    targets: list[int | None] = []
    n_disagree = 0
    for fr in frames:
        k_uid = uid_index(fr)
        k_pos = None
        if fr.ipp is not None:
            k_pos = series.index_at(fr.ipp)
            check = k_pos if k_pos is not None else k_uid
            # a frame origin that is not the slice origin: another in-plane grid
            if check is not None and np.abs(series.to_rc(fr.ipp[None], check)[0]).max() > 0.05:
                return None
        if k_uid is not None and k_pos is not None and k_uid != k_pos:
            n_disagree += 1
        targets.append(k_pos if k_pos is not None else k_uid)
    return targets, n_disagree


def _accumulate(
    path, hdr: SegHeader, frames: list[_Frame], targets: list[int | None], shape
) -> dict[int, dict[int, np.ndarray]]:
    """segment -> {slice index -> 2-D bool mask} (sparse: only slices that have a frame)."""
    from pydicom.pixels import iter_pixels

    masks: dict[int, dict[int, np.ndarray]] = {n: {} for n in hdr.segments}
    placed = [(i, t) for i, t in enumerate(targets) if t is not None]
    done = 0
    try:
        it = iter_pixels(path, indices=[i for i, _ in placed])
        for (i, k), px in zip(placed, it, strict=False):
            done += 1
            fr = frames[i]
            if px.shape != shape[1:]:
                raise ReadError(f"{Path(path).name}: frame {i + 1} is {px.shape}, expected {shape[1:]}", file=path,
                                hint="the SEG is malformed")
            if hdr.segmentation_type == "LABELMAP":
                for n in np.unique(px).tolist():
                    if n == 0:
                        continue
                    d = masks.setdefault(int(n), {})
                    d[k] = d[k] | (px == n) if k in d else (px == n)
                continue
            m = _binarise(px, hdr)
            d = masks.setdefault(int(fr.segment or 0), {})  # set for every non-LABELMAP frame (_frames)
            d[k] = d[k] | m if k in d else m
    except ReadError:
        raise
    except Exception as exc:
        raise ReadError(f"cannot decode the frames of {Path(path).name}: {type(exc).__name__}: {exc}", file=path,
                        hint="the SEG's pixel data are damaged or use a transfer syntax without an installed "
                        "decoder") from exc
    if done != len(placed):
        raise ReadError(f"{shown(path)}: only {done} of {len(placed)} frames could be decoded", file=path,
                        hint="the SEG's pixel data are truncated; re-download or re-export it")
    return masks


def _pack(
    masks: dict[int, dict[int, np.ndarray]], shape
) -> tuple[list[np.ndarray], list[list[int]], list[tuple[int, int]]]:
    """Greedy packing of segments into non-overlapping uint16 layers (segment number per voxel)."""
    packer = LayerPacker(tuple(shape), order="C")
    for n in sorted(masks):
        packer.add(n, MaskRuns.from_slices(masks[n], tuple(shape)), record_overlaps=True)
    # overlaps with segments in later layers are found when those are placed
    return packer.layers, packer.labels, sorted(packer.overlaps)


def _read_physical(
    path, ds, hdr: SegHeader, frames: list[_Frame], iop, ps, thick, series: DicomSeries, notes
) -> SegVolume:
    """Rebuild the SEG on its own grid, then resample each packed layer onto the series grid."""
    name = Path(path).name
    if iop is None or ps is None or any(fr.ipp is None for fr in frames):
        raise ReadError(f"{name}: the SEG does not share the image grid and lacks plane position/orientation/"
                        "pixel spacing to place it in physical space", file=path,
                        hint="re-export the SEG with PlanePositionSequence, PlaneOrientationSequence and "
                        "PixelMeasuresSequence")
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    offs = np.array([fr.ipp @ normal for fr in frames])
    d0 = float(offs.min())
    planes = np.unique(np.round(offs - d0, 3))
    step = float(np.min(np.diff(planes))) if planes.size > 1 else float(thick or series.slice_spacing or 1.0)
    kk = np.rint((offs - d0) / step).astype(int)
    if np.abs((offs - d0) - kk * step).max() > 0.1 * step:
        notes.append(f"{name}: frame planes are not evenly spaced; placed at the nearest step of {step:.3f} mm")
    nk = int(kk.max()) + 1
    origin_frame = frames[int(np.argmin(offs))]
    aff = np.eye(4)
    aff[:3, 0] = normal * step
    aff[:3, 1] = col_dir * ps[0]
    aff[:3, 2] = row_dir * ps[1]
    aff[:3, 3] = origin_frame.ipp
    shape = (nk, hdr.rows, hdr.cols)
    masks = _accumulate(path, hdr, frames, [int(k) for k in kk], shape)
    layers, layer_segs, overlaps = _pack(masks, shape)
    out_layers = []
    # pad one empty voxel on every side: a target voxel centre that falls a hair (float noise) or up to
    # half a voxel outside the SEG's first/last sample still belongs to that edge voxel
    shift = np.eye(4)
    shift[:3, 3] = -1.0
    aff_p = aff @ shift
    for arr in layers:
        res, note = align_labels_to_image(np.pad(arr, 1), aff_p, series.shape, series.affine_lps, label_file=path,
                                          image_file=series.files[0] if series.files else "")
        out_layers.append(res.astype(np.uint16))
    notes.append(f"{name}: the SEG grid ({hdr.rows}x{hdr.cols}, {nk} planes, spacing {ps.tolist()} mm) differs from "
                 f"the image grid; resampled in physical space (nearest neighbour)")
    return SegVolume(hdr, out_layers, layer_segs, overlaps, "physical", notes)
