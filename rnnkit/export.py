r"""Export trained layers and models with ``torch.export``, to run them without rnnkit.

:func:`export` turns any rnnkit layer or model — a ``Stack`` of LSTMs, a char-LM, a classifier
over a peephole or LayerNorm LSTM, a cell you wrote — into a ``torch.export.ExportedProgram``:
a graph of ATen operations with the weights inside. :func:`save` writes it to a ``.pt2`` file,
and anything with PyTorch loads and runs it, rnnkit not installed::

    program = torch.export.load("model.pt2").module()
    logits, state = program(tokens, state=state)

``rnnkit export RUN`` (:mod:`rnnkit.cli.export`) does the same for a trained run's model.

**Why torch.export.** It ships with torch, so exporting adds no dependency, and the program it
makes is checked here against the model it came from, in the same process, before it is
written — ONNX would need ``onnx``, ``onnxscript`` and ``onnxruntime`` to make and check the
same, for every user. The ``.pt2`` file runs in Python with ``torch.export.load``; the same
program is the input of torch's ahead-of-time compiler for C++ servers (AOTInductor,
``torch._inductor.aoti_compile_and_package``) and of torch's ONNX exporter
(``torch.onnx.export(program, …)``), so both stay one step away without rnnkit depending on
them (those steps are torch's; rnnkit's tests do not run them). TorchScript is in maintenance.

**Which engine is exported.** The fused engine is a C++ autograd function that ``torch.export``
cannot look into, so while exporting every layer takes a path made of torch operations
(``Recurrent._choose_path``): torch's own kernel for plain Elman, LSTM (projected
too) and GRU layers given no lengths — one ``aten.lstm``/``gru``/``rnn_*`` node, a whole stack
in one — and the reference loop otherwise, unrolled over the steps. Both compute what the fused
engine computes (the tests hold them to it), so the program's outputs equal the model's; the
fused engine is left as it was for the model itself.

**Shapes.** The batch size is free: :func:`export` marks every dimension of every input as
``torch.export.Dim.AUTO``, and those that the computation does not fix stay symbolic (so give
an example batch of at least 2 and unlike every other size: :func:`free_batch_size`). The
number of steps T is fixed at the example's: the reference loop is unrolled (so the program,
and the time to export it, grow with T times the layers), and torch specialises T in its own
``aten.lstm`` under export too (as it does for ``torch.nn.LSTM``). Sequences of different
lengths up to T run as one padded batch with ``lengths``; to run longer ones, export with a
larger T, or export a one-step program (T = 1, state in and out) and loop over it — a
language model's generation step.

**Inputs and outputs** are plain tensors and tuples of tensors: the NamedTuples of rnnkit's
states (``LSTMState(h, c)``, ``BidirectionalState``) become tuples in the same field order,
which rnnkit's layers accept as states, so the program has no rnnkit type in its signature.

Symbols: T steps, B batch.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.export import Dim, ExportedProgram

__all__ = ["export", "save", "load", "plain", "check_exported", "example_inputs", "free_batch_size", "describe_inputs"]

# What "equal" means between the program and the model: the program may run the reference loop
# where the model ran the fused engine, the same operations in another order.
TOLERANCES = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-5)}


def plain(obj: Any) -> Any:
    """``obj`` with every NamedTuple (and list) made a plain tuple, recursively; tensors and
    other values unchanged. The form of an exported program's inputs and outputs."""
    if isinstance(obj, (tuple, list)):
        return tuple(plain(o) for o in obj)
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    return obj


class _Plain(nn.Module):
    """The model with plain-tuple outputs (see :func:`plain`); inputs pass through."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return plain(self.model(*args, **kwargs))


def _plain_outputs(model: nn.Module) -> nn.Module:
    """:class:`_Plain` around ``model``, whose ``forward`` shows the model's signature (so that
    ``torch.export`` names the inputs after the model's parameters)."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return _Plain.forward(self, *args, **kwargs)

    forward.__signature__ = inspect.signature(type(model).forward)
    return type(f"Exported{type(model).__name__}", (_Plain,), {"forward": forward})(model)


