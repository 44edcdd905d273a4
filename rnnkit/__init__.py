"""rnnkit: recurrent neural networks on PyTorch — the whole design space, reference-checked.

Where things live:

* :mod:`rnnkit.cells` — one time step of every cell, with its equations;
* :class:`rnnkit.Recurrent` — the time loop that runs any cell over a sequence;
* :class:`rnnkit.Bidirectional`, :class:`rnnkit.Stack` — layers composed from it;
* :func:`rnnkit.from_torch`, :func:`rnnkit.to_torch` — conversions with torch.nn;
* :mod:`rnnkit.models` — the architectures: taggers, Jordan networks, many-to-one, encoders,
  vector → sequence, output recurrence, seq2seq with attention, deep and residual stacks; heads
  and losses;
* :mod:`rnnkit.data` — your own variable-length arrays padded and batched through a
  ``DataLoader`` (:func:`rnnkit.data.pad_sequences`, :class:`rnnkit.data.SequenceCollate`), and
  the built-in tasks' data;
* :mod:`rnnkit.train` — the model-agnostic trainer, ready classification/tagging/regression
  steps, truncated BPTT, teacher forcing and scheduled sampling, clipping; :func:`rnnkit.seed`;
* :mod:`rnnkit.generate` — greedy, sampling (temperature, top-k, top-p) and beam search;
* :mod:`rnnkit.data` — data sets, and :class:`rnnkit.TokenVocab` with the text helpers and
  metrics of :mod:`rnnkit.data.text`;
* :mod:`rnnkit.checkpoint` — safe, atomic checkpoints (safetensors + JSON);
* :mod:`rnnkit.tasks` — the built-in tasks the command line trains;
* :mod:`rnnkit.bptt` — back-propagation through time written out by hand;
* :mod:`rnnkit.cli` — the ``rnnkit`` command.
"""

from . import cells, models, train
from .cells import (
    AttentionCell,
    CIFGLSTMCell,
    ClockworkCell,
    DeepTransitionCell,
    ElmanCell,
    GRUCell,
    IndRNNCell,
    LayerNormGRUCell,
    LayerNormLSTMCell,
    LeakyCell,
    LSTMCell,
    MGUCell,
    SkipCell,
)
from .compose import Bidirectional, BidirectionalState, Stack
from .data.padding import SequenceCollate, SequenceDataset, collate_sequences, pad_sequences
from .data.text import TokenVocab
from .engine.choose import last_engines
from .generate import Generated, NBest, generate
from .interop import from_torch, to_torch
from .models import (
    Encoder,
    JordanNetwork,
    ManyToOne,
    OutputRecurrentRNN,
    ResidualStack,
    Seq2Seq,
    SequenceOutput,
    StepOutput,
    Tagger,
    VectorToSequence,
    halt_loss,
    length_loss,
    sequence_loss,
    sequence_nll,
    squared_error,
)
from .recurrent import Recurrent
from .train import TrainConfig, Trainer
from .train.trainer import seed_everything as seed

__version__ = "0.1.0"

__all__ = [
    "cells",
    "models",
    "train",
    "AttentionCell",
    "DeepTransitionCell",
    "Tagger",
    "JordanNetwork",
    "ManyToOne",
    "Encoder",
    "VectorToSequence",
    "OutputRecurrentRNN",
    "Seq2Seq",
    "ResidualStack",
    "StepOutput",
    "SequenceOutput",
    "sequence_nll",
    "squared_error",
    "halt_loss",
    "length_loss",
    "sequence_loss",
    "generate",
    "Generated",
    "NBest",
    "Trainer",
    "TrainConfig",
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
    "Recurrent",
    "Bidirectional",
    "BidirectionalState",
    "Stack",
    "from_torch",
    "to_torch",
    "last_engines",
    "seed",
    "pad_sequences",
    "SequenceCollate",
    "collate_sequences",
    "SequenceDataset",
    "TokenVocab",
]
