"""The house: library floors import only downward, and nothing in the library parses arguments.

Every library module belongs to one unit (a subpackage, or one of the ground modules); units
sit on floors, and a module may import its own unit and the units of LOWER floors only,
never a sibling on its own floor nor anything above. The command line is the top floor.
The check reads every import statement, those inside functions included.
"""

from __future__ import annotations

import ast
import os
import pathlib
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

#: From the ground up. A unit is a module or a package (with everything under it).
FLOORS: tuple[tuple[str, ...], ...] = (
    ("mirrorgrad_jax.errors", "mirrorgrad_jax._legacy"),
    ("mirrorgrad_jax.config",),
    ("mirrorgrad_jax.optim", "mirrorgrad_jax.devices", "mirrorgrad_jax.graph"),
    ("mirrorgrad_jax.data",),
    ("mirrorgrad_jax.prepare", "mirrorgrad_jax.models", "mirrorgrad_jax.evaluation"),
    ("mirrorgrad_jax.train",),
    ("mirrorgrad_jax.analysis",),
    ("mirrorgrad_jax.cli",),
    ("mirrorgrad_jax.__main__",),
)
#: The package's own ``__init__`` curates the public API from the MG transformation's floor.
ROOT_MAY_IMPORT = ("mirrorgrad_jax.errors", "mirrorgrad_jax._legacy", "mirrorgrad_jax.optim")


