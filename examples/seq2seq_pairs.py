"""An encoder–decoder with attention on your own pairs: a file of source<TAB>target lines →
vocabularies → model → Trainer (best checkpoint by character error rate) → greedy and beam
decoding → CER, chrF and exact match.

Give it a pairs file, or let it write one: random strings of 5 to 8 letters and their reversals
(``reverse.tsv``), a task where attention lets the decoder look at the letter it is copying.
Validation and test pairs are held out of the file by a hash of the source. The section "Your
own pairs" of docs/guides/seq2seq.md takes the same steps on Pig Latin, with the figures of a
full run (greedy exact match 0.991, CER 0.006 on 670 test words after 2000 updates).

Run::

    python examples/seq2seq_pairs.py                      # reversal pairs, 1500 updates
    python examples/seq2seq_pairs.py my_pairs.tsv --steps 3000
    python examples/seq2seq_pairs.py --quick              # a few updates (what the tests run)
"""

import argparse
import random
from pathlib import Path

import torch

from rnnkit import Bidirectional, Encoder, Seq2Seq, TrainConfig, Trainer
from rnnkit.cells import GRUCell
from rnnkit.checkpoint import load_checkpoint
from rnnkit.data import BOS, EOS, char_error_rate, chrf, exact_match, load_pairs
from rnnkit.tasks.seq2seq import take, teacher_forced_nll, translate
from rnnkit.train import StepResult


def write_reversals(path: Path, n: int, seed: int = 0) -> Path:
    """n distinct random strings of 5–8 letters and their reversals, one pair a line."""
    gen = random.Random(seed)
    words = set()
    while len(words) < n:
        words.add("".join(gen.choice("abcdefghijklmnop") for _ in range(gen.randint(5, 8))))
    path.write_text("".join(f"{w}\t{w[::-1]}\n" for w in sorted(words)), encoding="utf-8")
    return path


class Shuffled:
    """The training pairs in batches, in a new order every pass (the Trainer iterates it again)."""

    def __init__(self, split, batch_size: int, seed: int = 0) -> None:
        self.split, self.batch_size = split, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self):
        n = len(self.split.source_texts)
        order = torch.randperm(n, generator=self.generator)
        for i in range(0, n, self.batch_size):
            yield take(self.split, order[i : i + self.batch_size])  # sources (S, B), targets BOS … EOS (U + 1, B)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("pairs", nargs="?", help="a UTF-8 file of source<TAB>target lines (default: write reverse.tsv)")
    parser.add_argument("--steps", type=int, default=1500, help="updates")
    parser.add_argument("--out", default="runs/seq2seq-pairs", help="folder for the checkpoints")
    parser.add_argument("--quick", action="store_true", help="a few updates on a few pairs (for tests)")
    args = parser.parse_args()
    steps = 12 if args.quick else args.steps

    pairs = Path(args.pairs) if args.pairs else write_reversals(Path("reverse.tsv"), 300 if args.quick else 6000)
    data = load_pairs(pairs, val_fraction=0.1, test_fraction=0.1)  # vocabularies from the training pairs, with UNK
    sv, tv = data.source_vocab, data.target_vocab
    print(
        f"{pairs}: {len(data.train.source_texts)} / {len(data.val.source_texts)} / {len(data.test.source_texts)} "
        f"pairs; vocabularies {sv} → {tv}"
    )

    torch.manual_seed(0)
    E, H = 32, 64
    encoder = Encoder(Bidirectional(GRUCell(E, H)), vocab_size=len(sv))  # reads the source both ways: D = 2H
    D = encoder.output_size
    model = Seq2Seq(
        encoder, GRUCell(E + D, H), vocab_size=len(tv), embedding_size=E, bos=BOS, eos=EOS, attention_size=32
    )  # the decoder cell reads [e(y); c(t)]: embedding_size + D
    max_length = int(data.train.target_lengths.max()) + 5

    def step(model, pairs):
        loss, n = teacher_forced_nll(model, pairs)  # the decoder is given targets[1:]: it prepends BOS itself
        return StepResult(loss, items=n)

    def evaluate(model, split=data.val):
        hyps = translate(model, tv, split.sources, split.source_lengths, max_length=max_length)  # greedy
        return {"cer": char_error_rate(hyps, split.target_texts), "exact_match": exact_match(hyps, split.target_texts)}

    cfg = TrainConfig(
        max_steps=steps, eval_every=max(steps // 6, 1), monitor="cer", mode="min", out=args.out, progress=False
    )
    result = Trainer(
        model, torch.optim.Adam(model.parameters(), 3e-3), step, Shuffled(data.train, 64), cfg, evaluate=evaluate
    ).fit()
    print(f"{result.steps} updates in {result.seconds:.0f} s; best validation CER {result.best:.3f}")

    load_checkpoint(Path(args.out) / "best.safetensors", model=model)  # the weights of the best validation
    test = data.test
    print(f"{'':>8} {'exact':>6} {'CER':>6} {'chrF':>6}   ({len(test.source_texts)} test pairs)")
    copied = test.source_texts  # the baseline: the source as its own translation
    rows = [("copy", copied)] + [
        (
            method,
            translate(model, tv, test.sources, test.source_lengths, max_length=max_length, method=method, beam_width=4),
        )
        for method in ("greedy", "beam")
    ]
    for name, hyps in rows:
        print(
            f"{name:>8} {exact_match(hyps, test.target_texts):6.3f} {char_error_rate(hyps, test.target_texts):6.3f} "
            f"{chrf(hyps, test.target_texts):6.1f}"
        )
    print(f"e.g. {test.source_texts[0]!r} → {rows[1][1][0]!r} (truth {test.target_texts[0]!r})")


if __name__ == "__main__":
    main()
