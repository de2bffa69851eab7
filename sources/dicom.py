"""DICOM image series with their annotations: DICOM-SEG, RTSTRUCT, or a NIfTI label map.

Adapters
--------
* ``dicom_seg``          CT/MR series + DICOM Segmentation object(s)
* ``dicom_rtstruct``     CT/MR series + RT Structure Set
* ``dicom_nifti_labels`` CT/MR series + NIfTI integer label map (aligned in physical space)

A CaseRef holds the annotation file in ``paths`` and the series' files in ``extra["files"]`` (exactly
the files of the referenced series, so a folder shared by many series is never hashed per case), with
``extra["series_dir"]`` for display.

Layout options (card ``layout``: :class:`DicomSegLayout`, :class:`DicomRtstructLayout`,
:class:`DicomNiftiLabelsLayout`)
--------------------------------------------------------------------------------------------
* ``cases``: explicit list of ``{id, series, seg | rtstruct | labels}`` — ``series`` is a folder (or a
  file glob) relative to the root; the annotation is a file relative to the root.  Optional ``patient``.
* otherwise **scan mode** (``dicom_seg`` / ``dicom_rtstruct``): every file under the root (or under
  ``layout.scan``, a folder relative to the root) is indexed header-only; each SEG (RTSTRUCT) becomes a
  case, paired with the image series it references (by SeriesInstanceUID or referenced SOP
  Instance UIDs).  The case id is the annotation's path relative to the root, without extension,
  ``/`` replaced by ``__``.
* ``patient_regex``: first group of the case id/path = patient id.  Without it the series'
  PatientID is used (hashed before any output), else the case id.
* ``case_rules``: per-case ``modality`` (when the series has none) / ``body_region``.

Labels
------
A segment's term comes from its coded concept first — card ``labels`` keys like ``"SCT:10200004"`` or
``"SRT:T-62000"`` (scheme designator : code value), then a small built-in code table
(:data:`DEFAULT_CODES`) — with ``_left``/``_right`` appended for a laterality modifier; then from its
SegmentLabel (card ``labels``, then the glossary).  RTSTRUCT ROIs resolve by ROI name (card ``labels``,
then the glossary), then by their identification code.  Structures without a term are skipped with
a note.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.core.types import CaseRef, LabelLayer, Study
from pipeline.ingest.align import align_labels_to_image
from pipeline.core.paths import shown
from pipeline.ingest.readers import ReadError
from pipeline.ingest.readers.dicom import DicomIndex, DicomSeries, index_dicom, list_files, read_series
from pipeline.ingest.readers.dicom_checks import damaged_file_error
from pipeline.ingest.readers.dicom_seg import read_seg
from pipeline.ingest.readers.nifti import read_nifti
from pipeline.ingest.readers.pet import read_pet_facts, to_suv
from pipeline.ingest.readers.rtstruct import read_rtstruct
from sources.base import SourceAdapter
from sources.layouts import Layout3D
from sources.terms import card_terms_known, label_table

T = TypeVar("T")

# SNOMED CT / SNOMED-RT codes of common segmented structures -> canonical term.  Card ``labels``
# override and extend this table.
DEFAULT_CODES: dict[str, str] = {
    "SCT:10200004": "liver", "SRT:T-62000": "liver",
    "SCT:78961009": "spleen", "SRT:T-C3000": "spleen",
    "SCT:64033007": "kidney", "SRT:T-71000": "kidney",
    "SCT:15776009": "pancreas", "SRT:T-65000": "pancreas",
    "SCT:28231008": "gallbladder", "SRT:T-63000": "gallbladder",
    "SCT:69695003": "stomach", "SRT:T-57000": "stomach",
    "SCT:15825003": "aorta", "SRT:T-42000": "aorta",
    "SCT:80891009": "heart", "SRT:T-32000": "heart",
    "SCT:39607008": "lung", "SRT:T-28000": "lung",
    "SCT:2748008": "spinal_cord", "SRT:T-A7010": "spinal_cord",
    "SCT:89837001": "urinary_bladder", "SRT:T-74000": "urinary_bladder",
    "SCT:41216001": "prostate", "SRT:T-92000": "prostate",
    "SCT:12738006": "brain", "SRT:T-A0100": "brain",
}
_MODALITY = {"PT": "PET", "MR": "MR", "CT": "CT", "NM": "NM", "US": "US"}


class _Case(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    series: str = Field(description="folder (or file glob) of the image series, relative to the root")
    patient: str | None = None

    @field_validator("id", "patient", mode="before")
    @classmethod
    def _text(cls, v: object) -> object:
        return str(v) if isinstance(v, int) else v


class SegCase(_Case):
    seg: str


class RtstructCase(_Case):
    rtstruct: str


class LabelsCase(_Case):
    labels: str


class DicomSegLayout(Layout3D):
    """CT/MR DICOM series + DICOM-SEG: scan mode (every SEG under `scan` is a case) or explicit `cases`."""

    cases: list[SegCase] | None = Field(None, description="explicit cases [{id, series, seg, patient}]")
    scan: str = Field(".", description="scan mode: folder under the root indexed header-only")


class DicomRtstructLayout(Layout3D):
    """CT/MR DICOM series + RT Structure Set: scan mode or explicit `cases`."""

    cases: list[RtstructCase] | None = Field(None, description="explicit cases [{id, series, rtstruct, patient}]")
    scan: str = Field(".", description="scan mode: folder under the root indexed header-only")


class DicomNiftiLabelsLayout(Layout3D):
    """CT/MR DICOM series + NIfTI integer label map (explicit `cases` only)."""

    cases: list[LabelsCase] = Field(description="explicit cases [{id, series, labels, patient}]")


def _safe_id(rel: str) -> str:
    stem = re.sub(r"\.(dcm|dicom|ima)$", "", rel, flags=re.I)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem.replace("/", "__")).strip("_") or "case"


class _DicomBase(SourceAdapter):
    """Shared discover/load plumbing: a series plus one annotation file per case."""

    role: str = ""  # "seg" / "rtstruct" / "labels"

    @staticmethod
    def _named(items: Iterable[tuple[int, T]], term_of: Callable[[T], str | None],
               skipped: Callable[[int, T], str], notes: list[str]) -> dict[int, str]:
        """Number -> term for every item (segment, ROI, label id) with a term; a note for each without."""
        names: dict[int, str] = {}
        for n, item in items:
            term = term_of(item)
            if term is None:
                notes.append(skipped(n, item))
            else:
                names[n] = term
        return names

    # discovery ---------------------------------------------------------------------------------
    def discover(self) -> list[CaseRef]:
        cases = self.layout.cases
        refs = [self._explicit(c) for c in cases] if cases is not None else self._scan()
        return sorted(refs, key=lambda r: r.case_id)

    def _series_files(self, spec: str) -> list[Path]:
        p = self.root / spec
        if p.is_dir() or p.is_file():
            return list_files(p)
        return [q for q in self.glob(spec)]

    def _explicit(self, c: _Case) -> CaseRef:
        cid = c.id
        ann = self.root / getattr(c, self.role)
        files = self._series_files(c.series)
        patient = c.patient or self._patient(cid, ann, files)
        return CaseRef(
            source=self.card.name,
            case_id=cid,
            patient_id=patient,
            paths={self.role: str(ann)},
            official_split=self.official_split(ann.as_posix(), cid),
            extra={"files": [str(f) for f in files], "series_dir": str(self.root / c.series)},
        )

    def _patient(self, cid: str, ann: Path, files: list[Path], dicom_pid: str | None = None) -> str:
        if self.layout.patient_regex:
            return self.patient_of(cid, ann.as_posix())
        if dicom_pid is None and files:
            from pipeline.ingest.readers.dicom import read_file_info

            try:
                dicom_pid = read_file_info(files[0]).patient_id
            except ReadError:
                dicom_pid = None
        return dicom_pid or cid

    def _index(self) -> DicomIndex:
        scan = self.root / self.layout.scan
        if not scan.exists():
            raise ValueError(f"card {self.card.name}: scan folder {shown(scan)} does not exist (layout.scan / root)")
        return index_dicom(scan)

    def _scan(self) -> list[CaseRef]:
        idx = self._index()
        anns = idx.segs if self.role == "seg" else idx.rtstructs
        by_sop: dict[str, str] = {}
        for series_uid, g in idx.series.items():
            for f in g.files:
                by_sop[f.sop_uid] = series_uid
        refs = []
        for h in anns:
            uid: str | None = next((u for u in h.referenced_series_uids if u in idx.series), None)
            if uid is None:
                uid = next((by_sop[s] for s in h.referenced_sop_uids if s in by_sop), None)
            ann = Path(h.path)
            rel = ann.relative_to(self.root).as_posix()
            cid = _safe_id(rel)
            group = idx.series.get(uid) if uid else None
            files = [Path(f.path) for f in group.files] if group else []
            series_dir = Path(_common_dir(files)) if files else ann.parent
            refs.append(
                CaseRef(
                    source=self.card.name,
                    case_id=cid,
                    patient_id=self._patient(cid, ann, files, group.patient_id if group else None),
                    paths={self.role: str(ann)},
                    official_split=self.official_split(rel, cid),
                    extra={"files": [str(f) for f in files], "series_dir": str(series_dir), "damaged": []},
                )
            )
        return refs + self._attach_damaged(idx, refs)

    def _attach_damaged(self, idx: DicomIndex, refs: list[CaseRef]) -> list[CaseRef]:
        """A DICOM file that cannot be read fails the cases whose series folder holds it; one in no
        case's folder (a damaged annotation, say) becomes a case of its own that fails: never silent."""
        orphans = []
        for path, reason in idx.damaged:
            folder = str(Path(path).parent)
            owners = [r for r in refs if folder in {str(Path(f).parent) for f in r.extra["files"]}]
            for r in owners:
                r.extra["damaged"].append([path, reason])
            if not owners:
                rel = Path(path).relative_to(self.root).as_posix()
                orphans.append(CaseRef(source=self.card.name, case_id=_safe_id(rel), patient_id=_safe_id(rel),
                                       paths={self.role: path}, extra={"files": [], "damaged": [[path, reason]]}))
        return orphans

    # loading -----------------------------------------------------------------------------------
    def _read_series(self, ref: CaseRef) -> DicomSeries:
        for path, reason in ref.extra.get("damaged") or []:
            raise damaged_file_error(path, reason)
        files = ref.extra.get("files") or []
        if not files:
            raise ReadError(
                f"no image series found for {Path(ref.paths[self.role]).name} under {self.root.name}",
                file=ref.paths[self.role],
                hint="the series it references is not in the dataset folder; download it next to the annotation",
            )
        series = read_series(files)
        if series.modality == "PT":
            self._pet_values(series)
        return series

    def _pet_values(self, series: DicomSeries) -> None:
        """PET values in SUV, checked against the headers (pipeline/ingest/readers/pet.py): SUV as stored is
        used as it is; Bq/ml only with the card's ``intensity.suv_conversion``; anything else fails the case."""
        facts = read_pet_facts(list(dict.fromkeys(series.files)))
        series.array, notes, info = to_suv(series.array, facts, self.card.intensity.suv_conversion)
        series.notes.extend(notes)
        series.value_facts.update(info)

    def _study(self, ref: CaseRef, series: DicomSeries, layers: list[LabelLayer], notes: list[str]) -> Study:
        vol, geom = series.to_canonical()
        attrs = self.case_attrs(ref.case_id)
        modality = _MODALITY.get(series.modality, attrs["modality"]) if series.modality else attrs["modality"]
        # origin_mm: LPS coordinates of voxel (0,0,0) listed per canonical axis (S, P, L) = (z, y, x), so that
        # origin_mm[a] + i * spacing[a] is the position of slice i along axis a (pipeline.ingest.convert)
        ras0 = geom.affine[:3, 3]
        return Study(
            ref=ref,
            modality=modality,
            image=vol,
            spacing=geom.spacing,
            is_3d=True,
            layers=layers,
            origin_mm=(float(ras0[2]), float(-ras0[1]), float(-ras0[0])),
            intensity_preset=self.card.intensity.preset,
            rescaled=series.rescaled or modality == "CT",
            notes=list(series.notes) + notes,
            transform={
                "reader": "dicom_series",
                "source_orientation": "".join(geom.source_codes),
                "canonical": "SPL",
                "oblique_deg": round(geom.oblique_deg, 3),
                "spacing_mm": [round(s, 4) for s in geom.spacing],
                "slices": int(series.shape[0]),
                "body_region": attrs["body_region"],
                "annotation": self.role,
                **series.value_facts,
            },
        )

    def _layers(self, series: DicomSeries, packed: list[np.ndarray], packed_ids: list[list[int]],
                names: dict[int, str], origin: str) -> list[LabelLayer]:
        out = []
        for arr, ids in zip(packed, packed_ids, strict=True):
            keep = {i: names[i] for i in ids if i in names}
            if not keep:
                continue
            drop = [i for i in ids if i not in names]
            if drop:
                arr = np.where(np.isin(arr, drop), 0, arr).astype(arr.dtype)
            canon, _ = series.to_canonical(arr)
            out.append(LabelLayer(canon, keep, origin=origin))
        return out


