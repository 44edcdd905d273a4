"""Conversions between rnnkit and torch.nn's recurrent modules.

Parameter names and layouts are torch's (``weight_ih``, ``weight_hh``, ``bias_ih``,
``bias_hh``; gate order i, f, g, o and r, z, n), so a conversion is a rename of each layer's
tensors: torch's ``weight_ih_l{k}`` (``…_reverse`` for the backward direction) is layer k's
``cell.weight_ih``. A projected LSTM (``proj_size=P``) also has ``weight_hr_l{k}``, the
projection of :class:`~rnnkit.cells.LSTMCell` ``(proj_size=P)``.
"""

from __future__ import annotations

import torch
from torch import nn

from .cells import ElmanCell, GRUCell, LSTMCell, RecurrentCell
from .compose import Bidirectional, Stack
from .recurrent import Recurrent

_PARAMS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")  # weight_hr: projected LSTMs only
_MODULES = {"lstm": "LSTM", "gru": "GRU", "rnn_tanh": "RNN", "rnn_relu": "RNN"}  # torch kernel -> torch.nn module


def _cell_like(mode: str, input_size: int, hidden_size: int, bias: bool, proj_size: int = 0) -> RecurrentCell:
    if mode in ("RNN_TANH", "RNN_RELU"):
        return ElmanCell(input_size, hidden_size, bias=bias, nonlinearity="tanh" if mode == "RNN_TANH" else "relu")
    if mode == "LSTM":
        return LSTMCell(input_size, hidden_size, bias=bias, forget_bias=None, proj_size=proj_size)
    if mode == "GRU":
        return GRUCell(input_size, hidden_size, bias=bias)
    raise ValueError(f"from_torch: unknown torch RNN mode {mode!r}")


def _copy_params(dst: nn.Module, src: nn.Module, suffix: str = "") -> None:
    with torch.no_grad():
        for name in _PARAMS:
            target = getattr(dst, name, None)
            if target is not None:
                target.copy_(getattr(src, name + suffix))


def from_torch(module: nn.Module) -> Stack | RecurrentCell:
    """The rnnkit equivalent of a torch.nn recurrent module, with its weights copied.

    * ``nn.RNN``, ``nn.LSTM``, ``nn.GRU`` (any ``num_layers``, ``bidirectional``,
      ``batch_first``, ``bias``, ``dropout``, and an LSTM's ``proj_size``, which becomes
      ``LSTMCell(proj_size=…)``) → a :class:`~rnnkit.Stack` of ``Recurrent`` or
      ``Bidirectional`` layers that computes the same outputs and states; its ``to_torch()``
      gives back an equal torch module.
    * ``nn.RNNCell``, ``nn.LSTMCell``, ``nn.GRUCell`` → the matching rnnkit cell.

    The result has the module's dtype and device.
    """
    cells = {nn.RNNCell: "RNN", nn.LSTMCell: "LSTM", nn.GRUCell: "GRU"}
    if type(module) in cells:
        if isinstance(module, nn.RNNCell):
            mode = "RNN_TANH" if module.nonlinearity == "tanh" else "RNN_RELU"
        else:
            mode = cells[type(module)]
        cell = _cell_like(mode, module.input_size, module.hidden_size, module.bias)
        cell = cell.to(dtype=module.weight_ih.dtype, device=module.weight_ih.device)
        _copy_params(cell, module)
        return cell
    if not isinstance(module, nn.RNNBase):
        raise TypeError(
            f"from_torch: expected torch.nn.RNN, LSTM, GRU or their Cell versions, got {type(module).__name__}"
        )
    proj_size = getattr(module, "proj_size", 0)  # only nn.LSTM has one
    layers = []
    size = module.input_size
    weight = module.weight_ih_l0
    for k in range(module.num_layers):
        fwd = _cell_like(module.mode, size, module.hidden_size, module.bias, proj_size).to(
            dtype=weight.dtype, device=weight.device
        )
        _copy_params(fwd, module, f"_l{k}")
        if module.bidirectional:
            bwd = _cell_like(module.mode, size, module.hidden_size, module.bias, proj_size).to(
                dtype=weight.dtype, device=weight.device
            )
            _copy_params(bwd, module, f"_l{k}_reverse")
            layer = Bidirectional(fwd, bwd, merge="concat", batch_first=module.batch_first)
        else:
            layer = Recurrent(fwd, batch_first=module.batch_first)
        layers.append(layer)
        size = layer.output_size
    return Stack(layers, dropout=module.dropout)


