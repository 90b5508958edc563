"""Callbacks: code that watches `fit` and acts at the start and end of training, epochs and batches.

The protocol is Keras's. `fit` calls, in this order:

    on_train_begin(logs)
      on_epoch_begin(epoch, logs)
        on_train_batch_begin(batch, logs)      only if some callback overrides a batch hook
        on_train_batch_end(batch, logs)        logs = running means so far: {"loss": ..., "accuracy": ...}
      on_epoch_end(epoch, logs)                logs = {"loss", "accuracy", "val_loss", "val_accuracy"}
    on_train_end(logs)

`epoch` and `batch` count from 0. A callback reaches the model through `self.model` and
the run's settings through `self.params` ({"epochs", "steps", "verbose"}); it stops
training by setting `self.model.stop_training = True` (checked after every batch).

Here: History (always added by fit), GradientNorms (each layer's gradient norm per batch),
ProgbarLogger (the progress display, added when verbose != 0), EarlyStopping,
ModelCheckpoint, LearningRateScheduler, and Progbar, the bar itself (also used by evaluate
and predict).
"""
import inspect
import math
import sys
import time
import warnings

import numpy as np

from tinycnn import saving


class Callback:
    """Base class: every hook does nothing. Override the ones you need."""

    def __init__(self):
        self.model = None
        self.params = {}

    def set_model(self, model):
        self.model = model

    def set_params(self, params):
        self.params = params

    def on_train_begin(self, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_train_batch_begin(self, batch, logs=None):
        self.on_batch_begin(batch, logs)           # Keras's older name, still honoured

    def on_train_batch_end(self, batch, logs=None):
        self.on_batch_end(batch, logs)

    def on_batch_begin(self, batch, logs=None):
        pass

    def on_batch_end(self, batch, logs=None):
        pass


def _overrides(callback, *hook_names):
    """True if the callback's class replaces any of the base class's hooks `hook_names`."""
    return any(getattr(type(callback), name) is not getattr(Callback, name) for name in hook_names)


class CallbackList:
    """Several callbacks called as one, in order. `fit` makes one of these per run.

    `wants_batch_begin` / `wants_batch_end` say whether any callback overrides a batch hook,
    so that the training loop builds no per-batch logs (and makes no calls) when nobody listens.
    """

    def __init__(self, callbacks, model, params):
        self.callbacks = list(callbacks)
        for callback in self.callbacks:
            callback.set_model(model)
            callback.set_params(params)
        self.wants_batch_begin = any(_overrides(c, "on_train_batch_begin", "on_batch_begin")
                                     for c in self.callbacks)
        self.wants_batch_end = any(_overrides(c, "on_train_batch_end", "on_batch_end")
                                   for c in self.callbacks)

    def on_train_begin(self, logs=None):
        for callback in self.callbacks:
            callback.on_train_begin(logs)

    def on_train_end(self, logs=None):
        for callback in self.callbacks:
            callback.on_train_end(logs)

    def on_epoch_begin(self, epoch, logs=None):
        for callback in self.callbacks:
            callback.on_epoch_begin(epoch, logs)

    def on_epoch_end(self, epoch, logs=None):
        for callback in self.callbacks:
            callback.on_epoch_end(epoch, logs)

    def on_train_batch_begin(self, batch, logs=None):
        for callback in self.callbacks:
            callback.on_train_batch_begin(batch, logs)

    def on_train_batch_end(self, batch, logs=None):
        for callback in self.callbacks:
            callback.on_train_batch_end(batch, logs)


# ---------------------------------------------------------------------------
# History
# ---------------------------------------------------------------------------
class History(Callback):
    """Records every epoch's logs. `fit` returns it (and keeps it as `model.history`).

    history: dict of lists, e.g. {"loss": [0.52, 0.35], "accuracy": [0.81, 0.87],
             "val_loss": [...], "val_accuracy": [...]}, one entry per completed epoch.
    epoch:   the epoch numbers recorded (from 0; starts at fit's initial_epoch).
    params:  fit's settings: {"epochs", "steps", "verbose"}.
    """

    def __init__(self):
        super().__init__()
        self.history = {}
        self.epoch = []

    def on_train_begin(self, logs=None):
        self.epoch = []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(value)

    def __repr__(self):
        return f"<History epochs={len(self.epoch)} keys={list(self.history)}>"


# ---------------------------------------------------------------------------
# GradientNorms
# ---------------------------------------------------------------------------
class GradientNorms(Callback):
    """Records how big each layer's gradient is after every training batch.

    A layer's norm is the L2 norm of all its gradients together (kernel and bias):
    sqrt(sum of every dL/dw squared), read from `layer.grads` after the batch's step.
    Norms that shrink layer after layer toward the input mean the first layers learn slowly
    (vanishing gradients); huge or growing ones mean the steps are too big.

    every: record one batch in `every` (1: every batch; a larger number costs less).
    After fit:
    norms: {layer name: [norm, ...]}, one entry per recorded batch, for every layer with
           weights (Conv2D, Dense), in the model's order.
    steps: [1, 2, ...] the training step (batch, counting from 1 over all epochs) of each entry.
    tinycnn.plot.gradient_norms(recorder) draws them.
    """

    def __init__(self, every=1):
        super().__init__()
        if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
            raise ValueError(f"GradientNorms: every must be a whole number >= 1 (record one batch "
                             f"in `every`), got {every!r}")
        self.every = int(every)
        self.norms = {}
        self.steps = []
        self._step = 0

    def on_train_begin(self, logs=None):
        weighted = [layer for layer in self.model.layers if layer.grads]
        self.norms = {layer.name: [] for layer in weighted}
        self.steps = []
        self._step = 0

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        if (self._step - 1) % self.every:
            return
        self.steps.append(self._step)
        for layer in self.model.layers:
            if layer.name in self.norms:
                self.norms[layer.name].append(gradient_norm(layer.grads))


def gradient_norm(grads):
    """The L2 norm of several arrays taken as one vector: sqrt(sum of every value squared)."""
    return math.sqrt(sum(float(np.vdot(g, g)) for g in grads))   # vdot: one pass, no temporary


# ---------------------------------------------------------------------------
# The progress bar
# ---------------------------------------------------------------------------
def is_interactive(stream=None):
    """True when `stream` (default sys.stdout) is a terminal or a Jupyter cell: there a bar
    can redraw itself in place. Anywhere else (a log file, a pipe, CI) it cannot."""
    stream = sys.stdout if stream is None else stream
    try:
        if stream.isatty():
            return True
    except (AttributeError, ValueError):            # no isatty, or a closed stream
        return False
    return _is_jupyter_cell(stream)


def _is_jupyter_cell(stream):
    """True when `stream` is a Jupyter cell's output: ipykernel's OutStream, in a running kernel.
    Looks at sys.modules only, so nothing is imported where no kernel runs."""
    return "ipykernel" in sys.modules and type(stream).__name__ == "OutStream"


def jupyter_display(stream=None):
    """IPython's `display` function when `stream` (default sys.stdout) is a Jupyter cell's
    output, else None. IPython is optional: it is imported only inside a running kernel,
    which always has it."""
    if not _is_jupyter_cell(sys.stdout if stream is None else stream):
        return None
    try:
        from IPython.display import display
    except ImportError:
        return None
    return display


class _TerminalLine:
    """One line of a terminal, redrawn in place: '\\r' returns to its start."""

    def __init__(self, stream):
        self.stream = stream
        self.width = 0                      # length of the text on screen
        self.open = False                   # a partial line is on screen (no newline yet)

    def draw(self, text):
        padding = " " * max(self.width - len(text), 0)       # wipe a longer previous text
        self.stream.write("\r" + text + padding)
        self.stream.flush()
        self.width = len(text)
        self.open = True

    def end(self):
        if self.open:
            self.stream.write("\n")
            self.stream.flush()
            self.open = False


class _NotebookLine:
    """One output of a Jupyter cell, replaced in place through an IPython display handle.

    A cell keeps every '\\r' redraw of a stream as more text, so there the bar is a display
    instead: display(..., display_id=True) makes it, handle.update(...) replaces its text.
    """

    def __init__(self, display):
        self.display = display
        self.handle = None
        self.open = False                   # nothing is left half-written on a stream

    def draw(self, text):
        bundle = {"text/plain": text}       # raw=True: show this text as it is, no repr quotes
        if self.handle is None:
            self.handle = self.display(bundle, raw=True, display_id=True)
        else:
            self.handle.update(bundle, raw=True)

    def end(self):
        self.handle = None                  # a later draw makes a new output


def _format_value(name, value):
    """' - loss: 0.2846' (Keras's rule: 4 decimals, or scientific when tiny)."""
    value = float(value)
    if value != 0 and abs(value) < 1e-3:
        return f" - {name}: {value:.4e}"
    return f" - {name}: {value:.4f}"


def _format_time_per_step(seconds):
    """'2ms/step', '450us/step' or '3s/step'."""
    if seconds >= 1 or seconds == 0:
        return f"{seconds:.0f}s/step"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.0f}ms/step"
    return f"{seconds * 1e6:.0f}us/step"


