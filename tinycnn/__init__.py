"""tinycnn: a convolutional neural network library written from scratch in NumPy.

The layers, losses and optimizers are plain NumPy you can read top to bottom, and the
reference engine runs them as they are written (tinycnn.engines.reference); the speed lives
behind one seam, in the fast engine (tinycnn.engines.fast: numba kernels, each with a NumPy
twin). compile(engine=...) chooses.

Submodules are imported on first use, so `import tinycnn` stays fast (numba and
matplotlib load only when the fast engine or a plot needs them):

    >>> import tinycnn
    >>> model = tinycnn.models.Sequential([...])

Keras's code reads as tinycnn's with `tf.keras.` read as `tinycnn.` and `tf.nn.` as
`tinycnn.activations.`: tinycnn.Sequential and tinycnn.Model are tinycnn.models's.
"""
import importlib

__version__ = "0.1.0"

_SUBMODULES = (
    "activations", "callbacks", "checks", "cli", "data", "datasets", "engines", "executors", "functional",
    "gradcheck", "im2col",
    "initializers", "layers", "losses", "model_selection", "models", "optimizers",
    "plot", "saving", "schedules", "utils", "zoo",
)

# Names Keras has at its top level (tf.keras.Sequential), found in tinycnn.models.
_MODEL_NAMES = ("Sequential", "Model")


def __getattr__(name):
    # PEP 562: `tinycnn.layers` imports tinycnn/layers.py the first time it is used.
    if name in _SUBMODULES:
        return importlib.import_module(f"tinycnn.{name}")
    if name in _MODEL_NAMES:
        return getattr(importlib.import_module("tinycnn.models"), name)
    if name == "data_info":
        from tinycnn.datasets import data_info
        return data_info
    raise AttributeError(f"module 'tinycnn' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBMODULES) + list(_MODEL_NAMES) + ["data_info"])
