"""Property-based tests of the time loop and the layers built on it (hypothesis).

For random cells of the zoo (``rnnkit.cells.registry``), random sizes T, B, I, H, random
lengths (unsorted, 1 and T included), ``batch_first`` and ``reverse``:

(a) a padded batch equals each sequence run alone by a hand-stepped loop of the cell: outputs
    over its length, its final state; outputs past its end are exactly zero;
(b) the engine ``"auto"`` picks (native or fused) equals the ``"reference"`` loop on outputs,
    final states and every gradient, in float64 to 1e-10;
(c) ``Stack`` and ``Bidirectional`` with lengths equal a hand-stepped run of each sequence;
(d) invalid lengths (0, negative, > T, wrong count) raise ValueError naming ``lengths``, and
    non-integers TypeError, whatever module, layout and container they come in.

The examples are derandomized, so a run in CI sees the same cases as a run here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rnnkit import Recurrent, Stack
from rnnkit.cells import LSTMCell, LSTMState
from rnnkit.cells.registry import CELLS, make_cell
from rnnkit.cells.state import map_state, state_tensors
from rnnkit.compose import Bidirectional, BidirectionalState
from rnnkit.engine import fused
from tests.helpers import TOL, assert_same_computation, randomize_, step_loop

F64 = TOL[torch.float64]
PROPERTY = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

# hidden sizes each cell accepts: memory blocks of 2 cells; clockwork's four period groups need ≥ 4 units
HIDDEN = {"lstm-blocks": [2, 4, 6], "clockwork": [4, 5, 6]}
GARBAGE = 1e3  # written into the padding: it must not leak into any output, state or gradient


@st.composite
def problems(draw, names=tuple(CELLS), max_steps=7, max_batch=4):
    """A cell name, sizes T, B, I, H, unsorted lengths in [1, T] (1 and T likely), a seed."""
    name = draw(st.sampled_from(names))
    T = draw(st.integers(1, max_steps))
    B = draw(st.integers(1, max_batch))
    I = draw(st.integers(1, 4))
    H = draw(st.sampled_from(HIDDEN.get(name, [1, 2, 3, 5])))
    lengths = draw(st.lists(st.one_of(st.just(1), st.just(T), st.integers(1, T)), min_size=B, max_size=B))
    return dict(name=name, T=T, B=B, I=I, H=H, lengths=lengths, seed=draw(st.integers(0, 2**16)))


def random_cell(name: str, I: int, H: int, seed: int):
    """A float64 cell of the zoo with every parameter random (so gate-order bugs cannot hide)."""
    torch.manual_seed(seed)
    return randomize_(make_cell(name, I, H).double(), seed=seed)


def random_inputs(T, B, I, lengths, seed):
    """x (T, B, I) float64, time-major, with garbage in each sequence's padding."""
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(T, B, I, generator=gen, dtype=torch.float64)
    for b, n in enumerate(lengths):
        x[n:, b] = GARBAGE
    return x


def random_state(cell, B, seed):
    """The cell's state for B rows with random floating entries (integer counters stay at zero)."""
    gen = torch.Generator().manual_seed(seed + 2)
    return map_state(
        lambda t: torch.randn(t.shape, generator=gen, dtype=t.dtype) if t.is_floating_point() else t,
        cell.init_state(B, dtype=torch.float64),
    )


def row(state, b):
    """Row b of every tensor of a state, batch dimension kept: (1, ...)."""
    return map_state(lambda t: t[b : b + 1], state)


def alone(cell, x_b, state_b, reverse):
    """One sequence x_b (n, 1, I) run by a hand-stepped loop of the cell: outputs (n, 1, H), final state."""
    y, final = step_loop(cell, x_b.flip(0) if reverse else x_b, state_b)
    return (y.flip(0) if reverse else y), final


def assert_states_close(got, want, msg=""):
    for k, (a, b) in enumerate(zip(state_tensors(got), state_tensors(want), strict=True)):
        torch.testing.assert_close(a, b, **F64, msg=lambda m, k=k: f"{msg} state tensor {k}: {m}")


