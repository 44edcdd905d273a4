r"""Real and generated datasets of the built-in tasks, all made or read on this machine.

* :func:`digits` — scikit-learn's shipped 8×8 handwritten digits read as a sequence (8 rows of 8
  pixels, or 64 pixels one at a time), classified after the last step;
* :func:`sunspots` — statsmodels' shipped yearly sunspot numbers (1700–2008), windows for
  one-step and k-step-ahead forecasting, with persistence and seasonal baselines;
* :func:`numbers_to_words` — a translation-like task generated here: integers written in digits
  → the same number in English words (``"1905"`` → ``"one thousand nine hundred five"``), with
  :func:`~rnnkit.data.text.exact_match` and :func:`~rnnkit.data.text.bleu` (sacrebleu);
* :func:`tagging` — every character of the Python standard library's source labelled with the
  kind of token it belongs to, by Python's own :mod:`tokenize`.

scikit-learn, statsmodels and sacrebleu are imported only inside the functions that need them
(``pip install rnnkit[tasks]``). Tensors are **time-major** as for :class:`rnnkit.Recurrent`.

Vocabularies, padding and the text metrics live in :mod:`rnnkit.data.text` (imported here
under their old names too).

Symbols: N examples, T time steps, I input features, K classes or forecast horizons, S source
length, U target length.
"""

from __future__ import annotations

import importlib
import io
import keyword
import tokenize
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .corpus import CharVocab, DataError, stdlib_files
from .text import BOS, EOS, PAD, SPECIALS, TokenVocab, bleu, exact_match, pad_batch  # noqa: F401 (their old home)


def _require(module: str, package: str, what: str) -> Any:
    """Import an optional dependency, or say exactly what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"{what} needs the package {package!r}, which is not installed: pip install rnnkit[tasks]"
        ) from e


def _check_int(value: Any, name: str, owner: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}: {name} must be an int ≥ {minimum}, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{owner}: {name} must be ≥ {minimum}, got {value}")
    return value


def _check_fractions(val_fraction: float, test_fraction: float, owner: str) -> None:
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not isinstance(f, (int, float)) or not 0 < f < 1:
            raise ValueError(f"{owner}: {name} must be in (0, 1), got {f!r}")
    if val_fraction + test_fraction >= 1:
        raise ValueError(
            f"{owner}: val_fraction + test_fraction must be < 1 to leave training data, got "
            f"{val_fraction + test_fraction}"
        )


class Split(NamedTuple):
    """Examples of one split: ``inputs`` (T, N, I) float or (T, N) int64 ids; ``targets``."""

    inputs: Tensor
    targets: Tensor


def majority_accuracy(train_targets: Tensor, test_targets: Tensor) -> float:
    """Baseline: accuracy on ``test_targets`` of always predicting the most frequent train class."""
    majority = torch.bincount(train_targets.flatten()).argmax()
    return float((test_targets == majority).double().mean())


# ---------------------------------------------------------------------------------------------
# digits

DIGITS_ORDERS = ("rows", "pixels")


class Digits(NamedTuple):
    """The digits dataset read as sequences; each split's inputs are (T, N, I), targets (N,)."""

    train: Split
    val: Split
    test: Split
    order: str


