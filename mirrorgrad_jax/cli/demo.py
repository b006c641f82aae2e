"""``mirrorgrad demo``: VBPR with and without MG on the synthetic default (what ``make demo`` runs)."""

from __future__ import annotations

import argparse

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    m = subparsers.add_parser("demo", help="VBPR with and without MG on the synthetic default (what `make demo` runs)", description=__doc__)
    m.add_argument("--seeds", type=int, default=3, help="seeds per arm (default 3)")
    m.add_argument("--epochs", type=int, default=80, help="epoch cap (default 80)")
    m.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mirrorgrad_jax.demo import run_demo
    from mirrorgrad_jax.errors import ConfigError

    if args.seeds < 1 or args.epochs < 1:
        raise ConfigError(f"--seeds and --epochs must be >= 1, got {args.seeds} and {args.epochs}")
    run_demo(seeds=args.seeds, epochs=args.epochs)
    return 0
