"""Every picture of the notebook, with matplotlib.

Each function draws one figure, returns the matplotlib Figure, and saves it as a PNG
when given `save="path.png"` (written to a temporary file first, then renamed, so a
crash never leaves half a picture). Without a display (a server, CI) matplotlib's
non-interactive Agg backend is used; `show()` opens windows only when a display exists.

    show_images(x, y)                  the 3x3 grid of training images with class names
    learning_curves(histories)         loss and accuracy per epoch, every fold (train blue, validation orange)
    performance(scores)                mean, standard deviation and a box plot of fold scores
    gradient_norms(recorder)           each layer's gradient norm over the training steps
    im2col_picture()                   how a 3x3 patch becomes one row of the patch matrix
    activation_grid(model, images)     one filter's maps in each conv/pool layer, for a few images
    feature_maps(model, image)         every feature map of one layer, for one image
    filters(model)                     the first convolution's learned 3x3 filters
    confusion_matrix(y_true, y_pred)   true class (rows) vs predicted class (columns); normalize=True
    misclassified(x, y_true, y_pred)   a gallery of mistakes with their true and predicted labels
    most_confident_mistakes(x, y_true, probabilities)   the mistakes the model was surest of
    prediction_bars(probabilities)     one prediction's softmax probabilities, one bar per class

In a Jupyter notebook, a cell that ends with one of these calls shows the picture once.
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
DIVERGING_CMAP = "RdBu_r"          # weights and gradients: blue below zero, white at zero, red above
ACTIVATION_CMAP = "inferno"        # feature maps: black where a filter does not respond


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
    """plt.show() when a display exists; does nothing on a headless machine.

    In a Jupyter notebook a picture shows when the cell ends with it (or with display(fig)).
    """
    plt = _pyplot()
    if has_display() and plt.get_backend().lower() != "agg":
        plt.show()


def _pyplot_shows_every_figure_after_each_cell():
    """True under Jupyter's inline backend, which draws every open pyplot figure when a cell ends."""
    import matplotlib
    return "inline" in matplotlib.get_backend().lower()


def _finish(fig, save):
    """Lay the figure out, save it atomically if asked, and return it.

    Under Jupyter's inline backend the figure leaves pyplot here: the backend would draw it
    when the cell ends and the returned Figure would draw again, twice in all. It still
    shows when the cell returns it (or through display(fig)), and still saves.
    """
    if fig.get_layout_engine() is None:             # figures with colour bars bring their own
        fig.tight_layout()
    if save is not None:
        save_figure(fig, save)
    if _pyplot_shows_every_figure_after_each_cell():
        _pyplot().close(fig)
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


def gradient_norms(norms, window=None, save=None):
    """Each layer's gradient norm over the training steps, one colour per layer, log scale.

    norms: a tinycnn.callbacks.GradientNorms that watched fit, or a dict
        {layer name: [norm at each recorded step]} (steps then count 1, 2, 3, ...).
    window: average this many recorded steps for the bold line; default 1 for up to 100
        steps and about a fiftieth of them beyond (one batch's norm is noisy: the trend
        hides in the noise). With window > 1 every step's norm is drawn faintly behind.
    Returns the Figure: one axis, x the training step (batch), y the L2 norm of the layer's
    gradient (all its weights together) on a log scale, a legend of layer names.
    """
    if hasattr(norms, "norms"):
        steps, norms = norms.steps, norms.norms
    elif isinstance(norms, dict):
        steps = None
    else:
        raise ValueError(f"gradient_norms: expected a GradientNorms callback (after fit) or a dict "
                         f"{{layer name: [norms]}}, got {norms!r}")
    if not norms or not any(len(values) for values in norms.values()):
        raise ValueError("gradient_norms: nothing recorded; pass the GradientNorms callback to "
                         "fit(..., callbacks=[recorder]) and train at least one batch")
    longest = max(len(values) for values in norms.values())
    if window is None:
        window = 1 if longest <= 100 else longest // 50
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
        raise ValueError(f"gradient_norms: window must be a whole number of steps >= 1, got {window!r}")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, values in norms.items():
        values = np.asarray(values, dtype=float)
        x = np.asarray(steps) if steps is not None else np.arange(1, len(values) + 1)
        if window == 1 or len(values) < window:
            ax.plot(x, values, label=name, linewidth=1.2)
            continue
        faint, = ax.plot(x, values, linewidth=0.5, alpha=0.25)
        means = np.convolve(values, np.ones(window) / window, mode="valid")    # mean of each window
        ax.plot(x[window - 1:], means, color=faint.get_color(), linewidth=1.8, label=name)
    ax.set_yscale("log")                                     # layers differ by orders of magnitude
    ax.set_xlabel("training step (batch)")
    ax.set_ylabel("L2 norm of the layer's gradient")
    smoothed = f"; bold: mean of {window} steps, faint: each step" if window > 1 else ""
    ax.set_title(f"Gradient norm per layer (log scale{smoothed})", fontsize=11)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=9)
    return _finish(fig, save)


