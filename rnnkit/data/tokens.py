"""Corpora as token files: a text encoded once into small integers, memory-mapped for training.

A corpus of C characters held as a Python string, then a list of ints, then an int64 tensor costs
about 18 bytes per character in every training process; a 1 GB text did not fit this machine
twice. So, as torch-rnn (an HDF5 file of small integers) and nanoGPT (a ``uint16`` token file) do,
:func:`prepare_corpus` encodes the text once, vectorised (numpy over the UTF-8 bytes; never a
Python loop over characters), into a folder of the cache::

    <cache>/<name>-<key>/
        tokens.npy     (C,) uint8 when the vocabulary has ≤ 256 characters, else uint16, else uint32
        segments.npy   (S, 4) int64 rows (start, stop, split, document): the documents' parts, in text order
        meta.json      format version, the vocabulary, the source's identity, the settings,
                       the training part's character counts

and :func:`load_corpus` memory-maps it (``np.load(mmap_mode="r")``), so a process holds only the
pages it reads, and the processes of a distributed run share one copy in the page cache. The
tokens are the text's characters in order (all files, held-out parts included), so decoding
them gives the text back exactly; ``split`` is 0 for training, 1 validation, 2 test.

The key is a hash of the source's identity — every file's path, size and modification time —
and of the encoding settings (``max_chars``, ``holdout_every``, the decoding policy, the format
version): a changed file or setting makes a new entry, and a second run on the same corpus only
opens the memory map (about a second whatever its size). The cache folder is
``RNNKIT_DATA_CACHE`` if set, else ``$XDG_CACHE_HOME/rnnkit/corpora`` (``~/.cache/rnnkit/corpora``):
unlike the engine's builds (:mod:`rnnkit.engine.build`), token files depend on no environment,
and they are large, so they live with the user's caches, not inside a virtual environment.

An entry is written into a temporary folder and renamed into place only when complete, so an
interrupted prepare never leaves a half-written entry (its temporary folder is removed by the
next prepare of the same corpus). An entry whose files do not agree with its ``meta.json``
(truncated, the wrong dtype or length, an unknown format) is reported and rebuilt, never used;
the checks are structural (the tokens are not hashed at each start, which would cost a pass over
them).

Symbols: C characters (tokens) of the corpus, S segments, V vocabulary.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .corpus import _FOREIGN_BOMS, CharVocab, DataError, stdlib_files, text_files

FORMAT = 1  # the entry layout; an entry of another format is rebuilt
BLOCK = 1 << 24  # bytes read and encoded at a time: bounds the memory of a prepare
UNICODE = 0x110000  # code points
SPLITS = {"train": 0, "val": 1, "test": 2}
PROGRESS_BYTES = 64 << 20  # inputs above this get a progress bar (where stderr is a terminal)


def cache_root() -> Path:
    """Where token files are cached: ``RNNKIT_DATA_CACHE``, else ``$XDG_CACHE_HOME/rnnkit/corpora``
    (``~/.cache/rnnkit/corpora``)."""
    value = os.environ.get("RNNKIT_DATA_CACHE", "").strip()
    if value:
        return Path(value).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME", "").strip() or Path.home() / ".cache"
    return Path(cache) / "rnnkit" / "corpora"


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned integer type that holds indices 0 … V−1: uint8, uint16 or uint32."""
    if vocab_size < 1:
        raise ValueError(f"token_dtype: vocab_size must be ≥ 1, got {vocab_size}")
    return np.dtype(np.uint8 if vocab_size <= 1 << 8 else np.uint16 if vocab_size <= 1 << 16 else np.uint32)


# -- reading code points, a block at a time ----------------------------------------------------


