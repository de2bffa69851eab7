"""Grounding judge ``grounding``: ask a vision-language model about the sample and compare.

For up to ``max_terms_per_row`` terms of a row the judge asks

* **text -> region** (``t2r_prompt``): "where is the {name}?"  The boxes parsed from the answer
  (:func:`pipeline.evaluate.answers.parse_boxes`) are matched one-to-one to the term's boxes in the row with the
  Hungarian algorithm on IoU (0..999 coordinates); score = sum of matched IoUs / max(#predicted, #true),
  so missing and extra boxes cost.  ``pass`` if score >= ``iou_pass``, else ``flag`` (``fail`` below
  ``iou_fail`` when set).
* **region -> text** (``r2t_prompt``): "what is in <box>[[...]]</box>?"  The answer is matched to a term
  through the glossary (``<ref>`` contents, the plain answer, then the display names of the true term
  and its mirror found in the text).  Score 1 for the true term, 0.5 when the answer names the same
  structure without its side, 0 otherwise; the mirror partner gives code ``r2t_mirror``.

Malformed answers (no box: ``t2r_no_box``; nothing resolvable: ``r2t_unresolved``) are ``flag`` and
cached like any answer.  Empty answers (``empty_answer``), responses without ``choices[0].message``
(``malformed_response``) and transport failures after all retries (``model_error``) are ``flag`` and
marked ``transient``: neither the answer nor the verdict is cached, so the next run asks again.

Backends (``backend``):

* ``openai`` — any OpenAI-compatible chat-completions server (vLLM, SGLang, LMDeploy, TGI, hosted);
  images go as base64 PNG data URLs; ``concurrency`` requests in flight; per-request ``timeout_s``;
  retries with exponential backoff on 429, 5xx, timeouts and connection errors.
* ``transformers`` — a local checkpoint (``AutoModelForImageTextToText`` + ``AutoProcessor``) with
  batched greedy generation on the GPU.

Every non-empty answer is cached on disk (``cache_dir``; key = sha256 of backend model + prompt + image
pixels + generation settings), so rerunning the stage asks the model nothing twice.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pipeline.core.jsoncache import JsonDirCache, cache_key
from pipeline.evaluate.answers import parse_boxes, parse_terms, strip_grounding
from pipeline.regions.coords import format_boxes, hungarian_iou, order_boxes
from pipeline.validate._glossary import TermInfo
from pipeline.validate.base import RegionFinding, ValidationItem, summarise
from schemas.records import ValidationResult
from schemas.validation import GroundingConfig

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------- requests, answers, cache
@dataclass
class Request:
    prompt: str
    image: np.ndarray  # uint8 (H, W) or (H, W, 3)
    image_sha: str
    key: str = ""


@dataclass
class Answer:
    text: str | None
    error: str | None = None
    cached: bool = False


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG")
    return buf.getvalue()


def data_url(image: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")


class AnswerCache:
    """Judge answers in a :class:`pipeline.core.jsoncache.JsonDirCache` (one JSON file per answer)."""

    def __init__(self, directory: str | Path) -> None:
        self._store = JsonDirCache(directory)
        self.dir = self._store.dir

    @property
    def hits(self) -> int:
        return self._store.hits

    @property
    def misses(self) -> int:
        return self._store.misses

    @staticmethod
    def key(model_id: str, prompt: str, image_sha: str, params: dict[str, Any]) -> str:
        return cache_key(model_id, prompt, image_sha, params)

    def get(self, key: str) -> str | None:
        data = self._store.get(key)
        if data is None or "answer" not in data:
            return None
        return str(data["answer"])

    def put(self, key: str, answer: str) -> None:
        self._store.put(key, {"answer": answer})


class Backend(Protocol):
    model_id: str

    def ask(self, requests: list[Request]) -> list[Answer]: ...


# ---------------------------------------------------------------------- openai-compatible backend
def _retryable(exc: BaseException) -> bool:
    import openai

    if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError, openai.RateLimitError)):
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code == 429 or exc.status_code >= 500
    return False


class OpenAIBackend:
    """Chat completions against an OpenAI-compatible server, with bounded concurrency and retries."""

    def __init__(self, config: GroundingConfig, *, sleep: Callable[[float], None] = time.sleep) -> None:
        import openai

        self.config = config
        base_url = config.base_url or os.environ.get("OPENAI_BASE_URL")
        if not base_url:
            raise ValueError("validation.grounding.base_url is not set (e.g. http://gpu-host:8000/v1)")
        key = config.api_key.get_secret_value() if config.api_key else os.environ.get(config.api_key_env, "EMPTY")
        # Retries are ours (exponential backoff, counted per request); the client's are off.
        self.client = openai.OpenAI(base_url=base_url, api_key=key or "EMPTY", timeout=config.timeout_s, max_retries=0)
        self.model_id = f"openai:{config.model}"
        self._sleep = sleep
        self.attempts = 0  # requests sent, retries included (for tests and reports)

    def _one(self, req: Request) -> Answer:
        cfg = self.config
        messages = [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": data_url(req.image)}},
                    {"type": "text", "text": req.prompt},
                ],
            }
        ]
        last = ""
        for attempt in range(cfg.max_retries + 1):
            self.attempts += 1
            try:
                resp = self.client.chat.completions.create(
                    model=cfg.model,
                    messages=messages,  # type: ignore[arg-type]
                    max_tokens=cfg.max_new_tokens,
                    temperature=cfg.temperature,
                    extra_body=cfg.extra_body or None,
                )
            except Exception as exc:  # one failed batch flags its rows only
                last = f"{type(exc).__name__}: {str(exc)[:200]}"
                if _retryable(exc) and attempt < cfg.max_retries:
                    self._sleep(min(cfg.backoff_s * (2**attempt), cfg.backoff_max_s))
                    continue
                return Answer(None, last)
            try:
                content = resp.choices[0].message.content
            except (AttributeError, IndexError, TypeError):
                return Answer(None, "malformed response: no choices[0].message.content")
            return Answer(content if isinstance(content, str) else None, None if content else "empty answer")
        return Answer(None, last)  # pragma: no cover - loop always returns

    def ask(self, requests: list[Request]) -> list[Answer]:
        if not requests:
            return []
        with ThreadPoolExecutor(max_workers=min(self.config.concurrency, len(requests))) as pool:
            return list(pool.map(self._one, requests))


# ---------------------------------------------------------------------- local transformers backend
class TransformersBackend:
    """A local image-text-to-text checkpoint with batched greedy generation."""

    def __init__(self, config: GroundingConfig) -> None:
        if not config.model_path or not Path(config.model_path).is_dir():
            raise FileNotFoundError(f"validation.grounding.model_path {config.model_path!r} is not a directory")
        self.config = config
        from pipeline.validate.clip import model_fingerprint

        self.model_id = f"transformers:{model_fingerprint(config.model_path)}"
        self._model: Any = None
        self._processor: Any = None
        self.device: str | None = None

    def load(self) -> None:
        if self._model is not None:
            return
        import transformers

        from pipeline.validate.clip import pick_device

        cfg = self.config
        self.device = pick_device(cfg.device)
        kw = {"local_files_only": True, "trust_remote_code": cfg.trust_remote_code}
        self._processor = transformers.AutoProcessor.from_pretrained(cfg.model_path, **kw)
        tok = getattr(self._processor, "tokenizer", None)
        if tok is not None:
            tok.padding_side = "left"  # decoder-only batched generation
        # AutoModelForImageTextToText in recent transformers, AutoModelForVision2Seq in older ones (gone in 5)
        new = "AutoModelForImageTextToText"
        auto = getattr(transformers, new if hasattr(transformers, new) else "AutoModelForVision2Seq")
        dtype = "bfloat16" if self.device == "cuda" else "float32"
        self._model = auto.from_pretrained(cfg.model_path, dtype=dtype, **kw).eval().to(self.device)

    def _texts(self, prompts: Sequence[str]) -> list[str]:
        out = []
        for p in prompts:
            msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": p}]}]
            out.append(self._processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False))
        return out

    def ask(self, requests: list[Request]) -> list[Answer]:
        import torch
        from PIL import Image

        if not requests:
            return []
        self.load()
        cfg = self.config
        answers: list[Answer] = []
        for i in range(0, len(requests), cfg.batch_size):
            chunk = requests[i : i + cfg.batch_size]
            images = [Image.fromarray(np.ascontiguousarray(r.image)).convert("RGB") for r in chunk]
            try:
                inputs = self._processor(
                    text=self._texts([r.prompt for r in chunk]), images=images, padding=True, return_tensors="pt"
                ).to(self.device)
                with torch.inference_mode():
                    out = self._model.generate(**inputs, max_new_tokens=cfg.max_new_tokens, do_sample=False)
                new = out[:, inputs["input_ids"].shape[1] :]
                texts = self._processor.batch_decode(new, skip_special_tokens=True)
                answers.extend(Answer(t.strip(), None if t.strip() else "empty answer") for t in texts)
            except Exception as exc:
                log.exception("generation failed for %d requests", len(chunk))
                answers.extend(Answer(None, f"{type(exc).__name__}: {exc}") for _ in chunk)
        return answers


# ---------------------------------------------------------------------- scoring
_SIDE = re.compile(r"(^|_)(left|right)(_|$)")


def _sideless(term: str) -> str:
    return _SIDE.sub(lambda m: "_" if m.group(1) and m.group(3) else "", term).strip("_")


class GroundingJudge:
    name = "grounding"
    version = "1"
    level = "release"
    needs_model = True  # a VLM (openai-compatible server or a local transformers model)
    config_model = GroundingConfig
    description = "asks a VLM the text->region and region->text questions and scores its answers"

    def __init__(
        self, config: GroundingConfig | None = None, *, glossary: Any | None = None, backend: Backend | None = None
    ) -> None:
        self.config = config or GroundingConfig()
        self.terms = TermInfo(glossary)
        if backend is None:
            openai = self.config.backend == "openai"
            backend = OpenAIBackend(self.config) if openai else TransformersBackend(self.config)
        self.backend = backend
        self.cache = AnswerCache(self.config.cache_dir) if self.config.cache_dir else None
        self.asked = 0  # requests sent to the backend (cache misses) over this judge's life

    @property
    def config_hash(self) -> str:
        blob = json.dumps({"cfg": self.config.config_hash(), "model": self.backend.model_id}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def _gen_params(self) -> dict[str, Any]:
        c = self.config
        return {"max_new_tokens": c.max_new_tokens, "temperature": c.temperature, "extra_body": c.extra_body}

    def answer(self, requests: list[Request]) -> list[Answer]:
        """Answers in request order: from the cache when there, else from the backend (deduplicated)."""
        params = self._gen_params()
        out: list[Answer | None] = [None] * len(requests)
        todo: dict[str, list[int]] = {}
        for i, r in enumerate(requests):
            r.key = AnswerCache.key(self.backend.model_id, r.prompt, r.image_sha, params)
            hit = self.cache.get(r.key) if self.cache else None
            if hit is not None:
                out[i] = Answer(hit, None, cached=True)
            else:
                todo.setdefault(r.key, []).append(i)
        uniq = [requests[idx[0]] for idx in todo.values()]
        self.asked += len(uniq)
        got = self.backend.ask(uniq) if uniq else []
        for req, ans in zip(uniq, got, strict=True):
            if self.cache is not None and ans.text:
                self.cache.put(req.key, ans.text)
            for i in todo[req.key]:
                out[i] = ans
        return [a if a is not None else Answer(None, "no answer") for a in out]

    def _questions(self, item: ValidationItem) -> list[tuple[str, str, str, list[tuple[int, ...]]]]:
        """(kind, term, prompt, true boxes) for the row."""
        cfg = self.config
        mod = str(item.meta.get("modality", ""))
        boxes: dict[str, list[tuple[int, ...]]] = {}
        for reg in item.regions:
            boxes.setdefault(str(reg.get("term")), []).append(tuple(int(v) for v in reg["box"]))
        qs = []
        for term in list(boxes)[: cfg.max_terms_per_row]:
            name = self.terms.display(term, cfg.lang)
            tb = order_boxes(boxes[term])
            if "text_to_region" in cfg.tasks:
                qs.append(("t2r", term, cfg.t2r_prompt.format(name=name, modality=mod), tb))
            if "region_to_text" in cfg.tasks:
                qs.append(("r2t", term, cfg.r2t_prompt.format(boxes=format_boxes(tb), modality=mod), tb))
        return qs

    def _score_t2r(self, term: str, text: str, true: list[tuple[int, ...]]) -> tuple[float, RegionFinding]:
        cfg = self.config
        pred = parse_boxes(text)
        if not pred:
            return 0.0, RegionFinding("flag", "t2r_no_box", f"{term}: no box in answer {text[:80]!r}")
        score, _ = hungarian_iou(pred, true)
        if score >= cfg.iou_pass:
            return score, RegionFinding("pass", "t2r", f"{term} IoU {score:.2f}")
        verdict = "fail" if cfg.iou_fail is not None and score < cfg.iou_fail else "flag"
        return score, RegionFinding(
            verdict, "t2r_low_iou", f"{term} IoU {score:.2f} < {cfg.iou_pass:g} (answer {format_boxes(pred[:4])})"
        )

    def resolve_answer(self, text: str, term: str) -> str | None:
        """The canonical term an r2t answer names (None if nothing resolves): ``<ref>`` contents, then
        the whole plain answer, then the first glossary name found in the text (longest at a position)."""
        for c in [*parse_terms(text), strip_grounding(text)]:
            t = self.terms.resolve(c)
            if t:
                return t
        mirror = self.terms.mirror(term) if self.terms.laterality(term) else None
        found = self.terms.find_terms(strip_grounding(text), tuple(t for t in (term, mirror) if t))
        return found[0] if found else None

    def _score_r2t(self, term: str, text: str) -> tuple[float, RegionFinding]:
        got = self.resolve_answer(text, term)
        short = strip_grounding(text)[:60]
        if got is None:
            return 0.0, RegionFinding("flag", "r2t_unresolved", f"{term}: answer {short!r} names no known term")
        if got == term:
            return 1.0, RegionFinding("pass", "r2t", term)
        mirror = self.terms.mirror(term) if self.terms.laterality(term) else None
        if got == mirror:
            return 0.0, RegionFinding("flag", "r2t_mirror", f"{term}: answer {short!r} -> {got} (the other side)")
        if _sideless(got) == _sideless(term):
            return 0.5, RegionFinding("pass", "r2t_no_side", f"{term}: answer {short!r} -> {got}")
        return 0.0, RegionFinding("flag", "r2t_mismatch", f"{term}: answer {short!r} -> {got}")

    def validate(self, items: list[ValidationItem]) -> list[ValidationResult]:
        plan: list[tuple[int, str, str, list[tuple[int, ...]]]] = []
        reqs: list[Request] = []
        for i, it in enumerate(items):
            for kind, term, prompt, tb in self._questions(it):
                plan.append((i, kind, term, tb))
                reqs.append(Request(prompt, it.image, it.image_digest()))
        answers = self.answer(reqs)
        findings: list[list[RegionFinding]] = [[] for _ in items]
        scores: list[list[float]] = [[] for _ in items]
        transient = [False] * len(items)
        for (i, kind, term, tb), ans in zip(plan, answers, strict=True):
            if ans.text is None or not ans.text.strip():
                err = ans.error or "empty answer"
                code = (
                    "empty_answer" if err == "empty answer"
                    else "malformed_response" if err.startswith("malformed") else "model_error"
                )
                findings[i].append(RegionFinding("flag", code, f"{kind} {term}: {ans.error or 'empty answer'}"))
                transient[i] = True
                continue
            s, f = self._score_t2r(term, ans.text, tb) if kind == "t2r" else self._score_r2t(term, ans.text)
            scores[i].append(s)
            findings[i].append(f)
        out = []
        for i, it in enumerate(items):
            score = round(min(scores[i]), 6) if scores[i] else None
            extra = {"transient": True} if transient[i] else {}
            out.append(summarise(self, findings[i], score, ok_reason="no_regions" if not it.regions else "", **extra))
        return out
