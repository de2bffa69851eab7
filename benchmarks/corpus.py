"""Scale corpus: N realistic cases in the layouts the shipped adapters read, with a card and a config each.

Everything is made from the shipped TotalSegmentator CT sample (``totalseg-nifti/ct``: a 122x101x30
int16 CT at 3 mm with a 41-label map) by seeded resampling, so the corpus is deterministic and needs no
download:

* ``ct/sNNNN/ct.nii.gz`` -- a full-size CT (default 512x512x300 int16, square in-plane pixels, the
  sample's field of view plus air): the sample repeated in ``z`` in blocks whose label ids are renamed
  to other TotalSegmentator classes of the same side (a left/right pair stays a pair, so the
  laterality rules still hold), with per-case jitter of scale and position, a few structures dropped
  and Gaussian noise (so gzip has realistic work). About 100 of the 117 classes are present per case.
  Shapes and label statistics are realistic; the anatomy above the first block is not.
* ``ct/sNNNN/segmentations.nii.gz`` -- the combined uint8 label map (``--ct-layouts labelmap``), and/or
* ``ct/sNNNN/segmentations/<structure>.nii.gz`` -- TotalSegmentator's own layout (``--ct-layouts
  masks``): one uint8 mask per class for all 117 classes, empty files included, as the dataset ships.
* ``sam2d/`` -- SA-Med2D-20M layout: 8-bit RGB slice PNGs of the sizes of the shipped SA-Med2D samples
  (512x512, 320x290, 258x181, 225x155), one PNG per structure instance (``<stem>_<structure>_<NNN>.png``,
  connected components), ``image2label_train.json`` / ``label2image_test.json``.
* ``mask2d/`` -- a plain mask folder: ``images/<stem>.png`` (grey) + ``masks/<stem>.png`` label-value map
  (TotalSegmentator ids), read by the ``mask_folder_2d`` adapter with ``mask_kind: values``.
* ``cards/corpus-*.yaml`` and ``configs/*.yaml`` (one release config per part, plus ``all.yaml``) so that
  ``medreg build OUT/configs/ct-masks.yaml --out ...`` runs on it; ``corpus.json`` records the
  parameters and what was written. Generated configs hold absolute paths (they are not committed).

    python -m benchmarks.corpus OUT --ct 6 --sam2d 1000 --mask2d 1000 [--ct-shape 512,512,300]
        [--ct-layouts labelmap,masks] [--seed 0] [--workers 1]

Never run by ``make test`` at full size; the tests use tiny N and small shapes.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import re
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

SAMPLE_CT = "totalseg-nifti/ct/example_ct_sm.nii.gz"
SAMPLE_SEG = "totalseg-nifti/ct/example_seg.nii.gz"
SIZES_2D = ((512, 512), (512, 512), (320, 290), (258, 181), (225, 155))  # (W, H) of the SA-Med2D samples
AIR_HU = -1024
GZIP_LEVEL = 1  # nibabel's default for .nii.gz; zlib with mtime 0, so files are byte-deterministic
_LR = re.compile(r"(^|_)(left|right)(_|$)")


# ----------------------------------------------------------------------------------------------------
# the sample and the label renaming
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    image: np.ndarray  # (X, Y, Z) int16, file layout
    labels: np.ndarray  # (X, Y, Z) uint8
    affine: np.ndarray
    names: dict[int, str]  # the 117 TotalSegmentator `total` classes


@lru_cache(maxsize=2)
def load_sample(samples_root: str) -> Sample:
    import nibabel as nib

    from pipeline.language.glossary import load_label_map

    root = Path(samples_root)
    img = nib.load(str(root / SAMPLE_CT))
    seg = nib.load(str(root / SAMPLE_SEG))
    return Sample(
        np.asarray(img.dataobj, dtype=np.int16),
        np.asarray(seg.dataobj, dtype=np.uint8),
        np.asarray(img.affine, dtype=float),
        load_label_map("totalseg_total"),
    )


def _side_key(name: str) -> tuple[str, str]:
    """(side, base): side ``left``/``right``/``mid``; a left/right pair shares a base (``{side}`` for the side)."""
    m = _LR.search(name)
    if not m:
        return "mid", name
    return m.group(2), name[: m.start(2)] + "{side}" + name[m.end(2) :]


def _groups(ids: list[int], by_id: dict[int, tuple[str, str]]) -> dict[str, list[list[int]]]:
    """ids grouped by kind: ``pair`` (left and right of one base, as [left, right]), ``left``, ``right``, ``mid``."""
    bases: dict[str, dict[str, int]] = {}
    for i in ids:
        side, base = by_id[i]
        bases.setdefault(base, {})[side] = i
    out: dict[str, list[list[int]]] = {}
    for members in sorted(bases.values(), key=lambda m: min(m.values())):
        key = "pair" if len(members) == 2 else next(iter(members))
        out.setdefault(key, []).append([members[s] for s in sorted(members)])
    return out


def block_luts(present: list[int], names: dict[int, str], n_blocks: int) -> list[np.ndarray]:
    """One uint8 lookup table per z block: block 0 keeps the sample's ids, later blocks rename each present
    id to an absent class of the same kind (a bilateral pair to a pair, a one-sided or midline structure
    to one of the same kind); when a kind runs out the id is kept (the structure spans two blocks)."""
    by_id = {i: _side_key(n) for i, n in names.items()}
    groups_present = _groups(present, by_id)
    groups_absent = _groups([i for i in sorted(names) if i not in present], by_id)
    luts = []
    for b in range(n_blocks):
        lut = np.arange(256, dtype=np.uint8)
        if b > 0:
            for key, groups in groups_present.items():
                pool = groups_absent.get(key, [])
                for j, src in enumerate(groups):
                    k = (b - 1) * len(groups) + j
                    if k < len(pool):
                        for s, d in zip(src, pool[k], strict=True):
                            lut[s] = d
        luts.append(lut)
    return luts


# ----------------------------------------------------------------------------------------------------
# resampling (separable, so a 512x512x300 volume costs a few seconds)
# ----------------------------------------------------------------------------------------------------


def _coords(n_out: int, n_in: int, zoom: float, shift: float) -> np.ndarray:
    """Source coordinate (in the input's index space) of every output index; centred, then shifted."""
    return (np.arange(n_out) - (n_out - 1) / 2.0 - shift) / zoom + (n_in - 1) / 2.0


def _nearest(src: np.ndarray, n_in: int) -> np.ndarray:
    """Index into the input padded by one element each side (0 = the pad: outside the field of view)."""
    idx = np.rint(src).astype(np.int64) + 1
    idx[(idx < 1) | (idx > n_in)] = 0
    return idx


def _linear_take(a: np.ndarray, src: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation of ``a`` (already padded by one along ``axis``) at ``src`` (unpadded coords)."""
    n_in = a.shape[axis] - 2
    s = np.clip(src + 1.0, 0.0, n_in + 1.0)
    i0 = np.floor(s).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in + 1)
    w = (s - i0).astype(np.float32)
    shape = [1] * a.ndim
    shape[axis] = -1
    w = w.reshape(shape)
    return np.take(a, i0, axis=axis) * (1.0 - w) + np.take(a, i1, axis=axis) * w


# ----------------------------------------------------------------------------------------------------
# CT cases
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CtCase:
    case_id: str
    image: np.ndarray  # (X, Y, Z) int16, Fortran order (as nibabel reads it)
    labels: np.ndarray  # (X, Y, Z) uint8, Fortran order
    affine: np.ndarray

    def present(self) -> list[int]:
        return sorted(int(v) for v in np.unique(self.labels) if v)


def make_ct_case(sample: Sample, index: int, shape: tuple[int, int, int], seed: int) -> CtCase:
    """Case ``index`` of the corpus: the sample resampled to ``shape`` (X, Y, Z) in z blocks of ~100 slices."""
    rng = np.random.default_rng([seed, 1, index])
    X, Y, Z = shape
    sx, sy, sz = sample.labels.shape
    n_blocks = max(1, round(Z / 100))
    zoom_xy = 0.9 * min(X / sx, Y / sy) * rng.uniform(0.95, 1.05)
    shift = rng.uniform(-0.03, 0.03, 2) * np.array([X, Y])
    ix = _coords(X, sx, zoom_xy, shift[0])
    iy = _coords(Y, sy, zoom_xy, shift[1])
    present = sorted(int(v) for v in np.unique(sample.labels) if v)
    luts = block_luts(present, sample.names, n_blocks)
    drop = rng.random(256) < 0.05  # each case misses a few structures
    drop[0] = False
    lab_p = np.pad(sample.labels, 1)
    img_p = np.pad(sample.image.astype(np.float32), 1, constant_values=AIR_HU)
    # in-plane first (small: sx*sy*sz -> X*Y*sz), then each z block
    plane = _linear_take(_linear_take(img_p, ix, 0), iy, 1)  # (X, Y, sz + 2)
    lab_plane = lab_p[np.ix_(_nearest(ix, sx), _nearest(iy, sy), np.arange(sz + 2))]
    image = np.empty(shape, np.int16, order="F")
    labels = np.empty(shape, np.uint8, order="F")
    bounds = np.linspace(0, Z, n_blocks + 1).round().astype(int)
    for b in range(n_blocks):
        z0, z1 = int(bounds[b]), int(bounds[b + 1])
        zz = _coords(z1 - z0, sz, (z1 - z0) / sz * rng.uniform(0.97, 1.03), 0.0)
        lut = np.where(drop[luts[b]], 0, luts[b]).astype(np.uint8)
        labels[:, :, z0:z1] = lut[lab_plane[:, :, _nearest(zz, sz)]]
        for c0 in range(z0, z1, 16):  # bounded float32 temporaries
            c1 = min(z1, c0 + 16)
            vals = _linear_take(plane, zz[c0 - z0 : c1 - z0], 2)
            vals += rng.standard_normal(vals.shape, dtype=np.float32) * 12.0
            image[:, :, c0:c1] = np.clip(np.rint(vals), -2048, 3071).astype(np.int16)
    spacing = np.array([3.0 / zoom_xy, 3.0 / zoom_xy, 3.0 * n_blocks * sz / Z])
    affine = sample.affine.copy()
    affine[:3, :3] = np.diag(spacing) * np.sign(np.diag(sample.affine[:3, :3]))
    return CtCase(f"s{index + 1:04d}", image, labels, affine)


def nifti_gz_bytes(arr: np.ndarray, affine: np.ndarray) -> bytes:
    import nibabel as nib

    img = nib.Nifti1Image(arr, affine)
    img.set_sform(affine, code=2)
    img.set_qform(affine, code=0)
    return gzip.compress(img.to_bytes(), compresslevel=GZIP_LEVEL, mtime=0)


def write_ct_case(case: CtCase, folder: Path, names: dict[int, str], layouts: tuple[str, ...]) -> dict[str, Any]:
    d = folder / case.case_id
    d.mkdir(parents=True, exist_ok=True)
    (d / "ct.nii.gz").write_bytes(nifti_gz_bytes(case.image, case.affine))
    if "labelmap" in layouts:
        (d / "segmentations.nii.gz").write_bytes(nifti_gz_bytes(case.labels, case.affine))
    if "masks" in layouts:
        seg = d / "segmentations"
        seg.mkdir(exist_ok=True)
        for lid, name in sorted(names.items()):
            mask = np.asfortranarray(case.labels == lid).view(np.uint8)
            (seg / f"{name}.nii.gz").write_bytes(nifti_gz_bytes(mask, case.affine))
    return {"case_id": case.case_id, "shape": list(case.labels.shape), "labels": case.present(),
            "spacing_mm": [round(float(abs(case.affine[i, i])), 4) for i in range(3)]}


def _ct_job(args: tuple[str, int, tuple[int, int, int], int, Path, tuple[str, ...]]) -> dict[str, Any]:
    samples_root, index, shape, seed, folder, layouts = args
    sample = load_sample(samples_root)
    return write_ct_case(make_ct_case(sample, index, shape, seed), folder, sample.names, layouts)


# ----------------------------------------------------------------------------------------------------
# 2-D cases
# ----------------------------------------------------------------------------------------------------


@lru_cache(maxsize=2)
def _canonical_sample(samples_root: str) -> tuple[np.ndarray, np.ndarray]:
    """The sample in the display-canonical layout (axial slice = radiological view), padded by one."""
    from pipeline.ingest.geometry import to_canonical

    s = load_sample(samples_root)
    vol, _ = to_canonical(s.image, s.affine)
    lab, _ = to_canonical(s.labels, s.affine)
    return (np.pad(np.ascontiguousarray(vol, dtype=np.float32), ((0, 0), (1, 1), (1, 1)), constant_values=AIR_HU),
            np.pad(np.ascontiguousarray(lab), ((0, 0), (1, 1), (1, 1))))


def make_slice_2d(samples_root: str, index: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 grey image (H, W), uint8 label map of TotalSegmentator ids) of 2-D case ``index``."""
    rng = np.random.default_rng([seed, 2, index])
    vol, lab = _canonical_sample(samples_root)
    nk, nr, nc = vol.shape[0], vol.shape[1] - 2, vol.shape[2] - 2
    W, H = SIZES_2D[int(rng.integers(len(SIZES_2D)))]
    k = int(rng.integers(nk))
    zoom = 0.92 * min(H / nr, W / nc) * rng.uniform(0.95, 1.05)
    shift = rng.uniform(-0.03, 0.03, 2) * np.array([H, W])
    rr, cc = _coords(H, nr, zoom, shift[0]), _coords(W, nc, zoom, shift[1])
    hu = _linear_take(_linear_take(vol[k], rr, 0), cc, 1)
    hu += rng.standard_normal(hu.shape, dtype=np.float32) * 8.0
    grey = np.clip((hu - (40 - 200)) / 400.0 * 254.0, 0, 254).round().astype(np.uint8)  # abdomen window
    labels = lab[k][np.ix_(_nearest(rr, nr), _nearest(cc, nc))]
    return grey, labels


def _png(arr: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def write_sam2d_case(
    samples_root: str, index: int, seed: int, root: Path, names: dict[int, str]
) -> tuple[str, list[str]]:
    """One SA-Med2D-style case: RGB slice + one PNG per structure instance. Returns (image, masks) paths."""
    from scipy import ndimage

    grey, labels = make_slice_2d(samples_root, index, seed)
    stem = f"ct{index // 10:05d}_{index % 10 * 7 + 3}"  # ten slices per patient, like an exported series
    (root / "images" / f"{stem}.png").write_bytes(_png(np.repeat(grey[:, :, None], 3, axis=2)))
    masks = []
    for lid in (int(v) for v in np.unique(labels) if v):
        comps, n = ndimage.label(labels == lid)
        sizes = np.bincount(comps.ravel(), minlength=n + 1)
        inst = 0
        for c in range(1, n + 1):
            if sizes[c] < 16:
                continue
            rel = f"masks/{stem}_{names[lid]}_{inst:03d}.png"
            (root / rel).write_bytes(_png(np.where(comps == c, 255, 0).astype(np.uint8)))
            masks.append(rel)
            inst += 1
    return f"images/{stem}.png", masks


def write_mask2d_case(samples_root: str, index: int, seed: int, root: Path) -> str:
    grey, labels = make_slice_2d(samples_root, index, seed + 7919)
    stem = f"img{index:06d}"
    (root / "images" / f"{stem}.png").write_bytes(_png(grey))
    (root / "masks" / f"{stem}.png").write_bytes(_png(labels))
    return stem


# ----------------------------------------------------------------------------------------------------
# cards and configs
# ----------------------------------------------------------------------------------------------------

_CARD_COMMON = {
    "licence": "Apache-2.0",
    "licence_note": "Synthetic scale corpus resampled from the TotalSegmentator example files (Apache-2.0).",
    "homepage": "https://github.com/wasserth/TotalSegmentator",
    "modality": "CT",
    "body_region": "auto",
}


def cards_for(parts: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    ct_layout = {"image_glob": "s*/ct.nii.gz", "case_regex": r"^(s\d{4})/", "patient_regex": r"^(s\d{4})"}
    for layout in parts.get("ct_layouts", []):
        target = "segmentations.nii.gz" if layout == "labelmap" else "segmentations"
        out[f"ct-{layout}"] = {
            "name": f"corpus-ct-{layout}", "title": f"Scale corpus: full-size CT, {layout} layout",
            "adapter": "nifti_labelmap", **_CARD_COMMON, "root": "ct", "intensity": {"preset": "abdomen"},
            "label_map": "totalseg_total", "resolve_labels_with_glossary": True,
            "box_policy": {"mode": "label", "min_pixels": 4},
            "layout": {**ct_layout, "label_from_image": [r"ct\.nii\.gz$", target]},
        }
    if parts.get("sam2d"):
        out["sam2d"] = {
            "name": "corpus-sam2d", "title": "Scale corpus: SA-Med2D-style 2-D slices", "adapter": "sam_med2d",
            **_CARD_COMMON, "root": "sam2d", "resolve_labels_with_glossary": True,
            "box_policy": {"mode": "label", "min_pixels": 4},
            "layout": {"index_files": {"train": "image2label_train.json", "test": "label2image_test.json"},
                       "path_prefix": "", "patient_regex": r"^(.+)_\d+$"},
        }
    if parts.get("mask2d"):
        out["mask2d"] = {
            "name": "corpus-mask2d", "title": "Scale corpus: image + label-value mask folder",
            "adapter": "mask_folder_2d",
            **_CARD_COMMON, "root": "mask2d", "label_map": "totalseg_total",
            "box_policy": {"mode": "label", "min_pixels": 4},
            "layout": {"images": "images/*.png", "masks": "masks/{stem}.png", "mask_kind": "values"},
        }
    return out


def release_config(name: str, corpus: Path, cards: list[str], seed: int) -> dict[str, Any]:
    return {
        "name": f"corpus-{name}", "version": "1", "seed": seed, "samples_root": str(corpus.resolve()),
        "sources": [{"card": str((corpus / "cards" / f"corpus-{c}.yaml").resolve())} for c in cards],
        "slicing": {"axes": ["axial", "coronal"], "min_spacing_mm": 9, "max_slices_per_case": 6,
                    "min_label_pixels": 20},
        "tasks": {"mix": {"region_to_text": 1, "text_to_region": 1, "grounded_report": 1}, "langs": ["en", "zh"]},
        "splits": {"ratios": {"train": 0.8, "validation": 0.1, "test": 0.1}, "keep_official": True},
        "output": {"rows_per_shard": 1000},
        "validation": {"validators": ["rules", "stats"]},
    }


def write_cards_and_configs(out: Path, parts: dict[str, Any], seed: int) -> dict[str, str]:
    import yaml

    cards = cards_for(parts)
    (out / "cards").mkdir(parents=True, exist_ok=True)
    (out / "configs").mkdir(parents=True, exist_ok=True)
    written = {}
    for key, card in cards.items():
        (out / "cards" / f"corpus-{key}.yaml").write_text(yaml.safe_dump(card, sort_keys=False), encoding="utf-8")
        cfg = release_config(key, out, [key], seed)
        path = out / "configs" / f"{key}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
        written[key] = str(path)
    if cards:
        path = out / "configs" / "all.yaml"
        cfg = release_config("all", out, list(cards), seed)
        path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
        written["all"] = str(path)
    return written


# ----------------------------------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------------------------------


def _progress(total: int, enabled: bool) -> Iterator[Callable[[str], None]]:
    if not enabled:
        yield lambda _desc: None
        return
    from rich.progress import (
        BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn,
    )

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("eta"), TimeRemainingColumn()) as bar:
        task = bar.add_task("corpus", total=total)
        yield lambda desc: bar.update(task, advance=1, description=desc)


def generate(out: str | Path, *, ct: int = 0, sam2d: int = 0, mask2d: int = 0,
             ct_shape: tuple[int, int, int] = (512, 512, 300), ct_layouts: tuple[str, ...] = ("labelmap", "masks"),
             seed: int = 0, samples_root: str | Path | None = None, workers: int = 1,
             progress: bool = True) -> dict[str, Any]:
    """Write the corpus into ``out`` and return its record (also written as ``out/corpus.json``)."""
    if samples_root is None:
        from flows.samples import find_samples_root

        samples_root = find_samples_root(["totalseg-nifti"])
    sroot = str(Path(samples_root).resolve())
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    bad = set(ct_layouts) - {"labelmap", "masks"}
    if bad or (ct and not ct_layouts):
        raise ValueError(f"--ct-layouts takes labelmap and/or masks, got {','.join(ct_layouts)}")
    sample = load_sample(sroot)
    record: dict[str, Any] = {"seed": seed, "ct_shape": list(ct_shape), "ct_layouts": list(ct_layouts) if ct else [],
                              "ct": [], "sam2d": {"cases": sam2d, "masks": 0}, "mask2d": {"cases": mask2d}}
    gen = _progress(ct + sam2d + mask2d, progress)
    tick = next(gen)
    if ct:
        jobs = [(sroot, i, ct_shape, seed, out / "ct", tuple(ct_layouts)) for i in range(ct)]
        if workers > 1:
            with ProcessPoolExecutor(workers) as pool:
                for info in pool.map(_ct_job, jobs):
                    record["ct"].append(info)
                    tick(f"ct {info['case_id']}")
        else:
            for job in jobs:
                record["ct"].append(_ct_job(job))
                tick(f"ct {record['ct'][-1]['case_id']}")
    if sam2d:
        root = out / "sam2d"
        for sub in ("images", "masks"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        train: dict[str, list[str]] = {}
        test: dict[str, str] = {}
        for i in range(sam2d):
            img, masks = write_sam2d_case(sroot, i, seed, root, sample.names)
            if (i // 10) % 10 == 9:  # whole patients go to test, as in SA-Med2D's split
                test.update({m: img for m in masks})
            else:
                train[img] = masks
            record["sam2d"]["masks"] += len(masks)
            tick("sam2d")
        (root / "image2label_train.json").write_text(json.dumps(train, indent=1), encoding="utf-8")
        (root / "label2image_test.json").write_text(json.dumps(test, indent=1), encoding="utf-8")
    if mask2d:
        root = out / "mask2d"
        for sub in ("images", "masks"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        for i in range(mask2d):
            write_mask2d_case(sroot, i, seed, root)
            tick("mask2d")
    for _ in gen:  # close the progress display
        pass
    parts = {"ct_layouts": list(ct_layouts) if ct else [], "sam2d": sam2d, "mask2d": mask2d}
    record["configs"] = write_cards_and_configs(out, parts, seed)
    record["params_sha256"] = hashlib.sha256(json.dumps(
        {k: record[k] for k in ("seed", "ct_shape", "ct_layouts")} | {"ct": ct, "sam2d": sam2d, "mask2d": mask2d},
        sort_keys=True).encode()).hexdigest()
    (out / "corpus.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
    return record


def _shape(text: str) -> tuple[int, int, int]:
    parts = [int(v) for v in text.split(",")]
    if len(parts) != 3 or min(parts) < 8:
        raise argparse.ArgumentTypeError("--ct-shape is X,Y,Z with every side >= 8, e.g. 512,512,300")
    return parts[0], parts[1], parts[2]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="folder to write the corpus into")
    ap.add_argument("--ct", type=int, default=0, help="number of full-size CT cases")
    ap.add_argument("--sam2d", type=int, default=0, help="number of SA-Med2D-style 2-D cases")
    ap.add_argument("--mask2d", type=int, default=0, help="number of mask-folder 2-D cases")
    ap.add_argument("--ct-shape", type=_shape, default=(512, 512, 300), help="X,Y,Z (default 512,512,300)")
    ap.add_argument("--ct-layouts", default="labelmap,masks", help="labelmap and/or masks (comma-separated)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samples", default=None, help="sample data folder (default: MEDREG_SAMPLES or ../shared/data)")
    ap.add_argument("--workers", type=int, default=1, help="processes for the CT cases")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.ct + args.sam2d + args.mask2d == 0:
        ap.error("nothing to generate: give --ct, --sam2d and/or --mask2d")
    rec = generate(args.out, ct=args.ct, sam2d=args.sam2d, mask2d=args.mask2d, ct_shape=args.ct_shape,
                   ct_layouts=tuple(s for s in args.ct_layouts.split(",") if s), seed=args.seed,
                   samples_root=args.samples, workers=args.workers, progress=not args.no_progress)
    for key, path in rec["configs"].items():
        print(f"{key:>12}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
