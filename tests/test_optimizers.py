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
