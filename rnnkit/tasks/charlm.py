r"""Character-level language model (Karpathy's char-rnn), by default on the Python standard
library's own source.

.. math::
    e(t) = E[x(t)], \quad h(t) = \mathrm{stack}(e(t), h(t-1)), \quad o(t) = c + V h(t), \quad
    \hat y(t) = \mathrm{softmax}(o(t)), \quad L = -\textstyle\sum_t \log \hat y(t)_{x(t+1)}

trained by truncated BPTT over lanes of whole files (a lane's state is reset where a file
ends). The metric is bits per character on held-out files; the baseline the unigram entropy.

Every ``holdout_every``-th file is held out (of a single file or a few, each one's tail); the
held-out files alternate between the validation split (watched during training) and the test
split (``rnnkit eval --split test``), so the training text is the same with or without a test
split. With a single held-out file or tails there is no test split, and asking for it is an
error.

Symbols: T chunk length, B lanes (batch), E embedding size, H hidden size, V vocabulary.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable
from dataclasses import InitVar, dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..cells.registry import make_cell
from ..compose import Stack
from ..data.corpus import CharVocab, DataError
from ..data.tokens import SPLITS, TokenCorpus, prepare_corpus, token_dtype
from ..generate import generate
from ..models.base import StepOutput
from ..train import Callback, Chunk, LaneStream, StepResult, distributed
from ..train.device import model_device, to_device
from ..train.tbptt import merge_carried
from .base import Task, TaskConfig
from .longlag import set_forget_bias

VAL_CHARS = 100_000  # validation is capped so it stays a small share of training time
STDLIB_CHARS = 4_000_000  # the built-in corpus's size when max_chars is not given


@dataclass
class CharLMConfig(TaskConfig):
    data: str | None = None  # a text file or folder; None: the Python standard library's source
    # cap on the corpus size, in characters; None: all of --data (of the stdlib, its first 4,000,000)
    max_chars: int | None = None
    embedding_size: int = 64  # character embedding width
    seq_length: int = 100  # truncated BPTT: steps per chunk (shorter where a file ends)
    # hold out every n-th file of a folder or the stdlib for validation and test (else a 1/n tail of each file)
    holdout_every: int = 20
    sample_length: int = 200  # characters printed at each validation
    temperature: float = 0.8  # sampling temperature of the printed samples
    hidden_size: int = 256  # units per recurrent layer (char-rnn's rnn_size)
    num_layers: int = 2  # stacked recurrent layers
    lr: float = 2e-3  # Adam learning rate
    max_steps: int | None = None  # updates; None: until max_time
    max_time: float | None = 120.0  # seconds of training
    batch_size: int = 32  # parallel lanes of the stream
    forget_bias: float | None = None  # initial forget-gate bias of the LSTM (GRU: update gate); None: torch's init
    renamed: ClassVar[dict[str, str]] = {"val_every": "holdout_every"}  # config keys and flags still accepted
    val_every: InitVar[int | None] = None  # deprecated: the old name of holdout_every, easily confused with eval_every

    def __post_init__(self, val_every: int | None) -> None:
        if val_every is not None:
            warnings.warn(
                "CharLMConfig: val_every is now holdout_every (how often a file is held out; eval_every "
                "is how often to validate); the old name goes in the next release",
                DeprecationWarning,
                stacklevel=3,
            )
            self.holdout_every = val_every

    def check(self) -> None:
        super().check()
        for name in ("max_chars", "embedding_size", "seq_length", "sample_length"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.holdout_every < 2:
            raise ValueError(f"holdout_every must be ≥ 2, got {self.holdout_every}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


class CharLM(nn.Module):
    r"""Embedding → recurrent stack → linear head: :math:`o(t) = c + V h(t)`.

    ``forward(tokens (T, B), state=None, lengths=None) -> (logits (T, B, V), state)``; it also
    keeps the decoding protocol (:mod:`rnnkit.generate`): ``start(B)``, ``step(y_prev, state)``.
    """

    bos = None  # generation starts from a prime text
    eos = None

    def __init__(self, vocab_size: int, cfg: CharLMConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, cfg.embedding_size)
        self.rnn = Stack.build(
            lambda i, h: make_cell(cfg.cell, i, h),
            cfg.embedding_size,
            cfg.hidden_size,
            cfg.num_layers,
            dropout=cfg.dropout,
        )
        self.head = nn.Linear(self.rnn.output_size, vocab_size)
        for layer in self.rnn.layers:
            init_forget_bias(layer.cell, cfg.forget_bias)

    def forward(self, tokens: Tensor, state=None, lengths=None):
        y, state = self.rnn(self.embed(tokens), state, lengths)  # (T, B, H)
        return self.head(y), state  # (T, B, V)

    def start(self, batch_size: int, context=None):
        """Zero states of every layer (decoding protocol)."""
        p = self.head.weight
        return tuple(layer.cell.init_state(batch_size, dtype=p.dtype, device=p.device) for layer in self.rnn.layers)

    def step(self, y_prev: Tensor, state):
        """One character in (B,), the next character's logits out (decoding protocol).

        Each layer's cell steps once (:meth:`~rnnkit.cells.base.RecurrentCell.step`: torch's
        fused cell op where one computes the cell): the same function as ``forward`` on a
        one-step chunk, without the sequence kernel, which for one step cost more than the step
        itself (oneDNN prepares the weights at every call: ~5× the time, measured on the
        default model, B = 1). Dropout between layers as the stack applies it, in training only
        (generation runs in eval mode)."""
        x = self.embed(y_prev)  # (B, E)
        new = []
        for k, (layer, s) in enumerate(zip(self.rnn.layers, state)):
            if k:
                x = F.dropout(x, self.rnn.dropout, self.training)
            x, s = layer.cell.step(x, layer.cell.prepare_state(s, x.shape[0], x.dtype, x.device))  # (B, H)
            new.append(s)
        return StepOutput(self.head(x)), tuple(new)  # logits (B, V)


def init_forget_bias(cell: nn.Module, value: float | None) -> None:
    """Start ``cell``'s forget gate (a GRU's update gate) at the effective bias ``value``, or,
    with None, at torch's init: that gate's biases drawn from U(−1/√H, 1/√H) as all the others.
    A cell without such a gate is left as it is.

    Why None is the char-LM's default: rnnkit's LSTM cells start at 1 (Jozefowicz et al. 2015),
    and on the default corpus that cost 0.15 bits per character after 300 updates against the
    same model with torch's init (2.295 vs 2.142 and 2.314 vs 2.151 at seeds 0 and 1, the plain
    PyTorch char-rnn 2.170 and 2.167; ``benchmarks/charlm_vs_pytorch.py --max-updates``), and
    still ~0.13 in training bits/char at 1000 updates; with torch's init rnnkit learns as the
    plain char-rnn does per update (1.561 vs 1.592 held out at 1200; bias 1: 1.645). The effect
    depends on the text: on vim's documentation (a 1452-character vocabulary) bias 1 learnt
    faster (3.487 vs 3.586 held out at 800 updates, seed 0; 3.758 vs 3.920 at 450, seed 1), so
    ``--forget-bias 1`` is worth trying on other text. (There the plain char-rnn reached 3.379
    at 800 updates, ahead of both: a second difference on that text, not found yet.)"""
    if value is not None and set_forget_bias(cell, value):
        return
    if hasattr(cell, "forget_bias") and cell.forget_bias != value:  # the cell's own init, with this bias
        cell.forget_bias = value  # (a CIFG cell's f has no keep-gate structure; None: torch's init throughout)
        cell.reset_parameters()


def unigram_bpc(train: Tensor, val: Tensor, vocab_size: int) -> float:
    """Baseline: bits per character of ``val`` under the train set's character frequencies."""
    return unigram_bpc_of_counts(torch.bincount(train, minlength=vocab_size), val)


