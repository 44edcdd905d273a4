import re
import sysconfig
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnkit.data.corpus import (
    CharVocab,
    DataError,
    decode_text,
    read_documents,
    read_text,
    split_documents,
    stdlib_corpus,
    stdlib_files,
)


def test_stdlib_corpus_is_the_stdlibs_own_source_sorted_and_capped():
    files = stdlib_files()
    root = sysconfig.get_paths()["stdlib"]
    rel = [f.relative_to(root).as_posix() for f in files]
    assert rel == sorted(rel) and len(rel) > 100
    assert not any("site-packages" in r or "/test/" in f"/{r}" or "/tests/" in f"/{r}" for r in rel)
    text = stdlib_corpus(max_chars=50_000)
    assert len(text) == 50_000 and text == stdlib_corpus(max_chars=50_000)
    assert text.startswith(files[0].read_text(encoding="utf-8")[:100])


def test_stdlib_files_prunes_the_skipped_folders_and_lists_what_a_full_walk_filtered_lists(tmp_path):
    # the reference: every .py below the root, filtered afterwards by the documented rule
    for rel in [
        "a.py",
        "b.txt",
        "pkg/__init__.py",
        "pkg/z.py",
        "pkg/test_x.py",
        "pkg/tests/t.py",
        "test/x.py",
        "site-packages/torch/nn.py",
        "site-packages/deep/er/m.py",
        "idle_test/i.py",
        "Lib/__pycache__/c.py",
        "Lib/Aa.py",
        "test_pkg/ok.py",
    ]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x = 1\n")
    rel = [f.relative_to(tmp_path).as_posix() for f in stdlib_files(tmp_path)]
    assert rel == ["Lib/Aa.py", "a.py", "pkg/__init__.py", "pkg/z.py"]
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
    walked = sorted(
        (
            p
            for p in root.rglob("*.py")
            if not any(s in skip or s.startswith("test_") for s in p.relative_to(root).parts)
        ),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    assert stdlib_files() == walked


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
    with pytest.raises(DataError, match=r"'.*bin.txt' is not UTF-8 text: undecodable byte 0xff at offset 2 \(line 1\)"):
        read_text(tmp_path / "bin.txt")


def test_decoding_policy_strict_utf8_with_the_offending_byte_named(tmp_path):
    # Latin-1 text: the é of the third line is the bad byte; its offset counted by hand.
    lines = [b"first line\n", b"second\n", b"caf\xe9 au lait\n"]
    (tmp_path / "latin1.txt").write_bytes(b"".join(lines))
    offset = len(lines[0]) + len(lines[1]) + 3
    with pytest.raises(DataError, match=rf"undecodable byte 0xe9 at offset {offset} \(line 3\); re-encode it as UTF-8"):
        read_text(tmp_path / "latin1.txt")
    # a UTF-16 file (Windows Notepad's "Unicode") is named as such, not reported as garbage at offset 0
    (tmp_path / "utf16.txt").write_bytes("hello\n".encode("utf-16"))
    with pytest.raises(DataError, match=r"is UTF-16 text \(byte-order mark at offset 0\), expected UTF-8"):
        read_text(tmp_path / "utf16.txt")
    (tmp_path / "utf32.txt").write_bytes("hello\n".encode("utf-32"))
    with pytest.raises(DataError, match="is UTF-32 text"):
        read_text(tmp_path / "utf32.txt")
    # binary data that happens to be valid UTF-8 up to a NUL is still binary
    (tmp_path / "data.txt").write_bytes(b"PK\x03\x04" + b"\x00" * 8)
    with pytest.raises(DataError, match="looks binary, expected UTF-8 text: NUL byte at offset 4"):
        read_text(tmp_path / "data.txt")
    # a UTF-8 byte-order mark at the start is dropped; the same character inside the text is text
    (tmp_path / "bom.txt").write_bytes("\ufeffx = 1\n\ufeff".encode("utf-8"))
    assert read_text(tmp_path / "bom.txt") == "x = 1\n\ufeff"


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.binary(max_size=40))
def test_decode_text_accepts_exactly_utf8_and_names_the_first_bad_byte(raw):
    foreign_bom = raw.startswith((b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff"))
    try:
        want = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        want, bad = None, e.start
    if want is not None and "\x00" not in want and not foreign_bom:
        assert decode_text(raw, "f") == want.removeprefix("\ufeff")
        return
    with pytest.raises(DataError) as info:
        decode_text(raw, "f")
    message = str(info.value)
    if foreign_bom:
        assert re.fullmatch(r"f is UTF-(16|32) text .*", message), message
    elif b"\x00" in raw:
        assert message == f"f looks binary, expected UTF-8 text: NUL byte at offset {raw.index(0)}"
    else:
        assert f"undecodable byte 0x{raw[bad]:02x} at offset {bad} (line {raw[:bad].count(10) + 1})" in message


def test_folder_documents_sorted_nested_empty_files_skipped(tmp_path):
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "__init__.py").write_text("")  # an empty package marker is no reason to fail
    (tmp_path / "pkg" / "b.py").write_text("bee\n")
    (tmp_path / "pkg" / "sub" / "a.md").write_text("# a\n")
    (tmp_path / "pkg" / "image.png").write_bytes(b"\x89PNG\x00")  # not a text suffix: never opened
    (tmp_path / "pkg" / "notes.txt").write_text("\u00e9t\u00e9\n")
    assert read_documents(tmp_path / "pkg") == [
        "bee\n",
        "\u00e9t\u00e9\n",
        "# a\n",
    ]  # pkg/b.py, pkg/notes.txt, pkg/sub/a.md
    assert read_text(tmp_path / "pkg") == "bee\n\u00e9t\u00e9\n# a\n"
    assert read_documents(tmp_path / "pkg", max_chars=6) == ["bee\n", "\u00e9t"]  # characters, not bytes
    assert read_documents(tmp_path / "pkg" / "b.py") == ["bee\n"]
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "a.txt").write_text("")
    with pytest.raises(DataError, match=r"data path '.*blank' holds no text"):
        read_documents(tmp_path / "blank")
    (tmp_path / "pkg" / "z.txt").write_bytes(b"ok\n\x81")
    with pytest.raises(DataError, match=r"'.*z.txt' is not UTF-8 text: undecodable byte 0x81 at offset 3 \(line 2\)"):
        read_documents(tmp_path / "pkg")


def test_split_holds_out_whole_documents_spread_over_the_corpus():
    docs = [f"doc{k}\n" for k in range(40)]
    train, val = split_documents(docs, every=20)
    assert val == "doc19\ndoc39\n"
    assert "doc19" not in train and train.startswith("doc0\n") and len(train) + len(val) == sum(map(len, docs))
