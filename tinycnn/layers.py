"""The layers a CNN is made of, each with a hand-written forward and backward pass, in NumPy.

Shapes: images are NHWC, (batch N, height H, width W, channels C), as in Keras.
Every layer follows one contract (see the README, "The layer contract"):

    layer.build(input_shape)        per-sample shape, no batch axis -> output shape; creates params
    y = layer.forward(x, training)  x has the batch axis; caches what backward needs
    dx = layer.backward(dy)         dL/dx from dL/dy; leaves dL/dparams in layer.grads
                                    (same order and shapes as layer.trainable_params); never edits dy;
                                    returns None when layer.need_input_grad is False;
                                    one backward per forward pass

Parameters use Keras's layout and order, so weights move between Keras and tinycnn
unchanged: Conv2D [kernel (KH, KW, C, F), bias (F,)], Dense [kernel (in, units), bias (units,)].
The arrays in `params` and `grads` are created once in build and then only updated in
place, so an optimizer can keep its per-parameter state by position.

Most weights are trainable: the optimizer moves them along their gradients. Some are not:
BatchNormalization's moving mean and variance are averages its forward pass keeps. `params`
holds them all (what get_weights returns, what a model file saves); `trainable_params` the
ones the optimizer updates, and `grads` one gradient for each of those, in the same order.
`layer.grads_and_params()` pairs them: the one place where engines and tests find what to
hand to `optimizer.apply_gradients`.

A layer whose activation is softmax also keeps its `logits` (the input of the softmax)
and offers `backward_from_logits(dL/dlogits)`: with a cross-entropy loss the model
hands it (softmax - onehot) / batch directly and the softmax Jacobian is never formed.

What a layer caches for its backward pass (`_x`, `_x_shape`, `_cols`, `_y`, `_logits`,
`_argmax`, `_batch_size`) is private: it belongs to the last forward pass through this very
layer, the reference engine's (tinycnn.engines.reference). The fast engine runs its own
versions of these passes, with caches of its own, and the tests hold them to these.
"""
import math
import re

import numpy as np

from tinycnn import activations, initializers, utils
from tinycnn.im2col import col2im, im2col, output_size

# ---------------------------------------------------------------------------
# Automatic names: "conv2d", "conv2d_1", "conv2d_2", ... as Keras gives them
# ---------------------------------------------------------------------------
_name_counts = {}


def _unique_name(base):
    count = _name_counts.get(base, 0)
    _name_counts[base] = count + 1
    return base if count == 0 else f"{base}_{count}"


def reset_name_counters():
    """Start automatic names again from "conv2d", "dense", ... (handy in tests and notebooks)."""
    _name_counts.clear()


def _snake_case(class_name):
    """'MaxPooling2D' -> 'max_pooling2d', 'ReLU' -> 're_lu' (Keras's rule)."""
    s = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", class_name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", s).lower()


# ---------------------------------------------------------------------------
# Argument checking, shared by the constructors
# ---------------------------------------------------------------------------
def _positive_int(value, what, owner):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{owner}: {what} must be a positive integer, got {value!r}")
    return int(value)


def _pair(value, what, owner):
    """An int n or a pair (a, b) of positive ints -> (n, n) or (a, b)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value, value)
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{owner}: {what} must be an int or a pair of ints, got {value!r}")
    return tuple(_positive_int(v, what, owner) for v in value)


def _padding(value, owner):
    if not isinstance(value, str) or value.lower() not in ("valid", "same"):
        raise ValueError(f"{owner}: padding must be 'valid' or 'same', got {value!r}")
    return value.lower()


def _number_in(value, low, high, what, interval, owner, include_high=True):
    """A real number in [low, high] (or [low, high) with include_high=False) as a float."""
    is_number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    inside = is_number and low <= value and (value <= high if include_high else value < high)
    if not inside:
        raise ValueError(f"{owner}: {what} must be a number in {interval}, got {value!r}")
    return float(value)


def _shape_tuple(shape, what, owner):
    """A per-sample shape as a tuple of positive ints (accepts lists, e.g. from JSON)."""
    try:
        shape = tuple(shape)
    except TypeError:
        raise ValueError(f"{owner}: {what} must be a tuple of positive ints, got {shape!r}") from None
    if any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1 for s in shape):
        raise ValueError(f"{owner}: {what} must be a tuple of positive ints, got {shape!r}")
    return tuple(int(s) for s in shape)


def _window_geometry(input_shape, window, strides, padding):
    """Where a (KH, KW) window slides over a per-sample input (H, W, C), as Conv2D and
    MaxPooling2D both need it: (OH, OW, pad_top, pad_left), TensorFlow's padding rule."""
    (h, w, _), (kh, kw), (sh, sw) = input_shape, window, strides
    oh, (pad_top, _) = output_size(h, kh, sh, padding)
    ow, (pad_left, _) = output_size(w, kw, sw, padding)
    return oh, ow, pad_top, pad_left


