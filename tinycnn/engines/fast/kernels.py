"""The fast engine's kernels: numba loops (im2col/col2im, Winograd's transforms, max
pooling, bias + ReLU, the bias gradient, the softmax cross-entropy, the optimizer updates)
and the matrix products cut to OpenBLAS's liking, each with a plain-NumPy twin.

The fast engine's ops (ops.py) call these kernels for the loops that NumPy cannot
vectorise well, and `matmul` for their matrix products; the textbook layers in
`tinycnn.layers` stay plain NumPy and never call them. Every kernel `foo` has a twin
`foo_numpy` that does the same job with NumPy only; the tests compare the two on random
shapes, so a learner can read the twin to understand what the fast version computes.

Layout conventions (as Keras, "channels_last"):
    images   x  (N, H, W, C)        N = batch, H x W pixels, C channels
    columns  cols (N*OH*OW, KH*KW*C) one row per output pixel, one column per
                                     (kernel row i, kernel column j, channel c),
                                     in that order, so that
                                     cols @ kernel.reshape(KH*KW*C, F)
                                     is the convolution with a Keras kernel (KH, KW, C, F).
Padding is given by the number of zero rows on top (`pad_top`) and zero columns on the
left (`pad_left`); the output size (OH, OW) fixes how much padding the bottom/right get.

Outputs: a kernel that makes a big array takes an optional `out=` (the array to write
into, of the right shape and dtype, C-contiguous) and returns it; without it, it makes a
new one (what the ops mostly do: see `keep_freed_memory` for why that is fast).

Threads: the kernels are single-threaded on purpose, and so deterministic (every sum
is done in a fixed order). The batch loops could be numba `prange`s (each image is
written by one thread only), but each parallel region must wake its threads, and on a
small shared machine that costs more than the loop it shares (benchmarks/README.md,
"Where the fast engine's thresholds come from"). The same wake-up cost hits OpenBLAS's
threads on a busy machine. Instead, tinycnn.engines.fast.parallel cuts each batch in two
halves and runs them in two threads; the kernels release the GIL for that (nogil).

Numba caches the compiled machine code next to this file (or in NUMBA_CACHE_DIR).
If no cache directory is writable (a read-only install), the kernels are compiled
without a cache at every start instead of failing.
"""
import ctypes
import sys
import warnings

import numba
import numpy as np

from tinycnn.engines.fast import tuning
from tinycnn.im2col import output_size


def _jit(**options):
    """`numba.njit(cache=True, nogil=True, **options)`, falling back to no cache where numba cannot write one.

    nogil: the compiled kernels release Python's GIL, so that two threads can run them at
    the same time (tinycnn.engines.fast.parallel runs the two halves of a batch side by side).
    """
    def decorate(func):
        try:
            return numba.njit(cache=True, nogil=True, **options)(func)
        except RuntimeError as err:          # "cannot cache function ...: no locator available"
            warnings.warn(f"tinycnn.engines.fast.kernels: numba cannot cache compiled code ({err}); "
                          "compiling without a cache (slower start). Set NUMBA_CACHE_DIR "
                          "to a writable directory to fix this.", RuntimeWarning, stacklevel=2)
            return numba.njit(cache=False, nogil=True, **options)(func)
    return decorate


# ---------------------------------------------------------------------------
# Memory: keep freed arrays in the process, so the next step's arrays need no page faults
# ---------------------------------------------------------------------------
# A training step makes the same multi-megabyte arrays again and again (patches, outputs,
# gradients). glibc's malloc adapts its thresholds to the largest block freed so far and
# gives the top of its heap back to the system once more than twice that is free: with
# arrays of a few megabytes that can happen at every step, and every fresh page then costs
# a page fault. Buffers kept per op would avoid the faults but are slower than fresh
# arrays, because malloc hands back the block freed last, which is still in the cache. So
# blocks under MMAP_THRESHOLD come from the heap, and the heap keeps up to TRIM_THRESHOLD
# of freed memory (benchmarks/README.md, "Where the fast engine's thresholds come from").
MMAP_THRESHOLD = 32 * 2 ** 20          # glibc's largest allowed value on 64-bit systems
TRIM_THRESHOLD = 64 * 2 ** 20


def keep_freed_memory():
    """Tell glibc's malloc to keep freed blocks under 32 MB in the heap. True if it could (Linux, glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3        # from glibc's <malloc.h>
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


MALLOC_KEEPS_FREED_MEMORY = keep_freed_memory()


# ---------------------------------------------------------------------------
# Output sizes and padding (TensorFlow's rule): the textbook's, tinycnn/im2col.py
# ---------------------------------------------------------------------------
conv_output_size = output_size


# ---------------------------------------------------------------------------
# im2col: image patches -> rows of a matrix
# ---------------------------------------------------------------------------
@_jit()
def im2col(x, kh, kw, sh, sw, pad_top, pad_left, out_h, out_w, out=None):
    """Patches of x as rows: cols[(n*OH + oy)*OW + ox, (i*KW + j)*C + c] = x[n, oy*sh-pad_top+i, ox*sw-pad_left+j, c].

    x (N, H, W, C) -> cols (N*OH*OW, KH*KW*C); pixels outside the image read as 0.
    For a fixed kernel row i, the KW*C values of a patch are contiguous both in x and in
    cols, so the common case (the patch row lies inside the image) is one straight copy.
    (Indexing the innermost loop with the bare loop counter lets numba vectorise it.)
    """
    n, h, w, c = x.shape
    cols = np.empty((n * out_h * out_w, kh * kw * c), dtype=x.dtype) if out is None else out
    if c == 1 and kh == kw == 3 and pad_top == pad_left == 0 and (out_h - 1) * sh + 3 <= h \
            and (out_w - 1) * sw + 3 <= w:
        return _im2col_3x3_one_channel(x, sh, sw, out_h, out_w, cols)   # the notebook's first conv
    if c == 1:                                       # runs of KW values are too short to pay:
        return _im2col_one_channel(x, kh, kw, sh, sw, pad_top, pad_left, out_h, out_w, cols)
    run = kw * c                                     # one patch row: KW pixels x C channels
    x_rows = x.reshape(n, h, w * c)                  # an image row = W*C contiguous values
    patches = cols.reshape(n * out_h * out_w, kh, run)
    for b in range(n):
        for oy in range(out_h):
            for ox in range(out_w):
                row = (b * out_h + oy) * out_w + ox
                x0 = ox * sw - pad_left              # first image column of the patch
                for i in range(kh):
                    yy = oy * sh - pad_top + i
                    out = patches[row, i]
                    if yy < 0 or yy >= h:            # a padding row
                        for t in range(run):
                            out[t] = 0
                    elif x0 >= 0 and x0 + kw <= w:   # inside the image: copy KW*C values
                        src = x_rows[b, yy, x0 * c:x0 * c + run]
                        for t in range(run):
                            out[t] = src[t]
                    else:                            # straddles the left/right padding
                        for j in range(kw):
                            xx = x0 + j
                            for ch in range(c):
                                out[j * c + ch] = x[b, yy, xx, ch] if 0 <= xx < w else 0
    return cols


@_jit()
def _im2col_one_channel(x, kh, kw, sh, sw, pad_top, pad_left, out_h, out_w, cols):
    """im2col for C = 1 (a grey image): column (i, j) of a row of outputs, one image row at a time.

    Same result as im2col; for one channel a run of KW values is too short for a copy to
    pay, so the output columns are the innermost loop (as in the NumPy twin).
    """
    n, h, w, _ = x.shape
    blocks = cols.reshape(n, out_h, out_w, kh * kw)
    for b in range(n):
        for oy in range(out_h):
            block = blocks[b, oy]                    # (OW, KH*KW): the patches of output row oy
            for i in range(kh):
                yy = oy * sh - pad_top + i
                for j in range(kw):
                    k = i * kw + j
                    if yy < 0 or yy >= h:            # a padding row
                        for ox in range(out_w):
                            block[ox, k] = 0
                        continue
                    line = x[b, yy, :, 0]            # (W,) the image row
                    for ox in range(out_w):
                        xx = ox * sw - pad_left + j
                        block[ox, k] = line[xx] if 0 <= xx < w else 0
    return cols


@_jit()
def _im2col_3x3_one_channel(x, sh, sw, out_h, out_w, cols):
    """im2col for a 3x3 kernel on one channel with every patch inside the image (no padding).

    Same result as im2col; a patch's nine values written one after the other from three
    image rows, with no loop over the kernel (numba cannot unroll one whose size it does
    not know), which is faster than _im2col_one_channel's loops.
    """
    n = x.shape[0]
    patches = cols.reshape(n, out_h, out_w, 9)
    for b in range(n):
        image = x[b, :, :, 0]                        # (H, W)
        for oy in range(out_h):
            top, middle, bottom = image[oy * sh], image[oy * sh + 1], image[oy * sh + 2]
            row = patches[b, oy]                     # (OW, 9): the patches of output row oy
            for ox in range(out_w):
                j = ox * sw
                row[ox, 0], row[ox, 1], row[ox, 2] = top[j], top[j + 1], top[j + 2]
                row[ox, 3], row[ox, 4], row[ox, 5] = middle[j], middle[j + 1], middle[j + 2]
                row[ox, 6], row[ox, 7], row[ox, 8] = bottom[j], bottom[j + 1], bottom[j + 2]
    return cols


def im2col_numpy(x, kh, kw, sh, sw, pad_top, pad_left, out_h, out_w, out=None):
    """NumPy twin of `im2col`: pad, then copy one strided slice per kernel position (i, j)."""
    n, h, w, c = x.shape
    pad_bottom = max((out_h - 1) * sh + kh - h - pad_top, 0)
    pad_right = max((out_w - 1) * sw + kw - w - pad_left, 0)
    xp = np.pad(x, ((0, 0), (pad_top, pad_bottom), (pad_left, pad_right), (0, 0)))
    cols = np.empty((n, out_h, out_w, kh, kw, c), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, :, i, j, :] = xp[:, i:i + sh * (out_h - 1) + 1:sh, j:j + sw * (out_w - 1) + 1:sw, :]
    return _into(out, cols.reshape(n * out_h * out_w, kh * kw * c))


def _into(out, result):
    """The twins' out=: copy result into out (and return out), or return result as it is."""
    if out is None:
        return result
    out[...] = result
    return out


