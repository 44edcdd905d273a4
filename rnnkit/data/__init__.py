"""Datasets made or read on this machine, nothing downloaded.

* :mod:`.corpus` — text corpora (the Python standard library's own source by default);
* :mod:`.tokens` — a corpus encoded once into a cached, memory-mapped token file;
* :mod:`.synthetic` — the adding, temporal order and copy memory problems, as their papers define them;
* :mod:`.text` — vocabularies built from texts (:class:`TokenVocab`, reserved PAD/BOS/EOS/UNK ids),
  texts → padded id batches, and text metrics (exact match, edit distance, CER, chrF, BLEU);
* :mod:`.pairs` — one's own translation pairs, a file of ``source<TAB>target`` lines, read
  into vocabularies and padded splits;
* :mod:`.lstm1997` — the other experiments of the 1997 LSTM paper: the embedded Reber grammar, long
  time lags with and without noise, the noisy 2-sequence problem, multiplication;
* :mod:`.datasets` — digits (scikit-learn), sunspots (statsmodels), numbers → words (generated),
  and per-character token tags of Python source (tokenize);
* :mod:`.padding` — your own variable-length sequences: padding, a DataLoader ``collate_fn``, a
  ``Dataset`` over ragged lists.
"""

from .corpus import CharVocab, DataError, read_text, split_documents, stdlib_corpus, stdlib_documents
from .datasets import PairsData, digits, numbers_to_words, sunspots, tag_source, tagging
from .padding import Padded, PaddedBatch, SequenceCollate, SequenceDataset, collate_sequences, pad_sequences
from .pairs import load_pairs, read_pairs
from .synthetic import SequenceBatch, adding, copy_memory, heldout_generator, temporal_order
from .text import (
    BOS,
    EOS,
    PAD,
    UNK,
    TokenVocab,
    bleu,
    char_error_rate,
    chrf,
    edit_distance,
    exact_match,
    pad_batch,
)
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
    "PairsData",
    "read_pairs",
    "load_pairs",
    "TokenVocab",
    "PAD",
    "BOS",
    "EOS",
    "UNK",
    "pad_batch",
    "exact_match",
    "edit_distance",
    "char_error_rate",
    "chrf",
    "bleu",
]
