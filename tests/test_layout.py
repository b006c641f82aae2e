"""Imports flow one way: library modules never import the command line, nor parse arguments."""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LIBRARY = sorted(
    p for p in list((ROOT / "mirrorgrad_jax").rglob("*.py")) + list((ROOT / "models").rglob("*.py"))
    if "cli" not in p.relative_to(ROOT).parts[:2] and p.name != "__main__.py"
)  # fmt: skip


def _imported_modules(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_the_library_is_found():
    assert len(LIBRARY) > 30 and any(p.name == "trainer.py" for p in LIBRARY)


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(ROOT)))
def test_library_module_does_not_import_the_cli_or_argparse(path):
    imported = _imported_modules(path)
    assert not any(name == "mirrorgrad_jax.cli" or name.startswith("mirrorgrad_jax.cli.") for name in imported), path
    assert "argparse" not in imported, f"{path.name} parses arguments: that belongs in mirrorgrad_jax/cli/"
