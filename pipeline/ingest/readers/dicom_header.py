"""DICOM headers without pixels: which tags are read, one file's geometry/intensity facts
(:class:`FileInfo`, one :class:`SliceHeader` per 2-D image or enhanced frame), and the file scan of a folder.

Part of the DICOM series reader (:mod:`pipeline.ingest.readers.dicom`); see its docstring for the
guarantees and the privacy rule (only geometry/intensity tags and the identifiers that map annotations).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import overload

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from pipeline.core.paths import shown
from pipeline.ingest.readers import ReadError
from pipeline.ingest.readers.dicom_checks import damaged_file_error, looks_like_dicom, pixel_problem

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
# CT, enhanced CT, MR, enhanced MR, PET, enhanced PET, NM, CR, DX, secondary capture
_IMAGE_SOP_CLASSES = {f"1.2.840.10008.5.1.4.1.1.{s}"
                      for s in ("2", "2.1", "4", "4.1", "128", "130", "20", "1", "1.1", "7")}
_IMAGE_MODALITIES = {"CT", "MR", "PT", "NM", "US", "CR", "DX", "MG", "XA", "RF", "OT"}
_NON_IMAGE_MODALITIES = {"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "SR", "KO", "PR", "REG", "RWV", "DOC"}
_NATIVE_LE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}  # implicit / explicit VR little endian
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

    def placement(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(ipp, iop, pixel_spacing)``, the facts that place the slice in a volume; ReadError naming the
        first of them that is missing or malformed."""
        return (
            _required(self, self.ipp, "ImagePositionPatient (0020,0032)", "a spatially located image"),
            _required(self, self.iop, "ImageOrientationPatient (0020,0037)", "a spatially located image"),
            _required(self, self.pixel_spacing, "PixelSpacing (0028,0030)", "a calibrated cross-sectional image"),
        )


def _required(s: SliceHeader, value: np.ndarray | None, tag: str, what: str) -> np.ndarray:
    if value is None:
        raise ReadError(
            f"{s.name}: {tag} is missing or malformed, so the slice cannot be placed in the volume",
            file=s.path,
            hint=f"the file is not {what} (scout, secondary capture, over-anonymised or damaged?); "
            "remove it from the series folder or restore the tag",
        )
    return value


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


@overload
def _float(ds, keyword: str, default: float) -> float: ...


@overload
def _float(ds, keyword: str, default: None = None) -> float | None: ...


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
                iop=_vec(ori.get("ImageOrientationPatient") if ori is not None
                         else ds.get("ImageOrientationPatient"), 6),
                pixel_spacing=_vec(mea.get("PixelSpacing") if mea is not None else ds.get("PixelSpacing"), 2),
                rows=rows,
                cols=cols,
                slope=_float(pvt, "RescaleSlope", 1.0) if pvt is not None else _float(ds, "RescaleSlope", 1.0),
                intercept=_float(pvt, "RescaleIntercept", 0.0) if pvt is not None
                else _float(ds, "RescaleIntercept", 0.0),
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


def _set_problem(info: FileInfo, fast: _Fast, full) -> None:
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


def scan_files(
    files: Sequence[str | Path], *, strict: bool = False, workers: int | None = None
) -> tuple[list[FileInfo], list[str]]:
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
    for f, r in zip(files, results, strict=True):  # _map keeps one result per file
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

