"""Subnormal float32 values in a model's gradient program, at the points SAM and ASAM evaluate it.

Why: ASAM's LightGCN training program ran 1.05-1.25x SAM's in the profiles of
``profile_step.md``, mostly in the sparse propagation products, the same ops with the same
shapes under both methods; and the BCSR product ran 1.43x slower in a micro check on an input
scaled to subnormal size. CPUs handle subnormal numbers (``0 < |x| < 2^-126`` in float32) on
a slow path, so a method whose ascent point made the second gradient read or write them would
pay for it in time. This census asks whether it does.

For each point, the parameters ``w`` first, then each ascent point named in ``--points``,
``jax.grad`` of the model's loss on one training batch is evaluated one primitive at a time,
and every float32 array is counted: the parameters the program reads, every array it
produces, and the gradient: values, exact zeros and subnormals. Calls (``jit``,
``custom_jvp`` / ``custom_vjp``) are entered; loops and conditionals count by their
outputs. The sparse products (primitive ``sparse_rows_product``) are also counted apart,
their dense operand and their output. The ascent points come from the methods' own optax
transformations (:func:`~mirrorgrad_jax.optim.sam`, :func:`~mirrorgrad_jax.optim.asam`): the
``grad_fn`` the trainer passes them receives exactly this point.

What to expect on XLA's CPU backend: it computes with subnormals flushed to zero, on input
and on output (``jnp.asarray(np.float32(1e-40)) * 1`` is 0), so no array a program
produces can be subnormal and only values made on the host (numpy) can reach a program as
such. The census shows it for a whole training gradient; a backend that kept subnormals would
show them here.

``--epochs N`` first trains the model N epochs with ``--method`` (and ``--method-options``)
and takes its best-validation parameters, so the census can be read at a trained point as
well as at the initial one.

Usage: python benchmarks/subnormals.py --model lightgcn [--epochs 3 --method asam --method-options rho=0.5]
       [--points sam:0.05,sam:0.5,asam:0.05,asam:0.5] [--dataset NAME | --graph DIR] [--seed 999] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

from reporting import DEFAULT_GRAPH, baby_dataset, command_as_run, emit, key_value_pairs, markdown_table, report_header, setting_value

SPARSE_PRODUCT = "sparse_rows_product"
METHODS = ("plain", "mg", "sam", "asam", "gnp")
ASCENTS = ("sam", "asam")
TINY = float(np.finfo(np.float32).tiny)  # 2^-126, the smallest normal float32


class Census:
    """Running counts of float32 values by kind: ``{tag: [values, zeros, subnormals, arrays]}``."""

    def __init__(self) -> None:
        self.counts: dict[str, list[int]] = {}

    def add(self, tag: str, array) -> None:
        x = np.asarray(array)
        if x.dtype != np.float32:
            return
        a = np.abs(x)
        row = self.counts.setdefault(tag, [0, 0, 0, 0])
        row[0] += x.size
        row[1] += int(np.count_nonzero(a == 0))
        row[2] += int(np.count_nonzero((a > 0) & (a < TINY)))
        row[3] += 1


def _sub_jaxpr(eqn):
    """The closed jaxpr a call primitive runs (``jit``, ``custom_jvp_call``, ``custom_vjp_call``), else None."""
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        inner = eqn.params.get(key)
        if inner is not None and hasattr(inner, "jaxpr") and hasattr(inner, "consts"):
            return inner
    return None


def _walk(jaxpr, consts, args, census: Census) -> list:
    from jax.extend import core

    env = dict(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))

    def read(var):
        return var.val if isinstance(var, core.Literal) else env[var]

    for eqn in jaxpr.eqns:
        ins = [read(v) for v in eqn.invars]
        inner = _sub_jaxpr(eqn)
        if inner is not None:
            outs = _walk(inner.jaxpr, inner.consts, ins, census)
        else:
            outs = eqn.primitive.bind(*ins, **eqn.params)
            outs = outs if eqn.primitive.multiple_results else [outs]
            if eqn.primitive.name == SPARSE_PRODUCT:
                census.add("sparse products: dense operand", ins[3])
                census.add("sparse products: output", outs[0])
            for out in outs:  # a call's outputs were counted inside it
                census.add("every array the program produces", out)
        env.update(zip(eqn.outvars, outs))
    return [read(v) for v in jaxpr.outvars]


def count_values(fn, *args) -> tuple[dict[str, list[int]], list]:
    """Runs ``fn(*args)`` one primitive at a time, counting its float32 values; returns ``(counts, outputs)``."""
    import jax

    closed = jax.make_jaxpr(fn)(*args)
    census = Census()
    for leaf in jax.tree.leaves(args):
        census.add("the parameters", leaf)
    outs = _walk(closed.jaxpr, closed.consts, jax.tree.leaves(args), census)
    for out in outs:
        census.add("the gradient", out)
    return census.counts, outs


def ascent_point(kind: str, rho: float, params, grads):
    """The point where ``kind`` (``"sam"`` / ``"asam"``) evaluates its second gradient, from the method's own transformation."""
    import optax

    from mirrorgrad_jax.optim import asam, sam

    method = sam(optax.sgd(0.0), rho) if kind == "sam" else asam(optax.sgd(0.0), rho)
    seen = []
    method.update(grads, method.init(params), params, grad_fn=lambda p: (seen.append(p), grads)[1])
    return seen[0]


