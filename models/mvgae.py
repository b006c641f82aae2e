"""MVGAE (Yi & Chen, IEEE TMM 2021, "Multi-Modal Variational Graph Auto-Encoder for Recommendation").

Checked against the reference's ``mvgae.py`` line by line. Three graph encoders on the
bidirectional user-item edge list (users ``0..U-1``, items ``U..N-1``), for the image
features, the text features and a FROZEN random "collaborative" table ``(I, d)``
(xavier-normal). Each encoder (``L`` = ``latent_dim`` = 128, ``d`` = ``embedding_size``)::

    x      = rownorm([pref (U, L) FROZEN random; MLP_{F -> L}(features)])
    layer 1:   x = leaky(g1(leaky(conv1(x))))          # conv1: L -> d, g1: d -> d
    layer 2:   x = leaky(g2(leaky(conv2(x))))          # only with n_layers = 2
    mu     = g4(leaky(conv4(x))) + leaky(lin4(x))
    logvar = g5(leaky(conv5(x))) + leaky(lin5(x))

``conv(x) = dropout(rownorm(mean_{j in N(i) + {i}} (x W)_j + b))``: PyG MEAN aggregation
over the incoming edges plus a self-loop, i.e. ``(y_i + sum_{j in N(i)} y_j) / (deg_i + 1)``
with ``y = x W``, then a bias, an L2 row normalisation and dropout (rate ``conv_dropout``
= 0.1, TRAINING ONLY: on in ``loss``, off in a recomputed ``scores``). Note: a reading of the
paper suggests a symmetric-normalised sum here; that is the branch the reference takes only for
``aggr="add"``, while MVGAE builds every conv with ``aggr="mean"``, whose message is the
unnormalised ``y_j``. This module follows the code.

Product of experts (precision ``T = 1 / (exp(logvar) + 1e-8)``, ``mu = sum mu T / sum T``,
``logvar = -log sum T``): first over (image, text), then of that result with the
collaborative encoder, giving ``(pd_mu, pd_logvar)``. Reparameterisation
``z = mu + 0.1 eps exp(0.5 min(logvar, 10))`` with ``eps ~ N(0, 1)`` from the ``loss`` key,
for ``pd`` and for each encoder alone (``z_v``, ``z_t``, ``z_c``).

Loss = sum over ``z in {z_pd, z_v, z_t, z_c}`` of ``recon(z) + kl_weight * KL(mu, logvar)``::

    s = sigmoid(z); pos_b = sigmoid(<s_{u_b}, s_{i+_b}>)
    neg_b = sigmoid(max over ALL B batch negatives j of <s_{u_b}, s_{i-_j}>)
    recon = -sum_b log2 sigmoid(pos_b - neg_b)
    KL    = -1/2 mean over all N nodes of sum_dims (1 + lv - mu^2 - exp(lv)), lv = min(logvar, 10)

``scores``: ``sigmoid(pd_mu)`` (the reference hard-codes the dataset name "amazon", which
turns the sigmoid on) dotted user rows x item rows. By default (``stale_eval``) it is the
representation CACHED by the last training forward (a
:class:`~mirrorgrad_jax.models.TrainingCache`, so computed in training mode, with
conv dropout; on a Mirror Gradient batch the second pass); ``stale_eval=False`` recomputes
it without dropout. ``ranks_with_training_cache()`` is True while ``stale_eval`` is.

Reference behaviours kept by default, each with a named option for the corrected one:

* **Item-index bug** (``offset_item_ids=False``). The reference scores ``z[item_id]``
  WITHOUT adding ``U``, so the positive and negative "items" of the reconstruction loss are
  USER rows, and training never scores the item rows that ranking uses. Expect poor
  rankings. ``offset_item_ids=True`` uses rows ``U + item_id``.
* **KL weight taken from Mirror Gradient's beta** (``kl_weight_from_mg_beta=True``). The
  reference reads its KL weight from the config key ``beta``, which MG's ``mg.yaml``
  (loaded last) overrides with MG's ``beta = 3``: with MG on, the grid {0.01, 0.1, 1} is
  lost and the KL weight is 3; with MG off the grid applies. The trainer builds the model
  through the model's :meth:`MVGAE.config_for_training` hook, which returns the config
  with ``kl_weight = float(mg_beta)`` in that case.
  ``kl_weight_from_mg_beta=False`` always uses ``kl_weight``.

A property of the reference's loss that neither option changes (measured 2026-11-29 on
``synthetic`` at initialisation): the scores are dot products of SIGMOIDS of 64-d codes,
``<s_u, s_i>`` of about 16.6 for every pair, and ``sigmoid(16.6)`` is one float32 ulp below
1, so ``sigmoid(pos) - sigmoid(neg)`` is 0 or one ulp and the reconstruction term gives
almost no gradient; the loss stays flat (124,038 per epoch) and only the KL term trains.
Rankings stay near chance with the corrected options too (test recall@20 0.012 on
``synthetic`` after 22 epochs, chance about 0.013). The reference computes the same thing
in float32; the paper does not use MVGAE.

Parameters: the frozen random tensors (the preference ``(U, L)`` of every encoder, the
collaborative table) are :class:`~mirrorgrad_jax.models.FrozenRandom` (checkpoints keep
them) and the feature tables :class:`~mirrorgrad_jax.models.Constant`; none is trained. Trainable per
encoder with input width ``F``: ``F L + L`` (MLP) + ``L d + d`` (conv1) + ``(d^2 + d) (7 + 2
[n_layers = 2])`` (g1, conv4, lin4, g4, conv5, lin5, g5, and conv2, g2), i.e. **694,144** on
sports (F = 4096, 384, 64). The reference registers 756,352: it also creates ``lin1`` (whose
output is computed and thrown away) and, with ``n_layers = 1``, ``conv2``, ``lin2`` and ``g2``
that are never used (62,208 parameters, no gradient, skipped by torch's Adam). They are not
created here. Initialisers: MLP, conv, lin and g weights xavier-normal (except ``g2``, torch's
default); conv biases ``U(+-1/sqrt(in))`` (PyG ``uniform``); Linear biases torch's default.

Other deliberate differences: randomness (dropout, reparameterisation noise) comes from the
JAX ``key`` instead of torch's global stream; the stale cache starts at zeros (the reference
starts from a random tensor; evaluating before any training step is an error here, see
:func:`~mirrorgrad_jax.models.check_ready_to_rank`). The reference's hard-coded
``aggr_mode="mean"``, ``concate=False`` and dataset string "amazon" (sigmoid on) are the only
forms implemented; its ``n_layers`` > 2 behaves as 2 and 0 crashes, so only 1 and 2 are accepted.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mirrorgrad_jax.config import Fraction, NonNegativeFloat, PositiveInt, config_class
from mirrorgrad_jax.graph import CooAdjacency, bipartite_edges, edge_list_adjacency, propagate
from mirrorgrad_jax.models.initializers import torch_linear_default, xavier_normal
from mirrorgrad_jax.models.inputs import image_and_text_features, image_and_text_roles, modality_role_constraints
from mirrorgrad_jax.models.interface import Constant, FrozenRandom, Recommender, TrainingCache, TrainingSetup
from mirrorgrad_jax.models.kernels import dense, pairwise_scores, rownorm
from mirrorgrad_jax.models.registry import register

__all__ = ["MVGAE", "MVGAEConfig", "product_of_experts"]

_MAX_LOGVAR = 10.0  # clamp of logvar in the reparameterisation and the KL
_NOISE_SCALE = 0.1  # the reference's reparameterisation scales the noise by 0.1
_POE_EPS = 1e-8  # added to each expert's variance
_ROLES = ("image", "text", "collab")  # the encoders, in the reference's order v, t, c


@config_class
class MVGAEConfig:
    """Attributes:
    embedding_size: d, the width of mu / logvar and of the collaborative table (64).
    latent_dim: L, the width of the MLP output and of the frozen user preferences (128,
      hard-coded in the reference).
    n_layers: encoder layers before the mu / logvar heads, 1 or 2 (1).
    kl_weight: weight of each KL term; the reference's ``beta``, grid {0.01, 0.1, 1}.
    kl_weight_from_mg_beta: True (faithful): when training with Mirror Gradient the KL
      weight is MG's ``beta`` (see :meth:`MVGAE.config_for_training`); False: always ``kl_weight``.
    offset_item_ids: False (faithful bug): item ids index USER rows in the reconstruction
      loss; True: item rows ``U + id``.
    conv_dropout: training-only dropout after every conv (0.1, hard-coded in the reference).
    stale_eval: rank with the representation cached by the last training forward (True,
      the reference) or recompute it without dropout (False).
    image_modality: dataset modality in the image role ("image").
    text_modality: dataset modality in the text role ("text").
    """

    embedding_size: PositiveInt = 64
    latent_dim: PositiveInt = 128
    n_layers: Literal[1, 2] = 1
    kl_weight: NonNegativeFloat = 0.01
    kl_weight_from_mg_beta: bool = True
    offset_item_ids: bool = False
    conv_dropout: Fraction = 0.1
    stale_eval: bool = True
    image_modality: str = "image"
    text_modality: str = "text"

    constraints = modality_role_constraints("MVGAE", both=True)

    def for_training(self, mg_enabled: bool, mg_beta: int) -> MVGAEConfig:
        """Deprecated spelling of :meth:`MVGAE.config_for_training`, kept for earlier callers."""
        return MVGAE.config_for_training(self, TrainingSetup(mg_enabled=mg_enabled, mg_beta=mg_beta))


def product_of_experts(mus: jax.Array, logvars: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Product of Gaussian experts along axis 0.

    Args:
      mus: ``(M, ...)`` expert means.
      logvars: ``(M, ...)`` expert log-variances (unclamped).

    Returns:
      ``(mu, logvar)`` with ``T_m = 1 / (exp(logvar_m) + 1e-8)``, ``mu = sum_m mu_m T_m / sum_m T_m``
      and ``logvar = log(1 / sum_m T_m)``.
    """
    precision = 1.0 / (jnp.exp(logvars) + _POE_EPS)
    total = jnp.sum(precision, axis=0)
    return jnp.sum(mus * precision, axis=0) / total, jnp.log(1.0 / total)


