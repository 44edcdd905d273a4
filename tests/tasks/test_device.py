"""Devices for the tasks and the CLI: the ``device`` setting (parsed, resolved, refused when this
machine lacks it), :func:`to_device` on nested batches, and every task trained and evaluated on
an explicit device.

On the CPU: the setting and its errors, ``to_device`` (identity where the data already is; a move
to the ``meta`` device reaches every tensor of a real batch of every task), and each task run
through :func:`run_task` with ``device="cpu"``, its first logged loss equal to the task's step on
the same model and batch computed directly. The CUDA tests (skipped without a CUDA device) run
every task on ``cuda`` against the same run on the CPU, the CLI end to end, and resumes across
devices.
"""

import collections
import dataclasses
import json
import random
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

from rnnkit.checkpoint import read_meta
from rnnkit.cli import main
from rnnkit.tasks import TASKS, load_run, run_task
from rnnkit.tasks.base import RESUME_MAY_CHANGE, TaskConfig
from rnnkit.tasks.config import check_config
from rnnkit.train import Chunk, seed_everything
from rnnkit.train.device import DEVICE_CHOICES, check_device, model_device, resolve_device, to_device
from tests.tasks.test_tagging import python_source

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


# -- the setting --------------------------------------------------------------------------------------
@pytest.fixture
def no_cuda(monkeypatch):
    """This machine as one without CUDA, whatever it has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.fixture
def two_gpus(monkeypatch):
    """This machine as one with two CUDA devices (only resolve_device is asked; nothing runs there)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_auto_is_the_cpu_without_cuda_and_cuda_with_it(no_cuda):
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_auto_and_cuda_indices_on_a_machine_with_two_gpus(two_gpus):
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(
        ValueError, match=r"device 'cuda:2' asked for, but this machine has 2 CUDA device\(s\): cuda:0 … cuda:1"
    ):
        resolve_device("cuda:2")


@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_on_a_machine_without_it_is_refused_not_replaced_by_the_cpu(no_cuda, spec):
    with pytest.raises(
        ValueError, match=rf"device '{spec}' asked for, but CUDA is not available here: .*use device 'cpu' or 'auto'"
    ):
        resolve_device(spec)


@pytest.mark.parametrize(
    "spec", ["gpu", "CUDA", "cuda:", "cuda:-1", "cuda:x", "cpu:0", "auto:1", "", " cpu", "mps", "meta", 0, None]
)
def test_unparseable_settings_are_refused_naming_the_value_and_the_choices(spec):
    message = f"device must be one of {', '.join(DEVICE_CHOICES)} (N a GPU index), got {spec!r}"
    with pytest.raises(ValueError) as caught:
        check_device(spec)
    assert str(caught.value) == message
    with pytest.raises(ValueError, match="device must be one of"):
        resolve_device(spec)


def test_the_task_config_checks_the_spelling_only_and_a_resume_may_change_the_device(no_cuda):
    assert TaskConfig().device == "auto"
    TaskConfig(device="cuda:1").check()  # a config written for a GPU machine still loads (and its checkpoints)
    with pytest.raises(ValueError, match="got 'gpu'"):
        check_config(TaskConfig, {"device": "gpu"}).check()
    assert "device" in RESUME_MAY_CHANGE


# -- to_device ------------------------------------------------------------------------------------------
class Pair(NamedTuple):
    x: torch.Tensor
    n: int


@dataclasses.dataclass(frozen=True)
class Holder:
    a: torch.Tensor
    rest: list
    name: str = "h"


def nested():
    x, y, z = torch.randn(3, 2), torch.arange(4), torch.zeros(2, dtype=torch.bool)
    gen = torch.Generator()
    return {
        "pair": Pair(x, 7),
        "items": [y, (z, "s", None)],
        "holder": Holder(x, [y, 1.5]),
        "gen": gen,
        "ordered": collections.OrderedDict(t=z),
        "default": collections.defaultdict(list, t=y),
    }