# (a) -------------------------------------------------------------------------------------------
@PROPERTY
@given(problems(), st.booleans(), st.booleans(), st.booleans())
def test_padded_batch_equals_each_sequence_alone(p, batch_first, reverse, with_state):
    cell = random_cell(p["name"], p["I"], p["H"], p["seed"])
    x = random_inputs(p["T"], p["B"], p["I"], p["lengths"], p["seed"])
    state = random_state(cell, p["B"], p["seed"]) if with_state else None
    layer = Recurrent(cell, batch_first=batch_first, reverse=reverse)
    y, final = layer(x.transpose(0, 1) if batch_first else x, state, lengths=p["lengths"])
    if batch_first:
        y = y.transpose(0, 1)  # (T, B, H)
    assert y.shape == (p["T"], p["B"], p["H"])
    with torch.no_grad():
        for b, n in enumerate(p["lengths"]):
            want_y, want_final = alone(cell, x[:n, b : b + 1], row(state, b) if with_state else None, reverse)
            torch.testing.assert_close(y[:n, b : b + 1], want_y, **F64, msg=lambda m, b=b: f"{p} row {b}: {m}")
            assert torch.equal(y[n:, b], torch.zeros_like(y[n:, b])), (
                f"outputs past the end of row {b} must be exactly zero"
            )
            assert_states_close(row(final, b), want_final, f"{p} row {b}")


# (b) -------------------------------------------------------------------------------------------
ENGINES_SEEN: set[str] = set()


@PROPERTY
@given(problems(), st.booleans(), st.booleans(), st.booleans(), st.booleans())
def test_auto_engine_equals_the_reference_loop_with_gradients(p, batch_first, reverse, use_lengths, with_state):
    cell = random_cell(p["name"], p["I"], p["H"], p["seed"])
    lengths = torch.tensor(p["lengths"]) if use_lengths else None
    x = random_inputs(p["T"], p["B"], p["I"], p["lengths"] if use_lengths else [p["T"]] * p["B"], p["seed"])
    if batch_first:
        x = x.transpose(0, 1).contiguous()  # (B, T, I)
    auto = Recurrent(cell, batch_first=batch_first, reverse=reverse)
    ref = Recurrent(cell, batch_first=batch_first, reverse=reverse, engine="reference")
    template = random_state(cell, p["B"], p["seed"])
    floats = [t for t in state_tensors(template) if t.is_floating_point()]

    def rebuild(initial):  # the floating tensors of the state are inputs, so their gradients are compared too
        it = iter(initial)
        return map_state(lambda t: next(it) if t.is_floating_point() else t, template)

    def run(layer):
        return lambda x, *initial: layer(x, rebuild(initial) if with_state else None, lengths)

    params = list(cell.parameters())
    assert_same_computation(run(auto), run(ref), [x, *(floats if with_state else [])], params, params)
    ENGINES_SEEN.add(auto.last_engine)
    assert ref.last_engine == "reference"


def test_the_engine_property_exercised_both_fast_paths():
    """(b) would hold vacuously if auto always fell back to the reference loop."""
    if not ENGINES_SEEN:
        pytest.skip("run together with test_auto_engine_equals_the_reference_loop_with_gradients")
    if fused.engine_override() is not None:
        pytest.skip(f"RNNKIT_ENGINE={fused.engine_override()} restricts the engines")
    expected = {"native", "fused"} if fused.load_extension() is not None else {"native"}
    assert expected <= ENGINES_SEEN, ENGINES_SEEN


# (c) -------------------------------------------------------------------------------------------
def layers_alone(layers, x_b):
    """Recurrent/Bidirectional layers in sequence run on one sequence x_b (n, 1, I) by hand-stepped
    loops of their cells (no lengths, no engines): outputs and the final state of every layer."""
    y, finals = x_b, []
    for layer in layers:
        if isinstance(layer, Bidirectional):
            h, s_f = alone(layer.forward_layer.cell, y, None, reverse=False)
            g, s_b = alone(layer.backward_layer.cell, y, None, reverse=True)
            y = torch.cat([h, g], dim=-1) if layer.merge == "concat" else h + g
            finals.append(BidirectionalState(s_f, s_b))
        else:
            y, s = alone(layer.cell, y, None, reverse=layer.reverse)
            finals.append(s)
    return y, tuple(finals)


