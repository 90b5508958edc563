"""Layers: gradients vs float64 central differences over many random configurations, forward
passes vs the definitions, Keras's shapes/names/weights, and clear errors for bad input."""
import json

import numpy as np
import pytest

from helpers import distinct_values, one_hot, rel_error
from tinycnn import gradcheck, kernels, layers as L, losses

TOL = 1e-6


@pytest.fixture(autouse=True)
def fresh_names():
    L.reset_name_counters()


def naive_conv2d(x, kernel, bias, strides, padding):
    """Definition of Keras's Conv2D (cross-correlation), with explicit loops and TF's 'same' padding."""
    n, h, w, c = x.shape
    kh, kw, _, f = kernel.shape
    sh, sw = strides
    if padding == "same":
        oh, ow = -(-h // sh), -(-w // sw)
        ph, pw = max((oh - 1) * sh + kh - h, 0), max((ow - 1) * sw + kw - w, 0)
        x = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    else:
        oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    y = np.zeros((n, oh, ow, f))
    for oy in range(oh):
        for ox in range(ow):
            patch = x[:, oy * sh:oy * sh + kh, ox * sw:ox * sw + kw, :]          # (n, kh, kw, c)
            y[:, oy, ox, :] = np.tensordot(patch, kernel, axes=([1, 2, 3], [0, 1, 2])) + bias
    return y


def naive_maxpool(x, pool, strides, padding):
    n, h, w, c = x.shape
    (ph, pw), (sh, sw) = pool, strides
    if padding == "same":
        oh, ow = -(-h // sh), -(-w // sw)
        th, tw = max((oh - 1) * sh + ph - h, 0), max((ow - 1) * sw + pw - w, 0)
        x = np.pad(x, ((0, 0), (th // 2, th - th // 2), (tw // 2, tw - tw // 2), (0, 0)), constant_values=-np.inf)
    else:
        oh, ow = (h - ph) // sh + 1, (w - pw) // sw + 1
    return np.stack([np.stack([x[:, oy * sh:oy * sh + ph, ox * sw:ox * sw + pw].max(axis=(1, 2))
                               for ox in range(ow)], axis=1) for oy in range(oh)], axis=1)


# ---------------------------------------------------------------------------
# Gradient checks: many random configurations, float64 central differences
# ---------------------------------------------------------------------------
def random_conv_configs(count, seed):
    rng = np.random.default_rng(seed)
    configs = []
    while len(configs) < count:
        n, h, w, c = (int(v) for v in (rng.integers(1, 4), rng.integers(3, 9), rng.integers(3, 9), rng.integers(1, 4)))
        kh, kw = (int(v) for v in rng.integers(1, 5, size=2))          # odd, even and non-square kernels
        sh, sw = (int(v) for v in rng.integers(1, 4, size=2))          # strides 1-3
        padding = ["valid", "same"][len(configs) % 2]
        if padding == "valid" and (kh > h or kw > w):
            continue
        activation = [None, "relu", "softmax", "linear"][rng.integers(4)]
        configs.append(dict(batch=n, input_shape=(h, w, c), filters=int(rng.integers(1, 5)), kernel_size=(kh, kw),
                            strides=(sh, sw), padding=padding, activation=activation,
                            use_bias=bool(rng.integers(4) > 0)))
    return configs


@pytest.mark.parametrize("cfg", random_conv_configs(40, seed=10), ids=lambda c: str(c))
def test_conv2d_gradients(cfg):
    cfg = dict(cfg)
    batch, input_shape = cfg.pop("batch"), cfg.pop("input_shape")
    layer = L.Conv2D(**cfg)
    layer.build(input_shape)
    rng = np.random.default_rng(0)
    layer.set_weights([rng.standard_normal(p.shape) for p in layer.params])     # non-zero bias too
    report = gradcheck.check_layer(layer, rng.standard_normal((batch,) + input_shape))
    assert report.max_error < TOL, str(report)
    assert len(report.entries) == 1 + len(layer.params)


def random_pool_configs(count=12, seed=12):
    """The hand-picked cases below, then `count` random ones (overlap, gaps, both paddings)."""
    rng = np.random.default_rng(seed)
    drawn = []
    while len(drawn) < count:
        h, w, c = (int(v) for v in (rng.integers(2, 9), rng.integers(2, 9), rng.integers(1, 4)))
        pool = (int(rng.integers(1, 5)), int(rng.integers(1, 5)))
        strides = None if rng.integers(3) == 0 else (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        padding = ["valid", "same"][len(drawn) % 2]
        if padding == "valid" and (pool[0] > h or pool[1] > w):
            continue
        drawn.append((int(rng.integers(1, 4)), (h, w, c), pool, strides, padding))
    return drawn + [  # (batch, input (h, w, c), pool, strides, padding)
        (2, (4, 4, 3), 2, None, "valid"), (1, (5, 7, 2), 2, None, "valid"),     # odd sizes drop the edge
        (3, (6, 5, 2), 3, 1, "valid"), (2, (7, 7, 1), (3, 2), (2, 1), "valid"),  # overlapping windows
        (2, (5, 5, 2), 2, None, "same"), (1, (7, 6, 3), 3, 2, "same"),           # padding, ignored cells
        (2, (3, 4, 2), (2, 3), 1, "same"), (1, (8, 8, 1), 4, 3, "valid"),
    ]


@pytest.mark.parametrize("batch,input_shape,pool,strides,padding", random_pool_configs())
def test_maxpool_gradients(batch, input_shape, pool, strides, padding):
    layer = L.MaxPooling2D(pool, strides, padding)
    x = distinct_values(np.random.default_rng(1), (batch,) + input_shape)   # no ties, winners 0.1 apart
    report = gradcheck.check_layer(layer, x)
    assert report.max_error < TOL, str(report)


def test_maxpool_overlap_accumulates_into_a_shared_winner():
    # 3x3 input, pool 2 stride 1: the centre (the maximum) wins all four windows.
    x = np.zeros((1, 3, 3, 1))
    x[0, 1, 1, 0] = 5.0
    layer = L.MaxPooling2D(2, strides=1)
    y = layer.forward(x)
    dx = layer.backward(np.array([1.0, 2.0, 3.0, 4.0]).reshape(y.shape))
    assert dx[0, 1, 1, 0] == 10.0 and np.count_nonzero(dx) == 1


def test_maxpool_ties_send_the_gradient_to_one_position():
    # The rule (TensorFlow's, checked with tf.nn.max_pool2d): in a window of equal maxima, only the
    # FIRST one in row-major order (top-left first) gets the gradient; the others get 0.
    layer = L.MaxPooling2D(2)
    x = np.ones((1, 4, 4, 2))
    dx = layer.backward(np.ones(layer.forward(x).shape))
    assert np.count_nonzero(dx) == 8                                  # 4 windows x 2 channels
    np.testing.assert_array_equal(dx[0, ::2, ::2, :], 1.0)            # each window's top-left cell
    assert dx.sum() == 8


@pytest.mark.parametrize("shape,units,activation,use_bias", [
    ((5,), 3, None, True), ((7,), 4, "relu", True), ((4,), 6, "softmax", True), ((6,), 2, "relu", False),
    ((3, 5), 4, "linear", True),                                         # higher rank: last axis
])
@pytest.mark.parametrize("batch", [1, 4])
def test_dense_gradients(shape, units, activation, use_bias, batch):
    layer = L.Dense(units, activation=activation, use_bias=use_bias)
    layer.build(shape)
    rng = np.random.default_rng(2)
    layer.set_weights([rng.standard_normal(p.shape) for p in layer.params])
    report = gradcheck.check_layer(layer, rng.standard_normal((batch,) + shape))
    assert report.max_error < TOL, str(report)


@pytest.mark.parametrize("layer_fn", [L.Flatten, L.ReLU, L.Softmax, lambda: L.Activation("softmax"),
                                      lambda: L.Activation("linear")])
def test_weightless_layer_gradients(layer_fn):
    x = np.random.default_rng(3).standard_normal((3, 4, 3, 2))
    report = gradcheck.check_layer(layer_fn(), x)
    assert report.max_error < TOL, str(report)


def test_whole_network_gradients_with_fused_softmax_loss():
    net = [L.Conv2D(3, 3, padding="same", activation="relu"), L.MaxPooling2D(2), L.Conv2D(2, (2, 3), strides=(1, 2)),
           L.Flatten(), L.Dense(5, activation="relu"), L.Dense(4, activation="softmax")]
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 8, 8, 2))
    for loss, y in (("sparse_categorical_crossentropy", np.array([0, 3, 1])),
                    ("categorical_crossentropy", one_hot([2, 2, 0], 4))):
        report = gradcheck.check_model(net, x, y, loss=loss)
        assert report.max_error < TOL, str(report)


# ---------------------------------------------------------------------------
# Forward passes against the definitions
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", random_conv_configs(8, seed=11), ids=lambda c: str(c))
def test_conv2d_forward_matches_the_definition(cfg):
    cfg = dict(cfg, activation=None)
    batch, input_shape = cfg.pop("batch"), cfg.pop("input_shape")
    layer = L.Conv2D(**cfg, dtype="float64")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((batch,) + input_shape)
    layer.build(input_shape)
    layer.set_weights([rng.standard_normal(p.shape) for p in layer.params])
    bias = layer.params[1] if layer.use_bias else 0.0
    expected = naive_conv2d(x, layer.params[0], bias, cfg["strides"], cfg["padding"])
    y = layer.forward(x)
    assert y.shape == (batch,) + layer.output_shape
    assert rel_error(y, expected) < 1e-12


@pytest.mark.parametrize("cfg", random_conv_configs(12, seed=13), ids=lambda c: str(c))
def test_conv2d_float32_agrees_with_float64(cfg):
    cfg = dict(cfg)
    batch, input_shape = cfg.pop("batch"), cfg.pop("input_shape")
    rng = np.random.default_rng(14)
    x = rng.standard_normal((batch,) + input_shape)
    results = []
    for dtype in ("float32", "float64"):
        layer = L.Conv2D(**cfg, dtype=dtype)
        layer.build(input_shape)
        layer.set_weights([np.random.default_rng(15).standard_normal(p.shape) for p in layer.params])
        y = layer.forward(x)
        dx = layer.backward(np.random.default_rng(16).standard_normal(y.shape))
        results.append([y, dx] + [g.copy() for g in layer.grads])
    for a, b in zip(*results):
        assert a.dtype == np.float32 and rel_error(a, b) < 1e-5


WINOGRAD_CONFIGS = [  # 3x3, stride 1, 16+ channels: Conv2D takes Winograd's way (kernels.winograd_*)
    dict(batch=2, input_shape=(13, 13, 16), filters=8, padding="valid", activation="relu"),
    dict(batch=3, input_shape=(7, 6, 20), filters=3, padding="same", activation=None),
    dict(batch=1, input_shape=(5, 9, 16), filters=4, padding="same", activation="softmax", use_bias=False),
    dict(batch=2, input_shape=(3, 3, 17), filters=2, padding="valid", activation="linear"),
]


def winograd_layer(cfg, dtype="float64", seed=21):
    """(layer, x) for one of WINOGRAD_CONFIGS, built, with random weights (non-zero bias)."""
    cfg = dict(cfg)
    batch, input_shape = cfg.pop("batch"), cfg.pop("input_shape")
    layer = L.Conv2D(**cfg, kernel_size=3, dtype=dtype)
    layer.build(input_shape)
    rng = np.random.default_rng(seed)
    layer.set_weights([rng.standard_normal(p.shape) for p in layer.params])
    return layer, rng.standard_normal((batch,) + input_shape)


@pytest.mark.parametrize("cfg", WINOGRAD_CONFIGS, ids=lambda c: str(c))
def test_conv2d_winograd_gradients(cfg):
    layer, x = winograd_layer(cfg)
    assert layer._winograd
    report = gradcheck.check_layer(layer, x)
    assert report.max_error < TOL, str(report)
    assert len(report.entries) == 1 + len(layer.params)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("cfg", WINOGRAD_CONFIGS, ids=lambda c: str(c))
def test_conv2d_takes_winograd_where_it_fits_with_the_products_results(cfg, dtype, monkeypatch):
    # The same layer with Winograd switched off (im2col and one product) gives the same
    # outputs, input gradient and weight gradients, to float rounding.
    calls = []
    winograd_input = kernels.winograd_input
    monkeypatch.setattr(kernels, "winograd_input", lambda *a: calls.append(1) or winograd_input(*a))
    layer, x = winograd_layer(cfg, dtype)
    upstream = np.random.default_rng(22).standard_normal((x.shape[0],) + layer.output_shape)
    results = []
    for winograd in (True, False):
        layer._winograd = winograd
        for training in (True, False):
            y = layer.forward(x, training=training).copy()
            dx = layer.backward(upstream)
            results.append([y, dx] + [g.copy() for g in layer.grads])
    assert len(calls) == 2                                   # both passes of the Winograd layer
    bias = layer.params[1] if layer.use_bias else 0.0
    if cfg["activation"] in (None, "linear"):
        exact = naive_conv2d(x, layer.params[0].astype(np.float64), bias, (1, 1), cfg["padding"])
        assert rel_error(results[0][0], exact) < (1e-12 if dtype == "float64" else 1e-6)
    for winograd_result in results[:2]:
        for a, b in zip(winograd_result, results[2]):
            assert a.dtype == np.dtype(dtype) and rel_error(a, b) < (1e-12 if dtype == "float64" else 1e-5)


def test_conv2d_winograd_backward_twice_says_it_needs_a_forward_pass():
    layer, x = winograd_layer(WINOGRAD_CONFIGS[0])
    upstream = np.ones((x.shape[0],) + layer.output_shape)
    layer.forward(x, training=True)
    layer.backward(upstream)
    with pytest.raises(RuntimeError, match="backward needs a forward pass before it"):
        layer.backward(upstream)
    layer.forward(x, training=True)
    assert layer.backward(upstream).shape == x.shape


@pytest.mark.parametrize("input_shape,kernel_size,strides", [((9, 9, 15), 3, 1), ((9, 9, 16), 3, 2), ((9, 9, 16), 5, 1),
                                                             ((28, 28, 1), 3, 1)])
def test_conv2d_keeps_the_product_where_winograd_does_not_fit(input_shape, kernel_size, strides, monkeypatch):
    monkeypatch.setattr(kernels, "winograd_input", lambda *a: pytest.fail("Winograd on a conv it does not fit"))
    layer = L.Conv2D(4, kernel_size, strides)
    layer.build(input_shape)
    assert not layer._winograd
    x = np.random.default_rng(2).standard_normal((2,) + input_shape)
    expected = naive_conv2d(x, layer.params[0].astype(np.float64), layer.params[1], (strides, strides), "valid")
    assert rel_error(layer.forward(x, training=True), expected) < 1e-5
    assert layer.backward(np.ones((2,) + layer.output_shape)).shape == x.shape


@pytest.mark.parametrize("batch,input_shape,pool,strides,padding", random_pool_configs())
def test_maxpool_forward_matches_the_definition(batch, input_shape, pool, strides, padding):
    layer = L.MaxPooling2D(pool, strides, padding, dtype="float64")
    x = np.random.default_rng(6).standard_normal((batch,) + input_shape) - 3     # negative: padding never wins
    ps = (pool, pool) if isinstance(pool, int) else pool
    st = ps if strides is None else ((strides, strides) if isinstance(strides, int) else strides)
    np.testing.assert_array_equal(layer.forward(x), naive_maxpool(x, ps, st, padding))


def test_activations_forward():
    z = np.array([[-2.0, 0.0, 3.0], [1e4, -1e4, 0.0]])
    np.testing.assert_array_equal(L.ReLU().forward(z), [[0, 0, 3], [1e4, 0, 0]])
    p = L.Softmax().forward(z)
    np.testing.assert_allclose(p[0], np.exp(z[0]) / np.exp(z[0]).sum(), rtol=1e-6)
    assert np.all(np.isfinite(p)) and p[1, 0] == pytest.approx(1.0)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)


def test_flatten_orders_features_as_keras():
    x = np.arange(2 * 2 * 3 * 4, dtype=np.float32).reshape(2, 2, 3, 4)
    y = L.Flatten().forward(x)
    assert y.shape == (2, 24)
    assert y[1, 4 * 3 * 1 + 4 * 2 + 3] == x[1, 1, 2, 3]           # rows, then columns, then channels


def test_softmax_fusion_equals_the_full_chain():
    # backward_from_logits((p - onehot)/N) must equal backward(dL/dp) with dL/dp = -onehot/(N p).
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 6))
    y = np.array([0, 2, 1, 2])
    for layer in (L.Dense(3, activation="softmax", dtype="float64"), L.Softmax(dtype="float64")):
        layer.forward(x if isinstance(layer, L.Dense) else x[:, :3])
        assert layer.outputs_softmax and layer.logits.shape == (4, 3)
        loss = losses.get("sparse_categorical_crossentropy")
        _, grad_logits = loss.from_logits(y, layer.logits)
        fused = layer.backward_from_logits(grad_logits)
        fused_grads = [g.copy() for g in layer.grads]
        full = layer.backward(-one_hot(y, 3) / (4 * layer.output))
        assert rel_error(fused, full) < 1e-12
        for a, b in zip(fused_grads, layer.grads):
            assert rel_error(a, b) < 1e-12
    assert not L.Dense(3, activation="relu").outputs_softmax and not L.Flatten().outputs_softmax
    with pytest.raises(TypeError, match="softmax"):
        L.Dense(3).backward_from_logits(np.zeros((1, 3)))


def test_float32_matches_float64():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((4, 9, 9, 3))
    results = {}
    for dtype in ("float32", "float64"):
        L.reset_name_counters()
        net = [L.Conv2D(5, 3, activation="relu", dtype=dtype), L.MaxPooling2D(2, dtype=dtype), L.Flatten(dtype=dtype),
               L.Dense(4, activation="softmax", dtype=dtype)]
        shape = x.shape[1:]
        weights_rng = np.random.default_rng(9)
        for layer in net:
            shape = layer.build(shape)
            layer.set_weights([weights_rng.standard_normal(p.shape) * 0.3 for p in layer.params])
        out = x.astype(dtype)
        for layer in net:
            out = layer.forward(out)
        assert out.dtype == dtype
        _, grad = losses.get("sparse_categorical_crossentropy").from_logits(np.array([0, 1, 2, 3]), net[-1].logits)
        grad = net[-1].backward_from_logits(grad)
        for layer in reversed(net[:-1]):
            grad = layer.backward(grad)
        results[dtype] = [out, grad] + [g.copy() for layer in net for g in layer.grads]
    for a, b in zip(results["float32"], results["float64"]):
        assert a.dtype == np.float32 and rel_error(a, b) < 1e-5


# ---------------------------------------------------------------------------
# The contract: shapes, names, weights, config, in-place parameters
# ---------------------------------------------------------------------------
def test_keras_names_shapes_and_param_counts():
    conv, pool, flat = L.Conv2D(32, (3, 3), activation="relu", input_shape=(28, 28, 1)), L.MaxPooling2D((2, 2)), L.Flatten()
    d1, d2, conv2 = L.Dense(100, activation="relu"), L.Dense(10, activation="softmax"), L.Conv2D(8, 3)
    assert [l.name for l in (conv, pool, flat, d1, d2, conv2)] == [
        "conv2d", "max_pooling2d", "flatten", "dense", "dense_1", "conv2d_1"]
    assert L.ReLU().name == "re_lu" and L.Softmax().name == "softmax"
    shape = (28, 28, 1)
    for layer in (conv, pool, flat, d1, d2):
        shape = layer.build(shape)
    assert (conv.output_shape, pool.output_shape, flat.output_shape) == ((26, 26, 32), (13, 13, 32), (5408,))
    assert [p.shape for p in conv.params] == [(3, 3, 1, 32), (32,)]
    assert [p.shape for p in d1.params] == [(5408, 100), (100,)]
    assert sum(l.count_params() for l in (conv, pool, flat, d1, d2)) == 542230      # the notebook's total
    assert [g.shape for g in conv.grads] == [p.shape for p in conv.params]
    assert all(p.dtype == np.float32 for p in conv.params + d1.params)
    assert np.all(conv.params[1] == 0) and np.abs(conv.params[0]).max() <= np.sqrt(6 / (9 + 9 * 32))
    assert [p.shape for p in L.Dense(3, use_bias=False).__class__(3, use_bias=False, input_shape=(4,)).params] == []
    nobias = L.Dense(3, use_bias=False)
    nobias.build((4,))
    assert [p.shape for p in nobias.params] == [(4, 3)]
    assert L.Conv2D(4, 3, strides=2, padding="same").build((7, 5, 2)) == (4, 3, 4)
    assert L.MaxPooling2D(3, 2, padding="same").build((7, 5, 2)) == (4, 3, 2)


def test_params_stay_the_same_arrays_and_grad_out_is_not_modified():
    layer = L.Conv2D(3, 2, activation="relu")
    x = np.random.default_rng(10).standard_normal((2, 5, 5, 2)).astype(np.float32)
    layer.forward(x)
    ids = [id(p) for p in layer.params] + [id(g) for g in layer.grads]
    g = np.random.default_rng(11).standard_normal((2, 4, 4, 3)).astype(np.float32)
    g_copy = g.copy()
    layer.backward(g)
    np.testing.assert_array_equal(g, g_copy)
    layer.set_weights(layer.get_weights())
    layer.forward(x)
    layer.backward(g)
    assert [id(p) for p in layer.params] + [id(g) for g in layer.grads] == ids
    w = layer.get_weights()
    w[0][...] = 7
    assert not np.all(layer.params[0] == 7)                             # get_weights returns copies


def test_repeated_steps_with_changing_batch_sizes_equal_a_fresh_layer():
    # A layer used step after step (cached patches, outputs, gradients written in place)
    # gives exactly what a fresh layer gives, for every batch size in any order.
    rng = np.random.default_rng(13)
    layers = [L.Conv2D(4, 3, activation="relu", input_shape=(9, 9, 2)), L.MaxPooling2D(2), L.Flatten(),
              L.Dense(5, activation="relu")]
    shape = (9, 9, 2)
    for layer in layers:
        shape = layer.build(shape)
    weights = [layer.get_weights() for layer in layers]

    def step(net, x, g):
        for layer in net:
            x = layer.forward(x, training=True)
        out = x.copy()
        for layer in reversed(net):
            g = layer.backward(g)
        return [out, g.copy()] + [grad.copy() for layer in net for grad in layer.grads]

    for batch in (3, 3, 1, 3):                 # the same size again, a smaller one, back
        x = rng.standard_normal((batch, 9, 9, 2)).astype(np.float32)
        g = rng.standard_normal((batch, 5)).astype(np.float32)
        fresh = [type(layer).from_config(layer.get_config()) for layer in layers]
        shape = (9, 9, 2)
        for layer, w in zip(fresh, weights):
            shape = layer.build(shape)
            layer.set_weights(w)
        for a, b in zip(step(layers, x, g), step(fresh, x, g)):
            np.testing.assert_array_equal(a, b)
    y = layers[0].forward(x)
    layers[0].forward(x * 2)
    assert not np.shares_memory(layers[0].forward(x), y)      # an output stays the caller's


def test_need_input_grad_false_skips_dx_but_fills_param_grads():
    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 6, 6, 1))
    for layer in (L.Conv2D(2, 3, dtype="float64"), L.Dense(3, dtype="float64")):
        xx = x if isinstance(layer, L.Conv2D) else x.reshape(2, -1)
        y = layer.forward(xx)
        g = rng.standard_normal(y.shape)
        layer.backward(g)
        expected = [p.copy() for p in layer.grads]
        layer.need_input_grad = False
        assert layer.backward(g) is None
        for a, b in zip(layer.grads, expected):
            np.testing.assert_array_equal(a, b)


