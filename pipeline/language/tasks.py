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
(:func:`pipeline.regions.coords.order_boxes` semantics); ``Generated.regions`` lists exactly the boxes the text
contains, in the order they first appear.

Randomness comes only from the ``rng`` argument (a per-slice derived ``numpy.random.Generator``): the
same rng state gives the same output, byte for byte.  Never ``random`` or ``hash()``.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from itertools import chain
from typing import Any

import numpy as np

from pipeline.language.glossary import Glossary, load_glossary
from pipeline.language.templates import (
    TASKS,
    Template,
    TemplateSet,
    Vocab,
    load_templates,
    load_vocab,
)
from pipeline.core.types import Region
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
# ``int(u() * n) % n`` (the modulo only guards the float edge case u * n == n).  The planner draws nothing
# for a choice among n <= 1 items; a template is always drawn (see :class:`_Renderer`).


def _blocks(rng: np.random.Generator) -> Iterator[list[float]]:
    while True:
        yield rng.random(64).tolist()


def _stream(rng: np.random.Generator) -> Iterator[float]:
    """The slice's uniform floats; ``__next__`` is C-level (``chain`` over list iterators), so a draw costs
    no Python frame except once per block."""
    return chain.from_iterable(_blocks(rng))


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
            if not budget and len(out) < want:
                # nothing fits any more: the loop would only draw (and reject) the rest of the pool, so
                # just consume the numbers it would draw (one per pool size > 1) to keep the stream in step
                for _ in range(len(pool) - 1):
                    u()
                break
    return out


# ----------------------------------------------------------------------------------------- compiled templates
#
# ``str.format_map`` parses its template on every call.  The banks are fixed per process, so each template is
# parsed once and turned into ``fill(values) -> str``: a lambda that is one f-string, e.g. for
# ``"The {term} lies in the {position}."``
#
#     lambda v, *, _0, _2: f"{_0}{v['term']}{_2}{v['position']}{_4}"      # __kwdefaults__ = {"_0": "The ", ...}
#
# The literal parts are bound as keyword-only defaults, so the generated source never contains template text
# (nothing to escape), and placeholder names are plain identifiers (checked here and when the banks load).
# ``fill(v) == text.format_map(v)`` for every ``v``: the same lookups (``KeyError`` for a missing one) and the
# same ``format(value, "")`` of each value; it is about 4x faster.

_Fill = Callable[[dict[str, Any]], str]
#: a template as the hot loops see it: ``(template id, fill)``
_Choice = tuple[str, _Fill]
_FORMATTER = string.Formatter()


def _compile(text: str) -> _Fill:
    """``text.format_map`` as a compiled function (see above)."""
    literals: dict[str, str] = {}
    parts: list[str] = []
    for k, (literal, name, spec, conversion) in enumerate(_FORMATTER.parse(text)):
        if literal:
            literals[f"_{k}"] = literal
            parts.append(f"{{_{k}}}")
        if name is not None:
            if spec or conversion or not name.isidentifier():
                raise ValueError(f"template {text!r}: placeholder {{{name}}} must be a plain name")
            parts.append(f"{{v[{name!r}]}}")
    params = "v, *, " + ", ".join(literals) if literals else "v"
    fill = eval(f'lambda {params}: f"{"".join(parts)}"', {})  # the source holds only names (see above)
    fill.__kwdefaults__ = literals or None
    return fill


# ----------------------------------------------------------------------------------------- per-process caches


