import pytest
import torch

from rnnkit import Bidirectional, BidirectionalState, Recurrent, Stack, from_torch
from rnnkit.cells import ElmanCell, GRUCell, LeakyCell, LSTMCell, LSTMState, RNNState, SkipCell
from tests.helpers import TOL, assert_same_computation, randomize_, step_loop


def test_bidirectional_is_forward_and_backward_runs_merged():
    fwd = randomize_(LSTMCell(3, 4, peephole=True).double(), seed=1)
    bwd = randomize_(LSTMCell(3, 4, peephole=True).double(), seed=2)
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    h, h_final = step_loop(fwd, x, None)
    g, g_final = step_loop(bwd, x.flip(0), None)
    g = g.flip(0)
    y, state = Bidirectional(fwd, bwd)(x)
    torch.testing.assert_close(y, torch.cat([h, g], -1), **TOL[torch.float64])
    torch.testing.assert_close(state.forward.c, h_final.c)
    torch.testing.assert_close(state.backward.c, g_final.c)
    y_sum, _ = Bidirectional(fwd, bwd, merge="sum")(x)
    torch.testing.assert_close(y_sum, h + g, **TOL[torch.float64])


def test_bidirectional_default_backward_cell_is_a_fresh_copy():
    cell = SkipCell(LeakyCell(GRUCell(3, 4), alpha=0.3), delay=2)
    layer = Bidirectional(cell)
    bwd = layer.backward_layer.cell
    assert type(bwd) is SkipCell and bwd is not cell
    assert not torch.equal(bwd.weight_skip, cell.weight_skip)
    assert layer.output_size == 8


def test_stack_equals_layers_applied_in_turn():
    torch.manual_seed(0)
    cells = [ElmanCell(3, 5), LSTMCell(5, 4, forget_gate=False), GRUCell(4, 6)]
    stack = Stack([Recurrent(c) for c in cells])
    x = torch.randn(7, 2, 3)
    y = x
    for c in cells:
        y, _ = step_loop(c, y, None)
    out, states = stack(x)
    torch.testing.assert_close(out, y)
    assert len(states) == 3 and states[1].c.shape == (2, 4)


def test_stack_build_chains_sizes():
    stack = Stack.build(GRUCell, 3, 8, num_layers=3, bidirectional=True, batch_first=True)
    assert [layer.input_size for layer in stack.layers] == [3, 16, 16]
    y, _ = stack(torch.randn(2, 5, 3))
    assert y.shape == (2, 5, 16)


def test_stack_bad_arguments():
    with pytest.raises(ValueError, match="layer 1 has input_size 4, expected layer 0's output size 5"):
        Stack([Recurrent(ElmanCell(3, 5)), Recurrent(ElmanCell(4, 4))])
    with pytest.raises(ValueError, match="same batch_first"):
        Stack([Recurrent(ElmanCell(3, 5)), Recurrent(ElmanCell(5, 4), batch_first=True)])
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), got 1.5"):
        Stack([Recurrent(ElmanCell(3, 5))], dropout=1.5)
    with pytest.raises(ValueError, match="num_layers must be ≥ 1, got 0"):
        Stack.build(GRUCell, 3, 4, num_layers=0)
    with pytest.raises(TypeError, match="state must be a tuple of 2 layer states, got list of length 1"):
        Stack.build(GRUCell, 3, 4, num_layers=2)(torch.randn(4, 2, 3), [None])
    with pytest.raises(ValueError, match="merge='sum' needs equal output sizes, got 4 and 5"):
        Bidirectional(GRUCell(3, 4), GRUCell(3, 5), merge="sum")
    with pytest.raises(ValueError, match="merge must be one of 'concat', 'sum'"):
        Bidirectional(GRUCell(3, 4), merge="max")


# -- whole-stack native dispatch ------------------------------------------------------------------

NATIVE_CELLS = {
    "rnn_tanh": lambda i, h, bias: ElmanCell(i, h, bias=bias),
    "rnn_relu": lambda i, h, bias: ElmanCell(i, h, bias=bias, nonlinearity="relu"),
    "lstm": lambda i, h, bias: LSTMCell(i, h, bias=bias, forget_bias=1.0 if bias else None),
    "gru": lambda i, h, bias: GRUCell(i, h, bias=bias),
}


