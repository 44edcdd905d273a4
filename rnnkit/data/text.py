r"""Text for sequence models: vocabularies built from texts, texts → padded id tensors, and the
metrics of text outputs (exact match, edit distance, character error rate, chrF, BLEU).

**Reserved ids.** Every :class:`TokenVocab` starts with the same special symbols, so a model
built for one vocabulary knows them by id:

========  ====  =====================================================================================
symbol    id    what it is for
========  ====  =====================================================================================
``PAD``   0     fills a batch after each sequence's length (:meth:`TokenVocab.batch`); losses and
                encoders skip it through the lengths, never by its value
``BOS``   1     "begin of sequence": the decoder's input before the first target symbol
                (``rnnkit.Seq2Seq(..., bos=BOS)`` prepends it itself; targets do not hold it)
``EOS``   2     "end of sequence": the last target symbol; decoding (``generate(end="eos")``) stops
                when the model emits it
``UNK``   3     only with ``unk=True``: every symbol the vocabulary does not hold (unseen
                characters or words of held-out text) instead of an error
========  ====  =====================================================================================

The vocabulary's own symbols follow, from id 3 (4 with ``unk``). A vocabulary is built from
characters by default, or from words (``split="words"``: ``str.split``, joined by a space),
and saved with the model as plain JSON (:meth:`TokenVocab.to_dict`).

**Metrics** compare hypotheses with one reference each, over a corpus (lists of strings):

* :func:`exact_match` — the share of hypotheses equal to their reference;
* :func:`edit_distance` — Levenshtein distance of two sequences;
* :func:`char_error_rate` — Σ edit distance / Σ reference length (0 is perfect; can pass 1);
* :func:`chrf` — chrF (Popović 2015), character n-gram F-score, as sacreBLEU computes it;
* :func:`bleu` — corpus BLEU over words (sacreBLEU); meaningless for single words, where
  character metrics (CER, chrF) are the ones to read.

Symbols: T longest sequence of a batch, N sequences.
"""

from __future__ import annotations

import importlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from .corpus import DataError

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ("<pad>", "<bos>", "<eos>")  # ids 0, 1, 2 of every vocabulary
UNK_TOKEN = "<unk>"  # id 3 of a vocabulary with unk=True
UNK_TEXT = "\N{REPLACEMENT CHARACTER}"  # what decode writes for UNK
SPLITS = ("chars", "words")


def _splitter(split: str) -> Callable[[str], list[str]]:
    return list if split == "chars" else str.split


