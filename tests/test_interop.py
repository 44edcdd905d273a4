import itertools

import pytest
import torch

import rnnkit
from rnnkit import Bidirectional, Recurrent, Stack, from_torch, to_torch
from rnnkit.cells import ElmanCell, GRUCell, LSTMCell
from tests.helpers import TOL, assert_same_computation, randomize_

KINDS = {
    "rnn_tanh": lambda **kw: torch.nn.RNN(nonlinearity="tanh", **kw),
    "rnn_relu": lambda **kw: torch.nn.RNN(nonlinearity="relu", **kw),
    "lstm": lambda **kw: torch.nn.LSTM(**kw),
    "gru": lambda **kw: torch.nn.GRU(**kw),
}
CONFIGS = [
    dict(num_layers=L, bidirectional=bi, batch_first=bf, bias=bias)
    for L, bi, bf, bias in itertools.product([1, 3], [False, True], [False, True], [True, False])
]


def torch_state(state, lstm, bidirectional):
    """rnnkit's per-layer states → torch's (L·D, B, H) h_n (and c_n)."""
    per_dir = []
    for layer_state in state:
        per_dir.extend(layer_state if bidirectional else [layer_state])
    h = torch.stack([s.h for s in per_dir])
    return (h, torch.stack([s.c for s in per_dir])) if lstm else h


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("kind", list(KINDS))
def test_from_torch_equals_torch(kind, config, dtype):
    torch.manual_seed(0)
    theirs = randomize_(KINDS[kind](input_size=4, hidden_size=5, **config), scale=0.4, seed=2).to(dtype)
    ours = from_torch(theirs)
    assert isinstance(ours, Stack) and len(ours.layers) == config["num_layers"]
    lstm = kind == "lstm"
    D = 2 if config["bidirectional"] else 1
    L = config["num_layers"]
    gen = torch.Generator().manual_seed(3)
    B, T = 3, 6
    x = torch.randn((B, T, 4) if config["batch_first"] else (T, B, 4), generator=gen, dtype=torch.float64).to(dtype)
    h0 = torch.randn(L * D, B, 5, generator=gen, dtype=torch.float64).to(dtype)
    c0 = torch.randn(L * D, B, 5, generator=gen, dtype=torch.float64).to(dtype)

    def our_state(h0, c0):
        cell_states = [
            rnnkit.cells.LSTMState(h0[k], c0[k]) if lstm else rnnkit.cells.RNNState(h0[k]) for k in range(L * D)
        ]
        if D == 2:
            return tuple(rnnkit.BidirectionalState(cell_states[2 * l], cell_states[2 * l + 1]) for l in range(L))
        return tuple(cell_states)

    def run_ours(x, h0, c0=None):
        y, s = ours(x, our_state(h0, c0))
        return y, torch_state(s, lstm, D == 2)

    def run_theirs(x, h0, c0=None):
        return theirs(x, (h0, c0) if lstm else h0)

    assert_same_computation(
        run_ours,
        run_theirs,
        [x, h0, c0] if lstm else [x, h0],
        list(ours.parameters()),
        list(theirs.parameters()),
        dtype=dtype,
    )
    back = ours.to_torch()
    assert type(back) is type(theirs)
    for (name_a, a), (name_b, b) in zip(back.named_parameters(), theirs.named_parameters()):
        assert name_a == name_b and torch.equal(a, b)
    for attr in ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "bidirectional", "dropout", "mode"):
        assert getattr(back, attr) == getattr(theirs, attr)


PROJ_CONFIGS = [
    dict(num_layers=L, bidirectional=bi, batch_first=bf, bias=bias)
    for L, bi, bf, bias in [
        (1, False, False, True),
        (2, False, True, True),
        (2, True, False, True),
        (3, True, True, False),
    ]
]


