"""The layers a CNN is made of, each with a hand-written forward and backward pass.

Shapes: images are NHWC, (batch N, height H, width W, channels C), as in Keras.
Every layer follows one contract (see the README, "The layer contract"):

    layer.build(input_shape)        per-sample shape, no batch axis -> output shape; creates params
    y = layer.forward(x, training)  x has the batch axis; caches what backward needs
    dx = layer.backward(dy)         dL/dx from dL/dy; leaves dL/dparams in layer.grads
                                    (same order and shapes as layer.params); never edits dy;
                                    returns None when layer.need_input_grad is False;
                                    one backward per forward pass

Parameters use Keras's layout and order, so weights move between Keras and tinycnn
unchanged: Conv2D [kernel (KH, KW, C, F), bias (F,)], Dense [kernel (in, units), bias (units,)].
The arrays in `params` and `grads` are created once in build and then only updated in
place, so an optimizer can keep its per-parameter state by position.

A layer whose activation is softmax also caches its `logits` (the input of the softmax)
and offers `backward_from_logits(dL/dlogits)`: with a cross-entropy loss the model
hands it (softmax - onehot) / batch directly and the softmax Jacobian is never formed.

A Conv2D with ReLU followed by MaxPooling2D(2) is run by the model as one step
(conv_relu_pool_forward / conv_relu_pool_backward, after MaxPooling2D): the same numbers as
the two layers' passes, with fewer passes over the conv's big output.
"""
import math
import re

import numpy as np

from tinycnn import activations, initializers, kernels, utils

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
    oh, (pad_top, _) = kernels.conv_output_size(h, kh, sh, padding)
    ow, (pad_left, _) = kernels.conv_output_size(w, kw, sw, padding)
    return oh, ow, pad_top, pad_left


