"""PGL (AAAI 2025, "Mind Individual Information! Principal Graph Learning for Multimedia Recommendation").

The reference is MMRec's ``pgl.py`` (its header names the paper and venue, not the
authors). PGL is FREEDOM's frozen multimodal item graph on top of a LightGCN that is
trained on a *principal subgraph* of the user-item graph and ranks with the full graph.

Graphs (all built here from the dataset itself; the reference may load the item graph from a
cache file named like FREEDOM's):

* the frozen item-item graph ``S = w K_bin(image) + (1 - w) K_bin(text)``, ``w =
  mm_image_weight`` (0.1): each modality's top-``knn_k`` cosine neighbours of the RAW feature
  tables (the item itself a candidate), binary, symmetrically normalised with the row counts,
  so every entry is ``1 / (knn_k + 1e-7)``; built once and never rebuilt, although the
  feature tables are fine-tuned. Exact ties go to the lower item id (see
  :func:`~mirrorgrad_jax.graph.knn_item_graph`); a feature row of zeros has cosine 0 with
  every item, where the reference's NaN cosines, which its ``topk`` ranks first, would put
  the zero-feature items into every item's list (MMRec's Amazon files mean-fill missing
  features, so no row is zero there);
* ``A_sym = D^-1/2 A D^-1/2`` over the ``U + I`` user and item nodes (binary degrees + 1e-7),
  used for ranking;
* the principal subgraph ``G`` used for training, by ``mode``:

  - ``"local"`` (the reference's default and only grid value): every epoch, ``pre_epoch``
    keeps ``int(E * local_keep_ratio)`` of the ``E`` distinct train edges (``0.3``, a
    constant in the reference), drawn without replacement with probability proportional
    to ``1 / sqrt(d_u d_i)`` (``torch.multinomial``; reproduced by Gumbel top-k, same
    distribution), re-normalised with the kept degrees ``1 / sqrt((d'_u + 1e-7)(d'_i +
    1e-7))`` and mirrored. The number kept is fixed, so the arrays (:class:`EpochSample`)
    keep their shapes from epoch to epoch;
  - ``"global"``: built once. With ``k = embedding_size`` and ``n = int(k / 4)``, take the
    ``k`` largest singular triples ``(s_t, u_t, v_t)`` of ``A_sym`` (the whole ``(U + I)``
    square matrix: the reference calls ``sparsesvd(A_sym, k)``), and form
    ``G = sum_{t < n} s_t s_{k - n + t} u_t v_t^T`` (the t-th largest singular value times
    the t-th of the ``n`` smallest kept ones), then drop every entry with ``|G_xy| < 1e-3``.
    ``pre_epoch`` does nothing.

  Because ``A_sym = [[0, R], [R^T, 0]]`` is bipartite, its singular values are those of the
  ``U x I`` block ``R``, each twice: for ``R q_j = sigma_j p_j`` the two triples are
  ``((p_j, 0), (0, q_j))`` and ``((0, q_j), (p_j, 0))``. The factors are therefore computed
  from the ``k / 2`` largest singular triples of the sparse ``R`` (:func:`principal_factors`:
  ``scipy.sparse.linalg.svds`` (ARPACK), or a dense ``numpy.linalg.svd`` on small matrices),
  and ``G = [[0, B], [B^T, 0]]`` with ``B = sum_{j < n/2} sigma_j sigma_{(k - n)/2 + j}
  p_j q_j^T``, computed in row blocks (never ``(U + I)^2`` at once, which the reference
  materialises densely). Inside each pair the singular vectors are only defined up to a
  rotation; ``G`` does not depend on it as long as no pair is cut in two, that is when ``k``
  and ``n`` are even: the config refuses ``mode="global"`` otherwise (``embedding_size`` a
  multiple of 8 works; 64 gives n = 16). A dataset whose ``R`` has fewer than ``k / 2``
  non-zero singular values is refused too (the reference's SVDLIBC then hangs, fails or
  returns fewer values, which moves the "bottom" ones: not reproducible). Checked against
  the reference's solver (``sparsesvd`` 0.2.2, SVDLIBC) on random bipartite graphs of up to
  3,000 nodes with k = 8, 16, 64: it returns every singular value twice, as the dense SVD
  does, and its ``G`` equals the dense one to 1e-13. Not covered: a user-item graph with
  several connected components repeats the singular value 1 within ``R`` itself, and ``G``
  then depends on the basis any solver picks there (so does the reference's).

Forward on a graph ``M`` (``G`` in training, ``A_sym`` for ranking):
``x_m = normalize(E_m W_m + b_m)`` for m = image, text (the raw tables ``E_m`` are
trainable, as in FREEDOM; ``normalize`` = torch's ``F.normalize``);
users ``e_u = [P_image | P_text]`` (two id tables), items ``e_i = [x_image | x_text]``;
``h = S^{n_mm_layers} e_i``; LightGCN: ``mean(z, M z, ..., M^{n_ui_layers} z)`` with ``z =
[e_u; e_i]`` gives ``u``, ``i``; the item output is ``i + h``. ``scores = u i^T`` on
``A_sym`` with the current parameters.

Loss (per batch, on ``G``): ``-mean log sigmoid(u.i+ - u.i-)  +  reg_weight * cl`` with
``cl = (InfoNCE(D1(u_b), D2(u_b)) + InfoNCE(D3(i+_b), D4(i+_b))) / 2``, where the ``D``
are four independent dropouts (rate ``dropout``, kept entries scaled by ``1 / (1 - p)``) of
the SAME batch embeddings, and ``InfoNCE(a, b) = mean_r -log(exp(a_r.b_r / tau) / sum_c
exp(a_r.b_c / tau))`` on L2-normalised rows, ``tau = cl_temperature`` (0.2, a constant in
the reference); repeated users in a batch are each other's negatives, as there. No L2
term: ``reg_weight`` weights only the contrastive term, and the packaged grid is ``[0]``,
so by default the contrastive term contributes nothing (it is then not computed: ``bpr +
0 * cl`` equals ``bpr`` for any finite ``cl``, which is always the case here).

Random: the initialisation; the local edge sample (``pre_epoch(rng)``, numpy, once per
epoch); the four dropout masks (from the ``key`` of ``loss``: ``fold_in(key, 0..3)`` for
the user views 1 and 2, the item views 1 and 2). ``scores`` is deterministic.

Parameters (the reference's count): ``2 U d + sum_m (I F_m + F_m d + d)`` with ``d =
embedding_size``, ``F_m`` the image and text widths: the user tables ``user_image`` and
``user_text`` (torch's xavier_uniform), the raw feature tables, the projections (torch's
default Linear init). There is no item id table.

Quirks kept (the reference's behaviour is the default):

* the contrastive views are two dropouts of the same embeddings (no graph augmentation);
* ``local_keep_ratio`` is a constant 0.3 in the reference (its config's ``dropout`` is the
  embedding dropout of the contrastive views, not an edge dropout as in FREEDOM); here it is
  an option with that default. The count is ``int(E * ratio)``, truncated in floating point
  as the reference does (``int(6 * 0.3) == 1``);
* the reference has no training graph before the first ``pre_epoch_processing``; one is
  drawn at construction here so that the model is usable straight away.

The paper was not at hand while porting: where the reference departs from it is not
established here, so no option offers a "paper" variant.

Not implemented: the reference's ``alignment`` and ``uniformity`` helpers (defined but not
used by its loss), ``lambda_coeff`` (read but unused) and ``weight_size`` (in its yaml, never read), and
``feat_embed_dim``, which must equal ``embedding_size`` (user and item rows are stacked
into one matrix), so it is not an option. The reference needs both an image and a text
table (it fails with one); so does this port (:func:`image_and_text_roles`).
"""

