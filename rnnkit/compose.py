"""Layers composed from ``Recurrent``: both directions over one input, and stacks of layers.

Symbols used in shapes: T time steps, B batch, I input size, H hidden size, D directions.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from .cells.base import RecurrentCell, check_choice, check_size, from_torch_hint
from .cells.state import is_state
from .engine.choose import last_engines, stack_may_run_native, summarize_engines
from .engine.native import native_stack_kind, run_native_layers
from .recurrent import Recurrent, check_lengths, repack_output, unpack_input


def _native_eligible(layer: Recurrent) -> bool:
    """Whether a Recurrent layer lets a stack run it on torch's kernel: engine "auto" or "native"."""
    return type(layer) is Recurrent and layer.engine in ("auto", "native")


def _layer_cells(layers: Sequence[nn.Module], x: Any, lengths: Any) -> list[list[RecurrentCell]] | None:
    """Each layer's cells, ``[cell]`` or ``[forward, backward]``, if the layers should run as one
    native call (see :func:`rnnkit.engine.native.native_stack_kind`); else None.

    With lengths on the CPU, layers left on engine "auto" run one by one instead, each on the
    fused engine, which masks for free where torch's CPU kernels would take a slow
    packed-sequence path (see :func:`rnnkit.engine.choose.beats_native_with_lengths`).
    """
    if not stack_may_run_native([layer.engine for layer in _recurrent_layers(layers)], lengths, x):
        return None
    if lengths is not None and torch.compiler.is_exporting():
        return None  # torch's kernels take lengths packed, by their values: export runs each layer's reference loop
    out = []
    for layer in layers:
        if isinstance(layer, Recurrent):
            if layer.reverse or not _native_eligible(layer):
                return None
            out.append([layer.cell])
        elif isinstance(layer, Bidirectional):
            if not (_native_eligible(layer.forward_layer) and _native_eligible(layer.backward_layer)):
                return None
            out.append([layer.forward_layer.cell, layer.backward_layer.cell])
        else:
            return None
    if native_stack_kind(out) is None:
        return None
    return out


def _checked_lengths(owner: str, x: Any, lengths: Any, batch_first: bool) -> Any:
    """``lengths`` checked against x once, naming the module the user called (not one of its
    layers); left as given when x itself is malformed, for the layer's own check to report."""
    if lengths is None or not isinstance(x, Tensor) or x.dim() != 3:
        return lengths
    T, B = (x.shape[1], x.shape[0]) if batch_first else (x.shape[0], x.shape[1])
    return check_lengths(lengths, B, T, x.device, owner)


def _check_pair_state(owner: str, state: Any) -> tuple:
    """A bidirectional layer's state as (forward, backward): None → (None, None).

    A plain pair is accepted; a NamedTuple other than BidirectionalState (an ``LSTMState(h, c)``
    is also a pair) is refused, since reading its fields as two directions is never meant.
    """
    if state is None:
        return (None, None)
    wrong_kind = is_state(state) and type(state) is not BidirectionalState
    if not (isinstance(state, (tuple, list)) and len(state) == 2) or wrong_kind:
        got = (
            type(state).__name__
            if not isinstance(state, (tuple, list)) or wrong_kind
            else f"{type(state).__name__} of length {len(state)}"
        )
        raise TypeError(
            f"{owner}: a bidirectional layer's state must be BidirectionalState(forward, backward), got {got}"
        )
    return tuple(state)


def _recurrent_layers(layers: Sequence[nn.Module]) -> list[Recurrent]:
    out = []
    for layer in layers:
        out.extend([layer.forward_layer, layer.backward_layer] if isinstance(layer, Bidirectional) else [layer])
    return out


def _run_native(
    owner: str, layer_cells, x: Tensor, states: list, lengths: Any, batch_first: bool, dropout: float, training: bool
):
    """Check the arguments as the layers would, run the whole thing in one native call.

    ``states[k]`` is layer k's state as the user gave it (None, a cell state, or a pair for a
    bidirectional layer). Returns outputs (T, B, D·H) — (B, T, D·H) if batch_first — and the
    final states as ``[[state] or [forward, backward]]`` per layer.
    """
    first = layer_cells[0][0]
    first.check_input(x, expected_dim=3, layout="(B, T, I)" if batch_first else "(T, B, I)")
    if batch_first:
        x = x.transpose(0, 1)  # (T, B, I)
    T, B = x.shape[0], x.shape[1]
    lengths = check_lengths(lengths, B, T, x.device, owner)
    if T == 0:
        raise ValueError(f"{owner}: x has no time steps (shape {tuple(x.shape)})")
    checked = []
    for cells, state in zip(layer_cells, states):
        if len(cells) == 2:
            state = _check_pair_state(owner, state)
        else:
            state = (state,)
        checked.append([c.prepare_state(s, B, x.dtype, x.device) for c, s in zip(cells, state)])
    y, finals = run_native_layers(layer_cells, x, checked, lengths, dropout, training)
    if batch_first:
        y = y.transpose(0, 1)  # (B, T, D·H)
    return y, finals


