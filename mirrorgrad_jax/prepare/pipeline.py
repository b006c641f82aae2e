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

import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mirrorgrad_jax.data.dataset import (
    SPLIT_LABELS,
    DatasetError,
    RecDataset,
    write_mmrec,
)
from mirrorgrad_jax.errors import ConfigError
from mirrorgrad_jax.prepare import images as image_lib
from mirrorgrad_jax.prepare import text as text_lib
from mirrorgrad_jax.prepare.interactions import (
    Interactions,
    clean_interactions,
    read_amazon_ratings,
    read_interaction_table,
)
from mirrorgrad_jax.prepare.splits import (
    TEMPORAL_RATIOS,
    split_per_user,
    split_temporal,
)

__all__ = ["PrepareOptions", "PrepareResult", "format_summary", "prepare_amazon", "prepare_folder"]

#: Bumped whenever a step's output changes meaning, so old work folders are not reused.
_FORMAT = 1
_TEXT_CHUNK = 2048
SUMMARY_FILE = "summary.json"


@dataclasses.dataclass(frozen=True)
class PrepareOptions:
    """Settings shared by :func:`prepare_amazon` and :func:`prepare_folder`.

    Attributes:
        name: Dataset name, the stem of ``<name>.inter``; default the output folder's name.
        k_core: Minimum interactions per user and per item (5 in the reference).
        user_core: Overrides ``k_core`` for users.
        item_core: Overrides ``k_core`` for items.
        split: ``"per-user"`` (the reference's) or ``"temporal"`` (global 70/10/20 by time).
        seed: Seed of the per-user shuffle.
        odd_row_to: Per-user split: where a user's odd held-out row goes, ``"valid"``
            (as in the released MMRec Baby set) or ``"test"`` (as the reference notebook
            computes); see :func:`~mirrorgrad_jax.prepare.split_per_user`.
        temporal_ratios: Train/valid/test shares of the temporal split.
        text_model: all-MiniLM-L6-v2 folder; default the installed package.
        text_batch_size: Sentences per device batch.
        image_batch_size: Images per device batch (image folders).
        image_resize: Shorter side after resizing (image folders).
        image_crop: Centre crop side (image folders).
        user_graph: Also write the DualGNN/DRAGON user-user graph.
        overwrite: Replace an output folder that already holds files.
        missing_text: What an item without text gets: ``"error"`` stops (the default of
            :func:`prepare_amazon`: every item needs a metadata record, as in the
            reference) or ``"mean"``, the mean text vector (the default of
            :func:`prepare_folder`).
        progress: Show progress bars.
        verbose: Print what each step did and the summary.
    """

    name: str | None = None
    k_core: int = 5
    user_core: int | None = None
    item_core: int | None = None
    split: str = "per-user"
    seed: int = 999
    odd_row_to: str = "valid"
    temporal_ratios: tuple[float, float, float] = TEMPORAL_RATIOS
    text_model: str | os.PathLike | None = None
    text_batch_size: int = 128
    image_batch_size: int = 32
    image_resize: int = 256
    image_crop: int = 224
    user_graph: bool = True
    overwrite: bool = False
    missing_text: str | None = None
    progress: bool = True
    verbose: bool = True

    def __post_init__(self) -> None:
        if self.split not in ("per-user", "temporal"):
            raise ConfigError(f"split must be 'per-user' or 'temporal', got {self.split!r}")
        if self.odd_row_to not in ("valid", "test"):
            raise ConfigError(f"odd_row_to must be 'valid' or 'test', got {self.odd_row_to!r}")
        if self.missing_text not in (None, "error", "mean"):
            raise ConfigError(f"missing_text must be 'error' or 'mean', got {self.missing_text!r}")
        for key in (
            "k_core",
            "user_core",
            "item_core",
            "text_batch_size",
            "image_batch_size",
            "image_resize",
            "image_crop",
        ):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"{key} must be a positive integer, got {value!r}")
        if self.image_crop > self.image_resize:
            raise ConfigError(f"image_crop ({self.image_crop}) cannot exceed image_resize ({self.image_resize})")
        if self.name is not None and (not self.name or "/" in self.name or os.sep in self.name):
            raise ConfigError(f"name must be a plain file stem, got {self.name!r}")

    @property
    def cores(self) -> tuple[int, int]:
        return (self.user_core or self.k_core, self.item_core or self.k_core)


