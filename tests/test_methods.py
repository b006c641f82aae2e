"""SAM, ASAM and the gradient-norm penalty: against literal loops, against optax, in the trainer, at their cost.

The float64 problem and the hand-written numpy optimizers are those of test_transform.py
(L2-regularised logistic regression on fixed mini-batches, torch's formulas).
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mirrorgrad_jax.cli import main
from mirrorgrad_jax.data import load_dataset
from mirrorgrad_jax.errors import ConfigError
from mirrorgrad_jax.models import BPRMF, BPRMFConfig
from mirrorgrad_jax.optim import asam, gradient_norm_penalty, make_train_steps, mirror_gradient, sam, skippable_partition
from mirrorgrad_jax.train import MethodConfig, MGConfig, TrainConfig, train
from test_transform import _BATCHES, _W0, OPTIMIZERS, _jax_loss, _np_grad


def _literal_loop(np_opt, perturb, combine, epochs=2):
    """Every batch: the gradient g at w, the gradient g' at perturb(w, g), the optimizer steps with combine(g, g')."""
    init, step = np_opt
    w, s = _W0.copy(), init(_W0)
    for _ in range(epochs):
        for batch in _BATCHES:
            g = _np_grad(w, batch)
            g2 = _np_grad(perturb(w, g), batch)
            delta, s = step(s, combine(g, g2), w)
            w = w + delta
    return w


def _optax_loop(tx, epochs=2):
    w = jnp.asarray(_W0)
    state = tx.init(w)
    for _ in range(epochs):
        for batch in _BATCHES:
            batch = tuple(map(jnp.asarray, batch))
            g = jax.grad(_jax_loss)(w, batch)
            u, state = tx.update(g, state, w, grad_fn=lambda p, b=batch: jax.grad(_jax_loss)(p, b))
            w = optax.apply_updates(w, u)
    return np.asarray(w)


RHO, ETA, ALPHA, RADIUS = 0.05, 0.01, 0.3, 0.07
LITERAL = {
    "sam": (lambda w, g: w + RHO * g / np.linalg.norm(g), lambda g, h: h),
    "asam": (lambda w, g: w + RHO * (np.abs(w) + ETA) ** 2 * g / np.linalg.norm((np.abs(w) + ETA) * g), lambda g, h: h),
    "gnp": (lambda w, g: w + RADIUS * g / np.linalg.norm(g), lambda g, h: (1 - ALPHA) * g + ALPHA * h),
}
OURS = {
    "sam": lambda inner: sam(inner, RHO),
    "asam": lambda inner: asam(inner, RHO, ETA),
    "gnp": lambda inner: gradient_norm_penalty(inner, ALPHA, RADIUS),
}


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
@pytest.mark.parametrize("method", sorted(LITERAL))
def test_each_method_equals_its_literal_loop_in_float64(method, opt_name):
    np_opt, optax_opt = OPTIMIZERS[opt_name]
    with jax.enable_x64(True):
        got = _optax_loop(OURS[method](optax_opt))
    expected = _literal_loop(np_opt, *LITERAL[method])
    assert got.dtype == np.float64
    # The same formulas in float64 on both sides, 14 steps: only rounding differs.
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-14)


def test_sam_is_optax_contrib_sam_and_gnp_at_alpha_one_is_sam():
    reference = optax.contrib.sam(optax.adam(0.05), optax.chain(optax.contrib.normalize(), optax.sgd(RHO)), sync_period=2, opaque_mode=True)
    w = jnp.asarray(_W0, jnp.float32)
    states = {"optax": reference.init(w), "ours": sam(optax.adam(0.05), RHO).init(w), "gnp": gradient_norm_penalty(optax.adam(0.05), 1.0, RHO).init(w)}
    txs = {"optax": reference, "ours": sam(optax.adam(0.05), RHO), "gnp": gradient_norm_penalty(optax.adam(0.05), 1.0, RHO)}
    params = dict.fromkeys(txs, w)
    for batch in _BATCHES:
        batch = tuple(jnp.asarray(b, jnp.float32) for b in batch)
        grad_fn = lambda p, b=batch: jax.grad(_jax_loss)(p, b)  # noqa: E731
        for name, tx in txs.items():
            g = grad_fn(params[name])
            if name == "optax":
                u, states[name] = tx.update(g, states[name], params[name], grad_fn=lambda p, _i, f=grad_fn: f(p))
            else:
                u, states[name] = tx.update(g, states[name], params[name], grad_fn=grad_fn)
            params[name] = optax.apply_updates(params[name], u)
    # Bit for bit: the same operations in the same order (float32).
    np.testing.assert_array_equal(params["ours"], params["optax"])
    np.testing.assert_array_equal(params["gnp"], params["optax"])


@pytest.mark.parametrize("method", sorted(OURS))
def test_extra_arguments_reach_the_inner_optimizer(method):
    # The trainer's skippable partition: with skip=True the group's parameters and state stay put.
    params = {"a": jnp.ones(3), "b": jnp.ones(2)}
    tx = OURS[method](skippable_partition(optax.adam(0.1), {"a": "group", "b": "others"}, "group"))
    state = tx.init(params)
    loss = lambda p: jnp.sum(p["a"] ** 2) + jnp.sum(p["b"] ** 2)  # noqa: E731
    updates, new_state = tx.update(jax.grad(loss)(params), state, params, grad_fn=jax.grad(loss), skip=True)
    assert not np.any(np.asarray(updates["a"])) and np.all(np.asarray(updates["b"]) != 0)
    # The partition's state: inside SAMState for SAM and ASAM, the penalty's own state for GNP.
    parts = lambda st: st if isinstance(st, dict) else st.opt_state  # noqa: E731
    before, after = parts(state), parts(new_state)
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(before["group"]), jax.tree.leaves(after["group"])))
    assert not all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(before["others"]), jax.tree.leaves(after["others"])))
    with pytest.raises(ValueError, match="grad_fn"):
        tx.update(jax.grad(loss)(params), state, params)


@jax.custom_vjp
def _marked(w):
    """The identity, whose backward pass leaves one ``optimization_barrier`` in the program."""
    return w


_marked.defvjp(lambda w: (w, None), lambda _residual, g: (jax.lax.optimization_barrier(g),))


def _count_primitive(jaxpr, name: str) -> int:
    n = 0
    for eqn in jaxpr.eqns:
        n += eqn.primitive.name == name
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    n += _count_primitive(inner, name)
    return n


def _gradient_evaluations(step, *args) -> int:
    """How many gradients of the loss the step's program computes: the marked backward passes in its jaxpr."""
    return _count_primitive(jax.make_jaxpr(step)(*args).jaxpr, "optimization_barrier")


