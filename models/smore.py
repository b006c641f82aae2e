"""SMORE (Ong & Khong, WSDM 2025, "Spectrum-based Modality Representation Fusion Graph Convolutional Network for Multimodal Recommendation").

The reference's ``smore.py``. Notation: ``U`` users, ``I`` items, ``N = U + I`` nodes,
``d = embedding_size``, ``E_u`` / ``E_i`` the id tables, ``X_v`` / ``X_t`` the raw image /
text feature tables (trainable), ``lin_g(x) = x W_g + b_g`` a Linear d -> d.

**Graphs** (all built once, at construction, never rebuilt):

* ``A``: the user-item graph ``D^-1/2 A D^-1/2`` with degrees from SUMMED values, 0-degree
  -> 0, no eps, no self-loops (:func:`~mirrorgrad_jax.graph.summed_bipartite_adjacency`);
  ``R_n`` is its ``U x I`` user-item block.
* ``S_v``, ``S_t``: per modality, the top-``image_knn_k`` / ``text_knn_k`` cosine kNN graph of
  the RAW feature table (the item itself a candidate: usually its own first neighbour, see
  :func:`~mirrorgrad_jax.graph.knn_item_graph` on ties), with the
  kept cosines normalised symmetrically by their row sums,
  ``S[i, j] = c_ij / sqrt(r_i r_j)`` (the reference's ``build_sim`` then
  ``build_knn_normalized_graph(norm_type='sym')``). Stored as ``(I, k)`` neighbour lists,
  searched in row chunks of ``knn_chunk_size`` (never ``I x I``;
  :func:`~mirrorgrad_jax.graph.knn_item_graph` with ``values="cosine"``).
* ``S_f``: the max-pool fusion graph on the UNION of the two patterns: an entry present in
  both graphs takes ``max(S_v[i, j], S_t[i, j])``, an entry present in one only keeps that
  value (the reference fills absent entries with ``-inf`` before the max); no
  re-normalisation. Stored as ``(I, k_v + k_t)`` lists: the image slots, then the text slots,
  where a text slot whose column is also in the row's image list holds 0 (its value went
  into the max of the image slot), so that the list product equals the sparse product.

**Spectrum convolution** (along the embedding axis, per item): with
``F = rfft(., norm='ortho')`` over the ``d`` features and ``F^-1 = irfft(., n=d, norm='ortho')``,
``P_v = image_trs(X_v)``, ``P_t = text_trs(X_t)`` (Linear F_m -> d) and three learnable
complex filters ``W_v, W_t, W_f`` of ``d // 2 + 1`` frequencies (stored as real ``(1, d//2 + 1, 2)``
tables, real and imaginary parts drawn from ``N(0, 1)`` as the reference's ``torch.randn``):
``C_v = F^-1(F(P_v) W_v)``, ``C_t = F^-1(F(P_t) W_t)``, ``C_f = F^-1(F(P_v) F(P_t) W_f)``.
``irfft`` reads only the real part of the frequency-0 bin (and of the ``d/2`` bin for even
``d``), so the imaginary parts of those filter entries get no gradient (as in torch).

**Forward** (``representation``):

* gated item features: ``h_m = E_i * sigmoid(lin_gate_m(C_m))`` for ``m in {v, t, f}``;
* content view: LightGCN on ``A`` with ``n_ui_layers`` layers, the mean of the
  ``n_ui_layers + 1`` outputs, ``(N, d)``;
* item-item views: ``h_m <- S_m^{n_layers} h_m`` (``S_f`` for the fusion view), users get
  ``R_n h_m``; ``V = [R_n h_v; h_v]``, ``T = [R_n h_t; h_t]``, ``Fu = [R_n h_f; h_f]``;
* modality-aware preference: ``q_m(x) = tanh(x W1_m + b1_m) W2_m`` (second Linear without
  bias, d -> d); ``a_v = softmax(q_v(Fu))``, ``a_t = softmax(q_t(Fu))`` over the EMBEDDING
  axis (per node, d weights); preference gates ``p_g = dropout(sigmoid(lin_g(content)))``
  for ``g`` in image / text / fusion;
  ``side = mean(p_image * a_v * V, p_text * a_t * T, p_fusion * Fu)``;
* final representation ``content + side``; ``scores(u) = final_u . final_items``.

**Loss**: ``-mean logsigmoid(u.i+ - u.i-)`` on the final embeddings
``+ reg_weight * 0.5 (||u_B||^2 + ||i+_B||^2 + ||i-_B||^2) / reg_batch_size``
``+ cl_weight * [InfoNCE(side_items[i+], content_items[i+]) + InfoNCE(side_users[u], content_users[u])]``,
InfoNCE in-batch ``B x B`` with temperature ``cl_temperature`` (0.2):
``-mean_b log(exp(s_bb / tau) / sum_c exp(s_bc / tau))``, ``s = rownorm(a) rownorm(b)^T``
(a repeated user in the batch counts as a negative of its copies, as in the reference),
computed as ``logsumexp - positive``.

**Randomness**: the parameters at construction; in training, the three dropout masks of the
preference gates (``nn.Dropout(dropout_rate)``, inverted scaling ``1 / (1 - p)``, each an
independent ``(N, d)`` mask), drawn from the ``loss`` key (a Mirror Gradient second pass
gets its own key, hence its own masks). ``scores`` is the reference's eval mode: no dropout,
recomputed from the current parameters. No ``pre_epoch`` (the reference's is empty).

**Trainable features, frozen graphs**: the raw tables ``X_v``, ``X_t`` are parameters (the
reference's ``nn.Embedding.from_pretrained(freeze=False)``) and are fine-tuned through the
projections; the kNN graphs are built once from the RAW tables and never rebuilt from the
trained ones (the reference builds them from ``weight.detach()`` at init, and its
``pre_epoch_processing`` does nothing).

**Parameters** (the reference's count, all trainable):
``d(U + I) + sum_m [I F_m + F_m d + d] + 6 (d^2 + d) + 2 (2 d^2 + d) + 3 * 2 (d//2 + 1)``
(id tables; raw tables and projections; six sigmoid gates; two queries; three filters),
86,020,998 on Amazon sports (U 35,598, I 18,357, F_v 4,096, F_t 384, d 64). Linears use
torch's default init, the id tables xavier-uniform.

**A slow start on dense data** (measured 2026-12-07 on CPU, seed 999, MG off:
``mirrorgrad train --model smore --dataset movielens-100k --no-mg --epochs 80 --patience 200``).
On MovieLens-100K the validation recall@20 is 0.097 after epoch 0, falls to 0.033 by epoch 7,
stays there to epoch 13, then climbs: 0.103 at epoch 25, 0.30 at epoch 46, 0.351 at epoch 75
(the best of 80; test 0.340, level with the other models on this set). With ``cl_weight = 0``
the first four epochs' recall@5 stays at 0.065-0.071 instead of falling from 0.036 to 0.015,
so the InfoNCE terms drive the early fall. Early stopping at patience 10, or at MMRec's 20,
ends such a run with its epoch-0 model: train it with ``--min-epochs`` (40, say) or a fixed
budget (``benchmarks/patience_sweep.py``). On the synthetic sets it learns from the start.

**Departures from the reference, and quirks**:

* Both modalities are required; a dataset lacking one is refused with a ``ConfigError``
  (the reference reads both projections in its forward and has no single-modality path).
  MovieLens-100K (``meta`` and ``text``) uses ``meta`` in the image role, with a warning.
* The reference caches the two kNN graphs on disk (``image_adj_{k}_True.pt``, a name MGCN
  uses too) and reloads them even if the features changed; here they are built from the
  dataset at construction, every time.
* A feature row of zeros has cosine 0 with every item (the reference gets NaN); a row whose
  kept cosines sum to a non-positive number gets normalisation factor 0 (the reference gets
  inf or NaN); exact top-k ties go to the lower item id (torch leaves them unspecified).
* ``cl_weight`` is the reference's ``cl_loss`` key (renamed: it is a weight);
  ``cl_temperature`` is the 0.2 hard-coded in its ``calculate_loss`` (its yaml's
  ``temperature: 0.2`` is never read). The yaml's ``lambda_coeff`` is not read by SMORE and
  has no field.
* Quirk kept (default), with its option: the L2 term is divided by the CONFIG batch size
  (``reg_batch_size``, 2048), also for the short last batch of an epoch;
  ``reg_over_actual_batch = True`` divides by the rows of the batch at hand.
* The reference's ``self.sparse = False`` dense-graph branch is not offered (it is never
  taken: ``sparse`` is hard-coded True).

Not established from the source: the paper's own equations were not available while this
port was written, so no departure of the reference's code from its paper is claimed or
offered here; everything above follows the code.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from mirrorgrad_jax.models.initializers import add_feature_projection, torch_linear_default, xavier_uniform
from mirrorgrad_jax.models.inputs import (
    image_and_text_features,
    image_and_text_roles,
    modality_role_constraints,
)
from mirrorgrad_jax.models.interface import Constant, Recommender
from mirrorgrad_jax.models.kernels import dense
from mirrorgrad_jax.models.losses import bpr_log_likelihood, embedding_l2, info_nce
from mirrorgrad_jax.models.registry import register

from mirrorgrad_jax.config import (
    Fraction,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    config_class,
)
from mirrorgrad_jax.data import RecDataset
from mirrorgrad_jax.errors import ConfigError
from mirrorgrad_jax.graph import (
    CooAdjacency,
    knn_column_order,
    knn_item_graph,
    knn_propagate,
    layer_mean_propagate,
    summed_bipartite_adjacency,
)

__all__ = ["SMORE", "SMOREConfig", "max_pool_union", "spectrum_convolution"]

#: The item-feature gates (on the filtered features) and the preference gates (on the content view).
_ITEM_GATES = {"image": "gate_v", "text": "gate_t", "fusion": "gate_f"}
_PREFER_GATES = ("gate_image_prefer", "gate_text_prefer", "gate_fusion_prefer")
_VIEWS = ("image", "text", "fusion")


@config_class
class SMOREConfig:
    """Attributes:
    embedding_size: d of the id tables, projections, filters, gates and queries (64).
    n_ui_layers: LightGCN layers of the content view; grid {3, 4}.
    n_layers: hops of the gated item features on each item-item graph (1).
    image_knn_k: neighbours per item in the image kNN graph, the item itself a candidate; grid
      {10, 15, 20, 40}.
    text_knn_k: the same for the text kNN graph; grid {10, 15, 20, 40}.
    reg_weight: weight of the L2 term on the batch's final embeddings; grid {1e-5, 1e-4}.
    cl_weight: weight of the two InfoNCE terms (the reference's ``cl_loss``, 0.01).
    cl_temperature: InfoNCE temperature (0.2, hard-coded in the reference).
    dropout_rate: dropout on the three preference gates in training; grid {0, 0.1}.
    reg_batch_size: divisor of the L2 term (2048). The reference divides by its CONFIG
      batch size, also for the short last batch, so keep this equal to the trainer's
      ``batch_size``; the model cannot see the trainer's settings.
    reg_over_actual_batch: corrected behaviour (False: the reference's): divide the L2 term
      by the rows of the batch at hand instead of ``reg_batch_size``.
    knn_chunk_size: rows per similarity block of the kNN searches and of the fusion-graph
      merge at construction (2048); bounds their memory, does not change the result.
    image_modality: dataset modality in the image role ("image"; when the dataset has no such
      modality but the text one and exactly one other, that other one is used, with a warning).
    text_modality: dataset modality in the text role ("text"; required).

    Where the reference gives only a grid, the default is the grid's first value.
    """

    embedding_size: PositiveInt = 64
    n_ui_layers: NonNegativeInt = 3
    n_layers: NonNegativeInt = 1
    image_knn_k: PositiveInt = 10
    text_knn_k: PositiveInt = 10
    reg_weight: NonNegativeFloat = 1e-5
    cl_weight: NonNegativeFloat = 0.01
    cl_temperature: PositiveFloat = 0.2
    dropout_rate: Fraction = 0.0
    reg_batch_size: PositiveInt = 2048
    reg_over_actual_batch: bool = False
    knn_chunk_size: PositiveInt = 2048
    image_modality: str = "image"
    text_modality: str = "text"

    constraints = modality_role_constraints("SMORE", both=True)


def spectrum_convolution(image: jax.Array, text: jax.Array, weights: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array, jax.Array]:
    """SMORE's filters in the frequency domain of the embedding axis: ``(C_v, C_t, C_f)``.

    ``C_v = irfft(rfft(image) W_v)``, ``C_t = irfft(rfft(text) W_t)`` and
    ``C_f = irfft(rfft(image) rfft(text) W_f)``, each transform along axis 1 with
    ``norm='ortho'`` and the inverse at length ``d``.

    Args:
      image: ``(n, d)`` projected image features.
      text: ``(n, d)`` projected text features.
      weights: ``{"image", "text", "fusion"}`` -> ``(1, d // 2 + 1, 2)`` real tables holding
        the complex filters' real (``[..., 0]``) and imaginary (``[..., 1]``) parts.

    Returns:
      Three ``(n, d)`` real arrays.
    """
    d = image.shape[1]
    as_complex = {name: jax.lax.complex(w[..., 0], w[..., 1]) for name, w in weights.items()}
    image_f = jnp.fft.rfft(image, axis=1, norm="ortho")
    text_f = jnp.fft.rfft(text, axis=1, norm="ortho")

    def back(spectrum: jax.Array) -> jax.Array:
        return jnp.fft.irfft(spectrum, n=d, axis=1, norm="ortho")

    return back(image_f * as_complex["image"]), back(text_f * as_complex["text"]), back(image_f * text_f * as_complex["fusion"])


def max_pool_union(
    first: tuple[np.ndarray, np.ndarray], second: tuple[np.ndarray, np.ndarray], *, chunk_size: int = 2048
) -> tuple[np.ndarray, np.ndarray]:
    """The max-pool fusion of two neighbour-list graphs, as ``(I, k_1 + k_2)`` lists (host, once).

    The sparse matrix it stands for holds every entry of either graph; an entry in both
    takes the larger value. The result keeps ``first``'s slots (value ``max`` when the
    column is also in ``second``'s row) followed by ``second``'s slots (value 0 when the
    column is already in ``first``'s row), so that summing the lists equals the sparse
    matrix. Each input row must hold distinct columns (a top-k list does). Rows are merged
    in chunks of ``chunk_size`` (memory ``chunk_size * k_1 * k_2`` booleans).

    Args:
      first: ``(idx (I, k_1), val (I, k_1))``.
      second: ``(idx (I, k_2), val (I, k_2))``.
      chunk_size: rows per merge block.

    Returns:
      ``(idx, val)``: ``(I, k_1 + k_2)`` int32 and float32.

    Examples:
      >>> idx, val = max_pool_union((np.array([[0, 1]]), np.array([[0.5, 0.2]])), (np.array([[1, 2]]), np.array([[0.3, 0.4]])))
      >>> idx.tolist(), val.astype(float).round(2).tolist()
      ([[0, 1, 1, 2]], [[0.5, 0.3, 0.0, 0.4]])
    """
    idx_a, val_a = np.asarray(first[0]), np.asarray(first[1], np.float32)
    idx_b, val_b = np.asarray(second[0]), np.asarray(second[1], np.float32)
    out_a, out_b = val_a.copy(), val_b.copy()
    for start in range(0, idx_a.shape[0], chunk_size):
        rows = slice(start, start + chunk_size)
        same = idx_a[rows, :, None] == idx_b[rows, None, :]  # (c, k_1, k_2)
        partner = np.where(same, val_b[rows, None, :], -np.inf).max(axis=2)  # -inf: not in second
        out_a[rows] = np.maximum(val_a[rows], partner)
        out_b[rows] = np.where(same.any(axis=1), np.float32(0.0), val_b[rows])
    idx = np.concatenate([idx_a, idx_b], axis=1).astype(np.int32)
    return idx, np.concatenate([out_a, out_b], axis=1).astype(np.float32)



@register
class SMORE(Recommender):
    """Spectrum-filtered modality views on frozen kNN graphs, fused with the user-item view; see the module docstring."""

    name = "smore"
    config_class = SMOREConfig
    multimodal = True

    def __init__(self, dataset: RecDataset, config: SMOREConfig, *, rngs: nnx.Rngs) -> None:
        image, text = image_and_text_roles(dataset, config.image_modality, config.text_modality, "SMORE")
        for field in ("image_knn_k", "text_knn_k"):
            if getattr(config, field) > dataset.num_items:
                raise ConfigError(f"SMORE {field}={getattr(config, field)} exceeds the number of items ({dataset.num_items})")
        feats = image_and_text_features(dataset, image, text, "SMORE")
        self.config = config
        self.num_users, self.num_items = dataset.num_users, dataset.num_items
        d = config.embedding_size
        self.users = nnx.Param(xavier_uniform(rngs.params(), (dataset.num_users, d)))
        self.items = nnx.Param(xavier_uniform(rngs.params(), (dataset.num_items, d)))

        graphs = {}
        for role, k in (("image", config.image_knn_k), ("text", config.text_knn_k)):
            table = feats[role]
            # freeze=False in the reference: the raw table is trained (through the projection).
            add_feature_projection(self, role, table, d, rngs.params())
            # From the RAW table, once: never rebuilt from the trained one.
            idx, val = knn_item_graph(table, k, chunk_size=config.knn_chunk_size, values="cosine")
            graphs[role] = (np.asarray(idx), np.asarray(val))
        graphs["fusion"] = max_pool_union(graphs["image"], graphs["text"], chunk_size=config.knn_chunk_size)
        for view, (idx, val) in graphs.items():
            setattr(self, f"{view}_knn_idx", Constant(jnp.asarray(idx, jnp.int32)))
            setattr(self, f"{view}_knn_val", Constant(jnp.asarray(val, jnp.float32)))
            # The lists' slots by neighbour: the backward pass runs the row-sorted kernel (knn_propagate).
            setattr(self, f"{view}_knn_order", Constant(jnp.asarray(knn_column_order(idx))))

        for view in _VIEWS:
            # torch.randn(1, d // 2 + 1, 2): real and imaginary parts N(0, 1).
            setattr(self, f"{view}_complex_weight", nnx.Param(jax.random.normal(rngs.params(), (1, d // 2 + 1, 2), jnp.float32)))
        for gate in (*_ITEM_GATES.values(), *_PREFER_GATES):
            w, b = torch_linear_default(rngs.params(), d, d)
            setattr(self, f"{gate}_w", nnx.Param(w))
            setattr(self, f"{gate}_b", nnx.Param(b))
        for query in ("query_v", "query_t"):
            w, b = torch_linear_default(rngs.params(), d, d)
            setattr(self, f"{query}_w1", nnx.Param(w))
            setattr(self, f"{query}_b1", nnx.Param(b))
            setattr(self, f"{query}_w2", nnx.Param(torch_linear_default(rngs.params(), d, d)[0]))  # bias=False

        adj = summed_bipartite_adjacency(dataset.train, dataset.num_users, dataset.num_items)
        self.adj_rows, self.adj_cols, self.adj_values = (Constant(jnp.asarray(a)) for a in adj[:3])
        # R_n: the entries of the user rows (sorted first), columns shifted to item ids.
        user_part = adj.rows < dataset.num_users
        self.r_rows = Constant(jnp.asarray(adj.rows[user_part]))
        self.r_cols = Constant(jnp.asarray(adj.cols[user_part] - dataset.num_users))
        self.r_values = Constant(jnp.asarray(adj.values[user_part]))

    # -- forward --------------------------------------------------------------------

    def _linear(self, name: str, x: jax.Array) -> jax.Array:
        return dense(x, getattr(self, f"{name}_w")[...]) + getattr(self, f"{name}_b")[...]

    def _query(self, name: str, x: jax.Array) -> jax.Array:
        hidden = jnp.tanh(dense(x, getattr(self, f"{name}_w1")[...]) + getattr(self, f"{name}_b1")[...])
        return dense(hidden, getattr(self, f"{name}_w2")[...])

    def _adjacency(self) -> CooAdjacency:
        return CooAdjacency(self.adj_rows[...], self.adj_cols[...], self.adj_values[...], self.num_users + self.num_items)

    def filtered_features(self) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``(C_v, C_t, C_f)``: the spectrum convolution of the projected raw features, each ``(I, d)``."""
        projected = {role: self._linear(f"{role}_trs", getattr(self, f"{role}_emb")[...]) for role in ("image", "text")}
        weights = {view: getattr(self, f"{view}_complex_weight")[...] for view in _VIEWS}
        return spectrum_convolution(projected["image"], projected["text"], weights)

    def _item_view(self, view: str, gated: jax.Array) -> jax.Array:
        """``[R_n h; h]`` with ``h = S_view^{n_layers} gated``: ``(N, d)``."""
        idx, val = getattr(self, f"{view}_knn_idx")[...], getattr(self, f"{view}_knn_val")[...]
        h = gated
        for _ in range(self.config.n_layers):
            h = knn_propagate(idx, val, h, column_order=getattr(self, f"{view}_knn_order")[...])
        users = jax.ops.segment_sum(
            self.r_values[...][:, None] * h[self.r_cols[...]], self.r_rows[...], num_segments=self.num_users, indices_are_sorted=True
        )
        return jnp.concatenate([users, h])

    def dropout_multipliers(self, key: jax.Array) -> jax.Array | None:
        """The training dropout of the three preference gates as ``(3, N, d)`` multipliers in ``{0, 1 / (1 - p)}``.

        None when ``dropout_rate == 0`` (torch's ``Dropout(0)`` multiplies by 1).
        """
        p = self.config.dropout_rate
        if p <= 0.0:
            return None
        keep = jax.random.bernoulli(key, 1.0 - p, (3, self.num_users + self.num_items, self.config.embedding_size))
        return jnp.where(keep, jnp.float32(1.0 / (1.0 - p)), jnp.float32(0.0))

    def representation(self, gate_multipliers: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``(final, side, content)``, each ``(N, d)`` over users then items.

        Args:
          gate_multipliers: ``(3, N, d)`` dropout multipliers of the image, text and fusion
            preference gates (:meth:`dropout_multipliers`), or None (eval mode).
        """
        e_i = self.items[...]
        filtered = dict(zip(_VIEWS, self.filtered_features()))
        gated = {view: e_i * jax.nn.sigmoid(self._linear(_ITEM_GATES[view], filtered[view])) for view in _VIEWS}
        content = layer_mean_propagate(
            self._adjacency(), jnp.concatenate([self.users[...], e_i]), self.config.n_ui_layers, symmetric=True
        )
        views = {view: self._item_view(view, gated[view]) for view in _VIEWS}
        attention_v = jax.nn.softmax(self._query("query_v", views["fusion"]), axis=-1)
        attention_t = jax.nn.softmax(self._query("query_t", views["fusion"]), axis=-1)
        prefer = [jax.nn.sigmoid(self._linear(gate, content)) for gate in _PREFER_GATES]
        if gate_multipliers is not None:
            prefer = [p * gate_multipliers[n] for n, p in enumerate(prefer)]
        image = prefer[0] * (attention_v * views["image"])
        text = prefer[1] * (attention_t * views["text"])
        fusion = prefer[2] * views["fusion"]
        side = (image + text + fusion) / 3.0
        return content + side, side, content

    def loss_terms(self, batch: jax.Array, gate_multipliers: jax.Array | None = None) -> dict[str, jax.Array]:
        """The unweighted parts of the loss: ``bpr``, ``l2``, ``cl_items`` and ``cl_users``."""
        users, pos, neg = batch[0], batch[1], batch[2]
        final, side, content = self.representation(gate_multipliers)
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
        terms = self.loss_terms(batch, self.dropout_multipliers(key))
        cfg = self.config
        return terms["bpr"] + cfg.reg_weight * terms["l2"] + cfg.cl_weight * (terms["cl_items"] + terms["cl_users"])

    def scores(self, users: jax.Array) -> jax.Array:
        final = self.representation()[0]
        return final[users] @ final[self.num_users :].T
