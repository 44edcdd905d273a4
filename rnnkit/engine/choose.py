"""Which engine runs a layer: the one place the choice is made.

:class:`rnnkit.Recurrent` asks :func:`choose_engine` on every call, and the stacks in
:mod:`rnnkit.compose` ask :func:`stack_may_run_native` before running their layers as one torch
kernel call. The rules:

* ``"reference"`` asked for, or ``RNNKIT_ENGINE=reference`` with ``"auto"``: the reference loop.
* a cell torch's kernels compute exactly (``cell.structure.torch_kernel``), engine ``"auto"`` or
  ``"native"``: torch's kernel — except that on the CPU an ``"auto"`` layer given ``lengths``
  runs fused (:func:`beats_native_with_lengths`).
* any other cell on the CPU in float32/float64: the fused engine, when the extension is built and
  the cell's step traces; otherwise the reference loop, with one warning (``"auto"``) or an
  error (``"fused"``).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .build import build_error, engine_override, load_extension, warn_fallback_once
from .fused import DTYPES, compile_cell, warn_untraceable_once
from .native import native_kind
from .plan import Plan

ENGINES = ("auto", "native", "fused", "reference")


def beats_native_with_lengths(x: Tensor) -> bool:
    """Whether a native cell given ``lengths`` should run on the fused engine rather than torch's kernel.

    On the CPU, torch's kernels take variable lengths only as packed sequences, which leave
    oneDNN for a generic per-step path several times slower than the same batch unpacked (the
    LSTM, measured: ~8×). The fused engine masks per step at no extra cost, so an "auto" layer
    on the CPU uses it when lengths are given — if the extension is available and
    ``RNNKIT_ENGINE`` does not restrict layers to native kernels.
    """
    return x.device.type == "cpu" and x.dtype in DTYPES and engine_override() is None and load_extension() is not None


def choose_engine(cell: Any, requested: str, x: Tensor, lengths: Tensor | None) -> str:
    """``"native"``, ``"fused"`` or ``"reference"`` for one call of a layer built with ``requested``.

    Raises for an explicit ``"fused"`` that cannot run here (ValueError for the cell or the input,
    RuntimeError when the extension could not be built).
    """
    if requested == "reference":
        return "reference"
    restrict = engine_override() if requested == "auto" else None
    if restrict == "reference":
        return "reference"
    if requested in ("auto", "native") and native_kind(cell) is not None:
        if requested == "auto" and lengths is not None and beats_native_with_lengths(x):
            if isinstance(compile_cell(cell, x.dtype), Plan):
                return "fused"
        return "native"
    if restrict == "native":
        return "reference"
    if x.device.type != "cpu" or x.dtype not in DTYPES:
        if requested == "fused":
            raise ValueError(
                f"Recurrent: engine='fused' runs on CPU float32/float64 tensors, got {x.dtype} on {x.device}"
            )
        return "reference"
    if load_extension() is None:
        if requested == "fused":
            raise RuntimeError(
                f"Recurrent: engine='fused' asked for, but the fused engine could not be built: {build_error()}"
            )
        warn_fallback_once()
        return "reference"
    compiled = compile_cell(cell, x.dtype)
    if isinstance(compiled, Plan):
        return "fused"
    if requested == "fused":
        raise ValueError(f"Recurrent: engine='fused' cannot run this cell: {compiled}")
    warn_untraceable_once(cell, compiled)
    return "reference"


def stack_may_run_native(engines: list[str], lengths: Any, x: Any) -> bool:
    """Whether a stack whose layers were built with ``engines`` may run as one native call: not
    when ``RNNKIT_ENGINE=reference``, nor when every layer is "auto" and lengths on the CPU make
    the fused engine the better path (see :func:`beats_native_with_lengths`)."""
    if engine_override() == "reference":
        return False
    all_auto = all(e == "auto" for e in engines)
    return not (all_auto and lengths is not None and isinstance(x, Tensor) and beats_native_with_lengths(x))


def last_engines(module: Any) -> dict[str, str]:
    """What ran in each recurrent layer of ``module`` on its last call: ``{name: engine}``.

    Names are the layers' paths inside ``module`` (as ``named_modules`` gives them; ``""`` for
    ``module`` itself); an engine is ``"native"``, ``"fused"`` or ``"reference"``. A
    :class:`~rnnkit.Stack` or :class:`~rnnkit.Bidirectional` that ran as one torch kernel call is
    one entry, ``"native"``; otherwise each of its ``Recurrent`` layers is listed. Layers that
    have not run yet are left out. Works on any model (``Seq2Seq`` included).
    """
    from ..compose import Bidirectional, Stack
    from ..recurrent import Recurrent

    found: dict[str, str] = {}
    whole: list[str] = []  # stacks that ran as one kernel: their layers did not run themselves
    for name, sub in module.named_modules():
        if any(w == "" or name.startswith(w + ".") for w in whole):
            continue
        if isinstance(sub, Recurrent):
            if sub.last_engine is not None:
                found[name] = sub.last_engine
        elif isinstance(sub, (Stack, Bidirectional)) and getattr(sub, "_one_kernel", False):
            found[name] = "native"
            whole.append(name)
    return found


def summarize_engines(engines: dict[str, str]) -> str | None:
    """One word for what ran: the engine every layer ran on, ``"mixed"`` if they differ, None if
    nothing ran."""
    kinds = set(engines.values())
    return None if not kinds else kinds.pop() if len(kinds) == 1 else "mixed"
