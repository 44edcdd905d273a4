r"""Ready training pieces for the common supervised jobs on your own sequences: each is a step
function for the :class:`~rnnkit.train.Trainer` and an ``evaluate`` that computes its metrics.

* :class:`Classification` — one label per sequence (a :class:`~rnnkit.ManyToOne` model's
  logits (B, K)); cross-entropy, optionally weighted per class against imbalance;
* :class:`Tagging` — a label per step (a :class:`~rnnkit.Tagger`'s logits (T, B, K)), the steps
  past each sequence's length masked out;
* :class:`Regression` — real targets per sequence (B, O) or per step (T, B, O), squared error,
  masked by the lengths when per step.

A batch is ``(x, lengths, y)`` — what :class:`rnnkit.data.SequenceCollate` makes — or ``(x, y)``
for sequences of one length; the model is called as ``model(x, lengths)`` (``model(x)`` without
lengths). In a few lines::

    job = Classification(num_classes=9, class_weights=balanced_class_weights(train_labels, 9))
    trainer = Trainer(model, optimizer, job, train_loader,
                      TrainConfig(max_epochs=20, monitor=job.monitor, mode=job.mode),
                      evaluate=job.evaluator(val_loader))
    trainer.fit()
    job.evaluate(model, test_loader)          # {"loss", "accuracy", "balanced_accuracy", "accuracy_0", …}
    job.confusion_matrix(model, test_loader)  # (K, K): rows the true class, columns the predicted

What the Trainer needs from ``evaluate``: a dict of numbers, one of them the config's
``monitor`` (default ``"loss"``) when early stopping or the best checkpoint watch it. Each job
names the metric it is judged by in ``monitor`` and its direction in ``mode`` ("accuracy", "max"
for the classifiers; "loss", "min" for regression), for ``TrainConfig(monitor=…, mode=…)``.

Symbols: B batch, T steps, K classes, O real outputs per sequence or step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .device import model_device, to_device
from .trainer import StepResult

__all__ = [
    "Classification",
    "Tagging",
    "Regression",
    "SupervisedJob",
    "ClassifierJob",
    "accuracy",
    "confusion_matrix",
    "balanced_class_weights",
    "classification_metrics",
    "step_mask",
]


def accuracy(logits: Tensor, targets: Tensor) -> float:
    """Share of rows whose largest logit is the target class. logits (B, K), targets (B,)."""
    return float((logits.argmax(-1) == targets).double().mean())


def confusion_matrix(predicted: Tensor, targets: Tensor, num_classes: int) -> Tensor:
    """(K, K) int64 counts: entry [i, j] is how many items of true class i were predicted j.

    predicted, targets: integer tensors of one shape (class ids in [0, K))."""
    if predicted.shape != targets.shape:
        raise ValueError(
            f"confusion_matrix: predicted has shape {tuple(predicted.shape)}, targets {tuple(targets.shape)}; "
            "expected the same"
        )
    flat = targets.reshape(-1).long() * num_classes + predicted.reshape(-1).long()
    return torch.bincount(flat.cpu(), minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def classification_metrics(confusion: Tensor) -> dict[str, float]:
    """From a confusion matrix (rows true, columns predicted): ``accuracy`` (correct / all),
    ``accuracy_k`` for each class k with items (the share of class k's items predicted k, its
    recall), and ``balanced_accuracy``, their mean (what a classifier scores that answers the
    majority class is 1/K here, however imbalanced the data)."""
    confusion = confusion.double()
    total = float(confusion.sum())
    metrics = {"accuracy": float(confusion.diagonal().sum()) / total if total else float("nan")}
    per_class = {}
    for k in range(confusion.shape[0]):
        n = float(confusion[k].sum())
        if n:
            per_class[f"accuracy_{k}"] = float(confusion[k, k]) / n
    metrics["balanced_accuracy"] = sum(per_class.values()) / len(per_class) if per_class else float("nan")
    return {**metrics, **per_class}


def balanced_class_weights(labels: Any, num_classes: int) -> Tensor:
    """Class weights against imbalance: N / (K · N_k) for class k (N_k its items, N all of
    them), so every class weighs as much in the loss as a balanced data set would make it; a
    class without items gets weight 0. labels: any integer array or tensor of class ids."""
    labels = torch.as_tensor(labels).reshape(-1).long()
    counts = torch.bincount(labels, minlength=num_classes)[:num_classes].double()
    weights = torch.where(counts > 0, labels.numel() / (num_classes * counts.clamp(min=1)), torch.zeros_like(counts))
    return weights.float()


def step_mask(lengths: Tensor | None, steps: int, batch: int, device: torch.device) -> Tensor:
    """(T, B) bool: True at step t of sequence b when t < lengths[b] (all True without lengths)."""
    if lengths is None:
        return torch.ones(steps, batch, dtype=torch.bool, device=device)
    return torch.arange(steps, device=device).unsqueeze(1) < lengths.to(device).unsqueeze(0)  # (T, B)


def _unpack(batch: Any, owner: str) -> tuple[Tensor, Tensor | None, Tensor]:
    """(x, lengths, y) from a batch ``(x, lengths, y)`` or ``(x, y)``."""
    if isinstance(batch, (tuple, list)) and len(batch) == 3:
        return batch[0], batch[1], batch[2]
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], None, batch[1]
    raise TypeError(
        f"{owner}: a batch must be (x, lengths, y) or (x, y), got {type(batch).__name__}"
        + (f" of {len(batch)}" if isinstance(batch, (tuple, list)) else "")
    )


def _forward(model: nn.Module, x: Tensor, lengths: Tensor | None) -> Tensor:
    return model(x) if lengths is None else model(x, lengths)


class SupervisedJob:
    """What the three jobs share: the step function (``job(model, batch)``), ``evaluate`` over
    batches, and ``evaluator`` for the Trainer; ``monitor`` and ``mode`` name the metric the job
    is judged by, for ``TrainConfig(monitor=job.monitor, mode=job.mode)``."""

    monitor = "loss"
    mode = "min"
    owner = "job"

    def __call__(self, model: nn.Module, batch: Any) -> StepResult:
        """One training step on ``batch``: the loss to back-propagate, its items and metrics."""
        x, lengths, y = _unpack(batch, self.owner)
        out = _forward(model, x, lengths)
        return self._step(out, lengths, y)

    def _step(self, out: Tensor, lengths: Tensor | None, y: Tensor) -> StepResult:
        raise NotImplementedError

    def evaluator(self, batches: Iterable) -> Callable[[nn.Module], dict[str, float]]:
        """``evaluate`` bound to ``batches`` (a DataLoader or list), as ``Trainer(evaluate=…)``
        takes it."""
        return lambda model: self.evaluate(model, batches)

    def _outputs(self, model: nn.Module, batches: Iterable) -> Iterable[tuple[Tensor, Tensor | None, Tensor]]:
        """(output, lengths, y) per batch, in eval mode without gradients, on the model's device."""
        device, was_training = model_device(model), model.training
        model.eval()
        try:
            with torch.no_grad():
                for batch in batches:
                    x, lengths, y = to_device(_unpack(batch, self.owner), device)
                    yield _forward(model, x, lengths), lengths, y
        finally:
            model.train(was_training)


