"""What one display slice offers the samples: its regions in canonical order, grouped by term, with the
language-independent views the planner and the renderers share (box text, where each term lies and how
large it is, which boxes are ambiguous, which terms may be asked for as absent).

Views are made on first use and shared by every language of the slice.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from pipeline.core.types import Region
from pipeline.regions.coords import box_iou, box_tag

if TYPE_CHECKING:
    from pipeline.language.glossary import Term
    from pipeline.language.planner import Draws
    from pipeline.language.tasks import SliceContext
    from pipeline.language.voice import Language

#: Boxes of different terms overlapping at least this much are ambiguous for region -> text.
AMBIGUOUS_IOU = 0.9
#: mask area share of the image: small < 1 % <= moderate < 10 % <= large
SMALL_AREA, MODERATE_AREA = 0.01, 0.10
POSITIONS = tuple(f"{v}_{h}" for v in ("upper", "middle", "lower") for h in ("left", "center", "right"))
# IoU >= t needs a vertical overlap >= t * height: a box of another term can only be ambiguous with box i
# when its top edge lies within [y1 - _AMB_ABOVE * h, y1 + _AMB_BELOW * h] (h: the height of box i).
_AMB_BELOW = 1.0 - AMBIGUOUS_IOU
_AMB_ABOVE = (1.0 - AMBIGUOUS_IOU) / AMBIGUOUS_IOU


def region_key(r: Region) -> tuple[int, int, int, int, str]:
    """Canonical order (:func:`pipeline.regions.coords.order_boxes`): top-to-bottom, then left-to-right."""
    b = r.box
    return (b[1], b[0], b[3], b[2], r.term)


def position_of(box: tuple[int, ...]) -> str:
    """The ninth of the image (thirds of the 0..999 width and height) holding the box's centre."""
    cx, cy = box[0] + box[2], box[1] + box[3]  # twice the centre
    return POSITIONS[(0 if cy < 666 else 1 if cy < 1332 else 2) * 3 + (0 if cx < 666 else 1 if cx < 1332 else 2)]


class TermBoxes(dict[str, str]):  # a dict subclass: a hit is one C-level lookup
    """term -> ``<box>[[...], ...]</box>``: every box of the term in one list, made on first access."""

    __slots__ = ("by_term", "regions")
    by_term: dict[str, list[int]]
    regions: list[Region]

    def __missing__(self, term: str) -> str:
        tag = box_tag([self.regions[i].box for i in self.by_term[term]])
        self[term] = tag
        return tag


class ReportLines(dict[str, tuple[tuple[str, str, tuple[str, ...]], int, tuple[str, ...], str, str]]):
    """term -> what its report line needs in every language, made on first use: the (task, slot, traits)
    key of the sentence templates that fit it, its number of boxes, the part of the image each box lies in
    (distinct, in box order), its size word key from the mask area (the sum of its regions' pixels over
    the image area: < 1 % small, < 10 % moderate, else large) and its box tag."""

    __slots__ = ("boxes", "by_term", "image_area", "regions", "terms")
    boxes: TermBoxes
    by_term: dict[str, list[int]]
    image_area: int
    regions: list[Region]
    terms: dict[str, Term]

    def __missing__(self, tid: str) -> tuple[tuple[str, str, tuple[str, ...]], int, tuple[str, ...], str, str]:
        term, idx = self.terms[tid], self.by_term[tid]
        k = len(idx)
        key: tuple[str, str, tuple[str, ...]]
        if term.kind == "finding":
            number = "plural" if term.countable and k >= 2 else term.number
            key = ("grounded_report", "answer_finding", (number, "countable" if term.countable else "mass"))
        else:
            key = ("grounded_report", "answer_anatomy", (term.number,))
        regs = [self.regions[i] for i in idx]
        if k == 1:
            positions: tuple[str, ...] = (position_of(regs[0].box),)
            share = int(regs[0].area) / self.image_area
        else:
            positions = tuple(dict.fromkeys([position_of(r.box) for r in regs]))
            share = sum([int(r.area) for r in regs]) / self.image_area
        size = "small" if share < SMALL_AREA else "moderate" if share < MODERATE_AREA else "large"
        got = self[tid] = (key, k, positions, size, self.boxes[tid])
        return got