def _format_eta(seconds):
    if seconds > 3600:
        return f"{int(seconds // 3600)}:{int(seconds % 3600 // 60):02d}:{int(seconds % 60):02d}"
    if seconds > 60:
        return f"{int(seconds // 60)}:{int(seconds % 60):02d}"
    return f"{seconds:.0f}s"


class Progbar:
    """Keras's progress bar for `target` steps, under an optional `title` ("Epoch 1/5").

    On a terminal (dynamic=True) the title has a line of its own and `update` redraws the
    next line in place, at most every `interval` seconds, with an ETA:
        " 412/1875 [=====>........................] - ETA: 3s - loss: 0.5123 - accuracy: 0.8123"
    and `finish` draws the final line with the total time and time per step:
        "1875/1875 [==============================] - 4s 2ms/step - loss: 0.2846 - accuracy: 0.8972"
    In a Jupyter cell (dynamic=True there too) the same bar is one display, updated in place,
    after the title: "Epoch 1/5 - 1875/1875 [=====...] - 4s 2ms/step - loss: 0.2846 - ...".
    Elsewhere (dynamic=False) nothing is written until `finish`, which writes one line:
        "Epoch 1/5 - 1875/1875 - 4s - 2ms/step - loss: 0.2846 - accuracy: 0.8972"
    """

    width = 30                          # characters between the brackets

    def __init__(self, target, dynamic, interval=0.1, stream=None, title=None):
        self.target = int(target)
        self.dynamic = bool(dynamic)
        self.interval = interval
        self.stream = sys.stdout if stream is None else stream
        self.start = time.perf_counter()
        self._last_draw = 0.0               # perf_counter of the last redraw
        display = jupyter_display(self.stream) if self.dynamic else None
        self.line = _TerminalLine(self.stream) if display is None else _NotebookLine(display)
        self.prefix = ""                    # what starts every line drawn
        if title and self.dynamic and display is None:
            self.stream.write(title + "\n")            # a terminal: Keras's header line
        elif title:
            self.prefix = title + " - "                 # one line per epoch: a notebook, a log

    @property
    def line_open(self):
        """True while a partial line is on a terminal (no newline yet)."""
        return self.line.open

    def _bar(self, current):
        digits = len(str(self.target))
        done = int(self.width * current / self.target) if self.target else self.width
        bar = "=" * max(done - 1, 0) + ((">" if current < self.target else "=") if done > 0 else "")
        return f"{current:{digits}d}/{self.target} [{bar}{'.' * (self.width - len(bar))}]"

    def update(self, current, values=()):
        """Show `current` steps done with `values` [(name, value), ...]; throttled to `interval`."""
        if not self.dynamic:
            return
        now = time.perf_counter()
        if now - self._last_draw < self.interval or current >= self.target:
            return                           # too soon; or done, and finish() draws the last line
        self._last_draw = now
        elapsed = now - self.start
        eta = elapsed / current * (self.target - current) if current else 0.0
        text = self.prefix + self._bar(current) + f" - ETA: {_format_eta(eta)}"
        text += "".join(_format_value(name, value) for name, value in values)
        self.line.draw(text)

    def finish(self, values=()):
        """Write the final line (total time, time per step, `values`) and end it."""
        elapsed = time.perf_counter() - self.start
        per_step = _format_time_per_step(elapsed / max(self.target, 1))
        metrics = "".join(_format_value(name, value) for name, value in values)
        if self.dynamic:
            self.line.draw(f"{self.prefix}{self._bar(self.target)} - {elapsed:.0f}s {per_step}{metrics}")
            self.line.end()
        else:
            self.stream.write(f"{self.prefix}{self.target}/{self.target} - {elapsed:.0f}s - "
                              f"{per_step}{metrics}\n")
            self.stream.flush()

    def close(self):
        """End a partial line (after an interruption) so later messages start on a fresh line."""
        self.line.end()


