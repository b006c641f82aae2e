"""SLMRec (Tao et al., 2022) with the FAC self-supervised task, as the reference implements it (``slmrec.py``).

Forward: LightGCN (``n_layers`` = 3, mean of the layer outputs 0..L) on ``A_pre``, the
symmetric normalised user-item adjacency with degree eps 1e-8, run on three inputs that
share the user table ``E_u``:

* ``[E_u; E_i]`` -> ``(i_u, i_i)`` (ids),
* ``[E_u; V]`` -> ``(v_u, v_i)`` with ``V = v_dense(rownorm(image))``,
* ``[E_u; T]`` -> ``(t_u, t_i)`` with ``T = t_dense(rownorm(text))``.

Propagation is linear and acts column by column, so the three passes are run as ONE
pass over the side-by-side input ``[E_u | E_u | E_u ; E_i | V | T]`` (N, 3d): the same
numbers as three separate passes, one gather and one ``segment_sum`` per layer, and the
output is already the concatenation the fusion layers read:
``user = Lin_u([i_u | v_u | t_u])``, ``item = Lin_i([i_i | v_i | t_i])``.

Loss = main + ``ssl_alpha`` * (L_v + L_t):

* main: in-batch InfoNCE over the batch's (user, positive) rows, ``rownorm(user) @
  rownorm(item)^T / temp`` (B x B) with the diagonal as targets. A positive item that
  appears twice in a batch is a false negative for the other row: kept (faithful);
* FAC, on the batch's positive items, WITHOUT normalisation:
  ``a = g_i_iv(i_i)``, ``b = g_v_iv(v_i)``, ``L_v = CE(a b^T / ssl_temp)``;
  ``c = g_iva_ivat(g_iv_iva(a))``, ``e = g_t_ivat(t_i)``, ``L_t = CE(c e^T / ssl_temp)``.

Row 2 of the batch (negatives) is ignored; ``uses_negatives`` stays True as in the
reference (``use_neg_sampling`` is not switched off for SLMRec), so the host still draws
negatives and the RNG stream matches the other negative-sampling models.

Evaluation: the reference's ``full_sort_predict`` returns ``sigmoid(user[u] @ item^T)``
with ``user``/``item`` cached by the LAST training forward (stale). ``scores`` returns
the dot products WITHOUT the sigmoid: it is strictly monotone, so rankings and every
metric are unchanged, and raw scores keep float32 resolution where the sigmoid would
saturate to 1.0 and create artificial ties. ``stale_eval=True`` (default, faithful) ranks
with the :class:`~mirrorgrad_jax.models.TrainingCache` written by ``loss``;
``stale_eval=False`` recomputes the forward with the current parameters.

Weight decay: the reference trains SLMRec with Adam ``weight_decay=1e-4`` (coupled L2);
that is a trainer setting (``train.weight_decay`` in ``configs/slmrec.yaml``), not a
model option.

Parameters (d = ``embedding_size``, Fv/Ft = image/text feature sizes)::

    (U + I) d                      E_u, E_i (xavier-uniform)
  + (Fv + 1) d + (Ft + 1) d        v_dense, t_dense (xavier-uniform weight, torch-default bias)
  + 2 (3d + 1) d                   Lin_u, Lin_i (idem)
  + 3 (d + 1) d                    g_i_iv, g_v_iv, g_iv_iva (idem)
  + 2 (d + 1) (d // 2)             g_iva_ivat, g_t_ivat (idem)

The reference also registers ``g_a_iva`` (d -> d, for an audio modality the datasets do
not have) and never uses it: it is NOT created here, so the count is ``(d + 1) d`` =
4,160 below the reference's. On Amazon Sports (U=35,598, I=18,357, Fv=4096, Ft=384, d=64):
3,781,312 here vs the reference's 3,785,472.

Not implemented: the reference's other SSL tasks (FD, FM, FD+FM; ``ssl_task`` is FAC in
its config), ``mm_fusion_mode: mean`` and ``init: normal`` (the config uses concat and
xavier), the kwai (image-only) branch. The reference's ``reg`` option is never read.
"""

from __future__ import annotations


