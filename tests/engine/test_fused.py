"""The fused C++ engine against the reference step loop: outputs, final states and every gradient
(inputs, each field of the initial state, all parameters), on random shapes and random lengths,
forward and reversed; float64 to 1e-10, float32 to 1e-5 (relative and absolute)."""

import warnings

import pytest
import torch

from rnnkit import Recurrent
from rnnkit.cells import ClockworkCell, ElmanCell, GRUCell, LeakyCell, LSTMCell, LSTMState, RNNState, SkipCell
from rnnkit.cells.state import map_state, state_tensors
from rnnkit.engine import build
from tests.helpers import TOL, randomize_, step_loop

# Every core and option the engine covers, alone and wrapped. (I, H) → cell; H is even, ≥ 3.
FUSED_CELLS = {
    "elman": lambda i, h: ElmanCell(i, h),
    "elman-relu-nobias": lambda i, h: ElmanCell(i, h, bias=False, nonlinearity="relu"),
    "lstm": lambda i, h: LSTMCell(i, h),
    "lstm-nobias": lambda i, h: LSTMCell(i, h, bias=False),
    "lstm1997-clip": lambda i, h: LSTMCell(i, h, forget_gate=False, cell_clip=1.5),
    "peephole": lambda i, h: LSTMCell(i, h, peephole=True),
    "peephole-clip": lambda i, h: LSTMCell(i, h, peephole=True, cell_clip=0.8),
    "blocks": lambda i, h: LSTMCell(i, h, block_size=2),
    "blocks-peephole": lambda i, h: LSTMCell(i, h, peephole=True, block_size=2),
    "blocks-1997-peephole": lambda i, h: LSTMCell(i, h, peephole=True, block_size=2, forget_gate=False),
    "gru": lambda i, h: GRUCell(i, h),
    "gru-nobias": lambda i, h: GRUCell(i, h, bias=False),
    "clockwork": lambda i, h: ClockworkCell(i, h, periods=(1, 2, 3)),
    "clockwork-relu": lambda i, h: ClockworkCell(i, h, periods=(4, 1), nonlinearity="relu"),
    "leaky-elman-tau": lambda i, h: LeakyCell(ElmanCell(i, h), tau=(1.5, 10.0)),
    "leaky-elman-learned": lambda i, h: LeakyCell(ElmanCell(i, h), alpha=0.3, learn_alpha=True),
    "leaky-lstm-learned": lambda i, h: LeakyCell(LSTMCell(i, h, peephole=True), alpha=0.4, learn_alpha=True),
    "leaky-blocks": lambda i, h: LeakyCell(LSTMCell(i, h, block_size=2, cell_clip=1.0), alpha=0.7),
    "leaky-gru-learned": lambda i, h: LeakyCell(GRUCell(i, h), alpha=0.6, learn_alpha=True),
    "leaky-clockwork-learned": lambda i, h: LeakyCell(ClockworkCell(i, h, periods=(1, 2)), alpha=0.5, learn_alpha=True),
    "skip-elman": lambda i, h: SkipCell(ElmanCell(i, h), delay=3),
    "skip-gru": lambda i, h: SkipCell(GRUCell(i, h), delay=2),
    "skip-peephole": lambda i, h: SkipCell(LSTMCell(i, h, peephole=True), delay=4),
    "skip-clockwork": lambda i, h: SkipCell(ClockworkCell(i, h, periods=(2, 1)), delay=2),
    "skip-leaky-lstm": lambda i, h: SkipCell(
        LeakyCell(LSTMCell(i, h, forget_gate=False), alpha=0.4, learn_alpha=True), delay=2
    ),
    "skip-leaky-gru": lambda i, h: SkipCell(LeakyCell(GRUCell(i, h), tau=(2.0, 5.0)), delay=3),
}


class SineCell(ElmanCell):
    """An Elman cell with φ = sin: an operation the engine does not compile."""

    def recurrence(self, gi, state):
        h = torch.sin(gi + torch.nn.functional.linear(state.h, self.weight_hh, self.bias_hh))
        return h, RNNState(h)


pytestmark = pytest.mark.usefixtures("fused_extension")  # tests/engine/conftest.py: built, or fail loudly


def random_state(cell, batch, gen, dtype):
    """A random initial state: every float field from N(0, 1), integer counters from [0, 5)."""
    template = cell.init_state(batch, dtype=dtype)
    return map_state(
        lambda t: (
            torch.randn(t.shape, generator=gen, dtype=torch.float64).to(dtype)
            if t.is_floating_point()
            else torch.randint(0, 5, t.shape, generator=gen)
        ),
        template,
    )


