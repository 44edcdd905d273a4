r"""The fused engine: any cell's whole sequence — forward pass and back-propagation through time —
in one compiled loop, read from the cell's own step.

A cell's ``recurrence(gi, state)`` is its declaration: ordinary PyTorch, the same code the
reference loop runs. The first time a layer runs a cell, :mod:`rnnkit.engine.trace` records that
step once on a small example batch, and :mod:`rnnkit.engine.plan` lays it out as a short program
of row operations (its stages, where each value lives, each instruction's adjoint). One compiled
interpreter, ``csrc/program.cpp``, runs every such program; nothing is compiled per cell, so a
cell a user writes runs fused in the same process, with no build and no wait (tracing and
planning take milliseconds, once per cell and dtype).

What runs where, per layer call (T steps, B sequences):

* **Python**, once: the input projections of all steps as one matrix product,
  ``gi = cell.input_projection(x)`` (T, B, G), and the step's *static* values — the parameters
  and anything computed from parameters alone (a leaky cell's α = σ(logit), the clockwork's
  masked W ⊙ M, a layer norm's gain): the recorded operations replayed on the live parameters,
  so autograd differentiates them as usual.
* **C++**, once each way: the time loop. Per step, the forward pass runs each stage's recurrent
  matrix products over the whole batch with the BLAS torch ships, then the stage's element-wise
  instructions row by row (rows split across threads when the batch is large). Each matrix is
  prepared once per call for those products — packed by MKL in float32 where torch exports
  MKL's packed products, else stored transposed — because BLAS would otherwise rearrange the
  row-major W on every one of the T small products (about a third of their time at B=16,
  H=128). The backward
  pass runs the adjoint instructions in reverse, with one GEMM ``∂out(t) W`` back to each
  product's input; after the loop each weight gradient is one GEMM over all steps,
  :math:`\nabla W = \sum_t \nabla \mathrm{out}(t)^\top v(t)`.

Autograd sees one operation per layer. Variable lengths are handled inside the loop (a row past
its end computes nothing, outputs zero and keeps its state), ``reverse`` by reversing each
sequence within its length around the call. Gradients flow to the inputs, every field of the
initial state (a skip cell's past included) and every parameter. Double backward is not
supported: the backward pass is not itself differentiable, and a backward with
``create_graph=True`` raises rather than return incomplete higher-order gradients. CPU only,
float32 and float64; :class:`rnnkit.Recurrent` sends anything else to the reference loop.

What a step may contain is listed in :mod:`rnnkit.engine.trace`; a step using anything else is
reported by :func:`why_not_fused` and runs on the reference loop (``engine="auto"`` says so once
with a warning naming the operation; ``engine="fused"`` raises).

**Why a traced program and not generated C++.** Two designs run a user's cell compiled: (a) trace
the step into a program of row operations that one compiled loop executes, or (b) generate C++
per cell, compile it once and cache it. (b) needs a compiler wherever rnnkit runs and costs
each new cell a build of tens of seconds (torch's headers alone take most of it); (a) needs no
compiler after installation, starts in milliseconds, and costs an instruction dispatch per
operation and row — measured by ``rnnkit bench`` to stay within a few percent of the
hand-written kernels it replaced, since the per-step GEMMs dominate and each instruction loops
over a whole row in vectorised code. rnnkit takes (a).

**Towards GPUs.** The program is device-neutral: a list of stages, each a set of matrix products
followed by element-wise instructions over (B, w) rows, with their adjoints. A GPU backend can
run the same tables — one cuBLAS GEMM per product and one generated (Triton or CUDA) kernel per
stage's element-wise block, its instructions fused into one pass with a thread per (row, unit);
captured once per shape with CUDA graphs, so a step costs a few launches. Until then, layers on a
GPU run torch's cuDNN kernels where the cell is a plain one, else the reference loop.

Symbols: T time, B batch, I input, H hidden, G the projection size, d a skip cell's delay.

The extension is built and cached by :mod:`rnnkit.engine.build`.
"""

from __future__ import annotations

import warnings
import weakref
from typing import Any

import torch
from torch import Tensor

