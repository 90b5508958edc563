"""Learning-rate schedules: the learning rate as a function of the optimizer's step count.

    schedule = CosineDecay(0.0, decay_steps=1000, warmup_target=0.1, warmup_steps=100)
    opt = SGD(learning_rate=schedule)            # also tinycnn.optimizers.schedules.CosineDecay

An optimizer given a schedule uses lr = schedule(optimizer.iterations) for each step, the
count taken BEFORE the step is counted (0 for the first step), as Keras 3 does
(base_optimizer._get_current_learning_rate: `self._learning_rate(self._iterations)`).
`optimizer.learning_rate` then reads as that number: the rate the next step will use.

The formulas are Keras 3's (keras/src/optimizers/schedules/learning_rate_schedule.py),
worked out in Python floats (float64); Keras works them out in float32, so the two agree to
float32's rounding. OneCycle is not Keras's: it is PyTorch's OneCycleLR (Smith & Topin's
one-cycle policy, cosine annealing), for the learning rate only (no momentum cycling).

A schedule is saved with its optimizer as JSON, {"class_name": ..., "config": {...}}, and
rebuilt only from this module's own classes (SCHEDULES): a model file never names code to run.
"""
import math

import numpy as np


def _number(owner, what, value, low=None, low_inclusive=True, integer=False):
    """value as a float (or int), after checking it is a finite number >= low (or > low)."""
    kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
        kind = "an integer" if integer else "a finite number"
        raise ValueError(f"{owner}: {what} must be {kind}, got {value!r}")
    if low is not None and (value < low if low_inclusive else value <= low):
        raise ValueError(f"{owner}: {what} must be {'>=' if low_inclusive else '>'} {low}, got {value!r}")
    return int(value) if integer else float(value)


def _step(owner, step):
    """The step count as a float, checked (a whole number >= 0)."""
    if isinstance(step, bool) or not isinstance(step, (int, float, np.integer, np.floating)) \
            or not math.isfinite(step) or step < 0:
        raise ValueError(f"{owner}: step must be a number >= 0 (the optimizer's iterations), got {step!r}")
    return float(step)


class LearningRateSchedule:
    """Base class: `schedule(step)` -> the learning rate (a float) for the step counted from 0.

    A schedule of your own overrides __call__ (and get_config, to be saved); a model whose
    optimizer has one can be saved only if get_config works, and loaded only with tinycnn's
    own schedules (a file never names code to run).
    """

    def __call__(self, step):
        raise NotImplementedError(f"Learning rate schedule '{type(self).__name__}' must override "
                                  f"`__call__(self, step)`.")

    def get_config(self):
        raise NotImplementedError(f"Learning rate schedule '{type(self).__name__}' must override "
                                  f"`get_config()` in order to be serializable.")

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        try:
            args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "name")
        except NotImplementedError:
            args = "..."
        return f"{type(self).__name__}({args})"


class ExponentialDecay(LearningRateSchedule):
    """lr = initial_learning_rate * decay_rate ** (step / decay_steps); with staircase=True the
    exponent is floor(step / decay_steps) (the rate drops every decay_steps steps)."""

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False, name="ExponentialDecay"):
        owner = "ExponentialDecay"
        self.initial_learning_rate = _number(owner, "initial_learning_rate", initial_learning_rate, 0)
        self.decay_steps = _number(owner, "decay_steps", decay_steps, 0, low_inclusive=False)
        self.decay_rate = _number(owner, "decay_rate", decay_rate, 0)
        self.staircase = bool(staircase)
        self.name = name

    def __call__(self, step):
        p = _step(type(self).__name__, step) / self.decay_steps
        if self.staircase:
            p = math.floor(p)
        return self.initial_learning_rate * self.decay_rate ** p

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate, "decay_steps": self.decay_steps,
                "decay_rate": self.decay_rate, "staircase": self.staircase, "name": self.name}


