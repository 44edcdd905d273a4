"""Where a run computes: the ``device`` setting, resolved and checked, and moving batches there.

A run's config keeps the device as the user asked for it (``"auto"``, ``"cpu"``, ``"cuda"``,
``"cuda:N"``); :func:`resolve_device` turns that into the device of this machine, so the same
config (and checkpoint, which holds only CPU tensors) trains on a laptop and on a GPU server.
Data stays on the CPU until a step or an evaluation needs it: :func:`to_device` moves a batch
of any shape (a tensor, a NamedTuple such as :class:`~rnnkit.train.tbptt.Chunk`, tuples, lists,
dicts, dataclasses) to the model's device (:func:`model_device`).
"""

from __future__ import annotations

import copy
import dataclasses
import re
from typing import Any

import torch
from torch import Tensor, nn

#: The values the ``device`` setting takes, as shown in its error.
DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")

_DEVICE = re.compile(r"(auto|cpu|cuda)(?::(\d+))?")


def check_device(spec: Any) -> str:
    """``spec`` if it is a device setting this library reads, else a ValueError naming it and
    the choices. Nothing about this machine is looked at (see :func:`resolve_device`)."""
    match = _DEVICE.fullmatch(spec) if isinstance(spec, str) else None
    if match is None or (match.group(2) is not None and match.group(1) != "cuda"):
        raise ValueError(f"device must be one of {', '.join(DEVICE_CHOICES)} (N a GPU index), got {spec!r}")
    return spec


def resolve_device(spec: str) -> torch.device:
    """The device a run with setting ``spec`` uses on this machine.

    ``"auto"``: ``cuda`` when :func:`torch.cuda.is_available`, else ``cpu``; ``"cpu"``;
    ``"cuda"`` (the current GPU) or ``"cuda:N"``, which must exist here: asking for CUDA on a
    machine without it (or for a GPU index beyond its count) is a ValueError saying so, never a
    silent fall-back to the CPU.
    """
    check_device(spec)
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = (
                f"torch {torch.__version__} is built without CUDA"
                if torch.version.cuda is None
                else "no CUDA device is visible"
            )
            raise ValueError(
                f"device {spec!r} asked for, but CUDA is not available here: {why}; use device 'cpu' or 'auto'"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(
                f"device {spec!r} asked for, but this machine has {count} CUDA device(s): cuda:0 … cuda:{count - 1}"
            )
    return device


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter (or buffer); the CPU for a model with neither."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def to_device(obj: Any, device: str | torch.device, non_blocking: bool = False) -> Any:
    """``obj`` with every tensor in it moved to ``device``.

    Walks tensors inside NamedTuples, tuples, lists, dicts and dataclass instances, to any
    depth; everything else (ints, strings, None, generators…) is kept as it is. A tensor already
    on ``device`` is kept itself (not copied), and a container none of whose tensors moved is
    returned itself, so on the device the data already lives on this costs nothing.
    ``non_blocking`` is passed to :meth:`torch.Tensor.to` (an asynchronous copy from pinned
    memory).
    """
    device = torch.device(device)
    return _move(obj, device, non_blocking)


def _move(obj: Any, device: torch.device, non_blocking: bool) -> Any:
    if isinstance(obj, Tensor):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, (tuple, list)):
        items = [_move(v, device, non_blocking) for v in obj]
        if all(a is b for a, b in zip(items, obj)):
            return obj
        if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a NamedTuple
            return type(obj)(*items)
        return type(obj)(items)
    if isinstance(obj, dict):
        items = {k: _move(v, device, non_blocking) for k, v in obj.items()}
        if all(items[k] is v for k, v in obj.items()):
            return obj
        moved = copy.copy(obj)  # keeps the dict's own type (OrderedDict, defaultdict's factory)
        moved.update(items)
        return moved
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {}
        for f in dataclasses.fields(obj):
            if f.init:
                value = getattr(obj, f.name)
                new = _move(value, device, non_blocking)
                if new is not value:
                    changes[f.name] = new
        return dataclasses.replace(obj, **changes) if changes else obj
    return obj


__all__ = ["DEVICE_CHOICES", "check_device", "resolve_device", "model_device", "to_device"]
