"""The tasks of Hochreiter & Schmidhuber (1997)'s experiments 1, 2, 3 and 5 (reber, long-lag,
two-sequence, multiplication): end to end through the CLI, their data splits, metrics, baselines
and success criteria against direct computations and the paper's rules."""

import math

import pytest
import torch
import torch.nn.functional as F

from rnnkit.checkpoint import read_meta
from rnnkit.data.lstm1997 import REBER_SYMBOLS, encode_reber, reber_successors
from rnnkit.tasks import TASKS
from rnnkit.tasks.lstm1997 import (
    LongLagSequencesConfig,
    LongLagSequencesTask,
    MultiplicationConfig,
    MultiplicationTask,
    ReberConfig,
    ReberTask,
    TwoSequenceConfig,
    TwoSequenceTask,
    one_hot_inputs,
    reber_loss_floor,
    soft_cross_entropy,
)
from tests.helpers import last_json, randomize_, run_cli

TINY = ["--hidden-size", "8", "--batch-size", "8", "--eval-every", "2", "--no-progress", "--json"]
SMALL_TASKS = {
    "reber": ["--training-size", "32", "--heldout-size", "40"],
    "long-lag-a": ["--variant", "a", "--p", "6", "--heldout-size", "50", "--val-size", "30"],
    "long-lag-b": ["--variant", "b", "--p", "6", "--heldout-size", "50", "--val-size", "30"],
    "long-lag-c": ["--variant", "c", "--p", "5", "--q", "8", "--heldout-size", "50", "--val-size", "30"],
    "two-sequence-a": ["--variant", "a", "--length", "20", "--heldout-size", "50", "--val-size", "30"],
    "two-sequence-b": [
        "--variant",
        "b",
        "--length",
        "20",
        "--informative",
        "1",
        "--heldout-size",
        "50",
        "--val-size",
        "30",
    ],
    "two-sequence-c": ["--variant", "c", "--length", "20", "--heldout-size", "50", "--val-size", "30"],
    "multiplication": ["--length", "20", "--heldout-size", "64"],
}


def task_of(key):
    return key if key in TASKS else key.rsplit("-", 1)[0]


