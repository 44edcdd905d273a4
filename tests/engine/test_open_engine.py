"""The open fused engine on cells it was not written for: the five new cells and cells a user
writes in plain PyTorch, each traced from its own ``recurrence`` and run by the compiled loop.

Each is checked against an independent source: the reference loop running the same step
(outputs, final states and every gradient — inputs, each initial state field, every parameter —
in float64 to 1e-10; float32 to 1e-5), alone and inside ``Bidirectional`` and a 2-layer
``Stack``, with random lengths, reversed and batch-first; float64 ``gradcheck`` through a fused
layer; and, for the new cells, the step written again from the paper's equations
(``tests/cells/test_new_cells.py``). Steps the engine cannot compile are named by
``why_not_fused``, run on the reference loop with one warning under ``engine="auto"``, and are
refused under ``engine="fused"``.

Symbols: T time, B batch, I input, H hidden, G the projection size, n blocks of k units.
"""

from __future__ import annotations

import re
import warnings
from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit import Bidirectional, Recurrent, Stack
from rnnkit.cells import (
    CIFGLSTMCell,
    IndRNNCell,
    LayerNormGRUCell,
    LayerNormLSTMCell,
    MGUCell,
    RecurrentCell,
    RNNState,
    SkipCell,
)
from rnnkit.cells.base import uniform_
from rnnkit.cells.state import map_state, state_tensors
from rnnkit.engine import fused
from tests.cells.test_new_cells import VARIANTS as PAPER_STEPS
from tests.engine.test_fused import FUSED_CELLS, random_state
from tests.helpers import TOL, assert_same_computation, randomize_, step_loop

F64 = torch.float64


# -- cells a user writes ------------------------------------------------------------------------------


class UserCell(RecurrentCell):
    """What a user's cell starts from: ``gi = W_ih x + b`` with G = ``gates``·H rows, a recurrent
    matrix ``weight_hh`` of ``recurrent``·H rows, state ``RNNState(h)``. Subclasses add their own
    parameters in ``extra_parameters`` and write ``recurrence``."""

    gates = 1  # H-row blocks of the input projection
    recurrent = 1  # H-row blocks of weight_hh

    def __init__(self, input_size: int, hidden_size: int, projection_size: int | None = None) -> None:
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.projection_size = projection_size or self.gates * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(self.projection_size, input_size))
        self.bias_ih = nn.Parameter(torch.empty(self.projection_size))
        self.weight_hh = nn.Parameter(torch.empty(self.recurrent * hidden_size, hidden_size))
        self.extra_parameters()
        uniform_(list(self.parameters()), hidden_size)

    def extra_parameters(self) -> None:
        pass

    def init_state(self, batch_size, *, dtype=None, device=None):
        dtype, device = self._dtype_device(dtype, device)
        return RNNState(torch.zeros(batch_size, self.hidden_size, dtype=dtype, device=device))

    def input_projection(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight_ih, self.bias_ih)  # (..., G)


class ChoGRUCell(UserCell):
    """The GRU as Cho et al. (2014) first wrote it: the reset gate multiplies h *before* the
    product, n = tanh(W_n x + U_n (r ⊙ h)), and h' = z ⊙ h + (1 − z) ⊙ n."""

    gates, recurrent = 3, 3

    def recurrence(self, gi, state):
        h, H = state.h, self.hidden_size
        U_rz, U_n = self.weight_hh[: 2 * H], self.weight_hh[2 * H :]
        r, z = torch.sigmoid(gi[:, : 2 * H] + h @ U_rz.T).chunk(2, dim=-1)  # (B, H) each
        n = torch.tanh(gi[:, 2 * H :] + F.linear(r * h, U_n))
        h = z * h + (1 - z) * n
        return h, RNNState(h)


class MathCell(UserCell):
    """exp, log, abs, sqrt, rsqrt, a power and divisions, by numbers and by values of the step."""

    def recurrence(self, gi, state):
        h = state.h
        a = gi + F.linear(h, self.weight_hh)
        m = torch.abs(a)
        soft = a * torch.rsqrt(1 + a * a) + a / torch.sqrt(4 + m)  # bounded odd squashes
        bump = torch.exp(-m) * torch.log(1 + m)
        damped = h / (2 + h.abs() ** 1.5)
        h = soft + 0.5 * bump + 0.2 * damped - h / 8
        return h, RNNState(h)


