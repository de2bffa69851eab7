"""The language lint (pipeline/language/lint.py): each rule catches what a bilingual editor marked in the
issue-12 review, and passes the text the generator writes now.  The release-wide run is in
tests/test_all_sources.py (every shipped source) and tests/test_tasks.py (every system-prompt layout)."""

from __future__ import annotations

import pytest

from pipeline.language.lint import LintHit, lint_rows
from pipeline.language.templates import load_templates

TS = load_templates()


def _row(task: str, subtask: str, lang: str, question: str, answer: str, regions=(), system: str | None = None) -> dict:
    turns = [{"from": "human", "value": "<image>\n" + question}, {"from": "gpt", "value": answer}]
    if system is not None:
        turns.insert(0, {"from": "system", "value": system})
    return {
        "id": "r1",
        "conversations": turns,
        "meta": {"task": task, "subtask": subtask, "lang": lang,
                 "regions": [{"term": t, "box": list(b)} for t, b in regions]},
    }  # fmt: skip


LIVER = [("liver", (10, 20, 300, 400))]
LUNGS = [("covid19_infection", (100, 300, 400, 700)), ("covid19_infection", (600, 300, 900, 700))]
CART = [("costal_cartilages", (195, 117, 275, 178)), ("costal_cartilages", (702, 117, 782, 178))]

GOOD = [
    _row(
        "region_to_text", "single", "en", "What is shown in the region <box>[[10, 20, 300, 400]]</box>?", "liver", LIVER
    ),
    _row("region_to_text", "single", "zh", "<box>[[10, 20, 300, 400]]</box>区域显示的是什么？", "肝", LIVER),
    _row(
        "text_to_region",
        "sr_so",
        "en",
        "Where is the <ref>liver</ref> in this CT image?",
        "<ref>liver</ref><box>[[10, 20, 300, 400]]</box>",
        LIVER,
    ),
    _row(
        "text_to_region",
        "sr_mo",
        "en",
        "Where are the <ref>COVID-19 lesion</ref> regions?",
        "<ref>COVID-19 lesion</ref><box>[[100, 300, 400, 700], [600, 300, 900, 700]]</box>",
        LUNGS,
    ),
    _row(
        "text_to_region",
        "absent",
        "en",
        "Locate every <ref>nodule</ref> in this X-ray image.",
        "No nodule is seen in this image.",
    ),
    _row("text_to_region", "absent", "zh", "请检查图像中有无<ref>结节</ref>，并标出其位置。", "这张图像中没有结节。"),
    _row(
        "text_to_region",
        "mr_so",
        "zh",
        "给出<ref>肝</ref>和<ref>脾</ref>的边界框。",
        "<ref>肝</ref><box>[[10, 20, 300, 400]]</box>、<ref>脾</ref><box>[[500, 30, 700, 200]]</box>",
        [*LIVER, ("spleen", (500, 30, 700, 200))],
    ),
    _row(
        "grounded_report",
        "targeted",
        "en",
        "Describe the <ref>COVID-19 lesion</ref> regions and give their bounding boxes.",
        "<ref>COVID-19 lesion</ref><box>[[100, 300, 400, 700], [600, 300, 900, 700]]</box>: "
        "Two COVID-19 lesions are seen on both sides of the image.",
        LUNGS,
    ),
    _row(
        "grounded_report",
        "open",
        "en",
        "Please write a grounded report for this CT image.",
        "<ref>costal cartilages</ref><box>[[195, 117, 275, 178], [702, 117, 782, 178]]</box>: "
        "The costal cartilages are seen in the upper left and upper right parts of the image.",
        CART,
    ),
    _row(
        "grounded_report",
        "open",
        "zh",
        "请为这张CT图像撰写定位报告。",
        "<ref>肋软骨</ref><box>[[195, 117, 275, 178], [702, 117, 782, 178]]</box>：肋软骨见于图像左上部和右上部。",
        CART,
    ),
]


def _rules(row: dict, **kw: str) -> set[str]:
    return {h.rule for h in lint_rows([row], **kw)}


