"""MMGCN (Wei et al., MM 2019) as the reference implements it (``mmgcn.py`` of the Mirror Gradient repository, built on MMRec).

One graph network per modality on the bidirectional user-item edge list (users
``0..U-1``, items ``U..N-1``). A branch starts from ``x0 = rownorm([pref_m; F_m])``
and runs THREE hard-coded layers (the reference's ``n_layers`` is never read)::

    h   = leaky(mean_{src -> dst} (x W_l)[src])        # PyG mean aggregation, no self-loops
    x^  = leaky(x A_l + a_l) + id_emb
    x   = leaky([h || x^] G_l + g_l)                    # the "concat" branch

The representation is the mean of the branch outputs, ``(N, d)``; a pair scores the
dot product of its user and item rows. Loss: ``-mean log sigmoid(s+ - s-)`` plus
``reg_weight * (mean(id_emb[users]^2 + id_emb[items]^2) + mean(pref_image^2))``.

Reference behaviours kept by default (each with an option for the intended one):

* **Concat branch.** The reference sets ``concate = "False"``, a non-empty string and
  therefore true, so the concat layers ``G_1: (D + d) -> d`` and ``G_2, G_3: 2d -> d``
  are used. ``concat=False`` gives the additive form ``x = leaky(h G_l + g_l + x^)``
  with ``G_1: D -> d`` and ``G_2, G_3: d -> d``.
* **Frozen random tensors.** ``id_emb (N, d)`` and every ``pref_m (U, D_m)`` are
  xavier-normal random tensors that the reference never registers as parameters, so
  the optimizer never updates them. They are :class:`Constant` here. The
  regulariser is built only from them, so it is a **constant with zero gradient**:
  ``reg_weight`` changes the logged loss value but never the training. With
  ``frozen_random_tensors=False`` they are trainable parameters (and the regulariser
  acts on them).
* **Stale evaluation.** ``full_sort_predict`` ranks with the representation cached by
  the last training forward of the epoch (on a Mirror Gradient batch, the second
  pass), one optimizer step old. ``stale_eval=False`` recomputes it. The cache starts
  at zeros (the reference starts from a random tensor; only evaluation before any
  training step would see the difference).

Modalities. The reference has a branch for ``v_feat`` (image) and one for ``t_feat``
(text). The image branch first maps its 4096-d CNN features through a Linear layer to
``D = 256`` (``image_latent_dim``); the text branch uses its raw features (``D = F_t``,
384 for all-MiniLM-L6-v2). Generalised here: a modality named ``"image"`` gets the
Linear layer, every other modality is used raw. Branch order is image, text, then any
other modality by name; only the image preference enters the regulariser (the
reference's ``v_gcn.preference``).

Parameters (registered in the reference; ``D_m`` = branch input width)::

    image MLP: F_v * 256 + 256
    per branch: D^2 + (D d + d) + ((D + d) d + d) + 2 * (d^2 + (d^2 + d) + (2d d + d))

On Amazon Sports' dimensions (U = 35,598, I = 18,357, F_v = 4096, F_t = 384, d = 64)
that is 1,184,384 (image) + 233,856 (text) = **1,418,240** trainable parameters; the
frozen tensors hold ``64 N + 256 U + 384 U`` = 26.2 M floats. Initialisers: the conv
weights, ``A_l`` and ``G_1`` xavier-normal; ``G_2``, ``G_3``, the image MLP and every
bias torch's Linear default ``U(+-1/sqrt(fan_in))``.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mirrorgrad_jax.config import NonNegativeFloat, PositiveInt, config_class
from mirrorgrad_jax.graph import CooAdjacency, bipartite_edges, edge_list_adjacency, propagate
from mirrorgrad_jax.models.initializers import xavier_normal
from mirrorgrad_jax.models.inputs import branch_order, require_features
from mirrorgrad_jax.models.interface import Constant, FrozenRandom, Recommender, TrainingCache
from mirrorgrad_jax.models.kernels import dense, rownorm
from mirrorgrad_jax.models.registry import register

__all__ = ["MMGCN", "MMGCNConfig"]

_NUM_LAYERS = 3  # hard-coded in the reference, whatever its YAML says


def _torch_linear_default(key: jax.Array, fan_in: int, shape: tuple[int, ...]) -> jax.Array:
    """torch's default Linear init for weight or bias: ``U(+-1/sqrt(fan_in))``."""
    bound = 1.0 / np.sqrt(fan_in)
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


