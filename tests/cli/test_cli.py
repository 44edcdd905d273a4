"""The rnnkit command end to end on tiny settings, through the real entry point."""

import json
import re
import subprocess
import sys

import pytest

from rnnkit.checkpoint import read_meta
from rnnkit.cli import main

TINY = [
    "--hidden-size",
    "16",
    "--num-layers",
    "1",
    "--seq-length",
    "20",
    "--batch-size",
    "4",
    "--max-steps",
    "6",
    "--eval-every",
    "3",
    "--eval-budget",
    "none",
    "--no-progress",
]  # the tests count validations


@pytest.fixture
def corpus(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for k in range(3):
        (folder / f"f{k}.py").write_text(f"def add{k}(a, b):\n    return a + b * {k}\n\n" * 40)
    return folder


def last_json(text):
    return json.loads(text.strip().splitlines()[-1])


def test_train_checkpoint_sample_eval_resume_through_the_console_entry_point(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "rnnkit",
        "train",
        "--data",
        str(corpus),
        "--out",
        str(out),
        "--json",
        "--holdout-every",
        "3",
        *TINY,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = last_json(done.stdout)
    assert result["task"] == "charlm" and result["cell"] == "lstm" and result["steps"] == 6
    assert result["sequences_seen"] == 6 * 4  # two training files cut into --batch-size 4 lanes
    assert result["metric"] == "bpc" and result["bpc"] > 0 and result["baseline"] > 0 and result["val_loss"] > 0
    for name in ("best.safetensors", "latest.safetensors", "config.json", "metrics.jsonl", "curves.png"):
        assert (out / name).is_file()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in records if r["kind"] == "val"] == [3, 6]
    assert json.loads((out / "config.json").read_text())["config"]["hidden_size"] == 16

    assert main(["sample", str(out), "--length", "50", "--prime", "def "]) == 0
    text = capsys.readouterr().out
    assert text.startswith("def ") and len(text) >= 54
    assert (
        main(["sample", str(out / "latest.safetensors"), "--length", "20", "--method", "beam", "--beam-width", "2"])
        == 0
    )
    capsys.readouterr()

    assert main(["eval", str(out / "latest.safetensors"), "--json"]) == 0
    evaluated = last_json(capsys.readouterr().out)
    assert evaluated["val_bpc"] == pytest.approx(result["bpc"], rel=1e-6)
    assert main(["eval", str(out), "--data", str(corpus / "f0.py"), "--json"]) == 0
    assert last_json(capsys.readouterr().out)["val_bpc"] > 0

    assert main(["train", "--data", str(corpus), "--out", str(out), "--resume", "--max-steps", "9", "--json"]) == 0
    resumed = last_json(capsys.readouterr().out)
    assert resumed["steps"] == 9 and read_meta(out / "latest.safetensors")["trainer"]["step"] == 9
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, 10))


def test_train_prints_progress_samples_and_the_command_to_sample_more(tmp_path, corpus, capsys):
    assert main(["train", "charlm", "--data", str(corpus), "--out", str(tmp_path / "r"), "--cell", "gru", *TINY]) == 0
    text = capsys.readouterr().out
    assert "unigram baseline" in text and "val loss" in text and "sample:" in text
    assert f"rnnkit sample {tmp_path / 'r'}" in text


def test_config_file_with_flags_overriding_it(tmp_path, corpus, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        f'data = "{corpus}"\nhidden-size = 12\ncell = "gru"\nmax_steps = 4\nprogress = false\n'
        f"eval_every = 2\nseq_length = 10\nbatch_size = 2\n"
    )
    out = tmp_path / "r"
    assert main(["train", "--config", str(cfg), "--hidden-size", "10", "--out", str(out), "--json"]) == 0
    saved = json.loads((out / "config.json").read_text())["config"]
    assert (saved["hidden_size"], saved["cell"], saved["max_steps"]) == (10, "gru", 4)
    (tmp_path / "run.json").write_text(
        json.dumps({"hidden_size": 8, "max_steps": 2, "progress": False, "data": str(corpus)})
    )
    assert main(["train", "--config", str(tmp_path / "run.json"), "--out", str(out)]) == 2  # never over a run
    assert main(["train", "--config", str(tmp_path / "run.json"), "--out", str(out), "--overwrite"]) == 0