def _common_dir(files: list[Path]) -> str:
    import os

    return os.path.commonpath([str(f.parent) for f in files])


class DicomSegAdapter(_DicomBase):
    name = "dicom_seg"
    formats = ("dicom", "dicom-seg")
    description = "CT/MR DICOM series + DICOM-SEG (binary/fractional/labelmap; frames mapped by UID or position)"
    role = "seg"
    layout_model = DicomSegLayout

    def segment_term(self, seg) -> str | None:
        table = {**DEFAULT_CODES, **label_table(self.card)}
        term = None
        for key in seg.code_keys():
            if key in table:
                term = table[key]
                break
        if term is not None:
            lat = seg.laterality
            sided = f"{term}_{lat}"
            if lat and not re.search(r"(^|_)(left|right)(_|$)", term) and sided in card_terms_known(self.card):
                term = sided  # without a sided term the side is noted by load()
            return term
        for text in (seg.label, seg.property_type.meaning if seg.property_type else ""):
            if text:
                term = self.term_for(text)
                if term is not None:
                    return term
        return None

    def load(self, ref: CaseRef) -> Study:
        series = self._read_series(ref)
        vol = read_seg(ref.paths["seg"], series)
        notes = list(vol.notes)
        names = self._named(
            sorted(vol.header.segments.items()), self.segment_term,
            lambda n, seg: (f"segment {n} ({seg.label!r}, {seg.property_type.key if seg.property_type else 'no code'}"
                            f") has no term in card {self.card.name}; skipped"), notes)
        for n, term in names.items():
            seg = vol.header.segments[n]
            if seg.laterality and not re.search(r"(^|_)(left|right)(_|$)", term):
                notes.append(f"segment {n} ({seg.label!r}) is {seg.laterality}, but term {term!r} has no "
                             f"{term}_{seg.laterality}; emitted as {term!r}")
        layers = self._layers(series, vol.layers, vol.layer_segments, names, ref.paths["seg"])
        if not layers:
            raise ReadError(
                f"{Path(ref.paths['seg']).name}: no segment maps to a term of card {self.card.name} (segments: "
                + ", ".join(f"{n} {s.label!r} {s.property_type.key if s.property_type else ''}"
                            for n, s in vol.header.segments.items()) + ")",
                file=ref.paths["seg"],
                hint="add the segment codes (e.g. 'SCT:10200004': liver) or labels to the card's labels",
            )
        if vol.overlaps:
            notes.append(f"overlapping segments {vol.overlaps}: stored as {len(layers)} label layers")
        return self._study(ref, series, layers, notes)


