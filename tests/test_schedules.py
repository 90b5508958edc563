"""Learning-rate schedules (tinycnn.schedules): their formulas, how an optimizer uses them, saving."""
import json
import math

import numpy as np
import pytest

import tinycnn
from tinycnn import callbacks, layers as L, optimizers as O, schedules as S, utils
from tinycnn.models import Sequential, load_model


def cosine(step, decay_steps, alpha):
    return (1 - alpha) * 0.5 * (1 + math.cos(math.pi * step / decay_steps)) + alpha


def test_cosine_decay_without_warmup():
    s = S.CosineDecay(0.1, decay_steps=10, alpha=0.2)
    for step in (0, 1, 5, 9, 10):
        assert s(step) == pytest.approx(0.1 * cosine(step, 10, 0.2), rel=1e-14)
    assert s(0) == pytest.approx(0.1) and s(10) == pytest.approx(0.02)
    assert s(25) == s(10)                                   # stays at alpha * initial
    assert S.CosineDecay(0.1, 10, warmup_steps=5)(3) == S.CosineDecay(0.1, 10)(3)   # no target: no warm-up


def test_cosine_decay_with_warmup_and_its_boundaries():
    s = S.CosineDecay(0.01, decay_steps=8, alpha=0.1, warmup_target=0.05, warmup_steps=4)
    assert s(0) == 0.01                                      # the warm-up starts at initial_learning_rate
    for step in (1, 2, 3):
        assert s(step) == pytest.approx((0.05 - 0.01) * step / 4 + 0.01, rel=1e-14)
    assert s(4) == pytest.approx(0.05, rel=1e-14)            # warm-up done: the decay starts at the target
    for step in (5, 8, 11, 12):
        assert s(step) == pytest.approx(0.05 * cosine(step - 4, 8, 0.1), rel=1e-14)
    assert s(12) == pytest.approx(0.005) and s(100) == s(12)


def test_exponential_and_piecewise_constant_decay():
    s = S.ExponentialDecay(0.1, decay_steps=4, decay_rate=0.5)
    assert [s(k) for k in (0, 2, 4, 8)] == pytest.approx([0.1, 0.1 * 0.5 ** 0.5, 0.05, 0.025])
    stairs = S.ExponentialDecay(0.1, decay_steps=4, decay_rate=0.5, staircase=True)
    assert [stairs(k) for k in (0, 3, 4, 7, 8)] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])
    p = S.PiecewiseConstantDecay([3, 6], [1.0, 0.5, 0.1])
    assert [p(k) for k in (0, 3, 4, 6, 7, 100)] == [1.0, 1.0, 0.5, 0.5, 0.1, 0.1]   # Keras's step <= boundary


def test_one_cycle_follows_pytorchs_one_cycle_lr():
    s = S.OneCycle(max_learning_rate=1.0, total_steps=10, pct_start=0.3, div_factor=25, final_div_factor=1e4)
    initial, final = 1.0 / 25, 1.0 / 25 / 1e4
    peak = 0.3 * 10 - 1                                        # PyTorch's end of phase 1: step 2
    anneal = lambda start, end, pct: end + (start - end) / 2 * (math.cos(math.pi * pct) + 1)   # noqa: E731
    assert s(0) == pytest.approx(initial, rel=1e-14)
    assert s(1) == pytest.approx(anneal(initial, 1.0, 1 / peak), rel=1e-14)
    assert s(2) == pytest.approx(1.0, rel=1e-14)
    for step in (3, 5, 8):
        assert s(step) == pytest.approx(anneal(1.0, final, (step - peak) / (9 - peak)), rel=1e-14)
    assert s(9) == pytest.approx(final, rel=1e-12) and s(50) == s(9)