# ---------------------------------------------------------------------------
# col2im: the adjoint of im2col (adds each row back onto the pixels it came from)
# ---------------------------------------------------------------------------
@_jit()
def col2im(dcols, n, h, w, c, kh, kw, sh, sw, pad_top, pad_left, out_h, out_w, out=None):
    """dx[n, y, x, c] = sum of dcols over every (row, column) that im2col copied from x[n, y, x, c].

    dcols (N*OH*OW, KH*KW*C) -> dx (N, H, W, C). Entries that came from padding are dropped.
    The same contiguous runs as in im2col, added instead of copied.
    """
    run = kw * c
    dx = np.empty((n, h, w, c), dtype=dcols.dtype) if out is None else out
    dx.fill(0)
    dx_rows = dx.reshape(n, h, w * c)
    patches = dcols.reshape(n * out_h * out_w, kh, run)
    for b in range(n):
        for oy in range(out_h):
            for ox in range(out_w):
                row = (b * out_h + oy) * out_w + ox
                x0 = ox * sw - pad_left
                for i in range(kh):
                    yy = oy * sh - pad_top + i
                    if yy < 0 or yy >= h:            # a padding row: nothing to give back
                        continue
                    src = patches[row, i]
                    if x0 >= 0 and x0 + kw <= w:
                        dst = dx_rows[b, yy, x0 * c:x0 * c + run]
                        for t in range(run):
                            dst[t] += src[t]
                    else:
                        for j in range(kw):
                            xx = x0 + j
                            if 0 <= xx < w:
                                for ch in range(c):
                                    dx[b, yy, xx, ch] += src[j * c + ch]
    return dx


def col2im_numpy(dcols, n, h, w, c, kh, kw, sh, sw, pad_top, pad_left, out_h, out_w, out=None):
    """NumPy twin of `col2im`: add one strided slice per kernel position into a padded image, then crop."""
    pad_bottom = max((out_h - 1) * sh + kh - h - pad_top, 0)
    pad_right = max((out_w - 1) * sw + kw - w - pad_left, 0)
    dxp = np.zeros((n, h + pad_top + pad_bottom, w + pad_left + pad_right, c), dtype=dcols.dtype)
    d6 = dcols.reshape(n, out_h, out_w, kh, kw, c)
    for i in range(kh):
        for j in range(kw):
            dxp[:, i:i + sh * (out_h - 1) + 1:sh, j:j + sw * (out_w - 1) + 1:sw, :] += d6[:, :, :, i, j, :]
    return _into(out, dxp[:, pad_top:pad_top + h, pad_left:pad_left + w, :].copy())


# ---------------------------------------------------------------------------
# Matrix products, cut into the pieces OpenBLAS computes fastest
# ---------------------------------------------------------------------------
# A batch of 16-32 images makes matrix products of odd shapes: tall and thin (a first conv
# layer: cols (N*OH*OW, 9) @ W2 (9, F)) or short and wide (a Dense layer: x (16, 5408) @
# kernel (5408, 100)). OpenBLAS's AVX-512 ("SkylakeX") kernels, which NumPy's wheels pick
# on an AVX-512 CPU, compute a float32 product of at most 100^3 multiply-adds
# (SMALL_PRODUCT) with a direct kernel (no packing of the operands), and bigger ones with
# packing, which for these shapes costs more than the arithmetic. So `matmul` cuts a
# product into pieces under that size where it can: blocks of rows (a first conv's
# cols @ W2, a Dense layer's x.T @ dZ) or blocks of the sum (a first conv's cols.T @ dZ, a
# Dense layer's x @ kernel).
# A third case is a product with a transposed big matrix, dZ (16, 100) @ kernel.T (100, 5408),
# a Dense layer's dL/dx: OpenBLAS packs the transposed kernel slowly, so computing
# (kernel @ dZ.T).T instead, then copying the (16, 5408) result into place, is faster while
# a has few rows: up to 32 (`_transposed_is_faster`); with more it is slower. (Each case's
# timings: benchmarks/README.md, "Where the fast engine's thresholds come from".)
# Other machines differ: with OpenBLAS's AVX2 ("Haswell") kernels on a Zen 3 all three cuts
# of a Dense layer's products were slower than np.matmul. So each way of cutting is used
# only where it has been measured to pay on this machine (`cut_pays`, tinycnn.engines.fast.tuning):
# the first product that would be cut that way times the cut against np.matmul on
# cnn_categorical's products of that kind (CUT_SAMPLES), once per machine.
SMALL_PRODUCT = 100 ** 3        # multiply-adds of the biggest product OpenBLAS does directly
MIN_BLOCK_ROWS = 256            # smaller blocks of rows cost more in calls than they save
MIN_BLOCK_INNER = 128           # the same for blocks of the inner dimension (the sum)


def _transposed_is_faster(a, b):
    """For a @ b with b a transposed C array (b.T C-contiguous) and few rows in a: compute (b.T @ a.T).T."""
    m = a.shape[0]
    return (b.flags.f_contiguous and not b.flags.c_contiguous
            and (m <= 16 and b.size >= 16_384 or m <= 32 and b.size >= 65_536))


def cut_for(a, b):
    """The way matmul would cut a @ b (2-D, K > 1) where cuts pay: "transposed", "rows",
    "inner", or None (one product)."""
    m, k = a.shape
    n = b.shape[1]
    if _transposed_is_faster(a, b):
        return "transposed"
    if MIN_BLOCK_ROWS <= SMALL_PRODUCT // (k * n) < m:
        return "rows"
    if MIN_BLOCK_INNER <= SMALL_PRODUCT // (m * n) < k:
        return "inner"
    return None


def _transposed(a, b, out):
    out[...] = (b.T @ a.T).T
    return out


def _in_blocks_of_rows(a, b, out):
    rows = SMALL_PRODUCT // (a.shape[1] * b.shape[1])
    for start in range(0, a.shape[0], rows):
        np.matmul(a[start:start + rows], b, out=out[start:start + rows])
    return out


def _in_blocks_of_the_sum(a, b, out):
    inner = SMALL_PRODUCT // (a.shape[0] * b.shape[1])
    np.matmul(a[:, :inner], b[:inner], out=out)
    for start in range(inner, a.shape[1], inner):
        out += a[:, start:start + inner] @ b[start:start + inner]
    return out


CUTS = {"transposed": _transposed, "rows": _in_blocks_of_rows, "inner": _in_blocks_of_the_sum}


def cut_pays(way):
    """True if cutting products `way` (a key of CUTS) beats np.matmul on this machine
    (measured once per machine: `measure_cut`; np.matmul where tuning is off)."""
    return tuning.choice(f"matmul_cut_{way}")


