"""Access to the canonical-term glossary (pipeline.language.glossary) with a suffix fallback.

Validators only need five questions answered: a term's display name, its laterality, its mirror
partner, its same-region alternatives and which term a piece of text names.  When the glossary module
is not importable (or does not know a term) the answers fall back to term-id conventions:
``*_left``/``*_right`` suffixes (also ``_left_``/``_right_`` infixes such as ``rib_left_7``) and
``term.replace("_", " ")`` as display name.
"""

from __future__ import annotations

import logging
import re
from typing import Any

log = logging.getLogger(__name__)

_LR = re.compile(r"(^|_)(left|right)(_|$)")


def _suffix_laterality(term: str) -> str | None:
    m = _LR.search(term)
    return m.group(2) if m else None


def _suffix_mirror(term: str) -> str | None:
    m = _LR.search(term)
    if not m:
        return None
    other = "right" if m.group(2) == "left" else "left"
    return term[: m.start(2)] + other + term[m.end(2) :]


class TermInfo:
    """Uniform, exception-free view of a glossary object (or of none)."""

    def __init__(self, glossary: Any | None = None, *, use_default: bool = True) -> None:
        self._own = glossary
        self._default = glossary is None and use_default

    @property
    def g(self) -> Any | None:
        """The glossary asked: the one given, else the process glossary *now* (with the user terms added
        since this view was made: cards and glossary files of the release)."""
        return load_default_glossary() if self._default else self._own

    def _call(self, method: str, *args: Any) -> Any:
        if self.g is None or not hasattr(self.g, method):
            return None
        try:
            return getattr(self.g, method)(*args)
        except (KeyError, ValueError, LookupError):
            return None

    def laterality(self, term: str) -> str | None:
        """'left' / 'right' / None."""
        val = self._call("laterality", term)
        if val is not None:
            val = str(val).lower()
            return val if val in ("left", "right") else None
        if self.g is not None and self._call("display", term, "en") is not None:
            return None  # glossary knows the term and says it has no side
        return _suffix_laterality(term)

    def mirror(self, term: str) -> str | None:
        val = self._call("mirror", term)
        if val:
            return str(val)
        return _suffix_mirror(term)

    def display(self, term: str, lang: str = "en") -> str:
        val = self._call("display", term, lang)
        if val:
            return str(val)
        if lang == "en":
            return term.replace("_", " ")
        return self.display(term, "en")

    def same_region_terms(self, term: str) -> list[str]:
        val = self._call("same_region_terms", term)
        return [str(t) for t in val if str(t) != term] if val else []

    def resolve(self, text: str, lang: str | None = None) -> str | None:
        if not text:
            return None
        val = self._call("resolve", text, lang) if lang is not None else self._call("resolve", text)
        if val:
            return str(val)
        if self.g is not None:
            return None
        # no glossary: the text is a term id, its underscore-less form, or "left kidney" style (<= 4 words)
        t = re.sub(r"\s+", " ", text.strip().lower()).strip(" .")
        t = re.sub(r"^(?:(?:it|this)\s+is\s+)?(?:the|a|an)\s+", "", t)
        if len(t.split(" ")) > 4:
            return None
        cand = t.replace(" ", "_")
        m = re.match(r"^(left|right)_(.+)$", cand)
        if m:
            cand = f"{m.group(2)}_{m.group(1)}"
        return cand if cand and re.fullmatch(r"[a-z0-9_]+", cand) else None


    def term_ids(self) -> list[str]:
        """Every term id the glossary knows ([] without a glossary)."""
        if self.g is None:
            return []
        try:
            return sorted(str(t) for t in self.g)
        except TypeError:
            return []

    def names(self, extra_terms: list[str] | tuple[str, ...] = ()) -> list[tuple[str, str]]:
        """(lower-cased name, term id) for the display names (EN, ZH) and ids of all known terms."""
        key = (id(self.g), tuple(extra_terms))
        cache = self.__dict__.setdefault("_names_cache", {})
        if key not in cache:
            pairs: set[tuple[str, str]] = set()
            for t in [*self.term_ids(), *extra_terms]:
                pairs.add((t.lower(), t))
                pairs.add((t.replace("_", " ").lower(), t))
                m = re.match(r"^(.+)_(left|right)$", t)
                if m:  # "left kidney" for kidney_left
                    pairs.add((f"{m.group(2)} {m.group(1).replace('_', ' ')}".lower(), t))
                for lang in ("en", "zh"):
                    pairs.add((self.display(t, lang).lower(), t))
            cache[key] = sorted(pairs)
        return cache[key]

    def find_terms(self, text: str, extra_terms: list[str] | tuple[str, ...] = ()) -> list[str]:
        """Terms whose names occur in ``text``, by position; at one position the longest name wins
        (``right kidney`` beats ``kidney``).  English names match on word boundaries."""
        low = text.lower()
        hits: list[tuple[int, int, str]] = []
        for name, tid in self.names(extra_terms):
            if not name:
                continue
            if re.search(r"[\u3400-\u9fff]", name):
                pos = low.find(name)
            else:
                m = re.search(r"(?<![a-z0-9])" + re.escape(name) + r"(?![a-z0-9])", low)
                pos = m.start() if m else -1
            if pos >= 0:
                hits.append((pos, pos + len(name), tid))
        out: list[str] = []
        covered_to = -1
        for start, end, tid in sorted(hits, key=lambda h: (h[0], -(h[1] - h[0]), h[2])):
            if start < covered_to:
                continue  # inside a longer name already taken
            covered_to = end
            if tid not in out:
                out.append(tid)
        return out


_BROKEN = False


def load_default_glossary() -> Any | None:
    """pipeline.language.glossary.load_glossary() (the shipped glossary plus this process's user terms), or
    None with a one-time notice when it cannot load."""
    global _BROKEN
    if _BROKEN:
        return None
    try:
        from pipeline.language.glossary import load_glossary

        return load_glossary()
    except Exception as exc:  # any failure means: use the suffix fallback
        log.warning("glossary unavailable (%s); validators use term-id suffix rules", exc)
        _BROKEN = True
        return None
