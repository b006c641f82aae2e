"""Hyper-parameter grids: every combination for every seed, selected on validation.

The reference runs the product of every listed value (its model grid times MG's alpha2
grid) and reports the combination with the best TEST metric; :func:`run_grid` selects
on the VALIDATION split by default and can reproduce the reference's habit with
``select_on="test"`` (the summary then says so).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import os
import statistics
from typing import Any, Callable, Sequence

from mirrorgrad_jax.data import RecDataset
from mirrorgrad_jax.errors import ConfigError
from mirrorgrad_jax.models import build_config, get_model
from mirrorgrad_jax.train.config import MethodConfig, MGConfig, TrainConfig, fit_topk, training_method
from mirrorgrad_jax.train.events import TensorBoardRun, event_run_folders
from mirrorgrad_jax.train.loop import resolved_model_config, train
from mirrorgrad_jax.train.progress import above_bars, progress_bar

__all__ = ["as_grid", "check_grid", "check_keys", "expand", "format_mean_std", "run_grid", "summary_table"]


def as_grid(value: Any) -> list[Any]:
    """A value as the list of its grid points (a list is a grid; anything else one point)."""
    return list(value) if isinstance(value, list) else [value]


#: Fields whose value is itself a list (not a grid) unless it is a list of lists.
LIST_VALUED = frozenset({"lr_schedule", "topk"})


def expand(section: dict[str, Any]) -> list[dict[str, Any]]:
    """All combinations of a section whose values may be lists (grids).

    ``lr_schedule: [0.96, 50]`` and ``topk: [5, 10]`` are one value each; write
    ``lr_schedule: [[1.0, 50], [0.96, 50]]`` to grid over them.

    Raises:
      ConfigError: an empty list (a grid with no point would run nothing).
    """
    keys = sorted(section)

    def points(key: str) -> list[Any]:
        value = section[key]
        if key in LIST_VALUED and isinstance(value, list) and not any(isinstance(v, list) for v in value):
            return [value]
        if isinstance(value, list) and not value:
            raise ConfigError(f"{key}: an empty list has no value to train with; give one value or a list of them")
        return as_grid(value)

    combos = itertools.product(*(points(k) for k in keys))
    return [dict(zip(keys, combo)) for combo in combos]


def check_keys(section: str, values: dict[str, Any], cls: type) -> None:
    """Raises a ConfigError naming unknown keys of a config section and the allowed ones."""
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise ConfigError(f"config section {section!r}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def format_mean_std(values: Sequence[float]) -> str:
    """``"0.1234 ± 0.0056"`` (sample std; 0 for one value); ``"n/a"`` for none."""
    if not values:
        return "n/a"
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.4f} ± {std:.4f}"


@dataclasses.dataclass
class _Plan:
    """One combination of the grids: its values as given and its configs (one train config per seed)."""

    model_values: dict[str, Any]
    mg_values: dict[str, Any]
    method_values: dict[str, Any]
    model_config: Any
    train_configs: list[TrainConfig]
    mg: MGConfig
    method: MethodConfig

    def label(self) -> str:
        parts = [str(v) for v in (self.model_values, self.mg_values, self.method_values) if v]
        return " ".join(parts)


def _without_inert_repeats(plans: list[_Plan], grids: dict[str, dict[str, Any]], say: Callable[[str], None]) -> list[_Plan]:
    """Drops combinations that differ from an earlier one only in settings that cannot change the run.

    With MG off (``--no-mg`` on a config whose ``mg`` section grids ``alpha2``), every alpha2
    would train the same run; likewise a SAM run ignores the gradient-norm penalty's knobs.
    Each is trained once, and the log says which axes were collapsed.
    """
    kept, seen, collapsed = [], set(), set()
    for plan in plans:
        inert = {"mg": set(plan.mg.inert_fields()), "method": set(plan.method.inert_fields())}
        values = {"mg": plan.mg_values, "method": plan.method_values}
        live = {section: sorted((k, v) for k, v in values[section].items() if k not in inert[section]) for section in values}
        key = repr((sorted(plan.model_values.items()), dataclasses.asdict(plan.train_configs[0]), live["mg"], live["method"]))
        if key in seen:
            collapsed.update((section, k) for section in values for k in values[section] if k in inert[section])
            continue
        seen.add(key)
        kept.append(plan)
    for section, axis in sorted(collapsed):
        why = "with MG off" if section == "mg" else "with the method that reads other knobs"
        say(f"note: the {section} grid over {axis} {as_grid(grids[section][axis])} cannot change a run {why}; each combination is trained once")
    # A single value given for a knob that no run reads (--method sam --gnp-alpha 0.3, --no-mg --alpha2 0.3).
    for section in ("mg", "method"):
        given = {k for plan in kept for k in (plan.mg_values if section == "mg" else plan.method_values)}
        for axis in sorted(given - {k for s, k in collapsed if s == section}):
            if all(axis in (plan.mg if section == "mg" else plan.method).inert_fields() for plan in kept):
                first = kept[0].mg_values if section == "mg" else kept[0].method_values
                why = "MG is off" if section == "mg" else f"{training_method(kept[0].mg, kept[0].method)} does not read it"
                say(f"note: the {section} setting {axis}={first.get(axis)} cannot change the run: {why}")
    return kept


#: Short names of settings in run names (the others go by their field names).
_SHORT_NAMES = {"alpha1": "a1", "alpha2": "a2", "beta": "b", "learning_rate": "lr", "weight_decay": "wd"}


def _live_settings(plan: _Plan) -> dict[tuple[str, str], Any]:
    """(section, field) -> value of every setting that can change the plan's run (the seed and
    what the method prefix of its name says aside), MG's and the method's first.

    The epoch cap is left out too: it only says where a run ends (no schedule reads it), and
    a run resumed under a larger cap must keep its name, so that its curves go on in one
    TensorBoard run."""
    inert = {"mg": set(plan.mg.inert_fields()) | {"enabled"}, "method": set(plan.method.inert_fields()) | {"name"}}
    sections = {
        "mg": dataclasses.asdict(plan.mg),
        "method": dataclasses.asdict(plan.method),
        "model": dataclasses.asdict(plan.model_config),
        "train": {k: v for k, v in dataclasses.asdict(plan.train_configs[0]).items() if k not in ("seed", "epochs")},
    }
    return {(section, k): v for section, values in sections.items() for k, v in values.items() if k not in inert.get(section, ())}


def _name_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "+".join(_name_value(v) for v in value)
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return "".join("_" if c in "/\\ " else c for c in text)


def _run_names(model_name: str, plans: list[_Plan]) -> list[str]:
    """Each combination's run name: ``<model>/<method>[-<setting>=<value>,...]`` with the settings that vary over the grid.

    ``vbpr/mg-a2=0.2``, ``freedom/mg-a2=0.1,dropout=0.8,reg_weight=0.0001``, ``vbpr/plain``; a
    seed's run is ``<name>/seed<seed>`` under the logdir. Settings a combination cannot use
    (MG's with MG off) are not named; names that would still collide get ``-combo<i>``.
    """
    live = [_live_settings(plan) for plan in plans]
    keys = list(dict.fromkeys(key for settings in live for key in settings))
    varying = [key for key in keys if len({repr(s[key]) for s in live if key in s}) > 1]
    names = []
    for plan, settings in zip(plans, live):
        shown = ",".join(f"{_SHORT_NAMES.get(key[1], key[1])}={_name_value(settings[key])}" for key in varying if key in settings)
        names.append(f"{model_name}/{training_method(plan.mg, plan.method)}" + (f"-{shown}" if shown else ""))
    repeated = {name for name in names if names.count(name) > 1}
    return [f"{name}-combo{i}" if name in repeated else name for i, name in enumerate(names)]


def _check_logdir(logdir: str | None, run_folders: list[str], resume: bool) -> None:
    """Refuses a logdir that already holds one of these runs, unless resuming (then the curves go on).

    Raises:
      ConfigError: ``logdir`` is a file, or holds event files of one of ``run_folders``.
    """
    if logdir is None:
        return
    if os.path.exists(logdir) and not os.path.isdir(logdir):
        raise ConfigError(f"logdir {logdir}: not a folder")
    taken = set(event_run_folders(logdir)) & set(run_folders) if os.path.isdir(logdir) else set()
    if taken and not resume:
        first = sorted(taken)[0]
        raise ConfigError(
            f"logdir {logdir} already holds TensorBoard runs of this grid ({len(taken)}, e.g. {first}): "
            "choose another folder or remove them (a grid resumed from its checkpoints adds to them)"
        )


def _plan(
    model_name: str,
    model_grid: dict[str, Any],
    train_grid: dict[str, Any],
    mg_grid: dict[str, Any],
    method_grid: dict[str, Any],
    seeds: Sequence[int],
    select_on: str,
) -> tuple[type, list[_Plan]]:
    """The model class and every combination's configs, each built (and so checked)."""
    model_cls = get_model(model_name)
    check_keys("model_config", model_grid, model_cls.config_class)
    check_keys("train", train_grid, TrainConfig)
    check_keys("mg", mg_grid, MGConfig)
    check_keys("method", method_grid, MethodConfig)
    if select_on not in ("valid", "test"):
        raise ConfigError(f"select_on must be 'valid' or 'test', got {select_on!r}")
    plans = []
    for m_values, t_values, g_values, x_values in itertools.product(expand(model_grid), expand(train_grid), expand(mg_grid), expand(method_grid)):
        if x_values.get("name", "none") != "none" and "enabled" not in g_values:
            g_values = {**g_values, "enabled": False}  # a method section naming SAM, ASAM or GNP turns MG off
        try:
            plan = _Plan(
                m_values, g_values, x_values, build_config(model_cls, m_values),
                [TrainConfig(**{**t_values, "seed": seed}) for seed in seeds], MGConfig(**g_values), MethodConfig(**x_values),
            )  # fmt: skip
        except ConfigError:
            raise
        except (TypeError, ValueError) as err:
            raise ConfigError(f"invalid configuration: {err}") from None
        training_method(plan.mg, plan.method)  # MG and SAM together are refused before any run
        plans.append(plan)
    return model_cls, plans


def _fit_to_catalogue(plans: list[_Plan], num_items: int, say: Callable[[str], None]) -> list[_Plan]:
    """Every plan's cut-offs fitted to the catalogue (:func:`~mirrorgrad_jax.train.config.fit_topk`); each note said once."""
    said = set()
    for plan in plans:
        fitted = []
        for cfg in plan.train_configs:
            cfg, note = fit_topk(cfg, num_items)
            if note and note not in said:
                said.add(note)
                say(note)
            fitted.append(cfg)
        plan.train_configs = fitted
    return plans


def check_grid(
    model_name: str,
    model_grid: dict[str, Any],
    train_grid: dict[str, Any],
    mg_grid: dict[str, Any],
    *,
    seeds: Sequence[int],
    select_on: str = "valid",
    method_grid: dict[str, Any] | None = None,
    logdir: str | None = None,
    resume: bool = False,
) -> None:
    """Checks the model name and every combination's configs, as :func:`run_grid` will, without any data.

    The command line calls it before it loads a dataset, so an unknown model or a bad value
    is reported at once, not after minutes of reading. The arguments are
    :func:`run_grid`'s.

    Args:
      model_name: a registered model.
      model_grid: the ``model_config`` section.
      train_grid: the ``train`` section.
      mg_grid: the ``mg`` section.
      seeds: the run seeds.
      select_on: ``"valid"`` or ``"test"``.
      method_grid: the ``method`` section.
      logdir: where the runs' TensorBoard event files will go.
      resume: whether the runs resume from their checkpoints (and so may add to runs already in ``logdir``).

    Raises:
      UserInputError: an unknown model (from the model registry).
      ConfigError: unknown keys or bad values in any section; a ``logdir`` that already holds
        runs of this grid (without ``resume``).
    """
    method_grid = dict(method_grid or {})
    _, plans = _plan(model_name, model_grid, train_grid, mg_grid, method_grid, seeds, select_on)
    if logdir is not None:
        plans = _without_inert_repeats(plans, {"mg": mg_grid, "method": method_grid}, lambda _msg: None)
        _check_logdir(logdir, [f"{name}/seed{seed}" for name in _run_names(model_name, plans) for seed in seeds], resume)


def run_grid(
    model_name: str,
    dataset: RecDataset,
    model_grid: dict[str, Any],
    train_grid: dict[str, Any],
    mg_grid: dict[str, Any],
    *,
    seeds: Sequence[int],
    select_on: str = "valid",
    checkpoint_dir: str | None = None,
    resume: bool = False,
    log: Callable[[str], None] | None = print,
    method_grid: dict[str, Any] | None = None,
    logdir: str | None = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Trains every combination of the grids for every seed; selects on validation (or test).

    Every configuration is built (and so type-checked) before the first run starts, so a
    bad value in the last combination fails at once, not after hours. Combinations that
    differ only in settings that cannot change a run (MG's, with MG off; a two-pass
    method's knobs another method does not read) are trained once.

    Args:
      model_name: a registered model.
      dataset: the data.
      model_grid: the ``model_config`` section; a list value is a grid axis (as in the others).
      train_grid: the ``train`` section.
      mg_grid: the ``mg`` section.
      seeds: one run per seed and combination.
      select_on: ``"valid"`` or ``"test"`` (the reference's habit, said in the summary).
      checkpoint_dir: one ``combo<i>-seed<s>`` folder per run when given.
      resume: continue each run from its ``last.ckpt``.
      log: progress printer.
      method_grid: the ``method`` section (SAM, ASAM, the gradient-norm penalty); a method
        other than ``"none"`` turns MG off unless the ``mg`` section sets ``enabled``.
      logdir: write one TensorBoard run per combination and seed here, named by the
        settings that vary over the grid (``vbpr/mg-a2=0.2/seed999``; see
        :class:`~mirrorgrad_jax.train.events.TensorBoardRun` for what a run holds).
      show_progress: a progress bar over the runs, and one over each run's epochs.

    Returns:
      A JSON-ready dict with the configs, per-seed results and the selection.

    Raises:
      ConfigError: unknown keys or bad values in any section; a ``logdir`` that already
        holds runs of this grid (unless resuming from ``checkpoint_dir``).
      ImportError: ``logdir`` without the event-file writer installed.
    """
    say = above_bars(log) if show_progress else (log or (lambda _m: None))
    method_grid = dict(method_grid or {})
    model_cls, plans = _plan(model_name, model_grid, train_grid, mg_grid, method_grid, seeds, select_on)
    plans = _fit_to_catalogue(plans, dataset.num_items, say)
    plans = _without_inert_repeats(plans, {"mg": mg_grid, "method": method_grid}, say)
    names = _run_names(model_name, plans)
    resuming = resume and checkpoint_dir is not None  # without checkpoints every run starts again from epoch 0
    _check_logdir(logdir, [f"{name}/seed{cfg.seed}" for name, plan in zip(names, plans) for cfg in plan.train_configs], resuming)
    bar = progress_bar(sum(len(plan.train_configs) for plan in plans), desc="runs", unit="run", enabled=show_progress, leave=True)
    runs = []
    for index, plan in enumerate(plans):
        per_seed = []
        for train_config in plan.train_configs:
            say(f"== [{index + 1}/{len(plans)}] {plan.label()} seed {train_config.seed}".replace("  ", " "))
            ckpt = None if checkpoint_dir is None else os.path.join(checkpoint_dir, f"combo{index}-seed{train_config.seed}")
            folder = None if logdir is None else os.path.join(logdir, *names[index].split("/"), f"seed{train_config.seed}")
            with TensorBoardRun(folder) if folder else contextlib.nullcontext() as events:
                result = train(
                    model_cls, plan.model_config, dataset, train_config, plan.mg,
                    checkpoint_dir=ckpt, resume=resume, log=log, method=plan.method, events=events, show_progress=show_progress,
                )  # fmt: skip
            per_seed.append({"seed": train_config.seed, **result.to_dict()})
            bar.update(1)
        metric = plan.train_configs[0].valid_metric
        select_values = [r["best_valid" if select_on == "valid" else "test_at_best"].get(metric, float("nan")) for r in per_seed]
        ran = resolved_model_config(model_cls, plan.model_config, plan.mg)  # as run (MVGAE's KL weight follows MG)
        runs.append(
            {
                "model_config": dataclasses.asdict(ran),
                "train": {k: v for k, v in dataclasses.asdict(plan.train_configs[0]).items() if k not in ("seed", "epochs")},
                "mg": dataclasses.asdict(plan.mg),
                "method": dataclasses.asdict(plan.method),
                "seeds": per_seed,
                "selection_score": statistics.fmean(select_values),
            }
        )
    bar.close()
    # A combination whose runs ended before a clean epoch scores NaN; it is never selected
    # over one that has a score (max would keep a NaN met first: every comparison is False).
    best = max(range(len(runs)), key=lambda i: _finite_or_lowest(runs[i]["selection_score"]))
    return {"model": model_name, "dataset": dataset.name, "select_on": select_on, "runs": runs, "best_index": best}


def _finite_or_lowest(value: float) -> float:
    return value if math.isfinite(value) else -math.inf


def summary_table(report: dict[str, Any], metrics: Sequence[str] = ("recall@10", "ndcg@10", "recall@20", "ndcg@20")) -> str:
    """A few readable lines: the selected combination and its valid/test metrics over seeds."""
    best = report["runs"][report["best_index"]]
    # A small catalogue is ranked at fewer cut-offs (fit_topk): show the metrics the runs have
    # (all of them when no run has any, as after a loss that was not finite from the start).
    metrics = [m for m in metrics if any(m in s["best_valid"] for s in best["seeds"])] or list(metrics)
    method = best.get("method", {}).get("name", "none")
    trained_with = f"mg {best['mg']}" if method == "none" else f"method {best['method']}"
    lines = [f"selected combination (on {report['select_on']}): model {best['model_config']}, {trained_with}"]
    if report["select_on"] == "test":
        lines.append("NOTE: selected on the TEST split, as the reference does; these test numbers are optimistic.")
    for split, key in (("valid", "best_valid"), ("test", "test_at_best")):
        cells = [f"{m} {format_mean_std([s[key].get(m, float('nan')) for s in best['seeds']])}" for m in metrics]
        lines.append(f"  {split:5s}: " + "  ".join(cells))
    epochs = [s["best_epoch"] for s in best["seeds"]]
    lines.append(f"  best epoch per seed: {epochs}")
    return "\n".join(lines)
