import pytest
import torch

from rnnkit import Bidirectional, Recurrent
from rnnkit.cells import ClockworkCell, ElmanCell, GRUCell, LeakyCell, LSTMCell, LSTMState, RNNState, SkipCell
from rnnkit.cells.state import state_tensors
from tests.helpers import TOL, assert_same_computation, randomize_, step_loop

ALL_CELLS = {
    "elman": lambda: ElmanCell(3, 4),
    "irnn": lambda: ElmanCell(3, 4, nonlinearity="relu", init="identity"),
    "lstm": lambda: LSTMCell(3, 4),
    "lstm1997": lambda: LSTMCell(3, 4, forget_gate=False, cell_clip=4.0),
    "peephole-blocks": lambda: LSTMCell(3, 4, peephole=True, block_size=2),
    "gru": lambda: GRUCell(3, 4),
    "leaky": lambda: LeakyCell(LSTMCell(3, 4), tau=(2.0, 10.0), learn_alpha=True),
    "skip": lambda: SkipCell(GRUCell(3, 4), delay=3),
    "clockwork": lambda: ClockworkCell(3, 4, periods=[1, 3]),
}


def random_batch(steps, batch, size, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(steps, batch, size, generator=gen, dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", ["RNN_TANH", "RNN_RELU", "LSTM", "GRU"])
def test_layer_equals_torch_nn(kind, dtype):
    torch.manual_seed(0)
    if kind == "LSTM":
        ours, theirs = LSTMCell(5, 6), torch.nn.LSTM(5, 6)
    elif kind == "GRU":
        ours, theirs = GRUCell(5, 6), torch.nn.GRU(5, 6)
    else:
        nl = "tanh" if kind == "RNN_TANH" else "relu"
        ours, theirs = ElmanCell(5, 6, nonlinearity=nl), torch.nn.RNN(5, 6, nonlinearity=nl)
    randomize_(theirs, seed=1)
    theirs = theirs.to(dtype)
    ours = ours.to(dtype)
    ours.load_state_dict({k[:-3]: v for k, v in theirs.state_dict().items()})  # weight_ih_l0 -> weight_ih
    layer = Recurrent(ours)
    x = random_batch(9, 4, 5, dtype=dtype)
    h0 = random_batch(1, 4, 6, seed=2, dtype=dtype)[0]
    c0 = random_batch(1, 4, 6, seed=3, dtype=dtype)[0]
    lstm = kind == "LSTM"

    def run_ours(x, h0, c0=None):
        return layer(x, LSTMState(h0, c0) if lstm else RNNState(h0))

    def run_theirs(x, h0, c0=None):
        y, s = theirs(x, (h0[None], c0[None]) if lstm else h0[None])
        return (y, tuple(t[0] for t in s)) if lstm else (y, s[0])

    inputs = [x, h0, c0] if lstm else [x, h0]
    assert_same_computation(
        run_ours, run_theirs, inputs, list(ours.parameters()), list(theirs.parameters()), dtype=dtype
    )


@pytest.mark.parametrize("name", list(ALL_CELLS))
@pytest.mark.parametrize("reverse", [False, True])
def test_padded_batch_equals_each_sequence_alone(name, reverse):
    torch.manual_seed(0)
    cell = randomize_(ALL_CELLS[name]().double(), seed=7)
    layer = Recurrent(cell, reverse=reverse)
    lengths = [5, 9, 1, 7]  # unsorted, one of length 1
    x = random_batch(9, 4, 3, seed=4)
    x_padded = x.clone()
    for b, n in enumerate(lengths):
        x_padded[n:, b] = 1e3  # garbage in the padding must not leak into anything
    y, final = layer(x_padded, lengths=torch.tensor(lengths))
    for b, n in enumerate(lengths):
        alone = x[:n, b : b + 1]
        ref_y, ref_final = step_loop(cell, alone.flip(0) if reverse else alone, None)
        if reverse:
            ref_y = ref_y.flip(0)
        torch.testing.assert_close(y[:n, b : b + 1], ref_y, **TOL[torch.float64])
        assert (y[n:, b] == 0).all(), "outputs past a sequence's end must be zero"
        for got, want in zip(state_tensors(final), state_tensors(ref_final)):
            torch.testing.assert_close(got[b : b + 1], want, **TOL[torch.float64])


@pytest.mark.parametrize("name", list(ALL_CELLS))
def test_layer_equals_hand_stepped_loop_with_state_and_gradients(name):
    cell = randomize_(ALL_CELLS[name]().double(), seed=3)
    layer = Recurrent(cell)
    x = random_batch(8, 3, 3, seed=5)
    h0 = random_batch(1, 3, 4, seed=6)[0]

    def with_h0(h0):
        s = cell.init_state(3, dtype=torch.float64)
        if isinstance(s[0], torch.Tensor):
            return type(s)(h0, *s[1:])
        return type(s)(type(s[0])(h0, *s[0][1:]), *s[1:])  # nested (skip): set the inner h

    params = list(cell.parameters())
    assert_same_computation(
        lambda x, h0: layer(x, with_h0(h0)),
        lambda x, h0: step_loop(cell, x, with_h0(h0)),
        [x, h0],
        params,
        params,
    )


def test_lengths_equal_torch_packed_sequence():
    torch.manual_seed(0)
    theirs = randomize_(torch.nn.LSTM(3, 5).double(), seed=2)
    cell = LSTMCell(3, 5, forget_bias=None).double()
    cell.load_state_dict({k[:-3]: v for k, v in theirs.state_dict().items()})
    lengths = torch.tensor([4, 7, 2])
    x = random_batch(7, 3, 3)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    y_packed, (h, c) = theirs(packed)
    y_ref, _ = torch.nn.utils.rnn.pad_packed_sequence(y_packed, total_length=7)
    y, state = Recurrent(cell)(x, lengths=lengths)
    torch.testing.assert_close(y, y_ref, **TOL[torch.float64])
    torch.testing.assert_close(state.h, h[0], **TOL[torch.float64])
    torch.testing.assert_close(state.c, c[0], **TOL[torch.float64])


def test_batch_first_is_a_transpose():
    torch.manual_seed(0)
    cell = GRUCell(3, 4)
    x = torch.randn(6, 2, 3)
    y_tm, s_tm = Recurrent(cell)(x, lengths=[6, 3])
    y_bf, s_bf = Recurrent(cell, batch_first=True)(x.transpose(0, 1), lengths=[6, 3])
    torch.testing.assert_close(y_bf, y_tm.transpose(0, 1))
    torch.testing.assert_close(s_bf.h, s_tm.h)


def test_reverse_without_lengths_runs_the_flipped_sequence():
    torch.manual_seed(0)
    cell = ElmanCell(3, 4)
    x = torch.randn(5, 2, 3)
    y, s = Recurrent(cell, reverse=True)(x)
    y_ref, s_ref = Recurrent(cell)(x.flip(0))
    torch.testing.assert_close(y, y_ref.flip(0))
    torch.testing.assert_close(s.h, s_ref.h)


def test_layer_bad_inputs():
    layer = Recurrent(LSTMCell(3, 4))
    x = torch.randn(5, 2, 3)
    with pytest.raises(ValueError, match=r"input x must have shape \(T, B, I\), got 2-D shape \(5, 3\)"):
        layer(torch.randn(5, 3))
    with pytest.raises(ValueError, match="expected input_size=3"):
        layer(torch.randn(5, 2, 4))
    with pytest.raises(ValueError, match=r"every length must be in \[1, T=5\], got 6"):
        layer(x, lengths=[6, 2])
    with pytest.raises(ValueError, match=r"every length must be in \[1, T=5\], got 0"):
        layer(x, lengths=[0, 2])
    with pytest.raises(ValueError, match=r"lengths must have shape \(B,\) = \(2,\), got \(3,\)"):
        layer(x, lengths=[1, 2, 3])
    with pytest.raises(TypeError, match="lengths must hold integers, got dtype torch.float32"):
        layer(x, lengths=torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"state\.h has shape \(3, 4\), expected \(2, 4\)"):
        layer(x, LSTMState(torch.zeros(3, 4), torch.zeros(3, 4)))
    with pytest.raises(TypeError, match="cell must be an rnnkit cell"):
        Recurrent(torch.nn.LSTMCell(3, 4))
    with pytest.raises(ValueError, match=r"input x must have shape \(B, T, I\)"):
        Recurrent(LSTMCell(3, 4), batch_first=True)(torch.randn(2, 3))


@pytest.mark.parametrize(
    "options",
    [dict(), dict(peephole=True), dict(peephole=True, block_size=2, cell_clip=2.0)],
    ids=["plain", "peephole", "peephole-blocks-clip"],
)
@pytest.mark.parametrize("reverse", [False, True])
def test_projected_lstm_runs_fused_equal_to_the_reference_loop(options, reverse):
    """LSTMP's output h (B, P) is narrower than its cell state c (B, H): the fused engine traces
    the projection as one more product and matches the reference loop in every gradient."""
    cell = randomize_(LSTMCell(3, 6, proj_size=4, **options).double(), seed=11)
    fused, reference = (
        Recurrent(cell, reverse=reverse, engine="fused"),
        Recurrent(cell, reverse=reverse, engine="reference"),
    )
    x = random_batch(7, 3, 3, seed=12)
    h0, c0 = random_batch(1, 3, 4, seed=13)[0], random_batch(1, 3, 6, seed=14)[0]
    lengths = torch.tensor([7, 2, 5])
    params = list(cell.parameters())
    assert_same_computation(
        lambda x, h0, c0: fused(x, LSTMState(h0, c0), lengths),
        lambda x, h0, c0: reference(x, LSTMState(h0, c0), lengths),
        [x, h0, c0],
        params,
        params,
    )
    assert fused.last_engine == "fused" and fused.output_size == 4
    auto = Recurrent(cell)
    auto(x)
    assert auto.last_engine == ("native" if not options else "fused")


def test_layers_size_their_outputs_by_the_cells_output_size():
    """Recurrent and Bidirectional read a cell's output_size: P for a projected LSTM, H by default,
    and whatever a cell of another width sets."""
    assert Recurrent(LSTMCell(3, 6, proj_size=2)).output_size == 2 and Recurrent(GRUCell(3, 6)).output_size == 6
    cell = GRUCell(3, 6)
    cell.output_size = 4  # a cell may declare its width (here wrongly: only the attribute is read)
    assert Recurrent(cell).output_size == 4 and GRUCell(3, 6).output_size == 6
    assert Bidirectional(LSTMCell(3, 6, proj_size=2), LSTMCell(3, 6)).output_size == 8
