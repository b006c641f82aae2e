"""Graphs as flat edge arrays (COO) with segment-sum propagation.

Static shapes, no Python loops over nodes or edges: an adjacency is three arrays
(rows, cols, values) sorted by row, and ``A @ X`` sums each row's entries in order (a
CSR sparse-dense product on the CPU, a gather followed by ``jax.ops.segment_sum``
elsewhere; bit-identical, see :func:`propagate` and ``benchmarks/propagation.py``).
The module holds the graph building blocks of spec section 3.0:

* user-item graphs: the normalised adjacency ``A_sym`` (:func:`normalized_bipartite_adjacency`),
  PyG-style edge lists (:func:`bipartite_edges`) with their aggregations
  (:func:`edge_list_adjacency` for :func:`propagate`, :func:`segment_mean`,
  :func:`segment_softmax`, :func:`symmetric_edge_norm`) and the per-epoch edge sample of
  FREEDOM / LayerGCN (:func:`sample_edges_degree_sensitive`);
* item-item kNN graphs stored as fixed-width neighbour lists ``idx (I, k)``, ``val (I, k)``
  (:func:`knn_item_graph`, :func:`combine_knn`, :func:`knn_propagate`);
* the user-user co-occurrence graph of DualGNN / DRAGON (:func:`build_user_graph`,
  :func:`sample_user_neighbours`).

Host-side builders (run once, or once per epoch outside ``jit``) take and return numpy
arrays; everything used inside a training step is a pure ``jax.numpy`` function.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
from jax.interpreters import ad, batching, mlir

__all__ = [
    "CooAdjacency",
    "UserNeighbourLists",
    "bipartite_edges",
    "build_user_graph",
    "column_order",
    "combine_knn",
    "edge_list_adjacency",
    "kept_edge_count",
    "knn_column_order",
    "knn_item_graph",
    "knn_propagate",
    "knn_topk_cosine",
    "normalize_knn_values",
    "normalized_bipartite_adjacency",
    "pack_user_graph",
    "propagate",
    "layer_mean_propagate",
    "sample_edges_degree_sensitive",
    "sample_user_neighbours",
    "segment_mean",
    "segment_softmax",
    "symmetric_edge_norm",
]

# Degree epsilon of the reference's ``_normalize_adj_m`` (FREEDOM, LayerGCN, DualGNN, DRAGON).
_DEGREE_EPS = 1e-7
# Denominator guard of PyG's ``softmax``.
_SOFTMAX_EPS = 1e-16


class CooAdjacency(NamedTuple):
    """A sparse square matrix over ``num_nodes`` nodes, entries sorted by row."""

    rows: np.ndarray | jax.Array
    cols: np.ndarray | jax.Array
    values: np.ndarray | jax.Array
    num_nodes: int


def _check_pairs(train: Any, num_users: int, num_items: int | None = None) -> np.ndarray:
    """Returns ``train`` as an ``(E, 2)`` int64 array after range checks."""
    pairs = np.asarray(train)
    if pairs.ndim != 2 or pairs.shape[1] < 2:
        raise ValueError(f"train pairs must have shape (E, 2), got {pairs.shape}")
    pairs = pairs[:, :2].astype(np.int64)
    if len(pairs):
        if pairs.min() < 0:
            raise ValueError(f"train pairs contain a negative id ({int(pairs.min())})")
        if pairs[:, 0].max() >= num_users:
            raise ValueError(f"train pairs contain user {int(pairs[:, 0].max())}, but num_users={num_users}")
        if num_items is not None and pairs[:, 1].max() >= num_items:
            raise ValueError(f"train pairs contain item {int(pairs[:, 1].max())}, but num_items={num_items}")
    return pairs


# ---------------------------------------------------------------------------------------
# User-item adjacency (A_sym) and COO propagation.
# ---------------------------------------------------------------------------------------


def normalized_bipartite_adjacency(train: np.ndarray, num_users: int, num_items: int, *, eps: float = 1e-7) -> CooAdjacency:
    """The symmetric normalised user-item adjacency ``D^-1/2 A D^-1/2`` (spec section 3.0, A_sym).

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


def layer_mean_propagate(
    adjacency: CooAdjacency, x: jax.Array, n_layers: int, *, symmetric: bool = False, column_order: Any = None
) -> jax.Array:
    """LightGCN's output: the mean of ``x, A x, ..., A^n_layers x`` (``symmetric``, ``column_order`` as in :func:`propagate`)."""
    total = x
    for _ in range(n_layers):
        x = propagate(adjacency, x, symmetric=symmetric, column_order=column_order)
        total = total + x
    return total / (n_layers + 1)


def column_order(cols: jax.Array | np.ndarray) -> np.ndarray:
    """The entries sorted by column, ties in entry order (host, once): ``argsort(cols)``, stable.

    For a COO adjacency whose STRUCTURE stays fixed while its values change (edge dropout
    that masks values), pass it to :func:`propagate` as ``column_order``: the backward pass
    then reads the transposed entries with the row-sorted kernel instead of a scatter-add.

    Args:
      cols: ``(E,)`` (or any shape, flattened) int column ids.

    Returns:
      ``(E,)`` int32 permutation of the entries.
    """
    return np.argsort(np.asarray(cols).reshape(-1), kind="stable").astype(np.int32)


