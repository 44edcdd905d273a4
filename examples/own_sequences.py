"""Classify your own variable-length sequences: a folder of .npy arrays and a labels.csv to a
trained, evaluated and saved classifier.

The folder holds one array (steps, features) per sequence, any lengths, and ``labels.csv`` with
the columns ``file,label``. Without ``--data`` the script makes a demo folder first: six-channel
sensor recordings of 30–150 steps in five imbalanced classes (what docs/guides/own_sequences.md
walks through). The model is a bidirectional GRU read to each sequence's own length
(``ManyToOne``), trained with class weights against the imbalance; it prints the test accuracy,
the balanced accuracy and each class's, and the confusion matrix. The best weights are in
``OUT/best.safetensors``.

Run::

    python examples/own_sequences.py                       # make the demo folder, then train on it
    python examples/own_sequences.py --data my_folder      # your own .npy files and labels.csv
    python examples/own_sequences.py --quick               # tiny sizes (what the tests run)

See docs/guides/own_sequences.md for the measured figures and what they mean.
"""

import argparse
import csv
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

import rnnkit
from rnnkit import ManyToOne, Stack, TrainConfig, Trainer
from rnnkit.cells import GRUCell
from rnnkit.data import SequenceCollate, SequenceDataset
from rnnkit.train import Classification, balanced_class_weights

DEMO_CLASSES = ["still", "tap-x", "tap-y", "shake-x", "shake-y"]


def make_demo(folder: Path, n: int, seed: int = 0) -> None:
    """The guide's recordings: drift and noise, and a class's short event in the last fifth."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    labels = rng.choice(len(DEMO_CLASSES), size=n, p=[0.55, 0.20, 0.12, 0.08, 0.05])
    for i, label in enumerate(labels):
        steps = int(rng.integers(30, 151))
        x = 0.6 * rng.standard_normal((steps, 6))
        x[:, :3] += 0.3 * np.cumsum(rng.standard_normal((steps, 3)), 0) / np.sqrt(np.arange(1, steps + 1))[:, None]
        if label:
            event = np.ones(8) if label <= 2 else np.tile([1.0, 1.0, -1.0, -1.0], 3)
            axis, start = (label - 1) % 2, steps - len(event) - int(rng.integers(0, steps // 5))
            x[start : start + len(event), axis] += 1.6 * event
        np.save(folder / f"{i:05d}.npy", x.astype(np.float32))
    with open(folder / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([("file", "label"), *((f"{i:05d}.npy", DEMO_CLASSES[k]) for i, k in enumerate(labels))])


def read_folder(folder: Path) -> tuple[list[np.ndarray], list[int], list[str]]:
    """The arrays, their class ids and the class names (sorted, as labels.csv spells them)."""
    with open(folder / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"file", "label"} <= set(rows[0]):
        raise SystemExit(f"{folder / 'labels.csv'}: expected the columns file,label and at least one row")
    classes = DEMO_CLASSES if {r["label"] for r in rows} <= set(DEMO_CLASSES) else sorted({r["label"] for r in rows})
    return [np.load(folder / r["file"]) for r in rows], [classes.index(r["label"]) for r in rows], classes


def rows_hint(folder: Path) -> str:
    """The first file of labels.csv, for messages."""
    with open(folder / "labels.csv", newline="") as f:
        return next(csv.DictReader(f))["file"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, help="a folder of .npy arrays and labels.csv (default: make the demo one)")
    parser.add_argument("--epochs", type=int, default=15, help="passes over the training sequences")
    parser.add_argument("--hidden", type=int, default=48, help="units per direction")
    parser.add_argument("--out", default="runs/own_sequences", help="the run folder (started over if it holds a run)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (for tests)")
    args = parser.parse_args()

    folder = args.data
    if folder is None:
        folder = Path("recordings")
        make_demo(folder, 160 if args.quick else 2000)
    sequences, targets, classes = read_folder(folder)
    features = sequences[0].shape[1:]
    if len(features) != 1:
        raise SystemExit(f"each array must be (steps, features); {rows_hint(folder)} has shape {sequences[0].shape}")
    print(
        f"{len(sequences)} sequences of {min(map(len, sequences))}–{max(map(len, sequences))} steps × {features}; "
        f"per class: {dict(zip(classes, np.bincount(targets, minlength=len(classes)).tolist()))}"
    )

    n = len(sequences)
    order = np.random.default_rng(args.seed + 1).permutation(n)
    parts = {"train": order[: int(0.7 * n)], "val": order[int(0.7 * n) : int(0.85 * n)], "test": order[int(0.85 * n) :]}
    split = {k: SequenceDataset([sequences[i] for i in idx], [targets[i] for i in idx]) for k, idx in parts.items()}
    loaders = {k: DataLoader(split[k], batch_size=256, collate_fn=SequenceCollate()) for k in ("val", "test")}

    rnnkit.seed(args.seed)  # before building the model: it fixes the model and the run
    model = ManyToOne(Stack.build(GRUCell, features[0], args.hidden, bidirectional=True), len(classes))
    job = Classification(len(classes), class_weights=balanced_class_weights(split["train"].targets, len(classes)))
    train = DataLoader(split["train"], batch_size=32, shuffle=True, collate_fn=SequenceCollate())
    trainer = Trainer(
        model,
        torch.optim.Adam(model.parameters(), lr=3e-3),
        job,
        train,
        TrainConfig(
            max_epochs=1 if args.quick else args.epochs,
            eval_every=50,
            monitor="balanced_accuracy",
            mode="max",
            out=args.out,
            overwrite=True,
            progress=False,
        ),
        evaluate=job.evaluator(loaders["val"]),
    )
    result = trainer.fit()
    trainer.load_best()

    test = job.evaluate(model, loaders["test"])
    print(f"{result.steps} updates ({result.epochs} epochs) in {result.seconds:.0f} s; best weights in {args.out}")
    print(
        f"test accuracy {test['accuracy']:.3f}, balanced accuracy {test['balanced_accuracy']:.3f} "
        f"(always answering the most frequent class: {np.bincount(targets).max() / n:.3f})"
    )
    print(
        "per class:",
        ", ".join(f"{c} {test[f'accuracy_{k}']:.3f}" for k, c in enumerate(classes) if f"accuracy_{k}" in test),
    )
    print("confusion (rows: true class, columns: predicted):")
    print(job.confusion_matrix(model, loaders["test"]))


if __name__ == "__main__":
    main()
