"""Text corpora and the character vocabulary of a character-level language model.

The built-in corpus is the source code of the running Python's standard library: it is on
every machine that runs rnnkit, so nothing is downloaded. Only the stdlib's own ``.py`` files
are read (no site-packages, no test folders), in a fixed sorted order, up to a size cap, so
the same Python gives the same corpus.

A user's corpus (a file, or a folder of ``.txt``/``.py``/``.md`` files) is read as strict UTF-8
(:func:`decode_text`): a leading byte-order mark is dropped, and a file that is binary, UTF-16
or has any other undecodable byte is refused with its name and the byte offset, never decoded
by guesswork. Empty files in a folder are skipped; an empty corpus is an error.
"""

from __future__ import annotations

import json
import os
import sysconfig
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

# Folders left out of the built-in corpus: installed packages and the stdlib's test suites.
_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


class DataError(ValueError):
    """A corpus or data file that cannot be used; the message says which and why."""


def stdlib_files(root: str | Path | None = None) -> list[Path]:
    """The standard library's ``.py`` files, sorted by path relative to the stdlib folder."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    files = []
    # the skipped folders are pruned, not walked and then filtered: a Python's stdlib folder may
    # hold its site-packages (a system or pyenv Python), tens of thousands of entries that took
    # seconds of every run's start-up to list
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not _skipped(d)]
        files += [Path(folder, n) for n in names if n.endswith(".py") and not _skipped(n)]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _skipped(name: str) -> bool:
    """Whether a file or folder of that name is left out of the built-in corpus."""
    return name in _SKIP_DIRS or name.startswith("test_")


def stdlib_documents(max_chars: int = 4_000_000, root: str | Path | None = None) -> list[str]:
    """The built-in corpus: stdlib source files in sorted order, one string each, ``max_chars`` in all."""
    docs, total = [], 0
    for path in stdlib_files(root):
        text = path.read_text(encoding="utf-8", errors="replace")[: max_chars - total]
        docs.append(text)
        total += len(text)
        if total >= max_chars:
            break
    return docs


def stdlib_corpus(max_chars: int = 4_000_000, root: str | Path | None = None) -> str:
    """The built-in corpus as one string: :func:`stdlib_documents` concatenated."""
    return "".join(stdlib_documents(max_chars, root))


def split_documents(docs: list[str], every: int = 20) -> tuple[str, str]:
    """Train and validation text: every ``every``-th document is held out whole.

    Holding out whole files spread over the corpus keeps validation representative (the
    stdlib's files are sorted by name, so a tail split would validate on one package only).
    """
    train = "".join(d for k, d in enumerate(docs) if k % every != every - 1)
    val = "".join(d for k, d in enumerate(docs) if k % every == every - 1)
    return train, val


# Byte-order marks of encodings other than UTF-8, for a message that says what the file is.
_FOREIGN_BOMS = (
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe", "UTF-16"),
    (b"\xfe\xff", "UTF-16"),
)
TEXT_SUFFIXES = (".txt", ".py", ".md")  # the files a data folder contributes


def decode_text(raw: bytes, name: str) -> str:
    """``raw`` decoded by rnnkit's one policy for user corpora: strict UTF-8.

    A leading UTF-8 byte-order mark is dropped (Windows editors write one; it is not text).
    Anything else is refused, never guessed or replaced, because a model trained on replacement
    characters learns the damage: a NUL byte marks the file as binary, a UTF-16/32 byte-order
    mark is named, and other undecodable bytes are reported with their value, byte offset and
    line, so the file can be fixed (e.g. ``iconv -f latin1 -t utf-8``). DataError otherwise.
    """
    for bom, encoding in _FOREIGN_BOMS:
        if raw.startswith(bom):
            raise DataError(
                f"{name} is {encoding} text (byte-order mark at offset 0), expected UTF-8; re-encode it as UTF-8"
            )
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise DataError(f"{name} looks binary, expected UTF-8 text: NUL byte at offset {nul}")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(
            f"{name} is not UTF-8 text: undecodable byte 0x{raw[e.start]:02x} at offset {e.start} (line {line}); "
            f"re-encode it as UTF-8"
        ) from None


def text_files(path: str | Path) -> list[Path]:
    """The files a data path stands for: the file itself, or a folder's ``.txt``/``.py``/``.md``
    files at any depth, sorted by path. DataError for a missing path or a folder without them."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data path {str(path)!r} does not exist")
    if not path.is_dir():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
    if not files:
        raise DataError(f"data folder {str(path)!r} has no .txt, .py or .md files")
    return files


