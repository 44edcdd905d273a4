"""``rnnkit train [TASK] [options]``: train a built-in task. With no arguments, the default
character-level LSTM language model on the Python standard library's source.

Every setting of the task's config is a flag (``--hidden-size 256``); ``--config FILE`` (TOML,
JSON or YAML) sets many at once, and flags given beside it override it. The resolved config is
saved as ``config.json`` beside the checkpoints, and ``--config`` takes it back (all but
``out``).

``--resume`` continues a run from its latest checkpoint: the one in ``--out``, else the newest
``runs/<task>[-k]``. It says where it resumes and what it will do; only how long to train, what
is shown and the device may change. ``--max-steps`` counts the updates of the whole run (a run
at update 50 given ``--max-steps 80`` makes 30 more; one not beyond its update is refused),
``--max-time`` the seconds of training in this session, the final validation included.

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
import math
import shlex
import subprocess
import sys
from dataclasses import fields

from ..tasks import TASKS, run_task
from ..tasks.config import check_config, field_help, field_types, read_config_file, renamed_fields, type_name
from ..train import RunFolder, TrainingSettings, distributed
from ..train.callbacks import write
from ..train.device import resolve_device

DEFAULT_TASK = "charlm"  # what `rnnkit train [options]` trains


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


class _Renamed(argparse.Action):
    """An old flag name, still accepted for one release: stores into the new setting and warns."""

    def __init__(self, option_strings, dest, new_flag: str, **kwargs) -> None:
        self.new_flag = new_flag
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(
            f"rnnkit train: {option_string} is deprecated and goes in the next release; it is now {self.new_flag}",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, values)


def _flag_type(tp):
    kinds = type_name(tp)
    base = int if kinds.startswith("int") else float if kinds.startswith("float") else str
    return base, (_none_or(base) if "null" in kinds else base)


def add_task_options(p: argparse.ArgumentParser, config_cls) -> None:
    """One flag per config field, typed, with the comment beside its default as help: the
    task's own settings first, then how long and how to train."""
    helps = field_help(config_cls)
    defaults = config_cls()
    types = field_types(config_cls)
    shared = {f.name for f in fields(TrainingSettings)}
    groups = {
        False: p.add_argument_group("the task's settings"),
        True: p.add_argument_group("how long and how to train"),
    }
    for f in sorted(types, key=lambda f: f in shared):  # stable: each group in declaration order
        tp, group = types[f], groups[f in shared]
        flag = "--" + f.replace("_", "-")
        default = getattr(defaults, f)
        shown = f"(default: {default!r})" if default not in ("", None) else "(default: none)"
        text = f"{helps.get(f, '')} {shown}".strip()
        if tp is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=text)
            continue
        base, kind = _flag_type(tp)
        group.add_argument(flag, type=kind, default=argparse.SUPPRESS, metavar=base.__name__.upper(), help=text)
    for old, new in renamed_fields(config_cls).items():
        _, kind = _flag_type(types[new])
        p.add_argument(
            "--" + old.replace("_", "-"),
            dest=new,
            type=kind,
            default=argparse.SUPPRESS,
            help=argparse.SUPPRESS,
            action=_Renamed,
            new_flag="--" + new.replace("_", "-"),
        )


