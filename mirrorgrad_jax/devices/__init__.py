"""Scaling out: the device mesh, where tables and batches live, several processes.

Everything that knows about devices is in this package, besides the sharded ranking of
:mod:`mirrorgrad_jax.evaluation.sharded` that reads the same mesh; models never do. The
trainer and the evaluator call these pieces, and XLA's SPMD partitioner (``jax.jit`` over
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
  (:func:`mirrorgrad_jax.evaluation.sharded_ranking_fn`): each device masks and ranks its
  own item columns, the per-shard top-k lists are merged across ``model`` and gathered
  across ``data``;
* several processes join through :func:`initialize_distributed` (``jax.distributed``;
  on CPU the cross-process collectives are gloo over TCP); every process builds the same
  host data (seeded) and transfers only its own devices' part of each array: its slice
  of every batch (``jax.make_array_from_callback``) and its shards of every table.

Example::

    placement = Placement(make_mesh("data=2,model=2"), shard_tables=True)
    params = placement.put(params)                        # row-sharded over `model`
    batch = placement.put_batch(np.asarray(host_batch))   # split over `data`
"""

from mirrorgrad_jax.devices.mesh import AXES, DATA, MODEL, auto_budget_bytes, describe_mesh, make_mesh, parse_mesh_spec
from mirrorgrad_jax.devices.placement import Placement
from mirrorgrad_jax.devices.processes import initialize_distributed

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
]