from __future__ import annotations

from typing import Annotated, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from mirrorgrad_jax.models.initializers import add_feature_projection, xavier_uniform
from mirrorgrad_jax.models.inputs import (
    image_and_text_features,
    image_and_text_roles,
    modality_role_constraints,
    require_knn_k,
)
from mirrorgrad_jax.models.interface import Constant, EpochSample, Recommender
from mirrorgrad_jax.models.kernels import dense, rownorm
from mirrorgrad_jax.models.losses import bpr_log_likelihood, info_nce
from mirrorgrad_jax.models.registry import register

from mirrorgrad_jax.config import (
    Constraint,
    Fraction,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Range,
    UnitInterval,
    config_class,
)
from mirrorgrad_jax.errors import ConfigError
from mirrorgrad_jax.graph import (
    CooAdjacency,
    combine_knn,
    knn_column_order,
    knn_item_graph,
    knn_propagate,
    layer_mean_propagate,
    normalized_bipartite_adjacency,
    sample_edges_degree_sensitive,
)

__all__ = ["PGL", "PGLConfig", "normalized_user_item_block", "principal_factors", "principal_subgraph"]

#: The reference's degree epsilon and its threshold on the global subgraph's entries.
_DEGREE_EPS = 1e-7
_GLOBAL_THRESHOLD = 1e-3
#: Share of the kept singular values on each side (the reference's ``int(0.25 * k)``).
_TOP_BOTTOM_SHARE = 0.25


