"""Every picture of the notebook, with matplotlib.

Each function draws one figure, returns the matplotlib Figure, and saves it as a PNG
when given `save="path.png"` (written to a temporary file first, then renamed, so a
crash never leaves half a picture). Without a display (a server, CI) matplotlib's
non-interactive Agg backend is used; `show()` opens windows only when a display exists.

    show_images(x, y)                  the 3x3 grid of training images with class names
    learning_curves(histories)         loss and accuracy per epoch, every fold (train blue, validation orange)
    performance(scores)                mean, standard deviation and a box plot of fold scores
    activation_grid(model, images)     what each conv/pool layer makes of a few test images
    filters(model)                     the first convolution's learned 3x3 filters
    confusion_matrix(y_true, y_pred)   counts of true class (rows) vs predicted class (columns)
    misclassified(x, y_true, y_pred)   a gallery of mistakes with their true and predicted labels
"""
import os
import sys

import numpy as np

from tinycnn.utils import atomic_write

# Fashion-MNIST's class names, index = label. Kept here too so that plotting needs no data.
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

TRAIN_COLOR = "tab:blue"
VALIDATION_COLOR = "tab:orange"


# ---------------------------------------------------------------------------
# matplotlib, loaded on first use, headless when there is no display
# ---------------------------------------------------------------------------
def has_display():
    """True when windows can be opened (a desktop session, macOS or Windows)."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _pyplot():
    import matplotlib
    if not has_display() and "MPLBACKEND" not in os.environ:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def show():
    """plt.show() when a display exists; does nothing on a headless machine."""
    plt = _pyplot()
    if has_display() and plt.get_backend().lower() != "agg":
        plt.show()


def _finish(fig, save):
    """Lay the figure out, save it atomically if asked, and return it."""
    fig.tight_layout()
    if save is not None:
        save_figure(fig, save)
    return fig


def save_figure(fig, path, dpi=100):
    """Write fig to `path` (format from its extension, e.g. .png), via a temporary file."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    extension = os.path.splitext(path)[1].lstrip(".").lower() or "png"
    with atomic_write(path) as file:
        fig.savefig(file, format=extension, dpi=dpi)
    return path


# ---------------------------------------------------------------------------
# Small helpers for the arguments
# ---------------------------------------------------------------------------
def _as_images(x, name="x"):
    """(N, 28, 28) or (N, 28, 28, 1) -> (N, 28, 28) for imshow."""
    x = np.asarray(x)
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim != 3:
        raise ValueError(f"{name} must hold grey images of shape (N, height, width) or "
                         f"(N, height, width, 1), got shape {x.shape}")
    return x


def _as_labels(y, name="y"):
    """Integer labels (N,) from integers (N,) or one-hot / probabilities (N, classes)."""
    y = np.asarray(y)
    if y.ndim == 2:
        return y.argmax(axis=1)
    if y.ndim != 1:
        raise ValueError(f"{name} must be integer labels (N,) or one-hot rows (N, classes), "
                         f"got shape {y.shape}")
    return y.astype(np.int64)


def _history_dict(history):
    """A History (anything with .history) or a plain dict -> the dict of per-epoch lists."""
    if isinstance(history, dict):
        return history
    if hasattr(history, "history"):
        return history.history
    raise ValueError(f"expected a History (from fit) or a dict of per-epoch lists, got {history!r}")


# ---------------------------------------------------------------------------
# The data
# ---------------------------------------------------------------------------
def show_images(x, y, class_names=CLASS_NAMES, indices=None, rows=3, cols=3, save=None):
    """A grid of images, each titled with its class name (the notebook's first picture).

    x: (N, 28, 28) or (N, 28, 28, 1) pixels (uint8 0..255 or floats).
    y: (N,) integer labels or (N, 10) one-hot.
    indices: which images to show; default the first rows * cols.
    Returns the Figure (rows * cols axes, each titled with a class name).
    """
    x, y = _as_images(x), _as_labels(y)
    if len(x) != len(y):
        raise ValueError(f"show_images: x has {len(x)} images but y has {len(y)} labels")
    if indices is None:
        indices = range(min(rows * cols, len(x)))
    indices = list(indices)
    plt = _pyplot()
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, index in zip(axes.flat, indices):
        ax.imshow(x[index], cmap="gray")
        ax.set_title(class_names[int(y[index])], fontsize=10)
    return _finish(fig, save)


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------
def learning_curves(histories, save=None):
    """Loss and accuracy per epoch for every fold (the tutorial's summarize_diagnostics).

    histories: one History / dict, or a list of them (one per fold). Each holds per-epoch
        'loss' and 'accuracy', and 'val_loss' and 'val_accuracy' when validation data was given.
    Returns the Figure: two axes, 'Cross Entropy Loss' on top and 'Classification Accuracy'
    below; training in blue, validation in orange, one line of each per fold.
    """
    if isinstance(histories, dict) or hasattr(histories, "history"):
        histories = [histories]
    histories = [_history_dict(h) for h in histories]
    if not histories:
        raise ValueError("learning_curves: no histories given")
    plt = _pyplot()
    fig, (loss_ax, acc_ax) = plt.subplots(2, 1, figsize=(7, 7), sharex=True)
    for ax, key, title in ((loss_ax, "loss", "Cross Entropy Loss"),
                           (acc_ax, "accuracy", "Classification Accuracy")):
        for fold, history in enumerate(histories):
            if key not in history:
                raise ValueError(f"learning_curves: history {fold} has no {key!r} "
                                 f"(it has {sorted(history)})")
            epochs = np.arange(1, len(history[key]) + 1)
            first = fold == 0
            ax.plot(epochs, history[key], color=TRAIN_COLOR, marker="o", markersize=3,
                    label="train" if first else None)
            if "val_" + key in history:
                ax.plot(epochs, history["val_" + key], color=VALIDATION_COLOR, marker="o",
                        markersize=3, label="validation" if first else None)
        ax.set_title(title)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    acc_ax.set_xlabel("epoch")
    n_epochs = max(len(history["loss"]) for history in histories)
    if n_epochs <= 20:
        acc_ax.set_xticks(np.arange(1, n_epochs + 1))          # whole epochs: 1, 2, 3, not 1.5
    acc_ax.set_xlim(0.5, n_epochs + 0.5)
    return _finish(fig, save)


