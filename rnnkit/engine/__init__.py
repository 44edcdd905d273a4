"""Fast paths for the time loop. Each sits beside the plain reference loop
(:meth:`rnnkit.Recurrent.reference`) and is tested against it.

* :mod:`rnnkit.engine.native` — cells that torch's fused kernels compute exactly (oneDNN on CPU,
  cuDNN on GPU) run through those kernels; whole stacks and bidirectional layers in one call.
* :mod:`rnnkit.engine.fused` — any other cell, a user's own included: its ``recurrence`` is
  traced (:mod:`rnnkit.engine.trace`) into a program of row operations
  (:mod:`rnnkit.engine.plan`) that one compiled loop runs forward and back through time
  (sources in ``rnnkit/engine/csrc/``; built at setup or on first use by
  :mod:`rnnkit.engine.build`).
* :mod:`rnnkit.engine.choose` — which of them runs a layer, decided in one place.
"""
