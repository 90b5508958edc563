"""The numba kernels against their plain-NumPy twins, on random shapes, in float32 and float64."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from helpers import read_only_install, rel_error
from tinycnn.engines.fast import kernels as K


def random_geometry(rng):
    """A random conv/pool geometry: (n, h, w, c, kh, kw, sh, sw, padding) with a non-empty output."""
    while True:
        n, h, w, c = rng.integers(1, 4), rng.integers(1, 10), rng.integers(1, 10), rng.integers(1, 5)
        kh, kw, sh, sw = rng.integers(1, 5), rng.integers(1, 5), rng.integers(1, 4), rng.integers(1, 4)
        padding = ["valid", "same"][rng.integers(2)]
        if padding == "same" or (kh <= h and kw <= w):
            return int(n), int(h), int(w), int(c), int(kh), int(kw), int(sh), int(sw), padding


def sizes(h, w, kh, kw, sh, sw, padding):
    oh, (pt, _) = K.conv_output_size(h, kh, sh, padding)
    ow, (pl, _) = K.conv_output_size(w, kw, sw, padding)
    return pt, pl, oh, ow


@pytest.mark.parametrize("size,kernel,stride", [(28, 3, 1), (5, 2, 2), (6, 3, 2), (7, 4, 3), (1, 3, 1), (9, 1, 3)])
def test_output_size_follows_tensorflow(size, kernel, stride):
    out, (before, after) = K.conv_output_size(size, kernel, stride, "same")
    assert out == -(-size // stride)                                  # ceil(n / s)
    total = max((out - 1) * stride + kernel - size, 0)
    assert before + after == total and after - before in (0, 1)      # odd pixel at the end
    out, pads = K.conv_output_size(size, kernel, stride, "valid")
    assert pads == (0, 0)
    assert out == (len(range(0, size - kernel + 1, stride)) if size >= kernel else 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernels_match_numpy_twins_on_random_shapes(dtype):
    rng = np.random.default_rng(0 if dtype is np.float32 else 1)
    for _ in range(40):
        n, h, w, c, kh, kw, sh, sw, padding = random_geometry(rng)
        pt, pl, oh, ow = sizes(h, w, kh, kw, sh, sw, padding)
        x = rng.standard_normal((n, h, w, c)).astype(dtype)
        cols = K.im2col(x, kh, kw, sh, sw, pt, pl, oh, ow)
        assert cols.dtype == dtype and cols.shape == (n * oh * ow, kh * kw * c)
        np.testing.assert_array_equal(cols, K.im2col_numpy(x, kh, kw, sh, sw, pt, pl, oh, ow))

        dcols = rng.standard_normal(cols.shape).astype(dtype)
        dx = K.col2im(dcols, n, h, w, c, kh, kw, sh, sw, pt, pl, oh, ow)
        assert dx.dtype == dtype and dx.shape == x.shape
        assert rel_error(dx, K.col2im_numpy(dcols, n, h, w, c, kh, kw, sh, sw, pt, pl, oh, ow)) < 1e-6

        y, argmax = K.maxpool_forward(x, kh, kw, sh, sw, pt, pl, oh, ow)
        y2, argmax2 = K.maxpool_forward_numpy(x, kh, kw, sh, sw, pt, pl, oh, ow)
        np.testing.assert_array_equal(y, y2)
        np.testing.assert_array_equal(argmax, argmax2)
        dy = rng.standard_normal(y.shape).astype(dtype)
        np.testing.assert_allclose(K.maxpool_backward(dy, argmax, h, w), K.maxpool_backward_numpy(dy, argmax, h, w),
                                   rtol=1e-6, atol=1e-6)

        z = rng.standard_normal((n * oh * ow, c)).astype(dtype)
        b = rng.standard_normal(c).astype(dtype)
        expected = K.bias_relu_numpy(z, b)
        np.testing.assert_array_equal(K.bias_relu_(z.copy(), b), expected)
        g = rng.standard_normal(z.shape).astype(dtype)
        np.testing.assert_array_equal(K.relu_backward(g, expected), K.relu_backward_numpy(g, expected))
        sums = K.column_sums(g)
        assert sums.dtype == dtype
        np.testing.assert_allclose(sums, K.column_sums_numpy(g), rtol=1e-6, atol=1e-6)


def test_col2im_is_the_adjoint_of_im2col():
    # <im2col(x), d> == <x, col2im(d)> for every x, d: col2im is exactly im2col's transpose.
    rng = np.random.default_rng(2)
    for _ in range(20):
        n, h, w, c, kh, kw, sh, sw, padding = random_geometry(rng)
        pt, pl, oh, ow = sizes(h, w, kh, kw, sh, sw, padding)
        x = rng.standard_normal((n, h, w, c))
        d = rng.standard_normal((n * oh * ow, kh * kw * c))
        lhs = np.sum(K.im2col(x, kh, kw, sh, sw, pt, pl, oh, ow) * d)
        rhs = np.sum(x * K.col2im(d, n, h, w, c, kh, kw, sh, sw, pt, pl, oh, ow))
        assert abs(lhs - rhs) <= 1e-10 * max(1.0, abs(lhs))


def test_im2col_rows_are_the_patches():
    # Row (n, oy, ox), column (i, j, c) holds x[n, oy*sh - pad_top + i, ox*sw - pad_left + j, c], 0 outside.
    x = np.arange(2 * 5 * 4 * 3, dtype=np.float64).reshape(2, 5, 4, 3) + 1     # no zeros inside the image
    pt, pl, oh, ow = sizes(5, 4, 3, 2, 2, 2, "same")
    assert (pt, pl, oh, ow) == (1, 0, 3, 2)     # rows: total pad 2 -> 1 top, 1 bottom; columns: none
    cols = K.im2col(x, 3, 2, 2, 2, pt, pl, oh, ow).reshape(2, oh, ow, 3, 2, 3)
    for n in range(2):
        for oy in range(oh):
            for ox in range(ow):
                for i in range(3):
                    for j in range(2):
                        r, c = oy * 2 - pt + i, ox * 2 - pl + j
                        inside = 0 <= r < 5 and 0 <= c < 4
                        expected = x[n, r, c] if inside else np.zeros(3)
                        np.testing.assert_array_equal(cols[n, oy, ox, i, j], expected)
    assert np.all(cols[:, 0, :, 0] == 0) and np.all(cols[:, 2, :, 2] == 0)   # top and bottom padding


def test_maxpool_tie_goes_to_the_first_maximum_in_row_major_order():
    # TensorFlow's rule (checked with tf.nn.max_pool2d's gradient): a 2x2 window of equal values
    # sends its gradient to the top-left cell only; a tie between (0,1) and (1,0) goes to (0,1).
    x = np.array([[1.0, 1.0], [1.0, 1.0]]).reshape(1, 2, 2, 1)
    y, argmax = K.maxpool_forward(x, 2, 2, 2, 2, 0, 0, 1, 1)
    assert argmax.ravel().tolist() == [0]
    dx = K.maxpool_backward(np.ones_like(y), argmax, 2, 2)
    np.testing.assert_array_equal(dx.reshape(2, 2), [[1, 0], [0, 0]])
    x = np.array([[0.0, 3.0], [3.0, 3.0]]).reshape(1, 2, 2, 1)
    _, argmax = K.maxpool_forward(x, 2, 2, 2, 2, 0, 0, 1, 1)
    assert argmax.ravel().tolist() == [1]
    # the NumPy twin follows the same rule
    assert K.maxpool_forward_numpy(x, 2, 2, 2, 2, 0, 0, 1, 1)[1].ravel().tolist() == [1]


def test_same_pooling_never_picks_padding():
    x = -np.arange(1, 10, dtype=np.float32).reshape(1, 3, 3, 1)      # all negative: padding 0 would win
    pt, pl, oh, ow = sizes(3, 3, 2, 2, 2, 2, "same")
    y, _ = K.maxpool_forward(x, 2, 2, 2, 2, pt, pl, oh, ow)
    np.testing.assert_array_equal(y[0, :, :, 0], [[-1, -3], [-7, -9]])   # as tf.nn.max_pool2d gives


def test_float32_kernels_agree_with_float64():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 9, 8, 4))
    d = rng.standard_normal((3 * 4 * 4, 3 * 3 * 4))
    args = (3, 3, 2, 2, 1, 1, 4, 4)
    assert rel_error(K.col2im(d.astype(np.float32), 3, 9, 8, 4, *args), K.col2im(d, 3, 9, 8, 4, *args)) < 1e-6
    np.testing.assert_array_equal(K.im2col(x.astype(np.float32), *args), K.im2col(x, *args).astype(np.float32))


def test_kernels_give_identical_results_on_repeated_calls():
    # Single-threaded kernels with a fixed summation order: bit-identical every time.
    rng = np.random.default_rng(4)
    d = rng.standard_normal((5 * 6 * 6, 3 * 3 * 2)).astype(np.float32)
    args = (5, 12, 12, 2, 3, 3, 2, 2, 1, 1, 6, 6)
    np.testing.assert_array_equal(K.col2im(d, *args), K.col2im(d.copy(), *args))


def test_kernels_run_when_numba_cannot_write_a_cache(tmp_path):
    # A read-only install: no writable __pycache__, NUMBA_CACHE_DIR and ~/.cache unusable.
    # The module must still import (with a warning) and compute the right thing.
    env = read_only_install(tmp_path, K.__file__, "kernels_copy.py")
    script = textwrap.dedent("""
        import warnings, numpy as np
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import kernels_copy as K
        assert any("cannot cache" in str(w.message) for w in caught), [str(w.message) for w in caught]
        x = np.arange(16, dtype=np.float64).reshape(1, 4, 4, 1)
        y, _ = K.maxpool_forward(x, 2, 2, 2, 2, 0, 0, 2, 2)
        assert y.ravel().tolist() == [5, 7, 13, 15], y
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_optimizer_updates_are_bit_identical_to_numpy(dtype):
    rng = np.random.default_rng(5)
    f = np.dtype(dtype).type
    size = 1001
    for nesterov in (False, True):
        p, g, vel = (rng.standard_normal(size).astype(dtype) for _ in range(3))
        p2, vel2 = p.copy(), vel.copy()
        K.sgd_momentum_update_(p, g, vel, f(0.01), f(0.9), nesterov)
        K.sgd_momentum_update_numpy(p2, g, vel2, f(0.01), f(0.9), nesterov)
        np.testing.assert_array_equal(p, p2)
        np.testing.assert_array_equal(vel, vel2)
    p, g, m = (rng.standard_normal(size).astype(dtype) for _ in range(3))
    v = rng.random(size).astype(dtype)
    copies = [a.copy() for a in (p, m, v)]
    args = (f(0.003), f(0.1), f(1 - 0.999), f(1e-7))
    K.adam_update_(p, g, m, v, *args)
    K.adam_update_numpy(copies[0], g, copies[1], copies[2], *args)
    for a, b in zip((p, m, v), copies):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("h,w,kh,kw,sh,sw,padding", [(28, 28, 3, 3, 1, 1, "valid"), (7, 5, 4, 2, 2, 3, "same"),
                                                     (6, 9, 1, 5, 3, 1, "same"), (5, 5, 5, 5, 1, 1, "valid")])
