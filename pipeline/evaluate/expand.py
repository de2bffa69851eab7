"""LLM-assisted expansion of the language banks, with a human in the loop.

``medreg expand templates --config FILE`` asks an OpenAI-compatible chat-completions endpoint to
paraphrase the shipped instruction templates; ``medreg expand glossary --config FILE`` asks it to draft
display names / synonyms for glossary terms.  Nothing generated enters the banks directly:

1. every generated item is validated first (templates: the bank's own load-time rules -- placeholders
   allowed and required for the slot, one ``{box}``/``{ref}``/... at most, balanced brackets, language
   punctuation, no literal tags, no duplicate -- plus the rendered text's ``<ref>``/``<box>`` markup;
   glossary names: allowed characters, language, not already a name of another term);
2. valid items are written to a **review file** (YAML) with ``accepted: false``; invalid ones are listed
   under ``rejected`` with the reason;
3. a person sets ``accepted: true`` on the entries to keep and runs ``medreg expand accept FILE``, which
   shows a unified diff of the bank files and writes only the accepted entries (after validating the
   whole edited bank / glossary again).

LLM calls are cached on disk (key = sha256 of the model name and the messages) and retried with
exponential backoff on connection errors, timeouts, 429 and 5xx.  The endpoint, model and key come from
the config or the environment (``MEDREG_LLM_BASE_URL``, ``MEDREG_LLM_MODEL``, ``MEDREG_LLM_API_KEY``);
the key is never written anywhere.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.core.atomic import write_bytes_atomic
from pipeline.core.jsoncache import JsonDirCache, cache_key
from schemas.language import NAME_REQUIRED, SLOTS, TASK_ABBR, TemplateBankSpec
from schemas.yamlio import YamlError, load_yaml, load_yaml_text

__all__ = [
    "AcceptPlan",
    "ExpandConfig",
    "ExpandError",
    "ExpandResult",
    "LLMClient",
    "load_expand_config",
    "plan_accept",
    "run_expand",
    "validate_template",
]

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1] / "language" / "data"
ENV_BASE_URL = "MEDREG_LLM_BASE_URL"
ENV_MODEL = "MEDREG_LLM_MODEL"
ENV_API_KEY = "MEDREG_LLM_API_KEY"
_CJK = re.compile(r"[\u3400-\u9fff]")


class ExpandError(RuntimeError):
    """A problem the user can fix (config, endpoint, review file)."""


# ----------------------------------------------------------------------------------------- config


class LLMConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_url: str | None = None  # default: $MEDREG_LLM_BASE_URL
    model: str | None = None  # default: $MEDREG_LLM_MODEL
    api_key_env: str = ENV_API_KEY  # name of the environment variable holding the key (never the key)
    temperature: float = Field(0.8, ge=0.0, le=2.0)
    max_tokens: int | None = Field(None, ge=1)
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(4, ge=0)
    backoff_s: float = Field(1.0, ge=0.0)  # first wait; doubles each retry


class TemplateExpandConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    banks: list[str] | None = None  # "<task>.<lang>" names; default: every bank
    slots: list[str] | None = None  # default: every slot
    seeds_per_slot: int = Field(4, ge=1)  # existing templates paraphrased per slot (first ones by id)
    per_seed: int = Field(3, ge=1)  # paraphrases asked for per seed


class GlossaryExpandConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    terms: list[str] | None = None  # term ids; default: every term
    langs: list[str] = ["en", "zh"]  # languages to draft names for
    batch_size: int = Field(20, ge=1)  # terms per request
    max_per_term: int = Field(3, ge=1)  # new names kept per term and language


class ExpandConfig(BaseModel):
    """The expansion config (YAML).  Relative paths are relative to the config file."""

    model_config = ConfigDict(extra="forbid")

    llm: LLMConfig = Field(default_factory=LLMConfig)
    cache_dir: str = ".medreg-cache/llm"
    review_file: str | None = None  # default: expand-<kind>.review.yaml beside the config
    data_dir: str | None = None  # language data folder; default: pipeline/language/data
    templates: TemplateExpandConfig = Field(default_factory=TemplateExpandConfig)
    glossary: GlossaryExpandConfig = Field(default_factory=GlossaryExpandConfig)
    base_dir: str = Field(".", exclude=True)  # folder of the config file (set by load_expand_config)

    def path(self, p: str) -> Path:
        q = Path(p).expanduser()
        return q if q.is_absolute() else Path(self.base_dir) / q

    def language_dir(self) -> Path:
        return self.path(self.data_dir) if self.data_dir else DEFAULT_DATA_DIR


def load_expand_config(path: str | Path) -> ExpandConfig:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"expansion config {path} not found (docs/evaluation.md has an example)")
    try:
        data = load_yaml(path, what="expansion config", name=str(path)) or {}
    except YamlError as exc:
        raise ExpandError(str(exc)) from None
    if not isinstance(data, dict):
        raise ExpandError(f"{path}: must be a mapping")
    try:
        cfg = ExpandConfig.model_validate(data)
    except ValidationError as exc:
        lines = [f"{path}: invalid expansion config:"]
        for e in exc.errors():
            lines.append(f"  {'.'.join(str(x) for x in e['loc'])}: {e['msg']}")
        raise ExpandError("\n".join(lines)) from None
    cfg.base_dir = str(path.resolve().parent)
    return cfg


# ----------------------------------------------------------------------------------------- LLM client


def llm_cache_key(model: str, messages: list[dict[str, str]]) -> str:
    """The cache key of one request: the model name and the messages (canonical JSON)."""
    return cache_key({"model": model, "messages": messages})


class LLMClient:
    """Chat completions through the ``openai`` client, with a disk cache and retries with backoff."""

    def __init__(
        self,
        cfg: LLMConfig,
        cache_dir: str | Path,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = cfg.base_url or os.environ.get(ENV_BASE_URL)
        self.model = cfg.model or os.environ.get(ENV_MODEL)
        if not self.base_url:
            raise ExpandError(f"no LLM endpoint: set llm.base_url in the config or ${ENV_BASE_URL}")
        if not self.model:
            raise ExpandError(f"no LLM model: set llm.model in the config or ${ENV_MODEL}")
        self.cfg = cfg
        self.cache_dir = Path(cache_dir)
        self.cache = JsonDirCache(self.cache_dir)
        self.sleep = sleep
        self.requests = 0  # HTTP requests made (retries included)
        self.cache_hits = 0
        self._client: Any = None

    def _openai(self) -> Any:
        if self._client is None:
            import openai

            key = os.environ.get(self.cfg.api_key_env) or "not-needed"  # local servers accept any key
            # retries are ours (counted, backed off); the client's own are switched off
            self._client = openai.OpenAI(base_url=self.base_url, api_key=key, max_retries=0, timeout=self.cfg.timeout_s)
        return self._client

    def chat(self, messages: list[dict[str, str]]) -> str:
        """The assistant's reply text (from the cache when this model has seen these messages)."""
        import openai

        key = llm_cache_key(self.model, messages)
        hit = self.cache.get(key)
        if hit is not None and isinstance(hit.get("content"), str):
            self.cache_hits += 1
            return str(hit["content"])
        client = self._openai()
        params: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": self.cfg.temperature}
        if self.cfg.max_tokens:
            params["max_tokens"] = self.cfg.max_tokens
        last: Exception | None = None
        for attempt in range(self.cfg.max_retries + 1):
            if attempt:
                self.sleep(self.cfg.backoff_s * (2 ** (attempt - 1)))
            self.requests += 1
            try:
                resp = client.chat.completions.create(**params)
            except (openai.APIConnectionError, openai.APITimeoutError, openai.RateLimitError, openai.InternalServerError) as exc:
                last = exc
                continue
            except openai.APIStatusError as exc:
                if exc.status_code >= 500:
                    last = exc
                    continue
                raise ExpandError(f"LLM endpoint {self.base_url} refused the request: HTTP {exc.status_code}: {exc}") from exc
            content = resp.choices[0].message.content if resp.choices else None
            if content is None:
                last = ExpandError("empty reply")
                continue
            self.cache.put(key, {"model": self.model, "messages": messages, "content": content})
            return content
        raise ExpandError(
            f"LLM endpoint {self.base_url} failed after {self.cfg.max_retries + 1} attempt(s): {type(last).__name__}: {last}"
        )