def unigram_bpc_of_counts(counts: Tensor, val: Tensor) -> float:
    """:func:`unigram_bpc` from the train set's character counts (V,) (a token file's, counted
    once when it was prepared)."""
    counts = counts.double() + 1  # add-one smoothing
    logp = torch.log2(counts / counts.sum())
    return float(-logp[val].mean())


def full_or_lengths(chunk) -> Tensor | None:
    """The lengths the model is given for a chunk of a :class:`LaneStream`: None, always — the
    stack runs every chunk whole on torch's fused kernels, also where a lane's document ends
    inside it.

    Lengths would matter only for that lane's final state, and it is never used: the stream cuts
    a lane's chunk short only where its document ends, so its next chunk starts another document
    from a zero state (``reset``), and the steps past its length are padding that
    :func:`masked_nll` leaves out of the loss. The outputs at the valid steps do not depend on
    later steps, so losses, gradients and carried states are those of the exact per-lane run
    (``tests/tasks/test_charlm.py`` checks it); passing the lengths sent one chunk in ten (every
    file end) to the slower variable-length path."""
    return None


def masked_nll(logits: Tensor, targets: Tensor, lengths: Tensor) -> tuple[Tensor, int]:
    """Summed NLL over the valid steps of a chunk, and their number. logits (T, B, V)."""
    mask = torch.arange(targets.shape[0], device=targets.device).unsqueeze(1) < lengths.to(targets.device)  # (T, B)
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    return (nll.view_as(targets) * mask).sum(), int(mask.sum())


