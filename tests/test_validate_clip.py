"""Embedding judge with a tiny randomly initialised CLIP built offline (no download, no weights).

The model is saved with save_pretrained into tmp_path and loaded back through the project's real
loader (pipeline.validate.clip.load_clip: AutoProcessor/AutoModel, local_files_only).  Its verdicts
are meaningless (random weights); the tests check shapes, batching, device, determinism and that the
verdict follows from the scores.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest

import torch  # noqa: E402
import tokenizers  # noqa: E402,F401

from pipeline.regions.coords import normalise_box  # noqa: E402
from pipeline.validate import ValidationItem, run_validators  # noqa: E402
from pipeline.validate import clip as clipmod  # noqa: E402
from pipeline.validate.clip import ClipJudge, load_clip, square_crop  # noqa: E402
from schemas.validation import ClipConfig  # noqa: E402

from helpers_clip import PROJ, build_tiny_clip


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-clip")
    build_tiny_clip(d)
    return d


TERMS = ["liver", "spleen", "kidney_right", "kidney_left", "stomach", "aorta"]


def make_items(n: int = 9) -> list[ValidationItem]:
    rng = np.random.default_rng(7)
    out = []
    for i in range(n):
        h, w = 60 + i, 80
        img = rng.integers(0, 255, size=(h, w), dtype=np.uint8)
        regions = []
        for j, term in enumerate(TERMS[: 2 + i % 4]):
            bp = [2 + 10 * j, 3 + j, 12 + 10 * j + i % 3, 20 + j]
            regions.append({"term": term, "box": list(normalise_box(bp, w, h)), "box_px": bp, "area": 50})
        row = {"id": f"r{i}", "image": f"{i}.png", "width": w, "height": h, "conversations": [],
               "meta": {"modality": "CT" if i % 3 else "MR", "axis": "axial", "regions": regions}}
        out.append(ValidationItem(row, img if i % 2 else np.stack([img] * 3, axis=2)))
    return out


def judge(model_dir, **kw: Any) -> ClipJudge:
    return ClipJudge(ClipConfig(model_path=str(model_dir), device="cpu", **kw), glossary=None)


def test_loader_reads_local_checkpoint(model_dir, tmp_path) -> None:
    model, ip, tok = load_clip(model_dir, "cpu")
    assert type(model).__name__ == "CLIPModel" and not model.training
    assert next(model.parameters()).device.type == "cpu"
    assert tok("a CT image of the liver")["input_ids"][0] == 2
    with pytest.raises(FileNotFoundError):
        load_clip(tmp_path / "missing")
    with pytest.raises(ValueError, match="model_path"):
        ClipJudge(ClipConfig())


def test_feature_shapes_and_norm(model_dir) -> None:
    j = judge(model_dir, batch_size=3)
    crops = [np.full((20 + i, 20 + i, 3), 10 * i, np.uint8) for i in range(5)]
    f = j.image_features(crops)
    assert tuple(f.shape) == (5, PROJ) and f.dtype == torch.float32
    assert torch.allclose(f.norm(dim=-1), torch.ones(5), atol=1e-5)
    t = j.text_features(["a CT image of the liver", "a CT image of the spleen"])
    assert tuple(t.shape) == (2, PROJ)
    assert j.device == "cpu"


def test_batch_size_does_not_change_results(model_dir) -> None:
    items = make_items()
    r1 = judge(model_dir, batch_size=1).validate(items)
    r7 = judge(model_dir, batch_size=7).validate(items)
    assert [r.verdict for r in r1] == [r.verdict for r in r7]
    assert [r.reason.split(" p=")[0] for r in r1] == [r.reason.split(" p=")[0] for r in r7]
    np.testing.assert_allclose([r.score for r in r1], [r.score for r in r7], rtol=1e-5, atol=1e-6)
    j1, j7 = judge(model_dir, batch_size=1), judge(model_dir, batch_size=7)
    crops = [square_crop(it.image, reg["box_px"], 0.1, 2) for it in items for reg in it.regions]
    torch.testing.assert_close(j1.image_features(crops), j7.image_features(crops), rtol=1e-5, atol=1e-6)


def test_deterministic_across_judges(model_dir) -> None:
    items = make_items()
    a = [r.model_dump() for r in judge(model_dir).validate(items)]
    b = [r.model_dump() for r in judge(model_dir).validate(items)]
    assert a == b


def test_cpu_notice_once(model_dir, monkeypatch, caplog) -> None:
    monkeypatch.setattr(clipmod, "_CPU_NOTICE_SHOWN", False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="pipeline.validate.clip"):
        for _ in range(2):
            j = ClipJudge(ClipConfig(model_path=str(model_dir), device="auto"), glossary=None)
            j.validate(make_items(2))
            assert j.device == "cpu"
    assert sum("no CUDA device" in r.message for r in caplog.records) == 1
    with pytest.raises(RuntimeError, match="cuda"):
        ClipJudge(ClipConfig(model_path=str(model_dir), device="cuda"), glossary=None).load()


def test_scores_follow_from_embeddings(model_dir) -> None:
    """score = softmax prob of the true term over [true]+alternatives at the model's logit scale."""
    items = make_items(3)
    j = judge(model_dir, top_k=1)
    res = j.validate(items)
    model, *_ = load_clip(model_dir)
    scale = float(model.logit_scale.detach().exp())
    for it, r in zip(items, res, strict=True):
        probs = []
        mod = it.meta["modality"]
        for reg in it.regions:
            cands = [reg["term"], *j.alternatives(reg["term"], mod)]
            img = j.image_features([square_crop(it.image, reg["box_px"], 0.1, 2)])[0]
            txt = j.text_features([j.prompt(c, mod) for c in cands])
            p = torch.softmax(scale * (txt @ img), dim=0)
            probs.append(float(p[0]))
            rank = 1 + int((p > p[0]).sum())
            assert (rank > 1) == (f"{reg['term']} rank {rank}/" in r.reason)
        assert r.score == pytest.approx(min(probs), abs=1e-5)
        assert r.verdict == ("pass" if "clip_rank" not in r.codes else "flag")


