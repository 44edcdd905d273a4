"""The char-LM on a memory-mapped token file (issue 20): training from it equals training from the
corpus encoded in memory, update for update; a user's corpus is used whole unless capped (the
stdlib keeps its default size); evaluation in a checkpoint's vocabulary remaps the tokens."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from rnnkit.data import tokens as tk
from rnnkit.data.corpus import CharVocab, read_documents
from rnnkit.tasks import charlm
from rnnkit.tasks.charlm import STDLIB_CHARS, CharLMConfig, CharLMTask, TBPTTStep
from rnnkit.train import LaneStream, TrainConfig, Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def corpus(tmp_path):
    """Seven files of random text with accents and an astral character."""
    rng = random.Random(0)
    folder = tmp_path / "corpus"
    folder.mkdir()
    for k in range(7):
        (folder / f"{k}.txt").write_text(
            "".join(rng.choice("abcdefgh ijé\n😀") for _ in range(rng.randrange(100, 500))), encoding="utf-8"
        )
    return folder


def in_memory_streams(folder, n, batch_size, seq_length):
    """The char-LM's data as it was built before token files: documents in memory, every n-th held out."""
    docs = read_documents(folder)
    vocab = CharVocab.from_text("".join(docs))
    train = [vocab.encode(d) for k, d in enumerate(docs) if k % n != n - 1 and len(d) >= 2]
    return vocab, LaneStream(train, batch_size, seq_length, split_documents=True)


def test_training_from_the_memory_map_equals_training_from_memory_update_for_update(corpus):
    cfg = CharLMConfig(
        data=str(corpus),
        hidden_size=16,
        num_layers=1,
        embedding_size=8,
        seq_length=10,
        batch_size=3,
        holdout_every=3,
        max_steps=25,
        max_time=None,
        progress=False,
    )
    task = CharLMTask(cfg)
    task.prepare(lambda line: None)
    assert all(isinstance(d, np.memmap) for d in task.train_stream.documents)
    vocab, stream = in_memory_streams(corpus, 3, 3, 10)
    assert task.vocab.chars == vocab.chars

    def run(data):
        torch.manual_seed(0)
        model = charlm.CharLM(len(vocab), cfg)
        step = TBPTTStep()
        trainer = Trainer(
            model,
            torch.optim.Adam(model.parameters(), lr=0.01),
            step,
            data,
            TrainConfig(max_steps=25, eval_every=100, progress=False, seed=0),
        )
        result = trainer.fit()
        return [r["loss"] for r in result.history if r["kind"] == "train"], model

    mapped, a = run(task.train_stream)
    memory, b = run(stream)
    assert mapped == memory
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_a_users_corpus_is_used_whole_unless_capped_and_the_stdlib_keeps_its_default(corpus, monkeypatch):
    asked = []
    prepare = tk.prepare_corpus

    def spy(data, **kwargs):
        asked.append((data, kwargs["max_chars"]))
        return prepare(data, **kwargs)

    monkeypatch.setattr(charlm, "prepare_corpus", spy)
    CharLMTask(CharLMConfig(data=str(corpus), holdout_every=3)).prepare(lambda line: None)
    CharLMTask(CharLMConfig(data=str(corpus), holdout_every=3, max_chars=900)).prepare(lambda line: None)
    task = CharLMTask(CharLMConfig(max_chars=None))
    task.prepare(lambda line: None)
    assert asked == [(str(corpus), None), (str(corpus), 900), (None, STDLIB_CHARS)]
    with pytest.raises(ValueError, match="max_chars must be ≥ 1, got 0"):
        CharLMConfig(max_chars=0).check()


def test_eval_in_a_checkpoints_vocabulary_remaps_the_tokens(corpus, tmp_path):
    text = "".join(read_documents(corpus))
    chars = sorted(set(text) | set("XYZ"))
    random.Random(1).shuffle(chars)  # a vocabulary in another order, with characters the corpus lacks
    vocab = CharVocab(chars)
    task = CharLMTask(CharLMConfig(batch_size=2, seq_length=20), vocab=vocab)
    task.prepare_eval(str(corpus), lambda line: None)
    got = np.concatenate(task.val_stream.documents)
    want = np.concatenate([vocab.encode(d).numpy() for d in read_documents(corpus)])
    np.testing.assert_array_equal(got, want)
    (tmp_path / "other.txt").write_text("abc ☃")
    with pytest.raises(ValueError, match="character"):
        task.prepare_eval(str(tmp_path / "other.txt"), lambda line: None)
