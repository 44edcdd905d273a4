"""Training curves as a PNG: train loss (raw and smoothed) with validation points, and the
pre-clip gradient norm with the clipping threshold."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if len(values) < window or window < 2:
        return values
    kernel = np.ones(window) / window
    head = np.cumsum(values[: window - 1]) / np.arange(1, window)  # partial means at the start
    return np.concatenate([head, np.convolve(values, kernel, mode="valid")])


def plot_curves(history: list[dict], path: str | Path, monitor: str = "loss") -> Path:
    """Write the curves of a run's log records to ``path`` (PNG, 1000×400 px)."""
    from matplotlib.figure import Figure  # no pyplot: no global state, works headless

    train = [r for r in history if r.get("kind", "train") == "train" and "loss" in r]
    val = [r for r in history if r.get("kind") == "val"]
    fig = Figure(figsize=(10, 4), dpi=100)
    ax_loss, ax_grad = fig.subplots(1, 2)
    if train:
        steps = np.array([r["step"] for r in train])
        loss = np.array([r["loss"] for r in train], dtype=float)
        ax_loss.plot(steps, loss, color="tab:blue", alpha=0.3, linewidth=0.8, label="train (per step)")
        ax_loss.plot(steps, _smooth(loss, max(1, len(loss) // 50)), color="tab:blue", label="train (smoothed)")
        grad = np.array([r.get("grad_norm", np.nan) for r in train], dtype=float)
        ax_grad.plot(steps, grad, color="tab:purple", linewidth=0.8, label="gradient norm before clipping")
        clip = train[-1].get("clip")
        if clip:
            ax_grad.axhline(clip, color="tab:red", linestyle="--", label=f"clip threshold {clip:g}")
        if np.all(grad[np.isfinite(grad)] > 0) and np.isfinite(grad).any():
            ax_grad.set_yscale("log")
    key = f"val_{monitor}"
    points = [(r["step"], r[key]) for r in val if key in r]
    if points:
        ax_loss.plot(*zip(*points), "o-", color="tab:orange", label=f"validation {monitor}")
    ax_loss.set(xlabel="update", ylabel="loss", title="training curves")
    ax_grad.set(xlabel="update", ylabel="‖g‖", title="gradient norm")
    for ax in (ax_loss, ax_grad):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, format="png")
    tmp.replace(path)
    return path
