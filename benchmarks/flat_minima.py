"""MG among the flat-minima methods: plain, MG, SAM, ASAM and the gradient-norm penalty at equal compute.

For each model x dataset cell every method trains to a fixed budget with no early stopping
(patience = budget), evaluating validation and test after every epoch; the "none" selection
of the patience replay (the best validation epoch, its test value) is read from the curves
afterwards, so a method's effect is not mixed with when early stopping happens to end a run.

* Knobs, chosen on validation with the first seed, then every seed at the chosen value:
  MG alpha2 in {0.1, 0.2, 0.3} (alpha1 1, beta 3), SAM rho in {0.01, 0.05, 0.1}, ASAM rho in
  {0.1, 0.5, 1.0} (eta 0.01), the gradient-norm penalty's alpha in {0.3, 0.5, 0.8} (radius 0.05).
* Equal compute: the two-pass methods (SAM, ASAM, GNP: two gradient evaluations a batch)
  train ``--budget`` epochs; plain and MG train twice as long, so each is also read at equal
  gradient evaluations: plain within ``2 B`` epochs, MG within ``2 B / (1 + ceil(n / 3) / n)``
  (its cost per batch at beta 3 for an epoch of ``n`` batches, as the schedule mirrors batches
  0, 3, 6, ... of every epoch: 182 epochs for ``B = 125`` on synthetic's 16 batches, 185 on
  MovieLens-100K's 40), the two-pass methods within ``B``. "Equal epochs" reads every method
  within ``B``. Each run records its ``batches``; older rows get them counted from the dataset.
* Figures: the summary (``--out``) draws each comparison cell as curves
  (``figures/flat_minima_<model>_<dataset>.png`` next to ``--out``, or ``--figures``): the
  test recall@20 at the best validation epoch so far, mean and spread over the seeds,
  against epochs and against gradient evaluations, so both columns of the table can be read
  off one picture.
* Wall time: ``--timing`` trains each method a few epochs in turn, round-robin, in one sitting
  on one model and dataset, and reports each epoch's median time over plain's (the first epoch,
  which compiles, is left out). Ideal: MG ``1 + ceil(n / beta) / n`` for an epoch of ``n``
  batches (batches 0, beta, 2 beta, ... of each epoch mirror: ``1 + 1/beta`` when beta divides
  ``n``, a little more otherwise), the two-pass methods 2; the table gives each method's ratio
  over its ideal (issue 28's goal: within 5%). ``--datasets baby-graph`` times on the
  Baby-scale graph (the real Amazon Baby interactions in ``--graph`` with seeded random
  features of the real shapes, as ``epoch_time.py``), where an epoch is long enough for the
  fixed per-epoch costs not to hide the per-batch ones. ``--timing --interleave`` builds each
  method's compiled epoch once and runs ONE epoch of every method in turn (the order reversed
  every other epoch), all on the same batches, so a drift of the machine's speed during the
  sitting falls on every method alike instead of on the methods whose block it hits; it times
  the trainer's epoch dispatch (``EpochEngine.run_epoch``) alone, the host's batch drawing and
  the model's ``pre_epoch`` (the same for every method) left out.

* Ablation (``--ablation AXES``, issue 28): MG's knobs one at a time instead of the
  comparison, each arm trained as MG's arm above (``2 B`` epochs, no early stop) on every
  model x dataset x seed and read at its "none" selection, paired by seed with plain:

  - ``alpha2``: alpha2 in {0.05, 0.1, 0.2, 0.3, 0.5} at alpha1 1, beta 3;
  - ``beta``: beta in {1, 2, 3, 5, 10} at alpha1 1, alpha2 0.2 (beta 1 mirrors every batch;
    the batch count restarts each epoch, so batch 0 of every epoch mirrors);
  - ``alpha1``: alpha1 in {0.5, 1, 2} at beta 3 and the alpha2 the alpha2 axis scores best
    on the first seed's validation recall@20 (so it runs after that axis; naming ``alpha1``
    alone still trains the alpha2 axis on the first seed). Values with alpha1 <= alpha2 are
    not run (MGConfig refuses them: the mirror iteration would not descend, and the
    penalty's denominator is zero or negative); the summary says so.

  Its rows carry ``"study": "ablation"`` and their ``alpha1``, ``alpha2``, ``beta`` (and
  ``knob`` None), so the comparison never reads them; the comparison's plain runs are the
  reference and its MG runs (alpha1 1, beta 3) stand for the ablation arms with the same
  settings, so neither is trained twice. The summary (``--out``) adds a section after the
  comparison: per axis value the test recall@20 ("none"), the paired difference against
  plain, the best epochs and MG's implicit penalty ``alpha1 alpha2 lr / (2 (alpha1 -
  alpha2))`` (the spec's derivation for one mirror iteration under SGD; beta is not in it),
  with one figure per model x dataset (``figures/flat_minima_ablation_<model>_<dataset>.png``
  next to ``--out``, or ``--figures``): the difference against plain versus the penalty.

Each finished run appends one JSON line to ``--runs`` (file-locked, skipped on the next start),
so a grid fills over several sessions; ``--workers N`` shares the pending runs.

Usage:
  python benchmarks/flat_minima.py --models vbpr,lightgcn --datasets synthetic --budget 100 \
      --out benchmarks/results/flat_minima.md
  python benchmarks/flat_minima.py --timing --models vbpr --datasets synthetic --epochs 4
  python benchmarks/flat_minima.py --timing --models freedom --datasets baby-graph --epochs 4
  python benchmarks/flat_minima.py --timing --interleave --models lightgcn --datasets baby-graph --epochs 12
  python benchmarks/flat_minima.py --ablation alpha2,beta,alpha1 --models vbpr,lightgcn \
      --datasets synthetic --seeds 3 --budget 125 --out benchmarks/results/flat_minima.md
  python benchmarks/flat_minima.py --ablation beta --models freedom --datasets synthetic --budget 125
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import statistics
import sys
import time
from typing import NamedTuple

from mirrorgrad_jax.analysis.patience import paired_difference, sweep_patience

from reporting import (
    STD_NOTE,
    DEFAULT_GRAPH,
    append_run,
    baby_dataset,
    command_as_run,
    device_counts,
    format_mean_std,
    markdown_row,
    markdown_table,
    read_runs,
    report_header,
    run_workers,
)

METRIC = "recall@20"
KEPT_METRICS = ("recall@20", "ndcg@20")
FIRST_SEED = 999
MG_BETA = 3
#: method -> (its knob's name, the values tried on the first seed).
KNOBS = {
    "plain": (None, (None,)),
    "mg": ("alpha2", (0.1, 0.2, 0.3)),
    "sam": ("rho", (0.01, 0.05, 0.1)),
    "asam": ("rho", (0.1, 0.5, 1.0)),
    "gnp": ("alpha", (0.3, 0.5, 0.8)),
}
TWO_PASS = ("sam", "asam", "gnp")
#: Gradient evaluations per batch, so epochs at equal compute (MG at beta 3: 1 + 1/3 on average).
COST = {"plain": 1.0, "mg": 1.0 + 1.0 / MG_BETA, "sam": 2.0, "asam": 2.0, "gnp": 2.0}

_DATASETS: dict = {}


def budget_of(method: str, budget: int) -> int:
    """Epochs a method trains: the two-pass methods ``budget``, plain and MG twice as long (equal compute read inside)."""
    return budget if method in TWO_PASS else 2 * budget


class Arm(NamedTuple):
    """One MG arm of the ablation (``--ablation``): its three knobs."""

    alpha1: float
    alpha2: float
    beta: int


def configs(method: str, knob):
    """``(MGConfig, MethodConfig)`` of one arm; MG's knob is alpha2 (alpha1 1, beta 3) or an ablation :class:`Arm`."""
    from mirrorgrad_jax.train import MethodConfig, MGConfig

    if method == "plain":
        return MGConfig(enabled=False), MethodConfig()
    if method == "mg" and isinstance(knob, Arm):
        return MGConfig(enabled=True, alpha1=knob.alpha1, alpha2=knob.alpha2, beta=knob.beta), MethodConfig()
    if method == "mg":
        return MGConfig(enabled=True, alpha1=1.0, alpha2=knob, beta=MG_BETA), MethodConfig()
    fields = {"sam": {"rho": knob}, "asam": {"rho": knob, "eta": 0.01}, "gnp": {"alpha": knob, "radius": 0.05}}[method]
    return MGConfig(enabled=False), MethodConfig(name=method, **fields)