# ---------------------------------------------------------------------------
# The base class
# ---------------------------------------------------------------------------
class Layer:
    """Base class: naming, shape checks, weights in and out, config. Subclasses add the maths."""

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
        self.grads = []                                # same shapes, filled by backward
        self.need_input_grad = True                    # the model sets False on the first layer

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

    def backward_from_logits(self, grad_logits):
        """Backward from dL/dlogits, skipping the softmax Jacobian (softmax layers only)."""
        raise TypeError(f"{self.name}: backward_from_logits needs a layer whose output is a softmax")

    # -- weights ------------------------------------------------------------------------------
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
        """Number of scalar parameters."""
        if not self.built:
            raise ValueError(f"{self.name}: count_params before the layer is built")
        return int(sum(p.size for p in self.params))

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
    """Shared by Conv2D and Dense: bias + activation after a matrix product, and back."""

    def _init_weights_args(self, activation, use_bias, kernel_initializer, bias_initializer):
        self.activation = activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)

    def _add_weights(self, kernel_shape, bias_shape):
        rng = utils.get_rng()
        # weights in shared memory: tinycnn.parallel's worker process reads them as they are updated
        self.kernel = utils.shared_copy(self.kernel_initializer(kernel_shape, dtype=self.dtype, rng=rng))
        # ... and gradients too: the worker process adds its half's in for its part of the optimizer's step
        self.params, self.grads = [self.kernel], [utils.shared_copy(np.zeros_like(self.kernel))]
        if self.use_bias:
            self.bias = utils.shared_copy(self.bias_initializer(bias_shape, dtype=self.dtype, rng=rng))
            self.params.append(self.bias)
            self.grads.append(utils.shared_copy(np.zeros_like(self.bias)))

    def _bias_and_activation(self, z):
        """z (M, F) = the matrix product -> activation(z + bias), caching what backward needs."""
        if self.activation.name == "relu" and self.use_bias:
            y = kernels.bias_relu_(z, self.bias)           # fused y = max(z + b, 0), in place
        else:
            if self.use_bias:
                z += self.bias
            if self.outputs_softmax:
                self.logits = z                            # for backward_from_logits
            y = self.activation.forward(z)
        return y

    def backward(self, grad_out):
        """dL/dx from dL/dy: through the activation (dL/dz = f'(z) * dL/dy), then the linear part."""
        grad_out = self._check_grad(grad_out)
        if self.output is None:
            raise RuntimeError(f"{self.name}: its last forward pass ran fused with the pooling layer after "
                               f"it (conv_relu_pool_forward), which keeps no output of its own; run "
                               f"{self.name}.forward(x) before {self.name}.backward, or conv_relu_pool_backward")
        return self.backward_linear(self.activation.backward(grad_out, self.output))

    def backward_from_logits(self, grad_logits):
        """dL/dx from dL/dz, z the softmax's input (the loss gives (softmax - onehot)/batch)."""
        if not self.outputs_softmax:
            super().backward_from_logits(grad_logits)
        return self.backward_linear(self._check_grad(grad_logits))

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

    As one matrix product: the patches of x become the rows of cols (N*OH*OW, KH*KW*C) (im2col),
    and the kernel reshapes, with no transpose, to W2 (KH*KW*C, F):  Z = cols @ W2.
    A 3x3, stride-1 convolution on 16 channels or more takes a shortcut to the same Z, Winograd's
    algorithm (kernels.py): 16 multiply-adds per 2x2 outputs where the product spends 36.
        V = winograd_input(x)  (16, T, C): each 4x4 tile of x (T tiles), transformed
        U = winograd_kernel(kernel)  (16, C, F);   Z = winograd_output(V @ U), 16 products over C.
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

    def _geometry(self, input_shape):
        """(OH, OW, pad_top, pad_left) for a per-sample input (H, W, C)."""
        return _window_geometry(input_shape, self.kernel_size, self.strides, self.padding)

    def compute_output_shape(self, input_shape):
        self._check_rank(input_shape, 3, "(height, width, channels)")
        oh, ow, _, _ = self._geometry(input_shape)
        if oh < 1 or ow < 1:
            raise ValueError(f"{self.name}: kernel_size {self.kernel_size} is larger than the input "
                             f"{tuple(input_shape[:2])} with padding='valid'; use a smaller kernel "
                             f"or padding='same'")
        return (oh, ow, self.filters)

    def _create_params(self, input_shape):
        kh, kw = self.kernel_size
        self._add_weights((kh, kw, input_shape[2], self.filters), (self.filters,))
        self._oh, self._ow, self._pad_top, self._pad_left = self._geometry(input_shape)
        self._winograd = kernels.winograd_fits(self.kernel_size, self.strides, input_shape[2])

    def forward(self, x, training=False):
        """x (N, H, W, C) -> y (N, OH, OW, F). Caches cols (for dW, dx) and y (for the activation).

        Where Winograd fits, caches V and U instead of cols (for dW and dx; see backward_linear).
        """
        x = self._check_input(x)
        y = self._bias_and_activation(self.forward_linear(x))
        self.output = y.reshape(x.shape[0], self._oh, self._ow, self.filters)
        if self.outputs_softmax:
            self.logits = self.logits.reshape(self.output.shape)
        return self.output

    def forward_linear(self, x, out_h=None, out_w=None):
        """x (N, H, W, C) -> z (N*OH*OW, F), the convolution before bias and activation.

        out_h, out_w: only the top-left out_h x out_w outputs (default all OH x OW): a
        MaxPooling2D(2) after an 11x11 output uses 10x10 of it (conv_relu_pool_forward).
        Caches what backward_linear needs: cols, or Winograd's V and U, and that size.
        """
        (kh, kw), (sh, sw), f = self.kernel_size, self.strides, self.filters
        oh, ow = self._linear_size = (self._oh if out_h is None else out_h, self._ow if out_w is None else out_w)
        if self._winograd:
            tiles_h, tiles_w = kernels.winograd_tiles(oh, ow)
            self.v = kernels.winograd_input(x, self._pad_top, self._pad_left, tiles_h, tiles_w)   # (16, T, C)
            self.u = kernels.winograd_kernel(self.kernel)                                       # (16, C, F)
            m = np.matmul(self.v, self.u)                            # (16, T, F): 16 products over C
            return kernels.winograd_output(m, x.shape[0], oh, ow, tiles_h, tiles_w).reshape(-1, f)
        self.cols = kernels.im2col(x, kh, kw, sh, sw, self._pad_top, self._pad_left, oh, ow)
        return kernels.matmul(self.cols, self.kernel.reshape(kh * kw * x.shape[3], f))      # (N*OH*OW, F)

    def backward_linear(self, grad_z, bias_grad=None):
        """grad_z = dL/dz (N, OH, OW, F), z = conv + bias before the activation -> dL/dx (N, H, W, C).
        (OH, OW: as many as the forward pass computed, see forward_linear.)
        bias_grad: dL/dbias (F,) where the caller has added it up already (conv_relu_pool_backward).

            dL/dW2 = cols^T @ dZ   (KH*KW*C, F), reshaped to the kernel's (KH, KW, C, F)
            dL/db  = sum of dZ over batch and pixels
            dL/dx  = col2im(dZ @ W2^T): every patch's gradient added back onto its pixels
        Winograd's way (z = output(V @ U), three linear steps), each step's transpose in reverse:
            dM = output^T(dZ);  dU = V^T @ dM -> dL/dkernel = kernel^T(dU);  dV = dM @ U^T -> dL/dx = input^T(dV)
        """
        (kh, kw), (sh, sw), f = self.kernel_size, self.strides, self.filters
        h, w, c = self.input_shape
        oh, ow = self._linear_size
        if self._winograd:
            if getattr(self, "v", None) is None:
                raise RuntimeError(f"{self.name}: backward needs a forward pass before it; each forward "
                                   f"pass serves one backward pass (dL/dx reuses the cached tiles' memory)")
            tiles_h, tiles_w = kernels.winograd_tiles(oh, ow)
            dm = kernels.winograd_output_backward(grad_z, tiles_h, tiles_w)        # (16, T, F)
            du = kernels.matmul(self.v.transpose(0, 2, 1), dm)                      # (16, C, F), summed over tiles
            self.grads[0][...] = kernels.winograd_kernel_backward(du)
        else:
            dz = grad_z.reshape(-1, f)                                             # (N*OH*OW, F)
            kernels.matmul(self.cols.T, dz, out=self.grads[0].reshape(-1, f))      # written into dL/dkernel
        if self.use_bias:                                                          # sum over rows
            self.grads[1][...] = kernels.column_sums(grad_z.reshape(-1, f)) if bias_grad is None else bias_grad
        if not self.need_input_grad:
            return None
        if self._winograd:     # dV, (16, T, C) like V, goes into V's memory: dU was V's last use
            dv = np.matmul(dm, self.u.transpose(0, 2, 1), out=self.v)
            self.v = None
            return kernels.winograd_input_backward(dv, grad_z.shape[0], h, w, self._pad_top, self._pad_left,
                                                   tiles_h, tiles_w)
        dcols = kernels.matmul(dz, self.kernel.reshape(-1, f).T)               # (N*OH*OW, KH*KW*C)
        return kernels.col2im(dcols, grad_z.shape[0], h, w, c, kh, kw, sh, sw,
                              self._pad_top, self._pad_left, oh, ow)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=list(self.kernel_size), strides=list(self.strides),
                      padding=self.padding)
        return config


