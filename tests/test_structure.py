"""The layout holds: layers import only the layers below them, shells live in cli/, modules stay small.

Read from the source with ``ast`` (nothing is imported): every import, at module level or inside a function, counts,
so a function-level import cannot hide a layering violation or a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "safetune"

# layer -> the safetune layers it may import (itself always allowed); "safetune" is the root package (CONF_DIR).
ALLOWED = {
    "core": {"core"},
    "data": {"core", "data"},
    "eval": {"core", "data", "eval"},  # eval may read reference sets through data's io and loaders
    "synth": {"core", "data", "eval", "synth"},
    "train": {"core", "data", "eval", "synth", "train"},
    "cli": {"core", "data", "eval", "synth", "train", "cli"},
}
# Module paths of earlier releases, kept as three-line forwarding shims to cli (tested in test_cli_aliases.py).
SHIMS = {"safetune/demo.py", "safetune/sweep.py", "safetune/eval/evaluate.py"}
MAX_LINES = 450


def modules() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)


def rel(p: Path) -> str:
    return str(p.relative_to(PKG.parent))


def layer_of(p: Path) -> str | None:
    parts = p.relative_to(PKG).parts
    return parts[0] if len(parts) > 1 else None


def is_shell(p: Path) -> bool:
    return layer_of(p) == "cli" or p.name == "__main__.py" or rel(p) in SHIMS


def safetune_imports(tree: ast.AST) -> list[tuple[int, str, bool]]:
    """(line, imported module, at function level) for every import of a safetune module."""
    out = []
    func_lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for sub in ast.walk(node):
                if isinstance(sub, (ast.Import, ast.ImportFrom)):
                    func_lines.add(sub.lineno)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("safetune"):
            names = [f"{node.module}.{a.name}" for a in node.names] if node.module == "safetune" else [node.module]
            out += [(node.lineno, n, node.lineno in func_lines) for n in names]
        elif isinstance(node, ast.Import):
            out += [
                (node.lineno, a.name, node.lineno in func_lines) for a in node.names if a.name.startswith("safetune")
            ]
    return out


def target_layer(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) < 2 or parts[1] in ("CONF_DIR", "__version__"):
        return None  # the root package's constants
    return parts[1]


def test_every_module_belongs_to_a_layer():
    stray = [rel(p) for p in modules() if layer_of(p) is None and p.name != "__init__.py" and rel(p) not in SHIMS]
    assert stray == [], f"modules outside core/data/eval/train/cli: {stray}"
    assert {layer_of(p) for p in modules()} - {None} <= set(ALLOWED)


@pytest.mark.parametrize("path", [p for p in modules() if not is_shell(p)], ids=rel)
def test_layers_import_only_layers_below(path):
    layer = layer_of(path)
    if layer is None:
        return
    bad = []
    for line, mod, _ in safetune_imports(ast.parse(path.read_text())):
        t = target_layer(mod)
        if t is not None and t not in ALLOWED[layer]:
            bad.append(f"{rel(path)}:{line} imports {mod} ({layer} may import {sorted(ALLOWED[layer])})")
    assert bad == []


def test_eval_uses_only_io_and_loaders_of_data():
    bad = []
    for path in (PKG / "eval").rglob("*.py"):
        for line, mod, _ in safetune_imports(ast.parse(path.read_text())):
            if mod.startswith("safetune.data") and not mod.startswith(("safetune.data.io", "safetune.data.sources")):
                bad.append(f"{rel(path)}:{line} imports {mod}")
    assert bad == []


def _defines_shell(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if name == "print":
                found.append(f"print() at line {node.lineno}")
            if name == "ArgumentParser":
                found.append(f"argparse parser at line {node.lineno}")
            if name == "Console":
                found.append(f"rich Console at line {node.lineno}")
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for d in node.decorator_list:
                target = d.func if isinstance(d, ast.Call) else d
                if isinstance(target, ast.Attribute) and target.attr == "main":
                    found.append(f"Hydra main {node.name} at line {node.lineno}")
    return found


@pytest.mark.parametrize("path", [p for p in modules() if not is_shell(p)], ids=rel)
def test_no_shell_outside_cli(path):
    assert _defines_shell(ast.parse(path.read_text())) == [], f"{rel(path)} prints, parses argv or is a Hydra main"


def test_cli_holds_the_shells():
    shells = {rel(p) for p in (PKG / "cli").glob("*.py") if _defines_shell(ast.parse(p.read_text()))}
    # the Hydra mains (one factory), the argparse CLI and the console all live in cli/
    assert {"safetune/cli/common.py", "safetune/cli/data.py", "safetune/cli/console.py"} <= shells


def test_no_import_cycles_between_modules():
    """The module import graph (every import, function-level included) has no cycle."""
    graph: dict[str, set[str]] = {}
    names = {}
    for p in modules():
        mod = ".".join(p.relative_to(PKG.parent).with_suffix("").parts).removesuffix(".__init__")
        names[mod] = p
    for mod, p in names.items():
        deps = set()
        for _, imp, _ in safetune_imports(ast.parse(p.read_text())):
            while imp and imp not in names:
                imp = imp.rpartition(".")[0]
            if imp and imp != mod and not mod.startswith(imp + "."):
                deps.add(imp)
        graph[mod] = deps
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for d in sorted(graph.get(n, ())):
            if state.get(d) == 1:
                return stack[stack.index(d) :] + [d]
            if d not in state and (cycle := visit(d)):
                return cycle
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (cycle := visit(n)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_function_level_safetune_imports_are_not_hiding_anything():
    """A function-level import of a safetune module is allowed only when it is of a layer the module may import
    at module level too (so moving it to the top would not create a violation); the cycle test covers the rest."""
    bad = []
    for p in modules():
        layer = layer_of(p)
        if layer is None or is_shell(p):
            continue
        for line, mod, in_func in safetune_imports(ast.parse(p.read_text())):
            t = target_layer(mod)
            if in_func and t is not None and t not in ALLOWED[layer]:
                bad.append(f"{rel(p)}:{line} {mod}")
    assert bad == []


@pytest.mark.parametrize("path", modules(), ids=rel)
def test_modules_stay_small(path):
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES, f"{rel(path)} has {n} lines (> {MAX_LINES}); split it by responsibility"
