"""SGD (momentum, Nesterov) and Adam against hand-computed steps of Keras's formulas."""
import numpy as np
import pytest

from tinycnn import optimizers as O


def run_steps(opt, w0, grads):
    w = w0.copy()
    for g in grads:
        opt.apply_gradients([(g, w)])
    return w


@pytest.fixture
def problem():
    rng = np.random.default_rng(0)
    return rng.standard_normal(5), [rng.standard_normal(5) for _ in range(4)]


def test_plain_sgd(problem):
    w0, grads = problem
    expected = w0.copy()
    for g in grads:
        expected = expected - 0.05 * g
    np.testing.assert_allclose(run_steps(O.SGD(learning_rate=0.05), w0, grads), expected, rtol=1e-14)


def test_sgd_momentum_and_nesterov(problem):
    w0, grads = problem
    for nesterov in (False, True):
        w, v = w0.copy(), np.zeros(5)
        for g in grads:
            v = 0.9 * v - 0.01 * g
            w = w + (0.9 * v - 0.01 * g if nesterov else v)
        opt = O.SGD(learning_rate=0.01, momentum=0.9, nesterov=nesterov)
        np.testing.assert_allclose(run_steps(opt, w0, grads), w, rtol=1e-14)
        assert opt.iterations == 4


def test_adam(problem):
    w0, grads = problem
    w, m, v = w0.copy(), np.zeros(5), np.zeros(5)
    lr, b1, b2, eps = 0.002, 0.8, 0.99, 1e-7
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        alpha = lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        w = w - alpha * m / (np.sqrt(v) + eps)
    opt = O.Adam(learning_rate=lr, beta_1=b1, beta_2=b2)
    np.testing.assert_allclose(run_steps(opt, w0, grads), w, rtol=1e-12)


def test_adam_first_step_moves_every_weight_by_about_lr():
    w = np.zeros(3, np.float32)
    O.Adam().apply_gradients([(np.array([0.1, -5.0, 100.0], np.float32), w)])
    np.testing.assert_allclose(w, [-0.001, 0.001, -0.001], rtol=1e-3)


def test_float32_params_are_updated_in_float32_in_place():
    w = np.ones((2, 3), np.float32)
    w_id = id(w)
    opt = O.SGD(0.1, momentum=0.5)
    opt.apply_gradients([(np.ones((2, 3), np.float64), w)])
    assert id(w) == w_id and w.dtype == np.float32
    assert opt.slots[0][0].dtype == np.float32
    np.testing.assert_array_equal(w, np.float32(1) - np.float32(0.1))


def test_old_lr_keyword_and_get():
    assert O.SGD(lr=0.02, momentum=0.9).learning_rate == 0.02
    assert O.Adam(lr=0.005).learning_rate == 0.005
    assert isinstance(O.get("sgd"), O.SGD) and O.get("sgd").learning_rate == 0.01
    adam = O.get("Adam")
    assert isinstance(adam, O.Adam) and (adam.learning_rate, adam.beta_1, adam.beta_2, adam.epsilon) == (0.001, 0.9, 0.999, 1e-7)
    assert O.get(adam) is adam
    clone = O.get(O.SGD(0.03, momentum=0.8, nesterov=True).get_config())
    assert isinstance(clone, O.SGD) and (clone.learning_rate, clone.momentum, clone.nesterov) == (0.03, 0.8, True)
    with pytest.raises(ValueError, match="Unknown optimizer"):
        O.get("rmsprop")


def test_learning_rate_is_a_settable_float():
    opt = O.SGD(0.1)
    opt.learning_rate = 0.05
    w = np.ones(2)
    opt.apply_gradients([(np.ones(2), w)])
    np.testing.assert_allclose(w, 0.95)
    with pytest.raises(ValueError, match="learning_rate"):
        opt.learning_rate = -1


