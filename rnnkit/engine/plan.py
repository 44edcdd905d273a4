r"""Laying out a traced step for the compiled time loop: stages, storage and adjoints.

:func:`plan` turns a :class:`~rnnkit.engine.trace.Trace` into the tables that
``csrc/program.cpp`` executes (:class:`Plan`). Three decisions are made here, once per cell:

**Stages.** A step is a few recurrent matrix products with element-wise work between them. A
product runs over the whole batch with BLAS, so it needs its input complete for every row: a
product whose input is the previous state (or h(t−d)) runs at the start of the step (stage 0);
one whose input is computed in the step — the MGU's ``U_h (f ⊙ h)`` — runs at the start of the
next stage, after the element-wise work that computes it. Element-wise work runs row by row.

**Storage.** Each value gets one place: a new state field's value is written straight into that
field's (T, B, w) storage (which is also the layer's output where the output is a state field);
values that back-propagation reads — a sigmoid's output, a product's other factor, the input of
a matrix product, a layer norm's row mean and 1/σ — go in a saved (T, B, ·) frame; matrix
product outputs that nothing reads
later share one batch-wide buffer; everything else lives in a per-row scratch row that stays in
cache. Slices are views: they cost nothing, forward or backward.

**Adjoints.** Each element-wise instruction gets its adjoint in reverse order, with the place its
gradient goes: the projected input's gradient, the previous state's, a delay line's history, a
matrix product's output gradient (kept for all steps: the weight gradient is one GEMM after the
loop), per-row accumulators for the static values (summed over rows at the end), or a
batch-wide gradient frame. Within a step, the first adjoint to reach a gradient stores into it
and the later ones add, so neither the frame nor the (T, B, ·) gradients of the projected input
and of the products need zeroing (a layout where some adjoint would add first, or read before
anything wrote, zeroes that one instead: the frame every step, the others once).

Before all this, a few patterns are fused so they cost one pass over the row instead of two:
``W v + x`` (the product's output starts as x), ``a * b + c`` and ``x + (p + q)``.

Symbols: T time, B batch, w a value's width.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .trace import Trace, Untraceable, Value

_SOURCES = ("gi", "state", "delay")
_NO_GRAD_OPS = ("gt", "ge", "lt", "le", "eq", "ne", "rem")


def _needs(op: str, grads: tuple[bool, ...]) -> set:
    """Which forward values the adjoint of ``op`` reads ('o' for its output, i for operand i),
    given which operands need a gradient."""
    if op in ("mul", "muladd"):
        return ({1} if grads[0] else set()) | ({0} if len(grads) > 1 and grads[1] else set())
    if op == "div":
        return ({1} if grads[0] else set()) | ({"o", 1} if grads[1] else set())
    if op in ("max", "min"):
        return {0, 1}
    if op in ("sigmoid", "tanh", "relu", "exp", "sqrt", "rsqrt"):
        return {"o"}
    if op in ("log", "abs", "pow", "clamp", "layernorm"):
        return {0}
    if op == "where":
        return {0}
    return set()


@dataclass
class Plan:
    """A laid-out step: the extension's ``Program`` and what the Python side needs around it."""

    program: Any
    trace: Trace
    static_slots: list[int]  # trace static index of each slot the program reads
    slot_grad: list[bool]  # whether each slot's gradient is computed
    fields: list = field(default_factory=list)
    stats: dict = field(default_factory=dict)


class _Layout:
    def __init__(self, codes: dict) -> None:
        self.codes = codes
        self.buffers: list[tuple[int, int, int]] = []
        self.index: dict[tuple[int, int, int], int] = {}

    def buf(self, kind: str, p: int = 0, q: int = 0) -> int:
        key = (self.codes["buffers"][kind], p, q)
        if key not in self.index:
            self.index[key] = len(self.buffers)
            self.buffers.append(key)
        return self.index[key]


