"""Scaling out: the device mesh, where tables and batches live, sharded ranking, several processes.

Everything that knows about devices is here; models never do. The trainer and the
evaluator call these pieces, and XLA's SPMD partitioner (``jax.jit`` over
``NamedSharding`` inputs) turns the one-device program into one program over the mesh:

* the mesh has two axes, ``data`` and ``model`` (:func:`make_mesh`, spelled
  ``"data=2,model=2"``; ``"auto"`` puts every device on ``data``);
* training batches ``(rows, B)`` are split over ``data`` along ``B``; a batch whose
  ``B`` does not divide by the ``data`` size (the last, smaller batch) is replicated
  instead of padded, because a mean loss must see exactly ``B`` rows;
* tables (embedding tables, raw feature tables, graph edge arrays: any array of rank >= 1)
  are replicated by default; with ``shard_tables`` they are row-sharded over ``model``,
  and any table whose replica would exceed the per-device budget is row-sharded over the
  whole mesh (``data`` x ``model``, the ZeRO-3 / FSDP layout), so that it fits. A table
  whose rows do not divide by the axis size stays replicated and :attr:`Placement.notes`
  says so. The rule depends on the shape and dtype only, so a parameter and its optimizer
  moments always share a layout;
* ranking is sharded by user blocks over ``data`` and by items over ``model``
  (:func:`sharded_ranking_fn`): each device masks and ranks its own item columns, the
  per-shard top-k lists are merged across ``model`` and gathered across ``data``;
* several processes join through :func:`initialize_distributed` (``jax.distributed``;
  on CPU the cross-process collectives are gloo over TCP); every process builds the same
  host data (seeded) and transfers only its own devices' part of each array: its slice
  of every batch (``jax.make_array_from_callback``) and its shards of every table.

Example::

    placement = Placement(make_mesh("data=2,model=2"), shard_tables=True)
    params = placement.put(params)                        # row-sharded over `model`
    batch = placement.put_batch(np.asarray(host_batch))   # split over `data`
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from mirrorgrad_jax.errors import ConfigError
from mirrorgrad_jax.evaluation import MASK_SCORE

__all__ = [
    "AXES",
    "DATA",
    "MODEL",
    "Placement",
    "auto_budget_bytes",
    "describe_mesh",
    "initialize_distributed",
    "make_mesh",
    "parse_mesh_spec",
    "place_user_blocks",
    "sharded_ranking_fn",
]

DATA = "data"
MODEL = "model"
AXES: tuple[str, str] = (DATA, MODEL)
#: Share of a device's memory one replicated table may take before the automatic budget
#: splits it: a trainable table costs about four copies (value, gradient, two Adam
#: moments), and the rest of the step needs room too.
AUTO_BUDGET_SHARE = 8
#: Score-sized arrays alive at once while ranking one tile (scores, masked scores, top-k work, hits).
EVAL_TILE_COPIES = 4


def parse_mesh_spec(spec: str | None, num_devices: int) -> dict[str, int]:
    """``"data=2,model=2"`` -> ``{"data": 2, "model": 2}``, checked against the devices there are.

    ``None``, ``""`` and ``"auto"`` put every device on ``data``. An axis left out gets
    what remains: ``"model=2"`` on 8 devices is ``data=4,model=2``; ``"data=2"`` is
    ``data=2,model=1``. A mesh may use fewer devices than there are (the first ones).

    Raises:
      ConfigError: an unknown axis, a size that is not a positive integer, a repeated
        axis, more devices than there are, or a ``model`` size that does not divide them.
    """
    if num_devices < 1:
        raise ConfigError(f"no devices to build a mesh on (got {num_devices})")
    text = "" if spec is None else str(spec).strip().lower()
    if text in ("", "auto"):
        return {DATA: num_devices, MODEL: 1}
    sizes: dict[str, int] = {}
    for part in text.split(","):
        key, sep, value = (p.strip() for p in part.partition("="))
        if not sep or key not in AXES:
            raise ConfigError(f"mesh {spec!r}: expected axis=size pairs over {list(AXES)}, e.g. 'data=2,model=2' (or 'auto')")
        if key in sizes:
            raise ConfigError(f"mesh {spec!r}: axis {key!r} is given twice")
        try:
            size = int(value)
        except ValueError:
            raise ConfigError(f"mesh {spec!r}: the size of {key!r} must be a positive integer, got {value!r}") from None
        if size < 1:
            raise ConfigError(f"mesh {spec!r}: the size of {key!r} must be a positive integer, got {size}")
        sizes[key] = size
    if DATA not in sizes:
        if num_devices % sizes[MODEL]:
            raise ConfigError(f"mesh {spec!r}: model={sizes[MODEL]} does not divide the {num_devices} devices")
        sizes[DATA] = num_devices // sizes[MODEL]
    sizes.setdefault(MODEL, 1)
    needed = sizes[DATA] * sizes[MODEL]
    if needed > num_devices:
        raise ConfigError(f"mesh {spec!r} needs {needed} devices, but there are {num_devices} ({_device_words()})")
    return {DATA: sizes[DATA], MODEL: sizes[MODEL]}


def _device_words() -> str:
    devices = jax.devices()
    kind = f"{devices[0].platform}" if devices else "none"
    hint = "; on a CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N simulates N devices" if kind == "cpu" else ""
    return f"{len(devices)} {kind} device(s) over {jax.process_count()} process(es){hint}"


def make_mesh(spec: str | None = "auto", devices: Sequence[Any] | None = None) -> Mesh:
    """The ``(data, model)`` mesh a spec describes (see :func:`parse_mesh_spec`).

    Both axes are ``AxisType.Auto``: XLA propagates shardings from the inputs, so code
    written for one device runs unchanged. With several processes the mesh must use every
    device of every process.

    Raises:
      ConfigError: a bad spec, or a multi-process mesh that leaves devices out.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = parse_mesh_spec(spec, len(devices))
    count = sizes[DATA] * sizes[MODEL]
    if jax.process_count() > 1 and count != len(devices):
        raise ConfigError(
            f"mesh {spec!r} uses {count} of the {len(devices)} devices; with {jax.process_count()} processes "
            "the mesh must use every device (e.g. --mesh auto)"
        )
    return jax.make_mesh((sizes[DATA], sizes[MODEL]), AXES, axis_types=(AxisType.Auto,) * 2, devices=devices[:count])


