"""Train a built-in task the way ``rnnkit train`` does, by a fixed number of updates."""

from __future__ import annotations

from pathlib import Path

from rnnkit.tasks import Task, run_task


def train(task_class: type[Task], out: Path, **settings) -> tuple[Task, dict]:
    """Run ``task_class`` with ``settings`` through :func:`rnnkit.tasks.run_task` on the CPU.

    ``max_steps`` is required and ``max_time`` is off, so a busy machine takes longer but trains
    the same updates; validation runs once, after the last update (unless ``eval_every`` says
    otherwise). Returns the task (its ``baseline`` holds every baseline metric of the
    validation split) and the run's summary. The log is printed: pytest shows it when a test fails.
    """
    settings.setdefault("eval_every", settings["max_steps"])
    cfg = task_class.Config(out=str(out), progress=False, device="cpu", max_time=None, **settings)
    task = task_class(cfg)
    result = run_task(task, log=print)
    assert result["steps"] == settings["max_steps"], result
    return task, result
