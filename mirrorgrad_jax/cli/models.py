"""``mirrorgrad models``: the registered models, each with its defaults."""

from __future__ import annotations

import argparse
import dataclasses

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    ls = subparsers.add_parser("models", help="list the registered models and their default settings", description=__doc__)
    ls.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mirrorgrad_jax.models import available_models, get_model

    for name in available_models():
        cls = get_model(name)
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        note = "" if cls.trainable else "  [no training: one evaluation; MG does not apply]"
        defaults = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(cls.config_class))
        print(f"{name:13s} {doc}{note}")
        print(f"{'':13s} defaults: {defaults}")
    return 0