class TBPTTStep:
    """One truncated-BPTT update: carry the state from the previous chunk (detached), run the
    chunk, average the NLL over its valid characters.

    The carried state lives where the model runs; :meth:`state_dict` gives it on the CPU, and a
    state loaded from a checkpoint moves to the chunk's device at the next update, so a run
    saved on one device continues on another."""

    def __init__(self) -> None:
        self.state, self.previous = None, None

    def __call__(self, model: CharLM, chunk) -> StepResult:
        device = chunk.inputs.device  # the trainer moved the chunk to the model's device
        state = LaneStream.carry(to_device(self.state, device), to_device(self.previous, device), chunk)
        logits, self.state = model(chunk.inputs, state, full_or_lengths(chunk))
        total, n = masked_nll(logits, chunk.targets, chunk.lengths)
        self.previous = chunk
        # items: characters (throughput in chars/s); sequences: the lanes' chunks
        return StepResult(
            total / n, items=n, metrics={"bpc": float(total.detach()) / n / math.log(2)}, sequences=len(chunk.lanes)
        )

    def state_dict(self) -> dict:
        """The carried state (per layer, its tensors) and the lanes it belongs to, on the CPU:
        saved in the checkpoint so that a resumed run starts its next chunk from the same state
        (and gathered from every process as plain CPU tensors, whatever device each trains on)."""
        if self.state is None:
            return {"state": None, "lanes": None}
        return {
            "state": [[t.detach().cpu() for t in layer] for layer in self.state],
            "lanes": self.previous.lanes.cpu(),
        }

    def load_state_dict(self, saved: dict) -> None:
        """Restore what :meth:`state_dict` saved (the stack accepts plain tuples as states)."""
        if saved["state"] is None:
            self.state, self.previous = None, None
            return
        self.state = tuple(tuple(layer) for layer in saved["state"])
        lanes = saved["lanes"]  # carry() needs only the lanes of the previous chunk
        self.previous = Chunk(
            lanes.new_empty(0, len(lanes)),
            lanes.new_empty(0, len(lanes)),
            lanes.new_empty(len(lanes)),
            lanes.new_zeros(len(lanes), dtype=torch.bool),
            lanes,
        )

    @staticmethod
    def merge_state_dicts(states: list[dict]) -> dict:
        """Several processes' states (each its own lanes) as one, as one process carries them."""
        return merge_carried(states)


def _capped(docs: list[Tensor], limit: int) -> list[Tensor]:
    """Whole documents up to ``limit`` characters in all (the last one cut), none under 2."""
    kept, total = [], 0
    for d in docs:
        kept.append(d[: limit - total])
        total += len(kept[-1])
        if total >= limit:
            break
    return [d for d in kept if len(d) >= 2]


@torch.no_grad()
def evaluate_stream(model: CharLM, stream: LaneStream, progress: bool = False) -> dict[str, float]:
    """Loss (nats/char), bits per character and per-character perplexity over a stream, the state
    carried across chunks; ``progress``: a bar on stderr over the chunks (where it is a terminal)."""
    state, previous, total, count = None, None, 0.0, 0
    device = model_device(model)
    chunks = stream
    if progress and sys.stderr.isatty():
        from tqdm.auto import tqdm

        chunks = tqdm(stream, desc="evaluating", unit="chunk", leave=False, dynamic_ncols=True)
    for chunk in chunks:
        chunk = to_device(chunk, device)
        state = LaneStream.carry(state, previous, chunk)
        logits, state = model(chunk.inputs, state, full_or_lengths(chunk))
        nll, n = masked_nll(logits, chunk.targets, chunk.lengths)
        total, count, previous = total + float(nll), count + n, chunk
    return {"loss": total / count, "bpc": total / count / math.log(2), "perplexity": math.exp(total / count)}


def sample(
    model: CharLM,
    vocab: CharVocab,
    length: int,
    prime: str = "\n",
    *,
    method: str = "sample",
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = None,
    beam_width: int = 4,
    generator: torch.Generator | None = None,
) -> str:
    """Feed ``prime`` through the model, then generate ``length`` characters."""
    tokens = vocab.encode(prime).view(1, -1)  # (1, P)
    out = generate(
        model,
        max_length=length,
        method=method,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        beam_width=beam_width,
        end=None,
        prime=tokens,
        generator=generator,
    )
    return vocab.decode(out.tokens[0, : out.lengths[0]].tolist())


