"""A release from every shipped source: template variety and display names in both languages."""

import re
import shutil

import numpy as np
import orjson
import pytest
from PIL import Image

from pipeline.language.glossary import load_glossary
from pipeline.release.case import build
from pipeline.release.shards import verify_release
from schemas.config import ReleaseConfig
from sources.base import builtin_cards

REF = re.compile(r"<ref>(.*?)</ref>")


def _cxr_images(folder, names):
    """ChestX-ray14 ships no images in the sample: synthesise textured 1024x1024 greyscale PNGs."""
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:1024, 0:1024]
    base = ((xx // 4 + yy // 4) % 64 * 3 + 30).astype(np.uint8)
    for n in names:
        Image.fromarray(base).save(folder / n, compress_level=1)


@pytest.fixture(scope="module")
def release(tmp_path_factory, samples):
    tmp = tmp_path_factory.mktemp("all")
    cxr = tmp / "cxr"
    cxr.mkdir()
    shutil.copy(samples / "nih-cxr14-bbox/BBox_List_2017.csv", cxr / "BBox_List_2017.csv")
    lines = (cxr / "BBox_List_2017.csv").read_text().splitlines()[1:]
    names = sorted({ln.split(",")[0] for ln in lines})[:90]
    _cxr_images(cxr / "images", names)
    cards = sorted(builtin_cards())
    assert {"totalseg-ct", "totalseg-mr", "sam-med2d", "biomedparse-2d", "kvasir-seg", "dcmqi-liver-seg",
            "rtstruct-visible-human", "nih-cxr14"} <= set(cards)
    sources = [{"card": c} for c in cards if c != "nih-cxr14"] + [{"card": "nih-cxr14", "root": str(cxr), "max_cases": 90}]
    cfg = ReleaseConfig.model_validate({
        "name": "all", "version": "1", "seed": 11, "sources": sources,
        "slicing": {"axes": ["axial", "coronal", "sagittal"], "min_spacing_mm": 6, "max_slices_per_case": 8},
        "tasks": {"mix": {"region_to_text": 1, "text_to_region": 1, "grounded_report": 1}, "negative_ratio": 0.1},
    })
    return build(cfg, tmp / "out", samples_root=samples)


def _rows(release):
    return [orjson.loads(line) for p in sorted((release / "data").rglob("*.jsonl")) for line in p.read_bytes().splitlines()]


def test_every_source_contributes(release):
    m = orjson.loads((release / "manifest.json").read_bytes())
    assert m["counts"]["errors"] == 0, m["errors"]
    assert set(m["counts"]["by_source"]) == set(builtin_cards())
    assert verify_release(release) == []


def test_forty_question_templates_per_task_and_language(release):
    used = {}
    for r in _rows(release):
        m = r["meta"]
        used.setdefault((m["task"], m["lang"]), set()).add(m["template_id"])
    assert len(used) == 6
    for key, ids in used.items():
        assert len(ids) >= 40, (key, len(ids))


def test_refs_are_glossary_display_names_in_the_row_language(release):
    gl = load_glossary()
    names = {lang: {gl.display(t, lang) for t in gl.terms} for lang in ("en", "zh")}
    for r in _rows(release):
        lang = r["meta"]["lang"]
        text = "\n".join(t["value"] for t in r["conversations"])
        refs = REF.findall(text)
        assert refs or r["meta"]["task"] == "region_to_text" or r["meta"].get("subtask") == "absent", r["id"]
        for ref in refs:
            assert ref in names[lang], (lang, ref)
        for reg in r["meta"]["regions"]:  # English names may be capitalised at a sentence start
            assert gl.display(reg["term"], lang).lower() in text.lower(), (r["id"], reg["term"])
        if lang == "zh":
            assert not re.search(r"[A-Za-z]{4,}", "".join(refs)), refs  # Chinese rows use Chinese names


def test_the_release_passes_the_language_lint(release):
    """Issue 12 B11: article/number agreement, Chinese punctuation and lists, no prompt/answer contradiction,
    every <ref> a display name of the row's language -- over every row of a release of every shipped source."""
    from collections import Counter

    from pipeline.language.lint import lint_release

    rows = _rows(release)
    assert len(rows) > 500
    hits = lint_release(release)
    assert hits == [], (Counter(h.rule for h in hits), hits[:20])
