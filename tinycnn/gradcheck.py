"""Gradient checking: compare backward's gradients with central differences, in float64.

For any function f of an array x, the central difference
    df/dx_i ~ (f(x + eps e_i) - f(x - eps e_i)) / (2 eps)
is accurate to O(eps^2). If a layer's backward is right, its gradients agree with these
to about 1e-8 in float64; a bug usually shows up as an error of 1e-2 or worse.

    from tinycnn import gradcheck, layers
    report = gradcheck.check_layer(layers.Conv2D(4, 3, padding="same"), x)
    print(report)                 # worst relative error per array, and where it is
    assert report.max_error < 1e-6

check_layer turns a layer into a scalar function L = sum(forward(x) * R) with a fixed random
R (so dL/dy = R), runs backward(R), and compares dL/dx and every dL/dparam with central
differences. check_model does the same for a list of layers followed by a loss.

The error of an array is max_i |analytic_i - numeric_i| / max(max_i |analytic_i|, max_i |numeric_i|):
the worst difference relative to the gradient's size (tiny entries then do not blow it up).
Float32 layers are checked on a float64 copy (same config and weights), so the check
measures the maths, not float32 rounding. Every forward pass runs in training mode, from
the same state of tinycnn.utils.get_rng(), so a layer that draws random numbers (Dropout)
draws the same ones each time and is checked as the fixed function it is for one step. Layers with kinks (ReLU, max) need inputs away
from the kinks: for max pooling use distinct, well-separated values.
"""
import numpy as np

from tinycnn import losses as losses_module
from tinycnn import utils


def numerical_gradient(f, x, eps=1e-6):
    """Central-difference gradient of the scalar function f at x (x is changed and restored in place).

    f: callable taking x and returning a float; x: float64 array. Returns an array of x's shape.
    """
    grad = np.zeros_like(x, dtype=np.float64)
    flat_x, flat_grad = x.reshape(-1), grad.reshape(-1)
    if not np.shares_memory(flat_x, x):
        raise ValueError("numerical_gradient: x must be a contiguous array (it is perturbed in place)")
    for i in range(flat_x.size):
        old = flat_x[i]
        flat_x[i] = old + eps
        f_plus = f(x)
        flat_x[i] = old - eps
        f_minus = f(x)
        flat_x[i] = old
        flat_grad[i] = (f_plus - f_minus) / (2 * eps)
    return grad


def relative_error(analytic, numeric):
    """max |a - n| / max(max |a|, max |n|), and the index of the worst entry (0 if both are zero)."""
    analytic, numeric = np.asarray(analytic, np.float64), np.asarray(numeric, np.float64)
    if analytic.shape != numeric.shape:
        raise ValueError(f"relative_error: shapes differ, {analytic.shape} vs {numeric.shape}")
    if analytic.size == 0:
        return 0.0, ()
    diff = np.abs(analytic - numeric)
    worst = np.unravel_index(np.argmax(diff), diff.shape)
    scale = max(np.abs(analytic).max(), np.abs(numeric).max())
    return (float(diff[worst] / scale) if scale > 0 else 0.0), tuple(int(i) for i in worst)


class GradCheckReport:
    """Per-array results of a gradient check.

    entries: list of dicts {"name", "error", "index", "analytic", "numeric"} (the values at the worst index)
    max_error: the worst error; worst: the entry it belongs to.
    """

    def __init__(self, entries):
        self.entries = entries
        self.worst = max(entries, key=lambda e: e["error"]) if entries else None
        self.max_error = self.worst["error"] if entries else 0.0

    def passed(self, tol=1e-6):
        return self.max_error < tol

    def __str__(self):
        lines = [f"{'array':<28}{'rel. error':>12}  worst at (analytic vs numeric)"]
        for e in self.entries:
            lines.append(f"{e['name']:<28}{e['error']:>12.2e}  {e['index']} "
                         f"({e['analytic']:.6g} vs {e['numeric']:.6g})")
        return "\n".join(lines)

    __repr__ = __str__


def _entry(name, analytic, numeric):
    error, index = relative_error(analytic, numeric)
    return {"name": name, "error": error, "index": index,
            "analytic": float(np.asarray(analytic)[index]) if np.size(analytic) else 0.0,
            "numeric": float(np.asarray(numeric)[index]) if np.size(numeric) else 0.0}


