"""The rule "read `tf.keras.` as `tinycnn.` and `tf.nn.` as `tinycnn.activations.`", tested on
the notebook's own cells, run as they are written, with a stand-in module `tf` whose `.keras`
is tinycnn and whose `.nn` is tinycnn.activations (also importable as `tensorflow` and
`tensorflow.keras`, for the notebook's `from tensorflow.keras import models`)."""
import contextlib
import io
import sys
import types

import matplotlib
import numpy as np
import pytest

import tinycnn
import tinycnn.activations
import tinycnn.layers
import tinycnn.models
from tinycnn import utils


@pytest.fixture
def tf(monkeypatch):
    shim = types.ModuleType("tensorflow")
    shim.keras = tinycnn
    shim.nn = tinycnn.activations
    monkeypatch.setitem(sys.modules, "tensorflow", shim)
    monkeypatch.setitem(sys.modules, "tensorflow.keras", tinycnn)
    return shim


@pytest.fixture(scope="module")
def fashion():
    """2,000 real training and 500 real test images as the notebook loads them (uint8), integer labels."""
    (train_x, train_y), (test_x, test_y) = tinycnn.datasets.fashion_mnist.load_data()
    return train_x[:2000], train_y[:2000], test_x[:500], test_y[:500]


def run_cell(cell, namespace):
    """Execute one notebook cell's source in `namespace`; return what it printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(cell, "<notebook cell>", "exec"), namespace)
    return printed.getvalue()


# The notebook's cells, word for word (only the data's size and the epochs are the test's).
LOAD_AND_PREPARE = """
(trainX, trainy), (testX, testy) = tf.keras.datasets.fashion_mnist.load_data()
trainX, trainy, testX, testy = trainX[:2000], trainy[:2000], testX[:500], testy[:500]
trainX = trainX.reshape((trainX.shape[0], 28, 28, 1))
testX = testX.reshape((testX.shape[0], 28, 28, 1))
trainY = tf.keras.utils.to_categorical(trainy)
testY = tf.keras.utils.to_categorical(testy)
trainX = trainX.astype('float32') / 255.0
testX = testX.astype('float32') / 255.0
"""

DEFINE_MODEL = """
def define_model():
    model = tf.keras.models.Sequential()
    model.add(tf.keras.layers.Conv2D(32, (3, 3), activation='relu', kernel_initializer='he_uniform',
                                     input_shape=(28, 28, 1)))
    model.add(tf.keras.layers.MaxPooling2D((2, 2)))
    model.add(tf.keras.layers.Flatten())
    model.add(tf.keras.layers.Dense(100, activation='relu', kernel_initializer='he_uniform'))
    model.add(tf.keras.layers.Dense(10, activation='softmax'))
    opt = tf.keras.optimizers.SGD(lr=0.01, momentum=0.9)
    model.compile(optimizer=opt, loss='categorical_crossentropy', metrics=['accuracy'])
    return model

model = define_model()
model.summary()
history = model.fit(trainX, trainY, epochs=1, batch_size=32, validation_data=(testX, testY), verbose=0)
_, acc = model.evaluate(testX, testY, verbose=0)
print('> %.3f' % (acc * 100.0))
"""

SIMPLE = """
simple = tf.keras.models.Sequential([tf.keras.layers.Flatten(), tf.keras.layers.Dense(128, activation=tf.nn.relu),
                                     tf.keras.layers.Dense(10, activation=tf.nn.softmax)])
simple.compile(optimizer='adam', loss='sparse_categorical_crossentropy', metrics=['accuracy'])
simple.fit(trainX, trainy, epochs=1, verbose=0)
test_loss, test_acc = simple.evaluate(testX, testy, verbose=0)
simple.summary()
"""

ACTIVATIONS = """
import matplotlib.pyplot as plt
f, axarr = plt.subplots(3, 2)
FIRST_IMAGE, SECOND_IMAGE, THIRD_IMAGE, CONVOLUTION_NUMBER = 0, 7, 26, 1
from tensorflow.keras import models
layer_outputs = [layer.output for layer in model.layers]
print('model has {} layers'.format(len(layer_outputs)))
activation_model = tf.keras.models.Model(inputs=model.input, outputs=layer_outputs)
for x in range(0, 2):
    f1 = activation_model.predict(testX[FIRST_IMAGE].reshape(1, 28, 28, 1))[x]
    axarr[0, x].imshow(f1[0, :, :, CONVOLUTION_NUMBER], cmap='inferno')
    axarr[0, x].grid(False)
    print('layer {}, shape = {}'.format(x, f1.shape))      # layer 0, shape = (1, 26, 26, 32)
"""

DEEPER_CNN = """
model = tf.keras.models.Sequential([
  tf.keras.layers.Conv2D(64, (3,3), activation='relu', input_shape=(28, 28, 1)),
  tf.keras.layers.MaxPooling2D(2, 2),
  tf.keras.layers.Conv2D(64, (3,3), activation='relu'),
  tf.keras.layers.MaxPooling2D(2,2),
  tf.keras.layers.Flatten(),
  tf.keras.layers.Dense(128, activation='relu'),
  tf.keras.layers.Dense(10, activation='softmax')
])
model.compile(optimizer='adam', loss='sparse_categorical_crossentropy', metrics=['accuracy'])
model.summary()
model.fit(trainX, trainy, epochs=1, verbose=0)
test_loss = model.evaluate(testX, testy, verbose=0)

