"""Sample generation for one display slice (pipeline/language/tasks.py)."""

from __future__ import annotations

import hashlib
import re
from collections import Counter, defaultdict
from collections.abc import Iterator

import numpy as np
import pytest

from pipeline.regions.coords import box_iou, format_boxes, normalise_box, order_boxes
from pipeline.language import tasks as tasks_mod
from pipeline.language.glossary import load_glossary, load_label_map
from pipeline.language.tasks import (
    AMBIGUOUS_IOU,
    Generated,
    SliceContext,
    TaskMix,
    generate,
)
from pipeline.language.templates import check_grounding, load_templates
from pipeline.core.types import Region
from schemas.records import Turn

G = load_glossary()
TS = load_templates()
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
    return SliceContext(modality, body_region, "axial", w, h, regions, absent)


MIX = TaskMix(tasks={"region_to_text": 2.0, "text_to_region": 2.0, "grounded_report": 1.5}, langs=["en", "zh"])


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


# ----------------------------------------------------------------------------------------- negatives, ambiguity


def test_negative_ratio_controls_absent_targets() -> None:
    all_neg = TaskMix(tasks={"text_to_region": 3.0}, langs=["en", "zh"], negative_ratio=1.0)
    no_neg = TaskMix(tasks={"text_to_region": 3.0}, langs=["en", "zh"], negative_ratio=0.0)
    for seed in range(40):
        ctx = make_ctx(seed)
        gens = generate(ctx, all_neg, np.random.default_rng(seed))
        present = {r.term for r in ctx.regions}
        usable = [t for t in ctx.candidate_absent_terms if not any(G.related(t, p) for p in present)]
        if usable:
            assert gens and all(g.subtask == "absent" for g in gens)
        else:  # every candidate contains or belongs to a present term: no negatives possible
            assert all(g.subtask != "absent" for g in gens)
        assert all(g.subtask != "absent" for g in generate(ctx, no_neg, np.random.default_rng(seed)))


def test_default_negative_ratio_is_small(corpus) -> None:
    t2r = [g for _c, gens in corpus for g in gens if g.task == "text_to_region"]
    share = sum(g.subtask == "absent" for g in t2r) / len(t2r)
    assert 0.01 < share < 0.12


def test_absent_terms_never_contain_or_belong_to_present_terms() -> None:
    w = h = 512
    regions = [_region("lung_left", (300, 50, 480, 450), w, h), _region("nodule", (100, 100, 120, 120), w, h)]
    ctx = SliceContext("XR", "thorax", "2d", w, h, regions, ["lung", "lung_upper_lobe_left", "lung_left", "mass"])
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


@pytest.mark.parametrize("mode", ["turn", "inline", "none"])
def test_system_prompt_modes(mode: str) -> None:
    mix = TaskMix(tasks={t: 1.0 for t in TASKS}, langs=["en", "zh"], system_prompt=mode)
    for g in generate(make_ctx(2), mix, np.random.default_rng(0)):
        froms = [t["from"] for t in g.conversations]
        bank = TS.bank(g.task, g.lang)
        system_text = bank.system[0][1]
        if mode == "turn":
            assert froms == ["system", "human", "gpt"]
            assert g.conversations[0]["value"] == system_text
            assert g.conversations[1]["value"].startswith("<image>\n")
        elif mode == "inline":
            assert froms == ["human", "gpt"]
            assert g.conversations[0]["value"].startswith(system_text)
            assert g.conversations[0]["value"].count("<image>\n") == 1
        else:
            assert froms == ["human", "gpt"]
            assert g.conversations[0]["value"].startswith("<image>\n")
            assert g.system_id is None


def test_errors() -> None:
    ctx = make_ctx(0)
    with pytest.raises(ValueError, match="unknown task"):
        generate(ctx, TaskMix(tasks={"captioning": 1.0}, langs=["en"]), np.random.default_rng(0))
    with pytest.raises(ValueError, match="language"):
        generate(ctx, TaskMix(tasks={"region_to_text": 1.0}, langs=["fr"]), np.random.default_rng(0))
    with pytest.raises(ValueError, match="system_prompt"):
        generate(ctx, TaskMix(tasks={}, langs=["en"], system_prompt="banner"), np.random.default_rng(0))
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