def quiet(_):
    """A log that drops its lines."""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Each task trained 4 steps through the CLI: its folder and its output."""
    done = {}
    for key, extra in SMALL_TASKS.items():
        out = tmp_path_factory.mktemp(key) / "run"
        done[key] = out, run_cli(["train", task_of(key), *extra, *TINY, "--out", str(out), "--max-steps", "4"])
    return done


@pytest.mark.parametrize("key", list(SMALL_TASKS))
def test_trains_through_the_cli_and_eval_reproduces_the_final_metrics(key, runs):
    out, text = runs[key]
    name = task_of(key)
    result = last_json(text)
    assert result["task"] == name and result["steps"] == 4 and result["sequences_seen"] == 4 * 8
    assert result["metric"] == "wrong" and result["stop_reason"] == "max_steps"
    assert f"baseline {result['baseline']:.4g})" in text
    val = last_json(run_cli(["eval", str(out / "latest.safetensors"), "--json"]))
    assert val["val_wrong"] == result["wrong"] and val["val_loss"] == pytest.approx(result["val_loss"], rel=1e-6)
    test = last_json(run_cli(["eval", str(out / "latest.safetensors"), "--split", "test", "--json"]))
    assert math.isfinite(test["test_loss"]) and test["test_loss"] != val["val_loss"]


def test_reber_resume_is_exact(runs, tmp_path):
    """2 steps, then resumed to 4, equals the 4 steps run straight through: batch k is a function of (seed, k)."""
    full = last_json(runs["reber"][1])
    args = ["train", "reber", *SMALL_TASKS["reber"], *TINY, "--out", str(tmp_path / "part")]
    run_cli([*args, "--max-steps", "2"])
    resumed = last_json(run_cli([*args, "--max-steps", "4", "--resume"]))
    assert read_meta(tmp_path / "part" / "latest.safetensors")["trainer"]["step"] == 4
    assert resumed["val_loss"] == pytest.approx(full["val_loss"], rel=1e-6)
    assert resumed["train_loss"] == pytest.approx(full["train_loss"], rel=1e-6)


# ---------------------------------------------------------------------------------------------
# reber


@pytest.fixture(scope="module")
def reber_task():
    task = ReberTask(ReberConfig(hidden_size=8))
    task.prepare(quiet)
    return task


def test_reber_sets_are_the_papers(reber_task):
    """256 training strings for the seed; 256 validation and 256 test strings, none a training string."""
    train, val, test = set(reber_task.training_strings), set(reber_task.strings["val"]), set(reber_task.strings["test"])
    assert (
        len(reber_task.training_strings) == 256
        and len(reber_task.strings["val"]) == len(reber_task.strings["test"]) == 256
    )
    assert not train & val and not train & test and not val & test
    again = ReberTask(ReberConfig(seed=0))
    again.prepare(quiet)
    assert again.training_strings == reber_task.training_strings and again.strings == reber_task.strings
    other = ReberTask(ReberConfig(seed=1))
    other.prepare(quiet)
    assert other.training_strings != reber_task.training_strings
    assert not set(other.training_strings) & set(other.strings["test"])


def test_reber_batches_pick_training_strings(reber_task):
    batch = reber_task.batch(3)
    assert batch.inputs.shape[1] == 64 and int(batch.lengths.max()) == batch.inputs.shape[0]
    train = set(reber_task.training_strings)
    for b in range(64):
        L = int(batch.lengths[b])
        read = "".join(REBER_SYMBOLS[int(k)] for k in batch.inputs[:L, b].argmax(-1)) + "E"
        assert read in train
    assert torch.equal(batch.targets, reber_task.batch(3).targets)
    assert not torch.equal(batch.lengths, reber_task.batch(4).lengths)


def test_reber_metrics_judge_each_string_by_the_papers_rule(reber_task):
    strings = reber_task.strings["val"][:50]
    data = encode_reber(strings)
    gen = torch.Generator().manual_seed(2)
    logits = data.targets.float() * 3 + torch.randn(data.targets.shape, generator=gen)  # mostly right
    m = reber_task.metrics(logits, data.targets)
    wrong = 0
    right_steps = total_steps = 0
    for b, s in enumerate(strings):
        ok = True
        for t, allowed in enumerate(reber_successors(s)):
            ranked = logits[t, b].argsort(descending=True).tolist()
            top = {REBER_SYMBOLS[k] for k in ranked[: len(allowed)]}
            step_ok = top == set(allowed) and float(logits[t, b, ranked[len(allowed) - 1]]) > float(
                logits[t, b, ranked[len(allowed)]]
            )
            ok &= step_ok
            right_steps += step_ok
            total_steps += 1
        wrong += not ok
    assert m["wrong"] == wrong and 0 < wrong < 50
    assert m["symbol_accuracy"] == pytest.approx(right_steps / total_steps, abs=1e-12)
    # the loss: cross-entropy against the allowed symbols, each equally likely
    expected = []
    for b, s in enumerate(strings):
        for t, allowed in enumerate(reber_successors(s)):
            logp = torch.log_softmax(logits[t, b].double(), -1)
            expected.append(-sum(float(logp[REBER_SYMBOLS.index(c)]) for c in allowed) / len(allowed))
    assert m["loss"] == pytest.approx(sum(expected) / len(expected), rel=1e-5)


def test_reber_baseline_and_loss_floor(reber_task):
    targets = reber_task.heldout["val"].targets
    strings = reber_task.strings["val"]
    assert reber_task.baseline["wrong"] == sum(s[1] == "P" for s in strings)
    steps = sum(len(s) - 1 for s in strings)
    floor = sum(math.log(len(a)) for s in strings for a in reber_successors(s)) / steps
    assert reber_loss_floor(targets) == pytest.approx(floor, rel=1e-9)
    assert reber_task.baseline["loss"] == pytest.approx(floor + len(strings) * math.log(2) / steps, rel=1e-9)
    perfect = torch.where(targets, 0.0, -1e4)  # softmax uniform over the allowed symbols
    assert float(soft_cross_entropy(perfect, targets)) == pytest.approx(floor, rel=1e-5)


def test_reber_is_solved_only_when_every_training_and_heldout_string_is_right(reber_task):
    model = randomize_(reber_task.build_model(), scale=0.3)
    metrics = reber_task.evaluate(model, "val")
    assert {"loss", "wrong", "symbol_accuracy", "train_wrong"} <= set(metrics)
    assert reber_task.solved({"wrong": 0, "train_wrong": 0}) and not reber_task.solved({"wrong": 0, "train_wrong": 1})
    assert not reber_task.solved({"wrong": 1, "train_wrong": 0})


def test_evaluation_in_chunks_equals_one_pass_for_three_dimensional_targets():
    task = ReberTask(ReberConfig(hidden_size=6, heldout_size=1100, training_size=40))  # three chunks of 512
    task.prepare(quiet)
    model = randomize_(task.build_model(), scale=0.3).eval()
    outputs, targets = task.outputs(model, "test")
    data = task.heldout["test"]
    with torch.no_grad():
        whole = model(data.inputs)
    torch.testing.assert_close(outputs, whole, rtol=1e-4, atol=1e-5)
    assert torch.equal(targets, data.targets)


# ---------------------------------------------------------------------------------------------
# long-lag


@pytest.mark.parametrize("variant", ["a", "b"])
def test_long_lag_metrics_are_the_025_rule_on_the_softmax(variant):
    task = LongLagSequencesTask(
        LongLagSequencesConfig(variant=variant, p=5, heldout_size=40, val_size=30, hidden_size=4)
    )
    task.prepare(quiet)
    targets = task.heldout["val"].targets  # (5, 30)
    gen = torch.Generator().manual_seed(1)
    logits = F.one_hot(targets, 6).float() * 4 + torch.randn(5, 30, 6, generator=gen)
    m = task.metrics(logits, targets)
    p = logits.double().softmax(-1)
    steps = range(5) if variant == "a" else [4]
    right = [
        all(abs(float(p[t, b, k]) - float(k == int(targets[t, b]))) < 0.25 for t in steps for k in range(6))
        for b in range(30)
    ]
    assert m["wrong"] == 30 - sum(right) and 0 < m["wrong"] < 30
    assert m["end_loss"] == pytest.approx(float(-p[4].log().gather(-1, targets[4].unsqueeze(-1)).mean()), rel=1e-5)
    assert task.baseline["wrong"] == 30
    middle = 4 * math.log(4) if variant == "b" else 0.0
    assert task.baseline["loss"] == pytest.approx((middle + math.log(2)) / 5, rel=1e-12)


def test_long_lag_2c_is_many_to_one_with_two_outputs_and_the_02_rule():
    task = LongLagSequencesTask(
        LongLagSequencesConfig(variant="c", p=5, q=10, heldout_size=40, val_size=30, hidden_size=4)
    )
    task.prepare(quiet)
    data = task.heldout["val"]
    assert (
        data.inputs.dtype == torch.long and data.inputs.shape[1] == 30 and task.heldout["test"].targets.shape == (40,)
    )
    model = task.build_model()
    assert task.forward(model, data).shape == (30, 2)
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.3], [0.0, 1.4]])  # softmax 0.88, 0.786, 0.802 on the target
    m = task.metrics(logits, torch.tensor([0, 1, 1]))
    assert m["wrong"] == 1 and task.baseline == {"wrong": 30, "loss": math.log(2)}
    assert task.solved({"wrong": 0}) and not task.solved({"wrong": 1})


def test_one_hot_inputs_feed_the_symbols_as_the_paper_does():
    ids = torch.tensor([[0, 2], [3, -1]])
    x = one_hot_inputs(ids, 4)
    assert x.shape == (2, 2, 4) and x[0, 1, 2] == 1 and x[1, 0, 3] == 1 and torch.all(x[1, 1] == 0) and x.sum() == 3
    real = torch.randn(2, 2, 4)
    assert one_hot_inputs(real, 4) is real


# ---------------------------------------------------------------------------------------------
# two-sequence


def test_two_sequence_3c_trains_on_noisy_targets_and_is_judged_on_clean_ones():
    task = TwoSequenceTask(TwoSequenceConfig(variant="c", length=20, heldout_size=100))
    task.prepare(quiet)
    assert task.heldout["val"].targets.shape == (256,) and task.heldout["test"].targets.shape == (100,)
    clean = task.heldout["val"].targets
    assert set(torch.round(clean * 10).tolist()) == {2.0, 8.0}
    noisy = task.batch(0).targets
    assert not set(torch.round(noisy * 10).tolist()) <= {2.0, 8.0}


@pytest.mark.parametrize(
    "variant, wrong, mae, solved",
    [
        ("a", 0, 0.0099, True),
        ("a", 1, 0.005, False),
        ("a", 0, 0.0101, False),
        ("b", 5, 0.039, True),
        ("b", 6, 0.02, False),
        ("b", 0, 0.041, False),
        ("c", 0, 0.0149, True),
        ("c", 1, 0.01, False),
        ("c", 0, 0.0151, False),
    ],
)
def test_two_sequence_is_solved_at_the_papers_st2(variant, wrong, mae, solved):
    task = TwoSequenceTask(TwoSequenceConfig(variant=variant))
    assert task.solved({"wrong": wrong, "mae": mae}) is solved


def test_two_sequence_metrics_and_baseline():
    task = TwoSequenceTask(TwoSequenceConfig(variant="a", length=20, val_size=300))
    task.prepare(quiet)
    targets = task.heldout["val"].targets
    outputs = targets + torch.linspace(-0.3, 0.3, 300)
    m = task.metrics(outputs, targets)
    err = (outputs.double() - targets.double()).abs()
    assert m["wrong"] == int((err >= 0.2).sum()) and m["misclassified"] == m["wrong"] / 300
    assert m["mae"] == pytest.approx(float(err.mean()), rel=1e-5)
    assert task.baseline["wrong"] == 300 and task.baseline["mae"] == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------------
# multiplication


def test_multiplication_solved_at_the_n_seq_rate_and_baseline():
    task = MultiplicationTask(MultiplicationConfig(length=20))
    task.prepare(quiet)
    assert task.solved({"wrong": 16}) and not task.solved({"wrong": 17})  # fewer than 13 of 2000, of 2560
    assert not MultiplicationTask(MultiplicationConfig(n_seq=140)).solved({"wrong": 180})
    targets = task.heldout["val"].targets
    mean = float(targets.mean())
    assert task.baseline["wrong"] == int(((targets - mean).abs() >= 0.04).sum())
    assert task.baseline["mse"] == pytest.approx(float(((targets - mean) ** 2).mean()), rel=1e-5)
    model = task.build_model()
    assert task.forward(model, task.batch(0)).shape == (64,)


@pytest.mark.parametrize(
    "config, message",
    [
        (lambda: LongLagSequencesConfig(variant="d"), "variant must be a .*, b .* or c"),
        (lambda: LongLagSequencesConfig(p=1), "p must be ≥ 2 for variant a"),
        (lambda: LongLagSequencesConfig(variant="c", q=-1), "q must be ≥ 0"),
        (lambda: TwoSequenceConfig(length=3), "length must exceed informative"),
        (lambda: TwoSequenceConfig(val_size=0), "val_size must be ≥ 1"),
        (lambda: MultiplicationConfig(n_seq=0), r"n_seq must be in \[1, 2000\]"),
        (lambda: ReberConfig(training_size=0), "training_size must be ≥ 1"),
    ],
)
def test_bad_settings_are_refused(config, message):
    with pytest.raises(ValueError, match=message):
        config().check()
