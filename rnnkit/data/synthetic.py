r"""Synthetic long-time-lag tasks, generated exactly as their papers define them.

* :func:`adding` — the adding problem, Hochreiter & Schmidhuber (1997), "Long Short-Term
  Memory", Neural Computation 9(8), section 5, experiment 4;
* :func:`temporal_order` — the temporal order problem, same paper, experiment 6a (two relevant
  symbols, 4 classes) and, with :data:`TEMPORAL_ORDER_6B`, 6b (three symbols, 8 classes);
* :func:`copy_memory` — the copy memory problem of Arjovsky, Shah & Bengio (2016), "Unitary
  Evolution Recurrent Neural Networks", section 4.1.

Every generator returns a :class:`SequenceBatch`, **time-major** like :class:`rnnkit.Recurrent`'s
default (``batch_first=False``): ``inputs`` (T, N, I) with zeros past each sequence's end,
``lengths`` (N,) int64 to pass on as ``Recurrent(...)(inputs, lengths=lengths)`` (None where
every sequence has the same length), and ``targets``. A sequence's answer is read at its own last
step, which is where ``Recurrent``'s final state is taken.

Every generator draws from a ``torch.Generator`` (or an int seed), so the same seed gives the same
data. :func:`heldout_generator` seeds :data:`TEST_SEED`, a fixed seed used for test sets only: train
on generators seeded otherwise and the test set is never trained on.

Symbols: N sequences, T time steps (the longest sequence of the batch), I input size, K classes.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor

# The test sets of Hochreiter & Schmidhuber (1997) hold 2560 sequences; a task counts as solved
# when at most 3 of them are processed wrongly (experiments 4 and 6: "never more than 3").
TEST_SIZE = 2560
MAX_WRONG = 3
#: Seeds test sets and nothing else, so a trainer seeding its own generator with a small integer
#: never draws the test sequences.
TEST_SEED = 19_972_560


class SequenceBatch(NamedTuple):
    """N generated sequences, time-major.

    Attributes:
        inputs: (T, N, I) float, zero past each sequence's length.
        targets: the task's targets: (N,) at the last step, or (T, N) at every step.
        lengths: (N,) int64 in [1, T], or None when every sequence fills all T steps.
    """

    inputs: Tensor
    targets: Tensor
    lengths: Tensor | None


def as_generator(generator: Any, owner: str) -> torch.Generator:
    """A ``torch.Generator`` as given, or a fresh one seeded with an int."""
    if isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, int) and not isinstance(generator, bool):
        return torch.Generator().manual_seed(generator)
    raise TypeError(f"{owner}: generator must be a torch.Generator or an int seed, got {type(generator).__name__}")


def heldout_generator() -> torch.Generator:
    """A fresh generator seeded with :data:`TEST_SEED`: the same test set on every call."""
    return torch.Generator().manual_seed(TEST_SEED)


def _check_int(value: Any, name: str, owner: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}: {name} must be an int ≥ {minimum}, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{owner}: {name} must be ≥ {minimum}, got {value}")
    return value


def _randint(low: Tensor | int, high: Tensor | int, n: int, gen: torch.Generator) -> Tensor:
    """n integers, each uniform in [low, high) (bounds may differ per entry)."""
    low = torch.as_tensor(low, dtype=torch.long)
    high = torch.as_tensor(high, dtype=torch.long)
    return low + (torch.rand(n, generator=gen, dtype=torch.float64) * (high - low)).long()


def solved(wrong: int, n: int = TEST_SIZE, max_wrong: int = MAX_WRONG) -> bool:
    """The 1997 paper's success criterion: at most 3 wrong of 2560 test sequences.

    For a test set of another size n the same rate is allowed: ``wrong ≤ ⌊3 n / 2560⌋``.
    """
    _check_int(n, "n", "solved", 1)
    _check_int(wrong, "wrong", "solved", 0)
    return wrong <= (max_wrong * n) // TEST_SIZE


# ---------------------------------------------------------------------------------------------
# Adding problem (experiment 4)

ADDING_TOLERANCE = 0.04  # "processed correctly if the absolute error at the sequence end is below 0.04"
ADDING_WINDOW = 10  # X1 is marked among the first ten pairs


def adding(n: int, T: int, generator: torch.Generator | int) -> SequenceBatch:
    r"""The adding problem of Hochreiter & Schmidhuber (1997), experiment 4.

    Each step is a pair (value, marker). Per sequence:

    * its length L is uniform over the integers T … T + ⌊T/10⌋;
    * the values are uniform in [−1, 1];
    * one of the first ten pairs is marked (marker 1.0); its value is :math:`X_1`;
    * one of the first ⌊T/2⌋ − 1 pairs that are still unmarked is marked; its value is
      :math:`X_2` (so it lies among the first ⌊T/2⌋ pairs);
    * every other marker is 0.0, except those of the first and the final pair, which are −1.0;
    * in the rare case that the first pair is marked, its value is set to 0 (the paper says
      ":math:`X_1` is set to zero"; read literally, the second mark may land on the first pair
      too, and the same rule then sets :math:`X_2` to 0);
    * the target, given at the sequence end, is

    .. math::
        y = 0.5 + \frac{X_1 + X_2}{4}

    Args:
        n: number of sequences, ≥ 1.
        T: the minimal length, ≥ 20 (the first mark's window, the first ten pairs, must lie
            within the first ⌊T/2⌋ pairs from which the second is drawn).
        generator: a ``torch.Generator`` or an int seed.

    Returns:
        SequenceBatch: inputs (T + ⌊T/10⌋, N, 2) float32 [value, marker], zero past each
        length; targets (N,) float32; lengths (N,) int64.
    """
    owner = "adding"
    _check_int(n, "n", owner, 1)
    _check_int(T, "T", owner, 20)
    gen = as_generator(generator, owner)
    t_max = T + T // 10
    lengths = _randint(T, t_max + 1, n, gen)  # (N,)
    first = _randint(0, ADDING_WINDOW, n, gen)  # (N,) index of X1's pair
    k = _randint(0, T // 2 - 1, n, gen)  # (N,) rank among the first T/2 − 1 unmarked pairs
    second = k + (k >= first).long()  # (N,) skip the pair already marked
    steps = torch.arange(t_max).unsqueeze(1)  # (T, 1)
    valid = steps < lengths  # (T, N)
    values = (torch.rand(t_max, n, generator=gen) * 2 - 1) * valid  # (T, N)
    rows = torch.arange(n)
    values[0, (first == 0) | (second == 0)] = 0.0  # the paper zeroes a marked first pair's value
    markers = torch.zeros(t_max, n)
    markers[0] = -1.0
    markers[lengths - 1, rows] = -1.0
    markers[first, rows] = 1.0
    markers[second, rows] = 1.0
    x1, x2 = values[first, rows], values[second, rows]
    targets = 0.5 + (x1 + x2) / 4.0
    inputs = torch.stack([values, markers], dim=-1)  # (T, N, 2)
    return SequenceBatch(inputs, targets, lengths)


def adding_correct(prediction: Tensor, target: Tensor, tolerance: float = ADDING_TOLERANCE) -> Tensor:
    """Which sequences are processed correctly: ``|prediction − target| < 0.04``. Bool (N,)."""
    prediction = torch.as_tensor(prediction)
    if prediction.shape != target.shape:
        raise ValueError(
            f"adding_correct: prediction must have the target's shape {tuple(target.shape)}, got "
            f"{tuple(prediction.shape)}"
        )
    return (prediction - target).abs() < tolerance


def adding_solved(wrong: int, n: int = TEST_SIZE) -> bool:
    """Experiment 4's success: at most 3 wrong of 2560 test sequences (the same rate for other n)."""
    return solved(wrong, n)


