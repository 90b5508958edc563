"""The fast engine's versions of the layers' passes: the same maths as tinycnn/layers.py,
through numba kernels, Winograd's convolution and matrix products cut to OpenBLAS's liking.

An op wraps one layer (two, for a conv and its pooling) and reads the layer's weights and
settings, but keeps its caches on itself, so the layer objects are never touched by a fast
pass, and two ops of the same layer can run two halves of a batch side by side:

    op = make_plan(layers, grads)[i]    ops in the order of the layers
    y = op.forward(x, training)         x (N, ...) -> the layer's output, caches what backward needs
    dx = op.backward(dy)                fills op.grads (a list like layer.grads), returns dL/dx

`grads` is the layer's own list for the first half of a batch (and a whole batch), a list
of arrays of the same shapes for the second half. Any other layer (a user's own, say)
runs its own textbook passes through `LayerOp`.
"""
import copy
import math

import numpy as np

from tinycnn.engines.fast import kernels, tuning
from tinycnn.layers import Activation, BatchNormalization, Conv2D, Dense, Flatten, MaxPooling2D


class Op:
    """One layer's passes, caches on the op. `layers`: how many layers of the model it runs."""
    layers = 1

    def __init__(self, layer, grads):
        self.layer, self.grads = layer, grads
        self.logits = None

    @property
    def outputs_softmax(self):
        return self.layer.outputs_softmax

    def forward(self, x, training=False):
        raise NotImplementedError

    def backward(self, grad_out):
        raise NotImplementedError

    def backward_from_logits(self, grad_logits):
        raise NotImplementedError


class _WeightedOp(Op):
    """Conv2D and Dense: bias + activation after the product (z = product + bias), and back."""

    def _bias_and_activation(self, z):
        """z (M, F), the product -> activation(z + bias); caches y (and the logits for a softmax)."""
        layer = self.layer
        if layer.activation.name == "relu" and layer.use_bias:
            y = kernels.bias_relu_(z, layer.bias)           # y = max(z + b, 0) in one pass, in place
        else:
            if layer.use_bias:
                z += layer.bias
            if self.outputs_softmax:
                self.logits = z
            y = layer.activation.forward(z)
        self.y = y
        return y

    def backward(self, grad_out):
        """dL/dy -> dL/dx: through the activation (dL/dz = f'(z) * dL/dy), then the linear part."""
        grad_out = np.ascontiguousarray(grad_out, dtype=self.y.dtype).reshape(self.y.shape)
        if self.layer.activation.name == "relu":
            grad_z = kernels.relu_backward(grad_out, self.y)
        else:
            grad_z = self.layer.activation.backward(grad_out, self.y)
        return self.backward_linear(grad_z)

    def backward_from_logits(self, grad_logits):
        """dL/dx from dL/dz, z the softmax's input."""
        return self.backward_linear(np.ascontiguousarray(grad_logits).reshape(self.y.shape))