def describe_mesh(mesh: Mesh) -> str:
    """``"data=2 x model=2 (4 cpu devices, 1 process)"``."""
    platform = mesh.devices.flat[0].platform
    processes = len({d.process_index for d in mesh.devices.flat})
    return (
        f"data={mesh.shape[DATA]} x model={mesh.shape[MODEL]} ({mesh.devices.size} {platform} device(s), "
        f"{processes} process{'es' if processes > 1 else ''})"
    )


def auto_budget_bytes(mesh: Mesh) -> int:
    """The default per-table budget: 1/:data:`AUTO_BUDGET_SHARE` of one device's memory.

    A device's memory is its ``memory_stats()["bytes_limit"]`` (GPUs, TPUs); simulated CPU
    devices share the host's RAM, so there it is the physical memory divided by the number
    of devices this process holds.
    """
    local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
    device = local[0] if local else jax.local_devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]) // AUTO_BUDGET_SHARE
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 16 * 2**30
    return int(total) // max(1, len(local)) // AUTO_BUDGET_SHARE


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


# -- evaluation ---------------------------------------------------------------------------


def place_user_blocks(mesh: Mesh, *blocks: np.ndarray) -> tuple[jax.Array, ...]:
    """Evaluation index arrays ``(num_blocks, user_block, ...)`` with each block's users split over ``data``."""
    out = []
    for host in blocks:
        host = np.asarray(host)
        spec = PartitionSpec(None, DATA, *([None] * (host.ndim - 2)))
        out.append(jax.make_array_from_callback(host.shape, NamedSharding(mesh, spec), lambda index, h=host: h[index]))
    return tuple(out)


