r"""The numbers behind the diagnostics: how far back a gradient reaches, and why.

Every function here works on any rnnkit cell (wrappers included) in float64 on a copy of the
cell, so a gradient of 1e-30 is still a number and the caller's cell is left untouched. States
are stepped with :class:`rnnkit.Recurrent`'s reference engine one step at a time, so each
state s(t) is a tensor of the autograd graph and can be differentiated against.

The quantities, for a run over steps t = 1 … T from the initial state s(0):

.. math::
    \nabla_{h(t)} L &= \Big(\frac{\partial h(t+1)}{\partial h(t)}\Big)^{\!\top} \nabla_{h(t+1)} L
        \quad (+\ \text{the direct term if the loss reads } h(t)) \\
    \frac{\partial s(T)}{\partial s(T-k)} &= J(T)\, J(T-1) \cdots J(T-k+1), \qquad
        J(t) = \frac{\partial s(t)}{\partial s(t-1)}

For the Elman cell :math:`J(t) = D(a(t))\, W` with :math:`D(a) = \mathrm{diag}(\phi'(a))`; with no
non-linearity and :math:`W = Q \Lambda Q^\top` the product is :math:`W^k = Q \Lambda^k Q^\top`,
whose norm is :math:`|\lambda_{\max}|^k`: it vanishes for :math:`|\lambda_{\max}| < 1` and explodes
for :math:`|\lambda_{\max}| > 1`. For the LSTM the cell path adds :math:`\mathrm{diag}(f(t))` to
:math:`\partial c(t)/\partial c(t-1)`, so a forget gate near 1 keeps it alive.

Symbols: T time steps, B batch, I input size, H hidden size, S the width of the flattened state
(the floating fields of a state side by side: H for Elman and GRU, 2H for the LSTM), K the
largest lag (K = T), P projection size.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..cells.base import RecurrentCell, resolve
from ..cells.state import is_state, map_state
from ..recurrent import Recurrent

LOSSES = ("last", "every")

# A gradient ratio (lag K over lag 0) below VANISHING is called vanishing, above EXPLODING
# exploding: three orders of magnitude either way, far beyond what a learning rate absorbs.
VANISHING = 1e-3
EXPLODING = 1e3

# A tanh unit is saturated when |tanh(a)| > 0.99 (its derivative 1 − tanh² is below 0.02), a
# sigmoid when σ(a) is outside [0.01, 0.99] (derivative below 0.0099), a ReLU when a ≤ 0.
SATURATION_THRESHOLD = 0.99


# -- arguments ---------------------------------------------------------------------------------
def check_cell(cell: Any, owner: str) -> RecurrentCell:
    """Return ``cell`` if it is an rnnkit cell, else raise naming what came."""
    if not isinstance(cell, RecurrentCell):
        raise TypeError(f"{owner}: cell must be an rnnkit cell (rnnkit.cells.*), got {type(cell).__name__}")
    return cell


def check_sequence(x: Any, cell: RecurrentCell, owner: str) -> Tensor:
    """Return ``x`` if it is a floating (T, B, I) tensor fitting ``cell``, else raise."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{owner}: x must be a tensor of shape (T, B, I), got {type(x).__name__}")
    if x.dim() != 3:
        raise ValueError(f"{owner}: x must have shape (T, B, I), got {x.dim()}-D shape {tuple(x.shape)}")
    if x.shape[-1] != cell.input_size:
        raise ValueError(
            f"{owner}: x has width {x.shape[-1]} (shape {tuple(x.shape)}), expected input_size={cell.input_size}"
        )
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{owner}: x needs at least one step and one sequence, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{owner}: x must be floating point, got dtype {x.dtype}")
    return x


def as_float64(cell: RecurrentCell, x: Tensor, state: Any = None) -> tuple[RecurrentCell, Tensor, Any]:
    """A float64 copy of the cell, input and state (integer fields such as a clock stay).

    The copy's parameters do not require gradients: the diagnostics differentiate with respect
    to states only, and autograd then does no work for the weights.
    """
    cell64 = copy.deepcopy(cell).double().requires_grad_(False)
    x64 = x.detach().double()
    if state is not None:
        state = map_state(lambda t: t.detach().double() if t.is_floating_point() else t.detach(), state)
    return cell64, x64, state


