"""Contracts for the controlled vocabulary and the instruction templates (``pipeline/language/data``).

* :class:`TermSpec` / :class:`GlossarySpec` -- the bilingual glossary (``data/glossary/*.yaml``), keyed by
  canonical term id.  Cross-term rules (mirrors, parents, unique display names) are checked on the
  merged glossary by :class:`GlossarySpec`.
* :class:`LabelMapSpec` -- a shipped ``id: term`` label map (``data/<name>.yaml``).
* :class:`VocabSpec` -- modality / body-region / position / size words and list punctuation per language
  (``data/vocab/*.yaml``).
* :class:`TemplateSpec` / :class:`TemplateBankSpec` -- one template bank per task and language
  (``data/templates/<task>.<lang>.yaml``).  :data:`SLOTS` says which placeholders each slot may use and
  which it must use.

See docs/language.md for the file formats and how to add a term, a template or a language.
"""

from __future__ import annotations

import re
import string
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    field_validator,
    model_validator,
)

# ----------------------------------------------------------------------------------------- glossary

Category = Literal[
    "organ",
    "gland",
    "bone",
    "cartilage",
    "vessel",
    "muscle",
    "nerve",
    "cavity",
    "region",
    "tissue",
    "structure",
    "lesion",
    "finding",
    "device",
]

#: Category -> family.  ``Glossary.same_region_terms`` returns terms of the same family (and body region):
#: the plausible confusions of a term, used for hard negatives and by judges.
CATEGORY_FAMILY: dict[str, str] = {
    "organ": "soft_anatomy",
    "gland": "soft_anatomy",
    "cavity": "soft_anatomy",
    "region": "soft_anatomy",
    "tissue": "soft_anatomy",
    "nerve": "soft_anatomy",
    "structure": "soft_anatomy",
    "bone": "skeleton",
    "cartilage": "skeleton",
    "vessel": "vessel",
    "muscle": "muscle",
    "lesion": "abnormality",
    "finding": "abnormality",
    "device": "device",
}

BodyRegion = Literal[
    "head",
    "neck",
    "thorax",
    "abdomen",
    "pelvis",
    "spine",
    "limb",
    "whole_body",
    "eye",
    "skin",
    "colon",
    "breast",
]

#: Term ids: snake_case; upper-case letters are allowed inside a part (``vertebrae_T12``) so that the
#: TotalSegmentator class names can be term ids verbatim.
TERM_ID_RE = re.compile(r"^[a-z][a-z0-9]*(_[A-Za-z0-9]+)*$")
#: Characters that would break the grounding syntax if they appeared in a name.
FORBIDDEN_NAME_CHARS = set("[]<>")
#: Extra display languages: ``xx`` (display name) and ``synonyms_xx`` keys (see docs/language.md).
_EXTRA_LANG_KEY = re.compile(r"^(synonyms_)?[a-z]{2}$")