def _global_pairs_whole(config) -> bool:
    k = config.embedding_size
    n = int(_TOP_BOTTOM_SHARE * k)
    return config.mode == "local" or (k % 2 == 0 and n % 2 == 0 and n >= 2)


@config_class
class PGLConfig:
    """Attributes:
    embedding_size: d of both user tables and of both modality projections (64); in
      ``global`` mode also the number of singular values kept.
    n_mm_layers: propagations on the frozen item-item graph (1).
    n_ui_layers: LightGCN layers on the user-item graph (2).
    knn_k: neighbours per item in each modality's kNN graph, the item itself a candidate (10).
    mm_image_weight: weight of the image kNN graph; the text graph gets ``1 - w`` (0.1).
    dropout: rate of the four dropouts that make the contrastive views (0.2).
    reg_weight: weight of the contrastive term (grid ``[0]``, so 0).
    cl_temperature: InfoNCE temperature (0.2, a constant in the reference).
    mode: ``"local"`` (per-epoch degree-sensitive edge sample) or ``"global"`` (the fixed
      SVD subgraph); see the module docstring.
    local_keep_ratio: share of train edges kept by the local sample (0.3, a constant in
      the reference).
    image_modality: dataset modality in the image role ("image"; required).
    text_modality: dataset modality in the text role ("text"; required).
    """

    embedding_size: PositiveInt = 64
    n_mm_layers: NonNegativeInt = 1
    n_ui_layers: NonNegativeInt = 2
    knn_k: PositiveInt = 10
    mm_image_weight: UnitInterval = 0.1
    dropout: Fraction = 0.2
    reg_weight: NonNegativeFloat = 0.0
    cl_temperature: PositiveFloat = 0.2
    mode: Literal["local", "global"] = "local"
    local_keep_ratio: Annotated[float, Range(gt=0, le=1)] = 0.3
    image_modality: str = "image"
    text_modality: str = "text"

    constraints = (
        *modality_role_constraints("PGL", both=True),
        Constraint(
            ("mode", "embedding_size"),
            _global_pairs_whole,
            "must give an even embedding_size with int(embedding_size / 4) even and >= 2 when mode is 'global' "
            "(e.g. a multiple of 8): the bipartite graph's singular values come in equal pairs and the "
            "reference's top x bottom reconstruction is ill-defined when one is cut",
        ),
    )


# -- host-side graph builders -----------------------------------------------------------


def normalized_user_item_block(train: np.ndarray, num_users: int, num_items: int):
    """The ``U x I`` block ``R`` of ``A_sym`` in float64 (``scipy.sparse`` CSR): ``1 / sqrt((d_u + 1e-7)(d_i + 1e-7))``.

    ``A_sym = [[0, R], [R^T, 0]]`` with binary degrees (duplicated train rows merged).
    """
    import scipy.sparse as sp

    pairs = np.unique(np.asarray(train, np.int64).reshape(-1, 2), axis=0)
    users, items = pairs[:, 0], pairs[:, 1]
    deg_u = np.bincount(users, minlength=num_users).astype(np.float64) + _DEGREE_EPS
    deg_i = np.bincount(items, minlength=num_items).astype(np.float64) + _DEGREE_EPS
    values = 1.0 / np.sqrt(deg_u[users] * deg_i[items])
    return sp.csr_matrix((values, (users, items)), shape=(num_users, num_items))


