"""The run log: every logged step as one JSON object per line (``metrics.jsonl``), or as CSV
(``metrics.csv``).

JSON lines are appended and flushed as they come, so a killed run keeps its log up to the last
step. Records have ``"kind": "train"`` (step, loss, pre-clip ``grad_norm``, ``clip``, lr,
throughput, the task's metrics) or ``"kind": "val"`` (``val_<metric>``). The CSV file has one row
per record and the union of their keys as columns, rewritten whole at each flush (new metrics
can appear when validation first runs).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path


def read_log(path: str | Path) -> list[dict]:
    """The records of a ``metrics.jsonl`` or ``metrics.csv`` file."""
    return list(iter_log(path))


def iter_log(path: str | Path) -> Iterator[dict]:
    """The records of a ``metrics.jsonl`` or ``metrics.csv`` file, one at a time (a long run's
    log is read in memory that does not grow with it)."""
    path = Path(path)
    with path.open(newline="") as f:
        if path.suffix == ".csv":
            for row in csv.DictReader(f):
                yield {k: _number(v) for k, v in row.items() if v != ""}
            return
        for line in f:
            if line.strip():
                yield json.loads(line)


def _number(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


class RunLog:
    """Writes records to ``folder/metrics.jsonl`` or ``folder/metrics.csv``."""

    def __init__(self, folder: Path, fmt: str = "jsonl", keep: list[dict] = (), *, upto: int | None = None) -> None:
        """A new log, starting with the records ``keep``; or, with ``upto``, continuing the log
        already in ``folder`` from its records of steps ≤ ``upto`` (a resumed run's log up to its
        checkpoint), copied line by line so that no part of a long log is held in memory."""
        folder.mkdir(parents=True, exist_ok=True)
        self.fmt = fmt
        self.path = folder / f"metrics.{fmt}"
        if upto is not None:
            keep = (r for r in iter_log(self.path) if r["step"] <= upto) if self.path.is_file() else ()
        if fmt == "jsonl":
            self.rows: list[dict] = []
            tmp = self.path.with_name(self.path.name + ".tmp")
            with tmp.open("w") as f:
                for record in keep:
                    f.write(json.dumps(record) + "\n")
            os.replace(tmp, self.path)
            self.file = self.path.open("a")
        else:  # CSV rewrites its header as columns appear, so it holds its rows
            self.rows, self.file = list(keep), None

    def write(self, record: dict) -> None:
        """Append one record (a JSON line now; a CSV row at the next flush)."""
        if self.file is not None:
            self.file.write(json.dumps(record) + "\n")
        else:
            self.rows.append(record)

    def flush(self) -> None:
        """Make what was written so far durable on disk."""
        if self.file is not None:
            self.file.flush()
            return
        columns = list(dict.fromkeys(k for row in self.rows for k in row))
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            writer.writerows(self.rows)
        tmp.replace(self.path)

    def close(self) -> None:
        """Flush and close the file."""
        self.flush()
        if self.file is not None:
            self.file.close()
