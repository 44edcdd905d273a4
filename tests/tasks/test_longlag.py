"""The long-lag tasks (adding, temporal-order, copy): end to end through the CLI with exact
resume, their metrics and baselines against direct computations and the papers' formulas, the
final-step model against ManyToOne with lengths, and the seeded fresh batches."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rnnkit.checkpoint import read_meta
from rnnkit.data.synthetic import (
    TEST_SEED,
    adding,
    adding_baseline_correct,
    adding_baseline_mse,
    copy_memory,
    copy_memory_baseline,
)
from rnnkit.models.patterns import ManyToOne
from rnnkit.tasks import TASKS
from rnnkit.tasks.config import ConfigError
from rnnkit.tasks.longlag import (
    AddingConfig,
    AddingTask,
    CopyConfig,
    CopyTask,
    FinalStepModel,
    LongLagConfig,
    TemporalOrderConfig,
    TemporalOrderTask,
    _StopWhenSolved,
    batch_seed,
    build_stack,
    set_forget_bias,
)
from tests.helpers import last_json, randomize_, run_cli

TINY = [
    "--hidden-size",
    "8",
    "--batch-size",
    "8",
    "--heldout-size",
    "64",
    "--eval-every",
    "2",
    "--no-progress",
    "--json",
]
SMALL_TASKS = {"adding": ["--length", "20"], "temporal-order": [], "copy": ["--delay", "5"]}


def quiet(_):
    """A log that drops its lines."""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Each task trained 4 steps through the CLI: its folder and its --json summary."""
    done = {}
    for name, extra in SMALL_TASKS.items():
        out = tmp_path_factory.mktemp(name) / "run"
        done[name] = out, run_cli(["train", name, *extra, *TINY, "--out", str(out), "--max-steps", "4"])
    return done


@pytest.mark.parametrize("name", list(SMALL_TASKS))
def test_trains_through_the_cli_and_eval_reproduces_the_final_metrics(name, runs):
    out, text = runs[name]
    result = last_json(text)
    metric = TASKS[name].metric
    assert result["task"] == name and result["steps"] == 4 and result["sequences_seen"] == 4 * 8
    assert result["metric"] == metric and result["stop_reason"] == "max_steps"
    assert f"baseline {result['baseline']:.4g})" in text  # printed beside the result
    val = last_json(run_cli(["eval", str(out / "latest.safetensors"), "--json"]))
    assert val[f"val_{metric}"] == pytest.approx(result[metric], rel=1e-6)
    assert val["baseline"] == pytest.approx(result["baseline"], rel=1e-12)
    test = last_json(run_cli(["eval", str(out / "latest.safetensors"), "--split", "test", "--json"]))
    assert math.isfinite(test["test_loss"]) and test["test_loss"] != val["val_loss"]


def test_resume_is_exact_because_batch_k_depends_on_seed_and_k_alone(runs, tmp_path):
    """2 steps, then resumed to 4, equals the 4 steps run straight through."""
    full = last_json(runs["adding"][1])
    args = ["train", "adding", *SMALL_TASKS["adding"], *TINY, "--out", str(tmp_path / "part")]
    run_cli([*args, "--max-steps", "2"])
    resumed = last_json(run_cli([*args, "--max-steps", "4", "--resume"]))
    assert read_meta(tmp_path / "part" / "latest.safetensors")["trainer"]["step"] == 4
    assert resumed["val_loss"] == pytest.approx(full["val_loss"], rel=1e-6)
    assert resumed["train_loss"] == pytest.approx(full["train_loss"], rel=1e-6)


@pytest.mark.parametrize("cell", ["lstm", "gru", "elman"])
def test_final_step_model_equals_many_to_one_with_lengths(cell):
    """Reading h(τ_b) off the unpacked outputs gives ManyToOne's packed result, gradients too."""
    torch.manual_seed(0)
    cfg = AddingConfig(cell=cell, hidden_size=6, num_layers=2)
    ours = randomize_(FinalStepModel(build_stack(cfg, 2), 3), seed=1)
    ref = ManyToOne(ours.rnn, 3)
    ref.head.load_state_dict(ours.head.state_dict())
    batch = adding(5, 20, 7)
    x = batch.inputs.clone()
    x[torch.arange(x.shape[0]).unsqueeze(1) >= batch.lengths] = torch.randn(1).item()  # junk in the padding
    a, b = ours(x, batch.lengths), ref(x, batch.lengths)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    w = torch.randn(a.shape)
    ga = torch.autograd.grad((a * w).sum(), [*ours.rnn.parameters(), *ours.head.parameters()])
    gb = torch.autograd.grad((b * w).sum(), [*ours.rnn.parameters(), *ref.head.parameters()])
    for p, q in zip(ga, gb):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)


def test_final_step_model_refuses_a_bidirectional_stack():
    from rnnkit import Stack
    from rnnkit.cells.registry import make_cell

    stack = Stack.build(lambda i, h: make_cell("lstm", i, h), 2, 4, bidirectional=True)
    with pytest.raises(TypeError, match="stack must be a time-major Stack of forward layers"):
        FinalStepModel(stack, 1)


