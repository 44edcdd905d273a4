r"""Back-propagation through time, written out: forward pass and exact gradients by hand.

This module computes the loss of the textbook recurrent network and *every* gradient of it
without autograd — plain tensor operations under ``torch.no_grad()``, one time step at a time,
in the order Goodfellow, Bengio & Courville derive them (*Deep Learning*, §10.2.2). It is the
readable reference that a fused engine must agree with, and a teaching artifact: each function
below states its equations, and its code uses the same symbols.

The network, for :math:`t = 1, \dots, \tau`:

.. math::
    h(t) &= \mathrm{cell}(x(t), h(t-1)) \\
    o(t) &= c + V h(t) \\
    \hat y(t) &= \mathrm{softmax}(o(t)) \\
    L &= \sum_t -\log \hat y(t)_{y(t)}

with one of three cells: :func:`elman` (tanh, or ReLU), :func:`lstm` (with forget gate) and
:func:`gru`. Every cell shares the output layer and therefore the first step of the backward
pass,

.. math::
    \nabla o(t) = \hat y(t) - \mathbf 1_{y(t)}, \qquad
    \nabla c = \sum_t \nabla o(t), \qquad
    \nabla V = \sum_t \nabla o(t)\, h(t)^\top,

and :math:`V^\top \nabla o(t)` is the part of :math:`\nabla h(t)` that comes from the output at
step t; the rest comes from step t + 1, through the cell. Notation: :math:`\nabla z` is
:math:`\partial L / \partial z`, :math:`\odot` the elementwise product, :math:`\sigma` the
logistic sigmoid, :math:`\mathbf 1_{y}` the one-hot vector of class y.

Symbols
-------
=====  ====================================================================================
T      number of time steps, the τ of the equations; steps are t = 1, …, τ
B      batch size: B independent sequences, one per row
I      input size: x(t) has I entries
H      hidden size: h(t) (and the LSTM memory s(t)) has H entries
O      output size, the number of classes: o(t), ŷ(t) have O entries
=====  ====================================================================================

Conventions in the code
-----------------------
* **Batches as rows.** The equations are written for one column vector per step; the code
  keeps the B vectors of a step as the rows of a (B, ·) matrix. So :math:`W h(t-1)` is
  ``h[t-1] @ W.T``, :math:`W^\top g` is ``g @ W``, and an outer-product sum such as
  :math:`\sum_t g(t)\, h(t-1)^\top` is accumulated as ``g.T @ h[t-1]``, which sums over the
  batch rows as well. Loss and parameter gradients are sums over time *and* batch.
* **Time indexed as in the equations.** Per-step quantities are Python lists indexed by t, so
  ``x[t]`` is x(t), ``h[t-1]`` is h(t − 1) and ``h[0]`` is the initial state h(0); entry 0 of a
  list that has no step-0 value is ``None``. Results are stacked time-major, (T, B, ·), holding
  steps 1 … τ.
* **Parameters** are rnnkit's and torch.nn's: ``weight_ih`` (G·H, I), ``weight_hh`` (G·H, H),
  ``bias_ih`` and ``bias_hh`` (G·H,), with G = 1 (Elman), 4 (LSTM, gate blocks i, f, g, o) or 3
  (GRU, gate blocks r, z, n). ``cell`` is any object with these four attributes: an rnnkit cell
  or a ``torch.nn.RNNCell`` / ``LSTMCell`` / ``GRUCell``. A cell made with ``bias=False`` (both
  biases ``None``) is handled as zero biases, and its result has no bias gradients.
* **Output layer:** ``V`` (O, H) and ``c`` (O,) as tensors, or ``V`` a module with ``.weight``
  and ``.bias`` (an ``nn.Linear(H, O)``) and ``c=None``.

Wrong arguments raise ``ValueError`` (rank, size, target out of range) or ``TypeError`` (not a
tensor, wrong dtype), naming the argument, what was expected and what came.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

__all__ = ["BPTTResult", "elman", "lstm", "gru"]


class BPTTResult(NamedTuple):
    r"""What :func:`elman`, :func:`lstm` and :func:`gru` return.

    Attributes:
        loss: :math:`L = \sum_t -\log \hat y(t)_{y(t)}`, summed over time and batch; a scalar.
        h: hidden states h(1) … h(τ), (T, B, H).
        y_hat: output probabilities ŷ(1) … ŷ(τ), (T, B, O).
        grads: gradients of L, each of its argument's shape:

            * ``"weight_ih"``, ``"weight_hh"``, ``"bias_ih"``, ``"bias_hh"`` — the cell's
              parameters (no bias entries for a cell without biases);
            * ``"V"`` (O, H), ``"c"`` (O,) — the output layer;
            * ``"x"`` (T, B, I) — the inputs, ∇x(t) for every step;
            * ``"h0"`` (B, H) — the initial hidden state; for the LSTM also ``"c0"`` (B, H),
              the initial memory s(0) (torch's name for it).
        grad_o: ∇o(t) = ŷ(t) − 1_{y(t)} for t = 1 … τ, (T, B, O).
        grad_h: ∇h(t) for t = 1 … τ, (T, B, H): the total gradient of L with respect to h(t),
            through the output at step t and through every later step.
        s: LSTM only: the memory cells s(1) … s(τ) (torch's c), (T, B, H); ``None`` otherwise.
        grad_s: LSTM only: ∇s(t) for t = 1 … τ, (T, B, H); ``None`` otherwise.
    """

    loss: Tensor
    h: Tensor
    y_hat: Tensor
    grads: dict[str, Tensor]
    grad_o: Tensor
    grad_h: Tensor
    s: Tensor | None = None
    grad_s: Tensor | None = None


# ---------------------------------------------------------------------------------------------
# Elman
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def elman(cell: Any, V: Any, c: Tensor | None, x: Tensor, y: Tensor, h0: Tensor | None = None) -> BPTTResult:
    r"""Loss and exact gradients of the Elman network, by the textbook's BPTT (Goodfellow §10.2.2).

    Forward, for t = 1 … τ (:math:`\phi = \tanh`, or ReLU when ``cell.nonlinearity == "relu"``):

    .. math::
        a(t) &= b + W h(t-1) + U x(t), \qquad h(t) = \phi(a(t)) \\
        o(t) &= c + V h(t), \qquad \hat y(t) = \mathrm{softmax}(o(t)), \qquad
        L = \sum_t -\log \hat y(t)_{y(t)}

    with ``U = cell.weight_ih`` (H, I), ``W = cell.weight_hh`` (H, H) and
    ``b = cell.bias_ih + cell.bias_hh`` (H,).

    Backward (eq. 10.18–10.28). For tanh, :math:`\phi'(a(t)) = 1 - h(t)^2`; for ReLU it is
    :math:`\mathbb 1[a(t) > 0]`. Write :math:`\nabla a(t) = \mathrm{diag}(\phi'(a(t)))\, \nabla h(t)`:

    .. math::
        \nabla o(t) &= \hat y(t) - \mathbf 1_{y(t)} \\
        \nabla h(\tau) &= V^\top \nabla o(\tau) \\
        \nabla h(t) &= W^\top \mathrm{diag}(1 - h(t+1)^2)\, \nabla h(t+1) + V^\top \nabla o(t)
            = W^\top \nabla a(t+1) + V^\top \nabla o(t) \\
        \nabla c &= \sum_t \nabla o(t), \qquad \nabla V = \sum_t \nabla o(t)\, h(t)^\top \\
        \nabla b &= \sum_t \mathrm{diag}(1 - h(t)^2)\, \nabla h(t) = \sum_t \nabla a(t) \\
        \nabla W &= \sum_t \mathrm{diag}(1 - h(t)^2)\, \nabla h(t)\, h(t-1)^\top
            = \sum_t \nabla a(t)\, h(t-1)^\top \\
        \nabla U &= \sum_t \mathrm{diag}(1 - h(t)^2)\, \nabla h(t)\, x(t)^\top
            = \sum_t \nabla a(t)\, x(t)^\top

    and, beyond the book, the gradients of the initial state and of the inputs:

    .. math::
        \nabla h(0) = W^\top \nabla a(1), \qquad \nabla x(t) = U^\top \nabla a(t).

    b is the sum of torch's two biases, so :math:`\nabla b_{ih} = \nabla b_{hh} = \nabla b`.

    Args:
        cell: an Elman cell: ``weight_ih`` (H, I), ``weight_hh`` (H, H), ``bias_ih`` and
            ``bias_hh`` (H,) or both ``None``; ``nonlinearity`` ``"tanh"`` (the default when
            the attribute is absent) or ``"relu"``.
        V: the output weight (O, H), or an output module (``nn.Linear(H, O)``) with ``c=None``.
        c: the output bias (O,), or ``None`` when ``V`` is a module.
        x: inputs (T, B, I), time-major.
        y: target classes (T, B), integers in [0, O).
        h0: the initial hidden state (B, H); ``None`` for zeros.

    Returns:
        A :class:`BPTTResult`; ``grads`` holds ``weight_ih``, ``weight_hh``, ``bias_ih``,
        ``bias_hh``, ``V``, ``c``, ``x`` and ``h0``.
    """
    fn = "bptt.elman"
    U, W, b_ih, b_hh = _cell_parameters(fn, cell, gates=1, gate_names="")
    phi_name = getattr(cell, "nonlinearity", "tanh")
    if phi_name not in ("tanh", "relu"):
        raise ValueError(f"{fn}: cell.nonlinearity must be 'tanh' or 'relu', got {phi_name!r}")
    phi = torch.tanh if phi_name == "tanh" else torch.relu
    H, I = U.shape
    V, c = _output_parameters(fn, V, c, H, W)
    y = _check_sequence(fn, x, y, I, V.shape[0], W)
    T, B = y.shape
    h0 = _check_state(fn, "h0", h0, B, H, W)
    b = _bias_sum(b_ih, b_hh, H, W)  # (H,)

    def dphi(h_t: Tensor) -> Tensor:
        """φ'(a(t)) from h(t) = φ(a(t)): 1 − h(t)² for tanh, 1[a(t) > 0] = 1[h(t) > 0] for ReLU."""
        return 1 - h_t**2 if phi_name == "tanh" else (h_t > 0).to(h_t.dtype)

    x, y = _one_based(x), _one_based(y)  # x[t] = x(t) (B, I), y[t] = y(t) (B,), t = 1 … τ

    # Forward.
    h: list = [h0] + [None] * T  # h[t] = h(t), (B, H)
    y_hat: list = [None] * (T + 1)  # y_hat[t] = ŷ(t), (B, O)
    loss = W.new_zeros(())
    for t in range(1, T + 1):
        a = b + h[t - 1] @ W.T + x[t] @ U.T  # a(t) = b + W h(t−1) + U x(t)   (B, H)
        h[t] = phi(a)
        y_hat[t], nll = _softmax_nll(c + h[t] @ V.T, y[t])  # o(t) = c + V h(t)
        loss += nll

    # Backward.
    grad_o: list = [None] * (T + 1)  # ∇o(t), (B, O)
    grad_h: list = [None] * (T + 1)  # ∇h(t), (B, H); grad_h[0] = ∇h(0)
    grad_a: list = [None] * (T + 1)  # ∇a(t) = diag(φ'(a(t))) ∇h(t), (B, H)
    grad_x: list = [None] * (T + 1)  # ∇x(t), (B, I)
    grad_V, grad_c = torch.zeros_like(V), torch.zeros_like(c)
    grad_W, grad_U, grad_b = torch.zeros_like(W), torch.zeros_like(U), torch.zeros_like(b)
    for t in range(T, 0, -1):
        grad_o[t] = y_hat[t] - _one_hot(y[t], y_hat[t])  # ∇o(t) = ŷ(t) − 1_{y(t)}
        grad_c += grad_o[t].sum(0)  # ∇c = Σ_t ∇o(t)
        grad_V += grad_o[t].T @ h[t]  # ∇V = Σ_t ∇o(t) h(t)ᵀ
        if t == T:
            grad_h[t] = grad_o[t] @ V  # ∇h(τ) = Vᵀ ∇o(τ)
        else:
            grad_h[t] = grad_a[t + 1] @ W + grad_o[t] @ V  # ∇h(t) = Wᵀ diag(1 − h(t+1)²) ∇h(t+1) + Vᵀ ∇o(t)
        grad_a[t] = dphi(h[t]) * grad_h[t]  # diag(1 − h(t)²) ∇h(t)
        grad_b += grad_a[t].sum(0)  # ∇b = Σ_t diag(1 − h(t)²) ∇h(t)
        grad_W += grad_a[t].T @ h[t - 1]  # ∇W = Σ_t diag(1 − h(t)²) ∇h(t) h(t−1)ᵀ
        grad_U += grad_a[t].T @ x[t]  # ∇U = Σ_t diag(1 − h(t)²) ∇h(t) x(t)ᵀ
        grad_x[t] = grad_a[t] @ U  # ∇x(t) = Uᵀ ∇a(t)
    grad_h[0] = grad_a[1] @ W  # ∇h(0) = Wᵀ ∇a(1)

    grads = {"weight_ih": grad_U, "weight_hh": grad_W}
    if b_ih is not None:
        grads.update(bias_ih=grad_b, bias_hh=grad_b.clone())
    grads.update(V=grad_V, c=grad_c, x=_stack(grad_x), h0=grad_h[0])
    return BPTTResult(loss, _stack(h), _stack(y_hat), grads, _stack(grad_o), _stack(grad_h))


# ---------------------------------------------------------------------------------------------
# LSTM
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def lstm(cell: Any, V: Any, c: Tensor | None, x: Tensor, y: Tensor, state0: Any = None) -> BPTTResult:
    r"""Loss and exact gradients of the LSTM network (forget gate; torch.nn.LSTMCell's equations).

    The memory cell is written s(t), as in Goodfellow §10.10.1, and the output gate q(t), so that
    c and o keep their meaning in the output layer; torch calls them c and o. Forward:

    .. math::
        a(t) &= W_{ih}\, x(t) + b_{ih} + W_{hh}\, h(t-1) + b_{hh}
            = [a_i(t); a_f(t); a_g(t); a_q(t)] \in \mathbb R^{4H} \\
        i(t) &= \sigma(a_i(t)), \quad f(t) = \sigma(a_f(t)), \quad
        g(t) = \tanh(a_g(t)), \quad q(t) = \sigma(a_q(t)) \\
        s(t) &= f(t) \odot s(t-1) + i(t) \odot g(t) \\
        h(t) &= q(t) \odot \tanh(s(t)) \\
        o(t) &= c + V h(t), \qquad \hat y(t) = \mathrm{softmax}(o(t)), \qquad
        L = \sum_t -\log \hat y(t)_{y(t)}

    Backward, for t = τ … 1; a term with t + 1 is absent at t = τ:

    .. math::
        \nabla o(t) &= \hat y(t) - \mathbf 1_{y(t)} \\
        \nabla h(t) &= W_{hh}^\top \nabla a(t+1) + V^\top \nabla o(t) \\
        \nabla s(t) &= \nabla h(t) \odot q(t) \odot (1 - \tanh^2 s(t)) + f(t+1) \odot \nabla s(t+1) \\
        \nabla a_i(t) &= \nabla s(t) \odot g(t) \odot i(t) \odot (1 - i(t)) \\
        \nabla a_f(t) &= \nabla s(t) \odot s(t-1) \odot f(t) \odot (1 - f(t)) \\
        \nabla a_g(t) &= \nabla s(t) \odot i(t) \odot (1 - g(t)^2) \\
        \nabla a_q(t) &= \nabla h(t) \odot \tanh s(t) \odot q(t) \odot (1 - q(t))

    and the sums over time

    .. math::
        \nabla W_{ih} = \sum_t \nabla a(t)\, x(t)^\top, \quad
        \nabla W_{hh} = \sum_t \nabla a(t)\, h(t-1)^\top, \quad
        \nabla b_{ih} = \nabla b_{hh} = \sum_t \nabla a(t), \\
        \nabla c = \sum_t \nabla o(t), \quad \nabla V = \sum_t \nabla o(t)\, h(t)^\top, \quad
        \nabla x(t) = W_{ih}^\top \nabla a(t), \quad
        \nabla h(0) = W_{hh}^\top \nabla a(1), \quad \nabla s(0) = f(1) \odot \nabla s(1).

    Args:
        cell: an LSTM cell: ``weight_ih`` (4H, I), ``weight_hh`` (4H, H), ``bias_ih`` and
            ``bias_hh`` (4H,) or both ``None``, gate blocks in the order i, f, g, o. rnnkit's
            variants (``peephole``, ``forget_gate=False``, ``block_size`` > 1, ``cell_clip``)
            are refused.
        V: the output weight (O, H), or an output module (``nn.Linear(H, O)``) with ``c=None``.
        c: the output bias (O,), or ``None`` when ``V`` is a module.
        x: inputs (T, B, I), time-major.
        y: target classes (T, B), integers in [0, O).
        state0: the initial state ``(h0, c0)``, torch's order, each (B, H) (c0 is s(0)); an
            rnnkit ``LSTMState`` will do. ``None`` for zeros.

    Returns:
        A :class:`BPTTResult` with ``s`` and ``grad_s`` filled in; ``grads`` holds
        ``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh``, ``V``, ``c``, ``x``, ``h0`` and
        ``c0`` (= ∇s(0)).
    """
    fn = "bptt.lstm"
    for flag, plain in (("peephole", False), ("forget_gate", True), ("block_size", 1), ("cell_clip", None)):
        if hasattr(cell, flag) and getattr(cell, flag) != plain:
            raise ValueError(
                f"{fn}: only the plain LSTM with forget gate is written out here; "
                f"got a cell with {flag}={getattr(cell, flag)!r} (expected {plain!r})"
            )
    W_ih, W_hh, b_ih, b_hh = _cell_parameters(fn, cell, gates=4, gate_names="i, f, g, o")
    H, I = W_hh.shape[1], W_ih.shape[1]
    V, c = _output_parameters(fn, V, c, H, W_hh)
    y = _check_sequence(fn, x, y, I, V.shape[0], W_hh)
    T, B = y.shape
    if state0 is None:
        h0 = s0 = None
    elif isinstance(state0, (tuple, list)) and len(state0) == 2:
        h0, s0 = state0
    else:
        got = type(state0).__name__
        if isinstance(state0, (tuple, list)):
            got += f" of length {len(state0)}"
        raise TypeError(f"{fn}: state0 must be a pair (h0, c0) of (B, H) tensors or None, got {got}")
    h0 = _check_state(fn, "state0[0] (h0)", h0, B, H, W_hh)
    s0 = _check_state(fn, "state0[1] (c0)", s0, B, H, W_hh)
    b = _bias_sum(b_ih, b_hh, 4 * H, W_hh)  # (4H,)

    x, y = _one_based(x), _one_based(y)  # x[t] = x(t) (B, I), y[t] = y(t) (B,), t = 1 … τ

    # Forward.
    h: list = [h0] + [None] * T  # h[t] = h(t), (B, H)
    s: list = [s0] + [None] * T  # s[t] = s(t), (B, H)
    i, f, g, q = ([None] * (T + 1) for _ in range(4))  # the gates at step t, (B, H)
    y_hat: list = [None] * (T + 1)  # y_hat[t] = ŷ(t), (B, O)
    loss = W_hh.new_zeros(())
    for t in range(1, T + 1):
        a = x[t] @ W_ih.T + h[t - 1] @ W_hh.T + b  # a(t)   (B, 4H)
        a_i, a_f, a_g, a_q = a.chunk(4, dim=1)  # each (B, H)
        i[t], f[t], g[t], q[t] = torch.sigmoid(a_i), torch.sigmoid(a_f), torch.tanh(a_g), torch.sigmoid(a_q)
        s[t] = f[t] * s[t - 1] + i[t] * g[t]
        h[t] = q[t] * torch.tanh(s[t])
        y_hat[t], nll = _softmax_nll(c + h[t] @ V.T, y[t])  # o(t) = c + V h(t)
        loss += nll

    # Backward.
    grad_o: list = [None] * (T + 1)  # ∇o(t), (B, O)
    grad_h: list = [None] * (T + 1)  # ∇h(t), (B, H); grad_h[0] = ∇h(0)
    grad_s: list = [None] * (T + 1)  # ∇s(t), (B, H); grad_s[0] = ∇s(0)
    grad_a: list = [None] * (T + 1)  # ∇a(t), (B, 4H)
    grad_x: list = [None] * (T + 1)  # ∇x(t), (B, I)
    grad_V, grad_c = torch.zeros_like(V), torch.zeros_like(c)
    grad_W_ih, grad_W_hh, grad_b = torch.zeros_like(W_ih), torch.zeros_like(W_hh), torch.zeros_like(b)
    for t in range(T, 0, -1):
        grad_o[t] = y_hat[t] - _one_hot(y[t], y_hat[t])  # ∇o(t) = ŷ(t) − 1_{y(t)}
        grad_c += grad_o[t].sum(0)  # ∇c = Σ_t ∇o(t)
        grad_V += grad_o[t].T @ h[t]  # ∇V = Σ_t ∇o(t) h(t)ᵀ
        grad_h[t] = grad_o[t] @ V  # Vᵀ ∇o(t)
        if t < T:
            grad_h[t] = grad_h[t] + grad_a[t + 1] @ W_hh  # + W_hhᵀ ∇a(t+1)
        tanh_s = torch.tanh(s[t])
        grad_s[t] = grad_h[t] * q[t] * (1 - tanh_s**2)
        if t < T:
            grad_s[t] = grad_s[t] + f[t + 1] * grad_s[t + 1]  # + f(t+1) ⊙ ∇s(t+1)
        grad_a_i = grad_s[t] * g[t] * i[t] * (1 - i[t])
        grad_a_f = grad_s[t] * s[t - 1] * f[t] * (1 - f[t])
        grad_a_g = grad_s[t] * i[t] * (1 - g[t] ** 2)
        grad_a_q = grad_h[t] * tanh_s * q[t] * (1 - q[t])
        grad_a[t] = torch.cat([grad_a_i, grad_a_f, grad_a_g, grad_a_q], dim=1)  # (B, 4H)
        grad_W_ih += grad_a[t].T @ x[t]  # ∇W_ih = Σ_t ∇a(t) x(t)ᵀ
        grad_W_hh += grad_a[t].T @ h[t - 1]  # ∇W_hh = Σ_t ∇a(t) h(t−1)ᵀ
        grad_b += grad_a[t].sum(0)  # ∇b = Σ_t ∇a(t)
        grad_x[t] = grad_a[t] @ W_ih  # ∇x(t) = W_ihᵀ ∇a(t)
    grad_h[0] = grad_a[1] @ W_hh  # ∇h(0) = W_hhᵀ ∇a(1)
    grad_s[0] = f[1] * grad_s[1]  # ∇s(0) = f(1) ⊙ ∇s(1)

    grads = {"weight_ih": grad_W_ih, "weight_hh": grad_W_hh}
    if b_ih is not None:
        grads.update(bias_ih=grad_b, bias_hh=grad_b.clone())
    grads.update(V=grad_V, c=grad_c, x=_stack(grad_x), h0=grad_h[0], c0=grad_s[0])
    return BPTTResult(
        loss, _stack(h), _stack(y_hat), grads, _stack(grad_o), _stack(grad_h), s=_stack(s), grad_s=_stack(grad_s)
    )


# ---------------------------------------------------------------------------------------------
# GRU
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def gru(cell: Any, V: Any, c: Tensor | None, x: Tensor, y: Tensor, h0: Tensor | None = None) -> BPTTResult:
    r"""Loss and exact gradients of the GRU network (torch.nn.GRUCell's equations).

    The input and the recurrent projections are kept apart, because the reset gate r multiplies
    only the recurrent part of the candidate n. Forward:

    .. math::
        a_x(t) &= W_{ih}\, x(t) + b_{ih} = [a_{x,r}; a_{x,z}; a_{x,n}], \qquad
        a_h(t) = W_{hh}\, h(t-1) + b_{hh} = [a_{h,r}; a_{h,z}; a_{h,n}] \qquad (\in \mathbb R^{3H}) \\
        r(t) &= \sigma(a_r(t)), \quad a_r = a_{x,r} + a_{h,r} \\
        z(t) &= \sigma(a_z(t)), \quad a_z = a_{x,z} + a_{h,z} \\
        n(t) &= \tanh(a_n(t)), \quad a_n = a_{x,n} + r(t) \odot a_{h,n} \\
        h(t) &= (1 - z(t)) \odot n(t) + z(t) \odot h(t-1) \\
        o(t) &= c + V h(t), \qquad \hat y(t) = \mathrm{softmax}(o(t)), \qquad
        L = \sum_t -\log \hat y(t)_{y(t)}

    Backward, for t = τ … 1; the terms with t + 1 are absent at t = τ:

    .. math::
        \nabla o(t) &= \hat y(t) - \mathbf 1_{y(t)} \\
        \nabla h(t) &= V^\top \nabla o(t) + z(t+1) \odot \nabla h(t+1) + W_{hh}^\top \nabla a_h(t+1) \\
        \nabla a_n(t) &= \nabla h(t) \odot (1 - z(t)) \odot (1 - n(t)^2) \\
        \nabla a_z(t) &= \nabla h(t) \odot (h(t-1) - n(t)) \odot z(t) \odot (1 - z(t)) \\
        \nabla a_r(t) &= \nabla a_n(t) \odot a_{h,n}(t) \odot r(t) \odot (1 - r(t)) \\
        \nabla a_x(t) &= [\nabla a_r(t); \nabla a_z(t); \nabla a_n(t)], \qquad
        \nabla a_h(t) = [\nabla a_r(t); \nabla a_z(t); r(t) \odot \nabla a_n(t)]

    and the sums over time

    .. math::
        \nabla W_{ih} = \sum_t \nabla a_x(t)\, x(t)^\top, \quad
        \nabla b_{ih} = \sum_t \nabla a_x(t), \quad
        \nabla W_{hh} = \sum_t \nabla a_h(t)\, h(t-1)^\top, \quad
        \nabla b_{hh} = \sum_t \nabla a_h(t), \\
        \nabla c = \sum_t \nabla o(t), \quad \nabla V = \sum_t \nabla o(t)\, h(t)^\top, \quad
        \nabla x(t) = W_{ih}^\top \nabla a_x(t), \quad
        \nabla h(0) = z(1) \odot \nabla h(1) + W_{hh}^\top \nabla a_h(1).

    Args:
        cell: a GRU cell: ``weight_ih`` (3H, I), ``weight_hh`` (3H, H), ``bias_ih`` and
            ``bias_hh`` (3H,) or both ``None``, gate blocks in the order r, z, n.
        V: the output weight (O, H), or an output module (``nn.Linear(H, O)``) with ``c=None``.
        c: the output bias (O,), or ``None`` when ``V`` is a module.
        x: inputs (T, B, I), time-major.
        y: target classes (T, B), integers in [0, O).
        h0: the initial hidden state (B, H); ``None`` for zeros.

    Returns:
        A :class:`BPTTResult`; ``grads`` holds ``weight_ih``, ``weight_hh``, ``bias_ih``,
        ``bias_hh``, ``V``, ``c``, ``x`` and ``h0``.
    """
    fn = "bptt.gru"
    W_ih, W_hh, b_ih, b_hh = _cell_parameters(fn, cell, gates=3, gate_names="r, z, n")
    H, I = W_hh.shape[1], W_ih.shape[1]
    V, c = _output_parameters(fn, V, c, H, W_hh)
    y = _check_sequence(fn, x, y, I, V.shape[0], W_hh)
    T, B = y.shape
    h0 = _check_state(fn, "h0", h0, B, H, W_hh)
    if b_ih is None:
        b_ih = b_hh = W_hh.new_zeros(3 * H)  # a cell without biases: zero biases, no bias gradients
        has_bias = False
    else:
        has_bias = True

    x, y = _one_based(x), _one_based(y)  # x[t] = x(t) (B, I), y[t] = y(t) (B,), t = 1 … τ

    # Forward.
    h: list = [h0] + [None] * T  # h[t] = h(t), (B, H)
    r, z, n, a_h_n = ([None] * (T + 1) for _ in range(4))  # r(t), z(t), n(t), a_h,n(t), (B, H)
    y_hat: list = [None] * (T + 1)  # y_hat[t] = ŷ(t), (B, O)
    loss = W_hh.new_zeros(())
    for t in range(1, T + 1):
        a_x = x[t] @ W_ih.T + b_ih  # a_x(t)   (B, 3H)
        a_h = h[t - 1] @ W_hh.T + b_hh  # a_h(t)   (B, 3H)
        a_x_r, a_x_z, a_x_n = a_x.chunk(3, dim=1)  # each (B, H)
        a_h_r, a_h_z, a_h_n[t] = a_h.chunk(3, dim=1)  # each (B, H)
        r[t] = torch.sigmoid(a_x_r + a_h_r)
        z[t] = torch.sigmoid(a_x_z + a_h_z)
        n[t] = torch.tanh(a_x_n + r[t] * a_h_n[t])
        h[t] = (1 - z[t]) * n[t] + z[t] * h[t - 1]
        y_hat[t], nll = _softmax_nll(c + h[t] @ V.T, y[t])  # o(t) = c + V h(t)
        loss += nll

    # Backward.
    grad_o: list = [None] * (T + 1)  # ∇o(t), (B, O)
    grad_h: list = [None] * (T + 1)  # ∇h(t), (B, H); grad_h[0] = ∇h(0)
    grad_a_x: list = [None] * (T + 1)  # ∇a_x(t), (B, 3H)
    grad_a_h: list = [None] * (T + 1)  # ∇a_h(t), (B, 3H)
    grad_x: list = [None] * (T + 1)  # ∇x(t), (B, I)
    grad_V, grad_c = torch.zeros_like(V), torch.zeros_like(c)
    grad_W_ih, grad_W_hh = torch.zeros_like(W_ih), torch.zeros_like(W_hh)
    grad_b_ih, grad_b_hh = torch.zeros_like(b_ih), torch.zeros_like(b_hh)
    for t in range(T, 0, -1):
        grad_o[t] = y_hat[t] - _one_hot(y[t], y_hat[t])  # ∇o(t) = ŷ(t) − 1_{y(t)}
        grad_c += grad_o[t].sum(0)  # ∇c = Σ_t ∇o(t)
        grad_V += grad_o[t].T @ h[t]  # ∇V = Σ_t ∇o(t) h(t)ᵀ
        grad_h[t] = grad_o[t] @ V  # Vᵀ ∇o(t)
        if t < T:
            grad_h[t] = grad_h[t] + z[t + 1] * grad_h[t + 1] + grad_a_h[t + 1] @ W_hh
        grad_a_n = grad_h[t] * (1 - z[t]) * (1 - n[t] ** 2)
        grad_a_z = grad_h[t] * (h[t - 1] - n[t]) * z[t] * (1 - z[t])
        grad_a_r = grad_a_n * a_h_n[t] * r[t] * (1 - r[t])
        grad_a_x[t] = torch.cat([grad_a_r, grad_a_z, grad_a_n], dim=1)  # (B, 3H)
        grad_a_h[t] = torch.cat([grad_a_r, grad_a_z, r[t] * grad_a_n], dim=1)  # (B, 3H)
        grad_W_ih += grad_a_x[t].T @ x[t]  # ∇W_ih = Σ_t ∇a_x(t) x(t)ᵀ
        grad_b_ih += grad_a_x[t].sum(0)  # ∇b_ih = Σ_t ∇a_x(t)
        grad_W_hh += grad_a_h[t].T @ h[t - 1]  # ∇W_hh = Σ_t ∇a_h(t) h(t−1)ᵀ
        grad_b_hh += grad_a_h[t].sum(0)  # ∇b_hh = Σ_t ∇a_h(t)
        grad_x[t] = grad_a_x[t] @ W_ih  # ∇x(t) = W_ihᵀ ∇a_x(t)
    grad_h[0] = z[1] * grad_h[1] + grad_a_h[1] @ W_hh  # ∇h(0) = z(1) ⊙ ∇h(1) + W_hhᵀ ∇a_h(1)

    grads = {"weight_ih": grad_W_ih, "weight_hh": grad_W_hh}
    if has_bias:
        grads.update(bias_ih=grad_b_ih, bias_hh=grad_b_hh)
    grads.update(V=grad_V, c=grad_c, x=_stack(grad_x), h0=grad_h[0])
    return BPTTResult(loss, _stack(h), _stack(y_hat), grads, _stack(grad_o), _stack(grad_h))


# ---------------------------------------------------------------------------------------------
# Shared pieces: the output layer, time indexing, argument checks
# ---------------------------------------------------------------------------------------------


def _softmax_nll(o: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    r"""ŷ = softmax(o) and :math:`\sum_{\text{rows}} -\log \hat y_{y}` for o (B, O), y (B,).

    Computed stably: with :math:`m = \max_k o_k`, :math:`\log \hat y = (o - m) - \log \sum_k e^{o_k - m}`.
    """
    o_shifted = o - o.amax(dim=1, keepdim=True)  # (B, O)
    log_y_hat = o_shifted - o_shifted.exp().sum(dim=1, keepdim=True).log()  # (B, O)
    nll = -log_y_hat.gather(1, y.unsqueeze(1)).sum()  # y.unsqueeze(1): (B, 1)
    return log_y_hat.exp(), nll


def _one_hot(y: Tensor, like: Tensor) -> Tensor:
    """The one-hot rows 1_{y} for targets y (B,), with the shape (B, O) and dtype of ``like``."""
    return torch.zeros_like(like).scatter_(1, y.unsqueeze(1), 1.0)  # y.unsqueeze(1): (B, 1)


def _one_based(seq: Tensor) -> list:
    """A time-major (T, ...) tensor as the list [None, seq(1), …, seq(τ)], indexed like the equations."""
    return [None, *seq.unbind(0)]


def _stack(steps: list) -> Tensor:
    """The inverse of :func:`_one_based`: steps 1 … τ of a per-step list stacked to (T, ...)."""
    return torch.stack(steps[1:])


def _bias_sum(b_ih: Tensor | None, b_hh: Tensor | None, rows: int, like: Tensor) -> Tensor:
    """b = b_ih + b_hh, the one bias the equations need (zeros for a cell without biases)."""
    return like.new_zeros(rows) if b_ih is None else b_ih + b_hh


def _describe(value: Any) -> str:
    """How an argument is named in an error message: its shape for a tensor, else its type."""
    if isinstance(value, Tensor):
        return f"{value.dim()}-D shape {tuple(value.shape)}"
    return type(value).__name__


def _check_like(fn: str, name: str, t: Tensor, like: Tensor) -> None:
    """Raise unless ``t`` has the dtype and device of the cell's parameters."""
    if t.dtype != like.dtype:
        raise TypeError(f"{fn}: {name} has dtype {t.dtype}, expected the cell's dtype {like.dtype}")
    if t.device != like.device:
        raise ValueError(f"{fn}: {name} is on {t.device}, expected the cell's device {like.device}")


def _cell_parameters(
    fn: str, cell: Any, gates: int, gate_names: str
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """The cell's ``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh``, checked.

    ``gates`` is G, the number of stacked H-row blocks (1, 4 or 3); H is read from
    ``weight_hh``'s column count and every other shape is checked against it.
    """
    for name in ("weight_ih", "weight_hh"):
        if not isinstance(getattr(cell, name, None), Tensor):
            raise TypeError(
                f"{fn}: cell must have a tensor attribute {name} (an rnnkit cell or a torch.nn "
                f"RNNCell/LSTMCell/GRUCell), got {type(cell).__name__} with {name}="
                f"{type(getattr(cell, name, None)).__name__}"
            )
    W_ih, W_hh = cell.weight_ih, cell.weight_hh
    rows = "H" if gates == 1 else f"{gates}H"
    blocks = f", gate blocks {gate_names}" if gate_names else ""
    if not W_hh.is_floating_point():
        raise TypeError(f"{fn}: cell.weight_hh must be a floating-point tensor, got dtype {W_hh.dtype}")
    if W_hh.dim() != 2 or W_hh.shape[0] != gates * W_hh.shape[1]:
        raise ValueError(f"{fn}: cell.weight_hh must have shape ({rows}, H){blocks}; got {_describe(W_hh)}")
    H = W_hh.shape[1]
    if W_ih.dim() != 2 or W_ih.shape[0] != gates * H:
        raise ValueError(
            f"{fn}: cell.weight_ih must have shape ({rows}, I) = ({gates * H}, I) for H = {H}; got {_describe(W_ih)}"
        )
    _check_like(fn, "cell.weight_ih", W_ih, W_hh)
    b_ih, b_hh = getattr(cell, "bias_ih", None), getattr(cell, "bias_hh", None)
    if (b_ih is None) != (b_hh is None):
        raise ValueError(f"{fn}: cell.bias_ih and cell.bias_hh must both be tensors or both None")
    for name, bias in (("bias_ih", b_ih), ("bias_hh", b_hh)):
        if bias is None:
            continue
        if not isinstance(bias, Tensor):
            raise TypeError(f"{fn}: cell.{name} must be a tensor or None, got {type(bias).__name__}")
        if bias.shape != (gates * H,):
            raise ValueError(f"{fn}: cell.{name} must have shape ({rows},) = ({gates * H},); got {_describe(bias)}")
        _check_like(fn, f"cell.{name}", bias, W_hh)
    return W_ih, W_hh, b_ih, b_hh


def _output_parameters(fn: str, V: Any, c: Any, H: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """The output layer's V (O, H) and c (O,), from two tensors or from a module with c=None."""
    if not isinstance(V, Tensor) and hasattr(V, "weight"):
        if c is not None:
            raise ValueError(f"{fn}: V is a module ({type(V).__name__}), so c must be None: its bias is c")
        V, c = V.weight, V.bias
        if c is None:
            raise ValueError(f"{fn}: the output module has no bias; the network needs c (O,): use bias=True")
    if not isinstance(V, Tensor):
        raise TypeError(f"{fn}: V must be a (O, H) tensor or a module with .weight and .bias, got {type(V).__name__}")
    if not isinstance(c, Tensor):
        raise TypeError(f"{fn}: c must be a (O,) tensor, got {type(c).__name__}")
    if V.dim() != 2 or V.shape[1] != H:
        raise ValueError(f"{fn}: V must have shape (O, H) with H = {H} (the cell's hidden size); got {_describe(V)}")
    O = V.shape[0]
    if c.shape != (O,):
        raise ValueError(f"{fn}: c must have shape (O,) = ({O},), O being V's row count; got {_describe(c)}")
    _check_like(fn, "V", V, like)
    _check_like(fn, "c", c, like)
    return V, c


def _check_sequence(fn: str, x: Any, y: Any, I: int, O: int, like: Tensor) -> Tensor:
    """Check x (T, B, I) and the targets y (T, B) in [0, O); return y as int64."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{fn}: x must be a (T, B, I) tensor, got {type(x).__name__}")
    if x.dim() != 3:
        raise ValueError(f"{fn}: x must have shape (T, B, I) (time-major); got {_describe(x)}")
    T, B, width = x.shape
    if T < 1 or B < 1:
        raise ValueError(f"{fn}: x must hold at least one time step and one sequence; got shape {tuple(x.shape)}")
    if width != I:
        raise ValueError(
            f"{fn}: x must have shape (T, B, I) with I = {I} (the cell's input size); got {tuple(x.shape)}"
        )
    _check_like(fn, "x", x, like)
    if not isinstance(y, Tensor):
        raise TypeError(f"{fn}: y must be a (T, B) tensor of int64 class indices, got {type(y).__name__}")
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise TypeError(f"{fn}: y must hold integer class indices (int64), got dtype {y.dtype}")
    if y.shape != (T, B):
        raise ValueError(f"{fn}: y must have shape (T, B) = ({T}, {B}) to match x; got {_describe(y)}")
    if y.device != x.device:
        raise ValueError(f"{fn}: y is on {y.device}, expected x's device {x.device}")
    bad = (y < 0) | (y >= O)
    if bad.any():
        t, row = (int(k) for k in bad.nonzero()[0])
        raise ValueError(
            f"{fn}: y must hold class indices in [0, O) = [0, {O}) (O = V's row count); "
            f"got y[{t}, {row}] = {int(y[t, row])}"
        )
    return y.long()


def _check_state(fn: str, name: str, state: Any, B: int, H: int, like: Tensor) -> Tensor:
    """An initial state (B, H), checked; zeros for None."""
    if state is None:
        return like.new_zeros(B, H)
    if not isinstance(state, Tensor):
        raise TypeError(f"{fn}: {name} must be a (B, H) tensor or None, got {type(state).__name__}")
    if state.shape != (B, H):
        raise ValueError(f"{fn}: {name} must have shape (B, H) = ({B}, {H}); got {_describe(state)}")
    _check_like(fn, name, state, like)
    return state
