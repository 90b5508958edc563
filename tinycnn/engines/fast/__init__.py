"""The fast engine: the reference engine's maths through numba kernels, fused passes,
Winograd's convolution and two cores (see engine.py; the kernels are in kernels.py, the
layers' fast passes in ops.py, the two halves and the worker process in parallel.py)."""
from tinycnn.engines.fast.engine import FastEngine

__all__ = ["FastEngine"]
