"""Preparing Fashion-MNIST for a model, as the notebook does it.

The loader (`tinycnn.datasets.fashion_mnist.load_data`) gives raw uint8 images of shape
(N, 28, 28) and integer labels of shape (N,). A convolutional model wants:
  1. a channel axis: (N, 28, 28) -> (N, 28, 28, 1)              (`load_dataset`)
  2. pixels scaled from 0..255 to 0.0..1.0 in float32          (`prep_pixels`)
  3. one-hot labels when its loss is categorical cross-entropy  (`load_dataset(one_hot_encode=True)`)

    >>> from tinycnn.data import load_dataset, prep_pixels
    >>> train_x, train_y, test_x, test_y = load_dataset(one_hot_encode=True)
    >>> train_x, test_x = prep_pixels(train_x, test_x)
    >>> train_x.shape, train_x.dtype, train_y.shape
    ((60000, 28, 28, 1), dtype('float32'), (60000, 10))

`load_for_model("cnn_sparse")` does all three steps in the format a zoo model wants.
"""
import numpy as np

from tinycnn.utils import to_categorical

NUM_CLASSES = 10


def load_dataset(one_hot_encode=True, limit=None, add_channel_axis=True, path=None):
    """Load Fashion-MNIST, reshaped for a model (pixels still uint8 0..255).

    one_hot_encode: True turns the labels into one-hot rows (for categorical
        cross-entropy); False keeps integer labels (for sparse categorical cross-entropy).
    limit: keep only the first `limit` training images and the first `limit` test
        images (at most 10,000); None keeps all 60,000 / 10,000. For quick runs.
    add_channel_axis: True gives images of shape (N, 28, 28, 1) as Conv2D wants;
        False keeps (N, 28, 28), as the notebook feeds its simple dense model.
    path: a folder holding the four .gz files; None searches the usual places
        (see `tinycnn data`).

    Returns train_x, train_y, test_x, test_y:
        train_x: uint8 (N, 28, 28, 1) (or (N, 28, 28))
        train_y: float32 (N, 10) one-hot, or uint8 (N,) integer labels
        test_x, test_y: the same for the test set (M images).
    Raises tinycnn.datasets.DatasetError when the data can't be found or is damaged.
    """
    from tinycnn.datasets import fashion_mnist

    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
            raise ValueError(f"load_dataset: limit must be a positive number of images or None, "
                             f"got {limit!r}")
    if path is None:
        (train_x, train_y), (test_x, test_y) = fashion_mnist.load_data()
    else:
        (train_x, train_y), (test_x, test_y) = fashion_mnist.load_data(path=path)

    if limit is not None:
        train_x, train_y = train_x[:limit], train_y[:limit]
        test_x, test_y = test_x[:limit], test_y[:limit]

    if add_channel_axis:
        # (N, 28, 28) -> (N, 28, 28, 1): one grey channel, channels last as Keras
        train_x = train_x.reshape((train_x.shape[0], 28, 28, 1))
        test_x = test_x.reshape((test_x.shape[0], 28, 28, 1))

    if one_hot_encode:
        # 3 -> [0, 0, 0, 1, 0, 0, 0, 0, 0, 0]
        train_y = to_categorical(train_y, NUM_CLASSES)
        test_y = to_categorical(test_y, NUM_CLASSES)
    return train_x, train_y, test_x, test_y


def prep_pixels(train, test=None):
    """Scale pixels from 0..255 to 0.0..1.0 as float32.

    train: any array of pixel values 0..255, e.g. uint8 (N, 28, 28, 1).
    test: optional second array (the test set), scaled the same way.
    Returns the scaled train array (same shape, float32), or (train, test) when
    test is given (the tutorial's `prep_pixels(train, test)`).
    """
    train_norm = _scale(train)
    if test is None:
        return train_norm
    return train_norm, _scale(test)


def _scale(pixels):
    pixels = np.asarray(pixels)
    if pixels.dtype.kind not in "uif":
        raise ValueError(f"prep_pixels: expected an array of pixel values 0..255, "
                         f"got dtype {pixels.dtype}")
    scaled = pixels.astype(np.float32)          # a new float32 array (never the caller's)
    scaled /= np.float32(255.0)                 # in place: no second 188 MB temporary for 60,000 images
    return scaled


def load_for_model(name, limit=None, path=None):
    """The data, prepared the way the zoo model `name` wants it.

    name: a key of tinycnn.zoo.MODELS ("cnn_categorical", "simple_dense", "cnn_sparse").
    Returns (train_x, train_y), (test_x, test_y), with float32 pixels in [0, 1]:
        cnn_categorical: x (N, 28, 28, 1), y one-hot (N, 10)
        simple_dense:    x (N, 28, 28),    y integers (N,)
        cnn_sparse:      x (N, 28, 28, 1), y integers (N,)
    """
    from tinycnn.zoo import get_spec

    spec = get_spec(name)
    train_x, train_y, test_x, test_y = load_dataset(
        one_hot_encode=spec.one_hot, limit=limit,
        add_channel_axis=len(spec.input_shape) == 3, path=path)
    train_x, test_x = prep_pixels(train_x, test_x)
    return (train_x, train_y), (test_x, test_y)


def to_model_input(images, input_shape):
    """Reshape and scale raw images for a model with per-sample input shape `input_shape`.

    images: uint8 (N, 28, 28) or (N, 28, 28, 1) pixels 0..255, or floats already in [0, 1].
    input_shape: (28, 28, 1) or (28, 28).
    Returns float32 (N,) + input_shape.
    """
    images = np.asarray(images)
    if images.dtype == np.uint8:
        images = prep_pixels(images)
    images = images.astype(np.float32, copy=False)
    return images.reshape((images.shape[0],) + tuple(input_shape))
