"""Cells publish their structure (``cell.structure``, a :class:`CellStructure`), and the code
outside ``rnnkit/cells/`` reads it instead of testing which class a cell is.

Each claim of a structure is checked against an independent source: ``torch_kernel`` against
torch.nn.RNN/LSTM/GRU run on copied weights; ``recurrent_matrices`` against autograd (a matrix
multiplies the state exactly when its gradient vanishes at the zero state and not at a random
one); ``keep_gate`` by saturating its bias (the memory's Jacobian becomes the identity);
``nonlinearities`` by recording the step's tanh/sigmoid/ReLU calls. An AST scan fails on any
``isinstance``/``type(x) is`` test naming a concrete cell class outside ``rnnkit/cells/``.
"""

from __future__ import annotations

import ast
import doctest
import importlib
import inspect
import pkgutil
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import rnnkit
import rnnkit.cells
from rnnkit.cells import (
    AttentionCell,
    AttentionState,
    ClockworkCell,
    DeepTransitionCell,
    ElmanCell,
    GRUCell,
    LeakyCell,
    LSTMCell,
    SkipCell,
)
from rnnkit.cells.base import CellStructure, RecurrentCell, check_size, resolve, uniform_
from rnnkit.cells.registry import CELLS, make_cell
from rnnkit.cells.state import map_state
from rnnkit.diagnose.compute import record_nonlinearities
from rnnkit.engine.native import native_kind
from tests.helpers import randomize_

I, H, B = 3, 4, 2
F64 = torch.float64
PACKAGE = Path(rnnkit.__file__).resolve().parent


class PairState(NamedTuple):
    h: Tensor
    m: Tensor