def test_bad_arguments_give_clear_errors():
    with pytest.raises(ValueError, match="decay_steps must be > 0"):
        S.CosineDecay(0.1, 0)
    with pytest.raises(ValueError, match="initial_learning_rate"):
        S.CosineDecay("0.1", 10)
    with pytest.raises(ValueError, match="warmup_steps"):
        S.CosineDecay(0.1, 10, warmup_target=0.2, warmup_steps=-1)
    with pytest.raises(ValueError, match="1 less than"):
        S.PiecewiseConstantDecay([1, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="pct_start"):
        S.OneCycle(0.1, 100, pct_start=1.5)
    with pytest.raises(ValueError, match="more than one step"):
        S.OneCycle(0.1, 3, pct_start=0.3)
    with pytest.raises(ValueError, match="step must be a number >= 0"):
        S.CosineDecay(0.1, 10)(-1)
    with pytest.raises(ValueError, match="Unknown learning rate schedule 'os.system'"):
        S.deserialize({"class_name": "os.system", "config": {}})
    with pytest.raises(NotImplementedError, match="__call__"):
        S.LearningRateSchedule()(0)


def test_keras_names_reach_the_schedules():
    assert O.schedules.CosineDecay is S.CosineDecay
    assert tinycnn.schedules is S


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_an_optimizer_uses_the_schedule_at_its_iteration_count(dtype):
    schedule = S.CosineDecay(0.0, decay_steps=5, warmup_target=0.1, warmup_steps=3)
    opt = O.SGD(learning_rate=schedule)
    w = np.ones(4, dtype=dtype)
    g = np.full(4, 0.5, dtype=dtype)
    expected = w.copy()
    for step in range(10):
        assert opt.learning_rate == schedule(step)           # read as the number the next step uses
        opt.apply_gradients([(g, w)])
        expected -= g * dtype(schedule(step))
        assert opt.iterations == step + 1
    np.testing.assert_array_equal(w, expected)
    assert w.dtype == dtype


def test_adam_with_a_schedule_takes_the_scheduled_rate_into_alpha():
    schedule = S.ExponentialDecay(0.01, decay_steps=2, decay_rate=0.5)
    scheduled, by_hand = O.Adam(learning_rate=schedule), O.Adam(learning_rate=0.01)
    w1, w2 = np.ones(3), np.ones(3)
    rng = np.random.default_rng(0)
    for step in range(5):
        g = rng.standard_normal(3)
        by_hand.learning_rate = schedule(step)
        scheduled.apply_gradients([(g, w1)])
        by_hand.apply_gradients([(g, w2)])
    np.testing.assert_array_equal(w1, w2)


def test_a_scheduled_learning_rate_cannot_be_set_and_rejects_a_bad_value():
    opt = O.SGD(learning_rate=S.CosineDecay(0.1, 10))
    with pytest.raises(TypeError, match="not settable"):
        opt.learning_rate = 0.01
    opt.learning_rate = S.ExponentialDecay(0.1, 10, 0.5)        # another schedule: allowed, as in Keras
    assert opt.learning_rate == 0.1

    class Negative(S.LearningRateSchedule):
        def __call__(self, step):
            return -1.0
    with pytest.raises(ValueError, match="gave -1.0 at step 0"):
        O.SGD(learning_rate=Negative()).apply_gradients([(np.ones(2), np.ones(2))])


def test_learning_rate_scheduler_refuses_an_optimizer_with_a_schedule():
    utils.set_random_seed(0)
    model = Sequential([L.Dense(2, activation="softmax", input_shape=(3,))])
    model.compile(O.SGD(S.CosineDecay(0.1, 10)), "sparse_categorical_crossentropy", engine="reference")
    x, y = np.ones((4, 3), np.float32), np.array([0, 1, 0, 1])
    with pytest.raises(TypeError, match="cannot also be set per epoch"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[callbacks.LearningRateScheduler(lambda e, lr: lr)])


@pytest.mark.parametrize("schedule", [
    S.CosineDecay(0.001, 20, alpha=0.1, warmup_target=0.01, warmup_steps=3),
    S.ExponentialDecay(0.01, 5, 0.9, staircase=True),
    S.PiecewiseConstantDecay([2, 4], [0.01, 0.005, 0.001]),
    S.OneCycle(0.01, 40)])
def test_a_model_with_a_scheduled_optimizer_saves_and_resumes_exactly(schedule, tmp_path):
    utils.set_random_seed(1)
    model = Sequential([L.Dense(4, activation="relu", input_shape=(3,)), L.Dense(2, activation="softmax")])
    model.compile(O.AdamW(learning_rate=schedule, weight_decay=0.05), "sparse_categorical_crossentropy",
                  engine="reference")
    model.optimizer.exclude_from_weight_decay(var_names=["bias"])
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((16, 3)).astype(np.float32), rng.integers(0, 2, 16)
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False)
    model.save(tmp_path / "m.npz")
    header = json.dumps(model._compile_config())
    assert type(schedule).__name__ in header                    # the schedule, as JSON
    loaded = load_model(tmp_path / "m.npz")
    assert type(loaded.optimizer.schedule) is type(schedule)
    assert loaded.optimizer.schedule.get_config() == schedule.get_config()
    assert loaded.optimizer.learning_rate == model.optimizer.learning_rate
    for m in (model, loaded):
        m.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
