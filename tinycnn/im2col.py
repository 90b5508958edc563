"""im2col and col2im: how a convolution becomes one matrix product, and back.

A convolution slides a (KH, KW, C) kernel over the image and, at each output pixel, takes a
dot product between the kernel and the patch of the image under it. If we copy every patch
into a row of a matrix, all those dot products become one matrix product:

    x (N, H, W, C)  --im2col-->  cols (N*OH*OW, KH*KW*C)    one row per output pixel
    kernel (KH, KW, C, F)  --reshape-->  W2 (KH*KW*C, F)     (no transpose: Keras's layout)
    z = cols @ W2  (N*OH*OW, F)  --reshape-->  (N, OH, OW, F)

A row's columns run over (kernel row i, kernel column j, channel c) in that order, the same
order as the kernel's first three axes, which is why the reshape of the kernel lines up.

col2im is im2col's adjoint (its transpose): it adds every row of a gradient dcols back onto
the pixels that row was copied from. A pixel that sits in several patches (3x3 kernels put
most pixels in 9) gets the sum of their gradients, which is exactly the chain rule for a
value that was used several times.

Padding: `pad_top` zero rows above and `pad_left` zero columns on the left; the output size
(OH, OW) decides how many the bottom and right get. `output_size` gives TensorFlow's rule.
"""
import numpy as np


def output_size(size, kernel, stride, padding):
    """Output length and (before, after) padding along one axis, as TensorFlow computes them.

    "valid": out = floor((size - kernel) / stride) + 1, no padding (0 if kernel > size).
    "same":  out = ceil(size / stride); total padding max((out-1)*stride + kernel - size, 0),
             split with the odd pixel at the end (bottom/right).
    """
    if padding == "valid":
        out = (size - kernel) // stride + 1 if size >= kernel else 0
        return out, (0, 0)
    if padding == "same":
        out = -(-size // stride)
        total = max((out - 1) * stride + kernel - size, 0)
        return out, (total // 2, total - total // 2)
    raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")


def _padding_after(size, kernel, stride, pad_before, out):
    """Zero rows (or columns) needed after the image so that `out` windows fit."""
    return max((out - 1) * stride + kernel - size - pad_before, 0)


def im2col(x, kh, kw, sh, sw, pad_top, pad_left, out_h, out_w):
    """Image patches -> rows of a matrix.

    x: (N, H, W, C). Returns cols (N*OH*OW, KH*KW*C), where row (n, oy, ox) holds the patch
    x_padded[n, oy*sh : oy*sh + KH, ox*sw : ox*sw + KW, :], flattened in (i, j, c) order.

    Rather than loop over the N*OH*OW patches, loop over the KH*KW kernel positions: for
    position (i, j), the pixel each patch takes there is one strided slice of the image.
    """
    n, h, w, c = x.shape
    pad_bottom = _padding_after(h, kh, sh, pad_top, out_h)
    pad_right = _padding_after(w, kw, sw, pad_left, out_w)
    x_padded = np.pad(x, ((0, 0), (pad_top, pad_bottom), (pad_left, pad_right), (0, 0)))
    cols = np.empty((n, out_h, out_w, kh, kw, c), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            # every patch's pixel at kernel position (i, j): rows i, i+sh, ...; columns j, j+sw, ...
            cols[:, :, :, i, j, :] = x_padded[:, i:i + sh * (out_h - 1) + 1:sh, j:j + sw * (out_w - 1) + 1:sw, :]
    return cols.reshape(n * out_h * out_w, kh * kw * c)


def col2im(dcols, x_shape, kh, kw, sh, sw, pad_top, pad_left, out_h, out_w):
    """Rows of a gradient -> the image's gradient: im2col's adjoint.

    dcols: (N*OH*OW, KH*KW*C), dL/dcols. Returns dx (N, H, W, C) = x_shape, where each
    dx[n, y, x, c] is the sum of dcols over every place im2col copied x[n, y, x, c] to.
    What lands on the padding is dropped (the padding is a constant, not an input).
    """
    n, h, w, c = x_shape
    pad_bottom = _padding_after(h, kh, sh, pad_top, out_h)
    pad_right = _padding_after(w, kw, sw, pad_left, out_w)
    dx_padded = np.zeros((n, h + pad_top + pad_bottom, w + pad_left + pad_right, c), dtype=dcols.dtype)
    patches = dcols.reshape(n, out_h, out_w, kh, kw, c)
    for i in range(kh):
        for j in range(kw):
            # += , not =: overlapping patches all add their share to the same pixel
            dx_padded[:, i:i + sh * (out_h - 1) + 1:sh, j:j + sw * (out_w - 1) + 1:sw, :] += patches[:, :, :, i, j, :]
    return dx_padded[:, pad_top:pad_top + h, pad_left:pad_left + w, :].copy()
