"""``rnnkit train [TASK] [options]``: train a built-in task. With no arguments, the default
character-level LSTM language model on the Python standard library's source.

Every setting of the task's config is a flag (``--hidden-size 256``); ``--config FILE`` (TOML,
JSON or YAML) sets many at once, and flags given beside it override it. The resolved config is
saved as ``config.json`` beside the checkpoints. ``--resume`` continues the run in ``--out``
from its latest checkpoint.

``--device`` picks where the model trains: ``auto`` (the default: CUDA when available, else the
CPU), ``cpu``, ``cuda`` or ``cuda:N``; asking for CUDA where there is none is a usage error.

``--nproc N`` trains with N processes on this machine (DistributedDataParallel over gloo, or
NCCL with one GPU per process, ``cuda:LOCAL_RANK``, when the device is CUDA): it starts
``python -m torch.distributed.run --standalone --nproc_per_node N -m rnnkit train …`` with the
same options and exits with its code. For several machines, call torchrun yourself with its
rendezvous flags (see the README); ``--batch-size`` is the global batch, shared by the processes.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

from ..checkpoint import read_meta
from ..tasks import TASKS, run_task
from ..tasks.base import check_resumable
from ..train import distributed
from ..train.device import resolve_device
from ..tasks.config import check_config, field_help, field_types, read_config_file, type_name


def _none_or(kind):
    def parse(text: str):
        if text.lower() in ("none", "null"):
            return None
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__} or none, got {text!r}") from None
    parse.__name__ = kind.__name__
    return parse


def add_task_options(p: argparse.ArgumentParser, config_cls) -> None:
    """One flag per config field, typed, with the comment beside its default as help."""
    helps = field_help(config_cls)
    defaults = config_cls()
    for f, tp in field_types(config_cls).items():
        flag = "--" + f.replace("_", "-")
        default = getattr(defaults, f)
        shown = f"(default: {default!r})" if default not in ("", None) else "(default: none)"
        text = f"{helps.get(f, '')} {shown}".strip()
        if tp is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=text)
            continue
        kinds = type_name(tp)
        base = int if kinds.startswith("int") else float if kinds.startswith("float") else str
        kind = _none_or(base) if "null" in kinds else base
        p.add_argument(flag, type=kind, default=argparse.SUPPRESS, metavar=base.__name__.upper(), help=text)


def add_parser(subs) -> None:
    """Register ``rnnkit train`` and its options."""
    p = subs.add_parser("train", help="train a task (default: char-level LSTM on the stdlib's source)",
                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    tasks = p.add_subparsers(dest="task", metavar="TASK", parser_class=type(p))
    for name, task in TASKS.items():
        t = tasks.add_parser(name, help=task.summary, description=f"rnnkit train {name}: {task.summary}")
        t.add_argument("--config", metavar="FILE", help="a TOML, JSON or YAML file of settings (flags override it)")
        t.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
        t.add_argument("--overwrite", action="store_true", help="start over in an --out that already holds a run")
        t.add_argument("--json", action="store_true", help="print the final metrics as one JSON object on the last line")
        t.add_argument("--nproc", type=int, metavar="N", help="train with N processes on this machine (launches torchrun; "
                                                              "--batch-size is the global batch, a multiple of N)")
        add_task_options(t, task.Config)


def resolve_config(task_cls, args) -> object:
    """Defaults ← the resumed run's config ← --config file ← flags, each checked."""
    cls = task_cls.Config
    flags = {f: getattr(args, f) for f in field_types(cls) if hasattr(args, f)}
    cfg = cls()
    if args.resume:
        out = Path(flags.get("out") or cfg.out or Path("runs") / task_cls.name)
        # the settings come from the checkpoint itself, which always agrees with its weights
        saved = out / "latest.safetensors"
        if not saved.is_file():
            raise FileNotFoundError(f"--resume: {str(out)!r} holds no run to resume (no latest.safetensors)")
        meta = read_meta(saved)
        if meta.get("task") != task_cls.name:
            raise ValueError(f"--resume: {out} holds a {meta.get('task')!r} run, not {task_cls.name!r}")
        cfg = check_config(cls, meta["config"], source=str(saved))
    if args.config:
        cfg = check_config(cls, read_config_file(args.config), source=args.config, base=cfg)
    cfg = check_config(cls, flags, source="flags", base=cfg)
    cfg.check()
    if args.resume:
        check_resumable(meta, task_cls(cfg))  # the flags change nothing the checkpoint fixes
    return cfg


def relaunch_command(args, nproc: int) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc_per_node N -m rnnkit train TASK …``
    with the options of ``args`` (those given on the command line), without ``--nproc``."""
    argv = ["train", args.task]
    if args.config:
        argv += ["--config", args.config]
    argv += [flag for flag in ("--resume", "--overwrite", "--json") if getattr(args, flag[2:])]
    for f in field_types(TASKS[args.task].Config):
        if not hasattr(args, f):
            continue  # not given: the child resolves the same defaults
        value, flag = getattr(args, f), "--" + f.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        else:
            argv += [flag, "none" if value is None else repr(value) if isinstance(value, float) else str(value)]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            "-m", "rnnkit", *argv]


def run(args) -> int:
    """Run ``rnnkit train`` with parsed ``args``; returns the exit code."""
    from . import UsageError

    task_cls = TASKS[args.task]
    nproc = args.nproc
    if nproc is not None and nproc < 1:
        raise UsageError(f"rnnkit train: --nproc must be an int ≥ 1, got {nproc}")
    if nproc is not None and nproc > 1 and distributed.launched() is not None:
        raise UsageError("rnnkit train: --nproc starts its own processes; under torchrun leave it out "
                         "(torchrun's --nproc_per_node says how many)")
    cfg = resolve_config(task_cls, args)
    if args.resume and args.overwrite:
        raise UsageError("rnnkit train: --resume and --overwrite exclude each other")
    device = resolve_device(cfg.device)  # CUDA asked for on a machine without it: one line, exit 2
    if nproc is not None and nproc > 1:
        distributed.check_divisible(cfg.batch_size, nproc, 0, "rnnkit train --nproc")
        sys.stdout.flush()
        return subprocess.run(relaunch_command(args, nproc)).returncode
    task = task_cls(cfg)
    # under torchrun: this process's place in the group, and its device (cuda:LOCAL_RANK on GPUs)
    with distributed.session(device) as device:
        result = run_task(task, log=print, resume=args.resume, overwrite=args.overwrite, device=device)
        if not distributed.is_main():
            return 0  # rank 0 reports the run
    sample_text = task.final_sample(result) if hasattr(task, "final_sample") else None
    metric = result["metric"]
    base = result["baseline"]
    print(f"\nfinished: {result['steps']} updates in {result['wall_time']:.0f}s ({result['stop_reason']}); "
          f"validation {metric} {result[metric]:.4g}" + (f" (baseline {base:.4g})" if base is not None else ""))
    print(f"checkpoints: {result['out']}/best.safetensors, latest.safetensors; log: metrics.{cfg.log_format}; plot: curves.png")
    if sample_text is not None:
        print(f"\nsample:\n{sample_text}\n")
        hint = getattr(task, "sample_hint", "--length 1000 --temperature 0.8")
        print(f"sample more with: rnnkit sample {shlex.quote(result['out'])} {hint}")
    if args.json:
        sys.stdout.flush()
        print(json.dumps(result))
    return 0
