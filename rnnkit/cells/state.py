"""Recurrent states: the NamedTuples every cell carries from one step to the next.

A state is a NamedTuple whose fields are tensors with the batch on dimension 0, or nested
states (a wrapper cell keeps its inner cell's state as one field). The helpers here map a
function over every tensor of a state, so the time loop can mask, detach or slice a state
without knowing which cell made it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor


class RNNState(NamedTuple):
    """State of the Elman and GRU cells: the hidden vector ``h`` of shape (B, H)."""

    h: Tensor


class LSTMState(NamedTuple):
    """State of the LSTM cells, in torch's order: hidden ``h`` and cell ``c``, both (B, H)."""

    h: Tensor
    c: Tensor


def is_state(obj: Any) -> bool:
    """True for a NamedTuple state (a tuple with ``_fields``)."""
    return isinstance(obj, tuple) and hasattr(obj, "_fields")


def map_state(fn: Callable[..., Tensor], state: Any, *others: Any) -> Any:
    """Apply ``fn`` to every tensor of ``state`` (and the matching tensors of ``others``).

    Works on NamedTuple states, plain tuples/lists of states (a stack's per-layer states),
    and bare tensors; the result has the structure of ``state``.
    """
    if isinstance(state, Tensor):
        return fn(state, *others)
    if is_state(state):
        return type(state)(*(map_state(fn, *parts) for parts in zip(state, *others)))
    if isinstance(state, (tuple, list)):
        return type(state)(map_state(fn, *parts) for parts in zip(state, *others))
    raise TypeError(f"expected a state made of tensors and NamedTuples, got {type(state).__name__}")


def state_tensors(state: Any) -> list[Tensor]:
    """The tensors of a state, depth first, in field order."""
    out: list[Tensor] = []

    def walk(s: Any) -> None:  # map_state's traversal, without building a new state
        if isinstance(s, Tensor):
            out.append(s)
        elif isinstance(s, (tuple, list)):
            for part in s:
                walk(part)
        else:
            raise TypeError(f"expected a state made of tensors and NamedTuples, got {type(s).__name__}")

    walk(state)
    return out


def rebuild_state(template: Any, tensors: Any) -> Any:
    """The inverse of :func:`state_tensors`: a state shaped like ``template`` whose tensors are
    taken, depth first in field order, from the iterable ``tensors``."""
    it = iter(tensors)

    def build(t: Any) -> Any:
        if isinstance(t, Tensor):
            return next(it)
        if is_state(t):
            return type(t)(*(build(f) for f in t))
        return type(t)(build(f) for f in t)

    return build(template)


def where_state(keep_new: Tensor, new: Any, old: Any) -> Any:
    """Per batch row, take ``new`` where ``keep_new`` (shape (B,), bool) is true, else ``old``.

    A field the step left as it was (the same tensor in both, e.g. an attention state's memory)
    is passed through as it is, not copied."""

    def pick(n: Tensor, o: Tensor) -> Tensor:
        if n is o:
            return n
        mask = keep_new.view(-1, *([1] * (n.dim() - 1)))  # (B, 1, ...)
        return torch.where(mask, n, o)

    return map_state(pick, new, old)


def detach_state(state: Any) -> Any:
    """The same state cut from the autograd graph (truncated back-propagation through time)."""
    return map_state(lambda t: t.detach(), state)


def coerce_state(state: Any, template: Any, owner: str, path: str = "state") -> Any:
    """Check ``state`` against ``template`` (a state of the right shapes) and return it typed.

    A plain tuple or list of the right length is accepted in place of the NamedTuple, as torch
    users pass ``(h, c)``. Every tensor must match the template's shape, dtype and device; the
    error names the field, what was expected and what came.
    """
    if isinstance(template, Tensor):
        if not isinstance(state, Tensor):
            raise TypeError(
                f"{owner}: {path} must be a tensor of shape {tuple(template.shape)}, got {type(state).__name__}"
            )
        if state.shape != template.shape:
            raise ValueError(f"{owner}: {path} has shape {tuple(state.shape)}, expected {tuple(template.shape)}")
        if state.dtype != template.dtype:
            raise TypeError(f"{owner}: {path} has dtype {state.dtype}, expected {template.dtype}")
        if state.device != template.device:
            raise ValueError(f"{owner}: {path} is on {state.device}, expected {template.device}")
        return state
    name = type(template).__name__
    fields = template._fields
    wrong_named = is_state(state) and type(state) is not type(template) and state._fields != fields
    if not isinstance(state, (tuple, list)) or len(state) != len(fields) or wrong_named:
        if is_state(state):
            got = f"{type(state).__name__}{tuple(state._fields)}"
        elif isinstance(state, (tuple, list)):
            got = f"{type(state).__name__} of length {len(state)}"
        else:
            got = type(state).__name__
        raise TypeError(f"{owner}: {path} must be a {name}{tuple(fields)}, got {got}")
    return type(template)(*(coerce_state(s, t, owner, f"{path}.{f}") for s, t, f in zip(state, template, fields)))
