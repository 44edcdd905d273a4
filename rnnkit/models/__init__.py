"""Architectures composed from rnnkit's layers, with their output heads and losses.

==================================  =====================================================================
:mod:`~rnnkit.models.base`          the decoding protocol (``StepOutput``, ``SequenceOutput``, ``DecoderState``)
:mod:`~rnnkit.models.patterns`      ``Tagger``, ``JordanNetwork``, ``ManyToOne``, ``Encoder``
:mod:`~rnnkit.models.conditioning`  ``VectorToSequence``, ``OutputRecurrentRNN`` (``FeedbackDecoder``)
:mod:`~rnnkit.models.seq2seq`       ``Seq2Seq`` (encoder–decoder, optional Bahdanau attention)
:mod:`~rnnkit.models.deep`          ``ResidualStack``, ``deep_transition`` (and ``rnnkit.Stack``)
:mod:`~rnnkit.models.heads`         ``OutputHead``, ``HaltHead``, ``LengthHead``
:mod:`~rnnkit.models.losses`        ``sequence_nll``, ``squared_error``, ``halt_loss``, ``length_loss``
==================================  =====================================================================

No model has a time loop of its own: whole sequences run through ``Recurrent``/``Stack``
(teacher forcing included), and a decoder's ``step`` calls each cell's ``forward`` once.
"""

from .base import DecoderState, SequenceOutput, StepOutput, final_output, layer_step, sequence_mask
from .conditioning import FeedbackDecoder, OutputRecurrentRNN, VectorToSequence
from .deep import ResidualStack, deep_transition
from .heads import HaltHead, LengthHead, OutputHead, Readout
from .losses import halt_loss, halt_targets, length_loss, sequence_loss, sequence_nll, squared_error
from .patterns import Encoded, Encoder, JordanNetwork, ManyToOne, Tagger
from .seq2seq import EncoderMemory, Seq2Seq

__all__ = [
    "StepOutput",
    "SequenceOutput",
    "DecoderState",
    "final_output",
    "layer_step",
    "sequence_mask",
    "Tagger",
    "JordanNetwork",
    "ManyToOne",
    "Encoder",
    "Encoded",
    "FeedbackDecoder",
    "VectorToSequence",
    "OutputRecurrentRNN",
    "Seq2Seq",
    "EncoderMemory",
    "ResidualStack",
    "deep_transition",
    "OutputHead",
    "HaltHead",
    "LengthHead",
    "Readout",
    "sequence_nll",
    "squared_error",
    "halt_loss",
    "halt_targets",
    "length_loss",
    "sequence_loss",
]