class _PrintSamples(Callback):
    """char-rnn's habit: a sample at every validation, so the user watches the text improve."""

    def __init__(self, task: CharLMTask, log: Callable[[str], None]) -> None:
        self.task, self.log = task, log
        self.generator = torch.Generator().manual_seed(task.cfg.seed)

    def state_dict(self) -> dict:
        """The sampling generator's state, so a resumed run prints the same samples."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, saved: dict) -> None:
        """Restore the sampling generator."""
        self.generator.set_state(saved["generator"])

    def on_validation(self, trainer, metrics) -> None:
        text = sample(
            trainer.model,
            self.task.vocab,
            self.task.cfg.sample_length,
            temperature=self.task.cfg.temperature,
            generator=self.generator,
        )
        self.log("  sample: " + text.replace("\n", "\n          "))


class CharLMTask(Task):
    name = "charlm"
    summary = "character-level language model on the stdlib's Python source or --data (bits/char vs unigram)"
    Config = CharLMConfig
    metric = "bpc"
    metric_label = "bits per character"

    def __init__(self, cfg: CharLMConfig, vocab: CharVocab | None = None) -> None:
        super().__init__(cfg)
        self.vocab = vocab
        self._step = TBPTTStep()  # the state carried across chunks; fresh with every batches()

    def prepare(self, log) -> None:
        cfg = self.cfg
        corpus = self._corpus(cfg.data, log)
        tokens, counts = self._in_vocab(corpus, cfg.data or "the stdlib corpus")
        n = cfg.holdout_every
        segments = corpus.segments.tolist()  # (start, stop, split, document), in text order
        parts = {code: [tokens[a:b] for a, b, s, _ in segments if s == code and b - a >= 2] for code in SPLITS.values()}
        train, val = parts[SPLITS["train"]], parts[SPLITS["val"]]
        held = {code: sum(1 for *_, s, _ in segments if s == code) for code in (SPLITS["val"], SPLITS["test"])}
        steps = sum(len(d) - 1 for d in train)
        # a corpus shorter than one chunk still trains: its chunks are simply shorter
        if steps < 1 or not val:
            raise DataError(
                f"corpus too short: {len(tokens):,} characters leave {steps:,} training steps and "
                f"{sum(len(d) for d in val):,} validation characters; training needs at least one step "
                f"(2 characters) in the training part and 2 characters held out"
            )
        # the training part is read from the (memory-mapped) token file a chunk at a time
        self.train_stream = LaneStream(train, cfg.batch_size, cfg.seq_length, split_documents=True)
        self.streams, self.baselines = {}, {}
        for name in ("val", "test"):
            part = parts[SPLITS[name]]
            if not part:
                continue
            cut = _capped(part, VAL_CHARS)  # a fixed slice, whatever the corpus's size
            # B equal lanes, as training reads and char-rnn validates: whole files per lane left a
            # handful of lanes (the held-out files), so validation ran at a few sequences per step
            # and took most of a short run's time budget; the cuts cost a zero state at B points
            self.streams[name] = LaneStream(cut, cfg.batch_size, cfg.seq_length, split_documents=True)
            held_out = torch.from_numpy(np.concatenate(cut).astype(np.int64))
            self.baselines[name] = {"bpc": unigram_bpc_of_counts(counts, held_out)}
        self.val_stream = self.streams["val"]
        self.baseline = self.baselines["val"]
        source = cfg.data or "the Python standard library's source"
        whole = corpus.files >= n  # whole files held out, else each file's tail
        split = whole and held[SPLITS["val"]] + held[SPLITS["test"]] >= 2
        held_out = (
            f"{held[SPLITS['val']]} validation and {held[SPLITS['test']]} test files held out"
            if split
            else f"{'1 file' if whole else f'the last 1/{n} of each file'} held out for validation, no test split"
        )
        log(
            f"corpus: {source}, {corpus.files:,} files, {len(tokens):,} characters, vocabulary {len(self.vocab)}; "
            f"{held_out}; unigram baseline {self.baseline['bpc']:.3f} bits/char"
        )

    def _corpus(self, data: str | None, log) -> TokenCorpus:
        """The token file of ``data`` (None: the stdlib), prepared into the cache if it is not there
        (:func:`~rnnkit.data.tokens.prepare_corpus`); in a run of several processes rank 0
        prepares it while the others wait, then every process memory-maps the same file."""
        cfg = self.cfg
        max_chars = cfg.max_chars if cfg.max_chars is not None or data else STDLIB_CHARS
        if distributed.is_distributed() and not distributed.is_main():
            distributed.broadcast(None)  # wait for rank 0's prepare
        try:
            return prepare_corpus(data, max_chars=max_chars, holdout_every=cfg.holdout_every, log=log)
        finally:
            if distributed.is_distributed() and distributed.is_main():
                distributed.broadcast(None)

    def _in_vocab(self, corpus: TokenCorpus, source: str) -> tuple[np.ndarray, Tensor]:
        """The corpus's tokens and training counts in this task's vocabulary: the corpus's own
        (the memory map itself) when the task has none yet or the same one (a resume), else the
        model's (a checkpoint's vocabulary that covers the corpus; the tokens then are remapped)."""
        counts = torch.from_numpy(corpus.counts)
        if self.vocab is None or self.vocab.chars == corpus.vocab.chars:
            self.vocab = self.vocab or corpus.vocab
            return corpus.tokens, counts
        _check_covered(self.vocab, "".join(corpus.vocab.chars), source=source)
        lut = np.array([self.vocab.index[c] for c in corpus.vocab.chars], dtype=np.int64)  # corpus index → model index
        mapped = np.zeros(len(self.vocab), dtype=np.int64)
        mapped[lut] = corpus.counts
        return lut.astype(token_dtype(len(self.vocab)))[corpus.tokens], torch.from_numpy(mapped)

    def build_model(self) -> CharLM:
        self.model = CharLM(len(self.vocab), self.cfg)
        return self.model

    def prepare_eval(self, data: str | None, log) -> None:
        """For ``rnnkit eval``: the held-out files, or all of ``data`` (in the model's vocabulary)."""
        if data is None:
            return self.prepare(log)
        corpus = self._corpus(data, log)
        tokens, _ = self._in_vocab(corpus, data)
        encoded = [tokens[a:b] for a, b in corpus.document_bounds() if b - a >= 2]
        if not encoded:
            raise DataError(f"{data}: nothing to evaluate (needs at least 2 characters)")
        self.val_stream = LaneStream(encoded, self.cfg.batch_size, self.cfg.seq_length)
        self.streams, self.baselines, self.baseline = {"val": self.val_stream}, {"val": {}}, {}

    def sample_text(self, model, prime: str = "\n", length: int = 500, **opts) -> str:
        """``prime`` followed by ``length`` generated characters."""
        _check_covered(self.vocab, prime, source="the prime text")
        return prime + sample(model, self.vocab, length, prime, **opts)

    def final_sample(self, result: dict) -> str:
        """The sample printed when training ends."""
        gen = torch.Generator().manual_seed(self.cfg.seed + 1)  # not a repeat of the last validation's sample
        return sample(self.model, self.vocab, 300, temperature=self.cfg.temperature, generator=gen)

    def batches(self):
        self._step = TBPTTStep()
        return self.train_stream

    def step(self, model, chunk) -> StepResult:
        return self._step(model, chunk)

    def state_dict(self) -> dict:
        """What the trainer saves for an exact resume: the state carried across chunks."""
        return self._step.state_dict()

    def load_state_dict(self, saved: dict) -> None:
        """Restore the state carried across chunks (called by the trainer on resume)."""
        self._step.load_state_dict(saved)

    def merge_state_dicts(self, states: list[dict]) -> dict:
        """The processes' carried states as one (the trainer saves it whole, see LaneStream.shard)."""
        return self._step.merge_state_dicts(states)

    def evaluate(self, model, split: str = "val") -> dict[str, float]:
        """Loss, bits per character and perplexity on ``split`` ("val" or "test"); ``baseline``
        becomes that split's. A run whose corpus held out too little for a test split says so."""
        if split not in ("val", "test"):
            raise ValueError(f"charlm: split must be 'val' or 'test', got {split!r}")
        if split not in self.streams:
            raise ValueError(
                "charlm: this run has no test split: its corpus held out a single file or the tails of "
                f"files (a test split needs ≥ {2 * self.cfg.holdout_every} files, every "
                f"{self.cfg.holdout_every}th held out); use --split val"
            )
        self.baseline = self.baselines[split]
        return evaluate_stream(model, self.streams[split], progress=self.show_progress)

    def callbacks(self, log):
        return [_PrintSamples(self, log)]

    def meta(self) -> dict:
        return {**super().meta(), "vocab": self.vocab.chars}

    @classmethod
    def from_meta(cls, meta: dict) -> CharLMTask:
        task = super().from_meta(meta)
        task.vocab = CharVocab(meta["vocab"])
        return task


def _check_covered(vocab: CharVocab, text: str, source: str) -> None:
    unknown = sorted(set(text) - set(vocab.chars))
    if unknown:
        shown = "".join(unknown[:20])
        raise DataError(f"{source} has {len(unknown)} character(s) the model's vocabulary lacks: {shown!r}")
