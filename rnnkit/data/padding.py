"""Variable-length sequences as the padded batches rnnkit's models read, and the glue that lets
any ``torch.utils.data.Dataset`` of ``(sequence, target)`` items feed them through a standard
``DataLoader``.

* :func:`pad_sequences` — a list of arrays or tensors of shapes (L_b, …) → one (T, B, …) tensor
  (or (B, T, …) with ``batch_first``) and the lengths (B,);
* :class:`SequenceCollate` — a DataLoader's ``collate_fn``: pads the sequences, and the targets
  too where they are per-step; :func:`collate_sequences` is one with the default settings;
* :class:`SequenceDataset` — a ``Dataset`` over a list of sequences and their targets (what
  ``TensorDataset`` cannot hold when the lengths differ).

Example::

    from torch.utils.data import DataLoader
    from rnnkit.data import SequenceDataset, collate_sequences

    loader = DataLoader(SequenceDataset(arrays, labels), batch_size=32, shuffle=True,
                        collate_fn=collate_sequences)
    for x, lengths, y in loader:   # x (T, B, I) float32, lengths (B,) int64, y (B,) int64
        logits = model(x, lengths)

Symbols: B sequences in the batch, L_b the length of sequence b, T = max L_b, F… each step's
feature shape (none for scalar steps such as token ids).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

__all__ = ["Padded", "PaddedBatch", "pad_sequences", "SequenceCollate", "collate_sequences", "SequenceDataset"]


class Padded(NamedTuple):
    """What :func:`pad_sequences` returns: ``data`` (T, B, …) (or (B, T, …)) and ``lengths``
    (B,) int64, each sequence's own number of steps."""

    data: Tensor
    lengths: Tensor


class PaddedBatch(NamedTuple):
    """One batch from :class:`SequenceCollate`: ``x`` (T, B, …) (or (B, T, …)), ``lengths`` (B,)
    int64, and ``y``, the targets — (B,) or (B, …) stacked, (T, B, …) padded when per-step, or
    None for items without targets. Unpacks as ``x, lengths, y = batch``."""

    x: Tensor
    lengths: Tensor
    y: Tensor | None


def _as_tensor(item: Any, k: int, owner: str, what: str = "sequence") -> Tensor:
    """Item ``k`` as a tensor (NumPy arrays and nested lists of numbers are converted), or a
    TypeError naming it."""
    if isinstance(item, Tensor):
        t = item
    elif isinstance(item, (np.ndarray, np.generic, list, tuple, int, float)) and not isinstance(item, bool):
        arr = np.asarray(item)
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
            raise TypeError(f"{owner}: {what} {k} must hold numbers, got an array of dtype {arr.dtype}")
        t = torch.from_numpy(arr if arr.flags.c_contiguous else arr.copy())  # (ascontiguousarray makes 0-d 1-d)
    else:
        raise TypeError(f"{owner}: {what} {k} must be a NumPy array or a tensor, got {type(item).__name__}")
    if t.is_complex():
        raise TypeError(f"{owner}: {what} {k} must hold real numbers, got dtype {t.dtype}")
    return t


def _result_dtype(tensors: Sequence[Tensor], dtype: torch.dtype | None) -> torch.dtype:
    """The given dtype; else torch's default float dtype if any tensor holds floats (NumPy's
    float64 included: model parameters are float32), else int64 (or bool if all are bool)."""
    if dtype is not None:
        return dtype
    if any(t.is_floating_point() for t in tensors):
        return torch.get_default_dtype()
    if all(t.dtype == torch.bool for t in tensors):
        return torch.bool
    return torch.long


