import pytest
import torch

from rnnkit import Bidirectional, Recurrent, Stack
from rnnkit.cells import ElmanCell, GRUCell, LeakyCell, LSTMCell, SkipCell
from tests.helpers import TOL, randomize_, step_loop


def test_bidirectional_is_forward_and_backward_runs_merged():
    fwd = randomize_(LSTMCell(3, 4, peephole=True).double(), seed=1)
    bwd = randomize_(LSTMCell(3, 4, peephole=True).double(), seed=2)
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    h, h_final = step_loop(fwd, x, None)
    g, g_final = step_loop(bwd, x.flip(0), None)
    g = g.flip(0)
    y, state = Bidirectional(fwd, bwd)(x)
    torch.testing.assert_close(y, torch.cat([h, g], -1), **TOL[torch.float64])
    torch.testing.assert_close(state.forward.c, h_final.c)
    torch.testing.assert_close(state.backward.c, g_final.c)
    y_sum, _ = Bidirectional(fwd, bwd, merge="sum")(x)
    torch.testing.assert_close(y_sum, h + g, **TOL[torch.float64])


def test_bidirectional_default_backward_cell_is_a_fresh_copy():
    cell = SkipCell(LeakyCell(GRUCell(3, 4), alpha=0.3), delay=2)
    layer = Bidirectional(cell)
    bwd = layer.backward_layer.cell
    assert type(bwd) is SkipCell and bwd is not cell
    assert not torch.equal(bwd.weight_skip, cell.weight_skip)
    assert layer.output_size == 8


def test_stack_equals_layers_applied_in_turn():
    torch.manual_seed(0)
    cells = [ElmanCell(3, 5), LSTMCell(5, 4, forget_gate=False), GRUCell(4, 6)]
    stack = Stack([Recurrent(c) for c in cells])
    x = torch.randn(7, 2, 3)
    y = x
    for c in cells:
        y, _ = step_loop(c, y, None)
    out, states = stack(x)
    torch.testing.assert_close(out, y)
    assert len(states) == 3 and states[1].c.shape == (2, 4)


def test_stack_build_chains_sizes():
    stack = Stack.build(GRUCell, 3, 8, num_layers=3, bidirectional=True, batch_first=True)
    assert [layer.input_size for layer in stack.layers] == [3, 16, 16]
    y, _ = stack(torch.randn(2, 5, 3))
    assert y.shape == (2, 5, 16)


def test_stack_bad_arguments():
    with pytest.raises(ValueError, match="layer 1 has input_size 4, expected layer 0's output size 5"):
        Stack([Recurrent(ElmanCell(3, 5)), Recurrent(ElmanCell(4, 4))])
    with pytest.raises(ValueError, match="same batch_first"):
        Stack([Recurrent(ElmanCell(3, 5)), Recurrent(ElmanCell(5, 4), batch_first=True)])
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), got 1.5"):
        Stack([Recurrent(ElmanCell(3, 5))], dropout=1.5)
    with pytest.raises(ValueError, match="num_layers must be ≥ 1, got 0"):
        Stack.build(GRUCell, 3, 4, num_layers=0)
    with pytest.raises(TypeError, match="state must be a tuple of 2 layer states, got list of length 1"):
        Stack.build(GRUCell, 3, 4, num_layers=2)(torch.randn(4, 2, 3), [None])
    with pytest.raises(ValueError, match="merge='sum' needs equal hidden sizes, got 4 and 5"):
        Bidirectional(GRUCell(3, 4), GRUCell(3, 5), merge="sum")
    with pytest.raises(ValueError, match="merge must be one of 'concat', 'sum'"):
        Bidirectional(GRUCell(3, 4), merge="max")