# ----------------------------------------------------------------------------------------- helpers


def _json_from_reply(text: str) -> Any:
    """The JSON value in a model reply (code fences and chatter around it are tolerated)."""
    t = text.strip()
    fence = re.search(r"```(?:json)?\s*(.*?)```", t, re.DOTALL)
    if fence:
        t = fence.group(1).strip()
    try:
        return json.loads(t)
    except json.JSONDecodeError:
        pass
    for open_c, close_c in (("[", "]"), ("{", "}")):
        i, j = t.find(open_c), t.rfind(close_c)
        if 0 <= i < j:
            try:
                return json.loads(t[i : j + 1])
            except json.JSONDecodeError:
                continue
    raise ValueError("the reply holds no JSON value")


def _read_bank(path: Path) -> dict[str, Any]:
    data = load_yaml(path, what="template bank")
    TemplateBankSpec.model_validate(data)  # the shipped bank must be valid to start with
    return data


def _bank_files(data_dir: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted((data_dir / "templates").glob("*.yaml"))}


def validate_template(
    bank: dict[str, Any], slot: str, text: str, new_id: str, fits: dict[str, Any] | None = None
) -> str | None:
    """Why ``text`` cannot join ``bank`` in ``slot`` under ``new_id`` (``None`` when it can).

    Runs the bank's own load-time validation (:class:`schemas.language.TemplateBankSpec`) on the bank
    with the template added (with ``fits``: the targets it is drawn for, a paraphrase's being its seed's),
    then renders it with sample values and checks the ``<ref>``/``<box>`` markup of the result
    (:func:`pipeline.language.templates.check_grounding`).
    """
    from pipeline.language.templates import check_grounding, sample_values

    if not isinstance(text, str) or not text.strip():
        return "empty template"
    if text != text.strip():
        return "leading or trailing whitespace"
    if "\n" in text:
        return "a template is one line"
    trial = dict(bank)
    template = {"id": new_id, "slot": slot, "text": text, **({"fits": fits} if fits else {})}
    trial["templates"] = [*bank["templates"], template]
    try:
        TemplateBankSpec.model_validate(trial)
    except ValidationError as exc:
        msgs = []
        for e in exc.errors():
            for line in str(e.get("msg", "")).splitlines():
                line = line.strip()
                if new_id in line:
                    prefix = f"{new_id} [{slot}]: "
                    msgs.append(line[len(prefix):] if line.startswith(prefix) else line)
        return "; ".join(msgs) or str(exc).splitlines()[-1]
    try:
        rendered = text.format_map(sample_values(bank.get("lang", "en")))
    except (KeyError, ValueError, IndexError) as exc:
        return f"cannot be rendered: {exc}"
    problems = check_grounding(rendered)
    if problems:
        return "rendered markup: " + "; ".join(problems)
    return None


