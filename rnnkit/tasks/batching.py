"""Minibatches over a fixed set of examples, shared by the dataset tasks (digits, sunspots,
seq2seq, tagging).

Each pass draws a fresh permutation from (seed, pass), so a run's batch order is a function of
its seed alone: the trainer's ``set_epoch`` picks the pass, and a resumed run, which skips the
batches already seen, meets exactly the batches the first run would have met next.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import torch
from torch import Tensor


class Minibatches:
    """Shuffled index batches over N examples, each turned into a batch by ``take``.

    Args:
        n: N, the number of examples.
        batch_size: examples per batch; the last batch of a pass holds the remainder.
        seed: with the pass number, fixes each pass's permutation.
        take: ``take(idx, number) -> batch``, where idx (b,) int64 are the examples and
            ``number`` counts batches from the start of the run (pass · batches per pass + i);
            a task that needs the update count (a scheduled-sampling curriculum) reads it from
            the batch, which stays right after a resume.
    """

    def __init__(self, n: int, batch_size: int, seed: int, take: Callable[[Tensor, int], Any]) -> None:
        if n < 1:
            raise ValueError(f"Minibatches: n must be ≥ 1 example, got {n}")
        if batch_size < 1:
            raise ValueError(f"Minibatches: batch_size must be ≥ 1, got {batch_size}")
        self.n, self.batch_size, self.seed, self.take = n, batch_size, seed, take
        self.epoch = 0

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Choose the pass the next iteration yields (the trainer calls this before each pass)."""
        self.epoch = epoch

    def permutation(self, epoch: int) -> Tensor:
        """The order of pass ``epoch``: (N,) int64."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=gen)

    def __iter__(self) -> Iterator[Any]:
        perm = self.permutation(self.epoch)
        first = self.epoch * len(self)
        for i, start in enumerate(range(0, self.n, self.batch_size)):
            yield self.take(perm[start : start + self.batch_size], first + i)


def chunks(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``size`` over range(n): evaluation in bounded memory."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))
