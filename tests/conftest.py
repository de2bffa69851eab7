"""Shared fixtures: the real public sample data and one Prefect test harness for the few flow tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

# reproducible property tests: the same examples on every machine and in CI (no flaky first-seen cases)
settings.register_profile("medreg", derandomize=True, deadline=None, print_blob=True)
settings.load_profile("medreg")

REPO = Path(__file__).resolve().parents[1]
SAMPLES = Path(os.environ.get("MEDREG_SAMPLES", REPO.parent / "shared" / "data"))


def samples_dir() -> Path:
    if not SAMPLES.is_dir():
        raise RuntimeError(
            f"sample data folder {SAMPLES} is missing: set MEDREG_SAMPLES or run `medreg fetch-samples --dest DIR`"
        )
    return SAMPLES


@pytest.fixture(scope="session")
def samples() -> Path:
    return samples_dir()


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    """One embedded Prefect server for the whole session, with its own PREFECT_HOME."""
    home = tmp_path_factory.mktemp("prefect-home")
    os.environ["PREFECT_HOME"] = str(home)
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield home


@pytest.fixture
def write_rows_release():
    """Write hand-made rows as a minimal release folder (manifest + one shard per split/task/lang)."""
    import orjson

    def write(rel: Path, rows: list[dict]) -> Path:
        groups: dict = {}
        for r in rows:
            m = r["meta"]
            groups.setdefault((m["split"], m["task"], m["lang"]), []).append(r)
        shards = []
        for (split, task, lang), rs in sorted(groups.items()):
            path = f"data/{split}/{task}.{lang}.00000-of-00001.jsonl"
            (rel / path).parent.mkdir(parents=True, exist_ok=True)
            (rel / path).write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rs))
            shards.append({"path": path, "split": split, "task": task, "lang": lang, "lines": len(rs)})
        (rel / "manifest.json").write_bytes(orjson.dumps({"name": "hand", "version": "0", "shards": shards}))
        return rel

    return write


@pytest.fixture(autouse=True)
def _user_terms_do_not_leak():
    """Cards with `terms:` add them to the process glossary; each test starts from the shipped glossary."""
    yield
    from pipeline.language.user_terms import reset_user_terms

    reset_user_terms()