from ..cells.base import RecurrentCell
from ..cells.state import rebuild_state, state_tensors
from .build import build_error, engine_override, is_built, load_extension, warn_fallback_once
from .plan import Plan, plan
from .sequence import reverse_padded
from .trace import Untraceable, trace_cell

__all__ = [
    "DTYPES",
    "build_error",
    "compile_cell",
    "engine_override",
    "fused_spec",
    "load_extension",
    "run_fused",
    "untraceable_reason",
    "warn_fallback_once",
    "warn_untraceable_once",
    "why_not_fused",
]

DTYPES = (torch.float32, torch.float64)

# cell -> {dtype: (signature, Plan or the reason it cannot be run)}
_plans: weakref.WeakKeyDictionary[RecurrentCell, dict] = weakref.WeakKeyDictionary()
_warned_untraceable: set = set()


def _signature(cell: RecurrentCell) -> tuple:
    """What a cached plan depends on besides parameter values: every submodule's plain settings
    and each parameter's and buffer's shape, so changing e.g. ``cell.cell_clip`` re-traces."""
    parts = []
    for m in cell.modules():
        plain = tuple(
            sorted(
                (k, v)
                for k, v in vars(m).items()
                if not k.startswith("_") and isinstance(v, (bool, int, float, str, tuple, type(None)))
            )
        )
        parts.append((type(m), plain))
    parts.extend((n, tuple(p.shape), p.dtype) for n, p in cell.named_parameters())
    parts.extend((n, tuple(b.shape), b.dtype) for n, b in cell.named_buffers())
    return tuple(parts)


def compile_cell(cell: RecurrentCell, dtype: torch.dtype | None = None) -> Plan | str:
    """The cell's step laid out for the fused engine (cached per cell and dtype), or a sentence
    saying why it cannot be: an operation the engine does not run, or no built extension."""
    if dtype is None:
        dtype = cell.reference_dtype_device()[0]
    if dtype not in DTYPES:
        return f"the fused engine computes in float32 or float64, got {dtype}"
    ext = load_extension()
    if ext is None:
        return f"the fused engine could not be built: {build_error()}"
    sig = _signature(cell)
    per_dtype = _plans.setdefault(cell, {})
    cached = per_dtype.get(dtype)
    if cached is not None and cached[0] == sig:
        return cached[1]
    try:
        result: Plan | str = plan(trace_cell(cell, dtype), ext)
    except Untraceable as err:
        result = f"{type(cell).__name__}'s step uses {err}"
    per_dtype[dtype] = (sig, result)
    return result


def untraceable_reason(cell: RecurrentCell) -> str | None:
    """Why ``cell``'s step cannot be run fused (a sentence naming the operation), or None if it can.

    Needs no built extension: without one only the trace is checked, with one the layout too.
    """
    dtype = cell.reference_dtype_device()[0]
    if dtype in DTYPES and is_built():
        result = compile_cell(cell, dtype)
        if isinstance(result, str) and "could not be built" not in result:
            return result
        return None
    try:
        trace_cell(cell, dtype if dtype.is_floating_point else torch.float32)
    except Untraceable as err:
        return f"{type(cell).__name__}'s step uses {err}"
    return None


def fused_spec(cell: RecurrentCell) -> Plan | None:
    """The engine's program for ``cell`` (see :func:`compile_cell`), or None when it cannot run it."""
    result = compile_cell(cell)
    return result if isinstance(result, Plan) else None


def why_not_fused(cell: RecurrentCell) -> str | None:
    """Why the engine cannot run ``cell`` (a sentence naming the operation), or None when it can."""
    result = compile_cell(cell)
    return None if isinstance(result, Plan) else result


def warn_untraceable_once(cell: RecurrentCell, reason: str) -> None:
    """The one warning per cell class and reason that a layer left "auto" runs the reference loop."""
    key = (type(cell), reason)
    if key in _warned_untraceable:
        return
    _warned_untraceable.add(key)
    warnings.warn(
        f"rnnkit: {reason}, which the fused engine does not compile; this layer runs on the reference "
        "loop (several times slower). See rnnkit.engine.trace for what a step may contain; pass "
        "engine='reference' to choose that path and silence this warning.",
        RuntimeWarning,
        stacklevel=4,
    )


# -- the autograd function ------------------------------------------------------------------------


