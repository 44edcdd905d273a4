r"""Long-term dependencies made visible: how far back the gradient of a recurrent model reaches.

The gradient that reaches step t from a loss at step T is a product of step Jacobians,
:math:`\partial h(T)/\partial h(t) = \prod_{k} D(a(k))\, W` for an Elman cell, so it vanishes or
explodes with the eigenvalues of W (:math:`W = Q\Lambda Q^\top \Rightarrow W^t = Q\Lambda^t Q^\top`),
shrinks further wherever units saturate (D(a) → 0), and survives in the LSTM along the additive
cell path, :math:`\partial c(t)/\partial c(t-1) \ni \mathrm{diag}(f)`. This package measures each
factor on any rnnkit cell or on the recurrent layers inside any model:

==============================  ==================================================================
:func:`gradient_vs_lag`          ‖∂L/∂h(T−k)‖ for every lag k, batch-averaged, by autograd
:func:`jacobian_products`        norms and top singular values of ∂s(T)/∂s(T−k), per state field
:func:`spectrum`                 eigenvalues, spectral radius and ‖W^t‖ of each recurrent matrix
:func:`saturation`               histograms and saturated share of every tanh / sigmoid / ReLU
:func:`time_scales`              leaky time constants and clockwork periods vs measured decay
:func:`read_training_log`        pre-clip gradient norms and the clip threshold of a training run
:func:`diagnose_cell`            all of the above for one cell → :class:`CellReport`
:func:`compare_cells`            freshly initialised registry cells side by side on one input
:func:`diagnose_model`           every ``rnnkit.Recurrent`` layer of a model, trained and untrained
:func:`write_report`             PNG plots (800 × 500 px) and ``diagnose.json`` in a folder
==============================  ==================================================================

The command line is ``rnnkit diagnose`` (:mod:`rnnkit.cli.diagnose`).
"""

from .compute import (
    GradientFlow,
    JacobianProducts,
    MatrixSpectrum,
    NonlinearityStats,
    TimeScales,
    TrainingLog,
    decay_time,
    gradient_vs_lag,
    jacobian_products,
    matrix_spectrum,
    read_training_log,
    recurrent_layers,
    recurrent_matrices,
    saturation,
    spectrum,
    step_jacobian,
    time_scales,
    unroll,
    verdict,
)
from .plot import PIXELS
from .report import DEFAULT_CELLS, CellReport, compare_cells, diagnose_cell, diagnose_model, summary_lines, write_report

__all__ = [
    "GradientFlow",
    "JacobianProducts",
    "MatrixSpectrum",
    "NonlinearityStats",
    "TimeScales",
    "TrainingLog",
    "CellReport",
    "DEFAULT_CELLS",
    "PIXELS",
    "gradient_vs_lag",
    "jacobian_products",
    "step_jacobian",
    "unroll",
    "recurrent_matrices",
    "matrix_spectrum",
    "spectrum",
    "saturation",
    "time_scales",
    "decay_time",
    "verdict",
    "read_training_log",
    "recurrent_layers",
    "diagnose_cell",
    "compare_cells",
    "diagnose_model",
    "summary_lines",
    "write_report",
]
