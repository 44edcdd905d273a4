"""Speed and memory of every cell over time, as ratios to torch measured in the same run.

For each cell and size (B, T, I, H) it times one forward + backward pass of a ``Recurrent``
layer over a (T, B, I) input, and compares it with

* ``torch.nn.LSTM`` of the same sizes (every cell);
* the torch.nn module of the same cell — ``nn.RNN`` (tanh or ReLU), ``nn.LSTM``, ``nn.GRU`` with
  the cell's weights — for the cells torch has (the others have none);
* the cell's naive autograd loop: what a user writes without rnnkit, a Python loop over
  ``cell.forward``;
* the same layer on the same batch with random variable lengths (uniform in [1, T], one
  sequence of length T so the padded length stays T), to show what masking costs.

``engine`` says which path rnnkit ran (``native``, ``fused`` or ``reference``). Times are
medians of repeats after a warm-up, all measured in the same run; nothing here asserts a time.

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
from .engine.native import native_kind
from .recurrent import Recurrent

SIZES = [(16, 100, 64, 128), (32, 100, 256, 256), (64, 100, 512, 512)]


@dataclass
class BenchRow:
    cell: str
    batch: int
    steps: int
    input_size: int
    hidden_size: int
    engine: str  # the path rnnkit ran: "native", "fused" or "reference"
    ms: float  # rnnkit, forward + backward, median
    torch_lstm_ms: float  # torch.nn.LSTM of the same sizes
    naive_ms: float  # the same cell in a plain autograd loop over cell.forward
    vs_torch_lstm: float  # ms / torch_lstm_ms
    speedup_vs_naive: float  # naive_ms / ms
    memory_bytes: int
    torch_lstm_memory_bytes: int
    memory_vs_torch_lstm: float
    torch_same_ms: float | None  # torch.nn.RNN/LSTM/GRU of the same cell; None if torch has no such module
    vs_torch_same: float | None  # ms / torch_same_ms
    lengths_ms: float  # rnnkit on the same batch with random variable lengths
    lengths_vs_full: float  # lengths_ms / ms


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


def torch_module_of(cell: nn.Module) -> nn.Module | None:
    """The torch.nn layer that computes what ``cell`` does, with its weights; None if torch has none."""
    kind = native_kind(cell)
    if kind is None:
        return None
    sizes = dict(input_size=cell.input_size, hidden_size=cell.hidden_size, bias=cell.bias, dtype=cell.weight_ih.dtype, device=cell.weight_ih.device)
    if kind.startswith("rnn_"):
        module = nn.RNN(nonlinearity=kind[4:], **sizes)
    else:
        module = (nn.LSTM if kind == "lstm" else nn.GRU)(**sizes)
    with torch.no_grad():
        for name, p in cell.named_parameters():
            getattr(module, f"{name}_l0").copy_(p)
    return module


def random_lengths(batch: int, steps: int, device: torch.device) -> torch.Tensor:
    """Lengths uniform in [1, T], with the first sequence of full length T."""
    lengths = torch.randint(1, steps + 1, (batch,))
    lengths[0] = steps
    return lengths.to(device)


def bench(cells: list[str] | None = None, sizes: list[tuple[int, int, int, int]] | None = None, repeats: int = 5, device: str = "cpu", log=print) -> list[BenchRow]:
    """Measure every cell (names from ``CELLS``) at every (B, T, I, H); returns one row each."""
    device = torch.device(device)
    rows = []
    for B, T, I, H in sizes or SIZES:
        torch.manual_seed(0)
        x = torch.randn(T, B, I, device=device, requires_grad=True)
        lengths = random_lengths(B, T, device)
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
            engine = layer.last_engine
            mem = _memory_bytes(ours, device)
            padded = _fwd_bwd(lambda x: layer(x, lengths=lengths)[0], x, params)
            lengths_ms = _median_ms(lambda: padded().backward(), repeats, device)
            same = torch_module_of(cell)
            same_ms = None
            if same is not None:
                same_loss = _fwd_bwd(lambda x: same(x)[0], x, list(same.parameters()))
                same_ms = _median_ms(lambda: same_loss().backward(), repeats, device)
            naive = _fwd_bwd(lambda x: naive_loop(cell, x), x, params)
            naive_ms = _median_ms(lambda: naive().backward(), max(1, repeats // 2), device)
            row = BenchRow(
                name, B, T, I, H, engine, ms, ref_ms, naive_ms, ms / ref_ms, naive_ms / ms, mem, ref_mem, mem / ref_mem,
                same_ms, None if same_ms is None else ms / same_ms, lengths_ms, lengths_ms / ms,
            )
            log(format_row(row))
            rows.append(row)
    return rows


HEADER = (
    f"{'cell':<15} {'B':>3} {'T':>4} {'I':>4} {'H':>4} {'engine':<9} {'ms':>8} {'×LSTM':>6} {'×same':>6} "
    f"{'naive÷':>6} {'len×':>5} {'mem×LSTM':>8}"
)
LEGEND = (
    "×LSTM: time / torch.nn.LSTM's · ×same: / torch.nn's module of the same cell (RNN/LSTM/GRU; - if none) · "
    "naive÷: the naive autograd loop's time / ours · len×: time with random lengths / without · "
    "mem×LSTM: memory / torch.nn.LSTM's"
)


def format_row(r: BenchRow) -> str:
    """One row of the table under ``HEADER``; ``-`` where torch has no module of the same cell."""
    same = "-" if r.vs_torch_same is None else f"{r.vs_torch_same:.2f}"
    return (
        f"{r.cell:<15} {r.batch:>3} {r.steps:>4} {r.input_size:>4} {r.hidden_size:>4} {r.engine:<9} "
        f"{r.ms:>8.1f} {r.vs_torch_lstm:>6.2f} {same:>6} {r.speedup_vs_naive:>6.2f} {r.lengths_vs_full:>5.2f} "
        f"{r.memory_vs_torch_lstm:>8.2f}"
    )


def as_dicts(rows: list[BenchRow]) -> list[dict]:
    """The rows as plain dicts, for ``--json``."""
    return [asdict(r) for r in rows]
