"""The LSTM with coupled input and forget gates."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import RecurrentCell, check_size, uniform_
from .layernorm import check_bias_value
from .lstm import DEFAULT_FORGET_BIAS, set_gate_bias
from .state import LSTMState


class CIFGLSTMCell(RecurrentCell):
    r"""LSTM with coupled input and forget gates, CIFG (Greff, Srivastava, Koutník, Steunebrink &
    Schmidhuber 2017, "LSTM: A Search Space Odyssey"): no input gate of its own, i = 1 − f, so
    the cell writes exactly as much as it forgets.

    .. math::
        f &= \sigma(W_{if} x + W_{hf} h + b_f + p_f \odot c) \\
        g &= \tanh(W_{ig} x + W_{hg} h + b_g) \\
        c' &= f \odot c + (1 - f) \odot g \\
        o &= \sigma(W_{io} x + W_{ho} h + b_o + p_o \odot c') \\
        h' &= o \odot \tanh(c')

    The p terms are zero unless ``peephole=True``. Greff et al. derive CIFG from their vanilla
    LSTM, which has peepholes: their exact variant is ``peephole=True`` (the input gate's
    peephole goes with the input gate). The default has none, as LSTMCell's default has none.

    Parameters (gate order f, g, o: torch's i, f, g, o without i):
        * ``weight_ih`` (3H, I) ``[W_if | W_ig | W_io]``, ``weight_hh`` (3H, H) ``[W_hf | W_hg | W_ho]``
        * ``bias_ih``, ``bias_hh`` (3H,): b = ``bias_ih + bias_hh`` (two, as torch.nn keeps them)
        * with ``peephole=True``: ``weight_cf``, ``weight_co`` (H,), the peepholes p_f, p_o

    All start from U(−1/√H, 1/√H) (torch's init); then the forget gate's effective bias is set to
    ``forget_bias`` (1.0 by default, as LSTMCell does: the cell starts keeping σ(1) ≈ 0.73 of c
    and writing 0.27 of g; ``None`` keeps torch's random bias).

    Args:
        input_size: I.
        hidden_size: H.
        bias: if False, no biases.
        peephole: add the peephole weights p_f, p_o.
        forget_bias: the initial effective forget-gate bias, or None.

    Shapes: x (B, I); state ``LSTMState(h, c)`` with h, c (B, H); output h' (B, H).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        *,
        peephole: bool = False,
        forget_bias: float | None = DEFAULT_FORGET_BIAS,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.input_size = check_size(input_size, "input_size", owner)
        self.hidden_size = H = check_size(hidden_size, "hidden_size", owner)
        self.projection_size = 3 * H
        self.bias = bool(bias)
        self.peephole = bool(peephole)
        if not bias and forget_bias == DEFAULT_FORGET_BIAS:
            forget_bias = None  # the default has nothing to set
        self.forget_bias = check_bias_value(forget_bias, "forget_bias", owner, self.bias)
        self._make_parameters(3 * H, bias)
        if peephole:
            self.weight_cf = nn.Parameter(torch.empty(H))
            self.weight_co = nn.Parameter(torch.empty(H))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        uniform_(list(self.parameters()), self.hidden_size)
        if self.forget_bias is not None:
            set_gate_bias(self, 0, self.hidden_size, self.forget_bias)

    def init_state(self, batch_size, *, dtype=None, device=None) -> LSTMState:
        dtype, device = self._dtype_device(dtype, device)
        zeros = torch.zeros(batch_size, self.hidden_size, dtype=dtype, device=device)
        return LSTMState(zeros, zeros.clone())

    def input_projection(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight_ih, self.bias_ih)  # (..., 3H)

    def recurrence(self, gi: Tensor, state: LSTMState) -> tuple[Tensor, LSTMState]:
        h, c = state
        gates = gi + F.linear(h, self.weight_hh, self.bias_hh)  # (B, 3H)
        f, g, o = gates.chunk(3, dim=-1)  # (B, H) each
        if self.peephole:
            f = f + self.weight_cf * c
        f = torch.sigmoid(f)
        c = f * c + (1 - f) * torch.tanh(g)  # i = 1 − f
        if self.peephole:
            o = o + self.weight_co * c
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, LSTMState(h, c)

    def extra_repr(self) -> str:
        opts = [f"{self.input_size}, {self.hidden_size}"]
        if self.peephole:
            opts.append("peephole=True")
        if not self.bias:
            opts.append("bias=False")
        return ", ".join(opts)
