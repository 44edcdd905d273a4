"""Minibatches of the dataset tasks: every pass a permutation, the order a function of seed and pass."""

import pytest
import torch

from rnnkit.tasks.batching import Minibatches, chunks


def passes(batches, n_passes):
    out = []
    for epoch in range(n_passes):
        batches.set_epoch(epoch)
        out.append(list(batches))
    return out


def test_each_pass_visits_every_example_once_and_numbers_batches_across_passes():
    batches = Minibatches(23, 5, seed=3, take=lambda idx, number: (idx, number))
    assert len(batches) == 5
    runs = passes(batches, 3)
    for epoch, run in enumerate(runs):
        seen = torch.cat([idx for idx, _ in run])
        assert sorted(seen.tolist()) == list(range(23))
        assert [len(idx) for idx, _ in run] == [5, 5, 5, 5, 3]
        assert [number for _, number in run] == list(range(5 * epoch, 5 * epoch + 5))
    assert not torch.equal(torch.cat([i for i, _ in runs[0]]), torch.cat([i for i, _ in runs[1]]))


def test_the_order_is_a_function_of_seed_and_pass_only():
    a = passes(Minibatches(40, 8, seed=1, take=lambda idx, _: idx), 2)
    b = passes(Minibatches(40, 8, seed=1, take=lambda idx, _: idx), 2)
    c = passes(Minibatches(40, 8, seed=2, take=lambda idx, _: idx), 2)
    assert all(torch.equal(x, y) for x, y in zip(a[1], b[1]))
    assert not all(torch.equal(x, y) for x, y in zip(a[0], c[0]))
    resumed = Minibatches(40, 8, seed=1, take=lambda idx, _: idx)
    resumed.set_epoch(1)  # a resumed run starts its second pass where the first run would have
    assert all(torch.equal(x, y) for x, y in zip(resumed, a[1]))


def test_bad_sizes_are_refused_by_name():
    with pytest.raises(ValueError, match="n must be ≥ 1 example, got 0"):
        Minibatches(0, 4, 0, take=lambda idx, _: idx)
    with pytest.raises(ValueError, match="batch_size must be ≥ 1, got 0"):
        Minibatches(5, 0, 0, take=lambda idx, _: idx)


def test_chunks_cover_the_range_in_order():
    assert [(s.start, s.stop) for s in chunks(7, 3)] == [(0, 3), (3, 6), (6, 7)]
