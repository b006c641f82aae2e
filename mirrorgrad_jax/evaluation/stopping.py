"""Model selection as the reference trainer does it: best rounded validation metric, and patience."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

__all__ = ["EarlyStopping"]


@dataclasses.dataclass
class EarlyStopping:
    """Best-epoch tracking and patience, as the reference trainer.

    The reference selects on the valid ``recall@5`` (bigger is better) with patience
    20: an epoch improves only if its ROUNDED value (4 decimals) is strictly greater
    than the best so far (initially -1); training stops when more than ``patience``
    consecutive epochs did not improve, i.e. on the 21st.

    Attributes:
      metric: the key of the valid-metric dict to select on.
      patience: the reference's ``stopping_step``.
      best: the best (rounded) value so far.
      best_epoch: the epoch of ``best``; -1 before any update.
      bad_epochs: consecutive non-improving epochs since ``best_epoch``.
      round_to: decimals values are rounded to before comparing (None: as given).

    Example::

        stopper = EarlyStopping()
        for epoch in range(1000):
            ...
            if stopper.update(valid[stopper.metric], epoch):
                best_valid, best_test = valid, test
            if stopper.should_stop:
                break
    """

    metric: str = "recall@5"
    patience: int = 20
    best: float = -1.0
    best_epoch: int = -1
    bad_epochs: int = 0
    round_to: int | None = 4

    def update(self, value: float, epoch: int) -> bool:
        """Records one epoch's value; True when it is the new best (strictly greater)."""
        value = float(value if self.round_to is None else np.round(value, self.round_to))
        if value > self.best:
            self.best, self.best_epoch, self.bad_epochs = value, int(epoch), 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        """True once more than ``patience`` consecutive epochs did not improve."""
        return self.bad_epochs > self.patience

    def to_dict(self) -> dict[str, Any]:
        """The state as a plain dict (for checkpoints)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> EarlyStopping:
        """Rebuilds from :meth:`to_dict` output.

        Raises:
          ValueError: on a key that is not a field.
        """
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(state) - fields)
        if unknown:
            raise ValueError(f"unknown EarlyStopping keys {unknown}; allowed: {sorted(fields)}")
        return cls(**state)
