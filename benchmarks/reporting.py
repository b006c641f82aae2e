"""What the benchmark scripts share: report headers and tables, runs files, worker pools, Baby-scale data.

Every script in ``benchmarks/`` imports what it needs from here and from nothing else in
this folder (a script run as ``python benchmarks/x.py`` has this folder on ``sys.path``
already). Only the standard library is imported at the top of this module:
``vs_reference.py`` imports it in the reference's process, whose Python has no JAX;
whatever needs JAX or NumPy imports it inside the function.

Sections:

* report text: :func:`report_header` (the head of every markdown report), :func:`machine_line`,
  :func:`markdown_table` / :func:`markdown_row`, :func:`format_mean_std`, :func:`format_seconds`,
  :func:`device_counts`, :func:`load_note`, :func:`emit`;
* runs files (JSONL, one finished run per line): :func:`read_runs`, :func:`append_run`;
* processes: :func:`run_workers` (a pool of the same script sharing pending runs),
  :func:`run_child` (one measurement in a fresh process);
* timing: :func:`time_round_robin`;
* data: :data:`DEFAULT_GRAPH`, :func:`baby_dataset` (the Baby graph with random features);
* TensorBoard (``--logdir`` of the scripts that train): :func:`add_logdir_option`,
  :func:`check_logdir`, :func:`tensorboard_run`, :func:`arm_name`.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from importlib.metadata import PackageNotFoundError, version

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX
    fcntl = None

HERE = os.path.dirname(os.path.abspath(__file__))
#: The real Amazon Baby interaction graph, beside the project root (never copied into the repository).
DEFAULT_GRAPH = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data", "baby-graph"))


# ---------------------------------------------------------------- report text


def cpu_name() -> str:
    """The processor's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "(not installed)"


def describe_machine(device: str | None = None) -> str:
    """The machine in one line: architecture, cores, CPU, OS, device, jax / jaxlib, XLA_FLAGS.

    ``device`` names the accelerator the measurements ran on (``platform:kind``, as the runs
    record it) when they ran in other processes; by default this process asks JAX for its
    first device (and says how many there are when there are several).
    """
    if device is None:
        import jax

        first = jax.devices()[0]
        device = f"{first.platform}:{first.device_kind}"
        if jax.device_count() > 1:
            device += f" ({jax.device_count()} devices)"
    return (
        f"{platform.machine()}, {os.cpu_count()} CPU cores ({cpu_name()}), {platform.system()} {platform.release()}, "
        f"device {device}, jax {_version('jax')} / jaxlib {_version('jaxlib')}, "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '(unset)')!r}"
    )


def machine_line(device: str | None = None) -> str:
    """``Machine: ...`` (:func:`describe_machine`) with a markdown line break at the end."""
    return f"Machine: {describe_machine(device)}  "


def report_header(command: str, *, date: str | None = None, machine: str | None = None, device: str | None = None) -> list[str]:
    """The first lines of every benchmark report, each ending in a markdown line break::

        Command: `python benchmarks/x.py --flag value`
        Date: 2026-12-06 14:05
        Machine: x86_64, 2 CPU cores (<cpu model>), Linux <release>, device cpu:cpu, jax X / jaxlib X, XLA_FLAGS='(unset)'

    Args:
      command: the command as run (scripts leave out options that do not change the numbers,
        such as where the output goes or how many workers share the runs).
      date: defaults to now (``YYYY-MM-DD HH:MM``); a sitting may add its duration.
      machine: the text after ``Machine:`` when the numbers come from elsewhere (rows
        re-rendered from a runs file measured on another machine); default
        :func:`describe_machine` of this one.
      device: the device the measurements ran on, when they ran in child processes.

    The script adds its own lines (noise, data, settings) after these.
    """
    return [
        f"Command: `{command}`  ",
        f"Date: {date or f'{datetime.datetime.now():%Y-%m-%d %H:%M}'}  ",
        f"Machine: {machine}  " if machine is not None else machine_line(device),
    ]


def command_as_run(script: str, argv: Iterable[str]) -> str:
    """``python benchmarks/<script> <argv...>``: the command line a report names."""
    return " ".join(["python", f"benchmarks/{script}", *argv])


