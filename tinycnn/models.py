"""Sequential: a stack of layers you compile, fit, evaluate, predict with, summarise and save.

    model = Sequential([Conv2D(32, 3, activation="relu", input_shape=(28, 28, 1)),
                        MaxPooling2D(2), Flatten(), Dense(100, activation="relu"),
                        Dense(10, activation="softmax")])
    model.compile(optimizer=SGD(learning_rate=0.01, momentum=0.9),
                  loss="categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x_train, y_train, epochs=5, batch_size=32, validation_data=(x_test, y_test))

Reading guide. `fit` hands each batch to the model's engine (tinycnn/engines), which
takes one step of gradient descent on it. The reference engine's step is the textbook loop
(tinycnn/engines/reference.py):

    out = layer.forward(out)                 each layer's forward, first to last
    loss, dL/dlogits = loss.from_logits(y, last_layer.logits)
                                             softmax + cross-entropy fused, as Keras does:
                                             dL/dlogits = (softmax - onehot) / batch
    grad = layer.backward(grad)              each layer's backward, last to first; each
                                             leaves dL/dparams in its `grads`
    optimizer.apply_gradients(model.grads_and_params())   each trainable param with its gradient

The fast engine computes the same step faster (tinycnn/engines/fast). compile(engine=...)
chooses: "auto" (the fast one where numba is there), "reference" or "fast".

`fit` wraps that in epochs and batches (shuffled with tinycnn.utils.get_rng()), keeps the
running means Keras reports, evaluates the validation data after each epoch and calls the
callbacks (tinycnn.callbacks). Everything the user passes is checked once, up front
(tinycnn/checks.py), so the loop itself does no checking.

Shapes: x is NHWC (N, H, W, C) for images, (N, features) for dense inputs; the model's
`input_shape` / `output_shape` have Keras's leading None for the batch axis.

Model (tinycnn/functional.py) is Keras's way of reading inside a built model:
Model(inputs=model.input, outputs=[layer.output for layer in model.layers]).predict(x)
returns every layer's output for x, as `layer_outputs(x)` does.
"""
import math
import os
import signal
import sys
import threading
import warnings

import numpy as np

from tinycnn import callbacks as callbacks_module
from tinycnn import checks
from tinycnn import engines
from tinycnn import layers as layers_module
from tinycnn import losses as losses_module
from tinycnn import optimizers as optimizers_module
from tinycnn import saving, utils
from tinycnn.functional import Model, SymbolicTensor
from tinycnn.saving import ModelFileError, load_model, weights_from

__all__ = ["Sequential", "Model", "load_model", "ModelFileError"]

ACCURACY_NAMES = ("accuracy", "acc", "categorical_accuracy", "sparse_categorical_accuracy")

_name_counts = {}


def _unique_name(base):
    """"sequential", then "sequential_1", "sequential_2", ... as Keras names models."""
    count = _name_counts.get(base, 0)
    _name_counts[base] = count + 1
    return base if count == 0 else f"{base}_{count}"


