"""DualGNN (Wang et al., IEEE TMM 2021) as the reference implements it (``dualgnn.py`` of the Mirror Gradient repository, built on MMRec).

Per modality m (``image`` = v, then ``text`` = t; other modalities are ignored, as in
the reference), a weight-free two-hop GCN over the user-item graph:

* ``x = rownorm([pref_m; MLP_1(leaky_relu(MLP(feat_m)))])``, ``(U + I, d)``, where
  ``pref_m`` is a trainable ``(U, d)`` user table and the MLP maps ``F_m -> 4d -> d``;
* ``h = conv(x)``, ``h1 = conv(h)``, ``rep_m = x + h + h1`` with
  ``conv(x)[dst] = sum_(src -> dst) (d_src d_dst)^-1/2 x[src]`` over the bidirectional
  train edges (no self-loops; ``aggr_mode="mean"`` gives PyG's unnormalised mean).

Fusion (``weighted_sum``): ``item_rep = v_i + t_i`` and a per-user softmax-initialised
weight ``weight_u (U, 2, 1)`` mixes the user rows. Then each user adds the weighted sum of
its 40 sampled co-occurrence neighbours (re-drawn every epoch in :meth:`pre_epoch`):
``user_rep += sum_k W[u, k] user_rep[nbr[u, k]]``. Score = dot product.

Loss: ``-mean log2 sigmoid(s_pos - s_neg) + reg_weight * (mean(pref_v[users]^2) +
mean(pref_t[users]^2) + mean(weight_u^2) + mean(weight_i^2))``; ``weight_i (I, 2, 1)`` is
used only in this regulariser (it is trained only towards 0).

Reference quirks kept by default, with the option that changes each:

* ``user_fusion="aliased"`` (default, faithful): the reference adds ``t_rep`` to
  ``v_rep`` *in place* before fusing users, so the user rows are
  ``w_u0 (v_u + t_u) + w_u1 t_u``. ``user_fusion="weighted_sum"`` gives the intended
  ``w_u0 v_u + w_u1 t_u``. Items are ``v_i + t_i`` either way.
* ``stale_eval=True`` (default, faithful): ``full_sort_predict`` ranks with the
  representation cached by the LAST training forward (held in a :class:`TrainingCache`);
  ``False`` recomputes it with the current parameters and user-graph sample. With the
  cache, scores before any training step are all zero.

Parameters: the reference also registers ``MLP_v``, ``MLP_t`` (``d x d``, no bias) and
``MLP_user`` (``3d -> d``), which no forward pass uses, and builds "dropped item" edge
lists that are never read. They are not created here, so the count is
``sum_m (dU + 4d F_m + 4d + 4d*d + d) + 2U + 2I``, ``2d^2 + 3d^2 + d`` fewer than the
reference's (on sports, d = 64: 5,844,742 instead of 5,865,286). The reference's
``result_embed`` initial tensor is not a parameter on GPU and is not created either.

The latent size ``d`` is ``embedding_size`` (the reference hard-codes ``dim_latent = 64``
and the MLP width ``4 * 64``; its ``embedding_size`` is also 64).

Parity with the reference (``benchmarks/parity.py``, float64, the reference's user-graph
sample of the epoch fed to both sides; ``benchmarks/results/parity.md``): loss, every
gradient and the (stale) full-ranking scores agree to about 1e-15 relative, and the
parameters and the cached ranking representation after 4 and 6 Adam steps (MG on and off)
to about 1e-13; the per-epoch neighbour padding matches the reference's in distribution.
The lower validation recall@20 seen on a held-out dataset (0.0670-0.0706 over three seeds
against the reference's 0.0729-0.0762 over three) is therefore not a difference of the
model: it is chance (three runs against three separate completely with probability 0.1) or
the input user graph. :func:`~mirrorgrad_jax.graph.build_user_graph` breaks equal
co-occurrence counts by user id, MMRec's preprocessing in ``torch.topk``'s order, so the 40
neighbours DualGNN reads can differ (on a 1,500-user synthetic set, for 1,409 users);
``user_graph_ties="torch_cpu"`` builds the lists in torch's order instead (equal to the
script's on MovieLens-100K and a 300-user synthetic set, every user). A folder that carries
MMRec's ``user_graph_dict.npy`` is read as it is.
"""