class BidirectionalState(NamedTuple):
    """Final states of a bidirectional layer: the forward run's and the backward run's."""

    forward: Any
    backward: Any


class Bidirectional(nn.Module):
    r"""Two recurrent layers over the same input, one forward in time and one backward
    (Schuster & Paliwal 1997; Goodfellow et al., *Deep Learning*, §10.3).

    .. math::
        h(t) = \mathrm{cell}_f(x(t), h(t-1)), \qquad g(t) = \mathrm{cell}_b(x(t), g(t+1)), \qquad
        y(t) = [h(t); g(t)] \ \text{(concat)} \ \text{or} \ h(t) + g(t) \ \text{(sum)}

    so y(t) summarises the whole input around t. With ``lengths``, g starts at each sequence's
    own last step. With ``merge="concat"`` and cells torch has, this is torch.nn's
    ``bidirectional=True`` layer.

    Args:
        cell: the forward direction's cell.
        backward_cell: the backward direction's; by default a copy of ``cell`` with fresh
            parameters.
        merge: ``"concat"`` (output 2H) or ``"sum"`` (output H; both cells need the same H).
        batch_first: inputs and outputs are (B, T, ·).

    Shapes: x (T, B, I); outputs (T, B, D·H) for concat, (T, B, H) for sum;
    state ``BidirectionalState(forward, backward)`` of the two cells' states. As for
    :class:`~rnnkit.Recurrent`, x may be a PackedSequence, and the outputs then are one.
    """

    def __init__(
        self,
        cell: RecurrentCell,
        backward_cell: RecurrentCell | None = None,
        merge: str = "concat",
        batch_first: bool = False,
    ) -> None:
        super().__init__()
        self.merge = check_choice(merge, "merge", "Bidirectional", ("concat", "sum"))
        for name, c in (("cell", cell), ("backward_cell", backward_cell)):
            if c is not None and not isinstance(c, RecurrentCell):
                raise TypeError(
                    f"Bidirectional: {name} must be an rnnkit cell (rnnkit.cells.*), got {type(c).__name__}"
                    + from_torch_hint(c)
                )
        if backward_cell is None:
            backward_cell = copy.deepcopy(cell)
            reset = getattr(backward_cell, "reset_parameters", None)
            if reset is not None:
                reset()
        if backward_cell.input_size != cell.input_size:
            raise ValueError(
                f"Bidirectional: both cells must read the same input, got input_size {cell.input_size} and "
                f"{backward_cell.input_size}"
            )
        if merge == "sum" and backward_cell.output_size != cell.output_size:
            raise ValueError(
                f"Bidirectional: merge='sum' needs equal output sizes, got {cell.output_size} and "
                f"{backward_cell.output_size}"
            )
        self.forward_layer = Recurrent(cell)
        self.backward_layer = Recurrent(backward_cell, reverse=True)
        self.batch_first = bool(batch_first)
        self.input_size = cell.input_size
        self.hidden_size = cell.hidden_size
        self.output_size = cell.output_size + backward_cell.output_size if merge == "concat" else cell.output_size
        self.last_engine: str | None = None
        self._one_kernel = False  # whether the last call ran the whole as one torch kernel call

    def forward(
        self, x: Tensor | PackedSequence, state: Any = None, lengths: Any = None
    ) -> tuple[Tensor | PackedSequence, BidirectionalState]:
        if isinstance(x, PackedSequence):  # as the padded batch with lengths; outputs packed like x
            padded, lengths = unpack_input(x, lengths, self.batch_first, "Bidirectional")
            y, state = self.forward(padded, state, lengths)
            return repack_output(y, lengths, x, self.batch_first), state
        lengths = _checked_lengths("Bidirectional", x, lengths, self.batch_first)
        state = _check_pair_state("Bidirectional", state)
        layer_cells = _layer_cells([self], x, lengths)
        if layer_cells is not None:
            y, ((h_final, g_final),) = _run_native(
                "Bidirectional", layer_cells, x, [state], lengths, self.batch_first, 0.0, self.training
            )
            if self.merge == "sum":
                h, g = y.chunk(2, dim=-1)
                y = h + g  # (·, ·, H)
            self.last_engine, self._one_kernel = "native", True
            return y, BidirectionalState(h_final, g_final)
        if isinstance(x, Tensor) and x.dim() == 3 and self.batch_first:
            x = x.transpose(0, 1)  # (T, B, I)
        h, h_final = self.forward_layer(x, state[0], lengths)  # (T, B, H)
        g, g_final = self.backward_layer(x, state[1], lengths)  # (T, B, H)
        self._one_kernel = False  # this call ran layer by layer
        self.last_engine = summarize_engines(last_engines(self))  # what both directions ran on
        y = torch.cat([h, g], dim=-1) if self.merge == "concat" else h + g  # (T, B, D·H) or (T, B, H)
        if self.batch_first:
            y = y.transpose(0, 1)  # (B, T, ·)
        return y, BidirectionalState(h_final, g_final)

    @property
    def last_engines(self) -> dict[str, str]:
        """What ran in each layer on the last call, ``{path: engine}`` (``{"": "native"}`` when
        the whole ran as one torch kernel call); see :func:`rnnkit.last_engines`."""
        return last_engines(self)

    def extra_repr(self) -> str:
        return f"merge={self.merge!r}, batch_first={self.batch_first}"


