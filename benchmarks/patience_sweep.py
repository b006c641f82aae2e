"""Is it MG or early stopping? Every arm trained to a fixed budget, the stopping rule replayed after.

The reference reports the test result at the best-validation epoch and stops after
``patience + 1`` epochs without improvement. Under that protocol a method's effect mixes
with WHEN training happens to stop: one plain run that peaks early, dips and is killed by
the patience rule moves a 3-seed mean as much as a real improvement. Here every run
(plain and MG, alpha1 1.0, alpha2 ``--alpha2``, beta 3) trains to a fixed epoch budget
with no early stop, evaluating validation and test after every epoch; the rule
(:func:`mirrorgrad_jax.analysis.patience.replay_early_stopping`, equal to a live run by test) is
then replayed for patience 5, 10, 20, 50 and "none" (the best validation epoch over the
whole budget). Selection metric: validation recall@20 (as ``accuracy_table.py``).

Per model x dataset the summary reports, for each arm and patience, the selected test
recall@20 (mean ± std over seeds) and the stop epoch, and MG minus plain paired by seed
with its spread. Figures (``--figures``): validation and test recall@20 against epoch
for every arm and seed, with where each patience stops, and the selected test value
against patience.

Each finished run (its compact per-epoch curves) is appended as one JSON line to
``--runs`` under a file lock and skipped on the next start, so the grid can be filled
over several sessions; ``--workers N`` shares the pending runs among N processes;
``--stop-after S`` starts no new run after S seconds. Models that do not train
(``trainable = False``, e.g. itemknncbf) are skipped: there is nothing to stop.

``--logdir DIR`` also writes every run's curves as a TensorBoard run
(``DIR/<model>/<dataset>/<plain|mg-a2=0.2>/seed999``); it changes no number.

Usage:
  python benchmarks/patience_sweep.py --models vbpr,freedom --datasets synthetic,movielens-100k \
      --seeds 3 --budget 200 --budgets freedom=400 --out benchmarks/results/patience_sweep.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time

from mirrorgrad_jax.analysis.patience import DEFAULT_PATIENCES, paired_difference, patience_label, sweep_patience

from reporting import (
    STD_NOTE,
    add_logdir_option,
    append_run,
    arm_name,
    check_logdir,
    command_as_run,
    device_counts,
    format_mean_std,
    markdown_row,
    markdown_table,
    read_runs,
    report_header,
    run_workers,
    tensorboard_run,
)

METRIC = "recall@20"
KEPT_METRICS = ("recall@20", "ndcg@20")
FIRST_SEED = 999
#: Models whose per-model yaml fixes these train settings (not grids) get them; the rest the TrainConfig defaults.
YAML_TRAIN_KEYS = ("weight_decay", "lr_schedule")

_DATASETS: dict = {}


# ---------------------------------------------------------------- grid and settings


def parse_budgets(text: str | None, default: int) -> dict:
    """``"freedom=400,vbpr:movielens-100k=300"`` -> {("freedom", None): 400, ("vbpr", "movielens-100k"): 300}.

    The key ``None`` holds ``default``. Raises ValueError on a malformed entry.
    """
    budgets: dict = {None: int(default)}
    for item in filter(None, (text or "").split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key or not value.strip().isdigit() or int(value) < 2:
            raise ValueError(f"--budgets entries look like model=EPOCHS or model:dataset=EPOCHS (EPOCHS >= 2), got {item!r}")
        model, _, dataset = key.partition(":")
        budgets[(model.strip(), dataset.strip() or None)] = int(value)
    return budgets


def budget_for(budgets: dict, model: str, dataset: str) -> int:
    for key in ((model, dataset), (model, None)):
        if key in budgets:
            return budgets[key]
    return budgets[None]


def arms(alpha2: float) -> tuple:
    """The two arms, as the ``alpha2`` recorded per run: None (plain) and MG's value."""
    return (None, alpha2)