class MinMaxCell(UserCell):
    """torch.maximum/minimum against values of the step and a per-unit floor, and clamp."""

    def extra_parameters(self):
        self.floor = nn.Parameter(torch.empty(self.hidden_size))  # (H,)

    def recurrence(self, gi, state):
        h = state.h
        a = gi + F.linear(h, self.weight_hh)
        leaky = torch.maximum(a, 0.2 * a)  # leaky ReLU
        capped = torch.minimum(leaky, 1.5 + 0.5 * h)
        h = torch.maximum(capped, self.floor - 1).clamp(-2.0, 2.0) + 0.1 * a.clamp(min=-0.5) - 0.1 * a.clamp(max=0.5)
        return h, RNNState(h)


class WhereCell(UserCell):
    """torch.where on comparisons: of two values of the step, and of a value with a parameter."""

    def extra_parameters(self):
        self.threshold = nn.Parameter(torch.empty(self.hidden_size))  # (H,)

    def recurrence(self, gi, state):
        h = state.h
        a = gi + F.linear(h, self.weight_hh)
        cand = torch.tanh(a)
        h = torch.where(a > h, cand, 0.5 * h + 0.5 * cand)
        h = torch.where(gi <= self.threshold, h, torch.zeros_like(h) - self.threshold * cand)
        return h, RNNState(h)


class HandNormCell(UserCell):
    """Row normalisation written by hand: mean and variance of W h over the features, then a
    per-unit gain and shift; the input standardised with ``std``, and a row ``sum``."""

    def extra_parameters(self):
        self.gain = nn.Parameter(torch.empty(self.hidden_size))  # (H,)
        self.shift = nn.Parameter(torch.empty(self.hidden_size))  # (H,)

    def recurrence(self, gi, state):
        h = state.h
        e = F.linear(h, self.weight_hh)
        mu = e.mean(-1, keepdim=True)  # (B, 1)
        var = ((e - mu) ** 2).mean(-1, keepdim=True)  # (B, 1)
        e_hat = (e - mu) / torch.sqrt(var + 1e-5) * self.gain + self.shift
        x_hat = (gi - gi.mean(dim=-1, keepdim=True)) / (gi.std(-1, keepdim=True) + 1)
        total = h.sum(-1, keepdim=True) + e.var(-1, keepdim=True, unbiased=False)  # (B, 1)
        h = torch.tanh(x_hat + e_hat) + 0.05 * torch.tanh(total)
        return h, RNNState(h)


class PerUnitCell(UserCell):
    """Per-unit parameter vectors: a diagonal recurrent gate w_f ⊙ h + b_f, and a per-unit
    decay σ(ℓ) computed from a parameter alone."""

    gates = 2

    def extra_parameters(self):
        H = self.hidden_size
        self.w_f, self.b_f, self.decay_logit = (nn.Parameter(torch.empty(H)) for _ in range(3))  # (H,) each

    def recurrence(self, gi, state):
        h = state.h
        gi_a, gi_f = gi.chunk(2, dim=-1)
        f = torch.sigmoid(gi_f + self.w_f * h + self.b_f)
        a = torch.tanh(gi_a + F.linear(h, self.weight_hh))
        keep = torch.sigmoid(self.decay_logit) * f
        h = keep * h + (1 - keep) * a
        return h, RNNState(h)


class BlockCell(UserCell):
    """Memory-block style: H units in n blocks of k = 2; one gate per block, computed from each
    block's sum (``view(B, n, k).sum(-1)``) and the candidate's block means, broadcast to its
    units with ``repeat_interleave``. G = H + n."""

    k = 2

    def __init__(self, input_size: int, hidden_size: int) -> None:
        self.n = hidden_size // self.k
        super().__init__(input_size, hidden_size, projection_size=hidden_size + self.n)

    def extra_parameters(self):
        self.weight_block = nn.Parameter(torch.empty(self.n, self.n))  # (n, n)

    def recurrence(self, gi, state):
        h, H, n, k = state.h, self.hidden_size, self.n, self.k
        B = h.shape[0]
        g = torch.tanh(gi[:, :H] + F.linear(h, self.weight_hh))  # (B, H)
        s = h.view(B, n, k).sum(-1)  # (B, n)
        f = torch.sigmoid(gi[:, H:] + F.linear(s, self.weight_block) + g.reshape(B, n, k).mean(-1))  # (B, n)
        f_units = f.repeat_interleave(k, dim=-1)  # (B, H)
        h = f_units * h + (1 - f_units) * g
        return h, RNNState(h)


