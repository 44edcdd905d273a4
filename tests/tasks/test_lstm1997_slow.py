"""The LSTM meets the 1997 paper's success criterion on experiments 1, 2, 3 and 5, each run through
``rnnkit train … --json`` with the task's defaults and a fixed budget of updates (no wall-clock
limit, so a busy machine takes longer but trains the same run), then ``rnnkit eval --split test``.

Each budget is a few times the updates the run took when measured (seed 0, one thread; the
long-time-lag guide's results table has the figures), and each run stops once solved.
"""

import pytest

from tests.helpers import cli_json

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def train_and_test(task, out, budget, *flags):
    """Train ``task`` for at most ``budget`` updates; the --json summary and the final model's test metrics."""
    result = cli_json(
        [
            "train",
            task,
            "--out",
            str(out),
            "--no-progress",
            "--json",
            "--max-time",
            "none",
            "--max-steps",
            str(budget),
            *flags,
        ]
    )
    test = cli_json(["eval", str(out / "latest.safetensors"), "--split", "test", "--json"])
    return result, test


def test_lstm_learns_the_embedded_reber_grammar(tmp_path):
    """Experiment 1: every symbol of the 256 training and 256 validation strings predicted
    right (the paper's criterion), and of 256 more strings never trained on, all but a few."""
    result, test = train_and_test("reber", tmp_path / "lstm", 1000)  # measured: solved at update 100, stopped at 200
    assert result["stop_reason"] == "solved"
    assert test["test_train_wrong"] == 0 and test["test_wrong"] <= 2 and test["test_symbol_accuracy"] > 0.999


@pytest.mark.parametrize(
    "variant, budget, flags",
    [
        # 2a and 2b at p = 30, not the paper's 100. At p = 100 rnnkit's LSTM learns 2a's fixed
        # middle within a few hundred updates, then sits on the plateau the paper's section 4 calls
        # the abuse problem (cells saturated to encode the easy transitions, the first symbol lost
        # in them): not solved in 4,000 updates. It solves 2b at p = 100, but slowly and unsteadily
        # (stopped at 5,700 updates, 195 s, its validation count swinging between 0 and 2560 on the
        # way). See the long-time-lag guide's table.
        ("a", 5000, ["--p", "30"]),  # measured: solved at update 1900, stopped at 2100
        ("b", 3000, ["--p", "30"]),  # measured: 300, 900
        ("c", 2000, []),  # q = p = 100, the paper's Table 3 row 2; measured: 500, 700
    ],
)
def test_lstm_bridges_the_long_lags_of_experiment_2(tmp_path, variant, budget, flags):
    """Experiments 2a, 2b, 2c: every output within 0.25 (2c: 0.2) of its target on all 10,000 test sequences."""
    result, test = train_and_test("long-lag", tmp_path / variant, budget, "--variant", variant, *flags)
    assert result["stop_reason"] == "solved"
    assert test["test_wrong"] == 0  # of 10,000


@pytest.mark.parametrize("variant, budget", [("a", 1000), ("b", 1000), ("c", 3000)])  # measured stops: 100, 75, 725
def test_lstm_solves_the_noisy_two_sequence_problem(tmp_path, variant, budget):
    """Experiments 3a, 3b, 3c: the paper's stopping criterion ST2 on 256 validation sequences,
    and on 2560 test sequences about the fraction misclassified the paper reports."""
    result, test = train_and_test("two-sequence", tmp_path / variant, budget, "--variant", variant)
    assert result["stop_reason"] == "solved"
    limit = {"a": 0.002, "b": 0.02, "c": 0.01}[variant]  # the paper: 0.000195, 0.00828, 0.00558
    assert test["test_misclassified"] <= limit


def test_lstm_solves_multiplication(tmp_path):
    """Experiment 5: fewer than 13 of 2000 sequences off by 0.04 or more, at that rate on 2560
    validation sequences (measured: first at update 11,200, stopped at 13,000, 225 s)."""
    result, test = train_and_test("multiplication", tmp_path / "lstm", 20000)
    assert result["stop_reason"] == "solved"
    assert test["test_wrong"] <= 25  # of 2560; the paper: 14 of 2560 at n_seq = 13
