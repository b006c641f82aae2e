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
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_GRAPH = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data", "baby-graph"))


def baby_dataset(folder: str):
    import numpy as np

    from mirrorgrad_jax.data import RecDataset, load_mmrec

    graph = load_mmrec(folder, verbose=False)
    rng = np.random.default_rng(999)
    features = {
        "image": rng.random((graph.num_items, 4096), dtype=np.float32),
        "text": rng.standard_normal((graph.num_items, 384), dtype=np.float32) / np.sqrt(384),
    }
    return RecDataset.from_arrays(
        "baby-graph+random-features", graph.train, graph.valid, graph.test, features,
        num_users=graph.num_users, num_items=graph.num_items,
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


def _jax_version() -> str:
    from importlib.metadata import version

    return version("jax")


def _secs(value: float) -> str:
    return f"{value:.3f}" if value < 1 else f"{value:.2f}"


def render(rows: list[dict], command: str, machine: str, epochs: int) -> str:
    """Markdown block (command, date, machine, table) for measured rows."""
    header = (
        f"Command: `{command}`  \n"
        f"Date: {datetime.date.today().isoformat()}  \n"
        f"Machine: {machine}  \n"
        f"Data: Baby graph ({rows[0]['batches']} batches of 2048) with random image 4096-d and text 384-d features. "
        f"Epoch = median of epochs 2..{epochs}; eval = one full ranking of the validation users.\n"
    )
    table = [
        "| model | arm | epoch (s) | MG / plain | first epoch incl. compile (s) | eval (s) | peak RSS (MB) |",
        "|---|---|---|---|---|---|---|",
    ]
    plain = {r["model"]: r["epoch_s"] for r in rows if not r["mg"]}
    for r in rows:
        ratio = (f"{r['epoch_s'] / plain[r['model']]:.2f}" if r["model"] in plain else "n/a") if r["mg"] else "1.00"
        table.append(
            f"| {r['model']} | {'MG' if r['mg'] else 'plain'} | {_secs(r['epoch_s'])} | {ratio} | {r['first_epoch_s']:.2f} | "
            f"{_secs(r['eval_s'])} | {r['peak_rss_mb']:.0f}" + (f" (device {r['device_peak_mb']:.0f})" if "device_peak_mb" in r else "") + " |"
        )
    return header + "\n" + "\n".join(table) + "\n"



def run_child(argv: list[str], label: str, timeout: float, env: dict | None = None) -> dict | None:
    """Runs ``python argv`` in a fresh process and returns the JSON of its ``RESULT`` line.

    Adds ``wall_s`` (the whole process, start-up included). A child that fails or runs past
    ``timeout`` seconds is reported on stderr and gives None, so the other measurements go on.
    """
    started = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        print(f"{label}: skipped, longer than --child-timeout {timeout}s", file=sys.stderr, flush=True)
        return None
    line = [text for text in proc.stdout.splitlines() if text.startswith("RESULT ")]
    if proc.returncode or not line:
        print(f"{label} failed (exit {proc.returncode}; the others go on):\n{proc.stderr[-3000:]}", file=sys.stderr, flush=True)
        return None
    row = json.loads(line[0][len("RESULT "):])
    row["wall_s"] = time.perf_counter() - started
    return row

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
        with open(args.render) as f:
            rows = [json.loads(line) for line in f if line.strip()]
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
                with open(args.jsonl, "a") as f:
                    f.write(json.dumps(row) + "\n")
    if not rows:
        raise SystemExit("no model/arm was measured")
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, device {rows[0]['device']}, jax {_jax_version()}"
    text = render(rows, f"python benchmarks/epoch_time.py --models {args.models} --epochs {args.epochs}", machine, args.epochs)
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
