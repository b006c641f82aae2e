"""Training-epoch and full-evaluation time, plain and MG, on the Baby-scale graph.

Reads the real Amazon Baby interaction graph from ``../shared/data/baby-graph/`` (beside
the project root; never copied into the repository) and pairs it with seeded random
features of the real shapes (image 7050 x 4096, text 7050 x 384). For each model and
arm it trains ``--epochs`` epochs (the first one includes compilation and is reported
separately), times one full-ranking validation pass over all validation users, and
reads the peak memory of the process (each model/arm runs in its own subprocess so
peaks do not mix). The reference's figures on this kind of machine are in
``../shared/spec/reference-timings.md``.

Usage: python benchmarks/epoch_time.py [--models vbpr,lightgcn] [--epochs 4] [--out benchmarks/results/epoch_time.md]
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
    append_run,
    baby_dataset,
    format_seconds,
    markdown_table,
    read_runs,
    report_header,
    run_child,
)


def measure(model: str, mg: bool, epochs: int, folder: str) -> dict:
    """Runs in a fresh process: epoch times, evaluation time, peak memory."""
    import jax
    import numpy as np

    from mirrorgrad_jax.models import build_config, get_model
    from mirrorgrad_jax.train import MGConfig, TrainConfig, train

    dataset = baby_dataset(folder)
    cls = get_model(model)
    settings = {"vbpr": {"reg_weight": 1e-3}, "lightgcn": {"n_layers": 2, "reg_weight": 1e-4}}.get(model, {})
    cfg = TrainConfig(epochs=epochs, patience=1000, seed=999)
    result = train(cls, build_config(cls, settings), dataset, cfg, MGConfig(enabled=mg, alpha2=0.2, beta=3), log=None)
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
        "batches": int(np.ceil(len(dataset.train) / cfg.batch_size)),
    }
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        out["device_peak_mb"] = stats["peak_bytes_in_use"] / 2**20
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
    return header + "\n" + "\n".join(markdown_table(columns, table)) + "\n"


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
    parser.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.render:
        rows = read_runs(args.render)
        if not rows:
            raise SystemExit(f"--render: no rows in {args.render}")
        machine = args.machine or f"device {rows[0]['device']}"
        print(render(rows, f"python benchmarks/epoch_time.py --models {args.models} --epochs {args.epochs}", machine, args.epochs))
        return
    if args._child:
        model, mg = args._child.split(":")
        print("RESULT " + json.dumps(measure(model, mg == "mg", args.epochs, args.graph)))
        return
    if not os.path.exists(os.path.join(args.graph, "baby.inter")):
        print(f"skipping: the Baby graph is not at {args.graph} (it lives in ../shared/data/baby-graph/ beside the project)")
        return
    rows = []
    for model in args.models.split(","):
        for arm in ("plain", "mg"):
            print(f"[{model} {arm}] {args.epochs} epochs ...", file=sys.stderr, flush=True)
            row = run_child([__file__, "--_child", f"{model}:{arm}", "--epochs", str(args.epochs), "--graph", args.graph],
                            f"{model} {arm}", args.child_timeout)
            if row is None:
                continue
            rows.append(row)
            if args.jsonl:
                append_run(args.jsonl, row)
    if not rows:
        raise SystemExit("no model/arm was measured")
    text = render(rows, f"python benchmarks/epoch_time.py --models {args.models} --epochs {args.epochs}", None, args.epochs)
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
