"""The generators of Hochreiter & Schmidhuber (1997)'s experiments 1, 2, 3 and 5 against the paper.

Each property is recomputed from the generated tensors by plain loops over sequences, or by an
independent transcription of the paper's definition (a regular expression of the embedded Reber
grammar, checked on the textbook's lists of Reber and non-Reber strings; the grammar's expected
string length worked out by hand), not by the generators' own code.
"""

import math
import re
from collections import Counter

import pytest
import torch

from rnnkit.data.lstm1997 import (
    MULTIPLICATION_N_SEQ,
    REBER_SYMBOLS,
    TWO_SEQUENCE_STOP,
    VERY_LONG_LAG_TABLE,
    embedded_reber,
    embedded_reber_string,
    encode_reber,
    multiplication,
    multiplication_allowed_wrong,
    noise_free_lag,
    noise_free_lag_correct,
    reber_correct,
    reber_string,
    reber_successors,
    two_sequence,
    two_sequence_correct,
    very_long_lag,
)
from rnnkit.data.synthetic import adding, heldout_generator

# ---------------------------------------------------------------------------------------------
# Experiment 1: the embedded Reber grammar

# The Reber grammar as a regular expression, read off the transition diagram (Cleeremans et al.
# 1989; the paper's figure 3) path by path: T S* X leads to the node that ends with S or loops
# back through X; P T* V leads to the node that ends with V or goes on with P.
AFTER_V = r"(?:PXT*V)*(?:V|PS)"  # from the node after ...V: loop P X T* V, then leave by V or P S
REBER = rf"B(?:TS*X(?:S|XT*V{AFTER_V})|PT*V{AFTER_V})E"
EMBEDDED = re.compile(rf"B([TP]){REBER}\1E")
# Jenny Orr's lists (willamette.edu/~gorr/classes/cs449/reber.html), which check the expression.
REBER_EXAMPLES = ["BTSSXXTVVE", "BPVVE", "BTXXVPSE", "BPVPXVPXVPXVVE", "BTSXXVPSE"]
NON_REBER_EXAMPLES = ["BTSSPXSE", "BPTVVB", "BTXXVVSE", "BPVSPSE", "BTSSSE"]

# The grammar's transitions written out separately, as (node, symbol) → node from the diagram,
# with the embedding: node "o" after the opening B, "i" before the inner B, inner nodes 1–6,
# "t"/"p" after the inner E (remembering the second symbol), "z" before the final E.
TRANSITIONS = {
    ("start", "B"): "o",
    ("o", "T"): "iT",
    ("o", "P"): "iP",
}
for outer in "TP":
    inner = {
        ("i", "B"): "1",
        ("1", "T"): "2",
        ("1", "P"): "3",
        ("2", "S"): "2",
        ("2", "X"): "4",
        ("3", "T"): "3",
        ("3", "V"): "5",
        ("4", "X"): "3",
        ("4", "S"): "6",
        ("5", "P"): "4",
        ("5", "V"): "6",
        ("6", "E"): "end",
    }
    for (node, symbol), to in inner.items():
        TRANSITIONS[(node + outer, symbol)] = to + outer
    TRANSITIONS[("end" + outer, outer)] = "z"
TRANSITIONS[("z", "E")] = "final"


def allowed_after(prefix):
    """The symbols the transition table allows after ``prefix`` (walked from the start)."""
    node = "start"
    for symbol in prefix:
        node = TRANSITIONS[(node, symbol)]
    return {s for (n, s) in TRANSITIONS if n == node}


def test_the_grammar_expression_accepts_the_textbook_examples():
    for s in REBER_EXAMPLES:
        assert re.fullmatch(REBER, s), s
    for s in NON_REBER_EXAMPLES:
        assert not re.fullmatch(REBER, s), s
    assert EMBEDDED.fullmatch("BTBTXSETE") and EMBEDDED.fullmatch("BP" + REBER_EXAMPLES[3] + "PE")
    assert not EMBEDDED.fullmatch("BTBTXSEPE")  # the second and second-to-last symbols differ