def float64_copy(layer, input_shape):
    """A float64 layer with the same config and weights as `layer`, built for input_shape."""
    config = dict(layer.get_config())
    config["dtype"] = "float64"
    config.pop("input_shape", None)
    if layer.built:                       # the weights are copied below: draw no random numbers
        for key in ("kernel_initializer", "bias_initializer"):
            if key in config:
                config[key] = "zeros"
    twin = type(layer).from_config(config)
    twin.build(tuple(input_shape))
    if layer.built:
        twin.set_weights([np.asarray(w, np.float64) for w in layer.get_weights()])
    return twin


def _replayer(nets=()):
    """A function that puts tinycnn's random-number generator, and the own generators of the
    layers in `nets` given a seed=..., back to their states now, so each forward pass after it
    draws the same numbers (the same Dropout masks)."""
    generators = [utils.get_rng()] + [net.rng for net in nets
                                  if getattr(net, "draws_random_numbers", False) and net.seed is not None]
    states = [rng.bit_generator.state for rng in generators]

    def replay():
        for rng, state in zip(generators, states):
            rng.bit_generator.state = state
    return replay


def check_layer(layer, x, eps=1e-6, seed=0, check_input=True):
    """Check a layer's backward against central differences; returns a GradCheckReport.

    layer: any tinycnn layer (checked on a float64 copy with the same weights).
    x: an input batch (N, ...). seed: fixes the random upstream gradient R.
    """
    x = np.array(x, dtype=np.float64)
    net = float64_copy(layer, x.shape[1:])
    upstream = np.random.default_rng(seed).standard_normal((x.shape[0],) + net.output_shape)

    replay_random_numbers = _replayer([net])

    def loss(_):
        replay_random_numbers()
        return float(np.sum(net.forward(x, training=True) * upstream))

    replay_random_numbers()
    net.forward(x, training=True)
    grad_x = net.backward(upstream.copy())
    analytic = [g.copy() for g in net.grads]
    entries = []
    if check_input:
        entries.append(_entry(f"{net.name}: input", grad_x, numerical_gradient(loss, x, eps)))
    for i, p in enumerate(net.trainable_params):
        entries.append(_entry(f"{net.name}: param {i} {p.shape}", analytic[i], numerical_gradient(loss, p, eps)))
    return GradCheckReport(entries)


def check_model(model_or_layers, x, y_true, loss=None, eps=1e-6, check_input=True):
    """Check a whole network's gradients: layers then a softmax cross-entropy loss.

    model_or_layers: a list of layers, or any object with `.layers` (and `.loss`, used
    when `loss` is not given). The last layer's softmax is fused with the loss as in
    training (backward_from_logits) when it outputs a softmax. Returns a GradCheckReport
    for dL/dx and every parameter of every layer (float64 copies; the originals are untouched).
    """
    layers = list(getattr(model_or_layers, "layers", model_or_layers))
    if loss is None:
        loss = getattr(model_or_layers, "loss", None)
    if loss is None:
        raise ValueError("check_model: give loss=... (e.g. 'categorical_crossentropy')")
    loss = losses_module.get(loss)
    x = np.array(x, dtype=np.float64)
    nets, shape = [], x.shape[1:]
    for layer in layers:
        nets.append(float64_copy(layer, shape))
        shape = nets[-1].output_shape

    replay_random_numbers = _replayer(nets)

    def forward_loss(_=None):
        replay_random_numbers()
        out = x
        for net in nets:
            out = net.forward(out, training=True)
        if nets[-1].outputs_softmax:
            return loss.from_logits(y_true, nets[-1].logits)
        return loss.from_probs(y_true, out)

    _, grad = forward_loss()
    grad = nets[-1].backward_from_logits(grad) if nets[-1].outputs_softmax else nets[-1].backward(grad)
    for net in reversed(nets[:-1]):
        grad = net.backward(grad)
    analytic = [[g.copy() for g in net.grads] for net in nets]

    def value(_):
        return forward_loss()[0]

    entries = []
    if check_input:
        entries.append(_entry("input", grad, numerical_gradient(value, x, eps)))
    for net, grads in zip(nets, analytic):
        for i, p in enumerate(net.trainable_params):
            entries.append(_entry(f"{net.name}: param {i} {p.shape}", grads[i], numerical_gradient(value, p, eps)))
    return GradCheckReport(entries)
