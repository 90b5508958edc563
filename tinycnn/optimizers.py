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

Saving and resuming: get_state() returns [iterations, slot arrays...], set_state(list) puts
them back, so training continues bit-identically after a save/load.

One step is two parts: `coefficients(dtype)` gives the step's numbers (learning rate,
momentum; Adam's alpha...) and `update(grad, param, slots, coefficients)` applies the rule
to one parameter. The fast engine applies the same rules, compiled.
"""
import numpy as np


class Optimizer:
    """Base class: learning rate, step counter, per-position slots, state and config."""
    slot_names = ()            # e.g. ("momentum",) or ("m", "v")

    def __init__(self, learning_rate, lr=None, name=None):
        if lr is not None:                          # the old Keras 2 spelling, SGD(lr=0.01)
            learning_rate = lr
        self.learning_rate = learning_rate
        self.iterations = 0
        self.name = name or type(self).__name__.lower()
        self.slots = None                           # list (per parameter) of lists of arrays

    @property
    def learning_rate(self):
        return self._learning_rate

    @learning_rate.setter
    def learning_rate(self, value):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
                or not np.isfinite(value) or value < 0:
            raise ValueError(f"{type(self).__name__}: learning_rate must be a non-negative number, "
                             f"got {value!r}")
        self._learning_rate = float(value)

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
        """This step's numbers for `update`, as scalars of `dtype` (a tuple)."""
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
        return {"name": self.name, "learning_rate": self.learning_rate}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "name")
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent, optionally with (Nesterov) momentum; Keras's rule."""

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, lr=None, name=None):
        super().__init__(learning_rate, lr, name)
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float, np.floating)) \
                or not 0 <= momentum <= 1:
            raise ValueError(f"SGD: momentum must be a number in [0, 1], got {momentum!r}")
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.slot_names = ("momentum",) if self.momentum != 0 else ()

    def coefficients(self, dtype):
        """(learning rate, momentum) as `dtype` scalars."""
        as_dtype = np.dtype(dtype).type
        return as_dtype(self.learning_rate), as_dtype(self.momentum)

    def update(self, grad, param, slots, coefficients):
        lr, momentum = coefficients
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

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, lr=None, name=None):
        super().__init__(learning_rate, lr, name)
        for what, value in (("beta_1", beta_1), ("beta_2", beta_2)):
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) \
                    or not 0 <= value < 1:
                raise ValueError(f"Adam: {what} must be a number in [0, 1), got {value!r}")
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float, np.floating)) or epsilon < 0:
            raise ValueError(f"Adam: epsilon must be a non-negative number, got {epsilon!r}")
        self.beta_1, self.beta_2, self.epsilon = float(beta_1), float(beta_2), float(epsilon)

    def coefficients(self, dtype):
        """(alpha, 1 - beta_1, 1 - beta_2, epsilon) as `dtype` scalars, worked out in that dtype."""
        f = np.dtype(dtype).type
        t = f(self.iterations + 1)
        alpha = f(self.learning_rate) * np.sqrt(f(1) - f(self.beta_2) ** t) / (f(1) - f(self.beta_1) ** t)
        return alpha, f(1 - self.beta_1), f(1 - self.beta_2), f(self.epsilon)

    def update(self, grad, param, slots, coefficients):
        m, v = slots
        alpha, one_minus_beta_1, one_minus_beta_2, epsilon = coefficients
        m += (grad - m) * one_minus_beta_1                     # m = beta_1 m + (1 - beta_1) g
        v += (grad * grad - v) * one_minus_beta_2              # v = beta_2 v + (1 - beta_2) g^2
        param -= (m * alpha) / (np.sqrt(v) + epsilon)          # the bias-corrected step

    def get_config(self):
        config = super().get_config()
        config.update(beta_1=self.beta_1, beta_2=self.beta_2, epsilon=self.epsilon)
        return config


_OPTIMIZERS = {"sgd": SGD, "adam": Adam}


def get(identifier):
    """"sgd" / "adam" (Keras's defaults), a config dict with "name"/"class_name", or an optimizer (unchanged)."""
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in _OPTIMIZERS:
        return _OPTIMIZERS[identifier.lower()]()
    if isinstance(identifier, dict):
        config = dict(identifier)
        key = str(config.pop("class_name", config.get("name", ""))).lower()
        if key in _OPTIMIZERS:
            return _OPTIMIZERS[key].from_config(config)
    raise ValueError(f"Unknown optimizer {identifier!r}; use 'sgd', 'adam' or an optimizer object "
                     f"such as tinycnn.optimizers.SGD(learning_rate=0.01, momentum=0.9)")
