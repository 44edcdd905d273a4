"""Fast paths for the time loop. Each sits beside the plain reference loop
(:meth:`rnnkit.Recurrent.reference`) and is tested against it.

* :mod:`rnnkit.engine.native` — cells that torch's fused kernels compute (oneDNN on CPU,
  cuDNN on GPU) run through those kernels; whole stacks and bidirectional layers in one call.
* :mod:`rnnkit.engine.fused` — every other Elman/clockwork/LSTM/GRU cell, alone or leaky or
  with a skip connection: the whole sequence's forward pass and BPTT in a C++ extension
  (sources in ``rnnkit/engine/csrc/``), built on first use.
"""
