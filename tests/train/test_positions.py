"""Constant-time resume (issue 20): a batch source's position is saved with the checkpoint, so a
resumed run draws only the batches it has not seen (counted) and still continues the
uninterrupted run bit for bit — minibatches over examples and the char-LM's truncated-BPTT lanes
alike, resumed mid-pass and at a pass's end."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rnnkit.checkpoint import read_meta
from rnnkit.tasks.batching import Minibatches
from rnnkit.tasks.charlm import CharLMConfig, CharLMTask
from rnnkit.train import LaneStream, RunFolder, StepResult, TrainConfig, Trainer

from ..decoders import TinyDecoder
from .test_trainer import make_data, val_fn

pytestmark = pytest.mark.usefixtures("one_thread")


class Counted:
    """``take`` for Minibatches that counts its calls: one per batch drawn."""

    def __init__(self, data):
        self.data, self.calls = data, 0

    def __call__(self, idx, number):
        self.calls += 1
        return self.data[:, idx]


def lm_step(model, batch):
    logits = model(batch)  # (T, B, V)
    return StepResult(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch.reshape(-1)), items=batch.numel())


def minibatch_trainer(out, max_steps):
    torch.manual_seed(123)
    model = TinyDecoder(seed=0)
    take = Counted(make_data())  # 48 examples: 6 batches of 8 per pass
    data = Minibatches(48, 8, seed=3, take=take)
    config = TrainConfig(
        max_steps=max_steps, eval_every=6 if max_steps < 30 else 10, progress=False, seed=0, out=str(out)
    )
    trainer = Trainer(
        model,
        torch.optim.Adam(model.parameters(), lr=0.03),
        lm_step,
        data,
        config,
        evaluate=val_fn(make_data(16, seed=9)),
    )
    return trainer, take


def curve(result):
    return [(r["step"], r["epoch"], r["loss"], r["grad_norm"]) for r in result.history if r["kind"] == "train"]


@pytest.mark.parametrize("stop", [18, 20])  # the end of pass 3 (position 6 of 6), and two batches into pass 4
def test_minibatches_resume_draws_only_the_unseen_batches_and_matches_bit_for_bit(tmp_path, stop):
    whole, _ = minibatch_trainer(tmp_path / "whole", 30)
    reference = whole.fit()
    first, _ = minibatch_trainer(tmp_path / "cut", stop)
    first.fit()
    assert read_meta(RunFolder(tmp_path / "cut").latest)["trainer"]["data_state"]
    resumed, take = minibatch_trainer(tmp_path / "cut", 30)
    result = resumed.fit(resume_from=RunFolder(tmp_path / "cut").latest)
    assert take.calls == 30 - stop  # no replay of the `stop` batches already seen
    assert curve(result)[-(30 - stop) :] == curve(reference)[-(30 - stop) :]
    for a, b in zip(resumed.model.parameters(), whole.model.parameters()):
        assert torch.equal(a, b)


def test_a_source_without_a_state_is_resumed_by_replaying_it(tmp_path):
    """The fallback: a plain iterable has no position; the batches seen are drawn again."""
    drawn = []

    class Plain:
        def __init__(self):
            self.inner = Minibatches(48, 8, seed=3, take=Counted(make_data()))

        def set_epoch(self, epoch):
            self.inner.set_epoch(epoch)

        def __iter__(self):
            for batch in self.inner:
                drawn.append(1)
                yield batch

    def trainer(out, steps):
        torch.manual_seed(123)
        model = TinyDecoder(seed=0)
        return Trainer(
            model,
            torch.optim.Adam(model.parameters(), lr=0.03),
            lm_step,
            Plain(),
            TrainConfig(max_steps=steps, eval_every=10, progress=False, seed=0, out=str(out)),
        )

    reference = trainer(tmp_path / "whole", 30).fit()
    trainer(tmp_path / "cut", 20).fit()
    assert not read_meta(RunFolder(tmp_path / "cut").latest)["trainer"]["data_state"]
    drawn.clear()
    result = trainer(tmp_path / "cut", 30).fit(resume_from=RunFolder(tmp_path / "cut").latest)
    assert len(drawn) == 30  # 20 replayed, 10 trained on
    assert curve(result)[-10:] == curve(reference)[-10:]


def charlm_trainer(corpus, out, max_steps):
    cfg = CharLMConfig(
        data=str(corpus),
        hidden_size=16,
        num_layers=2,
        embedding_size=8,
        seq_length=12,
        batch_size=4,
        holdout_every=3,
        dropout=0.2,
        max_steps=max_steps,
        max_time=None,
        eval_every=30,
        seed=0,
        progress=False,
        out=str(out),
    )
    task = CharLMTask(cfg)
    task.prepare(lambda line: None)
    torch.manual_seed(cfg.seed)
    model = task.build_model()
    stream = task.batches()
    draws = []
    chunk = stream._chunk
    stream._chunk = lambda rows: (draws.append(1), chunk(rows))[1]  # count the chunks read from the token file
    trainer = Trainer(
        model,
        torch.optim.Adam(model.parameters(), lr=0.01),
        task,
        stream,
        cfg.train_config(task),
        evaluate=task.evaluate,
    )
    return trainer, draws


def test_charlm_lanes_resume_from_their_position_with_the_carried_state_bit_for_bit(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    g = torch.Generator().manual_seed(0)
    for k in range(6):  # uneven files: lanes end at different chunks and documents straddle lanes
        n = int(torch.randint(150, 600, (1,), generator=g))
        (corpus / f"{k}.txt").write_text("".join(chr(97 + int(c)) for c in torch.randint(0, 12, (n,), generator=g)))
    whole, _ = charlm_trainer(corpus, tmp_path / "whole", 40)
    per_pass = len(whole.data)
    assert 10 < per_pass < 30  # the run crosses passes, and the resume point (30) is inside one
    reference = whole.fit()
    charlm_trainer(corpus, tmp_path / "cut", 30)[0].fit()
    resumed, draws = charlm_trainer(corpus, tmp_path / "cut", 40)
    result = resumed.fit(resume_from=RunFolder(tmp_path / "cut").latest)
    assert len(draws) == 10
    assert curve(result)[-10:] == curve(reference)[-10:]
    for a, b in zip(resumed.model.parameters(), whole.model.parameters()):
        assert torch.equal(a, b)


def test_a_lane_stream_restored_at_any_position_yields_the_rest_of_its_pass():
    g = torch.Generator().manual_seed(0)
    for split in (True, False):
        docs = [torch.randint(0, 50, (int(n),), generator=g) for n in torch.randint(1, 300, (30,), generator=g)]
        stream = LaneStream(docs, 7, 13, split_documents=split)
        full = list(stream)
        assert len(full) == len(stream)
        for i in range(len(full) + 1):
            stream.load_state_dict({"epoch": 0, "position": i})
            rest = list(stream)
            assert len(rest) == len(full) - i
            for a, b in zip(rest, full[i:]):
                assert all(torch.equal(x, y) for x, y in zip(a, b))
        assert len(list(stream)) == len(full)  # the restored position is used once


def test_a_restored_position_of_another_pass_is_not_used_and_bad_states_are_refused():
    data = Minibatches(10, 4, seed=0, take=lambda idx, n: idx)
    data.load_state_dict({"epoch": 2, "position": 1})
    data.set_epoch(3)
    assert len(list(data)) == 3
    with pytest.raises(ValueError, match="position must be an int ≥ 0, got -1"):
        data.load_state_dict({"epoch": 0, "position": -1})