# ---------------------------------------------------------------------------
# How a convolution becomes one matrix product
# ---------------------------------------------------------------------------
def im2col_rows(image, size=3):
    """The patch matrix of a small grey image: every size x size patch as one row.

    image: (H, W). Returns (out_h * out_w, size * size), out_h = H - size + 1 (stride 1, no
    padding): row r is the patch at (r // out_w, r % out_w), read row by row, as Conv2D's
    im2col (tinycnn.im2col) makes it for one image of one channel.
    """
    from tinycnn.im2col import im2col
    image = np.asarray(image)
    out_h, out_w = image.shape[0] - size + 1, image.shape[1] - size + 1
    return im2col(image[None, :, :, None], size, size, 1, 1, 0, 0, out_h, out_w)


def im2col_picture(image=None, patch=(1, 1), save=None):
    """What im2col does: one 3x3 patch of a small image becomes one row of the patch matrix.

    image: (H, W) a small grey image, 3..8 pixels a side, every value written in its cell;
        default a 5x5 image holding 0..24, so each number shows where its pixel goes.
    patch: (row, column) of the highlighted patch's top-left pixel.
    Returns the Figure: the image with the patch framed (left), and the patch matrix
    (out_h * out_w rows x 9 columns) with that patch's row framed (right), an arrow between
    them, on one colour scale. A 3x3 convolution with F filters is then one product:
    (out_h * out_w, 9) @ (9, F), one output pixel per row.
    """
    from matplotlib.patches import ConnectionPatch, Rectangle
    image = np.arange(25).reshape(5, 5) if image is None else np.asarray(image)
    if image.ndim != 2 or not (3 <= image.shape[0] <= 8 and 3 <= image.shape[1] <= 8):
        raise ValueError(f"im2col_picture: give a small grey image (H, W), 3 to 8 pixels a side, "
                         f"so that every value can be written (e.g. a crop image[10:16, 10:16]); "
                         f"got shape {image.shape}")
    out_h, out_w = image.shape[0] - 2, image.shape[1] - 2
    if len(patch) != 2:
        raise ValueError(f"im2col_picture: patch must be (row, column), got {patch!r}")
    top, left = (int(v) for v in patch)
    if not (0 <= top < out_h and 0 <= left < out_w):
        raise ValueError(f"im2col_picture: patch {tuple(patch)} does not fit: its top-left pixel "
                         f"must be in rows 0..{out_h - 1} and columns 0..{out_w - 1}")
    rows = im2col_rows(image)                                # (out_h * out_w, 9)
    row = top * out_w + left                                 # the patch's row in the matrix
    low, high = float(image.min()), float(image.max())
    plt = _pyplot()
    fig, (image_ax, matrix_ax) = plt.subplots(
        1, 2, figsize=(10, max(4.0, 0.38 * len(rows) + 1.6)),
        gridspec_kw={"width_ratios": [image.shape[1], 9]})
    for ax, values in ((image_ax, image), (matrix_ax, rows)):
        ax.imshow(values, cmap="Blues", vmin=low - 0.25 * (high - low), vmax=high)
        for (i, j), value in np.ndenumerate(values):
            dark = value > (low + high) / 2                  # white text on the darker cells
            ax.text(j, i, f"{value:g}", ha="center", va="center", fontsize=8,
                    color="white" if dark else "black")
    frame = dict(fill=False, edgecolor="tab:red", linewidth=2.5)
    image_ax.add_patch(Rectangle((left - 0.5, top - 0.5), 3, 3, **frame))
    matrix_ax.add_patch(Rectangle((-0.5, row - 0.5), 9, 1, **frame))
    fig.add_artist(ConnectionPatch(xyA=(left + 2.5, top + 1), coordsA=image_ax.transData,
                                   xyB=(-0.5, row), coordsB=matrix_ax.transData,
                                   arrowstyle="->", color="tab:red", linewidth=1.5))
    image_ax.set_title(f"image {image.shape[0]}x{image.shape[1]}: the 3x3 patch\n"
                       f"at row {top}, column {left}", fontsize=10)
    image_ax.set_xticks(range(image.shape[1]))
    image_ax.set_yticks(range(image.shape[0]))
    image_ax.set_xlabel("column")
    image_ax.set_ylabel("row")
    matrix_ax.set_title(f"patch matrix ({len(rows)} patches x 9): row {row} = that patch, "
                        f"read row by row\n({row} = {top} * {out_w} + {left}: patch row {top}, "
                        f"{out_w} patches a row, patch column {left})", fontsize=10)
    matrix_ax.set_xticks(range(9))
    matrix_ax.set_yticks(range(len(rows)))
    matrix_ax.set_xlabel("position in the patch (3 * i + j)")
    matrix_ax.set_ylabel("patch = output pixel")
    fig.suptitle(f"im2col: a 3x3 convolution becomes one matrix product, "
                 f"({len(rows)}, 9) @ (9, filters)", fontsize=11)
    return _finish(fig, save)


