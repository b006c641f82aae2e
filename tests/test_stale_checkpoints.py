"""Checkpoints of stale-evaluation models rank exactly as the training run reported.

SLMRec, MMGCN, GRCN, DualGNN and MVGAE (``stale_eval=True``, their default) rank with the
representation cached by the last training forward of the epoch. The checkpoint keeps that
cache (and DualGNN's user-graph sample, MMGCN's frozen random tensors), so
``mirrorgrad evaluate best.ckpt`` and the robustness tools reproduce the run's metrics.
The model contract test checks the checkpoint of every model through the library and
tests/test_pinned_runs.py evaluates a DualGNN checkpoint through the command line; here the
command line and the robustness tools are checked on MMGCN, whose checkpoint holds frozen
random tensors besides the training cache. Metrics are compared as the trainer reports them:
rounded to 4 decimals.
"""

from __future__ import annotations

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mirrorgrad_jax.cli import main
from mirrorgrad_jax.analysis.comparison import load_trained_state
from mirrorgrad_jax.data import load_dataset
from mirrorgrad_jax.models import build_config, get_model
from mirrorgrad_jax.analysis.robustness import evaluate_params, robustness_curve
from mirrorgrad_jax.train.trained import evaluate_model

SMALL = {"mmgcn": ["embedding_size=8", "image_latent_dim=8"]}


@pytest.mark.parametrize("model", sorted(SMALL))
def test_evaluate_checkpoint_prints_the_runs_metrics(model, tmp_path, capsys):
    sets = [a for s in SMALL[model] for a in ("--set", s)]
    results = tmp_path / "r.json"
    code = main(["train", "--model", model, "--dataset", "synthetic-small", "--epochs", "2", "--batch-size", "512",
                 "--valid-metric", "recall@20", "--checkpoint-dir", str(tmp_path / "runs"), "--results", str(results),
                 "--quiet", *sets])  # fmt: skip
    assert code == 0
    run = json.loads(results.read_text())["runs"][0]["seeds"][0]
    expected = run["test_at_best"]
    capsys.readouterr()
    ckpt = tmp_path / "runs" / "combo0-seed999" / "best.ckpt"
    assert main(["evaluate", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert f"epoch {run['best_epoch']}" in out
    test_line = next(line for line in out.splitlines() if line.startswith("test "))
    printed = dict(re.findall(r"(\w+@\d+) (\d\.\d{4})", test_line))
    assert printed and {k: float(v) for k, v in printed.items()} == {k: expected[k] for k in printed}, (printed, expected)
    # The robustness tools' evaluation of the clean data (perturbation level 0) agrees too.
    dataset = load_dataset("synthetic-small")
    cls = get_model(model)
    config = build_config(cls, json.loads(results.read_text())["runs"][0]["model_config"])
    state = load_trained_state(cls, config, dataset, ckpt)
    assert evaluate_params(cls, config, dataset, state, "test") == expected
    # Under a perturbation the representation is recomputed; level 0 keeps it exactly.
    rows = robustness_curve(cls, config, dataset, state, "noise", [0.0], seeds=[0])
    assert rows[0]["retention"] == {"recall@20": 1.0, "ndcg@20": 1.0}


def test_a_stale_model_with_an_empty_cache_refuses_to_rank():
    dataset = load_dataset("synthetic-small")
    cls = get_model("slmrec")
    config = build_config(cls, {"embedding_size": 8})
    model = cls(dataset, config, rngs=nnx.Rngs(params=0))
    with pytest.raises(ValueError, match="cache was never filled"):
        evaluate_model(model, dataset)
    params = nnx.state(model, nnx.Param)  # parameters alone, as old checkpoints held
    with pytest.raises(ValueError, match="lacks"):
        evaluate_params(cls, config, dataset, params)
    # The same model recomputing its representation ranks fine, and one training forward fills the cache.
    fresh = cls(dataset, build_config(cls, {"embedding_size": 8, "stale_eval": False}), rngs=nnx.Rngs(params=0))
    assert 0.0 <= evaluate_model(fresh, dataset, ("test",))["test"]["recall@20"] <= 1.0
    batch = jnp.asarray(np.stack([dataset.train[:8, 0], dataset.train[:8, 1], dataset.train[:8, 1]]), jnp.int32)
    nnx.jit(lambda m, b: m.loss(b, jax.random.key(0)))(model, batch)
    assert 0.0 <= evaluate_model(model, dataset, ("test",))["test"]["recall@20"] <= 1.0
