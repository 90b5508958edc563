"""Keras parity: the same architecture and weights give the same predictions, and the same
weights after several SGD-momentum and Adam steps, to float32 precision.

Needs tensorflow (only for this comparison; the library never imports it). Marked `keras`,
deselected by default; run with `python3 -m pytest -m keras tests/test_keras_parity.py`.
"""
import os

import numpy as np
import pytest

from helpers import rel_error
from tinycnn import layers as L, losses, optimizers

pytestmark = pytest.mark.keras

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = keras = None          # imported by the fixture below, only when a test here is selected


@pytest.fixture(scope="module", autouse=True)
def _tensorflow():
    """Import TensorFlow and Keras for these tests only, so a default run (which deselects
    them) neither imports TensorFlow nor reports a skip where it is not installed."""
    global tf, keras
    tf = pytest.importorskip("tensorflow")
    keras = pytest.importorskip("keras")

# float32 tolerances, relative to each array's largest value
PREDICTION_TOL = 2e-6
TRAINING_TOL = 2e-5


def random_architecture(seed):
    """A random small CNN: (input_shape, [layer specs]) shared by both builders; always a valid one."""
    rng = np.random.default_rng(seed)
    while True:
        input_shape, specs = _draw_architecture(rng)
        try:
            tinycnn_layers(input_shape, specs)
        except ValueError:          # some layer's output would be empty: draw again
            continue
        return input_shape, specs


def _draw_architecture(rng):
    h, w, c = int(rng.integers(9, 15)), int(rng.integers(9, 15)), int(rng.integers(1, 4))
    specs = []
    for _ in range(int(rng.integers(1, 3))):
        specs.append(("conv", dict(filters=int(rng.integers(2, 7)), kernel_size=(int(rng.integers(1, 5)), int(rng.integers(1, 5))),
                                   strides=(int(rng.integers(1, 3)), int(rng.integers(1, 3))),
                                   padding=["valid", "same"][rng.integers(2)], activation=["relu", None][rng.integers(2)],
                                   use_bias=bool(rng.integers(4) > 0))))
        pool = int(rng.integers(2, 4))
        specs.append(("pool", dict(pool_size=pool, strides=[None, 1, 2][rng.integers(3)], padding=["valid", "same"][rng.integers(2)])))
    specs.append(("flatten", {}))
    specs.append(("dense", dict(units=int(rng.integers(4, 12)), activation="relu")))
    specs.append(("dense", dict(units=5, activation="softmax")))
    return (h, w, c), specs


def keras_model(input_shape, specs):
    made = []
    for kind, kw in specs:
        if kind == "conv":
            made.append(keras.layers.Conv2D(**kw))
        elif kind == "pool":
            made.append(keras.layers.MaxPooling2D(**kw))
        elif kind == "flatten":
            made.append(keras.layers.Flatten())
        elif kind == "dense":
            made.append(keras.layers.Dense(**kw))
        elif kind == "softmax":
            made.append(keras.layers.Softmax())
    return keras.Sequential([keras.Input(input_shape)] + made)


def tinycnn_layers(input_shape, specs, kmodel=None):
    """The tinycnn layers of `specs`, built, with the Keras model's weights when one is given."""
    classes = {"conv": L.Conv2D, "pool": L.MaxPooling2D, "flatten": L.Flatten, "dense": L.Dense, "softmax": L.Softmax}
    net, shape = [], input_shape
    for i, (kind, kw) in enumerate(specs):
        layer = classes[kind](**kw)
        shape = layer.build(shape)
        if kmodel is not None:
            klayer = kmodel.layers[i]
            assert shape == tuple(klayer.output.shape[1:]), (layer.name, shape, klayer.output.shape)
            layer.set_weights(klayer.get_weights())            # Keras's layout, unchanged
        net.append(layer)
    net[0].need_input_grad = False
    return net


def forward(net, x):
    for layer in net:
        x = layer.forward(x, training=True)
    return x


def train_step(net, loss, optimizer, x, y):
    forward(net, x)
    _, grad = loss.from_logits(y, net[-1].logits)
    grad = net[-1].backward_from_logits(grad)
    for layer in reversed(net[:-1]):
        grad = layer.backward(grad)
    optimizer.apply_gradients([pair for layer in net for pair in layer.grads_and_params()])


def with_softmax_layer(specs):
    """The same network with the softmax as a separate layer."""
    kind, kw = specs[-1]
    return specs[:-1] + [(kind, dict(kw, activation=None)), ("softmax", {})]


