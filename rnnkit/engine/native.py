"""Native dispatch: run plain Elman, LSTM and GRU layers on torch's own fused RNN kernels.

A cell qualifies when torch's kernel computes exactly its equations, as the cell's structure
says (``CellStructure.torch_kernel``): ``ElmanCell`` (tanh or ReLU; the init does not matter),
``LSTMCell`` with forget gate and no peephole, blocks or clipping (projected or not: torch's
kernel computes ``proj_size``), and ``GRUCell``. Variable lengths go through torch's packed
sequences; a reversed layer reverses each sequence within its length around the forward kernel.

Whole stacks and bidirectional layers of such cells — one kind, one hidden size, bias in all or
none — run as one kernel call with torch's ``num_layers`` and ``bidirectional``
(:func:`native_stack_kind`, :func:`run_native_layers`), as torch.nn.LSTM does, dropout between
layers included.

Symbols: T time, B batch, I input, H hidden, L layers, D directions.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from ..cells import LSTMState, RNNState
from ..cells.base import RecurrentCell

_KERNELS = {
    "lstm": torch._VF.lstm,
    "gru": torch._VF.gru,
    "rnn_tanh": torch._VF.rnn_tanh,
    "rnn_relu": torch._VF.rnn_relu,
}


def native_kind(cell: RecurrentCell) -> str | None:
    """Which torch kernel computes ``cell`` exactly (``"lstm"``, ``"gru"``, ``"rnn_tanh"``,
    ``"rnn_relu"``), or None: the cell's ``structure.torch_kernel``."""
    return cell.structure.torch_kernel


def flat_weights(cell: RecurrentCell) -> list[Tensor]:
    """The cell's parameters in the order torch's kernels take them (torch.nn's ``_flat_weights``
    of one layer and direction): ``weight_ih, weight_hh[, bias_ih, bias_hh][, weight_hr]`` — the
    projection last, for a projected LSTM."""
    params = [cell.weight_ih, cell.weight_hh]
    if cell.bias:
        params += [cell.bias_ih, cell.bias_hh]
    if getattr(cell, "proj_size", 0):
        params.append(cell.weight_hr)
    return params


def native_stack_kind(layer_cells: list[list[RecurrentCell]]) -> str | None:
    """The kernel that runs these layers in one call, or None.

    ``layer_cells[k]`` is layer k's cells: ``[cell]``, or ``[forward, backward]`` for a
    bidirectional layer. One call needs one kernel kind, one hidden size (and one projection
    size), bias in every cell or none, every layer bidirectional or none, and one dtype and device.
    """
    cells = [c for layer in layer_cells for c in layer]
    kinds = {native_kind(c) for c in cells}
    if len(kinds) != 1 or None in kinds:
        return None
    if len({len(layer) for layer in layer_cells}) != 1:
        return None
    if len({(c.hidden_size, c.output_size) for c in cells}) != 1 or len({c.bias for c in cells}) != 1:
        return None
    if len({c.weight_ih.dtype for c in cells}) != 1 or len({c.weight_ih.device for c in cells}) != 1:
        return None
    return kinds.pop()


def run_native_layers(
    layer_cells: list[list[RecurrentCell]],
    x: Tensor,
    states: list[list[Any]],
    lengths: Tensor | None,
    dropout: float,
    training: bool,
) -> tuple[Tensor, list[list[Any]]]:
    """L layers of D directions in one call of torch's kernel (see :func:`native_stack_kind`).

    x (T, B, I) time-major; ``states[k][d]`` the checked initial state of layer k, direction d.
    Dropout with probability ``dropout`` applies to every layer's outputs but the last, in
    training only, as torch.nn does. Returns outputs (T, B, D·P) (P = H but for a projected
    LSTM) and the final states in the structure of ``states``.
    """
    kind = native_kind(layer_cells[0][0])
    lstm = kind == "lstm"
    kernel = _KERNELS[kind]
    cells = [c for layer in layer_cells for c in layer]  # torch's order: l0, l0_reverse, l1, ...
    num_layers, bidirectional = len(layer_cells), len(layer_cells[0]) == 2
    flat = [s for layer in states for s in layer]
    h0 = torch.stack([s.h for s in flat])  # (L·D, B, P): torch reads a projection from h0's width
    hx = (h0, torch.stack([s.c for s in flat])) if lstm else h0
    weights = [w for c in cells for w in flat_weights(c)]
    has_bias = cells[0].bias
    if lengths is None:
        result = kernel(x, hx, weights, has_bias, num_layers, dropout, training, bidirectional, False)
        y, finals = result[0], result[1:]  # (T, B, D·H)
    else:
        packed = pack_padded_sequence(x, lengths.cpu(), enforce_sorted=False)
        order, unorder = packed.sorted_indices, packed.unsorted_indices
        hx = tuple(h.index_select(1, order) for h in hx) if lstm else hx.index_select(1, order)
        result = kernel(
            packed.data, packed.batch_sizes, hx, weights, has_bias, num_layers, dropout, training, bidirectional
        )
        y, _ = pad_packed_sequence(
            PackedSequence(result[0], packed.batch_sizes, order, unorder), total_length=x.shape[0]
        )
        finals = [h.index_select(1, unorder) for h in result[1:]]
    D = len(layer_cells[0])
    out = []
    for k in range(num_layers):
        layer = []
        for d in range(D):
            i = k * D + d
            layer.append(LSTMState(finals[0][i], finals[1][i]) if lstm else RNNState(finals[0][i]))
        out.append(layer)
    return y, out


def run_native(
    cell: RecurrentCell, x: Tensor, state: Any, lengths: Tensor | None, reverse: bool, training: bool
) -> tuple[Tensor, Any]:
    """One layer through torch's kernel. x (T, B, I) time-major; returns (T, B, H) and the final state."""
    from ..recurrent import reverse_padded

    if reverse:
        x = reverse_padded(x, lengths)
    y, finals = run_native_layers([[cell]], x, [[state]], lengths, 0.0, training)
    if reverse:
        y = reverse_padded(y, lengths)
    return y, finals[0][0]
