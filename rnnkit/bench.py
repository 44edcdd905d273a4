"""Speed and memory of every cell over time, as ratios to torch measured in the same run.

For each cell and size (B, T, I, H) it times one forward + backward pass of a ``Recurrent``
layer over a (T, B, I) input, and compares it with ``torch.nn.LSTM`` of the same sizes and
with the cell's naive autograd loop (the reference engine: a Python loop over
``cell.forward``). Times are medians of repeats after a warm-up; nothing here asserts a time.

Memory: on CUDA, the peak allocated during forward + backward; on CPU (whose allocator keeps
no peak), the bytes of the tensors autograd saves for the backward pass — the activation
memory that dominates a recurrent layer's peak.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch import nn

from .cells.registry import CELLS, make_cell
from .recurrent import Recurrent

SIZES = [(16, 100, 64, 128), (32, 100, 256, 256), (64, 100, 512, 512)]


@dataclass
class BenchRow:
    cell: str
    batch: int
    steps: int
    input_size: int
    hidden_size: int
    engine: str  # the path rnnkit ran
    ms: float  # rnnkit, forward + backward, median
    torch_lstm_ms: float  # torch.nn.LSTM of the same sizes
    naive_ms: float  # the same cell in a plain autograd loop over cell.forward
    vs_torch_lstm: float  # ms / torch_lstm_ms
    speedup_vs_naive: float  # naive_ms / ms
    memory_bytes: int
    torch_lstm_memory_bytes: int
    memory_vs_torch_lstm: float


def _median_ms(fn: Callable[[], None], repeats: int, device: torch.device) -> float:
    fn()  # warm-up: first-call allocations and kernel selection
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _memory_bytes(fn: Callable[[], torch.Tensor], device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn().backward()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = fn()
    loss.backward()
    return sum(seen.values())


def _fwd_bwd(model: Callable, x: torch.Tensor, params: list[torch.Tensor]) -> Callable[[], torch.Tensor]:
    def loss() -> torch.Tensor:
        for p in params:
            p.grad = None
        x.grad = None
        y = model(x)
        return y.square().mean()

    return loss


def naive_loop(cell: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What a user writes without rnnkit: a Python loop over the cell, autograd recording each step."""
    state, outs = None, []
    for t in range(x.shape[0]):
        h, state = cell(x[t], state)
        outs.append(h)
    return torch.stack(outs)


def bench(cells: list[str] | None = None, sizes: list[tuple[int, int, int, int]] | None = None, repeats: int = 5, device: str = "cpu", log=print) -> list[BenchRow]:
    """Measure every cell (names from ``CELLS``) at every (B, T, I, H); returns one row each."""
    device = torch.device(device)
    rows = []
    for B, T, I, H in sizes or SIZES:
        torch.manual_seed(0)
        x = torch.randn(T, B, I, device=device, requires_grad=True)
        ref = nn.LSTM(I, H).to(device)
        ref_loss = _fwd_bwd(lambda x: ref(x)[0], x, list(ref.parameters()))
        ref_ms = _median_ms(lambda: ref_loss().backward(), repeats, device)
        ref_mem = _memory_bytes(ref_loss, device)
        for name in cells or list(CELLS):
            cell = make_cell(name, I, H).to(device)
            layer = Recurrent(cell)
            params = list(cell.parameters())
            ours = _fwd_bwd(lambda x: layer(x)[0], x, params)
            ms = _median_ms(lambda: ours().backward(), repeats, device)
            mem = _memory_bytes(ours, device)
            naive = _fwd_bwd(lambda x: naive_loop(cell, x), x, params)
            naive_ms = _median_ms(lambda: naive().backward(), max(1, repeats // 2), device)
            row = BenchRow(name, B, T, I, H, layer.last_engine, ms, ref_ms, naive_ms, ms / ref_ms, naive_ms / ms, mem, ref_mem, mem / ref_mem)
            log(format_row(row))
            rows.append(row)
    return rows


HEADER = f"{'cell':<12} {'B':>3} {'T':>4} {'I':>4} {'H':>4} {'engine':<9} {'ms':>8} {'×LSTM':>6} {'naive÷':>6} {'mem×LSTM':>8}"


def format_row(r: BenchRow) -> str:
    return (
        f"{r.cell:<12} {r.batch:>3} {r.steps:>4} {r.input_size:>4} {r.hidden_size:>4} {r.engine:<9} "
        f"{r.ms:>8.1f} {r.vs_torch_lstm:>6.2f} {r.speedup_vs_naive:>6.2f} {r.memory_vs_torch_lstm:>8.2f}"
    )


def as_dicts(rows: list[BenchRow]) -> list[dict]:
    return [asdict(r) for r in rows]
