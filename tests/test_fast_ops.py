"""The fast engine's ops against the textbook layers they stand for: the same outputs and
gradients on random configurations, float64 central differences for the fused and Winograd
passes, which pairs fuse, and Winograd's bookkeeping."""
import numpy as np
import pytest

from helpers import rel_error
from test_layers import naive_conv2d, random_conv_configs, random_pool_configs
from tinycnn import gradcheck, layers as L
from tinycnn.engines.fast import kernels, ops

TOL = 1e-6


@pytest.fixture(autouse=True)
def fresh_names():
    L.reset_name_counters()


def op_for(layer):
    """The fast op of one built layer, its gradients in the layer's own arrays."""
    (op,) = ops.make_plan([layer], [layer.grads])
    return op


def passes(run_forward, run_backward, grads, x, upstream):
    """[y, dL/dx, *dL/dparams] of one forward and one backward pass (copies)."""
    y = np.array(run_forward(x))
    dx = run_backward(upstream)
    return [y, None if dx is None else np.array(dx)] + [g.copy() for g in grads]


def assert_same(a_results, b_results, tol):
    for a, b in zip(a_results, b_results):
        if a is None or b is None:
            assert a is None and b is None
        else:
            assert a.dtype == b.dtype and rel_error(a, b) < tol


def built(layer, input_shape, seed=0):
    layer.build(input_shape)
    rng = np.random.default_rng(seed)
    layer.set_weights([rng.standard_normal(p.shape) for p in layer.params])
    return layer


# ---------------------------------------------------------------------------
# Every op gives its layer's results (float32 rounding apart)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cfg", random_conv_configs(16, seed=30), ids=lambda c: str(c))
def test_conv_op_equals_conv2d(cfg, dtype):
    cfg = dict(cfg)
    batch, input_shape = cfg.pop("batch"), cfg.pop("input_shape")
    layer = built(L.Conv2D(**cfg, dtype=dtype), input_shape)
    op = op_for(layer)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((batch,) + input_shape).astype(dtype)
    upstream = rng.standard_normal((batch,) + layer.output_shape).astype(dtype)
    fast = passes(op.forward, op.backward, layer.grads, x, upstream)
    textbook = passes(layer.forward, layer.backward, layer.grads, x, upstream)
    assert_same(fast, textbook, 1e-12 if dtype == "float64" else 1e-5)


@pytest.mark.parametrize("batch,input_shape,pool,strides,padding", random_pool_configs())
def test_pool_op_equals_maxpooling2d(batch, input_shape, pool, strides, padding):
    layer = built(L.MaxPooling2D(pool, strides, padding, dtype="float64"), input_shape)
    op = op_for(layer)
    rng = np.random.default_rng(2)
    x = np.round(rng.standard_normal((batch,) + input_shape), 1)     # ties too: the first maximum wins
    upstream = rng.standard_normal((batch,) + layer.output_shape)
    fast = passes(op.forward, op.backward, [], x, upstream)
    textbook = passes(layer.forward, layer.backward, [], x, upstream)
    for a, b in zip(fast, textbook):
        np.testing.assert_array_equal(a, b)                     # the same winners: the first maximum


@pytest.mark.parametrize("activation", [None, "relu", "softmax"])
@pytest.mark.parametrize("shape", [(7,), (3, 5)])
def test_dense_and_activation_ops_equal_their_layers(shape, activation):
    rng = np.random.default_rng(3)
    for layer in (L.Dense(4, activation=activation, dtype="float64"), L.Activation(activation or "linear", dtype="float64"),
                  L.Flatten(dtype="float64")):
        layer = built(layer, shape)
        op = op_for(layer)
        x = rng.standard_normal((5,) + shape)
        upstream = rng.standard_normal((5,) + layer.output_shape)
        assert_same(passes(op.forward, op.backward, layer.grads, x, upstream),
                    passes(layer.forward, layer.backward, layer.grads, x, upstream), 1e-12)
        if layer.outputs_softmax:
            op.forward(x)
            layer.forward(x)
            assert_same(passes(lambda _: op.logits, op.backward_from_logits, layer.grads, x, upstream),
                        passes(lambda _: layer.logits, layer.backward_from_logits, layer.grads, x, upstream), 1e-12)


