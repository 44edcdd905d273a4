r"""Handwritten digits read as sequences: scikit-learn's shipped 8×8 images, one row (or one
pixel) per step, classified after the last step — many-to-one (Goodfellow et al., figure 10.5).

.. math::
    h(t) = \mathrm{stack}(x(t), h(t-1)), \quad o = c + V h(\tau), \quad
    \hat y = \mathrm{softmax}(o), \quad L = -\log \hat y_{y}

With ``--order rows`` an image is 8 steps of 8 pixels; with ``--order pixels`` 64 steps of one
pixel (a long-range memory test: the class depends on pixels up to 63 steps back). With
``--bidirectional`` the summary is [h(τ); g(1)], both directions after reading everything.
The metric is accuracy on held-out images; the baseline always answers the most frequent
training class.

Symbols: T steps (8 or 64), B batch, I pixels per step (8 or 1), H hidden size, K = 10 classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from ..cells.registry import make_cell
from ..compose import Stack
from ..data.datasets import DIGITS_ORDERS, Split, digits, majority_accuracy
from ..models import ManyToOne
from ..train import StepResult
from ..train.supervised import Classification, accuracy  # accuracy: also importable from here, as before
from .base import Task, TaskConfig
from .batching import Minibatches, chunks

CLASSES = 10
EVAL_BATCH = 1024  # images per forward pass at evaluation


@dataclass
class DigitsConfig(TaskConfig):
    order: str = "rows"  # rows: 8 steps of 8 pixels; pixels: 64 steps of 1 pixel
    bidirectional: bool = False  # read each image both ways (a Bidirectional layer per level)
    hidden_size: int = 64  # units per recurrent layer (per direction)
    batch_size: int = 64  # images per update
    lr: float = 3e-3  # learning rate
    max_steps: int | None = 1500  # updates; None: until max_time
    eval_every: int = 100  # updates between validations and checkpoints

    def check(self) -> None:
        super().check()
        if self.order not in DIGITS_ORDERS:
            raise ValueError(f"order must be one of {', '.join(DIGITS_ORDERS)}, got {self.order!r}")


def evaluate_split(model: ManyToOne, split: Split) -> dict[str, float]:
    """Mean cross-entropy (nats) and accuracy of ``model`` over a split, in bounded batches
    (each moved to the model's device): :meth:`rnnkit.train.supervised.ClassifierJob.evaluate`'s
    ``loss`` and ``accuracy``."""
    n = split.targets.shape[0]
    batches = ((split.inputs[:, s], split.targets[s]) for s in chunks(n, EVAL_BATCH))  # (T, B, I), (B,)
    metrics = Classification(CLASSES).evaluate(model, batches)
    return {"loss": metrics["loss"], "accuracy": metrics["accuracy"]}


class DigitsTask(Task):
    """Many-to-one classification of the digit images (see the module docstring)."""

    name = "digits"
    summary = (
        "scikit-learn's 8×8 digits read row by row (or pixel by pixel), classified at the end "
        "(accuracy vs majority class)"
    )
    Config = DigitsConfig
    metric = "accuracy"
    higher_is_better = True

    def prepare(self, log) -> None:
        cfg = self.cfg
        self.data = digits(cfg.order, seed=cfg.seed)
        train = self.data.train
        self.baselines = {
            s: {"accuracy": majority_accuracy(train.targets, getattr(self.data, s).targets)} for s in ("val", "test")
        }
        self.baseline = self.baselines["val"]
        T, _, I = train.inputs.shape
        log(
            f"digits: {train.targets.numel()} train, {self.data.val.targets.numel()} val, "
            f"{self.data.test.targets.numel()} test images as {T} steps × {I} pixels; majority-class baseline "
            f"accuracy {self.baseline['accuracy']:.3f} (val), {self.baselines['test']['accuracy']:.3f} (test)"
        )

    def build_model(self) -> ManyToOne:
        cfg = self.cfg
        width = 8 if cfg.order == "rows" else 1  # I, pixels per step
        layer = Stack.build(
            lambda i, h: make_cell(cfg.cell, i, h),
            width,
            cfg.hidden_size,
            cfg.num_layers,
            bidirectional=cfg.bidirectional,
            dropout=cfg.dropout,
        )
        return ManyToOne(layer, CLASSES)

    def batches(self) -> Minibatches:
        train = self.data.train
        return Minibatches(
            train.targets.numel(),
            self.cfg.batch_size,
            self.cfg.seed,
            lambda idx, _: (train.inputs[:, idx], train.targets[idx]),
        )  # (T, B, I), (B,)

    def step(self, model: ManyToOne, batch) -> StepResult:
        x, y = batch
        logits = model(x)  # (B, K)
        return StepResult(
            F.cross_entropy(logits, y), items=y.numel(), metrics={"accuracy": accuracy(logits.detach(), y)}
        )

    def evaluate(self, model: ManyToOne, split: str = "val") -> dict[str, float]:
        """Loss and accuracy on ``split`` ("val" or "test"); ``baseline`` becomes that split's."""
        if split not in ("val", "test"):
            raise ValueError(f"digits: split must be 'val' or 'test', got {split!r}")
        self.baseline = self.baselines[split]
        return evaluate_split(model, getattr(self.data, split))
