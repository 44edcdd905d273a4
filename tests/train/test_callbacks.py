"""The trainer as a loop plus callbacks (issue 15): each job a callback that can be swapped,
the progress bar's frames, the checkpoint history, the time budget kept with the final
validation in it, and the curves with the task's metric."""

from __future__ import annotations

import io
import re
import sys

import pytest

from rnnkit.checkpoint import load_checkpoint, read_meta
from rnnkit.train import Callback, Checkpoints, EarlyStopping, LogFile, Plot, ProgressBar, RunFolder, TrainConfig
from rnnkit.train.plots import curves_figure

from .test_trainer import trainer_for


def test_the_config_builds_the_usual_callbacks_and_a_given_one_of_a_type_replaces_it(tmp_path):
    trainer = trainer_for(tmp_path, patience=3, progress=True)
    assert [type(c) for c in trainer.callbacks] == [EarlyStopping, LogFile, Checkpoints, Plot, ProgressBar]
    mine = Plot(tmp_path / "mine.png", metric="accuracy", baseline=0.25)
    extra = Callback()
    swapped = trainer_for(tmp_path / "b", progress=False)
    swapped = type(swapped)(
        swapped.model,
        swapped.optimizer,
        swapped.step_fn,
        swapped.data,
        swapped.config,
        evaluate=swapped.evaluate_fn,
        callbacks=[mine, extra],
    )
    assert [type(c) for c in swapped.callbacks] == [LogFile, Checkpoints, Plot, Callback]
    assert swapped.callbacks[2] is mine
    swapped.fit()
    assert (tmp_path / "mine.png").is_file() and not (tmp_path / "b" / "curves.png").exists()


def test_a_callbacks_state_is_saved_through_its_state_dict_and_restored_on_resume(tmp_path):
    class Counter(Callback):
        state_key = "counter"

        def __init__(self):
            self.seen = 0

        def on_step(self, trainer, record):
            self.seen += 1

        def state_dict(self):
            return {"seen": self.seen}

        def load_state_dict(self, saved):
            self.seen = saved["seen"]

    first = trainer_for(tmp_path, max_steps=20)
    first.callbacks.append(Counter())
    first.fit()
    again = trainer_for(tmp_path, max_steps=30)
    counter = Counter()
    again.callbacks.append(counter)
    again.fit(resume_from=RunFolder(tmp_path).latest)
    assert counter.seen == 30  # 20 restored from the checkpoint, 10 more


def test_keep_checkpoints_keeps_the_last_n_named_with_update_and_metric(tmp_path):
    trainer = trainer_for(tmp_path, max_steps=40, eval_every=10, keep_checkpoints=2)
    trainer.fit()
    kept = RunFolder(tmp_path).kept_checkpoints()
    assert [re.match(r"step-(\d+)-loss-[\d.]+\.safetensors$", p.name).group(1) for p in kept] == ["000030", "000040"]
    val = [r for r in trainer.history if r["kind"] == "val" and r["step"] == 30][0]["val_loss"]
    assert kept[0].name == f"step-000030-loss-{val:.4g}.safetensors"
    assert read_meta(kept[0])["trainer"]["step"] == 30
    load_checkpoint(kept[0], model=trainer.model)  # a whole checkpoint
    assert not RunFolder(tmp_path / "none").kept_checkpoints()
    with pytest.raises(ValueError, match="keep_checkpoints must be an int ≥ 0"):
        TrainConfig(keep_checkpoints=-1).validate()


