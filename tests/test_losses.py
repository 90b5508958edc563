"""Softmax cross-entropy: values, the fused gradient (softmax - onehot)/batch, stability, Keras's clipping."""
import numpy as np
import pytest

from helpers import one_hot, rel_error
from tinycnn import gradcheck, losses

CCE = losses.get("categorical_crossentropy")
SCCE = losses.get("sparse_categorical_crossentropy")


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_get_and_names():
    assert isinstance(CCE, losses.CategoricalCrossentropy) and CCE.name == "categorical_crossentropy"
    assert isinstance(SCCE, losses.SparseCategoricalCrossentropy) and SCCE.sparse and not CCE.sparse
    assert losses.get(CCE) is CCE
    assert isinstance(losses.get("SparseCategoricalCrossentropy"), losses.SparseCategoricalCrossentropy)
    with pytest.raises(ValueError, match="Unknown loss.*categorical_crossentropy"):
        losses.get("mse")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_from_logits_value_and_gradient(dtype):
    rng = np.random.default_rng(0)
    z = (rng.standard_normal((6, 5)) * 3).astype(dtype)
    y = rng.integers(0, 5, size=6)
    p = softmax(z.astype(np.float64))
    expected_loss = -np.mean(np.log(p[np.arange(6), y]))
    for loss, target in ((SCCE, y), (CCE, one_hot(y, 5)), (SCCE, y.reshape(6, 1))):
        value, grad = loss.from_logits(target, z)
        assert isinstance(value, float) and value == pytest.approx(expected_loss, rel=1e-6)
        assert grad.dtype == dtype and grad.shape == z.shape
        assert rel_error(grad, (p - one_hot(y, 5)) / 6) < (1e-6 if dtype == np.float32 else 1e-14)


def test_from_logits_gradient_is_the_derivative_of_the_loss():
    rng = np.random.default_rng(1)
    z = rng.standard_normal((4, 3))
    y = np.array([2, 0, 1, 1])
    _, grad = SCCE.from_logits(y, z)
    numeric = gradcheck.numerical_gradient(lambda zz: SCCE.from_logits(y, zz)[0], z.copy())
    assert rel_error(grad, numeric) < 1e-8


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stable_for_huge_logits(dtype):
    z = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [5e3, 1e4, -1e4]], dtype=dtype)
    y = np.array([0, 2, 0])
    value, grad = SCCE.from_logits(y, z)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    # row 0 is right with certainty (loss 0), row 1 is uniform (log 3), row 2 is wrong by 5e3
    assert value == pytest.approx((0 + np.log(3) + 5e3) / 3, rel=1e-6)
    np.testing.assert_allclose(grad[0], [0, 0, 0], atol=1e-7)
    np.testing.assert_allclose(grad[2], np.array([-1, 1, 0]) / 3, atol=1e-7)


def test_higher_rank_outputs_average_over_every_position():
    rng = np.random.default_rng(2)
    z = rng.standard_normal((2, 3, 4))
    y = rng.integers(0, 4, size=(2, 3))
    value, grad = SCCE.from_logits(y, z)
    flat_value, flat_grad = SCCE.from_logits(y.reshape(-1), z.reshape(6, 4))
    assert value == pytest.approx(flat_value) and rel_error(grad.reshape(6, 4), flat_grad) < 1e-15


def test_from_probs_matches_keras_formula_and_clips():
    # Keras: categorical normalises the rows, then clips to [1e-7, 1 - 1e-7], then -sum(t log p).
    probs = np.array([[0.7, 0.2, 0.1], [0.0, 1.0, 0.0], [0.2, 0.2, 0.2]])
    y = np.array([0, 0, 2])
    value = CCE(one_hot(y, 3), probs)
    expected = np.mean([-np.log(0.7), -np.log(1e-7), -np.log(1 / 3)])
    assert value == pytest.approx(expected, rel=1e-12)
    assert np.isfinite(value)
    # sparse: clip, then -log(c_y / sum(c))
    expected_sparse = np.mean([-np.log(0.7), -np.log(1e-7 / (1e-7 + (1 - 1e-7) + 1e-7)), -np.log(1 / 3)])
    assert SCCE(y, probs) == pytest.approx(expected_sparse, rel=1e-12)


def test_from_probs_gradients_are_derivatives_of_the_loss():
    rng = np.random.default_rng(3)
    probs = softmax(rng.standard_normal((5, 4)))
    y = np.array([0, 3, 1, 1, 2])
    for loss, target in ((CCE, one_hot(y, 4)), (SCCE, y)):
        _, grad = loss.from_probs(target, probs)
        numeric = gradcheck.numerical_gradient(lambda p: loss.from_probs(target, p)[0], probs.copy(), eps=1e-7)
        assert rel_error(grad, numeric) < 1e-6, loss.name
    # where the clip bites (p = 0 or 1), no gradient flows, as with TensorFlow's clip_by_value
    probs = np.array([[0.0, 1.0, 0.0]])
    _, grad = SCCE.from_probs(np.array([0]), probs)
    np.testing.assert_array_equal(grad, 0)


def test_from_probs_of_a_softmax_agrees_with_from_logits():
    rng = np.random.default_rng(4)
    z = rng.standard_normal((6, 5))
    y = rng.integers(0, 5, size=6)
    for loss, target in ((CCE, one_hot(y, 5)), (SCCE, y)):
        assert loss.from_probs(target, softmax(z))[0] == pytest.approx(loss.from_logits(target, z)[0], rel=1e-10)