# ---------------------------------------------------------------------------
# The base class
# ---------------------------------------------------------------------------
class Layer:
    """Base class: naming, shape checks, weights in and out, config. Subclasses add the maths."""
    draws_random_numbers = False      # True on the layers that draw random numbers in training

    def __init__(self, input_shape=None, name=None, dtype=None):
        cls = type(self).__name__
        if name is None:
            name = _unique_name(_snake_case(cls))
        elif not isinstance(name, str) or not name:
            raise ValueError(f"{cls}: name must be a non-empty string, got {name!r}")
        self.name = name
        dtype = utils.floatx() if dtype is None else dtype
        try:
            self.dtype = np.dtype(dtype).name
        except TypeError:
            self.dtype = None
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"{self.name}: dtype must be 'float32' or 'float64', got {dtype!r}")
        self.input_shape = None if input_shape is None else _shape_tuple(input_shape, "input_shape", self.name)
        self._given_input_shape = self.input_shape     # remembered for get_config
        self.output_shape = None
        self.built = False
        self.params = []                               # Keras order: what get_weights returns
        self.grads = []                                # one per trainable param, filled by backward
        self.need_input_grad = True                    # a model sets False where no layer before has weights
        self._output_tensor = None                     # set by the built Sequential that holds it

    # -- shapes ------------------------------------------------------------------------------
    def build(self, input_shape):
        """Check the per-sample input shape, create the parameters, return the output shape."""
        input_shape = _shape_tuple(input_shape, "input shape", self.name)
        if self.built:
            if input_shape != self.input_shape:
                raise ValueError(f"{self.name}: already built for input shape {self.input_shape}, "
                                 f"cannot rebuild for {input_shape}")
            return self.output_shape
        if self._given_input_shape is not None and input_shape != self._given_input_shape:
            raise ValueError(f"{self.name}: was given input_shape={self._given_input_shape} "
                             f"but is being built for input shape {input_shape}")
        self.output_shape = self.compute_output_shape(input_shape)
        self.input_shape = input_shape
        self._create_params(input_shape)
        self.built = True
        return self.output_shape

    def compute_output_shape(self, input_shape):
        """Per-sample output shape for this per-sample input shape (validates it)."""
        return tuple(input_shape)

    @property
    def output(self):
        """Where this layer's output flows in its built model: a SymbolicTensor, shape (None,
        *output_shape), for Model(inputs=model.input, outputs=[layer.output, ...]) as in Keras.
        It is a place, not data: the data comes from that Model's predict."""
        tensor = getattr(self, "_output_tensor", None)
        if tensor is None:
            raise ValueError(f"{self.name}: layer.output exists once the layer is part of a built "
                             f"model; put it in a Sequential and build that (give the first layer "
                             f"input_shape=..., or call model.build((None, 28, 28, 1)))")
        return tensor

    def _create_params(self, input_shape):
        """Subclasses with weights fill self.params and self.grads here."""

    def _check_rank(self, input_shape, rank, meaning):
        if len(input_shape) != rank:
            raise ValueError(f"{self.name}: expected a per-sample input of rank {rank} {meaning}, "
                             f"got shape {tuple(input_shape)} (rank {len(input_shape)})")

    def _check_input(self, x):
        """x as a C-contiguous array of the layer's dtype, after checking its shape."""
        x = np.asarray(x)
        if x.ndim == 0:
            raise ValueError(f"{self.name}: expected a batch of inputs, got a scalar")
        if not self.built:
            self.build(x.shape[1:])
        if x.shape[1:] != self.input_shape:
            raise ValueError(f"{self.name}: expected input of shape (batch, "
                             f"{', '.join(map(str, self.input_shape))}), got {x.shape}")
        if x.dtype != self.dtype:
            x = x.astype(self.dtype)
        self._batch_size = x.shape[0]                 # backward checks its gradient against this
        return np.ascontiguousarray(x)

    def _check_grad(self, grad_out):
        """grad_out as a C-contiguous array of the layer's dtype, after checking it matches the last forward's output."""
        batch = getattr(self, "_batch_size", None)
        if batch is None:
            raise ValueError(f"{self.name}: backward called before forward; run forward(x) first")
        grad_out = np.asarray(grad_out, dtype=self.dtype)
        expected = (batch,) + tuple(self.output_shape)
        if grad_out.shape != expected:
            raise ValueError(f"{self.name}: backward expected a gradient of shape {expected} (the shape of "
                             f"the last forward's output), got {grad_out.shape}")
        return np.ascontiguousarray(grad_out)

    # -- the maths (subclasses) -------------------------------------------------------------------
    def forward(self, x, training=False):
        raise NotImplementedError

    def backward(self, grad_out):
        raise NotImplementedError

    @property
    def outputs_softmax(self):
        """True when this layer's output is a softmax (then backward_from_logits exists)."""
        activation = getattr(self, "activation", None)
        return activation is not None and activation.name == "softmax"

    @property
    def logits(self):
        """The softmax's input z (N, ..., classes) from the last forward pass (softmax layers only)."""
        return getattr(self, "_logits", None)

    def backward_from_logits(self, grad_logits):
        """Backward from dL/dlogits, skipping the softmax Jacobian (softmax layers only)."""
        raise TypeError(f"{self.name}: backward_from_logits needs a layer whose output is a softmax")

    # -- weights ------------------------------------------------------------------------------
    @property
    def trainable_params(self):
        """The params the optimizer updates, in `params`'s order; `grads` matches them one
        for one. All of them, unless a layer keeps weights of its own (BatchNormalization)."""
        return self.params

    @property
    def non_trainable_params(self):
        """The params the optimizer never touches (BatchNormalization's moving statistics)."""
        return []

    def grads_and_params(self):
        """[(dL/dparam, param)] for each trainable param: what optimizer.apply_gradients takes."""
        trainable = self.trainable_params
        if len(self.grads) != len(trainable):
            raise ValueError(f"{self.name}: has {len(self.grads)} gradient arrays for "
                             f"{len(trainable)} trainable params")
        return list(zip(self.grads, trainable))

    def get_weights(self):
        """Copies of the parameters, in Keras's order and shapes."""
        return [p.copy() for p in self.params]

    def set_weights(self, weights):
        """Copy `weights` (a list in Keras's order and shapes) into the existing parameter arrays."""
        if not self.built:
            raise ValueError(f"{self.name}: set_weights before the layer is built; call "
                             f"build(input_shape) first (or give input_shape=...)")
        weights = list(weights)
        expected = [p.shape for p in self.params]
        if len(weights) != len(self.params):
            raise ValueError(f"{self.name}: set_weights expected {len(self.params)} arrays with shapes "
                             f"{expected}, got {len(weights)} arrays")
        actual = [np.shape(w) for w in weights]
        for i, (want, got) in enumerate(zip(expected, actual)):
            if tuple(want) != tuple(got):
                raise ValueError(f"{self.name}: set_weights: weight {i} should have shape {want}, "
                                 f"got {got} (expected shapes {expected}, got {actual})")
        for p, w in zip(self.params, weights):
            p[...] = w                     # in place: optimizer slots stay tied to these arrays

    def count_params(self):
        """Number of scalar parameters, trainable or not (as Keras counts them)."""
        if not self.built:
            raise ValueError(f"{self.name}: count_params before the layer is built")
        return int(sum(p.size for p in self.params))

    def count_trainable_params(self):
        """Number of scalar parameters the optimizer updates."""
        if not self.built:
            raise ValueError(f"{self.name}: count_trainable_params before the layer is built")
        return int(sum(p.size for p in self.trainable_params))

    # -- config -------------------------------------------------------------------------------
    def get_config(self):
        """JSON-able constructor arguments (layers add theirs)."""
        config = {"name": self.name, "dtype": self.dtype}
        if self._given_input_shape is not None:
            config["input_shape"] = list(self._given_input_shape)
        return config

    @classmethod
    def from_config(cls, config):
        """A new, unbuilt layer from get_config's dict."""
        return cls(**config)

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name!r} output_shape={self.output_shape}>"


