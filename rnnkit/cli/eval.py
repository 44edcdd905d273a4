"""``rnnkit eval CHECKPOINT``: the task's metrics on held-out data, beside its baseline.

``--split val`` (the default) is the validation split the run watched while training; ``--split
test`` is held out from training and validation both (for the char-LM: every other held-out
file, which a corpus of fewer than 2 × holdout_every files does not have — then it is refused).
``--data`` evaluates a text file or folder instead, for tasks that read text. Where stderr is a
terminal, it says what is being read and shows a bar over a long evaluation.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from ..tasks import load_run


def add_parser(subs) -> None:
    """Register ``rnnkit eval`` and its options."""
    p = subs.add_parser(
        "eval",
        help="a checkpoint's metrics on held-out data",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("checkpoint", help="a .safetensors checkpoint, or a run folder (its best one)")
    p.add_argument("--data", default=None, help="evaluate on this file or folder instead (tasks that read text)")
    p.add_argument(
        "--split",
        choices=["val", "test"],
        default="val",
        help="which held-out split: val (watched while training) or test (never seen)",
    )
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object on the last line")
    p.add_argument(
        "--device", default="auto", help="where the model runs: auto (CUDA if available), cpu, cuda or cuda:N"
    )


def _progress(text: str) -> None:
    """A line for the user waiting at a terminal; none where stderr is a file or a pipe, which
    hold only what went wrong (one line)."""
    if sys.stderr.isatty():
        print(f"rnnkit eval: {text}", file=sys.stderr, flush=True)


def run(args) -> int:
    """Run ``rnnkit eval`` with parsed ``args``; returns the exit code."""
    from . import UsageError

    start = time.monotonic()
    task, model, meta = load_run(args.checkpoint, device=args.device)
    if args.data is not None and not task.reads_eval_data:
        raise UsageError(f"rnnkit eval: the {task.name!r} task makes its own data; --data does not apply")
    if args.data is not None and args.split != "val":
        raise UsageError(
            "rnnkit eval: --split picks a held-out part of the run's own data; with --data all of it "
            "is evaluated: leave --split out"
        )
    if args.split not in task.splits:
        raise UsageError(
            f"rnnkit eval: the {task.name!r} task has no {args.split!r} split (it has {', '.join(task.splits)})"
        )
    _progress(f"preparing the {task.name} data" + (f" from {args.data}" if args.data else "") + "…")
    task.prepare_eval(args.data, _progress)
    task.show_progress = True
    _progress(f"evaluating on {'--data' if args.data else 'the ' + args.split + ' split'}…")
    metrics = task.evaluate(model, args.split)
    result = {
        "task": task.name,
        "cell": task.cfg.cell,
        "steps": meta.get("trainer", {}).get("step"),
        "split": args.split,
        **{f"{args.split}_{k}": v for k, v in metrics.items()},
        "metric": task.metric,
        "baseline": task.baseline.get(task.metric),
        "wall_time": round(time.monotonic() - start, 2),
    }
    shown = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items())
    base = result["baseline"]
    print(
        f"{task.name} ({args.split}): {shown}" + (f"  (baseline {task.metric} {base:.4g})" if base is not None else "")
    )
    if args.json:
        print(json.dumps(result))
    return 0
