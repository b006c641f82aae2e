"""Which mini-batch is a mirror batch, and how an epoch's batches are grouped for a jitted scan.

:func:`is_mirror_batch` is the one place that decides whether a batch mirrors; the
transformation's own counter, the trainer's dispatch and :func:`plan_epoch` all ask it.
:func:`plan_epoch` turns an epoch's mirror flags into the segments the trainer runs:
single steps, scans over whole blocks of ``beta`` batches whose first one mirrors (the
reference schedule), or one scan of normal batches (an epoch without mirror batches).
"""

from __future__ import annotations

from typing import Literal, NamedTuple, Sequence

import jax

__all__ = ["EpochSegment", "Schedule", "epoch_layout", "is_mirror_batch", "plan_epoch"]

Schedule = Literal["reference", "global", "algorithm1"]


def is_mirror_batch(
    batch_index: int | jax.Array,
    beta: int,
    *,
    schedule: Schedule = "reference",
    steps_per_epoch: int | None = None,
) -> bool | jax.Array:
    """Whether the mini-batch with 0-based global index ``batch_index`` is a mirror batch.

    Works on Python ints (for host-side dispatch) and on traced integers alike.

    Args:
      batch_index: 0-based count of batches completed before this one.
      beta: mirror interval (>= 1).
      schedule: ``"reference"`` reproduces the reference trainer: the in-epoch batch
        index ``b`` restarts every epoch and batches with ``b % beta == 0`` (0, beta,
        2*beta, ...) are mirror batches, so the first batch of every epoch mirrors.
        ``"global"``: batches 0, beta, 2*beta, ... of the whole run, never restarted
        (the same as ``"reference"`` when every epoch has a multiple of ``beta``
        batches). ``"algorithm1"`` is the paper's Algorithm 1: a global 1-based
        counter ``t`` with mirror steps where ``t % beta == 0`` (batches beta-1,
        2*beta-1, ... in 0-based terms), never reset.
      steps_per_epoch: batches per epoch, used by ``"reference"`` to restart the index;
        with ``None`` the index never restarts (as ``"global"``).

    Returns:
      A Python bool for Python inputs, else a boolean array.
    """
    if schedule == "algorithm1":
        return (batch_index + 1) % beta == 0
    if schedule == "global":
        return batch_index % beta == 0
    if schedule != "reference":
        raise ValueError(f"schedule must be 'reference', 'global' or 'algorithm1', got {schedule!r}")
    in_epoch = batch_index if steps_per_epoch is None else batch_index % steps_per_epoch
    return in_epoch % beta == 0


class EpochSegment(NamedTuple):
    """A run of an epoch's full batches ``start .. stop - 1`` with one way of dispatching them.

    Attributes:
      kind: ``"step"`` (one batch, one jitted step), ``"blocks"`` (a scan over whole blocks
        of ``beta`` batches, the first of each mirrored) or ``"scan"`` (a scan over normal
        batches).
      start: the first batch of the segment (index within the epoch).
      stop: one past the last batch.
      mirror: for a ``"step"``, whether the batch mirrors.
    """

    kind: Literal["step", "blocks", "scan"]
    start: int
    stop: int
    mirror: bool = False


def plan_epoch(mirror: Sequence[bool], beta: int, *, scan: bool = True, first_alone: bool = False) -> list[EpochSegment]:
    """Groups an epoch's full batches, given which of them mirror, into dispatch segments.

    An epoch without any mirror batch is one normal scan. Otherwise every maximal run of
    whole blocks ``[mirror, normal x (beta - 1)]`` becomes one ``"blocks"`` segment and
    every other batch a single step. Under the reference schedule that is the blocks
    ``0, beta, 2*beta, ...`` followed by the remainder of the epoch.

    Args:
      mirror: per full batch of the epoch, whether it mirrors (from :func:`is_mirror_batch`).
      beta: the mirror interval (the block length).
      scan: False dispatches every batch as a single step.
      first_alone: batch 0 must be a single step (a model whose first batch of an epoch
        has a loss of its own); the scans start after it, blocks at the next block start.

    Returns:
      The segments in batch order, covering ``0 .. len(mirror) - 1`` exactly once.

    Examples:
      >>> [tuple(s) for s in plan_epoch([True, False, False, True, False], 3)]
      [('blocks', 0, 3, True), ('step', 3, 4, True), ('step', 4, 5, False)]
    """
    if beta < 1:
        raise ValueError(f"beta must be >= 1, got {beta}")
    flags = [bool(m) for m in mirror]
    # A block longer than the epoch never fits: not built (a beta of 1e9 would be a list of 1e9).
    block = [True] + [False] * (beta - 1) if beta <= len(flags) else None
    segments: list[EpochSegment] = []
    i = 0
    if first_alone and flags:
        segments.append(EpochSegment("step", 0, 1, flags[0]))
        i = 1
    if scan and i < len(flags) and not any(flags):
        return segments + [EpochSegment("scan", i, len(flags))]
    while i < len(flags):
        stop = i
        while scan and block is not None and flags[stop : stop + beta] == block:
            stop += beta
        if stop > i:
            segments.append(EpochSegment("blocks", i, stop, True))
            i = stop
        else:
            segments.append(EpochSegment("step", i, i + 1, flags[i]))
            i += 1
    return segments


def epoch_layout(num_full_batches: int, beta: int) -> tuple[int, int]:
    """``(blocks, remainder)`` of an epoch under the reference schedule.

    With the in-epoch index restarting at 0, batches ``0, beta, 2*beta, ...`` mirror:
    ``blocks`` whole blocks of ``beta`` (first one mirrored), then ``remainder`` batches
    whose first one (index ``blocks * beta``) mirrors again. A view of :func:`plan_epoch`.
    """
    flags = [is_mirror_batch(i, beta, schedule="reference", steps_per_epoch=num_full_batches) for i in range(num_full_batches)] if beta >= 1 else []
    blocks = sum((s.stop - s.start) // beta for s in plan_epoch(flags, beta) if s.kind == "blocks")
    return blocks, num_full_batches - blocks * beta
