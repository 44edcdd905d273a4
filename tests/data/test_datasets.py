"""Real and generated datasets against their sources: the shipped data, hand-written expectations,
and independent recomputation (a words → number parser, BLEU by its formula, per-window loops)."""

import ast
import collections
import keyword
import math
import sys

import pytest
import torch

from rnnkit.data.corpus import DataError, stdlib_files
from rnnkit.data.datasets import (
    BOS,
    EOS,
    PAD,
    TAGS,
    Split,
    bleu,
    digits,
    exact_match,
    forecast_mse,
    majority_accuracy,
    number_to_words,
    numbers_to_words,
    persistence_forecast,
    seasonal_forecast,
    spell_digits,
    sunspots,
    tag_source,
    tagging,
    unigram_tag_accuracy,
)

# ---------------------------------------------------------------------------------------------
# optional dependencies


@pytest.mark.parametrize(
    "module, call",
    [
        ("sklearn.datasets", lambda: digits()),
        ("statsmodels.api", lambda: sunspots()),
        ("sacrebleu", lambda: bleu(["a"], ["a"])),
    ],
)
def test_missing_optional_dependency_names_the_extra(monkeypatch, module, call):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(ImportError, match=r"not installed: pip install rnnkit\[tasks\]"):
        call()


# ---------------------------------------------------------------------------------------------
# digits


@pytest.fixture(scope="module")
def sk_digits():
    from sklearn.datasets import load_digits

    return load_digits()


def test_digits_rows_and_pixels_read_the_shipped_images(sk_digits):
    images = torch.tensor(sk_digits.images, dtype=torch.float32)  # (1797, 8, 8) in 0 … 16
    labels = torch.tensor(sk_digits.target)
    index = collections.defaultdict(set)
    for k in range(images.shape[0]):
        index[tuple(images[k].flatten().tolist())].add(int(labels[k]))
    rows, pixels = digits("rows", seed=3), digits("pixels", seed=3)
    total = 0
    for split_r, split_p in zip(rows[:3], pixels[:3]):
        assert split_r.inputs.shape[:1] == (8,) and split_r.inputs.shape[2] == 8
        assert split_p.inputs.shape[:1] == (64,) and split_p.inputs.shape[2] == 1
        total += split_r.targets.numel()
        for n in range(0, split_r.targets.numel(), 13):
            image = split_r.inputs[:, n, :] * 16  # step t is row t
            assert int(split_r.targets[n]) in index[tuple(image.flatten().tolist())]
            # The same split order: the pixel sequence is the row-major image.
            torch.testing.assert_close(split_p.inputs[:, n, 0], split_r.inputs[:, n, :].flatten(), rtol=0, atol=0)
        assert float(split_r.inputs.min()) == 0.0 and float(split_r.inputs.max()) == 1.0
    assert total == 1797 and rows.train.targets.numel() == 1797 - 2 * 270


def test_digits_split_is_fixed_by_seed_and_covers_each_image_once(sk_digits):
    a, b, c = digits(seed=1), digits(seed=1), digits(seed=2)
    assert torch.equal(a.test.inputs, b.test.inputs) and not torch.equal(a.test.inputs, c.test.inputs)
    # Every image is used exactly once over the three splits.
    ours = sorted(tuple((s.inputs[:, n] * 16).flatten().tolist()) for s in a[:3] for n in range(s.targets.numel()))
    theirs = sorted(tuple(img.flatten().tolist()) for img in sk_digits.images)
    assert ours == theirs


def test_digits_baseline_and_errors():
    d = digits()
    counts = torch.bincount(d.train.targets, minlength=10)
    expected = float((d.test.targets == counts.argmax()).double().mean())
    assert majority_accuracy(d.train.targets, d.test.targets) == expected and 0.05 < expected < 0.2
    with pytest.raises(ValueError, match="digits: order must be one of 'rows', 'pixels', got 'columns'"):
        digits("columns")
    with pytest.raises(ValueError, match="val_fraction \\+ test_fraction must be < 1"):
        digits(val_fraction=0.5, test_fraction=0.5)


