r"""The other experiments of Hochreiter & Schmidhuber (1997), generated as the paper defines them.

Sepp Hochreiter and Jürgen Schmidhuber, "Long Short-Term Memory", Neural Computation 9(8),
1735–1780 (1997), section 5. Experiments 4 (adding) and 6 (temporal order) are in
:mod:`rnnkit.data.synthetic`; this module holds the rest:

* :func:`embedded_reber` — experiment 1 (section 5.1), the embedded Reber grammar: next-symbol
  prediction over 7 symbols, targets the set of symbols the grammar allows next;
* :func:`noise_free_lag` — experiment 2a (noise-free, the same middle every time) and, with
  ``random_middle``, 2b (no local regularities): p + 1 symbols, the first repeated at the end;
* :func:`very_long_lag` — experiment 2c: p + 4 symbols, at least q distractors between the
  relevant symbol and the trigger that asks for it;
* :func:`two_sequence` — experiment 3a–3c, Bengio et al.'s "2-sequence problem": one real input
  line, the class in its first N values, Gaussian noise after them (3b: on them too; 3c: noisy
  targets 0.2 / 0.8);
* :func:`multiplication` — experiment 5: the adding problem's pairs with values in [0, 1], the
  target the product of the two marked values.

Every generator returns a time-major :class:`~rnnkit.data.synthetic.SequenceBatch` and draws from
a ``torch.Generator`` (or an int seed), like :mod:`rnnkit.data.synthetic`'s. Where the paper is
ambiguous, the function's docstring says what was chosen and why.

Symbols: N sequences, T time steps (the longest sequence of the batch), p, q as in the paper.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .synthetic import ADDING_WINDOW, SequenceBatch, _check_int, _randint, as_generator

# ---------------------------------------------------------------------------------------------
# Experiment 1: the embedded Reber grammar

#: The 7 symbols, one-hot in this order.
REBER_SYMBOLS = "BTPSXVE"
#: The Reber grammar (the paper's figure 3, after Cleeremans, Servan-Schreiber & McClelland 1989):
#: after the opening B, node → its two edges (symbol, next node); None is the end, after E.
REBER_GRAPH: dict[int, tuple[tuple[str, int | None], ...]] = {
    0: (("T", 1), ("P", 2)),
    1: (("S", 1), ("X", 3)),
    2: (("T", 2), ("V", 4)),
    3: (("X", 2), ("S", 5)),
    4: (("P", 3), ("V", 5)),
    5: (("E", None),),
}
#: The strings in the paper's training set, and in its test set (256 each, following Fahlman 1991).
REBER_SET_SIZE = 256
_SYMBOL = {s: k for k, s in enumerate(REBER_SYMBOLS)}


def _choose(options: Sequence, gen: torch.Generator):
    """One of ``options``, each equally likely (the paper: "probability 0.5" at every choice)."""
    if len(options) == 1:
        return options[0]
    return options[int(torch.randint(len(options), (1,), generator=gen))]


def reber_string(generator: torch.Generator | int) -> str:
    """One string of the (plain) Reber grammar, "B…E": the graph walked from its start, each of
    the two edges out of a node taken with probability 0.5."""
    gen = as_generator(generator, "reber_string")
    out, node = ["B"], 0
    while node is not None:
        symbol, node = _choose(REBER_GRAPH[node], gen)
        out.append(symbol)
    return "".join(out)


def embedded_reber_string(generator: torch.Generator | int) -> str:
    """One string of the embedded Reber grammar (the paper's figure 4): B, then T or P
    (probability 0.5 each), a Reber string, the same T or P again, E — "BT<Reber>TE" or
    "BP<Reber>PE"."""
    gen = as_generator(generator, "embedded_reber_string")
    outer = _choose("TP", gen)
    return f"B{outer}{reber_string(gen)}{outer}E"


def reber_successors(string: str) -> list[frozenset[str]]:
    """The symbols the embedded grammar allows after each proper prefix of ``string``.

    Entry t is the set allowed after ``string[: t + 1]``: what a perfect predictor's most active
    outputs must be after reading symbol t. ValueError if ``string`` is not an embedded Reber
    string.
    """
    if len(string) < 9 or string[0] != "B" or string[1] not in "TP" or string[-2:] != string[1] + "E":
        raise ValueError(
            f"reber_successors: {string!r} is not an embedded Reber string (B, T or P, a Reber string, the same T or "
            "P, E)"
        )
    inner = string[2:-2]
    sets = [frozenset("TP"), frozenset("B")]  # after the opening B; after the outer T/P
    if inner[0] != "B":
        raise ValueError(f"reber_successors: {string!r}: the embedded string must start with B")
    node: int | None = 0
    sets.append(frozenset(s for s, _ in REBER_GRAPH[0]))  # after the inner B
    for at, symbol in enumerate(inner[1:], start=1):
        edges = dict(REBER_GRAPH[node]) if node is not None else {}
        if symbol not in edges:
            raise ValueError(
                f"reber_successors: {string!r}: {symbol!r} cannot follow {inner[:at]!r} in the Reber grammar"
            )
        node = edges[symbol]
        sets.append(frozenset(s for s, _ in REBER_GRAPH[node]) if node is not None else frozenset(string[1]))
    if node is not None:
        raise ValueError(f"reber_successors: {string!r}: the embedded Reber string does not end with E")
    sets.append(frozenset("E"))  # after the closing T/P
    return sets


def encode_reber(strings: Sequence[str]) -> SequenceBatch:
    """Embedded Reber strings as a next-symbol prediction batch.

    The net reads each string one symbol at a time, all but the final E, and after each symbol
    predicts the next. Returns inputs (T, N, 7) float32 one-hot over :data:`REBER_SYMBOLS` of
    symbols 0 … L − 2, zero past each length; targets (T, N, 7) bool, step t the set of symbols
    the grammar allows after symbols 0 … t (:func:`reber_successors`; the symbol that actually
    follows is always in it); lengths (N,) int64, L − 1 for a string of L symbols.
    """
    if not strings:
        raise ValueError("encode_reber: no strings")
    lengths = torch.tensor([len(s) - 1 for s in strings], dtype=torch.long)
    T, n = int(lengths.max()), len(strings)
    symbols = torch.zeros(T, n, dtype=torch.long)
    targets = torch.zeros(T, n, len(REBER_SYMBOLS), dtype=torch.bool)
    for b, s in enumerate(strings):
        allowed = reber_successors(s)
        symbols[: len(s) - 1, b] = torch.tensor([_SYMBOL[c] for c in s[:-1]])
        for t, options in enumerate(allowed):
            targets[t, b, [_SYMBOL[c] for c in options]] = True
    valid = torch.arange(T).unsqueeze(1) < lengths  # (T, N)
    inputs = torch.nn.functional.one_hot(symbols, len(REBER_SYMBOLS)).float() * valid.unsqueeze(-1)
    return SequenceBatch(inputs, targets, lengths)


def embedded_reber(
    n: int, generator: torch.Generator | int, *, exclude: frozenset[str] | set[str] = frozenset()
) -> tuple[list[str], SequenceBatch]:
    r"""Experiment 1 of Hochreiter & Schmidhuber (1997): n strings of the embedded Reber grammar.

    Strings are generated by walking the graph of the paper's figure 4 from its leftmost node,
    appending each edge's symbol, an edge chosen with probability 0.5 where there is a choice
    (:func:`embedded_reber_string`). The shortest string has 9 symbols ("BTBTXSETE"); to
    predict the symbol before last the net must remember the second, read 5 or more steps earlier.

    The task (section 5.1): read the string one symbol at a time and always predict the next;
    it is solved when "all string symbols of all sequences in both test set and training set
    are predicted correctly — that is, if the output unit(s) corresponding to the possible next
    symbol(s) is (are) always the most active ones" (:func:`reber_correct`). The paper uses 256
    training strings and 256 test strings, "sequences already used in the training set are not
    used for testing": pass the training strings as ``exclude`` when drawing a test set.

    Args:
        n: number of strings, ≥ 1.
        generator: a ``torch.Generator`` or an int seed.
        exclude: strings never to draw (each is drawn again until it is not one of them).

    Returns:
        (strings, :func:`encode_reber` of them).
    """
    owner = "embedded_reber"
    _check_int(n, "n", owner, 1)
    gen = as_generator(generator, owner)
    strings = []
    while len(strings) < n:
        s = embedded_reber_string(gen)
        if s not in exclude:
            strings.append(s)
    return strings, encode_reber(strings)


def reber_correct(logits: Tensor, targets: Tensor) -> Tensor:
    """Which strings are predicted correctly by the paper's rule. Bool (N,).

    At every step of a string, the k symbols the grammar allows next (k = 1 or 2) must be the k
    most active outputs: each allowed symbol's output strictly above every other symbol's.
    ``logits`` (T, N, 7), or any outputs that rank the symbols the same way (probabilities);
    ``targets`` (T, N, 7) bool, as :func:`encode_reber` gives them: a step that allows no symbol
    is padding, past the string's end, and is not judged.
    """
    if logits.shape != targets.shape:
        raise ValueError(
            f"reber_correct: logits must have the targets' shape {tuple(targets.shape)}, got {tuple(logits.shape)}"
        )
    inf = torch.tensor(float("inf"), dtype=logits.dtype, device=logits.device)
    lowest_allowed = torch.where(targets, logits, inf).amin(-1)  # (T, N); inf where nothing is allowed
    highest_other = torch.where(targets, -inf, logits).amax(-1)  # (T, N)
    right = (lowest_allowed > highest_other) | ~targets.any(-1)
    return right.all(0)


# ---------------------------------------------------------------------------------------------
# Experiment 2a, 2b: noise-free and noisy sequences with long time lags


def noise_free_lag(
    n: int, p: int, generator: torch.Generator | int, *, random_middle: bool = False, one_hot: bool = True
) -> SequenceBatch:
    r"""Experiment 2a (or, with ``random_middle``, 2b) of Hochreiter & Schmidhuber (1997).

    p + 1 symbols :math:`a_1, …, a_{p-1}, a_p = x, a_{p+1} = y`, one-hot in that order
    (category k − 1 is :math:`a_k`: x is p − 1, y is p). A sequence has p + 1 elements:

    * 2a: :math:`(y, a_1, a_2, …, a_{p-1}, y)` or :math:`(x, a_1, …, a_{p-1}, x)`, each with
      probability 0.5 — the training set is these two sequences;
    * 2b: the middle is random, :math:`(y, a_{i_1}, …, a_{i_{p-1}}, y)` or the same with x,
      each :math:`i_j` uniform over 1 … p − 1: "the only totally predictable targets are x and
      y, which occur at sequence ends".

    The net reads the first p elements and predicts every next one (error signals at every
    step); to predict the last it must store the first for p steps. Success (2a, Table 2): during
    10,000 random sequences "the maximal absolute error of all output units is always below
    0.25" (2b: "at sequence end"), see :func:`noise_free_lag_correct`. The paper's figures,
    p = 100: 2a 5,040 training sequences, 2b 5,680 (means of 18 trials).

    Args:
        n: number of sequences, ≥ 1.
        p: the delay, ≥ 2 (the paper's 4, 10 and 100).
        generator: a ``torch.Generator`` or an int seed.
        random_middle: 2b's random middle instead of 2a's fixed one.
        one_hot: False gives the inputs as symbol ids (p, N) int64, the same draw (a held-out
            set of 10,000 sequences of 100 steps takes 8 MB so, 400 MB one-hot).

    Returns:
        SequenceBatch: inputs (p, N, p + 1) float32 one-hot of elements 0 … p − 1; targets
        (p, N) int64, elements 1 … p (the next element at each step); lengths None.
    """
    owner = "noise_free_lag"
    _check_int(n, "n", owner, 1)
    _check_int(p, "p", owner, 2)
    gen = as_generator(generator, owner)
    first = p - 1 + torch.randint(0, 2, (n,), generator=gen)  # (N,) x = p − 1 or y = p
    if random_middle:
        middle = torch.randint(0, p - 1, (p - 1, n), generator=gen)  # (p − 1, N) a_1 … a_{p−1}
    else:
        middle = torch.arange(p - 1).unsqueeze(1).expand(p - 1, n)  # a_1, a_2, …, a_{p−1}
    elements = torch.cat([first.unsqueeze(0), middle, first.unsqueeze(0)])  # (p + 1, N)
    inputs = torch.nn.functional.one_hot(elements[:-1], p + 1).float() if one_hot else elements[:-1].clone()
    return SequenceBatch(inputs, elements[1:].clone(), None)


def noise_free_lag_correct(
    probs: Tensor, targets: Tensor, tolerance: float = 0.25, at_end_only: bool = False
) -> Tensor:
    """Which sequences meet experiment 2's test: every output unit within ``tolerance`` of its
    one-hot target at every step (2a), or at the last step only (``at_end_only``, 2b). Bool (N,).

    ``probs`` (T, N, K) the outputs (softmax probabilities), ``targets`` (T, N) int64.
    """
    if probs.dim() != 3 or probs.shape[:2] != targets.shape:
        raise ValueError(
            f"noise_free_lag_correct: probs must be (T, N, K) with (T, N) = {tuple(targets.shape)}, got "
            f"{tuple(probs.shape)}"
        )
    one_hot = torch.nn.functional.one_hot(targets, probs.shape[-1]).to(probs.dtype)
    right = ((probs - one_hot).abs() < tolerance).all(-1)  # (T, N)
    return right[-1] if at_end_only else right.all(0)


# ---------------------------------------------------------------------------------------------
# Experiment 2c: very long time lags, no local regularities

#: 2c's chance to end the random suffix with the trigger e at each step (the paper's 1/10).
VERY_LONG_LAG_STOP = 0.1
#: The rows (q, p, training sequences to success) of 2c's Table 3, means of 20 trials.
VERY_LONG_LAG_TABLE = (
    (50, 50, 30_000),
    (100, 100, 31_000),
    (200, 200, 33_000),
    (500, 500, 38_000),
    (1000, 1000, 49_000),
    (1000, 500, 49_000),
    (1000, 200, 75_000),
    (1000, 100, 135_000),
    (1000, 50, 203_000),
)


def very_long_lag(n: int, p: int, q: int, generator: torch.Generator | int, *, one_hot: bool = True) -> SequenceBatch:
    r"""Experiment 2c of Hochreiter & Schmidhuber (1997): very long time lags, no local regularities.

    p + 4 symbols :math:`a_1, …, a_p` (the distractors), :math:`a_{p+1} = e` (the trigger),
    :math:`a_{p+2} = b`, :math:`a_{p+3} = x`, :math:`a_{p+4} = y`, one-hot in that order. A
    sequence is :math:`(b, y, a_{i_1}, …, a_{i_{q+k}}, e, y)` or the same with x: "(1) randomly
    generate a sequence prefix of length q + 2, (2) randomly generate a sequence suffix of
    additional elements (≠ b, e, x, y) with probability 9/10 or, alternatively, an e with
    probability 1/10. In the latter case, we (3) conclude the sequence with x or y, depending on
    the second element." So k ≥ 0 is geometric, P(k) = (1/10)(9/10)^k, mean 9; the length is
    q + k + 4, at least q + 4, and the minimal lag between the relevant symbol and the trigger is
    q + 1, as the paper says. (Its expected length, :math:`4 + \sum_k \frac{1}{10}
    (\frac{9}{10})^k (q + k)`, evaluates to q + 13, not the q + 14 printed beside it; the
    expected count of a distractor, printed (q + 10)/p, is likewise (q + 9)/p. The procedure,
    the minimal length and the minimal lag all say k starts at 0, so it does.)

    The net reads everything up to the trigger e and, there, predicts the last symbol (2 output
    units, x or y; "error signals are generated only at sequence ends"). Success: "prediction
    error (for final sequence element) of both output units always below 0.2, for 10,000
    successive, randomly chosen input sequences". Training sequences to success: Table 3
    (:data:`VERY_LONG_LAG_TABLE`), e.g. 31,000 for q = p = 100, 49,000 for q = p = 1000.

    **Ambiguity.** The paper's sets read :math:`1 \le i_1, …, i_{q+k} \le q`, but there are p
    distractor symbols, and in Table 3 q exceeds p (q = 1000, p = 50), so an index up to q
    names no symbol; its expected count of each distractor per sequence, (q + 10)/p, is that of
    indices uniform over 1 … p. So the distractors are uniform over :math:`a_1 … a_p`.

    Args:
        n: number of sequences, ≥ 1.
        p: distractor symbols, ≥ 1.
        q: the fixed part of the distractor run, ≥ 0.
        generator: a ``torch.Generator`` or an int seed.
        one_hot: False gives the inputs as symbol ids (T, N) int64, −1 past each length.

    Returns:
        SequenceBatch: inputs (T, N, p + 4) float32 one-hot of (b, x|y, the q + k distractors,
        e), zero past each length q + k + 3; targets (N,) int64, 0 for x, 1 for y; lengths (N,).
    """
    owner = "very_long_lag"
    _check_int(n, "n", owner, 1)
    _check_int(p, "p", owner, 1)
    _check_int(q, "q", owner, 0)
    gen = as_generator(generator, owner)
    e, b, x = p, p + 1, p + 2
    targets = torch.randint(0, 2, (n,), generator=gen)  # (N,) 0: x, 1: y
    u = 1.0 - torch.rand(n, generator=gen, dtype=torch.float64)  # (N,) in (0, 1]
    extra = torch.floor(torch.log(u) / math.log(1 - VERY_LONG_LAG_STOP)).long()  # (N,) P(k) = 0.1 · 0.9^k
    lengths = q + extra + 3  # (N,) b, x|y, q + k distractors, e
    T = int(lengths.max())
    symbols = torch.randint(0, p, (T, n), generator=gen)  # (T, N) distractors everywhere first
    rows = torch.arange(n)
    symbols[0] = b
    symbols[1] = x + targets
    symbols[lengths - 1, rows] = e
    valid = torch.arange(T).unsqueeze(1) < lengths  # (T, N)
    if not one_hot:
        return SequenceBatch(symbols.masked_fill(~valid, -1), targets, lengths)
    inputs = torch.nn.functional.one_hot(symbols, p + 4).float() * valid.unsqueeze(-1)  # (T, N, p + 4)
    return SequenceBatch(inputs, targets, lengths)


# ---------------------------------------------------------------------------------------------
# Experiment 3: noise and signal on the same channel (the 2-sequence problem)

TWO_SEQUENCE_NOISE_VARIANCE = 0.2  # the Gaussian noise on the input line (and, in 3b, on the informative elements)
TWO_SEQUENCE_TARGET_VARIANCE = 0.1  # 3c's Gaussian noise on the targets (st. dev. 0.32)
#: The targets of class 1 and class 2 in 3a and 3b, and in 3c.
TWO_SEQUENCE_TARGETS = {"a": (1.0, 0.0), "b": (1.0, 0.0), "c": (0.2, 0.8)}
#: A sequence is misclassified when its output is this far from the (noise-free) target or more.
TWO_SEQUENCE_TOLERANCE = {"a": 0.2, "b": 0.2, "c": 0.1}


def two_sequence(
    n: int,
    T: int,
    generator: torch.Generator | int,
    *,
    informative: int = 3,
    variant: str = "a",
    noisy_targets: bool = True,
) -> SequenceBatch:
    r"""Experiment 3a, 3b or 3c of Hochreiter & Schmidhuber (1997): Bengio et al.'s 2-sequence problem.

    One input line. Two classes, each with probability 0.5. Per sequence:

    * its length is uniform over the integers T … T + ⌊T/10⌋ (Bengio et al. also allow lengths
      down to T/2; the paper does not);
    * the first N elements (``informative``) are 1.0 for class 1 and −1.0 for class 2; 3b adds
      Gaussian noise of mean 0 and variance 0.2 to them;
    * every later element is Gaussian noise, mean 0, variance 0.2;
    * the target, at the sequence end, is 1.0 for class 1 and 0.0 for class 2 (3a, 3b), or 0.2
      and 0.8 (3c) plus, in 3c, Gaussian noise of mean 0 and variance 0.1 ("to minimize mean
      squared error, the system has to learn the conditional expectations of the targets").

    Correct classification (:func:`two_sequence_correct`): 3a and 3b, "absolute output error at
    sequence end below 0.2"; 3c, the absolute difference from the *noise-free* target at most
    0.1. The paper stops training at ST2 (:data:`TWO_SEQUENCE_STOP`), judged on 256 random
    sequences, then counts the misclassified among 2560 more. Training sequences to ST2 (its
    Tables 4–6, means of 10 trials), T = 100, N = 3: 3a 39,850, 3b 43,250, 3c 269,650.

    **Ambiguity.** 3c is "like in Task 3a" with new targets and target noise; it does not say
    whether 3b's noise on the informative elements is kept, so it is not (3a's inputs).

    Args:
        n: number of sequences, ≥ 1.
        T: the shortest length, ≥ informative + 1.
        generator: a ``torch.Generator`` or an int seed.
        informative: N, the class-carrying elements at the start (the paper's 1 and 3), ≥ 1.
        variant: "a", "b" or "c".
        noisy_targets: 3c's target noise (training); False gives the noise-free targets that
            decide correctness (held-out sets). Ignored for 3a and 3b.

    Returns:
        SequenceBatch: inputs (T + ⌊T/10⌋, N, 1) float32, zero past each length; targets (N,)
        float32; lengths (N,) int64.
    """
    owner = "two_sequence"
    _check_int(n, "n", owner, 1)
    _check_int(informative, "informative", owner, 1)
    _check_int(T, "T", owner, informative + 1)
    if variant not in TWO_SEQUENCE_TARGETS:
        raise ValueError(f"{owner}: variant must be 'a', 'b' or 'c', got {variant!r}")
    gen = as_generator(generator, owner)
    t_max = T + T // 10
    lengths = _randint(T, t_max + 1, n, gen)  # (N,)
    second = torch.randint(0, 2, (n,), generator=gen).bool()  # (N,) class 2?
    std = math.sqrt(TWO_SEQUENCE_NOISE_VARIANCE)
    values = torch.randn(t_max, n, generator=gen) * std  # (T, N) noise everywhere first
    sign = torch.where(second, -1.0, 1.0)  # (N,)
    if variant == "b":
        values[:informative] += sign  # the informative elements, noise kept
    else:
        values[:informative] = sign.expand(informative, n)
    valid = torch.arange(t_max).unsqueeze(1) < lengths  # (T, N)
    values = values * valid
    one, two = TWO_SEQUENCE_TARGETS[variant]
    targets = torch.where(second, two, one)  # (N,)
    if variant == "c" and noisy_targets:
        targets = targets + torch.randn(n, generator=gen) * math.sqrt(TWO_SEQUENCE_TARGET_VARIANCE)
    return SequenceBatch(values.unsqueeze(-1), targets, lengths)


#: The paper's stopping criteria as (most misclassified allowed, mean absolute error below),
#: judged on 256 random sequences. ST2 for 3a ("none of 256 … misclassified, and mean absolute
#: test set error below 0.01"), 3b ("less than 6 out of 256", "below 0.04") and 3c's one
#: criterion ("none of 256", "mean absolute difference between noise free target and output
#: below 0.015").
TWO_SEQUENCE_STOP = {"a": (0, 0.01), "b": (5, 0.04), "c": (0, 0.015)}
TWO_SEQUENCE_STOP_SIZE = 256


def two_sequence_correct(outputs: Tensor, targets: Tensor, variant: str = "a") -> Tensor:
    """Which sequences are classified correctly, judged against noise-free ``targets``. Bool (N,).

    3a, 3b: absolute error below 0.2; 3c: absolute difference at most 0.1 (the paper calls
    "> 0.1" misclassified).
    """
    if outputs.shape != targets.shape:
        raise ValueError(
            f"two_sequence_correct: outputs must have the targets' shape {tuple(targets.shape)}, got "
            f"{tuple(outputs.shape)}"
        )
    error = (outputs - targets).abs()
    return error <= TWO_SEQUENCE_TOLERANCE["c"] if variant == "c" else error < TWO_SEQUENCE_TOLERANCE[variant]


# ---------------------------------------------------------------------------------------------
# Experiment 5: the multiplication problem

#: The two values of experiment 5's n_seq (Table 8). The net is tested "as soon as less than
#: n_seq of the 2000 most recent training sequences lead to absolute errors exceeding 0.04".
MULTIPLICATION_N_SEQ = (140, 13)
MULTIPLICATION_WINDOW = 2000


def multiplication(n: int, T: int, generator: torch.Generator | int) -> SequenceBatch:
    r"""The multiplication problem of Hochreiter & Schmidhuber (1997), experiment 5.

    "Like the task in Section 5.4 [the adding problem], except that the first component of each
    pair is a real value randomly chosen from the interval [0, 1]. In the rare case where the
    first pair of the input sequence gets marked, we set :math:`X_1` to 1.0. The target at
    sequence end is the product :math:`X_1 \times X_2`." So per sequence:

    * its length is uniform over T … T + ⌊T/10⌋; the values are uniform in [0, 1];
    * one of the first ten pairs is marked (marker 1.0), :math:`X_1`; one of the first
      ⌊T/2⌋ − 1 still unmarked pairs is marked, :math:`X_2`; the first and the final pair have
      marker −1.0, every other pair 0.0;
    * a marked first pair's value is set to 1.0 (the product's neutral element, as the adding
      problem's 0 is the sum's; read as :func:`~rnnkit.data.synthetic.adding` reads its rule,
      this covers :math:`X_2` too when the second mark lands there);
    * the target is :math:`X_1 X_2`.

    A sequence is processed correctly when the absolute error at its end is below 0.04
    (:func:`~rnnkit.data.synthetic.adding_correct`; the paper counts errors "exceeding 0.04" as
    wrong, the same but for an error of exactly 0.04, which has probability 0). The paper's figures (Table 8, T = 100,
    means of 10 trials): 482,000 training sequences until fewer than 140 of the 2000 most recent
    were wrong (then 139 of 2560 test sequences wrong, MSE 0.0223), 1,273,000 until fewer than
    13 (14 of 2560 wrong, MSE 0.0139).

    Args:
        n: number of sequences, ≥ 1.
        T: the minimal length, ≥ 20 (as for :func:`~rnnkit.data.synthetic.adding`).
        generator: a ``torch.Generator`` or an int seed.

    Returns:
        SequenceBatch: inputs (T + ⌊T/10⌋, N, 2) float32 [value, marker], zero past each
        length; targets (N,) float32; lengths (N,) int64.
    """
    owner = "multiplication"
    _check_int(n, "n", owner, 1)
    _check_int(T, "T", owner, 20)
    gen = as_generator(generator, owner)
    t_max = T + T // 10
    lengths = _randint(T, t_max + 1, n, gen)  # (N,)
    first = _randint(0, ADDING_WINDOW, n, gen)  # (N,) X1's pair
    k = _randint(0, T // 2 - 1, n, gen)  # (N,) rank among the first T/2 − 1 unmarked pairs
    second = k + (k >= first).long()  # (N,)
    valid = torch.arange(t_max).unsqueeze(1) < lengths  # (T, N)
    values = torch.rand(t_max, n, generator=gen) * valid  # (T, N) uniform in [0, 1)
    rows = torch.arange(n)
    values[0, (first == 0) | (second == 0)] = 1.0
    markers = torch.zeros(t_max, n)
    markers[0] = -1.0
    markers[lengths - 1, rows] = -1.0
    markers[first, rows] = 1.0
    markers[second, rows] = 1.0
    targets = values[first, rows] * values[second, rows]
    return SequenceBatch(torch.stack([values, markers], dim=-1), targets, lengths)


def multiplication_allowed_wrong(n: int, n_seq: int = 13) -> int:
    """The most wrong sequences of n that meet experiment 5's stopping rule at its rate:
    fewer than ``n_seq`` of 2000, so fewer than n_seq · n / 2000 (for n = 2560, n_seq = 13: 16)."""
    _check_int(n, "n", "multiplication_allowed_wrong", 1)
    _check_int(n_seq, "n_seq", "multiplication_allowed_wrong", 1)
    return math.ceil(n_seq * n / MULTIPLICATION_WINDOW) - 1
