"""The layer-normalised LSTM and GRU, the MGU, the CIFG LSTM and the IndRNN.

Each is checked against a step written here again from its paper's equations (explicit row
blocks, ``@`` for products, layer norm from its definition), not by calling the cell: the
layer's outputs, final state and every gradient in float64 to 1e-10; then float64 gradcheck,
padded batches against each sequence alone, the documented initialisation, and the errors.
"""

import math

import pytest
import torch

from rnnkit import Recurrent
from rnnkit.cells import CIFGLSTMCell, IndRNNCell, LayerNormGRUCell, LayerNormLSTMCell, LSTMState, MGUCell, RNNState
from rnnkit.cells.registry import CELLS, make_cell
from rnnkit.cells.state import state_tensors
from tests.helpers import TOL, assert_same_computation, gradcheck_cell, randomize_, step_loop

F64 = torch.float64
sig, tanh = torch.sigmoid, torch.tanh
I, H = 3, 5


# -- the equations, written again ------------------------------------------------------------------


def layer_norm(v, gain, shift, eps):
    """LN(v; α, β) = α ⊙ (v − μ) / √(s² + ε) + β over each row, s² the biased variance."""
    mu = v.mean(-1, keepdim=True)
    var = ((v - mu) ** 2).mean(-1, keepdim=True)
    return gain * (v - mu) / torch.sqrt(var + eps) + shift


def blocks(v, n):
    """The n H-column blocks of v (B, n·H), in order."""
    return [v[:, k * H : (k + 1) * H] for k in range(n)]


def effective_bias(cell, rows):
    if not cell.bias:
        return torch.zeros(rows, dtype=F64)
    return cell.bias_ih + cell.bias_hh


def ln_lstm_step(cell, x, state):
    """Ba, Kiros & Hinton (2016): (f,i,o,g) = LN(W_h h) + LN(W_x x) + b, here stacked i, f, g, o."""
    h, c = state
    pre = (
        layer_norm(h @ cell.weight_hh.T, cell.ln_hh_weight, cell.ln_hh_bias, cell.eps)
        + layer_norm(x @ cell.weight_ih.T, cell.ln_ih_weight, cell.ln_ih_bias, cell.eps)
        + effective_bias(cell, 4 * H)
    )
    i, f, g, o = blocks(pre, 4)
    c = sig(f) * c + sig(i) * tanh(g)
    h = sig(o) * tanh(layer_norm(c, cell.ln_c_weight, cell.ln_c_bias, cell.eps))
    return h, (h, c)


def ln_gru_step(cell, x, state):
    """torch's GRU with W_ih x and W_hh h each replaced by its layer norm over all 3H rows."""
    (h,) = state
    b_ih = cell.bias_ih if cell.bias else 0.0
    b_hh = cell.bias_hh if cell.bias else 0.0
    a = layer_norm(x @ cell.weight_ih.T, cell.ln_ih_weight, cell.ln_ih_bias, cell.eps) + b_ih
    e = layer_norm(h @ cell.weight_hh.T, cell.ln_hh_weight, cell.ln_hh_bias, cell.eps) + b_hh
    a_r, a_z, a_n = blocks(a, 3)
    e_r, e_z, e_n = blocks(e, 3)
    r = sig(a_r + e_r)
    z = sig(a_z + e_z)
    n = tanh(a_n + r * e_n)
    h = (1 - z) * n + z * h
    return h, (h,)


def mgu_step(cell, x, state):
    """Zhou et al. (2016): f = σ(W_f x + U_f h + b_f), h̃ = tanh(W_h x + U_h (f ⊙ h) + b_h)."""
    (h,) = state
    W_f, W_h = cell.weight_ih[:H], cell.weight_ih[H:]
    U_f, U_h = cell.weight_hh[:H], cell.weight_hh[H:]
    b_f, b_h = (cell.bias_ih[:H], cell.bias_ih[H:]) if cell.bias else (0.0, 0.0)
    f = sig(x @ W_f.T + h @ U_f.T + b_f)
    h_tilde = tanh(x @ W_h.T + (f * h) @ U_h.T + b_h)
    h = (1 - f) * h + f * h_tilde
    return h, (h,)


def cifg_step(cell, x, state):
    """Greff et al. (2017): the LSTM with i = 1 − f; peepholes p_f ⊙ c(t−1), p_o ⊙ c(t)."""
    h, c = state
    pre = x @ cell.weight_ih.T + h @ cell.weight_hh.T + effective_bias(cell, 3 * H)
    f_pre, g_pre, o_pre = blocks(pre, 3)
    if cell.peephole:
        f_pre = f_pre + cell.weight_cf * c
    f = sig(f_pre)
    i = 1 - f
    c = f * c + i * tanh(g_pre)
    if cell.peephole:
        o_pre = o_pre + cell.weight_co * c
    h = sig(o_pre) * tanh(c)
    return h, (h, c)