def _torch_mode(cell: RecurrentCell, where: str) -> str:
    """torch.nn's mode for a cell that torch's kernel computes exactly (its structure's
    ``torch_kernel``), else a clear error."""
    s = cell.structure
    if s.torch_kernel is not None:
        return s.torch_kernel.upper()  # "rnn_tanh" -> torch's mode "RNN_TANH"
    name = type(cell).__name__
    if s.kernel_extras:
        raise ValueError(
            f"to_torch: {where} is an {name} with {', '.join(s.kernel_extras)}, "
            f"which torch.nn.{_MODULES[s.kernel_family]} does not compute"
        )
    raise ValueError(f"to_torch: {where} is a {name}, which torch.nn has no module for")


def to_torch(model: Stack | Recurrent | Bidirectional) -> nn.RNNBase:
    """The torch.nn.RNN/LSTM/GRU that computes what ``model`` does, with its weights copied.

    ``model`` is a Stack (or a single layer) of plain Elman, LSTM or GRU cells — all of one
    kind, hidden size and projection size (``LSTMCell(proj_size=P)`` gives
    ``nn.LSTM(proj_size=P)``), with bias on all or none, bidirectional layers merging by concat.
    Anything torch's kernel does not compute is refused with an error naming the layer.
    """
    layers = list(model.layers) if isinstance(model, Stack) else [model]
    dropout = model.dropout if isinstance(model, Stack) else 0.0
    per_layer = []  # (forward cell, backward cell or None)
    for k, layer in enumerate(layers):
        if isinstance(layer, Bidirectional):
            if layer.merge != "concat":
                raise ValueError(f"to_torch: layer {k} merges directions by {layer.merge!r}; torch concatenates")
            per_layer.append((layer.forward_layer.cell, layer.backward_layer.cell))
        elif isinstance(layer, Recurrent):
            if layer.reverse:
                raise ValueError(f"to_torch: layer {k} runs in reverse alone; torch has no such layer")
            per_layer.append((layer.cell, None))
        else:
            raise ValueError(f"to_torch: layer {k} is a {type(layer).__name__}, not a Recurrent or Bidirectional layer")
    bidirectional = {b is not None for _, b in per_layer}
    if len(bidirectional) != 1:
        raise ValueError("to_torch: torch needs every layer bidirectional or none")
    bidirectional = bidirectional.pop()
    cells = [c for pair in per_layer for c in pair if c is not None]
    modes = {_torch_mode(c, f"layer {k // (2 if bidirectional else 1)}") for k, c in enumerate(cells)}
    if len(modes) != 1:
        raise ValueError(f"to_torch: torch needs one cell kind in every layer, got {sorted(modes)}")
    mode = modes.pop()
    hidden = {c.hidden_size for c in cells}
    if len(hidden) != 1:
        raise ValueError(f"to_torch: torch needs one hidden size in every layer, got {sorted(hidden)}")
    projections = {getattr(c, "proj_size", 0) for c in cells}
    if len(projections) != 1:
        raise ValueError(f"to_torch: torch needs one proj_size in every layer, got {sorted(projections)}")
    proj_size = projections.pop()
    biases = {c.bias for c in cells}
    if len(biases) != 1:
        raise ValueError("to_torch: torch needs bias in every layer or in none")
    first = cells[0]
    kwargs = dict(
        input_size=first.input_size,
        hidden_size=first.hidden_size,
        num_layers=len(layers),
        bias=biases.pop(),
        batch_first=layers[0].batch_first,
        dropout=dropout,
        bidirectional=bidirectional,
        dtype=first.weight_ih.dtype,
        device=first.weight_ih.device,
    )
    if mode.startswith("RNN"):
        module = nn.RNN(nonlinearity="tanh" if mode == "RNN_TANH" else "relu", **kwargs)
    elif mode == "LSTM":
        module = nn.LSTM(proj_size=proj_size, **kwargs)
    else:
        module = nn.GRU(**kwargs)
    with torch.no_grad():
        for k, (fwd, bwd) in enumerate(per_layer):
            for suffix, cell in ((f"_l{k}", fwd), (f"_l{k}_reverse", bwd)):
                if cell is None:
                    continue
                for name in _PARAMS:
                    if getattr(cell, name, None) is not None:
                        getattr(module, name + suffix).copy_(getattr(cell, name))
    return module