class ConvOp(_WeightedOp):
    """Conv2D: im2col and one product (kernels.im2col, kernels.matmul), or Winograd's way for a
    3x3, stride-1 convolution on 16 channels or more (kernels.winograd_*) where that is the
    faster way on this machine (winograd_pays; `winograd` True or False forces a way)."""

    def __init__(self, layer, grads, winograd=None):
        super().__init__(layer, grads)
        self.out_h, self.out_w, self.pad_top, self.pad_left = layer.geometry()
        fits = kernels.winograd_fits(layer.kernel_size, layer.strides, layer.input_shape[2])
        if fits and winograd is None:
            winograd = winograd_pays(layer.input_shape, layer.filters, layer.padding)
        self.winograd = fits and winograd
        self.x = self.u = self.cols = None

    def forward(self, x, training=False):
        """x (N, H, W, C) -> y (N, OH, OW, F)."""
        y = self._bias_and_activation(self.forward_linear(x))
        out_shape = (x.shape[0], self.out_h, self.out_w, self.layer.filters)
        if self.logits is not None:
            self.logits = self.logits.reshape(out_shape)
        return y.reshape(out_shape)

    def forward_linear(self, x, out_h=None, out_w=None):
        """x (N, H, W, C) -> z (N*OH*OW, F), the convolution before bias and activation.

        out_h, out_w: only the top-left out_h x out_w outputs (default all OH x OW): a
        MaxPooling2D(2) after an 11x11 output uses 10x10 of it (ConvReluPoolOp).
        Caches what backward_linear needs: cols, or x and Winograd's U, and that size.
        Winograd's way runs a piece of the batch at a time (_winograd_pieces):
            V = input(x piece) (16, T, C);  M = V @ U (16, T, F);  z piece = output(M)
        """
        layer = self.layer
        (kh, kw), (sh, sw), f = layer.kernel_size, layer.strides, layer.filters
        oh, ow = self.linear_size = (self.out_h if out_h is None else out_h, self.out_w if out_w is None else out_w)
        self.batch = x.shape[0]
        x = np.ascontiguousarray(x)
        if self.winograd:
            tiles_h, tiles_w = kernels.winograd_tiles(oh, ow)
            self.x, self.u = x, kernels.winograd_kernel(layer.kernel)                          # U (16, C, F)
            z = np.empty((self.batch, oh, ow, f), dtype=x.dtype)
            for start, stop, v, m in self._winograd_pieces():
                kernels.winograd_input(x[start:stop], self.pad_top, self.pad_left, tiles_h, tiles_w, out=v)
                np.matmul(v, self.u, out=m)                          # M (16, T, F): 16 products over C
                kernels.winograd_output(m, stop - start, oh, ow, tiles_h, tiles_w, out=z[start:stop])
            return z.reshape(-1, f)
        self.cols = kernels.im2col(x, kh, kw, sh, sw, self.pad_top, self.pad_left, oh, ow)
        return kernels.matmul(self.cols, layer.kernel.reshape(kh * kw * x.shape[3], f))      # (N*OH*OW, F)

    def backward_linear(self, grad_z, bias_grad=None):
        """grad_z = dL/dz (N*OH*OW, F) or (N, OH, OW, F) -> dL/dx (N, H, W, C); fills grads.
        bias_grad: dL/dbias (F,) where the caller has added it up already (ConvReluPoolOp).

            dL/dW2 = cols^T @ dZ;  dL/db = sum of dZ;  dL/dx = col2im(dZ @ W2^T)
        Winograd's way (z = output(V @ U), three linear steps), each step's transpose in reverse,
        a piece of the batch at a time (_winograd_backward):
            dM = output^T(dZ);  dU = V^T @ dM -> dL/dkernel = kernel^T(dU);  dV = dM @ U^T -> dL/dx = input^T(dV)
        """
        layer = self.layer
        (kh, kw), (sh, sw), f = layer.kernel_size, layer.strides, layer.filters
        h, w, c = layer.input_shape
        oh, ow = self.linear_size
        grad_z = grad_z.reshape(self.batch, oh, ow, f)
        if layer.use_bias:                                                         # sum over rows
            self.grads[1][...] = kernels.column_sums(grad_z.reshape(-1, f)) if bias_grad is None else bias_grad
        if self.winograd:
            return self._winograd_backward(grad_z)
        dz = grad_z.reshape(-1, f)                                                 # (N*OH*OW, F)
        kernels.matmul(self.cols.T, dz, out=self.grads[0].reshape(-1, f))          # written into dL/dkernel
        if not layer.need_input_grad:
            return None
        dcols = kernels.matmul(dz, layer.kernel.reshape(-1, f).T)               # (N*OH*OW, KH*KW*C)
        return kernels.col2im(dcols, self.batch, h, w, c, kh, kw, sh, sw,
                              self.pad_top, self.pad_left, oh, ow)

    def _winograd_backward(self, grad_z):
        """dL/dz (N, OH, OW, F) -> dL/dx (N, H, W, C) Winograd's way, a piece of the batch at a
        time; fills dL/dkernel. Each piece's V is made again from the cached x: in the cache,
        that costs less than writing the whole batch's V out to memory and reading it back."""
        layer = self.layer
        h, w, c = layer.input_shape
        tiles_h, tiles_w = kernels.winograd_tiles(*self.linear_size)
        du = np.zeros_like(self.u)                                   # dU (16, C, F), summed over the pieces
        du_piece = np.empty_like(du)
        u_t = np.ascontiguousarray(self.u.transpose(0, 2, 1))        # U^T (16, F, C)
        dx = np.empty((self.batch, h, w, c), dtype=grad_z.dtype) if layer.need_input_grad else None
        for start, stop, v, dm in self._winograd_pieces():
            kernels.winograd_output_backward(grad_z[start:stop], tiles_h, tiles_w, out=dm)   # dM (16, T, F)
            kernels.winograd_input(self.x[start:stop], self.pad_top, self.pad_left, tiles_h, tiles_w, out=v)
            du += np.matmul(v.transpose(0, 2, 1), dm, out=du_piece)                        # dU += V^T dM
            if dx is not None:                                       # dV = dM U^T, into V's memory
                dv = np.matmul(dm, u_t, out=v)
                kernels.winograd_input_backward(dv, stop - start, h, w, self.pad_top, self.pad_left,
                                                tiles_h, tiles_w, out=dx[start:stop])
        self.grads[0][...] = kernels.winograd_kernel_backward(du)
        return dx

    def _winograd_pieces(self):
        """(start, stop, V, M) for each piece of the batch's images: V (16, T, C) and M (16, T, F)
        for its T tiles, in two buffers that every piece reuses (see WINOGRAD_PIECE_BYTES)."""
        c, f = self.layer.kernel.shape[2:]
        tiles = math.prod(kernels.winograd_tiles(*self.linear_size))             # per image
        dtype = self.x.dtype
        per_piece = min(self.batch, max(1, WINOGRAD_PIECE_BYTES // (16 * tiles * (c + f) * dtype.itemsize)))
        v_memory = np.empty(16 * per_piece * tiles * c, dtype=dtype)
        m_memory = np.empty(16 * per_piece * tiles * f, dtype=dtype)
        for start in range(0, self.batch, per_piece):
            stop = min(start + per_piece, self.batch)
            rows = (stop - start) * tiles
            yield (start, stop, v_memory[:16 * rows * c].reshape(16, rows, c),
                   m_memory[:16 * rows * f].reshape(16, rows, f))

    def scratch_bytes_per_image(self):
        """Bytes of the biggest array this conv makes per image: Winograd's tiles V, else im2col's patches."""
        kernel = self.layer.kernel
        if self.winograd:
            tiles_h, tiles_w = kernels.winograd_tiles(self.out_h, self.out_w)
            return 16 * tiles_h * tiles_w * kernel.shape[2] * kernel.itemsize
        return self.out_h * self.out_w * kernel[..., 0].size * kernel.itemsize


# Winograd's tiles V and products M hold 16 values for every 2x2 pixels: four times the
# conv's input and output. Made for a whole batch, they go out to memory and are read back;
# made for a few images at a time, they stay in the cache, and the conv's forward and
# backward passes take about half the time (benchmarks/README.md, "Winograd in pieces").
# So ConvOp makes them for at most WINOGRAD_PIECE_BYTES of V and M at a time.
WINOGRAD_PIECE_BYTES = 1_250_000

# Winograd's way takes 16 products over C for each 2x2 block of outputs where im2col takes
# 36, but makes more passes over memory (the tiles in and out, forward and backward), so
# which way is faster depends on the conv's shape, the CPU and the BLAS kernel NumPy runs on
# it: measured once per machine and conv shape (tinycnn.engines.fast.tuning).
MEASURE_IMAGES = 16                 # a half of a batch of 32, as the engine runs it
MEASURE_BYTES = 64 * 2**20          # ... or fewer images, to keep a big conv's sample in 64 MiB


def winograd_pays(input_shape, filters, padding):
    """True if Winograd's way beats im2col on this machine for a 3x3 stride-1 conv of
    `filters` on per-image input_shape (H, W, C) (measure_winograd; True where tuning is off)."""
    name = f"conv_winograd_{'x'.join(map(str, input_shape))}_{filters}_{padding}"
    tuning.register(name, lambda: measure_winograd(input_shape, filters, padding), default=True)
    return tuning.choice(name)


def measure_winograd(input_shape, filters, padding, rounds=5):
    """True if that conv's forward and backward passes take less time Winograd's way than
    im2col's, on random numbers, at one BLAS thread (as the engine runs them). Each round times
    both ways, in alternating order; the medians of the rounds are compared. About 0.05-0.2 s."""
    from tinycnn.engines.fast import parallel
    rng = np.random.default_rng(0)
    layer = Conv2D(filters, 3, padding=padding)
    layer.build(tuple(input_shape))
    layer.kernel[...] = rng.standard_normal(layer.kernel.shape, dtype=np.float32)
    ops = {way: ConvOp(layer, [np.zeros_like(p) for p in layer.params], winograd=way) for way in (True, False)}
    per_image = max(op.scratch_bytes_per_image() for op in ops.values())
    images = max(1, min(MEASURE_IMAGES, MEASURE_BYTES // per_image))
    x = rng.standard_normal((images,) + tuple(input_shape), dtype=np.float32)
    grad_z = rng.standard_normal((images * ops[True].out_h * ops[True].out_w, filters), dtype=np.float32)

    def both_passes(op):
        op.forward_linear(x)
        op.backward_linear(grad_z)
    with parallel.blas_threads(1):
        medians = tuning.median_times({way: lambda op=op: both_passes(op) for way, op in ops.items()}, rounds)
    return medians[True] < medians[False]


class PoolOp(Op):
    """MaxPooling2D through kernels.maxpool_forward / maxpool_backward."""

    def __init__(self, layer, grads):
        super().__init__(layer, grads)
        self.out_h, self.out_w, self.pad_top, self.pad_left = layer.geometry()
        # 2x2 windows, stride 2, every window inside the image: windows that neither overlap
        # nor touch padding, so backward can write each pixel once (and ConvReluPoolOp fits)
        h, w, _ = layer.input_shape
        self.windows_2x2 = (layer.pool_size == (2, 2) and layer.strides == (2, 2)
                            and 2 * self.out_h <= h and 2 * self.out_w <= w)

    def forward(self, x, training=False):
        """x (N, H, W, C) -> y (N, OH, OW, C); caches argmax (N, OH, OW, C), each winner's y*W + x."""
        (ph, pw), (sh, sw) = self.layer.pool_size, self.layer.strides
        y, self.argmax = kernels.maxpool_forward(np.ascontiguousarray(x), ph, pw, sh, sw, self.pad_top,
                                                 self.pad_left, self.out_h, self.out_w)
        return y

    def backward(self, grad_out):
        if not self.layer.need_input_grad:
            return None
        h, w, _ = self.layer.input_shape
        return kernels.maxpool_backward(np.ascontiguousarray(grad_out), self.argmax, h, w,
                                        windows_2x2=self.windows_2x2)


def fuses_with_pool(conv, pool):
    """True for a Conv2D with a bias and ReLU followed by MaxPooling2D(2) on whole windows:
    the notebook's conv -> pool, which ConvReluPoolOp runs as one step."""
    return (isinstance(conv, Conv2D) and isinstance(pool, MaxPooling2D) and conv.built and pool.built
            and conv.activation.name == "relu" and conv.use_bias
            and PoolOp(pool, []).windows_2x2)     # 2x2, stride 2, every window inside: OH = conv's OH // 2


class ConvReluPoolOp(Op):
    """Conv2D(relu) -> MaxPooling2D(2) as one step: the same numbers as the two layers' passes,
    but the conv's (N, OH, OW, F) output is never written, nor dL/dy of it and its ReLU mask.

    Forward: the conv's product z, then y = max over each 2x2 window of ReLU(z + bias) in one
    pass (kernels.bias_relu_maxpool_2x2). An odd last row or column of the conv's output is
    in no window, so it is not computed. Backward: dL/dz = dL/dy at each window's winner
    where y > 0, else 0, with dL/dbias on the way (kernels.maxpool_relu_backward_2x2); then
    the conv's own backward_linear.
    """
    layers = 2

    def __init__(self, conv, pool, grads):
        super().__init__(conv, grads)
        self.conv, self.pool = ConvOp(conv, grads), pool

    def forward(self, x, training=False):
        """x (N, H, W, C) -> pool(conv(x)) (N, OH // 2, OW // 2, F)."""
        conv = self.conv
        out_h, out_w = conv.out_h // 2 * 2, conv.out_w // 2 * 2           # the outputs the windows cover
        z = conv.forward_linear(x, out_h, out_w).reshape(x.shape[0], out_h, out_w, self.layer.filters)
        self.y, self.argmax = kernels.bias_relu_maxpool_2x2(z, self.layer.bias)
        return self.y

    def backward(self, grad_out):
        grad_z, bias_grad = kernels.maxpool_relu_backward_2x2(np.ascontiguousarray(grad_out), self.argmax,
                                                              self.y, *self.conv.linear_size)
        return self.conv.backward_linear(grad_z, bias_grad)

    def scratch_bytes_per_image(self):
        return self.conv.scratch_bytes_per_image()


class FlattenOp(Op):
    """Flatten: a reshape, and back."""

    def forward(self, x, training=False):
        return x.reshape(x.shape[0], -1)

    def backward(self, grad_out):
        if not self.layer.need_input_grad:
            return None
        return grad_out.reshape((grad_out.shape[0],) + self.layer.input_shape)


class DenseOp(_WeightedOp):
    """Dense through kernels.matmul.

    deferred_rows: None, or a pair of arrays (N, in) and (N, units) that the engine sets
    for a step in halves (parallel.defers_kernel_grad): backward_linear then copies x and
    dL/dz there and leaves dL/dkernel = x^T @ dZ to the optimizer's step, for the whole batch.
    """

    def __init__(self, layer, grads):
        super().__init__(layer, grads)
        self.deferred_rows = None

    def forward(self, x, training=False):
        """x (N, in) -> y (N, units). Caches the input rows (for dW) and y (for the activation)."""
        layer = self.layer
        self.x_rows = x.reshape(-1, x.shape[-1])                  # (N, in)
        y = self._bias_and_activation(kernels.matmul(self.x_rows, layer.kernel))   # (N, units)
        out_shape = x.shape[:-1] + (layer.units,)
        if self.logits is not None:
            self.logits = self.logits.reshape(out_shape)
        return y.reshape(out_shape)

    def backward_linear(self, grad_z):
        """grad_z = dL/dz (N, units) -> dL/dx (N, in): dW = x^T dZ, db = sum dZ, dx = dZ W^T."""
        layer = self.layer
        dz = grad_z.reshape(-1, layer.units)
        if self.deferred_rows is None:
            kernels.matmul(self.x_rows.T, dz, out=self.grads[0])  # written into dL/dkernel
        else:                                                     # the optimizer's step multiplies them
            x_out, dz_out = self.deferred_rows
            x_out[...], dz_out[...] = self.x_rows, dz
        if layer.use_bias:
            self.grads[1][...] = kernels.column_sums(dz)       # sum over rows
        if not layer.need_input_grad:
            return None
        return kernels.matmul(dz, layer.kernel.T).reshape((-1,) + layer.input_shape)


class ActivationOp(Op):
    """Activation, ReLU, Softmax layers."""

    def forward(self, x, training=False):
        x = np.ascontiguousarray(x)
        if self.outputs_softmax:
            self.logits = x
        self.y = self.layer.activation.forward(x)
        return self.y

    def backward(self, grad_out):
        if not self.layer.need_input_grad:
            return None
        grad_out = np.ascontiguousarray(grad_out, dtype=self.y.dtype)
        if self.layer.activation.name == "relu":
            return kernels.relu_backward(grad_out, self.y)
        return self.layer.activation.backward(grad_out, self.y)

    def backward_from_logits(self, grad_logits):
        return np.array(grad_logits) if self.layer.need_input_grad else None


class BatchNormOp(Op):
    """BatchNormalization through kernels.batchnorm_*, with a ReLU layer right after it folded
    in (relu=True: then the op runs both layers, and dL/dy of the BN's output is never written).

    In training a channel's statistics are the WHOLE batch's. One pass over a batch runs
    forward(x, True) and backward(dy) as the layer does. A step in two halves runs each in
    two stages, and the engine adds up the halves' sums between them (FastEngine._train_in_synced_halves):
        forward:  sums = batch_sums(x) in each half -> mean, inv_std = statistics(sums of both)
                  -> y = normalize(mean, inv_std) in each half
        backward: sums = backward_sums(dy) in each half (and this half's dL/dgamma, dL/dbeta)
                  -> dx = backward_input(backward_totals(sums of both)) in each half
    The sums are float64, so the result does not depend on how the batch was cut, up to rounding.
    """

    def __init__(self, layer, grads, relu=False):
        super().__init__(layer, grads)
        self.relu, self.layers = relu, 2 if relu else 1
        channels, dtype = layer.input_shape[-1], np.dtype(layer.dtype)
        self._ones, self._zeros = np.ones(channels, dtype), np.zeros(channels, dtype)

    def _gamma_beta(self):
        layer = self.layer
        return (layer.gamma if layer.scale else self._ones), (layer.beta if layer.center else self._zeros)

    # -- forward ------------------------------------------------------------------------------
    def forward(self, x, training=False):
        """x (N, ..., C) -> y (N, ..., C): both stages on this batch alone."""
        if not training:
            layer = self.layer
            self.rows_shape, self.batch_statistics = x.shape, False
            self.rows = np.ascontiguousarray(x).reshape(-1, x.shape[-1])
            inv_std = 1 / np.sqrt(layer.moving_variance + self.rows.dtype.type(layer.epsilon))
            return self.normalize(layer.moving_mean, inv_std, batch_statistics=False)
        return self.normalize(*self.statistics([self.batch_sums(x)]))

    def batch_sums(self, x):
        """Stage 1: x (N, ..., C) -> (rows M, sum (C,), sum of squares (C,)) of this part of the batch; caches x."""
        self.rows_shape = x.shape
        self.rows = np.ascontiguousarray(x).reshape(-1, x.shape[-1])          # (M, C)
        return (len(self.rows),) + kernels.channel_sums(self.rows)

    def statistics(self, sums):
        """The batch's (mean, inv_std) (C,) from every part's batch_sums; moves the layer's
        moving statistics toward them (once per batch: call it on one op only)."""
        layer, dtype = self.layer, np.dtype(self.layer.dtype).type
        m = sum(part[0] for part in sums)
        mean64 = sum(part[1] for part in sums) / m
        variance64 = np.maximum(sum(part[2] for part in sums) / m - mean64 * mean64, 0)   # biased: / M
        mean, variance = mean64.astype(dtype), variance64.astype(dtype)
        keep = layer.momentum                               # moving = moving * momentum + batch * (1 - momentum)
        layer.moving_mean[...] = layer.moving_mean * keep + mean * (1 - keep)
        layer.moving_variance[...] = layer.moving_variance * keep + variance * (1 - keep)
        return mean, 1 / np.sqrt(variance + dtype(layer.epsilon))

    def normalize(self, mean, inv_std, batch_statistics=True):
        """Stage 2: the cached x -> y = gamma * (x - mean) * inv_std + beta (then ReLU)."""
        self.mean, self.inv_std, self.batch_statistics = mean, inv_std, batch_statistics
        gamma, beta = self._gamma_beta()
        self.y = kernels.batchnorm_forward(self.rows, mean, inv_std, gamma, beta, self.relu)
        return self.y.reshape(self.rows_shape)

    # -- backward -----------------------------------------------------------------------------
    def backward(self, grad_out):
        """dL/dy (N, ..., C) -> dL/dx (N, ..., C): both stages on this batch alone."""
        sums = self.backward_sums(grad_out)
        return self.backward_input(self.backward_totals([sums]) if self.batch_statistics else None)

    def backward_sums(self, grad_out):
        """Stage 1: this part's (rows, sum dz, sum dz * x_hat); fills its dL/dgamma, dL/dbeta."""
        self.dy = np.ascontiguousarray(grad_out, dtype=self.y.dtype).reshape(self.y.shape)
        dz_sum, dz_x_hat_sum = kernels.batchnorm_backward_sums(self.dy, self.y, self.rows, self.mean,
                                                                self.inv_std, self.relu)
        layer, dtype = self.layer, self.y.dtype
        if layer.scale:
            self.grads[0][...] = dz_x_hat_sum.astype(dtype)      # dL/dgamma = sum(dz * x_hat)
        if layer.center:
            self.grads[-1][...] = dz_sum.astype(dtype)           # dL/dbeta = sum(dz)
        return len(self.rows), dz_sum, dz_x_hat_sum

    def backward_totals(self, sums):
        """(mean dz, mean dz * x_hat) (C,) over the whole batch, from every part's backward_sums."""
        m, dtype = sum(part[0] for part in sums), self.y.dtype
        return (sum(part[1] for part in sums) / m).astype(dtype), (sum(part[2] for part in sums) / m).astype(dtype)

    def backward_input(self, means):
        """Stage 2: dL/dx (N, ..., C) = gamma * s * (dz - mean(dz) - x_hat * mean(dz * x_hat)),
        `means` from backward_totals; None after an inference forward (mean and var were constants)."""
        if not self.layer.need_input_grad:
            return None
        if means is None:
            means = (self._zeros, self._zeros)
        gamma_s = self._gamma_beta()[0] * self.inv_std
        dx = kernels.batchnorm_backward(self.dy, self.y, self.rows, self.mean, self.inv_std, gamma_s,
                                        *means, self.relu)
        return dx.reshape(self.rows_shape)


def fuses_with_relu(batchnorm, after):
    """True for a BatchNormalization followed by a plain ReLU (a ReLU or Activation("relu") layer)."""
    return (isinstance(batchnorm, BatchNormalization) and type(batchnorm).forward is BatchNormalization.forward
            and isinstance(after, Activation) and type(after).forward is Activation.forward and after.activation.name == "relu")


class LayerOp(Op):
    """Any other layer: its own textbook passes. For a second half, on a shallow copy of the
    layer (the same weights, its own caches and `grads`)."""

    def __init__(self, layer, grads):
        super().__init__(layer if grads is layer.grads else copy.copy(layer), grads)
        self.layer.grads = grads

    def forward(self, x, training=False):
        y = self.layer.forward(x, training)
        self.logits = self.layer.logits if self.outputs_softmax else None
        return y

    def backward(self, grad_out):
        return self.layer.backward(grad_out)

    def backward_from_logits(self, grad_logits):
        return self.layer.backward_from_logits(grad_logits)


class RandomLayerOp(LayerOp):
    """A layer that draws random numbers in training (Dropout, the augmentation layers): its own
    textbook passes, on random numbers drawn for the whole batch. For a step in two halves the
    engine sets `drawn` to this half's rows of layer.draw(batch size), drawn once, in the
    layers' order, as one pass over the batch would draw them; with drawn None the layer draws."""
    drawn = None

    def forward(self, x, training=False):
        if not training or self.drawn is None:
            return super().forward(x, training)
        return self.layer.apply(self.layer._check_input(x), self.drawn)


_OPS = {Conv2D: ConvOp, MaxPooling2D: PoolOp, Flatten: FlattenOp, Dense: DenseOp}


def make_plan(layers, grads):
    """The ops that run `layers` (built), with each layer's gradients in grads[i] (a list
    like layers[i].grads). A Conv2D(relu) -> MaxPooling2D(2) pair, unless it ends the model,
    becomes one ConvReluPoolOp; a BatchNormalization -> ReLU pair one BatchNormOp."""
    plan, i = [], 0
    while i < len(layers):
        layer = layers[i]
        if i + 2 < len(layers) and fuses_with_pool(layer, layers[i + 1]):
            plan.append(ConvReluPoolOp(layer, layers[i + 1], grads[i]))
            i += 2
            continue
        if i + 2 < len(layers) and fuses_with_relu(layer, layers[i + 1]):
            plan.append(BatchNormOp(layer, grads[i], relu=True))
            i += 2
            continue
        if isinstance(layer, BatchNormalization) and type(layer).forward is BatchNormalization.forward:
            plan.append(BatchNormOp(layer, grads[i]))
        elif getattr(layer, "draws_random_numbers", False):
            plan.append(RandomLayerOp(layer, grads[i]))
        elif type(layer) in _OPS:
            plan.append(_OPS[type(layer)](layer, grads[i]))
        elif isinstance(layer, Activation) and type(layer).forward is Activation.forward:
            plan.append(ActivationOp(layer, grads[i]))
        else:
            plan.append(LayerOp(layer, grads[i]))
        i += 1
    return plan
