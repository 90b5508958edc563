"""Softmax cross-entropy, averaged over the batch, as Keras computes it.

Two flavours that differ only in how the true classes are given:
    categorical_crossentropy         y_true one-hot, shape (N, C)            (same shape as the output)
    sparse_categorical_crossentropy  y_true integer labels, shape (N,) or (N, 1)

For one sample with logits z (the softmax's input), probabilities p = softmax(z) and one-hot t:
    loss = -sum_k t_k log p_k = logsumexp(z) - z_true
    dloss/dz = p - t                         (the softmax Jacobian cancels out)
and the batch loss is the mean over the N samples, so dL/dz = (p - t) / N.

A loss object offers
    from_logits(y_true, logits) -> (mean loss, dL/dlogits)   when the model ends in a softmax
                                                             (stable for any finite logits: the max is subtracted before exp)
    from_probs(y_true, probs)   -> (mean loss, dL/dprobs)    any other last layer: probabilities are
                                                             clipped to [1e-7, 1 - 1e-7] as Keras does
    loss(y_true, probs)         -> mean loss                 (Keras's call convention)
Outputs of higher rank (N, ..., C) are treated as N*... samples, as Keras does.

Label smoothing (CategoricalCrossentropy(label_smoothing=ls), Keras 3's): the one-hot rows
are replaced by t = y * (1 - ls) + ls / C before the loss (keras/src/losses/losses.py,
categorical_crossentropy: `y_true * (1.0 - label_smoothing) + (label_smoothing / num_classes)`),
so the gradient from the logits is (softmax - t) / N. Keras 3's SparseCategoricalCrossentropy
has no label_smoothing argument, and neither has tinycnn's.
"""
import numpy as np

EPSILON = 1e-7          # Keras's backend.epsilon(), used to clip probabilities


class _SoftmaxCrossEntropy:
    name = None
    sparse = None

    # -- targets ------------------------------------------------------------------------------
    def _labels(self, y_true, output_shape):
        """Integer labels (M,) for sparse targets, checked against an output of shape (..., C)."""
        raise NotImplementedError

    def _targets(self, y_true, output_shape, dtype):
        """Target rows (M, C) in the output's dtype: one-hot rows for both flavours."""
        c = output_shape[-1]
        if self.sparse:
            labels = self._labels(y_true, output_shape)
            t = np.zeros((labels.size, c), dtype=dtype)
            t[np.arange(labels.size), labels] = 1
            return t
        y_true = np.asarray(y_true)
        if y_true.shape != tuple(output_shape):
            hint = (" (integer labels need loss='sparse_categorical_crossentropy', or one-hot "
                    "them with tinycnn.utils.to_categorical)" if y_true.shape == tuple(output_shape[:-1])
                    or y_true.shape == tuple(output_shape[:-1]) + (1,) else "")
            raise ValueError(f"{self.name}: y_true must have the output's shape {tuple(output_shape)} "
                             f"(one-hot rows), got {y_true.shape}{hint}")
        t = y_true.reshape(-1, c).astype(dtype, copy=False)
        ls = getattr(self, "label_smoothing", 0.0)
        if ls:                                              # Keras's order, in the output's dtype
            f = np.dtype(dtype).type
            t = t * f(1.0 - ls) + f(ls) / f(c)
        return t

    @staticmethod
    def _check_output(values, what):
        values = np.asarray(values)
        if values.ndim < 2:
            raise ValueError(f"{what} must have shape (batch, classes), got {values.shape}")
        if not np.issubdtype(values.dtype, np.floating):
            values = values.astype(np.float64)
        return values

    # -- the loss -----------------------------------------------------------------------------
    def from_logits(self, y_true, logits):
        """Mean loss and dL/dlogits = (softmax(logits) - onehot) / M; logits (N, C) or (N, ..., C)."""
        logits = self._check_output(logits, f"{self.name}: logits")
        t = self._targets(y_true, logits.shape, logits.dtype)              # (M, C)
        z = logits.reshape(t.shape)
        m = z.shape[0]
        shifted = z - z.max(axis=1, keepdims=True)                      # <= 0: exp cannot overflow
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))   # log softmax
        loss = -(t * log_probs).sum(axis=1).mean()                      # mean over the M rows
        # d/dz of -sum_k t_k log p_k is p * sum(t) - t: p - t for a one-hot row
        grad = (np.exp(log_probs) * t.sum(axis=1, keepdims=True) - t) / z.dtype.type(m)
        return float(loss), grad.reshape(logits.shape)

    def from_probs(self, y_true, probs):
        """Mean loss and dL/dprobs for probabilities (N, C) that did not come from a fused softmax."""
        raise NotImplementedError

    def __call__(self, y_true, y_pred):
        """Mean loss for predicted probabilities y_pred (Keras's `loss(y_true, y_pred)`)."""
        return self.from_probs(y_true, y_pred)[0]

    def get_config(self):
        return {"name": self.name}

    def __repr__(self):
        return f"{type(self).__name__}()"


