r"""Per-character tagging of real Python source: every character of the standard library's
files labelled with the kind of token it belongs to (name, keyword, operator, number, string,
comment, newline, space), with Python's own :mod:`tokenize` as ground truth — synced
many-to-many (:class:`rnnkit.models.Tagger`, Goodfellow et al., figure 10.3).

.. math::
    e(t) = E[x(t)], \quad h(t) = \mathrm{stack}(e(t), h(t \mp 1)), \quad o(t) = c + V h(t), \quad
    L = -\tfrac{1}{TB} \textstyle\sum_{t,b} \log \mathrm{softmax}(o(t))_{y(t)}

A forward-only tagger must label a character before it has read the rest of its token (is
``i`` the start of ``if`` or of ``items``?); ``--bidirectional`` (the default) reads each chunk
both ways. Whole files are held out (every ``every``-th file validates, the next one tests), so
the metric, per-character accuracy, is on code the model never saw. The baseline tags each
character with its most frequent training tag (reading no context).

Symbols: T chunk length, B batch, E embedding size, H hidden size (per direction), V
characters, K = 8 tags.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..cells.registry import make_cell
from ..compose import Stack
from ..data.corpus import CharVocab, DataError
from ..data.datasets import TAGS, Split, majority_accuracy, tag_source, tagging, unigram_tag_accuracy
from ..models import Tagger, sequence_nll
from ..train import StepResult
from ..train.device import model_device, to_device
from .base import Task, TaskConfig
from .batching import Minibatches, chunks

EVAL_BATCH = 256  # chunks per forward pass at evaluation
TAG_LETTERS = "_$nkods#"  #: one letter per tag of TAGS, for showing tags under source lines


@dataclass
class TaggingConfig(TaskConfig):
    data: str | None = None  # a folder of .py files; None: the Python standard library's source
    max_chars: int = 2_000_000  # whole files are read until this many characters
    every: int = 10  # file k validates if k mod every = every − 2, tests if every − 1
    chunk_length: int = 200  # characters per training sequence
    embedding_size: int = 32  # character embedding width
    bidirectional: bool = True  # read each chunk both ways, so a tag may depend on what follows
    hidden_size: int = 64  # units per recurrent layer (per direction)
    batch_size: int = 32  # chunks per update
    lr: float = 3e-3  # learning rate
    max_steps: int | None = 1500  # updates; None: until max_time
    eval_every: int = 250  # updates between validations and checkpoints

    def check(self) -> None:
        super().check()
        for name in ("max_chars", "chunk_length", "embedding_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.every < 3:
            raise ValueError(f"every must be ≥ 3 (train, validation and test files), got {self.every}")


def tag_accuracy(logits: Tensor, targets: Tensor) -> float:
    """Share of characters whose largest logit is their tag. logits (T, B, K), targets (T, B)."""
    return float((logits.argmax(-1) == targets).double().mean())


@torch.no_grad()
def evaluate_split(model: Tagger, split: Split) -> dict[str, float]:
    """Mean NLL per character (nats) and per-character accuracy over a split's chunks (each
    batch of them moved to the model's device)."""
    total, correct = 0.0, 0
    n = split.targets.numel()
    device = model_device(model)
    for s in chunks(split.inputs.shape[1], EVAL_BATCH):
        x, y = to_device((split.inputs[:, s], split.targets[:, s]), device)  # (T, B) each
        logits = model(x)  # (T, B, K)
        total += float(sequence_nll(logits, y, reduction="sum"))
        correct += int((logits.argmax(-1) == y).sum())
    return {"loss": total / n, "accuracy": correct / n}


