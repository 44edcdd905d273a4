"""What every built-in task shares: its config, its contract with the trainer, and the run.

A task knows its data, its model, its loss and its metrics; :func:`run_task` hands those to the
model-agnostic :class:`~rnnkit.train.Trainer` and reports the final metrics beside the task's
baseline. Checkpoints hold the task's name and resolved config, so :func:`load_run` rebuilds
the model for ``rnnkit sample`` and ``rnnkit eval`` without the training data.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ..cells.registry import CELLS
from ..checkpoint import read_meta
from ..train import Callback, Plot, RunFolder, StepResult, TrainConfig, Trainer, TrainingSettings, distributed
from ..train.device import check_device, resolve_device
from ..train.trainer import SMOOTHING
from .config import check_config


@dataclass
class TaskConfig(TrainingSettings):
    """Settings every task has: the model and optimizer here, how long and how to train inherited
    from :class:`~rnnkit.train.TrainingSettings` (each defined and checked there once); a task's
    own config adds its fields to these. A field renamed keeps its old name working for one
    release, as an ``InitVar`` that warns (see ``CharLMConfig.val_every``)."""

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
    device: str = "auto"  # auto (CUDA if available, else CPU), cpu, cuda or cuda:N
    # where a task's run differs from a bare Trainer's defaults
    max_steps: int | None = 2000  # updates over the whole run (a resumed run goes on to this); None: until max_time
    seed: int = 0  # fixes data, initialisation, dropout and sampling
    out: str = ""  # output folder; empty: the first free runs/<task>[-k]

    def check(self) -> None:
        """Every check of these settings (the config loader already checked types)."""
        if self.cell not in CELLS:
            raise ValueError(f"unknown cell {self.cell!r}; choose from {', '.join(CELLS)}")
        for name in ("hidden_size", "num_layers", "batch_size", "lr_decay_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.eval_every < 1:
            raise ValueError(f"eval_every must be ≥ 1, got {self.eval_every}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.dropout > 0 and self.num_layers == 1:  # torch.nn only warns; a setting that does nothing is an error
            raise ValueError(
                f"dropout acts between stacked layers, so with num_layers = 1 it would do nothing; "
                f"got dropout = {self.dropout}: use num_layers ≥ 2 or dropout = 0"
            )
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"lr_decay must be in (0, 1], got {self.lr_decay}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be ≥ 0, got {self.weight_decay}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
        check_device(self.device)  # the spelling only: whether this machine has it, run_task asks
        if self.max_steps is None and self.max_time is None and self.max_epochs is None:
            # a task's max_steps has a default of its own: None here was asked for, so no step limit
            raise ValueError("give max_steps or max_time (or max_epochs): with none of them the run would never end")
        self.validate()

    def train_config(self, task: Task | None = None) -> TrainConfig:
        """The trainer's config: these training settings, and what ``task`` watches."""
        shared = {f.name: getattr(self, f.name) for f in fields(TrainingSettings)}
        cfg = TrainConfig(**shared)
        if task is not None:
            cfg.monitor = task.monitor
            cfg.mode = "max" if task.monitor != "loss" and task.higher_is_better else "min"
        return cfg


OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": lambda params, lr, weight_decay: torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay),
    "rmsprop": torch.optim.RMSprop,
}