# ---------------------------------------------------------------------------------------------
# sunspots


@pytest.fixture(scope="module")
def sun5():
    return sunspots(window=12, horizon=5)


def test_sunspots_is_the_shipped_series(sun5):
    import statsmodels.api as sm

    frame = sm.datasets.sunspots.load_pandas().data
    assert sun5.years.tolist() == list(map(float, range(1700, 2009)))
    assert sun5.values.tolist() == pytest.approx(frame["SUNACTIVITY"].tolist(), abs=1e-4)
    train_end, val_end = sun5.bounds
    assert (train_end, val_end) == (216, 263)
    # Normalisation fitted on the training years only.
    assert sun5.mean == pytest.approx(float(sun5.values[:train_end].double().mean()), rel=1e-12)
    assert sun5.std == pytest.approx(float(sun5.values[:train_end].double().std()), rel=1e-12)


def test_sunspot_windows_hold_past_inputs_and_future_targets_in_time_order(sun5):
    W, K = 12, 5
    train_end, val_end = sun5.bounds
    values = sun5.values.tolist()
    ranges = {"train": (0, train_end), "val": (train_end, val_end), "test": (val_end, 309)}
    last = -1
    for name, (start, end) in ranges.items():
        w = getattr(sun5, name)
        assert w.inputs.shape == (W, w.origins.numel(), 1) and w.targets.shape == (w.origins.numel(), K)
        assert int(w.origins.min()) > last  # splits follow each other in time
        last = int(w.origins.max())
        for n in range(w.origins.numel()):
            t = int(w.origins[n])
            assert start <= t + 1 and t + K <= end - 1 and t >= W - 1 and t >= 10
            past = sun5.denormalise(w.inputs[:, n, 0]).tolist()
            future = sun5.denormalise(w.targets[n]).tolist()
            assert past == pytest.approx(values[t - W + 1 : t + 1], abs=1e-3)
            assert future == pytest.approx(values[t + 1 : t + K + 1], abs=1e-3)
        # Every year whose window fits is used: origins are consecutive.
        assert w.origins.tolist() == list(range(int(w.origins[0]), int(w.origins[-1]) + 1))


def test_sunspot_baselines_recomputed_by_loops(sun5):
    values = sun5.values.tolist()
    base = sun5.baselines("test")
    w = sun5.test
    for h in range(1, 6):
        pers = [(values[t] - values[t + h]) ** 2 for t in w.origins.tolist()]
        seas = [(values[t + h - 11] - values[t + h]) ** 2 for t in w.origins.tolist()]
        assert float(base["persistence"][h - 1]) == pytest.approx(sum(pers) / len(pers), rel=1e-4)
        assert float(base["seasonal"][h - 1]) == pytest.approx(sum(seas) / len(seas), rel=1e-4)
    # Persistence degrades with the horizon on an 11-year cycle; the seasonal forecast does not.
    assert base["persistence"][4] > 3 * base["persistence"][0]
    assert base["seasonal"][4] < base["persistence"][4]


def test_seasonal_forecast_goes_back_whole_cycles():
    values = torch.randn(60, generator=torch.Generator().manual_seed(0))
    origins = torch.tensor([20, 33])
    pred = seasonal_forecast(values, origins, horizon=13, period=6)
    for i, t in enumerate(origins.tolist()):
        for h in range(1, 14):
            assert float(pred[i, h - 1]) == float(values[t + h - 6 * math.ceil(h / 6)])
            assert t + h - 6 * math.ceil(h / 6) <= t
    torch.testing.assert_close(
        persistence_forecast(values, origins, 3), values[origins].unsqueeze(1).repeat(1, 3), rtol=0, atol=0
    )
    with pytest.raises(ValueError, match="origins must be ≥ period − 1 = 5, got 2"):
        seasonal_forecast(values, torch.tensor([2]), horizon=1, period=6)
    with pytest.raises(ValueError, match=r"prediction must have the target's shape \(2, 3\)"):
        forecast_mse(torch.zeros(2, 2), torch.zeros(2, 3))


