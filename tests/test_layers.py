"""The package's layers (docs/architecture.md): core imports neither the recipe nor the tools,
and the recipe imports no tool except the evaluation package (the trainer's periodic evaluation)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = REPO_ROOT / "openrs_jax"
SHARED = {"openrs_jax.files", "openrs_jax.cli", "openrs_jax.hub"}  # small helpers every layer may use
RECIPE_MAY_USE = {"openrs_jax.evaluation"}


def project_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every openrs_jax import in `path`, lazy ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] if node.module != "openrs_jax" else [f"openrs_jax.{a.name}" for a in node.names]
            found += [(node.lineno, n) for n in names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] == "openrs_jax"]


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or ".".join(parts[:2]) in SHARED:
        return "shared"
    return parts[1] if parts[1] in ("core", "recipe") else "tools"


def violations(layer: str, allowed: set[str], exceptions: set[str] = frozenset()) -> list[str]:
    bad = []
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        for line, module in project_imports(path):
            if layer_of(module) not in allowed and not any(module.startswith(e) for e in exceptions):
                bad.append(f"{path.relative_to(REPO_ROOT)}:{line} imports {module}")
    return bad


def test_core_imports_only_core():
    assert violations("core", {"core", "shared"}) == []


def test_recipe_imports_core_and_only_the_evaluation_tool():
    assert violations("recipe", {"core", "recipe", "shared"}, RECIPE_MAY_USE) == []


def test_the_check_sees_a_violation(tmp_path, monkeypatch):
    bad = tmp_path / "openrs_jax" / "core"
    bad.mkdir(parents=True)
    (bad / "x.py").write_text("def f():\n    from openrs_jax.recipe import toy\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "openrs_jax")
    monkeypatch.setattr(sys.modules[__name__], "REPO_ROOT", tmp_path)
    assert violations("core", {"core", "shared"}) == ["openrs_jax/core/x.py:2 imports openrs_jax.recipe"]
