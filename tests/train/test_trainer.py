"""The model-agnostic trainer: it learns, logs, validates, stops early, checkpoints, plots,
calls back, and the same seed gives the same loss curve."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from matplotlib.image import imread
from torch import nn

from rnnkit.checkpoint import load_checkpoint, read_meta
from rnnkit.train import Callback, StepResult, TrainConfig, Trainer, TrainingDiverged
from rnnkit.train.logs import read_log

from ..decoders import TinyDecoder


class Shuffled:
    """Batches of (T, B) token sequences in a seeded order that changes every pass."""

    def __init__(self, data, batch_size, seed=0):
        self.data, self.batch_size, self.seed, self.epoch = data, batch_size, seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        order = torch.randperm(self.data.shape[1], generator=torch.Generator().manual_seed(self.seed + self.epoch))
        for i in range(0, len(order), self.batch_size):
            yield self.data[:, order[i : i + self.batch_size]]


def make_data(n=48, T=6, V=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    first = torch.randint(2, V, (1, n), generator=g)
    return torch.cat([first, (first + torch.arange(1, T).unsqueeze(1)) % V])  # learnable: counting up


def lm_step(model, batch):
    logits = model(batch)  # (T, B, V) teacher forced
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch.reshape(-1))
    return StepResult(
        loss, items=batch.numel(), metrics={"accuracy": float((logits.argmax(-1) == batch).float().mean())}
    )


def val_fn(data):
    def evaluate(model):
        logits = model(data)
        return {"loss": float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), data.reshape(-1)))}

    return evaluate


def trainer_for(tmp_path=None, seed=0, **cfg):
    torch.manual_seed(123)
    model = TinyDecoder(seed=seed)
    model.dropout = nn.Dropout(0.2)  # a random part of training the seed must also fix
    embed = model.embed
    model.embed = nn.Sequential(embed, model.dropout)
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    # eval_budget=None: these tests count validations; the budget's own tests run on a fake clock
    config = TrainConfig(
        **{
            "max_steps": 30,
            "eval_every": 10,
            "eval_budget": None,
            "progress": False,
            "seed": seed,
            "out": str(tmp_path) if tmp_path else None,
            **cfg,
        }
    )
    return Trainer(
        model,
        opt,
        lm_step,
        Shuffled(make_data(), 8),
        config,
        evaluate=val_fn(make_data(16, seed=9)),
        meta={"task": "count"},
    )


def test_it_learns_and_writes_log_checkpoints_and_plot(tmp_path):
    trainer = trainer_for(tmp_path, max_steps=60)
    result = trainer.fit()
    train = [r for r in result.history if r["kind"] == "train"]
    assert result.steps == 60 and result.stop_reason == "max_steps" and result.items == 60 * 8 * 6
    assert sum(r["loss"] for r in train[-10:]) / 10 < 0.5 * sum(r["loss"] for r in train[:10]) / 10
    log = read_log(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in log if r["kind"] == "train"] == list(range(1, 61))
    assert [r["step"] for r in log if r["kind"] == "val"] == [10, 20, 30, 40, 50, 60]
    assert all(
        {"loss", "grad_norm", "clip", "lr", "items_per_s", "accuracy"} <= r.keys() for r in log if r["kind"] == "train"
    )
    meta = read_meta(tmp_path / "latest.safetensors")
    assert meta["task"] == "count" and meta["trainer"]["step"] == 60
    best = min(r["val_loss"] for r in log if r["kind"] == "val")
    assert read_meta(tmp_path / "best.safetensors")["val"]["loss"] == pytest.approx(best)
    fresh = TinyDecoder(seed=0)
    fresh.embed = nn.Sequential(fresh.embed, nn.Dropout(0.2))
    load_checkpoint(tmp_path / "latest.safetensors", model=fresh)
    for a, b in zip(fresh.parameters(), trainer.model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    png = imread(tmp_path / "curves.png")
    assert png.shape[:2] == (400, 1000)


def test_same_seed_same_loss_curve_and_another_seed_differs():

    def curve(seed):
        return [r["loss"] for r in trainer_for(seed=seed).fit().history if r["kind"] == "train"]

    a, b, c = curve(0), curve(0), curve(1)
    assert a == b
    assert a != c


def test_logged_gradient_norm_is_the_norm_before_clipping():
    expected = []

    def step(model, batch):
        result = lm_step(model, batch)
        grads = torch.autograd.grad(result.loss, [p for p in model.parameters() if p.requires_grad], retain_graph=True)
        expected.append(float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads))))
        return result

    trainer = trainer_for(clip_norm=1e-3, max_steps=5)
    trainer.step_fn = step
    logged = [r["grad_norm"] for r in trainer.fit().history if r["kind"] == "train"]
    assert logged == pytest.approx(expected, rel=1e-5)
    assert min(logged) > 1e-3  # clipping was active every step, yet the log shows the real norm


def test_early_stopping_after_patience_validations_without_improvement():
    trainer = trainer_for(max_steps=1000, patience=2)
    scores = iter([3.0, 2.0, 2.5, 2.1, 1.0])
    trainer.evaluate_fn = lambda model: {"loss": next(scores)}
    result = trainer.fit()
    assert result.stop_reason == "early_stopping" and result.steps == 40 and result.best == 2.0


def test_callbacks_see_steps_validations_and_checkpoints(tmp_path):
    seen = {"step": 0, "val": 0, "ckpt": []}

    class Counter(Callback):
        def on_step(self, trainer, record):
            seen["step"] += 1

        def on_validation(self, trainer, metrics):
            seen["val"] += 1

        def on_checkpoint(self, trainer, path):
            seen["ckpt"].append(path.name)

    trainer = trainer_for(tmp_path, max_steps=20)
    trainer.callbacks.append(Counter())
    trainer.fit()
    assert seen["step"] == 20 and seen["val"] == 2
    assert seen["ckpt"].count("latest.safetensors") == 2 and "best.safetensors" in seen["ckpt"]


def test_a_callback_can_stop_training():
    class StopAt(Callback):
        def on_step(self, trainer, record):
            trainer.should_stop = record["step"] >= 7

    trainer = trainer_for(max_steps=100)
    trainer.callbacks.append(StopAt())
    result = trainer.fit()
    assert result.steps == 7 and result.stop_reason == "callback"


def test_time_budget_ends_training():
    result = trainer_for(max_steps=None, max_time=0.3, eval_every=10**6).fit()
    assert result.stop_reason == "max_time" and result.steps >= 1


def test_csv_log(tmp_path):
    trainer_for(tmp_path, max_steps=12, log_format="csv").fit()
    rows = read_log(tmp_path / "metrics.csv")
    assert [r["step"] for r in rows if r["kind"] == "train"] == list(range(1, 13))
    assert any("val_loss" in r for r in rows)


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    calls = {"n": 0}

    def step(model, batch):
        calls["n"] += 1
        result = lm_step(model, batch)
        if calls["n"] == 15:
            result.loss = result.loss * float("nan")
        return result

    trainer = trainer_for(tmp_path, max_steps=30)
    trainer.step_fn = step
    with pytest.raises(
        TrainingDiverged, match=r"diverged at step 15: the loss is nan.*last good checkpoint.*learning rate"
    ):
        trainer.fit()
    assert read_meta(tmp_path / "latest.safetensors")["trainer"]["step"] == 10


@pytest.mark.parametrize(
    "cfg, message",
    [
        (dict(eval_every=0), "eval_every must be an int ≥ 1"),
        (dict(clip_norm=-1.0), "clip_norm must be a number > 0"),
        (dict(clip_value=0), "clip_value must be a number > 0"),
        (dict(max_epochs=0), "max_epochs must be an int ≥ 1"),
        (dict(shuffle=True), "shuffle=True reorders a list of batches; a Shuffled is not one"),
        (dict(max_steps=0), "max_steps must be an int ≥ 1"),
        (dict(mode="up"), "mode must be 'min' or 'max'"),
        (dict(log_format="xml"), "log_format must be 'jsonl' or 'csv'"),
        (dict(eval_budget=0), r"eval_budget must be a share of the run's time in \(0, 1\]"),
        (dict(eval_budget=1.5), r"eval_budget must be a share of the run's time in \(0, 1\]"),
    ],
)
def test_bad_settings(cfg, message):
    with pytest.raises(ValueError, match=message):
        trainer_for(**cfg)


def test_empty_data_is_refused():
    trainer = trainer_for()
    trainer.data = []
    with pytest.raises(ValueError, match="training data is empty"):
        trainer.fit()


def test_resume_continues_the_same_loss_curve(tmp_path):
    whole = trainer_for(tmp_path / "a", max_steps=30).fit()
    trainer_for(tmp_path / "b", max_steps=20).fit()
    resumed = trainer_for(tmp_path / "b", max_steps=30, seed=0)
    result = resumed.fit(resume_from=tmp_path / "b" / "latest.safetensors")

    def curve(r):
        return [(x["step"], x["loss"]) for x in r.history if x["kind"] == "train"]

    assert curve(result) == curve(whole)  # bit for bit, including the dropout masks
    logged = [r["step"] for r in read_log(tmp_path / "b" / "metrics.jsonl") if r["kind"] == "train"]
    assert logged == list(range(1, 31))


def test_each_batch_reaches_the_step_on_the_models_device():
    """Batches come from the CPU; the step sees them where the weights are (here the meta device,
    which every machine has), tensors inside tuples and dicts included, the rest untouched."""
    model = nn.Linear(2, 1, device="meta")
    seen = []

    class Seen(Exception):
        pass

    def step(m, batch):
        seen.append(batch)
        raise Seen  # a meta loss has no value to log: stop at the first step

    batch = ((torch.randn(3, 2), {"y": torch.arange(3), "n": 3}), "tag")
    trainer = Trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.1), step, [batch], TrainConfig(max_steps=1, progress=False)
    )
    with pytest.raises(Seen):
        trainer.fit()
    (x, extra), tag = seen[0]
    assert (
        x.device.type == "meta"
        and extra["y"].device.type == "meta"
        and (x.shape, extra["y"].dtype) == ((3, 2), torch.long)
    )
    assert extra["n"] == 3 and tag == "tag"
    assert batch[0][0].device.type == "cpu"  # the source's own batch is left as it was


class FakeClock:
    """time.monotonic for the trainer: an update costs 1 s, a validation ``eval_cost`` s."""

    def __init__(self, eval_cost):
        self.now, self.eval_cost = 0.0, eval_cost

    def __call__(self):
        return self.now


def clocked_trainer(monkeypatch, eval_cost, **cfg):
    clock = FakeClock(eval_cost)
    monkeypatch.setattr("rnnkit.train.trainer.time.monotonic", clock)
    trainer = trainer_for(**{"max_steps": 400, "eval_every": 10, **cfg})
    step, evaluate = trainer.step_fn, trainer.evaluate_fn

    def timed_step(model, batch):
        clock.now += 1.0
        return step(model, batch)

    def timed_evaluate(model):
        clock.now += clock.eval_cost
        return evaluate(model)

    trainer.step_fn, trainer.evaluate_fn = timed_step, timed_evaluate
    return trainer


def test_eval_budget_holds_validations_back_to_that_share_of_the_run(monkeypatch):
    """With validation costing 4 updates' time, validations every 10 updates would take 29 % of
    the run; a 5 % budget lets each one start only once the time spent validating, it included,
    is at most 5 % of the time so far — and at the first update where it is."""
    result = clocked_trainer(monkeypatch, eval_cost=4.0, eval_budget=0.05).fit()
    vals = [r for r in result.history if r["kind"] == "val"]
    assert vals[0]["step"] == 10  # the first is never held back: nothing says what it costs yet
    assert vals[-1]["step"] == 400  # every run ends validated
    periodic = vals[1:-1]
    assert len(periodic) >= 3
    for k, r in enumerate(periodic, start=2):
        assert 4.0 * k <= 0.05 * r["time"] + 1e-9  # allowed when it started
        assert 4.0 * k > 0.05 * (r["time"] - 1.0)  # and not one update earlier
        assert r["eval_seconds"] == 4.0 and r["eval_share"] == pytest.approx(4.0 * k / r["time"], abs=1e-4)
    assert result.evaluation_seconds == 4.0 * len(vals)
    # the periodic validations' share of the run: 5 %, but for the first one (unplanned)
    assert 4.0 * (len(vals) - 1) / vals[-2]["time"] <= 0.05 + 4.0 / vals[-2]["time"]


def test_without_eval_budget_every_eval_every_updates_validate_whatever_it_costs(monkeypatch):
    result = clocked_trainer(monkeypatch, eval_cost=4.0, eval_budget=None, max_steps=60).fit()
    assert [r["step"] for r in result.history if r["kind"] == "val"] == [10, 20, 30, 40, 50, 60]
    assert result.evaluation_seconds == 24.0


def test_cheap_validation_is_never_held_back(monkeypatch):
    result = clocked_trainer(monkeypatch, eval_cost=0.1, eval_budget=0.05, max_steps=200).fit()
    assert [r["step"] for r in result.history if r["kind"] == "val"] == list(range(10, 201, 10))


def test_a_step_returning_a_bare_tensor_is_told_to_return_a_step_result():
    trainer = trainer_for()
    trainer.step_fn = lambda model, batch: lm_step(model, batch).loss
    with pytest.raises(
        TypeError,
        match=r"step_fn must return a StepResult, got a bare Tensor: return "
        r"rnnkit.train.StepResult\(loss, items=<items in the batch>\)",
    ):
        trainer.fit()
    trainer = trainer_for()
    trainer.step_fn = lambda model, batch: {"loss": lm_step(model, batch).loss}
    with pytest.raises(TypeError, match=r"must return a rnnkit.train.StepResult\(loss, items=…\), got dict"):
        trainer.fit()


def test_one_seed_fixes_both_the_model_and_the_run():
    """``rnnkit.seed(s)`` once, before building the model: two runs repeat exactly, the model's
    initialisation, the DataLoader's shuffling and dropout included; fit does not reseed."""
    import numpy as np
    from torch.utils.data import DataLoader

    import rnnkit
    from rnnkit import ManyToOne, Stack
    from rnnkit.cells import GRUCell
    from rnnkit.data import SequenceDataset, collate_sequences
    from rnnkit.train import Classification

    rng = np.random.default_rng(0)
    seqs = [rng.normal(size=(int(rng.integers(2, 7)), 3)).astype(np.float32) for _ in range(24)]
    data = SequenceDataset(seqs, [int(s[0, 0] > 0) for s in seqs])

    def run(process_seed, **cfg):
        seed = process_seed
        rnnkit.seed(seed)
        model = ManyToOne(Stack.build(GRUCell, 3, 8, num_layers=2, dropout=0.3), 2)
        init = [p.detach().clone() for p in model.parameters()]
        loader = DataLoader(data, batch_size=8, shuffle=True, collate_fn=collate_sequences)  # shuffles from torch's RNG
        trainer = Trainer(
            model,
            torch.optim.Adam(model.parameters(), 1e-2),
            Classification(2),
            loader,
            TrainConfig(max_epochs=3, progress=False, **cfg),
        )
        result = trainer.fit()
        assert trainer.seed == cfg.get("seed", seed)
        return init, [r["loss"] for r in result.history if r["kind"] == "train"], list(model.parameters())

    torch.manual_seed(999)
    first = run(3)
    torch.randn(17)  # whatever ran in between
    again = run(3)
    for a, b in zip(first[0] + first[2], again[0] + again[2]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert first[1] == again[1] and len(first[1]) == 9
    other = run(4)
    assert not torch.equal(first[0][0], other[0][0]) and first[1] != other[1]  # the seed picks the model too
    reseeded = run(3, seed=0)  # an explicit seed reseeds at fit: same model, another training stream
    assert torch.equal(first[0][0], reseeded[0][0]) and first[1] != reseeded[1]
    with pytest.raises(ValueError, match="seed must be an int, 'auto' or None, got 'yes'"):
        TrainConfig(seed="yes").validate()


def test_an_out_folder_holding_a_run_is_refused_as_the_cli_refuses_it(tmp_path):
    """One rule for the Python Trainer and ``rnnkit train``: a folder with a run is continued only
    by a resume, started over only when asked."""
    from rnnkit.train import RunFolder

    trainer_for(tmp_path, max_steps=10).fit()
    step_of = lambda: read_meta(tmp_path / "latest.safetensors")["trainer"]["step"]  # noqa: E731
    with pytest.raises(
        FileExistsError,
        match=r"already holds a run: fit\(resume_from=RunFolder\(out\).latest\) continues "
        r"it, TrainConfig\(overwrite=True\) starts over there, or choose another out",
    ):
        trainer_for(tmp_path, max_steps=20).fit()
    assert step_of() == 10  # untouched
    assert trainer_for(tmp_path, max_steps=20).fit(resume_from=RunFolder(tmp_path).latest).steps == 20
    assert trainer_for(tmp_path, max_steps=5, overwrite=True).fit().steps == 5 and step_of() == 5
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="out must be a folder"):
        trainer_for(tmp_path / "file").fit()


