"""Benchmark B6: the embedding judge (``clip``) on GPU vs CPU.

Builds a randomly initialised CLIP of realistic size (ViT-B/16 image tower, 12-layer text tower,
512-d projection: ~150 M parameters; nothing is downloaded) with an offline word-level tokenizer,
saves it with ``save_pretrained`` and loads it through the project's loader, generates a few thousand
synthetic regions (512x512 grey images, several boxes each) and times ``ClipJudge.validate``:

* on the GPU (bf16 autocast) over all items, after a warm-up, while a background thread samples GPU
  utilisation (``nvidia-smi``, else ``torch.cuda.utilization``); once with the judge's fast torch
  preprocessing (the default) and once with the image processor (``fast_preprocess: false``, the
  reference path), with their agreement;
* on the CPU over a subset (``--cpu-items``);
* the stages alone, on each device: the judge's preprocessing (crop threads + device resize, as
  ``validate`` runs it), the image processor alone (CPU threads), the image tower on ready tensors,
  and the text tower on all of the run's prompts (uncached), to show which one bounds the judge;
* agreement of GPU (bf16) and CPU (fp32) verdicts / scores on the CPU subset.

Without CUDA the GPU parts are skipped with a message and ``--size auto`` picks a tiny model, so the
script also runs (in seconds) on a CPU-only machine.  Random weights make verdicts meaningless; only
throughput and agreement are measured.

Run: ``python -m benchmarks.b6_judges [--items N] [--regions R] [--cpu-items M] [--batch-size B]
[--size auto|base|tiny] [--model-dir DIR] [--json FILE]``; ``benchmarks/gpu_check.sh`` wraps it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

TERMS = [
    "liver", "spleen", "kidney_right", "kidney_left", "stomach", "aorta", "pancreas", "gallbladder",
    "inferior_vena_cava", "colon", "duodenum", "adrenal_gland_right", "adrenal_gland_left", "small_bowel",
]
SIZES = {
    # ViT-B/16 image tower, CLIP text tower: the size of BiomedCLIP / PubMedCLIP-style judges
    "base": dict(vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                             image_size=224, patch_size=16),
                 text=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8,
                           max_position_embeddings=77, vocab_size=49408),
                 proj=512),
    "tiny": dict(vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                             image_size=32, patch_size=8),
                 text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           max_position_embeddings=32, vocab_size=512),
                 proj=16),
}


def build_model(path: Path, size: str) -> None:
    """Random CLIP of the given size + an offline word-level tokenizer + CLIPImageProcessor."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, PreTrainedTokenizerFast

    from pipeline.validate._glossary import TermInfo

    spec = SIZES[size]
    words = {"a", "an", "the", "of", "image", "ct", "mr"}
    ti = TermInfo()
    for t in TERMS:
        words.update(ti.display(t, "en").lower().split())
    vocab = {"<pad>": 0, "<unk>": 1, "<bos>": 2, "<eos>": 3}
    for w in sorted(words):
        vocab[w] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="<bos> $A <eos>", special_tokens=[("<bos>", 2), ("<eos>", 3)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>",
                                  eos_token="<eos>", model_max_length=spec["text"]["max_position_embeddings"])
    cfg = CLIPConfig(
        text_config=dict(**spec["text"], eos_token_id=3, bos_token_id=2, pad_token_id=0),
        vision_config=spec["vision"],
        projection_dim=spec["proj"],
    )
    torch.manual_seed(0)
    model = CLIPModel(cfg)
    n = spec["vision"]["image_size"]
    ip = CLIPImageProcessor(size={"shortest_edge": n}, crop_size={"height": n, "width": n})
    model.save_pretrained(path)
    CLIPProcessor(image_processor=ip, tokenizer=tok).save_pretrained(path)


