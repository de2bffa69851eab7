"""The temporary Prefect server launched before Prefect is imported (the CLI's early start): it boots while
the build imports, is used when no API URL is configured, and is stopped unused when one is."""

from __future__ import annotations

import time

import httpx


def _gone(proc) -> bool:
    deadline = time.time() + 15
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    return proc.poll() is not None


def test_an_early_server_is_used_when_no_api_url_is_configured(tmp_path, monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.server import TemporaryServer, temporary_server

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "ph"))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        early = TemporaryServer(timeout=120)
        early.start_early()
        proc = early.proc
        assert proc is not None and proc.poll() is None
        with temporary_server(early=early) as server:
            assert server is early and server.url is not None
            assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
            assert PREFECT_API_URL.value() == server.url  # this process's Prefect now talks to it
        assert _gone(proc)
        early.stop()  # the CLI stops it again in its finally: harmless


def test_an_early_server_is_stopped_unused_when_a_server_is_configured(tmp_path, monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.server import TemporaryServer, temporary_server

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "ph"))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    url = "http://127.0.0.1:9/api"  # configured in Prefect's settings (a profile), not in the environment
    with temporary_settings(updates={PREFECT_API_URL: url}):
        early = TemporaryServer()
        early.start_early()  # cannot know yet: Prefect is not imported at this point in the CLI
        proc = early.proc
        assert proc is not None
        with temporary_server(early=early) as server:
            assert server.proc is None and server.ready() is None  # the configured server is used
            assert PREFECT_API_URL.value() == url
        assert _gone(proc)
    monkeypatch.setenv("PREFECT_API_URL", url)  # in the environment: nothing is launched at all
    early = TemporaryServer()
    early.start_early()
    assert early.proc is None
