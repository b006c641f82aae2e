"""``mirrorgrad evaluate CKPT``: rank the valid and test splits with a trainer checkpoint.

The model is rebuilt with the run's config and seed and gets the checkpoint's
parameters and saved state (including the training cache of stale-evaluation models),
so the metrics are exactly those the run reported for that epoch.

The data is found where the run read it (a folder's absolute path, or a built-in name;
``--dataset`` points at a folder that moved) and checked against the fingerprint of the
training data the checkpoint records: other data is refused. Checkpoints written before
fingerprints were recorded are found by the dataset's name and checked by their sizes
only, and the output says that the data could not be verified.
"""

from __future__ import annotations

import argparse
import os

from mirrorgrad_jax.cli.flags import csv_list

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    e = subparsers.add_parser("evaluate", help="evaluate a best.ckpt / last.ckpt on valid and test", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("checkpoint", help="a checkpoint folder written by `mirrorgrad train --checkpoint-dir`")
    e.add_argument("--dataset", help="where the training data is now (default: where the run read it); checked against the checkpoint's fingerprint of it")
    e.add_argument("--metrics", type=csv_list(str), default=["recall", "ndcg"], help="comma list of recall, ndcg, precision, map (default recall,ndcg)")
    e.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mirrorgrad_jax.data import load_dataset
    from mirrorgrad_jax.errors import CheckpointError, ConfigError
    from mirrorgrad_jax.train.checkpoint import open_checkpoint
    from mirrorgrad_jax.train.trained import evaluate_model, load_trained_model, run_metadata

    wanted = args.metrics
    unknown = [m for m in wanted if m not in ("recall", "ndcg", "precision", "map")]
    if unknown or not wanted:
        raise ConfigError(f"--metrics: unknown metric(s) {unknown}; use recall, ndcg, precision, map")
    ckpt = open_checkpoint(args.checkpoint)  # the metadata; the arrays are read once, below
    meta = run_metadata(ckpt.meta, args.checkpoint)
    name = str(meta["dataset"].get("name", "?"))
    recorded = meta.get("dataset_source")
    if args.dataset:
        where = args.dataset
    elif recorded and recorded.startswith("large"):
        # Generated on demand, gigabytes at its scale: not on the word of a checkpoint's metadata alone.
        raise CheckpointError(
            f"{args.checkpoint} was trained on the generated dataset {recorded}; pass --dataset {recorded} to build it "
            "(it is checked against the data the run trained on)"
        )
    elif recorded:
        where = recorded
        if os.path.isabs(recorded) and not os.path.isdir(recorded):
            raise CheckpointError(
                f"{args.checkpoint} was trained on the dataset folder {recorded}, which is not there any more; "
                "pass --dataset with its new place (it is checked against the data the run trained on)"
            )
    else:  # written before checkpoints recorded where the data came from, or data built in memory
        where = name
    dataset = load_dataset(where)
    trained = load_trained_model(ckpt, dataset)
    print(f"checkpoint {args.checkpoint}: {meta['model']} trained on {name}, epoch {trained.epoch}")
    if trained.data_verified:
        print(f"data: {dataset.source or where}, the run's training data (sizes, split hash and feature shapes match)")
    else:
        print(
            f"data: {dataset.source or where}, NOT verified: the checkpoint was written before mirrorgrad recorded a "
            "fingerprint of its training data; the data could not be verified, only its sizes were checked"
        )
    results = evaluate_model(trained.model, dataset, topk=trained.topk, eval_batch_size=trained.eval_batch_size)
    for split, result in results.items():
        print(f"{split:5s} " + "  ".join(f"{k} {v:.4f}" for k, v in result.items() if k.split("@")[0] in wanted))
    return 0