@PROPERTY
@given(
    problems(max_steps=6, max_batch=4),
    st.lists(st.sampled_from(["one", "concat", "sum"]), min_size=1, max_size=3),
    st.booleans(),
)
def test_stack_and_bidirectional_with_lengths_equal_each_sequence_alone(p, kinds, batch_first):
    torch.manual_seed(p["seed"])
    layers, size = [], p["I"]
    for kind in kinds:
        if kind == "one":
            layer = Recurrent(make_cell(p["name"], size, p["H"]), batch_first=batch_first)
        else:
            layer = Bidirectional(
                make_cell(p["name"], size, p["H"]),
                make_cell(p["name"], size, p["H"]),
                merge=kind,
                batch_first=batch_first,
            )
        layers.append(layer)
        size = layer.output_size
    stack = randomize_(Stack(layers).double(), seed=p["seed"])
    x = random_inputs(p["T"], p["B"], p["I"], p["lengths"], p["seed"])
    modules = [stack] + ([layers[0]] if isinstance(layers[0], Bidirectional) else [])  # a lone Bidirectional too
    for module in modules:  # lengths as a NumPy array: another container users pass
        y, finals = module(x.transpose(0, 1) if batch_first else x, lengths=np.array(p["lengths"]))
        if batch_first:
            y = y.transpose(0, 1)  # (T, B, ·)
        whole = module is stack
        with torch.no_grad():
            for b, n in enumerate(p["lengths"]):
                want_y, want_finals = layers_alone(layers if whole else [module], x[:n, b : b + 1])
                if not whole:
                    want_finals = want_finals[0]
                torch.testing.assert_close(
                    y[:n, b : b + 1], want_y, **F64, msg=lambda m, b=b: f"{kinds} {p} row {b}: {m}"
                )
                assert torch.equal(y[n:, b], torch.zeros_like(y[n:, b])), (
                    f"outputs past the end of row {b} must be zero"
                )
                assert_states_close(map_state(lambda t, b=b: t[b : b + 1], finals), want_finals, f"{kinds} {p} row {b}")


# (d) -------------------------------------------------------------------------------------------
def modules_for(I, H, batch_first):
    """Every module that takes lengths, each in both layouts, on a native and a fused cell."""
    return {
        "Recurrent": Recurrent(LSTMCell(I, H), batch_first=batch_first),
        "Recurrent(peephole)": Recurrent(LSTMCell(I, H, peephole=True), batch_first=batch_first),
        "Stack": Stack.build(LSTMCell, I, H, 2, batch_first=batch_first),
        "Stack(bidirectional)": Stack.build(LSTMCell, I, H, 2, bidirectional=True, batch_first=batch_first),
        "Bidirectional": Bidirectional(make_cell("gru", I, H), batch_first=batch_first),
    }


@st.composite
def invalid_lengths(draw, T, B):
    """Lengths with at least one entry ≤ 0 or > T, or a count other than B."""
    kind = draw(st.sampled_from(["zero", "negative", "too long", "too few", "too many"]))
    good = draw(st.lists(st.integers(1, T), min_size=B, max_size=B))
    if kind in ("too few", "too many"):
        n = draw(st.integers(0, B - 1)) if kind == "too few" else draw(st.integers(B + 1, B + 3))
        return kind, draw(st.lists(st.integers(1, T), min_size=n, max_size=n))
    bad = {
        "zero": 0,
        "negative": draw(st.integers(-(10**12), -1)),
        "too long": draw(st.one_of(st.just(T + 1), st.integers(T + 1, 10**12))),
    }[kind]
    good[draw(st.integers(0, B - 1))] = bad
    return kind, good


@settings(max_examples=80, deadline=None, derandomize=True)
@given(
    st.data(),
    st.integers(1, 6),
    st.integers(1, 4),
    st.booleans(),
    st.sampled_from(["list", "tuple", "tensor", "int32", "numpy"]),
)
def test_invalid_lengths_raise_value_error_naming_lengths(data, T, B, batch_first, container):
    kind, lengths = data.draw(invalid_lengths(T, B))
    if container == "list":
        given_lengths = lengths
    elif container == "tuple":
        given_lengths = tuple(lengths)
    elif container == "numpy":
        given_lengths = np.array(lengths, dtype=np.int64)
    else:
        fits = all(abs(v) < 2**31 for v in lengths)
        given_lengths = torch.tensor(lengths, dtype=torch.int32 if container == "int32" and fits else torch.int64)
    name = data.draw(st.sampled_from(sorted(modules_for(2, 3, batch_first))))
    module = modules_for(2, 3, batch_first)[name]
    x = torch.randn(B, T, 2) if batch_first else torch.randn(T, B, 2)
    if kind in ("too few", "too many"):
        message = rf"{name.split('(')[0]}: lengths must have shape \(B,\) = \({B},\), got \({len(lengths)},\)"
    else:
        i = next(k for k, v in enumerate(lengths) if not 1 <= v <= T)
        message = rf"{name.split('(')[0]}: every length must be in \[1, T={T}\], got {lengths[i]} \(lengths\[{i}\]\)"
    with pytest.raises(ValueError, match=message):
        module(x, lengths=given_lengths)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    st.integers(1, 5),
    st.integers(1, 3),
    st.sampled_from(["float list", "float tensor", "bool list", "bool tensor", "str", "numpy float", "scalar"]),
)
def test_lengths_that_are_not_integers_raise_type_error_naming_lengths(T, B, kind):
    values = list(range(1, B + 1))
    given_lengths = {
        "float list": [float(min(v, T)) for v in values],
        "float tensor": torch.tensor([float(min(v, T)) for v in values]),
        "bool list": [True] * B,
        "bool tensor": torch.ones(B, dtype=torch.bool),
        "str": "1" * B,
        "numpy float": np.full(B, 1.0),
        "scalar": T,
    }[kind]
    for name, module in modules_for(2, 3, False).items():
        with pytest.raises(
            TypeError, match=rf"{name.split('(')[0]}: lengths must (hold integers|be a 1-D tensor or sequence of ints)"
        ):
            module(torch.randn(T, B, 2), lengths=given_lengths)


