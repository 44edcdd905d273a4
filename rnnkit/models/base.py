"""What every model shares: the decoding protocol, the decoder state, and one step of a layer.

The decoding protocol, kept by every model whose outputs feed back (Jordan network,
vector → sequence, output-recurrent sequence → sequence, the seq2seq decoder):

* ``start(batch_size=None, context=None) -> state`` — the state before the first step;
* ``step(y_prev, state) -> (StepOutput, state)`` — one step given the previous output:
  (B,) int64 token ids for discrete models (``bos`` at the first step), (B, O) floats for
  real-valued ones (zeros at the first step);
* ``forward(...)`` — all steps at once, teacher-forced, as one batched pass through
  ``Recurrent``/``Stack``; it returns a :class:`SequenceOutput`.

Every tensor of a state has the batch on dim 0, so a beam search can reorder it with
``map_state(lambda t: t.index_select(0, idx), state)``; parts a model does not use are
zero-width tensors, never None.

Symbols: T time, B batch, I per-step input, E embedding, H hidden, V vocabulary, O real output
size, C context size, L the largest length a length head predicts.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..cells.base import RecurrentCell, check_size, dtype_hint, from_torch_hint, not_a_tensor
from ..cells.state import is_state, map_state, state_tensors
from ..compose import Bidirectional, Stack
from ..recurrent import Recurrent


class StepOutput(NamedTuple):
    """One decoding step's result.

    ``logits`` (B, V): unnormalised scores for discrete outputs, or (B, O) predicted values for
    real outputs. ``halt`` (B,): the halt logit, P(sequence ends after this step) =
    sigmoid(halt); None if the model has no halt head. A model with a length head returns
    −inf before its predicted τ-th step and +inf from it on.
    """

    logits: Tensor
    halt: Tensor | None = None


class SequenceOutput(NamedTuple):
    """A teacher-forced pass: ``logits`` (T, B, V) or values (T, B, O); ``halt`` logits (T, B)
    with a halt head; ``length`` logits (B, L) with a length head (class k ↔ τ = k + 1)."""

    logits: Tensor
    halt: Tensor | None = None
    length: Tensor | None = None


class DecoderState(NamedTuple):
    """A decoder's state between steps; every field has the batch on dim 0.

    * ``layer`` — the recurrent layer's state (a cell state, or a tuple of per-layer states);
      a (B, 0) tensor for a model without hidden recurrence (Jordan);
    * ``step`` (B,) int64 — steps taken so far, t;
    * ``inputs`` (B, T, I) — the per-step inputs x(1..T) read at step t, or (B, 0, 0);
    * ``context`` (B, C) — the conditioning vector, or (B, 0);
    * ``remaining`` (B,) int64 — τ − t, the steps left before the predicted length is reached;
      −1 for a model without a length head.
    """

    layer: Any
    step: Tensor
    inputs: Tensor
    context: Tensor
    remaining: Tensor


# -- layers: what a model may be built from ------------------------------------------------------


def as_layer(layer: Any, owner: str, *, steppable: bool = False) -> nn.Module:
    """A bare cell becomes ``Recurrent(cell)``; a layer is checked and returned.

    A layer is anything with ``forward(x, state, lengths)`` and ``input_size``/``output_size``
    (``Recurrent``, ``Bidirectional``, ``Stack``, the stacks of :mod:`rnnkit.models.deep`),
    time-major. With ``steppable`` the layer must run one step at a time, which rules out
    backward directions: a decoder cannot read the future it is generating.
    """
    if isinstance(layer, RecurrentCell):
        layer = Recurrent(layer)
    if not isinstance(layer, nn.Module) or not all(hasattr(layer, a) for a in ("input_size", "output_size")):
        raise TypeError(
            f"{owner}: layer must be an rnnkit cell or layer (Recurrent, Stack, ...), got {type(layer).__name__}"
            + from_torch_hint(layer)
        )
    if getattr(layer, "batch_first", False):
        raise ValueError(f"{owner}: models are time-major, (T, B, ·); got a layer with batch_first=True")
    if steppable:
        check_steppable(layer, owner)
    return layer


def check_steppable(layer: nn.Module, owner: str) -> None:
    """Raise unless ``layer`` can be run one step at a time by :func:`layer_step`."""
    if isinstance(layer, Recurrent):
        if layer.reverse:
            raise ValueError(f"{owner}: a decoder's layer must run forward in time, got Recurrent(reverse=True)")
    elif isinstance(layer, Bidirectional):
        raise ValueError(f"{owner}: a decoder's layer must run forward in time, got a Bidirectional layer")
    elif isinstance(layer, Stack):
        for sub in layer.layers:
            check_steppable(sub, owner)
    elif not hasattr(layer, "step"):
        raise TypeError(f"{owner}: cannot step a {type(layer).__name__} one time step at a time (it has no .step)")
    else:
        for sub in getattr(layer, "layers", ()):  # a deep stack steps its layers in turn
            check_steppable(sub, owner)


def layer_init_state(layer: nn.Module, batch_size: int, dtype: torch.dtype, device: torch.device) -> Any:
    """The zero state of a layer for ``batch_size`` sequences (a tuple per layer for stacks)."""
    if isinstance(layer, Recurrent):
        return layer.cell.init_state(batch_size, dtype=dtype, device=device)
    if isinstance(layer, Bidirectional):
        from ..compose import BidirectionalState

        return BidirectionalState(
            layer_init_state(layer.forward_layer, batch_size, dtype, device),
            layer_init_state(layer.backward_layer, batch_size, dtype, device),
        )
    if isinstance(layer, Stack):
        return tuple(layer_init_state(sub, batch_size, dtype, device) for sub in layer.layers)
    return layer.init_state(batch_size, dtype=dtype, device=device)


def layer_step(layer: nn.Module, x: Tensor, state: Any) -> tuple[Tensor, Any]:
    """One time step of a layer: each of its cells stepped once (:meth:`RecurrentCell.step
    <rnnkit.cells.RecurrentCell.step>` on a state the model built, the checked ``forward`` on
    any other or where the cell has forward hooks).

    x (B, I) → output (B, output_size). A stack applies its between-layer dropout as its
    ``forward`` does, so a step in training mode is a step of the same stochastic network.
    """
    if isinstance(layer, Recurrent):
        cell = layer.cell
        # a state the decoder built (a NamedTuple) takes the unchecked step — unless hooks on the
        # cell want to see its forward — any other state forward's checks
        if is_state(state) and not (cell._forward_hooks or cell._forward_pre_hooks):
            return cell.step(x, state)
        return cell(x, state)
    if isinstance(layer, Stack):
        finals = []
        y = x
        for k, sub in enumerate(layer.layers):
            y, s = layer_step(sub, y, state[k])
            finals.append(s)
            if k < len(layer.layers) - 1 and layer.dropout > 0:
                y = F.dropout(y, layer.dropout, layer.training)
        return y, tuple(finals)
    return layer.step(x, state)


def final_output(layer: nn.Module, state: Any) -> Tensor:
    """The summary h(τ) a layer leaves in its final state, (B, output_size).

    For ``Recurrent`` the cell's output at each sequence's last step; for ``Bidirectional`` the
    forward direction's h(τ) merged with the backward direction's g(1) (which has read the whole
    sequence too); for a stack its last layer's (the deep stacks define ``final_output``).
    """
    if isinstance(layer, Recurrent):
        return layer.cell.output_of(state)
    if isinstance(layer, Bidirectional):
        h = final_output(layer.forward_layer, state.forward)
        g = final_output(layer.backward_layer, state.backward)
        return torch.cat([h, g], dim=-1) if layer.merge == "concat" else h + g  # (B, D·H) or (B, H)
    if isinstance(layer, Stack):
        return final_output(layer.layers[-1], state[-1])
    return layer.final_output(state)


# -- checks at the boundary ------------------------------------------------------------------


def sequence_mask(lengths: Tensor | None, steps: int, batch_size: int, device: torch.device | None = None) -> Tensor:
    """(T, B) bool: True where step t < lengths[b]; all True when ``lengths`` is None."""
    if lengths is None:
        return torch.ones(steps, batch_size, dtype=torch.bool, device=device)
    return torch.arange(steps, device=lengths.device).unsqueeze(1) < lengths  # (T, B)


def check_float(
    x: Any, name: str, owner: str, layout: str, dim: int, width: int | None, like: Tensor | None = None
) -> Tensor:
    """Raise unless ``x`` is a floating tensor of rank ``dim`` whose last size is ``width``."""
    if not isinstance(x, Tensor):
        raise not_a_tensor(x, name, owner, layout)
    if x.dim() != dim:
        raise ValueError(f"{owner}: {name} must have shape {layout}, got {x.dim()}-D shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{owner}: {name} must be floating point, got dtype {x.dtype}")
    if width is not None and x.shape[-1] != width:
        raise ValueError(f"{owner}: {name} has width {x.shape[-1]} (shape {tuple(x.shape)}), expected {width}")
    if like is not None and x.dtype != like.dtype:
        raise TypeError(
            f"{owner}: {name} has dtype {x.dtype}, expected the parameters' dtype {like.dtype}"
            + dtype_hint(x.dtype, like.dtype)
        )
    return x


def check_tokens(
    y: Any, name: str, owner: str, layout: str, dim: int, vocab_size: int, mask: Tensor | None = None
) -> Tensor:
    """Raise unless ``y`` is an integer tensor of rank ``dim`` with ids in [0, vocab_size).

    Entries where ``mask`` is False (padding) may hold anything; they are set to 0, so a batch
    can be padded with −1 or −100. While ``torch.export`` traces, the ids are the program's
    future input, so only their dtype and shape are checked.
    """
    if not isinstance(y, Tensor):
        raise not_a_tensor(y, name, owner, layout, "an int64 tensor")
    if y.dim() != dim:
        raise ValueError(f"{owner}: {name} must have shape {layout}, got {y.dim()}-D shape {tuple(y.shape)}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"{owner}: {name} must hold integer token ids, got dtype {y.dtype}")
    y = y.long()
    if mask is not None:
        y = torch.where(mask, y, torch.zeros_like(y))
    if torch.compiler.is_exporting():
        return y
    if y.numel() and any(int(m) < 0 or int(m) >= vocab_size for m in torch.aminmax(y)):  # one pass over y
        bad = y[(y < 0) | (y >= vocab_size)][0].item()
        raise ValueError(f"{owner}: {name} holds token id {bad}, outside the vocabulary [0, {vocab_size})")
    return y


def check_batch(batch_size: Any, found: int | None, owner: str, source: str = "the context") -> int:
    """The batch size of a decoding start: ``batch_size`` and/or ``found`` (read from
    ``source``), which must agree."""
    if found is not None:
        if batch_size is not None and batch_size != found:
            raise ValueError(f"{owner}: batch_size={batch_size} but {source} has batch {found}")
        return found
    if batch_size is None:
        raise ValueError(f"{owner}: start needs batch_size (or a context to read it from)")
    return check_size(batch_size, "batch_size", owner)


def param_like(module: nn.Module) -> Tensor:
    """A parameter of ``module``: the dtype and device its inputs must have."""
    return next(module.parameters())


# -- parts shared by the decoders ----------------------------------------------------------------


class EngineReport:
    """``last_engine`` and ``last_engines`` for a model: what its recurrent layers ran on."""

    @property
    def last_engines(self) -> dict[str, str]:
        """What ran in each recurrent layer on the last forward, ``{path: engine}`` (a stack
        that ran as one torch kernel call is one ``"native"`` entry); see
        :func:`rnnkit.last_engines`."""
        from ..engine.choose import last_engines

        return last_engines(self)

    @property
    def last_engine(self) -> str | None:
        """The engine every recurrent layer ran on in the last forward (``"native"``,
        ``"fused"``, ``"reference"``), ``"mixed"`` if they differ, None before the first."""
        from ..engine.choose import summarize_engines

        return summarize_engines(self.last_engines)


class OutputFeedback(nn.Module):
    r"""How the previous output y(t−1) enters step t.

    Discrete outputs: an embedding, ``e(y) = E[y]`` — the same as a weight matrix times the
    one-hot y, the seeds' ``W y(t-1)``. Real outputs: y itself, so e(y) = y (width O).

    Shapes: y (…,) int64 → (…, E); or y (…, O) float → (…, O).
    """

    def __init__(self, vocab_size: int | None, output_size: int | None, embedding_size: int | None, owner: str) -> None:
        super().__init__()
        if (vocab_size is None) == (output_size is None):
            raise ValueError(
                f"{owner}: give exactly one of vocab_size (discrete outputs) and output_size (real outputs)"
            )
        self.discrete = vocab_size is not None
        self.owner = owner
        if self.discrete:
            self.vocab_size = check_size(vocab_size, "vocab_size", owner)
            self.size = check_size(embedding_size, "embedding_size", owner)
            self.embedding = nn.Embedding(self.vocab_size, self.size)
        else:
            if embedding_size is not None:
                raise ValueError(f"{owner}: embedding_size is for discrete outputs; real outputs feed back as they are")
            self.output_size = self.size = check_size(output_size, "output_size", owner)
            self.vocab_size = None

    @property
    def out_width(self) -> int:
        """The width of the model's output at each step, V or O."""
        return self.vocab_size if self.discrete else self.output_size

    def forward(self, y: Tensor) -> Tensor:
        return self.embedding(y) if self.discrete else y

    def check_targets(self, y: Any, like: Tensor, mask: Tensor | None = None, name: str = "y") -> Tensor:
        """Teacher-forcing targets: (T, B) ids in [0, V), or (T, B, O) floats."""
        if self.discrete:
            return check_tokens(y, name, self.owner, "(T, B)", 2, self.vocab_size, mask)
        return check_float(y, name, self.owner, "(T, B, O)", 3, self.output_size, like)

    def check_previous(self, y: Any, like: Tensor) -> Tensor:
        """One step's previous output: (B,) ids, or (B, O) floats."""
        if self.discrete:
            return check_tokens(y, "y_prev", self.owner, "(B,)", 1, self.vocab_size)
        return check_float(y, "y_prev", self.owner, "(B, O)", 2, self.output_size, like)

    def previous(self, y: Any, like: Tensor | None) -> Tensor:
        """One step's previous output, checked, as the step reads it: e(y) (B, E) for (B,) ids,
        y itself for (B, O) floats.

        On the CPU an id outside [0, V) makes the embedding lookup itself fail, so int64 ids are
        range-checked only then, to name the id (a decoding step saves a pass over them); on
        other devices, where a bad index is a device-side assert, before the lookup."""
        if (
            self.discrete
            and isinstance(y, Tensor)
            and y.device.type == "cpu"
            and y.dtype == torch.long
            and y.dim() == 1
        ):
            try:
                return self.embedding(y)
            except IndexError:
                pass  # check_previous says which id
        return self(self.check_previous(y, like))

    def first(self, batch_size: int, bos: int | None, like: Tensor) -> Tensor:
        """What stands for y(0): ``bos`` for discrete outputs, zeros for real ones."""
        if self.discrete:
            return torch.full((batch_size,), bos, dtype=torch.long, device=like.device)
        return torch.zeros(batch_size, self.output_size, dtype=like.dtype, device=like.device)

    def shift(self, y: Tensor, bos: int | None, like: Tensor) -> Tensor:
        """The teacher-forced previous outputs: y_prev(1) = y(0) (bos or zeros), y_prev(t) = y(t−1)."""
        first = self.first(y.shape[1], bos, like).unsqueeze(0)  # (1, B) or (1, B, O)
        return torch.cat([first, y[:-1]], dim=0)  # (T, B) or (T, B, O)