class Stack(nn.Module):
    r"""Recurrent layers stacked in depth: layer l reads layer l−1's outputs (Graves et al.
    2013; Goodfellow et al., *Deep Learning*, §10.5, figure 10.13a).

    .. math::
        h^{l}(t) = f_l\big(h^{l}(t-1),\ \mathrm{dropout}(h^{l-1}(t))\big), \qquad h^{0}(t) = x(t)

    Dropout (probability ``dropout``, training mode only) sits between layers, not after the
    last one, as in torch.nn.LSTM. A stack of plain Elman, LSTM or GRU layers converts to the
    equal torch.nn module with :meth:`to_torch`.

    Whole-stack dispatch: when every layer is a forward ``Recurrent`` or a concat/sum
    ``Bidirectional`` layer of cells torch's kernel computes — one kind, one hidden size, bias
    in all or none, every layer bidirectional or none, engines ``"auto"``/``"native"`` — the
    stack runs as one call of that kernel with ``num_layers`` and ``bidirectional`` (oneDNN on
    CPU, cuDNN on GPU), and ``last_engine`` is ``"native"``. With ``lengths`` it does so on the
    GPU; on the CPU each layer then runs on the fused engine, which masks for free where torch's
    CPU kernels would take a slow packed-sequence path. Otherwise each
    layer runs its own path: ``last_engine`` is then the engine they all ran on (``"fused"``,
    ``"reference"``), or ``"mixed"``, and :attr:`last_engines` says what ran in each layer. The
    dropout masks of the two paths differ: both drop the same fraction between the
    same layers.

    Args:
        layers: ``Recurrent`` or ``Bidirectional`` layers (any module with
            ``forward(x, state, lengths)``, ``input_size``, ``output_size``), all with the same
            ``batch_first``; each layer's input size must be the previous one's output size.
        dropout: between layers, in [0, 1).

    Shapes: x (T, B, I) (or (B, T, I) if the layers are batch_first); outputs those of the last
    layer; state a tuple with one state per layer. As for :class:`~rnnkit.Recurrent`, x may be a
    PackedSequence, and the outputs then are one.
    """

    def __init__(self, layers: Sequence[nn.Module], dropout: float = 0.0) -> None:
        super().__init__()
        layers = list(layers)
        if not layers:
            raise ValueError("Stack: needs at least one layer")
        for k, layer in enumerate(layers):
            if isinstance(layer, RecurrentCell):
                raise TypeError(
                    f"Stack: layer {k} is a cell ({type(layer).__name__}); expected a layer: wrap it as Recurrent(cell)"
                )
            if not (
                isinstance(layer, nn.Module)
                and all(hasattr(layer, a) for a in ("input_size", "output_size", "batch_first"))
            ):
                raise TypeError(
                    f"Stack: layer {k} must be a Recurrent or Bidirectional layer (a module with input_size, "
                    f"output_size and batch_first), got {type(layer).__name__}{from_torch_hint(layer)}"
                )
        for k in range(1, len(layers)):
            if layers[k].input_size != layers[k - 1].output_size:
                raise ValueError(
                    f"Stack: layer {k} has input_size {layers[k].input_size}, expected layer {k - 1}'s output size "
                    f"{layers[k - 1].output_size}"
                )
        flags = {bool(layer.batch_first) for layer in layers}
        if len(flags) != 1:
            raise ValueError("Stack: all layers must have the same batch_first")
        if not (isinstance(dropout, (int, float)) and 0 <= dropout < 1):
            raise ValueError(f"Stack: dropout must be in [0, 1), got {dropout!r}")
        self.layers = nn.ModuleList(layers)
        self.dropout = float(dropout)
        self.batch_first = flags.pop()
        self.input_size = layers[0].input_size
        self.output_size = layers[-1].output_size
        self.hidden_size = layers[-1].hidden_size
        self.last_engine: str | None = None
        self._one_kernel = False  # whether the last call ran the whole as one torch kernel call

    @classmethod
    def build(
        cls,
        make_cell: Callable[[int, int], RecurrentCell],
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        *,
        bidirectional: bool = False,
        batch_first: bool = False,
        dropout: float = 0.0,
    ) -> Stack:
        """A stack of ``num_layers`` layers of ``make_cell(input_size, hidden_size)`` cells.

        Example: ``Stack.build(LSTMCell, 32, 64, num_layers=2, bidirectional=True)``.
        """
        num_layers = check_size(num_layers, "num_layers", "Stack")
        layers: list[nn.Module] = []
        size = input_size
        for _ in range(num_layers):
            if bidirectional:
                layer = Bidirectional(
                    make_cell(size, hidden_size), make_cell(size, hidden_size), batch_first=batch_first
                )
            else:
                layer = Recurrent(make_cell(size, hidden_size), batch_first=batch_first)
            layers.append(layer)
            size = layer.output_size
        return cls(layers, dropout=dropout)

    def forward(
        self, x: Tensor | PackedSequence, state: Sequence[Any] | None = None, lengths: Any = None
    ) -> tuple[Tensor | PackedSequence, tuple]:
        if isinstance(x, PackedSequence):  # as the padded batch with lengths; outputs packed like x
            padded, lengths = unpack_input(x, lengths, self.batch_first, "Stack")
            y, state = self.forward(padded, state, lengths)
            return repack_output(y, lengths, x, self.batch_first), state
        L = len(self.layers)
        if state is None:
            state = [None] * L
        elif is_state(state):  # one layer's state (an LSTMState is also a tuple), not one per layer
            raise TypeError(f"Stack: state must be a tuple of {L} layer states, got a single {type(state).__name__}")
        elif not isinstance(state, (tuple, list)) or len(state) != L:
            got = (
                f"{type(state).__name__} of length {len(state)}"
                if isinstance(state, (tuple, list))
                else type(state).__name__
            )
            raise TypeError(f"Stack: state must be a tuple of {L} layer states, got {got}")
        lengths = _checked_lengths("Stack", x, lengths, self.batch_first)
        layer_cells = _layer_cells(self.layers, x, lengths)
        sums = [isinstance(layer, Bidirectional) and layer.merge == "sum" for layer in self.layers]
        if layer_cells is not None and not any(sums):
            y, finals = _run_native(
                "Stack", layer_cells, x, list(state), lengths, self.batch_first, self.dropout, self.training
            )
            self.last_engine, self._one_kernel = "native", True
            return y, tuple(BidirectionalState(*f) if len(f) == 2 else f[0] for f in finals)
        finals = []
        y = x
        for k, layer in enumerate(self.layers):
            y, s = layer(y, state[k], lengths)
            finals.append(s)
            if k < L - 1 and self.dropout > 0:
                y = F.dropout(y, self.dropout, self.training)
        self._one_kernel = False  # this call ran layer by layer
        self.last_engine = summarize_engines(last_engines(self))  # what its layers ran on
        return y, tuple(finals)

    @property
    def last_engines(self) -> dict[str, str]:
        """What ran in each layer on the last call, ``{path: engine}`` (``{"": "native"}`` when
        the whole ran as one torch kernel call); see :func:`rnnkit.last_engines`."""
        return last_engines(self)

    def to_torch(self) -> nn.Module:
        """The equal ``torch.nn.RNN``/``LSTM``/``GRU`` (weights copied); see :func:`rnnkit.to_torch`."""
        from .interop import to_torch

        return to_torch(self)

    def extra_repr(self) -> str:
        return f"dropout={self.dropout}" if self.dropout else ""
