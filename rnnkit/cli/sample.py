"""``rnnkit sample CHECKPOINT``: generate from a trained model (a checkpoint file or run folder)."""

from __future__ import annotations

import argparse
import inspect

import torch

from ..tasks import load_run


def add_parser(subs) -> None:
    """Register ``rnnkit sample`` and its options."""
    p = subs.add_parser(
        "sample",
        help="generate from a checkpoint",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "checkpoint", help="a .safetensors checkpoint, or the run folder `rnnkit train` wrote (its best one)"
    )
    p.add_argument("--prime", default="\n", help="text fed to the model first (char-rnn's primetext)")
    p.add_argument("--length", type=int, default=500, help="tokens to generate")
    p.add_argument(
        "--method",
        choices=["sample", "greedy", "beam"],
        default=None,
        help="how to pick each token; default: the task's own, sample for the char-LM, greedy for the tasks "
        "that translate or caption (one answer per input)",
    )
    p.add_argument("--temperature", type=float, default=0.8, help="softmax temperature (> 0)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None, help="sample from the smallest set with probability ≥ p")
    p.add_argument("--beam-width", type=int, default=4, help="hypotheses kept by --method beam")
    p.add_argument(
        "--n-best",
        type=int,
        default=1,
        metavar="K",
        help="with --method beam, print the K best hypotheses with their scores (K ≤ --beam-width; "
        "tasks that decode a whole answer: caption, seq2seq)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument(
        "--device", default="auto", help="where the model runs: auto (CUDA if available), cpu, cuda or cuda:N"
    )


def run(args) -> int:
    """Run ``rnnkit sample`` with parsed ``args``; returns the exit code."""
    from . import UsageError

    for flag, value, ok, want in [
        ("--length", args.length, args.length >= 1, "≥ 1"),
        ("--beam-width", args.beam_width, args.beam_width >= 1, "≥ 1"),
        ("--top-k", args.top_k, args.top_k is None or args.top_k >= 1, "≥ 1"),
        ("--top-p", args.top_p, args.top_p is None or 0 < args.top_p <= 1, "in (0, 1]"),
        (
            "--temperature",
            args.temperature,
            args.temperature > 0,
            "> 0 (for the most likely token at every step, --method greedy)",
        ),
        ("--n-best", args.n_best, args.n_best >= 1, "≥ 1"),
    ]:
        if not ok:  # checked whatever --method is, so a typo never passes silently
            raise UsageError(f"rnnkit sample: {flag} must be {want}, got {value}")
    if args.n_best > 1 and args.method != "beam":  # also when --method is left to the task: the list is beam search's
        raise UsageError(
            f"rnnkit sample: --n-best {args.n_best} lists beam search's best hypotheses; add --method beam "
            f"(got {'--method ' + args.method if args.method else 'no --method'})"
        )
    if args.n_best > args.beam_width:
        raise UsageError(
            f"rnnkit sample: --n-best must be ≤ --beam-width (the beam holds the candidates), "
            f"got --n-best {args.n_best} and --beam-width {args.beam_width}"
        )
    task, model, _ = load_run(args.checkpoint, device=args.device)
    if not task.can_sample:  # declared on the task's type
        raise UsageError(f"rnnkit sample: the {task.name!r} task does not generate text")
    n_best = {}
    if args.n_best > 1:  # only tasks whose sample_text names n_best can list hypotheses
        if "n_best" not in inspect.signature(task.sample_text).parameters:
            raise UsageError(
                f"rnnkit sample: the {task.name!r} task prints one sample, not an n-best list; drop --n-best"
            )
        n_best = {"n_best": args.n_best}
    gen = torch.Generator().manual_seed(args.seed)  # on the CPU: the same draws whatever --device is
    method = {} if args.method is None else {"method": args.method}  # None: the task's sample_text default
    text = task.sample_text(
        model,
        prime=args.prime,
        length=args.length,
        **method,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        beam_width=args.beam_width,
        generator=gen,
        **n_best,
    )
    print(text)
    return 0