class DicomRtstructAdapter(_DicomBase):
    name = "dicom_rtstruct"
    formats = ("dicom", "rtstruct")
    description = "CT/MR DICOM series + RT Structure Set (closed planar contours, even-odd fill)"
    role = "rtstruct"
    layout_model = DicomRtstructLayout

    def roi_term(self, roi) -> str | None:
        term = self.term_for(roi.name)
        if term is None and roi.code is not None:
            table = {**DEFAULT_CODES, **label_table(self.card)}
            term = table.get(roi.code.key) or self.term_for(roi.code.meaning)
        return term

    def load(self, ref: CaseRef) -> Study:
        series = self._read_series(ref)
        from pipeline.ingest.readers.rtstruct import read_rtstruct_header

        hdr = read_rtstruct_header(ref.paths["rtstruct"])
        notes: list[str] = []
        names = self._named(sorted(hdr.rois.items()), self.roi_term,
                            lambda n, roi: f"ROI {roi.name!r} has no term in card {self.card.name}; skipped", notes)
        if not names:
            raise ReadError(
                f"{Path(ref.paths['rtstruct']).name}: no ROI maps to a term of card {self.card.name} "
                f"(ROIs: {', '.join(r.name for r in hdr.rois.values())})",
                file=ref.paths["rtstruct"], hint="add the ROI names to the card's labels")
        vol = read_rtstruct(ref.paths["rtstruct"], series, rois=sorted(names))
        notes.extend(vol.notes)
        layers = self._layers(series, vol.layers, vol.layer_rois, names, ref.paths["rtstruct"])
        if not layers:
            raise ReadError(f"{Path(ref.paths['rtstruct']).name}: no named ROI has a closed contour on the series",
                            file=ref.paths["rtstruct"], hint="the contours lie outside the series")
        return self._study(ref, series, layers, notes)