def _auto_dims(obj: Any) -> Any:
    """``dynamic_shapes`` for an input: every dimension of every tensor ``Dim.AUTO``."""
    if isinstance(obj, Tensor):  # a size of 1 would be specialised anyway (with a warning): static
        return {d: Dim.AUTO for d in range(obj.dim()) if obj.shape[d] != 1} or None
    if isinstance(obj, tuple):
        return tuple(_auto_dims(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _auto_dims(v) for k, v in obj.items()}
    return None


def _leaves(obj: Any) -> list[Tensor]:
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for o in obj for t in _leaves(o)]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _leaves(v)]
    return []


def export(model: nn.Module, args: tuple, kwargs: dict | None = None, *, check: bool = True) -> ExportedProgram:
    """``model``'s inference computation as a ``torch.export.ExportedProgram``.

    The model is traced in eval mode (dropout off; its mode is restored afterwards) on the
    example inputs ``args``/``kwargs``, every layer on a path made of torch operations (see the
    module docstring). States given as NamedTuples become plain tuples (:func:`plain`), in the
    inputs and in the outputs, so the program's signature holds tensors and tuples only.

    Args:
        model: any module built from rnnkit layers (or one layer).
        args, kwargs: example inputs, as the model's ``forward`` takes them; their T is the
            program's, their batch size one example of a size left free — ≥ 2 and unlike any
            other size of the inputs and weights (:func:`free_batch_size` picks one), or
            ``torch.export`` takes the two for one and fixes both.
        check: run the program on the example and raise ``AssertionError`` unless its outputs
            equal the model's (float64 to 1e-10, float32 to 1e-5; the model runs on its usual
            engines, so this checks the exported path against them).

    Returns:
        the program; ``program.module()`` runs it, :func:`save` writes it.

    Example:
        >>> import torch
        >>> from rnnkit import ManyToOne, Stack
        >>> from rnnkit.cells import LSTMCell
        >>> from rnnkit.export import export
        >>> model = ManyToOne(Stack.build(lambda i, h: LSTMCell(i, h, peephole=True), 8, 16, 2), 10)
        >>> x, lengths = torch.randn(12, 4, 8), torch.tensor([12, 5, 9, 1])
        >>> program = export(model, (x, lengths))
        >>> torch.testing.assert_close(program.module()(x, lengths), model.eval()(x, lengths))
    """
    kwargs = dict(kwargs or {})
    args, kwargs = plain(tuple(args)), plain(kwargs)
    was_training = model.training
    model.eval()
    try:
        wrapped = _plain_outputs(model)
        program = torch.export.export(wrapped, args, kwargs, dynamic_shapes=_dynamic_shapes(model, args, kwargs))
        if check:
            check_exported(program, model, args, kwargs)
    finally:
        model.train(was_training)
    return program


def _dynamic_shapes(model: nn.Module, args: tuple, kwargs: dict) -> dict:
    """Every input's dimensions ``Dim.AUTO``, keyed by the names of ``model.forward``'s
    parameters, as ``torch.export`` wants them."""
    bound = inspect.signature(model.forward).bind(*args, **kwargs)
    return {name: _auto_dims(value) for name, value in bound.arguments.items()}


def check_exported(program: ExportedProgram, model: nn.Module, args: tuple, kwargs: dict | None = None) -> None:
    """Raise ``AssertionError`` unless ``program`` and ``model`` (in its current mode) give equal
    outputs on ``args``/``kwargs`` (tolerances by dtype: ``TOLERANCES``)."""
    kwargs = plain(dict(kwargs or {}))
    args = plain(tuple(args))
    with torch.no_grad():
        got = _leaves(program.module()(*args, **kwargs))
        want = _leaves(plain(model(*args, **kwargs)))
    if len(got) != len(want):
        raise AssertionError(f"export: the program returns {len(got)} tensors, the model {len(want)}")
    for k, (a, b) in enumerate(zip(got, want)):
        tol = TOLERANCES.get(b.dtype, dict(rtol=0, atol=0))
        torch.testing.assert_close(
            a, b, **tol, msg=lambda m, k=k: f"export: output tensor {k} of the program differs from the model's: {m}"
        )


