"""ResidualStack takes a PackedSequence as the other stacks do: the same numbers as the padded
batch with lengths, returned packed like the input, states in the caller's batch order."""

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from rnnkit.cells import GRUCell, LSTMCell
from rnnkit.cells.state import state_tensors
from rnnkit.models import ResidualStack
from tests.helpers import TOL, randomize_


@pytest.mark.parametrize("connections", ["residual", "skip"])
@pytest.mark.parametrize("enforce_sorted", [True, False])
def test_packed_input_equals_the_lengths_path(connections, enforce_sorted):
    gen = torch.Generator().manual_seed(3)
    stack = ResidualStack.build(
        lambda i, h: LSTMCell(i, h, peephole=True) if i == 4 else GRUCell(i, h),
        4,
        6,
        num_layers=3,
        connections=connections,
    )
    randomize_(stack.double(), seed=3)
    lengths = torch.tensor([7, 5, 2]) if enforce_sorted else torch.tensor([2, 7, 5])
    x = torch.randn(7, 3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    y, state = stack(x, lengths=lengths)
    packed_x = pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
    py, pstate = stack(packed_x)
    assert isinstance(py, PackedSequence)
    assert torch.equal(py.batch_sizes, packed_x.batch_sizes)
    y_back, back_lengths = pad_packed_sequence(py)
    torch.testing.assert_close(y_back, y[: int(lengths.max())], **TOL[torch.float64])
    assert torch.equal(back_lengths, lengths)
    for a, b in zip(state_tensors(state), state_tensors(pstate), strict=True):
        torch.testing.assert_close(b, a, **TOL[torch.float64])
    (gx,) = torch.autograd.grad(y.sum(), x)
    (gp,) = torch.autograd.grad(py.data.sum(), x)
    torch.testing.assert_close(gp, gx, **TOL[torch.float64])


def test_packed_input_with_lengths_too_is_refused():
    stack = ResidualStack.build(GRUCell, 4, 6, num_layers=2)
    packed = pack_padded_sequence(torch.randn(3, 2, 4), torch.tensor([3, 2]))
    with pytest.raises(ValueError, match="ResidualStack: x is a PackedSequence, which carries its own lengths"):
        stack(packed, lengths=[3, 2])
