"""Small utilities shared by the tests (any test file may import them: `from helpers import ...`)."""
import numpy as np


def rel_error(a, b):
    """max |a - b| / max(max |a|, max |b|): the worst difference relative to the arrays' size.

    0 when both are all zeros. Arrays must have the same shape.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, f"shapes differ: {a.shape} vs {b.shape}"
    if a.size == 0:
        return 0.0
    scale = max(np.abs(a).max(), np.abs(b).max())
    return float(np.abs(a - b).max() / scale) if scale > 0 else 0.0


def distinct_values(rng, shape, gap=0.1):
    """An array of `shape` whose values are all different, at least `gap` apart (a shuffled ramp).

    For max pooling's gradient check: no ties, and no central-difference step can change a winner.
    """
    n = int(np.prod(shape))
    return (rng.permutation(n) - n / 2).reshape(shape) * gap


def one_hot(labels, classes, dtype=np.float64):
    """Integer labels (N,) -> one-hot rows (N, classes)."""
    out = np.zeros((len(labels), classes), dtype=dtype)
    out[np.arange(len(labels)), labels] = 1
    return out
