"""``rnnkit export`` on tiny runs trained through the real entry point."""

import pytest
import torch

from rnnkit.cli import main
from rnnkit.tasks import load_run

TINY = [
    "--hidden-size",
    "8",
    "--num-layers",
    "2",
    "--batch-size",
    "4",
    "--max-steps",
    "2",
    "--eval-every",
    "2",
    "--no-progress",
]


@pytest.fixture
def corpus(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for k in range(3):
        (folder / f"f{k}.py").write_text(f"def add{k}(a, b):\n    return a + b * {k}\n\n" * 40)
    return folder


def test_export_a_char_lm_run_writes_a_step_program_equal_to_the_model(tmp_path, corpus, capsys):
    run = tmp_path / "run"
    assert (
        main(["train", "--data", str(corpus), "--out", str(run), "--seq-length", "10", "--val-every", "3", *TINY]) == 0
    )
    capsys.readouterr()
    assert main(["export", str(run)]) == 0
    text = capsys.readouterr().out
    assert f"wrote {run / 'model.pt2'}: the 'charlm' model (CharLM)" in text and "tokens (1, B) int64; state" in text
    assert f"torch.export.load('{run / 'model.pt2'}').module()" in text
    _, model, _ = load_run(run)
    program = torch.export.load(run / "model.pt2").module()
    tokens = torch.randint(0, model.head.out_features, (1, 5))
    state = tuple((torch.randn(5, 8), torch.randn(5, 8)) for _ in range(2))
    got, want = program(tokens, state=state), model(tokens, state)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1][1][1], want[1][1].c, rtol=1e-5, atol=1e-5)

    assert main(["export", str(run)]) == 2  # never over a file by accident
    assert "model.pt2 exists; add --overwrite" in capsys.readouterr().err
    out = tmp_path / "chunk.pt2"
    assert main(["export", str(run / "latest.safetensors"), "--steps", "6", "--out", str(out)]) == 0
    assert "tokens (6, B) int64" in capsys.readouterr().out
    lengths = torch.tensor([6, 2, 4])
    tokens = torch.randint(0, model.head.out_features, (6, 3))
    state = tuple((torch.randn(3, 8), torch.randn(3, 8)) for _ in range(2))  # the program's state is an input
    torch.testing.assert_close(
        torch.export.load(out).module()(tokens, lengths=lengths, state=state)[0],
        model(tokens, state, lengths)[0],
        rtol=1e-5,
        atol=1e-5,
    )


def test_export_a_digits_classifier_over_a_peephole_lstm(tmp_path, capsys):
    run = tmp_path / "digits"
    assert main(["train", "digits", "--cell", "peephole", "--out", str(run), *TINY]) == 0
    capsys.readouterr()
    assert main(["export", str(run)]) == 2
    assert "the 'digits' model reads whole sequences; give their length with --steps T" in capsys.readouterr().err
    assert main(["export", str(run), "--steps", "8"]) == 0
    assert "x (8, B, 8) float32; lengths (B,) int64; T = 8" in capsys.readouterr().out
    _, model, _ = load_run(run)
    x, lengths = torch.rand(8, 5, 8), torch.tensor([8, 8, 3, 8, 1])
    got = torch.export.load(run / "model.pt2").module()(x, lengths=lengths)
    torch.testing.assert_close(got, model(x, lengths), rtol=1e-5, atol=1e-5)
    assert main(["export", str(run), "--steps", "0", "--out", str(tmp_path / "x.pt2")]) == 2
    assert "--steps must be ≥ 1, got 0" in capsys.readouterr().err