def test_verdict_logic_with_controlled_embeddings(model_dir, monkeypatch) -> None:
    """Crops embed exactly like the text of a chosen term: the verdict must follow the rank."""
    items = make_items(2)
    j = judge(model_dir, top_k=1, fail_below=0.01, alternatives="batch")
    j.fit(items)
    basis: dict[str, torch.Tensor] = {}

    def text_features(prompts: list[str]) -> torch.Tensor:
        for p in prompts:
            basis.setdefault(p, torch.nn.functional.normalize(torch.randn(PROJ, generator=torch.Generator().manual_seed(len(basis))), dim=0))
        return torch.stack([basis[p] for p in prompts])

    looks_like = {("r0", "liver"): "liver", ("r0", "spleen"): "liver", ("r1", "liver"): "liver", ("r1", "spleen"): "spleen"}
    order = [(it.row_id, reg["term"]) for it in items for reg in it.regions]  # window key = region index

    def embed_windows(windows):
        out = []
        for w in windows:
            rid, term = order[w.key]
            mod = next(it.meta["modality"] for it in items if it.row_id == rid)
            out.append(text_features([j.prompt(looks_like.get((rid, term), term), mod)])[0])
        yield torch.stack(out)

    monkeypatch.setattr(j, "text_features", text_features)
    monkeypatch.setattr(j, "_embed_windows", embed_windows)
    monkeypatch.setattr(j, "load", lambda: None)
    monkeypatch.setattr(j, "_scale", lambda: 100.0)
    r0, r1 = j.validate(items)
    assert r0.verdict == "fail" and r0.codes == ["clip_rank"]  # spleen crop looks like liver: p ~ 0
    assert "spleen rank 2/2" in r0.reason and "(top: liver)" in r0.reason
    assert r1.verdict == "pass" and r1.score > 0.99


def test_alternatives_mirror_cooccurring_glossary(model_dir) -> None:
    class G:
        def laterality(self, t: str) -> str | None:
            return {"kidney_right": "right", "kidney_left": "left"}.get(t)

        def mirror(self, t: str) -> str | None:
            return {"kidney_right": "kidney_left", "kidney_left": "kidney_right"}.get(t)

        def display(self, t: str, lang: str) -> str:
            return t.replace("_", " ")

        def same_region_terms(self, t: str) -> list[str]:
            return ["gallbladder", "pancreas", t]

    j = ClipJudge(ClipConfig(model_path=str(model_dir), device="cpu", max_alternatives=4), glossary=G())
    assert j.needs_fit
    run_validators(make_items(6), [])  # nothing to run: no fit
    j.fit(make_items(6))
    assert not j.needs_fit
    alts = j.alternatives("kidney_right", "CT")
    assert alts[0] == "kidney_left" and len(alts) == 4 and "kidney_right" not in alts
    assert set(alts[1:]) <= {"liver", "spleen", "stomach", "aorta", "gallbladder", "pancreas"}
    j2 = ClipJudge(ClipConfig(model_path=str(model_dir), device="cpu", alternatives="glossary"), glossary=G())
    assert j2.alternatives("liver", "CT") == ["gallbladder", "pancreas"] and not j2.needs_fit


