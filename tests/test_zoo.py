"""The notebook's three models: layers, initializers, optimizers, losses, sizes, and that they learn."""
import numpy as np
import pytest

from tinycnn import zoo
from tinycnn.data import load_for_model
from tinycnn.optimizers import SGD, Adam
from tinycnn.utils import set_random_seed


def layer_summary(model):
    """(class name, the config entries that define it) for each layer."""
    keys = ("filters", "kernel_size", "pool_size", "units", "activation", "kernel_initializer")
    rows = []
    for layer in model.layers:
        config = layer.get_config()
        rows.append((type(layer).__name__,) + tuple(
            tuple(config[k]) if isinstance(config.get(k), list) else config[k]
            for k in keys if k in config))
    return rows


def test_cnn_categorical_is_the_notebooks():
    model = zoo.cnn_categorical_model()
    assert layer_summary(model) == [
        ("Conv2D", 32, (3, 3), "relu", "he_uniform"),
        ("MaxPooling2D", (2, 2)),
        ("Flatten",),
        ("Dense", 100, "relu", "he_uniform"),
        ("Dense", 10, "softmax", "glorot_uniform"),
    ]
    assert isinstance(model.optimizer, SGD)
    assert model.optimizer.learning_rate == pytest.approx(0.01)
    assert model.optimizer.momentum == pytest.approx(0.9)
    assert model.count_params() == 542_230


def test_simple_dense_is_the_notebooks_and_builds_on_first_data():
    model = zoo.simple_dense_model()
    assert layer_summary(model) == [
        ("Flatten",),
        ("Dense", 128, "relu", "glorot_uniform"),
        ("Dense", 10, "softmax", "glorot_uniform"),
    ]
    assert model.layers[0].get_config().get("input_shape") is None    # as in the notebook
    assert isinstance(model.optimizer, Adam)
    assert model.optimizer.learning_rate == pytest.approx(0.001)
    model.predict(np.zeros((2, 28, 28), np.float32))
    assert model.count_params() == 101_770


def test_cnn_sparse_is_the_notebooks():
    model = zoo.cnn_sparse_categorical_model()
    assert layer_summary(model) == [
        ("Conv2D", 64, (3, 3), "relu", "glorot_uniform"),
        ("MaxPooling2D", (2, 2)),
        ("Conv2D", 64, (3, 3), "relu", "glorot_uniform"),
        ("MaxPooling2D", (2, 2)),
        ("Flatten",),
        ("Dense", 128, "relu", "glorot_uniform"),
        ("Dense", 10, "softmax", "glorot_uniform"),
    ]
    assert isinstance(model.optimizer, Adam)
    assert model.count_params() == 243_786


def test_he_uniform_kernels_use_their_fan_in():
    """he_uniform draws from +-sqrt(6 / fan_in); glorot from +-sqrt(6 / (fan_in + fan_out))."""
    set_random_seed(3)
    model = zoo.cnn_categorical_model()
    conv, dense, out = model.layers[0], model.layers[3], model.layers[4]
    for kernel, limit in ((conv.get_weights()[0], np.sqrt(6 / 9)),
                          (dense.get_weights()[0], np.sqrt(6 / 5408)),
                          (out.get_weights()[0], np.sqrt(6 / (100 + 10)))):
        assert np.abs(kernel).max() <= limit
        assert np.abs(kernel).max() > 0.95 * limit       # fills the range: the right formula


def test_models_table_matches_each_models_loss_and_input():
    assert set(zoo.MODELS) == {"cnn_categorical", "simple_dense", "cnn_sparse", "best"}
    for name, spec in zoo.MODELS.items():
        model = spec.build()
        loss_name = model.loss if isinstance(model.loss, str) else type(model.loss).__name__
        assert ("sparse" not in loss_name.lower()) == spec.one_hot, name
        assert zoo.get_model(name) is not zoo.get_model(name)        # a fresh model each time
    assert zoo.MODELS["cnn_categorical"].input_shape == (28, 28, 1)
    assert zoo.MODELS["simple_dense"].input_shape == (28, 28)
    with pytest.raises(ValueError, match="choose one of: cnn_categorical, simple_dense, cnn_sparse, best"):
        zoo.get_model("lenet")