def digits(order: str = "rows", seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.15) -> Digits:
    """scikit-learn's 1797 8×8 digit images as sequences, classified after the last step.

    Pixels (0 … 16 in the data) are scaled to [0, 1]. ``order="rows"`` reads an image top to
    bottom, one row of 8 pixels per step: T = 8, I = 8. ``order="pixels"`` reads it one pixel
    per step in row-major order: T = 64, I = 1. The split is a fixed random permutation drawn
    from ``seed``.

    Returns:
        Digits: train/val/test :class:`Split` with inputs (T, N, I) float32 and targets (N,)
        int64 in 0 … 9.
    """
    owner = "digits"
    if order not in DIGITS_ORDERS:
        raise ValueError(f"{owner}: order must be one of {', '.join(map(repr, DIGITS_ORDERS))}, got {order!r}")
    _check_fractions(val_fraction, test_fraction, owner)
    datasets = _require("sklearn.datasets", "scikit-learn", "the digits task")
    bunch = datasets.load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32) / 16.0  # (N, 8, 8)
    labels = torch.as_tensor(bunch.target, dtype=torch.long)  # (N,)
    n = images.shape[0]
    if order == "rows":
        seqs = images.permute(1, 0, 2)  # (8, N, 8): step t is row t
    else:
        seqs = images.reshape(n, 64).t().unsqueeze(-1)  # (64, N, 1): step t is pixel t, row-major
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test, n_val = round(n * test_fraction), round(n * val_fraction)
    parts = perm[n_test + n_val :], perm[n_test : n_test + n_val], perm[:n_test]
    train, val, test = (Split(seqs[:, idx].contiguous(), labels[idx]) for idx in parts)
    return Digits(train, val, test, order)


# ---------------------------------------------------------------------------------------------
# sunspots

SUNSPOT_PERIOD = 11  # years: the solar cycle's average length


class Windows(NamedTuple):
    """Forecast windows of one split.

    Attributes:
        inputs: (W, N, 1) normalised values of the W years up to each origin.
        targets: (N, K) normalised values of the K years after it.
        origins: (N,) int64 index (into the series) of each window's last input year.
    """

    inputs: Tensor
    targets: Tensor
    origins: Tensor


class Sunspots(NamedTuple):
    """The yearly sunspot series and its forecast windows, split in time order.

    ``values`` are raw (sunspot numbers); window inputs/targets are normalised with the training
    years' ``mean`` and ``std``. ``bounds`` = (train_end, val_end): years ``[0, train_end)`` are
    training, ``[train_end, val_end)`` validation, the rest test. A window belongs to the split
    that holds all of its targets; its inputs may reach back into earlier years.
    """

    years: Tensor
    values: Tensor
    mean: float
    std: float
    window: int
    horizon: int
    bounds: tuple[int, int]
    train: Windows
    val: Windows
    test: Windows

    def normalise(self, x: Tensor) -> Tensor:
        """Raw sunspot numbers → the standardised scale the models see (train mean and std)."""
        return (x - self.mean) / self.std

    def denormalise(self, x: Tensor) -> Tensor:
        """The inverse of :meth:`normalise`: model outputs back to sunspot numbers."""
        return x * self.std + self.mean

    def baselines(self, split: str = "test", period: int = SUNSPOT_PERIOD) -> dict[str, Tensor]:
        """MSE (raw units, sunspot number²) of the persistence and seasonal forecasts per horizon (K,)."""
        if split not in ("train", "val", "test"):
            raise ValueError(f"Sunspots.baselines: split must be 'train', 'val' or 'test', got {split!r}")
        w = getattr(self, split)
        target = self.denormalise(w.targets)  # (N, K)
        return {
            "persistence": forecast_mse(persistence_forecast(self.values, w.origins, self.horizon), target),
            "seasonal": forecast_mse(seasonal_forecast(self.values, w.origins, self.horizon, period), target),
        }


def persistence_forecast(values: Tensor, origins: Tensor, horizon: int) -> Tensor:
    r"""The persistence forecast :math:`\hat y(t + h) = y(t)` for h = 1 … K. Returns (N, K)."""
    return values[origins].unsqueeze(1).expand(-1, horizon).clone()  # (N, K)


def seasonal_forecast(values: Tensor, origins: Tensor, horizon: int, period: int = SUNSPOT_PERIOD) -> Tensor:
    r"""The seasonal forecast: the value one cycle earlier, :math:`\hat y(t + h) = y(t + h - P)`.

    For h > P that year is still in the future; the forecast then goes back as many whole
    cycles as needed, :math:`y(t + h - P\lceil h/P \rceil)`. Returns (N, K).
    """
    h = torch.arange(1, horizon + 1)  # (K,)
    back = period * torch.div(h + period - 1, period, rounding_mode="floor")  # P ⌈h/P⌉
    idx = origins.unsqueeze(1) + h - back  # (N, K)
    if int(idx.min()) < 0:
        raise ValueError(f"seasonal_forecast: origins must be ≥ period − 1 = {period - 1}, got {int(origins.min())}")
    return values[idx]