def make_items(n_items: int, regions: int, seed: int = 0, side: int = 512) -> list[Any]:
    from pipeline.regions.coords import normalise_box
    from pipeline.validate import ValidationItem

    rng = np.random.default_rng(seed)
    items = []
    for i in range(n_items):
        coarse = rng.integers(0, 255, size=(side // 8, side // 8), dtype=np.uint8)
        img = np.repeat(np.repeat(coarse, 8, axis=0), 8, axis=1)
        regs = []
        for term in rng.choice(TERMS, size=regions, replace=False):
            w, h = (int(v) for v in rng.integers(16, side // 3, size=2))
            x0, y0 = int(rng.integers(0, side - w)), int(rng.integers(0, side - h))
            bp = [x0, y0, x0 + w - 1, y0 + h - 1]
            regs.append({"term": str(term), "box": list(normalise_box(bp, side, side)), "box_px": bp, "area": w * h})
        row = {"id": f"b6-{i}", "image": f"{i}.png", "width": side, "height": side, "conversations": [],
               "meta": {"modality": "CT", "axis": "axial", "regions": regs}}
        items.append(ValidationItem(row, img))
    return items


class GpuSampler:
    """Samples GPU utilisation (%) every ``period`` s in a background thread."""

    def __init__(self, period: float = 0.1) -> None:
        self.period = period
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._smi = shutil.which("nvidia-smi")
        self._t = threading.Thread(target=self._run, daemon=True)

    def _read(self) -> float | None:
        if self._smi:
            try:
                out = subprocess.run([self._smi, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=5).stdout.strip().splitlines()
                return float(out[0]) if out else None
            except (OSError, ValueError, subprocess.TimeoutExpired):
                return None
        try:
            import torch

            return float(torch.cuda.utilization())
        except Exception:  # noqa: BLE001 - pynvml missing
            return None

    def _run(self) -> None:
        while not self._stop.is_set():
            v = self._read()
            if v is not None:
                self.samples.append(v)
            self._stop.wait(self.period)

    def __enter__(self) -> GpuSampler:
        self._t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._t.join()

    def summary(self) -> dict[str, Any]:
        s = self.samples
        return {"n": len(s), "mean": round(statistics.fmean(s), 1) if s else None, "max": max(s) if s else None,
                "source": "nvidia-smi" if self._smi else "torch.cuda.utilization"}


def timed_validate(judge: Any, items: list[Any], sync: bool) -> tuple[float, list[Any]]:
    import torch

    if sync:
        torch.cuda.synchronize()
    t = time.perf_counter()
    res = judge.validate(items)
    if sync:
        torch.cuda.synchronize()
    return time.perf_counter() - t, res


def stage_times(judge: Any, items: list[Any], batch: int, reps: int = 5) -> dict[str, Any]:
    """Regions/s of the judge's preprocessing alone, the image processor alone and the image tower alone;
    seconds of the text tower on all prompts of ``items`` (cache emptied first)."""
    from concurrent.futures import ThreadPoolExecutor

    import torch
    from PIL import Image

    from pipeline.validate import clip as clipmod

    cuda = judge.device == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    cfg = judge.config
    windows = [clipmod._Window(clipmod._channels(it.image), *clipmod.crop_window(r["box_px"], cfg.crop_margin,
                                                                                   cfg.margin_px_min))
               for it in items for r in it.regions][: max(batch * 4, 1)]
    windows = [windows[r] for r in clipmod.window_order(windows)]
    out: dict[str, Any] = {"fast_preprocess": judge._fast is not None}
    for _ in range(2):  # second pass timed (first: pinned-memory pool, kernels)
        sync()
        t = time.perf_counter()
        pvs = list(judge._pixel_batches(windows))
        sync()
    out["preprocess_regions_per_s"] = round(len(windows) / (time.perf_counter() - t), 1)

    crops = [clipmod._window_rgb(w) for w in windows]
    chunks = [crops[i : i + batch] for i in range(0, len(crops), batch)]
    ip = judge._image_processor
    t = time.perf_counter()
    with ThreadPoolExecutor(max_workers=cfg.preprocess_workers) as pool:
        list(pool.map(lambda c: ip(images=[Image.fromarray(x) for x in c], return_tensors="pt")["pixel_values"], chunks))
    out["processor_regions_per_s"] = round(len(crops) / (time.perf_counter() - t), 1)

    pv = pvs[0]
    judge._encode_pixels(pv)
    sync()
    t = time.perf_counter()
    for _ in range(reps):
        judge._encode_pixels(pv)
    sync()
    out["image_tower_regions_per_s"] = round(reps * pv.shape[0] / (time.perf_counter() - t), 1)

    prompts = sorted({judge.prompt(c, str(it.meta.get("modality", ""))) for it in items for r in it.regions
                      for c in [str(r["term"]), *judge.alternatives(str(r["term"]), str(it.meta.get("modality", "")))]})
    saved = dict(judge._text_cache)
    judge._text_cache.clear()
    sync()
    t = time.perf_counter()
    judge.text_features(prompts)
    sync()
    out["text_tower_s"] = round(time.perf_counter() - t, 4)
    out["prompts"] = len(prompts)
    judge._text_cache.update(saved)
    return out


def agreement(a: list[Any], b: list[Any]) -> dict[str, Any]:
    same = sum(x.verdict == y.verdict for x, y in zip(a, b, strict=True))
    same_rank = sum(x.reason.split(" p=")[0] == y.reason.split(" p=")[0] for x, y in zip(a, b, strict=True))
    diffs = [abs(x.score - y.score) for x, y in zip(a, b, strict=True) if x.score is not None and y.score is not None]
    return {"rows": len(a), "same_verdict": same, "same_rank": same_rank,
            "max_abs_score_diff": round(max(diffs), 5) if diffs else None}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=1000, help="images on the GPU run")
    ap.add_argument("--regions", type=int, default=4, help="regions (boxes) per image")
    ap.add_argument("--cpu-items", type=int, default=24, help="images on the CPU run (a subset)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--cpu-batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="preprocessing threads")
    ap.add_argument("--size", choices=["auto", "base", "tiny"], default="auto")
    ap.add_argument("--model-dir", default=None, help="reuse / keep the generated model here")
    ap.add_argument("--no-reference", action="store_true", help="skip the image-processor (reference) GPU run")
    ap.add_argument("--json", default=None, help="write the results here too")
    args = ap.parse_args(argv)

    import torch

    from pipeline.validate.clip import ClipJudge
    from schemas.validation import ClipConfig

    cuda = torch.cuda.is_available()
    size = args.size if args.size != "auto" else ("base" if cuda else "tiny")
    out: dict[str, Any] = {
        "benchmark": "b6_judges", "size": size, "torch": torch.__version__, "python": platform.python_version(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "gpu_name": torch.cuda.get_device_name(0) if cuda else None,
    }
    if not cuda:
        print("no CUDA device: skipping the GPU runs (CPU run and agreement only)", flush=True)
        if size == "tiny":
            args.items = min(args.items, 40)
            args.cpu_items = min(args.cpu_items, 40)

    tmp = None
    model_dir = Path(args.model_dir) if args.model_dir else Path(tmp := tempfile.mkdtemp(prefix="b6-clip-"))
    t = time.perf_counter()
    if not (model_dir / "config.json").exists():
        model_dir.mkdir(parents=True, exist_ok=True)
        build_model(model_dir, size)
    out["build_model_s"] = round(time.perf_counter() - t, 2)
    n_params = None

    items = make_items(args.items, args.regions)
    cpu_items = items[: args.cpu_items]
    base = dict(model_path=str(model_dir), alternatives="batch", preprocess_workers=args.workers)
    try:
        res_gpu = None
        if cuda:
            judge = ClipJudge(ClipConfig(**base, device="cuda", batch_size=args.batch_size), glossary=None)
            judge.fit(items)
            judge.validate(items[: max(1, args.batch_size // args.regions)])  # warm-up (load, kernels)
            n_params = sum(p.numel() for p in judge._model.parameters())
            torch.cuda.reset_peak_memory_stats()
            with GpuSampler() as sampler:
                dt, res_gpu = timed_validate(judge, items, sync=True)
            n_reg = sum(len(it.regions) for it in items)
            out["gpu"] = {
                "items": len(items), "regions": n_reg, "seconds": round(dt, 3),
                "regions_per_s": round(n_reg / dt, 1), "items_per_s": round(len(items) / dt, 1),
                "batch_size": args.batch_size, "utilisation_pct": sampler.summary(),
                "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                **stage_times(judge, items, args.batch_size),
            }
            if not args.no_reference:  # the image processor path on the same GPU: speed and agreement
                ref = ClipJudge(ClipConfig(**base, device="cuda", batch_size=args.batch_size, fast_preprocess=False),
                                glossary=None)
                ref.fit(items)
                ref.validate(items[: max(1, args.batch_size // args.regions)])
                with GpuSampler() as sampler:
                    dt, res_ref = timed_validate(ref, items, sync=True)
                out["gpu_processor"] = {"items": len(items), "regions": n_reg, "seconds": round(dt, 3),
                                        "regions_per_s": round(n_reg / dt, 1), "batch_size": args.batch_size,
                                        "utilisation_pct": sampler.summary()}
                out["agreement_fast_vs_processor"] = agreement(res_gpu, res_ref)
                del ref
        cj = ClipJudge(ClipConfig(**base, device="cpu", batch_size=args.cpu_batch_size), glossary=None)
        cj.fit(items)  # same alternatives as the GPU run
        cj.validate(cpu_items[:1])  # warm-up
        n_params = n_params or sum(p.numel() for p in cj._model.parameters())
        dt, res_cpu = timed_validate(cj, cpu_items, sync=False)
        n_reg = sum(len(it.regions) for it in cpu_items)
        out["cpu"] = {"items": len(cpu_items), "regions": n_reg, "seconds": round(dt, 3),
                      "regions_per_s": round(n_reg / dt, 1), "batch_size": args.cpu_batch_size,
                      **stage_times(cj, cpu_items, args.cpu_batch_size, reps=1)}
        out["params_m"] = round((n_params or 0) / 1e6, 1)
        if res_gpu is not None:
            out["agreement_bf16_vs_fp32"] = agreement(res_gpu[: len(cpu_items)], res_cpu)
            out["speedup_gpu_vs_cpu"] = round(out["gpu"]["regions_per_s"] / out["cpu"]["regions_per_s"], 1)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    print_table(out)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


def _stages(r: dict[str, Any]) -> str:
    return (f"preprocess alone {r['preprocess_regions_per_s']}/s ({'fast' if r['fast_preprocess'] else 'processor'}), "
            f"image processor alone {r['processor_regions_per_s']}/s, image tower alone "
            f"{r['image_tower_regions_per_s']}/s, text tower {r['text_tower_s']} s for {r['prompts']} prompts")


def print_table(out: dict[str, Any]) -> None:
    print(f"\nB6 embedding judge — model {out['size']} ({out.get('params_m')} M params), torch {out['torch']}, "
          f"{out['cpu_count']} CPUs ({out['torch_threads']} torch threads), GPU: {out['gpu_name']}")
    print(f"{'run':<14} {'regions':>8} {'seconds':>9} {'regions/s':>11}  notes")
    for k in ("gpu", "gpu_processor", "cpu"):
        r = out.get(k)
        if r is None:
            if k != "gpu_processor":
                print(f"{k:<14} {'-':>8} {'-':>9} {'-':>11}  skipped (no CUDA)")
            continue
        notes = ""
        if k.startswith("gpu"):
            u = r["utilisation_pct"]
            notes = f"util mean {u['mean']}% max {u['max']}% ({u['n']} samples, {u['source']})"
        if k == "gpu":
            notes += f"; peak {r['peak_mem_gib']} GiB; " + _stages(r)
        if k == "cpu":
            notes = _stages(r)
        print(f"{k:<14} {r['regions']:>8} {r['seconds']:>9.3f} {r['regions_per_s']:>11.1f}  {notes}")
    for key, label in (("agreement_fast_vs_processor", "fast vs processor preprocessing (GPU)"),
                       ("agreement_bf16_vs_fp32", "bf16 GPU vs fp32 CPU")):
        a = out.get(key)
        if a:
            print(f"{label} on {a['rows']} rows: {a['same_verdict']} same verdicts, {a['same_rank']} same ranks, "
                  f"max |score diff| {a['max_abs_score_diff']}")
    if "speedup_gpu_vs_cpu" in out:
        print(f"GPU/CPU speed-up: {out['speedup_gpu_vs_cpu']}x")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
