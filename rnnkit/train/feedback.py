r"""Training models whose outputs feed back into them: teacher forcing, free running, their
per-step mixture (scheduled sampling), and the k-steps-ahead loss.

The model follows the decoding protocol of :mod:`rnnkit.generate` (``start``, ``step``). The
input at step t is the previous output y(t−1): at t = 0 the model's ``bos`` token (discrete) or
zeros (real-valued). :func:`rollout` chooses, independently for every sequence and step, the
true y(t−1) with probability ε (teacher forcing) or the model's own output from step t−1 with
probability 1 − ε (Bengio et al. 2015); ε = 1 is teacher forcing, ε = 0 free running.

The own output fed back is the argmax (``feed="greedy"``) or a draw from the softmax
(``feed="sample"``) for token models, and the predicted value for real-valued models — in which
case the gradient flows through it (the unfolded output-to-input path of Goodfellow et al.
§10.2.1).

Symbols: T steps, B batch, V vocabulary, O output width.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..cells.state import map_state


class Rollout(NamedTuple):
    """Outputs of every step: logits (T, B, V) or values (T, B, O); halt (T, B) or None."""

    logits: Tensor
    halt: Tensor | None


def _is_discrete(targets: Tensor) -> bool:
    return not targets.is_floating_point()


def _first_input(model: nn.Module, targets: Tensor) -> Tensor:
    B = targets.shape[1]
    if _is_discrete(targets):
        if getattr(model, "bos", None) is None:
            raise ValueError(f"{type(model).__name__} has no bos token to start from")
        return torch.full((B,), int(model.bos), dtype=torch.long, device=targets.device)
    return targets.new_zeros(B, *targets.shape[2:])


def _own_output(logits: Tensor, discrete: bool, feed: str, generator) -> Tensor:
    if not discrete:
        return logits
    if feed == "greedy":
        return logits.argmax(-1)
    return torch.multinomial(logits.detach().float().softmax(-1), 1, generator=generator).squeeze(1)


def _check_targets(targets: Any) -> Tensor:
    if not isinstance(targets, Tensor) or targets.dim() not in (2, 3):
        got = f"shape {tuple(targets.shape)}" if isinstance(targets, Tensor) else type(targets).__name__
        raise ValueError(f"targets must be (T, B) token ids or (T, B, O) values, got {got}")
    if targets.dim() == 2 and targets.dtype != torch.long:
        raise ValueError(f"targets of shape (T, B) must be int64 token ids, got {targets.dtype}")
    if targets.dim() == 3 and not targets.is_floating_point():
        raise ValueError(f"targets of shape (T, B, O) must be floating point values, got {targets.dtype}")
    return targets


def rollout(
    model: nn.Module,
    targets: Tensor,
    teacher_prob: float = 1.0,
    *,
    context: Any = None,
    feed: str = "greedy",
    generator: torch.Generator | None = None,
) -> Rollout:
    """Run ``model`` step by step over ``targets`` (T, B) or (T, B, O), feeding back the true or the
    model's own previous output per step and sequence (see the module docstring)."""
    targets = _check_targets(targets)
    if isinstance(teacher_prob, bool) or not isinstance(teacher_prob, (int, float)) or not 0 <= teacher_prob <= 1:
        raise ValueError(f"teacher_prob must be a probability in [0, 1], got {teacher_prob!r}")
    if feed not in ("greedy", "sample"):
        raise ValueError(f"feed must be 'greedy' or 'sample', got {feed!r}")
    discrete = _is_discrete(targets)
    T, B = targets.shape[:2]
    state = model.start(B, context=context) if context is not None else model.start(B)
    y_in = _first_input(model, targets)
    logits, halts = [], []
    for t in range(T):
        out, state = model.step(y_in, state)
        logits.append(out.logits)
        halts.append(getattr(out, "halt", None))
        if t + 1 == T:
            break
        own = _own_output(out.logits, discrete, feed, generator)
        if teacher_prob >= 1:
            y_in = targets[t]
        elif teacher_prob <= 0:
            y_in = own
        else:
            coin = torch.rand(B, generator=generator) < teacher_prob  # (B,): True → feed the truth
            coin = coin.to(targets.device).view(B, *([1] * (targets.dim() - 2)))
            y_in = torch.where(coin, targets[t], own)
    halt = torch.stack(halts) if halts[0] is not None else None  # (T, B)
    return Rollout(torch.stack(logits), halt)  # (T, B, V)


def k_step_ahead_loss(model: nn.Module, targets: Tensor, k: int, *, context: Any = None) -> Tensor:
    r"""The k-steps-ahead loss: from every position, predict the target k steps ahead by running
    the model on its own outputs for k steps.

    For each t, the state after reading the true y(0..t−1) (teacher forcing) is rolled forward k
    steps feeding back the model's own outputs; the k-th prediction is scored against y(t+k−1):
    squared error ½‖ŷ − y‖² for real values (the gradient flows through the fed-back outputs),
    NLL for tokens (argmax fed back). The mean over the (T − k + 1)·B predictions is returned;
    k = 1 is the ordinary teacher-forced one-step loss.
    """
    targets = _check_targets(targets)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an int ≥ 1, got {k!r}")
    T, B = targets.shape[:2]
    if k > T:
        raise ValueError(f"k = {k} steps ahead needs sequences of at least k steps, got T = {T}")
    discrete = _is_discrete(targets)
    state = model.start(B, context=context) if context is not None else model.start(B)
    y_in = _first_input(model, targets)
    starts, inputs = [], []
    for t in range(T - k + 1):  # teacher-forced states from which each k-step rollout begins
        starts.append(state)
        inputs.append(y_in)
        if t + 1 < T - k + 1:
            _, state = model.step(y_in, state)
            y_in = targets[t]
    n = len(starts)
    # all (T − k + 1)·B rollouts at once: the batch dim of every state tensor holds them
    state = map_state(lambda *ts: torch.cat(ts, 0), starts[0], *starts[1:])
    y_in = torch.cat(inputs, 0)  # (n·B, ...)
    for j in range(k):
        out, state = model.step(y_in, state)
        if j + 1 < k:
            y_in = _own_output(out.logits, discrete, "greedy", None)
    truth = targets[k - 1 : k - 1 + n].reshape(n * B, *targets.shape[2:])  # (n·B, ...) row t·B + b ↔ y(t+k−1)
    if discrete:
        return F.cross_entropy(out.logits, truth)
    return 0.5 * (out.logits - truth).pow(2).sum(-1).mean()