def forecast_mse(prediction: Tensor, target: Tensor) -> Tensor:
    """Mean squared error per horizon: (N, K), (N, K) → (K,)."""
    if prediction.shape != target.shape:
        raise ValueError(
            f"forecast_mse: prediction must have the target's shape {tuple(target.shape)}, got "
            f"{tuple(prediction.shape)}"
        )
    return ((prediction - target) ** 2).mean(dim=0)


def sunspots(
    window: int = 20,
    horizon: int = 1,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    period: int = SUNSPOT_PERIOD,
) -> Sunspots:
    """statsmodels' yearly sunspot numbers (1700–2008, 309 years) as forecast windows.

    Each window holds the ``window`` years up to an origin year t as inputs and the ``horizon``
    years t + 1 … t + K as targets: ``horizon=1`` is one-step-ahead forecasting, larger values
    k-step-ahead. Origins start at max(window, period) − 1, so that every window also has a
    seasonal forecast. The first 70 % of years train, the next 15 % validate, the last 15 % test;
    mean and standard deviation are fitted on the training years only.
    """
    owner = "sunspots"
    _check_int(window, "window", owner, 1)
    _check_int(horizon, "horizon", owner, 1)
    _check_int(period, "period", owner, 1)
    _check_fractions(val_fraction, test_fraction, owner)
    sm = _require("statsmodels.api", "statsmodels", "the sunspots task")
    frame = sm.datasets.sunspots.load_pandas().data
    years = torch.tensor(frame["YEAR"].to_numpy(), dtype=torch.float64)
    values = torch.tensor(frame["SUNACTIVITY"].to_numpy(), dtype=torch.float32)
    n = values.shape[0]
    train_end, val_end = round(n * (1 - val_fraction - test_fraction)), round(n * (1 - test_fraction))
    train_values = values[:train_end].double()
    mean, std = float(train_values.mean()), float(train_values.std())
    first = max(window, period) - 1

    def norm(x: Tensor) -> Tensor:
        return ((x.double() - mean) / std).float()

    splits = []
    for name, start, end in (("train", 0, train_end), ("val", train_end, val_end), ("test", val_end, n)):
        lo, hi = max(first, start - 1), end - horizon  # origins t in [lo, hi): targets t+1 … t+K in [start, end)
        if hi <= lo:
            raise ValueError(
                f"{owner}: the {name} years [{start}, {end}) hold no window with window={window}, horizon={horizon}; "
                "use a smaller window or horizon"
            )
        origins = torch.arange(lo, hi)  # (N,)
        steps = origins.unsqueeze(0) + torch.arange(-window + 1, 1).unsqueeze(1)  # (W, N) series indices
        ahead = origins.unsqueeze(1) + torch.arange(1, horizon + 1)  # (N, K)
        splits.append(Windows(norm(values[steps]).unsqueeze(-1), norm(values[ahead]), origins))  # (W, N, 1), (N, K)
    return Sunspots(years, values, mean, std, window, horizon, (train_end, val_end), *splits)


# ---------------------------------------------------------------------------------------------
# seq2seq: numbers in digits → English words

_ONES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
         "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen")  # fmt: skip
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_SCALES = ((10**6, "million"), (10**3, "thousand"))
MAX_DIGITS = 9


