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

Each sample index is *planned* once (subtask, regions / terms) and *rendered* in every language of the
mix with independently drawn templates: the en and zh rows with the same key ask about the same boxes
(parallel bilingual pairs), and the selection work is not repeated per language.

Rules every sample obeys: the ``<ref>`` text is the glossary display name in the row's language; all
boxes of one term share one list; terms and boxes are ordered top-to-bottom, then left-to-right
(:func:`pipeline.coords.order_boxes` semantics); ``Generated.regions`` lists exactly the boxes the text
contains, in the order they first appear.

Randomness comes only from the ``rng`` argument (a per-slice derived ``numpy.random.Generator``): the
same rng state gives the same output, byte for byte.  Never ``random`` or ``hash()``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from pipeline.language.glossary import Glossary, load_glossary
from pipeline.language.templates import (
    TASKS,
    Template,
    TemplateBank,
    TemplateSet,
    Vocab,
    load_templates,
    load_vocab,
)
from pipeline.types import Region
from schemas.language import SLOTS

__all__ = ["AMBIGUOUS_IOU", "SYSTEM_PROMPT_MODES", "Generated", "SliceContext", "TaskMix", "generate"]

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


@dataclass(slots=True)
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
#
# All draws come from one stream of uniform [0, 1) floats per slice, fetched from the rng in blocks of
# 64 (one numpy call per block).  ``u = _stream(rng).__next__``; an integer in [0, n) is
# ``int(u() * n) % n`` (the modulo only guards the float edge case u * n == n), and n <= 1 draws nothing.


def _stream(rng: np.random.Generator) -> Iterator[float]:
    while True:
        yield from rng.random(64).tolist()


def _take(u: Callable[[], float], seq: list[Any], k: int) -> list[Any]:
    """``k`` distinct items of ``seq``, drawn one by one without replacement."""
    pool = list(seq)
    out = []
    for _ in range(min(k, len(pool))):
        m = len(pool)
        out.append(pool.pop(int(u() * m) % m) if m > 1 else pool.pop())
    return out


def _fill(u: Callable[[], float], terms: list[str], by_term: dict[str, list[int]], want: int, budget: int) -> list[str]:
    """Terms drawn without replacement, kept while their boxes fit the remaining ``budget``, until ``want``
    are kept or none are left (draws only as many numbers as needed)."""
    pool = list(terms)
    out: list[str] = []
    while pool and len(out) < want:
        m = len(pool)
        t = pool.pop(int(u() * m) % m) if m > 1 else pool.pop()
        size = len(by_term[t])
        if size <= budget:
            out.append(t)
            budget -= size
    return out


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
        self.refs: dict[str, dict[str, str]] = {
            lang: {tid: "<ref>" + n + "</ref>" for tid, n in names.items()} for lang, names in self.names.items()
        }
        self.abnormal = frozenset(tid for tid, t in glossary.terms.items() if t.family == "abnormality")
        self.lineage: dict[str, frozenset[str]] = {tid: frozenset(glossary.ancestors(tid)) for tid in glossary.terms}
        self.position_words = {lang: {k: w.get(lang) for k, w in vocab.spec.positions.items()} for lang in self.names}
        self.size_words = {lang: {k: w.get(lang) for k, w in vocab.spec.sizes.items()} for lang in self.names}
        self._ctx_cache: dict[tuple[str, str | None, str], dict[str, Any]] = {}
        self._slots: dict[tuple[str, str, bool], dict[str, tuple[Template, ...]]] = {}
        self._mixes: dict[tuple[Any, ...], list[tuple[str, float]]] = {}

    def context_words(self, modality: str, body_region: str | None, lang: str) -> dict[str, Any]:
        key = (modality, body_region, lang)
        words = self._ctx_cache.get(key)
        if words is None:
            mod, image = self.v.modality_words(modality, lang)
            region = self.v.body_region_word(body_region, lang)
            words = {"modality": mod, "image": image, "body_region": region}
            self._ctx_cache[key] = words
        return words

    def slots(self, task: str, lang: str, has_region: bool) -> dict[str, tuple[Template, ...]]:
        """slot -> usable templates of one bank (templates with {body_region} only when it is known)."""
        key = (task, lang, has_region)
        got = self._slots.get(key)
        if got is None:
            bank = self.t.bank(task, lang)
            got = self._slots[key] = {slot: bank.choices(slot, has_region) for slot in SLOTS[task]}
        return got

    def rates(self, mix: TaskMix) -> list[tuple[str, float]]:
        """Validated ``[(task, rate), ...]`` in canonical task order (cached per mix content)."""
        key = (tuple(mix.tasks.items()), tuple(mix.langs), mix.system_prompt)
        got = self._mixes.get(key)
        if got is None:
            unknown = [t for t in mix.tasks if t not in ABBR]
            if unknown:
                raise ValueError(f"unknown task(s) {unknown}; known: {list(TASKS)}")
            if mix.system_prompt not in SYSTEM_PROMPT_MODES:
                raise ValueError(f"system_prompt must be one of {SYSTEM_PROMPT_MODES}, got {mix.system_prompt!r}")
            for lang in mix.langs:
                if lang not in self.names:
                    raise ValueError(f"language {lang!r} has no glossary names (have {sorted(self.names)})")
                for task in TASKS:
                    self.t.bank(task, lang)  # KeyError with the list of banks when one is missing
            got = self._mixes[key] = [(t, float(mix.tasks[t])) for t in TASKS if mix.tasks.get(t, 0.0) > 0]
        return got