def kl_divergence(mu: jax.Array, logvar: jax.Array) -> jax.Array:
    """``-1/2 mean_rows sum_dims (1 + lv - mu^2 - exp(lv))`` with ``lv = min(logvar, 10)``."""
    lv = jnp.minimum(logvar, _MAX_LOGVAR)
    return -0.5 * jnp.mean(jnp.sum(1.0 + lv - mu**2 - jnp.exp(lv), axis=1))


def _uniform(key: jax.Array, fan_in: int, shape: tuple[int, ...]) -> jax.Array:
    """``U(+-1/sqrt(fan_in))``: torch's default Linear bias and PyG's ``uniform(fan_in, .)``."""
    bound = 1.0 / np.sqrt(fan_in)
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


class _MeanGraph(nnx.Module):
    """The bidirectional edge list with self-loops, for PyG mean aggregation."""

    def __init__(self, train: np.ndarray, num_users: int, num_items: int):
        # The reference keeps the train rows as they come (a dataset here has no duplicates).
        num_nodes = num_users + num_items
        senders, receivers = bipartite_edges(train, num_users, bidirectional=True, dedupe=False)
        in_degree = np.bincount(receivers, minlength=num_nodes)
        # Both directions of every edge: the adjacency is symmetric entry by entry.
        adjacency = edge_list_adjacency(senders, receivers, num_nodes)
        self.num_nodes = num_nodes
        self.rows, self.cols, self.values = (Constant(jnp.asarray(a)) for a in adjacency[:3])
        # Mean over the incoming edges plus the added self-loop.
        self.inv_count = Constant(jnp.asarray(1.0 / (in_degree + 1.0), jnp.float32))

    def arrays(self) -> tuple[CooAdjacency, jax.Array]:
        return CooAdjacency(self.rows[...], self.cols[...], self.values[...], self.num_nodes), self.inv_count[...]


