"""Fuzz the command line: hundreds of generated bad invocations each exit 2 (a usage error) with
one line on stderr, no traceback, and leave an existing run's checkpoints byte for byte unchanged."""

from __future__ import annotations

import hashlib
import pickle

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rnnkit.cli import main

TINY = [
    "--hidden-size",
    "8",
    "--num-layers",
    "1",
    "--seq-length",
    "10",
    "--batch-size",
    "2",
    "--max-steps",
    "2",
    "--eval-every",
    "2",
    "--no-progress",
    "--embedding-size",
    "4",
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    corpus = root / "corpus.txt"
    corpus.write_text("for i in range(10):\n    print(i * i)\n" * 30)
    run = root / "run"
    assert main(["train", "--data", str(corpus), "--out", str(run), *TINY]) == 0
    (root / "bad.toml").write_text("hidden_size = [\n")
    (root / "typo.json").write_text('{"hiden_size": 3}')
    (root / "wrongtype.toml").write_text('lr = "fast"\n')
    (root / "binary.txt").write_bytes(bytes(range(256)) * 4)
    (root / "nul.txt").write_bytes(b"print(1)\n\x00\x00\x00\x00" * 20)  # valid UTF-8, but binary
    (root / "utf16.txt").write_bytes("print(1)\n".encode("utf-16") * 20)
    (root / "latin1.txt").write_bytes(b"# caf\xe9\nprint(1)\n" * 20)
    (root / "empty.txt").write_text("")
    (root / "pictures").mkdir()
    (root / "pictures" / "cat.png").write_bytes(b"\x89PNG\r\n")
    (root / "nan.toml").write_text("lr = nan\n")
    (root / "inf.json").write_text('{"max_time": Infinity}')
    (root / "huge.toml").write_text("hidden_size = 123456789012345678901234567890\n")
    (root / "list.yaml").write_text("- lr\n- 3\n")
    (root / "notes.txt").write_text("not a checkpoint")

    class Evil:
        def __reduce__(self):
            return (open, (str(root / "PWNED"), "w"))

    (root / "evil.safetensors").write_bytes(pickle.dumps(Evil()))
    return root, corpus, run


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.safetensors"))}


BAD_NUMBERS = ["-1", "0", "-7", "x", "1.5.2", "", "nan", "1e999999"]
SIZE_FLAGS = [
    "--hidden-size",
    "--num-layers",
    "--batch-size",
    "--seq-length",
    "--eval-every",
    "--embedding-size",
    "--max-chars",
    "--lr-decay-every",
    "--sample-length",
]


@st.composite
def bad_invocation(draw, root, corpus, run):
    kind = draw(
        st.sampled_from(
            [
                "size",
                "real",
                "number",
                "name",
                "flag",
                "path",
                "config",
                "taken",
                "both",
                "checkpoint",
                "sample",
                "eval",
                "bench",
                "top",
            ]
        )
    )
    if kind == "size":
        argv = ["train", draw(st.sampled_from(SIZE_FLAGS)), draw(st.sampled_from(BAD_NUMBERS))]
    elif kind == "real":
        flag, values = draw(
            st.sampled_from(
                [
                    ("--lr", ["0", "-0.1", "abc"]),
                    ("--dropout", ["1", "-0.5", "2"]),
                    ("--clip-norm", ["0", "-3", "inf?"]),
                    ("--clip-value", ["-1", "0"]),
                    ("--lr-decay", ["0", "1.5"]),
                    ("--temperature", ["0", "-1"]),
                    ("--max-time", ["0", "-5"]),
                    ("--weight-decay", ["-1"]),
                ]
            )
        )
        argv = ["train", flag, draw(st.sampled_from(values))]
    elif kind == "number":  # parse as numbers, but no setting means anything at inf, nan or beyond int64
        flag, values = draw(
            st.sampled_from(
                [
                    ("--lr", ["inf", "nan", "-inf"]),
                    ("--max-time", ["inf", "nan"]),
                    ("--clip-norm", ["inf", "nan"]),
                    ("--seed", ["99999999999999999999", "-99999999999999999999"]),
                    ("--hidden-size", ["123456789012345678901234567890"]),
                    ("--temperature", ["nan"]),
                    ("--dropout", ["nan"]),
                ]
            )
        )
        # a tiny run around it, so that a value let through fails fast instead of training on the stdlib
        argv = [
            "train",
            flag,
            draw(st.sampled_from(values)),
            "--data",
            str(corpus),
            "--max-steps",
            "1",
            "--out",
            str(root / "never"),
        ]
    elif kind == "name":
        flag = draw(st.sampled_from(["--cell", "--optimizer", "--log-format"]))
        argv = ["train", flag, draw(st.sampled_from(["transformer", "", "LSTM ", "adamax", "xml"]))]
    elif kind == "flag":
        argv = [
            draw(st.sampled_from(["train", "sample", "eval", "tasks", "bench"])),
            draw(st.sampled_from(["--frobnicate", "--hidden_size=3", "-z", "--cellz=lstm"])),
        ]
        if argv[0] in ("sample", "eval"):
            argv.insert(1, str(run))
    elif kind == "path":
        argv = [
            "train",
            "--data",
            draw(
                st.sampled_from(
                    [
                        "/no/such/file",
                        str(root / "binary.txt"),
                        str(root / "empty.txt"),
                        str(root / "fuzz-missing-dir") + "/",
                        str(root / "nul.txt"),
                        str(root / "utf16.txt"),
                        str(root / "latin1.txt"),
                        str(root / "pictures"),
                    ]
                )
            ),
        ]
    elif kind == "config":
        argv = [
            "train",
            "--config",
            str(
                root
                / draw(
                    st.sampled_from(
                        [
                            "bad.toml",
                            "typo.json",
                            "wrongtype.toml",
                            "none.yaml",
                            "corpus.txt",
                            "nan.toml",
                            "inf.json",
                            "huge.toml",
                            "list.yaml",
                        ]
                    )
                )
            ),
        ]
    elif kind == "taken":
        argv = ["train", "--data", str(corpus), "--out", str(run)]  # a run is there: refuse, never overwrite
    elif kind == "both":
        argv = ["train", "--out", str(run), "--resume", "--overwrite"]
    elif kind == "checkpoint":
        argv = [
            draw(st.sampled_from(["sample", "eval"])),
            str(root / draw(st.sampled_from(["evil.safetensors", "notes.txt", "nothing.safetensors", "corpus.txt"]))),
        ]
    elif kind == "sample":
        flag, value = draw(
            st.sampled_from(
                [
                    ("--length", "0"),
                    ("--length", "-3"),
                    ("--temperature", "0"),
                    ("--top-k", "0"),
                    ("--top-p", "1.5"),
                    ("--top-p", "0"),
                    ("--beam-width", "0"),
                    ("--method", "magic"),
                    ("--prime", "\u2603 snowman"),
                ]
            )
        )
        argv = ["sample", str(run), flag, value]
    elif kind == "eval":
        argv = [
            "eval",
            str(run),
            *draw(
                st.sampled_from([["--split", "train"], ["--data", "/no/such"], ["--data", str(root / "binary.txt")]])
            ),
        ]
    elif kind == "bench":
        argv = [
            "bench",
            *draw(
                st.sampled_from([["--size", "1,2,3"], ["--size", "0,1,1,1"], ["--cells", "nope"], ["--repeats", "x"]])
            ),
        ]
    else:
        argv = [draw(st.sampled_from(["frobnicate", "--version-please", "trian", "TRAIN"]))]
    extra = draw(st.lists(st.sampled_from(["--seed", "3", "--no-progress", "--json"]), max_size=2))
    if argv[0] == "train" and draw(st.booleans()):
        argv = argv + [e for e in extra if e != "3"]
    return argv


def test_two_hundred_bad_invocations_fail_cleanly(world, capsys):
    root, corpus, run = world
    before = digest(run)
    seen = []

    @settings(max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.data())
    def check(data):
        argv = data.draw(bad_invocation(root, corpus, run))
        seen.append(argv)
        code = main(argv)
        captured = capsys.readouterr()
        assert code == 2, (argv, captured.err)
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in captured.err, (argv, captured.err)
        assert digest(run) == before, argv

    check()
    assert len(seen) >= 200
    assert not (root / "never").exists()  # no refused run left a folder behind
    assert not (root / "PWNED").exists()  # the pickle was never run
