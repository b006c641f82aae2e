"""The documentation site builds strictly, documents the public API, and its examples hold.

``mkdocs build --strict`` turns every warning into an error: a link to a missing page or
heading, a cross-reference to an API object that is not documented, a docstring section
griffe cannot parse (a parameter that is not in the signature, say). The site is built
once into a temporary folder, and once more from a copy with one planted broken link, to
show that the strict build does fail (the second build is of a copy without the API pages'
directives, so it takes seconds).

Beside the build: every name in the ``__all__`` of a documented unit has its entry on its
API page, every registered model has a row in the model table, every ``mirrorgrad ...``
line of a ``bash`` block parses, and every ``python`` block runs (``py`` blocks are
illustrations that need data, extras or a device, and are only shown).
"""

from __future__ import annotations

import importlib
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from mirrorgrad_jax.cli import build_parser
from mirrorgrad_jax.models import available_models
from helpers import mirrorgrad_commands

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))

#: API page (under api/) -> the modules it documents, each with its whole ``__all__``.
API_PAGES = {
    "root": ("mirrorgrad_jax",),
    "errors": ("mirrorgrad_jax.errors",),
    "config": ("mirrorgrad_jax.config",),
    "optim": ("mirrorgrad_jax.optim",),
    "devices": ("mirrorgrad_jax.devices",),
    "graph": ("mirrorgrad_jax.graph",),
    "data": ("mirrorgrad_jax.data",),
    "prepare": ("mirrorgrad_jax.prepare",),
    "models": ("mirrorgrad_jax.models",),
    "evaluation": ("mirrorgrad_jax.evaluation",),
    "train": ("mirrorgrad_jax.train",),
    "analysis": tuple(f"mirrorgrad_jax.analysis.{m}" for m in ("perturb", "flatness", "robustness", "comparison", "plots", "patience")),
    "cli": ("mirrorgrad_jax.cli",),
}


KEY_NAMES = {
    "optim": ("mirror_gradient", "is_mirror_batch", "plan_epoch", "make_nnx_train_step"),
    "train": ("TrainConfig", "MGConfig", "train"),
    "models": ("Recommender", "register", "VBPR"),
    "config": ("config_class", "Range", "Constraint"),
    "errors": ("ConfigError", "UserInputError"),
}


def _build(config_dir: pathlib.Path, site: pathlib.Path) -> tuple[int, str]:
    """``mkdocs build --strict`` of ``config_dir/mkdocs.yml`` into ``site``: (exit status, output)."""
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config_dir / "mkdocs.yml"), "--site-dir", str(site)]
    # Material's banner about MkDocs 2.0 is noise in a failure message.
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(command, cwd=config_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    return done.returncode, done.stdout


def test_the_site_builds_strictly_and_documents_the_public_api(tmp_path):
    returncode, output = _build(ROOT, tmp_path / "site")
    assert returncode == 0, f"mkdocs build --strict failed:\n{output[-6000:]}"
    api = tmp_path / "site" / "api"
    for page, names in KEY_NAMES.items():
        html = (api / f"{page}.html").read_text()
        for name in names:
            assert f'id="mirrorgrad_jax.{page}.{name}"' in html, f"api/{page} has no entry for {name}"
    missing = [
        f"api/{page}: {module}.{name}"
        for page, modules in API_PAGES.items()
        for module in modules
        for name in importlib.import_module(module).__all__
        if f'id="{module}.{name}"' not in (api / f"{page}.html").read_text()
    ]
    assert not missing, f"public names without an API entry: {missing}"


def test_a_broken_internal_link_fails_the_strict_build(tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(ROOT / "mkdocs.yml", copy / "mkdocs.yml")
    shutil.copytree(DOCS, copy / "docs")
    # The API pages' ``:::`` directives are most of the build's time (13 s of 15) and play no
    # part in link checking; the copy keeps the pages and the configuration, not the directives.
    for page in (copy / "docs" / "api").glob("*.md"):
        page.write_text("\n".join(line for line in page.read_text().splitlines() if not line.startswith(":::")) + "\n")
    index = copy / "docs" / "index.md"
    index.write_text(index.read_text() + "\nSee [a page that does not exist](no-such-page.md).\n")
    returncode, output = _build(copy, tmp_path / "site")
    assert returncode != 0, "a link to a missing page did not fail the strict build"
    assert "no-such-page.md" in output


def test_every_registered_model_has_a_row_in_the_model_table():
    text = (DOCS / "recommenders.md").read_text()
    table = text.split("\n## The models\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z0-9_]+)` \|", table, flags=re.M)
    assert sorted(rows) == available_models(), "one row per registered model, in the table of 'The models'"


def _blocks(language: str) -> list[tuple[str, str]]:
    return [
        (page.relative_to(DOCS).as_posix(), block)
        for page in PAGES
        for block in re.findall(rf"^```{language}\n(.*?)^```", page.read_text(), flags=re.S | re.M)
    ]


def _commands() -> list[str]:
    return [command for page in PAGES for command in mirrorgrad_commands(page.read_text())]


def test_the_docs_show_commands_and_code():
    assert len(_commands()) >= 15
    assert len(_blocks("python")) >= 5


@pytest.mark.parametrize("command", _commands())
def test_every_docs_command_parses(command):
    args = build_parser().parse_args(shlex.split(command)[1:])  # argparse exits on a mistyped flag
    assert callable(args.func)


PYTHON_BLOCKS = _blocks("python")


@pytest.mark.parametrize("page, block", PYTHON_BLOCKS, ids=[f"{page}-{i}" for i, (page, _) in enumerate(PYTHON_BLOCKS)])
def test_every_python_block_runs(page, block, capsys):
    exec(compile(block, f"docs/{page}", "exec", dont_inherit=True), {"__name__": "docs_example"})
