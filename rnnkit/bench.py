"""Speed and memory of every cell over time, as ratios to torch measured in the same run.

For each cell and size (B, T, I, H) it times one forward + backward pass of a ``Recurrent``
layer over a (T, B, I) input, and compares it with

* ``torch.nn.LSTM`` of the same sizes (every cell);
* the torch.nn module of the same cell — ``nn.RNN`` (tanh or ReLU), ``nn.LSTM``, ``nn.GRU`` with
  the cell's weights — for the cells torch has (the others have none);
* the same layer on rnnkit's reference loop (``engine="reference"``): what the fast path buys;
* the cell's naive autograd loop: what a user writes without rnnkit, a Python loop over
  ``cell.forward``;
* the same layer on the same batch with random variable lengths (uniform in [1, T], one
  sequence of length T so the padded length stays T), to show what masking costs.

The cells are the registry's (``rnnkit.cells.registry.CELLS``) and the ones in
``EXTRA_CELLS``: ``guide-cho-gru``, the cell written in the custom-cell guide
(:class:`rnnkit.custom_cell.ChoGRUCell`), which no engine knows by name, so its row shows what
the traced fused engine does for a cell a user writes.

``engine`` says which path rnnkit ran (``native``, ``fused`` or ``reference``). Times are
medians of repeats after a warm-up, on ``threads`` CPU threads (one by default). A cell's
candidates — its layer, torch.nn.LSTM, torch's same module, the reference and naive loops, the
layer with lengths — are timed round-robin, one timed call of each per round after an untimed
one, so that a change in a shared machine's load hits them alike and their ratios hold still;
nothing here asserts a time.
``TARGETS`` are the figures the README sets; :func:`target_lines` says which rows meet them.

Memory: on CUDA, the peak allocated during forward + backward; on CPU (whose allocator keeps
no peak), the bytes of the tensors autograd saves for the backward pass — the activation
memory that dominates a recurrent layer's peak.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial

import torch
from torch import Tensor, nn

from .cells.base import RecurrentCell
from .cells.registry import CELLS
from .custom_cell import ChoGRUCell
from .engine.native import native_kind
from .recurrent import Recurrent

SIZES = [(16, 100, 64, 128), (32, 100, 256, 256), (64, 100, 512, 512)]

# Cells measured besides the registry's: name -> (one-line description, factory(input_size, hidden_size)).
EXTRA_CELLS: dict[str, tuple[str, Callable[[int, int], RecurrentCell]]] = {
    "guide-cho-gru": (
        "the custom-cell guide's cell, Cho et al.'s GRU with U (r * h), written outside the zoo",
        lambda i, h: ChoGRUCell(i, h),
    ),
}


def bench_cells() -> dict[str, tuple[str, Callable[[int, int], RecurrentCell]]]:
    """Every cell ``bench`` can measure, by name: the registry's, then ``EXTRA_CELLS``."""
    return {**CELLS, **EXTRA_CELLS}


@dataclass
class BenchRow:
    """One cell at one size: what rnnkit took and its ratios to the references of the same run."""

    cell: str
    batch: int
    steps: int
    input_size: int
    hidden_size: int
    threads: int  # CPU threads torch and the engines ran on
    engine: str  # the path rnnkit ran: "native", "fused" or "reference"
    ms: float  # rnnkit, forward + backward, median
    torch_lstm_ms: float  # torch.nn.LSTM of the same sizes, timed in the same rounds as this cell
    naive_ms: float  # the same cell in a plain autograd loop over cell.forward
    reference_ms: float  # the same layer with engine="reference" (ms itself when that is what ran)
    vs_torch_lstm: float  # ms / torch_lstm_ms
    speedup_vs_naive: float  # naive_ms / ms
    speedup_vs_reference: float  # reference_ms / ms
    memory_bytes: int
    torch_lstm_memory_bytes: int
    memory_vs_torch_lstm: float
    torch_same_ms: float | None  # torch.nn.RNN/LSTM/GRU of the same cell; None if torch has no such module
    vs_torch_same: float | None  # ms / torch_same_ms
    lengths_ms: float  # rnnkit on the same batch with random variable lengths
    lengths_vs_full: float  # lengths_ms / ms


