"""The digits task: end to end through the CLI, its accuracy and baseline against direct counts,
both reading orders, and (slow) that it learns."""

from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from rnnkit.cli import main
from rnnkit.data.datasets import Split
from rnnkit.tasks.digits import DigitsConfig, DigitsTask, evaluate_split
from tests.helpers import last_json

TINY = ["--hidden-size", "8", "--batch-size", "16", "--max-steps", "3", "--eval-every", "3", "--no-progress", "--json"]


@pytest.fixture(scope="module")
def task():
    t = DigitsTask(DigitsConfig(hidden_size=8))
    t.prepare(lambda s: None)
    return t


def test_trains_through_the_cli_and_eval_reproduces_the_final_metrics(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "digits", "--out", str(out), *TINY]) == 0
    result = last_json(capsys.readouterr().out)
    assert result["task"] == "digits" and result["steps"] == 3 and result["metric"] == "accuracy"
    assert result["sequences_seen"] == 3 * 16 and 0 <= result["accuracy"] <= 1
    assert main(["eval", str(out / "latest.safetensors"), "--json"]) == 0
    val = last_json(capsys.readouterr().out)
    assert val["val_accuracy"] == pytest.approx(result["accuracy"], abs=1e-12)
    assert val["val_loss"] == pytest.approx(result["val_loss"], rel=1e-6)
    assert val["baseline"] == pytest.approx(result["baseline"], abs=1e-12)
    assert main(["eval", str(out / "latest.safetensors"), "--split", "test", "--json"]) == 0
    test = last_json(capsys.readouterr().out)
    assert "test_accuracy" in test and test["baseline"] != val["baseline"]  # the test split's own majority share


def test_pixel_order_reads_one_pixel_per_step_and_a_bidirectional_model_trains_on_it():
    task = DigitsTask(DigitsConfig(order="pixels", bidirectional=True, hidden_size=6, batch_size=8))
    task.prepare(lambda s: None)
    x, y = next(iter(task.batches()))
    assert x.shape == (64, 8, 1)
    model = task.build_model()
    loss = task.step(model, (x, y)).loss
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters())
    flipped = x.flip(0)  # a bidirectional summary reads both ends: reversing time changes it
    assert not torch.allclose(model(x), model(flipped))


def test_accuracy_and_loss_equal_a_per_image_computation(task):
    torch.manual_seed(0)
    model = task.build_model().eval()
    split = Split(task.data.val.inputs[:, :60], task.data.val.targets[:60])
    got = evaluate_split(model, split)
    right, nll = 0, 0.0
    with torch.no_grad():
        for b in range(split.targets.numel()):  # one image at a time: no batching to get wrong
            logits = model(split.inputs[:, b : b + 1])[0]  # (K,)
            y = int(split.targets[b])
            right += int(max(range(10), key=lambda k: float(logits[k])) == y)
            nll += float(-F.log_softmax(logits, -1)[y])
    n = split.targets.numel()
    assert got["accuracy"] == pytest.approx(right / n, abs=1e-12)
    assert got["loss"] == pytest.approx(nll / n, rel=1e-5)


def test_baseline_is_the_share_of_the_most_common_training_digit(task):
    counts = Counter(task.data.train.targets.tolist())
    common = min(k for k, c in counts.items() if c == max(counts.values()))  # a tie goes to the smaller digit
    for s in ("val", "test"):
        labels = getattr(task.data, s).targets.tolist()
        assert task.baselines[s]["accuracy"] == pytest.approx(labels.count(common) / len(labels), abs=1e-12)


def test_a_batch_is_images_read_one_row_per_step(task):
    x, y = next(iter(task.batches()))
    assert x.shape == (8, 64, 8) and y.shape == (64,) and x.dtype == torch.float32
    train = task.data.train
    for b in range(3):  # each batch column is a whole training image with its own label
        match = [k for k in range(train.targets.numel()) if torch.equal(train.inputs[:, k], x[:, b])]
        assert match and all(int(train.targets[k]) == int(y[b]) for k in match)


def test_an_unknown_order_is_refused_by_name():
    with pytest.raises(ValueError, match="order must be one of rows, pixels, got 'columns'"):
        DigitsConfig(order="columns").check()


@pytest.mark.slow
def test_lstm_learns_to_read_digits_row_by_row(tmp_path, capsys):
    assert (
        main(
            [
                "train",
                "digits",
                "--max-steps",
                "600",
                "--eval-every",
                "200",
                "--out",
                str(tmp_path / "r"),
                "--no-progress",
                "--json",
            ]
        )
        == 0
    )
    result = last_json(capsys.readouterr().out)
    assert result["accuracy"] > 0.9 > 0.2 > result["baseline"]
