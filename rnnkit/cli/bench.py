"""``rnnkit bench``: forward + backward time and memory of every cell, as ratios to
torch.nn.LSTM, to torch.nn's module of the same cell (where torch has one), to the same layer on
rnnkit's reference loop and to the cell's naive autograd loop, plus the cost of variable lengths
and the engine that ran (native, fused, reference), all measured in this run, on one thread
unless told otherwise. The custom-cell guide's cell (``guide-cho-gru``) is measured with the
registry's; the README's targets are reported as met or missed after the table."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..bench import bench_cells


def _size(text: str) -> tuple[int, int, int, int]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected B,T,I,H as four positive integers, got {text!r}")
    return values  # type: ignore[return-value]


def add_parser(subs) -> None:
    """Register ``rnnkit bench`` and its options on the CLI's subparsers."""
    p = subs.add_parser(
        "bench",
        help="time every cell against torch.nn.LSTM",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--cells", nargs="+", choices=list(bench_cells()), default=None, help="cells to measure (default: all)"
    )
    p.add_argument(
        "--size",
        type=_size,
        action="append",
        default=None,
        metavar="B,T,I,H",
        help="a size to measure (repeatable; default: 16,100,64,128 32,100,256,256 64,100,512,512)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="timed repeats per measurement (median reported; half as many for the reference and naive loops)",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads for torch and the engines; 1 gives ratios that hold still on a shared machine",
    )
    p.add_argument("--json", dest="json_path", default=None, help="also write the rows to this JSON file")


def run(args) -> int:
    """Measure, print the table and the targets (and write ``--json``); 0 on success, UsageError on bad options."""
    from ..bench import HEADER, LEGEND, as_dicts, bench, target_lines
    from . import UsageError

    if args.repeats < 1:
        raise UsageError(f"rnnkit bench: --repeats must be ≥ 1, got {args.repeats}")
    if args.threads < 1:
        raise UsageError(f"rnnkit bench: --threads must be ≥ 1, got {args.threads}")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UsageError("rnnkit bench: --device cuda asked for, but no CUDA device is available")
    print(LEGEND)
    print(HEADER)
    rows = bench(args.cells, args.size, args.repeats, args.device, threads=args.threads)
    targets = target_lines(rows)
    if targets:
        print("\ntargets:")
        print("\n".join(targets))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(as_dicts(rows), indent=1))
    return 0
