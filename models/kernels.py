"""Dense products with a faster backward pass on XLA's CPU backend, and torch's row normalisation.

Every model's feature projections go through :func:`dense` and the in-batch logits of
the contrastive losses through :func:`pairwise_scores`: forward values are exactly the
plain products, only the layout of the weight gradient's product changes
(``benchmarks/results/dense_backward.md``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["DENSE_MIN_WIDTH", "dense", "pairwise_scores", "rownorm"]


def rownorm(x: jax.Array) -> jax.Array:
    """torch's ``F.normalize``: each row over ``max(||row||, 1e-12)``, with a finite gradient at 0."""
    return x / jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-24))


# Below this input width the weight gradient keeps autodiff's own product (see :func:`dense`).
DENSE_MIN_WIDTH = 128


def dense(x: jax.Array, w: jax.Array) -> jax.Array:
    """``x @ w`` for a wide input ``x`` (n, F), with a faster weight gradient on the CPU.

    Autodiff writes the weight gradient as ``x^T g``, a product contracting the long first
    axis of both operands. XLA's CPU backend runs that layout several times slower than
    the same FLOPs as ``g^T x``: on the 2-core benchmark machine (2026-11-29,
    ``benchmarks/results/dense_backward.md``) a 7,050 x 4,096 feature table against a
    64-wide gradient took 65 ms as ``x^T g`` and 26 ms as ``(g^T x)^T``, bit for bit the
    same result; 4,096 x 4,096 rows (a batch's gathered features) 36 ms against 14 ms.
    The backward pass here computes ``g^T x`` and transposes the small ``(d, F)`` result,
    behind an optimization barrier so XLA cannot fold the transpose back into the product.
    The input gradient ``g @ w^T`` is autodiff's. Forward values are exactly ``x @ w``.

    Narrow inputs (``F < DENSE_MIN_WIDTH``) or a 1-wide output take the plain product:
    at 64 wide the two forms took the same time, and a matrix-vector product sums in
    another order (not bit-equal).
    """
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] < DENSE_MIN_WIDTH or w.shape[1] < 2:
        return x @ w
    return _dense_wide(x, w)


@jax.custom_vjp
def _dense_wide(x: jax.Array, w: jax.Array) -> jax.Array:
    return x @ w


def _dense_wide_fwd(x: jax.Array, w: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return x @ w, (x, w)


def _first_axis_product(big: jax.Array, narrow: jax.Array) -> jax.Array:
    """``big^T @ narrow`` (both contracted over their first axis) as ``(narrow^T @ big)^T``.

    Bit for bit autodiff's product, in the operand order XLA's CPU backend runs fast; the
    barrier keeps XLA from folding the transpose of the small result back into the product.
    """
    return jax.lax.optimization_barrier(narrow.T @ big).T


def _dense_wide_bwd(residuals: tuple[jax.Array, jax.Array], g: jax.Array) -> tuple[jax.Array, jax.Array]:
    x, w = residuals
    # Cotangents in the inputs' own dtypes (a mixed-precision product promotes in between).
    return (g @ w.T).astype(x.dtype), _first_axis_product(x, g).astype(w.dtype)


_dense_wide.defvjp(_dense_wide_fwd, _dense_wide_bwd)


def pairwise_scores(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a @ b^T`` for ``a`` (n, d) and ``b`` (m, d), e.g. in-batch logits, with a faster backward pass on the CPU.

    The gradient with respect to ``b`` is ``g^T a`` with ``g`` the (n, m) upstream gradient:
    the transposed-operand product :func:`dense` avoids. Computed as ``(a^T g)^T``, bit-equal;
    both gradients of a 2,048 x 2,048 in-batch logit matrix took 4.9 ms instead of 10.6 ms
    (32-wide rows) and 6.5 ms instead of 11.9 ms (64-wide) on the 2-core benchmark machine
    (``benchmarks/results/dense_backward.md``).
    The gradient with respect to ``a`` (``g @ b``) and the forward values are autodiff's.
    Fewer than ``DENSE_MIN_WIDTH`` rows in ``b`` take the plain product.
    """
    if a.ndim != 2 or b.ndim != 2 or b.shape[0] < DENSE_MIN_WIDTH or a.shape[1] < 2:
        return a @ b.T
    return _pairwise_wide(a, b)


@jax.custom_vjp
def _pairwise_wide(a: jax.Array, b: jax.Array) -> jax.Array:
    return a @ b.T


def _pairwise_wide_fwd(a: jax.Array, b: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return a @ b.T, (a, b)


def _pairwise_wide_bwd(residuals: tuple[jax.Array, jax.Array], g: jax.Array) -> tuple[jax.Array, jax.Array]:
    a, b = residuals
    return (g @ b).astype(a.dtype), _first_axis_product(g, a).astype(b.dtype)


_pairwise_wide.defvjp(_pairwise_wide_fwd, _pairwise_wide_bwd)
