"""Vector → sequence and output-recurrent sequence → sequence against hand-stepped loops,
stepping against teacher forcing, padded batches against per-sequence runs."""

import pytest
import torch

from rnnkit import Bidirectional, Recurrent, Stack
from rnnkit.cells import ElmanCell, GRUCell, LSTMCell, SkipCell
from rnnkit.cells.state import map_state
from rnnkit.models import OutputRecurrentRNN, ResidualStack, VectorToSequence, sequence_loss
from tests.helpers import TOL, assert_same_computation, randomize_

tol = TOL[torch.float64]
V, E, C = 7, 4, 3


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def tokens(T, B, seed=0):
    return torch.randint(0, V, (T, B), generator=torch.Generator().manual_seed(seed))


def v2s(cell_input_extra, mode, make=lambda i, h: ElmanCell(i, h), seed=0, **kw):
    torch.manual_seed(seed)
    model = VectorToSequence(
        make(E + cell_input_extra, 5), C, context_mode=mode, vocab_size=V, embedding_size=E, bos=0, eos=1, **kw
    )
    return randomize_(model.double(), seed=seed)


def test_vector_to_sequence_equals_the_seeds_equation_both_ways():
    """h(t) = tanh(W h(t-1) + U e(y(t-1)) + R v + b), h(0) = tanh(W_c v + b_c), o = c + V h."""
    model = v2s(C, "both")
    cell = model.layer.cell
    U, R = cell.weight_ih[:, :E], cell.weight_ih[:, E:]
    emb, out = model.feedback.embedding.weight, model.readout.out.proj
    y = tokens(6, 2)

    def ref(v):
        h = torch.tanh(model.bridge.proj(v))
        prev = torch.zeros(2, dtype=torch.long)  # bos
        outs = []
        for t in range(6):
            h = torch.tanh(h @ cell.weight_hh.T + emb[prev] @ U.T + v @ R.T + cell.bias_ih + cell.bias_hh)
            outs.append(out.bias + h @ out.weight.T)
            prev = y[t]
        return torch.stack(outs)

    params = list(model.parameters())
    assert_same_computation(lambda v: model(y, v).logits, ref, [rand(2, C)], params, params)


CELLS = {
    "lstm": lambda i, h: LSTMCell(i, h),
    "gru": lambda i, h: GRUCell(i, h),
    "skip-elman": lambda i, h: SkipCell(ElmanCell(i, h), delay=2),
}


@pytest.mark.parametrize("mode", ["init", "input", "both"])
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_stepping_with_the_true_outputs_gives_forward(mode, cell):
    model = v2s(0 if mode == "init" else C, mode, CELLS[cell], halt=True)
    T, B = 5, 3
    y, v = tokens(T, B), rand(B, C)
    out = model(y, v)
    state = model.start(context=v)
    prev = torch.full((B,), model.bos)
    for t in range(T):
        step, state = model.step(prev, state)
        torch.testing.assert_close(step.logits, out.logits[t], **tol)
        torch.testing.assert_close(step.halt, out.halt[t], **tol)
        prev = y[t]


def test_teacher_forcing_is_one_pass_of_the_layer():
    """forward runs the whole target through one Recurrent call (its input projections one
    matrix product); only step calls the cell, once per step."""
    model = v2s(C, "both", CELLS["gru"])
    layer_calls, cell_calls = [], []
    model.layer.register_forward_hook(lambda m, i, o: layer_calls.append(i[0].shape))
    model.layer.cell.register_forward_hook(lambda m, i, o: cell_calls.append(i[0].shape))
    model(tokens(8, 2), rand(2, C))
    assert layer_calls == [torch.Size([8, 2, E + C])] and cell_calls == []
    state = model.start(context=rand(2, C))
    for _ in range(3):
        _, state = model.step(torch.zeros(2, dtype=torch.long), state)
    assert cell_calls == [torch.Size([2, E + C])] * 3


