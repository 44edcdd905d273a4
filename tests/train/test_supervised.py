"""The ready classification, tagging and regression pieces against losses and metrics computed
by hand, a classifier that learns a data set made here, and the Trainer's handling of an
``evaluate`` without "loss"."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from rnnkit import ManyToOne, Stack
from rnnkit.cells import GRUCell
from rnnkit.data import SequenceCollate, SequenceDataset, collate_sequences
from rnnkit.tasks import digits as digits_task
from rnnkit.train import (
    Classification,
    Regression,
    Tagging,
    TrainConfig,
    Trainer,
    balanced_class_weights,
    confusion_matrix,
)
from rnnkit.train.supervised import accuracy


class Fixed(nn.Module):
    """A 'model' whose outputs are given: batch k's outputs, whatever x is; records the lengths."""

    def __init__(self, outputs):
        super().__init__()
        self.outputs, self.calls, self.w = list(outputs), 0, nn.Parameter(torch.zeros(()))
        self.lengths = []

    def forward(self, x, lengths=None):
        self.lengths.append(lengths)
        out = self.outputs[self.calls % len(self.outputs)] + self.w
        self.calls += 1
        return out


def nll(row, label):
    """−log softmax(row)[label], in float64 by hand."""
    row = [float(v) for v in row]
    m = max(row)
    return -(row[label] - m - math.log(sum(math.exp(v - m) for v in row)))


def test_classification_loss_and_metrics_by_hand():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 3, generator=g)
    y = torch.tensor([0, 2, 1, 1, 0, 2])
    w = [0.5, 2.0, 1.0]
    job = Classification(3, class_weights=w)
    model = Fixed([logits])
    result = job(model, (torch.zeros(4, 6, 1), torch.tensor([4, 1, 2, 3, 4, 2]), y))
    expected = sum(w[k] * nll(r, k) for r, k in zip(logits, y.tolist())) / sum(w[k] for k in y.tolist())
    assert result.loss.item() == pytest.approx(expected, rel=1e-6)
    assert model.lengths[0].tolist() == [4, 1, 2, 3, 4, 2]  # the model got the lengths
    predicted = logits.argmax(-1).tolist()
    hits = [p == k for p, k in zip(predicted, y.tolist())]
    assert result.metrics["accuracy"] == pytest.approx(sum(hits) / 6) and result.items == 6
    # evaluate over two batches: the same numbers over all twelve rows
    logits2 = torch.randn(6, 3, generator=g)
    y2 = torch.tensor([1, 1, 1, 0, 2, 2])
    metrics = job.evaluate(Fixed([logits, logits2]), [(torch.zeros(2, 6, 1), y), (torch.zeros(2, 6, 1), y2)])
    rows, labels = torch.cat([logits, logits2]), torch.cat([y, y2]).tolist()
    assert metrics["loss"] == pytest.approx(
        sum(w[k] * nll(r, k) for r, k in zip(rows, labels)) / sum(w[k] for k in labels)
    )
    pred = rows.argmax(-1).tolist()
    table = [[sum(1 for p, k in zip(pred, labels) if k == i and p == j) for j in range(3)] for i in range(3)]
    assert job.confusion_matrix(Fixed([logits, logits2]), [(0, y), (0, y2)]).tolist() == table
    per_class = [table[k][k] / sum(table[k]) for k in range(3)]
    assert metrics["accuracy"] == pytest.approx(sum(p == k for p, k in zip(pred, labels)) / 12)
    assert [metrics[f"accuracy_{k}"] for k in range(3)] == pytest.approx(per_class)
    assert metrics["balanced_accuracy"] == pytest.approx(sum(per_class) / 3)
    assert job.monitor == "accuracy" and job.mode == "max"