def test_one_channel_im2col_path_matches_the_twin(h, w, kh, kw, sh, sw, padding):
    # im2col takes a separate loop order for C = 1 (grey images): same result.
    x = np.random.default_rng(6).standard_normal((3, h, w, 1)).astype(np.float32)
    pt, pl, oh, ow = sizes(h, w, kh, kw, sh, sw, padding)
    np.testing.assert_array_equal(K.im2col(x, kh, kw, sh, sw, pt, pl, oh, ow),
                                  K.im2col_numpy(x, kh, kw, sh, sw, pt, pl, oh, ow))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bias_relu_keeps_nan_as_its_twin_and_tensorflow_do(dtype):
    z = np.array([[np.nan, -1.0, 2.0], [0.0, np.inf, -np.inf]], dtype=dtype)
    b = np.zeros(3, dtype=dtype)
    expected = K.bias_relu_numpy(z, b)
    assert np.isnan(expected[0, 0])
    np.testing.assert_array_equal(K.bias_relu_(z.copy(), b), expected)      # NaN compares equal here
    np.testing.assert_array_equal(K.bias_relu_(z.copy(), b), [[np.nan, 0, 2], [0, np.inf, 0]])



def test_kernels_write_into_out_when_given():
    # The layers pass arrays they keep across steps (out=): same values as a fresh result, in that array.
    rng = np.random.default_rng(8)
    for _ in range(20):
        n, h, w, c, kh, kw, sh, sw, padding = random_geometry(rng)
        pt, pl, oh, ow = sizes(h, w, kh, kw, sh, sw, padding)
        x = rng.standard_normal((n, h, w, c)).astype(np.float32)
        for kernel in (K.im2col, K.im2col_numpy):
            out = np.full((n * oh * ow, kh * kw * c), np.nan, np.float32)
            assert kernel(x, kh, kw, sh, sw, pt, pl, oh, ow, out=out) is out
            np.testing.assert_array_equal(out, K.im2col_numpy(x, kh, kw, sh, sw, pt, pl, oh, ow))
        dcols = rng.standard_normal((n * oh * ow, kh * kw * c)).astype(np.float32)
        for kernel in (K.col2im, K.col2im_numpy):
            out = np.full(x.shape, np.nan, np.float32)                     # stale values must not leak in
            assert kernel(dcols, n, h, w, c, kh, kw, sh, sw, pt, pl, oh, ow, out=out) is out
            np.testing.assert_allclose(out, K.col2im(dcols, n, h, w, c, kh, kw, sh, sw, pt, pl, oh, ow),
                                       rtol=1e-6, atol=1e-6)
        expected = K.maxpool_forward(x, kh, kw, sh, sw, pt, pl, oh, ow)
        for kernel in (K.maxpool_forward, K.maxpool_forward_numpy):
            out = (np.full((n, oh, ow, c), np.nan, np.float32), np.full((n, oh, ow, c), -1, np.int32))
            y, argmax = kernel(x, kh, kw, sh, sw, pt, pl, oh, ow, out=out)
            assert y is out[0] and argmax is out[1]
            np.testing.assert_array_equal(y, expected[0])
            np.testing.assert_array_equal(argmax, expected[1])
        dy = rng.standard_normal(expected[0].shape).astype(np.float32)
        for kernel in (K.maxpool_backward, K.maxpool_backward_numpy):
            out = np.full(x.shape, np.nan, np.float32)
            assert kernel(dy, expected[1], h, w, out=out) is out
            np.testing.assert_allclose(out, K.maxpool_backward(dy, expected[1], h, w), rtol=1e-6, atol=1e-6)
        y = np.maximum(x, 0)
        for kernel in (K.relu_backward, K.relu_backward_numpy):
            out = np.full(x.shape, np.nan, np.float32)
            assert kernel(dy.sum() + x, y, out=out) is out
            np.testing.assert_array_equal(out, K.relu_backward_numpy(dy.sum() + x, y))