class ProgbarLogger(Callback):
    """Shows training progress: `fit` adds one when verbose != 0.

    verbose=1 on a terminal: "Epoch 1/5", then Keras's bar updated in place (at most 10 times
    a second, so it costs almost nothing per step), ending with the epoch's validation metrics.
    verbose=1 in a Jupyter cell: the same bar, one display per epoch updated in place, which
    ends as the epoch's one line "Epoch 1/5 - 1875/1875 [=====...] - 4s 2ms/step - loss: ...".
    verbose=2, or output that is neither (a log file, CI, a captured cell): one line
    per epoch and nothing per step:
        "Epoch 1/5 - 1875/1875 - 4s - 2ms/step - loss: 0.2846 - accuracy: 0.8972 - val_loss: ..."
    """

    def __init__(self, verbose=1):
        super().__init__()
        self.verbose = verbose
        self.progbar = None
        self.dynamic = False

    def on_train_begin(self, logs=None):
        self.dynamic = self.verbose == 1 and is_interactive()

    # The batch hook exists only on terminals: the training loop skips it everywhere else.
    def on_train_batch_end(self, batch, logs=None):
        if self.dynamic:
            self.progbar.update(batch + 1, (logs or {}).items())

    def on_epoch_begin(self, epoch, logs=None):
        self.progbar = Progbar(self.params.get("steps", 1), self.dynamic,
                               title=f"Epoch {epoch + 1}/{self.params.get('epochs')}")

    def on_epoch_end(self, epoch, logs=None):
        self.progbar.finish((logs or {}).items())

    def on_train_end(self, logs=None):
        if self.progbar is not None:
            self.progbar.close()