def test_bad_targets_raise_clear_errors():
    z = np.zeros((4, 3))
    with pytest.raises(ValueError, match=r"label 3 is out of range for 3 classes.*\[0, 2\]"):
        SCCE.from_logits(np.array([0, 1, 2, 3]), z)
    with pytest.raises(ValueError, match="label -1 is out of range"):
        SCCE.from_logits(np.array([0, 1, -1, 2]), z)
    with pytest.raises(ValueError, match=r"shape \(4,\).*got \(5,\)"):
        SCCE.from_logits(np.zeros(5, int), z)
    with pytest.raises(ValueError, match="one-hot targets need loss='categorical_crossentropy'"):
        SCCE.from_logits(np.eye(3)[[0, 1, 2, 0]], z)
    with pytest.raises(ValueError, match="integer class labels"):
        SCCE.from_logits(np.array([0.5, 1, 2, 0]), z)
    with pytest.raises(ValueError, match=r"output's shape \(4, 3\).*got \(4,\).*sparse_categorical_crossentropy"):
        CCE.from_logits(np.array([0, 1, 2, 0]), z)
    with pytest.raises(ValueError, match=r"\(batch, classes\)"):
        CCE.from_logits(np.zeros(3), np.zeros(3))


# ---------------------------------------------------------------------------
# Label smoothing (Keras 3: y * (1 - ls) + ls / C, categorical only)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_label_smoothing_value_and_gradient_from_logits(dtype):
    rng = np.random.default_rng(4)
    z = rng.standard_normal((6, 5)).astype(dtype)
    y = one_hot(rng.integers(0, 5, 6), 5, dtype)
    smooth = losses.CategoricalCrossentropy(label_smoothing=0.1)
    t = y * dtype(0.9) + dtype(0.1) / dtype(5)
    p = softmax(z.astype(np.float64))
    loss, grad = smooth.from_logits(y, z)
    assert loss == pytest.approx(-(t * np.log(p)).sum(axis=1).mean(), rel=1e-6 if dtype == np.float32 else 1e-13)
    assert grad.dtype == dtype
    assert rel_error(grad, (p - t) / 6) < (1e-6 if dtype == np.float32 else 1e-14)
    plain = losses.CategoricalCrossentropy()
    assert smooth.from_logits(y, z)[0] > plain.from_logits(y, z)[0] - 1     # (different, and finite)
    assert plain.from_logits(t, z)[0] == loss                               # the same as pre-smoothed targets


def test_label_smoothing_gradients_are_derivatives_of_the_loss_in_float64():
    rng = np.random.default_rng(5)
    z = rng.standard_normal((4, 3))
    y = one_hot(np.array([2, 0, 1, 1]), 3)
    smooth = losses.CategoricalCrossentropy(label_smoothing=0.3)
    _, grad = smooth.from_logits(y, z)
    numeric = gradcheck.numerical_gradient(lambda zz: smooth.from_logits(y, zz)[0], z.copy())
    assert rel_error(grad, numeric) < 1e-8
    probs = softmax(z)
    _, grad = smooth.from_probs(y, probs)
    numeric = gradcheck.numerical_gradient(lambda pp: smooth.from_probs(y, pp)[0], probs.copy(), eps=1e-7)
    assert rel_error(grad, numeric) < 1e-6


def test_label_smoothing_through_a_whole_model_passes_the_gradient_check():
    from tinycnn import layers as L, models
    model = models.Sequential([L.Flatten(input_shape=(2, 3)), L.Dense(4, activation="relu"),
                               L.Dense(3, activation="softmax")])
    model.compile(optimizer="sgd", loss=losses.CategoricalCrossentropy(label_smoothing=0.2))
    x = np.random.default_rng(6).standard_normal((3, 2, 3))
    report = gradcheck.check_model(model, x, one_hot(np.array([0, 2, 1]), 3))
    assert report.max_error < 1e-6, str(report)


def test_label_smoothing_arguments_configs_and_the_sparse_loss():
    assert losses.get("categorical_crossentropy").label_smoothing == 0.0
    smooth = losses.get({"class_name": "CategoricalCrossentropy",
                         "config": {"name": "categorical_crossentropy", "label_smoothing": 0.1}})
    assert smooth.label_smoothing == 0.1 and smooth.get_config()["label_smoothing"] == 0.1
    assert losses.get(smooth) is smooth
    assert losses.CategoricalCrossentropy().get_config() == {"name": "categorical_crossentropy"}
    with pytest.raises(ValueError, match=r"label_smoothing must be a number in \[0, 1\]"):
        losses.CategoricalCrossentropy(label_smoothing=1.5)
    with pytest.raises(TypeError):                            # as Keras 3: the sparse loss has no smoothing
        losses.SparseCategoricalCrossentropy(label_smoothing=0.1)


def test_a_model_saves_and_loads_its_label_smoothing(tmp_path):
    from tinycnn import layers as L, models
    model = models.Sequential([L.Dense(3, activation="softmax", input_shape=(2,))])
    model.compile("sgd", losses.CategoricalCrossentropy(label_smoothing=0.25), engine="reference")
    model.save(tmp_path / "m.npz")
    assert models.load_model(tmp_path / "m.npz").loss.label_smoothing == 0.25
