"""Epochs: the Trainer reads a DataLoader (or any re-iterable) pass after pass, reshuffling where
the loader does, stops at max_epochs, says when a one-shot iterator runs dry, and a time budget
given alone is not capped by a default step limit."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from rnnkit import ManyToOne, Stack
from rnnkit.cells import GRUCell
from rnnkit.data import SequenceDataset, collate_sequences
from rnnkit.train import StepResult, TrainConfig, Trainer
from rnnkit.train.epochs import Epochs
from rnnkit.train.trainer import DEFAULT_MAX_STEPS


def dataset(n=20, seed=0):
    rng = np.random.default_rng(seed)
    seqs = [rng.normal(size=(int(rng.integers(2, 9)), 3)).astype(np.float32) for _ in range(n)]
    labels = [int(s[0, 0] > 0) for s in seqs]
    return SequenceDataset(seqs, labels)


def step(model, batch):
    x, lengths, y = batch
    return StepResult(F.cross_entropy(model(x, lengths), y), items=len(y))


def model_and_optimizer():
    torch.manual_seed(7)
    model = ManyToOne(Stack.build(GRUCell, 3, 8), 2)
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def loader(seed=3):
    return DataLoader(
        dataset(),
        batch_size=6,
        shuffle=True,
        collate_fn=collate_sequences,
        generator=torch.Generator().manual_seed(seed),
    )


def test_a_dataloader_over_epochs_equals_the_same_batches_fed_by_hand():
    model, opt = model_and_optimizer()
    cfg = dict(eval_every=1000, progress=False, seed=0)
    fed = Trainer(model, opt, step, loader(), TrainConfig(max_epochs=3, **cfg)).fit()
    # by hand: the same loader's three passes, written out as one list of batches
    again = loader()
    by_hand = [batch for _ in range(3) for batch in again]
    assert len(by_hand) == 12  # 4 batches a pass (20 sequences, 6 a batch)
    firsts = [torch.cat([b.y for b in by_hand[4 * e : 4 * e + 4]]) for e in range(3)]
    orders = [tuple(by_hand[4 * e].lengths.tolist()) for e in range(3)]
    assert len(set(orders)) > 1 and all(sorted(f.tolist()) == sorted(firsts[0].tolist()) for f in firsts)  # reshuffled
    model2, opt2 = model_and_optimizer()
    hand = Trainer(model2, opt2, step, by_hand, TrainConfig(max_steps=12, **cfg)).fit()
    assert fed.steps == 12 and fed.stop_reason == "max_epochs" and fed.epochs == 3
    assert hand.stop_reason == "max_steps"
    losses = [r["loss"] for r in fed.history if r["kind"] == "train"]
    assert losses == [r["loss"] for r in hand.history if r["kind"] == "train"]
    assert [r["epoch"] for r in fed.history if r["kind"] == "train"] == [e for e in range(3) for _ in range(4)]
    for p, q in zip(model.parameters(), model2.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_max_epochs_and_max_steps_whichever_comes_first():
    model, opt = model_and_optimizer()
    result = Trainer(model, opt, step, loader(), TrainConfig(max_epochs=5, max_steps=7, progress=False)).fit()
    assert (result.steps, result.stop_reason, result.epochs) == (7, "max_steps", 1)


def test_a_list_is_reshuffled_only_when_asked():
    batches = list(range(5))
    plain = Epochs(batches, max_epochs=3)
    assert [b for _, b in plain] == batches * 3 and plain.completed == 3
    shuffled = list(Epochs(batches, max_epochs=3, shuffle=True, seed=1))
    passes = [[b for e, b in shuffled if e == k] for k in range(3)]
    assert all(sorted(p) == batches for p in passes) and len({tuple(p) for p in passes}) > 1
    assert shuffled == list(Epochs(batches, max_epochs=3, shuffle=True, seed=1))  # the seed fixes the orders
    with pytest.raises(ValueError, match="a DataLoader shuffles itself"):
        Epochs(loader(), shuffle=True)


def test_the_trainer_shuffles_a_list_of_batches_with_shuffle_true():
    seen = []

    def record(model, batch):
        seen.append(batch[2].tolist())
        return step(model, batch)

    batches = list(loader())
    model, opt = model_and_optimizer()
    Trainer(model, opt, record, batches, TrainConfig(max_epochs=2, shuffle=True, progress=False, seed=4)).fit()
    assert seen[:4] != seen[4:] and sorted(map(tuple, seen[:4])) == sorted(map(tuple, seen[4:]))
    assert sorted(map(tuple, seen[:4])) == sorted(tuple(b[2].tolist()) for b in batches)


def test_a_one_shot_generator_that_runs_dry_is_told_so():
    batches = list(loader())
    model, opt = model_and_optimizer()
    trainer = Trainer(model, opt, step, (b for b in batches), TrainConfig(max_steps=10, progress=False))
    with pytest.raises(
        ValueError,
        match=r"one-shot iterator \(generator\): it gave 4 batches in its first pass.*"
        r"a list of batches, a torch DataLoader.*max_epochs=1, or max_steps ≤ 4",
    ):
        trainer.fit()
    assert trainer.step == 4
    model, opt = model_and_optimizer()
    one = Trainer(model, opt, step, (b for b in batches), TrainConfig(max_epochs=1, progress=False)).fit()
    assert (one.steps, one.stop_reason, one.epochs) == (4, "max_epochs", 1)


def test_empty_data_still_says_empty():
    with pytest.raises(ValueError, match="training data is empty"):
        list(itertools.islice(Epochs([]), 1))


def test_state_dict_seeks_to_the_same_place():
    batches = list(range(7))
    first = Epochs(batches, shuffle=True, seed=2)
    taken = [next(first) for _ in range(10)]  # pass 0 whole, 3 batches of pass 1
    state = first.state_dict()
    assert state == {"epoch": 1, "index": 3, "completed": 1}
    rest = [next(first) for _ in range(6)]
    seeker = Epochs(batches, shuffle=True, seed=2)
    seeker.load_state_dict(state)
    assert [next(seeker) for _ in range(6)] == rest and taken[:7] != taken[7:] + rest[:4]


def test_a_time_budget_alone_is_not_capped_by_a_step_limit(monkeypatch):
    assert TrainConfig().step_limit() == DEFAULT_MAX_STEPS == 1000  # nothing given: as before
    assert TrainConfig(max_time=10).step_limit() is None and TrainConfig(max_epochs=2).step_limit() is None
    assert TrainConfig(max_time=10, max_steps=50).step_limit() == 50
    clock = itertools.count()
    monkeypatch.setattr("rnnkit.train.trainer.time.monotonic", lambda: next(clock) * 1e-3)  # 1 ms a reading
    model = torch.nn.Linear(2, 1)
    data = [torch.randn(4, 2)]
    result = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=1e-3),
        lambda m, b: StepResult(m(b).pow(2).mean()),
        data,
        TrainConfig(max_time=10, progress=False, eval_every=10**6),
    ).fit()
    assert result.stop_reason == "max_time" and result.steps > DEFAULT_MAX_STEPS
