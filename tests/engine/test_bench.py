"""``rnnkit bench``'s rows: the comparisons it makes are the right ones (no times are asserted)."""

import json
import re
from pathlib import Path

import pytest
import torch

from rnnkit import Recurrent
from rnnkit.bench import (
    EXTRA_CELLS,
    SIZES,
    TARGETS,
    BenchRow,
    bench,
    bench_cells,
    random_lengths,
    target_lines,
    torch_module_of,
)
from rnnkit.cells import ElmanCell, GRUCell, LSTMCell
from rnnkit.cells.registry import CELLS
from rnnkit.cli import main
from rnnkit.custom_cell import ChoGRUCell
from tests.helpers import TOL, randomize_

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "guides" / "custom_cell.md"


@pytest.mark.parametrize(
    "cell",
    [ElmanCell(3, 4), ElmanCell(3, 4, nonlinearity="relu", init="identity"), LSTMCell(3, 4), GRUCell(3, 4, bias=False)],
    ids=["rnn_tanh", "rnn_relu", "lstm", "gru-nobias"],
)
def test_same_cell_torch_module_computes_the_cell(cell):
    """The ×same column's reference really is the same computation: torch.nn's module with the cell's weights."""
    cell = randomize_(cell.double(), seed=1)
    module = torch_module_of(cell)
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    y_ref, _ = Recurrent(cell, engine="reference")(x)
    torch.testing.assert_close(module(x)[0], y_ref, **TOL[torch.float64])


def test_cells_torch_lacks_have_no_same_cell_module():
    assert torch_module_of(LSTMCell(3, 4, peephole=True)) is None
    assert torch_module_of(ChoGRUCell(3, 4)) is None


def test_random_lengths_keep_the_padded_length():
    lengths = random_lengths(50, 7, torch.device("cpu"))
    assert lengths[0] == 7 and lengths.min() >= 1 and lengths.max() == 7


def test_bench_measures_every_registry_cell_and_the_guides_cell():
    names = list(bench_cells())
    assert names == [*CELLS, *EXTRA_CELLS]
    assert isinstance(bench_cells()["guide-cho-gru"][1](3, 4), ChoGRUCell)
    for new in ("layernorm-lstm", "layernorm-gru", "mgu", "cifg", "indrnn"):
        assert new in names


def test_the_guide_shows_and_times_the_cell_the_bench_times():
    """One source for the guide's cell: the page shows rnnkit/custom_cell.py's class and imports it."""
    text = GUIDE.read_text(encoding="utf-8")
    assert re.search(r"```\{literalinclude\} \.\./\.\./rnnkit/custom_cell\.py\n:pyobject: ChoGRUCell\n", text)
    assert "from rnnkit.custom_cell import ChoGRUCell" in text
    assert "class ChoGRUCell" not in text  # no second copy that could drift


def test_bench_rows_compare_against_the_right_references():
    rows = bench(["lstm", "gru", "peephole", "leaky", "guide-cho-gru"], [(2, 5, 3, 4)], repeats=1, log=lambda _: None)
    by_cell = {r.cell: r for r in rows}
    assert {c: r.engine for c, r in by_cell.items()} == {
        "lstm": "native",
        "gru": "native",
        "peephole": "fused",
        "leaky": "fused",
        "guide-cho-gru": "fused",
    }
    for r in rows:
        assert r.ms > 0 and r.naive_ms > 0 and r.reference_ms > 0 and r.lengths_ms > 0 and r.memory_bytes > 0
        assert r.vs_torch_lstm == pytest.approx(r.ms / r.torch_lstm_ms)
        assert r.speedup_vs_reference == pytest.approx(r.reference_ms / r.ms)
        assert r.speedup_vs_naive == pytest.approx(r.naive_ms / r.ms)
        assert r.lengths_vs_full == pytest.approx(r.lengths_ms / r.ms)
    for name in ("lstm", "gru"):
        assert by_cell[name].vs_torch_same == pytest.approx(by_cell[name].ms / by_cell[name].torch_same_ms)
    for name in ("peephole", "leaky", "guide-cho-gru"):
        assert by_cell[name].torch_same_ms is None and by_cell[name].vs_torch_same is None


def test_a_layer_on_the_reference_loop_is_its_own_reference(monkeypatch):
    monkeypatch.setenv("RNNKIT_ENGINE", "reference")
    [row] = bench(["guide-cho-gru"], [(2, 5, 3, 4)], repeats=1, log=lambda _: None)
    assert row.engine == "reference" and row.reference_ms == row.ms and row.speedup_vs_reference == 1.0


