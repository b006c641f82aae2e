"""``mirrorgrad evaluate CKPT``: rank the valid and test splits with a trainer checkpoint.

The model is rebuilt with the run's config and seed and gets the checkpoint's
parameters and saved state (including the training cache of stale-evaluation models),
so the metrics are exactly those the run reported for that epoch.
"""

from __future__ import annotations

import argparse

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    e = subparsers.add_parser("evaluate", help="evaluate a best.ckpt / last.ckpt on valid and test", description=__doc__)
    e.add_argument("checkpoint", help="a checkpoint folder written by `mirrorgrad train --checkpoint-dir`")
    e.add_argument("--dataset", help="dataset to evaluate on (default: the one it was trained on)")
    e.add_argument("--metrics", default="recall,ndcg", help="comma list of recall, ndcg, precision, map (default recall,ndcg)")
    e.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mirrorgrad_jax.train.checkpoint import load_checkpoint
    from mirrorgrad_jax.data import load_dataset
    from mirrorgrad_jax.errors import CheckpointError, ConfigError
    from mirrorgrad_jax.train.trained import evaluate_model, load_trained_model

    wanted = [m.strip() for m in args.metrics.split(",") if m.strip()]
    unknown = [m for m in wanted if m not in ("recall", "ndcg", "precision", "map")]
    if unknown or not wanted:
        raise ConfigError(f"--metrics: unknown metric(s) {unknown}; use recall, ndcg, precision, map")
    meta = load_checkpoint(args.checkpoint).meta.get("meta")
    if not isinstance(meta, dict) or "dataset" not in meta:
        raise CheckpointError(f"{args.checkpoint} is not a trainer checkpoint (no run metadata)")
    dataset = load_dataset(args.dataset or meta["dataset"]["name"])
    trained = load_trained_model(args.checkpoint, dataset)
    print(f"checkpoint {args.checkpoint}: {meta['model']} trained on {meta['dataset']['name']}, epoch {trained.epoch}")
    results = evaluate_model(trained.model, dataset, topk=trained.topk, eval_batch_size=trained.eval_batch_size)
    for split, result in results.items():
        print(f"{split:5s} " + "  ".join(f"{k} {v:.4f}" for k, v in result.items() if k.split("@")[0] in wanted))
    return 0
