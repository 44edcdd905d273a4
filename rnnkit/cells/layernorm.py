"""Layer-normalised LSTM and GRU cells (Ba, Kiros & Hinton 2016)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import RecurrentCell, check_size, uniform_
from .lstm import DEFAULT_FORGET_BIAS, set_gate_bias
from .state import LSTMState, RNNState


def check_eps(value, owner: str) -> float:
    """Return ``value`` as a float if it is a number > 0, else raise naming ``eps``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{owner}: eps must be a number > 0, got {value!r}")
    return float(value)


def check_bias_value(value, name: str, owner: str, bias: bool) -> float | None:
    """Return a gate-bias setting as a float (or None); it needs ``bias=True`` to have a bias to set."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{owner}: {name} must be a number or None, got {value!r} ({type(value).__name__})")
    if not bias:
        raise ValueError(f"{owner}: {name}={value} needs bias=True")
    return float(value)


def ln_linear(v: Tensor, weight: Tensor, gain: Tensor, shift: Tensor, bias: Tensor | None, eps: float) -> Tensor:
    r"""The layer-normalised affine map of the LN cells, over the last axis of v:

    .. math::
        \mathrm{LN}(W v;\ \alpha, \beta) + b, \qquad
        \mathrm{LN}(a; \alpha, \beta) = \alpha \odot \frac{a - \mu}{\sqrt{s^2 + \epsilon}} + \beta

    μ and s² are the mean and the biased variance of the entries of a = W v, per row. ``weight``
    is W (rows, w) for v (..., w); ``gain``, ``shift`` and ``bias`` (None: no b) have ``rows``
    entries. Returns (..., rows).

    b is added as part of the norm's shift, :math:`\mathrm{LN}(W v;\ \alpha, \beta + b)`, the same
    function with one pass fewer over the result (and over its gradient).
    """
    rows = weight.shape[0]
    return F.layer_norm(F.linear(v, weight), (rows,), gain, shift if bias is None else shift + bias, eps)  # (..., rows)


def _add_layer_norm_parameters(cell: RecurrentCell, rows: int) -> None:
    """Gain and shift (rows,) of LN(W_ih x) and of LN(W_hh h); values from ``reset_parameters``."""
    cell.ln_ih_weight = nn.Parameter(torch.empty(rows))
    cell.ln_ih_bias = nn.Parameter(torch.empty(rows))
    cell.ln_hh_weight = nn.Parameter(torch.empty(rows))
    cell.ln_hh_bias = nn.Parameter(torch.empty(rows))


def _reset_parameters(cell: RecurrentCell) -> None:
    """W and b from U(−1/√H, 1/√H); every layer norm the identity (gains 1, shifts 0); then the
    keep gate's bias (rows H … 2H in both cells) if the cell has ``forget_bias``."""
    uniform_([p for name, p in cell.named_parameters() if not name.startswith("ln_")], cell.hidden_size)
    with torch.no_grad():
        for name, p in cell.named_parameters():
            if name.startswith("ln_"):
                p.fill_(1.0 if name.endswith("_weight") else 0.0)
    if cell.forget_bias is not None:
        H = cell.hidden_size
        set_gate_bias(cell, H, 2 * H, cell.forget_bias)


def _extra_repr(cell: RecurrentCell) -> str:
    return f"{cell.input_size}, {cell.hidden_size}, eps={cell.eps}" + ("" if cell.bias else ", bias=False")


