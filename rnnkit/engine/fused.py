r"""The fused engine: a whole sequence's forward pass and back-propagation through time in
compiled code, for the cells torch's own kernels do not compute.

What runs where, per layer call (T steps, B sequences):

* **Python**, once: the input projections of all steps as one matrix product,
  ``gi = U x + b`` (T, B, G) — for Elman, LSTM and clockwork cells ``b = b_ih + b_hh``, since
  both biases enter the same sum; the clockwork's masked recurrent matrix ``W ⊙ M``; a learned
  leak ``α = σ(alpha_logit)``. Autograd differentiates these few operations as usual.
* **C++** (``csrc/fused_rnn.cpp``), once each way: the time loop. Per step, the forward pass
  does one GEMM for the recurrent product into a preallocated buffer (two with a skip
  connection) into preallocated buffers, calling the BLAS torch ships, and one fused
  element-wise pass per batch row (vectorised loops over raw pointers; rows split across threads
  when the batch is large) that applies the gates, the leak and the clock. It keeps the gate
  activations and states backward needs. The backward pass runs the written-out BPTT of
  :mod:`rnnkit.bptt` step by step in reverse — the per-step element-wise gradient and one GEMM
  ``∂pre(t) W_hh`` back to h(t−1) — and after the loop forms each weight gradient as one GEMM over
  all steps, :math:`\nabla W_{hh} = \sum_t \nabla \mathrm{pre}(t)^\top h(t-1)`.

Covered cells (``fused_spec`` says whether a cell is):

================================  ==============================================================
core                              ``ElmanCell`` (tanh, ReLU), ``ClockworkCell``, ``LSTMCell``
                                  (any of forget gate / 1997 form, peepholes, memory blocks,
                                  cell clipping), ``GRUCell``
``LeakyCell(core)``               fixed or learned α (its gradient too)
``SkipCell(core)``,
``SkipCell(LeakyCell(core))``     the skip weight ``W_s`` and the initial past included
================================  ==============================================================

Variable lengths are handled inside the loop (a row past its end computes nothing, outputs zero
and keeps its state), ``reverse`` by reversing each sequence within its length around the call.
Gradients flow to the inputs, the initial state (every field, including a skip cell's past) and
every parameter. Double backward is not supported: the backward pass is not itself
differentiable, and a backward with ``create_graph=True`` raises rather than return incomplete
higher-order gradients. CPU only, float32 and float64; :class:`rnnkit.Recurrent` sends anything else to
the reference loop.

Symbols: T time, B batch, I input, H hidden, G the projection size (H Elman, 3H GRU, 4H LSTM;
fewer rows with memory blocks or without forget gate), d a skip cell's delay.

The extension is compiled on first use with torch's extension toolchain
(``torch.utils.cpp_extension.load``, g++ and ninja; ~40 s once, then cached in torch's extension
directory, ``TORCH_EXTENSIONS_DIR``). If it cannot be built, :func:`load_extension` returns None,
:class:`rnnkit.Recurrent` falls back to the reference loop, and one warning per process says so.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..cells import ClockworkCell, ElmanCell, GRUCell, LeakyCell, LSTMCell, LSTMState, RNNState, SkipCell
from ..cells.base import RecurrentCell
from ..cells.clockwork import ClockworkState
from ..cells.skip import SkipState

CSRC = Path(__file__).with_name("csrc")
SOURCES = ("fused_rnn.cpp",)
HEADERS = ("vecmath.h",)
DTYPES = (torch.float32, torch.float64)

ELMAN, LSTM, GRU = 0, 1, 2


@dataclass(frozen=True)
class FusedSpec:
    """How the C++ engine runs a cell: its core recurrence and the wrappers around it."""

    core: int  # ELMAN (Elman or clockwork), LSTM or GRU
    relu: bool = False  # Elman/clockwork: φ = ReLU instead of tanh
    clockwork: bool = False
    forget_gate: bool = True  # LSTM
    peephole: bool = False  # LSTM
    block: int = 1  # LSTM: cells per memory block
    clip: float = 0.0  # LSTM: κ, 0 for none
    leaky: bool = False  # a LeakyCell wraps the core
    delay: int = 0  # a SkipCell wraps it all: d, 0 for none


class _Parts(NamedTuple):
    skip: SkipCell | None
    leaky: LeakyCell | None
    core: RecurrentCell


def _unwrap(cell: RecurrentCell) -> _Parts:
    skip = cell if type(cell) is SkipCell else None
    inner = cell.cell if skip is not None else cell
    leaky = inner if type(inner) is LeakyCell else None
    core = inner.cell if leaky is not None else inner
    return _Parts(skip, leaky, core)


def fused_spec(cell: RecurrentCell) -> FusedSpec | None:
    """The engine's description of ``cell``, or None when the engine does not cover it."""
    return _spec_or_reason(cell)[0]


def why_not_fused(cell: RecurrentCell) -> str | None:
    """Why the engine does not cover ``cell`` (a sentence), or None when it does."""
    return _spec_or_reason(cell)[1]


