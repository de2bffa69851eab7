"""Contracts for the controlled vocabulary and the instruction templates (``pipeline/language/data``).

* :class:`TermSpec` / :class:`GlossarySpec` -- the bilingual glossary (``data/glossary/*.yaml``), keyed by
  canonical term id.  Cross-term rules (mirrors, parents, unique display names) are checked on the
  merged glossary by :class:`GlossarySpec`.
* :class:`LabelMapSpec` -- a shipped ``id: term`` label map (``data/<name>.yaml``).
* :class:`VocabSpec` -- modality / body-region / position / size words and list punctuation per language
  (``data/vocab/*.yaml``).
* The template-bank contract (:class:`TemplateSpec`, :class:`TemplateBankSpec`, :data:`SLOTS`,
  :data:`TRAITS`) lives in :mod:`schemas.language_banks` and is re-exported here.

See docs/language.md for the file formats and how to add a term, a template or a language.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    field_validator,
    model_validator,
)

# the template-bank contract lives in schemas/language_banks.py; re-exported here for existing imports
from schemas.language_banks import (
    BOX_FORMAT,
    CONTEXT_FIELDS,
    NAME_REQUIRED,
    SLOTS,
    TASK_ABBR,
    TRAITS,
    SystemPromptSpec,
    TaskName,
    TemplateBankSpec,
    TemplateSpec,
    check_balanced,
    check_language,
    template_fields,
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
    # English grammar of the display name (docs/language.md, "Grammar"); the defaults fit a countable
    # singular noun such as "liver" or "polyp", so a term that says nothing gets sensible English.
    countable: bool = True  # False: a mass noun ("atelectasis"): no "a", no "every", no plural
    number: Literal["singular", "plural"] = "singular"  # of the display name ("costal cartilages": plural)
    # the definite article written before the name; None: "none" for mass nouns of the lesion/finding
    # family ("atelectasis is seen"), "the" otherwise ("the liver", "the left ventricular myocardium")
    article: Literal["the", "none"] | None = None
    plural_en: str | None = None  # plural for several instances of a countable term; None: regular English plural

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
        if not self.countable and self.number == "plural":
            raise ValueError("a mass noun (countable: false) has no plural: number must be singular")
        if self.plural_en is not None:
            if self.number == "plural" or not self.countable:
                raise ValueError("plural_en is only for countable singular terms")
            _check_name(self.plural_en, "plural_en")
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
            errors.extend(_mirror_errors(tid, t, terms))
            for lang, name in t.display_names().items():
                other = seen_display.setdefault((lang, name.casefold()), tid)
                if other != tid:
                    errors.append(f"{tid}: {lang} display name {name!r} is already used by {other!r}")
        errors.extend(_cycle_errors(terms))
        if errors:
            raise ValueError("glossary is inconsistent:\n  " + "\n  ".join(errors))
        return self


def _mirror_errors(tid: str, t: TermSpec, terms: dict[str, TermSpec]) -> list[str]:
    if t.mirror is None:
        return []
    m = terms.get(t.mirror)
    if m is None:
        return [f"{tid}: mirror {t.mirror!r} is not a glossary term"]
    out = []
    if m.mirror != tid:
        out.append(f"{tid}: mirror {t.mirror!r} does not point back (its mirror is {m.mirror!r})")
    if m.laterality is None or m.laterality == t.laterality:
        out.append(f"{tid}: mirror {t.mirror!r} must have the opposite laterality ({t.laterality} vs {m.laterality})")
    return out


def _cycle_errors(terms: dict[str, TermSpec]) -> list[str]:
    """Parent chains must end."""
    out = []
    for tid in terms:
        seen = {tid}
        p = terms[tid].parent
        while p is not None and p in terms:
            if p in seen:
                out.append(f"{tid}: parent chain has a cycle through {p!r}")
                break
            seen.add(p)
            p = terms[p].parent
    return out


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


class RegionImageWords(BaseModel):
    """A modality's words for one body region ("endoscopy" of the colon is a "colonoscopy")."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Words
    image: Words


