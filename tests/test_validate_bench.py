"""benchmarks/b6_judges.py runs end to end on CPU with a tiny model (the GPU parts skip themselves)."""

from __future__ import annotations

import importlib.util
from pathlib import Path




def test_b6_runs_on_cpu_tiny(tmp_path, monkeypatch) -> None:
    import torch

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "b6_judges.py"
    spec = importlib.util.spec_from_file_location("b6_judges", path)
    b6_judges = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(b6_judges)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = b6_judges.main(["--size", "tiny", "--items", "3", "--cpu-items", "2", "--regions", "2",
                          "--model-dir", str(tmp_path / "m"), "--json", str(tmp_path / "b6.json")])
    assert out["gpu_name"] is None and "gpu" not in out
    assert out["cpu"]["regions"] == 4 and out["cpu"]["regions_per_s"] > 0
    assert (tmp_path / "b6.json").exists() and (tmp_path / "m" / "config.json").exists()