def compare_engines(cell, x, state, lengths, reverse, dtype, batch_first=False):
    """Run the fused engine and the reference loop on the same data; assert equal outputs, final
    states (integer counters exactly) and gradients of a random projection of all of them."""
    tol = TOL[dtype]
    results = []
    for engine in ("fused", "reference"):
        layer = Recurrent(cell, batch_first=batch_first, reverse=reverse, engine=engine)
        xs = x.detach().clone().requires_grad_()
        s0 = map_state(lambda t: t.detach().clone().requires_grad_(t.is_floating_point()), state)
        y, final = layer(xs, s0, lengths)
        assert layer.last_engine == engine
        outs = [y, *state_tensors(final)]
        gen = torch.Generator().manual_seed(99)
        floats = [o for o in outs if o.is_floating_point()]
        loss = sum((o * torch.randn(o.shape, generator=gen, dtype=torch.float64).to(dtype)).sum() for o in floats)
        wrt = [xs, *(t for t in state_tensors(s0) if t.is_floating_point()), *cell.parameters()]
        grads = torch.autograd.grad(loss, wrt)
        results.append((outs, grads))
    (out_f, grad_f), (out_r, grad_r) = results
    names = [
        "x",
        *(f"state[{k}]" for k, t in enumerate(state_tensors(state)) if t.is_floating_point()),
        *(n for n, _ in cell.named_parameters()),
    ]
    for k, (a, b) in enumerate(zip(out_f, out_r)):
        if a.is_floating_point():
            torch.testing.assert_close(a, b, **tol, msg=lambda m, k=k: f"output {k}: {m}")
        else:
            assert torch.equal(a, b), f"output {k}: {a} != {b}"
    for name, a, b in zip(names, grad_f, grad_r):
        torch.testing.assert_close(a, b, **tol, msg=lambda m, name=name: f"gradient of {name}: {m}")


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("name", list(FUSED_CELLS))
def test_fused_equals_reference_float64(name, seed):
    gen = torch.Generator().manual_seed(seed)
    T, B, I = (int(v) for v in torch.randint(1, 9, (3,), generator=gen))
    H = 2 * int(torch.randint(2, 5, (1,), generator=gen))
    cell = randomize_(FUSED_CELLS[name](I, H).double(), seed=seed)
    x = torch.randn(T, B, I, generator=gen, dtype=torch.float64)
    state = random_state(cell, B, gen, torch.float64)
    # seed 0: all full length, forward; seed 1: random lengths, reversed; seed 2: both
    lengths = None if seed == 0 else torch.randint(1, T + 1, (B,), generator=gen)
    compare_engines(cell, x, state, lengths, reverse=seed >= 1, dtype=torch.float64)


@pytest.mark.parametrize(
    "name", ["peephole", "blocks-peephole", "gru", "leaky-lstm-learned", "skip-elman", "clockwork"]
)
def test_fused_equals_reference_float32(name):
    gen = torch.Generator().manual_seed(5)
    T, B, I, H = 7, 5, 3, 6
    cell = randomize_(FUSED_CELLS[name](I, H), seed=5)
    x = torch.randn(T, B, I, generator=gen)
    state = random_state(cell, B, gen, torch.float32)
    compare_engines(cell, x, state, torch.tensor([7, 2, 5, 1, 6]), reverse=True, dtype=torch.float32)


@pytest.mark.parametrize("name", ["peephole", "skip-gru", "leaky-elman-tau"])
def test_fused_splits_rows_across_threads(name):
    """A batch large enough that the element-wise passes run in parallel chunks of rows."""
    gen = torch.Generator().manual_seed(3)
    T, B, I, H = 3, 160, 4, 64
    cell = randomize_(FUSED_CELLS[name](I, H).double(), scale=0.2, seed=3)
    x = torch.randn(T, B, I, generator=gen, dtype=torch.float64)
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    compare_engines(cell, x, random_state(cell, B, gen, torch.float64), lengths, reverse=False, dtype=torch.float64)


