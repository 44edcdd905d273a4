"""Training in several processes (torch.distributed, gloo on the CPU): the shards of every global
batch put back together are the batch, and N processes follow one process's loss curve on the same
global batches — through the Trainer (spawned processes) and through ``rnnkit train --nproc 2``
(the real torchrun launcher), resume included; only rank 0 writes; a NaN stops every process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rnnkit.checkpoint import load_checkpoint
from rnnkit.cli import main
from rnnkit.models.losses import sequence_nll
from rnnkit.tasks.batching import Minibatches
from rnnkit.tasks.charlm import CharLM, CharLMConfig, TBPTTStep
from rnnkit.train import Callback, LaneStream, StepResult, TrainConfig, Trainer, TrainingDiverged, distributed
from rnnkit.train.logs import read_log
from rnnkit.train.tbptt import merge_carried

from ..decoders import TinyDecoder

ROOT = Path(__file__).resolve().parents[2]


# -- sharding, in one process ------------------------------------------------------------------------
@pytest.mark.parametrize("n, batch_size, replicas", [(19, 8, 4), (21, 8, 2), (16, 4, 4)])
def test_minibatch_shards_put_together_are_the_global_batch(n, batch_size, replicas):
    whole = Minibatches(n, batch_size, seed=3, take=lambda idx, i: (idx, i))
    shards = [whole.shard(replicas, r) for r in range(replicas)]
    empties = 0
    for epoch in (0, 1):
        for source in (whole, *shards):
            source.set_epoch(epoch)
        for g, parts in zip(whole, zip(*shards), strict=True):
            idx, number = g
            kept = [p for p in parts if p is not None]
            empties += len(parts) - len(kept)
            assert all(p[1] == number for p in kept)  # the update count travels unchanged
            assert torch.equal(torch.cat([p[0] for p in kept]), idx)  # consecutive shares, in rank order
            sizes = [0 if p is None else len(p[0]) for p in parts]
            assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
            if len(idx) == batch_size:
                assert sizes == [batch_size // replicas] * replicas
    assert empties == (2 * replicas - 2 * (n % batch_size) if 0 < n % batch_size < replicas else 0)
    assert len(shards[0]) == len(whole)


def test_sharding_refuses_a_global_batch_the_processes_cannot_share():
    with pytest.raises(
        ValueError,
        match=r"Minibatches.shard: the global batch_size 6 is not divisible by the 4 processes.*multiple of 4",
    ):
        Minibatches(10, 6, 0, lambda idx, i: idx).shard(4, 0)
    docs = [torch.arange(20) % 7]
    with pytest.raises(ValueError, match=r"LaneStream: the global batch_size 5 is not divisible by the 2 processes"):
        LaneStream(docs, 5, 4, num_replicas=2, rank=0)
    with pytest.raises(ValueError, match=r"LaneStream.shard: rank must be an int in \[0, 1\], got 2"):
        LaneStream(docs, 4, 4).shard(2, 2)
    with pytest.raises(ValueError, match=r"Minibatches: num_replicas must be an int ≥ 1, got 0"):
        Minibatches(10, 4, 0, lambda idx, i: idx, num_replicas=0)


def documents(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 9, (n,), generator=g) for n in sizes]


def test_lane_shards_put_together_are_the_global_chunks():
    docs = documents([31, 12, 47, 9, 25, 18, 40, 6])  # 8 documents over 4 lanes of unequal length
    whole = LaneStream(docs, 4, 5)
    shards = [whole.shard(2, r) for r in range(2)]
    nones = 0
    for chunk, parts in zip(whole, zip(*shards), strict=True):
        kept = [p for p in parts if p is not None]
        nones += len(parts) - len(kept)
        assert all(set(p.lanes.tolist()) <= {0, 1} for p in kept if p is parts[0])  # rank 0 owns lanes 0, 1
        assert all(set(p.lanes.tolist()) <= {2, 3} for p in kept if p is parts[1])
        assert torch.equal(torch.cat([p.lanes for p in kept]), chunk.lanes)
        assert torch.equal(torch.cat([p.lengths for p in kept]), chunk.lengths)
        assert torch.equal(torch.cat([p.reset for p in kept]), chunk.reset)
        cols = [(p.inputs[:, b], p.targets[:, b], int(p.lengths[b])) for p in kept for b in range(len(p.lanes))]
        for b, (x, y, n) in enumerate(cols):
            assert torch.equal(x[:n], chunk.inputs[:n, b]) and torch.equal(y[:n], chunk.targets[:n, b])
    assert nones > 0  # one block of lanes ran out before the other: that process was handed None


def tiny_charlm(seed=0):
    torch.manual_seed(seed)
    return CharLM(9, CharLMConfig(cell="lstm", hidden_size=6, num_layers=2, embedding_size=4))


def test_merged_carried_state_is_the_one_process_state():
    """Two processes' TBPTT states merged = one process's state over all lanes, and a shard that
    resumes from the merged state continues exactly as if uninterrupted."""
    docs = documents([31, 12, 47, 9, 25, 18, 40, 6], seed=1)
    model = tiny_charlm()
    whole, shards = LaneStream(docs, 4, 5), [LaneStream(docs, 4, 5).shard(2, r) for r in range(2)]
    one, parts = TBPTTStep(), [TBPTTStep(), TBPTTStep()]
    stop = 7  # a chunk where lane 3 has run out and lane 1 is on its second document
    for i, (chunk, *pieces) in enumerate(zip(whole, *shards)):
        if i == stop:
            break
        one(model, chunk)
        for step, piece in zip(parts, pieces):
            if piece is not None:
                step(model, piece)
    merged = merge_carried([p.state_dict() for p in parts])
    expect = one.state_dict()
    assert torch.equal(merged["lanes"], expect["lanes"])
    torch.testing.assert_close(merged["state"], expect["state"], rtol=1e-6, atol=1e-7)
    # shard 1 resumes from the merged state and meets the same losses as without the interruption
    fresh = TBPTTStep()
    fresh.load_state_dict(merged)
    rest = list(shards[1])[stop:]
    for piece in [p for p in rest if p is not None][:3]:
        torch.testing.assert_close(fresh(model, piece).loss, parts[1](model, piece).loss, rtol=1e-6, atol=1e-7)


# -- the Trainer in two spawned processes --------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(fn, *args, nprocs=2, timeout=240):
    """Run ``fn(rank, nprocs, port, *args)`` in ``nprocs`` processes; fail on an error or a hang."""
    ctx = mp.start_processes(fn, args=(nprocs, free_port(), *args), nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"the {nprocs} processes did not finish in {timeout} s (a collective waiting forever?)")


def join_group(rank, world, port):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)


V, T_MAX = 6, 7
N_EXAMPLES, BATCH = 17, 8  # passes of 8 + 8 + 1: the last global batch leaves rank 1 nothing


def sequences(seed=0):
    """Token sequences of unequal lengths (padded, time-major), so shards hold unequal token counts."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, T_MAX + 1, (N_EXAMPLES,), generator=g)
    tokens = torch.randint(2, V, (T_MAX, N_EXAMPLES), generator=g)
    return tokens, lengths