def run_on_layers(module, monkeypatch, *args):
    """``module(*args)`` with every layer on its own reference loop: the path whole-stack dispatch must equal."""
    with monkeypatch.context() as m:
        m.setenv("RNNKIT_ENGINE", "reference")
        out = module(*args)
    assert module.last_engine == "reference" and "" not in module.last_engines  # layer by layer, each on the loop
    return out


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("kind", list(NATIVE_CELLS))
def test_native_stack_equals_its_layers(kind, bidirectional, monkeypatch):
    """A 3-layer stack as one kernel call vs each layer on the reference loop: outputs, final
    states and all gradients, with random lengths, an initial state and batch_first."""
    torch.manual_seed(0)
    make = lambda i, h: NATIVE_CELLS[kind](i, h, bias=not bidirectional)  # noqa: E731
    stack = randomize_(
        Stack.build(make, 3, 4, num_layers=3, bidirectional=bidirectional, batch_first=True).double(), seed=1
    )
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(5, 7, 3, generator=gen, dtype=torch.float64)  # (B, T, I)
    lengths = torch.tensor([7, 2, 5, 1, 6])
    D = 2 if bidirectional else 1
    h0 = torch.randn(3, D, 5, 4, generator=gen, dtype=torch.float64)  # (L, D, B, H)
    c0 = torch.randn(3, D, 5, 4, generator=gen, dtype=torch.float64)

    def state(h0, c0=None):
        def cell_state(k, d):
            return LSTMState(h0[k, d], c0[k, d]) if kind == "lstm" else RNNState(h0[k, d])

        if bidirectional:
            return tuple(BidirectionalState(cell_state(k, 0), cell_state(k, 1)) for k in range(3))
        return tuple(cell_state(k, 0) for k in range(3))

    def native(x, *h0_c0):
        with monkeypatch.context() as m:
            m.setenv("RNNKIT_ENGINE", "native")  # with lengths on the CPU, "auto" would pick the fused engine
            out = stack(x, state(*h0_c0), lengths)
        assert stack.last_engine == "native"
        return out

    def layers(x, *h0_c0):
        return run_on_layers(stack, monkeypatch, x, state(*h0_c0), lengths)

    params = list(stack.parameters())
    inputs = [x, h0, c0] if kind == "lstm" else [x, h0]
    assert_same_computation(native, layers, inputs, params, params)


@pytest.mark.parametrize("merge", ["concat", "sum"])
def test_native_bidirectional_equals_its_two_runs(merge, monkeypatch):
    torch.manual_seed(0)
    layer = randomize_(Bidirectional(GRUCell(3, 4), GRUCell(3, 4), merge=merge).double(), seed=3)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(6, 3, 3, generator=gen, dtype=torch.float64)
    lengths = [3, 6, 1]

    def native(x):
        with monkeypatch.context() as m:
            m.setenv("RNNKIT_ENGINE", "native")  # with lengths on the CPU, "auto" would pick the fused engine
            out = layer(x, None, lengths)
        assert layer.last_engine == "native"
        return out

    params = list(layer.parameters())
    assert_same_computation(native, lambda x: run_on_layers(layer, monkeypatch, x, None, lengths), [x], params, params)


def test_native_stack_with_dropout_is_torch_nn_with_dropout():
    """In training, the one-call stack drops exactly what torch.nn.LSTM(dropout=p) drops, given the same seed."""
    theirs = randomize_(torch.nn.LSTM(3, 6, num_layers=3, dropout=0.5).double(), seed=5)
    ours = from_torch(theirs)
    x = torch.randn(8, 4, 3, dtype=torch.float64)
    for training in (True, False):
        theirs.train(training)
        ours.train(training)
        torch.manual_seed(11)
        y_theirs, (h, c) = theirs(x)
        torch.manual_seed(11)
        y_ours, states = ours(x)
        assert ours.last_engine == "native"
        torch.testing.assert_close(y_ours, y_theirs, **TOL[torch.float64])
        torch.testing.assert_close(torch.stack([s.c for s in states]), c, **TOL[torch.float64])
    ours.train(True)
    torch.manual_seed(11)
    assert not torch.allclose(ours(x)[0], ours.eval()(x)[0]), "dropout must act in training"