from __future__ import annotations

import typing
from typing import Literal
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mirrorgrad_jax.config import NonNegativeFloat, PositiveInt, config_class
from mirrorgrad_jax.errors import ConfigError
from mirrorgrad_jax.graph import (
    UserGraphTies,
    bipartite_edges,
    build_user_graph,
    pack_user_graph,
    sample_user_neighbours,
    segment_mean,
    symmetric_edge_norm,
)
from mirrorgrad_jax.models.interface import Constant, EpochSample, Recommender, TrainingCache
from mirrorgrad_jax.models.kernels import dense, rownorm
from mirrorgrad_jax.models.registry import register

__all__ = ["DualGNN", "DualGNNConfig", "DualGraphRecommender", "ModalityGCN", "UserNeighbourSampler", "reference_modalities"]

_LN2 = float(np.log(2.0))
# F.normalize's default epsilon.
AggrMode = Literal["add", "mean"]
UserFusion = Literal["aliased", "weighted_sum"]
AGGR_MODES: tuple[str, ...] = typing.get_args(AggrMode)
USER_FUSIONS: tuple[str, ...] = typing.get_args(UserFusion)


def reference_modalities(features) -> tuple[str, ...]:
    """The modalities the reference reads, in its order: ``image`` (v_feat), then ``text`` (t_feat)."""
    return tuple(m for m in ("image", "text") if m in features)


@functools.partial(jax.jit, static_argnums=(1,))
def softmax_fusion_weights(key: jax.Array, rows: int) -> jax.Array:
    """``softmax(xavier_normal((rows, 2, 1)), axis=1)``, the reference's weight_u / weight_i init.

    torch's fans for a ``(rows, 2, 1)`` tensor are ``fan_in = 2``, ``fan_out = rows``, so the
    std is ``sqrt(2 / (rows + 2))`` (jax's variance_scaling counts 3-D fans differently).
    """
    raw = jax.random.normal(key, (rows, 2, 1), jnp.float32) * np.sqrt(2.0 / (rows + 2))
    return jax.nn.softmax(raw, axis=1)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def init_modality_branch(key: jax.Array, num_users: int, feat_dim: int, dim: int) -> dict[str, jax.Array]:
    """One modality branch's parameters, all cut from ONE uniform draw.

    ``pref (U, d)`` xavier-normal with gain 1 (std ``sqrt(2 / (U + d))``, the normal made from
    the uniform by the inverse CDF, as ``jax.random.normal`` does); ``MLP: F -> 4d`` and
    ``MLP_1: 4d -> d`` with torch's default Linear init ``U(+-1/sqrt(fan_in))`` for weights
    and biases (weights stored ``(fan_in, fan_out)``). One draw compiles one threefry
    program; a draw per tensor costs several times more XLA compile time on CPU.
    """
    hidden = 4 * dim
    shapes = {
        "pref": (num_users, dim),
        "mlp_w": (feat_dim, hidden),
        "mlp_b": (hidden,),
        "mlp1_w": (hidden, dim),
        "mlp1_b": (dim,),
    }
    sizes = [int(np.prod(shape)) for shape in shapes.values()]
    signed = 2.0 * jax.random.uniform(key, (sum(sizes),), jnp.float32) - 1.0  # U[-1, 1)
    pieces = dict(zip(shapes, jnp.split(signed, np.cumsum(sizes)[:-1])))
    lowest = jnp.nextafter(jnp.float32(-1.0), jnp.float32(1.0))
    normal = np.sqrt(2.0) * jax.scipy.special.erfinv(jnp.maximum(pieces["pref"], lowest))
    out = {"pref": normal * np.sqrt(2.0 / (num_users + dim))}
    bounds = {"mlp_w": feat_dim, "mlp_b": feat_dim, "mlp1_w": hidden, "mlp1_b": hidden}
    for name, fan_in in bounds.items():
        out[name] = pieces[name] / np.sqrt(fan_in)
    return {name: out[name].reshape(shape) for name, shape in shapes.items()}


