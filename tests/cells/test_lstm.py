import itertools

import pytest
import torch

from rnnkit.cells import LSTMCell, LSTMState
from tests.helpers import assert_same_computation, check_cell_against_torch, gradcheck_cell, randomize_, step_loop

sig, tanh = torch.sigmoid, torch.tanh


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("bias", [True, False])
def test_lstm_equals_torch_lstmcell(dtype, bias):
    check_cell_against_torch(LSTMCell(5, 7, bias=bias), torch.nn.LSTMCell(5, 7, bias=bias), dtype)


def reference_step(cell: LSTMCell, x, h, c):
    """An independent, unvectorised LSTM step: one memory block at a time, written from the papers.

    Block j owns cells j·k … j·k+k−1 and one gate of each kind; its peepholes sum p ⊙ c over them.
    """
    H, k = cell.hidden_size, cell.block_size
    n = H // k
    W = cell.weight_ih
    R = cell.weight_hh
    b = (cell.bias_ih + cell.bias_hh) if cell.bias else torch.zeros(W.shape[0], dtype=x.dtype)
    pre = x @ W.T + h @ R.T + b
    gate_names = ["i", "f", "g", "o"] if cell.forget_gate else ["i", "g", "o"]
    sizes = {"i": n, "f": n, "g": H, "o": n}
    rows, start = {}, 0
    for name in gate_names:
        rows[name] = pre[:, start : start + sizes[name]]
        start += sizes[name]
    g = tanh(rows["g"])
    new_c_cols, h_cols = [], []
    for j in range(n):
        cells = slice(j * k, j * k + k)
        i_pre = rows["i"][:, j]
        if cell.peephole:
            i_pre = i_pre + (cell.weight_ci[cells] * c[:, cells]).sum(-1)
        i = sig(i_pre)[:, None]
        if cell.forget_gate:
            f_pre = rows["f"][:, j]
            if cell.peephole:
                f_pre = f_pre + (cell.weight_cf[cells] * c[:, cells]).sum(-1)
            c_new = sig(f_pre)[:, None] * c[:, cells] + i * g[:, cells]
        else:
            c_new = c[:, cells] + i * g[:, cells]  # constant error carousel
        if cell.cell_clip is not None:
            c_new = c_new.clamp(-cell.cell_clip, cell.cell_clip)
        o_pre = rows["o"][:, j]
        if cell.peephole:
            o_pre = o_pre + (cell.weight_co[cells] * c_new).sum(-1)
        h_cols.append(sig(o_pre)[:, None] * tanh(c_new))
        new_c_cols.append(c_new)
    h, c = torch.cat(h_cols, 1), torch.cat(new_c_cols, 1)
    if cell.proj_size:
        h = torch.einsum("ph,bh->bp", cell.weight_hr, h)  # LSTMP: h' = W_hr (o ⊙ tanh(c'))
    return h, (h, c)


OPTIONS = [
    dict(forget_gate=fg, peephole=ph, block_size=bs, cell_clip=cc)
    for fg, ph, bs, cc in itertools.product([True, False], [False, True], [1, 3], [None, 1.5])
] + [
    dict(proj_size=4),
    dict(proj_size=2, peephole=True, block_size=3),
    dict(proj_size=5, forget_gate=False, cell_clip=1.5),
]


def _name(opts):
    return ",".join(f"{k}={v}" for k, v in opts.items())


@pytest.mark.parametrize("opts", OPTIONS, ids=_name)
def test_every_lstm_variant_equals_the_unvectorised_reference(opts):
    cell = randomize_(LSTMCell(4, 6, **opts).double(), scale=0.7, seed=3)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(8, 3, 4, generator=gen, dtype=torch.float64) * 2
    h0 = torch.randn(3, cell.output_size, generator=gen, dtype=torch.float64)
    c0 = torch.randn(3, 6, generator=gen, dtype=torch.float64) * 2
    params = list(cell.parameters())
    assert_same_computation(
        lambda x, h, c: step_loop(cell, x, LSTMState(h, c)),
        lambda x, h, c: step_loop(lambda xt, s: reference_step(cell, xt, *s), x, (h, c)),
        [x, h0, c0],
        params,
        params,
    )


@pytest.mark.parametrize("opts", OPTIONS, ids=_name)
def test_lstm_gradcheck(opts):
    gradcheck_cell(LSTMCell(3, 6, **opts))


def test_parameter_shapes_of_blocks_and_peepholes():
    cell = LSTMCell(5, 12, block_size=4, peephole=True)
    # 3 blocks: i, f, o have 3 rows each, g has one per cell (12)
    assert cell.weight_ih.shape == (3 + 3 + 12 + 3, 5)
    assert cell.weight_hh.shape == (21, 12)
    assert cell.weight_ci.shape == cell.weight_cf.shape == cell.weight_co.shape == (12,)
    plain = LSTMCell(5, 12)
    assert sum(p.numel() for p in cell.parameters() if p.dim() == 2) < sum(
        p.numel() for p in plain.parameters() if p.dim() == 2
    )
    no_forget = LSTMCell(5, 12, forget_gate=False, peephole=True)
    assert no_forget.weight_ih.shape == (36, 5) and no_forget.weight_cf is None


