"""Template banks and context words, validated and precompiled at load.

A bank is ``data/templates/<task>.<lang>.yaml`` (see :class:`schemas.language_banks.TemplateBankSpec` and
docs/language.md).  Loading validates every template (placeholders known for its slot, required ones
present, brackets balanced, no literal tags, language-appropriate punctuation, the traits it ``fits``,
coverage of every trait combination) and compiles each one to a ``%``-format string; the choice lists per
(slot, body region known, traits) are made once, so generation only indexes tuples.

The context words (modality, body region, image position, size, list punctuation) live in
``data/vocab/*.yaml`` and are loaded by :func:`load_vocab`.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from schemas.language import (
    SLOTS,
    TASK_ABBR,
    LangPunctuation,
    TemplateBankSpec,
    VocabSpec,
    template_fields,
)
from schemas.yamlio import load_yaml

DATA_DIR = Path(__file__).resolve().parent / "data"
TEMPLATES_DIR = DATA_DIR / "templates"
VOCAB_DIR = DATA_DIR / "vocab"

TASKS: tuple[str, ...] = tuple(SLOTS)

__all__ = [
    "TASKS",
    "Template",
    "TemplateBank",
    "TemplateSet",
    "Vocab",
    "check_grounding",
    "compile_template",
    "load_templates",
    "load_vocab",
    "sample_values",
]

#: ``fill(values) -> str``: a template's text with its placeholders filled from ``values``
Fill = Callable[[dict[str, Any]], str]
_FORMATTER = string.Formatter()


def compile_template(text: str) -> Fill:
    """``text.format_map`` as a precompiled ``%``-format string: ``"The {term} lies {position}."`` becomes
    ``"The %(term)s lies %(position)s."`` (literal ``%`` doubled), and ``fill(v)`` is ``fmt % v``, done in C.

    ``fill(v) == text.format_map(v)`` for the str and int values templates get (``%s`` and ``format(x, "")``
    agree on them), with the same ``KeyError`` for a missing placeholder.  Placeholders must be plain names.
    """
    parts: list[str] = []
    for literal, name, spec, conversion in _FORMATTER.parse(text):
        parts.append(literal.replace("%", "%%"))
        if name is not None:
            if spec or conversion or not name.isidentifier():
                raise ValueError(f"template {text!r}: placeholder {{{name}}} must be a plain name")
            parts.append(f"%({name})s")
    return "".join(parts).__mod__



@dataclass(frozen=True, slots=True)
class Template:
    id: str
    task: str
    lang: str
    slot: str
    text: str
    fields: frozenset[str]
    fits: tuple[tuple[str, frozenset[str]], ...] = ()  # trait -> values; a trait left out fits any value
    fill: Fill = field(default=str, repr=False, compare=False)

    @property
    def needs_body_region(self) -> bool:
        return "body_region" in self.fields

    @property
    def is_question(self) -> bool:
        return self.slot.startswith("question")

    def fits_traits(self, traits: dict[str, str]) -> bool:
        """Whether the template may be drawn for a target with these traits."""
        return all(traits.get(trait, next(iter(values))) in values for trait, values in self.fits)

    def render(self, values: dict[str, object]) -> str:
        """Fill the placeholders (extra keys in ``values`` are ignored)."""
        return self.fill(values)


@dataclass(frozen=True)
class TemplateBank:
    task: str
    lang: str
    system: tuple[tuple[str, str], ...]  # (id, text); the first is the canonical prompt
    templates: tuple[Template, ...]
    by_id: dict[str, Template] = field(repr=False)
    system_styles: dict[str, tuple[str, str]] = field(repr=False, default_factory=dict)  # style -> (id, text)
    _cache: dict[tuple[Any, ...], tuple[Template, ...]] = field(repr=False, default_factory=dict)

    @property
    def base_prompt(self) -> str:
        """The canonical task prompt (the first system prompt): InternVL's meta-file ``base_prompt``."""
        return self.system[0][1]

    def system_prompt(self, style: str = "default") -> tuple[str, str]:
        """``(id, text)`` of the system prompt for an answer style (``default`` or ``sentence``)."""
        try:
            return self.system_styles[style]
        except KeyError:
            raise KeyError(f"bank {self.task}.{self.lang} has no system prompt with style {style!r}") from None

    def choices(
        self, slot: str, body_region_known: bool = True, traits: tuple[tuple[str, str], ...] = ()
    ) -> tuple[Template, ...]:
        """The templates of ``slot`` usable for a target with ``traits`` (in bank order)."""
        key = (slot, body_region_known, traits)
        got = self._cache.get(key)
        if got is None:
            want = dict(traits)
            got = tuple(
                t for t in self.templates
                if t.slot == slot and (body_region_known or not t.needs_body_region) and t.fits_traits(want)
            )  # fmt: skip
            if not got:
                raise LookupError(f"bank {self.task}.{self.lang}: no template in slot {slot!r} fits {want}")
            self._cache[key] = got
        return got

    def slot(self, slot: str) -> tuple[Template, ...]:
        """Every template of ``slot``."""
        return tuple(t for t in self.templates if t.slot == slot)

    @property
    def questions(self) -> tuple[Template, ...]:
        return tuple(t for t in self.templates if t.is_question)

    @property
    def answers(self) -> tuple[Template, ...]:
        return tuple(t for t in self.templates if not t.is_question)