def test_sunspots_bad_arguments():
    with pytest.raises(ValueError, match=r"the val years \[216, 263\) hold no window with window=20, horizon=50"):
        sunspots(horizon=50)
    with pytest.raises(ValueError, match="sunspots: window must be ≥ 1, got 0"):
        sunspots(window=0)


# ---------------------------------------------------------------------------------------------
# seq2seq: numbers → words

_SMALL = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen".split())}  # fmt: skip
_SMALL.update(
    {w: 10 * i for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), start=2)}
)


def words_to_number(text: str) -> int:
    """An independent parser of the target language, for round trips."""
    total = current = 0
    for word in text.split(" "):
        if word == "hundred":
            current *= 100
        elif word in ("thousand", "million"):
            total += current * (1000 if word == "thousand" else 1_000_000)
            current = 0
        else:
            parts = word.split("-")
            assert len(parts) == 1 or (len(parts) == 2 and _SMALL[parts[0]] >= 20 and 0 < _SMALL[parts[1]] < 10), word
            current += sum(_SMALL[p] for p in parts)
    return total + current


def test_number_to_words_by_hand():
    cases = {
        0: "zero",
        7: "seven",
        13: "thirteen",
        40: "forty",
        42: "forty-two",
        100: "one hundred",
        101: "one hundred one",
        110: "one hundred ten",
        999: "nine hundred ninety-nine",
        1000: "one thousand",
        1905: "one thousand nine hundred five",
        20_019: "twenty thousand nineteen",
        700_080: "seven hundred thousand eighty",
        1_000_000: "one million",
        12_000_005: "twelve million five",
        999_999_999: "nine hundred ninety-nine million nine hundred ninety-nine thousand nine hundred ninety-nine",
    }
    for k, words in cases.items():
        assert number_to_words(k) == words
    with pytest.raises(ValueError, match=r"k must be an int in \[0, 999999999\], got 1000000000"):
        number_to_words(10**9)


def test_numbers_to_words_pairs_padded_and_disjoint():
    data = numbers_to_words(n_train=600, n_val=80, n_test=80, max_digits=7, seed=1)
    src, tgt = data.source_vocab, data.target_vocab
    assert set(src.tokens[3:]) == set("0123456789") and not set(src.tokens[3:]) & set(tgt.tokens[3:])
    assert src.tokens[:3] == tgt.tokens[:3] == ["<pad>", "<bos>", "<eos>"]
    seen = set()
    for split in data[2:]:
        numbers = [int(s) for s in split.source_texts]
        assert not seen & set(numbers) and len(set(numbers)) == len(numbers)
        seen |= set(numbers)
        for b, (s, t) in enumerate(zip(split.source_texts, split.target_texts)):
            assert words_to_number(t) == int(s) and str(int(s)) == s and 1 <= len(s) <= 7
            S, U = int(split.source_lengths[b]), int(split.target_lengths[b])
            assert S == len(s) and U == len(t) + 2
            assert src.decode(split.sources[:, b]) == s and torch.all(split.sources[S:, b] == PAD)
            col = split.targets[:, b]
            assert int(col[0]) == BOS and int(col[U - 1]) == EOS and torch.all(col[U:] == PAD)
            assert tgt.decode(col) == t
    digit_counts = collections.Counter(len(s) for s in data.train.source_texts)
    assert min(digit_counts[d] for d in range(3, 8)) > 0.5 * 600 / 7  # digit counts roughly uniform
    # Output sequences are much longer than inputs: a translation with different lengths.
    assert data.train.target_lengths.double().mean() > 3 * data.train.source_lengths.double().mean()
    again = numbers_to_words(n_train=600, n_val=80, n_test=80, max_digits=7, seed=1)
    assert again.test.source_texts == data.test.source_texts and torch.equal(again.train.targets, data.train.targets)


