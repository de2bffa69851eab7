"""The code-shape rules of the quality gate that ruff and mypy do not check (issue 15 item 4): no module of
the package over 500 lines; test modules do not import each other (helpers live in modules without the
``test_`` prefix)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "flows", "schemas", "sources")
MAX_LINES = 500


def test_no_module_over_500_lines():
    long = [f"{p.relative_to(REPO)}: {n} lines" for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES]
    assert long == []


def test_test_modules_do_not_import_each_other():
    bad = []
    for p in sorted((REPO / "tests").glob("test_*.py")):
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            bad += [f"{p.name} imports {n}" for n in names if n.split(".")[0].startswith("test_")]
    assert bad == []
