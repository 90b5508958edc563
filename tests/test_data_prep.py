"""Data preparation as the notebook does it: channel axis, [0, 1] float32, one-hot."""
import numpy as np
import pytest

from tinycnn.data import load_dataset, load_for_model, prep_pixels, to_model_input
from tinycnn.datasets import DatasetError, fashion_mnist


@pytest.fixture(scope="module")
def raw():
    return fashion_mnist.load_data()


def test_load_dataset_one_hot_with_channel_axis(raw):
    (x_raw, y_raw), (xt_raw, yt_raw) = raw
    train_x, train_y, test_x, test_y = load_dataset(one_hot_encode=True)
    assert train_x.shape == (60000, 28, 28, 1) and test_x.shape == (10000, 28, 28, 1)
    assert train_x.dtype == np.uint8
    np.testing.assert_array_equal(train_x[..., 0], x_raw)
    assert train_y.shape == (60000, 10) and train_y.dtype == np.float32
    np.testing.assert_array_equal(train_y.argmax(axis=1), y_raw)
    np.testing.assert_array_equal(train_y.sum(axis=1), 1.0)
    np.testing.assert_array_equal(test_y.argmax(axis=1), yt_raw)


def test_load_dataset_integer_labels_no_channel_axis_and_limit(raw):
    (x_raw, y_raw), (xt_raw, yt_raw) = raw
    train_x, train_y, test_x, test_y = load_dataset(one_hot_encode=False, limit=500,
                                                    add_channel_axis=False)
    assert train_x.shape == (500, 28, 28) and test_x.shape == (500, 28, 28)
    np.testing.assert_array_equal(train_y, y_raw[:500])
    np.testing.assert_array_equal(test_x, xt_raw[:500])
    with pytest.raises(ValueError, match="limit"):
        load_dataset(limit=0)


def test_prep_pixels_scales_to_unit_float32():
    pixels = np.array([[0, 51, 255]], dtype=np.uint8)
    train, test = prep_pixels(pixels, pixels[:, ::-1])
    assert train.dtype == np.float32 and test.dtype == np.float32
    np.testing.assert_array_equal(train, np.float32([[0, 51, 255]]) / np.float32(255))
    assert train.max() == 1.0 and test[0, 0] == 1.0
    assert prep_pixels(pixels).shape == (1, 3)
    with pytest.raises(ValueError, match="pixel values"):
        prep_pixels(np.array(["a"]))


@pytest.mark.parametrize("name, x_shape, y_shape", [
    ("cnn_categorical", (300, 28, 28, 1), (300, 10)),
    ("simple_dense", (300, 28, 28), (300,)),
    ("cnn_sparse", (300, 28, 28, 1), (300,)),
])
def test_load_for_model_gives_each_zoo_model_its_format(raw, name, x_shape, y_shape):
    (train_x, train_y), (test_x, test_y) = load_for_model(name, limit=300)
    assert train_x.shape == x_shape and test_x.shape == x_shape
    assert train_y.shape == y_shape
    assert train_x.dtype == np.float32 and 0.0 <= train_x.min() and train_x.max() <= 1.0
    np.testing.assert_allclose(train_x.reshape(300, 28, 28) * 255, raw[0][0][:300], atol=1e-4)
    labels = train_y.argmax(axis=1) if train_y.ndim == 2 else train_y
    np.testing.assert_array_equal(labels, raw[0][1][:300])


def test_to_model_input_reshapes_and_scales_raw_images(raw):
    images = raw[1][0][[0, 7, 26]]
    x = to_model_input(images, (28, 28, 1))
    assert x.shape == (3, 28, 28, 1) and x.dtype == np.float32
    np.testing.assert_array_equal(x[..., 0], images / np.float32(255))


def test_missing_data_is_a_dataset_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYCNN_DATA", str(tmp_path))      # an explicit, empty folder
    with pytest.raises(DatasetError):
        load_dataset()