class CategoricalCrossentropy(_SoftmaxCrossEntropy):
    """Cross-entropy with one-hot targets y_true (N, C); label_smoothing in [0, 1] softens them
    to y * (1 - label_smoothing) + label_smoothing / C."""
    name = "categorical_crossentropy"
    sparse = False

    def __init__(self, label_smoothing=0.0):
        if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float, np.floating, np.integer)) \
                or not 0 <= label_smoothing <= 1:
            raise ValueError(f"CategoricalCrossentropy: label_smoothing must be a number in [0, 1], "
                             f"got {label_smoothing!r}")
        self.label_smoothing = float(label_smoothing)

    def get_config(self):
        config = super().get_config()
        if self.label_smoothing:
            config["label_smoothing"] = self.label_smoothing
        return config

    def __repr__(self):
        return f"CategoricalCrossentropy(label_smoothing={self.label_smoothing!r})" if self.label_smoothing \
            else "CategoricalCrossentropy()"

    def from_probs(self, y_true, probs):
        """As Keras: q = p / sum(p), c = clip(q, eps, 1 - eps), loss = -sum t log c (mean over rows).

        Backward, row by row: dL/dc = -t / (M c); the clip passes the gradient only where
        eps <= q <= 1 - eps; and through q = p / s:  dL/dp = (dL/dq - sum_j dL/dq_j q_j) / s.
        """
        probs = self._check_output(probs, f"{self.name}: y_pred")
        t = self._targets(y_true, probs.shape, probs.dtype)
        p = probs.reshape(t.shape)
        m, eps = p.shape[0], probs.dtype.type(EPSILON)
        s = p.sum(axis=1, keepdims=True)
        q = p / s
        c = np.clip(q, eps, 1 - eps)
        loss = -(t * np.log(c)).sum(axis=1).mean()
        grad_q = np.where((q >= eps) & (q <= 1 - eps), -t / (c * m), 0)
        grad_p = (grad_q - (grad_q * q).sum(axis=1, keepdims=True)) / s
        return float(loss), grad_p.astype(probs.dtype).reshape(probs.shape)


class SparseCategoricalCrossentropy(_SoftmaxCrossEntropy):
    """Cross-entropy with integer targets y_true (N,) or (N, 1), values in [0, C)."""
    name = "sparse_categorical_crossentropy"
    sparse = True

    def _labels(self, y_true, output_shape):
        y = np.asarray(y_true)
        batch_shape, c = tuple(output_shape[:-1]), output_shape[-1]
        if y.shape == batch_shape + (1,):
            y = y.reshape(batch_shape)
        if y.shape != batch_shape:
            hint = (" (one-hot targets need loss='categorical_crossentropy')"
                    if y.shape == tuple(output_shape) else "")
            raise ValueError(f"{self.name}: y_true must be integer labels of shape {batch_shape} "
                             f"(or {batch_shape + (1,)}) for an output of shape {tuple(output_shape)}, "
                             f"got {y.shape}{hint}")
        if not np.issubdtype(y.dtype, np.integer):
            if not np.issubdtype(y.dtype, np.number) or np.any(y != np.round(y)):
                raise ValueError(f"{self.name}: y_true must hold integer class labels, got dtype {y.dtype}")
        labels = y.astype(np.int64).reshape(-1)
        if labels.size and (labels.min() < 0 or labels.max() >= c):
            bad = labels[(labels < 0) | (labels >= c)][0]
            raise ValueError(f"{self.name}: label {bad} is out of range for {c} classes "
                             f"(labels must lie in [0, {c - 1}])")
        return labels

    def from_probs(self, y_true, probs):
        """As Keras: c = clip(p, eps, 1 - eps), loss = -log(c_y / sum_j c_j) (mean over rows).

        Backward: dL/dc_k = (1 / sum_j c_j - [k = y] / c_y) / M, passed only where the clip did not bite.
        """
        probs = self._check_output(probs, f"{self.name}: y_pred")
        labels = self._labels(y_true, probs.shape)
        p = probs.reshape(labels.size, probs.shape[-1])
        m, eps = p.shape[0], probs.dtype.type(EPSILON)
        rows = np.arange(m)
        c = np.clip(p, eps, 1 - eps)
        s = c.sum(axis=1, keepdims=True)
        loss = (np.log(s[:, 0]) - np.log(c[rows, labels])).mean()
        grad_c = np.broadcast_to(1 / s, c.shape).copy()
        grad_c[rows, labels] -= 1 / c[rows, labels]
        grad_p = np.where((p >= eps) & (p <= 1 - eps), grad_c / m, 0)
        return float(loss), grad_p.astype(probs.dtype).reshape(probs.shape)


_LOSSES = {"categorical_crossentropy": CategoricalCrossentropy,
           "sparse_categorical_crossentropy": SparseCategoricalCrossentropy}
_ALIASES = {"CategoricalCrossentropy": "categorical_crossentropy",
            "SparseCategoricalCrossentropy": "sparse_categorical_crossentropy"}


def get(name):
    """The loss called `name` ("categorical_crossentropy" or "sparse_categorical_crossentropy",
    or the class names), or described by a config {"class_name": ..., "config": {...}} (what a
    model file holds, e.g. a label_smoothing).

    A loss object (anything with from_logits and from_probs) is returned unchanged.
    """
    if hasattr(name, "from_logits") and hasattr(name, "from_probs"):
        return name
    if isinstance(name, str):
        key = _ALIASES.get(name, name.lower())
        if key in _LOSSES:
            return _LOSSES[key]()
    if isinstance(name, dict) and isinstance(name.get("class_name"), str) and isinstance(name.get("config", {}), dict):
        key = _ALIASES.get(name["class_name"], name["class_name"].lower())
        if key in _LOSSES:
            config = {k: v for k, v in name.get("config", {}).items() if k != "name"}
            return _LOSSES[key](**config)
    raise ValueError(f"Unknown loss {name!r}; choose one of {sorted(_LOSSES)}")