class _QuietProgbarLogger(ProgbarLogger):
    """A ProgbarLogger without the batch hook, for output that is not a terminal, so that
    the training loop has no batch hook to call at all."""
    on_train_batch_end = Callback.on_train_batch_end


def progbar_logger(verbose):
    """The progress callback fit adds: with a batch hook only where a bar is drawn."""
    if verbose == 1 and is_interactive():
        return ProgbarLogger(verbose)
    return _QuietProgbarLogger(verbose)


# ---------------------------------------------------------------------------
# Monitoring a metric: shared by EarlyStopping and ModelCheckpoint
# ---------------------------------------------------------------------------
def _monitor_mode(monitor, mode, owner):
    """'min' or 'max' for `monitor`; 'auto' means max for accuracies, min otherwise (Keras)."""
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"{owner}: mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode == "auto":
        return "max" if ("acc" in monitor or monitor.startswith("fmeasure")) else "min"
    return mode


def _monitored_value(logs, monitor, owner):
    """logs[monitor] as a float, or None with a warning naming the keys there are."""
    value = (logs or {}).get(monitor)
    if value is None:
        warnings.warn(f"{owner}: the monitored metric {monitor!r} is not in the logs (they have "
                      f"{sorted(logs or {})}); pass validation data to fit for val_ metrics, or "
                      f"monitor one of these", RuntimeWarning, stacklevel=3)
        return None
    return float(value)


