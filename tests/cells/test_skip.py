import pytest
import torch

from rnnkit.cells import ClockworkCell, ElmanCell, GRUCell, LeakyCell, LSTMCell, SkipCell, SkipState
from tests.helpers import assert_same_computation, gradcheck_cell, randomize_, step_loop


def test_skip_elman_reads_h_t_minus_d():
    d = 3
    cell = randomize_(SkipCell(ElmanCell(4, 5), delay=d).double(), seed=2)
    inner = cell.cell
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(9, 2, 4, generator=gen, dtype=torch.float64)

    def run_ours(x):
        return step_loop(cell, x, None)[0]

    def reference(x):
        # a(t) = b + W h(t-1) + W_s h(t-d) + U x(t), with h(t) = 0 for t ≤ 0
        hs = [torch.zeros(2, 5, dtype=torch.float64)] * d
        out = []
        for t in range(x.shape[0]):
            a = (
                inner.bias_ih
                + inner.bias_hh
                + hs[-1] @ inner.weight_hh.T
                + hs[-d] @ cell.weight_skip.T
                + x[t] @ inner.weight_ih.T
            )
            hs.append(torch.tanh(a))
            out.append(hs[-1])
        return torch.stack(out)

    params = list(cell.parameters())
    assert_same_computation(run_ours, reference, [x], params, params)


@pytest.mark.parametrize(
    "make",
    [
        lambda: ElmanCell(3, 4),
        lambda: LSTMCell(3, 4),
        lambda: GRUCell(3, 4),
        lambda: ClockworkCell(3, 4, periods=[1, 2]),
    ],
)
def test_zero_skip_weights_is_the_plain_cell(make):
    torch.manual_seed(0)
    inner = make().double()
    skip = SkipCell(inner, delay=4).double()
    with torch.no_grad():
        skip.weight_skip.zero_()
    x = torch.randn(12, 3, 3, dtype=torch.float64)
    y_plain, s_plain = step_loop(inner, x, None)
    y_skip, s_skip = step_loop(skip, x, None)
    torch.testing.assert_close(y_skip, y_plain, rtol=1e-10, atol=1e-10)
    for a, b in zip(s_skip.inner, s_plain):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    # the state carries the last d outputs, oldest first
    torch.testing.assert_close(s_skip.past, y_plain[-4:].transpose(0, 1))


@pytest.mark.parametrize("delay", [2, 5])
@pytest.mark.parametrize(
    "make",
    [
        lambda: ElmanCell(3, 4),
        lambda: LSTMCell(3, 4, peephole=True),
        lambda: GRUCell(3, 4),
        lambda: LeakyCell(GRUCell(3, 4), alpha=0.4, learn_alpha=True),
    ],
)
def test_skip_gradcheck(make, delay):
    gradcheck_cell(SkipCell(make(), delay=delay), steps=delay + 3)


def test_skip_state_shape():
    cell = SkipCell(LSTMCell(3, 4), delay=3)
    state = cell.init_state(2)
    assert isinstance(state, SkipState) and state.past.shape == (2, 3, 4) and state.inner.c.shape == (2, 4)
    assert cell.weight_skip.shape == (16, 4)


def test_skip_bad_delay():
    with pytest.raises(ValueError, match="delay must be ≥ 2, got 1"):
        SkipCell(ElmanCell(2, 3), delay=1)
    with pytest.raises(TypeError, match="delay must be an int"):
        SkipCell(ElmanCell(2, 3), delay=2.5)
