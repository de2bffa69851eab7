"""A card's terms: its label table, the terms it defines, the release's glossary files; checked at card load.

* :func:`label_table` -- dataset label -> term (a named shipped label map first, the card's ``labels`` over
  it, ``ignore_labels`` removed).
* :func:`read_glossary_file` / :func:`load_release_terms` -- the extra glossary files a release config
  names (``glossary: [path, ...]``), same format and validation as ``pipeline/language/data/glossary``.
* :func:`prepare_card_terms` -- what ``sources.base.load_card`` runs: the card's own ``terms:`` join the
  glossary (a clash names both places), every label must map to a term that exists (else an error naming
  the card, the label and the closest terms), and the release terms the card uses are copied into the
  card, so a case task in another process (which gets the card, not the release config) knows them too.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pydantic import ValidationError

from pipeline.language.glossary import GLOSSARY_DIR, load_glossary, load_label_map
from pipeline.language.user_terms import add_terms, closest_terms
from schemas.card import SourceCard
from schemas.config import ReleaseConfig
from schemas.language import GlossaryFileSpec, TermSpec
from schemas.yamlio import load_yaml


def card_where(card: SourceCard) -> str:
    """``card NAME (FILE)``: how messages name a card (its file name, never a build machine's folders)."""
    return f"card {card.name} ({Path(card.card_path).name})" if card.card_path else f"card {card.name}"


def label_table(card: SourceCard) -> dict[str, str]:
    """The full dataset-label -> term table (named label map first, explicit labels override), cached per
    card object."""
    cached = _TABLES.get(id(card))
    if cached is not None and cached[0] is card:
        return cached[1]
    table: dict[str, str] = {}
    if card.label_map:
        table.update({str(k): v for k, v in load_label_map(card.label_map).items()})
    table.update(card.labels)
    for lab in card.ignore_labels:
        table.pop(str(lab), None)
    _TABLES[id(card)] = (card, table)
    return table


_TABLES: dict[int, tuple[SourceCard, dict[str, str]]] = {}


def shipped_terms() -> frozenset[str]:
    """Term ids of the shipped glossary (cached per loaded glossary)."""
    g = load_glossary(GLOSSARY_DIR)
    if _SHIPPED[0] is not g:
        _SHIPPED[:] = [g, frozenset(g.terms)]
    return _SHIPPED[1]


_SHIPPED: list = [None, frozenset()]


def card_terms_known(card: SourceCard) -> frozenset[str]:
    """Terms a card may emit: the shipped glossary's and its own (release terms are copied into it)."""
    return shipped_terms() | frozenset(card.terms) if card.terms else shipped_terms()


def resolve_label(card: SourceCard, label: str) -> str | None:
    """A dataset label (id or name) -> the card's term, or None when it is not emitted: the label table,
    then (``resolve_labels_with_glossary``) the glossary's names, synonyms and aliases."""
    table = label_table(card)
    if label in table:
        return table[label]
    if label in card.ignore_labels or not card.resolve_labels_with_glossary:
        return None
    gl = load_glossary()
    known = card_terms_known(card)  # not another card's terms: those are not this card's to emit
    for text in (label, label.replace("+", " "), label.replace("+", " ").replace("_", " ")):
        term = gl.resolve(text)
        if term is not None and term in known:
            return term
    return None


# ----------------------------------------------------------------------------------------- glossary files


def read_glossary_file(path: str | Path, name: str | None = None) -> dict[str, TermSpec]:
    """One extra glossary file (``term_id: {en, zh, category, body_region, ...}``), validated like a shipped
    glossary file; errors name the file (``name``: as the release config wrote it)."""
    path = Path(path)
    name = name or path.name
    if not path.is_file():
        raise FileNotFoundError(f"glossary file {name} (release config `glossary:`) not found; paths are "
                                "relative to the release config file")
    data = load_yaml(path, what="glossary file", name=name) or {}  # YAML errors name the file and line
    try:
        return dict(GlossaryFileSpec.model_validate(data).root)
    except ValidationError as exc:
        raise ValueError(f"glossary file {name}: {_messages(exc)}; see docs/language.md for the term format") from None


def load_release_terms(cfg: ReleaseConfig) -> dict[str, TermSpec]:
    """The terms of every glossary file the release config names, added to this process's glossary (in
    order; a term defined twice, or already shipped, is an error naming both places)."""
    out: dict[str, TermSpec] = {}
    for written, path in zip(cfg.glossary, cfg.glossary_paths(), strict=True):
        name = Path(written).name if Path(written).is_absolute() else written  # no build-machine folders
        terms = read_glossary_file(path, name)
        add_terms(terms, f"glossary file {name}")
        out.update(terms)
    return out


def _messages(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        parts.append(f"{loc}: {str(err['msg']).removeprefix('Value error, ')}")
    return "; ".join(parts)


# ----------------------------------------------------------------------------------------- card load


def prepare_card_terms(card: SourceCard, release_terms: Mapping[str, TermSpec] | None = None) -> SourceCard:
    """Add the card's terms to the glossary, check every label's term, and return the card with the
    release terms it uses copied into its ``terms`` (the card itself when it uses none)."""
    release_terms = dict(release_terms or {})
    install_card_terms(card)
    check_labels(card, release_terms)
    used = _used_release_terms(card, release_terms)
    if not used:
        return card
    merged = {**used, **card.terms}
    out = card.model_copy(update={"terms": merged})
    out.card_path = card.card_path
    return out


def install_card_terms(card: SourceCard) -> None:
    """The card's ``terms:`` join this process's glossary (idempotent)."""
    if card.terms:
        add_terms(card.terms, card_where(card))


def label_problems(card: SourceCard, release_terms: Mapping[str, TermSpec] | None = None) -> list[str]:
    """One sentence per label of the card whose term exists nowhere (shipped glossary, the card's ``terms``,
    the release's glossary files), with the closest terms."""
    known = card_terms_known(card) | set(release_terms or {})
    problems = []
    for label, term in sorted(label_table(card).items()):
        if term in known:
            continue
        guesses = closest_terms(term, known)
        dym = f" (did you mean {', '.join(repr(g) for g in guesses)}?)" if guesses else ""
        problems.append(f"label {label!r} maps to {term!r}, which is not a glossary term{dym}")
    return problems


def check_labels(card: SourceCard, release_terms: Mapping[str, TermSpec] | None = None) -> None:
    """Every label of the card must map to a term that exists; otherwise a ValueError naming the card, each
    label and the closest terms, and the fix."""
    problems = label_problems(card, release_terms)
    if problems:
        raise ValueError(
            f"{card_where(card)}: " + "; ".join(problems) + ". Fix: use a term id of the glossary "
            "(pipeline/language/data/glossary/*.yaml), or define the term under `terms:` in the card (or in a "
            "glossary file the release config names under `glossary:`); see docs/adding-a-source.md"
        )


def _used_release_terms(card: SourceCard, release_terms: Mapping[str, TermSpec]) -> dict[str, TermSpec]:
    """Release terms the card's labels (or own terms, through parent/mirror) need, with their parents and
    mirrors, so the card carries everything it emits."""
    todo = [t for t in label_table(card).values() if t in release_terms]
    for spec in card.terms.values():
        todo.extend(t for t in (spec.parent, spec.mirror) if t is not None and t in release_terms)
    used: dict[str, TermSpec] = {}
    while todo:
        tid = todo.pop()
        if tid in used or tid in card.terms or tid not in release_terms:
            continue
        spec = release_terms[tid]
        used[tid] = spec
        todo.extend(t for t in (spec.parent, spec.mirror) if t)
    return dict(sorted(used.items()))
