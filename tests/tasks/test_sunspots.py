"""The sunspots task: end to end through the CLI; forecasts fed back equal a teacher-forced pass over
the growing series; MSE and baselines against a computation from the raw series; the one-step
training loss is the k = 1 case of the k-steps-ahead loss; (slow) it beats the naive forecasts."""

import numpy as np
import pytest
import torch

from rnnkit.cli import main
from rnnkit.tasks.sunspots import SunspotsConfig, SunspotsTask, forecast, series
from rnnkit.train import k_step_ahead_loss
from tests.helpers import last_json, randomize_

TINY = ["--hidden-size", "6", "--batch-size", "16", "--max-steps", "3", "--eval-every", "3", "--no-progress", "--json"]


@pytest.fixture(scope="module")
def task():
    t = SunspotsTask(SunspotsConfig(hidden_size=7, window=12, horizon=5))
    t.prepare(lambda s: None)
    return t


@pytest.fixture(scope="module")
def raw():
    import statsmodels.api as sm

    return sm.datasets.sunspots.load_pandas().data["SUNACTIVITY"].to_numpy().astype(np.float64)


def test_trains_through_the_cli_with_the_k_step_loss_and_eval_reproduces_it(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "sunspots", "--k-ahead", "3", "--horizon", "4", "--out", str(out), *TINY]) == 0
    result = last_json(capsys.readouterr().out)
    assert result["task"] == "sunspots" and result["metric"] == "mse_1" and result["steps"] == 3
    assert result["mse_1"] > 0 and result["val_mse_4"] > 0 and result["baseline"] > 0
    assert main(["eval", str(out / "latest.safetensors"), "--split", "test", "--json"]) == 0
    test = last_json(capsys.readouterr().out)
    assert test["test_mse_1"] > 0 and test["test_mse_4"] > 0 and test["baseline"] != result["baseline"]
    assert main(["eval", str(out / "latest.safetensors"), "--json"]) == 0
    assert last_json(capsys.readouterr().out)["val_mse_1"] == pytest.approx(result["mse_1"], rel=1e-6)


def test_forecasts_fed_back_equal_teacher_forcing_over_the_growing_series(task):
    model = randomize_(task.build_model(), scale=0.4).eval()
    history = task.data.val.inputs[:, :9]  # (W, N, 1)
    got = forecast(model, history, 5)  # (N, K)
    seq = history
    with torch.no_grad():
        for h in range(5):  # each forecast is the batched pass's prediction after history + forecasts so far
            unknown = torch.zeros_like(seq[:1])  # the year being forecast: its value is never read
            nxt = model(torch.cat([seq, unknown])).logits[-1]  # (N, 1)
            torch.testing.assert_close(got[:, h : h + 1], nxt, rtol=1e-5, atol=1e-6)
            seq = torch.cat([seq, nxt.unsqueeze(0)])


def test_mse_and_baselines_equal_a_computation_from_the_raw_series(task, raw):
    model = randomize_(task.build_model(), scale=0.4).eval()
    d = task.data
    train_end = d.bounds[0]
    mean, std = raw[:train_end].mean(), raw[:train_end].std(ddof=1)
    metrics = task.evaluate(model, "val")
    origins = d.val.origins.numpy()
    with torch.no_grad():
        pred = forecast(model, d.val.inputs, 5).double().numpy() * std + mean  # (N, K) sunspot numbers
    truth = np.stack([raw[origins + h] for h in range(1, 6)], axis=1)  # (N, K)
    assert metrics["mse_1"] == pytest.approx(((pred[:, 0] - truth[:, 0]) ** 2).mean(), rel=1e-4)
    assert metrics["mse_5"] == pytest.approx(((pred[:, 4] - truth[:, 4]) ** 2).mean(), rel=1e-4)
    persistence = [((raw[origins] - truth[:, h]) ** 2).mean() for h in (0, 4)]
    seasonal = [((raw[origins + h + 1 - 11] - truth[:, h]) ** 2).mean() for h in (0, 4)]
    assert task.baselines["val"]["mse_1"] == pytest.approx(min(persistence[0], seasonal[0]), rel=1e-4)
    assert task.baselines["val"]["mse_5"] == pytest.approx(min(persistence[1], seasonal[1]), rel=1e-4)
    assert task.baseline is task.baselines["val"]


def test_the_one_step_training_loss_is_the_k_equals_1_step_ahead_loss(task):
    model = randomize_(task.build_model(), scale=0.4)
    y = series(task.data.train)[:, :10]  # (W + K, B, 1)
    torch.testing.assert_close(task.loss(model, y), k_step_ahead_loss(model, y, 1), rtol=1e-5, atol=1e-6)


def test_a_k_ahead_longer_than_the_training_sequence_is_refused():
    with pytest.raises(ValueError, match=r"k_ahead must be ≤ window \+ horizon = 6 \(the training sequence\), got 7"):
        SunspotsConfig(window=4, horizon=2, k_ahead=7).check()


@pytest.mark.slow
def test_the_default_run_forecasts_one_year_ahead_better_than_the_naive_forecasts(tmp_path, capsys):
    assert main(["train", "sunspots", "--out", str(tmp_path / "r"), "--no-progress", "--json"]) == 0
    result = last_json(capsys.readouterr().out)
    assert result["mse_1"] < 0.5 * result["baseline"]
