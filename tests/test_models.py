"""Sequential: building, compile, fit (on real Fashion-MNIST images), evaluate, predict,
summary, layer outputs, save/load round trips, reproducibility, the NaN guard, Ctrl-C and
the checks on what the user passes."""
import os
import subprocess
import sys
import warnings
import signal

import numpy as np
import pytest

from tinycnn import callbacks, layers, utils
from tinycnn.datasets import fashion_mnist
from tinycnn.layers import Conv2D, Dense, Flatten, MaxPooling2D
from tinycnn.models import Sequential, load_model
from tinycnn.optimizers import SGD, Adam


# ---------------------------------------------------------------------------
# Data and small models
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data():
    """3,000 real training and 1,000 real test images, float32 NHWC in [0, 1], integer labels."""
    (x_train, y_train), (x_test, y_test) = fashion_mnist.load_data(download=False)
    prep = lambda x: (x.reshape(-1, 28, 28, 1) / np.float32(255)).astype(np.float32)
    return prep(x_train[:3000]), y_train[:3000].astype(np.int64), prep(x_test[:1000]), y_test[:1000].astype(np.int64)


def dense_model(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=("accuracy",), units=32):
    """A small, fast model: Flatten - Dense(units, relu) - Dense(10, softmax) on (28, 28, 1)."""
    model = Sequential([Flatten(input_shape=(28, 28, 1)), Dense(units, activation="relu"),
                        Dense(10, activation="softmax")])
    model.compile(optimizer=optimizer, loss=loss, metrics=None if metrics is None else list(metrics))
    return model


def small_cnn(optimizer=None):
    """Conv2D(4, 3) - MaxPool 2 - Flatten - Dense 10 softmax: a CNN small enough for tests."""
    model = Sequential([Conv2D(4, (3, 3), activation="relu", input_shape=(28, 28, 1)), MaxPooling2D((2, 2)),
                        Flatten(), Dense(10, activation="softmax")])
    model.compile(optimizer=optimizer or SGD(learning_rate=0.05, momentum=0.9),
                  loss="categorical_crossentropy", metrics=["accuracy"])
    return model


def same_weights(a, b):
    return len(a) == len(b) and all(np.array_equal(u, v) for u, v in zip(a, b))


# ---------------------------------------------------------------------------
# Learning on real data
# ---------------------------------------------------------------------------
def test_dense_model_learns_fashion_mnist_in_one_epoch(data):
    x, y, x_test, y_test = data
    utils.set_random_seed(0)
    model = dense_model()
    loss_before, acc_before = model.evaluate(x_test, y_test, verbose=0)
    history = model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    loss_after, acc_after = model.evaluate(x_test, y_test, verbose=0)
    assert loss_after < loss_before - 0.8          # about 2.3 (chance) -> about 0.8
    assert acc_after > 0.65                        # chance is 0.10
    assert history.history["loss"][0] < loss_before
    assert 0.3 < history.history["accuracy"][0] <= 1


def test_cnn_learns_with_one_hot_labels(data):
    x, y, x_test, y_test = data
    utils.set_random_seed(1)
    model = small_cnn()
    y_onehot = utils.to_categorical(y[:1500], 10)
    loss_before, _ = model.evaluate(x_test[:500], utils.to_categorical(y_test[:500], 10), verbose=0)
    model.fit(x[:1500], y_onehot, epochs=1, batch_size=32, verbose=0)
    loss_after, acc_after = model.evaluate(x_test[:500], utils.to_categorical(y_test[:500], 10), verbose=0)
    assert loss_after < loss_before - 0.8
    assert acc_after > 0.6


def test_history_keys_lengths_and_params(data):
    x, y, x_test, y_test = data
    model = dense_model(units=8)
    history = model.fit(x[:200], y[:200], epochs=3, batch_size=64, validation_data=(x_test[:100], y_test[:100]),
                        verbose=0)
    assert model.history is history
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == 3 for v in history.history.values())
    assert history.epoch == [0, 1, 2]
    assert history.params == {"verbose": 0, "epochs": 3, "steps": 4}    # ceil(200 / 64)
    # val metrics are those evaluate gives after the last epoch
    assert history.history["val_loss"][-1] == pytest.approx(model.evaluate(x_test[:100], y_test[:100],
                                                                           batch_size=64, verbose=0)[0], rel=1e-6)
    # without metrics: only the loss
    plain = dense_model(metrics=None, units=8)
    assert set(plain.fit(x[:50], y[:50], verbose=0).history) == {"loss"}
    assert isinstance(plain.evaluate(x[:50], y[:50], verbose=0), float)