class TwoMatrixCell(RecurrentCell):
    """A user's cell that describes nothing: h' = tanh(U x + W h + V m), m' = h."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size, self.hidden_size = (
            check_size(input_size, "input_size", "TwoMatrixCell"),
            check_size(hidden_size, "hidden_size", "TwoMatrixCell"),
        )
        self.projection_size = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.weight_hh_m = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.gain = nn.Parameter(torch.empty(hidden_size))
        uniform_(list(self.parameters()), hidden_size)

    def init_state(self, batch_size, *, dtype=None, device=None) -> PairState:
        dtype, device = self._dtype_device(dtype, device)
        z = torch.zeros(batch_size, self.hidden_size, dtype=dtype, device=device)
        return PairState(z, z.clone())

    def input_projection(self, x):
        return F.linear(x, self.weight_ih)

    def recurrence(self, gi, state):
        h = torch.tanh(gi + F.linear(state.h, self.weight_hh) + F.linear(state.m, self.weight_hh_m)) * self.gain
        return h, PairState(h, state.h)


# -- what each cell of the registry publishes (H = 4) ----------------------------------------------
LSTM_GATES = (("i", 4), ("f", 4), ("g", 4), ("o", 4))
EXPECTED = {
    "elman": dict(
        gates=(("a", 4),),
        recurrent_matrices=("weight_hh",),
        state_fields=("h",),
        torch_kernel="rnn_tanh",
        nonlinearities=("a",),
    ),
    "irnn": dict(
        gates=(("a", 4),),
        recurrent_matrices=("weight_hh",),
        state_fields=("h",),
        torch_kernel="rnn_relu",
        nonlinearities=("a",),
    ),
    "lstm": dict(
        gates=LSTM_GATES,
        recurrent_matrices=("weight_hh",),
        state_fields=("h", "c"),
        torch_kernel="lstm",
        keep_gate="f",
        nonlinearities=("g", "i", "f", "o", "c"),
    ),
    "lstm1997": dict(
        gates=(("i", 4), ("g", 4), ("o", 4)),
        state_fields=("h", "c"),
        torch_kernel=None,
        kernel_family="lstm",
        kernel_extras=("forget_gate=False",),
        keep_gate=None,
        nonlinearities=("g", "i", "o", "c"),
    ),
    "peephole": dict(
        gates=LSTM_GATES, torch_kernel=None, kernel_family="lstm", kernel_extras=("peephole=True",), keep_gate="f"
    ),
    "lstm-blocks": dict(
        gates=(("i", 2), ("f", 2), ("g", 4), ("o", 2)),
        torch_kernel=None,
        kernel_family="lstm",
        kernel_extras=("block_size=2",),
    ),
    "gru": dict(
        gates=(("r", 4), ("z", 4), ("n", 4)),
        recurrent_matrices=("weight_hh",),
        state_fields=("h",),
        torch_kernel="gru",
        keep_gate="z",
        nonlinearities=("r", "z", "n"),
    ),
    "leaky": dict(
        gates=(("a", 4),),
        recurrent_matrices=("cell.weight_hh",),
        state_fields=("h",),
        torch_kernel=None,
        leak="alpha_values",
        inner="cell",
        nonlinearities=("a",),
    ),
    "skip": dict(
        gates=(("a", 4),),
        recurrent_matrices=("cell.weight_hh", "weight_skip"),
        state_fields=("inner", "past"),
        torch_kernel=None,
        inner="cell",
        nonlinearities=("a",),
    ),
    "clockwork": dict(
        gates=(("a", 4),),
        recurrent_matrices=("weight_hh",),
        masks=(("weight_hh", "connection_mask"),),
        state_fields=("h", "t"),
        torch_kernel=None,
        unit_periods="unit_period",
        nonlinearities=("a",),
    ),
    "deep-transition": dict(
        gates=(("a", 4),),
        recurrent_matrices=("cell.weight_hh", "mlp_hh.layers.0.weight"),
        state_fields=("h",),
        torch_kernel=None,
        inner="cell",
        nonlinearities=None,
    ),
}

# Wrappers around other cores than the registry's, nested wrappers, and a user's cell.
EXTRA = {
    "leaky-lstm": lambda: LeakyCell(LSTMCell(I, H), alpha=0.7),
    "skip-gru": lambda: SkipCell(GRUCell(I, H), delay=3),
    "skip-leaky-clockwork": lambda: SkipCell(LeakyCell(ClockworkCell(I, H, periods=(1, 2)), tau=(2.0, 9.0)), delay=2),
    "deep-lstm": lambda: DeepTransitionCell(LSTMCell(5, H), I, input_layers=(5,), transition_layers=(6, H)),
    "attention-gru": lambda: AttentionCell(GRUCell(I + 5, H), memory_size=5, attention_size=6),
    "user-cell": lambda: TwoMatrixCell(I, H),
}
WRAPPED = {
    "leaky-lstm": dict(
        gates=LSTM_GATES,
        recurrent_matrices=("cell.weight_hh",),
        state_fields=("h", "c"),
        keep_gate="f",
        leak="alpha_values",
        inner="cell",
        nonlinearities=("g", "i", "f", "o", "c"),
    ),
    "skip-gru": dict(
        gates=(("r", 4), ("z", 4), ("n", 4)),
        recurrent_matrices=("cell.weight_hh", "weight_skip"),
        state_fields=("inner", "past"),
        inner="cell",
        nonlinearities=("r", "z", "n"),
    ),
    "skip-leaky-clockwork": dict(
        recurrent_matrices=("cell.cell.weight_hh", "weight_skip"),
        masks=(("cell.cell.weight_hh", "cell.cell.connection_mask"),),
        leak="cell.alpha_values",
        unit_periods="cell.cell.unit_period",
        inner="cell",
        nonlinearities=("a",),
    ),
    "deep-lstm": dict(
        gates=LSTM_GATES,
        recurrent_matrices=("cell.weight_hh", "mlp_hh.layers.0.weight", "mlp_hh.layers.1.weight"),
        state_fields=("h", "c"),
        inner="cell",
        nonlinearities=None,
    ),
    "attention-gru": dict(
        recurrent_matrices=("cell.weight_hh", "query.weight"),
        state_fields=AttentionState._fields,
        memory_size=5,
        inner="cell",
        nonlinearities=None,
    ),
}


def build(name: str) -> RecurrentCell:
    torch.manual_seed(0)
    cell = EXTRA[name]() if name in EXTRA else make_cell(name, I, H)
    return randomize_(cell.double(), scale=0.5, seed=1)


def zero_state(cell: RecurrentCell, batch: int = B):
    if cell.structure.memory_size is not None:  # the state holds a memory: build it around one
        memory = torch.randn(
            batch, 3, cell.structure.memory_size, dtype=F64, generator=torch.Generator().manual_seed(2)
        )
        return cell.initial_state(memory)
    return cell.init_state(batch, dtype=F64)


def random_state(cell: RecurrentCell, seed: int = 3):
    gen = torch.Generator().manual_seed(seed)
    return map_state(
        lambda t: torch.randn(t.shape, dtype=F64, generator=gen) if t.is_floating_point() else t, zero_state(cell)
    )


def gate_widths(structure: CellStructure) -> tuple[tuple[str, int], ...]:
    return tuple((name, rows.stop - rows.start) for name, rows in structure.gates)


ALL = list(CELLS) + list(EXTRA)


# -- (a) the structures ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(EXPECTED) + list(WRAPPED))
def test_structure_of_each_cell_is_as_documented(name):
    s = build(name).structure
    for key, want in {**EXPECTED, **WRAPPED}[name].items():
        got = gate_widths(s) if key == "gates" else getattr(s, key)
        assert got == want, f"{name}: structure.{key} is {got!r}, expected {want!r}"


def test_every_registry_cell_is_checked_here():
    # a cell added to the registry gets the generic checks below; its table entry is welcome
    assert set(EXPECTED) <= set(CELLS)


@pytest.mark.parametrize("name", ALL)
def test_state_fields_gates_and_paths_fit_the_cell(name):
    cell = build(name)
    s = cell.structure
    assert s.state_fields == tuple(zero_state(cell)._fields)
    for path in s.recurrent_matrices:
        assert isinstance(resolve(cell, path), nn.Parameter) and resolve(cell, path).dim() == 2, path
    if s.gates:  # the gates tile the rows of the first recurrent matrix, in order
        stops = [0] + [rows.stop for _, rows in s.gates]
        assert [rows.start for _, rows in s.gates] == stops[:-1]
        assert stops[-1] == resolve(cell, s.recurrent_matrices[0]).shape[0]
    for matrix, mask in s.masks:
        assert matrix in s.recurrent_matrices and resolve(cell, mask).shape == resolve(cell, matrix).shape
    if s.leak is not None:
        alpha = resolve(cell, s.leak)
        assert alpha.shape == (cell.hidden_size,) and bool(((alpha > 0) & (alpha < 1)).all())
    if s.unit_periods is not None:
        assert resolve(cell, s.unit_periods).dtype == torch.long
    if s.inner is not None:
        assert isinstance(resolve(cell, s.inner), RecurrentCell)
    assert native_kind(cell) == s.torch_kernel


def step(cell: RecurrentCell, x: Tensor, state) -> Tensor:
    return cell.recurrence(cell.input_projection(x), state)[0]


@pytest.mark.parametrize("name", ALL)
def test_recurrent_matrices_are_the_matrices_that_multiply_the_state(name):
    # P multiplies the state exactly when ∂out/∂P vanishes at the zero state (P · 0 = 0 for every P)
    # but not at a random one. Biases are zeroed so an MLP inside the transition maps 0 to 0.
    cell = build(name)
    with torch.no_grad():
        for pname, p in cell.named_parameters():
            if pname.rpartition(".")[2].startswith("bias"):
                p.zero_()
    x = torch.randn(B, cell.input_size, dtype=F64, generator=torch.Generator().manual_seed(4))
    matrices = [(n, p) for n, p in cell.named_parameters() if p.dim() == 2]
    weights = torch.randn(B, cell.hidden_size, dtype=F64, generator=torch.Generator().manual_seed(5))

    def grads(state) -> dict[str, Tensor]:
        out = (step(cell, x, state) * weights).sum()
        return dict(
            zip([n for n, _ in matrices], torch.autograd.grad(out, [p for _, p in matrices], allow_unused=True))
        )

    at_zero, at_random = grads(zero_state(cell)), grads(random_state(cell))
    reads_state = {
        n
        for n, _ in matrices
        if (at_zero[n] is None or not at_zero[n].any()) and at_random[n] is not None and at_random[n].abs().max() > 1e-8
    }
    assert set(cell.structure.recurrent_matrices) == reads_state


@pytest.mark.parametrize("name", [n for n in ALL if build(n).structure.nonlinearities is not None])
def test_nonlinearities_name_the_calls_of_one_step(name):
    cell = build(name)
    x = torch.randn(2, B, cell.input_size, dtype=F64, generator=torch.Generator().manual_seed(6))
    recorded = record_nonlinearities(cell, x)  # falls back to "tanh0", "sigmoid1", ... if the count differs
    assert list(recorded) == list(cell.structure.nonlinearities)
    kinds = {name: kind for name, (kind, _) in recorded.items()}
    expected = {
        "g": "tanh",
        "c": "tanh",
        "i": "sigmoid",
        "f": "sigmoid",
        "o": "sigmoid",
        "r": "sigmoid",
        "z": "sigmoid",
        "n": "tanh",
    }
    assert all(kinds[k] == v for k, v in expected.items() if k in kinds)


@pytest.mark.parametrize(
    "name", [n for n in ALL if build(n).structure.keep_gate is not None and build(n).structure.inner is None]
)
@pytest.mark.parametrize("bias", [30.0, -30.0])
def test_keep_gate_decides_whether_the_memory_is_kept(name, bias):
    # With every other parameter zero, the memory field's Jacobian ∂m(t)/∂m(t−1) is the keep
    # gate's value: the identity when its bias saturates it open, zero when shut. Rows of another
    # gate would leave the keep gate at σ(0) = 1/2.
    cell = build(name)
    s = cell.structure
    rows = dict(s.gates)[s.keep_gate]
    with torch.no_grad():
        for p in cell.parameters():
            p.zero_()
        cell.bias_ih[rows] = bias
    memory = "c" if "c" in s.state_fields else "h"
    state = map_state(lambda t: t[:1], random_state(cell))  # one sequence
    x = torch.randn(1, I, dtype=F64, generator=torch.Generator().manual_seed(7))

    def new_memory(m: Tensor) -> Tensor:
        old = state._replace(**{memory: m.view(1, -1)})
        return getattr(cell.recurrence(cell.input_projection(x), old)[1], memory).flatten()

    J = torch.autograd.functional.jacobian(new_memory, getattr(state, memory).flatten())
    expected = torch.eye(cell.hidden_size, dtype=F64) * (1.0 if bias > 0 else 0.0)
    torch.testing.assert_close(J, expected, rtol=0, atol=1e-12)


TORCH = {
    "rnn_tanh": lambda: nn.RNN(I, H, nonlinearity="tanh", dtype=F64),
    "rnn_relu": lambda: nn.RNN(I, H, nonlinearity="relu", dtype=F64),
    "lstm": lambda: nn.LSTM(I, H, dtype=F64),
    "gru": lambda: nn.GRU(I, H, dtype=F64),
}


def run_both(cell: RecurrentCell, module: nn.RNNBase, T: int = 6):
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(T, B, I, dtype=F64, generator=gen)
    state = random_state(cell, seed=9)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(module, f"{name}_l0").copy_(getattr(cell, name))
    ours, s = [], state
    for t in range(T):
        out, s = cell(x[t], s)
        ours.append(out)
    hx = tuple(f.unsqueeze(0) for f in state) if isinstance(module, nn.LSTM) else state.h.unsqueeze(0)
    theirs, final = module(x, hx)
    return torch.stack(ours), s, theirs, final


@pytest.mark.parametrize("name", [n for n in ALL if build(n).structure.torch_kernel is not None])
def test_a_claimed_torch_kernel_computes_the_cell_exactly(name):
    cell = build(name)
    ours, state, theirs, final = run_both(cell, TORCH[cell.structure.torch_kernel]())
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    for mine, torch_final in zip(state, final if isinstance(final, tuple) else (final,)):
        torch.testing.assert_close(mine, torch_final[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("options", [dict(peephole=True), dict(cell_clip=0.05)], ids=str)
def test_kernel_extras_are_options_torch_does_not_compute(options):
    cell = randomize_(LSTMCell(I, H, **options).double(), seed=10)
    s = cell.structure
    assert s.torch_kernel is None and s.kernel_family == "lstm" and len(s.kernel_extras) == 1
    ours, _, theirs, _ = run_both(cell, TORCH["lstm"]())
    assert (ours - theirs).abs().max() > 1e-3


class PlainElman(ElmanCell):
    """A subclass that changes only the initialisation: it still computes the Elman step."""

    def reset_parameters(self) -> None:
        super().reset_parameters()
        with torch.no_grad():
            self.weight_hh.mul_(0.5)


class GatedElman(ElmanCell):
    """A subclass with its own step: no torch kernel computes it."""

    def recurrence(self, gi, state):
        h, new = super().recurrence(gi, state)
        return 0.5 * h, type(new)(0.5 * h)


def test_a_subclass_keeps_the_kernel_only_while_it_keeps_the_step():
    plain = randomize_(PlainElman(I, H).double(), seed=11)
    assert plain.structure.torch_kernel == "rnn_tanh"
    ours, _, theirs, _ = run_both(plain, TORCH["rnn_tanh"]())
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    gated = GatedElman(I, H)
    assert gated.structure.torch_kernel is None and gated.structure.gates == ElmanCell(I, H).structure.gates
    assert native_kind(gated) is None and not runs_natively(gated) and runs_natively(plain)


def runs_natively(cell: RecurrentCell) -> bool:
    layer = rnnkit.Recurrent(cell)
    layer(torch.randn(2, 1, cell.input_size, dtype=cell.weight_ih.dtype))
    return layer.last_engine == "native"


def test_the_default_structure_of_a_cell_that_describes_nothing():
    cell = TwoMatrixCell(I, H)  # its recurrent matrices are checked by autograd with the others above
    s = cell.structure
    assert s == CellStructure(recurrent_matrices=("weight_hh", "weight_hh_m"), state_fields=("h", "m"))
    assert s.torch_kernel is None and s.gates == () and s.nonlinearities is None and s.inner is None
    from rnnkit.diagnose import recurrent_matrices

    assert list(recurrent_matrices(cell)) == ["W", "hh_m"]
    wrapped = LeakyCell(cell, alpha=0.5).structure
    assert wrapped.recurrent_matrices == ("cell.weight_hh", "cell.weight_hh_m") and wrapped.state_fields == ("h", "m")


def test_structure_is_validated():
    with pytest.raises(
        ValueError, match="torch_kernel must be one of 'lstm', 'gru', 'rnn_tanh', 'rnn_relu' or None, got 'LSTM'"
    ):
        CellStructure(torch_kernel="LSTM")
    with pytest.raises(ValueError, match="has no kernel_extras"):
        CellStructure(torch_kernel="lstm", kernel_extras=("peephole=True",))
    with pytest.raises(ValueError, match="keep_gate 'f' is not one of the gates \\['a'\\]"):
        CellStructure(gates=(("a", slice(0, 4)),), keep_gate="f")


def test_the_docstring_example_runs():
    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(CellStructure, "CellStructure", globs={}):
        runner.run(test)
    assert runner.failures == 0 and runner.tries > 0


# -- (b) nobody outside rnnkit/cells/ tests which class a cell is ----------------------------------
# Files allowed to test cell classes: none. The fused engine reads a cell's step by tracing it and
# the engine choice reads cell.structure, so no module outside rnnkit/cells/ names a cell class.
ALLOWED: set[str] = set()


def concrete_cell_classes() -> set[str]:
    """The names of every RecurrentCell subclass defined in rnnkit.cells (new cells included)."""
    names = set()
    for info in pkgutil.walk_packages(rnnkit.cells.__path__, "rnnkit.cells."):
        for obj in vars(importlib.import_module(info.name)).values():
            if inspect.isclass(obj) and issubclass(obj, RecurrentCell) and obj is not RecurrentCell:
                names.add(obj.__name__)
    return names


def names_in(node: ast.AST) -> set[str]:
    """The class names an expression mentions: ``LSTMCell``, ``cells.LSTMCell``, ``(A, B)``."""
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} | {
        n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)
    }


def class_tests(source: str, classes: set[str]) -> list[tuple[int, str]]:
    """Line and text of each isinstance/issubclass call, ``type(x) is/==/in`` comparison, or
    ``case Class()`` pattern naming one of ``classes``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        hit = False
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("isinstance", "issubclass")
        ):
            hit = len(node.args) == 2 and bool(names_in(node.args[1]) & classes)
        elif isinstance(node, ast.Compare) and any(
            isinstance(op, (ast.Is, ast.IsNot, ast.Eq, ast.NotEq, ast.In, ast.NotIn)) for op in node.ops
        ):
            hit = any(
                isinstance(side, (ast.Name, ast.Attribute, ast.Tuple, ast.Set, ast.List)) and names_in(side) & classes
                for side in (node.left, *node.comparators)
            )
        elif isinstance(node, ast.MatchClass):
            hit = bool(names_in(node.cls) & classes)
        if hit:
            found.append((node.lineno, ast.get_source_segment(source, node)))
    return found


