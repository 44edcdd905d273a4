"""Deep recurrent networks: deep transition, residual and skip stacks, deep output — against
hand-stepped loops; stacked layers against torch.nn."""

import pytest
import torch

from rnnkit import Recurrent, Stack
from rnnkit.cells import ClockworkCell, DeepTransitionCell, ElmanCell, GRUCell, LeakyCell, LSTMCell, SkipCell
from rnnkit.cells.registry import make_cell
from rnnkit.models import Encoder, OutputHead, ResidualStack, Tagger, deep_transition
from tests.helpers import TOL, assert_same_computation, gradcheck_cell, randomize_, step_loop

tol = TOL[torch.float64]


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_deep_transition_elman_equals_its_equation():
    """h(t) = tanh(b + W φ(W_2 φ(W_1 h(t-1) + b_1) + b_2) + U φ(W_x x(t) + b_x))."""
    cell = randomize_(
        DeepTransitionCell(ElmanCell(4, 5), 3, input_layers=(4,), transition_layers=(6, 5)).double(), seed=1
    )
    inner, (W1, W2), (Wx,) = cell.cell, cell.mlp_hh.layers, cell.mlp_in.layers

    def ref(x, h0):
        h, outs = h0, []
        for t in range(x.shape[0]):
            hh = torch.tanh(W2(torch.tanh(W1(h))))
            xx = torch.tanh(Wx(x[t]))
            h = torch.tanh(inner.bias_ih + inner.bias_hh + hh @ inner.weight_hh.T + xx @ inner.weight_ih.T)
            outs.append(h)
        return torch.stack(outs)

    params = list(cell.parameters())
    assert_same_computation(
        lambda x, h0: Recurrent(cell)(x, (h0,))[0], ref, [rand(6, 2, 3), rand(2, 5, seed=1)], params, params
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda i, h: LSTMCell(i, h, peephole=True),
        lambda i, h: SkipCell(GRUCell(i, h), delay=2),
        lambda i, h: LeakyCell(ElmanCell(i, h), alpha=0.4),
        lambda i, h: ClockworkCell(i, h, periods=(1, 2)),
    ],
    ids=["peephole-lstm", "skip-gru", "leaky", "clockwork"],
)
def test_deep_transition_around_any_cell(make):
    layer = deep_transition(make, 3, 4, input_layers=(5,), transition_layers=(4,)).double()
    randomize_(layer, seed=2)
    cell = layer.cell
    x, lengths = rand(5, 3, 3), [5, 2, 4]
    # the Recurrent pass equals stepping the cell by hand, sequence by sequence
    y, _ = layer(x, lengths=lengths)
    for b, n in enumerate(lengths):
        alone, _ = step_loop(cell, x[:n, b : b + 1], None)
        torch.testing.assert_close(y[:n, b : b + 1], alone, **tol)
    gradcheck_cell(cell, batch=2, steps=3)


def test_deep_transition_in_the_registry():
    cell = make_cell("deep-transition", 3, 4)
    y, _ = Recurrent(cell)(torch.randn(5, 2, 3))
    assert y.shape == (5, 2, 4) and len(cell.mlp_in.layers) == 1 and len(cell.mlp_hh.layers) == 1


def test_deep_output_head_is_an_mlp_then_the_linear_output():
    head = randomize_(OutputHead(4, 3, hidden=(6, 5), activation="relu").double())
    h = rand(7, 4)
    (A, B) = head.mlp.layers
    torch.testing.assert_close(head(h), head.proj(torch.relu(B(torch.relu(A(h))))), **tol)


def residual_reference(stack, x, lengths):
    """u^1 = h^1, u^l = h^l + u^{l-1}: each layer's cell stepped by hand, per sequence."""
    cells = [layer.cell for layer in stack.layers]
    rows = []
    for b, n in enumerate(lengths):
        states, ys = [None] * len(cells), []
        for t in range(n):
            u = None
            inp = x[t, b : b + 1]
            for k, cell in enumerate(cells):
                h, states[k] = cell(inp if k == 0 else u, states[k])
                u = h if u is None else h + u
            ys.append(u)
        rows.append(torch.cat(ys))
    return rows


def skip_reference(stack, x, lengths):
    """h^l reads [x; h^{l-1}]; y = [h^1; ...; h^L]."""
    cells = [layer.cell for layer in stack.layers]
    rows = []
    for b, n in enumerate(lengths):
        states, ys = [None] * len(cells), []
        for t in range(n):
            xt, hs = x[t, b : b + 1], []
            for k, cell in enumerate(cells):
                h, states[k] = cell(xt if k == 0 else torch.cat([xt, hs[-1]], -1), states[k])
                hs.append(h)
            ys.append(torch.cat(hs, -1))
        rows.append(torch.cat(ys))
    return rows


