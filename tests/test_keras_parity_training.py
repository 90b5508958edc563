"""Keras parity of the training tools: learning-rate schedules, weight decay (SGD, AdamW, with a
schedule and exclusions) and label smoothing, against Keras 3 itself, in float32.

Marked `keras`, deselected by default; run with `python -m pytest -m keras tests/test_keras_parity_training.py`.
"""
import os

import numpy as np
import pytest

from helpers import one_hot, rel_error
from tinycnn import losses, optimizers, schedules

pytestmark = pytest.mark.keras

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = keras = None          # imported by the fixture below, only when a test here is selected


@pytest.fixture(scope="module", autouse=True)
def _tensorflow():
    global tf, keras
    tf = pytest.importorskip("tensorflow")
    keras = pytest.importorskip("keras")


SCHEDULES = [
    ("CosineDecay", dict(initial_learning_rate=0.1, decay_steps=10, alpha=0.2)),
    ("CosineDecay", dict(initial_learning_rate=0.01, decay_steps=8, alpha=0.1, warmup_target=0.05, warmup_steps=4)),
    ("CosineDecay", dict(initial_learning_rate=0.0, decay_steps=5, warmup_target=0.1, warmup_steps=3)),
    ("ExponentialDecay", dict(initial_learning_rate=0.1, decay_steps=3, decay_rate=0.7)),
    ("ExponentialDecay", dict(initial_learning_rate=0.1, decay_steps=3, decay_rate=0.7, staircase=True)),
    ("PiecewiseConstantDecay", dict(boundaries=[2, 5], values=[0.1, 0.05, 0.01])),
]


@pytest.mark.parametrize("name, kwargs", SCHEDULES)
def test_schedules_give_keras_values(name, kwargs):
    ours, theirs = getattr(schedules, name)(**kwargs), getattr(keras.optimizers.schedules, name)(**kwargs)
    for step in range(20):
        expected = float(theirs(step))                     # Keras: float32
        assert ours(step) == pytest.approx(expected, rel=1e-6, abs=1e-9), (name, step)


def keras_steps(optimizer, weights, grads_per_step):
    variables = [keras.Variable(w, name=name) for name, w in weights.items()]
    for grads in grads_per_step:
        optimizer.apply_gradients(zip([tf.constant(g) for g in grads], variables))
    return [v.numpy() for v in variables]


def tinycnn_steps(optimizer, weights, grads_per_step, names):
    params = [w.copy() for w in weights.values()]
    optimizer._weight_paths = lambda: names          # the paths a model would give (Sequential.compile)
    for grads in grads_per_step:
        optimizer.apply_gradients(zip(grads, params))
    return params


def problem(seed, steps=5):
    rng = np.random.default_rng(seed)
    weights = {"kernel": rng.standard_normal((6, 4)).astype(np.float32),
               "bias": rng.standard_normal(4).astype(np.float32)}
    grads = [[rng.standard_normal(w.shape).astype(np.float32) for w in weights.values()] for _ in range(steps)]
    return weights, grads


def cosine_kwargs():
    return dict(initial_learning_rate=0.01, decay_steps=4, warmup_target=0.1, warmup_steps=2)


@pytest.mark.parametrize("case", ["sgd", "sgd_momentum", "sgd_schedule", "adam", "adamw", "adamw_schedule",
                                  "adamw_exclude_bias"])
def test_weight_decay_steps_as_keras(case):
    weights, grads = problem(3)
    lr = ((schedules.CosineDecay(**cosine_kwargs()), keras.optimizers.schedules.CosineDecay(**cosine_kwargs()))
          if "schedule" in case else (0.05, 0.05))
    if case.startswith("sgd"):
        momentum = 0.0 if case == "sgd" else 0.9
        ours = optimizers.SGD(lr[0], momentum=momentum, weight_decay=0.1)
        theirs = keras.optimizers.SGD(lr[1], momentum=momentum, weight_decay=0.1)
    elif case == "adam":
        ours, theirs = optimizers.Adam(lr[0], weight_decay=0.05), keras.optimizers.Adam(lr[1], weight_decay=0.05)
    else:
        ours, theirs = optimizers.AdamW(lr[0], weight_decay=0.2), keras.optimizers.AdamW(lr[1], weight_decay=0.2)
    if case.endswith("exclude_bias"):
        ours.exclude_from_weight_decay(var_names=["bias"])
        theirs.exclude_from_weight_decay(var_names=["bias"])
    got = tinycnn_steps(ours, weights, grads, names=["dense/kernel", "dense/bias"])
    expected = keras_steps(theirs, weights, grads)
    for a, b in zip(got, expected):
        assert a.dtype == np.float32
        assert rel_error(a, b) < 1e-6, case
    assert ours.iterations == int(theirs.iterations) == len(grads)
    assert ours.learning_rate == pytest.approx(float(theirs.learning_rate), rel=1e-6)


@pytest.mark.parametrize("label_smoothing", [0.1, 0.35])
def test_label_smoothing_loss_and_gradient_as_keras(label_smoothing):
    rng = np.random.default_rng(7)
    z = rng.standard_normal((8, 5)).astype(np.float32)
    y = one_hot(rng.integers(0, 5, 8), 5, np.float32)
    loss_fn = keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)
    logits = tf.Variable(z)
    with tf.GradientTape() as tape:
        probs = tf.nn.softmax(logits)
        keras_loss = loss_fn(y, probs)
    keras_grad = tape.gradient(keras_loss, logits).numpy()
    ours = losses.CategoricalCrossentropy(label_smoothing=label_smoothing)
    loss, grad = ours.from_logits(y, z)
    assert loss == pytest.approx(float(keras_loss), rel=1e-6)
    assert rel_error(grad, keras_grad) < 1e-5
    # from the probabilities too (Keras's own formula, with its clipping)
    p = tf.Variable(probs.numpy())
    with tf.GradientTape() as tape:
        keras_loss = loss_fn(y, p)
    loss, grad = ours.from_probs(y, p.numpy())
    assert loss == pytest.approx(float(keras_loss), rel=1e-6)
    assert rel_error(grad, tape.gradient(keras_loss, p).numpy()) < 1e-5


@pytest.mark.parametrize("name", ["RandomFlip", "RandomTranslation", "BatchNormalization"])
def test_the_random_and_normalising_layers_take_keras_defaults(name):
    """A Keras user's RandomTranslation(0.1, 0.1) fills as Keras's does ("reflect"), and so on:
    every argument both constructors have gets the same default."""
    import inspect

    from tinycnn import layers as L
    ours = inspect.signature(getattr(L, name).__init__).parameters
    theirs = inspect.signature(getattr(keras.layers, name).__init__).parameters
    shared = [p for p in ours if p in theirs and p not in ("self", "seed", "name", "dtype")
              and ours[p].default is not inspect.Parameter.empty]
    assert shared, name
    for p in shared:
        assert ours[p].default == theirs[p].default, (name, p, ours[p].default, theirs[p].default)