# ---------------------------------------------------------------------------
# MaxPooling2D
# ---------------------------------------------------------------------------
class MaxPooling2D(Layer):
    """Max over (PH, PW) windows moved by (sh, sw); strides default to the pool size.

    x (N, H, W, C) -> y (N, OH, OW, C), sizes as in Conv2D; "same" padding cells are ignored.
    Backward: each window's gradient goes to the pixel that won it (dL/dx = dL/dy there, 0 elsewhere);
    a pixel that wins several overlapping windows receives the sum. Ties: the first maximum in
    row-major order wins, as in TensorFlow, so exactly one pixel per window gets the gradient.
    """

    def __init__(self, pool_size=2, strides=None, padding="valid", input_shape=None, name=None, dtype=None):
        super().__init__(input_shape, name, dtype)
        self.pool_size = _pair(pool_size, "pool_size", self.name)
        self.strides = self.pool_size if strides is None else _pair(strides, "strides", self.name)
        self.padding = _padding(padding, self.name)

    def _geometry(self, input_shape):
        """(OH, OW, pad_top, pad_left) for a per-sample input (H, W, C)."""
        return _window_geometry(input_shape, self.pool_size, self.strides, self.padding)

    def compute_output_shape(self, input_shape):
        self._check_rank(input_shape, 3, "(height, width, channels)")
        oh, ow, _, _ = self._geometry(input_shape)
        if oh < 1 or ow < 1:
            raise ValueError(f"{self.name}: pool_size {self.pool_size} is larger than the input "
                             f"{tuple(input_shape[:2])} with padding='valid'; use a smaller pool "
                             f"or padding='same'")
        return (oh, ow, input_shape[2])

    def _create_params(self, input_shape):
        oh, ow, self._pad_top, self._pad_left = self._geometry(input_shape)   # no weights, only geometry
        # MaxPooling2D(2) with every window inside the image: windows that neither overlap nor
        # touch padding, so backward can write each pixel once (kernels.maxpool_backward's fast path)
        h, w, _ = input_shape
        self._windows_2x2 = (self.pool_size == (2, 2) and self.strides == (2, 2)
                             and 2 * oh <= h and 2 * ow <= w)

    def forward(self, x, training=False):
        """x (N, H, W, C) -> y (N, OH, OW, C); caches argmax (N, OH, OW, C), each winner's y*W + x."""
        x = self._check_input(x)
        (ph, pw), (sh, sw), (oh, ow, _) = self.pool_size, self.strides, self.output_shape
        y, self.argmax = kernels.maxpool_forward(x, ph, pw, sh, sw, self._pad_top, self._pad_left, oh, ow)
        return y

    def backward(self, grad_out):
        """dL/dy (N, OH, OW, C) -> dL/dx (N, H, W, C): scattered onto the winners, summed."""
        if not self.need_input_grad:
            return None
        h, w, _ = self.input_shape
        return kernels.maxpool_backward(self._check_grad(grad_out), self.argmax, h, w,
                                        windows_2x2=self._windows_2x2)

    def get_config(self):
        config = super().get_config()
        config.update(pool_size=list(self.pool_size), strides=list(self.strides), padding=self.padding)
        return config


