"""Optimizers with Keras's exact update rules, updating the parameters in place.

    opt = SGD(learning_rate=0.01, momentum=0.9)
    opt.apply_gradients(zip(grads, params))     # one step; params change in place

The optimizer keeps its state ("slots": momentum, Adam's m and v) per POSITION in the list
of (grad, param) pairs, created on the first call; so always pass the parameters in the
same order (a model's layers' params, first to last).

The arithmetic is done in the parameters' dtype, in the same order as Keras 3, so that a
float32 model follows Keras's float32 trajectory to rounding:
    SGD:            v = momentum * v - lr * g;  w = w + v
        nesterov:   w = w + (momentum * v - lr * g)          (with the new v)
        momentum 0: w = w - lr * g
    Adam (t = step, from 1):
        m = m + (g - m) * (1 - beta_1)        (= beta_1 m + (1 - beta_1) g)
        v = v + (g*g - v) * (1 - beta_2)
        alpha = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)
        w = w - (m * alpha) / (sqrt(v) + epsilon)

Weight decay (Keras 3's, decoupled): with weight_decay set, every trainable parameter is
first shrunk, then the rule above is applied with the same learning rate:
        w = w - w * weight_decay * lr            (in the parameter's dtype, (w * wd) * lr)
as keras/src/optimizers/base_optimizer.py `_apply_weight_decay` (`variable - variable * wd * lr`,
before `_backend_update_step`). AdamW is Adam with weight_decay=0.004 by default.
exclude_from_weight_decay(var_names=[...]) leaves out the parameters whose path
"<layer name>/<weight name>" (e.g. "dense_1/bias", "batch_normalization/gamma") contains one
of the names (a regular-expression search, as Keras searches a variable's name); so
var_names=["bias"] leaves out every bias, as in Keras, and a layer's name all its weights.

The learning rate may be a schedule (tinycnn.schedules, also tinycnn.optimizers.schedules):
each step uses lr = schedule(iterations), iterations counted before the step (from 0), as
Keras 3; `optimizer.learning_rate` then reads as that number and cannot be set.

Saving and resuming: get_state() returns [iterations, slot arrays...], set_state(list) puts
them back, so training continues bit-identically after a save/load.

One step is two parts: `coefficients(dtype)` gives the step's numbers (learning rate,
momentum; Adam's alpha...) and `update(grad, param, slots, coefficients)` applies the rule
to one parameter. The fast engine applies the same rules, compiled.
"""
import re

import numpy as np

from tinycnn import schedules
from tinycnn.schedules import LearningRateSchedule


