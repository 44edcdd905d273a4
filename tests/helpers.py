"""Shared test helpers: compare two computations value by value and gradient by gradient."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from rnnkit.cells.state import map_state, state_tensors

# Tolerances of the foundation issue: float64 within 1e-10, float32 within 1e-5.
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-5)}


def randomize_(module: torch.nn.Module, scale: float = 0.5, seed: int = 0) -> torch.nn.Module:
    """Give every parameter realistic random values (N(0, scale²)), so gate-order bugs cannot hide."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * scale)
    return module


def leaves(outputs) -> list[Tensor]:
    """Every floating tensor in a (nested) result."""
    if isinstance(outputs, Tensor):
        return [outputs] if outputs.is_floating_point() else []
    return [t for t in state_tensors(outputs) if t.is_floating_point()]


def assert_same_computation(
    ours: Callable[..., object],
    ref: Callable[..., object],
    inputs: Sequence[Tensor],
    params_ours: Sequence[Tensor],
    params_ref: Sequence[Tensor],
    dtype: torch.dtype = torch.float64,
    seed: int = 1,
) -> None:
    """Assert equal outputs and equal gradients w.r.t. inputs and parameters.

    ``ours`` and ``ref`` take the same inputs (each gets its own leaf copies) and return
    tensors or states; the loss is a fixed random projection of every output tensor, so every
    output and final-state entry contributes to the gradients.
    """
    tol = TOL[dtype]
    xa = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    xb = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    out_a, out_b = leaves(ours(*xa)), leaves(ref(*xb))
    assert len(out_a) == len(out_b), f"different number of outputs: {len(out_a)} vs {len(out_b)}"
    for k, (a, b) in enumerate(zip(out_a, out_b)):
        torch.testing.assert_close(a, b, **tol, msg=lambda m, k=k: f"output {k}: {m}")
    gen = torch.Generator().manual_seed(seed)
    weights = [torch.randn(a.shape, generator=gen, dtype=torch.float64).to(a.dtype) for a in out_a]
    loss_a = sum((a * w).sum() for a, w in zip(out_a, weights))
    loss_b = sum((b * w).sum() for b, w in zip(out_b, weights))
    wrt_a = [t for t in xa if t.requires_grad] + list(params_ours)
    wrt_b = [t for t in xb if t.requires_grad] + list(params_ref)
    ga = torch.autograd.grad(loss_a, wrt_a, allow_unused=True)
    gb = torch.autograd.grad(loss_b, wrt_b, allow_unused=True)
    for k, (a, b) in enumerate(zip(ga, gb)):
        assert a is not None and b is not None, f"gradient {k} missing"
        torch.testing.assert_close(a, b, **tol, msg=lambda m, k=k: f"gradient {k}: {m}")


def step_loop(step: Callable, x: Tensor, state):
    """A plain Python loop over time-major x (T, B, I) calling ``step(x_t, state)``."""
    outs = []
    for t in range(x.shape[0]):
        out, state = step(x[t], state)
        outs.append(out)
    return torch.stack(outs), state


def gradcheck_cell(cell: torch.nn.Module, batch: int = 3, steps: int = 4, seed: int = 0) -> None:
    """float64 gradcheck of a cell run over a few steps, w.r.t. input, state and all parameters."""
    cell = cell.double()
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(steps, batch, cell.input_size, generator=gen, dtype=torch.float64, requires_grad=True)
    state0 = cell.init_state(batch, dtype=torch.float64)
    # a random initial state, so the gradient w.r.t. it is checked too (integer counters stay)
    init = [
        torch.randn(t.shape, generator=gen, dtype=torch.float64).requires_grad_() if t.is_floating_point() else t
        for t in state_tensors(state0)
    ]
    names, params = zip(*cell.named_parameters())

    def rebuild(template, flat):
        it = iter(flat)
        return map_state(lambda _: next(it), template)

    def fn(x, *rest):
        state = rebuild(state0, rest[: len(init)])
        weights = dict(zip(names, rest[len(init) :]))
        outs = []
        for t in range(x.shape[0]):
            o, state = torch.func.functional_call(cell, weights, (x[t], state))
            outs.append(o)
        return (torch.stack(outs), *leaves(state))

    args = (x, *init, *[p.detach().clone().requires_grad_() for p in params])
    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-7, rtol=1e-5)


def check_cell_against_torch(
    ours: torch.nn.Module, theirs: torch.nn.Module, dtype: torch.dtype, steps: int = 6, batch: int = 4, seed: int = 0
) -> None:
    """Our cell stepped over time vs a torch.nn.*Cell with the same weights: outputs, states, gradients."""
    randomize_(theirs, seed=seed)
    theirs = theirs.to(dtype)
    ours = ours.to(dtype)
    ours.load_state_dict(theirs.state_dict())  # same names, same layout
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(steps, batch, ours.input_size, generator=gen, dtype=torch.float64).to(dtype)
    lstm = isinstance(theirs, torch.nn.LSTMCell)
    h0 = torch.randn(batch, ours.hidden_size, generator=gen, dtype=torch.float64).to(dtype)
    c0 = torch.randn(batch, ours.hidden_size, generator=gen, dtype=torch.float64).to(dtype)

    def run_ours(x, h0, c0=None):
        return step_loop(ours, x, (h0, c0) if lstm else (h0,))

    def run_theirs(x, h0, c0=None):
        if lstm:
            return step_loop(lambda xt, s: (lambda h, c: (h, (h, c)))(*theirs(xt, s)), x, (h0, c0))
        return step_loop(lambda xt, s: (lambda h: (h, (h,)))(theirs(xt, s[0])), x, (h0,))

    assert_same_computation(
        run_ours,
        run_theirs,
        [x, h0, c0] if lstm else [x, h0],
        list(ours.parameters()),
        list(theirs.parameters()),
        dtype=dtype,
    )


def run_cli(args: Sequence[str]) -> str:
    """``rnnkit ARGS`` in-process: asserts it exits 0 and returns what it printed."""
    from rnnkit.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(list(args)) == 0
    return buf.getvalue()


def last_json(text: str) -> dict:
    """The last line of a command's output (its ``--json`` summary), parsed."""
    return json.loads(text.strip().splitlines()[-1])


def cli_json(args: Sequence[str]) -> dict:
    """``rnnkit ARGS`` in-process; its log printed (shown by ``pytest -s`` or on failure) and its
    ``--json`` line parsed."""
    text = run_cli(args)
    print(text)
    return last_json(text)
