"""The model-agnostic training loop.

The trainer knows nothing of the model or the data: a task gives it a ``step_fn(model, batch)``
that returns the loss to back-propagate, an iterable of batches, and optionally an
``evaluate(model)`` returning validation metrics. The trainer's own job is the loop: the
update (backward, clipping, optimizer and schedule), validation every ``eval_every`` updates,
and when to stop. The log file, early stopping, checkpoints, the plot and the progress bar are
callbacks (:mod:`rnnkit.train.callbacks`) built from the config, each one replaceable.

Started by torchrun (inside :func:`rnnkit.train.distributed.session`), the same loop trains one
replica per process with DistributedDataParallel; each process is given its own shard of every
global batch, and the log, the checkpoints and every decision are the ones one process would
make from the whole batch (see :mod:`rnnkit.train.distributed`).
"""

from __future__ import annotations

import math
import random
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from . import distributed
from .callbacks import Callback, Checkpoints, EarlyStopping, LogFile, Plot, ProgressBar
from .clipping import check_clip, clip_gradients
from .device import model_device, to_device
from .epochs import Epochs
from .history import HISTORY_KEEP, bounded_history
from .run_folder import RunFolder


@dataclass
class TrainingSettings:
    """How long and how to train: the settings a task's config shares with :class:`TrainConfig`
    (every task config inherits them, so each is defined and checked here once).

    When to stop: at the first limit reached of ``max_steps``, ``max_epochs`` and ``max_time``
    (or early stopping, or a callback). A budget given alone is the limit: with ``max_steps``
    None the run has no step limit when ``max_time`` or ``max_epochs`` is given, and
    :data:`DEFAULT_MAX_STEPS` (1000) updates when none of the three is (:meth:`step_limit`).

    Attributes:
        max_steps: updates, counted over the whole run (a resumed run goes on to this);
            None: see above.
        max_time: seconds of training in this ``fit()`` (a resume gets it afresh), the final
            validation included; None: no time limit.
        max_epochs: passes over the training data, counted over the whole run; None: no limit.
        clip_norm: rescale the global gradient norm to this when above it; None: no norm
            clipping.
        clip_value: clip every gradient element to [−v, v] (before the norm); None: none.
        eval_every: updates between validations (and checkpoints).
        patience: early stopping after this many validations without improvement of the
            monitored metric; None: never.
        out: the run folder for checkpoints (``best``/``latest.safetensors``), the log and the
            plot; None: write nothing. A folder that already holds a run is refused unless
            resuming or ``overwrite`` (as ``rnnkit train`` refuses it).
        log_format: ``"jsonl"`` or ``"csv"`` (both hold every logged update and validation).
        progress: a progress bar on stderr (only where stderr is a terminal).
        seed: seeds torch, NumPy and ``random`` when ``fit()`` starts; None: leave them (see
            :class:`TrainConfig` for its ``"auto"`` default).
        keep_checkpoints: also keep the last n checkpoints as
            ``step-<update>-<metric>-<value>.safetensors``; 0: none.
    """

    # The run stops at the first limit reached of max_steps, max_epochs and max_time. A budget given
    # alone is the limit: max_steps None means DEFAULT_MAX_STEPS only when neither max_time nor
    # max_epochs is given (see step_limit()).
    # updates, counted over the whole run (a resumed run goes on to this); None: no step limit if max_time or max_epochs
    # is given, else 1000
    max_steps: int | None = None
    # seconds of training in this session (a resume gets it afresh), the final validation included; None: no time limit
    max_time: float | None = None
    max_epochs: int | None = None  # passes over the training data, counted over the whole run; None: no pass limit
    clip_norm: float | None = 5.0  # rescale the global gradient norm to this when above it; None: no norm clipping
    clip_value: float | None = None  # clip every gradient element to [−v, v] (before the norm); None: none
    eval_every: int = 100  # updates between validations (and checkpoints), unless eval_budget holds one back
    # the most of the run's time validation may take (its checkpoints, samples and plot included): a validation due by
    # eval_every waits while it would take more; None: every eval_every updates, whatever it costs
    eval_budget: float | None = 0.05
    patience: int | None = None  # early stopping: validations without improvement; None: never
    out: str | None = None  # folder for checkpoints, log and plot; None: write nothing
    log_format: str = "jsonl"  # "jsonl" or "csv" (both hold every logged step)
    progress: bool = True  # a progress bar on stderr (only where stderr is a terminal)
    seed: int | None = 0  # seeds torch, numpy and random before training; None: leave them
    keep_checkpoints: int = 0  # also keep the last n checkpoints as step-<update>-<metric>-<value>.safetensors; 0: none

    def validate(self) -> TrainingSettings:
        """Return self if every setting is allowed, else raise naming the first that is not."""
        owner = type(self).__name__
        for name in ("max_steps", "max_epochs", "eval_every", "patience"):
            v = getattr(self, name)
            if v is None and name != "eval_every":
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(
                    f"{owner}: {name} must be an int ≥ 1{' or None' if name != 'eval_every' else ''}, got {v!r}"
                )
        if self.max_time is not None and (
            isinstance(self.max_time, bool) or not isinstance(self.max_time, (int, float)) or not self.max_time > 0
        ):
            raise ValueError(f"{owner}: max_time must be a number of seconds > 0 or None, got {self.max_time!r}")
        if (
            isinstance(self.keep_checkpoints, bool)
            or not isinstance(self.keep_checkpoints, int)
            or self.keep_checkpoints < 0
        ):
            raise ValueError(f"{owner}: keep_checkpoints must be an int ≥ 0, got {self.keep_checkpoints!r}")
        if self.eval_budget is not None and (
            isinstance(self.eval_budget, bool)
            or not isinstance(self.eval_budget, (int, float))
            or not 0 < self.eval_budget <= 1
        ):
            raise ValueError(
                f"{owner}: eval_budget must be a share of the run's time in (0, 1] (0.05: 5 %) or None, "
                f"got {self.eval_budget!r}"
            )
        check_clip(self.clip_norm, "clip_norm")
        check_clip(self.clip_value, "clip_value")
        if self.log_format not in ("jsonl", "csv"):
            raise ValueError(f"{owner}: log_format must be 'jsonl' or 'csv', got {self.log_format!r}")
        return self

    def step_limit(self) -> int | None:
        """The number of updates the run stops at: ``max_steps`` if given; else none when
        ``max_time`` or ``max_epochs`` bounds the run; else :data:`DEFAULT_MAX_STEPS`."""
        if self.max_steps is not None:
            return self.max_steps
        return None if self.max_time is not None or self.max_epochs is not None else DEFAULT_MAX_STEPS


