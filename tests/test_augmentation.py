"""The augmentation layers (and Dropout, which shares their draw/apply contract): the identity at
inference, the right transforms in training, seeded draws, exact gradients, saving, fitting."""
import json

import numpy as np
import pytest

from tinycnn import gradcheck, layers as L, utils
from tinycnn.models import Sequential, load_model

SHAPE = (3, 7, 5, 2)          # odd sizes: a flip or a shift off by one shows


@pytest.fixture(autouse=True)
def fresh_names():
    L.reset_name_counters()


def images(shape=SHAPE, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def every_random_layer(**kwargs):
    """One of each layer that draws random numbers, with settings that make every draw count."""
    return [L.RandomFlip(**kwargs), L.RandomTranslation(0.4, (-0.5, 0.3), **kwargs),
            L.RandomErasing(0.8, value="random", **kwargs), L.Dropout(0.3, **kwargs)]


def binomial_bounds(n, p, sigmas=5):
    """[lo, hi] holding the count of a Binomial(n, p) but for a chance below 1e-6."""
    sd = np.sqrt(n * p * (1 - p))
    return n * p - sigmas * sd, n * p + sigmas * sd


# ---------------------------------------------------------------------------
# Inference: the identity
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("layer", every_random_layer(), ids=lambda l: type(l).__name__)
def test_inference_is_the_identity_and_draws_nothing(layer):
    x = images().astype(np.float32)
    original = x.copy()
    state = utils.get_rng().bit_generator.state
    y = layer.forward(x, training=False)
    np.testing.assert_array_equal(y, original)
    np.testing.assert_array_equal(layer.backward(original), original)
    assert utils.get_rng().bit_generator.state == state
    layer.forward(x, training=True)
    layer.backward(np.ones_like(x))
    np.testing.assert_array_equal(x, original)             # training never writes into the caller's array


def test_predict_with_augmentation_layers_equals_predict_without_them():
    utils.set_random_seed(1)
    plain = Sequential([L.Conv2D(3, 3, activation="relu", input_shape=(8, 8, 2)), L.Flatten(),
                        L.Dense(4, activation="softmax")])
    augmented = Sequential([L.RandomFlip(input_shape=(8, 8, 2)), L.RandomTranslation(0.3, 0.3),
                            L.RandomErasing(1.0), L.Conv2D(3, 3, activation="relu"), L.Dropout(0.5),
                            L.Flatten(), L.Dense(4, activation="softmax")])
    augmented.layers[3].set_weights(plain.layers[0].get_weights())
    augmented.layers[6].set_weights(plain.layers[2].get_weights())
    x = np.random.default_rng(1).random((10, 8, 8, 2)).astype(np.float32)
    np.testing.assert_array_equal(augmented.predict(x, verbose=0), plain.predict(x, verbose=0))


def test_every_random_layer_is_marked_and_others_are_not():
    assert all(layer.draws_random_numbers for layer in every_random_layer())
    assert not any(L.LAYER_CLASSES[name].draws_random_numbers
                   for name in ("Conv2D", "Dense", "Flatten", "BatchNormalization", "MaxPooling2D"))


# ---------------------------------------------------------------------------
# What each layer does in training
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["horizontal", "vertical", "horizontal_and_vertical"])
def test_random_flip_flips_about_half_the_images_the_right_way(mode):
    utils.set_random_seed(2)
    n = 4000
    x = images((n, 3, 4, 1), seed=2)
    layer = L.RandomFlip(mode)
    y = layer.forward(x, training=True)
    flip_h, flip_v = layer._drawn
    assert flip_h.dtype == bool and flip_v.dtype == bool and flip_h.shape == flip_v.shape == (n,)
    lo, hi = binomial_bounds(n, 0.5)
    for flips, wanted in ((flip_h, mode != "vertical"), (flip_v, mode != "horizontal")):
        assert lo < flips.sum() < hi if wanted else not flips.any()
    if mode == "horizontal_and_vertical":                       # independent: each pair ~ a quarter
        assert binomial_bounds(n, 0.25)[0] < (flip_h & flip_v).sum() < binomial_bounds(n, 0.25)[1]
    expected = x.copy()
    expected[flip_h] = expected[flip_h][:, :, ::-1]
    expected[flip_v] = expected[flip_v][:, ::-1]
    np.testing.assert_array_equal(y, expected)
    np.testing.assert_array_equal(y[flip_h & ~flip_v], x[flip_h & ~flip_v][:, :, ::-1])


def reference_shift(image, dy, dx, fill=0.0):
    """image (H, W, C) moved dy rows down and dx columns right, the uncovered pixels `fill`."""
    out = np.roll(image, (dy, dx), axis=(0, 1))
    if dy > 0:
        out[:dy] = fill
    elif dy < 0:
        out[dy:] = fill
    if dx > 0:
        out[:, :dx] = fill
    elif dx < 0:
        out[:, dx:] = fill
    return out