def _strict_blocks(path: Path) -> Iterator[np.ndarray]:
    """The code points of a user's file, a block at a time, decoded by
    :func:`~rnnkit.data.corpus.decode_text`'s policy (strict UTF-8, a leading UTF-8 BOM dropped,
    NUL bytes and UTF-16/32 refused, an undecodable byte reported with its offset and line).

    A block that is pure ASCII is its own code points (``np.frombuffer`` over the bytes, no
    decoding); any other is decoded and re-encoded as UTF-32 into uint32 code points.
    """
    name = repr(str(path))
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    offset = 0
    with path.open("rb") as f:
        while True:
            raw = f.read(BLOCK)
            if offset == 0:
                for bom, encoding in _FOREIGN_BOMS:
                    if raw.startswith(bom):
                        raise DataError(
                            f"{name} is {encoding} text (byte-order mark at offset 0), expected UTF-8; "
                            "re-encode it as UTF-8"
                        )
                if raw.startswith(codecs.BOM_UTF8):
                    raw, offset = raw[3:], 3
            if not raw:
                break
            nul = raw.find(b"\x00")
            if nul >= 0:
                raise DataError(f"{name} looks binary, expected UTF-8 text: NUL byte at offset {offset + nul}")
            pending = len(decoder.getstate()[0])  # bytes of a character cut by the previous block
            if not pending and raw.isascii():
                yield np.frombuffer(raw, dtype=np.uint8)
            else:
                try:
                    text = decoder.decode(raw)
                except UnicodeDecodeError as e:
                    _undecodable(path, offset - pending + e.start)
                yield np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
            offset += len(raw)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as e:  # the file ends inside a character
        _undecodable(path, offset - len(e.object) + e.start)


def _undecodable(path: Path, at: int) -> None:
    with path.open("rb") as f:
        head = f.read(at + 1)
    line = head.count(b"\n", 0, at) + 1
    raise DataError(
        f"{str(path)!r} is not UTF-8 text: undecodable byte 0x{head[at]:02x} at offset {at} (line {line}); "
        "re-encode it as UTF-8"
    )


def _stdlib_blocks(path: Path) -> Iterator[np.ndarray]:
    """A stdlib file's code points, read as :func:`~rnnkit.data.corpus.stdlib_documents` reads it
    (text mode, undecodable bytes replaced): the built-in corpus stays what it was."""
    text = path.read_text(encoding="utf-8", errors="replace")
    yield np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


# -- the corpus's identity and its cache entry ----------------------------------------------------


@dataclass
class CorpusSource:
    """What a corpus is read from: its files in order and how each is decoded.

    files: the files, in corpus order; policy: ``"strict"`` (a user's corpus,
    :func:`~rnnkit.data.corpus.decode_text`)
    or ``"stdlib"`` (the built-in corpus, undecodable bytes replaced); name: the cache entry's
    folder name; where: the corpus in messages.
    """

    files: list[Path]
    policy: str
    name: str
    where: str = "the stdlib corpus"

    @classmethod
    def of(cls, data: str | os.PathLike | None) -> CorpusSource:
        """A user's file or folder (:func:`~rnnkit.data.corpus.text_files`), or None: the stdlib."""
        if data is None:
            return cls(stdlib_files(), "stdlib", "stdlib")
        return cls(text_files(data), "strict", Path(data).name or "data", f"data path {str(data)!r}")

    def blocks(self, path: Path) -> Iterator[np.ndarray]:
        """The code points of one of the files, a block at a time."""
        return _strict_blocks(path) if self.policy == "strict" else _stdlib_blocks(path)

    def identity(self) -> list:
        """Every file's absolute path, size and modification time (ns): what makes the cache key."""
        out = []
        for p in self.files:
            st = p.stat()
            out.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
        return out


def cache_key(source: CorpusSource, max_chars: int | None, holdout_every: int) -> str:
    """The hash that names a corpus's cache entry: the source's identity and the settings."""
    doc = {
        "format": FORMAT,
        "policy": source.policy,
        "files": source.identity(),
        "max_chars": max_chars,
        "holdout_every": holdout_every,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:20]


# -- the split ------------------------------------------------------------------------------------


