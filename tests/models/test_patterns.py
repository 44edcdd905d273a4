"""Tagger, Jordan network, many-to-one and encoder against hand-stepped loops, per-sequence runs and torch.nn."""

import pytest
import torch

from rnnkit import Bidirectional, Recurrent, Stack
from rnnkit.cells import ElmanCell, GRUCell, LSTMCell, SkipCell
from rnnkit.cells.state import map_state
from rnnkit.models import Encoder, JordanNetwork, ManyToOne, Tagger
from tests.helpers import TOL, assert_same_computation, randomize_

tol = TOL[torch.float64]


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def elman_step(cell, x, h):
    """The Elman equations written out: h = tanh(b + W h + U x)."""
    return torch.tanh(x @ cell.weight_ih.T + cell.bias_ih + h @ cell.weight_hh.T + cell.bias_hh)


# -- pattern 1: output at every step ------------------------------------------------------------


def test_tagger_equals_hand_stepped_elman_and_linear_output():
    model = randomize_(Tagger(ElmanCell(3, 5), 4).double(), seed=1)
    cell, V, c = model.layer.cell, model.head.proj.weight, model.head.proj.bias

    def ref(x):
        h = torch.zeros(x.shape[1], 5, dtype=torch.float64)
        outs = []
        for t in range(x.shape[0]):
            h = elman_step(cell, x[t], h)
            outs.append(c + h @ V.T)  # o(t) = c + V h(t)
        return torch.stack(outs)

    params = list(model.parameters())
    assert_same_computation(model, ref, [rand(6, 2, 3)], params, params)


def test_tagger_padded_batch_equals_each_sequence_alone():
    torch.manual_seed(0)
    model = randomize_(Tagger(Bidirectional(LSTMCell(4, 3, peephole=True)), 5, vocab_size=7, head_hidden=(6,)).double())
    x = torch.randint(0, 7, (6, 3))
    lengths = [6, 2, 4]
    x[2:, 1] = -1  # padding ids never reach the embedding
    out = model(x, lengths)
    for b, n in enumerate(lengths):
        alone = model(x[:n, b : b + 1])
        torch.testing.assert_close(out[:n, b : b + 1], alone, **tol)


def test_bidirectional_stacked_tagger_equals_torch_lstm_and_linear():
    torch.manual_seed(0)
    theirs = randomize_(torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True).double())
    head = randomize_(torch.nn.Linear(8, 5).double(), seed=2)
    stack = Stack.build(LSTMCell, 3, 4, num_layers=2, bidirectional=True)
    ours = Tagger(stack, 5).double()
    for k in range(2):
        for d, suffix in ((ours.layer.layers[k].forward_layer, ""), (ours.layer.layers[k].backward_layer, "_reverse")):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(d.cell, name).data.copy_(getattr(theirs, f"{name}_l{k}{suffix}"))
    ours.head.proj.load_state_dict(head.state_dict())
    x = rand(5, 2, 3)
    assert_same_computation(
        ours,
        lambda x: head(theirs(x)[0]),
        [x],
        list(ours.parameters()),
        list(theirs.parameters()) + list(head.parameters()),
    )


# -- pattern 2: Jordan network -------------------------------------------------------------------


def jordan_reference(model, y, x):
    """h(t) = tanh(b + W e(y(t-1)) + U x(t)), o(t) = c + V h(t), one step at a time from the true y(t-1)."""
    I = model.input_size
    U, W = model.hidden.weight[:, :I], model.hidden.weight[:, I:]
    b = model.hidden.bias
    E = model.feedback.embedding.weight
    outs, halts = [], []
    prev = torch.full((y.shape[1],), model.bos)
    for t in range(y.shape[0]):
        h = torch.tanh(b + E[prev] @ W.T + x[t] @ U.T)
        outs.append(model.readout.out.proj.bias + h @ model.readout.out.proj.weight.T)
        halts.append((h @ model.readout.halt.proj.weight.T).squeeze(-1) + model.readout.halt.proj.bias)
        prev = y[t]
    return torch.stack(outs), torch.stack(halts)


def make_jordan(**kw):
    torch.manual_seed(0)
    return randomize_(
        JordanNetwork(3, 5, vocab_size=6, embedding_size=4, bos=0, eos=1, halt=True, **kw).double(), seed=3
    )


def test_jordan_equals_hand_stepped_reference():
    model = make_jordan()
    y = torch.randint(0, 6, (7, 2), generator=torch.Generator().manual_seed(1))
    params = list(model.parameters())
    assert_same_computation(
        lambda x: tuple(model(y, x)[:2]), lambda x: jordan_reference(model, y, x), [rand(7, 2, 3)], params, params
    )


