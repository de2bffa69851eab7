"""Embedding judge ``clip``: does the crop of a box look more like its term than like the alternatives?

For every region the judge crops a square window around the box (box plus ``crop_margin``, padded with
black outside the image), embeds it with a CLIP-style image tower, and compares it with the text
embeddings of ``prompt`` (default ``"a {modality} image of the {name}"``) for the region's true term and
for its alternatives:

1. the term's mirror partner (``kidney_left`` for ``kidney_right``): catches laterality swaps,
2. (``alternatives`` contains ``batch``) the terms that share an image with it in the items the judge was
   fitted on (all items of the stage, before any cache lookup), most frequent first,
3. (``alternatives`` contains ``glossary``) ``glossary.same_region_terms(term)``,

at most ``max_alternatives`` of them.  ``score`` = softmax probability of the true term over
[true] + alternatives (temperature = the model's ``logit_scale``); verdict ``pass`` when the true term
ranks within ``top_k``, else ``flag`` (``fail`` when ``fail_below`` is set and the probability is below
it).  A region with no alternative passes with code ``no_alternatives``.

The model is any transformers checkpoint exposing ``get_image_features`` / ``get_text_features``
(CLIPModel, SiglipModel, ...), loaded from a local directory with ``local_files_only=True`` and no
remote code.  Inference runs under ``torch.inference_mode`` in eval mode (deterministic for a given
device), on CUDA with bf16 autocast when available, otherwise on CPU with a one-time warning.
Crops are preprocessed by ``preprocess_workers`` threads ahead of the batch running on the device.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.validate._glossary import TermInfo
from pipeline.validate.base import RegionFinding, ValidationItem, summarise
from schemas.records import ValidationResult
from schemas.validation import ClipConfig

log = logging.getLogger(__name__)
_CPU_NOTICE_SHOWN = False


def pick_device(requested: str = "auto") -> str:
    """``cuda`` when asked for / available, else ``cpu`` (with a one-time warning for ``auto``)."""
    global _CPU_NOTICE_SHOWN
    import torch

    if requested == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if requested == "cuda":
        raise RuntimeError("device 'cuda' requested but torch.cuda.is_available() is False")
    if not _CPU_NOTICE_SHOWN:
        _CPU_NOTICE_SHOWN = True
        log.warning("no CUDA device: model judges run on CPU (slow; fine for tests and small runs)")
    return "cpu"


def model_fingerprint(path: str | Path) -> str:
    """sha256 over config files and the names and sizes of weight files (cheap; enters cache keys)."""
    p = Path(path)
    h = hashlib.sha256()
    for f in sorted(p.iterdir()) if p.is_dir() else []:
        if f.suffix == ".json":
            h.update(f.name.encode() + b"\0" + f.read_bytes())
        elif f.is_file():
            h.update(f"{f.name}\0{f.stat().st_size}".encode())
    return h.hexdigest()[:16]


def load_clip(path: str | Path, device: str = "cpu") -> tuple[Any, Any, Any]:
    """(model, image_processor, tokenizer) from a local transformers checkpoint directory."""
    from transformers import AutoImageProcessor, AutoModel, AutoProcessor, AutoTokenizer

    path = str(path)
    if not Path(path).is_dir():
        raise FileNotFoundError(f"CLIP model directory not found: {path} (set validation.clip.model_path)")
    try:
        proc = AutoProcessor.from_pretrained(path, local_files_only=True)
        image_processor = getattr(proc, "image_processor", None)
        tokenizer = getattr(proc, "tokenizer", None)
    except (OSError, ValueError, TypeError, KeyError):
        image_processor = tokenizer = None
    if image_processor is None:
        image_processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True)
    for attr in ("get_image_features", "get_text_features"):
        if not hasattr(model, attr):
            raise TypeError(f"{type(model).__name__} at {path} has no {attr}: not a CLIP-style model")
    model.eval().to(device)
    return model, image_processor, tokenizer


def _features(out: Any) -> Any:
    """transformers 4 returns a tensor, transformers 5 a ModelOutput whose pooler_output is projected."""
    import torch

    if isinstance(out, torch.Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    if pooled is not None:
        return pooled
    return out[0]


def square_crop(image: np.ndarray, box_px: list[int] | tuple[int, ...], margin: float, margin_min: int) -> np.ndarray:
    """RGB uint8 square window centred on the box (box side + margins), black outside the image."""
    h, w = image.shape[:2]
    x0, y0, x1, y1 = (int(v) for v in box_px)
    bw, bh = x1 - x0 + 1, y1 - y0 + 1
    side = max(bw, bh)
    side = int(side + 2 * max(math.ceil(margin * side), margin_min))
    cx2, cy2 = x0 + x1 + 1, y0 + y1 + 1  # twice the centre (continuous)
    sx0 = (cx2 - side) // 2
    sy0 = (cy2 - side) // 2
    img = image if image.ndim == 3 else np.repeat(image[:, :, None], 3, axis=2)
    out = np.zeros((side, side, 3), dtype=np.uint8)
    ax0, ay0 = max(sx0, 0), max(sy0, 0)
    ax1, ay1 = min(sx0 + side, w), min(sy0 + side, h)
    if ax1 > ax0 and ay1 > ay0:
        out[ay0 - sy0 : ay1 - sy0, ax0 - sx0 : ax1 - sx0] = img[ay0:ay1, ax0:ax1, :3]
    return out


class ClipJudge:
    name = "clip"
    version = "1"

    def __init__(self, config: ClipConfig | None = None, *, glossary: Any | None = None) -> None:
        self.config = config or ClipConfig()
        if not self.config.model_path:
            raise ValueError("validation.clip.model_path is not set (a local CLIP-style checkpoint directory)")
        if not Path(self.config.model_path).is_dir():
            raise FileNotFoundError(f"validation.clip.model_path {self.config.model_path} is not a directory")
        self.terms = TermInfo(glossary)
        self._model: Any = None
        self._image_processor: Any = None
        self._tokenizer: Any = None
        self.device: str | None = None
        self._fp = model_fingerprint(self.config.model_path)
        self.cooccur: dict[str, dict[str, Counter[str]]] = {}  # modality -> term -> co-occurring terms
        self.prepared = False
        self._text_cache: dict[str, Any] = {}

    # ------------------------------------------------------------------ setup
    @property
    def config_hash(self) -> str:
        co = {m: {t: sorted(c.items()) for t, c in sorted(d.items())} for m, d in sorted(self.cooccur.items())}
        blob = json.dumps({"cfg": self.config.config_hash(), "model": self._fp, "co": co}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def needs_fit(self) -> bool:
        return "batch" in self.config.alternatives and not self.prepared

    def fit(self, items: list[ValidationItem]) -> ClipJudge:
        """Learn which terms share images (per modality) from all items: the 'batch' alternatives."""
        co: dict[str, dict[str, Counter[str]]] = defaultdict(lambda: defaultdict(Counter))
        for it in items:
            mod = str(it.meta.get("modality", ""))
            terms = sorted({str(r.get("term")) for r in it.regions})
            for t in terms:
                co[mod][t].update(u for u in terms if u != t)
                co[mod].setdefault(t, Counter())
        self.cooccur = {m: dict(d) for m, d in co.items()}
        self.prepared = True
        return self

    def load(self) -> None:
        if self._model is None:
            self.device = pick_device(self.config.device)
            self._model, self._image_processor, self._tokenizer = load_clip(self.config.model_path, self.device)

    def alternatives(self, term: str, modality: str) -> list[str]:
        cands: list[str] = []
        mirror = self.terms.mirror(term) if self.terms.laterality(term) else None
        if mirror and mirror != term:
            cands.append(mirror)
        if "batch" in self.config.alternatives:  # visible in the same images: the likeliest confusions
            c = self.cooccur.get(modality, {}).get(term, Counter())
            cands.extend(t for t, _ in sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))
        if "glossary" in self.config.alternatives:
            cands.extend(self.terms.same_region_terms(term))
        out: list[str] = []
        for t in cands:
            if t != term and t not in out:
                out.append(t)
        return out[: self.config.max_alternatives]

    def prompt(self, term: str, modality: str) -> str:
        return self.config.prompt.format(modality=modality, name=self.terms.display(term, self.config.lang))

    # ------------------------------------------------------------------ model calls
    def _autocast(self) -> Any:
        import contextlib

        import torch

        if self.device == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _max_text_len(self) -> int:
        lim = getattr(getattr(self._model.config, "text_config", None), "max_position_embeddings", None) or 77
        tok_lim = getattr(self._tokenizer, "model_max_length", lim) or lim
        return int(min(lim, tok_lim))

    def text_features(self, prompts: list[str]) -> Any:
        """L2-normalised float32 CPU embeddings of ``prompts`` (cached per prompt)."""
        import torch

        self.load()
        todo = sorted({p for p in prompts if p not in self._text_cache})
        bs = self.config.batch_size
        for i in range(0, len(todo), bs):
            chunk = todo[i : i + bs]
            enc = self._tokenizer(
                chunk, padding=True, truncation=True, max_length=self._max_text_len(), return_tensors="pt"
            )
            enc = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
            with torch.inference_mode(), self._autocast():
                f = _features(self._model.get_text_features(**enc))
            f = torch.nn.functional.normalize(f.float(), dim=-1).cpu()
            for p, row in zip(chunk, f, strict=True):
                self._text_cache[p] = row
        return torch.stack([self._text_cache[p] for p in prompts]) if prompts else torch.zeros(0)

    def image_features(self, crops: list[np.ndarray]) -> Any:
        """L2-normalised float32 CPU embeddings of RGB crops, in batches of ``batch_size``."""
        import torch
        from PIL import Image

        self.load()
        bs = self.config.batch_size
        chunks = [crops[i : i + bs] for i in range(0, len(crops), bs)]

        def prep(chunk: list[np.ndarray]) -> Any:
            return self._image_processor(images=[Image.fromarray(c) for c in chunk], return_tensors="pt")[
                "pixel_values"
            ]

        feats: list[Any] = []
        workers = max(1, self.config.preprocess_workers)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            pending = [pool.submit(prep, c) for c in chunks[: workers + 1]]
            for j in range(len(chunks)):
                pv = pending.pop(0).result()
                if j + workers + 1 < len(chunks):  # keep the preprocessing pipeline full
                    pending.append(pool.submit(prep, chunks[j + workers + 1]))
                pv = pv.to(self.device, non_blocking=True)
                with torch.inference_mode(), self._autocast():
                    f = _features(self._model.get_image_features(pixel_values=pv))
                feats.append(torch.nn.functional.normalize(f.float(), dim=-1).cpu())
        return torch.cat(feats) if feats else torch.zeros(0)

    def _scale(self) -> float:
        ls = getattr(self._model, "logit_scale", None)
        if ls is None:
            return 100.0
        return float(ls.detach().float().exp().cpu())

    # ------------------------------------------------------------------ validate
    def validate(self, items: list[ValidationItem]) -> list[ValidationResult]:
        import torch

        cfg = self.config
        if self.needs_fit:
            self.fit(items)
        jobs: list[tuple[int, str, str, list[str]]] = []  # (item index, term, modality, candidates)
        crops: list[np.ndarray] = []
        for i, it in enumerate(items):
            mod = str(it.meta.get("modality", ""))
            for reg in it.regions:
                term = str(reg.get("term"))
                jobs.append((i, term, mod, [term, *self.alternatives(term, mod)]))
                crops.append(square_crop(it.image, reg["box_px"], cfg.crop_margin, cfg.margin_px_min))
        findings: list[list[RegionFinding]] = [[] for _ in items]
        scores: list[list[float]] = [[] for _ in items]
        if any(len(c) > 1 for *_, c in jobs):
            self.load()
            img = self.image_features(crops)
            prompts = sorted({self.prompt(t, m) for _, _, m, c in jobs for t in c})
            txt = self.text_features(prompts)
            index = {p: k for k, p in enumerate(prompts)}
            scale = self._scale()
            for r, (i, term, mod, cands) in enumerate(jobs):
                if len(cands) < 2:
                    findings[i].append(RegionFinding("pass", "no_alternatives", term))
                    continue
                t = txt[[index[self.prompt(c, mod)] for c in cands]]
                logits = scale * (t @ img[r])
                probs = torch.softmax(logits, dim=0)
                p_true = float(probs[0])
                rank = 1 + int((logits > logits[0]).sum())
                best = cands[int(torch.argmax(logits))]
                scores[i].append(p_true)
                verdict = "pass" if rank <= cfg.top_k else "flag"
                if cfg.fail_below is not None and p_true < cfg.fail_below:
                    verdict = "fail"
                if verdict != "pass":
                    findings[i].append(
                        RegionFinding(
                            verdict, "clip_rank", f"{term} rank {rank}/{len(cands)} p={p_true:.3f} (top: {best})"
                        )
                    )
        else:
            for i, term, _m, _c in jobs:
                findings[i].append(RegionFinding("pass", "no_alternatives", term))
        out = []
        for i in range(len(items)):
            score = round(min(scores[i]), 6) if scores[i] else None
            out.append(summarise(self, findings[i], score, ok_reason="no_regions" if not items[i].regions else ""))
        return out