def log2_bpr_loss(pos: jax.Array, neg: jax.Array) -> jax.Array:
    """``-mean log2 sigmoid(pos - neg)`` (loss variant (c)), via a safe log-sigmoid."""
    return -jnp.mean(jax.nn.log_sigmoid(pos - neg)) / _LN2


class ModalityGCN(nnx.Module):
    """One modality's branch: preference table, feature MLP and the weight-free 2-hop conv.

    Holds ``pref (U, d)``, ``MLP: F -> 4d`` and ``MLP_1: 4d -> d`` (initialised by
    :func:`init_modality_branch`) and the modality's raw feature table as a :class:`Constant`
    (never fine-tuned: the MLP reads the constant features).
    """

    def __init__(self, features: np.ndarray, num_users: int, dim: int, *, rngs: nnx.Rngs):
        features = np.asarray(features, np.float32)
        self.features = Constant(jnp.asarray(features))
        init = init_modality_branch(rngs.params(), num_users, features.shape[1], dim)
        self.pref = nnx.Param(init["pref"])
        self.mlp_w, self.mlp_b = nnx.Param(init["mlp_w"]), nnx.Param(init["mlp_b"])
        self.mlp1_w, self.mlp1_b = nnx.Param(init["mlp1_w"]), nnx.Param(init["mlp1_b"])

    def node_inputs(self) -> jax.Array:
        """``x = rownorm([pref; MLP_1(leaky_relu(MLP(feat)))])``, shape ``(U + I, d)``."""
        hidden = jax.nn.leaky_relu(dense(self.features[...], self.mlp_w[...]) + self.mlp_b[...], negative_slope=0.01)
        item_x = hidden @ self.mlp1_w[...] + self.mlp1_b[...]
        return rownorm(jnp.concatenate([self.pref[...], item_x]))

    def __call__(self, senders: jax.Array, receivers: jax.Array, norm: jax.Array, aggr_mode: str) -> jax.Array:
        """``rep = x + conv(x) + conv(conv(x))``, shape ``(U + I, d)``."""
        x = self.node_inputs()
        h = edge_conv(x, senders, receivers, norm, aggr_mode)
        h1 = edge_conv(h, senders, receivers, norm, aggr_mode)
        return x + h + h1


def edge_conv(x: jax.Array, senders: jax.Array, receivers: jax.Array, norm: jax.Array, aggr_mode: str) -> jax.Array:
    """The reference's ``Base_gcn``: messages from senders, aggregated at receivers.

    ``"add"``: ``out[dst] = sum_e norm_e x[src_e]`` with ``norm`` from
    :func:`~mirrorgrad_jax.graph.symmetric_edge_norm`; ``"mean"``: PyG's mean of the raw
    ``x[src_e]`` (the reference skips the normalisation for any other aggregation).
    ``receivers`` must be sorted.
    """
    messages = x[senders]
    if aggr_mode == "add":
        return jax.ops.segment_sum(norm[:, None] * messages, receivers, num_segments=x.shape[0], indices_are_sorted=True)
    return segment_mean(messages, receivers, x.shape[0])


def sorted_bipartite_edges(train: np.ndarray, num_users: int) -> tuple[np.ndarray, np.ndarray]:
    """Bidirectional ``(senders, receivers)`` of the train pairs, sorted by receiver (then sender)."""
    senders, receivers = bipartite_edges(train, num_users)
    order = np.lexsort((senders, receivers))
    return senders[order], receivers[order]


