r"""Checkpoints that cannot run code on load: one safetensors file per checkpoint, written atomically.

A training run is saved as **one** ``.safetensors`` file, so that one atomic rename replaces the
whole checkpoint: the tensors (weights, optimizer moments, RNG states) are safetensors tensors,
everything else (config, vocabulary, step, data position, metrics, optimizer hyper-parameters,
scheduler counters, numpy/python RNG states) is JSON in the header. Loading parses JSON and raw
tensor bytes only; nothing is ever unpickled, so a checkpoint cannot execute code. A pickle or
``torch.save`` file is refused with :class:`CheckpointError` before any of it is interpreted.

Format, version 1
-----------------
Tensor keys (every tensor is stored contiguous, on the CPU, in its own dtype):

========================  ===================================================================
``model.<name>``          every entry of ``model.state_dict()`` (parameters, persistent buffers)
``optimizer.<path>``      the tensors of ``optimizer.state_dict()``, e.g.
                          ``optimizer.state.0.exp_avg``, ``optimizer.state.0.step``
``scheduler.<path>``      the tensors of ``scheduler.state_dict()`` (only tensor learning rates)
``rng.torch``             torch's CPU generator state (uint8)
``rng.cuda.<i>``          the generator state of CUDA device i (uint8), when CUDA is available
``generators.<name>``     the state of each ``torch.Generator`` passed as ``generators=``
``extra.<name>.<path>``   the tensors of each ``extra=`` object's ``state_dict()`` (e.g. the
                          state a truncated-BPTT step carries from one chunk to the next)
========================  ===================================================================

The safetensors header metadata holds a single key, ``"rnnkit"``, whose value is a JSON document
(keys in the writer's order; a reader refuses any ``format``/``version`` but its own):

.. code-block:: text

    {
      "format": "rnnkit.checkpoint",
      "version": 1,
      "meta": {...},                       # the caller's JSON dict, as given (tuples become lists)
      "model": {"class": "CharLM", "tensors": ["embed.weight", ...]},
      "optimizer": null | {"class": "Adam",
                           "param_shapes": [[[4, 3], [4]], ...],   # per param group, per parameter
                           "state": <encoded optimizer.state_dict()>},
      "scheduler": null | {"class": "StepLR", "state": <encoded scheduler.state_dict()>},
      "rng": null | {"torch": {"__tensor__": "rng.torch"},
                     "cuda": [{"__tensor__": "rng.cuda.0"}, ...],
                     "numpy": {"bit_generator": "MT19937", "key": [624 ints], "pos": int,
                               "has_gauss": int, "cached_gaussian": float},
                     "python": [version, [625 ints], gauss_next]},
      "generators": {"<name>": {"__tensor__": "generators.<name>"}, ...},
      "extra": {"<name>": {"class": "TBPTTStep", "state": <encoded state_dict()>}, ...},
      "torch": "2.13.0",                   # the writer's torch version; informative only
      "checksum": {"header": "<sha256>", "tensors": "<sha256>"}
    }

*Encoded* state dicts are JSON plus three tags for what JSON cannot say, so that a state dict
comes back identical (``==``, same types): ``{"__tensor__": key}`` (a tensor stored under
``key``), ``{"__tuple__": [...]}`` (a tuple, e.g. Adam's betas) and ``{"__dict__": [[k, v], ...]}``
(a dict with non-string keys, e.g. the parameter indices of ``optimizer.state``, or a dict whose
only key is one of the tags). Values other than None, bool, int, float, str, list, tuple, dict
and tensors are refused with :class:`CheckpointError` rather than pickled. Non-finite floats are
written as Python's json does (``NaN``, ``Infinity``).

Checksums (SHA-256): ``header`` covers the JSON document without its ``checksum`` entry, dumped
canonically (``sort_keys``, no spaces, ASCII); ``tensors`` covers every tensor in key order,
each as ``"<key>\0<dtype>\0<shape>\0"`` followed by its raw bytes. Both are verified on load, so a
flipped byte anywhere in the file, or a hand-edited header, is refused.

Atomic writes
-------------
:func:`save_checkpoint` writes ``<folder>/.<name>.tmp-<pid>`` (same folder, so the rename cannot
cross file systems), flushes and fsyncs it, ``os.replace``\ s it onto ``<name>`` and fsyncs the
folder. A process killed at any moment leaves the previous checkpoint whole and loadable; it may
leave its temporary file behind, which nothing here ever reads (it is hidden and does not end in
``.safetensors``); :func:`leftover_temp_files` lists such files for whoever cleans up. One writer
per target path per process at a time.

Loading is all-or-nothing: :func:`load_checkpoint` reads the whole file into memory once (what
is verified is what is loaded), verifies it, checks it against every object it is asked to fill
and against ``expect``, collects every mismatch into one :class:`CheckpointError`, and only then
loads anything. :func:`read_meta` reads the header alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import Tensor, nn

FORMAT = "rnnkit.checkpoint"
VERSION = 1
LATEST = "latest.safetensors"
BEST = "best.safetensors"

_META_KEY = "rnnkit"
_TAGS = ("__tensor__", "__tuple__", "__dict__")
# safetensors itself refuses headers over 100 MB; a larger length field means "not safetensors"
_MAX_HEADER = 100_000_000
_ZIP_MAGIC = b"PK\x03\x04"


class CheckpointError(ValueError):
    """A checkpoint that cannot be written or must not be loaded; the message names the file and why."""


# --------------------------------------------------------------------------- names


def checkpoint_paths(folder: str | os.PathLike) -> dict[str, Path]:
    """The conventional checkpoint files of a run folder: ``{"latest": …, "best": …}``.

    By convention ``latest.safetensors`` is the most recent save (resume from it) and
    ``best.safetensors`` the one with the best validation score so far (sample and evaluate from it).
    """
    folder = Path(folder)
    return {"latest": folder / LATEST, "best": folder / BEST}


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def leftover_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Temporary files of saves that were killed before their rename (``.<name>.tmp-<pid>``).

    They are never read by this module; a successful save leaves none of its own. Delete them
    only when no process is still saving into ``folder``.
    """
    return sorted(Path(folder).glob(".*.tmp-*"))