def propagate(adjacency: CooAdjacency, x: jax.Array, *, symmetric: bool = False, column_order: Any = None) -> jax.Array:
    """``A @ x`` for a COO adjacency sorted by row: ``out[r] = sum_c A[r, c] * x[c]``.

    Each output row is summed in entry order, whatever the kernel (see
    ``benchmarks/results/propagation.md``): on the CPU a CSR sparse-dense product (XLA's
    own gather + segment sum is several times slower there), elsewhere a gather and a
    sorted ``segment_sum``; the two give bit-identical results. Differentiable in ``x``
    and in ``adjacency.values``, in reverse and forward mode.

    Args:
      adjacency: entries sorted by row.
      x: ``(num_nodes, ...)`` node features.
      symmetric: the caller's promise that ``A`` equals its transpose ENTRY BY ENTRY
        (both ``(r, c)`` and ``(c, r)`` present with bitwise equal values, as in
        :func:`normalized_bipartite_adjacency` and :func:`sample_edges_degree_sensitive`).
        The gradient with respect to ``x``, ``A^T g``, is then computed as ``A g`` with the
        fast kernel instead of a scatter-add; per column both sum the entries in row
        order, so the two are bit-identical (tested).
      column_order: :func:`column_order` of ``adjacency.cols``, for a matrix that is not
        symmetric entry by entry (e.g. a symmetric graph after an edge dropout of its
        values): the gradient ``A^T g`` is then the row-sorted kernel over the entries read
        in that order, bit-identical to the scatter-add (tested). Ignored with ``symmetric``.

    Returns:
      ``(num_nodes, ...)``, the trailing shape of ``x``.
    """
    if symmetric:
        transpose, order = "symmetric", None
    elif column_order is not None:
        transpose, order = "order", column_order
    else:
        transpose, order = "scatter", None
    return _sparse_product(adjacency.rows, adjacency.cols, adjacency.values, x, adjacency.num_nodes, transpose, order)


# Below a few entries per row on average, the CSR kernel's pass over the row pointers costs
# more than it saves (benchmarks/results/propagation.md: FREEDOM's sampled graph, 1.8 per
# row, ran 0.9x forward and 0.7x backward; Baby's A_sym, 8.9 per row, 5x and 4.5x): the
# segment-sum form is used instead.
_CSR_MIN_ENTRIES_PER_ROW = 3.0


def _sparse_product(rows, cols, values, x, num_rows: int, transpose: str, column_order=None) -> jax.Array:
    """``out[r] = sum over entries e of row r (in order) of values[e] * x[cols[e]]``; rows sorted."""
    x = jnp.asarray(x)
    if (
        x.ndim < 1
        or jnp.ndim(values) != 1
        or jnp.shape(values)[0] < _CSR_MIN_ENTRIES_PER_ROW * max(num_rows, 1)
        or jnp.shape(values)[0] == 0
        or jnp.result_type(values) != x.dtype
        or not jnp.issubdtype(x.dtype, jnp.floating)
    ):
        return _propagate_segment_sum(rows, cols, values, x, num_rows=num_rows)
    if column_order is None:
        column_order = jnp.zeros((0,), jnp.int32)
    return _propagate_p.bind(
        jnp.asarray(rows), jnp.asarray(cols), jnp.asarray(values), x, jnp.asarray(column_order),
        num_rows=int(num_rows), transpose=transpose,
    )


# The propagation primitive: one op with a CPU lowering (a CSR kernel) and a default
# lowering (gather + sorted segment sum), linear in x and in the values, with a transpose
# rule of its own so that the backward pass can run the fast kernel again: for a symmetric
# matrix on the same entries (transpose="symmetric"), for neighbour lists on the entries
# re-sorted by column (transpose="order", the stable column order passed as an operand),
# otherwise as the scatter-add that autodiff of the segment-sum form gives
# (transpose="scatter"). A primitive rather than a custom_vjp, so that forward-mode
# autodiff (the Hessian-vector products of mirrorgrad_jax.flatness) keeps working.


def _propagate_segment_sum(rows, cols, values, x, column_order=None, *, num_rows: int, transpose: str = "scatter"):
    del column_order, transpose  # the same sums either way
    messages = jnp.reshape(values, jnp.shape(values) + (1,) * (x.ndim - 1)) * x[cols]
    return jax.ops.segment_sum(messages, rows, num_segments=num_rows, indices_are_sorted=True)


def _propagate_csr(rows, cols, values, x, column_order=None, *, num_rows: int, transpose: str = "scatter"):
    from jax.experimental import sparse

    del column_order, transpose
    # Row pointers of the row-sorted entries: a binary search, no scatter.
    indptr = jnp.searchsorted(rows, jnp.arange(num_rows + 1, dtype=rows.dtype)).astype(cols.dtype)
    flat = x.reshape(x.shape[0], -1)
    matrix = sparse.BCSR((values, cols, indptr), shape=(num_rows, x.shape[0]), indices_sorted=True)
    return (matrix @ flat).reshape((num_rows,) + x.shape[1:])


@functools.lru_cache(maxsize=None)
def _jitted_propagate(num_rows: int, transpose: str):
    return jax.jit(functools.partial(_propagate_p.bind, num_rows=num_rows, transpose=transpose))


def _propagate_jvp(primals, tangents, *, num_rows, transpose):
    rows, cols, values, x, order = primals
    _, _, d_values, d_x, _ = tangents
    params = dict(num_rows=num_rows, transpose=transpose)
    out = _propagate_p.bind(rows, cols, values, x, order, **params)
    terms = []
    if type(d_x) is not ad.Zero:
        terms.append(_propagate_p.bind(rows, cols, values, d_x, order, **params))
    if type(d_values) is not ad.Zero:
        terms.append(_propagate_p.bind(rows, cols, d_values, x, order, **params))
    tangent = functools.reduce(jnp.add, terms) if terms else jnp.zeros(out.shape, out.dtype)
    return out, tangent


def _propagate_transpose(ct, rows, cols, values, x, order, *, num_rows, transpose):
    # Bilinear: exactly one of values / x is the unknown (linear) input.
    if type(ct) is ad.Zero:
        return [None] * 5
    if ad.is_undefined_primal(x):
        num_cols = x.aval.shape[0]
        if transpose == "symmetric":
            ct_x = _propagate_p.bind(rows, cols, values, ct, order, num_rows=num_rows, transpose="symmetric")
        elif transpose == "order":
            # A^T's entries sorted by their row (A's column), ties in A's entry order: per
            # output row the same summation order as the scatter-add below.
            ct_x = _sparse_product(cols[order], rows[order], values[order], ct, num_cols, "scatter")
        else:
            # The transpose of gather + segment sum, as autodiff of the segment-sum form gives it.
            messages = jnp.reshape(values, jnp.shape(values) + (1,) * (ct.ndim - 1)) * ct[rows]
            ct_x = jax.ops.segment_sum(messages, cols, num_segments=num_cols)
        return [None, None, None, ct_x, None]
    products = (ct[rows] * x[cols]).reshape(rows.shape[0], -1)
    return [None, None, jnp.sum(products, axis=1).astype(values.aval.dtype), None, None]


