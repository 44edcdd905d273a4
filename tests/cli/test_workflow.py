"""The command-line workflow a new user follows (issue 15): every point that went wrong, through
the real entry point on tiny settings."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from rnnkit.checkpoint import read_meta
from rnnkit.cli import invocation, main

TINY = [
    "--hidden-size",
    "8",
    "--num-layers",
    "1",
    "--embedding-size",
    "4",
    "--seq-length",
    "10",
    "--batch-size",
    "2",
    "--eval-every",
    "3",
    "--eval-budget",
    "none",
    "--no-progress",
    "--sample-length",
    "5",
    "--holdout-every",
    "3",
    "--max-time",
    "none",
]  # every 3rd update validates and checkpoints, whatever it costs: the tests count them


@pytest.fixture
def corpus(tmp_path):
    """Six small files: every third held out, alternately for validation and test."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    for k in range(6):
        (folder / f"f{k}.py").write_text(f"def f{k}(a, b):\n    return a * {k} + b  # {'x' * k}\n\n" * 12)
    return folder


def train(corpus, out, *extra):
    return main(["train", "--data", str(corpus), "--out", str(out), *TINY, *extra])


def last_json(text):
    return json.loads(text.strip().splitlines()[-1])


# 1 ----------------------------------------------------------------------------------------------
def test_eval_split_test_is_the_test_split_and_a_run_without_one_refuses_it(tmp_path, corpus, capsys):
    assert train(corpus, tmp_path / "run", "--max-steps", "3") == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--json"]) == 0
    val = last_json(capsys.readouterr().out)
    assert main(["eval", str(tmp_path / "run"), "--split", "test", "--json"]) == 0
    out = capsys.readouterr().out
    test = last_json(out)
    assert test["split"] == "test" and "charlm (test):" in out
    assert test["test_bpc"] != val["val_bpc"] and test["baseline"] != val["baseline"]
    one = tmp_path / "one.txt"
    one.write_text((corpus / "f1.py").read_text() * 3)
    assert main(["train", "--data", str(one), "--out", str(tmp_path / "tails"), *TINY, "--max-steps", "1"]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "tails"), "--split", "test"]) == 2
    assert "this run has no test split" in capsys.readouterr().err