def test_bench_runs_on_the_threads_asked_for_and_restores_torchs_setting():
    before = torch.get_num_threads()
    rows = bench(["elman"], [(2, 3, 3, 4)], repeats=1, log=lambda _: None, threads=1)
    assert rows[0].threads == 1 and torch.get_num_threads() == before


def test_candidates_are_timed_round_robin_so_load_changes_hit_them_alike():
    from rnnkit.bench import _interleaved_ms

    calls = []
    runs = {name: (lambda name=name: calls.append(name)) for name in ("ours", "torch_lstm", "naive")}
    ms = _interleaved_ms(runs, {"ours": 3, "torch_lstm": 3, "naive": 1}, torch.device("cpu"))
    # each round: every candidate still due, twice in a row (an untimed call, then the timed one)
    assert calls == [
        "ours",
        "ours",
        "torch_lstm",
        "torch_lstm",
        "naive",
        "naive",
        "ours",
        "ours",
        "torch_lstm",
        "torch_lstm",
        "ours",
        "ours",
        "torch_lstm",
        "torch_lstm",
    ]
    assert set(ms) == set(runs) and all(t >= 0 for t in ms.values())


def test_bench_refuses_an_unknown_cell():
    with pytest.raises(ValueError, match=r"unknown cells \['lstmm'\]"):
        bench(["lstmm"], [(2, 3, 3, 4)], repeats=1, log=lambda _: None)


def _row(cell, size, **figures):
    B, T, I, H = size
    base = dict(
        threads=1,
        engine="fused",
        ms=1.0,
        torch_lstm_ms=1.0,
        naive_ms=1.0,
        reference_ms=1.0,
        vs_torch_lstm=1.0,
        speedup_vs_naive=1.0,
        speedup_vs_reference=1.0,
        memory_bytes=1,
        torch_lstm_memory_bytes=1,
        memory_vs_torch_lstm=1.0,
        torch_same_ms=None,
        vs_torch_same=None,
        lengths_ms=1.0,
        lengths_vs_full=1.0,
    )
    return BenchRow(cell, B, T, I, H, **{**base, **figures})


def test_targets_judge_the_rows_they_name():
    assert {(t.cell, t.column) for t in TARGETS} == {
        ("layernorm-lstm", "vs_torch_lstm"),
        ("guide-cho-gru", "speedup_vs_reference"),
    }
    small, large = SIZES[0], SIZES[-1]
    rows = [
        _row("layernorm-lstm", small, vs_torch_lstm=1.5),
        _row("layernorm-lstm", large, vs_torch_lstm=1.7),
        _row("guide-cho-gru", small, speedup_vs_reference=5.2),
        _row("guide-cho-gru", large, speedup_vs_reference=2.0),
        _row("lstm", small, vs_torch_lstm=9.0),
    ]
    lines = target_lines(rows)
    assert len(lines) == 3  # the guide's cell is judged at the smallest size only; the LSTM not at all
    assert lines[0].startswith("layernorm-lstm at (16, 100, 64, 128): vs_torch_lstm = 1.50 (target ≤ 1.6): met")
    assert lines[1].endswith("vs_torch_lstm = 1.70 (target ≤ 1.6): MISSED")
    assert lines[2] == "guide-cho-gru at (16, 100, 64, 128): speedup_vs_reference = 5.20 (target ≥ 5): met"


def test_bench_command_prints_the_engine_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert (
        main(
            [
                "bench",
                "--cells",
                "irnn",
                "clockwork",
                "guide-cho-gru",
                "--size",
                "2,4,3,4",
                "--repeats",
                "1",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "×same" in text and "ref÷" in text and "len×" in text and "native" in text and "fused" in text
    rows = json.loads(out.read_text())
    assert [(r["cell"], r["engine"], r["threads"]) for r in rows] == [
        ("irnn", "native", 1),
        ("clockwork", "fused", 1),
        ("guide-cho-gru", "fused", 1),
    ]
    assert rows[0]["vs_torch_same"] > 0 and rows[1]["vs_torch_same"] is None
    assert "targets:" not in text  # no row at a size a target names


def test_bench_threads_must_be_positive(capsys):
    assert main(["bench", "--threads", "0", "--size", "2,4,3,4"]) == 2
    assert "--threads must be ≥ 1, got 0" in capsys.readouterr().err
