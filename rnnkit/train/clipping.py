r"""Gradient clipping, element-wise and by global norm (Goodfellow et al., *Deep Learning* §10.11.1).

* by value: :math:`g_i \leftarrow \max(-v, \min(v, g_i))` for every gradient element;
* by norm: :math:`g \leftarrow \theta\, g / \lVert g \rVert` when :math:`\lVert g \rVert \ge \theta`,
  with :math:`\lVert g \rVert` the 2-norm of all parameters' gradients together.

Both use torch's implementations (``clip_grad_value_``, ``clip_grads_with_norm_``); torch adds
1e-6 to the norm in the rescale factor, a relative change below 1e-6 for any norm ≥ θ.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn


def check_clip(value: float | None, name: str) -> float | None:
    """None, or a finite number > 0; anything else is refused naming ``name``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise ValueError(f"{name} must be a number > 0 (or None for no clipping), got {value!r}")
    return float(value)


def clip_gradients(
    parameters: Iterable[nn.Parameter], max_norm: float | None = None, max_value: float | None = None
) -> float:
    """Clip gradients in place: first element-wise to [−max_value, max_value], then the global
    norm to max_norm. Returns the global 2-norm **before** any clipping, so exploding gradients
    show in the log even when clipping hides them from the update."""
    max_norm, max_value = check_clip(max_norm, "clip_norm"), check_clip(max_value, "clip_value")
    params = [p for p in parameters if p.grad is not None]
    if not params:
        return 0.0
    grads = [p.grad for p in params]
    pre_clip = nn.utils.get_total_norm(grads)
    if max_value is not None:
        nn.utils.clip_grad_value_(params, max_value)
    if max_norm is not None:
        norm = pre_clip if max_value is None else nn.utils.get_total_norm(grads)
        nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return float(pre_clip)