def check_size_arg(value: Any, name: str, owner: str) -> int:
    """Return ``value`` if it is an int ≥ 1, else raise ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}: {name} must be an int ≥ 1, got {value!r}")
    return value


# -- states as flat vectors ------------------------------------------------------------------
def state_fields(state: Any, prefix: str = "") -> list[tuple[str, Tensor]]:
    """The floating tensors of a state with their dotted field names, depth first.

    ``LSTMState(h, c)`` gives ``[("h", h), ("c", c)]``; a SkipCell's state gives
    ``[("inner.h", h), ("past", past)]``. Integer fields (a clockwork's step counter) are left out:
    nothing flows back through them.
    """
    if isinstance(state, Tensor):
        return [(prefix or "state", state)] if state.is_floating_point() else []
    if is_state(state):
        out = []
        for name, part in zip(state._fields, state):
            out += state_fields(part, f"{prefix}.{name}" if prefix else name)
        return out
    if isinstance(state, (tuple, list)):
        out = []
        for k, part in enumerate(state):
            out += state_fields(part, f"{prefix}.{k}" if prefix else str(k))
        return out
    raise TypeError(f"expected a state made of tensors and NamedTuples, got {type(state).__name__}")


def flatten_state(state: Any) -> Tensor:
    """The floating fields of a state side by side: (B, S)."""
    parts = [t.reshape(t.shape[0], -1) for _, t in state_fields(state)]  # (B, width) each
    return torch.cat(parts, dim=1)  # (B, S)


def unflatten_state(flat: Tensor, template: Any) -> Any:
    """Inverse of :func:`flatten_state`: ``template``'s structure with its floating fields taken
    from ``flat`` (B, S) and its integer fields kept."""
    offset = 0

    def take(t: Tensor) -> Tensor:
        nonlocal offset
        if not t.is_floating_point():
            return t
        width = t[0].numel()
        part = flat[:, offset : offset + width].reshape(t.shape)
        offset += width
        return part

    return map_state(take, template)


def field_slices(state: Any) -> dict[str, slice]:
    """Where each floating field sits in the flattened state: name → columns of (B, S)."""
    out, start = {}, 0
    for name, t in state_fields(state):
        width = t[0].numel()
        out[name] = slice(start, start + width)
        start += width
    return out


def output_field(cell: RecurrentCell, state: Any) -> str:
    """The name of the field that holds the cell's output h (``"h"``, ``"inner.h"``…)."""
    h = cell.output_of(state)
    for name, t in state_fields(state):
        if t is h:
            return name
    raise ValueError(f"{type(cell).__name__}: its output is not a field of its state")


def memory_field(state: Any) -> str | None:
    """The name of an LSTM memory field ``c`` (possibly nested), or None."""
    for name, _ in state_fields(state):
        if name.split(".")[-1] == "c":
            return name
    return None


# -- running a cell step by step ---------------------------------------------------------------
def unroll(cell: RecurrentCell, x: Tensor, state: Any = None) -> list[Any]:
    """States s(0), s(1), …, s(T) of ``cell`` over x (T, B, I), each a node of the autograd graph.

    Steps go through ``Recurrent(cell, engine="reference")`` one at a time, the library's own
    definition of the time loop, so the states are exactly those a layer computes.
    """
    layer = Recurrent(cell, engine="reference")
    states = [cell.prepare_state(state, x.shape[1], x.dtype, x.device)]
    for t in range(x.shape[0]):
        _, s = layer(x[t : t + 1], states[-1])  # x[t:t+1] is (1, B, I): one step
        states.append(s)
    return states


def loss_direction(hidden_size: int, seed: int, dtype=torch.float64) -> Tensor:
    """The fixed random unit vector w (H,) that the diagnostic loss projects h onto."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(hidden_size, generator=gen, dtype=torch.float64)
    return (w / w.norm()).to(dtype)


# -- gradient norm versus lag ----------------------------------------------------------------
@dataclass
class GradientFlow:
    r"""‖∂L/∂h(T−k)‖ for every lag k = 0 … T, each averaged over the batch.

    The loss is :math:`L = \sum_b w^\top h_b(T)` (``loss="last"``) or
    :math:`L = \sum_t \sum_b w^\top h_b(t)` (``loss="every"``) with w a fixed random unit vector,
    so at lag 0 of the last-step loss every row's gradient is w, of norm 1.

    Attributes:
        loss: ``"last"`` or ``"every"``.
        grad_norm: (K+1,) mean over the batch of ‖∂L/∂h_b(T−k)‖, index k.
        memory_grad_norm: the same for the LSTM memory c, or None for cells without one.
        unit_grad: (K+1, H) mean over the batch of ``|∂L/∂h_{b,u}(T−k)|``, per unit u.
    """

    loss: str
    grad_norm: Tensor
    memory_grad_norm: Tensor | None
    unit_grad: Tensor

    @property
    def lags(self) -> list[int]:
        """The lags k = 0 … T."""
        return list(range(self.grad_norm.shape[0]))

    def ratio(self, lag: int) -> float:
        """‖∂L/∂h(T−lag)‖ / ‖∂L/∂h(T)‖."""
        return float(self.grad_norm[lag] / self.grad_norm[0])

    def to_dict(self) -> dict:
        """The numbers as JSON-ready lists and floats (inf/NaN as None)."""
        return {
            "loss": self.loss,
            "lags": self.lags,
            "grad_norm": tolist(self.grad_norm),
            "memory_grad_norm": None if self.memory_grad_norm is None else tolist(self.memory_grad_norm),
            "unit_grad": tolist(self.unit_grad),
        }


def gradient_vs_lag(
    cell: RecurrentCell, x: Tensor, state: Any = None, *, loss: str = "last", seed: int = 0
) -> GradientFlow:
    """Measure ‖∂L/∂h(T−k)‖ for k = 0 … T by back-propagation through ``cell`` over ``x``.

    Args:
        cell: any rnnkit cell (left unchanged; a float64 copy is differentiated).
        x: the input, (T, B, I).
        state: the initial state s(0), or None for zeros.
        loss: ``"last"`` — a loss on h(T) only, the long-range case; ``"every"`` — a loss on
            every step, as in sequence labelling.
        seed: picks the loss direction w.

    Returns:
        a :class:`GradientFlow`; lag k is step T − k, lag T the initial state.
    """
    owner = "gradient_vs_lag"
    check_cell(cell, owner)
    check_sequence(x, cell, owner)
    if loss not in LOSSES:
        raise ValueError(f"{owner}: loss must be one of {', '.join(map(repr, LOSSES))}, got {loss!r}")
    cell, x, state = as_float64(cell, x, state)
    state = cell.prepare_state(state, x.shape[1], x.dtype, x.device)
    # s(0) as leaves, so the gradient reaches lag T too
    state = map_state(lambda t: t.clone().requires_grad_() if t.is_floating_point() else t, state)
    with torch.enable_grad():  # also under a caller's no_grad: these gradients are the result
        states = unroll(cell, x, state)
        h_name = output_field(cell, states[0])
        c_name = memory_field(states[0])
        hs = [dict(state_fields(s))[h_name] for s in states]  # h(0) … h(T), each (B, H)
        cs = [dict(state_fields(s))[c_name] for s in states] if c_name else []
        w = loss_direction(cell.hidden_size, seed)
        if loss == "last":
            L = (hs[-1] @ w).sum()
        else:
            L = sum((h @ w).sum() for h in hs[1:])
        grads = torch.autograd.grad(L, hs + cs, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, hs + cs)]
    gh = torch.stack(grads[: len(hs)][::-1])  # (K+1, B, H), index k = lag
    grad_norm = gh.norm(dim=-1).mean(dim=1)  # (K+1,)
    memory = None
    if c_name:
        gc = torch.stack(grads[len(hs) :][::-1])  # (K+1, B, H)
        memory = gc.norm(dim=-1).mean(dim=1)
    return GradientFlow(
        loss, grad_norm.detach(), None if memory is None else memory.detach(), gh.abs().mean(dim=1).detach()
    )


# -- Jacobian products ------------------------------------------------------------------------
def step_jacobian(cell: RecurrentCell, x_t: Tensor, state: Any) -> Tensor:
    r"""J = ∂s(t)/∂s(t−1) of one step, per sequence: (B, S, S), rows the new state's entries.

    One backward pass gives all rows: each sequence is repeated S times, copy i of sequence b
    gets the output gradient e_i, and the gradient reaching its old state is row i of J_b,
    :math:`e_i^\top J_b`. Sequences do not interact, so the copies do not either.

    Args:
        cell: any rnnkit cell.
        x_t: the input of the step, (B, I).
        state: s(t−1) (its tensors are not modified).
    """
    layer = Recurrent(cell, engine="reference")
    B = x_t.shape[0]
    S = flatten_state(state).shape[1]
    repeated = map_state(lambda t: t.detach().repeat_interleave(S, dim=0), state)  # (B·S, ...) per field
    with torch.enable_grad():
        flat = flatten_state(repeated).requires_grad_()  # (B·S, S)
        _, new = layer(x_t.detach().repeat_interleave(S, dim=0).unsqueeze(0), unflatten_state(flat, repeated))
        seeds = torch.eye(S, dtype=flat.dtype, device=flat.device).repeat(B, 1)  # (B·S, S): copy (b, i) gets e_i
        (rows,) = torch.autograd.grad(flatten_state(new), flat, seeds, allow_unused=True)
    if rows is None:  # the new state does not read the old one at all
        rows = torch.zeros_like(flat)
    return rows.view(B, S, S)  # (B, S_out, S_in)


@dataclass
class JacobianProducts:
    r"""Norms and top singular values of :math:`\partial s(T)/\partial s(T-k)`, k = 0 … T.

    ``blocks`` are the diagonal blocks of the product for the hidden-sized fields of the state
    (H × H each): ``"h"`` for Elman and GRU; ``"h"`` and ``"c"`` for the LSTM, where ``"h"`` is
    ∂h(T)/∂h(T−k) with c(T−k) held fixed and ``"c"`` the cell path ∂c(T)/∂c(T−k) with h(T−k)
    held fixed; ``"inner.h"`` for a SkipCell, whose history field ``past`` (d·H wide) is left
    out: its block would cost (d·H)³ per lag, and the skip path's effect on the gradient is
    measured exactly by :func:`gradient_vs_lag`.

    Attributes:
        blocks: block name → (K+1,) spectral norm, averaged over the batch.
        singular_values: block name → (K+1, top) the largest singular values, averaged over the batch.
        output_block: the block of the cell's output h.
    """

    blocks: dict[str, Tensor]
    singular_values: dict[str, Tensor]
    output_block: str

    def to_dict(self) -> dict:
        """The numbers as JSON-ready lists and floats (inf/NaN as None)."""
        return {
            "output_block": self.output_block,
            "norm": {k: tolist(v) for k, v in self.blocks.items()},
            "singular_values": {k: tolist(v) for k, v in self.singular_values.items()},
        }


def jacobian_products(
    cell: RecurrentCell, x: Tensor, state: Any = None, *, top: int = 4, sequences: int | None = None
) -> JacobianProducts:
    r"""∂s(T)/∂s(T−k) for k = 0 … T along the run of ``cell`` over ``x``, by multiplying the
    per-step Jacobians :math:`J(T) \cdots J(T-k+1)` (:func:`step_jacobian`) in float64.

    Ending at T makes the products the ones a last-step loss back-propagates through:
    :math:`\nabla_{h(T-k)} L = (\partial h(T)/\partial h(T-k))^\top w` for an Elman cell.

    The cost is about T · B · S³ (the products) plus T · B · S · P · H (the step Jacobians):
    for a 256-unit LSTM over 100 steps, tens of seconds per sequence. ``sequences`` limits the
    batch average to the first few sequences.

    Args:
        cell: any rnnkit cell; x (T, B, I); state s(0) or None.
        top: how many of the largest singular values to keep.
        sequences: average over the first this many of the B sequences (None: all).
    """
    owner = "jacobian_products"
    check_cell(cell, owner)
    check_sequence(x, cell, owner)
    check_size_arg(top, "top", owner)
    if sequences is not None:
        check_size_arg(sequences, "sequences", owner)
        x = x[:, :sequences]
        if state is not None:
            state = map_state(lambda t: t[:sequences], state)
    cell, x, state = as_float64(cell, x, state)
    with torch.no_grad():
        states = unroll(cell, x, state)
    H = cell.hidden_size
    slices = {name: cols for name, cols in field_slices(states[0]).items() if cols.stop - cols.start == H}
    B, T = x.shape[1], x.shape[0]
    S = flatten_state(states[0]).shape[1]
    product = torch.eye(S, dtype=x.dtype).expand(B, S, S)  # ∂s(T)/∂s(T) = I, (B, S, S)
    norms: dict[str, list[Tensor]] = {k: [] for k in slices}
    svals: dict[str, list[Tensor]] = {k: [] for k in slices}
    for k in range(T + 1):
        if k > 0:
            product = product @ step_jacobian(cell, x[T - k], states[T - k])  # · J(T−k+1)
        for name, cols in slices.items():
            block = product[:, cols, cols]
            if torch.isfinite(block).all():
                sv = torch.linalg.svdvals(block)  # (B, min dim), descending
            else:  # past float64's range: the product has exploded
                sv = torch.full((B, block.shape[-1]), math.inf, dtype=x.dtype)
            n = min(top, sv.shape[1])
            padded = torch.full((B, top), math.nan, dtype=x.dtype)
            padded[:, :n] = sv[:, :n]
            norms[name].append(sv[:, 0].mean())
            svals[name].append(padded.mean(0))
    return JacobianProducts(
        {k: torch.stack(v) for k, v in norms.items()},
        {k: torch.stack(v) for k, v in svals.items()},
        output_field(cell, states[0]),
    )


# -- the recurrent matrices and their spectra ---------------------------------------------------
def recurrent_matrices(cell: RecurrentCell) -> dict[str, Tensor]:
    r"""The matrices that multiply the previous hidden state, by name, detached — those the cell's
    :class:`~rnnkit.cells.base.CellStructure` lists in ``recurrent_matrices``, each times its mask.

    * the first, the cell's own W: one block per gate when it has several — LSTM ``"i", "f",
      "g", "o"`` (torch's order; i, f, o have H/k rows with memory blocks of k cells), GRU
      ``"r", "z", "n"`` — else ``"W"`` (Elman; clockwork W ⊙ M, the connections it keeps);
    * a leaky cell (``leak``) around a one-block W also gets ``"effective"``,
      :math:`\mathrm{diag}(\alpha) + \mathrm{diag}(1-\alpha)\, W`, the step's Jacobian at a = 0;
    * the others by their path with ``weight_`` dropped: a SkipCell's ``"skip"``, W_s (P, H),
      which reads h(t − d); a deep transition's ``"mlp_hh.layers.0.weight"``; an attention
      cell's ``"query.weight"``.
    """
    check_cell(cell, "recurrent_matrices")
    s = cell.structure
    if not s.recurrent_matrices:
        raise TypeError(f"recurrent_matrices: {type(cell).__name__} lists no recurrent matrix in its structure")
    masks = dict(s.masks)
    out: dict[str, Tensor] = {}
    for k, path in enumerate(s.recurrent_matrices):
        W = resolve(cell, path)
        if path in masks:
            W = W * resolve(cell, masks[path])
        W = W.detach()
        if k > 0:
            out[_matrix_label(path)] = W
        elif len(s.gates) > 1:
            out.update({name: W[rows] for name, rows in s.gates})
        else:
            out["W"] = W
            if s.leak is not None:
                alpha = resolve(cell, s.leak).detach().to(W.dtype)
                out["effective"] = torch.diag(alpha) + (1 - alpha).unsqueeze(1) * W
    return out


def _matrix_label(path: str) -> str:
    """A recurrent matrix's name in :func:`recurrent_matrices`: its path with the last part's
    ``weight_`` dropped (``"weight_skip"`` → ``"skip"``, ``"cell.weight_skip"`` → ``"cell.skip"``)."""
    head, dot, last = path.rpartition(".")
    return head + dot + (last[len("weight_") :] if last.startswith("weight_") else last)


@dataclass
class MatrixSpectrum:
    r"""One recurrent matrix W: eigenvalues, singular values and ‖W^t‖₂ for t = 0 … max_power.

    Eigenvalues and powers exist only for square matrices (``eigenvalues`` and ``power_norms``
    are None otherwise). ``spectral_radius`` is :math:`\max |\lambda|`; for large t,
    :math:`\|W^t\|^{1/t} \to` the spectral radius (Gelfand), so it decides vanishing or explosion
    of the linear recurrence.
    """

    shape: tuple[int, int]
    eigenvalues: Tensor | None  # (H,) complex
    spectral_radius: float | None
    singular_values: Tensor  # (min(shape),) descending
    power_norms: Tensor | None  # (max_power + 1,)

    def to_dict(self) -> dict:
        """The numbers as JSON-ready lists and floats; eigenvalues as [re, im] pairs."""
        eig = None
        if self.eigenvalues is not None:
            eig = [[float(z.real), float(z.imag)] for z in self.eigenvalues]
        return {
            "shape": list(self.shape),
            "eigenvalues": eig,
            "spectral_radius": self.spectral_radius,
            "singular_values": tolist(self.singular_values),
            "power_norms": None if self.power_norms is None else tolist(self.power_norms),
        }


def matrix_spectrum(W: Tensor, max_power: int = 100) -> MatrixSpectrum:
    """Eigenvalues, spectral radius, singular values and ‖W^t‖₂ (t = 0 … max_power) of ``W``, in float64."""
    if not isinstance(W, Tensor) or W.dim() != 2:
        raise ValueError(f"matrix_spectrum: W must be a 2-D tensor, got {getattr(W, 'shape', type(W).__name__)}")
    if isinstance(max_power, bool) or not isinstance(max_power, int) or max_power < 0:
        raise ValueError(f"matrix_spectrum: max_power must be an int ≥ 0, got {max_power!r}")
    W = W.detach().double()
    sv = torch.linalg.svdvals(W)
    if W.shape[0] != W.shape[1]:
        return MatrixSpectrum(tuple(W.shape), None, None, sv, None)
    eig = torch.linalg.eigvals(W)
    power = torch.eye(W.shape[0], dtype=W.dtype)
    norms = []
    for t in range(max_power + 1):
        if t > 0:
            power = power @ W  # W^t
        norms.append(
            torch.linalg.matrix_norm(power, ord=2)
            if torch.isfinite(power).all()
            else torch.tensor(math.inf, dtype=W.dtype)
        )
    return MatrixSpectrum(tuple(W.shape), eig, float(eig.abs().max()), sv, torch.stack(norms))


def spectrum(cell: RecurrentCell, max_power: int = 100) -> dict[str, MatrixSpectrum]:
    """:func:`matrix_spectrum` of each of the cell's :func:`recurrent_matrices`."""
    return {name: matrix_spectrum(W, max_power) for name, W in recurrent_matrices(cell).items()}


# -- saturation ---------------------------------------------------------------------------------
_KINDS = {
    torch.tanh: "tanh",
    Tensor.tanh: "tanh",
    F.tanh: "tanh",
    torch.sigmoid: "sigmoid",
    Tensor.sigmoid: "sigmoid",
    F.sigmoid: "sigmoid",
    torch.relu: "relu",
    Tensor.relu: "relu",
    F.relu: "relu",
}


class _RecordNonlinearities(TorchFunctionMode):
    """Records the argument of every tanh, sigmoid and ReLU called while it is active."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, Tensor]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kind = _KINDS.get(func)
        if kind is not None:
            self.calls.append((kind, args[0].detach()))
        return func(*args, **(kwargs or {}))


def nonlinearity_names(cell: RecurrentCell) -> list[str] | None:
    """Names of the non-linearities of one step, in the order the cell calls them, or None if unknown.

    The cell's structure says (``CellStructure.nonlinearities``): Elman and clockwork ``a``; GRU
    ``r, z, n``; LSTM ``g, i, f, o`` (its gates) and ``c`` (the tanh of the new memory); leaky and
    skip cells the wrapped cell's.
    """
    names = cell.structure.nonlinearities
    return None if names is None else list(names)


@dataclass
class Histogram:
    """Counts of values in equal bins between ``edges[0]`` and ``edges[-1]``."""

    edges: Tensor  # (bins + 1,)
    counts: Tensor  # (bins,)

    @classmethod
    def of(cls, values: Tensor, bins: int = 40, lo: float | None = None, hi: float | None = None) -> Histogram:
        """The histogram of ``values`` over [lo, hi] (default: their own range)."""
        values = values.flatten().double()
        lo = float(values.min()) if lo is None else lo
        hi = float(values.max()) if hi is None else hi
        if hi <= lo:
            hi = lo + 1e-6
        counts = torch.histc(values, bins=bins, min=lo, max=hi)
        return cls(torch.linspace(lo, hi, bins + 1, dtype=torch.float64), counts)

    def to_dict(self) -> dict:
        """The numbers as JSON-ready lists and floats (inf/NaN as None)."""
        return {"edges": tolist(self.edges), "counts": [int(c) for c in self.counts]}


@dataclass
class NonlinearityStats:
    """One non-linearity of a cell over a run: how often it saturates, and its values.

    Attributes:
        kind: ``"tanh"``, ``"sigmoid"`` or ``"relu"``.
        saturated: share of (step, sequence, unit) entries saturated (see ``SATURATION_THRESHOLD``).
        mean_derivative: mean of φ'(a) — the diagonal of D(a) in the Jacobian.
        pre_activation: histogram of a; value: histogram of φ(a).
    """

    kind: str
    saturated: float
    mean_derivative: float
    pre_activation: Histogram
    value: Histogram

    def to_dict(self) -> dict:
        """The numbers as JSON-ready lists and floats (inf/NaN as None)."""
        return {
            "kind": self.kind,
            "saturated": self.saturated,
            "mean_derivative": self.mean_derivative,
            "pre_activation": self.pre_activation.to_dict(),
            "value": self.value.to_dict(),
        }


def nonlinearity_stats(
    kind: str, a: Tensor, threshold: float = SATURATION_THRESHOLD, bins: int = 40
) -> NonlinearityStats:
    """Saturation, mean derivative and histograms of φ(a) for φ of ``kind`` over pre-activations ``a``."""
    a = a.double()
    if kind == "tanh":
        v = torch.tanh(a)
        sat, deriv, vrange = v.abs() > threshold, 1 - v * v, (-1.0, 1.0)
    elif kind == "sigmoid":
        v = torch.sigmoid(a)
        sat, deriv, vrange = (v > threshold) | (v < 1 - threshold), v * (1 - v), (0.0, 1.0)
    elif kind == "relu":
        v = torch.relu(a)
        sat, deriv, vrange = a <= 0, (a > 0).double(), (0.0, max(float(v.max()), 1e-6))
    else:
        raise ValueError(f"nonlinearity_stats: kind must be 'tanh', 'sigmoid' or 'relu', got {kind!r}")
    return NonlinearityStats(
        kind,
        float(sat.double().mean()),
        float(deriv.mean()),
        Histogram.of(a, bins),
        Histogram.of(v, bins, *vrange),
    )


def record_nonlinearities(cell: RecurrentCell, x: Tensor, state: Any = None) -> dict[str, tuple[str, Tensor]]:
    """The pre-activation of every non-linearity of ``cell`` over the run on ``x``.

    Returns name → (kind, values of shape (T, B, width)); names from :func:`nonlinearity_names`,
    or ``"tanh0", "sigmoid1", …`` by call order for a cell it does not know.
    """
    owner = "record_nonlinearities"
    check_cell(cell, owner)
    check_sequence(x, cell, owner)
    cell, x, state = as_float64(cell, x, state)
    layer = Recurrent(cell, engine="reference")
    state = cell.prepare_state(state, x.shape[1], x.dtype, x.device)
    per_step = []
    with torch.no_grad():
        for t in range(x.shape[0]):
            with _RecordNonlinearities() as rec:
                _, state = layer(x[t : t + 1], state)
            per_step.append(rec.calls)
    kinds = [kind for kind, _ in per_step[0]]
    names = nonlinearity_names(cell)
    if names is None or len(names) != len(kinds):
        names = [f"{kind}{j}" for j, kind in enumerate(kinds)]
    return {
        name: (kind, torch.stack([calls[j][1] for calls in per_step]))
        for j, (name, kind) in enumerate(zip(names, kinds))
    }


def saturation(
    cell: RecurrentCell, x: Tensor, state: Any = None, threshold: float = SATURATION_THRESHOLD
) -> dict[str, NonlinearityStats]:
    """How saturated each non-linearity of ``cell`` is over the run on ``x`` (T, B, I).

    Saturated units have φ'(a) near 0, so D(a) in every Jacobian J(t) = D(a(t)) W shrinks the
    gradient flowing through them.
    """
    if not (isinstance(threshold, float) and 0.5 < threshold < 1):
        raise ValueError(f"saturation: threshold must be a float in (0.5, 1), got {threshold!r}")
    return {
        name: nonlinearity_stats(kind, a, threshold)
        for name, (kind, a) in record_nonlinearities(cell, x, state).items()
    }


# -- time scales of leaky and clockwork cells -------------------------------------------------
@dataclass
class TimeScales:
    """The time scales built into a leaky or clockwork cell, against the measured gradient decay.

    Attributes:
        kind: ``"leaky"`` (per-unit time constant τ = 1/(1 − α)) or ``"clockwork"`` (period).
        per_unit: (H,) τ or period of each unit.
        groups: label → indices of the units in the group (τ quartiles, or one period each).
        group_grad: label → (K+1,) mean over the group's units of the per-unit gradient.
        group_decay_time: label → the measured decay time of that curve (:func:`decay_time`).
        group_scale: label → the group's own time scale (median τ, or its period).
    """

    kind: str
    per_unit: Tensor
    groups: dict[str, Tensor]
    group_grad: dict[str, Tensor] = field(default_factory=dict)
    group_decay_time: dict[str, float] = field(default_factory=dict)
    group_scale: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The numbers as JSON-ready lists and floats (inf/NaN as None)."""
        return {
            "kind": self.kind,
            "per_unit": tolist(self.per_unit),
            "groups": {k: [int(i) for i in v] for k, v in self.groups.items()},
            "group_scale": {k: finite(v) for k, v in self.group_scale.items()},
            "group_decay_time": {k: finite(v) for k, v in self.group_decay_time.items()},
            "group_grad": {k: tolist(v) for k, v in self.group_grad.items()},
        }


def time_scales(cell: RecurrentCell, flow: GradientFlow | None = None, num_groups: int = 4) -> TimeScales | None:
    """The time constants (leaky) or periods (clockwork) of ``cell``, or None if it has neither.

    With ``flow`` (a :func:`gradient_vs_lag` result for this cell), each group's gradient decay
    is measured from the per-unit gradients, to set beside the group's built-in time scale.
    """
    check_cell(cell, "time_scales")
    s = cell.structure  # a leak outranks a clock: a leaky cell can wrap a clockwork one, not the reverse
    if s.leak is None and s.unit_periods is None:
        return None
    groups: dict[str, Tensor] = {}
    scale: dict[str, float] = {}
    if s.leak is not None:
        tau = (1.0 / (1.0 - resolve(cell, s.leak).detach())).double().cpu()  # (H,) τ = 1/(1 − α)
        order = torch.argsort(tau)
        for idx in order.tensor_split(min(num_groups, tau.numel())):
            label = f"τ {float(tau[idx].min()):.3g}–{float(tau[idx].max()):.3g}"
            groups[label] = idx
            scale[label] = float(tau[idx].median())
        result = TimeScales("leaky", tau, groups)
    else:
        unit_period = resolve(cell, s.unit_periods).cpu()  # (H,)
        period = unit_period.double()
        for p in torch.unique_consecutive(unit_period).tolist():  # the groups, in the cell's order
            label = f"period {p}"
            groups[label] = torch.nonzero(unit_period == p).flatten()
            scale[label] = float(p)
        result = TimeScales("clockwork", period, groups)
    result.group_scale = scale
    if flow is not None:
        for label, idx in groups.items():
            curve = flow.unit_grad[:, idx].mean(dim=1)  # (K+1,)
            result.group_grad[label] = curve
            result.group_decay_time[label] = decay_time(curve)[1]
    return result


# -- reading a gradient curve -----------------------------------------------------------------
def decay_time(curve: Tensor) -> tuple[float, float]:
    r"""Fit :math:`\log g(k) \approx a + k \log \rho` over the lags k ≥ 1 with finite g > 0.

    Returns ``(rate, time)``: ρ, the factor per step, and the decay time −1/log ρ in steps
    (inf when the curve does not decay; −time is the growth time of an exploding curve). NaN
    if fewer than two usable lags.
    """
    g = curve.detach().double().cpu()
    k = torch.arange(g.shape[0], dtype=torch.float64)
    ok = (k >= 1) & torch.isfinite(g) & (g > 0)
    if int(ok.sum()) < 2:
        return math.nan, math.nan
    kk, y = k[ok], torch.log(g[ok])
    slope = float(((kk - kk.mean()) * (y - y.mean())).sum() / ((kk - kk.mean()) ** 2).sum())
    return math.exp(slope), (math.inf if slope == 0 else -1.0 / slope)


def verdict(ratio: float) -> str:
    """``"vanishing"`` below ``VANISHING``, ``"exploding"`` above ``EXPLODING``, else ``"kept"``."""
    if not math.isfinite(ratio):
        return "exploding" if ratio > 0 else "undefined"
    if ratio < VANISHING:
        return "vanishing"
    if ratio > EXPLODING:
        return "exploding"
    return "kept"


# -- training logs: clipping --------------------------------------------------------------------
@dataclass
class TrainingLog:
    """The pre-clip global gradient norm of each logged update, and the clip threshold.

    Attributes:
        steps, grad_norm, loss: one entry per update that logged a ``grad_norm``.
        clip: the threshold per update (None where the log gave none).
    """

    steps: list[int]
    grad_norm: list[float]
    loss: list[float | None]
    clip: list[float | None]

    @property
    def clipped(self) -> list[bool]:
        """Which updates were clipped (their norm above their threshold)."""
        return [c is not None and g > c for g, c in zip(self.grad_norm, self.clip)]

    def summary(self) -> dict:
        """Updates, the last clip threshold, the share of updates clipped, max and median norm."""
        norms = torch.tensor(self.grad_norm, dtype=torch.float64)
        clips = [c for c in self.clip if c is not None]
        return {
            "updates": len(self.steps),
            "clip": clips[-1] if clips else None,
            "clipped_share": sum(self.clipped) / len(self.steps),
            "grad_norm_max": float(norms.max()),
            "grad_norm_median": float(norms.median()),
        }

    def to_dict(self) -> dict:
        """The numbers as JSON-ready lists and floats (inf/NaN as None)."""
        return {
            "steps": self.steps,
            "grad_norm": [finite(g) for g in self.grad_norm],
            "loss": [None if v is None else finite(v) for v in self.loss],
            "clip": self.clip,
            "summary": {k: finite(v) if isinstance(v, float) else v for k, v in self.summary().items()},
        }


def read_training_log(path: str | Path) -> TrainingLog:
    """Read a trainer's ``metrics.jsonl``: one JSON object per line.

    Lines with a numeric ``grad_norm`` (and ``"kind": "train"`` or no kind) are updates
    (``step``, ``grad_norm``, optional ``loss`` and ``clip``); other lines (``"kind": "val"``
    records, blank lines) are skipped and unknown keys ignored. Raises FileNotFoundError if the file
    is missing and ValueError naming the line if a line is not JSON or the file holds no update.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training log {str(path)!r} does not exist")
    log = TrainingLog([], [], [], [])
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"training log {str(path)!r} line {number} is not JSON: {e.msg}") from None
        if not isinstance(record, dict) or record.get("kind", "train") != "train":
            continue  # validation and other records
        norm = record.get("grad_norm")
        if isinstance(norm, bool) or not isinstance(norm, (int, float)):
            continue
        step = record.get("step", len(log.steps) + 1)
        clip = record.get("clip")
        loss = record.get("loss")
        log.steps.append(int(step))
        log.grad_norm.append(float(norm))
        log.clip.append(float(clip) if isinstance(clip, (int, float)) and not isinstance(clip, bool) else None)
        log.loss.append(float(loss) if isinstance(loss, (int, float)) and not isinstance(loss, bool) else None)
    if not log.steps:
        raise ValueError(f"training log {str(path)!r} has no line with a grad_norm")
    return log


# -- models ---------------------------------------------------------------------------------------
def recurrent_layers(model: nn.Module) -> list[tuple[str, Recurrent]]:
    """Every :class:`rnnkit.Recurrent` inside ``model`` with its module name, in module order."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"recurrent_layers: model must be an nn.Module, got {type(model).__name__}")
    return [(name or "layer", m) for name, m in model.named_modules() if isinstance(m, Recurrent)]


def capture_layer_inputs(model: nn.Module, run: Callable[[nn.Module], Any]) -> dict[str, tuple[Tensor, Any]]:
    """The input (T, B, I) and initial state each Recurrent layer of ``model`` receives while
    ``run(model)`` is called (in eval mode, without gradients).

    A batch-first layer's input is turned time-major, and a reversed layer's is flipped in
    time, so that step t of the result is the layer's t-th step; lag k then counts steps of
    the layer's own recurrence. During the call every layer runs on the reference engine: a
    stack of native layers would otherwise run as one torch kernel call, and the inputs of
    its upper layers would never exist as tensors.
    """
    captured: dict[str, tuple[Tensor, Any]] = {}
    handles = []
    layers = recurrent_layers(model)
    engines = [layer.engine for _, layer in layers]
    for name, layer in layers:

        def hook(module, args, kwargs, name=name):
            x = args[0] if args else kwargs["x"]
            state = args[1] if len(args) > 1 else kwargs.get("state")
            if module.batch_first:
                x = x.transpose(0, 1)  # (T, B, I)
            if module.reverse:
                x = x.flip(0)
            if name not in captured:  # the first call: a model may call a layer again
                captured[name] = (
                    x.detach().clone(),
                    None if state is None else map_state(lambda t: t.detach().clone(), state),
                )

        handles.append(layer.register_forward_pre_hook(hook, with_kwargs=True))
    was_training = model.training
    model.eval()
    try:
        for _, layer in layers:
            layer.engine = "reference"  # same computation, one layer at a time
        with torch.no_grad():
            run(model)
    finally:
        for h in handles:
            h.remove()
        for (_, layer), engine in zip(layers, engines):
            layer.engine = engine
        model.train(was_training)
    return captured


def untrained_copy(cell: RecurrentCell) -> RecurrentCell:
    """A copy of ``cell`` with freshly initialised parameters (every ``reset_parameters`` called)."""
    fresh = copy.deepcopy(cell)
    for m in fresh.modules():
        reset = getattr(m, "reset_parameters", None)
        if callable(reset):
            reset()
    return fresh


# -- JSON ---------------------------------------------------------------------------------------
def finite(v: float) -> float | None:
    """``v`` as a float, or None for inf/NaN (JSON has neither)."""
    v = float(v)
    return v if math.isfinite(v) else None


def tolist(t: Tensor) -> list:
    """A real tensor as nested lists of floats, inf/NaN as None."""
    t = t.detach().double().cpu()
    if t.dim() == 0:
        return finite(t)
    return [tolist(r) if t.dim() > 1 else finite(r) for r in t]