#: The step limit of a run given no max_steps, max_time or max_epochs.
DEFAULT_MAX_STEPS = 1000


@dataclass
class TrainConfig(TrainingSettings):
    """The trainer's config: the shared :class:`TrainingSettings` (how long and how to train),
    and what the one who trains decides for the run (the metric watched, the seed, shuffling,
    several processes' DDP setting).

    When to stop: at the first limit reached of ``max_steps``, ``max_epochs`` and ``max_time``;
    a budget given alone is the limit (no hidden 1000-update cap when only ``max_time`` or
    ``max_epochs`` is given); none of them given: 1000 updates.

    Attributes:
        max_steps: updates in the whole run; None: no step limit if ``max_time`` or
            ``max_epochs`` is given, else 1000.
        max_time: seconds of training in this ``fit()``, the final validation included.
        max_epochs: passes over the training data in the whole run.
        clip_norm: rescale the global gradient norm to this when above it (default 5); None:
            no norm clipping.
        clip_value: clip every gradient element to [−v, v]; None: none.
        eval_every: updates between validations (and checkpoints).
        patience: early stopping after this many validations without improvement; None: never.
        out: the run folder (checkpoints, log, plot); None: write nothing.
        log_format: ``"jsonl"`` or ``"csv"``.
        progress: a progress bar on stderr (where it is a terminal).
        keep_checkpoints: also keep the last n checkpoints; 0: none.
        monitor: the validation metric early stopping and the best checkpoint watch: a key of
            what ``evaluate`` returns (default ``"loss"``). It may be missing when neither
            watches it (no ``patience``, no ``out``). The jobs of
            :mod:`rnnkit.train.supervised` name theirs (``job.monitor``, ``job.mode``).
        mode: ``"min"`` or ``"max"``, the better direction of ``monitor``.
        find_unused_parameters: several processes: set when a step leaves parameters without
            gradients.
        shuffle: reorder a list of batches at every pass (seeded by ``seed`` and the pass). A
            list is read in its own order at every pass otherwise; a DataLoader shuffles
            itself (``DataLoader(shuffle=True)``), and asking here for one is an error.
        seed: ``"auto"`` (default): the seed given to :func:`seed_everything` (``rnnkit.seed``)
            if it was called since the last fit — then ``fit()`` does not reseed, so training
            continues the random stream that built the model and one seed fixes both —, else
            0, with which ``fit()`` seeds. An int: ``fit()`` seeds torch, NumPy and ``random``
            with it. None: leave them.
        overwrite: start over in an ``out`` folder that already holds a run (else ``fit()``
            refuses it, as ``rnnkit train`` does without ``--overwrite``).
    """

    monitor: str = "loss"  # the validation metric early stopping and the best checkpoint watch
    mode: str = "min"  # "min" or "max": which direction of ``monitor`` is better
    find_unused_parameters: bool = False  # several processes: set when a step leaves parameters without gradients
    # reorder a list of batches at every pass (seeded by seed and the pass); a DataLoader shuffles itself
    shuffle: bool = False
    # "auto": follow seed_everything()/rnnkit.seed() if it was called since the last fit (fit does not
    # reseed: training continues the random stream that built the model), else 0; an int: fit seeds
    # torch, numpy and random with it; None: leave them
    seed: int | str | None = "auto"
    # start over in an out folder that already holds a run (else fit refuses it, as the CLI does)
    overwrite: bool = False

    def validate(self) -> TrainConfig:
        """Return self if every setting is allowed, else raise naming the first that is not."""
        super().validate()
        if not (
            self.seed is None or self.seed == "auto" or (isinstance(self.seed, int) and not isinstance(self.seed, bool))
        ):
            raise ValueError(f"TrainConfig: seed must be an int, 'auto' or None, got {self.seed!r}")
        if self.mode not in ("min", "max"):
            raise ValueError(f"TrainConfig: mode must be 'min' or 'max', got {self.mode!r}")
        return self