class _WeightedLayer(Layer):
    """Shared by Conv2D and Dense: z = (a matrix product) + bias, y = activation(z), and back."""

    def _init_weights_args(self, activation, use_bias, kernel_initializer, bias_initializer):
        self.activation = activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)

    def _add_weights(self, kernel_shape, bias_shape):
        rng = utils.get_rng()
        self.params = [self.kernel_initializer(kernel_shape, dtype=self.dtype, rng=rng)]
        if self.use_bias:
            self.params.append(self.bias_initializer(bias_shape, dtype=self.dtype, rng=rng))
        self.grads = [np.zeros_like(p) for p in self.params]

    @property
    def kernel(self):
        """The kernel, params[0]: Conv2D (KH, KW, C, F), Dense (in, units)."""
        return self.params[0] if self.params else None

    @property
    def bias(self):
        """The bias (F,) or (units,), params[1]; None without one."""
        return self.params[1] if self.use_bias and self.params else None

    def _activate(self, z, output_shape):
        """z (M, F), the product plus bias -> y = activation(z) in output_shape (N, ..., F);
        caches y's rows (and z, for a softmax)."""
        if self.outputs_softmax:
            self._logits = z.reshape(output_shape)
        self._y = self.activation.forward(z)
        return self._y.reshape(output_shape)

    def _grad_z(self, grad_y):
        """dL/dz (M, F) from dL/dy through the activation, using the cached output y (M, F):
        f'(z) * dL/dy for ReLU and linear, the Jacobian-vector product for softmax."""
        return self.activation.backward(grad_y.reshape(self._y.shape), self._y)

    def backward_from_logits(self, grad_logits):
        """dL/dx from dL/dz, z the softmax's input (the loss gives (softmax - onehot)/batch)."""
        if not self.outputs_softmax:
            raise TypeError(f"{self.name}: backward_from_logits needs a layer whose output is a softmax")
        grad_logits = self._check_grad(grad_logits)
        return self._backward_from_z(grad_logits.reshape(self._y.shape))

    def get_config(self):
        config = super().get_config()
        config.update(activation=self.activation.name, use_bias=self.use_bias,
                      kernel_initializer=initializers.name_of(self.kernel_initializer),
                      bias_initializer=initializers.name_of(self.bias_initializer))
        return config


# ---------------------------------------------------------------------------
# Conv2D
# ---------------------------------------------------------------------------
class Conv2D(_WeightedLayer):
    """2-D convolution (Keras: cross-correlation, no kernel flip), NHWC.

    x (N, H, W, C) -> y (N, OH, OW, F); kernel (KH, KW, C, F), bias (F,).
        y[n, oy, ox, f] = act( bias[f] + sum_{i, j, c} x_pad[n, oy*sh + i, ox*sw + j, c] * kernel[i, j, c, f] )
    "valid": OH = floor((H - KH) / sh) + 1;  "same": OH = ceil(H / sh), zero padding with the odd
    row at the bottom (TensorFlow's rule). Likewise for widths.

    As one matrix product (tinycnn.im2col): the patches of x become the rows of
    cols (N*OH*OW, KH*KW*C), and the kernel reshapes, with no transpose, to W2 (KH*KW*C, F):
        Z = cols @ W2 + bias        (N*OH*OW, F)
    """

    def __init__(self, filters, kernel_size, strides=1, padding="valid", activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros", input_shape=None,
                 name=None, dtype=None):
        super().__init__(input_shape, name, dtype)
        self.filters = _positive_int(filters, "filters", self.name)
        self.kernel_size = _pair(kernel_size, "kernel_size", self.name)
        self.strides = _pair(strides, "strides", self.name)
        self.padding = _padding(padding, self.name)
        self._init_weights_args(activation, use_bias, kernel_initializer, bias_initializer)

    def geometry(self, input_shape=None):
        """(OH, OW, pad_top, pad_left) for a per-sample input (H, W, C) (default: the built one)."""
        shape = self.input_shape if input_shape is None else input_shape
        return _window_geometry(shape, self.kernel_size, self.strides, self.padding)

    def compute_output_shape(self, input_shape):
        self._check_rank(input_shape, 3, "(height, width, channels)")
        oh, ow, _, _ = self.geometry(input_shape)
        if oh < 1 or ow < 1:
            raise ValueError(f"{self.name}: kernel_size {self.kernel_size} is larger than the input "
                             f"{tuple(input_shape[:2])} with padding='valid'; use a smaller kernel "
                             f"or padding='same'")
        return (oh, ow, self.filters)

    def _create_params(self, input_shape):
        kh, kw = self.kernel_size
        self._add_weights((kh, kw, input_shape[2], self.filters), (self.filters,))

    def forward(self, x, training=False):
        """x (N, H, W, C) -> y (N, OH, OW, F). Caches cols (N*OH*OW, KH*KW*C) for dL/dkernel, x's
        shape for col2im, and y for the activation's derivative."""
        x = self._check_input(x)
        (kh, kw), (sh, sw) = self.kernel_size, self.strides
        oh, ow, pad_top, pad_left = self.geometry()
        self._x_shape = x.shape
        self._cols = im2col(x, kh, kw, sh, sw, pad_top, pad_left, oh, ow)   # (N*OH*OW, KH*KW*C)
        z = self._cols @ self.kernel.reshape(-1, self.filters)              # (N*OH*OW, F)
        if self.use_bias:
            z = z + self.bias
        return self._activate(z, (x.shape[0], oh, ow, self.filters))

    def backward(self, grad_out):
        """dL/dy (N, OH, OW, F) -> dL/dx (N, H, W, C); fills grads [dL/dkernel, dL/dbias]."""
        grad_out = self._check_grad(grad_out)   # (N, OH, OW, F): the shape of the last forward's output
        dz = self._grad_z(grad_out)             # (N*OH*OW, F): back through the activation
        return self._backward_from_z(dz)        # back through z = cols @ W2 + bias

    def _backward_from_z(self, dz):
        """dz = dL/dz (N*OH*OW, F), z the product plus bias -> dL/dx (N, H, W, C).

            dL/dkernel = (cols^T @ dz).reshape(KH, KW, C, F): each weight's gradient sums over every patch it met
            dL/dbias   = dz.sum(axis=0)   (F,): over batch and pixels
            dL/dx      = col2im(dz @ W2^T): every patch's gradient added back onto its pixels
        """
        (kh, kw), (sh, sw) = self.kernel_size, self.strides
        oh, ow, pad_top, pad_left = self.geometry()
        w2 = self.kernel.reshape(-1, self.filters)                          # (KH*KW*C, F)
        self.grads[0][...] = (self._cols.T @ dz).reshape(self.kernel.shape)
        if self.use_bias:
            self.grads[1][...] = dz.sum(axis=0)
        if not self.need_input_grad:
            return None
        dcols = dz @ w2.T                                                    # (N*OH*OW, KH*KW*C)
        return col2im(dcols, self._x_shape, kh, kw, sh, sw, pad_top, pad_left, oh, ow)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=list(self.kernel_size), strides=list(self.strides),
                      padding=self.padding)
        return config


