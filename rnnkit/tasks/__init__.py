"""Built-in tasks: data, model, loss and metric for each job ``rnnkit train TASK`` can run.

Each task module defines a :class:`~rnnkit.tasks.base.Task` subclass and its config dataclass;
``TASKS`` maps the command-line names to them.
"""

from .base import Task, TaskConfig, load_run, run_task
from .caption import CaptionTask
from .charlm import CharLMTask
from .digits import DigitsTask
from .longlag import AddingTask, CopyTask, TemporalOrderTask
from .lstm1997 import LongLagSequencesTask, MultiplicationTask, ReberTask, TwoSequenceTask
from .seq2seq import Seq2SeqTask
from .sunspots import SunspotsTask
from .tagging import TaggingTask

TASKS: dict[str, type[Task]] = {
    t.name: t
    for t in (
        CharLMTask,
        DigitsTask,
        SunspotsTask,
        Seq2SeqTask,
        TaggingTask,
        CaptionTask,
        AddingTask,
        TemporalOrderTask,
        CopyTask,
        ReberTask,
        LongLagSequencesTask,
        TwoSequenceTask,
        MultiplicationTask,
    )
}

__all__ = [
    "TASKS",
    "Task",
    "TaskConfig",
    "run_task",
    "load_run",
    "CharLMTask",
    "DigitsTask",
    "SunspotsTask",
    "Seq2SeqTask",
    "TaggingTask",
    "CaptionTask",
    "AddingTask",
    "TemporalOrderTask",
    "CopyTask",
    "ReberTask",
    "LongLagSequencesTask",
    "TwoSequenceTask",
    "MultiplicationTask",
]
