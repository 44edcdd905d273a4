"""Skip connections through time around any cell."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import CellStructure, RecurrentCell, check_size, check_wrappable, uniform_


class SkipState(NamedTuple):
    """State of a SkipCell: the wrapped cell's state and the last d outputs.

    ``past`` has shape (B, d, H), oldest first: ``past[:, 0]`` is h(t−d), ``past[:, -1]`` is h(t−1).
    """

    inner: Any
    past: Tensor


class SkipCell(RecurrentCell):
    r"""Skip connection through time: the recurrence also reads h(t − d) (Lin et al. 1996;
    Goodfellow et al., *Deep Learning*, §10.9.1).

    .. math::
        \mathrm{gi}'(t) = \mathrm{gi}(t) + W_s\, h(t-d), \qquad
        (h(t), s(t)) = \mathrm{cell.recurrence}(\mathrm{gi}'(t), s(t-1))

    where gi(t) = U x(t) + b is the wrapped cell's input projection, so h(t − d) enters every
    pre-activation of the cell (each gate of an LSTM or GRU) the way the input does. Gradients
    reach d steps back along this path in one hop, so a dependency over T steps needs T/d
    multiplications by the recurrent Jacobian instead of T. With W_s = 0 it is the plain cell.

    Args:
        cell: any rnnkit cell.
        delay: d ≥ 2 (d = 1 is the ordinary recurrence).

    Parameters: the wrapped cell's as ``cell.*`` and ``weight_skip`` (projection_size, H) — W_s,
    from U(−1/√H, 1/√H).

    Shapes: x (B, I); state ``SkipState(inner, past)``, past (B, d, H); output (B, H).

    Structure (:attr:`structure`): the wrapped cell's under ``cell.``, plus the recurrent matrix
    ``weight_skip``; state fields ``inner, past``; no torch kernel.
    """

    def __init__(self, cell: RecurrentCell, delay: int) -> None:
        super().__init__()
        owner = type(self).__name__
        if not isinstance(cell, RecurrentCell):
            raise TypeError(f"{owner}: cell must be an rnnkit cell, got {type(cell).__name__}")
        check_wrappable(cell, owner)
        self.delay = check_size(delay, "delay", owner, minimum=2)
        self.cell = cell
        self.input_size, self.hidden_size = cell.input_size, cell.hidden_size
        self.projection_size = cell.projection_size
        dtype, device = cell.reference_dtype_device()
        self.weight_skip = nn.Parameter(torch.empty(cell.projection_size, cell.hidden_size, dtype=dtype, device=device))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        uniform_([self.weight_skip], self.hidden_size)

    @property
    def structure(self) -> CellStructure:
        """The wrapped cell's structure under ``cell.``, with ``weight_skip`` and the state ``(inner, past)``."""
        inner = self.cell.structure.under("cell")
        return self._wrapper_structure(
            recurrent_matrices=(*inner.recurrent_matrices, "weight_skip"), state_fields=SkipState._fields
        )

    def init_state(self, batch_size, *, dtype=None, device=None) -> SkipState:
        dtype, device = self._dtype_device(dtype, device)
        inner = self.cell.init_state(batch_size, dtype=dtype, device=device)
        past = torch.zeros(batch_size, self.delay, self.hidden_size, dtype=dtype, device=device)
        return SkipState(inner, past)

    def input_projection(self, x: Tensor) -> Tensor:
        return self.cell.input_projection(x)

    def recurrence(self, gi: Tensor, state: SkipState) -> tuple[Tensor, SkipState]:
        gi = gi + F.linear(state.past[:, 0], self.weight_skip)  # + W_s h(t-d)
        h, inner = self.cell.recurrence(gi, state.inner)
        past = torch.cat([state.past[:, 1:], h.unsqueeze(1)], dim=1)  # (B, d, H)
        return h, SkipState(inner, past)

    def output_of(self, state: SkipState) -> Tensor:
        return self.cell.output_of(state.inner)

    def extra_repr(self) -> str:
        return f"delay={self.delay}"
