"""The optional parts of the model interface, through the trainer and the command line.

* ``first_batch_params`` (LATTICE): those parameters learn only from the first batch of
  each epoch and the optimizer skips them, moments and step count included, elsewhere;
* ``trainable = False`` (ItemKNNCBF): one evaluation, no optimizer, MG said not to apply;
* ``config_for_training`` (MVGAE): the KL weight follows MG's beta when MG is on (faithful)
  or stays the configured one, resolved once by ``resolved_model_config``.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from flax import nnx

from mirrorgrad_jax.train.checkpoint import flatten_arrays, load_checkpoint
from mirrorgrad_jax.cli import main
from mirrorgrad_jax.data import make_synthetic
from mirrorgrad_jax.models import LATTICE, LATTICEConfig
from mirrorgrad_jax.train import MGConfig, TrainConfig, train


@pytest.mark.parametrize("mg_enabled", [True, False])
def test_lattice_graph_learner_is_skipped_except_on_the_first_batch(tmp_path, mg_enabled):
    ds = make_synthetic(num_users=60, num_items=40, seed=30)
    config = LATTICEConfig(embedding_size=8, feat_embed_dim=8, knn_k=3)
    cfg = TrainConfig(epochs=2, batch_size=128, learning_rate=1e-2, valid_metric="recall@20", topk=(10, 20), seed=3)
    mg = MGConfig(enabled=mg_enabled, alpha2=0.2, beta=3)
    result = train(LATTICE, config, ds, cfg, mg, checkpoint_dir=tmp_path, log=None)
    assert result.epochs_run == 2 and all(np.isfinite(h["loss"]) for h in result.history)
    arrays = load_checkpoint(tmp_path / "last.ckpt").arrays
    counts = {k: int(v) for k, v in arrays["opt_state"].items() if k.endswith("count") and ("first_batch" in k or "others" in k)}
    steps = math.ceil(len(ds.train) / cfg.batch_size)
    per_epoch = steps + (math.ceil(steps / mg.beta) if mg_enabled else 0)
    # Adam step counts: the graph learner stepped once per epoch (batch 0, first pass only);
    # everything else stepped on every optimizer step, mirror passes included.
    assert {("first_batch" in k): v for k, v in counts.items()} == {True: 2, False: 2 * per_epoch}, counts
    # Its moments hold what one step per epoch put there: Adam's mu is nonzero and moved.
    first_mu = [v for k, v in arrays["opt_state"].items() if "first_batch" in k and "/mu/" in k]
    assert first_mu and any(np.abs(v).max() > 0 for v in first_mu)
    fresh = LATTICE(ds, config, rngs=nnx.Rngs(params=cfg.seed))
    init = {k: np.asarray(v) for k, v in flatten_arrays(nnx.state(fresh, nnx.Param)).items()}
    moved = [k for k in init if k.startswith("graph_learner") and not np.array_equal(init[k], arrays["params"][k])]
    assert moved, "the graph learner never learned"


def test_itemknncbf_is_evaluated_once_and_mg_is_said_not_to_apply(tmp_path, capsys):
    results = tmp_path / "r.json"
    code = main(["train", "--model", "itemknncbf", "--dataset", "synthetic-small", "--valid-metric", "recall@20",
                 "--checkpoint-dir", str(tmp_path / "runs"), "--results", str(results)])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "needs no training" in out and "Mirror Gradient does not apply" in out
    run = json.loads(results.read_text())["runs"][0]["seeds"][0]
    assert run["epochs_run"] == 1 and run["stop_reason"] == "no_training" and run["num_params"] == 0
    assert main(["evaluate", str(tmp_path / "runs" / "combo0-seed999" / "best.ckpt")]) == 0
    test_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("test "))
    assert f"recall@20 {run['test_at_best']['recall@20']:.4f}" in test_line


def test_mvgae_kl_weight_follows_mg_beta_through_the_command_line(tmp_path):
    results = tmp_path / "r.json"
    code = main(["train", "--model", "mvgae", "--dataset", "synthetic-small", "--epochs", "1", "--batch-size", "1024",
                 "--valid-metric", "recall@20", "--set", "latent_dim=8", "--set", "kl_weight=0.01", "--quiet",
                 "--results", str(results), "--mg", "--beta", "3"])  # fmt: skip
    assert code == 0
    assert json.loads(results.read_text())["runs"][0]["model_config"]["kl_weight"] == 3.0
