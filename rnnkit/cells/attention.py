"""Additive (Bahdanau) attention over an encoder's outputs, as a cell that keeps the memory in its state."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from .base import CellStructure, RecurrentCell, check_size, check_wrappable
from .state import is_state


class AttentionState(NamedTuple):
    """State of an AttentionCell; every field has the batch on dim 0.

    * ``inner`` — the wrapped cell's state (its h is the decoder state s);
    * ``context`` (B, M) — the last attention read c(t) (zeros before the first step);
    * ``memory`` (B, S, M) — the encoder outputs attended over;
    * ``keys`` (B, S, A) — ``U_a m_j + b_a``, computed once per source;
    * ``mask`` (B, S) bool — True on the source's valid positions.
    """

    inner: Any
    context: Tensor
    memory: Tensor
    keys: Tensor
    mask: Tensor


class AttentionCell(RecurrentCell):
    r"""A cell that reads its memory through additive attention before each step (Bahdanau, Cho
    & Bengio 2015, "Neural Machine Translation by Jointly Learning to Align and Translate").

    .. math::
        e_j(t) &= v_a^\top \tanh(W_a s(t-1) + U_a m_j + b_a), \qquad
        \alpha_j(t) = \frac{\exp e_j(t)}{\sum_{k \,\text{valid}} \exp e_k(t)} \\
        c(t) &= \sum_j \alpha_j(t)\, m_j, \qquad
        (s(t), \cdot) = \mathrm{cell}([x(t); c(t)],\ \cdot), \qquad \text{output} = [s(t); c(t)]

    The output carries c(t) beside s(t) so a readout sees both, as Bahdanau's does. The memory
    lives in the state, so ``Recurrent`` runs this cell like any other (teacher forcing is one
    ``Recurrent`` call) and a beam search reorders it with the rest of the state.

    Args:
        cell: the decoder cell; its input_size is I + M (x and the context c).
        memory_size: M, the width of the encoder outputs.
        attention_size: A.

    Parameters: the cell's as ``cell.*``; ``query.weight`` (A, H) = W_a; ``key.weight`` (A, M)
    = U_a, ``key.bias`` (A,) = b_a; ``score.weight`` (1, A) = v_a.

    Shapes: x (B, I); state :class:`AttentionState` (build it with :meth:`initial_state`);
    output [s; c] (B, H + M) — ``hidden_size`` is H + M, the output's width.

    Structure (:attr:`structure`): the wrapped cell's under ``cell.``, plus ``query.weight``
    (W_a reads s(t − 1)) as a recurrent matrix; ``memory_size`` M; the state fields of
    :class:`AttentionState`; the attention's non-linearities make the step's own list unknown
    (None); no torch kernel.
    """

    def __init__(self, cell: RecurrentCell, memory_size: int, attention_size: int) -> None:
        super().__init__()
        owner = type(self).__name__
        if not isinstance(cell, RecurrentCell):
            raise TypeError(f"{owner}: cell must be an rnnkit cell, got {type(cell).__name__}")
        check_wrappable(cell, owner)
        self.memory_size = M = check_size(memory_size, "memory_size", owner)
        self.attention_size = A = check_size(attention_size, "attention_size", owner)
        if cell.input_size <= M:
            raise ValueError(
                f"{owner}: the cell reads [x; c], so its input_size must be I + memory_size = I + {M} with I ≥ 1 (at "
                f"least {M + 1}; I is the width of x); got input_size {cell.input_size}"
            )
        self.cell = cell
        self.input_size = cell.input_size - M
        self.hidden_size = cell.hidden_size + M
        self.projection_size = self.input_size  # the projection happens inside, once c(t) is known
        dtype, device = cell.reference_dtype_device()
        self.query = nn.Linear(cell.hidden_size, A, bias=False, dtype=dtype, device=device)
        self.key = nn.Linear(M, A, dtype=dtype, device=device)
        self.score = nn.Linear(A, 1, bias=False, dtype=dtype, device=device)

    @property
    def structure(self) -> CellStructure:
        """The wrapped cell's structure under ``cell.``, with ``query.weight``, the memory size M and
        :class:`AttentionState`'s fields."""
        inner = self.cell.structure.under("cell")
        return self._wrapper_structure(
            recurrent_matrices=(*inner.recurrent_matrices, "query.weight"),
            state_fields=AttentionState._fields,
            nonlinearities=None,
            memory_size=self.memory_size,
        )

    def initial_state(self, memory: Tensor, mask: Tensor | None = None, inner: Any = None) -> AttentionState:
        """The state before the first step: memory (B, S, M), mask (B, S) bool (None: all valid),
        inner the wrapped cell's state (None: zeros)."""
        owner = type(self).__name__
        if not isinstance(memory, Tensor) or memory.dim() != 3 or memory.shape[-1] != self.memory_size:
            got = tuple(memory.shape) if isinstance(memory, Tensor) else type(memory).__name__
            raise ValueError(f"{owner}: memory must have shape (B, S, M={self.memory_size}), got {got}")
        B, S = memory.shape[:2]
        if mask is None:
            mask = torch.ones(B, S, dtype=torch.bool, device=memory.device)
        elif mask.shape != (B, S) or mask.dtype != torch.bool:
            raise ValueError(
                f"{owner}: mask must be a bool tensor of shape (B, S) = {(B, S)}, got {mask.dtype} {tuple(mask.shape)}"
            )
        inner = self.cell.prepare_state(inner, B, memory.dtype, memory.device)
        context = memory.new_zeros(B, self.memory_size)
        return AttentionState(inner, context, memory, self.key(memory), mask)  # keys (B, S, A)

    def init_state(self, batch_size, *, dtype=None, device=None) -> Any:
        raise ValueError(
            f"{type(self).__name__}: the state must hold the encoder memory; build it with cell.initial_state(memory, "
            "mask)"
        )

    def prepare_state(self, state: Any, batch_size: int, dtype: torch.dtype, device: torch.device) -> AttentionState:
        owner = type(self).__name__
        if state is None:
            self.init_state(batch_size)
        if not (is_state(state) and len(state) == len(AttentionState._fields)):
            raise TypeError(
                f"{owner}: state must be an AttentionState{AttentionState._fields}, got {type(state).__name__}"
            )
        state = AttentionState(*state)
        if state.memory.shape[0] != batch_size:
            raise ValueError(
                f"{owner}: the state's memory has batch {state.memory.shape[0]}, the input has batch {batch_size}"
            )
        return state._replace(inner=self.cell.prepare_state(state.inner, batch_size, dtype, device))

    def attend(self, s: Tensor, state: AttentionState) -> tuple[Tensor, Tensor]:
        """Context c (B, M) and weights α (B, S) for the query s (B, H)."""
        e = self.score(torch.tanh(self.query(s).unsqueeze(1) + state.keys)).squeeze(-1)  # (B, S)
        e = torch.where(state.mask, e, float("-inf"))  # padding gets no weight
        alpha = torch.softmax(e, dim=-1)  # (B, S)
        context = torch.bmm(alpha.unsqueeze(1), state.memory).squeeze(1)  # (B, M)
        return context, alpha

    def input_projection(self, x: Tensor) -> Tensor:
        return x  # the cell's U multiplies [x; c], and c is known only inside the step

    def recurrence(self, x: Tensor, state: AttentionState) -> tuple[Tensor, AttentionState]:
        s_prev = self.cell.output_of(state.inner)
        c, _ = self.attend(s_prev, state)
        s, inner = self.cell.step(torch.cat([x, c], dim=-1), state.inner)  # the cell reads U [x; c] + b
        return torch.cat([s, c], dim=-1), state._replace(inner=inner, context=c)  # (B, H + M)

    def output_of(self, state: AttentionState) -> Tensor:
        return torch.cat([self.cell.output_of(state.inner), state.context], dim=-1)

    def extra_repr(self) -> str:
        return f"memory_size={self.memory_size}, attention_size={self.attention_size}"
