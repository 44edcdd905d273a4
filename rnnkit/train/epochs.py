"""Passes (epochs) over a training data source: what the :class:`~rnnkit.train.Trainer` reads
its batches from.

A source is any re-iterable of batches: a ``torch.utils.data.DataLoader`` (with
``shuffle=True`` it reshuffles at every pass, since each pass is a new ``iter(loader)``), a
list of batches, or an object whose ``__iter__`` starts a new pass (optionally with
``set_epoch(e)``, called before pass e, such as :class:`rnnkit.tasks.batching.Minibatches`). A
list is reshuffled only when asked (``shuffle=True``). A one-shot iterator (a generator) can
feed one pass or run forever, but cannot be read twice: when it runs dry the error says so and
what to pass instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch


class Epochs:
    """``(epoch, batch)`` pairs, pass after pass over ``data``, until ``max_epochs`` passes.

    Args:
        data: a re-iterable of batches (see the module docstring).
        max_epochs: passes to make; None: as many as are asked for.
        shuffle: reorder a list (any sequence with ``len`` and indexing) of batches at every
            pass, by a permutation drawn from ``seed`` and the pass number. A source that is not
            a sequence (a DataLoader) shuffles itself: asking here is an error.
        seed: fixes the shuffled orders; None: drawn from torch's global generator.

    ``epoch`` is the pass now being read (from 0), ``index`` the batches taken from it, and
    ``completed`` the passes read to their end. :meth:`state_dict`/:meth:`load_state_dict`
    save and restore that place, so a resumed run can seek to it instead of replaying: the next
    pass restarts ``epoch`` (``set_epoch`` and the list's permutation are functions of it) and
    skips its first ``index`` batches.
    """

    def __init__(
        self, data: Iterable, *, max_epochs: int | None = None, shuffle: bool = False, seed: int | None = None
    ) -> None:
        if shuffle and not _is_list_like(data):
            raise ValueError(
                f"Epochs: shuffle=True reorders a list of batches; a {type(data).__name__} is not one — "
                "a DataLoader shuffles itself: DataLoader(..., shuffle=True)"
            )
        self.data, self.max_epochs, self.shuffle, self.seed = data, max_epochs, bool(shuffle), seed
        self.one_shot = isinstance(data, Iterator)  # a generator: iter() gives itself, not a new pass
        self.epoch, self.index, self._completed = 0, 0, 0
        self._first_pass = 0  # batches the first pass gave
        self._pass: Iterator[Any] | None = None
        self._source_positioned = False  # the source itself stands at (epoch, index): skip nothing

    def __iter__(self) -> Epochs:
        return self

    def __next__(self) -> tuple[int, Any]:
        while True:
            if self._pass is None:
                if self.max_epochs is not None and self.epoch >= self.max_epochs:
                    raise StopIteration
                self._pass = self._start_pass()
            try:
                batch = next(self._pass)
            except StopIteration:
                self._end_pass()
                continue
            self.index += 1
            return self.epoch, batch

    def _start_pass(self) -> Iterator[Any]:
        data, skip = self.data, 0 if self._source_positioned else self.index
        self._source_positioned = False
        if hasattr(data, "set_epoch"):
            data.set_epoch(self.epoch)  # lets a data source reshuffle per pass, reproducibly
        sampler = getattr(data, "sampler", None)
        if isinstance(data, torch.utils.data.DataLoader) and hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.epoch)  # a DistributedSampler's order of this pass
        if self.shuffle:
            order = self.permutation(self.epoch).tolist()
            it: Iterator[Any] = (data[i] for i in order)
        else:
            it = iter(data)
        for _ in range(skip):  # a restored place: the batches of this pass already read
            next(it)
        return it

    def _end_pass(self) -> None:
        if self.index == 0:
            if self.epoch == 0:
                raise ValueError("training data is empty: the batch source gave no batches")
            if self.one_shot:
                raise ValueError(
                    f"training data is a one-shot iterator ({type(self.data).__name__}): it gave {self._first_pass} "
                    "batches in its first pass and cannot start a second. Pass something that can be iterated again "
                    "— a list of batches, a torch DataLoader, or an object whose __iter__ starts a new pass — or "
                    f"stop after one pass (max_epochs=1, or max_steps ≤ {self._first_pass})"
                )
            raise ValueError(
                f"training data gave {self._first_pass} batches in its first pass and none in pass "
                f"{self.epoch + 1}; a source must give batches at every pass"
            )
        if self.epoch == 0:
            self._first_pass = self.index
        self.epoch, self.index, self._completed, self._pass = self.epoch + 1, 0, self._completed + 1, None

    @property
    def completed(self) -> int:
        """The number of passes read to their end (the current one counts once a source with
        ``len`` has given all its batches: a run that stops on its last batch made that pass)."""
        try:
            whole = self.index > 0 and self.index == len(self.data)
        except TypeError:  # no len: a pass ends only when it runs out
            whole = False
        return self._completed + int(whole)

    def permutation(self, epoch: int) -> torch.Tensor:
        """The order of pass ``epoch`` of a shuffled list: (N,) int64."""
        n = len(self.data)
        if self.seed is None:
            return torch.randperm(n)
        seed = int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0])
        return torch.randperm(n, generator=torch.Generator().manual_seed(seed))

    def state_dict(self) -> dict:
        """Where the reading stands: ``{"epoch", "index", "completed"}``, and the source's own
        state when it has ``state_dict``."""
        state = {"epoch": self.epoch, "index": self.index, "completed": self._completed}
        if callable(getattr(self.data, "state_dict", None)):
            state["data"] = self.data.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Seek to a saved place: the next batch is batch ``index`` of pass ``epoch``."""
        if "data" in state and callable(getattr(self.data, "load_state_dict", None)):
            self.data.load_state_dict(state["data"])
        self.epoch, self.index, self._completed = int(state["epoch"]), int(state["index"]), int(state["completed"])
        self._pass = None

    def continue_from(self, epoch: int, index: int) -> None:
        """Read on from batch ``index`` of pass ``epoch`` where the source itself was put back
        there (its own ``load_state_dict``, :mod:`rnnkit.train.positions`): nothing is skipped
        or drawn again, and the passes before ``epoch`` count as completed."""
        self.epoch, self.index, self._completed, self._pass = int(epoch), int(index), int(epoch), None
        self._source_positioned = True


def _is_list_like(data: Any) -> bool:
    return isinstance(data, Sequence) or (
        hasattr(data, "__len__") and hasattr(data, "__getitem__") and not isinstance(data, torch.utils.data.DataLoader)
    )