def test_block_size_one_is_the_plain_lstm():
    torch.manual_seed(0)
    plain = torch.nn.LSTMCell(4, 6)
    ours = LSTMCell(4, 6, block_size=1)
    ours.load_state_dict(plain.state_dict())
    x, h, c = torch.randn(3, 4), torch.randn(3, 6), torch.randn(3, 6)
    out, state = ours(x, (h, c))
    ref_h, ref_c = plain(x, (h, c))
    torch.testing.assert_close(out, ref_h)
    torch.testing.assert_close(state.c, ref_c)


def test_forget_bias_initialisation():
    cell = LSTMCell(3, 5, forget_bias=2.0)
    f = cell.gate_slices["f"]
    torch.testing.assert_close((cell.bias_ih + cell.bias_hh)[f].detach(), torch.full((5,), 2.0))
    default = LSTMCell(3, 5)
    torch.testing.assert_close((default.bias_ih + default.bias_hh)[f].detach(), torch.ones(5))
    torch_like = LSTMCell(3, 5, forget_bias=None)
    assert (torch_like.bias_ih[f] != 0).all()
    with pytest.raises(ValueError, match="forget_bias=2.0 needs bias=True"):
        LSTMCell(3, 5, bias=False, forget_bias=2.0)
    assert LSTMCell(3, 5, bias=False).bias_ih is None


def test_original_lstm_cell_state_grows_and_clipping_bounds_it():
    torch.manual_seed(0)
    cell = LSTMCell(2, 4, forget_gate=False)
    with torch.no_grad():
        cell.bias_ih.fill_(3.0)  # input gate open and cell input positive: c integrates
    x = torch.ones(1, 2)
    state = None
    for _ in range(200):
        _, state = cell(x, state)
    assert state.c.abs().max() > 100  # the carousel integrates without bound
    clipped = LSTMCell(2, 4, forget_gate=False, cell_clip=5.0)
    clipped.load_state_dict(cell.state_dict())
    state = None
    for _ in range(200):
        _, state = clipped(x, state)
    assert state.c.abs().max() <= 5.0


def test_state_dict_round_trip_with_torch_lstmcell():
    theirs = torch.nn.LSTMCell(4, 6)
    ours = LSTMCell(4, 6)
    ours.load_state_dict(theirs.state_dict())
    back = torch.nn.LSTMCell(4, 6)
    back.load_state_dict(ours.state_dict())
    for a, b in zip(back.parameters(), theirs.parameters()):
        assert torch.equal(a, b)


def test_lstm_bad_arguments():
    with pytest.raises(ValueError, match="block_size=4 must divide hidden_size=6"):
        LSTMCell(3, 6, block_size=4)
    with pytest.raises(ValueError, match="cell_clip must be a number > 0"):
        LSTMCell(3, 6, cell_clip=-1)
    with pytest.raises(ValueError, match="hidden_size must be ≥ 1, got -2"):
        LSTMCell(3, -2)


def test_projected_lstm_parameters_state_and_structure_follow_torch():
    cell = LSTMCell(5, 8, proj_size=3)
    theirs = torch.nn.LSTM(5, 8, proj_size=3)
    shapes = {n: tuple(p.shape) for n, p in cell.named_parameters()}
    assert shapes == {n.removesuffix("_l0"): tuple(p.shape) for n, p in theirs.named_parameters()}
    assert shapes["weight_hh"] == (32, 3) and shapes["weight_hr"] == (3, 8)
    assert (cell.hidden_size, cell.output_size, cell.proj_size) == (8, 3, 3)
    h, c = cell.init_state(2)
    assert h.shape == (2, 3) and c.shape == (2, 8)
    out, state = cell(torch.randn(2, 5))
    assert out.shape == (2, 3) and state.h is out and state.c.shape == (2, 8)
    assert cell.structure.torch_kernel == "lstm" and cell.structure.kernel_extras == ()
    peep = LSTMCell(5, 8, proj_size=3, peephole=True).structure
    assert peep.torch_kernel is None and peep.kernel_extras == ("peephole=True",)
    assert "proj_size=3" in repr(cell) and LSTMCell(5, 8).output_size == 8


def test_projected_lstm_bad_arguments():
    with pytest.raises(ValueError, match=r"proj_size must be < hidden_size=6 \(as in torch.nn.LSTM\), got 6"):
        LSTMCell(3, 6, proj_size=6)
    with pytest.raises(ValueError, match="proj_size must be ≥ 0, got -1"):
        LSTMCell(3, 6, proj_size=-1)
    with pytest.raises(TypeError, match="proj_size must be an int"):
        LSTMCell(3, 6, proj_size=2.0)
    with pytest.raises(ValueError, match=r"state.h has shape \(2, 6\), expected \(2, 2\)"):
        LSTMCell(3, 6, proj_size=2)(torch.randn(2, 3), (torch.randn(2, 6), torch.randn(2, 6)))