@pytest.mark.parametrize("connections", ["residual", "skip"])
def test_residual_and_skip_stacks_equal_hand_stepped_loops(connections):
    torch.manual_seed(0)
    if connections == "residual":
        stack = ResidualStack([LSTMCell(3, 4), GRUCell(4, 4), SkipCell(ElmanCell(4, 4), delay=2)], connections)
        ref = residual_reference
    else:
        stack = ResidualStack([LSTMCell(3, 4), GRUCell(7, 5), ElmanCell(8, 3)], connections)
        ref = skip_reference
    stack = randomize_(stack.double(), seed=3)
    x, lengths = rand(5, 3, 3), [5, 2, 4]
    params = list(stack.parameters())

    def ours(x):
        y, _ = stack(x, lengths=lengths)
        return [y[:n, b] for b, n in enumerate(lengths)]

    assert_same_computation(ours, lambda x: ref(stack, x, lengths), [x], params, params)
    # the summary an Encoder keeps is y at each sequence's last step
    enc = Encoder(stack)(x, lengths)
    torch.testing.assert_close(enc.summary, torch.stack([enc.outputs[n - 1, b] for b, n in enumerate(lengths)]), **tol)


def test_residual_connections_shorten_the_gradient_path():
    """Through a residual stack the output at t reads the first layer's h directly, so the
    gradient reaching layer 1 does not pass through the upper layers: with them saturated
    (huge weights, tanh' ≈ 0) it is unchanged for the residual stack and vanishes for a plain one."""
    torch.manual_seed(0)
    cells = [ElmanCell(3, 4), ElmanCell(4, 4), ElmanCell(4, 4)]
    randomize_(torch.nn.ModuleList(cells).double())
    with torch.no_grad():
        for c in cells[1:]:
            c.weight_ih.mul_(200.0)
            c.bias_ih.fill_(30.0)
    x = rand(4, 2, 3)

    def first_layer_grad(stack):
        y, _ = stack(x)
        return torch.autograd.grad(y[-1].sum(), cells[0].weight_ih)[0].norm()

    plain = first_layer_grad(Stack([Recurrent(c) for c in cells]))
    residual = first_layer_grad(ResidualStack(cells, "residual"))
    assert plain < 1e-6 * residual and residual > 0.1


def test_deep_tagger_stack_with_dropout_equals_torch_gru():
    torch.manual_seed(0)
    theirs = randomize_(torch.nn.GRU(3, 4, num_layers=3, dropout=0.3).double())
    ours = Tagger(Stack.build(GRUCell, 3, 4, num_layers=3, dropout=0.3), 2).double()
    for k, layer in enumerate(ours.layer.layers):
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(layer.cell, name).data.copy_(getattr(theirs, f"{name}_l{k}"))
    ours.eval(), theirs.eval()  # dropout off: the same function
    x = rand(6, 2, 3)
    torch.testing.assert_close(ours.layer(x)[0], theirs(x)[0], **tol)


def test_deep_bad_arguments():
    with pytest.raises(ValueError, match="residual connections need every layer to read and write the same width"):
        ResidualStack([GRUCell(3, 4), GRUCell(4, 5)])
    with pytest.raises(
        ValueError, match=r"layer 1 reads \[x; h\^0\], so its input_size must be I \+ H = 3 \+ 4, got 4"
    ):
        ResidualStack([GRUCell(3, 4), GRUCell(4, 4)], "skip")
    with pytest.raises(ValueError, match="connections must be one of 'residual', 'skip', got 'dense'"):
        ResidualStack([GRUCell(3, 4)], "dense")
    with pytest.raises(TypeError, match=r"state must be a tuple of 2 layer states, got list of length 1"):
        ResidualStack.build(GRUCell, 3, 4, 2)(torch.randn(3, 2, 3), [None])
    with pytest.raises(
        ValueError, match=r"the last transition layer must have the hidden size 4, got transition_layers=\(6,\)"
    ):
        DeepTransitionCell(GRUCell(3, 4), transition_layers=(6,))
    with pytest.raises(
        ValueError, match=r"the last input layer must have the cell's input_size 3, got input_layers=\(5,\)"
    ):
        DeepTransitionCell(GRUCell(3, 4), 2, input_layers=(5,))
    with pytest.raises(ValueError, match="input_layers need input_size"):
        DeepTransitionCell(GRUCell(3, 4), input_layers=(3,))