def test_generated_strings_are_embedded_reber_strings_with_fair_choices():
    gen = torch.Generator().manual_seed(0)
    strings = [embedded_reber_string(gen) for _ in range(4000)]
    for s in strings:
        assert EMBEDDED.fullmatch(s), s
        assert s[1] == s[-2]
    lengths = [len(s) for s in strings]
    assert min(lengths) == 9  # "as few as 9 steps": BTBTXSETE, BPBPVVEPE, …
    # Expected length: a Reber string has 8 symbols on average (from the diagram by hand:
    # E[symbols after B] = 1 + (E1 + E2)/2 = 1 + (19/3 + 17/3)/2 = 7), the embedding adds 4.
    mean, sd = sum(lengths) / len(lengths), torch.tensor(lengths, dtype=torch.float64).std().item()
    assert abs(mean - 12) < 4 * sd / math.sqrt(len(lengths))
    # Every choice is a fair coin: the second symbol, and the first inner one.
    n = len(strings)
    for position in (1, 3):
        t = sum(s[position] == "T" for s in strings)
        assert abs(t - n / 2) < 4 * math.sqrt(n / 4), (position, t)
    plain = [reber_string(gen) for _ in range(500)]
    assert all(re.fullmatch(REBER, s) for s in plain)


def test_successor_sets_are_the_grammars_transitions():
    strings, batch = embedded_reber(300, 3)
    assert batch.inputs.shape == (max(map(len, strings)) - 1, 300, 7) and batch.targets.dtype == torch.bool
    for b, s in enumerate(strings):
        L = len(s)
        assert int(batch.lengths[b]) == L - 1  # every symbol but the final E is read
        read = "".join(REBER_SYMBOLS[int(k)] for k in batch.inputs[: L - 1, b].argmax(-1))
        assert read == s[:-1] and torch.all(batch.inputs[: L - 1, b].sum(-1) == 1)
        assert torch.all(batch.inputs[L - 1 :, b] == 0) and not batch.targets[L - 1 :, b].any()
        for t in range(L - 1):
            allowed = {REBER_SYMBOLS[k] for k in range(7) if batch.targets[t, b, k]}
            assert allowed == allowed_after(s[: t + 1]), (s, t)
            assert s[t + 1] in allowed
        assert allowed_after(s[: L - 2]) == {s[1]}  # after the inner E: only memory tells the symbol before last


def test_reber_successors_refuses_strings_outside_the_grammar():
    assert reber_successors("BTBTXSETE")[-2] == frozenset("T")
    for bad in ["BTBTXSEPE", "BTBTXXETE", "BTBPVVETEE", "BTBTXSE", "XTBTXSETE"]:
        with pytest.raises(ValueError, match="not an embedded Reber string|cannot follow|does not end"):
            reber_successors(bad)


def test_excluded_strings_are_never_drawn_and_the_draw_is_seeded():
    train, _ = embedded_reber(256, 1)
    test, _ = embedded_reber(256, heldout_generator(), exclude=frozenset(train))
    assert not set(train) & set(test)
    assert embedded_reber(20, 5)[0] == embedded_reber(20, torch.Generator().manual_seed(5))[0]
    assert embedded_reber(20, 5)[0] != embedded_reber(20, 6)[0]


def test_reber_correct_asks_the_allowed_symbols_to_be_the_most_active():
    strings = ["BTBTXSETE", "BPBPVVEPE"]
    batch = encode_reber(strings)
    perfect = batch.targets.float() * 5 + torch.randn(batch.targets.shape) * 0.1
    assert reber_correct(perfect, batch.targets).tolist() == [True, True]
    spoiled = perfect.clone()
    spoiled[6, 1, REBER_SYMBOLS.index("T")] = 10.0  # after BPBPVVE: T above the remembered P
    assert reber_correct(spoiled, batch.targets).tolist() == [True, False]
    tied = perfect.clone()
    tied[0, 0] = 0.0
    tied[0, 0, [1, 2]] = 1.0  # both allowed (T, P) at 1.0, and S at 1.0 too: not strictly above
    tied[0, 0, 3] = 1.0
    assert reber_correct(tied, batch.targets).tolist() == [False, True]
    padded = perfect.clone()
    padded[8:, 1] = torch.randn(padded[8:, 1].shape) * 100  # past the shorter string's end
    assert reber_correct(padded, batch.targets)[1]


