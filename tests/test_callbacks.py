"""Callbacks: the hooks' order, EarlyStopping, ModelCheckpoint, LearningRateScheduler, and the
progress output (one line per epoch off a terminal, the in-place bar on one)."""
import re

import numpy as np
import pytest

from tinycnn import callbacks, utils
from tinycnn.callbacks import (Callback, CallbackList, EarlyStopping, GradientNorms, History,
                               LearningRateScheduler, ModelCheckpoint, Progbar)
from tinycnn.layers import Dense, Flatten
from tinycnn.models import Sequential, load_model
from tinycnn.optimizers import SGD


@pytest.fixture
def xy():
    rng = np.random.default_rng(0)
    x = rng.random((40, 4, 4, 1), dtype=np.float32)
    y = (x.reshape(40, -1).sum(axis=1) > 8).astype(np.int64)
    return x, y


def tiny_model(optimizer=None):
    model = Sequential([Flatten(input_shape=(4, 4, 1)), Dense(6, activation="relu"),
                        Dense(2, activation="softmax")])
    model.compile(optimizer or SGD(learning_rate=0.1), "sparse_categorical_crossentropy", ["accuracy"])
    return model


class ScriptedValLoss(Callback):
    """Replaces each epoch's val_loss by the next scripted value (before the callbacks after it
    see the logs) and records the weights at the end of every epoch."""

    def __init__(self, values):
        super().__init__()
        self.values = list(values)
        self.weights = []

    def on_epoch_end(self, epoch, logs=None):
        logs["val_loss"] = self.values[epoch]
        self.weights.append(self.model.get_weights())


def test_hooks_are_called_in_keras_order(xy):
    x, y = xy
    calls = []

    class Spy(Callback):
        def on_train_begin(self, logs=None): calls.append("train_begin")
        def on_epoch_begin(self, epoch, logs=None): calls.append(f"epoch_begin {epoch}")
        def on_train_batch_begin(self, batch, logs=None): calls.append(f"batch_begin {batch}")
        def on_train_batch_end(self, batch, logs=None): calls.append(f"batch_end {batch} {sorted(logs)}")
        def on_epoch_end(self, epoch, logs=None): calls.append(f"epoch_end {epoch} {sorted(logs)}")
        def on_train_end(self, logs=None): calls.append("train_end")

    spy = Spy()
    model = tiny_model()
    model.fit(x, y, epochs=2, batch_size=20, validation_split=0.5, verbose=0, callbacks=[spy])
    assert spy.model is model and spy.params == {"verbose": 0, "epochs": 2, "steps": 1}
    assert calls == ["train_begin",
                     "epoch_begin 0", "batch_begin 0", "batch_end 0 ['accuracy', 'loss']",
                     "epoch_end 0 ['accuracy', 'loss', 'val_accuracy', 'val_loss']",
                     "epoch_begin 1", "batch_begin 0",
                     "batch_end 0 ['accuracy', 'loss']",
                     "epoch_end 1 ['accuracy', 'loss', 'val_accuracy', 'val_loss']", "train_end"]


def test_batch_hooks_are_only_wanted_when_overridden():
    class EpochOnly(Callback):
        def on_epoch_end(self, epoch, logs=None):
            pass

    class OldStyle(Callback):
        def on_batch_end(self, batch, logs=None):   # Keras's older name counts too
            pass

    quiet = CallbackList([History(), EpochOnly(), EarlyStopping(), callbacks.progbar_logger(2)], None, {})
    assert not quiet.wants_batch_begin and not quiet.wants_batch_end
    assert CallbackList([OldStyle()], None, {}).wants_batch_end


