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

Throughput (``fast_preprocess``, the default): regions are sorted by crop side so that a batch holds
few distinct sizes; ``preprocess_workers`` threads cut the windows with numpy slicing (grey images stay
one channel) into one (pinned, on CUDA) uint8 buffer per batch ahead of the device; the device copies
it with ``non_blocking``, resizes each same-size group with one antialiased ``interpolate`` in two
passes (horizontal, then vertical, rounding to 0..255 in between, as Pillow does: within one grey
level of the image processor), centre-crops and normalises as the processor's settings say.  At load
the fast path is compared with the processor on synthetic crops and falls back to it when they
disagree (or the processor has settings it does not reproduce).  Text embeddings are cached per
prompt for the judge's lifetime (unique prompts encoded in batches, never per item); scores are
computed per batch on the device and copied to the host once per ``validate`` call.
``fast_preprocess: false`` runs the image processor itself (the reference path).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.validate._glossary import TermInfo
from pipeline.validate.base import RegionFinding, ValidationItem, summarise

# the crop windows and the fast preprocessing live in clip_preprocess; tests and benchmarks/b6_judges.py
# reach them through this module (square_crop: re-exported only)
from pipeline.validate.clip_preprocess import (
    FastPreprocess,
    _channels,
    _Window,
    _window_rgb,
    crop_window,
    pack_windows,
    window_order,
)
from pipeline.validate.clip_preprocess import square_crop as square_crop
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