class DicomNiftiLabelsAdapter(_DicomBase):
    name = "dicom_nifti_labels"
    formats = ("dicom", "nifti")
    description = "CT/MR DICOM series + NIfTI integer label map (aligned in physical space)"
    role = "labels"
    layout_model = DicomNiftiLabelsLayout

    def load(self, ref: CaseRef) -> Study:
        series = self._read_series(ref)
        header_notes: list[str] = []
        labels, lab_aff = read_nifti(ref.paths["labels"], integer_labels=True, notes=header_notes)
        arr, note = align_labels_to_image(labels, lab_aff, series.shape, series.affine_ras,
                                          label_file=ref.paths["labels"], image_file=series.files[0])
        m = np.linalg.inv(lab_aff) @ series.affine_ras
        exact = (np.allclose(m[:3, :3], np.round(m[:3, :3]), atol=1e-4)
                 and np.allclose(m[:3, 3], np.round(m[:3, 3]), atol=1e-3))
        notes = header_notes + [f"label map {Path(ref.paths['labels']).name} reoriented onto the series grid (exact "
                                "voxel match)" if exact else note]
        label_file = Path(ref.paths["labels"]).name
        names = self._named(((int(v), str(v)) for v in np.unique(arr).tolist() if v != 0), self.term_for,
                            lambda v, _: f"label id {v} in {label_file} has no term in card {self.card.name}", notes)
        if not names:
            raise ReadError(f"{Path(ref.paths['labels']).name}: no label id maps to a term of card {self.card.name}",
                            file=ref.paths["labels"], hint="check the card's labels against the label file")
        canon, _ = series.to_canonical(arr)
        return self._study(ref, series, [LabelLayer(canon, names, origin=ref.paths["labels"])], notes)
