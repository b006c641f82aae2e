"""Time per batch of plain Adam vs Mirror Gradient (beta=3) for every dispatch style.

Workloads: an MLP classifier and an embedding-heavy BPR matrix factorisation (two
20k x 64 tables, batch 2048). Styles:

* ``plain``               : Adam, one jitted step per batch (baseline of the per-batch family).
* ``opaque-cond``         : opaque MG, branch chosen inside the program by ``lax.cond``.
* ``opaque-static``       : opaque MG, ``mirror`` as a static flag (two compiled programs),
                            the two sub-steps returned as one combined update.
* ``transparent-static``  : transparent MG through :func:`mirrorgrad_jax.optim.make_train_steps`;
                            two programs, the mirror one applies both sub-steps in place.
                            The recommended style.
* ``scan-plain``          : Adam, a whole pass as one ``lax.scan`` (baseline of the scan family).
* ``scan-block``          : MG, one ``lax.scan`` over blocks of beta batches (first mirrored).

Each ratio is against the baseline of its own family, measured in the same run with the
styles interleaved round-robin (shared, noisy machines). Ideal ratio: 1 + 1/beta.

Usage: python benchmarks/mg_overhead.py [--batches 30] [--repeats 7] [--out benchmarks/results/mg_overhead.md]
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mirrorgrad_jax import is_mirror_batch, mirror_gradient
from mirrorgrad_jax.optim import make_block_step, make_train_steps

from reporting import markdown_table, report_header

BETA = 3


def mlp_workload(num_batches: int):
    rng = np.random.default_rng(0)
    sizes = [(784, 512), (512, 512), (512, 10)]
    params = {f"w{i}": jnp.asarray(rng.normal(size=s) / np.sqrt(s[0]), jnp.float32) for i, s in enumerate(sizes)}
    params.update({f"b{i}": jnp.zeros(s[1], jnp.float32) for i, s in enumerate(sizes)})
    xs = jnp.asarray(rng.normal(size=(num_batches, 256, 784)), jnp.float32)
    ys = jnp.asarray(rng.integers(0, 10, size=(num_batches, 256)), jnp.int32)

    def loss(p, batch, key):
        x, y = batch
        h = jax.nn.relu(x @ p["w0"] + p["b0"])
        h = jax.nn.relu(h @ p["w1"] + p["b1"])
        logits = h @ p["w2"] + p["b2"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return params, (xs, ys), loss


def bpr_workload(num_batches: int, num_users: int = 20_000, num_items: int = 20_000, dim: int = 64, batch: int = 2048):
    rng = np.random.default_rng(0)
    params = {
        "users": jnp.asarray(rng.normal(size=(num_users, dim)) * 0.1, jnp.float32),
        "items": jnp.asarray(rng.normal(size=(num_items, dim)) * 0.1, jnp.float32),
    }
    u = rng.integers(0, num_users, size=(num_batches, batch))
    i = rng.integers(0, num_items, size=(num_batches, 2, batch))
    batches = jnp.asarray(np.concatenate([u[:, None], i], axis=1), jnp.int32)  # (n, 3, B)

    def loss(p, b, key):
        eu = p["users"][b[0]]
        diff = jnp.sum(eu * (p["items"][b[1]] - p["items"][b[2]]), axis=-1)
        return -jnp.mean(jax.nn.log_sigmoid(diff))

    return params, batches, loss


def build_styles(loss, lr=1e-3):
    """Returns {style: run(params, opt_state, batches, key) -> (params, opt_state)} and the inits."""
    plain_tx = optax.adam(lr)
    opaque_tx = mirror_gradient(optax.adam(lr), 1.0, 0.2, BETA)
    transparent_tx = mirror_gradient(optax.adam(lr), 1.0, 0.2, BETA, mode="transparent")
    donate = dict(donate_argnums=(0, 1))

    def batch_at(batches, k):
        return jax.tree.map(lambda b: b[k], batches)

    plain_steps = make_train_steps(loss, plain_tx, mirror=False)
    plain_step = jax.jit(plain_steps.normal, **donate)

    @functools.partial(jax.jit, static_argnames="mirror", **donate)
    def opaque_step(params, state, batch, key, mirror=None):
        grads = jax.grad(loss)(params, batch, key)
        extra = {} if mirror is None else {"mirror": mirror}
        grad_fn = lambda p: jax.grad(loss)(p, batch, jax.random.fold_in(key, 1))
        updates, state = opaque_tx.update(grads, state, params, grad_fn=grad_fn, **extra)
        return optax.apply_updates(params, updates), state

    mg_steps = make_train_steps(loss, transparent_tx)
    t_normal = jax.jit(mg_steps.normal, **donate)
    t_mirror = jax.jit(mg_steps.mirror, **donate)

    def per_batch(step_for):
        def run(params, state, batches, key):
            n = jax.tree.leaves(batches)[0].shape[0]
            for k in range(n):
                out = step_for(k)(params, state, batch_at(batches, k), jax.random.fold_in(key, k))
                params, state = out[0], out[1]
            return params, state

        return run

    def scan_plain_fn(params, state, batches, key):
        def body(carry, xs):
            p, s = carry
            b, k = xs
            p, s, loss_value, _ = plain_steps.normal(p, s, b, k)
            return (p, s), loss_value

        n = jax.tree.leaves(batches)[0].shape[0]
        (params, state), _ = jax.lax.scan(body, (params, state), (batches, jax.random.split(key, n)))
        return params, state

    block = make_block_step(mg_steps, BETA)

    def scan_block_fn(params, state, batches, key):
        n = jax.tree.leaves(batches)[0].shape[0]
        blocks = jax.tree.map(lambda b: b.reshape((n // BETA, BETA) + b.shape[1:]), batches)
        keys = jax.random.split(key, n).reshape(n // BETA, BETA)

        def body(carry, xs):
            p, s = carry
            b, k = xs
            p, s, losses, _ = block(p, s, b, k)
            return (p, s), losses

        (params, state), _ = jax.lax.scan(body, (params, state), (blocks, keys))
        return params, state

    styles = {
        "plain": (per_batch(lambda k: plain_step), plain_tx),
        "opaque-cond": (per_batch(lambda k: opaque_step), opaque_tx),
        "opaque-static": (
            per_batch(lambda k: functools.partial(opaque_step, mirror=bool(is_mirror_batch(k, BETA)))),
            opaque_tx,
        ),
        "transparent-static": (per_batch(lambda k: t_mirror if is_mirror_batch(k, BETA) else t_normal), transparent_tx),
        "scan-plain": (jax.jit(scan_plain_fn, **donate), plain_tx),
        "scan-block": (jax.jit(scan_block_fn, **donate), transparent_tx),
    }
    return styles


BASELINE = {
    "plain": "plain",
    "opaque-cond": "plain",
    "opaque-static": "plain",
    "transparent-static": "plain",
    "scan-plain": "scan-plain",
    "scan-block": "scan-plain",
}


def time_workload(name, params0, batches, loss, repeats):
    styles = build_styles(loss)
    n = jax.tree.leaves(batches)[0].shape[0]
    key = jax.random.key(0)
    states = {}
    for style, (run, tx) in styles.items():  # compile + warm up
        params = jax.tree.map(jnp.copy, params0)
        params, state = run(params, tx.init(params), batches, key)
        jax.block_until_ready(params)
        states[style] = (params, state)
    times = {style: [] for style in styles}
    for _ in range(repeats):
        for style, (run, _) in styles.items():
            params, state = states[style]
            start = time.perf_counter()
            params, state = run(params, state, batches, key)
            jax.block_until_ready((params, state))
            times[style].append((time.perf_counter() - start) / n)
            states[style] = (params, state)
    med = {s: statistics.median(v) for s, v in times.items()}
    rows = []
    for style in styles:
        rows.append((name, style, med[style] * 1e3, med[style] / med[BASELINE[style]]))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=30, help="batches per timed pass (multiple of 3)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--workloads", default="mlp,bpr")
    parser.add_argument("--out", default=None, help="write a markdown table here")
    args = parser.parse_args(argv)
    if args.batches % BETA:
        parser.error(f"--batches must be a multiple of beta={BETA}")
    rows = []
    for name in args.workloads.split(","):
        params, batches, loss = {"mlp": mlp_workload, "bpr": bpr_workload}[name](args.batches)
        print(f"[{name}] timing {args.repeats} x {args.batches} batches ...", file=sys.stderr, flush=True)
        rows += time_workload(name, params, batches, loss, args.repeats)
    header = "\n".join(report_header(f"python benchmarks/mg_overhead.py --batches {args.batches} --repeats {args.repeats}")) + "\n" + (
        f"optax {optax.__version__}. Median time per batch over {args.repeats} passes; ratio = style / baseline of its family "
        f"(same run, interleaved); ideal MG ratio 1 + 1/beta = {1 + 1 / BETA:.3f}.\n"
    )
    table = markdown_table(
        ("workload", "style", "ms / batch", "ratio vs baseline", "ideal"),
        [
            (name, style, f"{ms:.2f}", f"{ratio:.3f}", "1.000" if BASELINE[style] == style else f"{1 + 1 / BETA:.3f}")
            for name, style, ms, ratio in rows
        ],
    )
    text = header + "\n" + "\n".join(table) + "\n"
    print(text)
    if args.out:
        with open(args.out, "a" if os.path.exists(args.out) else "w") as f:
            f.write("\n" + text)
    return rows


if __name__ == "__main__":
    main()