class ModalityWords(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Words  # {modality}: "CT" / "计算机断层扫描（CT）"
    image: Words  # {image}: "CT image" / "CT图像"
    aliases: list[str] = Field(default_factory=list)  # spellings used by cards (ct, XR, CR, DX, ...)
    # False when the image word already says where it is ("fundus photograph", "dermoscopy image"):
    # templates that add {body_region} are then not drawn ("这张眼部眼底照片" would be doubled)
    body_region_words: bool = True
    by_region: dict[str, RegionImageWords] = Field(default_factory=dict)  # body region key -> words


class LangPunctuation(BaseModel):
    """How lists and grounded items are joined in one language."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    list_sep: str  # between names in a list: ", " / "、"
    last_sep: str  # before the last name: " and " / "和"
    item_sep: str  # between grounded items on one line: ", " / "、"
    colon: str  # after a grounded item in a report line: ": " / "："
    line_sep: str = "\n"  # between report lines


class PositionLists(BaseModel):
    """How the positions of a term with several boxes are said (``{parts}``: the part words joined as a list)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    several: Words  # "in the {parts} parts of the image" / "图像{parts}"
    both_sides: Words  # the boxes lie in the left and the right part of the middle band
    many: Words  # more than three different parts

    @model_validator(mode="after")
    def _parts(self) -> PositionLists:
        for lang, text in self.several.model_dump().items():
            if "{parts}" not in text:
                raise ValueError(f"position_lists.several ({lang}) must contain {{parts}}")
        return self


POSITION_KEYS = tuple(f"{v}_{h}" for v in ("upper", "middle", "lower") for h in ("left", "center", "right"))


class VocabSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    modalities: dict[str, ModalityWords]
    body_regions: dict[str, Words]
    body_region_aliases: dict[str, str] = Field(default_factory=dict)  # card spelling -> body region key
    # body region key -> the glossary body regions it covers (default: the key itself)
    body_region_parts: dict[str, list[BodyRegion]] = Field(default_factory=dict)
    positions: dict[str, Words]  # 9 keys upper_left ... lower_right: one box, with its preposition
    position_parts: dict[str, Words]  # the same 9 keys as list items ("upper left" / "左上部")
    position_lists: PositionLists
    sizes: dict[str, Words]  # small / moderate / large
    numbers: dict[str, list[str]]  # lang -> words for 0, 1, 2, ... (larger counts are written as digits)
    punctuation: dict[str, LangPunctuation]

    @model_validator(mode="after")
    def _complete(self) -> VocabSpec:
        for name, table in (("positions", self.positions), ("position_parts", self.position_parts)):
            if set(table) != set(POSITION_KEYS):
                raise ValueError(f"{name} must have exactly the keys {sorted(POSITION_KEYS)}")
        if set(self.sizes) != {"small", "moderate", "large"}:
            raise ValueError("sizes must have exactly the keys small, moderate, large")
        for alias, key in self.body_region_aliases.items():
            if key not in self.body_regions:
                raise ValueError(f"body_region_aliases: {alias!r} -> {key!r} is not a body region")
        for key in self.body_region_parts:
            if key not in self.body_regions:
                raise ValueError(f"body_region_parts: {key!r} is not a body region")
        for m, words in self.modalities.items():
            for key in words.by_region:
                if key not in self.body_regions:
                    raise ValueError(f"modalities.{m}.by_region: {key!r} is not a body region")
        for lang, counted in self.numbers.items():
            if len(counted) < 11:
                raise ValueError(f"numbers.{lang}: give the words for at least 0..10")
        return self


__all__ = [
    "BOX_FORMAT", "CATEGORY_FAMILY", "CONTEXT_FIELDS", "NAME_REQUIRED", "POSITION_KEYS", "SLOTS", "TASK_ABBR",
    "TRAITS", "GlossaryFileSpec", "GlossarySpec", "LabelMapSpec", "LangPunctuation", "ModalityWords",
    "PositionLists", "RegionImageWords", "SystemPromptSpec", "TaskName", "TemplateBankSpec", "TemplateSpec",
    "TermSpec", "VocabSpec", "Words", "check_balanced", "check_language", "template_fields",
]  # fmt: skip
