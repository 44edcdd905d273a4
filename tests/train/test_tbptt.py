"""Truncated BPTT over lanes: equal to full BPTT with one chunk, equal to one long pass when the
state is carried, resets at document ends, smaller batches as lanes run out."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rnnkit.cells import LSTMCell
from rnnkit.compose import Stack
from rnnkit.train.tbptt import LaneStream, deal_lanes, split_lanes

V = 7


class LM(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(V, 5, dtype=torch.float64)
        self.rnn = Stack.build(lambda i, h: LSTMCell(i, h).double(), 5, 6, 2)
        self.head = nn.Linear(6, V, dtype=torch.float64)

    def forward(self, tokens, state=None, lengths=None):
        y, state = self.rnn(self.embed(tokens), state, lengths)  # (T, B, H)
        return self.head(y), state


def documents(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, V, (n,), generator=g) for n in sizes]


def masked_nll(logits, targets, lengths):
    mask = torch.arange(targets.shape[0]).unsqueeze(1) < lengths  # (T, B)
    nll = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), reduction="none").view_as(targets)
    return (nll * mask).sum()


def test_one_chunk_holding_everything_gives_full_bptt_gradients():
    docs = documents([9, 13, 6, 11])
    model = LM()
    stream = LaneStream(docs, batch_size=4, chunk_length=20)
    chunks = list(stream)
    assert len(chunks) == 1 and chunks[0].lengths.tolist() == [8, 12, 5, 10]
    c = chunks[0]
    logits, _ = model(c.inputs, None, c.lengths)
    masked_nll(logits, c.targets, c.lengths).backward()
    tbptt = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    for d in docs:  # full BPTT, each document alone
        logits, _ = model(d[:-1].view(-1, 1))
        F.cross_entropy(logits.view(-1, V), d[1:], reduction="sum").backward()
    for a, p in zip(tbptt, model.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-10, atol=1e-12)


def test_carried_state_equals_one_long_pass_per_document():
    sizes = [10, 7, 8, 5, 12]
    docs = documents(sizes, seed=1)
    model = LM().eval()
    stream = LaneStream(docs, batch_size=2, chunk_length=3)
    got = {i: [] for i in range(len(docs))}  # per document: its outputs in order
    lane_doc = {lane: [doc for doc, _, _ in pieces] for lane, pieces in enumerate(stream.lanes)}
    state, previous = None, None
    with torch.no_grad():
        for chunk in stream:
            state = LaneStream.carry(state, previous, chunk)
            logits, state = model(chunk.inputs, state, chunk.lengths)
            for b, lane in enumerate(chunk.lanes.tolist()):
                if chunk.reset[b] and got[lane_doc[lane][0]]:
                    lane_doc[lane].pop(0)  # this lane moved on to its next document
                got[lane_doc[lane][0]].append(logits[: chunk.lengths[b], b])
            previous = chunk
        for i, d in enumerate(docs):
            alone, _ = model(d[:-1].view(-1, 1))
            torch.testing.assert_close(torch.cat(got[i]), alone[:, 0], rtol=1e-10, atol=1e-12)


def test_batches_shrink_as_lanes_run_out_and_resets_mark_new_documents():
    docs = documents([30, 4, 3, 3])  # lane 0 holds one long document, lane 1 three short ones
    stream = LaneStream(docs, batch_size=2, chunk_length=4)
    chunks = list(stream)
    assert [c.lanes.tolist() for c in chunks][:2] == [[0, 1], [0, 1]]
    assert stream.lanes == [[(0, 0, 29)], [(1, 0, 3), (2, 0, 2), (3, 0, 2)]]
    assert chunks[-1].lanes.tolist() == [0]  # lane 1 ran out: the batch is smaller
    assert chunks[0].reset.tolist() == [True, True]
    assert sum(int(c.lengths.sum()) for c in chunks) == stream.steps == sum(n - 1 for n in [30, 4, 3, 3])
    # state sliced to the remaining lane and zeroed where a new document starts
    state = (torch.randn(2, 3), torch.randn(2, 3))
    i = next(i for i, c in enumerate(chunks) if len(c.lanes) == 1)
    prev, nxt = chunks[i - 1], chunks[i]
    carried = LaneStream.carry(state, prev, nxt)
    assert carried[0].shape == (1, 3)
    row = prev.lanes.tolist().index(0)
    expect = state[0][row] * (0.0 if nxt.reset[0] else 1.0)
    torch.testing.assert_close(carried[0][0], expect)


def test_lanes_are_contiguous_and_balanced():
    lanes = deal_lanes([10] * 12, 4)
    assert lanes == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
    assert deal_lanes([5], 3) == [[0]]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(batch_size=0), "batch_size must be an int ≥ 1, got 0"),
        (dict(chunk_length=0), "chunk_length must be an int ≥ 1, got 0"),
        (dict(documents=[torch.tensor([3])]), "no data"),
        (dict(documents=[]), "no data"),
        (dict(documents=[torch.zeros(2, 3, dtype=torch.long)]), "document 0 must be a 1-D int64 tensor"),
    ],
)
def test_bad_settings(kwargs, message):
    args = dict(documents=documents([5, 6]), batch_size=2, chunk_length=3) | kwargs
    with pytest.raises(ValueError, match=message):
        LaneStream(**args)


def test_split_lanes_cut_the_stream_into_equal_lanes():
    sizes = [30, 3, 2, 2]  # 37 steps into 4 lanes: 9, 9, 9, 10
    lanes = split_lanes(sizes, 4)
    assert lanes == [[(0, 0, 9)], [(0, 9, 18)], [(0, 18, 27)], [(0, 27, 30), (1, 0, 3), (2, 0, 2), (3, 0, 2)]]
    assert split_lanes([2, 0, 3], 2) == [[(0, 0, 2)], [(2, 0, 3)]]  # an empty document is skipped
    assert split_lanes([3], 5) == [[(0, 0, 1)], [(0, 1, 2)], [(0, 2, 3)]]  # fewer steps than lanes: no empty lanes
    for sizes, B in [([7, 1, 40, 5, 5, 13], 3), ([100], 7), ([1] * 9, 4)]:
        lanes = split_lanes(sizes, B)
        lengths = [sum(stop - start for _, start, stop in lane) for lane in lanes]
        assert sum(lengths) == sum(sizes) and max(lengths) - min(lengths) <= 1
        flat = [piece for lane in lanes for piece in lane]  # in order, each step exactly once
        for (d0, _, e0), (d1, s1, _) in zip(flat, flat[1:]):
            assert (d1, s1) == (d0, e0) or (s1 == 0 and e0 == sizes[d0])


def test_split_documents_keep_every_lane_in_every_chunk_and_read_each_piece_in_order():
    docs = documents([60, 4, 3, 3])
    stream = LaneStream(docs, batch_size=4, chunk_length=5, split_documents=True)
    chunks = list(stream)
    # lanes of 16, 17, 16 and 17 steps: all four in every chunk but the last, which only lane 3
    # needs, as a chunk does not cross a document's end (its 4 pieces cost it short chunks)
    assert [c.lanes.tolist() for c in chunks] == [[0, 1, 2, 3]] * 4 + [[3]]
    assert sum(int(c.lengths.sum()) for c in chunks) == stream.steps == 59 + 3 + 2 + 2
    # every (input, target) pair of every document comes exactly once
    seen = sorted(
        (int(c.inputs[t, b]), int(c.targets[t, b]))
        for c in chunks
        for b in range(len(c.lanes))
        for t in range(int(c.lengths[b]))
    )
    want = sorted((int(d[t]), int(d[t + 1])) for d in docs for t in range(d.numel() - 1))
    assert seen == want
    # a lane that starts inside document 0 starts from zeros; lane 3 resets where document 1 begins
    assert chunks[0].reset.tolist() == [True] * 4
    model = LM().eval()
    state, previous, outputs = None, None, {b: [] for b in range(4)}
    with torch.no_grad():
        for c in chunks:
            state = LaneStream.carry(state, previous, c)
            logits, state = model(c.inputs, state, c.lengths)
            for b, lane in enumerate(c.lanes.tolist()):
                outputs[lane].append(logits[: c.lengths[b], b])
            previous = c
        piece = stream.lanes[1][0]  # lane 1: the middle of document 0, read from zeros, state carried throughout
        alone, _ = model(docs[0][piece[1] : piece[2]].view(-1, 1))
        torch.testing.assert_close(torch.cat(outputs[1]), alone[:, 0], rtol=1e-10, atol=1e-12)