@pytest.mark.parametrize("h,w,padding", [(26, 26, "valid"), (11, 11, "valid"), (5, 8, "same"), (7, 6, "same"), (2, 3, "valid")])
def test_two_by_two_pooling_path_matches_the_twin(h, w, padding):
    # maxpool_forward takes a separate loop for 2x2 windows with stride 2 inside the image: same
    # result, ties included (a coarse grid of values makes many ties).
    rng = np.random.default_rng(7)
    x = np.round(rng.standard_normal((3, h, w, 5)) * 2).astype(np.float32)
    pt, pl, oh, ow = sizes(h, w, 2, 2, 2, 2, padding)
    y, argmax = K.maxpool_forward(x, 2, 2, 2, 2, pt, pl, oh, ow)
    y2, argmax2 = K.maxpool_forward_numpy(x, 2, 2, 2, 2, pt, pl, oh, ow)
    np.testing.assert_array_equal(y, y2)
    np.testing.assert_array_equal(argmax, argmax2)


# (a's shape, b's shape, b given transposed, the path kernels.matmul takes)
MATMUL_CASES = [
    ((21632, 9), (9, 32), False, "rows"),          # a first conv layer's forward: blocks of rows
    ((9, 21632), (21632, 32), False, "inner"),     # its dW = cols.T @ dZ: blocks of the sum
    ((16, 5408), (5408, 100), False, "inner"),     # cnn_categorical's Dense forward, half a batch
    ((5408, 16), (16, 100), False, "rows"),        # its dW = x.T @ dZ
    ((16, 100), (100, 5408), True, "transposed"),  # its dL/dx = dZ @ kernel.T
    ((32, 784), (784, 128), True, "transposed"),
    ((64, 100), (100, 5408), True, "one"),         # too many rows for the transposed form
    ((3872, 576), (576, 64), False, "one"),        # cnn_sparse's second conv: one big product
    ((700, 9), (9, 32), False, "one"),             # small enough for one direct product
    ((7, 3), (3, 5), False, "one"),
    ((5408, 1), (1, 100), False, "outer"),         # dW of a batch of one
]