def read_documents(path: str | Path, max_chars: int | None = None) -> list[str]:
    """A file as one document, or a folder's text files (see :func:`text_files`) one each, in
    sorted order, up to ``max_chars`` characters in all, decoded by :func:`decode_text`.

    Empty files of a folder are skipped (a package's empty ``__init__.py`` is no reason to
    fail); DataError if nothing is left, or for the first file that is not UTF-8 text.
    """
    docs, total = [], 0
    for f in text_files(path):
        if max_chars is not None and total >= max_chars:
            break
        text = decode_text(f.read_bytes(), repr(str(f)))
        if max_chars is not None:
            text = text[: max_chars - total]
        if text:
            docs.append(text)
            total += len(text)
    if not docs:
        raise DataError(f"data path {str(path)!r} holds no text")
    return docs


def read_text(path: str | Path, max_chars: int | None = None) -> str:
    """A text file, or every ``.txt``/``.py``/``.md`` file of a folder in sorted order, as one
    string (:func:`read_documents` joined; the decoding policy is :func:`decode_text`'s).

    Raises DataError for a missing path, a folder with no text files, bytes that are not UTF-8
    (with the byte offset), or an empty result.
    """
    return "".join(read_documents(path, max_chars))


class CharVocab:
    """The characters of a corpus, each mapped to an index (sorted, so the map is reproducible)."""

    def __init__(self, chars: list[str]) -> None:
        if len(set(chars)) != len(chars):
            raise DataError("CharVocab: characters must be unique")
        self.chars = list(chars)
        self.index = {ch: i for i, ch in enumerate(self.chars)}
        self._sorted = None  # (sorted code points, their indices), for encode()
        if all(isinstance(ch, str) and len(ch) == 1 for ch in self.chars):
            points = np.array([ord(ch) for ch in self.chars], dtype=np.uint32)
            order = np.argsort(points, kind="stable")
            self._sorted = (points[order], order)

    @classmethod
    def from_text(cls, text: str) -> CharVocab:
        """The vocabulary of ``text``: its distinct characters, sorted."""
        return cls(sorted(set(text)))

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> Tensor:
        """int64 indices (N,); characters not in the vocabulary raise DataError.

        Vectorised: the text's code points (its UTF-32 bytes read as uint32) are looked up in the
        vocabulary's sorted code points, never a Python loop over the characters."""
        if self._sorted is None:  # a vocabulary of longer strings (none of rnnkit's): by the map
            try:
                return torch.tensor([self.index[ch] for ch in text], dtype=torch.long)
            except KeyError as e:
                raise DataError(f"character {e.args[0]!r} is not in the model's vocabulary") from None
        points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)  # (N,)
        code_points, order = self._sorted
        at = np.searchsorted(code_points, points).clip(max=max(len(code_points) - 1, 0))
        missing = code_points[at] != points if len(code_points) else np.ones(len(points), dtype=bool)
        if missing.any():
            raise DataError(f"character {chr(points[np.argmax(missing)])!r} is not in the model's vocabulary")
        return torch.from_numpy(order[at].astype(np.int64))

    def decode(self, indices) -> str:
        """The text of a sequence of indices."""
        return "".join(self.chars[int(i)] for i in indices)

    def to_json(self) -> str:
        """The characters as a JSON list (for checkpoints)."""
        return json.dumps(self.chars, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> CharVocab:
        """The inverse of :meth:`to_json`."""
        return cls(json.loads(text))