def test_vector_to_sequence_padded_batch_equals_each_sequence_alone():
    model = v2s(C, "input", CELLS["lstm"], halt=True)
    y, v, lengths = tokens(6, 3), rand(3, C), [6, 1, 4]
    y[1:, 1] = -100
    out = model(y, v, lengths)
    for b, n in enumerate(lengths):
        alone = model(y[:n, b : b + 1], v[b : b + 1])
        torch.testing.assert_close(out.logits[:n, b : b + 1], alone.logits, **tol)
        torch.testing.assert_close(out.halt[:n, b : b + 1], alone.halt, **tol)


def test_length_head_stops_generation_after_tau_steps():
    model = v2s(0, "init", max_length=6)
    y, v = tokens(4, 3), rand(3, C)
    out = model(y, v, [4, 2, 3])
    assert out.length.shape == (3, 6)
    state = model.start(context=v)
    tau = model.predict_length(state)
    torch.testing.assert_close(tau, out.length.argmax(-1) + 1)
    prev, halts = torch.zeros(3, dtype=torch.long), []
    for _ in range(6):
        step, state = model.step(prev, state)
        halts.append(step.halt)
        prev = step.logits.argmax(-1)
    first_stop = torch.stack(halts).eq(float("inf")).long().argmax(0) + 1  # (B,) step of the first +inf halt
    torch.testing.assert_close(first_stop, tau)
    assert bool((torch.stack(halts)[: int(tau.min()) - 1] == float("-inf")).all())
    # the length head is trained by the sequence loss too
    loss = sequence_loss(out, y, [4, 2, 3])
    loss.backward()
    assert model.length_head.proj.weight.grad.abs().sum() > 0


def output_recurrent(layer_factory, real=False, seed=0):
    torch.manual_seed(seed)
    I = 3
    if real:
        model = OutputRecurrentRNN(layer_factory(I + 2), I, output_size=2, halt=True)
    else:
        model = OutputRecurrentRNN(layer_factory(I + E), I, vocab_size=V, embedding_size=E, bos=0)
    return randomize_(model.double(), seed=seed)


def test_output_recurrence_equals_hand_stepped_reference():
    """h(t) = tanh(W h(t-1) + U x(t) + W_y e(y(t-1)) + b), o(t) = c + V h(t)."""
    model = output_recurrent(lambda i: ElmanCell(i, 5))
    cell, emb, out = model.layer.cell, model.feedback.embedding.weight, model.readout.out.proj
    U, Wy = cell.weight_ih[:, :3], cell.weight_ih[:, 3:]
    y = tokens(6, 2)

    def ref(x):
        h = torch.zeros(2, 5, dtype=torch.float64)
        prev, outs = torch.zeros(2, dtype=torch.long), []
        for t in range(6):
            h = torch.tanh(h @ cell.weight_hh.T + x[t] @ U.T + emb[prev] @ Wy.T + cell.bias_ih + cell.bias_hh)
            outs.append(out.bias + h @ out.weight.T)
            prev = y[t]
        return torch.stack(outs)

    params = list(model.parameters())
    assert_same_computation(lambda x: model(y, x).logits, ref, [rand(6, 2, 3)], params, params)


@pytest.mark.parametrize(
    "layer",
    [
        lambda i: Stack([Recurrent(GRUCell(i, 5)), Recurrent(LSTMCell(5, 4))]),
        lambda i: ResidualStack([GRUCell(i, 4), LSTMCell(4, 4)], "residual"),
        lambda i: ResidualStack.build(GRUCell, i, 4, num_layers=2, connections="skip"),
    ],
    ids=["stack", "residual", "skip"],
)
def test_real_valued_output_recurrence_steps_through_deep_layers(layer):
    model = output_recurrent(layer, real=True)
    T, B = 5, 2
    x, y = rand(T, B, 3), rand(T, B, 2, seed=1)
    out = model(y, x)
    state = model.start(context=x)
    prev = torch.zeros(B, 2, dtype=torch.float64)
    for t in range(T):
        step, state = model.step(prev, state)
        torch.testing.assert_close(step.logits, out.logits[t], **tol)
        torch.testing.assert_close(step.halt, out.halt[t], **tol)
        prev = y[t]