class Task:
    """A built-in task. Subclasses set the class attributes and implement the methods.

    Lifecycle: ``Task(cfg)`` → :meth:`prepare` (data) → :meth:`build_model` → training with
    :meth:`batches`, the task itself as the step function (``task(model, batch)`` runs
    :meth:`step`), :meth:`evaluate` → final :meth:`evaluate`. For a checkpoint, :meth:`from_meta`
    rebuilds the task without data, then :meth:`build_model`.

    What a task can do beyond training is declared on its type, so the command line asks the
    type: ``can_sample`` (it overrides :meth:`sample_text`), ``reads_eval_data`` (it overrides
    :meth:`prepare_eval`: ``rnnkit eval --data``), ``splits`` (what :meth:`evaluate` knows).
    A task whose step carries state from one batch to the next (truncated BPTT) has
    ``state_dict``/``load_state_dict``; the trainer saves it with every checkpoint.
    """

    name: ClassVar[str]
    summary: ClassVar[str]  # one line for `rnnkit tasks`
    Config: ClassVar[type[TaskConfig]] = TaskConfig
    metric: ClassVar[str]  # the headline validation metric
    metric_label: ClassVar[str | None] = None  # the metric's axis label on the curves (default: its name)
    higher_is_better: ClassVar[bool] = False  # for the headline metric
    monitor: ClassVar[str] = "loss"  # what early stopping and the best checkpoint watch
    splits: ClassVar[tuple[str, ...]] = ("val", "test")  # the held-out splits evaluate() knows
    sample_hint: ClassVar[str] = "--length 1000 --temperature 0.8"  # the options `rnnkit train` suggests to sample with
    can_sample: ClassVar[bool] = False  # set for every subclass: whether it overrides sample_text
    reads_eval_data: ClassVar[bool] = False  # set for every subclass: whether it overrides prepare_eval

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "can_sample" not in cls.__dict__:
            cls.can_sample = cls.sample_text is not Task.sample_text
        if "reads_eval_data" not in cls.__dict__:
            cls.reads_eval_data = cls.prepare_eval is not Task.prepare_eval

    def __init__(self, cfg: TaskConfig) -> None:
        self.cfg = cfg
        self.baseline: dict[str, float] = {}
        self.show_progress = False  # evaluate() may show a bar on stderr (rnnkit eval sets it; long evaluations use it)

    # data and model
    def prepare(self, log: Callable[[str], None]) -> None:
        """Make or read the data; set ``self.baseline`` ({name: value} of the headline metric)."""

    def prepare_eval(self, data: str | None, log: Callable[[str], None]) -> None:
        """For ``rnnkit eval``: the held-out data, or ``data`` (a path) for tasks that read text."""
        if data is not None:
            raise ValueError(f"rnnkit eval: the {self.name!r} task makes its own data; --data does not apply")
        self.prepare(log)

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

    def __call__(self, model: nn.Module, batch: Any) -> StepResult:
        """The task as the trainer's step function: :meth:`step`."""
        return self.step(model, batch)

    def evaluate(self, model: nn.Module, split: str = "val") -> dict[str, float]:
        """Metrics on a held-out split; must hold ``loss`` and ``self.metric``."""
        raise NotImplementedError

    def callbacks(self, log: Callable[[str], None]) -> list[Callback]:
        """Extra callbacks, e.g. printing samples as the model learns."""
        return []

    # what a trained model can show
    def sample_text(self, model: nn.Module, prime: str = "", length: int = 500, **opts) -> str:
        """Text generated by ``model`` (``rnnkit sample``); tasks that generate override it."""
        raise NotImplementedError(f"the {self.name!r} task does not generate text")

    def final_sample(self, result: dict) -> str | None:
        """What ``rnnkit train`` shows of the trained model when it ends; None: nothing."""
        return None

    # checkpoints
    def meta(self) -> dict:
        """What a checkpoint needs besides weights to rebuild the model (JSON)."""
        return {"task": self.name, "config": asdict(self.cfg)}

    @classmethod
    def from_meta(cls, meta: dict) -> Task:
        """The task of a checkpoint's meta, config checked, without its data."""
        return cls(check_config(cls.Config, meta["config"], source="checkpoint"))

    def describe(self, model: nn.Module) -> str:
        """One line on the model, printed when training starts."""
        n = sum(p.numel() for p in model.parameters())
        return f"{self.name}: {self.cfg.cell} × {self.cfg.num_layers}, hidden {self.cfg.hidden_size}, {n:,} parameters"


#: The optimizers that take torch's fused implementation where the parameters allow it.
FUSED = frozenset({"adam", "adamw"})


def make_optimizer(cfg: TaskConfig, model: nn.Module):
    """The configured optimizer, and a StepLR schedule when ``lr_decay`` < 1.

    Adam and AdamW run fused (``fused=True``: one kernel over all parameters) when every
    parameter is a floating-point tensor on the CPU or a CUDA device: the same update up to
    rounding (3e-8 apart after 62 steps of the default char-LM), where torch's default runs a
    dozen tensor operations per parameter — 33 ms against 1.2 ms per step of the char-LM's
    0.8 M parameters on one thread, 2 % of its training update.
    """
    params = list(model.parameters())
    fusable = cfg.optimizer in FUSED and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    opt = OPTIMIZERS[cfg.optimizer](
        params, lr=cfg.lr, weight_decay=cfg.weight_decay, **({"fused": True} if fusable else {})
    )
    sched = torch.optim.lr_scheduler.StepLR(opt, cfg.lr_decay_every, cfg.lr_decay) if cfg.lr_decay < 1 else None
    return opt, sched


class _Validation(Callback):
    """One line per validation: the update, the smoothed training loss, the validation metrics."""

    def __init__(self, task: Task, log: Callable[[str], None]) -> None:
        self.task, self.log = task, log

    def on_validation(self, trainer: Trainer, metrics: dict) -> None:
        shown = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        recent = [r["loss"] for r in trainer.history if r.get("kind") == "train"][-SMOOTHING:]
        self.log(
            f"step {trainer.step:6d}  train loss {sum(recent) / len(recent):.4f} (mean of last {len(recent)})  "
            f"val {shown}"
        )