def _spec_or_reason(cell: RecurrentCell) -> tuple[FusedSpec | None, str | None]:
    skip, leaky, core = _unwrap(cell)
    wrappers = dict(leaky=leaky is not None, delay=skip.delay if skip is not None else 0)
    kind = type(core)
    if kind is ElmanCell:
        return FusedSpec(ELMAN, relu=core.nonlinearity == "relu", **wrappers), None
    if kind is ClockworkCell:
        return FusedSpec(ELMAN, relu=core.nonlinearity == "relu", clockwork=True, **wrappers), None
    if kind is GRUCell:
        return FusedSpec(GRU, **wrappers), None
    if kind is LSTMCell:
        spec = FusedSpec(
            LSTM,
            forget_gate=core.forget_gate,
            peephole=core.peephole,
            block=core.block_size,
            clip=core.cell_clip or 0.0,
            **wrappers,
        )
        return spec, None
    chain = " around ".join(type(c).__name__ for c in (skip, leaky, core) if c is not None)
    return None, (
        f"the fused engine runs Elman, clockwork, LSTM and GRU cores, alone, in a LeakyCell, in a "
        f"SkipCell, or in a SkipCell around a LeakyCell; got {chain}"
    )


# -- building and loading the extension ------------------------------------------------------------

_extension: Any = None
_build_error: BaseException | None = None
_warned = False


def _torch_exports_blas() -> bool:
    """Whether torch's CPU library exports the Fortran BLAS ``sgemm_``/``dgemm_`` (MKL in the x86
    wheels), which the engine then calls directly instead of through ATen for its per-step GEMMs."""
    import ctypes

    lib = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    try:
        handle = ctypes.CDLL(str(lib))
        return all(hasattr(handle, name) for name in ("sgemm_", "dgemm_"))
    except OSError:
        return False


