"""DA-MRS (Xu et al., KDD 2024, "Improving Multi-modal Recommender Systems by Denoising and Aligning Multi-modal Content and User Feedback").

The reference is MMRec's ``damrs.py`` (DA-MRS on a LightGCN backbone; the authors' own
``src/models/lightgcn.py`` is the same code) with MMRec's ``DAMRS.yaml``, plus the authors'
``build_iib_graph.py``, which writes the item-item behaviour graph MMRec loads from
``item_graph_dict_2.npy``. Here that graph is built from the dataset's TRAIN split at init
(:func:`build_behaviour_graph`); no dataset file is unpickled.

Representations (``E_u``, ``E_i``: the id tables, the only parameters):

* ``u, i = LightGCN(A_sym, [E_u; E_i], n_ui_layers)`` (mean of the ``n_ui_layers + 1``
  layer outputs; ``A_sym`` with binary degrees + 1e-7);
* ``h_t = T^L E_i``, ``h_v = V^L E_i``, ``h_s = S^L E_i`` with ``L = n_mm_layers``, on three
  frozen item-item graphs (below);
* items are scored with ``i + (h_t + h_v + h_s) / 3``: ``scores = u[users] @ (i + (h_v + h_t + h_s) / 3)^T``,
  recomputed with the current parameters (no cache, no randomness: the model draws
  nothing, in training or evaluation; ``loss`` ignores its ``key``).

Graphs, built once at init (never rebuilt):

* ``A_sym``: the user-item graph of the train split
  (:func:`~mirrorgrad_jax.graph.normalized_bipartite_adjacency`).
* ``V`` and ``T``, the "consistent" kNN graphs of the raw image and text tables
  (:func:`consistent_knn_graphs`, the reference's ``get_knn_adj_mat``): with ``S_v``, ``S_t``
  the cosine matrices of the row-normalised tables, an entry ``(i, j)`` is KEPT in both when
  ``S_v[i, j] >= mean(S_v)`` and ``S_t[i, j] >= mean(S_t)`` (the means over the whole
  ``I x I`` matrices, diagonal included) and zeroed in both otherwise. Row ``i`` keeps
  ``k_i = min(n_i, knn_k)`` neighbours, where ``n_i`` is the number of non-zero kept TEXT
  entries of the row; the image graph takes the top ``k_i`` of the masked image row, the
  text graph the top ``k_i`` of the masked text row (the text count caps both). The
  pattern (value 1 per kept pair) is normalised as ``1 / sqrt((k_i + 1e-7)(k_j + 1e-7))``
  with ROW counts on both sides (``compute_normalized_laplacian``). The diagonal is always
  kept (cosine 1 is above any mean), so ``k_i >= 1`` for a non-zero feature row.
  Computed in row chunks, never ``I x I`` at once: the mean of ``S = N N^T`` (``N`` the
  normalised rows) is ``||N^T 1||^2 / I^2``, computed exactly in float64 from ``N`` before
  the chunks; each chunk then builds its ``(chunk, I)`` blocks of ``S_v`` and ``S_t`` in
  float32, masks them against the two means, counts and takes its top-``knn_k`` (the same
  masks as the reference's up to the float32 rounding of an entry lying within a few ulps
  of its mean).
* ``S``, the behaviour graph (:func:`build_behaviour_graph`, the authors'
  ``build_iib_graph.py --topk=2`` read by ``get_session_adj``): items sharing at least
  ``behaviour_min_common_users`` (2) distinct train users are linked, weighted by that count;
  every item keeps its top ``behaviour_topk`` (2) linked items by count (all of them when it
  has fewer; none when it has none). ``get_session_adj`` adds a self-loop to every item and
  normalises with ``compute_normalized_laplacian``, which sets every value to 1 before
  normalising: the counts only CHOOSE the neighbours, the graph is the binary pattern
  ``(I + B)`` normalised as ``1 / sqrt((c_i + 1e-7)(c_j + 1e-7))`` with ``c`` the row counts
  (1 + neighbours). The script sizes its matrix by the number of distinct item ids in the
  whole interaction file (all splits), i.e. the dataset's item count when ids are 0..I-1
  as in MMRec's files; every item of the dataset gets a row here.

Loss (one batch ``(u, i+, i-)``, with ``U_b`` and ``I_b`` the DISTINCT users and items of
the batch, ``torch.unique``; held here at fixed sizes with a mask of the real slots: the
sorted batch ids, or, when the catalogue has fewer users (items) than the batch has rows
(``2B`` item slots), the distinct ids packed into ``U`` (``I``) slots, which makes the
``|I_b| x I`` and ``|U_b| x |I_b|`` blocks below several times smaller on small datasets):

* pseudo-labels, per modality ``m`` in ``(s, v, t)``: ``P_m = softmax_rows(cos(h_m[I_b], h_m))``
  (``|I_b| x I``, temperature 1, no gradient); the "multimodal" positives of ``m`` are the
  top ``pseudo_positives`` (10) of ``P_a + P_b + P_m + P_m`` (``a``, ``b`` the two other
  modalities), the "single" positives the top 10 of ``P_m`` with those set to 0;
* neighbour discrimination of ``m``, with ``e_j = exp(cos(h_m[r], h_m[j]) / tau)`` (``tau``
  = ``temperature``, 0.2): ``-log(sum_mm e / sum_all e + 1e-9) - log(sum_single e /
  (sum_all e - sum_mm e) + 1e-9)``, averaged over ``I_b``; ``L_nd`` = mean of the three;
* alignment by user preference: ``x_g = E_u'[U_b] . normalize(i[I_b])``, ``x_t = E_u'[U_b] .
  normalize(((h_t + h_s + h_v) / 3)[I_b])`` (``|U_b| x |I_b|``, ``E_u'`` = LightGCN users),
  ``L_kl = mean(KL(p_g, p_t) + KL(p_t, p_g))`` with ``p = sigmoid(x)`` and the Bernoulli
  ``KL(p, q) = p log p/q + (1 - p) log (1-p)/(1-q)``; the sum of the two is computed as
  ``(p_g - p_t)(x_g - x_t)``, the same number, finite where the reference's literal logs of
  a float32 sigmoid that rounds to 0 or 1 (``|x| >~ 17``) give NaN;
* denoised BPR: per row, ``q_m = sigmoid(u . normalize(h_m[i+]))`` and ``r_m`` likewise for
  ``i-`` (``m`` in t, s, v); ``w+ = clip(mean_m q * exp(-var_m q)^2, 0, 1)`` (``var``
  unbiased, over the 3 modalities); ``n = mean(r)`` over the WHOLE batch (a scalar);
  ``w- = clip((max_m q - n) * [mean_m q < n], 0, 1)``; both weights carry no gradient.
  ``L_bpr = -mean(w+ log sigmoid(s+ - s-) + w- log sigmoid(s- - s+))`` with
  ``s = u . (i + (h_t + h_v + h_s) / 3)``;
* ``loss = L_bpr + neighbor_weight * L_nd + kl_weight * L_kl``. There is no L2 term.

Quirks of the reference kept by default, each with its option:

* ``behaviour_values = "binary"``: the co-interaction counts are discarded by the
  normalisation (above); ``"counts"`` keeps them: values ``w / sqrt(r_i r_j)`` with ``w`` the
  count (1 for the self-loop) and ``r`` the weighted row sums + 1e-7.
* ``behaviour_ties = "torch_cpu"``: among neighbours tied on count at the ``k``-th place,
  the script's ``torch.topk`` (on the CPU) keeps whichever its selection algorithm leaves
  in front: libstdc++'s ``std::partial_sort`` (heap selection) when ``64 k <= I``, else
  ``std::nth_element`` (introselect). :func:`torch_cpu_topk` reproduces both on the
  ``(value, index)`` pairs, as torch builds them (checked against torch 2.14.1's answers on
  3,660 rows of small integer counts; torch 2.0, which the authors list, selects with the
  same two algorithms). ``"lowest_id"`` keeps the lowest item ids instead. Counts are small
  integers, so such ties are common.
* ``negative_mean = "batch"``: the negative side of the weights averages ``r`` over the
  whole batch (``torch.mean(n_tensor)``, a scalar) while the positive side is per row;
  ``"pair"`` averages the 3 modalities of each row, as the positive side does.
* The hard-coded constants are fields with the reference's values: ``pseudo_positives``
  (10, also the width of the reference's ``tile``) and ``temperature`` (0.2).

Not quirks, but worth knowing: ``get_weight_modal`` names its stacks ``p_t, p_v, p_s`` from
``h_t, h_s, h_v`` (the last two swapped); mean, unbiased variance and maximum over the 3 do
not depend on the order, so nothing changes. ``_random`` (a ``random.sample`` of 9 items)
is defined inside ``get_knn_adj_mat`` and never called. ``reg_weight``, ``lambda_coeff`` and
``cf_model`` are read by the reference but defined neither in ``DAMRS.yaml`` nor in
``overall.yaml`` (MMRec's config answers ``None``) and never used; ``feat_embed_dim`` and
``weight_size`` are in the yaml and never read; ``build_item_graph`` is set and never read.
None of them is a field.

Departures that change no number in normal use: exact top-k ties in the kNN graphs and
the pseudo-labels go to the lower item id (the reference runs those ``topk`` on the GPU,
whose order for exact ties is unspecified); a feature row of zeros has cosine 0 with every
item (the reference divides by a zero norm: NaN cosines, whose NaN mean switches its
consistency mask off, and which its ``topk`` ranks first, so every list would take
``knn_k`` neighbours, the zero-feature items first; MMRec's Amazon files mean-fill missing
features, so no row is zero there); the KL form above; the denoised BPR's
``log(sigmoid(x))`` computed as ``log_sigmoid(x)``, equal where the reference's is finite
(it reaches ``-inf``, or NaN times a zero weight, once a score gap passes about 88 in
float32).

Both modality roles are required (the reference reads both tables unconditionally); on a
dataset without an ``image`` table but with ``text`` and exactly one other modality, that
one plays the image role (MovieLens-100K's ``meta``), with a warning.

Parameters: ``d (U + I)`` (the two id tables). The reference also builds ``image_trs`` and
``text_trs`` (``nn.Linear(F, d)``) that no computation reads, and MMRec's printed count
includes the frozen feature tables: ``d (U + I) + I (F_v + F_t) + (F_v + 1) d + (F_t + 1) d``.
The unused projections are not built here.

Not implemented: the authors' other backbones (DA-MRS on MF-BPR or VBPR) and their
noisy-data scripts.
"""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from mirrorgrad_jax.models.initializers import xavier_uniform
from mirrorgrad_jax.models.inputs import (
    image_and_text_features,
    image_and_text_roles,
    modality_role_constraints,
    require_knn_k,
)
from mirrorgrad_jax.models.interface import Constant, Recommender
from mirrorgrad_jax.models.kernels import pairwise_scores, rownorm
from mirrorgrad_jax.models.registry import register

