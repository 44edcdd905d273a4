"""Training: the model-agnostic loop and what it is built from.

* :mod:`~rnnkit.train.trainer` — :class:`Trainer`, :class:`TrainConfig`;
* :mod:`~rnnkit.train.epochs` — passes over a DataLoader, a list of batches or any re-iterable;
* :mod:`~rnnkit.train.supervised` — step functions and metrics of classification, tagging and
  regression;
* :mod:`~rnnkit.train.callbacks` — what the loop does besides updating: log file, checkpoints,
  early stopping, plot, progress bar;
* :mod:`~rnnkit.train.run_folder` — :class:`RunFolder`, the names and checks of a run's folder;
* :mod:`~rnnkit.train.tbptt` — truncated BPTT over lanes of documents;
* :mod:`~rnnkit.train.feedback` — teacher forcing, free running, scheduled sampling, k-steps-ahead;
* :mod:`~rnnkit.train.schedules` — scheduled-sampling curricula;
* :mod:`~rnnkit.train.clipping` — gradient clipping by value and by norm;
* :mod:`~rnnkit.train.logs`, :mod:`~rnnkit.train.plots` — the run log and its curves.
"""

from .callbacks import Callback, Checkpoints, EarlyStopping, LogFile, Plot, ProgressBar
from .clipping import clip_gradients
from .epochs import Epochs
from .feedback import Rollout, k_step_ahead_loss, rollout
from .run_folder import RunFolder
from .schedules import SCHEDULES, Constant, Exponential, InverseSigmoid, Linear
from .supervised import Classification, Regression, Tagging, balanced_class_weights, confusion_matrix
from .tbptt import Chunk, LaneStream
from .trainer import StepResult, TrainConfig, Trainer, TrainingDiverged, TrainingSettings, TrainResult, seed_everything

__all__ = [
    "Trainer",
    "TrainConfig",
    "TrainingSettings",
    "StepResult",
    "TrainResult",
    "TrainingDiverged",
    "seed_everything",
    "Callback",
    "EarlyStopping",
    "LogFile",
    "Checkpoints",
    "Plot",
    "ProgressBar",
    "RunFolder",
    "LaneStream",
    "Chunk",
    "rollout",
    "Rollout",
    "k_step_ahead_loss",
    "SCHEDULES",
    "Constant",
    "Linear",
    "Exponential",
    "InverseSigmoid",
    "clip_gradients",
    "Epochs",
    "Classification",
    "Tagging",
    "Regression",
    "balanced_class_weights",
    "confusion_matrix",
]