class ClipJudge:
    name = "clip"
    version = "1"
    level = "release"
    needs_model = True  # a CLIP-style checkpoint, on GPU when there is one
    config_model = ClipConfig
    description = "embedding judge: crop of each box vs text prompts of the term and its alternatives"

    def __init__(self, config: ClipConfig | None = None, *, glossary: Any | None = None) -> None:
        self.config = config or ClipConfig()
        if not self.config.model_path:
            raise ValueError("validation.clip.model_path is not set (a local CLIP-style checkpoint directory)")
        if not Path(self.config.model_path).is_dir():
            raise FileNotFoundError(f"validation.clip.model_path {self.config.model_path} is not a directory")
        self._model_path: str = self.config.model_path  # checked above: a directory
        self.terms = TermInfo(glossary)
        self._model: Any = None
        self._image_processor: Any = None
        self._tokenizer: Any = None
        self.device: str | None = None
        self._fp = model_fingerprint(self._model_path)
        self.cooccur: dict[str, dict[str, Counter[str]]] = {}  # modality -> term -> co-occurring terms
        self.prepared = False
        self._text_cache: dict[str, Any] = {}  # prompt -> L2-normalised float32 CPU embedding (whole run)
        self._fast: FastPreprocess | None = None  # set by load() when fast_preprocess is on and verified
        self._resize_on_device: bool | None = None  # fast path: resize on the device (None: on CUDA only)

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
            self._model, self._image_processor, self._tokenizer = load_clip(self._model_path, self.device)
            self._fast = self._setup_fast() if self.config.fast_preprocess else None

    def _setup_fast(self) -> FastPreprocess | None:
        """The torch preprocessing when it reproduces the image processor on synthetic crops, else None."""
        import torch
        from PIL import Image

        ip = self._image_processor
        fp = FastPreprocess.from_processor(ip)
        if fp is None:
            log.info("clip: %s has settings the fast preprocessing does not reproduce; using it as is",
                     type(ip).__name__)
            return None
        rng = np.random.default_rng(0)
        windows = []
        for side, ch in ((19, 1), (96, 3), (333, 1)):  # upscaled, mildly and strongly downscaled
            yy, xx = np.mgrid[0:side, 0:side]
            blocks = np.kron(rng.integers(0, 256, size=(side // 7 + 1, side // 7 + 1)), np.ones((7, 7)))
            img = ((xx * 255 // side + yy * 97 // side + blocks[:side, :side]) // 2 % 256).astype(np.uint8)
            img = img[:, :, None] if ch == 1 else np.stack([img, img[::-1], img[:, ::-1]], axis=2)
            windows.append(_Window(img, 0, 0, side))
        try:
            ref = ip(images=[Image.fromarray(_window_rgb(w)) for w in windows], return_tensors="pt")["pixel_values"]
            buf, groups = pack_windows(windows)
            with torch.inference_mode():
                got = fp(buf.to(self.device), groups).cpu()
            ok = tuple(got.shape) == tuple(ref.shape)
            diff = (got - ref.float()).abs() if ok else None
        except Exception as e:  # any mismatch means: use the processor
            log.warning("clip: fast preprocessing failed its check (%s); using the image processor", e)
            return None
        if diff is None or float(diff.mean()) > 0.01 or float(diff.max()) > 0.1:
            log.warning("clip: fast preprocessing differs from %s (%s); using the image processor",
                        type(ip).__name__, "shape" if diff is None else f"mean |diff| {float(diff.mean()):.4f}")
            return None
        return fp

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

    def _encode_pixels(self, pv: Any) -> Any:
        """L2-normalised float32 image embeddings (on the device) of ready pixel values (on the device)."""
        import torch

        with torch.inference_mode():
            with self._autocast():
                f = _features(self._model.get_image_features(pixel_values=pv))
            return torch.nn.functional.normalize(f.float(), dim=-1)

    def _pixel_batches(self, windows: Sequence[_Window]) -> Iterator[Any]:
        """Pixel values (on the device) of ``windows``, one tensor per ``batch_size`` windows, in order.

        ``preprocess_workers`` threads prepare up to workers + 1 batches ahead: the fast path packs the
        crops into one uint8 buffer (pinned on CUDA; on the CPU also resized in the thread), the
        reference path runs the image processor.  The device copies with ``non_blocking``, resizes on
        the device (fast path on CUDA) and nothing here waits for it.
        """
        import torch
        from PIL import Image

        self.load()
        bs = self.config.batch_size
        chunks = [windows[i : i + bs] for i in range(0, len(windows), bs)]
        cuda = self.device == "cuda"
        fast = self._fast
        on_device = cuda if self._resize_on_device is None else self._resize_on_device

        def prep(chunk: Sequence[_Window]) -> tuple[Any, Any]:
            with torch.inference_mode():
                if fast is None:
                    pv = self._image_processor(images=[Image.fromarray(_window_rgb(w)) for w in chunk],
                                               return_tensors="pt")["pixel_values"]
                    return (pv.pin_memory() if cuda else pv), None
                buf, groups = pack_windows(chunk, pin=cuda)
                if not on_device:  # CPU: resize here, in the worker thread, overlapping the model
                    return fast(buf, groups), None
                return buf, groups

        workers = max(1, self.config.preprocess_workers)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            pending = [pool.submit(prep, c) for c in chunks[: workers + 1]]
            for j in range(len(chunks)):
                data, groups = pending.pop(0).result()
                if j + workers + 1 < len(chunks):  # keep the preprocessing pipeline full
                    pending.append(pool.submit(prep, chunks[j + workers + 1]))
                data = data.to(self.device, non_blocking=True)
                if groups is not None:
                    with torch.inference_mode():
                        data = fast(data, groups)  # type: ignore[misc]
                yield data

    def _embed_windows(self, windows: Sequence[_Window]) -> Iterator[Any]:
        """L2-normalised float32 embeddings (on the device) of ``windows``, one tensor per batch, in order."""
        for pv in self._pixel_batches(windows):
            yield self._encode_pixels(pv)

    def image_features(self, crops: list[np.ndarray]) -> Any:
        """L2-normalised float32 CPU embeddings of RGB (or grey) crops, in batches of ``batch_size``."""
        import torch
        from PIL import Image

        self.load()
        if not crops:
            return torch.zeros(0)
        if any(c.ndim < 2 or c.shape[0] != c.shape[1] for c in crops):  # not a window: the processor as is
            bs = self.config.batch_size
            batches = []
            for i in range(0, len(crops), bs):
                pv = self._image_processor(images=[Image.fromarray(c) for c in crops[i : i + bs]],
                                           return_tensors="pt")["pixel_values"]
                batches.append(self._encode_pixels(pv.to(self.device)))
            return torch.cat(batches).cpu()
        windows = [_Window(_channels(c), 0, 0, int(c.shape[0])) for c in crops]
        order = window_order(windows)
        feats = torch.cat(list(self._embed_windows([windows[r] for r in order]))).cpu()
        out = torch.empty_like(feats)
        out[torch.as_tensor(order)] = feats
        return out

    @staticmethod
    def _score(feats: Any, txt: Any, idx: np.ndarray, counts: np.ndarray, scale: float) -> Any:
        """(p_true, rank, argmax) per region, on the device, for one batch of image embeddings.

        ``idx[r]``: rows of ``txt`` for [true] + alternatives of region r, padded; ``counts[r]``: how many.
        """
        import torch

        dev = feats.device
        ii, cc = torch.from_numpy(idx), torch.from_numpy(counts)
        if dev.type == "cuda":
            ii, cc = ii.pin_memory(), cc.pin_memory()
        ii, cc = ii.to(dev, non_blocking=True), cc.to(dev, non_blocking=True)
        with torch.inference_mode():
            logits = scale * (txt[ii] * feats[:, None, :]).sum(-1)  # (b, K)
            valid = torch.arange(idx.shape[1], device=dev)[None, :] < cc[:, None]
            logits = logits.masked_fill(~valid, float("-inf"))
            probs = torch.softmax(logits, dim=1)
            rank = 1 + (logits > logits[:, :1]).sum(dim=1)
            best = logits.argmax(dim=1)  # first of equal maxima
            return torch.stack([probs[:, 0], rank.float(), best.float()], dim=1)

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
        cands_of: dict[tuple[str, str], list[str]] = {}  # (term, modality) -> [term, *alternatives]
        jobs: list[tuple[int, str, str, list[str]]] = []  # (item index, term, modality, candidates)
        windows: list[_Window] = []  # regions with alternatives; key = job index
        for i, it in enumerate(items):
            mod = str(it.meta.get("modality", ""))
            img = None
            for reg in it.regions:
                term = str(reg.get("term"))
                cands = cands_of.get((term, mod))
                if cands is None:
                    cands = cands_of[(term, mod)] = [term, *self.alternatives(term, mod)]
                if len(cands) > 1:
                    img = _channels(it.image) if img is None else img
                    x0, y0, side = crop_window(reg["box_px"], cfg.crop_margin, cfg.margin_px_min)
                    windows.append(_Window(img, x0, y0, side, len(jobs)))
                jobs.append((i, term, mod, cands))
        scored: dict[int, tuple[float, int, int]] = {}  # job index -> (p_true, rank, index of the best)
        if windows:
            self.load()
            prompt_of = {(t, m): self.prompt(t, m) for (term, m), c in cands_of.items() if len(c) > 1 for t in c}
            prompts = sorted(set(prompt_of.values()))
            index = {p: k for k, p in enumerate(prompts)}
            dev = self.device or "cpu"
            txt = self.text_features(prompts).to(dev)
            windows = [windows[r] for r in window_order(windows)]  # few distinct sizes per batch
            width = max(len(jobs[w.key][3]) for w in windows)
            idx = np.zeros((len(windows), width), dtype=np.int64)
            counts = np.zeros(len(windows), dtype=np.int64)
            for r, w in enumerate(windows):
                _, _, mod, cands = jobs[w.key]
                idx[r, : len(cands)] = [index[prompt_of[(c, mod)]] for c in cands]
                counts[r] = len(cands)
            scale = self._scale()
            outs, start = [], 0
            for feats in self._embed_windows(windows):
                b = int(feats.shape[0])
                outs.append(self._score(feats, txt, idx[start : start + b], counts[start : start + b], scale))
                start += b
            res = torch.cat(outs).cpu().numpy()  # the one device -> host copy
            for w, (p, rank, best) in zip(windows, res, strict=True):
                scored[w.key] = (float(p), int(rank), int(best))
        findings: list[list[RegionFinding]] = [[] for _ in items]
        scores: list[list[float]] = [[] for _ in items]
        for j, (i, term, _mod, cands) in enumerate(jobs):
            if j not in scored:
                findings[i].append(RegionFinding("pass", "no_alternatives", term))
                continue
            p_true, rank, best = scored[j]
            scores[i].append(p_true)
            verdict = "pass" if rank <= cfg.top_k else "flag"
            if cfg.fail_below is not None and p_true < cfg.fail_below:
                verdict = "fail"
            if verdict != "pass":
                findings[i].append(
                    RegionFinding(
                        verdict, "clip_rank", f"{term} rank {rank}/{len(cands)} p={p_true:.3f} (top: {cands[best]})"
                    )
                )
        out = []
        for i in range(len(items)):
            score = round(min(scores[i]), 6) if scores[i] else None
            out.append(summarise(self, findings[i], score, ok_reason="no_regions" if not items[i].regions else ""))
        return out
