import pytest
import torch

from rnnkit.cells import (
    ClockworkCell,
    ElmanCell,
    GRUCell,
    LeakyCell,
    LSTMCell,
    LSTMState,
    SkipCell,
    alphas_from_time_constants,
)
from tests.helpers import assert_same_computation, gradcheck_cell, randomize_, step_loop


def _inputs(cell, steps=7, batch=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(steps, batch, cell.input_size, generator=gen, dtype=torch.float64)
    h = torch.randn(batch, cell.hidden_size, generator=gen, dtype=torch.float64)
    c = torch.randn(batch, cell.hidden_size, generator=gen, dtype=torch.float64)
    return x, h, c


@pytest.mark.parametrize("learn", [False, True])
def test_leaky_lstm_equals_the_formula_on_h_and_c(learn):
    inner = randomize_(LSTMCell(4, 5).double(), seed=1)
    alpha = torch.linspace(0.1, 0.9, 5, dtype=torch.float64)
    cell = LeakyCell(inner, alpha=alpha, learn_alpha=learn).double()
    x, h, c = _inputs(cell)

    def reference(xt, s):
        a = torch.sigmoid(cell.alpha_logit) if learn else alpha
        h, c = s
        _, (hn, cn) = inner(xt, LSTMState(h, c))
        h = a * h + (1 - a) * hn  # h(t) = α h(t-1) + (1-α) f(h(t-1), x(t))
        c = a * c + (1 - a) * cn
        return h, (h, c)

    params = list(cell.parameters())
    assert_same_computation(
        lambda x, h, c: step_loop(cell, x, (h, c)),
        lambda x, h, c: step_loop(reference, x, (h, c)),
        [x, h, c],
        params,
        params,
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda: ElmanCell(3, 5),
        lambda: LSTMCell(3, 5),
        lambda: GRUCell(3, 5),
        lambda: ClockworkCell(3, 5, periods=[1, 2]),
    ],
)
def test_alpha_to_zero_is_the_plain_cell(make):
    torch.manual_seed(0)
    inner = make().double()
    leaky = LeakyCell(inner, alpha=1e-13).double()
    x = torch.randn(10, 2, 3, dtype=torch.float64)
    y_plain, s_plain = step_loop(inner, x, None)
    y_leaky, s_leaky = step_loop(leaky, x, None)
    torch.testing.assert_close(y_leaky, y_plain, rtol=1e-10, atol=1e-10)
    for a, b in zip(s_leaky, s_plain):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "kwargs",
    [dict(alpha=0.6), dict(alpha=0.3, learn_alpha=True), dict(tau=(2.0, 50.0)), dict(tau=(1.5, 8.0), learn_alpha=True)],
)
@pytest.mark.parametrize(
    "make", [lambda: ElmanCell(3, 5), lambda: LSTMCell(3, 5, peephole=True), lambda: GRUCell(3, 5)]
)
def test_leaky_gradcheck(make, kwargs):
    gradcheck_cell(LeakyCell(make(), **kwargs))


def test_time_constants_are_spread_geometrically():
    alpha = alphas_from_time_constants(4, 2.0, 16.0)
    torch.testing.assert_close(1 / (1 - alpha), torch.tensor([2.0, 4.0, 8.0, 16.0], dtype=torch.float64))
    cell = LeakyCell(ElmanCell(2, 4), tau=(2.0, 16.0))
    torch.testing.assert_close(cell.time_constants, torch.tensor([2.0, 4.0, 8.0, 16.0]))


def test_learned_alpha_stays_in_the_open_interval():
    cell = LeakyCell(ElmanCell(2, 3), alpha=0.5, learn_alpha=True)
    with torch.no_grad():
        cell.alpha_logit.copy_(torch.tensor([-50.0, 0.0, 50.0]))
    a = cell.alpha_values
    assert (a >= 0).all() and (a <= 1).all()
    assert cell.alpha_logit.requires_grad and "alpha_logit" in dict(cell.named_parameters())


def test_leaky_bad_arguments():
    with pytest.raises(ValueError, match=r"alpha must lie in the open interval \(0, 1\), got 1.5"):
        LeakyCell(ElmanCell(2, 3), alpha=1.5)
    with pytest.raises(ValueError, match=r"open interval \(0, 1\), got 0.0"):
        LeakyCell(ElmanCell(2, 3), alpha=[0.5, 0.0, 0.2])
    with pytest.raises(ValueError, match="alpha must be one number or hidden_size=3 numbers, got 2"):
        LeakyCell(ElmanCell(2, 3), alpha=[0.5, 0.2])
    with pytest.raises(ValueError, match="give exactly one of alpha or tau"):
        LeakyCell(ElmanCell(2, 3))
    with pytest.raises(ValueError, match="1 < tau_min"):
        LeakyCell(ElmanCell(2, 3), tau=(1.0, 5.0))
    with pytest.raises(TypeError, match=r"use SkipCell\(LeakyCell"):
        LeakyCell(SkipCell(ElmanCell(2, 3), delay=2), alpha=0.5)
    with pytest.raises(TypeError, match="cell must be an rnnkit cell, got RNNCell"):
        LeakyCell(torch.nn.RNNCell(2, 3), alpha=0.5)