class CountState(NamedTuple):
    """State of CounterCell: ``h`` (B, H) and the step counter ``t`` (B,) int64."""

    h: Tensor
    t: Tensor


class CounterCell(UserCell):
    """The step counter, as the clockwork cell reads it: unit u updates when its period divides
    t (a buffer of per-unit periods), and every third step the update is halved."""

    def extra_parameters(self):
        self.register_buffer("period", torch.arange(self.hidden_size) % 3 + 1, persistent=False)  # (H,) int64

    def init_state(self, batch_size, *, dtype=None, device=None):
        dtype, device = self._dtype_device(dtype, device)
        return CountState(
            torch.zeros(batch_size, self.hidden_size, dtype=dtype, device=device),
            torch.zeros(batch_size, dtype=torch.long, device=device),
        )

    def recurrence(self, gi, state):
        h, t = state
        a = torch.tanh(gi + F.linear(h, self.weight_hh))
        tick = (t.unsqueeze(1) % self.period) == 0  # (B, H)
        third = t.unsqueeze(1) % 3 == 0  # (B, 1)
        h = torch.where(tick, a, h)
        h = torch.where(third, 0.5 * h + 0.5 * a, h)
        return h, CountState(h, t + 1)


class PlainNormCell(UserCell):
    """F.layer_norm without gain or shift, and with a gain only: the engine's one-instruction norm."""

    def extra_parameters(self):
        self.gain = nn.Parameter(torch.empty(self.hidden_size))

    def recurrence(self, gi, state):
        a = F.layer_norm(gi + F.linear(state.h, self.weight_hh), (self.hidden_size,), eps=1e-3)
        h = torch.tanh(F.layer_norm(a * state.h, (self.hidden_size,), self.gain) + a)
        return h, RNNState(h)


class SumsCell(UserCell):
    """Sums of three terms, x + (p + q), which the planner runs as one instruction: full-width
    terms, a per-unit parameter, a row mean and a number among them, in every operand position."""

    def extra_parameters(self):
        self.shift = nn.Parameter(torch.empty(self.hidden_size))  # (H,)

    def recurrence(self, gi, state):
        h = state.h
        a = F.linear(h, self.weight_hh)  # (B, H)
        m = a.mean(-1, keepdim=True)  # (B, 1)
        pre = gi + (torch.tanh(a) + self.shift)
        wide = m + (pre + 0.5)
        mixed = (torch.sigmoid(pre) + m) + h
        h = torch.tanh(wide) * 0.5 + 0.1 * mixed + (self.shift + (m + 0.25))
        return h, RNNState(h)


# name -> (I, H) -> cell; H is even (BlockCell's blocks of 2)
CELLS = {
    "layernorm-lstm": lambda i, h: LayerNormLSTMCell(i, h),
    "layernorm-gru": lambda i, h: LayerNormGRUCell(i, h),
    "mgu": lambda i, h: MGUCell(i, h),
    "cifg": lambda i, h: CIFGLSTMCell(i, h),
    "cifg-peephole": lambda i, h: CIFGLSTMCell(i, h, peephole=True),
    "indrnn-relu": lambda i, h: IndRNNCell(i, h),
    "indrnn-tanh": lambda i, h: IndRNNCell(i, h, nonlinearity="tanh"),
    "indrnn-bounded": lambda i, h: IndRNNCell(i, h, recurrent_max_abs=0.3),
    "cho-gru": ChoGRUCell,
    "math": MathCell,
    "minmax": MinMaxCell,
    "where": WhereCell,
    "hand-norm": HandNormCell,
    "plain-norm": PlainNormCell,
    "sums": SumsCell,
    "per-unit": PerUnitCell,
    "blocks": BlockCell,
    "counter": CounterCell,
    "skip-cho-gru": lambda i, h: SkipCell(ChoGRUCell(i, h), delay=3),
    "skip-counter": lambda i, h: SkipCell(CounterCell(i, h), delay=2),
}


