"""``rnnkit train``: train a model. With no arguments, the default character-level LSTM
language model on the Python standard library's source."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex

from ..cells.registry import CELLS
from ..tasks.charlm import CharLMConfig, train


def add_parser(subs) -> None:
    d = CharLMConfig()
    p = subs.add_parser(
        "train",
        help="train a model (default: char-level LSTM on the stdlib's source)",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("task", nargs="?", default="charlm", choices=["charlm"], help="what to train")
    p.add_argument("--data", default=d.data, help="a text file or folder (default: the Python standard library's source)")
    p.add_argument("--cell", default=d.cell, choices=list(CELLS), help="recurrent cell")
    p.add_argument("--hidden-size", type=int, default=d.hidden_size, help="hidden units per layer")
    p.add_argument("--num-layers", type=int, default=d.num_layers, help="stacked recurrent layers")
    p.add_argument("--dropout", type=float, default=d.dropout, help="dropout between layers")
    p.add_argument("--seq-length", type=int, default=d.seq_length, help="truncated-BPTT chunk length")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="parallel lanes")
    p.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate")
    p.add_argument("--grad-clip", type=float, default=d.grad_clip, help="clip the gradient norm to this")
    p.add_argument("--max-time", type=float, default=d.max_time, help="seconds of training")
    p.add_argument("--max-steps", type=int, default=d.max_steps, help="updates of training (overrides --max-time)")
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="updates between validation and a sample")
    p.add_argument("--max-chars", type=int, default=d.max_chars, help="cap on the corpus size")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed")
    p.add_argument("--out", default=d.out, help="output folder for checkpoint, config and metrics")
    p.add_argument("--json", action="store_true", help="print the final metrics as one JSON line")


def _config(args) -> CharLMConfig:
    from . import UsageError

    for name in ("hidden_size", "num_layers", "seq_length", "batch_size", "eval_every", "max_chars"):
        if getattr(args, name) < 1:
            raise UsageError(f"rnnkit train: --{name.replace('_', '-')} must be ≥ 1, got {getattr(args, name)}")
    if args.max_steps is not None and args.max_steps < 1:
        raise UsageError(f"rnnkit train: --max-steps must be ≥ 1, got {args.max_steps}")
    for name in ("lr", "grad_clip", "max_time"):
        if not getattr(args, name) > 0:
            raise UsageError(f"rnnkit train: --{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if not 0 <= args.dropout < 1:
        raise UsageError(f"rnnkit train: --dropout must be in [0, 1), got {args.dropout}")
    fields = {f.name for f in dataclasses.fields(CharLMConfig)}
    return CharLMConfig(**{k: v for k, v in vars(args).items() if k in fields})


def run(args) -> int:
    cfg = _config(args)
    result = train(cfg, log=(lambda s: None) if args.json else print)
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "sample"}))
        return 0
    print(f"\nfinished: {result['steps']} updates in {result['wall_time']:.0f}s; "
          f"validation {result['val_bpc']:.3f} bits/char (unigram baseline {result['baseline_bpc']:.3f})")
    print(f"checkpoint: {result['out']}/model.safetensors\n\nsample:\n{result['sample']}\n")
    print(f"sample more with: rnnkit sample {shlex.quote(result['out'])} --length 1000 --temperature 0.8")
    return 0
