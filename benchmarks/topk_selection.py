"""``top_k_positions`` against ``lax.top_k`` on the CPU: the selection alone, then DA-MRS's training step.

Two parts, each timed round-robin in one process (every variant compiled first, then one call
of each in turn, ``--repeats`` rounds; medians reported as ratios to ``lax.top_k``):

1. **Selection**: the top ``--k`` positions of ``(3, --rows, --items)`` float32 rows (DA-MRS's
   pseudo-label shape on the Baby catalogue: three modalities, up to 4,096 distinct items of a
   batch, 7,050 items), by ``lax.top_k`` and by :func:`~mirrorgrad_jax.graph.top_k_positions`
   with each of ``--blocks``. Twice: on an array already in memory (a program input, as the
   output of a scatter), and on ``x + 1`` computed in the same program, the case where XLA may
   fuse the producer into each of the blocked path's readers. Every variant's positions are
   checked equal to ``lax.top_k``'s.
2. **DA-MRS step** (unless ``--parts selection``): ``value_and_grad`` of DA-MRS's loss on one
   batch of 2,048 pairs of the Baby graph (``--graph``, with ``epoch_time.py``'s random
   features), with its two pseudo-label selections both by ``lax.top_k`` (before), as shipped
   (the first by ``lax.top_k``, the second by ``top_k_positions``), and both by
   ``top_k_positions``. The losses and gradients are checked bit-equal.

Pause other work on the machine while it runs: the ratios are only as good as the quiet.

Usage: python benchmarks/topk_selection.py [--parts selection,damrs] [--rows 4096] [--items 7050]
       [--k 10] [--blocks 8,16,32] [--repeats 8] [--graph DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import statistics

from reporting import DEFAULT_GRAPH, baby_dataset, command_as_run, emit, load_note, markdown_table, report_header, time_round_robin

PARTS = ("selection", "damrs")


def _ratio_rows(timed: dict, base: str) -> list[list[str]]:
    reference = statistics.median(timed[base][0])
    return [[name, f"{statistics.median(times) * 1e3:.1f}", f"{statistics.median(times) / reference:.2f}", str(len(times))] for name, (times, _) in timed.items()]


def selection(rows: int, items: int, k: int, blocks: list[int], repeats: int) -> list[str]:
    """Part 1's two tables (in memory, fused producer) as markdown lines."""
    import jax
    import numpy as np

    from mirrorgrad_jax.graph import top_k_positions

    x = jax.nn.softmax(jax.random.normal(jax.random.PRNGKey(0), (3, rows, items)), axis=-1)
    lines = []
    for label, prepare in (("an array in memory (a program input)", lambda a: a), ("x + 1 computed in the same program", lambda a: a + 1.0)):
        fns = {"lax.top_k": lambda a, p=prepare: jax.lax.top_k(p(a), k)[1]}
        for block in blocks:
            fns[f"top_k_positions, blocks of {block}"] = lambda a, p=prepare, b=block: top_k_positions(p(a), k, block=b)
        timed = time_round_robin(fns, (x,), repeats)
        want = timed["lax.top_k"][1]
        for name, (_, got) in timed.items():
            if not np.array_equal(got, want):
                raise AssertionError(f"{name} differs from lax.top_k")
        lines += [f"### Selection on {label}", ""]
        lines += markdown_table(["variant", "median ms", "/ lax.top_k", "samples"], _ratio_rows(timed, "lax.top_k"))
        lines.append("")
    return lines


