"""benchmarks/gpu_check.sh picks an interpreter that can import torch (issue 15 item 9): when python3 is
itself a virtualenv, a --system-site-packages venv over it would see the base interpreter (no torch), so
the script must use that python3 directly and make no venv."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_a_virtualenv_python3_is_used_directly(tmp_path):
    venv_bin = Path(sys.executable).parent  # the test venv: a virtualenv with torch
    env = {**os.environ, "PATH": f"{venv_bin}:{os.environ['PATH']}", "OUT": str(tmp_path / "res")}
    env.pop("PYTHON", None)
    res = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--which-python"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "python3 is a virtualenv" in res.stdout
    assert f"python: {venv_bin}/python" in res.stdout and "torch 2." in res.stdout
    assert not (REPO / "out" / "venv-gpu").exists() or "venv-gpu" not in res.stdout