@dataclass
class StepResult:
    """What a ``step_fn`` returns for one batch (a bare loss tensor is refused: wrap it here).

    Attributes:
        loss: the scalar to back-propagate.
        items: how many training items the batch held (for throughput: sequences, characters,
            tokens…).
        metrics: extra numbers to log with the update (floats).
        sequences: how many sequences (default: items).
        weight: how many units ``loss`` (and each metric) is a mean over (default: items) —
            with several processes, each holding a shard of a global batch, the global loss is
            Σ weight·loss / Σ weight, what one process computes on the whole batch; only its
            proportion between shards matters.
    """

    loss: Tensor
    items: int = 1
    metrics: dict[str, float] = field(default_factory=dict)
    sequences: int | None = None
    weight: float | None = None


@dataclass
class TrainResult:
    """How a run ended: what :meth:`Trainer.fit` returns.

    Attributes:
        steps: updates made in the whole run (a resumed run's included).
        items: training items seen (the steps' ``StepResult.items``, summed).
        sequences: sequences seen.
        seconds: how long this ``fit()`` took, the final validation included.
        stop_reason: ``"max_steps"``, ``"max_epochs"``, ``"max_time"``, ``"early_stopping"``
            or ``"callback"``.
        train_loss: the last update's loss.
        val: the last validation's metrics (what ``evaluate`` returned; empty without one).
        best: the best value of the monitored metric seen (None without one);
            :meth:`Trainer.load_best` puts the weights it was seen with back into the model.
        history: every logged record, oldest first: ``{"kind": "train", "step", "epoch",
            "time", "loss", "grad_norm", "clip", "lr", "items_per_s", …metrics}`` per update and
            ``{"kind": "val", "step", "time", "val_<metric>"…}`` per validation.
        train_loss_smoothed: the mean loss of the last 20 updates (less noisy than
            ``train_loss``).
        epochs: passes over the training data read to their end, in the whole run.
    """

    steps: int
    items: int
    sequences: int
    seconds: float  # of this fit(), the final validation included
    stop_reason: str  # "max_steps", "max_time", "early_stopping", "callback"
    train_loss: float  # the last update's loss
    val: dict[str, float]  # the last validation's metrics
    best: float | None  # the best value of ``monitor`` seen
    history: list[dict]  # the last Trainer.history_keep records (every one is in the run's log, ``log``)
    train_loss_smoothed: float = math.nan  # the mean loss of the last 20 updates (less noisy than train_loss)
    epochs: int = 0  # passes over the training data read to their end, in the whole run
    # of ``seconds``, what validating took (evaluation, samples, checkpoints, plot), the final one included
    evaluation_seconds: float = 0.0
    log: str | None = None  # the run's log file, which holds every record (None: the run wrote none)


class TrainingDiverged(RuntimeError):
    """The loss or the gradient became NaN or infinite."""


_PENDING_SEED: list[int] = []  # the seed given to seed_everything since the last fit that followed one