def _mean_aggregate(graph: tuple[CooAdjacency, jax.Array], y: jax.Array) -> jax.Array:
    """``(y_i + sum_{j -> i} y_j) / (deg_i + 1)`` for every node ``i`` (``graph`` from ``_MeanGraph.arrays``)."""
    adjacency, inv_count = graph
    total = propagate(adjacency, y, symmetric=True)
    return (total + y) * inv_count[:, None]


def _encoder_layers(
    p: dict[str, jax.Array], x: jax.Array, graph: tuple[CooAdjacency, jax.Array], keys: jax.Array | None, n_layers: int, dropout: float
) -> tuple[jax.Array, jax.Array]:
    """The layers of one encoder after its input ``x = rownorm([pref; MLP(features)])``.

    Args:
      p: the encoder's layer weights by name (``conv1_w``, ``g1_b``, ...).
      x: ``(N, L)`` encoder input.
      graph: the mean-aggregation arrays.
      keys: 4 dropout keys (one per conv slot), or ``None`` for evaluation (no dropout).
      n_layers: 1 or 2.
      dropout: the conv dropout rate.

    Returns:
      ``(mu, logvar)``, each ``(N, d)``.
    """
    leaky = jax.nn.leaky_relu

    def linear(name: str, v: jax.Array) -> jax.Array:
        return dense(v, p[f"{name}_w"]) + p[f"{name}_b"]

    def conv(layer: int, v: jax.Array) -> jax.Array:
        out = rownorm(_mean_aggregate(graph, dense(v, p[f"conv{layer}_w"])) + p[f"conv{layer}_b"])
        if keys is None or dropout == 0.0:
            return out
        keep = jax.random.bernoulli(keys[{1: 0, 2: 1, 4: 2, 5: 3}[layer]], 1.0 - dropout, out.shape)
        return jnp.where(keep, out / (1.0 - dropout), 0.0)

    x = leaky(linear("g1", leaky(conv(1, x))))
    if n_layers == 2:
        x = leaky(linear("g2", leaky(conv(2, x))))
    mu = linear("g4", leaky(conv(4, x))) + leaky(linear("lin4", x))
    logvar = linear("g5", leaky(conv(5, x))) + leaky(linear("lin5", x))
    return mu, logvar