from typing import Annotated

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mirrorgrad_jax.config import NonNegativeFloat, NonNegativeInt, PositiveFloat, Range, config_class
from mirrorgrad_jax.graph import CooAdjacency, column_order, layer_mean_propagate, normalized_bipartite_adjacency
from mirrorgrad_jax.models.initializers import xavier_uniform
from mirrorgrad_jax.models.inputs import image_and_text_roles, modality_role_constraints
from mirrorgrad_jax.models.interface import Constant, Recommender, TrainingCache
from mirrorgrad_jax.models.kernels import dense, pairwise_scores, rownorm
from mirrorgrad_jax.models.registry import register

__all__ = ["SLMRec", "SLMRecConfig", "A_PRE_EPS"]

# Degree epsilon of the reference's ``adj_type: pre`` normalisation.
A_PRE_EPS = 1e-8
# torch.nn.functional.normalize's default eps.
_ROWNORM_EPS = 1e-12


def rownorm_np(x: np.ndarray) -> np.ndarray:
    """Host-side :func:`rownorm` for the constant feature tables (computed in float64)."""
    x = np.asarray(x, np.float64)
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), _ROWNORM_EPS)).astype(np.float32)


def in_batch_cross_entropy(logits: jax.Array) -> jax.Array:
    """Mean cross-entropy of a square logit matrix with the diagonal as the targets."""
    return jnp.mean(jax.nn.logsumexp(logits, axis=1) - jnp.diagonal(logits))


class TorchLinear(nnx.Module):
    """``y = x W + b`` with torch's Linear layout: xavier-uniform weight, default bias U(+-1/sqrt(fan_in))."""

    def __init__(self, fan_in: int, fan_out: int, *, rngs: nnx.Rngs):
        # torch stores W as (out, in); xavier is symmetric in the two fans, so (in, out) here.
        self.weight = nnx.Param(xavier_uniform(rngs.params(), (fan_in, fan_out)))
        bound = 1.0 / np.sqrt(fan_in)
        self.bias = nnx.Param(jax.random.uniform(rngs.params(), (fan_out,), jnp.float32, -bound, bound))

    def __call__(self, x: jax.Array) -> jax.Array:
        return dense(x, self.weight[...]) + self.bias[...]


@config_class
class SLMRecConfig:
    """Attributes:
    embedding_size: d (the reference's ``recdim``, 64); the second FAC stage projects to d // 2.
    n_layers: LightGCN layers (``layer_num``, 3); each branch is the mean of layers 0..n_layers.
    temp: temperature of the main in-batch InfoNCE (0.2).
    ssl_temp: temperature of the FAC losses; grid {0.1, 0.2, 0.5, 1.0}. The reference has
      no scalar default; the default is the grid's first value.
    ssl_alpha: weight of the FAC loss; grid {0.01, 0.05, 0.1, 0.5, 1.0}; default = first value.
    stale_eval: rank with the representation cached by the last training forward
      (True, the reference) or recompute it with the current parameters (False).
    image_modality, text_modality: the dataset modalities playing the reference's image
      (v) and text (t) roles. When the named image modality is absent and the dataset has
      exactly one modality besides the text one (e.g. MovieLens' "meta"), that one is used
      with a warning; otherwise a missing role is an error naming what the dataset has.
    """

    embedding_size: Annotated[int, Range(ge=2)] = 64
    n_layers: NonNegativeInt = 3
    temp: PositiveFloat = 0.2
    ssl_temp: PositiveFloat = 0.1
    ssl_alpha: NonNegativeFloat = 0.01
    stale_eval: bool = True
    image_modality: str = "image"
    text_modality: str = "text"

    constraints = modality_role_constraints("SLMRec", both=True)