def _build_flags() -> list[str]:
    flags = ["-O3"]
    # ATen's Vectorized<T> uses SLEEF's AVX2 exp/tanh when told the CPU has AVX2; torch itself
    # says whether it does. Elsewhere it falls back to plain loops, which are correct, slower.
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        flags += ["-mavx2", "-mfma", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    if _torch_exports_blas():
        flags.append("-DRNNKIT_BLAS_SYMBOLS")
    return flags


def _extension_name(flags: list[str]) -> str:
    """A name that changes with the sources, the flags and torch's version, so a stale build is never loaded."""
    digest = hashlib.sha256()
    for name in SOURCES + HEADERS:
        digest.update((CSRC / name).read_bytes())
    digest.update(" ".join(flags).encode())
    digest.update(torch.__version__.encode())
    return f"rnnkit_fused_{digest.hexdigest()[:12]}"


def _compile() -> Any:
    from torch.utils.cpp_extension import load

    flags = _build_flags()
    return load(
        name=_extension_name(flags),
        sources=[str(CSRC / name) for name in SOURCES],
        extra_cflags=flags,
        extra_include_paths=[str(CSRC)],
        verbose=False,
    )


def load_extension() -> Any:
    """The compiled engine, building it on the first call; None if it cannot be built.

    The outcome is kept for the process: a failed build is not retried, and its error is
    :func:`build_error`.
    """
    global _extension, _build_error
    if _extension is None and _build_error is None:
        try:
            _extension = _compile()
        except Exception as err:  # a compiler or loader failure of any kind means: no fused engine
            _build_error = err
    return _extension


def build_error() -> BaseException | None:
    """Why the extension could not be built, once :func:`load_extension` has failed; else None."""
    return _build_error


def warn_fallback_once() -> None:
    """The one warning per process that variant cells run on the reference loop."""
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(
            f"rnnkit: the fused engine could not be built ({type(_build_error).__name__}: {_build_error}); "
            "cells without a native torch kernel run on the reference loop, which is several times slower. "
            "Set RNNKIT_ENGINE=reference to choose that path and silence this warning.",
            RuntimeWarning,
            stacklevel=3,
        )


def engine_override() -> str | None:
    """``RNNKIT_ENGINE`` from the environment: ``"reference"`` or ``"native"`` (no fused engine) to
    restrict layers built with ``engine="auto"``; unset, empty or ``"auto"`` for no restriction."""
    value = os.environ.get("RNNKIT_ENGINE", "").strip().lower()
    if value in ("", "auto"):
        return None
    if value not in ("reference", "native"):
        raise ValueError(f"RNNKIT_ENGINE must be 'auto', 'native' or 'reference', got {value!r}")
    return value


def beats_native_with_lengths(x: Tensor) -> bool:
    """Whether a native cell given ``lengths`` should run here rather than on torch's kernel.

    On the CPU, torch's kernels take variable lengths only as packed sequences, which leave
    oneDNN for a generic per-step path several times slower than the same batch unpacked (the
    LSTM, measured: ~8×). The fused engine masks per step at no extra cost, so an "auto" layer
    on the CPU uses it when lengths are given — if the extension is available and
    ``RNNKIT_ENGINE`` does not restrict layers to native kernels.
    """
    return (
        x.device.type == "cpu"
        and x.dtype in DTYPES
        and engine_override() is None
        and load_extension() is not None
    )


# -- the autograd function ------------------------------------------------------------------------


class _FusedRNN(torch.autograd.Function):
    """gi (T, B, G) and the initial state → outputs y (T, B, H) and the final state, in C++.

    Differentiable inputs: gi, h0 (B, H), c0 (B, H) (LSTM), past0 (d, B, H) (skip), w_hh (G, H),
    b_hh (G,) (GRU only: the others fold it into gi), w_skip (G, H), the peepholes p_i, p_f,
    p_o (H,) and α (H,). Outputs: y (T, B, H), the final h (B, H), c (B, H) or None, and the
    final past (B, d, H) or None.
    """

    @staticmethod
    def forward(ctx, ext, spec, lengths, tick0, period, gi, h0, c0, past0, w_hh, b_hh, w_skip, p_i, p_f, p_o, alpha):
        y, h, c, past, acts, cstate, cinner, ghn = ext.forward(
            gi, h0, c0, past0, w_hh, b_hh, w_skip, p_i, p_f, p_o, alpha, lengths, tick0, period,
            spec.core, spec.relu, spec.forget_gate, spec.block, spec.clip, spec.delay,
        )
        # everything backward reads goes through save_for_backward, so autograd's saved-tensor
        # hooks (and the bench's memory count) see it
        ctx.save_for_backward(y, acts, cstate, cinner, ghn, h0, c0, past0, w_hh, b_hh, w_skip, p_i, p_f, p_o, alpha, lengths, tick0, period)
        ctx.ext, ctx.spec, ctx.proj_size = ext, spec, gi.shape[2]
        return y, h, c, past

    @staticmethod
    def backward(ctx, grad_y, grad_h, grad_c, grad_past):
        # The C++ backward is not itself differentiable. once_differentiable alone would only
        # catch second derivatives through the incoming gradients and silently drop those
        # through the saved tensors, so any create_graph=True backward is refused outright.
        if torch.is_grad_enabled():
            raise RuntimeError(
                "rnnkit: the fused engine has no double backward (backward with create_graph=True); "
                "run the layer with engine='reference' for higher-order gradients"
            )
        spec = ctx.spec
        (dgi, dh0, dc0, dpast0, dw_hh, db_hh, dw_skip, dp_i, dp_f, dp_o, dalpha) = ctx.ext.backward(
            grad_y, grad_h, grad_c, grad_past, *ctx.saved_tensors,
            spec.core, spec.relu, spec.forget_gate, spec.block, spec.clip, spec.delay, ctx.proj_size,
        )
        return None, None, None, None, None, dgi, dh0, dc0, dpast0, dw_hh, db_hh, dw_skip, dp_i, dp_f, dp_o, dalpha


def run_fused(cell: RecurrentCell, x: Tensor, state: Any, lengths: Tensor | None, reverse: bool, ext: Any = None) -> tuple[Tensor, Any]:
    """One layer on the fused engine. x (T, B, I) time-major, state already checked; returns
    outputs (T, B, H) and the final state, as :meth:`rnnkit.Recurrent.reference` does."""
    from ..recurrent import reverse_padded

    spec = fused_spec(cell)
    if spec is None:
        raise ValueError(f"run_fused: {why_not_fused(cell)}")
    ext = ext if ext is not None else load_extension()
    if ext is None:
        raise RuntimeError(f"the fused engine could not be built: {build_error()}")
    skip, leaky, core = _unwrap(cell)
    T = x.shape[0]
    if reverse:
        x = reverse_padded(x, lengths)
    inner = state.inner if skip is not None else state
    h0 = inner.h
    c0 = inner.c if spec.core == LSTM else None
    tick0 = inner.t if spec.clockwork else None
    past0 = state.past.transpose(0, 1) if skip is not None else None  # (d, B, H)
    if spec.core == GRU:
        gi = F.linear(x, core.weight_ih, core.bias_ih)  # (T, B, 3H); b_hh stays inside r ⊙ (W_hn h + b_hn)
        b_hh = core.bias_hh
    else:
        bias = core.bias_ih + core.bias_hh if core.bias else None
        gi = F.linear(x, core.weight_ih, bias)  # (T, B, G): U x + b_ih + b_hh for all steps at once
        b_hh = None
    w_hh = core.weight_hh * core.connection_mask if spec.clockwork else core.weight_hh
    peep = (core.weight_ci, core.weight_cf, core.weight_co) if spec.peephole else (None, None, None)
    y, h, c, past = _FusedRNN.apply(
        ext, spec, lengths, tick0, core.unit_period if spec.clockwork else None,
        gi, h0, c0, past0, w_hh, b_hh, skip.weight_skip if skip is not None else None,
        *peep, leaky.alpha_values if leaky is not None else None,
    )
    if reverse:
        y = reverse_padded(y, lengths)
    if spec.core == LSTM:
        final = LSTMState(h, c)
    elif spec.clockwork:
        final = ClockworkState(h, tick0 + (lengths if lengths is not None else T))
    else:
        final = RNNState(h)
    if skip is not None:
        final = SkipState(final, past)
    return y, final
