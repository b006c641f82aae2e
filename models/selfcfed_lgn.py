"""SELFCF_ed with a LightGCN encoder (Zhou et al., "SelfCF: A Simple Framework for Self-supervised
Collaborative Filtering"), the MG reference's default model.

The reference's ``selfcfed_lgn.py`` (with ``common/encoders.py``). Trained WITHOUT negatives (``uses_negatives = False``; batches are
``(2, B)`` ``[users; items]``), not multimodal. Parameters: id tables ``E_u``, ``E_i``
(xavier-uniform) and a predictor ``P``: Linear d -> d with torch's default init,
``d (U + I) + d^2 + d`` in all (3,457,280 on sports).

Training forward, with a fresh draw from the ``loss`` key every call (so the Mirror
Gradient second pass, which gets a new key, draws anew):

* **Edge dropout at a random rate.** ``rho ~ U[0, 1)``; every stored entry of ``A_sym``
  (each direction of an edge separately, as the reference's sparse dropout masks the
  ``2E`` stored values independently) is kept with probability ``1 - rho`` and scaled by
  ``1 / (1 - rho)``. Shapes stay static: the values are multiplied by the mask. A ``rho``
  near 1 gives a huge rescale; that is the reference's behaviour.
* LightGCN with ``n_layers`` layers on that graph, mean of the ``n_layers + 1`` outputs;
  the batch rows are ``u_on = emb_u[users]``, ``i_on = emb_i[items]``.
* Targets: ``u_tg = dropout(u_on)``, ``i_tg = dropout(i_on)`` with a stop-gradient and
  ALWAYS-ON inverted dropout of rate ``dropout`` (``F.dropout`` without ``training=``),
  drawn per batch row (a user repeated in a batch gets independent masks, as in the
  reference, which drops the gathered ``(B, d)`` rows).

Loss, with ``c`` the per-row cosine (each norm clamped at 1e-8)::

    -1/2 mean_b c(P u_on, i_tg) - 1/2 mean_b c(P i_on, u_tg)
    + reg_weight * 1/2 (sum u_on^2 + sum i_on^2)

(MMRec's ``L2Loss`` on the propagated batch rows, before the predictor).

``scores`` uses the UN-dropped ``A_sym`` (no randomness):
``P(u)[user] . i^T + u[user] . P(i)^T``, recomputed with the current parameters.

Deliberate differences from the reference (distributions unchanged):

* ``rho`` and both masks come from the JAX ``key`` given to ``loss``; the reference draws
  ``rho`` from numpy's global stream and the masks from torch's;
* the reference's ``n_layers`` falls back to 3 when the config leaves it unset; here it is
  an ordinary field (default 1, the grid's first value).
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
from flax import nnx

from mirrorgrad_jax.config import Fraction, NonNegativeFloat, NonNegativeInt, PositiveInt, config_class
from mirrorgrad_jax.graph import CooAdjacency, column_order, layer_mean_propagate, normalized_bipartite_adjacency
from mirrorgrad_jax.models.initializers import torch_linear_default, xavier_uniform
from mirrorgrad_jax.models.interface import Constant, Recommender
from mirrorgrad_jax.models.registry import register

__all__ = ["SELFCFED_LGN", "SELFCFED_LGNConfig", "random_rate_edge_dropout"]

# torch.nn.functional.cosine_similarity clamps each norm at this value.
_COSINE_EPS = 1e-8


@config_class
class SELFCFED_LGNConfig:
    """Attributes:
    embedding_size: d of the id tables and the predictor (64).
    n_layers: LightGCN layers; grid {1, 2}.
    dropout: rate of the always-on dropout on the stop-gradient targets; grid {0.1, 0.2, 0.5}.
    reg_weight: weight of the squared-norm penalty on the batch rows; grid
      {0.1, 1e-2, 1e-3, 1e-4, 1e-5, 0}.

    The reference has only the grids. ``n_layers`` and ``dropout`` default to their grids'
    first values; ``reg_weight`` defaults to the grid's LAST value, 0, because the penalty
    is a sum over the batch's rows (it grows with the batch) against a cosine loss bounded
    by 1, and its large grid values stop the model from learning at all: measured
    2026-11-29 (no MG, seed 999, patience 10 on recall@20), test recall@20 at
    reg_weight 1e-2 / 1e-3 / 1e-4 / 1e-5 / 0 was 0.007 / 0.141 / 0.296 / 0.333 / 0.339 on
    ``synthetic`` (random ranking: about 0.013) and 0.181 / 0.186 / 0.285 / 0.247 / 0.294
    on MovieLens-100K; 0.1 gave 0.007 on ``synthetic``. The packaged config keeps the full
    grid, so a reproduction of the reference still searches it.
    """

    embedding_size: PositiveInt = 64
    n_layers: NonNegativeInt = 1
    dropout: Fraction = 0.1
    reg_weight: NonNegativeFloat = 0.0


def random_rate_edge_dropout(values: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """SELFCF's sparse dropout at a random rate, with static shapes.

    Draws ``rho ~ U[0, 1)``, keeps every entry independently with probability ``1 - rho``
    and scales the kept ones by ``1 / (1 - rho)``; dropped entries become 0 (they stay in
    the arrays, so shapes never change).

    Args:
      values: ``(nnz,)`` stored values of a sparse matrix.
      key: JAX PRNG key.

    Returns:
      ``(new_values, rho)``.
    """
    key_rate, key_mask = jax.random.split(key)
    rho = jax.random.uniform(key_rate, (), jnp.float32)
    keep = jax.random.bernoulli(key_mask, 1.0 - rho, values.shape)
    return jnp.where(keep, values / (1.0 - rho), 0.0), rho


def _mean_cosine(online: jax.Array, target: jax.Array) -> jax.Array:
    """Batch mean of the per-row cosine, each norm clamped at 1e-8 (torch's rule)."""
    # A floored sqrt keeps the gradient finite for an all-zero online row.
    norm_o = jnp.sqrt(jnp.maximum(jnp.sum(online * online, -1), 1e-30))
    norm_t = jnp.sqrt(jnp.sum(target * target, -1))
    cos = jnp.sum(online * target, -1) / (jnp.maximum(norm_o, _COSINE_EPS) * jnp.maximum(norm_t, _COSINE_EPS))
    return jnp.mean(cos)


@register
class SELFCFED_LGN(Recommender):
    """Self-supervised CF with embedding dropout and random-rate edge dropout; see the module docstring."""

    name = "selfcfed_lgn"
    config_class = SELFCFED_LGNConfig
    uses_negatives = False

    def __init__(self, dataset, config: SELFCFED_LGNConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.num_users, self.num_items = dataset.num_users, dataset.num_items
        d = config.embedding_size
        self.users = nnx.Param(xavier_uniform(rngs.params(), (dataset.num_users, d)))
        self.items = nnx.Param(xavier_uniform(rngs.params(), (dataset.num_items, d)))
        w, b = torch_linear_default(rngs.params(), d, d)
        self.predictor_w, self.predictor_b = nnx.Param(w), nnx.Param(b)
        adj = normalized_bipartite_adjacency(dataset.train, dataset.num_users, dataset.num_items)
        self.adj_rows, self.adj_cols, self.adj_values = (Constant(jnp.asarray(a)) for a in adj[:3])
        self.adj_order = Constant(jnp.asarray(column_order(adj.cols)))

    # -- pieces ---------------------------------------------------------------------

    def propagated(self, values: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """``(users (U, d), items (I, d))``: the LightGCN layer mean on ``A_sym``.

        ``values`` replaces the stored values of ``A_sym`` (the dropped-out graph of a
        training forward); ``None`` uses the graph as it is.
        """
        # A_sym equals its transpose entry by entry; after an edge dropout only its structure
        # does, so the backward pass reads the entries in the stored column order.
        direction = {"symmetric": True} if values is None else {"column_order": self.adj_order[...]}
        values = self.adj_values[...] if values is None else values
        adj = CooAdjacency(self.adj_rows[...], self.adj_cols[...], values, self.num_users + self.num_items)
        x = jnp.concatenate([self.users[...], self.items[...]])
        out = layer_mean_propagate(adj, x, self.config.n_layers, **direction)
        return out[: self.num_users], out[self.num_users :]

    def edge_dropout(self, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(values, rho)``: the values of ``A_sym`` after one random-rate edge dropout."""
        return random_rate_edge_dropout(self.adj_values[...], key)

    def target_keep_masks(self, key: jax.Array, batch_size: int) -> tuple[jax.Array | None, jax.Array | None]:
        """Keep masks ``(users, items)``, each ``(B, d)``, of the targets' dropout (``None`` at rate 0)."""
        p = self.config.dropout
        if p == 0.0:
            return None, None
        keep = jax.random.bernoulli(key, 1.0 - p, (2, batch_size, self.config.embedding_size))
        return keep[0], keep[1]

    def _target(self, x: jax.Array, keep: jax.Array | None) -> jax.Array:
        """The stop-gradient target ``F.dropout(x, p)`` (always on, inverted scaling)."""
        x = jax.lax.stop_gradient(x)
        if keep is None:
            return x
        return jnp.where(keep, x / (1.0 - self.config.dropout), 0.0)

    def _predict(self, x: jax.Array) -> jax.Array:
        return x @ self.predictor_w[...] + self.predictor_b[...]

    # -- interface ------------------------------------------------------------------

    def loss(self, batch: jax.Array, key: jax.Array) -> jax.Array:
        """The two-way cosine loss on a fresh random-rate edge dropout of ``A_sym``."""
        users, items = batch[0], batch[1]
        key_edges, key_targets = jax.random.split(key)
        values, _ = self.edge_dropout(key_edges)
        all_users, all_items = self.propagated(values)
        u_on, i_on = all_users[users], all_items[items]
        keep_u, keep_i = self.target_keep_masks(key_targets, users.shape[0])
        u_tg, i_tg = self._target(u_on, keep_u), self._target(i_on, keep_i)
        reg = 0.5 * (jnp.sum(u_on**2) + jnp.sum(i_on**2))
        align = -0.5 * _mean_cosine(self._predict(u_on), i_tg) - 0.5 * _mean_cosine(self._predict(i_on), u_tg)
        return align + self.config.reg_weight * reg

    def scores(self, users: jax.Array) -> jax.Array:
        all_users, all_items = self.propagated()
        u = all_users[users]
        return self._predict(u) @ all_items.T + u @ self._predict(all_items).T
