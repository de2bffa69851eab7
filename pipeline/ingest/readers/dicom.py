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
"""

from __future__ import annotations

import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from pipeline.ingest.geometry import CanonicalGeometry, lps_to_ras_affine, to_canonical
from pipeline.core.paths import shown
from pipeline.ingest.readers import ReadError
from pipeline.ingest.readers.dicom_checks import (
    check_decoded,
    damaged_file_error,
    looks_like_dicom,
    pixel_problem,
    raise_if_damaged,
)

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
# CT, enhanced CT, MR, enhanced MR, PET, enhanced PET, NM, CR, DX, secondary capture
_IMAGE_SOP_CLASSES = {f"1.2.840.10008.5.1.4.1.1.{s}"
                      for s in ("2", "2.1", "4", "4.1", "128", "130", "20", "1", "1.1", "7")}
_IMAGE_MODALITIES = {"CT", "MR", "PT", "NM", "US", "CR", "DX", "MG", "XA", "RF", "OT"}
_NON_IMAGE_MODALITIES = {"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "SR", "KO", "PR", "REG", "RWV", "DOC"}
_NATIVE_LE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}  # implicit / explicit VR little endian
_ORIENT_TOL = 1e-3  # direction cosines
_DEFER = 2048  # bytes: larger values (PixelData, big sequences of private data) are read on demand

# The only header fields this module looks at.  Everything else is parsed lazily by pydicom and
# never converted or copied.
HEADER_TAGS = (
    "SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "Modality", "PatientID",
    "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
    "SpacingBetweenSlices", "Rows", "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation",
    "SamplesPerPixel", "PhotometricInterpretation", "RescaleSlope", "RescaleIntercept", "NumberOfFrames",
)


def short_uid(uid: str) -> str:
    """A UID shortened for messages that reach reports: UIDs often embed dates and device serials, so
    only the last 6 characters are shown (enough to tell two series apart when debugging)."""
    uid = str(uid or "")
    return ("..." + uid[-6:]) if len(uid) > 6 else uid or "?"


def _vec(value: Sequence | None, n: int) -> np.ndarray | None:
    if value is None:
        return None
    try:
        arr = np.asarray([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        return None
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        return None
    return arr


@dataclass
class SliceHeader:
    """Geometry and intensity facts of one 2-D image (a file, or one frame of an enhanced file)."""

    path: str
    frame: int | None  # frame index in a multi-frame file, None for single-frame files
    sop_uid: str
    ipp: np.ndarray | None
    iop: np.ndarray | None
    pixel_spacing: np.ndarray | None  # (row spacing, column spacing) mm
    rows: int
    cols: int
    slope: float = 1.0
    intercept: float = 0.0
    slice_thickness: float | None = None
    spacing_between: float | None = None

    @property
    def name(self) -> str:
        return Path(self.path).name + (f" (frame {self.frame + 1})" if self.frame is not None else "")


@dataclass
class FileInfo:
    """Header facts of one DICOM file (no pixels)."""

    path: str
    sop_class: str
    sop_uid: str
    series_uid: str
    modality: str
    patient_id: str
    frame_of_reference_uid: str
    transfer_syntax: str
    has_pixels: bool
    slices: list[SliceHeader]
    bits_allocated: int = 16
    bits_stored: int = 16
    pixel_representation: int = 0
    samples_per_pixel: int = 1
    photometric: str = "MONOCHROME2"
    n_frames: int = 1
    pixel_tell: int | None = None  # file offset of the (uncompressed, deferred) pixel data value
    pixel_length: int | None = None
    problem: str = ""  # why the pixel data cannot be complete (dicom_checks.pixel_problem); read_group refuses it

    @property
    def is_image(self) -> bool:
        return (
            (self.has_pixels or bool(self.problem))
            and self.sop_class not in (SEG_SOP_CLASS, RTSTRUCT_SOP_CLASS)
            and self.modality not in _NON_IMAGE_MODALITIES
        )


def _float(ds, keyword: str, default: float | None = None) -> float | None:
    v = ds.get(keyword)
    if v is None or v == "":
        return default
    try:
        return float(v)
    except (TypeError, ValueError):
        return default


def _first(seq_parent, seq_kw: str):
    seq = seq_parent.get(seq_kw) if seq_parent is not None else None
    if seq:
        return seq[0]
    return None


def _frame_slices(ds, path: str, n_frames: int) -> list[SliceHeader]:
    """Per-frame geometry of an enhanced multi-frame image from its functional groups."""
    shared = _first(ds, "SharedFunctionalGroupsSequence")
    per = ds.get("PerFrameFunctionalGroupsSequence") or []
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)

    def group(i: int, kw: str):
        item = per[i] if i < len(per) else None
        g = _first(item, kw)
        return g if g is not None else _first(shared, kw)

    out = []
    for i in range(n_frames):
        pos = group(i, "PlanePositionSequence")
        ori = group(i, "PlaneOrientationSequence")
        mea = group(i, "PixelMeasuresSequence")
        pvt = group(i, "PixelValueTransformationSequence")
        out.append(
            SliceHeader(
                path=path,
                frame=i,
                sop_uid=str(ds.get("SOPInstanceUID", "")),
                ipp=_vec(pos.get("ImagePositionPatient") if pos is not None else None, 3),
                iop=_vec(ori.get("ImageOrientationPatient") if ori is not None else ds.get("ImageOrientationPatient"), 6),
                pixel_spacing=_vec(mea.get("PixelSpacing") if mea is not None else ds.get("PixelSpacing"), 2),
                rows=rows,
                cols=cols,
                slope=_float(pvt, "RescaleSlope", 1.0) if pvt is not None else _float(ds, "RescaleSlope", 1.0),
                intercept=_float(pvt, "RescaleIntercept", 0.0) if pvt is not None else _float(ds, "RescaleIntercept", 0.0),
                slice_thickness=_float(mea, "SliceThickness") if mea is not None else None,
                spacing_between=_float(mea, "SpacingBetweenSlices") if mea is not None else None,
            )
        )
    return out


_FAST_VR = {
    "SOPClassUID": "UI", "SOPInstanceUID": "UI", "SeriesInstanceUID": "UI", "FrameOfReferenceUID": "UI",
    "Modality": "CS", "PhotometricInterpretation": "CS", "ImagePositionPatient": "DS",
    "ImageOrientationPatient": "DS", "PixelSpacing": "DS", "SliceThickness": "DS", "SpacingBetweenSlices": "DS",
    "RescaleSlope": "DS", "RescaleIntercept": "DS", "NumberOfFrames": "IS", "Rows": "US", "Columns": "US",
    "BitsAllocated": "US", "BitsStored": "US", "PixelRepresentation": "US", "SamplesPerPixel": "US",
}
_FAST_TAG = {kw: pydicom.datadict.tag_for_keyword(kw) for kw in _FAST_VR}


class _Fast:
    """Header access for the few geometry/intensity tags, straight from the raw element bytes.

    pydicom converts raw values lazily through a general (and, for 300 files x 20 tags, noticeable)
    machinery; these tags have fixed VRs, so their bytes are decoded here.  Anything unusual (deferred,
    already converted, other tags) goes through ``Dataset.get``.
    """

    __slots__ = ("ds",)

    def __init__(self, ds) -> None:
        self.ds = ds

    def get(self, kw: str, default=None):
        vr = _FAST_VR.get(kw)
        if vr is None:
            return self.ds.get(kw, default)
        elem = self.ds.get_item(_FAST_TAG[kw], keep_deferred=True)
        if elem is None:
            return default
        raw = getattr(elem, "value", None)
        if not getattr(elem, "is_raw", False) or raw is None or not isinstance(raw, bytes):
            value = self.ds.get(kw, default)
            return default if value in (None, "") else value
        if vr == "US":
            if len(raw) < 2:
                return default
            return int.from_bytes(raw[:2], "little" if elem.is_little_endian else "big")
        text = raw.decode("latin-1").strip(" \x00")
        if not text:
            return default
        if vr in ("DS", "IS"):
            parts = [t.strip() for t in text.split("\\")]
            return parts if len(parts) > 1 else parts[0]
        return text


def _set_problem(info: FileInfo, fast: _Fast, full) -> None:  # noqa: ANN001
    """Flag an image file whose pixel data cannot be complete (missing, short, truncated, frame count)."""
    if info.sop_class in (SEG_SOP_CLASS, RTSTRUCT_SOP_CLASS) or info.modality in _NON_IMAGE_MODALITIES:
        return
    rows, cols = int(fast.get("Rows", 0) or 0), int(fast.get("Columns", 0) or 0)
    if not info.has_pixels:
        # an image that lost its pixel data (truncated inside the header, or stripped)
        if (rows and cols) or info.modality in _IMAGE_MODALITIES or info.sop_class in _IMAGE_SOP_CLASSES:
            info.problem = "has no PixelData"
        return
    per = full.get("PerFrameFunctionalGroupsSequence") if "PerFrameFunctionalGroupsSequence" in full else None
    info.problem = pixel_problem(full, info.path, rows=rows, cols=cols, frames=info.n_frames,
                                 bits=info.bits_allocated, samples=info.samples_per_pixel,
                                 per_frame=len(per) if per is not None else None) or ""


def read_file_info(path: str | Path, *, ds=None) -> FileInfo:
    """Header facts of one file (pixel data not read).  Raises ReadError when it is not DICOM."""
    path = str(path)
    if ds is None:
        try:
            ds = pydicom.dcmread(path, defer_size=_DEFER)
        except InvalidDicomError as exc:
            raise ReadError(f"{Path(path).name} is not a DICOM file ({exc})", file=path,
                            hint="remove non-DICOM files from the series folder or list the files explicitly") from exc
        except (OSError, EOFError, ValueError, KeyError, TypeError) as exc:
            raise ReadError(f"cannot read DICOM {Path(path).name}: {type(exc).__name__}: {exc}", file=path,
                            hint="the file is truncated or damaged; re-download it") from exc
    if len(ds) == 0:
        raise ReadError(f"{shown(path)}: no data elements after the file meta header (truncated?)", file=path,
                        hint="the file is truncated or damaged; re-download it")
    meta = getattr(ds, "file_meta", None)
    ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    full = ds
    ds = _Fast(ds)
    sop_class = str(ds.get("SOPClassUID", "") or (meta.get("MediaStorageSOPClassUID", "") if meta is not None else ""))
    has_pixels = 0x7FE00010 in full or 0x7FE00008 in full or 0x7FE00009 in full
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    info = FileInfo(
        path=path,
        sop_class=sop_class,
        sop_uid=str(ds.get("SOPInstanceUID", "")),
        series_uid=str(ds.get("SeriesInstanceUID", "")),
        modality=str(ds.get("Modality", "")),
        patient_id=str(full.get("PatientID", "") or ""),
        frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "")),
        transfer_syntax=ts,
        has_pixels=has_pixels,
        slices=[],
        bits_allocated=int(ds.get("BitsAllocated", 16) or 16),
        bits_stored=int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16),
        pixel_representation=int(ds.get("PixelRepresentation", 0) or 0),
        samples_per_pixel=int(ds.get("SamplesPerPixel", 1) or 1),
        photometric=str(ds.get("PhotometricInterpretation", "MONOCHROME2")),
        n_frames=n_frames,
    )
    _set_problem(info, ds, full)
    if not info.is_image or (info.problem and n_frames > 1):
        return info  # a damaged multi-frame file gets no per-frame geometry (its NumberOfFrames may be a lie)
    if 0x7FE00010 in full:
        raw = full.get_item(0x7FE00010, keep_deferred=True)
        tell = getattr(raw, "value_tell", None)
        if tell is not None and getattr(raw, "value", 1) is None and ts in _NATIVE_LE:
            info.pixel_tell, info.pixel_length = int(tell), int(raw.length)
    if n_frames > 1 or "PerFrameFunctionalGroupsSequence" in full:
        info.slices = _frame_slices(full, path, n_frames)
    else:
        info.slices = [
            SliceHeader(
                path=path,
                frame=None,
                sop_uid=info.sop_uid,
                ipp=_vec(ds.get("ImagePositionPatient"), 3),
                iop=_vec(ds.get("ImageOrientationPatient"), 6),
                pixel_spacing=_vec(ds.get("PixelSpacing"), 2),
                rows=int(ds.get("Rows", 0) or 0),
                cols=int(ds.get("Columns", 0) or 0),
                slope=_float(ds, "RescaleSlope", 1.0),
                intercept=_float(ds, "RescaleIntercept", 0.0),
                slice_thickness=_float(ds, "SliceThickness"),
                spacing_between=_float(ds, "SpacingBetweenSlices"),
            )
        ]
    return info


def list_files(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """A folder (recursively), one file, or a list of files/folders -> sorted candidate files.

    Hidden files, DICOMDIR and obvious non-DICOM side-cars (NIfTI, text, images) are skipped.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for f in files:
                    q = Path(root) / f
                    if _candidate(q):
                        out.append(q)
        elif p.is_file():
            out.append(p)
        else:
            raise ReadError(f"not found: {shown(p)}", file=str(p), hint="check the card's layout paths")
    return sorted(set(out))


