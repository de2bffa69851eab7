"""Fault trials for publishing (issue 9 items 1, 2, 3, 8, 10): concurrent builds into one --out, a full
disk, kill -9 at random points, a kill between the two renames of the swap, and the temporary Prefect
server after a kill -9.  Slow or privileged trials carry the ``faults`` marker (``make faults``); the
fast ones run in ``make test``.

Every trial asserts: the exit code, a message naming the folder and the fix, the previous release
intact (``medreg verify``), nothing outside the output folder, and byte-identical releases after reruns.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.release.publish import recover
from pipeline.release.verify import verify_release

REPO = Path(__file__).resolve().parents[1]


def _config(tmp: Path, samples: Path, seed: int = 5, **extra) -> Path:
    cfg = {"name": "f", "version": "1", "seed": seed, "samples_root": str(samples),
           "sources": [{"card": "kvasir-seg"}, {"card": "totalseg-mr"}, {"card": "sam-med2d"}],
           "slicing": {"max_slices_per_case": 2}, "runner": {"kind": "serial"}, **extra}
    p = tmp / f"cfg-{seed}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "flows.cli", "build", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "200", **(env or {})})


def _files(rel: Path) -> dict[str, bytes]:
    return {p.relative_to(rel).as_posix(): p.read_bytes() for p in sorted(rel.rglob("*")) if p.is_file()}


def test_rebuild_into_the_same_folder_is_byte_identical_to_a_clean_build(tmp_path, samples):
    from flows.run import build

    cfg = _config(tmp_path, samples)
    a = build(cfg, tmp_path / "a")
    first = _files(a)
    again = build(cfg, tmp_path / "a")  # every part, image and verdict comes from the store
    clean = build(cfg, tmp_path / "b")
    assert _files(again) == first == _files(clean)


def test_a_kill_between_the_two_renames_of_the_swap_is_recovered(tmp_path, samples):
    from flows.run import build

    cfg = _config(tmp_path, samples)
    rel = build(cfg, tmp_path)
    good = _files(rel)
    os.replace(rel, tmp_path / ".f-1.old-999999")  # the state a kill between the renames leaves
    assert not rel.exists()
    assert recover(tmp_path, "f-1") == ["restored f-1 from an interrupted swap"]
    assert _files(rel) == good and verify_release(rel) == []
    os.replace(rel, tmp_path / ".f-1.old-999999")
    again = build(cfg, tmp_path)  # the next build restores it first, then rebuilds the same bytes
    assert _files(again) == good
    assert not list(tmp_path.glob(".f-1.*"))


def test_a_source_without_cases_never_replaces_a_release(tmp_path, samples):
    data = tmp_path / "data"
    for d in ("kvasir-seg-sample", "totalseg-nifti", "sam-med2d-demo"):
        shutil.copytree(samples / d, data / d)
    cfg = _config(tmp_path, data)
    proc = _cli(str(cfg), "--out", str(tmp_path / "out"), "--no-prefect")
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    rel = tmp_path / "out" / "f-1"
    good = _files(rel)
    shutil.rmtree(data / "kvasir-seg-sample")  # the data folder went missing
    proc = _cli(str(cfg), "--out", str(tmp_path / "out"), "--no-prefect")
    assert proc.wait(timeout=600) == 1
    err = proc.stderr.read()
    assert "kvasir-seg" in err and "allow_shrink" in err
    assert _files(rel) == good


@pytest.mark.faults
def test_a_second_build_into_the_same_folder_fails_clearly_or_waits(tmp_path, samples):
    """Another process holds the output folder's lock (the build's own ``output_lock``, in a process that
    keeps it until told: no race with a first build that finishes before the second starts)."""
    cfg = _config(tmp_path, samples)
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path; from pipeline.release.publish import output_lock\n"
         f"with output_lock(Path({str(out)!r})):\n    print('locked', flush=True)\n    sys.stdin.read()"],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        second = _cli(str(cfg), "--out", str(out), "--no-prefect")
        assert second.wait(timeout=600) == 1
        msg = second.stderr.read()
        assert f"pid {holder.pid}" in msg and str(out) in msg.replace("\n", "") and "--wait" in msg
        third = _cli(str(cfg), "--out", str(out), "--no-prefect", "--wait", "600")
        time.sleep(3)
        assert third.poll() is None  # waiting for the lock, not failing
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert third.wait(timeout=600) == 0, third.stderr.read()
    assert verify_release(out / "f-1") == []
    assert sorted(p.name for p in out.iterdir()) == [".medreg-cache", ".medreg.lock", "f-1"]


@pytest.mark.faults
def test_a_full_disk_stops_the_build_and_keeps_the_release(tmp_path, samples):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)]).returncode != 0:
        pytest.fail("mounting a tmpfs needs root (the faults suite runs as root on the dev/CI machines)")
    try:
        proc = _cli(str(_config(tmp_path, samples)), "--out", str(mnt), "--no-prefect")
        assert proc.wait(timeout=600) == 0, proc.stderr.read()
        good = _files(mnt / "f-1")
        free = shutil.disk_usage(mnt).free
        (mnt / "filler").write_bytes(b"\0" * max(0, free - 200_000))
        proc = _cli(str(_config(tmp_path, samples, seed=6)), "--out", str(mnt), "--no-prefect")
        assert proc.wait(timeout=600) == 1
        err = proc.stderr.read().replace("\n", "")
        assert "disk is full" in err and str(mnt) in err and "free" in err, err
        assert _files(mnt / "f-1") == good and verify_release(mnt / "f-1") == []
        assert not list(mnt.glob(".f-1.staging-*"))
    finally:
        subprocess.run(["umount", str(mnt)])


@pytest.mark.faults
def test_kill_9_at_random_points_then_rerun_gives_the_clean_bytes(tmp_path, samples):
    cfg = _config(tmp_path, samples)
    ref = _cli(str(cfg), "--out", str(tmp_path / "ref"), "--no-prefect")
    assert ref.wait(timeout=600) == 0
    clean = _files(tmp_path / "ref" / "f-1")
    rng = random.Random(9)
    out = tmp_path / "out"
    for trial in range(10):
        if trial % 3 == 0:
            shutil.rmtree(out, ignore_errors=True)  # some trials start cold
        p = _cli(str(cfg), "--out", str(out), "--no-prefect")
        time.sleep(rng.uniform(0.5, 6.0))
        p.send_signal(signal.SIGKILL)
        p.wait()
        if (out / "f-1").exists():
            assert verify_release(out / "f-1") == []  # whatever is published is whole
        again = _cli(str(cfg), "--out", str(out), "--no-prefect")
        assert again.wait(timeout=600) == 0, again.stderr.read()
        assert _files(out / "f-1") == clean, f"trial {trial}"
        assert not list(out.glob(".f-1.*"))


@pytest.mark.faults
def test_kill_9_of_a_prefect_build_stops_its_temporary_server(tmp_path, samples):
    cfg = _config(tmp_path, samples)
    env = {"PREFECT_HOME": str(tmp_path / "ph"), "PREFECT_API_URL": ""}
    p = _cli(str(cfg), "--out", str(tmp_path / "out"), env=env)
    server = None
    deadline = time.time() + 180
    while time.time() < deadline and server is None:
        out = subprocess.run(["pgrep", "-P", str(p.pid), "-f", "uvicorn"], capture_output=True, text=True).stdout
        server = int(out.split()[0]) if out.split() else None
        time.sleep(0.2)
    assert server is not None, "the build never started its temporary server"
    p.send_signal(signal.SIGKILL)
    p.wait()
    deadline = time.time() + 30
    while time.time() < deadline and Path(f"/proc/{server}").exists():
        time.sleep(0.2)
    assert not Path(f"/proc/{server}").exists(), "the temporary Prefect server outlived its build"


def test_case_errors_with_markup_characters_print_as_text(capsys):
    """Issue 9 item 10: a case error naming ``[/path]`` crashed the console with a Rich MarkupError."""
    from flows import cli

    cli.print_case_errors(["kvasir-seg/c1 (load) [cases[/x].jpg]: unreadable [/bold] -> fix it"])
    err = capsys.readouterr().err
    assert "[cases[/x].jpg]" in err and "[/bold]" in err


def test_changing_one_card_rebuilds_only_that_sources_cases(tmp_path, samples):
    from flows.run import run_build

    card = tmp_path / "kvasir.yaml"
    card.write_text((REPO / "sources" / "cards" / "kvasir-seg.yaml").read_text())
    cfg = {"name": "k", "version": "1", "seed": 1, "samples_root": str(samples),
           "sources": [{"card": str(card)}, {"card": "totalseg-mr"}], "slicing": {"max_slices_per_case": 2},
           "runner": {"kind": "serial"}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    first = run_build(path, tmp_path / "out")
    assert (first.built, first.cached) == (6, 0)
    card.write_text(card.read_text().replace("title: Kvasir-SEG", "title: Kvasir-SEG (renamed)"))
    second = run_build(path, tmp_path / "out")
    assert (second.built, second.cached) == (5, 1)  # the five Kvasir cases; the MR case is reused
    third = run_build(path, tmp_path / "out")
    assert (third.built, third.cached) == (0, 6)