@pytest.fixture
def cuts_on(monkeypatch):
    """kernels.matmul cuts wherever its rules say, as on a machine where every cut pays
    (the tests' default is tuning off: no cuts; tests/test_tuning.py holds both to the reference)."""
    from tinycnn.engines.fast import tuning
    for way in K.CUTS:
        monkeypatch.setitem(tuning._decided, f"matmul_cut_{way}", True)


def matmul_path(a, b):
    """Which way kernels.matmul computes a @ b (mirrors its rules)."""
    m, k = a.shape
    n = b.shape[1]
    if k == 1:
        return "outer"
    if K._transposed_is_faster(a, b):
        return "transposed"
    if K.MIN_BLOCK_ROWS <= K.SMALL_PRODUCT // (k * n) < m:
        return "rows"
    if K.MIN_BLOCK_INNER <= K.SMALL_PRODUCT // (m * n) < k:
        return "inner"
    return "one"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("a_shape,b_shape,transposed,path", MATMUL_CASES)
def test_matmul_in_pieces_is_the_product(a_shape, b_shape, transposed, path, dtype, cuts_on):
    # kernels.matmul cuts a product into pieces OpenBLAS does fast: whichever way it takes,
    # the result is the product to float rounding, C-contiguous, written into out= when given,
    # and the same bits at every call.
    rng = np.random.default_rng(9)
    a = rng.standard_normal(a_shape).astype(dtype)
    b = rng.standard_normal(b_shape[::-1]).astype(dtype).T if transposed else rng.standard_normal(b_shape).astype(dtype)
    assert matmul_path(a, b) == path
    assert K.cut_for(a, b) == (path if path in K.CUTS else None)
    exact = a.astype(np.float64) @ b.astype(np.float64)
    got = K.matmul(a, b)
    assert got.dtype == dtype and got.shape == exact.shape and got.flags.c_contiguous
    eps = np.finfo(dtype).eps
    assert np.abs(got - exact).max() <= a.shape[1] * eps * np.abs(a).max() * np.abs(b).max()   # rounding of K terms
    assert rel_error(got, K.matmul_numpy(a, b)) < (1e-5 if dtype == np.float32 else 1e-12)
    out = np.full(exact.shape, np.nan, dtype)
    assert K.matmul(a, b, out=out) is out
    np.testing.assert_array_equal(out, got)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matmul_of_stacks_is_each_product(dtype, cuts_on):
    # A stack (P, M, K) @ (P, K, N), as Winograd's dU = V^T @ dM: each matrix's product, cut the
    # same way as a lone one (here blocks of the sum), into out= when given.
    rng = np.random.default_rng(10)
    v, dm = rng.standard_normal((16, 576, 64)).astype(dtype), rng.standard_normal((16, 576, 64)).astype(dtype)
    a = v.transpose(0, 2, 1)
    assert matmul_path(a[0], dm[0]) == "inner"
    got = K.matmul(a, dm)
    assert got.shape == (16, 64, 64) and got.dtype == dtype
    for p in range(16):
        np.testing.assert_array_equal(got[p], K.matmul(a[p], dm[p]))
    assert rel_error(got, a.astype(np.float64) @ dm) < (1e-5 if dtype == np.float32 else 1e-12)
    assert rel_error(got, K.matmul_numpy(a, dm)) < (1e-5 if dtype == np.float32 else 1e-12)
    out = np.full(got.shape, np.nan, dtype)
    assert K.matmul(a, dm, out=out) is out
    np.testing.assert_array_equal(out, got)


def test_matmul_into_a_view_of_a_kernel_gradient(cuts_on):
    # Conv2D writes dW into grads[0].reshape(-1, F), a view: the pieces must land in the array itself.
    rng = np.random.default_rng(3)
    cols, dz = rng.standard_normal((21632, 9), dtype=np.float32), rng.standard_normal((21632, 32), dtype=np.float32)
    grad = np.zeros((3, 3, 1, 32), np.float32)
    K.matmul(cols.T, dz, out=grad.reshape(-1, 32))
    assert rel_error(grad.reshape(-1, 32), cols.T.astype(np.float64) @ dz) < 1e-5