def take(idx, number):
    tokens, lengths = sequences()
    n = lengths[idx]
    return tokens[: int(n.max()), idx], n


def per_token_step(model, batch):
    """NLL averaged over the batch's valid tokens: its weight is the token count, not the batch."""
    y, lengths = batch
    logits = model(y)  # (T, B, V)
    n = int(lengths.sum())
    valid = torch.arange(y.shape[0]).unsqueeze(1) < lengths  # (T, B)
    accuracy = float(((logits.argmax(-1) == y) & valid).sum()) / n  # a per-token mean, like the loss
    return StepResult(
        sequence_nll(logits, y, lengths, reduction="mean"),
        items=n,
        sequences=len(lengths),
        metrics={"accuracy": accuracy},
    )


def evaluate(model):
    y, lengths = sequences(seed=5)
    return {"loss": float(sequence_nll(model(y), y, lengths, reduction="mean"))}


def make_trainer(out, source, step=per_token_step, **cfg):
    model = TinyDecoder(vocab=V, seed=4)  # no dropout: the replicas' masks could not match one process's
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    config = TrainConfig(
        **{
            "max_steps": 8,
            "eval_every": 3,
            "eval_budget": None,
            "progress": False,
            "seed": 0,
            "clip_norm": 0.5,
            "out": str(out) if out else None,
            **cfg,
        }
    )
    return Trainer(model, opt, step, source, config, evaluate=evaluate, meta={"task": "test"})


