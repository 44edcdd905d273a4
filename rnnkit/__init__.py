"""rnnkit: recurrent neural networks on PyTorch — the whole design space, reference-checked.

Where things live:

* :mod:`rnnkit.cells` — one time step of every cell, with its equations;
* :class:`rnnkit.Recurrent` — the time loop that runs any cell over a sequence;
* :class:`rnnkit.Bidirectional`, :class:`rnnkit.Stack` — layers composed from it;
* :func:`rnnkit.from_torch`, :func:`rnnkit.to_torch` — conversions with torch.nn;
* :mod:`rnnkit.bptt` — back-propagation through time written out by hand;
* :mod:`rnnkit.cli` — the ``rnnkit`` command.
"""

from . import cells
from .cells import ClockworkCell, ElmanCell, GRUCell, LeakyCell, LSTMCell, SkipCell
from .compose import Bidirectional, BidirectionalState, Stack
from .interop import from_torch, to_torch
from .recurrent import Recurrent

__version__ = "0.1.0"

__all__ = [
    "cells",
    "ElmanCell",
    "LSTMCell",
    "GRUCell",
    "LeakyCell",
    "SkipCell",
    "ClockworkCell",
    "Recurrent",
    "Bidirectional",
    "BidirectionalState",
    "Stack",
    "from_torch",
    "to_torch",
]
