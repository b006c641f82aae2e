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
  gradient evaluations: plain within ``2 B`` epochs, MG within ``2 B / (1 + 1/3)`` (its cost per
  epoch at beta 3), the two-pass methods within ``B``. "Equal epochs" reads every method within ``B``.
* Wall time: ``--timing`` trains each method a few epochs in turn, round-robin, in one sitting
  on one model and dataset, and reports each epoch's median time over plain's (the first epoch,
  which compiles, is left out). Ideal: MG ``1 + 1/beta`` (fewer when the epoch's batches do not
  divide by beta), the two-pass methods 2.

Each finished run appends one JSON line to ``--runs`` (file-locked, skipped on the next start),
so a grid fills over several sessions; ``--workers N`` shares the pending runs.

Usage:
  python benchmarks/flat_minima.py --models vbpr,lightgcn --datasets synthetic --budget 100 \
      --out benchmarks/results/flat_minima.md
  python benchmarks/flat_minima.py --timing --models vbpr --datasets synthetic --epochs 4
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time

from mirrorgrad_jax.analysis.patience import paired_difference, sweep_patience

from reporting import (
    append_run,
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


def configs(method: str, knob):
    """``(MGConfig, MethodConfig)`` of one arm."""
    from mirrorgrad_jax.train import MethodConfig, MGConfig

    if method == "plain":
        return MGConfig(enabled=False), MethodConfig()
    if method == "mg":
        return MGConfig(enabled=True, alpha1=1.0, alpha2=knob, beta=MG_BETA), MethodConfig()
    fields = {"sam": {"rho": knob}, "asam": {"rho": knob, "eta": 0.01}, "gnp": {"alpha": knob, "radius": 0.05}}[method]
    return MGConfig(enabled=False), MethodConfig(name=method, **fields)


# ---------------------------------------------------------------- one run


def run_one(model: str, dataset_name: str, method: str, knob, seed: int, budget: int) -> dict:
    """Trains one arm for exactly ``budget_of(method, budget)`` epochs (patience = epochs: no early stop)."""
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
    return {
        "model": model,
        "dataset": dataset_name,
        "method": method,
        "knob": knob,
        "seed": seed,
        "budget": budget,
        "epochs": epochs,
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


def selection(row: dict, epochs: int):
    """The "none" selection within the first ``epochs`` epochs: (best validation epoch, its valid and test values)."""
    curves = row["curves"]
    n = min(epochs, len(curves["valid"][METRIC]))
    history = [
        {"epoch": e, "valid": {m: v[e] for m, v in curves["valid"].items()}, "test": {m: v[e] for m, v in curves["test"].items()}}
        for e in range(n)
    ]
    return sweep_patience(history, METRIC, [None])[None]


def equal_compute_epochs(method: str, budget: int) -> int:
    """Epochs of ``method`` that cost what ``budget`` epochs of a two-pass method cost."""
    return max(1, round(2 * budget / COST[method]))


# ---------------------------------------------------------------- the grid


def chosen_knobs(done: list[dict], model: str, dataset: str, budget: int) -> dict:
    """method -> the knob chosen on the first seed's validation (equal epochs); a method is absent until all its values ran.

    Ties go to the value listed first.
    """
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
        try:
            row = run_one(model, dataset, method, knob, seed, args.budget)
        except Exception as error:  # noqa: BLE001 (one broken run must not end the others; nothing is written for it)
            print(f"{model} {dataset} {method}={knob} seed={seed} FAILED: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
            continue
        append_run(args.runs, row)
        best = selection(row, args.budget)
        print(f"{model} {dataset} {method}={knob} seed={seed}: best valid epoch {best.best_epoch}, test {METRIC} {best.test[METRIC]:.4f} ({row['seconds']:.0f}s)", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- summary


def cell_rows(done: list[dict], model: str, dataset: str, budget: int) -> dict:
    """method -> {seed: row} at the chosen knob."""
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
    lines = markdown_table((
        "method", "knob (chosen on seed 999)", "seeds", f"test {METRIC}, equal epochs ({budget})", "minus plain (paired)",
        f"test {METRIC}, equal gradient evaluations", "minus plain (paired)", "best epoch, equal epochs (max)",
    ))  # fmt: skip
    late = []
    for method, runs in cells.items():
        name, _ = KNOBS[method]
        knob = "-" if name is None else f"{name} {chosen[method]}"
        cols = [method, knob, len(runs)]
        for epochs_of in (lambda m: budget, lambda m: equal_compute_epochs(m, budget)):
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
        for epochs in sorted({budget, equal_compute_epochs(method, budget)}):
            seeds = late_runs(runs, epochs)
            if seeds:
                late.append(f"{method} within {epochs} ({len(seeds)} of {len(runs)})")
    if late:
        lines += [
            "",
            f"**Still improving at the end of the window** (best validation epoch in its last {LATE_FRACTION:.0%}): {', '.join(late)}. "
            "Where that holds, this cell compares how fast the methods climb, not where they settle: raise `--budget`.",
        ]
    return lines


def render(done: list[dict], args, command: str) -> str:
    keys = sorted({(r["model"], r["dataset"]) for r in done if r["budget"] == args.budget})
    seconds = sum(r["seconds"] for r in done)
    text = [
        "# MG among the flat-minima methods",
        "",
        *report_header(command),
        f"Runs by device: {device_counts(done)}; {seconds / 3600:.1f} h of training and evaluation recorded.  ",
        (
            f"Protocol: fixed budgets, no early stopping; the reported test {METRIC} is at the best validation epoch "
            f"(the patience replay's \"none\"). Two-pass methods train {args.budget} epochs, plain and MG {2 * args.budget}; "
            f"\"equal epochs\" reads every method within {args.budget} epochs, \"equal gradient evaluations\" plain within "
            f"{2 * args.budget}, MG within {equal_compute_epochs('mg', args.budget)} (beta 3) and the two-pass methods within "
            f"{args.budget}. Knobs chosen on validation with seed {FIRST_SEED}. What an epoch of each costs is measured "
            "side by side (`--timing`), in the section below when present: these runs ran one after another on a "
            "shared machine, so their times are not compared.  "
        ),
        "",
    ]
    for model, dataset in keys:
        text += [f"## {model} on {dataset}", "", *cell_table(done, model, dataset, args.budget), ""]
    return "\n".join(text)


# ---------------------------------------------------------------- timing


def timing(model: str, dataset_name: str, epochs: int, rounds: int) -> list[str]:
    """Each method trained ``epochs`` epochs in turn, ``rounds`` times, round-robin; median epoch time / plain's."""
    from mirrorgrad_jax.data import load_dataset
    from mirrorgrad_jax.models import build_config, get_model
    from mirrorgrad_jax.train import TrainConfig, train

    dataset = load_dataset(dataset_name, verbose=False)
    cls = get_model(model)
    knob = {"plain": None, "mg": 0.2, "sam": 0.05, "asam": 0.5, "gnp": 0.5}
    times: dict = {m: [] for m in KNOBS}
    for _ in range(rounds):
        for method in KNOBS:
            mg, method_config = configs(method, knob[method])
            cfg = TrainConfig(epochs=epochs, patience=epochs, valid_metric=METRIC, seed=FIRST_SEED)
            result = train(cls, build_config(cls, {}), dataset, cfg, mg, method=method_config, log=None)
            times[method] += [h["train_s"] for h in result.history[1:]]
    plain = statistics.median(times["plain"])
    lines = markdown_table(("method", "median epoch (s)", "/ plain", "ideal"))
    ideal = {"plain": 1.0, "mg": COST["mg"], "sam": 2.0, "asam": 2.0, "gnp": 2.0}
    for method, values in times.items():
        lines.append(markdown_row([method, f"{statistics.median(values):.3f}", f"{statistics.median(values) / plain:.2f}", f"{ideal[method]:.2f}"]))
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
    parser.add_argument("--rounds", type=int, default=2, help="--timing: round-robin rounds")
    parser.add_argument("--_shard", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.budget < 2 or args.seeds < 1:
        parser.error("--budget must be >= 2 and --seeds >= 1")
    models = [m for m in args.models.split(",") if m]
    datasets = [d for d in args.datasets.split(",") if d]
    tokens = argv if argv is not None else sys.argv[1:]
    if args.timing:
        if args.epochs < 2 or args.rounds < 1:
            parser.error("--timing needs --epochs >= 2 and --rounds >= 1")
        text = "\n".join([
            f"## Epoch time side by side: {models[0]} on {datasets[0]}", "",
            *report_header(command_as_run("flat_minima.py", tokens)), "", *timing(models[0], datasets[0], args.epochs, args.rounds), "",
        ])  # fmt: skip
        print(text)
        if args.out:
            with open(args.out, "a") as f:
                f.write("\n" + text + "\n")
        return
    started = time.perf_counter()
    if not args.summarise_only:
        while True:  # the chosen knobs unlock the other seeds' runs
            todo = pending_runs(read_runs(args.runs), models, datasets, args.seeds, args.budget)
            if not todo:
                break
            if args._shard:
                index, count = (int(x) for x in args._shard.split("/"))
                run_pending(todo[index::count], args, started)
                return
            print(f"{len(todo)} runs pending", file=sys.stderr, flush=True)
            if args.workers > 1:
                run_workers(os.path.abspath(__file__), _without(tokens, "--workers", "--out"), args.workers)
            else:
                run_pending(todo, args, started)
            if args.stop_after is not None and time.perf_counter() - started > args.stop_after:
                break
    done = [r for r in read_runs(args.runs) if r["model"] in models and r["dataset"] in datasets]
    text = render(done, args, command_as_run("flat_minima.py", tokens))
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


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
