import math

import pytest
import torch

from rnnkit.cells import ElmanCell, RNNState
from tests.helpers import check_cell_against_torch, gradcheck_cell


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("bias", [True, False])
def test_elman_equals_torch_rnncell(dtype, nonlinearity, bias):
    check_cell_against_torch(
        ElmanCell(5, 7, bias=bias, nonlinearity=nonlinearity),
        torch.nn.RNNCell(5, 7, bias=bias, nonlinearity=nonlinearity),
        dtype,
    )


def test_elman_step_is_the_textbook_equation():
    torch.manual_seed(0)
    cell = ElmanCell(4, 6).double()
    x, h = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)
    U, W, b = cell.weight_ih, cell.weight_hh, cell.bias_ih + cell.bias_hh
    expected = torch.tanh(b + h @ W.T + x @ U.T)  # a = b + W h(t-1) + U x(t)
    out, state = cell(x, RNNState(h))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-14)
    assert isinstance(state, RNNState) and state.h is out


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("init", ["default", "orthogonal", "identity"])
def test_elman_gradcheck(nonlinearity, init):
    gradcheck_cell(ElmanCell(3, 5, nonlinearity=nonlinearity, init=init))


def test_identity_init_is_the_irnn():
    cell = ElmanCell(3, 8, nonlinearity="relu", init="identity")
    torch.testing.assert_close(cell.weight_hh.detach(), torch.eye(8))
    assert cell.bias_ih.abs().max() == 0 and cell.bias_hh.abs().max() == 0
    # the input weights keep torch's default init, not zeros
    assert cell.weight_ih.abs().max() > 0
    scaled = ElmanCell(3, 8, init="identity", gain=0.5)
    torch.testing.assert_close(scaled.weight_hh.detach(), 0.5 * torch.eye(8))


def test_orthogonal_init_puts_eigenvalues_on_the_unit_circle():
    torch.manual_seed(0)
    W = ElmanCell(3, 16, init="orthogonal").weight_hh.detach().double()
    torch.testing.assert_close(W @ W.T, torch.eye(16, dtype=torch.float64), rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.linalg.eigvals(W).abs(), torch.ones(16, dtype=torch.float64), rtol=0, atol=1e-6)


def test_default_init_is_torchs_uniform():
    torch.manual_seed(0)
    cell = ElmanCell(30, 64)
    bound = 1 / math.sqrt(64)
    for p in cell.parameters():
        assert p.abs().max() <= bound and p.abs().max() > 0.9 * bound


def test_state_dict_round_trip_with_torch_rnncell():
    theirs = torch.nn.RNNCell(4, 6, nonlinearity="relu")
    ours = ElmanCell(4, 6, nonlinearity="relu")
    ours.load_state_dict(theirs.state_dict())
    back = torch.nn.RNNCell(4, 6, nonlinearity="relu")
    back.load_state_dict(ours.state_dict())
    x = torch.randn(2, 4)
    torch.testing.assert_close(back(x), theirs(x))


def test_elman_bad_arguments():
    with pytest.raises(ValueError, match="hidden_size must be ≥ 1, got 0"):
        ElmanCell(3, 0)
    with pytest.raises(TypeError, match="input_size must be an int"):
        ElmanCell(3.5, 4)
    with pytest.raises(ValueError, match="nonlinearity must be one of 'tanh', 'relu', got 'sigmoid'"):
        ElmanCell(3, 4, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="init must be one of"):
        ElmanCell(3, 4, init="zeros")
