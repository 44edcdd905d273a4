r"""Encoder–decoder: a sequence to a sequence of another length (Cho et al. 2014; Sutskever,
Vinyals & Le 2014; Goodfellow et al., *Deep Learning*, §10.4, figure 10.12), with optional
additive attention (Bahdanau, Cho & Bengio 2015) as the step beyond the seeds.

.. math::
    h^{enc}(s) &= \mathrm{encoder}(x(s), h^{enc}(s-1)), \qquad C = h^{enc}(\tau_x) \\
    h(t) &= \mathrm{decoder}\big([e(y(t-1));\ C\ (\text{input mode});\ c(t)\ (\text{attention})],\ h(t-1)\big),
    \qquad h(0) = \tanh(W_c C + b_c)\ (\text{init mode}) \\
    o(t) &= c + V h(t)\ \ (\text{or } c + V [h(t); c(t)] \text{ with attention})

Source and target have their own vocabularies and lengths.

Symbols: S source length, T target length, B batch, E target embedding, D the encoder's output
width (its summary C has width D too), H decoder hidden, V target vocabulary, A attention size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ..cells.attention import AttentionCell
from ..cells.base import RecurrentCell, check_size
from ..recurrent import Recurrent
from .base import DecoderState, SequenceOutput, StepOutput, sequence_mask
from .conditioning import FeedbackDecoder
from .patterns import Encoder


class Seq2SeqDecoder(FeedbackDecoder):
    """The decoder half of :class:`Seq2Seq`: a :class:`FeedbackDecoder` whose context is the
    encoder's summary C (and whose layer may attend over the encoder's outputs)."""

    owner = "Seq2Seq decoder"


class EncoderMemory(NamedTuple):
    """What :meth:`Seq2Seq.encode` returns, batch first (so a beam search can reorder it):
    ``memory`` (B, S, D) the encoder outputs, ``mask`` (B, S) bool valid positions,
    ``summary`` (B, D) the context C = h(τ_x)."""

    memory: Tensor
    mask: Tensor
    summary: Tensor


def _check_attention_width(cell: RecurrentCell, E: Any, D: int, context: str) -> None:
    """The decoder cell with attention reads [e(y(t-1)); C in input mode; c(t)]: say the width it
    must have, term by term, when it has another."""
    if isinstance(E, bool) or not isinstance(E, int) or context not in ("init", "input", "both"):
        return  # the decoder's own checks name these
    parts = [("embedding_size", E)] + ([("the summary C", D)] if context != "init" else []) + [("memory_size", D)]
    want = sum(v for _, v in parts)
    if cell.input_size != want:
        names = " + ".join(n for n, _ in parts)
        values = " + ".join(str(v) for _, v in parts)
        raise ValueError(
            f"Seq2Seq: with attention the decoder cell reads [e(y); {'C; ' if context != 'init' else ''}c(t)], so its "
            f"input_size must be {names} = {values} = {want} (memory_size is the encoder's output width D); "
            f"got input_size {cell.input_size}"
        )


class Seq2Seq(nn.Module):
    r"""Encoder–decoder (see the module docstring for the equations).

    The encoder's summary C conditions the decoder as its initial state (``context="init"``),
    as an input at every step (``"input"``) or both. With ``attention_size`` the decoder cell
    is wrapped in an :class:`rnnkit.cells.AttentionCell`, which reads the encoder outputs at
    every step.

    Args:
        encoder: an :class:`Encoder` (any layer, token or real inputs, its own vocabulary).
        decoder: the decoder's cell (or a forward-running layer without attention). Its
            input_size must be E + (D in input mode) + (D with attention).
        vocab_size: V, the target vocabulary. embedding_size: E.
        bos, eos: target token ids.
        context: ``"init"``, ``"input"`` or ``"both"``.
        attention_size: A, to add attention; None for none.
        max_length: L, to add a length head predicting the target length from C.
        head_hidden: widths of a deep output MLP.

    Decoding: :func:`rnnkit.generate` with ``context=model.encode(src, src_lengths)`` is greedy
    unless told otherwise (``default_method``): a translation should not change between calls;
    ``method="beam"`` searches wider, ``method="sample"`` draws.

    Protocol: ``encode(src, src_lengths=None) -> EncoderMemory``;
    ``start(batch_size=None, context=EncoderMemory)``; ``step(y_prev (B,), state)``;
    ``forward(src, tgt, src_lengths=None, tgt_lengths=None)`` → :class:`SequenceOutput`
    with logits (T, B, V).
    """

    default_method = "greedy"  # what generate() does without a method: one answer per source

    def __init__(
        self,
        encoder: Encoder,
        decoder: Any,
        vocab_size: int,
        embedding_size: int,
        *,
        bos: int,
        eos: int | None = None,
        context: str = "init",
        attention_size: int | None = None,
        max_length: int | None = None,
        head_hidden: Sequence[int] = (),
    ) -> None:
        super().__init__()
        if not isinstance(encoder, Encoder):
            raise TypeError(f"Seq2Seq: encoder must be an rnnkit.models.Encoder, got {type(encoder).__name__}")
        D = encoder.output_size
        if attention_size is not None:
            if not isinstance(decoder, RecurrentCell):
                raise TypeError(
                    "Seq2Seq: attention wraps the decoder's cell, so decoder must be a cell, got "
                    f"{type(decoder).__name__}"
                )
            _check_attention_width(decoder, embedding_size, D, context)
            # attention reads the whole encoder memory each step, which the fused engine's row
            # programs do not hold: this layer runs the reference loop by design, without a warning
            decoder = Recurrent(
                AttentionCell(decoder, D, check_size(attention_size, "attention_size", "Seq2Seq")), engine="reference"
            )
        self.encoder = encoder
        self.decoder = Seq2SeqDecoder(
            decoder,
            vocab_size=vocab_size,
            embedding_size=embedding_size,
            context_size=D,
            context_mode=context,
            max_length=max_length,
            bos=bos,
            eos=eos,
            head_hidden=head_hidden,
        )
        self.bos, self.eos = self.decoder.bos, self.decoder.eos
        self.attention = attention_size is not None

    def encode(self, src: Tensor, src_lengths: Any = None) -> EncoderMemory:
        """Read the source: (S, B) ids or (S, B, I) values → :class:`EncoderMemory`."""
        enc = self.encoder(src, src_lengths)
        S, B = enc.outputs.shape[:2]
        lengths = None if src_lengths is None else torch.as_tensor(src_lengths, device=enc.outputs.device)
        mask = sequence_mask(lengths, S, B, enc.outputs.device).t()  # (B, S)
        return EncoderMemory(enc.outputs.transpose(0, 1), mask, enc.summary)  # memory (B, S, D)

    def _memory(self, enc: EncoderMemory) -> tuple[Tensor | None, Tensor | None]:
        return (enc.memory, enc.mask) if self.attention else (None, None)

    def forward(self, src: Tensor, tgt: Tensor, src_lengths: Any = None, tgt_lengths: Any = None) -> SequenceOutput:
        """Teacher forcing: encode the source, then decode all T target steps in one pass.

        **Target convention**: ``tgt`` holds what the decoder must emit — each target's ids, then
        EOS, then PAD — and **no BOS**. The decoder prepends ``bos`` itself as y(0) and reads
        ``tgt[t-1]`` at step t, so ``logits[t]`` predicts ``tgt[t]``: score them with
        ``sequence_nll(logits, tgt, tgt_lengths)``. ``TokenVocab.batch(texts, eos=True)`` makes
        such targets. A batch framed BOS … EOS (``TokenVocab.batch(texts, bos=True, eos=True)``,
        :class:`rnnkit.data.datasets.Seq2SeqSplit`'s ``targets``) would read BOS twice and train
        on it silently, so a ``tgt`` whose first row is ``bos`` in every column is refused: pass
        ``tgt[1:]`` and ``tgt_lengths - 1``.

        Args:
            src: (S, B) int64 source ids, or (S, B, I) values.
            tgt: (T, B) int64 target ids as above.
            src_lengths, tgt_lengths: (B,) the lengths (EOS counted in the target's); None: all
                of S and T.

        Returns:
            :class:`SequenceOutput` with logits (T, B, V).
        """
        enc = self.encode(src, src_lengths)
        B = enc.summary.shape[0]
        if isinstance(tgt, Tensor) and tgt.dim() == 2 and tgt.shape[1] != B:
            raise ValueError(f"Seq2Seq: tgt has batch {tgt.shape[1]} but src has batch {B}")
        if (
            isinstance(tgt, Tensor)
            and tgt.dim() == 2
            and tgt.shape[0] > 0
            and not torch.compiler.is_exporting()
            and bool((tgt[0] == self.bos).all())
        ):  # the values of an exported program's input are not known
            raise ValueError(
                f"Seq2Seq: tgt starts with bos (id {self.bos}) in every column, but the decoder prepends bos itself, "
                "so it would read BOS twice; pass the targets without it: tgt[1:] and tgt_lengths - 1 (e.g. "
                "Seq2SeqSplit.targets[1:], or TokenVocab.batch(texts, eos=True))"
            )
        memory, mask = self._memory(enc)
        return self.decoder.decode(tgt, context=enc.summary, lengths=tgt_lengths, memory=memory, memory_mask=mask)

    def start(self, batch_size: int | None = None, context: EncoderMemory | None = None) -> DecoderState:
        """The decoding state before step 1; ``context`` is ``encode(src, src_lengths)``."""
        if not isinstance(context, EncoderMemory):
            raise TypeError(
                f"Seq2Seq: start needs context = model.encode(src, src_lengths), got {type(context).__name__}"
            )
        memory, mask = self._memory(context)
        return self.decoder.begin(batch_size, context=context.summary, memory=memory, memory_mask=mask)

    def step(self, y_prev: Tensor, state: DecoderState) -> tuple[StepOutput, DecoderState]:
        """One decoder step from the previous target token (B,) (``bos`` first)."""
        return self.decoder.step(y_prev, state)

    def predict_length(self, state: DecoderState) -> Tensor:
        """τ (B,) int64, the target length the length head predicts from C."""
        return self.decoder.predict_length(state)

    def attention_weights(self, state: DecoderState) -> Tensor:
        """α (B, S): where the next step will attend, given the decoder state."""
        if not self.attention:
            raise ValueError("Seq2Seq: this model has no attention (build it with attention_size=A)")
        cell = self.decoder.layer.cell
        return cell.attend(cell.cell.output_of(state.layer.inner), state.layer)[1]
