"""The README's code runs as written: the quickstart executes, every command line parses."""

from __future__ import annotations

import pathlib
import re
import shlex

import pytest

from helpers import mirrorgrad_commands

from mirrorgrad_jax.cli import build_parser

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
TEXT = README.read_text()


def test_quickstart_block_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", TEXT, flags=re.S)
    assert blocks, "README has no python block"
    namespace: dict = {}
    exec(compile(blocks[0], "README-quickstart", "exec"), namespace)
    params = namespace["params"]
    # The block fits w on 100 steps of a consistent least-squares problem; it must have moved.
    assert float(abs(params["w"]).sum()) > 0.1
    assert "implicit penalty" in capsys.readouterr().out


def _commands() -> list[str]:
    return mirrorgrad_commands(TEXT)


def test_the_readme_shows_commands():
    assert len(_commands()) >= 5


@pytest.mark.parametrize("command", _commands())
def test_every_readme_command_parses(command):
    args = build_parser().parse_args(shlex.split(command)[1:])  # argparse exits on a typo'd flag
    assert callable(args.func)
