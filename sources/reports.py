"""Report-grounded sources: the shared base (:class:`ReportAdapter`) and the generic report table
(``report_table``: a CSV or JSONL of image or volume, region label, box or mask, sentence).

A report-grounded study carries, besides its regions, the report's sentences tied to them
(``Study.report``: :class:`~pipeline.core.types.RegionSentence`); its grounded reports are written with those
sentences (``meta.text_source: report``, docs/language.md).  Every report adapter

* cleans each sentence (:func:`pipeline.language.report_text.clean_sentence`; a sentence with grounding markup
  is dropped with a note),
* keeps a **negated finding** out of the regions: a row whose region is a lesion/finding and whose sentence
  negates it ("No focal consolidation.") makes no box (a note says so); a negated sentence about an
  anatomical region stays with that region (``negated=True``),
* adds the accepted translations of the card's ``report.translations`` file (``medreg translate accept``),
  which is part of every case's fingerprint, so accepting a translation rebuilds the source,
* lists its sentences without reading pixels (:meth:`ReportAdapter.report_sentences`) for ``medreg translate``.

``report_table`` layout (card ``layout``)
-----------------------------------------
* ``table``: the CSV (header row) or JSONL file, relative to the root.
* ``images``: the folder image/mask paths are relative to (default: the root).
* ``columns``: column names when they differ from the defaults ``image``, ``label``, ``sentence``, ``x_min``,
  ``y_min``, ``x_max``, ``y_max``, ``mask``, ``mask_value``, ``lang``, ``patient_id``, ``split``.
* ``box_format``: ``xyxy`` (default: inclusive pixel corners ``x_min, y_min, x_max, y_max``) or ``xywh`` (top-left
  corner, width, height in pixels: ``x_max = x + w - 1``).
A row names an image (2-D: PNG/JPEG/...; 3-D: NIfTI), a region ``label`` (mapped by the card's ``labels``, or
the glossary with ``resolve_labels_with_glossary``), and a box (2-D) or a ``mask`` file (2-D image or NIfTI on
the image grid; voxels equal to ``mask_value``, default any non-zero), and its ``sentence``.  ``lang`` (``en``
/ ``zh``) defaults to the card's ``report.language``; ``split`` is the official split (train/validation/test).
Rows of one image are one case.  A bad row (no box and no mask, a negative box, an unknown language) fails its
own case with the line named.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pipeline.core.paths import shown
from pipeline.core.types import CaseRef, LabelLayer, PixelBoxAnnotation, RegionSentence, Study
from pipeline.ingest.readers import ReadError
from pipeline.language.report_text import clean_sentence, negates
from pydantic import Field

from sources.base import SourceAdapter
from sources.layouts import LayoutBase

_NIFTI = (".nii", ".nii.gz")
_COLUMNS = ("image", "label", "sentence", "x_min", "y_min", "x_max", "y_max", "mask", "mask_value", "lang",
            "patient_id", "split")
_SPLITS = {"train": "train", "val": "validation", "valid": "validation", "validation": "validation", "test": "test"}


class ReportAdapter(SourceAdapter):
    """Shared behaviour of report-grounded adapters (see the module docstring)."""

    _accepted: dict[tuple[str, str, str], str] | None = None

    @property
    def report_lang(self) -> str:
        return self.card.report.language if self.card.report else "en"

    def translations_file(self) -> Path | None:
        return self.card.report.translations_path(self.card.card_path) if self.card.report else None

    @staticmethod
    def read_mimic_image(path: Path, of: str) -> np.ndarray:
        """The MIMIC-CXR-JPG image a scene graph or box table (``of``) names; a clear error when the images
        were not downloaded next to the annotations."""
        from pipeline.ingest.readers.image2d import read_image

        if not path.is_file():
            raise ReadError(f"image {path.name} of {of} not found under {shown(path.parent)}", file=str(path),
                            hint="point the card's layout.images at the MIMIC-CXR-JPG folder holding files/")
        return read_image(path)

    def accepted(self) -> dict[tuple[str, str, str], str]:
        if self._accepted is None:
            from pipeline.evaluate.translate import load_accepted

            self._accepted = load_accepted(self.translations_file())
        return self._accepted

    def report_files(self) -> list[str]:
        """Files every case's output depends on beyond its own (the accepted translations)."""
        f = self.translations_file()
        return [str(f)] if f is not None and f.is_file() else []

    def report_sentences(self, ref: CaseRef) -> list[tuple[str, str]]:
        """(language, cleaned sentence) of a case, without reading pixels (for ``medreg translate``)."""
        raise NotImplementedError

    def _finding_names(self, term: str, lang: str) -> list[str] | None:
        """The names of ``term`` in ``lang`` when it is a lesion/finding (``None`` for anatomy)."""
        from pipeline.language.glossary import load_glossary

        t = load_glossary().terms.get(term)
        if t is None or t.kind != "finding":
            return None
        return [t.names.get(lang, ""), *t.synonyms.get(lang, ()), *([t.plural_en] if lang == "en" else [])]

    def negated_finding(self, term: str, text: str, lang: str) -> bool:
        """Whether a sentence negates the finding ``term`` names (such a region is never emitted)."""
        names = self._finding_names(term, lang)
        return names is not None and negates(text, lang, [n for n in names if n])

    def sentence(self, term: str, text: str, label: str, notes: list[str], *, lang: str | None = None,
                 negated: bool | None = None) -> RegionSentence | None:
        """A cleaned sentence with its accepted translations, or ``None`` (noted) when it cannot be embedded."""
        lang = lang or self.report_lang
        cleaned = clean_sentence(text, lang)
        if cleaned is None:
            notes.append(f"{label}: a sentence is empty or holds grounding markup (< > [[ ]]); not used")
            return None
        texts = {lang: cleaned}
        for (src, tgt, source), translated in self.accepted().items():
            if src == lang and source == cleaned:
                texts[tgt] = translated
        neg = negates(cleaned, lang) if negated is None else negated
        return RegionSentence(term=term, text=texts, lang=lang, negated=neg, label=label)