def _adding_zeroed(T: int) -> tuple[float, float]:
    """P(X1 is zeroed), P(X2 is zeroed): the chances that each mark lands on the first pair."""
    _check_int(T, "T", "adding baseline", 20)
    return 1 / ADDING_WINDOW, (1 - 1 / ADDING_WINDOW) / (T // 2 - 1)


def adding_baseline_mse(T: int) -> float:
    r"""MSE of the best constant prediction, the mean target 0.5, from the task's definition.

    :math:`X_1, X_2 \sim U[-1, 1]` have variance 1/3 each, except that a mark on the first pair
    has its value zeroed: :math:`X_1` with probability :math:`p_1 = 1/10`, :math:`X_2` with
    :math:`p_2 = (9/10) / (\lfloor T/2 \rfloor - 1)`. So

    .. math::
        \operatorname{Var} y = \frac{(1 - p_1) + (1 - p_2)}{3 \cdot 16}

    ≈ 0.0392 for T = 100 (1/24 ≈ 0.0417 without the zeroing rule).
    """
    p1, p2 = _adding_zeroed(T)
    return ((1 - p1) + (1 - p2)) / 48


def adding_baseline_correct(T: int) -> float:
    r"""Share of sequences the constant prediction 0.5 gets right (``|y − 0.5| < 0.04``).

    :math:`|y - 0.5| < 0.04 \iff |X_1 + X_2| < a = 0.16`. The sum of two independent U[−1, 1]
    has the triangular density :math:`(2 - |s|)/4`, so :math:`P = a - a^2/4`; when one of them is zeroed
    (the two events exclude each other, probabilities :math:`p_1 + p_2`), :math:`P = a`.
    """
    p1, p2 = _adding_zeroed(T)
    a = 4 * ADDING_TOLERANCE
    return (1 - p1 - p2) * (a - a * a / 4) + (p1 + p2) * a


# ---------------------------------------------------------------------------------------------
# Temporal order (experiment 6)

#: The 8 input symbols, one-hot in this order — start E, trigger B, relevant X and Y, distractors.
TEMPORAL_ORDER_SYMBOLS = ("E", "B", "X", "Y", "a", "b", "c", "d")
_E, _B, _X, _Y = 0, 1, 2, 3
_DISTRACTORS = 4  # a, b, c, d are symbols 4 … 7
# Class names: 6a's Q, R, S, U for XX, XY, YX, YY; 6b's Q, R, S, U, V, A, B, C for XXX … YYY.
TEMPORAL_ORDER_CLASSES = {2: ("Q", "R", "S", "U"), 3: ("Q", "R", "S", "U", "V", "A", "B", "C")}
TEMPORAL_ORDER_TOLERANCE = 0.3  # "classified correctly if the final error of all output units is below 0.3"
# Positions are 1-based, as the paper counts them (E is element 1).
#: Experiment 6a, ranges of the two relevant symbols' positions, and of the sequence length.
TEMPORAL_ORDER_6A = dict(positions=((10, 20), (50, 60)), length=(100, 110))
#: Experiment 6b, ranges of the three relevant symbols' positions, and of the sequence length.
TEMPORAL_ORDER_6B = dict(positions=((10, 20), (33, 43), (66, 76)), length=(100, 110))


def _check_range(value: Any, name: str, owner: str) -> tuple[int, int]:
    ok = isinstance(value, (tuple, list)) and len(value) == 2
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) for v in value) and value[0] <= value[1]
    if not ok:
        raise ValueError(f"{owner}: {name} must be a pair of ints (low, high) with low ≤ high, got {value!r}")
    return int(value[0]), int(value[1])


