"""Checkpoints: exact round trips, bit-identical resume, refusal of pickles and damaged files, atomicity."""

from __future__ import annotations

import copy
import hashlib
import json
import multiprocessing
import os
import pickle
import random
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

from rnnkit.cells.registry import make_cell
from rnnkit.checkpoint import (
    CheckpointError,
    checkpoint_paths,
    leftover_temp_files,
    load_checkpoint,
    read_meta,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from rnnkit.compose import Stack
from tests.helpers import randomize_

V = 7  # vocabulary of the tiny language model


class TinyLM(nn.Module):
    """Embedding (V, E) → stack of rnnkit cells with dropout between layers → head (H, V); a token counter buffer."""

    def __init__(
        self, cell: str = "lstm", hidden: int = 6, layers: int = 2, dropout: float = 0.25, seed: int = 0
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(V, 4)
        self.rnn = Stack.build(lambda i, h: make_cell(cell, i, h), 4, hidden, layers, dropout=dropout)
        self.head = nn.Linear(hidden, V)
        self.register_buffer("seen", torch.zeros((), dtype=torch.int64))
        randomize_(self, seed=seed)

    def forward(self, tokens):
        y, _ = self.rnn(self.embed(tokens))  # (T, B, H)
        return self.head(y)  # (T, B, V)


def snapshot(module: nn.Module) -> dict:
    state = module.state_dict()
    return type(state)((k, v.detach().clone()) for k, v in state.items())


def assert_identical(a, b, where: str = "value") -> None:
    """Same structure, same Python types, tensors with equal dtype, shape and bits."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, (
            f"{where}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"
        )
        assert torch.equal(a, b), f"{where}: tensors differ"
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{where}: keys {list(a)} vs {list(b)}"
        for k in a:
            assert_identical(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: length {len(a)} vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and np.isnan(a):
        assert np.isnan(b), where
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


@pytest.fixture
def saved(tmp_path):
    """A checkpoint of a TinyLM (LSTM, 2 layers) with RNG states and meta; returns (path, model)."""
    model = TinyLM(seed=1)
    path = save_checkpoint(
        tmp_path / "latest.safetensors", model=model, meta={"cell": "lstm", "vocab": list("abcdefg"), "step": 12}
    )
    return path, model


# --------------------------------------------------------------------------- round trips


def test_round_trip_restores_every_tensor_and_the_meta(tmp_path):
    model = TinyLM(seed=1)
    # buffers of other dtypes and shapes: 0-dim, bool, bfloat16, float64, empty
    model.register_buffer("mask", torch.rand(5, generator=torch.Generator().manual_seed(3)) > 0.5)
    model.register_buffer("brain", torch.randn(2, 3, generator=torch.Generator().manual_seed(4)).to(torch.bfloat16))
    model.register_buffer("wide", torch.randn(3, generator=torch.Generator().manual_seed(5), dtype=torch.float64))
    model.register_buffer("none_yet", torch.zeros(0, 4))
    model.seen.fill_(123456789012)
    meta = {
        "config": {"cell": "lstm", "hidden": 6, "lr": 2e-3, "betas": (0.9, 0.99), "clip": None},
        "vocab": ["a", "é", "\n", "字", "\x00"],
        "step": 12,
        "best_val": float("inf"),
        "task": "charlm",
        "data": {"epoch": 1, "offset": 4096},
        "flags": [True, False],
    }
    path = save_checkpoint(tmp_path / "run" / "latest.safetensors", model=model, meta=meta)

    fresh = TinyLM(seed=2)
    for name in ("mask", "brain", "wide", "none_yet"):
        fresh.register_buffer(name, torch.zeros_like(getattr(model, name)))
    got = load_checkpoint(path, model=fresh)

    expected_meta = json.loads(json.dumps(meta))  # JSON: the tuple comes back as a list
    assert got == expected_meta and read_meta(path) == expected_meta
    assert_identical(fresh.state_dict(), model.state_dict(), "state_dict")


def test_tied_weights_are_saved_and_stay_tied(tmp_path):
    model = TinyLM(seed=1)
    model.head = nn.Linear(4, V)
    model.head.weight = model.embed.weight  # (V, 4) shared: safetensors refuses shared storage as is
    path = save_checkpoint(tmp_path / "tied.safetensors", model=model)
    fresh = TinyLM(seed=2)
    fresh.head = nn.Linear(4, V)
    fresh.head.weight = fresh.embed.weight
    load_checkpoint(path, model=fresh)
    assert_identical(fresh.state_dict(), model.state_dict())
    assert fresh.head.weight is fresh.embed.weight


def batches(gen: torch.Generator, n: int) -> list[torch.Tensor]:
    return [torch.randint(0, V, (6, 2), generator=gen) for _ in range(n)]  # (T + 1, B) tokens


def train(model, opt, sched, gen, steps: int) -> list[float]:
    """Steps of next-token training with dropout on; batches drawn from the data generator ``gen``."""
    model.train()
    losses = []
    for tokens in batches(gen, steps):
        logits = model(tokens[:-1])  # (T, B, V)
        loss = F.cross_entropy(logits.reshape(-1, V), tokens[1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            sched.step(loss.item() + random.random())  # python's RNG feeds the schedule too
        else:
            sched.step()
        with torch.no_grad():
            model.seen += tokens.numel()
        losses.append(loss.item())
    return losses


OPTIMIZERS = {
    "adam-amsgrad+onecycle": (
        lambda p: torch.optim.Adam(p, lr=1e-2, amsgrad=True),
        lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=5e-2, total_steps=20),
    ),
    "sgd-nesterov+step": (
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4),
        lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5),
    ),
    "adamw+plateau": (
        lambda p: torch.optim.AdamW(p, lr=1e-2),
        lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, patience=0, factor=0.5),
    ),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_resume_continues_bit_identically(tmp_path, name):
    make_opt, make_sched = OPTIMIZERS[name]
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    model = TinyLM(seed=1)
    opt = make_opt(model.parameters())
    sched = make_sched(opt)
    data = torch.Generator().manual_seed(7)
    train(model, opt, sched, data, steps=2)
    np.random.normal(), random.gauss(0, 1)  # leave cached Gaussians in numpy's and python's states
    path = save_checkpoint(
        tmp_path / "latest.safetensors",
        model=model,
        optimizer=opt,
        scheduler=sched,
        meta={"step": 2},
        generators={"data": data},
    )
    opt_state, sched_state = copy.deepcopy(opt.state_dict()), copy.deepcopy(sched.state_dict())  # training mutates them
    draws = (np.random.normal(), random.gauss(0, 1))
    reference = train(model, opt, sched, data, steps=3)  # the uninterrupted run

    # a new process would start from other weights and other RNG states
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    fresh = TinyLM(seed=5)
    fresh_opt = make_opt(fresh.parameters())
    fresh_sched = make_sched(fresh_opt)
    fresh_data = torch.Generator().manual_seed(99)
    meta = load_checkpoint(
        path, model=fresh, optimizer=fresh_opt, scheduler=fresh_sched, restore_rng=True, generators={"data": fresh_data}
    )
    assert meta == {"step": 2}
    assert_identical(fresh_opt.state_dict(), opt_state, "optimizer.state_dict()")
    assert_identical(fresh_sched.state_dict(), sched_state, "scheduler.state_dict()")
    assert (np.random.normal(), random.gauss(0, 1)) == draws  # cached Gaussians restored

    resumed = train(fresh, fresh_opt, fresh_sched, fresh_data, steps=3)
    assert resumed == reference  # same data order, dropout masks and updates: bit for bit
    assert_identical(fresh.state_dict(), model.state_dict(), "parameters after resuming")
    assert_identical(fresh_opt.state_dict(), opt.state_dict(), "optimizer after resuming")


def test_rng_state_round_trip_and_is_json():
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    np.random.normal(), random.gauss(0, 1)
    state = rng_state()
    json.dumps(state["numpy"]), json.dumps(state["python"])  # numpy and python states are plain JSON
    assert state["torch"].dtype == torch.uint8
    first = (
        torch.rand(4),
        F.dropout(torch.ones(8), 0.5),
        np.random.rand(3),
        np.random.normal(),
        random.random(),
        random.gauss(0, 1),
    )
    torch.manual_seed(4), np.random.seed(4), random.seed(4)
    set_rng_state(state)
    again = (
        torch.rand(4),
        F.dropout(torch.ones(8), 0.5),
        np.random.rand(3),
        np.random.normal(),
        random.random(),
        random.gauss(0, 1),
    )
    torch.testing.assert_close(again[0], first[0], rtol=0, atol=0)
    torch.testing.assert_close(again[1], first[1], rtol=0, atol=0)
    np.testing.assert_array_equal(again[2], first[2])
    assert again[3:] == first[3:]


def test_set_rng_state_checks_every_part_before_setting_any():
    state = rng_state()
    state["python"] = [3, [1, 2, 3], None]  # a Mersenne twister needs 625 words
    torch.manual_seed(5), np.random.seed(5)
    before = (torch.get_rng_state(), np.random.get_state()[1].copy())
    with pytest.raises(ValueError, match="rng state 'python'"):
        set_rng_state(state)
    assert torch.equal(torch.get_rng_state(), before[0])
    np.testing.assert_array_equal(np.random.get_state()[1], before[1])


# --------------------------------------------------------------------------- never unpickle


class _Payload:
    """Unpickling this creates the file ``marker`` — what a malicious checkpoint would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("kind", ["protocol-0", "protocol-2", "protocol-4", "protocol-5", "torch.save"])
def test_pickles_are_refused_and_never_run(tmp_path, kind):
    def write(path: Path, marker: Path) -> None:
        if kind == "torch.save":
            torch.save({"model": _Payload(str(marker))}, path)
        else:
            path.write_bytes(pickle.dumps({"model": _Payload(str(marker))}, protocol=int(kind[-1])))

    # the payload is live: unpickling it does create its marker
    control, control_marker = tmp_path / "control.pt", tmp_path / "control-ran"
    write(control, control_marker)
    if kind == "torch.save":
        torch.load(control, weights_only=False)
    else:
        pickle.loads(control.read_bytes())
    assert control_marker.exists()

    path, marker = tmp_path / "latest.safetensors", tmp_path / "payload-ran"
    write(path, marker)
    model = TinyLM(seed=1)
    before = snapshot(model)
    # protocol 0 has no magic bytes: it is refused as "not safetensors", still saying why
    expected = "never unpickles" if kind == "protocol-0" else r"looks like a pickle.*rnnkit never unpickles"
    with pytest.raises(CheckpointError, match=expected):
        load_checkpoint(path, model=model, restore_rng=True)
    with pytest.raises(CheckpointError, match=expected):
        read_meta(path)
    assert not marker.exists()
    assert_identical(model.state_dict(), before)


def test_a_successful_load_never_unpickles(tmp_path, monkeypatch):
    model = TinyLM(seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, 2)
    train(model, opt, sched, torch.Generator().manual_seed(0), steps=2)
    path = save_checkpoint(tmp_path / "c.safetensors", model=model, optimizer=opt, scheduler=sched, meta={"a": 1})

    def forbidden(*args, **kwargs):
        raise AssertionError("unpickling during a checkpoint load")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    fresh = TinyLM(seed=2)
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=1e-2)
    fresh_sched = torch.optim.lr_scheduler.StepLR(fresh_opt, 2)
    load_checkpoint(path, model=fresh, optimizer=fresh_opt, scheduler=fresh_sched, restore_rng=True)
    assert_identical(fresh.state_dict(), model.state_dict())


# --------------------------------------------------------------------------- damaged files


def header_end(data: bytes) -> int:
    return 8 + int.from_bytes(data[:8], "little")


def test_truncated_files_are_refused_and_nothing_is_loaded(saved, tmp_path):
    path, _ = saved
    data = path.read_bytes()
    end = header_end(data)
    model = TinyLM(seed=2)
    before = snapshot(model)
    cut_path = tmp_path / "cut.safetensors"
    for cut in (0, 3, 8, 9, end // 2, end - 1, end, end + 1, (end + len(data)) // 2, len(data) - 1):
        cut_path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=r"cut\.safetensors: (truncated|corrupted)"):
            load_checkpoint(cut_path, model=model)
        if cut < end:
            with pytest.raises(CheckpointError, match="truncated"):
                read_meta(cut_path)
    assert_identical(model.state_dict(), before)


@pytest.mark.parametrize("mask", [0x01, 0x80])  # a character changed (still ASCII), or made invalid UTF-8
def test_flipped_header_bytes_are_refused(saved, tmp_path, mask):
    path, _ = saved
    data = bytearray(path.read_bytes())
    model = TinyLM(seed=2)
    before = snapshot(model)
    bad = tmp_path / "bad.safetensors"
    # the length field, then header bytes at random (all ~15 kB would take long: mostly RNG words)
    for i in [*range(8), *random.Random(mask).sample(range(8, header_end(data)), 300)]:
        flipped = bytearray(data)
        flipped[i] ^= mask
        bad.write_bytes(flipped)
        with pytest.raises(CheckpointError, match="bad.safetensors: (.*corrupted|truncated|not an rnnkit checkpoint)"):
            load_checkpoint(bad, model=model, restore_rng=True)
    assert_identical(model.state_dict(), before)


def test_flipped_tensor_bytes_are_refused(saved, tmp_path):
    path, _ = saved
    data = path.read_bytes()
    model = TinyLM(seed=2)
    before = snapshot(model)
    rng = random.Random(0)
    bad = tmp_path / "bad.safetensors"
    for i in rng.sample(range(header_end(data), len(data)), 25):
        flipped = bytearray(data)
        flipped[i] ^= 1 << rng.randrange(8)  # one bit: a float changes by a rounding error, or a sign
        bad.write_bytes(flipped)
        with pytest.raises(CheckpointError, match="tensor checksum mismatch"):
            load_checkpoint(bad, model=model)
    assert_identical(model.state_dict(), before)


def rewrite_header(path: Path, out: Path, edit, rehash: bool = False) -> None:
    """Re-save a checkpoint's tensors as valid safetensors with ``edit(doc)`` applied to its JSON document.

    ``rehash``: recompute the header checksum as the module docstring defines it, as a writer of
    that document would have.
    """
    tensors = safetensors.torch.load(path.read_bytes())
    doc = json.loads(safetensors.safe_open(str(path), "pt").metadata()["rnnkit"])
    edit(doc)
    if rehash:
        checksum = doc.pop("checksum")
        canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
        doc["checksum"] = dict(checksum, header=hashlib.sha256(canonical).hexdigest())
    safetensors.torch.save_file(tensors, str(out), metadata={"rnnkit": json.dumps(doc)})


def test_a_hand_edited_header_is_refused(saved, tmp_path):
    path, _ = saved
    edited = tmp_path / "edited.safetensors"
    rewrite_header(path, edited, lambda doc: doc["meta"].update(cell="gru"))
    model = TinyLM(seed=2)
    before = snapshot(model)
    with pytest.raises(CheckpointError, match="edited.safetensors: corrupted: header checksum mismatch"):
        load_checkpoint(edited, model=model)
    with pytest.raises(CheckpointError, match="header checksum mismatch"):
        read_meta(edited)
    assert_identical(model.state_dict(), before)


def test_other_files_are_refused_with_what_they_are(saved, tmp_path):
    path, model = saved
    plain = tmp_path / "plain.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(plain))
    newer, foreign = tmp_path / "newer.safetensors", tmp_path / "foreign.safetensors"
    rewrite_header(path, newer, lambda doc: doc.update(version=2), rehash=True)
    rewrite_header(path, foreign, lambda doc: doc.update(format="somebody.else"), rehash=True)
    damaged = tmp_path / "damaged.safetensors"
    rewrite_header(path, damaged, lambda doc: doc.update(version=0))
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    noise = tmp_path / "noise.safetensors"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    cases = [
        (plain, "not an rnnkit checkpoint: a safetensors file without 'rnnkit' metadata"),
        (newer, r"newer.safetensors: format version 2, but this rnnkit reads version 1 \(written by a newer rnnkit"),
        (damaged, r"damaged.safetensors: corrupted, or format version 0, but this rnnkit reads version 1"),
        (foreign, "not an rnnkit checkpoint: metadata format 'somebody.else'"),
        (empty, "truncated, or not a checkpoint: 0 bytes"),
        (noise, "not an rnnkit checkpoint: not a safetensors file"),
        (tmp_path / "missing.safetensors", "missing.safetensors: no such file"),
        (tmp_path, "is a folder, not a checkpoint file"),
    ]
    fresh = TinyLM(seed=2)
    before = snapshot(fresh)
    for bad, message in cases:
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(bad, model=fresh)
        with pytest.raises(CheckpointError, match=message):
            read_meta(bad)
    assert_identical(fresh.state_dict(), before)


# --------------------------------------------------------------------------- mismatches


def test_a_model_that_does_not_fit_is_refused_naming_every_difference(saved):
    path, _ = saved
    gru = TinyLM(cell="gru", seed=2)  # 3 gates instead of 4
    before = snapshot(gru)
    with pytest.raises(
        CheckpointError,
        match=r"model \(TinyLM\) does not fit: shape mismatch: "
        r"rnn\.layers\.0\.cell\.weight_ih: checkpoint \(24, 4\), model \(18, 4\); "
        r"rnn\.layers\.0\.cell\.weight_hh: checkpoint \(24, 6\), model \(18, 6\)",
    ):
        load_checkpoint(path, model=gru)
    assert_identical(gru.state_dict(), before)

    wider = TinyLM(hidden=8, seed=2)
    with pytest.raises(CheckpointError, match=r"head\.weight: checkpoint \(7, 6\), model \(7, 8\)"):
        load_checkpoint(path, model=wider)

    shallow, deeper = TinyLM(layers=1, seed=2), TinyLM(layers=3, seed=2)
    with pytest.raises(
        CheckpointError, match=r"in the checkpoint but not in the model: rnn\.layers\.1\.cell\.weight_ih, "
    ):
        load_checkpoint(path, model=shallow)
    with pytest.raises(CheckpointError, match=r"missing from the checkpoint: rnn\.layers\.2\.cell\.weight_ih, "):
        load_checkpoint(path, model=deeper)
    elman = TinyLM(cell="elman", seed=2)
    with pytest.raises(CheckpointError, match=r"weight_ih: checkpoint \(24, 4\), model \(6, 4\)"):
        load_checkpoint(path, model=elman)


def test_expect_names_the_key_the_checkpoint_value_and_the_expected_one(saved):
    path, _ = saved
    model = TinyLM(seed=2)
    before = snapshot(model)
    with pytest.raises(CheckpointError, match=r"meta\['cell'\]: checkpoint 'lstm', expected 'gru'"):
        load_checkpoint(path, model=model, expect={"cell": "gru"})
    with pytest.raises(
        CheckpointError, match=r"meta\['vocab'\]: first difference at \[2\]: checkpoint 'c', expected 'x'"
    ):
        load_checkpoint(path, model=model, expect={"vocab": list("abxdefg")})
    with pytest.raises(CheckpointError, match=r"meta\['vocab'\]: checkpoint has 7 entries, expected 8"):
        load_checkpoint(path, model=model, expect={"vocab": list("abcdefgh")})
    with pytest.raises(CheckpointError, match=r"meta\['task'\] is missing from the checkpoint \(expected 'charlm'\)"):
        load_checkpoint(path, model=model, expect={"task": "charlm"})
    with pytest.raises(CheckpointError, match=r"meta\['step'\]: checkpoint 12, expected True"):
        load_checkpoint(path, model=model, expect={"step": True})
    assert_identical(model.state_dict(), before)
    # every mismatch in one message
    with pytest.raises(CheckpointError, match=r"meta\['cell'\].*meta\['step'\].*does not fit"):
        load_checkpoint(path, model=TinyLM(cell="gru"), expect={"cell": "gru", "step": 3})
    assert (
        load_checkpoint(path, model=model, expect={"cell": "lstm", "vocab": tuple("abcdefg"), "step": 12.0})["step"]
        == 12
    )


def test_expect_matches_nested_dicts_as_subsets(tmp_path):
    path = save_checkpoint(
        tmp_path / "c.safetensors", model=nn.Linear(2, 3), meta={"config": {"cell": "lstm", "hidden": 6, "lr": 1e-3}}
    )
    assert load_checkpoint(path, expect={"config": {"cell": "lstm"}})["config"]["lr"] == 1e-3
    with pytest.raises(CheckpointError, match=r"meta\['config'\]\['hidden'\]: checkpoint 6, expected 8"):
        load_checkpoint(path, expect={"config": {"cell": "lstm", "hidden": 8}})


def test_a_part_that_does_not_fit_loads_nothing_at_all(tmp_path):
    model = TinyLM(seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, 2)
    train(model, opt, sched, torch.Generator().manual_seed(0), steps=2)
    full = save_checkpoint(tmp_path / "full.safetensors", model=model, optimizer=opt, scheduler=sched)
    bare = save_checkpoint(tmp_path / "bare.safetensors", model=model, rng=False)

    fresh = TinyLM(seed=2)  # fits the checkpoint: only the other part is wrong
    before = snapshot(fresh)
    sgd = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    adam = torch.optim.Adam(fresh.parameters(), lr=1e-2)
    cases = [
        (full, dict(optimizer=sgd), "optimizer: checkpoint has Adam state, the given optimizer is SGD"),
        (
            full,
            dict(optimizer=torch.optim.Adam(TinyLM(hidden=8).parameters())),
            r"optimizer param_groups\[0\] parameter 1: checkpoint \(24, 4\), optimizer \(32, 4\)",
        ),
        (
            full,
            dict(
                optimizer=torch.optim.Adam(
                    [{"params": list(fresh.parameters())[:2]}, {"params": list(fresh.parameters())[2:]}]
                )
            ),
            "optimizer: checkpoint has 1 parameter group.s., the optimizer 2",
        ),
        (
            full,
            dict(optimizer=adam, scheduler=torch.optim.lr_scheduler.ExponentialLR(adam, 0.9)),
            "scheduler: checkpoint has StepLR state, the given scheduler is ExponentialLR",
        ),
        (bare, dict(optimizer=adam), r"the checkpoint holds no optimizer state \(saved without optimizer=\)"),
        (bare, dict(restore_rng=True), r"the checkpoint holds no RNG states \(saved with rng=False\)"),
        (full, dict(generators={"data": torch.Generator()}), "the checkpoint holds no generator 'data'"),
    ]
    adam_state = copy.deepcopy(adam.state_dict())
    torch.manual_seed(11)
    rng_before = torch.get_rng_state()
    for path, kwargs, message in cases:
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(path, model=fresh, **kwargs)
        assert_identical(fresh.state_dict(), before, f"model after {message!r}")
    assert_identical(adam.state_dict(), adam_state)
    assert torch.equal(torch.get_rng_state(), rng_before)


# --------------------------------------------------------------------------- what cannot be saved


class _Schedule:
    """An LR multiplier object whose state (a set) is not JSON: LambdaLR saves its __dict__."""

    def __init__(self) -> None:
        self.milestones = {3, 5}

    def __call__(self, epoch: int) -> float:
        return 0.5 if epoch in self.milestones else 1.0


def test_values_that_are_not_json_are_refused_before_anything_is_written(tmp_path):
    path = tmp_path / "latest.safetensors"
    model = TinyLM(seed=1)
    save_checkpoint(path, model=model, meta={"version": 1})
    stamp = path.read_bytes()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cases = [
        (
            dict(meta={"config": {"lr": torch.tensor(0.1)}}),
            r"meta\['config'\]\['lr'\] is a torch.float32 tensor of shape \(\), which is not JSON \(store tensors",
        ),
        (dict(meta={"loss": np.float32(1.5)}), r"meta\['loss'\] is a numpy.float32, which is not JSON \(convert it"),
        (dict(meta={"vocab": {1: "a"}}), r"meta\['vocab'\]: key 1 is an int; JSON objects need string keys"),
        (dict(meta={"seen": {"a", "b"}}), r"meta\['seen'\] is a set, which is not JSON"),
        (dict(meta={"out": tmp_path}), r"meta\['out'\] is a pathlib\..*Path, which is not JSON"),
        (dict(meta=[1, 2]), "meta must be a dict, got a list"),
        (
            dict(optimizer=opt, scheduler=torch.optim.lr_scheduler.LambdaLR(opt, _Schedule())),
            r"scheduler.state_dict\(\)\['lr_lambdas'\]\[0\]\['milestones'\] is a set, which cannot be stored as JSON "
            r"\(rnnkit never pickles",
        ),
    ]
    for kwargs, message in cases:
        with pytest.raises(CheckpointError, match=message):
            save_checkpoint(path, model=model, **kwargs)
    assert path.read_bytes() == stamp
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.safetensors"]
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got a collections.OrderedDict"):
        save_checkpoint(path, model=model.state_dict())


# --------------------------------------------------------------------------- atomic writes


def test_a_failed_write_keeps_the_previous_checkpoint_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "latest.safetensors"
    model = TinyLM(seed=1)
    save_checkpoint(path, model=model, meta={"version": 1})
    save_checkpoint(path, model=model, meta={"version": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.safetensors"]  # no stray temp file

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, model=TinyLM(seed=3), meta={"version": 3})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.safetensors"]
    fresh = TinyLM(seed=2)
    assert load_checkpoint(path, model=fresh) == {"version": 2}
    assert_identical(fresh.state_dict(), model.state_dict())


def versioned_model(version: int) -> nn.Module:
    """A ~1 MB model whose every weight is determined by ``version``; a mix of two versions is detectable."""
    model = nn.Linear(256, 512, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) + version)
    return model


def _save_versions(path: str, first: int, block_before_rename: bool) -> None:
    """Child process: save versions first, first+1, … into ``path`` until killed (or 30 s pass)."""
    torch.set_num_threads(1)  # a forked child must not use the parent's thread pool
    if block_before_rename:
        save_checkpoint(path, model=versioned_model(first), meta={"version": first})

        def hang(src, dst):  # the temporary file is complete and fsynced; die before the rename
            Path(path + ".blocked").touch()
            time.sleep(30)

        os.replace = hang
        first += 1
    deadline = time.monotonic() + 30
    version = first
    while time.monotonic() < deadline:
        save_checkpoint(path, model=versioned_model(version), meta={"version": version})
        version += 1
    os._exit(0)


def check_whole(path: Path, at_least: int) -> int:
    """The checkpoint loads, is one complete version >= at_least, and every weight is that version's."""
    model = nn.Linear(256, 512, dtype=torch.float64)
    version = load_checkpoint(path, model=model)["version"]
    assert version >= at_least
    assert_identical(model.state_dict(), versioned_model(version).state_dict(), f"version {version}")
    return version


def wait_for(condition, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.002)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork and SIGKILL")
def test_sigkill_at_random_moments_leaves_a_whole_checkpoint(tmp_path):
    path = checkpoint_paths(tmp_path)["latest"]
    ctx = multiprocessing.get_context("fork")
    rng = random.Random(0)
    version = 0
    for kill in range(6):
        first = (kill + 1) * 1000
        child = ctx.Process(target=_save_versions, args=(str(path), first, False), daemon=True)
        child.start()
        try:
            wait_for(
                lambda first=first: path.exists() and read_meta(path)["version"] >= first, "the child's first save"
            )
            time.sleep(rng.uniform(0.0, 0.05))  # several saves in flight: the kill lands anywhere
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.join()
        assert child.exitcode == -signal.SIGKILL
        version = check_whole(path, at_least=first)
        # a killed save may leave its temporary file; it is never the checkpoint
        assert all(p.name.startswith(".latest.safetensors.tmp-") for p in leftover_temp_files(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["latest.safetensors"]
    assert version >= 6000


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork and SIGKILL")
def test_sigkill_between_fsync_and_rename_keeps_the_previous_checkpoint(tmp_path):
    path = checkpoint_paths(tmp_path)["latest"]
    child = multiprocessing.get_context("fork").Process(target=_save_versions, args=(str(path), 1, True), daemon=True)
    child.start()
    try:
        wait_for(lambda: Path(str(path) + ".blocked").exists(), "the child to reach the rename")
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.join()
    temp = tmp_path / f".latest.safetensors.tmp-{child.pid}"
    assert leftover_temp_files(tmp_path) == [temp]
    assert check_whole(path, at_least=1) == 1  # version 2 was written in full, but never became the checkpoint
    # the next save (another process) replaces the checkpoint; the stale temporary file stays unread
    save_checkpoint(path, model=versioned_model(3), meta={"version": 3})
    assert check_whole(path, at_least=3) == 3
    assert leftover_temp_files(tmp_path) == [temp]


def test_checkpoint_paths_name_latest_and_best(tmp_path):
    assert checkpoint_paths(tmp_path) == {
        "latest": tmp_path / "latest.safetensors",
        "best": tmp_path / "best.safetensors",
    }
    assert checkpoint_paths(str(tmp_path))["best"] == tmp_path / "best.safetensors"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_model_optimizer_and_rng_round_trip(tmp_path):
    model = TinyLM(seed=1).cuda()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, 2)
    data = torch.Generator().manual_seed(0)
    for tokens in batches(data, 2):
        loss = F.cross_entropy(model(tokens[:-1].cuda()).reshape(-1, V), tokens[1:].reshape(-1).cuda())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    path = save_checkpoint(tmp_path / "gpu.safetensors", model=model, optimizer=opt, scheduler=sched)
    cuda_draw = torch.rand(3, device="cuda")
    cpu_model = TinyLM(seed=2)
    load_checkpoint(path, model=cpu_model)
    assert_identical(dict(cpu_model.state_dict()), {k: v.cpu() for k, v in model.state_dict().items()})
    gpu_model = TinyLM(seed=2).cuda()
    gpu_opt = torch.optim.Adam(gpu_model.parameters(), lr=1e-2)
    load_checkpoint(path, model=gpu_model, optimizer=gpu_opt, restore_rng=True, map_location="cuda")
    assert torch.equal(torch.rand(3, device="cuda"), cuda_draw)
    assert gpu_opt.state_dict()["state"][0]["exp_avg"].device.type == "cuda"


def test_arguments_of_the_wrong_kind_are_named(saved):
    path, model = saved
    with pytest.raises(
        TypeError, match="load_checkpoint: model must be a torch.nn.Module, got a collections.OrderedDict"
    ):
        load_checkpoint(path, model=model.state_dict())
    with pytest.raises(TypeError, match=r"load_checkpoint: generators\['data'\] must be a torch.Generator, got an int"):
        load_checkpoint(path, generators={"data": 7})
    with pytest.raises(
        CheckpointError, match="save_checkpoint: generators must map names to torch.Generator, got 'data': an int"
    ):
        save_checkpoint(path.with_name("other.safetensors"), model=model, generators={"data": 7})
    assert not path.with_name("other.safetensors").exists()


class _Carried:
    """A stand-in for a truncated-BPTT step: a carried state of tensors (or None) and a counter."""

    def __init__(self, state=None, count=0):
        self.state, self.count = state, count

    def state_dict(self):
        return {"state": self.state, "count": self.count}

    def load_state_dict(self, saved):
        self.state, self.count = saved["state"], saved["count"]


def test_extra_objects_round_trip_and_are_checked_by_name_and_class(tmp_path):
    model = TinyLM()
    h = torch.randn(3, 5, dtype=torch.float64)
    carried = _Carried([[h, h.float() * 2], [torch.arange(3)]], count=7)
    path = save_checkpoint(tmp_path / "ck.safetensors", model=model, extra={"step_fn": carried, "empty": _Carried()})

    back, empty = _Carried(), _Carried(state="stale", count=-1)
    load_checkpoint(path, model=TinyLM(), extra={"step_fn": back, "empty": empty})
    assert back.count == 7 and empty.state is None and empty.count == 0
    assert_identical(back.state, [[h, h.float() * 2], [torch.arange(3)]], "extra state")

    untouched = _Carried(count=-5)
    with pytest.raises(
        CheckpointError, match=r"the checkpoint holds no state 'other' \(it holds \['empty', 'step_fn'\]\)"
    ):
        load_checkpoint(path, extra={"step_fn": untouched, "other": _Carried()})
    assert untouched.count == -5  # all or nothing: nothing was loaded
    with pytest.raises(
        CheckpointError, match=r"extra\['step_fn'\]: checkpoint has _Carried state, the given object is _Schedule"
    ):
        load_checkpoint(path, extra={"step_fn": _Schedule()})
    with pytest.raises(CheckpointError, match="extra must map names to objects with state_dict\\(\\), got 'x': an int"):
        save_checkpoint(tmp_path / "bad.safetensors", model=model, extra={"x": 3})
    assert not (tmp_path / "bad.safetensors").exists()


def test_also_writes_the_same_checkpoint_under_more_names(tmp_path):
    """One serialisation, several files (``latest`` and ``best``): each byte-identical to the
    first and loading to the same weights; a missing folder of one of them is created."""
    model = TinyLM(seed=3)
    opt = torch.optim.Adam(model.parameters())
    first, second = tmp_path / "latest.safetensors", tmp_path / "keep" / "best.safetensors"
    save_checkpoint(first, model=model, optimizer=opt, meta={"step": 4}, also=[second])
    assert first.read_bytes() == second.read_bytes()
    other = TinyLM(seed=9)
    load_checkpoint(second, model=other)
    assert_identical(snapshot(other), snapshot(model))
    assert not leftover_temp_files(tmp_path) and not leftover_temp_files(tmp_path / "keep")