def test_the_scan_finds_class_tests():
    classes = {"LSTMCell", "GRUCell", "LeakyCell", "SkipCell"}
    source = (
        "isinstance(c, LSTMCell)\nisinstance(c, (LeakyCell, SkipCell))\ntype(c) is GRUCell\n"
        "kind is cells.LSTMCell\ntype(c) in (GRUCell,)\nmatch c:\n    case SkipCell(): pass\n"
        "isinstance(c, RecurrentCell)\ntype(s) is not BidirectionalState\nisinstance(x, Tensor)\n"
    )
    assert [line for line, _ in class_tests(source, classes)] == [1, 2, 3, 4, 5, 7]


def test_no_code_outside_the_cells_tests_which_class_a_cell_is():
    classes = concrete_cell_classes()
    assert {
        "ElmanCell",
        "LSTMCell",
        "GRUCell",
        "LeakyCell",
        "SkipCell",
        "ClockworkCell",
        "DeepTransitionCell",
        "AttentionCell",
    } <= classes
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).as_posix()
        if rel.startswith("rnnkit/cells/") or rel in ALLOWED:
            continue
        for line, text in class_tests(path.read_text(encoding="utf-8"), classes):
            offenders.append(f"{rel}:{line}: {text}")
    assert not offenders, "read cell.structure instead of testing the cell's class:\n" + "\n".join(offenders)
