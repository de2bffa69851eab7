"""Contract of the instruction template banks (``pipeline/language/data/templates/<task>.<lang>.yaml``).

* :data:`SLOTS` -- task -> slot -> (required, optional) placeholders.
* :data:`TRAITS` -- what a template may declare it ``fits`` (per slot): the generator draws a template
  only for targets it fits (``"Where is {the_ref}?"`` fits a singular target, ``"Find every {ref}"`` a
  countable one whose instances are several or unknown).  :data:`REACHABLE` lists the trait combinations
  a target can have; every one must be covered by some template of the slot.
* :class:`TemplateBankSpec` -- one bank, validated as a whole (placeholders, punctuation, determiners,
  ``fits``, coverage, system prompts).

See docs/language.md ("Template banks") for the file format and the placeholder table.
"""

from __future__ import annotations

import re
import string
from itertools import product
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

TaskName = Literal["region_to_text", "text_to_region", "grounded_report"]
TASK_ABBR: dict[str, str] = {"region_to_text": "r2t", "text_to_region": "t2r", "grounded_report": "grg"}

#: Placeholders every slot may use (context of the image).
CONTEXT_FIELDS = frozenset({"image", "modality", "body_region"})
#: The term as plain text: bare, capitalised, and with its definite article when it takes one.
NAME_FIELDS = frozenset({"term", "Term", "the_term", "The_term"})
#: The term as the subject of a report sentence ("the right kidney", "atelectasis", "a polyp", "two polyps").
SUBJECT_FIELDS = frozenset({"subject", "Subject"})
#: One term in ``<ref>`` tags: bare (after a quantifier: "every {ref}") or with its article.
REF_FIELDS = frozenset({"ref", "the_ref", "The_ref"})
_LINE = CONTEXT_FIELDS | NAME_FIELDS | SUBJECT_FIELDS | {"position", "size"}

#: task -> slot -> (required placeholders, optional placeholders).  A slot whose name starts with
#: ``question`` is a question template (counted for the >= 50 rule), the others are answer templates.
SLOTS: dict[str, dict[str, tuple[frozenset[str], frozenset[str]]]] = {
    "region_to_text": {
        "question_single": (frozenset({"box"}), CONTEXT_FIELDS),
        "question_multi": (frozenset({"boxes"}), CONTEXT_FIELDS | {"n"}),
        "answer_single": (frozenset({"term"}), frozenset()),  # the display name alone (MedRegA's references)
        "answer_sentence": (frozenset(), CONTEXT_FIELDS | NAME_FIELDS),  # only with answers: sentence
        "answer_multi": (frozenset({"grounded"}), CONTEXT_FIELDS | {"n"}),
    },
    "text_to_region": {
        "question_single": (frozenset(), CONTEXT_FIELDS | REF_FIELDS),  # also asks for absent targets
        "question_multi": (frozenset({"refs"}), CONTEXT_FIELDS),
        "answer_grounded": (frozenset({"grounded"}), CONTEXT_FIELDS),
        "answer_absent": (frozenset(), CONTEXT_FIELDS | {"term", "Term"}),  # no article: nothing presupposed
    },
    "grounded_report": {
        "question_open": (frozenset(), CONTEXT_FIELDS),
        "question_targeted": (frozenset({"refs"}), CONTEXT_FIELDS),
        "answer_anatomy": (frozenset(), _LINE),
        "answer_finding": (frozenset(), _LINE),
    },
}
#: Slots whose templates must name the term with one of these placeholders.
NAME_REQUIRED: dict[tuple[str, str], set[str]] = {
    ("region_to_text", "answer_single"): {"term"},
    ("region_to_text", "answer_sentence"): set(NAME_FIELDS),
    ("text_to_region", "question_single"): set(REF_FIELDS),
    ("text_to_region", "answer_absent"): {"term", "Term"},
}
#: Placeholders that may appear at most once in a template (counted together within a group).
SINGLE_USE: tuple[frozenset[str], ...] = (
    frozenset({"box"}), frozenset({"boxes"}), REF_FIELDS, frozenset({"refs"}), frozenset({"grounded"}),
)  # fmt: skip

