r"""Captioning, one-to-many (Goodfellow et al., figure 10.9): scikit-learn's shipped 8×8 digit
images, each written out as its digit's English name one character at a time (``"zero"``,
``"one"``, …) by a decoder conditioned on the image (:class:`rnnkit.models.VectorToSequence`).

.. math::
    h(t) = \mathrm{layer}\big([e(y(t-1));\ v],\ h(t-1)\big), \quad h(0) = \tanh(W_c v + b_c), \quad
    P(y(t) \mid y(<t), v) = \mathrm{softmax}\big(c + V h(t)\big), \qquad
    L = -\tfrac{1}{\sum_b U_b} \textstyle\sum_{b,t} \log P(y_b(t) \mid y_b(<t), v_b)

where v is the image's 64 pixels scaled to [0, 1] (the image's features; no image encoder).
``--condition`` says where v enters: ``init`` (h(0) only), ``input`` (every step's input only,
h(0) = 0) or ``both``. Training is teacher-forced (one batched pass). Evaluation captions every
held-out image by greedy decoding and by beam search and scores both by exact match (the
headline: greedy) and character error rate (:func:`char_error_rate`); the baseline writes the
most frequent training caption (on a tie, the lowest digit's) for every image. The split is
the digits task's for the same seed (:func:`rnnkit.data.datasets.digits`).

Symbols: B batch, C = 64 pixels, U caption length (EOS included, at most 6), E embedding, H
hidden, V vocabulary (the letters of the ten names, after PAD, BOS, EOS).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from ..cells.registry import make_cell
from ..compose import Stack
from ..data.corpus import DataError
from ..data.datasets import Split, digits
from ..data.text import BOS, EOS, TokenVocab, char_error_rate, edit_distance, exact_match, pad_batch  # noqa: F401
from ..generate import generate
from ..models import VectorToSequence, sequence_nll
from ..models.conditioning import CONTEXT_MODES
from ..train import StepResult
from ..train.device import model_device, to_device
from .base import Task, TaskConfig
from .batching import Minibatches, chunks

NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")  # the caption of each class
VOCAB = TokenVocab(sorted(set("".join(NAMES))))
PIXELS = 64  # C, the image as a vector
EVAL_BATCH = 500  # images captioned at once
LENGTH_MARGIN = 4  # characters a caption may run past the longest name before decoding stops
SHADES = " .:-=+*#%@"  # pixel value 0 … 1 → character, for printing an image
SHOWN = 3  # test images `rnnkit sample` shows when no --prime picks them


@dataclass
class CaptionConfig(TaskConfig):
    condition: str = "init"  # where the image v enters the decoder: init (h(0)), input (every step) or both
    embedding_size: int = 16  # E, the character embeddings fed back
    beam_width: int = 4  # hypotheses kept by the beam search at evaluation
    hidden_size: int = 64  # units per recurrent layer
    batch_size: int = 64  # images per update
    lr: float = 3e-3  # learning rate
    max_steps: int | None = 1500  # updates; None: until max_time
    eval_every: int = 250  # updates between validations (greedy and beam captions of the val images)

    def check(self) -> None:
        super().check()
        if self.condition not in CONTEXT_MODES:
            raise ValueError(f"condition must be one of {', '.join(CONTEXT_MODES)}, got {self.condition!r}")
        for name in ("embedding_size", "beam_width"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")


class Images(NamedTuple):
    """The captioned images of one split: images (N, C) float in [0, 1], labels (N,) int64."""

    images: Tensor
    labels: Tensor


class Batch(NamedTuple):
    """A training batch: images (B, C), captions (U, B) int64 (the name, EOS, then PAD; the
    decoder prepends BOS itself), lengths (B,) EOS included."""

    images: Tensor
    captions: Tensor
    lengths: Tensor


def as_images(split: Split) -> Images:
    """A digits split (rows (8, N, 8)) as image vectors (N, 64), row-major."""
    rows = split.inputs  # (8, N, 8)
    return Images(rows.permute(1, 0, 2).reshape(rows.shape[1], PIXELS).contiguous(), split.targets)


CAPTIONS, CAPTION_LENGTHS = pad_batch([VOCAB.encode(name, eos=True) for name in NAMES])  # (U, 10), (10,)


def take(split: Images, idx: Tensor) -> Batch:
    """The images ``idx`` of a split with their captions, trimmed to the longest of them."""
    labels = split.labels[idx]
    lengths = CAPTION_LENGTHS[labels]  # (B,)
    return Batch(split.images[idx], CAPTIONS[: int(lengths.max()), labels], lengths)  # (B, C), (U, B), (B,)


def render(image: Tensor) -> list[str]:
    """An image (C,) in [0, 1] as 8 lines of text, each pixel two characters wide."""
    shade = (image.clamp(0, 1) * (len(SHADES) - 1)).round().long().view(8, 8)
    return ["".join(SHADES[int(k)] * 2 for k in row) for row in shade]


def beside(image: Tensor, notes: list[str]) -> list[str]:
    """The image's rendering with ``notes`` to its right, centred on it."""
    rows = render(image)
    first = max(0, (len(rows) - len(notes)) // 2)
    height = max(len(rows), first + len(notes))
    rows += [" " * len(rows[0])] * (height - len(rows))
    notes = [""] * first + notes + [""] * (height - first - len(notes))
    return [f"  {row}  {note}".rstrip() for row, note in zip(rows, notes)]


@torch.no_grad()
def caption(
    model: VectorToSequence,
    images: Tensor,
    *,
    max_length: int,
    method: str = "greedy",
    beam_width: int = 4,
    n_best: int = 1,
    **sampling,
) -> list[list[tuple[str, float]]]:
    """Caption every image (N, C) with ``generate`` (ending at EOS): for each image its
    ``n_best`` captions with their scores, best first (one for greedy decoding and sampling).
    The images may live on the CPU; each batch of them is moved to the model's device."""
    out: list[list[tuple[str, float]]] = []
    device = model_device(model)
    for s in chunks(images.shape[0], EVAL_BATCH):
        v = to_device(images[s], device)  # (B, C)
        got = generate(
            model,
            max_length=max_length,
            method=method,
            beam_width=beam_width,
            n_best=n_best,
            end="eos",
            context=v,
            **sampling,
        )
        tokens, lengths, scores = got.tokens, got.lengths, got.scores
        if n_best == 1:  # Generated (B, L) → the same as one hypothesis each, (B, 1, L)
            tokens, lengths, scores = tokens.unsqueeze(1), lengths.unsqueeze(1), scores.unsqueeze(1)
        for row, ns, ss in zip(tokens, lengths.tolist(), scores.tolist()):
            out.append([(VOCAB.decode(r[:n]), sc) for r, n, sc in zip(row, ns, ss) if n > 0])
    return out


class CaptionTask(Task):
    """Digit images → their names, one character at a time (see the module docstring)."""

    name = "caption"
    summary = (
        "captioning: an 8×8 digit image conditions a decoder that writes its name (exact match and CER, greedy vs beam)"
    )
    Config = CaptionConfig
    metric = "exact_match"
    higher_is_better = True
    sample_hint = "--prime 0,1,2 --method beam --n-best 3"  # what `rnnkit train` suggests after training

    def prepare(self, log) -> None:
        cfg = self.cfg
        rows = digits("rows", seed=cfg.seed)
        self.data = {s: as_images(getattr(rows, s)) for s in ("train", "val", "test")}  # split → Images
        self.max_length = int(CAPTION_LENGTHS.max()) + LENGTH_MARGIN
        counts = torch.bincount(self.data["train"].labels, minlength=len(NAMES))
        self.majority = NAMES[int(counts.argmax())]  # on a tie the lowest digit (argmax takes the first)
        self.baselines = {}
        for s in ("val", "test"):
            refs = self.references(s)
            guess = [self.majority] * len(refs)
            self.baselines[s] = {"exact_match": exact_match(guess, refs), "cer": char_error_rate(guess, refs)}
        self.baseline = self.baselines["val"]
        n = {s: split.labels.numel() for s, split in self.data.items()}
        log(
            f"caption: {n['train']} / {n['val']} / {n['test']} images (8×8, v = {PIXELS} pixels) → their names, "
            f"vocabulary {len(VOCAB)}; the image enters the decoder as {cfg.condition}"
        )
        log(
            f"  baseline (always {self.majority!r}, the most frequent training caption): "
            + "; ".join(
                f"{s} exact match {b['exact_match']:.3f}, CER {b['cer']:.3f}" for s, b in self.baselines.items()
            )
        )

    def references(self, split: str) -> list[str]:
        """The true captions of a split's images."""
        return [NAMES[k] for k in self.data[split].labels.tolist()]

    def build_model(self) -> VectorToSequence:
        cfg = self.cfg
        E = cfg.embedding_size
        width = E + (PIXELS if cfg.condition in ("input", "both") else 0)
        layer = Stack.build(
            lambda i, h: make_cell(cfg.cell, i, h), width, cfg.hidden_size, cfg.num_layers, dropout=cfg.dropout
        )
        self.model = VectorToSequence(
            layer, PIXELS, context_mode=cfg.condition, vocab_size=len(VOCAB), embedding_size=E, bos=BOS, eos=EOS
        )
        return self.model

    def describe(self, model) -> str:
        return f"{super().describe(model)}; image as {self.cfg.condition}"

    def batches(self) -> Minibatches:
        train = self.data["train"]
        return Minibatches(train.labels.numel(), self.cfg.batch_size, self.cfg.seed, lambda idx, _: take(train, idx))

    def step(self, model: VectorToSequence, batch: Batch) -> StepResult:
        logits = model(batch.captions, batch.images, batch.lengths).logits  # (U, B, V): teacher forcing
        loss = sequence_nll(logits, batch.captions, batch.lengths, "mean")
        return StepResult(loss, items=int(batch.lengths.sum()), sequences=batch.images.shape[0])

    @torch.no_grad()
    def evaluate(self, model: VectorToSequence, split: str = "val") -> dict[str, float]:
        """Teacher-forced loss (nats/character), and exact match and character error rate of
        greedy and beam captions on ``split`` ("val" or "test"); ``baseline`` becomes that split's."""
        if split not in ("val", "test"):
            raise ValueError(f"caption: split must be 'val' or 'test', got {split!r}")
        self.baseline = self.baselines[split]
        data = self.data[split]
        total, count = 0.0, 0
        device = model_device(model)
        for s in chunks(data.labels.numel(), EVAL_BATCH):
            b = to_device(take(data, torch.arange(s.start, s.stop)), device)
            logits = model(b.captions, b.images, b.lengths).logits  # (U, B, V)
            total += float(sequence_nll(logits, b.captions, b.lengths, "sum"))
            count += int(b.lengths.sum())
        out = {"loss": total / count}
        refs = self.references(split)
        for method, prefix in (("greedy", ""), ("beam", "beam_")):
            found = caption(
                model, data.images, max_length=self.max_length, method=method, beam_width=self.cfg.beam_width
            )
            hyps = [c[0][0] if c else "" for c in found]  # none: no hypothesis ended (beam search, all −∞)
            out[f"{prefix}exact_match"] = exact_match(hyps, refs)
            out[f"{prefix}cer"] = char_error_rate(hyps, refs)
        return out

    def _test_images(self) -> Images:
        """The test split, read again when the task came from a checkpoint (no prepare)."""
        if not hasattr(self, "data"):
            self.data = {"test": as_images(digits("rows", seed=self.cfg.seed).test)}
        return self.data["test"]

    def sample_text(
        self,
        model: VectorToSequence,
        prime: str = "",
        length: int = 20,
        method: str = "greedy",
        beam_width: int = 4,
        n_best: int = 1,
        **sampling,
    ) -> str:
        """Test images printed beside their captions (up to ``length`` characters each).

        ``prime`` picks the images: test-split numbers separated by commas or spaces
        (``"0,7,12"``); blank: the first three. With ``n_best`` > 1 (beam search) each image's
        ``n_best`` best captions are listed with their scores (log p / L^α)."""
        test = self._test_images()
        text = prime.replace(",", " ").split()
        if not all(t.isdigit() for t in text):
            raise DataError(f"caption: the prime must be test image numbers like '0,7,12', got {prime!r}")
        picked = [int(t) for t in text] or list(range(SHOWN))
        n = test.labels.numel()
        if any(k >= n for k in picked):
            raise DataError(f"caption: the test split has images 0 … {n - 1}, got {max(picked)}")
        idx = torch.tensor(picked)
        found = caption(
            model, test.images[idx], max_length=length, method=method, beam_width=beam_width, n_best=n_best, **sampling
        )
        blocks = []
        for k, image, label, hyps in zip(picked, test.images[idx], test.labels[idx].tolist(), found):
            if n_best == 1:
                notes = [f"→ {hyps[0][0] if hyps else ''}"]
            else:
                notes = [f"{r}. {h}  ({score:.3f})" for r, (h, score) in enumerate(hyps, 1)]
            blocks.append("\n".join([f"test image {k} (a {NAMES[label]}):", *beside(image, notes)]))
        return "\n\n".join(blocks)

    def final_sample(self, result: dict) -> str:
        """The first test images captioned by the trained model (greedy), marked right or wrong."""
        test = self.data["test"]
        found = caption(self.model, test.images[:SHOWN], max_length=self.max_length)
        blocks = []
        for image, label, hyps in zip(test.images, test.labels.tolist(), found):
            got = hyps[0][0] if hyps else ""
            mark = "✓" if got == NAMES[label] else f"✗ (a {NAMES[label]})"
            blocks.append("\n".join(beside(image, [f"→ {got}  {mark}"])))
        return "\n\n".join(blocks)
