"""Cells by name, as the command line and configs spell them."""

from __future__ import annotations

from collections.abc import Callable

from .base import RecurrentCell
from .cifg import CIFGLSTMCell
from .clockwork import ClockworkCell
from .deep import DeepTransitionCell
from .elman import ElmanCell
from .gru import GRUCell
from .indrnn import IndRNNCell
from .layernorm import LayerNormGRUCell, LayerNormLSTMCell
from .leaky import LeakyCell
from .lstm import LSTMCell
from .mgu import MGUCell
from .skip import SkipCell

# name -> (one-line description, factory(input_size, hidden_size))
CELLS: dict[str, tuple[str, Callable[[int, int], RecurrentCell]]] = {
    "elman": ("Elman RNN, tanh", lambda i, h: ElmanCell(i, h)),
    "irnn": (
        "Elman RNN, ReLU with identity-initialised W (Le et al. 2015)",
        lambda i, h: ElmanCell(i, h, nonlinearity="relu", init="identity"),
    ),
    "lstm": ("LSTM with forget gate (Gers et al. 2000)", lambda i, h: LSTMCell(i, h)),
    "lstm1997": (
        "original LSTM without forget gate (Hochreiter & Schmidhuber 1997)",
        lambda i, h: LSTMCell(i, h, forget_gate=False),
    ),
    "peephole": ("LSTM with peephole connections (Gers et al. 2002)", lambda i, h: LSTMCell(i, h, peephole=True)),
    "lstm-blocks": ("LSTM memory blocks of 2 cells sharing gates", lambda i, h: LSTMCell(i, h, block_size=2)),
    "cifg": (
        "LSTM with coupled input and forget gates, i = 1 - f (Greff et al. 2017)",
        lambda i, h: CIFGLSTMCell(i, h),
    ),
    "layernorm-lstm": ("LSTM with layer normalisation (Ba, Kiros & Hinton 2016)", lambda i, h: LayerNormLSTMCell(i, h)),
    "gru": ("gated recurrent unit (Cho et al. 2014)", lambda i, h: GRUCell(i, h)),
    "layernorm-gru": ("GRU with layer normalisation of W_ih x and W_hh h", lambda i, h: LayerNormGRUCell(i, h)),
    "mgu": ("minimal gated unit, one gate (Zhou et al. 2016)", lambda i, h: MGUCell(i, h)),
    "indrnn": (
        "independently recurrent ReLU units, h = relu(W x + u * h + b) (Li et al. 2018)",
        lambda i, h: IndRNNCell(i, h),
    ),
    "leaky": (
        "leaky tanh units, time constants 1.5…100 steps",
        lambda i, h: LeakyCell(ElmanCell(i, h), tau=(1.5, 100.0)),
    ),
    "skip": ("tanh RNN that also reads h(t-4)", lambda i, h: SkipCell(ElmanCell(i, h), delay=4)),
    "clockwork": ("clockwork RNN, periods 1, 2, 4, 8", lambda i, h: ClockworkCell(i, h, periods=(1, 2, 4, 8))),
    "deep-transition": (
        "tanh RNN whose input and hidden-to-hidden maps are one-layer tanh MLPs (Pascanu et al. 2014)",
        lambda i, h: DeepTransitionCell(ElmanCell(h, h), i, input_layers=(h,), transition_layers=(h,)),
    ),
}


def make_cell(name: str, input_size: int, hidden_size: int) -> RecurrentCell:
    """The cell called ``name`` (see ``CELLS``); unknown names raise ValueError listing the known ones."""
    if name not in CELLS:
        raise ValueError(f"unknown cell {name!r}; choose one of: {', '.join(CELLS)}")
    return CELLS[name][1](input_size, hidden_size)