def setting_value(text: str):
    """A ``key=value`` option's value: JSON (numbers, true / false) or else the plain string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def key_value_pairs(parser, flag: str, text: str) -> list[list[str]]:
    """``key=value[,key=value]`` as ``[[key, value], ...]``; anything else stops with one line."""
    pairs = [item.split("=", 1) for item in text.split(",") if item]
    if any(len(pair) != 2 or not pair[0] for pair in pairs):
        parser.error(f"{flag} takes key=value[,key=value], got {text!r}")
    return pairs


def markdown_row(cells: Iterable) -> str:
    """``| a | b | c |``: one row of a markdown table (each cell through ``str``)."""
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def markdown_table(columns: Sequence[str], rows: Iterable[Iterable] = ()) -> list[str]:
    """A markdown table as lines: the column names, the ``|---|`` rule, then one line per row."""
    return [markdown_row(columns), "|" + "---|" * len(columns), *(markdown_row(row) for row in rows)]


#: The sentence every summary's header carries about its spreads.
STD_NOTE = "Every ± is the sample standard deviation (n - 1) over seeds; paired differences are taken seed by seed."


def format_mean_std(values, digits: int = 4) -> str:
    """``mean ± std`` of ``values`` (std 0 for one value), ``n/a`` for none."""
    if not values:
        return "n/a"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.{digits}f} ± {std:.{digits}f}"


def format_seconds(value: float) -> str:
    """Three decimals under a second, two above."""
    return f"{value:.3f}" if value < 1 else f"{value:.2f}"


def device_counts(rows: list[dict]) -> str:
    """``cpu:cpu 12, gpu:NVIDIA H200 4``: how many recorded runs ran on each device."""
    counts: dict[str, int] = {}
    for r in rows:
        key = r.get("device", "cpu:cpu (before devices were recorded)")
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))


def load_note(before: tuple, after: tuple) -> str:
    """``load average (1 min) X before, Y after`` from two :func:`os.getloadavg` readings."""
    return f"load average (1 min) {before[0]:.2f} before, {after[0]:.2f} after"


def emit(text: str, out: str | None) -> None:
    """Prints the report and, with ``out``, appends it to that markdown file."""
    print(text)
    if out:
        with open(out, "a") as f:
            f.write("\n" + text + "\n")


# ---------------------------------------------------------------- runs files


def read_runs(path: str) -> list[dict]:
    """Rows of the runs file; a line cut short by a killed writer is skipped with a note."""
    rows = []
    if os.path.exists(path):
        with open(path) as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    print(f"{path}:{number}: skipping an unreadable (truncated?) line", file=sys.stderr)
    return rows


def append_run(path: str, row: dict, *, default=None) -> None:
    """Appends one row as one write under an exclusive lock (several workers share the file).

    ``default`` is :func:`json.dumps`'s, for values JSON does not know (e.g. ``float`` for NumPy scalars).
    """
    with open(path, "a") as f:
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX)
        f.write(json.dumps(row, default=default) + "\n")
        f.flush()


# ---------------------------------------------------------------- processes


def run_workers(script: str, argv: list[str], workers: int) -> None:
    """Runs ``script argv --_shard i/workers`` for every i at once and waits for all.

    A TERM (e.g. from ``timeout``) ends the workers too; the runs they finished are already
    on disk, and a worker that fails is reported without stopping the others.
    """
    procs = [subprocess.Popen([sys.executable, script, *argv, "--_shard", f"{i}/{workers}"]) for i in range(workers)]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        failed = [p.args[-1] for p in procs if p.wait() != 0]
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
    if failed:
        print(f"workers {failed} exited with an error; their finished runs are kept", file=sys.stderr)


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


# ---------------------------------------------------------------- timing


def time_round_robin(fns: dict, args: tuple, repeats: int) -> dict:
    """Compiles each fn, then times one call of each in turn for ``repeats`` rounds."""
    import jax
    import numpy as np

    jitted = {name: jax.jit(fn) for name, fn in fns.items()}
    outputs = {name: jax.block_until_ready(fn(*args)) for name, fn in jitted.items()}
    times = {name: [] for name in jitted}
    for _ in range(repeats):
        for name, fn in jitted.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - start)
    return {name: (times[name], jax.tree.map(np.asarray, outputs[name])) for name in jitted}


# ---------------------------------------------------------------- data


def baby_dataset(folder: str):
    """The Baby interaction graph in ``folder`` with seeded random image 4096-d and text 384-d features."""
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


# ---------------------------------------------------------------- TensorBoard (--logdir)


def add_logdir_option(parser) -> None:
    """The ``--logdir DIR`` option of the scripts that train (the same as ``mirrorgrad train``'s)."""
    parser.add_argument(
        "--logdir", metavar="DIR", default=None,
        help="also write one TensorBoard run per training run here, named model/dataset/arm/seed (needs the "
             "tensorboard extra; view with tensorboard --logdir DIR)",
    )  # fmt: skip


def check_logdir(logdir: str | None, script: str) -> None:
    """``--logdir`` without the event-file writer installed: one line on stderr naming what to install, exit status 2."""
    if logdir is None:
        return
    from mirrorgrad_jax.train import check_event_writer

    try:
        check_event_writer()
    except ImportError as err:
        print(f"{script}: error: --logdir: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def arm_name(alpha2: float | None) -> str:
    """A run's arm in a TensorBoard run name: ``plain`` or ``mg-a2=0.2`` (as ``mirrorgrad train`` names them)."""
    return "plain" if alpha2 is None else f"mg-a2={alpha2:g}"


def tensorboard_run(logdir: str | None, *parts: str):
    """The TensorBoard run ``logdir/parts...`` of one training run (a context manager), or a null one without ``--logdir``.

    A run started again in the same logdir (after a failure) gets a folder of its own
    (``seed999-2``), so that two attempts never share one set of curves.
    """
    if logdir is None:
        return contextlib.nullcontext()
    from mirrorgrad_jax.train import TensorBoardRun, event_run_folders

    folder = os.path.join(logdir, *parts)
    attempt = 1
    while event_run_folders(folder if attempt == 1 else f"{folder}-{attempt}"):
        attempt += 1
    return TensorBoardRun(folder if attempt == 1 else f"{folder}-{attempt}")
