"""The contract every cell keeps: one step, NamedTuple state, clear errors at the boundary."""

import pytest
import torch

from rnnkit.cells import ClockworkCell, ElmanCell, GRUCell, LeakyCell, LSTMCell, LSTMState, RNNState, SkipCell

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
    with pytest.raises(TypeError, match="input x has dtype torch.float64, expected the parameters' dtype torch.float32"):
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
