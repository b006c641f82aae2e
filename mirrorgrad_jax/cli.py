"""Command line: ``mirrorgrad train | evaluate | datasets | demo | robustness | flatness`` (also ``python -m mirrorgrad_jax``).

``train`` runs a model on a dataset with or without Mirror Gradient, over any grid of
hyper-parameters (lists in the YAML config or comma-separated flag values) and
several seeds, selects the best combination on the VALIDATION split (``--select-on
test`` reproduces the reference's habit of selecting on test, and says so), and can
write every number to a JSON results file.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import statistics
import sys
import time
from typing import Any, Sequence

__all__ = ["main", "load_dataset", "run_grid", "format_mean_std"]

DATASETS = {
    "synthetic": "built-in synthetic multimodal data (default; deterministic, no download)",
    "synthetic-small": "a tiny synthetic set for smoke tests",
    "movielens-100k": "MovieLens-100K with text (TF-IDF+SVD) and metadata features; downloaded and cached on first use",
    "<folder>": "any folder in the MMRec on-disk format (<name>.inter plus *_feat.npy)",
}

_TOP_LEVEL_KEYS = {"model", "dataset", "model_config", "train", "mg"}


def load_dataset(name: str, *, verbose: bool = True):
    """Resolves a dataset name (see ``mirrorgrad datasets``) or an MMRec-format folder."""
    from mirrorgrad_jax import data

    if name == "synthetic":
        return data.make_synthetic(**data.SYNTHETIC_DEFAULT)
    if name == "synthetic-small":
        return data.make_synthetic(num_users=200, num_items=120, seed=0, name="synthetic-small")
    if name in ("movielens-100k", "ml-100k"):
        return data.load_movielens_100k(verbose=verbose)
    if os.path.isdir(name):
        return data.load_mmrec(name, verbose=verbose)
    raise SystemExit(f"unknown dataset {name!r}: use one of {', '.join(k for k in DATASETS if k[0] != '<')} or an MMRec folder")


def _parse_scalar(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def _as_grid(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def _expand(section: dict[str, Any]) -> list[dict[str, Any]]:
    """All combinations of a section whose values may be lists (grids)."""
    keys = sorted(section)
    combos = itertools.product(*(_as_grid(section[k]) for k in keys))
    return [dict(zip(keys, combo)) for combo in combos]


def _check_fields(section: str, values: dict[str, Any], cls: type) -> None:
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise SystemExit(f"config section {section!r}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def format_mean_std(values: Sequence[float]) -> str:
    if not values:
        return "n/a"
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.4f} ± {std:.4f}"


def run_grid(
    model_name: str,
    dataset,
    model_grid: dict[str, Any],
    train_grid: dict[str, Any],
    mg_grid: dict[str, Any],
    *,
    seeds: Sequence[int],
    select_on: str = "valid",
    checkpoint_dir: str | None = None,
    resume: bool = False,
    log=print,
) -> dict[str, Any]:
    """Trains every combination of the grids for every seed; selects on validation (or test).

    Returns a JSON-ready dict with the configs, per-seed results and the selection.
    """
    from mirrorgrad_jax.models import build_config, get_model
    from mirrorgrad_jax.trainer import MGConfig, TrainConfig, train

    model_cls = get_model(model_name)
    _check_fields("model_config", model_grid, model_cls.config_class)
    _check_fields("train", train_grid, TrainConfig)
    _check_fields("mg", mg_grid, MGConfig)
    combos = list(itertools.product(_expand(model_grid), _expand(train_grid), _expand(mg_grid)))
    runs = []
    for index, (m_values, t_values, g_values) in enumerate(combos):
        model_config = build_config(model_cls, m_values)
        per_seed = []
        for seed in seeds:
            try:
                train_config = TrainConfig(**{**t_values, "seed": seed})
                mg_config = MGConfig(**g_values)
            except (TypeError, ValueError) as err:
                raise SystemExit(f"invalid configuration: {err}") from err
            label = f"[{index + 1}/{len(combos)}] {m_values or ''} {g_values or ''} seed {seed}".replace("  ", " ")
            log(f"== {label}")
            ckpt = None if checkpoint_dir is None else os.path.join(checkpoint_dir, f"combo{index}-seed{seed}")
            result = train(model_cls, model_config, dataset, train_config, mg_config, checkpoint_dir=ckpt, resume=resume, log=log)
            per_seed.append({"seed": seed, **result.to_dict()})
        metric = TrainConfig(**{**t_values}).valid_metric
        select_values = [r["best_valid" if select_on == "valid" else "test_at_best"].get(metric, float("nan")) for r in per_seed]
        runs.append(
            {
                "model_config": dataclasses.asdict(model_config),
                "train": t_values,
                "mg": dataclasses.asdict(MGConfig(**g_values)),
                "seeds": per_seed,
                "selection_score": statistics.fmean(select_values),
            }
        )
    best = max(range(len(runs)), key=lambda i: runs[i]["selection_score"])
    return {"model": model_name, "dataset": dataset.name, "select_on": select_on, "runs": runs, "best_index": best}


def _summary_table(report: dict[str, Any], metrics=("recall@10", "ndcg@10", "recall@20", "ndcg@20")) -> str:
    best = report["runs"][report["best_index"]]
    lines = [f"selected combination (on {report['select_on']}): model {best['model_config']}, mg {best['mg']}"]
    if report["select_on"] == "test":
        lines.append("NOTE: selected on the TEST split, as the reference does; these test numbers are optimistic.")
    for split, key in (("valid", "best_valid"), ("test", "test_at_best")):
        cells = [f"{m} {format_mean_std([s[key].get(m, float('nan')) for s in best['seeds']])}" for m in metrics]
        lines.append(f"  {split:5s}: " + "  ".join(cells))
    epochs = [s["best_epoch"] for s in best["seeds"]]
    lines.append(f"  best epoch per seed: {epochs}")
    return "\n".join(lines)


def _cmd_train(args) -> int:
    import yaml

    config: dict[str, Any] = {}
    if args.config:
        if not os.path.exists(args.config):
            from mirrorgrad_jax import models as _models

            packaged = os.path.join(os.path.dirname(_models.__file__), "configs", f"{args.config}.yaml")
            if not os.path.exists(packaged):
                raise SystemExit(f"--config {args.config!r}: no such file, and no packaged config of that name")
            args.config = packaged
        with open(args.config) as f:
            config = yaml.safe_load(f) or {}
        unknown = sorted(set(config) - _TOP_LEVEL_KEYS)
        if unknown:
            raise SystemExit(f"{args.config}: unknown top-level key(s) {unknown}; allowed: {sorted(_TOP_LEVEL_KEYS)}")
    model_name = args.model or config.get("model") or "vbpr"
    dataset_name = args.dataset or config.get("dataset") or "synthetic"
    model_grid = dict(config.get("model_config") or {})
    train_grid = dict(config.get("train") or {})
    mg_grid = dict(config.get("mg") or {})
    for item in args.set or []:
        key, _, value = item.partition("=")
        if not value:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        model_grid[key] = [_parse_scalar(v) for v in value.split(",")] if "," in value else _parse_scalar(value)
    flag_map = {
        "epochs": ("train", "epochs"),
        "patience": ("train", "patience"),
        "lr": ("train", "learning_rate"),
        "optimizer": ("train", "optimizer"),
        "batch_size": ("train", "batch_size"),
        "valid_metric": ("train", "valid_metric"),
        "weight_decay": ("train", "weight_decay"),
        "alpha1": ("mg", "alpha1"),
        "alpha2": ("mg", "alpha2"),
        "beta": ("mg", "beta"),
        "apply_to": ("mg", "apply_to"),
        "schedule": ("mg", "schedule"),
    }
    sections = {"train": train_grid, "mg": mg_grid}
    for flag, (section, key) in flag_map.items():
        value = getattr(args, flag)
        if value is not None:
            parts = [_parse_scalar(v) for v in str(value).split(",")]
            sections[section][key] = parts if len(parts) > 1 else parts[0]
    if args.mg is not None:
        mg_grid["enabled"] = args.mg
    seeds = [args.seed + i for i in range(args.seeds)]
    dataset = load_dataset(dataset_name)
    print(dataset.summary())
    started = time.perf_counter()
    report = run_grid(
        model_name,
        dataset,
        model_grid,
        train_grid,
        mg_grid,
        seeds=seeds,
        select_on=args.select_on,
        checkpoint_dir=args.checkpoint_dir,
        resume=args.resume,
        log=print if not args.quiet else (lambda _m: None),
    )
    report["wall_seconds"] = time.perf_counter() - started
    print(_summary_table(report))
    if args.results:
        with open(args.results, "w") as f:
            json.dump(report, f, indent=1, default=str)
        print(f"results written to {args.results}")
    return 0


def _cmd_evaluate(args) -> int:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from mirrorgrad_jax.checkpoint import load_checkpoint
    from mirrorgrad_jax.evaluation import RankingEvaluator
    from mirrorgrad_jax.models import build_config, get_model

    saved = load_checkpoint(args.checkpoint)
    meta = saved["meta"]
    dataset = load_dataset(args.dataset or meta["dataset"]["name"])
    trained_on = meta["dataset"]
    if (dataset.num_users, dataset.num_items) != (trained_on["num_users"], trained_on["num_items"]):
        raise SystemExit(
            f"{args.checkpoint} was trained on {trained_on['name']} ({trained_on['num_users']} users, "
            f"{trained_on['num_items']} items) but {dataset.name} has {dataset.num_users} users and {dataset.num_items} items"
        )
    model_cls = get_model(meta["model"])
    model = model_cls(dataset, build_config(model_cls, meta["model_config"]), rngs=nnx.Rngs(params=0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    if len(jax.tree.leaves(params)) != len(saved["params"]):
        raise SystemExit(f"{args.checkpoint} does not match model {meta['model']} on dataset {dataset.name}")
    params = jax.tree.unflatten(jax.tree.structure(params), [jnp.asarray(x) for x in saved["params"]])

    def scores_fn(state, users):
        p, r = state
        return nnx.merge(graphdef, p, r, copy=True).scores(users)

    print(f"checkpoint {args.checkpoint}: {meta['model']} trained on {meta['dataset']['name']}, epoch {saved['epoch']}")
    for split in ("valid", "test"):
        evaluator = RankingEvaluator(dataset.num_items, dataset.train, dataset.split(split))
        result = evaluator.evaluate(scores_fn, (params, rest))
        print(f"{split:5s} " + "  ".join(f"{k} {v:.4f}" for k, v in result.items() if k.split("@")[0] in ("recall", "ndcg")))
    return 0


def _cmd_datasets(args) -> int:
    if args.name:
        print(load_dataset(args.name).summary())
        return 0
    for name, description in DATASETS.items():
        print(f"{name:16s} {description}")
    return 0


def _cmd_models(args) -> int:
    import dataclasses as dc

    from mirrorgrad_jax.models import available_models, get_model

    for name in available_models():
        cls = get_model(name)
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        defaults = ", ".join(f"{f.name}={f.default!r}" for f in dc.fields(cls.config_class))
        print(f"{name:10s} {doc}")
        print(f"{'':10s} defaults: {defaults}")
    return 0


def _cmd_demo(args) -> int:
    from mirrorgrad_jax.demo import run_demo

    run_demo(seeds=args.seeds, epochs=args.epochs)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mirrorgrad", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model with or without Mirror Gradient")
    t.add_argument("--model", help="model name (see `mirrorgrad datasets` / registry); default vbpr")
    t.add_argument("--dataset", help="synthetic | synthetic-small | movielens-100k | an MMRec folder")
    t.add_argument("--config", help="YAML file (keys model, dataset, model_config, train, mg; lists = grids), or a model name for its packaged reference config")
    t.add_argument("--mg", dest="mg", action="store_true", default=None, help="train with Mirror Gradient (default)")
    t.add_argument("--no-mg", dest="mg", action="store_false", help="train without Mirror Gradient")
    for flag in ("alpha1", "alpha2", "beta", "apply_to", "schedule", "epochs", "patience", "lr", "optimizer", "batch_size", "valid_metric", "weight_decay"):
        t.add_argument("--" + flag.replace("_", "-"), dest=flag, help="value, or comma-separated values for a grid")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="model option (repeatable; comma list = grid)")
    t.add_argument("--seeds", type=int, default=1, help="number of seeds (seed, seed+1, ...)")
    t.add_argument("--seed", type=int, default=999, help="first seed (999 as the reference)")
    t.add_argument("--select-on", choices=("valid", "test"), default="valid", help="grid selection split (reference: test)")
    t.add_argument("--results", help="write the full report as JSON here")
    t.add_argument("--checkpoint-dir", help="keep best/last checkpoints here (one subfolder per combination and seed)")
    t.add_argument("--resume", action="store_true", help="resume each run from its last checkpoint")
    t.add_argument("--quiet", action="store_true", help="no per-epoch output")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("evaluate", help="evaluate a best.ckpt / last.ckpt on valid and test")
    e.add_argument("checkpoint")
    e.add_argument("--dataset", help="dataset to evaluate on (default: the one it was trained on)")
    e.set_defaults(func=_cmd_evaluate)

    d = sub.add_parser("datasets", help="list datasets, or describe one")
    d.add_argument("name", nargs="?")
    d.set_defaults(func=_cmd_datasets)

    ls = sub.add_parser("models", help="list the registered models and their default settings")
    ls.set_defaults(func=_cmd_models)

    m = sub.add_parser("demo", help="VBPR with and without MG on the synthetic default (what `make demo` runs)")
    m.add_argument("--seeds", type=int, default=3)
    m.add_argument("--epochs", type=int, default=80)
    m.set_defaults(func=_cmd_demo)

    from mirrorgrad_jax.robustness import add_flatness_command, add_robustness_command

    add_robustness_command(sub)
    add_flatness_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
