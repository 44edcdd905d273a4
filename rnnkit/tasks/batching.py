"""Minibatches over a fixed set of examples, shared by the dataset tasks (digits, sunspots,
seq2seq, tagging).

Each pass draws a fresh permutation from (seed, pass), so a run's batch order is a function of
its seed alone: the trainer's ``set_epoch`` picks the pass, and a resumed run meets exactly the
batches the first run would have met next — restored from the position saved with the checkpoint
(:class:`~rnnkit.train.positions.PassPosition`: the pass and the batches of it yielded), so it
draws one permutation, not every batch already seen.

In a run of N processes (:mod:`rnnkit.train.distributed`) every process draws the same global
batches and takes its own consecutive share of each (:meth:`Minibatches.shard`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from ..train.distributed import check_divisible
from ..train.positions import PassPosition


class Minibatches(PassPosition):
    """Shuffled index batches over N examples, each turned into a batch by ``take``.

    Args:
        n: N, the number of examples.
        batch_size: examples per batch; the last batch of a pass holds the remainder.
        seed: with the pass number, fixes each pass's permutation.
        take: ``take(idx, number) -> batch``, where idx (b,) int64 are the examples and
            ``number`` counts batches from the start of the run (pass · batches per pass + i);
            a task that needs the update count (a scheduled-sampling curriculum) reads it from
            the batch, which stays right after a resume.
        num_replicas, rank: read only share ``rank`` of N = ``num_replicas`` of every batch
            (see :meth:`shard`); ``batch_size`` stays the global batch and must be a multiple of N.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int,
        take: Callable[[Tensor, int], Any],
        *,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if n < 1:
            raise ValueError(f"Minibatches: n must be ≥ 1 example, got {n}")
        if batch_size < 1:
            raise ValueError(f"Minibatches: batch_size must be ≥ 1, got {batch_size}")
        check_divisible(batch_size, num_replicas, rank, "Minibatches")
        self.n, self.batch_size, self.seed, self.take = n, batch_size, seed, take
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0

    def shard(self, num_replicas: int, rank: int) -> Minibatches:
        """The same batches, of which this copy yields only process ``rank``'s share.

        Each global batch idx (b,) is cut by :func:`torch.tensor_split` into N consecutive parts
        (B/N each; the short last batch of a pass into parts differing by at most one), and the
        copy yields ``take(part, number)``, or None where its part is empty (fewer than N examples
        left), so every process still counts the same batches.
        """
        check_divisible(self.batch_size, num_replicas, rank, "Minibatches.shard")
        part = copy.copy(self)
        part.num_replicas, part.rank = num_replicas, rank
        return part

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def permutation(self, epoch: int) -> Tensor:
        """The order of pass ``epoch``: (N,) int64."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=gen)

    def __iter__(self) -> Iterator[Any]:
        perm = self.permutation(self.epoch)
        first = self.epoch * len(self)
        begin = self._first()  # 0, or where a restored state stands
        for i in range(begin, len(self)):
            start = i * self.batch_size
            idx = perm[start : start + self.batch_size]
            if self.num_replicas > 1:
                idx = torch.tensor_split(idx, self.num_replicas)[self.rank]  # this process's share
                if idx.numel() == 0:
                    self._yielded(i)
                    yield None
                    continue
            batch = self.take(idx, first + i)
            self._yielded(i)
            yield batch


def chunks(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``size`` over range(n): evaluation in bounded memory."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))
