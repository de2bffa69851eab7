"""The scale corpus generator (benchmarks/corpus.py) at tiny sizes: layouts, determinism, and a build on it.

Also the per-structure mask folder == combined label map check on a many-label CT: the same boxes and
the same rows, byte for byte (the packer, the run reader and the Fortran-order layers change no output).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import orjson
import pytest

from benchmarks import corpus
from pipeline.ingest.convert import convert
from pipeline.ingest.readers.nifti import read_nifti
from pipeline.language.glossary import load_label_map
from flows.run import build
from pipeline.release.case import process_case
from pipeline.release.images import ImageStore
from pipeline.validate.stage import case_validators_for
from schemas.config import load_config
from sources.base import get_adapter, load_card

SHAPE = (96, 96, 200)  # two z blocks: the renamed block gives more than the sample's 41 labels


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory, samples) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("corpus")
    rec = corpus.generate(out, ct=2, sam2d=12, mask2d=6, ct_shape=SHAPE, seed=3, samples_root=samples, progress=False)
    return out, rec


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_layouts_and_labels(small_corpus):
    out, rec = small_corpus
    names = load_label_map("totalseg_total")
    assert [c["case_id"] for c in rec["ct"]] == ["s0001", "s0002"]
    for case in rec["ct"]:
        d = out / "ct" / case["case_id"]
        ct, aff = read_nifti(d / "ct.nii.gz")
        lab, lab_aff = read_nifti(d / "segmentations.nii.gz", integer_labels=True)
        assert ct.shape == lab.shape == SHAPE and ct.dtype == np.int16 and lab.dtype == np.uint8
        np.testing.assert_array_equal(aff, lab_aff)
        present = sorted(int(v) for v in np.unique(lab) if v)
        assert present == case["labels"] and set(present) <= set(names) and len(present) > 41
        masks = sorted((d / "segmentations").iterdir())
        assert [m.name for m in masks] == sorted(f"{n}.nii.gz" for n in names.values())  # all 117, empty included
        for m in masks[::9]:
            mask, _ = read_nifti(m)
            lid = next(i for i, n in names.items() if f"{n}.nii.gz" == m.name)
            np.testing.assert_array_equal(mask, (lab == lid).astype(np.uint8))
        body = ct[lab > 0]
        assert -1100 < float(np.median(body)) < 400 and int(ct.min()) >= -2048
    sam = out / "sam2d"
    train = json.loads((sam / "image2label_train.json").read_text())
    assert len(train) == 12 and rec["sam2d"]["masks"] == sum(len(v) for v in train.values())
    assert len(list((out / "mask2d" / "masks").glob("*.png"))) == 6
    assert set(rec["configs"]) == {"ct-labelmap", "ct-masks", "sam2d", "mask2d", "all"}


def test_deterministic(small_corpus, samples, tmp_path):
    out, rec = small_corpus
    again = corpus.generate(tmp_path, ct=1, sam2d=2, mask2d=1, ct_shape=SHAPE, ct_layouts=("labelmap",), seed=3,
                            samples_root=samples, progress=False)
    for rel in ("ct/s0001/ct.nii.gz", "ct/s0001/segmentations.nii.gz", "mask2d/masks/img000000.png"):
        assert _sha(tmp_path / rel) == _sha(out / rel), rel
    assert again["ct"][0] == rec["ct"][0]
    other = corpus.make_ct_case(corpus.load_sample(str(samples)), 0, (32, 32, 20), seed=4)
    same = corpus.make_ct_case(corpus.load_sample(str(samples)), 0, (32, 32, 20), seed=3)
    assert not np.array_equal(other.image, same.image)


@pytest.mark.parametrize("threads", ["1", "3"])
def test_per_structure_folder_equals_combined_label_map(small_corpus, monkeypatch, threads):
    """Same boxes and byte-identical rows from TotalSegmentator's per-structure layout and a label map,
    with a case's files read on one thread or on three at once."""
    monkeypatch.setenv("MEDREG_READ_THREADS", threads)
    out, _ = small_corpus
    cfg = load_config(out / "configs" / "ct-labelmap.yaml")
    validators = case_validators_for(cfg.validation)
    got = {}
    for layout in ("labelmap", "masks"):
        card = load_card(str(out / "cards" / f"corpus-ct-{layout}.yaml")).model_copy(update={"name": "corpus-ct"})
        adapter = get_adapter(card, out / "ct")
        ref = adapter.discover()[1]
        study = adapter.load(ref)
        assert len(study.layers) == 1  # TotalSegmentator structures do not overlap: one packed layer
        boxes = {(s.axis, s.index): [(r.term, r.box_px, r.label_id) for r in s.regions]
                 for s in convert(study, card, card.box_policy, cfg.slicing).slices}
        res = process_case(card, adapter, ref, cfg, ImageStore(out / f"store-{layout}"), None, validators)
        assert not res.errors
        got[layout] = (boxes, [orjson.dumps(r, option=orjson.OPT_SORT_KEYS) for r in res.rows], res.images)
    (b1, rows1, imgs1), (b2, rows2, imgs2) = got["labelmap"], got["masks"]
    assert b1 == b2 and len(b1) >= 6 and len({t for v in b1.values() for t, _, _ in v}) > 10
    assert rows1 == rows2 and len(rows1) > 20 and imgs1 == imgs2


def test_build_runs_on_the_corpus(small_corpus, tmp_path):
    out, rec = small_corpus
    cfg = load_config(rec["configs"]["all"])
    release = build(cfg, tmp_path / "out")
    manifest = json.loads((release / "manifest.json").read_text())
    counts = manifest["counts"]
    assert counts["errors"] == 0 and counts["cases"] == 2 + 2 + 12 + 6
    assert set(counts["by_source"]) == {"corpus-ct-labelmap", "corpus-ct-masks", "corpus-sam2d", "corpus-mask2d"}
    rules = [v["rules"] for v in counts["validation_by_source"].values()]
    assert all(r["fail"] == 0 for r in rules)  # laterality holds: renamed structures keep their side


def test_cli_rejects_nothing_to_do(capsys):
    with pytest.raises(SystemExit):
        corpus.main(["somewhere"])
    assert "nothing to generate" in capsys.readouterr().err