def test_config_round_trips_through_json():
    for layer in (L.Conv2D(4, (3, 2), strides=2, padding="same", activation="relu", use_bias=False,
                           kernel_initializer="he_uniform", input_shape=(9, 9, 1)),
                  L.MaxPooling2D(3, 2, "same"), L.Flatten(), L.Dense(5, activation="softmax"), L.ReLU(), L.Softmax(),
                  L.Activation("relu")):
        config = json.loads(json.dumps(layer.get_config()))
        clone = L.LAYER_CLASSES[type(layer).__name__].from_config(config)
        assert clone.get_config() == layer.get_config() and clone.name == layer.name
    assert L.Conv2D(2, 3, input_shape=(5, 5, 1)).get_config()["input_shape"] == [5, 5, 1]


def test_set_weights_moves_keras_layout_weights_in():
    layer = L.Conv2D(2, 3)
    layer.build((5, 5, 3))
    kernel, bias = np.arange(54, dtype=np.float32).reshape(3, 3, 3, 2), np.array([1.0, -1.0])
    layer.set_weights([kernel, bias])
    np.testing.assert_array_equal(layer.get_weights()[0], kernel)
    assert layer.params[1].dtype == np.float32 and layer.params[1].tolist() == [1.0, -1.0]


# ---------------------------------------------------------------------------
# Bad input: a ValueError that names the layer and the expected and actual shapes
# ---------------------------------------------------------------------------
def test_bad_input_errors():
    conv = L.Conv2D(4, 3, input_shape=(8, 8, 1))
    conv.build((8, 8, 1))
    with pytest.raises(ValueError, match=r"conv2d.*\(batch, 8, 8, 1\).*\(2, 8, 8, 3\)"):      # wrong channels
        conv.forward(np.zeros((2, 8, 8, 3)))
    with pytest.raises(ValueError, match=r"conv2d.*\(batch, 8, 8, 1\).*\(8, 8, 1\)"):         # missing batch axis
        conv.forward(np.zeros((8, 8, 1)))
    with pytest.raises(ValueError, match=r"conv2d_1.*rank 3.*\(28, 28\)"):                   # wrong rank
        L.Conv2D(4, 3).build((28, 28))
    with pytest.raises(ValueError, match=r"conv2d_2.*\(5, 5\).*larger than the input \(3, 4\)"):
        L.Conv2D(4, 5).build((3, 4, 1))
    with pytest.raises(ValueError, match=r"max_pooling2d.*\(3, 3\).*larger.*\(2, 2\)"):
        L.MaxPooling2D(3).build((2, 2, 1))
    with pytest.raises(ValueError, match="was given input_shape"):
        L.Dense(2, input_shape=(4,)).build((5,))
    for bad in (lambda: L.Conv2D(0, 3), lambda: L.Conv2D(2, -1), lambda: L.Conv2D(2, 3, strides=0),
                lambda: L.Dense(0), lambda: L.Dense(2.5), lambda: L.MaxPooling2D(0),
                lambda: L.Conv2D(2, (3, 3, 3)), lambda: L.Conv2D(2, 3, input_shape=(0, 5, 1))):
        with pytest.raises(ValueError, match="positive|pair"):
            bad()
    with pytest.raises(ValueError, match="padding must be 'valid' or 'same'"):
        L.Conv2D(2, 3, padding="full")
    with pytest.raises(ValueError, match="Unknown activation"):
        L.Dense(2, activation="tanhh")
    with pytest.raises(ValueError, match="dtype"):
        L.Dense(2, dtype="int32")


