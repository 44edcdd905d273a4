"""Deep transition: MLPs inside the input-to-hidden and hidden-to-hidden maps of any cell."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .base import CellStructure, RecurrentCell, check_choice, check_size, check_wrappable
from .state import is_state

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {"tanh": torch.tanh, "relu": torch.relu}


class MLP(nn.Module):
    r"""Layers :math:`z_k = \phi(W_k z_{k-1} + b_k)`, z_0 = the input; no layers is the identity.

    Args:
        in_size: the input width. widths: each layer's output width, in order.
        activation: φ, ``"tanh"`` or ``"relu"``.

    Parameters: ``layers.k.weight`` (widths[k], widths[k−1]), ``layers.k.bias`` (widths[k],).
    Shapes: (…, in_size) → (…, widths[-1]) (or (…, in_size) without layers).
    """

    def __init__(self, in_size: int, widths: Sequence[int] = (), activation: str = "tanh", owner: str = "MLP") -> None:
        super().__init__()
        self.activation = check_choice(activation, "activation", owner, tuple(ACTIVATIONS))
        widths = [check_size(w, "each MLP layer width", owner) for w in widths]
        sizes = [in_size, *widths]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))
        self.in_size, self.out_size = in_size, sizes[-1]

    def forward(self, z: Tensor) -> Tensor:
        phi = ACTIVATIONS[self.activation]
        for layer in self.layers:
            z = phi(layer(z))
        return z


def replace_hidden(state: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    """The state with its hidden vector h (the first tensor field, depth first) replaced by fn(h).

    Every cell keeps h first (``RNNState(h)``, ``LSTMState(h, c)``, ``ClockworkState(h, t)``);
    wrappers keep the wrapped cell's state first (``SkipState(inner, past)``).
    """
    first = state[0]
    new_first = fn(first) if isinstance(first, Tensor) else replace_hidden(first, fn)
    return state._replace(**{state._fields[0]: new_first}) if is_state(state) else (new_first, *state[1:])


class DeepTransitionCell(RecurrentCell):
    r"""Deep transition around any cell (Pascanu, Gulcehre, Cho & Bengio 2014, "How to Construct
    Deep Recurrent Neural Networks"; Goodfellow et al., *Deep Learning*, §10.5, figure 10.13b).

    .. math::
        x'(t) = \mathrm{mlp}_{in}(x(t)), \qquad h'(t-1) = \mathrm{mlp}_{hh}(h(t-1)), \qquad
        (h(t), s(t)) = \mathrm{cell}\big(x'(t),\ s(t-1) \text{ with } h(t-1) \to h'(t-1)\big)

    where each mlp is layers :math:`z_k = \phi(W_k z_{k-1} + b_k)` (:class:`MLP`). So for an
    Elman cell, ``h(t) = tanh(b + W φ(W_2 φ(W_1 h(t−1) + b_1) + b_2) + U φ(W_x x(t) + b_x))``:
    the hidden-to-hidden map is itself a deep network, and the input passes through layers
    before it meets the recurrence. The transition MLP replaces h(t−1) wherever the wrapped
    cell reads it (its gates, a leaky cell's leak); an LSTM's c and a skip cell's past pass
    through unchanged. The deep hidden-to-output MLP is :class:`rnnkit.models.heads.OutputHead`
    with ``hidden=(...)``.

    Args:
        cell: any rnnkit cell (the last stage of the transition).
        input_size: I, the width of x; needed with ``input_layers`` (else the cell's).
        input_layers: widths of the input MLP; the last must be the cell's input_size.
        transition_layers: widths of the transition MLP; the last must be H.
        activation: φ, ``"tanh"`` or ``"relu"``.

    Parameters: the cell's as ``cell.*``; ``mlp_in.layers.k.*``, ``mlp_hh.layers.k.*``.
    Shapes: x (B, I); the state is the wrapped cell's; output h (B, H).

    Structure (:attr:`structure`): the wrapped cell's under ``cell.``, plus the transition MLP's
    weights ``mlp_hh.layers.k.weight`` as recurrent matrices; the MLPs' non-linearities make the
    step's own list unknown (None); no torch kernel.
    """

    def __init__(
        self,
        cell: RecurrentCell,
        input_size: int | None = None,
        input_layers: Sequence[int] = (),
        transition_layers: Sequence[int] = (),
        activation: str = "tanh",
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        if not isinstance(cell, RecurrentCell):
            raise TypeError(f"{owner}: cell must be an rnnkit cell, got {type(cell).__name__}")
        check_wrappable(cell, owner)
        input_layers, transition_layers = tuple(input_layers), tuple(transition_layers)
        if input_size is None:
            if input_layers:
                raise ValueError(f"{owner}: input_layers need input_size, the width of x")
            input_size = cell.input_size
        self.input_size = check_size(input_size, "input_size", owner)
        if input_layers and input_layers[-1] != cell.input_size:
            raise ValueError(
                f"{owner}: the last input layer must have the cell's input_size {cell.input_size}, got "
                f"input_layers={input_layers}"
            )
        if not input_layers and input_size != cell.input_size:
            raise ValueError(
                f"{owner}: input_size={input_size} differs from the cell's {cell.input_size}; add input_layers to map "
                "one to the other"
            )
        if transition_layers and transition_layers[-1] != cell.hidden_size:
            raise ValueError(
                f"{owner}: the last transition layer must have the hidden size {cell.hidden_size}, got "
                f"transition_layers={transition_layers}"
            )
        self.cell = cell
        self.hidden_size = cell.hidden_size
        self.projection_size = cell.projection_size
        self.mlp_in = MLP(self.input_size, input_layers, activation, owner)
        self.mlp_hh = MLP(cell.hidden_size, transition_layers, activation, owner)
        dtype, device = cell.reference_dtype_device()
        self.to(dtype=dtype, device=device)

    @property
    def structure(self) -> CellStructure:
        """The wrapped cell's structure under ``cell.``, with the transition MLP's weights as recurrent matrices."""
        inner = self.cell.structure.under("cell")
        transition = tuple(f"mlp_hh.layers.{k}.weight" for k in range(len(self.mlp_hh.layers)))
        return self._wrapper_structure(recurrent_matrices=(*inner.recurrent_matrices, *transition), nonlinearities=None)

    def init_state(self, batch_size, *, dtype=None, device=None) -> Any:
        dtype, device = self._dtype_device(dtype, device)
        return self.cell.init_state(batch_size, dtype=dtype, device=device)

    def input_projection(self, x: Tensor) -> Tensor:
        return self.cell.input_projection(self.mlp_in(x))  # U x'(t) + b, batched over time

    def recurrence(self, gi: Tensor, state: Any) -> tuple[Tensor, Any]:
        return self.cell.recurrence(gi, replace_hidden(state, self.mlp_hh))

    def output_of(self, state: Any) -> Tensor:
        return self.cell.output_of(state)

    def extra_repr(self) -> str:
        layers = f"input_layers={len(self.mlp_in.layers)}, transition_layers={len(self.mlp_hh.layers)}"
        return f"{self.input_size}, {self.hidden_size}, {layers}"