class _Call:
    """What one layer call hands the autograd function besides tensors."""

    def __init__(self, ext: Any, plan: Plan, lengths: Tensor | None, n_fields: int) -> None:
        self.ext, self.plan, self.lengths, self.n_fields = ext, plan, lengths, n_fields


class _FusedProgram(torch.autograd.Function):
    """gi (T, B, G), the initial state's tensors and the static values → outputs y (T, B, H) and
    each field's final value, in C++. Inputs after gi: one tensor per state field — (B, w) for a
    float field, (d, B, w) for a delay line (time-major), (B,) int64 for a step counter — then
    the static values in the program's slot order."""

    @staticmethod
    def forward(ctx, call: _Call, gi: Tensor, *tensors: Tensor):
        n = call.n_fields
        init, statics = list(tensors[:n]), list(tensors[n:])
        res = call.ext.program_forward(call.plan.program, gi, init, statics, call.lengths)
        y, saved, out = res[0], res[1], res[2]
        souts, finals = res[3 : 3 + n], res[3 + n : 3 + 2 * n]
        ctx.save_for_backward(gi, saved, out, *init, *statics, *souts)
        ctx.call = call
        ctx.mark_non_differentiable(*[f for f, fld in zip(finals, call.plan.fields) if fld.kind == "counter"])
        return (y, *finals)

    @staticmethod
    def backward(ctx, grad_y: Tensor | None, *grad_finals: Tensor | None):
        if torch.is_grad_enabled():
            raise RuntimeError(
                "rnnkit: the fused engine has no double backward (backward with create_graph=True); "
                "run the layer with engine='reference' for higher-order gradients"
            )
        call = ctx.call
        n = call.n_fields
        saved_tensors = ctx.saved_tensors
        gi, saved, out = saved_tensors[:3]
        n_statics = len(call.plan.static_slots)
        init = list(saved_tensors[3 : 3 + n])
        statics = list(saved_tensors[3 + n : 3 + n + n_statics])
        souts = list(saved_tensors[3 + n + n_statics :])
        if grad_y is None:
            grad_y = torch.zeros((gi.shape[0], gi.shape[1], call.plan.program.out_width), dtype=gi.dtype)
        empty = gi.new_empty(0)
        gfinal = [g if g is not None else empty for g in grad_finals]
        res = call.ext.program_backward(
            call.plan.program, grad_y, gfinal, gi, init, statics, call.lengths, saved, souts, out
        )
        dgi = res[0]
        dinit = [None if d.numel() == 0 else d for d in res[1 : 1 + n]]
        dstatic = [None if d.numel() == 0 else d.reshape(s.shape) for d, s in zip(res[1 + n :], statics)]
        return (None, dgi, *dinit, *dstatic)


def run_fused(cell: RecurrentCell, x: Tensor, state: Any, lengths: Tensor | None, reverse: bool) -> tuple[Tensor, Any]:
    """One layer on the fused engine. x (T, B, I) time-major, state already checked; returns
    outputs (T, B, H) and the final state, as :meth:`rnnkit.Recurrent.reference` does."""
    compiled = compile_cell(cell, x.dtype)
    if not isinstance(compiled, Plan):
        raise ValueError(f"run_fused: {compiled}")
    ext = load_extension()
    T = x.shape[0]
    if reverse:
        x = reverse_padded(x, lengths)
    gi = cell.input_projection(x)  # (T, B, G): U x + b for all steps at once
    fields = compiled.fields
    tensors = state_tensors(state)
    init = []
    for f, t in zip(fields, tensors):
        init.append(t.transpose(0, 1).contiguous() if f.kind == "delay" else t)  # delay (B, d, w) -> (d, B, w)
    statics = compiled.trace.statics(cell)
    slots = [statics[i].to(x.dtype) for i in compiled.static_slots]  # integer periods and masks as numbers
    call = _Call(ext, compiled, lengths, len(fields))
    y, *finals = _FusedProgram.apply(call, gi, *init, *slots)
    if reverse:
        y = reverse_padded(y, lengths)
    steps = lengths if lengths is not None else T
    new = [fin if f.kind != "counter" else t + steps for f, t, fin in zip(fields, tensors, finals)]
    return y, rebuild_state(state, new)
