r"""Forecasting statsmodels' yearly sunspot numbers (1700–2008) with an autoregressive RNN:
one step ahead, and many steps ahead by feeding the model's own forecasts back.

.. math::
    h(t) = \mathrm{stack}(y(t-1), h(t-1)), \qquad \hat y(t) = c + V h(t), \qquad
    L = \tfrac12\, \overline{(\hat y(t) - y(t))^2}

with y(0) = 0 (the training mean: values are normalised by the training years' mean and
standard deviation). Training is teacher-forced over windows of ``window`` + ``horizon`` years
(every step predicts the next year from the true years before it), or with ``--k-ahead k`` the
k-steps-ahead loss (:func:`rnnkit.train.k_step_ahead_loss`: from every position the model runs
k steps on its own outputs). A forecast reads the ``window`` years up to an origin year t, then
runs free: :math:`\hat y(t+1)` is fed back to give :math:`\hat y(t+2)`, … up to t + K.

Metrics are squared errors in sunspot-number units on the held-out years (the last 30 %, in
time order): ``mse_1`` one step ahead (the headline, lower is better) and ``mse_K`` K steps
ahead, beside the persistence forecast :math:`\hat y(t+h) = y(t)` and the seasonal forecast
:math:`\hat y(t+h) = y(t+h-11)` (the solar cycle); the baseline is the better of the two.

Symbols: W window (years read), K horizon (years forecast), N windows, B batch, H hidden size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..cells.registry import make_cell
from ..compose import Stack
from ..data.datasets import Windows, forecast_mse, sunspots
from ..models import FeedbackDecoder, squared_error
from ..models.base import DecoderState
from ..train import StepResult, k_step_ahead_loss
from ..train.device import model_device, to_device
from .base import Task, TaskConfig
from .batching import Minibatches


@dataclass
class SunspotsConfig(TaskConfig):
    window: int = 20  # years read before each forecast
    horizon: int = 11  # years forecast ahead by feeding forecasts back (the multi-step metric)
    k_ahead: int = 1  # train on the k-steps-ahead loss; 1: one-step teacher forcing
    hidden_size: int = 16  # units per recurrent layer (186 training windows: larger ones overfit)
    batch_size: int = 32  # windows per update
    lr: float = 1e-3  # learning rate
    max_steps: int | None = 1000  # updates; None: until max_time
    eval_every: int = 100  # updates between validations and checkpoints

    def check(self) -> None:
        super().check()
        for name in ("window", "horizon", "k_ahead"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.k_ahead > self.window + self.horizon:
            raise ValueError(
                f"k_ahead must be ≤ window + horizon = {self.window + self.horizon} (the training sequence), got "
                f"{self.k_ahead}"
            )


class Forecaster(FeedbackDecoder):
    r"""An autoregressive forecaster: a :class:`~rnnkit.models.FeedbackDecoder` with one real
    output fed back and no other input, :math:`h(t) = \mathrm{layer}(y(t-1), h(t-1))`,
    :math:`\hat y(t) = c + V h(t)`, y(0) = 0.

    Protocol: ``start(batch_size)``, ``step(y_prev (B, 1), state)``; ``forward(y (T, B, 1),
    lengths=None)`` → :class:`~rnnkit.models.SequenceOutput` with values (T, B, 1), step t
    predicting y(t) from y(0..t−1).
    """

    owner = "Forecaster"

    def __init__(self, layer: Any) -> None:
        super().__init__(layer, output_size=1)

    def forward(self, y: Tensor, lengths: Any = None):
        return self.decode(y, lengths=lengths)

    def start(self, batch_size: int | None = None, context: Any = None) -> DecoderState:
        """The zero decoding state of ``batch_size`` forecasts (decoding protocol)."""
        if context is not None:
            raise ValueError("Forecaster: reads no context; start(batch_size) only")
        return self.begin(batch_size)


def series(w: Windows) -> Tensor:
    """A split's windows as whole sequences: the W inputs then the K targets, (W + K, N, 1)."""
    return torch.cat([w.inputs, w.targets.t().unsqueeze(-1)], dim=0)  # (W + K, N, 1)