def test_numbers_to_words_bad_arguments():
    with pytest.raises(ValueError, match="numbers_to_words: n_test must be ≥ 1, got 0"):
        numbers_to_words(n_test=0)
    with pytest.raises(ValueError, match=r"1200 distinct numbers need max_digits > 3"):
        numbers_to_words(n_train=1000, n_val=100, n_test=100, max_digits=3)
    with pytest.raises(ValueError, match="max_digits must be ≤ 9, got 10"):
        numbers_to_words(max_digits=10)


def _bleu_by_formula(hyps, refs):
    """BLEU-4 from its definition (Papineni et al. 2002) on whitespace tokens: clipped n-gram
    precisions over the corpus, geometric mean, brevity penalty."""
    log_p = 0.0
    for n in range(1, 5):
        match = total = 0
        for h, r in zip(hyps, refs):
            hg = collections.Counter(tuple(h.split()[i : i + n]) for i in range(len(h.split()) - n + 1))
            rg = collections.Counter(tuple(r.split()[i : i + n]) for i in range(len(r.split()) - n + 1))
            match += sum(min(c, rg[g]) for g, c in hg.items())
            total += sum(hg.values())
        log_p += math.log(match / total) / 4
    c, r = sum(len(h.split()) for h in hyps), sum(len(r.split()) for r in refs)
    bp = 1.0 if c > r else math.exp(1 - r / c)
    return 100 * bp * math.exp(log_p)


def test_bleu_and_exact_match():
    refs = [
        "nine hundred ninety-nine thousand one hundred five",
        "four hundred thousand two hundred",
        "one million seven hundred",
    ]
    hyps = [
        "nine hundred ninety-nine thousand one hundred five",
        "four hundred thousand three hundred",
        "one million seven",
    ]
    assert bleu(hyps, refs) == pytest.approx(_bleu_by_formula(hyps, refs), rel=1e-9)
    assert bleu(refs, refs) == pytest.approx(100.0)
    assert exact_match(hyps, refs) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="need as many hypotheses as references"):
        bleu(hyps[:2], refs)


def test_spell_digits_baseline():
    assert spell_digits("305") == "three zero five"
    sources = [str(k) for k in range(10)] + ["17", "250"]
    refs = [number_to_words(int(s)) for s in sources]
    assert exact_match([spell_digits(s) for s in sources], refs) == 10 / 12


# ---------------------------------------------------------------------------------------------
# tagging

_CODE = dict(zip(TAGS, ". n N K o 0 s #".split()))
# A snippet and its tags by hand, one code per character: . space, n newline, N name,
# K keyword, o operator, 0 number, s string, # comment.
_SNIPPET = [
    ("def f(x, y=1.5):  # add\n", "KKK.NoNo.No000oo..#####n"),
    ("    return x + y\n", "....KKKKKK.N.o.Nn"),  # the indentation is an INDENT token: space
    ("\n", "n"),  # a blank line: NL
    ("# only\n", "######n"),
    ("s = 'a' \\\n", "N.o.sss..."),  # a backslash continuation belongs to no token
    ('    "b"\n', "....sssn"),
    ("t = True if x else 0x1F\n", "N.o.KKKK.KK.N.KKKK.0000n"),
    ("match = [None, _]\n", "NNNNN.o.oKKKKo.Non"),  # soft keyword `match` is a name
]


def test_tag_source_by_hand():
    for line, codes in _SNIPPET:
        assert len(line) == len(codes), line
    text = "".join(line for line, _ in _SNIPPET)
    got = "".join(_CODE[TAGS[i]] for i in tag_source(text).tolist())
    assert got == "".join(codes for _, codes in _SNIPPET)


def test_tag_source_rejects_source_that_does_not_tokenize():
    with pytest.raises(DataError, match="source does not tokenize"):
        tag_source("s = '''never closed\n")
    with pytest.raises(DataError, match="source does not tokenize"):
        tag_source("x = (1,\n")


