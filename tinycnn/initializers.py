"""Weight initializers with Keras's formulas, drawing from tinycnn's one random Generator.

`get(name)` returns a function `init(shape, dtype="float32", rng=None) -> np.ndarray`.
rng defaults to `tinycnn.utils.get_rng()`, so `tinycnn.utils.set_random_seed(s)` makes
every model's starting weights reproducible.

Fans, as Keras computes them (`compute_fans`):
    Dense kernel (in, out):              fan_in = in,            fan_out = out
    Conv2D kernel (kh, kw, in, filters): fan_in = kh * kw * in,  fan_out = kh * kw * filters
    a vector (n,):                       fan_in = fan_out = n

    glorot_uniform  U(-limit, limit), limit = sqrt(6 / (fan_in + fan_out))   (the default)
    he_uniform      U(-limit, limit), limit = sqrt(6 / fan_in)
    glorot_normal   truncated normal, stddev = sqrt(2 / (fan_in + fan_out)) / 0.87962566103423978
    he_normal       truncated normal, stddev = sqrt(2 / fan_in) / 0.87962566103423978
    zeros, ones     constants
The truncated normal redraws every value further than 2 standard deviations from 0;
cutting the tails shrinks the spread by 0.8796..., which the division above undoes so
that the final standard deviation is the wanted sqrt(2 / fan) (Keras's VarianceScaling).
"""
import math

import numpy as np

from tinycnn import utils

TRUNCATED_NORMAL_STD_CORRECTION = 0.87962566103423978   # std of N(0,1) truncated to [-2, 2]


def compute_fans(shape):
    """(fan_in, fan_out) of a weight of this shape, as Keras computes them."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive_field = math.prod(shape[:-2])          # kh * kw for a 2-D convolution
    return shape[-2] * receptive_field, shape[-1] * receptive_field


def _check_shape(shape):
    shape = tuple(shape)
    if any(not isinstance(s, (int, np.integer)) or s < 0 for s in shape):
        raise ValueError(f"initializer: shape must be non-negative integers, got {shape}")
    return shape


def _uniform(shape, limit, dtype, rng):
    return rng.uniform(-limit, limit, size=shape).astype(dtype)


def truncated_normal(shape, stddev, dtype="float32", rng=None):
    """Normal(0, stddev) values, each redrawn until it lies within 2 * stddev of 0."""
    rng = utils.get_rng() if rng is None else rng
    values = rng.standard_normal(size=shape)
    outside = np.abs(values) > 2.0
    while outside.any():
        values[outside] = rng.standard_normal(size=int(outside.sum()))
        outside = np.abs(values) > 2.0
    return (values * stddev).astype(dtype)


def glorot_uniform(shape, dtype="float32", rng=None):
    """U(-limit, limit) with limit = sqrt(6 / (fan_in + fan_out))."""
    shape = _check_shape(shape)
    fan_in, fan_out = compute_fans(shape)
    limit = math.sqrt(6.0 / max(1.0, fan_in + fan_out))
    return _uniform(shape, limit, dtype, utils.get_rng() if rng is None else rng)


def he_uniform(shape, dtype="float32", rng=None):
    """U(-limit, limit) with limit = sqrt(6 / fan_in)."""
    shape = _check_shape(shape)
    fan_in, _ = compute_fans(shape)
    limit = math.sqrt(6.0 / max(1.0, fan_in))
    return _uniform(shape, limit, dtype, utils.get_rng() if rng is None else rng)


def glorot_normal(shape, dtype="float32", rng=None):
    """Truncated normal with final std sqrt(2 / (fan_in + fan_out))."""
    shape = _check_shape(shape)
    fan_in, fan_out = compute_fans(shape)
    stddev = math.sqrt(2.0 / max(1.0, fan_in + fan_out)) / TRUNCATED_NORMAL_STD_CORRECTION
    return truncated_normal(shape, stddev, dtype, rng)


def he_normal(shape, dtype="float32", rng=None):
    """Truncated normal with final std sqrt(2 / fan_in)."""
    shape = _check_shape(shape)
    fan_in, _ = compute_fans(shape)
    stddev = math.sqrt(2.0 / max(1.0, fan_in)) / TRUNCATED_NORMAL_STD_CORRECTION
    return truncated_normal(shape, stddev, dtype, rng)


def zeros(shape, dtype="float32", rng=None):
    """All zeros (the default for biases)."""
    return np.zeros(_check_shape(shape), dtype=dtype)


def ones(shape, dtype="float32", rng=None):
    """All ones."""
    return np.ones(_check_shape(shape), dtype=dtype)


_INITIALIZERS = {
    "glorot_uniform": glorot_uniform, "glorot_normal": glorot_normal,
    "he_uniform": he_uniform, "he_normal": he_normal, "zeros": zeros, "ones": ones,
}
# Keras's class names, as they appear in saved Keras configs
_ALIASES = {"GlorotUniform": "glorot_uniform", "GlorotNormal": "glorot_normal",
            "HeUniform": "he_uniform", "HeNormal": "he_normal", "Zeros": "zeros", "Ones": "ones"}


def get(name):
    """The initializer called `name` (see the module docstring); a callable is returned unchanged."""
    if callable(name):
        return name
    if isinstance(name, str):
        key = _ALIASES.get(name, name.lower())
        if key in _INITIALIZERS:
            return _INITIALIZERS[key]
    raise ValueError(f"Unknown initializer {name!r}; choose one of {sorted(_INITIALIZERS)}")


def name_of(initializer):
    """The name `get` understands for this initializer (for get_config)."""
    for key, fn in _INITIALIZERS.items():
        if fn is initializer:
            return key
    return getattr(initializer, "__name__", repr(initializer))
