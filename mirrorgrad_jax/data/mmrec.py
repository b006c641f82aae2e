"""Reading and writing the MMRec on-disk format: one folder per dataset.

The format is the one of MMRec:

* ``<name>.inter``: a TSV file with a header. The columns ``userID``, ``itemID`` and
  ``x_label`` (0 = train, 1 = valid, 2 = test) are read; any other column (``rating``,
  ``timestamp``) is ignored.
* ``<modality>_feat.npy``: an ``(num_items, D)`` array per modality; row ``r`` belongs
  to item ``r`` (``image_feat.npy`` becomes the modality ``"image"``).
* ``user_graph.npz`` (optional, written by this project): the DualGNN/DRAGON user-user
  graph as three plain arrays (``indptr``, ``neighbours``, ``weights``: per user, its
  neighbour ids and co-occurrence weights, CSR), read with ``allow_pickle=False``;
* ``user_graph_dict.npy`` (optional, MMRec's): the same graph as a pickled
  ``{user: [neighbour_ids, weights]}``. It is read with a restricted unpickler that
  admits only numpy arrays, plain containers and numbers, so a crafted file cannot
  run code; :func:`convert_user_graph` rewrites it as ``user_graph.npz``.

The number of users (items) is ``max(id) + 1`` over the whole file, all splits
together, exactly as in the reference. Bad input is reported with a
:class:`DatasetError` that says what is wrong and where, never with a stack trace from
deep inside numpy or JAX.

Example::

    ds = load_mmrec("data/baby")
    print(ds.summary())
    indptr, indices = ds.train_csr()
"""

from __future__ import annotations

import csv
import io
import math
import os
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from mirrorgrad_jax.data.dataset import SPLIT_LABELS, DatasetError, RecDataset, check_user_graph, first_occurrence_mask, with_source

__all__ = ["convert_user_graph", "load_mmrec", "read_user_graph", "write_mmrec"]

_REQUIRED_COLUMNS = ("userID", "itemID", "x_label")
_FEATURE_SUFFIX = "_feat.npy"
_USER_GRAPH_FILE = "user_graph_dict.npy"
_USER_GRAPH_NPZ = "user_graph.npz"


def _report(message: str, verbose: bool) -> None:
    if verbose:
        print(message)


# ---------------------------------------------------------------------------------------
# Reading and writing the on-disk format.
# ---------------------------------------------------------------------------------------


def _find_inter_file(folder: Path, name: str | None) -> tuple[Path, str]:
    if name is not None:
        path = folder / f"{name}.inter"
        if not path.is_file():
            raise DatasetError(f"{path} does not exist")
        return path, name
    default = folder / f"{folder.resolve().name}.inter"
    if default.is_file():
        return default, default.stem
    candidates = sorted(p for p in folder.glob("*.inter") if p.is_file())  # a folder named x.inter is not a file to read
    if len(candidates) == 1:
        return candidates[0], candidates[0].stem
    if not candidates:
        raise DatasetError(f"no .inter file in {folder}")
    raise DatasetError(
        f"{folder} has several .inter files ({', '.join(p.name for p in candidates)}); "
        "pass name= to choose one"
    )