@pytest.mark.parametrize("make", [lambda: O.SGD(0.1, momentum=0.9), lambda: O.Adam(0.01), lambda: O.SGD(0.1)])
def test_state_round_trip_continues_bit_identically(make):
    rng = np.random.default_rng(1)
    params = [rng.standard_normal((3, 2)).astype(np.float32), rng.standard_normal(2).astype(np.float32)]
    grads = [[rng.standard_normal(p.shape).astype(np.float32) for p in params] for _ in range(6)]
    straight, copy = make(), None
    ws = [p.copy() for p in params]
    for step, gs in enumerate(grads):
        straight.apply_gradients(zip(gs, ws))
        if step == 2:
            copy = make()
            copy.set_state(straight.get_state())
            copy_ws = [w.copy() for w in ws]
        elif step > 2:
            copy.apply_gradients(zip(gs, copy_ws))
    assert copy.iterations == straight.iterations == 6
    for a, b in zip(ws, copy_ws):
        np.testing.assert_array_equal(a, b)


def test_bad_use_raises_clear_errors():
    opt = O.SGD(0.1, momentum=0.9)
    w = np.zeros(3)
    with pytest.raises(ValueError, match=r"gradient 0 has shape \(4,\) but its parameter has shape \(3,\)"):
        opt.apply_gradients([(np.zeros(4), w)])
    opt.apply_gradients([(np.zeros(3), w)])
    with pytest.raises(ValueError, match="built for 1 parameters"):
        opt.apply_gradients([(np.zeros(3), w), (np.zeros(2), np.zeros(2))])
    with pytest.raises(ValueError, match="momentum"):
        O.SGD(momentum=1.5)
    with pytest.raises(ValueError, match="beta_1"):
        O.Adam(beta_1=1.0)
    with pytest.raises(ValueError, match="set_state"):
        O.Adam().set_state([np.array(1), np.zeros(3)])          # Adam needs m and v per parameter


@pytest.mark.parametrize("make", [lambda: O.SGD(0.1, momentum=0.9, nesterov=True), lambda: O.Adam(0.01)])
def test_non_contiguous_params_take_the_numpy_path_with_the_same_result(make):
    rng = np.random.default_rng(2)
    base = rng.standard_normal((4, 6)).astype(np.float32)
    strided = base.copy()[:, ::2]                         # a view: not C-contiguous
    contiguous = np.ascontiguousarray(strided)
    opt_a, opt_b = make(), make()
    for _ in range(3):
        g = rng.standard_normal((4, 3)).astype(np.float32)
        opt_a.apply_gradients([(g, strided)])
        opt_b.apply_gradients([(g, contiguous)])
    np.testing.assert_array_equal(strided, contiguous)


def test_restored_state_takes_the_params_float_type():
    opt = O.Adam()
    w = np.ones(3, np.float32)
    opt.set_state([np.array(2), np.full(3, 0.5), np.full(3, 0.25)])       # float64 slots, e.g. from a file
    opt.apply_gradients([(np.ones(3, np.float32), w)])
    assert opt.iterations == 3 and all(s.dtype == np.float32 for s in opt.slots[0])
    assert w.dtype == np.float32 and np.all(w < 1)


# ---------------------------------------------------------------------------
# Weight decay (Keras 3's decoupled decay: w = w - w * wd * lr, then the rule) and AdamW
# ---------------------------------------------------------------------------
def sgd_with_decay_by_hand(w, grads, lr, momentum, wd, dtype):
    f = np.dtype(dtype).type
    w, v = w.astype(dtype), np.zeros_like(w, dtype=dtype)
    for g in grads:
        g = g.astype(dtype)
        w = w - w * f(wd) * f(lr)
        v = f(momentum) * v - g * f(lr)
        w = w + v
    return w