def test_with_lengths_on_the_cpu_native_stacks_run_fused_layer_by_layer(monkeypatch):
    """torch's CPU kernels take lengths only packed, on a slow path: each layer runs fused instead."""
    torch.manual_seed(0)
    stack = randomize_(Stack.build(GRUCell, 3, 4, num_layers=2, bidirectional=True).double(), seed=6)
    x = torch.randn(6, 3, 3, dtype=torch.float64)
    y, states = stack(x, lengths=[6, 2, 4])
    assert stack.last_engine == "fused"
    assert all(r.last_engine == "fused" for layer in stack.layers for r in (layer.forward_layer, layer.backward_layer))
    assert stack.last_engines == {f"layers.{k}.{d}_layer": "fused" for k in (0, 1) for d in ("forward", "backward")}
    monkeypatch.setenv("RNNKIT_ENGINE", "native")
    y_native, states_native = stack(x, lengths=[6, 2, 4])
    assert stack.last_engine == "native"
    torch.testing.assert_close(y, y_native, **TOL[torch.float64])
    torch.testing.assert_close(states[1].backward.h, states_native[1].backward.h, **TOL[torch.float64])
    monkeypatch.delenv("RNNKIT_ENGINE")
    stack(x)
    assert stack.last_engine == "native" and stack.last_engines == {
        "": "native"
    }  # without lengths, one call of torch's kernel
    explicit = Stack([Recurrent(LSTMCell(3, 4), engine="native"), Recurrent(LSTMCell(4, 4), engine="native")])
    explicit(torch.randn(5, 2, 3), lengths=[5, 3])
    assert explicit.last_engine == "native"  # asked for torch's kernels: lengths go packed


def test_stacks_torch_cannot_run_in_one_call_run_layer_by_layer():
    x = torch.randn(5, 2, 3)
    cases = [
        Stack([Recurrent(LSTMCell(3, 4)), Recurrent(GRUCell(4, 4))]),  # two kinds
        Stack([Recurrent(LSTMCell(3, 4)), Recurrent(LSTMCell(4, 5))]),  # two hidden sizes
        Stack([Recurrent(LSTMCell(3, 4)), Recurrent(LSTMCell(4, 4, peephole=True))]),  # a variant cell
        Stack([Recurrent(LSTMCell(3, 4)), Recurrent(LSTMCell(4, 4), reverse=True)]),  # a lone reversed layer
        Stack([Recurrent(LSTMCell(3, 4)), Recurrent(LSTMCell(4, 4), engine="reference")]),  # asked for the loop
        Stack([Bidirectional(LSTMCell(3, 4), merge="sum"), Bidirectional(LSTMCell(4, 4))]),  # sum feeds H, not 2H
        Stack([Recurrent(ElmanCell(3, 4)), Recurrent(ElmanCell(4, 4, nonlinearity="relu"))]),  # two kernels
    ]
    for stack in cases:
        stack(x)
        assert "" not in stack.last_engines and len(stack.last_engines) >= 2, stack  # each layer ran on its own
    mixed = Bidirectional(LSTMCell(3, 4), GRUCell(3, 4))
    mixed(x)
    assert mixed.last_engines == {"forward_layer": "native", "backward_layer": "native"}


def test_native_stack_checks_its_arguments(monkeypatch):
    monkeypatch.setenv("RNNKIT_ENGINE", "native")  # the whole-stack path, lengths included
    stack = Stack.build(LSTMCell, 3, 4, num_layers=2, bidirectional=True)
    x = torch.randn(5, 2, 3)
    with pytest.raises(ValueError, match="expected input_size=3"):
        stack(torch.randn(5, 2, 4))
    with pytest.raises(ValueError, match=r"Stack: every length must be in \[1, T=5\], got 9"):
        stack(x, lengths=[9, 1])
    with pytest.raises(TypeError, match="a bidirectional layer's state must be BidirectionalState"):
        stack(x, (torch.zeros(2, 4), None))
    with pytest.raises(ValueError, match=r"state\.h has shape \(3, 4\), expected \(2, 4\)"):
        stack(x, (None, BidirectionalState(LSTMState(torch.zeros(3, 4), torch.zeros(3, 4)), None)))


