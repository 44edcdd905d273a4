r"""Conditioning a recurrent network: on a vector, and on its own previous outputs
(Goodfellow et al., *Deep Learning*, §10.2.4).

* :class:`VectorToSequence` — one-to-many (captioning): a context vector v enters as the
  initial state, as an extra input at every step, or both (figure 10.9);
* :class:`OutputRecurrentRNN` — a sequence to a sequence of the same length where y(t−1)
  feeds h(t) besides h(t−1), so the outputs are not conditionally independent given x
  (figure 10.10);
* :class:`FeedbackDecoder` — the network both are made of (and the seq2seq decoder):

.. math::
    h(t) = \mathrm{layer}\big([x(t);\ e(y(t-1));\ v],\ h(t-1)\big), \qquad
    h(0) = \tanh(W_c v + b_c)\ \text{or}\ 0, \qquad o(t) = c + V h(t)

For an Elman layer the first equation is the seeds' ``h = tanh(W h + U x_t + R v)`` (plus
``W_y e(y(t−1))``): U, W_y and R are column blocks of the cell's ``weight_ih``.

Symbols: T time, B batch, I per-step input, E embedding of y, C context, H the layer's output
width, V vocabulary, O real output size, L the largest length the length head predicts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..cells.base import check_choice, check_size, resolve
from ..recurrent import Recurrent, check_lengths
from .base import (
    DecoderState,
    EngineReport,
    OutputFeedback,
    SequenceOutput,
    StateBridge,
    StepOutput,
    as_layer,
    check_batch,
    check_float,
    check_special,
    empty,
    layer_init_state,
    layer_step,
    param_like,
    sequence_mask,
    step_halt,
)
from .heads import LengthHead, Readout
from .patterns import _time_batch, read_input

CONTEXT_MODES = ("init", "input", "both")


class FeedbackDecoder(EngineReport, nn.Module):
    r"""A recurrent layer fed its own previous output, optionally conditioned on per-step inputs
    x(t) and a context vector v — the network of this module's docstring.

    Teacher forcing (:meth:`forward`) feeds the true y(t−1) and runs the layer once over all
    T steps (``Recurrent``/``Stack``: its input projections are one matrix product); generation
    (:meth:`step`) runs one step of each cell. Both compute the same function.

    Args:
        layer: an rnnkit cell or forward-running layer (``Recurrent``, ``Stack``, a deep stack;
            ``Recurrent(AttentionCell(...))`` for attention over a memory). Its input_size must
            be I + E + (C if v enters as an input).
        vocab_size, output_size: V for discrete outputs, or O for real ones (exactly one).
        embedding_size: E for discrete outputs (real outputs feed back as they are, E = O).
        input_size: I, the width of per-step inputs x(t); 0 for none.
        context_size: C, the width of v; 0 for none.
        context_mode: ``"init"`` (h(0) = tanh(W_c v + b_c)), ``"input"`` (v in every step's
            input) or ``"both"``.
        halt: a Bernoulli halt head on h(t) (:class:`rnnkit.models.heads.HaltHead`).
        max_length: L, a length head predicting τ ∈ [1, L] from v
            (:class:`rnnkit.models.heads.LengthHead`); then ``step`` halts after τ steps.
        bos, eos: token ids of discrete outputs; bos stands for y(0).
        head_hidden: widths of a deep output MLP.

    Shapes (teacher forcing): y (T, B) int64 or (T, B, O); x (T, B, I); v (B, C); lengths (B,)
    → :class:`SequenceOutput` (logits (T, B, V), halt (T, B), length (B, L)).
    """

    owner = "FeedbackDecoder"

    def __init__(
        self,
        layer: Any,
        *,
        vocab_size: int | None = None,
        output_size: int | None = None,
        embedding_size: int | None = None,
        input_size: int = 0,
        context_size: int = 0,
        context_mode: str = "init",
        halt: bool = False,
        max_length: int | None = None,
        bos: int | None = None,
        eos: int | None = None,
        head_hidden: Sequence[int] = (),
    ) -> None:
        super().__init__()
        owner = self.owner
        self.layer = as_layer(layer, owner, steppable=True)
        self.feedback = OutputFeedback(vocab_size, output_size, embedding_size, owner)
        self.input_size = check_size(input_size, "input_size", owner, minimum=0)
        self.context_size = check_size(context_size, "context_size", owner, minimum=0)
        self.context_mode = check_choice(context_mode, "context_mode", owner, CONTEXT_MODES)
        self.context_as_input = self.context_size > 0 and context_mode in ("input", "both")
        self.context_as_init = self.context_size > 0 and context_mode in ("init", "both")
        self.bos = check_special(bos, "bos", vocab_size, owner)
        self.eos = check_special(eos, "eos", vocab_size, owner)
        if self.feedback.discrete and self.bos is None:
            raise ValueError(f"{owner}: discrete outputs need bos, the id that stands for y(0)")
        expected = self.input_size + self.feedback.size + (self.context_size if self.context_as_input else 0)
        if self.layer.input_size != expected:
            parts = f"I={self.input_size} + E={self.feedback.size}" + (
                f" + C={self.context_size}" if self.context_as_input else ""
            )
            raise ValueError(
                f"{owner}: the layer must read {parts} = {expected} inputs, got input_size {self.layer.input_size}"
            )
        # a cell that attends over a memory in its state (an AttentionCell) says so in its structure
        self.attention = isinstance(self.layer, Recurrent) and self.layer.cell.structure.memory_size is not None
        like = param_like(self.layer)
        template = self._zero_state(1, like)
        self.bridge = StateBridge(template, self.context_size) if self.context_as_init else None
        if max_length is not None and halt:
            raise ValueError(f"{owner}: choose one way to end a sequence: halt=True or max_length, not both")
        if max_length is not None and self.context_size == 0:
            raise ValueError(
                f"{owner}: max_length adds a length head reading the context, so it needs context_size > 0"
            )
        self.length_head = LengthHead(self.context_size, max_length) if max_length is not None else None
        self.readout = Readout(self.layer.output_size, self.feedback.out_width, halt, head_hidden)

    # -- the initial state ------------------------------------------------------------------------
    def _zero_state(self, batch_size: int, like: Tensor) -> Any:
        """The layer's zero state (for an attention layer, its inner cell's)."""
        if self.attention:
            inner = resolve(self.layer.cell, self.layer.cell.structure.inner)
            return inner.init_state(batch_size, dtype=like.dtype, device=like.device)
        return layer_init_state(self.layer, batch_size, like.dtype, like.device)

    def _initial_layer_state(
        self, v: Tensor | None, batch_size: int, memory: Tensor | None, mask: Tensor | None
    ) -> Any:
        like = param_like(self)
        state = self._zero_state(batch_size, like)
        if self.context_as_init:
            state = self.bridge(v, state)  # h(0) = tanh(W_c v + b_c)
        if self.attention:
            if memory is None:
                raise ValueError(f"{self.owner}: an attention layer needs the memory to attend over")
            state = self.layer.cell.initial_state(memory, mask, state)
        return state

    def _check_context(self, v: Any, batch_size: int | None, like: Tensor) -> Tensor | None:
        if self.context_size == 0:
            if v is not None:
                raise ValueError(f"{self.owner}: this model takes no context vector (context_size=0), got one")
            return None
        if v is None:
            raise ValueError(f"{self.owner}: needs the context vector v, (B, C={self.context_size})")
        v = check_float(v, "context", self.owner, f"(B, C={self.context_size})", 2, self.context_size, like)
        if batch_size is not None and v.shape[0] != batch_size:
            raise ValueError(f"{self.owner}: context has batch {v.shape[0]}, expected B={batch_size}")
        return v

    def _check_inputs(self, x: Any, T: int | None, B: int | None, like: Tensor) -> Tensor | None:
        if self.input_size == 0:
            if x is not None:
                raise ValueError(f"{self.owner}: this model reads no per-step inputs (input_size=0), got x")
            return None
        if x is None:
            raise ValueError(f"{self.owner}: needs the input sequence x, (T, B, I={self.input_size})")
        x = check_float(x, "x", self.owner, f"(T, B, I={self.input_size})", 3, self.input_size, like)
        if T is not None and x.shape[:2] != (T, B):
            raise ValueError(f"{self.owner}: x must have (T, B) = {(T, B)} like y, got {tuple(x.shape)}")
        return x

    # -- teacher forcing: one batched pass -------------------------------------------------------
    def decode(
        self,
        y: Tensor,
        x: Tensor | None = None,
        context: Tensor | None = None,
        lengths: Any = None,
        memory: Tensor | None = None,
        memory_mask: Tensor | None = None,
    ) -> SequenceOutput:
        """Teacher-forced pass over all T steps, given the true outputs y (see the class docstring)."""
        like = param_like(self)
        T, B = _time_batch(y, self.feedback, self.owner)
        lengths = check_lengths(lengths, B, T, like.device, self.owner)
        y = self.feedback.check_targets(
            y, like, sequence_mask(lengths, T, B, like.device) if lengths is not None else None
        )
        x = self._check_inputs(x, T, B, like)
        v = self._check_context(context, B, like)
        parts = [] if x is None else [x]
        parts.append(self.feedback(self.feedback.shift(y, self.bos, like)))  # e(y(t-1)), (T, B, E)
        if self.context_as_input:
            parts.append(v.unsqueeze(0).expand(T, -1, -1))  # v at every step, (T, B, C)
        state0 = self._initial_layer_state(v, B, memory, memory_mask)
        # one Recurrent/Stack pass, without the lengths: the layer runs forward, so the outputs at
        # each sequence's valid steps do not depend on them, and they would only mask the final
        # state (unused here) at every step past the shortest sequence
        h, _ = self.layer(torch.cat(parts, dim=-1), state0)  # (T, B, H)
        if lengths is not None:
            h = h * sequence_mask(lengths, T, B, like.device).unsqueeze(-1).to(h.dtype)  # zeros past each length
        logits, halt = self.readout(h)  # (T, B, V), (T, B)
        length = self.length_head(v) if self.length_head is not None else None  # (B, L)
        return SequenceOutput(logits, halt, length)

    # -- generation: one step at a time ----------------------------------------------------------
    def begin(
        self,
        batch_size: int | None,
        context: Tensor | None = None,
        x: Tensor | None = None,
        memory: Tensor | None = None,
        memory_mask: Tensor | None = None,
    ) -> DecoderState:
        """The decoding state before step 1, from the context v (B, C) and/or inputs x (T, B, I)."""
        like = param_like(self)
        x = self._check_inputs(x, None, None, like)
        if x is not None:
            B = check_batch(batch_size, x.shape[1], self.owner, "the input sequence x")
        else:
            B = check_batch(batch_size, context.shape[0] if isinstance(context, Tensor) else None, self.owner)
        v = self._check_context(context, B, like)
        inputs = x.transpose(0, 1) if x is not None else empty(B, 0, 0, like=like)  # (B, T, I)
        step = torch.zeros(B, dtype=torch.long, device=like.device)
        state = DecoderState(
            self._initial_layer_state(v, B, memory, memory_mask),
            step,
            inputs,
            v if v is not None else empty(B, 0, like=like),
            torch.full_like(step, -1),
        )
        if self.length_head is not None:
            state = state._replace(remaining=self.predict_length(state))
        return state

    def predict_length(self, state: DecoderState) -> Tensor:
        """τ (B,) int64 in [1, L], the most probable length given the context in ``state``."""
        if self.length_head is None:
            raise ValueError(f"{self.owner}: this model has no length head (build it with max_length=L)")
        return LengthHead.predict(self.length_head(state.context))

    def step(self, y_prev: Tensor, state: DecoderState) -> tuple[StepOutput, DecoderState]:
        """One step from the previous output (``bos`` / zeros at the first step): each cell's
        ``forward`` once, then the readout."""
        like = None if self.feedback.discrete else param_like(self)  # token ids need no dtype to match
        parts = [read_input(state, self.owner)] if self.input_size else []
        parts.append(self.feedback.previous(y_prev, like))  # (B, E)
        if self.context_as_input:
            parts.append(state.context)  # (B, C)
        x = torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]  # (B, I + E + C)
        h, layer_state = layer_step(self.layer, x, state.layer)  # (B, H)
        logits, halt = self.readout(h)
        remaining = state.remaining
        if self.length_head is not None:
            halt = step_halt(remaining, logits)  # stop exactly at the predicted τ
            remaining = remaining - 1
        return StepOutput(logits, halt), state._replace(layer=layer_state, step=state.step + 1, remaining=remaining)


class VectorToSequence(FeedbackDecoder):
    r"""One-to-many: a sequence generated from a vector (captioning; figure 10.9).

    .. math::
        h(t) = \mathrm{layer}\big([e(y(t-1));\ v],\ h(t-1)\big), \quad h(0) = \tanh(W_c v + b_c),
        \quad o(t) = c + V h(t)

    with v in the input only for ``context_mode`` ``"input"``/``"both"`` and in h(0) only for
    ``"init"``/``"both"``. A sequence ends at ``eos``, at the halt head's say, or after the
    length head's τ (``max_length``).

    Args:
        layer: its input_size must be E (+ C with v as an input).
        context_size: C. The rest as :class:`FeedbackDecoder`.

    Protocol: ``start(batch_size=None, context=v (B, C))``, ``step(y_prev, state)``;
    ``forward(y, context, lengths=None)`` → :class:`SequenceOutput`.
    """

    owner = "VectorToSequence"

    def __init__(self, layer: Any, context_size: int, *, context_mode: str = "init", **kwargs: Any) -> None:
        if "input_size" in kwargs:
            raise TypeError("VectorToSequence: takes no per-step inputs (use OutputRecurrentRNN or FeedbackDecoder)")
        super().__init__(
            layer,
            context_size=check_size(context_size, "context_size", self.owner),
            context_mode=context_mode,
            **kwargs,
        )

    def forward(self, y: Tensor, context: Tensor, lengths: Any = None) -> SequenceOutput:
        return self.decode(y, context=context, lengths=lengths)

    def start(self, batch_size: int | None = None, context: Tensor | None = None) -> DecoderState:
        """The decoding state before step 1, conditioned on the vector ``context`` (B, C)."""
        return self.begin(batch_size, context=context)


class OutputRecurrentRNN(FeedbackDecoder):
    r"""A sequence to a sequence of the same length, with hidden and output recurrence (figure 10.10):

    .. math::
        h(t) = \mathrm{layer}\big([x(t);\ e(y(t-1))],\ h(t-1)\big), \qquad o(t) = c + V h(t)

    Because y(t−1) feeds h(t), the model is P(y(1..T) | x) = Π_t P(y(t) | x(1..t), y(1..t−1)):
    the outputs are not conditionally independent given x, unlike a :class:`Tagger`'s.

    Args:
        layer: its input_size must be I + E.
        input_size: I. The rest as :class:`FeedbackDecoder` (no context vector).

    Protocol: ``start(batch_size=None, context=x (T, B, I))`` (the inputs to read, one per
    step), ``step(y_prev, state)``; ``forward(y, x, lengths=None)`` → :class:`SequenceOutput`.
    """

    owner = "OutputRecurrentRNN"

    def __init__(self, layer: Any, input_size: int, **kwargs: Any) -> None:
        for key in ("context_size", "context_mode", "max_length"):
            if key in kwargs:
                raise TypeError(f"OutputRecurrentRNN: takes no {key} (its length is the input's)")
        super().__init__(layer, input_size=check_size(input_size, "input_size", self.owner), **kwargs)

    def forward(self, y: Tensor, x: Tensor, lengths: Any = None) -> SequenceOutput:
        return self.decode(y, x=x, lengths=lengths)

    def start(self, batch_size: int | None = None, context: Tensor | None = None) -> DecoderState:
        """The decoding state before step 1; ``context`` is the input sequence x (T, B, I) to read."""
        if context is None:
            raise ValueError("OutputRecurrentRNN: start needs context = x (T, B, I), the inputs to read")
        return self.begin(batch_size, x=context)