@pytest.mark.parametrize(
    "name, expected",
    [("plain", (1, 1)), ("mg", (1, 2)), ("sam", (2, 2)), ("asam", (2, 2)), ("gnp", (2, 2))],
)
def test_gradient_evaluations_per_step_read_from_the_traced_program(name, expected):
    loss = lambda p, batch, key: _jax_loss(_marked(p), batch)  # noqa: E731
    inner = optax.sgd(0.1)
    tx = {"plain": inner, "mg": mirror_gradient(inner, mode="transparent"), **{k: OURS[k](inner) for k in OURS}}[name]
    steps = make_train_steps(loss, tx, mirror=name == "mg", perturbed_pass=name in OURS)
    w = jnp.asarray(_W0, jnp.float32)
    batch = tuple(jnp.asarray(b, jnp.float32) for b in _BATCHES[0])
    args = (w, tx.init(w), batch, jax.random.key(0))
    assert (_gradient_evaluations(steps.normal, *args), _gradient_evaluations(steps.mirror, *args)) == expected


@pytest.fixture(scope="module")
def small():
    return load_dataset("synthetic-small", verbose=False)


@pytest.mark.parametrize("method", ["sam", "asam", "gnp"])
def test_the_trainer_runs_each_method_through_the_command_line(method, tmp_path, capsys):
    """SAM with a knob it does not read (GNP's alpha) is told so in one note; ASAM gets its own default radius."""
    results = tmp_path / "r.json"
    # SAM's run is not --quiet, so that its note is printed
    extra = ["--gnp-alpha", "0.3"] if method == "sam" else ["--quiet"]
    argv = ["train", "--model", "bprmf", "--dataset", "synthetic-small", "--method", method, "--epochs", "3", "--batch-size", "455",
            "--lr", "5e-3", "--valid-metric", "recall@20", *extra, "--results", str(results), "--set", "embedding_size=16"]  # fmt: skip
    assert main(argv) == 0
    run = json.loads(results.read_text())["runs"][0]
    assert run["method"]["name"] == method and run["mg"]["enabled"] is False
    assert run["method"]["rho"] == {"sam": 0.05, "asam": 0.5, "gnp": 0.05}[method]  # Foret's and Kwon's radii, recorded resolved
    losses = [h["loss"] for h in run["seeds"][0]["history"]]
    assert losses[-1] < losses[0]
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert notes == (["note: the method setting alpha=0.3 cannot change the run: sam does not read it"] if method == "sam" else [])


def test_a_knob_given_to_plain_training_is_noted_under_the_name_the_user_typed(capsys):
    argv = ["train", "--model", "bprmf", "--dataset", "synthetic-small", "--method", "plain", "--rho", "0.1", "--epochs", "1", "--set", "embedding_size=8"]
    assert main(argv) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert notes == ["note: the method setting rho=0.1 cannot change the run: plain does not read it"]  # it said "none"