def seed_everything(seed: int) -> int:
    """Seed torch (the CPU and every GPU), NumPy and Python's ``random`` with one seed, now —
    call it first, before building the model — and let the next :meth:`Trainer.fit` follow it.

    The model built after this call and the next run are then both fixed by ``seed``: a fit
    whose ``TrainConfig.seed`` is ``"auto"`` (the default) does not reseed, so training
    continues the random stream that built the model (dropout masks, a DataLoader's shuffling),
    and takes ``seed`` for what else it seeds (a shuffled list of batches). One such fit uses it
    up (any fit does): a later fit without a new call seeds with 0 as ``"auto"`` does by default.
    An explicit ``TrainConfig(seed=k)`` reseeds at fit with k instead. Also ``rnnkit.seed``. Returns
    ``seed``.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed_everything: seed must be an int, got {type(seed).__name__}")
    _seed_rngs(seed)
    _PENDING_SEED[:] = [seed]
    return seed


def _seed_rngs(seed: int) -> None:
    torch.manual_seed(seed)  # also every CUDA device's generator
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _seed_plan(setting: int | str | None) -> tuple[int | None, bool]:
    """(the run's seed, whether fit seeds the RNGs with it) for a ``TrainConfig.seed``; every fit
    uses up a pending :func:`seed_everything`, whatever its setting."""
    pending = _PENDING_SEED.pop() if _PENDING_SEED else None
    if setting != "auto":
        return setting, setting is not None
    return (0, True) if pending is None else (pending, False)


class Trainer:
    """Trains ``model`` by repeating: batch → ``step_fn`` → backward → clip → optimizer step.

    Everything else a run does (the log file, validation's early stopping, checkpoints, the
    plot, the progress bar, printed samples) is a :class:`~rnnkit.train.callbacks.Callback`.

    Args:
        model: any ``nn.Module``.
        optimizer: a torch optimizer over the model's parameters.
        step_fn: ``step_fn(model, batch) -> StepResult``; the forward pass and the loss. If it is
            an object with ``state_dict``/``load_state_dict`` (state carried from one batch to
            the next, e.g. truncated BPTT's hidden state), that state is saved in checkpoints.
        data: the training batches, read pass after pass (epochs, see
            :class:`~rnnkit.train.epochs.Epochs`): a ``torch.utils.data.DataLoader`` (with
            ``shuffle=True`` it reshuffles at every pass), a list of batches (in its order at
            every pass unless ``TrainConfig(shuffle=True)``), or any object whose ``__iter__``
            starts a new pass (``set_epoch(e)`` is called before pass e when it has one). A
            generator can be read once: enough for ``max_epochs=1`` or an endless stream; one
            that runs dry before the run ends is an error saying so. With several processes, each one's own
            shard of every global batch, or None where its shard of a batch is empty. Batches
            may live on the CPU: each is moved to the model's device (:func:`~rnnkit.train.device.to_device`,
            its tensors inside tuples, lists, dicts and dataclasses) before ``step_fn`` sees it.
        config: :class:`TrainConfig`.
        evaluate: ``evaluate(model) -> dict`` of validation metrics (numbers), run every
            ``eval_every`` updates and at the end (in ``eval()`` mode, without gradients). It
            must hold ``config.monitor`` (default ``"loss"``) when early stopping
            (``patience``) or the best checkpoint (``out``) watch it; without them a missing
            monitor only means no best is tracked. The jobs of :mod:`rnnkit.train.supervised`
            give ready ones (``job.evaluator(val_loader)``) and name their metric
            (``job.monitor``, ``job.mode``).
        scheduler: a torch LR scheduler, stepped after every update.
        callbacks: :class:`~rnnkit.train.callbacks.Callback` objects, called after the ones the
            config asks for; one of the same type as a built-in one replaces it.
        meta: JSON-able facts saved in every checkpoint (the task's config, vocabulary…).
        history_keep: records of ``history`` kept in memory (the last ones; the log on disk holds
            every one), so a run's memory does not grow with its length.

    Resuming: a batch source with ``state_dict``/``load_state_dict`` (:mod:`rnnkit.train.positions`)
    has its position saved in every checkpoint and restored, so a resumed run starts where the
    data stood; any other source is fast-forwarded by drawing the batches already seen again.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        step_fn: Callable[[nn.Module, Any], StepResult],
        data: Iterable,
        config: TrainConfig | None = None,
        *,
        evaluate: Callable[[nn.Module], dict] | None = None,
        scheduler: Any = None,
        callbacks: Sequence[Callback] = (),
        meta: dict | None = None,
        history_keep: int = HISTORY_KEEP,
    ) -> None:
        self.config = (config or TrainConfig()).validate()
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.step_fn, self.data, self.evaluate_fn = step_fn, data, evaluate
        self.given_callbacks = list(callbacks)
        self.callbacks = _replace_builtins(default_callbacks(self.config), self.given_callbacks)
        self.meta = dict(meta or {})
        self.out = Path(self.config.out) if self.config.out else None
        self.step = 0
        self.items = 0
        self.sequences = 0
        self.history: deque[dict] = bounded_history(keep=history_keep)  # the last records; the log holds all
        self.best: float | None = None
        self.improved = False  # whether the last validation improved the monitored metric
        self.should_stop = False
        self.stop_reason: str | None = None
        self.last_val: dict[str, float] = {}
        self.validation_seconds = 0.0  # what the last validation and its checkpoints took
        self.evaluation_seconds = 0.0  # what every validation of this fit() took together
        self._due = False  # eval_every said validate, and the budget has not allowed it yet
        self._started = time.monotonic()
        self._time_before = 0.0  # seconds of training before this fit() (a resumed run's)
        self._process_rng = _ProcessRNG()
        self.epochs = Epochs(data, max_epochs=self.config.max_epochs, shuffle=self.config.shuffle)  # checks shuffle
        self.seed: int | None = None  # the run's seed, known once fit() starts (see TrainConfig.seed)
        self._best_state: dict[str, Tensor] | None = None  # without an out folder: the best validation's weights
        self._wrote_out = False  # whether this trainer's own run is the one in out

    # -- the loop --------------------------------------------------------------------------------
    def fit(self, resume_from: str | Path | None = None) -> TrainResult:
        """Train until max_steps, max_epochs, max_time, early stopping or a callback says stop
        (the first of them; see :meth:`TrainingSettings.step_limit`).

        ``resume_from``: a checkpoint this trainer wrote; the model, optimizer, scheduler, RNG
        states, progress and the callbacks' state are restored, the data continues where it stood
        (the source's saved position, or, for a source without one, by drawing the batches already
        seen again), and the log is continued from that step. ``max_steps`` counts every update of
        the run; ``max_time`` is this call's budget, the final validation included.

        In a process group (torchrun) every process calls ``fit`` with its shard of the data;
        the model is wrapped in DistributedDataParallel for the loop and left unwrapped after.
        """
        batches = self._start(resume_from)
        try:
            while not self._finished():
                taken = next(batches, None)
                if taken is None:  # max_epochs passes made
                    self.stop("max_epochs")
                    break
                epoch, batch = taken
                record = self._update(epoch, batch)  # forward, backward, clip, optimizer step
                self._call("on_step", record)
                # one collective: a clock read or a callback's stop on any process holds for all
                self._due = self._due or self.step % self.config.eval_every == 0
                out_of_time, self.should_stop, halfway, wait = distributed.agree(
                    self._out_of_time(), self.should_stop, self._halfway_unmeasured(), self._due and self._over_budget()
                )
                if out_of_time and not self.should_stop:
                    self.stop("max_time")
                if ((self._due and not wait) or halfway) and not self._finished():
                    self._validate()
            if self.step and not self._validated_now():  # every run ends validated and saved
                self._validate()
        finally:
            self._call("on_fit_end")
        train = [r["loss"] for r in self.history if r.get("kind") == "train"]
        log = self.out / f"metrics.{self.config.log_format}" if self.out else None
        return TrainResult(
            self.step,
            self.items,
            self.sequences,
            self.elapsed(),
            self.stop_reason or "max_steps",
            train[-1] if train else math.nan,
            dict(self.last_val),
            self.best,
            list(self.history),
            _mean(train[-SMOOTHING:]),
            self.epochs.completed,
            self.evaluation_seconds,
            str(log) if log is not None and log.is_file() else None,
        )

    def stop(self, reason: str = "callback") -> None:
        """End training after the current update, saying why (``TrainResult.stop_reason``)."""
        self.should_stop = True
        self.stop_reason = self.stop_reason or reason

    def elapsed(self) -> float:
        """Seconds since this ``fit()`` began."""
        return time.monotonic() - self._started

    # -- the loop's parts ------------------------------------------------------------------------
    def _start(self, resume_from: str | Path | None) -> Iterator[tuple[int, Any]]:
        cfg, rank = self.config, distributed.rank()
        self._check_out(resume_from)
        self.seed, reseed = _seed_plan(cfg.seed)
        if self.seed is not None and (reseed or rank):
            _seed_rngs(self.seed + rank)  # own dropout masks per process; rank 0 draws what one process would
        batches = self.epochs = Epochs(self.data, max_epochs=cfg.max_epochs, shuffle=cfg.shuffle, seed=self.seed)
        if resume_from is not None:
            restored = self._resume(Path(resume_from))
            if rank and self.seed is not None and not self._process_rng.restored:  # a checkpoint of fewer processes
                _seed_rngs(int(np.random.SeedSequence([self.seed, rank, self.step]).generate_state(1)[0]))
            if restored:  # the source continues from its saved position: nothing is drawn twice
                where = self.data.state_dict()
                batches.continue_from(where["epoch"], where.get("position", 0))
            else:
                for _ in range(self.step):  # the data order is a function of the seed: skip what was seen
                    if next(batches, None) is None:
                        self.stop("max_epochs")
                        break
        # DDP copies rank 0's weights to every process here, after a resume has loaded them
        self._replicas = (
            distributed.wrap(self.model, self.step_fn, _empty_shard, cfg.find_unused_parameters)
            if distributed.is_distributed()
            else None
        )
        self._device = model_device(self.model)  # the data comes on the CPU; the step runs where the weights are
        self._time_before = self.history[-1]["time"] if self.history else 0.0
        self.validation_seconds = _last_validation_seconds(self.history)  # a resumed run knows from its log
        self.evaluation_seconds, self._due = 0.0, False
        self.should_stop, self.stop_reason = False, None
        self._started = time.monotonic()
        self._call("on_fit_start")
        if distributed.agree(self._out_of_time())[0]:
            self.stop("max_time")
        return batches

    def _check_out(self, resume_from: str | Path | None) -> None:
        """The rule ``rnnkit train`` follows too: an ``out`` folder that already holds a run is
        continued only by a resume and started over only when asked (``overwrite``); checked
        before any work, with whether the folder can be written."""
        if self.out is None or not distributed.is_main():
            return
        run = RunFolder(self.out)
        run.check_writable()
        if resume_from is None and not self.config.overwrite and not self._wrote_out and run.holds_run():
            raise FileExistsError(
                f"{run} already holds a run: fit(resume_from=RunFolder(out).latest) continues it, "
                f"TrainConfig(overwrite=True) starts over there, or choose another out"
            )
        self._wrote_out = True

    def load_best(self) -> nn.Module:
        """Put the weights of the best validation (the best ``monitor`` seen) into the model, and
        return the model.

        With an ``out`` folder they come from its ``best.safetensors``; without one, from the
        copy this trainer kept at that validation. Without ``evaluate`` every checkpoint is the
        best, so the model keeps its last weights. Raises RuntimeError if no validation has
        given the monitored metric yet.
        """
        best = RunFolder(self.out).best if self.out is not None else None
        if best is not None and best.is_file():
            from ..checkpoint import load_checkpoint

            load_checkpoint(best, model=self.model)
        elif self._best_state is not None:
            self.model.load_state_dict(self._best_state)
        elif self.evaluate_fn is not None or self.step == 0:
            raise RuntimeError(
                f"Trainer.load_best: no best weights yet — fit() has not validated with "
                f"{self.config.monitor!r} (the monitored metric) among evaluate()'s results"
            )
        return self.model

    def _finished(self) -> bool:
        if self.should_stop:  # set by a callback directly, or by stop()
            self.stop_reason = self.stop_reason or "callback"
            return True
        limit = self.config.step_limit()
        if limit is not None and self.step >= limit:
            self.stop_reason = self.stop_reason or "max_steps"
            return True
        return False

    def _out_of_time(self) -> bool:
        """Whether the budget is spent, counting the final validation as the last one took."""
        budget = self.config.max_time
        return budget is not None and self.elapsed() + self.validation_seconds >= budget

    def _halfway_unmeasured(self) -> bool:
        """Half the time budget spent without a validation to tell what the final one will cost:
        validate now, so the rest of the budget can be planned with it."""
        budget = self.config.max_time
        return budget is not None and not self.validation_seconds and self.elapsed() >= budget / 2

    def _over_budget(self) -> bool:
        """Whether validating now would take the time spent validating in this fit() past
        ``eval_budget`` of it, costing what the last validation cost. The first validation is
        never held back: until one is measured, nothing says what it costs."""
        budget = self.config.eval_budget
        cost = self.validation_seconds
        return budget is not None and self.evaluation_seconds + cost > budget * (self.elapsed() + cost)

    def _validated_now(self) -> bool:
        return bool(self.history) and self.history[-1].get("kind") == "val" and self.history[-1]["step"] == self.step

    def _update(self, epoch: int, batch: Any) -> dict:
        """One optimizer update on ``batch``; returns its log record."""
        cfg = self.config
        tick = time.monotonic()
        batch = to_device(batch, self._device)  # also under DDP: StepModule hands it on as it is
        self.model.train()
        if self._replicas is None:
            result = _check_step_result(self.step_fn(self.model, batch))
            loss_value, loss = float(result.loss.detach()), result.loss
            items = int(result.items)
            sequences = int(result.items if result.sequences is None else result.sequences)
            metrics = {k: float(v) for k, v in result.metrics.items()}
        else:
            result = _check_step_result(self._replicas(batch))
            # one collective: the global loss and metrics, and this shard's share of them
            step = distributed.combine(_shard_of(result))
            loss_value, items, sequences, metrics = step.loss, step.items, step.sequences, step.metrics
            loss = result.loss * step.scale  # DDP's mean over N gradients becomes the global batch's gradient
        if not math.isfinite(loss_value):  # the same global value on every process: all stop here
            raise TrainingDiverged(self._diverged("loss", loss_value))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # clip before the update; the norm logged is the one before clipping
        grad_norm = clip_gradients(self.model.parameters(), cfg.clip_norm, cfg.clip_value)
        if not math.isfinite(grad_norm):
            raise TrainingDiverged(self._diverged("gradient norm", grad_norm))
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.step += 1
        self.items += items
        self.sequences += sequences
        now = time.monotonic()
        record = {
            "kind": "train",
            "step": self.step,
            "epoch": epoch,
            "time": round(self._time_before + now - self._started, 4),  # seconds of training in the whole run
            "loss": loss_value,
            "grad_norm": grad_norm,
            "clip": cfg.clip_norm,
            "lr": self.optimizer.param_groups[0]["lr"],
            "items_per_s": items / max(now - tick, 1e-9),
            **metrics,
        }
        self.history.append(record)
        return record

    def _validate(self) -> None:
        """Validate (rank 0; the others take its numbers), tell the callbacks, then save."""
        cfg, tick = self.config, time.monotonic()
        self.improved = False
        if self.evaluate_fn is not None:
            metrics = None
            if distributed.is_main():  # the replicas are equal: rank 0 validates, the others take its numbers
                self.model.eval()
                with torch.no_grad():
                    metrics = {k: float(v) for k, v in self.evaluate_fn(self.model).items()}
                self.model.train()
            metrics = distributed.broadcast(metrics)
            watchers = [type(cb).__name__ for cb in self.callbacks if isinstance(cb, (EarlyStopping, Checkpoints))]
            if cfg.monitor not in metrics and watchers:  # without watchers a missing monitor only means no best
                raise KeyError(
                    f"evaluate() returned {sorted(metrics)}, without the monitored metric {cfg.monitor!r}, "
                    f"which {' and '.join(watchers)} watch: return it, or set TrainConfig(monitor=…, mode=…) "
                    f"to one of those"
                )
            self.last_val = metrics
            value = metrics.get(cfg.monitor)
            self.improved = value is not None and (
                self.best is None or (value < self.best if cfg.mode == "min" else value > self.best)
            )
            if self.improved:
                self.best = value
                if self.out is None:  # no best checkpoint to reload later: keep the weights here
                    self._best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
            took = time.monotonic() - tick
            self.history.append(
                {
                    "kind": "val",
                    "step": self.step,
                    "time": round(self._time_before + self.elapsed(), 4),
                    **{f"val_{k}": v for k, v in metrics.items()},
                    # the evaluation itself, and the share of this fit() spent validating so far
                    # (this validation's samples and checkpoints count from the next record on)
                    "eval_seconds": round(took, 4),
                    "eval_share": round((self.evaluation_seconds + took) / max(self.elapsed(), 1e-9), 4),
                }
            )
            self._call("on_validation", metrics)
            self.should_stop = distributed.agree(self.should_stop)[0]  # a callback's stop holds for all processes
        self._call("on_save")
        self.validation_seconds = max(time.monotonic() - tick, 1e-9)  # > 0: measured
        self.evaluation_seconds += self.validation_seconds
        self._due = False

    def _call(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    # -- checkpoints -----------------------------------------------------------------------------
    def _resume(self, path: Path) -> bool:
        """Restore everything from the checkpoint at ``path``; True if the data source's position
        was restored too (else the caller replays the batches already seen)."""
        from ..checkpoint import load_checkpoint, read_meta
        from .logs import iter_log

        extra = self.stateful()
        if "data" in extra and not read_meta(path).get("trainer", {}).get("data_state"):
            del extra["data"]  # a checkpoint from before the source had a state: replay instead
        meta = load_checkpoint(
            path, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler, restore_rng=True, extra=extra
        )
        state = meta["trainer"]
        self.step, self.items, self.best = state["step"], state["items"], state["best"]
        self.sequences = state["sequences"]
        self.last_val = meta.get("val", {})
        log_path = path.parent / f"metrics.{self.config.log_format}"
        if log_path.is_file():  # streamed: only the last history_keep records stay
            self.history = bounded_history(
                (r for r in iter_log(log_path) if r["step"] <= self.step), self.history.maxlen
            )
        return "data" in extra

    def save(self, path: Path, also: Sequence[Path] = ()) -> Path:
        """Write a checkpoint: weights, optimizer and scheduler state, RNG states, progress, meta,
        and the state of the step function and callbacks that carry any. ``also``: more files to
        hold the same checkpoint (e.g. ``best`` beside ``latest``), written from the same bytes
        instead of being serialised again."""
        from ..checkpoint import save_checkpoint

        extra = self.stateful()
        meta = {
            **self.meta,
            "trainer": {
                "step": self.step,
                "items": self.items,
                "sequences": self.sequences,
                "best": self.best,
                "config": asdict(self.config),
                "data_state": "data" in extra,
            },
            "val": self.last_val,
        }
        return save_checkpoint(
            path,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            meta=meta,
            extra=extra,
            also=also,
        )

    def stateful(self) -> dict[str, Any]:
        """What carries state between updates and is saved with every checkpoint, so a resumed
        run continues exactly: the step function if it is an object with
        ``state_dict``/``load_state_dict`` (e.g. truncated BPTT's carried hidden state), every
        callback that has them (e.g. a sampling callback's generator), each process's RNGs, and the
        data source if it has them (its position, :mod:`rnnkit.train.positions`)."""
        step_fn = self.step_fn
        if not _has_state(step_fn) and _has_state(getattr(step_fn, "__self__", None)):
            warnings.warn(
                "Trainer: the state of a bound method's object is saved for now, but will not be from the "
                "next release; pass the stateful object itself as step_fn (callable) or its state through "
                "a callback",
                DeprecationWarning,
                stacklevel=3,
            )
            step_fn = step_fn.__self__
        objects = {"step_fn": step_fn, "data": self.data}  # the data source: where it stands (a position)
        for i, cb in enumerate(self.callbacks):
            given = next((k for k, c in enumerate(self.given_callbacks) if c is cb), None)
            objects[cb.state_key or f"callback.{i if given is None else given}"] = cb
        objects["process_rng"] = self._process_rng
        return {name: obj for name, obj in objects.items() if _has_state(obj)}

    def _diverged(self, what: str, value: float) -> str:
        kept = (
            f"; the last good checkpoint is kept in {self.out}"
            if self.out and RunFolder(self.out).latest.exists()
            else ""
        )
        return (
            f"training diverged at step {self.step + 1}: the {what} is {value}{kept}. "
            f"Try a lower learning rate or gradient clipping (clip_norm, now {self.config.clip_norm})."
        )


SMOOTHING = 20  # updates in TrainResult.train_loss_smoothed


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _last_validation_seconds(history: list[dict]) -> float:
    """How long the last validation in a log took: its record's time less the update's before it."""
    for i in range(len(history) - 1, 0, -1):
        if history[i].get("kind") == "val" and history[i - 1].get("kind") == "train":
            return max(0.0, history[i]["time"] - history[i - 1]["time"])
    return 0.0


def _has_state(obj: Any) -> bool:
    return callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))