def test_a_layer_the_engine_does_not_know_runs_its_own_passes_on_a_copy_for_the_second_half():
    class Scale(L.Layer):
        def forward(self, x, training=False):
            self.calls = getattr(self, "calls", 0) + 1
            return 2 * self._check_input(x)

        def backward(self, grad_out):
            return 2 * self._check_grad(grad_out)

    layer = built(Scale(), (3,))
    first, second = ops.make_plan([layer], [layer.grads])[0], ops.make_plan([layer], [[]])[0]
    assert first.layer is layer and second.layer is not layer
    first.forward(np.ones((2, 3)))
    second.forward(np.ones((4, 3)))
    assert layer.calls == 1 and second.layer.calls == 1          # each its own caches (and counter)
    assert second.layer.grads is not layer.grads
    assert second.backward(np.ones((4, 3))).shape == (4, 3)


# ---------------------------------------------------------------------------
# Winograd's convolution
# ---------------------------------------------------------------------------
WINOGRAD_CONFIGS = [  # 3x3, stride 1, 16+ channels: the fast engine takes Winograd's way (kernels.winograd_*)
    dict(batch=2, input_shape=(13, 13, 16), filters=8, padding="valid", activation="relu"),
    dict(batch=3, input_shape=(7, 6, 20), filters=3, padding="same", activation=None),
    dict(batch=1, input_shape=(5, 9, 16), filters=4, padding="same", activation="softmax", use_bias=False),
    dict(batch=2, input_shape=(3, 3, 17), filters=2, padding="valid", activation="linear"),
]


def winograd_op(cfg, dtype="float64", seed=21):
    """(layer, its op, x) for one of WINOGRAD_CONFIGS, with random weights (non-zero bias)."""
    cfg = dict(cfg)
    batch, input_shape = cfg.pop("batch"), cfg.pop("input_shape")
    layer = built(L.Conv2D(**cfg, kernel_size=3, dtype=dtype), input_shape, seed)
    layer.need_input_grad = True
    rng = np.random.default_rng(seed + 1)
    return layer, op_for(layer), rng.standard_normal((batch,) + input_shape).astype(dtype)


def numeric_check(forward, backward, params, x, upstream):
    """float64 central differences of L = sum(forward(x) * upstream) for x and each of params
    against backward(upstream)'s dL/dx and the gradients it leaves (a callable giving them)."""
    def loss(_=None):
        return float(np.sum(forward(x) * upstream))

    loss()
    dx = backward(upstream)
    analytic = [dx] + [g.copy() for g in params[1]()]
    numeric = [gradcheck.numerical_gradient(loss, x)] + [gradcheck.numerical_gradient(loss, p) for p in params[0]]
    for i, (a, b) in enumerate(zip(analytic, numeric)):
        assert rel_error(a, b) < TOL, f"array {i}"


@pytest.mark.parametrize("cfg", WINOGRAD_CONFIGS, ids=lambda c: str(c))
def test_winograd_gradients(cfg):
    layer, op, x = winograd_op(cfg)
    assert op.winograd
    upstream = np.random.default_rng(4).standard_normal((x.shape[0],) + layer.output_shape)
    numeric_check(op.forward, op.backward, (layer.params, lambda: layer.grads), x, upstream)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("cfg", WINOGRAD_CONFIGS, ids=lambda c: str(c))
def test_winograd_gives_the_products_results(cfg, dtype, monkeypatch):
    # The same op with Winograd switched off (im2col and one product) gives the same
    # outputs, input gradient and weight gradients, to float rounding.
    calls = []
    winograd_input = kernels.winograd_input
    monkeypatch.setattr(kernels, "winograd_input", lambda *a, **kw: calls.append(1) or winograd_input(*a, **kw))
    layer, op, x = winograd_op(cfg, dtype)
    upstream = np.random.default_rng(22).standard_normal((x.shape[0],) + layer.output_shape).astype(dtype)
    results = []
    for winograd in (True, False):
        op.winograd = winograd
        results.append(passes(op.forward, op.backward, layer.grads, x, upstream))
        assert bool(calls) == winograd                  # tiles made (forward, and again backward) only Winograd's way
        calls.clear()
    if cfg["activation"] in (None, "linear"):
        bias = layer.params[1] if layer.use_bias else 0.0
        exact = naive_conv2d(x.astype(np.float64), layer.params[0].astype(np.float64), bias, (1, 1), cfg["padding"])
        assert rel_error(results[0][0], exact) < (1e-12 if dtype == "float64" else 1e-6)
    assert_same(results[0], results[1], 1e-12 if dtype == "float64" else 1e-5)


