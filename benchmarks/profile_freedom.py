"""Where FREEDOM's CPU epoch goes: the model trained with parts removed, and Adam's floor.

Two measurements on the Baby-scale data of ``epoch_time.py`` (real interaction graph,
random image 4096-d and text 384-d features):

1. FREEDOM (reg_weight 1e-4, dropout 0.8, no MG) trained 3 epochs as it is, without the
   kNN term (``n_mm_layers=0``) and without the image role (text only): the per-epoch train
   times show which part costs what.
2. One Adam step (optax's ``adam`` update plus ``apply_updates``, jitted, buffers donated)
   over a 7,050 x 4,480 table (the two raw feature tables FREEDOM trains), beside a
   hand-written fused Adam of the same arithmetic: equal times mean optax's update is already
   one pass over memory, so the step sits at the machine's memory bandwidth.

The two-line result is quoted in ``benchmarks/results/vs_reference.md`` ("Reading the misses").

Usage: python benchmarks/profile_freedom.py [--graph ../shared/data/baby-graph]
"""

from __future__ import annotations

import argparse
import statistics
import time

from reporting import DEFAULT_GRAPH, baby_dataset

VARIANTS = {
    "as is": {},
    "no kNN term (n_mm_layers=0)": {"n_mm_layers": 0},
    "no image table (text only)": {"image_modality": ""},
}


def train_variants(graph: str) -> None:
    from mirrorgrad_jax.models import build_config, get_model
    from mirrorgrad_jax.train import MGConfig, TrainConfig, train

    dataset = baby_dataset(graph)
    cls = get_model("freedom")
    for name, change in VARIANTS.items():
        config = build_config(cls, {"reg_weight": 1e-4, "dropout": 0.8, **change})
        result = train(cls, config, dataset, TrainConfig(epochs=3, patience=100, seed=999), MGConfig(enabled=False), log=None)
        print(f"FREEDOM {name}: train seconds per epoch {[round(h['train_s'], 2) for h in result.history]}", flush=True)


def adam_floor(rows: int = 7050, cols: int = 4480, repeats: int = 12) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    rng = np.random.default_rng(0)
    params = {"table": jnp.asarray(rng.standard_normal((rows, cols), dtype=np.float32))}
    grads = {"table": jnp.asarray(rng.standard_normal((rows, cols), dtype=np.float32) * 1e-3)}
    tx = optax.adam(1e-3)
    state = tx.init(params)

    def optax_step(p, s, g):
        updates, s = tx.update(g, s, p)
        return optax.apply_updates(p, updates), s

    def fused_step(p, m, v, g):
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        return p - 1e-3 * m / (jnp.sqrt(v) + 1e-8), m, v

    optax_step = jax.jit(optax_step, donate_argnums=(0, 1))
    fused_step = jax.jit(fused_step, donate_argnums=(0, 1, 2))
    p2, m, v = params["table"] + 0, jnp.zeros((rows, cols)), jnp.zeros((rows, cols))
    t_optax, t_fused = [], []
    for _ in range(repeats):  # interleaved, so both see the same machine
        t0 = time.perf_counter()
        params, state = optax_step(params, state, grads)
        jax.block_until_ready(params)
        t_optax.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        p2, m, v = fused_step(p2, m, v, grads["table"])
        jax.block_until_ready(p2)
        t_fused.append(time.perf_counter() - t0)
    moved = 7 * 4 * rows * cols  # read p, g, m, v; write p, m, v
    print(
        f"Adam over {rows * cols / 1e6:.1f}M parameters: optax {1e3 * statistics.median(t_optax[2:]):.1f} ms, "
        f"hand-fused {1e3 * statistics.median(t_fused[2:]):.1f} ms (median of {repeats - 2}); "
        f"{moved / 1e6:.0f} MB moved, {moved / statistics.median(t_fused[2:]) / 1e9:.0f} GB/s",
        flush=True,
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--graph", default=DEFAULT_GRAPH, help="folder holding baby.inter")
    args = parser.parse_args(argv)
    adam_floor()
    train_variants(args.graph)


if __name__ == "__main__":
    main()
