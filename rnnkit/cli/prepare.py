"""``rnnkit prepare [DATA]``: encode a corpus once into a cached token file for the char-LM.

``rnnkit train --data DATA`` does the same on its first run; preparing ahead of time makes that
first run start at once and says where the file is. The settings that change the file (its
``--max-chars`` cap and the held-out split's ``--holdout-every``) must match the training run's
for it to find the entry (the defaults are ``rnnkit train``'s). Without DATA: the built-in corpus
(the standard library's source, its first 4,000,000 characters unless ``--max-chars`` says).
The cache folder is ``RNNKIT_DATA_CACHE`` if set, else ``~/.cache/rnnkit/corpora``
(the module rnnkit.data.tokens says how the file is laid out).
"""

from __future__ import annotations

import argparse
import json
import time

from ..data.tokens import cache_root, prepare_corpus
from ..tasks.charlm import STDLIB_CHARS, CharLMConfig


def add_parser(subs) -> None:
    """Register ``rnnkit prepare`` and its options."""
    defaults = CharLMConfig()
    p = subs.add_parser(
        "prepare",
        help="encode a corpus into a cached token file (rnnkit train does it on first use)",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "data",
        nargs="?",
        default=None,
        help="a text file or a folder of .txt/.py/.md files (default: the standard library's source)",
    )
    p.add_argument(
        "--max-chars",
        type=int,
        default=None,
        help=f"keep only the first N characters (default: all of DATA; of the stdlib, {STDLIB_CHARS:,})",
    )
    p.add_argument(
        "--holdout-every",
        type=int,
        default=defaults.holdout_every,
        help="hold out every n-th file for validation and test (else a 1/n tail of each file)",
    )
    p.add_argument("--json", action="store_true", help="print what was prepared as one JSON object on the last line")


def run(args) -> int:
    """Run ``rnnkit prepare`` with parsed ``args``; returns the exit code."""
    from . import UsageError

    if args.max_chars is not None and args.max_chars < 1:
        raise UsageError(f"rnnkit prepare: --max-chars must be ≥ 1, got {args.max_chars}")
    if args.holdout_every < 2:
        raise UsageError(f"rnnkit prepare: --holdout-every must be ≥ 2, got {args.holdout_every}")
    max_chars = args.max_chars if args.max_chars is not None or args.data else STDLIB_CHARS
    tick = time.monotonic()
    built: list[str] = []

    def log(line: str) -> None:
        built.append(line)
        print(line, flush=True)

    corpus = prepare_corpus(args.data, max_chars=max_chars, holdout_every=args.holdout_every, log=log)
    seconds = time.monotonic() - tick
    parts = {name: sum(len(p) for p in corpus.parts(name)) for name in ("train", "val", "test")}
    print(
        f"{'prepared' if built else 'cached'}: {len(corpus.tokens):,} characters in {corpus.files:,} files, "
        f"vocabulary {len(corpus.vocab)} ({corpus.tokens.dtype}); train {parts['train']:,}, validation "
        f"{parts['val']:,}, test {parts['test']:,} characters; {corpus.folder} ({seconds:.1f} s)"
    )
    if args.json:
        print(
            json.dumps(
                {
                    "folder": str(corpus.folder),
                    "cache": str(cache_root()),
                    "characters": len(corpus.tokens),
                    "files": corpus.files,
                    "vocabulary": len(corpus.vocab),
                    "dtype": corpus.tokens.dtype.name,
                    "built": bool(built),
                    "seconds": round(seconds, 3),
                    **parts,
                }
            )
        )
    return 0
