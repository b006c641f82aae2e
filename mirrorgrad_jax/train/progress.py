"""Progress bars over the epochs of a run and the runs of a grid, with the log lines printed above them.

The bars are tqdm's (the same as ``mirrorgrad prepare``'s), on stderr. The command line
shows them only on an interactive terminal and never with ``--quiet``; a disabled bar is
tqdm's own no-op, so callers update it unconditionally.
"""

from __future__ import annotations

from typing import Any, Callable

from tqdm import tqdm

__all__ = ["above_bars", "progress_bar"]


def progress_bar(total: int, *, desc: str, unit: str, initial: int = 0, enabled: bool = True, leave: bool = False) -> Any:
    """A tqdm bar of ``total`` steps (does nothing when not ``enabled``).

    Args:
      total: the number of steps (epochs, runs); an early stop closes the bar before it is full.
      desc: the text before the bar.
      unit: what one step is.
      initial: steps already done (a resumed run).
      enabled: False gives a bar that draws nothing.
      leave: keep the finished bar on screen.
    """
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=leave, disable=not enabled, dynamic_ncols=True)


def above_bars(log: Callable[[str], None] | None) -> Callable[[str], None]:
    """``log`` made to print above the open bars (they are cleared and redrawn around each line).

    ``None`` (silence) stays silent.
    """
    if log is None:
        return lambda _msg: None

    def say(message: str) -> None:
        with tqdm.external_write_mode():
            log(message)

    return say