def test_set_weights_errors_name_the_layer_and_shapes():
    dense = L.Dense(3)
    with pytest.raises(ValueError, match="dense.*not built|dense.*before the layer is built"):
        dense.set_weights([np.zeros((4, 3)), np.zeros(3)])
    dense.build((4,))
    with pytest.raises(ValueError, match=r"dense: set_weights expected 2 arrays .*\(4, 3\), \(3,\).*got 1"):
        dense.set_weights([np.zeros((4, 3))])
    with pytest.raises(ValueError, match=r"dense: set_weights: weight 0 should have shape \(4, 3\), got \(3, 4\)"):
        dense.set_weights([np.zeros((3, 4)), np.zeros(3)])
    before = dense.get_weights()
    with pytest.raises(ValueError):
        dense.set_weights([np.ones((4, 3)), np.ones(4)])
    for a, b in zip(before, dense.get_weights()):                           # nothing half-written
        np.testing.assert_array_equal(a, b)


def test_backward_checks_the_gradient_it_is_given():
    dense = L.Dense(3)
    with pytest.raises(ValueError, match="dense: backward called before forward"):
        dense.backward(np.zeros((2, 3)))
    dense.forward(np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"dense: backward expected a gradient of shape \(2, 3\).*got \(2, 4\)"):
        dense.backward(np.zeros((2, 4)))
    pool = L.MaxPooling2D(2)
    pool.forward(np.zeros((1, 4, 4, 2)))
    with pytest.raises(ValueError, match=r"max_pooling2d: backward expected .*\(1, 2, 2, 2\)"):
        pool.backward(np.zeros((1, 4, 4, 2)))
    # a float64 gradient given to a float32 layer comes back as float32
    assert dense.backward(np.ones((2, 3))).dtype == np.float32 and dense.grads[0].dtype == np.float32


