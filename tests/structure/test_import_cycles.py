"""No import cycle between the packages of ``hcs/`` (issue 24).

The graph is built from the source (AST of every module, imports inside functions and
``TYPE_CHECKING`` blocks included, relative imports resolved), one node per package or top-level
module under ``hcs/``: ``hcs.allocator``, ``hcs.webhook``, ``hcs.kube``... An edge A -> B means
some module of A imports something of B. The layering the architecture describes (webhook and
allocator side by side, sharing what both need through modules below them) holds only while this
graph has no cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

HCS = Path(__file__).resolve().parents[2] / "hcs"
#: generated gRPC stubs import only each other and grpc/protobuf
SKIP = ("api/gen",)


def _module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, root: Path) -> Iterator[tuple[str, int]]:
    """Absolute names of everything ``path`` imports (modules, or ``module.name`` for from-imports)."""
    module = _module_name(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            for alias in node.names:  # ``from hcs import node`` imports the package hcs.node
                yield f"{target}.{alias.name}", node.lineno


def _unit(name: str, root: Path) -> str | None:
    """The graph node of an imported name: ``hcs.<first part>`` (package or module), or None if not ours."""
    parts = name.split(".")
    if parts[0] != root.name:
        return None
    if len(parts) == 1:
        return root.name
    first = root / parts[1]
    if first.is_dir() or first.with_suffix(".py").is_file():
        return f"{root.name}.{parts[1]}"
    return root.name  # ``from hcs import __version__``: the package's own __init__


def package_graph(root: Path) -> dict[str, dict[str, list[str]]]:
    """unit -> imported unit -> where (``file:line``), for every module under ``root``."""
    graph: dict[str, dict[str, list[str]]] = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if any(rel.startswith(s) for s in SKIP):
            continue
        src = _unit(_module_name(path, root), root)
        assert src is not None
        graph.setdefault(src, {})
        for name, line in _imports(path, root):
            dst = _unit(name, root)
            if dst is not None and dst != src:
                graph[src].setdefault(dst, []).append(f"{rel}:{line}")
    return graph


def find_cycle(graph: dict[str, dict[str, list[str]]]) -> list[str]:
    """One cycle (``[a, b, ..., a]``) of the graph, or [] when it has none (iterative DFS)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path = [start]
        stack = [iter(sorted(graph.get(start, {})))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, {}))))
    return []


def describe(graph: dict[str, dict[str, list[str]]], cycle: list[str]) -> str:
    return "; ".join(f"{a} -> {b} ({', '.join(graph[a][b][:3])})" for a, b in zip(cycle, cycle[1:], strict=False))


def test_no_import_cycle_between_hcs_packages() -> None:
    graph = package_graph(HCS)
    assert {"hcs.allocator", "hcs.webhook", "hcs.node", "hcs.kube"} <= set(graph)  # the walk saw the code
    cycle = find_cycle(graph)
    assert not cycle, f"import cycle between hcs packages: {describe(graph, cycle)}"


def test_allocator_and_webhook_do_not_import_each_other() -> None:
    graph = package_graph(HCS)
    assert "hcs.webhook" not in graph["hcs.allocator"], graph["hcs.allocator"].get("hcs.webhook")
    assert "hcs.allocator" not in graph["hcs.webhook"], graph["hcs.webhook"].get("hcs.allocator")


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / "hcs" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root / "hcs"


@pytest.mark.parametrize("b_imports_a", [
    "from hcs.a.x import thing\n",                         # at module level
    "def f():\n    from hcs.a import x\n    return x\n",    # inside a function
    "def f():\n    import hcs.a.x\n",                     # plain import, inside a function
    "from ..a.x import thing\n",                          # relative
    "from hcs import a\n",                                # the package by name
    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from hcs.a.x import thing\n",
])
def test_checker_finds_a_synthetic_cycle(tmp_path: Path, b_imports_a: str) -> None:
    root = _write(tmp_path, {
        "__init__.py": "", "a/__init__.py": "", "b/__init__.py": "", "c.py": "",
        "a/x.py": "from hcs.b.y import other\nfrom hcs import c\n",
        "b/y.py": b_imports_a,
    })
    graph = package_graph(root)
    cycle = find_cycle(graph)
    assert cycle in (["hcs.a", "hcs.b", "hcs.a"], ["hcs.b", "hcs.a", "hcs.b"]), (graph, cycle)
    assert "b/y.py:" in describe(graph, cycle)


def test_checker_finds_a_longer_cycle_and_accepts_a_diamond(tmp_path: Path) -> None:
    root = _write(tmp_path, {
        "__init__.py": "", "low.py": "", "mid1.py": "import hcs.low\n", "mid2.py": "from hcs.low import z\n",
        "top/__init__.py": "from hcs import mid1, mid2\n",
    })
    assert find_cycle(package_graph(root)) == []  # a diamond is no cycle
    (root / "low.py").write_text("def f():\n    from hcs.top import thing\n")
    cycle = find_cycle(package_graph(root))
    assert cycle and cycle[0] == cycle[-1] and len(cycle) == 4 and "hcs.top" in cycle and "hcs.low" in cycle