@pytest.mark.parametrize("seed", range(8))
def test_same_predictions(seed):
    keras.utils.set_random_seed(seed)
    input_shape, specs = random_architecture(seed)
    if seed % 4 == 3:
        specs = with_softmax_layer(specs)
    kmodel = keras_model(input_shape, specs)
    for klayer in kmodel.layers:                            # non-zero biases, so they are tested too
        klayer.set_weights([w + 0.1 * np.random.default_rng(seed).standard_normal(w.shape).astype(np.float32)
                            if w.ndim == 1 else w for w in klayer.get_weights()])
    net = tinycnn_layers(input_shape, specs, kmodel)
    x = np.random.default_rng(seed).random((7,) + input_shape, dtype=np.float32)
    expected = kmodel.predict(x, verbose=0)
    got = forward(net, x)
    assert got.dtype == np.float32
    error = rel_error(got, expected)
    print(f"seed {seed}: prediction rel. error {error:.2e}")
    assert error < PREDICTION_TOL


@pytest.mark.parametrize("optimizer", ["sgd_momentum", "sgd_nesterov", "adam"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_same_weights_after_training_steps(seed, optimizer):
    keras.utils.set_random_seed(100 + seed)
    input_shape, specs = random_architecture(100 + seed)
    kmodel = keras_model(input_shape, specs)
    net = tinycnn_layers(input_shape, specs, kmodel)
    sparse = seed % 2 == 0
    if optimizer == "adam":
        k_opt, t_opt = keras.optimizers.Adam(learning_rate=0.01), optimizers.Adam(learning_rate=0.01)
    else:
        nesterov = optimizer == "sgd_nesterov"
        k_opt = keras.optimizers.SGD(learning_rate=0.05, momentum=0.9, nesterov=nesterov)
        t_opt = optimizers.SGD(lr=0.05, momentum=0.9, nesterov=nesterov)
    loss_name = "sparse_categorical_crossentropy" if sparse else "categorical_crossentropy"
    kmodel.compile(optimizer=k_opt, loss=loss_name)
    loss = losses.get(loss_name)
    rng = np.random.default_rng(seed)
    for step in range(5):
        x = rng.random((8,) + input_shape, dtype=np.float32)
        labels = rng.integers(0, 5, size=8)
        y = labels if sparse else np.eye(5, dtype=np.float32)[labels]
        kmodel.train_on_batch(x, y)
        train_step(net, loss, t_opt, x, y)
    assert t_opt.iterations == 5
    worst = 0.0
    for klayer, layer in zip(kmodel.layers, net):
        for kw, w in zip(klayer.get_weights(), layer.get_weights()):
            worst = max(worst, rel_error(w, kw))
    print(f"seed {seed} {optimizer}: weights rel. error after 5 steps {worst:.2e}")
    assert worst < TRAINING_TOL
    x = rng.random((4,) + input_shape, dtype=np.float32)
    assert rel_error(forward(net, x), kmodel.predict(x, verbose=0)) < TRAINING_TOL


NOTEBOOK_MODELS = {
    "cnn_categorical": [("conv", dict(filters=32, kernel_size=(3, 3), activation="relu")), ("pool", dict(pool_size=(2, 2))),
                        ("flatten", {}), ("dense", dict(units=100, activation="relu")),
                        ("dense", dict(units=10, activation="softmax"))],
    "cnn_sparse": [("conv", dict(filters=64, kernel_size=3, activation="relu")), ("pool", dict(pool_size=2)),
                   ("conv", dict(filters=64, kernel_size=3, activation="relu")), ("pool", dict(pool_size=2)),
                   ("flatten", {}), ("dense", dict(units=128, activation="relu")),
                   ("dense", dict(units=10, activation="softmax"))],
}


@pytest.mark.parametrize("name", sorted(NOTEBOOK_MODELS))
def test_notebook_models_train_alike(name):
    keras.utils.set_random_seed(5)
    specs = NOTEBOOK_MODELS[name]
    kmodel = keras_model((28, 28, 1), specs)
    net = tinycnn_layers((28, 28, 1), specs, kmodel)
    assert sum(layer.count_params() for layer in net) == kmodel.count_params()
    if name == "cnn_categorical":
        k_opt, t_opt, loss_name = keras.optimizers.SGD(0.01, momentum=0.9), optimizers.SGD(lr=0.01, momentum=0.9), "categorical_crossentropy"
    else:
        k_opt, t_opt, loss_name = keras.optimizers.Adam(), optimizers.Adam(), "sparse_categorical_crossentropy"
    kmodel.compile(optimizer=k_opt, loss=loss_name)
    loss = losses.get(loss_name)
    rng = np.random.default_rng(6)
    for _ in range(4):
        x = rng.random((32, 28, 28, 1), dtype=np.float32)
        labels = rng.integers(0, 10, size=32)
        y = labels if loss.sparse else np.eye(10, dtype=np.float32)[labels]
        k_loss = float(kmodel.train_on_batch(x, y))
        forward(net, x)
        t_loss = loss.from_logits(y, net[-1].logits)[0]
        assert t_loss == pytest.approx(k_loss, rel=1e-5)
        train_step(net, loss, t_opt, x, y)
    worst = max(rel_error(w, kw) for klayer, layer in zip(kmodel.layers, net)
                for kw, w in zip(klayer.get_weights(), layer.get_weights()))
    print(f"{name}: weights rel. error after 4 steps {worst:.2e}")
    # Adam divides by sqrt(v) + 1e-7: a weight whose gradient is a near-zero sum (~1e-9, where
    # float32 summation order changes it by tens of percent) moves by a step that depends on
    # that rounding. Such weights differ by ~1e-6 absolute (the step is 1e-3), hence a looser bound.
    assert worst < (TRAINING_TOL if name == "cnn_categorical" else 5e-5)


@pytest.mark.parametrize("seed", range(6))
def test_same_gradients_as_tensorflow(seed):
    keras.utils.set_random_seed(200 + seed)
    input_shape, specs = random_architecture(200 + seed)
    kmodel = keras_model(input_shape, specs)
    net = tinycnn_layers(input_shape, specs, kmodel)
    net[0].need_input_grad = True
    rng = np.random.default_rng(seed)
    x = rng.random((6,) + input_shape, dtype=np.float32)
    y = rng.integers(0, 5, size=6)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        k_loss = keras.losses.SparseCategoricalCrossentropy()(y, kmodel(xt))
    k_grads = tape.gradient(k_loss, [xt] + kmodel.trainable_weights)
    forward(net, x)
    t_loss, grad = losses.get("sparse_categorical_crossentropy").from_logits(y, net[-1].logits)
    grad = net[-1].backward_from_logits(grad)
    for layer in reversed(net[:-1]):
        grad = layer.backward(grad)
    t_grads = [grad] + [g for layer in net for g in layer.grads]
    assert t_loss == pytest.approx(float(k_loss), rel=1e-6)
    errors = [rel_error(t, k.numpy()) for t, k in zip(t_grads, k_grads)]
    print(f"seed {seed}: gradient rel. errors (input, params...) max {max(errors):.2e}")
    assert max(errors) < 1e-5


@pytest.mark.parametrize("shape,center,scale", [((9, 4), True, True), ((5, 6, 7, 3), True, True),
                                                ((6, 5, 4, 2), False, True), ((8, 3), True, False)])
def test_batch_normalization_matches_keras(shape, center, scale):
    rng = np.random.default_rng(300)
    klayer = keras.layers.BatchNormalization(momentum=0.9, center=center, scale=scale)
    klayer.build((None,) + shape[1:])
    klayer.set_weights([rng.standard_normal(w.shape).astype(np.float32) for w in klayer.get_weights()[:-2]]
                       + [w for w in klayer.get_weights()[-2:]])
    layer = L.BatchNormalization(momentum=0.9, center=center, scale=scale)
    layer.build(shape[1:])
    layer.set_weights(klayer.get_weights())                       # Keras's order: gamma, beta, moving stats
    for step in range(4):                                         # training: output, gradients, moving stats
        x = (rng.standard_normal(shape) * (step + 1) + step).astype(np.float32)
        upstream = rng.standard_normal(shape).astype(np.float32)
        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            k_out = klayer(xt, training=True)
            k_loss = tf.reduce_sum(k_out * upstream)
        k_grads = tape.gradient(k_loss, [xt] + klayer.trainable_weights)
        out = layer.forward(x, training=True)
        t_grads = [layer.backward(upstream)] + list(layer.grads)
        assert rel_error(out, k_out.numpy()) < PREDICTION_TOL
        errors = [rel_error(t, k.numpy()) for t, k in zip(t_grads, k_grads)]
        assert max(errors) < 1e-5, errors
        for kw, w in zip(klayer.get_weights(), layer.get_weights()):
            assert rel_error(w, kw) < TRAINING_TOL
    x = rng.standard_normal(shape).astype(np.float32)             # inference: the moving statistics
    assert rel_error(layer.forward(x, training=False), klayer(x, training=False).numpy()) < PREDICTION_TOL


@pytest.mark.parametrize("pool,strides,padding", [(2, None, "valid"), (3, 2, "same"), ((2, 3), 1, "same"),
                                                  (3, None, "same"), ((3, 2), (2, 1), "valid")])
def test_average_pooling_matches_keras(pool, strides, padding):
    x = np.random.default_rng(301).standard_normal((3, 7, 8, 2)).astype(np.float32)
    expected = keras.layers.AveragePooling2D(pool, strides, padding)(x).numpy()
    assert rel_error(L.AveragePooling2D(pool, strides, padding).forward(x), expected) < PREDICTION_TOL
    assert rel_error(L.GlobalAveragePooling2D().forward(x), keras.layers.GlobalAveragePooling2D()(x).numpy()) \
        < PREDICTION_TOL
