"""The rnnkit command end to end on tiny settings, through the real entry point."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rnnkit.cli import main

TINY = ["--hidden-size", "16", "--num-layers", "1", "--seq-length", "20", "--batch-size", "4", "--max-steps", "6", "--eval-every", "3"]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("def add(a, b):\n    return a + b\n\n" * 60)
    return path


def test_train_then_sample_through_the_console_entry_point(tmp_path, corpus):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "rnnkit", "train", "--data", str(corpus), "--out", str(out), "--json", *TINY]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["task"] == "charlm" and result["cell"] == "lstm" and result["steps"] == 6
    assert result["sequences_seen"] == 24
    assert result["val_bpc"] > 0 and result["baseline_bpc"] > 0
    for name in ("model.safetensors", "config.json", "metrics.jsonl"):
        assert (out / name).is_file()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6] and "val_bpc" in records[2]
    done = subprocess.run([sys.executable, "-m", "rnnkit", "sample", str(out), "--length", "50"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout) >= 50


def test_train_prints_progress_samples_and_the_command_to_sample_more(tmp_path, corpus, capsys):
    assert main(["train", "--data", str(corpus), "--out", str(tmp_path / "r"), "--cell", "gru", *TINY]) == 0
    text = capsys.readouterr().out
    assert "unigram baseline" in text and "val" in text and "sample:" in text
    assert f"rnnkit sample {tmp_path / 'r'}" in text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--cell", "transformer"], "invalid choice: 'transformer'"),
        (["train", "nosuchtask"], "invalid choice: 'nosuchtask'"),
        (["train", "--hidden-size", "-4"], "--hidden-size must be ≥ 1, got -4"),
        (["train", "--lr", "0"], "--lr must be > 0, got 0.0"),
        (["train", "--dropout", "1"], r"--dropout must be in \[0, 1\), got 1.0"),
        (["train", "--batch-size", "many"], "invalid int value: 'many'"),
        (["train", "--data", "/no/such/file.txt"], "data path '/no/such/file.txt' does not exist"),
        (["sample", "/no/such/run"], "is not a checkpoint folder"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_usage_errors_exit_2_with_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert re.search(message, err), err


def test_unreadable_data_exits_2(tmp_path, capsys):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"caf\xe9 au lait\n" * 10)
    assert main(["train", "--data", str(bad), "--out", str(tmp_path / "r"), *TINY]) == 2
    assert "not UTF-8 text: undecodable byte at offset 3" in capsys.readouterr().err
    short = tmp_path / "short.txt"
    short.write_text("tiny")
    assert main(["train", "--data", str(short), "--out", str(tmp_path / "r"), *TINY]) == 2
    assert "corpus too short" in capsys.readouterr().err


def test_bench_reports_every_requested_cell_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--cells", "lstm", "peephole", "--size", "2,5,3,4", "--repeats", "1", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "×LSTM" in text and "native" in text and "reference" in text
    rows = json.loads(out.read_text())
    assert [(r["cell"], r["engine"]) for r in rows] == [("lstm", "native"), ("peephole", "reference")]
    for r in rows:
        assert r["ms"] > 0 and r["torch_lstm_ms"] > 0 and r["naive_ms"] > 0 and r["memory_bytes"] > 0
        assert r["vs_torch_lstm"] == pytest.approx(r["ms"] / r["torch_lstm_ms"])


def test_bench_bad_size_is_a_usage_error(capsys):
    assert main(["bench", "--size", "2,5,3"]) == 2
    assert "expected B,T,I,H as four positive integers" in capsys.readouterr().err
