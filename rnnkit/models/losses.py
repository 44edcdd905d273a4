r"""Losses over sequences, with padding masks.

Every sequence loss takes per-step outputs (T, B, ·), targets, and optional ``lengths`` (B,):
sequence b counts at steps t < lengths[b] only. ``reduction`` says how the per-step losses
ℓ(t, b) are combined:

* ``"sum"`` — Σ_b Σ_{t < len_b} ℓ(t, b), the seeds' loss "summed over time" (and batch);
* ``"batch"`` — the same divided by B: the mean over sequences of each sequence's total;
* ``"mean"`` — the same divided by the number of valid steps Σ_b len_b: per token;
* ``"none"`` — ℓ as a (T, B) tensor, zero on padding.

Symbols: T time, B batch, V vocabulary, O real output size, L the largest predicted length.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..cells.base import check_choice
from ..recurrent import check_lengths
from .base import SequenceOutput, sequence_mask

REDUCTIONS = ("sum", "batch", "mean", "none")


def _lengths(lengths: Any, T: int, B: int, device: torch.device, owner: str) -> Tensor | None:
    return check_lengths(lengths, B, T, device, owner)


def _reduce(per_step: Tensor, mask: Tensor, reduction: str, owner: str) -> Tensor:
    """Combine a (T, B) loss with its (T, B) validity mask as ``reduction`` says."""
    check_choice(reduction, "reduction", owner, REDUCTIONS)
    per_step = torch.where(mask, per_step, torch.zeros_like(per_step))
    if reduction == "none":
        return per_step
    total = per_step.sum()
    if reduction == "sum":
        return total
    if reduction == "batch":
        return total / mask.shape[1]
    return total / mask.sum()


def _check_rank(x: Any, name: str, owner: str, layout: str, dim: int, floating: bool) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{owner}: {name} must be a tensor of shape {layout}, got {type(x).__name__}")
    if x.dim() != dim:
        raise ValueError(f"{owner}: {name} must have shape {layout}, got {x.dim()}-D shape {tuple(x.shape)}")
    if floating and not x.is_floating_point():
        raise TypeError(f"{owner}: {name} must be floating point, got dtype {x.dtype}")
    if not floating and (x.is_floating_point() or x.is_complex() or x.dtype == torch.bool):
        raise TypeError(f"{owner}: {name} must hold integer class ids, got dtype {x.dtype}")
    return x


def sequence_nll(logits: Tensor, targets: Tensor, lengths: Any = None, reduction: str = "sum") -> Tensor:
    r"""Negative log-likelihood of a softmax output at every step (Goodfellow et al., eq. 10.12–10.14):

    .. math::
        \ell(t, b) = -\log \mathrm{softmax}(o(t, b))_{y(t, b)}

    Args:
        logits: o, (T, B, V). targets: y, (T, B) int64 class ids; padding may hold any value.
        lengths: (B,) in [1, T], or None. reduction: see the module docstring.
    """
    owner = "sequence_nll"
    _check_rank(logits, "logits", owner, "(T, B, V)", 3, True)
    _check_rank(targets, "targets", owner, "(T, B)", 2, False)
    T, B, V = logits.shape
    if targets.shape != (T, B):
        raise ValueError(
            f"{owner}: targets must have shape (T, B) = {(T, B)} to match logits {tuple(logits.shape)}, got "
            f"{tuple(targets.shape)}"
        )
    lengths = _lengths(lengths, T, B, logits.device, owner)
    mask = sequence_mask(lengths, T, B, logits.device)
    y = torch.where(mask, targets.long(), torch.zeros_like(targets, dtype=torch.long))  # padding → a valid id
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= V):
        bad = y[(y < 0) | (y >= V)][0].item()
        raise ValueError(f"{owner}: targets hold class {bad}, outside the logits' [0, V={V})")
    per_step = -torch.log_softmax(logits, dim=-1).gather(-1, y.unsqueeze(-1)).squeeze(-1)  # (T, B)
    return _reduce(per_step, mask, reduction, owner)


def squared_error(values: Tensor, targets: Tensor, lengths: Any = None, reduction: str = "sum") -> Tensor:
    r"""Half the squared error of real outputs at every step (the seeds' :math:`E = \tfrac12 \sum e^\top e`):

    .. math::
        \ell(t, b) = \tfrac12\, e^\top e, \qquad e = \hat y(t, b) - y(t, b)

    Args:
        values: ŷ, (T, B, O). targets: y, (T, B, O); padding may hold any finite value.
        lengths: (B,) in [1, T], or None. reduction: see the module docstring.
    """
    owner = "squared_error"
    _check_rank(values, "values", owner, "(T, B, O)", 3, True)
    _check_rank(targets, "targets", owner, "(T, B, O)", 3, True)
    if targets.shape != values.shape:
        raise ValueError(
            f"{owner}: targets must have the values' shape {tuple(values.shape)}, got {tuple(targets.shape)}"
        )
    T, B, _ = values.shape
    lengths = _lengths(lengths, T, B, values.device, owner)
    mask = sequence_mask(lengths, T, B, values.device)
    e = values - targets  # (T, B, O)
    return _reduce(0.5 * (e * e).sum(-1), mask, reduction, owner)


def halt_targets(lengths: Tensor, steps: int) -> Tensor:
    """(T, B) floats: 1 at each sequence's last step t = lengths[b] − 1, 0 elsewhere."""
    t = torch.arange(steps, device=lengths.device).unsqueeze(1)  # (T, 1)
    return (t == lengths - 1).to(torch.get_default_dtype())


def halt_loss(halt_logits: Tensor, lengths: Any = None, reduction: str = "sum") -> Tensor:
    r"""Binary cross-entropy of the Bernoulli halt output (sigmoid of ``halt_logits``):

    .. math::
        \ell(t, b) = -\big[z \log \sigma(a) + (1 - z) \log(1 - \sigma(a))\big],
        \quad a = \text{halt}(t, b),\ z = [\,t = \mathrm{len}_b - 1\,]

    so the model learns to say "stop" after each sequence's last step and "go on" before;
    steps after the end are masked. Without ``lengths`` every sequence ends at step T.

    Args:
        halt_logits: (T, B). lengths: (B,) in [1, T], or None. reduction: see the module docstring.
    """
    owner = "halt_loss"
    _check_rank(halt_logits, "halt_logits", owner, "(T, B)", 2, True)
    T, B = halt_logits.shape
    lengths = _lengths(lengths, T, B, halt_logits.device, owner)
    full = lengths if lengths is not None else torch.full((B,), T, dtype=torch.long, device=halt_logits.device)
    z = halt_targets(full, T).to(halt_logits.dtype)  # (T, B)
    per_step = F.binary_cross_entropy_with_logits(halt_logits, z, reduction="none")
    return _reduce(per_step, sequence_mask(lengths, T, B, halt_logits.device), reduction, owner)


def length_loss(length_logits: Tensor, lengths: Any, reduction: str = "mean") -> Tensor:
    r"""Cross-entropy of the length head (:class:`rnnkit.models.heads.LengthHead`): τ is class τ − 1.

    .. math::
        \ell(b) = -\log \mathrm{softmax}(\text{length\_logits}(b))_{\tau_b - 1}

    Args:
        length_logits: (B, L). lengths: the true τ, (B,) integers in [1, L].
        reduction: ``"sum"``, ``"mean"`` (over the batch; ``"batch"`` is the same) or ``"none"`` (B,).
    """
    owner = "length_loss"
    _check_rank(length_logits, "length_logits", owner, "(B, L)", 2, True)
    B, L = length_logits.shape
    if lengths is None:
        raise ValueError(f"{owner}: lengths are the targets here; got None")
    lengths = check_lengths(lengths, B, L, length_logits.device, f"{owner} (L = max_length)")
    per_seq = F.cross_entropy(length_logits, lengths - 1, reduction="none")  # (B,)
    check_choice(reduction, "reduction", owner, REDUCTIONS)
    if reduction == "none":
        return per_seq
    return per_seq.sum() if reduction == "sum" else per_seq.mean()


def sequence_loss(
    output: SequenceOutput,
    targets: Tensor,
    lengths: Any = None,
    reduction: str = "sum",
    *,
    discrete: bool | None = None,
) -> Tensor:
    """The whole training loss of a model's :class:`SequenceOutput`: the output's loss (NLL for
    token ids, squared error for real targets) + the halt loss with a halt head + the length
    loss with a length head, each reduced by ``reduction`` (the length loss per sequence:
    summed for ``"sum"``, averaged for ``"batch"``/``"mean"``).

    Args:
        output: ``SequenceOutput(logits (T, B, V|O), halt (T, B) | None, length (B, L) | None)``.
        targets: (T, B) int64 or (T, B, O) floats. lengths: (B,) or None.
        discrete: which output loss; by default read from the targets' dtype.
    """
    if reduction == "none":
        raise ValueError("sequence_loss: reduction must be 'sum', 'batch' or 'mean' (a total), got 'none'")
    if not isinstance(output, SequenceOutput):
        raise TypeError(f"sequence_loss: output must be a SequenceOutput, got {type(output).__name__}")
    if discrete is None:
        discrete = isinstance(targets, Tensor) and not targets.is_floating_point()
    if discrete:
        loss = sequence_nll(output.logits, targets, lengths, reduction)
    else:
        loss = squared_error(output.logits, targets, lengths, reduction)
    if output.halt is not None:
        loss = loss + halt_loss(output.halt, lengths, reduction)
    if output.length is not None:
        T, B = output.logits.shape[:2]
        true = lengths if lengths is not None else [T] * B
        loss = loss + length_loss(output.length, true, "sum" if reduction == "sum" else "mean")
    return loss