def test_sam_with_first_batch_parameters_and_a_stale_cache_resumes_bit_identically(small, tmp_path):
    from mirrorgrad_jax.models import LATTICE, LATTICEConfig

    config = LATTICEConfig(embedding_size=8, feat_embed_dim=8, knn_k=5)
    cfg = TrainConfig(epochs=2, batch_size=455, learning_rate=5e-3, valid_metric="recall@20", patience=10, seed=5)
    method = MethodConfig(name="sam", rho=0.05)
    off = MGConfig(enabled=False)
    whole = train(LATTICE, config, small, cfg, off, method=method, log=None)
    train(LATTICE, config, small, cfg, off, method=method, checkpoint_dir=tmp_path, stop_after_epochs=1, log=None)
    # A knob SAM does not read (the penalty's alpha), or MG's with MG off, is the same run: it resumes.
    unread = (MGConfig(enabled=False, alpha2=0.3), MethodConfig(name="sam", rho=0.05, alpha=0.9))
    resumed = train(LATTICE, config, small, cfg, unread[0], method=unread[1], checkpoint_dir=tmp_path, resume=True, log=None)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in whole.history]
    assert resumed.test_at_best == whole.test_at_best
    # The checkpoint says which method wrote it: a plain run cannot resume from it.
    with pytest.raises(ValueError, match="method"):
        train(LATTICE, config, small, cfg, off, checkpoint_dir=tmp_path, resume=True, log=None)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "sam", "--mg"], "--method sam contradicts --mg"),
        (["--method", "adamw"], "--method must be one of plain, mg, sam, asam, gnp"),
        (["--method", "sam,gnp"], "--method takes one method"),
        (["--method", "sam", "--rho", "0"], "MethodConfig.rho must be a finite number > 0"),
    ],
)
def test_method_mistakes_are_one_line_and_exit_2(args, message, capsys):
    assert main(["train", "--model", "bprmf", "--dataset", "synthetic-small", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_mg_and_another_method_together_are_refused_by_the_library(small):
    with pytest.raises(ConfigError, match="MG and sam cannot both train one run"):
        train(BPRMF, BPRMFConfig(), small, TrainConfig(epochs=1), MGConfig(enabled=True), method=MethodConfig(name="sam"), log=None)


def test_a_knob_the_method_does_not_read_is_collapsed_in_a_grid(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(
        "model: bprmf\ndataset: synthetic-small\nmodel_config:\n  embedding_size: 8\n"
        "train:\n  epochs: 1\n  batch_size: 1024\n  valid_metric: recall@20\nmethod:\n  name: sam\n  radius: [0.05, 0.1]\n"
    )
    assert main(["train", "--config", str(config), "--results", str(tmp_path / "r.json")]) == 0
    assert len(json.loads((tmp_path / "r.json").read_text())["runs"]) == 1
    assert "the method grid over radius [0.05, 0.1] cannot change a run" in capsys.readouterr().out


@pytest.mark.parametrize("method", ["sam", "asam", "gnp", "gnp_alpha0"])
def test_a_zero_gradient_moves_nowhere_instead_of_making_nan(method):
    """At a stationary point ``g = 0``: no ascent (``g / ||g||`` would be 0/0), so the second gradient is
    taken at ``w`` itself and the step is the inner optimizer's on a zero gradient: SGD's, exactly 0."""
    build = {**OURS, "gnp_alpha0": lambda inner: gradient_norm_penalty(inner, 0.0, RADIUS)}[method]
    params = {"a": jnp.zeros(3), "b": jnp.asarray([0.0, 0.0])}
    loss = lambda p: jnp.sum(p["a"] ** 2) + jnp.sum(p["b"] ** 4)  # noqa: E731
    tx = build(optax.sgd(0.1))
    seen = []
    updates, _ = tx.update(jax.grad(loss)(params), tx.init(params), params, grad_fn=lambda p: (seen.append(p), jax.grad(loss)(p))[1])
    for leaf in jax.tree.leaves(seen[0]) + jax.tree.leaves(updates):
        np.testing.assert_array_equal(np.asarray(leaf), 0.0)  # finite, and exactly where it was


@pytest.mark.parametrize("method", sorted(OURS))
def test_the_ascent_uses_the_global_norm_over_every_leaf(method):
    """The point a method asks the second gradient at, for params split in two leaves, is the flat
    vector's point split the same way: one norm over all parameters, not one per leaf (which the
    one-array literal loops above could not tell apart)."""
    w = jnp.asarray([0.3, -1.2, 2.0, 0.0, 0.7], jnp.float32)
    g = jnp.asarray([1.0, 0.5, -2.0, 3.0, 0.25], jnp.float32)
    points = []
    for params, grads in ((w, g), ({"a": w[:2], "b": w[2:]}, {"a": g[:2], "b": g[2:]})):
        tx = OURS[method](optax.sgd(0.1))
        tx.update(grads, tx.init(params), params, grad_fn=lambda p, gg=grads: (points.append(p), gg)[1])
    flat, split = points
    np.testing.assert_allclose(np.concatenate([split["a"], split["b"]]), flat, rtol=1e-6)  # float32 sums in another order
    assert not np.allclose(flat, w)  # it did move
