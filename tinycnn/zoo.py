"""The notebook's three models, and one beyond them, by name.

Each function builds the model exactly as the notebook writes it in Keras, compiles it
with the notebook's optimizer and loss and the "accuracy" metric, and returns it ready
for `fit`:

    cnn_categorical_model()         Conv2D 32 - MaxPool - Dense 100 - Dense 10, SGD momentum,
                                    one-hot labels        (542,230 parameters)
    simple_dense_model()            Flatten - Dense 128 - Dense 10, Adam, integer labels
                                    (101,770 parameters once built on 28x28 images)
    cnn_sparse_categorical_model()  Conv2D 64 - MaxPool - Conv2D 64 - MaxPool - Dense 128
                                    - Dense 10, Adam, integer labels (243,786 parameters)
    best_model()                    beyond the notebook: augmentation, two blocks of convs with
                                    BatchNormalization, Dropout, AdamW on a cosine schedule,
                                    label smoothing (468,778 parameters), trained 30 epochs

`MODELS` maps the short names the CLI uses to a `ModelSpec`: the function, the label
format its loss wants and the shape of one input image.
"""
import math
from dataclasses import dataclass
from typing import Callable, Optional

from tinycnn.layers import (BatchNormalization, Conv2D, Dense, Dropout, Flatten, MaxPooling2D, RandomErasing,
                            RandomFlip, RandomTranslation, ReLU)
from tinycnn.losses import CategoricalCrossentropy
from tinycnn.models import Sequential
from tinycnn.optimizers import SGD, Adam, AdamW
from tinycnn.schedules import CosineDecay


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


# The best model's regularisation, named once so that benchmarks/best_vs_keras.py builds the
# same recipe in Keras: dropout after the first block, the second block and the Dense 128,
# and the probability that random erasing blanks a rectangle of an image.
BEST_DROPOUT_RATES = (0.05, 0.1, 0.2)
BEST_ERASING_PROBABILITY = 0.2


def best_model(epochs=30, batch_size=128, train_images=60_000, batch_norm=True, dropout=True, augmentation=True):
    """How far a small CNN goes: the notebook's ideas plus what came after it.

    Input (N, 28, 28, 1) float32 in [0, 1]; labels one-hot (N, 10). In training only, each
    image is flipped left-right (p = 0.5), shifted by up to 3 pixels each way, and has one
    random rectangle blanked out (random erasing, p = 0.2); at inference they pass images
    through. Then two blocks of two same-padded 3x3 convs, each conv followed by
    BatchNormalization and ReLU (no conv bias: the BN subtracts the mean, so a bias there
    would do nothing):
        (N, 28, 28, 32) x2 -> pool (N, 14, 14, 32) -> (N, 14, 14, 64) x2 -> pool (N, 7, 7, 64)
        -> flatten (N, 3136) -> dense (N, 128) + BN + ReLU -> dense (N, 10) softmax
    with Dropout 0.05, 0.1, 0.2 after the first pool, the second pool and the dense layer. The
    regularisation is light on purpose: with the augmentation, the training accuracy stays
    below the test accuracy, so more of it would leave the model underfitted after 30 epochs.

    The recipe: AdamW (weight decay 1e-4) whose learning rate climbs from 2e-4 to 2e-3 over
    the first 2 epochs, then falls along a cosine to 0 at the end of `epochs`; cross-entropy
    with label smoothing 0.1 (a target of 0.91 for the right class, 0.01 for each other).
    epochs, batch_size and train_images fix the schedule's length in steps. batch_norm,
    dropout and augmentation False leave those layers out (examples/07_beyond_the_notebook.py
    compares them); without BatchNormalization each conv and the Dense 128 have a bias instead.
    """
    steps_per_epoch = math.ceil(train_images / batch_size)
    warmup_steps = min(2, epochs) * steps_per_epoch
    schedule = CosineDecay(2e-4, decay_steps=max(1, epochs * steps_per_epoch - warmup_steps),
                           warmup_target=2e-3, warmup_steps=warmup_steps)

    def normalized(layer):                   # the layer, then BatchNormalization and ReLU
        return [layer, BatchNormalization(), ReLU()] if batch_norm else [layer, ReLU()]

    def conv(filters):
        return normalized(Conv2D(filters, 3, padding="same", use_bias=not batch_norm))

    def drop(rate):
        return [Dropout(rate)] if dropout else []

    augment = [RandomFlip("horizontal"), RandomTranslation(3 / 28, 3 / 28, fill_mode="constant"),
               RandomErasing(probability=BEST_ERASING_PROBABILITY, area=(0.02, 0.3))] if augmentation else []
    after_block_1, after_block_2, after_dense = BEST_DROPOUT_RATES
    model = Sequential([
        *augment,
        *conv(32), *conv(32), MaxPooling2D(2), *drop(after_block_1),
        *conv(64), *conv(64), MaxPooling2D(2), *drop(after_block_2),
        Flatten(),
        *normalized(Dense(128, use_bias=not batch_norm)), *drop(after_dense),
        Dense(10, activation="softmax"),
    ])
    model.build((None, 28, 28, 1))
    model.compile(optimizer=AdamW(schedule, weight_decay=1e-4),
                  loss=CategoricalCrossentropy(label_smoothing=0.1), metrics=["accuracy"])
    return model


@dataclass(frozen=True)
class ModelSpec:
    """What to know about a zoo model before feeding it.

    build: the function that returns the compiled model.
    one_hot: True when its loss wants one-hot labels (N, 10), False for integers (N,).
    input_shape: the shape of one image it takes, without the batch axis.
    description: one line for listings.
    epochs, batch_size: what the CLI uses unless told otherwise (None: the command's own default).
    recipe: True when build(epochs=..., batch_size=..., train_images=...) fits its learning
        rate schedule to the run.
    """
    build: Callable
    one_hot: bool
    input_shape: tuple
    description: str
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    recipe: bool = False

    def build_for(self, epochs, batch_size, train_images):
        """The compiled model for a run of `epochs` on `train_images` images in batches of batch_size."""
        if self.recipe:
            return self.build(epochs=epochs, batch_size=batch_size, train_images=train_images)
        return self.build()


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
    "best": ModelSpec(
        best_model, one_hot=True, input_shape=(28, 28, 1), epochs=30, batch_size=128, recipe=True,
        description="augmentation - 2 x (Conv 32/64 + BN + ReLU, twice, MaxPool, Dropout) - Dense 128 + BN - "
                    "Dense 10; AdamW, cosine schedule, label smoothing; one-hot labels"),
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