def indrnn_step(cell, x, state):
    """Li et al. (2018): h = φ(W x + u ⊙ h + b), u bounded to [−m, m] when m is given."""
    (h,) = state
    u = cell.weight_hh
    m = cell.recurrent_max_abs
    if m is not None:
        u = torch.where(u > m, torch.full_like(u, m), torch.where(u < -m, torch.full_like(u, -m), u))
    a = x @ cell.weight_ih.T + u * h + effective_bias(cell, H)
    h = torch.relu(a) if cell.nonlinearity == "relu" else tanh(a)
    return h, (h,)


# name -> (cell factory, independent step, state of an LSTM (h, c) or not)
VARIANTS = {
    "layernorm-lstm": (lambda: LayerNormLSTMCell(I, H), ln_lstm_step, True),
    "layernorm-lstm-nobias": (lambda: LayerNormLSTMCell(I, H, bias=False, eps=1e-3), ln_lstm_step, True),
    "layernorm-gru": (lambda: LayerNormGRUCell(I, H), ln_gru_step, False),
    "layernorm-gru-nobias": (lambda: LayerNormGRUCell(I, H, bias=False, eps=1e-3), ln_gru_step, False),
    "mgu": (lambda: MGUCell(I, H), mgu_step, False),
    "mgu-nobias": (lambda: MGUCell(I, H, bias=False), mgu_step, False),
    "cifg": (lambda: CIFGLSTMCell(I, H), cifg_step, True),
    "cifg-peephole": (lambda: CIFGLSTMCell(I, H, peephole=True), cifg_step, True),
    "cifg-nobias": (lambda: CIFGLSTMCell(I, H, bias=False), cifg_step, True),
    "indrnn": (lambda: IndRNNCell(I, H), indrnn_step, False),
    "indrnn-tanh": (lambda: IndRNNCell(I, H, nonlinearity="tanh"), indrnn_step, False),
    "indrnn-clamped": (lambda: IndRNNCell(I, H, recurrent_max_abs=0.3), indrnn_step, False),
    "indrnn-nobias": (lambda: IndRNNCell(I, H, bias=False), indrnn_step, False),
}


def random_cell(name, seed=0):
    """A float64 cell with every parameter random, gains and u included (N(0, 0.5²))."""
    return randomize_(VARIANTS[name][0]().double(), seed=seed)


