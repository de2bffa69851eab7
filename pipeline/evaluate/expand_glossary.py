"""``medreg expand glossary``: display names / synonyms for glossary terms, drafted by the LLM and validated
(allowed characters, language, not already a name of another term) before they are proposed in the review
file."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.evaluate.expand_config import ExpandConfig
from pipeline.evaluate.llm import ExpandError, LLMClient, json_from_reply
from schemas.yamlio import load_yaml

__all__ = ["expand_glossary", "validate_name"]

_CJK = re.compile(r"[\u3400-\u9fff]")


_SYSTEM = "You are a bilingual (English/Chinese) medical terminologist. You reply with JSON only."


def _glossary_messages(terms: list[dict[str, Any]], langs: list[str], n: int) -> list[dict[str, str]]:
    lines = [
        "For each medical imaging term below, propose other names that radiologists and clinicians use for "
        f"exactly the same structure or finding, in these languages: {', '.join(langs)}.",
        "Rules: the same meaning only (not a broader or narrower structure, and keep the side for left/right terms); "
        "no abbreviations that could mean something else; no brackets or angle brackets; "
        "Chinese names in Chinese characters.",
        f"At most {n} new names per term and language. "
        "If a term has no name yet in a language, put the best name first.",
        'Reply with one JSON object and nothing else: {"<term id>": {"<language>": ["name", ...], ...}, ...}',
        "Terms (id: current names):",
    ]
    for t in terms:
        lines.append(f"  {t['id']}: " + json.dumps(t["names"], ensure_ascii=False))
    return [
        {"role": "system", "content": _SYSTEM},
        {"role": "user", "content": "\n".join(lines)},
    ]


def _glossary_files(data_dir: Path) -> dict[str, Path]:
    """term id -> glossary file that defines it."""
    out: dict[str, Path] = {}
    for p in sorted((data_dir / "glossary").glob("*.yaml")):
        data = load_yaml(p, what="glossary file") or {}
        for tid in data:
            out[str(tid)] = p
    return out


def validate_name(glossary: Any, tid: str, lang: str, name: str) -> str | None:
    """Why ``name`` cannot become a ``lang`` name of term ``tid`` (``None`` when it can)."""
    from pipeline.language.glossary import normalise_name
    from schemas.language import FORBIDDEN_NAME_CHARS

    if not isinstance(name, str) or not name.strip():
        return "empty name"
    if name != name.strip() or "  " in name or "\n" in name:
        return "leading/trailing or double spaces"
    bad = FORBIDDEN_NAME_CHARS.intersection(name)
    if bad:
        return f"contains {''.join(sorted(bad))!r}, which the grounding syntax reserves"
    if len(name) > 80:
        return "longer than 80 characters"
    if lang == "zh" and not _CJK.search(name):
        return "a zh name must contain Chinese characters"
    if lang == "en" and _CJK.search(name):
        return "an en name must not contain Chinese characters"
    other = glossary.resolve(name)
    if other is not None and other != tid:
        return f"already means {other!r}"
    if other == tid:
        key = normalise_name(name)
        t = glossary.term(tid)
        mine = [t.names.get(lang, ""), *t.synonyms.get(lang, ())]
        if any(normalise_name(x) == key for x in mine if x):
            return "already a name of this term"
        # matches through another language / the word-order-free key: still new as a written form
    return None


def _current_names(term: Any, lang: str) -> list[str]:
    """The term's display name and synonyms in ``lang``."""
    return [n for n in [term.names.get(lang), *term.synonyms.get(lang, ())] if n]


@dataclass
class _Drafts:
    """The review entries and the rejections of one glossary expansion; ``proposed_keys``: which term each
    proposed name (normalised) went to, so that a name is proposed once and for one term only."""

    glossary: Any
    files: dict[str, Path]
    max_per_term: int
    entries: list[dict] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)
    proposed_keys: dict[str, str] = field(default_factory=dict)

    def _why_not(self, tid: str, lang: str, name: Any) -> str | None:
        why = validate_name(self.glossary, tid, lang, name)
        if why is not None:
            return why
        from pipeline.language.glossary import normalise_name

        k = normalise_name(name)
        if k in self.proposed_keys:
            return f"also proposed for {self.proposed_keys[k]!r}" if self.proposed_keys[k] != tid else "proposed twice"
        self.proposed_keys[k] = tid
        return None

    def add(self, tid: str, lang: str, names: Any) -> None:
        """The model's names for term ``tid`` in ``lang`` (a list, or one string): the first valid ones are
        proposed (the first of a language the term has no name in yet as its display name), the rest rejected."""
        if isinstance(names, str):
            names = [names]
        if not isinstance(names, list):
            text = json.dumps(names, ensure_ascii=False)
            self.rejected.append({"term": tid, "lang": lang, "text": text, "reason": "not a list of names"})
            return
        kept = 0
        has_display = lang in self.glossary.term(tid).names
        for name in names:
            if kept >= self.max_per_term:
                break
            name = name.strip() if isinstance(name, str) else name
            why = self._why_not(tid, lang, name)
            if why is not None:
                self.rejected.append({"term": tid, "lang": lang, "text": str(name), "reason": why})
                continue
            fld = lang if not has_display else f"synonyms_{lang}"
            has_display = True  # the first new name of a missing language becomes its display name
            self.entries.append({
                "term": tid,
                "file": self.files[tid].name,
                "field": fld,
                "value": name,
                "current": {lang: _current_names(self.glossary.term(tid), lang)},
                "accepted": False,
            })
            kept += 1


def expand_glossary(cfg: ExpandConfig, client: LLMClient) -> tuple[list[dict], list[dict]]:
    from pipeline.language.glossary import Glossary, _load_spec

    data_dir = cfg.language_dir()
    g = Glossary(_load_spec(data_dir / "glossary"), origin="")
    ids = cfg.glossary.terms or list(g.terms)
    unknown = [t for t in ids if t not in g.terms]
    if unknown:
        raise ExpandError(f"unknown term id(s) {unknown}")
    langs = list(cfg.glossary.langs)
    drafts = _Drafts(g, _glossary_files(data_dir), cfg.glossary.max_per_term)
    bs = cfg.glossary.batch_size
    for start in range(0, len(ids), bs):
        batch = ids[start : start + bs]
        terms = [
            {"id": tid, "names": {lang: _current_names(g.term(tid), lang) for lang in sorted(set(langs) | {"en"})}}
            for tid in batch
        ]
        reply = client.chat(_glossary_messages(terms, langs, cfg.glossary.max_per_term))
        try:
            obj = json_from_reply(reply)
            if not isinstance(obj, dict):
                raise ValueError("the reply is not a JSON object")
        except ValueError as exc:
            drafts.rejected.append({"terms": batch, "text": reply[:500], "reason": f"unreadable reply: {exc}"})
            continue
        for tid in batch:
            per_lang = obj.get(tid) or {}
            if not isinstance(per_lang, dict):
                drafts.rejected.append({"term": tid, "text": json.dumps(per_lang, ensure_ascii=False),
                                        "reason": "not an object of language -> names"})
                continue
            for lang in langs:
                drafts.add(tid, lang, per_lang.get(lang) or [])
    return drafts.entries, drafts.rejected