def test_output_recurrent_padded_batch_equals_each_sequence_alone():
    model = output_recurrent(lambda i: LSTMCell(i, 5, peephole=True))
    x, y, lengths = rand(5, 3, 3), tokens(5, 3), [2, 5, 3]
    out = model(y, x, lengths)
    for b, n in enumerate(lengths):
        torch.testing.assert_close(out.logits[:n, b : b + 1], model(y[:n, b : b + 1], x[:n, b : b + 1]).logits, **tol)


def test_decoding_state_reorders_like_a_beam():
    model = v2s(C, "both", CELLS["lstm"])
    v = rand(3, C)
    state = model.start(context=v)
    _, state = model.step(torch.tensor([0, 0, 0]), state)
    idx = torch.tensor([1, 1, 2])
    moved = map_state(lambda t: t.index_select(0, idx), state)
    prev = torch.tensor([3, 4, 5])
    a, _ = model.step(prev[idx], moved)
    b, _ = model.step(prev, state)
    torch.testing.assert_close(a.logits, b.logits[idx], **tol)


def test_conditioning_bad_arguments():
    with pytest.raises(ValueError, match=r"the layer must read I=0 \+ E=4 \+ C=3 = 7 inputs, got input_size 4"):
        VectorToSequence(ElmanCell(4, 5), C, context_mode="both", vocab_size=V, embedding_size=E, bos=0)
    with pytest.raises(ValueError, match="context_mode must be one of 'init', 'input', 'both', got 'add'"):
        VectorToSequence(ElmanCell(4, 5), C, context_mode="add", vocab_size=V, embedding_size=E, bos=0)
    with pytest.raises(ValueError, match="halt=True or max_length, not both"):
        VectorToSequence(ElmanCell(4, 5), C, vocab_size=V, embedding_size=E, bos=0, halt=True, max_length=5)
    with pytest.raises(ValueError, match="a decoder's layer must run forward in time"):
        VectorToSequence(Recurrent(ElmanCell(4, 5), reverse=True), C, vocab_size=V, embedding_size=E, bos=0)
    with pytest.raises(ValueError, match="a decoder's layer must run forward in time, got a Bidirectional layer"):
        OutputRecurrentRNN(
            ResidualStack([Bidirectional(GRUCell(7, 2), merge="sum")]), 3, vocab_size=V, embedding_size=E, bos=0
        )
    model = v2s(0, "init")
    with pytest.raises(ValueError, match=r"context has width 4 \(shape \(2, 4\)\), expected 3"):
        model(tokens(3, 2), rand(2, 4))
    with pytest.raises(ValueError, match="context has batch 3, expected B=2"):
        model(tokens(3, 2), rand(3, C))
    with pytest.raises(ValueError, match=r"y holds token id 7, outside the vocabulary \[0, 7\)"):
        model(torch.full((3, 2), 7), rand(2, C))
    with pytest.raises(ValueError, match=r"every length must be in \[1, T=3\], got 4"):
        model(tokens(3, 2), rand(2, C), [4, 1])
    with pytest.raises(ValueError, match="no length head"):
        model.predict_length(model.start(context=rand(2, C)))
    with pytest.raises(ValueError, match="batch_size=5 but the context has batch 2"):
        model.start(5, context=rand(2, C))
    rnn = output_recurrent(lambda i: ElmanCell(i, 5))
    with pytest.raises(ValueError, match="start needs context = x"):
        rnn.start(2)
    with pytest.raises(ValueError, match=r"x must have \(T, B\) = \(4, 2\) like y, got \(5, 2, 3\)"):
        rnn(tokens(4, 2), rand(5, 2, 3))
