"""The full user-item graph for ranking and a per-epoch edge sample of it for training.

FREEDOM and MMGCF (MMRec) hold the same pair of graphs: ``A_sym = D^-1/2 A D^-1/2`` over
the distinct train pairs, which ranking propagates on, and, drawn again before every
epoch, a degree-sensitive sample of ``kept_edge_count(E, dropout)`` of those edges,
re-normalised with the sample's own degrees, which training propagates on
(:func:`~mirrorgrad_jax.graph.sample_edges_degree_sensitive`). With ``dropout = 0`` the
training graph is the full one. The sample keeps its shapes from epoch to epoch, so the
jitted epoch compiles once, and it is an :class:`~mirrorgrad_jax.models.EpochSample`, so a
checkpoint keeps the one the run last trained on.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mirrorgrad_jax.graph import CooAdjacency, normalized_bipartite_adjacency, sample_edges_degree_sensitive
from mirrorgrad_jax.models.inputs import edges_to_sample
from mirrorgrad_jax.models.interface import Constant, EpochSample

__all__ = ["EdgeDropoutGraphs"]


class EdgeDropoutGraphs:
    """Mixin of a :class:`~mirrorgrad_jax.models.Recommender` whose ``config.dropout`` is
    the share of distinct train edges left out of each epoch's training graph.

    The model calls :meth:`init_edge_dropout_graphs` in its constructor; it then ranks on
    :meth:`full_adjacency` and trains on :meth:`masked_adjacency`, which :meth:`pre_epoch`
    redraws.
    """

    num_users: int
    num_items: int
    config: Any

    def init_edge_dropout_graphs(self, dataset: Any, model: str, rngs: nnx.Rngs) -> None:
        """Builds ``A_sym`` and draws the first training sample.

        The reference has no training graph before its first ``pre_epoch_processing``; one
        is drawn here, from a seed taken from ``rngs.params()``, so that the model is usable
        and has its final shapes straight after construction.

        Args:
          dataset: the :class:`~mirrorgrad_jax.data.RecDataset` whose train split makes the graphs.
          model: the model's name, for the error message.
          rngs: the constructor's random streams.

        Raises:
          ConfigError: when ``config.dropout`` keeps no edge at all.
        """
        full = normalized_bipartite_adjacency(dataset.train, dataset.num_users, dataset.num_items)
        self.full_rows, self.full_cols, self.full_values = (Constant(jnp.asarray(a)) for a in full[:3])
        pairs, self.num_kept_edges = edges_to_sample(dataset.train, self.config.dropout, model)
        self.train_pairs = Constant(jnp.asarray(pairs, jnp.int32))
        seed = int(jax.random.randint(rngs.params(), (), 0, np.iinfo(np.int32).max))
        self.pre_epoch(np.random.default_rng(seed))

    def pre_epoch(self, rng: np.random.Generator) -> None:
        """Draws this epoch's degree-sensitive edge sample, re-normalised (same shapes every epoch)."""
        if self.config.dropout <= 0.0:
            rows, cols, values = self.full_rows[...], self.full_cols[...], self.full_values[...]
        else:
            pairs = np.asarray(self.train_pairs[...])
            adj = sample_edges_degree_sensitive(pairs, self.num_users, self.num_items, self.num_kept_edges, rng)
            rows, cols, values = (jnp.asarray(a) for a in adj[:3])
        self.masked_rows, self.masked_cols, self.masked_values = EpochSample(rows), EpochSample(cols), EpochSample(values)

    def full_adjacency(self) -> CooAdjacency:
        """``A_sym`` over all distinct train pairs (ranking)."""
        return CooAdjacency(self.full_rows[...], self.full_cols[...], self.full_values[...], self.num_users + self.num_items)

    def masked_adjacency(self) -> CooAdjacency:
        """This epoch's sampled, re-normalised graph (training)."""
        return CooAdjacency(self.masked_rows[...], self.masked_cols[...], self.masked_values[...], self.num_users + self.num_items)