def pad_sequences(
    sequences: Sequence[Any],
    *,
    batch_first: bool = False,
    padding_value: float = 0.0,
    dtype: torch.dtype | None = None,
) -> Padded:
    """Pad variable-length sequences into one tensor, with their lengths.

    Args:
        sequences: B arrays or tensors of shapes (L_b, F…) — NumPy arrays, tensors or nested
            lists of numbers, ragged lengths in any order (not sorted), the same feature shape
            F… (any number of dimensions, none for scalar steps such as token ids); L_b ≥ 1.
        batch_first: return (B, T, F…) instead of the time-major (T, B, F…) the models read.
        padding_value: the value past each sequence's end.
        dtype: the result's dtype. None: floats become torch's default dtype (float32, the
            models' parameters' dtype, also from NumPy's float64), integers int64.

    Returns:
        :class:`Padded` ``(data, lengths)``: data (T, B, F…) with T = max L_b, on the
        sequences' device (the CPU for NumPy), and lengths (B,) int64 on the CPU.

    Raises ``ValueError`` for an empty list, a sequence without steps, or feature shapes that
    differ; ``TypeError`` for an item that is not an array of numbers.
    """
    owner = "pad_sequences"
    if isinstance(sequences, (Tensor, np.ndarray)) or not isinstance(sequences, Sequence) or isinstance(sequences, str):
        raise TypeError(f"{owner}: sequences must be a list of arrays or tensors, got {type(sequences).__name__}")
    if len(sequences) == 0:
        raise ValueError(f"{owner}: sequences is empty; expected at least one array of shape (L, …)")
    tensors = [_as_tensor(s, k, owner) for k, s in enumerate(sequences)]
    features = None
    for k, t in enumerate(tensors):
        if t.dim() == 0:
            raise ValueError(f"{owner}: sequence {k} is a scalar; expected shape (L, …) with L steps first")
        if t.shape[0] == 0:
            raise ValueError(f"{owner}: sequence {k} has no steps (shape {tuple(t.shape)}); models need lengths ≥ 1")
        if features is None:
            features = tuple(t.shape[1:])
        elif tuple(t.shape[1:]) != features:
            raise ValueError(
                f"{owner}: sequence {k} has feature shape {tuple(t.shape[1:])} (shape {tuple(t.shape)}), "
                f"expected {features} like sequence 0"
            )
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        raise ValueError(f"{owner}: the sequences are on several devices {sorted(map(str, devices))}; expected one")
    dtype = _result_dtype(tensors, dtype)
    lengths = torch.tensor([t.shape[0] for t in tensors], dtype=torch.long)
    T, B = int(lengths.max()), len(tensors)
    out = torch.full((T, B, *features), padding_value, dtype=dtype, device=tensors[0].device)  # (T, B, F…)
    for b, t in enumerate(tensors):
        out[: t.shape[0], b] = t.to(dtype)
    if batch_first:
        out = out.transpose(0, 1).contiguous()  # (B, T, F…)
    return Padded(out, lengths)


