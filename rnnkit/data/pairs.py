"""One's own translation pairs: a file of ``source<TAB>target`` lines → vocabularies and padded
splits for an encoder–decoder (:class:`rnnkit.Seq2Seq`, ``rnnkit train seq2seq --data``).

The file is UTF-8 text, one pair a line: the source, one tab, the target (``"chat\\tcat"``).
Empty lines are skipped; a line without a tab or with more than one, an empty source, or bytes
that are not UTF-8 are refused with the line's number. Line ends may be ``\\n`` or ``\\r\\n``.

Validation and test pairs come from files of their own, or are held out of the one file by a
hash of the source text (:func:`holdout_split`): the same source always lands in the same split,
whatever the order of the lines or the seed, and the several targets of one source (a word with
two translations) never straddle training and test.

Symbols: S source length, U target length (BOS and EOS included), N pairs.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path

from .corpus import DataError
from .datasets import PairsData, Seq2SeqSplit
from .text import TokenVocab

Pair = tuple[str, str]


def read_pairs(path: str | Path) -> list[Pair]:
    """The (source, target) pairs of a file of ``source<TAB>target`` lines (see the module
    docstring for what is refused). Raises FileNotFoundError or DataError, naming the file and
    the line."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"pairs file {str(path)!r} does not exist")
    if path.is_dir():
        raise IsADirectoryError(f"pairs file {str(path)!r} is a folder; give a file of source<TAB>target lines")
    pairs: list[Pair] = []
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(
                    f"{path}:{number}: not UTF-8 text (byte {raw[e.start]:#04x} at column {e.start + 1}); "
                    f"save the file as UTF-8"
                ) from None
            if number == 1:
                line = line.removeprefix("\ufeff")  # a byte-order mark some editors write
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) != 2:
                got = "no tab" if len(fields) == 1 else f"{len(fields)} tab-separated fields"
                raise DataError(f"{path}:{number}: expected source<TAB>target, got {got}: {line[:60]!r}")
            source, target = fields
            if not source:
                raise DataError(f"{path}:{number}: the source (before the tab) is empty")
            pairs.append((source, target))
    if not pairs:
        raise DataError(f"pairs file {str(path)!r} holds no pair (expected source<TAB>target lines)")
    return pairs


def holdout_split(
    pairs: Sequence[Pair], val_fraction: float, test_fraction: float
) -> tuple[list[Pair], list[Pair], list[Pair]]:
    """(train, val, test) of ``pairs``, in their order: a pair is test if crc32(source) mod 10 000
    < 10 000 · test_fraction, validation if below (test_fraction + val_fraction) · 10 000, else
    training. A fraction of 0 holds nothing out for that split."""
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 <= f < 1:
            raise ValueError(f"holdout_split: {name} must be in [0, 1), got {f!r}")
    if val_fraction + test_fraction >= 1:
        raise ValueError(
            f"holdout_split: val_fraction + test_fraction must be < 1 to leave training pairs, "
            f"got {val_fraction + test_fraction}"
        )
    parts: tuple[list[Pair], list[Pair], list[Pair]] = ([], [], [])
    test_end, val_end = round(10_000 * test_fraction), round(10_000 * (test_fraction + val_fraction))
    for pair in pairs:
        h = zlib.crc32(pair[0].encode("utf-8")) % 10_000
        parts[2 if h < test_end else 1 if h < val_end else 0].append(pair)
    return parts


def encode_pairs(pairs: Sequence[Pair], source_vocab: TokenVocab, target_vocab: TokenVocab) -> Seq2SeqSplit:
    """Pairs → a padded :class:`~rnnkit.data.datasets.Seq2SeqSplit`: sources without BOS/EOS,
    targets framed BOS … EOS (feed ``targets[1:]`` to :meth:`rnnkit.Seq2Seq.forward`)."""
    if not pairs:
        raise DataError("encode_pairs: no pairs to encode")
    sources, targets = [s for s, _ in pairs], [t for _, t in pairs]
    src, src_len = source_vocab.batch(sources)
    if int(src_len.min()) == 0:
        k = int((src_len == 0).nonzero()[0])
        raise DataError(
            f"encode_pairs: the source {sources[k]!r} has no symbol of the vocabulary's kind ({source_vocab.split})"
        )
    tgt, tgt_len = target_vocab.batch(targets, bos=True, eos=True)
    return Seq2SeqSplit(src, src_len, tgt, tgt_len, sources, targets)


def load_pairs(
    path: str | Path,
    *,
    val: str | Path | None = None,
    test: str | Path | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    min_count: int = 1,
    split: str = "chars",
    vocabs: tuple[TokenVocab, TokenVocab] | None = None,
) -> PairsData:
    """Read a pairs file into vocabularies and train/val/test splits.

    Validation and test pairs are the files ``val`` and ``test`` when given, else held out of
    ``path`` by :func:`holdout_split` with ``val_fraction`` and ``test_fraction``. The
    vocabularies are built from the training pairs alone (:meth:`rnnkit.data.text.TokenVocab.from_texts` with
    ``min_count`` and ``split``, with UNK for what they lack), unless ``vocabs`` (source, target)
    are given — a trained model's, to evaluate it on new pairs.
    """
    pairs = read_pairs(path)
    extra = {name: read_pairs(p) for name, p in (("val", val), ("test", test)) if p is not None}
    train, held_val, held_test = holdout_split(
        pairs, 0.0 if val is not None else val_fraction, 0.0 if test is not None else test_fraction
    )
    parts = {"train": train, "val": extra.get("val", held_val), "test": extra.get("test", held_test)}
    for name, part in parts.items():
        if not part:
            how = {
                "train": "lower val_fraction and test_fraction",
                "val": "give more pairs, a larger val_fraction, or a validation file",
                "test": "give more pairs, a larger test_fraction, or a test file",
            }[name]
            raise DataError(f"the {name} split of {len(pairs)} pairs from {path} is empty: {how}")
    if vocabs is None:
        vocabs = (
            TokenVocab.from_texts([s for s, _ in train], min_count=min_count, split=split),
            TokenVocab.from_texts([t for _, t in train], min_count=min_count, split=split),
        )
    return PairsData(*vocabs, *(encode_pairs(parts[k], *vocabs) for k in ("train", "val", "test")))