def sharded_ranking_fn(
    scores_fn: Callable[[Any, jax.Array], jax.Array], mesh: Mesh, block_shape: tuple[int, int], k: int
) -> Callable[..., tuple[jax.Array, jax.Array]]:
    """The evaluator's block function over a mesh: users over ``data``, items over ``model``.

    The model's ``scores_fn`` runs as one SPMD program and its ``(B, I)`` scores are
    constrained to ``(data, model)`` tiles, so no device ever holds more than
    ``B / data x ceil(I / model)`` scores. On each tile the user's train items (those in
    the tile's item range) are masked to :data:`~mirrorgrad_jax.evaluation.MASK_SCORE`
    and a local top-``k`` is taken; the ``model`` shards' lists are gathered and merged
    with a second top-``k``. Item columns that only pad ``I`` to a multiple of ``model``
    score ``-inf`` and never rank. Ties go to the lower item id, as in the one-device
    :func:`~mirrorgrad_jax.evaluation.masked_top_k_hits`: each local list is ordered that
    way and the merge keeps shards in item order.

    Args:
      scores_fn: ``scores_fn(model_state, users) -> (B, I)``.
      mesh: the ``(data, model)`` mesh; ``B`` must divide by its ``data`` size.
      block_shape: ``(B, I)``.
      k: list length (``<= I``).

    Returns:
      A jitted ``fn(model_state, users, train_idx, target_idx, b) -> (top_items, hits)``
      taking the evaluator's block arrays (see :func:`place_user_blocks`) and the block
      index; both outputs are ``(B, k)`` and replicated on every device.
    """
    users_per_block, num_items = block_shape
    data, model = int(mesh.shape[DATA]), int(mesh.shape[MODEL])
    if users_per_block % data:
        raise ValueError(f"user block {users_per_block} does not divide by data={data}")
    width = -(-num_items // model)
    padded = width * model
    k_local = min(k, width)

    def local(scores, train, targets):
        offset = jax.lax.axis_index(MODEL) * width
        rows = jnp.arange(scores.shape[0])[:, None]
        column = train - offset
        inside = (train >= 0) & (train < num_items) & (column >= 0) & (column < width)
        column = jnp.where(inside, column, width)  # out of this tile: dropped by the scatter
        masked = scores.at[rows, column].set(jnp.asarray(MASK_SCORE, scores.dtype), mode="drop")
        values, ids = jax.lax.top_k(masked, k_local)
        ids = ids.astype(jnp.int32) + offset.astype(jnp.int32)
        values = jax.lax.all_gather(values, MODEL, axis=1, tiled=True)
        ids = jax.lax.all_gather(ids, MODEL, axis=1, tiled=True)
        _, best = jax.lax.top_k(values, k)
        ids = jnp.take_along_axis(ids, best, axis=1)
        hits = jnp.any(ids[:, :, None] == targets[:, None, :], axis=-1)
        ids = jax.lax.all_gather(ids, DATA, axis=0, tiled=True)
        hits = jax.lax.all_gather(hits, DATA, axis=0, tiled=True)
        return ids, hits

    ranked = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(PartitionSpec(DATA, MODEL), PartitionSpec(DATA), PartitionSpec(DATA)),
        out_specs=(PartitionSpec(), PartitionSpec()),
        # The gathers leave every device with the same lists; the checker cannot see that.
        check_vma=False,
    )
    tiles = NamedSharding(mesh, PartitionSpec(DATA, MODEL))

    def block(model_state, users, train_idx, target_idx, b):
        scores = scores_fn(model_state, users[b])
        if scores.shape != tuple(block_shape):
            raise ValueError(f"scores_fn returned shape {scores.shape}, expected (user_block, num_items) = {tuple(block_shape)}")
        if padded != num_items:
            scores = jnp.pad(scores, ((0, 0), (0, padded - num_items)), constant_values=-jnp.inf)
        scores = jax.lax.with_sharding_constraint(scores, tiles)
        return ranked(scores, train_idx[b], target_idx[b])

    return jax.jit(block)


# -- several processes --------------------------------------------------------------------


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer") from None


def initialize_distributed(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    timeout_s: int = 300,
) -> bool:
    """Joins this process to a multi-process JAX run (``jax.distributed.initialize``).

    Values left as ``None`` come from ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``
    and ``JAX_PROCESS_ID``. ``coordinator="auto"`` lets JAX detect the cluster (SLURM,
    Open MPI, Kubernetes...). Nothing given anywhere: a single process, nothing done.
    Must run before anything touches a device.

    Args:
      coordinator: ``host:port`` of process 0's coordinator service.
      num_processes: how many processes take part.
      process_id: this process's rank, ``0 .. num_processes - 1``.
      timeout_s: how long to wait for the other processes.

    Returns:
      True when this process is now part of a distributed run.

    Raises:
      ConfigError: an incomplete or inconsistent set of values.
    """
    coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    num_processes = _env_int("JAX_NUM_PROCESSES") if num_processes is None else num_processes
    process_id = _env_int("JAX_PROCESS_ID") if process_id is None else process_id
    if coordinator is None and num_processes is None and process_id is None:
        return False
    if jax.distributed.is_initialized():
        return True
    if coordinator == "auto":
        jax.distributed.initialize(initialization_timeout=timeout_s)
        return True
    missing = [name for name, value in (("--coordinator", coordinator), ("--num-processes", num_processes), ("--process-id", process_id)) if value is None]
    if missing:
        raise ConfigError(f"a multi-process run needs --coordinator, --num-processes and --process-id (or JAX_* variables); missing {', '.join(missing)}")
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise ConfigError(f"--process-id must be in 0..{num_processes - 1} and --num-processes >= 1, got {process_id} of {num_processes}")
    if ":" not in coordinator:
        raise ConfigError(f"--coordinator must be host:port, got {coordinator!r}")
    jax.distributed.initialize(
        coordinator_address=coordinator, num_processes=num_processes, process_id=process_id, initialization_timeout=timeout_s
    )
    return True