class _VariationalEncoder(nnx.Module):
    """One MVGAE encoder's tensors: frozen preferences and features, the MLP and the layer weights."""

    def __init__(
        self, features: jax.Array, num_users: int, latent_dim: int, d: int, n_layers: int, *, random_features: bool, rngs: nnx.Rngs
    ):
        feat_dim = features.shape[1]
        # A random table (the collaborative encoder's) cannot be rebuilt from the dataset.
        self.features = (FrozenRandom if random_features else Constant)(jnp.asarray(features, jnp.float32))
        self.pref = FrozenRandom(xavier_normal(rngs.params(), (num_users, latent_dim)))
        self.mlp_w = nnx.Param(xavier_normal(rngs.params(), (feat_dim, latent_dim)))
        self.mlp_b = nnx.Param(_uniform(rngs.params(), feat_dim, (latent_dim,)))
        convs = {1: latent_dim, 4: d, 5: d} | ({2: d} if n_layers == 2 else {})
        self.layer_names = tuple(f"conv{layer}" for layer in sorted(convs)) + ("g1", "lin4", "g4", "lin5", "g5") + (("g2",) if n_layers == 2 else ())
        for layer, fan_in in sorted(convs.items()):
            setattr(self, f"conv{layer}_w", nnx.Param(xavier_normal(rngs.params(), (fan_in, d))))
            setattr(self, f"conv{layer}_b", nnx.Param(_uniform(rngs.params(), fan_in, (d,))))
        for name in ("g1", "lin4", "g4", "lin5", "g5"):
            setattr(self, f"{name}_w", nnx.Param(xavier_normal(rngs.params(), (d, d))))
            setattr(self, f"{name}_b", nnx.Param(_uniform(rngs.params(), d, (d,))))
        if n_layers == 2:
            # The reference leaves g_layer2 at torch's default init.
            w, b = torch_linear_default(rngs.params(), d, d)
            self.g2_w, self.g2_b = nnx.Param(w), nnx.Param(b)

    def inputs(self) -> jax.Array:
        """``(N, L)``: ``rownorm([pref; features W + b])``."""
        projected = dense(self.features[...], self.mlp_w[...]) + self.mlp_b[...]
        return rownorm(jnp.concatenate([self.pref[...], projected]))

    def layer_weights(self) -> dict[str, jax.Array]:
        """The weights of the layers after the input, by name (for :func:`_encoder_layers`)."""
        return {f"{name}_{part}": getattr(self, f"{name}_{part}")[...] for name in self.layer_names for part in "wb"}


