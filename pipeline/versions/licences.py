"""Licences: which sources a release config lets in (``licences: {allow, deny}``) and the release's overall
licence (the most restrictive source decides).

A card's ``licence`` is free text that starts with an identifier (SPDX when there is one):
``Apache-2.0``, ``CC0-1.0 (NIH: unrestricted use, citation requested)``, ``research-and-education-only``.
:func:`licence_id` takes that first token.  Config patterns are shell globs (``CC-BY-*``) matched
case-insensitively against the id and against the whole text.

Restrictiveness classes, least to most restrictive (:data:`CLASSES`): public-domain, permissive,
attribution, share-alike, non-commercial, non-commercial-share-alike / no-derivatives, and custom terms.
A licence that matches no known pattern is *custom*: its terms must be read, so it counts as the most
restrictive.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase

from schemas.config import LicenceFilter
from schemas.records import ExcludedSource, LicenceSummary

#: (class, id patterns), least restrictive first; the first class with a matching pattern wins, so the
#: specific CC variants come before plain CC-BY.
CLASSES: list[tuple[str, tuple[str, ...]]] = [
    ("public-domain", ("cc0-*", "pddl*", "unlicense", "public-domain", "publicdomain")),
    ("non-commercial-restricted", ("cc-by-nc-sa-*", "cc-by-nc-nd-*", "cc-by-nd-*")),
    ("non-commercial", ("cc-by-nc-*", "research*", "*non-commercial*", "*noncommercial*", "academic*")),
    ("share-alike", ("cc-by-sa-*", "odbl*", "gpl-*", "lgpl-*", "agpl-*")),
    ("attribution", ("cc-by-*", "odc-by*")),
    ("permissive", ("apache-*", "mit", "mit-*", "bsd-*", "isc", "zlib", "bsl-1.0", "mpl-*")),
]
#: restrictiveness rank of each class (higher = more restrictive); anything unmatched is "custom"
RANK = {"public-domain": 0, "permissive": 1, "attribution": 2, "share-alike": 3, "non-commercial": 4,
        "non-commercial-restricted": 5, "custom": 6}


def licence_id(licence: str) -> str:
    """The identifier a licence text starts with (up to the first space or parenthesis)."""
    head = re.split(r"[\s(]", licence.strip(), maxsplit=1)[0]
    return head.rstrip(",;:") or licence.strip()


def licence_class(licence: str) -> str:
    lid = licence_id(licence).lower()
    for name, patterns in CLASSES:
        if any(fnmatchcase(lid, p) for p in patterns):
            return name
    return "custom"


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


@dataclass(frozen=True)
class Overall:
    licence: str
    category: str
    decided_by: list[str]


def overall_licence(sources: Iterable[tuple[str, str]]) -> Overall:
    """The most restrictive licence of (source name, licence) pairs; several licences of that class are
    all named (``CC-BY-3.0 + CC-BY-4.0``)."""
    items = sorted(sources)
    if not items:
        return Overall("none", "none", [])
    worst = max(RANK[licence_class(lic)] for _, lic in items)
    chosen = [(n, lic) for n, lic in items if RANK[licence_class(lic)] == worst]
    ids = sorted({licence_id(lic) for _, lic in chosen})
    return Overall(" + ".join(ids), licence_class(chosen[0][1]), [n for n, _ in chosen])


def licence_summary(sources: Iterable[tuple[str, str]], rules: LicenceFilter,
                    excluded: list[ExcludedSource]) -> LicenceSummary:
    o = overall_licence(sources)
    return LicenceSummary(overall=o.licence, category=o.category, decided_by=o.decided_by, allow=list(rules.allow),
                          deny=list(rules.deny), excluded=list(excluded))
