"""The import rules between crab-rt's wings, checked by walking the source with `ast`.

Wings (folder -> import name):
    crab_rt/              crab_rt.*           runtime
    data/                 crab_rt.data        corpora, synthetic data, test/demo fixtures
    train/                crab_rt.train       training, evaluation, reports
    export/               crab_rt.export      ONNX, parity, TensorRT, bundles
    cli/                  crab_rt.cli         the command line
    benchmarks/crab_bench crab_bench          latency benchmarks (not in the wheel)

Allowed: each wing imports itself and the wings listed in `ALLOWED`. Every import
counts, whether at module level or inside a function. Separately, the modules the
ONNX Runtime path imports at module level must not reach torch or transformers
(`module_level_closure`).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# folder (relative to the repository root) -> the package it installs as
FOLDERS: dict[str, str] = {
    "crab_rt": "crab_rt",
    "data": "crab_rt.data",
    "train": "crab_rt.train",
    "export": "crab_rt.export",
    "cli": "crab_rt.cli",
    "benchmarks/crab_bench": "crab_bench",
}

ALLOWED: dict[str, frozenset[str]] = {
    "runtime": frozenset(),
    "data": frozenset({"runtime"}),
    "train": frozenset({"runtime", "data"}),
    "export": frozenset({"runtime"}),
    "cli": frozenset({"runtime", "data", "train", "export"}),
    "bench": frozenset({"runtime", "data", "train", "export", "cli"}),
}

HEAVY = ("torch", "transformers", "matplotlib")


def wing_of(module: str) -> str | None:
    """The wing a module belongs to, or None for a third-party or stdlib module."""
    if module == "crab_bench" or module.startswith("crab_bench."):
        return "bench"
    for wing in ("data", "train", "export", "cli"):
        name = f"crab_rt.{wing}"
        if module == name or module.startswith(name + "."):
            return wing
    if module == "crab_rt" or module.startswith("crab_rt."):
        return "runtime"
    return None


@dataclass(frozen=True)
class Import:
    """One imported module name, where it appears, and whether it runs at import time."""

    target: str
    line: int
    module_level: bool


@dataclass(frozen=True)
class SourceModule:
    name: str
    path: str
    source: str
    is_package: bool = False


def source_modules(root: Path = ROOT) -> list[SourceModule]:
    """Every Python module of the tree, with its import name."""
    out = []
    for folder, package in FOLDERS.items():
        for path in sorted((root / folder).rglob("*.py")):
            rel = path.relative_to(root / folder).with_suffix("")
            parts = list(rel.parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            name = ".".join([package, *parts])
            out.append(SourceModule(name, str(path.relative_to(root)), path.read_text(encoding="utf-8"), is_package))
    return out


def _resolve(module: SourceModule, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.name.split(".")
    if not module.is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: SourceModule) -> Iterator[Import]:
    """Imported module names; `from a import b` yields `a.b` too (b may be a submodule)."""
    tree = ast.parse(module.source, filename=module.path)
    function_nodes: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            function_nodes.update(id(n) for n in ast.walk(node) if n is not node)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            function_nodes.update(id(n) for n in ast.walk(node) if n is not node)  # never runs
    for node in ast.walk(tree):
        top = id(node) not in function_nodes
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(alias.name, node.lineno, top)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node)
            yield Import(target, node.lineno, top)
            for alias in node.names:
                yield Import(f"{target}.{alias.name}", node.lineno, top)


def wing_violations(modules: Iterable[SourceModule]) -> list[str]:
    """`path:line: <wing> imports <module> (<wing>)` for every import the rules forbid."""
    problems = []
    for module in modules:
        wing = wing_of(module.name)
        seen = set()
        for imp in imports_of(module):
            target_wing = wing_of(imp.target)
            if target_wing is None or target_wing == wing or target_wing in ALLOWED[wing]:
                continue
            key = (imp.line, target_wing)
            if key not in seen:
                seen.add(key)
                problems.append(f"{module.path}:{imp.line}: {wing} imports {imp.target} ({target_wing})")
    return problems


def module_level_closure(modules: Iterable[SourceModule], start: Iterable[str]) -> dict[str, list[str]]:
    """Every module imported at import time from `start`, transitively, with one import chain each.

    Third-party modules are leaves: their top-level names (e.g. "torch") appear
    with the chain that reached them.
    """
    by_name = {m.name: m for m in modules}
    chains: dict[str, list[str]] = {}
    todo = [(name, [name]) for name in start]
    while todo:
        name, chain = todo.pop()
        if name in chains:
            continue
        chains[name] = chain
        module = by_name.get(name)
        if module is None:
            continue
        # importing a.b.c runs a/__init__ and a/b/__init__ first
        parents = [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)]
        targets = [p for p in parents if p in by_name]
        for imp in imports_of(module):
            if not imp.module_level:
                continue
            if imp.target in by_name:
                targets.append(imp.target)
            elif wing_of(imp.target) is None:
                targets.append(imp.target.split(".")[0])
        for t in targets:
            if t not in chains:
                todo.append((t, [*chain, t]))
    return chains