from mirrorgrad_jax.config import (
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    config_class,
)
from mirrorgrad_jax.errors import ConfigError
from mirrorgrad_jax.graph import (
    CooAdjacency,
    column_order,
    layer_mean_propagate,
    normalized_bipartite_adjacency,
    propagate,
    top_k_positions,
    torch_cpu_topk,
    torch_cpu_topk_sparse,
)

__all__ = ["DAMRS", "DAMRSConfig", "build_behaviour_graph", "consistent_knn_graphs", "torch_cpu_topk"]

#: The degree epsilon of the reference's ``compute_normalized_laplacian``.
_EPS = 1e-7
#: The reference's ``10e-10`` inside the logs of the neighbour discrimination.
_LOG_EPS = 1e-9


@config_class
class DAMRSConfig:
    """Attributes:
    embedding_size: d of the id tables (64).
    n_mm_layers: propagations of the item ids on each item-item graph (1; commented grid [1, 2]).
    n_ui_layers: LightGCN layers on the user-item graph (2; commented grid [1, 2, 3]).
    knn_k: most neighbours per item in the image and text graphs (10; commented grid [3, 5, 10, 15, 20]).
    kl_weight: weight of the user-preference alignment (KL) term (1).
    neighbor_weight: weight of the neighbour discrimination term (0.001).
    behaviour_topk: neighbours per item kept in the behaviour graph (2: ``item_graph_dict_2.npy``).
    behaviour_min_common_users: distinct train users two items must share to be linked (2, hard-coded in the script).
    behaviour_values: ``"binary"`` (the reference: counts discarded by the normalisation) or ``"counts"``.
    behaviour_ties: ``"torch_cpu"`` (the script's ``torch.topk`` order for tied counts) or ``"lowest_id"``.
    pseudo_positives: pseudo-positive items per item and kind (10, hard-coded in the reference).
    temperature: temperature of the neighbour discrimination (0.2, hard-coded in the reference).
    negative_mean: ``"batch"`` (the reference: one mean over the whole batch) or ``"pair"`` (per row).
    image_modality: dataset modality in the image role (``v_feat``; "image").
    text_modality: dataset modality in the text role (``t_feat``; "text").
    knn_chunk_size: item rows per similarity block when building the kNN graphs (memory only).
    """

    embedding_size: PositiveInt = 64
    n_mm_layers: NonNegativeInt = 1
    n_ui_layers: NonNegativeInt = 2
    knn_k: PositiveInt = 10
    kl_weight: NonNegativeFloat = 1.0
    neighbor_weight: NonNegativeFloat = 0.001
    behaviour_topk: PositiveInt = 2
    behaviour_min_common_users: PositiveInt = 2
    behaviour_values: Literal["binary", "counts"] = "binary"
    behaviour_ties: Literal["torch_cpu", "lowest_id"] = "torch_cpu"
    pseudo_positives: PositiveInt = 10
    temperature: PositiveFloat = 0.2
    negative_mean: Literal["batch", "pair"] = "batch"
    image_modality: str = "image"
    text_modality: str = "text"
    knn_chunk_size: PositiveInt = 2048

    constraints = modality_role_constraints("DA-MRS", both=True)