def test_reported_loss_is_the_sample_weighted_running_mean(data):
    """fit's epoch loss = the batches' losses (before each step) weighted by their sizes,
    including the smaller last batch, as Keras reports it; batch logs are running means."""
    x, y = data[0][:100], data[1][:100]
    utils.set_random_seed(3)
    model = dense_model(optimizer=SGD(learning_rate=0.1), units=8)
    twin = dense_model(optimizer=SGD(learning_rate=0.1), units=8)
    twin.set_weights(model.get_weights())

    batch_logs = []

    class Recorder(callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            batch_logs.append(dict(logs))

    history = model.fit(x, y, batch_size=32, shuffle=False, verbose=0, callbacks=[Recorder()])
    sizes = [32, 32, 32, 4]
    results = [twin.train_on_batch(x[i:i + s], y[i:i + s]) for i, s in zip([0, 32, 64, 96], sizes)]
    losses = np.array([r[0] for r in results])
    accuracies = np.array([r[1] for r in results])
    assert history.history["loss"][0] == pytest.approx(np.dot(losses, sizes) / 100, rel=1e-12)
    assert history.history["accuracy"][0] == pytest.approx(np.dot(accuracies, sizes) / 100, rel=1e-12)
    assert batch_logs[1]["loss"] == pytest.approx(losses[:2].mean(), rel=1e-12)
    assert len(batch_logs) == 4
    assert same_weights(model.get_weights(), twin.get_weights())


def test_validation_split_takes_the_last_fraction(data):
    x, y = data[0][:10], data[1][:10]
    utils.set_random_seed(4)
    model = dense_model(units=8)
    history = model.fit(x, y, epochs=1, batch_size=4, validation_split=0.25, verbose=0)
    # floor(10 * 0.75) = 7: samples 7, 8, 9 are the validation data
    assert history.history["val_loss"][0] == pytest.approx(model.evaluate(x[7:], y[7:], verbose=0)[0], rel=1e-6)
    assert history.params["steps"] == 2                                     # 7 samples in batches of 4
    assert history.history["val_loss"][0] != pytest.approx(model.evaluate(x[:3], y[:3], verbose=0)[0], rel=1e-3)


def test_evaluate_averages_over_all_samples_whatever_the_batch_size(data):
    x, y = data[0][:100], data[1][:100]
    model = dense_model(units=8)
    one_batch = model.evaluate(x, y, batch_size=100, verbose=0)
    uneven = model.evaluate(x, y, batch_size=7, verbose=0)
    assert uneven[0] == pytest.approx(one_batch[0], rel=1e-5)
    assert uneven[1] == one_batch[1]
    probs = model.predict(x, verbose=0)
    assert one_batch[1] == np.mean(probs.argmax(axis=1) == y)
    assert one_batch[0] == pytest.approx(-np.mean(np.log(probs[np.arange(100), y])), rel=1e-5)
    assert model.evaluate(x, y, verbose=0, return_dict=True) == pytest.approx(
        {"loss": one_batch[0], "accuracy": one_batch[1]}, rel=1e-5)


def test_train_and_test_on_batch(data):
    x, y = data[0][:32], data[1][:32]
    model = dense_model(units=8)
    before = model.test_on_batch(x, y)
    assert before == pytest.approx(model.evaluate(x, y, batch_size=32, verbose=0), rel=1e-6)
    trained = model.train_on_batch(x, y)
    assert trained[0] == pytest.approx(before[0], rel=1e-6)        # the loss before the step
    after = model.test_on_batch(x, y)
    assert after[0] < before[0]


def test_same_seed_gives_bit_identical_runs_and_another_seed_does_not(data):
    x, y, x_test, y_test = data

    def run(seed):
        utils.set_random_seed(seed)
        model = small_cnn(optimizer=Adam())
        history = model.fit(x[:300], utils.to_categorical(y[:300], 10), epochs=2, batch_size=32, verbose=0,
                            validation_data=(x_test[:64], utils.to_categorical(y_test[:64], 10)))
        return model.get_weights(), history.history

    weights_a, history_a = run(7)
    weights_b, history_b = run(7)
    weights_c, history_c = run(8)
    assert same_weights(weights_a, weights_b)
    assert history_a == history_b
    assert not same_weights(weights_a, weights_c)


def test_shuffle_false_is_order_independent_of_the_seed(data):
    x, y = data[0][:64], data[1][:64]
    weights = []
    for seed in (1, 2):
        utils.set_random_seed(5)
        model = dense_model(units=8)
        utils.set_random_seed(seed)                 # affects only the (disabled) shuffling
        model.fit(x, y, epochs=1, shuffle=False, verbose=0)
        weights.append(model.get_weights())
    assert same_weights(*weights)


# ---------------------------------------------------------------------------
# Building, summary, weights, layer outputs
# ---------------------------------------------------------------------------
def test_only_a_layer_with_weights_before_it_computes_its_input_gradient(monkeypatch):
    # No weight is updated from dL/dx of the input, nor of a weightless front (augmentation, Flatten).
    from tinycnn.augmentation import RandomFlip
    model = Sequential([RandomFlip("horizontal", input_shape=(6, 6, 1)), Flatten(), Dense(4, activation="relu"),
                        layers.Dropout(0.5), Dense(3, activation="softmax")])
    assert [layer.need_input_grad for layer in model.layers] == [False, False, False, True, True]
    received = []
    original = Flatten.backward
    monkeypatch.setattr(Flatten, "backward", lambda self, grad: received.append(grad) or original(self, grad))
    model.compile("sgd", "sparse_categorical_crossentropy", engine="reference")
    before = model.layers[2].get_weights()
    model.train_on_batch(np.random.default_rng(0).random((5, 6, 6, 1), dtype=np.float32), np.arange(5) % 3)
    assert received == []                                     # the first Dense returned None: nothing below is asked ...
    assert not np.allclose(model.layers[2].get_weights()[0], before[0])   # ... and still trained
    model.pop()
    model.add(Dense(2))                                       # added to a built model: built and marked
    assert model.layers[-1].need_input_grad is True
    front = Sequential([Flatten()])
    front.build((None, 3, 3))
    front.add(Dense(2))
    assert front.layers[-1].need_input_grad is False


class _Recentre(layers.Layer):
    """A weightless layer of a user's own, whose backward wants a real gradient: y = x - 0.5."""

    def forward(self, x, training=False):
        return self._check_input(x) - 0.5

    def backward(self, grad_out):
        return self._check_grad(grad_out).copy()


@pytest.mark.parametrize("engine", ["reference", "fast"])
def test_no_backward_is_handed_none_and_a_shared_layer_is_marked_for_the_model_that_trains(engine):
    rng = np.random.default_rng(1)
    x, y = rng.random((6, 8, 8, 1), dtype=np.float32), np.arange(6) % 3
    front = Sequential([_Recentre(input_shape=(8, 8, 1)), Conv2D(4, 3, activation="relu"), Flatten(),
                        Dense(3, activation="softmax")])
    front.compile("sgd", "sparse_categorical_crossentropy", engine=engine)
    assert np.isfinite(front.train_on_batch(x, y))            # the conv returns None; _Recentre is not asked
    head = Dense(3, activation="softmax")
    first = Sequential([Dense(5, activation="relu", input_shape=(4,)), Flatten(), head])
    second = Sequential([Flatten(input_shape=(5,)), head])     # marks head: nothing before it has weights here
    assert head.need_input_grad is False
    first.compile("sgd", "sparse_categorical_crossentropy", engine=engine)
    before = first.layers[0].get_weights()[0].copy()
    first.fit(rng.random((6, 4), dtype=np.float32), y, batch_size=6, verbose=0)
    assert head.need_input_grad is True                       # marked again for the model being trained
    assert not np.allclose(first.layers[0].get_weights()[0], before)   # the gradient reached the first Dense
    assert second.built


def test_keras_build_rule():
    with_shape = Sequential([Dense(4, input_shape=(3,)), Dense(2)])
    assert with_shape.built and with_shape.input_shape == (None, 3) and with_shape.output_shape == (None, 2)
    without = Sequential([Flatten(), Dense(5)])
    assert not without.built and without.input_shape is None
    with pytest.raises(ValueError, match="not been built"):
        without.summary()
    without.build((None, 28, 28))                   # Keras's batch form
    assert without.built and without.output_shape == (None, 5)
    assert without.count_params() == 784 * 5 + 5
    lazy = Sequential([Flatten(), Dense(3, activation="softmax")])
    lazy.compile("sgd", "sparse_categorical_crossentropy")
    lazy.fit(np.zeros((4, 6, 2), np.float32), np.array([0, 1, 2, 0]), verbose=0)   # built on first data
    assert lazy.input_shape == (None, 6, 2)
    assert [layer.need_input_grad for layer in lazy.layers] == [False, False]   # no weights before either
    added = Sequential()
    added.add(Dense(4, input_shape=(3,)))
    assert added.built
    added.add(Dense(2))
    assert added.layers[1].built and added.count_params() == 3 * 4 + 4 + 4 * 2 + 2


def test_model_names_follow_keras():
    first, second = Sequential(), Sequential()
    assert second.name.startswith("sequential") and second.name != first.name
    assert Sequential(name="mine").name == "mine"
    model = Sequential([Dense(2, name="a", input_shape=(1,))])
    with pytest.raises(ValueError, match="already has a layer named 'a'"):
        model.add(Dense(2, name="a"))
    with pytest.raises(ValueError, match="call it first"):
        model.add(Dense)
    assert model.get_layer("a") is model.layers[0] is model.get_layer(index=-1)
    with pytest.raises(ValueError, match=r"no layer named 'b'; the layers are \['a'\]"):
        model.get_layer("b")


NOTEBOOK_CNN_SUMMARY = '''\
Model: "sequential"
_________________________________________________________________
Layer (type)                 Output Shape              Param #   
=================================================================
conv2d (Conv2D)              (None, 26, 26, 32)        320       
_________________________________________________________________
max_pooling2d (MaxPooling2D) (None, 13, 13, 32)        0         
_________________________________________________________________
flatten (Flatten)            (None, 5408)              0         
_________________________________________________________________
dense (Dense)                (None, 100)               540900    
_________________________________________________________________
dense_1 (Dense)              (None, 10)                1010      
=================================================================
Total params: 542,230
Trainable params: 542,230
Non-trainable params: 0
_________________________________________________________________'''


def notebook_cnn(name="sequential"):
    return Sequential([Conv2D(32, (3, 3), activation="relu", kernel_initializer="he_uniform", input_shape=(28, 28, 1)),
                       MaxPooling2D((2, 2)), Flatten(), Dense(100, activation="relu", kernel_initializer="he_uniform"),
                       Dense(10, activation="softmax")], name=name)


def test_summary_matches_keras_for_the_notebook_models():
    layers.reset_name_counters()
    lines = []
    notebook_cnn().summary(print_fn=lines.append)
    assert "\n".join(lines) == NOTEBOOK_CNN_SUMMARY

    dense = Sequential([Flatten(), Dense(128, activation="relu"), Dense(10)])
    dense.build((None, 28, 28))
    deeper = Sequential([Conv2D(64, (3, 3), activation="relu", input_shape=(28, 28, 1)), MaxPooling2D(2, 2),
                         Conv2D(64, (3, 3), activation="relu"), MaxPooling2D(2, 2), Flatten(),
                         Dense(128, activation="relu"), Dense(10, activation="softmax")])
    for model, total in ((dense, 101_770), (deeper, 243_786)):
        lines = []
        model.summary(print_fn=lines.append)
        assert f"Total params: {total:,}" in lines and model.count_params() == total
        assert len({len(line) for line in lines[1:-4]}) == 1          # the table's lines line up
    # a long layer name widens its column instead of being cut
    lines = []
    Sequential([Dense(3, input_shape=(2,), name="a_really_long_layer_name_here")]).summary(print_fn=lines.append)
    assert any(line.startswith("a_really_long_layer_name_here (Dense) (None, 3)") for line in lines)


def test_get_and_set_weights():
    model = Sequential([Dense(4, input_shape=(3,)), Dense(2)])
    weights = model.get_weights()
    assert [w.shape for w in weights] == [(3, 4), (4,), (4, 2), (2,)]
    weights[0][...] = 1.5                                         # copies: the model is untouched
    assert not np.any(model.get_weights()[0] == 1.5)
    model.set_weights(weights)
    assert np.all(model.get_weights()[0] == 1.5)
    with pytest.raises(ValueError, match="4 weight arrays, got 3"):
        model.set_weights(weights[:3])
    bad = [w.copy() for w in weights]
    bad[2] = np.zeros((2, 4), np.float32)
    with pytest.raises(ValueError, match=r"weight 2 \(of layer 'dense_?\d*'\) must have shape \(4, 2\)"):
        model.set_weights(bad)
    assert np.all(model.get_weights()[0] == 1.5)                   # nothing half-set


def test_layer_outputs_shapes_and_agreement_with_predict(data):
    x = data[0][:5]
    utils.set_random_seed(2)
    model = notebook_cnn(name="cnn")
    outputs = model.layer_outputs(x[:1])
    assert [o.shape for o in outputs] == [(1, 26, 26, 32), (1, 13, 13, 32), (1, 5408), (1, 100), (1, 10)]
    outputs = model.layer_outputs(x)
    # layer_outputs runs the layers' own passes: the fast engine's predict agrees to float32 rounding,
    np.testing.assert_allclose(outputs[-1], model.predict(x, verbose=0), rtol=1e-5, atol=1e-7)
    model.compile("sgd", "categorical_crossentropy", engine="reference")
    assert np.array_equal(outputs[-1], model.predict(x, verbose=0))     # the reference engine's exactly
    assert np.array_equal(outputs[2], outputs[1].reshape(5, -1))   # Flatten is C order
    assert np.all(outputs[0] >= 0)                                 # relu
    batched = model.layer_outputs(x, batch_size=2)
    for a, b in zip(batched, outputs):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model(x), outputs[-1], rtol=1e-6)   # model(x), as Keras


