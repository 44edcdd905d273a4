"""``rnnkit bench``'s rows: the comparisons it makes are the right ones (no times are asserted)."""

import json

import pytest
import torch

from rnnkit import Recurrent
from rnnkit.bench import bench, random_lengths, torch_module_of
from rnnkit.cells import ElmanCell, GRUCell, LSTMCell
from rnnkit.cli import main
from tests.helpers import TOL, randomize_


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


def test_random_lengths_keep_the_padded_length():
    lengths = random_lengths(50, 7, torch.device("cpu"))
    assert lengths[0] == 7 and lengths.min() >= 1 and lengths.max() == 7


def test_bench_rows_compare_against_the_right_references():
    rows = bench(["lstm", "gru", "peephole", "leaky"], [(2, 5, 3, 4)], repeats=1, log=lambda _: None)
    by_cell = {r.cell: r for r in rows}
    assert {c: r.engine for c, r in by_cell.items()} == {"lstm": "native", "gru": "native", "peephole": "fused", "leaky": "fused"}
    for r in rows:
        assert r.ms > 0 and r.naive_ms > 0 and r.lengths_ms > 0 and r.memory_bytes > 0
        assert r.vs_torch_lstm == pytest.approx(r.ms / r.torch_lstm_ms)
        assert r.lengths_vs_full == pytest.approx(r.lengths_ms / r.ms)
    for name in ("lstm", "gru"):
        assert by_cell[name].vs_torch_same == pytest.approx(by_cell[name].ms / by_cell[name].torch_same_ms)
    for name in ("peephole", "leaky"):
        assert by_cell[name].torch_same_ms is None and by_cell[name].vs_torch_same is None


def test_bench_command_prints_the_engine_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--cells", "irnn", "clockwork", "--size", "2,4,3,4", "--repeats", "1", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "×same" in text and "len×" in text and "native" in text and "fused" in text
    rows = json.loads(out.read_text())
    assert [(r["cell"], r["engine"]) for r in rows] == [("irnn", "native"), ("clockwork", "fused")]
    assert rows[0]["vs_torch_same"] > 0 and rows[1]["vs_torch_same"] is None


def test_bench_threads_must_be_positive(capsys):
    assert main(["bench", "--threads", "0", "--size", "2,4,3,4"]) == 2
    assert "--threads must be ≥ 1, got 0" in capsys.readouterr().err