def _compile_bank(spec: TemplateBankSpec) -> TemplateBank:
    templates = tuple(
        Template(
            id=t.id,
            task=spec.task,
            lang=spec.lang,
            slot=t.slot,
            text=t.text,
            fields=frozenset(template_fields(t.text)),
            fits=tuple((k, frozenset(v)) for k, v in sorted(t.fits.items())),
            fill=compile_template(t.text),
        )
        for t in spec.templates
    )
    for slot in SLOTS[spec.task]:
        if not any(t.slot == slot for t in templates):
            raise ValueError(f"template bank {spec.task}.{spec.lang}: slot {slot!r} has no templates")
    return TemplateBank(
        task=spec.task,
        lang=spec.lang,
        system=tuple((s.id, s.text) for s in spec.system),
        templates=templates,
        by_id={t.id: t for t in templates},
        system_styles={s.style: (s.id, s.text) for s in spec.system},
    )


@dataclass(frozen=True)
class TemplateSet:
    banks: dict[tuple[str, str], TemplateBank]

    def bank(self, task: str, lang: str) -> TemplateBank:
        try:
            return self.banks[(task, lang)]
        except KeyError:
            have = ", ".join(f"{t}.{lang_}" for t, lang_ in sorted(self.banks))
            raise KeyError(f"no template bank for task {task!r} in language {lang!r} (have: {have})") from None

    @property
    def languages(self) -> tuple[str, ...]:
        return tuple(sorted({lang for _t, lang in self.banks}))

    def template(self, template_id: str) -> Template:
        abbr, lang, _ = template_id.split(".", 2)
        task = {v: k for k, v in TASK_ABBR.items()}[abbr]
        return self.bank(task, lang).by_id[template_id]

    def base_prompts(self) -> dict[tuple[str, str], str]:
        """(task, lang) -> the canonical system prompt, for InternVL meta files (``base_prompt``)."""
        return {key: bank.base_prompt for key, bank in sorted(self.banks.items())}


def _read_yaml(path: Path) -> object:
    return load_yaml(path)  # alias expansion and size limited; errors name the file (a ValueError)


@lru_cache(maxsize=4)
def _load_templates_cached(directory: str) -> TemplateSet:
    banks: dict[tuple[str, str], TemplateBank] = {}
    for path in sorted(Path(directory).glob("*.yaml")):
        data = _read_yaml(path)
        try:
            spec = TemplateBankSpec.model_validate(data)
        except ValueError as exc:
            raise ValueError(f"{path.name}: {exc}") from exc
        if path.name != f"{spec.task}.{spec.lang}.yaml":
            want = f"{spec.task}.{spec.lang}.yaml"
            raise ValueError(f"{path.name}: a bank for {spec.task}/{spec.lang} must be named {want}")
        banks[(spec.task, spec.lang)] = _compile_bank(spec)
    if not banks:
        raise FileNotFoundError(f"no template banks (*.yaml) in {directory}")
    return TemplateSet(banks=banks)


