"""A plain PyTorch char-rnn: the fifty-line script that rnnkit's main job is compared with.

``nn.Embedding`` → ``nn.LSTM(E, H, L)`` → ``nn.Linear``; the text cut into B lanes of equal
length (char-rnn's batching), truncated BPTT over chunks of T steps with the state carried
(detached), Adam, gradient norm clipped at 5 — the same sizes and settings as rnnkit's default
char-LM. Written the way such scripts are (a list comprehension encodes the text); nothing in it
comes from rnnkit. ``benchmarks/charlm_vs_pytorch.py`` runs it beside ``rnnkit train``.

Usage::

    python benchmarks/plain_charrnn.py --train train.txt --val val.txt --budget 180 --out model.pt

``--until`` (a ``time.monotonic()`` reading, shared by every process on the machine) ends the
training at a given moment instead; the harness uses it so both runs take the same wall time.
When training ends the model is scored on the validation text (B lanes, the state carried), as
char-rnn does at its last iteration: a run's result is a model and its held-out loss, and
``rnnkit train`` computes that inside its time too. Prints one JSON line: characters trained,
updates, seconds inside the training loop, the last loss, the validation bits per character and
the seconds the validation took.
"""

import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class CharRNN(nn.Module):
    def __init__(self, vocab_size, embedding_size=64, hidden_size=256, num_layers=2):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embedding_size)
        self.lstm = nn.LSTM(embedding_size, hidden_size, num_layers)
        self.head = nn.Linear(hidden_size, vocab_size)

    def forward(self, x, state=None):  # x (T, B) -> logits (T, B, V)
        y, state = self.lstm(self.embed(x), state)
        return self.head(y), state


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", required=True)
    p.add_argument("--val", required=True, help="held-out text: only its characters join the vocabulary")
    p.add_argument("--budget", type=float, default=180.0, help="seconds from the start of the script")
    p.add_argument("--until", type=float, help="a time.monotonic() reading to stop at (overrides --budget)")
    p.add_argument("--max-updates", type=int, help="stop after this many updates too")
    p.add_argument("--out", required=True)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-length", type=int, default=100)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    until = args.until if args.until is not None else time.monotonic() + args.budget
    torch.manual_seed(args.seed)

    text = open(args.train, encoding="utf-8").read()
    chars = sorted(set(text) | set(open(args.val, encoding="utf-8").read()))
    index = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([index[c] for c in text], dtype=torch.long)
    B, T = args.batch_size, args.seq_length
    n = (len(data) - 1) // B  # steps per lane
    x = data[: B * n].view(B, n).t()  # (N, B): lane b reads the b-th slice of the text
    y = data[1 : B * n + 1].view(B, n).t()

    model = CharRNN(len(chars))
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    state, chars_seen, updates, loss = None, 0, 0, math.nan
    started = time.monotonic()
    limit = args.max_updates or float("inf")
    while time.monotonic() < until and updates < limit:
        for t in range(0, n, T):
            if time.monotonic() >= until or updates >= limit:
                break
            if state is not None:
                state = tuple(s.detach() for s in state)
            logits, state = model(x[t : t + T], state)
            loss = F.cross_entropy(logits.reshape(-1, len(chars)), y[t : t + T].reshape(-1))
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            chars_seen += y[t : t + T].numel()
            updates += 1
        state = None  # a new pass starts from zeros
    loop_seconds = time.monotonic() - started
    val = torch.tensor([index[c] for c in open(args.val, encoding="utf-8").read()], dtype=torch.long)
    m = (len(val) - 1) // B
    vx, vy = val[: B * m].view(B, m).t(), val[1 : B * m + 1].view(B, m).t()
    model.eval()
    total, state = 0.0, None
    with torch.no_grad():
        for t in range(0, m, T):
            logits, state = model(vx[t : t + T], state)
            total += float(F.cross_entropy(logits.reshape(-1, len(chars)), vy[t : t + T].reshape(-1), reduction="sum"))
    val_bpc = total / vy.numel() / math.log(2) if vy.numel() else math.nan
    torch.save({"model": model.state_dict(), "chars": chars}, args.out)
    result = {"chars": chars_seen, "updates": updates, "loop_seconds": loop_seconds, "loss": float(loss)}
    print(json.dumps({**result, "val_bpc": val_bpc, "val_seconds": time.monotonic() - started - loop_seconds}))


if __name__ == "__main__":
    main()
