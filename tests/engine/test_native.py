"""The native path (torch's fused kernels) against the reference step loop."""

import pytest
import torch

from rnnkit import Recurrent
from rnnkit.cells import ElmanCell, GRUCell, LeakyCell, LSTMCell
from rnnkit.engine.native import native_kind
from tests.helpers import assert_same_computation, randomize_

NATIVE = {
    "rnn_tanh": lambda i, h, b: ElmanCell(i, h, bias=b),
    "rnn_relu": lambda i, h, b: ElmanCell(i, h, bias=b, nonlinearity="relu", init="identity"),
    "lstm": lambda i, h, b: LSTMCell(i, h, bias=b, forget_bias=1.0 if b else None),
    "gru": lambda i, h, b: GRUCell(i, h, bias=b),
}


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("kind", list(NATIVE))
def test_native_equals_reference_on_random_shapes_and_lengths(kind, seed):
    gen = torch.Generator().manual_seed(seed)
    T, B, I, H = (int(v) for v in torch.randint(1, 9, (4,), generator=gen))
    bias = bool(seed % 2)
    reverse = seed >= 2
    cell = randomize_(NATIVE[kind](I, H, bias).double(), scale=0.5, seed=seed)
    assert native_kind(cell) == kind
    lengths = torch.randint(1, T + 1, (B,), generator=gen) if seed != 1 else None
    x = torch.randn(T, B, I, generator=gen, dtype=torch.float64)
    h0 = torch.randn(B, H, generator=gen, dtype=torch.float64)
    c0 = torch.randn(B, H, generator=gen, dtype=torch.float64)
    native = Recurrent(cell, reverse=reverse, engine="native")
    reference = Recurrent(cell, reverse=reverse, engine="reference")
    lstm = kind == "lstm"

    def run(layer):
        return lambda x, h0, *c0: layer(x, (h0, *c0), lengths)  # state (h0, c0) or (h0,)

    params = list(cell.parameters())
    assert_same_computation(run(native), run(reference), [x, h0, c0] if lstm else [x, h0], params, params)
    assert native.last_engine == "native" and reference.last_engine == "reference"


def test_auto_picks_native_only_for_what_torch_computes(monkeypatch):
    monkeypatch.setenv("RNNKIT_ENGINE", "native")  # no fused engine: native or the reference loop
    x = torch.randn(4, 2, 3)
    for cell, expected in [
        (LSTMCell(3, 4), "native"),
        (GRUCell(3, 4), "native"),
        (ElmanCell(3, 4, init="orthogonal"), "native"),
        (LSTMCell(3, 4, peephole=True), "reference"),
        (LSTMCell(3, 4, cell_clip=3.0), "reference"),
        (LeakyCell(GRUCell(3, 4), alpha=0.5), "reference"),
    ]:
        layer = Recurrent(cell)
        layer(x)
        assert layer.last_engine == expected, cell


def test_native_refuses_other_cells():
    with pytest.raises(ValueError, match="engine='native' needs a cell torch's kernels compute"):
        Recurrent(LSTMCell(3, 4, block_size=2), engine="native")
    with pytest.raises(ValueError, match="engine must be one of 'auto', 'native', 'fused', 'reference', got 'fast'"):
        Recurrent(GRUCell(3, 4), engine="fast")


@pytest.mark.parametrize("seed", range(4))
def test_projected_lstm_native_equals_reference(seed):
    """LSTMP on torch's kernel (which reads the projection from h0's width and takes weight_hr
    last in each layer's weights) equals the reference loop, lengths and reverse included."""
    gen = torch.Generator().manual_seed(seed)
    T, B, I = (int(v) for v in torch.randint(1, 8, (3,), generator=gen))
    H, P = 6, 1 + seed  # P < H
    cell = randomize_(LSTMCell(I, H, bias=bool(seed % 2), proj_size=P).double(), scale=0.5, seed=seed)
    assert native_kind(cell) == "lstm"
    lengths = torch.randint(1, T + 1, (B,), generator=gen) if seed != 1 else None
    reverse = seed >= 2
    x = torch.randn(T, B, I, generator=gen, dtype=torch.float64)
    h0 = torch.randn(B, P, generator=gen, dtype=torch.float64)
    c0 = torch.randn(B, H, generator=gen, dtype=torch.float64)
    native = Recurrent(cell, reverse=reverse, engine="native")
    reference = Recurrent(cell, reverse=reverse, engine="reference")
    params = list(cell.parameters())
    assert_same_computation(
        lambda x, h0, c0: native(x, (h0, c0), lengths),
        lambda x, h0, c0: reference(x, (h0, c0), lengths),
        [x, h0, c0],
        params,
        params,
    )
    assert native.last_engine == "native"
