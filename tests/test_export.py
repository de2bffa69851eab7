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


def test_release_writer_emits_one_llava_json_list_per_split(release):
    import json

    from pipeline.release.verify import verify_release

    assert verify_release(release) == []
    manifest = orjson.loads((release / "manifest.json").read_bytes())
    splits = sorted({s["split"] for s in manifest["shards"]})
    assert sorted(p.name for p in (release / "data_llava").iterdir()) == [f"{sp}.json" for sp in splits]
    for split in splits:
        with open(release / "data_llava" / f"{split}.json", encoding="utf-8") as fh:
            rows = json.load(fh)  # what LLaVA's train.py does with --data_path
        assert isinstance(rows, list)
        assert len(rows) == sum(s["lines"] for s in manifest["shards"] if s["split"] == split)
        assert manifest["files"][f"data_llava/{split}.json"]
        for row in rows:
            assert set(row) == {"id", "image", "conversations"} and (release / row["image"]).is_file()
            convs = row["conversations"]
            assert convs[0]["from"] == "human" and convs[0]["value"].startswith("<image>\n")
            assert sum(t["value"].count("<image>") for t in convs) == 1
            assert [t["from"] for t in convs] == ["human", "gpt"] * (len(convs) // 2)


def test_internvl_meta_entries_point_at_real_files(release):
    from pipeline.language.templates import load_templates

    meta = internvl_meta(release, splits=None)
    manifest = orjson.loads((release / "manifest.json").read_bytes())
    assert len(meta) == len(manifest["shards"])  # one entry per task x language and shard file
    assert sum(e["length"] for e in meta.values()) == manifest["counts"]["rows"]
    banks = load_templates()
    for name, e in meta.items():
        assert set(e) == {"root", "annotation", "data_augment", "repeat_time", "length", "base_prompt"}
        assert e["annotation"].endswith(".jsonl") and os.path.isfile(e["annotation"])
        lines = Path(e["annotation"]).read_bytes().splitlines()
        assert len(lines) == e["length"]
        assert e["data_augment"] is False and e["repeat_time"] == 1
        task, lang = Path(e["annotation"]).name.split(".")[:2]  # data/<split>/<task>.<lang>.NNNNN-of-MMMMM.jsonl
        assert f"_{task}_{lang}" in name
        assert e["base_prompt"] == banks.bank(task, lang).system[0][1]
        for line in lines:  # InternVL opens os.path.join(root, row["image"])
            row = orjson.loads(line)
            assert (row["meta"]["task"], row["meta"]["lang"]) == (task, lang)
            assert os.path.isfile(os.path.join(e["root"], row["image"]))
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


def test_write_llava_json_list_jsonl_and_folder(release, tmp_path):
    import json

    path, n = write_llava(release, tmp_path / "llava.json", splits=None)
    with open(path, encoding="utf-8") as fh:
        rows = json.load(fh)
    assert isinstance(rows, list) and len(rows) == n == len(list(iter_release_rows(release)))
    path, n = write_llava(release, tmp_path / "llava.jsonl", splits=["train"])
    with open(path, encoding="utf-8") as fh, pytest.raises(json.JSONDecodeError, match="Extra data"):
        json.load(fh)  # JSONL is for other readers, not LLaVA's train.py
    assert len(path.read_bytes().splitlines()) == n == len(list(iter_release_rows(release, ["train"])))
    out, n2 = write_llava(release, tmp_path / "llava_dir", splits=None)
    splits = sorted({r["meta"]["split"] for r in iter_release_rows(release)})
    assert sorted(p.name for p in out.iterdir()) == [f"{sp}.json" for sp in splits]
    assert sum(len(json.loads(p.read_text())) for p in out.iterdir()) == n2 == len(rows)


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


def _build(tmp, samples, **over):
    from flows.run import build
    from schemas.config import ReleaseConfig

    data = {"name": "m", "version": "1", "sources": [{"card": "kvasir-seg"}, {"card": "totalseg-ct"}],
            "slicing": {"max_slices_per_case": 2}, "output": {"rows_per_shard": 7, "report": False}}
    data.update(over)
    return build(ReleaseConfig.model_validate(data), tmp, samples_root=samples)


def test_internvl_and_medrega_loader_contract(tmp_path, samples):
    """What InternVL's and MedRegA's build_datasets / LazySupervisedDataset read: meta keys, a JSONL
    annotation read line by line, human/gpt turns only, exactly one <image> opening the first human turn."""
    # the layout those loaders take: human/gpt turns only, the task prompt travels as base_prompt
    release = _build(tmp_path, samples, tasks={"system_prompt": "none"})
    meta_path = tmp_path / "meta.json"
    meta_path.write_bytes(orjson.dumps(internvl_meta(release, splits=None)))
    ds_collections = orjson.loads(meta_path.read_bytes())  # build_datasets: json.loads(open(meta_path).read())
    pairs = set()
    for name, entry in ds_collections.items():
        for key in ("root", "annotation", "data_augment", "repeat_time", "length", "base_prompt"):
            assert key in entry, (name, key)  # MedRegA: KeyError 'base_prompt' otherwise
        assert isinstance(entry["repeat_time"], int) and isinstance(entry["data_augment"], bool)
        assert entry["annotation"].endswith("jsonl") and entry["base_prompt"].strip()
        with open(entry["annotation"]) as f:  # LazySupervisedDataset: f.readlines(), json.loads per line
            raw = f.readlines()
        assert len(raw) == entry["length"]
        for line in raw:
            item = orjson.loads(line)
            convs = item["conversations"]
            assert {t["from"] for t in convs} <= {"human", "gpt"}  # Hermes-2 / internlm2 / phi3 roles
            assert [t["from"] for t in convs] == ["human", "gpt"] * (len(convs) // 2)
            assert convs[0]["value"].startswith("<image>\n")
            assert sum(t["value"].count("<image>") for t in convs) == 1
            assert os.path.isfile(os.path.join(entry["root"], item["image"]))
            pairs.add((item["meta"]["task"], item["meta"]["lang"]))
    assert len(pairs) == 6  # every task x language has entries
    by_pair = {}
    for entry in ds_collections.values():
        task, lang = Path(entry["annotation"]).name.split(".")[:2]
        by_pair.setdefault((task, lang), set()).add(entry["base_prompt"])
    assert set(by_pair) == pairs and all(len(v) == 1 for v in by_pair.values())
    assert len({next(iter(v)) for v in by_pair.values()}) == 6  # each task x language has its own prompt


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_release_files_and_folders_respect_umask(tmp_path, samples, umask):
    old = os.umask(umask)
    try:
        release = _build(tmp_path, samples, output={"rows_per_shard": 50, "formats": ["internvl", "llava"]})
    finally:
        os.umask(old)
    files = [p for p in release.rglob("*") if p.is_file()]
    dirs = [release, *(p for p in release.rglob("*") if p.is_dir())]
    assert {"README.md", "LICENSE.md", "schema.json", "manifest.json"} <= {p.name for p in files}
    assert any(p.suffix == ".png" for p in files) and any(p.parent.name == "data_llava" for p in files)
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {oct(0o666 & ~umask)}  # 0644 / 0640
    assert {oct(p.stat().st_mode & 0o777) for p in dirs} == {oct(0o777 & ~umask)}  # 0755 / 0750