# 2 ----------------------------------------------------------------------------------------------
def _run_in_terminal(argv, cwd):
    """Run argv with stdout and stderr on a pseudo-terminal; everything the terminal received."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a terminal of 120 columns
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "120"}
    proc = subprocess.Popen(argv, stdout=slave, stderr=slave, stdin=subprocess.DEVNULL, cwd=cwd, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=300) == 0
    return b"".join(chunks).decode()


def test_in_a_terminal_the_bar_never_glues_to_printed_lines_and_counts_are_whole(tmp_path, corpus):
    flags = [a for a in TINY if a != "--no-progress"]
    argv = [
        sys.executable,
        "-m",
        "rnnkit",
        "train",
        "--data",
        str(corpus),
        "--out",
        str(tmp_path / "r"),
        *flags,
        "--max-steps",
        "9",
        "--progress",
    ]
    screen = _run_in_terminal(argv, tmp_path)
    assert "it/s" in screen or "step/s" in screen or "s/step" in screen, screen  # the bar was drawn
    for line in screen.replace("\r\n", "\n").split("\n"):
        visible = line.split("\r")[-1]  # what stays on the terminal's line after the carriage returns
        if "train loss" in line:
            assert visible.startswith("step "), repr(line)
    assert not re.search(r"\d\.\d+/9\b", screen)  # never "2.0/9"
    assert re.search(r"\b\d/9\b", screen)


def test_with_stderr_to_a_file_there_is_no_bar(tmp_path, corpus):
    flags = [a for a in TINY if a != "--no-progress"]
    with open(tmp_path / "err.txt", "w") as err:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "rnnkit",
                "train",
                "--data",
                str(corpus),
                "--out",
                str(tmp_path / "r"),
                *flags,
                "--max-steps",
                "4",
            ],
            stdout=subprocess.PIPE,
            stderr=err,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            timeout=300,
        )
    assert done.returncode == 0
    assert "\r" not in (tmp_path / "err.txt").read_text()


# 3 ----------------------------------------------------------------------------------------------
def test_resume_says_where_and_extends_a_finished_run_to_a_larger_limit(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    # a run that ended by its time budget: resumed with --max-steps, it trains to that step
    assert train(corpus, out, "--max-steps", "none", "--max-time", "0.5") == 0
    at = read_meta(out / "latest.safetensors")["trainer"]["step"]
    capsys.readouterr()
    assert train(corpus, out, "--resume", "--max-steps", str(at + 4), "--json") == 0
    text = capsys.readouterr().out
    assert f"resuming {out} at update {at}: training to update {at + 4}\n" in text
    assert last_json(text)["steps"] == at + 4
    assert train(corpus, out, "--resume", "--max-steps", str(at + 8), "--max-time", "60", "--json") == 0
    text = capsys.readouterr().out
    assert f"at update {at + 4}: training to update {at + 8} or for at most 60 s more, whichever comes first" in text
    # a run that ended at its max_steps: a larger one extends it; the same or a smaller one is refused
    assert train(corpus, tmp_path / "steps", "--max-steps", "4") == 0
    capsys.readouterr()
    assert train(corpus, tmp_path / "steps", "--resume", "--max-steps", "4") == 2
    err = capsys.readouterr().err
    assert "is at update 4, and max_steps is 4: nothing to do; give a larger --max-steps" in err
    assert train(corpus, tmp_path / "steps", "--resume", "--max-steps", "7", "--json") == 0
    text = capsys.readouterr().out
    assert "resuming" in text and "at update 4: training to update 7" in text and last_json(text)["steps"] == 7


# 4 ----------------------------------------------------------------------------------------------
def test_resume_without_out_continues_the_newest_run(tmp_path, corpus, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = ["train", "--data", str(corpus), *TINY]
    assert main([*base, "--max-steps", "3"]) == 0
    assert main([*base, "--max-steps", "3"]) == 0  # runs/charlm is taken: this one is runs/charlm-2
    assert Path("runs/charlm-2/latest.safetensors").is_file()
    os.utime("runs/charlm/latest.safetensors", (1, 1))  # charlm-2's checkpoint is the newer one
    capsys.readouterr()
    assert main([*base, "--resume", "--max-steps", "6"]) == 0
    text = capsys.readouterr().out
    assert "2 charlm runs; continuing the newest, runs/charlm-2 (--out picks another: runs/charlm)" in text
    assert read_meta("runs/charlm-2/latest.safetensors")["trainer"]["step"] == 6
    assert read_meta("runs/charlm/latest.safetensors")["trainer"]["step"] == 3


# 5 ----------------------------------------------------------------------------------------------
def test_the_last_update_loss_and_the_smoothed_loss_have_their_own_names(tmp_path, corpus, capsys):
    assert train(corpus, tmp_path / "r", "--max-steps", "25", "--eval-every", "25", "--json") == 0
    text = capsys.readouterr().out
    result = last_json(text)
    losses = [
        json.loads(x)["loss"]
        for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
        if json.loads(x)["kind"] == "train"
    ]
    assert result["train_loss_last"] == losses[-1]
    assert result["train_loss"] == pytest.approx(sum(losses[-20:]) / 20)
    assert f"train loss {result['train_loss']:.4f} (mean of last 20)" in text


# 6 ----------------------------------------------------------------------------------------------
def test_train_help_lists_the_default_tasks_options(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "rnnkit train [charlm]" in text and "Other tasks: digits" in text
    for flag, default in [
        ("--hidden-size", "256"),
        ("--holdout-every", "20"),
        ("--max-time", "120.0"),
        ("--keep-checkpoints", "0"),
    ]:
        assert re.search(re.escape(flag) + r".*?\(default:\s+" + re.escape(default) + r"\)", text, re.S), flag


# 7 ----------------------------------------------------------------------------------------------
def test_a_runs_config_json_is_accepted_back_by_config(tmp_path, corpus, capsys):
    assert train(corpus, tmp_path / "a", "--max-steps", "2", "--cell", "gru", "--lr", "0.01") == 0
    assert main(["train", "--config", str(tmp_path / "a" / "config.json"), "--out", str(tmp_path / "b")]) == 0
    a, b = (json.loads((tmp_path / x / "config.json").read_text()) for x in "ab")
    assert a["config"].pop("out") != b["config"].pop("out")
    assert a == b
    capsys.readouterr()
    assert main(["train", "digits", "--config", str(tmp_path / "a" / "config.json")]) == 2
    assert "the settings of a 'charlm' run, not 'digits'" in capsys.readouterr().err


# 8 ----------------------------------------------------------------------------------------------
def test_printed_commands_name_the_program_that_ran(tmp_path, corpus, monkeypatch):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RNNKIT_PROG", None)
    cmd = ["-m", "rnnkit", "train", "--data", str(corpus), "--out", str(tmp_path / "r"), *TINY, "--max-steps", "2"]
    done = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stdout.splitlines() if x.startswith("sample more with: "))
    printed = line.removeprefix("sample more with: ")
    assert printed.startswith(f"{sys.executable} -m rnnkit sample ")
    again = subprocess.run(
        [*printed.split()[:3], "sample", str(tmp_path / "r"), "--length", "5"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=tmp_path,
    )
    assert again.returncode == 0, again.stderr  # it runs as printed
    monkeypatch.setenv("RNNKIT_PROG", "scripts/rnnkit")  # what scripts/rnnkit says about itself
    assert invocation() == "scripts/rnnkit"
    monkeypatch.delenv("RNNKIT_PROG")
    monkeypatch.setattr(sys, "argv", [str(tmp_path / "venv" / "bin" / "rnnkit"), "train"])
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.chdir(tmp_path)
    assert invocation() == "venv/bin/rnnkit"  # not on the PATH: its path, as typed from here


# 9 ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv, said",
    [
        (["train", "--hiden-size", "3"], "--hiden-size: did you mean --hidden-size?"),
        (["train", "digits", "--max-stesp", "3"], "--max-stesp: did you mean --max-steps?"),
        (["sample", "x", "--temprature", "1"], "--temprature: did you mean --temperature?"),
        (
            ["sample", "x", "--temperature", "0"],
            "--temperature must be > 0 (for the most likely token at every step, --method greedy)",
        ),
    ],
)
def test_usage_mistakes_get_a_pointer(argv, said, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # were a mistake to run, it would write here
    assert main(argv) == 2
    assert said in capsys.readouterr().err


def test_version_and_help_texts_that_say_each_default_once(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and re.match(r"rnnkit \d+\.\d+", capsys.readouterr().out)
    for command in (["sample", "--help"], ["eval", "--help"], ["diagnose", "--help"], ["train", "--help"]):
        with pytest.raises(SystemExit):
            main(command)
        text = " ".join(capsys.readouterr().out.split())
        assert "(default: None)" not in text and not re.search(r"\(default:? [^)]*\) \(default", text), command


def test_the_old_val_every_flag_still_works_and_warns(tmp_path, corpus, capsys):
    argv = ["train", "--data", str(corpus), "--out", str(tmp_path / "r"), *TINY, "--max-steps", "1", "--val-every", "2"]
    assert main(argv) == 0
    assert "--val-every is deprecated" in capsys.readouterr().err
    assert json.loads((tmp_path / "r" / "config.json").read_text())["config"]["holdout_every"] == 2


# 11 ---------------------------------------------------------------------------------------------
def test_eval_says_what_it_is_doing_before_the_long_part(tmp_path, corpus, capsys, monkeypatch):
    assert train(corpus, tmp_path / "r", "--max-steps", "1") == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "r")]) == 0
    assert capsys.readouterr().err == ""  # stderr to a file or pipe: only errors
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # a user watching a terminal
    assert main(["eval", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err
    assert "rnnkit eval: preparing the charlm data" in err and "rnnkit eval: evaluating on the val split" in err
    assert "evaluating:" in err  # the bar over the chunks


# 12 ---------------------------------------------------------------------------------------------
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
def test_an_out_that_cannot_be_written_is_refused_before_the_data_is_read(capsys):
    assert main(["train", "--data", "/no/such/corpus", "--out", "/proc/nope", "--max-steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "cannot create '/proc/nope'" in err and "Errno" not in err  # about the folder, before the data


# 14 ---------------------------------------------------------------------------------------------
def test_keep_checkpoints_from_the_command_line(tmp_path, corpus):
    assert train(corpus, tmp_path / "r", "--max-steps", "9", "--keep-checkpoints", "2") == 0
    names = sorted(p.name for p in (tmp_path / "r").glob("step-*.safetensors"))
    assert [n[:11] for n in names] == ["step-000006", "step-000009"]
    assert all(re.fullmatch(r"step-\d{6}-loss-[\d.]+\.safetensors", n) for n in names)