# -- PackedSequence in and out ---------------------------------------------------------------------

PACKED_KINDS = {
    "lstm": lambda **kw: torch.nn.LSTM(3, 5, **kw),
    "lstmp": lambda **kw: torch.nn.LSTM(3, 5, proj_size=2, **kw),
    "gru": lambda **kw: torch.nn.GRU(3, 5, **kw),
    "rnn_relu": lambda **kw: torch.nn.RNN(3, 5, nonlinearity="relu", **kw),
}


def flat_torch_state(state, bidirectional):
    """rnnkit's per-layer states → torch's stacked (L·D, B, ·) tensors, one per state field."""
    per_dir = [s for layer in state for s in (layer if bidirectional else [layer])]
    return tuple(torch.stack(field) for field in zip(*per_dir))


@pytest.mark.parametrize("enforce_sorted", [True, False], ids=["sorted", "unsorted"])
@pytest.mark.parametrize("num_layers, bidirectional", [(1, False), (1, True), (2, False), (2, True)])
@pytest.mark.parametrize("kind", list(PACKED_KINDS))
def test_packed_sequence_in_and_out_equals_torch_and_the_lengths_path(kind, num_layers, bidirectional, enforce_sorted):
    """A PackedSequence through rnnkit gives torch.nn's PackedSequence (data, batch_sizes, indices),
    its final states in the caller's batch order and every gradient, float64; for a Stack and, with
    one layer, for the Recurrent or Bidirectional layer alone; and the same numbers as the padded
    batch with lengths."""
    pack = torch.nn.utils.rnn.pack_padded_sequence
    theirs = randomize_(
        PACKED_KINDS[kind](num_layers=num_layers, bidirectional=bidirectional).double(), scale=0.4, seed=3
    )
    stack = from_torch(theirs)
    models = [stack] + ([stack.layers[0]] if num_layers == 1 else [])
    lengths = torch.tensor([6, 4, 4, 1] if enforce_sorted else [2, 6, 1, 4])
    B, T, D = 4, 6, 2 if bidirectional else 1
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(T, B, 3, generator=gen, dtype=torch.float64)
    fields = [
        torch.randn(num_layers * D, B, n, generator=gen, dtype=torch.float64)
        for n in ([2, 5] if kind == "lstmp" else [5, 5] if kind == "lstm" else [5])
    ]
    State = LSTMState if kind.startswith("lstm") else RNNState

    def theirs_run(x, *hx):
        y, h = theirs(pack(x, lengths, enforce_sorted=enforce_sorted), hx if len(hx) == 2 else hx[0])
        return y.data, h

    for ours in models:

        def ours_state(hx, ours=ours):
            cells = [State(*(f[k] for f in hx)) for k in range(num_layers * D)]  # torch's order: l0, l0_reverse, l1, …
            per_layer = [
                BidirectionalState(*cells[2 * l : 2 * l + 2]) if bidirectional else cells[l] for l in range(num_layers)
            ]
            return tuple(per_layer) if ours is stack else per_layer[0]

        def ours_run(x, *hx, ours=ours):
            packed = pack(x, lengths, enforce_sorted=enforce_sorted)
            y, state = ours(packed, ours_state(hx))
            assert torch.equal(y.batch_sizes, packed.batch_sizes)
            for a, b in ((y.sorted_indices, packed.sorted_indices), (y.unsorted_indices, packed.unsorted_indices)):
                assert (a is None and b is None) or torch.equal(a, b)
            return y.data, flat_torch_state(state if ours is stack else (state,), bidirectional)

        assert_same_computation(ours_run, theirs_run, [x, *fields], list(ours.parameters()), list(theirs.parameters()))
        y_packed, state_packed = ours(pack(x, lengths, enforce_sorted=enforce_sorted))
        y_lengths, state_lengths = ours(x, lengths=lengths)  # the same engines run: the same numbers
        padded, got_lengths = torch.nn.utils.rnn.pad_packed_sequence(y_packed, total_length=T)
        assert torch.equal(got_lengths, lengths)
        torch.testing.assert_close(padded, y_lengths, rtol=0, atol=0)
        for a, b in zip(
            flat_torch_state(state_packed if ours is stack else (state_packed,), bidirectional),
            flat_torch_state(state_lengths if ours is stack else (state_lengths,), bidirectional),
        ):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("batch_first", [False, True])
