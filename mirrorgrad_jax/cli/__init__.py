"""The ``mirrorgrad`` command line (also ``python -m mirrorgrad_jax``).

One module per command (``train``, ``evaluate``, ``prepare``, ``datasets``, ``models``,
``demo``, ``robustness``/``flatness``), each a thin shell: it parses its flags, calls one
library function and prints. Library modules never import this package.

Expected user mistakes (an unknown model or dataset, a bad config value, an unusable
checkpoint or dataset file: every :class:`~mirrorgrad_jax.errors.UserInputError`) are
printed as ONE line on stderr and :func:`main` returns 2; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

from mirrorgrad_jax.cli.flags import OneLineParser
from mirrorgrad_jax.errors import UserInputError

__all__ = ["COMMAND_MODULES", "build_parser", "main"]

#: The command modules, in the order ``mirrorgrad --help`` lists them.
COMMAND_MODULES = ("train", "evaluate", "prepare", "datasets", "models", "demo", "robustness")

_DESCRIPTION = """\
Mirror Gradient (WWW 2024) for multimodal recommenders, in JAX.

  mirrorgrad train --model vbpr --dataset synthetic          train with MG (default) or --no-mg
  mirrorgrad evaluate runs/combo0-seed999/best.ckpt          rank with a trained checkpoint
  mirrorgrad prepare amazon --ratings R.csv ... --out DIR    build a dataset from raw files
  mirrorgrad robustness | flatness --model vbpr              does MG make the model flatter / sturdier?
"""


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="mirrorgrad", description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command; returns its exit status (2 for a user mistake, printed as one line)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserInputError as err:
        message = " ".join(str(err).split())  # one line, whatever the message's layout
        print(f"mirrorgrad {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mirrorgrad {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of the output went away (`mirrorgrad models | head`): stop quietly, as
        # Unix tools do, and keep the interpreter's final flush from raising again.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):  # a stdout without a file descriptor
            pass
        return 141