def _locate_bad_value(path: Path, header: list[str], columns: list[int]) -> str:
    """Finds the first id cell that is not a non-negative integer (slow, error path)."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle, delimiter="\t")
        next(reader)
        for line_no, row in enumerate(reader, start=2):
            for col in columns:
                value = row[col].strip() if col < len(row) else ""
                if not value.isdigit():
                    return f"line {line_no}: {header[col]}={value!r}"
    return "unknown location"


def _not_utf8(path: Path, err: UnicodeDecodeError, where: str = "") -> DatasetError:
    """The error for a text file with a byte that is not UTF-8, naming the byte."""
    return DatasetError(f"{path.name} is not UTF-8 text ({err.reason}: byte {err.object[err.start:err.start + 1]!r}{where})")


def _read_inter(path: Path) -> np.ndarray:
    """Reads (userID, itemID, x_label) as an (E, 3) int64 array in file order."""
    try:
        with open(path, encoding="utf-8-sig") as handle:
            header = handle.readline().rstrip("\r\n").split("\t")
    except UnicodeDecodeError as err:
        raise _not_utf8(path, err) from None
    header = [column.strip() for column in header]
    missing = [column for column in _REQUIRED_COLUMNS if column not in header]
    if missing:
        raise DatasetError(
            f"{path.name} is missing the required column(s) {', '.join(missing)} "
            f"(found: {', '.join(header)})"
        )
    columns = [header.index(column) for column in _REQUIRED_COLUMNS]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an empty body is reported as an empty split
            table = np.loadtxt(
                path,
                delimiter="\t",
                skiprows=1,
                usecols=columns,
                dtype=np.int64,
                comments=None,
                ndmin=2,
            )
    except ValueError:  # UnicodeDecodeError among them
        try:
            where = _locate_bad_value(path, header, columns)
        except UnicodeDecodeError as err:
            raise _not_utf8(path, err, " after the header") from None
        raise DatasetError(
            f"{path.name}: userID, itemID and x_label must be non-negative integers ({where})"
        ) from None
    table = table.reshape(-1, 3)
    for col, column in enumerate(_REQUIRED_COLUMNS):
        negative = table[:, col] < 0
        if negative.any():
            line = int(np.argmax(negative)) + 2
            raise DatasetError(
                f"{path.name}: {column} must be non-negative integers "
                f"({int(negative.sum())} negative values, first at line {line})"
            )
        too_large = table[:, col] > np.iinfo(np.int32).max  # ids index int32 tables; keys of id pairs must not overflow
        if too_large.any():
            line = int(np.argmax(too_large)) + 2
            raise DatasetError(f"{path.name}: {column} {int(table[line - 2, col])} at line {line} does not fit in int32")
    return table


def load_mmrec(
    folder: str | os.PathLike,
    name: str | None = None,
    *,
    feature_files: Mapping[str, str | os.PathLike] | None = None,
    dedupe: bool = False,
    verbose: bool = True,
) -> RecDataset:
    """Loads a dataset folder in the MMRec format.

    Args:
        folder: The dataset folder.
        name: Stem of the ``.inter`` file. Default: the folder's name, or the only
            ``.inter`` file in the folder.
        feature_files: Optional mapping modality -> ``.npy`` path (relative paths are
            relative to ``folder``). Default: every ``<modality>_feat.npy`` in the folder.
        dedupe: Keep only the first occurrence (in file order) of duplicate
            ``(user, item)`` pairs instead of raising.
        verbose: Print how many rows were dropped or filtered.

    Returns:
        The validated :class:`RecDataset`; its :attr:`~RecDataset.source` is the folder's
        absolute path.

    Raises:
        DatasetError: for missing columns, bad or non-contiguous ids, ``x_label``
            values outside {0, 1, 2}, duplicate pairs, an empty split, feature files
            with the wrong number of rows or with NaN/inf values, or a bad user graph.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder} is not a directory")
    inter_path, name = _find_inter_file(folder, name)
    table = _read_inter(inter_path)

    labels = table[:, 2]
    bad = ~np.isin(labels, list(SPLIT_LABELS.values()))
    if bad.any():
        values = ", ".join(str(v) for v in np.unique(labels[bad])[:10])
        raise DatasetError(
            f"{inter_path.name}: x_label must be 0 (train), 1 (valid) or 2 (test); "
            f"{int(bad.sum())} rows have other values ({values})"
        )

    pairs = table[:, :2]
    keep = first_occurrence_mask(pairs)
    n_duplicates = int(len(keep) - keep.sum())
    if n_duplicates:
        if not dedupe:
            raise DatasetError(
                f"{inter_path.name} has {n_duplicates} duplicate (user, item) rows; "
                "load with dedupe=True to keep the first occurrence of each pair"
            )
        _report(
            f"[{name}] dropped {n_duplicates} duplicate (user, item) rows "
            "(kept the first occurrence in file order)",
            verbose,
        )
        table = table[keep]

    if feature_files is None:
        paths = {
            p.name[: -len(_FEATURE_SUFFIX)]: p
            for p in sorted(folder.glob(f"*{_FEATURE_SUFFIX}"))
            if len(p.name) > len(_FEATURE_SUFFIX)
        }
    else:
        paths = {modality: folder / Path(path) for modality, path in feature_files.items()}
    features = {}
    for modality, path in paths.items():
        if not path.is_file():
            raise DatasetError(f"feature file {path} for modality {modality!r} does not exist")
        _check_npy_size(path)
        try:
            features[modality] = np.load(path, allow_pickle=False)
        except ValueError as err:
            raise DatasetError(f"{path.name} is not a numeric .npy array: {err}") from None

    user_graph = read_user_graph(folder)

    splits = {split: table[table[:, 2] == label, :2] for split, label in SPLIT_LABELS.items()}
    dataset = RecDataset.from_arrays(
        name,
        splits["train"],
        splits["valid"],
        splits["test"],
        features,
        user_graph=user_graph,
        verbose=verbose,
        feature_sources={modality: path.name for modality, path in paths.items()},
    )
    return with_source(dataset, str(folder.resolve()))


