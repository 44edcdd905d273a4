"""Every cell on a CUDA device computes what it computes on the CPU; native cells and stacks use
torch's CUDA kernels (cuDNN). Skipped where no CUDA device is present. float64 throughout, so
the comparison is not blurred by TF32."""

import copy

import pytest
import torch

from rnnkit import Recurrent, Stack, from_torch
from rnnkit.cells.registry import CELLS, make_cell
from rnnkit.cells.state import state_tensors
from rnnkit.engine.native import native_kind
from tests.helpers import randomize_

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

TOL = dict(rtol=1e-8, atol=1e-8)


def run(layer, x, lengths):
    """Outputs, final state tensors and the gradients of a fixed projection of them w.r.t. x and every parameter."""
    x = x.detach().clone().requires_grad_()
    y, state = layer(x, lengths=lengths)
    outs = [y, *(t for t in state_tensors(state) if t.is_floating_point())]
    gen = torch.Generator().manual_seed(7)
    loss = sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype).to(o.device)).sum() for o in outs)
    grads = torch.autograd.grad(loss, [x, *layer.parameters()], allow_unused=True)
    return [o.detach().cpu() for o in outs], [None if g is None else g.cpu() for g in grads]


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("name", list(CELLS))
def test_every_cell_on_cuda_equals_the_cpu(name, reverse):
    torch.manual_seed(0)
    cpu_cell = randomize_(make_cell(name, 3, 8).double(), scale=0.3, seed=1)
    cuda_cell = copy.deepcopy(cpu_cell).cuda()
    x = torch.randn(7, 4, 3, dtype=torch.float64)
    lengths = torch.tensor([7, 3, 1, 5])
    cpu_layer = Recurrent(cpu_cell, reverse=reverse, engine="reference")
    cuda_layer = Recurrent(cuda_cell, reverse=reverse)
    out_cpu, grad_cpu = run(cpu_layer, x, lengths)
    out_cuda, grad_cuda = run(cuda_layer, x.cuda(), lengths.cuda())
    assert cuda_layer.last_engine == ("native" if native_kind(cuda_cell) else "reference")
    for a, b in zip(out_cuda, out_cpu):
        torch.testing.assert_close(a, b, **TOL)
    for a, b in zip(grad_cuda, grad_cpu):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("kind", [torch.nn.LSTM, torch.nn.GRU])
def test_native_stack_on_cuda_equals_torch_nn(kind):
    torch.manual_seed(0)
    theirs = randomize_(kind(3, 5, num_layers=2, bidirectional=True).double(), seed=2).cuda()
    ours = from_torch(theirs)
    assert isinstance(ours, Stack)
    x = torch.randn(6, 4, 3, dtype=torch.float64, device="cuda")
    y_theirs = theirs(x)[0]
    y_ours, _ = ours(x)
    assert ours.last_engine == "native"
    torch.testing.assert_close(y_ours, y_theirs, **TOL)


def test_fused_engine_stays_on_the_cpu():
    cell = make_cell("peephole", 3, 4).cuda()
    with pytest.raises(
        ValueError, match="engine='fused' runs on CPU float32/float64 tensors, got torch.float32 on cuda"
    ):
        Recurrent(cell, engine="fused")(torch.randn(5, 2, 3, device="cuda"))
    layer = Recurrent(cell)  # auto: the reference loop, on the GPU
    y, _ = layer(torch.randn(5, 2, 3, device="cuda"))
    assert layer.last_engine == "reference" and y.device.type == "cuda"
