r"""Scheduled sampling curricula (Bengio et al. 2015, "Scheduled Sampling for Sequence Prediction
with Recurrent Neural Networks", §2.4).

A schedule gives :math:`\epsilon_i`, the probability of feeding the *true* previous output (teacher
forcing) at training update i; 1 − ε_i is the share of the model's own outputs. ε starts near 1
and decays, so training moves from teacher forcing towards free running:

* linear: :math:`\epsilon_i = \max(\epsilon_{\min}, k - c\,i)`
* exponential: :math:`\epsilon_i = k^i`, 0 < k < 1
* inverse sigmoid: :math:`\epsilon_i = k / (k + \exp(i / k))`, k ≥ 1
* constant: :math:`\epsilon_i = \epsilon` (1: teacher forcing, 0: free running).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def _number(
    value, name: str, owner: str, low: float, high: float, low_open: bool = False, high_open: bool = False
) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        lb, hb = "(" if low_open else "[", ")" if high_open else "]"
        raise ValueError(f"{owner}: {name} must be a number in {lb}{low}, {high}{hb}, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Constant:
    """ε_i = epsilon for every update."""

    epsilon: float = 1.0

    def __post_init__(self):
        _number(self.epsilon, "epsilon", "Constant", 0, 1)

    def __call__(self, step: int) -> float:
        return self.epsilon


@dataclass(frozen=True)
class Linear:
    """ε_i = max(minimum, k − c·i)."""

    c: float
    k: float = 1.0
    minimum: float = 0.0

    def __post_init__(self):
        _number(self.c, "c", "Linear", 0, math.inf, high_open=True)
        _number(self.k, "k", "Linear", 0, 1)
        _number(self.minimum, "minimum", "Linear", 0, 1)

    def __call__(self, step: int) -> float:
        return max(self.minimum, self.k - self.c * step)


@dataclass(frozen=True)
class Exponential:
    """ε_i = k^i with 0 < k < 1."""

    k: float

    def __post_init__(self):
        _number(self.k, "k", "Exponential", 0, 1, low_open=True, high_open=True)

    def __call__(self, step: int) -> float:
        return self.k**step


@dataclass(frozen=True)
class InverseSigmoid:
    """ε_i = k / (k + exp(i / k)) with k ≥ 1."""

    k: float

    def __post_init__(self):
        _number(self.k, "k", "InverseSigmoid", 1, math.inf, high_open=True)

    def __call__(self, step: int) -> float:
        z = step / self.k
        return self.k / (self.k + math.exp(z)) if z < 700 else 0.0


SCHEDULES = {"constant": Constant, "linear": Linear, "exponential": Exponential, "inverse-sigmoid": InverseSigmoid}
