"""The run folder: the one place that knows what a training run writes and where.

A run lives in one folder::

    runs/charlm/
        latest.safetensors        the most recent checkpoint (``--resume`` continues from it)
        best.safetensors          the checkpoint with the best validation score (sample, eval)
        step-000400-bpc-2.113.safetensors   a kept checkpoint (``keep_checkpoints``), named
                                  with its update and validation metric
        config.json               the task, its resolved settings and what rebuilds the model
        metrics.jsonl             every logged update and validation (or metrics.csv)
        curves.png                the curves of that log

:class:`RunFolder` owns these names, the choice of a free folder for a new run, which run a
``--resume`` continues, whether a folder can be written, and the comparison of a resumed run's
settings with its checkpoint's. The trainer, ``run_task``, and ``rnnkit train``, ``sample``,
``eval`` and ``diagnose`` all go through it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..checkpoint import BEST, LATEST, read_meta, write_atomic

CONFIG = "config.json"
CURVES = "curves.png"
_KEPT = re.compile(r"^step-(\d+)-.*\.safetensors$")


@dataclass(frozen=True)
class RunFolder:
    """A run's folder and the names of everything in it."""

    path: Path

    def __init__(self, path: str | os.PathLike) -> None:
        object.__setattr__(self, "path", Path(path))

    def __str__(self) -> str:
        return str(self.path)

    # -- names -----------------------------------------------------------------------------------
    @property
    def latest(self) -> Path:
        """The most recent checkpoint, which ``--resume`` continues from."""
        return self.path / LATEST

    @property
    def best(self) -> Path:
        """The checkpoint with the best validation score so far."""
        return self.path / BEST

    @property
    def config(self) -> Path:
        """The run's resolved settings (``config.json``)."""
        return self.path / CONFIG

    @property
    def curves(self) -> Path:
        """The plot of the run's log."""
        return self.path / CURVES

    def log(self, fmt: str = "jsonl") -> Path:
        """The run's log, ``metrics.jsonl`` or ``metrics.csv``."""
        return self.path / f"metrics.{fmt}"

    def kept(self, step: int, metric: str | None = None, value: float | None = None) -> Path:
        """The name of a kept checkpoint: ``step-000400-bpc-2.113.safetensors``."""
        tail = "" if metric is None or value is None else f"-{metric}-{value:.4g}"
        return self.path / f"step-{step:06d}{tail}.safetensors"

    def kept_checkpoints(self) -> list[Path]:
        """The kept checkpoints, oldest first."""
        if not self.path.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.path.iterdir() if (m := _KEPT.match(p.name))]
        return [p for _, p in sorted(found)]

    # -- state -----------------------------------------------------------------------------------
    def holds_run(self) -> bool:
        """Whether a run has saved a checkpoint here."""
        return self.latest.exists() or self.best.exists()

    def step(self) -> int:
        """The update the latest checkpoint was saved at."""
        return int(read_meta(self.latest).get("trainer", {}).get("step", 0))

    def checkpoint(self) -> Path:
        """The checkpoint to sample or evaluate from: the best one, else the latest."""
        for path in (self.best, self.latest):
            if path.is_file():
                return path
        raise FileNotFoundError(f"{str(self.path)!r} holds no checkpoint ({BEST} or {LATEST})")

    @staticmethod
    def find(path: str | os.PathLike) -> Path:
        """The checkpoint file ``path`` names: a ``.safetensors`` file, or a run folder's best one."""
        path = Path(path)
        if path.is_dir():
            return RunFolder(path).checkpoint()
        if not path.exists():
            raise FileNotFoundError(f"no such checkpoint: {str(path)!r}")
        return path

    @staticmethod
    def of(checkpoint: str | os.PathLike) -> RunFolder:
        """The run folder a checkpoint file or run folder belongs to."""
        path = Path(checkpoint)
        return RunFolder(path if path.is_dir() else path.parent)

    def read_config(self) -> dict:
        """``config.json`` as written: ``{"task": …, "config": {…}, …}``."""
        return json.loads(self.config.read_text(encoding="utf-8"))

    def write_config(self, meta: Mapping) -> None:
        """Write ``config.json`` (atomically: a killed run never leaves half a file)."""
        self.path.mkdir(parents=True, exist_ok=True)
        write_atomic(self.config, (json.dumps(dict(meta), indent=1, ensure_ascii=False) + "\n").encode())

    def check_writable(self) -> None:
        """Raise before any work if a run could not be written here: the path is a file, or the
        nearest existing folder above it cannot be written (``/proc/nope``, a read-only disk)."""
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"out must be a folder (new, or holding a run), but {str(self.path)!r} is a file")
        existing = self.path
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir():
            raise NotADirectoryError(f"out: cannot create {str(self.path)!r}: {str(existing)!r} is a file")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise PermissionError(f"out: cannot write {str(self.path)!r}: {str(existing)!r} is not writable")
        if existing == self.path:
            return
        try:  # access() says yes for some folders that still refuse (/proc, /sys): try for real
            probe = existing / f".rnnkit-write-test-{os.getpid()}"
            probe.mkdir()
            probe.rmdir()
        except OSError as e:
            raise PermissionError(
                f"out: cannot create {str(self.path)!r} in {str(existing)!r}: {e.strerror or e}"
            ) from None

    # -- choosing a folder -----------------------------------------------------------------------
    @staticmethod
    def runs_of(name: str, root: str | os.PathLike = "runs") -> list[RunFolder]:
        """The runs named ``<root>/<name>`` or ``<root>/<name>-k`` that hold a checkpoint, oldest
        latest checkpoint first."""
        root = Path(root)
        if not root.is_dir():
            return []
        pattern = re.compile(rf"^{re.escape(name)}(-\d+)?$")
        runs = [RunFolder(p) for p in root.iterdir() if pattern.match(p.name) and p.is_dir()]
        runs = [r for r in runs if r.latest.is_file()]
        return sorted(runs, key=lambda r: (r.latest.stat().st_mtime_ns, str(r.path)))

    @staticmethod
    def free(name: str, root: str | os.PathLike = "runs") -> RunFolder:
        """``runs/<name>``, or ``runs/<name>-2``, ``-3``… — the first that holds no checkpoint."""
        base = Path(root) / name
        k, folder = 1, RunFolder(base)
        while folder.holds_run():
            k += 1
            folder = RunFolder(base.with_name(f"{name}-{k}"))
        return folder

    @staticmethod
    def to_resume(name: str, root: str | os.PathLike = "runs") -> RunFolder:
        """The run ``--resume`` continues when no ``--out`` is given: the one whose latest
        checkpoint is newest among ``runs/<name>[-k]`` (the one trained last)."""
        runs = RunFolder.runs_of(name, root)
        if not runs:
            raise FileNotFoundError(
                f"--resume: no {name!r} run to resume in {str(root)!r} (no {name}[-k]/{LATEST}); give --out"
            )
        return runs[-1]

    @staticmethod
    def choose(name: str, resume: bool = False, root: str | os.PathLike = "runs") -> RunFolder:
        """Where a run of task ``name`` goes when no folder is given: :meth:`to_resume` when
        resuming, else :meth:`free`."""
        return RunFolder.to_resume(name, root) if resume else RunFolder.free(name, root)

    # -- resuming --------------------------------------------------------------------------------
    def resume_meta(self, task: str) -> dict:
        """The latest checkpoint's meta, after checking it is a ``task`` run."""
        if not self.latest.is_file():
            raise FileNotFoundError(f"--resume: {str(self.path)!r} holds no run to resume (no {LATEST})")
        meta = read_meta(self.latest)
        if meta.get("task") != task:
            raise ValueError(f"--resume: {self.path} holds a {meta.get('task')!r} run, not {task!r}")
        return meta

    def check_resume(self, meta: Mapping, given: Mapping, may_change: Iterable[str]) -> None:
        """Raise ValueError naming every setting in ``given`` that differs from the checkpoint's
        ``meta["config"]``, except those in ``may_change``."""
        saved, free = meta.get("config", {}), set(may_change)
        changed = [
            f"{name}: the run has {saved.get(name)!r}, given {value!r}"
            for name, value in given.items()
            if name not in free and saved.get(name) != value
        ]
        if changed:
            raise ValueError(
                f"--resume continues the run in {self.path} with the settings of its checkpoint; "
                f"these differ: {'; '.join(changed)}. Drop them, or start a new run with another --out"
            )


__all__ = ["RunFolder", "CONFIG", "CURVES"]