# the zoo's cells as tests/engine/test_fused.py lists them, checked here inside Bidirectional and Stack
ZOO = {f"zoo-{name}": factory for name, factory in FUSED_CELLS.items()}


def make(name: str, i: int, h: int, seed: int, dtype=F64) -> RecurrentCell:
    """Cell ``name`` with every parameter from N(0, 0.5²), in ``dtype``."""
    return randomize_({**CELLS, **ZOO}[name](i, h), seed=seed).to(dtype)


pytestmark = pytest.mark.usefixtures("fused_extension")  # tests/engine/conftest.py: built, or fail loudly


# -- comparing a module on the two engines ---------------------------------------------------------


def compare(build, x, state, lengths, dtype=F64):
    """``build(engine)`` makes a module whose Recurrent layers run ``engine`` (the same cells
    each time); run it fused and on the reference loop and assert equal outputs, final states
    (counters exactly) and gradients of a random projection of all of them with respect to x,
    every float tensor of the initial state and every parameter."""
    tol = TOL[dtype]
    results = []
    for engine in ("fused", "reference"):
        module = build(engine)
        xs = x.detach().clone().requires_grad_()
        s0 = (
            None
            if state is None
            else map_state(lambda t: t.detach().clone().requires_grad_(t.is_floating_point()), state)
        )
        y, final = module(xs, s0, lengths)
        layers = [m for m in module.modules() if isinstance(m, Recurrent)]
        assert [m.last_engine for m in layers] == [engine] * len(layers)
        outs = [y, *state_tensors(final)]
        gen = torch.Generator().manual_seed(99)
        loss = sum(
            (o * torch.randn(o.shape, generator=gen, dtype=F64).to(dtype)).sum() for o in outs if o.is_floating_point()
        )
        names, params = zip(*module.named_parameters())
        wrt = [xs, *(t for t in ([] if s0 is None else state_tensors(s0)) if t.is_floating_point()), *params]
        results.append((outs, torch.autograd.grad(loss, wrt)))
    (out_f, grad_f), (out_r, grad_r) = results
    n_state = len(grad_f) - 1 - len(names)
    labels = ["x", *(f"initial state tensor {k}" for k in range(n_state)), *names]
    for k, (a, b) in enumerate(zip(out_f, out_r)):
        if a.is_floating_point():
            torch.testing.assert_close(a, b, **tol, msg=lambda m, k=k: f"output {k}: {m}")
        else:
            assert torch.equal(a, b), f"output {k}: {a} != {b}"
    for label, a, b in zip(labels, grad_f, grad_r):
        torch.testing.assert_close(a, b, **tol, msg=lambda m, label=label: f"gradient of {label}: {m}")


def sizes(gen):
    """Random T, B, I in [2, 8) and an even H in {4, 6}."""
    T, B, I = (int(v) for v in torch.randint(2, 8, (3,), generator=gen))
    return T, B, I, 2 * int(torch.randint(2, 4, (1,), generator=gen))


# -- 1. fused equals the reference loop ----------------------------------------------------------------

LAYOUTS = ["full", "lengths-reversed", "batch-first"]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", list(CELLS))
def test_layer_fused_equals_reference(name, layout):
    seed = LAYOUTS.index(layout)
    gen = torch.Generator().manual_seed(10 + seed)
    T, B, I, H = sizes(gen)
    cell = make(name, I, H, seed)
    x = torch.randn(T, B, I, generator=gen, dtype=F64)
    state = random_state(cell, B, gen, F64)
    lengths = None if layout == "full" else torch.randint(1, T + 1, (B,), generator=gen)
    batch_first = layout == "batch-first"
    if batch_first:
        x = x.transpose(0, 1).contiguous()  # (B, T, I)
    reverse = layout == "lengths-reversed"
    compare(lambda engine: Recurrent(cell, batch_first=batch_first, reverse=reverse, engine=engine), x, state, lengths)


def bidirectional(forward_cell, backward_cell, engine, batch_first=False):
    """A Bidirectional layer over the given cells whose two layers run ``engine``."""
    layer = Bidirectional(forward_cell, backward_cell, batch_first=batch_first)
    layer.forward_layer.engine = layer.backward_layer.engine = engine  # Bidirectional builds its layers "auto"
    return layer