#: (task, slot) -> trait -> possible values.  The generator computes the traits of each target:
#:   kind       anatomy | finding (lesion/finding family) | device | mixed (several boxes of both)
#:   number     grammatical number of the phrase the template refers to (a list of terms is plural; a
#:              countable finding with several boxes is "the polyp regions": plural)
#:   instances  one (an organ, a mass noun, one lesion) | several (a countable finding with several
#:              boxes) | any (an absent countable finding: how many is unknown, ask for "every"/"any")
#:   count      countable | mass
#:   terms      one | several terms in the answer;  boxes  one | several boxes in the answer
TRAITS: dict[tuple[str, str], dict[str, tuple[str, ...]]] = {
    ("region_to_text", "question_single"): {"kind": ("anatomy", "finding", "device")},
    ("region_to_text", "question_multi"): {"kind": ("anatomy", "finding", "device", "mixed")},
    ("region_to_text", "answer_sentence"): {"number": ("singular", "plural")},
    ("region_to_text", "answer_multi"): {"terms": ("one", "several")},
    ("text_to_region", "question_single"): {"number": ("singular", "plural"), "instances": ("one", "several", "any")},
    ("text_to_region", "answer_grounded"): {"terms": ("one", "several"), "boxes": ("one", "several")},
    ("text_to_region", "answer_absent"): {"number": ("singular", "plural")},
    ("grounded_report", "question_targeted"): {"number": ("singular", "plural")},
    ("grounded_report", "answer_anatomy"): {"number": ("singular", "plural")},
    ("grounded_report", "answer_finding"): {"number": ("singular", "plural"), "count": ("countable", "mass")},
}
#: (task, slot) -> the trait combinations a target can have (each must be fitted by a template).  A
#: plural-number term is countable; several instances are always said in the plural.
REACHABLE: dict[tuple[str, str], tuple[dict[str, str], ...]] = {
    key: tuple(dict(zip(traits, combo, strict=True)) for combo in product(*traits.values()))
    for key, traits in TRAITS.items()
}
REACHABLE[("text_to_region", "question_single")] = (
    {"number": "singular", "instances": "one"},
    {"number": "plural", "instances": "one"},
    {"number": "plural", "instances": "several"},
    {"number": "singular", "instances": "any"},
)
REACHABLE[("text_to_region", "answer_grounded")] = (
    {"terms": "one", "boxes": "one"},
    {"terms": "one", "boxes": "several"},
    {"terms": "several", "boxes": "several"},
)
REACHABLE[("grounded_report", "answer_finding")] = (
    {"number": "singular", "count": "countable"},
    {"number": "singular", "count": "mass"},
    {"number": "plural", "count": "countable"},
)

#: How system prompts spell the box format (allowed verbatim in every language).
BOX_FORMAT = "[x1, y1, x2, y2]"

_PAIRS = {"(": ")", "[": "]", "{": "}", "（": "）", "【": "】", "「": "」", "《": "》", "“": "”"}
_ASCII_PUNCT_ZH = set(",.?!:;()")
_FULLWIDTH_PUNCT = set("，。？！：；（）、【】「」《》“”")
_CJK = re.compile(r"[\u4e00-\u9fff]")
_FORMATTER = string.Formatter()
#: An English determiner written before a name placeholder: the placeholders carry their own article.
#: ``{ref}`` in English: only after a quantifier ("every {ref}"); a bare noun needs its article ({the_ref})
_BARE_REF = re.compile(r"(?<!every )(?<!each )(?<!any )(?<!all )(?<!instances of )\{ref\}")
_LITERAL_DETERMINER = re.compile(r"\b(?:the|a|an)\s+\{(?:term|Term|the_term|ref|the_ref|subject)\}", re.IGNORECASE)


def template_fields(text: str) -> list[str]:
    """Placeholder names used by a template (raises ValueError on malformed braces)."""
    out = []
    for _lit, field, spec, conv in _FORMATTER.parse(text):
        if field is None:
            continue
        if spec or conv:
            raise ValueError(f"placeholder {{{field}}} must not carry a format spec or conversion")
        if not field.isidentifier():
            raise ValueError(f"placeholder {{{field}}} is not a plain name")
        out.append(field)
    return out