# ---------------------------------------------------------------------------
# Pooling: MaxPooling2D, AveragePooling2D, GlobalAveragePooling2D
# ---------------------------------------------------------------------------
class _Pooling2D(Layer):
    """Shared by MaxPooling2D and AveragePooling2D: windows of (PH, PW) moved by (sh, sw) over
    x (N, H, W, C), strides defaulting to the pool size, sizes and padding as in Conv2D."""

    def __init__(self, pool_size=2, strides=None, padding="valid", input_shape=None, name=None, dtype=None):
        super().__init__(input_shape, name, dtype)
        self.pool_size = _pair(pool_size, "pool_size", self.name)
        self.strides = self.pool_size if strides is None else _pair(strides, "strides", self.name)
        self.padding = _padding(padding, self.name)

    def geometry(self, input_shape=None):
        """(OH, OW, pad_top, pad_left) for a per-sample input (H, W, C) (default: the built one)."""
        shape = self.input_shape if input_shape is None else input_shape
        return _window_geometry(shape, self.pool_size, self.strides, self.padding)

    def compute_output_shape(self, input_shape):
        self._check_rank(input_shape, 3, "(height, width, channels)")
        oh, ow, _, _ = self.geometry(input_shape)
        if oh < 1 or ow < 1:
            raise ValueError(f"{self.name}: pool_size {self.pool_size} is larger than the input "
                             f"{tuple(input_shape[:2])} with padding='valid'; use a smaller pool "
                             f"or padding='same'")
        return (oh, ow, input_shape[2])

    def _pad_widths(self):
        """np.pad's widths for an input (N, H, W, C) so that every window lies inside it:
        ((0, 0), (top, bottom), (left, right), (0, 0)); zeros except with "same" padding."""
        h, w, _ = self.input_shape
        (ph, pw), (sh, sw) = self.pool_size, self.strides
        oh, ow, pad_top, pad_left = self.geometry()
        pad_bottom = max((oh - 1) * sh + ph - h - pad_top, 0)
        pad_right = max((ow - 1) * sw + pw - w - pad_left, 0)
        return (0, 0), (pad_top, pad_bottom), (pad_left, pad_right), (0, 0)

    def _cell(self, padded, i, j):
        """The view (N, OH, OW, C) of `padded` (the input padded by _pad_widths) holding cell (i, j)
        of every window: padded[n, oy*sh + i, ox*sw + j, c] at [n, oy, ox, c]. Writes go into `padded`."""
        (sh, sw), (oh, ow, _, _) = self.strides, self.geometry()
        return padded[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw, :]

    def get_config(self):
        config = super().get_config()
        config.update(pool_size=list(self.pool_size), strides=list(self.strides), padding=self.padding)
        return config


