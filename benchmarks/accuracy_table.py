"""Accuracy with and without Mirror Gradient for every model, selected on validation.

For each model x dataset: the plain run and MG runs with alpha1 = 1.0, beta = 3 and
alpha2 in {0.1, 0.2, 0.3}; alpha2 is chosen on the VALIDATION split (mean over seeds of
the early-stopping metric). Reports mean ± std over seeds of test Recall@20 and
NDCG@20 at the best-validation epoch, and of that epoch.

Every finished run is appended to a JSONL file (``--runs``, under a file lock) and skipped
when the script is started again, so a long table can be filled in over several sessions
and machines; each row records the device it ran on. ``--workers N`` runs the pending
runs in N worker processes (useful on a GPU, where one small run leaves the card idle);
``--stop-after S`` starts no new run after S seconds, so a time-limited session ends with
whole runs only. Pending runs go seed by seed, so a partial grid still compares every
model on the first seeds.

Model and optimizer settings come from each model's packaged reference config
(``models/configs/<model>.yaml``): every scalar of its ``model_config`` section and the
optimizer settings of its ``train`` section (learning rate when it is not a grid, weight
decay, learning-rate schedule, clipping, batch size); a grid-valued option keeps the
config dataclass's default. The epoch cap, patience and validation metric are this
script's. Every row records the settings it ran with, and the table says how many runs
of each cell stopped at the epoch cap (a run still improving there would be cut).

``--logdir DIR`` also writes every run's curves as a TensorBoard run
(``DIR/<model>/<dataset>/<plain|mg-a2=0.2>/seed999``); it changes no number.

Usage:
  python benchmarks/accuracy_table.py --models vbpr,bm3 --datasets synthetic,movielens-100k \
      --seeds 3 --epochs 100 --patience 10 --out benchmarks/results/accuracy.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from reporting import (
    STD_NOTE,
    add_logdir_option,
    append_run,
    arm_name,
    check_logdir,
    device_counts,
    format_mean_std,
    markdown_table,
    read_runs,
    report_header,
    run_workers,
    tensorboard_run,
)

ALPHA2_GRID = (0.1, 0.2, 0.3)
METRICS = ("recall@20", "ndcg@20")
#: Train-section keys taken from a packaged config (the rest are this script's settings).
OPTIMIZER_KEYS = ("learning_rate", "optimizer", "weight_decay", "lr_schedule", "clip_grad_norm", "batch_size")


def packaged_settings(model: str) -> tuple[dict, dict]:
    """``(model_config values, train values)`` of a model's packaged reference config.

    Scalars only: a list is a grid (except ``lr_schedule``, a pair), and a grid-valued
    option keeps the config dataclass's default.
    """
    from mirrorgrad_jax.cli.train import read_config

    config = read_config(model)
    model_values = {k: v for k, v in (config.get("model_config") or {}).items() if not isinstance(v, list)}
    train = config.get("train") or {}
    train_values = {
        k: v for k, v in train.items()
        if k in OPTIMIZER_KEYS and (not isinstance(v, list) or (k == "lr_schedule" and not any(isinstance(x, list) for x in v)))
    }  # fmt: skip
    return model_values, train_values


def run_one(
    model: str, dataset_name: str, alpha2: float | None, seed: int, epochs: int, patience: int, valid_metric: str, logdir: str | None = None
) -> dict:
    from mirrorgrad_jax.data import load_dataset
    from mirrorgrad_jax.models import build_config, get_model
    from mirrorgrad_jax.train import MGConfig, TrainConfig, train

    import dataclasses

    dataset = _DATASETS.setdefault(dataset_name, load_dataset(dataset_name, verbose=False))
    cls = get_model(model)
    model_values, train_values = packaged_settings(model)
    mg = MGConfig(enabled=alpha2 is not None, alpha1=1.0, alpha2=alpha2 or 0.2, beta=3)
    cfg = TrainConfig(**{**train_values, "epochs": epochs, "patience": patience, "valid_metric": valid_metric, "seed": seed})
    config = build_config(cls, model_values)
    started = time.perf_counter()
    with tensorboard_run(logdir, model, dataset_name, arm_name(alpha2), f"seed{seed}") as events:
        result = train(cls, config, dataset, cfg, mg, log=None, events=events)
    import jax

    device = jax.devices()[0]
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
        "device": f"{device.platform}:{device.device_kind}",
        "jax": jax.__version__,
        "settings": {"model_config": dataclasses.asdict(config), "train": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "seed"}},
    }


def trains_at_all(model: str) -> bool:
    """False for a training-free model (ItemKNNCBF): one evaluation, no MG arm, one seed."""
    from mirrorgrad_jax.models import get_model

    return bool(getattr(get_model(model), "trainable", True))


def pending_runs(done: list[dict], models: list[str], datasets: list[str], seeds: int) -> list[tuple]:
    """(model, dataset, alpha2, seed) still to run, seed-major so partial grids stay comparable."""
    have = {(r["model"], r["dataset"], r["alpha2"], r["seed"]) for r in done}
    trains = {model: trains_at_all(model) for model in models}
    todo = []
    for seed in range(999, 999 + seeds):
        for dataset in datasets:
            for model in models:
                if not trains[model] and seed != 999:
                    continue  # no training: nothing random, one run says it all
                for alpha2 in (None,) + ALPHA2_GRID if trains[model] else (None,):
                    if (model, dataset, alpha2, seed) not in have:
                        todo.append((model, dataset, alpha2, seed))
    return todo


def run_pending(todo: list[tuple], args, started: float) -> None:
    for model, dataset, alpha2, seed in todo:
        if args.stop_after is not None and time.perf_counter() - started > args.stop_after:
            print(f"--stop-after {args.stop_after}s reached: {model} {dataset} alpha2={alpha2} seed={seed} and later left for next time", file=sys.stderr, flush=True)
            return
        try:
            row = run_one(model, dataset, alpha2, seed, args.epochs, args.patience, args.valid_metric, args.logdir)
        except Exception as error:  # one broken run must not end the others; nothing is written for it
            print(f"{model} {dataset} alpha2={alpha2} seed={seed} FAILED: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
            continue
        append_run(args.runs, row)
        print(
            f"{model} {dataset} alpha2={alpha2} seed={seed}: test recall@20 {row['test'].get('recall@20', float('nan')):.4f} "
            f"best epoch {row['best_epoch']} ({row['seconds']:.0f}s, {row['device']})",
            file=sys.stderr, flush=True,
        )


_DATASETS: dict = {}


SUMMARY_COLUMNS = (
    "model", "dataset", "arm", "alpha2 (chosen on valid)", "test recall@20", "test ndcg@20", "best epoch", "seeds",
    "recall@20 vs no MG", "runs at the epoch cap", "devices",
)
PAIRED_COLUMNS = (
    "model", "dataset", "chosen alpha2", "recall@20 difference per seed (MG - no MG)", "mean ± std",
    "MG runs above their seed's no-MG run (any alpha2)",
)


def summarise(rows: list[dict], valid_metric: str) -> list[str]:
    table = []
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
        base = statistics.fmean(r["test"]["recall@20"] for r in plain) if plain else None
        for arm, alpha, rs in arms:
            if not rs:
                continue
            mean = statistics.fmean(r["test"]["recall@20"] for r in rs)
            change = f"{100 * (mean / base - 1):+.1f}%" if base and arm == "MG" else "-"
            devices = ", ".join(sorted({r.get("device", "cpu:cpu").split(":", 1)[-1] for r in rs}))
            capped = sum(r.get("stop_reason") == "max_epochs" for r in rs)
            caps = sorted({r["settings"]["train"]["epochs"] for r in rs if "settings" in r})
            cap = f"; cap {'/'.join(map(str, caps))}" if caps else ""
            table.append((
                model, dataset, arm, alpha, format_mean_std([r["test"]["recall@20"] for r in rs]),
                format_mean_std([r["test"]["ndcg@20"] for r in rs]), format_mean_std([float(r["best_epoch"]) for r in rs], 1),
                len(rs), change, f"{capped} of {len(rs)} ({max(r['epochs_run'] for r in rs)} epochs max{cap})", devices,
            ))  # fmt: skip
    return markdown_table(SUMMARY_COLUMNS, table)


def paired(rows: list[dict], valid_metric: str) -> list[str]:
    """MG minus no MG on the same seed: the chosen alpha2's differences, and the sign over all alpha2."""
    table = []
    for model, dataset in sorted({(r["model"], r["dataset"]) for r in rows}):
        mine = [r for r in rows if r["model"] == model and r["dataset"] == dataset]
        plain = {r["seed"]: r["test"]["recall@20"] for r in mine if r["alpha2"] is None}
        by_alpha = {a: [r for r in mine if r["alpha2"] == a and r["seed"] in plain] for a in ALPHA2_GRID}
        by_alpha = {a: rs for a, rs in by_alpha.items() if rs}
        if not by_alpha:
            continue
        chosen = max(by_alpha, key=lambda a: statistics.fmean(r["valid"][valid_metric] for r in by_alpha[a]))
        diffs = [r["test"]["recall@20"] - plain[r["seed"]] for r in sorted(by_alpha[chosen], key=lambda r: r["seed"])]
        every = [r["test"]["recall@20"] - plain[r["seed"]] for rs in by_alpha.values() for r in rs]
        table.append(
            (model, dataset, chosen, ", ".join(f"{d:+.4f}" for d in diffs), format_mean_std(diffs), f"{sum(d > 0 for d in every)} / {len(every)}")
        )
    return markdown_table(PAIRED_COLUMNS, table)


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
    parser.add_argument("--workers", type=int, default=1, help="worker processes sharing the pending runs")
    parser.add_argument("--stop-after", type=float, default=None, help="start no new run after this many seconds")
    parser.add_argument("--reverse", action="store_true", help="take pending runs from the end (a second machine working on the same grid)")
    add_logdir_option(parser)
    parser.add_argument("--_shard", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    check_logdir(args.logdir, "accuracy_table.py")
    started = time.perf_counter()
    done = read_runs(args.runs)
    if not args.summarise_only:
        todo = pending_runs(done, args.models.split(","), args.datasets.split(","), args.seeds)
        if args.reverse:
            todo.reverse()
        if args._shard:
            index, count = (int(x) for x in args._shard.split("/"))
            run_pending(todo[index::count], args, started)
            return
        print(f"{len(todo)} runs pending", file=sys.stderr, flush=True)
        if args.workers > 1 and todo:
            common = [
                "--models", args.models, "--datasets", args.datasets, "--seeds", str(args.seeds),
                "--epochs", str(args.epochs), "--patience", str(args.patience),
                "--valid-metric", args.valid_metric, "--runs", args.runs,
            ] + (["--reverse"] if args.reverse else [])
            if args.stop_after is not None:
                common += ["--stop-after", str(args.stop_after)]
            if args.logdir is not None:
                common += ["--logdir", args.logdir]
            run_workers(os.path.abspath(__file__), common, args.workers)
        else:
            run_pending(todo, args, started)
        done = read_runs(args.runs)
    command = (
        f"python benchmarks/accuracy_table.py --models {args.models} --datasets {args.datasets} --seeds {args.seeds} "
        f"--epochs {args.epochs} --patience {args.patience} --valid-metric {args.valid_metric}"
    )
    header = "\n".join(report_header(command)) + "\n" + (
        f"Runs by device (each run records its own; the machine above wrote this table): {device_counts(done)}.  \n"
        f"Model settings: each model's packaged reference config (scalars; grid-valued options keep the dataclass "
        f"default; optimizer settings of its train section, e.g. SLMRec's Adam weight decay 1e-4), recorded per run. "
        f"Early stopping on {args.valid_metric}, patience {args.patience}, at most {args.epochs} epochs (this command's cap; "
        f"rows that record their settings show their own cap in the epoch-cap column, and older rows, which record none, ran "
        f"under the cap of their day, 100 epochs for some models: the column's maximum shows it). "
        f"MG: alpha1 1.0, beta 3, alpha2 from {list(ALPHA2_GRID)} chosen on validation. {STD_NOTE}\n"
    )
    text = (
        header + "\n" + "\n".join(summarise(done, args.valid_metric)) + "\n\n"
        + "Paired by seed (same seed, same data order and initialisation; MG changes only the updates):\n\n"
        + "\n".join(paired(done, args.valid_metric)) + "\n"
    )
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