@pytest.mark.parametrize("name", list(CELLS) + list(ZOO))
def test_bidirectional_fused_equals_reference(name):
    gen = torch.Generator().manual_seed(20)
    T, B, I, H = sizes(gen)
    cells = make(name, I, H, seed=1), make(name, I, H, seed=2)
    x = torch.randn(B, T, I, generator=gen, dtype=F64)  # batch first
    state = (random_state(cells[0], B, gen, F64), random_state(cells[1], B, gen, F64))
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    compare(lambda engine: bidirectional(*cells, engine, batch_first=True), x, state, lengths)


@pytest.mark.parametrize("name", list(CELLS) + list(ZOO))
def test_stack_fused_equals_reference(name):
    """Two layers, the second reversed; then a layer of this cell under a bidirectional one."""
    gen = torch.Generator().manual_seed(30)
    T, B, I, H = sizes(gen)
    first, second = make(name, I, H, seed=3), make(name, H, H, seed=4)
    x = torch.randn(T, B, I, generator=gen, dtype=F64)
    state = (random_state(first, B, gen, F64), random_state(second, B, gen, F64))
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    compare(
        lambda engine: Stack([Recurrent(first, engine=engine), Recurrent(second, reverse=True, engine=engine)]),
        x,
        state,
        lengths,
    )
    fw, bw, top = make(name, I, H, seed=5), make(name, I, H, seed=6), make(name, 2 * H, H, seed=7)
    compare(lambda engine: Stack([bidirectional(fw, bw, engine), Recurrent(top, engine=engine)]), x, None, lengths)


# -- 2. gradcheck through a fused layer ------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["layernorm-lstm", "mgu", "cifg-peephole", "cho-gru", "hand-norm", "plain-norm", "blocks", "skip-counter"]
)
def test_gradcheck_through_the_fused_layer(name):
    """float64 finite differences against the fused engine's BPTT, with respect to x, every float
    field of the initial state and every parameter; lengths and reversal included."""
    gen = torch.Generator().manual_seed(40)
    cell = make(name, 2, 4, seed=8)
    layer = Recurrent(cell, reverse=True, engine="fused")
    x = torch.randn(4, 3, 2, generator=gen, dtype=F64, requires_grad=True)
    state0 = random_state(cell, 3, gen, F64)
    init = [t.requires_grad_() if t.is_floating_point() else t for t in state_tensors(state0)]
    floats = [t for t in init if t.is_floating_point()]
    names, params = zip(*cell.named_parameters())
    lengths = torch.tensor([4, 2, 3])

    def fn(x, *rest):
        it_state, it_param = iter(rest[: len(floats)]), rest[len(floats) :]
        state = map_state(lambda t: next(it_state) if t.is_floating_point() else t, state0)
        y, final = torch.func.functional_call(layer, dict(zip(names, it_param)), (x, state, lengths))
        assert layer.last_engine == "fused"
        return (y, *(t for t in state_tensors(final) if t.is_floating_point()))

    args = (x, *floats, *[p.detach().clone().requires_grad_() for p in params])
    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-7, rtol=1e-5)


# -- 3. the new cells, fused, against their papers' equations ------------------------------------------