class MaxPooling2D(_Pooling2D):
    """Max over (PH, PW) windows moved by (sh, sw); strides default to the pool size.

    x (N, H, W, C) -> y (N, OH, OW, C), sizes as in Conv2D; "same" padding cells are ignored.
    Backward: each window's gradient goes to the pixel that won it (dL/dx = dL/dy there, 0 elsewhere);
    a pixel that wins several overlapping windows receives the sum. Ties: the first maximum in
    row-major order wins, as in TensorFlow, so exactly one pixel per window gets the gradient.
    """

    def forward(self, x, training=False):
        """x (N, H, W, C) -> y (N, OH, OW, C); caches argmax (N, OH, OW, C): each winner's row*W + column."""
        x = self._check_input(x)
        n, h, w, c = x.shape
        (ph, pw), (sh, sw) = self.pool_size, self.strides
        oh, ow, pad_top, pad_left = self.geometry()
        x_padded = np.pad(x, self._pad_widths(), constant_values=-np.inf)   # -inf: a padded cell never wins
        windows = np.empty((n, oh, ow, c, ph * pw), dtype=x.dtype)         # each window's cells, row-major
        for i in range(ph):
            for j in range(pw):
                windows[..., i * pw + j] = self._cell(x_padded, i, j)
        winner = np.argmax(windows, axis=-1)     # (N, OH, OW, C): the winner's place in its window (first max)
        y = np.take_along_axis(windows, winner[..., None], axis=-1)[..., 0]
        winner_row = np.arange(oh)[None, :, None, None] * sh - pad_top + winner // pw   # its pixel in x
        winner_col = np.arange(ow)[None, None, :, None] * sw - pad_left + winner % pw
        self._argmax = winner_row * w + winner_col
        return y

    def backward(self, grad_out):
        """dL/dy (N, OH, OW, C) -> dL/dx (N, H, W, C): each window's gradient to its winner, summed."""
        if not self.need_input_grad:
            return None
        grad_out = self._check_grad(grad_out)
        n, h, w, c = (grad_out.shape[0],) + self.input_shape
        dx = np.zeros((n, h * w, c), dtype=grad_out.dtype)
        batch = np.broadcast_to(np.arange(n)[:, None, None, None], grad_out.shape)
        channel = np.broadcast_to(np.arange(c)[None, None, None, :], grad_out.shape)
        np.add.at(dx, (batch, self._argmax, channel), grad_out)   # add.at: a pixel may win twice
        return dx.reshape(n, h, w, c)


class AveragePooling2D(_Pooling2D):
    """Mean over (PH, PW) windows moved by (sh, sw); strides default to the pool size.

    x (N, H, W, C) -> y (N, OH, OW, C), sizes as in Conv2D:
        y[n, oy, ox, c] = sum of the window's real cells / count[oy, ox]
    count is the number of the window's cells that lie in x: PH*PW everywhere with "valid",
    fewer at the edges with "same", whose padded cells are left out of the mean (Keras's rule).
    Backward: each cell of a window gets an equal share of its gradient, dL/dy / count,
    added up where windows overlap.
    """

    def forward(self, x, training=False):
        """x (N, H, W, C) -> y (N, OH, OW, C); caches count (1, OH, OW, 1), each window's real cells."""
        x = self._check_input(x)
        (ph, pw), pad = self.pool_size, self._pad_widths()
        x_padded = np.pad(x, pad)                                        # zeros: they add nothing to a sum
        real = np.pad(np.ones((1,) + x.shape[1:3] + (1,), x.dtype), pad)  # 1 on x's cells, 0 on padding
        window_sum = sum(self._cell(x_padded, i, j) for i in range(ph) for j in range(pw))   # (N, OH, OW, C)
        self._count = sum(self._cell(real, i, j) for i in range(ph) for j in range(pw))      # (1, OH, OW, 1)
        return window_sum / self._count

    def backward(self, grad_out):
        """dL/dy (N, OH, OW, C) -> dL/dx (N, H, W, C): dL/dx += dL/dy / count over each window's cells."""
        if not self.need_input_grad:
            return None
        grad_out = self._check_grad(grad_out)
        (ph, pw), pad = self.pool_size, self._pad_widths()
        n, h, w, c = (grad_out.shape[0],) + self.input_shape
        (_, (top, bottom), (left, right), _) = pad
        share = grad_out / self._count                                   # (N, OH, OW, C): each cell's part
        dx_padded = np.zeros((n, top + h + bottom, left + w + right, c), dtype=grad_out.dtype)
        for i in range(ph):
            for j in range(pw):
                self._cell(dx_padded, i, j)[...] += share                # a view: adds into dx_padded
        return np.ascontiguousarray(dx_padded[:, top:top + h, left:left + w, :])


class GlobalAveragePooling2D(Layer):
    """The mean of each channel over all its pixels: x (N, H, W, C) -> y (N, C), or (N, 1, 1, C)
    with keepdims=True.

        y[n, c] = sum_{h, w} x[n, h, w, c] / (H * W)
    Backward: every pixel has an equal share, dL/dx[n, h, w, c] = dL/dy[n, c] / (H * W).
    """

    def __init__(self, keepdims=False, input_shape=None, name=None, dtype=None):
        super().__init__(input_shape, name, dtype)
        self.keepdims = bool(keepdims)

    def compute_output_shape(self, input_shape):
        self._check_rank(input_shape, 3, "(height, width, channels)")
        return (1, 1, input_shape[2]) if self.keepdims else (input_shape[2],)

    def forward(self, x, training=False):
        """x (N, H, W, C) -> y (N, C) (or (N, 1, 1, C)); nothing to cache but the shape."""
        x = self._check_input(x)
        return x.mean(axis=(1, 2), keepdims=self.keepdims)

    def backward(self, grad_out):
        """dL/dy (N, C) -> dL/dx (N, H, W, C) = dL/dy / (H * W) at every pixel."""
        if not self.need_input_grad:
            return None
        grad_out = self._check_grad(grad_out)
        n, (h, w, c) = grad_out.shape[0], self.input_shape
        share = grad_out.reshape(n, 1, 1, c) / grad_out.dtype.type(h * w)      # (N, 1, 1, C)
        return np.ascontiguousarray(np.broadcast_to(share, (n, h, w, c)))

    def get_config(self):
        config = super().get_config()
        config.update(keepdims=self.keepdims)
        return config


# ---------------------------------------------------------------------------
# Flatten
# ---------------------------------------------------------------------------
class Flatten(Layer):
    """x (N, d1, d2, ...) -> (N, d1*d2*...), in C order (rows, then columns, then channels, as Keras).

    Backward only reshapes the gradient back: dL/dx = dL/dy.reshape(x.shape).
    """

    def compute_output_shape(self, input_shape):
        return (math.prod(input_shape),)

    def forward(self, x, training=False):
        x = self._check_input(x)
        return x.reshape(x.shape[0], -1)

    def backward(self, grad_out):
        if not self.need_input_grad:
            return None
        return self._check_grad(grad_out).reshape((grad_out.shape[0],) + self.input_shape)


