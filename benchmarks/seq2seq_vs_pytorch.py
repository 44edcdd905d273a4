"""rnnkit's ``Seq2Seq`` against the same attention encoder–decoder written in plain PyTorch.

The model is the one ``rnnkit train seq2seq`` builds (its defaults: an LSTM encoder, an LSTM
decoder with Bahdanau attention, the summary as the decoder's initial state); the plain model below is
written from the equations with ``nn.LSTM``, ``nn.LSTMCell`` and a Python loop over target steps,
and takes a copy of rnnkit's weights (the bench checks their logits agree). On the same batches
of the built-in numbers→words data, one thread, it times:

* a teacher-forced training update (forward, masked NLL, backward, Adam step);
* greedy decoding of a batch of held-out sources, and beam search (width 4), up to EOS.

The two run in alternating blocks in one process, so drift on a noisy machine hits both alike;
the table gives the median time of each::

    python benchmarks/seq2seq_vs_pytorch.py [--updates 200] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from rnnkit.generate import generate
from rnnkit.models import sequence_nll
from rnnkit.tasks.seq2seq import Seq2SeqConfig, Seq2SeqTask, take, teacher_forced_nll


class PlainSeq2Seq(nn.Module):
    """Embedding → nn.LSTM encoder, C its last h; decoder (h(0), c(0)) = tanh(W_c C + b_c); each
    step additive attention a = Σ α_j m_j with α = softmax(v_a·tanh(W_a h + U_a m_j + b_a)),
    (h, c) = LSTMCell([e(y); a], (h, c)), logits = V [h; a] + b."""

    def __init__(self, src_vocab, tgt_vocab, E, H, A, bos, eos):
        super().__init__()
        self.src_embed, self.encoder = nn.Embedding(src_vocab, E), nn.LSTM(E, H)
        self.tgt_embed, self.bridge = nn.Embedding(tgt_vocab, E), nn.Linear(H, 2 * H)
        self.cell = nn.LSTMCell(E + H, H)
        self.query, self.key, self.score = nn.Linear(H, A, bias=False), nn.Linear(H, A), nn.Linear(A, 1, bias=False)
        self.out = nn.Linear(2 * H, tgt_vocab)
        self.bos, self.eos = bos, eos

    def encode(self, src, lengths):  # src (S, B)
        packed = pack_padded_sequence(self.src_embed(src), lengths.cpu(), enforce_sorted=False)
        memory, (h, _) = self.encoder(packed)
        memory, _ = pad_packed_sequence(memory, total_length=src.shape[0])  # (S, B, H)
        mask = torch.arange(src.shape[0]).unsqueeze(1) < lengths  # (S, B)
        memory = memory.transpose(0, 1)  # (B, S, H)
        return memory, self.key(memory), mask.t(), torch.tanh(self.bridge(h[-1])).chunk(2, -1)  # (h(0), c(0))

    def step(self, y_prev, s, memory, keys, mask):
        e = self.score(torch.tanh(self.query(s[0]).unsqueeze(1) + keys)).squeeze(-1).masked_fill(~mask, float("-inf"))
        a = torch.bmm(torch.softmax(e, -1).unsqueeze(1), memory).squeeze(1)  # (B, H)
        s = self.cell(torch.cat([self.tgt_embed(y_prev), a], -1), s)
        return self.out(torch.cat([s[0], a], -1)), s

    def forward(self, src, src_lengths, y):  # y (T, B) targets; the decoder reads BOS, y(1..T-1)
        memory, keys, mask, s = self.encode(src, src_lengths)
        prev = torch.cat([torch.full_like(y[:1], self.bos), y[:-1]])
        logits = []
        for t in range(y.shape[0]):
            o, s = self.step(prev[t], s, memory, keys, mask)
            logits.append(o)
        return torch.stack(logits)  # (T, B, V)

    @torch.no_grad()
    def greedy(self, src, src_lengths, max_length):
        memory, keys, mask, s = self.encode(src, src_lengths)
        y = torch.full((src.shape[1],), self.bos)
        done = torch.zeros(src.shape[1], dtype=torch.bool)
        out = []
        for _ in range(max_length):
            o, s = self.step(y, s, memory, keys, mask)
            y = o.argmax(-1)
            out.append(y)
            done |= y == self.eos
            if bool(done.all()):
                break
        return torch.stack(out, 1)

    @torch.no_grad()
    def beam(self, src, src_lengths, max_length, width=4):
        """Batched beam search: W hypotheses per source, ranked by log-probability, each ending at EOS."""
        B, W = src.shape[1], width
        memory, keys, mask, (h, c) = self.encode(src, src_lengths)
        memory, keys, mask, h, c = (t.repeat_interleave(W, 0) for t in (memory, keys, mask, h, c))
        s = (h, c)
        score = torch.full((B, W), float("-inf"))
        score[:, 0] = 0.0
        y = torch.full((B * W,), self.bos)
        ended = torch.zeros(B * W, dtype=torch.bool)
        tokens = torch.zeros(B * W, 0, dtype=torch.long)
        for _ in range(max_length):
            o, s = self.step(y, s, memory, keys, mask)
            logp = torch.log_softmax(o, -1)  # (B W, V)
            V = logp.shape[-1]
            stay = torch.full_like(logp, float("-inf"))
            stay[:, self.eos] = 0.0  # an ended hypothesis only repeats EOS at no cost
            logp = torch.where(ended.unsqueeze(1), stay, logp)
            total = (score.view(-1, 1) + logp).view(B, W * V)
            score, pick = total.topk(W, dim=1)  # (B, W)
            rows = (pick // V + torch.arange(B).unsqueeze(1) * W).view(-1)
            y = (pick % V).view(-1)
            s, ended = (s[0][rows], s[1][rows]), ended[rows] | (y == self.eos)
            tokens = torch.cat([tokens[rows], y.unsqueeze(1)], 1)
            if bool(ended.all()):
                break
        return tokens.view(B, W, -1)[:, 0]

    def copy_from(self, model):
        """rnnkit's weights into this model (parameter for parameter)."""
        p = dict(model.named_parameters())
        pairs = {
            "src_embed.weight": "encoder.inputs.embedding.weight",
            **{
                f"encoder.{w}_l0": f"encoder.layer.layers.0.cell.{w}"
                for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
            },
            "tgt_embed.weight": "decoder.feedback.embedding.weight",
            "bridge.weight": "decoder.bridge.proj.weight",
            "bridge.bias": "decoder.bridge.proj.bias",
            "cell.weight_ih": "decoder.layer.cell.cell.weight_ih",
            "cell.weight_hh": "decoder.layer.cell.cell.weight_hh",
            "cell.bias_ih": "decoder.layer.cell.cell.bias_ih",
            "cell.bias_hh": "decoder.layer.cell.cell.bias_hh",
            "query.weight": "decoder.layer.cell.query.weight",
            "key.weight": "decoder.layer.cell.key.weight",
            "key.bias": "decoder.layer.cell.key.bias",
            "score.weight": "decoder.layer.cell.score.weight",
            "out.weight": "decoder.readout.out.proj.weight",
            "out.bias": "decoder.readout.out.proj.bias",
        }
        with torch.no_grad():
            for mine, theirs in pairs.items():
                self.get_parameter(mine).copy_(p[theirs])
        return self


