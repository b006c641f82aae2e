"""Graphs as flat edge arrays, built on the host and propagated inside ``jit``.

One module per kind of graph, each importing only :mod:`.coo`, :mod:`.propagation` and
:mod:`.torch_topk`:

* :mod:`.coo`: the :class:`CooAdjacency` type (rows, cols, values sorted by row);
* :mod:`.propagation`: :func:`propagate`, ``A @ x`` as one primitive with a CSR kernel on
  the CPU and its own autodiff rules;
* :mod:`.bipartite`: user-item adjacencies and PyG-style edge lists with their aggregations;
* :mod:`.edge_sampling`: the per-epoch degree-sensitive edge sample (FREEDOM, LayerGCN);
* :mod:`.knn`: item-item kNN neighbour lists (cosine, learnable, shrunk);
* :mod:`.user_graph`: the user-user co-occurrence graph (DualGNN, DRAGON);
* :mod:`.torch_topk`: ``torch.topk`` as torch's CPU kernel answers it, ties included, for
  graphs the reference's preprocessing built with it (imports nothing of the package);
* :mod:`.block_topk`: ``lax.top_k``'s positions through the blocks' maxima, faster on the
  CPU for long rows already in memory (imports nothing of the package).

Host-side builders take and return numpy arrays; everything used inside a training step
is a pure ``jax.numpy`` function. Every name is importable from this package.
"""

from mirrorgrad_jax.graph.bipartite import (
    bipartite_edges,
    edge_list_adjacency,
    normalized_bipartite_adjacency,
    segment_mean,
    segment_softmax,
    self_loop_row_normalized_adjacency,
    summed_bipartite_adjacency,
    symmetric_edge_norm,
)
from mirrorgrad_jax.graph.block_topk import top_k_positions
from mirrorgrad_jax.graph.coo import CooAdjacency
from mirrorgrad_jax.graph.edge_sampling import kept_edge_count, sample_edges_degree_sensitive
from mirrorgrad_jax.graph.knn import (
    combine_knn,
    knn_column_order,
    knn_item_graph,
    knn_propagate,
    knn_topk_cosine,
    knn_topk_shrink,
    learnable_knn_cosine,
    normalize_knn_values,
)
from mirrorgrad_jax.graph.propagation import column_order, layer_mean_propagate, propagate
from mirrorgrad_jax.graph.torch_topk import torch_cpu_topk, torch_cpu_topk_order, torch_cpu_topk_order_sparse, torch_cpu_topk_sparse
from mirrorgrad_jax.graph.user_graph import UserGraphTies, UserNeighbourLists, build_user_graph, pack_user_graph, sample_user_neighbours

__all__ = [
    "CooAdjacency",
    "UserGraphTies",
    "UserNeighbourLists",
    "bipartite_edges",
    "build_user_graph",
    "column_order",
    "combine_knn",
    "edge_list_adjacency",
    "kept_edge_count",
    "knn_column_order",
    "knn_item_graph",
    "knn_propagate",
    "knn_topk_cosine",
    "knn_topk_shrink",
    "layer_mean_propagate",
    "learnable_knn_cosine",
    "normalize_knn_values",
    "normalized_bipartite_adjacency",
    "pack_user_graph",
    "propagate",
    "sample_edges_degree_sensitive",
    "sample_user_neighbours",
    "segment_mean",
    "segment_softmax",
    "self_loop_row_normalized_adjacency",
    "summed_bipartite_adjacency",
    "symmetric_edge_norm",
    "top_k_positions",
    "torch_cpu_topk",
    "torch_cpu_topk_order",
    "torch_cpu_topk_order_sparse",
    "torch_cpu_topk_sparse",
]
