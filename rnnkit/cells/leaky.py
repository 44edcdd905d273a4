"""Leaky integration around any cell."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .base import CellStructure, RecurrentCell, check_wrappable
from .state import map_state


def alphas_from_time_constants(hidden_size: int, tau_min: float, tau_max: float) -> Tensor:
    """Per-unit α = 1 − 1/τ with τ spread geometrically over [tau_min, tau_max] (both > 1).

    A leaky unit forgets with time constant τ = 1/(1 − α) steps; spreading τ over a range gives
    the network units at many time scales (Goodfellow et al., *Deep Learning*, §10.9.2).
    """
    if not (isinstance(tau_min, (int, float)) and isinstance(tau_max, (int, float)) and 1 < tau_min <= tau_max):
        raise ValueError(
            f"LeakyCell: tau must be (tau_min, tau_max) with 1 < tau_min ≤ tau_max, got ({tau_min!r}, {tau_max!r})"
        )
    tau = torch.logspace(math.log10(tau_min), math.log10(tau_max), hidden_size, dtype=torch.float64)
    return 1.0 - 1.0 / tau


class LeakyCell(RecurrentCell):
    r"""Leaky units around any cell (Mozer 1992; Goodfellow et al., *Deep Learning*, §10.9.2).

    .. math::
        s(t) = \alpha \odot s(t-1) + (1 - \alpha) \odot \mathrm{cell}(x(t), s(t-1))

    applied to every hidden-sized floating-point field of the wrapped cell's state (h for
    Elman and GRU; h and c for the LSTM); integer fields such as a clockwork's step counter
    pass through. α is per unit, in (0, 1): α → 0 is the plain cell, α → 1 a unit that barely
    moves, with time constant τ = 1/(1 − α).

    α is one of:
        * ``alpha`` — a number or one value per unit, fixed (a buffer);
        * ``tau=(tau_min, tau_max)`` — fixed, τ spread geometrically over the range;
        * either of those with ``learn_alpha=True`` — learned as ``alpha = sigmoid(alpha_logit)``,
          so it stays in (0, 1) whatever the optimiser does; the given value is the start.

    Args:
        cell: the cell to wrap (any rnnkit cell except a SkipCell: wrap the leaky cell in the
            skip cell instead, ``SkipCell(LeakyCell(cell, ...), delay)``).
        alpha: α, a float or a sequence/tensor of H floats in (0, 1).
        learn_alpha: learn α.
        tau: (tau_min, tau_max) instead of alpha.

    Shapes: as the wrapped cell. Parameters: the wrapped cell's as ``cell.*``, plus
    ``alpha_logit`` (H,) when learned; a fixed α is the buffer ``alpha`` (H,).

    Structure (:attr:`structure`): the wrapped cell's under ``cell.``, with ``leak`` =
    ``alpha_values``; no torch kernel.
    """

    def __init__(
        self,
        cell: RecurrentCell,
        alpha: float | Sequence[float] | Tensor | None = None,
        learn_alpha: bool = False,
        *,
        tau: tuple[float, float] | None = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        if not isinstance(cell, RecurrentCell):
            raise TypeError(f"{owner}: cell must be an rnnkit cell, got {type(cell).__name__}")
        check_wrappable(cell, owner)
        from .skip import SkipCell

        if isinstance(cell, SkipCell):
            raise TypeError(
                f"{owner}: cannot wrap a SkipCell (its history would be mixed); use SkipCell(LeakyCell(cell, ...), "
                "delay) instead"
            )
        self.cell = cell
        self.input_size, self.hidden_size = cell.input_size, cell.hidden_size
        self.projection_size = cell.projection_size
        H = self.hidden_size
        if (alpha is None) == (tau is None):
            raise ValueError(f"{owner}: give exactly one of alpha or tau, got alpha={alpha!r}, tau={tau!r}")
        if tau is not None:
            if not isinstance(tau, (tuple, list)) or len(tau) != 2:
                raise ValueError(f"{owner}: tau must be (tau_min, tau_max), got {tau!r}")
            values = alphas_from_time_constants(H, *tau)
        else:
            values = torch.as_tensor(alpha, dtype=torch.float64).flatten()
            if values.numel() == 1:
                values = values.expand(H).clone()
            if values.numel() != H:
                raise ValueError(f"{owner}: alpha must be one number or hidden_size={H} numbers, got {values.numel()}")
        if not bool(((values > 0) & (values < 1)).all()):
            bad = values[~((values > 0) & (values < 1))][0].item()
            raise ValueError(f"{owner}: alpha must lie in the open interval (0, 1), got {bad}")
        dtype, _ = cell.reference_dtype_device()
        self.learn_alpha = bool(learn_alpha)
        if learn_alpha:
            self.alpha_logit = nn.Parameter(torch.logit(values).to(dtype))
        else:
            self.register_buffer("alpha", values.to(dtype))

    @property
    def alpha_values(self) -> Tensor:
        """α per unit, (H,)."""
        return torch.sigmoid(self.alpha_logit) if self.learn_alpha else self.alpha

    @property
    def time_constants(self) -> Tensor:
        """Each unit's time constant τ = 1/(1 − α), (H,) — how many steps it takes to forget."""
        return 1.0 / (1.0 - self.alpha_values.detach())

    @property
    def structure(self) -> CellStructure:
        """The wrapped cell's structure under ``cell.``, leaking by ``alpha_values``."""
        return self._wrapper_structure(leak="alpha_values")

    def init_state(self, batch_size, *, dtype=None, device=None) -> Any:
        return self.cell.init_state(batch_size, dtype=dtype, device=device)

    def input_projection(self, x: Tensor) -> Tensor:
        return self.cell.input_projection(x)

    def recurrence(self, gi: Tensor, state: Any) -> tuple[Tensor, Any]:
        _, new = self.cell.recurrence(gi, state)
        alpha = self.alpha_values
        H = self.hidden_size

        def leak(n: Tensor, old: Tensor) -> Tensor:
            if n.is_floating_point() and n.shape[-1] == H:
                return alpha * old + (1 - alpha) * n  # s = α s(t-1) + (1-α) cell(x, s(t-1))
            return n

        new = map_state(leak, new, state)
        return self.cell.output_of(new), new

    def output_of(self, state: Any) -> Tensor:
        return self.cell.output_of(state)

    def extra_repr(self) -> str:
        return f"learn_alpha={self.learn_alpha}"
