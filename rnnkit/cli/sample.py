"""``rnnkit sample``: generate text from a trained character-level model."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..tasks.charlm import load, sample


def add_parser(subs) -> None:
    p = subs.add_parser("sample", help="generate text from a checkpoint folder", description=__doc__,
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", help="the folder `rnnkit train` wrote (holds model.safetensors, config.json)")
    p.add_argument("--length", type=int, default=500, help="characters to generate")
    p.add_argument("--temperature", type=float, default=0.8, help="softmax temperature (> 0)")
    p.add_argument("--prime", default="\n", help="text fed to the model first")
    p.add_argument("--seed", type=int, default=0, help="random seed")


def run(args) -> int:
    from . import UsageError

    folder = Path(args.checkpoint)
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        raise UsageError(f"rnnkit sample: {str(folder)!r} is not a checkpoint folder (no config.json and model.safetensors)")
    if args.length < 1:
        raise UsageError(f"rnnkit sample: --length must be ≥ 1, got {args.length}")
    if not args.temperature > 0:
        raise UsageError(f"rnnkit sample: --temperature must be > 0, got {args.temperature}")
    model, vocab, _ = load(folder)
    gen = torch.Generator().manual_seed(args.seed)
    print(args.prime + sample(model, vocab, args.length, prime=args.prime, temperature=args.temperature, generator=gen))
    return 0