def test_malloc_setting_is_applied_where_glibc_is():
    # kernels asks glibc to keep freed blocks (no page faults for each step's fresh arrays);
    # elsewhere it says False and changes nothing.
    import platform
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert K.MALLOC_KEEPS_FREED_MEMORY is True
        assert K.keep_freed_memory() is True                 # calling it again is harmless
    else:
        assert K.MALLOC_KEEPS_FREED_MEMORY is False


@pytest.mark.parametrize("h,w,padding", [(26, 26, "valid"), (11, 11, "valid"), (4, 7, "valid"), (6, 8, "same"), (7, 6, "same"), (2, 3, "valid")])
def test_two_by_two_pooling_backward_path_matches_the_twin(h, w, padding):
    # windows_2x2=True writes each window's four cells once instead of zero-filling dx and
    # scattering: same dx, ties included, odd last rows/columns 0, stale values in out= overwritten.
    # Where a window would reach into padding ("same" on an odd size) the flag is ignored.
    rng = np.random.default_rng(8)
    x = np.round(rng.standard_normal((3, h, w, 5)) * 2).astype(np.float32)
    pt, pl, oh, ow = sizes(h, w, 2, 2, 2, 2, padding)
    y, argmax = K.maxpool_forward(x, 2, 2, 2, 2, pt, pl, oh, ow)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    expected = K.maxpool_backward_numpy(dy, argmax, h, w)
    out = np.full(x.shape, np.nan, np.float32)
    dx = K.maxpool_backward(dy, argmax, h, w, out=out, windows_2x2=True)
    assert dx is out
    np.testing.assert_array_equal(dx, expected)
    assert np.count_nonzero(dx) == np.count_nonzero(dy)          # one winner per window, nothing else


def test_the_pool_op_takes_the_two_by_two_path_only_where_it_is_exact():
    from tinycnn import layers
    from tinycnn.engines.fast.ops import PoolOp
    cases = [((26, 26, 3), dict(pool_size=2), True), ((13, 13, 3), dict(pool_size=2), True),
             ((13, 13, 3), dict(pool_size=2, padding="same"), False),      # last window in the padding
             ((12, 12, 3), dict(pool_size=2, padding="same"), True),       # "same" without padding
             ((12, 12, 3), dict(pool_size=2, strides=1), False), ((12, 12, 3), dict(pool_size=3), False)]
    for shape, kwargs, fast in cases:
        layer = layers.MaxPooling2D(**kwargs)
        layer.build(shape)
        assert PoolOp(layer, []).windows_2x2 is fast, (shape, kwargs)


# ---------------------------------------------------------------------------
# Winograd's 3x3 convolution (kernels.winograd_*)
# ---------------------------------------------------------------------------
def random_winograd_geometry(rng):
    """(n, h, w, c, f, padding) for a 3x3 stride-1 convolution with a non-empty output."""
    while True:
        n, h, w = int(rng.integers(1, 4)), int(rng.integers(1, 15)), int(rng.integers(1, 15))
        c, f = int(rng.integers(1, 21)), int(rng.integers(1, 9))
        padding = ["valid", "same"][rng.integers(2)]
        if padding == "same" or (h >= 3 and w >= 3):
            return n, h, w, c, f, padding


def winograd_convolution(x, kernel, pt, pl, oh, ow, twins=False):
    """Conv2D's Winograd forward pass, z = output(input(x) @ kernel(kernel)), with the kernels or their twins."""
    th, tw = K.winograd_tiles(oh, ow)
    to_tiles, from_tiles = ((K.winograd_input_numpy, K.winograd_output_numpy) if twins
                            else (K.winograd_input, K.winograd_output))
    m = np.matmul(to_tiles(x, pt, pl, th, tw), K.winograd_kernel(kernel))
    return from_tiles(m, x.shape[0], oh, ow, th, tw)


