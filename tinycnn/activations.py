"""Activation functions: forward y = f(z) and backward dL/dz from dL/dy.

Each activation is a small object with
    name                       "relu", "softmax" or "linear"
    forward(z) -> y            z and y have the same shape (batch first, anything after)
    backward(grad_y, y) -> grad_z
backward needs only the OUTPUT y of the forward pass (all three derivatives can be
written with y), so a layer caches y and nothing else. backward never changes grad_y.

`get(name)` returns one: "relu", "softmax", "linear" (None means linear), or one of the
functions `relu`, `softmax`, `linear` below, as in Keras's `Dense(128, activation=tf.nn.relu)`.
"""
import numpy as np


class Linear:
    """f(z) = z; f'(z) = 1."""
    name = "linear"

    def forward(self, z):
        return z

    def backward(self, grad_y, y):
        return grad_y


class ReLU:
    """f(z) = max(z, 0); f'(z) = 1 where z > 0 (equivalently y > 0), else 0 (0 at z = 0, as TF)."""
    name = "relu"

    def forward(self, z):
        return np.maximum(z, 0)

    def backward(self, grad_y, y):
        return grad_y * (y > 0)                       # the gradient passes only where the unit was on


class Softmax:
    """Softmax over the last axis: y_k = exp(z_k - max z) / sum_j exp(z_j - max z).

    Jacobian-vector product: dL/dz_k = y_k * (dL/dy_k - sum_j dL/dy_j * y_j).
    (With a cross-entropy loss the model skips this and uses (y - onehot)/batch directly,
    see Layer.backward_from_logits.)
    """
    name = "softmax"

    def forward(self, z):
        e = np.exp(z - z.max(axis=-1, keepdims=True))   # shifting by the max cannot overflow
        return e / e.sum(axis=-1, keepdims=True)

    def backward(self, grad_y, y):
        return y * (grad_y - np.sum(grad_y * y, axis=-1, keepdims=True))


_ACTIVATIONS = {"linear": Linear, "relu": ReLU, "softmax": Softmax}


# The same maths as plain functions, Keras's `tf.nn.relu` / `tf.keras.activations.relu`:
# a layer given one of these (activation=tinycnn.activations.relu) uses the object above.
def relu(x):
    """max(x, 0), elementwise."""
    return ReLU().forward(np.asarray(x))


def softmax(x):
    """Softmax over the last axis."""
    return Softmax().forward(np.asarray(x))


def linear(x):
    """x unchanged."""
    return np.asarray(x)


_FUNCTIONS = {relu: "relu", softmax: "softmax", linear: "linear"}


def get(name):
    """The activation called `name` ("relu", "softmax", "linear" or None for linear).

    One of the functions relu, softmax, linear gives its object; an object that already has
    forward/backward is returned unchanged.
    """
    if name is None:
        return Linear()
    if callable(name) and name in _FUNCTIONS:
        return _ACTIVATIONS[_FUNCTIONS[name]]()
    if hasattr(name, "forward") and hasattr(name, "backward"):
        return name
    if isinstance(name, str) and name.lower() in _ACTIVATIONS:
        return _ACTIVATIONS[name.lower()]()
    raise ValueError(f"Unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)}, None, "
                     f"or one of the functions tinycnn.activations.relu / softmax / linear")