def test_random_translation_shifts_whole_pixels_within_the_factors():
    utils.set_random_seed(3)
    n, h, w = 2000, 10, 8
    x = images((n, h, w, 2), seed=3)
    layer = L.RandomTranslation(0.3, (-0.5, 0.2), fill_mode="constant", fill_value=-2.0)
    y = layer.forward(x, training=True)
    dy, dx = layer._drawn
    assert dy.dtype == dx.dtype == np.int64 and dy.shape == dx.shape == (n,)
    assert dy.min() == -3 and dy.max() == 3                       # round(0.3 * 10): both signs reached
    assert dx.min() == -4 and dx.max() == 2                        # round(-0.5 * 8), round(0.2 * 8)
    for i in range(0, n, 37):
        np.testing.assert_array_equal(y[i], reference_shift(x[i], dy[i], dx[i], fill=-2.0))


@pytest.mark.parametrize("fill_mode, pad_mode", [("nearest", "edge"), ("reflect", "symmetric"), ("wrap", "wrap")])
def test_random_translation_fill_modes_match_numpy_padding(fill_mode, pad_mode):
    utils.set_random_seed(4)
    n, h, w = 60, 6, 5
    x = images((n, h, w, 1), seed=4)
    layer = L.RandomTranslation(1.0, 1.0, fill_mode=fill_mode)
    y = layer.forward(x, training=True)
    for i, (dy, dx) in enumerate(zip(*layer._drawn)):
        padded = np.pad(x[i], ((h, h), (w, w), (0, 0)), mode=pad_mode)     # row r of x at row r + h
        np.testing.assert_array_equal(y[i], padded[h - dy:2 * h - dy, w - dx:2 * w - dx])


def test_random_erasing_erases_with_probability_p_one_rectangle_within_the_bounds():
    utils.set_random_seed(5)
    n, h, w, p = 4000, 20, 16, 0.6
    area, ratio = (0.05, 0.3), (0.5, 2.0)
    x = images((n, h, w, 3), seed=5) + 10                          # no pixel is 0 before erasing
    layer = L.RandomErasing(p, area=area, aspect_ratio=ratio)
    y = layer.forward(x, training=True)
    top, left, height, width = layer._drawn
    erased = height > 0
    lo, hi = binomial_bounds(n, p)
    assert lo < erased.sum() < hi
    assert np.array_equal(width > 0, erased) and (top + height <= h).all() and (left + width <= w).all()
    slack = (h + w) / 2                                            # rounding each side moves the area by less
    assert (height * width)[erased].min() >= area[0] * h * w - slack
    assert (height * width)[erased].max() <= area[1] * h * w + slack
    assert (height * width)[erased].std() > 5                      # areas do vary
    zeros = (y == 0).all(axis=3)
    np.testing.assert_array_equal(zeros.sum(axis=(1, 2)), height * width)     # exactly the rectangle...
    for i in np.flatnonzero(erased)[:50]:
        assert zeros[i, top[i]:top[i] + height[i], left[i]:left[i] + width[i]].all()   # ... in its place
    np.testing.assert_array_equal(y[~erased], x[~erased])
    assert top[erased].max() > 0 and left[erased].max() > 0      # not always in the corner


def test_random_erasing_random_values_fill_the_rectangle_only():
    utils.set_random_seed(6)
    x = np.full((200, 9, 9, 2), 5.0, dtype=np.float32)
    layer = L.RandomErasing(1.0, value="random")
    y = layer.forward(x, training=True)
    top, left, height, width, fill = layer._drawn
    assert fill.shape == x.shape and fill.dtype == np.float32 and (height > 0).all()
    changed = y != 5
    assert 0 <= y[changed].min() and y[changed].max() < 1 and abs(y[changed].mean() - 0.5) < 0.05
    np.testing.assert_array_equal(changed.all(axis=3).sum(axis=(1, 2)), height * width)


def test_random_erasing_leaves_an_image_alone_when_no_rectangle_fits():
    layer = L.RandomErasing(1.0, area=(0.9, 1.0), aspect_ratio=(8.0, 10.0))     # always too tall for 4 x 4
    x = images((50, 4, 4, 1))
    np.testing.assert_array_equal(layer.forward(x, training=True), x)
    assert (layer._drawn[2] == 0).all()