def random(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


# -- (a) the layer against the equations, with every gradient --------------------------------------


@pytest.mark.parametrize("name", list(VARIANTS))
def test_layer_equals_the_papers_equations_with_gradients(name):
    cell = random_cell(name, seed=1)
    _, step, lstm = VARIANTS[name]
    if name == "indrnn-clamped":  # some u beyond ±m, so the bound (and its zero gradient) acts
        assert (cell.weight_hh.abs() > cell.recurrent_max_abs).any() and (
            cell.weight_hh.abs() < cell.recurrent_max_abs
        ).any()
    layer = Recurrent(cell, engine="reference")
    x, h0, c0 = random(7, 4, I, seed=2), random(4, H, seed=3), random(4, H, seed=4)

    def ours(x, h0, c0=None):
        return layer(x, LSTMState(h0, c0) if lstm else RNNState(h0))

    def theirs(x, h0, c0=None):
        return step_loop(lambda x_t, s: step(cell, x_t, s), x, (h0, c0) if lstm else (h0,))

    params = list(cell.parameters())
    assert_same_computation(ours, theirs, [x, h0, c0] if lstm else [x, h0], params, params)


# -- (b) gradcheck of the step ---------------------------------------------------------------------


@pytest.mark.parametrize("name", list(VARIANTS))
def test_gradcheck(name):
    cell = random_cell(name, seed=5)
    if name == "indrnn-clamped":  # away from the kinks at ±m, where finite differences disagree
        with torch.no_grad():
            cell.weight_hh.copy_(torch.tensor([0.1, -0.2, 0.6, -0.9, 0.25]))
    gradcheck_cell(cell)


# -- (c) padded batches ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("reverse", [False, True])
def test_padded_batch_equals_each_sequence_alone(name, reverse):
    cell = random_cell(name, seed=7)
    _, step, lstm = VARIANTS[name]
    lengths = [5, 9, 1, 7]  # unsorted, one of length 1
    x = random(9, 4, I, seed=8)
    x_padded = x.clone()
    for b, n in enumerate(lengths):
        x_padded[n:, b] = 1e3  # garbage in the padding must not leak into anything
    y, final = Recurrent(cell, reverse=reverse, engine="reference")(x_padded, lengths=torch.tensor(lengths))
    for b, n in enumerate(lengths):
        alone = x[:n, b : b + 1]
        zeros = torch.zeros(1, H, dtype=F64)
        want_y, want_final = step_loop(
            lambda x_t, s: step(cell, x_t, s), alone.flip(0) if reverse else alone, (zeros, zeros) if lstm else (zeros,)
        )
        if reverse:
            want_y = want_y.flip(0)
        torch.testing.assert_close(y[:n, b : b + 1], want_y, **TOL[F64])
        assert (y[n:, b] == 0).all(), "outputs past a sequence's end must be zero"
        for got, want in zip(state_tensors(final), state_tensors(want_final)):
            torch.testing.assert_close(got[b : b + 1], want, **TOL[F64])


# -- the cell contract -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(VARIANTS))
def test_step_state_type_and_checks(name):
    torch.manual_seed(0)
    cell = VARIANTS[name][0]()
    out, state = cell(torch.randn(2, I))
    assert out.shape == (2, H) and type(state) is (LSTMState if VARIANTS[name][2] else RNNState)
    torch.testing.assert_close(cell.output_of(state), out)
    out2, _ = cell(torch.randn(2, I), tuple(state))  # a plain tuple is accepted
    assert out2.shape == (2, H)
    with pytest.raises(ValueError, match=rf"input x has width 4 \(shape \(2, 4\)\), expected input_size={I}"):
        cell(torch.randn(2, 4))
    with pytest.raises(ValueError, match=rf"state\.h has shape \(1, {H}\), expected \(2, {H}\)"):
        cell(torch.randn(2, I), type(state)(state[0][:1], *state[1:]))
    assert cell.double()(torch.randn(2, I, dtype=F64))[0].dtype == F64


def test_registry_names():
    expected = {
        "layernorm-lstm": LayerNormLSTMCell,
        "layernorm-gru": LayerNormGRUCell,
        "mgu": MGUCell,
        "cifg": CIFGLSTMCell,
        "indrnn": IndRNNCell,
    }
    for name, cls in expected.items():
        assert name in CELLS
        cell = make_cell(name, 3, 4)
        assert type(cell) is cls and (cell.input_size, cell.hidden_size) == (3, 4)


def test_repr():
    assert repr(LayerNormLSTMCell(3, 4)) == "LayerNormLSTMCell(3, 4, eps=1e-05)"
    assert repr(LayerNormGRUCell(3, 4, bias=False, eps=1e-3)) == "LayerNormGRUCell(3, 4, eps=0.001, bias=False)"
    assert repr(MGUCell(3, 4, bias=False)) == "MGUCell(3, 4, bias=False)"
    assert repr(CIFGLSTMCell(3, 4, peephole=True)) == "CIFGLSTMCell(3, 4, peephole=True)"
    assert (
        repr(IndRNNCell(3, 4, recurrent_max_abs=2.0)) == "IndRNNCell(3, 4, nonlinearity='relu', recurrent_max_abs=2.0)"
    )


# -- the documented initialisation -----------------------------------------------------------------


def test_layer_norms_start_as_the_identity_and_the_forget_bias_is_set():
    torch.manual_seed(0)
    lstm = LayerNormLSTMCell(3, 4)
    for p in (lstm.ln_ih_weight, lstm.ln_hh_weight, lstm.ln_c_weight):
        assert (p == 1).all()
    for p in (lstm.ln_ih_bias, lstm.ln_hh_bias, lstm.ln_c_bias):
        assert (p == 0).all()
    torch.testing.assert_close((lstm.bias_ih + lstm.bias_hh)[4:8].detach(), torch.ones(4))
    bound = 1 / math.sqrt(4)
    assert 0.9 * bound < lstm.weight_hh.abs().max() <= bound
    gru = LayerNormGRUCell(3, 4, forget_bias=2.0)
    assert (gru.ln_hh_weight == 1).all() and (gru.ln_ih_bias == 0).all()
    torch.testing.assert_close((gru.bias_ih + gru.bias_hh)[4:8].detach(), torch.full((4,), 2.0))
    assert LayerNormLSTMCell(3, 4, bias=False).forget_bias is None  # the default has nothing to set


def test_cifg_forget_bias():
    cell = CIFGLSTMCell(3, 4)
    torch.testing.assert_close((cell.bias_ih + cell.bias_hh)[:4].detach(), torch.ones(4))
    cell = CIFGLSTMCell(3, 4, forget_bias=3.0)
    torch.testing.assert_close((cell.bias_ih + cell.bias_hh)[:4].detach(), torch.full((4,), 3.0))
    kept = CIFGLSTMCell(3, 4, forget_bias=None)
    assert (kept.bias_ih + kept.bias_hh)[:4].abs().max() <= 2 / math.sqrt(4)


def test_mgu_init_is_torchs_uniform():
    torch.manual_seed(0)
    bound = 1 / math.sqrt(64)
    for p in MGUCell(30, 64).parameters():
        assert 0.9 * bound < p.abs().max() <= bound


def test_indrnn_recurrent_weights_init_and_bound():
    torch.manual_seed(0)
    cell = IndRNNCell(3, 200)
    u = cell.weight_hh.detach()
    assert u.shape == (200,) and u.min() >= 0 and u.max() < 1 and u.max() > 0.9  # U(0, 1), Li et al.'s
    cell = IndRNNCell(3, 200, recurrent_init=(0.9, 1.1), recurrent_max_abs=1.0)
    u = cell.weight_hh.detach()
    assert u.min() >= 0.9 and u.max() == 1.0  # drawn from U(0.9, 1.1), then projected into [−1, 1]
    with torch.no_grad():
        cell.weight_hh.fill_(-3.0)
    cell.clamp_recurrent_weight_()
    assert (cell.weight_hh == -1.0).all()


def test_indrnn_bound_acts_in_the_step():
    cell = IndRNNCell(1, 2, bias=False, nonlinearity="tanh", recurrent_max_abs=0.5).double()
    with torch.no_grad():
        cell.weight_ih.zero_()
        cell.weight_hh.copy_(torch.tensor([3.0, -0.25]))
    h = torch.tensor([[0.4, 0.4]], dtype=F64)
    out, _ = cell(torch.zeros(1, 1, dtype=F64), RNNState(h))
    torch.testing.assert_close(out, torch.tanh(torch.tensor([[0.5 * 0.4, -0.25 * 0.4]], dtype=F64)))


# -- (d) bad arguments -------------------------------------------------------------------------------


def test_bad_arguments():
    with pytest.raises(ValueError, match="LayerNormLSTMCell: hidden_size must be ≥ 1, got 0"):
        LayerNormLSTMCell(3, 0)
    with pytest.raises(TypeError, match="MGUCell: input_size must be an int"):
        MGUCell(2.5, 4)
    with pytest.raises(ValueError, match="LayerNormGRUCell: eps must be a number > 0, got 0"):
        LayerNormGRUCell(3, 4, eps=0)
    with pytest.raises(ValueError, match="LayerNormLSTMCell: eps must be a number > 0, got '1e-5'"):
        LayerNormLSTMCell(3, 4, eps="1e-5")
    with pytest.raises(ValueError, match="LayerNormLSTMCell: forget_bias=2.0 needs bias=True"):
        LayerNormLSTMCell(3, 4, bias=False, forget_bias=2.0)
    with pytest.raises(ValueError, match="LayerNormGRUCell: forget_bias=1.0 needs bias=True"):
        LayerNormGRUCell(3, 4, bias=False, forget_bias=1.0)
    with pytest.raises(TypeError, match="CIFGLSTMCell: forget_bias must be a number or None, got 'big'"):
        CIFGLSTMCell(3, 4, forget_bias="big")
    with pytest.raises(ValueError, match="CIFGLSTMCell: forget_bias=5.0 needs bias=True"):
        CIFGLSTMCell(3, 4, bias=False, forget_bias=5.0)
    with pytest.raises(ValueError, match="IndRNNCell: nonlinearity must be one of 'tanh', 'relu', got 'sigmoid'"):
        IndRNNCell(3, 4, nonlinearity="sigmoid")
    with pytest.raises(
        ValueError,
        match=r"IndRNNCell: recurrent_init must be a pair \(low, high\) of finite numbers with low < high, "
        r"got \(1.0, 0.0\)",
    ):
        IndRNNCell(3, 4, recurrent_init=(1.0, 0.0))
    with pytest.raises(ValueError, match="recurrent_init must be a pair"):
        IndRNNCell(3, 4, recurrent_init=0.5)
    with pytest.raises(ValueError, match="IndRNNCell: recurrent_max_abs must be a finite number > 0 or None, got -1"):
        IndRNNCell(3, 4, recurrent_max_abs=-1)
    with pytest.raises(ValueError, match="recurrent_max_abs must be a finite number > 0 or None, got inf"):
        IndRNNCell(3, 4, recurrent_max_abs=math.inf)
    with pytest.raises(ValueError, match="unknown cell 'ln-lstm'; choose one of: .*layernorm-lstm"):
        make_cell("ln-lstm", 3, 4)