class Optimizer:
    """Base class: learning rate, step counter, per-position slots, state and config."""
    slot_names = ()            # e.g. ("momentum",) or ("m", "v")
    rule_size = 0              # how many of coefficients(dtype)'s numbers are the rule's (then wd, lr)

    def __init__(self, learning_rate, lr=None, name=None, weight_decay=None):
        if lr is not None:                          # the old Keras 2 spelling, SGD(lr=0.01)
            learning_rate = lr
        if isinstance(learning_rate, dict):         # a saved schedule's config
            learning_rate = schedules.deserialize(learning_rate)
        self.learning_rate = learning_rate
        if weight_decay is not None:
            if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float, np.floating, np.integer)) \
                    or not np.isfinite(weight_decay) or weight_decay < 0:
                raise ValueError(f"{type(self).__name__}: weight_decay must be None or a non-negative "
                                 f"number, got {weight_decay!r}")
            weight_decay = float(weight_decay)
        self.weight_decay = weight_decay
        self.iterations = 0
        self.name = name or type(self).__name__.lower()
        self.slots = None                           # list (per parameter) of lists of arrays
        self._excluded_names = []                   # exclude_from_weight_decay's var_names
        self._decay_mask = None                     # per parameter: is it decayed? (made at the first step)
        self._weight_paths = None                   # () -> the params' paths; Sequential.compile sets it

    @property
    def learning_rate(self):
        """The learning rate the next step uses: the number, or schedule(iterations)."""
        if isinstance(self._learning_rate, LearningRateSchedule):
            value = self._learning_rate(self.iterations)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
                    or not np.isfinite(value) or value < 0:
                raise ValueError(f"{type(self).__name__}: the learning rate schedule {self._learning_rate!r} "
                                 f"gave {value!r} at step {self.iterations}; it must give a number >= 0")
            return float(value)
        return self._learning_rate

    @learning_rate.setter
    def learning_rate(self, value):
        if isinstance(value, LearningRateSchedule):
            self._learning_rate = value
            return
        if isinstance(getattr(self, "_learning_rate", None), LearningRateSchedule):
            raise TypeError("This optimizer was created with a `LearningRateSchedule` object as its "
                            "`learning_rate` constructor argument, hence its learning rate is not "
                            "settable. If you need the learning rate to be settable, you should "
                            "instantiate the optimizer with a float `learning_rate` argument.")
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
                or not np.isfinite(value) or value < 0:
            raise ValueError(f"{type(self).__name__}: learning_rate must be a non-negative number "
                             f"or a tinycnn.schedules.LearningRateSchedule, got {value!r}")
        self._learning_rate = float(value)

    @property
    def schedule(self):
        """The learning rate schedule this optimizer follows, or None for a fixed number."""
        return self._learning_rate if isinstance(self._learning_rate, LearningRateSchedule) else None

    # -- weight decay -------------------------------------------------------------------------
    def exclude_from_weight_decay(self, var_list=None, var_names=None):
        """Leave out of weight decay the parameters whose path "<layer name>/<weight name>"
        contains one of `var_names` (regular expressions, searched as Keras does). Before the
        first step only, as in Keras. var_list (Keras's variables) has no tinycnn equivalent:
        a parameter is an array, and arrays are replaced by copies (saving, shared memory)."""
        if self.slots is not None:
            raise ValueError("`exclude_from_weight_decay()` can only be configured before "
                             "the optimizer is built.")
        if var_list:
            raise ValueError(f"{type(self).__name__}.exclude_from_weight_decay: var_list is not supported "
                             f"(tinycnn's weights are plain arrays); name them with var_names, e.g. "
                             f"var_names=['bias'] or ['dense_1/kernel']")
        names = list(var_names or [])
        if any(not isinstance(n, str) for n in names):
            raise ValueError(f"{type(self).__name__}.exclude_from_weight_decay: var_names must be strings, "
                             f"got {names!r}")
        self._excluded_names = names
        self._decay_mask = None

    def _make_decay_mask(self, count):
        """[True where the parameter at that position is decayed] for `count` parameters."""
        if not self._excluded_names:
            return [True] * count
        paths = self._weight_paths() if self._weight_paths is not None else None
        if paths is None or len(paths) != count:
            raise ValueError(f"{type(self).__name__}: exclude_from_weight_decay(var_names=...) needs the "
                             f"parameters' names; use the optimizer through model.compile")
        pattern = re.compile("|".join(sorted(set(self._excluded_names))))
        return [pattern.search(path) is None for path in paths]

    def decays(self, index):
        """Is the parameter at position `index` decayed this step?"""
        return self.weight_decay is not None and (self._decay_mask is None or self._decay_mask[index])

    def decay_coefficients(self, dtype):
        """(weight_decay, lr) as `dtype` scalars when weight decay is on, else ()."""
        if self.weight_decay is None:
            return ()
        f = np.dtype(dtype).type
        return f(self.weight_decay), f(self.learning_rate)

    def apply_weight_decay(self, param, coefficients):
        """param = param - param * weight_decay * lr, in place (Keras 3's decoupled decay)."""
        weight_decay, lr = coefficients[self.rule_size:self.rule_size + 2]
        param -= param * weight_decay * lr

    def _check_pairs(self, grads_and_vars):
        pairs = list(grads_and_vars)
        for i, pair in enumerate(pairs):
            if len(pair) != 2:
                raise ValueError(f"{type(self).__name__}.apply_gradients expects (grad, param) pairs; "
                                 f"item {i} is not a pair")
            grad, param = pair
            if not isinstance(param, np.ndarray):
                raise ValueError(f"{type(self).__name__}: parameter {i} must be a NumPy array "
                                 f"(it is updated in place), got {type(param).__name__}")
            if np.shape(grad) != param.shape:
                raise ValueError(f"{type(self).__name__}: gradient {i} has shape {np.shape(grad)} "
                                 f"but its parameter has shape {param.shape}")
        if self.slots is None:
            self.build([param for _, param in pairs])
        expected = [s[0].shape if s else None for s in self.slots]
        if len(self.slots) != len(pairs) or any(
                s and s[0].shape != p.shape for s, (_, p) in zip(self.slots, pairs)):
            raise ValueError(f"{type(self).__name__}: this optimizer was built for {len(self.slots)} "
                             f"parameters with shapes {expected}, got {len(pairs)} with shapes "
                             f"{[p.shape for _, p in pairs]}; use a new optimizer for a new model")
        if self.weight_decay is not None and (self._decay_mask is None or len(self._decay_mask) != len(pairs)):
            self._decay_mask = self._make_decay_mask(len(pairs))
        for i, (_, param) in enumerate(pairs):          # restored state keeps the params' float type
            if any(s.dtype != param.dtype or not s.flags.c_contiguous for s in self.slots[i]):
                self.slots[i] = [np.ascontiguousarray(s, dtype=param.dtype) for s in self.slots[i]]
        return pairs

    def build(self, params):
        """Make the slots for `params` (zeros of each one's shape), as before the first step."""
        self.slots = [[np.zeros_like(p) for _ in self.slot_names] for p in params]

    def apply_gradients(self, grads_and_vars):
        """One step: update every param in place from its grad. grads_and_vars: (grad, param) pairs."""
        pairs = self._check_pairs(grads_and_vars)
        numbers = self.coefficients_for([param for _, param in pairs])
        for i, ((_, param), coefficients) in enumerate(zip(pairs, numbers)):
            if self.decays(i):                              # Keras: decay every variable, then the rule
                self.apply_weight_decay(param, coefficients)
        for (grad, param), slots, coefficients in zip(pairs, self.slots, numbers):
            self.update(np.ascontiguousarray(grad, dtype=param.dtype), param, slots, coefficients)
        self.iterations += 1

    def coefficients_for(self, params):
        """coefficients(param.dtype) for each of params, worked out once per dtype."""
        by_dtype = {}
        for param in params:
            if param.dtype not in by_dtype:
                by_dtype[param.dtype] = self.coefficients(param.dtype)
        return [by_dtype[param.dtype] for param in params]

    def coefficients(self, dtype):
        """This step's numbers for `update`, as scalars of `dtype` (a tuple): the rule's
        `rule_size` numbers, then decay_coefficients(dtype) (weight decay and lr) if any."""
        raise NotImplementedError

    def update(self, grad, param, slots, coefficients):
        """The rule on one parameter, in place; coefficients from `coefficients`. Does not
        count the step (apply_gradients does)."""
        raise NotImplementedError

    # -- saving -------------------------------------------------------------------------------
    def get_state(self):
        """[iterations (int64 array), then each parameter's slots in order], all copies."""
        state = [np.array(self.iterations, dtype=np.int64)]
        for slots in self.slots or []:
            state.extend(s.copy() for s in slots)
        return state

    def set_state(self, state):
        """Restore get_state()'s list; slot shapes are checked against the params at the next step."""
        state = list(state)
        if not state or np.shape(state[0]) != ():
            raise ValueError(f"{type(self).__name__}.set_state: expected [iterations, slots...], "
                             f"got a list starting with shape {np.shape(state[0]) if state else None}")
        arrays, k = state[1:], len(self.slot_names)
        if k == 0:
            if arrays:
                raise ValueError(f"{type(self).__name__}.set_state: this optimizer has no slots, "
                                 f"got {len(arrays)} arrays")
            self.slots = None
        else:
            if len(arrays) % k:
                raise ValueError(f"{type(self).__name__}.set_state: expected {k} slot arrays per "
                                 f"parameter, got {len(arrays)} arrays")
            self.slots = [[np.array(a) for a in arrays[i:i + k]]
                          for i in range(0, len(arrays), k)] if arrays else None
        self.iterations = int(state[0])

    def get_config(self):
        """JSON only: a schedule as {"class_name", "config"} (tinycnn.schedules.serialize)."""
        schedule = self.schedule
        config = {"name": self.name,
                  "learning_rate": schedules.serialize(schedule) if schedule is not None else self.learning_rate}
        if self.weight_decay is not None:
            config["weight_decay"] = self.weight_decay
        if self._excluded_names:
            config["exclude_from_weight_decay"] = list(self._excluded_names)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        excluded = config.pop("exclude_from_weight_decay", None)
        optimizer = cls(**config)
        if excluded:
            optimizer.exclude_from_weight_decay(var_names=excluded)
        return optimizer

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "name")
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent, optionally with (Nesterov) momentum; Keras's rule."""

    rule_size = 2

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, weight_decay=None, lr=None, name=None):
        super().__init__(learning_rate, lr, name, weight_decay)
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float, np.floating)) \
                or not 0 <= momentum <= 1:
            raise ValueError(f"SGD: momentum must be a number in [0, 1], got {momentum!r}")
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.slot_names = ("momentum",) if self.momentum != 0 else ()

    def coefficients(self, dtype):
        """(learning rate, momentum) as `dtype` scalars (then weight decay and lr, if set)."""
        as_dtype = np.dtype(dtype).type
        return (as_dtype(self.learning_rate), as_dtype(self.momentum)) + self.decay_coefficients(dtype)

    def update(self, grad, param, slots, coefficients):
        lr, momentum = coefficients[:2]
        if not slots:                                   # plain SGD: w = w - lr * g
            param -= grad * lr
            return
        velocity = slots[0]
        velocity[...] = momentum * velocity - grad * lr           # v = momentum * v - lr * g
        if self.nesterov:                                         # Keras's look-ahead step, with the new v
            param += momentum * velocity - grad * lr              # w = w + (momentum * v - lr * g)
        else:
            param += velocity                                     # w = w + v

    def get_config(self):
        config = super().get_config()
        config.update(momentum=self.momentum, nesterov=self.nesterov)
        return config