class _Voice:
    """Everything needed to render in one language for one (modality, body region) context, prepared once per
    process: names, ``<ref>`` strings, punctuation, context words and the compiled template choices per task
    and slot (templates with ``{body_region}`` only when the body region is known)."""

    __slots__ = (
        "abnormal", "caps", "colon", "item_sep", "lang", "last_sep", "line_sep", "list_sep", "names",
        "position_words", "refs", "size_words", "slots", "system", "words",
    )  # fmt: skip

    def __init__(self, L: _Language, lang: str, words: dict[str, Any]) -> None:
        self.lang = lang
        self.words = words  # {modality}, {image}, {body_region} (None when unknown)
        self.names = L.names[lang]
        self.caps = L.caps[lang]
        self.refs = L.refs[lang]
        p = L.v.punctuation[lang]
        self.list_sep, self.last_sep, self.item_sep, self.colon, self.line_sep = (
            p.list_sep, p.last_sep, p.item_sep, p.colon, p.line_sep,
        )  # fmt: skip
        self.abnormal = L.abnormal
        self.position_words = L.position_words[lang]
        self.size_words = L.size_words[lang]
        has_region = words["body_region"] is not None
        # task -> slot -> choices; task -> system prompts ((id, text), ...)
        self.slots: dict[str, dict[str, tuple[_Choice, ...]]] = {}
        self.system: dict[str, tuple[tuple[str, str], ...]] = {}
        for task in TASKS:
            bank = L.t.bank(task, lang)
            self.slots[task] = {
                slot: tuple((t.id, L.fill(t)) for t in bank.choices(slot, has_region)) for slot in SLOTS[task]
            }
            self.system[task] = bank.system


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
        self._fills: dict[str, _Fill] = {}
        self._voices: dict[tuple[str, str | None, str], _Voice] = {}
        self._mixes: dict[tuple[Any, ...], list[tuple[str, float]]] = {}

    def fill(self, template: Template) -> _Fill:
        """The compiled ``template.text.format_map`` (cached per template id)."""
        got = self._fills.get(template.id)
        if got is None:
            got = self._fills[template.id] = _compile(template.text)
        return got

    def voice(self, modality: str, body_region: str | None, lang: str) -> _Voice:
        key = (modality, body_region, lang)
        got = self._voices.get(key)
        if got is None:
            mod, image = self.v.modality_words(modality, lang)
            words = {"modality": mod, "image": image, "body_region": self.v.body_region_word(body_region, lang)}
            got = self._voices[key] = _Voice(self, lang, words)
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
    glossary = load_glossary()  # a new object when user terms were added (cards, glossary files)
    if _LANG is None or _LANG.g is not glossary:
        _LANG = _Language(glossary, load_templates(), load_vocab())
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
    """``[[x1, y1, x2, y2], ...]`` exactly as :func:`pipeline.regions.coords.format_boxes` writes it."""
    return "[" + ", ".join(["[%d, %d, %d, %d]" % b for b in boxes]) + "]"  # noqa: UP031 (fastest)


class _TermBoxes(dict):  # type: ignore[type-arg]
    """term -> ``<box>[[...], ...]</box>``: all boxes of the term in one list (as :func:`_boxes_text` writes
    it), made on first access.  A dict with ``__missing__`` rather than a method: a hit is one C-level
    lookup."""

    __slots__ = ("by_term", "regions")

    def __missing__(self, term: str) -> str:
        regs = self.regions
        idx = self.by_term[term]
        if len(idx) == 1:
            tag = "<box>[[%d, %d, %d, %d]]</box>" % regs[idx[0]].box  # noqa: UP031 (fastest)
        else:
            tag = "<box>[" + ", ".join(["[%d, %d, %d, %d]" % regs[i].box for i in idx]) + "]</box>"  # noqa: UP031
        self[term] = tag
        return tag


class _TermGeometry(dict):  # type: ignore[type-arg]
    """term -> (position key, size key), made on first access: thirds of the image for the centre of the
    union box; summed box area share < 2 % small, < 15 % moderate, else large."""

    __slots__ = ("by_term", "regions")

    def __missing__(self, term: str) -> tuple[str, str]:
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
        got = self[term] = (
            _POSITION[(0 if cy < 666 else 1 if cy < 1332 else 2) * 3 + (0 if cx < 666 else 1 if cx < 1332 else 2)],
            "small" if share < _SMALL else "moderate" if share < _MODERATE else "large",
        )
        return got