def _below_thousand(k: int) -> list[str]:
    words = []
    if k >= 100:
        words += [_ONES[k // 100], "hundred"]
        k %= 100
    if k >= 20:
        words.append(_TENS[k // 10] + (f"-{_ONES[k % 10]}" if k % 10 else ""))
    elif k > 0:
        words.append(_ONES[k])
    return words


def number_to_words(k: int) -> str:
    """An integer 0 … 999 999 999 in American English words: no "and", hyphenated tens.

    ``1905`` → ``"one thousand nine hundred five"``, ``42`` → ``"forty-two"``.
    """
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < 10**MAX_DIGITS:
        raise ValueError(f"number_to_words: k must be an int in [0, {10**MAX_DIGITS - 1}], got {k!r}")
    if k == 0:
        return "zero"
    words = []
    for size, name in _SCALES:
        if k >= size:
            words += _below_thousand(k // size) + [name]
            k %= size
    return " ".join(words + _below_thousand(k))


class Seq2SeqSplit(NamedTuple):
    """Pairs of one split, padded and time-major.

    Attributes:
        sources: (S, N) int64 source ids, PAD after each length.
        source_lengths: (N,) int64.
        targets: (U, N) int64: BOS, the target ids, EOS, then PAD. Teacher forcing feeds
            ``targets[:-1]`` and predicts ``targets[1:]``; :meth:`rnnkit.Seq2Seq.forward`
            prepends BOS itself, so give it ``targets[1:]`` and ``target_lengths - 1`` (it
            refuses targets that start with BOS).
        target_lengths: (N,) int64, BOS and EOS included.
        source_texts, target_texts: the strings.
    """

    sources: Tensor
    source_lengths: Tensor
    targets: Tensor
    target_lengths: Tensor
    source_texts: list[str]
    target_texts: list[str]


class PairsData(NamedTuple):
    """Pairs in three splits with the vocabularies they were encoded with (what
    :func:`numbers_to_words` and :func:`rnnkit.data.pairs.read_pairs` return). Formerly
    ``Seq2Seq``, a name that also belongs to the model :class:`rnnkit.Seq2Seq`."""

    source_vocab: TokenVocab
    target_vocab: TokenVocab
    train: Seq2SeqSplit
    val: Seq2SeqSplit
    test: Seq2SeqSplit


def _sample_numbers(total: int, max_digits: int, gen: torch.Generator) -> list[int]:
    """``total`` distinct integers; the digit count is uniform in 1 … max_digits, then the value."""
    seen: dict[int, None] = {}  # insertion-ordered set
    while len(seen) < total:
        m = 2 * (total - len(seen))
        d = torch.randint(1, max_digits + 1, (m,), generator=gen, dtype=torch.int64)
        low = torch.where(d == 1, 0, 10 ** (d - 1))
        high = 10**d
        k = low + (torch.rand(m, generator=gen, dtype=torch.float64) * (high - low)).long()
        for v in k.tolist():
            seen.setdefault(v)
    return list(seen)[:total]


def numbers_to_words(
    n_train: int = 20_000, n_val: int = 1_000, n_test: int = 1_000, max_digits: int = 6, seed: int = 0
) -> PairsData:
    """Integers in digits → English words: a seq2seq task with different lengths and vocabularies.

    Sources are the digits of an integer with 1 … ``max_digits`` digits (the digit count
    uniform, then the value uniform); targets are :func:`number_to_words`. The source vocabulary
    is the 10 digits, the target vocabulary the letters, space and hyphen the words use; both
    start with PAD, BOS, EOS. Every number appears in one split only, so the test set measures
    translation of numbers never seen in training.
    """
    owner = "numbers_to_words"
    for name, v in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        _check_int(v, name, owner, 1)
    _check_int(max_digits, "max_digits", owner, 1)
    if max_digits > MAX_DIGITS:
        raise ValueError(f"{owner}: max_digits must be ≤ {MAX_DIGITS}, got {max_digits}")
    total = n_train + n_val + n_test
    if total > 10**max_digits // 2:
        raise ValueError(f"{owner}: n_train + n_val + n_test = {total} distinct numbers need max_digits > {max_digits}")
    numbers = _sample_numbers(total, max_digits, torch.Generator().manual_seed(seed))
    src_vocab = TokenVocab("0123456789")
    words = set(" -".join(_ONES + _TENS + ("hundred", "thousand", "million")))
    tgt_vocab = TokenVocab(sorted(words))
    splits = []
    for part in (numbers[:n_train], numbers[n_train : n_train + n_val], numbers[n_train + n_val :]):
        src_texts = [str(k) for k in part]
        tgt_texts = [number_to_words(k) for k in part]
        sources, source_lengths = pad_batch([src_vocab.encode(s) for s in src_texts])
        targets, target_lengths = pad_batch([tgt_vocab.encode(t, bos=True, eos=True) for t in tgt_texts])
        splits.append(Seq2SeqSplit(sources, source_lengths, targets, target_lengths, src_texts, tgt_texts))
    return PairsData(src_vocab, tgt_vocab, *splits)


def spell_digits(source: str) -> str:
    """Baseline translation: each digit's own word, no place value (``"305"`` → ``"three zero five"``)."""
    return " ".join(_ONES[int(ch)] for ch in source)


# ---------------------------------------------------------------------------------------------
# tagging: Python source, every character labelled with its token kind

#: Tags, by index. "space" is every character outside a token (spaces and tabs between tokens,
#: indentation (INDENT tokens), line continuations (backslash-newline)). "newline" is the
#: NEWLINE and NL tokens (ends of logical and of blank/comment lines). "keyword" is a NAME in
#: keyword.kwlist (soft keywords such as match/case are names: tokenize cannot tell them apart).
#: "string" includes prefixes and quotes (and f-strings' FSTRING_START/MIDDLE/END on Python ≥ 3.12,
#: where the expressions inside an f-string's braces keep their own tags).
TAGS = ("space", "newline", "name", "keyword", "operator", "number", "string", "comment")
_TAG = {name: i for i, name in enumerate(TAGS)}
_TOKEN_TAG = {
    "NEWLINE": "newline",
    "NL": "newline",
    "OP": "operator",
    "NUMBER": "number",
    "STRING": "string",
    "FSTRING_START": "string",
    "FSTRING_MIDDLE": "string",
    "FSTRING_END": "string",
    "TSTRING_START": "string",
    "TSTRING_MIDDLE": "string",
    "TSTRING_END": "string",
    "COMMENT": "comment",
}


def tag_source(text: str) -> Tensor:
    """The tag (index into :data:`TAGS`) of every character of Python source, by :mod:`tokenize`.

    Returns int64 (len(text),). Raises DataError for source that does not tokenize (including
    tokenize's ERRORTOKEN for characters no token can start with).
    """
    lines = io.StringIO(text).readlines()  # split exactly as tokenize's readline will
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    tags = torch.full((len(text),), _TAG["space"], dtype=torch.long)
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            kind = tokenize.tok_name[tok.type]
            if kind == "ERRORTOKEN":
                raise DataError(f"source does not tokenize: unexpected {tok.string!r} at line {tok.start[0]}")
            if kind == "NAME":
                tag = "keyword" if keyword.iskeyword(tok.string) else "name"
            else:
                tag = _TOKEN_TAG.get(kind)
            if tag is None:  # INDENT, DEDENT, ENDMARKER…: whitespace or nothing
                continue
            begin = starts[tok.start[0] - 1] + tok.start[1]
            end = starts[tok.end[0] - 1] + tok.end[1]
            tags[begin:end] = _TAG[tag]
    except (tokenize.TokenError, SyntaxError) as e:
        raise DataError(f"source does not tokenize: {e}") from None
    return tags


class Tagging(NamedTuple):
    """Character tagging data: splits of (T, N) int64 character ids and (T, N) tags.

    ``files`` and ``skipped`` name the source files used and those left out because they do
    not tokenize.
    """

    vocab: CharVocab
    tags: tuple[str, ...]
    train: Split
    val: Split
    test: Split
    files: list[str]
    skipped: list[str]


def tagging(
    chunk_length: int = 200, max_chars: int = 4_000_000, every: int = 20, root: str | Path | None = None
) -> Tagging:
    """Python source tagged per character (:func:`tag_source`), cut into chunks for batching.

    Whole files of the standard library (:func:`rnnkit.data.corpus.stdlib_files`, or the
    ``.py`` files under ``root``) are read in sorted order until ``max_chars`` characters are
    reached. As in :func:`rnnkit.data.corpus.split_documents`, whole files are held out: file k
    is test if k mod ``every`` = every − 1, validation if k mod every = every − 2, else train.
    Each split's text is concatenated and cut into chunks of ``chunk_length`` characters (the
    tail is dropped). The vocabulary holds every character of the files used.

    Returns:
        Tagging with train/val/test :class:`Split` of inputs (T, N) int64 character ids and
        targets (T, N) int64 tags, T = ``chunk_length``.
    """
    owner = "tagging"
    _check_int(chunk_length, "chunk_length", owner, 1)
    _check_int(max_chars, "max_chars", owner, 1)
    _check_int(every, "every", owner, 3)
    texts, tags, files, skipped, total = [], [], [], [], 0
    for path in stdlib_files(root):
        if total >= max_chars:
            break
        text = path.read_text(encoding="utf-8", errors="replace")
        try:
            tags.append(tag_source(text))
        except DataError:
            skipped.append(str(path))
            continue
        texts.append(text)
        files.append(str(path))
        total += len(text)
    vocab = CharVocab.from_text("".join(texts))
    parts: dict[str, tuple[list[str], list[Tensor]]] = {"train": ([], []), "val": ([], []), "test": ([], [])}
    for k, (text, tag) in enumerate(zip(texts, tags)):
        name = "test" if k % every == every - 1 else "val" if k % every == every - 2 else "train"
        parts[name][0].append(text)
        parts[name][1].append(tag)
    splits = []
    for name, (part_texts, part_tags) in parts.items():
        ids = vocab.encode("".join(part_texts))
        labels = torch.cat(part_tags) if part_tags else torch.zeros(0, dtype=torch.long)
        n = ids.numel() // chunk_length
        if n == 0:
            raise DataError(
                f"{owner}: the {name} split holds {ids.numel()} characters of {len(files)} files, "
                f"less than one chunk of {chunk_length}; raise max_chars or lower every"
            )
        x = ids[: n * chunk_length].view(n, chunk_length).t().contiguous()  # (T, N)
        y = labels[: n * chunk_length].view(n, chunk_length).t().contiguous()  # (T, N)
        splits.append(Split(x, y))
    return Tagging(vocab, TAGS, *splits, files, skipped)


def unigram_tag_accuracy(train: Split, test: Split, num_tags: int = len(TAGS)) -> float:
    """Baseline: tag each character with its most frequent tag in train (majority tag if unseen).

    A model that reads no context gets this far; the rest needs the surrounding characters.
    """
    chars, tags = train.inputs.flatten(), train.targets.flatten()
    vocab = int(max(chars.max(), test.inputs.max())) + 1
    counts = torch.zeros(vocab, num_tags, dtype=torch.long)
    counts.index_put_((chars, tags), torch.ones_like(chars), accumulate=True)  # (V, tags)
    best = counts.argmax(dim=1)  # (V,)
    best[counts.sum(dim=1) == 0] = torch.bincount(tags, minlength=num_tags).argmax()
    return float((best[test.inputs] == test.targets).double().mean())


def __getattr__(name: str) -> Any:
    """Old names that still work, with a DeprecationWarning."""
    if name == "Seq2Seq":
        warnings.warn(
            "rnnkit.data.datasets.Seq2Seq is now PairsData (the name Seq2Seq is the model, rnnkit.Seq2Seq); "
            "the old name goes in a later release",
            DeprecationWarning,
            stacklevel=2,
        )
        return PairsData
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
