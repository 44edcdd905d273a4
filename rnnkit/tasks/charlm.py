"""Character-level language model (Karpathy's char-rnn, on the Python standard library's source).

Symbols: T chunk length, B parallel lanes (batch), E embedding size, H hidden size, V vocabulary.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..cells.registry import make_cell
from ..cells.state import detach_state
from ..compose import Stack
from ..data.corpus import CharVocab, DataError, read_text, split_documents, stdlib_documents


@dataclass
class CharLMConfig:
    data: str | None = None  # a text file or folder; None: the stdlib's source
    max_chars: int = 4_000_000  # cap on the corpus size, in characters
    cell: str = "lstm"  # any name of rnnkit.cells.registry.CELLS
    hidden_size: int = 256  # char-rnn's rnn_size
    num_layers: int = 2
    embedding_size: int = 64
    dropout: float = 0.0  # between layers
    seq_length: int = 100  # truncated BPTT: steps per chunk
    batch_size: int = 32  # parallel lanes of the stream
    lr: float = 2e-3  # Adam
    grad_clip: float = 5.0  # clip the global gradient norm to this
    max_time: float = 120.0  # seconds of training
    max_steps: int | None = None  # or a number of updates
    eval_every: int = 100  # updates between validation + sample
    val_fraction: float = 0.05  # share held out: every 20th stdlib file, or a --data file's tail
    sample_length: int = 300
    temperature: float = 0.8
    seed: int = 0
    out: str = "runs/charlm"


class CharLM(nn.Module):
    r"""Embedding → recurrent stack → linear head: :math:`o(t) = c + V h(t)`, ŷ(t) = softmax(o(t)).

    Shapes: tokens (T, B) int64 → logits (T, B, V); the state is the stack's.
    """

    def __init__(self, vocab_size: int, cfg: CharLMConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, cfg.embedding_size)
        self.rnn = Stack.build(
            lambda i, h: make_cell(cfg.cell, i, h), cfg.embedding_size, cfg.hidden_size, cfg.num_layers, dropout=cfg.dropout
        )
        self.head = nn.Linear(self.rnn.output_size, vocab_size)

    def forward(self, tokens: Tensor, state=None):
        y, state = self.rnn(self.embed(tokens), state)  # (T, B, H)
        return self.head(y), state  # (T, B, V)


def lanes(data: Tensor, batch_size: int) -> Tensor:
    """Split a token stream into B parallel lanes, time-major: (N // B, B)."""
    n = data.numel() // batch_size
    return data[: n * batch_size].view(batch_size, n).t().contiguous()  # (N/B, B)


@torch.no_grad()
def evaluate_bpc(model: CharLM, data: Tensor, batch_size: int, seq_length: int) -> float:
    """Bits per character of ``data`` with the state carried across chunks."""
    model.eval()
    stream = lanes(data, batch_size)
    state, total, count = None, 0.0, 0
    for i in range(0, stream.shape[0] - 1, seq_length):
        x, y = stream[i : i + seq_length], stream[i + 1 : i + 1 + seq_length]
        x = x[: y.shape[0]]
        logits, state = model(x, state)
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum").item()
        count += y.numel()
    model.train()
    return total / count / math.log(2)


@torch.no_grad()
def sample(model: CharLM, vocab: CharVocab, length: int, prime: str = "\n", temperature: float = 0.8, generator=None) -> str:
    """Feed ``prime`` through the model, then draw ``length`` characters at ``temperature``."""
    model.eval()
    logits, state = model(vocab.encode(prime).view(-1, 1))  # (T, 1, V)
    out = []
    for _ in range(length):
        probs = torch.softmax(logits[-1, 0] / temperature, dim=-1)
        nxt = torch.multinomial(probs, 1, generator=generator)
        out.append(int(nxt))
        logits, state = model(nxt.view(1, 1), state)
    model.train()
    return vocab.decode(out)


def unigram_bpc(train: Tensor, val: Tensor, vocab_size: int) -> float:
    """Baseline: bits per character of ``val`` under the train set's character frequencies."""
    counts = torch.bincount(train, minlength=vocab_size).double() + 1  # add-one smoothing
    logp = torch.log2(counts / counts.sum())
    return float(-logp[val].mean())


def train(cfg: CharLMConfig, log: Callable[[str], None] = print) -> dict:
    """Train a char-level LM by truncated BPTT; write checkpoint, config and metrics under ``cfg.out``."""
    torch.manual_seed(cfg.seed)
    if cfg.data:
        text = read_text(cfg.data, cfg.max_chars)
        n_val = max(int(len(text) * cfg.val_fraction), cfg.seq_length + 1)
        train_text, val_text = text[:-n_val], text[-n_val:]  # a file's tail is held out
    else:
        train_text, val_text = split_documents(stdlib_documents(cfg.max_chars), every=round(1 / cfg.val_fraction))
        text = train_text + val_text
    vocab = CharVocab.from_text(text)
    train_data, val_data = vocab.encode(train_text), vocab.encode(val_text)
    if train_data.numel() < cfg.batch_size * (cfg.seq_length + 1) or val_data.numel() < cfg.seq_length + 1:
        raise DataError(
            f"corpus too short: {len(text)} characters leave {train_data.numel()} for training and {val_data.numel()} "
            f"for validation; training needs batch_size × (seq_length + 1) = {cfg.batch_size * (cfg.seq_length + 1)}"
        )
    baseline = unigram_bpc(train_data, val_data, len(vocab))
    source = cfg.data or "the Python standard library's source"
    log(f"corpus: {source}, {len(text):,} characters, vocabulary {len(vocab)}; unigram baseline {baseline:.3f} bits/char")

    model = CharLM(len(vocab), cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    stream = lanes(train_data, cfg.batch_size)  # (N/B, B)
    val_eval = val_data[: 100_000]
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    metrics_log = (out / "metrics.jsonl").open("w")
    gen = torch.Generator().manual_seed(cfg.seed)

    state, pos, step, seen = None, 0, 0, 0
    start = time.monotonic()
    history = []
    val_bpc = float("nan")
    while True:
        elapsed = time.monotonic() - start
        if (cfg.max_steps is not None and step >= cfg.max_steps) or (cfg.max_steps is None and elapsed >= cfg.max_time):
            break
        if pos + cfg.seq_length + 1 > stream.shape[0]:
            pos, state = 0, None  # an epoch ends: start the lanes again from fresh states
        x = stream[pos : pos + cfg.seq_length]  # (T, B)
        y = stream[pos + 1 : pos + 1 + cfg.seq_length]  # targets: the next characters
        pos += cfg.seq_length
        state = detach_state(state) if state is not None else None  # truncated BPTT: cut the graph
        logits, state = model(x, state)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
        opt.step()
        step += 1
        seen += cfg.batch_size
        record = {"step": step, "time": round(time.monotonic() - start, 3), "loss": loss.item(), "bpc": loss.item() / math.log(2), "grad_norm": grad_norm}
        if step % cfg.eval_every == 0:
            val_bpc = evaluate_bpc(model, val_eval, cfg.batch_size, cfg.seq_length)
            record["val_bpc"] = val_bpc
            log(f"step {step:5d}  {record['time']:6.1f}s  train {record['bpc']:.3f} bits/char  val {val_bpc:.3f} bits/char")
            log("  sample: " + sample(model, vocab, 120, temperature=cfg.temperature, generator=gen).replace("\n", "\n          "))
        metrics_log.write(json.dumps(record) + "\n")
        history.append(record)
    metrics_log.close()
    val_bpc = evaluate_bpc(model, val_eval, cfg.batch_size, cfg.seq_length)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps({"task": "charlm", "config": asdict(cfg), "vocab": vocab.chars}, ensure_ascii=False, indent=1))
    final = sample(model, vocab, cfg.sample_length, temperature=cfg.temperature, generator=gen)
    return {
        "task": "charlm",
        "cell": cfg.cell,
        "steps": step,
        "sequences_seen": seen,
        "train_loss": history[-1]["loss"] if history else float("nan"),
        "val_bpc": val_bpc,
        "baseline_bpc": baseline,
        "wall_time": time.monotonic() - start,
        "sample": final,
        "out": str(out),
    }


def load(out: str | Path) -> tuple[CharLM, CharVocab, CharLMConfig]:
    """The model, vocabulary and config saved by :func:`train` in folder ``out``."""
    out = Path(out)
    meta = json.loads((out / "config.json").read_text())
    cfg = CharLMConfig(**meta["config"])
    vocab = CharVocab(meta["vocab"])
    model = CharLM(len(vocab), cfg)
    model.load_state_dict(load_file(str(out / "model.safetensors")))
    return model, vocab, cfg
