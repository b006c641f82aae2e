"""Scaling out: epoch time, evaluation time and memory per device against devices and catalogue size.

Each measurement runs in a fresh process whose XLA sees exactly as many devices as the
mesh needs (``--xla_force_host_platform_device_count`` on a CPU, so the devices there are
simulated and share the same cores and RAM; on a GPU host the real ones). It builds the
dataset and the model, places them with the trainer's own placement rules, and times
the trainer's own jitted pieces:

* epoch: ``--batches`` full batches (a multiple of MG's beta = 3, so one jitted scan of
  MG blocks, as in training) are run once to compile and once timed; the epoch time is
  that per-batch time times the epoch's batches (the run is short; a full epoch at
  10x Electronics would take most of an hour on 2 cores);
* evaluation: ``--eval-blocks`` blocks of validation users (4096, or fewer where the
  trainer bounds a device's score tile) are timed after a compiled warm-up block; the
  full-ranking time is that per-block time times the blocks;
* memory per device: XLA's own analysis of the compiled SPMD programs (each device runs
  the same program on its shards): arguments + outputs - donated + temporaries, for the
  training scan and for one evaluation block; plus the bytes of live arrays each device
  holds after training (parameters, optimizer state, constants, evaluation indices), and
  the process's peak RSS (on a CPU all simulated devices share it).

Datasets: ``baby`` is the real Amazon Baby interaction graph from
``../shared/data/baby-graph/`` (never copied here) with random features of Baby's shapes
(see ``benchmarks/epoch_time.py``); ``large`` is :func:`mirrorgrad_jax.data.make_large`
(Electronics' shapes); ``large-10x`` is ten times it, without features (11.3 GB of them
cannot be held next to a model on the 24 GB machine these numbers come from).

Usage:
  python benchmarks/scaling.py [--plan all|devices|catalogue] [--batches 30] [--eval-blocks 2]
      [--jsonl benchmarks/results/scaling_runs.jsonl] [--out benchmarks/results/scaling.md]
  python benchmarks/scaling.py --render benchmarks/results/scaling_runs.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

from reporting import DEFAULT_GRAPH, append_run, baby_dataset, markdown_table, read_runs, report_header, run_child

SETTINGS = {
    "vbpr": {"reg_weight": 1e-3},
    "lightgcn": {"n_layers": 2, "reg_weight": 1e-4},
    "freedom": {},
}
#: mesh label -> (TrainConfig.mesh, shard_tables, devices)
MESHES = {
    "1": (None, False, 1),
    "2x1": ("data=2", False, 2),
    "4x1": ("data=4", False, 4),
    "2x2": ("data=2,model=2", True, 4),
    "1x4": ("model=4", True, 4),
}
PLANS = {
    # Devices at a fixed size (Baby), then at Electronics' size.
    "devices": [(m, "baby", mesh) for m in ("vbpr", "lightgcn", "freedom") for mesh in ("1", "2x1", "4x1", "2x2")]
    + [(m, "large", mesh) for m in ("vbpr", "lightgcn") for mesh in ("1", "4x1", "2x2")],
    # The cost curve: Baby -> Electronics -> 10x Electronics.
    "catalogue": [("lightgcn", d, "1") for d in ("baby", "large", "large-10x")] + [("lightgcn", "large-10x", "1x4")],
}


def load(name: str):
    """The dataset of a measurement (see the module docstring)."""
    from mirrorgrad_jax.data import make_large

    if name == "baby":
        return baby_dataset(DEFAULT_GRAPH)
    if name == "large":
        return make_large()
    if name == "large-10x":
        return make_large(10, modalities={})
    raise ValueError(f"unknown dataset {name!r}")


def _memory(compiled) -> dict:
    """Per-device bytes of a compiled SPMD program, from XLA's memory analysis."""
    m = compiled.memory_analysis()
    if m is None:
        return {}
    peak = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
    return {"args_mb": m.argument_size_in_bytes / 2**20, "temp_mb": m.temp_size_in_bytes / 2**20, "peak_mb": peak / 2**20}


def _live_per_device() -> list[float]:
    """MiB of live arrays held by each device."""
    import jax

    held: dict = {}
    for array in jax.live_arrays():
        for shard in array.addressable_shards:
            held[shard.device.id] = held.get(shard.device.id, 0) + shard.data.nbytes
    return [held.get(d.id, 0) / 2**20 for d in jax.devices()]