def default_callbacks(cfg: TrainConfig) -> list[Callback]:
    """The callbacks a config asks for: early stopping, the log file, checkpoints, the plot,
    the progress bar."""
    found: list[Callback] = []
    if cfg.patience is not None:
        found.append(EarlyStopping(cfg.patience))
    if cfg.out:
        run = RunFolder(cfg.out)
        found += [
            LogFile(run.path, cfg.log_format),
            Checkpoints(run.path, cfg.keep_checkpoints),
            Plot(run.curves, cfg.monitor),
        ]
    if cfg.progress:
        found.append(ProgressBar(cfg.step_limit(), cfg.max_time))
    return found


def _replace_builtins(defaults: list[Callback], given: list[Callback]) -> list[Callback]:
    """The defaults, each replaced by a given callback of its type, then the other given ones."""
    swapped = {type(d): next((g for g in given if type(g) is type(d)), None) for d in defaults}
    return [swapped[type(d)] or d for d in defaults] + [g for g in given if g not in swapped.values()]


def _check_step_result(result: Any) -> StepResult:
    """``result`` if it is a StepResult, else a TypeError saying what to return."""
    if isinstance(result, StepResult):
        return result
    if isinstance(result, Tensor):
        raise TypeError(
            "step_fn must return a StepResult, got a bare Tensor: return "
            "rnnkit.train.StepResult(loss, items=<items in the batch>) — items counts throughput and "
            "weighs the loss across processes (or use a ready step: rnnkit.train.Classification, "
            "Tagging, Regression)"
        )
    raise TypeError(f"step_fn must return a rnnkit.train.StepResult(loss, items=…), got {type(result).__name__}")


