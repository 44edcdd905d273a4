import pytest
import torch

from rnnkit.cells import GRUCell, RNNState
from tests.helpers import check_cell_against_torch, gradcheck_cell


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("bias", [True, False])
def test_gru_equals_torch_grucell(dtype, bias):
    check_cell_against_torch(GRUCell(5, 7, bias=bias), torch.nn.GRUCell(5, 7, bias=bias), dtype)


def test_gru_step_is_the_documented_equation():
    torch.manual_seed(0)
    cell = GRUCell(3, 4).double()
    x, h = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    Wi, Wh, bi, bh = cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh
    r = torch.sigmoid(x @ Wi[0:4].T + bi[0:4] + h @ Wh[0:4].T + bh[0:4])
    z = torch.sigmoid(x @ Wi[4:8].T + bi[4:8] + h @ Wh[4:8].T + bh[4:8])
    n = torch.tanh(x @ Wi[8:].T + bi[8:] + r * (h @ Wh[8:].T + bh[8:]))
    out, state = cell(x, RNNState(h))
    torch.testing.assert_close(out, (1 - z) * n + z * h, rtol=0, atol=1e-14)


@pytest.mark.parametrize("bias", [True, False])
def test_gru_gradcheck(bias):
    gradcheck_cell(GRUCell(3, 5, bias=bias))


def test_gru_keep_gate_bias():
    cell = GRUCell(3, 4, forget_bias=1.5)
    torch.testing.assert_close((cell.bias_ih + cell.bias_hh)[4:8].detach(), torch.full((4,), 1.5))


def test_state_dict_round_trip_with_torch_grucell():
    theirs = torch.nn.GRUCell(4, 6)
    ours = GRUCell(4, 6)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 4)
    torch.testing.assert_close(ours(x)[0], theirs(x))
