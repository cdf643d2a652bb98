"""The shape of the engine, checked from its source: stages in data-flow order, no import cycles, no private names
across modules, no streamlit, imports at the top, environment variables read in one module, short files and
functions.

The checker parses every module under ``scoring/`` with ``ast`` (nothing is imported), so it sees exactly what a
reader sees. Each rule is also run on a small package written into a temporary folder with that one defect, so a
rule that stopped working would fail here too.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The stages in the order data flows; a module may import its own stage and the stages to its left.
# Rank 0 is the common base every stage stands on.
STAGES = {
    "scoring.errors": 0, "scoring.env": 0, "scoring.schema": 0, "scoring.store": 0, "scoring.ranks": 0,
    "scoring.ingest": 1, "scoring.models": 2, "scoring.passes": 3, "scoring.train": 4, "scoring.scores": 5,
    "scoring.selection": 6, "scoring.export": 7, "scoring.jobs": 8, "scoring.queries": 9, "scoring.api": 10,
    "scoring": 10, "scoring.cli": 11, "scoring.__main__": 12,
}  # fmt: skip

# Imports allowed inside a function body: heavy or optional dependencies that most commands never need
# (torch alone takes seconds to import), and the numba-compiled kernels (importing them loads numba).
LAZY_IMPORTS = {"torch", "transformers", "accelerate", "trl", "peft", "datasets", "umap", "pynndescent", "sklearn", "numba",
                "huggingface_hub", "scoring.passes.cpu_kernels"}  # fmt: skip
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 60


@dataclass
class Module:
    name: str
    path: Path
    tree: ast.Module
    imports: list[tuple[str, int, bool]] = field(default_factory=list)  # (target module, line, at module level)


def module_name(root: Path, path: Path, package: str) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([package, *parts])


def load_package(root: Path, package: str = "scoring") -> dict[str, Module]:
    """Every module of the package at ``root`` (the package folder), parsed, with its imports of the package."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        name = module_name(root, path, package)
        modules[name] = Module(name, path, ast.parse(path.read_text(), str(path)))
    for module in modules.values():
        module.imports = list(_package_imports(module, modules, package))
    return modules


def _package_imports(module: Module, modules: dict[str, Module], package: str):
    top = {id(node) for node in module.tree.body}
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno, id(node) in top
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_from(module, node)
            for alias in node.names:
                target = f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                yield target, node.lineno, id(node) in top