# ---------------------------------------------------------------------------------------
# The behaviour graph (build_iib_graph.py) and the consistent kNN graphs (get_knn_adj_mat).
# ---------------------------------------------------------------------------------------


def _co_interaction_counts(train: np.ndarray, num_items: int, min_common: int, chunk_items: int = 4096):
    """Item pairs ``(i, j)``, ``i != j``, sharing ``>= min_common`` distinct users: ``(rows, cols, counts)`` sorted by row, then col.

    ``C = B^T B`` for the binary user-item matrix ``B``, one block of item rows at a time:
    every train edge ``(u, i)`` of the block is expanded to all items of ``u`` and the pairs
    are counted (no loop over item pairs).
    """
    pairs = np.unique(np.asarray(train, np.int64).reshape(-1, 2), axis=0)
    users, items = pairs[:, 0], pairs[:, 1]  # sorted by user, then item
    num_users = int(users.max()) + 1 if len(users) else 0
    indptr = np.searchsorted(users, np.arange(num_users + 1))
    degree = np.diff(indptr)
    by_item = np.argsort(items, kind="stable")
    item_ptr = np.searchsorted(items[by_item], np.arange(num_items + 1))
    out_rows, out_cols, out_counts = [], [], []
    for start in range(0, num_items, chunk_items):
        stop = min(start + chunk_items, num_items)
        edges = by_item[item_ptr[start] : item_ptr[stop]]
        heads, owners = items[edges], users[edges]
        reach = degree[owners]
        total = int(reach.sum())
        if total == 0:
            continue
        offsets = np.arange(total) - np.repeat(np.cumsum(reach) - reach, reach)
        rows = np.repeat(heads, reach)
        cols = items[np.repeat(indptr[owners], reach) + offsets]
        keys, counts = np.unique((rows - start) * num_items + cols, return_counts=True)
        rows, cols = keys // num_items + start, keys % num_items
        keep = (counts >= min_common) & (rows != cols)
        out_rows.append(rows[keep])
        out_cols.append(cols[keep])
        out_counts.append(counts[keep])
    if not out_rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(out_rows), np.concatenate(out_cols), np.concatenate(out_counts)


