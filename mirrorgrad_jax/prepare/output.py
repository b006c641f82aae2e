"""The last step of a preparation: the dataset folder, its id maps and ``summary.json``, swapped in atomically."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mirrorgrad_jax.data import SPLIT_LABELS, DatasetError, RecDataset, write_mmrec
from mirrorgrad_jax.graph import build_user_graph
from mirrorgrad_jax.prepare.options import PrepareOptions, PrepareResult
from mirrorgrad_jax.prepare.work import WorkFolder

__all__ = [
    "LARGEST_DEFAULT_CUTOFF",
    "PREPARE_MARKER",
    "SUMMARY_FILE",
    "check_output",
    "format_summary",
    "is_prepared_folder",
    "write_dataset",
]

SUMMARY_FILE = "summary.json"

#: The largest of the trainer's default ranking cut-offs (``mirrorgrad_jax.evaluation.DEFAULT_TOPK``,
#: which this module may not import: evaluation sits on its floor). A set with fewer items is
#: ranked at the smaller cut-offs only, so ``prepare`` warns when it writes one.
LARGEST_DEFAULT_CUTOFF = 50

#: The file every dataset folder written by ``prepare`` holds (a small JSON object with the
#: marker's format). ``--overwrite`` replaces a folder only when it has one, so a mistyped
#: ``--out`` (a parent folder holding other datasets, a home folder) is never deleted.
PREPARE_MARKER = ".mirrorgrad-prepare"
_MARKER_FORMAT = 1


def is_prepared_folder(folder: Path) -> bool:
    """Whether ``folder`` is a dataset folder an earlier ``prepare`` wrote (it holds a valid :data:`PREPARE_MARKER`)."""
    marker = folder / PREPARE_MARKER
    if marker.is_symlink() or not marker.is_file():
        return False
    try:
        content = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    version = content.get("format") if isinstance(content, dict) else None
    return isinstance(version, int) and not isinstance(version, bool) and version >= 1


def _refuse_to_replace(out: Path, overwrite: bool) -> None:
    """Raises unless ``out`` is absent, empty, or (with ``overwrite``) a folder an earlier prepare wrote."""
    if not out.exists():
        return
    if not out.is_dir():
        raise DatasetError(f"{out} exists and is not a folder")
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
    if not overwrite:
        raise DatasetError(f"{out} already holds files ({shown}); pass --overwrite (overwrite=True) to replace it")
    if not is_prepared_folder(out):
        raise DatasetError(
            f"{out} holds files ({shown}) that `mirrorgrad prepare` did not write (it has no {PREPARE_MARKER} "
            "marker); --overwrite (overwrite=True) replaces only a dataset folder an earlier prepare wrote: "
            "choose another --out, or remove this folder yourself"
        )


def check_output(out: Path, overwrite: bool, inputs: Sequence[str | os.PathLike | None]) -> None:
    """Checks, before any work, that the dataset can be written at ``out``.

    Raises:
      DatasetError: ``out`` is a file; it holds files and ``overwrite`` is off; it holds
        files that no earlier ``prepare`` wrote (no :data:`PREPARE_MARKER`), even with
        ``overwrite``; or an input lies inside it.
    """
    _refuse_to_replace(out, overwrite)
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
            f"duplicates dropped; {c['user_core']}/{c['item_core']}-core removed {c['kcore_rows_removed']} rows, "
            f"{c['kcore_users_removed']} users, {c['kcore_items_removed']} items in {c['kcore_iterations']} rounds; "
            f"{c['repeated_pairs']} repeated (user, item) pairs dropped "
            + ("after it, having counted toward it" if c.get("repeated_pairs_mode", "drop") == "count" else "before it")
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


def write_dataset(
    work: WorkFolder,
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
        (stage / PREPARE_MARKER).write_text(json.dumps({"format": _MARKER_FORMAT, "written_by": "mirrorgrad prepare"}) + "\n")
        _refuse_to_replace(out, options.overwrite)  # again: the folder may have changed during the steps
        if out.exists():  # only here when it is empty, or with overwrite and a folder prepare wrote
            shutil.rmtree(work.root / "replaced", ignore_errors=True)
            os.replace(out, work.root / "replaced")
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    work.run.append("write")
    notes = []
    if num_items < LARGEST_DEFAULT_CUTOFF:
        notes.append(
            f"warning: {out} has {num_items} items, fewer items than the largest ranking cut-off of training "
            f"({LARGEST_DEFAULT_CUTOFF}): `mirrorgrad train` will rank it at the cut-offs up to {num_items} only"
        )
    result = PrepareResult(out, summary, tuple(work.run), tuple(work.reused), tuple(notes))
    shutil.rmtree(work.root, ignore_errors=True)
    work.say(f"wrote {out}")
    if options.verbose:
        print(format_summary(summary))
        for note in notes:
            print(note)
    return result
