"""Rule validator ``rules``: cheap CPU checks run on every sample.

Codes (stable; ``reason`` is ``"code: detail"`` joined by ``"; "``):

* ``size_mismatch``   (fail) the image array is not ``height x width`` of the row.
* ``box_outside``     (fail) ``box_px`` leaves the image or has ``x_min > x_max`` / ``y_min > y_max``.
* ``degenerate_box``  (fail) the 0..999 box is out of range or not ``x1 < x2, y1 < y2``.
* ``box_mismatch``    (fail) the 0..999 box differs from ``normalise_box(box_px)`` by more than
  ``box_tolerance``.
* ``too_small``       (``too_small_verdict``) box side < ``min_side_px`` or box area < ``min_area_px``.
* ``blank``           (fail) the pixels inside the box have std < ``blank_std`` (constant region).
* ``laterality``      (fail) a right-sided structure's box centre is not image-left of its left-sided
  partner's in the same image (radiological display; axes ``laterality_pair_axes``).
* ``laterality_centre`` (``centre_verdict``) on axial/coronal CT/MR/PET a right-sided structure's centre
  lies right of the image centre by more than ``centre_margin`` x width (mirror: left-sided structure
  left of the centre).
* ``anterior_posterior`` / ``superior_inferior`` (fail; flag when fewer than
  ``orientation_fail_fraction`` of the compared pairs are inverted) known structures are out of their
  anatomical order on the image (spine above the liver on an axial CT: shown upside down).  The facts are
  data (``pipeline/language/data/anatomy/orientation.yaml``); the check sees every region of the image
  (all rows of one image in the batch), see :mod:`pipeline.validate.orientation`.  ``order_checked`` (pass)
  notes what was compared.
* ``text_laterality`` (fail) a report row's sentence names one patient side while its box lies on the other half
  of the image (patient right = image left), or its region term is of the other side
  (:mod:`pipeline.validate.text_side`; only rows with ``meta.text_source: report``).
* ``box_not_in_meta`` (fail) a box written in the conversation is not one of the row's region boxes.
* ``box_missing_in_text`` (``missing_text_box_verdict``) a region box of the row appears nowhere in the conversation.
* ``no_image_token``  (fail) the first human turn has no ``<image>`` placeholder.
* ``no_regions``      (pass) nothing to check beyond the text.

Score: 1.0 pass, 0.5 flag, 0.0 fail.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.evaluate.answers import parse_boxes
from pipeline.language.anatomy import load_orientation_facts
from pipeline.regions.coords import normalise_box
from pipeline.validate._glossary import TermInfo
from pipeline.validate.base import RegionFinding, ValidationItem, summarise
from pipeline.validate.orientation import order_findings
from pipeline.validate.text_side import text_laterality_findings
from schemas.records import ValidationResult
from schemas.validation import RulesConfig

_SCORE = {"pass": 1.0, "flag": 0.5, "fail": 0.0}


def _image_key(item: ValidationItem) -> tuple[str, ...]:
    """Rows of one written image (same pixels, same slice of the same case) share their order findings."""
    m = item.meta
    return (item.image_digest(), str(m.get("source", "")), str(m.get("case_id", "")), str(m.get("axis", "")),
            str(m.get("slice_index", "")))


class RulesValidator:
    name = "rules"
    version = "3"
    level = "case"  # pipeline.validate.registry: runs on each case's rows, inside the case task
    needs_model = False
    config_model = RulesConfig
    description = "cheap CPU checks on every sample: box sizes, blank boxes, box text, laterality, orientation"

    def __init__(self, config: RulesConfig | None = None, *, glossary: Any | None = None) -> None:
        self.config = config or RulesConfig()
        self.terms = TermInfo(glossary)
        self.config_hash = self.config.config_hash()
        self.order_rules = load_orientation_facts(self.config.orientation_facts) if self.config.orientation else ()

    def validate(self, items: list[ValidationItem]) -> list[ValidationResult]:
        per_image = self._orientation(items)
        return [self._one(it, per_image.get(_image_key(it), [])) for it in items]

    def _orientation(self, items: list[ValidationItem]) -> dict[tuple[str, ...], list[RegionFinding]]:
        """Order findings per image, from the regions of every row of that image in ``items``."""
        if not self.order_rules:
            return {}
        groups: dict[tuple[str, ...], list[ValidationItem]] = {}
        for it in items:
            groups.setdefault(_image_key(it), []).append(it)
        out: dict[tuple[str, ...], list[RegionFinding]] = {}
        for key, group in groups.items():
            meta = group[0].meta
            axis = str(meta.get("axis", ""))
            if axis == "2d":
                axis = self.config.orientation_2d_axis
            whole = group[0].slice_regions  # the image's every region when known, else the rows'
            out[key] = order_findings(
                whole if whole is not None else [reg for it in group for reg in it.regions],
                rules=self.order_rules,
                axis=axis,
                modality=str(meta.get("modality", "")),
                width=int(group[0].row.get("width", 0)),
                height=int(group[0].row.get("height", 0)),
                margin=self.config.orientation_margin,
                fail_fraction=self.config.orientation_fail_fraction,
            )
        return out

    # ------------------------------------------------------------------ one row
    def _one(self, item: ValidationItem, image_findings: list[RegionFinding] | None = None) -> ValidationResult:
        cfg = self.config
        row = item.row
        meta = item.meta
        findings: list[RegionFinding] = list(image_findings or [])
        w, h = int(row.get("width", 0)), int(row.get("height", 0))
        ih, iw = item.image.shape[:2]
        if (ih, iw) != (h, w):
            findings.append(RegionFinding("fail", "size_mismatch", f"image is {iw}x{ih}, row says {w}x{h}"))

        convs = row.get("conversations") or []
        first_human = next((t.get("value", "") for t in convs if t.get("from") == "human"), None)
        if first_human is not None and "<image>" not in first_human:
            findings.append(RegionFinding("fail", "no_image_token", "first human turn has no <image>"))

        grey = item.grey()
        centres: dict[str, list[float]] = {}
        for reg in item.regions:
            term = str(reg.get("term", "?"))
            geo_ok = self._check_geometry(reg, term, w, h, findings)
            if not geo_ok:
                continue
            x0, _, x1, _ = (int(v) for v in reg["box_px"])
            if (ih, iw) == (h, w):
                self._blank(grey, reg, term, findings)
            centres.setdefault(term, []).append((x0 + x1 + 1) / 2.0)

        findings.extend(self._laterality(meta, centres, w))
        if convs:
            answer = next((str(t.get("value", "")) for t in reversed(convs) if t.get("from") == "gpt"), "")
            findings.extend(text_laterality_findings(
                meta, answer, self.terms, margin=cfg.text_laterality_margin, axes=cfg.text_laterality_axes,
                modalities=cfg.text_laterality_modalities))

        if cfg.check_text_boxes and convs:
            findings.extend(self._text_boxes(item, convs))

        if not item.regions and not any(f.verdict != "pass" for f in findings):
            return summarise(self, [], 1.0, ok_reason="no_regions")
        verdicts = [f.verdict for f in findings]
        v = "fail" if "fail" in verdicts else "flag" if "flag" in verdicts else "pass"
        return summarise(self, findings, _SCORE[v])

    # ------------------------------------------------------------------ regions of one image
    def check_regions(
        self, image: np.ndarray, regions: list[dict[str, Any]], *, axis: str, modality: str
    ) -> tuple[list[list[RegionFinding]], list[RegionFinding]]:
        """Region-level findings for every region of one written image, before any sentence is written
        (the builder removes a failing region and writes its rows without it), and the image-level
        findings (orientation: the whole image is shown wrong).  Returns ``(per_region, image_level)``."""
        h, w = image.shape[:2]
        grey = image.astype(np.float32).mean(axis=2) if image.ndim == 3 else image.astype(np.float32)
        per: list[list[RegionFinding]] = [[] for _ in regions]
        centres: dict[str, list[float]] = {}
        for i, reg in enumerate(regions):
            term = str(reg.get("term", "?"))
            if not self._check_geometry(reg, term, w, h, per[i]):
                continue
            self._blank(grey, reg, term, per[i])
            x0, _, x1, _ = (int(v) for v in reg["box_px"])
            centres.setdefault(term, []).append((x0 + x1 + 1) / 2.0)
        for f in self._laterality({"axis": axis, "modality": modality}, centres, w):
            for i, reg in enumerate(regions):
                if reg.get("term") in f.terms:
                    per[i].append(f)
        image_level: list[RegionFinding] = []
        if self.order_rules:
            image_level = order_findings(
                regions, rules=self.order_rules, axis=self.config.orientation_2d_axis if axis == "2d" else axis,
                modality=modality, width=w, height=h, margin=self.config.orientation_margin,
                fail_fraction=self.config.orientation_fail_fraction,
            )
        return per, image_level

    def _blank(self, grey: np.ndarray, reg: dict[str, Any], term: str, out: list[RegionFinding]) -> None:
        x0, y0, x1, y1 = (int(v) for v in reg["box_px"])
        crop = grey[y0 : y1 + 1, x0 : x1 + 1]
        std = float(crop.std()) if crop.size else 0.0
        if std < self.config.blank_std:
            box = list(reg["box_px"])
            text = f"{term} box {box} pixel std {std:.2f} < {self.config.blank_std:g}"
            out.append(RegionFinding("fail", "blank", text, (term,)))

    def _check_geometry(self, reg: dict[str, Any], term: str, w: int, h: int, out: list[RegionFinding]) -> bool:
        cfg = self.config
        ok = True
        bp = reg.get("box_px")
        bn = reg.get("box")
        if not bp or len(bp) != 4:
            out.append(RegionFinding("fail", "box_outside", f"{term} has no pixel box"))
            return False
        x0, y0, x1, y1 = (int(v) for v in bp)
        if not (0 <= x0 <= x1 < w and 0 <= y0 <= y1 < h):
            out.append(RegionFinding("fail", "box_outside", f"{term} box_px {list(bp)} not inside {w}x{h}"))
            ok = False
        if not bn or len(bn) != 4 or not all(0 <= int(v) <= 999 for v in bn) or not (bn[0] < bn[2] and bn[1] < bn[3]):
            out.append(RegionFinding("fail", "degenerate_box", f"{term} box {bn} is not 0<=x1<x2<=999, 0<=y1<y2<=999"))
            ok = False
        if not ok or not bn:  # (a missing box was reported as degenerate_box above)
            return False
        expect = normalise_box((x0, y0, x1, y1), w, h)
        diff = max(abs(int(a) - b) for a, b in zip(bn, expect, strict=True))
        if diff > cfg.box_tolerance:
            out.append(
                RegionFinding("fail", "box_mismatch", f"{term} box {list(bn)} vs normalise_box(box_px) {list(expect)}")
            )
        bw, bh = x1 - x0 + 1, y1 - y0 + 1
        if bw < cfg.min_side_px or bh < cfg.min_side_px or bw * bh < cfg.min_area_px:
            out.append(
                RegionFinding(
                    cfg.too_small_verdict,
                    "too_small",
                    f"{term} box is {bw}x{bh} px (min side {cfg.min_side_px}, min area {cfg.min_area_px})",
                )
            )
        return True

    def _laterality(self, meta: dict[str, Any], centres: dict[str, list[float]], w: int) -> list[RegionFinding]:
        cfg = self.config
        axis = str(meta.get("axis", ""))
        modality = str(meta.get("modality", ""))
        out: list[RegionFinding] = []
        mean_c = {t: float(np.mean(cs)) for t, cs in centres.items()}
        if axis in cfg.laterality_pair_axes:
            for term, cx in mean_c.items():
                if self.terms.laterality(term) != "right":
                    continue
                partner = self.terms.mirror(term)
                if partner is None or partner not in mean_c:
                    continue
                px = mean_c[partner]
                if not cx < px:
                    out.append(
                        RegionFinding(
                            "fail",
                            "laterality",
                            f"{term} centre x={cx:.0f} is right of {partner} x={px:.0f} "
                            "(patient right must be image left)",
                            (term, partner),
                        )
                    )
        if axis in cfg.laterality_centre_axes and modality in cfg.laterality_centre_modalities and w > 0:
            half = w / 2.0
            tol = cfg.centre_margin * w
            for term, cx in mean_c.items():
                side = self.terms.laterality(term)
                if side == "right" and cx > half + tol:
                    out.append(
                        RegionFinding(
                            cfg.centre_verdict,
                            "laterality_centre",
                            f"{term} centre x={cx:.0f} is right of the image centre {half:.0f} (+{tol:.0f})",
                            (term,),
                        )
                    )
                elif side == "left" and cx < half - tol:
                    out.append(
                        RegionFinding(
                            cfg.centre_verdict,
                            "laterality_centre",
                            f"{term} centre x={cx:.0f} is left of the image centre {half:.0f} (-{tol:.0f})",
                            (term,),
                        )
                    )
        return out

    def _text_boxes(self, item: ValidationItem, convs: list[dict[str, Any]]) -> list[RegionFinding]:
        meta_boxes = {tuple(int(v) for v in r.get("box", ())) for r in item.regions}
        text_boxes: set[tuple[int, ...]] = set()
        for turn in convs:
            text_boxes.update(parse_boxes(str(turn.get("value", ""))))
        out: list[RegionFinding] = []
        extra = sorted(text_boxes - meta_boxes)
        if extra:
            text = f"text boxes {[list(b) for b in extra]} are not region boxes"
            out.append(RegionFinding("fail", "box_not_in_meta", text))
        missing = sorted(meta_boxes - text_boxes)
        if missing:
            text = f"region boxes {[list(b) for b in missing]} not in the text"
            out.append(RegionFinding(self.config.missing_text_box_verdict, "box_missing_in_text", text))
        return out