def add_parser(subs) -> None:
    """Register ``rnnkit train`` and its options."""
    p = subs.add_parser(
        "train",
        help="train a task (default: char-level LSTM on the stdlib's source)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tasks = p.add_subparsers(dest="task", metavar="TASK", parser_class=type(p))
    for name, task in TASKS.items():
        about = f"rnnkit train {name}: {task.summary}"
        if name == DEFAULT_TASK:
            others = ", ".join(t for t in TASKS if t != name)
            about = (
                f"rnnkit train [{name}]: {task.summary}. The default task: `rnnkit train [options]` trains it. "
                f"Other tasks: {others} (`rnnkit train TASK --help`; `rnnkit tasks` says what each is)."
            )
        t = tasks.add_parser(name, help=task.summary, description=about)
        t.add_argument(
            "--config",
            metavar="FILE",
            help="a TOML, JSON or YAML file of settings, or a run's config.json (flags override it)",
        )
        t.add_argument(
            "--resume",
            action="store_true",
            help="continue a run from its latest checkpoint: the one in --out, else the newest "
            f"runs/{name}[-k]; --max-steps counts the whole run's updates, --max-time the seconds of "
            "this session",
        )
        t.add_argument("--overwrite", action="store_true", help="start over in an --out that already holds a run")
        t.add_argument(
            "--json", action="store_true", help="print the final metrics as one JSON object on the last line"
        )
        t.add_argument(
            "--nproc",
            type=int,
            metavar="N",
            help="train with N processes on this machine (launches torchrun; "
            "--batch-size is the global batch, a multiple of N)",
        )
        add_task_options(t, task.Config)


def resolve_config(task_cls, args) -> object:
    """Defaults ← the resumed run's config ← --config file ← flags, each checked as a type; the
    settings' own checks and the resume checks are run_task's (see ``open_run``)."""
    cls = task_cls.Config
    flags = {f: getattr(args, f) for f in field_types(cls) if hasattr(args, f)}
    cfg = cls()
    if args.resume:
        run = RunFolder(flags["out"]) if flags.get("out") else RunFolder.choose(task_cls.name, resume=True)
        # the settings come from the checkpoint itself, which always agrees with its weights
        meta = run.resume_meta(task_cls.name)
        cfg = check_config(cls, meta["config"], source="checkpoint")
        cfg.out = str(run)
        runs = RunFolder.runs_of(task_cls.name)
        if not flags.get("out") and len(runs) > 1:
            print(
                f"--resume: {len(runs)} {task_cls.name} runs; continuing the newest, {run} "
                f"(--out picks another: {', '.join(str(r) for r in runs[:-1])})"
            )
    if args.config:
        cfg = check_config(cls, read_config_file(args.config, task=task_cls.name), source=args.config, base=cfg)
    return check_config(cls, flags, source="flags", base=cfg)


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
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(nproc),
        "-m",
        "rnnkit",
        *argv,
    ]


def run(args) -> int:
    """Run ``rnnkit train`` with parsed ``args``; returns the exit code."""
    from . import UsageError, invocation

    task_cls = TASKS[args.task]
    nproc = args.nproc
    if nproc is not None and nproc < 1:
        raise UsageError(f"rnnkit train: --nproc must be an int ≥ 1, got {nproc}")
    if nproc is not None and nproc > 1 and distributed.launched() is not None:
        raise UsageError(
            "rnnkit train: --nproc starts its own processes; under torchrun leave it out "
            "(torchrun's --nproc_per_node says how many)"
        )
    if args.resume and args.overwrite:
        raise UsageError("rnnkit train: --resume and --overwrite exclude each other")
    cfg = resolve_config(task_cls, args)
    device = resolve_device(cfg.device)  # CUDA asked for on a machine without it: one line, exit 2
    if nproc is not None and nproc > 1:
        distributed.check_divisible(cfg.batch_size, nproc, 0, "rnnkit train --nproc")
        sys.stdout.flush()
        return subprocess.run(relaunch_command(args, nproc)).returncode
    task = task_cls(cfg)
    # under torchrun: this process's place in the group, and its device (cuda:LOCAL_RANK on GPUs)
    with distributed.session(device) as device:
        result = run_task(task, log=write, resume=args.resume, overwrite=args.overwrite, device=device)
        if not distributed.is_main():
            return 0  # rank 0 reports the run
    sample_text = task.final_sample(result)
    metric, base, out = result["metric"], result["baseline"], result["out"]
    budget = "" if cfg.max_time is None else f"; budget {cfg.max_time:g} s, final validation included"
    over = result["training_time"] - (cfg.max_time or math.inf)
    if over > 0:  # the first validation came after the budget, so it could not be planned for: say so
        budget += f", over by {over:.0f} s: the final validation took {result['validation_time']:.0f} s"
    validating = f"validating took {result['evaluation_time']:.1f} s, {100 * result['evaluation_share']:.1f} %"
    print(
        f"\nfinished: {result['steps']} updates in {result['training_time']:.0f} s of training "
        f"({result['stop_reason']}{budget}; {result['wall_time']:.0f} s in all, reading the data included; "
        f"{validating}); validation {metric} {result[metric]:.4g}"
        + (f" (baseline {base:.4g})" if base is not None else "")
    )
    run = RunFolder(out)
    print(f"checkpoints: {run.best}, {run.latest.name}; log: {run.log(cfg.log_format).name}; plot: {run.curves.name}")
    prog = invocation()
    if sample_text is not None:
        print(f"\nsample:\n{sample_text}\n")
    if task_cls.can_sample:
        print(f"sample more with: {prog} sample {shlex.quote(out)} {task.sample_hint}")
    print(f"evaluate with:    {prog} eval {shlex.quote(out)}")
    if args.json:
        sys.stdout.flush()
        print(json.dumps(result))
    return 0
