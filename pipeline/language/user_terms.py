"""User terms: a card's ``terms:`` and the glossary files a release config names, merged into the glossary.

:func:`add_terms` makes terms part of :func:`pipeline.language.glossary.load_glossary` in this process;
the merged glossary is validated by the same rules as the shipped one (:class:`schemas.language.GlossarySpec`
and the unique-name index of :class:`~pipeline.language.glossary.Glossary`), and a clash names both places.
Adding the same origin again replaces its terms, so loading a card twice is harmless.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Collection, Mapping

from pipeline.language.glossary import GLOSSARY_DIR, Glossary, _load_glossary_cached, load_glossary, shipped_term_file
from schemas.language import GlossarySpec, TermSpec

__all__ = ["add_terms", "closest_terms", "merged_origin", "reset_user_terms", "user_glossary", "user_term_origins"]


class _UserTerms:
    """The user terms of this process: term id -> (spec, origin), and the merged glossary they give."""

    def __init__(self) -> None:
        self.terms: dict[str, tuple[TermSpec, str]] = {}
        self.origin = ""
        self.merged: tuple[int, Glossary] | None = None  # (id of the shipped glossary it was built on, merged)


_USER = _UserTerms()


def _merge(shipped: Glossary, terms: Mapping[str, tuple[TermSpec, str]]) -> Glossary:
    blob = repr(sorted((tid, spec.model_dump_json()) for tid, (spec, _) in terms.items())).encode()
    spec = GlossarySpec(terms={**shipped.spec.terms, **{tid: s for tid, (s, _) in terms.items()}})
    return Glossary(spec, origin=f"{shipped.origin}+user-terms-{hashlib.sha256(blob).hexdigest()[:12]}")


def user_glossary() -> Glossary:
    shipped = _load_glossary_cached(str(GLOSSARY_DIR))
    if not _USER.terms:
        return shipped
    if _USER.merged is None or _USER.merged[0] != id(shipped):
        _USER.merged = (id(shipped), _merge(shipped, _USER.terms))
        _USER.origin = _USER.merged[1].origin
    return _USER.merged[1]


def add_terms(terms: Mapping[str, TermSpec], origin: str) -> None:
    """Make user terms part of :func:`load_glossary` in this process.

    ``origin`` names where they come from (``card drive (cards/drive.yaml)``, ``glossary file x.yaml``);
    adding the same origin again replaces its terms, so adding is idempotent.  The merged glossary is
    validated exactly like the shipped one (ids, parents, mirrors, unique names); a term id that the
    shipped glossary or another origin already defines differently is a ``ValueError`` naming both.
    """
    if not terms:
        return
    errors: list[str] = []
    for tid, spec in sorted(terms.items()):
        shipped_file = shipped_term_file(tid)
        if shipped_file:
            errors.append(f"term {tid!r} of {origin} is already a shipped glossary term ({shipped_file}): "
                          "map your labels to the shipped term, or give yours another id")
            continue
        prev = _USER.terms.get(tid)
        if prev is not None and prev[1] != origin and prev[0] != spec:
            errors.append(f"term {tid!r} is defined differently in {prev[1]} and in {origin}: "
                          "keep one definition (or give one of them another id)")
    if errors:
        raise ValueError("\n".join(errors))
    candidate = {tid: v for tid, v in _USER.terms.items() if v[1] != origin}
    for tid, spec in terms.items():
        candidate.setdefault(tid, (spec, origin))
    if candidate == _USER.terms:
        return  # the same terms again (a card loaded twice, an adapter made per case)
    shipped = _load_glossary_cached(str(GLOSSARY_DIR))
    try:
        merged = _merge(shipped, candidate)
    except ValueError as exc:
        where = {tid: o for tid, (_, o) in candidate.items()}
        mine = ", ".join(sorted(terms))
        text = _plain(exc)
        raise ValueError(f"the terms of {origin} ({mine}) do not fit the glossary: {text}"
                         + _where_note(text, where) + ". Fix: give the new term another id or name (names and "
                         "synonyms must be unique across the glossary), or map your labels to the existing "
                         "term") from None
    _USER.terms = candidate
    _USER.merged = (id(shipped), merged)
    _USER.origin = merged.origin


def merged_origin() -> str:
    """``origin`` of the merged glossary ("" while there are no user terms)."""
    return _USER.origin


def user_term_origins() -> dict[str, str]:
    """term id -> where it was defined, for every user term of this process."""
    return {tid: origin for tid, (_, origin) in sorted(_USER.terms.items())}


def reset_user_terms() -> None:
    """Forget every user term of this process (tests, notebooks)."""
    _USER.terms = {}
    _USER.merged = None
    _USER.origin = ""


def _plain(exc: ValueError) -> str:
    """A pydantic ValidationError's messages without its URL footer."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        return "; ".join(str(e.get("msg", "")).removeprefix("Value error, ") for e in errors())
    return str(exc)


def _where_note(message: str, user_where: Mapping[str, str]) -> str:
    """``(where: 'x' is in card y; 'aorta' is in pipeline/.../vessels.yaml)`` for the ids a message quotes."""
    notes = []
    for tid in dict.fromkeys(re.findall(r"'([A-Za-z0-9_]+)'", message)):
        place = user_where.get(tid) or shipped_term_file(tid)
        if place:
            notes.append(f"{tid!r} is in {place}")
    return f" (where: {'; '.join(notes)})" if notes else ""


def closest_terms(text: str, known: Collection[str] | None = None, n: int = 3) -> list[str]:
    """Term ids close to ``text`` (a mistyped id or a name), best first: for "did you mean ...".

    ``known`` restricts the candidates (default: every term of :func:`load_glossary`)."""
    g = load_glossary()
    pool = sorted(known if known is not None else g.terms)
    out: list[str] = []
    hit = g.resolve(text)
    if hit is not None and hit in pool:
        out.append(hit)
    for cand in difflib.get_close_matches(text, pool, n=n, cutoff=0.75):
        if cand not in out:
            out.append(cand)
    return out[:n]
