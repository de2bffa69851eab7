"""Third-party validators registered through the ``medreg.validators`` entry-point group (issue 11).

As in tests/test_entry_points.py, a throwaway "installed distribution" is a ``*.dist-info`` folder with
``METADATA`` and ``entry_points.txt`` on a path added to ``sys.path``; importlib.metadata discovers it as it
would a pip-installed package.  Nothing in ``pipeline/`` is edited: the build asks the registry which
validators run per case, which per release, and whether any needs a model.
"""

from __future__ import annotations

import sys
import textwrap
import warnings

import orjson
import pytest
import yaml

from flows.run import build
from pipeline.validate import registry
from pipeline.validate.stage import case_validators_for, release_validators_for, uses_model
from schemas.config import ReleaseConfig
from schemas.validation import ValidationConfig

PLUGIN = textwrap.dedent('''
    from pydantic import BaseModel, ConfigDict, Field

    from pipeline.validate import RegionFinding, summarise


    class BigBoxConfig(BaseModel):
        model_config = ConfigDict(extra="forbid")
        max_area_fraction: float = Field(0.5, gt=0, le=1)


    class BigBox:
        name = "big_box"
        version = "1"
        level = "case"
        needs_model = False
        config_model = BigBoxConfig
        description = "fails regions whose box covers more than max_area_fraction of the image"

        def __init__(self, config, *, glossary=None):
            self.config = config

        def validate(self, items):
            out = []
            for it in items:
                limit = self.config.max_area_fraction * it.row["width"] * it.row["height"]
                findings = [RegionFinding("fail", "big_box", g["term"]) for g in it.regions
                            if (g["box_px"][2] - g["box_px"][0] + 1) * (g["box_px"][3] - g["box_px"][1] + 1) > limit]
                out.append(summarise(self, findings, None))
            return out


    class JudgeConfig(BaseModel):
        model_config = ConfigDict(extra="forbid")
        endpoint: str = "http://localhost:9/v1"


    class RemoteJudge:  # declares a model; never constructed with a server in these tests
        name = "remote_judge"
        version = "1"
        level = "release"
        needs_model = True
        config_model = JudgeConfig
        description = "a model judge at release level"

        def __init__(self, config, *, glossary=None):
            self.config = config

        def validate(self, items):
            raise RuntimeError("no server here")
''')


def _install(tmp_path, dist: str, module: str, body: str, entries: list[str]) -> None:
    (tmp_path / f"{module}.py").write_text(body)
    info = tmp_path / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[medreg.validators]\n" + "\n".join(entries) + "\n")


