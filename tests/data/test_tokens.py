"""Token files (issue 20): a corpus encoded once into a memory-mapped file decodes back to its text
exactly (random Unicode, astral characters, uint8/16/32 vocabularies, characters cut by the block
boundaries), holds the char-LM's split, is reused from the cache, rebuilt when the corpus or a
setting changes, and a damaged or unfinished entry is rebuilt (and said so), never used."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest

from rnnkit.data import tokens as tk
from rnnkit.data.corpus import CharVocab, DataError, decode_text, read_documents
from rnnkit.data.tokens import CorruptCache, holdout_segments, load_corpus, prepare_corpus, token_dtype


def random_text(rng: random.Random, n: int, alphabet: list[str]) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def unicode_alphabet(rng: random.Random, size: int) -> list[str]:
    """``size`` distinct characters from all planes (no surrogates, no NUL), astral ones included."""
    points = set()
    while len(points) < size:
        c = rng.choice(
            [
                rng.randrange(1, 0x80),
                rng.randrange(0x80, 0x800),
                rng.randrange(0x800, 0xD800),
                rng.randrange(0xE000, 0x10000),
                rng.randrange(0x10000, 0x110000),
            ]
        )
        points.add(c)
    return [chr(c) for c in sorted(points)]


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 7 bytes: multi-byte characters are cut by block boundaries everywhere."""
    monkeypatch.setattr(tk, "BLOCK", 7)


@pytest.mark.parametrize("size, dtype", [(40, np.uint8), (300, np.uint16)])
def test_the_token_file_decodes_back_to_the_text_exactly(tmp_path, small_blocks, size, dtype):
    rng = random.Random(size)
    alphabet = unicode_alphabet(rng, size)
    folder = tmp_path / "docs"
    folder.mkdir()
    texts = []
    for k in range(5):
        text = random_text(rng, rng.randrange(20, 400), alphabet) + "".join(alphabet[k::5])  # every character used
        texts.append(text)
        (folder / f"{k}.txt").write_bytes(("\ufeff" if k == 2 else "").encode() + text.encode("utf-8"))  # one BOM
    (folder / "empty.txt").write_bytes(b"")  # skipped, as read_documents skips it
    corpus = prepare_corpus(folder, root=tmp_path / "cache", holdout_every=3)
    assert corpus.tokens.dtype == dtype and isinstance(corpus.tokens, np.memmap)
    whole = "".join(read_documents(folder))  # the in-memory path's text and vocabulary
    assert corpus.text() == whole == "".join(texts)
    assert corpus.vocab.chars == CharVocab.from_text(whole).chars
    np.testing.assert_array_equal(corpus.tokens, CharVocab.from_text(whole).encode(whole).numpy())
    assert [len(d) for d in corpus.documents()] == [len(t) for t in texts]


def test_a_vocabulary_of_more_than_65536_characters_is_stored_as_uint32(tmp_path):
    rng = random.Random(3)
    alphabet = unicode_alphabet(rng, 70_000)
    rng.shuffle(alphabet)
    text = "".join(alphabet) + random_text(rng, 5000, alphabet)
    (tmp_path / "big.txt").write_text(text, encoding="utf-8")
    corpus = prepare_corpus(tmp_path / "big.txt", root=tmp_path / "cache")
    assert corpus.tokens.dtype == np.uint32 and len(corpus.vocab) == 70_000
    assert corpus.text() == text
    assert corpus.vocab.chars == sorted(set(text))


def test_token_dtype_is_the_smallest_that_holds_the_vocabulary():
    assert [token_dtype(v) for v in (1, 256, 257, 65536, 65537)] == [
        np.uint8,
        np.uint8,
        np.uint16,
        np.uint16,
        np.uint32,
    ]


def test_max_chars_and_the_split_are_those_of_the_in_memory_path(tmp_path):
    rng = random.Random(5)
    alphabet = unicode_alphabet(rng, 60)
    folder = tmp_path / "docs"
    folder.mkdir()
    for k in range(9):
        (folder / f"{k}.txt").write_text(random_text(rng, rng.randrange(1, 300), alphabet), encoding="utf-8")
    for max_chars in (1, 500, 10**6):
        corpus = prepare_corpus(folder, max_chars=max_chars, holdout_every=3, root=tmp_path / "cache")
        docs = read_documents(folder, max_chars)
        assert corpus.text() == "".join(docs) and corpus.files == len(docs)
        if len(docs) < 3:
            continue  # one file's tail held out: test_one_file_holds_out_its_tail
        text = corpus.text()
        # whole files held out, the held-out ones alternating val, test (as the char-LM did in memory)
        held = docs[2::3]
        want = {
            "train": [d for k, d in enumerate(docs) if k % 3 != 2],
            "val": held[0::2] if len(held) >= 2 else held,
            "test": held[1::2] if len(held) >= 2 else [],
        }
        for split, parts in want.items():
            assert ["".join(text[a:b]) for a, b, s, _ in corpus.segments.tolist() if s == tk.SPLITS[split]] == parts