class _StopOnRank1(Callback):
    def on_step(self, trainer, record):
        if record["step"] == 5 and distributed.rank() == 1:
            trainer.should_stop = True


def poisoned_step(model, batch):
    y, lengths, poisoned = batch
    result = per_token_step(model, (y, lengths))
    if poisoned:
        result.loss = result.loss * float("nan")
    return result


def worker(rank, world, port, folder):
    """Three runs in one process group (starting processes is the slow part): the reference
    comparison, a stop said by rank 1 alone, and a NaN in rank 1's shard."""
    join_group(rank, world, port)
    folder = Path(folder)
    try:
        if rank:  # the other processes must not write: make any attempt fail the test
            import rnnkit.train.trainer as trainer_module

            def refuse(*a, **k):
                raise AssertionError(f"rank {rank} tried to write")

            trainer_module.RunLog = trainer_module.plot_curves = refuse
            trainer_module.Trainer.save = refuse
        trainer = make_trainer(folder / "run", Minibatches(N_EXAMPLES, BATCH, seed=0, take=take).shard(world, rank))
        result = trainer.fit()
        weights = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}

        stopper = make_trainer(
            None, Minibatches(N_EXAMPLES, BATCH, seed=0, take=take).shard(world, rank), max_steps=None, max_time=3600
        )
        stopper.callbacks.append(_StopOnRank1())
        stopped = stopper.fit()

        def poisoned_take(idx, number):  # rank 1's share of the second batch
            return (*take(idx, number), number == 1 and rank == 1)

        diverging = make_trainer(
            None, Minibatches(N_EXAMPLES, BATCH, seed=0, take=poisoned_take).shard(world, rank), step=poisoned_step
        )
        try:
            diverging.fit()
            outcome = "finished"
        except TrainingDiverged as e:
            outcome = f"diverged after {diverging.step} updates: {e}"
        torch.save(
            {
                "history": result.history,
                "weights": weights,
                "stopped": (stopped.steps, stopped.stop_reason),
                "nan": outcome,
            },
            folder / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("two")
    spawn(worker, str(folder))
    return folder, [torch.load(folder / f"rank{r}.pt") for r in range(2)]


def test_two_processes_follow_one_process_on_the_same_global_batches(two_processes):
    folder, ranks = two_processes
    one = make_trainer(None, Minibatches(N_EXAMPLES, BATCH, seed=0, take=take))
    expect = one.fit()
    train = [r for r in expect.history if r["kind"] == "train"]
    for got in ranks:  # both processes hold the global record, equal to one process's
        g_train = [r for r in got["history"] if r["kind"] == "train"]
        assert [r["step"] for r in g_train] == list(range(1, 9))
        for key in ("loss", "grad_norm", "accuracy"):
            torch.testing.assert_close([r[key] for r in g_train], [r[key] for r in train], rtol=2e-5, atol=1e-6)
        assert [r["val_loss"] for r in got["history"] if r["kind"] == "val"] == pytest.approx(
            [r["val_loss"] for r in expect.history if r["kind"] == "val"], rel=2e-5
        )
        torch.testing.assert_close(got["weights"], one.model.state_dict(), rtol=1e-4, atol=1e-5)
    assert any(r["grad_norm"] > 0.5 for r in train)  # clipping took part
    # the weighting matters here: the shards of a batch hold different token counts
    tokens, lengths = sequences()
    perm = Minibatches(N_EXAMPLES, BATCH, 0, take).permutation(0)
    assert int(lengths[perm[:4]].sum()) != int(lengths[perm[4:8]].sum())


def test_only_rank_0_wrote_and_its_checkpoint_has_the_plain_model(two_processes):
    folder, _ = two_processes  # rank 1 would have failed at any write (see worker)
    log = read_log(folder / "run" / "metrics.jsonl")
    assert [r["step"] for r in log if r["kind"] == "train"] == list(range(1, 9))  # each update once
    from safetensors import safe_open

    with safe_open(str(folder / "run" / "latest.safetensors"), "pt") as f:
        names = {k[len("model.") :] for k in f.keys() if k.startswith("model.")}
    assert names == set(TinyDecoder(vocab=V).state_dict())  # no DDP "module." prefix
    model = TinyDecoder(vocab=V)
    load_checkpoint(folder / "run" / "latest.safetensors", model=model)
    torch.testing.assert_close(model.state_dict(), torch.load(folder / "rank0.pt")["weights"])


def test_a_stop_said_by_one_process_stops_both_after_the_same_update(two_processes):
    _, ranks = two_processes
    assert [got["stopped"] for got in ranks] == [(5, "callback"), (5, "callback")]


def test_a_nan_on_one_process_stops_both_without_hanging(two_processes):
    _, ranks = two_processes  # a hang would have failed the fixture's spawn
    for got in ranks:
        assert got["nan"].startswith("diverged after 1 updates: training diverged at step 2: the loss is nan"), got[
            "nan"
        ]


# -- the command line: rnnkit train --nproc 2 -----------------------------------------------------------
def corpus(folder: Path) -> Path:
    """Six small text files; every third is held out, the other four are the lanes (one each),
    of unequal lengths, so rank 1's lanes run out before rank 0's within each pass."""
    g = torch.Generator().manual_seed(0)
    alphabet = "abcde \n"
    folder.mkdir()
    for i, n in enumerate([130, 150, 60, 90, 40, 70]):
        text = "".join(alphabet[int(k)] for k in torch.randint(0, len(alphabet), (n,), generator=g))
        (folder / f"f{i}.txt").write_text(text)
    return folder


def flags(data: Path, out: Path, steps: int) -> list[str]:
    return [
        "--data",
        str(data),
        "--holdout-every",
        "3",
        "--cell",
        "lstm",
        "--hidden-size",
        "12",
        "--num-layers",
        "2",
        "--embedding-size",
        "6",
        "--batch-size",
        "4",
        "--seq-length",
        "16",
        "--max-steps",
        str(steps),
        "--max-time",
        "none",
        "--eval-every",
        "4",
        "--no-progress",
        "--out",
        str(out),
    ]


def rnnkit_train(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "rnnkit", "train", *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
    )


def curve(out: Path) -> list[float]:
    return [r["loss"] for r in read_log(out / "metrics.jsonl") if r["kind"] == "train"]


def test_cli_nproc_2_follows_one_process_and_resumes_the_curve(tmp_path, capsys):
    data = corpus(tmp_path / "data")
    assert main(["train", *flags(data, tmp_path / "one", 12)]) == 0  # the reference: one process, 12 updates
    capsys.readouterr()
    reference = curve(tmp_path / "one")

    two = tmp_path / "two"
    # stop at update 4, where every lane is inside a document: both processes carry state
    first = rnnkit_train(["--nproc", "2", *flags(data, two, 4), "--json"])
    assert first.returncode == 0, first.stderr[-2000:]
    assert first.stdout.count("finished: 4 updates") == 1  # rank 0 alone reports
    assert json.loads(first.stdout.strip().splitlines()[-1])["steps"] == 4
    assert sorted(p.name for p in two.iterdir()) == [
        "best.safetensors",
        "config.json",
        "curves.png",
        "latest.safetensors",
        "metrics.jsonl",
    ]
    torch.testing.assert_close(curve(two), reference[:4], rtol=2e-5, atol=1e-6)

    resumed = rnnkit_train(["--nproc", "2", "--out", str(two), "--resume", "--max-steps", "12", "--no-progress"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    # the carried state of both processes' lanes was saved whole: the curve goes on as one process's,
    # through updates 7–10, where rank 1's lanes have run out, and into the second pass
    torch.testing.assert_close(curve(two), reference, rtol=2e-5, atol=1e-6)

    # a checkpoint of two processes resumes in one (and continues the same curve)
    assert main(["train", "--out", str(two), "--resume", "--max-steps", "13", "--no-progress"]) == 0
    assert main(["train", *flags(data, tmp_path / "one13", 13)]) == 0
    capsys.readouterr()
    torch.testing.assert_close(curve(two), curve(tmp_path / "one13"), rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize(
    "given, message",
    [
        (["--nproc", "0"], "rnnkit train: --nproc must be an int ≥ 1, got 0"),
        (["--nproc", "two"], "rnnkit train charlm: argument --nproc: invalid int value: 'two'"),
        (
            ["--nproc", "3", "--batch-size", "4"],
            "rnnkit train --nproc: the global batch_size 4 is not divisible by the 3 processes",
        ),
    ],
)
def test_cli_refuses_a_bad_nproc_in_one_line(given, message, capsys):
    assert main(["train", *given]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and "\n" not in err


def test_cli_refuses_nproc_under_torchrun(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert main(["train", "--nproc", "2"]) == 2
    assert "under torchrun leave it out" in capsys.readouterr().err


def test_relaunch_command_passes_the_given_options_without_nproc():
    from rnnkit.cli import build_parser
    from rnnkit.cli.train import relaunch_command

    args = build_parser().parse_args(
        [
            "train",
            "digits",
            "--nproc",
            "2",
            "--lr",
            "0.003",
            "--no-progress",
            "--patience",
            "none",
            "--json",
            "--out",
            "runs/x",
        ]
    )
    cmd = relaunch_command(args, 2)
    assert cmd[:7] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m"]
    rest = cmd[7:]
    assert rest[:4] == ["rnnkit", "train", "digits", "--json"] and "--nproc" not in rest
    again = build_parser().parse_args(rest[1:])  # the child parses the same settings
    for name in ("lr", "progress", "patience", "out", "json"):
        assert getattr(again, name) == getattr(args, name)


def test_launch_environment_is_read_and_checked():
    assert distributed.launched({}) is None
    assert distributed.launched({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == distributed.Launch(1, 2, 1)
    with pytest.raises(ValueError, match=r"RANK must be an integer \(set by torchrun\), got 'x'"):
        distributed.launched({"RANK": "x", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    with pytest.raises(ValueError, match=r"expected 0 ≤ RANK < WORLD_SIZE.*got RANK=2, WORLD_SIZE=2"):
        distributed.launched({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})


def test_cli_nproc_2_with_dropout_resumes_exactly(tmp_path):
    """Every process's RNG state is in the checkpoint: with dropout (each process its own masks)
    a 2-process run stopped and resumed gives the uninterrupted 2-process curve, bit for bit."""
    data = corpus(tmp_path / "data")
    dropout = ["--dropout", "0.3"]
    whole = rnnkit_train(["--nproc", "2", *flags(data, tmp_path / "whole", 8), *dropout])
    assert whole.returncode == 0, whole.stderr[-2000:]
    part = rnnkit_train(["--nproc", "2", *flags(data, tmp_path / "part", 4), *dropout])
    assert part.returncode == 0, part.stderr[-2000:]
    resumed = rnnkit_train(
        ["--nproc", "2", "--out", str(tmp_path / "part"), "--resume", "--max-steps", "8", "--no-progress"]
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert curve(tmp_path / "part") == curve(tmp_path / "whole")
    assert len(curve(tmp_path / "whole")) == 8
