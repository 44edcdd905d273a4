r"""Deep recurrent networks, the seeds' three ways (Goodfellow et al., *Deep Learning*, §10.5,
figure 10.13; Pascanu et al. 2014, "How to Construct Deep Recurrent Neural Networks"):

(a) **stacked** — :class:`rnnkit.Stack`: h^l(t) = f(W_l h^l(t−1) + U_l h^{l−1}(t) + b_l), with
    dropout between layers;
(b) **deep transition** — :class:`rnnkit.cells.DeepTransitionCell` (MLPs inside the
    input-to-hidden and hidden-to-hidden maps of any cell) with
    :class:`rnnkit.models.heads.OutputHead` ``hidden=(...)`` for the hidden-to-output MLP;
    :func:`deep_transition` builds the layer;
(c) **skip / residual connections across layers** — :class:`ResidualStack`, which shortens
    the path a gradient travels from the output to the lower layers.

Any cell of the zoo can be used in each. Symbols: T time, B batch, I input, H hidden, L layers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from ..cells.base import RecurrentCell, check_choice, check_size
from ..cells.deep import DeepTransitionCell
from ..recurrent import Recurrent, repack_output, unpack_input
from .base import EngineReport, as_layer, final_output, layer_init_state, layer_step

CONNECTIONS = ("residual", "skip")


def deep_transition(
    make_cell: Callable[[int, int], RecurrentCell],
    input_size: int,
    hidden_size: int,
    *,
    input_layers: Sequence[int] = (),
    transition_layers: Sequence[int] = (),
    activation: str = "tanh",
) -> Recurrent:
    """A deep-transition layer: ``Recurrent(DeepTransitionCell(make_cell(I', H), ...))`` with I'
    the last input layer's width (I without input layers).

    Example: ``deep_transition(GRUCell, 8, 16, input_layers=(12,), transition_layers=(32, 16))``.
    """
    cell_input = input_layers[-1] if input_layers else input_size
    cell = make_cell(cell_input, hidden_size)
    return Recurrent(DeepTransitionCell(cell, input_size, input_layers, transition_layers, activation))


class ResidualStack(EngineReport, nn.Module):
    r"""Recurrent layers with connections that skip across layers.

    ``connections="residual"`` (He et al. 2016 for feed-forward nets; Wu et al. 2016, GNMT, for
    stacked LSTMs): each layer above the first adds its input to its output,

    .. math::
        u^1(t) = h^1(t), \qquad h^l(t) = f_l(\mathrm{dropout}(u^{l-1}(t)), h^l(t-1)), \qquad
        u^l(t) = h^l(t) + u^{l-1}(t), \qquad y(t) = u^L(t) = \textstyle\sum_l h^l(t)

    so every layer's h reaches the output through one addition; all layers must have the same
    output width H.

    ``connections="skip"`` (Graves 2013, "Generating Sequences With Recurrent Neural
    Networks"): the input reaches every layer and every layer reaches the output,

    .. math::
        h^1(t) = f_1(x(t), h^1(t-1)), \qquad
        h^l(t) = f_l([x(t);\ \mathrm{dropout}(h^{l-1}(t))], h^l(t-1)), \qquad
        y(t) = [h^1(t); \dots; h^L(t)]

    so layer l's input_size must be I + H_{l−1}, and the output width is Σ_l H_l.

    Args:
        layers: rnnkit layers or cells (cells are wrapped in ``Recurrent``), time-major.
        connections: ``"residual"`` or ``"skip"``.
        dropout: on what each layer passes up, in [0, 1), training mode only.

    Shapes: x (T, B, I); lengths (B,) → y (T, B, H) (residual) or (T, B, Σ H_l) (skip), and a
    tuple with each layer's final state. ``step(x (B, I), state)`` runs one step;
    ``final_output(state)`` is y at each sequence's last step.
    """

    batch_first = False

    def __init__(self, layers: Sequence[Any], connections: str = "residual", dropout: float = 0.0) -> None:
        super().__init__()
        owner = "ResidualStack"
        layers = [as_layer(layer, owner) for layer in layers]
        if not layers:
            raise ValueError(f"{owner}: needs at least one layer")
        self.connections = check_choice(connections, "connections", owner, CONNECTIONS)
        if not (isinstance(dropout, (int, float)) and 0 <= dropout < 1):
            raise ValueError(f"{owner}: dropout must be in [0, 1), got {dropout!r}")
        I = layers[0].input_size
        for k in range(1, len(layers)):
            prev, layer = layers[k - 1], layers[k]
            if connections == "residual":
                if layer.output_size != prev.output_size or layer.input_size != prev.output_size:
                    raise ValueError(
                        f"{owner}: residual connections need every layer to read and write the same width; "
                        f"layer {k} has input_size {layer.input_size}, output_size {layer.output_size}, layer {k - 1} "
                        f"outputs {prev.output_size}"
                    )
            elif layer.input_size != I + prev.output_size:
                raise ValueError(
                    f"{owner}: with skip connections layer {k} reads [x; h^{k - 1}], so its input_size must be I + H "
                    f"= {I} + {prev.output_size}, got {layer.input_size}"
                )
        self.layers = nn.ModuleList(layers)
        self.dropout = float(dropout)
        self.input_size = I
        self.hidden_size = layers[-1].output_size
        self.output_size = self.hidden_size if connections == "residual" else sum(layer.output_size for layer in layers)

    @classmethod
    def build(
        cls,
        make_cell: Callable[[int, int], RecurrentCell],
        input_size: int,
        hidden_size: int,
        num_layers: int,
        connections: str = "residual",
        dropout: float = 0.0,
    ) -> ResidualStack:
        """``num_layers`` layers of ``make_cell`` cells, sized for ``connections``."""
        num_layers = check_size(num_layers, "num_layers", "ResidualStack")
        check_choice(connections, "connections", "ResidualStack", CONNECTIONS)
        sizes = [input_size] + [hidden_size if connections == "residual" else input_size + hidden_size] * (
            num_layers - 1
        )
        return cls([Recurrent(make_cell(i, hidden_size)) for i in sizes], connections, dropout)

    def _drop(self, h: Tensor) -> Tensor:
        return F.dropout(h, self.dropout, self.training) if self.dropout > 0 else h

    def _run(
        self, x: Tensor, state: Any, run_layer: Callable[[nn.Module, Tensor, Any], tuple[Tensor, Any]]
    ) -> tuple[Tensor, tuple]:
        """The connections, for a whole sequence or one step (``run_layer`` says which)."""
        L = len(self.layers)
        if state is None:
            state = [None] * L
        elif not isinstance(state, (tuple, list)) or len(state) != L:
            got = (
                f"{type(state).__name__} of length {len(state)}"
                if isinstance(state, (tuple, list))
                else type(state).__name__
            )
            raise TypeError(f"ResidualStack: state must be a tuple of {L} layer states, got {got}")
        finals, outs = [], []
        u = None
        for k, layer in enumerate(self.layers):
            if k == 0:
                inp = x
            elif self.connections == "residual":
                inp = self._drop(u)
            else:
                inp = torch.cat([x, self._drop(outs[-1])], dim=-1)  # [x; h^{l-1}]
            h, s = run_layer(layer, inp, state[k])
            finals.append(s)
            outs.append(h)
            if self.connections == "residual":
                u = h if u is None else h + u  # u^l = h^l + u^{l-1}
        y = u if self.connections == "residual" else torch.cat(outs, dim=-1)
        return y, tuple(finals)

    def forward(
        self, x: Tensor | PackedSequence, state: Any = None, lengths: Any = None
    ) -> tuple[Tensor | PackedSequence, tuple]:
        """Whole sequences: x (T, B, I), lengths (B,) → y (T, B, ·) and each layer's final state.
        x may be a PackedSequence, as for :class:`rnnkit.Stack`; y is then one, packed like x."""
        if isinstance(x, PackedSequence):  # as the padded batch with lengths; outputs packed like x
            padded, lengths = unpack_input(x, lengths, False, "ResidualStack")
            y, state = self.forward(padded, state, lengths)
            return repack_output(y, lengths, x, False), state
        return self._run(x, state, lambda layer, inp, s: layer(inp, s, lengths))

    def step(self, x: Tensor, state: Any) -> tuple[Tensor, tuple]:
        """One time step: x (B, I) → y (B, ·); each layer's cell ``forward`` once."""
        return self._run(x, state, layer_step)

    def init_state(
        self, batch_size: int, *, dtype: torch.dtype | None = None, device: torch.device | None = None
    ) -> tuple:
        """Each layer's zero state, for a decoder that steps this stack."""
        ref = next(self.parameters())
        return tuple(
            layer_init_state(layer, batch_size, dtype or ref.dtype, device or ref.device) for layer in self.layers
        )

    def final_output(self, state: Any) -> Tensor:
        """y at each sequence's last step, from the layers' final states."""
        outs = [final_output(layer, s) for layer, s in zip(self.layers, state)]
        return torch.stack(outs).sum(0) if self.connections == "residual" else torch.cat(outs, dim=-1)

    def extra_repr(self) -> str:
        return f"connections={self.connections!r}" + (f", dropout={self.dropout}" if self.dropout else "")
