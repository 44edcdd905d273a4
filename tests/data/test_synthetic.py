"""The synthetic tasks against their papers' definitions, checked on generated data.

Each invariant is recomputed from the generated tensors by plain loops over sequences, not by the
generator's own vectorised code.
"""

import math

import pytest
import torch

from rnnkit import LSTMCell, Recurrent
from rnnkit.data.synthetic import (
    TEMPORAL_ORDER_6B,
    TEMPORAL_ORDER_SYMBOLS,
    TEST_SEED,
    adding,
    adding_baseline_correct,
    adding_baseline_mse,
    adding_correct,
    adding_solved,
    copy_memory,
    copy_memory_accuracy,
    copy_memory_baseline,
    heldout_generator,
    solved,
    temporal_order,
    temporal_order_baseline,
    temporal_order_correct,
    temporal_order_solved,
)

# ---------------------------------------------------------------------------------------------
# adding


def test_adding_follows_the_paper_sequence_by_sequence():
    T, n = 40, 300
    batch = adding(n, T, 7)
    x, y, lengths = batch
    assert x.shape == (T + T // 10, n, 2) and x.dtype == torch.float32 and lengths.dtype == torch.long
    first_marked = 0
    for b in range(n):
        L = int(lengths[b])
        assert T <= L <= T + T // 10
        values, markers = x[:L, b, 0], x[:L, b, 1]
        assert torch.all(x[L:, b] == 0), "padding must be zero"
        assert values.abs().max() <= 1
        marked = [t for t in range(L) if markers[t] == 1.0]
        assert len(marked) == 2
        p1, p2 = marked
        assert p1 < 10 and p2 < T // 2, (p1, p2)  # X2 among the first T/2 − 1 still-unmarked pairs
        assert markers[L - 1] == -1.0
        # The first pair is −1 unless it is marked, and then X1 = 0.
        if p1 == 0:  # the first pair is marked (by X1, or X2): its value is zero
            first_marked += 1
            assert values[0] == 0.0
        else:
            assert markers[0] == -1.0
        others = [t for t in range(1, L - 1) if t not in marked]
        assert torch.all(markers[others] == 0)
        assert math.isclose(float(y[b]), 0.5 + (float(values[p1]) + float(values[p2])) / 4.0, abs_tol=1e-6)
    assert 0 < first_marked < n // 4  # expected n (1/10 + 9/10 · 1/(T/2 − 1)) ≈ 0.147 n


def test_adding_positions_and_lengths_cover_their_ranges_uniformly():
    T, n = 40, 6000
    x, y, lengths = adding(n, T, 3)
    assert set(lengths.tolist()) == set(range(T, T + T // 10 + 1))
    # Both marks carry 1.0, so X1 and X2 cannot be told apart; the chance that position t is
    # marked is P(X1 = t) + P(X2 = t): 1/10 + 9/10 · 1/(T/2 − 1) for t < 10, 1/(T/2 − 1) up to T/2.
    marked = (x[..., 1] == 1).sum(dim=1).double()  # (T,) how often each position is marked
    m = T // 2 - 1
    expected = (
        torch.tensor(
            [0.1 + 0.9 / m if t < 10 else (1 / m if t < T // 2 else 0.0) for t in range(x.shape[0])],
            dtype=torch.float64,
        )
        * n
    )
    assert torch.all(marked[T // 2 :] == 0)
    sd = expected[: T // 2].sqrt()
    assert torch.all((marked[: T // 2] - expected[: T // 2]).abs() < 4 * sd), (marked, expected)
    assert 0 <= float(y.min()) and float(y.max()) <= 1
    assert abs(float(y.mean()) - 0.5) < 0.01


def test_adding_is_deterministic_by_seed_and_test_set_is_fixed():
    a, b, c = adding(50, 30, 5), adding(50, 30, torch.Generator().manual_seed(5)), adding(50, 30, 6)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=0, atol=0)
    assert not torch.equal(a.inputs, c.inputs)
    t1, t2 = adding(20, 30, heldout_generator()), adding(20, 30, heldout_generator())
    assert torch.equal(t1.inputs, t2.inputs) and not torch.equal(t1.inputs, adding(20, 30, 0).inputs)
    assert heldout_generator().initial_seed() == TEST_SEED


@pytest.mark.parametrize("T", [20, 100])
def test_adding_baselines_match_generated_data(T):
    n = 40_000 if T == 20 else 8_000
    _, y, _ = adding(n, T, 11)
    err = (y.double() - 0.5) ** 2
    # Closed form vs empirical MSE of the constant prediction 0.5, within 4 standard errors.
    se = float(err.std()) / math.sqrt(n)
    assert abs(float(err.mean()) - adding_baseline_mse(T)) < 4 * se
    p = adding_baseline_correct(T)
    rate = float(adding_correct(torch.full_like(y, 0.5), y).double().mean())
    assert abs(rate - p) < 4 * math.sqrt(p * (1 - p) / n)
    # Hand-computed values: T = 20 zeroes X2 with probability 0.9 / 9 = 0.1, T = 100 with 0.9 / 49.
    assert adding_baseline_mse(20) == pytest.approx(1.8 / 48, rel=1e-12)
    assert adding_baseline_mse(100) == pytest.approx((1.9 - 0.9 / 49) / 48, rel=1e-12)


def test_adding_metrics():
    target = torch.tensor([0.2, 0.5, 0.9, 0.7])
    pred = torch.tensor([0.239, 0.45, 0.9, 0.655])
    assert adding_correct(pred, target).tolist() == [True, False, True, False]
    assert adding_solved(3) and not adding_solved(4)
    assert solved(0, 100) and not solved(1, 100) and solved(6, 5120)
    with pytest.raises(ValueError, match=r"prediction must have the target's shape \(4,\), got \(4, 1\)"):
        adding_correct(pred.unsqueeze(1), target)


def test_adding_bad_arguments():
    with pytest.raises(ValueError, match="adding: n must be ≥ 1, got 0"):
        adding(0, 100, 0)
    with pytest.raises(ValueError, match="adding: T must be ≥ 20, got 19"):
        adding(5, 19, 0)
    with pytest.raises(TypeError, match="adding: T must be an int ≥ 20, got 100.0"):
        adding(5, 100.0, 0)
    with pytest.raises(TypeError, match="generator must be a torch.Generator or an int seed, got str"):
        adding(5, 100, "seed")


def test_adding_final_step_through_recurrent_lengths():
    # The answer is read at each sequence's own last step: Recurrent's final state with lengths
    # equals running each sequence alone, unpadded.
    x, _, lengths = adding(4, 20, 1)
    cell = LSTMCell(2, 3)
    _, (h, _) = Recurrent(cell, engine="reference")(x, lengths=lengths)
    for b in range(4):
        _, (hb, _) = Recurrent(cell, engine="reference")(x[: lengths[b], b : b + 1])
        torch.testing.assert_close(h[b : b + 1], hb, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# temporal order


def _decode(x_b, L):
    return "".join(TEMPORAL_ORDER_SYMBOLS[int(i)] for i in x_b[:L].argmax(dim=-1))


def test_temporal_order_6a_follows_the_paper():
    n = 400
    x, y, lengths = temporal_order(n, 3)
    assert x.shape == (110, n, 8) and y.dtype == torch.long
    classes = {"XX": 0, "XY": 1, "YX": 2, "YY": 3}  # Q, R, S, U
    t1s, t2s = set(), set()
    for b in range(n):
        L = int(lengths[b])
        assert 100 <= L <= 110
        assert torch.all(x[:L, b].sum(-1) == 1) and torch.all(x[L:, b] == 0), "one-hot, zero padding"
        s = _decode(x[:, b], L)
        assert s[0] == "E" and s[-1] == "B" and "E" not in s[1:] and "B" not in s[:-1]
        relevant = [t for t, ch in enumerate(s) if ch in "XY"]
        assert len(relevant) == 2
        t1, t2 = relevant[0] + 1, relevant[1] + 1  # the paper's positions count from 1
        assert 10 <= t1 <= 20 and 50 <= t2 <= 60
        t1s.add(t1), t2s.add(t2)
        assert set(s[1:-1]) - set("XY") <= set("abcd")
        assert int(y[b]) == classes[s[relevant[0]] + s[relevant[1]]]
    assert t1s == set(range(10, 21)) and t2s == set(range(50, 61))
    counts = torch.bincount(y, minlength=4)
    assert counts.min() > 0.75 * n / 4 and counts.max() < 1.25 * n / 4


def test_temporal_order_6b_has_three_symbols_and_eight_classes():
    n = 800
    x, y, lengths = temporal_order(n, 4, **TEMPORAL_ORDER_6B)
    assert set(y.tolist()) == set(range(8))
    for b in range(0, n, 7):
        s = _decode(x[:, b], int(lengths[b]))
        relevant = [t + 1 for t, ch in enumerate(s) if ch in "XY"]
        assert [10 <= relevant[0] <= 20, 33 <= relevant[1] <= 43, 66 <= relevant[2] <= 76] == [True] * 3
        bits = "".join("1" if s[t - 1] == "Y" else "0" for t in relevant)
        assert int(y[b]) == int(bits, 2)


def test_temporal_order_distractors_are_uniform():
    x, _, lengths = temporal_order(200, 9)
    symbols = x.argmax(-1)[x.sum(-1) > 0]  # valid steps only
    counts = torch.bincount(symbols, minlength=8)[4:].double()
    assert counts.min() / counts.max() > 0.9


def test_temporal_order_metrics_and_baseline():
    target = torch.tensor([0, 3, 1])
    logits = torch.tensor([[2.0, 0.1, -1.0, 0.3], [0.0, 0.0, 0.5, 0.4], [-1.0, 1.5, 0.2, 0.0]])
    assert temporal_order_correct(logits, target).tolist() == [True, False, True]
    probs = torch.tensor([[0.75, 0.1, 0.2, 0.0], [0.0, 0.0, 0.1, 0.85], [0.35, 0.72, 0.0, 0.0]])
    assert temporal_order_correct(probs, target, tolerance=0.3).tolist() == [True, True, False]
    assert temporal_order_solved(3) and not temporal_order_solved(4)
    # Chance level: with uniformly balanced classes the best constant predictor (the class
    # frequencies) has cross-entropy close to log 4.
    _, y, _ = temporal_order(8000, 5)
    freq = torch.bincount(y, minlength=4).double() / y.numel()
    empirical_ce = float(-(freq * freq.log()).sum())
    base = temporal_order_baseline(2)
    assert abs(empirical_ce - base["cross_entropy"]) < 1e-3 and base["accuracy"] == 0.25
    assert temporal_order_baseline(3)["cross_entropy"] == math.log(8)


def test_temporal_order_bad_arguments():
    with pytest.raises(ValueError, match="temporal_order: n must be ≥ 1, got 0"):
        temporal_order(0, 1)
    with pytest.raises(ValueError, match="shortest length 60 must exceed the last relevant position 60"):
        temporal_order(3, 1, length=(60, 70))
    with pytest.raises(ValueError, match=r"positions\[1\] = \(15, 30\) must start after position 20"):
        temporal_order(3, 1, positions=((10, 20), (15, 30)))
    with pytest.raises(
        ValueError, match=r"length must be a pair of ints \(low, high\) with low ≤ high, got \(110, 100\)"
    ):
        temporal_order(3, 1, length=(110, 100))
    with pytest.raises(ValueError, match="positions must hold 2 or 3"):
        temporal_order(3, 1, positions=((10, 20),))
    with pytest.raises(ValueError, match=r"output must be \(N, K\) with N = 3"):
        temporal_order_correct(torch.zeros(4, 4), torch.zeros(3, dtype=torch.long))


def test_temporal_order_deterministic_by_seed():
    a, b = temporal_order(30, 2), temporal_order(30, 2)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a.targets, temporal_order(30, heldout_generator()).targets)


# ---------------------------------------------------------------------------------------------
# copy memory


def test_copy_memory_follows_arjovsky():
    T, n = 15, 50
    x, y, lengths = copy_memory(n, T, 2)
    assert lengths is None and x.shape == (T + 20, n, 10) and y.shape == (T + 20, n)
    assert torch.all(x.sum(-1) == 1)
    ids = x.argmax(-1)  # (T + 20, N)
    for b in range(n):
        seq, tgt = ids[:, b].tolist(), y[:, b].tolist()
        data = seq[:10]
        assert all(1 <= s <= 8 for s in data)
        assert seq[10 : 10 + T - 1] == [0] * (T - 1) and seq[T + 9] == 9 and seq[T + 10 :] == [0] * 10
        assert tgt[: T + 10] == [0] * (T + 10) and tgt[T + 10 :] == data
    counts = torch.bincount(ids[:10].flatten(), minlength=9)[1:].double()
    assert counts.min() > 0.7 * counts.mean()


def test_copy_memory_baseline_is_the_memoryless_optimum():
    # The best prediction with no memory at step t is the targets' distribution at step t; its
    # cross-entropy, measured from generated data, is the paper's 10 log 8 / (T + 20).
    T, n = 30, 20_000
    _, y, _ = copy_memory(n, T, 4)
    ce = 0.0
    for t in range(T + 20):
        p = torch.bincount(y[t], minlength=10).double() / n
        p = p[p > 0]
        ce += float(-(p * p.log()).sum())
    assert abs(ce / (T + 20) - copy_memory_baseline(T)) < 2e-3
    assert copy_memory_baseline(100) == pytest.approx(10 * math.log(8) / 120, rel=1e-15)


def test_copy_memory_accuracy_and_errors():
    _, y, _ = copy_memory(8, 5, 1)
    perfect = torch.nn.functional.one_hot(y, 10).float()
    assert copy_memory_accuracy(perfect, y) == 1.0
    wrong = perfect.clone()
    wrong[-1, 0] = torch.roll(wrong[-1, 0], 1)
    assert copy_memory_accuracy(wrong, y) == pytest.approx(79 / 80)
    with pytest.raises(ValueError, match="copy_memory: T must be ≥ 1, got 0"):
        copy_memory(4, 0, 1)
    with pytest.raises(ValueError, match="copy_memory: n must be ≥ 1, got -2"):
        copy_memory(-2, 10, 1)
    with pytest.raises(ValueError, match=r"logits must be \(T, N, K\)"):
        copy_memory_accuracy(perfect[0], y)
    a, b = copy_memory(6, 10, 3), copy_memory(6, 10, 3)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
