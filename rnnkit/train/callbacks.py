"""What the training loop does besides updating: each job a callback a user can swap or add.

The :class:`~rnnkit.train.Trainer` builds the usual ones from its :class:`~rnnkit.train.TrainConfig`
(:class:`EarlyStopping` with ``patience``, :class:`LogFile`, :class:`Checkpoints` and
:class:`Plot` with ``out``, :class:`ProgressBar` with ``progress``); a callback of one of these
types passed in ``callbacks=`` takes the place of the one it would have built.

Hooks, in the order the loop calls them::

    on_fit_start ─┬─ on_step (every update)
                  ├─ on_validation (every eval_every updates and at the end)
                  │   └─ on_save (once every callback has seen the validation) ─ on_checkpoint
                  └─ on_fit_end

A callback whose state must survive a resume (a generator, a counter) has ``state_dict()`` and
``load_state_dict()``; the trainer saves that state in every checkpoint, under ``state_key``
(default ``callback.<i>``, its place among the callbacks given to the trainer).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from . import distributed
from .history import CurveRecords
from .logs import RunLog, iter_log
from .plots import plot_curves

if TYPE_CHECKING:
    from .trainer import Trainer


class Callback:
    """Hooks into the loop; override what you need. ``trainer.stop(reason)`` ends training after
    the current update (setting ``trainer.should_stop = True`` does the same)."""

    #: the name this callback's state is saved under in a checkpoint (if None, ``callback.<i>``)
    state_key: ClassVar[str | None] = None

    def on_fit_start(self, trainer: Trainer) -> None:
        """Before the first update (after a resume has restored the trainer)."""

    def on_step(self, trainer: Trainer, record: dict) -> None:
        """After every update, with its log record."""

    def on_validation(self, trainer: Trainer, metrics: dict) -> None:
        """After every validation (``trainer.improved`` says whether the monitored metric did)."""

    def on_save(self, trainer: Trainer) -> None:
        """After every validation, once every callback has seen it: where checkpoints are written."""

    def on_checkpoint(self, trainer: Trainer, path: Path) -> None:
        """After a checkpoint was written to ``path``."""

    def on_fit_end(self, trainer: Trainer) -> None:
        """When training ends, also by an exception."""


class EarlyStopping(Callback):
    """Stop after ``patience`` validations in a row without improvement of the monitored metric."""

    state_key = "early_stopping"

    def __init__(self, patience: int) -> None:
        self.patience, self.bad = patience, 0

    def on_validation(self, trainer: Trainer, metrics: dict) -> None:
        self.bad = 0 if trainer.improved else self.bad + 1
        if self.bad >= self.patience:
            trainer.stop("early_stopping")

    def state_dict(self) -> dict:
        """Validations without improvement so far."""
        return {"bad": self.bad}

    def load_state_dict(self, saved: dict) -> None:
        """Restore the count."""
        self.bad = int(saved["bad"])


class LogFile(Callback):
    """Every update and validation as a record of ``metrics.jsonl`` (or ``.csv``) in ``folder``;
    a resumed run's log is rewritten up to its checkpoint and continued."""

    def __init__(self, folder: str | Path, fmt: str = "jsonl") -> None:
        self.folder, self.fmt, self.log = Path(folder), fmt, None

    def on_fit_start(self, trainer: Trainer) -> None:
        if distributed.is_main():  # the log on disk up to this step (a resumed run's checkpoint), continued
            self.log = RunLog(self.folder, self.fmt, upto=trainer.step)

    def on_step(self, trainer: Trainer, record: dict) -> None:
        if self.log:
            self.log.write(record)

    def on_validation(self, trainer: Trainer, metrics: dict) -> None:
        if self.log:
            self.log.write(trainer.history[-1])

    def on_save(self, trainer: Trainer) -> None:
        if self.log:  # before the checkpoint: a resumed run finds every record up to it
            self.log.flush()

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.log:
            self.log.close()
            self.log = None


class Checkpoints(Callback):
    """``latest.safetensors`` at every validation, ``best.safetensors`` when the monitored metric
    improved, and, with ``keep`` > 0, the last ``keep`` checkpoints as
    ``step-000400-<monitor>-<value>.safetensors``."""

    def __init__(self, folder: str | Path, keep: int = 0) -> None:
        from .run_folder import RunFolder

        self.run, self.keep = RunFolder(folder), keep

    def on_save(self, trainer: Trainer) -> None:
        distributed.merge_states(trainer.stateful())  # a collective: state held in shards is saved whole
        if not distributed.is_main():
            return
        paths = [self.run.latest]
        if trainer.improved or trainer.evaluate_fn is None:
            paths.append(self.run.best)
        if self.keep:
            monitor = trainer.config.monitor
            paths.append(self.run.kept(trainer.step, monitor, trainer.last_val.get(monitor)))
        trainer.save(paths[0], also=paths[1:])  # serialised once, written under each name
        if self.keep:
            for old in self.run.kept_checkpoints()[: -self.keep]:
                old.unlink(missing_ok=True)
        for path in paths:
            for cb in trainer.callbacks:
                cb.on_checkpoint(trainer, path)


