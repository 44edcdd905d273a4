"""The contract every rnnkit cell keeps, and the checks made at its boundary.

A cell computes one time step. Its work is split in two so that a time loop can batch the part
that does not depend on the past:

* ``input_projection(x)`` — the affine map of the input, ``U x + b``; it depends on ``x`` alone,
  so a layer computes it for all T steps with one matrix product;
* ``recurrence(gi, state)`` — everything that reads the previous state, given the projected
  input ``gi``; it returns ``(output, new_state)``.

``forward(x, state)`` is the two in sequence, with the arguments checked first.

Symbols: B batch, I input size, H hidden size, G the number of stacked pre-activation blocks
(1 for Elman, 3 for GRU, 4 for LSTM); ``projection_size`` is the width of ``gi``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from .state import coerce_state


def check_size(value: Any, name: str, owner: str, minimum: int = 1) -> int:
    """Return ``value`` if it is an integer ≥ ``minimum``, else raise naming the argument."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}: {name} must be an int ≥ {minimum}, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{owner}: {name} must be ≥ {minimum}, got {value}")
    return value


def check_choice(value: Any, name: str, owner: str, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise naming the argument and the choices."""
    if value not in choices:
        raise ValueError(f"{owner}: {name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def uniform_(params: list[Tensor], hidden_size: int) -> None:
    """torch.nn's RNN initialisation: every parameter from U(−1/√H, 1/√H)."""
    bound = 1.0 / math.sqrt(hidden_size)
    with torch.no_grad():
        for p in params:
            p.uniform_(-bound, bound)


class RecurrentCell(nn.Module):
    """Base class of all cells: one time step ``forward(x, state) -> (output, new_state)``.

    Subclasses set ``input_size``, ``hidden_size``, ``projection_size`` and implement
    ``init_state``, ``input_projection`` and ``recurrence``. The output of every cell is its new
    hidden vector h, of shape (B, H).
    """

    input_size: int
    hidden_size: int
    projection_size: int

    def reset_parameters(self) -> None:
        """Draw fresh initial values for every parameter (each cell documents its scheme)."""
        raise NotImplementedError

    def init_state(self, batch_size: int, *, dtype: torch.dtype | None = None, device: torch.device | None = None) -> Any:
        """The zero state for a batch of ``batch_size``; dtype and device default to the parameters'."""
        raise NotImplementedError

    def input_projection(self, x: Tensor) -> Tensor:
        """``gi = U x + b`` for x of shape (..., I); returns (..., projection_size)."""
        raise NotImplementedError

    def recurrence(self, gi: Tensor, state: Any) -> tuple[Tensor, Any]:
        """One step from the projected input ``gi`` (B, projection_size) and the previous state.

        No argument checks: this is the inner loop. Use ``forward`` for checked calls.
        """
        raise NotImplementedError

    def output_of(self, state: Any) -> Tensor:
        """The output carried in a state (its hidden vector h)."""
        return state[0]

    # -- the checked, public step --------------------------------------------------------------
    def forward(self, x: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        """One time step.

        Args:
            x: input of shape (B, I).
            state: the previous state (this cell's NamedTuple, or a plain tuple in its field
                order), or None for zeros.

        Returns:
            ``(output, new_state)`` with output of shape (B, H).
        """
        self.check_input(x, expected_dim=2, layout="(B, I)")
        state = self.prepare_state(state, x.shape[0], x.dtype, x.device)
        return self.recurrence(self.input_projection(x), state)

    def reference_dtype_device(self) -> tuple[torch.dtype, torch.device]:
        """The dtype and device inputs must have: the parameters' (or floating buffers')."""
        for p in self.parameters():
            return p.dtype, p.device
        for b in self.buffers():
            if b.is_floating_point():
                return b.dtype, b.device
        return torch.get_default_dtype(), torch.device("cpu")

    def check_input(self, x: Any, expected_dim: int, layout: str) -> None:
        """Raise a clear error unless ``x`` is a tensor of rank ``expected_dim`` fitting this cell."""
        owner = type(self).__name__
        if not isinstance(x, Tensor):
            raise TypeError(f"{owner}: input x must be a tensor of shape {layout}, got {type(x).__name__}")
        if x.dim() != expected_dim:
            raise ValueError(f"{owner}: input x must have shape {layout}, got {x.dim()}-D shape {tuple(x.shape)}")
        if x.shape[-1] != self.input_size:
            raise ValueError(
                f"{owner}: input x has width {x.shape[-1]} (shape {tuple(x.shape)}), expected input_size={self.input_size}"
            )
        dtype, device = self.reference_dtype_device()
        if x.dtype != dtype:
            raise TypeError(f"{owner}: input x has dtype {x.dtype}, expected the parameters' dtype {dtype}")
        if x.device != device:
            raise ValueError(f"{owner}: input x is on {x.device}, expected the parameters' device {device}")

    def prepare_state(self, state: Any, batch_size: int, dtype: torch.dtype, device: torch.device) -> Any:
        """Zeros for None; otherwise the state checked against this cell's zero state."""
        template = self.init_state(batch_size, dtype=dtype, device=device)
        if state is None:
            return template
        return coerce_state(state, template, type(self).__name__)

    def _make_parameters(self, rows: int, bias: bool) -> None:
        """Create torch's four recurrent parameters: ``weight_ih`` (rows, I), ``weight_hh``
        (rows, H) and, with ``bias``, ``bias_ih`` and ``bias_hh`` (rows,). Values come from
        ``reset_parameters``."""
        self.weight_ih = nn.Parameter(torch.empty(rows, self.input_size))
        self.weight_hh = nn.Parameter(torch.empty(rows, self.hidden_size))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(rows))
            self.bias_hh = nn.Parameter(torch.empty(rows))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)

    def _dtype_device(self, dtype, device):
        ref_dtype, ref_device = self.reference_dtype_device()
        return dtype or ref_dtype, device or ref_device

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}"
