"""Where arrays live on a mesh: replicated, row-sharded over ``model``, or over the whole mesh.

:class:`Placement` holds the one set of rules the trainer and the evaluator share. Tables
(any array of rank >= 1) are replicated by default; with ``shard_tables`` they are
row-sharded over ``model``; a table whose replica exceeds the per-device budget is
row-sharded over ``data`` x ``model`` (the ZeRO-3 / FSDP layout). The rule depends on shape
and dtype only, so a parameter and its optimizer moments always share a layout. Batches
``(rows, B)`` are split over ``data`` along ``B`` when ``B`` divides, else replicated (a
mean loss must see exactly ``B`` rows).

Example::

    placement = Placement(make_mesh("data=2,model=2"), shard_tables=True)
    params = placement.put(params)                        # row-sharded over `model`
    batch = placement.put_batch(np.asarray(host_batch))   # split over `data`
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mirrorgrad_jax.devices.mesh import DATA, MODEL

__all__ = ["EVAL_TILE_COPIES", "Placement"]

#: Score-sized arrays alive at once while ranking one tile (scores, masked scores, top-k work, hits).
EVAL_TILE_COPIES = 4


def _is_key(leaf: Any) -> bool:
    return hasattr(leaf, "dtype") and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


@dataclasses.dataclass
class Placement:
    """Where arrays live on one mesh: the placement rules of the trainer and the evaluator.

    Attributes:
      mesh: the ``(data, model)`` mesh.
      shard_tables: row-shard every table (rank >= 1) over ``model``.
      budget_bytes: a table whose replica is bigger is row-sharded over the whole mesh
        (``data`` x ``model``) even without ``shard_tables``; ``None`` never does.
      notes: what the rules could not do as asked (tables left replicated), each said once.
    """

    mesh: Mesh
    shard_tables: bool = False
    budget_bytes: int | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    _said: set = dataclasses.field(default_factory=set, init=False, repr=False)

    @property
    def data_size(self) -> int:
        return int(self.mesh.shape[DATA])

    @property
    def model_size(self) -> int:
        return int(self.mesh.shape[MODEL])

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    def _note(self, key: Any, text: str) -> None:
        """Records ``text`` unless something was already said about ``key`` (a table and its optimizer moments share one)."""
        if key not in self._said:
            self._said.add(key)
            self.notes.append(text)

    # -- tables ---------------------------------------------------------------------

    def table_spec(self, shape: Sequence[int], dtype: Any, name: str = "") -> PartitionSpec:
        """The partition of one array: replicated, rows over ``model``, or rows over the whole mesh."""
        shape = tuple(int(s) for s in shape)
        if not shape or (dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)):
            return PartitionSpec()
        rows = shape[0]
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        label = f"{name or 'an array'} {shape}"
        if self.budget_bytes is not None and nbytes > self.budget_bytes and self.mesh.devices.size > 1:
            everywhere = self.data_size * self.model_size
            if rows % everywhere == 0:
                return PartitionSpec((DATA, MODEL))
            if self.model_size > 1 and rows % self.model_size == 0:
                self._note((shape, "budget"), f"{label} exceeds the per-device budget; its {rows} rows do not divide by {everywhere} devices, so it is split over model={self.model_size} only")
                return PartitionSpec(MODEL)
            self._note((shape, "budget"), f"{label} exceeds the per-device budget but its {rows} rows do not divide by the mesh: replicated")
            return PartitionSpec()
        if self.shard_tables and self.model_size > 1:
            if rows % self.model_size == 0:
                return PartitionSpec(MODEL)
            self._note((shape, "model"), f"{label}: {rows} rows do not divide by model={self.model_size}: replicated")
        return PartitionSpec()

    def shardings(self, tree: Any) -> Any:
        """A tree of ``NamedSharding`` for ``tree`` (arrays or ``jax.ShapeDtypeStruct``), by :meth:`table_spec`."""
        paths, treedef = jax.tree_util.tree_flatten_with_path(tree)
        out = [
            NamedSharding(self.mesh, self.table_spec(np.shape(leaf), getattr(leaf, "dtype", None), jax.tree_util.keystr(path)))
            for path, leaf in paths
        ]
        return jax.tree_util.tree_unflatten(treedef, out)

    def put(self, tree: Any, shardings: Any = None) -> Any:
        """``tree`` on the mesh (default layout: :meth:`shardings`); arrays already placed are kept as they are.

        Each process supplies only its own devices' shards, from a value every process
        holds in full (host arrays, or arrays on a local device).
        """
        shardings = self.shardings(tree) if shardings is None else shardings
        return jax.tree.map(self._put_leaf, tree, shardings)

    def _put_leaf(self, leaf: Any, sharding: NamedSharding) -> Any:
        if isinstance(leaf, jax.Array) and leaf.sharding == sharding:
            return leaf
        if _is_key(leaf):
            # device_put refuses typed keys on a multi-process sharding: move their raw data.
            data = jax.device_put(jax.random.key_data(leaf), NamedSharding(self.mesh, PartitionSpec()))
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
        # From a host or local-device value every process holds: each process transfers
        # its own devices' slices; a global array is moved by XLA.
        return jax.device_put(leaf, sharding)

    # -- batches --------------------------------------------------------------------

    def batch_sharding(self, shape: Sequence[int], axis: int = -1) -> NamedSharding:
        """``axis`` (the batch rows) split over ``data`` when it divides, else replicated."""
        shape = tuple(shape)
        axis = axis % len(shape)
        if self.data_size == 1 or shape[axis] % self.data_size:
            return self.replicated
        spec = [None] * len(shape)
        spec[axis] = DATA
        return NamedSharding(self.mesh, PartitionSpec(*spec))

    def put_batch(self, batch: np.ndarray, axis: int = -1) -> jax.Array:
        """A host batch (every process holds the same one) on the mesh; each process feeds its own part."""
        host = np.asarray(batch)
        return jax.make_array_from_callback(host.shape, self.batch_sharding(host.shape, axis), lambda index: host[index])

    # -- evaluation -----------------------------------------------------------------

    def eval_user_block(self, requested: int, num_items: int) -> int:
        """Users per evaluation block: ``requested``, lowered so that one device's tile stays bounded.

        A device holds ``users / data`` rows of ``ceil(items / model)`` float32 scores, plus
        the masked copy and the top-k work on them (about :data:`EVAL_TILE_COPIES` tiles);
        that stays under the per-device budget whatever the catalogue size.
        """
        if self.budget_bytes is None:
            return requested
        width = -(-int(num_items) // self.model_size)
        per_device = max(1, self.budget_bytes // (EVAL_TILE_COPIES * 4 * width))
        return max(self.data_size, min(int(requested), per_device * self.data_size))

    # -- reporting ------------------------------------------------------------------

    def describe(self, trees: dict[str, Any]) -> dict[str, Any]:
        """The layout of placed trees: ``{"mesh": ..., "shards": {name: per-device shard shape}}`` for split arrays."""
        shards: dict[str, list[int]] = {}
        for group, tree in trees.items():
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
                if isinstance(leaf, jax.Array) and leaf.addressable_shards:
                    local = tuple(leaf.addressable_shards[0].data.shape)
                    if local != tuple(leaf.shape):
                        shards[f"{group}{jax.tree_util.keystr(path)}"] = list(local)
        return {
            "mesh": {DATA: self.data_size, MODEL: self.model_size},
            "devices": int(self.mesh.devices.size),
            "processes": len({d.process_index for d in self.mesh.devices.flat}),
            "shards": shards,
            "notes": list(self.notes),
        }
