"""Validator composition, the keep/flag/drop policy, config hashing and the verdict cache."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.regions.coords import normalise_box
from pipeline.validate import (
    RulesValidator,
    StatsValidator,
    ValidationItem,
    Validator,
    VerdictCache,
    apply_policy,
    build_validators,
    result,
    run_validators,
    validation_meta,
)
from schemas.records import ValidationResult
from schemas.validation import ClipConfig, GroundingConfig, PolicyConfig, RulesConfig, ValidationConfig


def item(i: int, term: str = "liver") -> ValidationItem:
    rng = np.random.default_rng(i)
    img = rng.integers(0, 255, size=(64, 80), dtype=np.uint8)
    bp = [5 + i % 7, 6, 40 + i % 5, 50]
    reg = {"term": term, "box": list(normalise_box(bp, 80, 64)), "box_px": bp, "area": 100}
    row = {
        "id": f"row-{i}",
        "image": f"images/{i}.png",
        "width": 80,
        "height": 64,
        "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}],
        "meta": {"task": "region_to_text", "lang": "en", "modality": "CT", "axis": "axial", "regions": [reg]},
    }
    return ValidationItem(row, img)


class Counting:
    """A validator that records which rows it was asked about; verdict depends on the row number."""

    name = "counting"
    version = "3"
    config_hash = "c0"

    def __init__(self) -> None:
        self.seen: list[str] = []

    def validate(self, items: list[ValidationItem]) -> list[ValidationResult]:
        self.seen.extend(it.row_id for it in items)
        out = []
        for it in items:
            n = int(it.row_id.split("-")[1])
            v = "fail" if n % 5 == 0 else "flag" if n % 3 == 0 else "pass"
            out.append(result(self, v, n / 10, f"n={n}", [f"c{n % 3}"]))
        return out


class Broken:
    name = "broken"
    version = "1"

    def validate(self, items: list[ValidationItem]) -> list[ValidationResult]:
        raise RuntimeError("model server down")


def test_protocol_and_build_validators() -> None:
    vs = build_validators(ValidationConfig())
    assert [v.name for v in vs] == ["rules", "stats"]
    assert all(isinstance(v, Validator) for v in vs)
    assert isinstance(Counting(), Validator)
    with pytest.raises(ValueError, match="model_path"):
        build_validators(ValidationConfig(validators=["clip"]))
    with pytest.raises(ValueError, match="base_url"):
        build_validators(ValidationConfig(validators=["grounding"], grounding=GroundingConfig(base_url=None)))


def test_run_validators_shape_order_and_errors() -> None:
    items = [item(i) for i in range(6)]
    res = run_validators(items, [Counting(), Broken(), RulesValidator(RulesConfig(check_text_boxes=False))])
    assert len(res) == 6 and all(len(r) == 3 for r in res)
    assert [r[0].reason for r in res] == [f"n={i}" for i in range(6)]
    assert all(r[1].verdict == "flag" and r[1].codes == ["validator_error"] for r in res)
    assert "model server down" in res[0][1].reason
    assert all(r[2].validator == "rules" for r in res)


def test_apply_policy_default_and_overrides() -> None:
    c = Counting()
    ok = result(c, "pass", 1.0, "")
    flag = result(c, "flag", 0.5, "meh", ["x"])
    fail = result(RulesValidator(), "fail", 0.0, "blank: liver", ["blank"])
    assert apply_policy([ok], PolicyConfig()).action == "keep"
    d = apply_policy([ok, flag], PolicyConfig())
    assert (d.action, d.reasons, d.codes) == ("flag", ["counting: meh"], ["counting:x"])
    d = apply_policy([flag, fail], ValidationConfig())
    assert d.action == "drop" and d.codes == ["counting:x", "rules:blank"]
    lenient = PolicyConfig(per_validator={"rules": {"fail": "flag"}})
    assert apply_policy([fail], lenient).action == "flag"
    strict = PolicyConfig(default={"pass": "keep", "flag": "drop", "fail": "drop"})
    assert apply_policy([flag], strict).action == "drop"
    ignore = PolicyConfig(per_validator={"counting": {"flag": "keep"}})
    d = apply_policy([flag], ignore)
    assert (d.action, d.reasons) == ("keep", [])


def test_config_hash_ignores_runtime_fields() -> None:
    assert ClipConfig(model_path="m", batch_size=1).config_hash() == ClipConfig(model_path="m", batch_size=99).config_hash()
    assert ClipConfig(model_path="m").config_hash() != ClipConfig(model_path="m", top_k=2).config_hash()
    g1 = GroundingConfig(base_url="http://a/v1", concurrency=1, api_key="k1")
    g2 = GroundingConfig(base_url="http://b/v1", concurrency=9, api_key="k2")
    assert g1.config_hash() == g2.config_hash()
    assert g1.config_hash() != GroundingConfig(model="other").config_hash()
    assert "k1" not in ValidationConfig(grounding=g1).model_dump_json()  # secret never serialised


def test_verdict_cache_recomputes_exactly_the_deleted_half(tmp_path) -> None:
    items = [item(i) for i in range(20)]
    cache = VerdictCache(tmp_path / "verdicts")
    v = Counting()
    first = run_validators(items, [v], cache=cache)
    assert (cache.computed, cache.cached) == (20, 0) and len(v.seen) == 20
    entries = cache.entries()
    assert len(entries) == 20

    # map cache files back to rows, delete every other one
    key_of = {cache.key(v, it): it.row_id for it in items}
    deleted = {key_of[p.stem] for p in entries[::2]}
    for p in entries[::2]:
        p.unlink()

    v2 = Counting()
    cache.reset_counts()
    second = run_validators(items, [v2], cache=cache)
    assert sorted(v2.seen) == sorted(deleted)
    assert (cache.computed, cache.cached) == (10, 10)
    assert [r[0].model_dump() for r in second] == [r[0].model_dump() for r in first]

    v3 = Counting()
    cache.reset_counts()
    run_validators(items, [v3], cache=cache)
    assert v3.seen == [] and (cache.computed, cache.cached) == (0, 20)


def test_verdict_cache_key_parts(tmp_path) -> None:
    cache = VerdictCache(tmp_path)
    v = Counting()
    base = item(1)
    k = cache.key(v, base)
    other_img = ValidationItem(base.row, base.image.copy())
    other_img.image[0, 0] ^= 1
    assert cache.key(v, other_img) != k
    moved = item(1)
    moved.row["meta"]["regions"][0]["box"][0] += 1
    assert cache.key(v, moved) != k
    v2 = Counting()
    v2.version = "4"
    assert cache.key(v2, base) != k
    v3 = Counting()
    v3.config_hash = "c1"
    assert cache.key(v3, base) != k
    assert cache.key(Counting(), item(1)) == k  # stable across processes: content only


def test_transient_results_are_not_cached(tmp_path) -> None:
    class Flaky:
        name, version, config_hash = "flaky", "1", ""

        def validate(self, items: list[ValidationItem]) -> list[ValidationResult]:
            return [result(self, "flag", None, "model_error: 503", ["model_error"], transient=True) for _ in items]

    cache = VerdictCache(tmp_path)
    run_validators([item(0)], [Flaky()], cache=cache)
    assert cache.entries() == [] and cache.computed == 0


def test_stats_with_cache_fits_on_all_items(tmp_path) -> None:
    """The stats fit must not depend on which verdicts came from the cache."""
    items = [item(i) for i in range(12)]
    cache = VerdictCache(tmp_path)
    first = run_validators(items, [StatsValidator()], cache=cache)
    for p in cache.entries()[::3]:
        p.unlink()
    second = run_validators(items, [StatsValidator()], cache=cache)
    assert [r[0].model_dump() for r in second] == [r[0].model_dump() for r in first]


def test_validation_meta_is_json_ready() -> None:
    res = run_validators([item(0)], [RulesValidator(RulesConfig(check_text_boxes=False))])[0]
    meta = validation_meta(res)
    assert meta[0]["validator"] == "rules" and meta[0]["verdict"] == "pass"


def test_item_from_row_reads_png(tmp_path) -> None:
    from PIL import Image

    arr = np.arange(64 * 80, dtype=np.uint32).reshape(64, 80).astype(np.uint8)
    (tmp_path / "images").mkdir()
    Image.fromarray(arr).save(tmp_path / "images" / "0.png")
    it = ValidationItem.from_row(item(0).row, tmp_path)
    assert it.image.dtype == np.uint8 and np.array_equal(it.image, arr)
    with pytest.raises(ValueError):
        ValidationItem(item(0).row, np.zeros((2, 2, 2, 2), np.uint8))


def test_release_stage_caches_model_verdicts_only(tmp_path) -> None:
    """The release stage keeps one cache file per verdict only for validators that call a model (a GPU or a
    server per row); a CPU validator's verdicts (stats) are recomputed, in the same order and identical to
    a run without any cache. Deleting model verdicts recomputes exactly those rows."""
    from pipeline.validate.stage import _run_release_validators

    class Model(Counting):  # stands for a model judge (clip / grounding): its verdicts are worth caching
        name = "model"
        needs_model = True

    items = [item(i) for i in range(12)]
    model = Model()
    stats = StatsValidator().fit(items)
    cache = VerdictCache(tmp_path)
    first = _run_release_validators(items, [stats, model], cache)
    assert [[r.validator for r in row] for row in first] == [["stats", "model"]] * 12
    plain = run_validators(items, [StatsValidator().fit(items), Counting()])
    assert [row[0].model_dump() for row in first] == [row[0].model_dump() for row in plain]
    entries = cache.entries()
    assert len(entries) == 12 and cache.computed == 12  # the model's verdicts only
    for p in entries[::3]:
        p.unlink()
    model.seen.clear()
    second = _run_release_validators(items, [stats, model], cache)
    assert len(model.seen) == 4 and cache.cached == 8
    assert [[r.model_dump() for r in row] for row in second] == [[r.model_dump() for r in row] for row in first]
    only_cpu = VerdictCache(tmp_path / "cpu")
    _run_release_validators(items, [stats], only_cpu)
    assert only_cpu.entries() == [] and only_cpu.computed == 0