class UserNeighbourSampler:
    """Host-side holder of the packed user co-occurrence graph (not a model variable).

    Uses ``dataset.user_graph`` (the reference's ``user_graph_dict.npy``) when present and
    otherwise builds it from the train pairs with
    :func:`~mirrorgrad_jax.graph.build_user_graph` (its ``ties`` order for users tied on
    their count); packed once to width ``k``.
    """

    def __init__(self, dataset, k: int, ties: str = "lowest_id"):
        graph = dataset.user_graph
        if graph is None:
            graph = build_user_graph(dataset.train, dataset.num_users, ties=ties)
        self.num_users, self.k = int(dataset.num_users), int(k)
        self.packed = pack_user_graph(graph, self.num_users, self.k)

    def sample(self, rng: np.random.Generator) -> tuple[jax.Array, jax.Array]:
        """One epoch's ``topk_sample``: ``(U, k)`` int32 neighbour ids and ``(U, k)`` softmax weights."""
        idx, weights = sample_user_neighbours(self.packed, self.num_users, self.k, rng=rng)
        return jnp.asarray(idx), jnp.asarray(weights)


def initial_sample_rng(rngs: nnx.Rngs) -> np.random.Generator:
    """A host generator seeded from ``rngs`` for the user-graph sample made at init.

    The first :meth:`pre_epoch` replaces that sample (the reference has none before its
    first ``pre_epoch_processing``); it only makes a fresh model usable.
    """
    return np.random.default_rng(np.asarray(jax.random.key_data(rngs.params())))


# symmetric_edge_norm as one compiled program (it runs once per model build).
compiled_edge_norm = jax.jit(symmetric_edge_norm, static_argnums=(2,))


def aggregate_user_neighbours(user_rep: jax.Array, idx: jax.Array, weights: jax.Array) -> jax.Array:
    """``h[u] = sum_k weights[u, k] * user_rep[idx[u, k]]`` (the reference's ``User_Graph_sample``)."""
    return jnp.einsum("uk,ukd->ud", weights, user_rep[idx])


@config_class
class DualGNNConfig:
    """Attributes:
    embedding_size: latent size d of each modality branch (64; MLP width 4d).
    reg_weight: weight of the squared-mean regulariser; grid {0.1, 0.01, 1e-3, 1e-4, 1e-5};
      default 1e-3, a middle value of the grid (MMRec gives only the grid; its first value, 0.1, is not the default here).
    aggr_mode: GCN aggregation, ``"add"`` (the reference's only grid value: symmetric
      normalised sum) or ``"mean"`` (PyG mean of unnormalised messages).
    num_user_neighbours: k of the per-epoch user-graph sample (40, a code constant).
    user_fusion: ``"aliased"`` (reference: ``w0 (v + t) + w1 t``) or ``"weighted_sum"``
      (``w0 v + w1 t``).
    stale_eval: rank with the representation cached by the last training forward
      (True, reference) or recompute it (False).
    user_graph_ties: when the dataset carries no ``user_graph_dict.npy`` and the user
      graph is built from the train pairs, the order of users tied on their co-occurrence
      count: ``"lowest_id"`` (default) or ``"torch_cpu"``, the order MMRec's
      ``dualgnn-gen-u-u-matrix.py`` leaves them in (torch's CPU ``topk``; the same lists as
      the script, checked on MovieLens-100K). The model reads the first 40 of each list.
    """

    embedding_size: PositiveInt = 64
    reg_weight: NonNegativeFloat = 1e-3
    aggr_mode: AggrMode = "add"
    num_user_neighbours: PositiveInt = 40
    user_fusion: UserFusion = "aliased"
    stale_eval: bool = True
    user_graph_ties: UserGraphTies = "lowest_id"


def check_modalities(name: str, dataset) -> tuple[str, ...]:
    modalities = reference_modalities(dataset.features)
    if not modalities:
        raise ConfigError(
            f"{name} needs an 'image' and/or a 'text' feature table, but dataset {dataset.name!r} has "
            f"{sorted(dataset.features) or 'none'}"
        )
    return modalities


