"""The release card's pieces on their own: licence classes and the overall statement, size categories, and
the HF features generated from the row contract."""

from __future__ import annotations

import pytest

from pipeline.release.card import hf_features, licence_class, overall_licence, size_category
from schemas.records import SourceEntry


def _src(name, licence):
    return SourceEntry(name=name, title=name, licence=licence, modality="CT", cases=1, errors=0)


@pytest.mark.parametrize("licence, cls", [
    ("Apache-2.0", "permissive"), ("BSD-3-Clause", "permissive"), ("CC0-1.0 (NIH: unrestricted use)", "permissive"),
    ("CC-BY-3.0", "attribution"), ("CC BY 4.0", "attribution"), ("CC-BY-SA-4.0", "share-alike"),
    ("ODbL-1.0", "share-alike"), ("CC-BY-NC-SA-4.0", "non-commercial"), ("research-and-education-only", "non-commercial"),
    ("NLM-Visible-Human-terms", "custom"), ("TCIA Data Usage Policy", "custom"),
])
def test_licence_classes(licence, cls):
    assert licence_class(licence) == cls


def test_most_restrictive_source_decides():
    top, text = overall_licence([_src("a", "Apache-2.0"), _src("b", "CC-BY-3.0")])
    assert top == "attribution" and "b (CC-BY-3.0)" in text and "a (Apache" not in text
    top, text = overall_licence([_src("a", "Apache-2.0"), _src("k", "research-and-education-only"),
                                 _src("v", "NLM-Visible-Human-terms")])
    assert top == "non-commercial"
    assert text.startswith("Non-commercial research and education use only.")
    assert "k (research-and-education-only)" in text and "terms of: v (NLM-Visible-Human-terms)" in text
    top, text = overall_licence([_src("v", "NLM-Visible-Human-terms")])
    assert top == "custom" and "terms of: v" in text


def test_size_categories():
    assert [size_category(n) for n in (0, 999, 1000, 9999, 10_000, 999_999, 1_000_000)] == [
        "n<1K", "n<1K", "1K<n<10K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M"]


def test_features_follow_the_row_model():
    feats = {f["name"]: f for f in hf_features()}
    assert list(feats) == ["id", "image", "width", "height", "conversations", "meta"]
    assert feats["width"] == {"name": "width", "dtype": "int64"}
    assert feats["conversations"]["list"] == [{"name": "from", "dtype": "string"}, {"name": "value", "dtype": "string"}]
    meta = {f["name"]: f for f in feats["meta"]["struct"]}
    assert meta["slice_index"]["dtype"] == "int64" and meta["transform"]["dtype"] == "string"
    regions = {f["name"]: f for f in meta["regions"]["list"]}
    assert regions["box"] == {"name": "box", "list": "int64"}
    assert {f["name"]: f for f in meta["validation"]["list"]}["score"]["dtype"] == "float64"

    from pydantic import BaseModel

    class Nullable(BaseModel):
        x: int | None

    with pytest.raises(TypeError, match="one non-null type"):
        hf_features(Nullable)