# ---------------------------------------------------------------------------------------------
# Experiment 2a, 2b


@pytest.mark.parametrize("random_middle", [False, True])
def test_noise_free_lag_sequences_are_the_papers(random_middle):
    p, n = 12, 2000
    batch = noise_free_lag(n, p, 4, random_middle=random_middle)
    x, y = batch.inputs, batch.targets
    assert x.shape == (p, n, p + 1) and y.shape == (p, n) and batch.lengths is None
    x_sym, y_sym = p - 1, p  # a_p = x, a_{p+1} = y
    firsts = Counter()
    middles = Counter()
    for b in range(n):
        seq = [int(k) for k in x[:, b].argmax(-1)] + [int(y[-1, b])]
        assert len(seq) == p + 1 and [int(k) for k in y[:, b]] == seq[1:]
        assert seq[0] in (x_sym, y_sym) and seq[-1] == seq[0]
        firsts[seq[0]] += 1
        if random_middle:
            assert all(0 <= k < p - 1 for k in seq[1:-1])  # a_1 … a_{p−1}, never x or y
            middles.update(seq[1:-1])
        else:
            assert seq[1:-1] == list(range(p - 1))  # a_1, a_2, …, a_{p−1}
    assert abs(firsts[x_sym] - n / 2) < 4 * math.sqrt(n / 4)
    if random_middle:
        expected = n * (p - 1) / (p - 1)
        assert set(middles) == set(range(p - 1)) and all(
            abs(c - expected) < 5 * math.sqrt(expected) for c in middles.values()
        )
    ids = noise_free_lag(n, p, 4, random_middle=random_middle, one_hot=False)
    assert torch.equal(ids.inputs, x.argmax(-1)) and torch.equal(ids.targets, y)


def test_noise_free_lag_correct_is_the_025_rule():
    targets = torch.tensor([[1, 1], [3, 2]])  # (T=2, N=2)
    probs = torch.zeros(2, 2, 4)
    probs[0, 0, 1], probs[1, 0, 3] = 0.8, 0.76  # within 0.25 of one-hot everywhere
    probs[0, 0, 0], probs[1, 0, 0] = 0.2, 0.24
    probs[0, 1, 1], probs[1, 1, 2] = 0.74, 1.0  # the first step 0.26 off
    probs[0, 1, 0] = 0.26
    assert noise_free_lag_correct(probs, targets).tolist() == [True, False]
    assert noise_free_lag_correct(probs, targets, at_end_only=True).tolist() == [True, True]


# ---------------------------------------------------------------------------------------------
# Experiment 2c