# ---------------------------------------------------------------------------
# Conv2D(relu) -> MaxPooling2D(2): the pair in one pass
# ---------------------------------------------------------------------------
def fuses_with_pool(layer, next_layer):
    """True for a Conv2D with a bias and ReLU followed by MaxPooling2D(2) on whole windows.

    That is the notebook's conv -> pool. Sequential then runs the pair with
    conv_relu_pool_forward and conv_relu_pool_backward: the same numbers as the two layers'
    own passes, but the conv's (N, OH, OW, F) output is never written, nor dL/dy of it
    and its ReLU mask in backward (cnn_categorical, 16 images: those passes 0.16 -> 0.07 ms).
    """
    return (isinstance(layer, Conv2D) and isinstance(next_layer, MaxPooling2D)
            and layer.activation.name == "relu" and layer.use_bias
            and next_layer._windows_2x2)     # 2x2, stride 2, every window inside: OH = conv's OH // 2


def conv_relu_pool_forward(conv, pool, x):
    """x (N, H, W, C) -> pool(conv(x)) (N, OH // 2, OW // 2, F), conv's OH x OW.

    The conv's product z as in Conv2D.forward, then y = max over each 2x2 window of
    ReLU(z + bias) in one pass (kernels.bias_relu_maxpool_2x2). An odd last row or column of
    the conv's output is in no window, so it is not computed (cnn_sparse's second conv: 10x10
    of 11x11, 25 Winograd tiles instead of 36). Caches the conv's patches or tiles, the
    pool's argmax, and y, whose sign is all backward needs of the ReLU.
    """
    x = conv._check_input(x)
    out_h, out_w = conv._oh // 2 * 2, conv._ow // 2 * 2           # the outputs the windows cover
    z = conv.forward_linear(x, out_h, out_w).reshape(x.shape[0], out_h, out_w, conv.filters)
    y, pool.argmax = kernels.bias_relu_maxpool_2x2(z, conv.bias)
    conv.output, pool.output, pool._batch_size = None, y, x.shape[0]   # the conv's output is never formed
    return y


