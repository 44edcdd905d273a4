"""Vocabularies from texts, text batches, and the text metrics, against hand-built values."""

from __future__ import annotations

import functools
import json
import random
import warnings

import pytest
import torch

import rnnkit
from rnnkit.data import text as T
from rnnkit.data.corpus import DataError
from rnnkit.data.text import (
    BOS,
    EOS,
    PAD,
    UNK,
    TokenVocab,
    char_error_rate,
    chrf,
    edit_distance,
    exact_match,
    pad_batch,
)

# ---------------------------------------------------------------------------------------------
# vocabularies


def test_reserved_ids_are_fixed_and_symbols_follow_them():
    assert (PAD, BOS, EOS, UNK) == (0, 1, 2, 3)
    v = TokenVocab(["b", "a"])
    assert v.tokens == ["<pad>", "<bos>", "<eos>", "b", "a"] and v.symbols == ["b", "a"] and len(v) == 5
    u = TokenVocab(["b", "a"], unk=True)
    assert u.tokens[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"] and u.index["b"] == 4 and u.symbols == ["b", "a"]


def test_from_texts_counts_characters_and_keeps_frequent_ones_in_sorted_order():
    texts = ["abracadabra", "cab", "dd", "z"]
    # counts by hand: a 6, b 3, r 2, c 2, d 4, z 1
    v = TokenVocab.from_texts(texts)
    assert v.symbols == ["a", "b", "c", "d", "r", "z"] and v.unk and v.split == "chars"
    assert TokenVocab.from_texts(texts, min_count=3).symbols == ["a", "b", "d"]
    # the 4 most frequent: a, d, b, then c and r tie at 2 and c sorts first
    assert TokenVocab.from_texts(texts, max_size=4).symbols == ["a", "b", "c", "d"]
    assert TokenVocab.from_texts(reversed(texts)) == v  # order of the texts does not change the ids


def test_unknown_symbols_map_to_unk_or_raise():
    v = TokenVocab.from_texts(["hello"])
    assert v.encode("hex", bos=True, eos=True) == [BOS, v.index["h"], v.index["e"], UNK, EOS]
    assert v.decode([v.index["h"], UNK, v.index["o"], EOS, v.index["l"]]) == "h\N{REPLACEMENT CHARACTER}o"
    strict = TokenVocab.from_texts(["hello"], unk=False)
    with pytest.raises(DataError, match="character 'x' is not in the vocabulary.*unk=True"):
        strict.encode("xo")


def test_word_vocabulary_splits_on_whitespace_and_joins_with_a_space():
    v = TokenVocab.from_texts(["the cat sat", "the  dog"], split="words")
    assert v.symbols == ["cat", "dog", "sat", "the"]
    ids = v.encode("the cat ran", eos=True)
    assert ids == [v.index["the"], v.index["cat"], UNK, EOS]
    assert v.decode(ids) == "the cat \N{REPLACEMENT CHARACTER}"


def test_batch_is_padded_time_major_with_lengths_by_hand():
    v = TokenVocab(list("abc"))
    a, b, c = v.index["a"], v.index["b"], v.index["c"]
    x, lengths = v.batch(["ab", "cab", ""], eos=True)
    want = torch.tensor([[a, c, EOS], [b, a, PAD], [EOS, b, PAD], [PAD, EOS, PAD]])
    assert torch.equal(x, want) and x.dtype == torch.long and lengths.tolist() == [3, 4, 1]
    x, lengths = v.batch(["cb"], bos=True)
    assert x.t().tolist() == [[BOS, c, b]] and lengths.tolist() == [3]
    with pytest.raises(TypeError, match="one string"):
        v.batch("abc")


def test_pad_batch_matches_a_loop_on_random_lengths():
    gen = random.Random(3)
    seqs = [[gen.randrange(3, 40) for _ in range(gen.randrange(0, 9))] for _ in range(7)]
    seqs[2] = [5]  # at least one non-empty
    x, lengths = pad_batch(seqs)
    assert x.shape == (max(map(len, seqs)), 7)
    for b, s in enumerate(seqs):
        assert x[: len(s), b].tolist() == s and (x[len(s) :, b] == PAD).all() and lengths[b] == len(s)
    with pytest.raises(ValueError, match="at least one sequence"):
        pad_batch([])


def test_vocab_round_trips_through_json_and_reads_old_lists():
    v = TokenVocab.from_texts(["the cat", "a dog"], split="words", min_count=1)
    back = TokenVocab.from_dict(json.loads(json.dumps(v.to_dict())))
    assert back == v and back.encode("the dog") == v.encode("the dog")
    old = TokenVocab.from_dict(["x", "y"])  # what checkpoints held before: the characters alone
    assert old == TokenVocab(["x", "y"]) and not old.unk
    with pytest.raises(DataError, match="expected"):
        TokenVocab.from_dict({"chars": ["x"]})


def test_bad_arguments_say_what_was_expected():
    with pytest.raises(ValueError, match="min_count must be an int ≥ 1, got 0"):
        TokenVocab.from_texts(["a"], min_count=0)
    with pytest.raises(ValueError, match="split must be one of 'chars', 'words', got 'bytes'"):
        TokenVocab.from_texts(["a"], split="bytes")
    with pytest.raises(TypeError, match="one string"):
        TokenVocab.from_texts("abc")
    with pytest.raises(DataError, match="no symbol occurs 5 times"):
        TokenVocab.from_texts(["ab"], min_count=5)
    with pytest.raises(DataError, match="unique and distinct"):
        TokenVocab(["a", "<eos>"])


def test_public_homes_and_old_import_paths():
    from rnnkit.data import TokenVocab as from_data
    from rnnkit.data.datasets import TokenVocab as old
    from rnnkit.data.datasets import bleu as old_bleu
    from rnnkit.data.datasets import exact_match as old_em
    from rnnkit.data.datasets import pad_batch as old_pad

    assert rnnkit.TokenVocab is from_data is old is T.TokenVocab
    assert old_bleu is T.bleu and old_em is T.exact_match and old_pad is T.pad_batch
    import rnnkit.data.datasets as datasets

    with pytest.warns(DeprecationWarning, match="now PairsData"):
        container = datasets.Seq2Seq
    assert container is datasets.PairsData
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _ = datasets.PairsData  # the new name is quiet


# ---------------------------------------------------------------------------------------------
# metrics


def _levenshtein_recursive(a, b):
    """The textbook recursion, memoised: the reference for edit_distance."""

    @functools.cache
    def d(i, j):
        if i == 0 or j == 0:
            return i + j
        return min(d(i - 1, j) + 1, d(i, j - 1) + 1, d(i - 1, j - 1) + (a[i - 1] != b[j - 1]))

    return d(len(a), len(b))


def test_edit_distance_by_hand_and_against_the_recursion():
    assert edit_distance("kitten", "sitting") == 3  # k→s, e→i, +g
    assert edit_distance("flaw", "lawn") == 2  # −f, +n
    assert edit_distance("", "abc") == 3 and edit_distance("abc", "") == 3 and edit_distance("abc", "abc") == 0
    assert edit_distance("the cat sat".split(), "the cat".split()) == 1  # words as symbols
    gen = random.Random(0)
    for _ in range(50):
        a = "".join(gen.choice("abc") for _ in range(gen.randrange(0, 8)))
        b = "".join(gen.choice("abc") for _ in range(gen.randrange(0, 8)))
        assert edit_distance(a, b) == _levenshtein_recursive(a, b) == edit_distance(b, a)


def test_char_error_rate_sums_over_the_corpus():
    # (3 + 2) edits over 7 + 4 reference characters, not the mean of 3/7 and 2/4
    assert char_error_rate(["kitten", "flaw"], ["sitting", "lawn"]) == pytest.approx(5 / 11, abs=1e-15)
    assert char_error_rate(["abc"], ["abc"]) == 0.0
    assert char_error_rate(["abcdef"], ["a"]) == 5.0  # long hypotheses pass 1
    with pytest.raises(ValueError, match="need as many hypotheses as references"):
        char_error_rate(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="hold no character"):
        char_error_rate(["a"], [""])


def test_chrf_by_hand():
    # "abc" vs "abd": 1-grams 2 of 3 match, 2-grams 1 of 2, 3-grams 0 of 1; orders 4-6 have no
    # n-grams on either side and drop out. P = R = (2/3 + 1/2 + 0) / 3, so chrF = 100 P.
    p = (2 / 3 + 1 / 2) / 3
    assert chrf(["abc"], ["abd"]) == pytest.approx(100 * p, rel=1e-12)
    # "ab" vs "abcd": P_1 = 1, R_1 = 2/4; P_2 = 1, R_2 = 1/3; orders ≥ 3 have no hypothesis
    # n-grams and drop out of the means. β = 2: 100·5PR / (4P + R)
    P, R = 1.0, (1 / 2 + 1 / 3) / 2
    assert chrf(["ab"], ["abcd"]) == pytest.approx(100 * 5 * P * R / (4 * P + R), rel=1e-12)
    # the corpus sums the counts before dividing; whitespace is not a character to chrF:
    # "a b" vs "ab" adds 2/2 1-grams and 1/1 2-grams to the first pair's counts
    p2 = (4 / 5 + 2 / 3 + 0 / 1) / 3
    assert chrf(["abc", "a b"], ["abd", "ab"]) == pytest.approx(100 * p2, rel=1e-12)
    assert chrf(["same words"], ["same words"]) == pytest.approx(100.0)
    assert chrf(["xyz"], ["abc"]) == 0.0


def test_chrf_equals_sacrebleu_on_random_corpora():
    sacrebleu = pytest.importorskip("sacrebleu")
    gen = random.Random(1)

    def text():
        return " ".join(
            "".join(gen.choice("abcde") for _ in range(gen.randrange(1, 6))) for _ in range(gen.randrange(0, 4))
        )

    for _ in range(20):
        n = gen.randrange(1, 6)
        hyps, refs = [text() for _ in range(n)], [text() for _ in range(n)]
        if not "".join(refs).strip():
            continue
        want = sacrebleu.metrics.CHRF().corpus_score(hyps, [refs]).score
        assert chrf(hyps, refs) == pytest.approx(want, rel=1e-9, abs=1e-9), (hyps, refs)


def test_exact_match_and_word_bleu():
    refs = ["the cat sat", "a dog", "hello"]
    hyps = ["the cat sat", "a cat", "hallo"]
    assert exact_match(hyps, refs) == pytest.approx(1 / 3)
    sacrebleu = pytest.importorskip("sacrebleu")
    assert T.bleu(hyps, refs) == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score, rel=1e-12)
    # one word each: BLEU has no 2-gram to match, so a near miss scores as badly as nonsense
    assert T.bleu(["hallo"], ["hello"]) == 0.0 and chrf(["hallo"], ["hello"]) > 0
    with pytest.raises(TypeError, match="one string"):
        exact_match("abc", "abc")
