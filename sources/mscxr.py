"""MS-CXR phrase grounding (``mscxr_csv``): radiologist-verified report phrases with boxes on MIMIC-CXR-JPG.

The release (PhysioNet, ``physionet.org/content/ms-cxr``, credentialed) is one CSV,
``MS_CXR_Local_Alignment_v1.1.0.csv`` (v1.0.0 without the last column):

``dicom_id, category_name, label_text, path, x, y, w, h, image_width, image_height, split``

* one row per box; a phrase (``label_text``) with several boxes has several rows with the same phrase;
* ``category_name`` is one of eight findings (Atelectasis, Cardiomegaly, Consolidation, Edema, Lung Opacity,
  Pleural Effusion, Pneumonia, Pneumothorax) -> the card's ``labels``;
* ``x, y, w, h`` are the box's top-left corner, width and height in pixels of the **original** image, whose size
  is ``image_width`` x ``image_height``: on a resized copy of the JPG the box is scaled by the ratio of sizes;
* ``path`` is the image relative to the MIMIC-CXR-JPG root: ``files/p10/p10xxxxxx/sXXXXXXXX/<dicom_id>.jpg``
  (the patient is the ``p`` folder with 8 digits);
* ``split`` (v1.1.0): train / val / test.

One case per image (``dicom_id``).  The phrase is the region's report sentence (cleaned: capitalised, closing
full stop); phrases of one finding on one image are joined.  Layout (card ``layout``): ``csv`` (default
``MS_CXR_Local_Alignment_v1.1.0.csv``), ``images`` (the MIMIC-CXR-JPG folder that holds ``files/``; default
``mimic-cxr-jpg``).
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from pipeline.core.paths import shown
from pipeline.core.types import CaseRef, PixelBoxAnnotation, RegionSentence, Study
from pipeline.ingest.readers import ReadError
from pipeline.language.report_text import clean_sentence
from pydantic import Field

from sources.layouts import LayoutBase
from sources.reports import ReportAdapter

COLUMNS = ("dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h", "image_width", "image_height")
_SPLIT = {"train": "train", "val": "validation", "test": "test"}
_PATIENT = re.compile(r"/p(\d{8})/")


class MsCxrLayout(LayoutBase):
    """MS-CXR's MS_CXR_Local_Alignment_v1.x.csv on MIMIC-CXR-JPG images."""

    csv: str = Field("MS_CXR_Local_Alignment_v1.1.0.csv", description="the MS-CXR CSV, relative to the root")
    images: str = Field("mimic-cxr-jpg", description="the MIMIC-CXR-JPG folder holding files/ (the CSV's path)")


class MsCxrAdapter(ReportAdapter):
    name = "mscxr_csv"
    formats = ("csv",)
    description = "MS-CXR phrase grounding CSV (MS_CXR_Local_Alignment_v1.x.csv) on MIMIC-CXR-JPG images"
    layout_model = MsCxrLayout

    def discover(self) -> list[CaseRef]:
        table = self.root / self.layout.csv
        if not table.is_file():
            raise ReadError(f"MS-CXR table {shown(table)} not found", file=str(table),
                            hint="download MS_CXR_Local_Alignment_v1.1.0.csv from PhysioNet (ms-cxr) into the root")
        text = table.read_bytes().decode("utf-8-sig")
        reader = csv.DictReader(io.StringIO(text))
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ReadError(f"{table.name}: columns {missing} missing (header {reader.fieldnames})", file=str(table),
                            hint="this adapter reads the MS-CXR local alignment CSV as published (v1.0.0 / v1.1.0)")
        images = self.root / self.layout.images
        by_image: dict[str, list[dict[str, str]]] = {}
        for i, row in enumerate(reader, start=2):
            by_image.setdefault(row["dicom_id"], []).append({**{k: row.get(k) or "" for k in (*COLUMNS, "split")},
                                                             "line": str(i)})
        refs = []
        for dicom_id, rows in by_image.items():
            path = rows[0]["path"]
            m = _PATIENT.search("/" + path)
            refs.append(CaseRef(
                source=self.card.name, case_id=dicom_id, patient_id=m.group(1) if m else dicom_id,
                paths={"image": str(images / path)},
                official_split=_SPLIT.get(rows[0]["split"].lower()) if rows[0]["split"] else None,
                extra={"rows": rows, "table": table.name, "files": self.report_files()},
            ))
        return sorted(refs, key=lambda r: r.case_id)

    def report_sentences(self, ref: CaseRef) -> list[tuple[str, str]]:
        texts = (clean_sentence(r["label_text"], self.report_lang) for r in ref.extra["rows"])
        return [(self.report_lang, t) for t in dict.fromkeys(texts) if t]

    def load(self, ref: CaseRef) -> Study:
        path, table = Path(ref.paths["image"]), ref.extra["table"]
        image = self.read_mimic_image(path, table)
        h, w = image.shape[:2]
        notes: list[str] = []
        boxes: list[PixelBoxAnnotation] = []
        report: list[RegionSentence] = []
        for r in ref.extra["rows"]:
            where = f"{table} line {r['line']}"
            try:
                x, y, bw, bh = (float(r[k]) for k in ("x", "y", "w", "h"))
                ow, oh = float(r["image_width"]), float(r["image_height"])
            except ValueError:
                raise ReadError(f"{where}: x, y, w, h, image_width, image_height must be numbers", file=table,
                                hint="fix that row") from None
            if bw <= 0 or bh <= 0 or ow <= 0 or oh <= 0:
                raise ReadError(f"{where}: empty box or image size", file=table, hint="fix that row")
            term = self.term_for(r["category_name"])
            if term is None:
                notes.append(f"{where}: category {r['category_name']!r} has no term in card {self.card.name}; skipped")
                continue
            sent = self.sentence(term, r["label_text"], where, notes)
            if sent is None or self.negated_finding(term, sent.text[sent.lang], sent.lang):
                continue
            sx, sy = w / ow, h / oh  # boxes are given in pixels of the original image (image_width x image_height)
            x0, y0 = x * sx, y * sy
            x1, y1 = min((x + bw) * sx - 1.0, w - 1.0), min((y + bh) * sy - 1.0, h - 1.0)
            boxes.append(PixelBoxAnnotation(term, (max(0.0, x0), max(0.0, y0), x1, y1)))
            if all(s.text != sent.text or s.term != term for s in report):
                report.append(sent)
        first = ref.extra["rows"][0]
        if (w, h) != (round(float(first["image_width"])), round(float(first["image_height"]))):
            notes.append(f"image {path.name} is {w}x{h}; MS-CXR boxes are given for the original size: scaled")
        if not boxes:
            raise ReadError(f"{table}: no box of image {path.name} has a category with a term in card {self.card.name}",
                            file=table, hint="add the categories to the card's labels")
        study = self.study_2d(ref, image, [], notes, boxes, box_convention="x,y,w,h of the original image, scaled")
        study.report = report
        return study
