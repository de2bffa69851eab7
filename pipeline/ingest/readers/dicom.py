"""DICOM image series reading (CT, MR, PET, ...: one 3-D volume per SeriesInstanceUID).

What this reader guarantees
---------------------------
* Files are grouped by ``SeriesInstanceUID``; the requested series is read, or the only one, or the
  largest one (a note names the choice and the others).  SEG, RTSTRUCT and other non-image objects in
  the folder are ignored here (they have their own readers).
* Slices are sorted by their position along the slice normal ``n = row_dir x col_dir`` (from
  ImageOrientationPatient): ``key = dot(ImagePositionPatient, n)``.  Never by file name or
  InstanceNumber.
* RescaleSlope/RescaleIntercept are applied per slice (int16 when the result is integral and fits,
  else int32/float32).
* Compressed transfer syntaxes are decoded by pydicom's pixel handlers (pylibjpeg, pyjpegls, ...);
  uncompressed little-endian pixel data are read straight from the file into numpy.
* Gaps and non-uniform slice spacing become notes; mixed orientations, missing ImagePositionPatient /
  ImageOrientationPatient / PixelSpacing, differing Rows/Columns and duplicate positions raise
  :class:`ReadError` naming the file with a hint.
* Enhanced (multi-frame) CT/MR files are read frame by frame from their functional groups.

Privacy: only geometry/intensity tags and the identifiers needed to map annotations (Series/SOP/
Frame-of-Reference UIDs) are kept, plus the raw ``PatientID`` for patient-level splits (the pipeline
hashes it before anything is written).  Names, dates, descriptions and the like never leave this
module.

Array layout: ``array[k, r, c]`` with ``k`` the sorted slice index (ascending position along ``n``),
``r`` the stored row and ``c`` the stored column; ``affine_lps`` maps ``(k, r, c, 1)`` to LPS mm.
Use :meth:`DicomSeries.to_canonical` (``geometry.lps_to_ras_affine`` + ``geometry.to_canonical``) for
the display-canonical layout of ``pipeline.core.types``.

Modules: :mod:`.dicom_header` (tags, per-file facts, folder scan), :mod:`.dicom_slices` (series grouping,
slice checks and sorting), :mod:`.dicom_pixels` (pixel reading, rescale), :mod:`.dicom_checks` (integrity);
this module assembles a :class:`DicomSeries` and re-exports their public names.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from pipeline.ingest.geometry import CanonicalGeometry, lps_to_ras_affine, to_canonical
from pipeline.ingest.readers import ReadError
from pipeline.ingest.readers.dicom_checks import check_decoded, looks_like_dicom, raise_if_damaged
from pipeline.ingest.readers.dicom_header import (
    _DEFER,
    HEADER_TAGS,
    RTSTRUCT_SOP_CLASS,
    SEG_SOP_CLASS,
    FileInfo,
    SliceHeader,
    _map,
    list_files,
    read_file_info,
    scan_files,
    short_uid,
)
from pipeline.ingest.readers.dicom_pixels import _read_stack, _rescale
from pipeline.ingest.readers.dicom_slices import SeriesGroup, choose_series, group_series, sort_slices

# the reader's names, wherever they live (header scan, slice sorting, pixels are split out by concern)
__all__ = [
    "HEADER_TAGS",
    "RTSTRUCT_SOP_CLASS",
    "SEG_SOP_CLASS",
    "DicomIndex",
    "DicomSeries",
    "FileInfo",
    "SeriesGroup",
    "SliceHeader",
    "choose_series",
    "group_series",
    "index_dicom",
    "list_files",
    "read_file_info",
    "read_group",
    "read_series",
    "scan_files",
    "short_uid",
    "sort_slices",
]


@dataclass
class DicomSeries:
    """One image series as a sorted volume with its geometry."""

    array: np.ndarray  # (K, R, C), sorted by position along ``normal`` (ascending)
    affine_lps: np.ndarray  # voxel (k, r, c) -> LPS mm
    series_uid: str
    frame_of_reference_uid: str
    modality: str
    patient_id: str  # raw PatientID: hash before it reaches any output
    files: list[str]  # per slice, sorted order
    frames: list[int | None]
    sop_uids: list[str]
    positions: np.ndarray  # (K, 3) ImagePositionPatient per slice, LPS mm
    row_dir: np.ndarray  # direction of increasing column index (IOP[0:3])
    col_dir: np.ndarray  # direction of increasing row index (IOP[3:6])
    normal: np.ndarray
    pixel_spacing: tuple[float, float]  # (row spacing, column spacing) mm
    slice_spacing: float
    rescaled: bool
    photometric: str = "MONOCHROME2"
    notes: list[str] = field(default_factory=list)
    value_facts: dict[str, str] = field(default_factory=dict)  # what the values are (PET: units, SUV), for provenance

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)

    @property
    def slice_offsets(self) -> np.ndarray:
        """Position of each slice along the normal (mm)."""
        return self.positions @ self.normal

    @property
    def sop_to_index(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for i, (uid, fr) in enumerate(zip(self.sop_uids, self.frames, strict=True)):  # both per slice
            if fr is None:
                out.setdefault(uid, i)
        return out

    @property
    def affine_ras(self) -> np.ndarray:
        return lps_to_ras_affine(self.affine_lps)

    def index_at(self, point_lps: np.ndarray, tol: float | None = None) -> int | None:
        """Slice index whose plane contains ``point_lps`` (within ``tol`` mm along the normal)."""
        if tol is None:
            tol = max(0.01, 0.25 * self.slice_spacing)
        d = float(np.asarray(point_lps, float) @ self.normal)
        offs = self.slice_offsets
        i = int(np.argmin(np.abs(offs - d)))
        return i if abs(offs[i] - d) <= tol else None

    def to_rc(self, points_lps: np.ndarray, k: int) -> np.ndarray:
        """(N, 3) LPS points on slice ``k`` -> (N, 2) continuous (row, col) pixel coordinates."""
        rel = np.asarray(points_lps, float) - self.positions[k]
        return np.stack([rel @ self.col_dir / self.pixel_spacing[0], rel @ self.row_dir / self.pixel_spacing[1]],
                        axis=1)

    def to_canonical(self, array: np.ndarray | None = None) -> tuple[np.ndarray, CanonicalGeometry]:
        """``array`` (default the image; any array on this grid, e.g. labels) in display-canonical layout."""
        return to_canonical(self.array if array is None else array, self.affine_ras)


def read_series(
    paths: str | Path | Iterable[str | Path],
    *,
    series_uid: str | None = None,
    workers: int | None = None,
) -> DicomSeries:
    """Read one image series from a folder, a file, or a list of files/folders.

    ``series_uid`` picks a series when the files hold several (default: the only one, else the largest,
    with a note).  See the module docstring for what is checked.
    """
    if isinstance(paths, (str, Path)):
        where = str(paths)
    else:
        paths = list(paths)
        where = str(Path(os.path.commonpath([str(p) for p in paths]))) if paths else "?"
    files = list_files(paths)
    infos, skipped = scan_files(files, workers=workers)
    for info in infos:  # a damaged image without its SeriesInstanceUID would form a "series" of its own
        if info.problem and not info.series_uid:
            raise_if_damaged(info.path, info.problem)
    groups = group_series(infos)
    group, notes = choose_series(groups, series_uid, where)
    if skipped:
        notes = notes + [f"skipped {len(skipped)} non-DICOM file(s): {', '.join(skipped[:5])}"]
    return read_group(group, notes=notes, workers=workers)


def read_group(group: SeriesGroup, *, notes: list[str] | None = None, workers: int | None = None) -> DicomSeries:
    """Pixels + geometry of one grouped series."""
    notes = list(notes or [])
    for f in group.files:
        raise_if_damaged(f.path, f.problem)
    slices = [s for f in group.files for s in f.slices]
    slices, normal, facts = sort_slices(slices)
    notes.extend(facts["notes"])
    by_path = {f.path: f for f in group.files}
    index = {(s.path, s.frame): k for k, s in enumerate(slices)}
    first = slices[0]
    rows, cols = first.rows, first.cols
    multi = any(f.n_frames > 1 for f in group.files)
    itemsize = max(max(1, f.bits_allocated // 8) for f in group.files)
    check_decoded(len(slices) * rows * cols * itemsize, first.path, f"pixel data ({len(slices)} slices)")
    stack = _read_stack(group.files, index, (len(slices), rows, cols), workers)
    slopes = np.array([s.slope for s in slices], dtype=float)
    intercepts = np.array([s.intercept for s in slices], dtype=float)
    bits = {(f.bits_stored, f.pixel_representation) for f in group.files}
    array, rescaled = _rescale(stack, slopes, intercepts, bits=bits.pop() if len(bits) == 1 else None)
    first_ipp, _, ps = first.placement()
    aff = np.eye(4)
    aff[:3, 0] = facts["step"]
    aff[:3, 1] = facts["col_dir"] * ps[0]
    aff[:3, 2] = facts["row_dir"] * ps[1]
    aff[:3, 3] = first_ipp
    photometric = by_path[first.path].photometric
    if photometric == "MONOCHROME1":
        notes.append("PhotometricInterpretation MONOCHROME1: low values display bright (values kept as stored)")
    if multi:
        notes.append("enhanced multi-frame image: frames placed by their PlanePositionSequence")
    return DicomSeries(
        array=array,
        affine_lps=aff,
        series_uid=group.series_uid,
        frame_of_reference_uid=group.files[0].frame_of_reference_uid,
        modality=group.modality,
        patient_id=group.patient_id,
        files=[s.path for s in slices],
        frames=[s.frame for s in slices],
        sop_uids=[s.sop_uid for s in slices],
        positions=np.stack([s.placement()[0] for s in slices]),
        row_dir=facts["row_dir"],
        col_dir=facts["col_dir"],
        normal=normal,
        pixel_spacing=(float(ps[0]), float(ps[1])),
        slice_spacing=float(facts["spacing"]),
        rescaled=rescaled,
        photometric=photometric,
        notes=notes,
    )


@dataclass
class DicomIndex:
    """Everything DICOM under some paths, headers only: image series, SEGs and RTSTRUCTs."""

    series: dict[str, SeriesGroup]
    segs: list  # list[pipeline.ingest.readers.dicom_seg.SegHeader]
    rtstructs: list  # list[pipeline.ingest.readers.rtstruct.RtStructHeader]
    skipped: list[str]  # non-DICOM files (names)
    damaged: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): DICOM files that cannot be read


def index_dicom(paths: str | Path | Iterable[str | Path], *, workers: int | None = None) -> DicomIndex:
    """Header-only scan of a folder (recursively) or files: groups image series by SeriesInstanceUID
    and reads the references of SEG and RTSTRUCT objects (no pixel data, no contour rasterisation)."""
    from pipeline.ingest.readers.dicom_seg import LABELMAP_SEG_SOP_CLASS, read_seg_header
    from pipeline.ingest.readers.rtstruct import read_rtstruct_header

    files = list_files(paths)

    def one(f: Path):
        try:
            ds = pydicom.dcmread(str(f), defer_size=_DEFER)
        except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError) as exc:
            return (str(f), type(exc).__name__) if looks_like_dicom(f) else None
        sop_class = str(ds.get("SOPClassUID", ""))
        modality = str(ds.get("Modality", ""))
        try:
            if sop_class in (SEG_SOP_CLASS, LABELMAP_SEG_SOP_CLASS) or modality == "SEG":
                return read_seg_header(str(f), ds)
            if sop_class == RTSTRUCT_SOP_CLASS or modality == "RTSTRUCT":
                return read_rtstruct_header(str(f), ds)
            return read_file_info(str(f), ds=ds)
        except ReadError as exc:
            return (str(f), str(exc).split(": ", 1)[-1])
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            return (str(f), type(exc).__name__)

    from pipeline.ingest.readers.dicom_seg import SegHeader
    from pipeline.ingest.readers.rtstruct import RtStructHeader

    infos, segs, rts, skipped, damaged = [], [], [], [], []
    for f, r in zip(files, _map(one, files, workers), strict=True):  # one result per file
        if r is None:
            skipped.append(f.name)
        elif isinstance(r, tuple):
            damaged.append(r)
        elif isinstance(r, FileInfo) and r.problem and not r.series_uid:  # cannot be put in its series
            damaged.append((r.path, r.problem))
        elif isinstance(r, SegHeader):
            segs.append(r)
        elif isinstance(r, RtStructHeader):
            rts.append(r)
        else:
            infos.append(r)
    return DicomIndex(group_series(infos), segs, rts, skipped, damaged)