# Conv2D(relu) -> MaxPooling2D(2) as one step (layers.conv_relu_pool_forward/backward)
FUSED_PAIRS = [  # (batch, input shape, filters, conv padding): im2col and Winograd convolutions, odd sizes
    (2, (8, 8, 1), 3, "valid"),        # conv 6x6 -> pool 3x3
    (3, (9, 7, 2), 4, "valid"),        # conv 7x5: odd last row and column in no window
    (2, (6, 6, 16), 5, "same"),        # Winograd conv 6x6 -> pool 3x3
    (1, (7, 7, 16), 2, "valid"),       # Winograd conv 5x5: odd edges
]


def fused_pair(batch, input_shape, filters, padding, dtype="float64", seed=0):
    conv = L.Conv2D(filters, 3, padding=padding, activation="relu", dtype=dtype)
    conv.build(input_shape)
    pool = L.MaxPooling2D(2, dtype=dtype)
    pool.build(conv.output_shape)
    rng = np.random.default_rng(seed)
    conv.set_weights([rng.standard_normal(p.shape) for p in conv.params])
    conv.need_input_grad = True
    return conv, pool, rng.standard_normal((batch,) + input_shape)


@pytest.mark.parametrize("pair", FUSED_PAIRS, ids=str)
def test_fused_conv_relu_pool_gradients(pair):
    # float64 central differences of L = sum(pool(conv(x)) * R) for x, the kernel and the bias
    conv, pool, x = fused_pair(*pair)
    assert L.fuses_with_pool(conv, pool)
    upstream = np.random.default_rng(5).standard_normal((x.shape[0],) + pool.output_shape)

    def loss(_=None):
        return float(np.sum(L.conv_relu_pool_forward(conv, pool, x) * upstream))

    loss()
    dx = L.conv_relu_pool_backward(conv, pool, upstream)
    analytic = [dx] + [g.copy() for g in conv.grads]
    numeric = [gradcheck.numerical_gradient(loss, x)] + [gradcheck.numerical_gradient(loss, p) for p in conv.params]
    for name, a, b in zip(("dx", "dkernel", "dbias"), analytic, numeric):
        assert rel_error(a, b) < TOL, name


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("pair", FUSED_PAIRS, ids=str)
def test_fused_conv_relu_pool_equals_the_two_layers(pair, dtype):
    # Same output bit for bit; same gradients to float rounding (only the bias sums' order differs)
    conv, pool, x = fused_pair(*pair, dtype=dtype, seed=1)
    upstream = np.random.default_rng(6).standard_normal((x.shape[0],) + pool.output_shape).astype(dtype)
    y = L.conv_relu_pool_forward(conv, pool, x).copy()
    fused = [L.conv_relu_pool_backward(conv, pool, upstream)] + [g.copy() for g in conv.grads]
    assert conv.output is None                                   # the conv's own output was never formed
    y_layers = pool.forward(conv.forward(x, training=True), training=True)
    layers = [conv.backward(pool.backward(upstream))] + [g.copy() for g in conv.grads]
    np.testing.assert_array_equal(y, y_layers)
    for a, b in zip(fused, layers):
        assert a.dtype == np.dtype(dtype) and rel_error(a, b) < (1e-12 if dtype == "float64" else 1e-6)


