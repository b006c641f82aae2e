"""LightGCN (He et al., 2020): linear propagation on the normalised user-item graph."""

from __future__ import annotations


import jax.numpy as jnp
from flax import nnx

from mirrorgrad_jax.config import NonNegativeFloat, NonNegativeInt, PositiveInt, config_class
from mirrorgrad_jax.graph import CooAdjacency, layer_mean_propagate, normalized_bipartite_adjacency
from mirrorgrad_jax.models.initializers import xavier_uniform
from mirrorgrad_jax.models.interface import Constant, Recommender
from mirrorgrad_jax.models.losses import bpr_log_likelihood, frobenius
from mirrorgrad_jax.models.registry import register


@config_class
class LightGCNConfig:
    """Attributes:
    embedding_size: embedding dimension (64).
    n_layers: propagation layers; the output is the mean of layers 0..n_layers.
    reg_weight: weight of EmbLoss on the batch's ego (layer-0) embeddings.
    """

    embedding_size: PositiveInt = 64
    n_layers: NonNegativeInt = 2
    reg_weight: NonNegativeFloat = 1e-4


@register
class LightGCN(Recommender):
    """Embeddings propagated on ``D^-1/2 A D^-1/2`` (train pairs), averaged over layers."""

    name = "lightgcn"
    config_class = LightGCNConfig

    def __init__(self, dataset, config: LightGCNConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.num_users, self.num_items = dataset.num_users, dataset.num_items
        d = config.embedding_size
        self.users = nnx.Param(xavier_uniform(rngs.params(), (dataset.num_users, d)))
        self.items = nnx.Param(xavier_uniform(rngs.params(), (dataset.num_items, d)))
        adj = normalized_bipartite_adjacency(dataset.train, dataset.num_users, dataset.num_items)
        self.adj_rows, self.adj_cols, self.adj_values = Constant(adj.rows), Constant(adj.cols), Constant(adj.values)

    def _propagated(self):
        adj = CooAdjacency(self.adj_rows[...], self.adj_cols[...], self.adj_values[...], self.num_users + self.num_items)
        x = jnp.concatenate([self.users[...], self.items[...]])
        # A_sym equals its transpose entry by entry: the backward pass reuses the forward kernel.
        out = layer_mean_propagate(adj, x, self.config.n_layers, symmetric=True)
        return out[: self.num_users], out[self.num_users :]

    def loss(self, batch, key):
        users, items = self._propagated()
        u, pos, neg = users[batch[0]], items[batch[1]], items[batch[2]]
        bpr = -bpr_log_likelihood(jnp.sum(u * pos, -1), jnp.sum(u * neg, -1))
        ego = (self.users[...][batch[0]], self.items[...][batch[1]], self.items[...][batch[2]])
        reg = sum(frobenius(e) for e in ego) / batch.shape[1]
        return bpr + self.config.reg_weight * reg

    def scores(self, users):
        all_users, items = self._propagated()
        return all_users[users] @ items.T