def matmul(a, b, out=None):
    """a @ b for 2-D arrays a (M, K), b (K, N) -> out (M, N), cut into small products (see
    above) where that pays on this machine (`cut_pays`):

    - K*N small: blocks of rows of a, each product written straight into its rows of out;
    - else M*N small: blocks of the inner dimension K, the block products added in order;
    - b a transposed matrix and M <= 32: (b.T @ a.T).T, copied into out;
    - K = 1: the outer product, a * b.
    Each way gives np.matmul's result up to float rounding (OpenBLAS's kernels round
    differently), and the cuts depend only on the shapes and on the machine's choices (made
    once per process), so a product gives the same bits at every call.
    `out`, if given, must be C-contiguous (M, N) of the result's dtype.
    Stacks of matrices, a (P, M, K) and b (P, K, N) -> (P, M, N), go one product at a time,
    each cut as above.
    """
    if a.ndim == 3:
        out = np.empty((a.shape[0], a.shape[1], b.shape[2]), dtype=np.result_type(a, b)) if out is None else out
        for p in range(a.shape[0]):
            matmul(a[p], b[p], out=out[p])
        return out
    if out is None:
        out = np.empty((a.shape[0], b.shape[1]), dtype=np.result_type(a, b))
    if a.shape[1] == 1:         # an outer product (a batch of one's dW): np.matmul does it
        return np.multiply(a, b, out=out)       # without BLAS, slower than this a * b
    way = cut_for(a, b)
    if way is not None and cut_pays(way):
        return CUTS[way](a, b, out)
    return np.matmul(a, b, out=out)


# The products each way is measured on: cnn_categorical's in halves of 16 images (its first
# conv's im2col columns (10816, 9), 32 filters; its Dense layer 5408 -> 100), float32.
# (a's shape, b's shape, b given transposed)
CUT_SAMPLES = {
    "rows": [((5408, 16), (16, 100), False),         # the Dense layer's dW = x.T @ dZ
             ((10816, 9), (9, 32), False)],          # the conv's forward, cols @ W
    "inner": [((16, 5408), (5408, 100), False),      # the Dense layer's forward, x @ W
              ((9, 10816), (10816, 32), False)],     # the conv's dW = cols.T @ dZ
    "transposed": [((16, 100), (100, 5408), True)],  # the Dense layer's dL/dx = dZ @ W.T
}


def measure_cut(way, rounds=9, calls=5):
    """True if the `way` cut of CUT_SAMPLES's products takes less time than np.matmul of them.

    One BLAS thread (as the engine runs them). Each round times `calls` calls of each
    product both ways, in alternating order; the medians of the rounds are compared, summed
    over the samples. About 0.1 s.
    """
    from tinycnn.engines.fast import parallel
    rng = np.random.default_rng(0)
    totals = {"cut": 0.0, "plain": 0.0}
    with parallel.blas_threads(1):
        for a_shape, b_shape, transposed in CUT_SAMPLES[way]:
            a = rng.standard_normal(a_shape, dtype=np.float32)
            b = rng.standard_normal(b_shape[::-1], dtype=np.float32).T if transposed else \
                rng.standard_normal(b_shape, dtype=np.float32)
            out = np.empty((a_shape[0], b_shape[1]), np.float32)
            assert cut_for(a, b) == way, (way, a_shape, b_shape)
            medians = tuning.median_times({"cut": lambda: CUTS[way](a, b, out),
                                           "plain": lambda: np.matmul(a, b, out=out)}, rounds, calls)
            for name in totals:
                totals[name] += medians[name]
    return totals["cut"] < totals["plain"]


for _way in CUTS:
    tuning.register(f"matmul_cut_{_way}", lambda way=_way: measure_cut(way), default=False)


def matmul_numpy(a, b, out=None):
    """NumPy twin of `matmul`: one product."""
    return np.matmul(a, b, out=out)


# ---------------------------------------------------------------------------
# Winograd's 3x3 convolution: each 2x2 block of outputs from 16 products, not 36
# ---------------------------------------------------------------------------
# Winograd's minimal filtering F(2, 3) computes two outputs of a 3-tap correlation,
#     y0 = d0 g0 + d1 g1 + d2 g2,   y1 = d1 g0 + d2 g1 + d3 g2,
# from four inputs with four products instead of six (Lavin & Gray 2015):
#     m0 = (d0 - d2) g0,   m1 = (d1 + d2) (g0 + g1 + g2)/2,
#     m2 = (d2 - d1) (g0 - g1 + g2)/2,   m3 = (d1 - d3) g2,
#     y0 = m0 + m1 + m2,   y1 = m1 - m2 - m3.
# In matrix form y = A^T [(G g) * (B^T d)], and nested in two dimensions, a 2x2 block of
# outputs from a 4x4 tile d of the input and the 3x3 kernel g is
#     Y = A^T [ (G g G^T) * (B^T d B) ] A        (* elementwise: 16 products for 4 outputs).
# Over channels, the 16 elementwise products become 16 matrix products: with
#     V[p] (tiles, C) = (B^T d B)[p] of every tile and channel     (winograd_input)
#     U[p] (C, F)     = (G g G^T)[p] of every kernel slice          (winograd_kernel)
# M[p] = V[p] @ U[p] sums over the channels, and Y = A^T M A gives every tile's outputs
# (winograd_output). That is 16 * C * F multiply-adds per 2x2 outputs against 36 * C * F
# for im2col: cnn_sparse's second conv (13x13x64 -> 11x11x64, 6x6 tiles) needs 2.4 instead
# of 4.5 million per image. The transforms only add and subtract (and halve exactly), so
# float32 rounding stays that of the plain product (tests/test_kernels.py checks it
# against float64). The transforms cost less than the multiply-adds they save, so the
# whole convolution is faster too (benchmarks/README.md, "Where the fast engine's
# thresholds come from").
# ops.ConvOp uses it where `winograd_fits`: z = winograd_output(V @ U), V and U from
# winograd_input and winograd_kernel.
WINOGRAD_BT = np.array([[1, 0, -1, 0],      # B^T (4, 4): input tile -> transformed tile
                        [0, 1, 1, 0],
                        [0, -1, 1, 0],
                        [0, 1, 0, -1]], dtype=np.float64)
WINOGRAD_G = np.array([[1, 0, 0],           # G (4, 3): kernel -> transformed kernel
                       [0.5, 0.5, 0.5],
                       [0.5, -0.5, 0.5],
                       [0, 0, 1]], dtype=np.float64)
WINOGRAD_AT = np.array([[1, 1, 1, 0],       # A^T (2, 4): products -> 2 outputs
                        [0, 1, -1, -1]], dtype=np.float64)
WINOGRAD_G_KRON_G = np.kron(WINOGRAD_G, WINOGRAD_G)     # (16, 9): G g G^T for a flattened g
# Below 16 channels the transforms cost more than the products they save (a grey image's
# first conv, C = 1, is a (N*OH*OW, 9) @ (9, F) product that Winograd cannot shorten).
WINOGRAD_MIN_CHANNELS = 16


def winograd_fits(kernel_size, strides, in_channels):
    """True when a Conv2D's op (ops.ConvOp) should take Winograd's way: a 3x3 kernel, stride 1,
    WINOGRAD_MIN_CHANNELS (16) channels or more."""
    return tuple(kernel_size) == (3, 3) and tuple(strides) == (1, 1) and in_channels >= WINOGRAD_MIN_CHANNELS


def winograd_tiles(out_h, out_w):
    """(TH, TW): 2x2 output blocks down and across, ceil(OH/2) x ceil(OW/2); the last ones may hang over."""
    return (out_h + 1) // 2, (out_w + 1) // 2


def winograd_kernel(kernel):
    """U (16, C, F), U[4a + b] = (G g G^T)[a, b] for each kernel slice g = kernel[:, :, c, f].

    kernel (3, 3, C, F). The 16 sums sum_ij G[a, i] g[i, j] G[b, j] for all (c, f) at once:
    one product with the Kronecker product G (x) G (16, 9) and the kernel as (9, C*F).
    (Plain NumPy: it is one small product, done once per forward pass.)
    """
    _, _, c, f = kernel.shape
    g_kron_g = WINOGRAD_G_KRON_G.astype(kernel.dtype, copy=False)         # (16, 9)
    return (g_kron_g @ kernel.reshape(9, c * f)).reshape(16, c, f)


