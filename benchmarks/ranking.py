"""Where a full-ranking evaluation block spends its time, and the alternatives, on the CPU.

One block of the Baby evaluation: 4,096 users x 7,050 items, 64-d (or VBPR's 128-d) user
and item vectors, each user's train items masked (up to 100 per user, padded), the top 50
ranked, the targets marked. Timed one call of each variant in turn, ``--repeats`` rounds
(a shared machine's load falls on all alike); wall and process CPU time (all threads).

Parts: the score matmul alone; + the mask (scatter of the train items); + ``lax.top_k``;
the whole block as before this benchmark (hits from a (B, I) label matrix) and as now
(hits from comparing the 50 ranked ids with the targets). Variants of the top-k: exact
two-level selections (chunk maxima, then a top-k over the best chunks), and the block
split in two independent halves (two chains XLA may run on two cores). Every variant's
ranked ids and hits are checked against ``lax.top_k`` on the masked scores.

Second part, with the real models on the Baby graph (random features, untrained
parameters; ``--models``): one full validation pass of :class:`RankingEvaluator` as it was
(one jitted call per block, each recomputing the model's forward pass) and as it is now
(one program looping over evenly sized blocks, the forward pass hoisted out of the loop
by XLA), with the ranked lists compared.

Third part (``--splits``): what the trainer runs after every epoch, the validation AND test
ranking with the same parameters, as two :class:`RankingEvaluator` programs (as before
:class:`~mirrorgrad_jax.evaluation.SplitEvaluators`) and as one program holding both
splits: the first call of each (compilation included, in a fresh jit) and then the
steady-state pass, timed in turn, with both splits' metrics compared for equality.

Usage: python benchmarks/ranking.py [--repeats 10] [--models vbpr,bm3,freedom] [--out benchmarks/results/ranking.md]
       python benchmarks/ranking.py --splits --models freedom,lgmrec,smore --repeats 6
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from mirrorgrad_jax.evaluation import MASK_SCORE, masked_top_k_hits

from reporting import DEFAULT_GRAPH, baby_dataset, emit, load_note, markdown_row, markdown_table, report_header

BLOCK, ITEMS, K, TRAIN_WIDTH, TARGET_WIDTH = 4096, 7050, 50, 100, 13


def previous_block(u, items, train, targets):
    """The block before this benchmark: label matrix scattered, then gathered at the ranks."""
    scores = u @ items.T
    rows = jnp.arange(scores.shape[0])[:, None]
    masked = scores.at[rows, train].set(jnp.asarray(MASK_SCORE, scores.dtype), mode="drop")
    _, top = jax.lax.top_k(masked, K)
    labels = jnp.zeros(scores.shape, jnp.bool_).at[rows, targets].set(True, mode="drop")
    return top, jnp.take_along_axis(labels, top, axis=1)


def current_block(u, items, train, targets):
    return masked_top_k_hits(u @ items.T, train, targets, K)


def chunked_top_k(x, k, width):
    """Exact top-k: the k best chunk maxima hold every top-k element (ties to the lower id)."""
    b, n = x.shape
    c = n // width
    maxima = x[:, : c * width].reshape(b, c, width).max(-1)
    if c * width < n:
        maxima = jnp.concatenate([maxima, x[:, c * width :].max(-1, keepdims=True)], 1)
    _, chunks = jax.lax.top_k(maxima, min(k, maxima.shape[1]))
    chunks = jnp.sort(chunks, -1)  # candidates in id order keep lax.top_k's tie-break
    ids = (chunks[:, :, None] * width + jnp.arange(width)).reshape(b, -1)
    candidates = jnp.where(ids < n, jnp.take_along_axis(x, jnp.minimum(ids, n - 1), axis=1), -jnp.inf)
    values, pos = jax.lax.top_k(candidates, k)
    return values, jnp.take_along_axis(ids, pos, 1)


def chunked_block(width):
    def block(u, items, train, targets):
        scores = u @ items.T
        rows = jnp.arange(scores.shape[0])[:, None]
        masked = scores.at[rows, train].set(jnp.asarray(MASK_SCORE, scores.dtype), mode="drop")
        _, top = chunked_top_k(masked, K, width)
        return top, jnp.any(top[:, :, None] == targets[:, None, :], -1)

    return block


def halves_block(u, items, train, targets):
    half = u.shape[0] // 2
    outs = [current_block(u[s], items, train[s], targets[s]) for s in (slice(0, half), slice(half, None))]
    return jnp.concatenate([o[0] for o in outs]), jnp.concatenate([o[1] for o in outs])


def parts(u, items, train, targets):
    rows = jnp.arange(u.shape[0])[:, None]
    matmul = lambda u, it, tr, tg: u @ it.T
    mask = lambda u, it, tr, tg: (u @ it.T).at[rows, tr].set(MASK_SCORE, mode="drop")
    topk = lambda u, it, tr, tg: jax.lax.top_k((u @ it.T).at[rows, tr].set(MASK_SCORE, mode="drop"), K)
    return {"score matmul": matmul, "matmul + mask": mask, "matmul + mask + top_k": topk}


def time_in_turn(variants: dict, repeats: int) -> tuple[dict, dict]:
    """Wall and process-CPU seconds of each variant, ``repeats`` rounds calling each in turn.

    In turn, so a shared machine's changing load falls on every variant alike. Returns
    ``(wall, cpu)``: name -> the list of its times.
    """
    wall: dict = {name: [] for name in variants}
    cpu: dict = {name: [] for name in variants}
    for _ in range(repeats):
        for name, call in variants.items():
            c, t = time.process_time(), time.perf_counter()
            call()
            wall[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
    return wall, cpu


def run(width: int, repeats: int) -> list[str]:
    rng = np.random.default_rng(0)
    u = jnp.asarray(rng.standard_normal((BLOCK, width), dtype=np.float32))
    items = jnp.asarray(rng.standard_normal((ITEMS, width), dtype=np.float32))
    lengths = rng.integers(1, TRAIN_WIDTH, BLOCK)
    train = np.full((BLOCK, TRAIN_WIDTH), ITEMS, np.int32)
    targets = np.full((BLOCK, TARGET_WIDTH), ITEMS, np.int32)
    for r in range(BLOCK):
        picked = rng.choice(ITEMS, lengths[r] + 3, replace=False)
        train[r, : lengths[r]] = picked[: lengths[r]]
        targets[r, :3] = picked[lengths[r] :]
    args = (u, items, jnp.asarray(train), jnp.asarray(targets))
    variants = {**parts(*args), "block, previous (label matrix)": previous_block, "block, now (hits by comparison)": current_block}
    variants.update({f"block, chunked top-k (width {w})": chunked_block(w) for w in (15, 30, 50)})
    variants["block, two independent halves"] = halves_block
    jitted = {name: jax.jit(fn) for name, fn in variants.items()}
    outs = {name: jax.block_until_ready(fn(*args)) for name, fn in jitted.items()}
    ref_top, ref_hits = (np.asarray(a) for a in outs["block, previous (label matrix)"])
    wall, cpu = time_in_turn({name: (lambda fn=fn: jax.block_until_ready(fn(*args))) for name, fn in jitted.items()}, repeats)
    lines = [
        f"### {BLOCK:,} users x {ITEMS:,} items, {width}-d vectors, top {K}",
        "",
        *markdown_table(("what", "wall median (ms)", "wall min (ms)", "CPU median (ms)", "same ranks and hits")),
    ]
    for name in jitted:
        out = outs[name]
        same = "" if name in parts(*args) else ("yes" if np.array_equal(np.asarray(out[0]), ref_top) and np.array_equal(np.asarray(out[1]), ref_hits) else "NO")
        lines.append(markdown_row((
            name, f"{1e3 * statistics.median(wall[name]):.1f}", f"{1e3 * min(wall[name]):.1f}", f"{1e3 * statistics.median(cpu[name]):.1f}", same,
        )))  # fmt: skip
    return lines + [""]


def previous_evaluator_pass(evaluator, scores_fn, state, block: int):
    """The evaluator before this benchmark: blocks of ``block`` users, one jitted call each."""
    users = evaluator.user_ids
    n = users.size
    padded = np.full(-(-n // block) * block, users[0], np.int64)
    padded[:n] = users
    fn = jax.jit(lambda state, u: jax.lax.top_k(scores_fn(state, u), K)[1])
    outs = [fn(state, jnp.asarray(padded[i : i + block], jnp.int32)) for i in range(0, padded.size, block)]
    return np.concatenate(jax.device_get(outs))[:n]


def untrained_scorer(name: str, dataset):
    """``(scores_fn, state)`` of registered model ``name`` built untrained (seed 999) on ``dataset``."""
    from flax import nnx

    from mirrorgrad_jax.models import build_config, get_model

    cls = get_model(name)
    model = cls(dataset, build_config(cls, {}), rngs=nnx.Rngs(params=999))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def scores_fn(state, users):
        return nnx.merge(graphdef, *state, copy=True).scores(users)

    return scores_fn, (params, rest)


def run_models(models: list[str], repeats: int, graph: str) -> list[str]:
    from mirrorgrad_jax.evaluation import RankingEvaluator

    dataset = baby_dataset(graph)
    # No train items masked here: the comparison is about the forward pass per block.
    evaluator = RankingEvaluator(dataset.num_items, np.zeros((0, 2), np.int64), dataset.valid)
    lines = [
        f"### One validation pass, {evaluator.num_users:,} users, real models (Baby graph, random features)",
        "",
        *markdown_table((
            "model", "per-block calls, 4,096 users (wall / CPU, s)",
            f"one looping program, blocks of {evaluator.user_block:,} (wall / CPU, s)", "same top-50",
        )),  # fmt: skip
    ]
    for name in models:
        scores_fn, state = untrained_scorer(name, dataset)
        variants = {
            "previous": lambda: previous_evaluator_pass(evaluator, scores_fn, state, 4096),
            "now": lambda: evaluator.top_k(scores_fn, state),
        }
        outs = {k: f() for k, f in variants.items()}
        wall, cpu = time_in_turn(variants, repeats)
        med = {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in variants}
        lines.append(markdown_row((
            name, f"{med['previous'][0]:.2f} / {med['previous'][1]:.2f}", f"{med['now'][0]:.2f} / {med['now'][1]:.2f}",
            "yes" if np.array_equal(outs["previous"], outs["now"]) else "NO",
        )))  # fmt: skip
    return lines + [""]


def run_splits(models: list[str], repeats: int, graph: str) -> list[str]:
    """Valid + test after an epoch: two evaluator programs against one :class:`SplitEvaluators` program."""
    from mirrorgrad_jax.evaluation import RankingEvaluator, SplitEvaluators

    dataset = baby_dataset(graph)
    lines = [
        f"### Valid and test after an epoch: two programs or one (Baby graph, {dataset.num_items:,} items, random features)",
        "",
        *markdown_table((
            "model", "first call, two programs (s)", "first call, one program (s)",
            "pass, two programs (wall / CPU, s)", "pass, one program (wall / CPU, s)", "one / two (wall)", "same metrics",
        )),  # fmt: skip
    ]

    def evaluators():
        return [RankingEvaluator(dataset.num_items, dataset.train, split) for split in (dataset.valid, dataset.test)]

    for name in models:
        scores_fn, state = untrained_scorer(name, dataset)
        separate, joint = evaluators(), SplitEvaluators(*evaluators())
        variants = {
            "two": lambda: tuple(e.evaluate(scores_fn, state) for e in separate),
            "one": lambda: joint.evaluate(scores_fn, state),
        }
        first, outs = {}, {}
        for k, f in variants.items():
            t = time.perf_counter()
            outs[k] = f()
            first[k] = time.perf_counter() - t
        wall, cpu = time_in_turn(variants, repeats)
        med = {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in variants}
        lines.append(markdown_row((
            name, f"{first['two']:.2f}", f"{first['one']:.2f}",
            f"{med['two'][0]:.2f} / {med['two'][1]:.2f}", f"{med['one'][0]:.2f} / {med['one'][1]:.2f}",
            f"{med['one'][0] / med['two'][0]:.2f}", "yes" if outs["two"] == outs["one"] else "NO",
        )))  # fmt: skip
    return lines + [""]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--models", default="vbpr,bm3,freedom", help="real models for the evaluator pass ('' to skip)")
    parser.add_argument("--graph", default=DEFAULT_GRAPH, help="folder holding baby.inter")
    parser.add_argument("--splits", action="store_true", help="only the third part: valid + test as two programs or one")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    has_graph = os.path.exists(os.path.join(args.graph, "baby.inter"))
    if args.splits and not (args.models and has_graph):
        parser.error(f"--splits needs --models and the Baby graph (no baby.inter in {args.graph})")
    load_before = os.getloadavg()
    if args.splits:
        lines = run_splits(args.models.split(","), args.repeats, args.graph)
    else:
        lines = run(64, args.repeats) + run(128, args.repeats)
        if args.models and has_graph:
            lines += run_models(args.models.split(","), max(2, args.repeats // 3), args.graph)
    load_after = os.getloadavg()
    splits_flag = " --splits" if args.splits else ""
    header = [
        *report_header(f"python benchmarks/ranking.py{splits_flag} --repeats {args.repeats} --models {args.models}"),
        f"Noise: {load_note(load_before, load_after)}; CPU time is all threads' time.",
        "",
    ]
    emit("\n".join(header + lines), args.out)


if __name__ == "__main__":
    main()