def load_templates(directory: str | Path | None = None) -> TemplateSet:
    """All template banks (validated, compiled; cached per directory)."""
    return _load_templates_cached(str(Path(directory) if directory else TEMPLATES_DIR))


# ----------------------------------------------------------------------------------------- vocab


class Vocab:
    """Context words per language, with the card-spelling aliases resolved."""

    def __init__(self, spec: VocabSpec) -> None:
        self.spec = spec
        self._modality: dict[str, str] = {}
        for key, m in spec.modalities.items():
            for name in (key, *m.aliases):
                self._modality[name.casefold()] = key
        self._region: dict[str, str] = {k.casefold(): k for k in spec.body_regions}
        self._region.update({a.casefold(): k for a, k in spec.body_region_aliases.items()})
        self.punctuation: dict[str, LangPunctuation] = dict(spec.punctuation)

    def modality_key(self, modality: str) -> str | None:
        return self._modality.get(modality.casefold()) if modality else None

    def modality_words(self, modality: str, lang: str, body_region: str | None = None) -> tuple[str, str]:
        """``({modality}, {image})`` words (a body region may refine them: endoscopy of the colon is a
        colonoscopy); unknown modalities fall back to the raw name."""
        key = self.modality_key(modality)
        if key is None:
            raw = modality or "medical"
            return (raw, f"{raw} image" if lang == "en" else f"{raw}图像")
        m = self.spec.modalities[key]
        region = m.by_region.get(self.body_region_key(body_region) or "")
        words = region or m
        return words.name.get(lang), words.image.get(lang)

    def body_region_key(self, body_region: str | None) -> str | None:
        if not body_region:
            return None
        return self._region.get(body_region.casefold()) or self._region.get(
            body_region.casefold().replace(" ", "_")
        )

    def body_region_word(self, body_region: str | None, lang: str, modality: str | None = None) -> str | None:
        """``{body_region}``; None when unknown, or when the modality's image word already says it."""
        key = self.body_region_key(body_region)
        mkey = self.modality_key(modality) if modality else None
        if key is None or (mkey is not None and not self.spec.modalities[mkey].body_region_words):
            return None
        return self.spec.body_regions[key].get(lang)

    def body_region_parts(self, body_region: str | None) -> frozenset[str]:
        """The glossary body regions a slice's body region covers (empty when unknown)."""
        key = self.body_region_key(body_region)
        if key is None:
            return frozenset()
        return frozenset(self.spec.body_region_parts.get(key, [key]))

    def position(self, key: str, lang: str) -> str:
        return self.spec.positions[key].get(lang)

    def positions_phrase(self, keys: tuple[str, ...], lang: str) -> str:
        """Where the boxes of one term lie: one part, both sides, a list of parts or "several parts"."""
        if len(keys) == 1:
            return self.spec.positions[keys[0]].get(lang)
        lists = self.spec.position_lists
        if set(keys) == {"middle_left", "middle_right"}:
            return lists.both_sides.get(lang)
        if len(keys) > 3:
            return lists.many.get(lang)
        p = self.punctuation[lang]
        parts = [self.spec.position_parts[k].get(lang) for k in keys]
        joined = p.list_sep.join(parts[:-1]) + p.last_sep + parts[-1]
        return lists.several.get(lang).replace("{parts}", joined)

    def size(self, key: str, lang: str) -> str:
        return self.spec.sizes[key].get(lang)

    def number(self, n: int, lang: str) -> str:
        """A count in words ("three" / "三"; "两" for two things in Chinese); digits past the word list."""
        words = self.spec.numbers.get(lang, [])
        return words[n] if 0 <= n < len(words) else str(n)


