"""Teacher forcing, free running, scheduled sampling and the k-steps-ahead loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rnnkit.generate import generate
from rnnkit.train.feedback import k_step_ahead_loss, rollout

from ..decoders import RealDecoder, TinyDecoder


def targets(T=7, B=5, V=5, seed=0):
    return torch.randint(0, V, (T, B), generator=torch.Generator().manual_seed(seed))


def test_teacher_prob_one_is_teacher_forcing_in_one_pass():
    model = TinyDecoder(seed=1)
    y = targets()
    torch.testing.assert_close(rollout(model, y, 1.0).logits, model(y), rtol=1e-5, atol=1e-6)


def test_teacher_prob_zero_is_free_running():
    model = TinyDecoder(seed=2)
    y = targets()
    logits = rollout(model, y, 0.0).logits  # (T, B, V)
    free = generate(model, y.shape[1], max_length=y.shape[0], method="greedy", end=None)
    torch.testing.assert_close(logits.argmax(-1).t(), free.tokens)


def test_mixture_feeds_the_truth_with_the_given_probability():
    model = TinyDecoder(seed=3)
    fed = []
    step = model.step
    model.step = lambda y_prev, state: (fed.append(y_prev.clone()), step(y_prev, state))[1]
    y = targets(T=6, B=4000, seed=4)
    logits = rollout(model, y, 0.3, generator=torch.Generator().manual_seed(0)).logits
    own = logits.argmax(-1)  # (T, B) what the model would feed back
    inputs = torch.stack(fed[1:])  # inputs of steps 1..T−1
    truth, mine = y[:-1], own[:-1]
    assert bool(((inputs == truth) | (inputs == mine)).all())
    differ = truth != mine
    share = (inputs[differ] == truth[differ]).double().mean().item()
    assert abs(share - 0.3) < 0.02


def test_k_one_is_the_one_step_loss_and_k_two_matches_a_hand_rollout():
    model = RealDecoder(seed=5)
    g = torch.Generator().manual_seed(1)
    y = torch.randn(6, 3, 2, generator=g, dtype=torch.float64)
    one = k_step_ahead_loss(model, y, 1)
    tf = rollout(model, y, 1.0).logits
    torch.testing.assert_close(one, 0.5 * (tf - y).pow(2).sum(-1).mean(), rtol=1e-12, atol=0)
    k = 2
    losses = []
    for t in range(y.shape[0] - k + 1):
        state, y_in = model.start(3), torch.zeros(3, 2, dtype=torch.float64)
        for s in range(t):  # read the truth up to y(t−1)
            _, state = model.step(y_in, state)
            y_in = y[s]
        for _ in range(k):  # then k steps on the model's own outputs
            out, state = model.step(y_in, state)
            y_in = out.logits
        losses.append(0.5 * (out.logits - y[t + k - 1]).pow(2).sum(-1))
    expect = torch.cat(losses).mean()
    got = k_step_ahead_loss(model, y, k)
    torch.testing.assert_close(got, expect, rtol=1e-12, atol=0)
    # the gradient flows through the fed-back prediction
    (g_got,) = torch.autograd.grad(got, [model.head.weight])
    (g_exp,) = torch.autograd.grad(expect, [model.head.weight])
    torch.testing.assert_close(g_got, g_exp, rtol=1e-10, atol=1e-12)


def test_k_step_for_tokens_scores_the_kth_prediction():
    model = TinyDecoder(seed=6)
    y = targets(T=5, B=2, seed=7)
    one = k_step_ahead_loss(model, y, 1)
    torch.testing.assert_close(one, F.cross_entropy(model(y).reshape(-1, 5), y.reshape(-1)), rtol=1e-5, atol=1e-6)
    assert torch.isfinite(k_step_ahead_loss(model, y, 3))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m, y: rollout(m, y, 1.5), r"teacher_prob must be a probability in \[0, 1\], got 1.5"),
        (lambda m, y: rollout(m, y, 0.5, feed="beam"), "feed must be 'greedy' or 'sample'"),
        (lambda m, y: rollout(m, y.float(), 1.0), r"must be int64 token ids"),
        (lambda m, y: k_step_ahead_loss(m, y, 0), "k must be an int ≥ 1, got 0"),
        (lambda m, y: k_step_ahead_loss(m, y, 99), "needs sequences of at least k steps"),
    ],
)
def test_bad_settings(call, message):
    with pytest.raises(ValueError, match=message):
        call(TinyDecoder(), targets())
