"""Glossary-safe translation of report sentences, reviewed by a person before it enters a release.

Report-grounded sources have their reports in one language (MIMIC-CXR, CT-RATE: English; a hospital's own:
Chinese).  ``medreg translate run --card CARD --config FILE`` translates their sentences into the other
language through an OpenAI-compatible chat endpoint (the ``openai`` client, :class:`~pipeline.evaluate.llm.LLMClient`
with its JSON directory cache and retries), as ``medreg expand`` drafts templates:

1. **Terms are fixed first.**  Every glossary name in a sentence ("right lung", "pleural effusion") is replaced
   by a placeholder ``⟦T1⟧`` that the model must keep verbatim; the placeholder becomes the glossary's display
   name in the target language afterwards (右肺, 胸腔积液), so a term is never translated by the model.
2. **Replies are checked**: every placeholder exactly once and no other, no other name of a protected term in
   the target language (a re-translation beside or instead of the placeholder), text in the target script, no
   grounding markup.  A reply that fails is listed under ``rejected`` with the reason, never proposed.
3. **Review.**  Valid translations go to a review file (YAML) with ``accepted: false``; a person sets
   ``accepted: true`` (and may edit ``translation``) and runs ``medreg translate accept REVIEW --into FILE``.
   Accepting re-checks each entry (the fixed terms' display names must still be there) and merges it into the
   **accepted-translations file**, the only thing a build reads (card ``report.translations`` or the release
   config's ``sources: [{card, translations}]``).  Without an accepted translation a sentence has no row in the
   other language (the build counts ``row:report_untranslated:<lang>``).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.core.atomic import write_bytes_atomic
from pipeline.evaluate.llm import ExpandError, LLMClient, LLMConfig, ReviewResult, write_review_file
from pipeline.language.report_text import clean_sentence, has_cjk, term_spans
from schemas.yamlio import YamlError, load_yaml

__all__ = [
    "Protected", "TranslateConfig", "TranslateResult", "accept_translations", "check_reply", "load_accepted",
    "load_translate_config", "protect", "run_translate",
]

PLACEHOLDER = "⟦T{}⟧"
_PH = re.compile(r"⟦T(\d+)⟧")
_LANG_NAMES = {"en": "English", "zh": "Simplified Chinese"}
ACCEPTED_KIND = "accepted-translations"


class TranslateConfig(BaseModel):
    """The translation config (YAML); relative paths are relative to the config file."""

    model_config = ConfigDict(extra="forbid")

    llm: LLMConfig = Field(default_factory=lambda: LLMConfig(temperature=0.0))
    cache_dir: str = ".medreg-cache/llm"
    review_file: str | None = None  # default: translate-<source>.review.yaml beside the config
    target_lang: str | None = None  # default: the other of en / zh
    base_dir: str = Field(".", exclude=True)

    def path(self, p: str) -> Path:
        q = Path(p).expanduser()
        return q if q.is_absolute() else Path(self.base_dir) / q


def load_translate_config(path: str | Path) -> TranslateConfig:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"translation config {path} not found (docs/adding-a-source.md has an example)")
    try:
        data = load_yaml(path, what="translation config", name=str(path)) or {}
        cfg = TranslateConfig.model_validate(data)
    except (YamlError, ValidationError) as exc:
        raise ExpandError(f"{path}: invalid translation config: {exc}") from None
    cfg.base_dir = str(path.resolve().parent)
    return cfg


# ----------------------------------------------------------------------------------------- placeholders


@dataclass
class Protected:
    """A sentence with its glossary terms replaced by placeholders."""

    source: str
    text: str  # the sentence with ⟦Tn⟧ placeholders
    terms: list[dict[str, str]] = field(default_factory=list)  # placeholder, term, source_text, target


def protect(text: str, glossary: Any, source_lang: str, target_lang: str) -> Protected:
    """Replace every glossary name of ``text`` (longest match first) by a placeholder; each placeholder
    records the term and its display name in ``target_lang``."""
    out: list[str] = []
    terms: list[dict[str, str]] = []
    pos = 0
    for start, end, tid in term_spans(text, glossary, source_lang):
        if start < pos:
            continue
        ph = PLACEHOLDER.format(len(terms) + 1)
        out.append(text[pos:start] + ph)
        terms.append({"placeholder": ph, "term": tid, "source_text": text[start:end],
                      "target": glossary.display(tid, target_lang)})
        pos = end
    out.append(text[pos:])
    return Protected(text, "".join(out), terms)


def _other_names(glossary: Any, tid: str, lang: str) -> list[str]:
    """The term's synonyms in ``lang`` that may not stand beside its placeholder (Chinese: two characters or
    more, so that 心 of the heart does not refuse 心包积液)."""
    t = glossary.terms[tid]
    return [n for n in t.synonyms.get(lang, ()) if n and (lang != "zh" or len(n) >= 2)]


def _mentions(text: str, name: str, lang: str) -> bool:
    if lang == "zh" and has_cjk(name):
        return name in text
    return re.search(r"(?<![A-Za-z])" + re.escape(name) + r"(?![A-Za-z])", text, re.IGNORECASE) is not None


def check_reply(reply: str, prot: Protected, glossary: Any, target_lang: str) -> tuple[str | None, str]:
    """``(translation, "")`` for a usable reply (placeholders replaced by the target display names), else
    ``(None, reason)``."""
    text = reply.strip().strip("`").strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'“”「":
        text = text[1:-1].strip()
    if not text:
        return None, "empty reply"
    seen = [int(n) for n in _PH.findall(text)]
    want = list(range(1, len(prot.terms) + 1))
    for n in want:
        if seen.count(n) != 1:
            t = prot.terms[n - 1]
            how = "missing: the model dropped the term or translated it itself" if n not in seen else "repeated"
            return None, f"placeholder {t['placeholder']} ({t['source_text']} -> {t['target']}) {how}"
    extra = sorted(set(seen) - set(want))
    if extra:
        return None, f"unknown placeholder(s) {[PLACEHOLDER.format(n) for n in extra]} in the reply"
    bare = _PH.sub("", text)
    for t in prot.terms:
        for name in (t["source_text"], *_other_names(glossary, t["term"], target_lang)):
            if name and _mentions(bare, name, target_lang):
                return None, (f"the term {t['source_text']!r} was re-translated or repeated outside "
                              f"{t['placeholder']}: {name!r}")
    if target_lang == "zh" and (any(not w.isupper() for w in re.findall(r"[A-Za-z]{4,}", bare))
                                or not has_cjk(bare + "".join(t["target"] for t in prot.terms))):
        return None, "the reply is not Chinese (English words left untranslated)"
    if target_lang == "en" and has_cjk(bare):
        return None, "the reply still holds Chinese text"
    for t in prot.terms:
        text = text.replace(t["placeholder"], t["target"])
    cleaned = clean_sentence(text, target_lang)
    if cleaned is None:
        return None, "the reply holds grounding markup (< > [[ ]])"
    return cleaned, ""


def _messages(prot: Protected, source_lang: str, target_lang: str) -> list[dict[str, str]]:
    src, tgt = _LANG_NAMES.get(source_lang, source_lang), _LANG_NAMES.get(target_lang, target_lang)
    system = (
        f"You translate sentences of radiology reports from {src} into {tgt}. Placeholders such as ⟦T1⟧ stand "
        "for anatomical and finding terms that are translated separately: keep every placeholder exactly as "
        "written, once each, where its words belong, and do not translate or repeat the terms they stand for. "
        "Keep negations, sides (left/right), sizes and numbers exactly. Reply with the translation only."
    )
    if target_lang == "zh":
        system += " Use full-width Chinese punctuation."
    return [{"role": "system", "content": system}, {"role": "user", "content": prot.text}]


# ----------------------------------------------------------------------------------------- run


@dataclass
class TranslateResult(ReviewResult):
    """What ``medreg translate run`` did (:class:`~pipeline.evaluate.llm.ReviewResult`)."""


_REVIEW_HEADER = (
    "# medreg translation review file.\n"
    "# Each entry is an LLM translation of a report sentence whose glossary terms were fixed as placeholders\n"
    "# and replaced by the glossary's display names; none is in any release yet.\n"
    "# Set `accepted: true` on the entries to keep (edit `translation` if you like; keep the fixed terms), then\n"
    "#   medreg translate accept {path} --into ACCEPTED.yaml\n"
    "# `rejected` lists replies that failed the checks, for information only (never applied).\n"
)


def entry_id(source_lang: str, target_lang: str, source: str) -> str:
    return hashlib.sha256(f"{source_lang}>{target_lang}:{source}".encode()).hexdigest()[:16]


def _other(lang: str) -> str:
    return "zh" if lang == "en" else "en"


def run_translate(
    sentences: list[tuple[str, str]],
    cfg: TranslateConfig,
    glossary: Any,
    *,
    source_name: str = "source",
    review_path: str | Path | None = None,
    client: LLMClient | None = None,
    accepted: dict[tuple[str, str, str], str] | None = None,
) -> TranslateResult:
    """Translate every distinct ``(language, sentence)`` into the other language (``cfg.target_lang`` when set;
    sentences already in that language or already accepted are skipped) and write the review file."""
    client = client or LLMClient(cfg.llm, cfg.path(cfg.cache_dir))
    done = accepted or {}
    entries: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    for source_lang, source in sorted(dict.fromkeys((lang, s) for lang, s in sentences if s)):
        target_lang = cfg.target_lang or _other(source_lang)
        if target_lang == source_lang or (source_lang, target_lang, source) in done:
            continue
        prot = protect(source, glossary, source_lang, target_lang)
        reply = client.chat(_messages(prot, source_lang, target_lang))
        text, why = check_reply(reply, prot, glossary, target_lang)
        base = {"id": entry_id(source_lang, target_lang, source), "source": source, "source_lang": source_lang,
                "target_lang": target_lang}
        if text is None:
            rejected.append({**base, "reply": reply, "reason": why})
            continue
        entries.append({**base, "protected": prot.text, "terms": prot.terms, "translation": text,
                        "accepted": False})
    out = Path(review_path) if review_path else cfg.path(cfg.review_file or f"translate-{source_name}.review.yaml")
    doc = {"kind": "translations", "model": client.model, "entries": entries, "rejected": rejected}
    write_review_file(out, _REVIEW_HEADER, doc)
    return TranslateResult(out, len(entries), len(rejected), client.requests, client.cache_hits)


# ----------------------------------------------------------------------------------------- accept


def load_accepted(path: str | Path | None) -> dict[tuple[str, str, str], str]:
    """(source language, target language, source sentence) -> accepted translation; ``{}`` without a file."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"accepted-translations file {path.name} not found: run `medreg translate accept`")
    doc = load_yaml(path, what="accepted translations", name=path.name) or {}
    if not isinstance(doc, dict) or doc.get("kind") != ACCEPTED_KIND or not isinstance(doc.get("entries"), list):
        raise ExpandError(f"{path.name}: not an accepted-translations file (kind: {ACCEPTED_KIND}, entries: [...])")
    out: dict[tuple[str, str, str], str] = {}
    for e in doc["entries"]:
        if isinstance(e, dict) and all(isinstance(e.get(k), str) for k in ("source", "source_lang", "target_lang",
                                                                            "text")):
            out[(e["source_lang"], e["target_lang"], e["source"])] = e["text"]
    return out


