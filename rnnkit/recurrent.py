"""``Recurrent``: the one time loop that runs any cell over a sequence.

Symbols used in shapes: T time steps, B batch, I input size, H hidden size.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .cells.base import RecurrentCell, from_torch_hint
from .cells.state import where_state
from .engine import fused
from .engine.choose import ENGINES, choose_engine
from .engine.native import native_kind, run_native
from .engine.sequence import reverse_padded  # noqa: F401  (re-exported: rnnkit.recurrent.reverse_padded)


def _as_length(v: Any) -> int | None:
    """One length as a Python int, or None if it is not an integer (bools and floats are not)."""
    if isinstance(v, bool) or (isinstance(v, Tensor) and (v.dtype == torch.bool or v.dim() != 0)):
        return None
    try:
        return operator.index(v)  # int, NumPy integer, 0-d integer tensor
    except TypeError:
        return None


def check_lengths(lengths: Any, batch_size: int, steps: int, device: torch.device, owner: str) -> Tensor | None:
    """Validate per-sequence lengths: B integers in [1, T], in any order. Returns int64 (B,) or None.

    ``lengths`` may be a 1-D integer tensor on any device (it is moved to ``device``, x's), a
    NumPy integer array, or a sequence of ints (Python, NumPy or 0-d integer tensors).
    TypeError for values that are not integers; ValueError for a count other than B or a length
    outside [1, T]; each message names ``lengths``, what was expected and what came. While
    ``torch.export`` traces, a tensor's values are the program's future input, so only its dtype
    and shape are checked.
    """
    if lengths is None:
        return None
    expected = "expected an integer tensor or a sequence of ints"
    if not isinstance(lengths, (Tensor, list, tuple)) and hasattr(lengths, "__array__") and hasattr(lengths, "dtype"):
        try:  # a NumPy array: read it as the tensor it is, so its dtype is checked like one
            lengths = torch.as_tensor(lengths)
        except (TypeError, RuntimeError):
            pass  # e.g. an object array: checked element by element below
    if isinstance(lengths, Tensor):
        if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
            raise TypeError(f"{owner}: lengths must hold integers, got dtype {lengths.dtype}; {expected}")
        if lengths.device.type == "meta":
            where = "the CPU" if device.type == "cpu" else f"the CPU or {device}"
            raise ValueError(f"{owner}: lengths is on the meta device and holds no values; expected lengths on {where}")
        if lengths.dim() != 1 or lengths.shape[0] != batch_size:
            raise ValueError(f"{owner}: lengths must have shape (B,) = ({batch_size},), got {tuple(lengths.shape)}")
        lengths = lengths.to(device=device, dtype=torch.long)
        if torch.compiler.is_exporting():
            return lengths  # the values are the exported program's input, not known while tracing
        out_of_range = (lengths < 1) | (lengths > steps)
        if batch_size and bool(out_of_range.any()):
            i = int(out_of_range.nonzero()[0, 0])
            raise ValueError(f"{owner}: every length must be in [1, T={steps}], got {int(lengths[i])} (lengths[{i}])")
        return lengths
    try:
        values = list(lengths)
    except TypeError:
        raise TypeError(
            f"{owner}: lengths must be a 1-D tensor or sequence of ints, got {type(lengths).__name__}"
        ) from None
    ints = [_as_length(v) for v in values]
    for i, (v, n) in enumerate(zip(values, ints)):
        if n is None:
            raise TypeError(
                f"{owner}: lengths must hold integers, got {v!r} ({type(v).__name__}) at lengths[{i}]; {expected}"
            )
    if len(ints) != batch_size:
        raise ValueError(f"{owner}: lengths must have shape (B,) = ({batch_size},), got ({len(ints)},)")
    for i, n in enumerate(ints):
        if not 1 <= n <= steps:  # checked here: a huge int would overflow int64 before the tensor check
            raise ValueError(f"{owner}: every length must be in [1, T={steps}], got {n} (lengths[{i}])")
    return torch.tensor(ints, dtype=torch.long, device=device)


def unpack_input(x: PackedSequence, lengths: Any, batch_first: bool, owner: str) -> tuple[Tensor, Tensor]:
    """A PackedSequence input as the padded batch and lengths the layers run on.

    The padded batch is in the caller's batch order (torch's ``unsorted_indices`` applied), so
    an initial state and the final state are in that order too, as torch.nn takes and gives
    them; (T, B, ·), or (B, T, ·) if ``batch_first``. ``lengths`` must not be given as well.
    """
    if lengths is not None:
        raise ValueError(f"{owner}: x is a PackedSequence, which carries its own lengths; got lengths as well")
    return pad_packed_sequence(x, batch_first=batch_first)  # padded (T, B, ·), lengths (B,) int64 on the CPU


def repack_output(y: Tensor, lengths: Tensor, like: PackedSequence, batch_first: bool) -> PackedSequence:
    """The padded outputs ``y`` of a PackedSequence input ``like`` packed as ``like`` is: the
    same ``batch_sizes``, ``sorted_indices`` and ``unsorted_indices``, as torch.nn returns them."""
    if like.sorted_indices is not None:
        y = y.index_select(0 if batch_first else 1, like.sorted_indices)  # the packing's order
        lengths = lengths.index_select(0, like.sorted_indices.cpu())
    packed = pack_padded_sequence(y, lengths, batch_first=batch_first, enforce_sorted=True)
    return PackedSequence(packed.data, like.batch_sizes, like.sorted_indices, like.unsorted_indices)


class Recurrent(nn.Module):
    r"""Runs a cell over time: ``forward(x, state=None, lengths=None) -> (outputs, final_state)``.

    For t = 1 … T (or T … 1 with ``reverse=True``):

    .. math::
        (y(t), s(t)) = \mathrm{cell}(x(t), s(t-1)), \qquad s(0) = \texttt{state} \text{ or } 0

    The input projections ``U x(t) + b`` of all steps are computed as one matrix product before
    the loop; the loop runs the cell's recurrence.

    Variable lengths: with ``lengths`` (B,), sequence b has ``lengths[b]`` valid steps (any
    order, no sorting needed). Its state stops changing after its last step, so the final state
    is taken there; outputs past its end are zero; with ``reverse=True`` it is read backward
    from its own last step. A padded batch gives exactly what running each sequence alone does.

    PackedSequence: as torch.nn's modules do, ``x`` may be a
    ``torch.nn.utils.rnn.PackedSequence`` (packed with ``enforce_sorted`` True or False); the
    outputs are then a PackedSequence packed like it, and the states are in the batch order the
    sequences were given in. It runs as the padded batch with ``lengths`` would — the same
    engines, the same numbers.

    Engines — three paths compute the same thing; ``last_engine`` says which one the last call ran:

    * ``"reference"``: the plain PyTorch step loop of :meth:`reference`, the definition of correct
      that the other two are tested against.
    * ``"native"``: cells that torch's fused kernels compute exactly (plain Elman, LSTM with
      forget gate, GRU) run through those kernels (oneDNN on CPU, cuDNN on GPU), lengths included.
    * ``"fused"``: :mod:`rnnkit.engine.fused`, one compiled C++ loop that runs the whole sequence
      forward and back through time for *any* cell whose ``recurrence`` uses the operations
      :mod:`rnnkit.engine.trace` compiles — the zoo's variants and a user's own cells alike. The
      cell's step is traced once into a program of row operations (milliseconds, per cell and
      dtype); nothing is compiled per cell. CPU, float32/float64; no double backward. The
      interpreter itself is built once per environment (:mod:`rnnkit.engine.build`).

    ``"auto"`` (the default) takes native where the cell allows, else fused where the cell's step
    traces and the input is on the CPU in float32/float64, else the reference loop — except that
    on the CPU a native cell given ``lengths`` runs fused: torch's CPU kernels take lengths only
    as packed sequences, on a path several times slower than the same batch unpacked, while the
    fused engine masks for free. A step that does not trace runs on the reference loop with one
    warning naming the operation (:func:`rnnkit.engine.fused.why_not_fused` says it without
    running); an explicit ``"fused"`` raises instead, as it does when the engine cannot be built
    (``"auto"`` then falls back with one warning per process). The environment variable
    ``RNNKIT_ENGINE=reference`` (or ``native``: no fused engine) restricts every ``"auto"``
    layer, e.g. to rule out a fast path while debugging. :mod:`rnnkit.engine.choose` makes the
    choice. While ``torch.export`` traces the layer (:func:`rnnkit.export.export`), whatever
    ``engine`` says, it runs torch's kernel (native cells, no lengths) or the reference loop.

    Args:
        cell: any rnnkit cell.
        batch_first: inputs and outputs are (B, T, ·) instead of (T, B, ·).
        reverse: run from the last step to the first.
        engine: ``"auto"``, ``"native"``, ``"fused"`` or ``"reference"``.

    Shapes:
        x: (T, B, I), or (B, T, I) if batch_first; or a PackedSequence of (·, I) rows.
        state: the cell's state (e.g. ``LSTMState(h, c)``, tensors (B, H)), or None for zeros.
        lengths: (B,) integers in [1, T] in any order — a tensor on any device, a NumPy array
            or a list — or None for all T (and None with a PackedSequence).
        outputs: (T, B, H), or (B, T, H) if batch_first, H being the cell's ``output_size``
            (a projected LSTM's P); a PackedSequence for a PackedSequence x.
        final_state: the cell's state after each sequence's last step.
    """

    def __init__(
        self, cell: RecurrentCell, batch_first: bool = False, reverse: bool = False, engine: str = "auto"
    ) -> None:
        super().__init__()
        if not isinstance(cell, RecurrentCell):
            raise TypeError(
                f"Recurrent: cell must be an rnnkit cell (rnnkit.cells.*), got {type(cell).__name__}"
                + from_torch_hint(cell)
            )
        if engine not in ENGINES:
            raise ValueError(f"Recurrent: engine must be one of {', '.join(map(repr, ENGINES))}, got {engine!r}")
        if engine == "native" and native_kind(cell) is None:
            raise ValueError(
                "Recurrent: engine='native' needs a cell torch's kernels compute (plain Elman, LSTM, GRU), got "
                f"{cell!r}"
            )
        if engine == "fused" and (reason := fused.untraceable_reason(cell)) is not None:
            raise ValueError(f"Recurrent: engine='fused' cannot run this cell: {reason}")
        self.engine = engine
        self.last_engine: str | None = None
        self.cell = cell
        self.batch_first = bool(batch_first)
        self.reverse = bool(reverse)
        self.input_size = cell.input_size
        self.hidden_size = cell.hidden_size
        self.output_size = cell.output_size  # H, or a projected LSTM's P

    def forward(
        self, x: Tensor | PackedSequence, state: Any = None, lengths: Tensor | Sequence[int] | None = None
    ) -> tuple[Tensor | PackedSequence, Any]:
        if isinstance(x, PackedSequence):
            padded, lengths = unpack_input(x, lengths, self.batch_first, "Recurrent")
            y, state = self.forward(padded, state, lengths)
            return repack_output(y, lengths, x, self.batch_first), state
        layout = "(B, T, I)" if self.batch_first else "(T, B, I)"
        self.cell.check_input(x, expected_dim=3, layout=layout)
        if self.batch_first:
            x = x.transpose(0, 1)  # (T, B, I)
        T, B = x.shape[0], x.shape[1]
        lengths = check_lengths(lengths, B, T, x.device, "Recurrent")
        state = self.cell.prepare_state(state, B, x.dtype, x.device)
        if T == 0:
            raise ValueError(f"Recurrent: x has no time steps (shape {tuple(x.shape)})")
        path = self._choose_path(x, lengths)
        if path == "native":
            outputs, state = run_native(self.cell, x, state, lengths, self.reverse, self.training)
        elif path == "fused":
            outputs, state = fused.run_fused(self.cell, x, state, lengths, self.reverse)
        else:
            outputs, state = self.reference(x, state, lengths)
        self.last_engine = path
        if self.batch_first:
            outputs = outputs.transpose(0, 1)  # (B, T, H)
        return outputs, state

    def _choose_path(self, x: Tensor, lengths: Tensor | None) -> str:
        """Which engine runs this call (see the class docstring and :mod:`rnnkit.engine.choose`).

        While ``torch.export`` traces (:mod:`rnnkit.export`), only paths made of torch
        operations can be recorded: torch's kernel for a native cell without lengths (one
        ``aten.lstm``/``gru``/``rnn`` node; with lengths it would pack, which depends on their
        values), else the reference loop — never the fused engine, an opaque C++ function.
        """
        if torch.compiler.is_exporting():
            native = self.engine in ("auto", "native") and native_kind(self.cell) is not None
            return "native" if native and lengths is None else "reference"
        return choose_engine(self.cell, self.engine, x, lengths)

    def reference(self, x: Tensor, state: Any, lengths: Tensor | None) -> tuple[Tensor, Any]:
        """The plain PyTorch step loop: the definition of correct for every faster path.

        x (T, B, I) time-major, already checked; returns outputs (T, B, H) and the final state.
        """
        cell = self.cell
        if self.reverse:
            x = reverse_padded(x, lengths)
        gi = cell.input_projection(x)  # (T, B, G·H): U x(t) + b for every step at once
        outputs = []
        # every sequence runs until the shortest ends: only the steps after it need masking
        # (torch.export cannot branch on the lengths' values: there every step is masked)
        every = x.shape[0] if lengths is None else 0 if torch.compiler.is_exporting() else int(lengths.min())
        # unbind, not gi[t]: indexing would make backward add each step's gradient into a
        # fresh (T, B, G·H) zero tensor, T² work; unbind's backward stacks them once.
        for t, gi_t in enumerate(gi.unbind(0)):
            out, new = cell.recurrence(gi_t, state)
            if t >= every:
                valid = t < lengths  # (B,): which sequences are still running
                state = where_state(valid, new, state)
                out = out * valid.unsqueeze(1).to(out.dtype)  # zeros past each length
            else:
                state = new
            outputs.append(out)
        y = torch.stack(outputs)  # (T, B, H)
        if self.reverse:
            y = reverse_padded(y, lengths)
        return y, state

    def extra_repr(self) -> str:
        return f"batch_first={self.batch_first}, reverse={self.reverse}, engine={self.engine!r}"
