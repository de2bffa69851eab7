"""Chest ImaGenome scene graphs (``imagenome_scene_graph``): anatomical boxes on MIMIC-CXR-JPG with the report
phrases that describe each of them.

The release (PhysioNet, ``physionet.org/content/chest-imagenome``, credentialed) holds one JSON per frontal image,
``silver_dataset/scene_graph/<dicom_id>_SceneGraph.json``:

* ``image_id`` (the MIMIC-CXR ``dicom_id``), ``patient_id``, ``study_id`` (the image is
  ``files/p<first two digits>/p<patient_id>/s<study_id>/<image_id>.jpg`` under MIMIC-CXR-JPG), ``viewpoint``;
* ``objects``: one per anatomical region, ``bbox_name`` (e.g. ``right lower lung zone``) with
  ``original_x1, original_y1, original_x2, original_y2`` -- the box corners in pixels of the original image
  (the MIMIC-CXR-JPG files keep that size) -- beside ``x1..y2`` on a 224-pixel resize, which is not used;
  the corners are read as a half-open box (``x2`` is the first column past it); boxes that are empty or outside
  the image are skipped with a note (the dataset has some);
* ``attributes``: one per described region, ``bbox_name``, ``phrases`` (the report sentences about it) and
  ``attributes`` -- one list per phrase of ``category|yes/no|name`` findings (``anatomicalfinding|no|pneumothorax``,
  ``disease|yes|pneumonia``, ``nlp|yes|abnormal``).  A phrase whose findings are all ``no`` is negated; it stays
  with its (anatomical) region.

The regions are the dataset's own 29 box names, mapped to glossary terms by the card's ``labels``;
``layout.regions: medrega12`` keeps MedRegA's 12 (left/right lung, mediastinum, cardiac silhouette, left/right
hilar structures, left/right clavicle, left/right hemidiaphragm, right atrium, abdomen).  A region with phrases
gets them as its report sentence; regions without phrases still give boxes for region->text / text->region.

Layout (card ``layout``): ``scene_graphs`` (default ``silver_dataset/scene_graph``), ``images`` (the
MIMIC-CXR-JPG folder holding ``files/``; default ``mimic-cxr-jpg``), ``splits`` (default
``silver_dataset/splits``: ``train.csv``, ``valid.csv``, ``test.csv`` with a ``dicom_id`` column; used when
present), ``regions`` (``all`` or ``medrega12``).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Literal

import orjson

from pipeline.core.paths import shown
from pipeline.core.types import CaseRef, PixelBoxAnnotation, RegionSentence, Study
from pipeline.ingest.readers import ReadError
from pipeline.language.report_text import clean_sentence
from pydantic import Field

from sources.layouts import LayoutBase
from sources.reports import ReportAdapter

MEDREGA_12 = (
    "left lung", "right lung", "mediastinum", "cardiac silhouette", "left hilar structures", "right hilar structures",
    "left clavicle", "right clavicle", "left hemidiaphragm", "right hemidiaphragm", "right atrium", "abdomen",
)
_SPLIT_FILES = {"train.csv": "train", "valid.csv": "validation", "test.csv": "test"}
_SUFFIX = "_SceneGraph.json"


def _phrase_negated(attrs: list[str]) -> bool:
    """A phrase whose finding attributes are all ``no`` (and there is one) states absences only."""
    found = [a.split("|") for a in attrs if isinstance(a, str) and a.count("|") == 2 and not a.startswith("nlp|")]
    return bool(found) and all(f[1] == "no" for f in found)


class ImaGenomeLayout(LayoutBase):
    """Chest ImaGenome scene graphs on MIMIC-CXR-JPG images."""

    scene_graphs: str = Field("silver_dataset/scene_graph", description="folder of <dicom_id>_SceneGraph.json")
    splits: str = Field("silver_dataset/splits", description="train.csv / valid.csv / test.csv (dicom_id), if present")
    images: str = Field("mimic-cxr-jpg", description="the MIMIC-CXR-JPG folder holding files/")
    regions: Literal["all", "medrega12"] = Field(
        "all", description="all: the dataset's 29 box names; medrega12: MedRegA's 12 chest X-ray regions")


class ImaGenomeAdapter(ReportAdapter):
    name = "imagenome_scene_graph"
    formats = ("json",)
    description = "Chest ImaGenome scene graphs (<dicom_id>_SceneGraph.json): anatomical boxes + report phrases"
    layout_model = ImaGenomeLayout

    def _splits(self) -> dict[str, str]:
        folder = self.root / self.layout.splits
        out: dict[str, str] = {}
        for name, split in _SPLIT_FILES.items():
            f = folder / name
            if f.is_file():
                for row in csv.DictReader(io.StringIO(f.read_bytes().decode("utf-8-sig"))):
                    key = (row.get("dicom_id") or row.get("image_id") or "").removesuffix(".dcm")
                    if key:
                        out[key] = split
        return out

    def discover(self) -> list[CaseRef]:
        folder = self.root / self.layout.scene_graphs
        files = sorted(folder.glob("*" + _SUFFIX)) if folder.is_dir() else []
        if not files:
            raise ReadError(f"no *{_SUFFIX} under {shown(folder)}", file=str(folder),
                            hint="point layout.scene_graphs at chest-imagenome's silver_dataset/scene_graph")
        splits = self._splits()
        images = self.root / self.layout.images
        refs = []
        for f in files:
            head = self._read(f)
            image_id = str(head.get("image_id") or f.name[: -len(_SUFFIX)])
            patient, study = str(head.get("patient_id", "")), str(head.get("study_id", ""))
            rel = f"files/p{patient[:2]}/p{patient}/s{study}/{image_id}.jpg"
            refs.append(CaseRef(
                source=self.card.name, case_id=image_id, patient_id=patient or image_id,
                paths={"image": str(images / rel), "scene_graph": str(f)},
                official_split=splits.get(image_id), extra={"files": self.report_files()},
            ))
        return sorted(refs, key=lambda r: r.case_id)

    def _read(self, path: Path) -> dict[str, Any]:
        try:
            doc = orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError as exc:
            raise ReadError(f"{path.name}: not JSON ({exc})", file=str(path),
                            hint="re-download the scene graph") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("objects"), list):
            raise ReadError(f"{path.name}: no `objects` list", file=str(path),
                            hint="this adapter reads Chest ImaGenome's scene_graph JSON as published")
        return doc

    def _wanted(self, bbox_name: str) -> bool:
        return self.layout.regions == "all" or bbox_name in MEDREGA_12

    def _phrases(self, doc: dict[str, Any]) -> list[tuple[str, str, bool]]:
        """(bbox_name, phrase, negated) of every described region, in file order."""
        out = []
        for a in doc.get("attributes") or []:
            if not isinstance(a, dict):
                continue
            phrases, attrs = a.get("phrases") or [], a.get("attributes") or []
            for i, phrase in enumerate(phrases):
                negated = _phrase_negated(attrs[i] if i < len(attrs) and isinstance(attrs[i], list) else [])
                out.append((str(a.get("bbox_name", "")), str(phrase), negated))
        return out

    def report_sentences(self, ref: CaseRef) -> list[tuple[str, str]]:
        doc = self._read(Path(ref.paths["scene_graph"]))
        texts = (clean_sentence(p, self.report_lang) for name, p, _n in self._phrases(doc)
                 if self._wanted(name) and self.term_for(name))
        return [(self.report_lang, t) for t in dict.fromkeys(texts) if t]

    def load(self, ref: CaseRef) -> Study:
        sg = Path(ref.paths["scene_graph"])
        doc = self._read(sg)
        image = self.read_mimic_image(Path(ref.paths["image"]), sg.name)
        h, w = image.shape[:2]
        notes: list[str] = []
        boxes, terms = self._boxes(doc, sg.name, w, h, notes)
        report: list[RegionSentence] = []
        for name, phrase, negated in self._phrases(doc):
            if name in terms:
                sent = self.sentence(terms[name], phrase, f"{sg.name} {name}", notes, negated=negated)
                if sent is not None and all(s.text != sent.text or s.term != sent.term for s in report):
                    report.append(sent)
        if not boxes:
            raise ReadError(f"{sg.name}: no region with a usable box and a term in card {self.card.name}",
                            file=str(sg), hint="check the card's labels and layout.regions")
        study = self.study_2d(ref, image, [], notes, boxes, box_convention="original_x1..y2 corners (x2, y2 exclusive)")
        study.report = report
        return study

    def _boxes(self, doc: dict[str, Any], name: str, w: int, h: int,
               notes: list[str]) -> tuple[list[PixelBoxAnnotation], dict[str, str]]:
        boxes, terms = [], {}
        for o in doc["objects"]:
            bbox_name = str(o.get("bbox_name", ""))
            if not self._wanted(bbox_name):
                continue
            term = self.term_for(bbox_name)
            if term is None:
                notes.append(f"{name}: region {bbox_name!r} has no term in card {self.card.name}; skipped")
                continue
            try:
                x1, y1, x2, y2 = (float(o[k]) for k in ("original_x1", "original_y1", "original_x2", "original_y2"))
            except (KeyError, TypeError, ValueError):
                notes.append(f"{name}: region {bbox_name!r} has no original_x1..y2 box; skipped")
                continue
            if x2 <= x1 or y2 <= y1 or x2 <= 0 or y2 <= 0 or x1 >= w or y1 >= h:
                notes.append(f"{name}: region {bbox_name!r} box [{x1:g}, {y1:g}, {x2:g}, {y2:g}] is empty or outside "
                             f"the {w}x{h} image; skipped")
                continue
            boxes.append(PixelBoxAnnotation(term, (max(0.0, x1), max(0.0, y1), min(x2, w) - 1.0, min(y2, h) - 1.0)))
            terms[bbox_name] = term
        return boxes, terms