def save(program: ExportedProgram, path: str | Path) -> Path:
    """Write ``program`` to ``path`` (a ``.pt2`` file, by ``torch.export.save``); returns the path."""
    path = Path(path)
    torch.export.save(program, path)
    return path


def load(path: str | Path) -> nn.Module:
    """The callable module of a program :func:`save` wrote (``torch.export.load(path).module()``);
    needs only torch."""
    return torch.export.load(Path(path)).module()


def free_batch_size(model: nn.Module, steps: int, avoid: int = 0) -> int:
    """The smallest batch size ≥ 2 unlike ``steps``, ``avoid`` and every size of the model's
    parameters: an example batch that ``torch.export`` keeps apart from the other dimensions."""
    taken = {steps, avoid} | {n for p in model.parameters() for n in p.shape}
    return next(b for b in range(2, 2 + len(taken) + 1) if b not in taken)


def example_inputs(model: nn.Module, steps: int, batch_size: int = 2, seed: int = 0) -> tuple[tuple, dict]:
    """Example ``(args, kwargs)`` for exporting a model that reads one sequence (time-major).

    Made from what the model is, for :mod:`rnnkit.cli.export`: the sequence is (T, B) token ids
    when the model embeds tokens (it holds an ``nn.Embedding``), else (T, B, I) floats, I the
    first recurrent layer's ``input_size``; ``lengths`` (B,) when ``forward`` takes them and
    T > 1; ``state`` — the zero state of ``model.start(B)`` — when the model keeps the
    decoding protocol of :mod:`rnnkit.generate` (a language model: its program is then one step
    of generation with T = 1, state in and out).

    Raises ValueError for a model whose ``forward`` needs more than one input (a seq2seq model
    reads a source and a target): export it with :func:`export` and inputs of your own.
    """
    from .compose import Bidirectional, Stack
    from .recurrent import Recurrent

    name = type(model).__name__
    params = inspect.signature(model.forward).parameters
    required = [
        p
        for p in params.values()
        if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if len(required) != 1:
        raise ValueError(
            f"{name}.forward needs {len(required)} inputs ({', '.join(p.name for p in required)}); "
            "only models that read one sequence get example inputs: call rnnkit.export.export with your own"
        )
    like = next(iter(model.parameters()))
    gen = torch.Generator().manual_seed(seed)
    embedding = next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)
    if embedding is not None:
        x = torch.randint(0, embedding.num_embeddings, (steps, batch_size), generator=gen).to(like.device)  # (T, B)
    else:
        layer = next((m for m in model.modules() if isinstance(m, (Recurrent, Bidirectional, Stack))), None)
        if layer is None:
            raise ValueError(
                f"{name} holds no rnnkit layer (Recurrent, Bidirectional or Stack) to read its input size from"
            )
        x = torch.randn(steps, batch_size, layer.input_size, generator=gen, dtype=torch.float64).to(like)  # (T, B, I)
    kwargs: dict[str, Any] = {}
    if "lengths" in params and steps > 1:
        kwargs["lengths"] = torch.full((batch_size,), steps, dtype=torch.long, device=like.device)
    if "state" in params and callable(getattr(model, "start", None)):
        kwargs["state"] = model.start(batch_size)
    return (x,), kwargs


def describe_inputs(model: nn.Module, args: tuple, kwargs: dict, batch_size: int) -> str:
    """The inputs of ``model``'s program in words, by the names of its ``forward``'s parameters,
    the batch size written B: ``"tokens (1, B) int64; state ((B, 32), (B, 32))"``."""

    def shape(t: Tensor) -> str:
        dims = ["B" if n == batch_size else str(n) for n in t.shape]
        return f"({', '.join(dims)}{',' if len(dims) == 1 else ''}) {str(t.dtype).removeprefix('torch.')}"

    def words(obj: Any) -> str:
        if isinstance(obj, Tensor):
            return shape(obj)
        if isinstance(obj, (tuple, list)):
            return "(" + ", ".join(words(o) for o in obj) + ")"
        return repr(obj)

    bound = inspect.signature(model.forward).bind(*plain(args), **plain(kwargs))
    return "; ".join(f"{name} {words(value)}" for name, value in bound.arguments.items())
