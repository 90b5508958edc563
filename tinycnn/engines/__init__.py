"""Engines: what runs a model's batches. The model says what to compute; the engine, how.

    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", engine="reference")

Two engines compute the same thing:
    "reference"  tinycnn.engines.reference: each layer's own forward and backward, the textbook
                 passes of tinycnn/layers.py, in plain NumPy. Read this one to learn.
    "fast"       tinycnn.engines.fast: the same maths, compiled (README, "How it is made
                 fast"). Held by the tests to the reference, to float32 rounding.
    "auto"       the fast engine where numba can be imported, else the reference engine.
The environment variable TINYCNN_ENGINE sets what "auto" (compile's default) means.

The interface a model uses (Sequential.fit, evaluate, predict):

    with engine.run(model, batch_size, batches, x, y):   around one fit/evaluate/predict call
        loss, outputs = engine.train_step(model, xb, yb)  one optimizer step on a batch
        outputs, logits = engine.predict_step(model, xb)  the forward pass, without training
"""
import contextlib
import os
import warnings

ENGINE_NAMES = ("auto", "reference", "fast")


class Engine:
    """What every engine offers; see this module's docstring."""
    name = None

    @contextlib.contextmanager
    def run(self, model, batch_size, batches, x, y=None):
        """Set up (and afterwards tear down) whatever a call of `batches` batches needs.

        x, y: the whole call's data and batch_size its batches' size, for an engine that
        prepares buffers for them; the reference engine needs nothing.
        """
        yield

    def train_step(self, model, x, y):
        """One optimizer step on the batch (x, y) -> (mean loss before the step, outputs (N, classes)).

        A NaN or infinite loss leaves the weights as they were (the step is not taken).
        """
        raise NotImplementedError

    def predict_step(self, model, x):
        """The batch's outputs (N, ...) and, for a softmax output, its logits (else None)."""
        raise NotImplementedError

    def __repr__(self):
        return f"<{type(self).__name__} {self.name!r}>"


def _numba_available():
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


_warned_no_numba = []


def resolve(name):
    """"auto" (or None) / "reference" / "fast" -> "reference" or "fast".

    "auto" is $TINYCNN_ENGINE where that is set, else "fast" where numba can be imported.
    """
    if name is None:
        name = "auto"
    if not isinstance(name, str) or name.lower() not in ENGINE_NAMES:
        raise ValueError(f"engine must be one of {', '.join(repr(n) for n in ENGINE_NAMES)}, got {name!r}")
    name = name.lower()
    if name == "auto":
        chosen = os.environ.get("TINYCNN_ENGINE", "").strip().lower()
        if chosen not in ("",) + ENGINE_NAMES:
            raise ValueError(f"TINYCNN_ENGINE must be one of {', '.join(ENGINE_NAMES)}, "
                             f"got {os.environ['TINYCNN_ENGINE']!r}")
        name = chosen or "auto"
    if name == "auto":
        if _numba_available():
            return "fast"
        if not _warned_no_numba:
            _warned_no_numba.append(True)
            warnings.warn("tinycnn: numba cannot be imported, so models run on the reference engine "
                          "(plain NumPy, slower); pip install numba for the fast one", RuntimeWarning,
                          stacklevel=3)
        return "reference"
    return name


def get(name="auto"):
    """A new engine object for one model: name "auto", "reference", "fast", or an Engine (unchanged)."""
    if isinstance(name, Engine):
        return name
    name = resolve(name)
    if name == "reference":
        from tinycnn.engines.reference import ReferenceEngine
        return ReferenceEngine()
    try:
        from tinycnn.engines.fast import FastEngine
    except ImportError as error:
        raise ValueError(f"engine='fast' needs numba, which cannot be imported ({error}); "
                         f"pip install numba, or use engine='reference'") from None
    return FastEngine()