@_jit()
def winograd_input(x, pad_top, pad_left, tiles_h, tiles_w, out=None):
    """V[4a + b, (n*TH + ty)*TW + tx, c] = (B^T d B)[a, b], d = the 4x4 input tile of output block (ty, tx).

    x (N, H, W, C) C-contiguous -> V (16, N*TH*TW, C). Tile (ty, tx) covers rows
    2ty - pad_top ... + 3 and columns 2tx - pad_left ... + 3; pixels outside x read as 0.
    B^T d applies to the tile's rows, then B to its columns, with the rule of B^T's rows:
        (d0 - d2, d1 + d2, d2 - d1, d1 - d3).
    The row step runs over a whole strip of tiles at once (an image row is W*C contiguous
    values, and neighbouring tiles share two columns); the column step reads the strip.
    Every inner loop indexes with its bare loop counter, which lets numba vectorise it (with
    offsets computed inside the index it does not).
    """
    n, h, w, c = x.shape
    v = np.empty((16, n * tiles_h * tiles_w, c), dtype=x.dtype) if out is None else out
    width = 2 * tiles_w + 2                            # columns the strip's tiles cover
    strip = np.zeros((4, width * c), dtype=x.dtype)    # B^T d for the strip; padding stays 0
    zero_row = np.zeros(w * c, dtype=x.dtype)
    used = min(w, width - pad_left) * c                # the image's values a strip row takes
    first, last = pad_left * c, pad_left * c + used    # where they go in it
    tile = 0
    for b in range(n):
        image = x[b].reshape(h, w * c)
        for ty in range(tiles_h):
            y0 = 2 * ty - pad_top
            d0 = image[y0] if 0 <= y0 < h else zero_row
            d1 = image[y0 + 1] if 0 <= y0 + 1 < h else zero_row
            d2 = image[y0 + 2] if 0 <= y0 + 2 < h else zero_row
            d3 = image[y0 + 3] if 0 <= y0 + 3 < h else zero_row
            e0, e1, e2, e3 = (strip[0, first:last], strip[1, first:last],
                              strip[2, first:last], strip[3, first:last])
            for t in range(used):                       # B^T d: rows
                e0[t] = d0[t] - d2[t]
            for t in range(used):
                e1[t] = d1[t] + d2[t]
            for t in range(used):
                e2[t] = d2[t] - d1[t]
            for t in range(used):
                e3[t] = d1[t] - d3[t]
            for a in range(4):                          # (B^T d) B: columns 2tx ... 2tx+3 of each tile
                e = strip[a].reshape(width, c)
                v0 = v[4 * a, tile:tile + tiles_w]       # (TW, C) each
                v1 = v[4 * a + 1, tile:tile + tiles_w]
                v2 = v[4 * a + 2, tile:tile + tiles_w]
                v3 = v[4 * a + 3, tile:tile + tiles_w]
                for tx in range(tiles_w):
                    for ch in range(c):
                        v0[tx, ch] = e[2 * tx, ch] - e[2 * tx + 2, ch]
                for tx in range(tiles_w):
                    for ch in range(c):
                        v1[tx, ch] = e[2 * tx + 1, ch] + e[2 * tx + 2, ch]
                for tx in range(tiles_w):
                    for ch in range(c):
                        v2[tx, ch] = e[2 * tx + 2, ch] - e[2 * tx + 1, ch]
                for tx in range(tiles_w):
                    for ch in range(c):
                        v3[tx, ch] = e[2 * tx + 1, ch] - e[2 * tx + 3, ch]
            tile += tiles_w
    return v


def winograd_input_numpy(x, pad_top, pad_left, tiles_h, tiles_w, out=None):
    """NumPy twin of `winograd_input`: cut the padded image into 4x4 tiles, then B^T d B with einsum."""
    n, h, w, c = x.shape
    padded = np.zeros((n, 2 * tiles_h + 2, 2 * tiles_w + 2, c), dtype=x.dtype)
    rows, cols = min(h, padded.shape[1] - pad_top), min(w, padded.shape[2] - pad_left)
    padded[:, pad_top:pad_top + rows, pad_left:pad_left + cols] = x[:, :rows, :cols]
    tiles = np.empty((n, tiles_h, tiles_w, 4, 4, c), dtype=x.dtype)
    for i in range(4):
        for j in range(4):
            tiles[:, :, :, i, j] = padded[:, i:i + 2 * tiles_h:2, j:j + 2 * tiles_w:2]
    bt = WINOGRAD_BT.astype(x.dtype)
    v = np.einsum("ai,nyxijc,bj->abnyxc", bt, tiles, bt)        # B^T d B for every tile and channel
    return _into(out, v.reshape(16, n * tiles_h * tiles_w, c))


@_jit()
def winograd_output(m, n, out_h, out_w, tiles_h, tiles_w, out=None):
    """z[n, 2ty + r, 2tx + s, f] = (A^T M A)[r, s] for tile (ty, tx); blocks hanging over z's edge are cut.

    m (16, N*TH*TW, F), the products M[4a + b] = V[4a + b] @ U[4a + b] -> z (N, OH, OW, F),
    the convolution without bias. A^T's rows: (m0 + m1 + m2, m1 - m2 - m3), first over a
    (the tile's rows), then over b (its columns).
    """
    f = m.shape[2]
    z = np.empty((n, out_h, out_w, f), dtype=m.dtype) if out is None else out
    rows = np.empty((2, 4, tiles_w, f), dtype=m.dtype)     # A^T M for one strip of tiles
    even_cols, odd_cols = (out_w + 1) // 2, out_w // 2    # output columns 2tx and 2tx + 1
    tile = 0
    for b in range(n):
        for ty in range(tiles_h):
            for q in range(4):                              # A^T M: rows
                m0 = m[q, tile:tile + tiles_w]
                m1 = m[4 + q, tile:tile + tiles_w]
                m2 = m[8 + q, tile:tile + tiles_w]
                m3 = m[12 + q, tile:tile + tiles_w]
                s0, s1 = rows[0, q], rows[1, q]
                for tx in range(tiles_w):
                    for k in range(f):
                        s0[tx, k] = m0[tx, k] + m1[tx, k] + m2[tx, k]
                for tx in range(tiles_w):
                    for k in range(f):
                        s1[tx, k] = m1[tx, k] - m2[tx, k] - m3[tx, k]
            for r in range(2):                              # (A^T M) A: columns
                oy = 2 * ty + r
                if oy >= out_h:
                    break
                s0, s1, s2, s3 = rows[r, 0], rows[r, 1], rows[r, 2], rows[r, 3]
                line = z[b, oy]                             # (OW, F)
                for tx in range(even_cols):
                    for k in range(f):
                        line[2 * tx, k] = s0[tx, k] + s1[tx, k] + s2[tx, k]
                for tx in range(odd_cols):
                    for k in range(f):
                        line[2 * tx + 1, k] = s1[tx, k] - s2[tx, k] - s3[tx, k]
            tile += tiles_w
    return z


def winograd_output_numpy(m, n, out_h, out_w, tiles_h, tiles_w, out=None):
    """NumPy twin of `winograd_output`: A^T M A with einsum, the 2x2 blocks laid side by side, then cut."""
    f = m.shape[2]
    at = WINOGRAD_AT.astype(m.dtype)
    blocks = np.einsum("ra,abnyxf,sb->nyrxsf", at, m.reshape(4, 4, n, tiles_h, tiles_w, f), at)
    z = blocks.reshape(n, 2 * tiles_h, 2 * tiles_w, f)[:, :out_h, :out_w]
    return _into(out, np.ascontiguousarray(z))


# Training backpropagates through the same steps. Each transform is a linear map, and the
# gradient of a linear map y = T(x) is its transpose (adjoint): dL/dx = T^T(dL/dy). So, with
# dM, dU, dV the gradients of M, U, V:
#     dM[p] = (A dZ A^T)[p] per 2x2 block dZ of dL/dz     (winograd_output_backward)
#     dU[p] = V[p]^T @ dM[p]   (C, F): dL/dkernel = G^T dU G   (winograd_kernel_backward)
#     dV[p] = dM[p] @ U[p]^T   (T, C): dL/dx = B dV B^T per tile, the tiles' overlaps added
#                                      and padding dropped (winograd_input_backward)
# All three products then cost 16 instead of 36 multiply-adds per 2x2 outputs, and no
# patches (im2col) or col2im are needed: V, made again from the forward pass's input,
# serves dL/dkernel.
def winograd_kernel_backward(du):
    """dL/dkernel (3, 3, C, F) from dU = dL/dU (16, C, F): winograd_kernel's transpose, (G (x) G)^T @ dU."""
    _, c, f = du.shape
    g_kron_g = WINOGRAD_G_KRON_G.astype(du.dtype, copy=False)            # (16, 9)
    return (g_kron_g.T @ du.reshape(16, c * f)).reshape(3, 3, c, f)


