"""A release from every shipped source: template variety and display names in both languages."""

import re

import orjson
import pytest

from pipeline.language.glossary import load_glossary
from flows.run import build
from pipeline.release.verify import verify_release
from schemas.config import ReleaseConfig
from sources.base import builtin_cards

REF = re.compile(r"<ref>(.*?)</ref>")


@pytest.fixture(scope="module")
def release(tmp_path_factory, samples):
    tmp = tmp_path_factory.mktemp("all")
    cards = sorted(builtin_cards())
    assert {"totalseg-ct", "totalseg-mr", "sam-med2d", "biomedparse-2d", "kvasir-seg", "dcmqi-liver-seg",
            "rtstruct-visible-human", "nih-cxr14", "ibsi-sts-pet-dicom", "ibsi-sts-pet-nifti"} <= set(cards)
    sources = [{"card": c} for c in cards]  # nih-cxr14: its 4 real radiographs
    cfg = ReleaseConfig.model_validate({
        "name": "all", "version": "1", "seed": 11, "sources": sources,
        "slicing": {"axes": ["axial", "coronal", "sagittal"], "min_spacing_mm": 6, "max_slices_per_case": 8},
        # two samples per task, slice and language: enough draws for the template-variety test from the real
        # samples alone (the chest X-ray source has 4 real radiographs, no synthetic stand-ins)
        "tasks": {"mix": {"region_to_text": 2, "text_to_region": 2, "grounded_report": 2}, "negative_ratio": 0.1},
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