def test_early_stopping_with_restore_best_weights(xy):
    x, y = xy
    script = ScriptedValLoss([1.0, 0.5, 0.7, 0.8, 0.9, 0.95])
    stopper = EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True)
    model = tiny_model()
    history = model.fit(x, y, epochs=6, verbose=0, validation_split=0.25, callbacks=[script, stopper])
    # best at epoch 1 (0.5); epochs 2 and 3 do not improve: patience 2 runs out after epoch 3
    assert history.epoch == [0, 1, 2, 3]
    assert history.history["val_loss"] == [1.0, 0.5, 0.7, 0.8]
    assert stopper.stopped_epoch == 3 and stopper.best == 0.5 and stopper.best_epoch == 1
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), script.weights[1]))
    assert not all(np.array_equal(a, b) for a, b in zip(model.get_weights(), script.weights[3]))


def test_early_stopping_min_delta_mode_and_missing_metric(xy):
    x, y = xy
    stopper = EarlyStopping(monitor="val_loss", min_delta=0.1, patience=1)
    model = tiny_model()
    script = ScriptedValLoss([1.0, 0.95, 0.5, 0.45, 0.44])
    history = model.fit(x, y, epochs=5, verbose=0, validation_split=0.25, callbacks=[script, stopper])
    # 0.95 is not 0.1 better than 1.0: stop after epoch 1 (patience 1)
    assert history.epoch == [0, 1] and stopper.best == 1.0
    assert EarlyStopping(monitor="val_accuracy").mode == "max"
    assert EarlyStopping(monitor="loss").mode == "min"
    with pytest.warns(RuntimeWarning, match="'val_loss' is not in the logs.*validation data"):
        tiny_model().fit(x, y, epochs=2, verbose=0, callbacks=[EarlyStopping()])
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(patience=-1)
    with pytest.raises(ValueError, match="mode"):
        EarlyStopping(mode="up")


def test_model_checkpoint_save_best_only_with_formatted_names(xy, tmp_path):
    x, y = xy
    script = ScriptedValLoss([1.0, 0.5, 0.7, 0.4])
    checkpoint = ModelCheckpoint(str(tmp_path / "ckpt-{epoch:02d}-{val_loss:.4f}.npz"), save_best_only=True)
    model = tiny_model()
    model.fit(x, y, epochs=4, verbose=0, validation_split=0.25, callbacks=[script, checkpoint])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ckpt-01-1.0000.npz", "ckpt-02-0.5000.npz", "ckpt-04-0.4000.npz"]
    best = load_model(tmp_path / "ckpt-02-0.5000.npz")
    assert all(np.array_equal(a, b) for a, b in zip(best.get_weights(), script.weights[1]))


