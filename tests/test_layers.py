"""Layers: gradients vs float64 central differences over many random configurations, forward
passes vs the definitions, Keras's shapes/names/weights, and clear errors for bad input."""
import json

import numpy as np
import pytest

from helpers import distinct_values, one_hot, rel_error
from tinycnn import gradcheck, layers as L, losses, utils

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
        output = layer.forward(x if isinstance(layer, L.Dense) else x[:, :3])
        assert layer.outputs_softmax and layer.logits.shape == (4, 3)
        loss = losses.get("sparse_categorical_crossentropy")
        _, grad_logits = loss.from_logits(y, layer.logits)
        fused = layer.backward_from_logits(grad_logits)
        fused_grads = [g.copy() for g in layer.grads]
        full = layer.backward(-one_hot(y, 3) / (4 * output))
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


# ---------------------------------------------------------------------------
# BatchNormalization
# ---------------------------------------------------------------------------
def naive_batch_norm(x, gamma, beta, mean, variance, epsilon):
    """y = gamma * (x - mean) / sqrt(variance + epsilon) + beta on the last axis, as the definition."""
    return gamma * (x - mean) / np.sqrt(variance + epsilon) + beta


def random_bn_weights(layer, rng):
    """Random gamma and beta (those present) and positive moving statistics, in get_weights's order."""
    trainable = [rng.standard_normal(p.shape) for p in layer.trainable_params]
    return trainable + [rng.standard_normal(layer.moving_mean.shape), rng.random(layer.moving_variance.shape) + 0.5]


@pytest.mark.parametrize("batch_shape", [(7, 3), (2, 5), (3, 5, 4, 2), (2, 3, 1, 5), (1, 4, 3, 3)])
@pytest.mark.parametrize("center,scale", [(True, True), (False, True), (True, False), (False, False)])
def test_batch_normalization_gradients_in_training(batch_shape, center, scale):
    layer = L.BatchNormalization(center=center, scale=scale, epsilon=0.01)
    layer.build(batch_shape[1:])
    rng = np.random.default_rng(20)
    layer.set_weights(random_bn_weights(layer, rng))
    report = gradcheck.check_layer(layer, 2 * rng.standard_normal(batch_shape) + 1)
    assert report.max_error < TOL, str(report)
    assert len(report.entries) == 1 + int(center) + int(scale)        # dL/dx and one per trainable param


def test_batch_normalization_gradient_after_an_inference_forward():
    # With training=False the moving statistics are constants: dL/dx = gamma * dy / sqrt(moving_variance + eps).
    layer = L.BatchNormalization(dtype="float64")
    layer.build((4, 3))
    rng = np.random.default_rng(21)
    layer.set_weights(random_bn_weights(layer, rng))
    x, upstream = rng.standard_normal((2, 4, 3)), rng.standard_normal((2, 4, 3))
    layer.forward(x, training=False)
    dx = layer.backward(upstream)
    analytic = [g.copy() for g in layer.grads]
    loss = lambda _: float(np.sum(layer.forward(x, training=False) * upstream))     # noqa: E731
    assert rel_error(dx, gradcheck.numerical_gradient(loss, x)) < TOL
    for grad, param in zip(analytic, layer.trainable_params):
        assert rel_error(grad, gradcheck.numerical_gradient(loss, param)) < TOL


def test_batch_normalization_training_output_and_moving_statistics_follow_the_definition():
    momentum, epsilon = 0.8, 1e-3
    layer = L.BatchNormalization(momentum=momentum, epsilon=epsilon, dtype="float64")
    layer.build((3, 2, 4))
    rng = np.random.default_rng(22)
    gamma, beta = rng.standard_normal(4), rng.standard_normal(4)
    layer.set_weights([gamma, beta, np.zeros(4), np.ones(4)])
    expected_mean, expected_variance = np.zeros(4), np.ones(4)
    for step in range(5):
        x = rng.standard_normal((6, 3, 2, 4)) * (step + 1) + step               # a different batch each step
        batch_mean, batch_variance = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))   # biased
        y = layer.forward(x, training=True)
        np.testing.assert_allclose(y, naive_batch_norm(x, gamma, beta, batch_mean, batch_variance, epsilon),
                                   rtol=1e-12, atol=1e-12)
        expected_mean = expected_mean * momentum + batch_mean * (1 - momentum)
        expected_variance = expected_variance * momentum + batch_variance * (1 - momentum)
        np.testing.assert_allclose(layer.moving_mean, expected_mean, rtol=1e-12)
        np.testing.assert_allclose(layer.moving_variance, expected_variance, rtol=1e-12)
    assert not np.allclose(layer.moving_mean, 0)                              # they did move
    x = rng.standard_normal((5, 3, 2, 4))
    before = layer.get_weights()
    y = layer.forward(x, training=False)                                      # inference: the moving statistics
    np.testing.assert_allclose(y, naive_batch_norm(x, gamma, beta, expected_mean, expected_variance, epsilon),
                               rtol=1e-12, atol=1e-12)
    for a, b in zip(before, layer.get_weights()):                             # ... which inference leaves alone
        np.testing.assert_array_equal(a, b)