@dataclasses.dataclass(frozen=True)
class PrepareResult:
    """What a preparation produced.

    Attributes:
        path: The dataset folder (load it with :func:`mirrorgrad_jax.data.load_mmrec`).
        summary: The numbers also written to ``summary.json``.
        steps_run: Steps computed in this call.
        steps_reused: Steps taken from an interrupted earlier call.
    """

    path: Path
    summary: Mapping[str, Any]
    steps_run: tuple[str, ...]
    steps_reused: tuple[str, ...]


# ---------------------------------------------------------------------------------------
# The work folder: one file pair per finished step, reused when its fingerprint matches.
# ---------------------------------------------------------------------------------------


def _identity(path: str | os.PathLike | None) -> Any:
    """What identifies an input for reuse: its path, size and modification time."""
    if path is None:
        return None
    path = Path(path).resolve()
    if path.is_dir():
        return [
            str(path),
            sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in path.iterdir() if p.is_file()),
        ]
    if not path.exists():
        raise DatasetError(f"{path} does not exist")
    stat = path.stat()
    return [str(path), stat.st_size, stat.st_mtime_ns]


class _Work:
    def __init__(self, out: Path, verbose: bool) -> None:
        self.root = out.parent / f".{out.name}.prepare-work"
        self.verbose = verbose
        self.run: list[str] = []
        self.reused: list[str] = []

    def say(self, message: str) -> None:
        if self.verbose:
            print(f"[prepare] {message}", flush=True)

    @staticmethod
    def fingerprint(*parts: Any) -> str:
        text = json.dumps([_FORMAT, *parts], sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def _paths(self, step: str) -> tuple[Path, Path]:
        return self.root / f"{step}.npz", self.root / f"{step}.json"

    def step(
        self, step: str, fingerprint: str, compute: Callable[[], tuple[dict[str, np.ndarray], dict[str, Any]]]
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Returns the stored result of ``step`` if its fingerprint matches, else computes it."""
        arrays_path, marker = self._paths(step)
        if marker.is_file() and arrays_path.is_file():
            stored = json.loads(marker.read_text())
            if stored.get("fingerprint") == fingerprint:
                with np.load(arrays_path, allow_pickle=False) as archive:
                    arrays = {key: archive[key] for key in archive.files}
                self.reused.append(step)
                self.say(f"{step}: reused from {self.root}")
                return arrays, stored["info"]
        started = time.perf_counter()
        arrays, info = compute()
        self.root.mkdir(parents=True, exist_ok=True)
        marker.unlink(missing_ok=True)
        _atomic_write(arrays_path, lambda handle: np.savez(handle, **arrays))
        _atomic_write(
            marker, lambda handle: handle.write(json.dumps({"fingerprint": fingerprint, "info": info}).encode())
        )
        self.run.append(step)
        self.say(f"{step}: done in {time.perf_counter() - started:.1f} s")
        return arrays, info

    def has_finished_steps(self) -> bool:
        """Whether a rerun could reuse something: a finished step or encoded text chunks."""
        return self.root.is_dir() and (any(self.root.glob("*.json")) or any(self.root.glob("text-chunks-*/*.npy")))


def _atomic_write(path: Path, write: Callable[[Any], Any]) -> None:
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as handle:
        write(handle)
    os.replace(partial, path)


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
    work: _Work, inter_fp: str, arrays: dict[str, np.ndarray], options: PrepareOptions, source: str
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
            order, labels = split_per_user(arrays["users"], options.seed, odd_row_to=options.odd_row_to)
        return {"order": order, "labels": labels}, {}

    result, _ = work.step("split", fingerprint, compute)
    return fingerprint, result


def _encode_in_chunks(work: _Work, fingerprint: str, sentences: list[str], options: PrepareOptions) -> np.ndarray:
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
            _atomic_write(path, lambda handle, v=vectors: np.save(handle, v, allow_pickle=False))
        parts.append(np.load(path, allow_pickle=False))
    return np.concatenate(parts) if parts else np.zeros((0, 384), np.float32)


def _text_model_identity(options: PrepareOptions) -> Any:
    """Finds the text model before any work starts (or says how to install it)."""
    from mirrorgrad_jax.prepare.minilm import check_text_extra, find_minilm_model

    check_text_extra()
    folder = find_minilm_model(options.text_model)
    return [_identity(folder / "model.safetensors"), _identity(folder / "tokenizer.json")]


def _check_image_extra() -> None:
    import importlib.util

    if importlib.util.find_spec("PIL") is None:
        raise ImportError("image folders need Pillow: pip install 'mirrorgrad-jax[images]'")


def _require_inputs(**paths: str | os.PathLike | None) -> None:
    for what, path in paths.items():
        if path is not None and not Path(path).exists():
            raise DatasetError(f"{path} does not exist (given as {what.replace('_', '-')})")


def _text_step(
    work: _Work,
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
# Output.
# ---------------------------------------------------------------------------------------


def _check_output(out: Path, overwrite: bool, inputs: Sequence[str | os.PathLike | None]) -> None:
    if out.exists():
        if not out.is_dir():
            raise DatasetError(f"{out} exists and is not a folder")
        entries = sorted(p.name for p in out.iterdir())
        if entries and not overwrite:
            shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
            raise DatasetError(f"{out} already holds files ({shown}); pass --overwrite (overwrite=True) to replace it")
    resolved = out.resolve()
    for path in inputs:
        if path is not None and (resolved == Path(path).resolve() or resolved in Path(path).resolve().parents):
            raise DatasetError(f"input {path} lies inside the output folder {out}; write the dataset elsewhere")


def _format_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _write_inter(path: Path, arrays: dict[str, np.ndarray], order: np.ndarray, labels: np.ndarray) -> None:
    """The reference's ``.inter``: userID, itemID[, rating][, timestamp], x_label, in split order."""
    columns = ["userID", "itemID"]
    cells = [arrays["users"][order].astype(str), arrays["items"][order].astype(str)]
    if "ratings" in arrays:
        columns.append("rating")
        cells.append(np.array(["" if np.isnan(r) else repr(float(r)) for r in arrays["ratings"][order]]))
    if "timestamps" in arrays:
        columns.append("timestamp")
        cells.append(np.array([_format_number(t) for t in arrays["timestamps"][order]]))
    columns.append("x_label")
    cells.append(labels.astype(str))
    body = "\n".join("\t".join(row) for row in zip(*cells))
    path.write_text("\t".join(columns) + "\n" + body + "\n", encoding="utf-8")


def _write_map(path: Path, header: tuple[str, str], ids: np.ndarray) -> None:
    lines = [f"{raw}\t{index}" for index, raw in enumerate(ids.tolist())]
    path.write_text("\t".join(header) + "\n" + "\n".join(lines) + "\n", encoding="utf-8")


def _build_summary(
    name: str,
    inter: dict[str, np.ndarray],
    inter_info: Mapping[str, Any],
    labels: np.ndarray,
    order: np.ndarray,
    dataset: RecDataset,
    features: Mapping[str, tuple[np.ndarray, np.ndarray]],
    options: PrepareOptions,
    inputs: Mapping[str, Any],
) -> dict[str, Any]:
    num_users, num_items = len(inter["user_ids"]), len(inter["item_ids"])
    total = len(labels)
    split_rows = {split: int((labels == code).sum()) for split, code in SPLIT_LABELS.items()}
    train_items = np.unique(inter["items"][order[labels == 0]])
    summary: dict[str, Any] = {
        "name": name,
        "num_users": num_users,
        "num_items": num_items,
        "num_interactions": total,
        "density": total / (num_users * num_items),
        "split": {
            "method": options.split,
            **(
                {"seed": options.seed, "odd_row_to": options.odd_row_to}
                if options.split == "per-user"
                else {"ratios": list(options.temporal_ratios)}
            ),
            **split_rows,
            "valid_test_rows_of_users_without_train": int(
                split_rows["valid"] + split_rows["test"] - len(dataset.valid) - len(dataset.test)
            ),
        },
        "cold_items": int(num_items - len(train_items)),
        "cleaning": dict(inter_info),
        "features": {
            modality: {
                "dim": int(values.shape[1]),
                "items_with_own": int(found.sum()),
                "filled_with_mean": int((~found).sum()),
                "coverage": float(found.mean()),
            }
            for modality, (values, found) in features.items()
        },
        "inputs": dict(inputs),
    }
    if dataset.user_graph is not None:
        sizes = np.array([len(ids) for ids, _ in dataset.user_graph.values()])
        summary["user_graph"] = {
            "users_with_neighbours": int((sizes > 0).sum()),
            "mean_neighbours": float(sizes.mean()),
            "max_neighbours_kept": 200,
        }
    return summary


def format_summary(summary: Mapping[str, Any]) -> str:
    """A human-readable version of ``summary.json``."""
    s, c, split = summary, summary["cleaning"], summary["split"]
    lines = [
        (
            f"dataset {s['name']}: {s['num_users']} users, {s['num_items']} items, "
            f"{s['num_interactions']} interactions (density {100 * s['density']:.4f}%)"
        ),
        (
            f"  read {c['rows_read']} rows: {c['rows_missing']} with a missing field, {c['duplicate_rows']} "
            f"duplicates, {c['repeated_pairs']} repeated (user, item) pairs dropped; "
            f"{c['user_core']}/{c['item_core']}-core removed {c['kcore_rows_removed']} rows, "
            f"{c['kcore_users_removed']} users, {c['kcore_items_removed']} items in {c['kcore_iterations']} rounds"
        ),
        (
            f"  split {split['method']}: train {split['train']}, valid {split['valid']}, test {split['test']}; "
            f"cold items (no train row) {s['cold_items']}"
        ),
    ]
    if split["valid_test_rows_of_users_without_train"]:
        lines.append(
            f"  {split['valid_test_rows_of_users_without_train']} valid/test rows belong to users without "
            "train rows; the loader skips them, as the reference does"
        )
    for modality, f in s["features"].items():
        lines.append(
            f"  {modality}: {f['dim']}-d, {f['items_with_own']} items with their own "
            f"({100 * f['coverage']:.2f}%), {f['filled_with_mean']} filled with the mean vector"
        )
    if "user_graph" in s:
        g = s["user_graph"]
        lines.append(
            f"  user graph: {g['users_with_neighbours']} users with neighbours, mean {g['mean_neighbours']:.1f}"
        )
    return "\n".join(lines)


def _finish(
    work: _Work,
    out: Path,
    name: str,
    inter: dict[str, np.ndarray],
    inter_info: Mapping[str, Any],
    split: dict[str, np.ndarray],
    features: Mapping[str, tuple[np.ndarray, np.ndarray]],
    id_headers: tuple[tuple[str, str], tuple[str, str]],
    options: PrepareOptions,
    inputs: Mapping[str, Any],
) -> PrepareResult:
    from mirrorgrad_jax.graph import build_user_graph

    order, labels = split["order"], split["labels"]
    users, items = inter["users"][order], inter["items"][order]
    pairs = [np.column_stack([users[labels == code], items[labels == code]]) for code in SPLIT_LABELS.values()]
    for split_name, rows in zip(SPLIT_LABELS, pairs):
        if len(rows) == 0:
            raise DatasetError(f"the {split_name} split is empty ({options.split} split of {len(order)} rows)")
    num_users, num_items = len(inter["user_ids"]), len(inter["item_ids"])
    graph = build_user_graph(pairs[0], num_users) if options.user_graph else None
    dataset = RecDataset.from_arrays(
        name, *pairs, {m: values for m, (values, _) in features.items()},
        num_users=num_users, num_items=num_items, user_graph=graph, verbose=False,
    )  # fmt: skip

    stage = work.root / "dataset"
    shutil.rmtree(stage, ignore_errors=True)
    try:
        write_mmrec(dataset, stage)
        # write_mmrec keeps only the loader's columns and rows; the reference's file also has
        # rating and timestamp, and the valid/test rows of users without train rows.
        _write_inter(stage / f"{name}.inter", inter, order, labels)
        _write_map(stage / "u_id_mapping.csv", id_headers[0], inter["user_ids"])
        _write_map(stage / "i_id_mapping.csv", id_headers[1], inter["item_ids"])
        if "image" in features and not features["image"][1].all():
            missing = np.flatnonzero(~features["image"][1])
            (stage / "missed_img_itemIDs.csv").write_text("".join(f"{i}\n" for i in missing))
        summary = _build_summary(name, inter, inter_info, labels, order, dataset, features, options, inputs)
        (stage / SUMMARY_FILE).write_text(json.dumps(summary, indent=1) + "\n")
        if out.exists():  # only here with overwrite (checked first) or when it is empty
            shutil.rmtree(work.root / "replaced", ignore_errors=True)
            os.replace(out, work.root / "replaced")
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    work.run.append("write")
    result = PrepareResult(out, summary, tuple(work.run), tuple(work.reused))
    shutil.rmtree(work.root, ignore_errors=True)
    work.say(f"wrote {out}")
    if options.verbose:
        print(format_summary(summary))
    return result


def _guarded(work: _Work, body: Callable[[], PrepareResult]) -> PrepareResult:
    """Runs ``body``; on failure keeps the work folder only if it holds finished steps."""
    try:
        return body()
    except BaseException:
        if work.root.is_dir():
            if work.has_finished_steps():
                work.say(f"stopped; finished steps are kept in {work.root} and reused by a rerun")
            else:
                shutil.rmtree(work.root, ignore_errors=True)
        raise


def _options(options: PrepareOptions | None, overrides: Mapping[str, Any], *, missing_text: str) -> PrepareOptions:
    """``options`` with ``overrides`` applied and the entry point's default for missing texts."""
    options = options or PrepareOptions()
    try:
        options = dataclasses.replace(options, **overrides)
    except TypeError as err:
        names = ", ".join(f.name for f in dataclasses.fields(PrepareOptions))
        raise ConfigError(f"{err}; the options are: {names}") from None
    if options.missing_text is None:
        options = dataclasses.replace(options, missing_text=missing_text)
    return options


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
    options = _options(options, overrides, missing_text="error")
    out = Path(out).resolve()
    _require_inputs(ratings=ratings, meta=meta, image_features=image_features)
    _check_output(out, options.overwrite, [ratings, meta, image_features])
    text_model = _text_model_identity(options) if meta is not None else None
    name = options.name or out.resolve().name
    work = _Work(out, options.verbose)

    def body() -> PrepareResult:
        user_core, item_core = options.cores
        inter_fp = work.fingerprint("amazon-interactions", _identity(ratings), user_core, item_core)

        def interactions() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
            raw = read_amazon_ratings(ratings)
            return _interactions_to_arrays(clean_interactions(raw, user_core=user_core, item_core=item_core), ())

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

            text = _text_step(work, inter_fp, _identity(meta), text_model, sentences, options)
            features["text"] = (text["features"], text["found"])

        if image_features is not None:
            image_fp = work.fingerprint("amazon-image", inter_fp, _identity(image_features))

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
        return _finish(
            work, out, name, inter, inter_info, split, features,
            (("user_id", "userID"), ("asin", "itemID")), options, inputs,
        )  # fmt: skip

    return _guarded(work, body)


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
    options = _options(options, overrides, missing_text="mean")
    out = Path(out).resolve()
    if images is not None and image_weights is None:
        raise DatasetError(
            f"{images}: encoding images needs the weights of a pretrained ResNet (image_weights / --image-weights)"
        )
    _require_inputs(interactions=interactions, items=items, images=images, image_weights=image_weights)
    _check_output(out, options.overwrite, [interactions, items, images, image_weights])
    text_model = _text_model_identity(options) if items is not None else None
    if images is not None:
        _check_image_extra()
    name = options.name or out.resolve().name
    work = _Work(out, options.verbose)
    columns = {"user_column": user_column, "item_column": item_column, "rating_column": rating_column,
               "timestamp_column": timestamp_column, "delimiter": delimiter}  # fmt: skip

    def body() -> PrepareResult:
        user_core, item_core = options.cores
        inter_fp = work.fingerprint("table-interactions", _identity(interactions), columns, user_core, item_core)

        def read() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
            raw = read_interaction_table(interactions, **columns)
            cleaned = clean_interactions(raw, user_core=user_core, item_core=item_core)
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

            text = _text_step(work, inter_fp, _identity(items), text_model, sentences, options)
            features["text"] = (text["features"], text["found"])

        if images is not None:
            image_fp = work.fingerprint(
                "folder-image", inter_fp, _identity(images), _identity(image_weights),
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
        return _finish(
            work, out, name, inter, inter_info, split, features,
            (("user_id", "userID"), ("item_id", "itemID")), options, inputs,
        )  # fmt: skip

    return _guarded(work, body)