def test_each_model_is_seeded():
    set_random_seed(5)
    a = zoo.cnn_sparse_categorical_model().get_weights()
    set_random_seed(5)
    b = zoo.cnn_sparse_categorical_model().get_weights()
    set_random_seed(6)
    c = zoo.cnn_sparse_categorical_model().get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("name", ["cnn_categorical", "cnn_sparse", "simple_dense"])
def test_each_model_learns_from_real_data_in_one_short_epoch(name):
    """1,000 real images, one epoch: well above chance (10%) on 1,000 test images."""
    (x_train, y_train), (x_test, y_test) = load_for_model(name, limit=1000)
    set_random_seed(1)
    model = zoo.get_model(name)
    _, before = model.evaluate(x_test, y_test, verbose=0)
    history = model.fit(x_train, y_train, epochs=1, batch_size=32, verbose=0)
    _, after = model.evaluate(x_test, y_test, verbose=0)
    assert after > 0.6 and after > before + 0.3
    assert np.isfinite(history.history["loss"][0])


@pytest.mark.parametrize("wrong", ["cnn_categorical", "cnn_sparse", "simple_dense"])
def test_a_short_name_used_as_a_function_says_what_to_call(wrong):
    with pytest.raises(AttributeError) as caught:
        getattr(zoo, wrong)
    message = str(caught.value)
    assert f"did you mean {zoo.MODELS[wrong].build.__name__}() or get_model({wrong!r})?" in message
    for name in ("cnn_categorical_model()", "simple_dense_model()", "cnn_sparse_categorical_model()",
                 "get_model('cnn_sparse')"):
        assert name in message
    assert not hasattr(zoo, "no_such_model")                       # still an AttributeError for anything else


# ---------------------------------------------------------------------------
# best: beyond the notebook
# ---------------------------------------------------------------------------
def test_best_is_under_half_a_million_parameters_with_its_recipe():
    model = zoo.best_model()
    assert model.count_params() == 468_778 < 500_000
    names = [type(layer).__name__ for layer in model.layers]
    assert names[:3] == ["RandomFlip", "RandomTranslation", "RandomErasing"]
    assert names.count("BatchNormalization") == 5 and names.count("Dropout") == 3
    assert all(not layer.use_bias for layer in model.layers if type(layer).__name__ == "Conv2D")
    assert model.loss.label_smoothing == 0.1 and type(model.optimizer).__name__ == "AdamW"
    spec = zoo.get_spec("best")
    assert (spec.epochs, spec.batch_size, spec.one_hot) == (30, 128, True)


def test_best_schedule_fits_the_runs_length():
    # 2 epochs of warm-up from 2e-4 to 2e-3, then a cosine to 0 at the run's last step.
    for epochs, batch_size, images in ((30, 128, 60_000), (3, 32, 1000)):
        steps_per_epoch = -(-images // batch_size)
        schedule = zoo.get_spec("best").build_for(epochs, batch_size, images).optimizer.schedule
        warmup = min(2, epochs) * steps_per_epoch
        assert schedule(0) == pytest.approx(2e-4)
        assert schedule(warmup) == pytest.approx(2e-3)
        assert schedule(warmup // 2) == pytest.approx(1.1e-3)
        assert schedule(epochs * steps_per_epoch) == pytest.approx(0, abs=1e-12)
        assert schedule(epochs * steps_per_epoch - 1) > 0


def test_best_without_each_addition_leaves_its_layers_out():
    def names(**switches):
        return [type(layer).__name__ for layer in zoo.best_model(**switches).layers]
    assert "BatchNormalization" not in names(batch_norm=False)
    assert all(layer.use_bias for layer in zoo.best_model(batch_norm=False).layers if hasattr(layer, "use_bias"))
    assert "Dropout" not in names(dropout=False)
    assert not any(name.startswith("Random") for name in names(augmentation=False))
    assert len(names()) == len(names(dropout=False)) + 3 == len(names(augmentation=False)) + 3


def test_best_learns_from_real_data():
    # 2,000 images, 2 epochs of 63 steps: the training loss falls and fit's accuracy (batch
    # statistics, augmentation on) is far above chance. (At inference the moving statistics
    # would still be mostly their starting values after so few steps: see examples/07.)
    (x_train, y_train), _ = load_for_model("best", limit=2000)
    set_random_seed(1)
    model = zoo.get_spec("best").build_for(2, 32, len(x_train))
    history = model.fit(x_train, y_train, epochs=2, batch_size=32, verbose=0).history
    assert history["loss"][1] < history["loss"][0]
    assert history["accuracy"][1] > 0.5
