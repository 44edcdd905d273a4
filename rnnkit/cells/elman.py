"""The Elman (simple) recurrent cell."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import CellStructure, RecurrentCell, check_choice, check_size, uniform_
from .state import RNNState

ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu}


class ElmanCell(RecurrentCell):
    r"""Elman recurrent cell (Elman 1990; Goodfellow et al., *Deep Learning*, eq. 10.8–10.9).

    .. math::
        a(t) = b + W h(t-1) + U x(t), \qquad h(t) = \phi(a(t)),\quad \phi \in \{\tanh, \mathrm{ReLU}\}

    In the code's symbols: ``U = weight_ih`` (H, I), ``W = weight_hh`` (H, H),
    ``b = bias_ih + bias_hh`` (two biases, as torch.nn.RNNCell keeps them, so its state_dicts
    load unchanged). The output is h(t).

    Initialisations (``init``):
        * ``"default"`` — torch.nn's: every parameter from U(−1/√H, 1/√H);
        * ``"orthogonal"`` — W a random orthogonal matrix (all eigenvalues on the unit circle),
          the rest as default;
        * ``"identity"`` — W = ``gain`` · I and b = 0: the IRNN of Le, Jaitly & Hinton (2015),
          "A Simple Way to Initialize Recurrent Networks of Rectified Linear Units", which keeps
          gradients from vanishing at the start of training (use with ``nonlinearity="relu"``).

    Args:
        input_size: I.
        hidden_size: H.
        bias: if False, no ``bias_ih``/``bias_hh``.
        nonlinearity: ``"tanh"`` or ``"relu"``.
        init: ``"default"``, ``"orthogonal"`` or ``"identity"``.
        gain: the scale of W for ``"orthogonal"`` and ``"identity"``.

    Shapes: x (B, I); state ``RNNState(h)`` with h (B, H); output (B, H).

    Structure (:attr:`structure`): one gate block ``a``; recurrent matrix ``weight_hh``; torch
    kernel ``"rnn_tanh"`` or ``"rnn_relu"`` (torch.nn.RNN computes it exactly, whatever the init).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        nonlinearity: str = "tanh",
        init: str = "default",
        gain: float = 1.0,
    ) -> None:
        super().__init__()
        self.input_size = check_size(input_size, "input_size", type(self).__name__)
        self.hidden_size = check_size(hidden_size, "hidden_size", type(self).__name__)
        self.projection_size = self.hidden_size
        self.nonlinearity = check_choice(nonlinearity, "nonlinearity", type(self).__name__, tuple(ACTIVATIONS))
        self.init = check_choice(init, "init", type(self).__name__, ("default", "orthogonal", "identity"))
        self.gain = float(gain)
        self.bias = bool(bias)
        self._make_parameters(self.hidden_size, bias)  # U = weight_ih, W = weight_hh
        self.reset_parameters()

    def reset_parameters(self) -> None:
        uniform_(list(self.parameters()), self.hidden_size)
        with torch.no_grad():
            if self.init == "orthogonal":
                nn.init.orthogonal_(self.weight_hh, gain=self.gain)
            elif self.init == "identity":
                self.weight_hh.copy_(self.gain * torch.eye(self.hidden_size))
                if self.bias:
                    self.bias_ih.zero_()
                    self.bias_hh.zero_()

    def init_state(self, batch_size, *, dtype=None, device=None) -> RNNState:
        dtype, device = self._dtype_device(dtype, device)
        return RNNState(torch.zeros(batch_size, self.hidden_size, dtype=dtype, device=device))

    def input_projection(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight_ih, self.bias_ih)  # U x + b_ih

    def recurrence(self, gi: Tensor, state: RNNState) -> tuple[Tensor, RNNState]:
        a = gi + F.linear(state.h, self.weight_hh, self.bias_hh)  # a = b + W h(t-1) + U x(t)
        h = ACTIVATIONS[self.nonlinearity](a)
        return h, RNNState(h)

    @property
    def structure(self) -> CellStructure:
        """One gate ``a``, matrix ``weight_hh``, state ``(h,)``, torch's ``rnn_tanh``/``rnn_relu`` kernel."""
        kernel = "rnn_" + self.nonlinearity if self._computes_step_of(ElmanCell) else None
        return CellStructure(
            gates=(("a", slice(0, self.hidden_size)),),
            recurrent_matrices=("weight_hh",),
            state_fields=RNNState._fields,
            torch_kernel=kernel,
            nonlinearities=("a",),
        )

    def extra_repr(self) -> str:
        sizes = f"{self.input_size}, {self.hidden_size}"
        return f"{sizes}, nonlinearity={self.nonlinearity!r}, init={self.init!r}, bias={self.bias}"