@pytest.fixture()
def plugin(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.registered.cache_clear()
    _install(tmp_path, "medreg_toy_checks", "medreg_toy_checks", PLUGIN,
             ["big_box = medreg_toy_checks:BigBox", "remote_judge = medreg_toy_checks:RemoteJudge"])
    registry.registered.cache_clear()
    yield tmp_path
    for mod in [m for m in sys.modules if m.startswith("medreg_toy")]:
        del sys.modules[mod]
    registry.registered.cache_clear()


def test_plugin_validators_are_registered_with_their_declarations(plugin):
    table = registry.registered()
    assert {"rules", "stats", "clip", "grounding"} <= set(table)
    big, judge = table["big_box"], table["remote_judge"]
    assert (big.level, big.needs_model, big.config_model.__name__) == ("case", False, "BigBoxConfig")
    assert (judge.level, judge.needs_model) == ("release", True)
    assert big.origin == "entry point of medreg_toy_checks"
    cfg = {"validators": ["rules", "big_box", "stats", "remote_judge"], "big_box": {"max_area_fraction": 0.25}}
    assert [v.name for v in case_validators_for(cfg)] == ["rules", "big_box"]
    assert case_validators_for(cfg)[1].config.max_area_fraction == 0.25
    assert [v.name for v in release_validators_for(cfg)] == ["stats", "remote_judge"]
    assert uses_model(cfg) and not uses_model({"validators": ["rules", "big_box"]})


def test_plugin_config_section_is_checked_by_its_own_model(plugin):
    with pytest.raises(ValueError, match=r"validation\.big_box: max_area_fraction: .*BigBoxConfig"):
        registry.check_config({"validators": ["big_box"], "big_box": {"max_area_fraction": 3}})
    with pytest.raises(ValueError, match=r"validation\.big_box: colour: Extra inputs"):
        registry.check_config({"validators": ["big_box"], "big_box": {"colour": "red"}})


def test_unknown_validator_and_stray_section_name_the_fix(plugin):
    with pytest.raises(ValueError, match=r"'big_bx' is not a registered validator \(did you mean 'big_box'\?\).*"
                                         r"medreg\.validators entry point group"):
        registry.check_config({"validators": ["rules", "big_bx"]})
    with pytest.raises(ValueError, match=r"validation\.rulse is neither.*\(did you mean 'rules'\?\)"):
        ValidationConfig.model_validate({"validators": ["rules"], "rulse": {"min_side_px": 2}})


def test_a_build_runs_the_plugin_per_case_and_counts_its_drops(plugin, tmp_path, samples):
    """Rows the plugin drops are exactly the baseline rows with a region over half the image (boxes of the
    Kvasir sample: cju0qx73cjw570799j4n5cjze's polyp box [188,15,542,525] covers 55% of its 619x529 image)."""
    def config(validators: list[str]) -> ReleaseConfig:
        validation: dict = {"validators": validators}
        if "big_box" in validators:
            validation["big_box"] = {"max_area_fraction": 0.5}
        return ReleaseConfig.model_validate({"name": "plug", "version": "1", "seed": 2, "validation": validation,
                                             "sources": [{"card": "kvasir-seg"}], "tasks": {"langs": ["en"]}})

    def rows(release):
        shards = sorted((release / "data").rglob("*.jsonl"))
        return [orjson.loads(line) for p in shards for line in p.read_bytes().splitlines()]

    base = rows(build(config(["rules"]), tmp_path / "base", samples_root=samples))
    rel = build(config(["rules", "big_box"]), tmp_path / "plug", samples_root=samples)
    kept = rows(rel)

    def big(r) -> bool:
        return any((g["box_px"][2] - g["box_px"][0] + 1) * (g["box_px"][3] - g["box_px"][1] + 1)
                   > 0.5 * r["width"] * r["height"] for g in r["meta"]["regions"])

    expect_dropped = [r for r in base if big(r)]
    assert expect_dropped and {r["meta"]["case_id"] for r in expect_dropped} == {"cju0qx73cjw570799j4n5cjze"}
    assert sorted(r["id"] for r in kept) == sorted(r["id"] for r in base if not big(r))
    assert all([v["validator"] for v in r["meta"]["validation"]] == ["rules", "big_box"] for r in kept)
    manifest = orjson.loads((rel / "manifest.json").read_bytes())

    def regions(rs) -> set:
        return {(r["meta"]["case_id"], g["term"], tuple(g["box_px"])) for r in rs for g in r["meta"]["regions"]}

    unused = len(regions(base) - regions(kept))  # regions only the dropped rows mentioned
    assert unused == 1  # the big polyp
    # the Kvasir sample's stray mask pixel (README) is the one dust component of these cases
    assert manifest["dropped"] == {"row:big_box:big_box": len(expect_dropped), "region:unused": unused,
                                   "region:dust": 1}


def test_broken_validator_plugin_warns_and_does_not_break_the_registry(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    _install(tmp_path, "medreg_toy_badcheck", "medreg_toy_badcheck", "class NoLevel:\n    name = 'no_level'\n",
             ["no_level = medreg_toy_badcheck:NoLevel"])
    registry.registered.cache_clear()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            table = registry.registered()
        assert "no_level" not in table and {"rules", "stats"} <= set(table)
        messages = [str(w.message) for w in caught]
        assert any("no_level" in m and "level must be 'case' or 'release'" in m for m in messages)
    finally:
        sys.modules.pop("medreg_toy_badcheck", None)
        registry.registered.cache_clear()


def test_release_config_yaml_with_a_plugin_section_loads(plugin, tmp_path):
    path = tmp_path / "release.yaml"
    validation = {"validators": ["rules", "big_box"], "big_box": {"max_area_fraction": 0.3}}
    path.write_text(yaml.safe_dump({"name": "r", "version": "1", "sources": [{"card": "kvasir-seg"}],
                                    "validation": validation}))
    from schemas.config import load_config

    cfg = load_config(path)
    vc = registry.check_config(cfg.validation)
    assert registry.validator_config("big_box", vc).max_area_fraction == 0.3
