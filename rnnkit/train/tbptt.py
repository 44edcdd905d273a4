r"""Truncated back-propagation through time over long streams (Williams & Peng 1990; char-rnn).

The documents are dealt into B parallel *lanes*; each lane is read in chunks of k steps. Between
chunks the state is carried forward and detached, so the gradient reaches back at most k steps
while the forward pass sees the whole history. Where a lane's document ends inside a chunk, that
lane's chunk is shorter (``lengths``) and the next chunk starts the next document from a zero
state (``reset``). Two ways to deal: for training, the stream of documents is cut into B lanes of
equal length as char-rnn does (a document straddling a cut is split, its second part starting from
zeros), so the lanes run to about the same end (a document ending mid-chunk costs its lane one
short chunk); for evaluation, whole documents per lane (contiguous
runs, about equal in tokens): when a lane runs out of documents it leaves the batch, later chunks
are smaller and the carried state is sliced to the lanes still running. (With whole documents on a
corpus of very unequal files, e.g. the stdlib, the last part of a pass trains on a handful of
lanes; splitting avoids that.)

Within a document the pairs are (input, target) = (d[t], d[t + 1]), so a document of n tokens
gives n − 1 steps.

In a run of N processes each reads a block of B/N lanes (:meth:`LaneStream.shard`): lanes
r·B/N … (r+1)·B/N − 1 belong to process r for the whole run, so its carried state never has to
move; a chunk of the shard holds the rows of its lanes in the global chunk, and is None where
every one of its lanes has run out while others go on.

Symbols: k chunk length (T of a chunk), B lanes, N documents.
"""

from __future__ import annotations

import copy
import mmap
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..cells.state import detach_state, map_state
from .distributed import check_divisible
from .positions import PassPosition

_DONTNEED = getattr(mmap, "MADV_DONTNEED", None)


class Chunk(NamedTuple):
    """One truncated-BPTT step's data.

    inputs, targets (k, B) int64, time-major, zero-padded past each lane's length;
    lengths (B,) valid steps of each lane (≥ 1); reset (B,) True where the lane starts a new
    document (its carried state must be zeroed); lanes (B,) which lanes these rows are.
    """

    inputs: Tensor
    targets: Tensor
    lengths: Tensor
    reset: Tensor
    lanes: Tensor


def deal_lanes(sizes: Sequence[int], batch_size: int) -> list[list[int]]:
    """Split documents 0..N−1 (of ``sizes`` steps) into ≤ B contiguous runs of about equal steps.

    With N ≤ B every document gets its own lane; otherwise a document goes to the lane its
    midpoint falls in when the whole stream is cut into B equal parts.
    """
    if len(sizes) <= batch_size:
        return [[i] for i in range(len(sizes))]
    total = sum(sizes)
    lanes: dict[int, list[int]] = {}
    before = 0
    for i, n in enumerate(sizes):
        lane = min(batch_size - 1, int(batch_size * (before + n / 2) / total))
        lanes.setdefault(lane, []).append(i)
        before += n
    return [lanes[k] for k in sorted(lanes)]