def holdout_segments(lengths: list[int], holdout_every: int) -> list[tuple[int, int, int, int]]:
    """The documents (of ``lengths`` characters, in order) cut into (start, stop, split, document)
    segments of the concatenated text, the char-LM's held-out split:

    with n = ``holdout_every`` documents or more, every n-th document is held out whole, the held-out
    ones alternating between validation and test (all validation when only one is held out);
    with fewer, each document's tail (the last max(len // n, 2) characters) is held out for
    validation and there is no test split.
    """
    n, segs, start = holdout_every, [], 0
    if len(lengths) >= n:
        held = [k for k in range(len(lengths)) if k % n == n - 1]
        split = len(held) >= 2
        for k, size in enumerate(lengths):
            part = (
                SPLITS["train"]
                if k % n != n - 1
                else (SPLITS["val"] if not split or held.index(k) % 2 == 0 else SPLITS["test"])
            )
            segs.append((start, start + size, part, k))
            start += size
        return segs
    for k, size in enumerate(lengths):
        cut, _, _ = slice(size - max(size // n, 2), None).indices(size)  # Python's slicing of d[:c], d[c:]
        segs += [(start, start + cut, SPLITS["train"], k), (start + cut, start + size, SPLITS["val"], k)]
        start += size
    return segs


# -- preparing and loading --------------------------------------------------------------------------


@dataclass
class TokenCorpus:
    """A prepared corpus: its tokens memory-mapped, its vocabulary and its held-out split.

    tokens: (C,) uint8/16/32, read-only memory map; segments: (S, 4) int64 (start, stop, split,
    document);
    vocab: the characters, sorted by code point (the order :meth:`CharVocab.from_text` gives);
    files: how many documents (files) the text has; counts: (V,) int64, how often each character
    occurs in the training part; folder: the cache entry.
    """

    tokens: np.ndarray
    segments: np.ndarray
    vocab: CharVocab
    files: int
    counts: np.ndarray
    folder: Path

    def parts(self, split: str) -> list[np.ndarray]:
        """The segments of ``split`` ("train", "val", "test") as views of the token file, in order."""
        if split not in SPLITS:
            raise ValueError(f"TokenCorpus.parts: split must be one of {', '.join(SPLITS)}, got {split!r}")
        code = SPLITS[split]
        return [self.tokens[a:b] for a, b, s, _ in self.segments.tolist() if s == code]

    def document_bounds(self) -> list[tuple[int, int]]:
        """(start, stop) in the tokens of every document (file), held-out parts included."""
        segs = self.segments
        ends = np.flatnonzero(np.diff(segs[:, 3], append=-1))  # the last segment of each document
        begins = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)
        return list(zip(segs[begins, 0].tolist(), segs[ends, 1].tolist()))

    def documents(self) -> list[np.ndarray]:
        """Every document (file) whole, held-out parts included, as views of the token file."""
        return [self.tokens[a:b] for a, b in self.document_bounds()]

    def text(self) -> str:
        """The whole text, decoded (for tests and small corpora: it builds the string)."""
        chars = np.array([ord(c) for c in self.vocab.chars], dtype=np.uint32)
        return chars[self.tokens].tobytes().decode("utf-32-le")


def _progress(total: int, desc: str):
    """A bar over ``total`` bytes where stderr is a terminal and the input is large, else None."""
    if total < PROGRESS_BYTES or not sys.stderr.isatty():
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, leave=False, dynamic_ncols=True)


def _read_capped(source: CorpusSource, max_chars: int | None, bar) -> Iterator[tuple[int, np.ndarray]]:
    """(document number, code points) blocks of the corpus, up to ``max_chars`` characters in all;
    empty documents are skipped, as :func:`~rnnkit.data.corpus.read_documents` skips them."""
    total, doc = 0, 0
    keep_empty = source.policy == "stdlib"  # stdlib_documents keeps empty files (they count in the split)
    for path in source.files:
        if max_chars is not None and total >= max_chars:
            break
        got = 0
        if keep_empty:
            yield doc, np.zeros(0, dtype=np.uint8)
        for block in source.blocks(path):
            if bar is not None:
                bar.update(block.nbytes if block.dtype == np.uint8 else block.size)  # ≈ bytes read
            if max_chars is not None:
                block = block[: max_chars - total]
            if block.size:
                got += block.size
                total += block.size
                yield doc, block
            if max_chars is not None and total >= max_chars:
                break
        doc += 1 if got or keep_empty else 0


