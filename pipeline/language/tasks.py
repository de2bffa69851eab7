"""Region-centric conversations for one display slice: ``generate(ctx, mix, rng) -> list[Generated]``.

Tasks and subtasks (MedRegA, arXiv 2410.18387; docs/language.md has examples):

* ``region_to_text`` -- ``single``: one box is given, the answer is its term's display name alone (the
  default; ``region_to_text_answer="sentence"`` answers in a sentence, under its own system prompt);
  ``multi``: several boxes are given, the answer grounds each term ``<ref>name</ref><box>[[...]]</box>``.
  Boxes that (almost) coincide with a box of another term (IoU >= 0.9) are never asked about.
* ``text_to_region`` -- MedRegA's four detection subtasks, "region" = term and "object" = box:
  ``sr_so``, ``sr_mo``, ``mr_so``, ``mr_mo``; plus ``absent``: a hard negative (a term the source
  annotates, of the slice's body region, not on the slice; a lesion or finding only when the source
  annotates it exhaustively) with a probability of ``mix.negative_ratio``.
* ``grounded_report`` -- ``open`` (every term of the slice, when all fit ``max_regions_per_sample``) or
  ``targeted`` (the question names the terms).  One line per term: ``<ref>name</ref><box>[[...]]</box>:
  sentence`` (``：`` in Chinese); the sentence says where the term lies (each box's part of the image)
  and how large its mask is (``text_source`` "template").  A slice of a report-grounded source carries the
  report's own sentences per term (``SliceContext.report``): its grounded reports then cover the terms with
  a sentence, and each line's sentence is the report's (``text_source`` "report"); ``TaskMix.grounded_text``
  chooses report rows, template rows or both.  A language in which some term of the plan has no sentence
  (no accepted translation yet) gets no report row for that plan (counted in ``dropped``).

Each sample is *planned* once (:mod:`pipeline.language.planner`) and *rendered* in every language of the
mix (:mod:`pipeline.language.render`): the en and zh rows with the same key ask about the same boxes.
Templates are drawn only for targets they fit (English grammar from the glossary).  Randomness comes only
from the ``rng`` argument, by the one draw plan documented in :mod:`pipeline.language.planner`.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.core.types import Region
from pipeline.language.planner import Draws, Planner
from pipeline.language.render import KEY_PREFIX, Renderer
from pipeline.language.slices import AMBIGUOUS_IOU, SliceView
from pipeline.language.voice import R2T_ANSWER_STYLES, SYSTEM_PROMPT_MODES, Language

__all__ = [
    "AMBIGUOUS_IOU", "R2T_ANSWER_STYLES", "SYSTEM_PROMPT_MODES", "Generated", "Language", "SliceContext", "TaskMix",
    "generate",
]  # fmt: skip


@dataclass
class SliceContext:
    """What the builder knows about one display slice."""

    modality: str
    body_region: str | None
    axis: str
    width: int
    height: int
    regions: list[Region]
    candidate_absent_terms: list[str] = field(default_factory=list)  # terms the source annotates, not on this slice
    # lesion/finding terms the source annotates exhaustively (card ``exhaustive_findings``): only these may be
    # asked for as absent; True: every finding of the source, False: none
    exhaustive_findings: bool | Collection[str] = False
    # report-grounded sources: term -> lang -> the report's sentence(s) about that region on this slice
    report: dict[str, dict[str, str]] = field(default_factory=dict)


@dataclass
class TaskMix:
    """How many samples to make per slice, and how (from the release config)."""

    tasks: dict[str, float]  # task -> samples per slice per language; the fractional part is a probability
    langs: list[str]
    negative_ratio: float = 0.05
    max_regions_per_sample: int = 8
    # none: no prompt in the row (InternVL's and MedRegA's loaders; the prompt goes in the meta file's
    # base_prompt); inline: "<image>\n" + prompt + " " + question; turn: a first {"from": "system"} turn
    system_prompt: str = "none"
    region_to_text_answer: str = "name"  # name: the display name alone; sentence: a sentence (own prompt)
    # grounded reports of slices with report sentences: report (the report's sentences), template, or both
    grounded_text: str = "report"


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
    system_id: str | None = None  # the system prompt written in the row (None with system_prompt "none")
    text_source: str = "template"  # grounded_report: "report" when the lines are the report's own sentences


def conversation(mode: str, system: str, question: str, answer: str) -> list[dict[str, str]]:
    """The turns of one row.  Every layout starts the first human turn with ``<image>\\n`` (InternVL's
    ``multi_modal_get_item`` adds one when it is missing); ``inline`` puts the prompt after it, joined to
    the question by one space, exactly as MedRegA's training fork rebuilds the turn from ``base_prompt``."""
    if mode == "turn":
        return [
            {"from": "system", "value": system},
            {"from": "human", "value": "<image>\n" + question},
            {"from": "gpt", "value": answer},
        ]
    prompt = system + " " if mode == "inline" else ""
    return [{"from": "human", "value": "<image>\n" + prompt + question}, {"from": "gpt", "value": answer}]