# ---------------------------------------------------------------------------
# Save and load
# ---------------------------------------------------------------------------
def test_save_load_round_trip_is_bit_identical(tmp_path, data):
    x, y = data[0][:200], data[1][:200]
    utils.set_random_seed(11)
    model = small_cnn(optimizer=Adam(learning_rate=0.002))
    model.fit(x, utils.to_categorical(y, 10), epochs=1, verbose=0)
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = load_model(path)
    assert loaded.name == model.name
    assert [type(l).__name__ for l in loaded.layers] == [type(l).__name__ for l in model.layers]
    assert [l.name for l in loaded.layers] == [l.name for l in model.layers]
    assert same_weights(loaded.get_weights(), model.get_weights())
    assert np.array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert type(loaded.optimizer) is Adam and loaded.optimizer.learning_rate == 0.002
    assert loaded.optimizer.iterations == model.optimizer.iterations == 7
    assert loaded.loss.name == "categorical_crossentropy" and loaded.metrics_names == ["loss", "accuracy"]
    assert same_weights(loaded.optimizer.get_state(), model.optimizer.get_state())
    # save_weights / load_weights into a fresh model of the same architecture
    model.save_weights(tmp_path / "weights.npz")
    fresh = small_cnn()
    fresh.load_weights(tmp_path / "weights.npz")
    assert same_weights(fresh.get_weights(), model.get_weights())
    with pytest.raises(ValueError, match="do not match"):
        dense_model().load_weights(tmp_path / "weights.npz")