class _Linear(nnx.Module):
    """``y = x W + b`` with ``W`` stored ``(in, out)``; xavier-normal or torch-default weight."""

    def __init__(self, fan_in: int, fan_out: int, *, xavier: bool, rngs: nnx.Rngs):
        if xavier:
            w = xavier_normal(rngs.params(), (fan_in, fan_out))
        else:
            w = _torch_linear_default(rngs.params(), fan_in, (fan_in, fan_out))
        self.w = nnx.Param(w)
        self.b = nnx.Param(_torch_linear_default(rngs.params(), fan_in, (fan_out,)))

    def __call__(self, x: jax.Array) -> jax.Array:
        return dense(x, self.w[...]) + self.b[...]


class _ModalityGCN(nnx.Module):
    """One MMGCN branch: (optional projection), rownorm, three gated graph layers."""

    def __init__(
        self,
        features: np.ndarray,
        num_users: int,
        latent_dim: int | None,
        d: int,
        *,
        concat: bool,
        frozen: bool,
        rngs: nnx.Rngs,
    ):
        feat_dim = features.shape[1]
        width = latent_dim or feat_dim
        self.concat = concat
        self.features = Constant(jnp.asarray(features, jnp.float32))
        self.mlp = _Linear(feat_dim, latent_dim, xavier=False, rngs=rngs) if latent_dim else None
        pref = xavier_normal(rngs.params(), (num_users, width))
        self.pref = FrozenRandom(pref) if frozen else nnx.Param(pref)
        widths = [width] + [d] * (_NUM_LAYERS - 1)
        for layer, fan_in in enumerate(widths, start=1):
            # PyG conv weight (in, out), overwritten by xavier-normal; no bias is registered.
            setattr(self, f"conv{layer}", nnx.Param(xavier_normal(rngs.params(), (fan_in, fan_in))))
            setattr(self, f"lin{layer}", _Linear(fan_in, d, xavier=True, rngs=rngs))
            g_in = fan_in + d if concat else fan_in
            # Only the first gate layer is re-initialised in the reference.
            setattr(self, f"gate{layer}", _Linear(g_in, d, xavier=layer == 1, rngs=rngs))

    def __call__(self, id_emb: jax.Array, adjacency: CooAdjacency, in_degree: jax.Array) -> jax.Array:
        """The branch output ``(N, d)``; ``adjacency`` counts the edges ``s -> r`` (bidirectional).

        ``in_degree`` is ``max(number of incoming edges, 1)`` per node, float ``(N, 1)``.
        """
        feats = self.features[...]
        if self.mlp is not None:
            feats = self.mlp(feats)
        x = rownorm(jnp.concatenate([self.pref[...], feats]))
        # Without a projection and with a frozen preference, the first layer's input is a
        # constant: aggregating it first, (A x / deg) W, is the same product and leaves the
        # backward pass no propagation to run (only W's gradient is needed). It is recomputed
        # each step rather than cached at build time: the frozen preference is checkpointed
        # and restored, and a cache built from the initial one would go stale.
        constant_input = self.mlp is None and not isinstance(self.pref, nnx.Param)
        for layer in range(1, _NUM_LAYERS + 1):
            conv = getattr(self, f"conv{layer}")[...]
            # PyG's mean aggregation of the messages x W (no self-loops): the sum of what
            # each node receives, from the row-sorted kernel, over its in-degree.
            if layer == 1 and constant_input:
                h = jax.nn.leaky_relu(dense(propagate(adjacency, x, symmetric=True) / in_degree, conv))
            else:
                h = jax.nn.leaky_relu(propagate(adjacency, dense(x, conv), symmetric=True) / in_degree)
            x_hat = jax.nn.leaky_relu(getattr(self, f"lin{layer}")(x)) + id_emb
            gate = getattr(self, f"gate{layer}")
            if self.concat:
                x = jax.nn.leaky_relu(gate(jnp.concatenate([h, x_hat], axis=-1)))
            else:
                x = jax.nn.leaky_relu(gate(h) + x_hat)
        return x