def tensors_of(obj):
    """Every tensor inside obj (the same walk, written independently of to_device)."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in tensors_of(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in tensors_of(v)]
    if dataclasses.is_dataclass(obj):
        return [t for f in dataclasses.fields(obj) for t in tensors_of(getattr(obj, f.name))]
    return []


def test_to_device_where_the_data_is_returns_the_same_objects():
    batch = nested()
    assert to_device(batch, "cpu") is batch
    assert to_device(batch["pair"], torch.device("cpu")) is batch["pair"]
    moved = to_device(batch, "cpu")
    assert all(a is b for a, b in zip(tensors_of(moved), tensors_of(batch)))
    assert to_device(5, "meta") == 5 and to_device("text", "meta") == "text" and to_device(None, "meta") is None


def test_to_device_moves_every_tensor_and_keeps_the_structure_and_the_rest():
    batch = nested()
    moved = to_device(batch, "meta")
    assert len(tensors_of(moved)) == len(tensors_of(batch)) == 7
    assert all(t.device.type == "meta" for t in tensors_of(moved))
    assert all(t.device.type == "cpu" for t in tensors_of(batch))  # the input is not changed
    for a, b in zip(tensors_of(moved), tensors_of(batch)):
        assert (a.shape, a.dtype) == (b.shape, b.dtype)
    assert type(moved["pair"]) is Pair and moved["pair"].n == 7
    assert type(moved["items"]) is list and type(moved["items"][1]) is tuple and moved["items"][1][1:] == ("s", None)
    assert type(moved["holder"]) is Holder and moved["holder"].name == "h" and moved["holder"].rest[1] == 1.5
    assert moved["gen"] is batch["gen"]
    assert type(moved["ordered"]) is collections.OrderedDict
    assert type(moved["default"]) is collections.defaultdict and moved["default"].default_factory is list


def test_model_device_is_the_parameters_device():
    assert model_device(torch.nn.Linear(2, 3)) == torch.device("cpu")
    assert model_device(torch.nn.Linear(2, 3, device="meta")) == torch.device("meta")
    assert model_device(torch.nn.ReLU()) == torch.device("cpu")


# -- every task ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A folder of small Python files: the char-LM's corpus and the tagger's source."""
    root = tmp_path_factory.mktemp("py")
    rng = random.Random(0)
    for k in range(10):
        (root / f"m{k}.py").write_text(python_source(rng, 6))
    return root


RUN = dict(max_steps=3, max_time=None, eval_every=2, progress=False, seed=3)
TINY = {  # (task, settings): every task, and the step variants that take another path
    "charlm": (
        "charlm",
        dict(
            hidden_size=8, num_layers=2, embedding_size=4, seq_length=12, batch_size=4, holdout_every=3, sample_length=5
        ),
    ),
    "digits": ("digits", dict(hidden_size=6, batch_size=8, bidirectional=True)),
    "sunspots": ("sunspots", dict(hidden_size=4, window=8, horizon=3, batch_size=8)),
    "sunspots-k-ahead": ("sunspots", dict(hidden_size=4, window=8, horizon=3, batch_size=8, k_ahead=3)),
    "seq2seq": (
        "seq2seq",
        dict(
            n_train=64,
            n_val=12,
            n_test=12,
            max_digits=3,
            hidden_size=8,
            embedding_size=8,
            attention_size=8,
            batch_size=8,
            beam_width=2,
        ),
    ),
    "seq2seq-sampled": (
        "seq2seq",
        dict(
            n_train=64,
            n_val=12,
            n_test=12,
            max_digits=3,
            hidden_size=8,
            embedding_size=8,
            attention=False,
            context="both",
            batch_size=8,
            beam_width=2,
            teacher_schedule="constant",
            teacher_param=0.5,
        ),
    ),
    "tagging": ("tagging", dict(every=5, chunk_length=40, hidden_size=6, embedding_size=5, batch_size=4)),
    "caption": ("caption", dict(hidden_size=6, embedding_size=4, batch_size=8, beam_width=2, condition="both")),
    "adding": ("adding", dict(length=20, hidden_size=6, heldout_size=40, batch_size=8)),
    "temporal-order": ("temporal-order", dict(hidden_size=6, heldout_size=40, batch_size=8)),
    "copy": ("copy", dict(delay=5, hidden_size=6, heldout_size=40, batch_size=8)),
    "reber": ("reber", dict(hidden_size=6, training_size=16, heldout_size=16, batch_size=8)),
    "long-lag": ("long-lag", dict(p=8, q=8, variant="c", hidden_size=6, heldout_size=16, val_size=16, batch_size=8)),
    "two-sequence": (
        "two-sequence",
        dict(length=10, variant="c", hidden_size=6, heldout_size=16, val_size=16, batch_size=8),
    ),
    "multiplication": ("multiplication", dict(length=20, hidden_size=6, heldout_size=40, batch_size=8)),
}


