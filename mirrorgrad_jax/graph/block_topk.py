"""Exact top-k positions along long rows, found through the blocks' maxima (faster than ``lax.top_k`` on XLA's CPU).

XLA's CPU ``top_k`` is slow next to a plain reduction over the same array (DA-MRS's
pseudo-label selection on the Baby catalogue, the top 10 of 3 x 4,096 rows of 7,050 floats,
was among the most expensive ops of its step). :func:`top_k_positions` therefore splits each
row into blocks of ``block`` entries, takes every block's maximum (one fused reduction), keeps
the ``k`` blocks with the largest maxima, and runs ``top_k`` on those ``k * block`` candidates plus the
leftover tail of the row. The answer is :func:`jax.lax.top_k`'s, positions and order alike:

* every entry ``e`` of the row's top ``k`` lies in a kept block. Say it lies in block ``B``.
  A block ranked above ``B`` has a larger maximum, or the same maximum and a lower position
  (``top_k`` breaks ties toward the lower block); either way that maximum ranks above ``e``
  in the row, since ``max(B) >= e``. Fewer than ``k`` entries rank above ``e``, so fewer
  than ``k`` blocks rank above ``B``;
* the kept blocks are put back in position order before the second ``top_k``, and the tail
  comes after them, so a candidate's place among the candidates follows its place in the
  row, and ``top_k``'s ties still go to the lower position.

The positions are integers: nothing here is differentiated.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["DEFAULT_BLOCK", "top_k_positions"]

#: Entries per block. On (3, 4096, 7050) with k = 10, on a 2-core CPU, blocks of 16 and 32 took
#: 0.40x of ``lax.top_k``'s time and blocks of 8 0.58x (benchmarks/results/topk_selection.md).
DEFAULT_BLOCK: int = 16


def top_k_positions(x: jax.Array, k: int, *, block: int = DEFAULT_BLOCK) -> jax.Array:
    """``jax.lax.top_k(x, k)[1]``: the positions of the ``k`` largest entries along the last axis.

    Descending by value, ties toward the lower position, exactly as ``lax.top_k`` returns
    them (see the module docstring for why the block pre-selection gives the same answer).
    The pre-selection runs on the CPU; on other backends, and for rows shorter than
    ``4 * k`` blocks, where there is little to save, this is ``lax.top_k`` itself.

    Args:
      x: ``(..., n)`` array (float, int or bool) without NaN (``lax.top_k``'s order for NaN is not
        reproduced).
      k: how many positions per row, ``1 <= k <= n``.
      block: entries per block (> 0).

    Returns:
      ``(..., k)`` int32 positions.

    The saving is largest when ``x`` is already in memory (a program input, a scatter's
    output). ``x`` is read three times (the blocks' maxima, the kept blocks, the tail); when
    ``x`` is computed from gathers in the same program, XLA may write those gathers out to
    feed the three readers, and ``lax.top_k``, which reads once, can be faster
    (``benchmarks/topk_selection.py`` measures both cases).

    Raises:
      ValueError: ``k`` or ``block`` is out of range.
    """
    n = x.shape[-1]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}] (the row length), got {k}")
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    if n // block < 4 * k:
        return jax.lax.top_k(x, k)[1]
    # The block pre-selection is for XLA's CPU top_k; other backends have their own
    # kernels, not measured here, and keep lax.top_k. Decided when the program is lowered.
    return jax.lax.platform_dependent(x, cpu=lambda a: _blocked(a, k, block), default=lambda a: jax.lax.top_k(a, k)[1])


def _blocked(x: jax.Array, k: int, block: int) -> jax.Array:
    """:func:`top_k_positions` through the blocks' maxima (at least ``4 k`` blocks)."""
    n = x.shape[-1]
    blocks = n // block
    rows = x.reshape(-1, n)
    # The blocks' maxima as a strided window: reshaping a row that ``block`` does not divide
    # would first copy all but its tail.
    maxima = jax.lax.reduce_window(rows, _lowest(x.dtype), jax.lax.max, (1, block), (1, block), "VALID")
    _, kept = jax.lax.top_k(maxima, k)
    kept = jnp.sort(kept, axis=-1)
    # One (block,)-long slice per kept block, read in place.
    take = jax.vmap(jax.vmap(lambda row, start: jax.lax.dynamic_slice(row, (start,), (block,)), in_axes=(None, 0)))
    candidates = take(rows, kept * block).reshape(rows.shape[0], k * block)
    candidates = jnp.concatenate([candidates, rows[:, blocks * block :]], axis=-1)
    _, at = jax.lax.top_k(candidates, k)
    in_body = at < k * block
    from_body = jnp.take_along_axis(kept, jnp.where(in_body, at // block, 0), axis=-1) * block + at % block
    positions = jnp.where(in_body, from_body, blocks * block + at - k * block)
    return positions.astype(jnp.int32).reshape(*x.shape[:-1], k)


def _lowest(dtype) -> jax.Array:
    """The window reduction's start value: -inf for floats, False for booleans, the smallest integer for ints."""
    if jnp.issubdtype(dtype, jnp.floating):
        return jnp.array(-jnp.inf, dtype)
    if jnp.issubdtype(dtype, jnp.bool_):
        return jnp.array(False)
    return jnp.array(jnp.iinfo(dtype).min, dtype)