# ---------------------------------------------------------------------------
# EarlyStopping
# ---------------------------------------------------------------------------
class EarlyStopping(Callback):
    """Stop training when `monitor` has stopped improving for `patience` epochs (Keras's rules).

    An epoch improves on the best so far when value < best - min_delta (mode 'min') or
    value > best + min_delta (mode 'max'); 'auto' picks max for accuracies, min otherwise.
    restore_best_weights=True puts back the weights of the best epoch when training ends.
    After training: `stopped_epoch` (0 if it never stopped), `best`, `best_epoch`.
    """

    def __init__(self, monitor="val_loss", min_delta=0, patience=0, verbose=0, mode="auto",
                 baseline=None, restore_best_weights=False, start_from_epoch=0):
        super().__init__()
        if not isinstance(monitor, str):
            raise ValueError(f"EarlyStopping: monitor must be a metric name such as 'val_loss', got {monitor!r}")
        if isinstance(patience, bool) or not isinstance(patience, (int, np.integer)) or patience < 0:
            raise ValueError(f"EarlyStopping: patience must be an integer >= 0, got {patience!r}")
        self.monitor = monitor
        self.mode = _monitor_mode(monitor, mode, "EarlyStopping")
        self.min_delta = abs(float(min_delta))
        self.patience = int(patience)
        self.verbose = verbose
        self.baseline = baseline
        self.restore_best_weights = bool(restore_best_weights)
        self.start_from_epoch = int(start_from_epoch)
        self._reset()

    def _reset(self):
        self.wait = 0
        self.stopped_epoch = 0
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_weights = None
        self.best_epoch = 0

    def _is_improvement(self, value, reference):
        if self.mode == "min":
            return value < reference - self.min_delta
        return value > reference + self.min_delta

    def on_train_begin(self, logs=None):
        self._reset()

    def on_epoch_end(self, epoch, logs=None):
        value = _monitored_value(logs, self.monitor, "EarlyStopping")
        if value is None or epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights = self.model.get_weights()          # so there is always something to restore
        self.wait += 1
        if self._is_improvement(value, self.best):
            self.best, self.best_epoch = value, epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            if self.baseline is None or self._is_improvement(value, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch > 0 and self.verbose > 0:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose > 0:
                print(f"Restoring model weights from the end of the best epoch: {self.best_epoch + 1}.")
            self.model.set_weights(self.best_weights)


# ---------------------------------------------------------------------------
# ModelCheckpoint
# ---------------------------------------------------------------------------
class ModelCheckpoint(Callback):
    """Save the model (model.save) at the end of every epoch, or only when `monitor` improves.

    filepath may hold the epoch (from 1) and any log value as format fields, e.g.
    "ckpt-{epoch:02d}-{val_loss:.4f}.tinycnn". save_weights_only=True writes model.save_weights
    instead (weights only, no optimizer). Each file is written atomically.
    """

    def __init__(self, filepath, monitor="val_loss", verbose=0, save_best_only=False,
                 save_weights_only=False, mode="auto", save_freq="epoch", initial_value_threshold=None):
        super().__init__()
        if save_freq != "epoch":
            raise ValueError(f"ModelCheckpoint: only save_freq='epoch' is supported, got {save_freq!r}")
        saving.refuse_keras_file_name(filepath, "ModelCheckpoint")   # now, not after the first epoch
        self.filepath = str(filepath)
        self.monitor = monitor
        self.verbose = verbose
        self.save_best_only = bool(save_best_only)
        self.save_weights_only = bool(save_weights_only)
        self.mode = _monitor_mode(monitor, mode, "ModelCheckpoint")
        self.initial_value_threshold = initial_value_threshold
        self.best = None

    def on_train_begin(self, logs=None):
        if self.best is None:
            if self.initial_value_threshold is not None:
                self.best = float(self.initial_value_threshold)
            else:
                self.best = math.inf if self.mode == "min" else -math.inf

    def _file_path(self, epoch, logs):
        try:
            return self.filepath.format(epoch=epoch + 1, **(logs or {}))
        except (KeyError, IndexError, ValueError) as error:
            raise ValueError(f"ModelCheckpoint: cannot fill in filepath {self.filepath!r} ({error!r}); "
                             f"it may use {{epoch}} and the log keys {sorted(logs or {})}") from None

    def on_epoch_end(self, epoch, logs=None):
        path = self._file_path(epoch, logs)
        if self.save_best_only:
            value = _monitored_value(logs, self.monitor, "ModelCheckpoint")
            if value is None:
                return
            better = value < self.best if self.mode == "min" else value > self.best
            if not better:
                if self.verbose > 0:
                    print(f"\nEpoch {epoch + 1}: {self.monitor} did not improve from {self.best:.5f}")
                return
            if self.verbose > 0:
                print(f"\nEpoch {epoch + 1}: {self.monitor} improved from {self.best:.5f} to "
                      f"{value:.5f}, saving model to {path}")
            self.best = value
        elif self.verbose > 0:
            print(f"\nEpoch {epoch + 1}: saving model to {path}")
        if self.save_weights_only:
            self.model.save_weights(path)
        else:
            self.model.save(path)


# ---------------------------------------------------------------------------
# LearningRateScheduler
# ---------------------------------------------------------------------------
class LearningRateScheduler(Callback):
    """Set the optimizer's learning rate at the start of every epoch: lr = schedule(epoch, lr).

    schedule(epoch, lr) -> new lr (epoch counts from 0; lr is the current rate). A schedule
    taking only `epoch` works too. The rate used is recorded in the logs as "learning_rate".
    For an optimizer whose learning rate is already a tinycnn.schedules schedule (per step)
    this raises TypeError at the first epoch, as Keras's does (its rate cannot be set).
    """

    def __init__(self, schedule, verbose=0):
        super().__init__()
        if not callable(schedule):
            raise ValueError(f"LearningRateScheduler: schedule must be a function "
                             f"schedule(epoch, lr) -> lr, got {schedule!r}")
        self.schedule = schedule
        self.verbose = verbose
        self._takes_lr = self._accepts_two_arguments(schedule)

    @staticmethod
    def _accepts_two_arguments(function):
        try:
            signature = inspect.signature(function)
        except (TypeError, ValueError):
            return True
        try:
            signature.bind(0, 0.1)
            return True
        except TypeError:
            return False

    def on_epoch_begin(self, epoch, logs=None):
        optimizer = self.model.optimizer
        if getattr(optimizer, "schedule", None) is not None:
            raise TypeError(f"LearningRateScheduler: the optimizer's learning rate is the schedule "
                            f"{optimizer.schedule!r}, which sets the rate at every step, so it cannot "
                            f"also be set per epoch; use one of the two (a number learning_rate with "
                            f"this callback, or the schedule alone)")
        lr = float(optimizer.learning_rate)
        new_lr = self.schedule(epoch, lr) if self._takes_lr else self.schedule(epoch)
        if (isinstance(new_lr, bool) or not isinstance(new_lr, (int, float, np.floating, np.integer))
                or not math.isfinite(new_lr) or new_lr < 0):
            raise ValueError(f"LearningRateScheduler: schedule({epoch}, {lr}) returned {new_lr!r}; "
                             f"it must return a finite number >= 0")
        optimizer.learning_rate = float(new_lr)
        if self.verbose > 0:
            print(f"\nEpoch {epoch + 1}: LearningRateScheduler setting learning rate to {float(new_lr)}.")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(self.model.optimizer.learning_rate)