class PiecewiseConstantDecay(LearningRateSchedule):
    """values[0] while step <= boundaries[0], values[1] while step <= boundaries[1], ...,
    values[-1] once step > boundaries[-1] (Keras's <=, so a boundary step still has the old value)."""

    def __init__(self, boundaries, values, name="PiecewiseConstant"):
        owner = "PiecewiseConstantDecay"
        boundaries, values = list(boundaries), list(values)
        if len(boundaries) != len(values) - 1:
            raise ValueError(f"{owner}: the length of boundaries should be 1 less than the length of "
                             f"values. Received: boundaries={boundaries} of length {len(boundaries)}, "
                             f"and values={values} of length {len(values)}.")
        self.boundaries = [_number(owner, "each boundary", b) for b in boundaries]
        if any(a >= b for a, b in zip(self.boundaries, self.boundaries[1:])):
            raise ValueError(f"{owner}: boundaries must increase, got {boundaries}")
        self.values = [_number(owner, "each value", v, 0) for v in values]
        self.name = name

    def __call__(self, step):
        step = _step(type(self).__name__, step)
        for boundary, value in zip(self.boundaries, self.values):
            if step <= boundary:
                return value
        return self.values[-1]

    def get_config(self):
        return {"boundaries": list(self.boundaries), "values": list(self.values), "name": self.name}


class CosineDecay(LearningRateSchedule):
    """Cosine decay with an optional linear warm-up, Keras 3's formula.

    With warmup_target None (no warm-up; warmup_steps is then ignored, as in Keras):
        s = min(step, decay_steps)
        lr = initial_learning_rate * ((1 - alpha) * 0.5 * (1 + cos(pi * s / decay_steps)) + alpha)
    With warmup_target:
        s = min(step, warmup_steps + decay_steps)
        s < warmup_steps:  lr = (warmup_target - initial_learning_rate) * (s / warmup_steps) + initial_learning_rate
        else:              lr = warmup_target * ((1 - alpha) * 0.5 * (1 + cos(pi * (s - warmup_steps) / decay_steps)) + alpha)
    So the rate climbs from initial_learning_rate to warmup_target over warmup_steps steps, then
    falls to alpha * warmup_target over decay_steps steps, and stays there.
    """

    def __init__(self, initial_learning_rate, decay_steps, alpha=0.0, name="CosineDecay",
                 warmup_target=None, warmup_steps=0):
        owner = "CosineDecay"
        self.initial_learning_rate = _number(owner, "initial_learning_rate", initial_learning_rate, 0)
        self.decay_steps = _number(owner, "decay_steps", decay_steps, 0, low_inclusive=False)
        self.alpha = _number(owner, "alpha", alpha, 0)
        self.name = name
        self.warmup_target = None if warmup_target is None else _number(owner, "warmup_target", warmup_target, 0)
        self.warmup_steps = _number(owner, "warmup_steps", warmup_steps, 0)

    def _decay(self, step, decay_from_lr):
        cosine_decayed = 0.5 * (1.0 + math.cos(math.pi * (step / self.decay_steps)))
        return decay_from_lr * ((1 - self.alpha) * cosine_decayed + self.alpha)

    def __call__(self, step):
        step = _step(type(self).__name__, step)
        if self.warmup_target is None:
            return self._decay(min(step, self.decay_steps), self.initial_learning_rate)
        step = min(step, self.decay_steps + self.warmup_steps)
        if step < self.warmup_steps:
            completed_fraction = step / self.warmup_steps
            return (self.warmup_target - self.initial_learning_rate) * completed_fraction + self.initial_learning_rate
        return self._decay(step - self.warmup_steps, self.warmup_target)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate, "decay_steps": self.decay_steps,
                "alpha": self.alpha, "name": self.name, "warmup_target": self.warmup_target,
                "warmup_steps": self.warmup_steps}


