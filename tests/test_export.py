"""Exports: LLaVA/ShareGPT rows (image token, system prompts, roles) and InternVL's training meta file."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from pipeline.release.export import internvl_meta, iter_release_rows, to_llava, write_llava

SYSTEM = "You are a helpful medical assistant."


def _row(convs):
    return {"id": "x1", "image": "images/ab/abc.png", "width": 10, "height": 10, "conversations": convs, "meta": {}}


def test_to_llava_folds_system_turn_and_keeps_one_image_token():
    row = _row([
        {"from": "system", "value": SYSTEM},
        {"from": "human", "value": "<image>\nWhere is <ref>liver</ref>?"},
        {"from": "gpt", "value": "<ref>liver</ref><box>[[1, 2, 3, 4]]</box>"},
    ])
    out = to_llava(row)
    assert set(out) == {"id", "image", "conversations"}
    assert out["image"] == "images/ab/abc.png"
    assert [t["from"] for t in out["conversations"]] == ["human", "gpt"]
    human = out["conversations"][0]["value"]
    assert human.startswith("<image>\n") and human.count("<image>") == 1
    assert SYSTEM in human and human.endswith("Where is <ref>liver</ref>?")
    assert out["conversations"][1]["value"] == "<ref>liver</ref><box>[[1, 2, 3, 4]]</box>"
    dropped = to_llava(row, system="drop")
    assert dropped["conversations"][0]["value"] == "<image>\nWhere is <ref>liver</ref>?"


def test_to_llava_moves_an_inline_image_token_to_the_front():
    # MedRegA's inline layout: system prompt, then <image>, then the question, all in the human turn
    row = _row([{"from": "human", "value": SYSTEM + " <image>\nFind the liver."}, {"from": "gpt", "value": "ok"}])
    human = to_llava(row)["conversations"][0]["value"]
    assert human == "<image>\n" + SYSTEM + "\nFind the liver."
    # no image token at all: one is added
    row = _row([{"from": "human", "value": "Find the liver."}, {"from": "gpt", "value": "ok"}])
    assert to_llava(row)["conversations"][0]["value"] == "<image>\nFind the liver."


def test_to_llava_rejects_conversations_llava_cannot_train_on():
    with pytest.raises(ValueError, match="start with a human"):
        to_llava(_row([{"from": "gpt", "value": "a"}]))
    with pytest.raises(ValueError, match="alternating"):
        to_llava(_row([{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]))


@pytest.fixture(scope="module")
def release(tmp_path_factory, samples) -> Path:
    from flows.run import build
    from schemas.config import ReleaseConfig

    cfg = ReleaseConfig.model_validate(
        {
            "name": "x",
            "version": "2",
            "sources": [{"card": "kvasir-seg"}, {"card": "totalseg-ct"}],
            "slicing": {"max_slices_per_case": 2},
            "output": {"rows_per_shard": 3, "formats": ["internvl", "llava"], "report": False},
        }
    )
    return build(cfg, tmp_path_factory.mktemp("export-release"), samples_root=samples)


def test_release_writer_emits_llava_shards(release):
    from pipeline.release.verify import verify_release

    assert verify_release(release) == []
    files = sorted((release / "data_llava").rglob("*.jsonl"))
    assert files
    for f in files:
        for line in f.read_bytes().splitlines():
            row = orjson.loads(line)
            assert (release / row["image"]).is_file()
            convs = row["conversations"]
            assert convs[0]["from"] == "human" and convs[0]["value"].startswith("<image>\n")
            assert sum(t["value"].count("<image>") for t in convs) == 1
            assert [t["from"] for t in convs] == ["human", "gpt"] * (len(convs) // 2)


def test_internvl_meta_entries_point_at_real_files(release):
    meta = internvl_meta(release, splits=None)
    manifest = orjson.loads((release / "manifest.json").read_bytes())
    assert len(meta) == len(manifest["shards"])  # one entry per shard file
    assert sum(e["length"] for e in meta.values()) == manifest["counts"]["rows"]
    for name, e in meta.items():
        assert set(e) == {"root", "annotation", "data_augment", "repeat_time", "length"}
        assert e["annotation"].endswith(".jsonl") and os.path.isfile(e["annotation"])
        lines = Path(e["annotation"]).read_bytes().splitlines()
        assert len(lines) == e["length"]
        assert e["data_augment"] is False and e["repeat_time"] == 1
        for line in lines:  # InternVL opens os.path.join(root, row["image"])
            assert os.path.isfile(os.path.join(e["root"], orjson.loads(line)["image"]))
        assert name.startswith("x-2_")
    # a group cut into several shards gets numbered entries
    assert any(name.endswith("_00001") for name in meta)


def test_internvl_meta_options(release):
    meta = internvl_meta(release, "/data/medreg/x-2", repeat_time={"grounded_report": 2}, max_dynamic_patch=6)
    assert meta and all(n.split("_")[1] == "train" for n in meta)
    for name, e in meta.items():
        assert e["root"] == "/data/medreg/x-2/"
        assert e["annotation"].startswith("/data/medreg/x-2/data/train/")
        assert e["max_dynamic_patch"] == 6
        assert e["repeat_time"] == (2 if "grounded_report" in name else 1)
    with pytest.raises(ValueError, match="integer repeat_time"):
        internvl_meta(release, repeat_time=1.5)
    with pytest.raises(ValueError, match="no shards"):
        internvl_meta(release, splits=["nope"])


def test_write_llava_json_list_and_folder(release, tmp_path):
    path, n = write_llava(release, tmp_path / "llava.json", splits=None)
    rows = orjson.loads(path.read_bytes())
    assert isinstance(rows, list) and len(rows) == n == len(list(iter_release_rows(release)))
    out, n2 = write_llava(release, tmp_path / "llava_dir", splits=["train"])
    assert n2 == len(list(iter_release_rows(release, ["train"])))
    assert all(p.suffix == ".jsonl" for p in out.rglob("*") if p.is_file())


def test_cli_export(release, tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    runner = CliRunner()
    meta_path = tmp_path / "meta.json"
    res = runner.invoke(app, ["export", str(release), "--format", "internvl-meta", "--out", str(meta_path), "--split", "all", "--root-prefix", "/srv/x-2"])
    assert res.exit_code == 0, res.output
    meta = orjson.loads(meta_path.read_bytes())
    assert all(e["root"] == "/srv/x-2/" for e in meta.values())
    res = runner.invoke(app, ["export", str(release), "--format", "llava", "--out", str(tmp_path / "l.json")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["export", str(release), "--format", "nope", "--out", str(tmp_path / "n.json")])
    assert res.exit_code == 2