def test_batch_normalization_weights_in_keras_order():
    bn = L.BatchNormalization()
    assert bn.name == "batch_normalization" and L.BatchNormalization().name == "batch_normalization_1"
    assert (bn.axis, bn.momentum, bn.epsilon, bn.center, bn.scale) == (-1, 0.99, 1e-3, True, True)
    bn.build((5, 5, 3))
    gamma, beta, moving_mean, moving_variance = bn.get_weights()
    assert all(w.shape == (3,) and w.dtype == np.float32 for w in bn.get_weights())
    assert gamma.tolist() == [1, 1, 1] and beta.tolist() == [0, 0, 0]
    assert moving_mean.tolist() == [0, 0, 0] and moving_variance.tolist() == [1, 1, 1]
    assert bn.trainable_params == bn.params[:2] and bn.non_trainable_params == bn.params[2:]
    assert [g.shape for g in bn.grads] == [(3,), (3,)] and bn.count_params() == 12
    assert bn.count_trainable_params() == 6
    assert [p is q for (_, p), q in zip(bn.grads_and_params(), (bn.gamma, bn.beta))] == [True, True]
    for center, scale, present in ((False, True, "gamma"), (True, False, "beta"), (False, False, None)):
        layer = L.BatchNormalization(center=center, scale=scale)
        layer.build((4,))
        assert len(layer.params) == 2 + (present is not None) and len(layer.grads) == len(layer.trainable_params)
        assert (layer.gamma is not None, layer.beta is not None) == (scale, center)
        assert layer.moving_mean is layer.params[-2] and layer.moving_variance is layer.params[-1]
    assert L.BatchNormalization(axis=3).build((2, 2, 5)) == (2, 2, 5)          # Keras counts the batch axis
    with pytest.raises(ValueError, match="only the last axis"):
        L.BatchNormalization(axis=1).build((2, 2, 5))
    for bad in (dict(momentum=1.5), dict(momentum="high"), dict(epsilon=0), dict(epsilon=-1e-3), dict(axis=1.0)):
        with pytest.raises(ValueError, match="momentum|epsilon|axis"):
            L.BatchNormalization(**bad)


# ---------------------------------------------------------------------------
# Dropout
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("rate", [0.0, 0.25, 0.6])
def test_dropout_gradients_in_training(rate):
    report = gradcheck.check_layer(L.Dropout(rate), np.random.default_rng(23).standard_normal((3, 5, 4)))
    assert report.max_error < TOL, str(report)


def test_dropout_keeps_the_expected_fraction_and_the_mean():
    utils.set_random_seed(24)
    rate = 0.3
    x = np.ones((400, 500), dtype=np.float32)
    y = L.Dropout(rate).forward(x, training=True)
    kept = y != 0
    assert abs(kept.mean() - (1 - rate)) < 0.01                 # 200,000 draws: the std of the fraction is 0.001
    np.testing.assert_allclose(y[kept], 1 / (1 - rate), rtol=1e-6)    # the kept values are scaled up...
    assert abs(y.mean() - 1) < 0.02                              # ... so the mean is kept
    assert y.dtype == np.float32


def test_dropout_backward_uses_the_forward_mask():
    utils.set_random_seed(25)
    layer = L.Dropout(0.5, dtype="float64")
    x = np.random.default_rng(25).standard_normal((6, 7)) + 3      # no zeros in x
    y = layer.forward(x, training=True)
    dx = layer.backward(np.ones_like(x))
    np.testing.assert_array_equal(dx == 0, y == 0)
    np.testing.assert_allclose(dx[y != 0], 2.0)


def test_dropout_is_deterministic_under_one_seed_and_an_identity_without_training():
    x = np.random.default_rng(26).standard_normal((8, 4, 4, 2)).astype(np.float32)
    outputs = []
    for _ in range(2):
        utils.set_random_seed(3)
        outputs.append(L.Dropout(0.4).forward(x, training=True))
    np.testing.assert_array_equal(outputs[0], outputs[1])
    utils.set_random_seed(4)
    assert not np.array_equal(L.Dropout(0.4).forward(x, training=True), outputs[0])
    layer = L.Dropout(0.4)
    state = utils.get_rng().bit_generator.state
    np.testing.assert_array_equal(layer.forward(x, training=False), x)
    np.testing.assert_array_equal(layer.backward(x), x)
    np.testing.assert_array_equal(L.Dropout(0.0).forward(x, training=True), x)     # rate 0 passes through
    assert utils.get_rng().bit_generator.state == state                           # and neither drew a number


