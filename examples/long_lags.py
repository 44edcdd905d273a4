"""The adding problem (Hochreiter & Schmidhuber 1997): a tanh RNN against an LSTM, and the
gradient-flow diagnostic that explains the difference.

Each sequence holds 100–110 (value, marker) pairs; after the last one the network must output
0.5 + (X1 + X2)/4 for the two marked values, read up to a hundred steps earlier. The paper's
test: at most 3 of 2560 held-out sequences off by 0.04 or more. Before training, the script
measures how much of the gradient of a loss at the last step reaches 50 steps back in each
freshly initialised cell.

Run::

    python examples/long_lags.py                        # up to 12 000 updates per cell
    python examples/long_lags.py --cells lstm gru --steps 5000
    python examples/long_lags.py --quick                # a few updates (what the tests run)

See docs/guides/long_time_lags.md for the figures and plots.
"""

import argparse

import torch

from rnnkit import Trainer
from rnnkit.diagnose import compare_cells
from rnnkit.tasks import AddingTask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", nargs="+", default=["elman", "lstm"], help="cells of the registry to compare")
    parser.add_argument("--steps", type=int, default=12_000, help="updates per cell at most (stops once solved)")
    parser.add_argument("--quick", action="store_true", help="a few updates on small held-out sets (for tests)")
    args = parser.parse_args()

    flows = compare_cells(
        args.cells, input_size=2, hidden_size=64, steps=30 if args.quick else 100, jacobian_sequences=1
    )
    for name, report in flows.items():
        lag = report.summary_lag()
        print(f"{name:>6}, untrained: the gradient {lag} steps back is {report.flow.ratio(lag):.1e} of the last step's")

    for cell in args.cells:
        cfg = AddingTask.Config(
            cell=cell,
            max_steps=10 if args.quick else args.steps,
            max_time=None,
            heldout_size=128 if args.quick else 2560,
            eval_every=5 if args.quick else 200,
            progress=False,
        )
        task = AddingTask(cfg)
        task.prepare(log=print)
        torch.manual_seed(cfg.seed)
        model = task.build_model()  # the cell (forget gate bias 5 for an LSTM), read at each sequence's last step
        trainer = Trainer(
            model,
            torch.optim.Adam(model.parameters(), lr=cfg.lr),
            task.step,
            task.batches(),
            cfg.train_config(),
            evaluate=task.evaluate,
            callbacks=task.callbacks(log=print),
        )
        result = trainer.fit()
        test = task.evaluate(model, "test")
        verdict = "solved" if task.solved(test) else "not solved"
        print(
            f"{cell}: {result.steps} updates in {result.seconds:.0f} s; test {test['wrong']} wrong of "
            f"{cfg.heldout_size} ({verdict}), MSE {test['mse']:.2g} against {task.baseline['mse']:.3f} for always 0.5"
        )


if __name__ == "__main__":
    main()