@torch.no_grad()
def forecast(model: Forecaster, history: Tensor, horizon: int) -> Tensor:
    """Read ``history`` (W, N, 1), then forecast ``horizon`` steps by feeding each forecast back.

    Returns (N, K) in the model's (normalised) units, on the model's device (``history`` is moved
    there). The first forecast is the teacher-forced one-step prediction after the history; each
    later one reads the forecast before it.
    """
    history = to_device(history, model_device(model))
    N = history.shape[1]
    state = model.start(N)
    first = torch.zeros_like(history[:1])  # y(0) = 0, (1, N, 1)
    for y_prev in torch.cat([first, history]).unbind(0):  # the model's own stepping, as generation primes
        out, state = model.step(y_prev, state)
    values = [out.logits]  # (N, 1) each
    for _ in range(horizon - 1):
        out, state = model.step(out.logits, state)
        values.append(out.logits)
    return torch.cat(values, dim=1)  # (N, K)


class SunspotsTask(Task):
    """Autoregressive forecasting of the yearly sunspot numbers (see the module docstring)."""

    name = "sunspots"
    summary = "yearly sunspot numbers, one- and multi-step-ahead forecasts (MSE vs persistence and seasonal)"
    Config = SunspotsConfig
    metric = "mse_1"

    def prepare(self, log) -> None:
        cfg = self.cfg
        self.data = sunspots(window=cfg.window, horizon=cfg.horizon)
        self.naive = {s: {name: v.tolist() for name, v in self.data.baselines(s).items()} for s in ("val", "test")}
        self.baselines = {s: self._best_naive(s) for s in ("val", "test")}
        self.baseline = self.baselines["val"]
        d, K = self.data, cfg.horizon
        first, train_last, val_last, last = (int(d.years[i]) for i in (0, d.bounds[0] - 1, d.bounds[1] - 1, -1))
        log(
            f"sunspots: years {first}–{last}; train to {train_last}, validate to {val_last}, test after; "
            f"{d.train.origins.numel()} / {d.val.origins.numel()} / "
            f"{d.test.origins.numel()} windows of {cfg.window} years, forecasts {K} year{'s' if K > 1 else ''} ahead"
        )
        for s in ("val", "test"):
            shown = "; ".join(
                f"{name} {v[0]:.0f} (1 year)" + (f", {v[-1]:.0f} ({K} years)" if K > 1 else "")
                for name, v in self.naive[s].items()
            )
            log(f"  {s} baselines, MSE: {shown}")

    def _best_naive(self, split: str) -> dict[str, float]:
        """The better of the persistence and seasonal forecasts, at horizon 1 and K."""
        n = self.naive[split]
        out = {"mse_1": min(v[0] for v in n.values())}
        if self.cfg.horizon > 1:
            out[f"mse_{self.cfg.horizon}"] = min(v[-1] for v in n.values())
        return out

    def build_model(self) -> Forecaster:
        cfg = self.cfg
        layer = Stack.build(
            lambda i, h: make_cell(cfg.cell, i, h), 1, cfg.hidden_size, cfg.num_layers, dropout=cfg.dropout
        )
        return Forecaster(layer)

    def batches(self) -> Minibatches:
        train = series(self.data.train)  # (W + K, N, 1)
        return Minibatches(train.shape[1], self.cfg.batch_size, self.cfg.seed, lambda idx, _: train[:, idx])

    def loss(self, model: Forecaster, y: Tensor) -> Tensor:
        """½ mean squared error of the one-step (or k-steps-ahead) predictions of y (T, B, 1)."""
        if self.cfg.k_ahead == 1:
            return squared_error(model(y).logits, y, reduction="mean")  # one teacher-forced pass
        return k_step_ahead_loss(model, y, self.cfg.k_ahead)

    def step(self, model: Forecaster, y: Tensor) -> StepResult:
        return StepResult(self.loss(model, y), items=y.shape[0] * y.shape[1], sequences=y.shape[1])

    @torch.no_grad()
    def evaluate(self, model: Forecaster, split: str = "val") -> dict[str, float]:
        """Teacher-forced loss (normalised units) and forecast MSE (sunspot numbers²) at horizon 1
        and K on ``split`` ("val" or "test"); ``baseline`` becomes that split's."""
        if split not in ("val", "test"):
            raise ValueError(f"sunspots: split must be 'val' or 'test', got {split!r}")
        self.baseline = self.baselines[split]
        w = getattr(self.data, split)
        y = to_device(series(w), model_device(model))  # (W + K, N, 1)
        loss = float(squared_error(model(y).logits, y, reduction="mean"))
        predicted = self.data.denormalise(
            forecast(model, w.inputs, self.cfg.horizon).cpu()
        )  # (N, K), the data's device
        mse = forecast_mse(predicted, self.data.denormalise(w.targets))  # (K,)
        out = {"loss": loss, "mse_1": float(mse[0])}
        if self.cfg.horizon > 1:
            out[f"mse_{self.cfg.horizon}"] = float(mse[-1])
        return out