def plain_nll(model, pairs):
    y, lengths = pairs.targets[1:], pairs.target_lengths - 1  # (U, B), as rnnkit's teacher_forced_nll reads them
    logits = model(pairs.sources, pairs.source_lengths, y)
    return sequence_nll(logits, y, lengths, "mean")


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--updates", type=int, default=200, help="training updates timed for each (in blocks of 10)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--decode-batch", type=int, default=256, help="held-out sources per decoded batch")
    p.add_argument("--decode-batches", type=int, default=6)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    task = Seq2SeqTask(Seq2SeqConfig(bidirectional=False, num_layers=1))
    task.prepare(lambda line: None)
    ours = task.build_model()
    cfg = task.cfg
    theirs = PlainSeq2Seq(
        len(task.source_vocab),
        len(task.target_vocab),
        cfg.embedding_size,
        cfg.hidden_size,
        cfg.attention_size,
        ours.bos,
        ours.eos,
    ).copy_from(ours)
    data, g = task.data.train, torch.Generator().manual_seed(1)
    batches = [take(data, torch.randperm(data.sources.shape[1], generator=g)[: args.batch_size]) for _ in range(20)]
    with torch.no_grad():
        a = ours(
            batches[0].sources, batches[0].targets[1:], batches[0].source_lengths, batches[0].target_lengths - 1
        ).logits
        b = theirs(batches[0].sources, batches[0].source_lengths, batches[0].targets[1:])
        mask = (torch.arange(a.shape[0]).unsqueeze(1) < batches[0].target_lengths - 1).unsqueeze(-1)
        diff = float(((a - b) * mask).abs().max())
    print(
        f"same model: max |logits difference| {diff:.1e} over the valid steps "
        f"(E {cfg.embedding_size}, H {cfg.hidden_size}, A {cfg.attention_size}, batch {args.batch_size}, "
        f"{args.threads} thread{'s' if args.threads > 1 else ''})",
        flush=True,
    )
    if diff > 1e-4:
        raise SystemExit("the two models disagree: the comparison would not be of the same computation")

    opt_ours, opt_theirs = torch.optim.Adam(ours.parameters(), 1e-3), torch.optim.Adam(theirs.parameters(), 1e-3)

    def update(model, opt, loss_fn, pairs):
        loss = loss_fn(model, pairs)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()

    times = {"ours": [], "theirs": []}
    for block in range(args.updates // 10):
        for name, model, opt, loss_fn in (
            ("ours", ours, opt_ours, lambda m, q: teacher_forced_nll(m, q)[0]),
            ("theirs", theirs, opt_theirs, plain_nll),
        )[:: 1 if block % 2 == 0 else -1]:
            for k in range(10):
                batch = batches[(block * 10 + k) % len(batches)]
                times[name].append(timed(partial(update, model, opt, loss_fn, batch)))
    val = task.data.val
    n = min(args.decode_batch, val.sources.shape[1])
    src, src_len = val.sources[:, :n], val.source_lengths[:n]
    src = src[: int(src_len.max())]
    L = task.max_length
    decode = {"ours-greedy": [], "theirs-greedy": [], "ours-beam": [], "theirs-beam": []}
    ours.eval()
    with torch.no_grad():
        for _ in range(args.decode_batches):
            context = ours.encode(src, src_len)  # the encoder pass is part of each timing below
            del context
            decode["ours-greedy"].append(
                timed(
                    lambda: generate(ours, max_length=L, method="greedy", end="eos", context=ours.encode(src, src_len))
                )
            )
            decode["theirs-greedy"].append(timed(lambda: theirs.greedy(src, src_len, L)))
            decode["ours-beam"].append(
                timed(
                    lambda: generate(
                        ours, max_length=L, method="beam", beam_width=4, end="eos", context=ours.encode(src, src_len)
                    )
                )
            )
            decode["theirs-beam"].append(timed(lambda: theirs.beam(src, src_len, L, 4)))
    med = {k: statistics.median(v) * 1000 for k, v in {**times, **decode}.items()}
    print("| | rnnkit Seq2Seq | plain PyTorch loop | rnnkit ÷ plain |")
    print("|---|---|---|---|")
    print(
        f"| training update (batch {args.batch_size}), ms | {med['ours']:.1f} | {med['theirs']:.1f} | "
        f"{med['ours'] / med['theirs']:.2f} |"
    )
    for kind in ("greedy", "beam"):
        label = "greedy decoding" if kind == "greedy" else "beam search (width 4)"
        print(
            f"| {label} of {n} sources, ms | {med['ours-' + kind]:.1f} | {med['theirs-' + kind]:.1f} | "
            f"{med['ours-' + kind] / med['theirs-' + kind]:.2f} |"
        )


if __name__ == "__main__":
    main()
