"""Every third-party import of the package is declared in pyproject.toml.

`pip install -e .` installs only `[project] dependencies`, so a package that arrives only
through an extra (torch, pulled by the test extra, brings jinja2 along) hides a broken install
from the test suite. This scan reads the imports of `openrs_jax/` and `conversion/` with `ast`
and accepts each one only if it is the standard library, the project itself, a runtime
dependency, or a lazy import inside a function listed in OPTIONAL_IMPORTS with the extra that
provides it.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest itself depends on tomli there
    import tomli as tomllib

REPO_ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("openrs_jax", "conversion")
FIRST_PARTY = {"openrs_jax", "conversion"}

# Import names whose distribution is named differently (PEP 503 normalised). Any other import
# name is its own distribution name; test_import_to_distribution_map checks both against the
# installed packages' metadata.
IMPORT_TO_DIST = {
    "absl": "absl-py",
    "google.protobuf": "protobuf",
    "jinja2": "jinja2",
    "ml_collections": "ml-collections",
    "orbax.checkpoint": "orbax-checkpoint",
    "PIL": "pillow",
    "sklearn": "scikit-learn",
    "tensorboardX": "tensorboardx",
    "yaml": "pyyaml",
}

# Lazy imports of packages that only an optional extra installs:
# (file, enclosing function, distribution) -> extra. Each import runs only on a code path that
# needs the extra: the benchmarks' comparisons against transformers/TRL on torch
# (`bench sampler --compare_hf`, `bench step --compare_trl`).
OPTIONAL_IMPORTS = {
    ("openrs_jax/bench/common.py", "torch_twin", "torch"): "test",
    ("openrs_jax/bench/sampler.py", "_hf_generate", "torch"): "test",
    ("openrs_jax/bench/sampler.py", "run", "torch"): "test",
    ("openrs_jax/bench/step.py", "run_trl", "torch"): "test",
    ("openrs_jax/bench/step.py", "_run_trl", "torch"): "test",
    ("openrs_jax/bench/step.py", "_run_trl", "trl"): "test",
    ("openrs_jax/recipe/run_log.py", "_import_wandb", "wandb"): "wandb",  # only with report_to=("wandb",)
}


def normalise(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def distribution_of(module: str) -> str:
    """The (normalised) distribution that provides `module`, e.g. 'orbax.checkpoint' -> 'orbax-checkpoint'."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in IMPORT_TO_DIST:
            return normalise(IMPORT_TO_DIST[prefix])
    return normalise(parts[0])


@dataclass(frozen=True)
class Import:
    file: str  # relative to the repository root
    line: int
    function: str  # dotted qualname of the enclosing function, "" at module (or class) level
    module: str  # absolute dotted module name


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def scan_imports(path: Path, rel: str) -> list[Import]:
    """The absolute imports in one source file with their enclosing function (not under TYPE_CHECKING)."""
    found: list[Import] = []

    def visit(node: ast.AST, scope: list[str], in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for sub in child.orelse:  # only the else branch runs
                    visit(ast.Module(body=[sub], type_ignores=[]), scope, in_function)
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    found.append(Import(rel, child.lineno, ".".join(scope) if in_function else "", alias.name))
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.append(Import(rel, child.lineno, ".".join(scope) if in_function else "", child.module))
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child, scope + [child.name], True)
            elif isinstance(child, ast.ClassDef):
                visit(child, scope + [child.name], in_function)
            else:
                visit(child, scope, in_function)

    visit(ast.parse(path.read_text(), filename=str(path)), [], False)
    return found


def project_imports(root: Path = REPO_ROOT) -> list[Import]:
    """Every absolute import of the scanned packages."""
    out: list[Import] = []
    for package in SCANNED:
        for path in sorted((root / package).rglob("*.py")):
            out.extend(scan_imports(path, path.relative_to(root).as_posix()))
    return out


def declared(pyproject: Path = REPO_ROOT / "pyproject.toml") -> tuple[set[str], dict[str, set[str]]]:
    """(runtime distributions, {extra: distributions}) from pyproject.toml, normalised."""
    project = tomllib.loads(pyproject.read_text())["project"]
    runtime = {normalise(Requirement(r).name) for r in project.get("dependencies", [])}
    extras = {
        extra: {normalise(Requirement(r).name) for r in reqs}
        for extra, reqs in project.get("optional-dependencies", {}).items()
    }
    return runtime, extras