def conv_relu_pool_backward(conv, pool, grad_out):
    """dL/dy (N, OH // 2, OW // 2, F) -> dL/dx (N, H, W, C), or None for the model's first layer.

    The pool's backward and the ReLU's in one pass (kernels.maxpool_relu_backward_2x2):
    dL/dz = dL/dy at each window's winner where y > 0, else 0, and dL/dbias on the way;
    then the conv's own backward_linear. Fills conv.grads.
    """
    grad_z, bias_grad = kernels.maxpool_relu_backward_2x2(pool._check_grad(grad_out), pool.argmax, pool.output,
                                                          *conv._linear_size)
    return conv.backward_linear(grad_z, bias_grad)


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

    kernel_grad_rows: None, or a pair of arrays (N, in) and (N, units) that the model sets
    for a step in halves (parallel.kernel_grads_later): backward_linear then copies x and
    dL/dz there and leaves dL/dkernel = x^T @ dZ to the model, for the whole batch at once.
    """

    def __init__(self, units, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", input_shape=None, name=None, dtype=None):
        super().__init__(input_shape, name, dtype)
        self.units = _positive_int(units, "units", self.name)
        self._init_weights_args(activation, use_bias, kernel_initializer, bias_initializer)
        self.kernel_grad_rows = None

    def compute_output_shape(self, input_shape):
        if len(input_shape) < 1:
            raise ValueError(f"{self.name}: expected a per-sample input of rank >= 1 (features,), "
                             f"got shape {tuple(input_shape)}")
        return tuple(input_shape[:-1]) + (self.units,)

    def _create_params(self, input_shape):
        self._add_weights((input_shape[-1], self.units), (self.units,))

    def forward(self, x, training=False):
        """x (N, in) -> y (N, units). Caches the input rows (for dW) and y (for the activation)."""
        x = self._check_input(x)
        self.x_rows = x.reshape(-1, x.shape[-1])                  # (N, in)
        y = self._bias_and_activation(kernels.matmul(self.x_rows, self.kernel))   # (N, units)
        self.output = y.reshape(x.shape[:-1] + (self.units,))
        if self.outputs_softmax:
            self.logits = self.logits.reshape(self.output.shape)
        return self.output

    def backward_linear(self, grad_z):
        """grad_z = dL/dz (N, units), z = x @ kernel + bias -> dL/dx (N, in).

            dL/dkernel = x^T @ dZ      (in, units)
            dL/dbias   = sum over the batch of dZ
            dL/dx      = dZ @ kernel^T
        """
        dz = grad_z.reshape(-1, self.units)
        if self.kernel_grad_rows is None:
            kernels.matmul(self.x_rows.T, dz, out=self.grads[0])  # written into dL/dkernel
        else:                                                     # the model multiplies them later
            x_out, dz_out = self.kernel_grad_rows
            x_out[...], dz_out[...] = self.x_rows, dz
        if self.use_bias:
            self.grads[1][...] = kernels.column_sums(dz)       # sum over rows
        if not self.need_input_grad:
            return None
        return kernels.matmul(dz, self.kernel.T).reshape(grad_z.shape[:-1] + (self.kernel.shape[0],))

    def get_config(self):
        config = super().get_config()
        config.update(units=self.units)
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
            self.logits = x
        self.output = self.activation.forward(x)
        return self.output

    def backward(self, grad_out):
        """dL/dx = f'(x) * dL/dy (for softmax, the Jacobian-vector product)."""
        if not self.need_input_grad:
            return None
        return self.activation.backward(self._check_grad(grad_out), self.output)

    def backward_from_logits(self, grad_logits):
        """With a softmax, dL/dlogits is dL/dx itself: pass it through (a copy, never the caller's array)."""
        if not self.outputs_softmax:
            super().backward_from_logits(grad_logits)
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


LAYER_CLASSES = {cls.__name__: cls for cls in
                 (Conv2D, MaxPooling2D, Flatten, Dense, Activation, ReLU, Softmax)}
