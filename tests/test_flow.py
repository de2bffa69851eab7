"""The Prefect flow on the embedded server (prefect_test_harness): one task per case, artifact, cache."""

import orjson
import yaml


def _config(tmp_path, samples):
    cfg = {
        "name": "flowtest",
        "version": "1",
        "seed": 3,
        "samples_root": str(samples),
        "sources": [{"card": "kvasir-seg"}, {"card": "totalseg-mr"}, {"card": "nope-not-a-card"}],
        "slicing": {"max_slices_per_case": 2},
        "runner": {"max_workers": 2},
        "output": {"allow_shrink": True},  # the unknown card stays a recorded source error
    }
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_flow_builds_caches_and_reports(prefect_harness, tmp_path, samples):
    from prefect.client.orchestration import get_client

    from flows.build import run_build
    from pipeline.release.verify import verify_release

    cfg = _config(tmp_path, samples)
    out = tmp_path / "out"
    first = run_build(str(cfg), str(out))
    rel = first["release"]
    assert verify_release(rel) == []
    m = orjson.loads((tmp_path / "out" / "flowtest-1" / "manifest.json").read_bytes())
    assert m["counts"]["by_source"].keys() == {"kvasir-seg", "totalseg-mr"}
    # the unknown card is a per-source error record, not a crashed run
    assert any(e["source"] == "nope-not-a-card" and e["stage"] == "discover" for e in m["errors"])
    shards_first = {s["path"]: s["sha256"] for s in m["shards"]}

    assert (first["built"], first["cached"]) == (6, 0)
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts()
        assert any(a.key == "release-counts" for a in arts)
        runs = client.read_task_runs()
        case_runs = [r for r in runs if r.name.startswith("kvasir-seg/")]
        # small cases share one task, named after the cases it builds
        assert len(case_runs) == 1 and "(6 cases)" in case_runs[0].name, [r.name for r in runs]

    # the flow and the in-process build give the same bytes
    from flows.run import build
    from schemas.config import load_config

    plain = build(load_config(cfg), tmp_path / "plain", samples_root=samples)
    m_plain = orjson.loads((plain / "manifest.json").read_bytes())
    assert {s["path"]: s["sha256"] for s in m_plain["shards"]} == shards_first
    assert m_plain["images"] == m["images"]

    second = run_build(str(cfg), str(out))
    m2 = orjson.loads((tmp_path / "out" / "flowtest-1" / "manifest.json").read_bytes())
    assert {s["path"]: s["sha256"] for s in m2["shards"]} == shards_first
    assert (second["built"], second["cached"]) == (0, 6)  # every part reused: no case task submitted
    assert first["orchestrated"] and second["orchestrated"]  # a configured server: every run is recorded
    with get_client(sync_client=True) as client:
        assert len([r for r in client.read_task_runs() if r.name.startswith("kvasir-seg/")]) == 1
    assert second["release"] == rel


def test_flow_model_validator_stage_uses_the_gpu_limit(prefect_harness, tmp_path, samples):
    """The validation stage with the embedding judge (a tiny random CLIP built offline, loaded through
    the real loader): runs under the `medreg-gpu` global concurrency limit (= GPUs, 1 here) and the
    validation artifact shows pass/flag/fail per source and validator."""
    from helpers_clip import build_tiny_clip
    from prefect.client.orchestration import get_client

    from flows.build import GPU_LIMIT, run_build

    model = tmp_path / "clip"
    build_tiny_clip(model)
    cfg = {
        "name": "gpuflow", "version": "1", "seed": 3, "samples_root": str(samples),
        "sources": [{"card": "kvasir-seg", "max_cases": 2}],
        "validation": {"validators": ["rules", "clip"], "clip": {"model_path": str(model), "device": "cpu"},
                       "policy": {"per_validator": {"clip": {"fail": "flag"}}}},
    }
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg))
    res = run_build(str(p), str(tmp_path / "out"))
    m = orjson.loads((tmp_path / "out" / "gpuflow-1" / "manifest.json").read_bytes())
    clip_counts = m["counts"]["validation_by_source"]["kvasir-seg"]["clip"]
    assert sum(clip_counts.values()) == m["counts"]["rows"] > 0
    rows = [orjson.loads(line) for f in sorted((tmp_path / "out" / "gpuflow-1" / "data").rglob("*.jsonl"))
            for line in f.read_bytes().splitlines()]
    assert all({v["validator"] for v in r["meta"]["validation"]} == {"rules", "clip"} for r in rows)
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(GPU_LIMIT)
        assert limit.limit == 1
        assert any(a.key == "release-validation" for a in client.read_artifacts())
    assert res["release"].endswith("gpuflow-1")


def test_an_all_cached_rerun_without_a_server_is_checked_in_process(tmp_path, samples):
    """No PREFECT_API_URL and every case in the store: no temporary server is started (its start-up alone
    is more than 10% of a 1,000-case build); the release is the in-process build's, byte for byte."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.build import check_without_server, run_build
    from flows.run import run_build as run_local
    from schemas.config import load_config
    from sources.plan import make_plan

    cfg_path = _config(tmp_path, samples)
    cfg = load_config(cfg_path)
    out = tmp_path / "out"
    first = run_local(cfg, out)
    manifest = (first.release / "manifest.json").read_bytes()
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        said: list[str] = []
        second = run_build(str(cfg_path), str(out), say=said.append)
        assert second["orchestrated"] is False and (second["built"], second["cached"]) == (0, 6)
        assert second["release"] == str(first.release)
        assert (first.release / "manifest.json").read_bytes() == manifest
        assert len(said) == 1 and "no temporary Prefect server was used" in said[0]
        # a config change that reaches the cases: there is work, so the flow runs (returns None here)
        fewer = cfg.model_copy(update={"slicing": cfg.slicing.model_copy(update={"max_slices_per_case": 1})})
        assert check_without_server(make_plan(fewer, samples, out), out) is None
        # a deleted release with every case cached is rewritten in process, byte-identical
        import shutil

        shutil.rmtree(first.release)
        third = run_build(str(cfg_path), str(out))
        assert third["orchestrated"] is False and (first.release / "manifest.json").read_bytes() == manifest
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        assert check_without_server(make_plan(cfg, samples, out), out) is None  # a server records every run


def test_an_all_cached_rerun_on_a_server_runs_the_flow_without_starting_workers(prefect_harness, tmp_path, samples,
                                                                                 monkeypatch):
    """With a server configured every run goes through the flow (and is recorded); when every case is in
    the store there is nothing to build, so no local Dask cluster is started for it."""
    import flows.build as fb
    from flows.run import run_build as run_local

    cfg_path = _config(tmp_path, samples)
    out = tmp_path / "out"
    first = run_local(str(cfg_path), out)
    manifest = (first.release / "manifest.json").read_bytes()
    starts: list[bool] = []
    real = fb.local_cluster

    def spy(cfg, start=True):  # the real context manager, recording whether it was asked to start workers
        starts.append(start)
        return real(cfg, start=start)

    monkeypatch.setattr(fb, "local_cluster", spy)
    second = fb.run_build(str(cfg_path), str(out))
    assert second["orchestrated"] is True and (second["built"], second["cached"]) == (0, 6)
    assert starts == [False] and (first.release / "manifest.json").read_bytes() == manifest