def adam_with_decay_by_hand(w, grads, lr, wd, dtype, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
    f = np.dtype(dtype).type
    w = w.astype(dtype)
    m, v = np.zeros_like(w), np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        g = g.astype(dtype)
        w = w - w * f(wd) * f(lr)
        alpha = f(lr) * np.sqrt(f(1) - f(beta_2) ** f(t)) / (f(1) - f(beta_1) ** f(t))
        m = m + (g - m) * f(1 - beta_1)
        v = v + (g * g - v) * f(1 - beta_2)
        w = w - (m * alpha) / (np.sqrt(v) + f(epsilon))
    return w


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sgd_weight_decay_steps_as_by_hand(problem, dtype):
    w0, grads = problem
    opt = O.SGD(0.05, momentum=0.9, weight_decay=0.1)
    got = run_steps(opt, w0.astype(dtype), [g.astype(dtype) for g in grads])
    np.testing.assert_array_equal(got, sgd_with_decay_by_hand(w0, grads, 0.05, 0.9, 0.1, dtype))
    plain = run_steps(O.SGD(0.05, weight_decay=0.1), w0.astype(dtype), [g.astype(dtype) for g in grads])
    expected = w0.astype(dtype)
    for g in grads:
        expected = expected - expected * dtype(0.1) * dtype(0.05)
        expected = expected - g.astype(dtype) * dtype(0.05)
    np.testing.assert_array_equal(plain, expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adamw_and_adam_with_weight_decay_step_as_by_hand(problem, dtype):
    w0, grads = problem
    expected = adam_with_decay_by_hand(w0, grads, 0.01, 0.004, dtype)
    for opt in (O.AdamW(0.01), O.Adam(0.01, weight_decay=0.004)):
        got = run_steps(opt, w0.astype(dtype), [g.astype(dtype) for g in grads])
        assert got.dtype == dtype
        np.testing.assert_array_equal(got, expected)


def test_weight_decay_uses_the_scheduled_rate_of_the_step():
    from tinycnn.schedules import PiecewiseConstantDecay
    opt = O.SGD(PiecewiseConstantDecay([0], [0.1, 0.01]), weight_decay=0.5)
    w = np.ones(2)
    opt.apply_gradients([(np.zeros(2), w)])                     # step 0: lr 0.1
    opt.apply_gradients([(np.zeros(2), w)])                     # step 1: lr 0.01
    np.testing.assert_array_equal(w, (1 - 1 * 0.5 * 0.1) * (1 - 0.5 * 0.01))


def test_adamw_needs_a_weight_decay_and_bad_values_are_refused():
    with pytest.raises(ValueError, match="weight_decay=None"):
        O.AdamW(weight_decay=None)
    with pytest.raises(ValueError, match="weight_decay must be None or a non-negative number"):
        O.SGD(weight_decay=-0.1)
    assert O.get("adamw").weight_decay == 0.004
    config = O.AdamW(0.002, weight_decay=0.01).get_config()
    assert O.get(dict(config, class_name="AdamW")).get_config() == config
    assert "weight_decay" not in O.Adam().get_config()          # unchanged configs without decay


def test_exclude_from_weight_decay_by_layer_and_weight_name():
    from tinycnn import layers as L
    from tinycnn.models import Sequential
    model = Sequential([L.Dense(3, input_shape=(2,), name="hidden"), L.BatchNormalization(name="norm"),
                        L.Dense(2, activation="softmax", name="out")])
    opt = O.SGD(0.1, weight_decay=0.5)
    opt.exclude_from_weight_decay(var_names=["bias", "norm/gamma"])
    model.compile(opt, "sparse_categorical_crossentropy", engine="reference")
    assert model._trainable_weight_paths() == ["hidden/kernel", "hidden/bias", "norm/gamma", "norm/beta",
                                               "out/kernel", "out/bias"]
    before = [p.copy() for _, p in model.grads_and_params()]
    opt.apply_gradients([(np.zeros_like(p), p) for _, p in model.grads_and_params()])
    after = [p for _, p in model.grads_and_params()]
    decayed = [not np.array_equal(a, b) or not b.any() for a, b in zip(after, before)]
    assert opt._decay_mask == [True, False, False, True, True, False]
    for a, b, decays in zip(after, before, opt._decay_mask):
        np.testing.assert_array_equal(a, b - b * 0.5 * 0.1 if decays else b)
    assert all(decayed[i] for i in (0, 4))
    with pytest.raises(ValueError, match="before the optimizer is built"):
        opt.exclude_from_weight_decay(var_names=["kernel"])
    with pytest.raises(ValueError, match="var_list is not supported"):
        O.SGD(weight_decay=0.1).exclude_from_weight_decay(var_list=[np.ones(2)])
    lone = O.SGD(weight_decay=0.1)
    lone.exclude_from_weight_decay(var_names=["bias"])
    with pytest.raises(ValueError, match="needs the parameters' names"):
        lone.apply_gradients([(np.ones(2), np.ones(2))])