class OneCycle(LearningRateSchedule):
    """The one-cycle policy (Smith & Topin, "Super-Convergence"), as PyTorch's OneCycleLR with
    cosine annealing and two phases; the learning rate only (PyTorch also cycles momentum,
    this does not). Not in Keras.

        initial = max_learning_rate / div_factor,  final = initial / final_div_factor
        phase 1, steps 0 .. pct_start * total_steps - 1:    cosine from initial up to max_learning_rate
        phase 2, from there to step total_steps - 1:        cosine from max_learning_rate down to final
        cosine(start, end, pct) = end + (start - end) / 2 * (1 + cos(pi * pct)),
        pct = (step - phase start) / (phase end - phase start)

    Step 0 (the first step) has `initial`, as PyTorch's first step. PyTorch raises beyond
    total_steps; this schedule stays at `final` from step total_steps - 1 on.
    """

    def __init__(self, max_learning_rate, total_steps, pct_start=0.3, div_factor=25.0,
                 final_div_factor=1e4, name="OneCycle"):
        owner = "OneCycle"
        self.max_learning_rate = _number(owner, "max_learning_rate", max_learning_rate, 0)
        self.total_steps = _number(owner, "total_steps", total_steps, 2, integer=True)
        self.pct_start = _number(owner, "pct_start", pct_start, 0, low_inclusive=False)
        if self.pct_start >= 1:
            raise ValueError(f"OneCycle: pct_start must be in (0, 1), got {pct_start!r}")
        if self.pct_start * self.total_steps <= 1:
            raise ValueError(f"OneCycle: the warm-up (pct_start * total_steps = "
                             f"{self.pct_start * self.total_steps:g} steps) must last more than one step")
        self.div_factor = _number(owner, "div_factor", div_factor, 0, low_inclusive=False)
        self.final_div_factor = _number(owner, "final_div_factor", final_div_factor, 0, low_inclusive=False)
        self.name = name

    @staticmethod
    def _cosine(start, end, pct):
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)

    def __call__(self, step):
        step = min(_step(type(self).__name__, step), self.total_steps - 1)
        initial = self.max_learning_rate / self.div_factor
        final = initial / self.final_div_factor
        peak_step = self.pct_start * self.total_steps - 1          # PyTorch's phase ends (floats)
        if step <= peak_step:
            return self._cosine(initial, self.max_learning_rate, step / peak_step)
        last_step = self.total_steps - 1
        return self._cosine(self.max_learning_rate, final, (step - peak_step) / (last_step - peak_step))

    def get_config(self):
        return {"max_learning_rate": self.max_learning_rate, "total_steps": self.total_steps,
                "pct_start": self.pct_start, "div_factor": self.div_factor,
                "final_div_factor": self.final_div_factor, "name": self.name}


# The only classes a saved config can name.
SCHEDULES = {cls.__name__: cls for cls in (ExponentialDecay, PiecewiseConstantDecay, CosineDecay, OneCycle)}


def serialize(schedule):
    """{"class_name": ..., "config": {...}}: plain JSON, what an optimizer's config holds."""
    if not isinstance(schedule, LearningRateSchedule):
        raise ValueError(f"serialize: expected a LearningRateSchedule, got {schedule!r}")
    return {"class_name": type(schedule).__name__, "config": schedule.get_config()}


def deserialize(config):
    """The schedule serialize(...) described, rebuilt from tinycnn's own classes only."""
    if not isinstance(config, dict) or not isinstance(config.get("config", {}), dict):
        raise ValueError(f"deserialize: expected {{'class_name': ..., 'config': {{...}}}}, got {config!r}")
    name = config.get("class_name")
    if name not in SCHEDULES:
        raise ValueError(f"Unknown learning rate schedule {name!r}; tinycnn rebuilds only its own: "
                         f"{', '.join(sorted(SCHEDULES))}")
    return SCHEDULES[name].from_config(dict(config.get("config", {})))
