"""Checkpoints that hold only arrays and JSON: orbax folders, replaced atomically.

A checkpoint is a folder written by `orbax-checkpoint <https://orbax.readthedocs.io>`_
with two items: ``arrays`` (named groups of named arrays: ``params``, ``model_state``,
``opt_state``...) and ``meta`` (plain JSON: configs, metrics, history). Nothing in it is
ever unpickled, so loading a checkpoint someone else made cannot run code; a file that
is not such a folder (for example a pickle from mirrorgrad 0.1) is refused with a
:class:`~mirrorgrad_jax.errors.CheckpointError`.

Arrays are stored under path-like names (``"user_embedding/value"``,
``"inner_state/0/mu/items/value"``) made by :func:`flatten_arrays`, and put back into a
freshly built structure by :func:`unflatten_like`, which names every missing, extra or
mis-shaped array instead of silently reordering leaves.

Writing is atomic: the new checkpoint is completed under a temporary name next to the
target and swapped in with two renames, so an interruption leaves either the old or the
new checkpoint (and :func:`load_checkpoint` finds a completed one left mid-swap).
Orbax's format is also what sharded, multi-host checkpoints use: arrays sharded over a
mesh are written shard by shard (every process writes its own; process 0 writes the
JSON and does the renames, the others wait for it) and can be read back onto another
mesh by passing ``targets`` with the new shardings.

Reading is in two steps, so that a crafted checkpoint cannot make the reader allocate
what it declares: :func:`open_checkpoint` reads the small JSON metadata only; its
:meth:`~CheckpointFile.read_arrays` with ``expected`` (the shapes the model has) first
reads the stored shapes and dtypes from orbax's array metadata, refuses any array that
differs from what the model expects, and only then restores, skipping groups nobody asked
for (an optimizer state when evaluating).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
from typing import Any, Mapping, NamedTuple

import jax
import numpy as np

from mirrorgrad_jax.errors import CheckpointError

__all__ = [
    "CHECKPOINT_FORMAT",
    "Checkpoint",
    "CheckpointFile",
    "checkpoint_exists",
    "flatten_arrays",
    "load_checkpoint",
    "open_checkpoint",
    "remove_checkpoint",
    "save_checkpoint",
    "unflatten_like",
]

CHECKPOINT_FORMAT = 2
"""Version of the layout (1 was a pickle file, never loaded)."""

_NEXT, _PREV = ".next", ".prev"
_FORMAT_GROUP = "checkpoint"


class Checkpoint(NamedTuple):
    """A loaded checkpoint: ``arrays[group][name]`` (numpy, or jax arrays when restored with targets) and ``meta``."""

    arrays: dict[str, dict[str, Any]]
    meta: dict[str, Any]


def _key_name(entry: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def flatten_arrays(tree: Any) -> dict[str, Any]:
    """``{"a/b/c": leaf}`` for every leaf of a pytree (nnx states, optax states, dicts).

    Names are the pytree paths joined with ``/``; they are stable for a given structure,
    so :func:`unflatten_like` can match them against a freshly built tree.
    """
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    out: dict[str, Any] = {}
    for path, leaf in flat:
        name = "/".join(_key_name(p) for p in path) or "."
        if name in out:
            raise ValueError(f"two leaves share the name {name!r}; cannot checkpoint this tree")
        out[name] = leaf
    return out


def unflatten_like(reference: Any, arrays: Mapping[str, Any], what: str) -> Any:
    """Puts ``arrays`` (from :func:`flatten_arrays`) into the structure of ``reference``.

    Args:
      reference: a tree of the wanted structure (e.g. a freshly built model's state).
      arrays: name -> array.
      what: names the thing in error messages (e.g. ``"best.ckpt: the parameters"``).

    Returns:
      The tree, leaves taken from ``arrays`` (cast to the reference leaf's dtype).

    Raises:
      CheckpointError: missing or unexpected names, or a shape that differs.
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(reference)
    names = ["/".join(_key_name(p) for p in path) or "." for path, _ in flat]
    missing = [n for n in names if n not in arrays]
    extra = sorted(set(arrays) - set(names))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"lacks {len(missing)} array(s) the model has (e.g. {missing[:3]})")
        if extra:
            parts.append(f"has {len(extra)} array(s) the model does not (e.g. {extra[:3]})")
        raise CheckpointError(f"mismatch in {what}: the checkpoint " + " and ".join(parts))
    leaves = []
    for name, (_, ref) in zip(names, flat):
        value = arrays[name]
        if tuple(np.shape(value)) != tuple(np.shape(ref)):
            raise CheckpointError(f"mismatch in {what}: {name!r} has shape {tuple(np.shape(value))} in the checkpoint, {tuple(np.shape(ref))} in the model")
        dtype = getattr(ref, "dtype", None)
        if isinstance(value, np.ndarray) and dtype is not None and value.dtype != dtype:
            value = value.astype(dtype)
        leaves.append(value)
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _orbax():
    import orbax.checkpoint as ocp

    return ocp


def _checkpointer():
    """An orbax checkpointer for one save or restore; use it in a ``with`` block, which closes it
    (a failed restore then drains its pending reads before the error reaches the caller, instead
    of leaving them to an event loop that is closed at exit)."""
    ocp = _orbax()
    return ocp.Checkpointer(ocp.CompositeCheckpointHandler())


def _plain(tree: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Groups of arrays with host copies of single-device jax arrays (sharded ones stay as they are)."""
    out: dict[str, dict[str, Any]] = {}
    for group, arrays in tree.items():
        out[group] = {}
        for name, value in arrays.items():
            if isinstance(value, jax.Array) and len(value.sharding.device_set) > 1:
                out[group][name] = value
            else:
                out[group][name] = np.asarray(value)
    return out


def save_checkpoint(path: str | os.PathLike, arrays: Mapping[str, Mapping[str, Any]], meta: Mapping[str, Any]) -> None:
    """Writes a checkpoint folder at ``path``, replacing any previous one atomically.

    Args:
      path: the checkpoint folder (e.g. ``runs/x/best.ckpt``).
      arrays: group name -> array name -> array (numpy or jax; sharded jax arrays are
        written shard by shard by orbax).
      meta: JSON-serialisable metadata (big integers and NaN are fine).
    """
    path = os.path.abspath(os.fspath(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    ocp = _orbax()
    payload = json.loads(json.dumps({"format": CHECKPOINT_FORMAT, **meta}, default=_json_default))
    groups = {g: dict(a) for g, a in _plain(arrays).items() if a}
    # orbax refuses an empty item; a model without parameters (ItemKNNCBF) still gets a folder.
    groups[_FORMAT_GROUP] = {"format": np.asarray(CHECKPOINT_FORMAT, np.int32)}
    nxt, prev = path + _NEXT, path + _PREV
    primary = jax.process_index() == 0
    if primary:
        if _completed_next(path):  # a swap cut short between its two renames: finish it first
            os.rename(nxt, path)
        for stale in (nxt, prev):
            if os.path.lexists(stale):
                _remove_path(stale)
    _sync(f"mirrorgrad-checkpoint-clean:{path}")
    # Collective over processes: each writes its own shards.
    with _checkpointer() as checkpointer:
        checkpointer.save(nxt, args=ocp.args.Composite(arrays=ocp.args.StandardSave(groups), meta=ocp.args.JsonSave(payload)))
    if primary:
        if os.path.lexists(path):
            os.rename(path, prev)
        os.rename(nxt, path)
        if os.path.lexists(prev):
            _remove_path(prev)
    _sync(f"mirrorgrad-checkpoint-swapped:{path}")


def _sync(name: str) -> None:
    """Waits for every process (a no-op with one)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _remove_path(path: str) -> None:
    """Removes a folder with its contents, or a file or link (a link to a folder: the link alone)."""
    shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.unlink(path)


def _completed_next(path: str) -> bool:
    """Whether a swap stopped between its two renames: no ``path``, a complete ``path.next``
    (orbax writes a folder under a temporary name and renames it when done)."""
    return not os.path.lexists(path) and os.path.isdir(path + _NEXT) and os.path.exists(os.path.join(path + _NEXT, "meta"))


def checkpoint_exists(path: str | os.PathLike) -> bool:
    """Whether there is something to resume from at ``path``: anything there (reading it says
    whether it is a checkpoint), or the complete ``path.next`` that a save stopped between its
    two renames left (:func:`save_checkpoint`)."""
    path = os.path.abspath(os.fspath(path))
    return os.path.lexists(path) or _completed_next(path)


def remove_checkpoint(path: str | os.PathLike) -> bool:
    """Removes the checkpoint at ``path`` and what an interrupted save left beside it
    (``path.next``, ``path.prev``); process 0 removes, every process waits. Whether anything was there."""
    path = os.path.abspath(os.fspath(path))
    found = [p for p in (path, path + _NEXT, path + _PREV) if os.path.lexists(p)]
    if jax.process_index() == 0:
        for stale in found:
            _remove_path(stale)
    _sync(f"mirrorgrad-checkpoint-removed:{path}")
    return bool(found)


def _resolve(path: str) -> str:
    """The folder to read: ``path``, or a completed ``path.next`` left by an interrupted swap."""
    if os.path.isdir(path):
        return path
    if _completed_next(path):
        return path + _NEXT
    if os.path.isfile(path):
        raise CheckpointError(
            f"{path} is a file, not a mirrorgrad checkpoint folder. Checkpoints are orbax folders of arrays and "
            "JSON; files such as the pickles of mirrorgrad 0.1 are never loaded, because unpickling can run code"
        )
    raise CheckpointError(f"no checkpoint at {path}")


def _stored_arrays(folder: str) -> dict[str, dict[str, Any]]:
    """Group -> name -> orbax array metadata (``.shape``, ``.dtype``) of a checkpoint's arrays; nothing is allocated."""
    ocp = _orbax()
    try:
        # The handler reads the item's own metadata. A Checkpointer would also look for its
        # step file inside ``arrays/``, where a composite save never writes one, and log a
        # warning about it on every read.
        stored = ocp.StandardCheckpointHandler().metadata(pathlib.Path(folder) / "arrays")
    except Exception as err:
        raise CheckpointError(f"{folder}: cannot read the array metadata ({type(err).__name__}: {err})") from None
    stored = getattr(stored, "item_metadata", stored)
    stored = getattr(stored, "tree", stored)
    if not isinstance(stored, Mapping) or not all(isinstance(a, Mapping) for a in stored.values()):
        raise CheckpointError(f"{folder}: the arrays are not stored as named groups; not a mirrorgrad checkpoint")
    return {group: dict(arrays) for group, arrays in stored.items()}


def _complete_targets(folder: str, targets: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """``targets`` plus a host (numpy) target for every stored array it does not name (orbax restores whole trees)."""
    out: dict[str, dict[str, Any]] = {}
    for group, arrays in _stored_arrays(folder).items():
        wanted = targets.get(group, {})
        unknown = sorted(set(wanted) - set(arrays))
        if unknown:
            raise CheckpointError(f"{folder}: the checkpoint has no array(s) {unknown[:3]} in {group!r}")
        # np.empty only reserves address space: orbax reads the values into it.
        out[group] = {name: wanted.get(name, np.empty(info.shape, info.dtype)) for name, info in arrays.items()}
    return out


def _describe(shape: Any, dtype: Any) -> str:
    shape = tuple(int(d) for d in shape)
    dtype = np.dtype(dtype)
    return f"{shape} {dtype.name} ({int(np.prod(shape, dtype=object)) * dtype.itemsize} bytes)"


class CheckpointFile:
    """A checkpoint folder opened for reading: its JSON metadata is read, its arrays only on request.

    Made by :func:`open_checkpoint`. Reading the metadata first lets a caller decide what
    it needs (which dataset, which model) before any array is read, and read the arrays
    once, checked against the shapes it expects.

    Attributes:
      path: the path as given.
      folder: the folder read (``path``, or a completed ``path.next`` left mid-swap).
      meta: the checkpoint's metadata.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        self.folder = _resolve(os.path.abspath(self.path))
        ocp = _orbax()
        if not os.path.isdir(os.path.join(self.folder, "meta")) or not os.path.isdir(os.path.join(self.folder, "arrays")):
            inside = [name for name in ("best.ckpt", "last.ckpt") if os.path.isdir(os.path.join(self.folder, name))]
            if inside:  # a run's folder: the checkpoints are in it
                raise CheckpointError(f"{self.path} is a run's folder, not a checkpoint: give {os.path.join(self.path, inside[0])} (it holds {' and '.join(inside)})")
            raise CheckpointError(f"{self.path} is not a mirrorgrad checkpoint (it has no 'meta' and 'arrays' items)")
        try:
            with _checkpointer() as checkpointer:
                meta = checkpointer.restore(self.folder, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception as err:  # orbax raises many types for unreadable folders
            raise CheckpointError(f"{self.path}: cannot read the checkpoint metadata ({type(err).__name__}: {err})") from None
        if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
            found = meta.get("format") if isinstance(meta, dict) else None
            raise CheckpointError(f"{self.path} is a checkpoint of format {found!r}; this version reads format {CHECKPOINT_FORMAT}")
        self.meta: dict[str, Any] = meta
        self._stored: dict[str, dict[str, Any]] | None = None

    def stored_arrays(self) -> dict[str, dict[str, tuple[tuple[int, ...], np.dtype]]]:
        """Group -> name -> ``(shape, dtype)`` of every stored array, from orbax's metadata (nothing is allocated)."""
        if self._stored is None:
            self._stored = _stored_arrays(self.folder)
        return {
            group: {name: (tuple(int(d) for d in info.shape), np.dtype(info.dtype)) for name, info in arrays.items()}
            for group, arrays in self._stored.items()
            if group != _FORMAT_GROUP
        }

    def _checked_item(self, expected: Mapping[str, Mapping[str, Any]], targets: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
        """The restore targets of the ``expected`` groups, once every stored array in them has the expected shape."""
        stored = self.stored_arrays()
        item: dict[str, dict[str, Any]] = {}
        for group, wanted in expected.items():
            have = stored.get(group, {})
            extra = sorted(set(have) - set(wanted))
            if extra:
                raise CheckpointError(
                    f"{self.path}: its {group!r} group has {len(extra)} array(s) the model does not "
                    f"(e.g. {extra[:3]}); nothing was read"
                )
            for name, reference in wanted.items():
                if name not in have:
                    continue  # named by unflatten_like, with the model's other arrays
                shape, dtype = have[name]
                if shape != tuple(int(d) for d in np.shape(reference)):
                    ref_dtype = getattr(reference, "dtype", dtype)
                    raise CheckpointError(
                        f"{self.path}: {group} array {name!r} is stored as {_describe(shape, dtype)}, but the model's is "
                        f"{_describe(np.shape(reference), ref_dtype)}; refused before reading any array"
                    )
                if dtype.kind not in "biuf":
                    raise CheckpointError(f"{self.path}: {group} array {name!r} is stored as {dtype}, not a number type")
                target = targets.get(group, {}).get(name)
                item.setdefault(group, {})[name] = jax.ShapeDtypeStruct(shape, dtype) if target is None else target
        return item

    def read_arrays(
        self,
        *,
        expected: Mapping[str, Mapping[str, Any]] | None = None,
        targets: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Reads the arrays; with ``expected``, only those, and only once their stored shapes match.

        Args:
          expected: group -> name -> anything with a shape (``.shape`` / ``np.shape``): the
            arrays the caller will use, e.g. a freshly built model's. The stored shapes and
            dtypes are read from orbax's metadata first; an array of another shape, or
            one the caller does not have, is refused before anything is read or allocated.
            Groups it does not name (an optimizer state, when evaluating) are not read.
            Arrays it names that the checkpoint lacks are left out (the caller's
            :func:`unflatten_like` names them).
          targets: group -> name -> ``jax.ShapeDtypeStruct`` with a sharding, to restore
            arrays straight onto devices (each device reads its shard); the others come
            back as numpy.

        Returns:
          Group -> name -> array.

        Raises:
          CheckpointError: unreadable arrays, or (with ``expected``) a stored array whose
            shape or name does not fit.
        """
        ocp = _orbax()
        targets = targets or {}
        if expected is not None:
            item = self._checked_item(expected, targets)
            if not item:
                return {}
            restore = ocp.args.PyTreeRestore(item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item), partial_restore=True)
        elif targets:
            restore = ocp.args.StandardRestore(_complete_targets(self.folder, targets))
        else:
            restore = ocp.args.StandardRestore()
        try:
            with _checkpointer() as checkpointer:
                arrays = checkpointer.restore(self.folder, args=ocp.args.Composite(arrays=restore))["arrays"]
        except Exception as err:
            raise CheckpointError(f"{self.path}: cannot read the checkpoint arrays ({type(err).__name__}: {err})") from None
        return {g: dict(a) for g, a in arrays.items() if g != _FORMAT_GROUP}


def open_checkpoint(path: str | os.PathLike) -> CheckpointFile:
    """Opens a checkpoint written by :func:`save_checkpoint`: reads its metadata, not its arrays.

    Raises:
      CheckpointError: not a folder, not a mirrorgrad checkpoint, or of another format.
    """
    return CheckpointFile(path)


def load_checkpoint(
    path: str | os.PathLike,
    *,
    targets: Mapping[str, Mapping[str, Any]] | None = None,
    expected: Mapping[str, Mapping[str, Any]] | None = None,
) -> Checkpoint:
    """Reads a checkpoint written by :func:`save_checkpoint`; never unpickles anything.

    Args:
      path: the checkpoint folder.
      targets: optional group -> name -> ``jax.ShapeDtypeStruct`` (with a sharding) to
        restore arrays directly onto devices, e.g. onto another mesh (each device reads
        only its shard). Arrays it does not name, and every array without it, come back
        as numpy on the host.
      expected: optional group -> name -> array (or shape-dtype struct) the caller will
        use: stored shapes are checked against it from the metadata before anything is
        read, and only its groups are read (see :meth:`CheckpointFile.read_arrays`).
        Without it every stored array is allocated at the shape the checkpoint declares:
        pass it for a checkpoint you did not write yourself (the trainer's resume and
        :func:`~mirrorgrad_jax.train.load_trained_model` do).

    Returns:
      A :class:`Checkpoint`.

    Raises:
      CheckpointError: not a folder, not a mirrorgrad checkpoint, of another format, or
        (with ``expected``) arrays that do not fit.
    """
    ckpt = open_checkpoint(path)
    return Checkpoint(ckpt.read_arrays(expected=expected, targets=targets), ckpt.meta)