@_jit()
def winograd_output_backward(dz, tiles_h, tiles_w, out=None):
    """dM (16, N*TH*TW, F) from dL/dz (N, OH, OW, F): the transpose of winograd_output.

    dM[4a + b, tile] = (A dZ A^T)[a, b], dZ the tile's 2x2 block of dz (0 where it hangs over
    z's edge). A = (A^T)^T (4, 2) turns a pair (z0, z1) into (z0, z0 + z1, z0 - z1, -z1);
    it applies to the block's columns, then to its rows.
    """
    n, out_h, out_w, f = dz.shape
    dm = np.empty((16, n * tiles_h * tiles_w, f), dtype=dz.dtype) if out is None else out
    block = np.zeros((2, 2 * tiles_w, f), dtype=dz.dtype)     # the strip's two rows of dz, 0 past its edge
    cols = np.empty((2, 4, tiles_w, f), dtype=dz.dtype)       # dZ A^T for the strip
    tile = 0
    for b in range(n):
        for ty in range(tiles_h):
            for r in range(2):
                oy = 2 * ty + r
                row = block[r]
                if oy < out_h:
                    for col in range(out_w):
                        for k in range(f):
                            row[col, k] = dz[b, oy, col, k]
                else:                                          # past z's bottom edge
                    for col in range(2 * tiles_w):
                        for k in range(f):
                            row[col, k] = 0
                c0, c1, c2, c3 = cols[r, 0], cols[r, 1], cols[r, 2], cols[r, 3]
                for tx in range(tiles_w):                      # dZ A^T: columns
                    for k in range(f):
                        c0[tx, k] = row[2 * tx, k]
                for tx in range(tiles_w):
                    for k in range(f):
                        c1[tx, k] = row[2 * tx, k] + row[2 * tx + 1, k]
                for tx in range(tiles_w):
                    for k in range(f):
                        c2[tx, k] = row[2 * tx, k] - row[2 * tx + 1, k]
                for tx in range(tiles_w):
                    for k in range(f):
                        c3[tx, k] = -row[2 * tx + 1, k]
            for q in range(4):                                 # A (dZ A^T): rows
                top, bottom = cols[0, q], cols[1, q]
                m0 = dm[q, tile:tile + tiles_w]
                m1 = dm[4 + q, tile:tile + tiles_w]
                m2 = dm[8 + q, tile:tile + tiles_w]
                m3 = dm[12 + q, tile:tile + tiles_w]
                for tx in range(tiles_w):
                    for k in range(f):
                        m0[tx, k] = top[tx, k]
                for tx in range(tiles_w):
                    for k in range(f):
                        m1[tx, k] = top[tx, k] + bottom[tx, k]
                for tx in range(tiles_w):
                    for k in range(f):
                        m2[tx, k] = top[tx, k] - bottom[tx, k]
                for tx in range(tiles_w):
                    for k in range(f):
                        m3[tx, k] = -bottom[tx, k]
            tile += tiles_w
    return dm


def winograd_output_backward_numpy(dz, tiles_h, tiles_w, out=None):
    """NumPy twin of `winograd_output_backward`: pad dz to whole blocks, then A dZ A^T with einsum."""
    n, out_h, out_w, f = dz.shape
    padded = np.zeros((n, 2 * tiles_h, 2 * tiles_w, f), dtype=dz.dtype)
    padded[:, :out_h, :out_w] = dz
    a = WINOGRAD_AT.T.astype(dz.dtype)                                  # A (4, 2)
    dm = np.einsum("ar,nyrxsf,bs->abnyxf", a, padded.reshape(n, tiles_h, 2, tiles_w, 2, f), a)
    return _into(out, dm.reshape(16, n * tiles_h * tiles_w, f))


@_jit()
def winograd_input_backward(dv, n, h, w, pad_top, pad_left, tiles_h, tiles_w, out=None):
    """dL/dx (N, H, W, C) from dV (16, N*TH*TW, C): the transpose of winograd_input.

    Each tile's B dV B^T (4, 4, C) is added onto the pixels the tile covers (tiles overlap by
    two rows and two columns); entries that fall on padding are dropped. B = (B^T)^T turns
    (e0, e1, e2, e3) into (e0, e1 - e2 + e3, e1 + e2 - e0, -e3); it applies to the tile's
    columns (a strip of tiles at a time, added into a strip buffer), then to its rows.
    """
    c = dv.shape[2]
    dx = np.empty((n, h, w, c), dtype=dv.dtype) if out is None else out
    dx.fill(0)
    width = 2 * tiles_w + 2
    strip = np.empty((4, width * c), dtype=dv.dtype)        # dV B^T for the strip, columns overlapping
    used = min(w, width - pad_left) * c
    first, last = pad_left * c, pad_left * c + used
    tile = 0
    for b in range(n):
        image = dx[b].reshape(h, w * c)
        for ty in range(tiles_h):
            for a in range(4):                                  # dV B^T: columns, added where tiles overlap
                e = strip[a].reshape(width, c)
                for t in range(width * c):
                    strip[a, t] = 0
                v0 = dv[4 * a, tile:tile + tiles_w]
                v1 = dv[4 * a + 1, tile:tile + tiles_w]
                v2 = dv[4 * a + 2, tile:tile + tiles_w]
                v3 = dv[4 * a + 3, tile:tile + tiles_w]
                for tx in range(tiles_w):
                    for ch in range(c):
                        e[2 * tx, ch] += v0[tx, ch]
                for tx in range(tiles_w):
                    for ch in range(c):
                        e[2 * tx + 1, ch] += v1[tx, ch] - v2[tx, ch] + v3[tx, ch]
                for tx in range(tiles_w):
                    for ch in range(c):
                        e[2 * tx + 2, ch] += v1[tx, ch] + v2[tx, ch] - v0[tx, ch]
                for tx in range(tiles_w):
                    for ch in range(c):
                        e[2 * tx + 3, ch] -= v3[tx, ch]
            e0, e1, e2, e3 = (strip[0, first:last], strip[1, first:last],
                              strip[2, first:last], strip[3, first:last])
            y0 = 2 * ty - pad_top                               # B (dV B^T): rows, onto the image
            if 0 <= y0 < h:
                row = image[y0]
                for t in range(used):
                    row[t] += e0[t]
            if 0 <= y0 + 1 < h:
                row = image[y0 + 1]
                for t in range(used):
                    row[t] += e1[t] - e2[t] + e3[t]
            if 0 <= y0 + 2 < h:
                row = image[y0 + 2]
                for t in range(used):
                    row[t] += e1[t] + e2[t] - e0[t]
            if 0 <= y0 + 3 < h:
                row = image[y0 + 3]
                for t in range(used):
                    row[t] -= e3[t]
            tile += tiles_w
    return dx


def winograd_input_backward_numpy(dv, n, h, w, pad_top, pad_left, tiles_h, tiles_w, out=None):
    """NumPy twin of `winograd_input_backward`: B dV B^T with einsum, the tiles added into a padded image, cropped."""
    c = dv.shape[2]
    bt = WINOGRAD_BT.astype(dv.dtype)
    tiles = np.einsum("ai,abnyxc,bj->nyxijc", bt, dv.reshape(4, 4, n, tiles_h, tiles_w, c), bt)
    padded = np.zeros((n, 2 * tiles_h + 2, 2 * tiles_w + 2, c), dtype=dv.dtype)
    for i in range(4):
        for j in range(4):
            padded[:, i:i + 2 * tiles_h:2, j:j + 2 * tiles_w:2] += tiles[:, :, :, i, j]
    rows, cols = min(h, padded.shape[1] - pad_top), min(w, padded.shape[2] - pad_left)
    dx = np.zeros((n, h, w, c), dtype=dv.dtype)
    dx[:, :rows, :cols] = padded[:, pad_top:pad_top + rows, pad_left:pad_left + cols]
    return _into(out, dx)