def _variants(task: str, planner: Planner, ctx: SliceContext, mix: TaskMix) -> list[tuple[str, Any]]:
    """(text source, plan function) of a task: grounded reports of a slice with report sentences are report
    rows, template rows or both (``mix.grounded_text``); everything else is template text."""
    if task != "grounded_report" or not ctx.report or mix.grounded_text == "template":
        return [("template", getattr(planner, task))]
    report = ("report", planner.report_grounded)
    return [report, ("template", planner.grounded_report)] if mix.grounded_text == "both" else [report]


def generate(
    ctx: SliceContext,
    mix: TaskMix,
    rng: np.random.Generator,
    language: Language | None = None,
    dropped: dict[str, int] | None = None,
) -> list[Generated]:
    """All samples for one display slice, in a deterministic order (task, sample index, language).

    ``mix.tasks[task]`` samples are made per language: the integer part always, one more with the
    fractional part as probability.  A task that cannot be made on this slice (no usable region) is
    skipped.  ``language``: the language data to use (default: the shipped data, :meth:`Language.load`).
    Raises ``KeyError`` for a region term that is not in the glossary, ``ValueError`` for an unknown task,
    language, system prompt mode or answer style.  ``dropped`` (when given) counts the rows not made, by
    reason (``row:report_untranslated:<lang>``: a report sentence without text in that language).
    """
    lang_data = language or Language.load()
    rates = lang_data.rates(mix)
    sl = SliceView(ctx, lang_data)
    draws = Draws(rng)
    planner = Planner(sl, draws, mix.max_regions_per_sample, mix.negative_ratio)
    sentence = mix.region_to_text_answer == "sentence"
    renderers = [
        Renderer(sl, lang_data.voice(ctx.modality, ctx.body_region, lang), draws, sentence) for lang in mix.langs
    ]
    out: list[Generated] = []
    mode = mix.system_prompt
    for task, rate in rates:
        n = int(rate)
        if draws.chance(rate - n):  # one number per task, also for a whole rate (then never more)
            n += 1
        style = "sentence" if sentence and task == "region_to_text" else "default"
        # per language: the renderer method, the language and the system prompt (id, text)
        voices = [(getattr(r, task), r.voice.lang, *r.voice.system(task, style)) for r in renderers]
        for source, plan_one in _variants(task, planner, ctx, mix):
            prefix = "grr." if source == "report" else ""
            for i in range(n):
                plan = plan_one()
                if plan is None:
                    continue
                key = (prefix + plan.subtask + "." if prefix else KEY_PREFIX[plan.subtask]) + str(i)
                for render, lang, sys_id, sys_text in voices:
                    got = render(plan)
                    if got is None:  # a report sentence without text in this language
                        if dropped is not None:
                            reason = f"row:report_untranslated:{lang}"
                            dropped[reason] = dropped.get(reason, 0) + 1
                        continue
                    question, answer, ids = got
                    turns = conversation(mode, sys_text, question, answer)
                    system_id = None if mode == "none" else sys_id
                    out.append(Generated(task, plan.subtask, lang, ids[0], turns, plan.regions[:], key, ids, system_id,
                                         source))
    return out
