"""Fast paths for the time loop. Each sits beside the plain reference loop
(:meth:`rnnkit.Recurrent.reference`) and is tested against it.

* :mod:`rnnkit.engine.native` — cells that torch's fused kernels compute (oneDNN on CPU,
  cuDNN on GPU) run through those kernels.
"""