# ---------------------------------------------------------------------------
# Dense
# ---------------------------------------------------------------------------
class Dense(_WeightedLayer):
    """Fully connected: y = act(x @ kernel + bias) on the last axis.

    x (N, in) -> y (N, units); kernel (in, units), bias (units,). (Inputs of higher rank
    (N, ..., in) are treated as N*... rows, as Keras does.)
    """

    def __init__(self, units, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", input_shape=None, name=None, dtype=None):
        super().__init__(input_shape, name, dtype)
        self.units = _positive_int(units, "units", self.name)
        self._init_weights_args(activation, use_bias, kernel_initializer, bias_initializer)

    def compute_output_shape(self, input_shape):
        if len(input_shape) < 1:
            raise ValueError(f"{self.name}: expected a per-sample input of rank >= 1 (features,), "
                             f"got shape {tuple(input_shape)}")
        return tuple(input_shape[:-1]) + (self.units,)

    def _create_params(self, input_shape):
        self._add_weights((input_shape[-1], self.units), (self.units,))

    def forward(self, x, training=False):
        """x (N, in) -> y (N, units). Caches the input rows x (for dW) and y (for the activation)."""
        x = self._check_input(x)
        self._x = x.reshape(-1, x.shape[-1])                        # (M, in), M = N (or N*...)
        z = self._x @ self.kernel                                   # (M, units)
        if self.use_bias:
            z = z + self.bias
        return self._activate(z, x.shape[:-1] + (self.units,))

    def backward(self, grad_out):
        """dL/dy (N, units) -> dL/dx (N, in); fills grads [dL/dkernel, dL/dbias]."""
        grad_out = self._check_grad(grad_out)   # (N, units): the shape of the last forward's output
        dz = self._grad_z(grad_out)             # (M, units): back through the activation
        return self._backward_from_z(dz)        # back through z = x @ kernel + bias

    def _backward_from_z(self, dz):
        """dz = dL/dz (M, units), z = x @ kernel + bias -> dL/dx (N, ..., in).

            dL/dkernel = x^T @ dz          (in, units)
            dL/dbias   = dz.sum(axis=0)    (units,): over the rows
            dL/dx      = dz @ kernel^T     (M, in)
        """
        self.grads[0][...] = self._x.T @ dz
        if self.use_bias:
            self.grads[1][...] = dz.sum(axis=0)
        if not self.need_input_grad:
            return None
        return (dz @ self.kernel.T).reshape((-1,) + self.input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(units=self.units)
        return config


# ---------------------------------------------------------------------------
# BatchNormalization
# ---------------------------------------------------------------------------
class BatchNormalization(Layer):
    """Normalises each channel (the last axis) to mean 0 and variance 1, then scales and shifts it.

    x (N, ..., C) -> y, the same shape; gamma (C,), beta (C,), moving_mean (C,), moving_variance (C,).
    A channel's statistics are taken over its m values in the batch (every axis but the last:
    m = N for (N, C) inputs, N*H*W for images).

    Training, forward(x, training=True), with the batch's own statistics:
        mu = mean(x),  var = mean((x - mu)^2)                 per channel; var is biased (/ m)
        x_hat = (x - mu) / sqrt(var + eps)
        y = gamma * x_hat + beta
        moving_mean = moving_mean * momentum + mu * (1 - momentum)         (var likewise)
    Inference, training=False: the same, with moving_mean and moving_variance for mu and var.

    Weights, in Keras's order: [gamma (scale=True), beta (center=True), moving_mean,
    moving_variance]. gamma and beta are trainable; the moving statistics are not: forward
    updates them, the optimizer never sees them (trainable_params, non_trainable_params).

    Backward in training, from the chain rule, per channel, with s = 1 / sqrt(var + eps):
        dL/dbeta  = sum(dy)
        dL/dgamma = sum(dy * x_hat)
        x_hat_i = (x_i - mu) * s depends on x_j directly and through mu and var:
            dmu/dx_j = 1/m,  dvar/dx_j = 2 (x_j - mu) / m,  so  ds/dx_j = -s^2 x_hat_j / m
            dx_hat_i/dx_j = s (delta_ij - 1/m) - s x_hat_i x_hat_j / m
        dL/dx_j = sum_i gamma dy_i dx_hat_i/dx_j
                = gamma * s * (dy_j - mean(dy) - x_hat_j * mean(dy * x_hat))
    After an inference forward, mu and var are constants: dL/dx = gamma * s * dy.
    """

    def __init__(self, axis=-1, momentum=0.99, epsilon=1e-3, center=True, scale=True, input_shape=None,
                 name=None, dtype=None):
        super().__init__(input_shape, name, dtype)
        if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
            raise ValueError(f"{self.name}: axis must be an int, got {axis!r}")
        self.axis = int(axis)
        self.momentum = _number_in(momentum, 0, 1, "momentum", "[0, 1]", self.name)
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float, np.number)) or not epsilon > 0:
            raise ValueError(f"{self.name}: epsilon must be a positive number, got {epsilon!r}")
        self.epsilon = float(epsilon)
        self.center, self.scale = bool(center), bool(scale)

    def compute_output_shape(self, input_shape):
        if len(input_shape) < 1:
            raise ValueError(f"{self.name}: expected a per-sample input of rank >= 1 (..., channels), "
                             f"got shape {tuple(input_shape)}")
        if self.axis not in (-1, len(input_shape)):           # Keras counts the batch axis: 3 for NHWC
            raise ValueError(f"{self.name}: only the last axis (the channels) can be normalised: "
                             f"axis=-1 or {len(input_shape)} for inputs (batch, {', '.join(map(str, input_shape))}), "
                             f"got axis={self.axis}")
        return tuple(input_shape)

    def _create_params(self, input_shape):
        channels = (input_shape[-1],)
        self.params = []
        if self.scale:
            self.params.append(np.ones(channels, dtype=self.dtype))       # gamma
        if self.center:
            self.params.append(np.zeros(channels, dtype=self.dtype))      # beta
        self.params += [np.zeros(channels, dtype=self.dtype),             # moving_mean
                        np.ones(channels, dtype=self.dtype)]              # moving_variance
        self.grads = [np.zeros_like(p) for p in self.trainable_params]

    @property
    def trainable_params(self):
        """[gamma, beta], those present: what the optimizer updates."""
        return self.params[:-2]

    @property
    def non_trainable_params(self):
        """[moving_mean, moving_variance]: kept by forward in training, never by the optimizer."""
        return self.params[-2:]

    @property
    def gamma(self):
        """The scale (C,), params[0]; None with scale=False."""
        return self.params[0] if self.scale and self.params else None

    @property
    def beta(self):
        """The shift (C,), after gamma; None with center=False."""
        return self.params[int(self.scale)] if self.center and self.params else None

    @property
    def moving_mean(self):
        """The running mean (C,) that inference normalises with."""
        return self.params[-2] if self.params else None

    @property
    def moving_variance(self):
        """The running variance (C,) that inference normalises with."""
        return self.params[-1] if self.params else None

    def forward(self, x, training=False):
        """x (N, ..., C) -> y (N, ..., C). Caches x_hat (M, C), M = N*..., and s = 1/sqrt(var + eps) (C,);
        in training, also moves the moving statistics toward the batch's."""
        x = self._check_input(x)
        rows = x.reshape(-1, x.shape[-1])                              # (M, C): a channel per column
        if training:
            mean = rows.mean(axis=0)                                   # (C,)
            variance = ((rows - mean) ** 2).mean(axis=0)               # (C,), biased: divided by M
            keep = self.momentum                                       # moving = moving * momentum + batch * (1 - momentum)
            self.moving_mean[...] = self.moving_mean * keep + mean * (1 - keep)
            self.moving_variance[...] = self.moving_variance * keep + variance * (1 - keep)
        else:
            mean, variance = self.moving_mean, self.moving_variance
        self._used_batch_statistics = bool(training)
        self._inv_std = 1 / np.sqrt(variance + x.dtype.type(self.epsilon))   # (C,): s
        self._x_hat = (rows - mean) * self._inv_std                    # (M, C)
        y = self._x_hat
        if self.scale:
            y = y * self.gamma
        if self.center:
            y = y + self.beta
        return y.reshape(x.shape)

    def backward(self, grad_out):
        """dL/dy (N, ..., C) -> dL/dx (N, ..., C); fills grads [dL/dgamma, dL/dbeta] (those present)."""
        grad_out = self._check_grad(grad_out)
        dy = grad_out.reshape(self._x_hat.shape)                       # (M, C)
        if self.scale:
            self.grads[0][...] = (dy * self._x_hat).sum(axis=0)        # dL/dgamma = sum(dy * x_hat)
        if self.center:
            self.grads[-1][...] = dy.sum(axis=0)                       # dL/dbeta = sum(dy)
        if not self.need_input_grad:
            return None
        gamma_s = self._inv_std * self.gamma if self.scale else self._inv_std     # (C,): gamma * s
        if self._used_batch_statistics:
            # dL/dx = gamma * s * (dy - mean(dy) - x_hat * mean(dy * x_hat))
            dx = gamma_s * (dy - dy.mean(axis=0) - self._x_hat * (dy * self._x_hat).mean(axis=0))
        else:
            dx = gamma_s * dy                                          # dL/dx = gamma * s * dy
        return dx.reshape(grad_out.shape)

    def get_config(self):
        config = super().get_config()
        config.update(axis=self.axis, momentum=self.momentum, epsilon=self.epsilon, center=self.center,
                      scale=self.scale)
        return config