# --------------------------------------------------------------------------- RNG states


def rng_state() -> dict:
    """Every global random state a training step draws from.

    Returns ``{"torch": uint8 tensor, "cuda": [uint8 tensor per device], "numpy": dict,
    "python": list}``: torch's CPU generator, each CUDA device's generator (an empty list without
    CUDA), numpy's legacy global ``RandomState`` and Python's ``random``, the last two as JSON.
    """
    _, key, pos, has_gauss, cached = np.random.get_state(legacy=True)
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": {
            "bit_generator": "MT19937",
            "key": [int(k) for k in key],
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": [version, list(internal), gauss_next],
    }


def _prepare_rng_state(state: Mapping) -> tuple[Tensor, list[Tensor], tuple, tuple]:
    """Check a :func:`rng_state` dict on throw-away generators; raise ValueError naming what is wrong."""
    if not isinstance(state, Mapping) or set(state) != {"torch", "cuda", "numpy", "python"}:
        got = sorted(state) if isinstance(state, Mapping) else type(state).__name__
        raise ValueError(f"rng state: expected the keys ['cuda', 'numpy', 'python', 'torch'], got {got}")
    cpu = state["torch"]
    if not isinstance(cpu, Tensor) or cpu.dtype != torch.uint8:
        raise ValueError(f"rng state 'torch': expected a uint8 tensor, got {_describe_type(cpu)}")
    try:
        torch.Generator().set_state(cpu)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"rng state 'torch': {e}") from None
    cuda = list(state["cuda"])
    if torch.cuda.is_available():
        for i, t in enumerate(cuda[: torch.cuda.device_count()]):
            expected = torch.cuda.get_rng_state(i)
            if not isinstance(t, Tensor) or t.dtype != torch.uint8 or t.shape != expected.shape:
                raise ValueError(
                    f"rng state 'cuda'[{i}]: expected a uint8 tensor of shape "
                    f"{tuple(expected.shape)}, got {_describe_type(t)}"
                )
    try:
        np_state = state["numpy"]
        if np_state["bit_generator"] != "MT19937":
            raise ValueError(f"bit_generator {np_state['bit_generator']!r}, expected 'MT19937'")
        legacy = (
            "MT19937",
            np.asarray(np_state["key"], dtype=np.uint32),
            int(np_state["pos"]),
            int(np_state["has_gauss"]),
            float(np_state["cached_gaussian"]),
        )
        np.random.RandomState().set_state(legacy)
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        raise ValueError(f"rng state 'numpy': {e!r}") from None
    try:
        version, internal, gauss_next = state["python"]
        py_state = (version, tuple(internal), gauss_next)
        random.Random().setstate(py_state)
    except (TypeError, ValueError, OverflowError) as e:
        raise ValueError(f"rng state 'python': {e!r}") from None
    return cpu, cuda, legacy, py_state


