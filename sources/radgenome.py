"""RadGenome-ChestCT (``radgenome_ct``): CT-RATE chest CT volumes with region-level report sentences and
per-volume anatomy masks.

The release (Hugging Face ``RadGenome/RadGenome-ChestCT``, gated; volumes from CT-RATE) lays out:

* ``dataset/radgenome_files/{train,validation}_region_report.csv`` -- columns ``Volumename, Anatomy, Sentence``:
  one row per report sentence, ``Volumename`` the CT-RATE file name (``valid_12_a_1.nii.gz``: patient
  ``valid_12``, scan ``a``, reconstruction ``1``), ``Anatomy`` the region as a path of the report hierarchy
  (``lung``, ``lung/lung/right lung/right lung upper lobe``, ``heart/heart/heart tissue``, ``mediastinum/aorta``,
  ``others/thoracic cavity``) or empty for the whole scan;
* ``dataset/{train,valid}_preprocessed/<patient>/<patient><scan>/<Volumename>`` -- the NIfTI volumes;
* ``{train,valid}_anatomy_mask/seg_<volume stem>/<anatomy>.nii.gz`` -- one binary mask per anatomy, named by the
  **last** element of the ``Anatomy`` path; ``{train,valid}_region_mask/seg_<volume stem>/<region>.nii.gz`` -- one
  per top-level region (the **first** element), used when the anatomy mask is absent (the dataset's own loader
  does the same).

A region is grounded by its mask: the sentence goes to the mask's term (card ``labels``: anatomy name -> term);
``others``, the whole scan and names without a term are skipped with a note.  Slices are chosen where the masks
are (the pipeline's slicing over the label layers), and boxes come from the masks on each display slice.
Layout (card ``layout``): ``report_csv``, ``volumes``, ``anatomy_masks``, ``region_masks`` (paths relative to the
root) and ``split`` (the official split of these volumes: train / validation).
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pipeline.core.paths import shown
from pipeline.core.types import CaseRef, LabelLayer, RegionSentence, Study
from pipeline.ingest.readers import ReadError
from pipeline.language.report_text import clean_sentence
from pydantic import Field

from sources.layouts import Layout3D
from sources.reports import ReportAdapter

COLUMNS = ("Volumename", "Anatomy", "Sentence")
_VOLUME = re.compile(r"^(?P<patient>(?:train|valid)_\d+)_(?P<scan>[a-z]+)_(?P<rec>\d+)\.nii(?:\.gz)?$")
_UNGROUNDED = {"", "others", "whole scan"}


def _stem(volume: str) -> str:
    return re.sub(r"\.nii(\.gz)?$", "", volume)


class RadGenomeLayout(Layout3D):
    """RadGenome-ChestCT: region report CSV, CT-RATE volumes, anatomy and region masks."""

    report_csv: str = Field("dataset/radgenome_files/validation_region_report.csv",
                            description="the <split>_region_report.csv (Volumename, Anatomy, Sentence)")
    volumes: str = Field("dataset/valid_preprocessed", description="<patient>/<patient><scan>/<Volumename> below it")
    anatomy_masks: str = Field("valid_anatomy_mask", description="seg_<volume stem>/<anatomy>.nii.gz below it")
    region_masks: str = Field("valid_region_mask", description="seg_<volume stem>/<region>.nii.gz (fallback)")
    split: Literal["train", "validation", "test"] | None = Field(None, description="the official split of the volumes")


class RadGenomeAdapter(ReportAdapter):
    name = "radgenome_ct"
    formats = ("nifti", "csv")
    description = "RadGenome-ChestCT: CT-RATE volumes + region report CSV (Volumename, Anatomy, Sentence) + masks"
    layout_model = RadGenomeLayout

    def _dir(self, key: str, default: str) -> Path:
        return self.root / str(getattr(self.layout, key, None) or default)

    def volume_path(self, volume: str) -> Path:
        m = _VOLUME.match(volume)
        base = self._dir("volumes", "dataset/valid_preprocessed")
        if m is None:
            return base / volume
        return base / m["patient"] / f"{m['patient']}{m['scan']}" / volume

    def mask_path(self, volume: str, anatomy: str) -> Path | None:
        """The anatomy mask of the path's last element, else the region mask of its first element."""
        parts = [p.strip() for p in anatomy.split("/") if p.strip()]
        seg = "seg_" + _stem(volume)
        for folder, name in (("anatomy_masks", parts[-1]), ("region_masks", parts[0])):
            default = "valid_anatomy_mask" if folder == "anatomy_masks" else "valid_region_mask"
            p = self._dir(folder, default) / seg / f"{name}.nii.gz"
            if p.is_file():
                return p
        return None

    def discover(self) -> list[CaseRef]:
        table = self._dir("report_csv", "dataset/radgenome_files/validation_region_report.csv")
        if not table.is_file():
            raise ReadError(f"region report CSV {shown(table)} not found", file=str(table),
                            hint="set layout.report_csv to radgenome_files/<split>_region_report.csv")
        reader = csv.DictReader(io.StringIO(table.read_bytes().decode("utf-8-sig")))
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ReadError(f"{table.name}: columns {missing} missing (header {reader.fieldnames})", file=str(table),
                            hint="this adapter reads RadGenome's <split>_region_report.csv as published")
        by_volume: dict[str, list[dict[str, str]]] = {}
        for i, row in enumerate(reader, start=2):
            by_volume.setdefault(row["Volumename"].strip(), []).append(
                {"anatomy": (row.get("Anatomy") or "").strip(), "sentence": row.get("Sentence") or "", "line": str(i)})
        split = self.layout.split
        refs = []
        for volume, rows in by_volume.items():
            m = _VOLUME.match(volume)
            masks = sorted({str(p) for r in rows if r["anatomy"] and (p := self.mask_path(volume, r["anatomy"]))})
            refs.append(CaseRef(
                source=self.card.name, case_id=_stem(volume), patient_id=m["patient"] if m else _stem(volume),
                paths={"image": str(self.volume_path(volume))}, official_split=split,
                extra={"rows": rows, "table": table.name, "volume": volume, "files": masks + self.report_files()},
            ))
        return sorted(refs, key=lambda r: r.case_id)

    def report_sentences(self, ref: CaseRef) -> list[tuple[str, str]]:
        texts = (clean_sentence(r["sentence"], self.report_lang) for r in ref.extra["rows"]
                 if r["anatomy"].split("/")[0].strip() not in _UNGROUNDED)
        return [(self.report_lang, t) for t in dict.fromkeys(texts) if t]

    def _grounded(self, ref: CaseRef, notes: list[str]) -> dict[str, tuple[str, Path, list[dict[str, str]]]]:
        """anatomy node -> (term, mask file, rows) of the rows that can be grounded."""
        out: dict[str, tuple[str, Path, list[dict[str, str]]]] = {}
        volume, table = ref.extra["volume"], ref.extra["table"]
        for r in ref.extra["rows"]:
            parts = [p.strip() for p in r["anatomy"].split("/") if p.strip()]
            where = f"{table} line {r['line']}"
            if not parts or parts[0] in _UNGROUNDED or parts[-1] in _UNGROUNDED:
                notes.append(f"{where}: anatomy {r['anatomy'] or '(whole scan)'!r} has no mask; sentence not grounded")
                continue
            node = parts[-1]
            term = self.term_for(node)
            mask = self.mask_path(volume, r["anatomy"])
            if term is None or mask is None:
                why = f"has no term in card {self.card.name}" if term is None else "has no mask file"
                notes.append(f"{where}: anatomy {node!r} {why}; sentence not grounded")
                continue
            out.setdefault(node, (term, mask, []))[2].append(r)
        return out

    def load(self, ref: CaseRef) -> Study:
        from pipeline.ingest.align import align_labels_to_image
        from pipeline.ingest.geometry import to_canonical
        from pipeline.ingest.readers.nifti import read_nifti

        notes: list[str] = []
        image, aff = read_nifti(ref.paths["image"], notes=notes)
        vol, geom = to_canonical(image, aff)
        layers: list[LabelLayer] = []
        report: list[RegionSentence] = []
        for node, (term, mask_file, rows) in self._grounded(ref, notes).items():
            mask, maff = read_nifti(mask_file, integer_labels=True, notes=notes)
            if mask.shape != image.shape or not np.allclose(maff, aff, atol=1e-3):
                mask, note = align_labels_to_image(mask, maff, image.shape, aff, label_file=str(mask_file))
                notes.append(note)
            if not (mask > 0).any():
                notes.append(f"mask {mask_file.name} of {node!r} is empty; its sentences are not grounded")
                continue
            layers.append(LabelLayer(to_canonical((mask > 0).astype(np.uint8), aff)[0], {1: term},
                                     origin=str(mask_file)))
            for r in rows:
                sent = self.sentence(term, r["sentence"], f"{ref.extra['table']} line {r['line']}", notes)
                if sent is not None and all(s.text != sent.text or s.term != term for s in report):
                    report.append(sent)
        if not layers:
            raise ReadError(f"{ref.extra['table']}: no sentence of {ref.extra['volume']} has a mask with a term",
                            file=ref.paths["image"], hint="check the mask folders (layout) and the card's labels")
        return self._study(ref, vol, geom, layers, notes, report)

    def _study(self, ref: CaseRef, vol: np.ndarray, geom: Any, layers: list[LabelLayer], notes: list[str],
               report: list[Any]) -> Study:
        return Study(ref=ref, modality=self.card.modality, image=vol, spacing=geom.spacing, is_3d=True, layers=layers,
                     intensity_preset=self.card.intensity.preset, notes=notes, report=report,
                     transform={"source_orientation": "".join(geom.source_codes), "canonical": "SPL",
                                "oblique_deg": round(geom.oblique_deg, 3),
                                "spacing_mm": [round(s, 4) for s in geom.spacing]})
