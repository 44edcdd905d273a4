r"""The seeds' design patterns of recurrent networks (Goodfellow et al., *Deep Learning*, §10.2):

1. :class:`Tagger` — an output at every step, recurrence between hidden units (figure 10.3);
2. :class:`JordanNetwork` — recurrence only from the output at t to the hidden units at t + 1
   (figure 10.4): teacher-forced training is one batched pass, no loop over time;
3. :class:`ManyToOne` — one output after reading the whole sequence (figure 10.5);

and :class:`Encoder`, the RNN with no output, mapping a sequence of any length to its summary
h(τ) (and its outputs, for attention).

Every model is time-major. Symbols: T time, B batch, I input size, E embedding size, H hidden
(the layer's output width), V vocabulary (discrete outputs), O real output size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ..cells.base import check_choice, check_size, not_a_tensor
from ..cells.deep import ACTIVATIONS
from ..recurrent import check_lengths
from .base import (
    DecoderState,
    EngineReport,
    OutputFeedback,
    SequenceOutput,
    StepOutput,
    as_layer,
    check_batch,
    check_float,
    check_special,
    check_tokens,
    empty,
    final_output,
    param_like,
    sequence_mask,
)
from .heads import OutputHead, Readout


class InputEmbedding(nn.Module):
    """A model's input: token ids through an embedding, or real vectors as they are.

    Shapes: x (T, B) int64 → (T, B, E) with ``vocab_size``; x (T, B, I) floats → unchanged.
    """

    def __init__(self, input_size: int, vocab_size: int | None, embedding_size: int | None, owner: str) -> None:
        super().__init__()
        self.owner = owner
        self.vocab_size = vocab_size
        if vocab_size is not None:
            check_size(vocab_size, "vocab_size", owner)
            if embedding_size is not None and embedding_size != input_size:
                raise ValueError(
                    f"{owner}: embedding_size={embedding_size} but the layer reads input_size {input_size}"
                )
            self.embedding = nn.Embedding(vocab_size, input_size)
        elif embedding_size is not None:
            raise ValueError(f"{owner}: embedding_size needs vocab_size (token inputs)")
        self.input_size = input_size

    def forward(self, x: Any, lengths: Tensor | None, like: Tensor) -> Tensor:
        if self.vocab_size is not None:
            T, B = self.time_batch(x)
            mask = sequence_mask(lengths, T, B, like.device) if lengths is not None else None
            return self.embedding(check_tokens(x, "x", self.owner, "(T, B)", 2, self.vocab_size, mask))  # (T, B, E)
        return check_float(x, "x", self.owner, "(T, B, I)", 3, self.input_size, like)

    def time_batch(self, x: Any) -> tuple[int, int]:
        """(T, B) of an input, or an error naming the expected layout."""
        layout, dim = ("(T, B)", 2) if self.vocab_size is not None else ("(T, B, I)", 3)
        if not isinstance(x, Tensor):
            raise not_a_tensor(x, "x", self.owner, layout)
        if x.dim() != dim:
            raise ValueError(f"{self.owner}: x must have shape {layout}, got {x.dim()}-D shape {tuple(x.shape)}")
        return x.shape[0], x.shape[1]


class Tagger(EngineReport, nn.Module):
    r"""Synced many-to-many: an output at every step from a recurrent layer (figure 10.3).

    .. math::
        h(t) = \mathrm{layer}(x(t), h(t-1)), \qquad o(t) = c + V h(t), \qquad \hat y(t) = \mathrm{softmax}(o(t))

    The loss is :func:`rnnkit.models.losses.sequence_nll` summed over time with the padding
    masked (or :func:`~rnnkit.models.losses.squared_error` for real targets). Any layer works:
    a ``Bidirectional`` layer gives a tagger that sees the whole sentence around each word.

    Args:
        layer: an rnnkit cell or layer (``Recurrent``, ``Bidirectional``, ``Stack``, the deep
            stacks), time-major.
        output_size: V (classes) or O (values).
        vocab_size: with token inputs, the input vocabulary; they are embedded to the layer's
            input_size. embedding_size: optional check that it is that size.
        head_hidden: widths of a deep output MLP (see :class:`OutputHead`).

    Shapes: x (T, B, I) floats or (T, B) int64 ids; lengths (B,) in [1, T];
    returns o (T, B, V), zero-padded rows giving o = c.
    """

    def __init__(
        self,
        layer: Any,
        output_size: int,
        *,
        vocab_size: int | None = None,
        embedding_size: int | None = None,
        head_hidden: Sequence[int] = (),
    ) -> None:
        super().__init__()
        self.layer = as_layer(layer, "Tagger")
        self.inputs = InputEmbedding(self.layer.input_size, vocab_size, embedding_size, "Tagger")
        self.head = OutputHead(self.layer.output_size, output_size, head_hidden)

    def forward(self, x: Tensor, lengths: Any = None, state: Any = None) -> Tensor:
        """An output at every step.

        Args:
            x: (T, B, I) floats (the parameters' dtype, time-major), or (T, B) int64 token ids
                with ``vocab_size``. A list of variable-length arrays becomes this with
                :func:`rnnkit.data.pad_sequences`.
            lengths: (B,) integers in [1, T] in any order (a tensor, NumPy array or list), or
                None when every sequence has T steps. Steps past a length are not read: the
                layer's state stops there (a backward direction starts at each sequence's own
                last step).
            state: the layer's initial state, or None for zeros.

        Returns:
            o (T, B, V): the logits (or O values) at every step; rows past a length are c (the
            head's bias), to be masked in the loss (:class:`rnnkit.train.Tagging` does).
        """
        T, B = self.inputs.time_batch(x)
        lengths = check_lengths(lengths, B, T, x.device, "Tagger")
        h, _ = self.layer(self.inputs(x, lengths, param_like(self)), state, lengths)  # (T, B, H)
        return self.head(h)  # (T, B, V)


class Encoded(NamedTuple):
    """What an :class:`Encoder` returns: ``outputs`` (T, B, H) (zero past each length),
    ``summary`` h(τ) (B, H), and the layer's final ``state``."""

    outputs: Tensor
    summary: Tensor
    state: Any


class Encoder(EngineReport, nn.Module):
    r"""The RNN with no output (figure 10.5 without its output, §10.4): reads a sequence of any
    length and keeps its final state as a fixed-length summary.

    .. math::
        h(t) = \mathrm{layer}(x(t), h(t-1)), \qquad \text{summary} = h(\tau)

    With ``lengths``, τ is each sequence's own last step. For a ``Bidirectional`` layer the
    summary is [h(τ); g(1)] (both directions after reading everything); for a stack, its last
    layer's.

    Args:
        layer: an rnnkit cell or layer, time-major.
        vocab_size: with token inputs, their vocabulary (embedded to the layer's input_size).
        embedding_size: optional check of that size.

    Shapes: x (T, B, I) floats or (T, B) int64; lengths (B,) in [1, T] →
    :class:`Encoded` (outputs (T, B, H), summary (B, H), state).
    """

    def __init__(self, layer: Any, *, vocab_size: int | None = None, embedding_size: int | None = None) -> None:
        super().__init__()
        self.layer = as_layer(layer, "Encoder")
        self.inputs = InputEmbedding(self.layer.input_size, vocab_size, embedding_size, "Encoder")
        self.vocab_size = vocab_size
        self.output_size = self.layer.output_size

    def forward(self, x: Tensor, lengths: Any = None, state: Any = None) -> Encoded:
        """Read the sequences and keep their summaries.

        Args:
            x: (T, B, I) floats or (T, B) int64 token ids with ``vocab_size``.
            lengths: (B,) integers in [1, T] in any order, or None for all T.
            state: the layer's initial state, or None for zeros.

        Returns:
            :class:`Encoded`: ``outputs`` (T, B, H) (zero past each length), ``summary`` (B, H)
            — h(τ) at each sequence's own last step, [h(τ); g(1)] for a bidirectional layer —
            and the layer's final ``state``.
        """
        T, B = self.inputs.time_batch(x)
        lengths = check_lengths(lengths, B, T, x.device, "Encoder")
        outputs, final = self.layer(self.inputs(x, lengths, param_like(self)), state, lengths)  # (T, B, H)
        return Encoded(outputs, final_output(self.layer, final), final)


class ManyToOne(EngineReport, nn.Module):
    r"""One output after reading the whole sequence (figure 10.5): classification or regression.

    .. math::
        o = c + V h(\tau)

    with h(τ) the :class:`Encoder`'s summary. Train with ``F.cross_entropy(o, y)`` for classes
    or ``0.5 * ((o - y) ** 2).sum()`` for values.

    Args:
        layer, vocab_size, embedding_size: as :class:`Encoder`.
        output_size: V (classes) or O (values). head_hidden: a deep output MLP's widths.

    Shapes: x (T, B, I) or (T, B); lengths (B,) → o (B, V).
    """

    def __init__(
        self,
        layer: Any,
        output_size: int,
        *,
        vocab_size: int | None = None,
        embedding_size: int | None = None,
        head_hidden: Sequence[int] = (),
    ) -> None:
        super().__init__()
        self.encoder = Encoder(layer, vocab_size=vocab_size, embedding_size=embedding_size)
        self.head = OutputHead(self.encoder.output_size, output_size, head_hidden)

    def forward(self, x: Tensor, lengths: Any = None) -> Tensor:
        """One output per sequence, read after its last step.

        Args:
            x: (T, B, I) floats (the parameters' dtype, time-major; ``x.transpose(0, 1)`` turns
                a batch-first batch into this), or (T, B) int64 token ids with ``vocab_size``.
                A list of variable-length arrays becomes this with
                :func:`rnnkit.data.pad_sequences`, and a ``DataLoader`` yields it with
                :class:`rnnkit.data.SequenceCollate`.
            lengths: (B,) integers in [1, T] in any order (no sorting, no packing), or None
                when every sequence has T steps. Each sequence is summarised at its own last
                step, so padding never reaches the output; without ``lengths`` a padded
                sequence is read through its padding.

        Returns:
            o (B, V): logits for classes (train with ``F.cross_entropy`` or
            :class:`rnnkit.train.Classification`), or (B, O) values for regression
            (:class:`rnnkit.train.Regression`).
        """
        return self.head(self.encoder(x, lengths).summary)  # (B, V)


class JordanNetwork(nn.Module):
    r"""Recurrence only from the output at t to the hidden units at t + 1 (Jordan 1986;
    Goodfellow et al., figure 10.4 and §10.2.1):

    .. math::
        h(t) = \phi\big(b + W e(y(t-1)) + U x(t)\big), \qquad o(t) = c + V h(t)

    where e(y) is the previous output's embedding (a weight matrix times the one-hot y) for
    discrete outputs, or y itself for real ones; y(0) is ``bos`` (zeros for real outputs).
    There is no h(t−1) → h(t) path: the only memory is the output, so it is strictly less
    powerful than a hidden-recurrent network — but with teacher forcing every step's inputs
    (x(t) and the true y(t−1)) are known, so :meth:`forward` computes all T steps as one
    batched matrix product, with no loop over time; :meth:`step` is the same map for one step
    of free-running generation.

    Args:
        input_size: I, the width of x(t); 0 for a network without inputs (a language model).
        hidden_size: H.
        vocab_size, output_size: V for discrete outputs, or O for real ones (exactly one).
        embedding_size: E, the width of e(y) for discrete outputs.
        nonlinearity: φ, ``"tanh"`` or ``"relu"``.
        halt: add a Bernoulli halt head on h(t). bos, eos: token ids (discrete outputs).
        head_hidden: widths of a deep output MLP.

    Parameters: ``hidden.weight`` (H, I + E) = [U | W], ``hidden.bias`` (H,) = b; the output
    feedback's ``feedback.embedding.weight`` (V, E); the readout's.

    Shapes: y (T, B) int64 or (T, B, O); x (T, B, I); lengths (B,) → :class:`SequenceOutput`
    (logits (T, B, V), halt (T, B)). Decoding state: :class:`DecoderState` with ``layer`` a
    (B, 0) placeholder and ``inputs`` the x to read, (B, T, I).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        vocab_size: int | None = None,
        output_size: int | None = None,
        embedding_size: int | None = None,
        nonlinearity: str = "tanh",
        halt: bool = False,
        bos: int | None = None,
        eos: int | None = None,
        head_hidden: Sequence[int] = (),
    ) -> None:
        super().__init__()
        owner = "JordanNetwork"
        self.input_size = check_size(input_size, "input_size", owner, minimum=0)
        self.hidden_size = check_size(hidden_size, "hidden_size", owner)
        self.nonlinearity = check_choice(nonlinearity, "nonlinearity", owner, tuple(ACTIVATIONS))
        self.feedback = OutputFeedback(vocab_size, output_size, embedding_size, owner)
        self.bos = check_special(bos, "bos", vocab_size, owner)
        self.eos = check_special(eos, "eos", vocab_size, owner)
        if self.feedback.discrete and self.bos is None:
            raise ValueError(f"{owner}: discrete outputs need bos, the id that stands for y(0)")
        self.hidden = nn.Linear(self.input_size + self.feedback.size, self.hidden_size)  # [U | W], b
        self.readout = Readout(self.hidden_size, self.feedback.out_width, halt, head_hidden)

    def _h(self, x: Tensor | None, e: Tensor) -> Tensor:
        """h = φ(b + W e + U x) for any leading shape: one matrix product."""
        inp = e if x is None else torch.cat([x, e], dim=-1)
        return ACTIVATIONS[self.nonlinearity](self.hidden(inp))

    def forward(self, y: Tensor, x: Tensor | None = None, lengths: Any = None) -> SequenceOutput:
        """All T steps at once from the true previous outputs (teacher forcing): no time loop."""
        like = param_like(self)
        T, B = _time_batch(y, self.feedback, "JordanNetwork")
        lengths = check_lengths(lengths, B, T, like.device, "JordanNetwork")
        y = self.feedback.check_targets(
            y, like, sequence_mask(lengths, T, B, like.device) if lengths is not None else None
        )
        x = self._check_x(x, T, B, like)
        h = self._h(x, self.feedback(self.feedback.shift(y, self.bos, like)))  # (T, B, H)
        logits, halt = self.readout(h)  # (T, B, V), (T, B)
        return SequenceOutput(logits, halt)

    def _check_x(self, x: Any, T: int, B: int, like: Tensor) -> Tensor | None:
        if self.input_size == 0:
            if x is not None:
                raise ValueError("JordanNetwork: input_size=0 reads no x, got one")
            return None
        x = check_float(x, "x", "JordanNetwork", "(T, B, I)", 3, self.input_size, like)
        if x.shape[:2] != (T, B):
            raise ValueError(f"JordanNetwork: x must have (T, B) = {(T, B)} like y, got {tuple(x.shape)}")
        return x

    def start(self, batch_size: int | None = None, context: Tensor | None = None) -> DecoderState:
        """The state before step 1; ``context`` is the input sequence x (T, B, I) to read (None
        when input_size is 0)."""
        like = param_like(self)
        if self.input_size:
            if context is None:
                raise ValueError("JordanNetwork: start needs context = x (T, B, I), the inputs to read")
            x = check_float(context, "context", "JordanNetwork", "(T, B, I)", 3, self.input_size, like)
            B = check_batch(batch_size, x.shape[1], "JordanNetwork", "the input sequence x")
            inputs = x.transpose(0, 1)  # (B, T, I)
        else:
            if context is not None:
                raise ValueError("JordanNetwork: input_size=0 reads no context, got one")
            B = check_batch(batch_size, None, "JordanNetwork")
            inputs = empty(B, 0, 0, like=like)
        step = torch.zeros(B, dtype=torch.long, device=like.device)
        return DecoderState(empty(B, 0, like=like), step, inputs, empty(B, 0, like=like), torch.full_like(step, -1))

    def step(self, y_prev: Tensor, state: DecoderState) -> tuple[StepOutput, DecoderState]:
        """One step: h = φ(b + W e(y_prev) + U x(t)), o = c + V h."""
        like = param_like(self)
        e = self.feedback.previous(y_prev, like)  # (B, E)
        x = read_input(state, "JordanNetwork") if self.input_size else None
        h = self._h(x, e)  # (B, H)
        logits, halt = self.readout(h)
        return StepOutput(logits, halt), state._replace(step=state.step + 1)


def _time_batch(y: Any, feedback: OutputFeedback, owner: str) -> tuple[int, int]:
    layout, dim = ("(T, B)", 2) if feedback.discrete else ("(T, B, O)", 3)
    if not isinstance(y, Tensor):
        raise not_a_tensor(y, "y", owner, layout)
    if y.dim() != dim:
        raise ValueError(f"{owner}: y must have shape {layout}, got {y.dim()}-D shape {tuple(y.shape)}")
    return y.shape[0], y.shape[1]


def read_input(state: DecoderState, owner: str) -> Tensor:
    """x(t) for each row's step t, from the inputs kept in the state: (B, I)."""
    T = state.inputs.shape[1]
    if state.step.numel() and int(state.step.max()) >= T:
        raise ValueError(f"{owner}: the input sequence has {T} steps; cannot step past it")
    rows = torch.arange(state.step.shape[0], device=state.step.device)
    return state.inputs[rows, state.step]  # (B, I)