def _build(source: CorpusSource, max_chars: int | None, holdout_every: int, folder: Path, log) -> None:
    """Encode the corpus into ``folder`` (which exists and is empty): two passes over the files,
    the first for the vocabulary and the documents' lengths, the second to write the tokens."""
    size = sum(p.stat().st_size for p in source.files)
    tick = time.monotonic()
    seen = np.zeros(UNICODE, dtype=bool)
    lengths: list[int] = []
    bar = _progress(size, "reading")
    try:
        for doc, block in _read_capped(source, max_chars, bar):
            if doc == len(lengths):
                lengths.append(0)
            lengths[doc] += block.size
            if block.size:
                seen[np.flatnonzero(np.bincount(block, minlength=256 if block.dtype == np.uint8 else 0))] = True
    finally:
        if bar is not None:
            bar.close()
    if not lengths:
        raise DataError(f"{source.where} holds no text")
    code_points = np.flatnonzero(seen)  # sorted: the order CharVocab.from_text gives
    dtype = token_dtype(len(code_points))
    lut = np.zeros(UNICODE, dtype=dtype)
    lut[code_points] = np.arange(len(code_points), dtype=dtype)
    C = sum(lengths)
    segments = np.array(holdout_segments(lengths, holdout_every), dtype=np.int64).reshape(-1, 4)  # (S, 4)
    trained: dict[int, list[tuple[int, int]]] = {}  # per document, the training parts a model reads (≥ 2 characters)
    for a, b, s, doc in segments.tolist():
        if s == SPLITS["train"] and b - a >= 2:
            trained.setdefault(doc, []).append((a, b))
    counts = np.zeros(len(code_points), dtype=np.int64)
    # written with plain writes, not through a memory map: the pages of a map being written stay
    # resident (and count in the process's memory) until it is closed
    at, bar = 0, _progress(size, "encoding")
    try:
        with (folder / "tokens.npy").open("wb") as f:
            np.lib.format.write_array_header_2_0(
                f, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (C,)}
            )
            for doc, block in _read_capped(source, max_chars, bar):
                if not block.size:
                    continue
                tokens = lut[block]
                f.write(memoryview(tokens))
                for a, b in trained.get(doc, ()):
                    lo, hi = max(a, at), min(b, at + block.size)
                    if lo < hi:
                        counts += np.bincount(tokens[lo - at : hi - at], minlength=len(code_points))
                at += block.size
            f.flush()
            os.fsync(f.fileno())
    finally:
        if bar is not None:
            bar.close()
    if at != C:
        raise DataError(
            f"{source.where}: the corpus changed while it was being prepared ({C:,} then {at:,} characters)"
        )
    np.save(folder / "segments.npy", segments)
    meta = {
        "format": FORMAT,
        "source": source.name,
        "policy": source.policy,
        "identity": source.identity(),
        "max_chars": max_chars,
        "holdout_every": holdout_every,
        "dtype": dtype.name,
        "tokens": C,
        "files": len(lengths),
        "vocab": [chr(c) for c in code_points.tolist()],
        "counts": counts.tolist(),
        "seconds": round(time.monotonic() - tick, 3),
    }
    with (folder / "meta.json").open("w", encoding="utf-8") as f:  # last: an entry without it is unfinished
        json.dump(meta, f, ensure_ascii=False)
        f.flush()
        os.fsync(f.fileno())


class CorruptCache(DataError):
    """A cache entry whose files do not agree with its ``meta.json``."""