@pytest.mark.parametrize("cfg", WINOGRAD_CONFIGS[:2], ids=lambda c: str(c))
def test_winograd_in_pieces_of_the_batch_gives_the_whole_batchs_results(cfg, monkeypatch):
    """ops.WINOGRAD_PIECE_BYTES so small that each image is a piece of its own: the same outputs,
    dL/dx and dL/dkernel as the whole batch at once; and backward, which makes each piece's
    tiles again from the cached x, can run twice on one forward pass."""
    cfg = dict(cfg, batch=5)
    layer, op, x = winograd_op(cfg)
    upstream = np.random.default_rng(22).standard_normal((x.shape[0],) + layer.output_shape)
    whole = passes(op.forward, op.backward, layer.grads, x, upstream)
    pieces = []
    monkeypatch.setattr(ops, "WINOGRAD_PIECE_BYTES", 1)
    winograd_output = kernels.winograd_output
    monkeypatch.setattr(kernels, "winograd_output", lambda m, n, *a, **kw: pieces.append(n) or winograd_output(m, n, *a, **kw))
    in_pieces = passes(op.forward, op.backward, layer.grads, x, upstream)
    assert pieces == [1] * 5
    assert_same(whole, in_pieces, 1e-12)
    assert_same(in_pieces[1:], [np.array(op.backward(upstream))] + [g.copy() for g in layer.grads], 1e-12)


@pytest.mark.parametrize("input_shape,kernel_size,strides", [((9, 9, 15), 3, 1), ((9, 9, 16), 3, 2), ((9, 9, 16), 5, 1),
                                                             ((28, 28, 1), 3, 1)])
def test_the_product_where_winograd_does_not_fit(input_shape, kernel_size, strides, monkeypatch):
    monkeypatch.setattr(kernels, "winograd_input", lambda *a: pytest.fail("Winograd on a conv it does not fit"))
    layer = L.Conv2D(4, kernel_size, strides)
    layer.build(input_shape)
    op = op_for(layer)
    assert not op.winograd
    x = np.random.default_rng(2).standard_normal((2,) + input_shape).astype(np.float32)
    expected = naive_conv2d(x, layer.params[0].astype(np.float64), layer.params[1], (strides, strides), "valid")
    assert rel_error(op.forward(x, training=True), expected) < 1e-5


# ---------------------------------------------------------------------------
# Conv2D(relu) -> MaxPooling2D(2) as one op
# ---------------------------------------------------------------------------
FUSED_PAIRS = [  # (batch, input shape, filters, conv padding): im2col and Winograd convolutions, odd sizes
    (2, (8, 8, 1), 3, "valid"),        # conv 6x6 -> pool 3x3
    (3, (9, 7, 2), 4, "valid"),        # conv 7x5: odd last row and column in no window
    (2, (6, 6, 16), 5, "same"),        # Winograd conv 6x6 -> pool 3x3
    (1, (7, 7, 16), 2, "valid"),       # Winograd conv 5x5: odd edges
]


def fused_pair(batch, input_shape, filters, padding, dtype="float64", seed=0):
    """(conv, pool, their ConvReluPoolOp, x)."""
    conv = built(L.Conv2D(filters, 3, padding=padding, activation="relu", dtype=dtype), input_shape, seed)
    pool = L.MaxPooling2D(2, dtype=dtype)
    pool.build(conv.output_shape)
    conv.need_input_grad = True
    (op,) = ops.make_plan([conv, pool, L.Flatten()], [conv.grads, [], []])[:1]
    assert isinstance(op, ops.ConvReluPoolOp)
    return conv, pool, op, np.random.default_rng(seed).standard_normal((batch,) + input_shape).astype(dtype)


@pytest.mark.parametrize("pair", FUSED_PAIRS, ids=str)
def test_fused_conv_relu_pool_gradients(pair):
    conv, pool, op, x = fused_pair(*pair)
    upstream = np.random.default_rng(5).standard_normal((x.shape[0],) + pool.output_shape)
    numeric_check(op.forward, op.backward, (conv.params, lambda: conv.grads), x, upstream)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("pair", FUSED_PAIRS, ids=str)
def test_fused_conv_relu_pool_equals_the_two_layers(pair, dtype):
    conv, pool, op, x = fused_pair(*pair, dtype=dtype, seed=1)
    upstream = np.random.default_rng(6).standard_normal((x.shape[0],) + pool.output_shape).astype(dtype)
    fused = passes(op.forward, op.backward, conv.grads, x, upstream)
    textbook = passes(lambda v: pool.forward(conv.forward(v, training=True), training=True),
                      lambda g: conv.backward(pool.backward(g)), conv.grads, x, upstream)
    assert_same(fused, textbook, 1e-12 if dtype == "float64" else 1e-5)