def test_very_long_lag_sequences_are_the_papers():
    p, q, n = 7, 30, 4000
    batch = very_long_lag(n, p, q, 9)
    e, b_sym, x_sym = p, p + 1, p + 2
    assert batch.inputs.shape[1:] == (n, p + 4) and batch.targets.shape == (n,)
    extra, distractors = [], Counter()
    for b in range(n):
        L = int(batch.lengths[b])
        seq = [int(k) for k in batch.inputs[:L, b].argmax(-1)]
        assert torch.all(batch.inputs[L:, b] == 0) and torch.all(batch.inputs[:L, b].sum(-1) == 1)
        assert seq[0] == b_sym and seq[1] in (x_sym, x_sym + 1) and seq[-1] == e
        assert int(batch.targets[b]) == seq[1] - x_sym  # the final symbol repeats the second
        middle = seq[2:-1]
        assert len(middle) >= q and all(0 <= k < p for k in middle)  # q + k distractors, none of b, e, x, y
        extra.append(len(middle) - q)
        distractors.update(middle)
    # k is geometric: P(k) = (1/10)(9/10)^k, mean 9, P(0) = 1/10; lengths of the full sequence
    # (with the final x or y) q + k + 4, at least q + 4.
    ks = torch.tensor(extra, dtype=torch.float64)
    assert abs(float(ks.mean()) - 9) < 4 * math.sqrt(90 / n)  # variance 0.9 / 0.01 = 90
    assert abs(float((ks == 0).double().mean()) - 0.1) < 4 * math.sqrt(0.09 / n)
    assert min(extra) == 0 and int(batch.lengths.min()) + 1 == q + 4
    expected = sum(extra + [q] * n) / p  # uniform over a_1 … a_p
    assert all(abs(distractors[k] - expected) < 5 * math.sqrt(expected) for k in range(p))
    assert abs(float(batch.targets.double().mean()) - 0.5) < 4 * math.sqrt(0.25 / n)
    ids = very_long_lag(n, p, q, 9, one_hot=False)
    valid = torch.arange(ids.inputs.shape[0]).unsqueeze(1) < ids.lengths
    assert torch.equal(ids.inputs[valid], batch.inputs.argmax(-1)[valid]) and torch.all(ids.inputs[~valid] == -1)


def test_very_long_lag_table_is_the_papers_table_3():
    assert VERY_LONG_LAG_TABLE[1] == (100, 100, 31_000) and VERY_LONG_LAG_TABLE[4] == (1000, 1000, 49_000)
    assert [row[:2] for row in VERY_LONG_LAG_TABLE[4:]] == [
        (1000, 1000),
        (1000, 500),
        (1000, 200),
        (1000, 100),
        (1000, 50),
    ]


# ---------------------------------------------------------------------------------------------
# Experiment 3