def _empty_shard(zero: Tensor) -> StepResult:
    """The step result of a process holding no part of a global batch: a zero loss of weight 0."""
    return StepResult(zero, items=0, sequences=0, weight=0.0)


def _shard_of(result: StepResult) -> distributed.Shard:
    """What this process tells the others about its step (see :func:`distributed.combine`)."""
    weight = float(result.items if result.weight is None else result.weight)
    if weight < 0 or not math.isfinite(weight):
        raise ValueError(f"StepResult.weight (or items) must be a finite number ≥ 0, got {weight}")
    return distributed.Shard(
        weight,
        float(result.loss.detach()) if weight > 0 else 0.0,
        int(result.items),
        int(result.items if result.sequences is None else result.sequences),
        {k: float(v) for k, v in result.metrics.items()},
    )


class _ProcessRNG:
    """Every process's RNG states in the checkpoint (its dropout masks, its sampling), so that a
    run of N processes resumes exactly as it would have gone on; the checkpoint's global ``rng``
    is rank 0's alone. A checkpoint of fewer processes leaves ``restored`` False for the others."""

    def __init__(self) -> None:
        self.restored = False
        self.others: dict[str, dict] = {}  # the other processes' states, as the last merge brought them

    def state_dict(self) -> dict:
        from ..checkpoint import rng_state

        return {"ranks": {**self.others, str(distributed.rank()): rng_state()}}

    def merge_state_dicts(self, states: list[dict]) -> dict:
        return {"ranks": {rank: state for part in states for rank, state in part["ranks"].items()}}

    def load_state_dict(self, saved: dict) -> None:
        from ..checkpoint import set_rng_state

        me = str(distributed.rank())
        mine = saved["ranks"].get(me)
        self.others = {rank: state for rank, state in saved["ranks"].items() if rank != me}
        self.restored = mine is not None
        if mine is not None:
            set_rng_state(mine)