class FakeClock:
    """time.monotonic for the trainer, moved on by hand."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_the_time_budget_holds_the_final_validation(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr("rnnkit.train.trainer.time.monotonic", clock)
    trainer = trainer_for(max_steps=None, max_time=30, eval_every=10)
    step, evaluate = trainer.step_fn, trainer.evaluate_fn

    def slow_step(model, batch):
        clock.now += 1.0
        return step(model, batch)

    def slow_evaluate(model):
        clock.now += 5.0
        return evaluate(model)

    trainer.step_fn, trainer.evaluate_fn = slow_step, slow_evaluate
    result = trainer.fit()
    # 10 updates and a validation take 15 s; after update k the final validation would end at
    # k + 5 + 5 s, so the run stops after update 20 and ends at 30 s, its last validation included
    assert result.stop_reason == "max_time" and result.seconds <= 30
    assert result.steps == 20 and trainer.history[-1] == {**trainer.history[-1], "kind": "val", "step": 20}


def test_with_no_validation_by_half_the_budget_one_runs_then_so_the_last_can_be_planned(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr("rnnkit.train.trainer.time.monotonic", clock)
    trainer = trainer_for(max_steps=None, max_time=30, eval_every=1000)
    step, evaluate = trainer.step_fn, trainer.evaluate_fn

    def slow_step(model, batch):
        clock.now += 1.0
        return step(model, batch)

    def slow_evaluate(model):
        clock.now += 5.0
        return evaluate(model)

    trainer.step_fn, trainer.evaluate_fn = slow_step, slow_evaluate
    result = trainer.fit()
    # validated at 15 s (update 15), which says a validation takes 5 s: stops after update 20
    assert [r["step"] for r in trainer.history if r["kind"] == "val"] == [15, 20]
    assert result.seconds <= 30 and result.stop_reason == "max_time"


def test_the_bar_shows_whole_counts_and_the_loss_of_the_update_just_made(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    trainer = trainer_for(max_steps=12, eval_every=5, progress=False)
    trainer.callbacks.append(ProgressBar(12, None, force=True, mininterval=0))
    trainer.fit()
    frames = [f for f in err.getvalue().split("\r") if "loss=" in f]
    losses = {r["step"]: r["loss"] for r in trainer.history if r["kind"] == "train"}
    assert len(frames) >= 12
    for frame in frames:
        n = int(re.search(r"\| *(\d+)/12 ", frame).group(1))  # whole counts: 3/12, never 3.0/12
        assert float(re.search(r"loss=([\d.]+)", frame).group(1)) == pytest.approx(losses[n], abs=1e-4)
    assert not re.search(r"\d\.\d+/12", err.getvalue())


def test_no_bar_where_stderr_is_not_a_terminal(monkeypatch):
    err = io.StringIO()  # not a tty: a log file gets no \r frames
    monkeypatch.setattr(sys, "stderr", err)
    trainer_for(max_steps=12, eval_every=5, progress=True).fit()
    assert err.getvalue() == ""


def test_curves_show_the_metric_with_its_baseline_units_the_run_name_and_a_log_axis_where_it_helps():
    history = []
    for step in range(1, 101):
        loss = 10.0 / step  # a first drop, then slow progress: spans a factor of 100
        history.append(
            {"kind": "train", "step": step, "loss": loss, "grad_norm": 1.0 + step % 3, "clip": 5.0, "bpc": loss / 0.693}
        )
        if step % 20 == 0:
            history.append({"kind": "val", "step": step, "val_loss": loss * 1.1, "val_bpc": loss * 1.1 / 0.693})
    fig = curves_figure(
        history, metric="bpc", baseline=4.7, title="charlm-2: charlm", metric_label="bits per character"
    )
    loss_ax, metric_ax, grad_ax = fig.axes
    assert fig._suptitle.get_text() == "charlm-2: charlm"
    assert loss_ax.get_ylabel() == "loss (nats per item)" and loss_ax.get_yscale() == "log"
    assert metric_ax.get_ylabel() == "bits per character" and metric_ax.get_yscale() == "log"
    assert any(line.get_label() == "baseline 4.7" for line in metric_ax.get_lines())
    assert [line.get_label() for line in metric_ax.get_lines()][:2] == ["train (smoothed)", "validation"]
    assert grad_ax.get_yscale() == "linear"  # 1 to 3: a log axis would not help
    flat = curves_figure([{"kind": "train", "step": s, "loss": 2.0 + s / 100} for s in range(1, 50)])
    assert flat.axes[0].get_yscale() == "linear" and len(flat.axes) == 2


def test_a_run_ended_by_its_time_budget_resumes_with_a_fresh_budget_to_a_larger_max_steps(tmp_path, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr("rnnkit.train.trainer.time.monotonic", clock)

    def timed(trainer):
        step = trainer.step_fn

        def one_second(model, batch):
            clock.now += 1.0
            return step(model, batch)

        trainer.step_fn = one_second
        return trainer

    first = timed(trainer_for(tmp_path, max_steps=None, max_time=10, eval_every=1000)).fit()
    assert first.stop_reason == "max_time" and 1 <= first.steps <= 10
    # the same budget again, and a step limit: the run goes on to it (it did nothing before: issue 15, point 3)
    again = timed(trainer_for(tmp_path, max_steps=first.steps + 4, max_time=10, eval_every=1000))
    result = again.fit(resume_from=RunFolder(tmp_path).latest)
    assert result.stop_reason == "max_steps" and result.steps == first.steps + 4
    train = [r for r in again.history if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, first.steps + 5))
    assert train[-1]["time"] > train[first.steps - 1]["time"]  # the log's clock runs on over the whole run