def free_run_folder(task_name: str, root: str | Path = "runs") -> Path:
    """``runs/<task>``, or ``runs/<task>-2``, ``-3``… — the first that holds no checkpoint
    (:meth:`RunFolder.free <rnnkit.train.run_folder.RunFolder.free>`)."""
    return RunFolder.free(task_name, root).path


#: The settings a resumed run may change, which are how much longer to train, what is shown, and
#: the device (checkpoints hold CPU tensors, loaded onto whatever device the run continues on).
#: Everything else (model, data, optimizer, seed…) is the run's own: the checkpoint's weights,
#: optimizer state and data position only mean something with it, and a changed learning rate
#: would be overwritten by the optimizer state anyway.
RESUME_MAY_CHANGE = frozenset(
    {
        "max_steps",
        "max_time",
        "max_epochs",
        "eval_every",
        "eval_budget",
        "patience",
        "progress",
        "out",
        "sample_length",
        "temperature",
        "device",
        "keep_checkpoints",
    }
)


def check_resumable(meta: dict, task: Task) -> None:
    """Raise ValueError naming every setting of ``task.cfg`` that differs from the run the checkpoint
    ``meta`` belongs to (other than :data:`RESUME_MAY_CHANGE`), or if it is another task's run."""
    if meta.get("task") != task.name:
        raise ValueError(f"--resume: the checkpoint is of a {meta.get('task')!r} run, not {task.name!r}")
    # the saved settings read as today's config reads them (a renamed setting under its new name)
    saved = asdict(check_config(type(task.cfg), meta.get("config", {}), source="checkpoint"))
    RunFolder(task.cfg.out).check_resume({**meta, "config": saved}, asdict(task.cfg), RESUME_MAY_CHANGE)


def open_run(task: Task, resume: bool = False, overwrite: bool = False) -> tuple[RunFolder, dict | None]:
    """The run folder ``task`` trains in, checked before any work; and, when resuming, the
    latest checkpoint's meta.

    With no ``cfg.out``: the first free ``runs/<task>[-k]``, or with ``resume`` the newest run of
    the task. The folder must be writable; one that already holds a run needs ``resume``
    (continue it: the settings must be its own, except :data:`RESUME_MAY_CHANGE`, and there must
    be something left to do) or ``overwrite`` (start over there).
    """
    cfg = task.cfg
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    if not cfg.out:
        cfg.out = str(RunFolder.choose(task.name, resume))
    run = RunFolder(cfg.out)
    run.check_writable()
    if not resume:
        if not overwrite and run.holds_run():
            raise FileExistsError(
                f"{run} already holds a run: add --resume to continue it, --overwrite to start over "
                f"there, or choose another --out"
            )
        return run, None
    meta = run.resume_meta(task.name)
    check_resumable(meta, task)
    step = int(meta["trainer"]["step"])
    if cfg.max_steps is not None and cfg.max_steps <= step:
        raise ValueError(
            f"--resume: the run in {run} is at update {step}, and max_steps is {cfg.max_steps}: nothing "
            f"to do; give a larger --max-steps (or --max-steps none --max-time SECONDS) to train it further"
        )
    return run, meta


def resume_plan(run: RunFolder, meta: dict, cfg: TaskConfig) -> str:
    """The line a resumed run prints first: where it resumes and what it will do."""
    step = int(meta["trainer"]["step"])
    limits = ([f"to update {cfg.max_steps}"] if cfg.max_steps is not None else []) + (
        [f"for at most {cfg.max_time:g} s more"] if cfg.max_time is not None else []
    )
    return f"resuming {run} at update {step}: training {' or '.join(limits)}" + (
        ", whichever comes first" if len(limits) > 1 else ""
    )


