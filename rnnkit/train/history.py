"""A run's history in memory that does not grow with the run.

Every record of a run is on disk, in its log (:mod:`rnnkit.train.logs`); in memory the trainer
keeps only the last ``keep`` records (:class:`~collections.deque`, what the loop and the
callbacks read: the last update's loss, the mean of the last 20, the last validation's time),
and the plot keeps :class:`CurveRecords`, every validation and a thinned set of training
records (every s-th update, the stride doubling whenever the set is full), enough to draw the
curves of a run of any length.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

HISTORY_KEEP = 10_000  # records a Trainer keeps in memory (the log on disk holds them all)
CURVE_POINTS = 4_000  # training records the plot keeps (validations: as many again)


def bounded_history(records: Iterable[dict] = (), keep: int = HISTORY_KEEP) -> deque:
    """The last ``keep`` of ``records`` in a deque that drops its oldest beyond ``keep``."""
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"history: keep must be an int ≥ 1, got {keep!r}")
    return deque(records, maxlen=keep)


class CurveRecords:
    """Log records for plotting, in memory bounded by ``points``: every validation record (the
    first ``points``, then thinned as the training records are), and the training records of
    every ``stride``-th update, the stride doubling (and every other kept record dropped) each
    time ``points`` are held (None: ``CURVE_POINTS``). A run of n updates keeps between points/2 and points of them,
    evenly spread, whatever n is.
    """

    def __init__(self, points: int | None = None) -> None:
        points = CURVE_POINTS if points is None else points
        if isinstance(points, bool) or not isinstance(points, int) or points < 2:
            raise ValueError(f"CurveRecords: points must be an int ≥ 2, got {points!r}")
        self.points, self.stride = points, 1
        self.train: list[dict] = []
        self.val: list[dict] = []

    def add(self, record: dict) -> None:
        """Keep ``record`` if it falls on the stride (training) or always (validation)."""
        if record.get("kind") == "val":
            self.val.append(record)
            if len(self.val) > self.points:
                self.val = self.val[::2]
            return
        if record["step"] % self.stride:
            return
        self.train.append(record)
        while len(self.train) >= self.points:
            self.stride *= 2
            self.train = [r for r in self.train if r["step"] % self.stride == 0]

    def records(self) -> list[dict]:
        """The kept records, in step order (training before the validation of the same step)."""
        return sorted(self.train + self.val, key=lambda r: (r["step"], r.get("kind") == "val"))

    def __len__(self) -> int:
        return len(self.train) + len(self.val)