class ClassifierJob(SupervisedJob):
    """What :class:`Classification` and :class:`Tagging` share: class weights, the cross-entropy
    step, and the classification metrics."""

    monitor = "accuracy"
    mode = "max"

    def __init__(self, num_classes: int, class_weights: Any = None) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"{self.owner}: num_classes must be an int ≥ 2, got {num_classes!r}")
        self.num_classes = num_classes
        if class_weights is not None:
            class_weights = torch.as_tensor(class_weights, dtype=torch.get_default_dtype())
            if class_weights.shape != (num_classes,) or bool((class_weights < 0).any()):
                raise ValueError(
                    f"{self.owner}: class_weights must be {num_classes} numbers ≥ 0 (one per class), "
                    f"got shape {tuple(class_weights.shape)}"
                )
        self.class_weights = class_weights

    def _rows(self, out: Tensor, lengths: Tensor | None, y: Tensor) -> tuple[Tensor, Tensor]:
        """The scored rows: logits (N, K) and their labels (N,)."""
        raise NotImplementedError

    def _check(self, logits: Tensor) -> None:
        if logits.shape[-1] != self.num_classes:
            raise ValueError(
                f"{self.owner}: the model gave {logits.shape[-1]} logits per item, expected num_classes = "
                f"{self.num_classes}"
            )

    def _weights(self, like: Tensor) -> Tensor | None:
        return None if self.class_weights is None else self.class_weights.to(like.device, like.dtype)

    def _step(self, out: Tensor, lengths: Tensor | None, y: Tensor) -> StepResult:
        logits, labels = self._rows(out, lengths, y)
        loss = F.cross_entropy(logits, labels, weight=self._weights(logits))
        return StepResult(
            loss,
            items=labels.numel(),
            sequences=int(out.shape[-2]),
            metrics={"accuracy": accuracy(logits.detach(), labels)},
        )

    def evaluate(self, model: nn.Module, batches: Iterable) -> dict[str, float]:
        """``loss`` (the training loss: cross-entropy in nats, weighted as in training, averaged
        over every item of ``batches``), ``accuracy``, ``balanced_accuracy`` and ``accuracy_k``
        per class k present (see :func:`classification_metrics`)."""
        loss, weight = 0.0, 0.0
        confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.long)
        for out, lengths, y in self._outputs(model, batches):
            logits, labels = self._rows(out, lengths, y)
            w = self._weights(logits)
            loss += float(F.cross_entropy(logits, labels, weight=w, reduction="sum"))
            weight += float(labels.numel() if w is None else w[labels].sum())
            confusion += confusion_matrix(logits.argmax(-1), labels, self.num_classes)
        if not weight:
            raise ValueError(f"{self.owner}.evaluate: the batches held no items")
        return {"loss": loss / weight, **classification_metrics(confusion)}

    def confusion_matrix(self, model: nn.Module, batches: Iterable) -> Tensor:
        """(K, K) counts over ``batches``: [i, j] = items of true class i predicted j."""
        confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.long)
        for out, lengths, y in self._outputs(model, batches):
            logits, labels = self._rows(out, lengths, y)
            confusion += confusion_matrix(logits.argmax(-1), labels, self.num_classes)
        return confusion