class _Slice:
    """The slice's regions in canonical order, grouped by term, with the views the samples need; the
    derived views (``boxes``, ``geometry``, ambiguity, t2r options, absent targets) are made on first use
    and shared by the languages."""

    __slots__ = (
        "_L", "_absent", "_amb", "_candidates", "_t2r", "boxes", "by_term", "geometry", "regions", "terms",
    )  # fmt: skip

    def __init__(self, ctx: SliceContext, L: _Language) -> None:
        regs = sorted(ctx.regions, key=_region_key)
        by_term: dict[str, list[int]] = {}
        for i, r in enumerate(regs):
            if type(r.box) is not tuple:  # "%d" formatting needs a tuple of 4 ints
                regs[i] = r = replace(r, box=tuple(int(x) for x in r.box))
            lst = by_term.get(r.term)
            if lst is None:
                by_term[r.term] = [i]
            else:
                lst.append(i)
        known = L.g.terms
        if not by_term.keys() <= known.keys():  # O(len(by_term)), unlike a set difference
            unknown = sorted(t for t in by_term if t not in known)
            raise KeyError(f"regions use terms that are not in the glossary: {unknown} (a card defines its own "
                           "terms under `terms:`; sources.base.load_card checks that every label maps to one)")
        self.regions = regs
        self.by_term = by_term
        # dicts keep insertion order = order of each term's first (top-left-most) box
        self.terms = list(by_term)
        # (the views hold the regions, not the slice: no reference cycle, so a slice is freed at once)
        self.boxes = boxes = _TermBoxes()
        boxes.regions, boxes.by_term = regs, by_term
        self.geometry = geometry = _TermGeometry()
        geometry.regions, geometry.by_term = regs, by_term
        self._amb: dict[int, bool] = {}
        self._absent: list[str] | None = None
        self._t2r: dict[int, tuple[list[str], list[str], list[str], list[str]]] = {}
        self._candidates = ctx.candidate_absent_terms
        self._L = L

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


#: (subtask, what the renderers need -- see each planner method --, the regions in text order).  Text that
#: does not depend on the language (box lists, positions) is made here, once for all languages.
_Plan = tuple[str, Any, list[Region]]


class _Planner:
    """Language-independent choices for one slice."""

    def __init__(self, sl: _Slice, mix: TaskMix, u: Callable[[], float]) -> None:
        self.sl = sl
        self.u = u
        self.cap = max(1, int(mix.max_regions_per_sample))
        self.negative_ratio = mix.negative_ratio
        self.abnormal = sl._L.abnormal

    def region_to_text(self) -> _Plan | None:
        """("single", (box tag, term), [region]) or ("multi", (box tag per region, [(term, box tag of its
        regions), ...]), regions), regions in canonical order."""
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
        amb = sl.ambiguous
        regs = sl.regions
        # the first draw from the full pool [0, n) is the index itself: the common single-box case needs
        # no pool (the draws are the same as with one)
        i = int(u() * n) % n if n > 1 else 0
        if k == 1 and not amb(i):
            r = regs[i]
            return "single", ("<box>[[%d, %d, %d, %d]]</box>" % r.box, r.term), [r]  # noqa: UP031
        pool = list(range(n))
        del pool[i]
        chosen: list[int] = [] if amb(i) else [i]
        while pool and len(chosen) < k:
            m = len(pool)
            i = pool.pop(int(u() * m) % m) if m > 1 else pool.pop()
            if not amb(i):
                chosen.append(i)
        if not chosen:
            return None
        if len(chosen) == 1:
            r = regs[chosen[0]]
            return "single", ("<box>[[%d, %d, %d, %d]]</box>" % r.box, r.term), [r]  # noqa: UP031
        chosen.sort()  # canonical order
        # the language-independent text, made once for all languages: each box, and each term's boxes
        texts = ["[%d, %d, %d, %d]" % regs[i].box for i in chosen]  # noqa: UP031
        by_term: dict[str, list[str]] = {}
        for i, text in zip(chosen, texts, strict=True):
            lst = by_term.get(regs[i].term)
            if lst is None:
                by_term[regs[i].term] = [text]
            else:
                lst.append(text)
        boxes = ["<box>[" + text + "]</box>" for text in texts]
        grouped = [(t, "<box>[" + ", ".join(lst) + "]</box>") for t, lst in by_term.items()]
        return "multi", (boxes, grouped), [regs[i] for i in chosen]

    def text_to_region(self) -> _Plan | None:
        """(subtask, terms in canonical order, regions); "absent" carries the one absent term (the box tags
        come from the slice's shared ``boxes`` view)."""
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
        """("open" | "targeted", (terms in canonical order, [(term, box tag, (position, size), abnormal), ...]),
        regions)."""
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
        # the language-independent part of each line, made once for all languages
        boxes, geometry, abnormal = sl.boxes, sl.geometry, self.abnormal
        lines = [(t, boxes[t], geometry[t], t in abnormal) for t in terms]
        return sub, (terms, lines), [regs[i] for t in terms for i in by_term[t]]


