"""Licences: which sources a release config lets in (``licences: {allow, deny}``), and the facts the
manifest keeps about the release's licence.

A card's ``licence`` is free text that starts with an identifier (SPDX when there is one):
``Apache-2.0``, ``CC0-1.0 (NIH: unrestricted use, citation requested)``, ``research-and-education-only``.
:func:`licence_id` takes that first token.  Config patterns are shell globs (``CC-BY-*``) matched
case-insensitively against the id and against the whole text; ``deny`` wins over ``allow``.

The classes and the overall licence (the most restrictive source decides) are the card's
(:func:`pipeline.release.card.licence_class`, :func:`~pipeline.release.card.overall_licence`), so the
manifest and the card never disagree.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from fnmatch import fnmatchcase
from types import SimpleNamespace

from pipeline.release.card import licence_class, overall_licence
from schemas.config import LicenceFilter
from schemas.records import ExcludedSource, LicenceSummary


def licence_id(licence: str) -> str:
    """The identifier a licence text starts with (up to the first space or parenthesis)."""
    head = re.split(r"[\s(]", licence.strip(), maxsplit=1)[0]
    return head.rstrip(",;:") or licence.strip()


def _matches(licence: str, pattern: str) -> bool:
    p = pattern.lower()
    return fnmatchcase(licence_id(licence).lower(), p) or fnmatchcase(licence.strip().lower(), p)


def exclusion_reason(licence: str, rules: LicenceFilter) -> str | None:
    """Why a source with this licence is left out, or None when it is allowed."""
    for pattern in rules.deny:
        if _matches(licence, pattern):
            return f"licence {licence_id(licence)} matches licences.deny {pattern!r}"
    if rules.allow and not any(_matches(licence, p) for p in rules.allow):
        return f"licence {licence_id(licence)} is not in licences.allow ({', '.join(rules.allow)})"
    return None


def licence_summary(sources: Iterable[tuple[str, str]], rules: LicenceFilter,
                    excluded: list[ExcludedSource]) -> LicenceSummary:
    """(source name, licence) of the included sources -> the manifest's licence facts: the class that
    decides (the card's rule), the sources and licence ids holding it, the filter and what it left out."""
    items = sorted(sources)
    top, _ = overall_licence([SimpleNamespace(name=n, licence=lic) for n, lic in items])
    deciders = [(n, lic) for n, lic in items if licence_class(lic) == top]
    return LicenceSummary(overall=" + ".join(sorted({licence_id(lic) for _, lic in deciders})) or "none",
                          category=top, decided_by=[n for n, _ in deciders], allow=list(rules.allow),
                          deny=list(rules.deny), excluded=list(excluded))
