"""PNG plots of the diagnostics, drawn headless.

Every plot is a :class:`matplotlib.figure.Figure` saved through the Agg canvas — no pyplot, so
no global state and no display needed — at ``FIGSIZE`` inches and ``DPI`` dots per inch:
``PIXELS`` = 800 × 500 pixels (width × height). Each function takes the numbers from
:mod:`rnnkit.diagnose.compute` and a path, writes the PNG and returns the path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .compute import GradientFlow, JacobianProducts, MatrixSpectrum, NonlinearityStats, TimeScales, TrainingLog

FIGSIZE = (8.0, 5.0)  # inches
DPI = 100
PIXELS = (800, 500)  # (width, height) = FIGSIZE × DPI


def _figure() -> Figure:
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)  # attach the raster canvas: savefig then needs no backend switch
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")  # no bbox_inches="tight": the size stays PIXELS
    return path


def _positive(values: torch.Tensor) -> list[float]:
    """Values for a log axis: zeros, negatives and non-finite entries become NaN (a gap)."""
    return [v if (math.isfinite(v) and v > 0) else math.nan for v in values.detach().double().cpu().tolist()]


def plot_gradient_vs_lag(flows: Mapping[str, GradientFlow], path: str | Path) -> Path:
    """All cells on one log plot: ‖∂L/∂h(T−k)‖ relative to lag 0, against the lag k.

    The LSTM's memory gradient ‖∂L/∂c(T−k)‖ (same scale) is drawn dashed in its cell's colour.
    """
    fig = _figure()
    ax = fig.subplots()
    losses = set()
    for j, (name, flow) in enumerate(flows.items()):
        color = f"C{j % 10}"
        base = float(flow.grad_norm[0]) or 1.0
        ax.plot(flow.lags, _positive(flow.grad_norm / base), color=color, label=name)
        if flow.memory_grad_norm is not None:
            ax.plot(
                flow.lags,
                _positive(flow.memory_grad_norm / base),
                color=color,
                linestyle="--",
                label=f"{name}: memory c",
            )
        losses.add(flow.loss)
    ax.set_yscale("log")
    ax.set_xlabel("lag k (steps back from the last step T)")
    ax.set_ylabel("‖∂L/∂h(T−k)‖ / ‖∂L/∂h(T)‖")
    where = "the last step" if losses == {"last"} else "every step"
    ax.set_title(f"Gradient norm against time lag (loss at {where}, batch mean)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_jacobian_products(products: Mapping[str, JacobianProducts], path: str | Path) -> Path:
    """Left: ‖∂h(T)/∂h(T−k)‖₂ per cell (the LSTM cell path ∂c/∂c dashed); right: the top
    singular values of ∂h(T)/∂h(T−k), one line each, per cell."""
    fig = _figure()
    left, right = fig.subplots(1, 2)
    for j, (name, jp) in enumerate(products.items()):
        color = f"C{j % 10}"
        lags = list(range(jp.blocks[jp.output_block].shape[0]))
        left.plot(lags, _positive(jp.blocks[jp.output_block]), color=color, label=name)
        for block in jp.blocks:
            if block.split(".")[-1] == "c":
                left.plot(lags, _positive(jp.blocks[block]), color=color, linestyle="--", label=f"{name}: ∂c/∂c")
        sv = jp.singular_values[jp.output_block]  # (K+1, top)
        for i in range(sv.shape[1]):
            right.plot(
                lags, _positive(sv[:, i]), color=color, linewidth=1.5 if i == 0 else 0.7, label=name if i == 0 else None
            )
    for ax in (left, right):
        ax.set_yscale("log")
        ax.set_xlabel("k")
        ax.grid(True, alpha=0.3)
    left.set_title("‖∂h(T)/∂h(T−k)‖₂", fontsize="medium")
    right.set_title("top singular values of ∂h(T)/∂h(T−k)", fontsize="medium")
    left.legend(fontsize="x-small")
    right.legend(fontsize="x-small")
    return _save(fig, path)


def plot_spectrum(name: str, spectra: Mapping[str, MatrixSpectrum], path: str | Path) -> Path:
    """Left: the eigenvalues of each square recurrent matrix in the complex plane, with the unit
    circle; right: ‖W^t‖₂ against t, with ρ^t dashed (ρ the spectral radius)."""
    fig = _figure()
    left, right = fig.subplots(1, 2)
    theta = torch.linspace(0, 2 * math.pi, 361)
    left.plot(torch.cos(theta), torch.sin(theta), color="0.5", linewidth=1, label="|λ| = 1")
    for j, (matrix, s) in enumerate(spectra.items()):
        color = f"C{j % 10}"
        if s.eigenvalues is None:
            left.plot([], [], " ", label=f"W_{matrix}: {s.shape[0]}×{s.shape[1]}, no eigenvalues")
            continue
        left.scatter(
            s.eigenvalues.real, s.eigenvalues.imag, s=10, color=color, label=f"W_{matrix}: ρ = {s.spectral_radius:.3g}"
        )
        t = list(range(s.power_norms.shape[0]))
        right.plot(t, _positive(s.power_norms), color=color, label=f"‖W_{matrix}^t‖")
        rho = torch.tensor(s.spectral_radius, dtype=torch.float64) ** torch.arange(len(t), dtype=torch.float64)
        right.plot(t, _positive(rho), color=color, linestyle="--", linewidth=0.8)
    left.set_aspect("equal", adjustable="datalim")
    left.set_xlabel("Re λ")
    left.set_ylabel("Im λ")
    left.set_title(f"{name}: eigenvalues of the recurrent matrices", fontsize="medium")
    left.legend(fontsize="x-small")
    right.set_yscale("log")
    right.set_xlabel("t")
    right.set_title("‖W^t‖₂ (dashed: ρ^t)", fontsize="medium")
    right.grid(True, alpha=0.3)
    if right.lines:
        right.legend(fontsize="x-small")
    return _save(fig, path)


def plot_saturation(name: str, stats: Mapping[str, NonlinearityStats], path: str | Path) -> Path:
    """Histograms of each non-linearity's pre-activations (left) and values (right), with the
    share of saturated entries in the legend."""
    fig = _figure()
    left, right = fig.subplots(1, 2)
    for j, (label, s) in enumerate(stats.items()):
        color = f"C{j % 10}"
        text = f"{label} ({s.kind}): {100 * s.saturated:.1f}% saturated"
        left.stairs(
            s.pre_activation.counts / s.pre_activation.counts.sum(), s.pre_activation.edges, color=color, label=text
        )
        right.stairs(s.value.counts / s.value.counts.sum(), s.value.edges, color=color, label=label)
    left.set_xlabel("pre-activation a")
    right.set_xlabel("φ(a)")
    left.set_ylabel("share of entries")
    left.set_title(f"{name}: pre-activations", fontsize="medium")
    right.set_title("values (saturated near the ends)", fontsize="medium")
    left.legend(fontsize="x-small")
    right.legend(fontsize="x-small")
    return _save(fig, path)


def plot_time_scales(name: str, scales: TimeScales, path: str | Path) -> Path:
    """Left: each unit's time constant or period; right: each group's gradient decay against
    the lag, with exp(−k/τ) dashed for the group's own time scale τ."""
    fig = _figure()
    left, right = fig.subplots(1, 2)
    values = scales.per_unit.double()
    left.plot(range(values.numel()), values.tolist(), marker=".", linestyle="none")
    left.set_yscale("log")
    left.set_xlabel("unit")
    what = "time constant τ = 1/(1 − α)" if scales.kind == "leaky" else "period"
    left.set_ylabel(what)
    left.set_title(f"{name}: {what}", fontsize="medium")
    for j, (label, curve) in enumerate(scales.group_grad.items()):
        color = f"C{j % 10}"
        base = float(curve[0]) or 1.0
        lags = torch.arange(curve.shape[0], dtype=torch.float64)
        measured = scales.group_decay_time.get(label, math.nan)
        right.plot(
            lags.tolist(), _positive(curve / base), color=color, label=f"{label}: measured decay {measured:.3g} steps"
        )
        right.plot(
            lags.tolist(),
            _positive(torch.exp(-lags / scales.group_scale[label])),
            color=color,
            linestyle="--",
            linewidth=0.8,
        )
    right.set_yscale("log")
    right.set_xlabel("lag k")
    right.set_title("gradient per group (dashed: exp(−k/τ))", fontsize="medium")
    right.grid(True, alpha=0.3)
    if right.lines:
        right.legend(fontsize="x-small")
    return _save(fig, path)


def plot_clipping(log: TrainingLog, path: str | Path) -> Path:
    """The pre-clip gradient norm of every logged update, the clip threshold, and the updates it clipped."""
    fig = _figure()
    ax = fig.subplots()
    ax.plot(log.steps, log.grad_norm, color="C0", linewidth=0.8, label="pre-clip gradient norm")
    clipped = [(s, g) for s, g, c in zip(log.steps, log.grad_norm, log.clipped) if c]
    if clipped:
        xs, ys = zip(*clipped)
        ax.scatter(xs, ys, s=8, color="C3", zorder=3, label=f"clipped ({len(clipped)} of {len(log.steps)})")
    if any(c is not None for c in log.clip):
        ax.step(
            log.steps,
            [math.nan if c is None else c for c in log.clip],
            where="mid",
            color="k",
            linestyle="--",
            label="clip threshold",
        )
    ax.set_yscale("log")
    ax.set_xlabel("update")
    ax.set_ylabel("global gradient norm")
    ax.set_title("Gradient clipping during training")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)