def pending_runs(done: list[dict], models: list[str], datasets: list[str], seeds: int, budgets: dict, alpha2: float) -> list[tuple]:
    """(model, dataset, alpha2, seed, budget) still to run.

    Dataset-major, then model, seed and arm, so each model x dataset cell finishes (both
    arms, all seeds) before the next one starts and the first datasets and models listed
    are done first.
    """
    have = {(r["model"], r["dataset"], r["alpha2"], r["seed"], r["budget"]) for r in done}
    todo = []
    for dataset in datasets:
        for model in models:
            budget = budget_for(budgets, model, dataset)
            for seed in range(FIRST_SEED, FIRST_SEED + seeds):
                for a in arms(alpha2):
                    if (model, dataset, a, seed, budget) not in have:
                        todo.append((model, dataset, a, seed, budget))
    return todo


def train_settings(model: str) -> dict:
    """TrainConfig overrides of the model's packaged yaml (only fixed values of YAML_TRAIN_KEYS)."""
    import yaml

    from mirrorgrad_jax import models as _models

    path = os.path.join(os.path.dirname(_models.__file__), "configs", f"{model}.yaml")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        train = (yaml.safe_load(f) or {}).get("train") or {}
    out = {}
    for key in YAML_TRAIN_KEYS:
        value = train.get(key)
        if value is None:
            continue
        if key == "lr_schedule":
            out[key] = tuple(float(v) for v in value)
        elif not isinstance(value, list):
            out[key] = value
    return out


def _model_class(model: str):
    import importlib

    from mirrorgrad_jax.models import get_model

    try:
        return get_model(model)
    except ValueError:
        # a model file not yet in models/__init__.py registers itself on import
        importlib.import_module(f"mirrorgrad_jax.models.{model}")
        return get_model(model)


# ---------------------------------------------------------------- one run


def run_one(model: str, dataset_name: str, alpha2: float | None, seed: int, budget: int, logdir: str | None = None) -> dict:
    """Trains one arm for exactly ``budget`` epochs (patience = budget: no early stop)."""
    import jax
    from mirrorgrad_jax.models import build_config

    from mirrorgrad_jax.data import load_dataset
    from mirrorgrad_jax.train import MGConfig, TrainConfig, train

    dataset = _DATASETS.setdefault(dataset_name, load_dataset(dataset_name, verbose=False))
    cls = _model_class(model)
    mg = MGConfig(enabled=alpha2 is not None, alpha1=1.0, alpha2=alpha2 or 0.2, beta=3)
    extra = train_settings(model)
    cfg = TrainConfig(epochs=budget, patience=budget, valid_metric=METRIC, seed=seed, **extra)
    started = time.perf_counter()
    with tensorboard_run(logdir, model, dataset_name, arm_name(alpha2), f"seed{seed}") as events:
        result = train(cls, build_config(cls, {}), dataset, cfg, mg, log=None, events=events)
    device = jax.devices()[0]
    hist = result.history
    return {
        "model": model,
        "dataset": dataset_name,
        "alpha2": alpha2,
        "seed": seed,
        "budget": budget,
        "train_overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in extra.items()},
        "epochs_run": result.epochs_run,
        "stop_reason": result.stop_reason,
        "curves": {
            "loss": [round(h["loss"], 4) for h in hist],
            "valid": {m: [h["valid"][m] for h in hist] for m in KEPT_METRICS},
            "test": {m: [h["test"][m] for h in hist] for m in KEPT_METRICS},
        },
        "train_seconds": round(result.train_seconds, 2),
        "eval_seconds": round(result.eval_seconds, 2),
        "seconds": round(time.perf_counter() - started, 2),
        "device": f"{device.platform}:{device.device_kind}",
        "jax": jax.__version__,
        "date": datetime.date.today().isoformat(),
    }


def history_of(row: dict) -> list[dict]:
    """The run's per-epoch history in :attr:`TrainResult.history` form (the kept metrics only)."""
    curves = row["curves"]
    n = len(curves["valid"][METRIC])
    return [
        {
            "epoch": e,
            "loss": curves["loss"][e],
            "valid": {m: v[e] for m, v in curves["valid"].items()},
            "test": {m: v[e] for m, v in curves["test"].items()},
        }
        for e in range(n)
    ]