def test_model_checkpoint_every_epoch_and_weights_only(xy, tmp_path):
    x, y = xy
    model = tiny_model()
    model.fit(x, y, epochs=2, verbose=0, callbacks=[
        ModelCheckpoint(str(tmp_path / "every-{epoch}.npz"), monitor="loss"),
        ModelCheckpoint(str(tmp_path / "w.npz"), save_weights_only=True)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["every-1.npz", "every-2.npz", "w.npz"]
    fresh = tiny_model()
    fresh.load_weights(tmp_path / "w.npz")
    assert all(np.array_equal(a, b) for a, b in zip(fresh.get_weights(), model.get_weights()))
    with pytest.raises(ValueError, match=r"cannot fill in filepath.*\{epoch\}.*'accuracy', 'loss'"):
        tiny_model().fit(x, y, verbose=0, callbacks=[ModelCheckpoint(str(tmp_path / "{val_loss:.2f}.npz"))])


def test_learning_rate_scheduler_sets_the_optimizer_rate(xy):
    x, y = xy
    seen = []

    class RateSpy(Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append(self.model.optimizer.learning_rate)

    model = tiny_model(SGD(learning_rate=0.08))
    history = model.fit(x, y, epochs=3, verbose=0,
                        callbacks=[LearningRateScheduler(lambda epoch, lr: lr * 0.5), RateSpy()])
    assert seen == [0.04, 0.02, 0.01]
    assert history.history["learning_rate"] == [0.04, 0.02, 0.01]
    assert model.optimizer.learning_rate == 0.01
    # a schedule of the epoch alone, as in older Keras
    model = tiny_model()
    model.fit(x, y, epochs=2, verbose=0, callbacks=[LearningRateScheduler(lambda epoch: 0.1 / (epoch + 1))])
    assert model.optimizer.learning_rate == 0.05
    with pytest.raises(ValueError, match="must return a finite number"):
        tiny_model().fit(x, y, verbose=0, callbacks=[LearningRateScheduler(lambda epoch, lr: None)])
    with pytest.raises(ValueError, match="schedule must be a function"):
        LearningRateScheduler(0.1)


def test_a_changed_rate_changes_the_training(xy):
    x, y = xy
    results = []
    for schedule in (lambda epoch, lr: lr, lambda epoch, lr: 0.0):
        utils.set_random_seed(3)
        model = tiny_model()
        start = model.get_weights()
        model.fit(x, y, epochs=1, verbose=0, callbacks=[LearningRateScheduler(schedule)])
        results.append(all(np.array_equal(a, b) for a, b in zip(start, model.get_weights())))
    assert results == [False, True]                 # learning rate 0: nothing moves


def test_stop_training_set_in_a_batch_hook_ends_the_epoch_there(xy):
    x, y = xy

    class StopAtBatch(Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 1:
                self.model.stop_training = True

    model = tiny_model()
    history = model.fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=[StopAtBatch()])
    assert history.epoch == [0] and model.optimizer.iterations == 2


# ---------------------------------------------------------------------------
# GradientNorms
# ---------------------------------------------------------------------------
def test_gradient_norms_are_each_batchs_gradient_computed_by_hand(xy):
    x, y = xy
    utils.set_random_seed(2)
    model = Sequential([Flatten(input_shape=(4, 4, 1)), Dense(2, activation="softmax")])
    model.compile(SGD(learning_rate=0.0), "sparse_categorical_crossentropy")
    recorder = GradientNorms()
    model.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0, callbacks=[recorder])
    dense = model.layers[1]
    assert list(recorder.norms) == [dense.name]             # Flatten has no weights
    assert recorder.steps == [1, 2, 3, 4, 5, 6]              # batches of 16, 16, 8; two epochs
    # Learning rate 0: the weights never move, so every batch's gradient follows by hand:
    # dL/dz = (softmax - onehot) / batch, dL/dkernel = x^T dL/dz, dL/dbias = dL/dz summed over rows.
    expected = []
    for start in (0, 16, 32, 0, 16, 32):
        xb, yb = x[start:start + 16], y[start:start + 16]
        probs = model.predict(xb, verbose=0).astype(np.float64)
        dz = (probs - np.eye(2)[yb]) / len(xb)
        rows = xb.reshape(len(xb), -1).astype(np.float64)
        expected.append(np.sqrt(np.sum((rows.T @ dz) ** 2) + np.sum(dz.sum(axis=0) ** 2)))
    np.testing.assert_allclose(recorder.norms[dense.name], expected, rtol=1e-4)
    assert len(set(np.round(expected, 6))) == 3              # the three batches differ


def test_gradient_norms_every_few_batches_and_fresh_for_each_fit(xy):
    x, y = xy
    model = tiny_model()
    recorder = GradientNorms(every=3)
    model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[recorder])   # 5 batches an epoch
    assert recorder.steps == [1, 4, 7, 10]
    assert list(recorder.norms) == [model.layers[1].name, model.layers[2].name]
    assert all(len(values) == 4 and min(values) > 0 for values in recorder.norms.values())
    model.fit(x, y, epochs=1, batch_size=20, verbose=0, callbacks=[recorder])
    assert recorder.steps == [1] and all(len(v) == 1 for v in recorder.norms.values())
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="every must be a whole number >= 1"):
            GradientNorms(every=bad)