def _check_name(name: str, where: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{where}: empty name")
    if name != name.strip() or "  " in name:
        raise ValueError(f"{where}: {name!r} has leading/trailing or double spaces")
    bad = FORBIDDEN_NAME_CHARS.intersection(name)
    if bad:
        raise ValueError(f"{where}: {name!r} contains {''.join(sorted(bad))!r}, which the grounding syntax reserves")
    return name


class TermSpec(BaseModel):
    """One glossary entry.  ``en``/``zh`` are the display names written inside ``<ref>``."""

    model_config = ConfigDict(extra="allow", frozen=True)

    en: str
    zh: str
    synonyms_en: list[str] = Field(default_factory=list)
    synonyms_zh: list[str] = Field(default_factory=list)
    category: Category
    laterality: Literal["left", "right"] | None = None
    mirror: str | None = None  # term id of the other side
    parent: str | None = None  # term id of the containing / more general term
    body_region: list[BodyRegion] = Field(min_length=1)
    codes: dict[str, str] = Field(default_factory=dict)  # coding system -> code (SNOMED, SRT, ...)
    aliases: list[str] = Field(default_factory=list)  # dataset label spellings that mean this term

    @field_validator("body_region", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("codes", mode="before")
    @classmethod
    def _codes_str(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {str(k): str(c) for k, c in v.items()}
        return v

    @model_validator(mode="after")
    def _names(self) -> TermSpec:
        for lang, name in self.display_names().items():
            _check_name(name, f"display name ({lang})")
        for lang, names in self.synonym_lists().items():
            for n in names:
                _check_name(n, f"synonym ({lang})")
        for a in self.aliases:
            _check_name(a, "alias")
        for key in (self.model_extra or {}):
            if not _EXTRA_LANG_KEY.match(key):
                raise ValueError(f"unknown field {key!r} (extra fields must be a language code 'xx' or 'synonyms_xx')")
        if self.mirror is not None and self.laterality is None:
            raise ValueError("a term with a mirror needs a laterality")
        return self

    def display_names(self) -> dict[str, str]:
        out = {"en": self.en, "zh": self.zh}
        for k, v in (self.model_extra or {}).items():
            if not k.startswith("synonyms_"):
                out[k] = v
        return out

    def synonym_lists(self) -> dict[str, list[str]]:
        out = {"en": list(self.synonyms_en), "zh": list(self.synonyms_zh)}
        for k, v in (self.model_extra or {}).items():
            if k.startswith("synonyms_"):
                out[k[len("synonyms_") :]] = list(v or [])
        return out


class GlossaryFileSpec(RootModel[dict[str, TermSpec]]):
    """One ``data/glossary/*.yaml`` file: ``term_id: TermSpec``."""


class GlossarySpec(BaseModel):
    """The merged glossary with its cross-term rules."""

    model_config = ConfigDict(extra="forbid")

    terms: dict[str, TermSpec]

    @model_validator(mode="after")
    def _cross_rules(self) -> GlossarySpec:
        errors: list[str] = []
        terms = self.terms
        seen_display: dict[tuple[str, str], str] = {}
        for tid, t in terms.items():
            if not TERM_ID_RE.match(tid):
                errors.append(f"{tid}: term id must be snake_case (e.g. kidney_right, vertebrae_T12)")
            if t.parent is not None:
                if t.parent not in terms:
                    errors.append(f"{tid}: parent {t.parent!r} is not a glossary term")
                elif t.parent == tid:
                    errors.append(f"{tid}: is its own parent")
            if t.mirror is not None:
                m = terms.get(t.mirror)
                if m is None:
                    errors.append(f"{tid}: mirror {t.mirror!r} is not a glossary term")
                else:
                    if m.mirror != tid:
                        errors.append(f"{tid}: mirror {t.mirror!r} does not point back (its mirror is {m.mirror!r})")
                    if m.laterality is None or m.laterality == t.laterality:
                        errors.append(
                            f"{tid}: mirror {t.mirror!r} must have the opposite laterality "
                            f"({t.laterality} vs {m.laterality})"
                        )
            for lang, name in t.display_names().items():
                key = (lang, name.casefold())
                other = seen_display.get(key)
                if other is not None:
                    errors.append(f"{tid}: {lang} display name {name!r} is already used by {other!r}")
                else:
                    seen_display[key] = tid
        # parent chains must end (no cycles)
        for tid in terms:
            seen = {tid}
            p = terms[tid].parent
            while p is not None and p in terms:
                if p in seen:
                    errors.append(f"{tid}: parent chain has a cycle through {p!r}")
                    break
                seen.add(p)
                p = terms[p].parent
        if errors:
            raise ValueError("glossary is inconsistent:\n  " + "\n  ".join(errors))
        return self


class LabelMapSpec(RootModel[dict[int, str]]):
    """A shipped label map: dataset label id -> canonical term id."""

    @field_validator("root")
    @classmethod
    def _ids(cls, v: dict[int, str]) -> dict[int, str]:
        for k, t in v.items():
            if k <= 0:
                raise ValueError(f"label id {k} must be positive (0 is background)")
            if not TERM_ID_RE.match(t):
                raise ValueError(f"label {k}: {t!r} is not a term id")
        return v


# ----------------------------------------------------------------------------------------- vocab


class Words(BaseModel):
    """A word in every language: ``{en: ..., zh: ...}`` (extra languages as extra keys)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    en: str
    zh: str

    def get(self, lang: str) -> str:
        if lang == "en":
            return self.en
        if lang == "zh":
            return self.zh
        v = (self.model_extra or {}).get(lang)
        if v is None:
            raise KeyError(f"no {lang!r} wording for {self.en!r}")
        return v


class ModalityWords(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Words  # {modality}: "CT" / "计算机断层扫描（CT）"
    image: Words  # {image}: "CT image" / "CT图像"
    aliases: list[str] = Field(default_factory=list)  # spellings used by cards (ct, XR, CR, DX, ...)


class LangPunctuation(BaseModel):
    """How lists and grounded items are joined in one language."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    list_sep: str  # between names in a list: ", " / "、"
    last_sep: str  # before the last name: " and " / "和"
    item_sep: str  # between grounded items on one line: ", " / "，"
    colon: str  # after a grounded item in a report line: ": " / "："
    line_sep: str = "\n"  # between report lines


class VocabSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    modalities: dict[str, ModalityWords]
    body_regions: dict[str, Words]
    body_region_aliases: dict[str, str] = Field(default_factory=dict)  # card spelling -> body region key
    positions: dict[str, Words]  # 9 keys: upper_left ... lower_right (image-relative)
    sizes: dict[str, Words]  # small / moderate / large
    punctuation: dict[str, LangPunctuation]

    @model_validator(mode="after")
    def _complete(self) -> VocabSpec:
        need_pos = {f"{v}_{h}" for v in ("upper", "middle", "lower") for h in ("left", "center", "right")}
        if set(self.positions) != need_pos:
            raise ValueError(f"positions must have exactly the keys {sorted(need_pos)}")
        if set(self.sizes) != {"small", "moderate", "large"}:
            raise ValueError("sizes must have exactly the keys small, moderate, large")
        for alias, key in self.body_region_aliases.items():
            if key not in self.body_regions:
                raise ValueError(f"body_region_aliases: {alias!r} -> {key!r} is not a body region")
        return self


# ----------------------------------------------------------------------------------------- templates

TaskName = Literal["region_to_text", "text_to_region", "grounded_report"]
TASK_ABBR: dict[str, str] = {"region_to_text": "r2t", "text_to_region": "t2r", "grounded_report": "grg"}

#: Placeholders every slot may use (context of the image).
CONTEXT_FIELDS = frozenset({"image", "modality", "body_region"})

#: task -> slot -> (required placeholders, optional placeholders).  A slot whose name starts with
#: ``question`` is a question template (counted for the >= 50 rule), the others are answer templates.
#:
#: Placeholders (docs/language.md has the full table):
#:   {image} {modality} {body_region}  context words in the row's language
#:   {box}      one box list ``<box>[[x1, y1, x2, y2]]</box>``
#:   {boxes}    several ``<box>[[...]]</box>`` joined with the language's list separator
#:   {n}        number of boxes asked about
#:   {term}     glossary display name (plain text, no tags); {Term} the same with a capital first letter
#:   {ref}      ``<ref>name</ref>``; {refs} several of them joined as a list
#:   {grounded} ``<ref>name</ref><box>[[...], ...]</box>`` items joined with the item separator
#:   {position} image-relative position words; {size} small/moderate/large extent words
SLOTS: dict[str, dict[str, tuple[frozenset[str], frozenset[str]]]] = {
    "region_to_text": {
        "question_single": (frozenset({"box"}), CONTEXT_FIELDS),
        "question_multi": (frozenset({"boxes"}), CONTEXT_FIELDS | {"n"}),
        "answer_single": (frozenset(), CONTEXT_FIELDS | {"term", "Term"}),
        "answer_multi": (frozenset({"grounded"}), CONTEXT_FIELDS | {"n"}),
    },
    "text_to_region": {
        "question_single": (frozenset({"ref"}), CONTEXT_FIELDS),
        "question_multi": (frozenset({"refs"}), CONTEXT_FIELDS),
        "answer_grounded": (frozenset({"grounded"}), CONTEXT_FIELDS),
        "answer_absent": (frozenset(), CONTEXT_FIELDS | {"term", "Term"}),
    },
    "grounded_report": {
        "question_open": (frozenset(), CONTEXT_FIELDS),
        "question_targeted": (frozenset({"refs"}), CONTEXT_FIELDS),
        "answer_anatomy": (frozenset(), CONTEXT_FIELDS | {"term", "Term", "position", "size"}),
        "answer_finding": (frozenset(), CONTEXT_FIELDS | {"term", "Term", "position", "size"}),
    },
}
#: Answer slots that must name the term (one of these placeholders).
NAME_REQUIRED = {
    ("region_to_text", "answer_single"): {"term", "Term"},
    ("text_to_region", "answer_absent"): {"term", "Term"},
}

#: How system prompts spell the box format (allowed verbatim in every language).
BOX_FORMAT = "[x1, y1, x2, y2]"

_PAIRS = {"(": ")", "[": "]", "{": "}", "（": "）", "【": "】", "「": "」", "《": "》", "“": "”"}
_ASCII_PUNCT_ZH = set(",.?!:;()")
_FULLWIDTH_PUNCT = set("，。？！：；（）、【】「」《》“”")
_CJK = re.compile(r"[\u4e00-\u9fff]")
_FORMATTER = string.Formatter()


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


class TemplateSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^(r2t|t2r|grg)\.[a-z]{2}\.[a-z]\d{3}$")
    slot: str
    text: str = Field(min_length=1)


class SystemPromptSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^(r2t|t2r|grg)\.[a-z]{2}\.s\d{3}$")
    text: str = Field(min_length=1)


class TemplateBankSpec(BaseModel):
    """``data/templates/<task>.<lang>.yaml``."""

    model_config = ConfigDict(extra="forbid")

    task: TaskName
    lang: str = Field(pattern=r"^[a-z]{2}$")
    system: list[SystemPromptSpec] = Field(min_length=1)
    templates: list[TemplateSpec]

    @model_validator(mode="after")
    def _validate(self) -> TemplateBankSpec:
        errors: list[str] = []
        prefix = f"{TASK_ABBR[self.task]}.{self.lang}."
        slots = SLOTS[self.task]
        ids: set[str] = set()
        texts: dict[tuple[str, str], str] = {}
        for sp in self.system:
            if not sp.id.startswith(prefix):
                errors.append(f"{sp.id}: system prompt id must start with {prefix!r}")
            if sp.id in ids:
                errors.append(f"{sp.id}: duplicate id")
            ids.add(sp.id)
            try:
                if "{" in sp.text or "}" in sp.text or "<" in sp.text or ">" in sp.text:
                    raise ValueError("system prompts are fixed text: no placeholders and no tags")
                check_balanced(sp.text)
                # the box format "[x1, y1, x2, y2]" is quoted verbatim in every language
                check_language(sp.text.replace(BOX_FORMAT, ""), self.lang)
            except ValueError as exc:
                errors.append(f"{sp.id}: {exc}")
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
            kind = "q" if t.slot.startswith("question") else "a"
            if t.id[len(prefix)] != kind:
                errors.append(f"{where}: {'question' if kind == 'q' else 'answer'} template ids use the letter {kind!r}")
            key = (t.slot, t.text)
            if key in texts:
                errors.append(f"{where}: same text as {texts[key]}")
            texts[key] = t.id
            required, optional = slots[t.slot]
            try:
                fields = template_fields(t.text)
                unknown = set(fields) - required - optional
                if unknown:
                    raise ValueError(f"placeholders {sorted(unknown)} not allowed here (allowed: {sorted(required | optional)})")
                missing = required - set(fields)
                if missing:
                    raise ValueError(f"missing required placeholders {sorted(missing)}")
                need_one = NAME_REQUIRED.get((self.task, t.slot))
                if need_one and not need_one.intersection(fields):
                    raise ValueError(f"must name the term with one of {sorted(need_one)}")
                for f in ("box", "boxes", "ref", "refs", "grounded"):
                    if fields.count(f) > 1:
                        raise ValueError(f"{{{f}}} may appear only once")
                if "<" in t.text or ">" in t.text:
                    raise ValueError("templates carry no literal tags: <ref>/<box> come from placeholders")
                check_balanced(t.text)
                check_language(t.text, self.lang)
            except ValueError as exc:
                errors.append(f"{where}: {exc}")
        if errors:
            raise ValueError(f"template bank {self.task}.{self.lang} is invalid:\n  " + "\n  ".join(errors))
        return self