#: The largest ``.npy`` header read, in bytes (numpy's own default limit for ``np.load``);
#: numpy writes a few hundred for a numeric array.
MAX_NPY_HEADER_BYTES = 10_000


def npy_header(handle: Any, where: Any) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype a ``.npy`` file (or ``.npz`` member) declares, from its header alone.

    The handle is left at the first byte of the data. Shared by every reader of a ``.npy``
    header in the package, so that each one sizes a file before ``np.load`` allocates it.
    The header's length field is read and checked first (at most
    :data:`MAX_NPY_HEADER_BYTES`): numpy's readers would read the whole declared header
    (up to 4 GiB in format 2.0) before their own size check.

    Args:
      handle: a binary file object at the start of the ``.npy`` data.
      where: names the file in messages.

    Raises:
      DatasetError: not a ``.npy`` file, a header longer than the cap, or a format version
        other than 1.0, 2.0 and 3.0 (3.0 differs from 2.0 only in its header's encoding,
        UTF-8 for Latin-1, the same bytes for the ASCII header of a numeric array).
    """
    try:
        version = np.lib.format.read_magic(handle)
        if version not in ((1, 0), (2, 0), (3, 0)):
            raise DatasetError(f"{where} is stored in .npy format {version[0]}.{version[1]}, which cannot be read (1.0, 2.0 and 3.0 can); save it with np.save")
        width = 2 if version == (1, 0) else 4
        length_bytes = handle.read(width)
        if len(length_bytes) < width:
            raise DatasetError(f"{where} is not a .npy file: it ends inside its header")
        length = int.from_bytes(length_bytes, "little")
        if length > MAX_NPY_HEADER_BYTES:
            raise DatasetError(f"{where} declares a .npy header of {length:,} bytes, more than the {MAX_NPY_HEADER_BYTES:,} read")
        header = io.BytesIO(length_bytes + handle.read(length))
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(header)
    except (ValueError, OSError, EOFError) as err:
        if isinstance(err, DatasetError):
            raise
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DatasetError(f"{where} is not a .npy file: {reason}") from None
    return tuple(int(d) for d in shape), dtype


def _check_npy_size(path: Path) -> None:
    """Refuses a ``.npy`` file whose header declares more data than the file holds, before reading it.

    A 16-byte file can declare a (2e9, 1000) array; ``np.load`` would try to allocate it first.
    """
    with open(path, "rb") as handle:
        shape, dtype = npy_header(handle, path.name)
        offset = handle.tell()
    if dtype.hasobject:
        raise DatasetError(f"{path.name} holds Python objects ({dtype}), not numbers; features must be a numeric array")
    declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
    available = path.stat().st_size - offset
    if declared > available:
        raise DatasetError(f"{path.name} declares a {dtype} array of shape {shape} ({declared:,} bytes) but holds {available:,}")


class _PlainDataUnpickler(pickle.Unpickler):
    """Unpickles only numpy arrays/scalars and builtin containers and numbers.

    Dicts, lists, tuples, ints, floats and strings need no global; the globals numpy
    uses to rebuild arrays and scalars are the only ones admitted. Anything else (a
    function, a class, ``os.system``...) is refused before it can be called.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            found = super().find_class(module, name)
            return _empty_reconstruct(found) if name == "_reconstruct" else found
        raise pickle.UnpicklingError(f"refused to load {module}.{name}: only numpy arrays, numbers and plain containers are allowed")


