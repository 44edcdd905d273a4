"""What every built-in task shares: its config, its contract with the trainer, and the run.

A task knows its data, its model, its loss and its metrics; :func:`run_task` hands those to the
model-agnostic :class:`~rnnkit.train.Trainer` and reports the final metrics beside the task's
baseline. Checkpoints hold the task's name and resolved config, so :func:`load_run` rebuilds
the model for ``rnnkit sample`` and ``rnnkit eval`` without the training data.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable

import torch
from torch import nn

from ..cells.registry import CELLS
from ..checkpoint import read_meta, write_atomic
from ..train import Callback, StepResult, TrainConfig, Trainer, distributed
from ..train.device import check_device, resolve_device
from .config import check_config


@dataclass
class TaskConfig:
    """Settings every task has; a task's own config adds its fields to these."""

    cell: str = "lstm"  # any name of rnnkit.cells.registry.CELLS
    hidden_size: int = 128  # units per recurrent layer (char-rnn's rnn_size)
    num_layers: int = 1  # stacked recurrent layers
    dropout: float = 0.0  # between stacked layers
    batch_size: int = 32  # sequences (or parallel lanes) per update
    optimizer: str = "adam"  # adam, adamw, sgd or rmsprop
    lr: float = 1e-3  # learning rate
    lr_decay: float = 1.0  # multiply the learning rate by this every lr_decay_every updates
    lr_decay_every: int = 1000  # updates between learning-rate decays
    weight_decay: float = 0.0  # L2 penalty (decoupled for adamw)
    clip_norm: float | None = 5.0  # clip the global gradient norm to this; None: no norm clipping
    clip_value: float | None = None  # clip every gradient element to [−v, v]; None: none
    max_steps: int | None = 2000  # updates; None: until max_time
    max_time: float | None = None  # seconds of training; None: until max_steps
    eval_every: int = 100  # updates between validations and checkpoints
    patience: int | None = None  # early stopping after this many validations without improvement
    seed: int = 0  # fixes data, initialisation, dropout and sampling
    out: str = ""  # output folder; empty: runs/<task>
    log_format: str = "jsonl"  # jsonl or csv
    progress: bool = True  # progress bar
    device: str = "auto"  # auto (CUDA if available, else CPU), cpu, cuda or cuda:N

    def check(self) -> None:
        """Task-independent checks (the config loader already checked types)."""
        if self.cell not in CELLS:
            raise ValueError(f"unknown cell {self.cell!r}; choose from {', '.join(CELLS)}")
        for name in ("hidden_size", "num_layers", "batch_size", "lr_decay_every", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.dropout > 0 and self.num_layers == 1:  # torch.nn only warns; a setting that does nothing is an error
            raise ValueError(f"dropout acts between stacked layers, so with num_layers = 1 it would do nothing; "
                             f"got dropout = {self.dropout}: use num_layers ≥ 2 or dropout = 0")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"lr_decay must be in (0, 1], got {self.lr_decay}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be ≥ 0, got {self.weight_decay}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
        check_device(self.device)  # the spelling only: whether this machine has it, run_task asks
        self.train_config().validate()

    def train_config(self) -> TrainConfig:
        """The trainer's part of these settings."""
        return TrainConfig(
            max_steps=self.max_steps, max_time=self.max_time, clip_norm=self.clip_norm, clip_value=self.clip_value,
            eval_every=self.eval_every, patience=self.patience, out=self.out, log_format=self.log_format,
            progress=self.progress, seed=self.seed,
        )


OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": lambda params, lr, weight_decay: torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay),
    "rmsprop": torch.optim.RMSprop,
}


