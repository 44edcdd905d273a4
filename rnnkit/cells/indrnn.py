"""The independently recurrent neural network: one recurrent weight per unit."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import RecurrentCell, check_choice, check_size, uniform_
from .elman import ACTIVATIONS
from .state import RNNState


class IndRNNCell(RecurrentCell):
    r"""Independently recurrent neural network, IndRNN (Li, Li, Cook, Zhu & Gao 2018,
    "Independently Recurrent Neural Network (IndRNN): Building A Longer and Deeper RNN").

    .. math::
        h' = \phi(W x + u \odot h + b), \qquad \phi \in \{\mathrm{ReLU}, \tanh\}

    Each unit reads only its own past, through one weight :math:`u_j`: the recurrent matrix of
    the Elman cell becomes the diagonal ``diag(u)``. Units of one layer are independent of each
    other; they mix across layers (stack several). Over k steps a unit's gradient scales by
    :math:`u_j^k` (times φ's derivative), so bounding :math:`|u_j|` keeps it from exploding: Li et al.
    bound :math:`|u_j| \le \gamma^{1/T}` for sequences of T steps, with γ the largest growth
    they allow (their code uses γ = 2 or 10).

    Options:
        * ``recurrent_init=(low, high)`` — u starts from U(low, high); the default (0, 1) is Li
          et al.'s initialisation for ReLU units, which gives the units a spread of memory
          lengths. (1 − ε, 1 + ε) is their choice for a last layer whose final step alone is
          read.
        * ``recurrent_max_abs=m`` — the step uses ``clamp(u, −m, m)`` in place of u, so
          :math:`|u_j| \le m` holds whatever the optimiser does (e.g. m = 2^{1/T}). A stored
          :math:`u_j` outside [−m, m] gets no gradient;
          :meth:`~rnnkit.cells.indrnn.IndRNNCell.clamp_recurrent_weight_` projects u into the range,
          as Li et al. do after each update.

    Parameters (u takes the place of the Elman cell's matrix, under its name):
        * ``weight_ih`` (H, I): W, from U(−1/√H, 1/√H) (torch's init)
        * ``weight_hh`` (H,): u, from ``recurrent_init`` (clamped to ±m if m is given)
        * ``bias_ih``, ``bias_hh`` (H,): b = ``bias_ih + bias_hh``, as ElmanCell, from U(−1/√H, 1/√H)

    Args:
        input_size: I.
        hidden_size: H.
        bias: if False, no biases.
        nonlinearity: ``"relu"`` (the paper's) or ``"tanh"``.
        recurrent_init: ``(low, high)``, low < high, the range of u's uniform initialisation.
        recurrent_max_abs: m > 0 bounding :math:`|u_j|` in the step, or None for no bound.

    Shapes: x (B, I); state ``RNNState(h)`` with h (B, H); output h' (B, H).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        nonlinearity: str = "relu",
        *,
        recurrent_init: tuple[float, float] = (0.0, 1.0),
        recurrent_max_abs: float | None = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.input_size = check_size(input_size, "input_size", owner)
        self.hidden_size = H = check_size(hidden_size, "hidden_size", owner)
        self.projection_size = H
        self.nonlinearity = check_choice(nonlinearity, "nonlinearity", owner, tuple(ACTIVATIONS))
        self.bias = bool(bias)
        self.recurrent_init = _check_range(recurrent_init, owner)
        if recurrent_max_abs is not None:
            m = recurrent_max_abs
            if isinstance(m, bool) or not isinstance(m, (int, float)) or not (0 < m < math.inf):
                raise ValueError(f"{owner}: recurrent_max_abs must be a finite number > 0 or None, got {m!r}")
            recurrent_max_abs = float(m)
        self.recurrent_max_abs = recurrent_max_abs
        self.weight_ih = nn.Parameter(torch.empty(H, self.input_size))
        self.weight_hh = nn.Parameter(torch.empty(H))  # u: one recurrent weight per unit
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(H))
            self.bias_hh = nn.Parameter(torch.empty(H))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        uniform_([p for p in self.parameters() if p is not self.weight_hh], self.hidden_size)
        low, high = self.recurrent_init
        with torch.no_grad():
            self.weight_hh.uniform_(low, high)
        if self.recurrent_max_abs is not None:
            self.clamp_recurrent_weight_()

    def clamp_recurrent_weight_(self) -> None:
        """Project u into [−m, m] in place (m = ``recurrent_max_abs``); call it after optimiser
        steps to keep every unit's recurrent weight learning. Does nothing without m."""
        if self.recurrent_max_abs is None:
            return
        m = self.recurrent_max_abs
        with torch.no_grad():
            self.weight_hh.clamp_(-m, m)

    def init_state(self, batch_size, *, dtype=None, device=None) -> RNNState:
        dtype, device = self._dtype_device(dtype, device)
        return RNNState(torch.zeros(batch_size, self.hidden_size, dtype=dtype, device=device))

    def input_projection(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight_ih, self.bias_ih)  # W x + b_ih, (..., H)

    def recurrence(self, gi: Tensor, state: RNNState) -> tuple[Tensor, RNNState]:
        u = self.weight_hh
        if self.recurrent_max_abs is not None:
            u = u.clamp(-self.recurrent_max_abs, self.recurrent_max_abs)
        a = gi + u * state.h  # (B, H)
        if self.bias_hh is not None:
            a = a + self.bias_hh
        h = ACTIVATIONS[self.nonlinearity](a)
        return h, RNNState(h)

    def extra_repr(self) -> str:
        opts = [f"{self.input_size}, {self.hidden_size}", f"nonlinearity={self.nonlinearity!r}"]
        if self.recurrent_init != (0.0, 1.0):
            opts.append(f"recurrent_init={self.recurrent_init}")
        if self.recurrent_max_abs is not None:
            opts.append(f"recurrent_max_abs={self.recurrent_max_abs}")
        if not self.bias:
            opts.append("bias=False")
        return ", ".join(opts)


def _check_range(value, owner: str) -> tuple[float, float]:
    """``recurrent_init`` as a (low, high) pair of finite floats with low < high."""
    ok = (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) for v in value)
    )
    if not ok or not value[0] < value[1]:
        raise ValueError(
            f"{owner}: recurrent_init must be a pair (low, high) of finite numbers with low < high, got {value!r}"
        )
    return float(value[0]), float(value[1])