def test_which_pairs_are_fused():
    def pair(conv_kwargs=None, pool_kwargs=None, input_shape=(8, 8, 1)):
        conv = L.Conv2D(2, 3, **{"activation": "relu", **(conv_kwargs or {})})
        conv.build(input_shape)
        pool = L.MaxPooling2D(**{"pool_size": 2, **(pool_kwargs or {})})
        pool.build(conv.output_shape)
        return conv, pool

    assert L.fuses_with_pool(*pair())
    assert L.fuses_with_pool(*pair(pool_kwargs=dict(padding="same")))                   # 6x6: no padding needed
    assert not L.fuses_with_pool(*pair(pool_kwargs=dict(padding="same"), input_shape=(9, 9, 1)))  # 7x7: padded
    assert not L.fuses_with_pool(*pair(conv_kwargs=dict(activation=None)))
    assert not L.fuses_with_pool(*pair(conv_kwargs=dict(activation="softmax")))
    assert not L.fuses_with_pool(*pair(conv_kwargs=dict(use_bias=False)))
    assert not L.fuses_with_pool(*pair(pool_kwargs=dict(pool_size=3)))
    assert not L.fuses_with_pool(*pair(pool_kwargs=dict(strides=1)))
    conv, pool = pair()
    assert not L.fuses_with_pool(pool, conv) and not L.fuses_with_pool(conv, L.Flatten())