def test_tagging_masks_the_padding_by_lengths():
    g = torch.Generator().manual_seed(1)
    T, B, K = 5, 3, 4
    logits = torch.randn(T, B, K, generator=g)
    lengths = torch.tensor([5, 2, 3])
    y = torch.randint(0, K, (T, B), generator=g)  # labels past the lengths are real ids: only lengths mask them
    job = Tagging(K)
    result = job(Fixed([logits]), (torch.zeros(T, B, 2), lengths, y))
    steps = [(t, b) for b in range(B) for t in range(int(lengths[b]))]
    expected = sum(nll(logits[t, b], int(y[t, b])) for t, b in steps) / len(steps)
    assert result.loss.item() == pytest.approx(expected, rel=1e-6) and result.items == 10 and result.sequences == 3
    hits = sum(int(logits[t, b].argmax()) == int(y[t, b]) for t, b in steps)
    assert result.metrics["accuracy"] == pytest.approx(hits / 10)
    metrics = job.evaluate(Fixed([logits]), [(torch.zeros(T, B, 2), lengths, y)])
    assert metrics["loss"] == pytest.approx(expected, rel=1e-6) and metrics["accuracy"] == pytest.approx(hits / 10)
    # −100 padding (what SequenceCollate writes) is masked too, without lengths
    padded = y.clone()
    padded[2:, 1], padded[3:, 2] = -100, -100
    no_lengths = job(Fixed([logits]), (torch.zeros(T, B, 2), padded))
    assert no_lengths.loss.item() == pytest.approx(expected, rel=1e-6)


def test_regression_per_sequence_and_per_step_by_hand():
    g = torch.Generator().manual_seed(2)
    pred, y = torch.randn(4, 2, generator=g), torch.randn(4, 2, generator=g)
    job = Regression()
    result = job(Fixed([pred]), (torch.zeros(3, 4, 1), torch.tensor([3, 1, 2, 3]), y))
    e = (pred - y).flatten().tolist()
    assert result.loss.item() == pytest.approx(sum(v * v for v in e) / 8, rel=1e-6)
    m = job.evaluate(Fixed([pred]), [(torch.zeros(3, 4, 1), y)])
    assert m["mse"] == m["loss"] == pytest.approx(sum(v * v for v in e) / 8, rel=1e-6)
    assert m["mae"] == pytest.approx(sum(abs(v) for v in e) / 8, rel=1e-6) and m["rmse"] == pytest.approx(
        m["mse"] ** 0.5
    )
    T, B = 4, 3
    pred, y = torch.randn(T, B, generator=g), torch.randn(T, B, generator=g)
    lengths = torch.tensor([2, 4, 1])
    per_step = Regression(per_step=True)
    kept = [float(pred[t, b] - y[t, b]) for b in range(B) for t in range(int(lengths[b]))]
    result = per_step(Fixed([pred]), (torch.zeros(T, B, 1), lengths, y))
    assert result.loss.item() == pytest.approx(sum(v * v for v in kept) / 7, rel=1e-6) and result.items == 7
    m = per_step.evaluate(Fixed([pred]), [(torch.zeros(T, B, 1), lengths, y)])
    assert m["mae"] == pytest.approx(sum(abs(v) for v in kept) / 7, rel=1e-6)
    assert per_step.monitor == "loss" and per_step.mode == "min"


def test_helpers_by_hand():
    labels = [0, 0, 0, 0, 1, 2, 2, 0]
    w = balanced_class_weights(np.array(labels), 4)
    assert w.tolist() == pytest.approx([8 / (4 * 5), 8 / (4 * 1), 8 / (4 * 2), 0.0])
    predicted, targets = torch.tensor([0, 1, 1, 2, 0]), torch.tensor([0, 1, 2, 2, 2])
    assert confusion_matrix(predicted, targets, 3).tolist() == [[1, 0, 0], [0, 1, 0], [1, 1, 1]]
    logits = torch.tensor([[0.1, 0.9], [2.0, -1.0], [0.3, 0.2]])
    assert accuracy(logits, torch.tensor([1, 1, 0])) == pytest.approx(2 / 3)
    assert digits_task.accuracy is accuracy  # the old name still imports