def run_pending(todo: list[tuple], args, started: float) -> None:
    for model, dataset, alpha2, seed, budget in todo:
        if args.stop_after is not None and time.perf_counter() - started > args.stop_after:
            print(f"--stop-after {args.stop_after}s reached: {model} {dataset} alpha2={alpha2} seed={seed} and later left for next time", file=sys.stderr, flush=True)
            return
        try:
            row = run_one(model, dataset, alpha2, seed, budget, args.logdir)
        except Exception as error:  # noqa: BLE001 (one broken run must not end the others; nothing is written for it)
            print(f"{model} {dataset} alpha2={alpha2} seed={seed} FAILED: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
            continue
        append_run(args.runs, row)
        none = sweep_patience(history_of(row), METRIC, [None])[None]
        print(
            f"{model} {dataset} alpha2={alpha2} seed={seed} budget {budget}: best epoch {none.best_epoch}, "
            f"test {METRIC} {none.test[METRIC]:.4f} ({row['seconds']:.0f}s, {row['device']})",
            file=sys.stderr, flush=True,
        )


# ---------------------------------------------------------------- summary


def cells(rows: list[dict]) -> dict:
    """(model, dataset) -> the rows of its largest budget (a cell rerun with a longer budget supersedes)."""
    out: dict = {}
    for model, dataset in sorted({(r["model"], r["dataset"]) for r in rows}):
        mine = [r for r in rows if r["model"] == model and r["dataset"] == dataset]
        budget = max(r["budget"] for r in mine)
        out[(model, dataset)] = [r for r in mine if r["budget"] == budget]
    return out


def selections(rows: list[dict], patiences=DEFAULT_PATIENCES) -> dict:
    """(alpha2, seed) -> {patience: Selection} for one cell's rows."""
    return {(r["alpha2"], r["seed"]): sweep_patience(history_of(r), METRIC, patiences) for r in rows}


def _epochs(values) -> str:
    return format_mean_std([float(v) for v in values], 1)


def cell_table(rows: list[dict], alpha2: float, patiences=DEFAULT_PATIENCES) -> list[str]:
    """One cell: per patience, each arm's selected test recall@20 and stop epoch, and the paired MG - plain."""
    sel = selections(rows, patiences)
    plain_seeds = sorted(s for a, s in sel if a is None)
    mg_seeds = sorted(s for a, s in sel if a == alpha2)
    lines = markdown_table((
        "patience", f"no MG: test {METRIC}", "no MG: stop (best) epoch", f"MG: test {METRIC}", "MG: stop (best) epoch",
        "MG - no MG per seed", "MG - no MG mean ± std", "MG above",
    ))  # fmt: skip
    for p in patiences:
        cols = []
        for seeds, a in ((plain_seeds, None), (mg_seeds, alpha2)):
            chosen = [sel[(a, s)][p] for s in seeds]
            cols.append(format_mean_std([c.test[METRIC] for c in chosen]) if chosen else "n/a")
            cols.append(
                f"{_epochs([c.epochs_run for c in chosen])} ({_epochs([c.best_epoch for c in chosen])})" if chosen else "n/a"
            )
        plain = {s: sel[(None, s)][p].test[METRIC] for s in plain_seeds}
        mg = {s: sel[(alpha2, s)][p].test[METRIC] for s in mg_seeds}
        if set(plain) & set(mg):
            d = paired_difference(plain, mg)
            diff = [", ".join(f"{x:+.4f}" for x in d.differences), f"{d.mean:+.4f} ± {d.std:.4f}", f"{d.positive} / {d.n}"]
        else:
            diff = ["n/a"] * 3
        label = "none (best over budget)" if p is None else str(p)
        lines.append(markdown_row([label, *cols, *diff]))
    return lines


def overview(all_cells: dict, alpha2: float, patiences=DEFAULT_PATIENCES) -> list[str]:
    """One line per cell: MG - no MG (mean ± std over paired seeds) at each patience, and budget checks."""
    heads = [f"p={patience_label(p)}" for p in patiences]
    heads[0] = f"MG - no MG, test {METRIC}: {heads[0]}"
    lines = markdown_table(
        ["model", "dataset", "budget", "seeds (no MG / MG)", *heads, "best epoch over the budget (max)", "runs whose best is the last epoch"]
    )
    for (model, dataset), rows in all_cells.items():
        sel = selections(rows, patiences)
        budget = rows[0]["budget"]
        plain_seeds = sorted(s for a, s in sel if a is None)
        mg_seeds = sorted(s for a, s in sel if a == alpha2)
        cols = []
        for p in patiences:
            plain = {s: sel[(None, s)][p].test[METRIC] for s in plain_seeds}
            mg = {s: sel[(alpha2, s)][p].test[METRIC] for s in mg_seeds}
            if set(plain) & set(mg):
                d = paired_difference(plain, mg)
                cols.append(f"{d.mean:+.4f} ± {d.std:.4f} ({d.positive}/{d.n})")
            else:
                cols.append("n/a")
        bests = [s[None].best_epoch for s in sel.values()]
        at_end = sum(s[None].best_epoch == s[None].stop_epoch for s in sel.values())
        lines.append(markdown_row([model, dataset, budget, f"{len(plain_seeds)} / {len(mg_seeds)}", *cols, max(bests), f"{at_end} / {len(sel)}"]))
    return lines


def render(rows: list[dict], args, command: str) -> str:
    all_cells = cells(rows)
    seconds = sum(r["seconds"] for r in rows)
    settings = sorted({(r["model"], str(r.get("train_overrides") or {})) for r in rows if r.get("train_overrides")})
    text = [
        "# Patience sweep: MG or early stopping?",
        "",
        *report_header(command),
        (
            f"Runs by device (each run records its own; the machine above wrote this summary): {device_counts(rows)}; "
            f"{seconds / 3600:.1f} h of training and evaluation recorded.  "
        ),
        (
            "Protocol: every run trains to its budget with no early stopping (patience = budget), evaluating validation "
            f"and test after every epoch; the reference's rule (strict improvement of the 4-decimal validation {METRIC}, stop after "
            "patience + 1 non-improving epochs, test at the best validation epoch) is replayed afterwards with "
            "`mirrorgrad_jax.analysis.patience.replay_early_stopping` (equal to a live run at that patience, tested in "
            "`tests/test_patience.py`). \"none\" = the best validation epoch over the whole budget. "
            f"Selection metric: validation {METRIC} (the MG reference uses recall@5, upstream MMRec recall@20). {STD_NOTE}  "
        ),
        (
            f"Settings: each model's config defaults, Adam lr 1e-3, batch 2048, seeds {FIRST_SEED}.. (same seed = same "
            f"initialisation and data order in both arms); MG alpha1 1.0, alpha2 {args.alpha2}, beta 3"
            + ("; from the model's yaml: " + "; ".join(f"{m} {s}" for m, s in settings) if settings else "")
            + ".  "
        ),
        (
            "Stop epoch = epochs trained before the rule stops (= the budget when it never stops); best epoch 0-based. "
            "\"MG above\" = seeds on which MG's selected test value is higher."
        ),
        "",
        "## Overview",
        "",
        *overview(all_cells, args.alpha2),
        "",
    ]
    if args.notes:
        with open(args.notes) as f:
            text += [f.read().rstrip(), ""]
    for (model, dataset), cell_rows in all_cells.items():
        budget = cell_rows[0]["budget"]
        text += [
            f"## {model} on {dataset} (budget {budget} epochs)",
            "",
            *cell_table(cell_rows, args.alpha2),
            "",
            f"Figure: `figures/patience_{model}_{dataset}.png`",
            "",
        ]
    return "\n".join(text)


# ---------------------------------------------------------------- figures


PATIENCE_MARKERS = {5: "v", 10: "s", 20: "o", 50: "D", None: "*"}


def plot_cell(rows: list[dict], alpha2: float, path: str, patiences=DEFAULT_PATIENCES) -> None:
    """Valid and test recall@20 vs epoch per arm and seed, where each patience stops; selected test vs patience.

    On the curves, a filled marker (one shape per patience) sits where the rule stops and a
    hollow one at the epoch it then reports (when that is not the best over the budget, the
    star); patiences that never stop within the budget draw nothing.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    sel = selections(rows, patiences)
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8), gridspec_kw={"width_ratios": [2.2, 2.2, 1.2]})
    colors = {None: "tab:blue", alpha2: "tab:red"}
    styles = ["-", "--", ":", "-."]
    seeds = sorted({r["seed"] for r in rows})
    for r in sorted(rows, key=lambda r: (r["alpha2"] is not None, r["seed"])):
        a, s = r["alpha2"], r["seed"]
        ls = styles[seeds.index(s) % len(styles)]
        for ax, split in zip(axes[:2], ("valid", "test")):
            curve = r["curves"][split][METRIC]
            ax.plot(range(len(curve)), curve, color=colors[a], ls=ls, lw=1.0, alpha=0.85)
            overall = sel[(a, s)][None] if None in patiences else None
            for p in patiences:
                c = sel[(a, s)][p]
                if p is None:
                    ax.plot(c.best_epoch, curve[c.best_epoch], marker="*", mfc="none", mec="k", ms=10, ls="none")
                elif c.stopped_early:
                    # filled: where the rule stops; hollow: the epoch it then reports (unless it is the overall best)
                    ax.plot(c.stop_epoch, curve[c.stop_epoch], marker=PATIENCE_MARKERS[p], color=colors[a], ms=6, ls="none")
                    if overall is None or c.best_epoch != overall.best_epoch:
                        ax.plot(c.best_epoch, curve[c.best_epoch], marker=PATIENCE_MARKERS[p], mfc="none", mec=colors[a], ms=7, ls="none")
        x = range(len(patiences))
        axes[2].plot(x, [sel[(a, s)][p].test[METRIC] for p in patiences], color=colors[a], ls=ls, marker="o", ms=4)
    budget = rows[0]["budget"]
    for ax, split in zip(axes[:2], ("valid", "test")):
        # zoom on the plateau (where the rule decides): from where each curve first reaches 85% of its maximum,
        # and every marked epoch
        low, high = [], []
        for r in rows:
            curve = r["curves"][split][METRIC]
            top = max(curve)
            start = next(e for e, v in enumerate(curve) if v >= 0.85 * top)
            marked = [c.stop_epoch for c in sel[(r["alpha2"], r["seed"])].values()]
            marked += [c.best_epoch for c in sel[(r["alpha2"], r["seed"])].values()]
            low.append(min(curve[start:] + [curve[e] for e in marked]))
            high.append(top)
        pad = 0.05 * (max(high) - min(low) or 1e-3)
        ax.set_ylim(min(low) - pad, max(high) + pad)
    for ax, split in zip(axes[:2], ("validation", "test")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{split} {METRIC}")
        ax.set_title(f"{split} {METRIC} per epoch (zoomed on the plateau)")
        ax.set_xlim(0, budget)
        ax.grid(alpha=0.3)
    axes[2].set_xticks(range(len(patiences)), [patience_label(p) for p in patiences])
    axes[2].set_xlabel("patience")
    axes[2].set_ylabel(f"selected test {METRIC}")
    axes[2].set_title("what the rule reports")
    axes[2].grid(alpha=0.3)
    handles = [Line2D([], [], color=colors[None], label="no MG"), Line2D([], [], color=colors[alpha2], label=f"MG (alpha2 {alpha2})")]
    handles += [Line2D([], [], color="gray", ls=styles[i % len(styles)], label=f"seed {s}") for i, s in enumerate(seeds)]
    handles += [
        Line2D([], [], color="gray", marker=PATIENCE_MARKERS[p], ls="none", label=f"patience {p}: stop (hollow: its pick)")
        for p in patiences if p is not None
    ]
    handles += [Line2D([], [], marker="*", mfc="none", mec="k", ls="none", ms=10, label="best valid over the budget (none)")]
    fig.legend(handles=handles, loc="lower center", ncol=6, fontsize=8, frameon=False)
    model, dataset = rows[0]["model"], rows[0]["dataset"]
    fig.suptitle(f"{model} on {dataset}: budget {budget} epochs, no early stop; the rule replayed per patience")
    fig.tight_layout(rect=(0, 0.1, 1, 0.95))
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- main


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="vbpr")
    parser.add_argument("--datasets", default="synthetic,movielens-100k")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget", type=int, default=200, help="epochs per run (no early stopping)")
    parser.add_argument("--budgets", default="", help="per-model budgets: model=EPOCHS or model:dataset=EPOCHS, comma-separated")
    parser.add_argument("--alpha2", type=float, default=0.2)
    parser.add_argument("--runs", default="benchmarks/results/patience_sweep_runs.jsonl")
    parser.add_argument("--out", default=None, help="write the markdown summary here")
    parser.add_argument("--figures", default=None, help="folder for patience_<model>_<dataset>.png (default: figures/ next to --out)")
    parser.add_argument("--notes", default=None, help="a markdown file whose text goes under the overview (budget choices, reductions)")
    parser.add_argument("--summarise-only", action="store_true")
    parser.add_argument("--workers", type=int, default=1, help="worker processes sharing the pending runs")
    parser.add_argument("--stop-after", type=float, default=None, help="start no new run after this many seconds")
    add_logdir_option(parser)
    parser.add_argument("--_shard", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    check_logdir(args.logdir, "patience_sweep.py")
    if args.budget < 2:
        parser.error("--budget must be >= 2")
    if not 0 < args.alpha2 < 1:
        parser.error("--alpha2 must be in (0, 1) (MG needs alpha1 = 1 > alpha2 > 0)")
    if args.notes and not os.path.isfile(args.notes):
        # Checked before any run: the summary reads it only after the whole grid has trained.
        print(f"patience_sweep.py: error: --notes {args.notes}: no such file", file=sys.stderr)
        raise SystemExit(2)
    try:
        budgets = parse_budgets(args.budgets, args.budget)
    except ValueError as error:
        parser.error(str(error))
    started = time.perf_counter()
    models = [m for m in args.models.split(",") if m]
    datasets = [d for d in args.datasets.split(",") if d]
    done = read_runs(args.runs)
    if not args.summarise_only:
        trainable = []
        for m in models:
            if getattr(_model_class(m), "trainable", True):
                trainable.append(m)
            else:
                print(f"{m}: trainable = False (no training, nothing to stop): skipped", file=sys.stderr)
        todo = pending_runs(done, trainable, datasets, args.seeds, budgets, args.alpha2)
        if args._shard:
            index, count = (int(x) for x in args._shard.split("/"))
            run_pending(todo[index::count], args, started)
            return
        print(f"{len(todo)} runs pending", file=sys.stderr, flush=True)
        if args.workers > 1 and todo:
            # the workers run and record; this process writes the summary once they are done
            common = _drop_options(argv if argv is not None else sys.argv[1:], ("--workers", "--out", "--figures", "--notes"))
            run_workers(os.path.abspath(__file__), common, args.workers)
        else:
            run_pending(todo, args, started)
        done = read_runs(args.runs)
    # the summary covers the requested models and datasets
    done = [r for r in done if r["model"] in models and r["dataset"] in datasets and r["alpha2"] in arms(args.alpha2)]
    command = command_as_run(
        "patience_sweep.py", _drop_options(argv if argv is not None else sys.argv[1:], ("--workers", "--stop-after", "--summarise-only", "--logdir"))
    )
    text = render(done, args, command)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
        fig_dir = args.figures or os.path.join(os.path.dirname(args.out), "figures")
        for (model, dataset), rows in cells(done).items():
            plot_cell(rows, args.alpha2, os.path.join(fig_dir, f"patience_{model}_{dataset}.png"))


def _drop_options(tokens: list[str], names: tuple[str, ...]) -> list[str]:
    """``tokens`` without the options in ``names`` (as ``--x V`` or ``--x=V``; flags alone too)."""
    out, skip = [], False
    for i, tok in enumerate(tokens):
        if skip:
            skip = False
            continue
        name = tok.split("=", 1)[0]
        if name in names:
            takes_value = "=" not in tok and name != "--summarise-only" and i + 1 < len(tokens)
            skip = takes_value
            continue
        out.append(tok)
    return out


if __name__ == "__main__":
    main()