# ---------------------------------------------------------------------------
# Layers that draw random numbers in training: Dropout (and tinycnn/augmentation.py's)
# ---------------------------------------------------------------------------
class _RandomLayer(Layer):
    """Shared by the layers that draw random numbers in training: Dropout here, RandomFlip,
    RandomTranslation and RandomErasing in tinycnn/augmentation.py.

    A batch's random numbers are drawn for the whole batch first, then applied to any of its
    rows, so a batch cut into two halves run side by side (the fast engine) meets the same
    numbers as the whole batch:

        drawn = layer.draw(n)         a tuple of arrays, each with leading axis n (a built layer)
        y = layer.apply(x, drawn)     x (rows, ...), drawn sliced to the same rows:
                                      tuple(a[start:stop] for a in drawn); caches self._drawn
        forward(x, training=True)  is apply(x, draw(len(x)));  forward(x) at inference is x itself
        backward(dy)               the gradient of the last apply (dy itself after an inference forward)

    draw takes its numbers, in a fixed order, from tinycnn.utils.get_rng() (seeded by
    set_random_seed), or from the layer's own np.random.default_rng(seed) when it was given
    seed=... (Keras's seed argument). Subclasses write draw, apply and _backward_drawn.
    """
    draws_random_numbers = True

    def __init__(self, seed=None, input_shape=None, name=None, dtype=None):
        super().__init__(input_shape, name, dtype)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
            raise ValueError(f"{self.name}: seed must be None or a non-negative integer, got {seed!r}")
        self.seed = None if seed is None else int(seed)
        self._own_rng = None if seed is None else np.random.default_rng(self.seed)
        self._drawn = None                       # the last apply's draws; None: the identity

    @property
    def rng(self):
        """The Generator draw takes its numbers from: the layer's own (seed=...) or tinycnn's."""
        return utils.get_rng() if self._own_rng is None else self._own_rng

    def draw(self, n):
        """The random numbers for n samples: a tuple of arrays, each with leading axis n."""
        raise NotImplementedError

    def apply(self, x, drawn):
        """x (rows, ...) -> y with the draws `drawn` (each with leading axis rows)."""
        raise NotImplementedError

    def _backward_drawn(self, grad_out, drawn):
        """dL/dy (rows, ...) -> dL/dx through the transform that `drawn` made."""
        raise NotImplementedError

    def forward(self, x, training=False):
        """x (N, ...) -> y: apply(x, draw(N)) in training; x itself at inference (nothing drawn)."""
        x = self._check_input(x)
        if not training:
            self._drawn = None
            return x
        return self.apply(x, self.draw(len(x)))

    def _start_apply(self, x, drawn):
        """For apply: x checked, and `drawn` checked to hold one draw per row of x and cached."""
        x = self._check_input(x)
        drawn = tuple(drawn)
        if any(len(a) != len(x) for a in drawn):
            raise ValueError(f"{self.name}: apply got draws for {[len(a) for a in drawn]} samples but x has "
                             f"{len(x)} rows; slice the draws to x's rows: tuple(a[start:stop] for a in drawn)")
        self._drawn = drawn
        return x, drawn

    def backward(self, grad_out):
        """dL/dy -> dL/dx through the last apply (a copy of dL/dy after an inference forward)."""
        if not self.need_input_grad:
            return None
        grad_out = self._check_grad(grad_out)
        return grad_out.copy() if self._drawn is None else self._backward_drawn(grad_out, self._drawn)

    def get_config(self):
        config = super().get_config()
        config.update(seed=self.seed)
        return config