def test_errors_name_what_was_expected():
    with pytest.raises(ValueError, match="num_classes must be an int ≥ 2"):
        Classification(1)
    with pytest.raises(ValueError, match="class_weights must be 3 numbers ≥ 0"):
        Classification(3, class_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="gave 4 logits per item, expected num_classes = 3"):
        Classification(3)(Fixed([torch.randn(2, 4)]), (torch.zeros(1, 2, 1), torch.tensor([0, 1])))
    with pytest.raises(ValueError, match=r"logits \(B, K\), got shape \(5, 2, 3\) \(a label per step is Tagging\)"):
        Classification(3)(Fixed([torch.randn(5, 2, 3)]), (torch.zeros(1, 2, 1), torch.tensor([0, 1])))
    with pytest.raises(TypeError, match=r"a batch must be \(x, lengths, y\) or \(x, y\), got Tensor"):
        Regression()(Fixed([torch.randn(2)]), torch.zeros(3))


def early_class_data(n, seed):
    """Sequences of 6–20 steps of 4 noisy features; the class (of 3) is written only in step 0."""
    rng = np.random.default_rng(seed)
    seqs, labels = [], []
    for _ in range(n):
        k = int(rng.integers(0, 3))
        x = rng.normal(scale=0.5, size=(int(rng.integers(6, 21)), 4)).astype(np.float32)
        x[0, k] += 2.0
        seqs.append(x)
        labels.append(k)
    return seqs, labels


def test_a_classifier_learns_a_class_written_at_the_first_step():
    """Measured: 97.9–98.8 % validation accuracy after 150 updates (10 passes; seeds 0–2 of the
    loader and model), every class ≥ 96 %; chance is 1/3. Asserted: ≥ 90 %, each class ≥ 80 %."""
    seqs, labels = early_class_data(480, seed=0)
    val = DataLoader(SequenceDataset(*early_class_data(240, seed=1)), batch_size=120, collate_fn=collate_sequences)
    train = DataLoader(
        SequenceDataset(seqs, labels),
        batch_size=32,
        shuffle=True,
        collate_fn=SequenceCollate(),
        generator=torch.Generator().manual_seed(0),
    )
    torch.manual_seed(0)
    model = ManyToOne(Stack.build(GRUCell, 4, 24), output_size=3)
    job = Classification(3)
    trainer = Trainer(
        model,
        torch.optim.Adam(model.parameters(), lr=1e-2),
        job,
        train,
        TrainConfig(max_steps=150, eval_every=50, progress=False, monitor=job.monitor, mode=job.mode),
        evaluate=job.evaluator(val),
    )
    result = trainer.fit()
    assert result.epochs == 10 and result.best >= result.val["accuracy"]
    assert result.val["accuracy"] >= 0.9, result.val
    assert min(result.val[f"accuracy_{k}"] for k in range(3)) >= 0.8, result.val


def test_evaluate_without_loss_is_fine_unless_something_watches_it(tmp_path):
    seqs, labels = early_class_data(16, seed=3)
    data = [collate_sequences(list(zip(seqs[:8], labels[:8]))), collate_sequences(list(zip(seqs[8:], labels[8:])))]
    torch.manual_seed(0)
    model = ManyToOne(Stack.build(GRUCell, 4, 8), output_size=3)
    job = Classification(3)
    only_accuracy = lambda m: {"accuracy": job.evaluate(m, data)["accuracy"]}  # noqa: E731
    result = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        job,
        data,
        TrainConfig(max_steps=4, eval_every=2, progress=False),
        evaluate=only_accuracy,
    ).fit()
    assert (
        result.steps == 4 and "accuracy" in result.val and result.best is None
    )  # loss is monitored, but nothing watches
    watched = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        job,
        data,
        TrainConfig(max_steps=4, eval_every=2, progress=False, out=str(tmp_path)),
        evaluate=only_accuracy,
    )
    with pytest.raises(
        KeyError,
        match=r"without the monitored metric 'loss', which Checkpoints watch: return it, or set "
        r"TrainConfig\(monitor=…, mode=…\)",
    ):
        watched.fit()
