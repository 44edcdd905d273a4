"""The minimal gated unit: one gate."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import RecurrentCell, check_size, uniform_
from .state import RNNState


class MGUCell(RecurrentCell):
    r"""Minimal gated unit (Zhou, Wu, Zhang & Zhou 2016, "Minimal gated unit for recurrent neural
    networks"), as the paper writes it: one forget gate f, which both resets the past before the
    candidate reads it and mixes the candidate in.

    .. math::
        f &= \sigma(W_f x + U_f h + b_f) \\
        \tilde h &= \tanh(W_h x + U_h (f \odot h) + b_h) \\
        h' &= (1 - f) \odot h + f \odot \tilde h

    The candidate's recurrent product reads f ⊙ h, not h, so it can only start once f is known:
    the step makes two matrix products with the state, one per recurrent matrix.

    Parameters (blocks in the order f, h̃, stacked as torch.nn stacks gates):
        * ``weight_ih`` (2H, I) ``[W_f | W_h]``, ``weight_hh`` (2H, H) ``[U_f | U_h]``
        * ``bias_ih`` (2H,) ``[b_f | b_h]``

    The two row blocks of ``weight_hh`` enter two separate products, U_f with h and U_h with
    f ⊙ h. There is one bias, the paper's b: it sits in the input projection, so the time loop
    never adds it (torch's second bias exists for cuDNN's layout, which has no MGU). All start
    from U(−1/√H, 1/√H), torch's init (the paper states none).

    Args:
        input_size: I.
        hidden_size: H.
        bias: if False, no b.

    Shapes: x (B, I); state ``RNNState(h)`` with h (B, H); output h' (B, H).
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True) -> None:
        super().__init__()
        owner = type(self).__name__
        self.input_size = check_size(input_size, "input_size", owner)
        self.hidden_size = H = check_size(hidden_size, "hidden_size", owner)
        self.projection_size = 2 * H  # gi = (W_f x + b_f | W_h x + b_h)
        self.bias = bool(bias)
        self.weight_ih = nn.Parameter(torch.empty(2 * H, self.input_size))
        self.weight_hh = nn.Parameter(torch.empty(2 * H, H))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(2 * H))
        else:
            self.register_parameter("bias_ih", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        uniform_(list(self.parameters()), self.hidden_size)

    def init_state(self, batch_size, *, dtype=None, device=None) -> RNNState:
        dtype, device = self._dtype_device(dtype, device)
        return RNNState(torch.zeros(batch_size, self.hidden_size, dtype=dtype, device=device))

    def input_projection(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight_ih, self.bias_ih)  # (..., 2H)

    def recurrence(self, gi: Tensor, state: RNNState) -> tuple[Tensor, RNNState]:
        h = state.h
        gi_f, gi_h = gi.chunk(2, dim=-1)  # (B, H) each
        U_f, U_h = self.weight_hh.chunk(2, dim=0)  # (H, H) each
        f = torch.sigmoid(gi_f + F.linear(h, U_f))
        h_tilde = torch.tanh(gi_h + F.linear(f * h, U_h))
        h = (1 - f) * h + f * h_tilde
        return h, RNNState(h)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}" + ("" if self.bias else ", bias=False")