@pytest.fixture(scope="module")
def adding_task():
    task = AddingTask(AddingConfig(hidden_size=8))
    task.prepare(quiet)
    return task


def test_adding_metrics_count_errors_of_004_or_more(adding_task):
    gen = torch.Generator().manual_seed(3)
    targets = 0.5 + (torch.rand(300, generator=gen) - 0.5) / 2
    outputs = targets + (torch.rand(300, generator=gen) - 0.5) * 0.16
    m = adding_task.metrics(outputs, targets)
    err = np.abs(outputs.numpy().astype(np.float64) - targets.numpy().astype(np.float64))
    assert m["wrong"] == int((err >= 0.04).sum()) and 0 < m["wrong"] < 300
    assert m["mse"] == pytest.approx(float((err**2).mean()), rel=1e-5) and m["loss"] == m["mse"]


def test_adding_baseline_is_predicting_one_half_on_the_validation_set(adding_task):
    targets = adding_task.heldout["val"].targets
    n = targets.numel()
    assert n == 2560
    assert adding_task.baseline["wrong"] == sum(abs(float(y) - 0.5) >= 0.04 for y in targets)
    # and agrees with the closed forms of the task's definition, within sampling error
    assert adding_task.baseline["mse"] == pytest.approx(adding_baseline_mse(100), abs=0.004)
    p = adding_baseline_correct(100)
    assert 1 - adding_task.baseline["wrong"] / n == pytest.approx(p, abs=4 * math.sqrt(p * (1 - p) / n))


def test_heldout_sets_are_fixed_distinct_and_unlike_training_batches(adding_task):
    again = AddingTask(AddingConfig(seed=5))
    again.prepare(quiet)
    for split in ("val", "test"):
        torch.testing.assert_close(again.heldout[split].inputs, adding_task.heldout[split].inputs, rtol=0, atol=0)
    assert not torch.equal(adding_task.heldout["val"].targets, adding_task.heldout["test"].targets)
    first = adding_task.batch(0)
    assert not torch.isin(first.targets, adding_task.heldout["test"].targets).any()
    torch.testing.assert_close(first.inputs, AddingTask(AddingConfig()).batch(0).inputs, rtol=0, atol=0)
    assert not torch.equal(first.targets, adding_task.batch(1).targets)
    assert not torch.equal(first.targets, again.batch(0).targets)


def test_batch_seeds_are_spread_and_never_the_test_seed():
    seeds = {batch_seed(s, k) for s in range(3) for k in range(1000)}
    assert len(seeds) == 3000 and TEST_SEED not in seeds and all(0 <= s < 2**64 for s in seeds)


@pytest.fixture(scope="module")
def order_task():
    task = TemporalOrderTask(TemporalOrderConfig(hidden_size=8))
    task.prepare(quiet)
    return task


def test_temporal_order_wrong_is_the_papers_03_rule_on_the_softmax(order_task):
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(400, 4, generator=gen) * 3
    targets = torch.randint(0, 4, (400,), generator=gen)
    m = order_task.metrics(logits, targets)
    p = np.exp(logits.double().numpy())
    p /= p.sum(1, keepdims=True)
    right = [all(abs(p[b, k] - float(k == int(targets[b]))) < 0.3 for k in range(4)) for b in range(400)]
    assert m["wrong"] == 400 - sum(right) and 0 < m["wrong"] < 400
    assert m["accuracy"] == pytest.approx(float(np.mean(p.argmax(1) == targets.numpy())), abs=1e-12)
    assert m["loss"] == pytest.approx(float(-np.log(p[np.arange(400), targets.numpy()]).mean()), rel=1e-5)
    assert m["wrong"] >= round(400 * (1 - m["accuracy"]))  # the 0.3 rule is stricter than argmax


def test_temporal_order_baseline_is_the_most_frequent_class(order_task):
    targets = order_task.heldout["val"].targets.tolist()
    most = max(targets.count(k) for k in range(4))
    assert order_task.baseline["wrong"] == 2560 - most
    assert order_task.baseline["accuracy"] == pytest.approx(most / 2560, abs=1e-12)
    assert order_task.baseline["accuracy"] == pytest.approx(0.25, abs=0.04)
    assert order_task.baseline["loss"] == pytest.approx(math.log(4), abs=1e-12)


def test_temporal_order_6b_has_eight_classes():
    task = TemporalOrderTask(TemporalOrderConfig(relevant=3, hidden_size=4, heldout_size=50))
    task.prepare(quiet)
    assert task.build_model()(task.heldout["val"].inputs, task.heldout["val"].lengths).shape == (50, 8)
    assert set(task.heldout["val"].targets.tolist()) == set(range(8))