def make_task(key, data, **settings):
    name, tiny = TINY[key]
    cls = TASKS[name]
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    corpus = "data" in fields and name != "seq2seq"  # seq2seq's data is a pairs file; its default is built in
    values = {**RUN, **tiny, **settings, **({"data": str(data)} if corpus else {})}
    return cls(check_config(cls.Config, values))


def train_losses(run: Path) -> list[float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["kind"] == "train"]


def first_batch(task):
    """The first training batch of a prepared task as the trainer hands it to the step (on the CPU;
    the long-lag tasks hand out an index and draw the batch in the step)."""
    source = task.batches()
    if hasattr(source, "set_epoch"):
        source.set_epoch(0)
    return next(iter(source))


def test_every_task_is_covered():
    assert {name for name, _ in TINY.values()} == set(TASKS)


@pytest.mark.parametrize("key", list(TINY))
def test_a_real_batch_of_every_task_moves_to_another_device_whole(key, data):
    task = make_task(key, data)
    task.prepare(lambda s: None)
    batch = first_batch(task)
    if isinstance(batch, int):  # a long-lag index: the batch its step draws and moves
        batch = task.batch(batch)
    before = tensors_of(batch)
    moved = to_device(batch, "meta")
    assert type(moved) is type(batch) and len(tensors_of(moved)) == len(before) > 0
    assert all(t.device.type == "meta" for t in tensors_of(moved))
    if isinstance(batch, Chunk):  # a NamedTuple: the fields keep their names
        assert moved._fields == batch._fields


@pytest.mark.parametrize("key", list(TINY))
def test_every_task_trains_and_evaluates_on_an_explicit_cpu(key, data, tmp_path):
    task = make_task(key, data, device="cpu", out=str(tmp_path / "run"))
    result = run_task(task, log=lambda s: None)
    assert result["device"] == "cpu" and result["steps"] == 3
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["device"] == "cpu"
    # the reference: the same model, batch and seeds, the task's step called directly
    ref = make_task(key, data, device="cpu")
    torch.manual_seed(ref.cfg.seed)
    ref.prepare(lambda s: None)
    model = ref.build_model().train()
    batch = first_batch(ref)
    seed_everything(ref.cfg.seed)
    expected = float(ref.step(model, batch).loss.detach())
    assert train_losses(tmp_path / "run")[0] == pytest.approx(expected, rel=1e-6, abs=1e-7)
    metrics = task.evaluate(load_run(tmp_path / "run", device="cpu")[1], "val")
    assert set(metrics) >= {"loss", task.metric}


def test_the_saved_config_keeps_auto_and_the_result_says_where_it_ran(data, tmp_path, no_cuda):
    task = make_task("digits", data, out=str(tmp_path / "run"))
    assert task.cfg.device == "auto"
    result = run_task(task, log=lambda s: None)
    assert result["device"] == "cpu"
    assert read_meta(tmp_path / "run" / "latest.safetensors")["config"]["device"] == "auto"


def test_load_run_puts_the_model_on_the_device_asked(data, tmp_path, no_cuda):
    run_task(make_task("digits", data, device="cpu", out=str(tmp_path / "run")), log=lambda s: None)
    for device in ("cpu", "auto", torch.device("cpu")):
        assert model_device(load_run(tmp_path / "run", device=device)[1]) == torch.device("cpu")
    _, model, _ = load_run(tmp_path / "run", device=torch.device("meta"))  # a torch.device is taken as it is
    assert {p.device.type for p in model.parameters()} == {"meta"}
    with pytest.raises(ValueError, match="CUDA is not available here"):
        load_run(tmp_path / "run", device="cuda")


