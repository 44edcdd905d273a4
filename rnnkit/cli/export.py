"""``rnnkit export RUN``: write a trained run's model as a ``torch.export`` program (``.pt2``),
which anything with PyTorch runs without rnnkit: ``torch.export.load(FILE).module()``.

The program is made on the CPU and checked against the model before it is written (equal
outputs at two batch sizes). It runs sequences of exactly ``--steps`` T steps and any batch size; shorter sequences
go in padded, with their ``lengths``. A model that generates (the char-LM) is exported as one
step of generation by default, T = 1 with its state in and out, to be called once per token.
Why ``torch.export`` and which engine is exported: :mod:`rnnkit.export`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..tasks import load_run


def add_parser(subs) -> None:
    """Register ``rnnkit export`` and its options."""
    p = subs.add_parser(
        "export",
        help="write a run's model as a torch.export program (.pt2)",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "checkpoint", help="a .safetensors checkpoint, or the run folder `rnnkit train` wrote (its best one)"
    )
    p.add_argument(
        "--out",
        default=None,
        help="the .pt2 file to write (default: model.pt2 in the run folder, or beside the checkpoint file)",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="T, the steps the program runs; default 1 for a model that generates (one step, state in and "
        "out), needed for any other",
    )
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def run(args) -> int:
    """Run ``rnnkit export`` with parsed ``args``; returns the exit code."""
    from ..export import check_exported, describe_inputs, example_inputs, export, free_batch_size, save
    from . import UsageError

    source = Path(args.checkpoint)
    out = Path(args.out) if args.out else (source if source.is_dir() else source.parent) / "model.pt2"
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"rnnkit export: {out} exists; add --overwrite to replace it, or choose another --out")
    if args.steps is not None and args.steps < 1:
        raise UsageError(f"rnnkit export: --steps must be ≥ 1, got {args.steps}")
    task, model, _ = load_run(source, device="cpu")
    steps = args.steps
    if steps is None:
        if not callable(getattr(model, "start", None)):
            raise UsageError(
                f"rnnkit export: the {task.name!r} model reads whole sequences; give their length "
                "with --steps T (shorter ones run padded, with lengths)"
            )
        steps = 1
    batch = free_batch_size(model, steps)  # unlike every other size, so that it stays free
    try:
        inputs, kwargs = example_inputs(model, steps, batch)
    except ValueError as e:
        raise UsageError(
            f"rnnkit export: the {task.name!r} task's model cannot be exported from the command line: {e}"
        ) from None
    program = export(model, inputs, kwargs)
    other = free_batch_size(model, steps, avoid=batch)  # and checked at a second batch size: it is free
    check_exported(program, model, *example_inputs(model, steps, other, seed=1))
    save(program, out)
    print(
        f"wrote {out}: the {task.name!r} model ({type(model).__name__}) as a torch.export program, checked "
        f"equal to it at batch sizes {batch} and {other}; inputs {describe_inputs(model, inputs, kwargs, batch)}; "
        f"T = {steps}, any batch size B"
    )
    print(f"run it with: torch.export.load({str(out)!r}).module()")
    return 0