class SliceView:
    """The slice's regions in canonical order, grouped by term (``by_term``: term -> region indices, in
    the order of each term's first box), with the shared views."""

    __slots__ = (
        "_absent", "_absent_filter", "_amb", "_body_region", "_candidates", "_exhaustive", "_t2r", "boxes", "by_term",
        "first",
        "language", "lines", "regions", "report", "several", "terms",
    )  # fmt: skip

    def __init__(self, ctx: SliceContext, language: Language) -> None:
        regs = sorted(ctx.regions, key=region_key)
        by_term: dict[str, list[int]] = {}
        for i, r in enumerate(regs):
            b = r.box
            if type(b) is not tuple or type(b[0]) is not int:  # lists / numpy ints from callers: plain int tuples
                regs[i] = r = replace(r, box=(int(b[0]), int(b[1]), int(b[2]), int(b[3])))
            by_term.setdefault(r.term, []).append(i)
        known = language.glossary.terms
        if not by_term.keys() <= known.keys():
            unknown = sorted(t for t in by_term if t not in known)
            raise KeyError(f"regions use terms that are not in the glossary: {unknown} (a card defines its own "
                           "terms under `terms:`; sources.base.load_card checks that every label maps to one)")
        self.language = language
        self.regions = regs
        self.by_term = by_term
        self.terms = list(by_term)
        # (the views hold the regions, not the slice: no reference cycle, so a slice is freed at once)
        self.boxes = boxes = TermBoxes()
        boxes.regions, boxes.by_term = regs, by_term
        self.first = {t: idx[0] for t, idx in by_term.items()}  # sort key: a term's first box
        # countable findings with several boxes: said "the <ref>polyp</ref> regions" (plural)
        counted = language.countable_findings
        self.several = {t for t, idx in by_term.items() if len(idx) > 1 and t in counted}
        self.lines = lines = ReportLines()
        lines.terms, lines.by_term, lines.regions, lines.boxes = known, by_term, regs, boxes
        lines.image_area = max(1, int(ctx.width) * int(ctx.height))
        self._amb: dict[int, bool] = {}
        self._absent: list[str] | None = None
        self._absent_filter: tuple[frozenset[str], frozenset[str]] | None = None
        self._t2r: dict[int, T2ROptions] = {}
        self._candidates = ctx.candidate_absent_terms
        self._exhaustive = ctx.exhaustive_findings
        self._body_region = ctx.body_region
        #: term -> lang -> the report's sentence(s) about it (report-grounded sources; empty otherwise)
        self.report = {t: texts for t, texts in ctx.report.items() if t in by_term and texts}

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
            j = i - 1
            while j >= 0 and regs[j].box[1] >= lo:  # above (sorted by top edge)
                j -= 1
            got = False
            for rj in regs[j + 1 :]:
                if rj.box[1] > hi:
                    break
                if rj.term != ri.term and box_iou(bi, rj.box) >= AMBIGUOUS_IOU:
                    got = True
                    break
            self._amb[i] = got
        return got

    # ---------------------------------------------------------------- absent targets

    def absent_term(self, d: Draws) -> str | None:
        """A random hard negative, or None.  Usable absent targets are terms the source annotates
        (``candidate_absent_terms``) that are not on the slice, lie in the slice's body region (glossary),
        neither contain nor belong to a present term, and -- for a lesion or finding -- only when the
        source annotates it exhaustively (otherwise "no cyst" would be a claim the data does not make).

        Draws: up to 8 candidates, one number each, until one is usable; then (once per slice) the whole
        usable list is made and one of it is picked."""
        cands = self._candidates
        if not cands:
            return None
        if self._absent is None:
            for _ in range(8):
                t = d.pick(cands)
                if self._usable(t):
                    return t
            self._absent = [t for t in dict.fromkeys(cands) if self._usable(t)]
        return d.pick(self._absent) if self._absent else None

    def _usable(self, t: str) -> bool:
        if self._absent_filter is None:
            terms, lineage = self.language.glossary.terms, self.language.lineage
            regions = self.language.vocab.body_region_parts(self._body_region) or frozenset(
                r for p in self.by_term for r in terms[p].body_regions
            )
            self._absent_filter = (regions, frozenset().union(*(lineage[p] for p in self.by_term)))
        regions, containing = self._absent_filter  # containing: the ancestors of present terms
        term = self.language.glossary.terms.get(t)
        if term is None or t in self.by_term or regions.isdisjoint(term.body_regions):
            return False
        if term.family == "abnormality" and not self._exhaustive_for(t):
            return False
        # neither a part of a present term (a lobe of a present lung) nor containing one ("lung" vs "left lung")
        return t not in containing and self.language.lineage[t].isdisjoint(self.by_term)

    def _exhaustive_for(self, t: str) -> bool:
        flag = self._exhaustive
        return flag if isinstance(flag, bool) else t in flag

    # ---------------------------------------------------------------- text -> region options

    def t2r_options(self, cap: int) -> T2ROptions:
        """The terms and subtasks text -> region can use within a box budget (cached per budget)."""
        got = self._t2r.get(cap)
        if got is None:
            got = self._t2r[cap] = T2ROptions(self.by_term, cap)
        return got


class T2ROptions:
    """Terms that fit a box budget (``fitting``), those with one box (``singles``) and several
    (``multis``), the multi-box terms that leave room for another term (``starters``, for mr_mo) and the
    subtasks possible (``options``)."""

    __slots__ = ("fitting", "multis", "options", "singles", "starters")

    def __init__(self, by_term: dict[str, list[int]], cap: int) -> None:
        self.fitting: list[str] = []
        self.singles: list[str] = []
        self.multis: list[str] = []
        for t, idx in by_term.items():
            if len(idx) <= cap:
                self.fitting.append(t)
                (self.singles if len(idx) == 1 else self.multis).append(t)
        # a starter leaves room for another term: its count plus the smallest count among the others fits
        counts = sorted([len(by_term[t]) for t in self.fitting])
        self.starters = [
            m for m in self.multis
            if len(counts) >= 2 and len(by_term[m]) + (counts[1] if len(by_term[m]) == counts[0] else counts[0]) <= cap
        ]  # fmt: skip
        self.options = []
        if self.singles:
            self.options.append("sr_so")
        if self.multis:
            self.options.append("sr_mo")
        if len(self.singles) >= 2 and cap >= 2:
            self.options.append("mr_so")
        if self.starters:
            self.options.append("mr_mo")