def _propagate_batch(args, dims, *, num_rows, transpose):
    rows, cols, values, x, order = args
    if dims[0] is None and dims[1] is None and dims[2] is None and dims[4] is None:
        # Only the features are batched: fold the batch into the trailing columns.
        out = _propagate_p.bind(rows, cols, values, jnp.moveaxis(x, dims[3], 1), order, num_rows=num_rows, transpose=transpose)
        return out, 1
    fn = functools.partial(_propagate_segment_sum, num_rows=num_rows)
    return jax.vmap(fn, in_axes=dims)(rows, cols, values, x, order), 0


_propagate_p = jax.extend.core.Primitive("sparse_rows_product")
_propagate_p.def_impl(lambda *args, num_rows, transpose: _jitted_propagate(num_rows, transpose)(*args))
_propagate_p.def_abstract_eval(
    lambda rows, cols, values, x, order, *, num_rows, transpose: jax.core.ShapedArray((num_rows,) + x.shape[1:], x.dtype)
)
ad.primitive_jvps[_propagate_p] = _propagate_jvp
ad.primitive_transposes[_propagate_p] = _propagate_transpose
batching.primitive_batchers[_propagate_p] = _propagate_batch
mlir.register_lowering(_propagate_p, mlir.lower_fun(_propagate_segment_sum, multiple_results=False))
mlir.register_lowering(_propagate_p, mlir.lower_fun(_propagate_csr, multiple_results=False), platform="cpu")


# ---------------------------------------------------------------------------------------
# PyG-style edge lists and their aggregations (MMGCN, GRCN, DualGNN, DRAGON, MVGAE).
# ---------------------------------------------------------------------------------------


