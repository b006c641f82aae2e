"""MGCN (Yu et al., 2023, "Multi-View Graph Convolutional Network for Multimedia Recommendation").

The reference's ``mgcn.py``. Three views of every node, fused per node:

* purified item features (behaviour-guided purifier): ``v~ = E_i * gate_v(image_trs(image_emb))``
  and ``t~ = E_i * gate_t(text_trs(text_emb))``, each gate a Linear d -> d and a sigmoid;
* content view: LightGCN with ``n_ui_layers`` layers on MGCN's normalised user-item graph
  (:func:`~mirrorgrad_jax.graph.summed_bipartite_adjacency`: ``D^-1/2 A D^-1/2`` with degrees
  from SUMMED values, 0-degree -> 0, no eps, no self-loops), mean of the outputs, ``(N, d)``;
* item-item views: ``v~ <- K_val(image)^{n_layers} v~`` on the frozen top-``knn_k`` cosine
  graph of the RAW image features (:func:`~mirrorgrad_jax.graph.knn_item_graph` with
  ``values="cosine"``, neighbour lists, never ``I x I``); users get ``R_n v~`` with
  ``R_n`` the ``U x I`` user-item block of the normalised graph; ``V = [R_n v~; v~]``, and
  ``T`` likewise from ``t~``.

Behaviour-aware fuser: ``a = softmax([q(V), q(T)])`` per node over the 2 views, with
``q = Linear(d, d) -> tanh -> Linear(d, 1, no bias)``; ``common = a_0 V + a_1 T``;
``side = (gate_image_prefer(content) * (V - common) + gate_text_prefer(content) * (T - common)
+ common) / 3``; the final representation is ``content + side``.

Loss: ``-mean logsigmoid(u.i+ - u.i-) + reg_weight * 0.5 (||u_B||^2 + ||i+_B||^2 + ||i-_B||^2)
/ reg_batch_size`` (divided by the CONFIG batch size, 2048, also for the short last batch)
``+ cl_weight * [InfoNCE(side_items[i+], content_items[i+]) + InfoNCE(side_users[u],
content_users[u])]``, the InfoNCE terms in-batch ``B x B`` with temperature 0.2
(:func:`~mirrorgrad_jax.models.losses.info_nce`). ``scores`` recompute the forward pass with the current parameters; no
``pre_epoch``, no randomness beyond the batch sampling.

Parameters (the reference's count: ``d(U + I) + sum_m [I F_m + F_m d + d] + 4 (d^2 + d) + (d^2 + d) + d``,
86,000,192 on sports); every Linear uses torch's default init, the id tables xavier-uniform.
The raw feature tables ``image_emb`` / ``text_emb`` are trainable, as in the reference.

Deliberate differences from the reference:

* Both modalities are required and a dataset lacking one is refused with a ``ValueError``
  (the reference has no single-modality path: its forward reads both projections).
* ``cl_weight`` is the reference's ``cl_loss`` key (renamed: it is a weight);
  ``cl_temperature`` (0.2) is the temperature the reference hard-codes in
  ``calculate_loss`` (its ``tau = 0.5`` attribute is never read). The reference yaml's
  ``lambda_coeff`` is not read by MGCN and has no field.
* InfoNCE is computed as ``logsumexp(s / tau) - s_pos / tau``, equal to the reference's
  ``-log(exp(s_pos / tau) / sum exp(s / tau))`` without its overflow risk.
* A feature row of zeros has cosine 0 with every item in the kNN search (the reference
  gets NaN); exact top-k ties go to the lower item id.
* The reference caches the raw-feature graphs on disk and reloads them even if the
  features changed; here they are rebuilt from the dataset at init.
* Corrected-behaviour option (off by default): ``reg_over_actual_batch = True`` divides the
  L2 term by the rows of the batch at hand, so the short last batch is not
  under-regularised.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
from flax import nnx

from mirrorgrad_jax.config import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, config_class
from mirrorgrad_jax.data import RecDataset
from mirrorgrad_jax.graph import (
    CooAdjacency,
    column_order,
    knn_item_graph,
    knn_propagate,
    layer_mean_propagate,
    summed_bipartite_adjacency,
)
from mirrorgrad_jax.models.initializers import add_feature_projection, torch_linear_default, xavier_uniform
from mirrorgrad_jax.models.inputs import image_and_text_features, image_and_text_roles, modality_role_constraints, require_knn_k
from mirrorgrad_jax.models.interface import Constant, Recommender
from mirrorgrad_jax.models.kernels import dense
from mirrorgrad_jax.models.losses import bpr_log_likelihood, embedding_l2, info_nce
from mirrorgrad_jax.models.registry import register

__all__ = ["MGCN", "MGCNConfig", "info_nce"]

_GATES = ("gate_v", "gate_t", "gate_image_prefer", "gate_text_prefer")


@config_class
class MGCNConfig:
    """Attributes:
    embedding_size: d of the id tables, the projections, the gates and the fuser (64).
    n_ui_layers: LightGCN layers of the content view (2).
    n_layers: hops of the purified item features on each item-item graph (1).
    knn_k: neighbours per item in each modality's kNN graph, the item itself a candidate (10).
    reg_weight: weight of the L2 term on the batch's final embeddings (1e-4).
    cl_weight: weight of the two InfoNCE terms (the reference's ``cl_loss``); grid
      {0.001, 0.01, 0.1}.
    cl_temperature: InfoNCE temperature (0.2, hard-coded in the reference).
    reg_batch_size: divisor of the L2 term (2048). The reference divides by its CONFIG
      batch size, also for the short last batch, so keep this equal to the trainer's
      ``batch_size``; the model cannot see the trainer's settings.
    reg_over_actual_batch: corrected behaviour (False: the reference's): divide the L2 term
      by the rows of the batch at hand instead of ``reg_batch_size``.
    knn_chunk_size: rows per similarity block of the kNN searches at init (2048); bounds
      their memory at ``knn_chunk_size * I`` floats, does not change the result.
    image_modality: dataset modality in the image role ("image"; when the dataset has no such
      modality but the text one and exactly one other, that other one is used, with a warning).
    text_modality: dataset modality in the text role ("text"; required).

    The reference has only the grid for cl_loss; the default here is its first value.
    """

    embedding_size: PositiveInt = 64
    n_ui_layers: NonNegativeInt = 2
    n_layers: NonNegativeInt = 1
    knn_k: PositiveInt = 10
    reg_weight: NonNegativeFloat = 1e-4
    cl_weight: NonNegativeFloat = 0.001
    cl_temperature: PositiveFloat = 0.2
    reg_batch_size: PositiveInt = 2048
    reg_over_actual_batch: bool = False
    knn_chunk_size: PositiveInt = 2048
    image_modality: str = "image"
    text_modality: str = "text"

    constraints = modality_role_constraints("MGCN", both=True)



@register
class MGCN(Recommender):
    """Gated multimodal item views fused with the user-item view; see the module docstring."""

    name = "mgcn"
    config_class = MGCNConfig
    multimodal = True

    def __init__(self, dataset: RecDataset, config: MGCNConfig, *, rngs: nnx.Rngs) -> None:
        image, text = image_and_text_roles(dataset, config.image_modality, config.text_modality, "MGCN")
        require_knn_k(config.knn_k, dataset.num_items, "MGCN")
        feats = image_and_text_features(dataset, image, text, "MGCN")
        self.config = config
        self.num_users, self.num_items = dataset.num_users, dataset.num_items
        d = config.embedding_size
        self.users = nnx.Param(xavier_uniform(rngs.params(), (dataset.num_users, d)))
        self.items = nnx.Param(xavier_uniform(rngs.params(), (dataset.num_items, d)))
        for role in ("image", "text"):
            table = feats[role]
            add_feature_projection(self, role, table, d, rngs.params())
            idx, val = knn_item_graph(table, config.knn_k, chunk_size=config.knn_chunk_size, values="cosine")
            setattr(self, f"{role}_knn_idx", Constant(jnp.asarray(idx, jnp.int32)))
            setattr(self, f"{role}_knn_val", Constant(jnp.asarray(val, jnp.float32)))
            # The lists' slots by neighbour: the backward pass runs the row-sorted kernel (knn_propagate).
            setattr(self, f"{role}_knn_order", Constant(jnp.asarray(column_order(idx))))
        for gate in _GATES:
            w, b = torch_linear_default(rngs.params(), d, d)
            setattr(self, f"{gate}_w", nnx.Param(w))
            setattr(self, f"{gate}_b", nnx.Param(b))
        w, b = torch_linear_default(rngs.params(), d, d)
        self.query_common_w1, self.query_common_b1 = nnx.Param(w), nnx.Param(b)
        self.query_common_w2 = nnx.Param(torch_linear_default(rngs.params(), d, 1)[0])

        adj = summed_bipartite_adjacency(dataset.train, dataset.num_users, dataset.num_items)
        self.adj_rows, self.adj_cols, self.adj_values = (Constant(jnp.asarray(a)) for a in adj[:3])
        self.adj_order = Constant(jnp.asarray(column_order(adj.cols)))
        # R_n: the entries of the user rows (sorted first), columns shifted to item ids.
        user_part = adj.rows < dataset.num_users
        self.r_rows = Constant(jnp.asarray(adj.rows[user_part]))
        self.r_cols = Constant(jnp.asarray(adj.cols[user_part] - dataset.num_users))
        self.r_values = Constant(jnp.asarray(adj.values[user_part]))

    # -- forward --------------------------------------------------------------------

    def _linear(self, name: str, x: jax.Array) -> jax.Array:
        return dense(x, getattr(self, f"{name}_w")[...]) + getattr(self, f"{name}_b")[...]

    def _adjacency(self) -> CooAdjacency:
        return CooAdjacency(self.adj_rows[...], self.adj_cols[...], self.adj_values[...], self.num_users + self.num_items)

    def _item_view(self, role: str, purified: jax.Array) -> jax.Array:
        """``[R_n h; h]`` with ``h = K_val(role)^{n_layers} purified``: ``(N, d)``."""
        idx, val = getattr(self, f"{role}_knn_idx")[...], getattr(self, f"{role}_knn_val")[...]
        h = purified
        for _ in range(self.config.n_layers):
            h = knn_propagate(idx, val, h, column_order=getattr(self, f"{role}_knn_order")[...])
        users = jax.ops.segment_sum(
            self.r_values[...][:, None] * h[self.r_cols[...]], self.r_rows[...], num_segments=self.num_users, indices_are_sorted=True
        )
        return jnp.concatenate([users, h])

    def _query(self, x: jax.Array) -> jax.Array:
        return jnp.tanh(x @ self.query_common_w1[...] + self.query_common_b1[...]) @ self.query_common_w2[...]

    def representation(self) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``(final, side, content)``, each ``(N, d)`` over users then items."""
        e_i = self.items[...]
        purified = {
            role: e_i * jax.nn.sigmoid(self._linear(gate, self._linear(f"{role}_trs", getattr(self, f"{role}_emb")[...])))
            for role, gate in (("image", "gate_v"), ("text", "gate_t"))
        }
        content = layer_mean_propagate(
            self._adjacency(), jnp.concatenate([self.users[...], e_i]), self.config.n_ui_layers, column_order=self.adj_order[...]
        )
        v, t = self._item_view("image", purified["image"]), self._item_view("text", purified["text"])
        weight = jax.nn.softmax(jnp.concatenate([self._query(v), self._query(t)], axis=-1), axis=-1)
        common = weight[:, :1] * v + weight[:, 1:] * t
        sep_v = jax.nn.sigmoid(self._linear("gate_image_prefer", content)) * (v - common)
        sep_t = jax.nn.sigmoid(self._linear("gate_text_prefer", content)) * (t - common)
        side = (sep_v + sep_t + common) / 3.0
        return content + side, side, content

    def loss_terms(self, batch: jax.Array) -> dict[str, jax.Array]:
        """The unweighted parts of the loss: ``bpr``, ``l2``, ``cl_items`` and ``cl_users``."""
        users, pos, neg = batch[0], batch[1], batch[2]
        final, side, content = self.representation()
        items_final = final[self.num_users :]
        u, p, n = final[users], items_final[pos], items_final[neg]
        divisor = users.shape[0] if self.config.reg_over_actual_batch else self.config.reg_batch_size
        tau = self.config.cl_temperature
        return {
            "bpr": -bpr_log_likelihood(jnp.sum(u * p, -1), jnp.sum(u * n, -1)),
            "l2": embedding_l2(u, p, n, divisor),
            "cl_items": info_nce(side[self.num_users + pos], content[self.num_users + pos], tau),
            "cl_users": info_nce(side[users], content[users], tau),
        }

    # -- interface ------------------------------------------------------------------

    def loss(self, batch: jax.Array, key: jax.Array) -> jax.Array:
        terms = self.loss_terms(batch)
        cfg = self.config
        return terms["bpr"] + cfg.reg_weight * terms["l2"] + cfg.cl_weight * (terms["cl_items"] + terms["cl_users"])

    def scores(self, users: jax.Array) -> jax.Array:
        final = self.representation()[0]
        return final[users] @ final[self.num_users :].T