def set_rng_state(state: Mapping) -> None:
    """Restore what :func:`rng_state` returned; every part is checked before any is set.

    CUDA states are restored for the devices both sides have; a different device count is
    warned about, since an exact resume then cannot be promised. Raises ValueError naming the
    part (``'torch'``, ``'cuda'``, ``'numpy'``, ``'python'``) that is malformed.
    """
    cpu, cuda, legacy, py_state = _prepare_rng_state(state)
    torch.set_rng_state(cpu)
    if torch.cuda.is_available():
        if len(cuda) != torch.cuda.device_count():
            warnings.warn(
                f"rng state holds {len(cuda)} CUDA generator(s), this machine has "
                f"{torch.cuda.device_count()}; restoring the first {min(len(cuda), torch.cuda.device_count())}",
                stacklevel=2,
            )
        for i, t in enumerate(cuda[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(t, i)
    elif cuda:
        warnings.warn(
            f"rng state holds {len(cuda)} CUDA generator(s) but CUDA is not available; not restored", stacklevel=2
        )
    np.random.set_state(legacy)
    random.setstate(py_state)


# --------------------------------------------------------------------------- JSON and tensors


def _describe_type(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    name = f"{type(value).__module__}.{type(value).__qualname__}".removeprefix("builtins.")
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + " …" + text[-3:]


def _plain_json(value: Any, where: str) -> Any:
    """``value`` as plain JSON (tuples → lists), or CheckpointError naming the first offending entry."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_plain_json(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise CheckpointError(f"{where}: key {k!r} is {_describe_type(k)}; JSON objects need string keys")
            out[k] = _plain_json(v, f"{where}[{k!r}]")
        return out
    hint = (
        " (store tensors in the model, or convert with .tolist())"
        if isinstance(value, Tensor)
        else (
            " (convert it, e.g. with float(x), int(x) or .tolist())"
            if isinstance(value, (np.generic, np.ndarray))
            else ""
        )
    )
    raise CheckpointError(f"{where} is {_describe_type(value)}, which is not JSON{hint}")


class _TensorStore:
    """Collects the tensors of a checkpoint: CPU, contiguous, no two sharing storage (safetensors' rule)."""

    def __init__(self) -> None:
        self.tensors: dict[str, Tensor] = {}
        self._storages: set[int] = set()

    def add(self, key: str, tensor: Tensor) -> str:
        base, n = key, 1
        while key in self.tensors:  # a path repeated through a '.' inside a name
            key, n = f"{base}#{n}", n + 1
        t = tensor.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        if not t.is_contiguous():
            t = t.contiguous()
        # tied weights, views and one tensor referenced twice share storage: store a copy
        if t.untyped_storage().nbytes() and t.untyped_storage().data_ptr() in self._storages:
            t = t.clone()
        self._storages.add(t.untyped_storage().data_ptr())
        self.tensors[key] = t
        return key


def _encode(value: Any, where: str, key: str, store: _TensorStore) -> Any:
    """A state dict as tagged JSON (see the module docstring); tensors go to ``store``."""
    if isinstance(value, Tensor):
        return {"__tensor__": store.add(key, value)}
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, f"{where}[{i}]", f"{key}.{i}", store) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{where}[{i}]", f"{key}.{i}", store) for i, v in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value) and not (len(value) == 1 and next(iter(value)) in _TAGS):
            return {k: _encode(v, f"{where}[{k!r}]", f"{key}.{k}", store) for k, v in value.items()}
        items = []
        for k, v in value.items():
            if isinstance(k, Tensor) or not (k is None or isinstance(k, (bool, int, float, str, tuple))):
                raise CheckpointError(f"{where}: key {k!r} is {_describe_type(k)}, which cannot be stored as JSON")
            items.append(
                [
                    _encode(k, f"{where} key {k!r}", f"{key}.{k}", store),
                    _encode(v, f"{where}[{k!r}]", f"{key}.{k}", store),
                ]
            )
        return {"__dict__": items}
    raise CheckpointError(
        f"{where} is {_describe_type(value)}, which cannot be stored as JSON "
        "(rnnkit never pickles: give it JSON values or tensors)"
    )


def _decode(value: Any, tensors: Mapping[str, Tensor], used: set[str]) -> Any:
    """Invert :func:`_encode`; raises KeyError/TypeError/ValueError on a malformed document."""
    if isinstance(value, list):
        return [_decode(v, tensors, used) for v in value]
    if isinstance(value, dict):
        if len(value) == 1 and next(iter(value)) in _TAGS:
            ((tag, inner),) = value.items()
            if tag == "__tensor__":
                if inner not in tensors:
                    raise KeyError(f"the header refers to tensor {inner!r}, which the file does not hold")
                used.add(inner)
                return tensors[inner]
            if tag == "__tuple__":
                return tuple(_decode(v, tensors, used) for v in inner)
            return {_decode(k, tensors, used): _decode(v, tensors, used) for k, v in inner}
        return {k: _decode(v, tensors, used) for k, v in value.items()}
    return value


def _canonical(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _tensor_digest(tensors: Mapping[str, Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key]
        h.update(f"{key}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        if t.numel():
            h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


# --------------------------------------------------------------------------- save


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    meta: Mapping | None = None,
    rng: bool = True,
    generators: Mapping[str, torch.Generator] | None = None,
    extra: Mapping[str, Any] | None = None,
    also: Sequence[str | os.PathLike] = (),
) -> Path:
    """Write one checkpoint file atomically; return its path.

    Args:
        path: the ``.safetensors`` file to (over)write; missing parent folders are created.
        model: its ``state_dict()`` (parameters and persistent buffers) is saved under ``model.*``.
        optimizer: its ``state_dict()``: tensors under ``optimizer.*``, the rest as JSON.
        scheduler: any LR scheduler (or object with ``state_dict``); its state must be JSON
            values or tensors (a scheduler holding e.g. a function is refused, never pickled).
        meta: a JSON dict — config, vocabulary, step, data position, metrics, task name…;
            checked up front, so a bad value fails before anything is written.
        rng: also save the global RNG states (:func:`rng_state`), for an exact resume.
        generators: named ``torch.Generator``\\ s of the caller (e.g. the data-order generator).
        extra: named objects with ``state_dict()`` whose state a run needs to continue exactly
            (JSON values and tensors, like a scheduler's), e.g. the state a truncated-BPTT step
            carries across chunks, or a sampling callback's generator.
        also: more paths to write the same bytes to (each atomically, after ``path``), so a
            checkpoint kept under two names is serialised once.

    Writes ``.<name>.tmp-<pid>`` in the same folder, fsyncs it, renames it onto ``path`` and
    fsyncs the folder: a kill at any moment leaves the previous file intact. On any error the
    temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    if not isinstance(model, nn.Module):
        raise TypeError(f"save_checkpoint: model must be a torch.nn.Module, got {_describe_type(model)}")
    if meta is None:
        meta = {}
    if not isinstance(meta, Mapping):
        raise CheckpointError(f"save_checkpoint: meta must be a dict, got {_describe_type(meta)}")
    meta = _plain_json(dict(meta), "meta")

    store = _TensorStore()
    model_keys = []
    for name, value in model.state_dict().items():
        if not isinstance(value, Tensor):
            raise CheckpointError(
                f"model.state_dict()[{name!r}] is {_describe_type(value)}, not a tensor; "
                "rnnkit checkpoints hold tensors and JSON only"
            )
        store.add(f"model.{name}", value)
        model_keys.append(name)
    doc: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "meta": meta,
        "model": {"class": type(model).__name__, "tensors": model_keys},
        "optimizer": None,
        "scheduler": None,
        "rng": None,
        "generators": {},
        "extra": {},
        "torch": torch.__version__.split("+")[0],
    }
    if optimizer is not None:
        doc["optimizer"] = {
            "class": type(optimizer).__name__,
            "param_shapes": [[list(p.shape) for p in g["params"]] for g in optimizer.param_groups],
            "state": _encode(optimizer.state_dict(), "optimizer.state_dict()", "optimizer", store),
        }
    if scheduler is not None:
        doc["scheduler"] = {
            "class": type(scheduler).__name__,
            "state": _encode(scheduler.state_dict(), "scheduler.state_dict()", "scheduler", store),
        }
    if rng:
        doc["rng"] = _encode(rng_state(), "rng_state()", "rng", store)
    for name, gen in (generators or {}).items():
        if not isinstance(name, str) or not isinstance(gen, torch.Generator):
            raise CheckpointError(
                f"save_checkpoint: generators must map names to torch.Generator, got {name!r}: {_describe_type(gen)}"
            )
        doc["generators"][name] = {"__tensor__": store.add(f"generators.{name}", gen.get_state())}
    for name, obj in (extra or {}).items():
        if not isinstance(name, str) or not callable(getattr(obj, "state_dict", None)):
            raise CheckpointError(
                f"save_checkpoint: extra must map names to objects with state_dict(), "
                f"got {name!r}: {_describe_type(obj)}"
            )
        doc["extra"][name] = {
            "class": type(obj).__name__,
            "state": _encode(obj.state_dict(), f"extra[{name!r}].state_dict()", f"extra.{name}", store),
        }

    doc["checksum"] = {"header": hashlib.sha256(_canonical(doc)).hexdigest(), "tensors": _tensor_digest(store.tensors)}
    try:
        # stored in the caller's key order (config files read naturally); hashed in canonical order
        text = json.dumps(doc, separators=(",", ":"), ensure_ascii=True)
        blob = safetensors.torch.save(store.tensors, metadata={_META_KEY: text})
    except Exception as e:  # e.g. a dtype safetensors cannot store
        raise CheckpointError(f"{path}: safetensors cannot store this checkpoint: {e}") from e
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, blob)
    for other in also:
        Path(other).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(other, blob)
    return path


def write_atomic(path: str | os.PathLike, blob: bytes) -> None:
    """Replace ``path`` by ``blob`` so that a kill at any moment leaves the old file or the new one:
    a temporary file in the same folder, fsynced, renamed onto ``path``, the folder fsynced."""
    path = Path(path)
    tmp = _temp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
    except BaseException:  # KeyboardInterrupt too: never leave our own temporary file behind
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_folder(path.parent)  # the rename itself survives a power cut


def _fsync_folder(folder: Path) -> None:
    if os.name != "posix":  # Windows cannot open a folder; its rename is durable enough
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems do not fsync folders; the rename has happened anyway
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- read


def _refuse(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"{path}: {why}")


def _not_ours(path: Path, head: bytes, why: str) -> CheckpointError:
    """The refusal of a file that is not (or no longer) one of ours; pickles are named as such."""
    if head.startswith(_ZIP_MAGIC):
        kind = "a zip archive as torch.save writes, with a pickle inside"
    elif head[:1] == b"\x80" and head[1:2] and 2 <= head[1] <= 5:
        kind = f"pickle protocol {head[1]}"
    else:
        return _refuse(path, f"{why}; rnnkit reads only the safetensors files it writes, and never unpickles")
    return _refuse(
        path,
        f"not an rnnkit checkpoint (looks like a pickle: {kind}; rnnkit never unpickles, "
        "because unpickling can run arbitrary code). Load it only if you trust it, then "
        "re-save it with rnnkit.checkpoint.save_checkpoint",
    )


def _read(path: str | os.PathLike, whole: bool) -> tuple[Path, dict, dict, bytes | None]:
    """Read and check the header (and with ``whole`` the full file): (path, header, document, data)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            data = f.read() if whole else None
            head = data[:8] if whole else f.read(8)
            if len(head) < 8:
                raise _not_ours(
                    path, head, f"truncated, or not a checkpoint: {size} bytes, too short for a safetensors header"
                )
            n = int.from_bytes(head, "little")
            if n > _MAX_HEADER:
                raise _not_ours(
                    path,
                    head,
                    "not an rnnkit checkpoint: not a safetensors file (its first 8 bytes are no header length)",
                )
            if 8 + n > size:
                raise _not_ours(
                    path,
                    head,
                    f"truncated, or not a checkpoint: the header should be {n} bytes but only "
                    f"{size - 8} follow the length field",
                )
            header_bytes = data[8 : 8 + n] if whole else f.read(n)
    except FileNotFoundError:
        raise _refuse(path, "no such file") from None
    except IsADirectoryError:
        raise _refuse(path, "is a folder, not a checkpoint file (see checkpoint_paths(folder))") from None
    except OSError as e:
        raise _refuse(path, f"cannot be read: {e.strerror or e}") from None
    try:
        header = json.loads(header_bytes.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError(f"the header is {_describe_type(header)}, not a JSON object")
    except (UnicodeDecodeError, ValueError) as e:
        raise _not_ours(
            path, head, f"corrupted, or not a checkpoint: the safetensors header is not valid JSON ({e})"
        ) from None
    metadata = header.get("__metadata__")
    if not isinstance(metadata, dict) or _META_KEY not in metadata:
        raise _refuse(
            path,
            f"not an rnnkit checkpoint: a safetensors file without {_META_KEY!r} metadata "
            "(plain weights? read them with safetensors.torch.load_file)",
        )
    try:
        doc = json.loads(metadata[_META_KEY])
        if not isinstance(doc, dict):
            raise ValueError(f"it is {_describe_type(doc)}, not a JSON object")
    except (TypeError, ValueError) as e:
        raise _refuse(path, f"corrupted: the {_META_KEY!r} metadata is not a JSON document: {e}") from None
    checksum = doc.pop("checksum", None)
    intact = (
        isinstance(checksum, dict)
        and isinstance(checksum.get("header"), str)
        and isinstance(checksum.get("tensors"), str)
        and hashlib.sha256(_canonical(doc)).hexdigest() == checksum["header"]
    )
    # with a damaged header, "format"/"version" may be damaged too: say so rather than blame them
    if doc.get("format") != FORMAT:
        raise _refuse(
            path,
            f"not an rnnkit checkpoint{'' if intact else ', or a corrupted one'}: "
            f"metadata format {_short(doc.get('format'))}, expected {FORMAT!r}",
        )
    version = doc.get("version")
    if type(version) is not int or version != VERSION:
        newer = " (written by a newer rnnkit? upgrade rnnkit)" if type(version) is int and version > VERSION else ""
        raise _refuse(
            path,
            ("" if intact else "corrupted, or ")
            + f"format version {_short(version)}, but this rnnkit reads version {VERSION}{newer}",
        )
    if not intact:
        raise _refuse(path, "corrupted: header checksum mismatch (the metadata was changed or damaged)")
    doc["checksum"] = checksum
    return path, header, doc, data


def read_meta(path: str | os.PathLike) -> dict:
    """The ``meta`` dict of a checkpoint, reading only its header (cheap: no tensors).

    For rebuilding a model from its config before :func:`load_checkpoint` fills it. The header's
    own checksum is verified; the tensors are verified by :func:`load_checkpoint`.
    """
    _, _, doc, _ = _read(path, whole=False)
    return doc["meta"]


def _read_tensors(path: Path, header: dict, doc: dict, data: bytes) -> dict[str, Tensor]:
    """Every tensor of the file, after checking the file's length and the tensors' checksum."""
    try:
        ends = [int(entry["data_offsets"][1]) for k, entry in header.items() if k != "__metadata__"]
    except (TypeError, KeyError, IndexError, ValueError):
        raise _refuse(path, "corrupted: a tensor entry of the header has no valid data_offsets") from None
    n = int.from_bytes(data[:8], "little")
    expected = 8 + n + max(ends, default=0)
    if len(data) < expected:
        raise _refuse(path, f"truncated: {len(data)} bytes, the header describes {expected}")
    if len(data) > expected:
        raise _refuse(path, f"corrupted: {len(data) - expected} bytes after the last tensor")
    try:
        tensors = safetensors.torch.load(data)
    except Exception as e:  # safetensors' own checks: dtypes, shapes, overlapping offsets
        raise _refuse(path, f"corrupted: safetensors refuses its tensors: {e}") from None
    if _tensor_digest(tensors) != doc["checksum"]["tensors"]:
        raise _refuse(path, "corrupted: tensor checksum mismatch (some tensor bytes were changed or damaged)")
    return tensors


# --------------------------------------------------------------------------- load


def _meta_mismatches(have: Any, want: Any, where: str) -> list[str]:
    """Where the checkpoint's meta differs from ``expect``; dicts in ``expect`` match as subsets."""
    if isinstance(want, dict) and isinstance(have, dict):
        out = []
        for k, v in want.items():
            if k not in have:
                out.append(f"{where}[{k!r}] is missing from the checkpoint (expected {_short(v)})")
            else:
                out.extend(_meta_mismatches(have[k], v, f"{where}[{k!r}]"))
        return out
    if _same(have, want):
        return []
    if isinstance(have, list) and isinstance(want, list):
        i = next((i for i, (a, b) in enumerate(zip(have, want)) if not _same(a, b)), min(len(have), len(want)))
        detail = f"checkpoint has {len(have)} entries, expected {len(want)}; " if len(have) != len(want) else ""
        if i < min(len(have), len(want)):
            detail += f"first difference at [{i}]: checkpoint {_short(have[i])}, expected {_short(want[i])}"
        else:
            detail += "one is a prefix of the other"
        return [f"{where}: {detail}"]
    return [f"{where}: checkpoint {_short(have)}, expected {_short(want)}"]


def _same(a: Any, b: Any) -> bool:
    """JSON equality, except that a bool never equals a number (True == 1 in Python)."""
    if isinstance(a, bool) != isinstance(b, bool):
        return False
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, dict)) or isinstance(b, (list, dict)):
        return False
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _model_mismatches(model: nn.Module, saved: Mapping[str, Tensor]) -> list[str]:
    own = model.state_dict()
    missing = [k for k in own if k not in saved]
    unexpected = [k for k in saved if k not in own]
    out = []
    if missing:
        out.append(f"missing from the checkpoint: {', '.join(missing)}")
    if unexpected:
        out.append(f"in the checkpoint but not in the model: {', '.join(unexpected)}")
    shapes = [
        f"{k}: checkpoint {tuple(saved[k].shape)}, model {tuple(v.shape)}"
        for k, v in own.items()
        if k in saved and isinstance(v, Tensor) and saved[k].shape != v.shape
    ]
    if shapes:
        out.append("shape mismatch: " + "; ".join(shapes))
    return [f"model ({type(model).__name__}) does not fit: {m}" for m in out]


def _optimizer_mismatches(optimizer: torch.optim.Optimizer, saved: dict | None) -> list[str]:
    if saved is None:
        return ["optimizer: the checkpoint holds no optimizer state (saved without optimizer=)"]
    name = type(optimizer).__name__
    if saved["class"] != name:
        return [f"optimizer: checkpoint has {saved['class']} state, the given optimizer is {name}"]
    want = [[list(p.shape) for p in g["params"]] for g in optimizer.param_groups]
    have = saved["param_shapes"]
    if len(have) != len(want):
        return [f"optimizer: checkpoint has {len(have)} parameter group(s), the optimizer {len(want)}"]
    out = []
    for g, (a, b) in enumerate(zip(have, want)):
        if len(a) != len(b):
            out.append(f"optimizer param_groups[{g}]: checkpoint has {len(a)} parameters, the optimizer {len(b)}")
            continue
        out.extend(
            f"optimizer param_groups[{g}] parameter {i}: checkpoint {tuple(x)}, optimizer {tuple(y)}"
            for i, (x, y) in enumerate(zip(a, b))
            if x != y
        )
    return out


def load_checkpoint(
    path: str | os.PathLike,
    *,
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    restore_rng: bool = False,
    expect: Mapping | None = None,
    map_location: str | torch.device = "cpu",
    generators: Mapping[str, torch.Generator] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict:
    """Verify a checkpoint, load it into the given objects (all or nothing) and return its ``meta``.

    Args:
        path: a file :func:`save_checkpoint` wrote.
        model: filled with ``load_state_dict(strict=True)``; every parameter and persistent
            buffer must be present with the same shape (values are cast to the model's dtype).
        optimizer, scheduler: filled from their saved state dicts; same classes, same
            parameter shapes per group.
        restore_rng: also restore the global RNG states (:func:`set_rng_state`).
        expect: ``{key: value}`` the checkpoint's meta must match, e.g. ``{"cell": "lstm",
            "vocab": [...]}``; a dict value matches as a subset (``{"config": {"cell": "lstm"}}``
            checks only that one entry of ``meta["config"]``).
        map_location: where the tensors are put before being copied into the objects (which keep
            their own devices: the optimizer moves its state to its parameters' devices).
        generators: named ``torch.Generator``\\ s to restore, as saved.
        extra: named objects with ``load_state_dict()`` to restore, as saved with ``extra=``
            (same names and classes).

    Raises:
        CheckpointError: not a file this module wrote (a pickle, ``torch.save`` or plain
            safetensors file), truncated, corrupted (checksums), another format version, or
            not matching ``model``/``optimizer``/``scheduler``/``expect``/``generators``. The message names the
            file and every mismatch; nothing has been loaded.
    """
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"load_checkpoint: model must be a torch.nn.Module, got {_describe_type(model)}")
    for name, gen in (generators or {}).items():
        if not isinstance(gen, torch.Generator):
            raise TypeError(
                f"load_checkpoint: generators[{name!r}] must be a torch.Generator, got {_describe_type(gen)}"
            )
    path, header, doc, data = _read(path, whole=True)
    tensors = _read_tensors(path, header, doc, data)
    if torch.device(map_location).type != "cpu":
        tensors = {k: v if k.startswith(("rng.", "generators.")) else v.to(map_location) for k, v in tensors.items()}

    used: set[str] = set()
    try:
        model_doc = doc["model"]
        model_state = {k: tensors[f"model.{k}"] for k in model_doc["tensors"]}
        used.update(f"model.{k}" for k in model_doc["tensors"])
        opt_doc, sched_doc = doc["optimizer"], doc["scheduler"]
        opt_state = _decode(opt_doc["state"], tensors, used) if opt_doc is not None else None
        sched_state = _decode(sched_doc["state"], tensors, used) if sched_doc is not None else None
        saved_rng = _decode(doc["rng"], tensors, used) if doc["rng"] is not None else None
        saved_gens = _decode(doc["generators"], tensors, used)
        extra_doc = doc.get("extra", {})  # absent in files written before extra= existed
        saved_extra = {
            name: (entry["class"], _decode(entry["state"], tensors, used)) for name, entry in extra_doc.items()
        }
        meta = doc["meta"]
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise _refuse(path, f"corrupted: the header does not describe an rnnkit checkpoint: {e!r}") from None
    if used != set(tensors):
        raise _refuse(path, f"corrupted: tensors nothing refers to: {sorted(set(tensors) - used)}")

    problems: list[str] = []
    if expect is not None:
        if not isinstance(expect, Mapping):
            raise TypeError(f"load_checkpoint: expect must be a dict, got {_describe_type(expect)}")
        problems += _meta_mismatches(meta, _plain_json(dict(expect), "expect"), "meta")
    if model is not None:
        problems += _model_mismatches(model, model_state)
    if optimizer is not None:
        problems += _optimizer_mismatches(optimizer, opt_doc)
    if scheduler is not None:
        if sched_doc is None:
            problems.append("scheduler: the checkpoint holds no scheduler state (saved without scheduler=)")
        elif sched_doc["class"] != type(scheduler).__name__:
            problems.append(
                f"scheduler: checkpoint has {sched_doc['class']} state, the given scheduler is "
                f"{type(scheduler).__name__}"
            )
    if restore_rng:
        if saved_rng is None:
            problems.append("rng: the checkpoint holds no RNG states (saved with rng=False)")
        else:
            try:
                _prepare_rng_state(saved_rng)
            except ValueError as e:
                problems.append(str(e))
    for name, gen in (generators or {}).items():
        if name not in saved_gens:
            problems.append(f"generators: the checkpoint holds no generator {name!r} (it holds {sorted(saved_gens)})")
        elif saved_gens[name].shape != gen.get_state().shape:
            problems.append(
                f"generators[{name!r}]: checkpoint state of shape {tuple(saved_gens[name].shape)}, "
                f"the generator's is {tuple(gen.get_state().shape)} (another device type?)"
            )
    for name, obj in (extra or {}).items():
        if name not in saved_extra:
            problems.append(f"extra: the checkpoint holds no state {name!r} (it holds {sorted(saved_extra)})")
        elif saved_extra[name][0] != type(obj).__name__:
            problems.append(
                f"extra[{name!r}]: checkpoint has {saved_extra[name][0]} state, the given object is "
                f"{type(obj).__name__}"
            )
    if problems:
        raise _refuse(path, "does not match: " + "; ".join(problems))

    # Everything is checked: from here on nothing is expected to fail.
    if model is not None:
        model.load_state_dict(model_state, strict=True)
    if optimizer is not None:
        optimizer.load_state_dict(opt_state)
    if scheduler is not None:
        scheduler.load_state_dict(sched_state)
    if restore_rng:
        set_rng_state(saved_rng)
    for name, gen in (generators or {}).items():
        gen.set_state(saved_gens[name])
    for name, obj in (extra or {}).items():
        obj.load_state_dict(saved_extra[name][1])
    return meta


__all__ = [
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "read_meta",
    "rng_state",
    "set_rng_state",
    "checkpoint_paths",
    "leftover_temp_files",
    "write_atomic",
    "FORMAT",
    "VERSION",
    "LATEST",
    "BEST",
]