# -- the command line ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cpu_run(data, tmp_path_factory):
    """A char-LM trained for 2 updates on the CPU through the CLI."""
    out = tmp_path_factory.mktemp("cli") / "run"
    code = main(
        [
            "train",
            "--data",
            str(data),
            "--out",
            str(out),
            "--hidden-size",
            "8",
            "--num-layers",
            "1",
            "--seq-length",
            "12",
            "--batch-size",
            "2",
            "--max-steps",
            "2",
            "--max-time",
            "none",
            "--no-progress",
            "--device",
            "cpu",
            "--sample-length",
            "5",
        ]
    )
    assert code == 0
    return out


@pytest.mark.parametrize(
    "command",
    [
        ["train", "digits", "--max-steps", "1", "--device", "cuda"],
        ["train", "--device", "cuda:0", "--max-steps", "1"],
        ["train", "digits", "--max-steps", "1", "--device", "cuda", "--nproc", "2"],
        ["sample", "RUN", "--device", "cuda"],
        ["eval", "RUN", "--device", "cuda:1"],
    ],
)
def test_cuda_asked_for_on_a_machine_without_it_exits_2_with_one_line(
    command, cpu_run, tmp_path, no_cuda, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # a train that went ahead would write runs/ here
    capsys.readouterr()
    code = main([str(cpu_run) if a == "RUN" else a for a in command])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "CUDA is not available here" in err and "use device 'cpu' or 'auto'" in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "command",
    [["train", "digits", "--device", "gpu"], ["sample", "RUN", "--device", "gpu"], ["eval", "RUN", "--device", "gpu"]],
)
def test_a_bad_device_exits_2_naming_it(command, cpu_run, capsys):
    capsys.readouterr()
    assert main([str(cpu_run) if a == "RUN" else a for a in command]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "device must be one of auto, cpu, cuda, cuda:N" in err and "'gpu'" in err


def test_sample_and_eval_on_an_explicit_cpu_equal_the_default(cpu_run, capsys, no_cuda):
    capsys.readouterr()
    assert main(["sample", str(cpu_run), "--length", "30", "--prime", "def"]) == 0
    default = capsys.readouterr().out
    assert main(["sample", str(cpu_run), "--length", "30", "--prime", "def", "--device", "cpu"]) == 0
    assert capsys.readouterr().out == default
    assert main(["eval", str(cpu_run), "--json"]) == 0
    a = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert main(["eval", str(cpu_run), "--json", "--device", "cpu"]) == 0
    b = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert a.pop("wall_time") >= 0 and b.pop("wall_time") >= 0 and a == b


def test_a_run_saved_as_cuda_resumes_on_a_machine_without_it_with_device_cpu(data, tmp_path, no_cuda, capsys):
    """A GPU server's run (its config says cuda) continued on a laptop: refused as it stands, one
    line naming the way out; resumed with --device cpu, which the checkpoint then records."""
    out = tmp_path / "run"
    run_task(make_task("digits", data, device="cuda", out=str(out), max_steps=2), log=lambda s: None, device="cpu")
    assert read_meta(out / "latest.safetensors")["config"]["device"] == "cuda"
    capsys.readouterr()
    assert main(["train", "digits", "--out", str(out), "--resume", "--max-steps", "4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "device 'cuda' asked for" in err and "use device 'cpu'" in err
    assert (
        main(["train", "digits", "--out", str(out), "--resume", "--max-steps", "4", "--device", "cpu", "--json"]) == 0
    )
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["steps"] == 4 and result["device"] == "cpu"
    assert read_meta(out / "latest.safetensors")["config"]["device"] == "cpu"


def test_help_of_train_sample_and_eval_shows_device(capsys):
    for command in (["train", "digits", "--help"], ["sample", "--help"], ["eval", "--help"]):
        with pytest.raises(SystemExit):
            main(command)
        text = capsys.readouterr().out
        assert "--device" in text and "cuda:N" in text


# -- on a GPU (skipped without one) ---------------------------------------------------------------------
@pytest.fixture
def exact_cuda(monkeypatch):
    """Float32 on the GPU without TF32, so a CUDA step matches the CPU's to float rounding."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


@CUDA
@pytest.mark.parametrize("key", list(TINY))
def test_every_task_on_cuda_starts_as_on_the_cpu(key, data, tmp_path, exact_cuda):
    results = {}
    for device in ("cpu", "cuda"):
        task = make_task(key, data, device=device, out=str(tmp_path / device))
        results[device] = run_task(task, log=lambda s: None)
        final = task.evaluate(load_run(tmp_path / device, device)[1], "val")
        assert set(final) >= {"loss", task.metric}
    assert results["cuda"]["device"].startswith("cuda") and results["cpu"]["device"] == "cpu"
    cpu, cuda = train_losses(tmp_path / "cpu"), train_losses(tmp_path / "cuda")
    assert len(cpu) == len(cuda) == 3
    assert cuda[0] == pytest.approx(cpu[0], rel=1e-4, abs=1e-5)  # the same weights and batch: the first step agrees
    assert set(results["cuda"]) == set(results["cpu"])


@CUDA
def test_cli_train_and_sample_on_cuda(data, tmp_path, capsys, exact_cuda):
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--data",
            str(data),
            "--out",
            str(out),
            "--hidden-size",
            "8",
            "--num-layers",
            "1",
            "--seq-length",
            "12",
            "--batch-size",
            "2",
            "--max-steps",
            "3",
            "--max-time",
            "none",
            "--no-progress",
            "--device",
            "cuda",
            "--sample-length",
            "5",
            "--json",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["device"].startswith("cuda") and result["steps"] == 3
    assert read_meta(out / "latest.safetensors")["config"]["device"] == "cuda"
    assert main(["sample", str(out), "--device", "cuda", "--length", "40", "--prime", "def", "--seed", "4"]) == 0
    on_cuda = capsys.readouterr().out
    assert main(["sample", str(out), "--device", "cpu", "--length", "40", "--prime", "def", "--seed", "4"]) == 0
    on_cpu = capsys.readouterr().out
    assert on_cuda.startswith("def") and len(on_cuda) == len(on_cpu)
    assert main(["eval", str(out), "--device", "cuda", "--json"]) == 0
    a = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert main(["eval", str(out), "--device", "cpu", "--json"]) == 0
    b = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)


@CUDA
@pytest.mark.parametrize("first, then", [("cpu", "cuda"), ("cuda", "cpu")])
def test_a_run_resumed_on_the_other_device_continues_as_on_one(first, then, data, tmp_path, capsys, exact_cuda):
    """Two updates on one device, two more after --resume on the other, against four on the CPU:
    weights, Adam's moments and the carried truncated-BPTT state all cross devices."""
    common = [
        "--data",
        str(data),
        "--hidden-size",
        "8",
        "--num-layers",
        "2",
        "--seq-length",
        "12",
        "--batch-size",
        "2",
        "--max-time",
        "none",
        "--no-progress",
        "--eval-every",
        "2",
        "--sample-length",
        "5",
    ]
    assert main(["train", *common, "--out", str(tmp_path / "whole"), "--max-steps", "4", "--device", "cpu"]) == 0
    assert main(["train", *common, "--out", str(tmp_path / "split"), "--max-steps", "2", "--device", first]) == 0
    assert (
        main(["train", *common, "--out", str(tmp_path / "split"), "--max-steps", "4", "--device", then, "--resume"])
        == 0
    )
    capsys.readouterr()
    whole, split = train_losses(tmp_path / "whole"), train_losses(tmp_path / "split")
    assert len(whole) == len(split) == 4
    assert split == pytest.approx(whole, rel=2e-3, abs=1e-4)  # Adam's first updates amplify rounding near 0
    assert read_meta(tmp_path / "split" / "latest.safetensors")["config"]["device"] == then