# ----------------------------------------------------------------------------------------- generic table


def _read_table(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, row) of a CSV with a header or a JSONL file."""
    raw = path.read_bytes().decode("utf-8-sig")
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        out = []
        for i, line in enumerate(raw.splitlines(), 1):
            if line.strip():
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ReadError(f"{shown(path)} line {i}: not JSON ({exc.msg})", file=str(path),
                                    hint="one JSON object per line") from None
                out.append((i, obj if isinstance(obj, dict) else {}))
        return out
    return [(i + 2, dict(r)) for i, r in enumerate(csv.DictReader(io.StringIO(raw)))]


def _number(value: Any) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


class ReportTableLayout(LayoutBase):
    """A CSV or JSONL of (image or volume, region label, box or mask, sentence) in English or Chinese."""

    table: str = Field("reports.csv", description="the CSV (header row) or JSONL file, relative to the root")
    images: str = Field(".", description="the folder image and mask paths are relative to (relative to the root)")
    columns: dict[str, str] = Field(
        default_factory=dict, description="column names when they differ: {image, label, sentence, x_min, y_min, "
        "x_max, y_max, mask, mask_value, lang, patient_id, split: name}")
    box_format: Literal["xyxy", "xywh"] = Field(
        "xyxy", description="xyxy: inclusive pixel corners; xywh: top-left corner, width and height in pixels")


class ReportTableAdapter(ReportAdapter):
    name = "report_table"
    formats = ("csv", "jsonl")
    description = "generic report table: image or volume, region label, box or mask, sentence (en or zh)"
    layout_model = ReportTableLayout

    def _col(self, key: str) -> str:
        return str(self.layout.columns.get(key, key))

    def _path(self, value: str) -> Path:
        p = Path(value).expanduser()
        base = self.root / self.layout.images
        return p if p.is_absolute() else base / p

    def _row(self, line: int, raw: dict[str, Any]) -> dict[str, Any]:
        r = {k: raw.get(self._col(k)) for k in _COLUMNS}
        r["line"] = line
        err = None
        box = [_number(r[k]) for k in ("x_min", "y_min", "x_max", "y_max")]
        if not r["image"] or not r["sentence"] or not r["label"]:
            err = "needs image, label and sentence"
        elif not r["mask"] and None in box:
            err = "needs a box (x_min, y_min, x_max, y_max) or a mask"
        elif r["lang"] not in (None, "", "en", "zh"):
            err = f"unknown language {r['lang']!r} (en or zh)"
        nums = [v for v in box if v is not None]
        if err is None and len(nums) == 4:
            x0, y0, a, b = nums
            if self.layout.box_format == "xywh":
                a, b = x0 + a - 1, y0 + b - 1
            if a < x0 or b < y0 or x0 < 0 or y0 < 0:
                err = f"box {box} is empty or negative"
            r["box"] = [x0, y0, a, b]
        r["error"] = err
        return {k: (str(v) if isinstance(v, int | float) and k not in ("line", "box") else v) for k, v in r.items()}

    def discover(self) -> list[CaseRef]:
        table = self.root / self.layout.table
        if not table.is_file():
            raise ReadError(f"report table {shown(table)} not found", file=str(table),
                            hint="set the card's layout.table (a CSV with a header, or JSONL)")
        groups: dict[str, list[dict[str, Any]]] = {}
        for line, raw in _read_table(table):
            r = self._row(line, raw)
            groups.setdefault(str(r["image"] or f"line-{line}"), []).append(r)
        refs = []
        for image, rows in groups.items():
            cid = _case_id(image)
            masks = sorted({str(self._path(r["mask"])) for r in rows if r.get("mask")})
            split = next((_SPLITS.get(str(r["split"]).lower()) for r in rows if r.get("split")), None)
            patient = next((str(r["patient_id"]) for r in rows if r.get("patient_id")), None)
            refs.append(CaseRef(
                source=self.card.name, case_id=cid, patient_id=patient or self.patient_of(cid, image),
                paths={"image": str(self._path(image))},
                official_split=split or self.official_split(image, cid),
                extra={"rows": rows, "table": table.name, "files": masks + self.report_files()},
            ))
        return sorted(refs, key=lambda r: r.case_id)

    def report_sentences(self, ref: CaseRef) -> list[tuple[str, str]]:
        out = []
        for r in ref.extra["rows"]:
            lang = r.get("lang") or self.report_lang
            text = clean_sentence(str(r.get("sentence") or ""), lang)
            if text and not r.get("error"):
                out.append((lang, text))
        return out

    def load(self, ref: CaseRef) -> Study:
        rows, table = ref.extra["rows"], ref.extra["table"]
        bad = [f"line {r['line']}: {r['error']}" for r in rows if r.get("error")]
        if bad:
            raise ReadError(f"{table}: " + "; ".join(bad[:3]), file=table,
                            hint="fix those rows of the report table (the other images are unaffected)")
        image_path = Path(ref.paths["image"])
        if image_path.name.endswith(_NIFTI):
            return self._load_3d(ref, rows, table)
        from pipeline.ingest.readers.image2d import read_image

        if not image_path.is_file():
            raise ReadError(f"image {shown(image_path)} (named in {table}) not found", file=str(image_path),
                            hint="check the table's image paths and the card's layout.images")
        image = read_image(image_path)
        notes: list[str] = []
        boxes, layers, report = [], [], []
        for r, term, sent in self._sentences(rows, table, notes):
            if r.get("mask"):
                layers.append(LabelLayer(self._mask_2d(r, image.shape[:2])[None], {1: term}, origin=str(r["mask"])))
            else:
                boxes.append(PixelBoxAnnotation(term, tuple(float(v) for v in r["box"])))  # type: ignore[arg-type]
            report.append(sent)
        if not boxes and not layers:
            raise ReadError(f"{table}: no row of image {image_path.name} gives a region with a term and a sentence",
                            file=table, hint="check the labels (card labels) and the notes")
        study = self.study_2d(ref, image, layers, notes, boxes, box_convention="inclusive pixel corners")
        study.report = report
        return study

    def _sentences(self, rows: list[dict[str, Any]], table: str,
                   notes: list[str]) -> list[tuple[dict[str, Any], str, RegionSentence]]:
        out = []
        for r in rows:
            where = f"{table} line {r['line']}"
            term = self.term_for(str(r["label"]))
            if term is None:
                notes.append(f"{where}: label {r['label']!r} has no term in card {self.card.name}; skipped")
                continue
            lang = r.get("lang") or self.report_lang
            sent = self.sentence(term, str(r["sentence"]), where, notes, lang=lang)
            if sent is None:
                continue
            if self.negated_finding(term, sent.text[lang], lang):
                notes.append(f"{where}: the sentence negates the finding {term} ({sent.text[lang]!r}): "
                             "not a region, not a detection target")
                continue
            out.append((r, term, sent))
        return out

    def _mask_2d(self, r: dict[str, Any], shape: tuple[int, ...]) -> np.ndarray:
        from pipeline.ingest.readers.image2d import read_image

        path = self._path(str(r["mask"]))
        if not path.is_file():
            raise ReadError(f"mask {shown(path)} (line {r['line']}) not found", file=str(path),
                            hint="check the table's mask paths")
        m = read_image(path)
        m = m if m.ndim == 2 else m[..., 0]
        if m.shape != shape[:2]:
            raise ReadError(f"mask {shown(path)} is {m.shape[1]}x{m.shape[0]}, its image {shape[1]}x{shape[0]}",
                            file=str(path), hint="masks must be on the image grid")
        value = _number(r.get("mask_value"))
        return (m == int(value) if value is not None else m > 0).astype(np.uint8)

    def _load_3d(self, ref: CaseRef, rows: list[dict[str, Any]], table: str) -> Study:
        from pipeline.ingest.geometry import to_canonical
        from pipeline.ingest.readers.nifti import read_nifti

        notes: list[str] = []
        image, aff = read_nifti(ref.paths["image"], notes=notes)
        vol, geom = to_canonical(image, aff)
        layers, report = [], []
        for r, term, sent in self._sentences(rows, table, notes):
            if not r.get("mask"):
                raise ReadError(f"{table} line {r['line']}: a volume needs a mask per region (boxes are 2-D)",
                                file=table, hint="give a NIfTI mask on the volume's grid in the mask column")
            m, maff = read_nifti(self._path(str(r["mask"])), integer_labels=True, notes=notes)
            if m.shape != image.shape or not np.allclose(maff, aff, atol=1e-3):
                raise ReadError(f"mask {shown(r['mask'])} is not on the grid of {Path(ref.paths['image']).name}",
                                file=str(self._path(str(r["mask"]))), hint="resample the mask to the volume")
            value = _number(r.get("mask_value"))
            fg = (m == int(value)) if value is not None else (m > 0)
            layers.append(LabelLayer(to_canonical(fg.astype(np.uint8), aff)[0], {1: term}, origin=str(r["mask"])))
            report.append(sent)
        if not layers:
            raise ReadError(f"{table}: no row of {Path(ref.paths['image']).name} gives a region with a term",
                            file=table, hint="check the labels (card labels) and the notes")
        return Study(ref=ref, modality=self.card.modality, image=vol, spacing=geom.spacing, is_3d=True, layers=layers,
                     intensity_preset=self.card.intensity.preset, notes=notes, report=report,
                     transform={"source_orientation": "".join(geom.source_codes), "canonical": "SPL",
                                "spacing_mm": [round(s, 4) for s in geom.spacing]})


def _case_id(image: str) -> str:
    import re

    stem = re.sub(r"(\.nii)?\.[A-Za-z0-9]{2,5}$", "", image)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem.replace("/", "__")).strip("_") or "image"
