"""Gradient-flow diagnostics against their definitions: |λ|^k for a linear RNN, autograd on a
hand-stepped loop, Jacobians of the composed k-step map, gates computed by hand."""

import json
import math
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.image import imread
from torch import nn

from rnnkit import ClockworkCell, ElmanCell, GRUCell, LeakyCell, LSTMCell, Recurrent, Stack
from rnnkit.cells.base import RecurrentCell
from rnnkit.cells.registry import make_cell
from rnnkit.cells.state import RNNState, map_state, state_tensors
from rnnkit.diagnose import (
    PIXELS,
    compare_cells,
    decay_time,
    diagnose_cell,
    diagnose_model,
    gradient_vs_lag,
    jacobian_products,
    matrix_spectrum,
    read_training_log,
    recurrent_layers,
    recurrent_matrices,
    saturation,
    spectrum,
    time_scales,
    verdict,
    write_report,
)
from rnnkit.diagnose.compute import capture_layer_inputs, record_nonlinearities
from rnnkit.diagnose.report import random_input
from tests.helpers import randomize_

F64 = torch.float64


def rand(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64) * scale


class LinearCell(RecurrentCell):
    """h(t) = W h(t−1) + U x(t) + b: a recurrence with no non-linearity, W given."""

    def __init__(self, W: torch.Tensor, input_size: int, seed: int = 0) -> None:
        super().__init__()
        H = W.shape[0]
        self.input_size, self.hidden_size, self.projection_size = input_size, H, H
        self.weight_ih = nn.Parameter(rand(H, input_size, seed=seed, scale=0.5))
        self.bias_ih = nn.Parameter(rand(H, seed=seed + 1, scale=0.1))
        self.weight_hh = nn.Parameter(W.clone())

    def init_state(self, batch_size, *, dtype=None, device=None):
        dtype, device = self._dtype_device(dtype, device)
        return RNNState(torch.zeros(batch_size, self.hidden_size, dtype=dtype, device=device))

    def input_projection(self, x):
        return F.linear(x, self.weight_ih, self.bias_ih)

    def recurrence(self, gi, state):
        h = gi + F.linear(state.h, self.weight_hh)
        return h, RNNState(h)


def symmetric_with_eigenvalues(lam: torch.Tensor, seed: int) -> torch.Tensor:
    """W = Q Λ Qᵀ with Q a random orthogonal matrix."""
    Q, _ = torch.linalg.qr(rand(lam.numel(), lam.numel(), seed=seed))
    return Q @ torch.diag(lam) @ Q.T


# -- the linear RNN: ‖∂h(t+k)/∂h(t)‖ = |λ_max|^k ----------------------------------------------------
@pytest.mark.parametrize("lam_max", [0.9, -0.93, 1.1])
def test_linear_rnn_jacobian_norm_is_largest_eigenvalue_to_the_k(lam_max):
    H, I, T, B = 8, 3, 60, 3
    others = lam_max * (
        torch.rand(H - 1, generator=torch.Generator().manual_seed(1), dtype=F64) * 1.4 - 0.7
    )  # |λ| ≤ 0.7 |λ_max|
    lam = torch.cat([torch.tensor([lam_max], dtype=F64), others])
    cell = LinearCell(symmetric_with_eigenvalues(lam, seed=2), I)
    x = rand(T, B, I, seed=3)
    k = torch.arange(T + 1, dtype=F64)

    jp = jacobian_products(cell, x, top=2)
    # W^k = Q Λ^k Qᵀ is symmetric, so its singular values are exactly |λ_i|^k; stated tolerance 1e-9
    torch.testing.assert_close(jp.blocks["h"], abs(lam_max) ** k, rtol=1e-9, atol=0)
    second = lam.abs().sort(descending=True).values[1]
    # a smaller singular value is accurate to rounding of the largest: |error| ≤ 1e-6 σ₂ + 1e-14 σ₁
    error = (jp.singular_values["h"][:, 1] - second**k).abs()
    assert bool((error <= 1e-6 * second**k + 1e-14 * abs(lam_max) ** k).all()), error
    if abs(lam_max) < 1:
        assert jp.blocks["h"][-1] < 0.02  # 0.93^60 = 0.013: vanishing
    else:
        assert jp.blocks["h"][-1] > 300  # 1.1^60 = 304: exploding

    # the back-propagated gradient ‖Wᵏᵀ w‖ falls or grows by |λ_max| per step once λ_max dominates
    flow = gradient_vs_lag(cell, x)
    rate, _ = decay_time(flow.grad_norm)
    assert rate == pytest.approx(abs(lam_max), rel=0.01)

    s = spectrum(cell, max_power=T)["W"]
    assert s.spectral_radius == pytest.approx(abs(lam_max), rel=1e-10)
    torch.testing.assert_close(s.power_norms, abs(lam_max) ** k, rtol=1e-9, atol=0)