@pytest.mark.parametrize("name", list(PAPER_STEPS))
def test_fused_new_cell_equals_the_papers_equations(name):
    """The fused layer against the step written again in tests/cells/test_new_cells.py (I=3,
    H=5): full sequences with every gradient, then a padded batch, forward and reversed,
    against each sequence run alone."""
    factory, step, lstm = PAPER_STEPS[name]
    cell = randomize_(factory().double(), seed=11)
    I, H = cell.input_size, cell.hidden_size
    gen = torch.Generator().manual_seed(12)
    x, h0, c0 = (torch.randn(*s, generator=gen, dtype=F64) for s in [(6, 4, I), (4, H), (4, H)])
    layer = Recurrent(cell, engine="fused")

    def ours(x, h0, c0=None):
        y, s = layer(x, (h0, c0) if lstm else (h0,))
        assert layer.last_engine == "fused"
        return y, s

    def theirs(x, h0, c0=None):
        return step_loop(lambda x_t, s: step(cell, x_t, s), x, (h0, c0) if lstm else (h0,))

    params = list(cell.parameters())
    assert_same_computation(ours, theirs, [x, h0, c0] if lstm else [x, h0], params, params)

    lengths = [5, 9, 1, 7]
    x = torch.randn(9, 4, I, generator=gen, dtype=F64)
    for b, n in enumerate(lengths):
        x[n:, b] = 1e3  # garbage in the padding must not leak into anything
    zeros = torch.zeros(1, H, dtype=F64)
    for reverse in (False, True):
        y, final = Recurrent(cell, reverse=reverse, engine="fused")(x, lengths=torch.tensor(lengths))
        for b, n in enumerate(lengths):
            alone = x[:n, b : b + 1]
            want_y, want_final = step_loop(
                lambda x_t, s: step(cell, x_t, s),
                alone.flip(0) if reverse else alone,
                (zeros, zeros) if lstm else (zeros,),
            )
            torch.testing.assert_close(y[:n, b : b + 1], want_y.flip(0) if reverse else want_y, **TOL[F64])
            assert (y[n:, b] == 0).all(), "outputs past a sequence's end must be zero"
            for got, want in zip(state_tensors(final), want_final):
                torch.testing.assert_close(got[b : b + 1], want, **TOL[F64])


# -- 4. "auto" picks the fused engine --------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_auto_runs_every_cell_fused(dtype):
    for name in CELLS:
        cell = make(name, 3, 4, seed=0, dtype=dtype)
        assert fused.why_not_fused(cell) is None, name
        layer = Recurrent(cell)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no fallback warning either
            layer(torch.randn(5, 2, 3, dtype=dtype))
            assert layer.last_engine == "fused", name
            layer(torch.randn(5, 2, 3, dtype=dtype), lengths=[5, 3])
            assert layer.last_engine == "fused", name


def _program_ops(cell: RecurrentCell) -> list[str]:
    """The names of the forward instructions of ``cell``'s fused program."""
    plan = fused.compile_cell(cell, F64)
    names = {code: name for name, code in fused.load_extension().codes()["ops"].items()}
    return [names[int(code)] for code in plan.program.forward[:, 0]]


def test_three_way_sums_run_as_one_instruction():
    """x + (p + q) is one instruction (the four sums here; the fused-equals-reference tests above
    check its values and gradients, broadcast operands included)."""
    assert _program_ops(make("sums", 3, 4, seed=0)).count("add3") == 4


def test_zoo_programs_start_no_gradient_at_zero():
    """Every step's adjoints store into the projected input's gradient and the kept product
    gradients before reading them, so the backward pass allocates them without zeroing (and the
    fused-equals-reference tests, lengths included, check that this is right)."""
    for name, factory in FUSED_CELLS.items():
        stats = fused.compile_cell(randomize_(factory(3, 4), seed=0).to(F64), F64).stats
        assert not stats["zero_gi"] and stats["zero_dg"] == 0, name


def test_parameters_changed_between_calls_are_read_on_the_next_call():
    """The plan is cached per cell, but its static values are recomputed from the live parameters
    and buffers on each call: after an optimiser-like update both engines still agree."""
    gen = torch.Generator().manual_seed(13)
    for name in ("indrnn-bounded", "per-unit", "hand-norm", "counter", "layernorm-gru"):
        cell = make(name, 3, 4, seed=0)
        x = torch.randn(6, 2, 3, generator=gen, dtype=F64)
        compare(lambda engine, cell=cell: Recurrent(cell, engine=engine), x, None, None)
        randomize_(cell, seed=1)
        if name == "counter":
            cell.period.copy_(torch.tensor([2, 1, 3, 2]))
        compare(lambda engine, cell=cell: Recurrent(cell, engine=engine), x, None, None)


# -- 5. steps the engine cannot compile ------------------------------------------------------------


class SineCell(UserCell):
    """φ = sin, outside the engine's operations."""

    def recurrence(self, gi, state):
        h = torch.sin(gi + F.linear(state.h, self.weight_hh))
        return h, RNNState(h)


class InPlaceCell(UserCell):
    """An in-place activation."""

    def recurrence(self, gi, state):
        a = gi + F.linear(state.h, self.weight_hh)
        h = a.tanh_()
        return h, RNNState(h)


