import sysconfig

import pytest
import torch

from rnnkit.data.corpus import CharVocab, DataError, read_text, split_documents, stdlib_corpus, stdlib_files


def test_stdlib_corpus_is_the_stdlibs_own_source_sorted_and_capped():
    files = stdlib_files()
    root = sysconfig.get_paths()["stdlib"]
    rel = [f.relative_to(root).as_posix() for f in files]
    assert rel == sorted(rel) and len(rel) > 100
    assert not any("site-packages" in r or "/test/" in f"/{r}" or "/tests/" in f"/{r}" for r in rel)
    text = stdlib_corpus(max_chars=50_000)
    assert len(text) == 50_000 and text == stdlib_corpus(max_chars=50_000)
    assert text.startswith(files[0].read_text(encoding="utf-8")[:100])


def test_vocab_round_trip():
    vocab = CharVocab.from_text("hello world")
    ids = vocab.encode("low")
    assert ids.dtype == torch.long and vocab.decode(ids) == "low"
    assert CharVocab.from_json(vocab.to_json()).chars == vocab.chars
    with pytest.raises(DataError, match="character 'z' is not in the model's vocabulary"):
        vocab.encode("z")


def test_read_text_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_text(tmp_path / "missing.txt")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "image.png").write_bytes(b"\x89PNG")
    with pytest.raises(DataError, match="has no .txt, .py or .md files"):
        read_text(tmp_path / "empty")
    (tmp_path / "blank.txt").write_text("")
    with pytest.raises(DataError, match="holds no text"):
        read_text(tmp_path / "blank.txt")
    (tmp_path / "bin.txt").write_bytes(b"ab\xff\xfe")
    with pytest.raises(DataError, match="undecodable byte at offset 2"):
        read_text(tmp_path / "bin.txt")


def test_split_holds_out_whole_documents_spread_over_the_corpus():
    docs = [f"doc{k}\n" for k in range(40)]
    train, val = split_documents(docs, every=20)
    assert val == "doc19\ndoc39\n"
    assert "doc19" not in train and train.startswith("doc0\n") and len(train) + len(val) == sum(map(len, docs))
