"""Words a plan in one language: draws the templates that fit its targets and fills them.

A template is drawn only for targets it ``fits`` (schemas.language_banks.TRAITS): the renderer computes
each target's traits (kind, number, instances, count, terms, boxes) from the glossary's grammar and the
plan, and draws among the fitting templates of the slot.
"""

from __future__ import annotations

from typing import Any

from pipeline.language.planner import Draws, Plan
from pipeline.language.slices import SliceView
from pipeline.language.voice import Choice, Voice, phrase_traits

ABBR = {"region_to_text": "r2t", "text_to_region": "t2r", "grounded_report": "grg"}
SUBTASKS = {
    "region_to_text": ("single", "multi"),
    "text_to_region": ("sr_so", "sr_mo", "mr_so", "mr_mo", "absent"),
    "grounded_report": ("open", "targeted"),
}
#: subtask -> key prefix ("t2r.sr_mo."); subtask names are unique across tasks
KEY_PREFIX = {sub: f"{ABBR[task]}.{sub}." for task, subs in SUBTASKS.items() for sub in subs}


#: what a renderer returns for one sample: (question, answer, template ids, question first)
Rendered = tuple[str, str, tuple[str, ...]]


class Renderer:
    """Renders plans in one language.  ``self.v`` holds the placeholder values of this slice and
    language: the context words, plus the per-sample values every path sets before it fills a template."""

    __slots__ = ("cache", "p", "sentence", "sl", "terms", "u", "v", "voice")

    def __init__(self, sl: SliceView, voice: Voice, draws: Draws, sentence_answers: bool) -> None:
        self.sl = sl
        self.voice = voice
        self.p = voice.phrases
        self.cache = voice.choice_cache
        self.u = draws.u
        self.sentence = sentence_answers
        self.terms = sl.language.glossary.terms
        self.v: dict[str, Any] = dict(voice.words)

    def _draw(self, task: str, slot: str, traits: tuple[str, ...] = ()) -> Choice:
        """A template of the slot that fits ``traits``: one number, by the draw rule (planner.Draws)."""
        choices = self.cache.get((task, slot, traits)) or self.voice.choices(task, slot, traits)
        n = len(choices)
        return choices[int(self.u() * n) % n]

    def _set_names(self, tid: str) -> None:
        p, v = self.p, self.v
        v["term"] = p.name[tid]
        v["Term"] = p.Name[tid]
        v["the_term"] = p.the[tid]
        v["The_term"] = p.The[tid]

    def _refs(self, terms: list[str]) -> tuple[str, str]:
        """(``{refs}``, its grammatical number) for the named terms."""
        several, p = self.sl.several, self.p
        text = self.voice.join([p.regions_ref[t] if t in several else p.the_ref[t] for t in terms])
        if len(terms) > 1 or terms[0] in several:
            return text, "plural"
        return text, self.terms[terms[0]].number

    # ---------------------------------------------------------------- region -> text

    def region_to_text(self, plan: Plan) -> Rendered:
        v, voice = self.v, self.voice
        task = "region_to_text"
        if plan.subtask == "single":
            term = self.terms[plan.terms[0]]
            q_id, q_fill = self._draw(task, "question_single", (term.kind,))
            v["box"] = plan.boxes[0]
            self._set_names(term.id)
            if self.sentence:
                a_id, a_fill = self._draw(task, "answer_sentence", (term.number,))
            else:
                a_id, a_fill = self._draw(task, "answer_single")
            return q_fill(v), a_fill(v), (q_id, a_id)
        kinds = {self.terms[t].kind for t in plan.terms}
        q_id, q_fill = self._draw(task, "question_multi", (kinds.pop() if len(kinds) == 1 else "mixed",))
        a_id, a_fill = self._draw(task, "answer_multi", ("one" if len(plan.grouped) == 1 else "several",))
        refs = voice.phrases.ref
        v["boxes"] = voice.join(plan.boxes)
        v["n"] = voice.number(len(plan.boxes))
        v["grounded"] = voice.item_sep.join([refs[t] + box for t, box in plan.grouped])
        return q_fill(v), a_fill(v), (q_id, a_id)

    # ---------------------------------------------------------------- text -> region

    def text_to_region(self, plan: Plan) -> Rendered:
        v, voice = self.v, self.voice
        task = "text_to_region"
        refs, boxes = voice.phrases.ref, self.sl.boxes
        if len(plan.terms) == 1:
            tid = plan.terms[0]
            number, instances = phrase_traits(self.terms[tid], len(plan.regions))
            q_id, q_fill = self._draw(task, "question_single", (number, instances))
            p = self.p
            several = instances == "several"
            v["ref"] = refs[tid]
            v["the_ref"] = p.regions_ref[tid] if several else p.the_ref[tid]
            v["The_ref"] = p.The_regions_ref[tid] if several else p.The_ref[tid]
        else:
            q_id, q_fill = self._draw(task, "question_multi")
            v["refs"] = self._refs(plan.terms)[0]
        if plan.subtask == "absent":
            tid = plan.terms[0]
            a_id, a_fill = self._draw(task, "answer_absent", (self.terms[tid].number,))
            self._set_names(tid)
            return q_fill(v), a_fill(v), (q_id, a_id)
        shape = ("one" if len(plan.terms) == 1 else "several", "one" if len(plan.regions) == 1 else "several")
        a_id, a_fill = self._draw(task, "answer_grounded", shape)
        v["grounded"] = voice.item_sep.join([refs[t] + boxes[t] for t in plan.terms])
        return q_fill(v), a_fill(v), (q_id, a_id)

    # ---------------------------------------------------------------- grounded report

    def grounded_report(self, plan: Plan) -> Rendered | None:
        """Template lines, or (``plan.report``) the report's own sentence per term; ``None`` when a term of
        a report plan has no sentence in this language (no accepted translation yet)."""
        v, voice = self.v, self.voice
        task = "grounded_report"
        lang = voice.lang
        if plan.report and any(lang not in self.sl.report.get(t, {}) for t in plan.terms):
            return None
        if plan.subtask == "open":
            q_id, q_fill = self._draw(task, "question_open")
        else:
            v["refs"], number = self._refs(plan.terms)
            q_id, q_fill = self._draw(task, "question_targeted", (number,))
        question = q_fill(v)
        ids = [q_id]
        if plan.report:
            report, refs, boxes = self.sl.report, voice.phrases.ref, self.sl.boxes
            lines = [refs[t] + boxes[t] + voice.colon + report[t][lang] for t in plan.terms]
        else:
            lines = [self._report_line(tid, ids) for tid in plan.terms]
        return question, voice.line_sep.join(lines), tuple(ids)

    def _report_line(self, tid: str, ids: list[str]) -> str:
        """``<ref>name</ref><box>[[...]]</box>: sentence`` for one term (the template id joins ``ids``); the
        language-independent part (template traits, positions, size, box tag) comes from the slice."""
        v, voice, p = self.v, self.voice, self.p
        key, k, positions, size, box = self.sl.lines[tid]
        choices = self.cache.get(key) or voice.choices(*key)
        a_id, a_fill = choices[int(self.u() * len(choices)) % len(choices)]
        ids.append(a_id)
        the, the_cap = p.the[tid], p.The[tid]
        v["term"], v["Term"], v["the_term"], v["The_term"] = p.name[tid], p.Name[tid], the, the_cap
        # a report's subject is its definite phrase, except for a countable finding ("a polyp", "two polyps")
        v["subject"], v["Subject"] = p.subject(tid, k) if key[2][-1] == "countable" else (the, the_cap)
        v["position"] = voice.position_cache.get(positions) or voice.positions(positions)
        v["size"] = voice.sizes[size]
        return p.ref[tid] + box + voice.colon + a_fill(v)
