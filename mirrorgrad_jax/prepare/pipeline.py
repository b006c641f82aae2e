"""Raw files -> an MMRec dataset folder, step by step, resumable, written atomically.

:func:`prepare_amazon` rebuilds the reference's Amazon sets from the public files (the
ratings CSV, the gzipped metadata, the binary image features); :func:`prepare_folder`
turns a user's catalogue (an interaction table, an optional item-text table, an optional
folder of item images) into the same format. Both run the same steps:

1. ``interactions``: read, drop rows with a missing field and duplicates, iterative
   k-core, re-index by first appearance (:mod:`~mirrorgrad_jax.prepare.interactions`);
2. ``split``: the per-user split (default) or the temporal one
   (:mod:`~mirrorgrad_jax.prepare.splits`);
3. ``text``: one sentence per item, encoded with all-MiniLM-L6-v2
   (:mod:`~mirrorgrad_jax.prepare.text`, :mod:`~mirrorgrad_jax.prepare.minilm`);
4. ``image``: the Amazon feature file or a ResNet over image files
   (:mod:`~mirrorgrad_jax.prepare.images`);
5. ``write``: the DualGNN/DRAGON user graph (:func:`mirrorgrad_jax.graph.build_user_graph`),
   the dataset (:func:`mirrorgrad_jax.data.write_mmrec`), the id maps and a summary.

Each step stores its result in a work folder beside the output
(``.<out name>.prepare-work``) with a fingerprint of its inputs and options; a rerun
after an interruption reuses every step whose fingerprint still matches (text encoding
also keeps finished chunks). The dataset is written into the work folder and renamed
onto the output at the very end, so the output folder is either absent, untouched, or
complete. An output folder that already holds files is refused unless ``overwrite``.

Example::

    result = prepare_amazon(
        "ratings_Baby.csv", "data/baby",
        meta="meta_Baby.json.gz", image_features="image_features_Baby.b",
    )
    print(result.summary["num_users"])   # then: mirrorgrad train --dataset data/baby
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mirrorgrad_jax.data import DatasetError
from mirrorgrad_jax.prepare import images as image_lib
from mirrorgrad_jax.prepare import text as text_lib
from mirrorgrad_jax.prepare.interactions import (
    Interactions,
    clean_interactions,
    read_amazon_ratings,
    read_interaction_table,
)
from mirrorgrad_jax.prepare.options import PrepareOptions, PrepareResult, resolve_options
from mirrorgrad_jax.prepare.output import check_output, format_summary, write_dataset
from mirrorgrad_jax.prepare.splits import split_per_user, split_temporal
from mirrorgrad_jax.prepare.work import WorkFolder, atomic_write, guarded, input_identity

__all__ = ["PrepareOptions", "PrepareResult", "format_summary", "prepare_amazon", "prepare_folder"]

_TEXT_CHUNK = 2048


# ---------------------------------------------------------------------------------------
# Steps.
# ---------------------------------------------------------------------------------------


def _interactions_to_arrays(
    inter: Interactions, raw_item_ids: Sequence[str]
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    arrays = {
        "users": inter.users,
        "items": inter.items,
        "user_ids": np.asarray(inter.user_ids, str),
        "item_ids": np.asarray(inter.item_ids, str),
        "raw_item_ids": np.asarray(raw_item_ids, str),
    }
    if inter.ratings is not None:
        arrays["ratings"] = inter.ratings
    if inter.timestamps is not None:
        arrays["timestamps"] = inter.timestamps
    return arrays, dict(inter.stats)


def _split(
    work: WorkFolder, inter_fp: str, arrays: dict[str, np.ndarray], options: PrepareOptions, source: str
) -> tuple[str, dict[str, np.ndarray]]:
    if options.split == "temporal":
        if "timestamps" not in arrays:
            raise DatasetError(f"{source} has no timestamp column; the temporal split needs one")
        params: Any = list(options.temporal_ratios)
    else:
        params = [options.seed, options.odd_row_to]
    fingerprint = work.fingerprint("split", inter_fp, options.split, params)

    def compute() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        if options.split == "temporal":
            order, labels = split_temporal(arrays["timestamps"], options.temporal_ratios)
        else:
            try:
                order, labels = split_per_user(arrays["users"], options.seed, odd_row_to=options.odd_row_to)
            except DatasetError as err:
                if options.repeated_pairs != "count":
                    raise
                # The k-core counted each user's repeated ratings; merging them can leave a user
                # with fewer distinct items than the split needs, whatever the threshold.
                raise DatasetError(
                    f"{err}. With --repeated-pairs count (the default) a user's repeated ratings count toward the "
                    "k-core but become one row each afterwards; --repeated-pairs drop counts each pair once"
                ) from None
        return {"order": order, "labels": labels}, {}

    result, _ = work.step("split", fingerprint, compute)
    return fingerprint, result


def _encode_in_chunks(work: WorkFolder, fingerprint: str, sentences: list[str], options: PrepareOptions) -> np.ndarray:
    """Encodes sentences chunk by chunk, keeping finished chunks for a resumed run."""
    from mirrorgrad_jax.prepare.minilm import shared_encoder

    folder = work.root / f"text-chunks-{fingerprint[:16]}-{_TEXT_CHUNK}"
    folder.mkdir(parents=True, exist_ok=True)
    encoder = None
    parts = []
    n_chunks = (len(sentences) + _TEXT_CHUNK - 1) // _TEXT_CHUNK
    for chunk in range(n_chunks):
        path = folder / f"{chunk:05d}.npy"
        if not path.is_file():
            if encoder is None:
                encoder = shared_encoder(options.text_model, batch_size=options.text_batch_size)
            block = sentences[chunk * _TEXT_CHUNK : (chunk + 1) * _TEXT_CHUNK]
            vectors = encoder.encode(block, progress=options.progress, desc=f"text {chunk + 1}/{n_chunks}")
            atomic_write(path, lambda handle, v=vectors: np.save(handle, v, allow_pickle=False))
        parts.append(np.load(path, allow_pickle=False))
    return np.concatenate(parts) if parts else np.zeros((0, 384), np.float32)


def _text_model_identity(options: PrepareOptions) -> Any:
    """Finds the text model before any work starts (or says how to install it)."""
    from mirrorgrad_jax.prepare.minilm import check_text_extra, find_minilm_model

    check_text_extra()
    folder = find_minilm_model(options.text_model)
    return [input_identity(folder / "model.safetensors"), input_identity(folder / "tokenizer.json")]


def _check_image_extra() -> None:
    import importlib.util

    if importlib.util.find_spec("PIL") is None:
        raise ImportError("image folders need Pillow: pip install 'mirrorgrad-jax[images]'")


#: The inputs that are folders; every other input is a file.
_FOLDER_INPUTS = ("images",)


def _require_inputs(**paths: str | os.PathLike | None) -> None:
    """Refuses a missing input, a folder given for a file (or a file for a folder), and an empty file,
    before any step runs (so a mistaken input leaves no work folder behind)."""
    for what, path in paths.items():
        if path is None:
            continue
        given, path = f"given as --{what.replace('_', '-')}", Path(path)
        if not path.exists():
            raise DatasetError(f"{path} does not exist ({given})")
        if what in _FOLDER_INPUTS:
            if not path.is_dir():
                raise DatasetError(f"{path} is not a folder ({given})")
        elif not path.is_file():
            raise DatasetError(f"{path} is not a file ({given})")
        elif path.stat().st_size == 0:
            raise DatasetError(f"{path} is empty ({given})")


def _text_step(
    work: WorkFolder,
    inter_fp: str,
    source_identity: Any,
    model_identity: Any,
    read_sentences: Callable[[], tuple[list[str | None], dict[str, Any]]],
    options: PrepareOptions,
) -> dict[str, np.ndarray]:
    fingerprint = work.fingerprint("text", inter_fp, source_identity, model_identity, options.missing_text)

    def compute() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        sentences, info = read_sentences()
        has_text = np.array([s is not None for s in sentences], bool)
        if not has_text.any():
            raise DatasetError("no item has a text; leave the text input out instead")
        present = [s for s in sentences if s is not None]
        vectors = _encode_in_chunks(work, fingerprint, present, options)
        features = image_lib.mean_filled(_scatter(vectors, has_text), has_text, "item texts")
        return {"features": features, "found": has_text}, info

    arrays, _ = work.step("text", fingerprint, compute)
    return arrays


def _scatter(vectors: np.ndarray, found: np.ndarray) -> np.ndarray:
    full = np.zeros((len(found), vectors.shape[1]), np.float32)
    full[found] = vectors
    return full


def _progress_wrapper(options: PrepareOptions, desc: str, unit: str) -> Callable[[Iterator[Any]], Iterator[Any]] | None:
    if not options.progress:
        return None
    from tqdm.auto import tqdm

    return lambda stream: tqdm(stream, desc=desc, unit=unit)


# ---------------------------------------------------------------------------------------
# The two entry points.
# ---------------------------------------------------------------------------------------


def prepare_amazon(
    ratings: str | os.PathLike,
    out: str | os.PathLike,
    *,
    meta: str | os.PathLike | None = None,
    image_features: str | os.PathLike | None = None,
    options: PrepareOptions | None = None,
    **overrides: Any,
) -> PrepareResult:
    """Builds an MMRec dataset from the public Amazon review files, as the reference did.

    Args:
        ratings: ``ratings_<Category>.csv`` (user,item,rating,timestamp; no header).
        out: The dataset folder to create.
        meta: ``meta_<Category>.json.gz``: item texts, encoded with all-MiniLM-L6-v2
            into ``text_feat.npy`` (needs the ``text`` extra).
        image_features: ``image_features_<Category>.b``: ``image_feat.npy``.
        options: :class:`PrepareOptions`; keyword ``overrides`` replace its fields
            (``k_core=10``, ``split="temporal"``, ``overwrite=True``...).

    Returns:
        :class:`PrepareResult`.

    Raises:
        DatasetError: bad input (the message names the file and line), an empty set
            after the k-core, an item without a metadata record, or an output folder
            that holds files without ``overwrite``.
    """
    options = resolve_options(options, overrides, missing_text="error")
    out = Path(out).resolve()
    _require_inputs(ratings=ratings, meta=meta, image_features=image_features)
    check_output(out, options.overwrite, [ratings, meta, image_features])
    text_model = _text_model_identity(options) if meta is not None else None
    name = options.name or out.resolve().name
    work = WorkFolder(out, options.verbose)

    def body() -> PrepareResult:
        user_core, item_core = options.cores
        inter_fp = work.fingerprint("amazon-interactions", input_identity(ratings), user_core, item_core, options.repeated_pairs)

        def interactions() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
            raw = read_amazon_ratings(ratings)
            cleaned = clean_interactions(raw, user_core=user_core, item_core=item_core, repeated_pairs=options.repeated_pairs)
            return _interactions_to_arrays(cleaned, ())

        inter, inter_info = work.step("interactions", inter_fp, interactions)
        _, split = _split(work, inter_fp, inter, options, str(ratings))
        features: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        asins = inter["item_ids"].tolist()

        if meta is not None:

            def sentences() -> tuple[list[str | None], dict[str, Any]]:
                progress = _progress_wrapper(options, "metadata", "line")
                records, _ = text_lib.read_amazon_metadata(meta, asins, progress=progress)
                missing = [asin for asin in asins if asin not in records]
                if missing and options.missing_text == "error":
                    raise DatasetError(
                        f"{meta}: no record for {len(missing)} of the {len(asins)} items "
                        f"(e.g. ASIN {', '.join(missing[:3])}); these ASINs from {ratings} are unknown "
                        "to the metadata file (is it the same category?)"
                    )
                return [text_lib.amazon_sentence(records[a]) if a in records else None for a in asins], {}

            text = _text_step(work, inter_fp, input_identity(meta), text_model, sentences, options)
            features["text"] = (text["features"], text["found"])

        if image_features is not None:
            image_fp = work.fingerprint("amazon-image", inter_fp, input_identity(image_features))

            def image() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
                result = image_lib.read_image_features(image_features, asins, progress=options.progress)
                info = {"records": result.records, "duplicate_records": result.duplicates}
                return {"features": result.features, "found": result.found}, info

            arrays, _ = work.step("image", image_fp, image)
            work.say(
                f"image: {int(arrays['found'].sum())} of {len(asins)} items have a feature record; "
                f"{int((~arrays['found']).sum())} get the mean vector"
            )
            features["image"] = (arrays["features"], arrays["found"])

        inputs = {
            "ratings": str(ratings),
            "meta": meta and str(meta),
            "image_features": image_features and str(image_features),
        }
        return write_dataset(
            work, out, name, inter, inter_info, split, features,
            (("user_id", "userID"), ("asin", "itemID")), options, inputs,
        )  # fmt: skip

    return guarded(work, body)


def prepare_folder(
    out: str | os.PathLike,
    *,
    interactions: str | os.PathLike,
    items: str | os.PathLike | None = None,
    images: str | os.PathLike | None = None,
    image_weights: str | os.PathLike | None = None,
    user_column: str | None = None,
    item_column: str | None = None,
    rating_column: str | None = None,
    timestamp_column: str | None = None,
    delimiter: str | None = None,
    options: PrepareOptions | None = None,
    **overrides: Any,
) -> PrepareResult:
    """Builds an MMRec dataset from a user's own catalogue.

    Args:
        out: The dataset folder to create.
        interactions: CSV/TSV with a header: a user and an item column, optionally a
            rating and a timestamp (see :func:`~mirrorgrad_jax.prepare.read_interaction_table`).
        items: Optional CSV/TSV of item texts: an item column and a ``text`` column, or
            some of ``title, brand, categories, description``
            (see :func:`~mirrorgrad_jax.prepare.read_item_table`); encoded with
            all-MiniLM-L6-v2. Items without a row get the mean text vector.
        images: Optional folder of ``<item id>.<jpg|png|...>`` files, encoded with the
            ResNet in ``image_weights``. Items without an image get the mean vector.
        image_weights: torchvision-named ResNet weights (``.safetensors`` / ``.npz``).
        user_column: Name of the user column (default: found by name).
        item_column: Name of the item column, in both tables.
        rating_column: Name of the rating column.
        timestamp_column: Name of the timestamp column.
        delimiter: Field separator of both tables (default: from the extension).
        options: :class:`PrepareOptions`; keyword ``overrides`` replace its fields.

    Returns:
        :class:`PrepareResult`.

    Raises:
        DatasetError: bad input (file and line named), an item text or image for an
            item id that is not in the interactions, ``images`` without
            ``image_weights``, an empty set after the k-core, or an output folder that
            holds files without ``overwrite``.
    """
    options = resolve_options(options, overrides, missing_text="mean")
    out = Path(out).resolve()
    if images is not None and image_weights is None:
        raise DatasetError(
            f"{images}: encoding images needs the weights of a pretrained ResNet (image_weights / --image-weights)"
        )
    _require_inputs(interactions=interactions, items=items, images=images, image_weights=image_weights)
    check_output(out, options.overwrite, [interactions, items, images, image_weights])
    text_model = _text_model_identity(options) if items is not None else None
    if images is not None:
        _check_image_extra()
        image_lib.check_resnet_weights(image_weights)  # from the file's metadata, before any step
    name = options.name or out.resolve().name
    work = WorkFolder(out, options.verbose)
    columns = {"user_column": user_column, "item_column": item_column, "rating_column": rating_column,
               "timestamp_column": timestamp_column, "delimiter": delimiter}  # fmt: skip

    def body() -> PrepareResult:
        user_core, item_core = options.cores
        inter_fp = work.fingerprint("table-interactions", input_identity(interactions), columns, user_core, item_core, options.repeated_pairs)

        def read() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
            raw = read_interaction_table(interactions, **columns)
            cleaned = clean_interactions(raw, user_core=user_core, item_core=item_core, repeated_pairs=options.repeated_pairs)
            return _interactions_to_arrays(cleaned, raw.item_ids)

        inter, inter_info = work.step("interactions", inter_fp, read)
        _, split = _split(work, inter_fp, inter, options, str(interactions))
        item_ids = inter["item_ids"].tolist()
        known = set(inter["raw_item_ids"].tolist())
        features: dict[str, tuple[np.ndarray, np.ndarray]] = {}

        if items is not None:

            def sentences() -> tuple[list[str | None], dict[str, Any]]:
                table, lines = text_lib.read_item_table(items, item_column=item_column, delimiter=delimiter)
                unknown = [item for item in table if item not in known]
                if unknown:
                    raise DatasetError(
                        f"{items}:{lines[unknown[0]]}: item {unknown[0]!r} does not occur in {interactions} "
                        f"({len(unknown)} unknown item ids in all)"
                    )
                missing = [item for item in item_ids if item not in table]
                if missing and options.missing_text == "error":
                    raise DatasetError(
                        f"{items}: no text for {len(missing)} of the {len(item_ids)} items (e.g. {missing[0]!r})"
                    )
                return [table.get(item) for item in item_ids], {}

            text = _text_step(work, inter_fp, input_identity(items), text_model, sentences, options)
            features["text"] = (text["features"], text["found"])

        if images is not None:
            image_fp = work.fingerprint(
                "folder-image", inter_fp, input_identity(images), input_identity(image_weights),
                options.image_resize, options.image_crop,
            )  # fmt: skip

            def encode() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
                files = image_lib.find_item_images(images)
                unknown = [stem for stem in files if stem not in known]
                if unknown:
                    raise DatasetError(
                        f"{files[unknown[0]]}: item {unknown[0]!r} does not occur in {interactions} "
                        f"({len(unknown)} images of unknown items in all)"
                    )
                found = np.array([item in files for item in item_ids], bool)
                if not found.any():
                    raise DatasetError(f"{images}: none of the {len(item_ids)} items has an image")
                vectors = image_lib.encode_image_files(
                    [files[item] for item in item_ids if item in files], image_weights,
                    batch_size=options.image_batch_size, resize=options.image_resize,
                    crop=options.image_crop, progress=options.progress,
                )  # fmt: skip
                features = image_lib.mean_filled(_scatter(vectors, found), found, str(images))
                return {"features": features, "found": found}, {"files": len(files)}

            arrays, _ = work.step("image", image_fp, encode)
            features["image"] = (arrays["features"], arrays["found"])

        inputs = {"interactions": str(interactions), "items": items and str(items),
                  "images": images and str(images), "image_weights": image_weights and str(image_weights)}  # fmt: skip
        return write_dataset(
            work, out, name, inter, inter_info, split, features,
            (("user_id", "userID"), ("item_id", "itemID")), options, inputs,
        )  # fmt: skip

    return guarded(work, body)
