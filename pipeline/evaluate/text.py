"""Terms and text for the evaluation kit: tokenising (jieba for Chinese), token F1 and BLEU-1, spotting
glossary terms in free text, resolving a parsed ``<ref>`` to a term id, and absent-target phrases."""

from __future__ import annotations

import logging
import math
import re
import weakref
from collections import Counter
from functools import lru_cache
from typing import Any

from pipeline.evaluate.answers import normalise_text, strip_grounding
from pipeline.language.glossary import Glossary, load_glossary, normalise_name

__all__ = ["bleu1", "resolve_ref", "says_absent", "spot_terms", "text_f1", "tokenize"]


# ----------------------------------------------------------------------------------------- tokenising


@lru_cache(maxsize=4)
def _tokenizer(glossary_origin: str) -> Any:
    """A private jieba tokenizer that knows every Chinese glossary name (so ``右肾上腺`` stays whole)."""
    import jieba

    jieba.setLogLevel(logging.WARNING)
    tk = jieba.Tokenizer()
    g = load_glossary(glossary_origin or None)
    for t in g.terms.values():
        for name in (*t.names.values(), *(s for syn in t.synonyms.values() for s in syn), *t.aliases):
            if re.search(r"[\u3400-\u9fff]", name):
                tk.add_word(normalise_text(name).replace(" ", ""), freq=200000)
    tk.initialize()
    return tk


def _jieba(glossary: Glossary) -> Any:
    return _tokenizer(glossary.origin)


_WORDISH = re.compile(r"[0-9A-Za-z\u3400-\u9fff]")
_EN_WORD = re.compile(r"[0-9a-z]+(?:'[a-z]+)?")


def tokenize(text: str, lang: str, glossary: Glossary | None = None) -> list[str]:
    """Tokens for text-overlap metrics: jieba words for Chinese (never whitespace), lower-cased words
    for English; punctuation dropped.  Latin runs inside Chinese text are split into words too."""
    text = normalise_text(text or "")
    if lang == "zh" or re.search(r"[\u3400-\u9fff]", text):
        g = glossary or load_glossary()
        out: list[str] = []
        for tok in _jieba(g).lcut(text, HMM=True):
            tok = tok.strip()
            if not tok or not _WORDISH.search(tok):
                continue
            if re.search(r"[\u3400-\u9fff]", tok):
                out.append(tok)
            else:
                out.extend(_EN_WORD.findall(tok.lower()))
        return out
    return _EN_WORD.findall(text.lower())


def text_f1(pred: str, ref: str, lang: str, glossary: Glossary | None = None) -> float:
    """Token-level F1 (bag of tokens, SQuAD style) between two texts; 1.0 when both are empty."""
    p = Counter(tokenize(pred, lang, glossary))
    r = Counter(tokenize(ref, lang, glossary))
    if not p and not r:
        return 1.0
    common = sum((p & r).values())
    if common == 0:
        return 0.0
    prec = common / sum(p.values())
    rec = common / sum(r.values())
    return 2 * prec * rec / (prec + rec)


def bleu1(pred_tokens: list[str], ref_tokens: list[str]) -> float:
    """Sentence BLEU-1: clipped unigram precision times the brevity penalty ``exp(1 - r/c)`` when the
    prediction is shorter than the reference (``c <= r``; 1 otherwise); 0.0 for an empty prediction."""
    if not pred_tokens or not ref_tokens:
        return 0.0
    p, r = Counter(pred_tokens), Counter(ref_tokens)
    precision = sum((p & r).values()) / len(pred_tokens)
    c, rl = len(pred_tokens), len(ref_tokens)
    bp = 1.0 if c > rl else math.exp(1 - rl / c)
    return precision * bp


# ----------------------------------------------------------------------------------------- terms

#: Single words that are synonyms of a term but too generic to count when met inside running text
#: (``vertebral body``, ``whole body``).  A whole answer that is just the word still resolves.
_GENERIC_IN_TEXT = frozenset({"body"})
_MAX_NGRAM = 8


