"""Recurrent cells: one time step each, ``forward(x, state) -> (output, new_state)``.

Where each one's equations live:

======================  =========================================================
``ElmanCell``           :mod:`rnnkit.cells.elman` — tanh/ReLU, default/orthogonal/identity init
``LSTMCell``            :mod:`rnnkit.cells.lstm` — forget gate, 1997 form, peepholes, blocks, clipping
``CIFGLSTMCell``        :mod:`rnnkit.cells.cifg` — LSTM with coupled input and forget gates
``LayerNormLSTMCell``   :mod:`rnnkit.cells.layernorm` — LSTM with layer normalisation
``GRUCell``             :mod:`rnnkit.cells.gru`
``LayerNormGRUCell``    :mod:`rnnkit.cells.layernorm` — GRU with layer normalisation
``MGUCell``             :mod:`rnnkit.cells.mgu` — minimal gated unit, one gate
``IndRNNCell``          :mod:`rnnkit.cells.indrnn` — one recurrent weight per unit
``LeakyCell``           :mod:`rnnkit.cells.leaky` — leaky integration around any cell
``SkipCell``            :mod:`rnnkit.cells.skip` — reads h(t − d) too
``ClockworkCell``       :mod:`rnnkit.cells.clockwork` — groups at several time scales
``DeepTransitionCell``  :mod:`rnnkit.cells.deep` — MLPs inside input-to-hidden and hidden-to-hidden
``AttentionCell``       :mod:`rnnkit.cells.attention` — additive attention over a memory
======================  =========================================================
"""

from .attention import AttentionCell, AttentionState
from .base import RecurrentCell
from .cifg import CIFGLSTMCell
from .clockwork import ClockworkCell, ClockworkState
from .deep import MLP, DeepTransitionCell
from .elman import ElmanCell
from .gru import GRUCell
from .indrnn import IndRNNCell
from .layernorm import LayerNormGRUCell, LayerNormLSTMCell
from .leaky import LeakyCell, alphas_from_time_constants
from .lstm import LSTMCell
from .mgu import MGUCell
from .skip import SkipCell, SkipState
from .state import LSTMState, RNNState, detach_state, map_state, where_state

__all__ = [
    "RecurrentCell",
    "ElmanCell",
    "LSTMCell",
    "GRUCell",
    "CIFGLSTMCell",
    "LayerNormLSTMCell",
    "LayerNormGRUCell",
    "MGUCell",
    "IndRNNCell",
    "LeakyCell",
    "SkipCell",
    "ClockworkCell",
    "DeepTransitionCell",
    "AttentionCell",
    "AttentionState",
    "MLP",
    "RNNState",
    "LSTMState",
    "SkipState",
    "ClockworkState",
    "alphas_from_time_constants",
    "map_state",
    "where_state",
    "detach_state",
]