@register
class SLMRec(Recommender):
    """SLMRec with the FAC task; see the module docstring."""

    name = "slmrec"
    config_class = SLMRecConfig
    uses_negatives = True  # row 2 is ignored, as in the reference
    multimodal = True

    def __init__(self, dataset, config: SLMRecConfig, *, rngs: nnx.Rngs):
        image_name, text_name = image_and_text_roles(dataset, config.image_modality, config.text_modality, "SLMRec")
        self.config = config
        self.num_users, self.num_items = dataset.num_users, dataset.num_items
        d = config.embedding_size
        image = rownorm_np(dataset.features[image_name])
        text = rownorm_np(dataset.features[text_name])
        self.image = Constant(jnp.asarray(image))
        self.text = Constant(jnp.asarray(text))
        self.user_embedding = nnx.Param(xavier_uniform(rngs.params(), (self.num_users, d)))
        self.item_embedding = nnx.Param(xavier_uniform(rngs.params(), (self.num_items, d)))
        self.v_dense = TorchLinear(image.shape[1], d, rngs=rngs)
        self.t_dense = TorchLinear(text.shape[1], d, rngs=rngs)
        self.user_fusion = TorchLinear(3 * d, d, rngs=rngs)
        self.item_fusion = TorchLinear(3 * d, d, rngs=rngs)
        self.g_i_iv = TorchLinear(d, d, rngs=rngs)
        self.g_v_iv = TorchLinear(d, d, rngs=rngs)
        self.g_iv_iva = TorchLinear(d, d, rngs=rngs)
        self.g_iva_ivat = TorchLinear(d, d // 2, rngs=rngs)
        self.g_t_ivat = TorchLinear(d, d // 2, rngs=rngs)
        adj = normalized_bipartite_adjacency(dataset.train, self.num_users, self.num_items, eps=A_PRE_EPS)
        self.adj_rows, self.adj_cols, self.adj_values = Constant(adj.rows), Constant(adj.cols), Constant(adj.values)
        # The entries by column: the backward pass of the propagation runs the row-sorted kernel.
        self.adj_order = Constant(jnp.asarray(column_order(adj.cols)))
        self.cached_users = TrainingCache(jnp.zeros((self.num_users, d), jnp.float32))
        self.cached_items = TrainingCache(jnp.zeros((self.num_items, d), jnp.float32))

    def _branches(self) -> tuple[jax.Array, jax.Array]:
        """The three LightGCN outputs side by side: users (U, 3d) and items (I, 3d), blocks [id | image | text]."""
        adj = CooAdjacency(self.adj_rows[...], self.adj_cols[...], self.adj_values[...], self.num_users + self.num_items)
        e_u = self.user_embedding[...]
        items = jnp.concatenate([self.item_embedding[...], self.v_dense(self.image[...]), self.t_dense(self.text[...])], axis=1)
        x = jnp.concatenate([jnp.tile(e_u, (1, 3)), items], axis=0)
        out = layer_mean_propagate(adj, x, self.config.n_layers, column_order=self.adj_order[...])
        return out[: self.num_users], out[self.num_users :]

    def _forward(self) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Returns (fused users (U, d), fused items (I, d), item branches (I, 3d))."""
        branch_users, branch_items = self._branches()
        return self.user_fusion(branch_users), self.item_fusion(branch_items), branch_items

    def _fac_loss(self, branch_items: jax.Array) -> jax.Array:
        d = self.config.embedding_size
        i_i, v_i, t_i = branch_items[:, :d], branch_items[:, d : 2 * d], branch_items[:, 2 * d :]
        tau = self.config.ssl_temp
        a = self.g_i_iv(i_i)
        b = self.g_v_iv(v_i)
        loss_v = in_batch_cross_entropy(pairwise_scores(a, b) / tau)
        c = self.g_iva_ivat(self.g_iv_iva(a))
        e = self.g_t_ivat(t_i)
        loss_t = in_batch_cross_entropy(pairwise_scores(c, e) / tau)
        return loss_v + loss_t

    def loss(self, batch, key):
        users, positives = batch[0], batch[1]
        all_users, all_items, branch_items = self._forward()
        self.cached_users[...] = jax.lax.stop_gradient(all_users)
        self.cached_items[...] = jax.lax.stop_gradient(all_items)
        u = rownorm(all_users[users])
        p = rownorm(all_items[positives])
        main = in_batch_cross_entropy(pairwise_scores(u, p) / self.config.temp)
        return main + self.config.ssl_alpha * self._fac_loss(branch_items[positives])

    def ranks_with_training_cache(self) -> bool:
        return bool(self.config.stale_eval)

    def scores(self, users):
        # The reference applies a sigmoid here; it is monotone, so it is left out (module docstring).
        if self.config.stale_eval:
            return self.cached_users[...][users] @ self.cached_items[...].T
        all_users, all_items, _ = self._forward()
        return all_users[users] @ all_items.T
