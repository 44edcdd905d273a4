r"""The cell that ``docs/guides/custom_cell.md`` writes, kept here so that the guide and
``rnnkit bench`` (its ``guide-cho-gru`` row) time the same code.

It is deliberately *not* a zoo cell: it is not in ``rnnkit.cells.registry.CELLS``, describes
no :class:`~rnnkit.cells.base.CellStructure` of its own and is written the way a user writes a
cell — ``input_projection`` and ``recurrence`` in plain PyTorch, nothing registered anywhere. The
fused engine runs it because its step uses only operations :mod:`rnnkit.engine.trace` compiles.

Symbols: B batch, I input, H hidden.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cells import RecurrentCell, RNNState

__all__ = ["ChoGRUCell"]


class ChoGRUCell(RecurrentCell):
    r"""The GRU as Cho et al. (2014) first wrote it, "Learning Phrase Representations using RNN
    Encoder–Decoder for Statistical Machine Translation", eqs. (5)–(8): the reset gate acts on
    h *before* the recurrent product.

    .. math::
        r &= \sigma(W_r x + U_r h + b_r) \\
        z &= \sigma(W_z x + U_z h + b_z) \\
        \tilde h &= \tanh(W_n x + U_n (r \odot h) + b_n) \\
        h' &= z \odot h + (1 - z) \odot \tilde h

    torch's and cuDNN's GRU (:class:`rnnkit.cells.GRUCell`) compute r ⊙ (U_n h + b) instead, so
    one product with the whole ``weight_hh`` serves all three blocks; here U_n must wait for r,
    and the step makes two products: (U_r | U_z) h, then U_n (r ⊙ h). No torch kernel computes
    this cell.

    Parameters (blocks r, z, n, stacked as torch.nn stacks gates), all from U(−1/√H, 1/√H):
        * ``weight_ih`` (3H, I) ``[W_r | W_z | W_n]``, ``weight_hh`` (3H, H) ``[U_r | U_z | U_n]``
        * ``bias_ih`` (3H,) ``[b_r | b_z | b_n]``: one bias, in the input projection

    Shapes: x (B, I); state ``RNNState(h)`` with h (B, H); output h' (B, H).
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.projection_size = 3 * hidden_size  # gi = (W_r x + b_r | W_z x + b_z | W_n x + b_n)
        self.weight_ih = nn.Parameter(torch.empty(3 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(3 * hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(3 * hidden_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def init_state(self, batch_size, *, dtype=None, device=None) -> RNNState:
        w = self.weight_hh
        return RNNState(torch.zeros(batch_size, self.hidden_size, dtype=dtype or w.dtype, device=device or w.device))

    def input_projection(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight_ih, self.bias_ih)  # (..., 3H), all steps at once

    def recurrence(self, gi: Tensor, state: RNNState) -> tuple[Tensor, RNNState]:
        h, H = state.h, self.hidden_size  # h (B, H)
        gi_rz, gi_n = gi[:, : 2 * H], gi[:, 2 * H :]  # (B, 2H), (B, H)
        U_rz, U_n = self.weight_hh[: 2 * H], self.weight_hh[2 * H :]  # (2H, H), (H, H)
        r, z = torch.sigmoid(gi_rz + F.linear(h, U_rz)).chunk(2, dim=-1)  # (B, H) each
        h_tilde = torch.tanh(gi_n + F.linear(r * h, U_n))
        h = z * h + (1 - z) * h_tilde
        return h, RNNState(h)
