"""The layering the architecture promises (docs/architecture.md), checked on the source: pipeline/ never
imports Prefect, sources/ or flows/; schemas/ imports no pipeline/, sources/ or flows/; sources/ never
imports flows/ or Prefect.  Lazy imports inside functions count too (AST walk, not import side effects)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "pipeline": ("prefect", "prefect_dask", "sources", "flows"),
    "schemas": ("pipeline", "sources", "flows", "prefect"),
    "sources": ("flows", "prefect", "prefect_dask"),
}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_upward_imports(package):
    bad = []
    for path in sorted((REPO / package).rglob("*.py")):
        for line, mod in _imports(path):
            if mod.split(".")[0] in FORBIDDEN[package]:
                bad.append(f"{path.relative_to(REPO)}:{line} imports {mod}")
    assert bad == []


def test_planning_a_nifti_build_loads_no_case_machinery(tmp_path) -> None:
    """The main process of a build with worker processes plans, collects and writes; it never loads a case.
    Importing the in-process build and planning the shipped TotalSegmentator card must not import the
    readers, the converters or the numba kernels (~1 s, paid by the workers' fork server instead), nor the
    DICOM adapters' readers (only the adapter the card names is imported)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from flows.run import resolve_samples_root\n"
        "from schemas.config import ReleaseConfig\n"
        "from sources.plan import make_plan\n"
        "cfg = ReleaseConfig.model_validate({'name': 'lazy', 'version': '1', 'sources': [{'card': 'totalseg-ct'}]})\n"
        f"plan = make_plan(cfg, resolve_samples_root(cfg), {str(tmp_path / 'out')!r})\n"
        "assert plan.jobs, 'the sample case is planned'\n"
        "heavy = ('pipeline.release.case', 'pipeline.ingest.convert', 'numba', 'nibabel', 'scipy.ndimage',\n"
        "         'pydicom', 'highdicom', 'skimage')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "[]"