class Adam(Optimizer):
    """Adam (Kingma & Ba), Keras's form: bias correction folded into the step size alpha."""
    slot_names = ("m", "v")
    rule_size = 4

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, weight_decay=None,
                 lr=None, name=None):
        super().__init__(learning_rate, lr, name, weight_decay)
        for what, value in (("beta_1", beta_1), ("beta_2", beta_2)):
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) \
                    or not 0 <= value < 1:
                raise ValueError(f"Adam: {what} must be a number in [0, 1), got {value!r}")
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float, np.floating)) or epsilon < 0:
            raise ValueError(f"Adam: epsilon must be a non-negative number, got {epsilon!r}")
        self.beta_1, self.beta_2, self.epsilon = float(beta_1), float(beta_2), float(epsilon)

    def coefficients(self, dtype):
        """(alpha, 1 - beta_1, 1 - beta_2, epsilon) as `dtype` scalars, worked out in that dtype
        (then weight decay and lr, if set)."""
        f = np.dtype(dtype).type
        t = f(self.iterations + 1)
        alpha = f(self.learning_rate) * np.sqrt(f(1) - f(self.beta_2) ** t) / (f(1) - f(self.beta_1) ** t)
        return (alpha, f(1 - self.beta_1), f(1 - self.beta_2), f(self.epsilon)) + self.decay_coefficients(dtype)

    def update(self, grad, param, slots, coefficients):
        m, v = slots
        alpha, one_minus_beta_1, one_minus_beta_2, epsilon = coefficients[:4]
        m += (grad - m) * one_minus_beta_1                     # m = beta_1 m + (1 - beta_1) g
        v += (grad * grad - v) * one_minus_beta_2              # v = beta_2 v + (1 - beta_2) g^2
        param -= (m * alpha) / (np.sqrt(v) + epsilon)          # the bias-corrected step

    def get_config(self):
        config = super().get_config()
        config.update(beta_1=self.beta_1, beta_2=self.beta_2, epsilon=self.epsilon)
        return config


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), Keras 3's AdamW: Adam whose
    weight_decay defaults to 0.004 and must be a number (w = w - w * weight_decay * lr, then Adam)."""

    def __init__(self, learning_rate=0.001, weight_decay=0.004, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 lr=None, name=None):
        if weight_decay is None:
            raise ValueError("Argument `weight_decay` must be a float. Received: weight_decay=None")
        super().__init__(learning_rate, beta_1, beta_2, epsilon, weight_decay, lr, name)


_OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}


def get(identifier):
    """"sgd" / "adam" / "adamw" (Keras's defaults), a config dict with "name"/"class_name", or an optimizer (unchanged)."""
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in _OPTIMIZERS:
        return _OPTIMIZERS[identifier.lower()]()
    if isinstance(identifier, dict):
        config = dict(identifier)
        key = str(config.pop("class_name", config.get("name", ""))).lower()
        if key in _OPTIMIZERS:
            return _OPTIMIZERS[key].from_config(config)
    raise ValueError(f"Unknown optimizer {identifier!r}; use 'sgd', 'adam', 'adamw' or an optimizer object "
                     f"such as tinycnn.optimizers.SGD(learning_rate=0.01, momentum=0.9)")