class Classification(ClassifierJob):
    r"""One label per sequence: the step function and metrics of a sequence classifier.

    .. math::
        L = \frac{\sum_b w_{y_b}\, (-\log \mathrm{softmax}(o_b)_{y_b})}{\sum_b w_{y_b}}

    (torch's weighted ``F.cross_entropy``; all w = 1 without ``class_weights``).

    Args:
        num_classes: K.
        class_weights: (K,) weights w of the classes in the loss, e.g.
            :func:`balanced_class_weights` of the training labels against imbalance; None: 1.

    The model maps ``(x, lengths)`` to logits o (B, K) (a :class:`~rnnkit.ManyToOne`); y is
    (B,) int64 class ids. The step logs ``accuracy``; ``evaluate`` returns ``loss``,
    ``accuracy``, ``balanced_accuracy`` and ``accuracy_k`` per class. ``monitor`` =
    "accuracy", ``mode`` = "max".
    """

    owner = "Classification"

    def _rows(self, out: Tensor, lengths: Tensor | None, y: Tensor) -> tuple[Tensor, Tensor]:
        if out.dim() != 2:
            raise ValueError(
                f"Classification: the model must give logits (B, K), got shape {tuple(out.shape)} "
                "(a label per step is Tagging)"
            )
        self._check(out)
        if y.shape != out.shape[:1]:
            raise ValueError(
                f"Classification: y must be (B,) = ({out.shape[0]},) class ids, got shape {tuple(y.shape)}"
            )
        return out, y.long()


