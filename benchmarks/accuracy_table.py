"""Accuracy with and without Mirror Gradient for every model, selected on validation.

For each model x dataset: the plain run and MG runs with alpha1 = 1.0, beta = 3 and
alpha2 in {0.1, 0.2, 0.3}; alpha2 is chosen on the VALIDATION split (mean over seeds of
the early-stopping metric). Reports mean ± std over seeds of test Recall@20 and
NDCG@20 at the best-validation epoch, and of that epoch.

Every finished run is appended to a JSONL file (``--runs``) and skipped when the script
is started again, so a long table can be filled in over several sessions.

Usage:
  python benchmarks/accuracy_table.py --models vbpr,bm3 --datasets synthetic,movielens-100k \
      --seeds 3 --epochs 100 --patience 10 --out benchmarks/results/accuracy.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

ALPHA2_GRID = (0.1, 0.2, 0.3)
METRICS = ("recall@20", "ndcg@20")


def run_one(model: str, dataset_name: str, alpha2: float | None, seed: int, epochs: int, patience: int, valid_metric: str) -> dict:
    from mirrorgrad_jax.cli import load_dataset
    from mirrorgrad_jax.models import build_config, get_model
    from mirrorgrad_jax.trainer import MGConfig, TrainConfig, train

    dataset = _DATASETS.setdefault(dataset_name, load_dataset(dataset_name, verbose=False))
    cls = get_model(model)
    mg = MGConfig(enabled=alpha2 is not None, alpha1=1.0, alpha2=alpha2 or 0.2, beta=3)
    cfg = TrainConfig(epochs=epochs, patience=patience, valid_metric=valid_metric, seed=seed)
    started = time.perf_counter()
    result = train(cls, build_config(cls, {}), dataset, cfg, mg, log=None)
    return {
        "model": model,
        "dataset": dataset_name,
        "alpha2": alpha2,
        "seed": seed,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "stop_reason": result.stop_reason,
        "valid": result.best_valid,
        "test": result.test_at_best,
        "valid_curve": [h["valid"][valid_metric] for h in result.history],
        "seconds": time.perf_counter() - started,
    }


_DATASETS: dict = {}


def _fmt(values, digits: int = 4):
    if not values:
        return "n/a"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.{digits}f} ± {std:.{digits}f}"


def summarise(rows: list[dict], valid_metric: str) -> list[str]:
    lines = [
        "| model | dataset | arm | alpha2 (chosen on valid) | test recall@20 | test ndcg@20 | best epoch | seeds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted({(r["model"], r["dataset"]) for r in rows})
    for model, dataset in keys:
        mine = [r for r in rows if r["model"] == model and r["dataset"] == dataset]
        plain = [r for r in mine if r["alpha2"] is None]
        by_alpha = {a: [r for r in mine if r["alpha2"] == a] for a in ALPHA2_GRID}
        by_alpha = {a: rs for a, rs in by_alpha.items() if rs}
        arms = [("no MG", "-", plain)]
        if by_alpha:
            chosen = max(by_alpha, key=lambda a: statistics.fmean(r["valid"][valid_metric] for r in by_alpha[a]))
            arms.append(("MG", f"{chosen}", by_alpha[chosen]))
        for arm, alpha, rs in arms:
            if not rs:
                continue
            lines.append(
                f"| {model} | {dataset} | {arm} | {alpha} | {_fmt([r['test']['recall@20'] for r in rs])} | "
                f"{_fmt([r['test']['ndcg@20'] for r in rs])} | {_fmt([float(r['best_epoch']) for r in rs], 1)} | {len(rs)} |"
            )
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="vbpr")
    parser.add_argument("--datasets", default="synthetic,movielens-100k")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--patience", type=int, default=10)
    parser.add_argument("--valid-metric", default="recall@20")
    parser.add_argument("--runs", default="benchmarks/results/accuracy_runs.jsonl")
    parser.add_argument("--out", default=None, help="write the markdown table here")
    parser.add_argument("--summarise-only", action="store_true")
    args = parser.parse_args(argv)
    done = []
    if os.path.exists(args.runs):
        with open(args.runs) as f:
            done = [json.loads(line) for line in f if line.strip()]
    have = {(r["model"], r["dataset"], r["alpha2"], r["seed"]) for r in done}
    if not args.summarise_only:
        for dataset in args.datasets.split(","):
            for model in args.models.split(","):
                for alpha2 in (None,) + ALPHA2_GRID:
                    for seed in range(999, 999 + args.seeds):
                        if (model, dataset, alpha2, seed) in have:
                            continue
                        row = run_one(model, dataset, alpha2, seed, args.epochs, args.patience, args.valid_metric)
                        done.append(row)
                        with open(args.runs, "a") as f:
                            f.write(json.dumps(row) + "\n")
                        print(
                            f"{model} {dataset} alpha2={alpha2} seed={seed}: test recall@20 {row['test'].get('recall@20', float('nan')):.4f} "
                            f"best epoch {row['best_epoch']} ({row['seconds']:.0f}s)",
                            file=sys.stderr, flush=True,
                        )
    header = (
        f"Command: `python benchmarks/accuracy_table.py --models {args.models} --datasets {args.datasets} --seeds {args.seeds} "
        f"--epochs {args.epochs} --patience {args.patience} --valid-metric {args.valid_metric}`  \n"
        f"Date: {datetime.date.today().isoformat()}; machine: {platform.machine()}, {os.cpu_count()} CPU cores.  \n"
        f"Model settings: the reference defaults of each model's config dataclass; Adam lr 1e-3, batch 2048. "
        f"Early stopping on {args.valid_metric}, patience {args.patience}, at most {args.epochs} epochs. "
        f"MG: alpha1 1.0, beta 3, alpha2 from {list(ALPHA2_GRID)} chosen on validation.\n"
    )
    text = header + "\n" + "\n".join(summarise(done, args.valid_metric)) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