_LANG: _Language | None = None


def _language() -> _Language:
    global _LANG
    if _LANG is None:
        _LANG = _Language(load_glossary(), load_templates(), load_vocab())
    return _LANG


# ----------------------------------------------------------------------------------------- slice analysis


def _region_key(r: Region) -> tuple[int, int, int, int, str]:
    b = r.box
    return (b[1], b[0], b[3], b[2], r.term)  # order_boxes: top-to-bottom, then left-to-right


def _iou(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    ix = min(a[2], b[2]) - max(a[0], b[0])
    iy = min(a[3], b[3]) - max(a[1], b[1])
    if ix <= 0 or iy <= 0:
        return 0.0
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


_POSITION = tuple(f"{v}_{h}" for v in ("upper", "middle", "lower") for h in ("left", "center", "right"))
# IoU >= t needs a vertical overlap >= t * height: a box of another term can only be ambiguous with box i
# when its top edge lies within [y1 - _AMB_ABOVE * h, y1 + _AMB_BELOW * h] (h: the height of box i).
_AMB_BELOW = 1.0 - AMBIGUOUS_IOU
_AMB_ABOVE = (1.0 - AMBIGUOUS_IOU) / AMBIGUOUS_IOU


def _boxes_text(boxes: list[tuple[int, ...]]) -> str:
    """``[[x1, y1, x2, y2], ...]`` exactly as :func:`pipeline.coords.format_boxes` writes it."""
    return "[" + ", ".join(["[%d, %d, %d, %d]" % b for b in boxes]) + "]"  # noqa: UP031 (fastest)


class _Slice:
    """The slice's regions in canonical order, grouped by term; every derived view is lazy and shared by
    the languages."""

    __slots__ = ("_L", "_absent", "_amb", "_candidates", "_geo", "_t2r", "_text", "by_term", "regions", "terms")

    def __init__(self, ctx: SliceContext, L: _Language) -> None:
        known = L.g.terms
        regs = sorted(ctx.regions, key=_region_key)
        by_term: dict[str, list[int]] = {}
        for i, r in enumerate(regs):
            if type(r.box) is not tuple:  # "%d" formatting below needs a tuple of 4 ints
                regs[i] = r = replace(r, box=tuple(int(x) for x in r.box))
            lst = by_term.get(r.term)
            if lst is None:
                if r.term not in known:
                    unknown = sorted({x.term for x in regs if x.term not in known})
                    raise KeyError(f"regions use terms that are not in the glossary: {unknown}")
                by_term[r.term] = [i]
            else:
                lst.append(i)
        self.regions = regs
        self.by_term = by_term
        # dicts keep insertion order = order of each term's first (top-left-most) box
        self.terms = list(by_term)
        self._text: dict[str, str] = {}
        self._geo: dict[str, tuple[str, str]] = {}
        self._amb: dict[int, bool] = {}
        self._absent: list[str] | None = None
        self._t2r: dict[int, tuple[list[str], list[str], list[str], list[str]]] = {}
        self._candidates = ctx.candidate_absent_terms
        self._L = L

    def text(self, term: str) -> str:
        """All boxes of ``term`` as one ``[[...], ...]`` list."""
        t = self._text.get(term)
        if t is None:
            regs = self.regions
            t = self._text[term] = _boxes_text([regs[i].box for i in self.by_term[term]])
        return t

    def geometry(self, term: str) -> tuple[str, str]:
        """(position key, size key) of ``term``: thirds of the image for the centre of the union box;
        summed box area share < 2 % small, < 15 % moderate, else large."""
        got = self._geo.get(term)
        if got is None:
            regs = self.regions
            idx = self.by_term[term]
            x1, y1, x2, y2 = regs[idx[0]].box
            area = (x2 - x1) * (y2 - y1)
            for i in idx[1:]:
                b = regs[i].box
                x1, y1 = min(x1, b[0]), min(y1, b[1])
                x2, y2 = max(x2, b[2]), max(y2, b[3])
                area += (b[2] - b[0]) * (b[3] - b[1])
            cx, cy = x1 + x2, y1 + y2  # twice the centre
            share = area / (999.0 * 999.0)
            got = self._geo[term] = (
                _POSITION[(0 if cy < 666 else 1 if cy < 1332 else 2) * 3 + (0 if cx < 666 else 1 if cx < 1332 else 2)],
                "small" if share < _SMALL else "moderate" if share < _MODERATE else "large",
            )
        return got

    def ambiguous(self, i: int) -> bool:
        """Whether region ``i``'s box (almost) coincides with a box of another term (IoU >= AMBIGUOUS_IOU).

        Regions are sorted by top edge, so only the neighbours whose top edge is close enough are tested.
        """
        got = self._amb.get(i)
        if got is None:
            regs = self.regions
            ri = regs[i]
            bi = ri.box
            h = bi[3] - bi[1]
            lo, hi = bi[1] - _AMB_ABOVE * h, bi[1] + _AMB_BELOW * h
            got = False
            j = i - 1
            while j >= 0 and regs[j].box[1] >= lo:
                if regs[j].term != ri.term and _iou(bi, regs[j].box) >= AMBIGUOUS_IOU:
                    got = True
                    break
                j -= 1
            if not got:
                j = i + 1
                n = len(regs)
                while j < n and regs[j].box[1] <= hi:
                    if regs[j].term != ri.term and _iou(bi, regs[j].box) >= AMBIGUOUS_IOU:
                        got = True
                        break
                    j += 1
            self._amb[i] = got
        return got

    def absent_term(self, u: Callable[[], float]) -> str | None:
        """A random usable absent target: a candidate that is not present and neither contains nor is
        part of a present term (rejection sampling; the full filter only when that keeps failing)."""
        cands = self._candidates
        if not cands:
            return None
        if self._absent is None:
            n = len(cands)
            for _ in range(8):
                t = cands[int(u() * n) % n] if n > 1 else cands[0]
                if self._usable(t):
                    return t
            self._absent = [t for t in dict.fromkeys(cands) if self._usable(t)]
        absent = self._absent
        if not absent:
            return None
        return absent[int(u() * len(absent)) % len(absent)] if len(absent) > 1 else absent[0]

    def _usable(self, t: str) -> bool:
        present = self.by_term
        if t in present:
            return False
        lineage = self._L.lineage
        anc = lineage.get(t)
        if anc is None or not anc.isdisjoint(present):
            return False  # unknown term, or a part of a present term (e.g. a lobe of a present lung)
        for p in present:
            if t in lineage[p]:
                return False  # contains a present term (e.g. "lung" while "left lung" is present)
        return True

    def t2r_options(self, cap: int) -> tuple[list[str], list[str], list[str], list[str]]:
        """(fitting terms, single-box terms, multi-box terms, possible subtasks) for a box budget."""
        got = self._t2r.get(cap)
        if got is None:
            fitting: list[str] = []
            singles: list[str] = []
            multis: list[str] = []
            smallest_multi = cap + 1
            for t, idx in self.by_term.items():
                k = len(idx)
                if k > cap:
                    continue
                fitting.append(t)
                if k == 1:
                    singles.append(t)
                else:
                    multis.append(t)
                    smallest_multi = min(smallest_multi, k)
            options: list[str] = []
            if singles:
                options.append("sr_so")
            if multis:
                options.append("sr_mo")
            if len(singles) >= 2 and cap >= 2:
                options.append("mr_so")
            if multis and len(fitting) >= 2 and smallest_multi + 1 <= cap:
                options.append("mr_mo")
            got = self._t2r[cap] = (fitting, singles, multis, options)
        return got


# ----------------------------------------------------------------------------------------- samples
#
# A sample is made in two steps: a *plan* (which subtask, which regions or terms) drawn once per sample
# index, then one *rendering* per language (templates drawn per language).  So the en and zh rows with
# the same key ask about the same regions -- parallel bilingual pairs -- while their wording is drawn
# independently.


def _join(items: list[str], sep: str, last: str) -> str:
    if len(items) <= 1:
        return "".join(items)
    return sep.join(items[:-1]) + last + items[-1]


#: (subtask, region indices or terms, the regions in text order)
_Plan = tuple[str, list[Any], list[Region]]


class _Planner:
    """Language-independent choices for one slice."""

    def __init__(self, sl: _Slice, mix: TaskMix, u: Callable[[], float]) -> None:
        self.sl = sl
        self.u = u
        self.cap = max(1, int(mix.max_regions_per_sample))
        self.negative_ratio = mix.negative_ratio

    def region_to_text(self) -> _Plan | None:
        """("single" | "multi", region indices in canonical order, regions)."""
        sl = self.sl
        n = len(sl.regions)
        if not n:
            return None
        u = self.u
        # single or multi (up to the box budget); boxes are drawn at random, ambiguous ones rejected
        k = 1
        if n >= 2 and self.cap >= 2 and u() < 0.5:
            m = min(n, self.cap) - 1
            k = 2 + (int(u() * m) % m if m > 1 else 0)
        pool = list(range(n))
        chosen: list[int] = []
        amb = sl.ambiguous
        while pool:
            m = len(pool)
            i = pool.pop(int(u() * m) % m) if m > 1 else pool.pop()
            if not amb(i):
                chosen.append(i)
                if len(chosen) >= k:
                    break
        if not chosen:
            return None
        if len(chosen) == 1:
            return "single", chosen, [sl.regions[chosen[0]]]
        chosen.sort()  # canonical order
        regs = sl.regions
        return "multi", chosen, [regs[i] for i in chosen]

    def text_to_region(self) -> _Plan | None:
        """(subtask, terms in canonical order, regions); "absent" carries the one absent term."""
        u = self.u
        sl = self.sl
        if u() < self.negative_ratio:
            term = sl.absent_term(u)
            if term is not None:
                return "absent", [term], []
        cap = self.cap
        fitting, singles, multis, options = sl.t2r_options(cap)
        if not options:
            return None
        sub = options[int(u() * len(options)) % len(options)] if len(options) > 1 else options[0]
        by_term = sl.by_term
        if sub == "sr_so":
            terms = [singles[int(u() * len(singles)) % len(singles)] if len(singles) > 1 else singles[0]]
            return sub, terms, [sl.regions[by_term[terms[0]][0]]]
        if sub == "sr_mo":
            terms = [multis[int(u() * len(multis)) % len(multis)] if len(multis) > 1 else multis[0]]
            regs = sl.regions
            return sub, terms, [regs[i] for i in by_term[terms[0]]]
        if sub == "mr_so":
            m = min(len(singles), cap) - 1
            k = 2 + (int(u() * m) % m if m > 1 else 0)
            terms = _take(u, singles, k)
        else:  # mr_mo: one term with several boxes plus further terms, within the box budget
            starters = [t for t in multis if len(by_term[t]) + 1 <= cap]
            first = starters[int(u() * len(starters)) % len(starters)] if len(starters) > 1 else starters[0]
            budget = cap - len(by_term[first])
            others = [t for t in fitting if t != first and len(by_term[t]) <= budget]
            m = len(others)
            want = 1 + (int(u() * m) % m if m > 1 else 0)  # how many more terms to add (at most)
            terms = [first, *_fill(u, others, by_term, want, budget)]
        terms.sort(key=_first_index(by_term))
        regs = sl.regions
        return sub, terms, [regs[i] for t in terms for i in by_term[t]]

    def grounded_report(self) -> _Plan | None:
        """("open" | "targeted", terms in canonical order, regions)."""
        u = self.u
        sl = self.sl
        cap = self.cap
        fitting = sl.t2r_options(cap)[0]
        if not fitting:
            return None
        regs = sl.regions
        if len(regs) <= cap and u() < 0.5:
            terms = sl.terms
            sub = "open"
        else:
            m = len(fitting)
            want = 1 + (int(u() * m) % m if m > 1 else 0)
            terms = _fill(u, fitting, sl.by_term, want, cap)
            terms.sort(key=_first_index(sl.by_term))
            sub = "targeted"
        by_term = sl.by_term
        return sub, terms, [regs[i] for t in terms for i in by_term[t]]


class _Renderer:
    """Renders plans in one language."""

    def __init__(self, sl: _Slice, ctx: SliceContext, mix: TaskMix, lang: str, L: _Language, u: Callable[[], float]) -> None:
        self.sl = sl
        self.lang = lang
        self.L = L
        self.u = u
        self.names = L.names[lang]
        self.refs = L.refs[lang]
        self.caps = L.caps[lang]
        p = L.v.punctuation[lang]
        self.list_sep, self.last_sep, self.item_sep, self.colon, self.line_sep = (
            p.list_sep, p.last_sep, p.item_sep, p.colon, p.line_sep,
        )  # fmt: skip
        words = L.context_words(ctx.modality, ctx.body_region, lang)
        self.has_region = words["body_region"] is not None
        # one values dict per (slice, language): every path sets all the non-context placeholders its
        # slots allow before rendering (the bank validator guarantees no other placeholder is used)
        self.v: dict[str, Any] = dict(words)
        self.mode = mix.system_prompt
        self.heads: dict[str, str] = {}  # term -> "<ref>name</ref><box>[[...]]</box>"

    def head(self, term: str) -> str:
        h = self.heads.get(term)
        if h is None:
            h = self.heads[term] = self.refs[term] + "<box>" + self.sl.text(term) + "</box>"
        return h

    def _refs(self, terms: list[str]) -> str:
        refs = self.refs
        return _join([refs[t] for t in terms], self.list_sep, self.last_sep)

    def _emit(
        self, bank: TemplateBank, subtask: str, index: int, ids: tuple[str, ...], question: str, answer: str,
        regions: list[Region],
    ) -> Generated:  # fmt: skip
        system = bank.system
        if len(system) == 1:
            sys_id, sys_text = system[0]
        else:
            sys_id, sys_text = system[int(self.u() * len(system)) % len(system)]
        mode = self.mode
        if mode == "turn":
            conv = [
                {"from": "system", "value": sys_text},
                {"from": "human", "value": "<image>\n" + question},
                {"from": "gpt", "value": answer},
            ]
        elif mode == "inline":
            sep = " " if self.lang == "en" else ""
            conv = [
                {"from": "human", "value": sys_text + sep + "<image>\n" + question},
                {"from": "gpt", "value": answer},
            ]
        else:
            conv = [{"from": "human", "value": "<image>\n" + question}, {"from": "gpt", "value": answer}]
            sys_id = None
        return Generated(
            bank.task, subtask, self.lang, ids[0], conv, regions, _KEY[(bank.task, subtask)] + str(index), ids, sys_id
        )

    # -- region -> text

    def region_to_text(self, bank: TemplateBank, index: int, plan: _Plan) -> Generated:
        sub, chosen, regions = plan
        u = self.u
        v = self.v
        regs = self.sl.regions
        slots = self.L.slots("region_to_text", self.lang, self.has_region)
        if sub == "single":
            r = regs[chosen[0]]
            qs, as_ = slots["question_single"], slots["answer_single"]
            q = qs[int(u() * len(qs)) % len(qs)]
            a = as_[int(u() * len(as_)) % len(as_)]
            v["box"] = "<box>[[%d, %d, %d, %d]]</box>" % r.box  # noqa: UP031
            v["term"] = self.names[r.term]
            v["Term"] = self.caps[r.term]
            return self._emit(bank, sub, index, (q.id, a.id), q.text.format_map(v), a.text.format_map(v), regions[:])
        by_term: dict[str, list[tuple[int, ...]]] = {}
        for i in chosen:
            r = regs[i]
            lst = by_term.get(r.term)
            if lst is None:
                by_term[r.term] = [r.box]
            else:
                lst.append(r.box)
        refs = self.refs
        qs, as_ = slots["question_multi"], slots["answer_multi"]
        q = qs[int(u() * len(qs)) % len(qs)]
        a = as_[int(u() * len(as_)) % len(as_)]
        v["boxes"] = self.list_sep.join(["<box>[[%d, %d, %d, %d]]</box>" % regs[i].box for i in chosen])  # noqa: UP031
        v["n"] = len(chosen)
        v["grounded"] = self.item_sep.join(
            [refs[t] + "<box>" + _boxes_text(bs) + "</box>" for t, bs in by_term.items()]
        )
        return self._emit(bank, sub, index, (q.id, a.id), q.text.format_map(v), a.text.format_map(v), regions[:])

    # -- text -> region

    def text_to_region(self, bank: TemplateBank, index: int, plan: _Plan) -> Generated:
        sub, terms, regions = plan
        u = self.u
        v = self.v
        slots = self.L.slots("text_to_region", self.lang, self.has_region)
        if sub == "absent":
            term = terms[0]
            qs, as_ = slots["question_single"], slots["answer_absent"]
            q = qs[int(u() * len(qs)) % len(qs)]
            a = as_[int(u() * len(as_)) % len(as_)]
            name = self.names[term]
            v["ref"] = self.refs[term]
            v["term"] = name
            v["Term"] = self.caps[term]
            return self._emit(bank, sub, index, (q.id, a.id), q.text.format_map(v), a.text.format_map(v), [])
        if len(terms) == 1:
            qs = slots["question_single"]
            q = qs[int(u() * len(qs)) % len(qs)]
            v["ref"] = self.refs[terms[0]]
        else:
            qs = slots["question_multi"]
            q = qs[int(u() * len(qs)) % len(qs)]
            v["refs"] = self._refs(terms)
        as_ = slots["answer_grounded"]
        a = as_[int(u() * len(as_)) % len(as_)]
        head = self.head
        v["grounded"] = self.item_sep.join([head(t) for t in terms])
        return self._emit(bank, sub, index, (q.id, a.id), q.text.format_map(v), a.text.format_map(v), regions[:])

    # -- grounded report

    def grounded_report(self, bank: TemplateBank, index: int, plan: _Plan) -> Generated:
        sub, terms, regions = plan
        u = self.u
        v = self.v
        sl = self.sl
        slots = self.L.slots("grounded_report", self.lang, self.has_region)
        if sub == "open":
            qs = slots["question_open"]
            q = qs[int(u() * len(qs)) % len(qs)]
        else:
            qs = slots["question_targeted"]
            q = qs[int(u() * len(qs)) % len(qs)]
            v["refs"] = self._refs(terms)
        question = q.text.format_map(v)
        ch_find, ch_anat = slots["answer_finding"], slots["answer_anatomy"]
        n_find, n_anat = len(ch_find), len(ch_anat)
        L = self.L
        abnormal = L.abnormal
        pos_words, size_words = L.position_words[self.lang], L.size_words[self.lang]
        names, caps, head, geometry = self.names, self.caps, self.head, sl.geometry
        colon = self.colon
        lines: list[str] = []
        ids = [q.id]
        for t in terms:
            a = ch_find[int(u() * n_find) % n_find] if t in abnormal else ch_anat[int(u() * n_anat) % n_anat]
            ids.append(a.id)
            pos, size = geometry(t)
            v["term"] = names[t]
            v["Term"] = caps[t]
            v["position"] = pos_words[pos]
            v["size"] = size_words[size]
            lines.append(head(t) + colon + a.text.format_map(v))
        return self._emit(bank, sub, index, tuple(ids), question, self.line_sep.join(lines), regions[:])


def _first_index(by_term: dict[str, list[int]]) -> Callable[[str], int]:
    """Sort key: a term's first box in canonical order."""
    return lambda t: by_term[t][0]


_KEY = {
    (task, sub): f"{ABBR[task]}.{sub}."
    for task, subs in (
        ("region_to_text", ("single", "multi")),
        ("text_to_region", ("sr_so", "sr_mo", "mr_so", "mr_mo", "absent")),
        ("grounded_report", ("open", "targeted")),
    )
    for sub in subs
}


# ----------------------------------------------------------------------------------------- entry point


def generate(ctx: SliceContext, mix: TaskMix, rng: np.random.Generator) -> list[Generated]:
    """All samples for one display slice, in a deterministic order (task, sample index, language).

    ``mix.tasks[task]`` samples are made per language: the integer part always, one more with the
    fractional part as probability.  Each sample index is planned once (subtask, regions) and rendered
    in every language of ``mix.langs`` with independently drawn templates.  A task that cannot be made
    on this slice (no usable region) is skipped silently.  Raises ``KeyError`` for a region term that is
    not in the glossary, ``ValueError`` for an unknown task, language or system prompt mode.
    """
    L = _LANG or _language()
    rates = L.rates(mix)
    sl = _Slice(ctx, L)
    u = _stream(rng).__next__
    planner = _Planner(sl, mix, u)
    renderers = [(lang, _Renderer(sl, ctx, mix, lang, L, u)) for lang in mix.langs]
    banks = L.t.banks
    out: list[Generated] = []
    for task, rate in rates:
        n = int(rate)
        frac = rate - n
        if frac > 0 and u() < frac:
            n += 1
        if n == 0:
            continue
        plan_one = getattr(planner, task)
        render = [(banks[(task, lang)], getattr(renderer, task)) for lang, renderer in renderers]
        for i in range(n):
            plan = plan_one()
            if plan is None:
                continue
            for bank, make in render:
                out.append(make(bank, i, plan))
    return out
