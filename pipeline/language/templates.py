"""Template banks and context words, validated and precompiled at load.

A bank is ``data/templates/<task>.<lang>.yaml`` (see :class:`schemas.language.TemplateBankSpec` and
docs/language.md).  Loading validates every template (placeholders known for its slot, required ones
present, brackets balanced, no literal tags, language-appropriate punctuation) and precompiles the
per-slot choice lists so that :mod:`pipeline.language.tasks` only indexes tuples at generation time.

The context words (modality, body region, image position, size, list punctuation) live in
``data/vocab/*.yaml`` and are loaded by :func:`load_vocab`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from schemas.language import (
    SLOTS,
    TASK_ABBR,
    LangPunctuation,
    TemplateBankSpec,
    VocabSpec,
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
    "load_templates",
    "load_vocab",
]


@dataclass(frozen=True, slots=True)
class Template:
    id: str
    task: str
    lang: str
    slot: str
    text: str
    fields: frozenset[str]

    @property
    def needs_body_region(self) -> bool:
        return "body_region" in self.fields

    @property
    def is_question(self) -> bool:
        return self.slot.startswith("question")

    def render(self, values: dict[str, object]) -> str:
        """Fill the placeholders (extra keys in ``values`` are ignored)."""
        return self.text.format_map(values)


@dataclass(frozen=True)
class TemplateBank:
    task: str
    lang: str
    system: tuple[tuple[str, str], ...]  # (id, text)
    templates: tuple[Template, ...]
    by_id: dict[str, Template] = field(repr=False)
    # (slot, body_region_known) -> templates usable in that situation
    _choices: dict[tuple[str, bool], tuple[Template, ...]] = field(repr=False)

    def choices(self, slot: str, body_region_known: bool = True) -> tuple[Template, ...]:
        return self._choices[(slot, body_region_known)]

    def slot(self, slot: str) -> tuple[Template, ...]:
        return self._choices[(slot, True)]

    @property
    def questions(self) -> tuple[Template, ...]:
        return tuple(t for t in self.templates if t.is_question)

    @property
    def answers(self) -> tuple[Template, ...]:
        return tuple(t for t in self.templates if not t.is_question)


def _compile_bank(spec: TemplateBankSpec) -> TemplateBank:
    from schemas.language import template_fields

    templates = tuple(
        Template(
            id=t.id,
            task=spec.task,
            lang=spec.lang,
            slot=t.slot,
            text=t.text,
            fields=frozenset(template_fields(t.text)),
        )
        for t in spec.templates
    )
    choices: dict[tuple[str, bool], tuple[Template, ...]] = {}
    for slot in SLOTS[spec.task]:
        in_slot = tuple(t for t in templates if t.slot == slot)
        if not in_slot:
            raise ValueError(f"template bank {spec.task}.{spec.lang}: slot {slot!r} has no templates")
        without = tuple(t for t in in_slot if not t.needs_body_region)
        if not without:
            raise ValueError(
                f"template bank {spec.task}.{spec.lang}: slot {slot!r} needs templates without {{body_region}}"
            )
        choices[(slot, True)] = in_slot
        choices[(slot, False)] = without
    return TemplateBank(
        task=spec.task,
        lang=spec.lang,
        system=tuple((s.id, s.text) for s in spec.system),
        templates=templates,
        by_id={t.id: t for t in templates},
        _choices=choices,
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
            raise ValueError(f"{path.name}: a bank for {spec.task}/{spec.lang} must be named {spec.task}.{spec.lang}.yaml")
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

    def modality_words(self, modality: str, lang: str) -> tuple[str, str]:
        """``({modality}, {image})`` words; unknown modalities fall back to the raw name."""
        key = self.modality_key(modality)
        if key is None:
            raw = modality or "medical"
            return (raw, f"{raw} image" if lang == "en" else f"{raw}图像")
        m = self.spec.modalities[key]
        return m.name.get(lang), m.image.get(lang)

    def body_region_key(self, body_region: str | None) -> str | None:
        if not body_region:
            return None
        return self._region.get(body_region.casefold()) or self._region.get(
            body_region.casefold().replace(" ", "_")
        )

    def body_region_word(self, body_region: str | None, lang: str) -> str | None:
        key = self.body_region_key(body_region)
        return self.spec.body_regions[key].get(lang) if key else None

    def position(self, key: str, lang: str) -> str:
        return self.spec.positions[key].get(lang)

    def size(self, key: str, lang: str) -> str:
        return self.spec.sizes[key].get(lang)


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