def performance(scores, save=None):
    """Fold scores as a box plot, with mean and standard deviation in the title
    (the tutorial's summarize_performance).

    scores: accuracies in [0, 1], one per fold.
    Returns the Figure (one axis; its title reads 'Accuracy: mean=91.190 std=0.120, n=5').
    """
    scores = np.asarray(scores, dtype=float).ravel()
    if scores.size == 0:
        raise ValueError("performance: no scores given")
    percent = scores * 100.0
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.boxplot(percent)
    ax.plot(np.ones_like(percent), percent, "o", color=TRAIN_COLOR, alpha=0.6)
    ax.set_title("Accuracy: mean=%.3f std=%.3f, n=%d" % (percent.mean(), percent.std(),
                                                         percent.size), fontsize=11)
    ax.set_ylabel("accuracy (%)")
    ax.set_xticks([1])
    ax.set_xticklabels(["folds"])
    return _finish(fig, save)


# ---------------------------------------------------------------------------
# Inside the model
# ---------------------------------------------------------------------------
def _feature_map_layers(model, layers):
    """Indices of the layers to draw: given by index or name, default every layer whose
    output is a stack of feature maps (conv and pool layers)."""
    all_layers = list(model.layers)
    if layers is None:
        return [i for i, layer in enumerate(all_layers)
                if type(layer).__name__ in ("Conv2D", "MaxPooling2D")]
    chosen = []
    names = [layer.name for layer in all_layers]
    for item in layers:
        if isinstance(item, str):
            if item not in names:
                raise ValueError(f"activation_grid: no layer named {item!r}; the model has {names}")
            chosen.append(names.index(item))
        else:
            if not -len(all_layers) <= int(item) < len(all_layers):
                raise ValueError(f"activation_grid: layer index {item} out of range for a model "
                                 f"of {len(all_layers)} layers")
            chosen.append(int(item) % len(all_layers))
    return chosen


def activation_grid(model, images, filter_index=1, layers=None, row_labels=None, save=None):
    """One filter's activation maps, layer by layer, for a few images (the notebook's grid).

    model: a built model with `layer_outputs(x)` (list of each layer's output).
    images: (K, 28, 28, 1) float32 inputs the model takes (the notebook: test images 0, 7, 26).
    filter_index: which channel of each feature map to draw (the notebook's CONVOLUTION_NUMBER = 1).
    layers: the layers to draw, by index or name; default every Conv2D and MaxPooling2D.
    row_labels: one label per image (e.g. "test 7: Sneaker") shown left of its row.
    Returns the Figure: K rows x len(layers) columns, colormap inferno, columns titled
    with the layer names.
    """
    images = np.asarray(images)
    chosen = _feature_map_layers(model, layers)
    if not chosen:
        raise ValueError("activation_grid: the model has no conv or pool layers to draw")
    outputs = model.layer_outputs(images)
    plt = _pyplot()
    fig, axes = plt.subplots(len(images), len(chosen),
                             figsize=(2.3 * len(chosen), 2.3 * len(images)), squeeze=False)
    for column, layer_index in enumerate(chosen):
        feature_maps = np.asarray(outputs[layer_index])     # (K, height, width, channels)
        layer = model.layers[layer_index]
        if feature_maps.ndim != 4:
            raise ValueError(f"activation_grid: layer {layer.name!r} outputs shape "
                             f"{feature_maps.shape}, not feature maps (K, height, width, channels)")
        if not 0 <= filter_index < feature_maps.shape[-1]:
            raise ValueError(f"activation_grid: filter_index {filter_index} is out of range for "
                             f"layer {layer.name!r} with {feature_maps.shape[-1]} filters")
        for row in range(len(images)):
            ax = axes[row, column]
            ax.imshow(feature_maps[row, :, :, filter_index], cmap="inferno")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"{layer.name}\n{feature_maps.shape[1]}x{feature_maps.shape[2]}",
                             fontsize=9)
            if column == 0 and row_labels is not None:
                ax.set_ylabel(row_labels[row], fontsize=9)
    fig.suptitle(f"filter {filter_index}")
    return _finish(fig, save)


