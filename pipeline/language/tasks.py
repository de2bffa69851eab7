"""Region-centric conversations for one display slice: ``generate(ctx, mix, rng) -> list[Generated]``.

Tasks and subtasks (MedRegA, arXiv 2410.18387; docs/language.md has examples):

* ``region_to_text`` -- ``single``: one box is given, the answer is its term's display name;
  ``multi``: several boxes are given, the answer grounds each term ``<ref>name</ref><box>[[...]]</box>``.
  Boxes that (almost) coincide with a box of another term (IoU >= 0.9, e.g. a whole-lung mask and the
  left-lung mask) are never asked about: their name would be ambiguous.
* ``text_to_region`` -- MedRegA's four detection subtasks, "region" = term and "object" = box:
  ``sr_so`` one term with one box, ``sr_mo`` one term with several boxes, ``mr_so`` several terms with
  one box each, ``mr_mo`` several terms, at least one with several boxes; plus ``absent``: a term from
  ``ctx.candidate_absent_terms`` (never one that contains or is contained by a present term) is asked
  for with the same question templates and the answer says it is not present.  A detection sample is
  an absent negative with probability ``mix.negative_ratio``.
* ``grounded_report`` -- ``open`` ("describe what is visible", only when every term on the slice fits
  in ``max_regions_per_sample`` boxes, so the report is complete) or ``targeted`` (the question names
  the terms).  One line per term: ``<ref>name</ref><box>[[...], ...]</box>: sentence`` (``：`` in
  Chinese); anatomy and lesions/findings use different sentence banks.

Rules every sample obeys: the ``<ref>`` text is the glossary display name in the row's language; all
boxes of one term share one list; terms and boxes are ordered top-to-bottom, then left-to-right
(:func:`pipeline.coords.order_boxes` semantics); ``Generated.regions`` lists exactly the boxes the text
contains, in the order they first appear.

Randomness comes only from the ``rng`` argument (a per-slice derived ``numpy.random.Generator``): the
same rng state gives the same output, byte for byte.  Never ``random`` or ``hash()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.coords import format_boxes
from pipeline.language.glossary import Glossary, load_glossary
from pipeline.language.templates import TASKS, Template, TemplateBank, TemplateSet, Vocab, load_templates, load_vocab
from pipeline.types import Region

__all__ = ["Generated", "SliceContext", "TaskMix", "generate", "SYSTEM_PROMPT_MODES", "AMBIGUOUS_IOU"]

#: ``turn``: system prompt as a first ``{"from": "system"}`` turn (default); ``inline``: MedRegA's own
#: layout, the system prompt in the human turn before ``<image>``; ``none``: no system prompt.
SYSTEM_PROMPT_MODES = ("turn", "inline", "none")
#: Boxes of different terms overlapping at least this much are ambiguous for region -> text.
AMBIGUOUS_IOU = 0.9
ABBR = {"region_to_text": "r2t", "text_to_region": "t2r", "grounded_report": "grg"}
_SMALL, _MODERATE = 0.02, 0.15  # box area share of the image: small < 2 % <= moderate < 15 % <= large


@dataclass
class SliceContext:
    """What the builder knows about one display slice."""

    modality: str
    body_region: str | None
    axis: str
    width: int
    height: int
    regions: list[Region]
    candidate_absent_terms: list[str] = field(default_factory=list)  # source vocabulary not on this slice


@dataclass
class TaskMix:
    """How many samples to make per slice (from the release config)."""

    tasks: dict[str, float]  # task -> samples per slice per language; the fractional part is a probability
    langs: list[str]
    negative_ratio: float = 0.05
    max_regions_per_sample: int = 8
    system_prompt: str = "turn"  # see SYSTEM_PROMPT_MODES


@dataclass
class Generated:
    task: str
    subtask: str | None
    lang: str
    template_id: str  # the question template
    conversations: list[dict[str, str]]
    regions: list[Region]  # exactly the boxes the text refers to, in text order
    key: str  # deterministic discriminator within (slice, task, lang), e.g. "t2r.sr_mo.0"
    template_ids: tuple[str, ...] = ()  # every template used: question first, then answer template(s)
    system_id: str | None = None


# ----------------------------------------------------------------------------------------- randomness


class _Draws:
    """Uniform [0, 1) numbers from the rng, fetched in blocks (one numpy call per block)."""

    __slots__ = ("_rng", "_buf", "_i")

    def __init__(self, rng: np.random.Generator, block: int = 32) -> None:
        self._rng = rng
        self._buf: list[float] = rng.random(block).tolist()
        self._i = 0

    def u(self) -> float:
        i = self._i
        if i >= len(self._buf):
            self._buf = self._rng.random(len(self._buf)).tolist()
            i = 0
        self._i = i + 1
        return self._buf[i]

    def index(self, n: int) -> int:
        if n <= 1:
            return 0
        k = int(self.u() * n)
        return k if k < n else n - 1

    def pick(self, seq: Any) -> Any:
        return seq[self.index(len(seq))]

    def sample(self, seq: list[Any], k: int) -> list[Any]:
        """``k`` distinct items of ``seq`` (partial Fisher-Yates), in draw order."""
        pool = list(seq)
        n = len(pool)
        k = min(k, n)
        for i in range(k):
            j = i + self.index(n - i)
            pool[i], pool[j] = pool[j], pool[i]
        return pool[:k]


# ----------------------------------------------------------------------------------------- per-process caches


class _Language:
    """Glossary, templates and vocab with per-language lookups precomputed (built once per process)."""

    def __init__(self, glossary: Glossary, templates: TemplateSet, vocab: Vocab) -> None:
        self.g = glossary
        self.t = templates
        self.v = vocab
        self.names: dict[str, dict[str, str]] = {
            lang: {tid: t.names[lang] for tid, t in glossary.terms.items() if lang in t.names}
            for lang in glossary.languages
        }
        self.caps: dict[str, dict[str, str]] = {
            lang: {tid: (n[:1].upper() + n[1:]) for tid, n in names.items()} for lang, names in self.names.items()
        }
        self.abnormal = {tid for tid, t in glossary.terms.items() if t.family == "abnormality"}
        self.lineage: dict[str, frozenset[str]] = {tid: frozenset(glossary.ancestors(tid)) for tid in glossary.terms}
        self._ctx_cache: dict[tuple[str, str | None, str], dict[str, Any]] = {}

    def context_words(self, modality: str, body_region: str | None, lang: str) -> dict[str, Any]:
        key = (modality, body_region, lang)
        words = self._ctx_cache.get(key)
        if words is None:
            mod, image = self.v.modality_words(modality, lang)
            region = self.v.body_region_word(body_region, lang)
            words = {"modality": mod, "image": image, "body_region": region}
            self._ctx_cache[key] = words
        return words


_LANG: _Language | None = None


def _language() -> _Language:
    global _LANG
    if _LANG is None:
        _LANG = _Language(load_glossary(), load_templates(), load_vocab())
    return _LANG


# ----------------------------------------------------------------------------------------- slice analysis


def _box_key(b: tuple[int, ...]) -> tuple[int, int, int, int]:
    return (b[1], b[0], b[3], b[2])  # order_boxes: top-to-bottom, then left-to-right


def _iou(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    ix = min(a[2], b[2]) - max(a[0], b[0])
    iy = min(a[3], b[3]) - max(a[1], b[1])
    if ix <= 0 or iy <= 0:
        return 0.0
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


class _Group:
    """All boxes of one term on the slice, ordered."""

    __slots__ = ("term", "regions", "boxes_text", "position", "size", "key")

    def __init__(self, term: str, regions: list[Region]) -> None:
        self.term = term
        self.regions = regions
        self.boxes_text = format_boxes([r.box for r in regions])
        self.key = _box_key(regions[0].box)
        x1 = min(r.box[0] for r in regions)
        y1 = min(r.box[1] for r in regions)
        x2 = max(r.box[2] for r in regions)
        y2 = max(r.box[3] for r in regions)
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        h = "left" if cx < 333 else "center" if cx < 666 else "right"
        v = "upper" if cy < 333 else "middle" if cy < 666 else "lower"
        self.position = f"{v}_{h}"
        share = sum((r.box[2] - r.box[0]) * (r.box[3] - r.box[1]) for r in regions) / (999.0 * 999.0)
        self.size = "small" if share < _SMALL else "moderate" if share < _MODERATE else "large"


class _Slice:
    def __init__(self, ctx: SliceContext, lang: _Language) -> None:
        unknown = sorted({r.term for r in ctx.regions if r.term not in lang.g.terms})
        if unknown:
            raise KeyError(f"regions use terms that are not in the glossary: {unknown}")
        self.regions = sorted(ctx.regions, key=lambda r: (_box_key(r.box), r.term))
        by_term: dict[str, list[Region]] = {}
        for r in self.regions:
            by_term.setdefault(r.term, []).append(r)
        self.groups = sorted((_Group(t, rs) for t, rs in by_term.items()), key=lambda g: (g.key, g.term))
        self._unambiguous: list[Region] | None = None
        present = set(by_term)
        seen: set[str] = set()
        absent: list[str] = []
        for t in ctx.candidate_absent_terms:
            if t in present or t in seen or t not in lang.g.terms:
                continue
            seen.add(t)
            anc = lang.lineage[t]
            if anc & present or any(t in lang.lineage[p] for p in present):
                continue  # containment is not absence (e.g. "lung" while "left lung" is present)
            absent.append(t)
        self.absent = absent

    @property
    def unambiguous(self) -> list[Region]:
        """Regions whose box does not (almost) coincide with a box of another term."""
        if self._unambiguous is None:
            regs = self.regions
            areas = [(r.box[2] - r.box[0]) * (r.box[3] - r.box[1]) for r in regs]
            order = sorted(range(len(regs)), key=lambda i: areas[i])
            bad: set[int] = set()
            for a_pos, i in enumerate(order):
                ai = areas[i]
                for j in order[a_pos + 1 :]:
                    if areas[j] * AMBIGUOUS_IOU > ai:  # IoU <= smaller/larger area: no chance beyond here
                        break
                    if regs[i].term != regs[j].term and _iou(regs[i].box, regs[j].box) >= AMBIGUOUS_IOU:
                        bad.add(i)
                        bad.add(j)
            self._unambiguous = [r for k, r in enumerate(regs) if k not in bad]
        return self._unambiguous


# ----------------------------------------------------------------------------------------- rendering helpers


def _join(items: list[str], sep: str, last: str) -> str:
    if len(items) <= 1:
        return "".join(items)
    return sep.join(items[:-1]) + last + items[-1]


def _conversation(mode: str, system: str, lang: str, question: str, answer: str) -> list[dict[str, str]]:
    if mode == "turn":
        return [
            {"from": "system", "value": system},
            {"from": "human", "value": "<image>\n" + question},
            {"from": "gpt", "value": answer},
        ]
    if mode == "inline":
        sep = " " if lang == "en" else ""
        return [{"from": "human", "value": system + sep + "<image>\n" + question}, {"from": "gpt", "value": answer}]
    return [{"from": "human", "value": "<image>\n" + question}, {"from": "gpt", "value": answer}]


class _Maker:
    """Builds the samples of one (slice, language)."""

    def __init__(self, sl: _Slice, ctx: SliceContext, mix: TaskMix, lang_code: str, L: _Language, d: _Draws) -> None:
        self.sl = sl
        self.mix = mix
        self.lang = lang_code
        self.L = L
        self.d = d
        self.names = L.names[lang_code]
        self.caps = L.caps[lang_code]
        self.punct = L.v.punctuation[lang_code]
        self.words = L.context_words(ctx.modality, ctx.body_region, lang_code)
        self.has_region = self.words["body_region"] is not None
        self.cap = max(1, int(mix.max_regions_per_sample))

    # -- common

    def _values(self) -> dict[str, Any]:
        return dict(self.words)

    def _choose(self, bank: TemplateBank, slot: str) -> Template:
        return self.d.pick(bank.choices(slot, self.has_region))

    def _emit(
        self,
        bank: TemplateBank,
        subtask: str,
        index: int,
        q: Template,
        question: str,
        answers: list[Template],
        answer: str,
        regions: list[Region],
    ) -> Generated:
        sys_id, sys_text = self.d.pick(bank.system)
        mode = self.mix.system_prompt
        return Generated(
            task=bank.task,
            subtask=subtask,
            lang=self.lang,
            template_id=q.id,
            conversations=_conversation(mode, sys_text, self.lang, question, answer),
            regions=regions,
            key=f"{ABBR[bank.task]}.{subtask}.{index}",
            template_ids=(q.id, *(a.id for a in answers)),
            system_id=sys_id if mode != "none" else None,
        )

    def _ref(self, term: str) -> str:
        return "<ref>" + self.names[term] + "</ref>"

    def _refs(self, groups: list[_Group]) -> str:
        p = self.punct
        return _join([self._ref(g.term) for g in groups], p.list_sep, p.last_sep)

    def _grounded(self, groups: list[_Group]) -> str:
        return self.punct.item_sep.join(
            "<ref>" + self.names[g.term] + "</ref><box>" + g.boxes_text + "</box>" for g in groups
        )

    # -- region -> text

    def region_to_text(self, bank: TemplateBank, index: int) -> Generated | None:
        cands = self.sl.unambiguous
        if not cands:
            return None
        d = self.d
        multi = len(cands) >= 2 and self.cap >= 2 and d.u() < 0.5
        if not multi:
            r = d.pick(cands)
            q = self._choose(bank, "question_single")
            a = self._choose(bank, "answer_single")
            v = self._values()
            v["box"] = "<box>" + format_boxes([r.box]) + "</box>"
            v["term"] = self.names[r.term]
            v["Term"] = self.caps[r.term]
            return self._emit(bank, "single", index, q, q.render(v), [a], a.render(v), [r])
        k = 2 + d.index(min(len(cands), self.cap) - 1)
        chosen = sorted(d.sample(cands, k), key=lambda r: (_box_key(r.box), r.term))
        by_term: dict[str, list[Region]] = {}
        for r in chosen:
            by_term.setdefault(r.term, []).append(r)
        groups = sorted((_Group(t, rs) for t, rs in by_term.items()), key=lambda g: (g.key, g.term))
        q = self._choose(bank, "question_multi")
        a = self._choose(bank, "answer_multi")
        v = self._values()
        v["boxes"] = self.punct.list_sep.join("<box>" + format_boxes([r.box]) + "</box>" for r in chosen)
        v["n"] = len(chosen)
        v["grounded"] = self._grounded(groups)
        return self._emit(bank, "multi", index, q, q.render(v), [a], a.render(v), chosen)

    # -- text -> region

    def text_to_region(self, bank: TemplateBank, index: int) -> Generated | None:
        d = self.d
        sl = self.sl
        if sl.absent and d.u() < self.mix.negative_ratio:
            term = d.pick(sl.absent)
            q = self._choose(bank, "question_single")
            a = self._choose(bank, "answer_absent")
            v = self._values()
            v["ref"] = self._ref(term)
            v["term"] = self.names[term]
            v["Term"] = self.caps[term]
            return self._emit(bank, "absent", index, q, q.render(v), [a], a.render(v), [])
        cap = self.cap
        fitting = [g for g in sl.groups if len(g.regions) <= cap]
        if not fitting:
            return None
        singles = [g for g in fitting if len(g.regions) == 1]
        multis = [g for g in fitting if len(g.regions) >= 2]
        options: list[str] = []
        if singles:
            options.append("sr_so")
        if multis:
            options.append("sr_mo")
        if len(singles) >= 2 and cap >= 2:
            options.append("mr_so")
        smallest_multi = min((len(g.regions) for g in multis), default=0)
        if multis and len(fitting) >= 2 and smallest_multi + 1 <= cap:
            options.append("mr_mo")
        sub = d.pick(options)
        if sub == "sr_so":
            groups = [d.pick(singles)]
        elif sub == "sr_mo":
            groups = [d.pick(multis)]
        elif sub == "mr_so":
            k = 2 + d.index(min(len(singles), cap) - 1)
            groups = d.sample(singles, k)
        else:  # mr_mo: one term with several boxes plus further terms, within the box budget
            first = d.pick([g for g in multis if len(g.regions) + 1 <= cap])
            budget = cap - len(first.regions)
            others = [g for g in fitting if g is not first and len(g.regions) <= budget]
            want = 1 + d.index(len(others))  # how many more terms to try to add
            groups = [first]
            for g in d.sample(others, len(others)):
                if len(groups) > want:
                    break
                if len(g.regions) <= budget:
                    groups.append(g)
                    budget -= len(g.regions)
        groups.sort(key=lambda g: (g.key, g.term))
        slot = "question_single" if len(groups) == 1 else "question_multi"
        q = self._choose(bank, slot)
        a = self._choose(bank, "answer_grounded")
        v = self._values()
        if len(groups) == 1:
            v["ref"] = self._ref(groups[0].term)
        else:
            v["refs"] = self._refs(groups)
        v["grounded"] = self._grounded(groups)
        regions = [r for g in groups for r in g.regions]
        return self._emit(bank, sub, index, q, q.render(v), [a], a.render(v), regions)

    # -- grounded report

    def grounded_report(self, bank: TemplateBank, index: int) -> Generated | None:
        d = self.d
        groups_all = [g for g in self.sl.groups if len(g.regions) <= self.cap]
        if not groups_all:
            return None
        total = sum(len(g.regions) for g in self.sl.groups)
        can_open = total <= self.cap and len(groups_all) == len(self.sl.groups)
        if can_open and d.u() < 0.5:
            sub = "open"
            groups = list(self.sl.groups)
        else:
            sub = "targeted"
            want = 1 + d.index(len(groups_all))
            budget = self.cap
            groups = []
            for g in d.sample(groups_all, len(groups_all)):
                if len(groups) >= want:
                    break
                if len(g.regions) <= budget:
                    groups.append(g)
                    budget -= len(g.regions)
            groups.sort(key=lambda g: (g.key, g.term))
        slot = "question_open" if sub == "open" else "question_targeted"
        q = self._choose(bank, slot)
        v = self._values()
        if sub == "targeted":
            v["refs"] = self._refs(groups)
        question = q.render(v)
        L = self.L
        lang = self.lang
        colon = self.punct.colon
        lines: list[str] = []
        used: list[Template] = []
        for g in groups:
            a = self._choose(bank, "answer_finding" if g.term in L.abnormal else "answer_anatomy")
            used.append(a)
            v["term"] = self.names[g.term]
            v["Term"] = self.caps[g.term]
            v["position"] = L.v.position(g.position, lang)
            v["size"] = L.v.size(g.size, lang)
            lines.append("<ref>" + self.names[g.term] + "</ref><box>" + g.boxes_text + "</box>" + colon + a.render(v))
        regions = [r for g in groups for r in g.regions]
        return self._emit(bank, sub, index, q, question, used, self.punct.line_sep.join(lines), regions)


# ----------------------------------------------------------------------------------------- entry point


def generate(ctx: SliceContext, mix: TaskMix, rng: np.random.Generator) -> list[Generated]:
    """All samples for one display slice, in a deterministic order (language, then task, then index).

    ``mix.tasks[task]`` samples are made per language: the integer part always, one more with the
    fractional part as probability.  A task that cannot be made on this slice (no usable region) is
    skipped silently.  Raises ``KeyError`` for a region term that is not in the glossary, ``ValueError``
    for an unknown task, language or system prompt mode.
    """
    unknown = [t for t in mix.tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; known: {list(TASKS)}")
    if mix.system_prompt not in SYSTEM_PROMPT_MODES:
        raise ValueError(f"system_prompt must be one of {SYSTEM_PROMPT_MODES}, got {mix.system_prompt!r}")
    L = _language()
    for lang in mix.langs:
        if lang not in L.names:
            raise ValueError(f"language {lang!r} has no glossary names (have {sorted(L.names)})")
    sl = _Slice(ctx, L)
    d = _Draws(rng)
    out: list[Generated] = []
    for lang in mix.langs:
        maker = _Maker(sl, ctx, mix, lang, L, d)
        for task in TASKS:
            rate = mix.tasks.get(task, 0.0)
            if rate <= 0:
                continue
            n = int(rate)
            frac = rate - n
            if frac > 0 and d.u() < frac:
                n += 1
            if n == 0:
                continue
            bank = L.t.bank(task, lang)
            make = getattr(maker, task)
            for i in range(n):
                g = make(bank, i)
                if g is not None:
                    out.append(g)
    return out