# ---------------------------------------------------------------------------
# Progress output
# ---------------------------------------------------------------------------
def test_not_a_terminal_gives_one_line_per_epoch(xy, capsys):
    x, y = xy
    model = tiny_model()
    model.fit(x, y, epochs=3, batch_size=4, validation_split=0.25, verbose="auto")
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert len(lines) == 3 and "\r" not in out
    pattern = (r"Epoch {}/3 - 8/8 - \d+s - \d+(us|ms|s)/step - loss: \d\.\d{{4}} - accuracy: \d\.\d{{4}} "
               r"- val_loss: \d\.\d{{4}} - val_accuracy: \d\.\d{{4}}$")
    for i, line in enumerate(lines):
        assert re.match(pattern.format(i + 1), line), line
    model.fit(x, y, epochs=2, verbose=2)
    assert len(capsys.readouterr().out.splitlines()) == 2
    model.fit(x, y, epochs=2, verbose=0)
    model.evaluate(x, y, verbose=0)
    model.predict(x, verbose=0)
    assert capsys.readouterr().out == ""
    model.evaluate(x, y)
    assert re.fullmatch(r"2/2 - \d+s - \d+(us|ms|s)/step - loss: \d\.\d{4} - accuracy: \d\.\d{4}\n",
                        capsys.readouterr().out)


def test_terminal_gets_keras_bar_updated_in_place(xy, capsys, monkeypatch):
    x, y = xy
    monkeypatch.setattr(callbacks, "is_interactive", lambda stream=None: True)
    model = tiny_model()
    model.fit(x, y, epochs=2, batch_size=4, validation_split=0.25)
    out = capsys.readouterr().out
    assert out.startswith("Epoch 1/2\n\r")
    assert "ETA: " in out                                          # the first step always draws
    final = re.findall(r"\r(8/8 \[=+\] - \d+s \d+(?:us|ms|s)/step - loss: \d\.\d{4} - accuracy: \d\.\d{4}"
                       r" - val_loss: \d\.\d{4} - val_accuracy: \d\.\d{4}) *\n", out)
    assert len(final) == 2 and all("[" + "=" * 30 + "]" in line for line in final)
    assert out.count("\n") == 4                                     # "Epoch i/2" and the final bar, twice


def test_progbar_draws_keras_bars():
    class Sink:
        def __init__(self): self.text = ""
        def write(self, s): self.text += s
        def flush(self): pass

    sink = Sink()
    bar = Progbar(1875, dynamic=True, interval=0.0, stream=sink)
    bar.update(412, [("loss", 0.51234)])
    assert sink.text.startswith("\r 412/1875 [=====>........................] - ETA: ")
    assert sink.text.endswith(" - loss: 0.5123")
    bar.update(1875)
    bar.finish([("loss", 0.2846), ("accuracy", 0.00004)])
    last = sink.text.split("\r")[-1]
    assert re.fullmatch(r"1875/1875 \[={30}\] - \d+s \d+(us|ms|s)/step - loss: 0\.2846 - accuracy: 4\.0000e-05 *\n", last)
    quiet = Sink()
    bar = Progbar(10, dynamic=False, stream=quiet, title="Epoch 1/1")
    bar.update(5, [("loss", 1.0)])
    assert quiet.text == ""
    bar.finish([("loss", 1.0)])
    assert re.fullmatch(r"Epoch 1/1 - 10/10 - \d+s - \d+(us|ms|s)/step - loss: 1\.0000\n", quiet.text)


class FakeDisplay:
    """IPython.display.display with display_id=True, recorded: each call makes a handle,
    each handle records its updates; `shown` holds every handle's current text."""

    def __init__(self):
        self.handles = []

    def __call__(self, bundle, raw=False, display_id=False):
        assert raw and display_id is True
        handle = FakeHandle(bundle["text/plain"])
        self.handles.append(handle)
        return handle

    @property
    def shown(self):
        return [handle.text for handle in self.handles]


class FakeHandle:
    def __init__(self, text):
        self.text, self.updates = text, 0

    def update(self, bundle, raw=False):
        assert raw
        self.text, self.updates = bundle["text/plain"], self.updates + 1


@pytest.fixture
def jupyter_cell(monkeypatch):
    """As inside a Jupyter kernel: stdout is a cell, and IPython's display is a FakeDisplay."""
    fake = FakeDisplay()
    monkeypatch.setattr(callbacks, "is_interactive", lambda stream=None: True)
    monkeypatch.setattr(callbacks, "jupyter_display", lambda stream=None: fake)
    return fake