def principal_factors(matrix, num: int, *, solver: Literal["auto", "arpack", "dense"] = "auto"):
    """The ``num`` largest singular triples of a (sparse) matrix, by decreasing singular value.

    Args:
      matrix: ``(m, n)`` scipy sparse matrix or array (float64 is used).
      num: how many triples; where the matrix has fewer (``num > min(m, n)``), the rest
        are zeros (singular value 0, zero vectors).
      solver: ``"arpack"``: ``scipy.sparse.linalg.svds`` (needs ``num < min(m, n)``; a fixed
        random start vector, so repeated calls agree); ``"dense"``: ``numpy.linalg.svd`` of the
        dense matrix; ``"auto"``: dense when the matrix has at most 2**18 entries or
        ``num >= min(m, n) - 1``, ARPACK otherwise.

    Returns:
      ``(p (m, num), sigma (num,), q (n, num))`` float64 with ``matrix @ q[:, j] = sigma[j] p[:, j]``;
      each pair of vectors is defined up to a common sign (and up to a rotation inside a
      repeated singular value).
    """
    import scipy.sparse as sp
    import scipy.sparse.linalg as spla

    m, n = matrix.shape
    small = min(m, n)
    if solver == "auto":
        solver = "dense" if m * n <= 2**18 or num >= small - 1 else "arpack"
    if solver == "arpack":
        if not 1 <= num < small:
            raise ValueError(f"the ARPACK solver needs 1 <= num < {small}, got {num}")
        csr = sp.csr_matrix(matrix, dtype=np.float64)
        v0 = np.random.default_rng(0).uniform(-1.0, 1.0, small)  # fixed: repeated calls agree
        p, sigma, qt = spla.svds(csr, k=num, which="LM", solver="arpack", v0=v0)
    elif solver == "dense":
        array = matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)
        p, sigma, qt = np.linalg.svd(np.asarray(array, np.float64), full_matrices=False)
    else:
        raise ValueError(f"solver must be 'auto', 'arpack' or 'dense', got {solver!r}")
    order = np.argsort(-sigma, kind="stable")[:num]
    p, sigma, q = p[:, order], sigma[order], qt[order].T
    if len(sigma) < num:
        missing = num - len(sigma)
        p = np.pad(p, ((0, 0), (0, missing)))
        q = np.pad(q, ((0, 0), (0, missing)))
        sigma = np.pad(sigma, (0, missing))
    return p, sigma, q


