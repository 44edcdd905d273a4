"""The gated recurrent unit."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import CellStructure, RecurrentCell, check_size, uniform_
from .lstm import set_gate_bias
from .state import RNNState


class GRUCell(RecurrentCell):
    r"""Gated recurrent unit (Cho et al. 2014), in torch.nn.GRUCell's formulation.

    .. math::
        r &= \sigma(W_{ir} x + b_{ir} + W_{hr} h + b_{hr}) \\
        z &= \sigma(W_{iz} x + b_{iz} + W_{hz} h + b_{hz}) \\
        n &= \tanh(W_{in} x + b_{in} + r \odot (W_{hn} h + b_{hn})) \\
        h' &= (1 - z) \odot n + z \odot h

    The reset gate r multiplies the *projected* previous state (torch's and cuDNN's form, so
    weights interoperate with torch.nn.GRU); z decides how much of h is kept.

    Parameters (gate order r, z, n):
        * ``weight_ih`` (3H, I) ``[W_ir | W_iz | W_in]``, ``weight_hh`` (3H, H) ``[W_hr | W_hz | W_hn]``
        * ``bias_ih``, ``bias_hh`` (3H,)

    All from U(−1/√H, 1/√H). ``forget_bias``, if given, sets the effective bias of z — the gate
    that keeps the past, as the LSTM's forget gate does — to that value (``None``: torch's init).

    Shapes: x (B, I); state ``RNNState(h)`` with h (B, H); output h' (B, H).

    Structure (:attr:`structure`): gates ``r, z, n`` of H rows each, z the gate that keeps the
    past; recurrent matrix ``weight_hh``; torch kernel ``"gru"``.
    """

    def __init__(
        self, input_size: int, hidden_size: int, bias: bool = True, *, forget_bias: float | None = None
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.input_size = check_size(input_size, "input_size", owner)
        self.hidden_size = H = check_size(hidden_size, "hidden_size", owner)
        self.projection_size = 3 * H
        self.bias = bool(bias)
        self.forget_bias = forget_bias
        self._make_parameters(3 * H, bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        uniform_(list(self.parameters()), self.hidden_size)
        if self.forget_bias is not None:
            H = self.hidden_size
            set_gate_bias(self, H, 2 * H, self.forget_bias)

    def init_state(self, batch_size, *, dtype=None, device=None) -> RNNState:
        dtype, device = self._dtype_device(dtype, device)
        return RNNState(torch.zeros(batch_size, self.hidden_size, dtype=dtype, device=device))

    def input_projection(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight_ih, self.bias_ih)

    def recurrence(self, gi: Tensor, state: RNNState) -> tuple[Tensor, RNNState]:
        h = state.h
        gh = F.linear(h, self.weight_hh, self.bias_hh)  # (B, 3H)
        gi_r, gi_z, gi_n = gi.chunk(3, dim=-1)
        gh_r, gh_z, gh_n = gh.chunk(3, dim=-1)
        r = torch.sigmoid(gi_r + gh_r)
        z = torch.sigmoid(gi_z + gh_z)
        n = torch.tanh(gi_n + r * gh_n)
        h = (1 - z) * n + z * h
        return h, RNNState(h)

    @property
    def structure(self) -> CellStructure:
        """Gates ``r, z, n`` (z keeps the past), matrix ``weight_hh``, state ``(h,)``, torch's ``gru`` kernel."""
        H = self.hidden_size
        return CellStructure(
            gates=(("r", slice(0, H)), ("z", slice(H, 2 * H)), ("n", slice(2 * H, 3 * H))),
            recurrent_matrices=("weight_hh",),
            state_fields=RNNState._fields,
            torch_kernel="gru" if self._computes_step_of(GRUCell) else None,
            keep_gate="z",
            nonlinearities=("r", "z", "n"),
        )

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}" + ("" if self.bias else ", bias=False")
