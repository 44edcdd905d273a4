"""The contract every rnnkit cell keeps, and the checks made at its boundary.

A cell computes one time step. Its work is split in two so that a time loop can batch the part
that does not depend on the past:

* ``input_projection(x)`` — the affine map of the input, ``U x + b``; it depends on ``x`` alone,
  so a layer computes it for all T steps with one matrix product;
* ``recurrence(gi, state)`` — everything that reads the previous state, given the projected
  input ``gi``; it returns ``(output, new_state)``.

``forward(x, state)`` is the two in sequence, with the arguments checked first.

Every cell also publishes its :class:`CellStructure` — gate layout, recurrent matrices, state
fields, the torch kernel that computes it — as ``cell.structure``, so the diagnostics, the torch
converters, the engines and the models read what a cell is made of instead of testing its class.

Symbols: B batch, I input size, H hidden size, G the number of stacked pre-activation blocks
(1 for Elman, 3 for GRU, 4 for LSTM); ``projection_size`` is the width of ``gi``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .state import coerce_state, is_state

# torch's fused one-step ops, by the structure's torch_kernel name (see RecurrentCell.step)
_CELL_KERNELS = {
    "lstm": torch._VF.lstm_cell,
    "gru": torch._VF.gru_cell,
    "rnn_tanh": torch._VF.rnn_tanh_cell,
    "rnn_relu": torch._VF.rnn_relu_cell,
}

TORCH_KERNELS = ("lstm", "gru", "rnn_tanh", "rnn_relu")

# The methods that make up a cell's step: a subclass that overrides none of them computes what
# its base class computes, and keeps the base class's torch kernel.
STEP_METHODS = ("forward", "prepare_state", "init_state", "input_projection", "recurrence", "output_of")


def not_a_tensor(x: Any, name: str, owner: str, layout: str, kind: str = "a tensor", prefix: str = "") -> TypeError:
    """The error for an input that is not a tensor; a NumPy array or a list is told how to
    convert it (a type problem, not a shape one)."""
    hint = ""
    if hasattr(x, "__array__") and not isinstance(x, Tensor):
        hint = (
            f"; convert a NumPy array first with torch.from_numpy({name}) or torch.as_tensor({name}, "
            f"dtype=torch.float32) (NumPy's default float64 is not the parameters' float32)"
        )
    elif isinstance(x, (list, tuple)):
        hint = (
            f"; convert it first with torch.as_tensor({name}), or pad a list of sequences of different "
            f"lengths with rnnkit.data.pad_sequences"
        )
    return TypeError(f"{owner}: {prefix}{name} must be {kind} of shape {layout}, got {type(x).__name__}{hint}")


def from_torch_hint(obj: Any) -> str:
    """A hint for a torch.nn recurrent module given where an rnnkit cell or layer is expected."""
    if isinstance(obj, nn.RNNBase):
        return (
            f"; convert a torch.nn.{type(obj).__name__} with rnnkit.from_torch(module), which gives the rnnkit "
            f"Stack that computes the same (weights copied)"
        )
    if isinstance(obj, nn.RNNCellBase):
        return f"; convert a torch.nn.{type(obj).__name__} with rnnkit.from_torch(module), the equal rnnkit cell"
    return ""


def dtype_hint(dtype: torch.dtype, expected: torch.dtype) -> str:
    """A hint for a float64 input to float32 parameters (NumPy's default dtype)."""
    if dtype == torch.float64 and expected == torch.float32:
        return " (float64 is NumPy's default: convert with x.float() or torch.as_tensor(x, dtype=torch.float32))"
    return ""


def check_size(value: Any, name: str, owner: str, minimum: int = 1) -> int:
    """Return ``value`` if it is an integer ≥ ``minimum``, else raise naming the argument."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}: {name} must be an int ≥ {minimum}, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{owner}: {name} must be ≥ {minimum}, got {value}")
    return value


def check_choice(value: Any, name: str, owner: str, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise naming the argument and the choices."""
    if value not in choices:
        raise ValueError(f"{owner}: {name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def check_wrappable(cell: Any, owner: str) -> None:
    """Refuse a cell whose output is not its hidden width (a projected LSTM) for a wrapper that
    reads the output where the state's width is expected (leak, delay line, attention query, MLP)."""
    if cell.output_size != cell.hidden_size:
        raise ValueError(
            f"{owner}: the wrapped {type(cell).__name__} outputs {cell.output_size} values per step but its state "
            f"is {cell.hidden_size} wide (a projected LSTM); {owner} needs a cell whose output is its hidden vector"
        )


def uniform_(params: list[Tensor], hidden_size: int) -> None:
    """torch.nn's RNN initialisation: every parameter from U(−1/√H, 1/√H)."""
    bound = 1.0 / math.sqrt(hidden_size)
    with torch.no_grad():
        for p in params:
            p.uniform_(-bound, bound)


def resolve(cell: nn.Module, path: str) -> Any:
    """The attribute at dotted ``path`` below ``cell``: ``resolve(cell, "cell.weight_hh")`` is
    ``cell.cell.weight_hh``. Reads the paths a :class:`CellStructure` gives."""
    return functools.reduce(getattr, path.split("."), cell)


@dataclass(frozen=True)
class CellStructure:
    r"""What a cell is made of, for code that must not depend on which class the cell is.

    A cell returns it from its ``structure`` property (:attr:`RecurrentCell.structure`), built
    afresh on each read from the cell's current options. The diagnostics read the recurrent
    matrices, gates, non-linearities and time scales from it; the torch converters and the
    native engine read ``torch_kernel``; the models read ``memory_size`` and ``inner``; the
    long-lag task reads ``keep_gate``. A new cell that describes itself here is treated like the
    built-in ones.

    Paths — ``recurrent_matrices``, ``masks``, ``leak``, ``unit_periods``, ``inner`` — are dotted
    attribute names relative to the cell, as ``named_parameters`` spells them; read one with
    :func:`resolve`. A wrapper (LeakyCell, SkipCell, DeepTransitionCell, AttentionCell) publishes
    its wrapped cell's structure under ``"cell."`` (:meth:`under`) with its own additions.

    Attributes:
        gates: the row blocks of the stacked pre-activation, ``(name, rows)`` in order; they are
            also the row blocks of the first recurrent matrix. LSTM ``i, f, g, o`` (i, f, o
            with H/k rows for memory blocks of k cells; no f in the 1997 form), GRU ``r, z, n``,
            Elman and clockwork one block ``a``. Empty when unknown.
        recurrent_matrices: paths of the parameters that multiply the previous state; the first
            is the one ``gates`` lays out (``("weight_hh",)``; a SkipCell around an Elman cell:
            ``("cell.weight_hh", "weight_skip")``).
        masks: ``(matrix, mask)`` path pairs: the matrix acts as matrix ⊙ mask (a clockwork
            cell's removed connections).
        state_fields: the field names of the cell's state NamedTuple (``("h", "c")``).
        torch_kernel: the torch kernel that computes the cell exactly — ``"lstm"``, ``"gru"``,
            ``"rnn_tanh"`` or ``"rnn_relu"`` — or None.
        kernel_family: the torch kernel of the cell's family, also when options take the cell
            outside it (``"lstm"`` for an LSTM with peepholes); defaults to ``torch_kernel``.
        kernel_extras: those options, as written in code (``("peephole=True",)``); empty when
            ``torch_kernel`` is set.
        keep_gate: the gate that decides how much of the past is kept — an LSTM's ``f``, a
            GRU's ``z`` — whose bias a forget-bias initialisation sets; None if none.
        nonlinearities: names of the step's non-linearities in the order it calls them (LSTM
            ``g, i, f, o, c``: its gates and the tanh of the new memory), or None when unknown.
        leak: path of the per-unit α (H,) of a leaky cell,
            :math:`s(t) = \alpha \odot s(t-1) + (1 - \alpha) \odot \mathrm{cell}(x(t), s(t-1))`;
            each unit's time constant is 1/(1 − α). None if the cell does not leak.
        unit_periods: path of each unit's clock period (H,) int64 (a clockwork cell), or None.
        memory_size: M for a cell that attends over a memory held in its state (its state is
            built by ``initial_state(memory, mask, inner_state)``, inner_state being the state
            of the cell at ``inner``); None otherwise.
        inner: path of the wrapped cell of a wrapper (``"cell"``), None for a cell that computes
            its step itself (then ``gates`` index its own ``weight_ih``, ``weight_hh`` and biases).

    Example:
        >>> from rnnkit.cells import ElmanCell, LSTMCell, SkipCell
        >>> s = LSTMCell(3, 4, peephole=True).structure
        >>> [name for name, _ in s.gates], s.state_fields, s.torch_kernel, s.kernel_extras
        (['i', 'f', 'g', 'o'], ('h', 'c'), None, ('peephole=True',))
        >>> s = SkipCell(ElmanCell(3, 4), delay=2).structure
        >>> s.recurrent_matrices, s.state_fields, s.inner
        (('cell.weight_hh', 'weight_skip'), ('inner', 'past'), 'cell')
    """

    gates: tuple[tuple[str, slice], ...] = ()
    recurrent_matrices: tuple[str, ...] = ()
    masks: tuple[tuple[str, str], ...] = ()
    state_fields: tuple[str, ...] = ()
    torch_kernel: str | None = None
    kernel_family: str | None = None
    kernel_extras: tuple[str, ...] = ()
    keep_gate: str | None = None
    nonlinearities: tuple[str, ...] | None = None
    leak: str | None = None
    unit_periods: str | None = None
    memory_size: int | None = None
    inner: str | None = None

    def __post_init__(self) -> None:
        for name in ("torch_kernel", "kernel_family"):
            value = getattr(self, name)
            if value is not None and value not in TORCH_KERNELS:
                raise ValueError(
                    f"CellStructure: {name} must be one of {', '.join(map(repr, TORCH_KERNELS))} or None, got {value!r}"
                )
        if self.torch_kernel is not None and self.kernel_extras:
            raise ValueError(
                "CellStructure: a cell torch computes exactly has no kernel_extras, got "
                f"torch_kernel={self.torch_kernel!r} "
                f"with kernel_extras={self.kernel_extras!r}"
            )
        if self.kernel_family is None:
            object.__setattr__(self, "kernel_family", self.torch_kernel)
        if self.keep_gate is not None and self.keep_gate not in dict(self.gates):
            raise ValueError(
                f"CellStructure: keep_gate {self.keep_gate!r} is not one of the gates {[g for g, _ in self.gates]}"
            )

    def under(self, prefix: str) -> CellStructure:
        """This structure as seen from a wrapper that holds the cell at ``prefix`` (e.g. ``"cell"``):
        every path gets ``prefix + "."`` in front."""

        def p(path: str | None) -> str | None:
            return None if path is None else f"{prefix}.{path}"

        return dataclasses.replace(
            self,
            recurrent_matrices=tuple(p(m) for m in self.recurrent_matrices),
            masks=tuple((p(m), p(k)) for m, k in self.masks),
            leak=p(self.leak),
            unit_periods=p(self.unit_periods),
            inner=p(self.inner),
        )


class RecurrentCell(nn.Module):
    """Base class of all cells: one time step ``forward(x, state) -> (output, new_state)``.

    Subclasses set ``input_size``, ``hidden_size``, ``projection_size`` and implement
    ``init_state``, ``input_projection`` and ``recurrence``. The output of every cell is its new
    hidden vector h, of shape (B, H) — (B, :attr:`output_size`) in general. A subclass describes itself by overriding
    :attr:`structure`; the default here is derived from what any cell has.
    """

    input_size: int
    hidden_size: int
    projection_size: int

    def reset_parameters(self) -> None:
        """Draw fresh initial values for every parameter (each cell documents its scheme)."""
        raise NotImplementedError

    def init_state(
        self, batch_size: int, *, dtype: torch.dtype | None = None, device: torch.device | None = None
    ) -> Any:
        """The zero state for a batch of ``batch_size``; dtype and device default to the parameters'."""
        raise NotImplementedError

    def input_projection(self, x: Tensor) -> Tensor:
        """``gi = U x + b`` for x of shape (..., I); returns (..., projection_size)."""
        raise NotImplementedError

    def recurrence(self, gi: Tensor, state: Any) -> tuple[Tensor, Any]:
        """One step from the projected input ``gi`` (B, projection_size) and the previous state.

        No argument checks: this is the inner loop. Use ``forward`` for checked calls.
        """
        raise NotImplementedError

    def output_of(self, state: Any) -> Tensor:
        """The output carried in a state (its hidden vector h)."""
        return state[0]

    @property
    def output_size(self) -> int:
        """The width of the output h — H, except for a projected LSTM (P of ``LSTMCell(proj_size=P)``).

        A cell whose output is not H wide sets it (``self.output_size = P``) or overrides it."""
        return self.__dict__.get("_output_size", self.hidden_size)

    @output_size.setter
    def output_size(self, value: int) -> None:
        self.__dict__["_output_size"] = value

    @property
    def structure(self) -> CellStructure:
        """What this cell is made of (:class:`CellStructure`), for code that must not test its class.

        This default, for a cell that does not describe itself, knows: the state's field names
        (from ``init_state``) and, as recurrent matrices, the 2-D parameters whose name starts
        with ``weight_hh``. No gates, no torch kernel.
        """
        try:
            state = self.init_state(1)
        except Exception:  # a cell whose state needs more than a batch size (e.g. a memory)
            state = None
        fields = tuple(state._fields) if is_state(state) else ()
        matrices = tuple(
            name
            for name, p in self.named_parameters()
            if name.rpartition(".")[2].startswith("weight_hh") and p.dim() == 2
        )
        return CellStructure(recurrent_matrices=matrices, state_fields=fields)

    def _computes_step_of(self, cls: type) -> bool:
        """True when this cell's class is ``cls`` or a subclass that overrides none of its step
        methods (``STEP_METHODS``): then it computes ``cls``'s equations, and a torch kernel that
        computes ``cls`` computes it too."""
        return isinstance(self, cls) and all(getattr(type(self), m) is getattr(cls, m) for m in STEP_METHODS)

    def _wrapper_structure(self, **changes: Any) -> CellStructure:
        """The structure of a wrapper around ``self.cell``: the wrapped cell's under ``"cell."``,
        with ``inner="cell"``, no torch kernel and no memory, then ``changes`` applied."""
        base = self.cell.structure.under("cell")
        defaults = dict(torch_kernel=None, kernel_family=None, kernel_extras=(), memory_size=None, inner="cell")
        return dataclasses.replace(base, **{**defaults, **changes})

    # -- the checked, public step --------------------------------------------------------------
    def forward(self, x: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        """One time step.

        Args:
            x: input of shape (B, I).
            state: the previous state (this cell's NamedTuple, or a plain tuple in its field
                order), or None for zeros.

        Returns:
            ``(output, new_state)`` with output of shape (B, H).
        """
        self.check_input(x, expected_dim=2, layout="(B, I)")
        state = self.prepare_state(state, x.shape[0], x.dtype, x.device)
        return self.recurrence(self.input_projection(x), state)

    def step(self, x: Tensor, state: Any) -> tuple[Tensor, Any]:
        """One time step without :meth:`forward`'s checks, for loops that built ``state``
        themselves (decoding one token at a time, an attention cell's inner cell): x (B, I),
        ``state`` this cell's NamedTuple → ``(output (B, H), new_state)``.

        Where torch has a fused cell op that computes this cell exactly (the structure's
        ``torch_kernel``: ``lstm``, ``gru``, ``rnn_tanh``, ``rnn_relu``), one call of it —
        what ``torch.nn.LSTMCell`` runs — instead of the step's dozen Python-level operations;
        otherwise ``recurrence(input_projection(x), state)``. Both compute the same function.
        """
        kernel = self.__dict__.get("_cell_kernel", False)
        if kernel is False:  # looked up once: a cell's structure is fixed when it is built
            kind = self.structure.torch_kernel
            kernel = _CELL_KERNELS.get(kind) if not getattr(self, "proj_size", 0) else None
            self.__dict__["_cell_kernel"] = kernel
        if kernel is None:
            return self.recurrence(self.input_projection(x), state)
        biases = (self.bias_ih, self.bias_hh) if self.bias else (None, None)
        if len(state) == 2:  # (h, c)
            h, c = kernel(x, tuple(state), self.weight_ih, self.weight_hh, *biases)
            return h, type(state)(h, c)
        h = kernel(x, state[0], self.weight_ih, self.weight_hh, *biases)
        return h, type(state)(h)

    def reference_dtype_device(self) -> tuple[torch.dtype, torch.device]:
        """The dtype and device inputs must have: the parameters' (or floating buffers')."""
        for p in self.parameters():
            return p.dtype, p.device
        for b in self.buffers():
            if b.is_floating_point():
                return b.dtype, b.device
        return torch.get_default_dtype(), torch.device("cpu")

    def check_input(self, x: Any, expected_dim: int, layout: str) -> None:
        """Raise a clear error unless ``x`` is a tensor of rank ``expected_dim`` fitting this cell."""
        owner = type(self).__name__
        if not isinstance(x, Tensor):
            raise not_a_tensor(x, "x", owner, layout, "a tensor", prefix="input ")
        if x.dim() != expected_dim:
            raise ValueError(f"{owner}: input x must have shape {layout}, got {x.dim()}-D shape {tuple(x.shape)}")
        if x.shape[-1] != self.input_size:
            raise ValueError(
                f"{owner}: input x has width {x.shape[-1]} (shape {tuple(x.shape)}), expected "
                f"input_size={self.input_size}"
            )
        dtype, device = self.reference_dtype_device()
        if x.dtype != dtype:
            raise TypeError(
                f"{owner}: input x has dtype {x.dtype}, expected the parameters' dtype {dtype}"
                + dtype_hint(x.dtype, dtype)
            )
        if x.device != device:
            raise ValueError(f"{owner}: input x is on {x.device}, expected the parameters' device {device}")

    def prepare_state(self, state: Any, batch_size: int, dtype: torch.dtype, device: torch.device) -> Any:
        """Zeros for None; otherwise the state checked against this cell's zero state."""
        template = self.init_state(batch_size, dtype=dtype, device=device)
        if state is None:
            return template
        return coerce_state(state, template, type(self).__name__)

    def _make_parameters(self, rows: int, bias: bool) -> None:
        """Create torch's four recurrent parameters: ``weight_ih`` (rows, I), ``weight_hh``
        (rows, H) and, with ``bias``, ``bias_ih`` and ``bias_hh`` (rows,). Values come from
        ``reset_parameters``."""
        self.weight_ih = nn.Parameter(torch.empty(rows, self.input_size))
        self.weight_hh = nn.Parameter(torch.empty(rows, self.hidden_size))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(rows))
            self.bias_hh = nn.Parameter(torch.empty(rows))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)

    def _dtype_device(self, dtype, device):
        ref_dtype, ref_device = self.reference_dtype_device()
        return dtype or ref_dtype, device or ref_device

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}"