def test_one_file_holds_out_its_tail(tmp_path):
    (tmp_path / "a.txt").write_text("abcdefghijklmnopqrstuvwxyz" * 3)
    corpus = prepare_corpus(tmp_path / "a.txt", holdout_every=10, root=tmp_path / "cache")
    text = corpus.text()
    assert [text[a:b] for a, b, *_ in corpus.segments.tolist()] == [text[:-7], text[-7:]]  # 78 // 10 = 7
    assert [s for _, _, s, _ in corpus.segments.tolist()] == [0, 1]
    # tails shorter than 2 characters are 2; Python's slicing of a 1-character file
    assert holdout_segments([1, 5], 10) == [(0, 0, 0, 0), (0, 1, 1, 0), (1, 4, 0, 1), (4, 6, 1, 1)]


def test_training_counts_are_the_training_parts_character_counts(tmp_path):
    rng = random.Random(9)
    folder = tmp_path / "docs"
    folder.mkdir()
    for k in range(6):
        (folder / f"{k}.txt").write_text(random_text(rng, 200, list("abcdé😀\n")), encoding="utf-8")
    corpus = prepare_corpus(folder, holdout_every=2, root=tmp_path / "cache")
    train = np.concatenate(corpus.parts("train"))
    np.testing.assert_array_equal(corpus.counts, np.bincount(train, minlength=len(corpus.vocab)))


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"ok\n" * 5 + b"caf\xe9 au lait", None),
        (b"\xff\xfeh\x00i\x00", "UTF-16 text"),
        (b"abc\x00def", "NUL byte at offset 3"),
        (b"abcdefgh\xe2\x82", None),  # ends inside a character
    ],
)
def test_bytes_that_are_not_utf8_are_refused_as_decode_text_refuses_them(tmp_path, small_blocks, raw, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(raw)
    with pytest.raises(DataError) as expected:
        decode_text(raw, repr(str(path)))
    with pytest.raises(DataError) as got:
        prepare_corpus(path, root=tmp_path / "cache")
    assert str(got.value) == str(expected.value)
    if message:
        assert message in str(got.value)
    assert not any((tmp_path / "cache").iterdir())  # nothing left behind


def test_a_second_prepare_reuses_the_entry_without_encoding(tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_text("hello, world\n" * 50)
    said = []
    first = prepare_corpus(tmp_path / "a.txt", root=tmp_path / "cache", log=said.append)
    assert any("preparing" in line for line in said)

    def no_encoding(*args, **kwargs):
        raise AssertionError("encoded again")

    monkeypatch.setattr(tk, "_build", no_encoding)
    said.clear()
    again = prepare_corpus(tmp_path / "a.txt", root=tmp_path / "cache", log=said.append)
    assert again.folder == first.folder and said == []
    np.testing.assert_array_equal(again.tokens, first.tokens)


def test_a_changed_file_or_setting_makes_a_new_entry(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("hello, world\n" * 50)
    root = tmp_path / "cache"
    base = prepare_corpus(path, root=root)
    assert prepare_corpus(path, root=root, max_chars=100).folder != base.folder
    assert prepare_corpus(path, root=root, holdout_every=5).folder != base.folder
    path.write_text("hello, earth\n" * 50)  # the same size
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    changed = prepare_corpus(path, root=root)
    assert changed.folder != base.folder and changed.text() == "hello, earth\n" * 50


def _entry(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("the quick brown fox\n" * 40)
    return path, prepare_corpus(path, root=tmp_path / "cache").folder


@pytest.mark.parametrize("damage", ["truncated tokens", "meta garbage", "wrong dtype", "bad segments", "old format"])
def test_a_damaged_entry_is_reported_and_rebuilt_never_used(tmp_path, damage):
    path, folder = _entry(tmp_path)
    meta = json.loads((folder / "meta.json").read_text())
    if damage == "truncated tokens":
        with open(folder / "tokens.npy", "r+b") as f:
            f.truncate(os.path.getsize(folder / "tokens.npy") - 10)
    elif damage == "meta garbage":
        (folder / "meta.json").write_text("{not json")
    elif damage == "wrong dtype":
        np.save(folder / "tokens.npy", np.zeros(meta["tokens"], dtype=np.uint16))
    elif damage == "bad segments":
        np.save(folder / "segments.npy", np.array([[0, 5, 0, 0]], dtype=np.int64))
    else:
        (folder / "meta.json").write_text(json.dumps({**meta, "format": 0}))
    with pytest.raises(CorruptCache, match="is damaged"):
        load_corpus(folder)
    said = []
    corpus = prepare_corpus(path, root=tmp_path / "cache", log=said.append)
    assert "damaged" in said[0] and "rebuilding" in said[0]
    assert corpus.folder == folder and corpus.text() == path.read_text()


def test_an_interrupted_prepare_leaves_no_entry_and_the_next_one_builds_it(tmp_path, monkeypatch):
    path = tmp_path / "a.txt"
    path.write_text("abc\n" * 100)
    build = tk._build

    def interrupted(source, max_chars, holdout_every, folder, log):
        (folder / "tokens.npy").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(tk, "_build", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_corpus(path, root=tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []  # no entry, no temporary folder
    monkeypatch.setattr(tk, "_build", build)
    assert prepare_corpus(path, root=tmp_path / "cache").text() == "abc\n" * 100


def test_an_unfinished_entry_and_a_dead_process_s_temporary_folder_are_cleared(tmp_path):
    path, folder = _entry(tmp_path)
    (folder / "meta.json").unlink()  # as if renamed into place unfinished (not by rnnkit)
    dead = folder.parent / f".{folder.name}.tmp-999999999"
    dead.mkdir()
    said = []
    corpus = prepare_corpus(path, root=tmp_path / "cache", log=said.append)
    assert "incomplete" in said[0] and corpus.text() == path.read_text()
    assert not dead.exists()


def test_the_cache_folder_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("RNNKIT_DATA_CACHE", str(tmp_path / "mine"))
    assert tk.cache_root() == tmp_path / "mine"
    monkeypatch.delenv("RNNKIT_DATA_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert tk.cache_root() == tmp_path / "xdg" / "rnnkit" / "corpora"


def test_bad_settings_are_refused_by_name(tmp_path):
    (tmp_path / "a.txt").write_text("abc")
    with pytest.raises(ValueError, match="max_chars must be an int ≥ 1 or None, got 0"):
        prepare_corpus(tmp_path / "a.txt", max_chars=0, root=tmp_path)
    with pytest.raises(ValueError, match="holdout_every must be an int ≥ 2, got 1"):
        prepare_corpus(tmp_path / "a.txt", holdout_every=1, root=tmp_path)
    with pytest.raises(DataError, match="holds no text"):
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "a.txt").write_text("")
        prepare_corpus(tmp_path / "empty", root=tmp_path / "cache")


def test_the_vectorised_encode_matches_the_characters_and_refuses_unknown_ones():
    rng = random.Random(1)
    alphabet = unicode_alphabet(rng, 500)
    vocab = CharVocab(alphabet[::-1])  # any order, as an old checkpoint's may be
    text = random_text(rng, 3000, alphabet)
    assert vocab.encode(text).tolist() == [vocab.index[c] for c in text]
    assert vocab.decode(vocab.encode(text).tolist()) == text
    with pytest.raises(DataError, match="is not in the model's vocabulary"):
        vocab.encode("a" + chr(0x10FFFF) if chr(0x10FFFF) not in alphabet else "\x00")


def _mapped_kb(path) -> int:
    """Resident kB of this process's mappings of ``path`` (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            if "-" in line.split(" ", 1)[0] and len(line.split()) >= 5:  # a mapping's header line
                inside = line.rstrip().endswith(str(path))
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1])
    return total


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="reads Linux's /proc/self/smaps")
def test_reading_a_pass_of_the_token_file_keeps_its_pages_out_of_the_process(tmp_path):
    """A memory-mapped page once read stays resident in the process until unmapped, so a pass
    over a large corpus would count the whole file in the run's memory; the lanes drop the
    pages after every chunk (the page cache still holds them)."""
    from rnnkit.train import LaneStream

    rng = np.random.default_rng(0)
    (tmp_path / "a.txt").write_bytes(rng.integers(97, 123, 8 << 20, dtype=np.uint8).tobytes())  # 8 MB
    corpus = prepare_corpus(tmp_path / "a.txt", root=tmp_path / "cache")
    stream = LaneStream(corpus.parts("train"), 8, 4096, split_documents=True)
    seen = 0
    for chunk in stream:
        seen += int(chunk.lengths.sum())
        assert _mapped_kb(corpus.folder / "tokens.npy") <= 1024
    assert seen == len(corpus.parts("train")[0]) - 1
    # the reference: a plain memory map read as far keeps what it read
    plain = np.load(corpus.folder / "tokens.npy", mmap_mode="r")
    assert int(plain[::4096].astype(np.int64).sum()) > 0
    assert _mapped_kb(corpus.folder / "tokens.npy") > 4096