f, axarr = plt.subplots(3,4)
layer_outputs = [layer.output for layer in model.layers]
activation_model = tf.keras.models.Model(inputs = model.input, outputs = layer_outputs)
for x in range(0,4):
  f1 = activation_model.predict(testX[FIRST_IMAGE].reshape(1, 28, 28, 1))[x]
  axarr[0,x].imshow(f1[0, : , :, CONVOLUTION_NUMBER], cmap='inferno')
  axarr[0,x].grid(False)
  f2 = activation_model.predict(testX[SECOND_IMAGE].reshape(1, 28, 28, 1))[x]
  axarr[1,x].imshow(f2[0, : , :, CONVOLUTION_NUMBER], cmap='inferno')
  axarr[1,x].grid(False)
  f3 = activation_model.predict(testX[THIRD_IMAGE].reshape(1, 28, 28, 1))[x]
  axarr[2,x].imshow(f3[0, : , :, CONVOLUTION_NUMBER], cmap='inferno')
  axarr[2,x].grid(False)
  print('layer {}, shape = {}'.format(x, f1.shape))
"""


def test_tf_keras_names_are_tinycnns(tf):
    assert tf.keras.Sequential is tf.keras.models.Sequential is tinycnn.models.Sequential
    assert tf.keras.Model is tf.keras.models.Model is tinycnn.models.Model
    assert tf.keras.layers.Dense is tinycnn.layers.Dense and tf.keras.layers.Conv2D is tinycnn.layers.Conv2D
    assert tf.keras.utils.to_categorical is tinycnn.utils.to_categorical
    assert tf.keras.optimizers.SGD is tinycnn.optimizers.SGD
    assert tf.nn.relu is tinycnn.activations.relu and tf.nn.softmax is tinycnn.activations.softmax
    from tensorflow.keras import models
    assert models is tinycnn.models


def test_the_notebooks_cells_run_with_tinycnn(tf):
    matplotlib.use("Agg")
    utils.set_random_seed(1)
    namespace = {"tf": tf}
    run_cell(LOAD_AND_PREPARE, namespace)
    assert namespace["trainX"].shape == (2000, 28, 28, 1) and namespace["trainY"].shape == (2000, 10)

    printed = run_cell(DEFINE_MODEL, namespace)
    assert "Total params: 542,230" in printed
    assert namespace["model"].optimizer.learning_rate == 0.01       # SGD(lr=...), Keras 2's spelling
    assert set(namespace["history"].history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert namespace["acc"] > 0.5                                   # one epoch: far above chance (0.1)

    printed = run_cell(SIMPLE, namespace)
    assert "Total params: 101,770" in printed
    assert namespace["test_acc"] > 0.5

    printed = run_cell(ACTIVATIONS, namespace)
    assert "model has 5 layers" in printed
    assert "layer 0, shape = (1, 26, 26, 32)" in printed and "layer 1, shape = (1, 13, 13, 32)" in printed
    drawn = namespace["axarr"][0, 0].get_images()[0].get_array()
    expected = namespace["model"].layer_outputs(namespace["testX"][:1])[0][0, :, :, 1]
    np.testing.assert_array_equal(drawn, expected)                  # the conv's second filter, image 0

    printed = run_cell(DEEPER_CNN, namespace)
    assert "Total params: 243,786" in printed
    for x, shape in enumerate([(1, 26, 26, 64), (1, 13, 13, 64), (1, 11, 11, 64), (1, 5, 5, 64)]):
        assert f"layer {x}, shape = {shape}" in printed
    assert all(ax.get_images() for ax in namespace["axarr"].ravel())   # all twelve maps drawn
    namespace["plt"].close("all")


def test_activation_functions_are_saved_by_name(tf, tmp_path, fashion):
    simple = tf.keras.models.Sequential([tf.keras.layers.Flatten(input_shape=(28, 28)),
                                         tf.keras.layers.Dense(128, activation=tf.nn.relu),
                                         tf.keras.layers.Dense(10, activation=tf.nn.softmax)])
    assert [layer.get_config().get("activation") for layer in simple.layers[1:]] == ["relu", "softmax"]
    simple.save(tmp_path / "simple.npz")
    loaded = tinycnn.models.load_model(tmp_path / "simple.npz")
    images = fashion[2][:8].astype("float32") / 255.0
    assert np.array_equal(loaded.predict(images, verbose=0), simple.predict(images, verbose=0))
    # the functions themselves compute what the layers' activations do
    assert np.array_equal(tf.nn.relu(np.array([-1.0, 0.0, 2.5])), [0.0, 0.0, 2.5])
    np.testing.assert_allclose(tf.nn.softmax(np.array([[1.0, 2.0, 3.0]])).sum(axis=-1), [1.0])
