"""Write a new recurrent cell, check it, and run it on rnnkit's compiled engine.

The cell is the multiplicative RNN of Sutskever, Martens & Hinton (2011), "Generating Text with
Recurrent Neural Networks", whose recurrent matrix depends on the current input through a
factored product. It is an ordinary ``RecurrentCell``: ``input_projection`` and ``recurrence``
in plain PyTorch, registered nowhere. Because its step uses only operations the fused engine
traces, ``Recurrent`` runs it compiled (``last_engine == "fused"``). The script checks it the
way rnnkit checks its own cells — against the equations stepped by hand over a padded batch, on
the fused engine and on the reference loop, and with float64 gradcheck through the fused
engine's backward pass — then times the fused engine against the reference loop and the naive
loop over ``cell.forward``, forward + backward, one thread, median of repeats.

Run::

    python examples/custom_cell.py
    python examples/custom_cell.py --quick              # smaller sizes (what the tests run)

docs/guides/custom_cell.md explains each part, what a step may contain, and the engines.
"""

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit import Recurrent
from rnnkit.cells import RecurrentCell, RNNState
from rnnkit.engine.fused import why_not_fused


class MultiplicativeCell(RecurrentCell):
    r"""Multiplicative RNN (Sutskever et al. 2011): the transition matrix is chosen by the input.

    .. math::
        m(t) = (W_{mx} x(t)) \odot (W_{mh} h(t-1)), \qquad
        h(t) = \tanh\big(W_{hm} m(t) + W_{hx} x(t) + b\big)

    Parameters: ``weight_ih`` (F + H, I) = (W_mx | W_hx), ``bias_ih`` (F + H,) = (0 | b) — the
    first F entries stay zero —, ``weight_mh`` (F, H) = W_mh, ``weight_hm`` (H, F) = W_hm; all
    from U(−1/√H, 1/√H). F is the number of factors.

    Shapes: x (B, I); state ``RNNState(h)`` with h (B, H); output h (B, H).
    """

    def __init__(self, input_size: int, hidden_size: int, factors: int) -> None:
        super().__init__()
        self.input_size, self.hidden_size, self.factors = input_size, hidden_size, factors
        self.projection_size = factors + hidden_size  # gi = (W_mx x | W_hx x + b)
        self.weight_ih = nn.Parameter(torch.empty(factors + hidden_size, input_size))
        self.bias_ih = nn.Parameter(torch.empty(factors + hidden_size))
        self.weight_mh = nn.Parameter(torch.empty(factors, hidden_size))
        self.weight_hm = nn.Parameter(torch.empty(hidden_size, factors))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)
        with torch.no_grad():
            self.bias_ih[: self.factors].zero_()  # the factor half of the projection has no bias

    def init_state(self, batch_size, *, dtype=None, device=None) -> RNNState:
        w = self.weight_mh
        return RNNState(torch.zeros(batch_size, self.hidden_size, dtype=dtype or w.dtype, device=device or w.device))

    def input_projection(self, x: Tensor) -> Tensor:
        bias = torch.cat([torch.zeros_like(self.bias_ih[: self.factors]), self.bias_ih[self.factors :]])
        return F.linear(x, self.weight_ih, bias)  # (..., F + H)

    def recurrence(self, gi: Tensor, state: RNNState) -> tuple[Tensor, RNNState]:
        gi_m, gi_h = gi.split([self.factors, self.hidden_size], dim=-1)  # (B, F), (B, H)
        m = gi_m * (state.h @ self.weight_mh.T)  # (B, F)
        h = torch.tanh(m @ self.weight_hm.T + gi_h)
        return h, RNNState(h)


def by_hand(cell: MultiplicativeCell, x: Tensor) -> tuple[Tensor, Tensor]:
    """The equations stepped over one sequence x (T, I) from h = 0, independently of the class."""
    W_mx, W_hx = cell.weight_ih[: cell.factors], cell.weight_ih[cell.factors :]
    b = cell.bias_ih[cell.factors :]
    h, outputs = torch.zeros(cell.hidden_size, dtype=x.dtype), []
    for x_t in x:
        m = (W_mx @ x_t) * (cell.weight_mh @ h)
        h = torch.tanh(cell.weight_hm @ m + W_hx @ x_t + b)
        outputs.append(h)
    return torch.stack(outputs), h


def median_ms(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` in milliseconds, after one warm-up call (the engine traces there)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one timing repeat (for tests)")
    args = parser.parse_args()
    torch.manual_seed(0)

    # 1. the time loop runs it, over a padded batch of different lengths, on both engines
    cell = MultiplicativeCell(3, 6, factors=4)
    print("why_not_fused:", why_not_fused(cell))  # None: the engine compiles this step
    x, lengths = torch.randn(9, 4, 3), torch.tensor([9, 3, 6, 1])
    for engine in ("auto", "reference"):
        layer = Recurrent(cell, engine=engine)
        y, final = layer(x, lengths=lengths)
        for b, n in enumerate(lengths.tolist()):
            want_y, want_h = by_hand(cell, x[:n, b])
            torch.testing.assert_close(y[:n, b], want_y, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(final.h[b], want_h, rtol=1e-5, atol=1e-6)
        print(
            f"engine={engine!r} ran {layer.last_engine}: over lengths {lengths.tolist()} it equals the equations "
            "stepped by hand"
        )

    # 2. the fused engine's gradients against finite differences, float64, through the masked loop;
    # gradcheck perturbs each input in place, the parameters included, and the layer reads them there
    layer64 = Recurrent(MultiplicativeCell(3, 4, factors=3).double(), engine="fused")
    names = [n for n, _ in layer64.named_parameters()]
    x64 = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)

    def run(x, *weights):
        return layer64(x, lengths=[5, 3])[0]

    assert torch.autograd.gradcheck(run, (x64, *layer64.parameters()), eps=1e-6, atol=1e-8)
    print(f"gradcheck passed on the {layer64.last_engine} engine for x and", ", ".join(names))

    # 3. the cost: fused against the reference loop and the naive loop over cell.forward
    B, T, I, H = (4, 20, 8, 16) if args.quick else (16, 100, 64, 128)
    repeats = 1 if args.quick else 9
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: ratios that hold still on a shared machine
    big = MultiplicativeCell(I, H, factors=H)
    xb = torch.randn(T, B, I)
    fused, reference = Recurrent(big), Recurrent(big, engine="reference")

    def naive():
        state, outs = None, []
        for x_t in xb:
            h, state = big(x_t, state)
            outs.append(h)
        return torch.stack(outs)

    ms = {
        name: median_ms(lambda f=f: f().square().mean().backward(), repeats)
        for name, f in [("fused", lambda: fused(xb)[0]), ("reference", lambda: reference(xb)[0]), ("naive", naive)]
    }
    torch.set_num_threads(threads)
    print(
        f"forward + backward at (B, T, I, H) = {(B, T, I, H)}, one thread, median of {repeats}: "
        f"{fused.last_engine} {ms['fused']:.1f} ms, reference loop {ms['reference']:.1f} ms "
        f"({ms['reference'] / ms['fused']:.1f}x slower), naive loop {ms['naive']:.1f} ms "
        f"({ms['naive'] / ms['fused']:.1f}x slower)"
    )


if __name__ == "__main__":
    main()