def _runs(text, tags):
    """Maximal runs of equal tags: (tag name, text)."""
    out, start = [], 0
    for i in range(1, len(text) + 1):
        if i == len(text) or tags[i] != tags[start]:
            out.append((TAGS[tags[start]], text[start:i]))
            start = i
    return out


def test_tags_of_real_stdlib_files_parse_as_what_they_claim():
    # Independent of tokenize: every run of one tag is checked with str methods and ast.
    for path in stdlib_files()[:6]:
        text = path.read_text(encoding="utf-8")
        for tag, run in _runs(text, tag_source(text).tolist()):
            if tag == "keyword":
                assert keyword.iskeyword(run), run
            elif tag == "name":
                assert run.isidentifier() and not keyword.iskeyword(run), run
            elif tag == "number":
                assert isinstance(ast.parse(run, mode="eval").body, ast.Constant), run
            elif tag == "string":
                assert isinstance(ast.parse(run.strip(), mode="eval").body, (ast.Constant, ast.JoinedStr)), run
            elif tag == "comment":
                assert run.startswith("#") and "\n" not in run, run
            elif tag in ("space", "newline"):
                assert run.strip(" \t\n\r\f\\") == "", repr(run)


def _write_files(root, n):
    texts = []
    for k in range(n):
        text = f"def f{k}(a, b={k}):\n    '''doc {k}'''\n    return a * b  # times\n"
        (root / f"m{k:02d}.py").write_text(text)
        texts.append(text)
    return texts


def test_tagging_chunks_whole_files_into_splits(tmp_path):
    texts = _write_files(tmp_path, 12)
    (tmp_path / "broken.py").write_text("x = '''\n")  # sorts first, does not tokenize
    data = tagging(chunk_length=16, max_chars=10**6, every=4, root=tmp_path)
    assert data.skipped == [str(tmp_path / "broken.py")] and len(data.files) == 12
    # File k (among those kept) is test if k % 4 == 3, val if k % 4 == 2.
    expect = {
        "train": [t for k, t in enumerate(texts) if k % 4 in (0, 1)],
        "val": [t for k, t in enumerate(texts) if k % 4 == 2],
        "test": [t for k, t in enumerate(texts) if k % 4 == 3],
    }
    for name, part in expect.items():
        split = getattr(data, name)
        text = "".join(part)
        n = len(text) // 16
        assert split.inputs.shape == split.targets.shape == (16, n)
        assert data.vocab.decode(split.inputs.t().flatten()) == text[: 16 * n]
        torch.testing.assert_close(
            split.targets.t().flatten(), torch.cat([tag_source(t) for t in part])[: 16 * n], rtol=0, atol=0
        )
    with pytest.raises(DataError, match="the val split holds 0 characters of 1 files"):
        tagging(chunk_length=16, max_chars=10, every=4, root=tmp_path)


def test_tagging_baselines():
    train = Split(torch.tensor([[0, 0, 1, 2, 0, 1]]), torch.tensor([[2, 2, 4, 4, 3, 4]]))
    test = Split(torch.tensor([[0, 1, 2, 3]]), torch.tensor([[2, 4, 2, 4]]))
    # Per character: 0 → 2 (2 of 3), 1 → 4, 2 → 4, 3 unseen → majority tag 4.
    assert unigram_tag_accuracy(train, test) == 0.75
    assert majority_accuracy(train.targets, test.targets) == 0.5


def test_tagging_on_the_stdlib_is_deterministic():
    a = tagging(chunk_length=64, max_chars=40_000, every=3)
    b = tagging(chunk_length=64, max_chars=40_000, every=3)
    assert (
        a.files == b.files
        and torch.equal(a.train.inputs, b.train.inputs)
        and torch.equal(a.test.targets, b.test.targets)
    )
    assert set(a.train.targets.unique().tolist()) == set(range(len(TAGS)))
    with pytest.raises(ValueError, match="tagging: every must be ≥ 3, got 2"):
        tagging(every=2)