def run_task(
    task: Task,
    log: Callable[[str], None] = print,
    resume: bool = False,
    overwrite: bool = False,
    device: str | torch.device | None = None,
) -> dict:
    """Train ``task`` with its config; write checkpoints, log and plot; return the final metrics.

    The model trains on ``device``, by default the config's ``device`` resolved on this machine
    (:func:`~rnnkit.train.device.resolve_device`: ``"auto"`` is CUDA when available); the data
    stays on the CPU and each batch is moved there. The saved config keeps the setting as asked.

    Never overwrites a run by accident (see :func:`open_run`): with no ``out`` the run goes to
    the first free ``runs/<task>[-k]`` folder (with ``resume``: the newest run of the task); an
    ``out`` that already holds checkpoints needs ``resume`` (continue it) or ``overwrite``
    (start over there). Every check is made before the data is read.

    The result (also what ``--json`` prints): task, cell, steps, sequences_seen, items_seen,
    train_loss (the mean of the last 20 updates), train_loss_last (the last update's), val_loss,
    the headline metric, its baseline, training_time (seconds of training in this call, the
    final validation included), validation_time (what that validation took), evaluation_time and
    evaluation_share (every validation of the call together, with its samples and checkpoints,
    in seconds and as a share of training_time: ``eval_budget`` keeps the periodic ones within
    it), wall_time (also reading the data and building the model), out,
    stop_reason, device.

    Under torchrun (a process group of N, see :mod:`rnnkit.train.distributed`) every process
    calls this: each trains on its shard of every global batch of ``batch_size``; rank 0 alone
    logs and writes; all of them return the same result. There ``device`` is the one
    :func:`~rnnkit.train.distributed.session` yields (``cuda:LOCAL_RANK`` for a CUDA run).
    """
    cfg = task.cfg
    main = distributed.is_main()
    if not main:
        log = _silent  # one voice: rank 0 speaks for the run
    cfg.check()
    if not cfg.out:  # rank 0 picks the folder, so that all processes write (and read) the same one
        cfg.out = distributed.broadcast(str(RunFolder.choose(task.name, resume)) if main else None)
    run, meta = open_run(task, resume, overwrite)  # before anything is written or read
    device = resolve_device(cfg.device) if device is None else torch.device(device)
    distributed.check_divisible(cfg.batch_size, distributed.world_size(), distributed.rank(), "batch_size")
    start = time.monotonic()
    if meta is not None:
        log(resume_plan(run, meta, cfg))
    torch.manual_seed(cfg.seed)
    task.prepare(log)
    # on its device before the optimizer holds its parameters and before DDP wraps it
    model = task.build_model().to(device)
    opt, sched = make_optimizer(cfg, model)
    log(task.describe(model) + ("" if device.type == "cpu" else f"; on {device}"))
    if main:
        run.write_config(task.meta())
    if distributed.world_size() > 1:
        log(
            f"{distributed.world_size()} processes, each training on {cfg.batch_size // distributed.world_size()} "
            f"of every batch of {cfg.batch_size}"
        )
    batches = distributed.shard(task.batches())  # this process's share of every global batch
    plot = Plot(
        run.curves,
        task.monitor,
        metric=task.metric,
        baseline=task.baseline.get(task.metric),
        title=f"{run.path.name}: {task.name}, {cfg.cell} × {cfg.num_layers}, hidden {cfg.hidden_size}",
        metric_label=task.metric_label,
    )
    train_config = cfg.train_config(task)
    train_config.overwrite = overwrite  # open_run checked the folder: the trainer applies the same rule
    trainer = Trainer(
        model,
        opt,
        task,
        batches,
        train_config,
        evaluate=task.evaluate,
        scheduler=sched,
        callbacks=[_Validation(task, log), *task.callbacks(log), plot],
        meta=task.meta(),
    )
    result = trainer.fit(resume_from=run.latest if resume else None)
    final = result.val or task.evaluate(model.eval(), "val")  # the trainer validates at its last step
    summary = {
        "task": task.name,
        "cell": cfg.cell,
        "steps": result.steps,
        "sequences_seen": result.sequences,
        "items_seen": result.items,
        "train_loss": result.train_loss_smoothed,
        "train_loss_last": result.train_loss,
        "val_loss": final["loss"],
        "metric": task.metric,
        task.metric: final[task.metric],
        "baseline": task.baseline.get(task.metric),
        "training_time": round(result.seconds, 2),
        "validation_time": round(trainer.validation_seconds, 2),  # the last validation and its checkpoints
        "evaluation_time": round(
            result.evaluation_seconds, 2
        ),  # every validation of this call, samples and checkpoints included
        "evaluation_share": round(result.evaluation_seconds / max(result.seconds, 1e-9), 4),
        "max_time": cfg.max_time,
        "wall_time": round(time.monotonic() - start, 2),
        "stop_reason": result.stop_reason,
        "out": str(run),
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
    from ..checkpoint import load_checkpoint
    from . import TASKS

    path = RunFolder.find(path)
    meta = read_meta(path)
    name = meta.get("task")
    if name not in TASKS:
        raise ValueError(f"{path}: checkpoint of unknown task {name!r}; known: {', '.join(TASKS)}")
    task = TASKS[name].from_meta(meta)
    model = task.build_model().to(device)
    load_checkpoint(path, model=model, expect={"task": name}, map_location=device)
    return task, model.eval(), meta