def test_the_cli_refuses_the_same_folder(tmp_path, capsys):
    from rnnkit.cli import main

    out = tmp_path / "run"
    trainer_for(out, max_steps=10).fit()
    assert main(["train", "adding", "--out", str(out), "--max-steps", "5", "--no-progress"]) == 2
    assert "already holds a run: add --resume to continue it, --overwrite to start over" in capsys.readouterr().err


@pytest.mark.parametrize("with_out", [True, False], ids=["out", "in-memory"])
def test_load_best_puts_the_best_validation_weights_back(tmp_path, with_out):
    trainer = trainer_for(tmp_path if with_out else None, max_steps=40, eval_every=5, monitor="accuracy", mode="max")
    seen = {}

    def evaluate(model):  # a metric that peaks at update 15, whatever the weights do
        seen[trainer.step] = [p.detach().clone() for p in model.parameters()]
        return {"accuracy": -abs(trainer.step - 15), "loss": 0.0}

    trainer.evaluate_fn = evaluate
    result = trainer.fit()
    assert result.best == 0 and result.steps == 40
    model = trainer.load_best()
    assert model is trainer.model
    for p, q in zip(model.parameters(), seen[15]):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert not torch.equal(next(model.parameters()), seen[40][0])
    with pytest.raises(RuntimeError, match="no best weights yet"):
        trainer_for(None).load_best()