def test_fast_box_text_matches_format_boxes() -> None:
    r = np.random.default_rng(0)
    for _ in range(500):
        boxes = [tuple(int(v) for v in r.integers(0, 1000, 4)) for _ in range(int(r.integers(1, 5)))]
        assert tasks_mod._boxes_text(boxes) == format_boxes(boxes)


def test_compiled_templates_equal_format_map() -> None:
    """Every template's compiled fill renders exactly as ``str.format_map`` (and fails the same way)."""
    values = {
        "modality": "CT", "image": "CT image", "body_region": "abdomen", "term": "liver", "Term": "Liver",
        "position": "upper left", "size": "small", "ref": "<ref>liver</ref>", "refs": "<ref>a</ref> and <ref>b</ref>",
        "grounded": "<ref>liver</ref><box>[[1, 2, 3, 4]]</box>", "box": "<box>[[1, 2, 3, 4]]</box>",
        "boxes": "<box>[[1, 2, 3, 4]]</box>, <box>[[5, 6, 7, 8]]</box>", "n": 2,
    }  # fmt: skip
    checked = 0
    for bank in TS.banks.values():
        for t in bank.templates:
            fill = tasks_mod._compile(t.text)
            assert fill(values) == t.text.format_map(values), t.id
            for name in t.fields:
                with pytest.raises(KeyError):
                    fill({k: v for k, v in values.items() if k != name})
            checked += 1
    assert checked > 400
    for text in ("", "plain", "{{literal}} {term}", "{term}{Term}", "a {n} b {{", "}}{term}{{x}}"):
        assert tasks_mod._compile(text)(values) == text.format_map(values)
    for bad in ("{0}", "{term!r}", "{term:>5}", "{}"):
        with pytest.raises(ValueError, match="plain name"):
            tasks_mod._compile(bad)


def test_ambiguity_window_is_exact() -> None:
    """The top-edge window finds exactly the boxes a brute-force IoU search finds."""
    L = tasks_mod._language()
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
        sl = tasks_mod._Slice(SliceContext("CT", None, "axial", w, h, regions, []), L)
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
# A sha256 over every field of every Generated for a fixed, deterministic set of slices, mixes and seeds.
# It pins the exact output (wording, template draws, box text, region order, keys) so that speed work on
# tasks.py provably changes nothing.  It also changes, legitimately, when the template banks, the glossary,
# the vocab or the label maps change: recompute it then with
# ``python -c "import sys; sys.path.insert(0, 'tests'); from test_tasks import golden_digest; print(golden_digest())"``
# and say why in the commit message.

GOLDEN_DIGEST = "16557:bae3d5c19ac6f99509186454f1f53a7728397451a7c04551d697d7a9d26cdb5f"

GOLDEN_MIXES = (
    MIX,
    TaskMix(tasks={t: 1.7 for t in TASKS}, langs=["zh", "en"], negative_ratio=0.3, max_regions_per_sample=3,
            system_prompt="inline"),
    TaskMix(tasks={"text_to_region": 3.0, "grounded_report": 1.0, "region_to_text": 0.5}, langs=["en"],
            negative_ratio=0.5, max_regions_per_sample=1, system_prompt="none"),
    TaskMix(tasks={t: 1.0 for t in TASKS}, langs=["zh"], negative_ratio=0.0, max_regions_per_sample=20),
    TaskMix(tasks={"text_to_region": 4.0}, langs=["en", "zh"], negative_ratio=1.0, max_regions_per_sample=2),
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
    vocab = sorted(set(load_label_map("totalseg_total").values()))
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
        slices.append(SliceContext("CT", "abdomen", "axial", w, h, regions, [t for t in vocab if t not in present]))
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
    for ctx, mix, seed in _golden_cases():
        # copies: generate must not depend on (or change) the caller's lists
        ctx = SliceContext(**{**ctx.__dict__, "regions": list(ctx.regions)})
        for g in generate(ctx, mix, np.random.default_rng(seed)):
            fields = (g.task, g.subtask, g.lang, g.template_id, g.template_ids, g.system_id, g.conversations,
                      g.regions, g.key)  # fmt: skip
            h.update(repr(fields).encode("utf-8"))
            h.update(b"\x00")
            n += 1
        h.update(b"\x01")
    return f"{n}:{h.hexdigest()}"


def test_golden_digest_is_unchanged() -> None:
    assert golden_digest() == GOLDEN_DIGEST