def test_dropout_keeps_its_fraction_and_mean_and_its_old_random_stream():
    utils.set_random_seed(7)
    rate, x = 0.3, np.ones((300, 400), dtype=np.float32)
    layer = L.Dropout(rate)
    y = layer.forward(x, training=True)
    kept = y != 0
    lo, hi = binomial_bounds(x.size, 1 - rate)
    assert lo < kept.sum() < hi and abs(y.mean() - 1) < 0.01
    utils.set_random_seed(7)
    np.testing.assert_array_equal(kept, utils.get_rng().random(x.shape) >= rate)   # one draw per value, as before
    np.testing.assert_array_equal(layer._drawn[0], kept)


# ---------------------------------------------------------------------------
# Seeds
# ---------------------------------------------------------------------------
def test_the_global_seed_makes_forward_passes_repeat_bit_for_bit():
    x = images()
    runs = []
    for seed in (8, 8, 9):
        utils.set_random_seed(seed)
        L.reset_name_counters()
        runs.append([layer.forward(x, training=True) for layer in every_random_layer() for _ in range(2)])
    for a, b, c in zip(*runs):
        np.testing.assert_array_equal(a, b)
    assert not all(np.array_equal(a, c) for a, c in zip(runs[0], runs[2]))


@pytest.mark.parametrize("index", range(4))
def test_a_layer_seed_gives_its_own_repeatable_stream(index):
    x = images((16, 7, 5, 2))
    outputs = []
    for seed in (11, 11, 12):
        layer = every_random_layer(seed=seed)[index]
        utils.set_random_seed(seed * 3)               # the global stream does not matter...
        outputs.append(layer.forward(x, training=True))
    np.testing.assert_array_equal(outputs[0], outputs[1])
    assert not np.array_equal(outputs[0], outputs[2])
    state = utils.get_rng().bit_generator.state
    layer.forward(x, training=True)
    assert utils.get_rng().bit_generator.state == state                    # ... and is left alone
    assert layer.get_config()["seed"] == 12


# ---------------------------------------------------------------------------
# The draw/apply contract the fast engine relies on
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("index", range(4))
def test_apply_to_two_halves_equals_apply_to_the_whole_batch(index):
    utils.set_random_seed(13)
    layer = every_random_layer()[index]
    x = images((11, 7, 5, 2), seed=13)
    layer.build(x.shape[1:])
    drawn = layer.draw(len(x))
    assert isinstance(drawn, tuple) and all(isinstance(a, np.ndarray) and len(a) == len(x) for a in drawn)
    whole = layer.apply(x, drawn)
    grad = images(whole.shape, seed=14)
    grad_whole = layer.backward(grad)
    halves, grad_halves = [], []
    for start, stop in ((0, 5), (5, 11)):
        halves.append(layer.apply(x[start:stop], tuple(a[start:stop] for a in drawn)))
        grad_halves.append(layer.backward(grad[start:stop]))
    np.testing.assert_array_equal(np.concatenate(halves), whole)
    np.testing.assert_array_equal(np.concatenate(grad_halves), grad_whole)
    utils.set_random_seed(13)
    np.testing.assert_array_equal(layer.forward(x, training=True), whole)       # forward = apply(draw)
    with pytest.raises(ValueError, match="slice the draws"):
        layer.apply(x[:4], drawn)


# ---------------------------------------------------------------------------
# Gradients: central differences in float64 with the draws held fixed
# ---------------------------------------------------------------------------
def fixed_draw_gradient_errors(layer, x):
    """dL/dx from backward vs central differences of L = sum(apply(x, drawn) * R), one draw."""
    layer.build(x.shape[1:])
    drawn = layer.draw(len(x))
    upstream = images(x.shape, seed=15, dtype=np.float64)
    layer.apply(x, drawn)
    grad = layer.backward(upstream.copy())
    numeric = gradcheck.numerical_gradient(lambda v: float(np.sum(layer.apply(v, drawn) * upstream)), x)
    return gradcheck.relative_error(grad, numeric)[0]


@pytest.mark.parametrize("layer", [
    L.RandomFlip(dtype="float64"), L.RandomFlip("vertical", dtype="float64"),
    L.RandomTranslation(0.5, 0.5, dtype="float64"),
    L.RandomTranslation(0.9, (-0.8, 0.8), fill_mode="nearest", dtype="float64"),
    L.RandomTranslation(0.9, 0.9, fill_mode="reflect", dtype="float64"),
    L.RandomTranslation((0.3, 0.9), 0.9, fill_mode="wrap", dtype="float64"),
    L.RandomErasing(1.0, dtype="float64"), L.RandomErasing(0.7, value="random", dtype="float64"),
    L.Dropout(0.4, dtype="float64")], ids=lambda l: l.name)
def test_gradients_match_central_differences_for_a_fixed_draw(layer):
    utils.set_random_seed(16)
    x = images(SHAPE, seed=16, dtype=np.float64)
    assert fixed_draw_gradient_errors(layer, x) < 1e-8