def damrs_step(graph: str, repeats: int) -> list[str]:
    """Part 2's table as markdown lines."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    import mirrorgrad_jax.models.damrs as damrs_module
    from mirrorgrad_jax.graph import top_k_positions
    from mirrorgrad_jax.models import build_config, get_model

    dataset = baby_dataset(graph)
    cls = get_model("damrs")
    model = cls(dataset, build_config(cls, {}), rngs=nnx.Rngs(params=0))
    rng = np.random.default_rng(0)
    picked = rng.choice(len(dataset.train), min(2048, len(dataset.train)), replace=False)
    negatives = rng.integers(0, dataset.num_items, len(picked))
    batch = jnp.asarray(np.stack([dataset.train[picked, 0], dataset.train[picked, 1], negatives]))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def selections(first, second):
        def pseudo_labels(self, own, other_a, other_b):
            k = self.config.pseudo_positives
            mm = first(other_a + other_b + own + own, k)
            return mm, second(jnp.put_along_axis(own, mm, 0.0, axis=-1, inplace=False), k)

        return pseudo_labels

    def lax_top_k(x, k):
        return jax.lax.top_k(x, k)[1]

    shipped = damrs_module.DAMRS.pseudo_labels
    variants = {"both lax.top_k (before)": selections(lax_top_k, lax_top_k), "as shipped": shipped, "both top_k_positions": selections(top_k_positions, top_k_positions)}
    fns = {}
    for name, labels in variants.items():

        def step(p, b, labels=labels):
            # Each variant is traced by time_round_robin's first call, with its own method in place.
            damrs_module.DAMRS.pseudo_labels = labels
            try:
                return jax.value_and_grad(lambda q: nnx.merge(graphdef, q, rest).loss(b, jax.random.PRNGKey(0)))(p)
            finally:
                damrs_module.DAMRS.pseudo_labels = shipped

        fns[name] = step
    timed = time_round_robin(fns, (params, batch), repeats)
    want = jax.tree.leaves(timed["both lax.top_k (before)"][1])
    for name, (_, got) in timed.items():
        if not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(got), want)):
            raise AssertionError(f"DA-MRS's loss or gradients differ with {name}")
    lines = ["### DA-MRS: value_and_grad of the loss on one Baby batch", ""]
    lines += markdown_table(["selections", "median ms", "/ before", "samples"], _ratio_rows(timed, "both lax.top_k (before)"))
    lines.append("")
    lines.append(f"Batch: {len(picked)} pairs of the Baby graph, {dataset.num_users} users x {dataset.num_items} items; losses and gradients bit-equal across the three.")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--rows", type=int, default=4096, help="rows per modality in the selection part")
    parser.add_argument("--items", type=int, default=7050, help="row length (items) in the selection part")
    parser.add_argument("--k", type=int, default=10, help="positions per row (DA-MRS's pseudo_positives)")
    parser.add_argument("--blocks", default="8,16,32", help="block sizes of top_k_positions to time")
    parser.add_argument("--repeats", type=int, default=8, help="timed rounds (each times every variant once)")
    parser.add_argument("--graph", default=DEFAULT_GRAPH, help="folder holding baby.inter (the DA-MRS part)")
    parser.add_argument("--out", default=None, help="append the markdown report here")
    args = parser.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        parser.error(f"--parts takes {', '.join(PARTS)}; got {args.parts!r}")
    try:
        blocks = [int(b) for b in args.blocks.split(",")]
    except ValueError:
        parser.error(f"--blocks takes comma-separated whole numbers; got {args.blocks!r}")
    if min(blocks) < 1 or args.rows < 1 or args.repeats < 1 or not 1 <= args.k <= args.items:
        parser.error("--blocks, --rows and --repeats must be >= 1, and --k between 1 and --items")
    if "damrs" in parts and not os.path.exists(os.path.join(args.graph, "baby.inter")):
        parser.error(f"the DA-MRS part needs the Baby graph: no baby.inter in {args.graph} (--graph, or --parts selection)")

    before = os.getloadavg()
    lines = []
    if "selection" in parts:
        lines += selection(args.rows, args.items, args.k, blocks, args.repeats)
    if "damrs" in parts:
        lines += damrs_step(args.graph, args.repeats)
    after = os.getloadavg()
    options = ["--parts", ",".join(parts), "--rows", str(args.rows), "--items", str(args.items), "--k", str(args.k)]
    options += ["--blocks", ",".join(map(str, blocks)), "--repeats", str(args.repeats)]
    if "damrs" in parts and os.path.abspath(args.graph) != os.path.abspath(DEFAULT_GRAPH):
        options += ["--graph", args.graph]
    head = ["## top_k_positions against lax.top_k", ""]
    head += report_header(command_as_run("topk_selection.py", options))
    head += [f"Noise: {load_note(before, after)}  ", f"Selection: top {args.k} of (3, {args.rows}, {args.items}) float32 softmax rows  ", ""]
    emit("\n".join(head + lines), args.out)


if __name__ == "__main__":
    main()
