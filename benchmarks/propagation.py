"""Graph propagation kernels on the CPU: which is fastest per shape, and which are bit-equal.

FREEDOM and BM3 spend much of an epoch in ``A @ X`` over edge lists and in its backward
pass. This times, at the shapes those models use, the candidate kernels for the forward
product and for the gradient with respect to ``X``, interleaved round-robin (one call of
each kernel in turn, ``--repeats`` rounds) so that a shared machine's load falls on all of
them alike, and checks each result bit for bit against the previous implementation
(gather + sorted ``segment_sum``; for kNN lists, gather + ``einsum``).

Shapes: the Baby graph's ``A_sym`` (26,495 nodes, 237,102 entries: BM3, FREEDOM's
evaluation, LightGCN), FREEDOM's per-epoch sampled graph (dropout 0.8: 47,420 entries,
1.8 per row, and 0.95: both under ``graph._CSR_MIN_ENTRIES_PER_ROW``, where ``propagate``
keeps the segment sum), FREEDOM's
frozen kNN lists (7,050 items x 20) and a small random bipartite graph (1,500 nodes),
where a dense matmul is an option. Features are 64 wide.

Usage: python benchmarks/propagation.py [--repeats 15] [--out benchmarks/results/propagation.md]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import sparse

from mirrorgrad_jax.graph import (
    CooAdjacency,
    combine_knn,
    kept_edge_count,
    knn_column_order,
    knn_item_graph,
    knn_propagate,
    normalized_bipartite_adjacency,
    propagate,
    sample_edges_degree_sensitive,
)

from reporting import DEFAULT_GRAPH, emit, load_note, markdown_row, markdown_table, report_header, time_round_robin

WIDTH = 64


def _previous(adj: CooAdjacency, x):
    """The implementation before this benchmark: gather, then a sorted segment sum."""
    messages = adj.values[:, None] * x[adj.cols]
    return jax.ops.segment_sum(messages, adj.rows, num_segments=adj.num_nodes, indices_are_sorted=True)


def adjacency_kernels(adj: CooAdjacency, dense_ok: bool) -> dict:
    """name -> (forward fn(x), backward fn(x, g) = A^T g via autodiff) for one adjacency."""
    n = adj.num_nodes
    rows, cols, values = (jnp.asarray(a) for a in adj[:3])
    a = CooAdjacency(rows, cols, values, n)
    indptr = jnp.searchsorted(rows, jnp.arange(n + 1, dtype=rows.dtype)).astype(cols.dtype)
    bcoo = sparse.BCOO((values, jnp.stack([rows, cols], 1)), shape=(n, n), indices_sorted=True)
    bcsr = sparse.BCSR((values, cols, indptr), shape=(n, n), indices_sorted=True)
    forward = {
        "gather + segment_sum, sorted (previous)": lambda x: _previous(a, x),
        "gather + segment_sum, unsorted": lambda x: jax.ops.segment_sum(values[:, None] * x[cols], rows, num_segments=n),
        "sparse.BCOO @ x": lambda x: bcoo @ x,
        "sparse.BCSR @ x (CSR kernel)": lambda x: bcsr @ x,
        "propagate (this project: CSR kernel above the threshold)": lambda x: propagate(a, x),
    }
    if dense_ok:
        dense = jnp.zeros((n, n), jnp.float32).at[rows, cols].add(values)
        forward["dense matmul"] = lambda x: dense @ x
    backward = {
        "autodiff of gather + segment_sum (previous)": lambda x, g: jax.vjp(lambda y: _previous(a, y), x)[1](g)[0],
        "autodiff of sparse.BCSR @ x": lambda x, g: jax.vjp(lambda y: bcsr @ y, x)[1](g)[0],
        "propagate, general (scatter-add)": lambda x, g: jax.vjp(lambda y: propagate(a, y), x)[1](g)[0],
        "propagate, symmetric=True (CSR kernel above the threshold)": lambda x, g: jax.vjp(lambda y: propagate(a, y, symmetric=True), x)[1](g)[0],
    }
    if dense_ok:
        backward["dense matmul"] = lambda x, g: jax.vjp(lambda y: dense @ y, x)[1](g)[0]
    return {"forward": forward, "backward": backward}


def knn_kernels(idx, val) -> dict:
    idx, val = jnp.asarray(idx), jnp.asarray(val)
    order = jnp.asarray(knn_column_order(idx))
    forward = {
        "gather + einsum (previous)": lambda x: knn_propagate(idx, val, x),
        "CSR kernel (column_order given)": lambda x: knn_propagate(idx, val, x, column_order=order),
    }
    backward = {
        "autodiff of gather + einsum (previous)": lambda x, g: jax.vjp(lambda y: knn_propagate(idx, val, y), x)[1](g)[0],
        "CSR kernel on the transposed lists": lambda x, g: jax.vjp(lambda y: knn_propagate(idx, val, y, column_order=order), x)[1](g)[0],
    }
    return {"forward": forward, "backward": backward}


def baby_shapes(graph: str) -> list[tuple[str, dict, int]]:
    from mirrorgrad_jax.data import load_mmrec

    g = load_mmrec(graph, verbose=False)
    full = normalized_bipartite_adjacency(g.train, g.num_users, g.num_items)
    pairs = np.unique(np.asarray(g.train), axis=0)
    sampled = sample_edges_degree_sensitive(pairs, g.num_users, g.num_items, kept_edge_count(len(pairs), 0.8), np.random.default_rng(0))
    sparse_sample = sample_edges_degree_sensitive(pairs, g.num_users, g.num_items, kept_edge_count(len(pairs), 0.95), np.random.default_rng(0))
    rng = np.random.default_rng(999)
    image = rng.random((g.num_items, 4096), dtype=np.float32)
    text = rng.standard_normal((g.num_items, 384), dtype=np.float32)
    idx, val = combine_knn([(knn_item_graph(image, 10), 0.1), (knn_item_graph(text, 10), 0.9)])
    return [
        (f"Baby A_sym ({full.num_nodes:,} nodes, {len(full.rows):,} entries)", adjacency_kernels(full, False), full.num_nodes),
        (f"Baby sampled graph, dropout 0.8 ({len(sampled.rows):,} entries, {len(sampled.rows) / sampled.num_nodes:.1f} per row: "
         "propagate keeps the segment sum)", adjacency_kernels(sampled, False), sampled.num_nodes),
        (f"Baby sampled graph, dropout 0.95 ({len(sparse_sample.rows):,} entries, {len(sparse_sample.rows) / sparse_sample.num_nodes:.2f} per row: "
         "propagate keeps the segment sum)", adjacency_kernels(sparse_sample, False), sparse_sample.num_nodes),
        (f"Baby kNN lists ({idx.shape[0]:,} x {idx.shape[1]})", knn_kernels(idx, val), idx.shape[0]),
    ]


def small_shape() -> tuple[str, dict, int]:
    rng = np.random.default_rng(0)
    users, items = 1000, 500
    train = np.stack([rng.integers(0, users, 8000), rng.integers(0, items, 8000)], 1)
    adj = normalized_bipartite_adjacency(train, users, items)
    return (f"small random A_sym ({adj.num_nodes:,} nodes, {len(adj.rows):,} entries)", adjacency_kernels(adj, True), adj.num_nodes)


def measure(shapes, repeats: int) -> list[str]:
    lines = []
    key = jax.random.key(0)
    for title, kernels, n in shapes:
        x = jax.random.normal(key, (n, WIDTH), jnp.float32)
        g = jax.random.normal(jax.random.fold_in(key, 1), (n, WIDTH), jnp.float32)
        lines += [f"### {title}", "", *markdown_table(("pass", "kernel", "median (ms)", "min (ms)", "vs previous (median)", "bit-equal to previous"))]
        for direction, args in (("forward", (x,)), ("backward", (x, g))):
            results = time_round_robin(kernels[direction], args, repeats)
            base_name = next(iter(results))
            base_times, base_out = results[base_name]
            for name, (times, out) in results.items():
                equal = bool(np.array_equal(out, base_out))
                diff = "" if equal else f" (max abs diff {np.max(np.abs(out - base_out)):.1e})"
                lines.append(markdown_row((
                    direction, name, f"{1e3 * statistics.median(times):.2f}", f"{1e3 * min(times):.2f}",
                    f"{statistics.median(base_times) / statistics.median(times):.1f}x", "yes" if equal else "no" + diff,
                )))  # fmt: skip
            print("\n".join(lines[-len(results):]), file=sys.stderr, flush=True)
        lines.append("")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--graph", default=DEFAULT_GRAPH, help="folder holding baby.inter")
    parser.add_argument("--out", default=None, help="append the markdown report here")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    shapes = []
    if os.path.exists(os.path.join(args.graph, "baby.inter")):
        shapes += baby_shapes(args.graph)
    else:
        print(f"the Baby graph is not at {args.graph}: timing the small graph only", file=sys.stderr)
    shapes.append(small_shape())
    lines = measure(shapes, args.repeats)
    load_after = os.getloadavg()
    header = [
        *report_header(f"python benchmarks/propagation.py --repeats {args.repeats}"),
        "Threads: XLA's CPU client, one per core  ",
        f"Noise: {load_note(load_before, load_after)} (a shared machine: "
        "compare kernels within one table, interleaved round-robin, not across runs)  ",
        f"Width {WIDTH}; forward = ``A @ x``; backward = the gradient with respect to ``x`` (``A^T g``).",
        "",
    ]
    emit("\n".join(header + lines), args.out)


if __name__ == "__main__":
    main()
