"""Sample generation for one display slice (pipeline/language/tasks.py)."""

from __future__ import annotations

import hashlib
import re
from collections import Counter, defaultdict
from collections.abc import Iterator

import numpy as np
import pytest

from pathlib import Path

from pipeline.core.types import Region
from pipeline.language.glossary import load_glossary, load_label_map
from pipeline.language.lint import lint_rows
from pipeline.language.slices import SliceView
from pipeline.language.tasks import (
    AMBIGUOUS_IOU,
    Generated,
    Language,
    SliceContext,
    TaskMix,
    generate,
)
from pipeline.language.templates import check_grounding, load_templates
from pipeline.language.voice import phrase_traits
from pipeline.regions.coords import box_iou, normalise_box, order_boxes
from schemas.records import Turn

G = load_glossary()
TS = load_templates()
#: a frozen copy of the language data (glossary, banks, vocab, label maps) for the golden digest: accepting
#: an expansion or editing a bank changes pipeline/language/data, not this
FIXTURE_LANGUAGE = Path(__file__).resolve().parent / "fixtures" / "language"
TASKS = ("region_to_text", "text_to_region", "grounded_report")
LANGS = ("en", "zh")
BOX_RE = re.compile(r"\[(\d+), (\d+), (\d+), (\d+)\]")
REF_RE = re.compile(r"<ref>(.*?)</ref>")

# term pools per (modality, body region) for synthetic slices
POOLS = {
    ("CT", "abdomen"): ["liver", "spleen", "kidney_right", "kidney_left", "aorta", "inferior_vena_cava", "pancreas",
                        "gallbladder", "stomach", "vertebrae_L1", "rib_left_11", "rib_right_11", "colon", "duodenum",
                        "autochthon_left", "autochthon_right", "kidney_cyst_left", "portal_vein_and_splenic_vein"],
    ("MR", "abdomen"): ["liver", "spleen", "kidney_right", "kidney_left", "vertebrae", "intervertebral_discs",
                        "spinal_cord", "iliopsoas_left", "iliopsoas_right"],
    ("XR", "thorax"): ["lung_left", "lung_right", "atelectasis", "cardiomegaly", "pleural_effusion", "nodule", "mass",
                       "pneumothorax", "infiltration", "pneumonia"],
    ("endoscopy", "colon"): ["polyp", "neoplastic_polyp", "non_neoplastic_polyp"],
    ("fundus", None): ["optic_disc", "optic_cup"],
    ("US", "breast"): ["breast_tumor"],
    ("dermoscopy", "skin"): ["melanoma"],
    ("CT", None): ["heart_atrium_left", "heart_atrium_right", "heart_ventricle_left", "heart_ventricle_right",
                   "heart_myocardium", "aorta", "lung_upper_lobe_left", "lung_lower_lobe_right", "vertebrae_T9",
                   "rib_left_9", "rib_right_9", "esophagus"],
}  # fmt: skip


def _region(term: str, px: tuple[int, int, int, int], w: int, h: int) -> Region:
    return Region(term=term, box_px=px, box=normalise_box(px, w, h), area=(px[2] - px[0] + 1) * (px[3] - px[1] + 1))


