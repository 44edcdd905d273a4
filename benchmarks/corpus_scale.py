"""How the char-LM's cost grows with its corpus (issue 20): for corpora of 10 MB, 100 MB and 1 GB of
text made on this machine, the first preparation's time (``rnnkit prepare``: encoding into the
token file), the cached start's (the same command again: only the memory map is opened), and the
peak memory (maximum resident set size, ``/usr/bin/time -v``) of a short training run
(``rnnkit train charlm --data FILE --max-steps 5``), and that peak less a run's on 1 MB, per
character of the corpus.

The corpora are the standard library's ``.py`` files, shuffled with a fixed seed and repeated
(each repeat reshuffled) until the size is reached, written as one file under ``--workdir``
(default ``/tmp/rnnkit-corpus-scale``), which is deleted at the end unless ``--keep``. The token
files go to a cache folder inside it (``RNNKIT_DATA_CACHE``), so nothing is left in ``~/.cache``.

Not a test: it takes minutes and a few GB of disk; timings depend on the machine and its load
(run it with ``nice`` on a shared machine and say what the load was). Usage::

    nice .venv/bin/python benchmarks/corpus_scale.py [--sizes 10 100 1000] [--keep]

It prints one Markdown table row per size (the README's table) and, with ``--json``, a JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rnnkit.data.corpus import stdlib_files  # noqa: E402

TRAIN = [
    "--max-steps",
    "5",
    "--max-time",
    "none",
    "--eval-every",
    "5",
    "--hidden-size",
    "256",
    "--num-layers",
    "2",
    "--batch-size",
    "32",
    "--seq-length",
    "100",
    "--sample-length",
    "50",
    "--no-progress",
    "--overwrite",
]


def make_corpus(path: Path, megabytes: int, seed: int = 0) -> int:
    """Write ``megabytes`` MB (10⁶ bytes) of shuffled, repeated stdlib source to ``path``; its size."""
    sources = [p.read_bytes() for p in stdlib_files()]
    rng, want, size = random.Random(seed), megabytes * 10**6, 0
    with path.open("wb") as f:
        while size < want:
            rng.shuffle(sources)
            for raw in sources:
                raw = raw[: want - size]
                f.write(raw)
                size += len(raw)
                if size >= want:
                    break
    # a cut may have split a multi-byte character at the very end: drop the partial one
    text = path.read_bytes()[-4:]
    for cut in range(4):
        try:
            text[: len(text) - cut].decode("utf-8")
            break
        except UnicodeDecodeError:
            continue
    if cut:
        with path.open("r+b") as f:
            f.truncate(size - cut)
    return size - cut


def timed(cmd: list[str], env: dict) -> tuple[float, float, str]:
    """Run ``cmd`` under ``/usr/bin/time -v``: (wall seconds, peak RSS in MB, its stdout)."""
    tick = time.monotonic()
    done = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env)
    seconds = time.monotonic() - tick
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    return seconds, rss_kb / 1024, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000], help="corpus sizes in MB")
    parser.add_argument("--workdir", default="/tmp/rnnkit-corpus-scale", help="where corpora and token files go")
    parser.add_argument("--keep", action="store_true", help="keep the corpora and token files")
    parser.add_argument("--json", action="store_true", help="also print each row as a JSON line")
    parser.add_argument("--base-mb", type=float, help="the peak memory of a run on 1 MB, if measured already")
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "RNNKIT_DATA_CACHE": str(work / "cache"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    rnnkit = [sys.executable, "-m", "rnnkit"]
    print(f"load average before: {os.getloadavg()[0]:.1f} (1 min), {os.cpu_count()} CPUs")
    print(
        "| corpus | characters | first `rnnkit prepare`: command; in it, preparing | cached start: command; in it, "
        "the cache | peak memory, 5 training updates | per character, above a 1 MB run |"
    )
    print("|---|---|---|---|---|---|")
    try:
        base_rss = args.base_mb
        if base_rss is None:  # what a run costs whatever its corpus: torch, the model, the optimizer
            small = work / "corpus-small.txt"
            make_corpus(small, 1)
            _, base_rss, _ = timed(
                [*rnnkit, "train", "charlm", "--data", str(small), "--out", str(work / "run-small"), *TRAIN], env
            )
        print(
            f"(a run on 1 MB peaks at {base_rss:,.0f} MB: the per-character column is the peak above that, "
            "per character of the corpus)"
        )
        for mb in args.sizes:
            corpus = work / f"corpus-{mb}MB.txt"
            made = make_corpus(corpus, mb)
            first, first_rss, out = timed([*rnnkit, "prepare", str(corpus), "--json"], env)
            info = json.loads(out.strip().splitlines()[-1])
            cached, _, out = timed([*rnnkit, "prepare", str(corpus), "--json"], env)
            again = json.loads(out.strip().splitlines()[-1])
            assert not again["built"], "the second prepare encoded again"
            train_s, train_rss, _ = timed(
                [*rnnkit, "train", "charlm", "--data", str(corpus), "--out", str(work / f"run-{mb}"), *TRAIN], env
            )
            row = {
                "megabytes": made / 1e6,
                "characters": info["characters"],
                "vocabulary": info["vocabulary"],
                "dtype": info["dtype"],
                "first_prepare_s": round(first, 1),
                "encoding_s": info["seconds"],
                "prepare_peak_mb": round(first_rss),
                "cached_start_s": round(cached, 2),
                "cached_open_s": again["seconds"],
                "train_peak_mb": round(train_rss),
                "train_s": round(train_s, 1),
                "load": round(os.getloadavg()[0], 1),
            }
            print(
                f"| {made / 1e6:,.0f} MB | {info['characters']:,} ({info['dtype']}) | {first:.1f} s; "
                f"{info['seconds']:.1f} s preparing (peak {first_rss:,.0f} MB) | {cached:.1f} s; "
                f"{again['seconds']:.3f} s opening the file | "
                f"{train_rss:,.0f} MB ({train_s:.0f} s in all) | "
                f"{max(train_rss - base_rss, 0) * 2**20 / info['characters']:.2f} B |",
                flush=True,
            )
            if args.json:
                print(json.dumps(row), flush=True)
            if not args.keep:
                corpus.unlink()
                shutil.rmtree(Path(info["folder"]), ignore_errors=True)
                shutil.rmtree(work / f"run-{mb}", ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"load average after: {os.getloadavg()[0]:.1f} (1 min)")


if __name__ == "__main__":
    main()