def test_dropout_rate_must_be_in_zero_to_one():
    for bad in (-0.1, 1, 1.0, 1.5, "0.5", None, True):
        with pytest.raises(ValueError, match=r"dropout.*rate must be a number in \[0, 1\)"):
            L.Dropout(bad)
    assert L.Dropout(0).rate == 0.0 and L.Dropout(0.5).get_config()["rate"] == 0.5


# ---------------------------------------------------------------------------
# AveragePooling2D and GlobalAveragePooling2D
# ---------------------------------------------------------------------------
def naive_average_pool(x, pool, strides, padding):
    """Each window's mean over its cells inside x (TF's 'same' padding cells are not counted)."""
    n, h, w, c = x.shape
    (ph, pw), (sh, sw) = pool, strides
    if padding == "same":
        oh, ow = -(-h // sh), -(-w // sw)
        top = max((oh - 1) * sh + ph - h, 0) // 2
        left = max((ow - 1) * sw + pw - w, 0) // 2
    else:
        oh, ow, top, left = (h - ph) // sh + 1, (w - pw) // sw + 1, 0, 0
    y = np.zeros((n, oh, ow, c))
    for oy in range(oh):
        for ox in range(ow):
            rows = [r for r in range(oy * sh - top, oy * sh - top + ph) if 0 <= r < h]
            cols = [q for q in range(ox * sw - left, ox * sw - left + pw) if 0 <= q < w]
            y[:, oy, ox, :] = x[:, rows][:, :, cols].sum(axis=(1, 2)) / (len(rows) * len(cols))
    return y


@pytest.mark.parametrize("batch,input_shape,pool,strides,padding", random_pool_configs(seed=27))
def test_average_pool_gradients(batch, input_shape, pool, strides, padding):
    layer = L.AveragePooling2D(pool, strides, padding)
    report = gradcheck.check_layer(layer, np.random.default_rng(28).standard_normal((batch,) + input_shape))
    assert report.max_error < TOL, str(report)


@pytest.mark.parametrize("batch,input_shape,pool,strides,padding", random_pool_configs(seed=29))
def test_average_pool_forward_matches_the_definition(batch, input_shape, pool, strides, padding):
    layer = L.AveragePooling2D(pool, strides, padding, dtype="float64")
    x = np.random.default_rng(30).standard_normal((batch,) + input_shape) + 2     # away from 0: padding would show
    ps = (pool, pool) if isinstance(pool, int) else pool
    st = ps if strides is None else ((strides, strides) if isinstance(strides, int) else strides)
    y = layer.forward(x)
    assert y.shape == (batch,) + layer.output_shape
    assert rel_error(y, naive_average_pool(x, ps, st, padding)) < 1e-12


@pytest.mark.parametrize("keepdims", [False, True])
def test_global_average_pool_gradients_and_definition(keepdims):
    layer = L.GlobalAveragePooling2D(keepdims=keepdims, dtype="float64")
    x = np.random.default_rng(31).standard_normal((3, 5, 2, 4))
    y = layer.forward(x)
    expected = np.array([[x[n, :, :, c].sum() / 10 for c in range(4)] for n in range(3)])
    assert y.shape == ((3, 1, 1, 4) if keepdims else (3, 4))
    assert rel_error(y.reshape(3, 4), expected) < 1e-12
    report = gradcheck.check_layer(layer, x)
    assert report.max_error < TOL, str(report)


def test_new_layers_names_shapes_and_config_round_trip():
    made = [L.BatchNormalization(momentum=0.9, epsilon=1e-5, center=False), L.Dropout(0.2),
            L.AveragePooling2D(3, 2, "same"), L.GlobalAveragePooling2D(keepdims=True)]
    assert [l.name for l in made] == ["batch_normalization", "dropout", "average_pooling2d",
                                      "global_average_pooling2d"]
    assert [l.build((7, 6, 3)) for l in made] == [(7, 6, 3), (7, 6, 3), (4, 3, 3), (1, 1, 3)]
    assert L.AveragePooling2D().strides == (2, 2) and L.GlobalAveragePooling2D().build((4, 4, 5)) == (5,)
    for layer in made:
        config = json.loads(json.dumps(layer.get_config()))
        clone = L.LAYER_CLASSES[type(layer).__name__].from_config(config)
        assert clone.get_config() == layer.get_config()
    with pytest.raises(ValueError, match="average_pooling2d_2.*larger"):
        L.AveragePooling2D(3).build((2, 2, 1))
    with pytest.raises(ValueError, match="global_average_pooling2d_2.*rank 3"):
        L.GlobalAveragePooling2D().build((4, 4))