class Sequential:
    """A linear stack of layers (Keras's `Sequential`).

    Built (weights created) as soon as the first layer knows its input shape
    (`input_shape=...`); otherwise on `build(input_shape)` or on the first data it sees.
    """

    def __init__(self, layers=None, name=None):
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"Sequential: name must be a non-empty string, got {name!r}")
        self.name = name or _unique_name("sequential")
        self._layers = []
        self.built = False
        self._input_shape = None              # per-sample input shape once built
        self._input_tensor = None             # `model.input` once built
        self.optimizer = None
        self.loss = None
        self.metrics_names = []               # ["loss", "accuracy"] once compiled
        self.compiled = False
        self.stop_training = False
        self.history = None
        self.engine = None                    # what runs the batches: compile(engine=...)
        if layers is not None:
            if not isinstance(layers, (list, tuple)):
                raise ValueError(f"Sequential: layers must be a list of layers, got {type(layers).__name__}")
            for layer in layers:
                self.add(layer)

    # ------------------------------------------------------------------------------------------
    # Layers and building
    # ------------------------------------------------------------------------------------------
    @property
    def layers(self):
        """The layers, first to last (a copy of the list; the layers themselves are shared)."""
        return list(self._layers)

    def get_layer(self, name=None, index=None):
        """A layer by its name ("conv2d") or its position (0 = first), as Keras's get_layer."""
        if (name is None) == (index is None):
            raise ValueError("get_layer: give either name or index")
        if index is not None:
            if not -len(self._layers) <= index < len(self._layers):
                raise ValueError(f"get_layer: index {index} is out of range for a model with "
                                 f"{len(self._layers)} layers")
            return self._layers[index]
        for layer in self._layers:
            if layer.name == name:
                return layer
        raise ValueError(f"get_layer: no layer named {name!r}; the layers are "
                         f"{[layer.name for layer in self._layers]}")

    def add(self, layer):
        """Append a layer. If the model is already built, the layer is built at once."""
        if isinstance(layer, type):
            raise ValueError(f"Sequential.add: got the class {layer.__name__}, not a layer; "
                             f"call it first, e.g. add({layer.__name__}(...))")
        if not isinstance(layer, layers_module.Layer):
            raise ValueError(f"Sequential.add: expected a tinycnn layer (Conv2D, Dense, ...), "
                             f"got {layer!r}")
        if any(existing.name == layer.name for existing in self._layers):
            raise ValueError(f"Sequential.add: the model already has a layer named {layer.name!r}; "
                             f"layer names must be unique (or add the same layer only once)")
        self._layers.append(layer)
        self._mark_input_grads()
        if self.built:
            self._build_from(len(self._layers) - 1, self._layers[-2].output_shape if len(self._layers) > 1
                             else self._input_shape)
        elif len(self._layers) == 1 and layer.input_shape is not None:
            self.build()

    def pop(self):
        """Remove and return the last layer."""
        if not self._layers:
            raise ValueError("Sequential.pop: the model has no layers")
        layer = self._layers.pop()
        layer._output_tensor = None               # no longer a place in this model
        layer.need_input_grad = True              # a layer's own default, outside a model
        if not self._layers:
            self.built, self._input_shape, self._input_tensor = False, None, None
        return layer

    def build(self, input_shape=None):
        """Create every layer's weights for inputs of `input_shape`.

        input_shape: one sample's shape, (28, 28, 1), or Keras's batch form (None, 28, 28, 1).
        Without it, the first layer's own input_shape is used.
        """
        if not self._layers:
            raise ValueError("Sequential.build: the model has no layers; add some first")
        if input_shape is None:
            input_shape = self._layers[0].input_shape
            if input_shape is None:
                raise ValueError("Sequential.build: no input shape; give one, e.g. build((None, 28, 28, 1)), "
                                 "or give the first layer input_shape=(28, 28, 1)")
        try:
            shape = tuple(input_shape)
        except TypeError:
            raise ValueError(f"Sequential.build: input_shape must be a tuple such as (None, 28, 28, 1), "
                             f"got {input_shape!r}") from None
        if shape and shape[0] is None:
            shape = shape[1:]                          # Keras's (None, 28, 28, 1)
        if not shape or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1
                            for s in shape):
            raise ValueError(f"Sequential.build: input_shape must be positive sizes such as "
                             f"(None, 28, 28, 1), got {input_shape!r}")
        shape = tuple(int(s) for s in shape)
        if self.built:
            if shape != self._input_shape:
                raise ValueError(f"Sequential.build: the model is already built for inputs of shape "
                                 f"{(None,) + self._input_shape}, not {(None,) + shape}")
            return
        self._build_from(0, shape)
        self._input_shape = shape
        self._input_tensor = SymbolicTensor(None, (None,) + shape, self)
        self.built = True

    def _build_from(self, first, shape):
        """Build layers[first:] in turn, each on the previous one's output shape, and give
        each its `layer.output` in this model."""
        for layer in self._layers[first:]:
            shape = layer.build(shape)
            layer._output_tensor = SymbolicTensor(layer, (None,) + tuple(shape), self)
        self._mark_input_grads()

    def _mark_input_grads(self):
        """Tell each layer whether its backward must return dL/dx.

        Only a layer with weights (params) before it needs it: nobody needs dL/dx of the model's
        input, nor of the output of a weightless front such as Flatten or an augmentation layer,
        since no weight is updated from it. The engines stop going back where a backward returns
        None. The marks live on the layers, so fit and train_on_batch set them again: a layer
        may also sit in another model.
        """
        weights_before = False
        for layer in self._layers:
            layer.need_input_grad = weights_before
            weights_before = weights_before or bool(layer.params) or not layer.built   # unbuilt: may get weights

    @property
    def input(self):
        """The model's input as a SymbolicTensor, shape (None, *one sample's shape), for
        Model(inputs=model.input, ...) as in Keras: a place, not data."""
        self._require_built("model.input")
        return self._input_tensor

    @property
    def output(self):
        """The last layer's output as a SymbolicTensor (see `input`)."""
        self._require_built("model.output")
        return self._layers[-1].output

    @property
    def input_shape(self):
        """(None, *one sample's shape), as Keras; None before the model is built."""
        return None if not self.built else (None,) + self._input_shape

    @property
    def output_shape(self):
        """(None, *one output's shape), as Keras; None before the model is built."""
        return None if not self.built else (None,) + tuple(self._layers[-1].output_shape)

    @property
    def dtype(self):
        """The float type of the weights and of the inputs fit casts to ('float32' by default)."""
        return self._layers[0].dtype if self._layers else utils.floatx()

    def _require_built(self, what):
        if not self.built:
            raise ValueError(f"{what}: the model has not been built yet; build it with "
                             f"model.build((None, 28, 28, 1)), give the first layer input_shape=..., "
                             f"or call fit/predict on some data first")

    # ------------------------------------------------------------------------------------------
    # Weights
    # ------------------------------------------------------------------------------------------
    def _params(self):
        """Every weight, trainable or not, in get_weights's order."""
        return [p for layer in self._layers for p in layer.params]

    def _trainable_params(self):
        """The weights the optimizer updates (its slots match these, by position)."""
        return [p for layer in self._layers for p in layer.trainable_params]

    def _trainable_weight_paths(self):
        """"<layer name>/<weight name>" for each trainable param, in grads_and_params's order
        (kernel, bias, gamma, beta; "param_<i>" for a weight of another name), what
        optimizer.exclude_from_weight_decay(var_names=...) searches."""
        paths = []
        for layer in self._layers:
            roles = {}
            for role in ("kernel", "bias", "gamma", "beta"):
                try:
                    roles[id(getattr(layer, role))] = role
                except Exception:                  # no such weight, or the layer not built
                    pass
            paths += [f"{layer.name}/{roles.get(id(p), f'param_{i}')}" for i, p in enumerate(layer.trainable_params)]
        return paths

    def grads_and_params(self):
        """[(dL/dparam, param)] for every trainable weight, layer by layer (Layer.grads_and_params):
        what the engines hand to optimizer.apply_gradients after a backward pass."""
        return [pair for layer in self._layers for pair in layer.grads_and_params()]

    def get_weights(self):
        """Copies of all weights, one flat list in Keras's order (layer by layer, kernel then bias)."""
        return [np.array(p, copy=True) for p in self._params()]

    def set_weights(self, weights):
        """Copy `weights` (get_weights's list) into the model, after checking every shape."""
        self._require_built("set_weights")
        weights = list(weights)
        params = self._params()
        if len(weights) != len(params):
            raise ValueError(f"set_weights: the model has {len(params)} weight arrays, got {len(weights)}")
        owners = [layer.name for layer in self._layers for _ in layer.params]
        for i, (w, p, owner) in enumerate(zip(weights, params, owners)):
            if np.shape(w) != p.shape:
                raise ValueError(f"set_weights: weight {i} (of layer {owner!r}) must have shape "
                                 f"{p.shape}, got {np.shape(w)}")
        start = 0
        for layer in self._layers:
            count = len(layer.params)
            layer.set_weights(weights[start:start + count])
            start += count

    def count_params(self):
        """The number of scalar weights, trainable or not."""
        self._require_built("count_params")
        return sum(layer.count_params() for layer in self._layers)

    def count_trainable_params(self):
        """The number of scalar weights the optimizer updates."""
        self._require_built("count_trainable_params")
        return sum(layer.count_trainable_params() for layer in self._layers)

    # ------------------------------------------------------------------------------------------
    # compile
    # ------------------------------------------------------------------------------------------
    def compile(self, optimizer, loss, metrics=None, engine="auto"):
        """Choose the optimizer ("sgd", "adam" or an instance), the loss
        ("categorical_crossentropy" for one-hot labels, "sparse_categorical_crossentropy" for
        integer labels), the metrics (["accuracy"] or None) and the engine that runs the
        batches: "auto" ($TINYCNN_ENGINE, else "fast" where numba is there), "reference"
        (the layers' own textbook passes) or "fast" (tinycnn.engines)."""
        self.engine = engines.get(engine)
        self._engine_choice = engine if isinstance(engine, str) else self.engine.name
        self.optimizer = optimizers_module.get(optimizer)
        self.optimizer._weight_paths = self._trainable_weight_paths     # for exclude_from_weight_decay
        self.loss = losses_module.get(loss)
        if metrics is None:
            metrics = []
        elif isinstance(metrics, str):
            metrics = [metrics]
        metrics = list(metrics)
        for metric in metrics:
            if metric not in ACCURACY_NAMES:
                raise ValueError(f"compile: unknown metric {metric!r}; tinycnn offers "
                                 f"{', '.join(repr(m) for m in ACCURACY_NAMES)}")
        if len(metrics) > 1:
            raise ValueError(f"compile: give at most one accuracy metric, got {metrics}")
        self._metrics = metrics
        self.metrics_names = ["loss"] + metrics
        self.compiled = True

    def _require_compiled(self, what):
        if not self.compiled:
            raise ValueError(f"{what}: the model must be compiled first, e.g. model.compile("
                             f"optimizer='adam', loss='sparse_categorical_crossentropy', metrics=['accuracy'])")

    @property
    def _accuracy_name(self):
        return self._metrics[0] if self._metrics else None

    # ------------------------------------------------------------------------------------------
    # One batch through the engine
    # ------------------------------------------------------------------------------------------
    def _mean_loss(self, y, probs, logits):
        """The batch's mean loss, from the logits where the output is a softmax (as training computes it)."""
        return self.loss.from_logits(y, logits)[0] if logits is not None else self.loss.from_probs(y, probs)[0]

    def _engine_or_default(self):
        """The compiled engine, or for an uncompiled model (predict) the default one."""
        if self.engine is None:
            self.engine = engines.get("auto")
            self._engine_choice = "auto"
        return self.engine

    @staticmethod
    def _count_correct(probs, labels):
        """How many rows' largest output is at the true label (Keras's accuracy)."""
        return int(np.count_nonzero(np.argmax(probs, axis=1) == labels))

    # ------------------------------------------------------------------------------------------
    # fit
    # ------------------------------------------------------------------------------------------
    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None,
            validation_split=0.0, validation_data=None, shuffle=True, initial_epoch=0):
        """Train for `epochs` passes over (x, y) in batches of `batch_size`; returns a History.

        x: (N, *input shape) floats (NHWC images); y: one-hot (N, classes) or integer
        labels (N,), as the loss wants. validation_split takes the LAST fraction of x and y
        (before shuffling) as validation data, as Keras does; validation_data=(x_val, y_val)
        overrides it. shuffle=True draws a fresh order every epoch from tinycnn.utils.get_rng().

        The reported loss and accuracy are the running means over the epoch (weighted by
        batch size), as Keras reports them. Training stops early when a callback sets
        model.stop_training, when the loss becomes NaN or infinite (the bad step is not
        taken; a RuntimeWarning names the epoch and step), or on Ctrl-C (after the current
        step; the History of the completed epochs is returned).
        """
        self._require_compiled("fit")
        batch_size = checks.batch_size_of(batch_size, "fit")
        verbose = checks.verbose_level(verbose, "fit")
        x, y, labels, validation = checks.fit_data(self, x, y, epochs, initial_epoch, validation_data,
                                                   validation_split)
        self._mark_input_grads()                    # again: a layer shared with another model may carry its marks

        batch_size = min(batch_size, len(x))         # a batch larger than the data: the data is one batch
        n, steps = len(x), math.ceil(len(x) / batch_size)
        history = callbacks_module.History()
        if isinstance(callbacks, callbacks_module.Callback):
            callbacks = [callbacks]                  # one callback, as many Keras users pass it
        user_callbacks = list(callbacks or [])
        for callback in user_callbacks:
            if not isinstance(callback, callbacks_module.Callback):
                raise ValueError(f"fit: callbacks must be tinycnn.callbacks.Callback objects, got {callback!r}")
        all_callbacks = user_callbacks + [history]                  # Keras's order
        if verbose:
            all_callbacks.append(callbacks_module.progbar_logger(verbose))
        callback_list = callbacks_module.CallbackList(
            all_callbacks, self, {"verbose": verbose, "epochs": int(epochs), "steps": steps})
        rng = utils.get_rng()

        self.history = history
        self.stop_training = False
        self._interrupt_requested = False
        previous_handler = self._catch_ctrl_c()
        epoch, step, stopped_by = initial_epoch, 0, None
        callback_list.on_train_begin()
        try:
            # the engine's setup for the whole call (none on the reference engine)
            with self.engine.run(self, batch_size, steps * (epochs - initial_epoch), x, y):
                for epoch in range(initial_epoch, epochs):
                    callback_list.on_epoch_begin(epoch)
                    # a copy of the weights, for the NaN guard's rare worst case (see _nan_stop)
                    epoch_start = (self.get_weights(), self.optimizer.get_state())
                    order = rng.permutation(n) if shuffle else None
                    logs, step, stopped_by = self._fit_epoch(x, y, labels, order, batch_size, callback_list)
                    if stopped_by is None and not self._weights_are_finite():
                        stopped_by = "nan weights"                     # overflowed, yet the loss stayed finite
                    if stopped_by is not None:                          # NaN or Ctrl-C: epoch not recorded
                        break
                    if validation is not None:
                        val_loss, val_correct = self._evaluate_arrays(*validation, batch_size)
                        logs["val_loss"] = val_loss
                        if self._accuracy_name:
                            logs["val_" + self._accuracy_name] = val_correct / len(validation[0])
                    callback_list.on_epoch_end(epoch, logs)
                    if self._interrupt_requested:
                        stopped_by = "interrupt"
                    if self.stop_training or stopped_by is not None:
                        break
        except KeyboardInterrupt:
            stopped_by = "interrupt"
        finally:
            self._restore_ctrl_c(previous_handler)

        callback_list.on_train_end()
        if stopped_by in ("nan", "nan weights"):
            self._nan_stop(epoch, step, epochs, steps, epoch_start, loss_was_nan=stopped_by == "nan",
                           probe=x[:batch_size])
        elif stopped_by == "interrupt":
            print(f"Training interrupted (Ctrl-C) in epoch {epoch + 1}/{epochs} at step {step + 1}/{steps}; "
                  f"the model keeps its current weights, and the returned History holds the "
                  f"{len(history.epoch)} completed epoch(s).", file=sys.stderr)
        return history

    def _fit_epoch(self, x, y, labels, order, batch_size, callback_list):
        """One pass over the data in batches (in `order`, or as given when order is None).

        Returns (logs, last step, stopped_by): logs = the running means {"loss", "accuracy"};
        stopped_by = None, "nan" (the loss was not finite: that step was not applied) or
        "interrupt" (Ctrl-C). A callback's model.stop_training also ends the epoch early.
        """
        n, accuracy_name = len(x), self._accuracy_name
        loss_sum, correct, seen, stopped_by = 0.0, 0, 0, None
        step = 0
        try:
            for step in range(math.ceil(n / batch_size)):
                start, stop = step * batch_size, min((step + 1) * batch_size, n)
                if order is None:                               # views, no copies
                    xb, yb, lb = x[start:stop], y[start:stop], labels[start:stop]
                else:                                           # one gather per batch
                    rows = order[start:stop]
                    xb, yb, lb = x[rows], y[rows], labels[rows]
                if callback_list.wants_batch_begin:
                    callback_list.on_train_batch_begin(step)

                loss, probs = self.engine.train_step(self, xb, yb)
                if not math.isfinite(loss):
                    stopped_by = "nan"
                    break

                loss_sum += loss * (stop - start)               # running means, weighted by batch size
                seen += stop - start
                if accuracy_name:
                    correct += self._count_correct(probs, lb)
                if callback_list.wants_batch_end:
                    batch_logs = {"loss": loss_sum / seen}
                    if accuracy_name:
                        batch_logs[accuracy_name] = correct / seen
                    callback_list.on_train_batch_end(step, batch_logs)
                if self._interrupt_requested:
                    stopped_by = "interrupt"
                    break
                if self.stop_training:
                    break
        except KeyboardInterrupt:         # raised by a callback, or Ctrl-C outside the main thread
            stopped_by = "interrupt"
        logs = {"loss": loss_sum / seen} if seen else {}
        if accuracy_name and seen:
            logs[accuracy_name] = correct / seen
        return logs, step, stopped_by

    def _weights_are_finite(self):
        return all(np.isfinite(p).all() for p in self._params())

    def _predicts_finite(self, probe):
        """True if the weights are finite and so are the model's outputs for the probe batch."""
        return self._weights_are_finite() and bool(np.isfinite(self.engine.predict_step(self, probe)[0]).all())

    def _nan_stop(self, epoch, step, epochs, steps, epoch_start, loss_was_nan, probe):
        """After a NaN/inf loss (or weights): say where, and make sure the model keeps usable weights.

        The step with the bad loss was not applied, so the weights are normally those of the
        step before. If those are no use (infinite, or so large that the outputs for a few
        training samples, `probe`, are NaN), the model goes back to its weights at the start
        of the epoch.
        """
        if loss_was_nan:
            message = (f"Training stopped: the loss became NaN or infinite in epoch {epoch + 1}/{epochs} "
                       f"at step {step + 1}/{steps}; that step was not applied")
        else:
            message = (f"Training stopped: the weights became NaN or infinite during epoch "
                       f"{epoch + 1}/{epochs} while the loss stayed finite")
        if self._predicts_finite(probe):
            message += ", so the model keeps the last weights that gave a finite loss."
        else:
            weights, optimizer_state = epoch_start
            self.set_weights(weights)
            self.optimizer.set_state(optimizer_state)
            message += (f". The steps before it had made the weights so large that the model's outputs "
                        f"were NaN, so the model was put back to its weights at the start of epoch "
                        f"{epoch + 1}")
            message += "." if self._predicts_finite(probe) else ", whose outputs are not finite either."
        message += " Try a smaller learning rate, or check the scale of the inputs."
        warnings.warn(message, RuntimeWarning, stacklevel=3)

    def _catch_ctrl_c(self):
        """During fit, Ctrl-C (once or many times) asks the loop to stop after the current step.

        The handler only sets a flag, so a step is never cut off halfway (some weights updated,
        others not); the loop checks the flag after each step. Returns the previous handler
        to put back.
        """
        if threading.current_thread() is not threading.main_thread():
            return None
        previous = signal.getsignal(signal.SIGINT)
        if previous is None or previous is signal.SIG_IGN:
            return None

        def request_stop(signum, frame):
            self._interrupt_requested = True

        signal.signal(signal.SIGINT, request_stop)
        return previous

    @staticmethod
    def _restore_ctrl_c(previous):
        if previous is not None:
            signal.signal(signal.SIGINT, previous)

    # ------------------------------------------------------------------------------------------
    # evaluate, predict, layer outputs
    # ------------------------------------------------------------------------------------------
    def _evaluate_arrays(self, x, y, labels, batch_size, progbar=None):
        """Checked arrays -> (mean loss over all samples, number of correct predictions)."""
        loss_sum, correct = 0.0, 0
        for step, start in enumerate(range(0, len(x), batch_size)):
            stop = min(start + batch_size, len(x))
            probs, logits = self.engine.predict_step(self, x[start:stop])
            loss = self._mean_loss(y[start:stop], probs, logits)
            loss_sum += loss * (stop - start)
            if self._metrics:
                correct += self._count_correct(probs, labels[start:stop])
            if progbar is not None:
                progbar.update(step + 1, [("loss", loss_sum / stop)] +
                               ([(self._accuracy_name, correct / stop)] if self._metrics else []))
        return loss_sum / len(x), correct

    def _progbar(self, verbose, steps):
        if not verbose:
            return None
        return callbacks_module.Progbar(steps, dynamic=verbose == 1 and callbacks_module.is_interactive())

    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", return_dict=False):
        """Loss (averaged over all samples) and accuracy on (x, y): [loss, accuracy], or the
        loss alone when compiled without metrics, or {"loss": ..., "accuracy": ...} with
        return_dict=True."""
        self._require_compiled("evaluate")
        batch_size = checks.batch_size_of(batch_size, "evaluate")
        verbose = checks.verbose_level(verbose, "evaluate")
        if x is None or y is None:
            raise ValueError("evaluate: give both the inputs x and the targets y")
        x = checks.inputs(self, x, "evaluate")
        y, labels = checks.targets(self, y, len(x), "evaluate")
        batch_size = min(batch_size, len(x))
        steps = math.ceil(len(x) / batch_size)
        progbar = self._progbar(verbose, steps)
        with self.engine.run(self, batch_size, steps, x):
            loss, correct = self._evaluate_arrays(x, y, labels, batch_size, progbar)
        results = {"loss": float(loss)}
        if self._metrics:
            results[self._accuracy_name] = correct / len(x)
        if progbar is not None:
            progbar.finish(results.items())
        if return_dict:
            return results
        return list(results.values()) if self._metrics else results["loss"]

    def predict(self, x, batch_size=None, verbose="auto"):
        """The last layer's outputs for x, in batches: (N, classes) probabilities for a classifier."""
        batch_size = checks.batch_size_of(batch_size, "predict")
        verbose = checks.verbose_level(verbose, "predict")
        x = checks.inputs(self, x, "predict")
        outputs = np.empty((len(x),) + tuple(self._layers[-1].output_shape), dtype=self.dtype)
        batch_size = min(batch_size, len(x))
        steps = math.ceil(len(x) / batch_size)
        progbar = self._progbar(verbose, steps)
        engine = self._engine_or_default()
        with engine.run(self, batch_size, steps, x):
            for step, start in enumerate(range(0, len(x), batch_size)):
                outputs[start:start + batch_size] = engine.predict_step(self, x[start:start + batch_size])[0]
                if progbar is not None:
                    progbar.update(step + 1)
        if progbar is not None:
            progbar.finish()
        return outputs

    def __call__(self, x, training=False):
        """The model's output for one batch x (Keras's model(x)), as a NumPy array."""
        x = checks.inputs(self, x, "Sequential.__call__")
        engine = self._engine_or_default()
        with engine.run(self, len(x), 1, x):
            return engine.predict_step(self, x)[0]

    def layer_outputs(self, x, batch_size=None):
        """Every layer's output for x, from one forward pass: a list, one array per layer.

        For the notebook's first CNN and one image x (1, 28, 28, 1): shapes (1, 26, 26, 32),
        (1, 13, 13, 32), (1, 5408), (1, 100), (1, 10). These are the layers' own forward passes
        (the reference engine's), so the last equals predict(x) on that engine exactly, and on
        the fast one to float32 rounding. batch_size splits large x into batches.
        """
        x = checks.inputs(self, x, "layer_outputs")
        batch_size = len(x) if batch_size is None else checks.batch_size_of(batch_size, "layer_outputs")
        outputs = [np.empty((len(x),) + tuple(layer.output_shape), dtype=self.dtype) for layer in self._layers]
        for start in range(0, len(x), batch_size):
            batch = x[start:start + batch_size]
            for layer, out in zip(self._layers, outputs):
                batch = layer.forward(batch, training=False)
                out[start:start + len(batch)] = batch
        return outputs

    # ------------------------------------------------------------------------------------------
    # One batch at a time
    # ------------------------------------------------------------------------------------------
    def train_on_batch(self, x, y, return_dict=False):
        """One optimizer step on the batch (x, y) -> [loss, accuracy] of that batch before the step
        (the loss alone without metrics). A NaN/inf loss skips the step and warns."""
        self._require_compiled("train_on_batch")
        x = checks.inputs(self, x, "train_on_batch")
        y, labels = checks.targets(self, y, len(x), "train_on_batch")
        self._mark_input_grads()                    # (as in fit)
        with self.engine.run(self, len(x), 1, x, y):
            loss, probs = self.engine.train_step(self, x, y)
        if not math.isfinite(loss):
            warnings.warn("train_on_batch: the loss is NaN or infinite; the step was not applied",
                          RuntimeWarning, stacklevel=2)
        return self._batch_results(loss, probs, labels, return_dict)

    def test_on_batch(self, x, y, return_dict=False):
        """[loss, accuracy] on the batch (x, y), without training (the loss alone without metrics)."""
        self._require_compiled("test_on_batch")
        x = checks.inputs(self, x, "test_on_batch")
        y, labels = checks.targets(self, y, len(x), "test_on_batch")
        with self.engine.run(self, len(x), 1, x):
            probs, logits = self.engine.predict_step(self, x)
        loss = self._mean_loss(y, probs, logits)
        return self._batch_results(loss, probs, labels, return_dict)

    def _batch_results(self, loss, probs, labels, return_dict):
        results = {"loss": float(loss)}
        if self._metrics:
            results[self._accuracy_name] = self._count_correct(probs, labels) / len(labels)
        if return_dict:
            return results
        return list(results.values()) if self._metrics else results["loss"]

    # ------------------------------------------------------------------------------------------
    # summary
    # ------------------------------------------------------------------------------------------
    def summary(self, print_fn=None):
        """Print Keras's table: each layer's name (type), output shape and parameter count, then the totals."""
        self._require_built("summary")
        print_fn = print if print_fn is None else print_fn
        rows = [("Layer (type)", "Output Shape", "Param #")]
        rows += [(f"{layer.name} ({type(layer).__name__})", str((None,) + tuple(layer.output_shape)),
                  str(layer.count_params())) for layer in self._layers]
        # Keras's columns end at 29, 55 and 65 characters; widen them if a name is longer.
        widths = [29, 26, 10]
        for row in rows:
            widths = [max(w, len(cell) + 1) for w, cell in zip(widths, row)]
        line_length = sum(widths)

        def format_row(row):
            return "".join(cell.ljust(width) for cell, width in zip(row, widths))

        total, trainable = self.count_params(), self.count_trainable_params()
        lines = [f'Model: "{self.name}"', "_" * line_length, format_row(rows[0]), "=" * line_length]
        for i, row in enumerate(rows[1:]):
            lines.append(format_row(row))
            lines.append("=" * line_length if i == len(rows) - 2 else "_" * line_length)
        lines += [f"Total params: {total:,}", f"Trainable params: {trainable:,}",
                  f"Non-trainable params: {total - trainable:,}",
                  "_" * line_length]
        for line in lines:
            print_fn(line)

    # ------------------------------------------------------------------------------------------
    # Config, saving and loading
    # ------------------------------------------------------------------------------------------
    def get_config(self):
        """JSON-able architecture: {"name", "layers": [{"class_name", "config"}], "build_input_shape"}."""
        return {"name": self.name,
                "layers": [{"class_name": type(layer).__name__, "config": layer.get_config()}
                           for layer in self._layers],
                "build_input_shape": None if not self.built else [None] + list(self._input_shape)}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        """A new model from get_config's dict (fresh weights; built if the config has an input shape).

        custom_objects: {class name: layer class} for layers of your own, as in load_model.
        """
        classes = saving.layer_classes(custom_objects)
        layers = [saving.layer_class(entry, classes).from_config(dict(entry["config"]))
                  for entry in config["layers"]]
        model = cls(layers, name=config.get("name"))
        if config.get("build_input_shape") is not None and not model.built:
            model.build(tuple(config["build_input_shape"]))
        return model

    def _compile_config(self):
        loss_config = self.loss.get_config() if hasattr(self.loss, "get_config") else {"name": self.loss.name}
        loss = self.loss.name if set(loss_config) <= {"name"} else {"class_name": type(self.loss).__name__,
                                                                     "config": loss_config}
        return {"loss": loss, "metrics": list(self._metrics), "engine": self._engine_choice,
                "optimizer": {"class_name": type(self.optimizer).__name__,
                              "config": self.optimizer.get_config()}}

    def save(self, filepath, overwrite=True):
        """Write the whole model to one file: architecture, weights, compile settings and the
        optimizer's state, so load_model(filepath) predicts bit-identically and training
        continues exactly where it stopped. The write is atomic (temp file, then rename).

        The file is tinycnn's own format, an .npz archive ("cnn.npz"), not Keras's: a name
        ending in .keras or .h5 raises ValueError naming the .npz to use, since Keras could
        not open what tinycnn would write there."""
        self._require_built("save")
        self._save(filepath, overwrite, kind="model")

    def save_weights(self, filepath, overwrite=True):
        """Write only the weights (and the architecture, to check against when loading)."""
        self._require_built("save_weights")
        self._save(filepath, overwrite, kind="weights")

    def _save(self, filepath, overwrite, kind):
        if not overwrite and os.path.exists(filepath):
            raise FileExistsError(f"{filepath!r} exists; pass overwrite=True to replace it")
        header = {"kind": kind, "model": self.get_config(), "compile": None}
        arrays = {f"weight_{i:04d}": w for i, w in enumerate(self._params())}
        if kind == "model" and self.compiled:
            header["compile"] = self._compile_config()
            state = self.optimizer.get_state()
            header["optimizer_state_count"] = len(state)
            arrays.update({f"optimizer_{i:04d}": np.asarray(s) for i, s in enumerate(state)})
        saving.write_model_file(filepath, header, arrays)

    def load_weights(self, filepath):
        """Load the weights from a file written by save or save_weights into this (same-shaped) model."""
        own_classes = {type(layer).__name__: type(layer) for layer in self._layers}   # custom ones too
        header, arrays = saving.read_model_file(filepath, custom_objects=own_classes)
        weights = weights_from(header, arrays, filepath)
        self._require_built("load_weights")
        expected = [p.shape for p in self._params()]
        if [w.shape for w in weights] != expected:
            raise ModelFileError(f"cannot load weights from {filepath!r}: its weight shapes "
                                 f"{[w.shape for w in weights]} do not match this model's {expected}")
        self.set_weights(weights)

    def __repr__(self):
        return f"<Sequential name={self.name!r} layers={len(self._layers)} built={self.built}>"
