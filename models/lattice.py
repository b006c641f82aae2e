"""LATTICE (Zhang et al., 2021, "Mining Latent Structures for Multimedia Recommendation").

The reference's ``lattice.py``. Two graphs:

* the user-item graph ``A_rw+I`` (:func:`~mirrorgrad_jax.graph.self_loop_row_normalized_adjacency`:
  ``A + I_N`` divided by its row sums, not symmetric); LightGCN with ``n_ui_layers`` layers,
  mean of the ``n_ui_layers + 1`` outputs, gives ``u`` and ``i``;
* a LEARNED item-item graph ``S``, mixing a graph of the projected, trainable features
  with the frozen graphs of the raw features::

      S = (1 - lambda) * norm(sum_m w_m Knn(cos(trs_m(emb_m)))) + lambda * sum_m w_m K_val_m

  with ``w = softmax(modal_weight)`` (image first), ``Knn`` the top-``knn_k`` cosine VALUES
  of each row (the item itself a candidate), ``norm`` the symmetric normalisation by the row
  sums of the combined kept values (:func:`~mirrorgrad_jax.graph.normalize_knn_values`),
  and ``K_val_m`` the same top-k graph of the RAW features, normalised per modality and
  built once at init. ``w`` weighs both parts, so it gets gradient through both.

Forward: ``h = S^{n_layers} E_i``; items are ``i + rownorm(h)``. Loss: ``-mean
logsigmoid(u.i+ - u.i-) + reg_weight * 0.5 (||u_B||^2 + ||i+_B||^2 + ||i-_B||^2) /
reg_batch_size`` on the propagated embeddings of the batch, divided by the CONFIG batch
size (2048) also for the short last batch, as the reference does.

When ``S`` is rebuilt (the crux of the port): the reference rebuilds it WITH gradient
in the first training forward of each epoch and reuses it detached for the other batches,
so the projections, the raw feature tables and ``modal_weight`` get a gradient only from
the first batch of each epoch. What Adam does with them on the other batches depends on
PyTorch's ``optimizer.zero_grad()``: in PyTorch 1.13, the version the MG reference's
environment pins, it writes zeros, and Adam keeps moving them on their momentum every step
(the default here, ``TrainConfig.zero_grad = "zeros"``); from PyTorch 2.0 it sets them to
``None`` and Adam skips them (``zero_grad = "none"``), which moves them about ten times less
per epoch. Here, on the interface of :mod:`~mirrorgrad_jax.models.interface`:

* those parameters live in one sub-module, ``graph_learner``, named in
  ``first_batch_params``;
* ``first_batch_loss`` rebuilds ``S`` from the current parameters with gradient, writes it
  (detached) into the :class:`~mirrorgrad_jax.models.TrainingCache` variables
  ``item_graph_idx`` / ``item_graph_val`` and returns the loss on the differentiable ``S``;
* ``loss`` reads the cached ``S`` (constant: ``graph_learner`` gets exactly zero gradient);
  the trainer carries the cache from step to step (and, with ``zero_grad = "none"``, leaves
  ``graph_learner`` and its optimizer state untouched on these steps). On a Mirror Gradient
  batch 0, pass 1 is
  ``first_batch_loss`` and pass 2 is ``loss`` (the reference's pass 2 reuses pass 1's ``S``
  detached);
* ``scores`` rebuilds ``S`` from the current parameters (the reference's
  ``full_sort_predict`` builds it under ``no_grad``) and does not touch the cache.

Memory: ``S`` is never dense. The neighbour search runs in row chunks of
``knn_chunk_size`` rows (:func:`~mirrorgrad_jax.graph.learnable_knn_cosine`: top-k ids under
``stop_gradient``, then the kept cosines recomputed from the gathered normalised rows,
which gives the gradient torch gets through the top-k values), and ``S`` is stored as
``(I, 4 knn_k)`` neighbour lists (learned image, learned text, original image, original
text) with the weights multiplied in: ``O(I k d)`` memory instead of the reference's
4-6 dense ``I x I`` matrices, so LATTICE runs on 63k-item datasets.

Modalities: as in BM3/FREEDOM the image and text roles are filled by the dataset
modalities named ``image_modality`` / ``text_modality``. With one of them the reference
uses that modality's graphs with weight 1 (``modal_weight`` is then unused).

Parameters (the reference's count: ``d(U + I) + sum_m [I F_m + F_m d_f + d_f] + 2``, 85,979,330 on sports
with ``d = d_f = 64``); the projections use torch's default Linear init.

Deliberate differences from the reference:

* Only ``cf_model = lightgcn`` (the reference's default); the
  ``ngcf`` and ``mf`` branches and ``mess_dropout`` (NGCF only) are not offered.
  ``n_ui_layers`` is a field; the reference derives it as ``len(weight_size)`` (2).
* With a single modality ``modal_weight`` is not created (the reference registers it but
  never reads it; Adam skips it, so it stays at its init): 2 parameters fewer.
* A feature row of zeros has cosine 0 with every item; the reference divides by its zero
  norm and gets NaN.
* Exact ties in the top-k go to the lower item id (``lax.top_k``); torch's order for exact
  ties is unspecified.
* The reference caches the raw-feature graphs on disk (``image_adj_10.pt``) and reloads
  them even if the features changed; here they are rebuilt from the dataset at init.
* Corrected-behaviour option (off by default): ``reg_over_actual_batch = True`` divides the
  L2 term by the rows of the batch at hand, so the short last batch of an epoch is not
  under-regularised (the reference divides by the config batch size).
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mirrorgrad_jax.config import NonNegativeFloat, NonNegativeInt, PositiveInt, UnitInterval, config_class
from mirrorgrad_jax.data import RecDataset
from mirrorgrad_jax.graph import (
    CooAdjacency,
    column_order,
    combine_knn,
    knn_item_graph,
    knn_propagate,
    layer_mean_propagate,
    learnable_knn_cosine,
    normalize_knn_values,
    self_loop_row_normalized_adjacency,
)
from mirrorgrad_jax.models.initializers import add_feature_projection, xavier_uniform
from mirrorgrad_jax.models.inputs import image_and_text_features, modality_role_constraints, require_knn_k
from mirrorgrad_jax.models.interface import Constant, Recommender, TrainingCache
from mirrorgrad_jax.models.kernels import dense, rownorm
from mirrorgrad_jax.models.losses import bpr_log_likelihood, embedding_l2
from mirrorgrad_jax.models.registry import register

__all__ = ["LATTICE", "LATTICEConfig", "ItemGraphLearner"]

# One compiled program instead of many eagerly dispatched ops for the graph built at init.
_initial_item_graph = nnx.jit(lambda learner: learner.item_graph())


@config_class
class LATTICEConfig:
    """Attributes:
    embedding_size: d of the user and item id tables (64).
    feat_embed_dim: width of the modality projections that the learned graph is built from
      (64); they feed only the similarity, so it may differ from ``embedding_size``.
    n_ui_layers: LightGCN layers on ``A_rw+I`` (2; the reference's ``len(weight_size)``).
    n_layers: hops of the item ids on the item graph ``S`` (1).
    knn_k: neighbours per item in every kNN graph, the item itself a candidate (10).
    lambda_coeff: weight of the frozen raw-feature graphs in ``S``; the learned graph gets
      ``1 - lambda_coeff`` (0.9).
    reg_weight: weight of the L2 term on the batch's propagated embeddings; grid
      {0, 1e-5, 1e-4, 1e-3}.
    reg_batch_size: divisor of the L2 term (2048). The reference divides by its CONFIG
      batch size, also for the short last batch, so keep this equal to the trainer's
      ``batch_size``; the model cannot see the trainer's settings.
    reg_over_actual_batch: corrected behaviour (False: the reference's): divide the L2 term
      by the rows of the batch at hand instead of ``reg_batch_size``.
    knn_chunk_size: rows per similarity block of the neighbour searches (2048); bounds the
      memory of a rebuild at ``knn_chunk_size * I`` floats, does not change the result.
    image_modality: dataset modality in the image role ("image"; "" leaves the role out).
    text_modality: dataset modality in the text role ("text"; "" leaves the role out).

    The reference has only the grid for reg_weight; the default here is its first value.
    """

    embedding_size: PositiveInt = 64
    feat_embed_dim: PositiveInt = 64
    n_ui_layers: NonNegativeInt = 2
    n_layers: NonNegativeInt = 1
    knn_k: PositiveInt = 10
    lambda_coeff: UnitInterval = 0.9
    reg_weight: NonNegativeFloat = 0.0
    reg_batch_size: PositiveInt = 2048
    reg_over_actual_batch: bool = False
    knn_chunk_size: PositiveInt = 2048
    image_modality: str = "image"
    text_modality: str = "text"

    constraints = modality_role_constraints("LATTICE")


class ItemGraphLearner(nnx.Module):
    """The parameters LATTICE trains only through its item graph, and the graph they build.

    Holds, per modality role, the trainable raw table ``{role}_emb`` (I, F), the projection
    ``{role}_trs_w`` (F, d_f) / ``{role}_trs_b`` (d_f,), and with two roles
    ``modal_weight`` (2,) = [0.5, 0.5] (image first); plus the frozen raw-feature graphs
    ``{role}_knn_idx`` / ``{role}_knn_val`` (K_val lists, :class:`Constant`).
    """

    def __init__(self, feats: dict[str, np.ndarray], config: LATTICEConfig, *, rngs: nnx.Rngs) -> None:
        self.config = config
        self.modalities = tuple(role for role in ("image", "text") if role in feats)
        for role in self.modalities:
            table = feats[role]
            add_feature_projection(self, role, table, config.feat_embed_dim, rngs.params())
            idx, val = knn_item_graph(table, config.knn_k, chunk_size=config.knn_chunk_size, values="cosine")
            setattr(self, f"{role}_knn_idx", Constant(jnp.asarray(idx, jnp.int32)))
            setattr(self, f"{role}_knn_val", Constant(jnp.asarray(val, jnp.float32)))
        if len(self.modalities) == 2:
            self.modal_weight = nnx.Param(jnp.array([0.5, 0.5], jnp.float32))

    def modality_weights(self) -> tuple[jax.Array | float, ...]:
        """``softmax(modal_weight)`` per role (image first); ``(1.0,)`` with one role."""
        if len(self.modalities) == 1:
            return (1.0,)
        w = jax.nn.softmax(self.modal_weight[...])
        return tuple(w[m] for m in range(len(self.modalities)))

    def projected(self, role: str) -> jax.Array:
        """``{role}_trs({role}_emb)``: (I, d_f)."""
        return dense(getattr(self, f"{role}_emb")[...], getattr(self, f"{role}_trs_w")[...]) + getattr(self, f"{role}_trs_b")[...]

    def item_graph(self) -> tuple[jax.Array, jax.Array]:
        """``S`` from the current parameters as merged neighbour lists, differentiable in them.

        Returns:
          ``(idx, val)``, each ``(I, 2 * knn_k * num_modalities)``: the learned lists of every
          role, then the frozen ones, with ``(1 - lambda) w_m`` / ``lambda w_m`` multiplied in.
        """
        cfg = self.config
        weights = self.modality_weights()
        learned = [
            (learnable_knn_cosine(self.projected(role), cfg.knn_k, chunk_size=cfg.knn_chunk_size), w)
            for role, w in zip(self.modalities, weights)
        ]
        learned_idx, learned_val = combine_knn(learned)
        # Normalised by the row sums of the COMBINED learned values (not per modality).
        learned_val = normalize_knn_values(learned_idx, learned_val)
        original = [
            ((getattr(self, f"{role}_knn_idx")[...], getattr(self, f"{role}_knn_val")[...]), w)
            for role, w in zip(self.modalities, weights)
        ]
        original_idx, original_val = combine_knn(original)
        lam = cfg.lambda_coeff
        return (
            jnp.concatenate([learned_idx, original_idx], axis=1),
            jnp.concatenate([(1.0 - lam) * learned_val, lam * original_val], axis=1),
        )


@register
class LATTICE(Recommender):
    """Learned multimodal item graph, rebuilt once per epoch; see the module docstring."""

    name = "lattice"
    config_class = LATTICEConfig
    multimodal = True
    first_batch_params = ("graph_learner",)

    def __init__(self, dataset: RecDataset, config: LATTICEConfig, *, rngs: nnx.Rngs) -> None:
        require_knn_k(config.knn_k, dataset.num_items, "LATTICE")
        feats = image_and_text_features(dataset, config.image_modality, config.text_modality, "LATTICE")
        self.config = config
        self.num_users, self.num_items = dataset.num_users, dataset.num_items
        d = config.embedding_size
        self.users = nnx.Param(xavier_uniform(rngs.params(), (dataset.num_users, d)))
        self.items = nnx.Param(xavier_uniform(rngs.params(), (dataset.num_items, d)))
        self.graph_learner = ItemGraphLearner(feats, config, rngs=rngs)
        adj = self_loop_row_normalized_adjacency(dataset.train, dataset.num_users, dataset.num_items)
        self.adj_rows, self.adj_cols, self.adj_values = (Constant(jnp.asarray(a)) for a in adj[:3])
        # A_rw+I is not symmetric: its backward pass reads the entries in column order.
        self.adj_order = Constant(jnp.asarray(column_order(adj.cols)))
        # The reference has no graph before its first training forward; this one (from the
        # init parameters) makes ``loss`` usable, with its final shapes, right after construction.
        idx, val = _initial_item_graph(self.graph_learner)
        self.item_graph_idx = TrainingCache(idx)
        self.item_graph_val = TrainingCache(val)

    # -- forward --------------------------------------------------------------------

    def _adjacency(self) -> CooAdjacency:
        return CooAdjacency(self.adj_rows[...], self.adj_cols[...], self.adj_values[...], self.num_users + self.num_items)

    def forward(self, graph_idx: jax.Array, graph_val: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(users (U, d), items (I, d))`` with the item graph ``S`` given as neighbour lists."""
        h = self.items[...]
        for _ in range(self.config.n_layers):
            h = knn_propagate(graph_idx, graph_val, h)
        x = jnp.concatenate([self.users[...], self.items[...]])
        out = layer_mean_propagate(self._adjacency(), x, self.config.n_ui_layers, column_order=self.adj_order[...])
        return out[: self.num_users], out[self.num_users :] + rownorm(h)

    def _loss_with_graph(self, batch: jax.Array, graph_idx: jax.Array, graph_val: jax.Array) -> jax.Array:
        users, pos, neg = batch[0], batch[1], batch[2]
        all_users, all_items = self.forward(graph_idx, graph_val)
        u, p, n = all_users[users], all_items[pos], all_items[neg]
        bpr = -bpr_log_likelihood(jnp.sum(u * p, -1), jnp.sum(u * n, -1))
        divisor = users.shape[0] if self.config.reg_over_actual_batch else self.config.reg_batch_size
        return bpr + self.config.reg_weight * embedding_l2(u, p, n, divisor)

    # -- interface ------------------------------------------------------------------

    def first_batch_loss(self, batch: jax.Array, key: jax.Array) -> jax.Array:
        """Rebuilds ``S`` with gradient, caches it detached, and returns the loss on it."""
        idx, val = self.graph_learner.item_graph()
        self.item_graph_idx[...] = jax.lax.stop_gradient(idx)
        self.item_graph_val[...] = jax.lax.stop_gradient(val)
        return self._loss_with_graph(batch, idx, val)

    def loss(self, batch: jax.Array, key: jax.Array) -> jax.Array:
        """The loss with the ``S`` cached by this epoch's ``first_batch_loss``, detached."""
        return self._loss_with_graph(batch, self.item_graph_idx[...], jax.lax.stop_gradient(self.item_graph_val[...]))

    def scores(self, users: jax.Array) -> jax.Array:
        idx, val = self.graph_learner.item_graph()
        all_users, all_items = self.forward(idx, val)
        return all_users[users] @ all_items.T
