import pytest
import torch

from rnnkit.cells import ClockworkCell, ClockworkState, ElmanCell
from tests.helpers import assert_same_computation, gradcheck_cell, randomize_, step_loop


def reference_clockwork(cell, x, h):
    """Koutník et al. 2014 written per module: module i (period T_i) is executed at steps with
    t mod T_i = 0 and then reads the input and the modules j with T_j ≥ T_i."""
    groups = torch.arange(cell.hidden_size).tensor_split(len(cell.periods))
    b = cell.bias_ih + cell.bias_hh
    outs = []
    for t in range(x.shape[0]):
        cols = []
        for gi, Ti in zip(groups, cell.periods):
            if t % Ti == 0:
                a = b[gi] + x[t] @ cell.weight_ih[gi].T
                for gj, Tj in zip(groups, cell.periods):
                    if Tj >= Ti:
                        a = a + h[:, gj] @ cell.weight_hh[gi][:, gj].T
                cols.append(torch.tanh(a))
            else:
                cols.append(h[:, gi])
        h = torch.cat(cols, 1)
        outs.append(h)
    return torch.stack(outs), h


def test_clockwork_equals_the_per_module_reference():
    cell = randomize_(ClockworkCell(3, 10, periods=[1, 4, 2]).double(), seed=4)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(11, 2, 3, generator=gen, dtype=torch.float64)
    h0 = torch.randn(2, 10, generator=gen, dtype=torch.float64)
    params = list(cell.parameters())
    assert_same_computation(
        lambda x, h: step_loop(cell, x, ClockworkState(h, torch.zeros(2, dtype=torch.long))),
        lambda x, h: reference_clockwork(cell, x, h),
        [x, h0],
        params,
        params,
    )


def test_removed_connections_get_no_gradient():
    cell = ClockworkCell(2, 4, periods=[1, 2])
    y, _ = step_loop(cell, torch.randn(6, 3, 2), None)
    y.sum().backward()
    # units 0,1 (period 1) may read all; units 2,3 (period 2) must not read units 0,1
    assert (cell.weight_hh.grad[2:, :2] == 0).all()
    assert (cell.weight_hh.grad[:2, :] != 0).all()


def test_slow_groups_hold_their_value_between_ticks():
    cell = ClockworkCell(2, 6, periods=[1, 3])
    y, state = step_loop(cell, torch.randn(7, 2, 2), None)
    torch.testing.assert_close(y[1, :, 3:], y[0, :, 3:])
    torch.testing.assert_close(y[2, :, 3:], y[0, :, 3:])
    assert not torch.allclose(y[3, :, 3:], y[2, :, 3:])
    assert state.t.tolist() == [7, 7]


def test_all_periods_one_is_the_plain_elman_cell():
    torch.manual_seed(0)
    clock = ClockworkCell(3, 8, periods=[1, 1, 1, 1]).double()
    elman = ElmanCell(3, 8).double()
    elman.load_state_dict(clock.state_dict())
    x = torch.randn(9, 2, 3, dtype=torch.float64)
    y_clock, _ = step_loop(clock, x, None)
    y_elman, _ = step_loop(elman, x, None)
    torch.testing.assert_close(y_clock, y_elman, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("periods", [[1], [1, 2], [1, 2, 4, 8], [3, 1]])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_clockwork_gradcheck(periods, nonlinearity):
    gradcheck_cell(ClockworkCell(3, 8, periods=periods, nonlinearity=nonlinearity), steps=9)


def test_clockwork_bad_periods():
    for bad in ([0, 1], [1, -2], [1.5, 2], [True]):
        with pytest.raises(ValueError, match="periods must be positive integers"):
            ClockworkCell(2, 8, periods=bad)
    with pytest.raises(ValueError, match="non-empty"):
        ClockworkCell(2, 8, periods=[])
    with pytest.raises(ValueError, match="3 periods need hidden_size ≥ 3, got 2"):
        ClockworkCell(2, 2, periods=[1, 2, 4])