@lru_cache(maxsize=4)
def _load_vocab_cached(directory: str) -> Vocab:
    merged: dict[str, object] = {}
    for path in sorted(Path(directory).glob("*.yaml")):
        data = _read_yaml(path) or {}
        if not isinstance(data, dict):
            raise TypeError(f"{path.name}: must be a mapping of sections")
        for k, v in data.items():
            if k in merged:
                raise ValueError(f"{path.name}: section {k!r} is defined twice")
            merged[k] = v
    try:
        return Vocab(VocabSpec.model_validate(merged))
    except ValueError as exc:
        raise ValueError(f"vocab ({directory}): {exc}") from exc


def load_vocab(directory: str | Path | None = None) -> Vocab:
    return _load_vocab_cached(str(Path(directory) if directory else VOCAB_DIR))


def sample_values(lang: str) -> dict[str, Any]:
    """A value for every placeholder (as the generator fills them), for checking templates outside a
    generation run (bank tests, the LLM expansion's validation)."""
    en = lang == "en"
    ref = "<ref>right kidney</ref>" if en else "<ref>右肾</ref>"
    boxes = "<box>[[10, 20, 30, 40]]</box>" + (", " if en else "、") + "<box>[[50, 60, 70, 80]]</box>"
    name, image, region = ("right kidney", "CT image", "abdomen") if en else ("右肾", "CT图像", "腹部")
    return {
        "image": image, "modality": "CT", "body_region": region, "box": "<box>[[10, 20, 30, 40]]</box>",
        "boxes": boxes, "n": "two" if en else "两", "term": name, "Term": name[:1].upper() + name[1:],
        "the_term": "the " + name if en else name, "The_term": "The " + name if en else name,
        "subject": "the " + name if en else name, "Subject": "The " + name if en else name,
        "ref": ref, "the_ref": "the " + ref if en else ref, "The_ref": "The " + ref if en else ref,
        "refs": ("the " + ref + " and the <ref>liver</ref>") if en else ref + "和<ref>肝</ref>",
        "grounded": ref + "<box>[[10, 20, 30, 40]]</box>",
        "position": "in the upper left part of the image" if en else "图像左上部",
        "size": "small" if en else "较小",
    }  # fmt: skip



# ----------------------------------------------------------------------------------------- rendered text

_TAG = re.compile(r"</?(ref|box)>")
_BOX_BODY = re.compile(r"^\[\[\d{1,3}, \d{1,3}, \d{1,3}, \d{1,3}\](, \[\d{1,3}, \d{1,3}, \d{1,3}, \d{1,3}\])*\]$")


def check_grounding(text: str) -> list[str]:
    """Problems with the ``<ref>``/``<box>`` markup of a rendered turn (empty list when it is well formed).

    Tags must alternate open/close without nesting, a ``<ref>`` holds plain text and a ``<box>`` holds
    ``[[x1, y1, x2, y2], ...]`` with 0..999 integers, x1 < x2 and y1 < y2.
    """
    problems: list[str] = []
    open_tag: str | None = None
    start = 0
    for m in _TAG.finditer(text):
        tag = m.group(0)
        name = m.group(1)
        closing = tag.startswith("</")
        if not closing:
            if open_tag is not None:
                problems.append(f"<{name}> opened inside <{open_tag}> at {m.start()}")
            open_tag, start = name, m.end()
        else:
            if open_tag != name:
                problems.append(f"</{name}> without matching <{name}> at {m.start()}")
                open_tag = None
                continue
            body = text[start : m.start()]
            if name == "box":
                if not _BOX_BODY.match(body):
                    problems.append(f"malformed box list {body!r}")
                else:
                    for b in re.findall(r"\[(\d+), (\d+), (\d+), (\d+)\]", body):
                        x1, y1, x2, y2 = (int(v) for v in b)
                        if not (0 <= x1 < x2 <= 999 and 0 <= y1 < y2 <= 999):
                            problems.append(f"box {list(map(int, b))} is out of 0..999 or degenerate")
            elif not body.strip() or "<" in body or ">" in body or "[" in body or "]" in body:
                problems.append(f"bad ref text {body!r}")
            open_tag = None
    if open_tag is not None:
        problems.append(f"<{open_tag}> is never closed")
    return problems