@pytest.mark.parametrize("optimizer", [lambda: SGD(learning_rate=0.05, momentum=0.9), Adam])
def test_training_resumes_after_save_and_load_exactly(tmp_path, data, optimizer):
    """2 epochs in one go == 1 epoch, save, load, 1 more epoch (same seed state)."""
    x, y = data[0][:160], utils.to_categorical(data[1][:160], 10)
    utils.set_random_seed(21)
    straight = small_cnn(optimizer=optimizer())
    history = straight.fit(x, y, epochs=2, batch_size=32, verbose=0)

    utils.set_random_seed(21)
    first = small_cnn(optimizer=optimizer())
    first_history = first.fit(x, y, epochs=1, batch_size=32, verbose=0)
    first.save(tmp_path / "half.npz")
    del first
    resumed = load_model(tmp_path / "half.npz")          # draws no random numbers
    second_history = resumed.fit(x, y, epochs=2, initial_epoch=1, batch_size=32, verbose=0)
    assert same_weights(resumed.get_weights(), straight.get_weights())
    assert first_history.history["loss"] + second_history.history["loss"] == history.history["loss"]
    assert second_history.epoch == [1]


def test_load_model_without_compile_and_saving_an_uncompiled_model(tmp_path):
    model = Sequential([Dense(3, input_shape=(2,), activation="softmax")])
    model.save(tmp_path / "m.npz")
    loaded = load_model(tmp_path / "m.npz")
    assert not loaded.compiled
    with pytest.raises(ValueError, match="must be compiled"):
        loaded.evaluate(np.zeros((1, 2)), np.zeros(1, int))
    compiled = dense_model()
    compiled.save(tmp_path / "c.npz")
    assert not load_model(tmp_path / "c.npz", compile=False).compiled
    with pytest.raises(FileExistsError):
        compiled.save(tmp_path / "c.npz", overwrite=False)
    with pytest.raises(ValueError, match="not been built"):
        Sequential([Flatten(), Dense(2)]).save(tmp_path / "x.npz")