def _recheck(e: dict[str, Any]) -> tuple[str | None, str]:
    """An accepted entry's (possibly edited) translation, checked again."""
    text, tgt = e.get("translation"), e.get("target_lang")
    if not isinstance(text, str) or not isinstance(tgt, str) or not isinstance(e.get("source"), str):
        return None, "missing source / translation / target_lang"
    for t in e.get("terms") or []:
        if t.get("target") and t["target"] not in text:
            return None, f"the fixed term {t['target']!r} ({t.get('source_text')}) is no longer in the translation"
    if tgt == "zh" and not has_cjk(text):
        return None, "the translation is not Chinese"
    cleaned = clean_sentence(text, tgt)
    return (cleaned, "") if cleaned else (None, "empty or holds grounding markup")


def accept_translations(review_file: str | Path, accepted_file: str | Path) -> tuple[int, list[str]]:
    """Merge the review file's ``accepted: true`` entries into the accepted-translations file (created when
    absent).  Returns (entries added or changed, reasons for entries skipped)."""
    review_file, accepted_file = Path(review_file), Path(accepted_file)
    doc = load_yaml(review_file, what="translation review file", name=review_file.name) or {}
    if not isinstance(doc, dict) or doc.get("kind") != "translations" or not isinstance(doc.get("entries"), list):
        raise ExpandError(f"{review_file.name}: not a translation review file (kind: translations)")
    current = load_accepted(accepted_file) if accepted_file.is_file() else {}
    changed, skipped = 0, []
    for e in doc["entries"]:
        if not isinstance(e, dict) or e.get("accepted") is not True:
            continue
        text, why = _recheck(e)
        if text is None:
            skipped.append(f"{e.get('id')}: {why}")
            continue
        key = (str(e.get("source_lang")), str(e["target_lang"]), str(e["source"]))
        if current.get(key) != text:
            current[key] = text
            changed += 1
    entries = [{"source": s, "source_lang": a, "target_lang": b, "text": t} for (a, b, s), t in sorted(current.items())]
    body = yaml.safe_dump({"kind": ACCEPTED_KIND, "entries": entries}, allow_unicode=True, sort_keys=False, width=1000)
    header = "# Accepted translations of report sentences (medreg translate accept). A build reads only this file.\n"
    accepted_file.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(accepted_file, (header + body).encode("utf-8"))
    return changed, skipped
