"""Template banks and context vocabulary (pipeline/language/templates.py, schemas/language.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

import difflib
import itertools

from pipeline.language.templates import (
    TASKS,
    TemplateSet,
    check_grounding,
    compile_template,
    load_templates,
    load_vocab,
    sample_values,
)
from schemas.language import SLOTS, TemplateBankSpec
from schemas.language_banks import REACHABLE, TRAITS

REPO = Path(__file__).resolve().parents[1]
LANGS = ("en", "zh")

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
    """>= 50 question templates per task and language, and every kind of target has a choice of >= 6
    templates in every slot (also when the body region is unknown) -- except the region -> text answer,
    which is the display name alone."""
    bank = ts.bank(task, lang)
    assert len(bank.questions) >= 50
    for slot in SLOTS[task]:
        for combo in REACHABLE.get((task, slot), ({},)):
            fitting = bank.choices(slot, body_region_known=False, traits=tuple(combo.items()))
            if (task, slot) == ("region_to_text", "answer_single"):
                assert [t.text for t in fitting] == ["{term}"]
            else:
                assert len(fitting) >= 6, (slot, combo, len(fitting))


def _normalised(text: str) -> str:
    return re.sub(r"[\W_]+", " ", re.sub(r"\{\w+\}", "\u2460", text).casefold()).strip()


def test_no_near_duplicate_templates(ts: TemplateSet) -> None:
    """Two templates that can be drawn for the same target differ by more than a word: no pair with the
    same words in another order, none with a text similarity of 0.85 or more (difflib ratio)."""
    checked = 0
    for (task, lang), bank in ts.banks.items():
        for a, b in itertools.combinations(bank.templates, 2):
            combos = REACHABLE.get((task, a.slot), ({},))
            if a.slot != b.slot or not any(a.fits_traits(c) and b.fits_traits(c) for c in combos):
                continue
            na, nb = _normalised(a.text), _normalised(b.text)
            units = (sorted(na.split()), sorted(nb.split())) if lang == "en" else (sorted(na), sorted(nb))
            assert units[0] != units[1], (a.id, b.id)
            assert difflib.SequenceMatcher(None, na, nb).ratio() < 0.85, (a.id, a.text, b.id, b.text)
            checked += 1
    assert checked > 5000


def test_retired_near_duplicates_and_translationese_are_gone(ts: TemplateSet) -> None:
    """Issue 12 B9/B10: the named near-duplicates and phrasings no longer exist."""
    texts = {t.id: t.text for bank in ts.banks.values() for t in bank.templates}
    for tid in ("grg.en.a008", "r2t.en.a002", "t2r.zh.q012"):
        assert tid not in texts
    everything = "\n".join(texts.values())
    for phrase in ("你能说些什么", "带我看一遍", "分别总结", "进行分类", "勾画出", "征象", "{body_region}图像",
                   "以下{n}个", "解剖名称", "{modality} study", "region {box} of the", "condition of"):
        assert phrase not in everything, phrase


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
    values = sample_values(lang)
    for task in TASKS:
        bank = ts.bank(task, lang)
        for t in bank.templates:
            text = t.render(values)
            assert text == t.text.format_map(values), t.id  # the compiled fill is format_map
            assert "{" not in text and "}" not in text, t.id
            assert check_grounding(text) == [], (t.id, text)
            if lang == "zh":
                literal = re.sub(r"<box>.*?</box>", "", text)
                assert not set(literal) & set(",?!;:()"), (t.id, text)
                assert not re.search(r"[\u4e00-\u9fff]\.", literal), (t.id, text)
            else:
                assert not re.search(r"[\u4e00-\u9fff，。？！：；（）、]", text), (t.id, text)


def test_compiled_templates_equal_format_map() -> None:
    """``compile_template`` is a %-format string: the same text and the same KeyError as format_map."""
    values = {**sample_values("en"), "pct": "50%"}
    texts = ("", "plain", "{{literal}} {term}", "{term}{Term}", "a {n} b {{", "}}{term}{{x}}", "100% {term} %s %(x)s")
    for text in texts:
        assert compile_template(text)(values) == text.format_map(values)
    with pytest.raises(KeyError):
        compile_template("{missing}")(values)
    for bad in ("{0}", "{term!r}", "{term:>5}", "{}"):
        with pytest.raises(ValueError, match="plain name"):
            compile_template(bad)


def test_base_prompts_are_the_first_system_prompts(ts: TemplateSet) -> None:
    """The InternVL meta file's ``base_prompt`` per task x language is the bank's first (default) prompt;
    the region -> text sentence prompt is a second one."""
    prompts = ts.base_prompts()
    assert set(prompts) == {(t, lang) for t in TASKS for lang in LANGS}
    for (task, lang), text in prompts.items():
        bank = ts.bank(task, lang)
        assert text == bank.system[0][1] == bank.system_prompt("default")[1]
    sentence = ts.bank("region_to_text", "en").system_prompt("sentence")[1]
    assert "one short sentence" in sentence and "name only" in prompts[("region_to_text", "en")]


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


_MINIMAL = {
    ("region_to_text", "en"): [
        ("q", "question_single", "Which thing is at {box}?"), ("q", "question_multi", "Which things are at {boxes}?"),
        ("a", "answer_single", "{term}"), ("a", "answer_sentence", "It shows {the_term}."),
        ("a", "answer_multi", "{grounded}"),
    ],
    ("region_to_text", "zh"): [
        ("q", "question_single", "{box}处是什么东西？"), ("q", "question_multi", "{boxes}处是哪些东西？"),
        ("a", "answer_single", "{term}"), ("a", "answer_sentence", "显示{term}。"), ("a", "answer_multi", "{grounded}"),
    ],
    ("text_to_region", "en"): [
        ("q", "question_single", "Find every {ref}."), ("q", "question_multi", "Find {refs}."),
        ("a", "answer_grounded", "{grounded}"), ("a", "answer_absent", "No {term} here."),
    ],
    ("grounded_report", "en"): [
        ("q", "question_open", "Describe it all."), ("q", "question_targeted", "Describe {refs}."),
        ("a", "answer_anatomy", "{Subject} lies {position}."), ("a", "answer_finding", "{Subject} shows {position}."),
    ],
}  # fmt: skip


def _bank(*templates: dict, lang: str = "en", task: str = "region_to_text", system: str | None = None) -> dict:
    """A bank that covers every slot and target (one neutral template each, ids x9NN) plus ``templates``."""
    abbr = {"region_to_text": "r2t", "text_to_region": "t2r", "grounded_report": "grg"}[task]
    sys_text = system or ("You are a helpful assistant." if lang == "en" else "你是一个医疗助手。")
    base = [
        {"id": f"{abbr}.{lang}.{kind}{901 + i}", "slot": slot, "text": text}
        for i, (kind, slot, text) in enumerate(_MINIMAL[(task, lang)])
    ]
    return {
        "task": task,
        "lang": lang,
        "system": [{"id": f"{abbr}.{lang}.s001", "text": sys_text}],
        "templates": base + list(templates),
    }


def test_a_good_bank_validates() -> None:
    for task, lang in _MINIMAL:
        bank = TemplateBankSpec.model_validate(_bank(task=task, lang=lang))
        assert len(bank.templates) == len(_MINIMAL[(task, lang)])
    lesion = {"id": "r2t.en.q001", "slot": "question_single", "fits": {"kind": "finding"}, "text": "Which lesion: {box}?"}
    bank = TemplateBankSpec.model_validate(_bank(lesion))
    assert bank.templates[-1].fits == {"kind": ["finding"]}


@pytest.mark.parametrize(
    ("template", "lang", "message"),
    [
        ({"id": "r2t.en.q001", "slot": "question_single", "text": "What is {box} {colour}?"}, "en", "not allowed"),
        ({"id": "r2t.en.q001", "slot": "question_single", "text": "What is this?"}, "en", "missing required"),
        ({"id": "r2t.en.a001", "slot": "answer_sentence", "text": "Something."}, "en", "must name the term"),
        ({"id": "r2t.en.a001", "slot": "answer_single", "text": "Something."}, "en", "missing required"),
        ({"id": "r2t.en.a001", "slot": "answer_single", "text": "{term}."}, "en", "display name alone"),
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
        ({"id": "r2t.en.q001", "slot": "question_single", "fits": {"colour": "red"}, "text": "What is {box}?"}, "en",
         "not a trait"),
        ({"id": "r2t.en.q001", "slot": "question_single", "fits": {"kind": "organ"}, "text": "What is {box}?"}, "en",
         "not among"),
        ({"id": "r2t.en.a001", "slot": "answer_sentence", "text": "This is the {term}."}, "en", "literal article"),
    ],
)  # fmt: skip
def test_bad_templates_are_rejected(template: dict, lang: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TemplateBankSpec.model_validate(_bank(template, lang=lang))


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ({"id": "t2r.en.q001", "slot": "question_single", "text": "Where is the {ref}?"}, "literal article"),
        # a template that may be drawn for an absent finding must not presuppose it
        ({"id": "t2r.en.q001", "slot": "question_single", "text": "Where is {the_ref}?"}, "presuppose"),
        ({"id": "t2r.en.q001", "slot": "question_single", "fits": {"instances": "any"}, "text": "Where is {the_ref}?"},
         "presuppose"),
        ({"id": "t2r.en.q001", "slot": "question_single", "text": "Find {ref} or {the_ref}."}, "only once"),
        ({"id": "t2r.en.a101", "slot": "answer_absent", "text": "{The_term} is absent."}, "not allowed"),
        ({"id": "t2r.en.q001", "slot": "question_single", "fits": {"instances": "few"}, "text": "Find every {ref}."},
         "not among"),
    ],
)  # fmt: skip
def test_bad_text_to_region_templates_are_rejected(template: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TemplateBankSpec.model_validate(_bank(template, task="text_to_region"))


def test_every_kind_of_target_needs_a_template() -> None:
    """Coverage: a bank whose only single-target question fits singular phrases leaves plural ones without."""
    bank = _bank(task="text_to_region")
    bank["templates"][0] = {
        "id": "t2r.en.q901", "slot": "question_single", "fits": {"number": "singular"}, "text": "Find every {ref}.",
    }  # fmt: skip
    with pytest.raises(ValueError, match=r"question_single: no template .* fits number=plural, instances=one"):
        TemplateBankSpec.model_validate(bank)
    assert ("text_to_region", "question_single") in TRAITS


def test_duplicate_ids_and_texts_are_rejected() -> None:
    a = {"id": "r2t.en.q001", "slot": "question_single", "text": "What is {box}?"}
    with pytest.raises(ValueError, match="duplicate id"):
        TemplateBankSpec.model_validate(_bank(a, dict(a, text="Name {box}.")))
    with pytest.raises(ValueError, match="same text"):
        TemplateBankSpec.model_validate(_bank(a, dict(a, id="r2t.en.q002")))


def test_system_prompt_rules() -> None:
    with pytest.raises(ValueError, match="no placeholders"):
        TemplateBankSpec.model_validate(_bank(system="Use <ref>x</ref>."))
    TemplateBankSpec.model_validate(_bank(lang="zh", system="区域用边界框[x1, y1, x2, y2]表示。"))
    bank = _bank()
    bank["system"] = [{"id": "r2t.en.s001", "style": "sentence", "text": "Answer in a sentence."}]
    with pytest.raises(ValueError, match="canonical"):
        TemplateBankSpec.model_validate(bank)
    bank = _bank(task="text_to_region")
    bank["system"].append({"id": "t2r.en.s002", "style": "sentence", "text": "Answer in a sentence."})
    with pytest.raises(ValueError, match="only for region_to_text"):
        TemplateBankSpec.model_validate(bank)


def test_load_templates_rejects_a_bad_file(tmp_path: Path) -> None:
    bad = _bank({"id": "r2t.en.q001", "slot": "question_single", "text": "What is {bogus}?"})
    (tmp_path / "region_to_text.en.yaml").write_text(yaml.safe_dump(bad), encoding="utf-8")
    with pytest.raises(ValueError, match="region_to_text.en.yaml"):
        load_templates(tmp_path)


def test_bank_file_name_must_match(tmp_path: Path) -> None:
    (tmp_path / "r2t.yaml").write_text(yaml.safe_dump(_bank()), encoding="utf-8")
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
    # an endoscopy of the colon is a colonoscopy ("这张结肠镜图像", never "这张结肠图像")
    assert v.modality_words("endoscopy", "zh", "colon") == ("结肠镜", "结肠镜图像")
    assert v.modality_words("endoscopy", "en", "colon") == ("colonoscopy", "colonoscopy image")
    assert v.modality_words("fundus", "zh")[1] == "眼底照片"
    assert v.modality_words("dermoscopy", "zh")[0] == "皮肤镜"
    assert v.modality_words("holography", "en") == ("holography", "holography image")
    assert v.body_region_word("chest", "zh") == "胸部"
    assert v.body_region_word("whole body", "en") == "whole body"
    assert v.body_region_word("nowhere", "en") is None
    assert v.body_region_word(None, "en") is None
    # the image word already says where it is: no {body_region} templates ("这张眼部眼底照片")
    assert v.body_region_word("eye", "zh", "fundus") is None and v.body_region_word("colon", "zh", "endoscopy") is None
    assert v.body_region_word("breast", "zh", "US") == "乳腺"
    assert v.body_region_parts("head_neck") == {"head", "neck"} and v.body_region_parts("chest") == {"thorax"}
    assert v.position("upper_left", "zh") == "图像左上部"
    assert v.position("upper_left", "en") == "in the upper left part of the image"
    assert v.size("large", "en") == "large"
    assert v.punctuation["zh"].colon == "："
    assert (v.number(2, "zh"), v.number(4, "zh"), v.number(3, "en"), v.number(99, "en")) == ("两", "四", "three", "99")


def test_positions_of_several_boxes() -> None:
    """Issue 12 A4: a term with several boxes is placed box by box, never at the centre of their union."""
    v = load_vocab()
    assert v.positions_phrase(("middle_left", "middle_right"), "en") == "on both sides of the image"
    assert v.positions_phrase(("middle_left", "middle_right"), "zh") == "图像两侧"
    two = "in the upper left and lower right parts of the image"
    assert v.positions_phrase(("upper_left", "lower_right"), "en") == two
    assert v.positions_phrase(("upper_left", "middle_center", "lower_right"), "zh") == "图像左上部、中央和右下部"
    assert v.positions_phrase(("upper_left", "upper_right", "lower_left", "lower_right"), "en") == (
        "in several parts of the image"
    )
    assert v.positions_phrase(("middle_center",), "en") == "in the center of the image"


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
