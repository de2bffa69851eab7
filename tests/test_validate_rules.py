"""Rule validator on synthetic rows: every code fires on the case it names and not on a clean row."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from pipeline.regions.coords import format_boxes, normalise_box
from pipeline.validate import RulesValidator, ValidationItem
from schemas.records import Row
from schemas.validation import RulesConfig

W, H = 200, 160


def region(term: str, box_px: list[int], w: int = W, h: int = H) -> dict[str, Any]:
    return {"term": term, "box": list(normalise_box(box_px, w, h)), "box_px": list(box_px), "area": 10, "label_id": 1}


def make_row(
    regions: list[dict[str, Any]], *, axis: str = "axial", modality: str = "CT", text: str | None = None, check: bool = True
) -> dict:
    if text is None:
        text = " ".join(f"<ref>{r['term']}</ref><box>{format_boxes([r['box']])}</box>" for r in regions)
    row = {
        "id": "r1",
        "image": "images/ab/x.png",
        "width": W,
        "height": H,
        "conversations": [{"from": "human", "value": "<image>\nDescribe the image."}, {"from": "gpt", "value": text}],
        "meta": {
            "task": "grounded_report", "lang": "en", "source": "synthetic", "licence": "CC0", "case_id": "c1",
            "patient_id": "p", "split": "train", "modality": modality, "body_region": "abdomen", "axis": axis,
            "slice_index": 0, "template_id": "t", "regions": regions, "subtask": "open", "window": "none",
            "transform": "{}", "validation": [],
        },
    }
    if check:
        Row.model_validate(row)  # the fixture rows are valid release rows
    return row


def textured(h: int = H, w: int = W, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, size=(h, w), dtype=np.uint8)


def run(row: dict, image: np.ndarray | None = None, **cfg: Any):
    v = RulesValidator(RulesConfig(**cfg), glossary=None)
    return v.validate([ValidationItem(row, textured() if image is None else image)])[0]


def test_clean_row_passes() -> None:
    row = make_row([region("kidney_right", [30, 80, 70, 120]), region("kidney_left", [130, 80, 170, 120])])
    r = run(row)
    assert (r.verdict, r.score, r.validator, r.version) == ("pass", 1.0, "rules", "3")


def test_box_outside_and_degenerate() -> None:
    reg = region("liver", [10, 10, 50, 50])
    reg["box_px"] = [10, 10, 250, 50]
    r = run(make_row([reg], text="<ref>liver</ref><box>" + format_boxes([reg["box"]]) + "</box>"))
    assert r.verdict == "fail" and "box_outside" in r.codes
    reg = region("liver", [10, 10, 50, 50])
    reg["box"] = [40, 10, 30, 50]
    r = run(make_row([reg], text="liver", check=False))  # rows read back from disk are not re-validated
    assert r.verdict == "fail" and "degenerate_box" in r.codes


def test_box_mismatch() -> None:
    reg = region("liver", [10, 10, 50, 50])
    reg["box"] = [reg["box"][0] + 20, *reg["box"][1:]]
    r = run(make_row([reg]))
    assert r.verdict == "fail" and r.codes == ["box_mismatch"]


@pytest.mark.parametrize("verdict", ["flag", "fail"])
def test_too_small_configurable(verdict: str) -> None:
    row = make_row([region("aorta", [10, 10, 11, 30])])
    r = run(row, too_small_verdict=verdict)
    assert r.verdict == verdict and r.codes == ["too_small"] and "2x21 px" in r.reason
    assert run(row, min_side_px=2).verdict == "pass"


def test_blank_region() -> None:
    img = textured()
    img[20:61, 20:61] = 7
    r = run(make_row([region("liver", [20, 20, 60, 60])]), img)
    assert r.verdict == "fail" and r.codes == ["blank"]
    img[40, 40] = 200  # some texture: std above 1
    assert run(make_row([region("liver", [20, 20, 60, 60])]), img).verdict == "pass"


def test_laterality_pair_and_reason_format() -> None:
    row = make_row([region("kidney_right", [130, 80, 170, 120]), region("kidney_left", [30, 80, 70, 120])])
    r = run(row)
    assert r.verdict == "fail"
    assert "laterality" in r.codes and "laterality_centre" in r.codes
    assert "laterality: kidney_right centre x=150 is right of kidney_left x=50" in r.reason
    # pair check only on the configured axes; sagittal has no left/right
    assert run(make_row(row["meta"]["regions"], axis="sagittal")).verdict == "pass"


def test_laterality_infix_terms() -> None:
    """rib_right_7 pairs with rib_left_7 (suffix fallback handles infixes)."""
    row = make_row([region("rib_right_7", [120, 20, 140, 40]), region("rib_left_7", [40, 20, 60, 40])])
    r = run(row, laterality_centre_axes=[])
    assert r.verdict == "fail" and r.codes == ["laterality"]


def test_laterality_centre_only_ct_mr_axial_coronal() -> None:
    row = make_row([region("kidney_right", [120, 80, 160, 120])])  # alone, right of centre
    r = run(row)
    assert r.verdict == "flag" and r.codes == ["laterality_centre"]
    assert run(row, centre_verdict="fail").verdict == "fail"
    assert run(make_row(row["meta"]["regions"], modality="XR", axis="2d")).verdict == "pass"
    assert run(make_row(row["meta"]["regions"], axis="sagittal")).verdict == "pass"
    near = make_row([region("kidney_right", [95, 80, 113, 120])])  # centre 104.5 < 100 + 0.05*200
    assert run(near).verdict == "pass"


def test_text_boxes_consistency() -> None:
    reg = region("liver", [10, 10, 50, 50])
    r = run(make_row([reg], text="<ref>liver</ref><box>[[1, 2, 3, 4]]</box>"))
    assert r.verdict == "fail" and set(r.codes) == {"box_not_in_meta", "box_missing_in_text"}
    r = run(make_row([reg], text="The liver."))
    assert r.verdict == "flag" and r.codes == ["box_missing_in_text"]
    assert run(make_row([reg], text="The liver."), missing_text_box_verdict="pass").verdict == "pass"
    assert run(make_row([reg], text="The liver."), check_text_boxes=False).verdict == "pass"


def test_image_token_and_size() -> None:
    row = make_row([region("liver", [10, 10, 50, 50])])
    row["conversations"][0]["value"] = "Describe."
    assert run(row).codes == ["no_image_token"]
    row = make_row([region("liver", [10, 10, 50, 50])])
    r = run(row, textured(h=H + 1))
    assert r.verdict == "fail" and r.codes == ["size_mismatch"]


def test_colour_image_and_no_regions() -> None:
    img = np.random.default_rng(1).integers(0, 255, size=(H, W, 3), dtype=np.uint8)
    assert run(make_row([region("polyp", [10, 10, 50, 50])], axis="2d", modality="endoscopy"), img).verdict == "pass"
    r = run(make_row([], text="No finding."))
    assert (r.verdict, r.reason) == ("pass", "no_regions")


def test_uses_glossary_mirror_when_given() -> None:
    class G:
        def laterality(self, t: str) -> str | None:
            return {"ovary_dx": "right", "ovary_sx": "left"}.get(t)

        def mirror(self, t: str) -> str | None:
            return {"ovary_dx": "ovary_sx", "ovary_sx": "ovary_dx"}.get(t)

        def display(self, t: str, lang: str) -> str:
            return t

    row = make_row([region("ovary_dx", [130, 80, 170, 120]), region("ovary_sx", [30, 80, 70, 120])])
    r = RulesValidator(RulesConfig(), glossary=G()).validate([ValidationItem(row, textured())])[0]
    assert "laterality" in r.codes


def _report_row(term: str, box_px: list[int], sentence: str, *, lang: str = "en", source: str = "report",
                name: str | None = None) -> dict:
    reg = region(term, box_px)
    sep = ": " if lang == "en" else "："
    text = f"<ref>{name or term.replace('_', ' ')}</ref><box>{format_boxes([reg['box']])}</box>{sep}{sentence}"
    row = make_row([reg], axis="2d", modality="XR", text=text, check=False)
    row["meta"].update(lang=lang, text_source=source)
    Row.model_validate(row)
    return row


@pytest.mark.parametrize(("box", "sentence", "verdict"), [
    ([20, 60, 70, 120], "Left lower lobe pneumonia.", "fail"),      # image left = patient right: contradiction
    ([130, 60, 180, 120], "Left lower lobe pneumonia.", "pass"),    # image right = patient left
    ([130, 60, 180, 120], "Right upper lobe consolidation.", "fail"),
    ([20, 60, 70, 120], "Bilateral lower lobe opacities, worse on the left.", "pass"),  # both sides named
    ([85, 60, 115, 120], "Left paratracheal opacity.", "pass"),     # on the midline (within the margin)
])
def test_text_laterality_against_the_box(box, sentence, verdict) -> None:
    r = run(_report_row("pneumonia", box, sentence))
    assert r.verdict == verdict, r.reason
    assert ("text_laterality" in r.reason) == (verdict == "fail")


def test_text_laterality_against_the_region_term_and_in_chinese() -> None:
    # the right lung's box is on the image left, but its sentence says "left"
    r = run(_report_row("lung_right", [20, 30, 90, 140], "Left lung is clear."))
    assert r.verdict == "fail" and "lung right (right) is described as left" in r.reason
    zh = run(_report_row("pneumonia", [130, 60, 180, 120], "右肺下叶肺炎。", lang="zh", name="肺炎"))
    assert zh.verdict == "fail" and "text_laterality" in zh.reason
    assert run(_report_row("pneumonia", [20, 60, 70, 120], "右肺下叶肺炎。", lang="zh", name="肺炎")).verdict == "pass"


def test_template_rows_are_not_read_for_patient_sides() -> None:
    """Template sentences describe the image ("the left part of the image"), not the patient."""
    row = _report_row("pneumonia", [20, 60, 70, 120], "Pneumonia is seen in the left part of the image.",
                      source="template")
    assert run(row).verdict == "pass"
