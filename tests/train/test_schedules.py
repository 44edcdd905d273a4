"""Scheduled-sampling curricula: their values at given steps (Bengio et al. 2015, §2.4)."""

from __future__ import annotations

import math

import pytest

from rnnkit.train.schedules import Constant, Exponential, InverseSigmoid, Linear


def test_values_at_given_steps():
    lin = Linear(c=0.001, k=1.0, minimum=0.1)
    assert [lin(i) for i in (0, 100, 500, 900, 2000)] == pytest.approx([1.0, 0.9, 0.5, 0.1, 0.1])
    exp = Exponential(k=0.99)
    assert [exp(i) for i in (0, 1, 100)] == pytest.approx([1.0, 0.99, 0.99**100])
    inv = InverseSigmoid(k=100)
    assert [inv(i) for i in (0, 100, 460)] == pytest.approx(
        [100 / 101, 100 / (100 + math.e), 100 / (100 + math.exp(4.6))]
    )
    assert inv(10**6) == 0.0
    assert Constant(0.25)(12345) == 0.25


def test_schedules_decay_monotonically_from_near_one():
    for s in (Linear(c=1e-3), Exponential(k=0.995), InverseSigmoid(k=50)):
        values = [s(i) for i in range(0, 3000, 10)]
        assert values[0] >= 0.98 and all(a >= b for a, b in zip(values, values[1:])) and values[-1] < 0.05


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Exponential(k=1.0), r"Exponential: k must be a number in \(0, 1\)"),
        (lambda: InverseSigmoid(k=0.5), r"InverseSigmoid: k must be a number in \[1, inf\)"),
        (lambda: Linear(c=-1), r"Linear: c must be"),
        (lambda: Constant(1.5), r"Constant: epsilon must be a number in \[0, 1\]"),
    ],
)
def test_bad_parameters(make, message):
    with pytest.raises(ValueError, match=message):
        make()
