"""Every loss against its definition, computed by hand with loops over b and t, masks included."""

import math

import pytest
import torch

from rnnkit.models import (
    SequenceOutput,
    halt_loss,
    halt_targets,
    length_loss,
    sequence_loss,
    sequence_nll,
    squared_error,
)
from tests.helpers import TOL

T, B, V, O = 5, 3, 6, 2
LENGTHS = [5, 2, 3]
tol = TOL[torch.float64]


def _reduce_by_hand(per: dict, reduction: str, lengths=LENGTHS):
    total = sum(per.values())
    return {"sum": total, "batch": total / len(lengths), "mean": total / sum(lengths)}[reduction]


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


@pytest.mark.parametrize("reduction", ["sum", "batch", "mean"])
def test_sequence_nll_is_the_masked_sum_of_minus_log_softmax(gen, reduction):
    logits = torch.randn(T, B, V, generator=gen, dtype=torch.float64) * 2
    targets = torch.randint(0, V, (T, B), generator=gen)
    targets[3:, 1] = -100  # padding may hold anything
    per = {}
    for b in range(B):
        for t in range(LENGTHS[b]):
            z = logits[t, b]
            per[t, b] = -(z[targets[t, b]] - math.log(sum(math.exp(float(v)) for v in z)))
    expected = _reduce_by_hand(per, reduction)
    got = sequence_nll(logits, targets, LENGTHS, reduction)
    torch.testing.assert_close(got, torch.tensor(float(expected), dtype=torch.float64), **tol)
    none = sequence_nll(logits, targets, torch.tensor(LENGTHS), "none")
    assert none.shape == (T, B) and float(none[4, 1]) == 0.0


def test_sequence_nll_gradient_reaches_only_valid_steps(gen):
    logits = torch.randn(T, B, V, generator=gen, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, V, (T, B), generator=gen)
    sequence_nll(logits, targets, LENGTHS).backward()
    p = torch.softmax(logits.detach(), -1)
    for b in range(B):
        for t in range(T):
            expected = (
                p[t, b] - torch.nn.functional.one_hot(targets[t, b], V)
                if t < LENGTHS[b]
                else torch.zeros(V, dtype=torch.float64)
            )
            torch.testing.assert_close(logits.grad[t, b], expected, **tol)


@pytest.mark.parametrize("reduction", ["sum", "batch", "mean"])
def test_squared_error_is_half_the_sum_of_e_transpose_e(gen, reduction):
    values = torch.randn(T, B, O, generator=gen, dtype=torch.float64)
    targets = torch.randn(T, B, O, generator=gen, dtype=torch.float64)
    per = {}
    for b in range(B):
        for t in range(LENGTHS[b]):
            e = [float(values[t, b, k] - targets[t, b, k]) for k in range(O)]
            per[t, b] = 0.5 * sum(v * v for v in e)
    got = squared_error(values, targets, LENGTHS, reduction)
    torch.testing.assert_close(got, torch.tensor(_reduce_by_hand(per, reduction), dtype=torch.float64), **tol)
    full = squared_error(values, targets)  # no lengths: every step counts
    torch.testing.assert_close(full, 0.5 * ((values - targets) ** 2).sum(), **tol)


@pytest.mark.parametrize("reduction", ["sum", "batch", "mean"])
def test_halt_loss_is_bce_with_one_at_each_last_step(gen, reduction):
    a = torch.randn(T, B, generator=gen, dtype=torch.float64) * 3
    per = {}
    for b in range(B):
        for t in range(LENGTHS[b]):
            z = 1.0 if t == LENGTHS[b] - 1 else 0.0
            s = 1 / (1 + math.exp(-float(a[t, b])))
            per[t, b] = -(z * math.log(s) + (1 - z) * math.log(1 - s))
    got = halt_loss(a, LENGTHS, reduction)
    torch.testing.assert_close(got, torch.tensor(_reduce_by_hand(per, reduction), dtype=torch.float64), **tol)
    torch.testing.assert_close(halt_targets(torch.tensor(LENGTHS), T)[:, 1], torch.tensor([0.0, 1, 0, 0, 0]))


def test_length_loss_is_cross_entropy_on_tau_minus_one(gen):
    L = 7
    logits = torch.randn(B, L, generator=gen, dtype=torch.float64)
    taus = [1, 7, 4]
    per = [-(float(logits[b, taus[b] - 1]) - math.log(sum(math.exp(float(v)) for v in logits[b]))) for b in range(B)]
    torch.testing.assert_close(length_loss(logits, taus, "sum"), torch.tensor(sum(per), dtype=torch.float64), **tol)
    torch.testing.assert_close(length_loss(logits, taus), torch.tensor(sum(per) / B, dtype=torch.float64), **tol)


def test_sequence_loss_adds_the_heads_losses(gen):
    logits = torch.randn(T, B, V, generator=gen, dtype=torch.float64)
    halt = torch.randn(T, B, generator=gen, dtype=torch.float64)
    length = torch.randn(B, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(0, V, (T, B), generator=gen)
    out = SequenceOutput(logits, halt, length)
    expected = (
        sequence_nll(logits, y, LENGTHS, "batch")
        + halt_loss(halt, LENGTHS, "batch")
        + length_loss(length, LENGTHS, "mean")
    )
    torch.testing.assert_close(sequence_loss(out, y, LENGTHS, "batch"), expected, **tol)
    values, targets = torch.randn(T, B, O, generator=gen), torch.randn(T, B, O, generator=gen)
    torch.testing.assert_close(
        sequence_loss(SequenceOutput(values), targets, LENGTHS), squared_error(values, targets, LENGTHS)
    )


def test_losses_say_what_they_expected(gen):
    logits = torch.randn(T, B, V, generator=gen)
    y = torch.randint(0, V, (T, B), generator=gen)
    with pytest.raises(ValueError, match=r"sequence_nll: logits must have shape \(T, B, V\), got 2-D"):
        sequence_nll(logits[0], y)
    with pytest.raises(ValueError, match=r"targets must have shape \(T, B\) = \(5, 3\) to match logits"):
        sequence_nll(logits, y[:4])
    with pytest.raises(TypeError, match="targets must hold integer class ids, got dtype torch.float32"):
        sequence_nll(logits, y.float())
    with pytest.raises(ValueError, match=r"every length must be in \[1, T=5\], got 6"):
        sequence_nll(logits, y, [6, 1, 1])
    with pytest.raises(ValueError, match=r"targets hold class 6, outside the logits' \[0, V=6\)"):
        sequence_nll(logits, torch.full((T, B), 6))
    with pytest.raises(ValueError, match="reduction must be one of 'sum', 'batch', 'mean', 'none', got 'avg'"):
        sequence_nll(logits, y, reduction="avg")
    with pytest.raises(
        ValueError, match=r"squared_error: targets must have the values' shape \(5, 3, 2\), got \(5, 3, 3\)"
    ):
        squared_error(torch.randn(T, B, 2), torch.randn(T, B, 3))
    with pytest.raises(ValueError, match=r"halt_loss: halt_logits must have shape \(T, B\)"):
        halt_loss(torch.randn(T, B, 1))
    with pytest.raises(ValueError, match=r"length_loss \(L = max_length\): every length must be in \[1, T=4\], got 5"):
        length_loss(torch.randn(B, 4), [1, 5, 2])