# -- gradient vs lag against autograd on a hand-stepped loop ----------------------------------
def reference_gradients(cell, x, state0, loss, seed):
    """‖∂L/∂h(T−k)‖ (and ‖∂L/∂c(T−k)‖ for the LSTM) by retain_grad on a loop of cell.forward."""
    H = cell.hidden_size
    w = torch.randn(H, generator=torch.Generator().manual_seed(seed), dtype=F64)
    w = w / w.norm()  # the documented loss direction: a seeded random unit vector
    state = map_state(lambda t: t.clone().requires_grad_() if t.is_floating_point() else t, state0)
    hs, cs = [cell.output_of(state)], [getattr(state, "c", None)]
    for t in range(x.shape[0]):
        _, state = cell(x[t], state)
        h = cell.output_of(state)
        h.retain_grad()
        hs.append(h)
        if isinstance(cell, LSTMCell):
            state.c.retain_grad()
            cs.append(state.c)
    L = (hs[-1] @ w).sum() if loss == "last" else sum((h @ w).sum() for h in hs[1:])
    L.backward()
    gh = torch.stack([h.grad for h in hs[::-1]])  # (K+1, B, H)
    norms = gh.norm(dim=-1).mean(1)
    cnorms = torch.stack([c.grad.norm(dim=-1).mean(0) for c in cs[::-1]]) if isinstance(cell, LSTMCell) else None
    return norms, cnorms, gh.abs().mean(1)


