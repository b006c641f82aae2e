"""The per-epoch edge sample of FREEDOM and LayerGCN (``pre_epoch_processing`` in the reference).

A fixed number of distinct train edges is drawn without replacement, degree-sensitively
or uniformly, and re-normalised with the new degrees; the result always has the same
shapes, so a jitted step compiled on one epoch's graph serves every epoch.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mirrorgrad_jax.graph.coo import DEGREE_EPS, CooAdjacency, check_pairs

__all__ = ["kept_edge_count", "sample_edges_degree_sensitive"]


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
    values = 1.0 / np.sqrt((deg_u[users] + DEGREE_EPS) * (deg_i[items] + DEGREE_EPS))
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
        scores = scores - 0.5 * (jnp.log(deg_u[users] + DEGREE_EPS) + jnp.log(deg_i[items] + DEGREE_EPS))
    kept = jnp.argsort(-scores)[:keep]
    users, items = users[kept], items[kept]
    ones = jnp.ones((keep,), jnp.float32)
    deg_u = jax.ops.segment_sum(ones, users, num_segments=num_users)
    deg_i = jax.ops.segment_sum(ones, items, num_segments=num_items)
    values = jax.lax.rsqrt((deg_u[users] + DEGREE_EPS) * (deg_i[items] + DEGREE_EPS))
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
    """Samples ``keep`` train edges without replacement and re-normalises them (FREEDOM's and LayerGCN's per-epoch graph).

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

    Examples:
      >>> train = np.array([[0, 0], [0, 1], [1, 1]])
      >>> adj = sample_edges_degree_sensitive(train, 2, 2, 2, np.random.default_rng(0))
      >>> adj.rows.shape
      (4,)
    """
    num_edges = int(np.shape(train_pairs_unique)[0])
    if not 0 <= keep <= num_edges:
        raise ValueError(f"keep must be in 0..{num_edges} (the number of train edges), got {keep}")
    if isinstance(rng_or_key, np.random.Generator):
        pairs = check_pairs(train_pairs_unique, num_users, num_items)
        users, items = pairs[:, 0], pairs[:, 1]
        scores = rng_or_key.gumbel(size=num_edges)
        if degree_sensitive:
            deg_u = np.bincount(users, minlength=num_users).astype(np.float64)
            deg_i = np.bincount(items, minlength=num_items).astype(np.float64)
            scores -= 0.5 * (np.log(deg_u[users] + DEGREE_EPS) + np.log(deg_i[items] + DEGREE_EPS))
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
