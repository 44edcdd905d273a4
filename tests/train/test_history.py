"""A run's history in memory stays bounded however long it runs (issue 20): the trainer keeps the
last ``history_keep`` records, the log on disk holds them all (also across a resume), and the
plot keeps a thinned, evenly spread set of training records and every validation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rnnkit.train import Plot, RunFolder, StepResult, TrainConfig, Trainer
from rnnkit.train import history as history_module
from rnnkit.train.history import CurveRecords, bounded_history
from rnnkit.train.logs import read_log


def cheap_trainer(out, max_steps, keep):
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    x, y = torch.randn(16, 3), torch.randn(16, 1)

    def step(m, batch):
        return StepResult(((m(batch[0]) - batch[1]) ** 2).mean(), items=16)

    config = TrainConfig(max_steps=max_steps, eval_every=250, eval_budget=None, progress=False, seed=0, out=str(out))
    return Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.01),
        step,
        [(x, y)],
        config,
        evaluate=lambda m: {"loss": float(((m(x) - y) ** 2).mean())},
        history_keep=keep,
    )


def test_a_long_run_keeps_the_last_records_in_memory_and_all_in_its_log(tmp_path, monkeypatch):
    monkeypatch.setattr(history_module, "CURVE_POINTS", 64)
    trainer = cheap_trainer(tmp_path, 1500, keep=50)
    result = trainer.fit()
    log = read_log(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in log if r["kind"] == "train"] == list(range(1, 1501))
    assert len(trainer.history) == 50 and result.history == log[-50:]
    assert result.log == str(tmp_path / "metrics.jsonl")
    plot = next(c for c in trainer.callbacks if isinstance(c, Plot))
    steps = [r["step"] for r in plot.curves.train]
    assert 32 <= len(steps) < 64 and len(set(b - a for a, b in zip(steps, steps[1:]))) == 1  # evenly spread
    assert [r["step"] for r in plot.curves.val] == list(range(250, 1501, 250))
    # resumed: the log is continued whole, memory still holds only the last records
    again = cheap_trainer(tmp_path, 1800, keep=50)
    result = again.fit(resume_from=RunFolder(tmp_path).latest)
    log = read_log(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in log if r["kind"] == "train"] == list(range(1, 1801))
    assert len(again.history) == 50 and result.history == log[-50:]
    plot = next(c for c in again.callbacks if isinstance(c, Plot))
    assert plot.curves.train[0]["step"] <= 64 and len(plot.curves) < 64 + 8  # read back from the log, thinned


def test_curve_records_thin_by_doubling_strides_and_keep_every_validation():
    curves = CurveRecords(points=10)
    for step in range(1, 1001):
        curves.add({"kind": "train", "step": step, "loss": 1.0 / step})
        if step % 100 == 0:
            curves.add({"kind": "val", "step": step, "val_loss": 0.5})
    steps = [r["step"] for r in curves.train]
    assert curves.stride == 128 and steps == list(range(128, 1001, 128))
    assert [r["step"] for r in curves.val] == list(range(100, 1001, 100))
    kinds = [(r["step"], r["kind"]) for r in curves.records()]
    assert kinds == sorted(kinds, key=lambda k: (k[0], k[1] == "val"))
    with pytest.raises(ValueError, match="points must be an int ≥ 2, got 1"):
        CurveRecords(points=1)


def test_bounded_history_keeps_the_last_records():
    h = bounded_history(({"step": i} for i in range(100)), keep=7)
    h.append({"step": 100})
    assert [r["step"] for r in h] == list(range(94, 101))
    with pytest.raises(ValueError, match="keep must be an int ≥ 1, got 0"):
        bounded_history(keep=0)
