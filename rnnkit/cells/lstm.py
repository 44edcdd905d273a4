"""The long short-term memory cell in all its classic forms, in one class."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import CellStructure, RecurrentCell, check_size, uniform_
from .state import LSTMState

DEFAULT_FORGET_BIAS = 1.0


def set_gate_bias(cell: nn.Module, start: int, stop: int, value: float) -> None:
    """Make the effective bias of pre-activation rows [start, stop) equal ``value``.

    The effective bias is ``bias_ih + bias_hh``; the whole value goes into ``bias_ih``.
    Shared by every cell with a gate that decides how much of the past is kept.
    """
    if cell.bias_ih is None:
        raise ValueError(f"{type(cell).__name__}: a gate bias needs bias=True")
    with torch.no_grad():
        cell.bias_ih[start:stop].fill_(value)
        cell.bias_hh[start:stop].zero_()


class LSTMCell(RecurrentCell):
    r"""LSTM cell: forget gate, the original 1997 form, peepholes, memory blocks, cell clipping.

    With the defaults this is the LSTM of Gers, Schmidhuber & Cummins (2000), "Learning to
    Forget", exactly as torch.nn.LSTMCell computes it (its state_dicts load unchanged):

    .. math::
        i &= \sigma(W_{ii} x + b_{ii} + W_{hi} h + b_{hi} + p_i \odot c) \\
        f &= \sigma(W_{if} x + b_{if} + W_{hf} h + b_{hf} + p_f \odot c) \\
        g &= \tanh(W_{ig} x + b_{ig} + W_{hg} h + b_{hg}) \\
        c' &= f \odot c + i \odot g \qquad (\text{without forget gate: } c' = c + i \odot g) \\
        c' &\leftarrow \mathrm{clamp}(c', -\kappa, \kappa) \quad (\text{if } \kappa = \texttt{cell\_clip}) \\
        o &= \sigma(W_{io} x + b_{io} + W_{ho} h + b_{ho} + p_o \odot c') \\
        h' &= o \odot \tanh(c') \qquad (\text{projected: } h' = W_{hr} (o \odot \tanh(c')))

    The variants, all options of this one class:

    * ``forget_gate=False`` — Hochreiter & Schmidhuber (1997), "Long Short-Term Memory": no f;
      the constant error carousel ``c' = c + i ⊙ g`` carries error unchanged through time, the
      cell input is squashed by g = tanh and the output is ``h' = o ⊙ tanh(c')``. c grows
      without bound on long streams, hence ``cell_clip``.
    * ``peephole=True`` — Gers, Schraudolph & Schmidhuber (2002), "Learning Precise Timing with
      LSTM Recurrent Networks": the cell state enters the gates through diagonal weights
      ``p_i, p_f`` (reading c(t−1)) and ``p_o`` (reading c(t)). The p terms above are zero
      without peepholes.
    * ``block_size=k`` — memory blocks (Hochreiter & Schmidhuber 1997): the H cells are grouped
      into H/k blocks, and the k cells of a block share one input, forget and output gate. Gate
      vectors i, f, o have H/k entries, each repeated over its block's k cells; the cell input g
      keeps H entries. A peephole into a block's gate sums ``p ⊙ c`` over the block's cells.
      ``block_size=1`` is the ordinary LSTM.
    * ``proj_size=P`` — the projected LSTM, LSTMP (Sak, Senior & Beaufays 2014, "Long Short-Term
      Memory Recurrent Neural Network Architectures for Large Scale Acoustic Modeling"), as
      ``torch.nn.LSTM(proj_size=P)`` computes it: the output and recurrent state is
      ``h' = W_hr (o ⊙ tanh(c'))`` of width P < H, so the recurrent matrix is 4H × P instead of
      4H × H; the cell state c keeps its H cells. Combines with every other option.

    Parameters (gate order i, f, g, o as torch.nn; f absent without forget gate; n = H/k):
        * ``weight_ih`` (n·(2 or 3) + H, I) stacked ``[W_ii | W_if | W_ig | W_io]``
        * ``weight_hh`` (n·(2 or 3) + H, P) stacked ``[W_hi | W_hf | W_hg | W_ho]`` (P = H
          without projection)
        * ``bias_ih``, ``bias_hh`` of the same row count
        * ``weight_ci``, ``weight_cf``, ``weight_co`` (H,) — the peepholes ``p_i, p_f, p_o``
        * ``weight_hr`` (P, H) — the projection ``W_hr``, named as torch.nn.LSTM names it

    All start from U(−1/√H, 1/√H) (torch's init); then the forget gate's effective bias
    ``b_if + b_hf`` is set to ``forget_bias`` (1.0 by default, as Jozefowicz et al. 2015
    recommend; ``None`` keeps torch's random bias).

    Args:
        input_size: I.
        hidden_size: H (the number of memory cells).
        bias: if False, no biases.
        forget_gate: False for the 1997 LSTM.
        peephole: add the peephole weights.
        block_size: cells per memory block, k; must divide H.
        cell_clip: if given, κ > 0: clamp c' to [−κ, κ].
        forget_bias: the initial effective forget-gate bias, or None.
        proj_size: P, the width of the projected output; 0 (torch's default) for none. Must be
            < H, as torch requires.

    Shapes: x (B, I); state ``LSTMState(h, c)`` with h (B, P) and c (B, H) (P = H without
    projection); output h' (B, P). ``output_size`` is P, ``hidden_size`` H.

    Structure (:attr:`structure`): gates ``i, f, g, o`` as ``gate_slices`` lays them out, f the
    gate that keeps the past; recurrent matrix ``weight_hh``; torch kernel ``"lstm"`` with the
    forget gate and no peepholes, blocks or clipping, projected or not — otherwise those options
    are the structure's ``kernel_extras``.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        *,
        forget_gate: bool = True,
        peephole: bool = False,
        block_size: int = 1,
        cell_clip: float | None = None,
        forget_bias: float | None = DEFAULT_FORGET_BIAS,
        proj_size: int = 0,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.input_size = check_size(input_size, "input_size", owner)
        self.hidden_size = H = check_size(hidden_size, "hidden_size", owner)
        self.block_size = k = check_size(block_size, "block_size", owner)
        if H % k:
            raise ValueError(f"{owner}: block_size={k} must divide hidden_size={H}")
        self.proj_size = P = check_size(proj_size, "proj_size", owner, minimum=0)
        if P >= H:
            raise ValueError(f"{owner}: proj_size must be < hidden_size={H} (as in torch.nn.LSTM), got {P}")
        if cell_clip is not None and not (isinstance(cell_clip, (int, float)) and cell_clip > 0):
            raise ValueError(f"{owner}: cell_clip must be a number > 0 or None, got {cell_clip!r}")
        if forget_bias is not None and not bias:
            if forget_bias != DEFAULT_FORGET_BIAS:
                raise ValueError(f"{owner}: forget_bias={forget_bias} needs bias=True")
            forget_bias = None  # the default has nothing to set
        if not forget_gate:
            forget_bias = None  # there is no forget gate to bias
        self.forget_gate = bool(forget_gate)
        self.peephole = bool(peephole)
        self.cell_clip = None if cell_clip is None else float(cell_clip)
        self.forget_bias = forget_bias
        self.bias = bool(bias)
        self.num_blocks = n = H // k
        # Row slices of the stacked pre-activations, in the order i, f, g, o.
        sizes = [("i", n)] + ([("f", n)] if forget_gate else []) + [("g", H), ("o", n)]
        self.gate_slices: dict[str, slice] = {}
        start = 0
        for name, size in sizes:
            self.gate_slices[name] = slice(start, start + size)
            start += size
        self.projection_size = rows = start
        self._make_parameters(rows, bias)
        if P:
            self.weight_hh = nn.Parameter(torch.empty(rows, P))  # W_h· read the projected h
            self.weight_hr = nn.Parameter(torch.empty(P, H))
        if peephole:
            self.weight_ci = nn.Parameter(torch.empty(H))
            if forget_gate:
                self.weight_cf = nn.Parameter(torch.empty(H))
            else:
                self.register_parameter("weight_cf", None)
            self.weight_co = nn.Parameter(torch.empty(H))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        uniform_(list(self.parameters()), self.hidden_size)
        if self.forget_bias is not None and self.bias:
            f = self.gate_slices["f"]
            set_gate_bias(self, f.start, f.stop, self.forget_bias)

    @property
    def output_size(self) -> int:
        """The width of h — P with a projection, else H."""
        return self.proj_size or self.hidden_size

    def init_state(self, batch_size, *, dtype=None, device=None) -> LSTMState:
        dtype, device = self._dtype_device(dtype, device)
        h = torch.zeros(batch_size, self.output_size, dtype=dtype, device=device)  # (B, P)
        c = torch.zeros(batch_size, self.hidden_size, dtype=dtype, device=device)  # (B, H)
        return LSTMState(h, c)

    def input_projection(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight_ih, self.bias_ih)

    def _peep(self, p: Tensor, c: Tensor) -> Tensor:
        """Peephole term of the gates: p ⊙ c summed over each block's k cells → (B, H/k)."""
        pc = p * c
        if self.block_size == 1:
            return pc
        return pc.view(*c.shape[:-1], self.num_blocks, self.block_size).sum(-1)  # (B, H/k)

    def _expand(self, gate: Tensor) -> Tensor:
        """A block gate (B, H/k) repeated over its k cells → (B, H)."""
        return gate if self.block_size == 1 else gate.repeat_interleave(self.block_size, dim=-1)

    def recurrence(self, gi: Tensor, state: LSTMState) -> tuple[Tensor, LSTMState]:
        h, c = state
        gates = gi + F.linear(h, self.weight_hh, self.bias_hh)  # (B, rows)
        s = self.gate_slices
        i = gates[:, s["i"]]
        g = torch.tanh(gates[:, s["g"]])
        o = gates[:, s["o"]]
        if self.peephole:
            i = i + self._peep(self.weight_ci, c)
        i = self._expand(torch.sigmoid(i))
        if self.forget_gate:
            f = gates[:, s["f"]]
            if self.peephole:
                f = f + self._peep(self.weight_cf, c)
            f = self._expand(torch.sigmoid(f))
            c = f * c + i * g
        else:
            c = c + i * g  # the constant error carousel
        if self.cell_clip is not None:
            c = c.clamp(-self.cell_clip, self.cell_clip)
        if self.peephole:
            o = o + self._peep(self.weight_co, c)
        o = self._expand(torch.sigmoid(o))
        h = o * torch.tanh(c)
        if self.proj_size:
            h = F.linear(h, self.weight_hr)  # (B, P)
        return h, LSTMState(h, c)

    def kernel_extras(self) -> tuple[str, ...]:
        """The options of this cell that torch's LSTM kernel does not compute, as written in code."""
        options = (
            ("forget_gate=False", not self.forget_gate),
            ("peephole=True", self.peephole),
            (f"block_size={self.block_size}", self.block_size != 1),
            (f"cell_clip={self.cell_clip}", self.cell_clip is not None),
        )
        return tuple(name for name, on in options if on)

    @property
    def structure(self) -> CellStructure:
        """Gates ``i, f, g, o`` (f keeps the past), matrix ``weight_hh``, state ``(h, c)``, torch's
        ``lstm`` kernel unless :meth:`kernel_extras` names options it does not compute."""
        extras = self.kernel_extras()
        exact = not extras and self._computes_step_of(LSTMCell)
        return CellStructure(
            gates=tuple(self.gate_slices.items()),
            recurrent_matrices=("weight_hh",),
            state_fields=LSTMState._fields,
            torch_kernel="lstm" if exact else None,
            kernel_family="lstm",
            kernel_extras=extras,
            keep_gate="f" if self.forget_gate else None,
            nonlinearities=("g", "i", "f", "o", "c") if self.forget_gate else ("g", "i", "o", "c"),
        )

    def extra_repr(self) -> str:
        opts = [f"{self.input_size}, {self.hidden_size}"]
        if not self.forget_gate:
            opts.append("forget_gate=False")
        if self.peephole:
            opts.append("peephole=True")
        if self.block_size != 1:
            opts.append(f"block_size={self.block_size}")
        if self.cell_clip is not None:
            opts.append(f"cell_clip={self.cell_clip}")
        if self.proj_size:
            opts.append(f"proj_size={self.proj_size}")
        if not self.bias:
            opts.append("bias=False")
        return ", ".join(opts)
