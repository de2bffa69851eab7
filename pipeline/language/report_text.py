"""Real report sentences as the rows carry them: cleaning, negation, laterality words and glossary-term spans.

Report-grounded sources (MS-CXR, Chest ImaGenome, RadGenome-ChestCT, the generic report CSV) tie sentences of a
radiology report to regions.  The text is the report's own; this module only makes it safe to embed in a row
and answers three questions the pipeline asks of it:

* :func:`clean_sentence` -- whitespace collapsed, the first letter capitalised (English), a closing full stop
  added when missing, Chinese punctuation full-width outside Latin/number runs ("T12", "1.5 cm" stay);
  ``None`` for an empty sentence or one holding grounding markup (``<``, ``>``, ``[[``), which a row cannot
  embed without confusing the ``<ref>``/``<box>`` parser.
* :func:`negates` -- whether a sentence states that a finding is absent ("No focal consolidation.",
  "未见实变。"): a negation cue before the finding's name in the same clause (a NegEx-style window).  Such a
  finding never becomes a region; the sentence may stay with an anatomical region.
* :func:`sides` -- the patient sides a sentence names ("left", "right"; both for bilateral words).  The rules
  validator compares them with the side of the boxes (docs/validation.md, ``text_laterality``).
* :func:`term_spans` -- where glossary terms occur in a sentence (longest match first), so translation can fix
  them as placeholders (:mod:`pipeline.evaluate.translate`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.core.types import RegionSentence
    from pipeline.language.glossary import Glossary

__all__ = [
    "clean_sentence", "has_cjk", "join_sentences", "negates", "sides", "slice_report", "term_spans", "zh_punctuation",
]

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")
_MARKUP = re.compile(r"[<>]|\[\[|\]\]")
_SPACE = re.compile(r"\s+")
_ZH_MAP = {",": "，", ";": "；", ":": "：", "?": "？", "!": "！", "(": "（", ")": "）", ".": "。"}
# Latin/number runs inside Chinese text keep their ASCII marks: "T12", "1.5 cm", "C3-C4", "2/3"
_LATIN_RUN = re.compile(r"[A-Za-z0-9]+(?:[.\-/][A-Za-z0-9]+)*")

_EN_CUE = r"\b(?:no|not|without|negative for|free of|absence of|absent|resolved|ruled out|rule out|clear of|nor)\b"
_ZH_CUE = r"无|未见|未发现|未显示|没有|不伴|排除|未见明显|阴性"
_CLAUSE = re.compile(r"[.;。；!?！？]|,\s*(?:but|however)\b|，\s*(?:但|然而)|\bbut\b|但是?|然而")
_EN_SIDE = re.compile(r"\b(left|right)(?:-sided|ward)?\b", re.IGNORECASE)
_EN_BOTH = re.compile(r"\b(?:bilateral(?:ly)?|both|bibasilar|bibasal|biapical)\b", re.IGNORECASE)
_ZH_LEFT = re.compile(r"左(?!右)")
_ZH_RIGHT = re.compile(r"(?<!左)右")
_ZH_BOTH = re.compile(r"双侧|两侧|双肺|两肺|双下肺|双上肺")


def zh_punctuation(text: str) -> str:
    """ASCII punctuation of a Chinese sentence made full-width, except inside Latin/number runs."""
    out: list[str] = []
    pos = 0
    for m in _LATIN_RUN.finditer(text):
        out.append("".join(_ZH_MAP.get(c, c) for c in text[pos : m.start()]))
        out.append(m.group(0))
        pos = m.end()
    out.append("".join(_ZH_MAP.get(c, c) for c in text[pos:]))
    return re.sub(r"\s*([，。；：？！（）])\s*", r"\1", "".join(out))


def clean_sentence(text: str, lang: str) -> str | None:
    """The sentence as a row embeds it, or ``None`` when it is empty or holds grounding markup."""
    t = _SPACE.sub(" ", str(text or "")).strip()
    if not t or _MARKUP.search(t):
        return None
    if lang == "zh":
        t = zh_punctuation(t)
        if t[-1] not in "。！？":
            t += "。"
        return t
    t = t[0].upper() + t[1:]
    if t[-1] not in ".!?":
        t += "."
    return t


def join_sentences(texts: Iterable[str], lang: str) -> str:
    """Several sentences about one region, in order, each once."""
    unique = list(dict.fromkeys(t for t in texts if t))
    return ("" if lang == "zh" else " ").join(unique)


@lru_cache(maxsize=64)
def _name_pattern(names: tuple[str, ...]) -> re.Pattern[str]:
    alts = "|".join(re.escape(n) for n in sorted(set(names), key=len, reverse=True) if n)
    if not alts:
        return re.compile(r"(?!x)x")
    return re.compile(rf"(?<![A-Za-z])(?:{alts})(?![A-Za-z])", re.IGNORECASE)


def negates(text: str, lang: str, names: Iterable[str] = ()) -> bool:
    """Whether ``text`` says that the finding called by one of ``names`` is absent.  With no names: whether
    some clause of the sentence is a negation (a negation cue in it)."""
    cue = re.compile(_ZH_CUE if lang == "zh" else _EN_CUE, re.IGNORECASE)
    names = tuple(names)
    for clause in _CLAUSE.split(text or ""):
        if not names:
            if cue.search(clause):
                return True
            continue
        for m in _name_pattern(names).finditer(clause):
            if cue.search(clause[: m.start()]):
                return True
    return False


def sides(text: str, lang: str) -> set[str]:
    """The patient sides named in a sentence: ``{"left"}``, ``{"right"}``, both (also for bilateral words) or
    none."""
    found: set[str] = set()
    if lang == "zh":
        if _ZH_BOTH.search(text):
            return {"left", "right"}
        if _ZH_LEFT.search(text):
            found.add("left")
        if _ZH_RIGHT.search(text):
            found.add("right")
        return found
    if _EN_BOTH.search(text):
        return {"left", "right"}
    return {m.group(1).lower() for m in _EN_SIDE.finditer(text)}


def _names_of(glossary: Glossary, lang: str) -> dict[str, str]:
    """name -> term id of the names that safely denote one term in running text: display names (and their
    English plural) and the longer synonyms -- English synonyms of several words, Chinese of three characters or
    more.  A one-word synonym is often a part of another phrase ("effusion" in "pericardial effusion")."""
    out: dict[str, str] = {}
    short = 3 if lang == "en" else 2
    for tid, t in glossary.terms.items():
        names = [t.names.get(lang, "")]
        if lang == "en" and t.plural_en:
            names.append(t.plural_en)
        names += [s for s in t.synonyms.get(lang, ()) if (" " in s if lang == "en" else len(s) >= 3)]
        for n in names:
            if n and len(n) >= short and n.lower() not in ("body",):
                out.setdefault(n.lower(), tid)
    return out


@lru_cache(maxsize=8)
def _span_index(glossary: Glossary, lang: str) -> tuple[re.Pattern[str], dict[str, str]]:
    names = _names_of(glossary, lang)
    if lang == "zh":
        alts = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
        return re.compile(f"(?:{alts})"), names
    return _name_pattern(tuple(names)), names


def term_spans(text: str, glossary: Glossary, lang: str) -> list[tuple[int, int, str]]:
    """``(start, end, term id)`` of every glossary name in ``text`` (left to right, longest match first)."""
    pattern, names = _span_index(glossary, lang)
    return [(m.start(), m.end(), names[m.group(0).lower()]) for m in pattern.finditer(text)]


def has_cjk(text: str) -> bool:
    return bool(_CJK.search(text))


def slice_report(sentences: Iterable[RegionSentence]) -> dict[str, dict[str, str]]:
    """term -> lang -> the sentences about it joined, from a display slice's report sentences (only languages
    in which every sentence of that term has text: a half-translated region has no line in that language)."""
    by_term: dict[str, list[RegionSentence]] = {}
    for s in sentences:
        by_term.setdefault(s.term, []).append(s)
    out: dict[str, dict[str, str]] = {}
    for term, group in by_term.items():
        langs = set.intersection(*(set(s.text) for s in group))
        texts = {lang: join_sentences([s.text[lang] for s in group], lang) for lang in sorted(langs)}
        if texts:
            out[term] = texts
    return out