@pytest.mark.parametrize("engine", ["auto", "reference", "fused"])
@pytest.mark.parametrize("config", PROJ_CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_projected_lstm_from_torch_equals_torch_and_converts_back(config, engine):
    """LSTMP: nn.LSTM(proj_size=P) → Stack of LSTMCell(proj_size=P), equal in outputs, h_n (L·D, B, P),
    c_n (L·D, B, H) and every gradient in float64, on torch's kernel (auto: one native call) and on
    the reference loop and the fused engine; then back to an equal nn.LSTM."""
    H, P, I, B, T = 6, 3, 4, 3, 5
    theirs = randomize_(torch.nn.LSTM(input_size=I, hidden_size=H, proj_size=P, **config), scale=0.4, seed=7).double()
    ours = from_torch(theirs)
    for layer in rnnkit.compose._recurrent_layers(ours.layers):
        assert layer.cell.proj_size == P and layer.output_size == P
        layer.engine = engine
    L, D = config["num_layers"], 2 if config["bidirectional"] else 1
    assert ours.output_size == D * P
    gen = torch.Generator().manual_seed(3)
    x = torch.randn((B, T, I) if config["batch_first"] else (T, B, I), generator=gen, dtype=torch.float64)
    h0 = torch.randn(L * D, B, P, generator=gen, dtype=torch.float64)
    c0 = torch.randn(L * D, B, H, generator=gen, dtype=torch.float64)

    def run_ours(x, h0, c0):
        cells = [rnnkit.cells.LSTMState(h0[k], c0[k]) for k in range(L * D)]
        state = (
            tuple(rnnkit.BidirectionalState(*cells[2 * l : 2 * l + 2]) for l in range(L)) if D == 2 else tuple(cells)
        )
        y, s = ours(x, state)
        return y, torch_state(s, True, D == 2)

    assert_same_computation(
        run_ours, lambda x, h0, c0: theirs(x, (h0, c0)), [x, h0, c0], list(ours.parameters()), list(theirs.parameters())
    )
    assert ours.last_engine == ("native" if engine == "auto" else engine)
    if engine != "auto":
        assert {layer.last_engine for layer in rnnkit.compose._recurrent_layers(ours.layers)} == {engine}
    back = ours.to_torch()
    assert back.proj_size == P
    for (name_a, a), (name_b, b) in zip(back.named_parameters(), theirs.named_parameters(), strict=True):
        assert name_a == name_b and torch.equal(a, b)


def test_bidirectional_with_lengths_equals_torch_packed():
    theirs = randomize_(torch.nn.GRU(3, 4, num_layers=2, bidirectional=True).double(), seed=5)
    ours = from_torch(theirs)
    lengths = torch.tensor([3, 8, 5])
    x = torch.randn(8, 3, 3, dtype=torch.float64)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    y_packed, h_n = theirs(packed)
    y_ref, _ = torch.nn.utils.rnn.pad_packed_sequence(y_packed, total_length=8)
    y, state = ours(x, lengths=lengths)
    torch.testing.assert_close(y, y_ref, **TOL[torch.float64])
    torch.testing.assert_close(torch_state(state, False, True), h_n, **TOL[torch.float64])


def test_dropout_between_layers_is_kept_and_active_only_in_training():
    theirs = torch.nn.LSTM(3, 4, num_layers=2, dropout=0.5)
    ours = from_torch(theirs)
    assert ours.dropout == 0.5 and ours.to_torch().dropout == 0.5
    x = torch.randn(5, 2, 3)
    ours.eval()
    torch.testing.assert_close(ours(x)[0], ours(x)[0])
    ours.train()
    torch.manual_seed(0)
    a = ours(x)[0]
    torch.manual_seed(1)
    b = ours(x)[0]
    assert not torch.allclose(a, b)


@pytest.mark.parametrize(
    "theirs, ours_type",
    [
        (torch.nn.RNNCell(3, 4, nonlinearity="relu"), ElmanCell),
        (torch.nn.LSTMCell(3, 4), LSTMCell),
        (torch.nn.GRUCell(3, 4, bias=False), GRUCell),
    ],
)
def test_from_torch_cells(theirs, ours_type):
    ours = from_torch(theirs)
    assert type(ours) is ours_type
    x = torch.randn(2, 3)
    out, _ = ours(x)
    ref = theirs(x)
    torch.testing.assert_close(out, ref[0] if isinstance(ref, tuple) else ref)


def test_to_torch_refuses_what_torch_cannot_compute():
    with pytest.raises(ValueError, match="layer 0 is an LSTMCell with peephole=True, block_size=2"):
        Stack.build(lambda i, h: LSTMCell(i, h, peephole=True, block_size=2), 3, 4).to_torch()
    with pytest.raises(ValueError, match="layer 1 is a ClockworkCell"):
        Stack([Recurrent(ElmanCell(3, 4)), Recurrent(rnnkit.ClockworkCell(4, 4))]).to_torch()
    with pytest.raises(ValueError, match="one cell kind in every layer"):
        Stack([Recurrent(GRUCell(3, 4)), Recurrent(LSTMCell(4, 4))]).to_torch()
    with pytest.raises(ValueError, match="merges directions by 'sum'"):
        Stack([Bidirectional(GRUCell(3, 4), merge="sum")]).to_torch()
    with pytest.raises(ValueError, match="runs in reverse alone"):
        to_torch(Recurrent(GRUCell(3, 4), reverse=True))
    with pytest.raises(TypeError, match="expected torch.nn.RNN, LSTM, GRU"):
        from_torch(torch.nn.Linear(3, 4))
    with pytest.raises(ValueError, match=r"one proj_size in every layer, got \[0, 2\]"):
        Stack([Recurrent(LSTMCell(3, 4, proj_size=2)), Recurrent(LSTMCell(2, 4))]).to_torch()
    with pytest.raises(ValueError, match="layer 0 is an LSTMCell with peephole=True"):
        to_torch(Recurrent(LSTMCell(3, 4, proj_size=2, peephole=True)))


def test_single_layer_to_torch():
    layer = Recurrent(LSTMCell(3, 4))
    module = to_torch(layer)
    x = torch.randn(5, 2, 3)
    torch.testing.assert_close(module(x)[0], layer(x)[0])
