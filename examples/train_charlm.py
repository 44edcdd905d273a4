"""Train a character-level LSTM language model and sample from it (Karpathy's char-rnn).

By default it reads the Python standard library's source (nothing is downloaded), holds out
every 20th file, and prints the held-out bits per character and a sample at every validation;
at the end, samples at three temperatures. Checkpoints, ``metrics.jsonl`` and ``curves.png`` go
to ``runs/charlm`` (or the next free ``runs/charlm-k``) in the current folder.

Run::

    python examples/train_charlm.py                      # 2-layer LSTM, 256 units, 1500 updates
    python examples/train_charlm.py --data novel.txt --hidden-size 512 --steps 5000
    python examples/train_charlm.py --quick              # tiny sizes, seconds (what the tests run)

The command-line equivalent is ``rnnkit train --max-steps 1500 --max-time none``; see
docs/guides/charlm.md for what to expect.
"""

import argparse

import torch

from rnnkit.tasks import CharLMTask, run_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=None, help="a text file or folder (default: the stdlib's source)")
    parser.add_argument("--hidden-size", type=int, default=256, help="LSTM units per layer")
    parser.add_argument("--steps", type=int, default=1500, help="updates")
    parser.add_argument("--quick", action="store_true", help="tiny corpus, model and run (for tests)")
    args = parser.parse_args()

    cfg = CharLMTask.Config(
        data=args.data,
        hidden_size=args.hidden_size,
        max_steps=args.steps,
        max_time=None,
        eval_every=250,
        progress=False,
    )
    if args.quick:
        cfg.hidden_size, cfg.max_chars, cfg.seq_length, cfg.max_steps, cfg.eval_every = 16, 100_000, 40, 10, 5
    task = CharLMTask(cfg)
    summary = run_task(task)  # prepare the data, train with rnnkit.Trainer, write checkpoints
    print(
        f"\n{summary['steps']} updates: {summary['bpc']:.3f} bits/char on held-out text "
        f"(unigram baseline {summary['baseline']:.3f}); run folder {summary['out']}"
    )

    model = task.model.eval()
    for temperature in (0.5, 1.0, 1.5):
        text = task.sample_text(
            model,
            prime="def ",
            length=100 if args.quick else 300,
            temperature=temperature,
            generator=torch.Generator().manual_seed(0),
        )
        print(f"\n--- temperature {temperature}:\n{text}")


if __name__ == "__main__":
    main()