def test_help_documents_every_option_with_its_default(capsys):
    with pytest.raises(SystemExit):
        main(["train", "charlm", "--help"])
    text = capsys.readouterr().out
    for flag, default in [
        ("--hidden-size", "256"),
        ("--seq-length", "100"),
        ("--clip-norm", "5.0"),
        ("--cell", "'lstm'"),
        ("--max-time", "120.0"),
        ("--seed", "0"),
        ("--lr-decay", "1.0"),
        ("--temperature", "0.8"),
    ]:
        assert re.search(re.escape(flag) + r".*?\(default:\s+" + re.escape(default) + r"\)", text, re.S), flag


def test_tasks_lists_every_task(capsys):
    assert main(["tasks"]) == 0
    text = capsys.readouterr().out
    assert re.search(r"^charlm\s+character-level language model", text, re.M)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--cell", "transformer"], "unknown cell 'transformer'; choose from elman"),
        (["train", "nosuchtask"], "invalid choice: 'nosuchtask'"),
        (["train", "--hidden-size", "-4"], "hidden_size must be ≥ 1, got -4"),
        (["train", "--lr", "0"], "lr must be > 0, got 0.0"),
        (["train", "--dropout", "1"], r"dropout must be in \[0, 1\), got 1.0"),
        (["train", "--clip-norm", "-1"], r"clip_norm must be a number > 0"),
        (["train", "--batch-size", "many"], "invalid int value: 'many'"),
        (["train", "--max-steps", "none", "--max-time", "none"], "give max_steps or max_time"),
        (["train", "--data", "/no/such/file.txt"], "data path '/no/such/file.txt' does not exist"),
        (["train", "--config", "/no/such.toml"], "config file not found"),
        (["sample", "/no/such/run"], "no such checkpoint: '/no/such/run'"),
        (["eval", "/no/such/run.safetensors"], "no such checkpoint"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["train", "--lr", "inf"], "flags: lr must be a finite number, got inf"),
        (["train", "--max-time", "nan"], "flags: max_time must be a finite number, got nan"),
        (
            ["train", "--seed", "99999999999999999999"],
            r"flags: seed must be int within ±2\^63, got 99999999999999999999",
        ),
        (["train", "--hidden-size", "1e3"], "invalid int value: '1e3'"),
        (["train", "--embedding-size", "0"], "embedding_size must be ≥ 1, got 0"),
        (["train", "--resume", "--out", "/no/such/run"], "--resume: '/no/such/run' holds no run to resume"),
    ],
)
def test_usage_errors_exit_2_with_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert re.search(message, err), err


