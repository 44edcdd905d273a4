"""Clipping by value and by norm against their definitions; the returned norm is the pre-clip norm."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rnnkit.train.clipping import clip_gradients


def params_with_grads(scale: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ps = [nn.Parameter(torch.zeros(3, 4)), nn.Parameter(torch.zeros(5))]
    for p in ps:
        p.grad = torch.randn(p.shape, generator=g) * scale
    return ps


def total_norm(ps):
    return float(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in ps)))


@pytest.mark.parametrize("scale", [0.01, 10.0])
def test_norm_clipping_rescales_only_above_the_threshold(scale):
    ps = params_with_grads(scale)
    before = [p.grad.clone() for p in ps]
    norm = total_norm(ps)
    theta = 1.0
    reported = clip_gradients(ps, max_norm=theta)
    assert reported == pytest.approx(norm, rel=1e-6)
    factor = theta / norm if norm >= theta else 1.0
    for p, g in zip(ps, before):
        torch.testing.assert_close(p.grad, g * factor, rtol=2e-6, atol=0)
    assert total_norm(ps) == pytest.approx(min(norm, theta), rel=2e-6)


def test_value_clipping_clamps_every_element():
    ps = params_with_grads(3.0, seed=1)
    before = [p.grad.clone() for p in ps]
    reported = clip_gradients(ps, max_value=0.5)
    assert reported == pytest.approx(float(torch.sqrt(sum((g.double() ** 2).sum() for g in before))), rel=1e-6)
    for p, g in zip(ps, before):
        torch.testing.assert_close(p.grad, g.clamp(-0.5, 0.5), rtol=0, atol=0)


def test_both_clip_value_first_then_norm_and_log_the_norm_before_either():
    ps = params_with_grads(3.0, seed=2)
    before = [p.grad.clone() for p in ps]
    reported = clip_gradients(ps, max_norm=0.7, max_value=1.0)
    assert reported == pytest.approx(float(torch.sqrt(sum((g.double() ** 2).sum() for g in before))), rel=1e-6)
    clamped = [g.clamp(-1, 1) for g in before]
    n = float(torch.sqrt(sum((g.double() ** 2).sum() for g in clamped)))
    for p, g in zip(ps, clamped):
        torch.testing.assert_close(p.grad, g * (0.7 / n), rtol=2e-6, atol=0)


@pytest.mark.parametrize(
    "kwargs", [dict(max_norm=-1.0), dict(max_norm=0), dict(max_value=-0.1), dict(max_value=float("inf"))]
)
def test_negative_or_zero_thresholds_are_refused(kwargs):
    with pytest.raises(ValueError, match=r"must be a number > 0 \(or None for no clipping\)"):
        clip_gradients(params_with_grads(1.0), **kwargs)