@config_class
class MMGCNConfig:
    """Attributes:
    embedding_size: d, the width of every layer after the first and of id_emb (64).
    image_latent_dim: output width of the image projection (256 in the reference).
    reg_weight: weight of the regulariser on the frozen tensors; grid
      {0, 1e-5, 1e-4, 1e-3, 0.01, 0.1}. No effect on training while they are frozen.
    concat: use the concat layers (True: the reference, whose ``"False"`` string is truthy).
    frozen_random_tensors: keep id_emb and the preferences frozen (True: the reference).
    stale_eval: rank with the representation of the last training forward (True: the
      reference) or recompute it (False).
    """

    embedding_size: PositiveInt = 64
    image_latent_dim: PositiveInt = 256
    reg_weight: NonNegativeFloat = 0.0
    concat: bool = True
    frozen_random_tensors: bool = True
    stale_eval: bool = True


@register
class MMGCN(Recommender):
    """Multi-modal graph convolution network; see the module docstring."""

    name = "mmgcn"
    config_class = MMGCNConfig
    multimodal = True

    def __init__(self, dataset, config: MMGCNConfig, *, rngs: nnx.Rngs):
        require_features(dataset, "MMGCN")
        self.config = config
        self.num_users, self.num_items = dataset.num_users, dataset.num_items
        num_nodes = self.num_users + self.num_items
        d = config.embedding_size
        # The reference keeps the train rows as they come (duplicates would stay).
        senders, receivers = bipartite_edges(dataset.train, self.num_users, bidirectional=True, dedupe=False)
        adjacency = edge_list_adjacency(senders, receivers, num_nodes)  # symmetric: both directions
        self.adj_rows, self.adj_cols, self.adj_values = (Constant(jnp.asarray(a)) for a in adjacency[:3])
        in_degree = np.maximum(np.bincount(receivers, minlength=num_nodes), 1).astype(np.float32)
        self.in_degree = Constant(jnp.asarray(in_degree[:, None]))
        self.modalities = tuple(branch_order(dataset.features))
        for m in self.modalities:
            latent = config.image_latent_dim if m == "image" else None
            branch = _ModalityGCN(
                np.asarray(dataset.features[m]),
                self.num_users,
                latent,
                d,
                concat=config.concat,
                frozen=config.frozen_random_tensors,
                rngs=rngs,
            )
            setattr(self, f"gcn_{m}", branch)
        id_emb = xavier_normal(rngs.params(), (num_nodes, d))
        self.id_emb = FrozenRandom(id_emb) if config.frozen_random_tensors else nnx.Param(id_emb)
        self.cache = TrainingCache(jnp.zeros((num_nodes, d), jnp.float32))

    def representation(self) -> jax.Array:
        """The ``(N, d)`` node representation: the mean of the modality branches."""
        id_emb, in_degree = self.id_emb[...], self.in_degree[...]
        adjacency = CooAdjacency(self.adj_rows[...], self.adj_cols[...], self.adj_values[...], self.num_users + self.num_items)
        total = sum(getattr(self, f"gcn_{m}")(id_emb, adjacency, in_degree) for m in self.modalities)
        return total / len(self.modalities)

    def loss(self, batch, key):
        del key  # deterministic forward
        rep = self.representation()
        self.cache.set_value(rep)
        users, pos, neg = batch[0], batch[1] + self.num_users, batch[2] + self.num_users
        u = rep[users]
        diff = jnp.sum(u * rep[pos], -1) - jnp.sum(u * rep[neg], -1)
        bpr = -jnp.mean(jax.nn.log_sigmoid(diff))
        # mean over the reference's (2B, d) interleaved tensors: each user row appears twice.
        id_emb = self.id_emb[...]
        sq = lambda rows: jnp.sum(id_emb[rows] ** 2)  # noqa: E731
        reg = (2.0 * sq(users) + sq(pos) + sq(neg)) / (2 * batch.shape[1] * id_emb.shape[1])
        if "image" in self.modalities:
            reg = reg + jnp.mean(self.gcn_image.pref[...] ** 2)
        return bpr + self.config.reg_weight * reg

    def ranks_with_training_cache(self) -> bool:
        return bool(self.config.stale_eval)

    def scores(self, users):
        rep = self.cache[...] if self.config.stale_eval else self.representation()
        return rep[users] @ rep[self.num_users :].T
