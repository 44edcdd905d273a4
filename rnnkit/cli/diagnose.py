"""``rnnkit diagnose``: see how far back the gradient reaches — gradient norm against time lag,
Jacobian products, the recurrent matrices' spectra, saturation, time scales and clipping.

With no checkpoint: freshly initialised cells side by side on the same random input (by
default the tanh RNN, the IRNN, the GRU and the LSTM). With a checkpoint folder: every
recurrent layer of the trained model, next to a freshly initialised copy, on random tokens or
on the text of --data (for a model that does not read text, each layer reads random input).
Writes PNG plots and diagnose.json into --out and prints one line per cell.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cells.registry import CELLS

DEFAULTS = {"hidden_size": 64, "input_size": 16}  # for the --cell comparison only


def add_parser(subs) -> None:
    """Register ``rnnkit diagnose`` and its flags on the subcommand parsers ``subs``."""
    p = subs.add_parser(
        "diagnose",
        help="gradient-flow diagnostics and plots of cells or a checkpoint",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "checkpoint",
        nargs="?",
        default=None,
        help="a .safetensors checkpoint or the run folder `rnnkit train` wrote; omit to compare fresh cells",
    )
    p.add_argument(
        "--cell",
        action="append",
        choices=list(CELLS),
        default=None,
        metavar="NAME",
        help="a cell to compare (repeatable; default: elman irnn gru lstm)",
    )
    p.add_argument(
        "--hidden-size",
        type=int,
        default=None,
        help=f"hidden units of the compared cells (default: {DEFAULTS['hidden_size']})",
    )
    p.add_argument(
        "--input-size",
        type=int,
        default=None,
        help=f"input width of the compared cells (default: {DEFAULTS['input_size']})",
    )
    p.add_argument("--steps", type=int, default=100, help="time steps T of the input; lags run 0 … T")
    p.add_argument("--batch", type=int, default=8, help="sequences averaged over")
    p.add_argument(
        "--jacobian-batch",
        type=int,
        default=2,
        help="sequences the Jacobian products average over (their cost grows as T·B·H³)",
    )
    p.add_argument("--loss", choices=["last", "every"], default="last", help="a loss on the last step or on every step")
    p.add_argument("--data", default=None, help="with a checkpoint: a text file to feed instead of random tokens")
    p.add_argument(
        "--log",
        default=None,
        help="a training metrics.jsonl for the clipping plot (default: the checkpoint's own, if any)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed of the cells, input and loss direction")
    p.add_argument("--out", default="runs/diagnose", help="folder for the plots and diagnose.json")


def load_checkpoint(path: Path):
    """The model of a checkpoint file or run folder, and its character vocabulary (None for
    tasks whose model does not read characters).

    The one place that knows how checkpoints load; today through :func:`rnnkit.tasks.load_run`.
    """
    from ..data.corpus import CharVocab
    from ..tasks import load_run

    task, model, _ = load_run(path)
    vocab = getattr(task, "vocab", None)
    return model, vocab if isinstance(vocab, CharVocab) else None


def _tokens(args, vocab):
    """The (T, B) token ids fed to a text model: --data's text in B lanes, or random tokens."""
    import torch

    if args.data is None:
        gen = torch.Generator().manual_seed(args.seed)
        return torch.randint(len(vocab), (args.steps, args.batch), generator=gen)
    path = Path(args.data)
    if not path.is_file():
        raise FileNotFoundError(f"rnnkit diagnose: --data file {str(path)!r} does not exist")
    from ..data.corpus import decode_text

    text = decode_text(path.read_bytes(), f"rnnkit diagnose: --data {str(path)!r}")  # the corpora's one decoding rule
    need = args.steps * args.batch
    if len(text) < need:
        raise ValueError(
            f"rnnkit diagnose: --data has {len(text)} characters; --steps {args.steps} × --batch {args.batch} needs "
            f"{need}"
        )
    ids = vocab.encode(text[:need])  # (T·B,)
    return ids.view(args.batch, args.steps).t()  # (T, B): each lane a contiguous stretch


def _check(args) -> None:
    from . import UsageError

    for flag in ("steps", "batch", "jacobian_batch", "hidden_size", "input_size"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UsageError(f"rnnkit diagnose: --{flag.replace('_', '-')} must be ≥ 1, got {value}")
    if args.checkpoint is not None:
        given = [
            f"--{f.replace('_', '-')}" for f in ("cell", "hidden_size", "input_size") if getattr(args, f) is not None
        ]
        if given:
            raise UsageError(
                f"rnnkit diagnose: {', '.join(given)} describe fresh cells; give them or a checkpoint, not both"
            )
    elif args.data is not None:
        raise UsageError("rnnkit diagnose: --data needs a checkpoint (fresh cells read random input)")
    if args.cell and len(set(args.cell)) != len(args.cell):
        raise UsageError(f"rnnkit diagnose: each --cell once, got {' '.join(args.cell)}")


def run(args) -> int:
    """Diagnose fresh cells or a checkpoint's layers, write the report folder, print the summary; 0 on success."""
    from ..diagnose import DEFAULT_CELLS, compare_cells, diagnose_model, read_training_log, summary_lines, write_report
    from . import UsageError

    _check(args)
    log_path = Path(args.log) if args.log else None
    if args.checkpoint is not None and log_path is None:
        from ..train import RunFolder

        own = RunFolder.of(args.checkpoint).log("jsonl")
        if own.is_file():  # the run's own log, beside its checkpoints
            log_path = own
    log = read_training_log(log_path) if log_path is not None else None  # read first: a bad log fails fast
    settings = {
        "steps": args.steps,
        "batch": args.batch,
        "jacobian_batch": args.jacobian_batch,
        "loss": args.loss,
        "seed": args.seed,
        "log": None if log_path is None else str(log_path),
    }
    if args.checkpoint is None:
        names = args.cell or list(DEFAULT_CELLS)
        hidden = args.hidden_size or DEFAULTS["hidden_size"]
        width = args.input_size or DEFAULTS["input_size"]
        settings.update(cells=names, hidden_size=hidden, input_size=width)
        reports = compare_cells(
            names,
            input_size=width,
            hidden_size=hidden,
            steps=args.steps,
            batch=args.batch,
            seed=args.seed,
            loss=args.loss,
            jacobian_sequences=args.jacobian_batch,
        )
    else:
        model, vocab = load_checkpoint(Path(args.checkpoint))
        if vocab is not None:
            tokens = _tokens(args, vocab)
            run_model = lambda m: m(tokens)  # noqa: E731
        elif args.data is not None:
            raise UsageError(
                "rnnkit diagnose: --data applies to checkpoints of text tasks; this one's layers read random input"
            )
        else:
            run_model = None  # each layer reads N(0, 1) input of its own width
        settings.update(checkpoint=args.checkpoint, data=args.data)
        reports = diagnose_model(
            model,
            run_model,
            steps=args.steps,
            batch=args.batch,
            loss=args.loss,
            seed=args.seed,
            jacobian_sequences=args.jacobian_batch,
        )
    written = write_report(reports, args.out, log=log, settings=settings)
    for line in summary_lines(reports, log):
        print(line)
    print(
        f"{len(written) - 1} plots and diagnose.json in {args.out}; start with {Path(args.out) / 'gradient_vs_lag.png'}"
    )
    return 0
