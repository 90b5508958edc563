"""The notebook's three models, by name.

Each function builds the model exactly as the notebook writes it in Keras, compiles it
with the notebook's optimizer and loss and the "accuracy" metric, and returns it ready
for `fit`:

    cnn_categorical_model()         Conv2D 32 - MaxPool - Dense 100 - Dense 10, SGD momentum,
                                    one-hot labels        (542,230 parameters)
    simple_dense_model()            Flatten - Dense 128 - Dense 10, Adam, integer labels
                                    (101,770 parameters once built on 28x28 images)
    cnn_sparse_categorical_model()  Conv2D 64 - MaxPool - Conv2D 64 - MaxPool - Dense 128
                                    - Dense 10, Adam, integer labels (243,786 parameters)

`MODELS` maps the short names the CLI uses to a `ModelSpec`: the function, the label
format its loss wants and the shape of one input image.
"""
from dataclasses import dataclass
from typing import Callable

from tinycnn.layers import Conv2D, Dense, Flatten, MaxPooling2D
from tinycnn.models import Sequential
from tinycnn.optimizers import SGD, Adam


def cnn_categorical_model():
    """The notebook's first CNN (and the machinelearningmastery tutorial's `define_model`).

    Input (N, 28, 28, 1) float32 in [0, 1]; labels one-hot (N, 10).
    conv (N, 26, 26, 32) -> pool (N, 13, 13, 32) -> flatten (N, 5408)
    -> dense (N, 100) -> dense (N, 10) class probabilities.
    """
    model = Sequential([
        Conv2D(32, (3, 3), activation="relu", kernel_initializer="he_uniform",
               input_shape=(28, 28, 1)),
        MaxPooling2D((2, 2)),
        Flatten(),
        Dense(100, activation="relu", kernel_initializer="he_uniform"),
        Dense(10, activation="softmax"),
    ])
    model.compile(optimizer=SGD(learning_rate=0.01, momentum=0.9),
                  loss="categorical_crossentropy", metrics=["accuracy"])
    return model


def simple_dense_model():
    """The notebook's fully connected model.

    Input (N, 28, 28) float32 in [0, 1] (the notebook gives it no input_shape: the model
    is built the first time it sees data); labels integers (N,).
    flatten (N, 784) -> dense (N, 128) -> dense (N, 10) class probabilities.
    """
    model = Sequential([
        Flatten(),
        Dense(128, activation="relu"),
        Dense(10, activation="softmax"),
    ])
    model.compile(optimizer=Adam(), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def cnn_sparse_categorical_model():
    """The notebook's second, deeper CNN.

    Input (N, 28, 28, 1) float32 in [0, 1]; labels integers (N,).
    conv (N, 26, 26, 64) -> pool (N, 13, 13, 64) -> conv (N, 11, 11, 64)
    -> pool (N, 5, 5, 64) -> flatten (N, 1600) -> dense (N, 128) -> dense (N, 10).
    """
    model = Sequential([
        Conv2D(64, (3, 3), activation="relu", input_shape=(28, 28, 1)),
        MaxPooling2D(2, 2),
        Conv2D(64, (3, 3), activation="relu"),
        MaxPooling2D(2, 2),
        Flatten(),
        Dense(128, activation="relu"),
        Dense(10, activation="softmax"),
    ])
    model.compile(optimizer=Adam(), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


@dataclass(frozen=True)
class ModelSpec:
    """What to know about a zoo model before feeding it.

    build: the function that returns the compiled model.
    one_hot: True when its loss wants one-hot labels (N, 10), False for integers (N,).
    input_shape: the shape of one image it takes, without the batch axis.
    description: one line for listings.
    """
    build: Callable
    one_hot: bool
    input_shape: tuple
    description: str


MODELS = {
    "cnn_categorical": ModelSpec(
        cnn_categorical_model, one_hot=True, input_shape=(28, 28, 1),
        description="Conv2D 32 - MaxPool - Dense 100 - Dense 10; SGD(0.01, momentum 0.9); one-hot labels"),
    "simple_dense": ModelSpec(
        simple_dense_model, one_hot=False, input_shape=(28, 28),
        description="Flatten - Dense 128 - Dense 10; Adam; integer labels"),
    "cnn_sparse": ModelSpec(
        cnn_sparse_categorical_model, one_hot=False, input_shape=(28, 28, 1),
        description="Conv2D 64 - MaxPool - Conv2D 64 - MaxPool - Dense 128 - Dense 10; Adam; integer labels"),
}


def get_spec(name):
    """The ModelSpec for a short name, or a ValueError listing the names there are."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    return MODELS[name]


def get_model(name):
    """A fresh compiled zoo model by its short name, e.g. get_model("cnn_sparse")."""
    return get_spec(name).build()


def __getattr__(name):
    # PEP 562: zoo.cnn_categorical (a short name used as a function's) gets a message that
    # lists what the zoo has, instead of Python's bare "has no attribute".
    functions = ", ".join(f"{spec.build.__name__}()" for spec in MODELS.values())
    by_name = ", ".join(f"get_model({short!r})" for short in MODELS)
    hint = (f"; did you mean {MODELS[name].build.__name__}() or get_model({name!r})?"
            if name in MODELS else "")
    raise AttributeError(f"module 'tinycnn.zoo' has no attribute {name!r}{hint or '.'} "
                         f"The zoo's models are {functions}, or by short name {by_name}")
