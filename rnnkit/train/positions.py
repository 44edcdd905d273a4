"""Where a batch source stands, saved with a checkpoint so a resumed run continues from there.

The protocol (what :class:`~rnnkit.train.Trainer` looks for on its ``data``): a source that
defines ``state_dict()`` and ``load_state_dict(state)`` has its state saved in every checkpoint
(as ``extra["data"]``) and restored on resume, and the Trainer then starts the pass the state
names (``state["epoch"]``) instead of drawing the batches already seen again. A source without
the two methods (a plain list, a generator, a DataLoader) is still resumed exactly, by the old
way: the Trainer draws and discards ``step`` batches — which costs as much data work as the run
so far; a checkpoint written before a source had a state is resumed that way too.

:class:`PassPosition` is the state of a source that yields its batches in passes, each pass a
function of the pass number alone (:class:`~rnnkit.tasks.batching.Minibatches`,
:class:`~rnnkit.train.tbptt.LaneStream`): the pass, and how many of its batches were yielded.
Restoring it costs what computing one batch costs, not a replay.
"""

from __future__ import annotations


class PassPosition:
    """A mixin for a source whose ``__iter__`` yields pass ``self.epoch``'s batches in order.

    The source's ``__iter__`` starts at ``self._first()`` (0, or the position a restored state
    names) and calls ``self._yielded(i)`` before yielding batch ``i`` of the pass (so a checkpoint
    taken after the trainer received it counts it). ``state_dict()`` is ``{"epoch": pass,
    "position": batches of the pass yielded so far}``.
    """

    epoch: int = 0
    _position: int = 0
    _resume_at: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Choose the pass the next iteration yields (the trainer calls this before each pass)."""
        self.epoch = epoch

    def state_dict(self) -> dict:
        """The pass and how many of its batches were yielded: where the next batch comes from."""
        return {"epoch": int(self.epoch), "position": int(self._position)}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state``: the next iteration of pass ``state["epoch"]`` starts at batch
        ``state["position"]`` (a later pass starts at 0)."""
        epoch, position = state["epoch"], state["position"]
        for name, v in (("epoch", epoch), ("position", position)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{type(self).__name__}.load_state_dict: {name} must be an int ≥ 0, got {v!r}")
        self.epoch, self._position, self._resume_at = epoch, position, (epoch, position)

    def _first(self) -> int:
        """The batch of the pass this iteration starts at (a restored position is used once)."""
        start = self._resume_at[1] if self._resume_at is not None and self._resume_at[0] == self.epoch else 0
        self._resume_at, self._position = None, start
        return start

    def _yielded(self, index: int) -> None:
        self._position = index + 1
