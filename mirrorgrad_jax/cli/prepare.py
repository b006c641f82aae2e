"""``mirrorgrad prepare amazon|folder``: build an MMRec dataset folder from raw files.

A thin shell over :mod:`mirrorgrad_jax.prepare`: it parses the flags and calls
:func:`~mirrorgrad_jax.prepare.prepare_amazon` or
:func:`~mirrorgrad_jax.prepare.prepare_folder`. Bad input raises a
:class:`~mirrorgrad_jax.errors.UserInputError`, which :func:`mirrorgrad_jax.cli.main`
prints as one line with exit status 2 (nothing is written then); a missing optional
package is reported the same way.

Examples::

    mirrorgrad prepare amazon --ratings ratings_Baby.csv --meta meta_Baby.json.gz \\
        --image-features image_features_Baby.b --out data/baby
    mirrorgrad prepare folder my_shop --image-weights resnet50.safetensors --out data/my_shop
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mirrorgrad_jax.cli.flags import lead_with_flag
from mirrorgrad_jax.errors import UserInputError

__all__ = ["register", "run"]

_FOLDER_HELP = """\
SOURCE holds interactions.csv (or .tsv): a header naming a user and an item column,
optionally rating and timestamp; optionally items.csv (an item column and a text
column, or title/brand/categories/description) and images/ (<item id>.jpg|png|...).
Each can be given or overridden with --interactions, --items and --images.
"""


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="dataset folder to create (then: mirrorgrad train --dataset OUT)")
    parser.add_argument("--name", help="dataset name, the stem of NAME.inter (default: the folder's name)")
    parser.add_argument("--k-core", type=int, default=5, help="minimum interactions per user and per item (default 5)")
    parser.add_argument(
        "--repeated-pairs",
        choices=("count", "drop"),
        default="count",
        help="a (user, item) pair repeated at another time: count every repeat toward the k-core, as the "
        "reference (default), then keep its first row; or drop the repeats before the k-core",
    )
    parser.add_argument(
        "--split",
        choices=("per-user", "temporal"),
        default="per-user",
        help="per-user random split (the reference's, default) or global 70/10/20 by time",
    )
    parser.add_argument("--seed", type=int, help="seed of the per-user split (default 999)")
    parser.add_argument(
        "--odd-row-to",
        choices=("valid", "test"),
        help="per-user split: where an odd held-out row goes; valid as in the released "
        "Baby set (default), test as the reference notebook computes",
    )
    parser.add_argument("--text-model", help="all-MiniLM-L6-v2 folder (default: the installed package)")
    parser.add_argument("--batch-size", type=int, default=128, help="sentences per device batch (default 128)")
    parser.add_argument(
        "--no-user-graph", dest="user_graph", action="store_false", help="skip the DualGNN/DRAGON user-user graph"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an output folder that an earlier prepare wrote (other non-empty folders are refused)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or step messages")


#: How people write a tab on a command line, besides the character itself.
_TAB_SPELLINGS = ("\\t", "tab", "TAB")


def _delimiter(text: str | None) -> str | None:
    """``--delimiter`` as one character: a tab written as ``\\t`` or ``tab`` is a tab.

    Raises:
      UserInputError: anything longer than one character.
    """
    if text is None or len(text) == 1:
        return text
    if text in _TAB_SPELLINGS:
        return "\t"
    raise UserInputError(f"--delimiter must be one character (or \\t / tab for a tab), got {text!r}")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``prepare`` (with ``amazon`` and ``folder``) to the ``mirrorgrad`` parser."""
    prepare = subparsers.add_parser(
        "prepare",
        help="build a dataset folder from raw Amazon files or your own catalogue",
        description=__doc__.split("\n\n")[0],
    )
    kinds = prepare.add_subparsers(dest="source", required=True)

    amazon = kinds.add_parser(
        "amazon",
        help="rebuild an Amazon set (Baby, Sports, Clothing...) from the public review files",
        description="Rebuild an MMRec Amazon dataset from the public files of one category.",
    )
    amazon.add_argument(
        "--ratings", required=True, help="ratings_<Category>.csv (user,item,rating,timestamp; no header)"
    )
    amazon.add_argument("--meta", help="meta_<Category>.json.gz: item texts -> text_feat.npy (needs the text extra)")
    amazon.add_argument("--image-features", help="image_features_<Category>.b -> image_feat.npy")
    amazon.add_argument(
        "--allow-missing-meta",
        action="store_true",
        help="give items without a metadata record the mean text vector instead of failing",
    )
    _common(amazon)
    amazon.set_defaults(func=run)

    folder = kinds.add_parser(
        "folder",
        help="turn your own interactions, item texts and images into a dataset",
        description="Turn a folder of your own data into an MMRec dataset.\n\n" + _FOLDER_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    folder.add_argument("source", nargs="?", help="folder with interactions.csv, items.csv, images/")
    folder.add_argument("--interactions", help="interaction table (default SOURCE/interactions.csv or .tsv)")
    folder.add_argument("--items", help="item text table (default SOURCE/items.csv or .tsv, if present)")
    folder.add_argument("--images", help="folder of <item id>.<ext> images (default SOURCE/images, if present)")
    folder.add_argument("--image-weights", help="pretrained ResNet weights, torchvision names (.safetensors or .npz)")
    folder.add_argument("--user-column", help="name of the user column")
    folder.add_argument("--item-column", help="name of the item column (both tables)")
    folder.add_argument("--rating-column", help="name of the rating column")
    folder.add_argument("--timestamp-column", help="name of the timestamp column")
    folder.add_argument("--delimiter", help="field separator, one character (\\t or tab for a tab; default: from the extension)")
    folder.add_argument("--image-batch-size", type=int, default=32, help="images per device batch (default 32)")
    _common(folder)
    folder.set_defaults(func=run)


#: PrepareOptions field -> the flag that sets it.
_OPTION_FLAGS = {"name": "--name", "k_core": "--k-core", "seed": "--seed", "text_model": "--text-model", "text_batch_size": "--batch-size"}


def _check_option_pairs(args: argparse.Namespace, *, images: str | None, items: str | None) -> None:
    """Refuses an option that the rest of the command line makes meaningless (it would be
    ignored), then fills the per-user split's defaults.

    Raises:
      UserInputError: e.g. ``--odd-row-to`` with ``--split temporal``, ``--allow-missing-meta``
        without ``--meta``, ``--image-weights`` with no images, or one column named as both
        the user and the item column.
    """
    if args.split == "temporal":
        for flag, value in (("--seed", args.seed), ("--odd-row-to", args.odd_row_to)):
            if value is not None:
                raise UserInputError(f"{flag} sets the per-user split, and --split temporal splits by time")
    args.seed = 999 if args.seed is None else args.seed
    args.odd_row_to = args.odd_row_to or "valid"
    texts = ("--meta", args.meta) if args.source == "amazon" else ("an item table (--items, or SOURCE/items.csv)", items)
    if args.text_model is not None and texts[1] is None:
        raise UserInputError(f"--text-model encodes item texts, and there are none: give {texts[0]}")
    if args.source == "amazon":
        if args.allow_missing_meta and args.meta is None:
            raise UserInputError("--allow-missing-meta fills items the metadata leaves out, and there is no --meta")
        return
    if args.image_weights is not None and images is None:
        raise UserInputError("--image-weights encodes item images, and there are none: give --images, or SOURCE/images")
    if args.images is not None and not Path(args.images).is_dir():
        raise UserInputError(f"--images {args.images}: no such folder")
    if args.user_column is not None and args.user_column == args.item_column:
        raise UserInputError(f"--user-column and --item-column name the same column, {args.user_column!r}")


def _first_existing(source: Path | None, names: tuple[str, ...]) -> str | None:
    if source is None:
        return None
    for name in names:
        if (source / name).exists():
            return str(source / name)
    return None


def run(args: argparse.Namespace) -> int:
    """Runs ``mirrorgrad prepare``; returns 0 (bad input raises UserInputError)."""
    from mirrorgrad_jax import prepare

    try:
        source = interactions = items = images = delimiter = None
        if args.source == "amazon":
            _check_option_pairs(args, images=None, items=None)
        else:
            delimiter = _delimiter(args.delimiter)
            source = Path(args.source) if args.source else None
            if source is not None and not source.is_dir():
                raise UserInputError(f"{source} is not a folder")
            interactions = args.interactions or _first_existing(source, ("interactions.csv", "interactions.tsv"))
            if interactions is None:
                raise UserInputError("no interaction table: give SOURCE with interactions.csv, or --interactions")
            items = args.items or _first_existing(source, ("items.csv", "items.tsv"))
            images = args.images or _first_existing(source, ("images",))
            _check_option_pairs(args, images=images, items=items)
            if images is not None and args.images is None and args.image_weights is None:
                print(
                    f"mirrorgrad prepare: note: {images} is left out; pass --image-weights to encode it",
                    file=sys.stderr,
                )
                images = None
        try:
            options = prepare.PrepareOptions(
                name=args.name, k_core=args.k_core, repeated_pairs=args.repeated_pairs, split=args.split, seed=args.seed, odd_row_to=args.odd_row_to,
                text_model=args.text_model, text_batch_size=args.batch_size, user_graph=args.user_graph,
                overwrite=args.overwrite, progress=not args.quiet, verbose=not args.quiet,
            )  # fmt: skip
        except UserInputError as err:  # led by the flag that set the field (--batch-size, not text_batch_size)
            raise lead_with_flag(err, {f"PrepareOptions.{field}": flag for field, flag in _OPTION_FLAGS.items()}) from None
        if args.source == "amazon":
            result = prepare.prepare_amazon(
                args.ratings, args.out, meta=args.meta, image_features=args.image_features, options=options,
                missing_text="mean" if args.allow_missing_meta else "error",
            )  # fmt: skip
        else:
            result = prepare.prepare_folder(
                args.out,
                interactions=interactions,
                items=items,
                images=images,
                image_weights=args.image_weights,
                user_column=args.user_column, item_column=args.item_column,
                rating_column=args.rating_column, timestamp_column=args.timestamp_column,
                delimiter=delimiter, options=options, image_batch_size=args.image_batch_size,
            )  # fmt: skip
    except ImportError as err:  # a missing extra is the user's to install, not a bug
        raise UserInputError(str(err)) from None
    if args.quiet:
        print(f"wrote {result.path}")
        for note in result.notes:  # without --quiet the library printed them with its summary
            print(f"mirrorgrad prepare: {note}", file=sys.stderr)
    return 0