def plan(trace: Trace, ext: Any) -> Plan:
    """Lay out ``trace`` for the extension ``ext``; :class:`Untraceable` for what it cannot run."""
    codes = ext.codes()
    ops, cols, gcols = codes["ops"], codes["columns"], codes["gemm_columns"]
    L = _Layout(codes)

    # -- what is live: everything the output, the new state and the delay lines read -------------
    live: set[int] = set()
    stack: list[Value] = [trace.output] + [v for v in trace.new_fields if v is not None] + list(trace.pushes.values())
    while stack:
        v = stack.pop()
        if id(v) in live:
            continue
        live.add(id(v))
        stack.extend(a for a in v.args if isinstance(a, Value))
    nodes = [v for v in trace.nodes if id(v) in live]

    def root(v: Value) -> tuple[Value, int]:
        off = 0
        while v.op == "slice":
            off += v.attrs["start"]
            v = v.args[0]
        return v, off

    # -- stages --------------------------------------------------------------------------------------
    def stages_of(nodes: list[Value]) -> tuple[dict[int, int], dict[int, bool]]:
        """Each value's stage, and whether the element-wise pass of its stage makes it (or a
        source / a matrix product makes it before that pass)."""
        stage: dict[int, int] = {}
        made_by_ops: dict[int, bool] = {}
        for v in nodes:
            if v.op in _SOURCES:
                stage[id(v)], made_by_ops[id(v)] = 0, False
            elif v.op == "slice":
                r, _ = root(v)
                stage[id(v)], made_by_ops[id(v)] = stage[id(r)], made_by_ops[id(r)]
            elif v.op == "matmul":
                src = v.args[0]
                s = stage[id(src)] + (1 if (made_by_ops[id(src)] or root(src)[0].op == "matmul") else 0)
                stage[id(v)], made_by_ops[id(v)] = s, False
            else:
                dyn = [a for a in v.args if isinstance(a, Value) and a.kind == "dyn"]
                stage[id(v)] = max((stage[id(a)] for a in dyn), default=0)
                made_by_ops[id(v)] = True
        return stage, made_by_ops

    def uses_of(nodes: list[Value]) -> dict[int, int]:
        uses: dict[int, int] = {}
        for v in nodes:
            if v.op != "slice":
                for a in [*v.args, *v.attrs.get("init", ())]:
                    if isinstance(a, Value) and a.kind == "dyn":
                        uses[id(root(a)[0])] = uses.get(id(root(a)[0]), 0) + 1
        for v in [trace.output, *(f for f in trace.new_fields if f is not None), *trace.pushes.values()]:
            uses[id(root(v)[0])] = uses.get(id(root(v)[0]), 0) + 1
        return uses

    # -- fusion: fewer passes over each row ---------------------------------------------------------
    # (1) `W v + x` becomes one matrix product whose output starts as x (a bias, the projected
    #     input, anything ready before the product): the addition costs no pass of its own;
    # (2) `a * b + c` becomes one multiply-add, and `x + (p + q)` one three-way addition (a layer
    #     norm's output plus a bias plus the projected input, say).
    stage, made_by_ops = stages_of(nodes)
    uses = uses_of(nodes)
    order = {id(v): i for i, v in enumerate(nodes)}
    dead: set[int] = set()

    def ready_before(x: Value, m: Value) -> bool:
        if x.kind == "static":
            return len(x.shape) <= 1 and (x.width in (1, m.width))
        if x.width not in (1, m.width) or root(x)[0] is m:
            return False
        if not made_by_ops[id(x)] and stage[id(x)] == 0 and root(x)[0].op in _SOURCES:
            return True
        if made_by_ops[id(x)]:
            return stage[id(x)] < stage[id(m)]
        return stage[id(x)] < stage[id(m)] or (stage[id(x)] == stage[id(m)] and order[id(root(x)[0])] < order[id(m)])

    for v in nodes:
        if v.op != "add" or len(v.attrs.get("init", ())) >= 3:
            continue
        for i in (0, 1):
            m, x = v.args[i], v.args[1 - i]
            if (
                m.kind == "dyn"
                and m.op == "matmul"
                and uses.get(id(m)) == 1
                and m.width == v.width
                and len(m.attrs.get("init", ())) < 3
                and ready_before(x, m)
            ):
                v.op, v.args, v.attrs = "matmul", m.args, {"init": [*m.attrs.get("init", ()), x]}
                stage[id(v)], made_by_ops[id(v)], order[id(v)] = stage[id(m)], False, order[id(m)]
                dead.add(id(m))
                break
    nodes = [v for v in nodes if id(v) not in dead]
    uses = uses_of(nodes)
    for v in nodes:
        if v.op != "add":
            continue
        for i in (0, 1):
            m, x = v.args[i], v.args[1 - i]
            if m.kind == "dyn" and m.op == "mul" and uses.get(id(m)) == 1 and m.width == v.width:
                v.op, v.args = "muladd", (m.args[0], m.args[1], x)
                dead.add(id(m))
                break
        else:
            for i in (0, 1):
                m, x = v.args[i], v.args[1 - i]
                if m.kind == "dyn" and m.op == "add" and uses.get(id(m)) == 1 and m.width == v.width:
                    v.op, v.args = "add3", (x, m.args[0], m.args[1])  # x + (p + q): the same sum, bit for bit
                    dead.add(id(m))
                    break
    nodes = [v for v in nodes if id(v) not in dead]
    stage, made_by_ops = stages_of(nodes)
    uses = uses_of(nodes)

    # -- static slots ------------------------------------------------------------------------------
    slots: dict[int, int] = {}
    slot_values: list[Value] = []
    matrix_slots: set[int] = set()
    elementwise_slots: set[int] = set()
    bias_slots: set[int] = set()

    def slot(s: Value) -> int:
        if s.index not in slots:
            slots[s.index] = len(slot_values)
            slot_values.append(s)
        return slots[s.index]

    for v in nodes:
        if v.op == "matmul":
            matrix_slots.add(slot(v.args[1]))
            bias_slots.update(slot(x) for x in v.attrs.get("init", ()) if x.kind == "static")
        elif v.op not in _SOURCES and v.op != "slice":
            elementwise_slots.update(slot(a) for a in v.args if isinstance(a, Value) and a.kind == "static")
    if matrix_slots & (elementwise_slots | bias_slots):
        raise Untraceable("a static tensor used both as a matrix and element-wise")
    n_stages = max([stage[id(v)] for v in nodes] + [0]) + 1

    def width_of(a: Value, out_width: int, what: str) -> int:
        if a.kind == "dyn":
            return a.width
        n = 1
        for d in a.shape:
            n *= d
        if n not in (1, out_width) or (len(a.shape) == 2 and a.shape[0] != 1) or len(a.shape) > 2:
            raise Untraceable(f"'{what}' with a static tensor of shape {a.shape} against width {out_width}")
        return n

    def has_grad(a: Value) -> bool:
        return a.grad

    # -- storage ---------------------------------------------------------------------------------------
    saved_roots: set[int] = set()
    batch_roots: set[int] = set()
    for v in nodes:
        if v.op in _SOURCES or v.op == "slice":
            continue
        if v.op == "matmul":
            src, _ = root(v.args[0])
            if src.op not in _SOURCES:
                saved_roots.add(id(src))  # its history gives the weight gradient
            batch_roots.add(id(v))
            for x in v.attrs.get("init", ()):  # read over the whole batch before the product
                if x.kind == "dyn" and root(x)[0].op not in _SOURCES:
                    batch_roots.add(id(root(x)[0]))
            continue
        if not v.grad:
            continue
        grads = tuple(isinstance(a, Value) and a.grad for a in v.args)
        for need in _needs(v.op, grads):
            target = v if need == "o" else v.args[need]
            if target.kind == "dyn":
                saved_roots.add(id(root(target)[0]))
    for v in trace.pushes.values():
        saved_roots.add(id(root(v)[0]))
    for v in nodes:  # a value read in a later stage outlives the per-row scratch of its own
        for a in v.args:
            if (
                isinstance(a, Value)
                and a.kind == "dyn"
                and v.op not in ("slice", "matmul")
                and stage[id(a)] < stage[id(v)]
            ):
                batch_roots.add(id(root(a)[0]))

    loc: dict[int, tuple[int, int]] = {}  # id(root) -> (buffer, offset), forward
    claimed: dict[int, int] = {}  # id(root) -> field
    copies: list[tuple[tuple[int, int], tuple[int, int], Value, int]] = []  # (dst fwd, dst grad, src, width)
    for k, v in enumerate(trace.new_fields):
        if v is None:
            continue
        r, off = root(v)
        if v is r and r.op not in _SOURCES and r.op != "matmul" and id(r) not in claimed:
            claimed[id(r)] = k
            loc[id(r)] = (L.buf("sout", k), 0)
        else:
            copies.append(((L.buf("sout", k), 0), (L.buf("g_dsout", k), 0), v, v.width))
    out_root, out_off = root(trace.output)
    if trace.output is out_root and id(out_root) in claimed:
        out_alias = claimed[id(out_root)]
    else:
        out_alias = -1
        copies.append(((L.buf("out"), 0), (L.buf("g_dy"), 0), trace.output, trace.output.width))

    widths = {"saved": 0, "btemp": 0, "rtemp": 0, "frame": 0}

    def alloc(kind: str, w: int) -> int:
        off = widths[kind]
        widths[kind] += w
        return off

    fixed: dict[int, tuple[int, int]] = {
        id(r): (L.buf("g_dsout", k), 0) for r in nodes for k in [claimed.get(id(r))] if k is not None
    }
    for v in nodes:
        if v.op == "slice" or id(v) in loc:
            continue
        if v.op == "gi":
            loc[id(v)], fixed[id(v)] = (L.buf("gi"), 0), (L.buf("g_gi"), 0)
        elif v.op == "state":
            k = v.attrs["field"]
            loc[id(v)], fixed[id(v)] = (L.buf("sin", k), 0), (L.buf("g_dsin", k), 0)
        elif v.op == "delay":
            k, j = v.attrs["field"], v.attrs["slot"]
            loc[id(v)], fixed[id(v)] = (L.buf("delay", k, j), 0), (L.buf("g_dhist", k, j), 0)
        elif id(v) in saved_roots:
            loc[id(v)] = (L.buf("saved"), alloc("saved", v.width))
        elif id(v) in batch_roots:
            loc[id(v)] = (L.buf("btemp"), alloc("btemp", v.width))
        else:
            loc[id(v)] = (L.buf("rtemp"), alloc("rtemp", v.width))

    # -- gradient places: a value used once, by an addition of its own width, shares its gradient
    # with the sum's (the adjoint would only copy it), so `gates = gi + W h + b` keeps one gradient,
    # the projected input's, which is also what the weight gradient of W reads.
    parent: dict[int, int] = {}
    persistent = {id(v) for v in nodes if v.op == "matmul"}  # a product's output gradient is kept for all steps
    g_gi = L.buf("g_gi")

    def find(i: int) -> int:
        while parent.get(i, i) != i:
            i = parent[i]
        return i

    passthrough = {
        "add": lambda v: v.args,
        "add3": lambda v: v.args,
        "sub": lambda v: v.args[:1],
        "muladd": lambda v: v.args[2:],
        "matmul": lambda v: v.attrs.get("init", ()),
    }
    for v in nodes:
        if v.op not in passthrough or not v.grad:
            continue
        for a in passthrough[v.op](v):
            if not (
                isinstance(a, Value)
                and a.kind == "dyn"
                and a.op != "slice"
                and a.grad
                and a.width == v.width
                and uses.get(id(a)) == 1
            ):
                continue
            ra, rv = find(id(a)), find(id(v))
            fa, fv = fixed.get(ra), fixed.get(rv)
            if ra == rv or (fa and fv):
                continue
            fx, pers = fa or fv, ra in persistent or rv in persistent
            if pers and fx and fx[0] != g_gi:
                continue
            parent[ra] = rv
            if fx:
                fixed[rv] = fx
            if pers:
                persistent.add(rv)
    gloc: dict[int, tuple[int, int]] = {}  # id(root) -> (buffer, offset) of its gradient
    dg_widths: list[int] = []
    for v in nodes:
        if v.op == "slice" or not v.grad:
            continue
        c = find(id(v))
        if c not in gloc:
            if c in fixed:
                gloc[c] = fixed[c]
            elif c in persistent:
                gloc[c] = (L.buf("g_dg", len(dg_widths)), 0)
                dg_widths.append(v.width)
            else:
                gloc[c] = (L.buf("g_frame"), alloc("frame", v.width))
        gloc[id(v)] = gloc[c]

    def where(a: Value) -> tuple[int, int]:
        if a.kind == "static":
            return L.buf("static", slot(a)), 0
        r, off = root(a)
        b, o = loc[id(r)]
        return b, o + off

    def gwhere(a: Value) -> tuple[int, int]:
        if a.kind == "static":
            s = slot(a)
            return (L.buf("g_acc", s), 0) if a.grad else (-1, 0)
        r, off = root(a)
        if not a.grad or id(r) not in gloc:
            return -1, 0
        b, o = gloc[id(r)]
        return b, o + off

    # -- instructions ------------------------------------------------------------------------------
    def row(
        op: str,
        w: int,
        out: tuple[int, int],
        operands: list[tuple[tuple[int, int], int]],
        k: int = 0,
        gout: tuple[int, int] = (-1, 0),
        gops: list[tuple[int, int]] = (),
        keep: tuple[int, int] = (-1, 0),
    ) -> list[int]:
        r = [0] * len(cols)
        r[cols["op"]], r[cols["w"]], r[cols["obuf"]], r[cols["ooff"]], r[cols["k"]] = ops[op], w, out[0], out[1], k
        r[cols["xbuf"]], r[cols["xoff"]] = keep
        for name in ("a", "b", "c"):
            r[cols[name + "buf"]] = -1
            r[cols["g" + name + "buf"]] = -1
        for name, ((b, o), wd) in zip(("a", "b", "c"), operands):
            r[cols[name + "buf"]], r[cols[name + "off"]], r[cols[name + "w"]] = b, o, wd
        r[cols["gobuf"]], r[cols["gooff"]] = gout
        for name, (b, o) in zip(("a", "b", "c"), gops):
            r[cols["g" + name + "buf"]], r[cols["g" + name + "off"]] = b, o
        return r

    fwd: list[list[list[int]]] = [[] for _ in range(n_stages)]
    fwd_p: list[list[list[float]]] = [[] for _ in range(n_stages)]
    bwd: list[list[list[int]]] = [[] for _ in range(n_stages)]
    bwd_p: list[list[list[float]]] = [[] for _ in range(n_stages)]

    def shares_gradient(a: Value, out_v: Value | None) -> bool:
        return out_v is not None and a.kind == "dyn" and a.op != "slice" and find(id(a)) == find(id(out_v))

    def emit(
        s: int,
        op: str,
        w: int,
        out_v: Value | None,
        out_loc,
        out_gloc,
        args: list[Value],
        k: int = 0,
        p: tuple[float, float] = (0.0, 0.0),
    ) -> None:
        operands = [
            (where(a), width_of(a, w, op) if op not in ("rowsum", "rowmean", "bsum", "bexpand") else a.width)
            for a in args
        ]
        needs_grad = op not in _NO_GRAD_OPS and out_gloc[0] >= 0
        # a layer norm keeps its row's mean and 1/σ in the saved frame, so its adjoint need not
        # recompute them (two of its passes over the row)
        keep = (L.buf("saved"), alloc("saved", 2)) if op == "layernorm" and needs_grad else (-1, 0)
        fwd[s].append(row(op, w, out_loc, operands, k, keep=keep))
        fwd_p[s].append(list(p))
        if not needs_grad:
            return
        gops = [
            gwhere(a) if (op != "where" or i > 0) and not shares_gradient(a, out_v) else (-1, 0)
            for i, a in enumerate(args)
        ]
        if all(g[0] < 0 for g in gops):
            return
        bwd[s].append(row(op, w, out_loc, operands, k, out_gloc, gops, keep))
        bwd_p[s].append(list(p))

    for v in nodes:
        if v.op in _SOURCES or v.op in ("slice", "matmul"):
            continue
        s = stage[id(v)]
        out_loc = loc[id(v)]
        out_g = gloc.get(id(v), (-1, 0)) if v.grad else (-1, 0)
        if v.op == "cat":
            pos = 0
            for a in v.args:
                emit(
                    s,
                    "copy",
                    a.width,
                    None,
                    (out_loc[0], out_loc[1] + pos),
                    (out_g[0], out_g[1] + pos) if out_g[0] >= 0 else out_g,
                    [a],
                )
                pos += a.width
            continue
        p = (v.attrs.get("p0", 0.0), v.attrs.get("p1", 0.0))
        k = v.attrs.get("k", 0)
        emit(s, v.op, v.width, v, out_loc, out_g, list(v.args), k=k, p=p)
    for dst, gdst, src, w in copies:
        emit(n_stages - 1, "copy", w, None, dst, gdst, [src])

    pre: list[list[int]] = []
    for k, v in trace.pushes.items():
        g = gwhere(v)
        if g[0] >= 0:
            pre.append(row("accum", v.width, (-1, 0), [((L.buf("g_dhistpush", k), 0), v.width)], gout=g))

    gemms: list[list[int]] = []
    biases: list[list[int]] = []  # (product, static slot): the static's gradient is Σ over t, b of the output's
    for v in nodes:
        if v.op != "matmul":
            continue
        src, W = v.args
        r = [0] * len(gcols)
        inits = v.attrs.get("init", ())
        for i, x in enumerate(inits, start=1):
            b, o = where(x)
            r[gcols[f"i{i}buf"]], r[gcols[f"i{i}off"]], r[gcols[f"i{i}w"]] = b, o, width_of(x, v.width, "matmul")
            if x.kind == "static":
                if x.grad:
                    biases.append([len(gemms), slot(x)])
            elif x.grad and v.grad and not shares_gradient(x, v):
                # the start value's gradient is the output's: added row by row once the stage's
                # element-wise adjoints have filled it (first in forward order, so last backward)
                bwd[stage[id(v)]].insert(
                    0,
                    row(
                        "copy",
                        v.width,
                        loc[id(v)],
                        [(where(x), width_of(x, v.width, "copy"))],
                        gout=gloc[id(v)],
                        gops=[gwhere(x)],
                    ),
                )
                bwd_p[stage[id(v)]].insert(0, [0.0, 0.0])
        for i in range(len(inits) + 1, 4):
            r[gcols[f"i{i}buf"]] = -1
        ib, io = where(src)
        ob, oo = loc[id(v)]
        gb, go = gwhere(src)
        r[gcols["ibuf"]], r[gcols["ioff"]], r[gcols["obuf"]], r[gcols["ooff"]] = ib, io, ob, oo
        r[gcols["mat"]], r[gcols["n"]], r[gcols["k"]] = slot(W), v.width, src.width
        r[gcols["gibuf"]], r[gcols["gioff"]], r[gcols["stage"]] = gb, go, stage[id(v)]
        r[gcols["gobuf"]], r[gcols["gooff"]] = gloc[id(v)]
        if W.shape != (v.width, src.width):
            raise Untraceable(f"a matrix of shape {W.shape} for a product ({src.width} → {v.width})")
        gemms.append(r)

    fields = []
    for k, f in enumerate(trace.fields):
        push_buf, push_off = -1, 0
        if f.kind == "delay":
            push_buf, push_off = where(trace.pushes[k])
        fields.append([codes["fields"][f.kind], f.width, f.delay, push_buf, push_off])

    # -- stores instead of adds: the first adjoint to reach a gradient in a step writes it, so it
    # needs no clearing; an adjoint whose incoming gradient nothing wrote is dropped. Tracked per
    # step: the gradient frame (batch-wide, reused every step), the projected input's gradient and
    # the kept product-output gradients ((T, B, ·), one slice per step). A slice that some step
    # leaves partly unwritten, or that is read before it is fully written, is zeroed instead:
    # the frame every step, the others once before the loop. -----------------------------------------
    buffers = codes["buffers"]
    frame_buf = L.index.get((buffers["g_frame"], 0, 0), -1)
    per_step = {frame_buf: widths["frame"]} if frame_buf >= 0 else {}
    gi_buf = L.index.get((buffers["g_gi"], 0, 0), -1)
    if gi_buf >= 0:
        per_step[gi_buf] = next((v.width for v in trace.nodes if v.op == "gi"), 0)
    dg_bufs = {L.index.get((buffers["g_dg"], q, 0), -1): q for q in range(len(dg_widths))}
    per_step.update({b: dg_widths[q] for b, q in dg_bufs.items() if b >= 0})
    written = {b: [False] * w for b, w in per_step.items()}
    must_zero: set[int] = set()  # buffers that a plain store per step does not cover

    def region(b: int, off: int, w: int) -> list[bool] | None:
        return written[b][off : off + w] if b in written else None

    def mark(b: int, off: int, w: int) -> None:
        written[b][off : off + w] = [True] * w

    def stored(b: int, off: int, w: int) -> bool:
        """A write of gradient region (b, off, w): whether it may store (the first to write there)."""
        seen = region(b, off, w)
        if seen is None:
            return False
        if any(seen) and not all(seen):
            must_zero.add(b)  # partly written: it adds to a slice that must start at zero
        mark(b, off, w)
        return not any(seen)

    for s_ in reversed(range(n_stages)):
        batch = [("pre", r) for r in pre] if s_ == n_stages - 1 else []
        batch += [("bwd", r) for r in reversed(bwd[s_])]
        dropped = []
        for kind, r in batch:
            if kind == "pre":
                if stored(r[cols["gobuf"]], r[cols["gooff"]], r[cols["w"]]):
                    r[cols["flags"]] |= 1
                continue
            seen = region(r[cols["gobuf"]], r[cols["gooff"]], r[cols["w"]])
            if seen is not None and not any(seen):
                dropped.append(r)  # its incoming gradient is zero this step: nothing to add
                continue
            if seen is not None and not all(seen):
                must_zero.add(r[cols["gobuf"]])
            for bit, name in enumerate(("a", "b", "c")):
                if stored(r[cols[f"g{name}buf"]], r[cols[f"g{name}off"]], r[cols[f"{name}w"]]):
                    r[cols["flags"]] |= 1 << bit
        for r in dropped:
            i = next(i for i, x in enumerate(bwd[s_]) if x is r)
            del bwd[s_][i], bwd_p[s_][i]
        for g in gemms:
            if g[gcols["stage"]] != s_:
                continue
            seen = region(g[gcols["gobuf"]], g[gcols["gooff"]], g[gcols["n"]])
            if seen is not None and not all(seen):
                must_zero.add(g[gcols["gobuf"]])  # BLAS reads the whole output gradient
            if stored(g[gcols["gibuf"]], g[gcols["gioff"]], g[gcols["k"]]):
                g[gcols["gstore"]] = 1
    must_zero.update(b for b, seen in written.items() if not all(seen) and b != frame_buf)
    clear_frame = frame_buf in must_zero
    zero_gi = gi_buf in must_zero
    zero_dg = [int(L.index.get((buffers["g_dg"], q, 0), -1) in must_zero) for q in range(len(dg_widths))]

    # -- the Program -----------------------------------------------------------------------------------
    def table(rows: list[list[int]], ncols: int, dtype=torch.int64) -> torch.Tensor:
        return torch.tensor(rows, dtype=dtype).reshape(len(rows), ncols)

    P = ext.Program()
    P.buffers = table([list(b) for b in L.buffers], 3)
    flat_fwd = [r for s in fwd for r in s]
    P.forward = table(flat_fwd, len(cols))
    P.forward_p = table([r for s in fwd_p for r in s], 2, torch.float64)
    P.forward_stages = torch.tensor([0] + list(_cumsum(len(s) for s in fwd)), dtype=torch.int64)
    flat_bwd = [r for s in bwd for r in reversed(s)]
    P.backward = table(flat_bwd, len(cols))
    P.backward_p = table([r for s in bwd_p for r in reversed(s)], 2, torch.float64)
    P.backward_stages = torch.tensor([0] + list(_cumsum(len(s) for s in bwd)), dtype=torch.int64)
    P.pre = table(pre, len(cols))
    P.gemms = table(gemms, len(gcols))
    P.biases = table(biases, 2)
    P.fields = table(fields, 5)
    acc = []
    for s, v in enumerate(slot_values):
        acc.append(width_of(v, v.width, "static") if (v.grad and s in elementwise_slots) else 0)
    P.acc_widths = torch.tensor(acc, dtype=torch.int64)
    P.dg_widths = torch.tensor(dg_widths, dtype=torch.int64)
    P.proj_size = next((v.width for v in trace.nodes if v.op == "gi"), 0)
    P.saved_width, P.btemp_width = widths["saved"], widths["btemp"]
    P.rtemp_width, P.frame_width = widths["rtemp"], widths["frame"]
    P.out_width, P.out_alias = trace.output.width, out_alias
    P.clear_frame = clear_frame
    P.zero_gi = zero_gi
    P.zero_dg = torch.tensor(zero_dg, dtype=torch.int64)
    stats = dict(
        stages=n_stages,
        forward=len(flat_fwd),
        backward=len(flat_bwd),
        gemms=len(gemms),
        clear_frame=clear_frame,
        zero_gi=zero_gi,
        zero_dg=sum(zero_dg),
        **widths,
    )
    return Plan(P, trace, [v.index for v in slot_values], [v.grad for v in slot_values], trace.fields, stats)


def _cumsum(xs):
    total = 0
    for x in xs:
        total += x
        yield total
