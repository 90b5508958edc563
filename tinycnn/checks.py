"""What the user passes to fit, evaluate and predict, checked once, before any work.

Each check either returns the value in the form the loop wants (x as a float array of the
model's dtype, y as targets plus integer labels) or raises a ValueError that says what was
wrong and how to fix it, so the training loop itself does no checking.
"""
import math
import warnings

import numpy as np


def verbose_level(verbose, where):
    """verbose 'auto' -> 1 (a bar on a terminal, one line per epoch elsewhere); checks 0/1/2."""
    if verbose == "auto":
        return 1
    if isinstance(verbose, bool) or verbose not in (0, 1, 2):
        raise ValueError(f"{where}: verbose must be 0 (silent), 1 (progress bar), 2 (one line per "
                         f"epoch) or 'auto', got {verbose!r}")
    return int(verbose)


def batch_size_of(batch_size, where):
    """batch_size (None: Keras's 32) as a positive int."""
    if batch_size is None:
        return 32
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"{where}: batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


def inputs(model, x, where, what="x", stacklevel=3):
    """x -> a float array of the model's dtype, (N, *input shape); builds the model if needed.

    stacklevel: where a warning points, 3 for the caller of the method that called this."""
    try:
        x = np.asarray(x)
    except ValueError:                             # NumPy's "inhomogeneous shape" for a ragged list
        raise ValueError(f"{where}: {what} must be one rectangular array of numbers (N, ...), but it "
                         f"is a list whose samples have different shapes; make every sample the same "
                         f"shape (e.g. resize or pad the images), then pass np.stack(list)") from None
    if x.dtype == np.bool_ or not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise ValueError(f"{where}: {what} must be an array of numbers, got dtype {x.dtype}")
    if x.ndim < 2:
        raise ValueError(f"{where}: {what} must have a batch axis, shape (samples, ...), got shape {x.shape}")
    if len(x) == 0:
        raise ValueError(f"{where}: {what} is empty (shape {x.shape}); give at least one sample")
    if not model.built:
        model.build(x.shape[1:])
    expected = model._input_shape
    if x.shape[1:] != expected:
        raise ValueError(f"{where}: {shape_hint(x.shape, expected, what)}")
    if np.issubdtype(x.dtype, np.integer):
        if x.max() > 1:
            warnings.warn(f"{where}: {what} holds integers ({x.dtype}, up to {x.max()}): pixels that are "
                          f"not normalized. Networks train badly on raw 0-255 values, and a model "
                          f"trained on one scale scores at chance on the other; scale them first, "
                          f"e.g. {what} = {what}.astype('float32') / 255", UserWarning, stacklevel=stacklevel)
    elif not (math.isfinite(x.min()) and math.isfinite(x.max())):   # min/max see NaN and inf
        bad = np.argwhere(~np.isfinite(x))[0]
        raise ValueError(f"{where}: {what} holds NaN or infinite values (first at index "
                         f"{tuple(int(i) for i in bad)}); clean the data first")
    elif x.ndim >= 3 and x.min() >= 0 and x.max() > 1:
        # floats above 1 in images: raw 0-255 pixels, on which networks train badly
        warnings.warn(f"{where}: {what} looks like images with raw pixel values (floats from {x.min():g} "
                      f"to {x.max():g}). Networks train badly on 0-255 values, and a model trained on "
                      f"one scale scores at chance on the other; divide by 255 first, e.g. "
                      f"{what} = {what} / 255.0", UserWarning, stacklevel=stacklevel)
    return x.astype(model.dtype, copy=False)


def shape_hint(shape, expected, what):
    """Explain a shape mismatch and say how to fix the common ones."""
    want = (None,) + expected
    message = f"{what} has shape {shape} but the model expects ({', '.join(map(str, want))})"
    if shape[1:] + (1,) == expected:
        return (f"{message}: images need a channel axis (NHWC); use "
                f"{what}.reshape(-1, {', '.join(map(str, expected))}) or {what}[..., None]")
    if tuple(shape) == expected:
        return f"{message}: this is one sample without the batch axis; use {what}[None]"
    if len(shape) == 4 and len(expected) == 3 and (shape[2], shape[3], shape[1]) == expected:
        return (f"{message}: it looks channels-first (NCHW); tinycnn uses NHWC: "
                f"np.transpose({what}, (0, 2, 3, 1))")
    if math.prod(shape[1:]) == math.prod(expected):
        return f"{message}; reshape it: {what}.reshape(-1, {', '.join(map(str, expected))})"
    return message