_SKIP_SUFFIXES = (".nii", ".nii.gz", ".gz", ".txt", ".md", ".json", ".csv", ".png", ".jpg", ".jpeg", ".xml",
                  ".yaml", ".yml", ".zip", ".nrrd", ".mha", ".mhd", ".py", ".html")


def _candidate(p: Path) -> bool:
    name = p.name
    if name.startswith(".") or name.upper() == "DICOMDIR" or name in ("SHA256SUMS", "LICENSE", "README"):
        return False
    return not name.lower().endswith(_SKIP_SUFFIXES)


def scan_files(files: Sequence[str | Path], *, strict: bool = False, workers: int | None = None) -> tuple[list[FileInfo], list[str]]:
    """Header facts of every readable DICOM file; unreadable/non-DICOM files are listed as notes
    (or raise with ``strict``)."""
    infos: list[FileInfo] = []
    skipped: list[str] = []

    def one(f):
        try:
            return read_file_info(f)
        except ReadError as exc:
            if strict:
                raise
            return exc

    results = _map(one, [str(f) for f in files], workers)
    for f, r in zip(files, results):
        if isinstance(r, ReadError) and looks_like_dicom(f):
            raise damaged_file_error(str(f), str(r).split(": ", 1)[-1])
        if isinstance(r, ReadError):
            skipped.append(Path(f).name)
        else:
            infos.append(r)
    return infos, skipped


