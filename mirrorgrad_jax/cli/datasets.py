"""``mirrorgrad datasets [NAME]``: list the dataset names, or describe one dataset."""

from __future__ import annotations

import argparse

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    d = subparsers.add_parser("datasets", help="list datasets, or describe one", description=__doc__)
    d.add_argument("name", nargs="?", help="a dataset name or MMRec folder to describe")
    d.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mirrorgrad_jax.data import DATASETS, describe_dataset

    if args.name:
        print(describe_dataset(args.name))
        return 0
    for name, description in DATASETS.items():
        print(f"{name:16s} {description}")
    return 0
