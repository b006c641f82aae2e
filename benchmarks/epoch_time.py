"""Training-epoch and full-evaluation time, plain and MG, on the Baby-scale graph.

Reads the real Amazon Baby interaction graph from ``../shared/data/baby-graph/`` (beside
the project root; never copied into the repository) and pairs it with seeded random
features of the real shapes (image 7050 x 4096, text 7050 x 384). For each model and
arm it trains ``--epochs`` epochs (the first one includes compilation and is reported
separately), times one full-ranking validation pass over all validation users, and
reads the peak memory of the process (each model/arm runs in its own subprocess so
peaks do not mix). The reference's figures on this kind of machine are in
``../shared/spec/reference-timings.md``.

``--logdir DIR`` also measures what writing TensorBoard event files (``mirrorgrad train
--logdir``) costs: each model/arm process trains twice, side by side, without and then with
a :class:`~mirrorgrad_jax.train.TensorBoardRun` (its run in ``DIR/<model>-<arm>-<time>``).
The writer's own time (:attr:`TensorBoardRun.seconds`: opening, every epoch's scalars and
their flush to disk, the result, closing) is divided by the epochs run and compared with an
epoch (training + evaluation, median of epochs 2..N); the epoch's whole wall time (from
one epoch's log line to the next) of both runs is shown beside it.

Usage: python benchmarks/epoch_time.py [--models vbpr,lightgcn] [--epochs 4] [--logdir DIR] [--out benchmarks/results/epoch_time.md]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys

from reporting import (
    DEFAULT_GRAPH,
    add_logdir_option,
    append_run,
    baby_dataset,
    check_logdir,
    format_seconds,
    markdown_table,
    read_runs,
    report_header,
    run_child,
)


def _epoch_walls(stamps: list[float]) -> float:
    """Median wall time between consecutive epoch log lines from the second epoch on (compilation left out)."""
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    return statistics.median(gaps) if gaps else float("nan")


def measure(model: str, mg: bool, epochs: int, folder: str, logdir: str | None = None) -> dict:
    """Runs in a fresh process: epoch times, evaluation time, peak memory (and, with ``logdir``, the writer's cost)."""
    import time

    import jax

    from mirrorgrad_jax.models import build_config, get_model
    from mirrorgrad_jax.train import MGConfig, TensorBoardRun, TrainConfig, train

    dataset = baby_dataset(folder)
    cls = get_model(model)
    settings = {"vbpr": {"reg_weight": 1e-3}, "lightgcn": {"n_layers": 2, "reg_weight": 1e-4}}.get(model, {})
    cfg = TrainConfig(epochs=epochs, patience=1000, seed=999)
    mg_config = MGConfig(enabled=mg, alpha2=0.2, beta=3)
    stamps: list[float] = []

    def stamp(line: str) -> None:
        if line.startswith("epoch "):
            stamps.append(time.perf_counter())

    result = train(cls, build_config(cls, settings), dataset, cfg, mg_config, log=stamp)
    train_times = [h["train_s"] for h in result.history]
    eval_times = [h["eval_s"] / 2 for h in result.history]  # each epoch ranks valid AND test
    out = {
        "model": model,
        "mg": mg,
        "first_epoch_s": train_times[0],
        "epoch_s": statistics.median(train_times[1:]) if len(train_times) > 1 else train_times[0],
        "eval_s": statistics.median(eval_times[1:]) if len(eval_times) > 1 else eval_times[0],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "device": f"{jax.devices()[0].platform}:{jax.devices()[0].device_kind}",
        "batches": cfg.steps_per_epoch(len(dataset.train)),
    }
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        out["device_peak_mb"] = stats["peak_bytes_in_use"] / 2**20
    if logdir is not None:
        without = _epoch_walls(stamps)
        stamps.clear()
        run = os.path.join(logdir, f"{model}-{'mg' if mg else 'plain'}-{time.strftime('%Y%m%d-%H%M%S')}")
        with TensorBoardRun(run) as events:
            logged = train(cls, build_config(cls, settings), dataset, cfg, mg_config, log=stamp, events=events)
        epoch = statistics.median([h["train_s"] + h["eval_s"] for h in logged.history[1:]] or [logged.history[0]["train_s"]])
        out.update({
            "writer_s_per_epoch": events.seconds / logged.epochs_run,
            "writer_share": events.seconds / logged.epochs_run / epoch,
            "epoch_wall_s_without_writer": without,
            "epoch_wall_s_with_writer": _epoch_walls(stamps),
        })  # fmt: skip
    return out


def render(rows: list[dict], command: str, machine: str | None, epochs: int) -> str:
    """Markdown block (command, date, machine, table) for measured rows.

    ``machine`` None: this machine, with the device the rows ran on (:func:`reporting.report_header`).
    """
    header = "\n".join(report_header(command, machine=machine, device=rows[0]["device"])) + "\n" + (
        f"Data: Baby graph ({rows[0]['batches']} batches of 2048) with random image 4096-d and text 384-d features. "
        f"Epoch = median of epochs 2..{epochs}; eval = one full ranking of the validation users.\n"
    )
    plain = {r["model"]: r["epoch_s"] for r in rows if not r["mg"]}
    table = []
    for r in rows:
        ratio = (f"{r['epoch_s'] / plain[r['model']]:.2f}" if r["model"] in plain else "n/a") if r["mg"] else "1.00"
        table.append((
            r["model"], "MG" if r["mg"] else "plain", format_seconds(r["epoch_s"]), ratio, f"{r['first_epoch_s']:.2f}",
            format_seconds(r["eval_s"]),
            f"{r['peak_rss_mb']:.0f}" + (f" (device {r['device_peak_mb']:.0f})" if "device_peak_mb" in r else ""),
        ))  # fmt: skip
    columns = ("model", "arm", "epoch (s)", "MG / plain", "first epoch incl. compile (s)", "eval (s)", "peak RSS (MB)")
    text = header + "\n" + "\n".join(markdown_table(columns, table)) + "\n"
    logged = [r for r in rows if "writer_share" in r]
    if logged:
        text += "\n" + (
            "Writing TensorBoard event files (`--logdir`): the writer's own time per epoch (opening, the epoch's scalars and "
            "their flush to disk, the result and closing, spread over the epochs run) against an epoch (training + "
            "evaluation, median of epochs 2..N); beside it the epoch's whole wall time (one epoch's log line to the next, "
            "median) of the same model and arm trained without and then with the writer, in one process.\n\n"
        )
        writer_rows = [
            (
                r["model"], "MG" if r["mg"] else "plain", f"{r['writer_s_per_epoch'] * 1e3:.1f}", f"{100 * r['writer_share']:.2f}%",
                format_seconds(r["epoch_wall_s_without_writer"]), format_seconds(r["epoch_wall_s_with_writer"]),
            )
            for r in logged
        ]  # fmt: skip
        writer_columns = ("model", "arm", "writer per epoch (ms)", "share of an epoch", "epoch wall, no writer (s)", "epoch wall, writer (s)")
        text += "\n".join(markdown_table(writer_columns, writer_rows)) + "\n"
    return text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="vbpr,lightgcn")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run (first includes compilation)")
    parser.add_argument("--graph", default=DEFAULT_GRAPH, help="folder holding baby.inter")
    parser.add_argument("--out", default=None, help="append a markdown table here")
    parser.add_argument("--jsonl", default=None, help="append each measured row here as soon as it is measured")
    parser.add_argument("--child-timeout", type=float, default=None, help="seconds allowed per model/arm; a run past it is reported and skipped")
    parser.add_argument("--render", default=None, metavar="JSONL", help="only format rows saved with --jsonl (e.g. on another machine)")
    parser.add_argument("--machine", default=None, help="with --render: the machine the rows were measured on")
    add_logdir_option(parser)
    parser.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    check_logdir(args.logdir, "epoch_time.py")
    if args.render:
        rows = read_runs(args.render)
        if not rows:
            raise SystemExit(f"--render: no rows in {args.render}")
        machine = args.machine or f"device {rows[0]['device']}"
        print(render(rows, f"python benchmarks/epoch_time.py --models {args.models} --epochs {args.epochs}", machine, args.epochs))
        return
    if args._child:
        model, mg = args._child.split(":")
        print("RESULT " + json.dumps(measure(model, mg == "mg", args.epochs, args.graph, args.logdir)))
        return
    if not os.path.exists(os.path.join(args.graph, "baby.inter")):
        print(f"skipping: the Baby graph is not at {args.graph} (it lives in ../shared/data/baby-graph/ beside the project)")
        return
    rows = []
    for model in args.models.split(","):
        for arm in ("plain", "mg"):
            print(f"[{model} {arm}] {args.epochs} epochs ...", file=sys.stderr, flush=True)
            child = [__file__, "--_child", f"{model}:{arm}", "--epochs", str(args.epochs), "--graph", args.graph]
            row = run_child(child + (["--logdir", args.logdir] if args.logdir else []), f"{model} {arm}", args.child_timeout)
            if row is None:
                continue
            rows.append(row)
            if args.jsonl:
                append_run(args.jsonl, row)
    if not rows:
        raise SystemExit("no model/arm was measured")
    logdir = " --logdir DIR" if args.logdir else ""  # the folder itself changes no number
    text = render(rows, f"python benchmarks/epoch_time.py --models {args.models} --epochs {args.epochs}{logdir}", None, args.epochs)
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