def test_which_pairs_are_fused():
    def pair(conv_kwargs=None, pool_kwargs=None, input_shape=(8, 8, 1)):
        conv = L.Conv2D(2, 3, **{"activation": "relu", **(conv_kwargs or {})})
        conv.build(input_shape)
        pool = L.MaxPooling2D(**{"pool_size": 2, **(pool_kwargs or {})})
        pool.build(conv.output_shape)
        return conv, pool

    assert ops.fuses_with_pool(*pair())
    assert ops.fuses_with_pool(*pair(pool_kwargs=dict(padding="same")))                   # 6x6: no padding needed
    assert not ops.fuses_with_pool(*pair(pool_kwargs=dict(padding="same"), input_shape=(9, 9, 1)))  # 7x7: padded
    assert not ops.fuses_with_pool(*pair(conv_kwargs=dict(activation=None)))
    assert not ops.fuses_with_pool(*pair(conv_kwargs=dict(activation="softmax")))
    assert not ops.fuses_with_pool(*pair(conv_kwargs=dict(use_bias=False)))
    assert not ops.fuses_with_pool(*pair(pool_kwargs=dict(pool_size=3)))
    assert not ops.fuses_with_pool(*pair(pool_kwargs=dict(strides=1)))
    conv, pool = pair()
    assert not ops.fuses_with_pool(pool, conv) and not ops.fuses_with_pool(conv, L.Flatten())
    plan = ops.make_plan([conv, pool], [conv.grads, []])          # a pair that ends the model stays two ops
    assert [type(op) for op in plan] == [ops.ConvOp, ops.PoolOp]


def test_fused_pair_leaves_out_the_conv_outputs_no_window_uses():
    # cnn_sparse's second conv: 13x13x64 -> 11x11, pooled to 5x5 from the top-left 10x10 only.
    # The fused op computes those 10x10 (25 Winograd tiles per image, not 36); the result is
    # the two layers' result, and the input pixels that only reach row/column 11 get dL/dx = 0.
    conv, pool, op, x = fused_pair(2, (13, 13, 16), 4, "valid", dtype="float32", seed=4)
    assert op.conv.winograd and conv.output_shape == (11, 11, 4) and pool.output_shape == (5, 5, 4)
    y = op.forward(x)
    assert op.conv.linear_size == (10, 10) and kernels.winograd_tiles(*op.conv.linear_size) == (5, 5)
    dx = op.backward(np.ones((2, 5, 5, 4), np.float32))
    assert not dx[:, 12, :, :].any() and not dx[:, :, 12, :].any()
    assert rel_error(y, pool.forward(conv.forward(x))) < 1e-5


# ---------------------------------------------------------------------------
# BatchNormalization (with a ReLU folded in): one pass, and two halves meeting in the middle
# ---------------------------------------------------------------------------
BATCHNORM_CASES = [dict(), dict(scale=False), dict(center=False), dict(scale=False, center=False),
                   dict(momentum=0.5, epsilon=0.1)]


def batchnorm_and_op(input_shape, dtype, relu, settings, seed=0):
    """A built BatchNormalization with random weights, and its op (with a ReLU after it, if relu)."""
    layer = L.BatchNormalization(**settings, dtype=dtype)
    layer.build(input_shape)
    rng = np.random.default_rng(seed)
    layer.set_weights([rng.standard_normal(p.shape) if i < len(layer.trainable_params) else rng.random(p.shape) + 0.5
                       for i, p in enumerate(layer.params)])
    layers = [layer, L.ReLU(dtype=dtype), L.Flatten(dtype=dtype)] if relu else [layer]
    for other in layers[1:]:
        other.build(input_shape)
    return layers, ops.make_plan(layers, [lay.grads for lay in layers])[0]


def textbook_passes(layers, x, upstream, training):
    """[y, dL/dx, *grads, *moving statistics] of the textbook layers (the BN, and its ReLU)."""
    y = x
    for layer in layers[:2]:
        y = layer.forward(y, training)
    grad = upstream
    for layer in reversed(layers[:2]):
        grad = layer.backward(grad)
    return [y, grad] + [g.copy() for g in layers[0].grads] + [p.copy() for p in layers[0].non_trainable_params]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("settings", BATCHNORM_CASES, ids=str)