def test_good_rows_are_clean() -> None:
    assert lint_rows(GOOD) == []


@pytest.mark.parametrize(
    ("row", "rule"),
    [
        # issue 12 B7: a bare countable noun, "the" before a mass noun, "a" before a vowel sound, agreement
        (
            _row(
                "text_to_region",
                "sr_so",
                "en",
                "Locate <ref>liver</ref>.",
                "<ref>liver</ref><box>[[10, 20, 300, 400]]</box>",
                LIVER,
            ),
            "en-article",
        ),
        (
            _row(
                "text_to_region",
                "absent",
                "en",
                "Where is the <ref>atelectasis</ref>?",
                "There is no atelectasis here.",
            ),
            "en-article",
        ),
        (
            _row(
                "grounded_report",
                "open",
                "en",
                "Describe this CT image.",
                "<ref>liver</ref><box>[[10, 20, 300, 400]]</box>: The liver occupies a area in a upper part.",
                LIVER,
            ),
            "en-article",
        ),
        (
            _row(
                "grounded_report",
                "open",
                "en",
                "Describe this CT image.",
                "<ref>costal cartilages</ref><box>[[195, 117, 275, 178], [702, 117, 782, 178]]</box>: "
                "The costal cartilages is seen in the upper part of the image.",
                CART,
            ),
            "en-number",
        ),
        (
            _row(
                "grounded_report",
                "open",
                "en",
                "Describe this CT image.",
                "<ref>COVID-19 lesion</ref><box>[[100, 300, 400, 700], [600, 300, 900, 700]]</box>: "
                "The COVID-19 lesion is seen in the center of the image.",
                LUNGS,
            ),
            "en-number",
        ),
        (
            _row(
                "text_to_region",
                "sr_so",
                "en",
                "Where are the <ref>liver</ref>?",
                "<ref>liver</ref><box>[[10, 20, 300, 400]]</box>",
                LIVER,
            ),
            "en-number",
        ),
        (
            _row(
                "text_to_region",
                "sr_so",
                "en",
                "Where is the <ref>liver</ref>?",
                "The bounding boxes are <ref>liver</ref><box>[[10, 20, 300, 400]]</box>.",
                LIVER,
            ),
            "en-number",
        ),
        # issue 8 item 3 / issue 12 B9: sentences where the prompt asks for the name; a position-only report
        (
            _row(
                "region_to_text",
                "single",
                "en",
                "What is in <box>[[10, 20, 300, 400]]</box>?",
                "What the box marks is the liver.",
                LIVER,
            ),
            "contradiction",
        ),
        (
            _row(
                "region_to_text", "single", "zh", "<box>[[10, 20, 300, 400]]</box>是什么？", "标记的区域为肝。", LIVER
            ),
            "contradiction",
        ),
        (
            _row(
                "text_to_region", "absent", "en", "Find every <ref>polyp</ref>.", "This image does not show the polyp."
            ),
            "contradiction",
        ),
        (
            _row(
                "text_to_region",
                "absent",
                "en",
                "Find every <ref>polyp</ref>.",
                "<ref>polyp</ref><box>[[1, 2, 3, 4]]</box>",
            ),
            "contradiction",
        ),
        (
            _row(
                "text_to_region",
                "sr_so",
                "en",
                "Find all instances of <ref>liver</ref> in this CT image.",
                "<ref>liver</ref><box>[[10, 20, 300, 400]]</box>",
                LIVER,
            ),
            "contradiction",
        ),
        (
            _row(
                "text_to_region",
                "sr_so",
                "zh",
                "找出这张CT图像中所有的<ref>肝</ref>。",
                "<ref>肝</ref><box>[[10, 20, 300, 400]]</box>",
                LIVER,
            ),
            "contradiction",
        ),
        (
            _row(
                "text_to_region",
                "sr_so",
                "en",
                "Where is the <ref>liver</ref>?",
                "<ref>liver</ref><box>[[1, 2, 3, 4]]</box>",
                LIVER,
            ),
            "contradiction",
        ),
        (
            _row(
                "grounded_report",
                "targeted",
                "en",
                "Describe the <ref>liver</ref> and the <ref>spleen</ref>.",
                "<ref>liver</ref><box>[[10, 20, 300, 400]]</box>: The liver is seen in the left part of the image.",
                LIVER,
            ),
            "contradiction",
        ),
        # a <ref> that is not the row language's display name (old names, the other language, a synonym)
        (
            _row(
                "text_to_region",
                "sr_so",
                "en",
                "Where is the <ref>livers</ref>?",
                "<ref>livers</ref><box>[[10, 20, 300, 400]]</box>",
                LIVER,
            ),
            "ref",
        ),
        (
            _row(
                "text_to_region",
                "sr_so",
                "zh",
                "<ref>liver</ref>在哪里？",
                "<ref>liver</ref><box>[[10, 20, 300, 400]]</box>",
                LIVER,
            ),
            "ref",
        ),
        (
            _row(
                "text_to_region",
                "sr_so",
                "zh",
                "<ref>肝脏</ref>在哪里？",
                "<ref>肝脏</ref><box>[[10, 20, 300, 400]]</box>",
                LIVER,
            ),
            "ref",
        ),
        # Chinese punctuation, list separators and numerals
        (
            _row(
                "text_to_region",
                "sr_so",
                "zh",
                "<ref>肝</ref>在哪里?",
                "<ref>肝</ref><box>[[10, 20, 300, 400]]</box>",
                LIVER,
            ),
            "zh-punct",
        ),
        (
            _row(
                "text_to_region",
                "mr_so",
                "zh",
                "给出<ref>肝</ref>和<ref>脾</ref>的边界框。",
                "<ref>肝</ref><box>[[10, 20, 300, 400]]</box>，<ref>脾</ref><box>[[500, 30, 700, 200]]</box>",
                [*LIVER, ("spleen", (500, 30, 700, 200))],
            ),
            "zh-list",
        ),
        (
            _row(
                "region_to_text",
                "multi",
                "zh",
                "这2个区域<box>[[10, 20, 300, 400]]</box>、<box>[[500, 30, 700, 200]]</box>是什么？",
                "<ref>肝</ref><box>[[10, 20, 300, 400]]</box>、<ref>脾</ref><box>[[500, 30, 700, 200]]</box>",
                [*LIVER, ("spleen", (500, 30, 700, 200))],
            ),
            "zh-numeral",
        ),
        (
            _row("region_to_text", "single", "en", "What is in <box>[[10, 20, 300, 400]]</box>？", "liver", LIVER),
            "en-script",
        ),
    ],
)
def test_each_rule_catches_its_mistake(row: dict, rule: str) -> None:
    hits = lint_rows([row])
    assert rule in {h.rule for h in hits}, hits
    assert all(isinstance(h, LintHit) and h.row_id == "r1" and h.detail for h in hits)


def test_prompts_must_be_the_banks_and_fit_the_answer_style() -> None:
    q, a = "What is shown in the region <box>[[10, 20, 300, 400]]</box>?", "liver"
    default = TS.bank("region_to_text", "en").system_prompt("default")[1]
    sentence = TS.bank("region_to_text", "en").system_prompt("sentence")[1]
    assert _rules(_row("region_to_text", "single", "en", q, a, LIVER, system=default)) == set()
    assert _rules(_row("region_to_text", "single", "en", q, a, LIVER, system="You are a radiologist.")) == {
        "contradiction"
    }
    inline = _row("region_to_text", "single", "en", default + " " + q, a, LIVER)
    assert _rules(inline) == set()
    assert "contradiction" in _rules(_row("region_to_text", "single", "en", q + " " + default, a, LIVER))
    # a name-only answer under the sentence prompt, and a sentence under the name prompt
    assert "contradiction" in _rules(
        _row("region_to_text", "single", "en", q, a, LIVER, system=sentence), region_to_text_answer="sentence"
    )
    ok = _row("region_to_text", "single", "en", q, "This is the liver.", LIVER, system=sentence)
    assert _rules(ok, region_to_text_answer="sentence") == set()
    assert "contradiction" in _rules(ok)
