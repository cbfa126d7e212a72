"""Bench scripts run as ``.venv/bin/python bench/<name>.py`` against the installed package (issue 24):
no script named like a stdlib module (bench/ is ``sys.path[0]`` when one runs, so it would shadow that
module for every import), and no ``sys.path`` edits."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _path_edits(source: str) -> list[int]:
    """Lines that touch ``sys.path`` (assign, insert, append, slice, ...)."""
    return [n.lineno for n in ast.walk(ast.parse(source))
            if isinstance(n, ast.Attribute) and n.attr == "path"
            and isinstance(n.value, ast.Name) and n.value.id == "sys"]


def test_no_bench_script_is_named_like_a_stdlib_module() -> None:
    scripts = sorted(BENCH.glob("*.py"))
    assert len(scripts) > 5
    shadowing = [p.name for p in scripts if p.stem in sys.stdlib_module_names]
    assert not shadowing, f"bench scripts shadowing the stdlib: {shadowing}"


def test_no_bench_script_edits_sys_path() -> None:
    edits = {p.name: lines for p in sorted(BENCH.glob("*.py")) if (lines := _path_edits(p.read_text()))}
    assert not edits, f"sys.path edits in bench scripts (file: lines): {edits}"


def test_the_checks_catch_what_they_look_for() -> None:
    assert "inspect" in sys.stdlib_module_names  # the name bench/inspect.py used to have
    assert _path_edits("import sys\nsys.path.insert(0, 'x')\n") == [2]
    assert _path_edits("import sys\nsys.path[:] = []\n") == [2]
    assert _path_edits("import os\nos.path.join('a')\n") == []