class TokenVocab:
    """Symbols (characters or words) ↔ ids, after the reserved PAD = 0, BOS = 1, EOS = 2 (and
    UNK = 3 with ``unk``); see the module docstring for what each is for.

    Args:
        symbols: the vocabulary's own symbols, unique, in id order (from id 3, or 4 with unk).
        unk: map symbols not in the vocabulary to UNK; False: encoding one raises DataError.
        split: ``"chars"`` (a text is its characters) or ``"words"`` (``str.split``; decode
            joins with one space).

    Build one from training texts with :meth:`from_texts`; turn texts into a padded batch with
    :meth:`batch`; keep it with the model's checkpoint as :meth:`to_dict` /
    :meth:`from_dict` (JSON).
    """

    def __init__(self, symbols: Iterable[str], *, unk: bool = False, split: str = "chars") -> None:
        symbols = list(symbols)
        if split not in SPLITS:
            raise ValueError(f"TokenVocab: split must be one of {', '.join(map(repr, SPLITS))}, got {split!r}")
        if not isinstance(unk, bool):
            raise TypeError(f"TokenVocab: unk must be a bool, got {unk!r}")
        bad = [s for s in symbols if not isinstance(s, str) or not s]
        if bad:
            raise DataError(f"TokenVocab: symbols must be non-empty strings, got {bad[0]!r}")
        specials = SPECIALS + ((UNK_TOKEN,) if unk else ())
        if len(set(symbols)) != len(symbols) or set(symbols) & set(specials):
            raise DataError("TokenVocab: characters must be unique and distinct from the special tokens")
        self.unk, self.split = unk, split
        self.tokens = list(specials) + symbols
        self.index = {t: i for i, t in enumerate(self.tokens)}
        self._split = _splitter(split)
        self._join = "" if split == "chars" else " "

    @classmethod
    def from_texts(
        cls,
        texts: Iterable[str],
        *,
        min_count: int = 1,
        max_size: int | None = None,
        unk: bool = True,
        split: str = "chars",
    ) -> TokenVocab:
        """The vocabulary of ``texts``: their symbols seen at least ``min_count`` times, the
        ``max_size`` most frequent of them if given (ties: the symbol that sorts first), in sorted
        order so the same texts always give the same ids.

        ``unk`` (the default here) maps what the texts did not hold — a character that appears
        only in held-out data — to UNK instead of failing; ``unk=False`` refuses it.
        """
        owner = "TokenVocab.from_texts"
        for name, value, lo in (("min_count", min_count, 1), ("max_size", max_size, 1)):
            if value is None and name == "max_size":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise ValueError(f"{owner}: {name} must be an int ≥ {lo}, got {value!r}")
        if split not in SPLITS:
            raise ValueError(f"{owner}: split must be one of {', '.join(map(repr, SPLITS))}, got {split!r}")
        if isinstance(texts, str):
            raise TypeError(f"{owner}: texts must be a list of strings, got one string (wrap it: [text])")
        counts: Counter[str] = Counter()
        cut = _splitter(split)
        for k, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"{owner}: texts must be strings, got {type(text).__name__} at index {k}")
            counts.update(cut(text))
        kept = sorted((s for s, c in counts.items() if c >= min_count), key=lambda s: (-counts[s], s))
        if max_size is not None:
            kept = kept[:max_size]
        if not kept:
            raise DataError(
                f"{owner}: no symbol occurs {min_count} times or more in the texts ({len(counts)} distinct)"
            )
        return cls(sorted(kept), unk=unk, split=split)

    def __len__(self) -> int:
        return len(self.tokens)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TokenVocab) and (self.tokens, self.unk, self.split) == (
            other.tokens,
            other.unk,
            other.split,
        )

    def __repr__(self) -> str:
        unk = ", unk" if self.unk else ""
        return f"TokenVocab({len(self.symbols)} {self.split}{unk}; {len(self)} ids with the specials)"

    @property
    def symbols(self) -> list[str]:
        """The vocabulary's own symbols (after the specials), in id order."""
        return self.tokens[len(SPECIALS) + self.unk :]

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """Ids of ``text``, optionally framed by BOS/EOS; a symbol not in the vocabulary becomes
        UNK (with ``unk``) or raises DataError."""
        if self.unk:
            ids = [self.index.get(s, UNK) for s in self._split(text)]
        else:
            try:
                ids = [self.index[s] for s in self._split(text)]
            except KeyError as e:
                raise DataError(
                    f"{'character' if self.split == 'chars' else 'word'} {e.args[0]!r} is not in the "
                    f"vocabulary (build it with unk=True to map unseen symbols to UNK)"
                ) from None
        return [BOS] * bos + ids + [EOS] * eos

    def decode(self, ids: Sequence[int] | Tensor) -> str:
        """The text up to the first EOS; PAD and BOS are skipped, UNK is written ``�``."""
        out = []
        for i in ids.tolist() if isinstance(ids, Tensor) else ids:
            if i == EOS:
                break
            if i == UNK and self.unk:
                out.append(UNK_TEXT)
            elif i not in (PAD, BOS):
                out.append(self.tokens[i])
        return self._join.join(out)

    def batch(self, texts: Sequence[str], bos: bool = False, eos: bool = False) -> tuple[Tensor, Tensor]:
        """Texts → (T, N) int64 ids padded with PAD after each text, and lengths (N,) (BOS and
        EOS counted when added). A decoder's targets take ``eos=True`` and no BOS (the model
        prepends it); a source needs neither."""
        if isinstance(texts, str):
            raise TypeError("TokenVocab.batch: texts must be a list of strings, got one string (wrap it: [text])")
        return pad_batch([self.encode(t, bos=bos, eos=eos) for t in texts])

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON for a checkpoint's meta: ``{"symbols": [...], "unk": bool, "split": str}``."""
        return {"symbols": self.symbols, "unk": self.unk, "split": self.split}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | list[str]) -> TokenVocab:
        """The inverse of :meth:`to_dict`; a plain list of symbols (older checkpoints) is a
        character vocabulary without UNK."""
        if isinstance(d, list):
            return cls(d)
        if not isinstance(d, dict) or "symbols" not in d:
            raise DataError(f"TokenVocab.from_dict: expected {{'symbols': [...], 'unk': …, 'split': …}}, got {d!r:.80}")
        return cls(d["symbols"], unk=bool(d.get("unk", False)), split=d.get("split", "chars"))


def pad_batch(seqs: Sequence[Sequence[int]], pad: int = PAD) -> tuple[Tensor, Tensor]:
    """Token id lists → (T, N) int64 padded with ``pad`` (PAD), and lengths (N,) int64."""
    if len(seqs) == 0:
        raise ValueError("pad_batch: seqs must hold at least one sequence, got none")
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    out = torch.full((int(lengths.max()), len(seqs)), pad, dtype=torch.long)  # (T, N)
    for b, s in enumerate(seqs):
        if len(s):
            out[: len(s), b] = torch.as_tensor(s, dtype=torch.long)
    return out, lengths


# ---------------------------------------------------------------------------------------------
# metrics