def _empty_reconstruct(reconstruct: Any) -> Any:
    """numpy's ``_reconstruct`` admitted only as numpy itself pickles: an empty ``(0,)`` array whose
    ``__setstate__`` then fills it from the file's own bytes, so a crafted shape cannot allocate."""

    def checked(subtype, shape, dtype):
        if tuple(shape) != (0,):
            raise pickle.UnpicklingError(f"refused an array of shape {tuple(shape)} made before its data (numpy pickles (0,))")
        return reconstruct(subtype, shape, dtype)

    return checked


def _read_pickled_user_graph(path: Path) -> Any:
    """MMRec's ``user_graph_dict.npy`` (an object .npy holding a pickled dict), read without running code."""
    with open(path, "rb") as handle:
        shape, dtype = npy_header(handle, path.name)
        if dtype != np.dtype(object):
            raise DatasetError(f"{path.name} holds a {dtype} array of shape {shape}; MMRec's user graph is a pickled dict")
        try:
            loaded = _PlainDataUnpickler(handle).load()
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError, ValueError, IndexError, MemoryError) as err:
            raise DatasetError(
                f"{path.name} could not be read safely ({err}); convert it where you trust it with "
                "mirrorgrad_jax.data.convert_user_graph, which writes user_graph.npz"
            ) from None
    value = loaded.item() if isinstance(loaded, np.ndarray) and loaded.dtype == object and loaded.ndim == 0 else loaded
    if not isinstance(value, Mapping):
        raise DatasetError(f"{path.name} must hold a dict {{user: [neighbour_ids, weights]}}, got {type(value).__name__}")
    return value


def npz_members(path: Path, where: Any = None, *, max_member_bytes: int | None = None, cap_note: str = "") -> dict[str, tuple[tuple[int, ...], np.dtype, int]]:
    """Name -> (shape, dtype, bytes) of every member of an ``.npz``, from the members' ``.npy`` headers alone.

    ``np.load`` allocates what a member's header declares before reading it, so every reader
    of an ``.npz`` in the package walks its members here first. A member's name is its file
    name without ``.npy`` (the key ``np.load`` gives it).

    Args:
      path: the archive.
      where: names the archive in messages (default: ``path``'s file name).
      max_member_bytes: refuse a member declaring more bytes than this (checked before the
        bytes it holds, so that the message names the cap).
      cap_note: completes the cap's message: "more than the N bytes {cap_note}".

    Raises:
      DatasetError: not a zip archive; a member that is not a ``.npy`` array, holds Python
        objects, declares more than ``max_member_bytes``, or declares more data than the
        archive holds for it.
    """
    where = path.name if where is None else where
    if not zipfile.is_zipfile(path):
        raise DatasetError(f"{where} is not an .npz archive (a zip of .npy arrays)")
    out: dict[str, tuple[tuple[int, ...], np.dtype, int]] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                name = info.filename[: -len(".npy")] if info.filename.endswith(".npy") else info.filename
                with archive.open(info) as member:
                    shape, dtype = npy_header(member, f"{where}: {name}")
                if dtype.hasobject:
                    raise DatasetError(f"{where}: {name} holds Python objects, which are never unpickled")
                nbytes = math.prod(shape) * dtype.itemsize
                described = f"{where}: {name} declares shape {shape} {dtype.name} ({nbytes:,} bytes)"
                if max_member_bytes is not None and nbytes > max_member_bytes:
                    raise DatasetError(f"{described}, more than the {max_member_bytes:,} bytes {cap_note}".rstrip())
                if nbytes > info.file_size:
                    raise DatasetError(f"{described} but the archive holds only {info.file_size:,} bytes for it")
                out[name] = (shape, dtype, nbytes)
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise DatasetError(f"{where} is not a readable .npz archive: {err}") from None
    return out