@pytest.mark.parametrize("name", ["elman", "lstm", "gru", "leaky", "skip", "clockwork", "peephole"])
@pytest.mark.parametrize("loss", ["last", "every"])
def test_gradient_vs_lag_equals_autograd_on_a_hand_stepped_loop(name, loss):
    I, H, T, B = 3, 5, 7, 3
    cell = randomize_(make_cell(name, I, H), scale=0.6, seed=4).double()
    x = rand(T, B, I, seed=5)
    state0 = map_state(lambda t: rand(*t.shape, seed=6) if t.is_floating_point() else t, cell.init_state(B))
    flow = gradient_vs_lag(cell, x, state0, loss=loss, seed=7)
    norms, cnorms, units = reference_gradients(cell, x, state0, loss, seed=7)
    torch.testing.assert_close(flow.grad_norm, norms, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(flow.unit_grad, units, rtol=1e-10, atol=1e-12)
    if cnorms is None:
        assert flow.memory_grad_norm is None
    else:
        torch.testing.assert_close(flow.memory_grad_norm, cnorms, rtol=1e-10, atol=1e-12)
    assert flow.lags == list(range(T + 1))


# -- Jacobian products against the Jacobian of the composed k-step map -----------------------
@pytest.mark.parametrize("name", ["elman", "lstm", "gru", "clockwork"])
def test_jacobian_products_equal_autograd_jacobian_of_the_k_step_map(name):
    I, H, T, B = 3, 4, 6, 2
    cell = randomize_(make_cell(name, I, H), scale=0.7, seed=8).double()
    x = rand(T, B, I, seed=9)
    jp = jacobian_products(cell, x, top=3)
    first = jacobian_products(cell, x, top=3, sequences=1)  # the average over sequence 0 alone
    # the states of a plain loop of cell.forward, from zeros
    states = [cell.init_state(B)]
    for t in range(T):
        states.append(cell(x[t], states[-1])[1])
    floating = [t.is_floating_point() for t in state_tensors(states[0])]
    blocks = {"h": slice(0, H), "c": slice(H, 2 * H)} if name == "lstm" else {"h": slice(0, H)}
    for k in (1, 3, T):
        for block, cols in blocks.items():
            norms, svals = [], []
            for b in range(B):
                row = map_state(lambda t, b=b: t[b : b + 1].detach(), states[T - k])

                def k_steps(flat, row=row, b=b, k=k):  # s(T−k) of sequence b, flattened → s(T)
                    it = iter(flat.split(H))
                    s = map_state(lambda t: next(it).view(1, H) if t.is_floating_point() else t, row)
                    for t in range(T - k, T):
                        s = cell(x[t, b : b + 1], s)[1]
                    return torch.cat([t.flatten() for t, f in zip(state_tensors(s), floating) if f])

                start = torch.cat([t.flatten() for t, f in zip(state_tensors(row), floating) if f])
                J = torch.autograd.functional.jacobian(k_steps, start)[cols, cols]
                sv = torch.linalg.svdvals(J)
                norms.append(sv[0])
                svals.append(sv[:3])
            torch.testing.assert_close(jp.blocks[block][k], torch.stack(norms).mean(), rtol=1e-10, atol=1e-14)
            torch.testing.assert_close(first.blocks[block][k], norms[0], rtol=1e-10, atol=1e-14)
            torch.testing.assert_close(jp.singular_values[block][k], torch.stack(svals).mean(0), rtol=1e-10, atol=1e-14)
    assert jp.output_block == "h" and set(jp.blocks) == set(blocks)
    torch.testing.assert_close(jp.blocks["h"][0], torch.tensor(1.0, dtype=F64))


# -- the seeds' claim: an LSTM keeps the gradient alive where a tanh RNN loses it -------------
def test_fresh_lstm_keeps_the_gradient_at_lag_50_orders_of_magnitude_above_a_tanh_rnn():
    I, H, T, B = 8, 32, 60, 4
    x = torch.randn(T, B, I, generator=torch.Generator().manual_seed(100))
    torch.manual_seed(0)
    rnn = ElmanCell(I, H)
    torch.manual_seed(0)
    lstm = LSTMCell(I, H)
    f = lstm.gate_slices["f"]
    assert bool(((lstm.bias_ih[f] + lstm.bias_hh[f]) >= 1).all())  # forget bias 1 (Jozefowicz et al.)
    rnn_ratio = gradient_vs_lag(rnn, x).ratio(50)
    lstm_ratio = gradient_vs_lag(lstm, x).ratio(50)
    # measured: tanh RNN 2.2e-14, LSTM 1.5e-05 — nine orders of magnitude apart
    assert rnn_ratio < 1e-10
    assert lstm_ratio > 1e-7
    assert lstm_ratio / rnn_ratio > 1e6
    # the LSTM's cell path is what carries it: ∂c(T)/∂c(T−50) is far larger than the tanh RNN's ∂h/∂h
    jl, jr = jacobian_products(lstm, x[:51, :2]), jacobian_products(rnn, x[:51, :2])
    assert float(jl.blocks["c"][50]) > 1e6 * float(jr.blocks["h"][50])


def test_compare_cells_runs_each_cell_fresh_from_the_seed_on_one_shared_input():
    reports = compare_cells(("elman", "lstm"), input_size=3, hidden_size=5, steps=9, batch=2, seed=11)
    assert list(reports) == ["elman", "lstm"]
    x = random_input(9, 2, 3, seed=11)
    torch.manual_seed(11)
    lstm = LSTMCell(3, 5)
    torch.testing.assert_close(
        reports["lstm"].flow.grad_norm, gradient_vs_lag(lstm, x, seed=11).grad_norm, rtol=0, atol=0
    )
    assert "lstm: gradient at lag 9 is" in reports["lstm"].summary()


# -- saturation -------------------------------------------------------------------------------
def test_recorded_lstm_and_gru_preactivations_are_the_gates_computed_by_hand():
    I, H, T, B = 3, 4, 5, 2
    x = rand(T, B, I, seed=12)
    theirs = randomize_(nn.LSTMCell(I, H), seed=13).double()
    ours = LSTMCell(I, H).double()
    ours.load_state_dict(theirs.state_dict())
    rec = record_nonlinearities(ours, x)
    assert list(rec) == ["g", "i", "f", "o", "c"]
    h = c = torch.zeros(B, H, dtype=F64)
    for t in range(T):
        gates = x[t] @ theirs.weight_ih.T + theirs.bias_ih + h @ theirs.weight_hh.T + theirs.bias_hh
        i, f, g, o = gates.chunk(4, dim=1)  # torch's gate order
        h, c = theirs(x[t], (h, c))
        for name, kind, a in (
            ("i", "sigmoid", i),
            ("f", "sigmoid", f),
            ("g", "tanh", g),
            ("o", "sigmoid", o),
            ("c", "tanh", c),
        ):
            assert rec[name][0] == kind
            torch.testing.assert_close(rec[name][1][t], a, rtol=1e-12, atol=1e-12)

    theirs = randomize_(nn.GRUCell(I, H), seed=14).double()
    ours = GRUCell(I, H).double()
    ours.load_state_dict(theirs.state_dict())
    rec = record_nonlinearities(ours, x)
    assert list(rec) == ["r", "z", "n"]
    h = torch.zeros(B, H, dtype=F64)
    for t in range(T):
        gi = x[t] @ theirs.weight_ih.T + theirs.bias_ih
        gh = h @ theirs.weight_hh.T + theirs.bias_hh
        (ir, iz, i_n), (hr, hz, hn) = gi.chunk(3, 1), gh.chunk(3, 1)
        r = torch.sigmoid(ir + hr)
        for name, a in (("r", ir + hr), ("z", iz + hz), ("n", i_n + r * hn)):
            torch.testing.assert_close(rec[name][1][t], a, rtol=1e-12, atol=1e-12)
        h = theirs(x[t], h)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_saturated_share_and_mean_derivative_follow_their_definitions(nonlinearity):
    I, H, T, B = 3, 6, 20, 4
    cell = randomize_(ElmanCell(I, H, nonlinearity=nonlinearity), scale=1.5, seed=15).double()  # large weights saturate
    x = rand(T, B, I, seed=16)
    a_all, h = [], torch.zeros(B, H, dtype=F64)
    cell.requires_grad_(False)  # the hand loop only reads the weights
    for t in range(T):
        a = x[t] @ cell.weight_ih.T + cell.bias_ih + h @ cell.weight_hh.T + cell.bias_hh
        h = torch.tanh(a) if nonlinearity == "tanh" else torch.relu(a)
        a_all.append(a)
    a = torch.stack(a_all)
    stats = saturation(cell, x)["a"]
    if nonlinearity == "tanh":
        expected, deriv = (torch.tanh(a).abs() > 0.99).double().mean(), (1 - torch.tanh(a) ** 2).mean()
    else:
        expected, deriv = (a <= 0).double().mean(), (a > 0).double().mean()
    assert stats.kind == nonlinearity
    assert stats.saturated == pytest.approx(float(expected), abs=1e-12)
    assert stats.mean_derivative == pytest.approx(float(deriv), rel=1e-10)
    assert 0.2 < stats.saturated < 1  # the large weights did saturate a good share
    assert int(stats.pre_activation.counts.sum()) == a.numel() and int(stats.value.counts.sum()) == a.numel()


# -- spectra --------------------------------------------------------------------------------------
def test_gate_blocks_are_torch_weight_hh_chunks_and_their_spectra_match_numpy():
    I, H = 3, 5
    theirs = randomize_(nn.LSTMCell(I, H), seed=17)
    ours = LSTMCell(I, H)
    ours.load_state_dict(theirs.state_dict())
    blocks = recurrent_matrices(ours)
    assert list(blocks) == ["i", "f", "g", "o"]
    for W, chunk in zip(blocks.values(), theirs.weight_hh.chunk(4)):
        torch.testing.assert_close(W, chunk.detach(), rtol=0, atol=0)
    gru = randomize_(GRUCell(I, H), seed=18)
    for W, chunk in zip(recurrent_matrices(gru).values(), gru.weight_hh.chunk(3)):
        torch.testing.assert_close(W, chunk.detach(), rtol=0, atol=0)

    W = blocks["f"].double().numpy()
    s = matrix_spectrum(blocks["f"], max_power=6)
    got = np.sort_complex(s.eigenvalues.numpy())
    np.testing.assert_allclose(got, np.sort_complex(np.linalg.eigvals(W)), rtol=1e-10, atol=1e-12)
    assert s.spectral_radius == pytest.approx(np.abs(np.linalg.eigvals(W)).max(), rel=1e-10)
    for t in range(7):
        assert float(s.power_norms[t]) == pytest.approx(np.linalg.norm(np.linalg.matrix_power(W, t), 2), rel=1e-10)
    np.testing.assert_allclose(s.singular_values.numpy(), np.linalg.svd(W, compute_uv=False), rtol=1e-10)

    blocked = matrix_spectrum(recurrent_matrices(LSTMCell(I, 6, block_size=2))["i"])
    assert blocked.shape == (3, 6) and blocked.eigenvalues is None and blocked.power_norms is None


def test_clockwork_and_leaky_recurrent_matrices():
    cw = randomize_(ClockworkCell(2, 6, periods=(1, 2, 4)), seed=19)
    W = recurrent_matrices(cw)["W"]
    slower = cw.unit_period.unsqueeze(0) >= cw.unit_period.unsqueeze(1)  # row u reads column v if T(v) ≥ T(u)
    torch.testing.assert_close(W[slower], cw.weight_hh.detach()[slower], rtol=0, atol=0)
    assert bool((W[~slower] == 0).all())

    inner = randomize_(ElmanCell(2, 4), seed=20)
    alpha = torch.tensor([0.2, 0.5, 0.7, 0.9])
    leaky = LeakyCell(inner, alpha=alpha)
    eff = recurrent_matrices(leaky)["effective"]
    torch.testing.assert_close(
        eff, torch.diag(alpha) + (1 - alpha).unsqueeze(1) * inner.weight_hh.detach(), rtol=1e-6, atol=1e-7
    )


# -- time scales ------------------------------------------------------------------------------------
def test_leaky_units_gradient_decays_as_alpha_to_the_k_and_is_reported_per_group():
    I, H, T, B = 3, 8, 30, 3
    inner = randomize_(ElmanCell(I, H), seed=21)
    with torch.no_grad():
        inner.weight_hh.zero_()  # no recurrent mixing: unit u's Jacobian is exactly α_u
    alpha = torch.tensor([0.5, 0.5, 0.8, 0.8, 0.9, 0.9, 0.97, 0.97], dtype=torch.float64)
    cell = LeakyCell(inner, alpha=alpha)
    flow = gradient_vs_lag(cell, torch.randn(T, B, I, generator=torch.Generator().manual_seed(22)))
    ts = time_scales(cell, flow)
    assert ts.kind == "leaky"
    torch.testing.assert_close(ts.per_unit, 1 / (1 - alpha.float()).double(), rtol=1e-6, atol=0)
    assert len(ts.groups) == 4
    used = cell.alpha_values.double()  # α as the cell holds it (float32)
    for label, idx in ts.groups.items():
        a = float(used[idx[0]])
        assert bool((used[idx] == a).all())
        rate, time = decay_time(ts.group_grad[label])
        assert rate == pytest.approx(a, rel=1e-9)  # exactly α per step
        assert ts.group_decay_time[label] == pytest.approx(-1 / math.log(a), rel=1e-9)
        assert ts.group_scale[label] == pytest.approx(1 / (1 - a), rel=1e-6)


def test_clockwork_periods_and_slower_groups_keep_the_gradient_longer():
    cell = ClockworkCell(4, 16, periods=(1, 2, 4, 8))
    x = torch.randn(40, 4, 4, generator=torch.Generator().manual_seed(23))
    ts = time_scales(cell, gradient_vs_lag(cell, x))
    assert ts.kind == "clockwork"
    torch.testing.assert_close(ts.per_unit, cell.unit_period.double(), rtol=0, atol=0)
    assert list(ts.groups) == ["period 1", "period 2", "period 4", "period 8"]
    times = [ts.group_decay_time[g] for g in ts.groups]
    assert times == sorted(times) and times[-1] > 4 * times[0]
    assert time_scales(ElmanCell(2, 3)) is None


def test_decay_time_and_verdict_on_exact_curves():
    k = torch.arange(20, dtype=F64)
    rate, time = decay_time(3.0 * 0.8**k)
    assert rate == pytest.approx(0.8, rel=1e-12) and time == pytest.approx(-1 / math.log(0.8), rel=1e-12)
    assert decay_time(torch.ones(20, dtype=F64)) == (1.0, math.inf)
    assert math.isnan(decay_time(torch.tensor([1.0, 0.0, 0.0]))[0])
    assert [verdict(v) for v in (1e-4, 0.5, 2.0, 1e4, math.inf)] == [
        "vanishing",
        "kept",
        "kept",
        "exploding",
        "exploding",
    ]


# -- training logs ------------------------------------------------------------------------------------
def test_training_log_reads_updates_and_skips_other_records(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [
        {"kind": "train", "step": 1, "loss": 2.5, "grad_norm": 7.5, "clip": 5.0, "lr": 0.002},
        {"kind": "train", "step": 2, "loss": 2.1, "grad_norm": 3.0, "clip": 5.0, "throughput": 100},
        {"kind": "val", "step": 2, "val_bpc": 3.0},
        {"step": 3, "loss": 1.9, "grad_norm": 6.0, "clip": None},
        {"kind": "train", "step": 4, "loss": 1.8},
    ]
    path.write_text(
        "\n".join(json.dumps(r) for r in lines[:3]) + "\n\n" + "\n".join(json.dumps(r) for r in lines[3:]) + "\n"
    )
    log = read_training_log(path)
    assert log.steps == [1, 2, 3] and log.grad_norm == [7.5, 3.0, 6.0] and log.clip == [5.0, 5.0, None]
    assert log.clipped == [True, False, False]
    s = log.summary()
    assert s["clipped_share"] == pytest.approx(1 / 3) and s["grad_norm_max"] == 7.5 and s["clip"] == 5.0


def test_training_log_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="training log '.*nothere.jsonl' does not exist"):
        read_training_log(tmp_path / "nothere.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 1, "grad_norm": 1.0}\n{"step": 2, grad_norm\n')
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        read_training_log(bad)
    empty = tmp_path / "val_only.jsonl"
    empty.write_text('{"kind": "val", "step": 1, "val_bpc": 2.0}\n')
    with pytest.raises(ValueError, match="has no line with a grad_norm"):
        read_training_log(empty)


# -- plots and JSON -------------------------------------------------------------------------------------
def png_size(path):
    """(width, height) from the PNG signature and IHDR chunk."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_report_writes_valid_pngs_of_the_stated_size_and_json_of_the_numbers(tmp_path):
    reports = compare_cells(("lstm", "leaky", "clockwork"), input_size=3, hidden_size=6, steps=8, batch=2, seed=1)
    log_path = tmp_path / "metrics.jsonl"
    log_path.write_text(
        "\n".join(
            json.dumps({"step": s, "loss": 1.0, "grad_norm": 2.0 + 4 * (s % 3 == 0), "clip": 5.0}) for s in range(1, 13)
        )
    )
    log = read_training_log(log_path)
    written = write_report(reports, tmp_path / "out", log=log, settings={"steps": 8})
    names = sorted(p.name for p in written)
    expected = ["clipping.png", "diagnose.json", "gradient_vs_lag.png", "jacobian_products.png"]
    expected += [f"{kind}_{c}.png" for c in ("lstm", "leaky", "clockwork") for kind in ("spectrum", "saturation")]
    expected += ["time_scales_leaky.png", "time_scales_clockwork.png"]
    assert names == sorted(expected)
    assert PIXELS == (800, 500)
    for p in written:
        assert p.is_file() and p.parent == tmp_path / "out"
        if p.suffix == ".png":
            assert png_size(p) == PIXELS
            assert imread(p).shape[:2] == (PIXELS[1], PIXELS[0])  # matplotlib reads it back: (height, width)

    def no_constants(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    doc = json.loads((tmp_path / "out" / "diagnose.json").read_text(), parse_constant=no_constants)
    assert list(doc["cells"]) == ["lstm", "leaky", "clockwork"] and doc["settings"] == {"steps": 8}
    lstm = doc["cells"]["lstm"]
    assert lstm["gradient_vs_lag"]["grad_norm"] == pytest.approx(reports["lstm"].flow.grad_norm.tolist(), rel=1e-12)
    assert lstm["jacobian_products"]["norm"]["c"] == pytest.approx(
        reports["lstm"].jacobians.blocks["c"].tolist(), rel=1e-12
    )
    assert len(lstm["spectrum"]["f"]["eigenvalues"]) == 6 and lstm["summary"]["lag"] == 8
    assert doc["training_log"]["summary"]["clipped_share"] == pytest.approx(4 / 12)
    assert doc["summary"][0].startswith("lstm: gradient at lag 8 is ") and doc["summary"][-1].startswith(
        "training log: 12 updates"
    )
    assert sorted(doc["plots"]) == sorted(n for n in names if n.endswith(".png"))


# -- models --------------------------------------------------------------------------------------------
class TwoLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = Stack([Recurrent(ElmanCell(3, 5)), Recurrent(LSTMCell(5, 4), reverse=True)])

    def forward(self, x):
        return self.rnn(x)


def test_model_layers_are_diagnosed_on_the_inputs_they_receive():
    torch.manual_seed(24)
    model = TwoLayers()
    x = torch.randn(6, 2, 3, generator=torch.Generator().manual_seed(25))
    assert [n for n, _ in recurrent_layers(model)] == ["rnn.layers.0", "rnn.layers.1"]
    captured = capture_layer_inputs(model, lambda m: m(x))
    torch.testing.assert_close(captured["rnn.layers.0"][0], x, rtol=0, atol=0)
    below, _ = model.rnn.layers[0](x)
    torch.testing.assert_close(
        captured["rnn.layers.1"][0], below.flip(0), rtol=0, atol=0
    )  # reversed: its own step order

    reports = diagnose_model(model, lambda m: m(x), seed=3)
    assert list(reports) == ["rnn.layers.0", "rnn.layers.0 (untrained)", "rnn.layers.1", "rnn.layers.1 (untrained)"]
    lstm = model.rnn.layers[1].cell
    torch.testing.assert_close(
        reports["rnn.layers.1"].flow.grad_norm, gradient_vs_lag(lstm, below.flip(0), seed=3).grad_norm, rtol=0, atol=0
    )
    assert not torch.equal(reports["rnn.layers.1"].flow.grad_norm, reports["rnn.layers.1 (untrained)"].flow.grad_norm)
    assert model.training  # the model's mode is restored

    # a stack torch runs as one kernel call: its layers are still seen one by one
    stack = Stack.build(LSTMCell, 3, 4, num_layers=2)
    captured = capture_layer_inputs(stack, lambda m: m(x))
    below, _ = stack.layers[0](x)
    torch.testing.assert_close(captured["layers.1"][0], below, rtol=1e-6, atol=1e-6)
    assert [layer.engine for layer in stack.layers] == ["auto", "auto"]  # restored
    stack(x)
    assert stack.last_engine == "native"

    plain = diagnose_model(model, None, steps=5, batch=2, seed=3, untrained=False)
    assert list(plain) == ["rnn.layers.0", "rnn.layers.1"] and len(plain["rnn.layers.1"].flow.lags) == 6


def test_diagnostics_leave_the_cell_untouched():
    cell = randomize_(LSTMCell(3, 4), seed=26)
    before = {k: v.clone() for k, v in cell.state_dict().items()}
    with torch.no_grad():  # a caller's no_grad does not stop the diagnostics' own gradients
        report = diagnose_cell(cell, torch.randn(5, 2, 3, generator=torch.Generator().manual_seed(27)))
    assert float(report.flow.grad_norm[1]) > 0 and float(report.jacobians.blocks["c"][1]) > 0
    assert all(torch.equal(before[k], v) and v.dtype == torch.float32 for k, v in cell.state_dict().items())
    assert all(p.grad is None for p in cell.parameters())


# -- errors ----------------------------------------------------------------------------------------------
def test_errors_name_the_argument_and_what_came():
    cell = ElmanCell(3, 4)
    with pytest.raises(
        ValueError, match=r"gradient_vs_lag: x has width 2 \(shape \(5, 2, 2\)\), expected input_size=3"
    ):
        gradient_vs_lag(cell, torch.randn(5, 2, 2))
    with pytest.raises(ValueError, match=r"jacobian_products: x must have shape \(T, B, I\), got 2-D shape \(5, 3\)"):
        jacobian_products(cell, torch.randn(5, 3))
    with pytest.raises(ValueError, match="loss must be one of 'last', 'every', got 'middle'"):
        gradient_vs_lag(cell, torch.randn(5, 2, 3), loss="middle")
    with pytest.raises(TypeError, match="cell must be an rnnkit cell .* got LSTMCell"):
        gradient_vs_lag(nn.LSTMCell(3, 4), torch.randn(5, 2, 3))
    with pytest.raises(ValueError, match="unknown cell 'transformer'; choose one of: elman"):
        compare_cells(["elman", "transformer"])
    with pytest.raises(ValueError, match="compare_cells: steps must be ≥ 1, got 0"):
        compare_cells(["elman"], steps=0)
    with pytest.raises(ValueError, match="holds no rnnkit.Recurrent layer"):
        diagnose_model(nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"matrix_spectrum: W must be a 2-D tensor, got torch.Size\(\[3\]\)"):
        matrix_spectrum(torch.randn(3))
    with pytest.raises(ValueError, match=r"saturation: threshold must be a float in \(0.5, 1\), got 2"):
        saturation(cell, torch.randn(5, 2, 3), threshold=2)