# ---------------------------------------------------------------------------
# Max pooling, keeping where each maximum came from
# ---------------------------------------------------------------------------
@_jit()
def maxpool_forward(x, ph, pw, sh, sw, pad_top, pad_left, out_h, out_w, out=None):
    """Max over each (PH, PW) window; padded cells are ignored (never chosen).

    x (N, H, W, C) -> y (N, OH, OW, C) and argmax (N, OH, OW, C) int32, the flat
    position y*W + x of the chosen pixel in its image plane. out: the pair (y, argmax) to fill.
    Ties: the window is scanned row by row, left to right, and only a strictly larger
    value replaces the current best, so the FIRST maximum wins (TensorFlow's rule).
    """
    n, h, w, c = x.shape
    if out is None:
        y, argmax = np.empty((n, out_h, out_w, c), dtype=x.dtype), np.empty((n, out_h, out_w, c), dtype=np.int32)
    else:
        y, argmax = out
    if ph == pw == sh == sw == 2 and pad_top == pad_left == 0 and 2 * out_h <= h and 2 * out_w <= w:
        return _maxpool_2x2_forward(x, y, argmax)  # the usual MaxPooling2D(2), every window inside
    for b in range(n):
        for oy in range(out_h):
            y0 = max(oy * sh - pad_top, 0)           # the window's rows and columns inside the image
            y1 = min(oy * sh - pad_top + ph, h)
            for ox in range(out_w):
                x0 = max(ox * sw - pad_left, 0)
                x1 = min(ox * sw - pad_left + pw, w)
                best, where = y[b, oy, ox], argmax[b, oy, ox]      # (C,) views
                first = x[b, y0, x0]
                for ch in range(c):                  # start from the window's first real cell
                    best[ch] = first[ch]
                    where[ch] = y0 * w + x0
                for yy in range(y0, y1):
                    for xx in range(x0, x1):
                        pixel = x[b, yy, xx]
                        for ch in range(c):
                            if pixel[ch] > best[ch]:
                                best[ch] = pixel[ch]
                                where[ch] = yy * w + xx
    return y, argmax


@_jit(inline="always")
def _first_maximum(top_left, top_right, bottom_left, bottom_right, k, w):
    """(max, its y*W + x) of a 2x2 window's values, k the top-left's y*W + x, W the row length.

    Compared in row-major order with a strict ">", so the first maximum wins (TensorFlow's
    rule) and a NaN in the top-left cell is kept (nothing compares greater than it).
    """
    v, at = top_left, k
    if top_right > v:
        v, at = top_right, k + 1
    if bottom_left > v:
        v, at = bottom_left, k + w
    if bottom_right > v:
        v, at = bottom_right, k + w + 1
    return v, at


@_jit()
def _maxpool_2x2_forward(x, y, argmax):
    """maxpool_forward for 2x2 windows with stride 2 that all lie inside the image (no padding).

    Same result: the four cells (top-left, top-right, bottom-left, bottom-right) are
    compared in row-major order with a strict ">", so the first maximum wins. Holding the
    four (C,) rows at once and writing y and argmax once per channel lets numba vectorise
    the channel loop, which makes it faster than the general loop (that one updates y at
    every cell).
    """
    n, h, w, c = x.shape
    _, out_h, out_w, _ = y.shape
    for b in range(n):
        for oy in range(out_h):
            for ox in range(out_w):
                r, col = 2 * oy, 2 * ox
                top_left, top_right = x[b, r, col], x[b, r, col + 1]              # (C,) views
                bottom_left, bottom_right = x[b, r + 1, col], x[b, r + 1, col + 1]
                best, where = y[b, oy, ox], argmax[b, oy, ox]
                k = r * w + col                                                    # top-left's y*W + x
                for ch in range(c):
                    best[ch], where[ch] = _first_maximum(top_left[ch], top_right[ch], bottom_left[ch],
                                                         bottom_right[ch], k, w)
    return y, argmax


def maxpool_forward_numpy(x, ph, pw, sh, sw, pad_top, pad_left, out_h, out_w, out=None):
    """NumPy twin of `maxpool_forward`: pad with -inf, stack the windows, np.argmax (first max wins)."""
    n, h, w, c = x.shape
    pad_bottom = max((out_h - 1) * sh + ph - h - pad_top, 0)
    pad_right = max((out_w - 1) * sw + pw - w - pad_left, 0)
    xp = np.pad(x, ((0, 0), (pad_top, pad_bottom), (pad_left, pad_right), (0, 0)), constant_values=-np.inf)
    windows = np.empty((n, out_h, out_w, c, ph * pw), dtype=x.dtype)
    for i in range(ph):
        for j in range(pw):
            windows[..., i * pw + j] = xp[:, i:i + sh * (out_h - 1) + 1:sh, j:j + sw * (out_w - 1) + 1:sw, :]
    k = np.argmax(windows, axis=-1)                       # position in the window, row-major
    y = np.take_along_axis(windows, k[..., None], axis=-1)[..., 0]
    # window position -> pixel row/column in the unpadded image
    rows = np.arange(out_h)[None, :, None, None] * sh - pad_top + k // pw
    cols = np.arange(out_w)[None, None, :, None] * sw - pad_left + k % pw
    argmax = (rows * w + cols).astype(np.int32)
    return (y, argmax) if out is None else (_into(out[0], y), _into(out[1], argmax))


@_jit()
def maxpool_backward(dy, argmax, h, w, out=None, windows_2x2=False):
    """Send each output gradient to the pixel that won its window; overlapping windows add up.

    dy (N, OH, OW, C), argmax (N, OH, OW, C) -> dx (N, H, W, C).
    windows_2x2: say True when the windows are 2x2 with stride 2 and no padding (MaxPooling2D(2)
    on a "valid" input): then every pixel belongs to at most one window, and each window's four
    cells are written once (gradient or 0), without a separate pass that zero-fills dx first.
    """
    n, out_h, out_w, c = dy.shape
    dx = np.empty((n, h, w, c), dtype=dy.dtype) if out is None else out
    if windows_2x2 and 2 * out_h <= h and 2 * out_w <= w:      # (every window inside the image)
        return _maxpool_2x2_backward(dy, argmax, dx)
    dx.fill(0)
    dx_pixels = dx.reshape(n, h * w, c)              # pixel y*W + x, channel c
    for b in range(n):
        for oy in range(out_h):
            for ox in range(out_w):
                grad, where = dy[b, oy, ox], argmax[b, oy, ox]
                for ch in range(c):
                    dx_pixels[b, where[ch], ch] += grad[ch]
    return dx


@_jit()
def _maxpool_2x2_backward(dy, argmax, dx):
    """maxpool_backward for 2x2 windows with stride 2, all inside the image: one write per value of dx.

    The window of output (oy, ox) covers rows 2*oy, 2*oy+1 and columns 2*ox, 2*ox+1; its
    gradient goes to the cell whose y*W + x equals argmax, the other three get 0. dx is
    written one image row at a time, left to right, a window's two cells of that row per
    step (straight runs of C values, which numba vectorises: faster than one cell per step,
    and than zero-filling dx and then scattering). An odd last row or
    column belongs to no window: its gradient is 0.
    """
    n, h, w, c = dx.shape
    _, out_h, out_w, _ = dy.shape
    zero = dx.dtype.type(0)
    for b in range(n):
        for yy in range(h):
            line = dx[b, yy].reshape(w * c)          # image row yy: pixel xx, channel ch at xx*C + ch
            oy = yy // 2
            if oy >= out_h:                          # an odd last row, in no window
                line[:] = 0
                continue
            for ox in range(out_w):
                grad, where = dy[b, oy, ox], argmax[b, oy, ox]                 # (C,) views
                left = yy * w + 2 * ox               # the window's left cell in this row, as y*W + x
                start = 2 * ox * c                   # ... and where it starts in `line`
                for ch in range(c):
                    line[start + ch] = grad[ch] if where[ch] == left else zero
                    line[start + c + ch] = grad[ch] if where[ch] == left + 1 else zero
            for k in range(2 * out_w * c, w * c):    # an odd last column, in no window
                line[k] = zero
    return dx


def maxpool_backward_numpy(dy, argmax, h, w, out=None, windows_2x2=False):
    """NumPy twin of `maxpool_backward`: np.add.at scatters (and adds up repeated winners).

    windows_2x2 changes nothing here: the scatter is right for every window shape.
    """
    n, out_h, out_w, c = dy.shape
    dx = np.zeros((n, h * w, c), dtype=dy.dtype)
    b = np.arange(n)[:, None, None, None]
    ch = np.arange(c)[None, None, None, :]
    np.add.at(dx, (np.broadcast_to(b, dy.shape), argmax, np.broadcast_to(ch, dy.shape)), dy)
    return _into(out, dx.reshape(n, h, w, c))