def filters(model, save=None):
    """The first convolution's learned filters, one small picture each.

    model: a built model whose first Conv2D has a kernel of shape
        (kernel_height, kernel_width, in_channels, filters) (Keras's layout).
    Returns the Figure: one axis per filter (channel 0 of each), in a grid 8 wide,
    grey scale shared by all (dark = negative weight, light = positive).
    """
    conv = next((layer for layer in model.layers if type(layer).__name__ == "Conv2D"), None)
    if conv is None:
        raise ValueError("filters: the model has no Conv2D layer")
    kernel = np.asarray(conv.get_weights()[0])            # (kh, kw, in_channels, filters)
    n_filters = kernel.shape[-1]
    cols = min(8, n_filters)
    rows = -(-n_filters // cols)
    limit = np.abs(kernel).max() or 1.0
    plt = _pyplot()
    fig, axes = plt.subplots(rows, cols, figsize=(1.2 * cols, 1.3 * rows + 0.5), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for index, ax in zip(range(n_filters), axes.flat):
        ax.imshow(kernel[:, :, 0, index], cmap="gray", vmin=-limit, vmax=limit)
        ax.set_title(str(index), fontsize=8)
    fig.suptitle(f"{conv.name}: {n_filters} learned {kernel.shape[0]}x{kernel.shape[1]} filters")
    return _finish(fig, save)


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------
def confusion_counts(y_true, y_pred, num_classes=10):
    """counts[i, j] = how many images of true class i were predicted as class j.

    y_true, y_pred: (N,) integer labels or (N, classes) one-hot / probabilities.
    Returns int64 (num_classes, num_classes).
    """
    y_true, y_pred = _as_labels(y_true, "y_true"), _as_labels(y_pred, "y_pred")
    if len(y_true) != len(y_pred):
        raise ValueError(f"confusion matrix: y_true has {len(y_true)} labels, y_pred {len(y_pred)}")
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (y_true, y_pred), 1)
    return counts


def confusion_matrix(y_true, y_pred, class_names=CLASS_NAMES, save=None):
    """The confusion matrix with class names: rows are the true class, columns the prediction.

    y_true, y_pred: (N,) integer labels or (N, classes) one-hot / probabilities.
    Returns the Figure (one axis with the counts written in each cell, plus a colorbar).
    """
    counts = confusion_counts(y_true, y_pred, len(class_names))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 7))
    picture = ax.imshow(counts, cmap="Blues")
    fig.colorbar(picture, ax=ax, fraction=0.046)
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks)
    ax.set_xticklabels(class_names, rotation=45, ha="right")
    ax.set_yticks(ticks)
    ax.set_yticklabels(class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    ax.set_title(f"Confusion matrix ({counts.sum()} images, accuracy {accuracy:.4f})")
    threshold = counts.max() / 2
    for i in range(len(class_names)):
        for j in range(len(class_names)):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if counts[i, j] > threshold else "black")
    return _finish(fig, save)


def misclassified(x, y_true, y_pred, class_names=CLASS_NAMES, max_images=16, cols=4, save=None):
    """A gallery of wrongly classified images, titled 'true: Shirt / pred: T-shirt/top'.

    x: (N, 28, 28) or (N, 28, 28, 1) images.
    y_true, y_pred: (N,) integer labels or (N, classes) one-hot / probabilities.
    max_images: show at most this many mistakes (the first ones in x's order).
    Returns the Figure (one axis per mistake shown; an axis saying 'no mistakes' if none).
    """
    x = _as_images(x)
    y_true, y_pred = _as_labels(y_true, "y_true"), _as_labels(y_pred, "y_pred")
    if not len(x) == len(y_true) == len(y_pred):
        raise ValueError(f"misclassified: x, y_true and y_pred must have the same length, got "
                         f"{len(x)}, {len(y_true)} and {len(y_pred)}")
    wrong = np.flatnonzero(y_true != y_pred)[:max_images]
    plt = _pyplot()
    if len(wrong) == 0:
        fig, ax = plt.subplots(figsize=(4, 2))
        ax.axis("off")
        ax.text(0.5, 0.5, "no mistakes", ha="center", va="center")
        return _finish(fig, save)
    cols = min(cols, len(wrong))
    rows = -(-len(wrong) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, index in zip(axes.flat, wrong):
        ax.imshow(x[index], cmap="gray")
        ax.set_title(f"#{index}\ntrue: {class_names[y_true[index]]}\n"
                     f"pred: {class_names[y_pred[index]]}", fontsize=8)
    return _finish(fig, save)