def _parse_points(parser, text: str) -> list[tuple[str, float]]:
    points = []
    for part in filter(None, text.split(",")):
        kind, _, radius = part.partition(":")
        try:
            value = float(radius)
        except ValueError:
            value = -1.0
        if kind not in ASCENTS or not value > 0:
            parser.error(f"--points takes method:radius pairs with a method in {', '.join(ASCENTS)} and a radius > 0; got {part!r}")
        points.append((kind, value))
    return points


def _trained_state(cls, config, dataset, args, pairs):
    """``--epochs`` of training with ``--method``; the best-validation trained state."""
    from mirrorgrad_jax.analysis.comparison import load_trained_state
    from mirrorgrad_jax.train import MethodConfig, MGConfig, TrainConfig, train

    method = MethodConfig(name=args.method, **pairs) if args.method in ("sam", "asam", "gnp") else MethodConfig()
    with tempfile.TemporaryDirectory(prefix="mg-subnormals-") as folder:
        train(
            cls, config, dataset, TrainConfig(epochs=args.epochs, patience=args.epochs, seed=args.seed),
            MGConfig(enabled=args.method == "mg"), method=method, checkpoint_dir=folder, log=None,
        )  # fmt: skip
        return load_trained_state(cls, config, dataset, os.path.join(folder, "best.ckpt"))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--epochs", type=int, default=0, help="train this many epochs first (0: the initial parameters)")
    parser.add_argument("--method", choices=METHODS, default="plain", help="what those epochs train with")
    parser.add_argument("--method-options", default="", help="the method's knobs, key=value[,key=value] (MethodConfig's fields)")
    parser.add_argument("--points", default="sam:0.05,sam:0.5,asam:0.05,asam:0.5", help="ascent points, method:radius[,...]")
    parser.add_argument("--seed", type=int, default=999)
    parser.add_argument("--graph", default=DEFAULT_GRAPH, help="folder holding baby.inter")
    parser.add_argument("--dataset", default=None, help="a dataset name mirrorgrad train takes, instead of the Baby graph")
    parser.add_argument("--out", default=None, help="append the markdown report here")
    args = parser.parse_args(argv)
    if args.epochs < 0:
        parser.error("--epochs must be 0 or more")
    points = _parse_points(parser, args.points)
    pairs = {key: setting_value(value) for key, value in key_value_pairs(parser, "--method-options", args.method_options)}
    if pairs and args.method not in ("sam", "asam", "gnp"):
        parser.error("--method-options needs --method sam, asam or gnp")
    if args.dataset is None and not os.path.exists(os.path.join(args.graph, "baby.inter")):
        parser.error(f"the Baby graph is not at {args.graph} (no baby.inter; --graph, or --dataset NAME)")

    import jax
    import jax.numpy as jnp
    from flax import nnx

    from mirrorgrad_jax.data import epoch_batches, load_dataset
    from mirrorgrad_jax.errors import UserInputError
    from mirrorgrad_jax.models import build_config, get_model

    try:
        cls = get_model(args.model)
        config = build_config(cls, {})
        dataset = baby_dataset(args.graph) if args.dataset is None else load_dataset(args.dataset, verbose=False)
        model = cls(dataset, config, rngs=nnx.Rngs(params=args.seed))
        if args.epochs:
            nnx.update(model, _trained_state(cls, config, dataset, args, pairs))
    except (ValueError, TypeError, UserInputError) as err:  # an unknown model or knob, a dataset the model refuses
        parser.error(str(err).strip("'\""))
    except RuntimeError as err:  # MovieLens-100K not cached and no network: the library says what to do
        parser.error(str(err))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    epoch = epoch_batches(dataset, 2048, np.random.default_rng(args.seed), negatives=cls.uses_negatives)
    batch = jnp.asarray(epoch.full[0] if epoch.full is not None and len(epoch.full) else epoch.last)
    key = jax.random.key(args.seed)

    def loss(p):
        return nnx.merge(graphdef, p, rest, copy=True).loss(batch, key)

    grads = jax.grad(loss)(params)
    named = [("w (no ascent)", params)] + [(f"{kind.upper()} rho {rho:g}", ascent_point(kind, rho, params, grads)) for kind, rho in points]
    rows = []
    for name, point in named:
        counts, _ = count_values(jax.grad(loss), point)
        moved = float(jnp.sqrt(sum(jnp.sum((a - b) ** 2) for a, b in zip(jax.tree.leaves(point), jax.tree.leaves(params)))))
        for tag, (values, zeros, subnormal, arrays) in counts.items():
            rows.append([name, f"{moved:.3g}", tag, f"{arrays:,}", f"{values:,}", f"{zeros:,}", f"{subnormal:,}"])
    trained = f"after {args.epochs} epoch{'s' if args.epochs > 1 else ''} of {args.method}{' (' + args.method_options + ')' if args.method_options else ''}" if args.epochs else "at the initial parameters"
    lines = [
        f"### Subnormal values in {args.model}'s gradient program, {trained}",
        "",
        *report_header(command_as_run("subnormals.py", sys.argv[1:] if argv is None else argv)),
        f"Data: {dataset.name}, one batch of {batch.shape[1]:,} training rows (seed {args.seed}); "
        f"subnormal: 0 < |x| < {TINY:.3g} (float32)",
        "",
        *markdown_table(["point", "distance from w", "arrays counted", "arrays", "values", "exact zeros", "subnormal"], rows),
    ]
    emit("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
