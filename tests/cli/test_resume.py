"""Exact resume after SIGKILL (issue 8): kill a real ``rnnkit train`` process mid-run, resume it
with ``--resume``, and the run from the checkpoint on is the uninterrupted run, bit for bit:
the same losses and gradient norms (same data order, same dropout masks, the same state carried
across truncated-BPTT chunks) and the same printed samples."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rnnkit.checkpoint import CheckpointError, read_meta

# dropout on, so the masks must come back too; several chunks per file, so the carried state matters
SETTINGS = [
    "--hidden-size",
    "24",
    "--num-layers",
    "2",
    "--dropout",
    "0.3",
    "--seq-length",
    "16",
    "--batch-size",
    "3",
    "--max-steps",
    "150",
    "--max-time",
    "None",
    "--eval-every",
    "10",
    "--eval-budget",
    "none",
    "--sample-length",
    "40",
    "--no-progress",
    "--holdout-every",
    "3",
    "--seed",
    "7",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Six real Python files of the standard library, about 4000 characters each."""
    folder = tmp_path_factory.mktemp("corpus")
    sources = sorted(Path(json.__file__).parent.glob("*.py"))
    for k, src in enumerate(sources[:6]):
        (folder / f"f{k}.py").write_text(src.read_text()[:4000])
    return folder


def train(corpus, out, *extra, **popen):
    cmd = [sys.executable, "-m", "rnnkit", "train", "--data", str(corpus), "--out", str(out), *SETTINGS, *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **popen)


def records(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines() if line.strip()]


def samples(stdout):
    """The sample printed at each validation, by step."""
    lines, found, step = stdout.splitlines(), {}, None
    for i, line in enumerate(lines):
        if line.startswith("step "):
            step = int(line.split()[1])
        elif line.startswith("  sample:"):
            rest = []
            for x in lines[i + 1 :]:
                if not x.startswith(" " * 10):  # a sample's continuation lines are indented
                    break
                rest.append(x)
            found[step] = "\n".join([line, *rest])
    return found


def test_sigkill_at_an_arbitrary_step_then_resume_gives_the_uninterrupted_curve(tmp_path, corpus):
    whole = train(corpus, tmp_path / "whole")
    whole_out, err = whole.communicate(timeout=600)
    assert whole.returncode == 0, err
    reference = records(tmp_path / "whole")

    killed_dir = tmp_path / "killed"
    victim = train(corpus, killed_dir)
    deadline = time.monotonic() + 300
    latest = killed_dir / "latest.safetensors"
    # wait for the checkpoint at step 30, then kill while later steps (and maybe a save) are running
    while time.monotonic() < deadline and victim.poll() is None:
        try:
            if read_meta(latest)["trainer"]["step"] >= 30:
                break
        except (CheckpointError, OSError):
            pass
        time.sleep(0.02)
    time.sleep(0.3)
    assert victim.poll() is None, "the run ended before it could be killed; make it longer"
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=60)
    assert victim.returncode == -signal.SIGKILL

    at = read_meta(latest)["trainer"]["step"]  # the checkpoint the kill left: intact and loadable
    assert 30 <= at < 150
    resumed = train(corpus, killed_dir, "--resume")
    resumed_out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err

    got = records(killed_dir)

    def key(r):
        return r["kind"], r["step"]

    assert [key(r) for r in got] == [key(r) for r in reference]  # the log holds each step once, in order
    for a, b in zip(got, reference):
        if a["kind"] == "train":
            assert (a["loss"], a["grad_norm"], a["bpc"], a["epoch"]) == (
                b["loss"],
                b["grad_norm"],
                b["bpc"],
                b["epoch"],
            ), a["step"]
        else:
            assert a["val_loss"] == b["val_loss"], a["step"]
    # the same samples after the resume point
    whole_samples, resumed_samples = samples(whole_out), samples(resumed_out)
    after = [s for s in resumed_samples if s is not None and s > at]
    assert after and all(resumed_samples[s] == whole_samples[s] for s in after)


def test_resume_refuses_settings_that_differ_from_the_checkpoint_and_changes_nothing(tmp_path, corpus, capsys):
    from rnnkit.cli import main

    out = tmp_path / "run"
    tiny = [
        "--data",
        str(corpus),
        "--out",
        str(out),
        "--hidden-size",
        "8",
        "--num-layers",
        "1",
        "--seq-length",
        "8",
        "--batch-size",
        "2",
        "--max-steps",
        "2",
        "--eval-every",
        "2",
        "--no-progress",
        "--sample-length",
        "5",
    ]
    assert main(["train", *tiny]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.txt").write_text("zzz qqq\n" * 50)
    for flags, said in [
        (["--cell", "gru"], "cell: the run has 'lstm', given 'gru'"),
        (["--data", str(other)], f"data: the run has {str(corpus)!r}, given {str(other)!r}"),
        (
            ["--hidden-size", "16", "--lr", "0.1"],
            "hidden_size: the run has 8, given 16; lr: the run has 0.002, given 0.1",
        ),
    ]:
        capsys.readouterr()
        assert main(["train", *tiny, "--resume", *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and said in err and "--resume continues the run" in err, err
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing written
    # what may change: how long, what is shown
    assert main(["train", *tiny, "--resume", "--max-steps", "4", "--temperature", "0.5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 4


def test_run_task_resume_with_other_settings_writes_nothing(tmp_path, corpus):
    from rnnkit.tasks import run_task
    from rnnkit.tasks.charlm import CharLMConfig, CharLMTask

    small = dict(
        data=str(corpus),
        out=str(tmp_path / "run"),
        hidden_size=8,
        num_layers=1,
        seq_length=8,
        batch_size=2,
        max_steps=2,
        eval_every=2,
        progress=False,
        sample_length=5,
    )
    run_task(CharLMTask(CharLMConfig(**small)), log=lambda s: None)
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    with pytest.raises(ValueError, match="these differ: hidden_size: the run has 8, given 12"):
        run_task(CharLMTask(CharLMConfig(**{**small, "hidden_size": 12})), log=lambda s: None, resume=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == before  # config.json included


def test_out_that_is_a_file_and_dropout_that_does_nothing_are_refused(tmp_path, corpus, capsys):
    from rnnkit.cli import main

    (tmp_path / "afile").write_text("mine")
    assert main(["train", "--data", str(corpus), "--out", str(tmp_path / "afile"), "--max-steps", "1"]) == 2
    assert (
        f"out must be a folder (new, or holding a run), but {str(tmp_path / 'afile')!r} is a file"
        in capsys.readouterr().err
    )
    assert (tmp_path / "afile").read_text() == "mine"
    assert (
        main(["train", "--data", str(corpus), "--num-layers", "1", "--dropout", "0.5", "--out", str(tmp_path / "r")])
        == 2
    )
    assert "dropout acts between stacked layers, so with num_layers = 1 it would do nothing" in capsys.readouterr().err