def temporal_order(
    n: int,
    generator: torch.Generator | int,
    *,
    positions: tuple[tuple[int, int], ...] = ((10, 20), (50, 60)),
    length: tuple[int, int] = (100, 110),
) -> SequenceBatch:
    r"""The temporal order problem of Hochreiter & Schmidhuber (1997), experiment 6a (or 6b).

    A sequence starts with E, ends with B (the trigger symbol) and otherwise consists of symbols
    drawn uniformly from {a, b, c, d}, except at the relevant positions :math:`t_1, t_2 (, t_3)`,
    each uniform within its window, which hold X or Y with equal probability. The length is
    uniform in ``length``. The class is the order of the relevant symbols read as a binary
    number, X = 0 and Y = 1, the first symbol most significant: 6a's XX → Q (0), XY → R (1),
    YX → S (2), YY → U (3).

    The defaults are 6a's (lengths 100–110, :math:`t_1 \in [10, 20]`, :math:`t_2 \in [50,
    60]`); pass ``**TEMPORAL_ORDER_6B`` for 6b. Positions count from 1, the paper's way: E is at
    position 1 (index 0), B at position L (index L − 1).

    Args:
        n: number of sequences, ≥ 1.
        generator: a ``torch.Generator`` or an int seed.
        positions: one (low, high) window per relevant symbol, inclusive, in increasing order,
            not overlapping, after position 1 and before the shortest sequence's last position.
        length: (shortest, longest) sequence length, inclusive.

    Returns:
        SequenceBatch: inputs (T, N, 8) float32 one-hot over :data:`TEMPORAL_ORDER_SYMBOLS`,
        zero past each length, T = ``length[1]``; targets (N,) int64 classes in
        [0, 2^len(positions)); lengths (N,) int64.
    """
    owner = "temporal_order"
    _check_int(n, "n", owner, 1)
    gen = as_generator(generator, owner)
    lo_len, hi_len = _check_range(length, "length", owner)
    if not isinstance(positions, (tuple, list)) or len(positions) not in TEMPORAL_ORDER_CLASSES:
        raise ValueError(f"{owner}: positions must hold 2 or 3 (low, high) windows, got {positions!r}")
    windows = [_check_range(w, f"positions[{k}]", owner) for k, w in enumerate(positions)]
    previous = 1  # position 1 holds E
    for k, (lo, hi) in enumerate(windows):
        if lo <= previous:
            raise ValueError(
                f"{owner}: positions[{k}] = {(lo, hi)} must start after position {previous} (E, or the previous window)"
            )
        previous = hi
    if previous >= lo_len:
        raise ValueError(
            f"{owner}: the shortest length {lo_len} must exceed the last relevant position {previous}, "
            f"so that the trigger B comes after it"
        )
    lengths = _randint(lo_len, hi_len + 1, n, gen)  # (N,)
    symbols = _DISTRACTORS + torch.randint(0, 4, (hi_len, n), generator=gen)  # (T, N)
    rows = torch.arange(n)
    targets = torch.zeros(n, dtype=torch.long)
    for lo, hi in windows:
        where = _randint(lo - 1, hi, n, gen)  # (N,) 0-based index of a position in [lo, hi]
        is_y = torch.randint(0, 2, (n,), generator=gen)  # (N,) 0: X, 1: Y
        symbols[where, rows] = _X + is_y
        targets = targets * 2 + is_y
    symbols[0] = _E
    symbols[lengths - 1, rows] = _B
    valid = torch.arange(hi_len).unsqueeze(1) < lengths  # (T, N)
    inputs = torch.nn.functional.one_hot(symbols, len(TEMPORAL_ORDER_SYMBOLS)).float() * valid.unsqueeze(
        -1
    )  # (T, N, 8)
    return SequenceBatch(inputs, targets, lengths)


