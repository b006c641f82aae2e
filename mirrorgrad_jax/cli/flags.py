"""Helpers shared by the command modules: values as people write them, ``KEY=VALUE`` options."""

from __future__ import annotations

import argparse
import json
import math
import os
from typing import Any, Callable, Mapping, NoReturn, Sequence

from mirrorgrad_jax.config import parse_scalar
from mirrorgrad_jax.errors import ConfigError, UserInputError

__all__ = ["OneLineParser", "check_at_least_one", "check_folder_option", "csv_list", "grid_value", "key_values", "lead_with_flag", "report_json"]


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are ONE line, and which refuses empty values.

    argparse prints a command's whole usage (eighteen lines for ``train``) above a usage
    error; here the error is one line that names ``--help``, exit status 2, as every other
    user mistake of the command line. An option or argument given as an empty string
    (``--out ""``, ``--model ""``), or as a comma list with no item (``--metrics ""``), is a
    usage error too: several commands would otherwise read it as "not given" and fall back
    to a default (``prepare --out ""`` would build into the current folder). Subcommand
    parsers inherit the class.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None):  # type: ignore[override]
        parsed, extras = super().parse_known_args(args, namespace)
        for action in self._actions:
            if action.dest in (argparse.SUPPRESS, "help") or not hasattr(parsed, action.dest):
                continue
            value = getattr(parsed, action.dest)
            if value is action.default:
                continue
            values = value if isinstance(value, list) else [value]
            # Exactly empty: a value of spaces or a tab can be meant (prepare's --delimiter).
            if (isinstance(value, list) and not value) or any(isinstance(v, str) and not v for v in values):
                name = "/".join(action.option_strings) or action.metavar or action.dest
                self.error(f"argument {name}: expected a value, got an empty one")
        return parsed, extras


def lead_with_flag(err: UserInputError, flags: Mapping[str, str]) -> UserInputError:
    """``err`` led by the flag that set the field it is about: ``flags`` maps a config field
    as its messages name it (``"TrainConfig.learning_rate"``) to the flag (``"--lr"``), and
    ``"TrainConfig.learning_rate must be ..."`` becomes ``"--lr: TrainConfig.learning_rate must
    be ..."``. Only a field's own check is led so (a constraint between fields names them
    all); any other error comes back as it is."""
    message = str(err)
    for field, flag in flags.items():
        if message.startswith(f"{field} must "):
            return type(err)(f"{flag}: {message}")
    return err


def grid_value(text: str) -> Any:
    """``"1e-4"`` -> 1e-4; ``"0.1,0.2"`` -> [0.1, 0.2] (a grid).

    Raises:
      ConfigError: an empty item in a comma list (``"0.1,"``), which is a typo, not a value.
    """
    items = str(text).split(",")
    if len(items) > 1 and any(not item.strip() for item in items):
        raise ConfigError(f"{text!r}: an empty value in a comma-separated list")
    parts = [parse_scalar(item.strip()) for item in items]
    return parts if len(parts) > 1 else parts[0]


def key_values(items: Sequence[str] | None, flag: str = "--set") -> dict[str, Any]:
    """``["reg_weight=1e-4", "dropout=0.8,0.9"]`` -> ``{"reg_weight": 1e-4, "dropout": [0.8, 0.9]}``.

    Raises:
      ConfigError: an item without ``=`` or without a value.
    """
    out: dict[str, Any] = {}
    for item in items or []:
        key, _, value = item.partition("=")
        if not key or not value:
            raise ConfigError(f"{flag} expects key=value, got {item!r}")
        try:
            out[key.strip()] = grid_value(value)
        except ConfigError as err:
            raise ConfigError(f"{flag} {key.strip()}={err}") from None
    return out


def check_at_least_one(*flags: tuple[str, int]) -> None:
    """Refuses counts below 1: ``check_at_least_one(("--seeds", args.seeds), ("--epochs", args.epochs))``.

    Raises:
      ConfigError: the first flag whose value is below 1, in one line.
    """
    for flag, value in flags:
        if value < 1:
            raise ConfigError(f"{flag} must be at least 1, got {value}")


def check_folder_option(flag: str, path: str | None) -> None:
    """Refuses a folder option (``--checkpoint-dir``, ``--out-dir``) that names an existing non-folder.

    Raises:
      ConfigError: ``path`` exists and is not a folder, in one line.
    """
    if path and os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"{flag} {path}: not a folder")


def csv_list(cast: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    """An argparse ``type`` for comma-separated values (``1e-4`` reads as a number)."""

    def parse(text: str) -> list[Any]:
        values = []
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                values.append(cast(parse_scalar(part)) if cast is not str else part)
            except (TypeError, ValueError):
                raise argparse.ArgumentTypeError(f"expected a comma-separated list of {cast.__name__}, got {text!r}") from None
        return values

    return parse


def report_json(report: Any) -> str:
    """A command's JSON report as standard JSON: a number that is not finite (the score of
    runs that ended before a clean epoch) is written as ``null``. Python's own writer would
    write ``NaN``, which most JSON readers refuse; other values that JSON lacks are strings."""

    def plain(value: Any) -> Any:
        if isinstance(value, float):
            return value if math.isfinite(value) else None
        if isinstance(value, dict):
            return {key: plain(v) for key, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return json.dumps(plain(report), indent=1, default=str, allow_nan=False)
