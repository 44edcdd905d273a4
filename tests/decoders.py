"""Small models that follow the decoding protocol (start/step), for generation and training tests."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from rnnkit.cells import GRUCell
from rnnkit.recurrent import Recurrent


class Out(NamedTuple):
    logits: Tensor
    halt: Tensor | None = None


class TinyDecoder(nn.Module):
    """Embedding → GRU cell → linear, one step at a time: a real recurrent decoder with random weights."""

    def __init__(self, vocab: int = 5, hidden: int = 8, bos: int = 0, eos: int = 1, halt: bool = False, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.bos, self.eos = bos, eos
        self.embed = nn.Embedding(vocab, hidden)
        self.cell = GRUCell(hidden, hidden)
        self.head = nn.Linear(hidden, vocab)
        with torch.no_grad():
            self.head.weight.mul_(6)  # peaked distributions, so decoding choices matter
        self.halt_head = nn.Linear(hidden, 1) if halt else None
        self.steps = 0

    def forward(self, targets):
        """Teacher forcing in one batched pass: inputs [bos, y(0) … y(T−2)] → logits (T, B, V)."""
        T, B = targets.shape
        inputs = torch.cat([torch.full((1, B), self.bos, dtype=torch.long), targets[:-1]])  # (T, B)
        h, _ = Recurrent(self.cell, engine="reference")(self.embed(inputs))  # (T, B, H)
        return self.head(h)

    def start(self, batch_size, context=None):
        h = torch.zeros(batch_size, self.cell.hidden_size) if context is None else torch.tanh(context)
        return (h,)

    def step(self, y_prev, state):
        self.steps += 1
        h, _ = self.cell(self.embed(y_prev), state)  # (B, H)
        halt = self.halt_head(h).squeeze(-1) if self.halt_head is not None else None
        return Out(self.head(h), halt), (h,)


class Scripted(nn.Module):
    """Emits token script[t] at step t (logit 10 vs 0), halt logit halts[t], predicted length tau."""

    def __init__(self, script, halts=None, tau=None, vocab=6):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.script, self.halts, self.tau, self.vocab = script, halts, tau, vocab
        self.bos, self.eos = 0, 5

    def start(self, batch_size, context=None):
        # (step t, which scripted row): beam search copies and reorders rows, the row id follows
        return (torch.zeros(batch_size, dtype=torch.long), torch.arange(batch_size))

    def predict_length(self, state):
        return torch.tensor(self.tau)

    def step(self, y_prev, state):
        t, rows = state
        i = int(t[0])
        logits = torch.zeros(t.shape[0], self.vocab)
        logits[torch.arange(t.shape[0]), torch.tensor([self.script[r][i] for r in rows])] = 10.0
        halt = torch.tensor([float(self.halts[r][i]) for r in rows]) if self.halts else None
        return Out(logits, halt), (t + 1, rows)


class RealDecoder(nn.Module):
    """Real-valued outputs fed back: y_prev (B, O) → GRU cell → ŷ (B, O)."""

    def __init__(self, out: int = 2, hidden: int = 6, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.cell = GRUCell(out, hidden).double()
        self.head = nn.Linear(hidden, out).double()

    def start(self, batch_size, context=None):
        return (torch.zeros(batch_size, self.cell.hidden_size, dtype=torch.float64),)

    def step(self, y_prev, state):
        h, _ = self.cell(y_prev, state)
        return Out(self.head(h)), (h,)