def _map(fn, items: list, workers: int | None):
    if workers is None:
        workers = min(8, (os.cpu_count() or 1) * 2)
    if workers <= 1 or len(items) < 16:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=workers) as ex:
        return list(ex.map(fn, items, chunksize=max(1, len(items) // (workers * 4))))


@dataclass
class SeriesGroup:
    """Files of one SeriesInstanceUID (header facts only)."""

    series_uid: str
    files: list[FileInfo]

    @property
    def n_slices(self) -> int:
        return sum(len(f.slices) for f in self.files)

    @property
    def modality(self) -> str:
        return self.files[0].modality if self.files else ""

    @property
    def patient_id(self) -> str:
        return self.files[0].patient_id if self.files else ""


def group_series(infos: Sequence[FileInfo]) -> dict[str, SeriesGroup]:
    groups: dict[str, list[FileInfo]] = defaultdict(list)
    for info in infos:
        if info.is_image:
            groups[info.series_uid].append(info)
    return {uid: SeriesGroup(uid, sorted(fs, key=lambda f: f.path)) for uid, fs in sorted(groups.items())}


def choose_series(groups: dict[str, SeriesGroup], series_uid: str | None, where: str) -> tuple[SeriesGroup, list[str]]:
    notes: list[str] = []
    if not groups:
        raise ReadError(f"no DICOM image series found in {shown(where)}", file=where,
                        hint="the folder holds no CT/MR/PET image files (only SEG/RTSTRUCT or non-DICOM files?)")
    if series_uid is not None:
        if series_uid not in groups:
            raise ReadError(
                f"the requested series ({short_uid(series_uid)}) is not in {Path(where).name or where}; it holds "
                f"{len(groups)} series: "
                + ", ".join(f"{g.n_slices} slices (e.g. {Path(g.files[0].path).name})" for g in groups.values()),
                file=where, hint="check the SeriesInstanceUID the annotation refers to, or add the missing files")
        return groups[series_uid], notes
    if len(groups) == 1:
        return next(iter(groups.values())), notes
    ranked = sorted(groups.values(), key=lambda g: (-g.n_slices, g.series_uid))
    chosen = ranked[0]
    # notes reach the run report: name series by a file, never by UID (UIDs can embed dates)
    notes.append(
        f"{Path(where).name or where} holds {len(groups)} image series; read the largest ({chosen.n_slices} slices, "
        f"e.g. {Path(chosen.files[0].path).name}); others: "
        + ", ".join(f"{g.n_slices} slices (e.g. {Path(g.files[0].path).name})" for g in ranked[1:])
    )
    return chosen, notes


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
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def slice_offsets(self) -> np.ndarray:
        """Position of each slice along the normal (mm)."""
        return self.positions @ self.normal

    @property
    def sop_to_index(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for i, (uid, fr) in enumerate(zip(self.sop_uids, self.frames)):
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
        return np.stack([rel @ self.col_dir / self.pixel_spacing[0], rel @ self.row_dir / self.pixel_spacing[1]], axis=1)

    def to_canonical(self, array: np.ndarray | None = None) -> tuple[np.ndarray, CanonicalGeometry]:
        """``array`` (default the image; any array on this grid, e.g. labels) in display-canonical layout."""
        return to_canonical(self.array if array is None else array, self.affine_ras)


def _check_geometry(slices: list[SliceHeader]) -> None:
    first = slices[0]
    for s in slices:
        for attr, tag, what in (
            ("ipp", "ImagePositionPatient (0020,0032)", "a spatially located image"),
            ("iop", "ImageOrientationPatient (0020,0037)", "a spatially located image"),
            ("pixel_spacing", "PixelSpacing (0028,0030)", "a calibrated cross-sectional image"),
        ):
            if getattr(s, attr) is None:
                raise ReadError(
                    f"{s.name}: {tag} is missing or malformed, so the slice cannot be placed in the volume",
                    file=s.path,
                    hint=f"the file is not {what} (scout, secondary capture, over-anonymised or damaged?); "
                    "remove it from the series folder or restore the tag",
                )
        if (s.rows, s.cols) != (first.rows, first.cols):
            raise ReadError(
                f"{s.name} is {s.rows}x{s.cols} (rows x columns) but {first.name} is {first.rows}x{first.cols}",
                file=s.path,
                hint="a series must have one matrix size; the folder mixes series or holds a scout/localizer",
            )
        if not np.allclose(s.iop, first.iop, atol=_ORIENT_TOL):
            raise ReadError(
                f"{s.name} has ImageOrientationPatient {np.round(s.iop, 4).tolist()} but {first.name} has "
                f"{np.round(first.iop, 4).tolist()}: mixed orientations in one series",
                file=s.path,
                hint="remove scout/localizer images, or split the stacks (e.g. axial + reformats) into separate series",
            )
        if not np.allclose(s.pixel_spacing, first.pixel_spacing, rtol=1e-3, atol=1e-4):
            raise ReadError(
                f"{s.name} has PixelSpacing {s.pixel_spacing.tolist()} but {first.name} has {first.pixel_spacing.tolist()}",
                file=s.path,
                hint="a series must have one pixel spacing; the folder mixes series",
            )


def sort_slices(slices: list[SliceHeader]) -> tuple[list[SliceHeader], np.ndarray, dict]:
    """Sort slices along the normal; returns (sorted slices, normal, geometry facts incl. notes)."""
    _check_geometry(slices)
    iop = slices[0].iop
    row_dir, col_dir = iop[:3] / np.linalg.norm(iop[:3]), iop[3:] / np.linalg.norm(iop[3:])
    normal = np.cross(row_dir, col_dir)
    normal /= np.linalg.norm(normal)
    keys = np.array([float(s.ipp @ normal) for s in slices])
    order = np.argsort(keys, kind="stable")
    slices = [slices[i] for i in order]
    keys = keys[order]
    notes: list[str] = []
    facts: dict = {"row_dir": row_dir, "col_dir": col_dir, "normal": normal, "notes": notes}
    first = slices[0]
    if len(slices) == 1:
        step = first.spacing_between or first.slice_thickness or 1.0
        facts["spacing"] = float(step)
        facts["step"] = normal * float(step)
        notes.append(f"single-slice series: slice spacing {step:g} mm taken from the header")
        return slices, normal, facts
    diffs = np.diff(keys)
    dup = np.flatnonzero(diffs < 1e-3)
    if dup.size:
        a, b = slices[dup[0]], slices[dup[0] + 1]
        raise ReadError(
            f"{a.name} and {b.name} lie at the same position ({keys[dup[0]]:.3f} mm along the slice normal)",
            file=b.path,
            hint="the series holds several acquisitions (phases, echoes, time points or duplicates) at the same "
            "positions; split them into separate folders or remove the duplicates",
        )
    nominal = float(np.median(diffs))
    gaps = np.flatnonzero(diffs > 1.5 * nominal)
    for g in gaps[:5]:
        notes.append(
            f"gap in the series: {diffs[g]:.3f} mm between {slices[g].name} and {slices[g + 1].name} "
            f"(nominal {nominal:.3f} mm; about {int(round(diffs[g] / nominal)) - 1} slice(s) missing)"
        )
    if gaps.size > 5:
        notes.append(f"... {gaps.size - 5} more gaps")
    if not gaps.size and diffs.max() - diffs.min() > max(1e-3, 0.01 * nominal):
        notes.append(
            f"non-uniform slice spacing: {diffs.min():.3f}..{diffs.max():.3f} mm (median {nominal:.3f} mm); "
            "the volume uses the mean spacing"
        )
    span = slices[-1].ipp - slices[0].ipp
    step = span / (len(slices) - 1)
    along = float(step @ normal)
    tilt = float(np.degrees(np.arccos(np.clip(abs(along) / np.linalg.norm(step), 0, 1))))
    if tilt > 0.1:
        notes.append(f"slice positions are sheared by {tilt:.2f} deg from the normal (gantry tilt); the affine keeps the shear")
    facts["spacing"] = float(abs(along))
    facts["step"] = step
    if gaps.size:
        facts["spacing"] = nominal
        facts["step"] = step * (nominal / along) if along else normal * nominal
        notes.append("the volume affine uses the nominal spacing; slices after a gap are placed at nominal steps")
    return slices, normal, facts


def _read_native(info: FileInfo) -> np.ndarray | None:
    """Uncompressed little-endian pixel data straight from the file (None when not applicable)."""
    if info.pixel_tell is None or info.samples_per_pixel != 1 or info.bits_allocated not in (8, 16, 32):
        return None
    rows, cols = info.slices[0].rows, info.slices[0].cols
    n = rows * cols * info.n_frames
    itemsize = info.bits_allocated // 8
    if info.pixel_length < n * itemsize:
        return None
    kind = "i" if info.pixel_representation == 1 else "u"
    dtype = np.dtype(f"<{kind}{itemsize}")
    arr = np.fromfile(info.path, dtype=dtype, count=n, offset=info.pixel_tell)
    if arr.size != n:
        return None
    bs = info.bits_stored
    if bs < info.bits_allocated:
        if kind == "u":
            arr &= dtype.type((1 << bs) - 1)
        else:
            shift = info.bits_allocated - bs
            arr = (arr << shift) >> shift
    return arr.reshape(info.n_frames, rows, cols)


def _read_pixels(info: FileInfo) -> np.ndarray:
    """(frames, R, C) stored values of one file."""
    arr = _read_native(info)
    if arr is not None:
        return arr
    if info.samples_per_pixel != 1:
        raise ReadError(
            f"{Path(info.path).name}: {info.samples_per_pixel} samples per pixel ({info.photometric}); "
            "only greyscale cross-sectional series are supported",
            file=info.path, hint="colour DICOM (ultrasound, secondary capture) is not a CT/MR/PET series")
    try:
        ds = pydicom.dcmread(info.path)
        arr = ds.pixel_array
    except Exception as exc:  # decoder plugins raise many types (RuntimeError, NotImplementedError, ...)
        raise ReadError(
            f"cannot decode pixel data of {Path(info.path).name} (transfer syntax {info.transfer_syntax}): "
            f"{type(exc).__name__}: {exc}",
            file=info.path,
            hint="install the decoder for this transfer syntax (pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg, "
            "pylibjpeg-rle, pyjpegls), or the file is damaged",
        ) from exc
    if arr.ndim == 2:
        arr = arr[None]
    return arr


def _native_dtype(info: FileInfo) -> np.dtype | None:
    """numpy dtype of a file's pixel data when it can be read straight from the file, else None."""
    if info.pixel_tell is None or info.samples_per_pixel != 1 or info.bits_allocated not in (8, 16, 32):
        return None
    itemsize = info.bits_allocated // 8
    rows, cols = info.slices[0].rows, info.slices[0].cols
    if info.pixel_length < rows * cols * info.n_frames * itemsize:
        return None
    return np.dtype(f"<{'i' if info.pixel_representation == 1 else 'u'}{itemsize}")


def _read_stack(files: list[FileInfo], index: dict, shape: tuple[int, int, int], workers: int | None) -> np.ndarray:
    """Stored values of every slice, at their sorted indices, in one (K, R, C) array.

    Uncompressed little-endian single-frame files are read straight into the stack (``readinto``, no
    intermediate copy); anything else goes through :func:`_read_pixels` (pydicom's decoders).
    """
    dtypes = {_native_dtype(f) for f in files}
    if len(dtypes) == 1 and None not in dtypes and all(f.n_frames == 1 for f in files):
        dtype = dtypes.pop()
        stack = np.empty(shape, dtype=dtype)
        nbytes = shape[1] * shape[2] * dtype.itemsize

        def load(info: FileInfo) -> FileInfo | None:
            k = index[(info.path, None)]
            with open(info.path, "rb") as fh:
                fh.seek(info.pixel_tell)
                got = fh.readinto(memoryview(stack[k]).cast("B"))
            if got != nbytes:
                return info  # truncated: let the generic path produce the error
            bs = info.bits_stored
            if bs < info.bits_allocated:
                plane = stack[k]
                if dtype.kind == "u":
                    plane &= dtype.type((1 << bs) - 1)
                else:
                    shift = info.bits_allocated - bs
                    plane <<= shift
                    plane >>= shift
            return None

        failed = [f for f in _map(load, files, workers) if f is not None]
        for info in failed:
            _read_pixels(info)  # raises a ReadError naming the file
            raise ReadError(f"{Path(info.path).name}: pixel data shorter than Rows x Columns", file=info.path,
                            hint="the file is truncated; re-download it")
        return stack

    def load_any(info: FileInfo):
        return info, _read_pixels(info)

    results = _map(load_any, files, workers)
    dtype = np.result_type(*[r[1].dtype for r in results])
    stack = np.empty(shape, dtype=dtype)
    for info, px in results:
        if px.shape[1:] != shape[1:] or px.shape[0] != max(1, len(info.slices)):
            raise ReadError(
                f"{Path(info.path).name}: pixel data shape {px.shape} does not match Rows/Columns/NumberOfFrames",
                file=info.path, hint="the file is damaged or its header is wrong")
        for s, frame in zip(info.slices, px):
            stack[index[(s.path, s.frame)]] = frame
    return stack


def _stored_range(stack: np.ndarray, bits: tuple[int, int] | None) -> tuple[int, int]:
    """(min, max) the stored values can take: from BitsStored/PixelRepresentation when that is
    narrow enough to decide, else measured."""
    if bits is not None:
        bs, signed = bits
        lo, hi = (-(1 << (bs - 1)), (1 << (bs - 1)) - 1) if signed else (0, (1 << bs) - 1)
        if -32768 <= lo - 4096 and hi + 4096 <= 32767:
            return lo, hi
    if not stack.size:
        return 0, 0
    return int(stack.min()), int(stack.max())


def _rescale(stack: np.ndarray, slopes: np.ndarray, intercepts: np.ndarray,
             bits: tuple[int, int] | None = None) -> tuple[np.ndarray, bool]:
    """Apply per-slice slope/intercept.  Works in place on ``stack`` where the result fits its memory."""
    identity = bool(np.all(slopes == 1.0) and np.all(intercepts == 0.0))
    if identity:
        if stack.dtype == np.uint16 and stack.size and _stored_range(stack, bits)[1] <= np.iinfo(np.int16).max:
            return stack.view(np.int16), False
        return stack, False
    integral = bool(np.all(slopes == np.round(slopes)) and np.all(intercepts == np.round(intercepts)))
    if integral:
        lo, hi = _stored_range(stack, bits)
        cand = [lo * s + b for s in slopes for b in intercepts] + [hi * s + b for s in slopes for b in intercepts]
        target = np.int16 if min(cand) >= -32768 and max(cand) <= 32767 else np.int32
        if np.all(slopes == 1.0) and np.all(intercepts == intercepts[0]):
            if target is np.int16 and stack.dtype in (np.int16, np.uint16) and hi <= 32767:
                out = stack.view(np.int16)  # in place: values fit int16 before and after
            else:
                out = stack.astype(target)
            out += target(intercepts[0])
            return out, True
        out = stack.astype(np.int32) * slopes.astype(np.int32)[:, None, None] + intercepts.astype(np.int32)[:, None, None]
        return out.astype(target), True
    out = stack.astype(np.float32)
    out *= slopes.astype(np.float32)[:, None, None]
    out += intercepts.astype(np.float32)[:, None, None]
    return out, True


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
    return read_group(group, notes=notes + ([f"skipped {len(skipped)} non-DICOM file(s): {', '.join(skipped[:5])}"] if skipped else []), workers=workers)


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
    ps = first.pixel_spacing
    aff = np.eye(4)
    aff[:3, 0] = facts["step"]
    aff[:3, 1] = facts["col_dir"] * ps[0]
    aff[:3, 2] = facts["row_dir"] * ps[1]
    aff[:3, 3] = first.ipp
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
        positions=np.stack([s.ipp for s in slices]),
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
    for f, r in zip(files, _map(one, files, workers)):
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


def write_synthetic_series(
    folder: str | Path,
    stored: np.ndarray,
    *,
    spacing: tuple[float, float, float] = (1.0, 0.8, 0.8),
    origin: Sequence[float] = (-200.0, -200.0, -100.0),
    iop: Sequence[float] = (1, 0, 0, 0, 1, 0),
    intercept: float = -1024.0,
    slope: float = 1.0,
    modality: str = "CT",
    names: Sequence[str] | None = None,
    positions: Sequence[Sequence[float]] | None = None,
    transfer_syntax: str = "1.2.840.10008.1.2.1",
    series_uid: str | None = None,
    patient_id: str = "SYN-0001",
    seed: int = 0,
) -> list[Path]:
    """Write ``stored`` ``(K, R, C)`` int16/uint16 values as a single-frame DICOM series (tests, benchmarks,
    docs).

    Slice ``k`` lies at ``origin + k * spacing[0] * normal`` (or at ``positions[k]``), with the rows/columns
    of IOP ``iop`` and PixelSpacing ``spacing[1:]``.  ``names`` gives the file names per slice (default
    shuffled ``IMG#####.dcm`` names and InstanceNumbers, so nothing but the positions gives the order).
    Realistic patient/study tags are filled in (fake values) so privacy checks have something to catch.
    Compressed ``transfer_syntax`` values are encoded with pydicom's encoders.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stored = np.asarray(stored)
    K, R, C = stored.shape
    iop_a = np.asarray(iop, float)
    normal = np.cross(iop_a[:3], iop_a[3:])
    rng = np.random.default_rng(seed)
    perm = rng.permutation(K)
    if names is None:
        names = [f"IMG{int(p):05d}.dcm" for p in perm]
    series_uid = series_uid or generate_uid(entropy_srcs=[f"series-{seed}-{patient_id}"])
    study_uid = generate_uid(entropy_srcs=[f"study-{seed}-{patient_id}"])
    frame_uid = generate_uid(entropy_srcs=[f"for-{seed}-{patient_id}"])
    signed = stored.dtype.kind == "i"
    ts = UID(transfer_syntax)
    out = []
    for k in range(K):
        sop = generate_uid(entropy_srcs=[f"sop-{seed}-{patient_id}-{k}"])
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2" if modality == "CT" else "1.2.840.10008.5.1.4.1.1.4"
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian if ts.is_compressed else ts
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = sop
        ds.PatientName = "Doe^Jane"
        ds.PatientID = patient_id
        ds.PatientBirthDate = "19700101"
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = "20200102"
        ds.StudyTime = "101010"
        ds.AccessionNumber = "ACC123"
        ds.InstitutionName = "Synthetic Hospital"
        ds.ReferringPhysicianName = "Who^Doctor"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Modality = modality
        ds.SeriesNumber = 2
        ds.InstanceNumber = int(perm[k]) + 1
        pos = np.asarray(positions[k], float) if positions is not None else np.asarray(origin, float) + k * spacing[0] * normal
        ds.ImagePositionPatient = [f"{v:.6g}" for v in pos]
        ds.ImageOrientationPatient = [f"{v:.6g}" for v in iop_a]
        ds.PixelSpacing = [f"{spacing[1]:.6g}", f"{spacing[2]:.6g}"]
        ds.SliceThickness = f"{spacing[0]:.6g}"
        ds.Rows, ds.Columns = R, C
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1 if signed else 0
        if modality == "CT" or intercept != 0 or slope != 1:
            ds.RescaleIntercept = f"{intercept:g}"
            ds.RescaleSlope = f"{slope:g}"
        ds.WindowCenter, ds.WindowWidth = "40", "400"
        ds.KVP = "120"
        ds.PixelData = np.ascontiguousarray(stored[k].astype("<i2" if signed else "<u2")).tobytes()
        if ts.is_compressed:
            ds.compress(ts)
        path = folder / names[k]
        ds.save_as(path, enforce_file_format=True, implicit_vr=ts == ImplicitVRLittleEndian,
                   little_endian=True) if not ts.is_compressed else ds.save_as(path, enforce_file_format=True)
        out.append(path)
    return out