class Plot(Callback):
    """``curves.png``: the loss (nats), the task's metric with its baseline, and the gradient norm
    (see :func:`~rnnkit.train.plots.plot_curves`) — redrawn at a validation when ``every``
    seconds have passed since it was last drawn, and when training ends. Drawing takes about half
    a second (more than a char-LM's validation), so redrawing at every validation would spend the
    evaluation budget on pictures; ``every=0`` redraws at each one.

    It draws from records of its own (:class:`~rnnkit.train.history.CurveRecords`: every
    validation, training records thinned to a few thousand), so its memory does not grow with
    the run; a resumed run's are read back from its log."""

    def __init__(
        self,
        path: str | Path,
        monitor: str = "loss",
        *,
        metric: str | None = None,
        baseline: float | None = None,
        title: str | None = None,
        metric_label: str | None = None,
        every: float = 60.0,
    ) -> None:
        self.path, self.monitor, self.metric, self.baseline = Path(path), monitor, metric, baseline
        self.title, self.metric_label, self.every = title, metric_label, every
        self.drawn_at, self.drawn_step = 0.0, None  # trainer.elapsed() and step at the last drawing
        self.curves = CurveRecords()

    def on_fit_start(self, trainer: Trainer) -> None:
        self.drawn_at, self.drawn_step = 0.0, None
        self.curves = CurveRecords()
        log = trainer.out / f"metrics.{trainer.config.log_format}" if trainer.out else None
        if trainer.step and log is not None and log.is_file():  # the run so far, from its log
            records = (r for r in iter_log(log) if r["step"] <= trainer.step)
        else:
            records = trainer.history
        for record in records:
            self.curves.add(record)

    def on_step(self, trainer: Trainer, record: dict) -> None:
        self.curves.add(record)

    def on_validation(self, trainer: Trainer, metrics: dict) -> None:
        self.curves.add(trainer.history[-1])

    def on_save(self, trainer: Trainer) -> None:
        if trainer.elapsed() - self.drawn_at >= self.every:
            self.draw(trainer)

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.drawn_step != trainer.step and any(r.get("kind") == "train" for r in self.curves.records()):
            self.draw(trainer)

    def draw(self, trainer: Trainer) -> None:
        """Write the curves of the run so far."""
        if distributed.is_main():
            plot_curves(
                self.curves.records(),
                self.path,
                monitor=self.monitor,
                metric=self.metric,
                baseline=self.baseline,
                title=self.title or self.path.parent.name,
                metric_label=self.metric_label,
            )
        self.drawn_at, self.drawn_step = trainer.elapsed(), trainer.step


class ProgressBar(Callback):
    """A tqdm bar on stderr over updates (with ``max_steps``) or seconds (with only ``max_time``),
    showing the loss of the update just made; only where stderr is a terminal, so a log file
    gets no ``\\r`` frames. Print beside it with :func:`write`, which lifts the bar first."""

    def __init__(
        self, max_steps: int | None, max_time: float | None, *, force: bool = False, mininterval: float = 0.1
    ) -> None:
        """``force``: show the bar whatever stderr is; ``mininterval``: seconds between redraws."""
        self.max_steps, self.max_time, self.force, self.bar = max_steps, max_time, force, None
        self.mininterval, self.shown = mininterval, 0

    def on_fit_start(self, trainer: Trainer) -> None:
        if not distributed.is_main() or not (self.force or _is_terminal(sys.stderr)):
            return
        from tqdm.auto import tqdm

        by_steps = self.max_steps is not None
        self.shown = trainer.step if by_steps else 0
        total = self.max_steps if by_steps else int(round(self.max_time))
        self.bar = tqdm(
            total=total,
            initial=self.shown,
            unit="step" if by_steps else "s",
            dynamic_ncols=True,
            leave=False,
            file=sys.stderr,
            mininterval=self.mininterval,
            miniters=1,
            bar_format=None if by_steps else "{l_bar}{bar}| {n}/{total} s [{elapsed}<{remaining}{postfix}]",
        )

    def on_step(self, trainer: Trainer, record: dict) -> None:
        if self.bar is None:
            return
        # whole counts: updates, or whole seconds of this session's budget
        now = trainer.step if self.max_steps is not None else min(int(trainer.elapsed()), self.bar.total)
        # the postfix first, so the frame the update draws shows this update's loss
        self.bar.set_postfix(loss=f"{record['loss']:.4f}", items_s=f"{record['items_per_s']:,.0f}", refresh=False)
        self.bar.update(now - self.shown)
        self.shown = now

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def write(text: str, file: Any = None) -> None:
    """Print a line beside a progress bar: the bar is cleared, the line printed, the bar redrawn
    (tqdm's own write path), so lines never glue to a frame of the bar."""
    from tqdm.auto import tqdm

    tqdm.write(text, file=file if file is not None else sys.stdout)


__all__ = ["Callback", "EarlyStopping", "LogFile", "Checkpoints", "Plot", "ProgressBar", "write"]
