"""rnnkit's main job against a plain PyTorch char-rnn, at equal wall time, in one run.

Runs ``rnnkit train charlm`` (its defaults; ``--data`` for another text) with ``--max-time
BUDGET``, measures the whole process's wall time W (start-up, reading the corpus, training,
validation, checkpoints, the final sample — everything a user waits for), then runs
``benchmarks/plain_charrnn.py`` (the fifty-line char-rnn: same sizes, same optimizer, same
training text) for the same W. Both trained models are then scored by the same code
(:func:`rnnkit.tasks.charlm.evaluate_stream`) on the same held-out text: the validation files the
rnnkit run holds out, which the plain script never trains on.

Reported for each: characters/s inside the training loop, characters/s over the whole run
(characters trained ÷ its own wall time), the wall time, updates, and held-out bits per
character::

    python benchmarks/charlm_vs_pytorch.py                          # the default corpus, 180 s
    python benchmarks/charlm_vs_pytorch.py --data /usr/share/vim/vim90/doc --budget 180
    python benchmarks/charlm_vs_pytorch.py --max-updates 300 --seed 1   # equal updates instead

What each side's wall time holds: rnnkit's, everything ``rnnkit train`` does (its periodic
validations, samples and checkpoints, within the 5 % evaluation budget, and the final
validation on the whole held-out set); the plain script's, its training and its own scoring of
the validation text when training ends, as char-rnn scores it at its last iteration — both
runs end with a model and its held-out loss. (Before the plain script scored itself, its
scoring was left out of its time while rnnkit's final validation was in: ~1 % of a two-minute
run in the plain script's favour.)

``--max-updates N`` trains both for N updates instead (no time limit), a comparison of what
each learns per update that does not depend on the machine's load; ``--seed`` seeds both.

Speed is measured here, never asserted in tests: run it on an idle machine (the two runs go one
after the other; ``--repeat`` alternates their order and reports each pair).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from plain_charrnn import CharRNN  # noqa: E402  (the script beside this one)

from rnnkit.tasks import load_run  # noqa: E402
from rnnkit.tasks.charlm import CharLMConfig, CharLMTask, evaluate_stream  # noqa: E402
from rnnkit.train import LaneStream, RunFolder  # noqa: E402


class PlainAsCharLM(nn.Module):
    """The plain model behind rnnkit's ``CharLM`` interface (``forward(tokens, state, lengths)``,
    a state per layer), so the same evaluation code scores both."""

    def __init__(self, net: CharRNN) -> None:
        super().__init__()
        self.net = net

    def forward(self, tokens, state=None, lengths=None):
        e = self.net.embed(tokens)  # (T, B, E)
        s = None if state is None else (torch.stack([h for h, _ in state]), torch.stack([c for _, c in state]))
        if lengths is None:
            y, (h, c) = self.net.lstm(e, s)
        else:  # lanes that end inside this chunk: their final state is taken at their length
            y, (h, c) = self.net.lstm(pack_padded_sequence(e, lengths.cpu(), enforce_sorted=False), s)
            y, _ = pad_packed_sequence(y, total_length=tokens.shape[0])
        return self.net.head(y), tuple((h[k], c[k]) for k in range(h.shape[0]))


def split(data: str | None, folder: Path) -> tuple[CharLMTask, Path, Path]:
    """The rnnkit run's own split of the corpus; its training text and validation text as files."""
    task = CharLMTask(CharLMConfig(data=data))
    task.prepare(lambda line: None)
    decode = task.vocab.decode
    train, val = folder / "train.txt", folder / "val.txt"
    train.write_text("".join(decode(d.tolist()) for d in task.train_stream.documents), encoding="utf-8")
    val.write_text("".join(decode(d.tolist()) for d in task.val_stream.documents), encoding="utf-8")
    return task, train, val