def temporal_order_correct(output: Tensor, target: Tensor, tolerance: float | None = None) -> Tensor:
    """Which sequences are classified correctly. Bool (N,).

    ``output`` (N, K): logits or probabilities at each sequence's last step. With ``tolerance``
    None, correct means argmax = target (for a softmax classifier). With a tolerance, the paper's
    rule for its sigmoid outputs: every output unit within ``tolerance`` (the paper's 0.3) of the
    one-hot target.
    """
    if output.dim() != 2 or output.shape[0] != target.shape[0]:
        raise ValueError(
            f"temporal_order_correct: output must be (N, K) with N = {target.shape[0]}, got {tuple(output.shape)}"
        )
    if tolerance is None:
        return output.argmax(dim=1) == target
    one_hot = torch.nn.functional.one_hot(target, output.shape[1]).to(output.dtype)  # (N, K)
    return ((output - one_hot).abs() < tolerance).all(dim=1)


def temporal_order_solved(wrong: int, n: int = TEST_SIZE) -> bool:
    """Experiment 6's success: at most 3 wrong of 2560 test sequences (the same rate for other n)."""
    return solved(wrong, n)


def temporal_order_baseline(relevant: int = 2) -> dict[str, float]:
    """Chance level with K = 2^relevant equally likely classes: accuracy 1/K, cross-entropy log K."""
    if relevant not in TEMPORAL_ORDER_CLASSES:
        raise ValueError(f"temporal_order_baseline: relevant must be 2 or 3, got {relevant!r}")
    k = 2**relevant
    return {"accuracy": 1.0 / k, "cross_entropy": math.log(k)}