def _interleaved_ms(
    runs: dict[str, Callable[[], None]], repeats: dict[str, int], device: torch.device
) -> dict[str, float]:
    """Median milliseconds of each run, timed round-robin so that a change in a shared machine's
    load (another process, a frequency step) hits every candidate alike and their ratios hold.

    ``repeats[name]`` rounds include ``name``. In each, the candidate runs twice and the second
    call is timed: the first finds its buffers again (the allocator's cache, the CPU's), so the
    timed call measures a layer called repeatedly, as in training, not one called after the
    other candidates' memory traffic.
    """
    times: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(max(repeats.values())):
        for name, fn in runs.items():
            if i >= repeats[name]:
                continue
            fn()  # untimed: first-call allocations, kernel selection, the fused engine's trace, caches
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


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
    sizes = dict(
        input_size=cell.input_size,
        hidden_size=cell.hidden_size,
        bias=cell.bias,
        dtype=cell.weight_ih.dtype,
        device=cell.weight_ih.device,
    )
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


def bench(
    cells: list[str] | None = None,
    sizes: list[tuple[int, int, int, int]] | None = None,
    repeats: int = 5,
    device: str = "cpu",
    log=print,
    threads: int | None = 1,
) -> list[BenchRow]:
    """Measure every cell (names from :func:`bench_cells`) at every (B, T, I, H); one row each.

    ``threads``: CPU threads for the measurement (torch's setting is restored afterwards);
    None keeps the current setting. The slow loops (reference, naive) get half the repeats.
    """
    known = bench_cells()
    unknown = [c for c in cells or [] if c not in known]
    if unknown:
        raise ValueError(f"bench: unknown cells {unknown}; choose from: {', '.join(known)}")
    device = torch.device(device)
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _bench(cells or list(known), sizes or SIZES, repeats, device, log)
    finally:
        torch.set_num_threads(before)


def _output(layer: nn.Module, **kwargs) -> Callable[[Tensor], Tensor]:
    """``x ↦ layer(x, **kwargs)[0]``: a recurrent layer's outputs, its state dropped."""
    return lambda x: layer(x, **kwargs)[0]


def _backward(loss: Callable[[], Tensor]) -> Callable[[], None]:
    """A timed run: evaluate ``loss`` and back-propagate it."""
    return lambda: loss().backward()


