"""Sequence utilities the engines share, below the layers that use them."""

from __future__ import annotations

import torch
from torch import Tensor


def reverse_padded(x: Tensor, lengths: Tensor | None) -> Tensor:
    """Reverse each sequence of a time-major batch within its own length.

    x (T, B, ...); row b's first ``lengths[b]`` steps are reversed, the padding stays in place.
    The map is its own inverse, so the same call un-reverses outputs.
    """
    if lengths is None:
        return x.flip(0)
    T = x.shape[0]
    t = torch.arange(T, device=x.device).unsqueeze(1)  # (T, 1)
    idx = torch.where(t < lengths, lengths - 1 - t, t)  # (T, B)
    idx = idx.view(T, -1, *([1] * (x.dim() - 2))).expand_as(x)  # (T, B, ...)
    return x.gather(0, idx)
