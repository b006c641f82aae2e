"""GRCN (Wei et al., MM 2020) as the reference implements it (``grcn.py`` of the Mirror Gradient repository, built on MMRec).

Nodes are users ``0..U-1`` then items ``U..N-1``; ``e`` is the one-directional train
edge list (user -> item) and ``e2 = [e; reversed e]``. PyG flow: a message is computed
from the edge's source and aggregated at its target.

* **Content branch per modality m** (``C`` = ``latent_embedding``)::

      feat_m = rownorm(leaky(F_m W_m + b_m))            # (I, C)
      pref_m = rownorm(pref_m)                           # (U, C), trainable
      x      = [pref_m; feat_m]
      alpha  = softmax over the edges into each target of <x_dst, x_src>   (on e2)
      rep_m  = x + sum_{src -> dst} alpha * x_src        # (N, C)

  All modalities share the width C, so their graph steps run together as the heads of
  one attention (``x (N, M, C)``, ``alpha (2E, M)``): the same numbers, one set of
  gathers and segment sums instead of M.

* **Edge weights ("confid")**: ``w_e = relu(max_m alpha_{m,e} * conf[src_e, m])`` with a
  trainable ``conf (N, M)``, taken at the **source** node of each directed edge of ``e2``.
* **Id branch**: ``x = rownorm(id_emb)``, ``x1 = sum_{src -> dst} w x_src``, ``x2`` the
  same operator on ``x1``; ``id_rep = x + x1 + x2`` (no activation).
* **Representation** ``[id_rep || rep_image || rep_text]``, ``(N, d + M C)`` = (N, 192) on
  the reference's two modalities. Score = dot product of the user and item rows.
* **Loss** ``-mean log sigmoid(s+ - s-) + reg_weight * (mean(id_emb[users]^2 +
  id_emb[items]^2) + mean(pref_image^2) + sum_m mean(pref_m[users]^2))``, the means over
  the reference's interleaved ``2B`` pair tensors. Its ``reg_confid`` term is computed but
  never used, so it is left out.

Reference behaviours kept by default:

* **The routing loop is a no-op.** Before the last graph step the reference runs
  ``n_layers`` "routing" iterations ``pref <- rownorm(pref + GAT(x, e)[:U])`` on the
  ONE-directional graph ``e``. Messages only reach edge targets (items), so the user rows
  of the GAT output are exactly 0 and each iteration only re-normalises ``pref``. That is
  what ``routing="reference"`` computes (the GAT itself is skipped: its user rows are
  zero by construction). ``routing="item_to_user"`` runs the loop the method intends:
  the GAT on the reversed edges (item -> user), so each user's preference moves toward
  the attention-weighted mean of its items' features.
* **Stale evaluation.** ``full_sort_predict`` ranks with the representation cached by the
  last training forward of the epoch (on a Mirror Gradient batch, the second pass).
  ``stale_eval=False`` recomputes it. The cache starts at zeros (the reference starts
  from a random tensor; only evaluation before any training step would differ).

Modalities: branches run in the order image, text, then any other modality by name
(the reference has image and text); ``conf`` has one column per modality, and only the
image preference enters the whole-table regulariser (the reference's ``v_gcn``). With a
single modality the reference would crash (it misspells ``content_rep`` in its text-only
path); here the representation is then ``[id_rep || rep_m]``.

Parameters: ``d N`` (id_emb) + ``sum_m (C U + C F_m + C)`` (preference, MLP) + ``M N``
(conf). On Amazon Sports' dimensions (U = 35,598, I = 18,357, F_v = 4096, F_t = 384,
d = C = 64) that is **8,404,422**. Initialisers: id_emb, pref_m, conf and the MLP weights
xavier-normal; MLP biases torch's Linear default ``U(+-1/sqrt(F_m))``.
"""

from __future__ import annotations

import typing
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mirrorgrad_jax.config import NonNegativeFloat, NonNegativeInt, PositiveInt, config_class
from mirrorgrad_jax.graph import bipartite_edges, segment_softmax
from mirrorgrad_jax.models.initializers import xavier_normal
from mirrorgrad_jax.models.inputs import branch_order, require_features
from mirrorgrad_jax.models.interface import Constant, Recommender, TrainingCache
from mirrorgrad_jax.models.kernels import dense, rownorm
from mirrorgrad_jax.models.registry import register