class DualGraphRecommender(Recommender):
    """What DualGNN and DRAGON share: per-modality GCN branches, user fusion weights, the
    symmetric user-item graph and the user-user neighbour sample redrawn every epoch."""

    def _init_branches(self, model_name: str, dataset, config, rngs: nnx.Rngs) -> tuple[int, int]:
        """Modality GCNs and ``weight_u``; returns ``(U + I, d)``."""
        self.modalities = check_modalities(model_name, dataset)
        self.config = config
        self.num_users, self.num_items = int(dataset.num_users), int(dataset.num_items)
        d = int(config.embedding_size)
        for m in self.modalities:
            setattr(self, f"gcn_{m}", ModalityGCN(dataset.features[m], self.num_users, d, rngs=rngs))
        self.weight_u = nnx.Param(softmax_fusion_weights(rngs.params(), self.num_users))
        return self.num_users + self.num_items, d

    def _init_graphs(self, dataset, config, rngs: nnx.Rngs, num_nodes: int) -> None:
        """User-item edges with their norms, and the first user-user neighbour sample."""
        senders, receivers = sorted_bipartite_edges(dataset.train, self.num_users)
        self.senders, self.receivers = Constant(jnp.asarray(senders)), Constant(jnp.asarray(receivers))
        self.edge_norm = Constant(compiled_edge_norm(senders, receivers, num_nodes))
        self._user_sampler = UserNeighbourSampler(dataset, config.num_user_neighbours, config.user_graph_ties)
        idx, weights = self._user_sampler.sample(initial_sample_rng(rngs))
        self.user_nbr_idx, self.user_nbr_weights = EpochSample(idx), EpochSample(weights)

    def pre_epoch(self, rng: np.random.Generator) -> None:
        idx, weights = self._user_sampler.sample(rng)
        self.user_nbr_idx, self.user_nbr_weights = EpochSample(idx), EpochSample(weights)

    def ranks_with_training_cache(self) -> bool:
        return bool(self.config.stale_eval)

    def _gcn(self, modality: str) -> ModalityGCN:
        return getattr(self, f"gcn_{modality}")


@register
class DualGNN(DualGraphRecommender):
    """Dual graph (user-item + user-user) multimodal GCN; see the module docstring."""

    name = "dualgnn"
    config_class = DualGNNConfig
    multimodal = True

    def __init__(self, dataset, config: DualGNNConfig, *, rngs: nnx.Rngs):
        n, d = self._init_branches("DualGNN", dataset, config, rngs)
        self.weight_i = nnx.Param(softmax_fusion_weights(rngs.params(), self.num_items))
        self._init_graphs(dataset, config, rngs, n)
        if config.stale_eval:
            self.cache = TrainingCache(jnp.zeros((n, d), jnp.float32))

    def _modality_reps(self) -> list[jax.Array]:
        edges = (self.senders[...], self.receivers[...], self.edge_norm[...])
        return [self._gcn(m)(*edges, self.config.aggr_mode) for m in self.modalities]

    def representation(self) -> jax.Array:
        """``[user_rep; item_rep]``, shape ``(U + I, d)``, with the current parameters and user-graph sample."""
        u = self.num_users
        reps = self._modality_reps()
        if len(reps) == 1:
            user_rep, item_rep = reps[0][:u], reps[0][u:]
        else:
            v, t = reps
            item_rep = v[u:] + t[u:]
            # The reference's in-place `representation += t_rep` also changes v_rep.
            v_users = v[:u] + t[:u] if self.config.user_fusion == "aliased" else v[:u]
            w = self.weight_u[...]
            user_rep = w[:, 0] * v_users + w[:, 1] * t[:u]
        user_rep = user_rep + aggregate_user_neighbours(user_rep, self.user_nbr_idx[...], self.user_nbr_weights[...])
        return jnp.concatenate([user_rep, item_rep])

    def loss(self, batch, key):
        users = batch[0]
        result = self.representation()
        if self.config.stale_eval:
            self.cache[...] = jax.lax.stop_gradient(result)
        u, pos, neg = result[users], result[self.num_users + batch[1]], result[self.num_users + batch[2]]
        bpr = log2_bpr_loss(jnp.sum(u * pos, -1), jnp.sum(u * neg, -1))
        reg = sum(jnp.mean(self._gcn(m).pref[...][users] ** 2) for m in self.modalities)
        reg = reg + jnp.mean(self.weight_u[...] ** 2) + jnp.mean(self.weight_i[...] ** 2)
        return bpr + self.config.reg_weight * reg

    def scores(self, users):
        result = self.cache[...] if self.config.stale_eval else self.representation()
        return result[users] @ result[self.num_users :].T