def _next_id(bank: dict[str, Any], slot: str) -> str:
    """A fresh id for ``slot``: one above the highest number the slot uses (ids are never reused), staying
    out of the hundreds blocks that other slots number in (``q001..`` single, ``q101..`` multi)."""
    letter = "q" if slot.startswith("question") else "a"
    prefix = f"{TASK_ABBR[bank['task']]}.{bank['lang']}.{letter}"
    mine = [int(t["id"][-3:]) for t in bank["templates"] if t["slot"] == slot and t["id"].startswith(prefix)]
    others = {
        int(t["id"][-3:]) // 100 for t in bank["templates"] if t["slot"] != slot and t["id"].startswith(prefix)
    }
    used = {t["id"] for t in bank["templates"]}
    if mine:
        n = max(mine) + 1
    else:
        block = next(b for b in range(10) if b not in others) if len(others) < 10 else 10
        n = block * 100 + 1
    while True:
        if n > 999:
            raise ExpandError(f"no free template id left for {prefix} ({slot})")
        if n // 100 in others and not (mine and n // 100 == max(mine) // 100):
            n = (n // 100 + 1) * 100 + 1
            continue
        cand = f"{prefix}{n:03d}"
        if cand not in used:
            return cand
        n += 1


# ----------------------------------------------------------------------------------------- templates

_TASK_DESCRIPTIONS = {
    "region_to_text": "region-to-text identification: the question gives bounding boxes, the answer names what is inside",
    "text_to_region": "text-to-region detection: the question names structures, the answer gives their bounding boxes",
    "grounded_report": "grounded report generation: describe structures one by one, each with its bounding boxes",
}
_PLACEHOLDER_HELP = {
    "image": "noun phrase for the image, e.g. 'CT image'",
    "modality": "imaging modality, e.g. 'CT'",
    "body_region": "body region word, e.g. 'abdomen'",
    "box": "one bounding box (already formatted)",
    "boxes": "several bounding boxes (already formatted)",
    "n": "a number",
    "term": "the structure's name",
    "Term": "the structure's name, capitalised (sentence start)",
    "ref": "the structure's name with its tags (already formatted)",
    "refs": "several names with tags, joined as a list",
    "grounded": "names with their boxes (already formatted)",
    "position": "where in the image, e.g. 'upper left part of the image'",
    "size": "'small', 'moderate' or 'large'",
}


def _template_messages(bank: dict[str, Any], slot: str, seed: str, existing: list[str], n: int) -> list[dict[str, str]]:
    task, lang = bank["task"], bank["lang"]
    required, optional = SLOTS[task][slot]
    need_one = NAME_REQUIRED.get((task, slot))
    kind = "question" if slot.startswith("question") else "answer"
    allowed = sorted(required | optional)
    lines = [
        f"Dataset task: {_TASK_DESCRIPTIONS[task]}.",
        f"Template slot: {slot} (a {kind} template). Language: {'Chinese' if lang == 'zh' else 'English' if lang == 'en' else lang}.",
        "Placeholders are written in curly braces and are filled in by a program. Allowed placeholders:",
        *[f"  {{{p}}}: {_PLACEHOLDER_HELP.get(p, '')}" for p in allowed],
    ]
    if required:
        lines.append("Every template must contain: " + ", ".join(f"{{{p}}}" for p in sorted(required)) + ".")
    if need_one:
        lines.append("Every template must contain one of: " + ", ".join(f"{{{p}}}" for p in sorted(need_one)) + ".")
    lines += [
        "Use {box}, {boxes}, {ref}, {refs} and {grounded} at most once each. No other curly braces, no tags such as <ref> or <box>, one line each.",
        (
            "Write natural Chinese with full-width punctuation (，。？：), no ASCII punctuation."
            if lang == "zh"
            else "Write natural English with ASCII punctuation only."
        ),
        "Templates that already exist (do not repeat them):",
        *[f"  - {t}" for t in existing],
        f'Write {n} new, varied paraphrases of this template, keeping its meaning: "{seed}"',
        f"Reply with a JSON array of {n} strings and nothing else.",
    ]
    return [
        {"role": "system", "content": "You write paraphrases of instruction templates for a bilingual (English/Chinese) medical imaging dataset. You reply with JSON only."},
        {"role": "user", "content": "\n".join(lines)},
    ]


def _expand_templates(cfg: ExpandConfig, client: LLMClient) -> tuple[list[dict], list[dict]]:
    data_dir = cfg.language_dir()
    files = _bank_files(data_dir)
    names = cfg.templates.banks or list(files)
    unknown = [b for b in names if b not in files]
    if unknown:
        raise ExpandError(f"unknown template bank(s) {unknown}; have {sorted(files)}")
    entries: list[dict] = []
    rejected: list[dict] = []
    for name in names:
        bank = _read_bank(files[name])
        slots = [s for s in SLOTS[bank["task"]] if cfg.templates.slots is None or s in cfg.templates.slots]
        working = dict(bank)
        working["templates"] = list(bank["templates"])
        for slot in slots:
            in_slot = sorted((t for t in bank["templates"] if t["slot"] == slot), key=lambda t: t["id"])
            existing = [t["text"] for t in in_slot]
            for seed in in_slot[: cfg.templates.seeds_per_slot]:
                msgs = _template_messages(bank, slot, seed["text"], existing, cfg.templates.per_seed)
                reply = client.chat(msgs)
                try:
                    cands = _json_from_reply(reply)
                    if not isinstance(cands, list):
                        raise ValueError("the reply is not a JSON array")
                except ValueError as exc:
                    rejected.append({"bank": name, "slot": slot, "seed": seed["id"], "text": reply[:500], "reason": f"unreadable reply: {exc}"})
                    continue
                for text in cands:
                    if not isinstance(text, str):
                        rejected.append({"bank": name, "slot": slot, "seed": seed["id"], "text": json.dumps(text, ensure_ascii=False), "reason": "not a string"})
                        continue
                    text = text.strip()
                    new_id = _next_id(working, slot)
                    fits = seed.get("fits") or {}  # a paraphrase fits the targets its seed fits
                    why = validate_template(working, slot, text, new_id, fits)
                    if why is not None:
                        rejected.append({"bank": name, "slot": slot, "seed": seed["id"], "text": text, "reason": why})
                        continue
                    template = {"id": new_id, "slot": slot, "text": text, **({"fits": fits} if fits else {})}
                    working["templates"].append(template)
                    existing.append(text)
                    origin = {"seed": seed["id"], "seed_text": seed["text"], "accepted": False}
                    entries.append({"bank": name, **template, **origin})
    return entries, rejected


# ----------------------------------------------------------------------------------------- glossary


def _glossary_messages(terms: list[dict[str, Any]], langs: list[str], n: int) -> list[dict[str, str]]:
    lines = [
        "For each medical imaging term below, propose other names that radiologists and clinicians use for "
        f"exactly the same structure or finding, in these languages: {', '.join(langs)}.",
        "Rules: the same meaning only (not a broader or narrower structure, and keep the side for left/right terms); "
        "no abbreviations that could mean something else; no brackets or angle brackets; Chinese names in Chinese characters.",
        f"At most {n} new names per term and language. If a term has no name yet in a language, put the best name first.",
        'Reply with one JSON object and nothing else: {"<term id>": {"<language>": ["name", ...], ...}, ...}',
        "Terms (id: current names):",
    ]
    for t in terms:
        lines.append(f"  {t['id']}: " + json.dumps(t["names"], ensure_ascii=False))
    return [
        {"role": "system", "content": "You are a bilingual (English/Chinese) medical terminologist. You reply with JSON only."},
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


def _expand_glossary(cfg: ExpandConfig, client: LLMClient) -> tuple[list[dict], list[dict]]:
    from pipeline.language.glossary import Glossary, _load_spec

    data_dir = cfg.language_dir()
    g = Glossary(_load_spec(data_dir / "glossary"), origin="")
    files = _glossary_files(data_dir)
    ids = cfg.glossary.terms or list(g.terms)
    unknown = [t for t in ids if t not in g.terms]
    if unknown:
        raise ExpandError(f"unknown term id(s) {unknown}")
    langs = list(cfg.glossary.langs)
    entries: list[dict] = []
    rejected: list[dict] = []
    proposed_keys: dict[str, str] = {}
    bs = cfg.glossary.batch_size
    for start in range(0, len(ids), bs):
        batch = ids[start : start + bs]
        terms = []
        for tid in batch:
            t = g.term(tid)
            names = {lang: [n for n in [t.names.get(lang), *t.synonyms.get(lang, ())] if n] for lang in sorted(set(langs) | {"en"})}
            terms.append({"id": tid, "names": names})
        reply = client.chat(_glossary_messages(terms, langs, cfg.glossary.max_per_term))
        try:
            obj = _json_from_reply(reply)
            if not isinstance(obj, dict):
                raise ValueError("the reply is not a JSON object")
        except ValueError as exc:
            rejected.append({"terms": batch, "text": reply[:500], "reason": f"unreadable reply: {exc}"})
            continue
        for tid in batch:
            per_lang = obj.get(tid) or {}
            if not isinstance(per_lang, dict):
                rejected.append({"term": tid, "text": json.dumps(per_lang, ensure_ascii=False), "reason": "not an object of language -> names"})
                continue
            for lang in langs:
                names = per_lang.get(lang) or []
                if isinstance(names, str):
                    names = [names]
                kept = 0
                has_display = lang in g.term(tid).names
                for name in names:
                    if kept >= cfg.glossary.max_per_term:
                        break
                    name = name.strip() if isinstance(name, str) else name
                    why = validate_name(g, tid, lang, name)
                    if why is None:
                        from pipeline.language.glossary import normalise_name

                        k = normalise_name(name)
                        if k in proposed_keys and proposed_keys[k] != tid:
                            why = f"also proposed for {proposed_keys[k]!r}"
                        elif k in proposed_keys:
                            why = "proposed twice"
                        else:
                            proposed_keys[k] = tid
                    if why is not None:
                        rejected.append({"term": tid, "lang": lang, "text": str(name), "reason": why})
                        continue
                    fld = lang if not has_display else f"synonyms_{lang}"
                    has_display = True  # the first new name of a missing language becomes its display name
                    entries.append({
                        "term": tid,
                        "file": files[tid].name,
                        "field": fld,
                        "value": name,
                        "current": {lang: [n for n in [g.term(tid).names.get(lang), *g.term(tid).synonyms.get(lang, ())] if n]},
                        "accepted": False,
                    })
                    kept += 1
    return entries, rejected


# ----------------------------------------------------------------------------------------- run


@dataclass
class ExpandResult:
    review_path: Path
    proposed: int
    rejected: int
    requests: int
    cache_hits: int


_REVIEW_HEADER = (
    "# medreg expansion review file.\n"
    "# Every entry below was generated by an LLM and passed validation; none is in the banks yet.\n"
    "# Set `accepted: true` on the entries to keep (edit `text`/`value` if you like), then run\n"
    "#   medreg expand accept {path}\n"
    "# which shows the unified diff of the bank files and asks before writing.\n"
    "# `rejected` lists what failed validation, for information only (it is never applied).\n"
)


def run_expand(
    kind: Literal["templates", "glossary"],
    cfg: ExpandConfig,
    *,
    review_path: str | Path | None = None,
    client: LLMClient | None = None,
) -> ExpandResult:
    """Generate, validate and write a review file; returns what happened (requests, cache hits)."""
    if kind not in ("templates", "glossary"):
        raise ExpandError(f"unknown expansion kind {kind!r}: templates or glossary")
    client = client or LLMClient(cfg.llm, cfg.path(cfg.cache_dir))
    if kind == "templates":
        entries, rejected = _expand_templates(cfg, client)
    else:
        entries, rejected = _expand_glossary(cfg, client)
    out = Path(review_path) if review_path else cfg.path(cfg.review_file or f"expand-{kind}.review.yaml")
    doc = {
        "kind": kind,
        "model": client.model,
        "data_dir": str(cfg.language_dir()) if cfg.data_dir else None,
        "entries": entries,
        "rejected": rejected,
    }
    text = _REVIEW_HEADER.format(path=out.name) + yaml.safe_dump(doc, allow_unicode=True, sort_keys=False, width=1000)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out, text.encode("utf-8"))
    return ExpandResult(out, len(entries), len(rejected), client.requests, client.cache_hits)


# ----------------------------------------------------------------------------------------- accept


def _yaml_flow_item(s: str) -> str:
    """One item of a YAML flow list, quoted only when needed."""
    plain_ok = re.fullmatch(r"[^\s,\[\]{}#&*!|>'\"%@`:?-][^,\[\]{}#:]*(?<!\s)", s) is not None
    if plain_ok:
        try:
            plain_ok = yaml.safe_load(s) == s
        except yaml.YAMLError:
            plain_ok = False
    return s if plain_ok else json.dumps(s, ensure_ascii=False)


def _add_template_line(text: str, entry: dict[str, Any]) -> str:
    """Insert ``- {id, slot, fits, text}`` after the last template of the entry's slot (or at the end)."""
    fits = entry.get("fits") or {}
    fits_text = ", ".join(f"{k}: [{', '.join(v)}]" if isinstance(v, list) else f"{k}: {v}" for k, v in fits.items())
    head = f"{entry['id']}, slot: {entry['slot']}" + (f", fits: {{{fits_text}}}" if fits_text else "")
    line = "  - {id: %s, text: %s}" % (head, json.dumps(entry["text"], ensure_ascii=False))
    lines = text.splitlines()
    last = None
    for i, ln in enumerate(lines):
        if re.search(rf"\bslot:\s*{re.escape(entry['slot'])}\b", ln):
            last = i
    if last is None:
        lines.append(line)
    else:
        lines.insert(last + 1, line)
    return "\n".join(lines) + "\n"


def _add_glossary_name(text: str, entry: dict[str, Any]) -> str:
    """Add a display name or synonym to a term's block, keeping the file's layout and comments."""
    tid, fld, value = entry["term"], entry["field"], entry["value"]
    lines = text.splitlines()
    try:
        start = next(i for i, ln in enumerate(lines) if re.fullmatch(rf"{re.escape(tid)}:\s*", ln))
    except StopIteration:
        raise ExpandError(f"term {tid!r} is not defined in {entry.get('file')}") from None
    end = next((i for i in range(start + 1, len(lines)) if lines[i] and not lines[i].startswith((" ", "\t"))), len(lines))
    while end > start + 1 and not lines[end - 1].strip():
        end -= 1
    for i in range(start + 1, end):
        m = re.fullmatch(rf"(\s+){re.escape(fld)}:\s*(.*)", lines[i])
        if m:
            if not fld.startswith("synonyms_"):
                raise ExpandError(f"{tid}: {fld} is already set")
            current = load_yaml_text(m.group(2), f"glossary entry {tid}") if m.group(2).strip() else []
            if not isinstance(current, list) or not m.group(2).strip().startswith("["):
                raise ExpandError(f"{tid}: {fld} is not a one-line [..] list; add {value!r} by hand")
            items = [*current, value]
            lines[i] = f"{m.group(1)}{fld}: [" + ", ".join(_yaml_flow_item(str(x)) for x in items) + "]"
            return "\n".join(lines) + "\n"
    # not there yet: after the display names / existing synonyms
    anchor = start
    for i in range(start + 1, end):
        if re.match(r"\s+(?:[a-z]{2}|synonyms_[a-z]{2}):", lines[i]):
            anchor = i
    new = f"  {fld}: " + (f"[{_yaml_flow_item(value)}]" if fld.startswith("synonyms_") else _yaml_flow_item(value))
    lines.insert(anchor + 1, new)
    return "\n".join(lines) + "\n"


@dataclass
class AcceptPlan:
    """What ``accept`` would write: file -> (old text, new text)."""

    changes: dict[Path, tuple[str, str]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    count: int = 0
    base: Path = DEFAULT_DATA_DIR

    def diff(self) -> str:
        out = []
        for path, (old, new) in sorted(self.changes.items()):
            rel = path.relative_to(self.base).as_posix() if path.is_relative_to(self.base) else path.name
            out.extend(
                difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True), f"a/{rel}", f"b/{rel}")
            )
        return "".join(out)

    def changed_names(self) -> list[str]:
        return [p.name for p in self.changes]

    def apply(self) -> None:
        for path, (old, new) in self.changes.items():
            if path.read_text(encoding="utf-8") != old:
                raise ExpandError(f"{path} changed since the diff was made; run accept again")
        for path, (_old, new) in self.changes.items():
            write_bytes_atomic(path, new.encode("utf-8"))
        try:  # the banks are cached per process
            from pipeline.language import glossary as _g
            from pipeline.language import templates as _t

            _g._load_glossary_cached.cache_clear()
            _t._load_templates_cached.cache_clear()
        except AttributeError:  # pragma: no cover
            pass