def test_jordan_teacher_forcing_is_one_batched_pass_equal_to_stepping():
    model = make_jordan()
    calls = []
    model.hidden.register_forward_hook(lambda m, i, o: calls.append(i[0].shape))
    T = 9
    y = torch.randint(0, 6, (T, 3), generator=torch.Generator().manual_seed(2))
    x = rand(T, 3, 3)
    out = model(y, x)
    # all T steps went through the hidden map in one call on a (T, B, I + E) input: no loop over time
    assert calls == [torch.Size([T, 3, 3 + 4])]
    calls.clear()
    state = model.start(context=x)
    prev = torch.full((3,), model.bos)
    for t in range(T):
        step, state = model.step(prev, state)
        torch.testing.assert_close(step.logits, out.logits[t], **tol)
        torch.testing.assert_close(step.halt, out.halt[t], **tol)
        prev = y[t]
    assert len(calls) == T  # one call per step when generating
    with pytest.raises(ValueError, match="the input sequence has 9 steps; cannot step past it"):
        model.step(prev, state)


def test_jordan_padded_batch_equals_each_sequence_alone():
    model = make_jordan()
    y, x, lengths = torch.randint(0, 6, (6, 3), generator=torch.Generator().manual_seed(4)), rand(6, 3, 3), [6, 1, 3]
    y[1:, 1] = -1
    out = model(y, x, lengths)
    for b, n in enumerate(lengths):
        alone = model(y[:n, b : b + 1], x[:n, b : b + 1])
        torch.testing.assert_close(out.logits[:n, b : b + 1], alone.logits, **tol)
        torch.testing.assert_close(out.halt[:n, b : b + 1], alone.halt, **tol)


def test_real_valued_jordan_without_inputs_feeds_back_its_outputs():
    torch.manual_seed(0)
    model = randomize_(JordanNetwork(0, 4, output_size=2).double())
    y = rand(5, 3, 2)
    out = model(y)
    W, b = model.hidden.weight, model.hidden.bias
    prev = torch.zeros(3, 2, dtype=torch.float64)  # y(0) = 0 for real outputs
    state = model.start(3)
    for t in range(5):
        h = torch.tanh(b + prev @ W.T)
        torch.testing.assert_close(out.logits[t], model.readout.out.proj(h), **tol)
        step, state = model.step(prev, state)
        torch.testing.assert_close(step.logits, out.logits[t], **tol)
        assert step.halt is None
        prev = y[t]


def test_jordan_bad_arguments():
    model = make_jordan()
    y = torch.randint(0, 6, (4, 2))
    with pytest.raises(ValueError, match="discrete outputs need bos"):
        JordanNetwork(3, 5, vocab_size=6, embedding_size=4)
    with pytest.raises(ValueError, match=r"bos must be a token id in \[0, 6\), got 6"):
        JordanNetwork(3, 5, vocab_size=6, embedding_size=4, bos=6)
    with pytest.raises(ValueError, match="give exactly one of vocab_size"):
        JordanNetwork(3, 5, vocab_size=6, output_size=2, bos=0)
    with pytest.raises(ValueError, match=r"x must have \(T, B\) = \(4, 2\) like y, got \(3, 2, 3\)"):
        model(y, rand(3, 2, 3))
    with pytest.raises(ValueError, match=r"x has width 2 \(shape \(4, 2, 2\)\), expected 3"):
        model(y, rand(4, 2, 2))
    with pytest.raises(ValueError, match=r"y holds token id 6, outside the vocabulary \[0, 6\)"):
        model(torch.full((4, 2), 6), rand(4, 2, 3))
    with pytest.raises(ValueError, match=r"every length must be in \[1, T=4\], got 5"):
        model(y, rand(4, 2, 3), lengths=[5, 1])
    with pytest.raises(ValueError, match=r"y_prev must have shape \(B,\)"):
        model.step(torch.zeros(2, 1, dtype=torch.long), model.start(context=rand(4, 2, 3)))


# -- pattern 3 and the encoder: one summary of the whole sequence -------------------------------


def test_many_to_one_reads_h_tau_of_each_sequence():
    torch.manual_seed(0)
    model = randomize_(ManyToOne(GRUCell(3, 4), 2).double())
    lengths = [5, 2, 3]
    cell, head = model.encoder.layer.cell, model.head.proj

    def ref(x):
        outs = []
        for b, n in enumerate(lengths):
            state = None
            for t in range(n):  # this sequence alone, stepped by hand
                h, state = cell(x[t, b : b + 1], state)
            outs.append(head(h))
        return torch.cat(outs)

    params = list(model.parameters())
    assert_same_computation(lambda x: model(x, lengths), ref, [rand(5, 3, 3)], params, params)


@pytest.mark.parametrize("merge", ["concat", "sum"])
def test_bidirectional_encoder_summary_is_forward_h_tau_and_backward_g_1(merge):
    torch.manual_seed(0)
    fwd, bwd = (
        randomize_(SkipCell(ElmanCell(3, 4), delay=2).double(), seed=1),
        randomize_(LSTMCell(3, 4).double(), seed=2),
    )
    enc = Encoder(Bidirectional(fwd, bwd, merge=merge), vocab_size=None)
    x, lengths = rand(6, 2, 3), [6, 3]
    out = enc(x, lengths)
    for b, n in enumerate(lengths):
        h = g = None
        for t in range(n):
            o_f, h = fwd(x[t, b : b + 1], h)
        for t in reversed(range(n)):
            o_b, g = bwd(x[t, b : b + 1], g)
        expected = torch.cat([o_f, o_b], -1) if merge == "concat" else o_f + o_b
        torch.testing.assert_close(out.summary[b : b + 1], expected, **tol)
    assert float(out.outputs[3:, 1].detach().abs().max()) == 0.0


