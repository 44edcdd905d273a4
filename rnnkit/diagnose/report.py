"""All diagnostics of a cell at once, comparisons of several, and the report folder.

Symbols: T time steps, B batch, I input size, H hidden size.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..cells.base import RecurrentCell, check_size
from ..cells.registry import CELLS, make_cell
from . import plot
from .compute import (
    GradientFlow,
    JacobianProducts,
    MatrixSpectrum,
    NonlinearityStats,
    TimeScales,
    TrainingLog,
    capture_layer_inputs,
    decay_time,
    finite,
    gradient_vs_lag,
    jacobian_products,
    recurrent_layers,
    saturation,
    spectrum,
    time_scales,
    untrained_copy,
    verdict,
)

# The comparison the seeds describe: tanh RNN, IRNN (identity init, ReLU), GRU, LSTM.
DEFAULT_CELLS = ("elman", "irnn", "gru", "lstm")
SUMMARY_LAG = 50  # the lag the terminal summary quotes (or T, if shorter)


@dataclass
class CellReport:
    """Every diagnostic of one cell on one input: see :mod:`rnnkit.diagnose.compute`."""

    name: str
    flow: GradientFlow
    jacobians: JacobianProducts
    spectrum: dict[str, MatrixSpectrum]
    saturation: dict[str, NonlinearityStats]
    time_scales: TimeScales | None

    def summary_lag(self, lag: int = SUMMARY_LAG) -> int:
        """``lag``, or the longest lag measured (T) if that is shorter."""
        return min(lag, len(self.flow.lags) - 1)

    def numbers(self, lag: int = SUMMARY_LAG) -> dict:
        """The headline numbers: gradient ratio at ``lag``, its verdict, rate per step, decay time."""
        lag = self.summary_lag(lag)
        ratio = self.flow.ratio(lag)
        rate, time = decay_time(self.flow.grad_norm)
        return {
            "lag": lag,
            "ratio": finite(ratio),
            "verdict": verdict(ratio),
            "rate_per_step": finite(rate),
            "decay_time": finite(time),
        }

    def summary(self, lag: int = SUMMARY_LAG) -> str:
        """One line, e.g. ``elman: gradient at lag 50 is 3.1e-09 of lag 0: vanishing (...)``."""
        n = self.numbers(lag)
        lag = n["lag"]
        ratio = self.flow.ratio(lag)
        text = f"{self.name}: gradient at lag {lag} is {ratio:.1e} of lag 0: {n['verdict']}"
        details = []
        if n["rate_per_step"] is not None:
            details.append(f"×{n['rate_per_step']:.3g} per step")
        blocks = self.jacobians.blocks
        details.append(f"‖∂h(T)/∂h(T−{lag})‖ {float(blocks[self.jacobians.output_block][lag]):.1e}")
        memory = next((b for b in blocks if b.split(".")[-1] == "c"), None)
        if memory:
            details.append(f"cell path ‖∂c(T)/∂c(T−{lag})‖ {float(blocks[memory][lag]):.1e}")
        radii = {k: s.spectral_radius for k, s in self.spectrum.items() if s.spectral_radius is not None}
        if radii:
            top = max(radii, key=radii.get)
            details.append(f"spectral radius {radii[top]:.3g}" + ("" if len(radii) == 1 else f" ({top})"))
        if self.saturation:
            most = max(self.saturation, key=lambda k: self.saturation[k].saturated)
            details.append(f"most saturated {most} {100 * self.saturation[most].saturated:.0f}%")
        ts = self.time_scales
        if ts is not None:
            unit = "time constants" if ts.kind == "leaky" else "periods"
            measured = [v for v in ts.group_decay_time.values() if math.isfinite(v)]
            span = f"; measured decay {min(measured):.3g}–{max(measured):.3g} steps" if measured else ""
            details.append(f"{unit} {float(ts.per_unit.min()):.3g}–{float(ts.per_unit.max()):.3g}{span}")
        return f"{text} ({'; '.join(details)})"

    def to_dict(self) -> dict:
        """The numbers as JSON-ready lists and floats (inf/NaN as None)."""
        return {
            "summary": self.numbers(),
            "gradient_vs_lag": self.flow.to_dict(),
            "jacobian_products": self.jacobians.to_dict(),
            "spectrum": {k: v.to_dict() for k, v in self.spectrum.items()},
            "saturation": {k: v.to_dict() for k, v in self.saturation.items()},
            "time_scales": None if self.time_scales is None else self.time_scales.to_dict(),
        }


def diagnose_cell(
    cell: RecurrentCell,
    x: Tensor,
    state: Any = None,
    *,
    name: str = "cell",
    loss: str = "last",
    seed: int = 0,
    top: int = 4,
    jacobian_sequences: int | None = None,
) -> CellReport:
    """Run every diagnostic of ``cell`` on the input x (T, B, I) from ``state`` (None: zeros).

    ``loss`` and ``seed`` are :func:`~rnnkit.diagnose.compute.gradient_vs_lag`'s; ``top`` and
    ``jacobian_sequences`` (the first sequences the Jacobian products average over, None: all)
    :func:`~rnnkit.diagnose.compute.jacobian_products`'s. ‖W^t‖ is computed up to t = T.
    """
    flow = gradient_vs_lag(cell, x, state, loss=loss, seed=seed)
    return CellReport(
        name=name,
        flow=flow,
        jacobians=jacobian_products(cell, x, state, top=top, sequences=jacobian_sequences),
        spectrum=spectrum(cell, max_power=x.shape[0]),
        saturation=saturation(cell, x, state),
        time_scales=time_scales(cell, flow),
    )


def random_input(steps: int, batch: int, input_size: int, seed: int = 0) -> Tensor:
    """x (T, B, I) from N(0, 1), the same for every cell given the same arguments."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(steps, batch, input_size, generator=gen)