# ---------------------------------------------------------------------------
# Conv2D(relu) -> MaxPooling2D(2): bias, ReLU and pooling in one pass, and back
# ---------------------------------------------------------------------------
@_jit()
def bias_relu_maxpool_2x2(z, bias, out=None):
    """y = MaxPooling2D(2)(max(z + bias, 0)) in one pass over z, without writing the ReLU's output.

    z (N, H, W, C) the convolution before its bias, bias (C,) -> y (N, H//2, W//2, C) and
    argmax (N, H//2, W//2, C) int32, exactly as bias_relu_ then maxpool_forward give them:
    the same sums, the same ReLU (NaN stays NaN), the same first-maximum rule. An odd last
    row or column of z belongs to no window. out: the pair (y, argmax) to fill.
    """
    n, h, w, c = z.shape
    out_h, out_w = h // 2, w // 2
    if out is None:
        y, argmax = np.empty((n, out_h, out_w, c), dtype=z.dtype), np.empty((n, out_h, out_w, c), dtype=np.int32)
    else:
        y, argmax = out
    zero = z.dtype.type(0)
    for b in range(n):
        for oy in range(out_h):
            for ox in range(out_w):
                r, col = 2 * oy, 2 * ox
                top_left, top_right = z[b, r, col], z[b, r, col + 1]              # (C,) views
                bottom_left, bottom_right = z[b, r + 1, col], z[b, r + 1, col + 1]
                best, where = y[b, oy, ox], argmax[b, oy, ox]
                k = r * w + col                                                    # top-left's y*W + x
                for ch in range(c):
                    v0 = top_left[ch] + bias[ch]      # each cell: ReLU(z + b), "not (v <= 0)" keeps NaN
                    v0 = v0 if not (v0 <= 0) else zero
                    v1 = top_right[ch] + bias[ch]
                    v1 = v1 if not (v1 <= 0) else zero
                    v2 = bottom_left[ch] + bias[ch]
                    v2 = v2 if not (v2 <= 0) else zero
                    v3 = bottom_right[ch] + bias[ch]
                    v3 = v3 if not (v3 <= 0) else zero
                    best[ch], where[ch] = _first_maximum(v0, v1, v2, v3, k, w)   # as _maxpool_2x2_forward
    return y, argmax


