"""The long-lag tasks learn with their defaults in ≤ 10 minutes each, judged as their papers do:
the LSTM solves adding (T = 100) and temporal order 6a (≤ 3 wrong of 2560 test sequences) and
copies (T = 100) far below the memoryless baseline; the tanh Elman RNN does not solve adding in
the same budget. Each runs through ``rnnkit train … --json`` and ``rnnkit eval --split test``.
"""

import pytest

from rnnkit.data.synthetic import solved
from tests.helpers import cli_json

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def train_and_test(task, out, *flags):
    """Train ``task`` with its defaults; the --json summary and the test-set metrics of the final model."""
    result = cli_json(["train", task, "--out", str(out), "--no-progress", "--json", *flags])
    test = cli_json(["eval", str(out / "latest.safetensors"), "--split", "test", "--json"])
    return result, test


def test_lstm_solves_adding_t100(tmp_path):
    """Solved on validation (the paper's stopping test) in every run, and on the test set by at
    least two of seeds 0-2: the test set is a second criterion at the border for one seed (measured
    2026-11-29 on the final code: seed 0 stopped solved at 3000 updates with 4 of 2560 test
    sequences wrong, seeds 1 and 2 had 1 and 2)."""
    test_solved = 0
    for seed in (0, 1, 2):
        result, test = train_and_test("adding", tmp_path / f"lstm-{seed}", "--seed", str(seed))
        assert result["stop_reason"] == "solved", seed  # before max_time, 600 s, ran out
        assert test["test_mse"] < result["baseline"] and test["test_mse"] < 1e-3, seed
        test_solved += solved(int(test["test_wrong"]))  # ≤ 3 wrong of 2560 test sequences
    assert test_solved >= 2


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
