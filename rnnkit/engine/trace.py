r"""Reading a cell's step as a program: the tracer behind the open fused engine.

A cell's ``recurrence(gi, state)`` is ordinary PyTorch. :func:`trace_cell` runs it once on a
small batch of real tensors under a :class:`torch.overrides.TorchFunctionMode` that records
every torch operation, and sorts what it sees into two kinds of values:

* **dynamic** values depend on the step: the projected input ``gi``, the previous state, a
  skip cell's h(t−d), the step counter, and everything computed from them. They are rows of a
  batch, (B, w). Each operation on them becomes one node of the step graph: element-wise
  arithmetic and activations, slices along the feature axis, row reductions, memory-block
  sums and repeats, and matrix products ``v Wᵀ`` with a matrix that does not depend on the
  step (``F.linear``, ``@``).
* **static** values depend on parameters, buffers and constants only: a parameter itself, the
  clockwork's masked ``W ⊙ M``, a leaky cell's ``α = σ(logit)``, a layer norm's gain. They are
  computed once per layer call, in Python, by replaying the recorded operations on the live
  parameters, so autograd differentiates them as usual (:meth:`Trace.statics`).

Some operations are lowered on the way to a few primitives: ``F.layer_norm`` and ``var`` to
row means, ``F.linear``'s bias to an addition, ``torch.cat`` along features to copies.

State fields come in three kinds (:class:`Field`): an ordinary float field (B, w) whose new value
is any dynamic value; a *delay line* (B, d, w) — a skip cell's last d outputs — which the step
may read at any slot ``past[:, j]`` (h(t−d+j)) and must update as
``cat([past[:, 1:], v.unsqueeze(1)], 1)``; and an integer *step counter* (B,), which the step
may read as ``t % period`` and must advance as ``t + 1``.

Anything else — an operation outside the supported set, an in-place update, Python control flow
on a tensor's value, a tensor with the batch dimension made inside the step — raises
:class:`Untraceable` naming the operation, and the layer runs on the reference loop.

Symbols: B batch, w a value's feature width, G the projection size, d a delay.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from ..cells.state import rebuild_state, state_tensors

TRACE_BATCH = 5  # rows of the trace's example batch: any number works, the program is per row


class Untraceable(Exception):
    """The step uses something the fused engine cannot compile; the message names it."""


# -- the step graph ----------------------------------------------------------------------------------


@dataclass(eq=False)
class Value:
    """One value of the step graph.

    ``kind`` is ``"dyn"`` (a (B, width) row value of the step), ``"static"`` (a tensor computed
    from parameters only; ``shape`` is its shape) or a marker used only while tracing
    (``"shift"``, ``"push"``, ``"counter"``, ``"next"``, ``"col"``, ``"unsq"``, ``"blocked"``).
    A dynamic value is made by ``op`` from ``args`` (other values) with ``attrs``; a slice is a
    view: ``op == "slice"``, ``args == (parent,)``, ``attrs["start"]``.
    """

    kind: str
    width: int = 0
    op: str = ""
    args: tuple = ()
    attrs: dict = field(default_factory=dict)
    shape: tuple = ()
    grad: bool = True  # may carry a gradient (False for masks, counters, constants)
    index: int = -1  # static: position in Trace.static_values; dyn: position in Trace.nodes

    def __repr__(self) -> str:
        return f"<{self.kind} {self.op or ''} w={self.width} #{self.index}>"


@dataclass
class Field:
    """One tensor of the state, in ``state_tensors`` order: kind ``"float"`` (B, w),
    ``"delay"`` (B, d, w) or ``"counter"`` (B,) int64."""

    kind: str
    width: int
    delay: int = 0


@dataclass
class Trace:
    """A cell's step as a graph: ``nodes`` (dynamic values in execution order), the static values
    and how to recompute them, the state's fields, the output and each field's new value."""

    fields: list[Field]
    nodes: list[Value]
    static_values: list[Value]
    static_recipes: list[Callable[[Callable[[int], Tensor], Any], Tensor]]
    output: Value
    new_fields: list[Value | None]  # per field: its new value (None for a counter: t + 1)
    pushes: dict[int, Value]  # delay field -> the value it takes in each step
    state_template: Any  # the state's structure (NamedTuple of example tensors)
    ops: set[str]

    def statics(self, cell: Any) -> list[Tensor]:
        """The static values for this call: the recorded operations replayed on the cell's live
        parameters (differentiable), as contiguous tensors."""
        env: list[Tensor] = []
        for recipe in self.static_recipes:
            env.append(recipe(env.__getitem__, cell))
        return [env[v.index].contiguous() for v in self.static_values]


# -- the recording mode ----------------------------------------------------------------------------

_UNARY = {
    "neg": "neg",
    "__neg__": "neg",
    "negative": "neg",
    "sigmoid": "sigmoid",
    "tanh": "tanh",
    "relu": "relu",
    "exp": "exp",
    "log": "log",
    "abs": "abs",
    "__abs__": "abs",
    "sqrt": "sqrt",
    "rsqrt": "rsqrt",
}
_BINARY = {
    "add": "add",
    "__add__": "add",
    "__radd__": "add",
    "sub": "sub",
    "subtract": "sub",
    "__sub__": "sub",
    "__rsub__": "rsub",
    "mul": "mul",
    "multiply": "mul",
    "__mul__": "mul",
    "__rmul__": "mul",
    "div": "div",
    "divide": "div",
    "true_divide": "div",
    "__truediv__": "div",
    "__rtruediv__": "rdiv",
    "__rdiv__": "rdiv",
    "maximum": "max",
    "minimum": "min",
    "gt": "gt",
    "__gt__": "gt",
    "greater": "gt",
    "ge": "ge",
    "__ge__": "ge",
    "greater_equal": "ge",
    "lt": "lt",
    "__lt__": "lt",
    "less": "lt",
    "le": "le",
    "__le__": "le",
    "less_equal": "le",
    "eq": "eq",
    "__eq__": "eq",
    "ne": "ne",
    "__ne__": "ne",
    "not_equal": "ne",
    "__and__": "mul",
    "logical_and": "mul",
    "__or__": "max",
    "logical_or": "max",
    "remainder": "rem",
    "__mod__": "rem",
    "fmod": "rem",
}
_COMPARE = {"gt", "ge", "lt", "le", "eq", "ne"}
_PASS = {"float", "double", "to", "type_as", "contiguous", "clone", "type"}
_INPLACE_DUNDER = {
    "__iadd__",
    "__isub__",
    "__imul__",
    "__itruediv__",
    "__ipow__",
    "__imod__",
    "__iand__",
    "__ior__",
    "__setitem__",
}
_SHAPE_ONLY = {
    "size",
    "dim",
    "__len__",
    "is_floating_point",
    "numel",
    "__get__",
    "__format__",
    "__repr__",
    "_is_view",
    "requires_grad_",
    "is_complex",
    "element_size",
    "stride",
    "storage_offset",
}


def _name(func: Any) -> str:
    return getattr(func, "__name__", str(func))


class _Recorder(TorchFunctionMode):
    def __init__(self, tracer: _Tracer) -> None:
        super().__init__()
        self.tracer = tracer

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        return self.tracer.call(func, args, kwargs)


class _Tracer:
    def __init__(self, cell: Any, dtype: torch.dtype) -> None:
        self.cell = cell
        self.dtype = dtype
        self.of: dict[int, Value] = {}  # id(tensor) -> its value
        self.keep: list[Any] = []  # every tensor seen, so ids are not reused while tracing
        self.nodes: list[Value] = []
        self.static_values: list[Value] = []
        self.recipes: list[Callable] = []
        self.consts: dict[float, Value] = {}
        self.ops: set[str] = set()
        self.names: dict[int, tuple[str, bool]] = {}
        for name, p in cell.named_parameters():
            self.names[id(p)] = (name, True)
        for name, b in cell.named_buffers():
            self.names[id(b)] = (name, False)

    # values ---------------------------------------------------------------------------------------
    def bind(self, tensor: Any, value: Value) -> Any:
        self.keep.append(tensor)
        self.of[id(tensor)] = value
        return tensor

    def dyn(self, op: str, args: tuple, width: int, example: Tensor, grad: bool | None = None, **attrs) -> Tensor:
        if grad is None:
            grad = any(isinstance(a, Value) and a.grad for a in args)
        v = Value("dyn", width, op, args, attrs, grad=grad, index=len(self.nodes))
        self.nodes.append(v)
        self.ops.add(op)
        return self.bind(example, v)

    def static(self, recipe: Callable, example: Tensor, grad: bool) -> Value:
        v = Value("static", example.numel(), "static", shape=tuple(example.shape), grad=grad, index=len(self.recipes))
        self.recipes.append(recipe)
        self.static_values.append(v)
        self.bind(example, v)
        return v

    def const(self, x: float) -> Value:
        """A Python number as a static scalar (no gradient)."""
        if x not in self.consts:
            value = float(x)
            self.consts[x] = self.static(
                lambda env, cell, v=value: torch.tensor(v, dtype=self.dtype),
                torch.tensor(value, dtype=self.dtype),
                grad=False,
            )
        return self.consts[x]

    def value(self, x: Any, what: str) -> Value:
        """The value of an argument: a recorded tensor, a parameter/buffer, a constant tensor or a number."""
        if isinstance(x, (bool, int, float)):
            return self.const(float(x))
        if not isinstance(x, Tensor):
            raise Untraceable(f"{what}: argument of type {type(x).__name__} is not a tensor or a number")
        v = self.of.get(id(x))
        if v is not None:
            return v
        if id(x) in self.names:
            name, is_param = self.names[id(x)]
            # read by attribute path, not get_parameter: under torch.func.functional_call the
            # parameters are plain tensors in the same places
            getter = lambda env, cell, n=name: functools.reduce(getattr, n.split("."), cell)  # noqa: E731
            return self.static(getter, x, grad=is_param and x.is_floating_point())
        # a constant tensor made outside the step (not a parameter or buffer): the tensor itself,
        # so in-place changes to it are followed (a new tensor assigned to the attribute is not)
        const = x.detach()
        return self.static(lambda env, cell, c=const: c, x, grad=False)

    # the dispatch -------------------------------------------------------------------------------
    def call(self, func: Any, args: tuple, kwargs: dict) -> Any:
        name = _name(func)
        tensors = [a for a in _flatten((args, kwargs)) if isinstance(a, Tensor)]
        known = [self.of.get(id(t)) for t in tensors]
        if name in _SHAPE_ONLY and name != "__get__":
            return func(*args, **kwargs)
        if name in ("any", "all") and any(k is not None and k.kind != "static" for k in known):
            raise Untraceable(f"'{name}' on a value of the step (Python control flow on a tensor's value)")
        if name in ("__bool__", "item", "tolist", "__int__", "__float__", "__index__", "nonzero"):
            if any(k is not None and k.kind != "static" for k in known):
                raise Untraceable(f"'{name}' on a value of the step (Python control flow on a tensor's value)")
            # a parameter's value read into Python would be frozen into the program at its value now
            raise Untraceable(
                f"'{name}' on a parameter or constant tensor (its value read into Python, "
                "which a compiled step would not follow when it changes)"
            )
        if name.endswith("_") and not name.startswith("__") or name in _INPLACE_DUNDER:
            if any(k is not None and k.kind != "static" for k in known) or any(id(t) in self.names for t in tensors):
                raise Untraceable(f"in-place operation '{name}'")
        with torch.no_grad():
            out = func(*args, **kwargs)
        if not isinstance(out, Tensor) and not (
            isinstance(out, (tuple, list)) and any(isinstance(o, Tensor) for o in out)
        ):
            return out  # a shape, a dtype, a number about a tensor
        if all(k is None or k.kind == "static" for k in known):
            if not tensors and isinstance(out, Tensor) and out.dim() >= 2 and out.shape[0] == TRACE_BATCH:
                raise Untraceable(
                    f"'{name}' making a tensor of shape (B, {', '.join(map(str, out.shape[1:]))}) "
                    "inside the step (use torch.zeros_like(h) or a number)"
                )
            return self.record_static(func, args, kwargs, out)
        return self.lower(name, args, kwargs, out)

    def record_static(self, func, args, kwargs, out, pick: int | None = None):
        """An operation on static values only: replayed per call on the live parameters."""
        if isinstance(out, (tuple, list)):
            if not all(isinstance(o, Tensor) for o in out):
                return out
            return type(out)(self.record_static(func, args, kwargs, o, pick=i) for i, o in enumerate(out))
        if not isinstance(out, Tensor):
            return out
        refs = [(t, self.value(t, _name(func))) for t in _flatten((args, kwargs)) if isinstance(t, Tensor)]
        ids = {id(t): v.index for t, v in refs}
        grad = any(v.grad for _, v in refs) and out.is_floating_point()

        def recipe(env, cell, func=func, args=args, kwargs=kwargs, ids=ids, pick=pick):
            a, k = _substitute((args, kwargs), lambda t: env(ids[id(t)]) if id(t) in ids else t)
            result = func(*a, **k)
            return result if pick is None else result[pick]

        self.keep.append((args, kwargs))  # keep the argument tensors alive: ids stay unique
        self.static(recipe, out, grad=grad)
        return out

    # lowering of an operation on dynamic values ---------------------------------------------------
    def lower(self, name: str, args: tuple, kwargs: dict, out: Any) -> Any:
        if name in _PASS:
            if not isinstance(out, Tensor):
                return out
            src = self.of[id(args[0])]
            if isinstance(out, Tensor) and out.dtype in (torch.int64, torch.int32) and src.kind == "dyn":
                raise Untraceable(f"'{name}' to an integer dtype")
            return self.bind(out, src)
        if name in _UNARY:
            a = self.dyn_arg(args[0], name)
            return self.dyn(_UNARY[name], (a,), a.width, out)
        if name == "square":
            a = self.dyn_arg(args[0], name)
            return self.dyn("mul", (a, a), a.width, out)
        if name in ("pow", "__pow__"):
            a = self.dyn_arg(args[0], name)
            p = args[1] if len(args) > 1 else kwargs.get("exponent")
            if not isinstance(p, (int, float)):
                raise Untraceable("pow with a tensor exponent")
            if p == 2:
                return self.dyn("mul", (a, a), a.width, out)
            return self.dyn("pow", (a,), a.width, out, p0=float(p))
        if name in ("clamp", "clip"):
            a = self.dyn_arg(args[0], name)
            lo = args[1] if len(args) > 1 else kwargs.get("min")
            hi = args[2] if len(args) > 2 else kwargs.get("max")
            if isinstance(lo, Tensor) or isinstance(hi, Tensor):
                raise Untraceable("clamp with tensor bounds (use torch.maximum/minimum)")
            return self.dyn(
                "clamp",
                (a,),
                a.width,
                out,
                p0=-math.inf if lo is None else float(lo),
                p1=math.inf if hi is None else float(hi),
            )
        if name in _BINARY:
            return self.binary(_BINARY[name], args, kwargs, out, name)
        if name == "__invert__" or name == "logical_not":
            a = self.dyn_arg(args[0], name)
            return self.dyn("sub", (self.const(1.0), a), a.width, out, grad=False)
        if name == "where":
            cond, a, b = (self.value(x, name) for x in args[:3])
            width = self.out_width(out, name)
            return self.dyn("where", (cond, a, b), width, out)
        if name in ("linear", "matmul", "__matmul__", "mm"):
            return self.matmul(name, args, kwargs, out)
        if name == "__getitem__":
            return self.getitem(args[0], args[1], out)
        if name in ("chunk", "split", "tensor_split"):
            return self.split(name, args, kwargs, out)
        if name in ("narrow",):
            a = self.dyn_arg(args[0], name)
            dim, start, length = args[1], args[2], args[3]
            self.check_feature_dim(dim, 2, name)
            return self.view_slice(a, int(start), int(length), out)
        if name == "cat" or name == "concat" or name == "concatenate":
            return self.cat(args, kwargs, out)
        if name == "unsqueeze":
            return self.unsqueeze(args, kwargs, out)
        if name in ("sum", "mean"):
            return self.reduce(name, args, kwargs, out)
        if name in ("var", "std"):
            return self.variance(name, args, kwargs, out)
        if name == "layer_norm":
            return self.layer_norm(args, kwargs, out)
        if name in ("view", "reshape"):
            return self.reshape(args, out, name)
        if name == "repeat_interleave":
            a = self.dyn_arg(args[0], name)
            k = args[1] if len(args) > 1 else kwargs.get("repeats")
            dim = args[2] if len(args) > 2 else kwargs.get("dim")
            if not isinstance(k, int) or dim not in (-1, 1):
                raise Untraceable("repeat_interleave other than an int repeat along the feature axis")
            return self.dyn("bexpand", (a,), a.width * k, out, k=k)
        if name in ("zeros_like", "ones_like", "full_like"):
            fill = {"zeros_like": 0.0, "ones_like": 1.0}.get(name)
            if fill is None:
                fill = float(args[1] if len(args) > 1 else kwargs["fill_value"])
            return self.bind(out, self.const(fill))
        raise Untraceable(f"operation '{name}' on a value of the step")

    def dyn_arg(self, x: Any, what: str) -> Value:
        v = self.value(x, what)
        if v.kind not in ("dyn",):
            raise Untraceable(f"'{what}' on a {self.describe(v)}")
        return v

    def describe(self, v: Value) -> str:
        return {
            "shift": "delay line slice",
            "push": "delay line",
            "counter": "step counter",
            "next": "step counter",
            "col": "step counter",
            "unsq": "unsqueezed value",
            "blocked": "blocked view",
        }.get(v.kind, v.kind + " value")

    def out_width(self, out: Any, what: str) -> int:
        if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != TRACE_BATCH:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise Untraceable(f"'{what}' gives shape {shape}; the engine computes (B, width) row values")
        return out.shape[1]

    def check_feature_dim(self, dim: Any, rank: int, what: str) -> None:
        if dim not in (-1, rank - 1):
            raise Untraceable(f"'{what}' along dimension {dim}; the engine slices along the feature axis (-1)")

    def binary(self, op: str, args: tuple, kwargs: dict, out: Any, name: str) -> Any:
        a_raw = args[0]
        b_raw = args[1] if len(args) > 1 else kwargs.get("other")
        if kwargs.get("alpha", 1) != 1:
            raise Untraceable(f"'{name}' with alpha")
        if op == "rsub":
            op, a_raw, b_raw = "sub", b_raw, a_raw
        if op == "rdiv":
            op, a_raw, b_raw = "div", b_raw, a_raw
        if kwargs.get("rounding_mode") is not None:
            raise Untraceable(f"'{name}' with rounding_mode")
        a = self.value(a_raw, name)
        b = self.value(b_raw, name)
        if op == "rem":
            if a.kind != "col":
                raise Untraceable("'%' on a value other than the step counter")
            if b.kind != "static":
                raise Untraceable("'%' of the step counter by a value of the step")
            return self.dyn("rem", (b,), self.out_width(out, name), out, grad=False, k=a.attrs["field"])
        if a.kind == "counter" and op == "add" and isinstance(b_raw, (int, float)) and b_raw == 1:
            marker = Value("next", attrs={"field": a.attrs["field"]})
            return self.bind(out, marker)
        for v in (a, b):
            if v.kind not in ("dyn", "static"):
                raise Untraceable(f"'{name}' on a {self.describe(v)}")
        width = self.out_width(out, name)
        grad = None if op not in _COMPARE else False
        return self.dyn(op, (a, b), width, out, grad=grad)

    def matmul(self, name: str, args: tuple, kwargs: dict, out: Any) -> Any:
        v = self.dyn_arg(args[0], name)
        w_raw = args[1] if len(args) > 1 else kwargs.get("weight")
        w = self.value(w_raw, name)
        if w.kind != "static" or len(w.shape) != 2:
            raise Untraceable(f"'{name}' whose matrix depends on the step (the engine multiplies by static matrices)")
        if name != "linear":  # v @ M = v (Mᵀ)ᵀ: the engine takes the (N, K) matrix of F.linear
            wt = self.record_static(torch.Tensor.t, (w_raw,), {}, w_raw.t())
            w = self.of[id(wt)]
        width = self.out_width(out, name)
        bias = args[2] if len(args) > 2 else kwargs.get("bias")
        if bias is None:
            return self.dyn("matmul", (v, w), width, out)
        with torch.no_grad():
            prod = F.linear(args[0], w_raw)
        self.dyn("matmul", (v, w), width, prod)
        return self.binary("add", (prod, bias), {}, out, "linear")

    def view_slice(self, a: Value, start: int, length: int, out: Tensor) -> Tensor:
        if start < 0:
            start += a.width
        if start == 0 and length == a.width:
            return self.bind(out, a)
        v = Value("dyn", length, "slice", (a,), {"start": start}, grad=a.grad, index=len(self.nodes))
        self.nodes.append(v)
        return self.bind(out, v)

    def getitem(self, x: Tensor, index: Any, out: Any) -> Any:
        a = self.value(x, "indexing")
        idx = index if isinstance(index, tuple) else (index,)
        if idx and idx[0] is Ellipsis:
            idx = (slice(None),) * (x.dim() - len(idx) + 1) + idx[1:]
        if not idx or idx[0] != slice(None):
            raise Untraceable("indexing that selects rows of the batch")
        if a.kind == "dyn" and len(idx) == 2 and isinstance(idx[1], slice) and idx[1].step in (None, 1):
            start, stop, _ = idx[1].indices(a.width)
            return self.view_slice(a, start, max(stop - start, 0), out)
        if a.kind == "delay":
            d = a.attrs["delay"]
            if len(idx) == 2 and isinstance(idx[1], int):
                j = idx[1] % d
                return self.dyn("delay", (), a.width, out, grad=a.grad, field=a.attrs["field"], slot=j)
            if len(idx) == 2 and idx[1] == slice(1, None):
                return self.bind(out, Value("shift", a.width, attrs={"field": a.attrs["field"]}))
        if a.kind == "dyn" and len(idx) == 1:
            return self.bind(out, a)
        raise Untraceable(f"indexing {idx!r} of a {self.describe(a)}")

    def split(self, name: str, args: tuple, kwargs: dict, out: Any) -> Any:
        a = self.dyn_arg(args[0], name)
        dim = kwargs.get("dim", args[2] if len(args) > 2 else 0)
        self.check_feature_dim(dim, 2, name)
        parts, start = [], 0
        for piece in out:
            n = piece.shape[-1]
            parts.append(self.view_slice(a, start, n, piece))
            start += n
        return out

    def cat(self, args: tuple, kwargs: dict, out: Tensor) -> Any:
        items = list(args[0])
        dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
        vals = [self.value(t, "cat") for t in items]
        if out.dim() == 3 and len(vals) == 2 and vals[0].kind == "shift" and vals[1].kind == "unsq" and dim in (1, -2):
            return self.bind(out, Value("push", attrs={"field": vals[0].attrs["field"], "value": vals[1].args[0]}))
        self.check_feature_dim(dim, 2, "cat")
        for v in vals:
            if v.kind not in ("dyn", "static"):
                raise Untraceable(f"'cat' of a {self.describe(v)}")
        return self.dyn("cat", tuple(vals), self.out_width(out, "cat"), out)

    def unsqueeze(self, args: tuple, kwargs: dict, out: Tensor) -> Any:
        a = self.value(args[0], "unsqueeze")
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        if a.kind == "counter" and dim in (1, -1):
            return self.bind(out, Value("col", 1, attrs=dict(a.attrs)))
        if a.kind == "dyn" and dim in (1, -2):
            return self.bind(out, Value("unsq", a.width, args=(a,)))
        raise Untraceable(f"'unsqueeze({dim})' of a {self.describe(a)}")

    def reduce(self, name: str, args: tuple, kwargs: dict, out: Any) -> Any:
        a = self.value(args[0], name)
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        keep = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
        if a.kind == "blocked" and dim in (-1, 2) and not keep:
            base, k = a.args[0], a.attrs["k"]
            total = self.dyn("bsum", (base,), base.width // k, out if name == "sum" else out.clone(), k=k)
            if name == "sum":
                return total
            return self.dyn("mul", (self.of[id(total)], self.const(1.0 / k)), base.width // k, out)
        if a.kind != "dyn" or dim not in (-1, 1, (-1,), (1,), [-1], [1]) or not keep:
            raise Untraceable(f"'{name}' other than over the feature axis with keepdim=True")
        op = "rowsum" if name == "sum" else "rowmean"
        return self.dyn(op, (a,), 1, out)

    def _mean(self, a: Value, like: Tensor) -> Tensor:
        with torch.no_grad():
            ex = like.mean(-1, keepdim=True)
        return self.dyn("rowmean", (a,), 1, ex)

    def _centered_var(self, a: Value, x: Tensor, correction: float) -> tuple[Tensor, Tensor]:
        """(x − mean(x), mean((x − mean)²)·w/(w − correction)) as recorded values."""
        mean = self._mean(a, x)
        with torch.no_grad():
            xc_ex = x - mean
        xc = self.dyn("sub", (a, self.of[id(mean)]), a.width, xc_ex)
        sq = self.dyn("mul", (self.of[id(xc)], self.of[id(xc)]), a.width, xc_ex * xc_ex)
        var = self._mean(self.of[id(sq)], sq)
        if correction:
            scale = a.width / (a.width - correction)
            var = self.dyn("mul", (self.of[id(var)], self.const(scale)), 1, var * scale)
        return xc, var

    def variance(self, name: str, args: tuple, kwargs: dict, out: Any) -> Any:
        a = self.dyn_arg(args[0], name)
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        keep = kwargs.get("keepdim", args[3] if len(args) > 3 else False)
        if dim not in (-1, 1, (-1,), [-1]) or not keep:
            raise Untraceable(f"'{name}' other than over the feature axis with keepdim=True")
        correction = kwargs.get("correction")
        if correction is None:
            unbiased = kwargs.get("unbiased", args[2] if len(args) > 2 and isinstance(args[2], bool) else True)
            correction = 1 if unbiased else 0
        _, var = self._centered_var(a, args[0], float(correction))
        if name == "var":
            return self.bind(out, self.of[id(var)])
        return self.dyn("sqrt", (self.of[id(var)],), 1, out)

    def layer_norm(self, args: tuple, kwargs: dict, out: Tensor) -> Any:
        x = args[0]
        a = self.dyn_arg(x, "layer_norm")
        shape = args[1] if len(args) > 1 else kwargs["normalized_shape"]
        weight = args[2] if len(args) > 2 else kwargs.get("weight")
        bias = args[3] if len(args) > 3 else kwargs.get("bias")
        eps = args[4] if len(args) > 4 else kwargs.get("eps", 1e-5)
        if tuple(shape) != (a.width,):
            raise Untraceable(
                f"'layer_norm' over shape {tuple(shape)}; the engine normalises the feature axis ({a.width},)"
            )
        # one instruction (its adjoint recomputes the row's mean and deviation): nine primitive
        # passes over the row would cost several times as much
        w = self.value(weight, "layer_norm") if weight is not None else self.const(1.0)
        b = self.value(bias, "layer_norm") if bias is not None else self.const(0.0)
        return self.dyn("layernorm", (a, w, b), a.width, out, p0=float(eps))

    def reshape(self, args: tuple, out: Tensor, name: str) -> Any:
        a = self.value(args[0], name)
        if (
            a.kind == "dyn"
            and out.dim() == 3
            and out.shape[0] == TRACE_BATCH
            and out.shape[1] * out.shape[2] == a.width
        ):
            return self.bind(out, Value("blocked", a.width, args=(a,), attrs={"k": out.shape[2]}))
        if a.kind == "dyn" and out.dim() == 2 and tuple(out.shape) == (TRACE_BATCH, a.width):
            return self.bind(out, a)
        raise Untraceable(f"'{name}' to shape {tuple(out.shape)} of a {self.describe(a)}")


def _flatten(obj: Any):
    if isinstance(obj, (tuple, list)):
        for o in obj:
            yield from _flatten(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _flatten(o)
    else:
        yield obj


def _substitute(obj: Any, fn: Callable[[Tensor], Any]) -> Any:
    if isinstance(obj, Tensor):
        return fn(obj)
    if isinstance(obj, tuple):
        return tuple(_substitute(o, fn) for o in obj)
    if isinstance(obj, list):
        return [_substitute(o, fn) for o in obj]
    if isinstance(obj, dict):
        return {k: _substitute(v, fn) for k, v in obj.items()}
    return obj


# -- tracing a cell -----------------------------------------------------------------------------------


def trace_cell(cell: Any, dtype: torch.dtype) -> Trace:
    """Trace ``cell.recurrence`` into a :class:`Trace`; :class:`Untraceable` if it cannot be."""
    gen = torch.Generator().manual_seed(0)
    try:
        template = cell.init_state(TRACE_BATCH, dtype=dtype, device=torch.device("cpu"))
    except Exception as err:  # e.g. a state that needs more than a batch size (an attention memory)
        raise Untraceable(
            f"a state its init_state cannot make from a batch size alone ({type(err).__name__}: {err})"
        ) from err
    tensors = state_tensors(template)
    tracer = _Tracer(cell, dtype)
    fields: list[Field] = []
    inputs = []
    for k, t in enumerate(tensors):
        if t.is_floating_point() and t.dim() == 2:
            fields.append(Field("float", t.shape[1]))
            ex = torch.randn(t.shape, generator=gen, dtype=dtype)
            tracer.dyn("state", (), t.shape[1], ex, grad=True, field=k)
        elif t.is_floating_point() and t.dim() == 3:
            fields.append(Field("delay", t.shape[2], delay=t.shape[1]))
            ex = torch.randn(t.shape, generator=gen, dtype=dtype)
            tracer.bind(ex, Value("delay", t.shape[2], attrs={"field": k, "delay": t.shape[1]}))
        elif not t.is_floating_point() and t.dim() == 1:
            fields.append(Field("counter", 1))
            ex = torch.randint(0, 7, t.shape, generator=gen)
            tracer.bind(ex, Value("counter", 1, attrs={"field": k}))
        else:
            raise Untraceable(f"a state tensor of shape (B, {', '.join(map(str, t.shape[1:]))}) and dtype {t.dtype}")
        inputs.append(ex)
    state = rebuild_state(template, inputs)
    gi = torch.randn(TRACE_BATCH, cell.projection_size, generator=gen, dtype=dtype)
    tracer.dyn("gi", (), cell.projection_size, gi, grad=True)
    try:
        with _Recorder(tracer):
            out, new_state = cell.recurrence(gi, state)
    except Untraceable:
        raise
    except Exception as err:  # an operation that fails on the example: report it as untraceable
        raise Untraceable(f"the step failed while tracing: {type(err).__name__}: {err}") from err
    new = state_tensors(new_state)
    if len(new) != len(fields):
        raise Untraceable(f"the new state has {len(new)} tensors, the old one {len(fields)}")
    new_fields: list[Value | None] = []
    pushes: dict[int, Value] = {}
    for k, (f, t) in enumerate(zip(fields, new)):
        v = tracer.of.get(id(t))
        if f.kind == "counter":
            if v is None or v.kind != "next" or v.attrs["field"] != k:
                raise Untraceable(f"the step counter (state tensor {k}) must advance as t + 1")
            new_fields.append(None)
        elif f.kind == "delay":
            if v is None or v.kind != "push" or v.attrs["field"] != k:
                raise Untraceable(
                    f"the delay line (state tensor {k}) must advance as cat([past[:, 1:], v.unsqueeze(1)], 1)"
                )
            pushes[k] = v.attrs["value"]
            new_fields.append(None)
        else:
            if v is None or v.kind not in ("dyn",) or v.width != f.width:
                raise Untraceable(f"state tensor {k}'s new value is not a (B, {f.width}) value of the step")
            new_fields.append(v)
    o = tracer.of.get(id(out))
    if o is None or o.kind != "dyn":
        raise Untraceable("the step's output is not a value of the step")
    return Trace(
        fields, tracer.nodes, tracer.static_values, tracer.recipes, o, new_fields, pushes, template, tracer.ops
    )