def _word_tokens(text: str, glossary: Glossary) -> list[str]:
    toks = _jieba(glossary).lcut(normalise_text(text), HMM=False)
    out = []
    for tok in toks:
        tok = tok.strip()
        if tok and _WORDISH.search(tok):
            out.append(tok)
    return out


def spot_terms(text: str, glossary: Glossary | None = None) -> list[str]:
    """Glossary term ids named in free text, in order of appearance, de-duplicated.

    The text is tokenised (jieba, which also splits English on spaces and punctuation, with every Chinese
    glossary name registered) and scanned left to right for the longest run of up to 8 tokens that the
    glossary resolves (display names, synonyms, aliases, any language, English word order free).  Boxes
    and grounding tags are removed first.
    """
    g = glossary or load_glossary()
    cache = _SPOT_CACHE.setdefault(g, {})
    hit = cache.get(text)
    if hit is None:
        if len(cache) > 100_000:
            cache.clear()
        hit = cache[text] = tuple(_spot(text, g))
    return list(hit)


_SPOT_CACHE: weakref.WeakKeyDictionary[Glossary, dict[str, tuple[str, ...]]] = weakref.WeakKeyDictionary()


def _spot(text: str, g: Glossary) -> list[str]:
    plain = strip_grounding(text or "")
    if not plain:
        return []
    whole = g.resolve(plain)
    if whole is not None:
        return [whole]
    words = _word_tokens(plain, g)
    found: list[str] = []
    i = 0
    while i < len(words):
        hit = None
        for n in range(min(_MAX_NGRAM, len(words) - i), 0, -1):
            cand = " ".join(words[i : i + n])
            if n == 1 and normalise_name(cand) in _GENERIC_IN_TEXT:
                continue
            tid = g.resolve(cand)
            if tid is not None:
                hit = (tid, n)
                break
        if hit is None:
            i += 1
            continue
        if hit[0] not in found:
            found.append(hit[0])
        i += hit[1]
    return found


def resolve_ref(term_text: str | None, g: Glossary) -> str | None:
    """Term id of a parsed ref's text: a direct glossary match, else the last term named in it
    (``The requested objects are located at liver`` -> ``liver``)."""
    if not term_text:
        return None
    tid = g.resolve(term_text)
    if tid is not None:
        return tid
    spotted = spot_terms(term_text, g)
    return spotted[-1] if spotted else None


# ----------------------------------------------------------------------------------------- absent targets

_ABSENT_EN = re.compile(
    r"\bnot\s+(?:be\s+)?(?:present|visible|seen|found|shown|detected|identified|depicted|located|observed|"
    r"appear\w*|include\w*|contain\w*|there|in\s+(?:this|the)\s+image)\b"
    r"|\b(?:absent|missing|none)\b"
    r"|\bno\b"
    r"|\b(?:cannot|can't|can\s+not|could\s+not|couldn't|unable\s+to)\s+(?:be\s+)?"
    r"(?:find|found|see|seen|locate|located|detect|detected|identify|identified|observe|observed)\b"
    r"|\b(?:does|do|did|is|are)\s*(?:n't|not)\s+(?:show|appear|contain|include|exist|depict|present|visible|seen)\w*",
    re.IGNORECASE,
)
_ABSENT_ZH = re.compile(
    r"没有|未见|未发现|未显示|未出现|未找到|未能|找不到|看不到|见不到|不存在|不包含|不在|不可见|并无|"
    r"无法(?:找到|定位|识别|看到|检出|发现)|未检出|缺如|不显示"
)


def says_absent(text: str) -> bool:
    """True when an answer states that the requested target is not in the image (English or Chinese)."""
    t = normalise_text(strip_grounding(text or ""))
    return bool(_ABSENT_EN.search(t) or _ABSENT_ZH.search(t))