def test_batchnorm_op_equals_its_layers(settings, training, relu, dtype):
    input_shape = (3, 5, 4)
    layers, op = batchnorm_and_op(input_shape, dtype, relu, settings)
    assert isinstance(op, ops.BatchNormOp) and op.layers == (2 if relu else 1)
    start = [p.copy() for p in layers[0].params]
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((7,) + input_shape) * 3 + 1).astype(dtype)
    upstream = rng.standard_normal(x.shape).astype(dtype)
    fast = [np.array(op.forward(x, training)), np.array(op.backward(upstream))]
    fast += [g.copy() for g in layers[0].grads] + [p.copy() for p in layers[0].non_trainable_params]
    layers[0].set_weights(start)                       # the moving statistics as before the op's step
    assert_same(fast, textbook_passes(layers, x, upstream, training), 1e-10 if dtype == "float64" else 2e-4)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("settings", BATCHNORM_CASES[:3], ids=str)
def test_batchnorm_op_in_two_halves_that_meet_equals_one_pass(settings, relu):
    # What FastEngine._train_in_synced_halves does: each half its sums, the batch's statistics
    # from both, each half normalised with them; backward likewise.
    input_shape = (4, 3, 5)
    (layer, *_), whole = batchnorm_and_op(input_shape, "float64", relu, settings)
    start = [p.copy() for p in layer.params]
    halves = [ops.BatchNormOp(layer, [np.zeros_like(g) for g in layer.grads], relu) for _ in range(2)]
    rng = np.random.default_rng(2)
    x = rng.standard_normal((9,) + input_shape) * 2 - 1
    upstream = rng.standard_normal(x.shape)
    parts = (slice(0, 5), slice(5, 9))
    statistics = halves[0].statistics([op.batch_sums(x[part]) for op, part in zip(halves, parts)])
    y = np.concatenate([op.normalize(*statistics) for op in halves])
    means = halves[0].backward_totals([op.backward_sums(upstream[part]) for op, part in zip(halves, parts)])
    dx = np.concatenate([op.backward_input(means) for op in halves])
    grads = [a + b for a, b in zip(halves[0].grads, halves[1].grads)]
    moving = [p.copy() for p in layer.non_trainable_params]
    layer.set_weights(start)
    expected = [whole.forward(x, training=True), whole.backward(upstream)]
    for a, b in zip([y, dx] + grads + moving, expected + list(layer.grads) + list(layer.non_trainable_params)):
        assert rel_error(a, b) < 1e-12


def test_batchnorm_gradients_through_the_op_match_central_differences():
    # The op's dL/dx and dL/dgamma, dL/dbeta (in training, with the ReLU) against float64
    # central differences of sum(upstream * op.forward(x)), on odd shapes.
    (layer, *_), op = batchnorm_and_op((3, 5, 3), "float64", True, {})
    rng = np.random.default_rng(4)
    x = rng.standard_normal((5, 3, 5, 3))
    upstream = rng.standard_normal(x.shape)
    loss = lambda _: float((upstream * op.forward(x, training=True)).sum())   # noqa: E731
    op.forward(x, training=True)
    dx = op.backward(upstream)
    grads = [g.copy() for g in layer.grads]
    assert rel_error(dx, gradcheck.numerical_gradient(loss, x)) < 1e-6
    for grad, param in zip(grads, layer.trainable_params):
        assert rel_error(grad, gradcheck.numerical_gradient(loss, param)) < 1e-6


def test_which_batchnorm_relu_pairs_fuse():
    def plan(*layers):
        for layer in layers:
            layer.build((4, 4, 2))
        return [type(op).__name__ for op in ops.make_plan(list(layers), [lay.grads for lay in layers])]

    class OwnBatchNorm(L.BatchNormalization):
        def forward(self, x, training=False):
            return super().forward(x, training)

    assert plan(L.BatchNormalization(), L.ReLU(), L.Flatten()) == ["BatchNormOp", "FlattenOp"]
    assert plan(L.BatchNormalization(), L.Activation("relu"), L.Flatten()) == ["BatchNormOp", "FlattenOp"]
    assert plan(L.BatchNormalization(), L.Activation("linear"), L.Flatten()) == ["BatchNormOp", "ActivationOp",
                                                                               "FlattenOp"]
    assert plan(L.BatchNormalization(), L.ReLU()) == ["BatchNormOp", "ActivationOp"]      # the model's last layer
    assert plan(OwnBatchNorm(), L.ReLU(), L.Flatten()) == ["LayerOp", "ActivationOp", "FlattenOp"]