# ---------------------------------------------------------------------------------------------
# Copy memory (Arjovsky, Shah & Bengio 2016)

COPY_BLANK = 0  # a_0, the blank; a_1 … a_8 are the symbols to remember; a_9 the delimiter


def copy_memory(
    n: int, T: int, generator: torch.Generator | int, *, symbols: int = 8, memorize: int = 10
) -> SequenceBatch:
    r"""The copy memory problem of Arjovsky, Shah & Bengio (2016), section 4.1.

    Categories: 0 the blank :math:`a_0`, 1 … 8 the symbols :math:`a_1 … a_8`, 9 the delimiter
    :math:`a_9`. A sequence has T + 20 steps:

    * input: 10 symbols drawn uniformly and independently from :math:`a_1 … a_8`, T − 1 blanks,
      the delimiter, 10 blanks;
    * target: T + 10 blanks, then the 10 input symbols in the same order.

    The loss is the cross-entropy averaged over all T + 20 steps; see
    :func:`copy_memory_baseline` for the memoryless strategy's value.

    Args:
        n: number of sequences, ≥ 1.
        T: the delay, ≥ 1.
        generator: a ``torch.Generator`` or an int seed.
        symbols: the alphabet size (8 in the paper); categories are ``symbols + 2``.
        memorize: how many symbols to copy (10 in the paper).

    Returns:
        SequenceBatch: inputs (T + 2·memorize, N, symbols + 2) float32 one-hot; targets
        (T + 2·memorize, N) int64 categories; lengths None (all sequences are full length).
    """
    owner = "copy_memory"
    _check_int(n, "n", owner, 1)
    _check_int(T, "T", owner, 1)
    _check_int(symbols, "symbols", owner, 1)
    _check_int(memorize, "memorize", owner, 1)
    gen = as_generator(generator, owner)
    steps = T + 2 * memorize
    delimiter = symbols + 1
    data = 1 + torch.randint(0, symbols, (memorize, n), generator=gen)  # (memorize, N)
    x = torch.full((steps, n), COPY_BLANK, dtype=torch.long)  # (T + 2m, N)
    x[:memorize] = data
    x[memorize + T - 1] = delimiter
    y = torch.full((steps, n), COPY_BLANK, dtype=torch.long)  # (T + 2m, N)
    y[T + memorize :] = data
    inputs = torch.nn.functional.one_hot(x, symbols + 2).float()  # (T + 2m, N, symbols + 2)
    return SequenceBatch(inputs, y, None)


def copy_memory_baseline(T: int, symbols: int = 8, memorize: int = 10) -> float:
    r"""Cross-entropy per step of the memoryless strategy (Arjovsky et al. 2016).

    Predict the blank for the first T + 10 steps (no loss) and a uniform guess among the 8
    symbols for the last 10:

    .. math::
        \frac{10 \log 8}{T + 20}
    """
    _check_int(T, "T", "copy_memory_baseline", 1)
    return memorize * math.log(symbols) / (T + 2 * memorize)


def copy_memory_accuracy(logits: Tensor, targets: Tensor, memorize: int = 10) -> float:
    """Share of the symbols to copy (the last ``memorize`` steps) predicted right by argmax.

    ``logits`` (T, N, K), ``targets`` (T, N). The memoryless strategy scores 1/8 here.
    """
    if logits.dim() != 3 or logits.shape[:2] != targets.shape:
        raise ValueError(
            f"copy_memory_accuracy: logits must be (T, N, K) with (T, N) = {tuple(targets.shape)}, got "
            f"{tuple(logits.shape)}"
        )
    pred = logits[-memorize:].argmax(dim=-1)  # (memorize, N)
    return float((pred == targets[-memorize:]).double().mean())