def build_behaviour_graph(
    train,
    num_items: int,
    topk: int = 2,
    *,
    min_common: int = 2,
    ties: Literal["torch_cpu", "lowest_id"] = "torch_cpu",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The item-item behaviour graph of the authors' ``build_iib_graph.py``, as ``(rows, cols, counts)``.

    For every item ``i``: the items sharing at least ``min_common`` distinct users with it
    in ``train`` (the script's ``inter_len >= 2``), weighted by that number; it keeps all of
    them when there are at most ``topk``, else the ``topk`` largest (the script's
    ``torch.topk(row, topk)``; ties at the ``topk``-th place as :func:`torch_cpu_topk` with
    ``ties="torch_cpu"``, the lowest item ids with ``"lowest_id"``); an item without any
    such neighbour keeps none. This is the content of ``item_graph_dict_<topk>.npy``
    (``{i: [neighbours, counts]}``), without self-loops.

    Vectorised: a blocked sparse product of the item-user matrix with itself, one stable
    sort for the per-row top-k, and the torch emulation only on rows with a tie at the
    boundary.

    Args:
      train: ``(E, 2)`` (user, item) train pairs; duplicates count once (the script's sets).
      num_items: I, the width of every row.
      topk: neighbours kept per item (``--topk``, 2 in the README).
      min_common: fewest shared users for a link (2 in the script).
      ties: ``"torch_cpu"`` or ``"lowest_id"``.

    Returns:
      ``(rows, cols, counts)`` int64, sorted by row then column.

    Examples:
      >>> train = [[0, 0], [0, 1], [1, 0], [1, 1], [1, 2], [2, 1], [2, 2]]
      >>> rows, cols, counts = build_behaviour_graph(train, 4)
      >>> [(int(r), int(c), int(n)) for r, c, n in zip(rows, cols, counts)]
      [(0, 1, 2), (1, 0, 2), (1, 2, 2), (2, 1, 2)]
    """
    if ties not in ("torch_cpu", "lowest_id"):
        raise ValueError(f"ties must be 'torch_cpu' or 'lowest_id', got {ties!r}")
    rows, cols, counts = _co_interaction_counts(train, num_items, min_common)
    # Per row: by count descending, then column ascending (rows stay grouped).
    order = np.lexsort((cols, -counts, rows))
    rows, cols, counts = rows[order], cols[order], counts[order]
    starts = np.searchsorted(rows, np.arange(num_items + 1))
    rank = np.arange(len(rows)) - starts[rows]
    keep = rank < topk
    if ties == "torch_cpu":
        # Rows with more than topk candidates and a tie across the boundary: the emulation decides.
        sizes = np.diff(starts)
        boundary = starts[:-1] + topk
        tied = np.flatnonzero(sizes > topk)
        tied = tied[counts[boundary[tied] - 1] == counts[boundary[tied]]]
        for i in tied.tolist():
            lo, hi = starts[i], starts[i + 1]
            by_col = np.argsort(cols[lo:hi], kind="stable")
            chosen = torch_cpu_topk_sparse(cols[lo:hi][by_col], counts[lo:hi][by_col], num_items, topk)
            keep[lo:hi] = np.isin(cols[lo:hi], chosen)
    rows, cols, counts = rows[keep], cols[keep], counts[keep]
    order = np.lexsort((cols, rows))
    return rows[order], cols[order], counts[order]


def _row_normalised(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, num_nodes: int) -> CooAdjacency:
    """``values / sqrt((r_i + 1e-7)(r_j + 1e-7))`` with ``r`` the row sums (``compute_normalized_laplacian``), sorted by row."""
    values = np.asarray(values, np.float64)
    degree = np.bincount(rows, weights=values, minlength=num_nodes) + _EPS
    normalised = values / np.sqrt(degree[rows] * degree[cols])
    order = np.lexsort((cols, rows))
    return CooAdjacency(rows[order].astype(np.int32), cols[order].astype(np.int32), normalised[order].astype(np.float32), num_nodes)


def behaviour_adjacency(rows, cols, counts, num_items: int, values: Literal["binary", "counts"] = "binary") -> CooAdjacency:
    """``get_session_adj``: a self-loop on every item plus the behaviour edges, row-normalised.

    ``"binary"`` (the reference): every entry 1 before normalisation; ``"counts"``: the edge
    counts (self-loops 1).
    """
    self_loops = np.arange(num_items)
    all_rows = np.concatenate([self_loops, np.asarray(rows, np.int64)])
    all_cols = np.concatenate([self_loops, np.asarray(cols, np.int64)])
    weights = np.ones(len(all_rows)) if values == "binary" else np.concatenate([np.ones(num_items), np.asarray(counts, np.float64)])
    return _row_normalised(all_rows, all_cols, weights, num_items)


def _normalise_rows(table: np.ndarray) -> np.ndarray:
    table = np.asarray(table, np.float64)
    norm = np.linalg.norm(table, axis=1, keepdims=True)
    # The reference divides by the norm unguarded (a zero row becomes NaN, module docstring); here it stays 0.
    return (table / np.where(norm > 0, norm, 1.0)).astype(np.float32)


@functools.partial(jax.jit, static_argnames=("k", "chunk_size"))
def _masked_topk_chunks(nv, nt, mean_v, mean_t, k: int, chunk_size: int):
    num_rows = nv.shape[0]
    num_chunks = -(-num_rows // chunk_size)
    pad = ((0, num_chunks * chunk_size - num_rows), (0, 0))
    blocks = (jnp.pad(nv, pad).reshape(num_chunks, chunk_size, -1), jnp.pad(nt, pad).reshape(num_chunks, chunk_size, -1))

    def one_chunk(block):
        rows_v, rows_t = block
        # HIGHEST: TF32 products on a GPU could move entries across the mean or reorder the top-k.
        sim_v = jnp.dot(rows_v, nv.T, precision=jax.lax.Precision.HIGHEST)
        sim_t = jnp.dot(rows_t, nt.T, precision=jax.lax.Precision.HIGHEST)
        # The reference zeroes both matrices where either is below its mean.
        dropped = (sim_v < mean_v) | (sim_t < mean_t)
        sim_v, sim_t = jnp.where(dropped, 0.0, sim_v), jnp.where(dropped, 0.0, sim_t)
        count = jnp.sum(sim_t != 0, axis=1)
        return jax.lax.top_k(sim_v, k)[1], jax.lax.top_k(sim_t, k)[1], count

    idx_v, idx_t, count = jax.lax.map(one_chunk, blocks)
    return idx_v.reshape(-1, k)[:num_rows], idx_t.reshape(-1, k)[:num_rows], count.reshape(-1)[:num_rows]


def consistent_knn_graphs(image, text, knn_k: int = 10, *, chunk_size: int = 2048) -> tuple[CooAdjacency, CooAdjacency]:
    """The reference's ``get_knn_adj_mat``: the image and text kNN graphs on the consistently similar pairs.

    See the module docstring for the rule. Row chunks of ``chunk_size`` items against all
    items; the two means come first, exactly, as ``||sum_i n_i||^2 / I^2`` in float64.

    Args:
      image: ``(I, F_v)`` raw image features (the reference's ``v_feat``).
      text: ``(I, F_t)`` raw text features (``t_feat``).
      knn_k: most neighbours per item, ``1 <= knn_k <= I``.
      chunk_size: rows per similarity block (memory ``2 * chunk_size * I`` floats).

    Returns:
      ``(image_graph, text_graph)``, each a :class:`~mirrorgrad_jax.graph.CooAdjacency` over
      the I items with ``sum_i k_i`` entries, values ``1 / sqrt((k_i + 1e-7)(k_j + 1e-7))``.
    """
    nv, nt = _normalise_rows(image), _normalise_rows(text)
    num_items = nv.shape[0]
    if nt.shape[0] != num_items:
        raise ValueError(f"image and text tables must have the same rows, got {nv.shape[0]} and {nt.shape[0]}")
    if not 1 <= knn_k <= num_items:
        raise ValueError(f"knn_k must be in 1..{num_items} (the number of items), got {knn_k}")
    # mean(N N^T) = ||N^T 1||^2 / I^2, exact in float64 (the full matrix is never formed).
    means = [float(np.sum(n.astype(np.float64).sum(0) ** 2)) / num_items**2 for n in (nv, nt)]
    idx_v, idx_t, count = _masked_topk_chunks(
        jnp.asarray(nv), jnp.asarray(nt), np.float32(means[0]), np.float32(means[1]), knn_k, min(chunk_size, num_items)
    )
    kept = np.minimum(np.asarray(count), knn_k)  # the TEXT count caps both graphs
    slots = np.arange(knn_k)[None, :] < kept[:, None]
    rows = np.repeat(np.arange(num_items), knn_k).reshape(num_items, knn_k)[slots]
    ones = np.ones(len(rows))
    return tuple(_row_normalised(rows, np.asarray(idx)[slots].astype(np.int64), ones, num_items) for idx in (idx_v, idx_t))


def _distinct(ids: jax.Array, capacity: int) -> tuple[jax.Array, jax.Array]:
    """``torch.unique(ids)`` at a fixed size: the distinct ids ascending, and the mask of the real slots.

    ``capacity`` (static) bounds how many distinct ids there can be: the number of users or
    items. When it is not smaller than ``len(ids)``, the answer has ``len(ids)`` slots:
    ``ids`` sorted, True at the first occurrence of each id, False on the repeats. When it
    is, the distinct ids are packed into the first of ``capacity`` slots, and the slots left
    over (there are some only when an id is missing from the batch) repeat the smallest id
    with a False mask. The means over distinct ids read the True slots
    only, so both give the same loss; the packed form makes the ``(slots, I)`` and
    ``(users, items)`` blocks of the loss up to ``2 B / I`` times smaller when the
    catalogue is smaller than the batch.
    """
    ordered = jnp.sort(ids)
    first = jnp.concatenate([jnp.ones((1,), bool), ordered[1:] != ordered[:-1]])
    if capacity >= ids.shape[0]:
        return ordered, first
    slot = jnp.where(first, jnp.cumsum(first) - 1, capacity)  # out of range for the repeats: dropped
    packed = jnp.full((capacity,), ordered[0], ordered.dtype).at[slot].set(ordered, mode="drop")
    return packed, jnp.arange(capacity) < jnp.sum(first)


# ---------------------------------------------------------------------------------------
# The model.
# ---------------------------------------------------------------------------------------


@register
class DAMRS(Recommender):
    """DA-MRS on LightGCN: denoised item graphs, denoised BPR, two alignments; see the module docstring."""

    name = "damrs"
    config_class = DAMRSConfig
    multimodal = True

    def __init__(self, dataset, config: DAMRSConfig, *, rngs: nnx.Rngs):
        image, text = image_and_text_roles(dataset, config.image_modality, config.text_modality, "DA-MRS")
        require_knn_k(config.knn_k, dataset.num_items, "DA-MRS")
        if config.pseudo_positives > dataset.num_items:
            raise ConfigError(f"DA-MRS pseudo_positives={config.pseudo_positives} exceeds the number of items ({dataset.num_items})")
        feats = image_and_text_features(dataset, image, text, "DA-MRS")
        self.config = config
        self.num_users, self.num_items = dataset.num_users, dataset.num_items
        d = config.embedding_size
        self.users = nnx.Param(xavier_uniform(rngs.params(), (dataset.num_users, d)))
        self.items = nnx.Param(xavier_uniform(rngs.params(), (dataset.num_items, d)))

        adj = normalized_bipartite_adjacency(dataset.train, dataset.num_users, dataset.num_items)
        self.adj_rows, self.adj_cols, self.adj_values = (Constant(jnp.asarray(a)) for a in adj[:3])
        image_graph, text_graph = consistent_knn_graphs(feats["image"], feats["text"], config.knn_k, chunk_size=config.knn_chunk_size)
        behaviour = build_behaviour_graph(
            dataset.train, dataset.num_items, config.behaviour_topk, min_common=config.behaviour_min_common_users, ties=config.behaviour_ties
        )
        session_graph = behaviour_adjacency(*behaviour, dataset.num_items, config.behaviour_values)
        for name, graph in (("image", image_graph), ("text", text_graph), ("session", session_graph)):
            setattr(self, f"{name}_rows", Constant(jnp.asarray(graph.rows)))
            setattr(self, f"{name}_cols", Constant(jnp.asarray(graph.cols)))
            setattr(self, f"{name}_values", Constant(jnp.asarray(graph.values)))
            # The entries by column: the backward pass runs the row-sorted kernel on A^T.
            setattr(self, f"{name}_order", Constant(jnp.asarray(column_order(graph.cols))))

    # -- forward --------------------------------------------------------------------

    def _item_graph(self, name: str) -> CooAdjacency:
        return CooAdjacency(getattr(self, f"{name}_rows")[...], getattr(self, f"{name}_cols")[...], getattr(self, f"{name}_values")[...], self.num_items)

    def forward(self) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
        """``(u (U, d), i (I, d), h_t, h_v, h_s (I, d))``: LightGCN outputs and the three item-graph views."""
        x = jnp.concatenate([self.users[...], self.items[...]])
        adjacency = CooAdjacency(self.adj_rows[...], self.adj_cols[...], self.adj_values[...], self.num_users + self.num_items)
        out = layer_mean_propagate(adjacency, x, self.config.n_ui_layers, symmetric=True)
        views = []
        for name in ("text", "image", "session"):
            h = self.items[...]
            for _ in range(self.config.n_mm_layers):
                h = propagate(self._item_graph(name), h, column_order=getattr(self, f"{name}_order")[...])
            views.append(h)
        return out[: self.num_users], out[self.num_users :], *views

    # -- loss -----------------------------------------------------------------------

    def pseudo_labels(self, own: jax.Array, other_a: jax.Array, other_b: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``generate_pesudo_labels(other_a, other_b, own)``: the multimodal and the single-modality positives.

        Arrays ``(..., R, I)``; returns two ``(..., R, pseudo_positives)`` arrays of item
        positions (distinct within a row): the top of ``other_a + other_b + own + own``,
        then the top of ``own`` with those set to 0. Positions rather than ``(R, I)`` masks:
        the loss gathers the few entries it sums instead of masking whole rows.
        """
        k = self.config.pseudo_positives
        # Both are lax.top_k's positions (ties to the lower item). The second reads the
        # scatter's output, an array already in memory, where the block pre-selection of
        # top_k_positions is faster on the CPU; the first reads a sum XLA would otherwise fuse
        # into lax.top_k's one reader, and split across three readers it costs more
        # (benchmarks/topk_selection.py).
        mm = jax.lax.top_k(other_a + other_b + own + own, k)[1]
        return mm, top_k_positions(jnp.put_along_axis(own, mm, 0.0, axis=-1, inplace=False), k)

    def _neighbour_discrimination(self, mm: jax.Array, single: jax.Array, cosine: jax.Array, mask: jax.Array) -> jax.Array:
        """Per leading index, the mean over the real rows of ``-log(mm / all + 1e-9) - log(single / (all - mm) + 1e-9)``.

        ``mm`` and ``single`` are the positions :meth:`pseudo_labels` returns.
        """
        e = jnp.exp(cosine / self.config.temperature)
        total = jnp.sum(e, axis=-1)
        mm_score = jnp.sum(jnp.take_along_axis(e, mm, axis=-1), axis=-1)
        single_score = jnp.sum(jnp.take_along_axis(e, single, axis=-1), axis=-1)
        loss = -jnp.log(mm_score / total + _LOG_EPS) - jnp.log(single_score / (total - mm_score) + _LOG_EPS)
        return jnp.sum(jnp.where(mask, loss, 0.0), axis=-1) / jnp.sum(mask)

    def modal_weights(self, users, pos, neg, all_users, h_t, h_v, h_s) -> tuple[jax.Array, jax.Array]:
        """``get_weight_modal``: the per-row weights ``(w+, w-)`` of the denoised BPR (no gradient)."""
        u = jax.lax.stop_gradient(all_users[users])
        views = [jax.lax.stop_gradient(h) for h in (h_t, h_s, h_v)]  # the reference's stacking order
        q = jax.nn.sigmoid(jnp.stack([jnp.sum(u * rownorm(h[pos]), axis=1) for h in views]))
        r = jax.nn.sigmoid(jnp.stack([jnp.sum(u * rownorm(h[neg]), axis=1) for h in views]))
        q_mean, q_var, q_max = jnp.mean(q, axis=0), jnp.var(q, axis=0, ddof=1), jnp.max(q, axis=0)
        r_mean = jnp.mean(r) if self.config.negative_mean == "batch" else jnp.mean(r, axis=0)
        pos_weight = jnp.clip(q_mean * jnp.exp(-q_var) ** 2, 0.0, 1.0)
        neg_weight = jnp.clip((q_max - r_mean) * (q_mean < r_mean), 0.0, 1.0)
        return pos_weight, neg_weight

    def loss_terms(self, batch: jax.Array) -> dict[str, jax.Array]:
        """The unweighted parts of the loss: ``bpr`` (denoised), ``neighbour`` (mean of 3) and ``kl``."""
        users, pos, neg = batch[0], batch[1], batch[2]
        all_users, all_items, h_t, h_v, h_s = self.forward()
        user_ids, user_mask = _distinct(users, self.num_users)
        item_ids, item_mask = _distinct(jnp.concatenate([pos, neg]), self.num_items)

        # The three modalities side by side, in the reference's order of its three calls:
        # (s, v, t), each with its two others (t, v), (t, s), (v, s).
        # Cosines of the batch's distinct items with every item; their softmax (temperature 1,
        # no gradient) gives the pseudo-labels.
        cosine = jnp.stack([pairwise_scores(v[item_ids], v) for v in (rownorm(h_s), rownorm(h_v), rownorm(h_t))])
        prob = jax.nn.softmax(jax.lax.stop_gradient(cosine), axis=-1)
        mm, single = self.pseudo_labels(prob, prob[jnp.array([2, 2, 1])], prob[jnp.array([1, 0, 0])])
        per_view = self._neighbour_discrimination(mm, single, cosine, item_mask)
        neighbour = per_view[0] + per_view[1] + per_view[2]

        u = all_users[user_ids]
        x_g = pairwise_scores(u, rownorm(all_items[item_ids]))
        x_t = pairwise_scores(u, rownorm(((h_t + h_s + h_v) / 3.0)[item_ids]))
        # KL(p_g, p_t) + KL(p_t, p_g) for Bernoulli p = sigmoid(x) is (p_g - p_t)(x_g - x_t).
        kl = (jax.nn.sigmoid(x_g) - jax.nn.sigmoid(x_t)) * (x_g - x_t)
        pair_mask = user_mask[:, None] & item_mask[None, :]
        kl = jnp.sum(jnp.where(pair_mask, kl, 0.0)) / jnp.sum(pair_mask)

        pos_weight, neg_weight = self.modal_weights(users, pos, neg, all_users, h_t, h_v, h_s)
        items = all_items + (h_t + h_v + h_s) / 3.0
        u = all_users[users]
        pos_scores, neg_scores = jnp.sum(u * items[pos], axis=1), jnp.sum(u * items[neg], axis=1)
        bpr = -jnp.mean(
            jax.nn.log_sigmoid(pos_scores - neg_scores) * pos_weight + jax.nn.log_sigmoid(neg_scores - pos_scores) * neg_weight
        )
        return {"bpr": bpr, "neighbour": neighbour / 3.0, "kl": kl}

    # -- interface ------------------------------------------------------------------

    def loss(self, batch: jax.Array, key: jax.Array) -> jax.Array:
        del key  # nothing is random
        terms = self.loss_terms(batch)
        return terms["bpr"] + self.config.neighbor_weight * terms["neighbour"] + self.config.kl_weight * terms["kl"]

    def scores(self, users: jax.Array) -> jax.Array:
        all_users, all_items, h_t, h_v, h_s = self.forward()
        return all_users[users] @ (all_items + (h_v + h_t + h_s) / 3.0).T
