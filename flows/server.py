"""A temporary Prefect server that dies with the build, and a clear retry when it starts slowly.

Without ``PREFECT_API_URL`` Prefect starts a temporary API server in a subprocess; when the build is killed
with SIGKILL that subprocess keeps running (a port and ~200 MB each time).  This module starts the same
server (uvicorn + ``prefect.server.api.server:create_app``) itself, with Linux's parent-death signal set in
the child, so the kernel stops it when the build dies however it dies.  A first start on a fresh
``PREFECT_HOME`` (database migrations) can be slow: a timed-out start is retried once, with a message.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

PR_SET_PDEATHSIG = 1
_SERVER_ENV = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError):  # not Linux: the finally-stop still applies
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def api_url_configured() -> bool:
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value())


def _prefect_parent() -> str:
    """The folder holding the ``prefect`` package, found without importing it (that takes seconds)."""
    spec = importlib.util.find_spec("prefect")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the prefect package is not installed: build with --no-prefect, or install it")
    return str(Path(next(iter(spec.submodule_search_locations))).parent)


def _start(port: int, env: dict[str, str]) -> subprocess.Popen[Any]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--app-dir",
            _prefect_parent(),
            "--factory",
            "prefect.server.api.server:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "error",
            "--lifespan",
            "on",
        ],
        env=env,
        preexec_fn=_die_with_parent,  # only prctl: safe between fork and exec
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _wait_healthy(proc: subprocess.Popen[Any], url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    with httpx.Client() as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            with contextlib.suppress(httpx.HTTPError):
                if client.get(f"{url}/health", timeout=2).status_code == 200:
                    return True
            time.sleep(0.1)
    return False


def _stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stderr is not None:
        proc.stderr.close()


class TemporaryServer:
    """A temporary API server for one build: :meth:`start` launches it (no wait), :meth:`ready` waits until
    it answers (one retry) and points this process's Prefect settings at it, :meth:`stop` ends it.  Work that
    needs no server (planning) runs between start and ready, while the server boots.  Nothing is started
    when PREFECT_API_URL is set: that server is used."""

    def __init__(self, timeout: float = 60.0, say: Any = None) -> None:
        self.timeout, self.say = timeout, say
        self.proc: subprocess.Popen[Any] | None = None
        self.url: str | None = None
        self._env: dict[str, str] = {}
        self._stack = contextlib.ExitStack()

    def start(self) -> None:
        if api_url_configured():
            return
        from prefect.settings import get_current_settings

        self._env = {**os.environ, **get_current_settings().to_environment_variables(exclude_unset=True), **_SERVER_ENV}
        self._launch()

    def start_early(self) -> None:
        """Launch before this process has imported Prefect (importing it takes seconds the server can spend
        booting). The child reads the same environment and profile; :meth:`adopt` stops it unused when a
        ``PREFECT_API_URL`` turns out to be configured."""
        if os.environ.get("PREFECT_API_URL"):
            return
        self._env = {**os.environ, **_SERVER_ENV}
        self._launch()

    def adopt(self) -> None:
        """After Prefect is imported: keep an early-started server only when no API URL is configured."""
        if self.proc is not None and api_url_configured():
            _stop(self.proc)
            self.proc = self.url = None

    def _launch(self) -> None:
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}/api"
        self.proc = _start(port, self._env)

    def ready(self) -> str | None:
        """The server's API URL once it answers (None: the configured PREFECT_API_URL is used)."""
        if self.proc is None or self.url is None:
            return None
        if not _wait_healthy(self.proc, self.url, self.timeout):
            _stop(self.proc)
            if self.say is not None:
                self.say(
                    f"the temporary Prefect server did not start within {self.timeout:.0f} s (a first start on a "
                    f"fresh PREFECT_HOME migrates its database); retrying once"
                )
            self._launch()
            assert self.proc is not None and self.url is not None
            if not _wait_healthy(self.proc, self.url, self.timeout):
                raise RuntimeError(
                    f"the temporary Prefect server did not start twice (within {self.timeout:.0f} s each) -> set "
                    f"PREFECT_API_URL to a running server (`prefect server start`), or build with --no-prefect"
                )
        from prefect.settings import PREFECT_API_URL, temporary_settings

        self._stack.enter_context(temporary_settings(updates={PREFECT_API_URL: self.url}))
        self._stack.callback(_flush_logs)  # runs first on close: logs are sent while the server still listens
        return self.url

    def stop(self) -> None:
        try:
            self._stack.close()
        finally:
            if self.proc is not None:
                _stop(self.proc)
                self.proc = None


@contextlib.contextmanager
def temporary_server(timeout: float = 60.0, say: Any = None, wait: bool = True,
                     early: TemporaryServer | None = None) -> Iterator[TemporaryServer]:
    """A :class:`TemporaryServer`, started (and, with ``wait``, ready) for the block; stopped when the block
    ends, and with the build if it is killed.  ``early``: one launched with :meth:`TemporaryServer.start_early`
    (the CLI does, before importing Prefect), used instead of starting another."""
    server = early if early is not None else TemporaryServer(timeout, say)
    try:
        if early is None:
            server.start()
        else:
            server.say = server.say or say
            server.adopt()
        if wait:
            server.ready()
        yield server
    finally:
        server.stop()


def _flush_logs() -> None:
    """Send buffered run logs while the server still listens (else: 'Error logging to API')."""
    try:
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=10)
    except Exception:  # logging must never fail a build
        pass