def test_gradcheck_checks_seeded_and_unseeded_layers_in_training():
    x = images(SHAPE, seed=17)
    for layer in every_random_layer() + every_random_layer(seed=3):
        report = gradcheck.check_layer(layer, x)
        assert report.max_error < 1e-6, str(report)


def test_backward_returns_none_for_a_first_layer_and_never_edits_its_gradient():
    x = images()
    for layer in every_random_layer():
        layer.forward(x, training=True)
        grad = images(seed=18)
        before = grad.copy()
        layer.backward(grad)
        np.testing.assert_array_equal(grad, before)
        layer.need_input_grad = False
        assert layer.backward(grad) is None


# ---------------------------------------------------------------------------
# Arguments, shapes, configs, saving
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("make, match", [
    (lambda: L.RandomFlip("diagonal"), "random_flip: mode must be one of"),
    (lambda: L.RandomTranslation(1.5, 0.1), "random_translation: height_factor must be a number in"),
    (lambda: L.RandomTranslation(0.1, (0.5, -0.5)), "width_factor .* lower <= upper"),
    (lambda: L.RandomTranslation(0.1, 0.1, fill_mode="mirror"), "fill_mode must be one of 'constant'"),
    (lambda: L.RandomErasing(1.2), "random_erasing: probability must be a number in \\[0, 1\\]"),
    (lambda: L.RandomErasing(area=(0.5, 0.2)), "area must be a pair with 0 < lower <= upper"),
    (lambda: L.RandomErasing(area=(0.1, 2)), "area must be a number in \\(0, 1\\]"),
    (lambda: L.RandomErasing(aspect_ratio=(0, 1)), "aspect_ratio must be a pair with 0 < lower"),
    (lambda: L.RandomErasing(value="noise"), "value must be a number"),
    (lambda: L.Dropout(0.5, seed=-1), "dropout: seed must be None or a non-negative integer"),
    (lambda: L.RandomFlip(seed=1.5), "seed must be None or a non-negative integer")])
def test_bad_arguments_are_named(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("cls", [L.RandomFlip, L.RandomErasing, lambda: L.RandomTranslation(0.1, 0.1)])
def test_image_layers_need_images_and_say_how_to_get_them(cls):
    with pytest.raises(ValueError, match=r"rank 3 \(height, width, channels\), got shape \(28, 28\).*reshape"):
        cls().build((28, 28))


def test_configs_round_trip_through_json():
    for layer in every_random_layer(seed=4) + [L.RandomFlip("vertical"), L.RandomTranslation(
            (-0.2, 0.1), 0.3, fill_mode="wrap", fill_value=1.5), L.RandomErasing(0.3, (0.1, 0.2), (1, 2), 0.5)]:
        config = json.loads(json.dumps(layer.get_config()))
        clone = L.LAYER_CLASSES[type(layer).__name__].from_config(config)
        assert clone.get_config() == layer.get_config()


def test_a_model_with_augmentation_layers_saves_and_loads(tmp_path):
    utils.set_random_seed(19)
    model = Sequential([L.RandomFlip("horizontal", seed=7, input_shape=(6, 6, 1)),
                        L.RandomTranslation(0.2, (-0.1, 0.3), fill_mode="nearest"),
                        L.RandomErasing(0.25, value="random", seed=8), L.Conv2D(2, 3), L.Dropout(0.2, seed=9),
                        L.Flatten(), L.Dense(3, activation="softmax")])
    model.save(tmp_path / "aug.npz")
    loaded = load_model(tmp_path / "aug.npz")
    assert [layer.get_config() for layer in loaded.layers] == [layer.get_config() for layer in model.layers]
    x = images((5, 6, 6, 1), seed=19)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------
def test_fit_with_augmentation_is_bit_identical_under_one_seed():
    x = np.random.default_rng(20).random((40, 8, 8, 1)).astype(np.float32)
    y = np.random.default_rng(20).integers(0, 3, 40)
    results = []
    for _ in range(2):
        utils.set_random_seed(21)
        model = Sequential([L.RandomFlip(input_shape=(8, 8, 1)), L.RandomTranslation(0.2, 0.2),
                            L.RandomErasing(), L.Conv2D(4, 3, activation="relu"), L.Dropout(0.2),
                            L.Flatten(), L.Dense(3, activation="softmax")])
        model.compile("adam", "sparse_categorical_crossentropy", engine="reference")
        history = model.fit(x, y, batch_size=8, epochs=3, verbose=0)
        results.append((history.history["loss"], model.get_weights()))
    assert results[0][0] == results[1][0] and all(np.isfinite(results[0][0]))
    for a, b in zip(results[0][1], results[1][1]):
        np.testing.assert_array_equal(a, b)
