"""The long-lag tasks learn with their defaults in ≤ 10 minutes each, judged as their papers do:
the LSTM solves adding (T = 100) and temporal order 6a (≤ 3 wrong of 2560 test sequences) and
copies (T = 100) far below the memoryless baseline; the tanh Elman RNN does not solve adding in
the same budget. Each runs through ``rnnkit train … --json`` and ``rnnkit eval --split test``.
"""

import contextlib
import io
import json

import pytest
import torch

from rnnkit.cli import main
from rnnkit.data.synthetic import solved

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine two threads contend, and a step takes
    20× longer (a measured, not a task, setting)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_cli(args):
    """``rnnkit ARGS`` in-process; its --json line, parsed."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(args) == 0
    print(buf.getvalue())  # the training log, shown by pytest -s or on failure
    return json.loads(buf.getvalue().strip().splitlines()[-1])


def train_and_test(task, out, *flags):
    """Train ``task`` with its defaults; the --json summary and the test-set metrics of the final model."""
    result = run_cli(["train", task, "--out", str(out), "--no-progress", "--json", *flags])
    test = run_cli(["eval", str(out / "latest.safetensors"), "--split", "test", "--json"])
    return result, test


def test_lstm_solves_adding_t100(tmp_path):
    result, test = train_and_test("adding", tmp_path / "lstm")
    assert result["stop_reason"] == "solved"  # before max_time, 600 s, ran out
    assert solved(int(test["test_wrong"]))  # ≤ 3 wrong of 2560 test sequences
    assert test["test_mse"] < result["baseline"] and test["test_mse"] < 1e-3


def test_elman_does_not_solve_adding_t100_in_the_same_budget(tmp_path):
    result, test = train_and_test("adding", tmp_path / "elman", "--cell", "elman")
    assert result["stop_reason"] == "max_time"
    assert not solved(int(result["wrong"])) and not solved(int(test["test_wrong"]))


def test_lstm_solves_temporal_order_6a(tmp_path):
    result, test = train_and_test("temporal-order", tmp_path / "lstm")
    assert result["stop_reason"] == "solved"
    assert solved(int(test["test_wrong"])) and test["test_accuracy"] > 0.998


def test_lstm_copies_t100_far_below_the_memoryless_baseline(tmp_path):
    result, test = train_and_test("copy", tmp_path / "lstm")
    baseline = result["baseline"]  # 10 log 8 / 120 ≈ 0.173
    assert result["loss"] < 0.75 * baseline and test["test_loss"] < 0.75 * baseline
    assert test["test_accuracy"] > 0.25  # memoryless: 1/8