# ---------------------------------------------------------------- one run


def run_one(model: str, dataset_name: str, method: str, knob, seed: int, budget: int) -> dict:
    """Trains one arm for exactly ``budget_of(method, budget)`` epochs (patience = epochs: no early stop).

    An ablation arm (``knob`` an :class:`Arm`) is written with ``"study": "ablation"``, its
    ``alpha1``, ``alpha2`` and ``beta``, and ``knob`` None, so that the comparison, which
    keys MG's rows by ``knob``, never takes it for one of its own.
    """
    import jax

    from mirrorgrad_jax.data import load_dataset
    from mirrorgrad_jax.models import build_config, get_model
    from mirrorgrad_jax.train import TrainConfig, train

    dataset = _DATASETS.setdefault(dataset_name, load_dataset(dataset_name, verbose=False))
    cls = get_model(model)
    epochs = budget_of(method, budget)
    mg, method_config = configs(method, knob)
    cfg = TrainConfig(epochs=epochs, patience=epochs, valid_metric=METRIC, seed=seed)
    started = time.perf_counter()
    result = train(cls, build_config(cls, {}), dataset, cfg, mg, method=method_config, log=None)
    hist = result.history
    device = jax.devices()[0]
    row = {
        "model": model,
        "dataset": dataset_name,
        "method": method,
        "knob": None if isinstance(knob, Arm) else knob,
        "seed": seed,
        "budget": budget,
        "epochs": epochs,
        "batches": cfg.steps_per_epoch(len(dataset.train)),
        "learning_rate": cfg.learning_rate,
        "optimizer": cfg.optimizer,
        "curves": {
            "loss": [round(h["loss"], 4) for h in hist],
            "valid": {m: [h["valid"][m] for h in hist] for m in KEPT_METRICS},
            "test": {m: [h["test"][m] for h in hist] for m in KEPT_METRICS},
            "train_s": [round(h["train_s"], 4) for h in hist],
        },
        "seconds": round(time.perf_counter() - started, 2),
        "device": f"{device.platform}:{device.device_kind}",
        "jax": jax.__version__,
        "date": datetime.date.today().isoformat(),
    }
    if isinstance(knob, Arm):
        row.update(study="ablation", alpha1=knob.alpha1, alpha2=knob.alpha2, beta=knob.beta)
    return row


def is_comparison(row: dict) -> bool:
    """Whether a row belongs to the method comparison (every row but the ablation's ``"study": "ablation"`` ones)."""
    return row.get("study", "comparison") == "comparison"


def selection(row: dict, epochs: int):
    """The "none" selection within the first ``epochs`` epochs: (best validation epoch, its valid and test values)."""
    curves = row["curves"]
    n = min(epochs, len(curves["valid"][METRIC]))
    history = [
        {"epoch": e, "valid": {m: v[e] for m, v in curves["valid"].items()}, "test": {m: v[e] for m, v in curves["test"].items()}}
        for e in range(n)
    ]
    return sweep_patience(history, METRIC, [None])[None]


def equal_compute_epochs(method: str, budget: int, batches: int | None = None) -> int:
    """Epochs of ``method`` that cost what ``budget`` epochs of a two-pass method cost.

    ``batches``: the epoch's batch count, which sets MG's exact cost (:func:`ideal_cost`:
    ``1 + ceil(batches / beta) / batches``); without it MG's average ``1 + 1/beta`` is used.
    Rounded down, so a method never gets more gradient evaluations than the two-pass
    budget (MG on 16 batches: 250 / 1.375 = 181.8 -> 181 epochs, which cost 248.9).
    """
    return max(1, math.floor(2 * budget / ideal_cost(method, batches) + 1e-9))


def batches_per_epoch(rows) -> int | None:
    """Batches per epoch of a cell's runs: as :func:`run_one` records it, else counted from the dataset (None if it cannot be loaded)."""
    rows = list(rows)
    for row in rows:
        if row.get("batches"):
            return int(row["batches"])
    if not rows:
        return None
    from mirrorgrad_jax.data import load_dataset
    from mirrorgrad_jax.train import TrainConfig

    name = rows[0]["dataset"]
    try:
        dataset = _DATASETS.setdefault(name, load_dataset(name, verbose=False))
    except (ValueError, RuntimeError, OSError):  # not a dataset this machine can load: MG's average cost
        return None
    return TrainConfig().steps_per_epoch(len(dataset.train))


# ---------------------------------------------------------------- the grid


def chosen_knobs(done: list[dict], model: str, dataset: str, budget: int) -> dict:
    """method -> the knob chosen on the first seed's validation (equal epochs); a method is absent until all its values ran.

    Ties go to the value listed first.
    """
    done = [r for r in done if is_comparison(r)]
    out = {}
    for method, (_, values) in KNOBS.items():
        rows = {r["knob"]: r for r in done if (r["model"], r["dataset"], r["method"], r["seed"], r["budget"]) == (model, dataset, method, FIRST_SEED, budget)}
        if len(values) == 1:
            out[method] = values[0]
        elif all(v in rows for v in values):
            out[method] = max(values, key=lambda v: (selection(rows[v], budget).valid[METRIC], -values.index(v)))
    return out


def pending_runs(done: list[dict], models: list[str], datasets: list[str], seeds: int, budget: int) -> list[tuple]:
    """(model, dataset, method, knob, seed) still to run: first every knob on the first seed, then the chosen knob on the others."""
    done = [r for r in done if is_comparison(r)]
    have = {(r["model"], r["dataset"], r["method"], r["knob"], r["seed"], r["budget"]) for r in done}
    todo = []
    for dataset in datasets:
        for model in models:
            chosen = chosen_knobs(done, model, dataset, budget)
            for method, (_, values) in KNOBS.items():
                for knob in values:
                    if (model, dataset, method, knob, FIRST_SEED, budget) not in have:
                        todo.append((model, dataset, method, knob, FIRST_SEED))
                if method not in chosen:
                    continue  # the other seeds wait for the choice
                for seed in range(FIRST_SEED + 1, FIRST_SEED + seeds):
                    if (model, dataset, method, chosen[method], seed, budget) not in have:
                        todo.append((model, dataset, method, chosen[method], seed))
    return todo