class Task:
    """A built-in task. Subclasses set the class attributes and implement the methods.

    Lifecycle: ``Task(cfg)`` → :meth:`prepare` (data) → :meth:`build_model` → training with
    :meth:`batches`, :meth:`step`, :meth:`evaluate` → final :meth:`evaluate`. For a checkpoint,
    :meth:`from_meta` rebuilds the task without data, then :meth:`build_model`.
    """

    name: ClassVar[str]
    summary: ClassVar[str]  # one line for `rnnkit tasks`
    Config: ClassVar[type[TaskConfig]] = TaskConfig
    metric: ClassVar[str]  # the headline validation metric
    higher_is_better: ClassVar[bool] = False  # for the headline metric
    monitor: ClassVar[str] = "loss"  # what early stopping and the best checkpoint watch

    def __init__(self, cfg: TaskConfig) -> None:
        self.cfg = cfg
        self.baseline: dict[str, float] = {}

    # data and model
    def prepare(self, log: Callable[[str], None]) -> None:
        """Make or read the data; set ``self.baseline`` ({name: value} of the headline metric)."""

    def build_model(self) -> nn.Module:
        """A fresh model for this config (and the data's vocabulary, once prepared)."""
        raise NotImplementedError

    # training
    def batches(self) -> Iterable:
        """The training batches, iterated again for each pass (``set_epoch`` if it reshuffles)."""
        raise NotImplementedError

    def step(self, model: nn.Module, batch: Any) -> StepResult:
        """The forward pass and loss of one batch (the trainer does backward and the update)."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, split: str = "val") -> dict[str, float]:
        """Metrics on a held-out split; must hold ``loss`` and ``self.metric``."""
        raise NotImplementedError

    def callbacks(self, log: Callable[[str], None]) -> list[Callback]:
        """Extra callbacks, e.g. printing samples as the model learns."""
        return []

    # checkpoints
    def meta(self) -> dict:
        """What a checkpoint needs besides weights to rebuild the model (JSON)."""
        return {"task": self.name, "config": asdict(self.cfg)}

    @classmethod
    def from_meta(cls, meta: dict) -> "Task":
        """The task of a checkpoint's meta, config checked, without its data."""
        return cls(check_config(cls.Config, meta["config"], source="checkpoint"))

    def describe(self, model: nn.Module) -> str:
        """One line on the model, printed when training starts."""
        n = sum(p.numel() for p in model.parameters())
        return f"{self.name}: {self.cfg.cell} × {self.cfg.num_layers}, hidden {self.cfg.hidden_size}, {n:,} parameters"


def make_optimizer(cfg: TaskConfig, model: nn.Module):
    """The configured optimizer, and a StepLR schedule when ``lr_decay`` < 1."""
    opt = OPTIMIZERS[cfg.optimizer](model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, cfg.lr_decay_every, cfg.lr_decay) if cfg.lr_decay < 1 else None
    return opt, sched


class _Validation(Callback):
    def __init__(self, task: Task, log: Callable[[str], None]) -> None:
        self.task, self.log = task, log

    def on_validation(self, trainer: Trainer, metrics: dict) -> None:
        shown = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        self.log(f"step {trainer.step:6d}  train loss {trainer.history[-2]['loss']:.4f}  val {shown}")


def free_run_folder(task_name: str, root: str | Path = "runs") -> Path:
    """``runs/<task>``, or ``runs/<task>-2``, ``-3``… — the first that holds no checkpoint."""
    base = Path(root) / task_name
    k, folder = 1, base
    while (folder / "latest.safetensors").exists() or (folder / "best.safetensors").exists():
        k += 1
        folder = base.with_name(f"{task_name}-{k}")
    return folder


#: The settings a resumed run may change, which are how much longer to train, what is shown, and
#: the device (checkpoints hold CPU tensors, loaded onto whatever device the run continues on).
#: Everything else (model, data, optimizer, seed…) is the run's own: the checkpoint's weights,
#: optimizer state and data position only mean something with it, and a changed learning rate
#: would be overwritten by the optimizer state anyway.
RESUME_MAY_CHANGE = frozenset({"max_steps", "max_time", "eval_every", "patience", "progress", "out", "sample_length",
                               "temperature", "device"})


def check_resumable(meta: dict, task: "Task") -> None:
    """Raise ValueError naming every setting of ``task.cfg`` that differs from the run the checkpoint
    ``meta`` belongs to (other than :data:`RESUME_MAY_CHANGE`), or if it is another task's run."""
    if meta.get("task") != task.name:
        raise ValueError(f"--resume: the checkpoint is of a {meta.get('task')!r} run, not {task.name!r}")
    saved = meta.get("config", {})
    changed = [f"{name}: the run has {saved.get(name)!r}, given {value!r}" for name, value in asdict(task.cfg).items()
               if name not in RESUME_MAY_CHANGE and saved.get(name) != value]
    if changed:
        raise ValueError(f"--resume continues the run in {task.cfg.out} with the settings of its checkpoint; "
                         f"these differ: {'; '.join(changed)}. Drop them, or start a new run with another --out")


