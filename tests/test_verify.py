"""`medreg verify` catches every kind of tampering with a release (issue 9 item 9).

Each case copies a real release, tampers with it one way, and asserts verify reports it naming the file.
"Careful" tamperings also recompute the manifest's self-hash, as someone editing on purpose would: the
counts re-derived from the shards, the per-row licences and the card's data_files still catch them."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from flows.run import build
from pipeline.release.shards import manifest_bytes
from pipeline.release.verify import verify_release
from schemas.config import ReleaseConfig


@pytest.fixture(scope="module")
def release(tmp_path_factory, samples) -> Path:
    cfg = ReleaseConfig.model_validate({
        "name": "v", "version": "1", "seed": 1, "sources": [{"card": "kvasir-seg"}, {"card": "totalseg-mr"}],
        "slicing": {"max_slices_per_case": 2}, "output": {"rows_per_shard": 20},
    })
    return build(cfg, tmp_path_factory.mktemp("verify"), samples_root=samples)


def _manifest(rel: Path) -> dict:
    return orjson.loads((rel / "manifest.json").read_bytes())


def _save(rel: Path, m: dict, rehash: bool) -> None:
    if rehash:
        m["manifest_sha256"] = ""
        m["manifest_sha256"] = hashlib.sha256(manifest_bytes(m)).hexdigest()
    (rel / "manifest.json").write_bytes(manifest_bytes(m))


def edit_licence(rel: Path, rehash: bool) -> str:
    m = _manifest(rel)
    m["sources"][0]["licence"] = "CC0-1.0"
    _save(rel, m, rehash)
    return "licence" if rehash else "own hash"


def edit_counts(rel: Path, rehash: bool) -> str:
    m = _manifest(rel)
    m["counts"]["rows"] += 10
    _save(rel, m, rehash)
    return "counts.rows" if rehash else "own hash"


def delete_shard_and_entry(rel: Path, rehash: bool) -> str:
    m = _manifest(rel)
    gone = m["shards"].pop(0)
    (rel / gone["path"]).unlink()
    _save(rel, m, rehash)
    return "counts.rows" if rehash else "own hash"


def entry_outside(rel: Path, rehash: bool) -> str:
    m = _manifest(rel)
    m["files"]["../../etc/hostname"] = "0" * 64
    _save(rel, m, rehash)
    return "leaves the release"


def image_symlink(rel: Path, rehash: bool) -> str:
    m = _manifest(rel)
    img = rel / m["images"][0]["path"]
    outside = rel.parent / "elsewhere.png"
    shutil.copyfile(img, outside)
    img.unlink()
    os.symlink(outside, img)
    return "symlink"


def stray_folder(rel: Path, rehash: bool) -> str:
    (rel / "data" / "extra").mkdir()
    return "holds no listed file"


def stray_file(rel: Path, rehash: bool) -> str:
    (rel / "data" / "train" / "notes.jsonl").write_text("{}\n")
    return "not listed"


def edited_row(rel: Path, rehash: bool) -> str:
    shard = next((rel / "data").rglob("*.jsonl"))
    shard.write_bytes(shard.read_bytes().replace(b'"gpt"', b'"GPT"', 1))
    return "sha256"


def moved_row(rel: Path, rehash: bool) -> str:
    """A row moved to another split's shard, shard hashes and the manifest recomputed."""
    m = _manifest(rel)
    a, b = m["shards"][0], next(s for s in m["shards"] if s["split"] != m["shards"][0]["split"])
    la = (rel / a["path"]).read_bytes().splitlines(keepends=True)
    lb = (rel / b["path"]).read_bytes().splitlines(keepends=True)
    (rel / a["path"]).write_bytes(b"".join(la[1:]))
    (rel / b["path"]).write_bytes(b"".join(lb + la[:1]))
    for s, lines in ((a, la[1:]), (b, lb + la[:1])):
        data = b"".join(lines)
        s.update(sha256=hashlib.sha256(data).hexdigest(), lines=len(lines), bytes=len(data))
    _save(rel, m, rehash)
    return "is not a"


KINDS = [edit_licence, edit_counts, delete_shard_and_entry, entry_outside, image_symlink, stray_folder, stray_file,
         edited_row, moved_row]


@pytest.mark.parametrize("rehash", [False, True], ids=["naive", "careful"])
@pytest.mark.parametrize("tamper", KINDS, ids=[k.__name__ for k in KINDS])
def test_verify_reports_each_tampering(release, tmp_path, tamper, rehash):
    assert verify_release(release) == []
    copy = tmp_path / "copy"
    shutil.copytree(release, copy, symlinks=True)
    expect = tamper(copy, rehash)
    problems = verify_release(copy)
    assert any(expect in p for p in problems), problems
    res = CliRunner().invoke(__import__("flows.cli", fromlist=["app"]).app, ["verify", str(copy)])
    assert res.exit_code == 1


def test_verify_never_reads_outside_the_release(release, tmp_path, monkeypatch):
    copy = tmp_path / "copy"
    shutil.copytree(release, copy)
    entry_outside(copy, True)
    opened: list[str] = []
    import pipeline.release.verify as v

    real = v.file_sha256
    monkeypatch.setattr(v, "file_sha256", lambda p: opened.append(str(p)) or real(p))
    verify_release(copy)
    assert opened and all(Path(p).resolve().is_relative_to(copy.resolve()) for p in opened)