def _check_pairs(hypotheses: Sequence[str], references: Sequence[str], owner: str) -> None:
    for name, v in (("hypotheses", hypotheses), ("references", references)):
        if isinstance(v, str):
            raise TypeError(f"{owner}: {name} must be a list of strings, got one string (wrap it: [text])")
    if len(hypotheses) != len(references) or not references:
        raise ValueError(
            f"{owner}: need as many hypotheses as references (at least one), got {len(hypotheses)} and "
            f"{len(references)}"
        )


def exact_match(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Share of hypotheses identical to their reference (0 … 1)."""
    _check_pairs(hypotheses, references, "exact_match")
    return sum(h == r for h, r in zip(hypotheses, references)) / len(references)


def edit_distance(a: Sequence, b: Sequence) -> int:
    """Levenshtein distance: the fewest insertions, deletions and substitutions turning a into b
    (strings, or lists of words or ids)."""
    row = list(range(len(b) + 1))  # distances from a[:0] to each prefix of b
    for i, x in enumerate(a, 1):
        diag, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            diag, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diag + (x != y))
    return row[-1]


def char_error_rate(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Character error rate over a corpus: Σ edit_distance(hypothesis, reference) / Σ
    len(reference) (0 is perfect; it can pass 1 when hypotheses are long). Not the mean of
    per-sentence rates, so long references weigh more, as in speech recognition's WER."""
    _check_pairs(hypotheses, references, "char_error_rate")
    total = sum(len(r) for r in references)
    if total == 0:
        raise ValueError("char_error_rate: the references hold no character, so no rate exists")
    return sum(edit_distance(h, r) for h, r in zip(hypotheses, references)) / total


def _char_ngrams(text: str, order: int) -> list[Counter[str]]:
    text = "".join(text.split())  # chrF reads characters without whitespace
    return [Counter(text[i : i + n] for i in range(len(text) - n + 1)) for n in range(1, order + 1)]


def chrf(hypotheses: Sequence[str], references: Sequence[str], *, order: int = 6, beta: float = 2.0) -> float:
    r"""Corpus chrF (Popović 2015, "chrF: character n-gram F-score for automatic MT evaluation"),
    0 … 100, computed as sacreBLEU's ``CHRF()`` (version 2) does, without needing it.

    Whitespace is removed; for n = 1 … ``order`` the character n-grams of every hypothesis and
    its reference are counted, and the corpus sums of hypothesis n-grams, reference n-grams and
    matches (min of the two counts) give per-order precision P_n and recall R_n (an order whose
    reference n-grams do not exist adds nothing to P's denominator, as in sacreBLEU). P and R are
    the means over the orders that have both hypothesis and reference n-grams, and

    .. math:: \mathrm{chrF}_\beta = 100\,\frac{(1 + \beta^2)\, P R}{\beta^2 P + R}

    with β = 2 weighing recall twice as much as precision.
    """
    _check_pairs(hypotheses, references, "chrf")
    if isinstance(order, bool) or not isinstance(order, int) or order < 1:
        raise ValueError(f"chrf: order must be an int ≥ 1, got {order!r}")
    if not beta > 0:
        raise ValueError(f"chrf: beta must be > 0, got {beta!r}")
    stats = [[0, 0, 0] for _ in range(order)]  # per order: hypothesis n-grams, reference n-grams, matches
    for h, r in zip(hypotheses, references):
        for n, (hyp, ref) in enumerate(zip(_char_ngrams(h, order), _char_ngrams(r, order))):
            stats[n][0] += sum(hyp.values()) if ref else 0
            stats[n][1] += sum(ref.values())
            stats[n][2] += sum(min(c, ref[g]) for g, c in hyp.items() if g in ref)
    precisions = [m / h for h, r, m in stats if h > 0 and r > 0]
    recalls = [m / r for h, r, m in stats if h > 0 and r > 0]
    if not precisions:
        return 0.0
    p, r = sum(precisions) / len(precisions), sum(recalls) / len(recalls)
    if p + r == 0:
        return 0.0
    b2 = beta**2
    return 100 * (1 + b2) * p * r / (b2 * p + r)


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (0 … 100) over words, against one reference each: ``sacrebleu.corpus_bleu``
    (needs sacrebleu: ``pip install rnnkit[tasks]``).

    BLEU counts word n-grams up to 4, so on one-word outputs (a dictionary's word pairs) it is 0
    unless the whole word matches and says nothing of near misses: read :func:`char_error_rate`
    and :func:`chrf` there.
    """
    _check_pairs(hypotheses, references, "bleu")
    try:
        sacrebleu = importlib.import_module("sacrebleu")
    except ImportError as e:
        raise ImportError(
            "BLEU needs the package 'sacrebleu', which is not installed: pip install rnnkit[tasks]"
        ) from e
    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score)


__all__ = [
    "PAD", "BOS", "EOS", "UNK", "SPECIALS", "TokenVocab", "pad_batch",
    "exact_match", "edit_distance", "char_error_rate", "chrf", "bleu",
]  # fmt: skip