@pytest.mark.parametrize(
    "content, message",
    [
        ("hiden_size = 3\n", r"unknown setting\(s\) 'hiden_size' \(did you mean 'hidden_size'\?\)"),
        ('hidden_size = "big"\n', r"hidden_size must be int, got 'big' \(str\)"),
        ("hidden_size = [\n", r"not valid TOML"),
    ],
)
def test_bad_config_files_exit_2(tmp_path, content, message, capsys):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(content)
    assert main(["train", "--config", str(cfg)]) == 2
    assert re.search(message, capsys.readouterr().err)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("nan.toml", "lr = nan\n", r"nan.toml: lr must be a finite number, got nan"),
        ("inf.toml", "clip_norm = inf\n", r"inf.toml: clip_norm must be a finite number, got inf"),
        ("nan.json", '{"dropout": NaN}', r"nan.json: dropout must be a finite number, got nan"),
        ("huge.toml", "hidden_size = 99999999999999999999\n", r"huge.toml: hidden_size must be int within ±2\^63"),
        ("null.json", '{"hidden_size": null}', r"null.json: hidden_size must be int, got None"),
        ("bool.json", '{"batch_size": true}', r"bool.json: batch_size must be int, got True \(bool\)"),
        ("list.json", "[1, 2]", r"list.json: expected a table of settings, got list"),
        ("nested.toml", "[model]\nhidden_size = 3\n", r"nested.toml: unknown setting\(s\) 'model'"),
        ("neg.yaml", "max_steps: -3\n", r"max_steps must be an int ≥ 1 or None, got -3"),
        ("run.ini", "hidden_size = 3\n", r"config files must end in .toml, .json, .yaml or .yml, got '.ini'"),
    ],
)
def test_more_bad_config_files_exit_2_with_one_line(tmp_path, name, content, message, capsys):
    cfg = tmp_path / name
    cfg.write_text(content)
    assert main(["train", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.search(message, err), err


def test_yaml_numbers_read_as_toml_and_json_read_them(tmp_path):
    # PyYAML's YAML 1.1 reads 1e-3 as a string; configs read it as the float every other format does
    from rnnkit.tasks import TASKS
    from rnnkit.tasks.config import check_config, read_config_file

    values = {
        "lr": "1e-3",
        "weight_decay": "2.5E-4",
        "clip_norm": "1.0e+1",
        "max_time": "30",
        "hidden_size": "12",
        "temperature": "-0.5e0",
    }
    (tmp_path / "run.yaml").write_text("".join(f"{k}: {v}\n" for k, v in values.items()))
    (tmp_path / "run.json").write_text("{" + ", ".join(f'"{k}": {v}' for k, v in values.items()) + "}")
    from_yaml, from_json = read_config_file(tmp_path / "run.yaml"), read_config_file(tmp_path / "run.json")
    assert from_yaml == from_json == json.loads((tmp_path / "run.json").read_text())
    assert type(from_yaml["hidden_size"]) is int and type(from_yaml["lr"]) is float
    cls = TASKS["charlm"].Config
    assert check_config(cls, from_yaml) == check_config(cls, from_json)


def test_unreadable_data_exits_2(tmp_path, capsys):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"caf\xe9 au lait\n" * 10)
    assert main(["train", "--data", str(bad), "--out", str(tmp_path / "r"), *TINY]) == 2
    assert "latin1.txt' is not UTF-8 text: undecodable byte 0xe9 at offset 3 (line 1)" in capsys.readouterr().err
    short = tmp_path / "short.txt"
    short.write_text("ab")  # one character to train on, one to hold out: not even one (input, target) pair
    assert main(["train", "--data", str(short), "--out", str(tmp_path / "r"), *TINY]) == 2
    assert "corpus too short: 2 characters leave 0 training steps" in capsys.readouterr().err
    (tmp_path / "utf16.txt").write_bytes("hello world\n".encode("utf-16") * 20)
    (tmp_path / "blob.txt").write_bytes(b"GIF89a\x01\x00\x00\x00" * 20)
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "pictures").mkdir()
    (tmp_path / "pictures" / "cat.png").write_bytes(b"\x89PNG")
    cases = [
        ("utf16.txt", "utf16.txt' is UTF-16 text (byte-order mark at offset 0), expected UTF-8"),
        ("blob.txt", "blob.txt' looks binary, expected UTF-8 text: NUL byte at offset 7"),
        ("empty.txt", "empty.txt' holds no text"),
        ("pictures", "no .txt, .py or .md files"),
        ("missing", "missing' does not exist"),
    ]
    for name, message in cases:
        assert main(["train", "--data", str(tmp_path / name), "--out", str(tmp_path / "r"), *TINY]) == 2, name
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "r").exists()  # nothing written for a run that could not start


def test_bench_reports_every_requested_cell_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert (
        main(["bench", "--cells", "lstm", "peephole", "--size", "2,5,3,4", "--repeats", "1", "--json", str(out)]) == 0
    )
    text = capsys.readouterr().out
    assert "×LSTM" in text and "native" in text and "fused" in text
    rows = json.loads(out.read_text())
    assert [(r["cell"], r["engine"]) for r in rows] == [("lstm", "native"), ("peephole", "fused")]
    for r in rows:
        assert r["ms"] > 0 and r["torch_lstm_ms"] > 0 and r["naive_ms"] > 0 and r["memory_bytes"] > 0
        assert r["vs_torch_lstm"] == pytest.approx(r["ms"] / r["torch_lstm_ms"])


def test_bench_bad_size_is_a_usage_error(capsys):
    assert main(["bench", "--size", "2,5,3"]) == 2
    assert "expected B,T,I,H as four positive integers" in capsys.readouterr().err
