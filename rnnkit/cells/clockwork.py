"""Multiple time scales by removed connections: the clockwork RNN."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import CellStructure, RecurrentCell, check_choice, check_size, uniform_
from .elman import ACTIVATIONS


class ClockworkState(NamedTuple):
    """State of a ClockworkCell: hidden ``h`` (B, H) and each sequence's step counter ``t`` (B,), int64."""

    h: Tensor
    t: Tensor


class ClockworkCell(RecurrentCell):
    r"""Clockwork RNN (Koutník, Greff, Gomez & Schmidhuber 2014): hidden groups at several
    time scales, made by removing connections (Goodfellow et al., *Deep Learning*, §10.9.3).

    The H hidden units are split into groups, group j with period T_j (``periods``; groups as
    equal in size as H allows, in the order given). With the step counter t of the state:

    .. math::
        a(t) &= b + (W \odot M)\, h(t-1) + U x(t), \qquad M_{uv} = [\,T(v) \ge T(u)\,] \\
        h_u(t) &= \phi(a_u(t)) \ \text{if } t \bmod T(u) = 0, \ \text{else } h_u(t-1)

    A unit reads only from units as slow or slower (M removes the rest: their weights get no
    gradient), and updates only at the steps its period divides, so slow groups keep
    information over long spans. The counter starts at 0, so every group updates at the first
    step. With every period 1 this is the Elman cell.

    Args:
        input_size: I.  hidden_size: H (at least one unit per period).
        periods: positive integer periods, one per group, e.g. (1, 2, 4, 8).
        bias: if False, no biases.  nonlinearity: ``"tanh"`` or ``"relu"``.

    Parameters as ElmanCell (``weight_ih`` (H, I), ``weight_hh`` (H, H), ``bias_ih``,
    ``bias_hh``), so its state_dicts load into and from torch.nn.RNNCell. Buffers (not saved):
    ``unit_period`` (H,) and ``connection_mask`` M (H, H).

    Shapes: x (B, I); state ``ClockworkState(h, t)``; output (B, H).

    Structure (:attr:`structure`): one gate block ``a``; recurrent matrix ``weight_hh`` masked by
    ``connection_mask``; unit periods ``unit_period``; no torch kernel (torch has no clock).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        periods: Sequence[int] = (1, 2, 4, 8),
        bias: bool = True,
        nonlinearity: str = "tanh",
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.input_size = check_size(input_size, "input_size", owner)
        self.hidden_size = H = check_size(hidden_size, "hidden_size", owner)
        self.projection_size = H
        self.nonlinearity = check_choice(nonlinearity, "nonlinearity", owner, tuple(ACTIVATIONS))
        periods = list(periods) if isinstance(periods, (list, tuple)) else periods
        if not isinstance(periods, list) or not periods:
            raise ValueError(f"{owner}: periods must be a non-empty list of positive integers, got {periods!r}")
        for p in periods:
            if isinstance(p, bool) or not isinstance(p, int) or p < 1:
                raise ValueError(f"{owner}: periods must be positive integers, got {p!r} in {periods!r}")
        if len(periods) > H:
            raise ValueError(f"{owner}: {len(periods)} periods need hidden_size ≥ {len(periods)}, got {H}")
        self.periods = tuple(periods)
        self.bias = bool(bias)
        groups = torch.arange(H).tensor_split(len(periods))
        unit_period = torch.empty(H, dtype=torch.long)
        for p, idx in zip(periods, groups):
            unit_period[idx] = p
        self.register_buffer("unit_period", unit_period, persistent=False)
        mask = (unit_period.unsqueeze(0) >= unit_period.unsqueeze(1)).to(
            torch.get_default_dtype()
        )  # (H, H): row reads column
        self.register_buffer("connection_mask", mask, persistent=False)
        self._make_parameters(H, bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        uniform_(list(self.parameters()), self.hidden_size)

    def init_state(self, batch_size, *, dtype=None, device=None) -> ClockworkState:
        dtype, device = self._dtype_device(dtype, device)
        h = torch.zeros(batch_size, self.hidden_size, dtype=dtype, device=device)
        return ClockworkState(h, torch.zeros(batch_size, dtype=torch.long, device=device))

    def input_projection(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight_ih, self.bias_ih)

    def recurrence(self, gi: Tensor, state: ClockworkState) -> tuple[Tensor, ClockworkState]:
        h, t = state
        a = gi + F.linear(h, self.weight_hh * self.connection_mask, self.bias_hh)
        active = (t.unsqueeze(1) % self.unit_period) == 0  # (B, H): groups whose clock ticks now
        h = torch.where(active, ACTIVATIONS[self.nonlinearity](a), h)
        return h, ClockworkState(h, t + 1)

    @property
    def structure(self) -> CellStructure:
        """One gate ``a``, matrix ``weight_hh`` ⊙ ``connection_mask``, state ``(h, t)``, periods ``unit_period``."""
        return CellStructure(
            gates=(("a", slice(0, self.hidden_size)),),
            recurrent_matrices=("weight_hh",),
            masks=(("weight_hh", "connection_mask"),),
            state_fields=ClockworkState._fields,
            nonlinearities=("a",),
            unit_periods="unit_period",
        )

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, periods={self.periods}, nonlinearity={self.nonlinearity!r}"