def test_fused_pair_leaves_out_the_conv_outputs_no_window_uses():
    # cnn_sparse's second conv: 13x13x64 -> 11x11, pooled to 5x5 from the top-left 10x10 only.
    # The fused pair computes those 10x10 (25 Winograd tiles per image, not 36); the result is
    # the two layers' result, and the input pixels that only reach row/column 11 get dL/dx = 0.
    conv, pool, x = fused_pair(2, (13, 13, 16), 4, "valid", dtype="float32", seed=4)
    assert conv._winograd and conv.output_shape == (11, 11, 4) and pool.output_shape == (5, 5, 4)
    y = L.conv_relu_pool_forward(conv, pool, x)
    assert conv._linear_size == (10, 10) and conv.v.shape == (16, 2 * 25, 16)
    upstream = np.ones((2, 5, 5, 4), np.float32)
    dx = L.conv_relu_pool_backward(conv, pool, upstream)
    assert not dx[:, 12, :, :].any() and not dx[:, :, 12, :].any()
    np.testing.assert_array_equal(y, pool.forward(conv.forward(x)))
    assert conv._linear_size == (11, 11)                        # the layer on its own computes all of it


def test_backward_after_a_fused_forward_says_what_to_do():
    conv, pool, x = fused_pair(*FUSED_PAIRS[0])
    L.conv_relu_pool_forward(conv, pool, x)
    with pytest.raises(RuntimeError, match="fused with the pooling layer"):
        conv.backward(np.ones((x.shape[0],) + conv.output_shape))
    L.conv_relu_pool_backward(conv, pool, np.ones((x.shape[0],) + pool.output_shape))   # the pair's own works
