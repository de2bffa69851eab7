"""Template banks and context vocabulary (pipeline/language/templates.py, schemas/language.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from pipeline.language.templates import (
    TASKS,
    TemplateSet,
    check_grounding,
    load_templates,
    load_vocab,
)
from schemas.language import SLOTS, TemplateBankSpec

REPO = Path(__file__).resolve().parents[1]
LANGS = ("en", "zh")

SAMPLE_VALUES = {
    "en": {
        "image": "CT image", "modality": "CT", "body_region": "abdomen",
        "box": "<box>[[10, 20, 30, 40]]</box>",
        "boxes": "<box>[[10, 20, 30, 40]]</box>, <box>[[50, 60, 70, 80]]</box>", "n": 2,
        "term": "right kidney", "Term": "Right kidney", "ref": "<ref>right kidney</ref>",
        "refs": "<ref>right kidney</ref>, <ref>liver</ref> and <ref>spleen</ref>",
        "grounded": "<ref>right kidney</ref><box>[[10, 20, 30, 40]]</box>, <ref>liver</ref><box>[[50, 60, 70, 80]]</box>",
        "position": "upper left part of the image", "size": "small",
    },
    "zh": {
        "image": "计算机断层扫描（CT）图像", "modality": "计算机断层扫描（CT）", "body_region": "腹部",
        "box": "<box>[[10, 20, 30, 40]]</box>",
        "boxes": "<box>[[10, 20, 30, 40]]</box>、<box>[[50, 60, 70, 80]]</box>", "n": 2,
        "term": "右肾", "Term": "右肾", "ref": "<ref>右肾</ref>",
        "refs": "<ref>右肾</ref>、<ref>肝</ref>和<ref>脾</ref>",
        "grounded": "<ref>右肾</ref><box>[[10, 20, 30, 40]]</box>，<ref>肝</ref><box>[[50, 60, 70, 80]]</box>",
        "position": "图像左上部", "size": "较小",
    },
}  # fmt: skip


@pytest.fixture(scope="module")
def ts() -> TemplateSet:
    return load_templates()


def test_every_task_and_language_has_a_bank(ts: TemplateSet) -> None:
    for task in TASKS:
        for lang in LANGS:
            bank = ts.bank(task, lang)
            assert bank.system, (task, lang)
            assert {t.slot for t in bank.templates} == set(SLOTS[task])


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("lang", LANGS)
def test_bank_sizes(task: str, lang: str, ts: TemplateSet) -> None:
    bank = ts.bank(task, lang)
    assert len(bank.questions) >= 50
    assert len(bank.answers) >= 20
    for slot in SLOTS[task]:
        # every slot works without a known body region
        assert len(bank.choices(slot, body_region_known=False)) >= 10, slot


def test_ids_are_unique_and_stable_shaped(ts: TemplateSet) -> None:
    seen: set[str] = set()
    for bank in ts.banks.values():
        for sid, _text in bank.system:
            assert sid not in seen
            seen.add(sid)
        for t in bank.templates:
            assert re.fullmatch(r"(r2t|t2r|grg)\.(en|zh)\.[qa]\d{3}", t.id)
            assert t.id not in seen
            seen.add(t.id)
            assert ts.template(t.id) is t


@pytest.mark.parametrize("lang", LANGS)
def test_every_template_renders_well_formed(lang: str, ts: TemplateSet) -> None:
    values = SAMPLE_VALUES[lang]
    for task in TASKS:
        bank = ts.bank(task, lang)
        for t in bank.templates:
            text = t.render(values)
            assert "{" not in text and "}" not in text, t.id
            assert check_grounding(text) == [], (t.id, text)
            if lang == "zh":
                literal = re.sub(r"<box>.*?</box>", "", text)
                assert not set(literal) & set(",?!;:()"), (t.id, text)
                assert not re.search(r"[\u4e00-\u9fff]\.", literal), (t.id, text)
            else:
                assert not re.search(r"[\u4e00-\u9fff，。？！：；（）、]", text), (t.id, text)


def test_report_sentences_have_no_colon(ts: TemplateSet) -> None:
    """A report line is ``head: sentence``; a colon inside the sentence would split it twice."""
    for lang in LANGS:
        for t in ts.bank("grounded_report", lang).answers:
            assert ":" not in t.text and "：" not in t.text, t.id


def test_system_prompts_carry_no_tags_or_placeholders(ts: TemplateSet) -> None:
    for bank in ts.banks.values():
        for _sid, text in bank.system:
            assert "<" not in text and ">" not in text and "{" not in text
            assert "0 to 999" in text or "0到999" in text


def test_chinese_grounded_report_system_prompt_asks_for_fullwidth_colon(ts: TemplateSet) -> None:
    assert "：" in ts.bank("grounded_report", "zh").system[0][1]


# ----------------------------------------------------------------------------------------- validation


def _bank(*templates: dict, lang: str = "en", task: str = "region_to_text", system: str | None = None) -> dict:
    abbr = {"region_to_text": "r2t", "text_to_region": "t2r", "grounded_report": "grg"}[task]
    sys_text = system or ("You are a helpful assistant." if lang == "en" else "你是一个医疗助手。")
    return {
        "task": task,
        "lang": lang,
        "system": [{"id": f"{abbr}.{lang}.s001", "text": sys_text}],
        "templates": list(templates),
    }


def test_a_good_bank_validates() -> None:
    bank = TemplateBankSpec.model_validate(
        _bank(
            {"id": "r2t.en.q001", "slot": "question_single", "text": "What is {box} in this {image}?"},
            {"id": "r2t.en.a001", "slot": "answer_single", "text": "The {term}."},
        )
    )
    assert bank is not None and "r2t.en.q001" in bank.model_dump_json()


@pytest.mark.parametrize(
    ("template", "lang", "message"),
    [
        ({"id": "r2t.en.q001", "slot": "question_single", "text": "What is {box} {colour}?"}, "en", "not allowed"),
        ({"id": "r2t.en.q001", "slot": "question_single", "text": "What is this?"}, "en", "missing required"),
        ({"id": "r2t.en.a001", "slot": "answer_single", "text": "Something."}, "en", "must name the term"),
        ({"id": "r2t.en.q001", "slot": "question_single", "text": "What is <ref>x</ref> {box}?"}, "en", "literal tags"),
        ({"id": "r2t.en.q001", "slot": "question_single", "text": "What is (in {box}?"}, "en", "unclosed"),
        ({"id": "r2t.en.q001", "slot": "question_single", "text": "What is ] in {box}?"}, "en", "unbalanced"),
        ({"id": "r2t.en.q001", "slot": "question_single", "text": "What is {box}？"}, "en", "full-width"),
        ({"id": "r2t.en.q001", "slot": "question_single", "text": "{box}是什么?"}, "zh", "id must start"),
        ({"id": "r2t.zh.q001", "slot": "question_single", "text": "{box}是什么?"}, "zh", "ASCII punctuation"),
        ({"id": "r2t.zh.q001", "slot": "question_single", "text": "What is {box}?"}, "zh", "Chinese text"),
        ({"id": "r2t.en.a001", "slot": "question_single", "text": "What is {box}?"}, "en", "letter 'q'"),
        ({"id": "r2t.en.q001", "slot": "question_bogus", "text": "What is {box}?"}, "en", "unknown slot"),
        ({"id": "r2t.en.q001", "slot": "question_single", "text": "What is {box} and {box}?"}, "en", "only once"),
        ({"id": "r2t.en.q001", "slot": "question_single", "text": "What is {box:>5}?"}, "en", "format spec"),
        ({"id": "r2t.en.q001", "slot": "question_single", "text": "What is {box?"}, "en", "expected|unmatched|Single"),
    ],
)
def test_bad_templates_are_rejected(template: dict, lang: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TemplateBankSpec.model_validate(_bank(template, lang=lang))


def test_duplicate_ids_and_texts_are_rejected() -> None:
    a = {"id": "r2t.en.q001", "slot": "question_single", "text": "What is {box}?"}
    with pytest.raises(ValueError, match="duplicate id"):
        TemplateBankSpec.model_validate(_bank(a, dict(a, text="Name {box}.")))
    with pytest.raises(ValueError, match="same text"):
        TemplateBankSpec.model_validate(_bank(a, dict(a, id="r2t.en.q002")))


def test_system_prompt_rules() -> None:
    t = {"id": "r2t.en.q001", "slot": "question_single", "text": "What is {box}?"}
    with pytest.raises(ValueError, match="no placeholders"):
        TemplateBankSpec.model_validate(_bank(t, system="Use <ref>x</ref>."))
    TemplateBankSpec.model_validate(
        _bank({"id": "r2t.zh.q001", "slot": "question_single", "text": "{box}是什么？"}, lang="zh",
              system="区域用边界框[x1, y1, x2, y2]表示。")
    )  # fmt: skip


def test_load_templates_rejects_a_bad_file(tmp_path: Path) -> None:
    bad = _bank({"id": "r2t.en.q001", "slot": "question_single", "text": "What is {bogus}?"})
    (tmp_path / "region_to_text.en.yaml").write_text(yaml.safe_dump(bad), encoding="utf-8")
    with pytest.raises(ValueError, match="region_to_text.en.yaml"):
        load_templates(tmp_path)


def test_bank_file_name_must_match(tmp_path: Path) -> None:
    good = _bank(
        {"id": "r2t.en.q001", "slot": "question_single", "text": "What is {box}?"},
        {"id": "r2t.en.q002", "slot": "question_multi", "text": "What are {boxes}?"},
        {"id": "r2t.en.a001", "slot": "answer_single", "text": "{term}"},
        {"id": "r2t.en.a002", "slot": "answer_multi", "text": "{grounded}"},
    )
    (tmp_path / "r2t.yaml").write_text(yaml.safe_dump(good), encoding="utf-8")
    with pytest.raises(ValueError, match="must be named"):
        load_templates(tmp_path)


# ----------------------------------------------------------------------------------------- grounding check


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("<ref>liver</ref><box>[[1, 2, 3, 4]]</box>", True),
        ("<ref>肝</ref><box>[[1, 2, 3, 4], [5, 6, 7, 8]]</box>：肝位于图像左上部。", True),
        ("<box>[[1, 2, 3, 4]]</box>", True),
        ("<ref>liver</ref><box>[[1,2,3,4]]</box>", False),  # MedRegA spacing is ", "
        ("<ref>liver<box>[[1, 2, 3, 4]]</box></ref>", False),
        ("<ref>liver</ref><box>[[3, 2, 1, 4]]</box>", False),
        ("<ref>liver</ref><box>[[1, 2, 3, 1000]]</box>", False),
        ("<ref></ref>", False),
        ("<ref>liver", False),
    ],
)
def test_check_grounding(text: str, ok: bool) -> None:
    assert (check_grounding(text) == []) is ok


# ----------------------------------------------------------------------------------------- vocab


def test_vocab_words() -> None:
    v = load_vocab()
    assert v.modality_words("CT", "en") == ("CT", "CT image")
    assert v.modality_words("ct", "zh") == ("计算机断层扫描（CT）", "CT图像")
    assert v.modality_words("MRI", "zh")[0] == "磁共振（MR）"
    assert v.modality_words("XR", "zh") == ("X线", "X线图像")
    assert v.modality_words("US", "zh")[0] == "超声"
    assert v.modality_words("endoscopy", "zh")[0] == "内镜"
    assert v.modality_words("fundus", "zh")[1] == "眼底照片"
    assert v.modality_words("dermoscopy", "zh")[0] == "皮肤镜"
    assert v.modality_words("holography", "en") == ("holography", "holography image")
    assert v.body_region_word("chest", "zh") == "胸部"
    assert v.body_region_word("whole body", "en") == "whole body"
    assert v.body_region_word("nowhere", "en") is None
    assert v.body_region_word(None, "en") is None
    assert v.position("upper_left", "zh") == "图像左上部"
    assert v.size("large", "en") == "large"
    assert v.punctuation["zh"].colon == "："


def _card_contexts() -> list[tuple[str, str, str | None]]:
    out = []
    for path in sorted((REPO / "sources" / "cards").glob("*.y*ml")):
        card = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        out.append((path.name, card.get("modality"), card.get("body_region")))
        for rule in (card.get("layout") or {}).get("case_rules", []) or []:
            if isinstance(rule, dict):
                out.append((path.name, rule.get("modality", card.get("modality")), rule.get("body_region", card.get("body_region"))))
    return out


def test_card_modalities_and_body_regions_have_words() -> None:
    v = load_vocab()
    for name, modality, region in _card_contexts():
        assert modality is None or v.modality_key(modality), f"{name}: modality {modality!r} has no words in vocab"
        assert region is None or region == "auto" or v.body_region_key(region), (
            f"{name}: body region {region!r} has no words in vocab"
        )
    # `auto` picks one of the glossary's body regions per slice: each needs words too
    from pipeline.language.glossary import load_glossary

    gl = load_glossary()
    for region in sorted({r for t in gl for r in gl.term(t).body_regions}):
        assert v.body_region_key(region), f"glossary body region {region!r} has no words in vocab"