def _load_review(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"review file {path} not found")
    try:
        doc = load_yaml(path, what="review file", name=str(path))
    except YamlError as exc:
        raise ExpandError(f"{exc} (was it edited by hand?)") from None
    if not isinstance(doc, dict) or doc.get("kind") not in ("templates", "glossary") or not isinstance(doc.get("entries"), list):
        raise ExpandError(f"{path}: not a review file (needs kind: templates|glossary and an entries list)")
    return doc


def plan_accept(review_file: str | Path, *, data_dir: str | Path | None = None) -> AcceptPlan:
    """The edits that ``accept`` makes for the entries marked ``accepted: true``, re-validated against
    the current bank files (an entry that no longer fits is skipped, with the reason)."""
    review_file = Path(review_file)
    doc = _load_review(review_file)
    base = Path(data_dir) if data_dir else Path(doc["data_dir"]) if doc.get("data_dir") else DEFAULT_DATA_DIR
    plan = AcceptPlan(base=base)
    accepted = [e for e in doc["entries"] if isinstance(e, dict) and e.get("accepted") is True]
    if doc["kind"] == "templates":
        files = _bank_files(base)
        banks: dict[str, dict[str, Any]] = {}
        texts: dict[str, str] = {}
        for e in accepted:
            name = e.get("bank")
            if name not in files:
                plan.skipped.append(f"{e.get('id')}: unknown bank {name!r}")
                continue
            if name not in banks:
                texts[name] = files[name].read_text(encoding="utf-8")
                banks[name] = load_yaml_text(texts[name], f"template bank {files[name].name}")
            bank = banks[name]
            missing = [k for k in ("id", "slot", "text") if not isinstance(e.get(k), str)]
            if missing:
                plan.skipped.append(f"{e.get('id')}: missing {missing}")
                continue
            if any(t["id"] == e["id"] for t in bank["templates"]):
                plan.skipped.append(f"{e['id']}: id already in {name} (accepted twice?)")
                continue
            fits = e.get("fits") or {}
            why = validate_template(bank, e["slot"], e["text"], e["id"], fits)
            if why is not None:
                plan.skipped.append(f"{e['id']}: {why}")
                continue
            added = {"id": e["id"], "slot": e["slot"], "text": e["text"], **({"fits": fits} if fits else {})}
            bank["templates"].append(added)
            texts[name] = _add_template_line(texts[name], e)
            plan.count += 1
        for name, new in texts.items():
            old = files[name].read_text(encoding="utf-8")
            if new != old:
                # the edited file as a whole
                TemplateBankSpec.model_validate(load_yaml_text(new, f"template bank {files[name].name}"))
                plan.changes[files[name]] = (old, new)
    else:
        from pipeline.language.glossary import Glossary, _load_spec

        gdir = base / "glossary"
        texts = {p.name: p.read_text(encoding="utf-8") for p in sorted(gdir.glob("*.yaml"))}
        current = Glossary(_load_spec(gdir), origin="")
        for e in accepted:
            tid, fld, value, fname = e.get("term"), e.get("field"), e.get("value"), e.get("file")
            if fname not in texts or tid not in current:
                plan.skipped.append(f"{tid}: unknown term or file {fname!r}")
                continue
            if not isinstance(fld, str) or not re.fullmatch(r"(?:synonyms_)?[a-z]{2}", fld) or not isinstance(value, str):
                plan.skipped.append(f"{tid}: bad field/value {fld!r}: {value!r}")
                continue
            lang = fld.removeprefix("synonyms_")
            why = validate_name(current, tid, lang, value)
            if why is not None:
                plan.skipped.append(f"{tid} {fld} {value!r}: {why}")
                continue
            try:
                new_text = _add_glossary_name(texts[fname], e)
            except ExpandError as exc:
                plan.skipped.append(str(exc))
                continue
            # the whole glossary with this edit must still load (no clash with any other name)
            with tempfile.TemporaryDirectory() as tmp:
                for n, t in texts.items():
                    (Path(tmp) / n).write_text(new_text if n == fname else t, encoding="utf-8")
                try:
                    current = Glossary(_load_spec(Path(tmp)), origin="")
                except ValueError as exc:
                    plan.skipped.append(f"{tid} {fld} {value!r}: the glossary would not load: {str(exc).splitlines()[-1].strip()}")
                    continue
            texts[fname] = new_text
            plan.count += 1
        for name, new in texts.items():
            path = gdir / name
            old = path.read_text(encoding="utf-8")
            if new != old:
                plan.changes[path] = (old, new)
    return plan


def copy_language_data(dest: str | Path) -> Path:
    """A copy of the shipped language data folder (for trying ``accept`` without touching the repo)."""
    dest = Path(dest)
    shutil.copytree(DEFAULT_DATA_DIR, dest, dirs_exist_ok=True)
    return dest
