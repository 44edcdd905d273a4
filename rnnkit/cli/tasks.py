"""``rnnkit tasks``: the built-in tasks, one line each."""

from __future__ import annotations

from ..tasks import TASKS


def add_parser(subs) -> None:
    """Register ``rnnkit tasks`` and its options."""
    subs.add_parser("tasks", help="list the built-in tasks", description=__doc__)


def run(args) -> int:
    """Run ``rnnkit tasks`` with parsed ``args``; returns the exit code."""
    width = max(map(len, TASKS))
    for name, task in TASKS.items():
        print(f"{name:<{width}}  {task.summary}")
    print("\ntrain one with: rnnkit train TASK [options]   (rnnkit train TASK --help lists its options)")
    return 0