def _read_npz_user_graph(path: Path) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    npz_members(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in ("indptr", "neighbours", "weights") if k not in npz.files]
            if missing:
                raise DatasetError(f"{path.name} lacks the array(s) {missing}")
            indptr, neighbours, weights = npz["indptr"], npz["neighbours"], npz["weights"]
    except (ValueError, OSError) as err:
        raise DatasetError(f"{path.name} is not a readable .npz of plain arrays: {err}") from None
    if indptr.ndim != 1 or len(indptr) < 1 or indptr[0] != 0 or np.any(np.diff(indptr) < 0) or indptr[-1] != len(neighbours) or len(neighbours) != len(weights):
        raise DatasetError(f"{path.name}: indptr, neighbours and weights do not form a CSR graph")
    return {u: (neighbours[indptr[u] : indptr[u + 1]], weights[indptr[u] : indptr[u + 1]]) for u in range(len(indptr) - 1)}


def read_user_graph(folder: str | os.PathLike) -> Mapping[Any, Any] | None:
    """The user-user graph of a dataset folder, or None when it has none.

    ``user_graph.npz`` (plain arrays) is preferred; MMRec's ``user_graph_dict.npy`` is
    read with a restricted unpickler (see the module docstring).

    Raises:
      DatasetError: a file that is malformed or holds anything but plain data.
    """
    folder = Path(folder)
    if (folder / _USER_GRAPH_NPZ).is_file():
        return _read_npz_user_graph(folder / _USER_GRAPH_NPZ)
    if (folder / _USER_GRAPH_FILE).is_file():
        return _read_pickled_user_graph(folder / _USER_GRAPH_FILE)
    return None


def _write_npz_user_graph(graph: Mapping[int, tuple[Any, Any]], num_users: int, path: Path) -> None:
    lists = [graph.get(u, ((), ())) for u in range(num_users)]
    counts = np.array([len(ids) for ids, _ in lists], np.int64)
    indptr = np.concatenate([[0], np.cumsum(counts)])
    neighbours = np.concatenate([np.asarray(ids, np.int64).reshape(-1) for ids, _ in lists]) if counts.sum() else np.zeros(0, np.int64)
    weights = np.concatenate([np.asarray(w, np.float32).reshape(-1) for _, w in lists]) if counts.sum() else np.zeros(0, np.float32)
    with open(path, "wb") as handle:
        np.savez(handle, indptr=indptr, neighbours=neighbours.astype(np.int32), weights=weights)


def convert_user_graph(folder: str | os.PathLike) -> Path:
    """Rewrites a folder's MMRec ``user_graph_dict.npy`` as ``user_graph.npz`` (plain arrays).

    Only data the restricted reader admits is converted; the original file is kept.

    Returns:
      The path of the written ``user_graph.npz``.
    """
    folder = Path(folder)
    graph = _read_pickled_user_graph(folder / _USER_GRAPH_FILE)
    checked = check_user_graph(graph, len(graph), _USER_GRAPH_FILE)
    out = folder / _USER_GRAPH_NPZ
    _write_npz_user_graph(checked, len(checked), out)
    return out


def write_mmrec(dataset: RecDataset, folder: str | os.PathLike) -> Path:
    """Writes ``dataset`` in the MMRec format, readable by :func:`load_mmrec` and MMRec.

    Writes ``<name>.inter`` (columns ``userID, itemID, x_label``; train rows first,
    then valid, then test, each in its stored order), one ``<modality>_feat.npy`` per
    modality (float32) and ``user_graph.npz`` (plain arrays, no pickle) when the
    dataset has a user graph.

    Args:
        dataset: The dataset to write.
        folder: Output folder; created if needed. Existing files are overwritten.

    Returns:
        The path of the written ``.inter`` file.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    blocks = []
    for split, label in SPLIT_LABELS.items():
        rows = dataset.split(split)
        blocks.append(np.column_stack([rows, np.full(len(rows), label, dtype=np.int32)]))
    table = np.concatenate(blocks)
    buffer = io.StringIO()
    buffer.write("\t".join(_REQUIRED_COLUMNS) + "\n")
    np.savetxt(buffer, table, fmt="%d", delimiter="\t")
    inter_path = folder / f"{dataset.name}.inter"
    inter_path.write_text(buffer.getvalue(), encoding="utf-8")
    for modality, values in dataset.features.items():
        np.save(folder / f"{modality}{_FEATURE_SUFFIX}", np.asarray(values, dtype=np.float32))
    if dataset.user_graph is not None:
        _write_npz_user_graph(dataset.user_graph, dataset.num_users, folder / _USER_GRAPH_NPZ)
    return inter_path
