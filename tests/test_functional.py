"""Model(inputs=model.input, outputs=[layer.output ...]): the symbolic places of a built
Sequential, the data a Model's predict finds there, and the errors for places it cannot reach."""
import numpy as np
import pytest

from tinycnn import utils
from tinycnn.functional import SymbolicTensor
from tinycnn.layers import Conv2D, Dense, Flatten, MaxPooling2D
from tinycnn.models import Model, Sequential


def notebook_cnn(name=None):
    """The notebook's first CNN: conv (26, 26, 32) - pool (13, 13, 32) - flatten - dense 100 - dense 10."""
    return Sequential([Conv2D(32, (3, 3), activation="relu", input_shape=(28, 28, 1)), MaxPooling2D((2, 2)),
                       Flatten(), Dense(100, activation="relu"), Dense(10, activation="softmax")], name=name)


@pytest.fixture
def images():
    return np.random.default_rng(3).random((5, 28, 28, 1), dtype=np.float32)


def test_input_and_outputs_are_places_with_keras_shapes_not_data():
    model = notebook_cnn(name="cnn")
    assert isinstance(model.input, SymbolicTensor) and model.input.layer is None
    assert model.input.shape == (None, 28, 28, 1)
    assert [layer.output.shape for layer in model.layers] == [
        (None, 26, 26, 32), (None, 13, 13, 32), (None, 5408), (None, 100), (None, 10)]
    assert all(layer.output.layer is layer and layer.output.model is model for layer in model.layers)
    assert model.output is model.layers[-1].output
    assert model.input is model.input                              # the same place each time, as Keras
    assert repr(model.layers[0].output) == ("<SymbolicTensor shape=(None, 26, 26, 32), output of layer "
                                            f"{model.layers[0].name!r} of model 'cnn'>")
    assert "input of model 'cnn'" in repr(model.input)


def test_places_need_a_built_model():
    dense = Dense(10)
    with pytest.raises(ValueError, match="part of a built model"):
        dense.output
    dense.build((4,))                                              # built, but in no model
    with pytest.raises(ValueError, match="part of a built model"):
        dense.output
    unbuilt = Sequential([Flatten(), Dense(10)])                   # no input shape yet
    with pytest.raises(ValueError, match="not been built"):
        unbuilt.input
    with pytest.raises(ValueError, match="part of a built model"):
        unbuilt.layers[1].output
    unbuilt.build((None, 28, 28))
    assert unbuilt.layers[1].output.shape == (None, 10)
    unbuilt.add(Dense(3))                                          # added to a built model: built at once
    assert unbuilt.layers[-1].output.shape == (None, 3)


def test_predict_gives_every_layers_output_as_layer_outputs_does(images):
    utils.set_random_seed(1)
    model = notebook_cnn()
    activation_model = Model(inputs=model.input, outputs=[layer.output for layer in model.layers])
    outputs = activation_model.predict(images, verbose=0)
    expected = model.layer_outputs(images)
    assert isinstance(outputs, list) and len(outputs) == 5
    for got, want in zip(outputs, expected):
        assert got.shape == want.shape and np.array_equal(got, want)   # the same textbook passes
    one = activation_model.predict(images[:1], verbose=0)
    assert [o.shape for o in one] == [(1, 26, 26, 32), (1, 13, 13, 32), (1, 5408), (1, 100), (1, 10)]
    in_batches = activation_model.predict(images, batch_size=2, verbose=0)
    for got, want in zip(in_batches, outputs):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_outputs_come_back_in_the_order_given_and_deeper_layers_are_not_run(images):
    utils.set_random_seed(1)
    model = notebook_cnn()
    conv, pool = model.layers[0], model.layers[1]
    for layer in model.layers[2:]:                                 # predict must not need these
        layer.forward = lambda x, training=False: pytest.fail("ran a layer deeper than every output")
    pool_maps, conv_maps, x = Model(inputs=model.input, outputs=[pool.output, conv.output, model.input]).predict(
        images, verbose=0)
    assert pool_maps.shape == (5, 13, 13, 32) and conv_maps.shape == (5, 26, 26, 32)
    assert np.array_equal(x, images)                               # the input itself is an output too
    assert np.array_equal(pool_maps, conv_maps.reshape(5, 13, 2, 13, 2, 32).max(axis=(2, 4)))


def test_one_output_gives_one_array(images):
    model = notebook_cnn()
    conv = model.layers[0]
    for outputs in (conv.output, [conv.output]):                  # as tf.keras: a list of one unwraps
        maps = Model(inputs=model.input, outputs=outputs).predict(images, verbose=0)
        assert isinstance(maps, np.ndarray) and maps.shape == (5, 26, 26, 32)
    assert Model(inputs=[model.input], outputs=model.output).predict(images, verbose=0).shape == (5, 10)


def test_verbose_shows_a_progress_line_only_when_asked(images, capsys):
    model = notebook_cnn()
    activation_model = Model(inputs=model.input, outputs=model.layers[0].output)
    activation_model.predict(images, batch_size=2, verbose=0)
    assert capsys.readouterr().out == ""
    activation_model.predict(images, batch_size=2)                 # "auto": a line, as Keras prints
    assert "3/3" in capsys.readouterr().out
    with pytest.raises(ValueError, match="verbose"):
        activation_model.predict(images, verbose=5)


def test_predict_checks_its_inputs_as_the_model_does():
    model = notebook_cnn()
    activation_model = Model(inputs=model.input, outputs=model.layers[0].output)
    with pytest.raises(ValueError, match=r"channel axis"):
        activation_model.predict(np.zeros((2, 28, 28), np.float32), verbose=0)


def test_outputs_of_another_model_cannot_be_reached():
    model, other = notebook_cnn(), notebook_cnn()
    with pytest.raises(ValueError, match=r"outputs\[1\].*cannot be reached from inputs.*same model"):
        Model(inputs=model.input, outputs=[model.layers[0].output, other.layers[0].output])
    with pytest.raises(ValueError, match="cannot be reached"):
        Model(inputs=model.input, outputs=other.input)


def test_wrong_inputs_and_outputs_say_what_to_pass():
    model = notebook_cnn()
    with pytest.raises(ValueError, match=r"outputs\[0\].*the layer 'conv2d\w*' itself; use its output, layer.output"):
        Model(inputs=model.input, outputs=[layer for layer in model.layers])
    with pytest.raises(ValueError, match="NumPy array of shape \\(1, 26, 26, 32\\).*not data"):
        Model(inputs=model.input, outputs=[np.zeros((1, 26, 26, 32))])
    with pytest.raises(ValueError, match="non-empty list"):
        Model(inputs=model.input, outputs=[])
    with pytest.raises(ValueError, match="inputs must be a model's input.*layer's output"):
        Model(inputs=model.layers[0].output, outputs=model.layers[1].output)
    with pytest.raises(ValueError, match="inputs=model.input"):
        Model(inputs=np.zeros((1, 28, 28, 1)), outputs=model.output)


def test_a_removed_layer_is_no_longer_a_place_of_the_model():
    model = notebook_cnn()
    last = model.layers[-1]
    stale = last.output
    model.pop()
    with pytest.raises(ValueError, match="part of a built model"):
        last.output
    with pytest.raises(ValueError, match="no longer part of model"):
        Model(inputs=model.input, outputs=stale)
