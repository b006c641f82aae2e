"""Where a model's training epoch and evaluation pass go on the CPU, op by op, from XLA's own profile.

Trains ``--model`` for ``--epochs`` epochs on the Baby-scale data of ``epoch_time.py`` (the
real interaction graph, random image 4,096-d and text 384-d features), or on ``--dataset``
(any name ``mirrorgrad train --dataset`` takes, e.g. ``movielens-100k``), under
``jax.profiler.trace``, with XLA's optimised HLO dumped beside it. XLA's CPU runtime
records one event per executed thunk (a fusion, a matmul, a scatter, ...) with its HLO
name; the dump maps each name to the JAX operation and the line of Python that emitted it
(each instruction's ``op_name`` and ``stack_frame_id``, resolved through the file's frame
tables). The report sums the events:

1. per compiled program (the epoch's scan, the single steps of the last batch, the
   evaluation blocks): seconds per epoch;
2. per source line of the model and library code (every op a line emitted, summed):
   which part of the model costs what;
3. the single most expensive ops.

Container thunks (``while``, ``conditional``, ``call``) are left out, their bodies are
counted. XLA's CPU runtime records some matmuls and custom calls (the BCSR sparse product of
the graph propagation) as much shorter than the work they start; that work shows as a
stretch where no thunk of the program runs. Such a stretch (under ``MAX_GAP_S``, 0.2 s) is
charged to the matmul or custom call the next op waited for (:func:`charge_idle_gaps`), so
the ops of a training epoch sum to about its wall time. Times are summed over the runtime's threads (overlapping thunks can sum to more
than the wall time). The first epoch (with compilation) is included in the sums, which are
divided by the number of epochs.

``--method sam|asam|gnp`` profiles a two-pass flat-minima method instead (its knobs by
``--method-options``, e.g. ``rho=0.5``; the trainer's defaults otherwise), so that two
methods' epochs can be compared op by op.

Usage: python benchmarks/profile_step.py --model slmrec [--mg | --method asam [--method-options rho=0.5]]
       [--dataset movielens-100k] [--epochs 2] [--top 15] [--out FILE]
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import shutil
import tempfile

from reporting import DEFAULT_GRAPH, baby_dataset, emit, key_value_pairs, load_note, markdown_row, markdown_table, report_header, setting_value

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONTAINERS = {"while", "conditional", "call"}
# Thunk kinds the CPU runtime may record as shorter than their work (launched, then awaited).
ASYNC_KINDS = {"dot", "custom-call"}
# Idle stretches inside one execution shorter than this are charged to an op (charge_idle_gaps).
MAX_GAP_S = 0.2
# The trainer's jitted training programs, named after the functions jitted (the engine's epoch
# scans, and the single steps of make_train_steps: the last batches of an epoch, first-batch
# steps); every other program is evaluation or setup.
TRAIN_PROGRAMS = {f"jit_{name}" for name in ("scan_normal", "scan_blocks", "normal", "mirrored", "perturbed")}
_NAME = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*")
_OPCODE = re.compile(r"\s*([\w\-]+)\(")


def _instruction(line: str) -> tuple[str, str] | None:
    """``(name, opcode)`` of an HLO instruction line (its shape may be a nested tuple), else None."""
    match = _NAME.match(line)
    if not match:
        return None
    rest, i = line[match.end() :], 0
    if rest.startswith("("):  # a tuple shape: skip to its closing parenthesis
        depth = 0
        for i, char in enumerate(rest):
            depth += {"(": 1, ")": -1}.get(char, 0)
            if depth == 0:
                break
        i += 1
    else:
        i = rest.find(" ")
    opcode = _OPCODE.match(rest[i:]) if i >= 0 else None
    return (match.group(1), opcode.group(1)) if opcode else None


def _opcode_from_name(op: str) -> str:
    """XLA names an instruction after its opcode (``while.6``, ``custom-call``): the fallback."""
    return re.sub(r"\.\d+$", "", op)
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_FRAME = re.compile(r"stack_frame_id=(\d+)")
_OPERAND = re.compile(r"%([\w.\-]+)")
_CALLED = re.compile(r"\b(?:calls|to_apply|condition|body)=%[\w.\-]+")
_TABLE_ROW = re.compile(r"^(\d+) (.*)$")
_FIELD = re.compile(r"(\w+)=(\d+)")


def _source_tables(lines: list[str]) -> dict[str, str]:
    """``{stack frame id: "file:line function"}`` from an HLO text file's header tables.

    The frame is the innermost Python frame that emitted an op (JAX keeps user frames).
    """
    tables: dict[str, dict[str, str]] = collections.defaultdict(dict)
    section = None
    for line in lines:
        text = line.strip()
        if line.startswith(("ENTRY", "%")):
            break  # the computations start: the tables are above
        if text in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            section = text
        elif not text:
            section = None
        elif section and (row := _TABLE_ROW.match(text)):
            tables[section][row.group(1)] = row.group(2)
    files = {k: v.strip('"') for k, v in tables["FileNames"].items()}
    functions = {k: v.strip('"') for k, v in tables["FunctionNames"].items()}
    frames = {}
    for frame, text in tables["StackFrames"].items():
        location = dict(_FIELD.findall(tables["FileLocations"].get(dict(_FIELD.findall(text)).get("file_location_id", ""), "")))
        path = files.get(location.get("file_name_id", ""), "?")
        path = os.path.relpath(path, ROOT) if path.startswith(ROOT) else os.path.basename(path)
        frames[frame] = f"{path}:{location.get('line', '?')} {functions.get(location.get('function_name_id', ''), '')}".strip()
    return frames


def parse_hlo_dump(folder: str) -> dict[str, dict[str, tuple]]:
    """``{module: {instruction: (opcode, op_name, "file:line function", operands)}}`` from the optimised HLO text files."""
    modules: dict[str, dict[str, tuple]] = collections.defaultdict(dict)
    for path in glob.glob(os.path.join(folder, "*after_optimizations.txt")):
        # module_0042.jit_scan_blocks.cpu_after_optimizations.txt -> jit_scan_blocks
        name = os.path.basename(path).split(".")[1]
        with open(path) as f:
            lines = f.readlines()
        frames = _source_tables(lines)
        for line in lines:
            parsed = _instruction(line)
            if not parsed:
                continue
            op = _OP_NAME.search(line)
            frame = _FRAME.search(line)
            where = frames.get(frame.group(1), "?") if frame else "?"
            operands = tuple(o for o in _OPERAND.findall(_CALLED.sub("", line.split("metadata=")[0])) if o != parsed[0])
            modules[name].setdefault(parsed[0], (parsed[1], op.group(1) if op else "", where, operands))
    return modules


def thunk_events(trace_folder: str):
    """Yields ``(module, run id, hlo_op, start seconds, seconds)`` for every thunk event of the trace."""
    from jax.profiler import ProfileData

    paths = sorted(glob.glob(os.path.join(trace_folder, "**", "*.xplane.pb"), recursive=True))
    if not paths:
        raise SystemExit(f"no profile was written under {trace_folder}")
    for plane in ProfileData.from_file(paths[-1]).planes:
        for line in plane.lines:
            for event in line.events:
                stats = dict(event.stats)
                if "hlo_op" in stats and "hlo_module" in stats:
                    yield stats["hlo_module"], stats.get("run_id", 0), stats["hlo_op"], event.start_ns * 1e-9, event.duration_ns * 1e-9


def charge_idle_gaps(events, modules, max_gap: float = MAX_GAP_S):
    """``(module, hlo_op, seconds)``: each op's recorded time plus the idle time after it.

    Per execution of a program (its run id), on the timeline of its thunks (all threads
    together), a stretch where no thunk runs that is shorter than ``max_gap`` is charged to
    the latest started matmul or custom-call operand of the op that ends it (else to the op
    that ended last):
    XLA's CPU runtime records some matmuls and custom calls (the BCSR sparse product of
    ``graph.propagate``) as much shorter than the work they start, and the work shows as an
    idle stretch before the first op that needs its result. Time between executions (host work,
    other programs) is charged to nothing. Container thunks are dropped here.
    """
    timeline: dict[tuple[str, int], list] = collections.defaultdict(list)
    for module, run, op, start, seconds in events:
        opcode = modules.get(module, {}).get(op, (_opcode_from_name(op),))[0]
        if opcode not in CONTAINERS:
            timeline[(module, run)].append((start, seconds, op))
    for (module, _), rows in timeline.items():
        rows.sort()
        end, last = None, None
        started: dict[str, float] = {}
        for start, seconds, op in rows:
            if end is not None and 0 < start - end < max_gap:
                # The op waited for an operand still running: the latest started of its
                # matmul / custom-call operands (recorded short), else the op that ended last.
                program = modules.get(module, {})
                waited = [o for o in program.get(op, ("", "", "", ()))[3] if o in started and program[o][0] in ASYNC_KINDS]
                yield module, max(waited, key=started.get) if waited else last, start - end
            yield module, op, seconds
            started[op] = start
            if end is None or start + seconds >= end:
                end, last = start + seconds, op


def _short(op_name: str, parts: int = 3) -> str:
    return "/".join(op_name.split("/")[-parts:])


def report(events, modules, epochs: int, top: int) -> list[str]:
    """Markdown tables of the thunk events: per program, per source line, per op (seconds per epoch)."""

    def info(module: str, op: str) -> tuple[str, str, str]:
        return modules.get(module, {}).get(op, (_opcode_from_name(op), "", "?"))[:3]

    per_module: dict[str, float] = collections.Counter()
    per_line: dict[str, float] = collections.Counter()
    line_kinds: dict[str, set] = collections.defaultdict(set)
    per_op: dict[tuple[str, str], float] = collections.Counter()
    for module, op, seconds in events:
        opcode, _, where = info(module, op)
        if opcode in CONTAINERS:
            continue
        per_module[module] += seconds
        per_op[(module, op)] += seconds
        key = f"{where} ({'train' if module in TRAIN_PROGRAMS else 'evaluation / other'})"
        per_line[key] += seconds
        line_kinds[key].add(opcode)
    total = sum(per_module.values())
    lines = ["#### Per compiled program (op seconds per epoch: thunks plus the idle stretches charged to them)", "", *markdown_table(("program", "s / epoch", "share"))]
    for module, seconds in sorted(per_module.items(), key=lambda kv: -kv[1]):
        if seconds / total >= 0.001:
            lines.append(markdown_row((module, f"{seconds / epochs:.3f}", f"{seconds / total:.1%}")))
    lines += ["", f"#### By source line (the ops each line emitted, summed; top {top})", "", *markdown_table(("source line (program kind)", "s / epoch", "share", "HLO op kinds"))]
    for key, seconds in sorted(per_line.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(markdown_row((key, f"{seconds / epochs:.3f}", f"{seconds / total:.1%}", ", ".join(sorted(line_kinds[key])))))
    lines += ["", f"#### Single ops (top {top})", "", *markdown_table(("program", "HLO op", "kind", "JAX op (tail)", "source line", "s / epoch", "share"))]
    for (module, op), seconds in sorted(per_op.items(), key=lambda kv: -kv[1])[:top]:
        opcode, op_name, where = info(module, op)
        lines.append(markdown_row((module, op, opcode, _short(op_name), where, f"{seconds / epochs:.3f}", f"{seconds / total:.1%}")))
    return lines + [""]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--mg", action="store_true", help="train with Mirror Gradient (alpha2 0.2, beta 3)")
    parser.add_argument("--method", choices=("sam", "asam", "gnp"), default=None, help="train with this two-pass method instead")
    parser.add_argument("--method-options", default="", help="the method's knobs, key=value[,key=value] (MethodConfig's fields)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--settings", default="", help="model options, key=value[,key=value]")
    parser.add_argument("--graph", default=DEFAULT_GRAPH, help="folder holding baby.inter")
    parser.add_argument("--dataset", default=None, help="profile on this dataset (a name mirrorgrad train takes) instead of the Baby graph")
    parser.add_argument("--out", default=None, help="append the markdown report here")
    args = parser.parse_args(argv)
    if args.dataset is None and not os.path.exists(os.path.join(args.graph, "baby.inter")):
        parser.error(f"the Baby graph is not at {args.graph} (no baby.inter; --graph, or --dataset NAME)")
    if args.epochs < 1 or args.top < 1:
        parser.error("--epochs and --top must be at least 1")
    pairs = key_value_pairs(parser, "--settings", args.settings)
    method_pairs = key_value_pairs(parser, "--method-options", args.method_options)
    if args.mg and args.method:
        parser.error(f"--mg and --method {args.method} are two training methods: name one")
    if method_pairs and not args.method:
        parser.error("--method-options needs --method")
    work = tempfile.mkdtemp(prefix="mg-profile-")
    dump, trace = os.path.join(work, "hlo"), os.path.join(work, "trace")
    # Before jax starts its backend: the flags are read once, then.
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_dump_to={dump} --xla_dump_hlo_as_text".strip()
    import jax

    from mirrorgrad_jax.errors import UserInputError
    from mirrorgrad_jax.models import build_config, get_model
    from mirrorgrad_jax.train import MethodConfig, MGConfig, TrainConfig, train

    try:
        try:
            cls = get_model(args.model)
            config = build_config(cls, {k: setting_value(v) for k, v in pairs})
            method = MethodConfig(name=args.method, **{k: setting_value(v) for k, v in method_pairs}) if args.method else MethodConfig()
        except (ValueError, TypeError) as err:  # UserInputError / ConfigError among them; TypeError: an unknown knob
            parser.error(str(err).strip("'\""))
        unread = sorted(set(method.inert_fields()) & {k for k, _ in method_pairs})
        if unread:
            parser.error(f"--method-options: {args.method} does not read {', '.join(unread)}")
        try:
            if args.dataset is None:
                dataset = baby_dataset(args.graph)
            else:
                from mirrorgrad_jax.data import load_dataset

                dataset = load_dataset(args.dataset, verbose=False)
            load_before = os.getloadavg()
            with jax.profiler.trace(trace):
                result = train(
                    cls, config, dataset, TrainConfig(epochs=args.epochs, patience=1000, seed=999),
                    MGConfig(enabled=args.mg, alpha2=0.2, beta=3), method=method, log=None,
                )  # fmt: skip
        except UserInputError as err:  # a dataset the model cannot take, a setting it refuses, an unknown dataset name
            parser.error(str(err).strip("'\""))
        except RuntimeError as err:  # MovieLens-100K not cached and no network: the library says what to do
            parser.error(str(err))
        modules = parse_hlo_dump(dump)
        body = report(charge_idle_gaps(thunk_events(trace), modules), modules, args.epochs, args.top)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()
    train_s = [round(h["train_s"], 2) for h in result.history]
    eval_s = [round(h["eval_s"] / 2, 2) for h in result.history]
    arm = " with MG" if args.mg else f" with {args.method.upper()}{' (' + args.method_options + ')' if args.method_options else ''}" if args.method else ""
    flags = " --mg" if args.mg else f" --method {args.method}" if args.method else ""
    flags += f" --method-options {args.method_options}" if args.method_options else ""
    header = [
        f"### {args.model}{arm}{' on ' + args.dataset if args.dataset else ''}: where the CPU time goes",
        "",
        *report_header(
            f"python benchmarks/profile_step.py --model {args.model}{flags}"
            f"{' --dataset ' + args.dataset if args.dataset else ''} --epochs {args.epochs}"
            f"{' --top ' + str(args.top) if args.top != 15 else ''}{' --settings ' + args.settings if args.settings else ''}"
        ),
        f"Noise: {load_note(load_before, load_after)}  ",
        f"Train seconds per epoch (wall, the first with compilation, under the profiler): {train_s}; one evaluation pass: {eval_s}",
        "",
    ]
    emit("\n".join(header + body), args.out)


if __name__ == "__main__":
    main()
