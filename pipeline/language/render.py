"""Words a plan in one language: draws the templates that fit its targets and fills them.

A template is drawn only for targets it ``fits`` (schemas.language_banks.TRAITS): the renderer computes
each target's traits (kind, number, instances, count, terms, boxes) from the glossary's grammar and the
plan, and draws among the fitting templates of the slot.
"""

from __future__ import annotations

from typing import Any

from pipeline.language.planner import Draws, Plan
from pipeline.language.slices import SliceView
from pipeline.language.voice import Choice, Voice, capitalise, phrase_traits

ABBR = {"region_to_text": "r2t", "text_to_region": "t2r", "grounded_report": "grg"}
SUBTASKS = {
    "region_to_text": ("single", "multi"),
    "text_to_region": ("sr_so", "sr_mo", "mr_so", "mr_mo", "absent"),
    "grounded_report": ("open", "targeted"),
}
#: subtask -> key prefix ("t2r.sr_mo."); subtask names are unique across tasks
KEY_PREFIX = {sub: f"{ABBR[task]}.{sub}." for task, subs in SUBTASKS.items() for sub in subs}


class Rendered:
    """What a renderer returns for one sample (``tasks.generate`` wraps it in a ``Generated``)."""

    __slots__ = ("answer", "ids", "question")

    def __init__(self, question: str, answer: str, ids: tuple[str, ...]) -> None:
        self.question, self.answer, self.ids = question, answer, ids


class Renderer:
    """Renders plans in one language.  ``self.v`` holds the placeholder values of this slice and
    language: the context words, plus the per-sample values every path sets before it fills a template."""

    __slots__ = ("d", "sentence", "sl", "terms", "v", "voice")

    def __init__(self, sl: SliceView, voice: Voice, draws: Draws, sentence_answers: bool) -> None:
        self.sl = sl
        self.voice = voice
        self.d = draws
        self.sentence = sentence_answers
        self.terms = sl.language.glossary.terms
        self.v: dict[str, Any] = dict(voice.words)

    def _draw(self, task: str, slot: str, traits: tuple[str, ...] = ()) -> Choice:
        choices = self.voice.choices(task, slot, traits)
        return choices[self.d.index(len(choices))]

    def _set_names(self, tid: str) -> None:
        p, v = self.voice.phrases, self.v
        v["term"] = p.name[tid]
        v["Term"] = capitalise(p.name[tid])
        v["the_term"] = p.the[tid]
        v["The_term"] = capitalise(p.the[tid])

    def _ref_phrase(self, tid: str, instances: str) -> str:
        p = self.voice.phrases
        return p.regions_ref[tid] if instances == "several" else p.the_ref[tid]

    def _refs(self, terms: list[str]) -> tuple[str, str]:
        """(``{refs}``, its grammatical number) for the named terms."""
        by_term = self.sl.by_term
        traits = [phrase_traits(self.terms[t], len(by_term[t])) for t in terms]
        text = self.voice.join([self._ref_phrase(t, inst) for t, (_n, inst) in zip(terms, traits, strict=True)])
        return text, traits[0][0] if len(terms) == 1 else "plural"

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
            return Rendered(q_fill(v), a_fill(v), (q_id, a_id))
        kinds = {self.terms[t].kind for t in plan.terms}
        q_id, q_fill = self._draw(task, "question_multi", (kinds.pop() if len(kinds) == 1 else "mixed",))
        a_id, a_fill = self._draw(task, "answer_multi", ("one" if len(plan.grouped) == 1 else "several",))
        refs = voice.phrases.ref
        v["boxes"] = voice.join(plan.boxes)
        v["n"] = voice.number(len(plan.boxes))
        v["grounded"] = voice.item_sep.join([refs[t] + box for t, box in plan.grouped])
        return Rendered(q_fill(v), a_fill(v), (q_id, a_id))

    # ---------------------------------------------------------------- text -> region

    def text_to_region(self, plan: Plan) -> Rendered:
        v, voice = self.v, self.voice
        task = "text_to_region"
        refs, boxes = voice.phrases.ref, self.sl.boxes
        if len(plan.terms) == 1:
            tid = plan.terms[0]
            number, instances = phrase_traits(self.terms[tid], len(plan.regions))
            q_id, q_fill = self._draw(task, "question_single", (number, instances))
            phrase = self._ref_phrase(tid, instances)
            v["ref"], v["the_ref"], v["The_ref"] = refs[tid], phrase, capitalise(phrase)
        else:
            q_id, q_fill = self._draw(task, "question_multi")
            v["refs"] = self._refs(plan.terms)[0]
        if plan.subtask == "absent":
            tid = plan.terms[0]
            a_id, a_fill = self._draw(task, "answer_absent", (self.terms[tid].number,))
            self._set_names(tid)
            return Rendered(q_fill(v), a_fill(v), (q_id, a_id))
        shape = ("one" if len(plan.terms) == 1 else "several", "one" if len(plan.regions) == 1 else "several")
        a_id, a_fill = self._draw(task, "answer_grounded", shape)
        v["grounded"] = voice.item_sep.join([refs[t] + boxes[t] for t in plan.terms])
        return Rendered(q_fill(v), a_fill(v), (q_id, a_id))

    # ---------------------------------------------------------------- grounded report

    def grounded_report(self, plan: Plan) -> Rendered:
        v, voice = self.v, self.voice
        task = "grounded_report"
        if plan.subtask == "open":
            q_id, q_fill = self._draw(task, "question_open")
        else:
            v["refs"], number = self._refs(plan.terms)
            q_id, q_fill = self._draw(task, "question_targeted", (number,))
        question = q_fill(v)
        ids = [q_id]
        lines = [self._report_line(tid, ids) for tid in plan.terms]
        return Rendered(question, voice.line_sep.join(lines), tuple(ids))

    def _report_line(self, tid: str, ids: list[str]) -> str:
        """``<ref>name</ref><box>[[...]]</box>: sentence`` for one term (the template id joins ``ids``)."""
        v, voice, term = self.v, self.voice, self.terms[tid]
        k = len(self.sl.by_term[tid])
        positions, size = self.sl.geometry[tid]
        if term.kind == "finding":
            number = phrase_traits(term, k)[0]
            count = "countable" if term.countable else "mass"
            a_id, a_fill = self._draw("grounded_report", "answer_finding", (number, count))
        else:
            a_id, a_fill = self._draw("grounded_report", "answer_anatomy", (term.number,))
        ids.append(a_id)
        self._set_names(tid)
        subject = voice.phrases.subject(tid, k)
        v["subject"], v["Subject"] = subject, capitalise(subject)
        v["position"] = voice.positions(positions)
        v["size"] = voice.sizes[size]
        return voice.phrases.ref[tid] + self.sl.boxes[tid] + voice.colon + a_fill(v)
