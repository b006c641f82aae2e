"""The work folder of a preparation: finished steps kept under a fingerprint, files written atomically."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mirrorgrad_jax.data import DatasetError

__all__ = ["WorkFolder", "atomic_write", "guarded", "input_identity"]

#: Bumped whenever a step's output changes meaning, so old work folders are not reused
#: (2: "None" counts as a missing Amazon text field, as in pandas 2.0).
_FORMAT = 2


def input_identity(path: str | os.PathLike | None) -> Any:
    """What identifies an input for reuse: its path, size and modification time."""
    if path is None:
        return None
    path = Path(path).resolve()
    if path.is_dir():
        return [
            str(path),
            sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in path.iterdir() if p.is_file()),
        ]
    if not path.exists():
        raise DatasetError(f"{path} does not exist")
    stat = path.stat()
    return [str(path), stat.st_size, stat.st_mtime_ns]


class WorkFolder:
    """The work folder beside an output (``.<out name>.prepare-work``): one file pair per finished step.

    :meth:`step` returns a step's stored result when its fingerprint (inputs and options)
    still matches, and otherwise computes and stores it, so a rerun after an
    interruption reuses every finished step.
    """

    def __init__(self, out: Path, verbose: bool) -> None:
        self.root = out.parent / f".{out.name}.prepare-work"
        self.verbose = verbose
        self.run: list[str] = []
        self.reused: list[str] = []

    def say(self, message: str) -> None:
        if self.verbose:
            print(f"[prepare] {message}", flush=True)

    @staticmethod
    def fingerprint(*parts: Any) -> str:
        text = json.dumps([_FORMAT, *parts], sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def _paths(self, step: str) -> tuple[Path, Path]:
        return self.root / f"{step}.npz", self.root / f"{step}.json"

    def step(
        self, step: str, fingerprint: str, compute: Callable[[], tuple[dict[str, np.ndarray], dict[str, Any]]]
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Returns the stored result of ``step`` if its fingerprint matches, else computes it."""
        arrays_path, marker = self._paths(step)
        if marker.is_file() and arrays_path.is_file():
            stored = json.loads(marker.read_text())
            if stored.get("fingerprint") == fingerprint:
                with np.load(arrays_path, allow_pickle=False) as archive:
                    arrays = {key: archive[key] for key in archive.files}
                self.reused.append(step)
                self.say(f"{step}: reused from {self.root}")
                return arrays, stored["info"]
        started = time.perf_counter()
        arrays, info = compute()
        self.root.mkdir(parents=True, exist_ok=True)
        marker.unlink(missing_ok=True)
        atomic_write(arrays_path, lambda handle: np.savez(handle, **arrays))
        atomic_write(
            marker, lambda handle: handle.write(json.dumps({"fingerprint": fingerprint, "info": info}).encode())
        )
        self.run.append(step)
        self.say(f"{step}: done in {time.perf_counter() - started:.1f} s")
        return arrays, info

    def has_finished_steps(self) -> bool:
        """Whether a rerun could reuse something: a finished step or encoded text chunks."""
        return self.root.is_dir() and (any(self.root.glob("*.json")) or any(self.root.glob("text-chunks-*/*.npy")))


def atomic_write(path: Path, write: Callable[[Any], Any]) -> None:
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as handle:
        write(handle)
    os.replace(partial, path)


def guarded(work: WorkFolder, body: Callable[[], Any]) -> Any:
    """Runs ``body``; on failure keeps the work folder only if it holds finished steps."""
    try:
        return body()
    except BaseException:
        if work.root.is_dir():
            if work.has_finished_steps():
                work.say(f"stopped; finished steps are kept in {work.root} and reused by a rerun")
            else:
                shutil.rmtree(work.root, ignore_errors=True)
        raise
