"""Atomic checkpoint files.

A checkpoint is a pickled dict of plain Python values and numpy arrays, written to a
temporary file in the same folder, flushed to disk and renamed over the target, so a
crash mid-write never leaves a truncated checkpoint behind. Only load checkpoints you
wrote yourself: unpickling runs code.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from typing import Any

__all__ = ["save_checkpoint", "load_checkpoint", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = 1


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Writes ``payload`` to ``path`` atomically (temp file + ``os.replace``)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".ckpt-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump({"format": CHECKPOINT_FORMAT, **payload}, f, protocol=pickle.HIGHEST_PROTOCOL)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a checkpoint written by :func:`save_checkpoint`, with clear errors."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with open(path, "rb") as f:
            payload = pickle.load(f)
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as err:
        raise ValueError(f"{path} is not a readable mirrorgrad checkpoint: {err}") from err
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a mirrorgrad checkpoint of format {CHECKPOINT_FORMAT}")
    return payload