def make_ctx(seed: int, max_terms: int = 8) -> SliceContext:
    """A random but plausible slice: 1..max_terms terms, some with several components."""
    r = np.random.default_rng(seed)
    keys = list(POOLS)
    modality, body_region = keys[int(r.integers(len(keys)))]
    pool = POOLS[(modality, body_region)]
    w, h = int(r.integers(64, 1400)), int(r.integers(64, 1400))
    n_terms = int(r.integers(1, min(max_terms, len(pool)) + 1))
    terms = [pool[i] for i in r.choice(len(pool), n_terms, replace=False)]
    regions = []
    for t in terms:
        for comp in range(int(r.choice([1, 1, 1, 2, 3]))):
            x0, y0 = int(r.integers(0, w - 8)), int(r.integers(0, h - 8))
            x1, y1 = int(r.integers(x0 + 2, min(w, x0 + w // 2 + 4))), int(r.integers(y0 + 2, min(h, y0 + h // 2 + 4)))
            reg = _region(t, (x0, y0, x1, y1), w, h)
            reg.component = comp
            regions.append(reg)
    absent = [t for t in pool if t not in terms]
    # every other slice: the source annotates its findings exhaustively (they may be asked for as absent)
    return SliceContext(modality, body_region, "axial", w, h, regions, absent, exhaustive_findings=seed % 2 == 0)


MIX = TaskMix(tasks={"region_to_text": 2.0, "text_to_region": 2.0, "grounded_report": 1.5}, langs=["en", "zh"])


def as_rows(gens: list[Generated]) -> list[dict]:
    """Generated samples as release rows (what the lint reads)."""
    return [
        {"id": f"{g.task}.{g.lang}.{g.key}.{i}", "conversations": g.conversations,
         "meta": {"task": g.task, "subtask": g.subtask, "lang": g.lang,
                  "regions": [{"term": r.term, "box": list(r.box)} for r in g.regions]}}
        for i, g in enumerate(gens)
    ]  # fmt: skip


@pytest.fixture(scope="module")
def corpus() -> list[tuple[SliceContext, list[Generated]]]:
    out = []
    for seed in range(400):
        ctx = make_ctx(seed)
        out.append((ctx, generate(ctx, MIX, np.random.default_rng(1000 + seed))))
    return out


def _text(g: Generated) -> tuple[str, str]:
    conv = [t for t in g.conversations if t["from"] != "system"]
    return conv[0]["value"], conv[1]["value"]


def _boxes(text: str) -> list[tuple[int, ...]]:
    return [tuple(int(v) for v in m) for m in BOX_RE.findall(text)]


# ----------------------------------------------------------------------------------------- determinism


def test_same_rng_seed_gives_identical_output() -> None:
    for seed in range(30):
        ctx = make_ctx(seed)
        a = generate(ctx, MIX, np.random.default_rng(seed))
        b = generate(ctx, MIX, np.random.default_rng(seed))
        assert a == b


def test_output_depends_on_the_rng() -> None:
    ctx = make_ctx(3, max_terms=8)
    outs = {repr(generate(ctx, MIX, np.random.default_rng(s))) for s in range(5)}
    assert len(outs) > 1


def test_region_input_order_does_not_matter() -> None:
    ctx = make_ctx(11)
    shuffled = SliceContext(**{**ctx.__dict__, "regions": list(reversed(ctx.regions))})
    assert generate(ctx, MIX, np.random.default_rng(5)) == generate(shuffled, MIX, np.random.default_rng(5))


# ----------------------------------------------------------------------------------------- templates


def test_every_template_in_use_exists_and_is_well_formed(corpus) -> None:
    for _ctx, gens in corpus:
        for g in gens:
            assert g.template_ids[0] == g.template_id
            for tid in g.template_ids:
                t = TS.template(tid)
                assert t.task == g.task and t.lang == g.lang
            assert TS.template(g.template_id).is_question
            assert all(not TS.template(t).is_question for t in g.template_ids[1:])
            for turn in g.conversations:
                Turn.model_validate(turn)
                assert check_grounding(turn["value"]) == [], turn["value"]
                assert "{" not in turn["value"] and "}" not in turn["value"]


def test_at_least_40_question_templates_per_task_and_language_are_used(corpus) -> None:
    used: dict[tuple[str, str], set[str]] = defaultdict(set)
    for _ctx, gens in corpus:
        for g in gens:
            used[(g.task, g.lang)].add(g.template_id)
    for task in TASKS:
        for lang in LANGS:
            assert len(used[(task, lang)]) >= 40, (task, lang, len(used[(task, lang)]))


def test_every_subtask_occurs(corpus) -> None:
    seen = Counter((g.task, g.subtask) for _c, gens in corpus for g in gens)
    for sub in ("single", "multi"):
        assert seen[("region_to_text", sub)] > 0
    for sub in ("sr_so", "sr_mo", "mr_so", "mr_mo", "absent"):
        assert seen[("text_to_region", sub)] > 0, sub
    for sub in ("open", "targeted"):
        assert seen[("grounded_report", sub)] > 0


# ----------------------------------------------------------------------------------------- content rules


def test_ref_text_is_the_display_name_in_the_row_language(corpus) -> None:
    for ctx, gens in corpus:
        for g in gens:
            q, a = _text(g)
            refs = REF_RE.findall(q) + REF_RE.findall(a)
            names = {G.display(r.term, g.lang) for r in g.regions}
            if g.subtask == "absent":
                assert len(refs) == 1
                term = G.resolve(refs[0], g.lang)
                assert term in ctx.candidate_absent_terms and G.display(term, g.lang) == refs[0]
                continue
            for ref in refs:
                assert ref in names, (ref, names)
            if g.task != "region_to_text" or g.subtask == "multi":
                assert set(refs) == names


def test_chinese_grounded_reports_use_fullwidth_colon(corpus) -> None:
    line_re = {
        "zh": re.compile(r"^<ref>[^<]+</ref><box>\[\[[\d, \[\]]+\]\]</box>：\S"),
        "en": re.compile(r"^<ref>[^<]+</ref><box>\[\[[\d, \[\]]+\]\]</box>: [A-Z]"),
    }
    n = 0
    for _ctx, gens in corpus:
        for g in gens:
            if g.task != "grounded_report":
                continue
            _q, a = _text(g)
            for line in a.split("\n"):
                assert line_re[g.lang].match(line), line
                n += 1
            if g.lang == "zh":
                assert "</box>:" not in a and "：" in a
                assert not re.search(r"[\u4e00-\u9fff][,.:;?!]", a)
    assert n > 100


def test_boxes_in_the_text_equal_the_region_boxes(corpus) -> None:
    for _ctx, gens in corpus:
        for g in gens:
            q, a = _text(g)
            boxes = [tuple(r.box) for r in g.regions]
            if g.task == "region_to_text":
                assert _boxes(q) == boxes  # the question lists the asked boxes in order
                if g.subtask == "single":
                    assert _boxes(a) == []
                else:
                    assert sorted(_boxes(a)) == sorted(boxes)
            else:
                assert _boxes(q) == []
                assert _boxes(a) == boxes  # the answer grounds exactly these, in order


def test_regions_are_in_deterministic_order(corpus) -> None:
    for _ctx, gens in corpus:
        for g in gens:
            if g.task == "region_to_text":
                assert [tuple(r.box) for r in g.regions] == order_boxes([r.box for r in g.regions])
                continue
            # grouped by term; groups ordered by their first box; boxes ordered within a group
            groups: list[list[tuple[int, ...]]] = []
            last = None
            for r in g.regions:
                if r.term != last:
                    groups.append([])
                    last = r.term
                groups[-1].append(tuple(r.box))
            assert len(groups) == len({r.term for r in g.regions})  # each term appears once
            for boxes in groups:
                assert boxes == order_boxes(boxes)
            firsts = [b[0] for b in groups]
            assert [(b[1], b[0], b[3], b[2]) for b in firsts] == sorted((b[1], b[0], b[3], b[2]) for b in firsts)


def test_several_boxes_of_one_term_share_one_list(corpus) -> None:
    multi = 0
    for _ctx, gens in corpus:
        for g in gens:
            if g.task == "text_to_region" and g.subtask in ("sr_mo", "mr_mo"):
                _q, a = _text(g)
                assert re.search(r"<box>\[\[\d+, \d+, \d+, \d+\](, \[\d+, \d+, \d+, \d+\])+\]</box>", a)
                multi += 1
    assert multi > 20


def test_subtask_shapes(corpus) -> None:
    for _ctx, gens in corpus:
        for g in gens:
            terms = Counter(r.term for r in g.regions)
            if g.subtask == "sr_so":
                assert len(terms) == 1 and len(g.regions) == 1
            elif g.subtask == "sr_mo":
                assert len(terms) == 1 and len(g.regions) >= 2
            elif g.subtask == "mr_so":
                assert len(terms) >= 2 and all(c == 1 for c in terms.values())
            elif g.subtask == "mr_mo":
                assert len(terms) >= 2 and any(c >= 2 for c in terms.values())
            elif g.subtask == "absent":
                assert g.regions == []
            elif g.subtask == "single":
                assert len(g.regions) == 1
            elif g.subtask == "multi":
                assert len(g.regions) >= 2


def test_open_reports_cover_the_whole_slice(corpus) -> None:
    for ctx, gens in corpus:
        for g in gens:
            if g.subtask == "open":
                assert sorted(map(tuple, (r.box for r in g.regions))) == sorted(tuple(r.box) for r in ctx.regions)


def test_max_regions_per_sample(corpus) -> None:
    for _ctx, gens in corpus:
        for g in gens:
            assert len(g.regions) <= MIX.max_regions_per_sample
    ctx = make_ctx(7)
    small = TaskMix(tasks=MIX.tasks, langs=["en"], max_regions_per_sample=1)
    for g in generate(ctx, small, np.random.default_rng(0)):
        assert len(g.regions) <= 1


def test_keys_are_unique_per_task_and_language(corpus) -> None:
    for _ctx, gens in corpus:
        keys = [(g.task, g.lang, g.key) for g in gens]
        assert len(keys) == len(set(keys))


def test_laterality_words_follow_the_glossary(corpus) -> None:
    for _ctx, gens in corpus:
        for g in gens:
            if g.task == "grounded_report" and g.lang == "en":
                for r in g.regions:
                    assert f"<ref>{G.display(r.term, 'en')}</ref>" in _text(g)[1]


# ----------------------------------------------------------------------------------------- answers, grammar


def test_region_to_text_single_answer_is_the_display_name_alone(corpus) -> None:
    """Issue 8 item 3: MedRegA's references (and its R2T scorer) are bare names, in both languages."""
    n = 0
    for _ctx, gens in corpus:
        for g in gens:
            if g.task == "region_to_text" and g.subtask == "single":
                assert _text(g)[1] == G.display(g.regions[0].term, g.lang)
                assert g.template_ids[1] in ("r2t.en.a001", "r2t.zh.a001")
                n += 1
    assert n > 300


def test_sentence_answers_only_with_the_option_and_its_prompt() -> None:
    mix = TaskMix(
        tasks={"region_to_text": 6.0}, langs=["en", "zh"], system_prompt="turn", region_to_text_answer="sentence"
    )
    gens = [g for s in range(20) for g in generate(make_ctx(s), mix, np.random.default_rng(s))]
    singles = [g for g in gens if g.subtask == "single"]
    assert singles
    for g in singles:
        assert g.conversations[0]["value"] == TS.bank("region_to_text", g.lang).system_prompt("sentence")[1]
        answer = _text(g)[1]
        assert G.display(g.regions[0].term, g.lang).lower() in answer.lower() and answer[-1] in ".。"
        assert TS.template(g.template_ids[1]).slot == "answer_sentence"
    assert lint_rows(as_rows(gens), region_to_text_answer="sentence") == []
    with pytest.raises(ValueError, match="inline or turn"):
        generate(make_ctx(1), TaskMix(tasks={"region_to_text": 1.0}, langs=["en"], region_to_text_answer="sentence"),
                 np.random.default_rng(0))  # fmt: skip


def _question_traits(g: Generated) -> tuple[str, ...] | None:
    """The traits the generator must have drawn the question template for (None: the slot has none)."""
    terms = G.terms
    if g.task == "region_to_text":
        kinds = {terms[r.term].kind for r in g.regions}
        return (kinds.pop() if len(kinds) == 1 else "mixed",)
    names = list(dict.fromkeys(r.term for r in g.regions))
    if g.task == "text_to_region" and g.subtask == "absent":
        term = G.resolve(REF_RE.findall(_text(g)[0])[0], g.lang)
        return phrase_traits(terms[term], 0)
    if g.task == "text_to_region" and len(names) == 1:
        return phrase_traits(terms[names[0]], len(g.regions))
    if g.task == "grounded_report" and g.subtask == "targeted":
        return (phrase_traits(terms[names[0]], len(g.regions))[0] if len(names) == 1 else "plural",)
    return None


def test_templates_are_drawn_only_for_targets_they_fit(corpus) -> None:
    """Issue 12 B7: "Find all instances of" only for several instances, "Where is" only for a singular
    phrase, report sentences in the number of their subject."""
    from schemas.language_banks import TRAITS

    checked = 0
    for _ctx, gens in corpus:
        for g in gens:
            q = TS.template(g.template_id)
            traits = _question_traits(g)
            if traits is not None and (g.task, q.slot) in TRAITS:
                assert q.fits_traits(dict(zip(TRAITS[(g.task, q.slot)], traits, strict=True))), (g.template_id, traits)
                checked += 1
            if g.task == "grounded_report":
                for tid, term in zip(g.template_ids[1:], dict.fromkeys(r.term for r in g.regions), strict=True):
                    k = sum(r.term == term for r in g.regions)
                    t = G.term(term)
                    a = TS.template(tid)
                    assert a.slot == ("answer_finding" if t.kind == "finding" else "answer_anatomy")
                    count = "countable" if t.countable else "mass"
                    assert a.fits_traits({"number": phrase_traits(t, k)[0], "count": count})
    assert checked > 2000


def test_english_phrases_follow_the_glossary_grammar() -> None:
    w = h = 512
    regions = [
        _region("costal_cartilages", (100, 60, 140, 90), w, h), _region("costal_cartilages", (360, 60, 400, 90), w, h),
        _region("polyp", (200, 200, 220, 220), w, h), _region("polyp", (300, 400, 320, 420), w, h),
        _region("atelectasis", (50, 50, 90, 90), w, h), _region("liver", (30, 100, 250, 330), w, h),
        _region("nodule", (400, 300, 420, 320), w, h),
    ]  # fmt: skip
    ctx = SliceContext("CT", "abdomen", "axial", w, h, regions, [])
    mix = TaskMix(tasks={"text_to_region": 30.0, "grounded_report": 20.0}, langs=["en"], max_regions_per_sample=20)
    text = "\n".join(t["value"] for g in generate(ctx, mix, np.random.default_rng(0)) for t in g.conversations)
    for bad in ("the <ref>atelectasis", "the <ref>polyp</ref> is", "the <ref>costal cartilages</ref> is",
                "Locate <ref>liver", "every <ref>liver", "The atelectasis", "A polyps", "Two polyps is"):
        assert bad not in text, bad
    for good in ("the <ref>polyp</ref> regions", "<ref>atelectasis</ref>", "the <ref>costal cartilages</ref>",
                 "the <ref>liver</ref>", "Two polyps", "Atelectasis", "A nodule", "The costal cartilages are"):
        assert good in text, good
    assert "<ref>nodule</ref><box>[[" in text


def test_positions_of_multi_box_terms_describe_each_box() -> None:
    """Issue 12 A4: boxes on both lungs are "on both sides of the image", never "the center"."""
    w = h = 1000
    left, right = (100, 300, 400, 700), (600, 300, 900, 700)  # image left and image right, middle band
    regions = [_region("covid19_infection", left, w, h), _region("covid19_infection", right, w, h)]
    ctx = SliceContext("XR", "thorax", "2d", w, h, regions, [])
    mix = TaskMix(tasks={"grounded_report": 12.0}, langs=["en", "zh"])
    lines = [_text(g)[1] for g in generate(ctx, mix, np.random.default_rng(3))]
    assert lines
    for line in lines:
        assert "center" not in line and "中央" not in line
        assert "on both sides of the image" in line or "图像两侧" in line, line
    en = [x for x in lines if x.isascii()]
    assert any("Two COVID-19 lesions" in x for x in en)


def test_size_words_come_from_the_mask_area() -> None:
    """A thin structure with a large box (costal cartilages) is "small": its mask covers < 1 % of the image."""
    w = h = 512
    thin = Region("costal_cartilages", (40, 60, 470, 300), normalise_box((40, 60, 470, 300), w, h), area=2000)
    big = Region("liver", (30, 100, 250, 330), normalise_box((30, 100, 250, 330), w, h), area=40000)
    sl = SliceView(SliceContext("CT", "abdomen", "axial", w, h, [thin, big], []), Language.load())
    assert sl.lines["costal_cartilages"][3] == "small"  # the box alone covers 39 % of the image
    assert sl.lines["liver"][3] == "large"  # 15 % of the image
    mix = TaskMix(tasks={"grounded_report": 20.0}, langs=["en"])
    for g in generate(SliceContext("CT", "abdomen", "axial", w, h, [thin], []), mix, np.random.default_rng(0)):
        assert "large" not in _text(g)[1] and "medium-sized" not in _text(g)[1]


def test_chinese_counts_and_lists() -> None:
    """Issue 12 B9: list items joined with "、", small counts in Chinese numerals ("这三个区域")."""
    w = h = 512
    regions = [_region(t, (40 * i, 40 * i, 40 * i + 30, 40 * i + 30), w, h)
               for i, t in enumerate(["liver", "spleen", "aorta", "kidney_left", "pancreas"])]  # fmt: skip
    ctx = SliceContext("CT", "abdomen", "axial", w, h, regions, [])
    mix = TaskMix(tasks={t: 8.0 for t in TASKS}, langs=["zh"])
    text = "\n".join(_text(g)[0] + _text(g)[1] for g in generate(ctx, mix, np.random.default_rng(1)))
    assert "</box>，<" not in text and "</ref>，<" not in text and "</box>, <" not in text
    assert "</box>、<box>" in text or "</box>、<ref>" in text
    assert not re.search(r"\d个", text)


@pytest.mark.parametrize("mode", ["none", "inline", "turn"])
def test_the_corpus_passes_the_language_lint(mode: str) -> None:
    mix = TaskMix(tasks=MIX.tasks, langs=["en", "zh"], negative_ratio=0.3, system_prompt=mode)
    gens = [g for s in range(150) for g in generate(make_ctx(s), mix, np.random.default_rng(s))]
    assert len(gens) > 1000
    assert lint_rows(as_rows(gens)) == []


# ----------------------------------------------------------------------------------------- negatives, ambiguity


def _expected_absent(ctx: SliceContext) -> set[str]:
    """Hard negatives, computed here from the glossary: terms the source annotates, of the slice's body
    region, not on the slice and not containing/contained by a present term; findings only when exhaustive."""
    present = {r.term for r in ctx.regions}
    region = {"thorax": {"thorax"}, "colon": {"colon"}, "breast": {"breast"}, "skin": {"skin"}, "abdomen": {"abdomen"}}
    regions = region.get(ctx.body_region or "", set()) or {b for t in present for b in G.term(t).body_regions}
    out = set()
    for t in ctx.candidate_absent_terms:
        term = G.terms.get(t)
        if term is None or t in present or not regions & set(term.body_regions):
            continue
        if any(G.related(t, p) for p in present):
            continue
        if term.kind == "finding" and ctx.exhaustive_findings is not True and t not in (ctx.exhaustive_findings or ()):
            continue
        out.add(t)
    return out


def test_negative_ratio_controls_absent_targets() -> None:
    all_neg = TaskMix(tasks={"text_to_region": 3.0}, langs=["en", "zh"], negative_ratio=1.0)
    no_neg = TaskMix(tasks={"text_to_region": 3.0}, langs=["en", "zh"], negative_ratio=0.0)
    both = 0
    for seed in range(60):
        ctx = make_ctx(seed)
        gens = generate(ctx, all_neg, np.random.default_rng(seed))
        usable = _expected_absent(ctx)
        if usable:
            assert gens and all(g.subtask == "absent" for g in gens)
            asked = {G.resolve(REF_RE.findall(_text(g)[0])[0], g.lang) for g in gens}
            assert asked <= usable
            both += 1
        else:  # nothing may be asked for as absent here
            assert all(g.subtask != "absent" for g in gens)
        assert all(g.subtask != "absent" for g in generate(ctx, no_neg, np.random.default_rng(seed)))
    assert both > 10


def test_default_negative_ratio_is_small(corpus) -> None:
    t2r = [g for _c, gens in corpus for g in gens if g.task == "text_to_region"]
    share = sum(g.subtask == "absent" for g in t2r) / len(t2r)
    assert 0.005 < share < 0.12


def test_hard_negatives_come_from_the_slice_body_region_and_exhaustive_findings() -> None:
    """Issue 12 A6: no brain on an abdominal CT, no polyp on a chest X-ray; a finding only when the source
    annotates it exhaustively; the answer never presupposes the target ("no polyp", not "the polyp")."""
    w = h = 512
    liver = [_region("liver", (30, 100, 250, 330), w, h)]
    cands = ["brain", "pancreas", "polyp", "kidney_cyst_left", "lung_upper_lobe_left", "femur_left", "spleen"]
    mix = TaskMix(tasks={"text_to_region": 40.0}, langs=["en", "zh"], negative_ratio=1.0)

    def asked(ctx: SliceContext) -> set[str]:
        gens = generate(ctx, mix, np.random.default_rng(0))
        for g in gens:
            if g.lang == "en" and g.subtask == "absent":
                name = REF_RE.findall(_text(g)[0])[0]
                assert name in _text(g)[1] and f"the {name}" not in _text(g)[1].lower()
        return {G.resolve(REF_RE.findall(_text(g)[0])[0], g.lang) for g in gens if g.subtask == "absent"}

    assert asked(SliceContext("CT", "abdomen", "axial", w, h, liver, cands)) == {"pancreas", "spleen"}
    exhaustive = SliceContext("CT", "abdomen", "axial", w, h, liver, cands, exhaustive_findings=["kidney_cyst_left"])
    assert asked(exhaustive) == {"pancreas", "spleen", "kidney_cyst_left"}
    assert asked(SliceContext("CT", "abdomen", "axial", w, h, liver, cands, exhaustive_findings=True)) == {
        "pancreas", "spleen", "kidney_cyst_left",
    }  # fmt: skip  (polyp: colon, not abdomen)
    lungs = [_region("lung_left", (300, 50, 480, 450), w, h)]
    chest_cands = ["polyp", "nodule", "mass", "optic_disc"]
    chest = SliceContext("XR", "thorax", "2d", w, h, lungs, chest_cands, exhaustive_findings=True)
    assert asked(chest) == {"nodule", "mass"}
    # unknown body region: the regions of the structures on the slice decide
    assert asked(SliceContext("CT", None, "axial", w, h, liver, cands)) == {"pancreas", "spleen"}


def test_absent_terms_never_contain_or_belong_to_present_terms() -> None:
    w = h = 512
    regions = [_region("lung_left", (300, 50, 480, 450), w, h), _region("nodule", (100, 100, 120, 120), w, h)]
    ctx = SliceContext("XR", "thorax", "2d", w, h, regions, ["lung", "lung_upper_lobe_left", "lung_left", "mass"],
                       exhaustive_findings=True)  # fmt: skip
    mix = TaskMix(tasks={"text_to_region": 20.0}, langs=["en"], negative_ratio=1.0)
    gens = generate(ctx, mix, np.random.default_rng(0))
    asked = {G.resolve(REF_RE.findall(_text(g)[0])[0], "en") for g in gens}
    assert asked == {"mass"}


def test_ambiguous_boxes_are_not_asked_about() -> None:
    # BiomedParse chest X-ray: "lung" has the left- and right-lung masks as components, and the
    # COVID-19 infection mask equals the lung mask
    w = h = 1024
    left, right = (556, 72, 931, 951), (68, 68, 475, 947)
    regions = [
        _region("lung", left, w, h), _region("lung", right, w, h),
        _region("lung_left", left, w, h), _region("lung_right", right, w, h),
        _region("covid19_infection", left, w, h), _region("covid19_infection", right, w, h),
        _region("nodule", (100, 500, 150, 540), w, h),
    ]  # fmt: skip
    ctx = SliceContext("XR", "thorax", "2d", w, h, regions, [])
    mix = TaskMix(tasks={"region_to_text": 10.0}, langs=["en", "zh"])
    gens = generate(ctx, mix, np.random.default_rng(0))
    assert gens
    for g in gens:
        assert [r.term for r in g.regions] == ["nodule"]
    assert AMBIGUOUS_IOU >= 0.5


def test_empty_slice() -> None:
    ctx = SliceContext("CT", "abdomen", "axial", 100, 100, [], ["liver"])
    mix = TaskMix(tasks={t: 1.0 for t in TASKS}, langs=["en", "zh"], negative_ratio=0.0)
    assert generate(ctx, mix, np.random.default_rng(0)) == []
    mix.negative_ratio = 1.0
    gens = generate(ctx, mix, np.random.default_rng(0))
    assert [g.subtask for g in gens] == ["absent", "absent"]
    ctx.candidate_absent_terms = []
    assert generate(ctx, mix, np.random.default_rng(0)) == []


# ----------------------------------------------------------------------------------------- mix handling


def test_fractional_rates() -> None:
    mix = TaskMix(tasks={"region_to_text": 0.25}, langs=["en"])
    n = sum(len(generate(make_ctx(s), mix, np.random.default_rng(s))) for s in range(400))
    assert 60 < n < 140
    mix = TaskMix(tasks={"region_to_text": 0.0, "text_to_region": 2.0}, langs=["zh"], negative_ratio=0.0)
    gens = generate(make_ctx(1), mix, np.random.default_rng(0))
    assert [g.task for g in gens] == ["text_to_region"] * 2 and {g.lang for g in gens} == {"zh"}


# ----------------------------------------------------------------------------------------- row layout
#
# The loaders a release feeds (read with the research tools, not copied):
# * InternVL ``internvl_chat/internvl/train/internvl_chat_finetune.py`` ``multi_modal_get_item`` prepends
#   ``"<image>\n"`` to ``conversations[0]`` when it holds no ``<image>``; its ``preprocess`` /
#   ``preprocess_mpt`` / ``preprocess_internlm`` (Hermes-2, internlm2-chat, phi3-chat templates) map roles
#   through ``{'human': ..., 'gpt': ...}`` only and expect human/gpt alternation; only
#   ``preprocess_internvl2_5`` takes a leading ``system`` turn.
# * MedRegA's fork ``src/internvl/train/internvl_chat_finetune.py`` removes every ``<image>\n``,
#   ``\n<image>`` and ``<image>`` from every turn, then rebuilds the first turn as
#   ``'<image>\n' + base_prompt + ' ' + value`` (``base_prompt`` from each meta-file entry) and asserts
#   exactly one ``<image>``.


def _medrega_first_turn(conversations: list[dict[str, str]], base_prompt: str) -> str:
    """MedRegA's rebuild of the first turn, restated from the contract above."""
    value = conversations[0]["value"].replace("<image>\n", "").replace("\n<image>", "").replace("<image>", "")
    return "<image>\n" + base_prompt + " " + value


def test_default_rows_are_what_internvl_and_medrega_load() -> None:
    mix = TaskMix(tasks={t: 1.5 for t in TASKS}, langs=["en", "zh"])
    assert mix.system_prompt == "none"
    inline = TaskMix(tasks=mix.tasks, langs=mix.langs, system_prompt="inline")
    for s in range(40):
        ctx = make_ctx(s)
        plain = generate(ctx, mix, np.random.default_rng(s))
        folded = generate(ctx, inline, np.random.default_rng(s))
        assert [g.key for g in plain] == [g.key for g in folded]
        for g, f in zip(plain, folded, strict=True):
            roles = [t["from"] for t in g.conversations]
            assert roles == ["human", "gpt"] and g.system_id is None
            assert g.conversations[0]["value"].startswith("<image>\n")
            assert sum(t["value"].count("<image>") for t in g.conversations) == 1
            # a default row plus the meta file's base_prompt trains exactly like an inline row
            base = TS.bank(g.task, g.lang).base_prompt
            assert _medrega_first_turn(g.conversations, base) == f.conversations[0]["value"]
            assert f.conversations[1] == g.conversations[1] and f.system_id == TS.bank(g.task, g.lang).system[0][0]


@pytest.mark.parametrize("mode", ["none", "inline", "turn"])
def test_system_prompt_modes(mode: str) -> None:
    mix = TaskMix(tasks={t: 1.0 for t in TASKS}, langs=["en", "zh"], system_prompt=mode)
    for g in generate(make_ctx(2), mix, np.random.default_rng(0)):
        froms = [t["from"] for t in g.conversations]
        system_text = TS.bank(g.task, g.lang).system[0][1]
        human = g.conversations[-2]["value"]
        assert human.startswith("<image>\n") and human.count("<image>") == 1
        if mode == "turn":  # an explicit opt-in for chat templates that accept a system role
            assert froms == ["system", "human", "gpt"]
            assert g.conversations[0]["value"] == system_text
        elif mode == "inline":
            assert froms == ["human", "gpt"]
            assert human.startswith("<image>\n" + system_text + " ")
        else:
            assert froms == ["human", "gpt"] and system_text not in human
            assert g.system_id is None


def test_errors() -> None:
    ctx = make_ctx(0)
    with pytest.raises(ValueError, match="unknown task"):
        generate(ctx, TaskMix(tasks={"captioning": 1.0}, langs=["en"]), np.random.default_rng(0))
    with pytest.raises(ValueError, match="language"):
        generate(ctx, TaskMix(tasks={"region_to_text": 1.0}, langs=["fr"]), np.random.default_rng(0))
    with pytest.raises(ValueError, match="system_prompt"):
        generate(ctx, TaskMix(tasks={}, langs=["en"], system_prompt="banner"), np.random.default_rng(0))
    with pytest.raises(ValueError, match="region_to_text_answer"):
        generate(ctx, TaskMix(tasks={}, langs=["en"], region_to_text_answer="essay"), np.random.default_rng(0))
    bad = SliceContext("CT", None, "axial", 10, 10, [Region("not_a_term", (0, 0, 5, 5), (0, 0, 500, 500), 36)], [])
    with pytest.raises(KeyError, match="not_a_term"):
        generate(bad, MIX, np.random.default_rng(0))


def test_unknown_modality_and_body_region_still_work() -> None:
    w = h = 100
    ctx = SliceContext("holography", "moon", "2d", w, h, [_region("liver", (10, 10, 50, 50), w, h)], [])
    mix = TaskMix(tasks={t: 3.0 for t in TASKS}, langs=["en", "zh"])
    gens = generate(ctx, mix, np.random.default_rng(0))
    assert gens
    for g in gens:
        assert not TS.template(g.template_id).needs_body_region


def test_colonoscopy_wording() -> None:
    """Issue 12 B9: an endoscopy of the colon is a colonoscopy image ("结肠镜图像"), and no template adds the
    body region to it ("这张结肠图像")."""
    w = h = 100
    ctx = SliceContext("endoscopy", "colon", "2d", w, h, [_region("polyp", (10, 10, 50, 50), w, h)], [])
    mix = TaskMix(tasks={t: 10.0 for t in TASKS}, langs=["en", "zh"])
    text = "\n".join(_text(g)[0] for g in generate(ctx, mix, np.random.default_rng(0)))
    assert "结肠镜" in text and "结肠图像" not in text and "结肠结肠镜" not in text and "of the colon" not in text
    assert "endoscopy" not in text


# ----------------------------------------------------------------------------------------- internals


def test_languages_share_the_plan(corpus) -> None:
    for _ctx, gens in corpus:
        by_key: dict[tuple[str, str], dict[str, Generated]] = defaultdict(dict)
        for g in gens:
            by_key[(g.task, g.key)][g.lang] = g
        for pair in by_key.values():
            assert set(pair) == {"en", "zh"}
            assert pair["en"].regions == pair["zh"].regions
            assert pair["en"].subtask == pair["zh"].subtask


def test_ambiguity_window_is_exact() -> None:
    """The top-edge window finds exactly the boxes a brute-force IoU search finds."""
    language = Language.load()
    r = np.random.default_rng(1)
    terms = ["liver", "spleen", "aorta", "lung", "lung_left"]
    checked = hits = 0
    for _ in range(300):
        w = h = 999
        regions = []
        base = [int(v) for v in sorted(r.integers(0, 990, 2))] + [int(v) for v in sorted(r.integers(0, 990, 2))]
        for _k in range(int(r.integers(2, 9))):
            jitter = r.integers(-12, 13, 4) if r.random() < 0.6 else r.integers(-300, 300, 4)
            x0, x1 = sorted((min(max(base[0] + int(jitter[0]), 0), 997), min(max(base[1] + int(jitter[1]), 0), 997)))
            y0, y1 = sorted((min(max(base[2] + int(jitter[2]), 0), 997), min(max(base[3] + int(jitter[3]), 0), 997)))
            regions.append(_region(terms[int(r.integers(len(terms)))], (x0, y0, x1 + 1, y1 + 1), w, h))
        sl = SliceView(SliceContext("CT", None, "axial", w, h, regions, []), language)
        for i, ri in enumerate(sl.regions):
            brute = any(
                rj.term != ri.term and box_iou(ri.box, rj.box) >= AMBIGUOUS_IOU
                for j, rj in enumerate(sl.regions)
                if j != i
            )
            assert sl.ambiguous(i) == brute
            checked += 1
            hits += brute
    assert checked > 500 and hits > 20


# ----------------------------------------------------------------------------------------- golden digest
#
# A sha256 over every field of every Generated for a fixed, deterministic set of slices, mixes and seeds,
# generated from the frozen language data in tests/fixtures/language (a copy of pipeline/language/data).
# It pins the exact output of the code (wording, template draws, box text, region order, keys), so that
# work on the generator provably changes nothing; editing the shipped banks or glossary (or accepting an
# LLM expansion) does not touch it.  When the code's output changes on purpose, refresh the fixture copy if
# the data format changed, recompute the digest with
# ``python -c "import sys; sys.path.insert(0, 'tests'); from test_tasks import golden_digest; print(golden_digest())"``
# and say why in the commit message.

GOLDEN_DIGEST = "18366:919becb9cf5667a8bb2292e49a8526e73f2eef1e5105e09e90cbbc954161bc33"

GOLDEN_MIXES = (
    MIX,
    TaskMix(tasks={t: 1.7 for t in TASKS}, langs=["zh", "en"], negative_ratio=0.3, max_regions_per_sample=3,
            system_prompt="inline"),
    TaskMix(tasks={"text_to_region": 3.0, "grounded_report": 1.0, "region_to_text": 0.5}, langs=["en"],
            negative_ratio=0.5, max_regions_per_sample=1, system_prompt="none"),
    TaskMix(tasks={t: 1.0 for t in TASKS}, langs=["zh"], negative_ratio=0.0, max_regions_per_sample=20),
    TaskMix(tasks={"text_to_region": 4.0}, langs=["en", "zh"], negative_ratio=1.0, max_regions_per_sample=2),
    TaskMix(tasks={t: 1.3 for t in TASKS}, langs=["en", "zh"], negative_ratio=0.2, system_prompt="turn",
            region_to_text_answer="sentence"),
)  # fmt: skip


def _golden_edge_cases() -> list[SliceContext]:
    """Hand-made slices for the paths random slices rarely take."""
    w, h = 1000, 800
    lungs = [
        _region("lung", (100, 100, 480, 700), w, h),
        _region("lung_left", (102, 101, 479, 699), w, h),  # ambiguous with "lung"
        _region("lung_right", (520, 100, 900, 700), w, h),
        _region("nodule", (300, 300, 330, 330), w, h),
        _region("nodule", (600, 400, 640, 450), w, h),
    ]
    list_boxes = [
        Region("liver", [10, 20, 300, 400], [10, 25, 300, 500], 1000, 0),  # lists, not tuples
        Region("spleen", (np.int64(500), np.int64(30), np.int64(700), np.int64(200)),
               (np.int64(500), np.int64(37), np.int64(700), np.int64(250)), 2000, 0),  # numpy ints
        Region("kidney_left", (600, 300, 700, 400), (600, 375, 700, 500), 300, 0),
        Region("kidney_left", (600, 420, 690, 470), (600, 525, 690, 587), 100, 1),
    ]  # fmt: skip
    absent = ["lung_upper_lobe_left", "lung", "liver", "heart", "lung_left", "lung_left", "aorta", "not_in_glossary"]
    return [
        SliceContext("XR", "thorax", "2d", w, h, lungs, absent),
        SliceContext("CT", None, "axial", w, h, list_boxes, ["liver", "pancreas", "kidney"]),
        SliceContext("holography", "moon", "2d", w, h, lungs[2:], ["lung"]),
        SliceContext("CT", "abdomen", "axial", w, h, [], ["liver", "spleen"]),
        SliceContext("MR", "abdomen", "axial", w, h, [_region("liver", (0, 0, 999, 799), w, h)], []),
    ]


def _bench_like_slices(n_regions: int, seed: int = 0) -> list[SliceContext]:
    """CT-like slices as benchmarks/b8_samples.py builds them (a copy, so that the digest does not change
    when the benchmark does): 4-16 TotalSegmentator terms each, some with several components."""
    r = np.random.default_rng(seed)
    vocab = sorted(set(load_label_map("totalseg_total", FIXTURE_LANGUAGE).values()))
    slices: list[SliceContext] = []
    total = 0
    while total < n_regions:
        w, h = 512, int(r.integers(384, 513))
        terms = [vocab[i] for i in r.choice(len(vocab), int(r.integers(4, 17)), replace=False)]
        regions: list[Region] = []
        for t in terms:
            for comp in range(int(r.choice([1, 1, 1, 1, 2, 3]))):
                if total + len(regions) >= n_regions:
                    break
                x0, y0 = int(r.integers(0, w - 40)), int(r.integers(0, h - 40))
                x1, y1 = x0 + int(r.integers(4, 120)), y0 + int(r.integers(4, 120))
                px = (x0, y0, min(x1, w - 1), min(y1, h - 1))
                regions.append(Region(t, px, normalise_box(px, w, h), (px[2] - px[0]) * (px[3] - px[1]), comp))
        total += len(regions)
        present = {rg.term for rg in regions}
        slices.append(SliceContext("CT", "abdomen", "axial", w, h, regions, [t for t in vocab if t not in present],
                                   exhaustive_findings=True))  # fmt: skip
    return slices


#: the benchmark's default mix
B8_MIX = TaskMix(tasks={t: 1.0 for t in TASKS}, langs=["en", "zh"], negative_ratio=0.05, max_regions_per_sample=8)


def _golden_cases() -> Iterator[tuple[SliceContext, TaskMix, int]]:
    for i, ctx in enumerate(_bench_like_slices(20_000)):
        yield ctx, B8_MIX, 7_000 + i
    for k, mix in enumerate(GOLDEN_MIXES):
        for seed in range(150):
            yield make_ctx(seed, max_terms=4 + seed % 9), mix, 100_000 * k + seed
        for j, ctx in enumerate(_golden_edge_cases()):
            for seed in range(20):
                yield ctx, mix, 900_000 + 1000 * k + 100 * j + seed


def golden_digest() -> str:
    """sha256 over every Generated field of :func:`_golden_cases`, in order."""
    h = hashlib.sha256()
    n = 0
    language = Language.load(FIXTURE_LANGUAGE)
    for ctx, mix, seed in _golden_cases():
        # copies: generate must not depend on (or change) the caller's lists
        ctx = SliceContext(**{**ctx.__dict__, "regions": list(ctx.regions)})
        for g in generate(ctx, mix, np.random.default_rng(seed), language):
            fields = (g.task, g.subtask, g.lang, g.template_id, g.template_ids, g.system_id, g.conversations,
                      g.regions, g.key)  # fmt: skip
            h.update(repr(fields).encode("utf-8"))
            h.update(b"\x00")
            n += 1
        h.update(b"\x01")
    return f"{n}:{h.hexdigest()}"


def test_golden_digest_is_unchanged() -> None:
    # the frozen copy, not the shipped data: accepting an expansion or editing a bank leaves this alone
    frozen = Language.load(FIXTURE_LANGUAGE)
    assert frozen is not Language.load() and frozen.glossary.origin == str(FIXTURE_LANGUAGE / "glossary")
    assert golden_digest() == GOLDEN_DIGEST
