"""Beyond one machine (issue 10 item 3): a real `prefect server` on PostgreSQL, a `dask scheduler` and two
`dask worker` processes on loopback; the build runs its case tasks on that cluster and reports to that
server, and gives the same bytes as the in-process build.  A second run kills one worker mid-run and
still completes with the same bytes (Dask reschedules the lost tasks; finished parts are in the store).

Needs the local PostgreSQL (127.0.0.1:5432, trust auth) that every dev/CI machine runs.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(cond, what: str, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} did not come up within {timeout:.0f} s")


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory) -> Iterator[str]:
    db = f"medreg_test_{os.getpid()}"
    psql = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-v", "ON_ERROR_STOP=1", "-c"]
    subprocess.run([*psql, f"DROP DATABASE IF EXISTS {db}"], check=True, capture_output=True)
    subprocess.run([*psql, f"CREATE DATABASE {db}"], check=True, capture_output=True)
    port = _port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path_factory.mktemp("prefect-home")),
           "PREFECT_API_DATABASE_CONNECTION_URL": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{db}",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false"}
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/api"
    try:
        _wait(lambda: _healthy(url), "prefect server on PostgreSQL", 180)
        yield url
    finally:
        _stop([server])
        subprocess.run([*psql, f"DROP DATABASE IF EXISTS {db}"], capture_output=True)


@pytest.fixture()
def dask_cluster(tmp_path) -> Iterator[tuple[str, list[subprocess.Popen]]]:
    port = _port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    sched = subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                              "--no-dashboard"], env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"tcp://127.0.0.1:{port}"
    workers = [subprocess.Popen([str(BIN / "dask"), "worker", address, "--nthreads", "1", "--nworkers", "1",
                                 "--no-dashboard", "--name", f"w{i}", "--local-directory", str(tmp_path / f"w{i}")],
                                env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for i in range(2)]
    try:
        from distributed import Client

        def two_workers() -> bool:
            try:
                with Client(address, timeout=5) as c:
                    return len(c.scheduler_info(n_workers=-1)["workers"]) == 2
            except OSError:
                return False

        _wait(two_workers, "dask scheduler with two workers")
        yield address, workers
    finally:
        _stop([*workers, sched])


def _config(tmp_path: Path, samples: Path, address: str) -> Path:
    cfg = {"name": "c", "version": "1", "seed": 4, "samples_root": str(samples),
           "sources": [{"card": "sam-med2d"}, {"card": "kvasir-seg"}, {"card": "totalseg-mr"}, {"card": "totalseg-ct"}],
           "slicing": {"max_slices_per_case": 2},
           "runner": {"kind": "dask", "address": address, "batch_cases": 1}}
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _files(rel: Path) -> dict[str, bytes]:
    return {p.relative_to(rel).as_posix(): p.read_bytes() for p in sorted(rel.rglob("*")) if p.is_file()}


def _build(cfg: Path, out: Path, api: str) -> subprocess.Popen:
    env = {**os.environ, "PREFECT_API_URL": api, "COLUMNS": "200"}
    return subprocess.Popen([sys.executable, "-m", "flows.cli", "build", str(cfg), "--out", str(out)], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.cluster
def test_dask_cluster_build_reports_to_the_server_and_equals_the_in_process_build(
        prefect_server, dask_cluster, tmp_path, samples):
    from flows.run import build
    from pipeline.release.executors import SerialExecutor

    address, _ = dask_cluster
    cfg = _config(tmp_path, samples, address)
    proc = _build(cfg, tmp_path / "cluster", prefect_server)
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    local = build(_local(cfg), tmp_path / "local", executor=SerialExecutor())
    assert _files(tmp_path / "cluster" / "c-1") == _files(local)
    runs = httpx.post(f"{prefect_server}/flow_runs/filter", json={"limit": 50}, timeout=10).json()
    assert any(r["name"] and r["state_type"] == "COMPLETED" for r in runs)
    tasks = httpx.post(f"{prefect_server}/task_runs/filter", json={"limit": 200}, timeout=10).json()
    names = {t["name"] for t in tasks}
    assert "sam-med2d/amos_0004_75" in names and "kvasir-seg/cju0qkwl35piu0993l0dewei2" in names


@pytest.mark.cluster
def test_killing_a_worker_mid_run_still_completes_with_the_same_bytes(prefect_server, dask_cluster, tmp_path, samples):
    from flows.run import build
    from pipeline.release.executors import SerialExecutor

    address, workers = dask_cluster
    cfg = _config(tmp_path, samples, address)
    out = tmp_path / "cluster"
    proc = _build(cfg, out, prefect_server)
    parts = out / ".medreg-cache" / "parts"
    _wait(lambda: len(list(parts.glob("*/*/summary.json"))) >= 3 or proc.poll() is not None, "the first parts", 600)
    assert proc.poll() is None, "the build ended before a worker could be killed"
    workers[0].send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    local = build(_local(cfg), tmp_path / "local", executor=SerialExecutor())
    assert _files(out / "c-1") == _files(local)
    log = orjson.loads((out / ".medreg-cache" / "runs" / "c-1.last-run.json").read_bytes())
    # the store was empty: every part was made in this run. A case the killed worker finished before it
    # died (its batch's result lost with it) is found in the store when the batch is retried: "cached".
    assert log["cases_built"] + log["cases_cached"] == len(log["cases"]) and log["cases_built"] > 0


def _local(cfg: Path) -> Path:
    data = yaml.safe_load(cfg.read_text())
    data["runner"] = {"kind": "serial"}
    p = cfg.with_name("local.yaml")
    p.write_text(yaml.safe_dump(data))
    return p