def load_corpus(folder: str | os.PathLike) -> TokenCorpus:
    """Open a prepared entry: the tokens memory-mapped, the rest read. CorruptCache (a DataError)
    naming the entry and what is wrong if its files do not agree with its ``meta.json``."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, this rnnkit writes {FORMAT}")
        vocab = CharVocab(meta["vocab"])
        tokens = np.load(folder / "tokens.npy", mmap_mode="r")
        if tokens.dtype != np.dtype(meta["dtype"]) or tokens.shape != (meta["tokens"],):
            raise ValueError(
                f"tokens.npy holds {tokens.shape} {tokens.dtype}, meta.json says ({meta['tokens']},) {meta['dtype']}"
            )
        if token_dtype(len(vocab)) != tokens.dtype:
            raise ValueError(f"a vocabulary of {len(vocab)} is not stored as {tokens.dtype}")
        segments = np.load(folder / "segments.npy")
        if segments.ndim != 2 or segments.shape[1] != 4 or not len(segments):
            raise ValueError(f"segments.npy has shape {segments.shape}, expected (S, 4) with S ≥ 1")
        starts, stops = segments[:, 0], segments[:, 1]
        if starts[0] != 0 or stops[-1] != len(tokens) or (starts[1:] != stops[:-1]).any() or (stops < starts).any():
            raise ValueError("segments.npy does not cover the tokens in order")
        counts = np.asarray(meta["counts"], dtype=np.int64)
        if counts.shape != (len(vocab),):
            raise ValueError(f"counts of {counts.shape} for a vocabulary of {len(vocab)}")
    except (OSError, ValueError, KeyError, TypeError, EOFError) as e:
        raise CorruptCache(f"token cache {str(folder)!r} is damaged: {e}") from None
    return TokenCorpus(tokens, segments, vocab, int(meta["files"]), counts, folder)


def _stale_temporaries(root: Path, name: str) -> None:
    """Remove the temporary folders of this entry left by prepares that died (their process is gone)."""
    for tmp in root.glob(f".{name}.tmp-*"):
        try:
            os.kill(int(tmp.name.rsplit("-", 1)[1]), 0)
        except (ValueError, ProcessLookupError):
            shutil.rmtree(tmp, ignore_errors=True)
        except PermissionError:
            pass  # another user's live process


def prepare_corpus(
    data: str | os.PathLike | None,
    *,
    max_chars: int | None = None,
    holdout_every: int = 20,
    root: str | os.PathLike | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> TokenCorpus:
    """The token file of a corpus, from the cache when it is there, else encoded into it first.

    Args:
        data: a text file or a folder of ``.txt``/``.py``/``.md`` files (read as strict UTF-8,
            :func:`~rnnkit.data.corpus.decode_text`); None: the Python standard library's source.
        max_chars: keep only the first ``max_chars`` characters; None: the whole corpus.
        holdout_every: the held-out split (:func:`holdout_segments`).
        root: the cache folder; None: :func:`cache_root`.
        log: called with a line when an entry is built or rebuilt.

    Raises DataError for a corpus that cannot be read (see :func:`~rnnkit.data.corpus.decode_text`).
    """
    if max_chars is not None and (isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1):
        raise ValueError(f"prepare_corpus: max_chars must be an int ≥ 1 or None, got {max_chars!r}")
    if isinstance(holdout_every, bool) or not isinstance(holdout_every, int) or holdout_every < 2:
        raise ValueError(f"prepare_corpus: holdout_every must be an int ≥ 2, got {holdout_every!r}")
    source = CorpusSource.of(data)
    root = Path(root) if root is not None else cache_root()
    readable = "".join(c if c.isalnum() or c in "._-" else "_" for c in source.name)[:40]
    name = f"{readable}-{cache_key(source, max_chars, holdout_every)}"
    entry = root / name
    if (entry / "meta.json").is_file():
        try:
            return load_corpus(entry)
        except CorruptCache as e:
            log(f"{e}; rebuilding it")
            shutil.rmtree(entry, ignore_errors=True)
    elif entry.exists():  # not ours or unfinished (an entry is renamed into place with its meta.json)
        log(f"token cache {str(entry)!r} is incomplete; rebuilding it")
        shutil.rmtree(entry, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    _stale_temporaries(root, name)
    tmp = root / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    size = sum(p.stat().st_size for p in source.files)
    cap = "" if max_chars is None else f", the first {max_chars:,} characters"
    log(
        f"preparing the corpus {source.name} ({size / 1e6:,.1f} MB in {len(source.files):,} files{cap}) into {entry} "
        "..."
    )
    tick = time.monotonic()
    try:
        _build(source, max_chars, holdout_every, tmp, log)
        try:
            os.rename(tmp, entry)
        except OSError:  # another process finished the same entry first: use its
            if not (entry / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    corpus = load_corpus(entry)
    log(
        f"prepared {len(corpus.tokens):,} characters ({corpus.tokens.dtype}, vocabulary {len(corpus.vocab)}) "
        f"in {time.monotonic() - tick:.1f} s"
    )
    return corpus