class _Renderer:
    """Renders plans in one language.

    One per (slice, language); the per-language tables come prepared in a :class:`_Voice`.  ``self.v`` is
    the placeholder values dict of this slice and language: the context words, plus the per-sample values
    that every path sets before it fills a template (the bank validator guarantees that no other placeholder
    is used).  Template draws: ``choices[int(u() * n) % n]`` always draws, even for one choice; a system
    prompt is drawn only when the bank has several.
    """

    __slots__ = ("mode", "sl", "u", "v", "voice")

    def __init__(self, sl: _Slice, voice: _Voice, mode: str, u: Callable[[], float]) -> None:
        self.sl = sl
        self.voice = voice
        self.u = u
        self.mode = mode
        self.v: dict[str, Any] = dict(voice.words)

    def _emit(
        self, task: str, subtask: str, index: int, ids: tuple[str, ...], question: str, answer: str,
        regions: list[Region],
    ) -> Generated:  # fmt: skip
        voice = self.voice
        system = voice.system[task]
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
            sep = " " if voice.lang == "en" else ""
            conv = [
                {"from": "human", "value": sys_text + sep + "<image>\n" + question},
                {"from": "gpt", "value": answer},
            ]
        else:
            conv = [{"from": "human", "value": "<image>\n" + question}, {"from": "gpt", "value": answer}]
            sys_id = None
        return Generated(task, subtask, voice.lang, ids[0], conv, regions, _KEY[subtask] + str(index), ids, sys_id)

    # -- region -> text

    def region_to_text(self, index: int, plan: _Plan) -> Generated:
        sub, made, regions = plan
        u = self.u
        v = self.v
        voice = self.voice
        slots = voice.slots["region_to_text"]
        if sub == "single":
            box, term = made
            qs, as_ = slots["question_single"], slots["answer_single"]
            q_id, q_fill = qs[int(u() * len(qs)) % len(qs)]
            a_id, a_fill = as_[int(u() * len(as_)) % len(as_)]
            v["box"] = box
            v["term"] = voice.names[term]
            v["Term"] = voice.caps[term]
            return self._emit("region_to_text", sub, index, (q_id, a_id), q_fill(v), a_fill(v), regions[:])
        boxes, grouped = made
        qs, as_ = slots["question_multi"], slots["answer_multi"]
        q_id, q_fill = qs[int(u() * len(qs)) % len(qs)]
        a_id, a_fill = as_[int(u() * len(as_)) % len(as_)]
        refs = voice.refs
        v["boxes"] = voice.list_sep.join(boxes)
        v["n"] = len(boxes)
        v["grounded"] = voice.item_sep.join([refs[t] + box for t, box in grouped])
        return self._emit("region_to_text", sub, index, (q_id, a_id), q_fill(v), a_fill(v), regions[:])

    # -- text -> region

    def text_to_region(self, index: int, plan: _Plan) -> Generated:
        sub, terms, regions = plan
        u = self.u
        v = self.v
        voice = self.voice
        slots = voice.slots["text_to_region"]
        if sub == "absent":
            term = terms[0]
            qs, as_ = slots["question_single"], slots["answer_absent"]
            q_id, q_fill = qs[int(u() * len(qs)) % len(qs)]
            a_id, a_fill = as_[int(u() * len(as_)) % len(as_)]
            v["ref"] = voice.refs[term]
            v["term"] = voice.names[term]
            v["Term"] = voice.caps[term]
            return self._emit("text_to_region", sub, index, (q_id, a_id), q_fill(v), a_fill(v), [])
        if len(terms) == 1:
            qs = slots["question_single"]
            q_id, q_fill = qs[int(u() * len(qs)) % len(qs)]
            v["ref"] = voice.refs[terms[0]]
        else:
            qs = slots["question_multi"]
            q_id, q_fill = qs[int(u() * len(qs)) % len(qs)]
            v["refs"] = _join([voice.refs[t] for t in terms], voice.list_sep, voice.last_sep)
        as_ = slots["answer_grounded"]
        a_id, a_fill = as_[int(u() * len(as_)) % len(as_)]
        refs, boxes = voice.refs, self.sl.boxes
        v["grounded"] = voice.item_sep.join([refs[t] + boxes[t] for t in terms])
        return self._emit("text_to_region", sub, index, (q_id, a_id), q_fill(v), a_fill(v), regions[:])

    # -- grounded report

    def grounded_report(self, index: int, plan: _Plan) -> Generated:
        sub, (terms, parts), regions = plan
        u = self.u
        v = self.v
        voice = self.voice
        slots = voice.slots["grounded_report"]
        if sub == "open":
            qs = slots["question_open"]
            q_id, q_fill = qs[int(u() * len(qs)) % len(qs)]
        else:
            qs = slots["question_targeted"]
            q_id, q_fill = qs[int(u() * len(qs)) % len(qs)]
            v["refs"] = _join([voice.refs[t] for t in terms], voice.list_sep, voice.last_sep)
        question = q_fill(v)
        ch_find, ch_anat = slots["answer_finding"], slots["answer_anatomy"]
        n_find, n_anat = len(ch_find), len(ch_anat)
        pos_words, size_words = voice.position_words, voice.size_words
        names, caps, refs, colon = voice.names, voice.caps, voice.refs, voice.colon
        lines: list[str] = []
        ids = [q_id]
        for t, box, (pos, size), abnormal in parts:
            a_id, a_fill = ch_find[int(u() * n_find) % n_find] if abnormal else ch_anat[int(u() * n_anat) % n_anat]
            ids.append(a_id)
            v["term"] = names[t]
            v["Term"] = caps[t]
            v["position"] = pos_words[pos]
            v["size"] = size_words[size]
            lines.append(refs[t] + box + colon + a_fill(v))
        return self._emit("grounded_report", sub, index, tuple(ids), question, voice.line_sep.join(lines), regions[:])


