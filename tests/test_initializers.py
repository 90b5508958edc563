"""Initializers: Keras's fans and formulas, the truncated normal, seeding."""
import math

import numpy as np
import pytest

from tinycnn import initializers as I, utils


def test_fans_as_keras():
    assert I.compute_fans((5408, 100)) == (5408, 100)
    assert I.compute_fans((3, 3, 1, 32)) == (9, 288)
    assert I.compute_fans((3, 2, 4, 8)) == (24, 48)
    assert I.compute_fans((7,)) == (7, 7)


@pytest.mark.parametrize("shape", [(3, 3, 16, 32), (300, 200)])
def test_uniform_limits_and_spread(shape):
    fan_in, fan_out = I.compute_fans(shape)
    rng = np.random.default_rng(0)
    for name, limit in (("glorot_uniform", math.sqrt(6 / (fan_in + fan_out))), ("he_uniform", math.sqrt(6 / fan_in))):
        w = I.get(name)(shape, rng=rng)
        assert w.shape == shape and w.dtype == np.float32
        assert np.abs(w).max() <= limit and np.abs(w).max() > 0.98 * limit      # fills the whole range
        assert w.std() == pytest.approx(limit / math.sqrt(3), rel=0.03)


@pytest.mark.parametrize("name,fan", [("glorot_normal", "avg"), ("he_normal", "in")])
def test_truncated_normals(name, fan):
    shape = (3, 3, 32, 64)
    fan_in, fan_out = I.compute_fans(shape)
    target_std = math.sqrt(2 / (fan_in + fan_out)) if fan == "avg" else math.sqrt(2 / fan_in)
    w = I.get(name)(shape, dtype="float64", rng=np.random.default_rng(1))
    raw_std = target_std / I.TRUNCATED_NORMAL_STD_CORRECTION
    assert w.dtype == np.float64
    assert np.abs(w).max() <= 2 * raw_std                   # truncated at 2 standard deviations
    assert w.std() == pytest.approx(target_std, rel=0.03)   # the correction restores the wanted std
    assert abs(w.mean()) < 0.05 * target_std


def test_constants_and_lookup():
    np.testing.assert_array_equal(I.get("zeros")((2, 3)), 0)
    np.testing.assert_array_equal(I.get("ones")((4,), dtype="float64"), 1)
    assert I.get("GlorotUniform") is I.glorot_uniform
    custom = lambda shape, dtype="float32", rng=None: np.full(shape, 0.5, dtype)   # noqa: E731
    assert I.get(custom) is custom
    assert I.name_of(I.he_normal) == "he_normal"
    with pytest.raises(ValueError, match="Unknown initializer.*glorot_uniform"):
        I.get("orthogonal")


def test_seeding_makes_weights_reproducible():
    utils.set_random_seed(42)
    a = [I.glorot_uniform((4, 5)), I.he_normal((3, 3, 2, 4))]
    utils.set_random_seed(42)
    b = [I.glorot_uniform((4, 5)), I.he_normal((3, 3, 2, 4))]
    utils.set_random_seed(43)
    c = I.glorot_uniform((4, 5))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c)


def test_layers_draw_from_the_library_generator():
    from tinycnn import layers as L
    weights = []
    for _ in range(2):
        utils.set_random_seed(7)
        layer = L.Conv2D(4, 3)
        layer.build((5, 5, 2))
        weights.append(layer.get_weights()[0])
    np.testing.assert_array_equal(weights[0], weights[1])