def run_rnnkit(data: str | None, budget: float, out: Path, max_updates: int | None = None, seed: int = 0) -> dict:
    limit = (
        ["--max-time", str(budget)] if max_updates is None else ["--max-steps", str(max_updates), "--max-time", "none"]
    )
    cmd = [
        sys.executable,
        "-m",
        "rnnkit",
        "train",
        "charlm",
        *limit,
        "--seed",
        str(seed),
        "--out",
        str(out),
        "--no-progress",
        "--json",
        *(["--data", data] if data else []),
    ]
    start = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.monotonic() - start
    if done.returncode:
        raise SystemExit(f"rnnkit train failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    evaluation = result.get("evaluation_time", result.get("validation_time", 0.0))
    return {
        "wall": wall,
        "chars": result["items_seen"],
        "updates": result["steps"],
        "loop_seconds": result["training_time"] - evaluation,
        "result": result,
    }


def run_plain(train: Path, val: Path, wall: float, out: Path, max_updates: int | None = None, seed: int = 0) -> dict:
    """The plain script, training until ``wall`` seconds after its start (or for ``max_updates``),
    then scoring its validation text: its wall time counts both, as rnnkit's does."""
    start = time.monotonic()
    limit = (
        ["--until", str(start + wall)]
        if max_updates is None
        else ["--budget", "1e9", "--max-updates", str(max_updates)]
    )
    cmd = [
        sys.executable,
        str(HERE / "plain_charrnn.py"),
        "--train",
        str(train),
        "--val",
        str(val),
        *limit,
        "--seed",
        str(seed),
        "--out",
        str(out),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    took = time.monotonic() - start
    if done.returncode:
        raise SystemExit(f"plain char-rnn failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "wall": took,
        "chars": result["chars"],
        "updates": result["updates"],
        "loop_seconds": result["loop_seconds"],
        "val_seconds": result["val_seconds"],  # its own scoring of the validation text, in its wall time
    }


def heldout_bpc(task: CharLMTask, rnnkit_run: Path, plain_file: Path) -> tuple[float, float]:
    """Both models' bits per character on the rnnkit run's validation text, by the same code."""
    _, model, _ = load_run(RunFolder(rnnkit_run).latest)  # the weights at the end of the run
    ours = evaluate_stream(model, task.val_stream)["bpc"]
    saved = torch.load(plain_file)
    net = CharRNN(len(saved["chars"]))
    net.load_state_dict(saved["model"])
    index = {ch: i for i, ch in enumerate(saved["chars"])}
    remap = torch.tensor([index.get(ch, 0) for ch in task.vocab.chars])  # rnnkit ids -> the plain script's
    stream = task.val_stream
    # documents may be read-only memory-mapped arrays (token files): copied as they are converted
    docs = [remap[torch.tensor(d, dtype=torch.long)] for d in stream.documents]
    plain_stream = LaneStream(docs, stream.batch_size, stream.chunk_length, split_documents=stream.split_documents)
    theirs = evaluate_stream(PlainAsCharLM(net).eval(), plain_stream)["bpc"]
    return ours, theirs


def row(name: str, r: dict, bpc: float) -> str:
    return (
        f"| {name} | {r['chars'] / r['loop_seconds']:,.0f} | {r['chars'] / r['wall']:,.0f} | {r['wall']:.0f} | "
        f"{r['updates']} | {bpc:.3f} |"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="a text file or folder (default: rnnkit's built-in corpus, the stdlib's source)")
    p.add_argument(
        "--budget", type=float, default=180.0, help="rnnkit's --max-time; the plain run gets rnnkit's wall time"
    )
    p.add_argument(
        "--repeat", type=int, default=1, help="pairs of runs; the order alternates (rnnkit first, then plain first)"
    )
    p.add_argument(
        "--max-updates", type=int, help="train both for this many updates instead of a wall time (per-update learning)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of both runs")
    p.add_argument("--out", help="folder for the runs and results.json (default: a temporary folder)")
    args = p.parse_args()
    folder = Path(args.out or tempfile.mkdtemp(prefix="charlm-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    task, train, val = split(args.data, folder)
    print(
        f"corpus: {args.data or 'the stdlib source (default)'}; training text {train.stat().st_size:,} bytes, "
        f"held-out text {val.stat().st_size:,} bytes; "
        + (f"rnnkit --max-time {args.budget:g}" if args.max_updates is None else f"{args.max_updates} updates each")
        + f", seed {args.seed}",
        flush=True,
    )
    lines = [
        "| run | chars/s in the training loop | chars/s over the whole run | wall s | updates | held-out bits/char |",
        "|---|---|---|---|---|---|",
    ]
    results = []
    for k in range(args.repeat):
        out_r, out_p = folder / f"rnnkit-{k}", folder / f"plain-{k}.pt"
        n, seed = args.max_updates, args.seed
        if k % 2 == 0:
            ours = run_rnnkit(args.data, args.budget, out_r, n, seed)
            theirs = run_plain(train, val, ours["wall"], out_p, n, seed)
        else:  # the plain run first gets rnnkit's previous wall time
            theirs = run_plain(train, val, results[-1]["rnnkit"]["wall"], out_p, n, seed)
            ours = run_rnnkit(args.data, args.budget, out_r, n, seed)
        bpc_ours, bpc_theirs = heldout_bpc(task, out_r, out_p)
        lines += [
            row(f"rnnkit train charlm ({k + 1})", ours, bpc_ours),
            row(f"plain PyTorch char-rnn ({k + 1})", theirs, bpc_theirs),
        ]
        ours.pop("result")
        results.append({"rnnkit": {**ours, "bpc": bpc_ours}, "plain": {**theirs, "bpc": bpc_theirs}})
        print("\n".join(lines[-2:]), flush=True)
    (folder / "results.json").write_text(
        json.dumps(
            {
                "data": args.data,
                "budget": args.budget,
                "max_updates": args.max_updates,
                "seed": args.seed,
                "runs": results,
            },
            indent=1,
        )
    )
    print("\n" + "\n".join(lines))
    print(f"\nruns and results.json in {folder}")


if __name__ == "__main__":
    main()