def test_fused_batch_first():
    gen = torch.Generator().manual_seed(4)
    cell = randomize_(FUSED_CELLS["skip-peephole"](3, 4).double(), seed=4)
    x = torch.randn(3, 6, 3, generator=gen, dtype=torch.float64)  # (B, T, I)
    compare_engines(
        cell,
        x,
        random_state(cell, 3, gen, torch.float64),
        [6, 1, 4],
        reverse=True,
        dtype=torch.float64,
        batch_first=True,
    )


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("name", ["blocks-peephole", "skip-leaky-gru", "clockwork"])
def test_fused_padded_batch_equals_each_sequence_alone(name, reverse):
    cell = randomize_(FUSED_CELLS[name](3, 4).double(), seed=8)
    layer = Recurrent(cell, reverse=reverse, engine="fused")
    lengths = [5, 9, 1, 7]
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(9, 4, 3, generator=gen, dtype=torch.float64)
    for b, n in enumerate(lengths):
        x[n:, b] = 1e3  # garbage in the padding must not leak into anything
    y, final = layer(x, lengths=torch.tensor(lengths))
    for b, n in enumerate(lengths):
        alone = x[:n, b : b + 1]
        ref_y, ref_final = step_loop(cell, alone.flip(0) if reverse else alone, None)
        if reverse:
            ref_y = ref_y.flip(0)
        torch.testing.assert_close(y[:n, b : b + 1], ref_y, **TOL[torch.float64])
        assert (y[n:, b] == 0).all(), "outputs past a sequence's end must be zero"
        for got, want in zip(state_tensors(final), state_tensors(ref_final)):
            torch.testing.assert_close(got[b : b + 1], want, **TOL[torch.float64])


def test_auto_runs_variant_cells_on_the_fused_engine():
    x = torch.randn(4, 2, 3)
    for cell, expected in [
        (LSTMCell(3, 4), "native"),
        (LSTMCell(3, 4, peephole=True), "fused"),
        (LeakyCell(GRUCell(3, 4), alpha=0.5), "fused"),
        (SkipCell(ClockworkCell(3, 4), delay=2), "fused"),
        (SkipCell(SkipCell(ElmanCell(3, 4), delay=2), delay=3), "fused"),  # two delay lines
        (SineCell(3, 4), "reference"),  # sin is not in the engine's instruction set
    ]:
        layer = Recurrent(cell)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            layer(x)
        assert layer.last_engine == expected, cell
        untraceable = [w for w in caught if "does not compile" in str(w.message)]
        assert len(untraceable) == (expected == "reference"), [str(w.message) for w in caught]
        if untraceable:
            assert "operation 'sin'" in str(untraceable[0].message)
    half = Recurrent(LSTMCell(3, 4, peephole=True).to(torch.bfloat16))
    half(x.to(torch.bfloat16))
    assert half.last_engine == "reference"


def test_native_cells_with_lengths_on_the_cpu_run_fused():
    """torch's CPU kernels take lengths only packed, on a slow path; "auto" runs such a layer fused."""
    cell = randomize_(LSTMCell(3, 4).double(), seed=2)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    auto, native = Recurrent(cell), Recurrent(cell, engine="native")
    y, s = auto(x, lengths=[5, 3])
    y_native, s_native = native(x, lengths=[5, 3])
    assert (auto.last_engine, native.last_engine) == ("fused", "native")
    torch.testing.assert_close(y, y_native, **TOL[torch.float64])
    torch.testing.assert_close(s.c, s_native.c, **TOL[torch.float64])
    auto(x)
    assert auto.last_engine == "native"


def test_environment_restricts_auto(monkeypatch):
    x = torch.randn(4, 2, 3)
    layer = Recurrent(LSTMCell(3, 4, peephole=True))
    monkeypatch.setenv("RNNKIT_ENGINE", "reference")
    layer(x)
    assert layer.last_engine == "reference"
    native = Recurrent(LSTMCell(3, 4))
    native(x)
    assert native.last_engine == "reference"
    forced = Recurrent(LSTMCell(3, 4, peephole=True), engine="fused")  # an explicit engine wins
    forced(x)
    assert forced.last_engine == "fused"
    monkeypatch.setenv("RNNKIT_ENGINE", "native")
    layer(x)
    native(x)
    assert (layer.last_engine, native.last_engine) == ("reference", "native")
    monkeypatch.setenv("RNNKIT_ENGINE", "fast")
    with pytest.raises(ValueError, match="RNNKIT_ENGINE must be 'auto', 'native' or 'reference', got 'fast'"):
        layer(x)


