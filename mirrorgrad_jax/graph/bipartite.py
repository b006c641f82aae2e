"""User-item graphs: the normalised adjacencies of the reference models and PyG-style edge lists.

* ``A_sym = D^-1/2 A D^-1/2`` with binary degrees (:func:`normalized_bipartite_adjacency`;
  LightGCN, BM3, FREEDOM, LayerGCN, SELFCFED_LGN, SLMRec), LATTICE's row-normalised
  ``A + I`` (:func:`self_loop_row_normalized_adjacency`) and MGCN's summed-degree variant
  (:func:`summed_bipartite_adjacency`);
* directed edge lists ``(senders, receivers)`` (:func:`bipartite_edges`; MMGCN, GRCN,
  DualGNN, DRAGON, MVGAE) with their aggregations: as an adjacency for :func:`propagate`
  (:func:`edge_list_adjacency`), :func:`segment_mean`, :func:`segment_softmax` and the GCN
  edge weight :func:`symmetric_edge_norm`.

Builders run on the host once and return numpy arrays; aggregations are pure JAX.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mirrorgrad_jax.graph.coo import CooAdjacency, check_pairs, pair_counts, sorted_coo

__all__ = [
    "bipartite_edges",
    "edge_list_adjacency",
    "normalized_bipartite_adjacency",
    "segment_mean",
    "segment_softmax",
    "self_loop_row_normalized_adjacency",
    "summed_bipartite_adjacency",
    "symmetric_edge_norm",
]

#: Denominator guard of PyG's ``softmax``.
_SOFTMAX_EPS = 1e-16


def normalized_bipartite_adjacency(train: np.ndarray, num_users: int, num_items: int, *, eps: float = 1e-7) -> CooAdjacency:
    """The symmetric normalised user-item adjacency ``D^-1/2 A D^-1/2`` (the reference's ``A_sym``).

    Nodes are users ``0..U-1`` then items ``U..U+I-1``; every distinct train pair gives
    an edge in both directions with value ``1 / sqrt((d_u + eps) (d_i + eps))`` where
    ``d`` are binary degrees (duplicates merged).

    Args:
      train: ``(E, 2)`` int array of (user, item) pairs.
      num_users: U.
      num_items: I.
      eps: added to each degree before the inverse square root (1e-7 in the reference).

    Returns:
      A :class:`CooAdjacency` with ``2 * E_distinct`` entries (numpy arrays).
    """
    pairs = np.unique(np.asarray(train, dtype=np.int64), axis=0)
    users, items = pairs[:, 0], pairs[:, 1] + num_users
    num_nodes = num_users + num_items
    rows = np.concatenate([users, items])
    cols = np.concatenate([items, users])
    degree = np.bincount(rows, minlength=num_nodes).astype(np.float64) + eps
    values = 1.0 / np.sqrt(degree[rows] * degree[cols])
    order = np.lexsort((cols, rows))
    return CooAdjacency(
        rows[order].astype(np.int32), cols[order].astype(np.int32), values[order].astype(np.float32), num_nodes
    )


def self_loop_row_normalized_adjacency(train: np.ndarray, num_users: int, num_items: int) -> CooAdjacency:
    """LATTICE's user-item graph ``A_rw+I``: ``(A + I_N)`` divided by its row sums (the reference's ``A_rw+I``).

    ``A`` holds, for every train pair, its number of occurrences in both directions (the
    reference fills a sparse matrix from the interaction COO, which sums repeated pairs;
    the dataset loaders here refuse duplicates, so in practice every value is 1). Row ``r``
    of the result is ``(A[r] + e_r) / (sum_c A[r, c] + 1)``: rows sum to 1 and the matrix
    is NOT symmetric. Every node has its self-loop, so no row sum is 0.

    Args:
      train: ``(E, 2)`` int (user, item) pairs.
      num_users: U.
      num_items: I.

    Returns:
      A :class:`CooAdjacency` over ``U + I`` nodes with ``2 * E_distinct + U + I`` entries
      sorted by (row, col) (numpy arrays).

    Examples:
      >>> adj = self_loop_row_normalized_adjacency(np.array([[0, 0], [1, 0]]), 2, 1)
      >>> adj.values.astype(float).round(3).tolist()
      [0.5, 0.5, 0.5, 0.5, 0.333, 0.333, 0.333]
    """
    users, items, counts = pair_counts(train, num_users, num_items)
    num_nodes = num_users + num_items
    nodes = np.arange(num_nodes)
    rows = np.concatenate([users, items + num_users, nodes])
    cols = np.concatenate([items + num_users, users, nodes])
    values = np.concatenate([counts, counts, np.ones(num_nodes)])
    row_sum = np.bincount(rows, weights=values, minlength=num_nodes)
    return sorted_coo(rows, cols, values / row_sum[rows], num_nodes)


def summed_bipartite_adjacency(train: np.ndarray, num_users: int, num_items: int) -> CooAdjacency:
    """MGCN's normalised user-item graph: ``D^-1/2 A D^-1/2`` with summed-value degrees, no eps.

    Unlike :func:`normalized_bipartite_adjacency` (binary degrees + 1e-7), a pair that occurs
    ``c`` times has value ``c`` in ``A`` and the degree of a node is the SUM of its row, so
    a repeated pair counts ``c`` times; a 0 degree gives factor 0 instead of ``inf`` (no
    entry can touch such a node, so this only matters for the definition). Without repeated
    pairs every value is ``1 / sqrt(d_u d_i)``. The user rows (``rows < U``, the first
    half of the entries, sorted by row) form MGCN's ``R_n``, the ``U x I`` user-item block:
    ``R_n[u, i]`` is the entry at ``(u, U + i)``.

    Args:
      train: ``(E, 2)`` int (user, item) pairs.
      num_users: U.
      num_items: I.

    Returns:
      A :class:`CooAdjacency` over ``U + I`` nodes with ``2 * E_distinct`` entries sorted by
      (row, col) (numpy arrays).

    Examples:
      >>> adj = summed_bipartite_adjacency(np.array([[0, 0], [0, 1], [1, 0]]), 2, 2)
      >>> adj.values.astype(float).round(4).tolist()
      [0.5, 0.7071, 0.7071, 0.5, 0.7071, 0.7071]
    """
    users, items, counts = pair_counts(train, num_users, num_items)
    num_nodes = num_users + num_items
    rows = np.concatenate([users, items + num_users])
    cols = np.concatenate([items + num_users, users])
    values = np.concatenate([counts, counts])
    degree = np.bincount(rows, weights=values, minlength=num_nodes)
    inv_sqrt = np.zeros(num_nodes)
    np.divide(1.0, np.sqrt(degree), out=inv_sqrt, where=degree > 0)
    return sorted_coo(rows, cols, values * inv_sqrt[rows] * inv_sqrt[cols], num_nodes)


def bipartite_edges(
    train: np.ndarray, num_users: int, *, bidirectional: bool = True, dedupe: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """The directed PyG edge list ``(senders, receivers)`` of the train pairs.

    Node ids follow the reference: users ``0..U-1``, items ``U..U+I-1``. The first
    ``E`` edges go user -> item (``(u, U + i)``); with ``bidirectional`` the reversed copy
    (item -> user) follows, so edge ``e`` and edge ``E + e`` are the two directions of the
    same pair. PyG's default flow computes a message from the sender (``edge_index[0]``)
    and aggregates it at the receiver (``edge_index[1]``).

    Args:
      train: ``(E, 2)`` int array of (user, item) pairs.
      num_users: U, the offset added to item ids.
      bidirectional: append the reversed edges (every model except GRCN's routing step).
      dedupe: merge repeated pairs (sorted by user, then item). With ``False`` the pairs are
        kept in the given order, duplicates included, as the reference's raw COO matrix does.

    Returns:
      ``(senders, receivers)``, int32 arrays of length ``E`` or ``2E``.

    Examples:
      >>> s, r = bipartite_edges(np.array([[0, 1], [1, 0]]), num_users=2)
      >>> s.tolist(), r.tolist()
      ([0, 1, 3, 2], [3, 2, 0, 1])
    """
    pairs = check_pairs(train, num_users)
    if dedupe:
        pairs = np.unique(pairs, axis=0)
    users, items = pairs[:, 0], pairs[:, 1] + num_users
    if bidirectional:
        senders, receivers = np.concatenate([users, items]), np.concatenate([items, users])
    else:
        senders, receivers = users, items
    return senders.astype(np.int32), receivers.astype(np.int32)


def edge_list_adjacency(senders: np.ndarray, receivers: np.ndarray, num_nodes: int) -> CooAdjacency:
    """A PyG edge list as a unit-valued adjacency for :func:`propagate` (host, once).

    ``A[r, s]`` counts the edges ``s -> r``, so ``propagate(A, x)[r]`` is the sum of the
    messages ``x[s]`` that node ``r`` receives: PyG's ``aggr="add"`` for messages that
    depend on the sender only (divide by the in-degree for ``aggr="mean"``). A repeated
    edge stays two entries, as in the edge list. The entries are sorted by receiver, then
    sender. For an edge list that holds every edge in both directions
    (:func:`bipartite_edges` with ``bidirectional=True``) ``A`` equals its transpose entry by
    entry: pass ``symmetric=True`` to :func:`propagate`, so that the backward pass runs the
    fast kernel too.

    Unlike ``jax.ops.segment_sum(x[senders], receivers)`` (a scatter-add, whose CPU kernel
    is several times slower) the sums come from the row-sorted kernel; the two agree to
    float32 rounding (the order of each node's additions differs).

    Args:
      senders: ``(E,)`` int source node of each edge.
      receivers: ``(E,)`` int destination node of each edge.
      num_nodes: the number of nodes (rows and columns of ``A``).

    Returns:
      The row-sorted :class:`CooAdjacency`, float32 ones as values.
    """
    senders, receivers = np.asarray(senders).reshape(-1), np.asarray(receivers).reshape(-1)
    if senders.shape != receivers.shape:
        raise ValueError(f"senders and receivers differ in length: {senders.shape[0]} and {receivers.shape[0]}")
    if senders.size and (min(senders.min(), receivers.min()) < 0 or max(senders.max(), receivers.max()) >= num_nodes):
        raise ValueError(f"edge list has node ids outside 0..{num_nodes - 1}")
    return sorted_coo(receivers, senders, np.ones(senders.shape[0], np.float32), num_nodes)


def segment_mean(data: jax.Array, segment_ids: jax.Array, num_segments: int) -> jax.Array:
    """PyG mean aggregation: per-segment sum divided by ``max(count, 1)``.

    Empty segments get 0, as ``torch_scatter.scatter_mean`` gives.

    Args:
      data: ``(E, ...)`` values, one row per edge.
      segment_ids: ``(E,)`` int segment (receiver) of each row.
      num_segments: number of output rows (static).

    Returns:
      ``(num_segments, ...)`` means.
    """
    data = jnp.asarray(data)
    total = jax.ops.segment_sum(data, segment_ids, num_segments=num_segments)
    count = jax.ops.segment_sum(jnp.ones(data.shape[:1], data.dtype), segment_ids, num_segments=num_segments)
    count = jnp.maximum(count, 1).reshape((num_segments,) + (1,) * (data.ndim - 1))
    return total / count


def segment_softmax(logits: jax.Array, segment_ids: jax.Array, num_segments: int) -> jax.Array:
    """PyG ``softmax``: a softmax over the rows that share a segment id.

    ``exp(x - segment_max) / (segment_sum(exp(...)) + 1e-16)``; the maximum is treated as a
    constant (PyG detaches it, which leaves the gradient unchanged).

    Args:
      logits: ``(E,)`` or ``(E, H)`` scores, one row per edge.
      segment_ids: ``(E,)`` int segment (receiver) of each row.
      num_segments: number of segments (static).

    Returns:
      Weights with the shape of ``logits``, summing to 1 (up to the 1e-16 guard) within
      every non-empty segment.
    """
    logits = jnp.asarray(logits)
    seg_max = jax.lax.stop_gradient(jax.ops.segment_max(logits, segment_ids, num_segments=num_segments))
    unnorm = jnp.exp(logits - seg_max[segment_ids])
    denom = jax.ops.segment_sum(unnorm, segment_ids, num_segments=num_segments) + _SOFTMAX_EPS
    return unnorm / denom[segment_ids]


def symmetric_edge_norm(senders: jax.Array, receivers: jax.Array, num_nodes: int) -> jax.Array:
    """Per-edge GCN weight ``(d_src d_dst)^-1/2`` of the DualGNN / DRAGON conv.

    Degrees count how often a node appears as a **sender** (``degree(edge_index[0])`` in the
    reference); on a bidirectional edge list that is the node degree. A node that never
    sends has degree 0, and its inverse square root is taken as 0 instead of ``inf``.

    Args:
      senders: ``(E,)`` int source node of each edge.
      receivers: ``(E,)`` int target node of each edge.
      num_nodes: N (static).

    Returns:
      ``(E,)`` float32 weights; ``out[dst] = sum_e w_e x[src_e]`` is the reference conv.
    """
    senders, receivers = jnp.asarray(senders), jnp.asarray(receivers)
    degree = jax.ops.segment_sum(jnp.ones(senders.shape, jnp.float32), senders, num_segments=num_nodes)
    inv_sqrt = jnp.where(degree > 0, jax.lax.rsqrt(jnp.maximum(degree, 1.0)), 0.0)
    return inv_sqrt[senders] * inv_sqrt[receivers]
