"""The weight gradient of a feature projection: autodiff's ``x^T g`` against ``dense``'s ``(g^T x)^T``.

Every multimodal model projects raw feature rows through a Linear layer, ``x @ w`` with
``x`` (n, F) and ``w`` (F, d). Autodiff writes the gradient of ``w`` as a product that
contracts the long first axis of both operands; :func:`mirrorgrad_jax.models.dense`
computes the same numbers as ``(g^T x)^T``. This times, at the shapes the models use on
the Baby-scale data, the gradient of ``w`` alone and ``jax.grad`` through the projection
(both gradients when the table itself trains, as in FREEDOM, MGCN and LATTICE; XLA drops
the unused forward product), interleaved round-robin, and checks the gradients bit for bit.

Shapes (Baby: 7,050 items, 19,445 users, image 4,096-d, text 384-d, d = 64):

* all items' image / text rows (SLMRec, MGCN, LATTICE, DualGNN, DRAGON, GRCN, MVGAE);
* a batch's 4,096 gathered image rows (FREEDOM, BM3) and VBPR's 3,072 x 4,480 block;
* a 192-wide fusion layer over all 26,495 nodes (SLMRec) and a 64-wide one, narrower
  than ``DENSE_MIN_WIDTH``, where ``dense`` keeps the plain product (a control);
* in-batch logits ``a @ b^T`` of 2,048 rows (the contrastive losses of SLMRec and MGCN)
  through :func:`~mirrorgrad_jax.models.pairwise_scores`, whose gradient of ``b``
  (``g^T a``) is the same transposed-operand product.

Usage: python benchmarks/dense_backward.py [--repeats 12] [--out benchmarks/results/dense_backward.md]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import jax
import jax.numpy as jnp
import numpy as np

from mirrorgrad_jax.models import dense, pairwise_scores
from mirrorgrad_jax.models.kernels import DENSE_MIN_WIDTH

from reporting import emit, load_note, markdown_row, markdown_table, report_header, time_round_robin

# (label, rows, input width F, output width d, whether the rows themselves train)
SHAPES = [
    ("all items' image rows (SLMRec, DualGNN, GRCN, MVGAE)", 7050, 4096, 64, False),
    ("all items' image rows, table trains (MGCN, LATTICE)", 7050, 4096, 64, True),
    ("all items' text rows", 7050, 384, 64, False),
    ("a batch's image rows, table trains (FREEDOM, BM3)", 4096, 4096, 64, True),
    ("VBPR's distinct-item block", 3072, 4480, 64, False),
    ("fusion layer over all nodes (SLMRec)", 26495, 192, 64, False),
    ("64-wide layer over all nodes (control: plain product)", 26495, 64, 64, False),
]


def kernels(trains_rows: bool) -> dict:
    """name -> fn(x, w, c) returning the gradients of ``sum((x @ w) * c)``."""
    argnums = (0, 1) if trains_rows else 1

    def autodiff(x, w, c):
        return jax.grad(lambda x, w: jnp.sum((x @ w) * c), argnums=argnums)(x, w)

    def with_dense(x, w, c):
        return jax.grad(lambda x, w: jnp.sum(dense(x, w) * c), argnums=argnums)(x, w)

    def weight_only_autodiff(x, w, c):
        return x.T @ c

    def weight_only_dense(x, w, c):
        return jax.lax.optimization_barrier(c.T @ x).T

    return {
        "autodiff x^T g (gradient of w alone)": weight_only_autodiff,
        "dense (g^T x)^T (gradient of w alone)": weight_only_dense,
        "autodiff, jax.grad through x @ w": autodiff,
        "dense, jax.grad through dense(x, w)": with_dense,
    }


# In-batch logits a @ b^T (B x B) of the contrastive losses (SLMRec's three, MGCN's two): (label, B, d)
LOGIT_SHAPES = [("in-batch logits, FAC heads (SLMRec)", 2048, 32), ("in-batch logits, 64-wide rows (SLMRec, MGCN)", 2048, 64)]


def logit_kernels() -> dict:
    """name -> fn(a, b, c) returning the gradients of ``sum((a @ b^T) * c)`` with respect to a and b."""

    def autodiff(a, b, c):
        return jax.grad(lambda a, b: jnp.sum((a @ b.T) * c), argnums=(0, 1))(a, b)

    def with_pairwise(a, b, c):
        return jax.grad(lambda a, b: jnp.sum(pairwise_scores(a, b) * c), argnums=(0, 1))(a, b)

    return {"autodiff, jax.grad through a @ b.T": autodiff, "pairwise_scores, jax.grad through it": with_pairwise}


def _rows(label: str, shape: str, results: dict) -> list[str]:
    """Table rows of timed kernels, each against the first one (autodiff's): speed and bit-equality."""
    base_times, base_out = next(iter(results.values()))
    rows = []
    for name, (times, out) in results.items():
        equal = all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(out), jax.tree.leaves(base_out)))
        rows.append(markdown_row((
            label, shape, name, f"{1e3 * statistics.median(times):.1f}", f"{1e3 * min(times):.1f}",
            f"{statistics.median(base_times) / statistics.median(times):.2f}x", "yes" if equal else "NO",
        )))  # fmt: skip
    return rows


def measure(repeats: int) -> list[str]:
    rng = np.random.default_rng(0)
    lines = markdown_table(
        ("shape", "rows x F -> d", "kernel", "median (ms)", "min (ms)", "autodiff / this (median)", "gradients bit-equal to autodiff")
    )
    for label, n, f, d, trains_rows in SHAPES:
        x = jnp.asarray(rng.random((n, f), dtype=np.float32))
        w = jnp.asarray(rng.standard_normal((f, d), dtype=np.float32) / np.sqrt(f))
        c = jnp.asarray(rng.standard_normal((n, d), dtype=np.float32))
        results = time_round_robin(kernels(trains_rows), (x, w, c), repeats)
        names = list(results)
        for pair in ((names[0], names[1]), (names[2], names[3])):
            lines += _rows(label, f"{n} x {f} -> {d}", {name: results[name] for name in pair})
        print("\n".join(lines[-4:]), file=sys.stderr, flush=True)
    for label, n, d in LOGIT_SHAPES:
        a, b = (jnp.asarray(rng.standard_normal((n, d), dtype=np.float32)) for _ in range(2))
        c = jnp.asarray(rng.standard_normal((n, n), dtype=np.float32))
        lines += _rows(label, f"{n} x {d} against {n} x {d}", time_round_robin(logit_kernels(), (a, b, c), repeats))
        print("\n".join(lines[-2:]), file=sys.stderr, flush=True)
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--out", default=None, help="append the markdown report here")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    lines = measure(args.repeats)
    load_after = os.getloadavg()
    header = [
        *report_header(f"python benchmarks/dense_backward.py --repeats {args.repeats}"),
        f"Noise: {load_note(load_before, load_after)} (kernels interleaved round-robin; compare within one shape)  ",
        f"``dense`` takes the plain product below an input width of {DENSE_MIN_WIDTH}; the loss is ``sum((x @ w) * c)`` "
        "with a random ``c``, so the backward pass receives ``c`` as its ``g``.",
        "",
    ]
    emit("\n".join(header + lines), args.out)


if __name__ == "__main__":
    main()