def test_encoder_maps_any_length_to_the_same_size():
    enc = Encoder(Stack.build(GRUCell, 4, 6, num_layers=2), vocab_size=9)
    for T in (1, 3, 11):
        assert enc(torch.randint(0, 9, (T, 2))).summary.shape == (2, 6)


def test_pattern_models_say_what_they_expected():
    tagger = Tagger(ElmanCell(3, 5), 4)
    with pytest.raises(ValueError, match=r"Tagger: x must have shape \(T, B, I\), got 2-D shape \(4, 2\)"):
        tagger(torch.randn(4, 2))
    with pytest.raises(ValueError, match=r"Tagger: x has width 2 \(shape \(4, 2, 2\)\), expected 3"):
        tagger(torch.randn(4, 2, 2))
    with pytest.raises(ValueError, match=r"Tagger: every length must be in \[1, T=4\], got 7"):
        tagger(torch.randn(4, 2, 3), [7, 2])
    with pytest.raises(ValueError, match="batch_first=True"):
        Tagger(Recurrent(ElmanCell(3, 5), batch_first=True), 4)
    enc = Encoder(ElmanCell(3, 5), vocab_size=8)
    with pytest.raises(ValueError, match=r"Encoder: x holds token id 8, outside the vocabulary \[0, 8\)"):
        enc(torch.full((4, 2), 8))
    with pytest.raises(TypeError, match="Encoder: x must hold integer token ids, got dtype torch.float32"):
        enc(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="embedding_size=4 but the layer reads input_size 3"):
        ManyToOne(ElmanCell(3, 5), 2, vocab_size=8, embedding_size=4)


def test_state_reorders_with_map_state():
    """A beam search reorders a decoding state with index_select on dim 0: every leaf is a tensor."""
    model = make_jordan()
    x = rand(4, 3, 3)
    state = model.start(context=x)
    idx = torch.tensor([2, 0, 0])
    moved = map_state(lambda t: t.index_select(0, idx), state)
    prev = torch.tensor([0, 3, 5])
    a, _ = model.step(prev[idx], moved)
    b, _ = model.step(prev, state)
    torch.testing.assert_close(a.logits, b.logits[idx], **tol)


def test_a_numpy_array_is_a_type_error_that_says_how_to_convert():
    import numpy as np

    model = ManyToOne(Stack.build(GRUCell, 3, 8), 2)
    x = np.random.default_rng(0).normal(size=(5, 2, 3))
    with pytest.raises(
        TypeError,
        match=r"Encoder: x must be a tensor of shape \(T, B, I\), got ndarray; convert a NumPy "
        r"array first with torch.from_numpy\(x\) or torch.as_tensor\(x, dtype=torch.float32\)",
    ):
        model(x)
    with pytest.raises(
        TypeError,
        match=r"dtype torch.float64, expected the parameters' dtype torch.float32 \(float64 is "
        r"NumPy's default: convert with x.float\(\)",
    ):
        model(torch.from_numpy(x))
    with pytest.raises(
        TypeError, match=r"Recurrent|GRUCell: input x must be a tensor .* got ndarray; convert a NumPy array"
    ):
        Recurrent(GRUCell(3, 8))(x)
    with pytest.raises(
        TypeError,
        match=r"Tagger: x must be a tensor .* got list; convert it first with torch.as_tensor\(x\), "
        r"or pad .* rnnkit.data.pad_sequences",
    ):
        Tagger(Recurrent(GRUCell(3, 8)), 2)([x[:, 0], x[:3, 1]])
    assert model(torch.as_tensor(x, dtype=torch.float32)).shape == (2, 2)  # what the message says works


@pytest.mark.parametrize(
    "wrap",
    [
        lambda m: ManyToOne(m, 2),
        lambda m: Tagger(m, 2),
        lambda m: Encoder(m),
        lambda m: Stack([m]),
        lambda m: Recurrent(m),
    ],
    ids=["ManyToOne", "Tagger", "Encoder", "Stack", "Recurrent"],
)
@pytest.mark.parametrize("module", [torch.nn.LSTM(3, 8), torch.nn.GRUCell(3, 8)], ids=["LSTM", "GRUCell"])
def test_a_torch_module_where_a_layer_belongs_points_to_from_torch(wrap, module):
    with pytest.raises(
        TypeError,
        match=rf"got {type(module).__name__}.*convert a torch.nn.{type(module).__name__} with "
        r"rnnkit.from_torch\(module\)",
    ):
        wrap(module)


def test_what_the_hint_says_works():
    from rnnkit import from_torch

    lstm = torch.nn.LSTM(3, 8)
    model = ManyToOne(from_torch(lstm), 2)
    x = torch.randn(5, 2, 3)
    h = lstm(x)[1][0][-1]  # (B, H): torch's final hidden state
    torch.testing.assert_close(model(x), model.head(h), atol=1e-6, rtol=1e-5)