def targets(model, y, n, where, what="y"):
    """y -> (targets for the loss, integer labels (N,) for accuracy), checked against the output."""
    y = np.asarray(y)
    if y.dtype == np.bool_ or not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise ValueError(f"{where}: {what} must be an array of numbers, got dtype {y.dtype}")
    if y.ndim == 0 or len(y) != n:
        raise ValueError(f"{where}: x has {n} samples but {what} has "
                         f"{'a scalar' if y.ndim == 0 else len(y)}; give one target per sample")
    if np.issubdtype(y.dtype, np.floating) and not (math.isfinite(y.min()) and math.isfinite(y.max())):
        raise ValueError(f"{where}: {what} holds NaN or infinite values")
    classes = model._layers[-1].output_shape[-1]
    if len(model._layers[-1].output_shape) != 1:
        raise ValueError(f"{where}: the model's output has shape {model.output_shape}; a classifier "
                         f"needs (None, classes) (add Flatten() before the last Dense)")
    if model.loss.sparse:
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim == 2 and y.shape[1] == classes:
            raise ValueError(f"{where}: {what} looks one-hot (shape {y.shape}) but the loss is "
                             f"'sparse_categorical_crossentropy', which wants integer labels (N,); "
                             f"compile with loss='categorical_crossentropy', or pass "
                             f"{what}.argmax(axis=1)")
        if y.ndim != 1:
            raise ValueError(f"{where}: {what} must be integer labels of shape ({n},) for "
                             f"'sparse_categorical_crossentropy', got shape {y.shape}")
        if not np.issubdtype(y.dtype, np.integer) and np.any(y != np.round(y)):
            raise ValueError(f"{where}: {what} must hold whole-number class labels, found "
                             f"{y[y != np.round(y)][0]!r}")
        labels = y.astype(np.int64)
        if labels.min() < 0 or labels.max() >= classes:
            bad = labels[(labels < 0) | (labels >= classes)][0]
            raise ValueError(f"{where}: label {bad} in {what} is out of range: the model has "
                             f"{classes} outputs, so labels must lie in [0, {classes - 1}]")
        return labels, labels
    if y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1 and classes > 1):
        raise ValueError(f"{where}: {what} holds integer labels (shape {y.shape}) but the loss is "
                         f"'categorical_crossentropy', which wants one-hot rows ({n}, {classes}); "
                         f"use {what} = tinycnn.utils.to_categorical({what}, {classes}), or compile "
                         f"with loss='sparse_categorical_crossentropy'")
    if y.ndim != 2 or y.shape[1] != classes:
        raise ValueError(f"{where}: {what} must be one-hot rows of shape ({n}, {classes}) for a "
                         f"{classes}-output model, got shape {y.shape}")
    if y.min() < 0:
        raise ValueError(f"{where}: {what} must be one-hot rows (or class probabilities), "
                         f"found a negative value {y.min()}")
    return y.astype(model.dtype, copy=False), np.argmax(y, axis=1)


def fit_data(model, x, y, epochs, initial_epoch, validation_data, validation_split):
    """fit's arguments checked -> (x, y, labels, validation), validation = (x_val, y_val,
    labels_val) or None; validation_split takes the LAST part of x and y, as Keras does."""
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
        raise ValueError(f"fit: epochs must be a non-negative integer, got {epochs!r}")
    if isinstance(initial_epoch, bool) or not isinstance(initial_epoch, (int, np.integer)) or initial_epoch < 0:
        raise ValueError(f"fit: initial_epoch must be a non-negative integer, got {initial_epoch!r}")
    if not isinstance(validation_split, (int, float)) or not 0 <= validation_split < 1:
        raise ValueError(f"fit: validation_split must be a fraction in [0, 1), got {validation_split!r}")
    if x is None or y is None:
        raise ValueError("fit: give both the inputs x and the targets y")
    x = inputs(model, x, "fit", stacklevel=4)                   # (user -> fit -> fit_data -> inputs)
    y, labels = targets(model, y, len(x), "fit")
    if validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise ValueError("fit: validation_data must be a pair (x_val, y_val)")
        x_val = inputs(model, validation_data[0], "fit", "validation_data[0]", stacklevel=4)
        y_val, labels_val = targets(model, validation_data[1], len(x_val), "fit", "validation_data[1]")
        return x, y, labels, (x_val, y_val, labels_val)
    if validation_split > 0:
        split_at = int(math.floor(len(x) * (1.0 - validation_split)))   # Keras's rule: the last part
        if split_at == 0 or split_at == len(x):
            raise ValueError(f"fit: validation_split={validation_split} of {len(x)} samples leaves "
                             f"{split_at} for training and {len(x) - split_at} for validation; "
                             f"both need at least one")
        validation = (x[split_at:], y[split_at:], labels[split_at:])
        return x[:split_at], y[:split_at], labels[:split_at], validation
    return x, y, labels, None