class Tagging(ClassifierJob):
    r"""A label per step: the step function and metrics of a sequence tagger.

    .. math::
        L = \frac{\sum_{b,\, t < \tau_b} w_{y_{tb}}\, (-\log \mathrm{softmax}(o_{tb})_{y_{tb}})}
                 {\sum_{b,\, t < \tau_b} w_{y_{tb}}}

    — the mean over the real steps of every sequence (τ_b its length); the padding is masked by
    ``lengths`` and by the label ``ignore_index``, whichever the batch gives.

    Args:
        num_classes: K.
        class_weights: (K,) weights of the classes in the loss; None: 1.
        ignore_index: a label that scores nothing (what :class:`~rnnkit.data.SequenceCollate`
            pads integer targets with).

    The model maps ``(x, lengths)`` to logits o (T, B, K) (a :class:`~rnnkit.Tagger`); y is
    (T, B) int64. Items are the real steps. ``evaluate`` returns step-level ``loss``,
    ``accuracy``, ``balanced_accuracy`` and ``accuracy_k``. ``monitor`` = "accuracy", ``mode``
    = "max".
    """

    owner = "Tagging"

    def __init__(self, num_classes: int, class_weights: Any = None, ignore_index: int = -100) -> None:
        super().__init__(num_classes, class_weights)
        self.ignore_index = ignore_index

    def _rows(self, out: Tensor, lengths: Tensor | None, y: Tensor) -> tuple[Tensor, Tensor]:
        if out.dim() != 3:
            raise ValueError(f"Tagging: the model must give logits (T, B, K), got shape {tuple(out.shape)}")
        self._check(out)
        T, B = out.shape[:2]
        if y.shape != (T, B):
            raise ValueError(f"Tagging: y must be (T, B) = {(T, B)} labels, got shape {tuple(y.shape)}")
        mask = step_mask(lengths, T, B, out.device) & (y != self.ignore_index)  # (T, B)
        return out[mask], y[mask].long()  # (N, K), (N,)


class Regression(SupervisedJob):
    r"""Real targets, per sequence or per step: the step function and metrics of squared error.

    .. math::
        L = \frac{1}{N} \sum (\hat y - y)^2

    the mean over the N real elements — all of (B, O) per sequence; per step, the O values of
    every step t < τ_b of every sequence (the padding masked by ``lengths``).

    Args:
        per_step: outputs and targets are (T, B, O) (a :class:`~rnnkit.Tagger`) instead of
            (B, O) (a :class:`~rnnkit.ManyToOne`); a missing O (shapes (B,) or (T, B)) is one
            value.

    ``evaluate`` returns ``loss`` (= ``mse``), ``mse``, ``rmse`` and ``mae`` over all real
    elements. ``monitor`` = "loss", ``mode`` = "min".
    """

    owner = "Regression"

    def __init__(self, per_step: bool = False) -> None:
        self.per_step = bool(per_step)

    def _errors(self, out: Tensor, lengths: Tensor | None, y: Tensor) -> Tensor:
        """The prediction errors of the real elements, flattened (N,)."""
        if y.shape != out.shape:
            want = "(T, B, O)" if self.per_step else "(B, O)"
            raise ValueError(
                f"Regression: y must have the model's output shape {tuple(out.shape)} {want}, got {tuple(y.shape)}"
            )
        e = out - y.to(out.dtype)
        if not self.per_step:
            return e.reshape(-1)
        if out.dim() < 2:
            raise ValueError(
                f"Regression(per_step=True): outputs must be (T, B) or (T, B, O), got shape {tuple(out.shape)}"
            )
        mask = step_mask(lengths, out.shape[0], out.shape[1], out.device)  # (T, B)
        return e[mask].reshape(-1)

    def _step(self, out: Tensor, lengths: Tensor | None, y: Tensor) -> StepResult:
        e = self._errors(out, lengths, y)
        sequences = int(out.shape[1] if self.per_step else out.shape[0])
        return StepResult(
            e.pow(2).mean(), items=e.numel(), sequences=sequences, metrics={"mae": float(e.detach().abs().mean())}
        )

    def evaluate(self, model: nn.Module, batches: Iterable) -> dict[str, float]:
        """``loss`` and ``mse`` (mean squared error), ``rmse`` and ``mae`` (mean absolute error)
        over every real element of ``batches``."""
        sq, ab, n = 0.0, 0.0, 0
        for out, lengths, y in self._outputs(model, batches):
            e = self._errors(out, lengths, y).double()
            sq, ab, n = sq + float(e.pow(2).sum()), ab + float(e.abs().sum()), n + e.numel()
        if not n:
            raise ValueError("Regression.evaluate: the batches held no items")
        return {"loss": sq / n, "mse": sq / n, "rmse": (sq / n) ** 0.5, "mae": ab / n}