def product_convolution(x, kernel, pt, pl, oh, ow):
    """The convolution as im2col's product, in float64: the reference for Winograd's."""
    cols = K.im2col_numpy(x.astype(np.float64), 3, 3, 1, 1, pt, pl, oh, ow)
    return (cols @ kernel.reshape(-1, kernel.shape[3]).astype(np.float64)).reshape(x.shape[0], oh, ow, -1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_winograd_kernels_match_their_twins_and_the_product(dtype):
    rng = np.random.default_rng(11 if dtype is np.float32 else 12)
    tolerance = 1e-6 if dtype is np.float32 else 1e-13
    for _ in range(40):
        n, h, w, c, f, padding = random_winograd_geometry(rng)
        pt, pl, oh, ow = sizes(h, w, 3, 3, 1, 1, padding)
        th, tw = K.winograd_tiles(oh, ow)
        assert (2 * th - oh, 2 * tw - ow) in {(0, 0), (0, 1), (1, 0), (1, 1)}       # blocks cover z, at most one over
        x = rng.standard_normal((n, h, w, c)).astype(dtype)
        kernel = rng.standard_normal((3, 3, c, f)).astype(dtype)

        v = K.winograd_input(x, pt, pl, th, tw)
        assert v.dtype == dtype and v.shape == (16, n * th * tw, c)
        assert rel_error(v, K.winograd_input_numpy(x, pt, pl, th, tw)) < tolerance
        m = rng.standard_normal((16, n * th * tw, f)).astype(dtype)
        z = K.winograd_output(m, n, oh, ow, th, tw)
        assert z.dtype == dtype and z.shape == (n, oh, ow, f)
        assert rel_error(z, K.winograd_output_numpy(m, n, oh, ow, th, tw)) < tolerance

        dz = rng.standard_normal((n, oh, ow, f)).astype(dtype)
        dm = K.winograd_output_backward(dz, th, tw)
        assert dm.dtype == dtype and dm.shape == (16, n * th * tw, f)
        assert rel_error(dm, K.winograd_output_backward_numpy(dz, th, tw)) < tolerance
        dv = rng.standard_normal(v.shape).astype(dtype)
        dx = K.winograd_input_backward(dv, n, h, w, pt, pl, th, tw)
        assert dx.dtype == dtype and dx.shape == x.shape
        assert rel_error(dx, K.winograd_input_backward_numpy(dv, n, h, w, pt, pl, th, tw)) < tolerance

        exact = product_convolution(x, kernel, pt, pl, oh, ow)
        got = winograd_convolution(x, kernel, pt, pl, oh, ow)
        assert got.dtype == dtype and got.shape == exact.shape
        assert rel_error(got, exact) < 10 * tolerance, (h, w, c, f, padding)
        assert rel_error(winograd_convolution(x, kernel, pt, pl, oh, ow, twins=True), exact) < 10 * tolerance


def test_winograd_backward_kernels_are_the_transposes_of_the_forward_ones():
    # For a linear map T, <T(a), b> = <a, T^T(b)> for all a, b: the backward kernels give the
    # exact gradients of the forward ones (float64, random geometries, both paddings).
    rng = np.random.default_rng(13)
    for _ in range(20):
        n, h, w, c, f, padding = random_winograd_geometry(rng)
        pt, pl, oh, ow = sizes(h, w, 3, 3, 1, 1, padding)
        th, tw = K.winograd_tiles(oh, ow)
        x, dv = rng.standard_normal((n, h, w, c)), rng.standard_normal((16, n * th * tw, c))
        assert np.sum(K.winograd_input(x, pt, pl, th, tw) * dv) == pytest.approx(
            np.sum(x * K.winograd_input_backward(dv, n, h, w, pt, pl, th, tw)), rel=1e-12, abs=1e-12)
        m, dz = rng.standard_normal((16, n * th * tw, f)), rng.standard_normal((n, oh, ow, f))
        assert np.sum(K.winograd_output(m, n, oh, ow, th, tw) * dz) == pytest.approx(
            np.sum(m * K.winograd_output_backward(dz, th, tw)), rel=1e-12, abs=1e-12)
        kernel, du = rng.standard_normal((3, 3, c, f)), rng.standard_normal((16, c, f))
        assert np.sum(K.winograd_kernel(kernel) * du) == pytest.approx(
            np.sum(kernel * K.winograd_kernel_backward(du)), rel=1e-12, abs=1e-12)


def test_winograd_transforms_are_the_matrices_of_the_docstring():
    # One tile, one channel, one filter: V = B^T d B, U = G g G^T, Y = A^T (U * V) A is the 2x2
    # correlation of the 4x4 tile with the 3x3 kernel.
    rng = np.random.default_rng(5)
    d, g = rng.standard_normal((4, 4)), rng.standard_normal((3, 3))
    v = K.winograd_input(d.reshape(1, 4, 4, 1), 0, 0, 1, 1)
    np.testing.assert_allclose(v.reshape(4, 4), K.WINOGRAD_BT @ d @ K.WINOGRAD_BT.T, atol=1e-14)
    u = K.winograd_kernel(g.reshape(3, 3, 1, 1))
    np.testing.assert_allclose(u.reshape(4, 4), K.WINOGRAD_G @ g @ K.WINOGRAD_G.T, atol=1e-14)
    y = K.winograd_output((u * v).reshape(16, 1, 1), 1, 2, 2, 1, 1)
    correlation = [[np.sum(d[i:i + 3, j:j + 3] * g) for j in range(2)] for i in range(2)]
    np.testing.assert_allclose(y.reshape(2, 2), correlation, atol=1e-13)
    np.testing.assert_allclose(y.reshape(2, 2), K.WINOGRAD_AT @ (u * v).reshape(4, 4) @ K.WINOGRAD_AT.T, atol=1e-14)


def test_winograd_float32_rounding_is_that_of_the_product():
    # The transforms only add, subtract and halve, so in float32 Winograd's convolution is as
    # close to the exact one as the product's: cnn_sparse's second conv, realistic inputs
    # (ReLU outputs in [0, 1]) and a glorot-sized kernel.
    rng = np.random.default_rng(8)
    for seed in range(3):
        rng = np.random.default_rng(seed)
        x = np.maximum(rng.standard_normal((8, 13, 13, 64)), 0).astype(np.float32)
        kernel = rng.uniform(-0.07, 0.07, (3, 3, 64, 64)).astype(np.float32)
        exact = product_convolution(x, kernel, 0, 0, 11, 11)
        product = K.matmul(K.im2col(x, 3, 3, 1, 1, 0, 0, 11, 11), kernel.reshape(-1, 64)).reshape(exact.shape)
        winograd = winograd_convolution(x, kernel, 0, 0, 11, 11)
        product_error, winograd_error = rel_error(product, exact), rel_error(winograd, exact)
        assert winograd_error < 2 * product_error and winograd_error < 2e-6, (product_error, winograd_error)


def test_winograd_fits_only_3x3_stride_1_on_enough_channels():
    assert K.winograd_fits((3, 3), (1, 1), K.WINOGRAD_MIN_CHANNELS)
    assert K.winograd_fits([3, 3], [1, 1], 64)
    assert not K.winograd_fits((3, 3), (1, 1), K.WINOGRAD_MIN_CHANNELS - 1)     # e.g. a grey image
    assert not K.winograd_fits((3, 3), (2, 2), 64)
    assert not K.winograd_fits((3, 3), (1, 2), 64)
    assert not K.winograd_fits((5, 5), (1, 1), 64)
    assert not K.winograd_fits((3, 1), (1, 1), 64)


def test_winograd_kernels_write_into_out_when_given():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 7, 6, 3)).astype(np.float32)
    out = np.full((16, 2 * 4 * 3, 3), np.nan, np.float32)
    assert K.winograd_input(x, 1, 1, 4, 3, out=out) is out
    np.testing.assert_array_equal(out, K.winograd_input(x, 1, 1, 4, 3))
    m = rng.standard_normal((16, 2 * 4 * 3, 5)).astype(np.float32)
    out = np.full((2, 7, 6, 5), np.nan, np.float32)
    assert K.winograd_output(m, 2, 7, 6, 4, 3, out=out) is out
    np.testing.assert_array_equal(out, K.winograd_output(m, 2, 7, 6, 4, 3))
    dz = rng.standard_normal((2, 7, 6, 5)).astype(np.float32)
    out = np.full((16, 2 * 4 * 3, 5), np.nan, np.float32)
    assert K.winograd_output_backward(dz, 4, 3, out=out) is out
    np.testing.assert_array_equal(out, K.winograd_output_backward(dz, 4, 3))
    dv = rng.standard_normal((16, 2 * 4 * 3, 3)).astype(np.float32)
    out = np.full((2, 7, 6, 3), np.nan, np.float32)
    assert K.winograd_input_backward(dv, 2, 7, 6, 1, 1, 4, 3, out=out) is out
    np.testing.assert_array_equal(out, K.winograd_input_backward(dv, 2, 7, 6, 1, 1, 4, 3))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,h,w,c", [(3, 26, 26, 32), (2, 11, 11, 7), (1, 5, 8, 3), (2, 2, 3, 1), (1, 4, 4, 16)])