def test_square_crop() -> None:
    img = np.arange(100 * 120, dtype=np.uint32).reshape(100, 120).astype(np.uint8)
    c = square_crop(img, [10, 20, 29, 29], 0.0, 0)
    assert c.shape == (20, 20, 3) and c.dtype == np.uint8
    assert np.array_equal(c[5, :, 0], img[20, 10:30])  # box rows 20..29 centred in a 20-row window
    edge = square_crop(img, [0, 0, 9, 9], 0.5, 2)
    assert edge.shape == (20, 20, 3) and edge[0, 0, 0] == 0  # padded with black outside the image
    assert np.array_equal(edge[5:, 5:, 1], img[:15, :15])


def test_through_build_validators_and_cache(model_dir, tmp_path) -> None:
    from pipeline.validate import VerdictCache, apply_policy, build_validators
    from schemas.validation import ValidationConfig

    cfg = ValidationConfig(validators=["clip"], clip=ClipConfig(model_path=str(model_dir), device="cpu"),
                           policy={"per_validator": {"clip": {"flag": "keep"}}})
    items = make_items(5)
    cache = VerdictCache(tmp_path / "v")
    first = run_validators(items, build_validators(cfg), cache=cache)
    assert cache.computed == 5 and all(r[0].validator == "clip" for r in first)
    cache.reset_counts()
    second = run_validators(items, build_validators(cfg), cache=cache)  # fresh judge: same fit, same keys
    assert (cache.computed, cache.cached) == (0, 5)
    assert [r[0].model_dump() for r in second] == [r[0].model_dump() for r in first]
    assert all(apply_policy(r, cfg).action in ("keep", "drop") for r in first)


# ---------------------------------------------------------------------------------------------- fast path
GREY = 1 / (255 * 0.2613)  # one grey level in normalised units (smallest CLIP std)


def _windows(seed: int = 3) -> list:
    rng = np.random.default_rng(seed)
    grey = rng.integers(0, 256, (90, 70), dtype=np.uint8)
    rgb = rng.integers(0, 256, (90, 70, 3), dtype=np.uint8)
    out = []
    for img in (grey, rgb):
        for box in ([5, 5, 14, 14], [0, 0, 69, 89], [60, 80, 69, 89], [30, 30, 31, 31], [10, 20, 40, 35]):
            x0, y0, side = clipmod.crop_window(box, 0.1, 2)
            out.append(clipmod._Window(clipmod._channels(img), x0, y0, side))
    return [out[r] for r in clipmod.window_order(out)]


def _processor_pixels(ip, windows) -> torch.Tensor:
    from PIL import Image

    return ip(images=[Image.fromarray(clipmod._window_rgb(w)) for w in windows], return_tensors="pt")["pixel_values"]


@pytest.mark.parametrize(
    "kw",
    [
        {"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}},  # CLIP (bicubic)
        {"size": {"shortest_edge": 40}, "crop_size": {"height": 32, "width": 30}},  # a real centre crop
        {"size": {"height": 36, "width": 36}, "do_center_crop": False, "resample": 2,  # SigLIP-like
         "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]},
    ],
)
def test_fast_preprocess_matches_processor_pixels(kw) -> None:
    """Torch crop/resize/normalise within about one grey level of the image processor."""
    from transformers import CLIPImageProcessor

    ip = CLIPImageProcessor(**kw)
    fp = clipmod.FastPreprocess.from_processor(ip)
    assert fp is not None
    windows = _windows()
    buf, groups = clipmod.pack_windows(windows)
    assert sum(g[2] for g in groups) == len(windows) and len(groups) < len(windows)  # same sizes grouped
    got = fp(buf, groups)
    ref = _processor_pixels(ip, windows)
    assert got.shape == ref.shape and got.dtype == torch.float32
    diff = (got - ref).abs()
    assert float(diff.mean()) < 0.05 * GREY and float(diff.max()) <= 2.01 * GREY


def test_pack_windows_is_square_crop() -> None:
    windows = _windows()
    buf, groups = clipmod.pack_windows(windows)
    flat, k = buf.numpy(), 0
    for side, ch, count, off in groups:
        for n in range(count):
            w = windows[k]
            assert (w.side, w.channels) == (side, ch)
            crop = flat[off + n * side * side * ch : off + (n + 1) * side * side * ch].reshape(side, side, ch)
            np.testing.assert_array_equal(np.broadcast_to(crop, (side, side, 3)), clipmod._window_rgb(w))
            k += 1


def test_fast_preprocess_unsupported_settings_fall_back() -> None:
    from transformers import CLIPImageProcessor

    assert clipmod.FastPreprocess.from_processor(CLIPImageProcessor(resample=1)) is None  # LANCZOS
    assert clipmod.FastPreprocess.from_processor(
        CLIPImageProcessor(size={"shortest_edge": 32, "longest_edge": 64})) is None
    assert clipmod.FastPreprocess.from_processor(
        CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 40, "width": 40})) is None