# ---------------------------------------------------------------------------
# NaN guard and Ctrl-C
# ---------------------------------------------------------------------------
def test_nan_guard_stops_without_applying_the_bad_step(data):
    x, y = data[0][:320], data[1][:320]
    utils.set_random_seed(6)
    model = dense_model(units=8)
    snapshot = {}

    class Sabotage(callbacks.Callback):
        """After epoch 2's third step, set the last bias so that the next loss overflows while the
        outputs stay finite: logits 3e38 for class 0 and -3e38 for the others."""

        def on_epoch_begin(self, epoch, logs=None):
            snapshot[epoch] = self.model.get_weights()

        def on_train_batch_end(self, batch, logs=None):
            if self.model.history.epoch == [0] and batch == 2:
                last = self.model.layers[-1]
                last.params[1][...] = -3e38
                last.params[1][0] = 3e38                # -log p of classes 1-9 is 6e38: inf in float32
                snapshot["weights"] = self.model.get_weights()

    with pytest.warns(RuntimeWarning, match=r"NaN or infinite in epoch 2/3 at step 4/10.*keeps the last weights "
                                            r"that gave a finite loss"), np.errstate(over="ignore", invalid="ignore"):
        history = model.fit(x, y, epochs=3, batch_size=32, verbose=0, callbacks=[Sabotage()])
    assert history.epoch == [0]                                    # the broken epoch is not recorded
    assert same_weights(model.get_weights(), snapshot["weights"])  # the NaN step was not applied
    with np.errstate(over="ignore"):                               # logits 6e38 apart: exp(-inf) = 0
        assert np.isfinite(model.predict(x, verbose=0)).all()
    assert model.optimizer.iterations == 10 + 3


def test_nan_guard_restores_weights_whose_outputs_are_nan(data):
    # A huge learning rate: one step makes the weights finite but so large that the outputs are
    # NaN. The model must not keep those: it goes back to the epoch's start, and predicts.
    x, y = data[0][:96], data[1][:96]
    utils.set_random_seed(6)
    model = dense_model(optimizer=SGD(learning_rate=1e30), units=8)
    start = model.get_weights()
    with pytest.warns(RuntimeWarning, match=r"outputs were NaN, so the model was put back to its weights at the "
                                            r"start of epoch 1\."), np.errstate(all="ignore"):
        history = model.fit(x, y, epochs=2, batch_size=32, verbose=0)
    assert history.epoch == []
    assert same_weights(model.get_weights(), start)
    assert np.isfinite(model.predict(x, verbose=0)).all()


