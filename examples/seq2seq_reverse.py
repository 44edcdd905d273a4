"""An encoder–decoder that learns to reverse strings, trained with the model-agnostic Trainer
and decoded greedily and by beam search.

Sources are 5 to 8 random symbols; the target is the source reversed, then EOS. The encoder and
the decoder are GRUs; ``--attention`` adds Bahdanau attention, which lets the decoder look at
the source position it is copying (without it, the whole source must fit in one vector).
Accuracy is the share of held-out strings reversed exactly. Measured once on one CPU thread:
without attention 0.780 greedy and 0.804 beam after 1500 updates (16 s); with attention 1.000
both ways (30 s).

Run::

    python examples/seq2seq_reverse.py                  # 1500 updates
    python examples/seq2seq_reverse.py --attention
    python examples/seq2seq_reverse.py --quick          # a few updates (what the tests run)

See docs/guides/seq2seq.md for teacher forcing against scheduled sampling on a harder task.
"""

import argparse

import torch

from rnnkit import Encoder, Seq2Seq, TrainConfig, Trainer, generate, sequence_nll
from rnnkit.cells import GRUCell
from rnnkit.train import StepResult

PAD, BOS, EOS = 0, 1, 2
SYMBOLS = 10  # tokens 3 … 12
V = 3 + SYMBOLS


def batch(n: int, generator: torch.Generator):
    """n strings of 5–8 symbols: sources (S, n) padded with PAD, their lengths (n,), targets (S + 1, n)."""
    lengths = torch.randint(5, 9, (n,), generator=generator)
    S = int(lengths.max())
    src = torch.randint(3, V, (S, n), generator=generator)
    src[torch.arange(S).unsqueeze(1) >= lengths] = PAD  # (S, n)
    tgt = torch.full((S + 1, n), PAD)
    for b, k in enumerate(lengths.tolist()):
        tgt[:k, b] = src[:k, b].flip(0)
        tgt[k, b] = EOS
    return src, lengths, tgt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1500, help="updates")
    parser.add_argument("--attention", action="store_true", help="Bahdanau attention over the source")
    parser.add_argument("--quick", action="store_true", help="a few updates (for tests)")
    args = parser.parse_args()
    steps = 10 if args.quick else args.steps

    torch.manual_seed(0)
    E, H = 16, 64
    attention = 32 if args.attention else None
    model = Seq2Seq(Encoder(GRUCell(E, H), vocab_size=V), GRUCell(E + (H if attention else 0), H), vocab_size=V,
                    embedding_size=E, bos=BOS, eos=EOS, attention_size=attention)

    def step(model, b):  # teacher forcing: the decoder reads [BOS, target[:-1]] in one batched pass
        src, src_len, tgt = b
        tgt_len = src_len + 1  # the symbols and EOS
        logits = model(src, tgt, src_len, tgt_len).logits  # (S + 1, B, V)
        return StepResult(sequence_nll(logits, tgt, tgt_len, reduction="mean"), items=int(tgt_len.sum()))

    g = torch.Generator().manual_seed(0)
    data = [batch(64, g) for _ in range(200)]  # 200 batches, reused pass after pass
    result = Trainer(model, torch.optim.Adam(model.parameters(), 3e-3), step, data,
                     TrainConfig(max_steps=steps, progress=False)).fit()
    print(f"{result.steps} updates in {result.seconds:.0f} s; training loss {result.train_loss:.3f} nats/symbol")

    src, src_len, tgt = batch(500, torch.Generator().manual_seed(1))  # held-out strings
    model.eval()
    with torch.no_grad():
        for method in ("greedy", "beam"):
            out = generate(model, method=method, beam_width=4, max_length=10, context=model.encode(src, src_len))
            right = [out.tokens[b, : out.lengths[b]].tolist() == tgt[: k + 1, b].tolist()
                     for b, k in enumerate(src_len.tolist())]
            print(f"{method:>6}: {sum(right) / len(right):.3f} of 500 held-out strings reversed exactly")
    print("e.g.", src[: src_len[0], 0].tolist(), "->", out.tokens[0, : out.lengths[0]].tolist())


if __name__ == "__main__":
    main()