def test_conv_relu_pool_kernels_match_their_twins_and_the_two_steps(dtype, n, h, w, c):
    # bias_relu_maxpool_2x2 = bias_relu_ then 2x2 max pooling; maxpool_relu_backward_2x2 =
    # pooling's backward then the ReLU's, with the bias sums. Values rounded to a grid so that
    # ties, zeros after the ReLU and odd last rows/columns all occur.
    rng = np.random.default_rng(h * 100 + c)
    z = (np.round(rng.standard_normal((n, h, w, c)) * 2) / 2).astype(dtype)
    bias = (np.round(rng.standard_normal(c) * 2) / 2).astype(dtype)
    y, argmax = K.bias_relu_maxpool_2x2(z, bias)
    assert y.dtype == dtype and y.shape == (n, h // 2, w // 2, c) and argmax.dtype == np.int32
    y_twin, argmax_twin = K.bias_relu_maxpool_2x2_numpy(z, bias)
    relu = K.bias_relu_(z.reshape(-1, c).copy(), bias).reshape(z.shape)          # the two steps
    y_steps, argmax_steps = K.maxpool_forward(relu, 2, 2, 2, 2, 0, 0, h // 2, w // 2)
    for got_y, got_argmax in ((y_twin, argmax_twin), (y_steps, argmax_steps)):
        np.testing.assert_array_equal(y, got_y)
        np.testing.assert_array_equal(argmax, got_argmax)
    if y.size >= 16:                                  # the data has both sides of the ReLU
        assert np.any(y == 0) and np.any(y > 0)

    dy = rng.standard_normal(y.shape).astype(dtype)
    dz = np.full(z.shape, np.nan, dtype)                                            # stale out= values
    dz_got, bias_grad = K.maxpool_relu_backward_2x2(dy, argmax, y, h, w, out=dz)
    assert dz_got is dz and bias_grad.dtype == dtype and bias_grad.shape == (c,)
    dz_twin, bias_grad_twin = K.maxpool_relu_backward_2x2_numpy(dy, argmax, y, h, w)
    dz_steps = K.relu_backward(K.maxpool_backward(dy, argmax, h, w), relu)
    np.testing.assert_array_equal(dz, dz_twin)
    np.testing.assert_array_equal(dz, dz_steps)
    tol = 1e-6 if dtype == np.float32 else 1e-12
    assert rel_error(bias_grad, bias_grad_twin) < tol
    assert rel_error(bias_grad, K.column_sums_numpy(dz_steps.reshape(-1, c))) < tol


def test_bias_relu_maxpool_keeps_nan_like_the_two_steps():
    # A NaN in the top-left cell wins its window (nothing compares greater), elsewhere it loses:
    # as bias_relu_ (NaN stays NaN) then maxpool_forward. Its window's gradient is masked (NaN > 0 is False).
    z = np.array([[[[np.nan], [1.0]], [[2.0], [0.5]]], [[[1.0], [np.nan]], [[-3.0], [0.5]]]], np.float32)
    z = z.reshape(2, 2, 2, 1)
    y, argmax = K.bias_relu_maxpool_2x2(z, np.zeros(1, np.float32))
    relu = K.bias_relu_(z.reshape(-1, 1).copy(), np.zeros(1, np.float32)).reshape(z.shape)
    y_steps, argmax_steps = K.maxpool_forward(relu, 2, 2, 2, 2, 0, 0, 1, 1)
    np.testing.assert_array_equal(y, y_steps)
    np.testing.assert_array_equal(argmax, argmax_steps)
    assert np.isnan(y[0, 0, 0, 0]) and y[1, 0, 0, 0] == 1.0
    dz, bias_grad = K.maxpool_relu_backward_2x2(np.ones_like(y), argmax, y, 2, 2)
    np.testing.assert_array_equal(dz.reshape(2, 4), [[0, 0, 0, 0], [1, 0, 0, 0]])
    assert bias_grad[0] == 1.0


@pytest.mark.parametrize("h,w,sh,sw,padding", [(28, 28, 1, 1, "valid"), (9, 7, 2, 2, "valid"), (10, 8, 3, 1, "valid"),
                                               (6, 6, 3, 3, "same"), (3, 3, 1, 1, "valid"), (7, 5, 1, 1, "same")])
def test_im2col_of_a_3x3_kernel_on_one_channel_matches_the_twin(h, w, sh, sw, padding):
    # The notebook's first conv takes _im2col_3x3_one_channel (every patch inside the image);
    # "same" with padding takes the general loop: both must equal the twin, whatever out= held.
    pt, pl, oh, ow = sizes(h, w, 3, 3, sh, sw, padding)
    x = np.random.default_rng(h * w).standard_normal((3, h, w, 1)).astype(np.float32)
    out = np.full((3 * oh * ow, 9), np.nan, np.float32)
    cols = K.im2col(x, 3, 3, sh, sw, pt, pl, oh, ow, out=out)
    assert cols is out
    np.testing.assert_array_equal(cols, K.im2col_numpy(x, 3, 3, sh, sw, pt, pl, oh, ow))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_cross_entropy_matches_its_twin(dtype):
    # One-hot and soft target rows, ordinary and huge logits (the shift keeps exp finite).
    rng = np.random.default_rng(21)
    for m, c, scale in [(16, 10, 3.0), (1, 2, 1.0), (7, 5, 1e4), (32, 10, 30.0)]:
        z = (rng.standard_normal((m, c)) * scale).astype(dtype)
        for t in (np.eye(c, dtype=dtype)[rng.integers(0, c, m)], rng.dirichlet(np.ones(c), m).astype(dtype)):
            loss, grad = K.softmax_cross_entropy(z, t)
            loss_twin, grad_twin = K.softmax_cross_entropy_numpy(z, t)
            assert np.isfinite(loss) and grad.dtype == dtype and grad.shape == (m, c)
            assert abs(loss - loss_twin) <= (1e-5 if dtype == np.float32 else 1e-12) * max(1.0, abs(loss_twin))
            assert rel_error(grad, grad_twin) < (1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batchnorm_kernels_match_their_numpy_twins(dtype, relu):
    rng = np.random.default_rng(5)
    for m, c in ((1, 1), (7, 3), (300, 17)):
        rows = (rng.standard_normal((m, c)) * 2 + 1).astype(dtype)
        for got, want in zip(K.channel_sums(rows), K.channel_sums_numpy(rows)):
            assert got.dtype == np.float64
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        mean, inv_std, gamma, beta = (rng.standard_normal(c).astype(dtype) for _ in range(4))
        inv_std = np.abs(inv_std) + dtype(0.5)
        y = K.batchnorm_forward(rows, mean, inv_std, gamma, beta, relu)
        assert y.dtype == dtype
        np.testing.assert_allclose(y, K.batchnorm_forward_numpy(rows, mean, inv_std, gamma, beta, relu),
                                   rtol=1e-6, atol=1e-6)
        assert (y >= 0).all() if relu else (y < 0).any() or m == 1
        dy = rng.standard_normal((m, c)).astype(dtype)
        for got, want in zip(K.batchnorm_backward_sums(dy, y, rows, mean, inv_std, relu),
                             K.batchnorm_backward_sums_numpy(dy, y, rows, mean, inv_std, relu)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        means = [rng.standard_normal(c).astype(dtype) for _ in range(2)]
        dx = K.batchnorm_backward(dy, y, rows, mean, inv_std, gamma * inv_std, *means, relu)
        assert dx.dtype == dtype
        np.testing.assert_allclose(dx, K.batchnorm_backward_numpy(dy, y, rows, mean, inv_std, gamma * inv_std,
                                                                  *means, relu), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batchnorm_backward_computes_in_the_arrays_own_dtype(dtype):
    # A bare 0 in the ReLU's select would make numba compute the float32 rows in float64,
    # which rounds unlike the NumPy twin: the same operations in float32 give the same bits.
    rng = np.random.default_rng(6)
    rows, dy = (rng.standard_normal((300, 17)).astype(dtype) for _ in range(2))
    mean, inv_std, gamma_s, dz_mean, dz_x_hat_mean = (rng.random(17).astype(dtype) + dtype(0.5) for _ in range(5))
    y = K.batchnorm_forward(rows, mean, inv_std, gamma_s, mean, True)
    dx = K.batchnorm_backward(dy, y, rows, mean, inv_std, gamma_s, dz_mean, dz_x_hat_mean, True)
    np.testing.assert_array_equal(dx, K.batchnorm_backward_numpy(dy, y, rows, mean, inv_std, gamma_s,
                                                                 dz_mean, dz_x_hat_mean, True))