__all__ = ["GRCN", "GRCNConfig"]

Routing = Literal["reference", "item_to_user"]
ROUTING_MODES: tuple[str, ...] = typing.get_args(Routing)


def weighted_sum(x: jax.Array, weights: jax.Array, senders: jax.Array, receivers: jax.Array) -> jax.Array:
    """``out[dst] = sum_{e: src -> dst} weights_e * x[src_e]`` (PyG ``aggr="add"``).

    ``x`` is ``(N, C)`` with ``weights (E,)``, or ``(N, M, C)`` (one head per modality) with
    ``weights (E, M)``.
    """
    return jax.ops.segment_sum(weights[..., None] * x[senders], receivers, num_segments=x.shape[0])


def dot_attention(x: jax.Array, senders: jax.Array, receivers: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The reference's GATConv: ``alpha_e = softmax_dst <x_dst, x_src>``, ``out = sum alpha x_src``.

    Args:
      x: ``(N, C)``, or ``(N, M, C)`` for ``M`` independent heads (the modalities).
      senders, receivers: ``(E,)`` edge sources and targets.

    Returns:
      ``(out, alpha)``: ``out`` shaped like ``x``, ``alpha (E,)`` or ``(E, M)``.
    """
    logits = jnp.sum(x[receivers] * x[senders], axis=-1)
    alpha = segment_softmax(logits, receivers, x.shape[0])
    return weighted_sum(x, alpha, senders, receivers), alpha


@config_class
class GRCNConfig:
    """Attributes:
    embedding_size: d, width of the id branch (64).
    latent_embedding: C, width of every content branch (64).
    n_layers: routing iterations (3); with ``routing="reference"`` they only re-normalise.
    reg_weight: regulariser weight; grid {0.1, 0.01, 1e-3, 1e-4, 1e-5};
      default 1e-3, a middle value of the grid (MMRec gives only the grid; its first value, 0.1, is not the default here).
    routing: ``"reference"`` (the faithful no-op loop) or ``"item_to_user"`` (the loop
      the method intends: users attend over their items).
    stale_eval: rank with the representation of the last training forward (True: the
      reference) or recompute it (False).
    """

    embedding_size: PositiveInt = 64
    latent_embedding: PositiveInt = 64
    n_layers: NonNegativeInt = 3
    reg_weight: NonNegativeFloat = 1e-3
    routing: Routing = "reference"
    stale_eval: bool = True


class _ContentBranch(nnx.Module):
    """One modality's CGCN parameters: user preferences and the feature projection."""

    def __init__(self, features: np.ndarray, num_users: int, width: int, *, rngs: nnx.Rngs):
        feat_dim = features.shape[1]
        self.features = Constant(jnp.asarray(features, jnp.float32))
        self.pref = nnx.Param(xavier_normal(rngs.params(), (num_users, width)))
        # torch Linear(F, C): xavier-normal weight (symmetric in fan, stored (F, C)), default bias.
        self.mlp_w = nnx.Param(xavier_normal(rngs.params(), (feat_dim, width)))
        bound = 1.0 / np.sqrt(feat_dim)
        self.mlp_b = nnx.Param(jax.random.uniform(rngs.params(), (width,), jnp.float32, -bound, bound))

    def __call__(self) -> tuple[jax.Array, jax.Array]:
        """``(rownorm(pref) (U, C), rownorm(leaky(F W + b)) (I, C))``."""
        feats = jax.nn.leaky_relu(dense(self.features[...], self.mlp_w[...]) + self.mlp_b[...])
        return rownorm(self.pref[...]), rownorm(feats)


@register
class GRCN(Recommender):
    """Graph-refined convolutional network; see the module docstring."""

    name = "grcn"
    config_class = GRCNConfig
    multimodal = True

    def __init__(self, dataset, config: GRCNConfig, *, rngs: nnx.Rngs):
        require_features(dataset, "GRCN")
        self.config = config
        self.num_users, self.num_items = dataset.num_users, dataset.num_items
        num_nodes = self.num_users + self.num_items
        # e2 = [e; reversed e]: the first E edges go user -> item, the next E item -> user.
        senders, receivers = bipartite_edges(dataset.train, self.num_users, bidirectional=True, dedupe=False)
        self.senders, self.receivers = Constant(jnp.asarray(senders)), Constant(jnp.asarray(receivers))
        self.modalities = tuple(branch_order(dataset.features))
        self.id_emb = nnx.Param(xavier_normal(rngs.params(), (num_nodes, config.embedding_size)))
        for m in self.modalities:
            branch = _ContentBranch(np.asarray(dataset.features[m]), self.num_users, config.latent_embedding, rngs=rngs)
            setattr(self, f"cgcn_{m}", branch)
        self.conf = nnx.Param(xavier_normal(rngs.params(), (num_nodes, len(self.modalities))))
        width = config.embedding_size + config.latent_embedding * len(self.modalities)
        self.cache = TrainingCache(jnp.zeros((num_nodes, width), jnp.float32))

    def representation(self) -> jax.Array:
        """The ``(N, d + M C)`` representation ``[id_rep || rep_m ...]``."""
        senders, receivers = self.senders[...], self.receivers[...]
        num_nodes = self.num_users + self.num_items
        # All modalities share the width C, so their graph steps run together as the heads
        # of one attention: x is (N, M, C) and alpha (2E, M).
        prefs, feats = zip(*(getattr(self, f"cgcn_{m}")() for m in self.modalities))
        pref, feats = jnp.stack(prefs, axis=1), jnp.stack(feats, axis=1)
        half = senders.shape[0] // 2
        for _ in range(self.config.n_layers):
            if self.config.routing == "reference":
                # GAT on user -> item edges: users receive nothing, pref + 0 = pref.
                pref = rownorm(pref)
            else:
                # The reversed half of e2 sends item -> user.
                out, _ = dot_attention(jnp.concatenate([pref, feats]), senders[half:], receivers[half:])
                pref = rownorm(pref + out[: self.num_users])
        x = jnp.concatenate([pref, feats])
        out, alpha = dot_attention(x, senders, receivers)
        content = (x + out).reshape(num_nodes, -1)  # [rep_m1 || rep_m2 || ...]
        # Confidence of each edge's SOURCE node: users on the first half, items on the second.
        weights = jax.nn.relu(jnp.max(alpha * self.conf[...][senders], axis=1))
        x = rownorm(self.id_emb[...])
        x1 = weighted_sum(x, weights, senders, receivers)
        x2 = weighted_sum(x1, weights, senders, receivers)
        return jnp.concatenate([x + x1 + x2, content], axis=1)

    def loss(self, batch, key):
        del key  # deterministic forward (the reference's edge dropout has p = 0)
        rep = self.representation()
        self.cache.set_value(rep)
        users, pos, neg = batch[0], batch[1] + self.num_users, batch[2] + self.num_users
        u = rep[users]
        diff = jnp.sum(u * rep[pos], -1) - jnp.sum(u * rep[neg], -1)
        bpr = -jnp.mean(jax.nn.log_sigmoid(diff))
        # Means over the reference's (2B, .) interleaved tensors: each user row appears twice.
        b = batch.shape[1]
        id_emb = self.id_emb[...]
        sq = lambda table, rows: jnp.sum(table[rows] ** 2)  # noqa: E731
        reg = (2.0 * sq(id_emb, users) + sq(id_emb, pos) + sq(id_emb, neg)) / (2 * b * id_emb.shape[1])
        if "image" in self.modalities:
            reg = reg + jnp.mean(self.cgcn_image.pref[...] ** 2)
        for m in self.modalities:
            pref = getattr(self, f"cgcn_{m}").pref[...]
            reg = reg + sq(pref, users) / (b * pref.shape[1])
        return bpr + self.config.reg_weight * reg

    def ranks_with_training_cache(self) -> bool:
        return bool(self.config.stale_eval)

    def scores(self, users):
        rep = self.cache[...] if self.config.stale_eval else self.representation()
        return rep[users] @ rep[self.num_users :].T