# ---------------------------------------------------------------------------
# Inside the model
# ---------------------------------------------------------------------------
def _feature_map_layers(model, layers, owner="activation_grid"):
    """Indices of the layers to draw: given by index or name, default every layer whose
    output is a stack of feature maps (conv and pool layers). `owner` names the caller in errors."""
    all_layers = list(model.layers)
    if layers is None:
        return [i for i, layer in enumerate(all_layers)
                if type(layer).__name__ in ("Conv2D", "MaxPooling2D")]
    chosen = []
    names = [layer.name for layer in all_layers]
    for item in layers:
        if isinstance(item, str):
            if item not in names:
                raise ValueError(f"{owner}: no layer named {item!r}; the model has {names}")
            chosen.append(names.index(item))
        else:
            if not -len(all_layers) <= int(item) < len(all_layers):
                raise ValueError(f"{owner}: layer index {item} out of range for a model "
                                 f"of {len(all_layers)} layers")
            chosen.append(int(item) % len(all_layers))
    return chosen


def _feature_maps_of(outputs, model, layer_index, owner):
    """Layer `layer_index`'s output from `outputs` (model.layer_outputs), checked to be
    feature maps: (K, height, width, channels)."""
    feature_maps = np.asarray(outputs[layer_index])
    if feature_maps.ndim != 4:
        raise ValueError(f"{owner}: layer {model.layers[layer_index].name!r} outputs shape "
                         f"{feature_maps.shape}, not feature maps (K, height, width, channels); "
                         f"choose a Conv2D or MaxPooling2D layer")
    return feature_maps


def _ordinal(number):
    """1 -> '1st', 2 -> '2nd', 3 -> '3rd', 4 -> '4th', 11 -> '11th', 22 -> '22nd'."""
    suffix = {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    if 10 <= number % 100 <= 20:                    # 11th, 12th, 13th
        suffix = "th"
    return f"{number}{suffix}"


def activation_grid(model, images, filter_index=1, layers=None, row_labels=None, save=None):
    """One filter's activation maps, layer by layer, for a few images (the notebook's grid).

    model: a built model with `layer_outputs(x)` (list of each layer's output).
    images: (K, 28, 28, 1) float32 inputs the model takes (the notebook: test images 0, 7, 26).
    filter_index: which channel of each feature map to draw, counting from 0 (the notebook's
        CONVOLUTION_NUMBER = 1 is the second filter).
    layers: the layers to draw, by index or name; default every Conv2D and MaxPooling2D.
    row_labels: one label per image (e.g. "test 7: Sneaker") shown left of its row.
    Returns the Figure: K rows x len(layers) columns of maps (colormap inferno), columns
    titled with the layer names, one colour scale per column (a layer) with its colour bar
    below it, and a title that says the filter index is 0-based.
    """
    images = np.asarray(images)
    chosen = _feature_map_layers(model, layers)
    if not chosen:
        raise ValueError("activation_grid: the model has no conv or pool layers to draw")
    outputs = model.layer_outputs(images)
    plt = _pyplot()
    fig, axes = plt.subplots(len(images), len(chosen), squeeze=False, layout="constrained",
                             figsize=(2.3 * len(chosen), 2.3 * len(images) + 1.0))
    for column, layer_index in enumerate(chosen):
        feature_maps = _feature_maps_of(outputs, model, layer_index, "activation_grid")
        layer = model.layers[layer_index]
        if not 0 <= filter_index < feature_maps.shape[-1]:
            raise ValueError(f"activation_grid: filter_index {filter_index} is out of range for "
                             f"layer {layer.name!r} with {feature_maps.shape[-1]} filters "
                             f"(indices 0..{feature_maps.shape[-1] - 1})")
        maps = feature_maps[:, :, :, filter_index]          # (K, height, width)
        # one scale per layer: the images' maps in a column compare, colour for colour
        low, high = float(maps.min()), float(maps.max())
        for row in range(len(images)):
            ax = axes[row, column]
            picture = ax.imshow(maps[row], cmap=ACTIVATION_CMAP, vmin=low, vmax=high)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"{layer.name}\n{maps.shape[1]}x{maps.shape[2]}", fontsize=9)
            if column == 0 and row_labels is not None:
                ax.set_ylabel(row_labels[row], fontsize=9)
        fig.colorbar(picture, ax=axes[:, column], location="bottom", shrink=0.9, aspect=12)
    fig.suptitle(f"filter index {filter_index} (0-based: the {_ordinal(filter_index + 1)} filter) "
                 f"of each layer", fontsize=11)
    return _finish(fig, save)


