"""Training curves as a PNG, titled with the run's name: the loss in nats (per update, smoothed,
and at each validation), the task's own metric with its baseline, and the pre-clip gradient norm
with the clipping threshold. An axis whose values span more than a factor of ten is logarithmic,
so the slow part of training after the first drop stays visible."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SPREAD_FOR_LOG = 10.0  # a positive series spanning more than this factor is drawn on a log axis


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if len(values) < window or window < 2:
        return values
    kernel = np.ones(window) / window
    head = np.cumsum(values[: window - 1]) / np.arange(1, window)  # partial means at the start
    return np.concatenate([head, np.convolve(values, kernel, mode="valid")])


def _log_if_spread(ax, *series) -> None:
    values = np.concatenate([np.asarray(s, dtype=float).ravel() for s in series if len(s)] or [np.zeros(0)])
    values = values[np.isfinite(values)]
    if len(values) and values.min() > 0 and values.max() / values.min() > SPREAD_FOR_LOG:
        ax.set_yscale("log")


def plot_curves(
    history: list[dict],
    path: str | Path,
    monitor: str = "loss",
    *,
    metric: str | None = None,
    baseline: float | None = None,
    title: str | None = None,
    metric_label: str | None = None,
) -> Path:
    """Write the curves of a run's log records to ``path`` (PNG; see :func:`curves_figure`)."""
    fig = curves_figure(history, monitor, metric=metric, baseline=baseline, title=title, metric_label=metric_label)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, format="png")
    tmp.replace(path)
    return path


def curves_figure(
    history: list[dict],
    monitor: str = "loss",
    *,
    metric: str | None = None,
    baseline: float | None = None,
    title: str | None = None,
    metric_label: str | None = None,
):
    """A matplotlib ``Figure`` of a run's log records: loss, the task's metric, gradient norm.

    ``metric``: the task's headline metric (``bpc``, ``accuracy``…), drawn from the training
    records that hold it and from the validations (``val_<metric>``), with ``baseline`` as a
    dashed line; ``metric_label`` its axis label (default: its name). ``title``: the run's name.
    """
    from matplotlib.figure import Figure  # no pyplot: no global state, works headless

    train = [r for r in history if r.get("kind", "train") == "train" and "loss" in r]
    val = [r for r in history if r.get("kind") == "val"]
    show_metric = metric is not None and metric != "loss"
    fig = Figure(figsize=(15 if show_metric else 10, 4), dpi=100)
    axes = fig.subplots(1, 3 if show_metric else 2)
    ax_loss, ax_grad = axes[0], axes[-1]
    loss = grad = np.zeros(0)
    if train:
        steps = np.array([r["step"] for r in train])
        loss = np.array([r["loss"] for r in train], dtype=float)
        ax_loss.plot(steps, loss, color="tab:blue", alpha=0.3, linewidth=0.8, label="train (per update)")
        ax_loss.plot(steps, _smooth(loss, max(1, len(loss) // 50)), color="tab:blue", label="train (smoothed)")
        grad = np.array([r.get("grad_norm", np.nan) for r in train], dtype=float)
        ax_grad.plot(steps, grad, color="tab:purple", linewidth=0.8, label="gradient norm before clipping")
        clip = train[-1].get("clip")
        if clip:
            ax_grad.axhline(clip, color="tab:red", linestyle="--", label=f"clip threshold {clip:g}")
    val_loss = [(r["step"], r["val_loss"]) for r in val if "val_loss" in r]
    if val_loss:
        ax_loss.plot(*zip(*val_loss), "o-", color="tab:orange", label="validation")
    _log_if_spread(ax_loss, loss, [v for _, v in val_loss])
    _log_if_spread(ax_grad, grad)
    ax_loss.set(xlabel="update", ylabel="loss (nats per item)", title="loss")
    ax_grad.set(xlabel="update", ylabel="‖g‖", title="gradient norm")
    if show_metric:
        ax = axes[1]
        label = metric_label or metric
        ours = [(r["step"], r[metric]) for r in train if metric in r]
        if ours:
            s, v = zip(*ours)
            ax.plot(
                s, _smooth(np.array(v, dtype=float), max(1, len(v) // 50)), color="tab:blue", label="train (smoothed)"
            )
        points = [(r["step"], r[f"val_{metric}"]) for r in val if f"val_{metric}" in r]
        if points:
            ax.plot(*zip(*points), "o-", color="tab:orange", label="validation")
        if baseline is not None:
            ax.axhline(baseline, color="tab:gray", linestyle="--", label=f"baseline {baseline:.4g}")
        _log_if_spread(ax, [v for _, v in ours], [v for _, v in points], [baseline] if baseline is not None else [])
        ax.set(
            xlabel="update",
            ylabel=label,
            title=metric + (f" (watched: {monitor})" if monitor not in ("loss", metric) else ""),
        )
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