def compare_cells(
    names: Sequence[str] = DEFAULT_CELLS,
    *,
    input_size: int = 16,
    hidden_size: int = 64,
    steps: int = 100,
    batch: int = 8,
    seed: int = 0,
    loss: str = "last",
    jacobian_sequences: int | None = None,
) -> dict[str, CellReport]:
    """Freshly initialised cells of the registry (``rnnkit.cells.registry.CELLS``) side by side
    on the same random input: each is built after ``torch.manual_seed(seed)`` and run on
    :func:`random_input` (``steps``, ``batch``, ``input_size``, ``seed``); the other arguments
    are :func:`diagnose_cell`'s."""
    owner = "compare_cells"
    names = list(names)
    if not names:
        raise ValueError(f"{owner}: names must list at least one cell")
    for n in names:
        if n not in CELLS:
            raise ValueError(f"unknown cell {n!r}; choose one of: {', '.join(CELLS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"{owner}: each cell once, got {names}")
    check_size(input_size, "input_size", owner)
    check_size(hidden_size, "hidden_size", owner)
    check_size(steps, "steps", owner)
    check_size(batch, "batch", owner)
    x = random_input(steps, batch, input_size, seed)
    reports = {}
    for n in names:
        torch.manual_seed(seed)
        cell = make_cell(n, input_size, hidden_size)
        reports[n] = diagnose_cell(cell, x, name=n, loss=loss, seed=seed, jacobian_sequences=jacobian_sequences)
    return reports


def diagnose_model(
    model: nn.Module,
    run: Callable[[nn.Module], Any] | None = None,
    *,
    steps: int = 100,
    batch: int = 8,
    loss: str = "last",
    seed: int = 0,
    untrained: bool = True,
    jacobian_sequences: int | None = None,
) -> dict[str, CellReport]:
    """Diagnose every :class:`rnnkit.Recurrent` layer inside ``model``.

    Each layer reads the input it receives while ``run(model)`` is called (e.g.
    ``lambda m: m(tokens)``), so deeper layers see what the layers below them really produce;
    with ``run=None`` each layer reads :func:`random_input` (``steps``, ``batch``, its own
    input size, ``seed``) instead. With ``untrained``, each layer's cell is also diagnosed
    freshly initialised on the same input, named ``"<layer> (untrained)"``, to show what
    training changed. ``loss``, ``seed`` and ``jacobian_sequences`` are :func:`diagnose_cell`'s.
    """
    layers = dict(recurrent_layers(model))
    if not layers:
        raise ValueError(f"diagnose_model: {type(model).__name__} holds no rnnkit.Recurrent layer")
    if run is not None:
        inputs = capture_layer_inputs(model, run)
    else:
        check_size(steps, "steps", "diagnose_model")
        check_size(batch, "batch", "diagnose_model")
        inputs = {name: (random_input(steps, batch, layer.input_size, seed), None) for name, layer in layers.items()}
    reports = {}
    for name, layer in layers.items():
        if name not in inputs:
            raise ValueError(f"diagnose_model: layer {name!r} was not called by run(model)")
        x, state = inputs[name]
        opts = dict(loss=loss, seed=seed, jacobian_sequences=jacobian_sequences)
        reports[name] = diagnose_cell(layer.cell, x, state, name=name, **opts)
        if untrained:
            torch.manual_seed(seed)
            fresh = f"{name} (untrained)"
            reports[fresh] = diagnose_cell(untrained_copy(layer.cell), x, state, name=fresh, **opts)
    return reports


def slug(name: str) -> str:
    """A file-name-safe form of a cell or layer name: ``"rnn.layers.0 (untrained)"`` → ``"rnn.layers.0-untrained"``."""
    return re.sub(r"[^A-Za-z0-9_.]+", "-", name).strip("-") or "cell"


def summary_lines(reports: dict[str, CellReport], log: TrainingLog | None = None, lag: int = SUMMARY_LAG) -> list[str]:
    """The terminal summary: one line per cell and one for the training log."""
    lines = [r.summary(lag) for r in reports.values()]
    if log is not None:
        s = log.summary()
        clip = (
            "no clip threshold logged"
            if s["clip"] is None
            else f"clipped at {s['clip']:g} on {100 * s['clipped_share']:.0f}% of updates"
        )
        lines.append(
            f"training log: {s['updates']} updates, gradient norm median {s['grad_norm_median']:.3g}, max "
            f"{s['grad_norm_max']:.3g}; {clip}"
        )
    return lines


def write_report(
    reports: dict[str, CellReport], out: str | Path, *, log: TrainingLog | None = None, settings: dict | None = None
) -> list[Path]:
    """Write the plots and ``diagnose.json`` (every number, inf/NaN as null) into folder ``out``.

    Files: ``gradient_vs_lag.png`` (all cells on one plot), ``jacobian_products.png``, and per
    cell ``spectrum_<name>.png``, ``saturation_<name>.png``, ``time_scales_<name>.png`` (leaky
    and clockwork cells); ``clipping.png`` with a training log. Returns the paths written.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = [
        plot.plot_gradient_vs_lag({k: r.flow for k, r in reports.items()}, out / "gradient_vs_lag.png"),
        plot.plot_jacobian_products({k: r.jacobians for k, r in reports.items()}, out / "jacobian_products.png"),
    ]
    for name, r in reports.items():
        written.append(plot.plot_spectrum(name, r.spectrum, out / f"spectrum_{slug(name)}.png"))
        written.append(plot.plot_saturation(name, r.saturation, out / f"saturation_{slug(name)}.png"))
        if r.time_scales is not None:
            written.append(plot.plot_time_scales(name, r.time_scales, out / f"time_scales_{slug(name)}.png"))
    if log is not None:
        written.append(plot.plot_clipping(log, out / "clipping.png"))
    document = {
        "settings": settings or {},
        "summary": summary_lines(reports, log),
        "cells": {k: r.to_dict() for k, r in reports.items()},
        "training_log": None if log is None else log.to_dict(),
        "plots": [p.name for p in written],
    }
    path = out / "diagnose.json"
    path.write_text(json.dumps(document, indent=1, allow_nan=False, ensure_ascii=False))
    return written + [path]