def test_fast_path_checked_at_load(model_dir, monkeypatch, caplog) -> None:
    """A fast path that disagrees with the processor is refused at load: the processor is used."""
    real = clipmod.FastPreprocess.from_processor

    def wrong(ip):
        fp = real(ip)
        fp.sub = [0.0, 0.0, 0.0]  # forgot the mean
        return fp

    items = make_items(4)
    ref = judge(model_dir, fast_preprocess=False).validate(items)
    monkeypatch.setattr(clipmod.FastPreprocess, "from_processor", staticmethod(wrong))
    j = judge(model_dir)
    with caplog.at_level(logging.WARNING, logger="pipeline.validate.clip"):
        res = j.validate(items)
    assert j._fast is None and any("fast preprocessing differs" in r.message for r in caplog.records)
    assert [r.model_dump() for r in res] == [r.model_dump() for r in ref]


def test_fast_path_agrees_with_processor_path(model_dir) -> None:
    """Same verdicts and ranks, embeddings with cosine > 0.99, as the image processor (reference) path."""
    items = make_items(30)
    fast, ref = judge(model_dir), judge(model_dir, fast_preprocess=False)
    rf, rr = fast.validate(items), ref.validate(items)
    assert fast._fast is not None and ref._fast is None
    assert [r.verdict for r in rf] == [r.verdict for r in rr]
    assert [r.reason.split(" p=")[0] for r in rf] == [r.reason.split(" p=")[0] for r in rr]
    np.testing.assert_allclose([r.score for r in rf], [r.score for r in rr], atol=1e-3)
    crops = [square_crop(it.image, reg["box_px"], 0.1, 2) for it in items for reg in it.regions]
    cos = (fast.image_features(crops) * ref.image_features(crops)).sum(-1)
    assert float(cos.min()) > 0.99


def test_grey_and_rgb_images_embed_alike(model_dir) -> None:
    items = make_items(6)
    grey = [it for it in items if it.image.ndim == 2]
    rgb = [ValidationItem(it.row, np.stack([it.image] * 3, axis=2)) for it in grey]
    j = judge(model_dir)
    a, b = j.validate(grey), j.validate(rgb)
    assert [r.model_dump() for r in a] == [r.model_dump() for r in b]


def test_text_embeddings_cached_across_calls(model_dir, monkeypatch) -> None:
    """Unique prompts are encoded in one text-tower call per batch, once for the judge's lifetime."""
    items = make_items(9)
    j = judge(model_dir)
    j.load()
    calls: list[int] = []
    real = j._model.get_text_features

    def counting(**kw):
        calls.append(int(kw["input_ids"].shape[0]))
        return real(**kw)

    monkeypatch.setattr(j._model, "get_text_features", counting)
    first = j.validate(items)
    n_prompts = len(j._text_cache)
    assert calls == [n_prompts] and n_prompts <= j.config.batch_size
    assert [r.model_dump() for r in j.validate(items)] == [r.model_dump() for r in first]
    assert calls == [n_prompts]  # second run: all from the cache


def test_image_features_non_square_uses_processor(model_dir) -> None:
    j = judge(model_dir, batch_size=2)
    crops = [np.full((20, 30, 3), 40, np.uint8), np.full((25, 25, 3), 90, np.uint8), np.zeros((9, 5, 3), np.uint8)]
    f = j.image_features(crops)
    assert tuple(f.shape) == (3, PROJ)
    sq = j.image_features([crops[1]])
    torch.testing.assert_close(f[1], sq[0], rtol=1e-4, atol=1e-5)


def test_resize_on_device_path_same_results(model_dir) -> None:
    """The CUDA layout (uint8 crops shipped, resized by the consumer thread) gives the CPU layout's results."""
    items = make_items(9)
    a = judge(model_dir, batch_size=4)
    b = judge(model_dir, batch_size=4)
    b._resize_on_device = True
    assert [r.model_dump() for r in a.validate(items)] == [r.model_dump() for r in b.validate(items)]
