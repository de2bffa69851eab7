"""The random choices of one slice: the draw rule (:class:`Draws`) and the language-independent plan of
each sample (:class:`Planner`: subtask, regions, terms).

**One draw plan.**  Every random choice of a slice comes, in a fixed order, from one stream of uniform
[0, 1) floats drawn from the slice's ``numpy.random.Generator`` in blocks of 64:

1. per task (canonical order) one number for the fractional part of its rate;
2. per sample of that task: its plan (below), then per language of the mix, in order, its templates
   (question first, then each answer template, one per report line);

and every choice takes numbers by one rule, with no exceptions to keep anything in step: a choice among
``n`` options (even one) takes exactly one number ``u`` and picks ``int(u * n) % n``; a yes/no with
probability ``p`` takes one number (``u < p``); ``k`` distinct items take one number each, drawn from
the shrinking pool; a budgeted fill takes one number per candidate it looks at.  The same rng state
therefore gives the same output, and a change in one bank changes only the draws that follow it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import numpy as np

from pipeline.core.types import Region
from pipeline.language.slices import SliceView
from pipeline.regions.coords import one_box_tag


def _blocks(rng: np.random.Generator) -> Iterator[list[float]]:
    while True:
        yield rng.random(64).tolist()


class Draws:
    """The slice's uniform floats, handed out by the one rule above."""

    __slots__ = ("u",)

    def __init__(self, rng: np.random.Generator) -> None:
        # ``chain`` over list iterators: a draw is a C-level ``__next__``, a numpy call only per 64 numbers
        self.u = chain.from_iterable(_blocks(rng)).__next__

    def index(self, n: int) -> int:
        """A position in ``[0, n)`` (one number)."""
        return int(self.u() * n) % n

    def pick(self, seq: list[Any] | tuple[Any, ...]) -> Any:
        return seq[int(self.u() * len(seq)) % len(seq)]

    def chance(self, p: float) -> bool:
        return self.u() < p

    def take(self, seq: list[Any], k: int) -> list[Any]:
        """``k`` distinct items, one number each."""
        pool = list(seq)
        return [pool.pop(self.index(len(pool))) for _ in range(min(k, len(pool)))]


@dataclass(slots=True)
class Plan:
    """One sample's language-independent content."""

    subtask: str
    regions: list[Region]  # the boxes the text contains, in text order
    terms: list[str]  # the terms, in canonical order (an absent target: the one term asked for)
    boxes: list[str] = field(default_factory=list)  # region -> text: the box tag of each asked region
    grouped: list[tuple[str, str]] = field(default_factory=list)  # region -> text multi: (term, its box tags)
    report: bool = False  # grounded report: the lines are the report's own sentences (SliceView.report)