def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT)
    parts = list(rel.with_suffix("").parts)
    if parts[0] == "models":  # installed as mirrorgrad_jax.models
        parts = ["mirrorgrad_jax", *parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


LIBRARY = {
    _module_name(p): p
    for p in sorted([*(ROOT / "mirrorgrad_jax").rglob("*.py"), *(ROOT / "models").rglob("*.py")])
}


def _is_module(name: str) -> bool:
    return name in LIBRARY


def imports_of(path: pathlib.Path) -> set[str]:
    """The project modules a file imports (``from a import b`` counts ``a.b`` when that is a module)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                names.add(sub if _is_module(sub) else node.module)
    return {n for n in names if n == "mirrorgrad_jax" or n.startswith("mirrorgrad_jax.")}


def unit_of(module: str) -> tuple[int, str] | None:
    """``(floor, unit)`` of a library module; None for the package root itself."""
    for floor, units in enumerate(FLOORS):
        for unit in units:
            if module == unit or module.startswith(unit + "."):
                return floor, unit
    return None


def violations(import_map: dict[str, set[str]]) -> list[str]:
    """Every import that goes up a floor, sideways to a sibling unit, or to a unit no floor names."""
    found = []
    for module, imported in sorted(import_map.items()):
        here = unit_of(module)
        for target in sorted(imported):
            if module == "mirrorgrad_jax":
                if not any(target == t or target.startswith(t + ".") for t in ROOT_MAY_IMPORT):
                    found.append(f"the package root imports {target}: only {ROOT_MAY_IMPORT} belong in its API")
                continue
            if here is None:
                found.append(f"{module} is on no floor: add its unit to FLOORS")
                break
            if target == "mirrorgrad_jax":
                found.append(f"{module} imports the package root: import from the subpackage that holds the name")
                continue
            there = unit_of(target)
            if there is None:
                found.append(f"{module} imports {target}, which is on no floor")
            elif there[1] != here[1] and there[0] >= here[0]:
                way = "up" if there[0] > here[0] else "sideways"
                found.append(f"{module} (floor {here[0]}, {here[1]}) imports {target} (floor {there[0]}, {there[1]}): {way}")
    return found


IMPORTS = {module: imports_of(path) for module, path in LIBRARY.items()}


def test_the_library_is_found():
    assert {"mirrorgrad_jax.train.loop", "mirrorgrad_jax.optim.mirror", "mirrorgrad_jax.models.vbpr"} <= set(LIBRARY)


def test_every_library_module_is_on_a_floor():
    homeless = [m for m in LIBRARY if m != "mirrorgrad_jax" and unit_of(m) is None]
    assert not homeless, f"modules outside every floor of FLOORS: {homeless}"


def test_imports_only_go_down_the_floors():
    assert violations(IMPORTS) == []


@pytest.mark.parametrize(
    "module, planted",
    [
        ("mirrorgrad_jax.graph.knn", "mirrorgrad_jax.train.loop"),  # up
        ("mirrorgrad_jax.models.vbpr", "mirrorgrad_jax.evaluation"),  # sideways
        ("mirrorgrad_jax.data.movielens", "mirrorgrad_jax.prepare.minilm"),  # the old upward import
        ("mirrorgrad_jax.train.loop", "mirrorgrad_jax"),  # through the root
    ],
)
def test_a_planted_upward_or_sideways_import_is_caught(module, planted):
    planted_map = {**IMPORTS, module: IMPORTS[module] | {planted}}
    assert any(module in v and planted in v for v in violations(planted_map))


def test_nothing_in_the_library_parses_arguments_but_the_cli():
    for module, path in LIBRARY.items():
        if unit_of(module) is not None and unit_of(module)[1] in ("mirrorgrad_jax.cli", "mirrorgrad_jax.__main__"):
            continue
        tree = ast.parse(path.read_text())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert "argparse" not in imported, f"{module} parses arguments: that belongs in mirrorgrad_jax/cli/"


def test_every_package_is_installed():
    """A subpackage missing from pyproject's ``packages`` would be left out of a wheel."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {_module_name(p) for p in LIBRARY.values() if p.name == "__init__.py"}
    assert packages == listed


def test_the_docs_show_these_floors():
    """docs/layout.md's table of floors is FLOORS, row by row."""
    rows = [line.split("|")[1:3] for line in (ROOT / "docs" / "layout.md").read_text().splitlines() if line.startswith("| ") and line[2].isdigit()]
    shown = [(int(n), tuple(u.strip(" `") for u in units.split(","))) for n, units in rows]
    assert shown == list(enumerate(FLOORS))


def test_models_beside_or_inside_their_package_are_one_checkout_and_another_checkouts_are_named(tmp_path):
    from mirrorgrad_jax.models import _checkout_mismatch

    inside = tmp_path / "wheel" / "mirrorgrad_jax"
    (inside / "models").mkdir(parents=True)
    assert _checkout_mismatch(str(inside / "models"), str(inside)) is None  # an installed wheel
    checkout = tmp_path / "checkout"
    (checkout / "mirrorgrad_jax").mkdir(parents=True)
    (checkout / "models").mkdir()
    assert _checkout_mismatch(str(checkout / "models"), str(checkout / "mirrorgrad_jax")) is None  # a checkout
    (checkout / "mirrorgrad_jax" / "models").symlink_to("../models")  # the worktree recipe's link
    assert _checkout_mismatch(str(checkout / "mirrorgrad_jax" / "models"), str(checkout / "mirrorgrad_jax")) is None
    other = tmp_path / "other" / "mirrorgrad_jax"
    other.mkdir(parents=True)
    message = _checkout_mismatch(str(checkout / "models"), str(other))
    assert message is not None and "\n" not in message
    assert f"loaded from {checkout / 'models'} but mirrorgrad_jax from {other}: two copies" in message


def test_a_library_from_another_checkout_with_the_installed_models_warns_in_one_line(tmp_path):
    """PYTHONPATH=<a copy> with an editable install: the benchmark-worktree hazard, caught at import."""
    import shutil
    import subprocess
    import sys

    import mirrorgrad_jax.models

    if os.path.realpath(os.path.dirname(mirrorgrad_jax.models.__file__)) != os.path.realpath(ROOT / "models"):
        pytest.skip("needs the editable install, which maps mirrorgrad_jax.models to this checkout's models/")
    copy = tmp_path / "copy"
    # Without the worktree recipe's models link, which copytree would copy as a real folder.
    shutil.copytree(ROOT / "mirrorgrad_jax", copy / "mirrorgrad_jax", ignore=shutil.ignore_patterns("__pycache__", "models"))
    env = {**os.environ, "PYTHONPATH": str(copy)}
    done = subprocess.run([sys.executable, "-c", "import mirrorgrad_jax.models"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "RuntimeWarning: mirrorgrad_jax.models is loaded from" in done.stderr and "two copies of the project are mixed" in done.stderr