def test_packed_sequence_through_a_variant_cell_stack_equals_the_lengths_path(batch_first):
    """Cells torch has no module for (a peephole LSTM, a leaky GRU) take packed input too; a
    PackedSequence is batch-order free, so batch_first layers take it unchanged, as in torch.nn."""
    torch.manual_seed(0)
    stack = Stack(
        [
            Bidirectional(LSTMCell(3, 4, peephole=True), batch_first=batch_first),
            Recurrent(LeakyCell(GRUCell(8, 5), alpha=0.3), batch_first=batch_first),
        ]
    ).double()
    lengths = torch.tensor([3, 7, 5])
    x = torch.randn(7, 3, 3, dtype=torch.float64)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    y, state = stack(packed)
    assert isinstance(y, torch.nn.utils.rnn.PackedSequence) and y.data.shape == (15, 5)
    padded, _ = torch.nn.utils.rnn.pad_packed_sequence(y)
    y_ref, state_ref = stack(x.transpose(0, 1) if batch_first else x, lengths=lengths)
    torch.testing.assert_close(padded, y_ref.transpose(0, 1) if batch_first else y_ref, rtol=0, atol=0)
    torch.testing.assert_close(state[1].h, state_ref[1].h, rtol=0, atol=0)
    torch.testing.assert_close(state[0].backward.c, state_ref[0].backward.c, rtol=0, atol=0)


def test_packed_sequence_with_lengths_too_is_refused():
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.randn(4, 2, 3), torch.tensor([4, 2]))
    for owner, module in [
        ("Recurrent", Recurrent(GRUCell(3, 4))),
        ("Bidirectional", Bidirectional(GRUCell(3, 4))),
        ("Stack", Stack.build(GRUCell, 3, 4)),
    ]:
        with pytest.raises(
            ValueError, match=f"{owner}: x is a PackedSequence, which carries its own lengths; got lengths as well"
        ):
            module(packed, lengths=[4, 2])


def test_last_engine_on_models_says_what_ran_in_each_layer(monkeypatch):
    """A model's ``last_engine``/``last_engines`` and a stack's report the engines its layers ran
    on — not "layers" — checked against each Recurrent's own ``last_engine``."""
    from rnnkit import ManyToOne, last_engines
    from rnnkit.models import Tagger

    x, lengths = torch.randn(6, 3, 4), [6, 2, 5]
    plain = ManyToOne(Stack.build(LSTMCell, 4, 8, num_layers=2, bidirectional=True), 3)
    assert plain.last_engine is None and plain.last_engines == {}  # nothing ran yet
    plain(x)
    assert plain.last_engine == "native" and plain.last_engines == {"encoder.layer": "native"}
    plain(x, lengths)  # on the CPU, lengths run each direction of each layer fused
    expected = {f"encoder.layer.layers.{k}.{d}_layer": "fused" for k in (0, 1) for d in ("forward", "backward")}
    assert plain.last_engines == expected and plain.encoder.layer.last_engine == "fused" == plain.last_engine
    assert all(plain.get_submodule(name).last_engine == ran for name, ran in expected.items())
    mixed = Tagger(
        Stack(
            [
                Recurrent(LSTMCell(4, 8)),
                Recurrent(LSTMCell(8, 8, peephole=True)),
                Recurrent(GRUCell(8, 8), engine="reference"),
            ]
        ),
        2,
    )
    mixed(x)
    assert mixed.last_engines == {"layer.layers.0": "native", "layer.layers.1": "fused", "layer.layers.2": "reference"}
    assert mixed.last_engine == "mixed" == mixed.layer.last_engine and last_engines(mixed) == mixed.last_engines
    monkeypatch.setenv("RNNKIT_ENGINE", "reference")
    mixed(x)
    assert mixed.last_engine == "reference" and set(mixed.last_engines.values()) == {"reference"}