def run_task(task: Task, log: Callable[[str], None] = print, resume: bool = False, overwrite: bool = False,
             device: str | torch.device | None = None) -> dict:
    """Train ``task`` with its config; write checkpoints, log and plot; return the final metrics.

    The model trains on ``device``, by default the config's ``device`` resolved on this machine
    (:func:`~rnnkit.train.device.resolve_device`: ``"auto"`` is CUDA when available); the data
    stays on the CPU and each batch is moved there. The saved config keeps the setting as asked.

    Never overwrites a run by accident: with no ``out`` the run goes to the first free
    ``runs/<task>[-k]`` folder; an ``out`` that already holds checkpoints needs ``resume``
    (continue it) or ``overwrite`` (start over there).

    The result (also what ``--json`` prints): task, cell, steps, sequences_seen, train_loss,
    val_loss, the headline metric, its baseline, wall_time, out, stop_reason, device.

    Under torchrun (a process group of N, see :mod:`rnnkit.train.distributed`) every process
    calls this: each trains on its shard of every global batch of ``batch_size``; rank 0 alone
    logs and writes; all of them return the same result. There ``device`` is the one
    :func:`~rnnkit.train.distributed.session` yields (``cuda:LOCAL_RANK`` for a CUDA run).
    """
    cfg = task.cfg
    main = distributed.is_main()
    if not main:
        log = _silent  # one voice: rank 0 speaks for the run
    if not cfg.out:  # rank 0 picks the folder, so that all processes write (and read) the same one
        cfg.out = distributed.broadcast(str(Path("runs") / task.name if resume else free_run_folder(task.name)))
    cfg.check()
    device = resolve_device(cfg.device) if device is None else torch.device(device)
    distributed.check_divisible(cfg.batch_size, distributed.world_size(), distributed.rank(), "batch_size")
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out must be a folder (new, or holding a run), but {str(out)!r} is a file")
    latest = out / "latest.safetensors"
    if resume and not latest.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint to resume from at {latest}")
    if resume:  # before anything is written: the run's files stay as they are if it cannot continue
        check_resumable(read_meta(latest), task)
    if not resume and not overwrite and (latest.exists() or (out / "best.safetensors").exists()):
        raise FileExistsError(f"{out} already holds a run: add --resume to continue it, --overwrite to start over "
                              f"there, or choose another --out")
    start = time.monotonic()
    torch.manual_seed(cfg.seed)
    task.prepare(log)
    # on its device before the optimizer holds its parameters and before DDP wraps it
    model = task.build_model().to(device)
    opt, sched = make_optimizer(cfg, model)
    log(task.describe(model) + ("" if device.type == "cpu" else f"; on {device}"))
    if main:
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / "config.json", (json.dumps(task.meta(), indent=1, ensure_ascii=False) + "\n").encode())
    train_cfg = task.cfg.train_config()
    train_cfg.monitor, train_cfg.mode = task.monitor, "max" if task.monitor != "loss" and task.higher_is_better else "min"
    if distributed.world_size() > 1:
        log(f"{distributed.world_size()} processes, each training on {cfg.batch_size // distributed.world_size()} "
            f"of every batch of {cfg.batch_size}")
    batches = distributed.shard(task.batches())  # this process's share of every global batch
    trainer = Trainer(model, opt, task.step, batches, train_cfg, evaluate=task.evaluate, scheduler=sched,
                      callbacks=[_Validation(task, log), *task.callbacks(log)], meta=task.meta())
    result = trainer.fit(resume_from=latest if resume else None)
    final = result.val or task.evaluate(model.eval(), "val")  # the trainer validates at its last step
    train_losses = [r["loss"] for r in result.history if r.get("kind") == "train"][-20:]
    summary = {
        "task": task.name,
        "cell": cfg.cell,
        "steps": result.steps,
        "sequences_seen": result.sequences,
        "items_seen": result.items,
        "train_loss": sum(train_losses) / len(train_losses) if train_losses else math.nan,
        "val_loss": final["loss"],
        "metric": task.metric,
        task.metric: final[task.metric],
        "baseline": task.baseline.get(task.metric),
        "wall_time": round(time.monotonic() - start, 2),
        "stop_reason": result.stop_reason,
        "out": str(out),
        "device": str(device),
    }
    summary.update({f"val_{k}": v for k, v in final.items() if k not in ("loss", task.metric)})
    return summary


def _silent(_: str) -> None:
    """The log of the processes other than rank 0."""


def load_run(path: str | Path, device: str | torch.device = "cpu") -> tuple[Task, nn.Module, dict]:
    """The task, model and meta of a checkpoint file, or of a run folder (its best checkpoint).

    The model is put on ``device``: a ``torch.device`` or a setting as in
    :func:`~rnnkit.train.device.resolve_device` (``"auto"``, ``"cpu"``, ``"cuda"``,
    ``"cuda:N"``); where the run trained does not matter, since checkpoints hold CPU tensors.
    """
    device = resolve_device(device) if isinstance(device, str) else torch.device(device)
    from ..checkpoint import load_checkpoint, read_meta
    from . import TASKS

    path = Path(path)
    if path.is_dir():
        for name in ("best.safetensors", "latest.safetensors"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise FileNotFoundError(f"{str(path)!r} holds no checkpoint (best.safetensors or latest.safetensors)")
    elif not path.exists():
        raise FileNotFoundError(f"no such checkpoint: {str(path)!r}")
    meta = read_meta(path)
    name = meta.get("task")
    if name not in TASKS:
        raise ValueError(f"{path}: checkpoint of unknown task {name!r}; known: {', '.join(TASKS)}")
    task = TASKS[name].from_meta(meta)
    model = task.build_model().to(device)
    load_checkpoint(path, model=model, expect={"task": name}, map_location=device)
    return task, model.eval(), meta