def run_pending(todo: list[tuple], args, started: float) -> None:
    for model, dataset, method, knob, seed in todo:
        if args.stop_after is not None and time.perf_counter() - started > args.stop_after:
            print(f"--stop-after {args.stop_after}s reached: {model} {dataset} {method} and later left for next time", file=sys.stderr, flush=True)
            return
        label = arm_label(method, knob)
        try:
            row = run_one(model, dataset, method, knob, seed, args.budget)
        except Exception as error:  # noqa: BLE001 (one broken run must not end the others; nothing is written for it)
            print(f"{model} {dataset} {label} seed={seed} FAILED: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
            continue
        append_run(args.runs, row)
        # The ablation reads every run (plain too) over its whole budget; the comparison's line shows equal epochs.
        window = row["epochs"] if isinstance(knob, Arm) or getattr(args, "ablation_axes", ()) else args.budget
        best = selection(row, window)
        print(
            f"{model} {dataset} {label} seed={seed}: best valid epoch {best.best_epoch} of the first {window}, "
            f"test {METRIC} {best.test[METRIC]:.4f} ({row['seconds']:.0f}s)",
            file=sys.stderr, flush=True,
        )  # fmt: skip


def arm_label(method: str, knob) -> str:
    """``sam=0.05``, or ``mg alpha1=1 alpha2=0.2 beta=5`` for an ablation arm (progress lines)."""
    if isinstance(knob, Arm):
        return f"{method} alpha1={knob.alpha1:g} alpha2={knob.alpha2:g} beta={knob.beta}"
    return f"{method}={knob}"


# ---------------------------------------------------------------- summary


def cell_rows(done: list[dict], model: str, dataset: str, budget: int) -> dict:
    """method -> {seed: row} at the chosen knob."""
    done = [r for r in done if is_comparison(r)]
    chosen = chosen_knobs(done, model, dataset, budget)
    out = {}
    for method in KNOBS:
        if method in chosen:
            rows = [r for r in done if (r["model"], r["dataset"], r["method"], r["budget"]) == (model, dataset, method, budget) and r["knob"] == chosen[method]]
            out[method] = {r["seed"]: r for r in rows}
    return out


#: A best validation epoch in the last 5% of its window counts as "still improving there" (a
#: heuristic: VBPR on synthetic peaks at epoch 113-115 of 125 and stays below that peak to 250).
LATE_FRACTION = 0.05


def late_runs(runs: dict, epochs: int) -> list[int]:
    """Seeds whose best validation epoch within the first ``epochs`` lies in the last LATE_FRACTION of that window."""
    return sorted(s for s, r in runs.items() if selection(r, epochs).best_epoch >= epochs - max(1, round(LATE_FRACTION * epochs)))


def cell_table(done: list[dict], model: str, dataset: str, budget: int) -> list[str]:
    """The cell's table, then a warning when runs were still improving at the end of their window.

    A run whose best validation epoch sits at the end of its window has not converged: the
    cell then compares how fast the methods climb, not where they settle.
    """
    chosen = chosen_knobs(done, model, dataset, budget)
    cells = cell_rows(done, model, dataset, budget)
    plain = cells.get("plain", {})
    batches = batches_per_epoch(r for runs in cells.values() for r in runs.values())
    lines = markdown_table((
        "method", "knob (chosen on seed 999)", "seeds", f"test {METRIC}, equal epochs ({budget})", "minus plain (paired)",
        f"test {METRIC}, equal gradient evaluations", "minus plain (paired)", "best epoch, equal epochs (max)",
    ))  # fmt: skip
    late = []
    for method, runs in cells.items():
        name, _ = KNOBS[method]
        knob = "-" if name is None else f"{name} {chosen[method]}"
        cols = [method, knob, len(runs)]
        for epochs_of in (lambda m: budget, lambda m: equal_compute_epochs(m, budget, batches)):
            values = {s: selection(r, epochs_of(method)).test[METRIC] for s, r in runs.items()}
            base = {s: selection(r, epochs_of("plain")).test[METRIC] for s, r in plain.items()}
            cols.append(format_mean_std(list(values.values())) if values else "n/a")
            if method != "plain" and set(values) & set(base):
                d = paired_difference(base, values)
                cols.append(f"{d.mean:+.4f} ± {d.std:.4f} ({d.positive}/{d.n})")
            else:
                cols.append("-")
        cols.append(f"{max(selection(r, budget).best_epoch for r in runs.values())} of {budget}" if runs else "-")
        lines.append(markdown_row(cols))
        for epochs in sorted({budget, equal_compute_epochs(method, budget, batches)}):
            seeds = late_runs(runs, epochs)
            if seeds:
                late.append(f"{method} within {epochs} ({len(seeds)} of {len(runs)})")
    mg_cost = ideal_cost("mg", batches)
    epoch_note = f"{batches} batches an epoch, {mirror_batches(batches)} of them mirrored" if batches else "batch count unknown: MG's average"
    lines += [
        "",
        f"Equal gradient evaluations here: plain within {equal_compute_epochs('plain', budget, batches)} epochs, MG within "
        f"{equal_compute_epochs('mg', budget, batches)} ({epoch_note}: {mg_cost:.3f} gradient evaluations a batch), "
        f"the two-pass methods within {budget}.",
    ]
    if late:
        lines += [
            "",
            f"**Still improving at the end of the window** (best validation epoch in its last {LATE_FRACTION:.0%}): {', '.join(late)}. "
            "Where that holds, this cell compares how fast the methods climb, not where they settle: raise `--budget`.",
        ]
    return lines


def render(done: list[dict], args, command: str, figure_names: dict | None = None) -> str:
    """The summary: the comparison's cells, then the ablation's section when there is one (``figure_names``: its figures)."""
    models = getattr(args, "models_list", None) or sorted({r["model"] for r in done})
    datasets = getattr(args, "datasets_list", None) or sorted({r["dataset"] for r in done})
    ablation = ablation_cells(done, models, datasets, args.budget, getattr(args, "ablation_axes", ()))
    # A cell the ablation alone has touched (its plain runs, nothing else of the comparison) is left to its section.
    own = {(m, d) for m, d, runs, _ in ablation if any(r.get("study") == "ablation" for seeds in runs.values() for r in seeds.values())}
    done = [r for r in done if is_comparison(r)]
    methods = {}
    for r in done:
        if r["budget"] == args.budget:
            methods.setdefault((r["model"], r["dataset"]), set()).add(r["method"])
    keys = sorted(k for k, m in methods.items() if k not in own or m - {"plain"})
    seconds = sum(r["seconds"] for r in done)
    text = [
        "# MG among the flat-minima methods",
        "",
        *report_header(command),
        f"Runs by device: {device_counts(done)}; {seconds / 3600:.1f} h of training and evaluation recorded.  ",
        (
            f"{STD_NOTE}  \n"
            f"Protocol: fixed budgets, no early stopping; the reported test {METRIC} is at the best validation epoch "
            f"(the patience replay's \"none\"). Two-pass methods train {args.budget} epochs, plain and MG {2 * args.budget}; "
            f"\"equal epochs\" reads every method within {args.budget} epochs, \"equal gradient evaluations\" plain within "
            f"{2 * args.budget}, MG within {2 * args.budget} divided by its cost per batch at beta 3 (1 + ceil(n / 3) / n "
            f"for an epoch of n batches; each cell names its window) and the two-pass methods within {args.budget}. Knobs chosen on validation with seed {FIRST_SEED}. What an epoch of each costs is measured "
            "side by side (`--timing`), in the section below when present: these runs ran one after another on a "
            "shared machine, so their times are not compared.  "
        ),
        "",
    ]
    comparison_figures = getattr(args, "comparison_figures", {}) or {}
    for model, dataset in keys:
        text += [f"## {model} on {dataset}", "", *cell_table(done, model, dataset, args.budget), ""]
        if (model, dataset) in comparison_figures:
            text += [f"Figure: `{comparison_figures[(model, dataset)]}`", ""]
    if ablation:
        text += ablation_section(ablation, args.budget, figure_names or {})
    return "\n".join(text)


# ---------------------------------------------------------------- the comparison's figure

#: Line colour per method in the comparison's figure.
METHOD_COLORS = {"plain": "k", "mg": "tab:blue", "sam": "tab:orange", "asam": "tab:green", "gnp": "tab:red"}


def selection_curve(row: dict) -> list[float]:
    """Test METRIC at the "none" selection within the first ``t`` epochs, for every ``t`` (index ``t - 1``).

    One pass of the trainer's own rule (:class:`~mirrorgrad_jax.evaluation.EarlyStopping`:
    strict improvement of the value rounded to 4 decimals), so entry ``t - 1`` equals
    ``selection(row, t).test[METRIC]``.
    """
    from mirrorgrad_jax.evaluation import EarlyStopping

    valid, test = row["curves"]["valid"][METRIC], row["curves"]["test"][METRIC]
    stopper = EarlyStopping(metric=METRIC, patience=len(valid))
    out, current = [], test[0]
    for epoch, value in enumerate(valid):
        if stopper.update(value, epoch):
            current = test[epoch]
        out.append(current)
    return out


def plot_comparison(cells: dict, chosen: dict, budget: int, title: str, path: str, batches: int | None = None) -> bool:
    """The cell's methods as curves: test METRIC at the best validation epoch so far, mean over seeds (band: std).

    Left, against epochs: the table's "equal epochs" column reads every curve at the
    dotted line (``budget``). Right, against gradient evaluations in plain epochs (epochs x
    :func:`ideal_cost` for an epoch of ``batches`` batches), cut at ``2 budget``: the "equal gradient evaluations" column reads every
    curve at that right edge. Each method at its chosen knob. The y axis starts at 85% of the
    lowest final mean, where the methods' differences show. Returns False (and writes nothing) when the cell has no runs.
    """
    if not any(cells.values()):
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    finals, tops = [], []
    for method, runs in cells.items():
        if not runs:
            continue
        curves = [selection_curve(r) for r in runs.values()]
        n = min(len(c) for c in curves)
        values = np.array([c[:n] for c in curves])
        mean = values.mean(0)
        std = values.std(0, ddof=1) if len(values) > 1 else np.zeros_like(mean)  # the tables' sample std
        finals.append(mean[-1])
        tops.append(float((mean + std).max()))
        epochs = np.arange(1, n + 1)
        name, _ = KNOBS[method]
        label = method if name is None else f"{method} ({name} {chosen[method]:g})"
        for ax, xs in ((axes[0], epochs), (axes[1], epochs * ideal_cost(method, batches))):
            ax.plot(xs, mean, color=METHOD_COLORS[method], lw=1.3, label=f"{label}, {len(runs)} seeds")
            ax.fill_between(xs, mean - std, mean + std, color=METHOD_COLORS[method], alpha=0.15, lw=0)
    # The methods differ at the top, by a few thousandths: the first epochs' climb is cut off.
    axes[0].set_ylim(0.85 * min(finals), max(tops) + 0.1 * (max(tops) - 0.85 * min(finals)))
    axes[0].set_xlabel("epochs")
    axes[1].set_xlabel("gradient evaluations, in plain epochs (epochs x cost per batch)")
    axes[0].axvline(budget, color="grey", ls=":", lw=1)
    axes[1].set_xlim(0, 2 * budget)
    axes[0].set_ylabel(f"test {METRIC} at the best validation epoch so far")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ---------------------------------------------------------------- ablation (issue 28)

#: ``--ablation`` axes, in the order they run: each moves one of MG's knobs away from alpha1 1, beta 3.
ABLATION_VALUES = {
    "alpha2": (0.05, 0.1, 0.2, 0.3, 0.5),  # at alpha1 1, beta 3
    "beta": (1, 2, 3, 5, 10),  # at alpha1 1, alpha2 BETA_AXIS_ALPHA2
    "alpha1": (0.5, 1.0, 2.0),  # at beta 3 and the alpha2 chosen on the alpha2 axis
}
#: alpha1 of the alpha2 and beta axes (the released value).
ABLATION_ALPHA1 = 1.0
#: alpha2 of the beta axis: fixed at the accuracy table's and the patience sweep's MG arm, so that the beta axis
#: does not wait for the alpha2 axis and can run alone (``--ablation beta``).
BETA_AXIS_ALPHA2 = 0.2
#: The learning rate of rows written before ``run_one`` recorded it: TrainConfig's default, which every run here used.
UNRECORDED_LEARNING_RATE = 1e-3
#: Figure style per axis: marker, colour, the knob's symbol on the points.
AXIS_STYLE = {"alpha2": ("o", "tab:blue", "α2"), "alpha1": ("s", "tab:orange", "α1"), "beta": ("^", "tab:green", "β")}
#: Where the labels of close points go, in turn (points, from the marker).
LABEL_OFFSETS = ((4, 7), (4, -13), (4, 19), (4, -25), (4, 31))


def parse_ablation(text: str) -> tuple[str, ...]:
    """``"beta,alpha2"`` -> the axes named, in run order (alpha2, beta, alpha1).

    Raises:
      ValueError: no axis named, or one that is not an axis (the message names it and the choices).
    """
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise ValueError(f"name at least one axis ({', '.join(ABLATION_VALUES)}, comma-separated)")
    for name in names:
        if name not in ABLATION_VALUES:
            raise ValueError(f"unknown axis {name!r} (choose from {', '.join(ABLATION_VALUES)}, comma-separated)")
    return tuple(axis for axis in ABLATION_VALUES if axis in names)


def implicit_penalty(alpha1: float, alpha2: float, learning_rate: float) -> float:
    """MG's implicit gradient-norm penalty ``alpha1 alpha2 lr / (2 (alpha1 - alpha2))`` (the spec's section 2).

    The derivation is one mirror iteration under plain SGD, to second order in the
    learning rate; beta does not enter it (beta sets how often a mirror iteration
    happens, not what one does).

    Raises:
      ValueError: unless ``alpha1 > alpha2 > 0`` (at ``alpha1 = alpha2`` the formula divides by zero).
    """
    if not alpha1 > alpha2 > 0:
        raise ValueError(f"the implicit penalty needs alpha1 > alpha2 > 0, got alpha1 {alpha1:g} and alpha2 {alpha2:g}")
    return alpha1 * alpha2 * learning_rate / (2.0 * (alpha1 - alpha2))


def learning_rate_of(row: dict) -> float:
    """The learning rate a row trained with (:data:`UNRECORDED_LEARNING_RATE` for rows that predate recording it)."""
    return row.get("learning_rate", UNRECORDED_LEARNING_RATE)


def ablation_runs(done: list[dict], model: str, dataset: str, budget: int) -> dict:
    """One cell's runs for the ablation: :class:`Arm` (None for plain) -> {seed: row}.

    Besides the ablation's own rows, the comparison's plain rows are the reference and its
    MG rows (alpha1 1, beta 3, alpha2 its knob) are the ablation arms with those settings:
    the same training, so neither is run twice.
    """
    out: dict = {}
    for r in done:
        if (r["model"], r["dataset"], r["budget"]) != (model, dataset, budget):
            continue
        if r.get("study") == "ablation":
            key = Arm(r["alpha1"], r["alpha2"], r["beta"])
        elif is_comparison(r) and r["method"] == "plain":
            key = None
        elif is_comparison(r) and r["method"] == "mg":
            key = Arm(ABLATION_ALPHA1, r["knob"], MG_BETA)
        else:
            continue
        out.setdefault(key, {}).setdefault(r["seed"], r)
    return out


def chosen_alpha2(runs: dict) -> float | None:
    """The alpha2 axis's value whose first-seed run has the best validation METRIC (the "none" selection over its epochs).

    None until every alpha2 of the axis has run on the first seed; ties go to the smaller alpha2.
    """
    values = ABLATION_VALUES["alpha2"]
    firsts = [runs.get(Arm(ABLATION_ALPHA1, a, MG_BETA), {}).get(FIRST_SEED) for a in values]
    if any(r is None for r in firsts):
        return None
    scores = [selection(r, r["epochs"]).valid[METRIC] for r in firsts]
    return values[max(range(len(values)), key=lambda i: (scores[i], -i))]


def axis_arms(axis: str, chosen: float | None) -> list[tuple[float, Arm | str]]:
    """``(value, Arm)`` for each value of one axis, or ``(value, why it does not run)``.

    The alpha1 axis runs at beta 3 and the alpha2 chosen on the alpha2 axis (``chosen``);
    before that choice exists, or where ``alpha1 <= alpha2`` (which MGConfig refuses: the
    mirror iteration no longer descends and the penalty's denominator is zero or negative),
    a value gets its reason instead of an arm.
    """
    out: list[tuple[float, Arm | str]] = []
    for value in ABLATION_VALUES[axis]:
        if axis == "alpha2":
            out.append((value, Arm(ABLATION_ALPHA1, value, MG_BETA)))
        elif axis == "beta":
            out.append((value, Arm(ABLATION_ALPHA1, BETA_AXIS_ALPHA2, value)))
        elif chosen is None:
            out.append((value, f"waits for the alpha2 axis (its choice needs every alpha2 on seed {FIRST_SEED})"))
        elif value <= chosen:
            out.append((value, f"not run: alpha1 {value:g} <= alpha2 {chosen:g}, which MG refuses (no descent, penalty undefined)"))
        else:
            out.append((value, Arm(value, chosen, MG_BETA)))
    return out


def ablation_pending(done: list[dict], models: list[str], datasets: list[str], seeds: int, budget: int, axes: tuple[str, ...]) -> list[tuple]:
    """(model, dataset, method, knob, seed) still to run for the ablation; ``knob`` is an :class:`Arm` for MG.

    Per cell, the first seed's runs come first: plain (only where the comparison has not run
    it), then each axis's arms (an arm two axes share runs once), then the other seeds. The
    alpha1 axis's arms appear once the alpha2 axis has run on the first seed (the caller
    asks again after each round); naming alpha1 without alpha2 still runs the alpha2 arms
    on the first seed, which its choice needs.
    """
    todo = []
    for dataset in datasets:
        for model in models:
            runs = ablation_runs(done, model, dataset, budget)
            chosen = chosen_alpha2(runs)
            arms = [arm for axis in axes for _, arm in axis_arms(axis, chosen) if isinstance(arm, Arm)]
            choice_basis = [arm for _, arm in axis_arms("alpha2", None)] if "alpha1" in axes else []
            for seed in range(FIRST_SEED, FIRST_SEED + seeds):
                wanted = [None, *(choice_basis if seed == FIRST_SEED else []), *arms]
                for arm in dict.fromkeys(wanted):
                    if seed not in runs.get(arm, {}):
                        todo.append((model, dataset, "plain", None, seed) if arm is None else (model, dataset, "mg", arm, seed))
    return todo


def own_axes(runs: dict) -> tuple[str, ...]:
    """The axes an ablation row exists for beyond the arms they share (beta 3; alpha2 0.2; alpha1 1)."""
    rows = [r for seeds in runs.values() for r in seeds.values() if r.get("study") == "ablation"]
    found = {
        "alpha2": any(r["alpha1"] == ABLATION_ALPHA1 and r["beta"] == MG_BETA and r["alpha2"] != BETA_AXIS_ALPHA2 for r in rows),
        "beta": any(r["beta"] != MG_BETA for r in rows),
        "alpha1": any(r["alpha1"] != ABLATION_ALPHA1 for r in rows),
    }
    return tuple(axis for axis in ABLATION_VALUES if found[axis])


def ablation_points(runs: dict, axes: tuple[str, ...]) -> list[dict]:
    """One dict per axis value: its arm (or the note saying why there is none), the "none" test METRIC per
    seed, the paired difference against plain (None without a shared seed), the best epochs, the penalty."""
    plain = {s: selection(r, r["epochs"]).test[METRIC] for s, r in runs.get(None, {}).items()}
    plain_lrs = sorted({learning_rate_of(r) for r in runs.get(None, {}).values()})
    chosen = chosen_alpha2(runs)
    points = []
    for axis in axes:
        for value, arm in axis_arms(axis, chosen):
            seeds = runs.get(arm, {}) if isinstance(arm, Arm) else {}
            picks = {s: selection(r, r["epochs"]) for s, r in sorted(seeds.items())}
            test = {s: p.test[METRIC] for s, p in picks.items()}
            lrs = sorted({learning_rate_of(r) for r in seeds.values()}) or plain_lrs or [UNRECORDED_LEARNING_RATE]
            points.append({
                "axis": axis,
                "value": value,
                "arm": arm if isinstance(arm, Arm) else None,
                "note": None if isinstance(arm, Arm) else arm,
                "test": test,
                "difference": paired_difference(plain, test) if set(plain) & set(test) else None,
                "best_epochs": [p.best_epoch for p in picks.values()],
                "epochs": max((r["epochs"] for r in seeds.values()), default=None),
                "learning_rates": lrs,
                "penalty": implicit_penalty(arm.alpha1, arm.alpha2, lrs[0]) if isinstance(arm, Arm) else None,
            })  # fmt: skip
    return points


def spearman(xs: list[float], ys: list[float]) -> float | None:
    """Spearman's rank correlation (SciPy's, ties at their mean rank); None for fewer than 3 pairs or a constant side."""
    if len(xs) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    from scipy.stats import spearmanr  # SciPy comes with JAX

    return float(spearmanr(xs, ys).statistic)


ABLATION_COLUMNS = (
    ("axis", "the knob this row varies (plain: the reference every difference is taken against)"),
    ("alpha1 / alpha2 / beta", "the arm's MG settings"),
    ("implicit penalty", "alpha1 alpha2 lr / (2 (alpha1 - alpha2)), lr the run's learning rate (beta is not in it)"),
    ("seeds", "runs finished"),
    (f"test {METRIC} (none)", "at each run's best validation epoch over its whole budget, mean ± std over seeds"),
    ("minus plain (paired)", "the arm minus plain on the same seed, mean ± std (seeds where the arm is above / seeds paired)"),
    ("best epoch per seed", "each run's best validation epoch, 0-based, by seed, and the epochs it trained"),
)


def _penalty_text(point: dict) -> str:
    if point["penalty"] is None:
        return "-"
    text = f"{point['penalty']:.2e}"
    if len(point["learning_rates"]) > 1:
        text += f" (learning rates differ across seeds: {', '.join(f'{lr:g}' for lr in point['learning_rates'])}; the first used)"
    return text


def ablation_table(runs: dict, axes: tuple[str, ...]) -> list[str]:
    """One cell's ablation table, then the rank correlation of penalty and difference and any runs still improving."""
    points = ablation_points(runs, axes)
    plain = runs.get(None, {})
    lines = markdown_table((
        "axis", "alpha1", "alpha2", "beta", "implicit penalty", "seeds", f"test {METRIC} (none)", "minus plain (paired)",
        "best epoch per seed",
    ))  # fmt: skip
    plain_values = [selection(r, r["epochs"]).test[METRIC] for r in plain.values()]
    plain_epochs = max((r["epochs"] for r in plain.values()), default=0)
    plain_best = ", ".join(str(selection(plain[s], plain[s]["epochs"]).best_epoch) for s in sorted(plain))
    lines.append(markdown_row(["plain (reference)", "-", "-", "-", "0", len(plain), format_mean_std(plain_values), "-",
                               f"{plain_best} of {plain_epochs}" if plain else "not run yet"]))  # fmt: skip
    still = late_runs(plain, plain_epochs) if plain else []
    late = [f"plain ({len(still)} of {len(plain)})"] if still else []
    seen = set()
    for p in points:
        arm = p["arm"]
        settings = [f"{arm.alpha1:g}", f"{arm.alpha2:g}", f"{arm.beta}"] if arm else (
            [f"{p['value']:g}", "-", "-"] if p["axis"] == "alpha1" else ["-", "-", "-"]
        )
        if arm is None:
            lines.append(markdown_row([p["axis"], *settings, "-", 0, p["note"], "-", "-"]))
            continue
        d = p["difference"]
        lines.append(markdown_row([
            p["axis"], *settings, _penalty_text(p), len(p["test"]),
            format_mean_std(list(p["test"].values())) if p["test"] else "not run yet",
            f"{d.mean:+.4f} ± {d.std:.4f} ({d.positive}/{d.n})" if d else "-",
            f"{', '.join(map(str, p['best_epochs']))} of {p['epochs']}" if p["test"] else "-",
        ]))  # fmt: skip
        seeds = runs.get(arm, {})
        still = late_runs(seeds, p["epochs"]) if seeds and arm not in seen else []
        seen.add(arm)  # an arm two axes share is listed once
        if still:
            late.append(f"alpha1 {arm.alpha1:g} alpha2 {arm.alpha2:g} beta {arm.beta} ({len(still)} of {len(seeds)})")
    ranked = {p["arm"]: p for p in points if p["axis"] in ("alpha2", "alpha1") and p["difference"] is not None}
    rho = spearman([p["penalty"] for p in ranked.values()], [p["difference"].mean for p in ranked.values()])
    if rho is not None:
        lines += [
            "",
            (
                f"Rank correlation (Spearman) of the implicit penalty with the mean difference over the {len(ranked)} "
                f"alpha2 and alpha1 arms: {rho:+.2f} (+1: accuracy rises with the penalty at every step; beta arms "
                "left out, they share one penalty)."
            ),
        ]
    if late:
        lines += [
            "",
            f"**Still improving at the end of the budget** (best validation epoch in its last {LATE_FRACTION:.0%}): {', '.join(late)}.",
        ]
    return lines


def ablation_cells(done: list[dict], models: list[str], datasets: list[str], budget: int, axes: tuple[str, ...]) -> list[tuple]:
    """``(model, dataset, runs, axes shown)`` of every cell the ablation section covers.

    A cell is covered when it has ablation rows, or when ``axes`` were asked for and it has
    any run; it shows the axes asked for and every axis it has rows of its own for.
    """
    out = []
    for dataset in datasets:
        for model in models:
            runs = ablation_runs(done, model, dataset, budget)
            own = own_axes(runs)
            if own or (axes and runs):
                out.append((model, dataset, runs, tuple(a for a in ABLATION_VALUES if a in own or a in axes)))
    return out


def ablation_section(cells: list[tuple], budget: int, figure_names: dict) -> list[str]:
    """The ablation's markdown: protocol, what the columns mean, one table per cell (``figure_names``: cell -> figure path)."""
    rows = [r for _, _, runs, _ in cells for seeds in runs.values() for r in seeds.values() if r.get("study") == "ablation"]
    text = [
        "## MG ablations: alpha2, beta, alpha1",
        "",
        (
            f"Protocol: as MG's arm above, each arm trains {2 * budget} epochs with no early stopping and reports test "
            f"{METRIC} at its best validation epoch over all of them (\"none\"), paired by seed with plain (the comparison's "
            f"plain runs, reused; trained here only where the comparison has none). Axes: alpha2 in "
            f"{{{', '.join(f'{v:g}' for v in ABLATION_VALUES['alpha2'])}}} at alpha1 1, beta 3; beta in "
            f"{{{', '.join(map(str, ABLATION_VALUES['beta']))}}} at alpha1 1, alpha2 {BETA_AXIS_ALPHA2:g}; alpha1 in "
            f"{{{', '.join(f'{v:g}' for v in ABLATION_VALUES['alpha1'])}}} at beta 3 and the alpha2 with the best validation "
            f"{METRIC} on seed {FIRST_SEED} along the alpha2 axis (so it runs after that axis; values with alpha1 <= alpha2 are "
            "not run: MG needs alpha1 > alpha2). Arms the comparison already trained with the same settings (MG alpha1 1, "
            "beta 3, its alpha2 values) are read from its rows.  "
        ),
        (
            "The implicit penalty is the spec's second-order reading of one mirror iteration under plain SGD (section 2); "
            "beta is not in it (beta sets how often a mirror batch comes: the reference restarts the count every epoch, "
            "so batch 0 of every epoch mirrors), and these runs use Adam with MG on the gradient, as the reference does, "
            "where the formula gives the knobs' scale rather than a penalty Adam is shown to apply. The alpha1 axis also "
            "changes the net step of a mirror batch, (alpha1 - alpha2) lr.  "
        ),
        (
            f"Ablation runs by device (reused comparison runs counted above): {device_counts(rows) or 'none yet'}; "
            f"{sum(r['seconds'] for r in rows) / 3600:.1f} h of training and evaluation recorded.  "
        ),
        "",
        "Columns:",
        "",
        *(f"- {name}: {meaning}" for name, meaning in ABLATION_COLUMNS),
        "",
    ]
    for model, dataset, runs, axes in cells:
        text += [f"### {model} on {dataset}", ""]
        if "alpha1" in axes:
            chosen = chosen_alpha2(runs)
            text += [
                f"alpha1 axis at alpha2 {chosen:g}, chosen on seed {FIRST_SEED}'s validation {METRIC} along the alpha2 axis."
                if chosen is not None
                else f"alpha1 axis: waits for every alpha2 of the alpha2 axis on seed {FIRST_SEED}.",
                "",
            ]
        text += [*ablation_table(runs, axes), ""]
        if (model, dataset) in figure_names:
            text += [f"Figure: `{figure_names[(model, dataset)]}`", ""]
    return text


def plot_ablation(runs: dict, axes: tuple[str, ...], title: str, path: str) -> bool:
    """Test METRIC ("none") minus plain, paired by seed (mean, error bars the seeds' std), against the implicit penalty.

    Log x axis; one marker per axis. The beta arms share one penalty (beta is not in the
    formula), so their markers are spread a few percent around it to stay apart. Returns
    False (and writes nothing) when no arm has a seed paired with plain yet.
    """
    points = [p for p in ablation_points(runs, axes) if p["difference"] is not None]
    if not points:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    ax.axhline(0.0, color="k", lw=0.8, label="plain (the reference)")
    chosen = chosen_alpha2(runs)
    labels = {
        "alpha2": "alpha2 axis (alpha1 1, beta 3)",
        "alpha1": f"alpha1 axis (beta 3, alpha2 {chosen:g} chosen on validation)" if chosen is not None else "alpha1 axis",
        "beta": f"beta axis (alpha1 1, alpha2 {BETA_AXIS_ALPHA2:g}); beta is not in the penalty: spread around it",
    }
    for axis in ("alpha2", "alpha1", "beta"):
        drawn = sorted((p for p in points if p["axis"] == axis), key=lambda p: p["value"])
        if not drawn:
            continue
        marker, color, symbol = AXIS_STYLE[axis]
        xs = [p["penalty"] for p in drawn]
        if axis == "beta":
            xs = [x * 1.08 ** (i - (len(xs) - 1) / 2) for i, x in enumerate(xs)]
        ys = [p["difference"].mean for p in drawn]
        ax.errorbar(
            xs, ys, yerr=[p["difference"].std for p in drawn], marker=marker, color=color, capsize=3, ms=6,
            ls="none" if axis == "beta" else "-", lw=1.0, label=labels[axis],
        )  # fmt: skip
        for i, (x, y, p) in enumerate(zip(xs, ys, drawn)):
            # the beta and alpha1 arms sit close together: their labels take turns above and below
            offset = (5, 6) if axis == "alpha2" else LABEL_OFFSETS[i % len(LABEL_OFFSETS)]
            ax.annotate(f"{symbol}={p['value']:g}", (x, y), textcoords="offset points", xytext=offset, fontsize=8, color=color)
    ax.set_xscale("log")
    ax.margins(x=0.08, y=0.2)  # room for the labels
    ax.set_xlabel("implicit penalty  alpha1 · alpha2 · lr / (2 (alpha1 − alpha2))  (log scale)")
    ax.set_ylabel(f"test {METRIC} (none) minus plain, paired by seed")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ---------------------------------------------------------------- timing


BABY_GRAPH = "baby-graph"  # --timing's name for the Baby-scale graph with random features (--graph)


def mirror_batches(batches: int, beta: int = MG_BETA) -> int:
    """How many of an epoch's ``batches`` batches MG mirrors, by the trainer's own schedule.

    The reference schedule (:func:`~mirrorgrad_jax.optim.is_mirror_batch`) restarts the
    index every epoch and mirrors batches 0, beta, 2 beta, ...: ``ceil(batches / beta)``.
    """
    from mirrorgrad_jax.optim import is_mirror_batch

    return sum(bool(is_mirror_batch(b, beta, steps_per_epoch=batches)) for b in range(batches))


def ideal_cost(method: str, batches: int | None, beta: int = MG_BETA) -> float:
    """Gradient evaluations per batch of one epoch of ``batches`` batches, relative to plain's.

    MG's mirror batches (:func:`mirror_batches`) take a second gradient; SAM, ASAM and GNP
    take two on every batch. With ``batches`` unknown (None), MG's average ``1 + 1/beta``.
    """
    if method == "mg" and batches:
        return 1.0 + mirror_batches(batches, beta) / batches
    return COST[method]


def timing_dataset(name: str, graph: str):
    """The dataset ``--timing`` trains on: a registered name, or ``baby-graph`` read from ``graph``."""
    from mirrorgrad_jax.data import load_dataset

    if name == BABY_GRAPH:
        return baby_dataset(graph)
    return load_dataset(name, verbose=False)


#: Each method's knob in the timing sittings (MG alpha2, SAM and ASAM rho, GNP alpha).
TIMING_KNOBS = {"plain": None, "mg": 0.2, "sam": 0.05, "asam": 0.5, "gnp": 0.5}


def _timing_setup(model: str, dataset_name: str, epochs: int, graph: str):
    """``(dataset, model class, TrainConfig, batches per epoch)`` of a timing sitting (both modes)."""
    from mirrorgrad_jax.models import get_model
    from mirrorgrad_jax.train import TrainConfig

    dataset = timing_dataset(dataset_name, graph)
    cfg = TrainConfig(epochs=epochs, patience=epochs, valid_metric=METRIC, seed=FIRST_SEED)
    return dataset, get_model(model), cfg, cfg.steps_per_epoch(len(dataset.train))


def timing(model: str, dataset_name: str, epochs: int, rounds: int, graph: str = DEFAULT_GRAPH) -> list[str]:
    """Each method trained ``epochs`` epochs in turn, ``rounds`` times, round-robin; median epoch time / plain's.

    Returns markdown lines: one line naming the epoch's batches, then per method its median
    training time per epoch (the first epoch of each run, which compiles, left out), the
    ratio to plain's, the ideal ratio (:func:`ideal_cost`) and the ratio over that ideal.
    """
    from mirrorgrad_jax.models import build_config
    from mirrorgrad_jax.train import train

    dataset, cls, cfg, batches = _timing_setup(model, dataset_name, epochs, graph)
    times: dict = {m: [] for m in KNOBS}
    for _ in range(rounds):
        for method in KNOBS:
            mg, method_config = configs(method, TIMING_KNOBS[method])
            result = train(cls, build_config(cls, {}), dataset, cfg, mg, method=method_config, log=None)
            times[method] += [h["train_s"] for h in result.history[1:]]
    plain = statistics.median(times["plain"])
    lines = [
        f"{batches} batches of {cfg.batch_size} an epoch; each method's {epochs - 1} timed epochs (of {epochs}) "
        f"x {rounds} rounds, round-robin; MG at beta {MG_BETA} mirrors {mirror_batches(batches)} of them.",
        "",
        *markdown_table(("method", "median epoch (s)", "/ plain", "ideal", "/ ideal")),
    ]
    for method, values in times.items():
        ratio, ideal = statistics.median(values) / plain, ideal_cost(method, batches)
        lines.append(markdown_row([method, f"{statistics.median(values):.3f}", f"{ratio:.2f}", f"{ideal:.2f}", f"{ratio / ideal:.2f}"]))
    return lines


def interleaved_timing(model: str, dataset_name: str, epochs: int, graph: str = DEFAULT_GRAPH) -> list[str]:
    """One epoch of each method in turn, ``epochs`` times, on the same batches; median epoch time / plain's.

    Each method's model, optimizer and compiled epoch (the trainer's
    :class:`~mirrorgrad_jax.train.engine.EpochEngine`) are built once, from the same seed;
    every epoch draws one set of batches and each method trains one epoch on it, in the
    order of ``KNOBS`` on even epochs and reversed on odd ones. Only ``run_epoch`` (until
    its parameters are ready) is timed; the first epoch, which compiles, is left out.

    Returns markdown lines as :func:`timing`, with each method's quartiles.
    """
    import jax
    import numpy as np
    from flax import nnx

    from mirrorgrad_jax.data import epoch_batches
    from mirrorgrad_jax.models import build_config
    from mirrorgrad_jax.train import resolved_model_config
    from mirrorgrad_jax.train.engine import EpochEngine
    from mirrorgrad_jax.train.optimizer import build_optimizer

    dataset, cls, cfg, batches = _timing_setup(model, dataset_name, epochs, graph)
    arms = {}
    for method in KNOBS:
        mg, method_config = configs(method, TIMING_KNOBS[method])
        net = cls(dataset, resolved_model_config(cls, build_config(cls, {}), mg), rngs=nnx.Rngs(params=FIRST_SEED))
        tx = build_optimizer(cfg, mg, batches, method=method_config)
        engine = EpochEngine(net, tx, mg, cfg, perturbed=method in TWO_PASS)
        arms[method] = {"net": net, "engine": engine, "state": (engine.params, engine.init_opt_state(tx)), "rng": np.random.default_rng(FIRST_SEED)}
    rng = np.random.default_rng(FIRST_SEED)
    times: dict = {m: [] for m in KNOBS}
    for epoch in range(epochs):
        drawn = epoch_batches(dataset, cfg.batch_size, rng, negatives=cls.uses_negatives)
        full = None if drawn.full is None or len(drawn.full) == 0 else drawn.full
        key = jax.random.fold_in(jax.random.key(FIRST_SEED), epoch)
        for method in list(KNOBS) if epoch % 2 == 0 else list(KNOBS)[::-1]:
            arm = arms[method]
            arm["net"].pre_epoch(arm["rng"])
            arm["engine"].refresh_constants(arm["net"])
            params, opt_state = arm["state"]
            jax.block_until_ready((arm["engine"].consts, params, opt_state))  # pre_epoch's device work is not timed
            start = time.perf_counter()
            params, opt_state, _ = arm["engine"].run_epoch(params, opt_state, full, drawn.last, key, epoch * batches, batches)
            jax.block_until_ready(params)
            if epoch > 0:
                times[method].append(time.perf_counter() - start)
            arm["state"] = (params, opt_state)
            nnx.update(arm["net"], arm["engine"].cache)
    plain = statistics.median(times["plain"])
    lines = [
        f"{batches} batches of {cfg.batch_size} an epoch; {len(times['plain'])} timed epochs (of {epochs}) per method, one epoch of each "
        f"method in turn on the same batches (the order reversed every other epoch); MG at beta {MG_BETA} mirrors "
        f"{mirror_batches(batches)} of them. Timed: the trainer's epoch dispatch alone (no batch drawing, no pre_epoch).",
        "",
        *markdown_table(("method", "median epoch (s)", "quartiles (s)", "/ plain", "ideal", "/ ideal")),
    ]
    for method, values in times.items():
        ratio, ideal = statistics.median(values) / plain, ideal_cost(method, batches)
        q1, q3 = (float(np.percentile(values, q)) for q in (25, 75))
        lines.append(markdown_row([method, f"{statistics.median(values):.3f}", f"{q1:.3f}-{q3:.3f}", f"{ratio:.2f}", f"{ideal:.2f}", f"{ratio / ideal:.2f}"]))
    return lines


# ---------------------------------------------------------------- main


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="vbpr")
    parser.add_argument("--datasets", default="synthetic")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget", type=int, default=100, help="epochs of the two-pass methods (plain and MG train twice as many)")
    parser.add_argument("--runs", default="benchmarks/results/flat_minima_runs.jsonl")
    parser.add_argument("--out", default=None, help="write the markdown summary here")
    parser.add_argument("--summarise-only", action="store_true")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--stop-after", type=float, default=None, help="start no new run after this many seconds")
    parser.add_argument("--timing", action="store_true", help="time the methods side by side instead (first model and dataset)")
    parser.add_argument("--epochs", type=int, default=4, help="--timing: epochs per method and round")
    parser.add_argument("--rounds", type=int, default=None, help="--timing: round-robin rounds (default 2; not with --interleave)")
    parser.add_argument("--interleave", action="store_true", help="--timing: one epoch of each method in turn on the same batches")
    parser.add_argument("--graph", default=DEFAULT_GRAPH, help=f"--timing --datasets {BABY_GRAPH}: the folder holding baby.inter")
    parser.add_argument(
        "--ablation", metavar="AXES", default=None,
        help="train MG's ablation instead of the comparison: any of alpha2, beta, alpha1, comma-separated (see Usage)",
    )  # fmt: skip
    parser.add_argument("--figures", default=None, help="folder for the figures (default: figures/ next to --out)")
    parser.add_argument("--_shard", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.budget < 2 or args.seeds < 1:
        parser.error("--budget must be >= 2 and --seeds >= 1")
    args.ablation_axes = ()
    if args.ablation is not None:
        try:
            args.ablation_axes = parse_ablation(args.ablation)
            if args.timing:
                raise ValueError("times the comparison's methods; leave out --timing to run the ablation")
        except ValueError as error:
            print(f"flat_minima.py: error: --ablation: {error}", file=sys.stderr)
            raise SystemExit(2) from None
    models = [m for m in args.models.split(",") if m]
    datasets = [d for d in args.datasets.split(",") if d]
    args.models_list, args.datasets_list = models, datasets
    tokens = argv if argv is not None else sys.argv[1:]
    if not args.summarise_only:  # before anything trains: a typo would otherwise fail every run
        _check_names(models, datasets, timing=args.timing)
    if args.interleave and not args.timing:
        print("flat_minima.py: error: --interleave is a way of --timing: give --timing too", file=sys.stderr)
        raise SystemExit(2)
    if args.interleave and args.rounds is not None:
        print("flat_minima.py: error: --interleave runs one epoch of each method in turn: it takes --epochs, not --rounds", file=sys.stderr)
        raise SystemExit(2)
    if args.timing:
        args.rounds = 2 if args.rounds is None else args.rounds
        if args.epochs < 2 or args.rounds < 1:
            parser.error("--timing needs --epochs >= 2" + ("" if args.interleave else " and --rounds >= 1"))
        if datasets[0] == BABY_GRAPH and not os.path.exists(os.path.join(args.graph, "baby.inter")):
            print(f"flat_minima.py: error: --datasets {BABY_GRAPH}: no baby.inter in {args.graph} (pass --graph)", file=sys.stderr)
            raise SystemExit(2)
        text = "\n".join([
            f"{TIMING_HEADING}{', interleaved' if args.interleave else ''}: {models[0]} on {datasets[0]}", "",
            *report_header(command_as_run("flat_minima.py", tokens)), "",
            *(interleaved_timing(models[0], datasets[0], args.epochs, args.graph) if args.interleave
              else timing(models[0], datasets[0], args.epochs, args.rounds, args.graph)), "",
        ])  # fmt: skip
        print(text)
        if args.out:
            with open(args.out, "a") as f:
                f.write("\n" + text + "\n")
        return
    started = time.perf_counter()
    if not args.summarise_only:
        previous = None
        while True:  # the chosen knobs unlock the other seeds' runs (and the ablation's alpha1 axis)
            done = read_runs(args.runs)
            if args.ablation_axes:
                todo = ablation_pending(done, models, datasets, args.seeds, args.budget, args.ablation_axes)
            else:
                todo = pending_runs(done, models, datasets, args.seeds, args.budget)
            if not todo:
                break
            if args._shard:
                index, count = (int(x) for x in args._shard.split("/"))
                run_pending(todo[index::count], args, started)
                return
            if todo == previous:  # nothing finished last round: every pending run failed (reported above)
                print(f"{len(todo)} runs still pending after failing; stopping", file=sys.stderr, flush=True)
                break
            previous = todo
            print(f"{len(todo)} runs pending", file=sys.stderr, flush=True)
            if args.workers > 1:
                run_workers(os.path.abspath(__file__), _without(tokens, "--workers", "--out"), args.workers)
            else:
                run_pending(todo, args, started)
            if args.stop_after is not None and time.perf_counter() - started > args.stop_after:
                break
    done = [r for r in read_runs(args.runs) if r["model"] in models and r["dataset"] in datasets]
    figure_names = {}
    args.comparison_figures = {}
    if args.out or args.figures:
        folder = args.figures or os.path.join(os.path.dirname(args.out), "figures")

        def shown(path):
            return os.path.relpath(path, os.path.dirname(os.path.abspath(args.out))) if args.out else path

        for model, dataset in sorted({(r["model"], r["dataset"]) for r in done if is_comparison(r) and r["budget"] == args.budget}):
            cells = cell_rows(done, model, dataset, args.budget)
            if set(cells) - {"plain"}:
                path = os.path.join(folder, f"flat_minima_{model}_{dataset}.png")
                title = f"{model} on {dataset}: the methods at equal epochs and at equal gradient evaluations, no early stop"
                batches = batches_per_epoch(r for runs in cells.values() for r in runs.values())
                if plot_comparison(cells, chosen_knobs(done, model, dataset, args.budget), args.budget, title, path, batches):
                    args.comparison_figures[(model, dataset)] = shown(path)
        for model, dataset, runs, axes in ablation_cells(done, models, datasets, args.budget, args.ablation_axes):
            path = os.path.join(folder, f"flat_minima_ablation_{model}_{dataset}.png")
            title = f"{model} on {dataset}: MG ablation, {2 * args.budget} epochs, no early stop"
            if plot_ablation(runs, axes, title, path):
                figure_names[(model, dataset)] = shown(path)
    text = render(done, args, command_as_run("flat_minima.py", tokens), figure_names)
    print(text)
    if args.out:
        kept = _timing_sections(args.out)
        with open(args.out, "w") as f:
            f.write(text.rstrip("\n") + "\n" + ("\n" + kept if kept else ""))


#: The heading every ``--timing`` section of the summary starts with (appended, never regenerated).
TIMING_HEADING = "## Epoch time side by side"


def _timing_sections(path: str) -> str:
    """The ``--timing`` sections an existing summary holds, from the first of them to its end:
    a summary rewritten from the runs file keeps them (they come from timing runs, which the
    runs file does not record)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return ""
    start = text.find("\n" + TIMING_HEADING)
    return text[start + 1 :] if start >= 0 else ""


def _check_names(models: list[str], datasets: list[str], *, timing: bool) -> None:
    """Every model registered and every dataset a name or folder :func:`~mirrorgrad_jax.data.load_dataset` takes; else one line, exit 2."""
    from mirrorgrad_jax.data.catalog import DATASETS, is_dataset
    from mirrorgrad_jax.errors import UserInputError
    from mirrorgrad_jax.models import get_model

    def stop(message: str) -> None:
        print(f"flat_minima.py: error: {message}", file=sys.stderr)
        raise SystemExit(2)

    if not models or not datasets:
        stop("--models and --datasets each need at least one name")
    for model in models:
        try:
            get_model(model)
        except (UserInputError, ValueError, KeyError) as error:
            stop(f"--models: {str(error).strip(chr(39))}")
    known = set(DATASETS) - {"<folder>"} | ({BABY_GRAPH} if timing else set())
    for dataset in datasets:
        if not is_dataset(dataset) and not (timing and dataset == BABY_GRAPH):
            stop(f"--datasets: unknown dataset {dataset!r} (a name among {', '.join(sorted(known))}, or an MMRec folder)")


def _without(tokens: list[str], *names: str) -> list[str]:
    """``tokens`` without the valued options ``names`` (``--x V`` or ``--x=V``)."""
    out, skip = [], False
    for tok in tokens:
        if skip:
            skip = False
        elif tok.split("=", 1)[0] in names:
            skip = "=" not in tok
        else:
            out.append(tok)
    return out


if __name__ == "__main__":
    main()