class AugmentedAssignCell(UserCell):
    """``a += gi``: an in-place addition."""

    def recurrence(self, gi, state):
        a = F.linear(state.h, self.weight_hh)
        a += gi
        h = torch.tanh(a)
        return h, RNNState(h)


class SetItemCell(UserCell):
    """An assignment into a slice of the new state."""

    def recurrence(self, gi, state):
        h = torch.tanh(gi + F.linear(state.h, self.weight_hh))
        h[:, 0] = 0.0
        return h, RNNState(h)


class BranchCell(UserCell):
    """Python control flow on the step's values: clip only when some unit is large."""

    def recurrence(self, gi, state):
        a = gi + F.linear(state.h, self.weight_hh)
        if (a.abs() > 1.0).any():
            a = a / 2
        h = torch.tanh(a)
        return h, RNNState(h)


class ItemCell(UserCell):
    """``.item()`` of a batch statistic: a reduction over the batch, which the engine has not."""

    def recurrence(self, gi, state):
        a = gi + F.linear(state.h, self.weight_hh)
        scale = a.abs().max().item()
        h = torch.tanh(a / scale)
        return h, RNNState(h)


class BatchTensorCell(UserCell):
    """A tensor with the batch dimension made inside the step (an offset the size of h)."""

    def recurrence(self, gi, state):
        h = state.h
        offset = torch.full((h.shape[0], self.hidden_size), 0.1, dtype=h.dtype)  # (B, H)
        h = torch.tanh(gi + F.linear(h, self.weight_hh) + offset)
        return h, RNNState(h)


# cell class -> a pattern its reason must match (the operation, as the user wrote it)
UNSUPPORTED = {
    SineCell: r"SineCell's step uses operation 'sin'",
    InPlaceCell: r"InPlaceCell's step uses in-place operation 'tanh_'",
    AugmentedAssignCell: r"AugmentedAssignCell's step uses in-place operation '(add_|__iadd__)'",
    SetItemCell: r"SetItemCell's step uses in-place operation '__setitem__'",
    BranchCell: r"BranchCell's step uses 'any' on a value of the step \(Python control flow",
    ItemCell: r"ItemCell's step uses operation 'max'",
    BatchTensorCell: r"BatchTensorCell's step uses 'full' making a tensor of shape \(B, 4\) inside the step",
}