class Dropout(_RandomLayer):
    """Inverted dropout: in training, each value is dropped (set to 0) with probability `rate`
    and the kept ones are scaled by 1 / (1 - rate), so each output's expected value is its
    input; at inference (training=False) the layer passes x through unchanged.

    x (N, ...) -> y, the same shape:
        keep = uniform[0, 1) >= rate           one draw per value
        y = x * keep / (1 - rate)
    Backward through the same mask: dL/dx = dL/dy * keep / (1 - rate) (dL/dy at inference).
    draw(n) -> (keep (n, ...) bool,); with rate 0 nothing is dropped and no random number is drawn.
    """

    def __init__(self, rate, seed=None, input_shape=None, name=None, dtype=None):
        super().__init__(seed, input_shape, name, dtype)
        self.rate = _number_in(rate, 0, 1, "rate", "[0, 1) (the fraction of values to drop)", self.name,
                               include_high=False)

    def draw(self, n):
        """(keep (n, *input_shape) bool,): True where a value is kept."""
        shape = (n,) + self.input_shape
        if self.rate == 0:
            return (np.ones(shape, dtype=bool),)
        return (self.rng.random(shape) >= self.rate,)

    def apply(self, x, drawn):
        """x (rows, ...) -> y = x * keep / (1 - rate)."""
        x, (keep,) = self._start_apply(x, drawn)
        return x * self._scaled_mask(keep, x.dtype)

    def _scaled_mask(self, keep, dtype):
        return keep * np.dtype(dtype).type(1 / (1 - self.rate))        # 0 or 1 / (1 - rate)

    def _backward_drawn(self, grad_out, drawn):
        """dL/dx = dL/dy * keep / (1 - rate)."""
        (keep,) = drawn
        return grad_out * self._scaled_mask(keep, grad_out.dtype)

    def get_config(self):
        config = super().get_config()
        config.update(rate=self.rate)
        return config


# ---------------------------------------------------------------------------
# Activations as layers
# ---------------------------------------------------------------------------
class Activation(Layer):
    """Applies an activation ("relu", "softmax", "linear") elementwise / over the last axis."""

    def __init__(self, activation, input_shape=None, name=None, dtype=None):
        super().__init__(input_shape, name, dtype)
        self.activation = activations.get(activation)

    def forward(self, x, training=False):
        """x (N, ...) -> y = f(x), same shape; caches y (and the logits x for softmax)."""
        x = self._check_input(x)
        if self.outputs_softmax:
            self._logits = x
        self._y = self.activation.forward(x)
        return self._y

    def backward(self, grad_out):
        """dL/dx = f'(x) * dL/dy (for softmax, the Jacobian-vector product)."""
        if not self.need_input_grad:
            return None
        return self.activation.backward(self._check_grad(grad_out), self._y)

    def backward_from_logits(self, grad_logits):
        """With a softmax, dL/dlogits is dL/dx itself: pass it through (a copy, never the caller's array)."""
        if not self.outputs_softmax:
            raise TypeError(f"{self.name}: backward_from_logits needs a layer whose output is a softmax")
        return self._check_grad(grad_logits).copy() if self.need_input_grad else None

    def get_config(self):
        config = super().get_config()
        config.update(activation=self.activation.name)
        return config


class ReLU(Activation):
    """max(x, 0) as a layer (Keras's ReLU(); named "re_lu", "re_lu_1", ...)."""

    def __init__(self, input_shape=None, name=None, dtype=None):
        super().__init__("relu", input_shape, name, dtype)

    def get_config(self):
        config = super().get_config()
        del config["activation"]
        return config


class Softmax(Activation):
    """Softmax over the last axis as a layer (Keras's Softmax())."""

    def __init__(self, input_shape=None, name=None, dtype=None):
        super().__init__("softmax", input_shape, name, dtype)

    def get_config(self):
        config = super().get_config()
        del config["activation"]
        return config


_CORE_LAYERS = (Conv2D, MaxPooling2D, AveragePooling2D, GlobalAveragePooling2D, Flatten, Dense,
                BatchNormalization, Dropout, Activation, ReLU, Softmax)
_AUGMENTATION_NAMES = ("RandomFlip", "RandomTranslation", "RandomErasing")


def __getattr__(name):
    """LAYER_CLASSES (every layer class by name, for saving and loading) and the augmentation
    layers, RandomFlip, RandomTranslation and RandomErasing, which live in tinycnn/augmentation.py.
    That module subclasses Layer, so it imports this one; looking it up here on first use
    (PEP 562) lets either module be imported first."""
    if name != "LAYER_CLASSES" and name not in _AUGMENTATION_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from tinycnn import augmentation
    found = {cls.__name__: cls for cls in (augmentation.RandomFlip, augmentation.RandomTranslation,
                                           augmentation.RandomErasing)}
    globals().update(found, LAYER_CLASSES={**{cls.__name__: cls for cls in _CORE_LAYERS}, **found})
    return globals()[name]


def __dir__():
    return sorted(list(globals()) + ["LAYER_CLASSES", *_AUGMENTATION_NAMES])