def split_lanes(sizes: Sequence[int], batch_size: int) -> list[list[tuple[int, int, int]]]:
    """Cut the concatenated documents (of ``sizes`` steps) into B lanes of equal steps (±1), as
    char-rnn cuts its one long stream: a lane is a list of pieces ``(doc, start, stop)`` (steps
    ``start…stop−1`` of document ``doc``); a document that straddles a cut is split between two
    lanes. Empty lanes (fewer steps than B) are left out.
    """
    total = sum(sizes)
    bounds = [total * b // batch_size for b in range(batch_size + 1)]
    lanes, doc, before = [], 0, 0  # ``before``: steps of the documents ahead of ``doc``
    for lo, hi in zip(bounds, bounds[1:]):
        pieces = []
        while lo < hi:
            while before + sizes[doc] <= lo:  # skip documents wholly before this lane (or empty)
                before += sizes[doc]
                doc += 1
            stop = min(hi, before + sizes[doc])
            pieces.append((doc, lo - before, stop - before))
            lo = stop
        if pieces:
            lanes.append(pieces)
    return lanes


class LaneStream(PassPosition):
    """Chunks of k steps over B lanes of documents, for truncated BPTT.

    Args:
        documents: 1-D integer tensors or numpy arrays (token ids) — e.g. views of a memory-mapped
            token file (:mod:`rnnkit.data.tokens`), read only a chunk at a time, so the stream
            holds no copy of the corpus; documents shorter than 2 tokens are skipped.
        batch_size: B, the number of lanes.
        chunk_length: k, steps per chunk.
        split_documents: cut the stream into B lanes of equal length (:func:`split_lanes`), a
            document straddling a cut split between two lanes (its second part starts from a
            zero state), so the lanes end together up to a few short chunks where documents end —
            char-rnn's batching, what training wants. False: whole documents per lane
            (:func:`deal_lanes`), each read from its start with its state carried throughout, so
            the lanes end at different times and the last chunks hold fewer lanes — exact
            per-document results, what evaluation wants.
        num_replicas, rank: read only the lanes of process ``rank`` of N = ``num_replicas``
            (see :meth:`shard`); ``batch_size`` stays the global B and must be a multiple of N.

    Iterating gives :class:`Chunk` s in order; :meth:`carry` turns the state after one chunk
    into the initial state of the next. Every pass is the same; ``state_dict()`` says how many
    chunks of the pass were yielded (:class:`~rnnkit.train.positions.PassPosition`), and a stream
    given it back starts its next pass there, in time that does not grow with the position
    (each lane's place at chunk i is found from its pieces' chunk counts, not by stepping).
    """

    def __init__(
        self,
        documents: Sequence[Tensor],
        batch_size: int,
        chunk_length: int,
        *,
        split_documents: bool = False,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        for name, v in (("batch_size", batch_size), ("chunk_length", chunk_length)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"LaneStream: {name} must be an int ≥ 1, got {v!r}")
        check_divisible(batch_size, num_replicas, rank, "LaneStream")
        docs = []
        for i, d in enumerate(documents):
            integer = (
                isinstance(d, Tensor)
                and not d.is_floating_point()
                and not d.is_complex()
                and d.dtype != torch.bool
                or isinstance(d, np.ndarray)
                and np.issubdtype(d.dtype, np.integer)
            )
            if not integer or d.ndim != 1:
                got = f"{tuple(d.shape)} {d.dtype}" if isinstance(d, (Tensor, np.ndarray)) else type(d).__name__
                raise ValueError(
                    f"LaneStream: document {i} must be a 1-D int64 tensor (or integer tensor or numpy array), got {got}"
                )
            if len(d) >= 2:
                docs.append(d.cpu().numpy() if isinstance(d, Tensor) else d)  # a view: no copy
        if not docs:
            raise ValueError("LaneStream: no data — every document is shorter than 2 tokens (one input and its target)")
        self.documents = docs
        # the memory maps the documents are views of (a token file, rnnkit.data.tokens): their
        # pages are dropped from this process after every chunk (see _chunk)
        maps = {id(m): m for m in (getattr(d, "_mmap", None) for d in docs) if m is not None}
        self._maps = list(maps.values()) if _DONTNEED is not None else []
        self.batch_size = batch_size
        self.chunk_length = chunk_length
        sizes = [len(d) - 1 for d in docs]
        self.split_documents = split_documents
        # per lane, its pieces (doc, start, stop) in steps of the documents
        self.lanes = (
            split_lanes(sizes, batch_size)
            if split_documents
            else [[(i, 0, sizes[i]) for i in lane] for lane in deal_lanes(sizes, batch_size)]
        )
        # per lane, the chunk at which each of its pieces starts (and, last, its number of chunks)
        self._starts = [
            np.cumsum([0] + [-(-(stop - start) // chunk_length) for _, start, stop in pieces]) for pieces in self.lanes
        ]
        self.num_replicas, self.rank = num_replicas, rank

    def shard(self, num_replicas: int, rank: int) -> LaneStream:
        """The same stream, of which this copy yields only process ``rank``'s lanes.

        Lanes are dealt over the global B as for one process; process r owns lanes
        r·B/N … (r+1)·B/N − 1. Each chunk holds the rows of its own lanes that the global chunk
        holds (``lanes`` keeps the global lane numbers), or is None when none of them is left in
        this chunk, so every process counts the same chunks per pass.
        """
        check_divisible(self.batch_size, num_replicas, rank, "LaneStream.shard")
        part = copy.copy(self)
        part.num_replicas, part.rank = num_replicas, rank
        return part

    def _owns(self, lane: int) -> bool:
        per = self.batch_size // self.num_replicas
        return self.rank * per <= lane < (self.rank + 1) * per

    @property
    def steps(self) -> int:
        """Total (input, target) pairs, Σ (n_d − 1)."""
        return sum(len(d) - 1 for d in self.documents)

    def __len__(self) -> int:
        """Chunks per pass over the data: the longest lane's."""
        return int(max(starts[-1] for starts in self._starts))

    def _schedule(self, first: int = 0) -> Iterator[list[tuple[int, int, int, int, bool]]]:
        """Per chunk from chunk ``first`` on, for each active lane: (lane, doc, start, stop, reset)."""
        k = self.chunk_length
        pos, reset = [], []  # per lane: [index into its pieces, offset in that document]; whether it starts one
        for pieces, starts in zip(self.lanes, self._starts):
            j = int(np.searchsorted(starts, first, side="right")) - 1  # the piece chunk ``first`` falls in
            if j >= len(pieces):
                pos.append([len(pieces), 0])
            else:
                pos.append([j, pieces[j][1] + (first - int(starts[j])) * k])
            reset.append(j >= len(pieces) or first == int(starts[j]))
        while True:
            rows = []
            for lane, pieces in enumerate(self.lanes):
                j, off = pos[lane]
                if j >= len(pieces):
                    continue
                doc, _, end = pieces[j]
                stop = min(off + k, end)
                rows.append((lane, doc, off, stop, reset[lane]))
                reset[lane] = stop == end  # the next piece is another document: start it from zeros
                pos[lane] = [j + 1, pieces[j + 1][1] if j + 1 < len(pieces) else 0] if stop == end else [j, stop]
            if not rows:
                return
            yield rows

    def __iter__(self) -> Iterator[Chunk | None]:
        first = self._first()
        for i, rows in enumerate(self._schedule(first), start=first):
            if self.num_replicas > 1:
                rows = [r for r in rows if self._owns(r[0])]
                if not rows:
                    self._yielded(i)
                    yield None  # this process's lanes are done for this pass; others' are not
                    continue
            chunk = self._chunk(rows)
            self._yielded(i)
            yield chunk

    def _chunk(self, rows: list[tuple[int, int, int, int, bool]]) -> Chunk:
        """The chunk of ``rows`` (lane, doc, start, stop, reset), read from the documents."""
        k, B = self.chunk_length, len(rows)
        inputs = np.zeros((k, B), dtype=np.int64)  # (k, B)
        targets = np.zeros((k, B), dtype=np.int64)
        for b, (_, doc, start, stop, _) in enumerate(rows):
            d = self.documents[doc]
            inputs[: stop - start, b] = d[start:stop]
            targets[: stop - start, b] = d[start + 1 : stop + 1]
        for m in self._maps:  # a mapped page read stays in the process's resident memory until
            m.madvise(_DONTNEED)  # unmapped: over a pass, the whole file would; the page cache keeps it
        lengths = torch.tensor([stop - start for _, _, start, stop, _ in rows])
        width = int(lengths.max())
        return Chunk(
            torch.from_numpy(inputs[:width]),  # (k', B): no all-padding steps at the end
            torch.from_numpy(targets[:width]),
            lengths,
            torch.tensor([r[4] for r in rows]),
            torch.tensor([r[0] for r in rows]),
        )

    @staticmethod
    def carry(state: Any, previous: Chunk | None, chunk: Chunk) -> Any:
        """The state to start ``chunk`` from, given the state after ``previous``.

        Detached (the truncation), sliced to the lanes still running, zeroed where a lane starts
        a new document. None (zeros) for the first chunk.
        """
        if state is None or previous is None or bool(chunk.reset.all()):
            return None  # a fresh start (a new pass over the data begins with every lane reset)
        state = detach_state(state)
        if previous.lanes.shape != chunk.lanes.shape or not torch.equal(previous.lanes, chunk.lanes):
            rows = torch.searchsorted(previous.lanes, chunk.lanes)  # lanes are kept in order
            state = map_state(lambda t: t.index_select(0, rows.to(t.device)), state)
        if bool(chunk.reset.any()):
            keep = (~chunk.reset).view(-1, 1)
            state = map_state(lambda t: t * keep.view(-1, *([1] * (t.dim() - 1))).to(t.device, t.dtype), state)
        return state


def merge_carried(states: Sequence[dict]) -> dict:
    """The carried state of a whole run from the states of its processes, in lane order.

    Each of ``states`` is ``{"state": per layer a (nested) list of (B_r, …) tensors, "lanes":
    (B_r,) int64}`` or ``{"state": None, …}`` — a process carrying nothing yet. With the lanes of
    :meth:`LaneStream.shard` (one block per process), the rows of all of them together are what
    one process reading every lane carries; :meth:`LaneStream.carry` then slices from it the
    rows of whichever lanes come next, in one process or in N.
    """
    parts = [s for s in states if s["state"] is not None]
    if not parts:
        return {"state": None, "lanes": None}
    lanes = torch.cat([s["lanes"] for s in parts])
    if lanes.unique().numel() != lanes.numel():
        raise ValueError(f"merge_carried: each lane must be carried by one process, got lanes {lanes.tolist()}")
    order = torch.argsort(lanes)

    def merge(pieces: list) -> Any:  # the same nesting in every piece; tensors stacked along the lanes
        if isinstance(pieces[0], Tensor):
            return torch.cat(pieces).index_select(0, order.to(pieces[0].device))
        return [merge([p[i] for p in pieces]) for i in range(len(pieces[0]))]

    return {"state": merge([s["state"] for s in parts]), "lanes": lanes[order]}
