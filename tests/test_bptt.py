"""rnnkit.bptt: the hand-written BPTT gradients against autograd, the textbook recurrences, errors.

The reference is independent of rnnkit: torch.nn's own cells stepped in a plain Python loop, an
nn.Linear output layer, ``cross_entropy(reduction="sum")`` and ``loss.backward()``, all in
float64, with ``retain_grad`` on every hidden state so that the per-step ∇h(t) (and the LSTM's
∇s(t)) can be compared too.

Symbols: T steps, B batch, I input size, H hidden size, O classes.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from rnnkit import bptt

T, B, I, H, O = 55, 4, 5, 8, 7
TOL = dict(rtol=1e-12, atol=1e-12)  # measured: at most ~6e-14 apart
F64 = torch.float64

CELLS = {"elman": nn.RNNCell, "elman-relu": nn.RNNCell, "lstm": nn.LSTMCell, "gru": nn.GRUCell}
BPTT = {"elman": bptt.elman, "elman-relu": bptt.elman, "lstm": bptt.lstm, "gru": bptt.gru}


def make_problem(kind: str, seed: int, scale: float | None = None, bias: bool = True):
    """A torch.nn cell, an nn.Linear output layer, random x (T, B, I), y (T, B) and a random initial state.

    ``scale=None`` keeps torch's default init U(−1/√H, 1/√H); otherwise every parameter is
    redrawn as randn · scale.
    """
    torch.manual_seed(seed)
    extra = {"nonlinearity": "relu"} if kind == "elman-relu" else {}
    cell = CELLS[kind](I, H, bias=bias, dtype=F64, **extra)
    out = nn.Linear(H, O, dtype=F64)
    if scale is not None:
        with torch.no_grad():
            for p in [*cell.parameters(), *out.parameters()]:
                p.copy_(torch.randn_like(p) * scale)
    x = torch.randn(T, B, I, dtype=F64)
    y = torch.randint(O, (T, B))
    h0 = torch.randn(B, H, dtype=F64) * 0.5
    state0 = (h0, torch.randn(B, H, dtype=F64)) if kind == "lstm" else h0
    return cell, out, x, y, state0


def autograd_reference(kind: str, cell: nn.Module, out: nn.Linear, x, y, state0):
    """Loss, probabilities, hidden states and every gradient, by autograd through torch.nn."""
    x = x.clone().requires_grad_()
    if kind == "lstm":
        h0, c0 = (s.clone().requires_grad_() for s in state0)
        state = (h0, c0)
    else:
        h0 = state0.clone().requires_grad_() if state0 is not None else torch.zeros(B, H, dtype=F64, requires_grad=True)
        state = h0
    hs, cs = [], []
    for t in range(x.shape[0]):
        state = cell(x[t], state)
        h = state[0] if kind == "lstm" else state
        h.retain_grad()
        hs.append(h)
        if kind == "lstm":
            state[1].retain_grad()
            cs.append(state[1])
    logits = out(torch.stack(hs))  # (T, B, O)
    loss = F.cross_entropy(logits.reshape(-1, O), y.reshape(-1), reduction="sum")  # (T·B, O) against (T·B,)
    loss.backward()
    grads = {name: p.grad for name, p in cell.named_parameters()}
    grads.update(V=out.weight.grad, c=out.bias.grad, x=x.grad, h0=h0.grad)
    ref = {
        "loss": loss.detach(),
        "y_hat": logits.softmax(-1).detach(),
        "h": torch.stack(hs).detach(),
        "grad_h": torch.stack([h.grad for h in hs]),
        "grads": grads,
    }
    if kind == "lstm":
        grads["c0"] = c0.grad
        ref["s"] = torch.stack(cs).detach()
        ref["grad_s"] = torch.stack([c.grad for c in cs])
    return ref


def assert_matches(result: bptt.BPTTResult, ref: dict) -> None:
    assert_close(result.loss, ref["loss"], **TOL)
    assert_close(result.y_hat, ref["y_hat"], **TOL)
    assert_close(result.h, ref["h"], **TOL)
    assert_close(result.grad_h, ref["grad_h"], **TOL)
    assert set(result.grads) == set(ref["grads"])
    for name, expected in ref["grads"].items():
        assert_close(result.grads[name], expected, **TOL, msg=lambda m, name=name: f"grads[{name!r}]: {m}")
    if "s" in ref:
        assert_close(result.s, ref["s"], **TOL)
        assert_close(result.grad_s, ref["grad_s"], **TOL)


@pytest.mark.parametrize("scale", [None, 0.5], ids=["torch-init", "randn*0.5"])
@pytest.mark.parametrize("kind", list(CELLS))
def test_gradients_equal_autograd(kind, scale):
    cell, out, x, y, state0 = make_problem(kind, seed=1 + len(kind), scale=scale)
    result = BPTT[kind](cell, out, None, x, y, state0)
    ref = autograd_reference(kind, cell, out, x, y, state0)
    assert_matches(result, ref)
    # Not vacuous: every gradient is far from zero, even the one that reaches h(0) (and, through
    # the recurrence, the first inputs).
    for name, g in ref["grads"].items():
        assert g.abs().max() > 1e-3, name
    assert ref["grads"]["x"][0].abs().max() > 1e-4


@pytest.mark.parametrize("kind", ["elman", "lstm", "gru"])
def test_tensor_output_layer_zero_state_and_no_bias(kind):
    cell, out, x, y, _ = make_problem(kind, seed=7, bias=False)
    result = BPTT[kind](cell, out.weight, out.bias, x, y)
    ref = autograd_reference(kind, cell, out, x, y, None if kind != "lstm" else (torch.zeros(B, H, dtype=F64),) * 2)
    assert "bias_ih" not in result.grads
    assert_matches(result, ref)


def test_elman_follows_the_textbook_recurrences():
    cell, out, x, y, h0 = make_problem("elman", seed=3, scale=0.4)
    V, c, W, U = out.weight.detach(), out.bias.detach(), cell.weight_hh.detach(), cell.weight_ih.detach()
    r = bptt.elman(cell, V, c, x, y, h0)
    h, grad_h, grad_o = r.h, r.grad_h, r.grad_o  # (T, B, H), (T, B, H), (T, B, O); index t − 1 is step t
    tau = T - 1
    # ∇o(t) = ŷ(t) − 1_{y(t)}
    assert_close(grad_o, r.y_hat - F.one_hot(y, O).to(F64), rtol=0, atol=1e-15)
    # ∇h(τ) = Vᵀ ∇o(τ)
    assert_close(grad_h[tau], grad_o[tau] @ V, rtol=0, atol=1e-15)
    # ∇h(t) = Wᵀ diag(1 − h(t+1)²) ∇h(t+1) + Vᵀ ∇o(t)
    for t in range(tau):
        assert_close(grad_h[t], ((1 - h[t + 1] ** 2) * grad_h[t + 1]) @ W + grad_o[t] @ V, rtol=1e-13, atol=1e-13)
    # The sums over time (and batch).
    grad_a = (1 - h**2) * grad_h  # diag(1 − h(t)²) ∇h(t)   (T, B, H)
    h_prev = torch.cat([h0.unsqueeze(0), h[:-1]])  # h(t − 1)   (T, B, H)
    expected = {
        "c": grad_o.sum((0, 1)),
        "V": torch.einsum("tbo,tbh->oh", grad_o, h),
        "bias_ih": grad_a.sum((0, 1)),
        "bias_hh": grad_a.sum((0, 1)),
        "weight_hh": torch.einsum("tbi,tbj->ij", grad_a, h_prev),
        "weight_ih": torch.einsum("tbh,tbi->hi", grad_a, x),
        "x": grad_a @ U,
        "h0": grad_a[0] @ W,
    }
    for name, value in expected.items():
        assert_close(r.grads[name], value, rtol=1e-12, atol=1e-12)
    # The loss is Σ_t −log ŷ(t)[y(t)].
    assert_close(r.loss, -r.y_hat.gather(2, y.unsqueeze(2)).log().sum(), rtol=1e-13, atol=0)


def test_rnnkit_cells_are_accepted_and_agree():
    from rnnkit.cells import ElmanCell, GRUCell, LSTMCell

    torch.manual_seed(5)
    x = torch.randn(6, 3, I)
    y = torch.randint(O, (6, 3))
    V, c = torch.randn(O, H) * 0.3, torch.randn(O) * 0.3
    for cell, fn in [(ElmanCell(I, H), bptt.elman), (LSTMCell(I, H), bptt.lstm), (GRUCell(I, H), bptt.gru)]:
        result = fn(cell, V, c, x, y)
        state = None
        for t in range(x.shape[0]):
            h, state = cell(x[t], state)
            assert_close(result.h[t], h, rtol=1e-5, atol=1e-6)
        assert result.loss.dtype == torch.float32


def test_float32_agrees_with_float64():
    cell, out, x, y, h0 = make_problem("gru", seed=11)
    r64 = bptt.gru(cell, out, None, x, y, h0)
    r32 = bptt.gru(cell.float(), out.float(), None, x.float(), y, h0.float())
    for name, g in r64.grads.items():
        assert r32.grads[name].dtype == torch.float32
        assert_close(r32.grads[name].double(), g, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Wrong arguments
# ---------------------------------------------------------------------------------------------


def _small(kind="elman", seed=0):
    torch.manual_seed(seed)
    cell = CELLS[kind](I, H, dtype=F64)
    V, c = torch.randn(O, H, dtype=F64), torch.randn(O, dtype=F64)
    x, y = torch.randn(4, 2, I, dtype=F64), torch.randint(O, (4, 2))
    return cell, V, c, x, y


def _gelu_cell():
    """A duck-typed Elman cell (plain attributes, no module) with an unsupported nonlinearity."""
    cell = nn.RNNCell(I, H, dtype=F64)
    return SimpleNamespace(**dict(cell.named_parameters()), nonlinearity="gelu")


@pytest.mark.parametrize(
    "change, error, match",
    [
        pytest.param(
            lambda a: a.update(x=a["x"][0]),
            ValueError,
            r"x must have shape \(T, B, I\).*got 2-D shape \(2, 5\)",
            id="x-rank",
        ),
        pytest.param(
            lambda a: a.update(x=torch.randn(4, 2, I + 1, dtype=F64)),
            ValueError,
            r"I = 5 .*got \(4, 2, 6\)",
            id="x-width",
        ),
        pytest.param(
            lambda a: a.update(x=a["x"].float()),
            TypeError,
            r"x has dtype torch.float32, expected .*torch.float64",
            id="x-dtype",
        ),
        pytest.param(lambda a: a.update(x=a["x"][:0]), ValueError, r"at least one time step", id="x-empty"),
        pytest.param(
            lambda a: a.update(y=a["y"][:3]),
            ValueError,
            r"y must have shape \(T, B\) = \(4, 2\).*got 2-D shape \(3, 2\)",
            id="y-shape",
        ),
        pytest.param(
            lambda a: a.update(y=a["y"].double()),
            TypeError,
            r"y must hold integer class indices.*torch.float64",
            id="y-dtype",
        ),
        pytest.param(
            lambda a: a["y"].__setitem__((2, 1), O),
            ValueError,
            r"y must hold class indices in \[0, O\) = \[0, 7\).*y\[2, 1\] = 7",
            id="y-too-big",
        ),
        pytest.param(lambda a: a["y"].__setitem__((0, 0), -1), ValueError, r"y\[0, 0\] = -1", id="y-negative"),
        pytest.param(
            lambda a: a.update(V=torch.randn(O, H + 1, dtype=F64)),
            ValueError,
            r"V must have shape \(O, H\) with H = 8.*\(7, 9\)",
            id="V-shape",
        ),
        pytest.param(
            lambda a: a.update(c=torch.randn(O + 1, dtype=F64)),
            ValueError,
            r"c must have shape \(O,\) = \(7,\).*\(8,\)",
            id="c-shape",
        ),
        pytest.param(lambda a: a.update(c=None), TypeError, r"c must be a \(O,\) tensor, got NoneType", id="c-missing"),
        pytest.param(
            lambda a: a.update(V=nn.Linear(H, O, dtype=F64)),
            ValueError,
            r"V is a module \(Linear\), so c must be None",
            id="module-and-c",
        ),
        pytest.param(
            lambda a: a.update(h0=torch.zeros(3, H, dtype=F64)),
            ValueError,
            r"h0 must have shape \(B, H\) = \(2, 8\).*\(3, 8\)",
            id="h0-shape",
        ),
        pytest.param(
            lambda a: a.update(cell=object()),
            TypeError,
            r"cell must have a tensor attribute weight_ih",
            id="not-a-cell",
        ),
        pytest.param(
            lambda a: a.update(cell=nn.GRUCell(I, H, dtype=F64)),
            ValueError,
            r"cell.weight_hh must have shape \(H, H\).*\(24, 8\)",
            id="gru-cell",
        ),
        pytest.param(
            lambda a: a.update(cell=_gelu_cell()),
            ValueError,
            r"nonlinearity must be 'tanh' or 'relu', got 'gelu'",
            id="nonlinearity",
        ),
    ],
)
def test_elman_bad_arguments(change, error, match):
    cell, V, c, x, y = _small()
    args = dict(cell=cell, V=V, c=c, x=x, y=y, h0=None)
    change(args)
    with pytest.raises(error, match=match):
        bptt.elman(**args)


def test_lstm_bad_state_and_wrong_cell():
    cell, V, c, x, y = _small("lstm")
    with pytest.raises(TypeError, match=r"state0 must be a pair \(h0, c0\).*got Tensor"):
        bptt.lstm(cell, V, c, x, y, torch.zeros(2, H, dtype=F64))
    with pytest.raises(
        ValueError, match=r"state0\[1\] \(c0\) must have shape \(B, H\) = \(2, 8\); got 1-D shape \(8,\)"
    ):
        bptt.lstm(cell, V, c, x, y, (torch.zeros(2, H, dtype=F64), torch.zeros(H, dtype=F64)))
    wrong_blocks = r"weight_hh must have shape \(4H, H\), gate blocks i, f, g, o; got 2-D shape \(24, 8\)"
    with pytest.raises(ValueError, match=wrong_blocks):
        bptt.lstm(nn.GRUCell(I, H, dtype=F64), V, c, x, y)
    wrong_blocks = r"weight_hh must have shape \(3H, H\), gate blocks r, z, n; got 2-D shape \(32, 8\)"
    with pytest.raises(ValueError, match=wrong_blocks):
        bptt.gru(cell, V, c, x, y)


def test_lstm_variants_are_refused():
    from rnnkit.cells import LSTMCell

    x, y = torch.randn(3, 2, I), torch.randint(O, (3, 2))
    V, c = torch.randn(O, H), torch.randn(O)
    for options, flag in [
        ({"peephole": True}, "peephole"),
        ({"forget_gate": False}, "forget_gate"),
        ({"block_size": 2}, "block_size"),
        ({"cell_clip": 3.0}, "cell_clip"),
    ]:
        with pytest.raises(ValueError, match=rf"only the plain LSTM.*{flag}="):
            bptt.lstm(LSTMCell(I, H, **options), V, c, x, y)
