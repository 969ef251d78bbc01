"""The lock files agree with pyproject.toml, and the code imports only what it declares."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.helpers import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s\\;]+)", re.M)


def pins(name: str) -> dict[str, str]:
    text = (REPO / "requirements" / name).read_text()
    for block in text.split("\n\n"):
        assert "==" not in block or "--hash=sha256:" in block, f"{name}: a pin without hashes: {block[:80]}"
    return {canonicalize_name(n): v for n, v in PIN.findall(text)}


def requirements(*extras: str) -> list[Requirement]:
    reqs = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    for e in extras:
        reqs += [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"][e]]
    return reqs


def test_every_dependency_is_locked_within_its_range():
    for lock, reqs in (("runtime.txt", requirements()), ("test.txt", requirements("test"))):
        locked = pins(lock)
        for r in reqs:
            name = canonicalize_name(r.name)
            assert name in locked, f"{r.name} is in pyproject.toml but not in requirements/{lock}: regenerate it"
            assert r.specifier.contains(locked[name], prereleases=True), (
                f"requirements/{lock} pins {r.name}=={locked[name]}, outside {r.specifier}: regenerate it"
            )


def test_the_locks_agree():
    runtime, test, build = pins("runtime.txt"), pins("test.txt"), pins("build.txt")
    assert {n: v for n, v in test.items() if n in runtime} == runtime
    assert test["setuptools"] == build["setuptools"]


def test_ruff_is_pinned_exactly():
    (ruff,) = [r for r in requirements("test") if r.name == "ruff"]
    assert str(ruff.specifier).startswith("=="), "ruff format's verdict must not change when ruff releases"


def test_the_code_imports_only_declared_packages():
    """Every third-party module collector/ imports belongs to a declared runtime dependency."""
    declared = {canonicalize_name(r.name) for r in requirements()}
    dists = importlib.metadata.packages_distributions()
    undeclared: dict[str, str] = {}
    for path in (REPO / "collector").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module]
            else:
                continue
            for mod in mods:
                top = mod.split(".")[0]
                if top == "collector" or top in sys.stdlib_module_names:
                    continue
                owners = {canonicalize_name(d) for d in dists.get(top, [top])}
                if not owners & declared:
                    undeclared[top] = str(path.relative_to(REPO))
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"


def test_every_runtime_dependency_is_imported():
    """Nothing declared that nothing uses (test tools are declared under the test extra)."""
    used: set[str] = set()
    dists = importlib.metadata.packages_distributions()
    for path in (REPO / "collector").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                used.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                used.add(node.module.split(".")[0])
    used_dists = {canonicalize_name(d) for m in used for d in dists.get(m, [])}
    unused = [r.name for r in requirements() if canonicalize_name(r.name) not in used_dists]
    assert not unused, f"declared in pyproject.toml but never imported by collector/: {unused}"