def test_nan_guard_goes_back_to_the_epoch_start_if_the_weights_overflowed(data):
    x, y = data[0][:96], data[1][:96]
    model = dense_model(units=8)
    start = {}

    class Overflow(callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            start[epoch] = self.model.get_weights()

        def on_train_batch_end(self, batch, logs=None):
            if len(start) == 2 and batch == 1:       # epoch 2: make a weight infinite "by a step"
                self.model.layers[-1].params[1][0] = np.inf

    with pytest.warns(RuntimeWarning, match=r"epoch 2/2 at step 3/3.*back to its weights at the start of epoch 2"), \
            np.errstate(over="ignore", invalid="ignore"):
        history = model.fit(x, y, epochs=2, verbose=0, callbacks=[Overflow()])
    assert history.epoch == [0]
    assert same_weights(model.get_weights(), start[1])
    assert model.optimizer.iterations == 3                    # the optimizer's state went back too

    # a weight that overflows while the loss stays finite is caught at the end of the epoch
    model = dense_model(units=8)

    class SilentOverflow(callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            start[epoch] = self.model.get_weights()

        def on_train_batch_end(self, batch, logs=None):
            if batch == 2:                                       # after the epoch's last step
                self.model.layers[1].params[0][0, 0] = np.inf

    with pytest.warns(RuntimeWarning, match=r"weights became NaN or infinite during epoch 1/2.*start of epoch 1"), \
            np.errstate(over="ignore", invalid="ignore"):
        history = model.fit(x, y, epochs=2, verbose=0, callbacks=[SilentOverflow()])
    assert history.epoch == [] and same_weights(model.get_weights(), start[0])


def test_keyboard_interrupt_stops_after_the_step_and_keeps_the_history(data, capsys):
    x, y = data[0][:160], data[1][:160]

    def run(callback):
        utils.set_random_seed(9)
        model = dense_model(units=8)
        history = model.fit(x, y, epochs=3, batch_size=32, verbose=0, callbacks=[callback])
        return model, history

    class StopFlag(callbacks.Callback):                  # the reference: Keras's stop_training
        def on_train_batch_end(self, batch, logs=None):
            if len(self.model.history.epoch) == 1 and batch == 1:
                self.model.stop_training = True

    class RaiseInterrupt(callbacks.Callback):            # Ctrl-C arriving as an exception
        def on_train_batch_end(self, batch, logs=None):
            if len(self.model.history.epoch) == 1 and batch == 1:
                raise KeyboardInterrupt

    class SendSigint(callbacks.Callback):                # a real SIGINT, as from the terminal
        def on_train_batch_end(self, batch, logs=None):
            if len(self.model.history.epoch) == 1 and batch == 1:
                os.kill(os.getpid(), signal.SIGINT)

    reference, _ = run(StopFlag())
    assert reference.optimizer.iterations == 5 + 2
    handler_before = signal.getsignal(signal.SIGINT)
    for callback in (RaiseInterrupt(), SendSigint()):
        model, history = run(callback)
        assert history.epoch == [0] and len(history.history["loss"]) == 1
        assert same_weights(model.get_weights(), reference.get_weights())
        assert "interrupted (Ctrl-C) in epoch 2/3 at step 2/5" in capsys.readouterr().err
        assert signal.getsignal(signal.SIGINT) is handler_before   # fit put the handler back


# ---------------------------------------------------------------------------
# Bad input: a clear ValueError before any training
# ---------------------------------------------------------------------------
def test_errors_name_the_problem_and_the_fix(data):
    x, y = data[0][:20], data[1][:20]
    model = dense_model(units=4)
    weights = model.get_weights()
    cases = [
        (lambda: model.fit(x[..., 0], y), r"reshape\(-1, 28, 28, 1\) or x\[\.\.\., None\]"),
        (lambda: model.predict(x[0]), r"without the batch axis; use x\[None\]"),
        (lambda: model.fit(np.transpose(x, (0, 3, 1, 2)), y), r"channels-first"),
        (lambda: model.fit(x, y[:19]), "x has 20 samples but y has 19"),
        (lambda: model.fit(x, utils.to_categorical(y, 10)), "looks one-hot.*categorical_crossentropy"),
        (lambda: model.fit(x, y + 5), r"label 1[0-4] in y is out of range.*\[0, 9\]"),
        (lambda: model.fit(x, y - 1), r"label -1 in y is out of range"),
        (lambda: model.fit(x, y + 0.5), "whole-number"),
        (lambda: model.fit(np.where(x > 0.5, np.nan, x), y), "NaN or infinite"),
        (lambda: model.fit(x[:0], y[:0]), "empty"),
        (lambda: model.fit(x, y, batch_size=0), "batch_size must be a positive integer"),
        (lambda: model.fit(x, y, epochs=-1), "epochs"),
        (lambda: model.fit(x, y, validation_split=1.0), r"validation_split must be a fraction in \[0, 1\)"),
        (lambda: model.fit(x[:1], y[:1], validation_split=0.5), "both need at least one"),
        (lambda: model.fit(x, y, validation_data=(x, y[:3])), r"x has 20 samples but validation_data\[1\]"),
        (lambda: model.fit(x, y, validation_data=x), "pair"),
        (lambda: model.fit(x, y, verbose=3), "verbose must be"),
        (lambda: model.fit(x.astype(str), y), "array of numbers"),
        (lambda: model.compile("rmsprop", "sparse_categorical_crossentropy"), "Unknown optimizer"),
        (lambda: model.compile("adam", "mse"), "Unknown loss"),
        (lambda: model.compile("adam", "sparse_categorical_crossentropy", ["auc"]), "unknown metric 'auc'"),
        (lambda: dense_model().fit(x, y, callbacks=[lambda: None]), "Callback objects"),
        (lambda: Sequential([Flatten(input_shape=(28, 28, 1)), Dense(2)]).fit(x, y), "must be compiled first"),
        (lambda: Sequential().build(), "no layers"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    categorical = dense_model(loss="categorical_crossentropy")
    with pytest.raises(ValueError, match=r"to_categorical\(y, 10\).*sparse_categorical_crossentropy"):
        categorical.fit(x, y)
    with pytest.raises(ValueError, match=r"one-hot rows of shape \(20, 10\)"):
        categorical.fit(x, utils.to_categorical(y, 12))
    assert same_weights(model.get_weights(), weights)           # nothing was trained


def test_integer_pixels_are_accepted_with_a_warning(data):
    x, y = data[0][:8], data[1][:8]
    model = dense_model(units=4)
    raw = np.round(x * 255).astype(np.uint8)
    with pytest.warns(UserWarning, match=r"not normalized.*astype\('float32'\) / 255"):
        model.fit(raw, y, verbose=0)
    with pytest.warns(UserWarning, match="not normalized"):
        model.predict(raw, verbose=0)


# ---------------------------------------------------------------------------
# Opt-in: against Keras itself (pytest -m keras), and a full epoch (pytest -m slow)
# ---------------------------------------------------------------------------
@pytest.mark.keras
@pytest.mark.parametrize("labels", ["one-hot, SGD momentum", "integers, Adam"])
def test_fit_and_evaluate_report_what_keras_reports(data, labels):
    """Same weights, same batches (shuffle=False): the same History (running means, val_
    metrics), evaluate results and final weights as Keras, to float32 precision."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    keras = pytest.importorskip("keras")
    x, y, x_val, y_val = data[0][:512], data[1][:512], data[2][:200], data[3][:200]
    if labels.startswith("one-hot"):
        y, y_val = utils.to_categorical(y, 10), utils.to_categorical(y_val, 10)
        loss, ours_opt, keras_opt = "categorical_crossentropy", SGD(0.01, momentum=0.9), keras.optimizers.SGD(0.01, momentum=0.9)
    else:
        loss, ours_opt, keras_opt = "sparse_categorical_crossentropy", Adam(), keras.optimizers.Adam()
    theirs = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Conv2D(8, 3, activation="relu"),
                               keras.layers.MaxPooling2D(2), keras.layers.Flatten(),
                               keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10, activation="softmax")])
    ours = Sequential([Conv2D(8, 3, activation="relu", input_shape=(28, 28, 1)), MaxPooling2D(2), Flatten(),
                       Dense(32, activation="relu"), Dense(10, activation="softmax")])
    ours.set_weights(theirs.get_weights())
    theirs.compile(optimizer=keras_opt, loss=loss, metrics=["accuracy"])
    ours.compile(optimizer=ours_opt, loss=loss, metrics=["accuracy"])
    assert ours.evaluate(x_val, y_val, verbose=0) == pytest.approx(theirs.evaluate(x_val, y_val, verbose=0), rel=1e-5)
    kwargs = dict(epochs=2, batch_size=32, shuffle=False, validation_data=(x_val, y_val), verbose=0)
    their_history, our_history = theirs.fit(x, y, **kwargs).history, ours.fit(x, y, **kwargs).history
    assert set(our_history) == set(their_history)
    for key in our_history:
        assert our_history[key] == pytest.approx(their_history[key], rel=2e-5, abs=1e-6), key
    for ours_w, theirs_w in zip(ours.get_weights(), theirs.get_weights()):
        assert np.abs(ours_w - theirs_w).max() <= 1e-4 * np.abs(theirs_w).max()
    assert ours.evaluate(x_val, y_val, verbose=0) == pytest.approx(theirs.evaluate(x_val, y_val, verbose=0), rel=1e-4)


@pytest.mark.slow
def test_notebook_cnn_one_full_epoch():
    """The notebook's first CNN, one epoch on all 60,000 images: about 0.88 on the test set."""
    from tinycnn.zoo import cnn_categorical_model
    (x_train, y_train), (x_test, y_test) = fashion_mnist.load_data(download=False)
    prep = lambda x: (x.reshape(-1, 28, 28, 1) / np.float32(255)).astype(np.float32)
    utils.set_random_seed(0)
    model = cnn_categorical_model()
    history = model.fit(prep(x_train), utils.to_categorical(y_train, 10), epochs=1, batch_size=32, verbose=0)
    loss, accuracy = model.evaluate(prep(x_test), utils.to_categorical(y_test, 10), verbose=0)
    assert history.history["accuracy"][0] > 0.8 and accuracy > 0.85 and loss < 0.45


# ---------------------------------------------------------------------------
# Impatient users and odd arguments
# ---------------------------------------------------------------------------
def test_a_batch_larger_than_the_data_is_the_whole_data_as_one_batch(data, monkeypatch):
    # Keras's rule. The fast engine sizes its worker's buffers by the batch actually used, so
    # 32 epochs of one batch (enough for a worker process) allocate nothing like 10**9 rows.
    from tinycnn.engines.fast import parallel
    monkeypatch.setattr(parallel, "MIN_MULTIPLY_ADDS", 0)
    x, y = data[0][:40], utils.to_categorical(data[1][:40], 10)
    results = []
    for batch_size in (10 ** 9, 40):
        utils.set_random_seed(4)
        model = small_cnn()
        history = model.fit(x, y, batch_size=batch_size, epochs=32, verbose=0)
        results.append((model.get_weights(), history.history["loss"],
                        model.evaluate(x, y, batch_size=batch_size, verbose=0),
                        model.predict(x, batch_size=batch_size, verbose=0)))
    assert results[0][1] == results[1][1] and results[0][2] == results[1][2]
    assert same_weights(results[0][0], results[1][0]) and np.array_equal(results[0][3], results[1][3])


def test_one_callback_without_a_list_is_accepted(data):
    x, y = data[0][:64], data[1][:64]
    seen = []

    class Count(callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(epoch)

    dense_model(units=8).fit(x, y, epochs=2, verbose=0, callbacks=Count())
    assert seen == [0, 1]
    with pytest.raises(ValueError, match="callbacks must be tinycnn.callbacks.Callback objects"):
        dense_model(units=8).fit(x, y, verbose=0, callbacks=[print])


def test_a_ragged_list_of_images_gets_a_clear_message(data):
    model = dense_model(units=8)
    ragged = [np.zeros((28, 28, 1)), np.zeros((27, 28, 1))]
    with pytest.raises(ValueError, match=r"x must be one rectangular array.*samples have different shapes"):
        model.fit(ragged, [0, 1], verbose=0)


def test_float_pixels_in_0_255_warn_as_integer_pixels_do(data):
    raw = (data[0][:64] * 255).astype(np.float32)          # astype('float32') without the / 255
    model = dense_model(units=8)
    with pytest.warns(UserWarning, match=r"raw pixel values \(floats from 0 to 255\).*divide by 255"):
        model.fit(raw, data[1][:64], verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.fit(data[0][:64], data[1][:64], verbose=0)    # normalised pixels: no warning


CTRL_C_SCRIPT = """
import os, signal, sys, threading, time
import numpy as np
import tinycnn.callbacks
from tinycnn import utils, zoo
from tinycnn.datasets import fashion_mnist
from tinycnn.engines.fast import parallel
parallel.MIN_PROCESS_BATCHES = 1                      # a worker process, as in a long run
(x, y), _ = fashion_mnist.load_data(download=False)
x = (x[:3200].reshape(-1, 28, 28, 1) / np.float32(255)).astype(np.float32)
y = utils.to_categorical(y[:3200], 10)
utils.set_random_seed(1)
model = zoo.cnn_categorical_model()

training = threading.Event()                          # set once fit is well under way

class Started(tinycnn.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if batch == int(sys.argv[1]):
            training.set()

def press_ctrl_c_again_and_again():
    training.wait(120)
    for _ in range(int(sys.argv[2])):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.0007)

outside_fit = []                                      # presses that come after fit has returned
signal.signal(signal.SIGINT, lambda signum, frame: outside_fit.append(1))
presser = threading.Thread(target=press_ctrl_c_again_and_again)
presser.start()
history = model.fit(x, y, epochs=3, batch_size=32, verbose=0, callbacks=[Started()])
presser.join()
assert all(np.isfinite(w).all() for w in model.get_weights())
model.save(sys.argv[3])
try:
    os.waitpid(-1, os.WNOHANG)
    print("a child process is left")
except ChildProcessError:
    print("no child left,", len(history.epoch), "epochs,", model.optimizer.iterations, "steps")
"""


@pytest.mark.parametrize("presses", [1, 2, 25])
def test_ctrl_c_any_number_of_times_stops_cleanly(tmp_path, presses):
    from tinycnn.models import load_model
    done = subprocess.run([sys.executable, "-c", CTRL_C_SCRIPT, "30", str(presses), str(tmp_path / "m.npz")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "no child left" in done.stdout and "Training interrupted (Ctrl-C)" in done.stderr
    assert "Traceback" not in done.stderr and "SystemError" not in done.stderr
    assert load_model(tmp_path / "m.npz").count_params() == 542230


def batch_norm_model(engine):
    """Dense -> BatchNormalization -> Dense(softmax), compiled with SGD with momentum on `engine`."""
    utils.set_random_seed(40)
    model = Sequential([Dense(6, input_shape=(5,)), layers.BatchNormalization(momentum=0.5), layers.Dropout(0.2),
                        Dense(3, activation="softmax")])
    model.compile(SGD(0.5, momentum=0.9), "sparse_categorical_crossentropy", engine=engine)
    return model


def test_summary_counts_the_moving_statistics_as_non_trainable():
    layers.reset_name_counters()
    model = batch_norm_model("reference")
    lines = []
    model.summary(print_fn=lines.append)
    channels = model.layers[1].output_shape[-1]
    total = sum(w.size for w in model.get_weights())
    assert f"Total params: {total:,}" in lines
    assert f"Trainable params: {total - 2 * channels:,}" in lines
    assert f"Non-trainable params: {2 * channels:,}" in lines
    assert any(line.startswith("batch_normalization (BatchNormalization)") and line.split()[-1] == str(4 * channels)
               for line in lines)


@pytest.mark.parametrize("engine", ["reference", "fast"])
def test_the_optimizer_never_changes_the_moving_statistics(engine):
    model = batch_norm_model(engine)
    dense, bn = model.layers[0], model.layers[1]
    rng = np.random.default_rng(41)
    for step in range(3):
        x = rng.standard_normal((16, 5)).astype(np.float32) * (step + 2)
        y = rng.integers(0, 3, 16)
        bn_input = x @ dense.kernel + dense.bias                      # what the step's BatchNormalization sees
        moving_mean, moving_variance = bn.moving_mean.copy(), bn.moving_variance.copy()
        gamma, beta = bn.gamma.copy(), bn.beta.copy()
        model.train_on_batch(x, y)
        # exactly the forward's update (momentum 0.5): whatever the optimizer did, it was not to these
        np.testing.assert_allclose(bn.moving_mean, moving_mean * 0.5 + bn_input.mean(axis=0) * 0.5, rtol=1e-5)
        np.testing.assert_allclose(bn.moving_variance, moving_variance * 0.5 + bn_input.var(axis=0) * 0.5, rtol=1e-5)
        assert not np.array_equal(bn.gamma, gamma) and not np.array_equal(bn.beta, beta)   # trained
    assert [s[0].shape for s in model.optimizer.slots] == [p.shape for _, p in model.grads_and_params()]
    assert len(model.optimizer.slots) == len(model.get_weights()) - 2
