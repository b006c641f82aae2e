"""TensorBoard event files of training runs: per-epoch curves, the run's settings and its selected result.

One :class:`TensorBoardRun` is one run folder (TensorBoard shows every folder that holds
event files as a run): :func:`~mirrorgrad_jax.train.train` writes into it the training
loss, the learning rate, every validation and test metric and the epoch's training and
evaluation time after each epoch (step = epoch), the run's settings once as a text table
and as HParams, and at the end the selected result under the results JSON's own names
(``best_valid/<metric>``, ``test_at_best/<metric>``, ``best_epoch``; a metric ``recall@20``
is tagged ``recall_at_20``, :func:`metric_tag`). Open them with
``tensorboard --logdir DIR``; :func:`read_scalars` reads the curves back with
TensorBoard's own event reader (for a figure without a server, as notebook 02 draws).

The writer is tensorboardX (protobuf and numpy, no TensorFlow), an optional extra
(``pip install 'mirrorgrad-jax[tensorboard]'``); :func:`check_event_writer` says in one
line what to install. Under several processes only process 0 writes: the other processes'
runs are inert, so a multi-host job gives one set of curves. Every epoch's events are
flushed to disk before training goes on (a TensorBoard open beside the run sees each epoch
at once); the time this takes is kept in :attr:`TensorBoardRun.seconds`.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Mapping

__all__ = ["INSTALL_TENSORBOARD", "TensorBoardRun", "check_event_writer", "event_run_folders", "metric_tag", "read_scalars"]

#: What to install for ``--logdir`` (the writer) and to view or read the curves (TensorBoard).
INSTALL_TENSORBOARD = "pip install 'mirrorgrad-jax[tensorboard]'"

#: The sections of a run's settings (the trainer's checkpoint metadata) shown as its settings.
_SETTING_SECTIONS = ("model_config", "train_config", "mg", "method")


def check_event_writer() -> None:
    """Checks that the event-file writer (tensorboardX) can be imported.

    Raises:
      ImportError: tensorboardX is not installed; the message is one line naming what to install.
    """
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        raise ImportError(f"writing TensorBoard event files needs tensorboardX: {INSTALL_TENSORBOARD} (or pip install tensorboardX)") from None


def metric_tag(section: str, metric: str) -> str:
    """The TensorBoard tag of a metric: ``metric_tag("valid", "recall@20")`` -> ``"valid/recall_at_20"``.

    Tags take letters, digits, ``_``, ``-``, ``.`` and ``/`` only (the writer would replace
    ``@`` with ``_`` and log that it did), so ``@k`` is written ``_at_k``.
    """
    return f"{section}/{metric.replace('@', '_at_')}"


def _is_event_file(name: str) -> bool:
    return "tfevents" in name


def event_run_folders(logdir: str | os.PathLike) -> list[str]:
    """The runs under ``logdir`` as TensorBoard lists them: every folder holding event files, relative, sorted.

    Args:
      logdir: the folder given to ``--logdir`` (or to ``tensorboard --logdir``).

    Returns:
      Paths relative to ``logdir`` with ``/`` separators (``"vbpr/mg-a2=0.1/seed999"``); ``"."``
      when ``logdir`` itself holds event files; empty when it does not exist.
    """
    found = []
    for folder, _dirs, files in os.walk(logdir):
        if any(_is_event_file(name) for name in files):
            found.append(os.path.relpath(folder, logdir).replace(os.sep, "/"))
    return sorted(found)


def _flat(settings: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"mg": {"alpha2": 0.2}}`` -> ``{"mg.alpha2": 0.2}`` (nested mappings joined by dots)."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flat(value, name + "."))
        else:
            out[name] = value
    return out


def _hparam_value(value: Any) -> bool | int | float | str:
    """A setting as the HParams plugin takes it: numbers, booleans and strings as they are, anything else as JSON."""
    if isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value, default=str)


class TensorBoardRun:
    """One training run's TensorBoard event files, in ``folder``.

    Pass it to :func:`~mirrorgrad_jax.train.train` (``events=``), which writes the settings,
    every epoch and the result; close it afterwards (it is a context manager). On a process
    other than process 0 it writes nothing.

    Args:
      folder: the run's folder (created if needed); TensorBoard names the run by its path
        under the ``--logdir`` it is given.

    Raises:
      ImportError: tensorboardX is not installed (:func:`check_event_writer`).

    Example::

        with TensorBoardRun("runs/vbpr/mg-a2=0.2/seed999") as events:
            result = train(VBPR, VBPRConfig(), dataset, TrainConfig(epochs=5), MGConfig(alpha2=0.2), events=events)
        read_scalars("runs/vbpr/mg-a2=0.2/seed999")["valid/recall_at_20"]  # [(0, 0.031), (1, 0.047), ...]

    Attributes:
      folder: the run's folder.
      seconds: wall time spent writing so far (opening, every epoch's events and their flush,
        the result, closing), for measuring what the writer costs.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        check_event_writer()
        import jax
        from tensorboardX import SummaryWriter

        self.folder = os.fspath(folder)
        self.seconds = 0.0
        self._hparams: dict[str, Any] = {}
        self._writer = None
        if jax.process_index() == 0:
            started = time.perf_counter()
            # flush_secs: the background thread's own flushes; every epoch is flushed explicitly anyway.
            self._writer = SummaryWriter(logdir=self.folder, flush_secs=30)
            self.seconds += time.perf_counter() - started

    @property
    def writes(self) -> bool:
        """Whether this process writes (process 0) and the run is still open."""
        return self._writer is not None

    def write_settings(self, settings: Mapping[str, Any]) -> None:
        """The run's settings: a text table (``settings``) and the HParams written with the result.

        Args:
          settings: the trainer's record of the run (model, model config, train config, MG,
            method, dataset fingerprint), as its checkpoints keep it.
        """
        if self._writer is None:
            return
        started = time.perf_counter()
        flat = _flat({k: v for k, v in settings.items() if k in ("model", *_SETTING_SECTIONS)})
        dataset = settings.get("dataset")
        flat["dataset"] = dataset.get("name") if isinstance(dataset, Mapping) else dataset
        self._hparams = {key: _hparam_value(value) for key, value in flat.items()}
        rows = ["| setting | value |", "|---|---|"]
        rows += [f"| {key} | {json.dumps(value, default=str)} |" for key, value in _flat(settings).items()]
        self._writer.add_text("settings", "\n".join(rows), 0)
        self._writer.flush()
        self.seconds += time.perf_counter() - started

    def write_epoch(self, record: Mapping[str, Any]) -> None:
        """One epoch's scalars at step ``record["epoch"]``, flushed to disk.

        Args:
          record: one entry of :attr:`TrainResult.history` (``epoch``, ``loss``, ``lr``,
            ``valid``, ``test``, ``train_s``, ``eval_s``).

        Tags: ``train/loss``, ``train/lr``, ``valid/<metric>`` and ``test/<metric>`` for every
        metric (``valid/recall_at_20``: :func:`metric_tag`), ``time/train_s``, ``time/eval_s``. Values are stored as float32, as
        TensorBoard stores scalars.
        """
        if self._writer is None:
            return
        started = time.perf_counter()
        step = int(record["epoch"])
        scalars = {"train/loss": record["loss"], "train/lr": record["lr"]}
        for split in ("valid", "test"):
            scalars.update({metric_tag(split, metric): value for metric, value in record[split].items()})
        scalars.update({"time/train_s": record["train_s"], "time/eval_s": record["eval_s"]})
        for tag, value in scalars.items():
            self._writer.add_scalar(tag, float(value), step)
        self._writer.flush()
        self.seconds += time.perf_counter() - started

    def write_result(self, result: Mapping[str, Any]) -> None:
        """The selected result under the results JSON's names, and the run's HParams with it.

        Args:
          result: :meth:`TrainResult.to_dict` of the run.

        Tags (step = the best epoch): ``best_valid/<metric>``, ``test_at_best/<metric>``,
        ``best_epoch``; and a text line ``result`` (best epoch, epochs run, why it stopped).
        The HParams dashboard lists the run with its settings and these metrics.
        """
        if self._writer is None:
            return
        started = time.perf_counter()
        step = max(int(result["best_epoch"]), 0)
        metrics = {metric_tag("best_valid", m): v for m, v in result["best_valid"].items()}
        metrics.update({metric_tag("test_at_best", m): v for m, v in result["test_at_best"].items()})
        metrics["best_epoch"] = result["best_epoch"]
        for tag, value in metrics.items():
            self._writer.add_scalar(tag, float(value), step)
        self._writer.add_text(
            "result", f"best epoch {result['best_epoch']}, {result['epochs_run']} epochs run, stopped: {result['stop_reason']}", step
        )
        from tensorboardX.summary import hparams

        # In this run's own folder (tensorboardX's add_hparams would open a sub-run for them).
        for summary in hparams(self._hparams, metrics):
            self._writer.file_writer.add_summary(summary)
        self._writer.flush()
        self.seconds += time.perf_counter() - started

    def close(self) -> None:
        """Flushes and closes the event file (again: nothing)."""
        if self._writer is None:
            return
        started = time.perf_counter()
        self._writer.close()
        self._writer = None
        self.seconds += time.perf_counter() - started

    def __enter__(self) -> TensorBoardRun:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_scalars(folder: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """Every scalar curve of one run folder, read with TensorBoard's own event reader.

    Args:
      folder: a run folder (one of :func:`event_run_folders`, joined to its logdir).

    Returns:
      tag -> ``[(step, value), ...]`` in the order written (values as stored: float32).

    Raises:
      ImportError: TensorBoard is not installed; the message names what to install.
    """
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        raise ImportError(f"reading TensorBoard event files needs tensorboard: {INSTALL_TENSORBOARD} (or pip install tensorboard)") from None
    accumulator = EventAccumulator(os.fspath(folder), size_guidance={"scalars": 0})  # 0: keep every point
    accumulator.Reload()
    return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}