def feature_maps(model, image, layer=None, cols=8, save=None):
    """Every feature map of one layer for one image: one panel per channel (filter).

    model: a built model with `layer_outputs(x)`.
    image: one input, (height, width, channels) or (1, height, width, channels), as the
        model takes it (e.g. test_images[0], shape (28, 28, 1)).
    layer: the layer to draw, by index or name; default the first Conv2D.
    cols: panels per row.
    Returns the Figure: the input image (grey) on the left, then one panel per channel
    titled with its index (0-based), all on one colour scale (inferno) with one colour bar,
    so a dark panel is a filter that barely responds to this image.
    """
    image = np.asarray(image)
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or len(image) != 1:
        raise ValueError(f"feature_maps: give one image of shape (height, width, channels) or "
                         f"(1, height, width, channels), e.g. test_images[0]; got shape {image.shape}")
    if layer is None:
        conv = [i for i, l in enumerate(model.layers) if type(l).__name__ == "Conv2D"]
        if not conv:
            raise ValueError("feature_maps: the model has no Conv2D layer, so it makes no feature "
                             "maps to draw; use a convolutional model (cnn_categorical, cnn_sparse)")
        layer = conv[0]
    layer_index = _feature_map_layers(model, [layer], owner="feature_maps")[0]
    maps = _feature_maps_of(model.layer_outputs(image), model, layer_index, "feature_maps")[0]
    height, width, channels = maps.shape                 # maps: (height, width, channels)
    cols = max(1, min(int(cols), channels))
    rows = -(-channels // cols)
    plt = _pyplot()
    fig = plt.figure(figsize=(1.25 * cols + 3.2, 1.3 * rows + 0.8), layout="constrained")
    grid = fig.add_gridspec(rows, cols + 2, width_ratios=[2.0, 0.2] + [1.0] * cols)
    input_ax = fig.add_subplot(grid[:min(rows, 2), 0])
    input_ax.imshow(image[0, :, :, 0], cmap="gray")
    input_ax.set_title("input", fontsize=9)
    input_ax.axis("off")
    low, high = float(maps.min()), float(maps.max())      # one scale: panels compare
    map_axes = []
    for channel in range(channels):
        ax = fig.add_subplot(grid[channel // cols, 2 + channel % cols])
        picture = ax.imshow(maps[:, :, channel], cmap=ACTIVATION_CMAP, vmin=low, vmax=high)
        ax.set_title(str(channel), fontsize=8)
        ax.axis("off")
        map_axes.append(ax)
    fig.colorbar(picture, ax=map_axes, shrink=0.8, label="activation")
    name = model.layers[layer_index].name
    fig.suptitle(f"{name}: its {channels} feature maps ({height}x{width}) for this image, "
                 f"titled by filter index (0-based)", fontsize=11)
    return _finish(fig, save)


def filters(model, save=None):
    """The first convolution's learned filters, one small picture each, on one colour scale.

    model: a built model whose first Conv2D has a kernel of shape
        (kernel_height, kernel_width, in_channels, filters) (Keras's layout).
    Returns the Figure: one axis per filter (its input channel 0), in a grid 8 wide, titled
    with the filter's index (0-based), and a colour bar. The colour map diverges from white
    at zero (blue negative, red positive) with vmin = -vmax, so equal colours mean equal
    weights in every panel and a filter's sign pattern reads at a glance.
    """
    conv = next((layer for layer in model.layers if type(layer).__name__ == "Conv2D"), None)
    if conv is None:
        raise ValueError("filters: the model has no Conv2D layer")
    kernel = np.asarray(conv.get_weights()[0])            # (kh, kw, in_channels, filters)
    n_filters = kernel.shape[-1]
    cols = min(8, n_filters)
    rows = -(-n_filters // cols)
    limit = float(np.abs(kernel).max()) or 1.0              # symmetric, so white is exactly 0
    plt = _pyplot()
    fig, axes = plt.subplots(rows, cols, figsize=(1.2 * cols + 1.2, 1.3 * rows + 0.6),
                             squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for index, ax in zip(range(n_filters), axes.flat):
        picture = ax.imshow(kernel[:, :, 0, index], cmap=DIVERGING_CMAP, vmin=-limit, vmax=limit)
        ax.set_title(str(index), fontsize=8)
    fig.colorbar(picture, ax=axes, shrink=0.8, label="weight (white = 0)")
    channel = " (input channel 0)" if kernel.shape[2] > 1 else ""
    fig.suptitle(f"{conv.name}: {n_filters} learned {kernel.shape[0]}x{kernel.shape[1]} "
                 f"filters{channel}, titled by index (0-based)")
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


def confusion_matrix(y_true, y_pred, class_names=CLASS_NAMES, normalize=False, save=None):
    """The confusion matrix with class names: rows are the true class, columns the prediction.

    y_true, y_pred: (N,) integer labels or (N, classes) one-hot / probabilities.
    normalize: False writes the counts; True divides each row by its total, so a row sums to 1
        and cell (i, j) is the fraction of class i's images predicted as j (the diagonal is
        each class's recall). A class with no images keeps a row of zeros.
    Returns the Figure (one axis with the value written in each cell, plus a colorbar).
    """
    counts = confusion_counts(y_true, y_pred, len(class_names))
    values = row_fractions(counts) if normalize else counts
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 7))
    picture = ax.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(picture, ax=ax, fraction=0.046,
                 label="fraction of the true class" if normalize else "images")
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks)
    ax.set_xticklabels(class_names, rotation=45, ha="right")
    ax.set_yticks(ticks)
    ax.set_yticklabels(class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    kind = "row-normalised, each row sums to 1; " if normalize else ""
    ax.set_title(f"Confusion matrix ({kind}{counts.sum()} images, accuracy {accuracy:.4f})",
                 fontsize=11)
    threshold = values.max() / 2
    for i in range(len(class_names)):
        for j in range(len(class_names)):
            text = f"{values[i, j]:.2f}" if normalize else str(values[i, j])
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="white" if values[i, j] > threshold else "black")
    return _finish(fig, save)


def row_fractions(counts):
    """counts (classes, classes) -> each row divided by its sum (float64); empty rows stay 0."""
    counts = np.asarray(counts, dtype=np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


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


def _as_probabilities(probabilities, name="probabilities"):
    """Softmax outputs (N, classes) as float64, checked: in [0, 1], each row summing to 1."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2:
        raise ValueError(f"{name} must be the model's softmax outputs, shape (N, classes) "
                         f"(model.predict(x)), got shape {probabilities.shape}")
    sums = probabilities.sum(axis=1)
    if probabilities.min(initial=0) < 0 or not np.allclose(sums, 1.0, atol=1e-3):
        raise ValueError(f"{name} must be probabilities: each row in [0, 1] and summing to 1 "
                         f"(a softmax output, model.predict(x)); got rows summing to "
                         f"{sums.min():.4g}..{sums.max():.4g}")
    return probabilities


def _percent(probability):
    """0.972 -> '97.2%'; a softmax never gives exactly 0 or 1, so 0.99996 -> '>99.9%' and
    0.00004 -> '<0.1%' rather than a rounded '100.0%' or '0.0%'."""
    if 0.999 < probability < 1:
        return ">99.9%"
    if 0 < probability < 0.0005:
        return "<0.1%"
    return f"{probability:.1%}"


def most_confident_mistakes(x, y_true, probabilities, class_names=CLASS_NAMES, max_images=16,
                            cols=4, save=None):
    """The mistakes the model was surest of, surest first, with their probabilities.

    x: (N, 28, 28) or (N, 28, 28, 1) images.
    y_true: (N,) integer labels or (N, classes) one-hot.
    probabilities: (N, classes) the model's softmax outputs (model.predict(x)).
    max_images: show at most this many mistakes.
    Returns the Figure: one axis per mistake, titled with the image's index, the predicted
    class and its probability, and the true class and the probability the model gave it
    (e.g. '#42\\npred: Shirt 97.1%\\ntrue: T-shirt/top 2.5%'); 'no mistakes' if there are none.
    """
    x = _as_images(x)
    y_true = _as_labels(y_true, "y_true")
    probabilities = _as_probabilities(probabilities)
    if not len(x) == len(y_true) == len(probabilities):
        raise ValueError(f"most_confident_mistakes: x, y_true and probabilities must have the same "
                         f"length, got {len(x)}, {len(y_true)} and {len(probabilities)}")
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)                  # (N,) the predicted class's probability
    wrong = np.flatnonzero(predicted != y_true)
    surest = wrong[np.argsort(-confidence[wrong], kind="stable")][:max_images]
    plt = _pyplot()
    if len(surest) == 0:
        fig, ax = plt.subplots(figsize=(4, 2))
        ax.axis("off")
        ax.text(0.5, 0.5, "no mistakes", ha="center", va="center")
        return _finish(fig, save)
    cols = min(cols, len(surest))
    rows = -(-len(surest) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.5 * cols, 2.9 * rows + 0.4), squeeze=False,
                             layout="constrained")            # room for three-line titles
    for ax in axes.flat:
        ax.axis("off")
    for ax, index in zip(axes.flat, surest):
        ax.imshow(x[index], cmap="gray")
        true, guess = y_true[index], predicted[index]
        ax.set_title(f"#{index}\npred: {class_names[guess]} {_percent(probabilities[index, guess])}\n"
                     f"true: {class_names[true]} {_percent(probabilities[index, true])}", fontsize=8)
    fig.suptitle(f"The {len(surest)} most confident of {len(wrong)} mistakes", fontsize=11)
    return _finish(fig, save)


def prediction_bars(probabilities, class_names=CLASS_NAMES, image=None, true_label=None, save=None):
    """One prediction's softmax probabilities as horizontal bars, one per class.

    probabilities: (classes,) or (1, classes) one image's softmax output (model.predict(x)[i]).
    image: optionally that image, (28, 28) or (28, 28, 1), drawn on the left.
    true_label: optionally its true class (an integer); its name gets '(true)' on the axis.
    Returns the Figure: a bar axis with the class names on its y axis (first class on top),
    x from 0 to 1, each bar's probability written beside it, the predicted class's bar in
    blue and the others grey; plus the image's axis when given.
    """
    probabilities = _as_probabilities(np.reshape(probabilities, (1, -1)))[0]
    if len(probabilities) != len(class_names):
        raise ValueError(f"prediction_bars: {len(probabilities)} probabilities but "
                         f"{len(class_names)} class names")
    predicted = int(probabilities.argmax())
    names = [name + (" (true)" if i == true_label else "") for i, name in enumerate(class_names)]
    plt = _pyplot()
    if image is None:
        fig, bar_ax = plt.subplots(figsize=(6, 4))
    else:
        fig, (image_ax, bar_ax) = plt.subplots(1, 2, figsize=(9, 4),
                                               gridspec_kw={"width_ratios": [1, 2]})
        image_ax.imshow(_as_images(np.asarray(image)[None], "image")[0], cmap="gray")
        image_ax.axis("off")
    colors = ["lightgray"] * len(probabilities)
    colors[predicted] = TRAIN_COLOR
    positions = np.arange(len(probabilities))
    bar_ax.barh(positions, probabilities, color=colors)
    bar_ax.set_yticks(positions)
    bar_ax.set_yticklabels(names)
    bar_ax.invert_yaxis()                                    # class 0 on top, as in a list
    bar_ax.set_xlim(0, 1.15)                                 # room for the labels past a full bar
    bar_ax.set_xlabel("probability (softmax output)")
    for position, p in zip(positions, probabilities):
        bar_ax.text(p + 0.01, position, _percent(p), va="center", fontsize=8)
    title = f"predicted: {class_names[predicted]} ({_percent(probabilities[predicted])})"
    if true_label is not None:
        title += f", true: {class_names[int(true_label)]}"
    bar_ax.set_title(title, fontsize=11)
    return _finish(fig, save)