def measure(model: str, data: str, mesh_label: str, batches: int, eval_blocks: int) -> dict:
    """Runs in a fresh process with as many devices as the mesh needs."""
    import jax
    import numpy as np
    from flax import nnx

    from mirrorgrad_jax.data import epoch_batches
    from mirrorgrad_jax.evaluation import RankingEvaluator
    from mirrorgrad_jax.models import build_config, get_model
    from mirrorgrad_jax.train import EpochEngine as _Engine, MGConfig, TrainConfig, build_optimizer
    from mirrorgrad_jax.train.loop import _placement

    mesh, shard, _ = MESHES[mesh_label]
    t0 = time.perf_counter()
    dataset = load(data)
    data_s = time.perf_counter() - t0
    cls = get_model(model)
    cfg = TrainConfig(seed=999, mesh=mesh, shard_tables=shard)
    mg = MGConfig(enabled=True, alpha2=0.2, beta=3)
    placement = _placement(cfg)
    t0 = time.perf_counter()
    net = cls(dataset, build_config(cls, SETTINGS[model]), rngs=nnx.Rngs(params=cfg.seed))
    build_s = time.perf_counter() - t0
    steps_per_epoch = cfg.steps_per_epoch(len(dataset.train))
    tx = build_optimizer(cfg, mg, steps_per_epoch)
    engine = _Engine(net, tx, mg, cfg, placement)
    params, opt_state = engine.params, engine.init_opt_state(tx)
    rng = np.random.default_rng(0)
    net.pre_epoch(rng)
    engine.refresh_constants(net)
    full = epoch_batches(dataset, cfg.batch_size, rng, negatives=cls.uses_negatives).full
    batches = min(batches - batches % mg.beta, len(full) - len(full) % mg.beta)
    full = full[:batches]
    key = jax.random.key(0)

    def epoch(params, opt_state):
        params, opt_state, losses = engine.run_epoch(params, opt_state, full, None, key, 0, steps_per_epoch)
        jax.block_until_ready(params)
        return params, opt_state, losses

    t0 = time.perf_counter()
    params, opt_state, losses = epoch(params, opt_state)
    first_s = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    params, opt_state, losses = epoch(params, opt_state)
    per_batch = (time.perf_counter() - t0) / batches
    cpu_per_batch = (time.process_time() - c0) / batches
    stacked = engine._put_batches(full.reshape((batches // mg.beta, mg.beta) + full.shape[1:]))
    keys = jax.random.split(key, batches).reshape(batches // mg.beta, mg.beta)
    if placement is not None:
        keys = placement.put(keys, placement.replicated)
    train_memory = _memory(engine.scan_blocks.lower(params, opt_state, stacked, keys, engine.consts, engine.cache).compile())

    ranking = {"user_block": cfg.eval_batch_size}
    if placement is not None:  # as the trainer does
        ranking = {"user_block": placement.eval_user_block(cfg.eval_batch_size, dataset.num_items), "mesh": placement.mesh}
    evaluator = RankingEvaluator(dataset.num_items, dataset.train, dataset.valid, **ranking)
    state = (params, engine.cache, engine.consts)
    full_blocks = evaluator._num_blocks
    if placement is None:
        # One device: the evaluator is one program looping over all its blocks, so time it on
        # the validation pairs of the first eval_blocks blocks' users only; one call covers them.
        first = np.unique(dataset.valid[:, 0], return_index=True)
        users = dataset.valid[np.sort(first[1]), 0][: eval_blocks * evaluator.user_block]
        subset = dataset.valid[np.isin(dataset.valid[:, 0], users)]
        evaluator = RankingEvaluator(dataset.num_items, dataset.train, subset, user_block=evaluator.user_block)
        calls, blocks = [()], evaluator._num_blocks
    else:  # one call per block, the block index as its last argument
        blocks = min(eval_blocks, evaluator._num_blocks)
        calls = [(np.int32(b),) for b in range(blocks)]
    fn = evaluator._block_fn(engine.scores_fn)
    arrays = (evaluator._users_dev, evaluator._train_dev, evaluator._targets_dev)
    jax.block_until_ready(fn(state, *arrays, *calls[0]))
    t0, c0 = time.perf_counter(), time.process_time()
    jax.block_until_ready([fn(state, *arrays, *extra) for extra in calls])
    per_block, cpu_per_block = (time.perf_counter() - t0) / blocks, (time.process_time() - c0) / blocks
    eval_memory = _memory(fn.lower(state, *arrays, *calls[0]).compile())
    live = _live_per_device()
    device = jax.devices()[0]
    return {
        "model": model,
        "dataset": data,
        "mesh": mesh_label,
        "devices": jax.device_count(),
        "users": dataset.num_users,
        "items": dataset.num_items,
        "train_rows": len(dataset.train),
        "batches_timed": batches,
        "steps_per_epoch": steps_per_epoch,
        "epoch_s": per_batch * steps_per_epoch,
        "epoch_cpu_s": cpu_per_batch * steps_per_epoch,
        "first_run_s": first_s,
        "eval_blocks_timed": blocks,
        "eval_user_block": evaluator.user_block,
        "eval_s": per_block * full_blocks,
        "eval_cpu_s": cpu_per_block * full_blocks,
        "train_peak_mb": train_memory.get("peak_mb"),
        "eval_peak_mb": eval_memory.get("peak_mb"),
        "live_mb_per_device": [round(x, 1) for x in live],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "data_s": data_s,
        "build_s": build_s,
        "loss": float(np.asarray(losses)[:, 0].mean()),
        "device": f"{device.platform}:{device.device_kind}",
        "notes": list(placement.notes) if placement is not None else [],
    }


def _time(row: dict, what: str) -> str:
    cpu = row.get(f"{what}_cpu_s")
    return f"{row[f'{what}_s']:.0f}" + (f" ({cpu:.0f})" if cpu is not None else "")


COLUMNS = (
    "model", "data (users x items)", "mesh", "devices", "epoch wall s (CPU s), est.", "eval wall s (CPU s), est.",
    "train peak / device (MB)", "eval peak / device (MB)", "live / device (MB)", "peak RSS (MB)",
)


def render(rows: list[dict], command: str, machine: str | None) -> str:
    """Markdown (command, date, machine, tables) for measured rows.

    ``machine`` None: this machine, with the device the rows ran on (:func:`reporting.report_header`).
    """
    header = "\n".join(report_header(command, machine=machine, device=rows[0]["device"])) + "\n"
    table = []
    for r in rows:
        live = r["live_mb_per_device"]
        live_text = f"{max(live):.0f}" if len(set(round(x) for x in live)) == 1 else f"{min(live):.0f}-{max(live):.0f}"
        table.append((
            r["model"], f"{r['dataset']} ({r['users']:,} x {r['items']:,})", r["mesh"], r["devices"], _time(r, "epoch"),
            _time(r, "eval"), f"{r['train_peak_mb']:.0f}", f"{r['eval_peak_mb']:.0f}", live_text, f"{r['peak_rss_mb']:.0f}",
        ))  # fmt: skip
    return header + "\n" + "\n".join(markdown_table(COLUMNS, table)) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", default="all", choices=("all", *PLANS))
    parser.add_argument("--only", default=None, help="comma list of model:dataset:mesh to run instead of a plan")
    parser.add_argument("--batches", type=int, default=30, help="batches timed per epoch measurement (rounded down to a multiple of 3)")
    parser.add_argument("--eval-blocks", type=int, default=2, help="blocks of 4096 users timed per evaluation measurement")
    parser.add_argument("--jsonl", default=None, help="append each measured row here as soon as it is measured; rows already there are skipped")
    parser.add_argument("--out", default=None, help="append the markdown tables here")
    parser.add_argument("--child-timeout", type=float, default=3600)
    parser.add_argument("--render", default=None, metavar="JSONL", help="only format rows saved with --jsonl")
    parser.add_argument("--machine", default=None)
    parser.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    selection = f"--only {args.only}" if args.only else f"--plan {args.plan}"
    command = f"python benchmarks/scaling.py {selection} --batches {args.batches} --eval-blocks {args.eval_blocks}"
    if args._child:
        model, data, mesh = args._child.split(":")
        print("RESULT " + json.dumps(measure(model, data, mesh, args.batches, args.eval_blocks)))
        return
    if args.render:
        rows = read_runs(args.render)
        if not rows:
            raise SystemExit(f"--render: no rows in {args.render}")
        print(render(rows, command, args.machine or f"device {rows[0]['device']}"))
        return
    if args.only:
        todo = [tuple(item.split(":")) for item in args.only.split(",")]
    else:
        todo = [job for plan, jobs in PLANS.items() if args.plan in ("all", plan) for job in jobs]
    done = {(r["model"], r["dataset"], r["mesh"]) for r in read_runs(args.jsonl)} if args.jsonl else set()
    rows = []
    for model, data, mesh in todo:
        if (model, data, mesh) in done:
            continue
        devices = MESHES[mesh][2]
        env = dict(os.environ)
        flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
        env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])
        print(f"[{model} {data} mesh {mesh}] ...", file=sys.stderr, flush=True)
        argv = [__file__, "--_child", f"{model}:{data}:{mesh}", "--batches", str(args.batches), "--eval-blocks", str(args.eval_blocks)]
        row = run_child(argv, f"{model} {data} {mesh}", args.child_timeout, env=env)
        if row is None:
            continue
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        if args.jsonl:
            append_run(args.jsonl, row)
    if not rows:
        return
    text = render(rows, command, None)
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