def principal_subgraph(
    train: np.ndarray,
    num_users: int,
    num_items: int,
    k: int,
    *,
    threshold: float = _GLOBAL_THRESHOLD,
    solver: Literal["auto", "arpack", "dense"] = "auto",
    block_entries: int = 2**24,
) -> CooAdjacency:
    """The reference's ``global_subgraph_extraction(A_sym)`` as a sorted, mirrored COO graph.

    ``G = sum_{t < n} s_t s_{k-n+t} u_t v_t^T`` over the ``k`` largest singular triples of
    ``A_sym`` (``n = int(k / 4)``), entries with ``|G_xy| < threshold`` dropped. From the
    ``k / 2`` largest triples ``(sigma_j, p_j, q_j)`` of its block ``R``: ``G = [[0, B], [B^T,
    0]]``, ``B = sum_{j < n/2} sigma_j sigma_{(k-n)/2 + j} p_j q_j^T`` (see the module
    docstring; ``k`` and ``n`` even). ``B`` is formed ``block_entries`` entries at a time.

    Raises:
      ValueError: ``k`` or ``n`` odd, or ``n < 2``.
      ConfigError: ``R`` has fewer than ``k / 2`` non-zero singular values.

    Returns:
      A :class:`CooAdjacency` over ``U + I`` nodes: each kept ``B_ui`` at ``(u, U + i)`` and
      ``(U + i, u)``, float32 values, sorted by (row, col).
    """
    n = int(_TOP_BOTTOM_SHARE * k)
    if k % 2 or n % 2 or n < 2:
        raise ValueError(f"k={k} must be even with int(k / 4) even and >= 2")
    block = normalized_user_item_block(train, num_users, num_items)
    p, sigma, q = principal_factors(block, k // 2, solver=solver)
    if not sigma[-1] > 1e-10 * max(sigma[0], 1e-300):
        nonzero = int(np.sum(sigma > 1e-10 * max(sigma[0], 1e-300)))
        raise ConfigError(
            f"PGL mode='global' keeps embedding_size={k} singular values, but the normalised user-item matrix has "
            f"only {2 * nonzero} non-zero ones: use a smaller embedding_size or mode='local'"
        )
    top = n // 2
    gamma = sigma[:top] * sigma[(k - n) // 2 : (k - n) // 2 + top]
    left, right = p[:, :top] * gamma, q[:, :top]
    step = max(1, block_entries // max(num_items, 1))
    users, items, values = [], [], []
    for start in range(0, num_users, step):
        part = left[start : start + step] @ right.T
        r, c = np.nonzero(np.abs(part) >= threshold)
        users.append(r + start)
        items.append(c)
        values.append(part[r, c])
    users, items, values = (np.concatenate(a) for a in (users, items, values))
    rows = np.concatenate([users, items + num_users])
    cols = np.concatenate([items + num_users, users])
    values = np.concatenate([values, values])
    order = np.lexsort((cols, rows))
    return CooAdjacency(
        rows[order].astype(np.int32), cols[order].astype(np.int32), values[order].astype(np.float32), num_users + num_items
    )



def _dropout(key: jax.Array, x: jax.Array, rate: float) -> jax.Array:
    """torch's ``nn.Dropout`` in training mode: zero with probability ``rate``, scale the rest by ``1 / (1 - rate)``."""
    if rate <= 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0)


# -- the model ----------------------------------------------------------------------------


@register
class PGL(Recommender):
    """FREEDOM's frozen item graph + LightGCN trained on a principal subgraph; see the module docstring."""

    name = "pgl"
    config_class = PGLConfig
    multimodal = True
    uses_negatives = True

    def __init__(self, dataset, config: PGLConfig, *, rngs: nnx.Rngs):
        image, text = image_and_text_roles(dataset, config.image_modality, config.text_modality, "PGL")
        require_knn_k(config.knn_k, dataset.num_items, "PGL")
        feats = image_and_text_features(dataset, image, text, "PGL")
        self.config = config
        self.num_users, self.num_items = dataset.num_users, dataset.num_items
        d = config.embedding_size
        if config.mode == "global":  # first: a dataset it cannot use is refused before any other work
            sub = principal_subgraph(dataset.train, dataset.num_users, dataset.num_items, d)
        self.user_image = nnx.Param(xavier_uniform(rngs.params(), (dataset.num_users, d)))
        self.user_text = nnx.Param(xavier_uniform(rngs.params(), (dataset.num_users, d)))
        for role in ("image", "text"):
            add_feature_projection(self, role, feats[role], d, rngs.params())

        # Frozen item-item graph from the raw features (FREEDOM's).
        w = config.mm_image_weight
        mm_idx, mm_val = combine_knn(
            [
                (knn_item_graph(feats["image"], config.knn_k, values="binary"), w),
                (knn_item_graph(feats["text"], config.knn_k, values="binary"), 1.0 - w),
            ]
        )
        self.mm_idx, self.mm_val = Constant(jnp.asarray(mm_idx, jnp.int32)), Constant(jnp.asarray(mm_val, jnp.float32))
        self.mm_order = Constant(jnp.asarray(knn_column_order(mm_idx)))

        full = normalized_bipartite_adjacency(dataset.train, dataset.num_users, dataset.num_items)
        self.full_rows, self.full_cols, self.full_values = (Constant(jnp.asarray(a)) for a in full[:3])

        if config.mode == "global":
            self.sub_rows, self.sub_cols, self.sub_values = (Constant(jnp.asarray(a)) for a in sub[:3])
            return
        pairs = np.unique(np.asarray(dataset.train, np.int64), axis=0)
        # The reference's int(E * 0.3), truncated in floating point.
        self.num_kept_edges = int(len(pairs) * config.local_keep_ratio)
        if self.num_kept_edges == 0:
            raise ConfigError(
                f"PGL local_keep_ratio={config.local_keep_ratio} keeps 0 of the {len(pairs)} distinct train edges; "
                "use a larger local_keep_ratio"
            )
        self.train_pairs = Constant(jnp.asarray(pairs, jnp.int32))
        # The reference has no training graph before the first pre_epoch; one is drawn here
        # so that the model is usable (and has its final shapes) straight after construction.
        seed = int(jax.random.randint(rngs.params(), (), 0, np.iinfo(np.int32).max))
        self.pre_epoch(np.random.default_rng(seed))

    # -- graphs ---------------------------------------------------------------------

    def pre_epoch(self, rng: np.random.Generator) -> None:
        """``local``: draws this epoch's degree-sensitive edge sample (same shapes every epoch); ``global``: nothing."""
        if self.config.mode != "local":
            return
        adj = sample_edges_degree_sensitive(np.asarray(self.train_pairs[...]), self.num_users, self.num_items, self.num_kept_edges, rng)
        self.sub_rows, self.sub_cols, self.sub_values = (EpochSample(jnp.asarray(a)) for a in adj[:3])

    def full_adjacency(self) -> CooAdjacency:
        """``A_sym`` (ranking)."""
        return CooAdjacency(self.full_rows[...], self.full_cols[...], self.full_values[...], self.num_users + self.num_items)

    def training_adjacency(self) -> CooAdjacency:
        """The principal subgraph ``G`` (training): this epoch's sample, or the SVD subgraph."""
        return CooAdjacency(self.sub_rows[...], self.sub_cols[...], self.sub_values[...], self.num_users + self.num_items)

    # -- forward --------------------------------------------------------------------

    def _projected(self, role: str) -> jax.Array:
        """``normalize({role}_trs({role}_emb))``: ``(I, d)``."""
        x = dense(getattr(self, f"{role}_emb")[...], getattr(self, f"{role}_trs_w")[...]) + getattr(self, f"{role}_trs_b")[...]
        return rownorm(x)

    def forward(self, adjacency: CooAdjacency) -> tuple[jax.Array, jax.Array]:
        """``(users (U, 2d), items (I, 2d))`` propagated on ``adjacency``, items plus the item-graph term."""
        items = jnp.concatenate([self._projected("image"), self._projected("text")], axis=1)
        users = jnp.concatenate([self.user_image[...], self.user_text[...]], axis=1)
        h = items
        for _ in range(self.config.n_mm_layers):
            h = knn_propagate(self.mm_idx[...], self.mm_val[...], h, column_order=self.mm_order[...])
        # A_sym, the sampled graph and the SVD subgraph all equal their transpose entry by entry.
        out = layer_mean_propagate(adjacency, jnp.concatenate([users, items]), self.config.n_ui_layers, symmetric=True)
        return out[: self.num_users], out[self.num_users :] + h

    def loss_terms(self, batch: jax.Array, key: jax.Array, *, with_cl: bool = True) -> dict[str, jax.Array]:
        """The unweighted parts of the loss: ``bpr`` and (``with_cl``) ``cl``, the mean of the two InfoNCE terms."""
        users, pos, neg = batch[0], batch[1], batch[2]
        all_users, all_items = self.forward(self.training_adjacency())
        u, p, n = all_users[users], all_items[pos], all_items[neg]
        terms = {"bpr": -bpr_log_likelihood(jnp.sum(u * p, -1), jnp.sum(u * n, -1))}
        if with_cl:
            rate, tau = self.config.dropout, self.config.cl_temperature
            # Four independent masks, in the reference's order: user view 1, 2, item view 1, 2.
            views = [_dropout(jax.random.fold_in(key, i), x, rate) for i, x in enumerate((u, u, p, p))]
            terms["cl"] = (info_nce(views[0], views[1], tau) + info_nce(views[2], views[3], tau)) / 2.0
        return terms

    # -- interface ------------------------------------------------------------------

    def loss(self, batch, key):
        # With reg_weight 0 (the reference's grid), bpr + 0 * cl == bpr for the always-finite
        # cl: the B x B logits are skipped.
        with_cl = self.config.reg_weight != 0.0
        terms = self.loss_terms(batch, key, with_cl=with_cl)
        return terms["bpr"] + self.config.reg_weight * terms["cl"] if with_cl else terms["bpr"]

    def scores(self, users):
        all_users, all_items = self.forward(self.full_adjacency())
        return all_users[users] @ all_items.T
