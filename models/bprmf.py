"""BPR matrix factorisation (Rendle et al., 2009): the non-multimodal baseline."""

from __future__ import annotations


import jax.numpy as jnp
from flax import nnx

from mirrorgrad_jax.config import NonNegativeFloat, PositiveInt, config_class
from mirrorgrad_jax.models.initializers import xavier_uniform
from mirrorgrad_jax.models.interface import Recommender
from mirrorgrad_jax.models.losses import bpr_log_likelihood, frobenius
from mirrorgrad_jax.models.registry import register


@config_class
class BPRMFConfig:
    """Attributes:
    embedding_size: dimension of user and item embeddings (64 in MMRec).
    reg_weight: weight of MMRec's EmbLoss, the non-squared norms of the batch's
      embeddings divided by the batch size.
    """

    embedding_size: PositiveInt = 64
    reg_weight: NonNegativeFloat = 1e-4


@register
class BPRMF(Recommender):
    """Score = <user embedding, item embedding>; loss = BPR + reg * EmbLoss."""

    name = "bprmf"
    config_class = BPRMFConfig

    def __init__(self, dataset, config: BPRMFConfig, *, rngs: nnx.Rngs):
        self.config = config
        d = config.embedding_size
        self.users = nnx.Param(xavier_uniform(rngs.params(), (dataset.num_users, d)))
        self.items = nnx.Param(xavier_uniform(rngs.params(), (dataset.num_items, d)))

    def loss(self, batch, key):
        u, pos, neg = self.users[...][batch[0]], self.items[...][batch[1]], self.items[...][batch[2]]
        bpr = -bpr_log_likelihood(jnp.sum(u * pos, -1), jnp.sum(u * neg, -1))
        reg = (frobenius(u) + frobenius(pos) + frobenius(neg)) / batch.shape[1]
        return bpr + self.config.reg_weight * reg

    def scores(self, users):
        return self.users[...][users] @ self.items[...].T