class Planner:
    """Plans samples of one slice (subtask, regions); the renderers word them in every language."""

    def __init__(self, sl: SliceView, draws: Draws, cap: int, negative_ratio: float) -> None:
        self.sl = sl
        self.d = draws
        self.cap = max(1, int(cap))
        self.negative_ratio = negative_ratio

    def _regions_of(self, terms: list[str]) -> list[Region]:
        regs, by_term = self.sl.regions, self.sl.by_term
        return [regs[i] for t in terms for i in by_term[t]]

    def _fill(self, terms: list[str], want: int, budget: int) -> list[str]:
        """Terms drawn without replacement, kept while their boxes fit the remaining ``budget``, until
        ``want`` are kept, nothing fits any more or none are left."""
        pool = list(terms)
        by_term = self.sl.by_term
        out: list[str] = []
        while pool and len(out) < want and budget > 0:
            t = pool.pop(self.d.index(len(pool)))
            if len(by_term[t]) <= budget:
                out.append(t)
                budget -= len(by_term[t])
        return out

    # ---------------------------------------------------------------- region -> text

    def region_to_text(self) -> Plan | None:
        """``single`` (one box) or ``multi`` (2..cap boxes, drawn at random; ambiguous boxes rejected)."""
        sl, d = self.sl, self.d
        n = len(sl.regions)
        if not n:
            return None
        k = 1
        if n >= 2 and self.cap >= 2 and d.chance(0.5):
            k = 2 + d.index(min(n, self.cap) - 1)
        # boxes drawn without replacement (one number each) until k unambiguous ones are found; the first
        # draw is from the whole range, so the common single-box case needs no pool
        first = d.index(n)
        chosen: list[int] = [] if sl.ambiguous(first) else [first]
        if len(chosen) < k:
            pool = [i for i in range(n) if i != first]
            while pool and len(chosen) < k:
                i = pool.pop(d.index(len(pool)))
                if not sl.ambiguous(i):
                    chosen.append(i)
        if not chosen:
            return None
        chosen.sort()  # canonical order
        regs = [sl.regions[i] for i in chosen]
        boxes = [one_box_tag(r.box) for r in regs]
        if len(regs) == 1:
            return Plan("single", regs, [regs[0].term], boxes)
        lists: dict[str, list[str]] = {}
        for r in regs:
            lists.setdefault(r.term, []).append(f"[{r.box[0]}, {r.box[1]}, {r.box[2]}, {r.box[3]}]")
        grouped = [(t, "<box>[" + ", ".join(items) + "]</box>") for t, items in lists.items()]
        return Plan("multi", regs, list(lists), boxes, grouped)

    # ---------------------------------------------------------------- text -> region

    def text_to_region(self) -> Plan | None:
        """MedRegA's four detection subtasks, or (with ``negative_ratio``) an absent target."""
        sl, d, cap = self.sl, self.d, self.cap
        if d.chance(self.negative_ratio):
            absent = sl.absent_term(d)
            if absent is not None:
                return Plan("absent", [], [absent])
        opt = sl.t2r_options(cap)
        if not opt.options:
            return None
        sub = d.pick(opt.options)
        if sub == "sr_so":
            terms = [d.pick(opt.singles)]
        elif sub == "sr_mo":
            terms = [d.pick(opt.multis)]
        elif sub == "mr_so":
            terms = d.take(opt.singles, 2 + d.index(min(len(opt.singles), cap) - 1))
        else:  # mr_mo: one term with several boxes plus at least one more term, within the box budget
            by_term = sl.by_term
            first = d.pick(opt.starters)
            budget = cap - len(by_term[first])
            others = [t for t in opt.fitting if t != first and len(by_term[t]) <= budget]
            terms = [first, *self._fill(others, 1 + d.index(len(others)), budget)]
        terms.sort(key=self.sl.first.__getitem__)
        return Plan(sub, self._regions_of(terms), terms)

    # ---------------------------------------------------------------- grounded report

    def grounded_report(self) -> Plan | None:
        """``open`` (every term of the slice, when all fit the box budget) or ``targeted`` (1..n terms)."""
        sl, d, cap = self.sl, self.d, self.cap
        fitting = sl.t2r_options(cap).fitting
        if not fitting:
            return None
        if len(sl.regions) <= cap and d.chance(0.5):
            return Plan("open", self._regions_of(sl.terms), list(sl.terms))
        terms = self._fill(fitting, 1 + d.index(len(fitting)), cap)
        terms.sort(key=self.sl.first.__getitem__)
        return Plan("targeted", self._regions_of(terms), terms)

    def report_grounded(self) -> Plan | None:
        """A grounded report from the report's own sentences: ``open`` (every term with a sentence, when all
        fit the box budget) or ``targeted`` (1..n of them).  The same draws as :meth:`grounded_report`,
        among the terms that have a sentence."""
        sl, d, cap = self.sl, self.d, self.cap
        by_term = sl.by_term
        said = [t for t in sl.terms if t in sl.report]
        fitting = [t for t in said if len(by_term[t]) <= cap]
        if not fitting:
            return None
        if sum(len(by_term[t]) for t in said) <= cap and d.chance(0.5):
            return Plan("open", self._regions_of(said), said, report=True)
        terms = self._fill(fitting, 1 + d.index(len(fitting)), cap)
        terms.sort(key=self.sl.first.__getitem__)
        return Plan("targeted", self._regions_of(terms), terms, report=True)
