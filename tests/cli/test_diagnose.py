"""``rnnkit diagnose`` end to end through the real entry point, on tiny sizes."""

import json
import re
import struct

import pytest

from rnnkit.cli import main

TINY = ["--steps", "10", "--batch", "2"]


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path.name} is not a PNG"
    return struct.unpack(">II", data[16:24])  # (width, height)


def summary(text):
    """The per-cell lines: name, lag, ratio, verdict."""
    return re.findall(r"^(.+?): gradient at lag (\d+) is (\S+) of lag 0: (vanishing|kept|exploding)", text, re.M)


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A two-layer char-LM trained for two updates: a real checkpoint folder with its metrics.jsonl."""
    root = tmp_path_factory.mktemp("charlm")
    corpus = root / "corpus"
    corpus.mkdir()
    for k in range(3):
        (corpus / f"f{k}.py").write_text(f"def add{k}(a, b):\n    return a + b * {k}\n\n" * 40)
    out = root / "run"
    argv = [
        "train",
        "--data",
        str(corpus),
        "--out",
        str(out),
        "--hidden-size",
        "6",
        "--num-layers",
        "2",
        "--seq-length",
        "10",
        "--batch-size",
        "2",
        "--max-steps",
        "2",
        "--eval-every",
        "2",
        "--holdout-every",
        "3",
        "--no-progress",
    ]
    assert main(argv) == 0
    return out, corpus


def test_default_compares_tanh_rnn_irnn_gru_and_lstm_on_one_plot(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["diagnose", "--hidden-size", "6", "--input-size", "3", *TINY, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    lines = summary(text)
    assert [(name, lag) for name, lag, _, _ in lines] == [
        ("elman", "10"),
        ("irnn", "10"),
        ("gru", "10"),
        ("lstm", "10"),
    ]
    doc = json.loads((out / "diagnose.json").read_text())
    assert list(doc["cells"]) == ["elman", "irnn", "gru", "lstm"]
    assert doc["settings"]["cells"] == ["elman", "irnn", "gru", "lstm"] and doc["settings"]["hidden_size"] == 6
    assert doc["settings"]["jacobian_batch"] == 2
    for name, _, ratio, verdict in lines:  # the printed figures are the JSON's
        numbers = doc["cells"][name]["summary"]
        assert float(ratio) == pytest.approx(numbers["ratio"], rel=0.06, abs=1e-300) and verdict == numbers["verdict"]
        assert len(doc["cells"][name]["gradient_vs_lag"]["grad_norm"]) == 11
    assert f"in {out}; start with {out / 'gradient_vs_lag.png'}" in text
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == sorted(
        ["gradient_vs_lag.png", "jacobian_products.png"]
        + [f"{k}_{c}.png" for c in ("elman", "irnn", "gru", "lstm") for k in ("spectrum", "saturation")]
    )
    assert all(png_size(out / p) == (800, 500) for p in pngs)


def test_chosen_cells_loss_at_every_step_and_a_training_log(tmp_path, capsys):
    log = tmp_path / "metrics.jsonl"
    records = [
        {"kind": "train", "step": s, "loss": 2.0, "grad_norm": g, "clip": 1.0}
        for s, g in ((1, 0.5), (2, 3.0), (3, 0.8))
    ]
    log.write_text("\n".join(json.dumps(r) for r in records + [{"kind": "val", "step": 3, "val_bpc": 2.5}]) + "\n")
    out = tmp_path / "d"
    argv = [
        "diagnose",
        "--cell",
        "leaky",
        "--cell",
        "lstm1997",
        "--hidden-size",
        "4",
        "--input-size",
        "2",
        *TINY,
        "--loss",
        "every",
        "--log",
        str(log),
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert [name for name, *_ in summary(text)] == ["leaky", "lstm1997"]
    assert "training log: 3 updates, gradient norm median 0.8, max 3; clipped at 1 on 33% of updates" in text
    assert "time constants 1.5–100" in text
    for name in ("clipping.png", "time_scales_leaky.png", "spectrum_lstm1997.png"):
        assert png_size(out / name) == (800, 500)
    doc = json.loads((out / "diagnose.json").read_text())
    assert doc["cells"]["leaky"]["gradient_vs_lag"]["loss"] == "every"
    assert doc["training_log"]["steps"] == [1, 2, 3] and doc["settings"]["log"] == str(log)


def test_a_checkpoint_is_diagnosed_layer_by_layer_beside_an_untrained_copy(run_folder, tmp_path, capsys):
    run, corpus = run_folder
    out = tmp_path / "d"
    assert main(["diagnose", str(run), "--steps", "8", "--batch", "2", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    names = [name for name, *_ in summary(text)]
    assert names == ["rnn.layers.0", "rnn.layers.0 (untrained)", "rnn.layers.1", "rnn.layers.1 (untrained)"]
    assert re.search(r"^training log: 2 updates, .*clipped at 5 on \d+% of updates$", text, re.M)  # the run's own log
    assert png_size(out / "clipping.png") == (800, 500)
    assert png_size(out / "spectrum_rnn.layers.1-untrained.png") == (800, 500)
    doc = json.loads((out / "diagnose.json").read_text())
    assert doc["settings"]["checkpoint"] == str(run) and doc["settings"]["log"] == str(run / "metrics.jsonl")
    assert "c" in doc["cells"]["rnn.layers.1"]["jacobian_products"]["norm"]  # the char-LM's default cell is the LSTM

    # on the model's own kind of text, and from a checkpoint file rather than the folder
    out2 = tmp_path / "d2"
    assert (
        main(
            [
                "diagnose",
                str(run / "latest.safetensors"),
                "--data",
                str(corpus / "f1.py"),
                "--steps",
                "6",
                "--batch",
                "2",
                "--out",
                str(out2),
            ]
        )
        == 0
    )
    assert [lag for _, lag, *_ in summary(capsys.readouterr().out)] == ["6"] * 4
    assert json.loads((out2 / "diagnose.json").read_text())["settings"]["data"] == str(corpus / "f1.py")


def test_checkpoint_data_errors_exit_2(run_folder, tmp_path, capsys):
    run, corpus = run_folder
    short = tmp_path / "short.py"
    short.write_text("def f(): pass\n")
    assert (
        main(
            ["diagnose", str(run), "--data", str(short), "--steps", "10", "--batch", "4", "--out", str(tmp_path / "d")]
        )
        == 2
    )
    assert "--data has 14 characters; --steps 10 × --batch 4 needs 40" in capsys.readouterr().err
    odd = tmp_path / "odd.py"
    odd.write_text("§" * 50)
    assert (
        main(["diagnose", str(run), "--data", str(odd), "--steps", "5", "--batch", "2", "--out", str(tmp_path / "d")])
        == 2
    )
    assert "not in the model's vocabulary" in capsys.readouterr().err
    latin1 = tmp_path / "latin1.py"
    latin1.write_bytes(b"caf\xe9 = 1\n" * 20)  # the corpora's decoding rule: strict UTF-8, the byte named
    assert (
        main(
            ["diagnose", str(run), "--data", str(latin1), "--steps", "5", "--batch", "2", "--out", str(tmp_path / "d")]
        )
        == 2
    )
    assert "is not UTF-8 text: undecodable byte 0xe9 at offset 3 (line 1)" in capsys.readouterr().err
    assert main(["diagnose", str(run), "--cell", "gru"]) == 2
    assert "--cell describe fresh cells; give them or a checkpoint, not both" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["diagnose", "--cell", "transformer"], "invalid choice: 'transformer'"),
        (["diagnose", "/no/such/run"], "no such checkpoint: '/no/such/run'"),
        (["diagnose", "--steps", "0"], "--steps must be ≥ 1, got 0"),
        (["diagnose", "--hidden-size", "-3"], "--hidden-size must be ≥ 1, got -3"),
        (["diagnose", "--batch", "two"], "invalid int value: 'two'"),
        (["diagnose", "--cell", "lstm", "--cell", "lstm"], "each --cell once, got lstm lstm"),
        (["diagnose", "--data", "text.txt"], "--data needs a checkpoint"),
        (["diagnose", "--log", "/no/such/metrics.jsonl"], "training log '/no/such/metrics.jsonl' does not exist"),
        (["diagnose", "--loss", "middle"], "invalid choice: 'middle'"),
        (["diagnose", "--jacobian-batch", "0"], "--jacobian-batch must be ≥ 1, got 0"),
    ],
)
def test_usage_errors_exit_2_with_one_line(argv, message, tmp_path, capsys):
    assert main([*argv, "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert re.search(re.escape(message), err), err
    assert not (tmp_path / "d").exists()  # nothing written


def test_a_checkpoint_of_a_task_without_text_feeds_each_layer_random_input(tmp_path, capsys):
    run = tmp_path / "adding"
    argv = [
        "train",
        "adding",
        "--hidden-size",
        "4",
        "--length",
        "20",
        "--batch-size",
        "4",
        "--max-steps",
        "2",
        "--eval-every",
        "2",
        "--heldout-size",
        "8",
        "--no-progress",
        "--out",
        str(run),
    ]
    assert main(argv) == 0
    capsys.readouterr()
    out = tmp_path / "d"
    assert main(["diagnose", str(run), "--steps", "7", "--batch", "2", "--out", str(out)]) == 0
    assert [(name, lag) for name, lag, *_ in summary(capsys.readouterr().out)] == [
        ("rnn.layers.0", "7"),
        ("rnn.layers.0 (untrained)", "7"),
    ]
    assert png_size(out / "clipping.png") == (800, 500)
    assert main(["diagnose", str(run), "--data", str(tmp_path / "any.txt"), "--out", str(tmp_path / "d2")]) == 2
    assert "--data applies to checkpoints of text tasks" in capsys.readouterr().err