@pytest.mark.parametrize("cls", list(UNSUPPORTED), ids=lambda c: c.__name__)
def test_unsupported_step_is_named_warned_once_and_refused(cls, monkeypatch):
    monkeypatch.setattr(fused, "_warned_untraceable", set())  # each case warns afresh, whatever ran before
    pattern = UNSUPPORTED[cls]
    cell = randomize_(cls(3, 4).double(), seed=14)
    reason = fused.why_not_fused(cell)
    assert reason is not None
    assert re.search(pattern, reason), reason

    x = torch.randn(5, 2, 3, generator=torch.Generator().manual_seed(15), dtype=F64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        layers = [Recurrent(cell), Recurrent(cls(3, 4).double())]  # a second cell of the class too
        for layer in layers + layers:
            layer(x)
            assert layer.last_engine == "reference"
    untraceable = [w for w in caught if "does not compile" in str(w.message)]
    assert len(untraceable) == 1, [str(w.message) for w in caught]
    assert untraceable[0].category is RuntimeWarning
    assert re.search(pattern, str(untraceable[0].message))

    if cls not in (InPlaceCell, SetItemCell):  # in-place on a tensor autograd needs fails on either path
        auto, reference = Recurrent(cell), Recurrent(cell, engine="reference")
        torch.testing.assert_close(auto(x)[0], reference(x)[0], **TOL[F64])

    with pytest.raises(ValueError, match="engine='fused' cannot run this cell: " + pattern):
        Recurrent(cell, engine="fused")(x)  # refused when built, or at the latest on the first call


# -- known gaps: each test fails today, and passes (failing as XPASS) once the engine is fixed -------


class HandSigmoidCell(UserCell):
    """A sigmoid written by hand, σ(a) = 1 / (1 + e^(−a)): a number divided by a value of the step."""

    def recurrence(self, gi, state):
        a = gi + F.linear(state.h, self.weight_hh)
        h = 1 / (1 + torch.exp(-a)) - 0.5
        return h, RNNState(h)


def test_number_divided_by_a_value_of_the_step_runs_fused():
    cell = randomize_(HandSigmoidCell(3, 4).double(), seed=16)
    assert fused.why_not_fused(cell) is None
    x = torch.randn(5, 3, 3, generator=torch.Generator().manual_seed(16), dtype=F64)
    compare(
        lambda engine: Recurrent(cell, reverse=True, engine=engine),
        x,
        random_state(cell, 3, torch.Generator(), F64),
        torch.tensor([5, 2, 4]),
    )


class TemperatureCell(UserCell):
    """Reads a parameter into Python with ``.item()`` (so no gradient reaches it, on either engine)."""

    def extra_parameters(self):
        self.temperature = nn.Parameter(torch.empty(()))

    def recurrence(self, gi, state):
        t = self.temperature.item()
        h = torch.tanh((gi + F.linear(state.h, self.weight_hh)) / t)
        return h, RNNState(h)


class RescaleCell(UserCell):
    """Python control flow on a parameter's value: shrink a recurrent matrix that has grown."""

    def recurrence(self, gi, state):
        u = self.weight_hh
        if (u.abs() > 1.0).any():
            u = u / 10
        h = torch.tanh(gi + F.linear(state.h, u))
        return h, RNNState(h)


@pytest.mark.parametrize("cls", [TemperatureCell, RescaleCell], ids=lambda c: c.__name__)
def test_python_values_read_from_parameters_follow_the_parameters(cls):
    cell = randomize_(cls(3, 4).double(), seed=17)
    with torch.no_grad():
        cell.weight_hh.clamp_(-0.9, 0.9)
        if cls is TemperatureCell:
            cell.temperature.fill_(1.0)
    x = torch.randn(5, 2, 3, generator=torch.Generator().manual_seed(17), dtype=F64)
    auto, reference = Recurrent(cell), Recurrent(cell, engine="reference")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # refusing such a step (and warning) would be a fix too
        torch.testing.assert_close(auto(x)[0], reference(x)[0], **TOL[F64])
        with torch.no_grad():  # an optimiser step
            cell.weight_hh.mul_(3.0)
            if cls is TemperatureCell:
                cell.temperature.fill_(4.0)
        torch.testing.assert_close(auto(x)[0], reference(x)[0], **TOL[F64])


def test_tensor_made_with_the_batch_dimension_is_named_by_its_factory():
    cell = BatchTensorCell(3, 4).double()
    assert "'full'" in fused.why_not_fused(cell)
    with pytest.raises(ValueError, match="'full'"):
        Recurrent(cell, engine="fused")


# -- 6. float32, and a batch split across threads --------------------------------------------------


@pytest.mark.parametrize(
    "name", ["layernorm-lstm", "mgu", "cifg-peephole", "cho-gru", "hand-norm", "plain-norm", "blocks", "skip-counter"]
)
def test_fused_equals_reference_float32(name):
    gen = torch.Generator().manual_seed(18)
    T, B, I, H = 7, 5, 3, 6
    cell = make(name, I, H, seed=18, dtype=torch.float32)
    x = torch.randn(T, B, I, generator=gen)
    state = random_state(cell, B, gen, torch.float32)
    compare(
        lambda engine: Recurrent(cell, reverse=True, engine=engine),
        x,
        state,
        torch.tensor([7, 2, 5, 1, 6]),
        dtype=torch.float32,
    )


@pytest.fixture
def two_threads():
    """torch on two threads for the test (the suite runs with OMP_NUM_THREADS=1), restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", ["layernorm-lstm", "blocks", "counter", "skip-cho-gru"])
def test_large_batch_split_across_threads(name, two_threads):
    """B = 160 rows, H = 64: the element-wise passes run in parallel chunks of rows."""
    gen = torch.Generator().manual_seed(19)
    T, B, I, H = 3, 160, 4, 64
    cell = randomize_(CELLS[name](I, H).double(), scale=0.2, seed=19)
    x = torch.randn(T, B, I, generator=gen, dtype=F64)
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    compare(lambda engine: Recurrent(cell, engine=engine), x, random_state(cell, B, gen, F64), lengths)
