"""Write a new recurrent cell, check it, and run it with rnnkit's time loop.

The cell is the multiplicative RNN of Sutskever, Martens & Hinton (2011), "Generating Text with
Recurrent Neural Networks", whose recurrent matrix depends on the current input through a
factored product. The script checks it the way rnnkit checks its own cells — against the
equations stepped by hand over a padded batch, and with float64 gradcheck through the whole
loop — then says which engine ran it and what that costs against its naive loop.

Run::

    python examples/custom_cell.py
    python examples/custom_cell.py --quick              # smaller sizes (what the tests run)

docs/guides/custom_cell.md explains each part and the engines.
"""

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from rnnkit import Recurrent
from rnnkit.cells import RecurrentCell, RNNState


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
    fn()  # warm-up
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

    # 1. the time loop runs it, over a padded batch of different lengths
    cell = MultiplicativeCell(3, 6, factors=4)
    layer = Recurrent(cell)
    x, lengths = torch.randn(9, 4, 3), torch.tensor([9, 3, 6, 1])
    y, final = layer(x, lengths=lengths)
    for b, n in enumerate(lengths.tolist()):
        want_y, want_h = by_hand(cell, x[:n, b])
        torch.testing.assert_close(y[:n, b], want_y, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(final.h[b], want_h, rtol=1e-5, atol=1e-6)
    print(f"Recurrent over lengths {lengths.tolist()} equals the equations stepped by hand; engine: {layer.last_engine}")

    # 2. autograd's gradients against finite differences, float64, through the masked loop
    layer64 = Recurrent(MultiplicativeCell(3, 4, factors=3).double())
    names = [n for n, _ in layer64.named_parameters()]
    x64 = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    weights = [p.detach().clone().requires_grad_() for p in layer64.parameters()]

    def run(x, *w):
        return functional_call(layer64, dict(zip(names, w)), (x,), {"lengths": [5, 3]})[0]

    assert torch.autograd.gradcheck(run, (x64, *weights), eps=1e-6, atol=1e-8)
    print("gradcheck passed for x and", ", ".join(names))

    # 3. the cost: a new cell runs on the reference loop; against the naive loop over cell.forward
    B, T, I, H = (4, 20, 8, 16) if args.quick else (16, 100, 64, 128)
    repeats = 1 if args.quick else 5
    big = MultiplicativeCell(I, H, factors=H)
    xb = torch.randn(T, B, I)

    def recurrent():
        Recurrent(big)(xb)[0].square().mean().backward()

    def naive():
        state, outs = None, []
        for x_t in xb:
            h, state = big(x_t, state)
            outs.append(h)
        torch.stack(outs).square().mean().backward()

    a, b = median_ms(recurrent, repeats), median_ms(naive, repeats)
    print(f"forward + backward at (B, T, I, H) = {(B, T, I, H)}: Recurrent {a:.1f} ms, naive loop {b:.1f} ms "
          f"({b / a:.2f}x)")


if __name__ == "__main__":
    main()