class LayerNormLSTMCell(RecurrentCell):
    r"""LSTM with layer normalisation: the layer-normalised LSTM of Ba, Kiros & Hinton (2016),
    "Layer Normalization".

    The input term and the recurrent term are normalised separately, each over all 4H
    pre-activation rows at once, each with its own gain and shift; then the bias is added. The
    new cell state is normalised again before the output squashes it:

    .. math::
        (i, f, g, o) &= \mathrm{LN}(W_{ih} x;\ \alpha_{ih}, \beta_{ih})
                       + \mathrm{LN}(W_{hh} h;\ \alpha_{hh}, \beta_{hh}) + b \\
        c' &= \sigma(f) \odot c + \sigma(i) \odot \tanh(g) \\
        h' &= \sigma(o) \odot \tanh(\mathrm{LN}(c';\ \alpha_c, \beta_c))

    with :math:`\mathrm{LN}(v; \alpha, \beta) = \alpha \odot (v - \mu) / \sqrt{s^2 + \epsilon} + \beta`,
    μ and s² the mean and (biased) variance of v's entries, per batch row. The state carries c',
    not its normalised form. The paper writes the gates in the order (f, i, o, g); here they are
    stacked i, f, g, o as torch.nn stacks them, which changes nothing but the layout.
    ``LN(W_ih x)`` reads x alone, so ``input_projection`` computes it for all steps at once; the
    loop normalises ``W_hh h`` and ``c'``.

    Parameters (gate order i, f, g, o):
        * ``weight_ih`` (4H, I) ``[W_ii | W_if | W_ig | W_io]``, ``weight_hh`` (4H, H) likewise
        * ``bias_ih``, ``bias_hh`` (4H,): b = ``bias_ih + bias_hh`` (two, as torch.nn keeps them)
        * ``ln_ih_weight``, ``ln_ih_bias`` (4H,): α_ih, β_ih; ``ln_hh_weight``, ``ln_hh_bias``
          (4H,): α_hh, β_hh; ``ln_c_weight``, ``ln_c_bias`` (H,): α_c, β_c

    W and b start from U(−1/√H, 1/√H) (torch's init), every layer norm as the identity (gains
    1, shifts 0); then the forget gate's effective bias is set to ``forget_bias`` (1.0 by
    default, as LSTMCell does; ``None`` keeps the random bias). The β's and b are redundant
    (only their sum acts on the gates), as in the paper.

    Args:
        input_size: I.
        hidden_size: H.
        bias: if False, no b (the layer norms' shifts β remain).
        eps: ε, added to the variance in every layer norm.
        forget_bias: the initial effective forget-gate bias, or None.

    Shapes: x (B, I); state ``LSTMState(h, c)`` with h, c (B, H); output h' (B, H).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        *,
        eps: float = 1e-5,
        forget_bias: float | None = DEFAULT_FORGET_BIAS,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.input_size = check_size(input_size, "input_size", owner)
        self.hidden_size = H = check_size(hidden_size, "hidden_size", owner)
        self.projection_size = 4 * H
        self.bias = bool(bias)
        self.eps = check_eps(eps, owner)
        if not bias and forget_bias == DEFAULT_FORGET_BIAS:
            forget_bias = None  # the default has nothing to set
        self.forget_bias = check_bias_value(forget_bias, "forget_bias", owner, self.bias)
        self._make_parameters(4 * H, bias)
        _add_layer_norm_parameters(self, 4 * H)
        self.ln_c_weight = nn.Parameter(torch.empty(H))
        self.ln_c_bias = nn.Parameter(torch.empty(H))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _reset_parameters(self)

    def init_state(self, batch_size, *, dtype=None, device=None) -> LSTMState:
        dtype, device = self._dtype_device(dtype, device)
        zeros = torch.zeros(batch_size, self.hidden_size, dtype=dtype, device=device)
        return LSTMState(zeros, zeros.clone())

    def input_projection(self, x: Tensor) -> Tensor:
        return ln_linear(x, self.weight_ih, self.ln_ih_weight, self.ln_ih_bias, self.bias_ih, self.eps)  # (..., G·H)

    def recurrence(self, gi: Tensor, state: LSTMState) -> tuple[Tensor, LSTMState]:
        h, c = state
        gates = gi + ln_linear(h, self.weight_hh, self.ln_hh_weight, self.ln_hh_bias, self.bias_hh, self.eps)  # (B, 4H)
        i, f, g, o = gates.chunk(4, dim=-1)  # (B, H) each
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        c_hat = F.layer_norm(c, (self.hidden_size,), self.ln_c_weight, self.ln_c_bias, self.eps)  # LN(c')
        h = torch.sigmoid(o) * torch.tanh(c_hat)
        return h, LSTMState(h, c)

    def extra_repr(self) -> str:
        return _extra_repr(self)


class LayerNormGRUCell(RecurrentCell):
    r"""GRU with layer normalisation: torch.nn.GRUCell's formulation with its two matrix products
    ``W_ih x`` and ``W_hh h`` each replaced by its layer norm, the technique of Ba, Kiros & Hinton
    (2016), "Layer Normalization", carried over from their LN-LSTM.

    .. math::
        a &= \mathrm{LN}(W_{ih} x;\ \alpha_{ih}, \beta_{ih}) + b_{ih}, \qquad
        e = \mathrm{LN}(W_{hh} h;\ \alpha_{hh}, \beta_{hh}) + b_{hh} \\
        r &= \sigma(a_r + e_r) \\
        z &= \sigma(a_z + e_z) \\
        n &= \tanh(a_n + r \odot e_n) \\
        h' &= (1 - z) \odot n + z \odot h

    What is normalised, exactly: the 3H rows of ``W_ih x`` together (one mean and variance per
    batch row over all three blocks r, z, n), and separately the 3H rows of ``W_hh h``; each
    layer norm has its own gain α and shift β of 3H entries. The biases are added after
    normalising, and ``b_hn`` and ``β_hh``'s n block sit inside ``r ⊙ e_n``, as torch's
    ``b_hn`` does. h itself is not normalised. :math:`\mathrm{LN}` is defined as in
    :class:`rnnkit.cells.layernorm.LayerNormLSTMCell`. a is ``input_projection``'s output,
    computed for all steps at once, e is computed in the loop; subscripts r, z, n name their
    three H-row blocks.

    Parameters (gate order r, z, n):
        * ``weight_ih`` (3H, I) ``[W_ir | W_iz | W_in]``, ``weight_hh`` (3H, H) ``[W_hr | W_hz | W_hn]``
        * ``bias_ih``, ``bias_hh`` (3H,): b_ih, b_hh
        * ``ln_ih_weight``, ``ln_ih_bias`` (3H,): α_ih, β_ih; ``ln_hh_weight``, ``ln_hh_bias`` (3H,): α_hh, β_hh

    W and b from U(−1/√H, 1/√H) (torch's init), the layer norms as the identity (gains 1,
    shifts 0). ``forget_bias``, if given, sets the effective bias ``b_iz + b_hz`` of z, the gate
    that keeps the past, as GRUCell's does.

    Args:
        input_size: I.
        hidden_size: H.
        bias: if False, no b_ih, b_hh (the layer norms' shifts β remain).
        eps: ε, added to the variance in both layer norms.
        forget_bias: the initial effective bias of z, or None (torch's random bias).

    Shapes: x (B, I); state ``RNNState(h)`` with h (B, H); output h' (B, H).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        *,
        eps: float = 1e-5,
        forget_bias: float | None = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.input_size = check_size(input_size, "input_size", owner)
        self.hidden_size = H = check_size(hidden_size, "hidden_size", owner)
        self.projection_size = 3 * H
        self.bias = bool(bias)
        self.eps = check_eps(eps, owner)
        self.forget_bias = check_bias_value(forget_bias, "forget_bias", owner, self.bias)
        self._make_parameters(3 * H, bias)
        _add_layer_norm_parameters(self, 3 * H)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _reset_parameters(self)

    def init_state(self, batch_size, *, dtype=None, device=None) -> RNNState:
        dtype, device = self._dtype_device(dtype, device)
        return RNNState(torch.zeros(batch_size, self.hidden_size, dtype=dtype, device=device))

    def input_projection(self, x: Tensor) -> Tensor:
        return ln_linear(x, self.weight_ih, self.ln_ih_weight, self.ln_ih_bias, self.bias_ih, self.eps)  # (..., G·H)

    def recurrence(self, gi: Tensor, state: RNNState) -> tuple[Tensor, RNNState]:
        h = state.h
        e = ln_linear(h, self.weight_hh, self.ln_hh_weight, self.ln_hh_bias, self.bias_hh, self.eps)  # (B, 3H)
        a_r, a_z, a_n = gi.chunk(3, dim=-1)
        e_r, e_z, e_n = e.chunk(3, dim=-1)
        r = torch.sigmoid(a_r + e_r)
        z = torch.sigmoid(a_z + e_z)
        n = torch.tanh(a_n + r * e_n)
        h = (1 - z) * n + z * h
        return h, RNNState(h)

    def extra_repr(self) -> str:
        return _extra_repr(self)