def undeclared_imports(
    imports: list[Import], runtime: set[str], extras: dict[str, set[str]], optional: dict
) -> list[str]:
    """One message per import that a plain `pip install -e .` would not satisfy."""
    problems = []
    for imp in imports:
        top = imp.module.split(".")[0]
        if top in FIRST_PARTY or top in sys.stdlib_module_names:
            continue
        dist = distribution_of(imp.module)
        if dist in runtime:
            continue
        where = f"{imp.file}:{imp.line}"
        extra = optional.get((imp.file, imp.function, dist))
        if extra is None:
            scope = f"in {imp.function}()" if imp.function else "at module level"
            problems.append(
                f"{where} imports {imp.module!r} {scope}, but its distribution {dist!r} is not in "
                f"pyproject.toml's [project] dependencies: declare it there, or import it lazily in a "
                f"function listed in OPTIONAL_IMPORTS with the extra that provides it"
            )
        elif dist not in extras.get(extra, set()):
            problems.append(f"{where}: OPTIONAL_IMPORTS says {dist!r} comes with extra {extra!r}, but that extra lacks it")
    return problems


def test_every_third_party_import_is_declared():
    runtime, extras = declared()
    problems = undeclared_imports(project_imports(), runtime, extras, OPTIONAL_IMPORTS)
    assert not problems, "undeclared imports:\n" + "\n".join(problems)


def test_optional_imports_list_has_no_stale_entries():
    """Each OPTIONAL_IMPORTS entry names an existing lazy import, so the list stays the truth."""
    present = {(i.file, i.function, distribution_of(i.module)) for i in project_imports() if i.function}
    stale = sorted(set(OPTIONAL_IMPORTS) - present)
    assert not stale, f"OPTIONAL_IMPORTS entries without a matching lazy import: {stale}"


def test_import_to_distribution_map_matches_installed_metadata():
    """Where a scanned import is installed, its package metadata names the distribution we assume."""
    installed = importlib.metadata.packages_distributions()
    checked = 0
    for module in sorted({i.module for i in project_imports()}):
        top = module.split(".")[0]
        if top in FIRST_PARTY or top in sys.stdlib_module_names or top not in installed:
            continue
        providers = {normalise(d) for d in installed[top]}
        assert distribution_of(module) in providers, f"{module!r}: installed by {providers}, mapped to {distribution_of(module)!r}"
        checked += 1
    assert checked >= 10  # the runtime dependencies are installed wherever the tests run


def _write(root: Path, rel: str, source: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)


def test_scan_flags_undeclared_imports(tmp_path):
    """The checker itself: module-level, unlisted lazy and wrongly-attributed imports are reported."""
    _write(tmp_path, "openrs_jax/a.py", (
        "import os, json\nimport numpy as np\nfrom openrs_jax import b\nfrom . import c\n"
        "import yaml\n"
        "def f():\n    import torch\n"
        "def g():\n    import trl\n"
        "class K:\n    def m(self):\n        import orbax.checkpoint as ocp\n"
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pandas\n"
    ))
    _write(tmp_path, "conversion/x.py", "import absl.flags\nimport tensorboardX\n")
    imports = project_imports(tmp_path)
    assert ("openrs_jax/a.py", "K.m", "orbax.checkpoint") in {(i.file, i.function, i.module) for i in imports}
    assert "pandas" not in {i.module for i in imports}
    runtime = {"numpy", "orbax-checkpoint", "absl-py"}
    extras = {"test": {"torch"}}
    optional = {("openrs_jax/a.py", "f", "torch"): "test", ("openrs_jax/a.py", "g", "trl"): "test"}
    problems = undeclared_imports(imports, runtime, extras, optional)
    assert len(problems) == 3, problems
    assert problems[0].startswith("openrs_jax/a.py:5 imports 'yaml' at module level, but its distribution 'pyyaml'")
    assert problems[1] == "openrs_jax/a.py:9: OPTIONAL_IMPORTS says 'trl' comes with extra 'test', but that extra lacks it"
    assert problems[2].startswith("conversion/x.py:2 imports 'tensorboardX' at module level, but its distribution 'tensorboardx'")


def test_declared_reads_requirement_names(tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\ndependencies = ["Jinja2>=3.1", "orbax_checkpoint", "jax[cuda12]>=0.6; python_version>\'3\'"]\n'
        '[project.optional-dependencies]\ntest = ["pytest>=8"]\n'
    )
    assert declared(tmp_path / "pyproject.toml") == ({"jinja2", "orbax-checkpoint", "jax"}, {"test": {"pytest"}})


