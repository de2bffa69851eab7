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
