"""``A @ x`` for a row-sorted COO adjacency: one JAX primitive with a fast CPU kernel.

:func:`propagate` sums each output row in entry order, whatever the kernel: on the CPU a
CSR sparse-dense product (XLA's own gather + segment sum is several times slower there),
elsewhere a gather and a sorted ``segment_sum``; the two are bit-identical
(``benchmarks/propagation.py``). The primitive has its own JVP, transpose and batching
rules, so reverse mode, forward mode (Hessian-vector products) and ``vmap`` all work, and
the backward pass of a symmetric matrix, or of one read through a stored column order,
runs the fast kernel again.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
from jax.interpreters import ad, batching, mlir

from mirrorgrad_jax.graph.coo import CooAdjacency

__all__ = ["column_order", "layer_mean_propagate", "propagate", "sparse_rows_product"]


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
    return sparse_rows_product(adjacency.rows, adjacency.cols, adjacency.values, x, adjacency.num_nodes, transpose, order)


# Below a few entries per row on average, the CSR kernel's pass over the row pointers costs
# more than it saves (benchmarks/results/propagation.md: FREEDOM's sampled graph, 1.8 per
# row, ran 0.9x forward and 0.7x backward; Baby's A_sym, 8.9 per row, 5x and 4.5x): the
# segment-sum form is used instead.
_CSR_MIN_ENTRIES_PER_ROW = 3.0


def sparse_rows_product(rows, cols, values, x, num_rows: int, transpose: str, column_order=None) -> jax.Array:
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
# autodiff (the Hessian-vector products of mirrorgrad_jax.analysis.flatness) keeps working.


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
            ct_x = sparse_rows_product(cols[order], rows[order], values[order], ct, num_cols, "scatter")
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