def check_special(token: Any, name: str, vocab_size: int | None, owner: str) -> int | None:
    """``bos``/``eos``: an id in [0, V) for discrete models, None for real-valued ones."""
    if vocab_size is None:
        if token is not None:
            raise ValueError(f"{owner}: {name} is a token id; a real-valued model has none, got {token!r}")
        return None
    if token is None:
        return None
    if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < vocab_size:
        raise ValueError(f"{owner}: {name} must be a token id in [0, {vocab_size}), got {token!r}")
    return token


class StateBridge(nn.Module):
    r"""Maps a context vector to a layer's initial state: :math:`s(0) = \tanh(W_c v + b_c)`.

    Every (B, H_k) floating field of the layer's state (h; h and c for an LSTM; each layer's
    for a stack) gets its own rows of ``W_c``; other fields (a skip cell's past, a clockwork
    counter) start as the layer's zero state.

    Shapes: v (B, C) → the layer's state for batch B. Parameters: ``weight`` (Σ H_k, C),
    ``bias`` (Σ H_k,).
    """

    def __init__(self, template: Any, context_size: int) -> None:
        super().__init__()
        self.widths = [t.shape[1] for t in state_tensors(template) if self._mapped(t)]
        self.proj = nn.Linear(context_size, sum(self.widths))

    @staticmethod
    def _mapped(t: Tensor) -> bool:
        return t.is_floating_point() and t.dim() == 2

    def forward(self, v: Tensor, zero_state: Any) -> Any:
        parts = iter(torch.tanh(self.proj(v)).split(self.widths, dim=-1))  # each (B, H_k)
        return map_state(lambda t: next(parts) if self._mapped(t) else t, zero_state)


def step_halt(remaining: Tensor, like: Tensor) -> Tensor:
    """The halt logit of a model with a length head: +inf on the τ-th step and after, −inf before."""
    inf = torch.tensor(float("inf"), dtype=like.dtype, device=like.device)
    return torch.where(remaining <= 1, inf, -inf)


def empty(batch_size: int, *shape: int, like: Tensor) -> Tensor:
    """A zero-width placeholder (B, 0, …) for a state field a model does not use."""
    return like.new_zeros(batch_size, *shape)