def test_in_jupyter_a_bar_is_one_display_updated_in_place(jupyter_cell, capsys):
    bar = Progbar(10, dynamic=True, interval=0.0, title="Epoch 1/3")
    for step in range(1, 11):
        bar.update(step, [("loss", 0.5)])
    bar.finish([("loss", 0.25)])
    (handle,) = jupyter_cell.handles                   # one display call ...
    assert handle.updates == 9                         # ... steps 2..9 and the final line update it
    assert re.fullmatch(r"Epoch 1/3 - 10/10 \[={30}\] - \d+s \d+(us|ms|s)/step - loss: 0\.2500",
                        handle.text)
    assert capsys.readouterr().out == ""                # nothing written to the cell's stream


def test_in_jupyter_fit_shows_one_line_per_epoch(jupyter_cell, xy, capsys):
    x, y = xy
    model = tiny_model()
    model.fit(x, y, epochs=3, batch_size=4, validation_split=0.25)
    assert len(jupyter_cell.handles) == 3               # one display per epoch, not one per step
    assert all(handle.updates >= 1 for handle in jupyter_cell.handles)   # the last line replaces the bar
    for epoch, text in enumerate(jupyter_cell.shown):
        assert re.fullmatch(rf"Epoch {epoch + 1}/3 - 8/8 \[={{30}}\] - \d+s \d+(us|ms|s)/step - "
                            r"loss: \d\.\d{4} - accuracy: \d\.\d{4} - val_loss: \d\.\d{4} - "
                            r"val_accuracy: \d\.\d{4}", text), text
    model.evaluate(x, y)
    assert len(jupyter_cell.handles) == 4
    assert re.match(r"2/2 \[={30}\] - ", jupyter_cell.shown[-1])
    assert capsys.readouterr().out == ""


def test_jupyter_display_needs_a_kernel_and_imports_nothing_without_one(monkeypatch):
    import io
    import sys as sys_module

    class OutStream(io.StringIO):            # the class name ipykernel gives a cell's stdout
        pass

    monkeypatch.delitem(sys_module.modules, "ipykernel", raising=False)
    monkeypatch.delitem(sys_module.modules, "IPython", raising=False)
    monkeypatch.delitem(sys_module.modules, "IPython.display", raising=False)
    assert callbacks.jupyter_display(OutStream()) is None
    assert "IPython" not in sys_module.modules            # no kernel: IPython is never imported
    bar = Progbar(5, dynamic=True, stream=OutStream())
    assert isinstance(bar.line, callbacks._TerminalLine)


def test_is_interactive_knows_terminals_jupyter_cells_and_files(monkeypatch, tmp_path):
    # The bar redraws in place only where '\r' works: a terminal, or a Jupyter cell (ipykernel's
    # OutStream, which is no TTY). A file, a pipe or a closed stream get the one-line-per-epoch log.
    import io
    import sys as sys_module
    from tinycnn import callbacks

    class FakeTerminal(io.StringIO):
        def isatty(self):
            return True

    class OutStream(io.StringIO):            # the class name ipykernel gives a cell's stdout
        pass

    assert callbacks.is_interactive(FakeTerminal())
    assert not callbacks.is_interactive(io.StringIO())
    monkeypatch.delitem(sys_module.modules, "ipykernel", raising=False)
    assert not callbacks.is_interactive(OutStream())          # the name alone is not enough
    monkeypatch.setitem(sys_module.modules, "ipykernel", type(sys_module)("ipykernel"))
    assert callbacks.is_interactive(OutStream())              # inside a Jupyter kernel: a cell
    assert not callbacks.is_interactive(io.StringIO())        # other streams there are still files
    with open(tmp_path / "log.txt", "w") as log:
        assert not callbacks.is_interactive(log)
    closed = io.StringIO()
    closed.close()
    assert not callbacks.is_interactive(closed)