def _bench(
    cells: list[str], sizes: list[tuple[int, int, int, int]], repeats: int, device: torch.device, log
) -> list[BenchRow]:
    known = bench_cells()
    slow_repeats = max(1, repeats // 2)
    rows = []
    for B, T, I, H in sizes:
        torch.manual_seed(0)
        x = torch.randn(T, B, I, device=device, requires_grad=True)
        lengths = random_lengths(B, T, device)
        ref = nn.LSTM(I, H).to(device)
        ref_loss = _fwd_bwd(_output(ref), x, list(ref.parameters()))
        ref_mem = _memory_bytes(ref_loss, device)
        for name in cells:
            cell = known[name][1](I, H).to(device)
            layer = Recurrent(cell)
            params = list(cell.parameters())
            ours = _fwd_bwd(_output(layer), x, params)
            runs = {"ours": _backward(ours), "torch_lstm": _backward(ref_loss)}
            counts = {"ours": repeats, "torch_lstm": repeats}
            padded = _fwd_bwd(_output(layer, lengths=lengths), x, params)
            runs["lengths"], counts["lengths"] = _backward(padded), repeats
            same = torch_module_of(cell)
            if same is not None:
                same_loss = _fwd_bwd(_output(same), x, list(same.parameters()))
                runs["same"], counts["same"] = _backward(same_loss), repeats
            slow = Recurrent(cell, engine="reference")
            slow_loss = _fwd_bwd(_output(slow), x, params)
            runs["reference"], counts["reference"] = _backward(slow_loss), slow_repeats
            naive = _fwd_bwd(partial(naive_loop, cell), x, params)
            runs["naive"], counts["naive"] = _backward(naive), slow_repeats
            layer(x[:1])  # which engine "auto" takes, and run the reference loop once only if it is another
            engine = layer.last_engine
            if engine == "reference":
                del runs["reference"], counts["reference"]
            ms = _interleaved_ms(runs, counts, device)
            ms.setdefault("reference", ms["ours"])
            mem = _memory_bytes(ours, device)
            row = BenchRow(
                name,
                B,
                T,
                I,
                H,
                torch.get_num_threads(),
                engine,
                ms["ours"],
                ms["torch_lstm"],
                ms["naive"],
                ms["reference"],
                ms["ours"] / ms["torch_lstm"],
                ms["naive"] / ms["ours"],
                ms["reference"] / ms["ours"],
                mem,
                ref_mem,
                mem / ref_mem,
                ms.get("same"),
                None if same is None else ms["ours"] / ms["same"],
                ms["lengths"],
                ms["lengths"] / ms["ours"],
            )
            log(format_row(row))
            rows.append(row)
    return rows


HEADER = (
    f"{'cell':<15} {'B':>3} {'T':>4} {'I':>4} {'H':>4} {'engine':<9} {'ms':>8} {'×LSTM':>6} {'×same':>6} "
    f"{'ref÷':>6} {'naive÷':>6} {'len×':>5} {'mem×LSTM':>8}"
)
LEGEND = (
    "×LSTM: time / torch.nn.LSTM's · ×same: / torch.nn's module of the same cell (RNN/LSTM/GRU; - if none) · "
    "ref÷: the reference loop's time / ours · naive÷: the naive autograd loop's time / ours · "
    "len×: time with random lengths / without · mem×LSTM: memory / torch.nn.LSTM's"
)


def format_row(r: BenchRow) -> str:
    """One row of the table under ``HEADER``; ``-`` where torch has no module of the same cell."""
    same = "-" if r.vs_torch_same is None else f"{r.vs_torch_same:.2f}"
    return (
        f"{r.cell:<15} {r.batch:>3} {r.steps:>4} {r.input_size:>4} {r.hidden_size:>4} {r.engine:<9} "
        f"{r.ms:>8.1f} {r.vs_torch_lstm:>6.2f} {same:>6} {r.speedup_vs_reference:>6.2f} {r.speedup_vs_naive:>6.2f} "
        f"{r.lengths_vs_full:>5.2f} {r.memory_vs_torch_lstm:>8.2f}"
    )


@dataclass(frozen=True)
class Target:
    """A figure the README sets for one cell: ``column`` (a :class:`BenchRow` field) at most
    ``at_most`` or at least ``at_least``, at the sizes in ``sizes`` (empty: every size)."""

    cell: str
    column: str
    at_most: float | None = None
    at_least: float | None = None
    sizes: tuple[tuple[int, int, int, int], ...] = ()

    def applies(self, row: BenchRow) -> bool:
        """Whether ``row`` is one this target judges."""
        size = (row.batch, row.steps, row.input_size, row.hidden_size)
        return row.cell == self.cell and (not self.sizes or size in self.sizes)

    def met(self, row: BenchRow) -> bool:
        """Whether ``row``'s figure meets the target."""
        value = getattr(row, self.column)
        return (self.at_most is None or value <= self.at_most) and (self.at_least is None or value >= self.at_least)


TARGETS = (
    Target("layernorm-lstm", "vs_torch_lstm", at_most=1.6),
    Target("guide-cho-gru", "speedup_vs_reference", at_least=5.0, sizes=(SIZES[0],)),
)


def target_lines(rows: list[BenchRow]) -> list[str]:
    """One line per row a ``TARGETS`` entry judges: the figure, the target, met or missed."""
    lines = []
    for target in TARGETS:
        for r in rows:
            if target.applies(r):
                bound = f"≤ {target.at_most:g}" if target.at_most is not None else f"≥ {target.at_least:g}"
                verdict = "met" if target.met(r) else "MISSED"
                lines.append(
                    f"{r.cell} at {(r.batch, r.steps, r.input_size, r.hidden_size)}: {target.column} = "
                    f"{getattr(r, target.column):.2f} (target {bound}): {verdict}"
                )
    return lines


def as_dicts(rows: list[BenchRow]) -> list[dict]:
    """The rows as plain dicts, for ``--json``."""
    return [asdict(r) for r in rows]