class TaggingTask(Task):
    """Per-character token-kind tagging of Python source (see the module docstring)."""

    name = "tagging"
    summary = (
        "tag every character of stdlib Python source by token kind, tokenize as ground truth (accuracy vs unigram tags)"
    )
    Config = TaggingConfig
    metric = "accuracy"
    sample_hint = "--prime 'x = f(1)  # call'"  # what `rnnkit train` suggests after training
    higher_is_better = True

    def __init__(self, cfg: TaggingConfig, vocab: CharVocab | None = None) -> None:
        super().__init__(cfg)
        self.vocab = vocab

    def prepare(self, log) -> None:
        cfg = self.cfg
        self.data = tagging(cfg.chunk_length, cfg.max_chars, cfg.every, root=cfg.data)
        if self.vocab is not None and self.vocab.chars != self.data.vocab.chars:
            raise DataError(
                f"tagging: the data's characters differ from the checkpoint's vocabulary "
                f"({len(self.data.vocab)} vs {len(self.vocab)}); the corpus changed since training"
            )
        self.vocab = self.data.vocab
        train = self.data.train
        self.baselines = {s: {"accuracy": unigram_tag_accuracy(train, getattr(self.data, s))} for s in ("val", "test")}
        self.baseline = self.baselines["val"]
        sizes = " / ".join(f"{getattr(self.data, s).targets.numel():,}" for s in ("train", "val", "test"))
        log(
            f"tagging: {len(self.data.files)} files of {cfg.data or 'the standard library'} ({len(self.data.skipped)} "
            f"skipped, not tokenizable); {sizes} characters in chunks of {cfg.chunk_length}; vocabulary "
            f"{len(self.vocab)}; tags {', '.join(TAGS)}"
        )
        majority = {s: majority_accuracy(train.targets, getattr(self.data, s).targets) for s in ("val", "test")}
        log(
            "  baselines: "
            + "; ".join(
                f"{s} unigram-tag accuracy {self.baselines[s]['accuracy']:.3f}, majority tag {majority[s]:.3f}"
                for s in ("val", "test")
            )
        )

    def build_model(self) -> Tagger:
        cfg = self.cfg
        layer = Stack.build(
            lambda i, h: make_cell(cfg.cell, i, h),
            cfg.embedding_size,
            cfg.hidden_size,
            cfg.num_layers,
            bidirectional=cfg.bidirectional,
            dropout=cfg.dropout,
        )
        return Tagger(layer, len(TAGS), vocab_size=len(self.vocab))

    def batches(self) -> Minibatches:
        train = self.data.train
        return Minibatches(
            train.inputs.shape[1],
            self.cfg.batch_size,
            self.cfg.seed,
            lambda idx, _: (train.inputs[:, idx], train.targets[:, idx]),
        )  # (T, B) each

    def step(self, model: Tagger, batch) -> StepResult:
        x, y = batch
        logits = model(x)  # (T, B, K)
        return StepResult(
            sequence_nll(logits, y, reduction="mean"),
            items=y.numel(),
            sequences=y.shape[1],
            metrics={"accuracy": tag_accuracy(logits.detach(), y)},
        )

    def evaluate(self, model: Tagger, split: str = "val") -> dict[str, float]:
        """Loss and per-character accuracy on ``split`` ("val" or "test"); ``baseline`` becomes that split's."""
        if split not in ("val", "test"):
            raise ValueError(f"tagging: split must be 'val' or 'test', got {split!r}")
        self.baseline = self.baselines[split]
        return evaluate_split(model, getattr(self.data, split))

    def sample_text(self, model: Tagger, prime: str = "", **_) -> str:
        """``prime`` (Python source), each line followed by the model's tag of every character,
        one letter per tag (:data:`TAG_LETTERS`), and by tokenize's tags where they differ."""
        unknown = sorted(set(prime) - set(self.vocab.chars))
        if not prime.strip() or unknown:
            shown = f"; these are not in its vocabulary: {''.join(unknown)!r}" if unknown else ""
            raise DataError(f"tagging: --prime must be Python source in the model's characters{shown}")
        with torch.no_grad():
            x = self.vocab.encode(prime).view(-1, 1).to(model_device(model))  # (T, 1)
            predicted = model.eval()(x).argmax(-1).view(-1).tolist()  # (T,)
        try:
            truth = tag_source(prime).tolist()
        except DataError:  # a fragment tokenize refuses: show the model's tags only
            truth = None
        lines, start = [], 0
        for line in prime.splitlines(keepends=True):
            body = slice(start, start + len(line.rstrip("\n")))
            lines += [line.rstrip("\n"), "".join(TAG_LETTERS[k] for k in predicted[body])]
            if truth is not None and truth[body] != predicted[body]:
                lines.append("".join(TAG_LETTERS[k] for k in truth[body]) + "   ← tokenize")
            start += len(line)
        return "\n".join(lines) + "\n(" + ", ".join(f"{c} {t}" for c, t in zip(TAG_LETTERS, TAGS)) + ")"

    def meta(self) -> dict:
        return {**super().meta(), "vocab": self.vocab.chars}

    @classmethod
    def from_meta(cls, meta: dict) -> TaggingTask:
        task = super().from_meta(meta)
        task.vocab = CharVocab(meta["vocab"])
        return task
