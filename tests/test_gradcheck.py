"""The public gradient checker: it must pass right gradients and catch wrong ones."""
import numpy as np
import pytest

from tinycnn import gradcheck, layers as L


def test_numerical_gradient_of_a_known_function():
    x = np.array([[1.0, -2.0], [0.5, 3.0]])
    grad = gradcheck.numerical_gradient(lambda v: float(np.sum(v ** 3) + v[0, 1] * v[1, 0]), x)
    np.testing.assert_allclose(grad, 3 * x ** 2 + np.array([[0, 0.5], [-2.0, 0]]), rtol=1e-8)
    np.testing.assert_array_equal(x, [[1.0, -2.0], [0.5, 3.0]])          # restored


def test_relative_error_and_its_location():
    err, where = gradcheck.relative_error(np.array([[1.0, 2.0], [4.0, 0.0]]), np.array([[1.0, 2.0], [3.0, 0.0]]))
    assert err == pytest.approx(0.25) and where == (1, 0)
    assert gradcheck.relative_error(np.zeros(3), np.zeros(3))[0] == 0.0


class BrokenDense(L.Dense):
    """Forgets the bias gradient's sum over the batch: a typical learner's bug."""

    def _backward_from_z(self, dz):
        dx = super()._backward_from_z(dz)
        self.grads[1][...] = dz[0]
        return dx


def test_check_layer_catches_a_wrong_gradient_and_says_where():
    x = np.random.default_rng(0).standard_normal((3, 4))
    good = gradcheck.check_layer(L.Dense(2, activation="relu"), x)
    assert good.passed(1e-6) and good.max_error < 1e-6
    bad = gradcheck.check_layer(BrokenDense(2), x)
    assert not bad.passed(1e-6) and bad.max_error > 1e-2
    assert "param 1" in bad.worst["name"]
    assert "param 1" in str(bad) and "rel. error" in str(bad)


def test_check_layer_uses_a_float64_copy_and_leaves_the_layer_alone():
    layer = L.Conv2D(2, 3, name="my_conv")
    layer.build((5, 5, 1))
    before = layer.get_weights()
    report = gradcheck.check_layer(layer, np.random.default_rng(1).standard_normal((2, 5, 5, 1)))
    assert report.max_error < 1e-6            # float32 layer, but checked in float64
    assert report.entries[0]["name"].startswith("my_conv")
    for a, b in zip(before, layer.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert layer.params[0].dtype == np.float32


def test_check_model_on_an_object_with_layers_and_loss():
    class TinyModel:
        layers = [L.Flatten(), L.Dense(4, activation="relu"), L.Dense(3), L.Softmax()]
        loss = "sparse_categorical_crossentropy"

    x = np.random.default_rng(2).standard_normal((3, 2, 3))
    report = gradcheck.check_model(TinyModel(), x, np.array([0, 2, 1]))
    assert report.max_error < 1e-6, str(report)
    assert len(report.entries) == 1 + 4
    with pytest.raises(ValueError, match="loss"):
        gradcheck.check_model(TinyModel.layers, x, np.array([0, 2, 1]))


def test_check_model_on_a_compiled_sequential():
    from tinycnn import models
    model = models.Sequential([L.Conv2D(2, 3, activation="relu", input_shape=(6, 6, 1)), L.MaxPooling2D(2),
                               L.Flatten(), L.Dense(3, activation="softmax")])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    before = model.get_weights()
    report = gradcheck.check_model(model, np.random.default_rng(3).standard_normal((2, 6, 6, 1)), np.array([0, 2]))
    assert report.max_error < 1e-6, str(report)
    assert len(report.entries) == 1 + 4
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
