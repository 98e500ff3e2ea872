"""The package's shape: layers import downwards (no import cycles), modules stay small, and private Lightning names
appear only in ``lightning_fed/_compat``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_fed"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _runtime_imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """lightning_fed modules ``path`` imports when it runs (``if TYPE_CHECKING:`` blocks left out)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    type_checking: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_checking.update(id(n) for child in node.body for n in ast.walk(child))
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    for node in ast.walk(tree):
        if id(node) in type_checking:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name in modules and name != me:
                found.add(name)
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {name: _runtime_imports(path, modules) for name, path in modules.items()}
    # a package's __init__ importing its own submodules is how packages expose names, not a cycle between layers
    return {n: {m for m in deps if not (n == m.rpartition(".")[0] and modules[n].name == "__init__.py")}
            for n, deps in graph.items()}  # fmt: skip


def test_no_import_cycle_among_modules():
    cycle = _cycle({n: {m for m in deps if not m.startswith(n + ".")} for n, deps in _graph().items()})
    assert cycle is None, " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle():  # the oracle above can fail
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_over_450_lines(path):
    assert len(path.read_text().splitlines()) <= 450


def test_the_strategy_is_a_thin_shell():
    assert len((PACKAGE / "strategies" / "federated.py").read_text().splitlines()) <= 350


def _private_lightning_uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    uses = []
    for node in ast.walk(tree):
        module = node.module or "" if isinstance(node, ast.ImportFrom) else ""
        if isinstance(node, ast.ImportFrom) and module.split(".")[0] in ("lightning", "pytorch_lightning"):
            uses += [f"from {node.module} import {a.name}" for a in node.names if a.name.startswith("_")]
            if any(part.startswith("_") for part in (node.module or "").split(".")):
                uses.append(f"from {node.module}")
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            base = ast.unparse(node.value)
            if any(word in base for word in ("trainer", "fit_loop", "epoch_loop", "lightning_module", "callback")):
                uses.append(ast.unparse(node))
        elif isinstance(node, ast.Call) and ast.unparse(node.func) == "getattr" and len(node.args) >= 2:
            name = node.args[1]
            if isinstance(name, ast.Constant) and str(name.value) in ("_trainer", "_combined_loader"):
                uses.append(ast.unparse(node))
    return uses


def test_private_lightning_names_only_in_compat():
    offenders = {
        str(path.relative_to(PACKAGE)): uses
        for path in sorted(PACKAGE.rglob("*.py"))
        if "_compat" not in path.parts and (uses := _private_lightning_uses(path))
    }
    assert offenders == {}


def test_the_private_name_finder_finds_them(tmp_path):  # the oracle above can fail
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher\n"
        "x = trainer.fit_loop._combined_loader\n"
        "y = getattr(module, '_trainer', None)\n"
    )
    assert len(_private_lightning_uses(sample)) == 3