def _resolve_from(module: Module, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    is_package = module.path.name == "__init__.py"
    parts = module.name.split(".")
    base = parts[: len(parts) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def stage_of(name: str) -> int | None:
    best = max((prefix for prefix in STAGES if name == prefix or name.startswith(prefix + ".")), key=len, default=None)
    return None if best is None else STAGES[best]


# ---------------------------------------------------------------- the rules


def cycles(modules: dict[str, Module]) -> list[list[str]]:
    """Import cycles among the package's modules (module-level imports and imports in functions alike)."""
    graph = {n: sorted({t for t, _, _ in m.imports if t in modules and t != n}) for n, m in modules.items()}
    found, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for name in graph:
        if name not in state:
            visit(name)
    return found


def against_the_flow(modules: dict[str, Module]) -> list[str]:
    """Imports of a stage to the right of the importing module's own stage."""
    out = []
    for module in modules.values():
        mine = stage_of(module.name)
        for target, line, _ in module.imports:
            theirs = stage_of(target) if target in modules or target.startswith("scoring") else None
            if mine is None or theirs is None:
                if target in modules and (mine is None or theirs is None):
                    out.append(f"{module.name}:{line} imports {target}: a module outside the stage map")
                continue
            if theirs > mine:
                out.append(f"{module.name}:{line} imports {target} (stage {theirs} > {mine})")
    return out


def private_names(modules: dict[str, Module], package: str = "scoring") -> list[str]:
    """``from scoring.x import _name`` and ``module._name`` where module is a package module bound by an import."""
    out = []
    for module in modules.values():
        bound = set()
        for node in ast.walk(module.tree):
            if isinstance(node, ast.ImportFrom) and _resolve_from(module, node).startswith(package):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        out.append(f"{module.name}:{node.lineno} imports private {alias.name}")
                    if f"{_resolve_from(module, node)}.{alias.name}" in modules:
                        bound.add(alias.asname or alias.name)
            elif isinstance(node, ast.Import):
                bound |= {a.asname or a.name.split(".")[0] for a in node.names if a.name.startswith(package)}
        for node in ast.walk(module.tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                out.append(f"{module.name}:{node.lineno} uses private {node.value.id}.{node.attr}")
    return out


def streamlit_imports(modules: dict[str, Module]) -> list[str]:
    return [f"{m.name}:{line}" for m in modules.values() for t, line, _ in m.imports
            if t == "streamlit" or t.startswith("streamlit.")]  # fmt: skip


def function_imports(modules: dict[str, Module]) -> list[str]:
    """Imports inside a function (or class) body that are not on the LAZY_IMPORTS allow-list."""
    out = []
    for module in modules.values():
        for target, line, top_level in module.imports:
            if top_level or _is_type_checking(module, line):
                continue
            if not any(target == lazy or target.startswith(lazy + ".") for lazy in LAZY_IMPORTS):
                out.append(f"{module.name}:{line} imports {target} inside a function")
    return out


def _is_type_checking(module: Module, line: int) -> bool:
    for node in module.tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            if node.lineno <= line <= node.end_lineno:
                return True
    return False


def environment_reads(modules: dict[str, Module]) -> list[str]:
    """``os.environ`` / ``os.getenv`` outside scoring.env, the one module that lists every variable read."""
    out = []
    for module in modules.values():
        if module.name.endswith(".env"):
            continue
        for node in ast.walk(module.tree):
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "putenv"):
                out.append(f"{module.name}:{node.lineno} reads os.{node.attr}")
    return out


def long_files(modules: dict[str, Module], limit: int = MAX_FILE_LINES) -> list[str]:
    return [f"{m.name}: {n} lines" for m in modules.values() if (n := len(m.path.read_text().splitlines())) > limit]


def long_functions(modules: dict[str, Module], limit: int = MAX_FUNCTION_LINES) -> list[str]:
    out = []
    for module in modules.values():
        for node in ast.walk(module.tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    out.append(f"{module.name}.{node.name}:{node.lineno}: {n} lines")
    return out


RULES = {
    "cycles": cycles, "against_the_flow": against_the_flow, "private_names": private_names,
    "streamlit": streamlit_imports, "function_imports": function_imports, "environment": environment_reads,
    "long_files": long_files,
    "long_functions": long_functions,
}  # fmt: skip


# ---------------------------------------------------------------- the engine as it is


@pytest.fixture(scope="module")
def engine() -> dict[str, Module]:
    return load_package(ROOT / "scoring")


@pytest.mark.parametrize("rule", sorted(RULES))
def test_engine_follows_the_rule(engine, rule):
    assert RULES[rule](engine) == []


def test_every_module_is_on_the_stage_map(engine):
    assert [name for name in engine if stage_of(name) is None] == []
    assert {"scoring.ingest.catalog", "scoring.passes.runner", "scoring.jobs.runner", "scoring.store.jobs"} <= set(engine)


# ---------------------------------------------------------------- each rule catches its defect


def _package(tmp_path: Path, files: dict[str, str]) -> dict[str, Module]:
    root = tmp_path / "scoring"
    for rel, text in {"__init__.py": "", **files}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return load_package(root)


def test_a_cycle_is_caught(tmp_path):
    pkg = _package(tmp_path, {"ingest/__init__.py": "", "ingest/a.py": "from scoring.ingest import b\n",
                              "ingest/b.py": "def f():\n    from scoring.ingest.a import x\n"})  # fmt: skip
    assert cycles(pkg) == [["scoring.ingest.a", "scoring.ingest.b", "scoring.ingest.a"]]


def test_an_import_against_the_flow_is_caught(tmp_path):
    pkg = _package(tmp_path, {"ingest/__init__.py": "", "ingest/a.py": "from scoring.jobs.runner import run\n",
                              "jobs/__init__.py": "", "jobs/runner.py": "from scoring.ingest.a import x\n"})  # fmt: skip
    assert against_the_flow(pkg) == ["scoring.ingest.a:1 imports scoring.jobs.runner (stage 8 > 1)"]


def test_private_names_are_caught(tmp_path):
    pkg = _package(tmp_path, {"store/__init__.py": "", "store/cache.py": "def _tmp(): ...\n",
                              "ingest/__init__.py": "",
                              "ingest/a.py": "from scoring.store.cache import _tmp\nfrom scoring.store import cache\n"
                                             "cache._tmp()\n"})  # fmt: skip
    assert private_names(pkg) == ["scoring.ingest.a:1 imports private _tmp", "scoring.ingest.a:3 uses private cache._tmp"]


def test_streamlit_is_caught(tmp_path):
    pkg = _package(tmp_path, {"queries/__init__.py": "", "queries/a.py": "import streamlit as st\n"})
    assert streamlit_imports(pkg) == ["scoring.queries.a:1"]


def test_an_import_in_a_function_is_caught_unless_allowed(tmp_path):
    pkg = _package(tmp_path, {"passes/__init__.py": "", "passes/a.py": (
        "def f():\n    import torch\n    from scoring.store.cache import Cache\n    import json\n")})
    assert function_imports(pkg) == ["scoring.passes.a:3 imports scoring.store.cache inside a function",
                                     "scoring.passes.a:4 imports json inside a function"]


def test_an_environment_read_outside_env_is_caught(tmp_path):
    pkg = _package(tmp_path, {"env.py": "import os\nX = os.environ.get('X')\n",
                              "jobs/__init__.py": "", "jobs/a.py": "import os\nY = os.environ['Y']\n"})
    assert environment_reads(pkg) == ["scoring.jobs.a:2 reads os.environ"]


def test_long_files_and_functions_are_caught(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    pkg = _package(tmp_path, {"export.py": f"def f():\n{body}\n" + "\n" * MAX_FILE_LINES})
    assert long_functions(pkg) == [f"scoring.export.f:1: {MAX_FUNCTION_LINES + 1} lines"]
    assert long_files(pkg) == [f"scoring.export: {MAX_FUNCTION_LINES + 1 + MAX_FILE_LINES} lines"]