def test_copy_memoryless_strategy_scores_the_baseline():
    """Certain blanks, then a uniform guess among the 8 symbols: loss 10 log 8 / (T + 20), accuracy ~1/8."""
    T = 30
    task = CopyTask(CopyConfig(delay=T, heldout_size=500))
    task.prepare(quiet)
    assert task.baseline["loss"] == pytest.approx(10 * math.log(8) / (T + 20), rel=1e-12)
    targets = task.heldout["val"].targets
    logits = torch.full((T + 20, 500, 10), -1e4)
    logits[: T + 10, :, 0] = 0.0  # the blank, certainly
    logits[T + 10 :, :, 1:9] = 0.0  # one of a_1 … a_8, uniformly
    logits[T + 10 :, :, 1] += torch.rand(10, 500) * 1e-6  # breaks argmax ties without moving the loss
    m = task.metrics(logits, targets)
    assert m["loss"] == pytest.approx(copy_memory_baseline(T), rel=1e-5)
    assert m["accuracy"] == pytest.approx(float((targets[T + 10 :] == 1).double().mean()), abs=1e-12)
    assert m["accuracy"] == pytest.approx(1 / 8, abs=0.03)
    assert m["wrong"] == int((targets[T + 10 :] != 1).any(0).sum())


def test_copy_metrics_equal_a_flat_cross_entropy():
    task = CopyTask(CopyConfig(delay=6))
    batch = copy_memory(40, 6, 2)
    logits = torch.randn(26, 40, 10)
    logits[-10:] += F.one_hot(batch.targets[-10:], 10) * 3  # most recalled symbols right
    m = task.metrics(logits, batch.targets)
    assert m["loss"] == pytest.approx(
        float(F.cross_entropy(logits.reshape(-1, 10), batch.targets.reshape(-1))), rel=1e-5
    )
    right = logits[-10:].argmax(-1) == batch.targets[-10:]
    assert m["accuracy"] == pytest.approx(float(right.double().mean()), abs=1e-12)
    assert m["wrong"] == sum(not bool(right[:, b].all()) for b in range(40))


def test_evaluation_in_chunks_equals_one_pass(order_task):
    model = randomize_(order_task.build_model(), scale=0.3).eval()
    outputs, targets = order_task.outputs(model, "val")  # 2560 sequences, chunks of 512
    data = order_task.heldout["val"]
    with torch.no_grad():
        whole = model(data.inputs, data.lengths)
    torch.testing.assert_close(outputs, whole, rtol=1e-4, atol=1e-5)
    assert torch.equal(targets, data.targets)


def test_stop_when_solved_waits_for_that_many_solved_validations_in_a_row():
    task = TemporalOrderTask(TemporalOrderConfig(stop_when_solved=3))
    stop = _StopWhenSolved(task, quiet)
    trainer = SimpleNamespace(step=100, should_stop=False, stop_reason=None)
    for wrong in (3.0, 0.0, 4.0, 1.0, 3.0):
        stop.on_validation(trainer, {"wrong": wrong, "loss": 0.1})
        assert not trainer.should_stop
    stop.on_validation(trainer, {"wrong": 2.0, "loss": 0.1})
    assert trainer.should_stop and trainer.stop_reason == "solved"


@pytest.mark.parametrize("cell, rows", [("lstm", slice(6, 12)), ("peephole", slice(6, 12)), ("gru", slice(6, 12))])
def test_forget_bias_sets_the_effective_bias_of_the_gate_that_keeps_the_past(cell, rows):
    stack = build_stack(AddingConfig(cell=cell, hidden_size=6, num_layers=2, forget_bias=4.5), 2)
    for layer in stack.layers:
        bias = (layer.cell.bias_ih + layer.cell.bias_hh).detach()
        torch.testing.assert_close(bias[rows], torch.full((6,), 4.5), rtol=0, atol=0)
        other = torch.ones(bias.shape[0], dtype=torch.bool)
        other[rows] = False
        assert bias[other].abs().max() < 1 / math.sqrt(6) * 2  # the rest keeps its U(−1/√H, 1/√H) init
    assert set_forget_bias(build_stack(AddingConfig(cell="elman", hidden_size=6), 2).layers[0].cell, 4.5) is False


def test_an_unknown_split_and_bad_settings_are_refused(order_task):
    with pytest.raises(ValueError, match="split must be one of val, test, got 'train'"):
        order_task.evaluate(order_task.build_model(), "train")
    with pytest.raises(ValueError, match="length must be ≥ 20"):
        AddingConfig(length=10).check()
    with pytest.raises(ValueError, match="relevant must be 2 .* or 3 .*, got 4"):
        TemporalOrderConfig(relevant=4).check()
    with pytest.raises(ValueError, match="heldout_size must be ≥ 1, got 0"):
        CopyConfig(heldout_size=0).check()
    with pytest.raises(ConfigError, match="delay must be int"):
        CopyTask.from_meta({"task": "copy", "config": {"delay": "long"}})


def test_long_lag_tasks_validate_on_schedule_whatever_it_costs():
    """Their validation is the paper's stopping test: the evaluation budget that holds validations
    back in other tasks would make the updates-to-success figure depend on the machine's load."""
    lag = {name: task for name, task in TASKS.items() if issubclass(task.Config, LongLagConfig)}
    assert set(lag) >= {"adding", "temporal-order", "copy", "reber", "long-lag", "two-sequence", "multiplication"}
    for name, task in lag.items():
        assert task.Config().eval_budget is None, name