def _first_index(by_term: dict[str, list[int]]) -> Callable[[str], int]:
    """Sort key: a term's first box in canonical order."""
    return lambda t: by_term[t][0]


#: subtask -> key prefix ("t2r.sr_mo."); subtask names are unique across tasks
_KEY = {
    sub: f"{ABBR[task]}.{sub}."
    for task, subs in (
        ("region_to_text", ("single", "multi")),
        ("text_to_region", ("sr_so", "sr_mo", "mr_so", "mr_mo", "absent")),
        ("grounded_report", ("open", "targeted")),
    )
    for sub in subs
}


#: task -> the (unbound) renderer method
_RENDER = {task: getattr(_Renderer, task) for task in ABBR}


# ----------------------------------------------------------------------------------------- entry point


def generate(ctx: SliceContext, mix: TaskMix, rng: np.random.Generator) -> list[Generated]:
    """All samples for one display slice, in a deterministic order (task, sample index, language).

    ``mix.tasks[task]`` samples are made per language: the integer part always, one more with the
    fractional part as probability.  Each sample index is planned once (subtask, regions) and rendered
    in every language of ``mix.langs`` with independently drawn templates.  A task that cannot be made
    on this slice (no usable region) is skipped silently.  Raises ``KeyError`` for a region term that is
    not in the glossary, ``ValueError`` for an unknown task, language or system prompt mode.
    """
    L = _language()  # rebuilt when user terms changed the glossary
    rates = L.rates(mix)
    sl = _Slice(ctx, L)
    u = _stream(rng).__next__
    planner = _Planner(sl, mix, u)
    modality, body_region, mode = ctx.modality, ctx.body_region, mix.system_prompt
    renderers = [_Renderer(sl, L.voice(modality, body_region, lang), mode, u) for lang in mix.langs]
    out: list[Generated] = []
    for task, rate in rates:
        n = int(rate)
        frac = rate - n
        if frac > 0 and u() < frac:
            n += 1
        if n == 0:
            continue
        plan_one = getattr(planner, task)
        render = _RENDER[task]
        for i in range(n):
            plan = plan_one()
            if plan is None:
                continue
            for renderer in renderers:
                out.append(render(renderer, i, plan))
    return out
