"""Forecast the yearly sunspot numbers with an LSTM, beside the forecasts that need no model.

The model reads 20 years and predicts the next; to see further it feeds its own forecasts back.
It is trained by teacher forcing (``--k-ahead 1``) or on its own k-step rollouts, and judged on
the last 15 % of years (1963–2008) against persistence (next year = this year) and the seasonal
forecast (repeat the last 11-year cycle). The data ships with statsmodels.

Run::

    python examples/forecast_sunspots.py                 # 2000 updates of teacher forcing
    python examples/forecast_sunspots.py --k-ahead 11    # train on 11-steps-ahead forecasts
    python examples/forecast_sunspots.py --quick         # a few updates (what the tests run)

See docs/guides/forecasting.md for the measured figures and what they mean.
"""

import argparse

import torch

from rnnkit import Trainer
from rnnkit.tasks import SunspotsTask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2000, help="updates")
    parser.add_argument("--k-ahead", type=int, default=1, help="train on the k-steps-ahead loss (1: teacher forcing)")
    parser.add_argument("--quick", action="store_true", help="a few updates (for tests)")
    args = parser.parse_args()

    cfg = SunspotsTask.Config(
        horizon=11,
        k_ahead=args.k_ahead,
        max_steps=10 if args.quick else args.steps,
        eval_every=5 if args.quick else 200,
        progress=False,
    )
    task = SunspotsTask(cfg)
    task.prepare(log=print)  # the data and both naive baselines, for validation and test years
    torch.manual_seed(cfg.seed)
    model = task.build_model()
    trainer = Trainer(
        model,
        torch.optim.Adam(model.parameters(), lr=cfg.lr),
        task.step,
        task.batches(),
        cfg.train_config(),
        evaluate=task.evaluate,
    )
    result = trainer.fit()

    test = task.evaluate(model, "test")  # also sets task.baseline to the test years' better naive forecast
    print(f"\n{result.steps} updates in {result.seconds:.0f} s. Test MSE (sunspot numbers²):")
    for key in ("mse_1", "mse_11"):
        years = key.split("_")[1]
        print(f"  {years:>2} year(s) ahead: model {test[key]:7.0f}   best naive forecast {task.baseline[key]:7.0f}")


if __name__ == "__main__":
    main()
