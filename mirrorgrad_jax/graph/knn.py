"""Item-item kNN graphs stored as fixed-width neighbour lists ``idx (I, k)``, ``val (I, k)``.

The lists are built in row chunks against all rows, so the ``I x I`` similarity matrix
never exists: cosine top-k (:func:`knn_topk_cosine`, :func:`knn_item_graph`; FREEDOM,
DRAGON, LATTICE, MGCN), its differentiable form for trainable features
(:func:`learnable_knn_cosine`; LATTICE), and ItemKNNCBF's shrunk similarity
(:func:`knn_topk_shrink`). :func:`combine_knn` sums several modalities' lists and
:func:`knn_propagate` multiplies them with node features through the propagation kernel.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from mirrorgrad_jax.graph.coo import DEGREE_EPS
from mirrorgrad_jax.graph.propagation import column_order, sparse_rows_product

__all__ = [
    "combine_knn",
    "knn_column_order",
    "knn_item_graph",
    "knn_propagate",
    "knn_topk_cosine",
    "knn_topk_shrink",
    "learnable_knn_cosine",
    "normalize_knn_values",
]


def _checked_features(features: jax.Array | np.ndarray, k: int, chunk_size: int) -> jax.Array:
    """``features`` as float32 ``(I, F)``, after checking ``1 <= k <= I`` and a positive chunk size.

    Raises:
      ValueError: naming what is wrong.
    """
    features = jnp.asarray(features, jnp.float32)
    if features.ndim != 2:
        raise ValueError(f"features must have shape (I, F), got {features.shape}")
    num_rows = features.shape[0]
    if not 1 <= k <= num_rows:
        raise ValueError(f"k must be in 1..{num_rows} (the number of items), got {k}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    return features


def _l2_normalise_rows(features: jax.Array) -> jax.Array:
    # The reference divides by the norm without a guard: an all-zero row gets NaN cosines,
    # which torch's topk ranks above every number (what follows depends on the model: see
    # each model's docstring); here such a row gets cosine 0 with every item instead.
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
    unspecified. So an item whose feature row points the same way as other items' (duplicate
    rows: mean-filled missing images, MovieLens-100K's genre-and-year ``meta`` table, 711
    distinct rows among 1,682 items) ties with them at cosine 1, and when more than ``k`` of
    them have lower ids it is not in its own list at all (``meta`` at ``k = 10``: 386 items),
    while the lowest-id one is in all of theirs. Nothing in the reference guarantees the
    item's own place either (its ``topk`` order for ties is unspecified).

    Args:
      features: ``(I, F)`` item features.
      k: neighbours per row, ``1 <= k <= I``.
      chunk_size: rows per similarity block (memory ``chunk_size * I`` floats).

    Returns:
      ``(idx, sim)``: ``(I, k)`` int32 neighbour ids and ``(I, k)`` float32 cosines, sorted
      by decreasing similarity.
    """
    features = _checked_features(features, k, chunk_size)
    sim, idx = _chunked_topk(_l2_normalise_rows(features), k, min(chunk_size, features.shape[0]))
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
    """The frozen item-item kNN graph of FREEDOM, DRAGON (binary) or LATTICE, MGCN (values) as ``(idx, val)`` lists.

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

    Examples:
      >>> feats = np.random.default_rng(0).normal(size=(50, 8))
      >>> idx, val = knn_item_graph(feats, k=10, chunk_size=16)
      >>> idx.shape, round(float(val[0, 0]), 6)
      ((50, 10), 0.1)
    """
    if values not in ("binary", "cosine"):
        raise ValueError(f"values must be 'binary' or 'cosine', got {values!r}")
    idx, sim = knn_topk_cosine(features, k, chunk_size=chunk_size)
    if values == "binary":
        degree = np.float32(k) + np.float32(DEGREE_EPS)
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

    Examples:
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
    return sparse_rows_product(rows, idx.reshape(-1), jnp.reshape(val, -1), x, num_rows, "order", column_order)


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
    """ItemKNNCBF's item-item graph (the reference's ``K_shrink``), as ``(idx, val)`` lists.

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

    Examples:
      >>> feats = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
      >>> idx, val = knn_topk_shrink(feats, k=1, shrink=1.0)
      >>> idx[:, 0].tolist(), [round(float(v), 4) for v in val[:, 0]]
      ([1, 1, 2], [0.6667, 0.8, 0.9])
    """
    if not np.isfinite(shrink) or shrink < 0:
        raise ValueError(f"shrink must be a finite number >= 0, got {shrink}")
    features = _checked_features(features, k, chunk_size)
    val, idx = _chunked_topk_shrink(features, jnp.float32(shrink), k, min(chunk_size, features.shape[0]))
    return idx, val


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
      ``(idx, val)``: ``(I, k)`` int32 neighbour ids and ``(I, k)`` cosines, sorted by
      decreasing similarity at selection time; float64 for float64 features (with
      ``jax_enable_x64``: the parity check), float32 otherwise. The neighbours are always
      chosen in float32, as :func:`knn_topk_cosine` does.

    Examples:
      >>> x = jnp.asarray(np.random.default_rng(0).normal(size=(20, 4)), jnp.float32)
      >>> g = jax.grad(lambda x: learnable_knn_cosine(x, 3)[1].sum())(x)
      >>> g.shape
      (20, 4)
    """
    features = jnp.asarray(features)
    features = features.astype(jnp.float64 if features.dtype == jnp.float64 else jnp.float32)
    idx, _ = knn_topk_cosine(jax.lax.stop_gradient(features), k, chunk_size=chunk_size)
    # As _l2_normalise_rows, but with a finite gradient at a zero row (the norm's is NaN there).
    squared = jnp.sum(features * features, axis=-1, keepdims=True)
    normed = features / jnp.sqrt(jnp.where(squared > 0, squared, 1.0))
    return idx, jnp.sum(normed[:, None, :] * normed[idx], axis=-1)
