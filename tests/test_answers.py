"""The MedRegA answer parser on clean, decoded-without-special-tokens and messy model outputs (EN/ZH)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.evaluate.answers import ParsedRef, normalise_text, parse_boxes, parse_grounded, parse_terms, strip_grounding
from pipeline.regions.coords import format_boxes

CASES: list[tuple[str, list[ParsedRef]]] = [
    # --- clean MedRegA form
    ("<ref>liver</ref><box>[[120, 300, 480, 610]]</box>", [ParsedRef("liver", [(120, 300, 480, 610)])]),
    ("<ref>kidney</ref><box>[[1, 2, 3, 4], [5, 6, 7, 8]]</box>", [ParsedRef("kidney", [(1, 2, 3, 4), (5, 6, 7, 8)])]),
    (
        "The <ref>liver</ref><box>[[1,2,3,4]]</box> and <ref>spleen</ref><box>[[5,6,7,8]]</box> are visible.",
        [ParsedRef("liver", [(1, 2, 3, 4)]), ParsedRef("spleen", [(5, 6, 7, 8)])],
    ),
    ("<ref> left kidney </ref> <box> [[ 10 , 20 , 30 , 40 ]] </box>", [ParsedRef("left kidney", [(10, 20, 30, 40)])]),
    ("<ref>liver</ref> is located at <box>[[1, 2, 3, 4]]</box>.", [ParsedRef("liver", [(1, 2, 3, 4)])]),
    ("<ref>Liver</ref>.", [ParsedRef("Liver", [])]),
    # --- grounded reports
    (
        "Findings: the <ref>liver</ref><box>[[100, 200, 500, 600]]</box> is normal in size. "
        "The <ref>right kidney</ref><box>[[120, 500, 300, 700]]</box> shows a cyst; "
        "the <ref>left kidney</ref><box>[[650, 510, 820, 690]]</box> is unremarkable.",
        [
            ParsedRef("liver", [(100, 200, 500, 600)]),
            ParsedRef("right kidney", [(120, 500, 300, 700)]),
            ParsedRef("left kidney", [(650, 510, 820, 690)]),
        ],
    ),
    (
        "所见：<ref>肝脏</ref><box>[[100, 200, 500, 600]]</box>大小正常，<ref>右肾</ref><box>[[120, 500, 300, 700]]</box>可见囊肿。",
        [ParsedRef("肝脏", [(100, 200, 500, 600)]), ParsedRef("右肾", [(120, 500, 300, 700)])],
    ),
    # --- special tokens dropped by decoding (InternVL <ref>/<box> are special tokens)
    ("liver[[120, 300, 480, 610]]", [ParsedRef("liver", [(120, 300, 480, 610)])]),
    ("The liver is located at [[120, 300, 480, 610]].", [ParsedRef("liver", [(120, 300, 480, 610)])]),
    ("The bounding box of the liver is [[1,2,3,4]]", [ParsedRef("liver", [(1, 2, 3, 4)])]),
    ("Coordinates of the right kidney: [[1,2,3,4]]", [ParsedRef("right kidney", [(1, 2, 3, 4)])]),
    ("The lesion is seen in the region of [[1,2,3,4]].", [ParsedRef("lesion", [(1, 2, 3, 4)])]),
    (
        "The left kidney [[1,2,3,4]], the right kidney [[5,6,7,8]]",
        [ParsedRef("left kidney", [(1, 2, 3, 4)]), ParsedRef("right kidney", [(5, 6, 7, 8)])],
    ),
    (
        "portal vein and splenic vein [[1,2,3,4]] and spleen [[5,6,7,8]]",
        [ParsedRef("portal vein and splenic vein", [(1, 2, 3, 4)]), ParsedRef("spleen", [(5, 6, 7, 8)])],
    ),
    ("liver [[1,2,3,4]] [[5,6,7,8]]", [ParsedRef("liver", [(1, 2, 3, 4), (5, 6, 7, 8)])]),
    ("kidney [[1,2,3,4],[5,6,7,8]]", [ParsedRef("kidney", [(1, 2, 3, 4), (5, 6, 7, 8)])]),
    (
        "Liver: [[1, 2, 3, 4]]\nSpleen: [[5, 6, 7, 8]]",
        [ParsedRef("Liver", [(1, 2, 3, 4)]), ParsedRef("Spleen", [(5, 6, 7, 8)])],
    ),
    (
        "1. liver [[1,2,3,4]]\n2. spleen [[5,6,7,8]]",
        [ParsedRef("liver", [(1, 2, 3, 4)]), ParsedRef("spleen", [(5, 6, 7, 8)])],
    ),
    # --- Chinese, full-width punctuation and digits
    ("肝脏位于[[120, 300, 480, 610]]。", [ParsedRef("肝脏", [(120, 300, 480, 610)])]),
    ("肝脏：［［１２０，３００，４８０，６１０］］", [ParsedRef("肝脏", [(120, 300, 480, 610)])]),
    ("肝脏：[[120，300，480，610]]", [ParsedRef("肝脏", [(120, 300, 480, 610)])]),
    (
        "在CT图像中，左肾的位置为[[1,2,3,4]]，右肾的坐标是[[5,6,7,8]]。",
        [ParsedRef("左肾", [(1, 2, 3, 4)]), ParsedRef("右肾", [(5, 6, 7, 8)])],
    ),
    ("门静脉和脾静脉[[1,2,3,4]]", [ParsedRef("门静脉和脾静脉", [(1, 2, 3, 4)])]),
    (
        "Here: <ref>肝脏</ref><box>[[1,2,3,4]]</box>，<ref>脾脏</ref><box>[[5,6,7,8]]</box>",
        [ParsedRef("肝脏", [(1, 2, 3, 4)]), ParsedRef("脾脏", [(5, 6, 7, 8)])],
    ),
    ("<ref>肝脏</ref><box>［［１，２，３，４］，［５，６，７，８］］</box>", [ParsedRef("肝脏", [(1, 2, 3, 4), (5, 6, 7, 8)])]),
    ("右肾的边界框为[[5,6,7,8]]", [ParsedRef("右肾", [(5, 6, 7, 8)])]),
    # --- bare boxes
    ("[[1,2,3,4]]", [ParsedRef(None, [(1, 2, 3, 4)])]),
    ("[1, 2, 3, 4]", [ParsedRef(None, [(1, 2, 3, 4)])]),
    ("<box>[[1,2,3,4]]</box>", [ParsedRef(None, [(1, 2, 3, 4)])]),
    ("<box>1, 2, 3, 4</box>", [ParsedRef(None, [(1, 2, 3, 4)])]),
    # --- corner-pair / Qwen style
    ("(1,2),(3,4)", [ParsedRef(None, [(1, 2, 3, 4)])]),
    ("（１，２），（３，４）", [ParsedRef(None, [(1, 2, 3, 4)])]),
    ("<box>(10,20),(30,40)</box>", [ParsedRef(None, [(10, 20, 30, 40)])]),
    (
        "<|object_ref_start|>liver<|object_ref_end|><|box_start|>(10,20),(30,40)<|box_end|>",
        [ParsedRef("liver", [(10, 20, 30, 40)])],
    ),
    # --- numbers written with decimals are rounded half up; order is kept as written
    ("<box>[[1.5, 2.5, 3.0, 4.49]]</box>", [ParsedRef(None, [(2, 3, 3, 4)])]),
    ("<ref>liver</ref><box>[[480, 610, 120, 300]]</box>", [ParsedRef("liver", [(480, 610, 120, 300)])]),
    # --- nothing to parse
    ("I cannot find it.", []),
    ("", []),
    ("The liver measures 15 cm [3 slices].", []),
    ("Size 2, 3", []),
]


@pytest.mark.parametrize("text,expected", CASES)
def test_parse_grounded_variants(text: str, expected: list[ParsedRef]) -> None:
    assert parse_grounded(text) == expected


def test_parse_boxes_flattens_in_order() -> None:
    text = "<ref>a</ref><box>[[1,2,3,4],[5,6,7,8]]</box> b [[9,10,11,12]]"
    assert parse_boxes(text) == [(1, 2, 3, 4), (5, 6, 7, 8), (9, 10, 11, 12)]


def test_parse_terms_dedupes_and_keeps_order() -> None:
    text = "<ref>liver</ref><box>[[1,2,3,4]]</box> <ref>spleen</ref> <ref>liver</ref><box>[[5,6,7,8]]</box>"
    assert parse_terms(text) == ["liver", "spleen"]
    assert parse_terms("Liver.") == []  # plain-text answer: use strip_grounding


@pytest.mark.parametrize(
    "text,plain",
    [
        ("<ref>Liver</ref>.", "Liver"),
        ("Liver.", "Liver"),
        ("肝脏。", "肝脏"),
        ("The region <box>[[1,2,3,4]]</box> shows the <ref>spleen</ref>.", "The region shows the spleen"),
        ("  右肾！ ", "右肾"),
        ("<|im_end|>", ""),
    ],
)
def test_strip_grounding(text: str, plain: str) -> None:
    assert strip_grounding(text) == plain


def test_normalise_text_fullwidth() -> None:
    assert normalise_text("［１２，３４］：（）；") == "[12,34]:();"


box_st = st.tuples(*(st.integers(0, 999) for _ in range(4)))


@given(st.lists(box_st, min_size=1, max_size=5), st.sampled_from(["liver", "左肾", "right kidney", "portal vein"]))
def test_round_trip_with_writer_format(boxes: list[tuple[int, int, int, int]], term: str) -> None:
    """What pipeline.regions.coords.format_boxes writes, this parser reads back (tagged and tag-stripped)."""
    tagged = f"<ref>{term}</ref><box>{format_boxes(boxes)}</box>"
    assert parse_grounded(tagged) == [ParsedRef(term, list(boxes))]
    stripped = f"{term}{format_boxes(boxes)}"
    assert parse_grounded(stripped) == [ParsedRef(term, list(boxes))]