class SequenceCollate:
    """A ``collate_fn`` for ``torch.utils.data.DataLoader``: pads a list of dataset items into a
    :class:`PaddedBatch` ``(x, lengths, y)`` that rnnkit's models and
    :mod:`rnnkit.train.supervised`'s step functions read.

    An item is a ``(sequence, target)`` pair (a tuple or list), or a bare sequence (then y is
    None). The sequence is an array or tensor (L, F…) as for :func:`pad_sequences`. The target
    may be

    * a class id (a Python int, a 0-d array or tensor) → y (B,) int64;
    * a number or a vector of floats (O,) → y (B,) or (B, O), stacked;
    * a per-step sequence (L, …) — a label or a value for every step of its sequence → y
      (T, B, …) (or (B, T, …) with ``batch_first``), padded with ``target_padding_value``.

    Args:
        batch_first: x (and per-step y) as (B, T, …) instead of (T, B, …).
        padding_value: x's value past each sequence's end.
        target_padding_value: per-step y's value past each end; None: −100 for integer labels
            (``F.cross_entropy``'s ``ignore_index``), 0 for floats. The step functions of
            :mod:`rnnkit.train.supervised` mask by ``lengths`` either way.
        per_step: whether targets are per-step sequences. None: decided on the first batch —
            per-step when every target's leading size equals its sequence's length — and kept
            for every later batch (a later batch that disagrees is an error). Set it when
            per-sequence vectors can have a sequence's length by chance.
        dtype: x's dtype (None: float32 for floats, int64 for integers; see
            :func:`pad_sequences`). Float targets become torch's default dtype, integer ones
            int64.

    A plain object, not a closure, so a DataLoader with ``num_workers`` > 0 can pickle it.
    """

    def __init__(
        self,
        *,
        batch_first: bool = False,
        padding_value: float = 0.0,
        target_padding_value: float | None = None,
        per_step: bool | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if per_step not in (None, True, False):
            raise ValueError(f"SequenceCollate: per_step must be True, False or None, got {per_step!r}")
        self.batch_first, self.padding_value, self.dtype = bool(batch_first), padding_value, dtype
        self.target_padding_value, self.per_step = target_padding_value, per_step

    def __call__(self, items: Sequence[Any]) -> PaddedBatch:
        owner = "SequenceCollate"
        if not isinstance(items, Sequence) or len(items) == 0:
            raise ValueError(f"{owner}: expected a non-empty list of dataset items, got {items!r:.80}")
        paired = [_is_pair(item) for item in items]
        if any(paired) and not all(paired):
            k = paired.index(False)
            raise TypeError(
                f"{owner}: item {k} is not a (sequence, target) pair like item {paired.index(True)}; "
                f"got {type(items[k]).__name__}"
            )
        if not all(paired):
            x, lengths = pad_sequences(
                items, batch_first=self.batch_first, padding_value=self.padding_value, dtype=self.dtype
            )
            return PaddedBatch(x, lengths, None)
        x, lengths = pad_sequences(
            [item[0] for item in items],
            batch_first=self.batch_first,
            padding_value=self.padding_value,
            dtype=self.dtype,
        )
        targets = [_as_tensor(item[1], k, owner, "target") for k, item in enumerate(items)]
        return PaddedBatch(x, lengths, self._targets(targets, lengths, owner))

    def _targets(self, targets: list[Tensor], lengths: Tensor, owner: str) -> Tensor:
        matches = all(t.dim() >= 1 and t.shape[0] == int(n) for t, n in zip(targets, lengths))
        if self.per_step is None:
            self.per_step = matches  # decided once, so every batch of a loader has one layout
        if self.per_step:
            if not matches:
                k = next(k for k, (t, n) in enumerate(zip(targets, lengths)) if t.dim() < 1 or t.shape[0] != int(n))
                raise ValueError(
                    f"{owner}: per-step targets must have their sequence's length first; target {k} has "
                    f"shape {tuple(targets[k].shape)}, its sequence {int(lengths[k])} steps"
                )
            dtype = _result_dtype(targets, None)
            pad = self.target_padding_value
            if pad is None:
                pad = 0.0 if dtype.is_floating_point else -100
            return pad_sequences(targets, batch_first=self.batch_first, padding_value=pad, dtype=dtype).data
        shapes = {tuple(t.shape) for t in targets}
        if len(shapes) > 1:
            raise ValueError(
                f"{owner}: targets of one per sequence must all have one shape, got {sorted(shapes)}"
                + (" (per_step=False was set)" if matches else "")
            )
        return torch.stack([t.to(_result_dtype(targets, None)) for t in targets])  # (B, …)

    def __repr__(self) -> str:
        return (
            f"SequenceCollate(batch_first={self.batch_first}, padding_value={self.padding_value}, "
            f"target_padding_value={self.target_padding_value}, per_step={self.per_step})"
        )


def _is_pair(item: Any) -> bool:
    """A (sequence, target) item: a 2-tuple, or a 2-list whose first element is an array (a
    2-step sequence written as a nested list is a sequence, not a pair)."""
    if isinstance(item, tuple):
        return len(item) == 2
    return isinstance(item, list) and len(item) == 2 and isinstance(item[0], (Tensor, np.ndarray))


def collate_sequences(items: Sequence[Any]) -> PaddedBatch:
    """``SequenceCollate()(items)``: pad a list of ``(sequence, target)`` items time-major with
    zeros (see :class:`SequenceCollate`; a fresh one per call, so the per-step guess is made
    for each batch — give a :class:`SequenceCollate` to fix it for a whole loader)."""
    return SequenceCollate()(items)


class SequenceDataset(torch.utils.data.Dataset):
    """A map-style ``Dataset`` of ``(sequence, target)`` items over lists that may be ragged.

    Args:
        sequences: N arrays or tensors (L_n, F…), lengths in any order.
        targets: N targets (class ids, vectors, per-step sequences), or None for items that are
            bare sequences.

    Items are returned as given (NumPy stays NumPy); :class:`SequenceCollate` converts them.
    """

    def __init__(self, sequences: Sequence[Any], targets: Sequence[Any] | None = None) -> None:
        if targets is not None and len(targets) != len(sequences):
            raise ValueError(
                f"SequenceDataset: {len(sequences)} sequences but {len(targets)} targets; expected one each"
            )
        self.sequences, self.targets = sequences, targets

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, index: int) -> Any:
        if self.targets is None:
            return self.sequences[index]
        return self.sequences[index], self.targets[index]