def bias_relu_maxpool_2x2_numpy(z, bias, out=None):
    """NumPy twin of `bias_relu_maxpool_2x2`: the two steps one after the other."""
    n, h, w, c = z.shape
    y = bias_relu_numpy(z, bias)
    result = maxpool_forward_numpy(y, 2, 2, 2, 2, 0, 0, h // 2, w // 2)
    return result if out is None else (_into(out[0], result[0]), _into(out[1], result[1]))


@_jit()
def maxpool_relu_backward_2x2(dy, argmax, y, h, w, out=None):
    """dL/dz and dL/dbias through MaxPooling2D(2) and the ReLU before it, in one pass.

    dy (N, OH, OW, C) = dL/dy, argmax and y (N, OH, OW, C) from bias_relu_maxpool_2x2 ->
    dz (N, H, W, C) = dL/dz (z the convolution before its bias) and the bias gradient (C,).
    Each window's gradient goes to its winner, and on through the ReLU only where the ReLU
    let the winner through: the winner's ReLU output is the window's maximum y, so that is
    y > 0 (no need for the ReLU's output itself). Every other pixel gets 0.
        dz[winner] = dy * [y > 0];   dL/dbias = sum over all windows of dy * [y > 0]
    dz is written an image row at a time (two per row of windows), a window's two cells of
    the row per step, as _maxpool_2x2_backward. The bias sums are added up on each window's
    first row, per row of windows in dy's type, then in float64. (The rows are counted by
    `half`, so the test `half == 0` is one numba moves out of the inner loops; written as
    `yy == 2 * oy` it stays inside them, and they do not vectorise.)
    """
    n, out_h, out_w, c = dy.shape
    dz = np.empty((n, h, w, c), dtype=dy.dtype) if out is None else out
    zero = dz.dtype.type(0)
    sums = np.zeros(c, dtype=np.float64)
    row_sums = np.zeros(c, dtype=dy.dtype)
    for b in range(n):
        for oy in range(out_h):
            for half in range(2):                    # the windows' top row, then their bottom row
                yy = 2 * oy + half
                line = dz[b, yy].reshape(w * c)      # image row yy: pixel xx, channel ch at xx*C + ch
                for ox in range(out_w):
                    grad, where, through = dy[b, oy, ox], argmax[b, oy, ox], y[b, oy, ox]   # (C,) views
                    left = yy * w + 2 * ox           # the window's left cell in this row, as y*W + x
                    start = 2 * ox * c
                    for ch in range(c):
                        g = grad[ch] if through[ch] > 0 else zero
                        line[start + ch] = g if where[ch] == left else zero
                        line[start + c + ch] = g if where[ch] == left + 1 else zero
                    if half == 0:                    # each window's gradient once, for the bias
                        for ch in range(c):
                            row_sums[ch] += grad[ch] if through[ch] > 0 else zero
                for k in range(2 * out_w * c, w * c):    # an odd last column, in no window
                    line[k] = zero
            for ch in range(c):
                sums[ch] += row_sums[ch]
                row_sums[ch] = 0
        for yy in range(2 * out_h, h):               # an odd last row, in no window
            dz[b, yy] = zero
    return dz, sums.astype(dy.dtype)


def maxpool_relu_backward_2x2_numpy(dy, argmax, y, h, w, out=None):
    """NumPy twin of `maxpool_relu_backward_2x2`: mask by the ReLU, scatter, add up the rows."""
    c = dy.shape[-1]
    dz = maxpool_backward_numpy(np.where(y > 0, dy, 0).astype(dy.dtype), argmax, h, w)
    return _into(out, dz), column_sums_numpy(dz.reshape(-1, c))


# ---------------------------------------------------------------------------
# The bias gradient: sum over rows
# ---------------------------------------------------------------------------
@_jit()
def column_sums(a):
    """a (M, F) -> (F,) sums over the rows, accumulated in float64 (then cast back to a's dtype).

    One pass over a, row by row (NumPy's a.sum(axis=0) is several times slower on tall arrays).
    """
    m, f = a.shape
    acc = np.zeros(f, dtype=np.float64)
    for r in range(m):
        for k in range(f):
            acc[k] += a[r, k]
    return acc.astype(a.dtype)


def column_sums_numpy(a):
    """NumPy twin of `column_sums`."""
    return a.sum(axis=0, dtype=np.float64).astype(a.dtype)


# ---------------------------------------------------------------------------
# Batch normalisation (layers.BatchNormalization), optionally with the ReLU after it
# ---------------------------------------------------------------------------
# rows (M, C): one channel per column. The statistics are sums in float64, so two halves
# of a batch can add theirs up (ops.BatchNormOp); relu=True folds a ReLU layer in.
# A ReLU's zero is `zero`, of the arrays' own dtype: with a bare 0 numba gives the select
# the type of both branches, float64, and where arithmetic follows the select
# (batchnorm_backward) that goes float64 too: 50% slower, and rounded unlike the NumPy twin.
# (batchnorm_backward_sums's zero is 0.0: its dz is float64 already.) And the ReLU's cut is
# a select, not a `continue`, so that the loop over channels stays one vector loop.
@_jit()
def channel_sums(rows):
    """rows (M, C) -> (sum (C,), sum of squares (C,)), both float64."""
    m, c = rows.shape
    total, squares = np.zeros(c), np.zeros(c)
    for r in range(m):
        for k in range(c):
            v = np.float64(rows[r, k])
            total[k] += v
            squares[k] += v * v
    return total, squares


def channel_sums_numpy(rows):
    """NumPy twin of `channel_sums`."""
    wide = rows.astype(np.float64)
    return wide.sum(axis=0), (wide * wide).sum(axis=0)


@_jit()
def batchnorm_forward(rows, mean, inv_std, gamma, beta, relu):
    """y = (x - mean) * inv_std * gamma + beta per channel, then max(y, 0) if relu.

    rows (M, C); mean, inv_std, gamma, beta (C,) of rows' dtype. The textbook's order of
    operations: x_hat = (x - mean) * inv_std, then x_hat * gamma + beta. Returns y (M, C)."""
    m, c = rows.shape
    y = np.empty_like(rows)
    zero = np.zeros(1, dtype=rows.dtype)[0]
    for r in range(m):
        for k in range(c):
            v = (rows[r, k] - mean[k]) * inv_std[k] * gamma[k] + beta[k]
            y[r, k] = v if not (relu and v <= 0) else zero
    return y


def batchnorm_forward_numpy(rows, mean, inv_std, gamma, beta, relu):
    """NumPy twin of `batchnorm_forward`."""
    y = (rows - mean) * inv_std * gamma + beta
    return np.maximum(y, 0) if relu else y


@_jit()
def batchnorm_backward_sums(dy, y, rows, mean, inv_std, relu):
    """(sum of dz (C,), sum of dz * x_hat (C,)) in float64; dz = dy, or dy where y > 0 if relu.

    dy, y, rows (M, C); mean, inv_std (C,). dL/dbeta and dL/dgamma, and what dL/dx needs."""
    m, c = rows.shape
    dz_sum, dz_x_hat_sum = np.zeros(c), np.zeros(c)
    for r in range(m):
        for k in range(c):
            dz = np.float64(dy[r, k]) if not (relu and not y[r, k] > 0) else 0.0
            dz_sum[k] += dz
            dz_x_hat_sum[k] += dz * ((rows[r, k] - mean[k]) * inv_std[k])
    return dz_sum, dz_x_hat_sum


def batchnorm_backward_sums_numpy(dy, y, rows, mean, inv_std, relu):
    """NumPy twin of `batchnorm_backward_sums`."""
    dz = np.where(y > 0, dy, 0) if relu else dy
    x_hat = (rows - mean) * inv_std
    return dz.sum(axis=0, dtype=np.float64), (dz.astype(np.float64) * x_hat).sum(axis=0)


@_jit()
def batchnorm_backward(dy, y, rows, mean, inv_std, gamma_s, dz_mean, dz_x_hat_mean, relu):
    """dL/dx = gamma * s * (dz - mean(dz) - x_hat * mean(dz * x_hat)) per channel (M, C).

    dz = dy (or dy where y > 0 if relu); gamma_s = gamma * inv_std, and the two means
    (over the whole batch) are (C,) of rows' dtype. After an inference forward, pass
    zeros for the means: dL/dx = gamma * s * dz."""
    m, c = rows.shape
    dx = np.empty_like(rows)
    zero = np.zeros(1, dtype=dy.dtype)[0]
    for r in range(m):
        for k in range(c):
            dz = dy[r, k] if not (relu and not y[r, k] > 0) else zero
            x_hat = (rows[r, k] - mean[k]) * inv_std[k]
            dx[r, k] = gamma_s[k] * (dz - dz_mean[k] - x_hat * dz_x_hat_mean[k])
    return dx


def batchnorm_backward_numpy(dy, y, rows, mean, inv_std, gamma_s, dz_mean, dz_x_hat_mean, relu):
    """NumPy twin of `batchnorm_backward`."""
    dz = np.where(y > 0, dy, 0).astype(dy.dtype) if relu else dy
    return gamma_s * (dz - dz_mean - (rows - mean) * inv_std * dz_x_hat_mean)


# ---------------------------------------------------------------------------
# Fused bias + ReLU, and ReLU's backward
# ---------------------------------------------------------------------------
@_jit()
def bias_relu_(z, bias):
    """In place: z[m, f] = max(z[m, f] + bias[f], 0). z (M, F), bias (F,). Returns z.

    NaN stays NaN, as in np.maximum and TensorFlow (so a diverging model shows NaN, not 0):
    hence "not (v <= 0)" rather than "v > 0", which is False for NaN. The 0 is of z's dtype
    (`zero`): a bare 0 would make the select float64.
    """
    m, f = z.shape
    zero = np.zeros(1, dtype=z.dtype)[0]
    for r in range(m):
        for k in range(f):
            v = z[r, k] + bias[k]
            z[r, k] = v if not (v <= 0) else zero
    return z


def bias_relu_numpy(z, bias):
    """NumPy twin of `bias_relu_` (returns a new array)."""
    return np.maximum(z + bias, 0)


@_jit()
def relu_backward(grad_y, y, out=None):
    """dL/dz = dL/dy where the ReLU output y > 0, else 0 (also 0 at z = 0, as TensorFlow).

    grad_y and y: same shape (any), C-contiguous. Returns out (or a new array); grad_y is not changed.
    """
    grad_z = np.empty_like(grad_y) if out is None else out
    g, yf, gz = grad_y.reshape(-1), y.reshape(-1), grad_z.reshape(-1)
    zero = np.zeros(1, dtype=gz.dtype)[0]                  # of the output's dtype, as in bias_relu_
    for i in range(g.size):
        gz[i] = g[i] if yf[i] > 0 else zero
    return grad_z


def relu_backward_numpy(grad_y, y, out=None):
    """NumPy twin of `relu_backward`."""
    return _into(out, np.where(y > 0, grad_y, 0).astype(grad_y.dtype))



# ---------------------------------------------------------------------------
# Optimizer updates, in place, one pass over each parameter
# ---------------------------------------------------------------------------
# The arithmetic is exactly that of the NumPy twins (same operations, same order, same
# float type, no fused multiply-add), so the results are bit-identical to them; a test
# checks this. The arrays are flat views (C-contiguous parameters, reshaped to 1-D).
@_jit()
def sgd_momentum_update_(param, grad, velocity, lr, momentum, nesterov):
    """v = momentum * v - lr * g;  w += v  (Nesterov: w += momentum * v - lr * g). 1-D arrays, in place."""
    for i in range(param.size):
        v = momentum * velocity[i] - lr * grad[i]
        velocity[i] = v
        if nesterov:
            param[i] += momentum * v - lr * grad[i]
        else:
            param[i] += v


def sgd_momentum_update_numpy(param, grad, velocity, lr, momentum, nesterov):
    """NumPy twin of `sgd_momentum_update_`."""
    velocity *= momentum
    velocity -= lr * grad
    if nesterov:
        param += momentum * velocity - lr * grad
    else:
        param += velocity


@_jit(error_model="numpy")   # IEEE division (no Python zero-check per element), so the loop vectorises
def adam_update_(param, grad, m, v, alpha, one_minus_beta_1, one_minus_beta_2, epsilon):
    """m += (g - m)(1 - b1);  v += (g*g - v)(1 - b2);  w -= (m * alpha) / (sqrt(v) + eps). 1-D, in place."""
    for i in range(param.size):
        g = grad[i]
        m[i] += (g - m[i]) * one_minus_beta_1
        v[i] += (g * g - v[i]) * one_minus_beta_2
        param[i] -= (m[i] * alpha) / (np.sqrt(v[i]) + epsilon)


def adam_update_numpy(param, grad, m, v, alpha, one_minus_beta_1, one_minus_beta_2, epsilon):
    """NumPy twin of `adam_update_`."""
    m += (grad - m) * one_minus_beta_1
    v += (grad * grad - v) * one_minus_beta_2
    param -= (m * alpha) / (np.sqrt(v) + epsilon)


# ---------------------------------------------------------------------------
# Softmax cross-entropy from the logits (tinycnn.losses), in one pass per row
# ---------------------------------------------------------------------------
@_jit(error_model="numpy")
def softmax_cross_entropy(z, t):
    """Mean loss and dL/dz for logits z (M, C) and target rows t (M, C) (one-hot), as the twin.

    Per row: shifted = z - max(z) (<= 0, so exp cannot overflow); log p = shifted - log(sum
    exp(shifted)); loss = -sum t log p; dL/dz = (p * sum(t) - t) / M (p - t for a one-hot row).
    The rows' losses are added in float64. One pass per row, because on a batch's few rows
    of logits NumPy's calls cost more than their arithmetic.
    """
    m, c = z.shape
    grad = np.empty_like(z)
    rows = z.dtype.type(m)
    total = 0.0
    for i in range(m):
        row, target = z[i], t[i]
        top = row[0]
        for k in range(1, c):
            top = max(top, row[k])
        exp_sum = z.dtype.type(0)
        for k in range(c):
            exp_sum += np.exp(row[k] - top)
        log_sum = np.log(exp_sum)
        row_loss, t_sum = z.dtype.type(0), z.dtype.type(0)
        for k in range(c):
            row_loss -= target[k] * ((row[k] - top) - log_sum)
            t_sum += target[k]
        for k in range(c):
            grad[i, k] = (np.exp((row[k] - top) - log_sum) * t_sum - target[k]) / rows
        total += row_loss
    return total / m, grad


def softmax_cross_entropy_numpy(z, t):
    """NumPy twin of `softmax_cross_entropy`: the same maths on whole arrays."""
    m = z.shape[0]
    shifted = z - z.max(axis=1, keepdims=True)                          # <= 0: exp cannot overflow
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -(t * log_probs).sum(axis=1).mean()
    probs = np.exp(log_probs)
    # d/dz of -sum_k t_k log p_k is p * sum(t) - t, which is p - t for one-hot rows
    grad = (probs * t.sum(axis=1, keepdims=True) - t) / z.dtype.type(m)
    return float(loss), grad
