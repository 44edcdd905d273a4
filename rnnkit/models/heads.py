"""Output heads: what a model reads off its hidden vector h(t).

* :class:`OutputHead` — ``o = c + V h``: logits for a softmax over V classes, or O real values;
  with ``hidden`` layers it is the deep hidden-to-output MLP of Pascanu et al. (2014);
* :class:`HaltHead` — a Bernoulli "the sequence ends after this step" output, logit ``w·h + b``;
* :class:`LengthHead` — predicts the length τ ∈ {1, …, L} as a class (see its docstring).

The matching losses are in :mod:`rnnkit.models.losses`.

Symbols: B batch, T time, H hidden (the head's input), V vocabulary, O real output size,
L the largest length a length head predicts.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ..cells.base import check_choice, check_size
from ..cells.deep import MLP


class OutputHead(nn.Module):
    r"""The output layer :math:`o(t) = c + V\,\mathrm{mlp}(h(t))`, ŷ(t) = softmax(o(t)) for classes
    (Goodfellow et al., *Deep Learning*, eq. 10.10–10.11) or o(t) itself for real values.

    With ``hidden=()`` the MLP is the identity and this is the seeds' ``o = c + V h``. With
    ``hidden=(H_1, …)`` the hidden-to-output path is an MLP, ``mlp(h) = φ(W_k … φ(W_1 h + b_1) …)``
    — the deep output of Pascanu et al. (2014), "How to Construct Deep Recurrent Neural
    Networks" (Goodfellow et al., figure 10.13b).

    Args:
        in_size: H. out_size: V (classes) or O (values).
        hidden: widths of the MLP's hidden layers. activation: φ, ``"tanh"`` or ``"relu"``.

    Parameters: ``mlp.*`` and ``proj.weight`` (V, H_k) = V, ``proj.bias`` (V,) = c.
    Shapes: h (…, H) → (…, V).
    """

    def __init__(self, in_size: int, out_size: int, hidden: Sequence[int] = (), activation: str = "tanh") -> None:
        super().__init__()
        self.in_size = check_size(in_size, "in_size", "OutputHead")
        self.out_size = check_size(out_size, "out_size", "OutputHead")
        self.mlp = MLP(in_size, hidden, activation, owner="OutputHead")
        self.proj = nn.Linear(self.mlp.out_size, out_size)

    def forward(self, h: Tensor) -> Tensor:
        return self.proj(self.mlp(h) if self.mlp.layers else h)  # (…, V); without layers the MLP is the identity


class HaltHead(nn.Module):
    r"""Bernoulli output deciding when a generated sequence ends (Goodfellow et al., §10.2.3):

    .. math::
        P(\text{end after step } t \mid h(t)) = \sigma(w^\top h(t) + b)

    Trained with :func:`rnnkit.models.losses.halt_loss` (target 1 at each sequence's last step,
    0 before). Parameters ``proj.weight`` (1, H) = w, ``proj.bias`` (1,) = b.
    Shapes: h (…, H) → halt logits (…).
    """

    def __init__(self, in_size: int) -> None:
        super().__init__()
        self.in_size = check_size(in_size, "in_size", "HaltHead")
        self.proj = nn.Linear(in_size, 1)

    def forward(self, h: Tensor) -> Tensor:
        return self.proj(h).squeeze(-1)  # (…)


class LengthHead(nn.Module):
    r"""Predicts the length τ of the sequence to generate, from a summary vector (a context).

    τ is treated as a class over {1, …, L}: ``logits = W v + b`` (B, L), class k ↔ τ = k + 1,
    trained by cross-entropy (:func:`rnnkit.models.losses.length_loss`) and predicted as the
    most probable class. A class, not a regression, because lengths are discrete and the
    distribution over them may have several modes; L bounds what can be generated.

    Args:
        in_size: the summary's width C. max_length: L.
    Parameters: ``proj.weight`` (L, C), ``proj.bias`` (L,).
    Shapes: v (B, C) → logits (B, L); :meth:`predict` → τ (B,) int64 in [1, L].
    """

    def __init__(self, in_size: int, max_length: int) -> None:
        super().__init__()
        self.in_size = check_size(in_size, "in_size", "LengthHead")
        self.max_length = check_size(max_length, "max_length", "LengthHead")
        self.proj = nn.Linear(in_size, max_length)

    def forward(self, v: Tensor) -> Tensor:
        return self.proj(v)  # (B, L)

    @staticmethod
    def predict(logits: Tensor) -> Tensor:
        """The most probable length, τ = argmax + 1, (B,) int64."""
        return logits.argmax(dim=-1) + 1


class Readout(nn.Module):
    """An :class:`OutputHead` and, optionally, a :class:`HaltHead` on the same hidden vector.

    Shapes: h (…, H) → (logits (…, V), halt (…) or None).
    """

    def __init__(
        self, in_size: int, out_size: int, halt: bool = False, hidden: Sequence[int] = (), activation: str = "tanh"
    ) -> None:
        super().__init__()
        check_choice(activation, "activation", "Readout", ("tanh", "relu"))
        self.out = OutputHead(in_size, out_size, hidden, activation)
        self.halt = HaltHead(in_size) if halt else None

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor | None]:
        return self.out(h), (self.halt(h) if self.halt is not None else None)
