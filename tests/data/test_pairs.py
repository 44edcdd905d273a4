"""Reading one's own pairs: what is refused (with the line), the hash split, and the encoding."""

from __future__ import annotations

import random
import zlib

import pytest
import torch

from rnnkit.data.corpus import DataError
from rnnkit.data.pairs import encode_pairs, holdout_split, load_pairs, read_pairs
from rnnkit.data.text import BOS, EOS, PAD, UNK, TokenVocab


def write(path, text: str | bytes):
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def test_reads_pairs_skipping_blank_lines_with_crlf_and_a_bom(tmp_path):
    f = write(tmp_path / "p.tsv", "\ufeffchat\tcat\r\n\nchien\tdog\n  \nété\tsummer\n")
    assert read_pairs(f) == [("chat", "cat"), ("chien", "dog"), ("été", "summer")]


@pytest.mark.parametrize(
    "text, message",
    [
        ("chat\tcat\nchien dog\n", r"p.tsv:2: expected source<TAB>target, got no tab: 'chien dog'"),
        ("chat\tcat\tCC-BY 2.0\n", r"p.tsv:1: expected source<TAB>target, got 3 tab-separated fields"),
        ("a\tb\n\tdog\n", r"p.tsv:2: the source \(before the tab\) is empty"),
        ("", r"holds no pair"),
        ("\n\n", r"holds no pair"),
    ],
)
def test_bad_lines_are_refused_with_their_number(tmp_path, text, message):
    with pytest.raises(DataError, match=message):
        read_pairs(write(tmp_path / "p.tsv", text))


def test_bad_encoding_names_the_line(tmp_path):
    f = write(tmp_path / "p.tsv", b"chat\tcat\n" + "été\tsummer\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"p.tsv:2: not UTF-8 text \(byte 0xe9 at column 1\)"):
        read_pairs(f)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_pairs(tmp_path / "missing.tsv")


def test_holdout_split_follows_the_hash_of_the_source_whatever_the_order():
    gen = random.Random(0)
    pairs = [("".join(gen.choice("abcdefgh") for _ in range(gen.randrange(1, 8))), str(k)) for k in range(2000)]
    train, val, test = holdout_split(pairs, 0.1, 0.2)
    for part, lo, hi in ((test, 0, 2000), (val, 2000, 3000), (train, 3000, 10_000)):
        assert all(lo <= zlib.crc32(s.encode()) % 10_000 < hi for s, _ in part)
    assert len(train) + len(val) + len(test) == len(pairs)
    assert 0.15 < len(test) / len(pairs) < 0.25 and 0.06 < len(val) / len(pairs) < 0.14
    shuffled = pairs[::-1]
    assert [sorted(p) for p in holdout_split(shuffled, 0.1, 0.2)] == [sorted(p) for p in (train, val, test)]
    by_source = {}
    for name, part in zip("tvs", (train, val, test)):
        for s, _ in part:
            by_source.setdefault(s, set()).add(name)
    assert all(len(v) == 1 for v in by_source.values())  # one source, one split
    with pytest.raises(ValueError, match=r"val_fraction \+ test_fraction must be < 1"):
        holdout_split(pairs, 0.5, 0.5)


def test_encode_pairs_frames_targets_and_not_sources():
    sv, tv = TokenVocab(list("ab")), TokenVocab(list("xyz"), unk=True)
    split = encode_pairs([("ab", "zy"), ("b", "xq")], sv, tv)
    a, b = sv.index["a"], sv.index["b"]
    assert split.sources.t().tolist() == [[a, b], [b, PAD]] and split.source_lengths.tolist() == [2, 1]
    x, y, z = (tv.index[c] for c in "xyz")
    assert split.targets.t().tolist() == [[BOS, z, y, EOS], [BOS, x, UNK, EOS]] and split.target_lengths.tolist() == [
        4,
        4,
    ]


def test_load_pairs_builds_the_vocabularies_from_training_pairs_and_takes_split_files(tmp_path):
    gen = random.Random(1)
    lines = ["".join(gen.choice("abcdef") for _ in range(gen.randrange(1, 6))) for _ in range(300)]
    f = write(tmp_path / "p.tsv", "".join(f"{w}\t{w[::-1].upper()}\n" for w in lines))
    data = load_pairs(f, val_fraction=0.2, test_fraction=0.2)
    train_sources = set(data.train.source_texts)
    assert data.source_vocab == TokenVocab.from_texts(data.train.source_texts)
    assert data.target_vocab == TokenVocab.from_texts(data.train.target_texts)
    assert not train_sources & set(data.val.source_texts) and not train_sources & set(data.test.source_texts)
    v = write(tmp_path / "v.tsv", "abc\tCBA\nzz\tZZ\n")  # z: unseen in training, so UNK
    data = load_pairs(f, val=v, test_fraction=0.2)
    assert data.val.source_texts == ["abc", "zz"] and data.val.sources[:2, 1].tolist() == [UNK, UNK]
    assert len(data.train.source_texts) + len(data.test.source_texts) == 300
    with pytest.raises(DataError, match="the val split of 2 pairs .* is empty"):
        load_pairs(write(tmp_path / "two.tsv", "a\tb\nc\td\n"), val_fraction=0.01, test_fraction=0.01)
    assert torch.equal(load_pairs(f).train.sources, load_pairs(f).train.sources)  # reproducible