@register
class MVGAE(Recommender):
    """Multi-modal variational graph auto-encoder; see the module docstring."""

    name = "mvgae"
    config_class = MVGAEConfig
    multimodal = True

    @classmethod
    def config_for_training(cls, config: MVGAEConfig, setup: TrainingSetup) -> MVGAEConfig:
        """The config to build the model with for a run with the given Mirror Gradient setting.

        The reference's KL weight is its config key ``beta``, which MG's ``beta`` (batches
        per MG step, 3) overrides when MG is on. With ``kl_weight_from_mg_beta`` (the
        default) and MG on this returns a copy with ``kl_weight = float(setup.mg_beta)``;
        otherwise ``config`` unchanged.
        """
        if setup.mg_enabled and config.kl_weight_from_mg_beta:
            return dataclasses.replace(config, kl_weight=float(setup.mg_beta))
        return config

    def __init__(self, dataset, config: MVGAEConfig, *, rngs: nnx.Rngs):
        # Both encoders always run in its forward, so both roles are required.
        image, text = image_and_text_roles(dataset, config.image_modality, config.text_modality, "MVGAE")
        feats = image_and_text_features(dataset, image, text, "MVGAE")
        self.config = config
        self.num_users, self.num_items = dataset.num_users, dataset.num_items
        d, latent = config.embedding_size, config.latent_dim
        self.graph = _MeanGraph(dataset.train, dataset.num_users, dataset.num_items)
        collaborative = xavier_normal(rngs.params(), (dataset.num_items, d))
        tables = {"image": feats["image"], "text": feats["text"], "collab": collaborative}
        for role, table in tables.items():  # the order of _ROLES
            encoder = _VariationalEncoder(table, self.num_users, latent, d, config.n_layers, random_features=role == "collab", rngs=rngs)
            setattr(self, f"{role}_gcn", encoder)
        self.cache = TrainingCache(jnp.zeros((self.num_users + self.num_items, d), jnp.float32))

    # -- pieces ---------------------------------------------------------------------

    def encode(self, key: jax.Array | None = None) -> dict[str, tuple[jax.Array, jax.Array]]:
        """``{"image" | "text" | "collab" | "pd": (mu, logvar)}``; ``key`` turns the conv dropout on.

        The three encoders have the same layer shapes after their input projection, so their
        layers run as one ``vmap`` over the stacked weights (a third of the program to compile).
        """
        encoders = [getattr(self, f"{role}_gcn") for role in _ROLES]
        x = jnp.stack([enc.inputs() for enc in encoders])
        weights = jax.tree.map(lambda *w: jnp.stack(w), *[enc.layer_weights() for enc in encoders])
        graph, cfg = self.graph.arrays(), self.config
        if key is None:
            run = jax.vmap(lambda p, v: _encoder_layers(p, v, graph, None, cfg.n_layers, cfg.conv_dropout))
            mus, logvars = run(weights, x)
        else:
            run = jax.vmap(lambda p, v, k: _encoder_layers(p, v, graph, k, cfg.n_layers, cfg.conv_dropout))
            mus, logvars = run(weights, x, jax.random.split(key, (len(encoders), 4)))
        out = {role: (mus[r], logvars[r]) for r, role in enumerate(_ROLES)}
        mu, lv = product_of_experts(mus[:2], logvars[:2])  # image and text
        out["pd"] = product_of_experts(jnp.stack([mu, mus[2]]), jnp.stack([lv, logvars[2]]))
        return out

    def reparameterisation_noise(self, key: jax.Array) -> jax.Array:
        """``(4, N, d)`` standard normal noise for ``z_pd``, ``z_v``, ``z_t``, ``z_c`` (in that order)."""
        return jax.random.normal(key, (4, self.num_users + self.num_items, self.config.embedding_size), jnp.float32)

    def reconstruction_loss(self, z: jax.Array, users: jax.Array, pos: jax.Array, neg: jax.Array) -> jax.Array:
        """``-sum_b log2 sigmoid(pos_b - neg_b)``, the max taken over all B batch negatives."""
        offset = self.num_users if self.config.offset_item_ids else 0
        s = jax.nn.sigmoid(z)
        s_u = s[users]
        pos_score = jax.nn.sigmoid(jnp.sum(s_u * s[pos + offset], -1))
        neg_score = jax.nn.sigmoid(jnp.max(pairwise_scores(s_u, s[neg + offset]), axis=-1))
        return -jnp.sum(jax.nn.log_sigmoid(pos_score - neg_score)) / np.log(2.0)

    # -- interface ------------------------------------------------------------------

    def loss(self, batch: jax.Array, key: jax.Array) -> jax.Array:
        """Reconstruction + weighted KL for the fused code and each encoder alone (training mode)."""
        users, pos, neg = batch[0], batch[1], batch[2]
        key_dropout, key_noise = jax.random.split(key)
        codes = self.encode(key_dropout)
        self.cache.set_value(jax.nn.sigmoid(codes["pd"][0]))
        # The four codes z_pd, z_v, z_t, z_c stacked: one vectorised loss instead of four copies.
        mu, logvar = (jnp.stack([codes[r][j] for r in ("pd", "image", "text", "collab")]) for j in (0, 1))
        z = mu + _NOISE_SCALE * self.reparameterisation_noise(key_noise) * jnp.exp(0.5 * jnp.minimum(logvar, _MAX_LOGVAR))
        recon = jax.vmap(self.reconstruction_loss, in_axes=(0, None, None, None))(z, users, pos, neg)
        kl = jax.vmap(kl_divergence)(mu, logvar)
        return jnp.sum(recon + self.config.kl_weight * kl)

    def ranks_with_training_cache(self) -> bool:
        return self.config.stale_eval

    def scores(self, users: jax.Array) -> jax.Array:
        if self.config.stale_eval:
            rep = self.cache[...]
        else:
            rep = jax.nn.sigmoid(self.encode(None)["pd"][0])
        return rep[users] @ rep[self.num_users :].T
