"""Data flows one way: the pure metric layer (``evaluators/``) never imports the store
package, and never imports torch at module load."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EVALUATORS = sorted((ROOT / "evaluators").glob("*.py"))


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every module an ``import`` / ``from ... import`` names, anywhere in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module))
    return found


@pytest.mark.parametrize("path", EVALUATORS, ids=lambda p: p.name)
def test_evaluators_never_import_featcache(path: Path) -> None:
    bad = [
        f"{path.name}:{line} imports {mod}"
        for line, mod in _imported_modules(path)
        if mod == "featcache" or mod.startswith("featcache.") or mod == "cli"
    ]
    assert not bad, "; ".join(bad)


def test_the_layering_check_sees_a_violation(tmp_path: Path) -> None:
    """The AST check above would catch a function-level import too."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from featcache.store import Store\n    return Store\n")
    assert (2, "featcache.store") in _imported_modules(bad)


def test_importing_every_evaluator_loads_neither_featcache_nor_torch() -> None:
    names = [f"evaluators.{p.stem}" for p in EVALUATORS if p.stem != "__init__"]
    code = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('featcache', 'torch'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "", f"loaded at import: {out.stdout.strip()}"