@pytest.mark.parametrize("module, dist", [
    ("yaml", "pyyaml"), ("absl.flags", "absl-py"), ("orbax.checkpoint", "orbax-checkpoint"),
    ("ml_collections", "ml-collections"), ("tensorboardX", "tensorboardx"), ("math_verify", "math-verify"),
    ("latex2sympy2_extended", "latex2sympy2-extended"), ("jax.numpy", "jax"),
])
def test_distribution_of(module, dist):
    assert distribution_of(module) == dist


# --- the repository stands on its own ------------------------------------------------------------

# Text that points outside the repository: the team's design notes and data folder, absolute paths.
OUTSIDE_REFERENCE = re.compile(r"RECIPE\.md|DESIGN\.md|GPU-NOTES\.md|\.\./shared|shared/(data|docs)|/work/")
SELF_CONTAINED = ("openrs_jax", "conversion", "configs", "docs", "bench", "tests", "README.md", "pyproject.toml", ".ci")
# tests/conftest.py locates the optional test-data folder; bench/results/ holds recorded runs
# (their command lines are history, not instructions); this file holds the pattern itself.
OUTSIDE_REFERENCE_ALLOWED = ("tests/conftest.py", "tests/test_dependencies.py", "bench/results/")


def outside_references(root: Path = REPO_ROOT) -> list[str]:
    """`file:line: text` for every line of the repository's code and docs that points outside it."""
    hits = []
    for entry in SELF_CONTAINED:
        path = root / entry
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for f in files:
            rel = f.relative_to(root).as_posix()
            if rel.startswith(OUTSIDE_REFERENCE_ALLOWED) or "__pycache__" in rel:
                continue
            try:
                text = f.read_text()
            except UnicodeDecodeError:
                continue
            for n, line in enumerate(text.splitlines(), 1):
                if OUTSIDE_REFERENCE.search(line):
                    hits.append(f"{rel}:{n}: {line.strip()}")
    return hits


def test_repository_refers_to_nothing_outside_it():
    hits = outside_references()
    assert not hits, "references outside the repository (write what they need into docs/):\n" + "\n".join(hits)


def test_outside_reference_check_finds_them(tmp_path):
    _write(tmp_path, "openrs_jax/m.py", '"""Rewards (RECIPE.md section 4)."""\nx = 1\n')
    _write(tmp_path, "README.md", "ok\nsee `../shared/data/train`\n")
    _write(tmp_path, "docs/recipe.md", "the recipe, in our words\n")
    assert outside_references(tmp_path) == [
        "openrs_jax/m.py:1: \"\"\"Rewards (RECIPE.md section 4).\"\"\"", "README.md:2: see `../shared/data/train`",
    ]


def _named_section(rest: str, headings: set[str]) -> str | None:
    """The heading `rest` starts with (longest first), or None."""
    return next((h for h in sorted(headings, key=len, reverse=True) if rest.startswith(h)), None)


def test_docs_sections_named_by_the_code_exist():
    """Code, tests and README point to `docs/recipe.md section X` (or `sections X and Y`): each is a heading."""
    named = re.compile(r"docs/(recipe|design)\.md (section|sections) ")
    headings = {
        doc: {line[3:].strip() for line in (REPO_ROOT / "docs" / f"{doc}.md").read_text().splitlines()
              if line.startswith("## ")}
        for doc in ("recipe", "design")
    }
    files = [p for package in (*SCANNED, "tests") for p in sorted((REPO_ROOT / package).rglob("*.py"))]
    files += [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
    missing, found = [], 0
    for path in files:
        if path.name == "test_dependencies.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for m in named.finditer(line):
                doc, rest = m.group(1), line[m.end():]
                first = _named_section(rest, headings[doc])
                second = None
                if first and m.group(2) == "sections":
                    rest = rest[len(first):]
                    second = _named_section(rest[5:], headings[doc]) if rest.startswith(" and ") else None
                found += 1
                if first is None or (m.group(2) == "sections" and second is None):
                    missing.append(f"{path.relative_to(REPO_ROOT)}:{n}: no such section in docs/{doc}.md: {line.strip()}")
    assert found >= 10 and not missing, "\n".join(missing)