def test_failed_build_falls_back_to_the_reference_loop_with_one_warning(monkeypatch):
    def broken_compile():
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(build, "_compile", broken_compile)
    monkeypatch.setattr(build, "_extension", None)
    monkeypatch.setattr(build, "_build_error", None)
    monkeypatch.setattr(build, "_warned", False)
    cell = randomize_(LSTMCell(3, 4, peephole=True).double(), seed=1)
    layer = Recurrent(cell)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    with pytest.warns(
        RuntimeWarning, match=r"fused engine could not be built \(RuntimeError: no compiler here\)"
    ) as record:
        y, state = layer(x)
        layer(x)
        Recurrent(LeakyCell(GRUCell(3, 4), alpha=0.5))(x.float())
    assert len([w for w in record if "fused engine" in str(w.message)]) == 1
    assert layer.last_engine == "reference"
    y_ref, state_ref = step_loop(cell, x, None)
    torch.testing.assert_close(y, y_ref, **TOL[torch.float64])
    torch.testing.assert_close(state.c, state_ref.c, **TOL[torch.float64])
    with pytest.raises(
        RuntimeError, match="engine='fused' asked for, but the fused engine could not be built: no compiler here"
    ):
        Recurrent(cell, engine="fused")(x)


def test_fused_engine_refusals():
    with pytest.raises(ValueError, match="engine='fused' cannot run this cell: SineCell's step uses operation 'sin'"):
        Recurrent(SineCell(3, 4), engine="fused")
    layer = Recurrent(LSTMCell(3, 4, peephole=True).to(torch.bfloat16), engine="fused")
    with pytest.raises(
        ValueError, match="engine='fused' runs on CPU float32/float64 tensors, got torch.bfloat16 on cpu"
    ):
        layer(torch.randn(4, 2, 3, dtype=torch.bfloat16))


def test_fused_has_no_double_backward():
    cell = LSTMCell(3, 4, peephole=True).double()
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    y, _ = Recurrent(cell, engine="fused")(x)
    # even where the incoming gradient is a constant, a second derivative would miss the
    # dependence through the saved activations: refused, not silently wrong
    with pytest.raises(RuntimeError, match="the fused engine has no double backward"):
        torch.autograd.grad(y.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="the fused engine has no double backward"):
        torch.autograd.grad(y.square().sum(), x, create_graph=True)


def test_outputs_modified_in_place_are_caught():
    """The outputs are saved for backward; editing them in place must fail, not corrupt gradients."""
    cell = GRUCell(3, 4)
    x = torch.randn(4, 2, 3, requires_grad=True)
    y, _ = Recurrent(LeakyCell(cell, alpha=0.5), engine="fused")(x)
    y.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_fused_without_grad_and_with_frozen_parameters():
    cell = randomize_(SkipCell(LSTMCell(3, 4, peephole=True), delay=2).double(), seed=2)
    x = torch.randn(5, 3, 3, dtype=torch.float64)
    fused_layer, reference = Recurrent(cell, engine="fused"), Recurrent(cell, engine="reference")
    with torch.no_grad():
        y, s = fused_layer(x, lengths=[5, 2, 4])
        y_ref, s_ref = reference(x, lengths=[5, 2, 4])
    torch.testing.assert_close(y, y_ref, **TOL[torch.float64])
    torch.testing.assert_close(s.past, s_ref.past, **TOL[torch.float64])
    for p in cell.parameters():
        p.requires_grad_(False)
    xg = x.clone().requires_grad_()
    (gx,) = torch.autograd.grad(fused_layer(xg)[0].square().sum(), xg)
    xr = x.clone().requires_grad_()
    (gr,) = torch.autograd.grad(reference(xr)[0].square().sum(), xr)
    torch.testing.assert_close(gx, gr, **TOL[torch.float64])


def test_final_state_only_loss():
    """A loss on the final state alone (the outputs' gradient is zero) still reaches every parameter."""
    cell = randomize_(LSTMCell(3, 4, forget_gate=False, peephole=True).double(), seed=6)
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    grads = []
    for engine in ("fused", "reference"):
        _, state = Recurrent(cell, engine=engine)(x, lengths=[3, 6])
        grads.append(torch.autograd.grad(state.c.sum() + state.h.square().sum(), list(cell.parameters())))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, **TOL[torch.float64])
    assert all(g.abs().sum() > 0 for g in grads[0])


def test_lstm_state_given_as_plain_tuple():
    cell = randomize_(LSTMCell(3, 4, cell_clip=2.0).double(), seed=2)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    h0, c0 = torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    y, s = Recurrent(cell, engine="fused")(x, (h0, c0))
    y_ref, s_ref = step_loop(cell, x, LSTMState(h0, c0))
    torch.testing.assert_close(y, y_ref, **TOL[torch.float64])
    torch.testing.assert_close(s.c, s_ref.c, **TOL[torch.float64])