def bipartite_edges(
    train: np.ndarray, num_users: int, *, bidirectional: bool = True, dedupe: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """The directed PyG edge list ``(senders, receivers)`` of the train pairs.

    Node ids follow spec section 3.0: users ``0..U-1``, items ``U..U+I-1``. The first
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

    Example:
      >>> s, r = bipartite_edges(np.array([[0, 1], [1, 0]]), num_users=2)
      >>> s.tolist(), r.tolist()
      ([0, 1, 3, 2], [3, 2, 0, 1])
    """
    pairs = _check_pairs(train, num_users)
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
    return _sorted_coo(receivers, senders, np.ones(senders.shape[0], np.float32), num_nodes)


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


# ---------------------------------------------------------------------------------------
# Per-epoch edge sampling (FREEDOM, LayerGCN pre_epoch_processing).
# ---------------------------------------------------------------------------------------


def kept_edge_count(num_edges: int, dropout: float) -> int:
    """``int(E * (1 - p))``, evaluated in floating point exactly as the reference does.

    Note ``kept_edge_count(100, 0.8) == 19`` and ``kept_edge_count(100, 0.9) == 9``: ``1 - p``
    is slightly below 0.2 / 0.1 in binary floating point and the reference truncates the
    same way (``int(edge_values.size(0) * (1. - dropout))``).
    """
    return int(num_edges * (1.0 - dropout))


def _renormalised_mirror_np(users: np.ndarray, items: np.ndarray, num_users: int, num_items: int) -> CooAdjacency:
    deg_u = np.bincount(users, minlength=num_users).astype(np.float64)
    deg_i = np.bincount(items, minlength=num_items).astype(np.float64)
    values = 1.0 / np.sqrt((deg_u[users] + _DEGREE_EPS) * (deg_i[items] + _DEGREE_EPS))
    rows = np.concatenate([users, items + num_users])
    cols = np.concatenate([items + num_users, users])
    values = np.concatenate([values, values])
    order = np.lexsort((cols, rows))
    return CooAdjacency(
        rows[order].astype(np.int32),
        cols[order].astype(np.int32),
        values[order].astype(np.float32),
        num_users + num_items,
    )


@functools.partial(jax.jit, static_argnames=("num_users", "num_items", "keep", "degree_sensitive"))
def _sample_edges_jax(
    pairs: jax.Array, key: jax.Array, *, num_users: int, num_items: int, keep: int, degree_sensitive: bool
) -> tuple[jax.Array, jax.Array, jax.Array]:
    users, items = pairs[:, 0], pairs[:, 1]
    scores = jax.random.gumbel(key, users.shape, jnp.float32)
    if degree_sensitive:
        ones = jnp.ones(users.shape, jnp.float32)
        deg_u = jax.ops.segment_sum(ones, users, num_segments=num_users)
        deg_i = jax.ops.segment_sum(ones, items, num_segments=num_items)
        scores = scores - 0.5 * (jnp.log(deg_u[users] + _DEGREE_EPS) + jnp.log(deg_i[items] + _DEGREE_EPS))
    kept = jnp.argsort(-scores)[:keep]
    users, items = users[kept], items[kept]
    ones = jnp.ones((keep,), jnp.float32)
    deg_u = jax.ops.segment_sum(ones, users, num_segments=num_users)
    deg_i = jax.ops.segment_sum(ones, items, num_segments=num_items)
    values = jax.lax.rsqrt((deg_u[users] + _DEGREE_EPS) * (deg_i[items] + _DEGREE_EPS))
    rows = jnp.concatenate([users, items + num_users])
    cols = jnp.concatenate([items + num_users, users])
    values = jnp.concatenate([values, values])
    order = jnp.lexsort((cols, rows))
    return rows[order], cols[order], values[order]


def sample_edges_degree_sensitive(
    train_pairs_unique: np.ndarray | jax.Array,
    num_users: int,
    num_items: int,
    keep: int,
    rng_or_key: np.random.Generator | jax.Array,
    *,
    degree_sensitive: bool = True,
) -> CooAdjacency:
    """Samples ``keep`` train edges without replacement and re-normalises them (spec 3.0).

    The FREEDOM / LayerGCN ``pre_epoch_processing`` graph. Edge ``e = (u, i)`` is drawn with
    probability proportional to ``w_e = 1 / sqrt((d_u + 1e-7)(d_i + 1e-7))`` (degree-sensitive,
    which prunes edges of high-degree nodes) or uniformly, without replacement. This uses
    Gumbel-top-k: the ``keep`` largest of ``log w_e + G_e`` with i.i.d. standard Gumbel
    ``G_e`` form a sample with the same distribution as ``torch.multinomial(w, keep)``
    (sequential draws without replacement). The kept edges are re-normalised with their new
    degrees, ``1 / sqrt((d'_u + 1e-7)(d'_i + 1e-7))``, and mirrored to both directions, so the
    result always has ``2 * keep`` entries: shapes never change between epochs.

    Two backends, chosen by the type of ``rng_or_key``:

    * a ``numpy.random.Generator``: runs on the host, returns numpy arrays (the usual choice
      for a per-epoch refresh outside ``jit``);
    * a JAX PRNG key: runs as a jitted JAX computation (``num_users``, ``num_items``, ``keep``
      and ``degree_sensitive`` static), returns JAX arrays.

    The two backends draw different random numbers for the same seed.

    Args:
      train_pairs_unique: ``(E, 2)`` int (user, item) pairs, **distinct** (e.g.
        ``np.unique(train, axis=0)``); degrees are counted from these rows.
      num_users: U.
      num_items: I.
      keep: number of edges to keep, ``0 <= keep <= E``; the reference uses
        :func:`kept_edge_count` ``(E, dropout)``.
      rng_or_key: a numpy ``Generator`` or a JAX PRNG key.
      degree_sensitive: sample proportionally to ``w_e``; ``False`` samples a uniform subset
        (LayerGCN's odd epochs).

    Returns:
      A :class:`CooAdjacency` over ``U + I`` nodes with ``2 * keep`` entries sorted by
      (row, col).

    Example:
      >>> train = np.array([[0, 0], [0, 1], [1, 1]])
      >>> adj = sample_edges_degree_sensitive(train, 2, 2, 2, np.random.default_rng(0))
      >>> adj.rows.shape
      (4,)
    """
    num_edges = int(np.shape(train_pairs_unique)[0])
    if not 0 <= keep <= num_edges:
        raise ValueError(f"keep must be in 0..{num_edges} (the number of train edges), got {keep}")
    if isinstance(rng_or_key, np.random.Generator):
        pairs = _check_pairs(train_pairs_unique, num_users, num_items)
        users, items = pairs[:, 0], pairs[:, 1]
        scores = rng_or_key.gumbel(size=num_edges)
        if degree_sensitive:
            deg_u = np.bincount(users, minlength=num_users).astype(np.float64)
            deg_i = np.bincount(items, minlength=num_items).astype(np.float64)
            scores -= 0.5 * (np.log(deg_u[users] + _DEGREE_EPS) + np.log(deg_i[items] + _DEGREE_EPS))
        if keep == num_edges:
            kept = np.arange(num_edges)
        else:
            kept = np.argpartition(-scores, keep)[:keep]
        return _renormalised_mirror_np(users[kept], items[kept], num_users, num_items)
    if isinstance(rng_or_key, jax.Array):
        rows, cols, values = _sample_edges_jax(
            jnp.asarray(train_pairs_unique, jnp.int32),
            rng_or_key,
            num_users=num_users,
            num_items=num_items,
            keep=keep,
            degree_sensitive=degree_sensitive,
        )
        return CooAdjacency(rows, cols, values, num_users + num_items)
    raise TypeError(f"rng_or_key must be a numpy Generator or a JAX PRNG key, got {type(rng_or_key).__name__}")


# ---------------------------------------------------------------------------------------
# Item-item kNN graphs as fixed-width neighbour lists.
# ---------------------------------------------------------------------------------------


def _l2_normalise_rows(features: jax.Array) -> jax.Array:
    # The reference divides by the norm without a guard (an all-zero row becomes NaN);
    # here such a row gets cosine 0 with every item instead.
    norm = jnp.linalg.norm(features, axis=-1, keepdims=True)
    return features / jnp.where(norm > 0, norm, 1.0)


@functools.partial(jax.jit, static_argnames=("k", "chunk_size"))
def _chunked_topk(normed: jax.Array, k: int, chunk_size: int) -> tuple[jax.Array, jax.Array]:
    num_rows = normed.shape[0]
    num_chunks = -(-num_rows // chunk_size)
    padded = jnp.pad(normed, ((0, num_chunks * chunk_size - num_rows), (0, 0)))

    def one_chunk(rows: jax.Array) -> tuple[jax.Array, jax.Array]:
        # HIGHEST: TF32 matmuls on GPU could reorder near-ties in the top-k.
        sim = jnp.dot(rows, normed.T, precision=jax.lax.Precision.HIGHEST)
        return jax.lax.top_k(sim, k)

    values, indices = jax.lax.map(one_chunk, padded.reshape(num_chunks, chunk_size, -1))
    return values.reshape(-1, k)[:num_rows], indices.reshape(-1, k)[:num_rows].astype(jnp.int32)


def knn_topk_cosine(features: jax.Array, k: int, *, chunk_size: int = 2048) -> tuple[jax.Array, jax.Array]:
    """Top-k cosine neighbours of every row, computed in row chunks (never ``I x I`` at once).

    The similarity of a chunk of ``chunk_size`` rows against all rows is one
    ``(chunk_size, I)`` block reduced with ``jax.lax.top_k``. The row itself is a candidate,
    so (cosine 1) it is normally its own first neighbour, as in the reference. Ties are
    broken towards the lower column index (``lax.top_k``); torch's order for exact ties is
    unspecified.

    Args:
      features: ``(I, F)`` item features.
      k: neighbours per row, ``1 <= k <= I``.
      chunk_size: rows per similarity block (memory ``chunk_size * I`` floats).

    Returns:
      ``(idx, sim)``: ``(I, k)`` int32 neighbour ids and ``(I, k)`` float32 cosines, sorted
      by decreasing similarity.
    """
    features = jnp.asarray(features, jnp.float32)
    if features.ndim != 2:
        raise ValueError(f"features must have shape (I, F), got {features.shape}")
    num_rows = features.shape[0]
    if not 1 <= k <= num_rows:
        raise ValueError(f"k must be in 1..{num_rows} (the number of items), got {k}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    sim, idx = _chunked_topk(_l2_normalise_rows(features), k, min(chunk_size, num_rows))
    return idx, sim


def normalize_knn_values(idx: jax.Array, val: jax.Array) -> jax.Array:
    """Symmetric normalisation of neighbour lists: ``val[i, j] / sqrt(r_i r_{idx[i, j]})``.

    ``r`` are the row sums of the kept values (the degree of LATTICE's
    ``compute_normalized_laplacian`` and MGCN's ``get_sparse_laplacian(norm_type='sym')``).
    A row whose sum is not positive gets factor 0 (the reference maps ``0^-1/2 = inf`` to 0;
    a negative sum, which the reference turns into NaN, is also mapped to 0). Lists may hold
    repeated columns (merged graphs): entries add, which is what the dense matrix does.
    Differentiable in ``val``.

    Args:
      idx: ``(I, m)`` int neighbour ids.
      val: ``(I, m)`` values.

    Returns:
      ``(I, m)`` normalised values.
    """
    row_sum = jnp.sum(val, axis=1)
    inv_sqrt = jnp.where(row_sum > 0, jax.lax.rsqrt(jnp.where(row_sum > 0, row_sum, 1.0)), 0.0)
    return val * inv_sqrt[:, None] * inv_sqrt[idx]


def knn_item_graph(
    features: jax.Array | np.ndarray,
    k: int = 10,
    *,
    chunk_size: int = 2048,
    values: Literal["binary", "cosine"] = "binary",
) -> tuple[jax.Array, jax.Array]:
    """The frozen item-item kNN graph of spec section 3.0 as ``(idx, val)`` lists.

    * ``"binary"`` (K_bin, FREEDOM / DRAGON): the top-k pattern with value 1, normalised
      symmetrically with row counts on both sides, ``1 / sqrt((k + 1e-7)(k + 1e-7))``. Every
      row has exactly k entries, so every value is ``1 / (k + 1e-7)``.
    * ``"cosine"`` (K_val, LATTICE "original" graph, MGCN): the top-k cosine values,
      normalised by :func:`normalize_knn_values`.

    Args:
      features: ``(I, F)`` raw item features of one modality.
      k: neighbours per item, the item itself included (``knn_k`` = 10).
      chunk_size: rows per similarity block.
      values: ``"binary"`` or ``"cosine"``.

    Returns:
      ``(idx, val)``: ``(I, k)`` int32 and ``(I, k)`` float32.

    Example:
      >>> feats = np.random.default_rng(0).normal(size=(50, 8))
      >>> idx, val = knn_item_graph(feats, k=10, chunk_size=16)
      >>> idx.shape, round(float(val[0, 0]), 6)
      ((50, 10), 0.1)
    """
    if values not in ("binary", "cosine"):
        raise ValueError(f"values must be 'binary' or 'cosine', got {values!r}")
    idx, sim = knn_topk_cosine(features, k, chunk_size=chunk_size)
    if values == "binary":
        degree = np.float32(k) + np.float32(_DEGREE_EPS)
        return idx, jnp.full(idx.shape, 1.0 / np.sqrt(degree * degree), jnp.float32)
    return idx, normalize_knn_values(idx, sim)


def combine_knn(
    graphs_and_weights: Sequence[tuple[tuple[jax.Array, jax.Array], float | jax.Array]],
) -> tuple[jax.Array, jax.Array]:
    """Merges neighbour-list graphs ``sum_g w_g A_g`` by concatenating their lists.

    Repeated (row, column) entries are kept as separate list slots; propagation adds them,
    which equals adding the matrices.

    Args:
      graphs_and_weights: ``[((idx_g, val_g), w_g), ...]`` with ``idx_g``/``val_g`` of shape
        ``(I, k_g)``; ``w_g`` a scalar (may be a traced value).

    Returns:
      ``(idx, val)`` of shape ``(I, sum_g k_g)``, values pre-multiplied by their weights.

    Example:
      >>> mm_adj = combine_knn([(image_knn, 0.1), (text_knn, 0.9)])  # doctest: +SKIP
    """
    if not graphs_and_weights:
        raise ValueError("combine_knn needs at least one graph")
    idx = jnp.concatenate([jnp.asarray(g[0]) for g, _ in graphs_and_weights], axis=1)
    val = jnp.concatenate([w * jnp.asarray(g[1]) for g, w in graphs_and_weights], axis=1)
    return idx, val


def knn_column_order(idx: jax.Array | np.ndarray) -> np.ndarray:
    """The flattened neighbour-list slots sorted by neighbour id, ties in slot order (host, once).

    Pass it to :func:`knn_propagate` as ``column_order`` for a graph whose ``idx`` does not
    change (FREEDOM's frozen item graph): the backward pass then runs the row-sorted
    kernel on the transposed lists instead of a scatter-add.

    Args:
      idx: ``(I, m)`` int neighbour ids.

    Returns:
      ``(I * m,)`` int32 permutation of ``idx.reshape(-1)``'s slots.
    """
    return column_order(idx)


def knn_propagate(idx: jax.Array, val: jax.Array, x: jax.Array, *, column_order: jax.Array | np.ndarray | None = None) -> jax.Array:
    """``out[i] = sum_j val[i, j] * x[idx[i, j]]``: the kNN matrix times ``x``.

    Without ``column_order``: a gather and an ``einsum`` over the lists. With it (from
    :func:`knn_column_order` of the same ``idx``): the CSR kernel of :func:`propagate` both
    ways, 10-20x faster on the CPU (``benchmarks/results/propagation.md``). Each row is
    then summed in list order, sequentially: equal to the ``einsum`` to float32 rounding
    (a few ulps; XLA's dot reduces the ``m`` products in another order), not bit-identical.

    Args:
      idx: ``(I, m)`` int neighbour ids.
      val: ``(I, m)`` values (may be traced and differentiated).
      x: ``(I, ...)`` node features.
      column_order: ``knn_column_order(idx)``, or None.

    Returns:
      ``(I, ...)``, the same trailing shape as ``x``.
    """
    if column_order is None:
        return jnp.einsum("im,im...->i...", val, jnp.asarray(x)[idx])
    idx = jnp.asarray(idx)
    num_rows, width = idx.shape
    rows = jnp.repeat(jnp.arange(num_rows, dtype=idx.dtype), width)
    return _sparse_product(rows, idx.reshape(-1), jnp.reshape(val, -1), x, num_rows, "order", column_order)


# ---------------------------------------------------------------------------------------
# User-user co-occurrence graph (DualGNN, DRAGON).
# ---------------------------------------------------------------------------------------


class UserNeighbourLists(NamedTuple):
    """A user graph truncated to ``width`` neighbours per user, as padded arrays.

    Attributes:
      idx: ``(U, width)`` int32 neighbour ids, in the stored order (0 past ``lengths``).
      counts: ``(U, width)`` float32 co-occurrence counts (0 past ``lengths``).
      lengths: ``(U,)`` int32 number of valid neighbours, ``min(n_u, width)``.
    """

    idx: np.ndarray
    counts: np.ndarray
    lengths: np.ndarray


def _top_co_occurring_users(
    pairs: np.ndarray, num_users: int, max_neighbours: int, budget: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(a, b, c)`` sorted by (a, -c, b): user ``a``'s top neighbours ``b != a`` with ``c > 0``.

    ``pairs`` are distinct (user, item) rows sorted by user. Users are processed in contiguous
    blocks of about ``budget`` co-occurrence slots (one user with more slots forms a block
    alone): for every (a, i) of a block all users ``b`` of item ``i`` are enumerated with
    ``np.repeat`` arithmetic over an item -> users index, the keys ``a * U + b`` are sorted and
    run-length counted, and a second sort on one composite key orders each row by count.
    """
    users, items = pairs[:, 0], pairs[:, 1]
    num_items = int(items.max()) + 1
    users_by_item = users[np.argsort(items, kind="stable")]
    item_degree = np.bincount(items, minlength=num_items)
    item_start = np.cumsum(item_degree) - item_degree
    user_ptr = np.searchsorted(users, np.arange(num_users + 1))
    slots_per_user = np.bincount(users, weights=item_degree[items], minlength=num_users).astype(np.int64)
    bounds = np.flatnonzero(np.diff(np.cumsum(slots_per_user) // max(int(budget), 1))) + 1
    out_a, out_b, out_c = [], [], []
    for u0, u1 in zip(np.concatenate([[0], bounds]), np.concatenate([bounds, [num_users]])):
        p0, p1 = user_ptr[u0], user_ptr[u1]
        if p0 == p1:
            continue
        block_items = items[p0:p1]
        sizes = item_degree[block_items]
        first_slot = np.cumsum(sizes) - sizes
        neighbour = users_by_item[np.arange(int(sizes.sum())) + np.repeat(item_start[block_items] - first_slot, sizes)]
        key = np.repeat(users[p0:p1], sizes) * num_users + neighbour
        key.sort()
        new_run = np.empty(len(key), bool)
        new_run[0] = True
        np.not_equal(key[1:], key[:-1], out=new_run[1:])
        starts = np.flatnonzero(new_run)
        c = np.diff(np.append(starts, len(key)))
        key = key[starts]
        a, b = np.divmod(key, num_users)
        not_self = a != b
        a, b, c = a[not_self] - u0, b[not_self], c[not_self]
        if not len(a):
            continue
        # One int64 key orders by (row, count descending, neighbour id ascending); sorting it
        # is much faster than a lexsort of three columns.
        span = int(c.max()) + 1
        key = np.sort((a * span + (span - 1 - c)) * num_users + b)
        key, b = np.divmod(key, num_users)
        a, c = np.divmod(key, span)
        c = span - 1 - c
        per_row = np.bincount(a, minlength=int(u1 - u0))
        keep = np.arange(len(a)) - np.repeat(np.cumsum(per_row) - per_row, per_row) < max_neighbours
        out_a.append(a[keep] + u0)
        out_b.append(b[keep])
        out_c.append(c[keep])
    if not out_a:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    return np.concatenate(out_a), np.concatenate(out_b), np.concatenate(out_c)


def build_user_graph(
    train: np.ndarray, num_users: int, max_neighbours: int = 200, *, pair_budget: int = 1 << 20
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Builds MMRec's ``user_graph_dict`` from train pairs, for datasets without the file.

    The count between users ``a != b`` is the number of distinct items both interacted with
    (``|items(a) & items(b)|``, DualGNN's preprocessing script). Each user keeps the users
    with a positive count, sorted by decreasing count, at most ``max_neighbours`` of them.
    Equal counts are ordered by increasing user id (the reference's ``torch.topk`` leaves the
    order of ties unspecified, so this is a choice).

    Vectorised over blocks of users (co-occurrences enumerated with ``np.repeat`` arithmetic,
    counted by sorting); only building the output dict touches users one by one. About 1 s
    for Amazon Baby (118k train rows, 19k users, 7.3M co-occurrence slots) on one CPU core;
    the cost grows with ``sum_i deg(i)^2``, not with ``U^2``.

    Args:
      train: ``(E, 2)`` int (user, item) pairs; duplicates are merged.
      num_users: U; every user ``0..U-1`` gets an entry (empty arrays without neighbours).
      max_neighbours: neighbours kept per user (200 in the reference).
      pair_budget: approximate number of co-occurrence slots enumerated at once; bounds the
        memory at a few times ``8 * pair_budget`` bytes (only a user with more slots alone
        exceeds it).

    Returns:
      ``{user: (neighbour_ids int64 (n,), counts float32 (n,))}``, the format of
      ``user_graph_dict.npy`` accepted by :func:`sample_user_neighbours`.
    """
    if max_neighbours < 0:
        raise ValueError(f"max_neighbours must be non-negative, got {max_neighbours}")
    pairs = np.unique(_check_pairs(train, num_users), axis=0)
    if len(pairs):
        a, b, c = _top_co_occurring_users(pairs, num_users, max_neighbours, pair_budget)
    else:
        a = b = c = np.zeros(0, np.int64)
    bounds = np.searchsorted(a, np.arange(1, num_users))
    return dict(enumerate(zip(np.split(b, bounds), np.split(c.astype(np.float32), bounds))))


def pack_user_graph(
    user_graph: Mapping[int, tuple[Any, Any]], num_users: int, width: int
) -> UserNeighbourLists:
    """Converts a ``{user: (neighbour_ids, counts)}`` dict to padded arrays (host, once).

    Users missing from the mapping have no neighbours. Only the first ``width`` neighbours of
    each user are kept, which is all :func:`sample_user_neighbours` with ``k = width`` reads.

    Args:
      user_graph: the ``user_graph_dict`` mapping (lists or arrays).
      num_users: U.
      width: neighbours kept per user.

    Returns:
      A :class:`UserNeighbourLists`.
    """
    idx = np.zeros((num_users, width), np.int32)
    counts = np.zeros((num_users, width), np.float32)
    lengths = np.zeros(num_users, np.int32)
    for user, (neighbours, weights) in user_graph.items():
        user = int(user)
        if not 0 <= user < num_users:
            raise ValueError(f"user graph has user {user}, outside 0..{num_users - 1}")
        neighbours = np.asarray(neighbours, np.int64).reshape(-1)[:width]
        weights = np.asarray(weights, np.float32).reshape(-1)[:width]
        if len(neighbours) != len(weights):
            raise ValueError(f"user graph: user {user} has {len(neighbours)} neighbours but {len(weights)} weights")
        if len(neighbours) and (neighbours.min() < 0 or neighbours.max() >= num_users):
            raise ValueError(f"user graph: user {user} has a neighbour outside 0..{num_users - 1}")
        n = len(neighbours)
        idx[user, :n], counts[user, :n], lengths[user] = neighbours, weights, n
    return UserNeighbourLists(idx, counts, lengths)


def sample_user_neighbours(
    user_graph: Mapping[int, tuple[Any, Any]] | UserNeighbourLists,
    num_users: int,
    k: int = 40,
    *,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """DualGNN / DRAGON per-epoch ``topk_sample`` (spec section 3.4), vectorised over users.

    For a user with ``n`` stored neighbours:

    * ``n >= k``: the first ``k``;
    * ``0 < n < k``: the list is padded to ``k`` by repeatedly appending a uniformly random
      element of the *current, growing* list (slot ``p >= n`` copies slot ``j ~ U{0..p-1}``,
      which may itself be a copy), together with its count;
    * ``n = 0``: ids 0 with weights 0.

    Weights are the softmax over the ``k`` (padded) raw counts. The padding is resolved slot
    by slot (a loop over the ``k`` slots, vectorised across users); the draws come from
    ``rng`` rather than the global numpy state, so the stream differs from the reference
    while the distribution is the same.

    Args:
      user_graph: the ``{user: (neighbour_ids, counts)}`` dict, or its
        :func:`pack_user_graph` form (pack once with ``width >= k`` to skip the per-call
        conversion).
      num_users: U.
      k: neighbours per user (40 in the reference).
      rng: the numpy generator that draws the padding.

    Returns:
      ``(idx, weights)``: ``(U, k)`` int32 and ``(U, k)`` float32; ``h_u = sum_j
      weights[u, j] * rep[idx[u, j]]``.
    """
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    if isinstance(user_graph, UserNeighbourLists):
        packed = user_graph
        if packed.idx.shape[0] != num_users or packed.idx.shape[1] < k:
            raise ValueError(
                f"packed user graph has shape {packed.idx.shape}, expected ({num_users}, >= {k})"
            )
    else:
        packed = pack_user_graph(user_graph, num_users, k)
    lengths = np.minimum(packed.lengths, k).astype(np.int64)
    slots = np.arange(k)
    # The draw for slot p is uniform over the p slots already filled (unused when p < n).
    draws = rng.integers(0, np.maximum(slots, 1), size=(num_users, k))
    origin = np.zeros((num_users, k), np.int64)
    users = np.arange(num_users)
    for p in range(k):
        origin[:, p] = np.where(p < lengths, p, origin[users, draws[:, p]])
    idx = np.take_along_axis(packed.idx[:, :k], origin, axis=1)
    counts = np.take_along_axis(packed.counts[:, :k], origin, axis=1).astype(np.float64)
    weights = np.exp(counts - counts.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)
    empty = lengths == 0
    idx[empty] = 0
    weights[empty] = 0.0
    return idx.astype(np.int32), weights.astype(np.float32)


# --- LayerGCN / SELFCFED / MVGAE / ItemKNNCBF graphs ---

__all__ += ["knn_topk_shrink"]


@functools.partial(jax.jit, static_argnames=("k", "chunk_size"))
def _chunked_topk_shrink(features: jax.Array, shrink: jax.Array, k: int, chunk_size: int) -> tuple[jax.Array, jax.Array]:
    num_rows = features.shape[0]
    num_chunks = -(-num_rows // chunk_size)
    norms = jnp.linalg.norm(features, axis=-1)
    pad = num_chunks * chunk_size - num_rows
    rows = jnp.pad(features, ((0, pad), (0, 0))).reshape(num_chunks, chunk_size, -1)
    row_norms = jnp.pad(norms, (0, pad)).reshape(num_chunks, chunk_size)

    def one_chunk(block: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        chunk, chunk_norms = block
        # HIGHEST: TF32 matmuls on GPU could reorder near-ties in the top-k.
        dots = jnp.dot(chunk, features.T, precision=jax.lax.Precision.HIGHEST)
        denominator = chunk_norms[:, None] * norms[None, :] + shrink
        sim = jnp.where(denominator > 0, dots / jnp.where(denominator > 0, denominator, 1.0), 0.0)
        return jax.lax.top_k(sim, k)

    values, indices = jax.lax.map(one_chunk, (rows, row_norms))
    return values.reshape(-1, k)[:num_rows], indices.reshape(-1, k)[:num_rows].astype(jnp.int32)


def knn_topk_shrink(
    features: jax.Array | np.ndarray, k: int = 10, shrink: float = 10.0, *, chunk_size: int = 2048
) -> tuple[jax.Array, jax.Array]:
    """ItemKNNCBF's item-item graph K_shrink (spec section 3.0), as ``(idx, val)`` lists.

    ``sim_ij = f_i . f_j / (||f_i|| ||f_j|| + shrink)`` on the RAW features (no
    normalisation of the result); each row keeps its ``k`` largest VALUES, the item itself
    being a candidate like any other. Computed in blocks of ``chunk_size`` rows against all
    rows, so the ``I x I`` matrix never exists. With ``shrink = 0`` a pair involving an
    all-zero row gets similarity 0 (the reference divides by zero and gets NaN). Ties are
    broken towards the lower column index (``lax.top_k``; torch leaves the order unspecified).

    Args:
      features: ``(I, F)`` item features.
      k: values kept per row, ``1 <= k <= I`` (``knn_k`` = 10).
      shrink: added to the product of the norms, ``>= 0`` (10 in the reference).
      chunk_size: rows per similarity block (memory ``chunk_size * I`` floats).

    Returns:
      ``(idx, val)``: ``(I, k)`` int32 column ids and ``(I, k)`` float32 similarities, by
      decreasing similarity; the dense ``S`` has ``S[i, idx[i, m]] = val[i, m]``.

    Example:
      >>> feats = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
      >>> idx, val = knn_topk_shrink(feats, k=1, shrink=1.0)
      >>> idx[:, 0].tolist(), [round(float(v), 4) for v in val[:, 0]]
      ([1, 1, 2], [0.6667, 0.8, 0.9])
    """
    features = jnp.asarray(features, jnp.float32)
    if features.ndim != 2:
        raise ValueError(f"features must have shape (I, F), got {features.shape}")
    num_rows = features.shape[0]
    if not 1 <= k <= num_rows:
        raise ValueError(f"k must be in 1..{num_rows} (the number of items), got {k}")
    if not np.isfinite(shrink) or shrink < 0:
        raise ValueError(f"shrink must be a finite number >= 0, got {shrink}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    val, idx = _chunked_topk_shrink(features, jnp.float32(shrink), k, min(chunk_size, num_rows))
    return idx, val


# --- LATTICE / MGCN graphs ---

__all__ += [
    "learnable_knn_cosine",
    "self_loop_row_normalized_adjacency",
    "summed_bipartite_adjacency",
]


def _pair_counts(train: Any, num_users: int, num_items: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct (user, item) pairs and how often each occurs, as ``(users, items, counts)``."""
    pairs = _check_pairs(train, num_users, num_items)
    distinct, counts = np.unique(pairs, axis=0, return_counts=True)
    return distinct[:, 0], distinct[:, 1], counts.astype(np.float64)


def _sorted_coo(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, num_nodes: int) -> CooAdjacency:
    order = np.lexsort((cols, rows))
    return CooAdjacency(
        rows[order].astype(np.int32), cols[order].astype(np.int32), values[order].astype(np.float32), num_nodes
    )


def self_loop_row_normalized_adjacency(train: np.ndarray, num_users: int, num_items: int) -> CooAdjacency:
    """LATTICE's user-item graph ``A_rw+I``: ``(A + I_N)`` divided by its row sums (spec section 3.0).

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

    Example:
      >>> adj = self_loop_row_normalized_adjacency(np.array([[0, 0], [1, 0]]), 2, 1)
      >>> adj.values.astype(float).round(3).tolist()
      [0.5, 0.5, 0.5, 0.5, 0.333, 0.333, 0.333]
    """
    users, items, counts = _pair_counts(train, num_users, num_items)
    num_nodes = num_users + num_items
    nodes = np.arange(num_nodes)
    rows = np.concatenate([users, items + num_users, nodes])
    cols = np.concatenate([items + num_users, users, nodes])
    values = np.concatenate([counts, counts, np.ones(num_nodes)])
    row_sum = np.bincount(rows, weights=values, minlength=num_nodes)
    return _sorted_coo(rows, cols, values / row_sum[rows], num_nodes)


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

    Example:
      >>> adj = summed_bipartite_adjacency(np.array([[0, 0], [0, 1], [1, 0]]), 2, 2)
      >>> adj.values.astype(float).round(4).tolist()
      [0.5, 0.7071, 0.7071, 0.5, 0.7071, 0.7071]
    """
    users, items, counts = _pair_counts(train, num_users, num_items)
    num_nodes = num_users + num_items
    rows = np.concatenate([users, items + num_users])
    cols = np.concatenate([items + num_users, users])
    values = np.concatenate([counts, counts])
    degree = np.bincount(rows, weights=values, minlength=num_nodes)
    inv_sqrt = np.zeros(num_nodes)
    np.divide(1.0, np.sqrt(degree), out=inv_sqrt, where=degree > 0)
    return _sorted_coo(rows, cols, values * inv_sqrt[rows] * inv_sqrt[cols], num_nodes)


def learnable_knn_cosine(features: jax.Array, k: int, *, chunk_size: int = 2048) -> tuple[jax.Array, jax.Array]:
    """Top-k cosine lists of trainable features, differentiable in the kept values (LATTICE).

    The neighbour ids are chosen by :func:`knn_topk_cosine` under ``stop_gradient`` (row
    chunks, never ``I x I`` at once); the kept similarities are then recomputed as the dot
    products of the gathered L2-normalised rows, ``val[i, j] = n_i . n_{idx[i, j]}``. Their
    gradient is the one torch gives when it differentiates the values of ``topk`` of the
    dense cosine matrix (which flows only through the selected entries), at ``O(I k F)``
    memory. A row of zeros has cosine 0 with everything and a finite gradient (the
    reference would give NaN).

    Args:
      features: ``(I, F)`` item features (may be traced).
      k: neighbours per row, the row itself included, ``1 <= k <= I``.
      chunk_size: rows per similarity block of the neighbour search.

    Returns:
      ``(idx, val)``: ``(I, k)`` int32 neighbour ids and ``(I, k)`` float32 cosines, sorted
      by decreasing similarity at selection time.

    Example:
      >>> x = jnp.asarray(np.random.default_rng(0).normal(size=(20, 4)), jnp.float32)
      >>> g = jax.grad(lambda x: learnable_knn_cosine(x, 3)[1].sum())(x)
      >>> g.shape
      (20, 4)
    """
    features = jnp.asarray(features, jnp.float32)
    idx, _ = knn_topk_cosine(jax.lax.stop_gradient(features), k, chunk_size=chunk_size)
    # As _l2_normalise_rows, but with a finite gradient at a zero row (the norm's is NaN there).
    squared = jnp.sum(features * features, axis=-1, keepdims=True)
    normed = features / jnp.sqrt(jnp.where(squared > 0, squared, 1.0))
    return idx, jnp.sum(normed[:, None, :] * normed[idx], axis=-1)
