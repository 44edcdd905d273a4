"""The contract every cell keeps: one step, NamedTuple state, clear errors at the boundary."""

import pytest
import torch

from rnnkit.cells import ClockworkCell, ElmanCell, GRUCell, LeakyCell, LSTMCell, LSTMState, RNNState, SkipCell
from rnnkit.cells.state import map_state, state_tensors

ALL_CELLS = {
    "elman": lambda: ElmanCell(3, 4),
    "lstm": lambda: LSTMCell(3, 4),
    "lstm1997": lambda: LSTMCell(3, 4, forget_gate=False, cell_clip=10.0),
    "peephole-blocks": lambda: LSTMCell(3, 4, peephole=True, block_size=2),
    "gru": lambda: GRUCell(3, 4),
    "leaky": lambda: LeakyCell(LSTMCell(3, 4), alpha=0.5),
    "skip": lambda: SkipCell(GRUCell(3, 4), delay=3),
    "clockwork": lambda: ClockworkCell(3, 4, periods=[1, 2]),
}


@pytest.fixture(params=list(ALL_CELLS), ids=list(ALL_CELLS))
def cell(request):
    torch.manual_seed(0)
    return ALL_CELLS[request.param]()


def test_step_signature_and_state_type(cell):
    x = torch.randn(2, 3)
    out, state = cell(x, None)
    assert out.shape == (2, 4)
    assert hasattr(state, "_fields")  # a NamedTuple
    out2, state2 = cell(x, state)
    assert type(state2) is type(state)
    torch.testing.assert_close(cell.output_of(state2), out2)


def test_plain_tuple_state_is_accepted(cell):
    x = torch.randn(2, 3)
    _, state = cell(x, None)
    as_tuple = tuple(state)
    out_a, _ = cell(x, state)
    out_b, _ = cell(x, as_tuple)
    torch.testing.assert_close(out_a, out_b)


def test_wrong_input_width(cell):
    with pytest.raises(ValueError, match=r"input x has width 5 \(shape \(2, 5\)\), expected input_size=3"):
        cell(torch.randn(2, 5))


def test_wrong_input_rank(cell):
    with pytest.raises(ValueError, match=r"input x must have shape \(B, I\), got 3-D shape \(1, 2, 3\)"):
        cell(torch.randn(1, 2, 3))
    with pytest.raises(TypeError, match="input x must be a tensor"):
        cell([[0.0, 1.0, 2.0]])


def test_wrong_input_dtype(cell):
    with pytest.raises(
        TypeError, match="input x has dtype torch.float64, expected the parameters' dtype torch.float32"
    ):
        cell(torch.randn(2, 3, dtype=torch.float64))


def test_wrong_input_device(cell):
    with pytest.raises(ValueError, match="input x is on meta, expected the parameters' device cpu"):
        cell(torch.empty(2, 3, device="meta"))


def test_wrong_state_shape(cell):
    _, state = cell(torch.randn(2, 3), None)
    first = state[0]
    bad = type(state)(*([first[:1]] + list(state[1:]))) if isinstance(first, torch.Tensor) else None
    if bad is None:  # nested state (skip): break the inner h
        inner = state.inner
        bad = type(state)(type(inner)(inner[0][:1], *inner[1:]), state.past)
    with pytest.raises(ValueError, match=r"state\.(inner\.)?h has shape \(1, 4\), expected \(2, 4\)"):
        cell(torch.randn(2, 3), bad)


def test_wrong_state_type(cell):
    with pytest.raises(TypeError, match="state must be a"):
        cell(torch.randn(2, 3), torch.zeros(2, 4) if not isinstance(cell, ElmanCell) else "h")
    with pytest.raises(TypeError, match="state must be a"):
        cell(torch.randn(2, 3), (torch.zeros(2, 4),) * 5)


def test_wrong_state_dtype():
    cell = LSTMCell(3, 4)
    with pytest.raises(TypeError, match=r"state\.c has dtype torch.float64, expected torch.float32"):
        cell(torch.randn(2, 3), LSTMState(torch.zeros(2, 4), torch.zeros(2, 4, dtype=torch.float64)))
    with pytest.raises(TypeError, match=r"must be a LSTMState\('h', 'c'\), got RNNState\('h',\)"):
        cell(torch.randn(2, 3), RNNState(torch.zeros(2, 4)))


def test_cells_move_to_float64_and_keep_working(cell):
    cell = cell.double()
    out, _ = cell(torch.randn(2, 3, dtype=torch.float64))
    assert out.dtype == torch.float64


STEP_CASES = {
    **ALL_CELLS,
    "elman-relu": lambda: ElmanCell(3, 4, nonlinearity="relu"),
    "lstm-no-bias": lambda: LSTMCell(3, 4, bias=False),
    "gru-no-bias": lambda: GRUCell(3, 4, bias=False),
    "lstm-projected": lambda: LSTMCell(3, 4, proj_size=2),
}


@pytest.mark.parametrize("name", list(STEP_CASES))
def test_unchecked_step_is_the_checked_step_values_and_gradients(name):
    """``step`` (torch's fused cell op where the structure names one, else recurrence) computes
    forward's function: same output, state and gradients, in float64 with random weights."""
    torch.manual_seed(1)
    cell = STEP_CASES[name]().double()
    with torch.no_grad():
        for p in cell.parameters():
            p.uniform_(-0.8, 0.8)
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    state = cell.init_state(5, dtype=torch.float64)
    state = map_state(lambda t: torch.randn_like(t) if t.is_floating_point() else t, state)
    got = cell.step(x, state)
    want = cell.recurrence(cell.input_projection(x), state)
    torch.testing.assert_close(got[0], want[0], rtol=1e-12, atol=1e-12)
    for a, b in zip(state_tensors(got[1]), state_tensors(want[1]), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert type(got[1]) is type(want[1])
    grads = [torch.autograd.grad(out[0].sin().sum(), [x, *cell.parameters()]) for out in (got, want)]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_unchecked_step_of_a_subclass_with_its_own_recurrence_runs_that_recurrence():
    class Doubled(LSTMCell):  # a user's variant: torch's kernel no longer computes it
        def recurrence(self, gi, state):
            return super().recurrence(2 * gi, state)

    torch.manual_seed(0)
    cell, plain = Doubled(3, 4), LSTMCell(3, 4)
    plain.load_state_dict(cell.state_dict())
    x, state = torch.randn(2, 3), cell.init_state(2)
    torch.testing.assert_close(cell.step(x, state)[0], cell.recurrence(cell.input_projection(x), state)[0])
    assert not torch.allclose(cell.step(x, state)[0], plain.step(x, state)[0])
