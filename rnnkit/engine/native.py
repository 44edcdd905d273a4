"""Native dispatch: run plain Elman, LSTM and GRU layers on torch's own fused RNN kernels.

A cell qualifies when torch's kernel computes exactly its equations: ``ElmanCell`` (tanh or
ReLU; the init does not matter), ``LSTMCell`` with forget gate and no peephole, blocks or
clipping, and ``GRUCell``. Variable lengths go through torch's packed sequences; a reversed
layer reverses each sequence within its length around the forward kernel.

Symbols: T time, B batch, I input, H hidden.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from ..cells import ElmanCell, GRUCell, LSTMCell, LSTMState, RNNState
from ..cells.base import RecurrentCell

_KERNELS = {"lstm": torch._VF.lstm, "gru": torch._VF.gru, "rnn_tanh": torch._VF.rnn_tanh, "rnn_relu": torch._VF.rnn_relu}


def lstm_extras(cell: LSTMCell) -> list[str]:
    """The options of an LSTMCell that torch's LSTM kernel does not compute, as written in code."""
    options = (
        ("forget_gate=False", not cell.forget_gate),
        ("peephole=True", cell.peephole),
        (f"block_size={cell.block_size}", cell.block_size != 1),
        (f"cell_clip={cell.cell_clip}", cell.cell_clip is not None),
    )
    return [name for name, on in options if on]


def native_kind(cell: RecurrentCell) -> str | None:
    """Which torch kernel computes ``cell`` exactly (``"lstm"``, ``"gru"``, ``"rnn_tanh"``, ``"rnn_relu"``), or None."""
    if type(cell) is ElmanCell:
        return "rnn_" + cell.nonlinearity
    if type(cell) is GRUCell:
        return "gru"
    if type(cell) is LSTMCell and not lstm_extras(cell):
        return "lstm"
    return None


def flat_weights(cell: RecurrentCell) -> list[Tensor]:
    """The cell's parameters in the order torch's kernels take them."""
    params = [cell.weight_ih, cell.weight_hh]
    if cell.bias:
        params += [cell.bias_ih, cell.bias_hh]
    return params


def run_native(cell: RecurrentCell, x: Tensor, state: Any, lengths: Tensor | None, reverse: bool, training: bool) -> tuple[Tensor, Any]:
    """One layer through torch's kernel. x (T, B, I) time-major; returns (T, B, H) and the final state."""
    from ..recurrent import reverse_padded

    kind = native_kind(cell)
    lstm = kind == "lstm"
    kernel = _KERNELS[kind]
    hx = (state.h.unsqueeze(0), state.c.unsqueeze(0)) if lstm else state.h.unsqueeze(0)  # (1, B, H)
    weights = flat_weights(cell)
    if reverse:
        x = reverse_padded(x, lengths)
    if lengths is None:
        result = kernel(x, hx, weights, cell.bias, 1, 0.0, training, False, False)
        y = result[0]  # (T, B, H)
        finals = result[1:]
    else:
        packed = pack_padded_sequence(x, lengths.cpu(), enforce_sorted=False)
        order, unorder = packed.sorted_indices, packed.unsorted_indices
        hx = tuple(h.index_select(1, order) for h in hx) if lstm else hx.index_select(1, order)
        result = kernel(packed.data, packed.batch_sizes, hx, weights, cell.bias, 1, 0.0, training, False)
        y, _ = pad_packed_sequence(PackedSequence(result[0], packed.batch_sizes, order, unorder), total_length=x.shape[0])
        finals = [h.index_select(1, unorder) for h in result[1:]]
    if reverse:
        y = reverse_padded(y, lengths)
    if lstm:
        return y, LSTMState(finals[0][0], finals[1][0])
    return y, RNNState(finals[0][0])
