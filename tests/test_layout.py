"""The house (issue 36): modules import each other in one direction only. The library (the loss
and its pretraining) never imports the CIFAR lab, no two modules import each other, directly or
through others (imports inside functions count: a lazy import is still a dependency), and no
source file grows past what one reader can hold."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_LINES = 600
# The command line sits above both layers: it registers every command, the lab's included.
TOP = {"edloss.cli", "edloss.__main__"}
# `edloss inspect --beside gce` draws lab losses beside EDL's shape: an optional feature of a
# library command, imported only when asked for (documented in inspect.reference_losses).
ALLOWED_UPWARD = {("edloss.inspect", "edloss.lab.grid"), ("edloss.inspect", "edloss.lab.losses")}


def _modules() -> dict[str, Path]:
    if not (SRC / "edloss").is_dir():
        pytest.skip("no source tree here (an installed wheel is being tested)")
    out = {}
    for path in (SRC / "edloss").rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The edloss modules ``name`` imports anywhere in its file (``from edloss.x import y`` counts
    as edloss.x.y when that is a module, else edloss.x)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {m for m in found if m in known and m != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def test_no_module_imports_itself_through_others() -> None:
    graph = _graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if nxt.startswith("edloss.lab") and node.startswith("edloss.lab") and nxt == "edloss.lab":
                continue  # a lab module importing its package's __init__ is not a dependency on a sibling
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_library_never_imports_the_lab() -> None:
    upward = sorted((a, b) for a, deps in _graph().items() for b in deps
                    if not a.startswith("edloss.lab") and a not in TOP and b.startswith("edloss.lab")
                    and (a, b) not in ALLOWED_UPWARD)
    assert not upward, f"library modules importing the lab: {upward}"


def test_no_source_file_is_too_long_to_read() -> None:
    long = {str(p.relative_to(SRC)): n for p in _modules().values() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"source files over {MAX_LINES} lines (split them by concept): {long}"