# the containers lengths may come in, and the rest of the boundary ------------------------------
def test_lengths_in_any_integer_container_give_the_same_result():
    torch.manual_seed(0)
    layer = Recurrent(randomize_(LSTMCell(3, 4, peephole=True).double(), seed=1))
    x = torch.randn(6, 3, 3, dtype=torch.float64)
    want_y, want_s = layer(x, lengths=torch.tensor([6, 2, 4]))
    for lengths in (
        [6, 2, 4],
        (6, 2, 4),
        np.array([6, 2, 4]),
        np.array([6, 2, 4], dtype=np.int32),
        [np.int64(6), 2, np.int16(4)],
        [torch.tensor(6), torch.tensor(2), torch.tensor(4)],
        torch.tensor([6, 2, 4], dtype=torch.int32),
    ):
        y, s = layer(x, lengths=lengths)
        torch.testing.assert_close(y, want_y, rtol=0, atol=0)
        assert_states_close(s, want_s, repr(lengths))


def test_mixed_dtypes_and_devices_of_input_and_state_are_refused_by_name():
    layer = Recurrent(LSTMCell(3, 4))
    x = torch.randn(5, 2, 3)
    h, c = torch.zeros(2, 4), torch.zeros(2, 4)
    with pytest.raises(
        TypeError, match=r"LSTMCell: input x has dtype torch.float64, expected the parameters' dtype torch.float32"
    ):
        layer(x.double())
    with pytest.raises(TypeError, match=r"LSTMCell: state.c has dtype torch.float64, expected torch.float32"):
        layer(x, LSTMState(h, c.double()))
    with pytest.raises(ValueError, match=r"LSTMCell: input x is on meta, expected the parameters' device cpu"):
        layer(x.to("meta"))
    with pytest.raises(ValueError, match=r"LSTMCell: state.h is on meta, expected cpu"):
        layer(x, LSTMState(h.to("meta"), c))
    with pytest.raises(
        ValueError, match=r"Recurrent: lengths is on the meta device and holds no values; expected lengths on the CPU"
    ):
        layer(x, lengths=torch.tensor([5, 2], device="meta"))
    with pytest.raises(TypeError, match=r"Stack: state must be a tuple of 2 layer states, got a single LSTMState"):
        Stack.build(LSTMCell, 3, 4, 2)(x, LSTMState(h, c))  # an LSTMState is a pair too: not two layers' states
    with pytest.raises(
        TypeError,
        match=r"Bidirectional: a bidirectional layer's state must be BidirectionalState\(forward, backward\), "
        r"got LSTMState",
    ):
        Bidirectional(LSTMCell(3, 4))(x, LSTMState(h, c))
    with pytest.raises(
        TypeError, match=r"Stack: layer 0 is a cell \(LSTMCell\); expected a layer: wrap it as Recurrent\(cell\)"
    ):
        Stack([LSTMCell(3, 4)])
    with pytest.raises(TypeError, match=r"Bidirectional: cell must be an rnnkit cell \(rnnkit.cells.\*\), got LSTM"):
        Bidirectional(torch.nn.LSTM(3, 4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_lengths_on_either_device_with_a_cuda_input():
    torch.manual_seed(0)
    cell = randomize_(LSTMCell(3, 4).double(), seed=1)
    x = torch.randn(6, 3, 3, dtype=torch.float64)
    want_y, want_s = Recurrent(cell, engine="reference")(x, lengths=[6, 2, 4])
    gpu = Recurrent(cell.cuda())
    for lengths in (torch.tensor([6, 2, 4]), torch.tensor([6, 2, 4], device="cuda"), [6, 2, 4]):
        y, s = gpu(x.cuda(), lengths=lengths)
        torch.testing.assert_close(y.cpu(), want_y, **F64)
        assert_states_close(map_state(lambda t: t.cpu(), s), want_s)
    with pytest.raises(ValueError, match=r"every length must be in \[1, T=6\], got 7 \(lengths\[1\]\)"):
        gpu(x.cuda(), lengths=torch.tensor([6, 7, 4], device="cuda"))