@pytest.mark.parametrize("variant", ["a", "b", "c"])
def test_two_sequence_follows_the_paper(variant):
    T, N, n = 40, 3, 3000
    batch = two_sequence(n, T, 2, informative=N, variant=variant)
    clean = two_sequence(n, T, 2, informative=N, variant=variant, noisy_targets=False)
    assert torch.equal(batch.inputs, clean.inputs) and torch.equal(batch.lengths, clean.lengths)
    assert batch.inputs.shape == (T + T // 10, n, 1)
    noise, informative_noise, target_noise = [], [], []
    one, two = (0.2, 0.8) if variant == "c" else (1.0, 0.0)
    for b in range(n):
        L = int(batch.lengths[b])
        assert T <= L <= T + T // 10
        x = batch.inputs[:, b, 0]
        assert torch.all(x[L:] == 0)
        first_class = math.isclose(float(clean.targets[b]), one, abs_tol=1e-6)
        assert first_class or math.isclose(float(clean.targets[b]), two, abs_tol=1e-6)
        sign = 1.0 if first_class else -1.0
        if variant == "b":
            informative_noise.extend((x[:N] - sign).tolist())
        else:
            assert torch.all(x[:N] == sign)  # 1.0 for class 1, −1.0 for class 2
        noise.extend(x[N:L].tolist())
        target_noise.append(float(batch.targets[b] - clean.targets[b]))
    noise = torch.tensor(noise, dtype=torch.float64)
    assert abs(float(noise.mean())) < 4 * math.sqrt(0.2 / len(noise))
    assert float(noise.var()) == pytest.approx(0.2, rel=0.02)  # "mean zero and variance 0.2"
    if variant == "b":
        assert float(torch.tensor(informative_noise).var()) == pytest.approx(0.2, rel=0.1)
    target_noise = torch.tensor(target_noise, dtype=torch.float64)
    if variant == "c":
        assert float(target_noise.var()) == pytest.approx(0.1, rel=0.1)  # "variance 0.1; st.dev. 0.32"
    else:
        assert torch.all(target_noise == 0)
    assert abs(float(((clean.targets - one).abs() < 1e-6).double().mean()) - 0.5) < 4 * math.sqrt(0.25 / n)


def test_two_sequence_correct_and_stopping_criteria():
    targets = torch.tensor([1.0, 0.0, 1.0])
    assert two_sequence_correct(torch.tensor([0.81, 0.19, 0.79]), targets, "a").tolist() == [True, True, False]
    c_targets = torch.tensor([0.2, 0.8, 0.8])
    assert two_sequence_correct(torch.tensor([0.29, 0.91, 0.71]), c_targets, "c").tolist() == [True, False, True]
    assert TWO_SEQUENCE_STOP == {"a": (0, 0.01), "b": (5, 0.04), "c": (0, 0.015)}


# ---------------------------------------------------------------------------------------------
# Experiment 5


def test_multiplication_follows_the_paper_sequence_by_sequence():
    T, n = 40, 600
    batch = multiplication(n, T, 8)
    x, y, lengths = batch
    first_marked = 0
    for b in range(n):
        L = int(lengths[b])
        assert T <= L <= T + T // 10
        values, markers = x[:L, b, 0], x[:L, b, 1]
        assert torch.all(x[L:, b] == 0)
        assert 0 <= float(values.min()) and float(values.max()) <= 1
        marked = [t for t in range(L) if markers[t] == 1.0]
        assert len(marked) == 2 and marked[0] < 10 and marked[1] < T // 2
        assert markers[L - 1] == -1.0
        if marked[0] == 0:  # a marked first pair: its value is set to 1.0
            first_marked += 1
            assert values[0] == 1.0
        else:
            assert markers[0] == -1.0
        assert math.isclose(float(y[b]), float(values[marked[0]]) * float(values[marked[1]]), rel_tol=1e-6)
    assert 0 < first_marked < n // 4
    # the same marks as the adding problem's, values in [0, 1] instead of [−1, 1]
    assert torch.equal(adding(n, T, 8).inputs[..., 1], x[..., 1])


def test_multiplication_targets_and_the_n_seq_rate():
    n, T = 20_000, 100
    _, y, _ = multiplication(n, T, 1)
    # E[X1 X2] = 1/4 for X uniform on [0, 1], but a marked first pair counts 1.0: X1 with
    # probability 1/10, X2 with 9/10 / (T/2 − 1) (never both), and then E = 1/2.
    zeroed = 0.1 + 0.9 / (T // 2 - 1)
    mean = (1 - zeroed) / 4 + zeroed / 2
    assert abs(float(y.double().mean()) - mean) < 4 * float(y.double().std()) / math.sqrt(n)
    assert 0 <= float(y.min()) and float(y.max()) <= 1
    assert MULTIPLICATION_N_SEQ == (140, 13)
    assert multiplication_allowed_wrong(2000, 13) == 12  # "less than 13 of the 2000"
    assert multiplication_allowed_wrong(2000, 140) == 139
    assert multiplication_allowed_wrong(2560, 13) == 16  # 13 · 2560 / 2000 = 16.6


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: noise_free_lag(4, 1, 0), "p must be ≥ 2"),
        (lambda: very_long_lag(4, 0, 10, 0), "p must be ≥ 1"),
        (lambda: very_long_lag(4, 3, -1, 0), "q must be ≥ 0"),
        (lambda: two_sequence(4, 3, 0, informative=3), "T must be ≥ 4"),
        (lambda: two_sequence(4, 30, 0, variant="d"), "variant must be 'a', 'b' or 'c'"),
        (lambda: multiplication(4, 10, 0), "T must be ≥ 20"),
        (lambda: embedded_reber(0, 0), "n must be ≥ 1"),
        (lambda: encode_reber([]), "no strings"),
    ],
)
def test_bad_arguments_are_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()
