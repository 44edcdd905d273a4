"""The benchmark scripts compare like with like: the plain PyTorch models compute what rnnkit's
compute (equal logits, equal held-out scores by the same code), and the scripts run end to end
on tiny settings. No timing is asserted: the benchmarks report it."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rnnkit.tasks.charlm import evaluate_stream
from rnnkit.train import LaneStream

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

from charlm_vs_pytorch import PlainAsCharLM  # noqa: E402
from plain_charrnn import CharRNN  # noqa: E402
from seq2seq_vs_pytorch import PlainSeq2Seq, plain_nll  # noqa: E402


def test_plain_char_rnn_scored_through_the_adapter_equals_a_direct_computation():
    """The adapter carries the state across chunks and resets it where a document starts, as
    evaluate_stream asks; its bits per character equal those of running each document whole."""
    torch.manual_seed(0)
    net = CharRNN(11, embedding_size=5, hidden_size=7, num_layers=2).eval()
    docs = [torch.randint(0, 11, (n,)) for n in (37, 23, 51, 9)]
    got = evaluate_stream(PlainAsCharLM(net), LaneStream(docs, 2, 8))["bpc"]
    total, count = 0.0, 0
    with torch.no_grad():
        for d in docs:
            logits, _ = net(d[:-1].view(-1, 1))
            total += float(torch.nn.functional.cross_entropy(logits[:, 0], d[1:], reduction="sum"))
            count += len(d) - 1
    assert got == pytest.approx(total / count / torch.log(torch.tensor(2.0)).item(), rel=1e-5)


def test_plain_char_rnn_script_trains_and_saves(tmp_path):
    text = "".join(f"def f{k}(x):\n    return x * {k}\n" for k in range(300))
    (tmp_path / "train.txt").write_text(text)
    (tmp_path / "val.txt").write_text(text[:500] + "é")
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH / "plain_charrnn.py"),
            "--train",
            str(tmp_path / "train.txt"),
            "--val",
            str(tmp_path / "val.txt"),
            "--budget",
            "600",
            "--max-updates",
            "3",
            "--out",
            str(tmp_path / "m.pt"),
            "--batch-size",
            "4",
            "--seq-length",
            "20",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["updates"] == 3 and result["chars"] == 3 * 4 * 20
    # it scores its validation text when training ends, as rnnkit's run does: near log2 V untrained
    assert 0 < result["val_seconds"] and 0.5 * math.log2(25) < result["val_bpc"] < 1.5 * math.log2(25)  # 25 characters
    saved = torch.load(tmp_path / "m.pt")
    assert "é" in saved["chars"] and saved["model"]["head.weight"].shape[0] == len(saved["chars"])


def test_plain_seq2seq_copies_rnnkits_weights_and_computes_the_same_logits_loss_and_decodes():
    from rnnkit.generate import generate
    from rnnkit.tasks.seq2seq import Seq2SeqConfig, Seq2SeqTask, take, teacher_forced_nll

    torch.manual_seed(0)
    task = Seq2SeqTask(
        Seq2SeqConfig(n_train=200, n_val=20, n_test=20, hidden_size=16, embedding_size=8, attention_size=8)
    )
    task.prepare(lambda line: None)
    ours = task.build_model()
    with torch.no_grad():
        for p in ours.parameters():
            p.uniform_(-0.5, 0.5)  # away from the init, so a swapped weight would show
    cfg = task.cfg
    theirs = PlainSeq2Seq(
        len(task.source_vocab),
        len(task.target_vocab),
        cfg.embedding_size,
        cfg.hidden_size,
        cfg.attention_size,
        ours.bos,
        ours.eos,
    ).copy_from(ours)
    pairs = take(task.data.train, torch.arange(12))
    y, lengths = pairs.targets[1:], pairs.target_lengths - 1
    a = ours(pairs.sources, y, pairs.source_lengths, lengths).logits
    b = theirs(pairs.sources, pairs.source_lengths, y)
    mask = (torch.arange(a.shape[0]).unsqueeze(1) < lengths).unsqueeze(-1)
    torch.testing.assert_close(a * mask, b * mask, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(teacher_forced_nll(ours, pairs)[0], plain_nll(theirs, pairs), rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        greedy = generate(
            ours.eval(),
            max_length=12,
            method="greedy",
            end="eos",
            context=ours.encode(pairs.sources, pairs.source_lengths),
        )
        mine = theirs.greedy(pairs.sources, pairs.source_lengths, 12)
    for b_, n in enumerate(greedy.lengths.tolist()):
        assert greedy.tokens[b_, :n].tolist() == mine[b_, :n].tolist()
