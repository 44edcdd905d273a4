"""``rnnkit eval CHECKPOINT``: the task's metrics on held-out data, beside its baseline."""

from __future__ import annotations

import argparse
import json
import time

from ..tasks import load_run


def add_parser(subs) -> None:
    """Register ``rnnkit eval`` and its options."""
    p = subs.add_parser("eval", help="a checkpoint's metrics on held-out data", description=__doc__,
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", help="a .safetensors checkpoint, or a run folder (its best one)")
    p.add_argument("--data", default=None, help="evaluate on this file or folder instead (tasks that read text)")
    p.add_argument("--split", choices=["val", "test"], default="val", help="which held-out split")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object on the last line")
    p.add_argument("--device", default="auto", help="where the model runs: auto (CUDA if available), cpu, cuda or cuda:N")


def run(args) -> int:
    """Run ``rnnkit eval`` with parsed ``args``; returns the exit code."""
    start = time.monotonic()
    task, model, meta = load_run(args.checkpoint, device=args.device)
    if args.data is not None and not hasattr(task, "prepare_eval"):
        raise ValueError(f"rnnkit eval: the {task.name!r} task makes its own data; --data does not apply")
    if hasattr(task, "prepare_eval"):
        task.prepare_eval(args.data, lambda s: None)
    else:
        task.prepare(lambda s: None)
    metrics = task.evaluate(model, args.split)
    result = {"task": task.name, "cell": task.cfg.cell, "steps": meta.get("trainer", {}).get("step"),
              "split": args.split, **{f"{args.split}_{k}": v for k, v in metrics.items()},
              "metric": task.metric, "baseline": task.baseline.get(task.metric),
              "wall_time": round(time.monotonic() - start, 2)}
    shown = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items())
    base = result["baseline"]
    print(f"{task.name} ({args.split}): {shown}" + (f"  (baseline {task.metric} {base:.4g})" if base is not None else ""))
    if args.json:
        print(json.dumps(result))
    return 0