def check_balanced(text: str) -> None:
    """Brackets (ASCII and full-width) must pair up and nest."""
    closers = {v: k for k, v in _PAIRS.items()}
    stack: list[str] = []
    for ch in text:
        if ch in _PAIRS:
            stack.append(ch)
        elif ch in closers:
            if not stack or stack[-1] != closers[ch]:
                raise ValueError(f"unbalanced {ch!r}")
            stack.pop()
    if stack:
        raise ValueError(f"unclosed {stack[-1]!r}")


def check_language(text: str, lang: str) -> None:
    """Chinese templates use full-width punctuation; English ones no CJK and no full-width marks."""
    # look only at the literal text, not at the placeholders
    literal = "".join(lit for lit, _f, _s, _c in _FORMATTER.parse(text))
    if lang == "zh":
        if literal.strip() and not _CJK.search(literal):
            raise ValueError("a zh template must contain Chinese text (or be placeholders only)")
        bad = _ASCII_PUNCT_ZH.intersection(literal)
        if bad:
            raise ValueError(f"zh template uses ASCII punctuation {''.join(sorted(bad))!r}: use full-width marks")
    elif lang == "en":
        if _CJK.search(literal):
            raise ValueError("an en template must not contain Chinese text")
        bad = _FULLWIDTH_PUNCT.intersection(literal)
        if bad:
            raise ValueError(f"en template uses full-width punctuation {''.join(sorted(bad))!r}")
        if _LITERAL_DETERMINER.search(text):
            raise ValueError("write {the_term}/{the_ref} (or {subject}) instead of a literal article before a name")
        if _BARE_REF.search(text):
            raise ValueError("a bare {ref} needs a quantifier before it (every, each, any, all, instances of): "
                             "otherwise write {the_ref}")


class TemplateSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^(r2t|t2r|grg)\.[a-z]{2}\.[a-z]\d{3}$")
    slot: str
    text: str = Field(min_length=1)
    # trait -> values this template fits (TRAITS of its slot); a trait left out fits every value
    fits: dict[str, list[str]] = Field(default_factory=dict)

    @field_validator("fits", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {k: [x] if isinstance(x, str) else x for k, x in v.items()}
        return v

    def fits_combo(self, combo: dict[str, str]) -> bool:
        return all(value in self.fits.get(trait, (value,)) for trait, value in combo.items())


class SystemPromptSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^(r2t|t2r|grg)\.[a-z]{2}\.s\d{3}$")
    text: str = Field(min_length=1)
    # default: the task prompt (the first one is the bank's canonical prompt, the InternVL meta file's
    # base_prompt); sentence: region->text with whole-sentence answers (tasks.region_to_text_answer)
    style: Literal["default", "sentence"] = "default"


def _check_system(task: str, system: list[SystemPromptSpec], prefix: str, lang: str) -> list[str]:
    errors: list[str] = []
    if system and system[0].style != "default":
        errors.append(f"{system[0].id}: the first system prompt is the canonical one and must have style default")
    styles = [sp.style for sp in system]
    for style in set(styles):
        if styles.count(style) > 1:
            errors.append(f"system prompts: more than one with style {style!r}")
    if "sentence" in styles and task != "region_to_text":
        errors.append("system prompts: style sentence exists only for region_to_text")
    for sp in system:
        if not sp.id.startswith(prefix):
            errors.append(f"{sp.id}: system prompt id must start with {prefix!r}")
        try:
            if "{" in sp.text or "}" in sp.text or "<" in sp.text or ">" in sp.text:
                raise ValueError("system prompts are fixed text: no placeholders and no tags")
            check_balanced(sp.text)
            # the box format "[x1, y1, x2, y2]" is quoted verbatim in every language
            check_language(sp.text.replace(BOX_FORMAT, ""), lang)
        except ValueError as exc:
            errors.append(f"{sp.id}: {exc}")
    return errors


def _check_fits(task: str, t: TemplateSpec, fields: list[str]) -> None:
    traits = TRAITS.get((task, t.slot), {})
    for trait, values in t.fits.items():
        if trait not in traits:
            raise ValueError(f"fits: {trait!r} is not a trait of this slot (traits: {sorted(traits) or 'none'})")
        bad = [v for v in values if v not in traits[trait]]
        if bad or not values:
            raise ValueError(f"fits.{trait}: {bad or values} not among {list(traits[trait])}")
    fits_absent = "instances" in traits and "any" in t.fits.get("instances", ("any",))  # left out: fits any
    if fits_absent and {"the_ref", "The_ref"} & set(fields):
        raise ValueError("a template fitting instances 'any' (an absent finding) must not presuppose it: no {the_ref}")


def _check_placeholders(task: str, t: TemplateSpec) -> list[str]:
    required, optional = SLOTS[task][t.slot]
    fields = template_fields(t.text)
    unknown = set(fields) - required - optional
    if unknown:
        raise ValueError(f"placeholders {sorted(unknown)} not allowed here (allowed: {sorted(required | optional)})")
    missing = required - set(fields)
    if missing:
        raise ValueError(f"missing required placeholders {sorted(missing)}")
    need_one = NAME_REQUIRED.get((task, t.slot))
    if need_one and not need_one.intersection(fields):
        raise ValueError(f"must name the term with one of {sorted(need_one)}")
    for group in SINGLE_USE:
        if sum(fields.count(f) for f in group) > 1:
            raise ValueError(f"{{{'}/{'.join(sorted(group))}}} may appear only once")
    if (task, t.slot) == ("region_to_text", "answer_single") and t.text != "{term}":
        raise ValueError("the region->text answer is the display name alone: the text must be {term}")
    return fields


def _check_template(task: str, lang: str, t: TemplateSpec) -> None:
    fields = _check_placeholders(task, t)
    if "<" in t.text or ">" in t.text:
        raise ValueError("templates carry no literal tags: <ref>/<box> come from placeholders")
    check_balanced(t.text)
    check_language(t.text, lang)
    _check_fits(task, t, fields)


def _check_coverage(task: str, templates: list[TemplateSpec]) -> list[str]:
    """Every reachable trait combination of every slot has a template (also without {body_region})."""
    errors = []
    for slot in SLOTS[task]:
        in_slot = [t for t in templates if t.slot == slot]
        for combo in REACHABLE.get((task, slot), ({},)):
            fitting = [t for t in in_slot if t.fits_combo(combo)]
            plain = [t for t in fitting if "body_region" not in template_fields(t.text)]
            if not plain:
                what = ", ".join(f"{k}={v}" for k, v in combo.items()) or "any target"
                errors.append(f"slot {slot}: no template (without {{body_region}}) fits {what}")
    return errors


class TemplateBankSpec(BaseModel):
    """``data/templates/<task>.<lang>.yaml``."""

    model_config = ConfigDict(extra="forbid")

    task: TaskName
    lang: str = Field(pattern=r"^[a-z]{2}$")
    system: list[SystemPromptSpec] = Field(min_length=1)
    templates: list[TemplateSpec]

    @model_validator(mode="after")
    def _validate(self) -> TemplateBankSpec:
        prefix = f"{TASK_ABBR[self.task]}.{self.lang}."
        slots = SLOTS[self.task]
        errors = _check_system(self.task, self.system, prefix, self.lang)
        ids = {sp.id for sp in self.system}
        if len(ids) < len(self.system):
            errors.append("system prompts: duplicate id")
        texts: dict[tuple[str, str], str] = {}
        for t in self.templates:
            where = f"{t.id} [{t.slot}]"
            if not t.id.startswith(prefix):
                errors.append(f"{where}: id must start with {prefix!r}")
            if t.id in ids:
                errors.append(f"{where}: duplicate id")
            ids.add(t.id)
            if t.slot not in slots:
                errors.append(f"{where}: unknown slot (known: {sorted(slots)})")
                continue
            letter = "q" if t.slot.startswith("question") else "a"
            if t.id[len(prefix)] != letter:
                what = "question" if letter == "q" else "answer"
                errors.append(f"{where}: {what} template ids use the letter {letter!r}")
            if (t.slot, t.text) in texts:
                errors.append(f"{where}: same text as {texts[(t.slot, t.text)]}")
            texts[(t.slot, t.text)] = t.id
            try:
                _check_template(self.task, self.lang, t)
            except ValueError as exc:
                errors.append(f"{where}: {exc}")
        if not errors:
            errors = _check_coverage(self.task, self.templates)
        if errors:
            raise ValueError(f"template bank {self.task}.{self.lang} is invalid:\n  " + "\n  ".join(errors))
        return self
