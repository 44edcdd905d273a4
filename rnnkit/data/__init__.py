"""Datasets made or read on this machine, nothing downloaded.

* :mod:`.corpus` — text corpora (the Python standard library's own source by default);
* :mod:`.tokens` — a corpus encoded once into a cached, memory-mapped token file;
* :mod:`.synthetic` — the adding, temporal order and copy memory problems, as their papers define them;
* :mod:`.datasets` — digits (scikit-learn), sunspots (statsmodels), numbers → words (generated),
  and per-character token tags of Python source (tokenize);
* :mod:`.padding` — your own variable-length sequences: padding, a DataLoader ``collate_fn``, a
  ``Dataset`` over ragged lists.
"""

from .corpus import CharVocab, DataError, read_text, split_documents, stdlib_corpus, stdlib_documents
from .datasets import digits, numbers_to_words, sunspots, tag_source, tagging
from .padding import Padded, PaddedBatch, SequenceCollate, SequenceDataset, collate_sequences, pad_sequences
from .synthetic import SequenceBatch, adding, copy_memory, heldout_generator, temporal_order
from .tokens import TokenCorpus, prepare_corpus

__all__ = [
    "CharVocab",
    "DataError",
    "read_text",
    "split_documents",
    "stdlib_corpus",
    "stdlib_documents",
    "TokenCorpus",
    "prepare_corpus",
    "SequenceBatch",
    "adding",
    "temporal_order",
    "copy_memory",
    "heldout_generator",
    "digits",
    "sunspots",
    "numbers_to_words",
    "tagging",
    "tag_source",
    "pad_sequences",
    "Padded",
    "PaddedBatch",
    "SequenceCollate",
    "collate_sequences",
    "SequenceDataset",
]
