"""Each plot draws the right panels, and saves a real PNG when asked."""
import os

import numpy as np
import pytest

from tinycnn import plot

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def close_figures():
    yield
    import matplotlib.pyplot as plt
    plt.close("all")


def image_axes(fig):
    """The axes that show a picture (imshow)."""
    return [ax for ax in fig.axes if ax.images]


def colorbars(fig):
    """The colour bars' axes (matplotlib labels them '<colorbar>')."""
    return [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]


def test_matplotlib_is_headless_here():
    plot.show_images(np.zeros((9, 28, 28), np.uint8), np.arange(9))
    import matplotlib
    assert matplotlib.get_backend().lower() == "agg"


def test_show_images_grid_titles_are_class_names(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(12, 28, 28, 1), dtype=np.uint8)
    y = np.array([9, 0, 0, 3, 0, 2, 7, 2, 5, 5, 0, 9])
    fig = plot.show_images(x, np.eye(10)[y], save=tmp_path / "grid.png")
    shown = image_axes(fig)
    assert len(shown) == 9
    assert [ax.get_title() for ax in shown] == [plot.CLASS_NAMES[label] for label in y[:9]]
    # the pixels shown are the images', channel axis dropped
    np.testing.assert_array_equal(shown[4].images[0].get_array(), x[4, :, :, 0])
    assert (tmp_path / "grid.png").read_bytes()[:8] == PNG_MAGIC
    # written through a private temporary file, but ends with the usual permissions
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "grid.png").stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]          # no temporary left


def test_learning_curves_all_folds_blue_train_orange_validation(tmp_path):
    histories = [{"loss": [0.5 - 0.1 * f, 0.3], "accuracy": [0.8, 0.9],
                  "val_loss": [0.6, 0.4], "val_accuracy": [0.7, 0.85 + 0.01 * f]}
                 for f in range(3)]
    fig = plot.learning_curves(histories, save=tmp_path / "curves.png")
    assert len(fig.axes) == 2
    loss_ax, acc_ax = fig.axes
    assert loss_ax.get_title() == "Cross Entropy Loss"
    assert acc_ax.get_title() == "Classification Accuracy"
    import matplotlib.colors as mcolors
    for ax, key in ((loss_ax, "loss"), (acc_ax, "accuracy")):
        lines = ax.get_lines()
        assert len(lines) == 6                        # train + validation for each of 3 folds
        train = [l for l in lines if mcolors.same_color(l.get_color(), plot.TRAIN_COLOR)]
        valid = [l for l in lines if mcolors.same_color(l.get_color(), plot.VALIDATION_COLOR)]
        assert len(train) == len(valid) == 3
        assert [list(l.get_ydata()) for l in train] == [h[key] for h in histories]
        assert [list(l.get_ydata()) for l in valid] == [h["val_" + key] for h in histories]
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["train", "validation"]
    assert (tmp_path / "curves.png").read_bytes()[:8] == PNG_MAGIC


def test_learning_curves_without_validation_and_with_a_bad_history():
    fig = plot.learning_curves({"loss": [1.0, 0.5], "accuracy": [0.5, 0.7]})
    assert [len(ax.get_lines()) for ax in fig.axes] == [1, 1]
    with pytest.raises(ValueError, match="no 'accuracy'"):
        plot.learning_curves([{"loss": [1.0]}])


def test_performance_title_has_mean_std_and_a_box():
    scores = [0.912, 0.91217, 0.90958, 0.91242, 0.91317]
    fig = plot.performance(scores)
    assert len(fig.axes) == 1
    percent = np.array(scores) * 100
    assert fig.axes[0].get_title() == "Accuracy: mean=%.3f std=%.3f, n=5" % (percent.mean(),
                                                                             percent.std())
    # the box's median line sits at the median score
    median_line = [l for l in fig.axes[0].get_lines() if len(l.get_ydata()) == 2
                   and l.get_ydata()[0] == l.get_ydata()[1]]
    assert any(np.isclose(l.get_ydata()[0], np.median(percent)) for l in median_line)


def test_confusion_counts_and_matrix():
    y_true = np.array([0, 0, 1, 2, 2, 2])
    y_pred = np.array([0, 1, 1, 2, 0, 2])
    counts = plot.confusion_counts(y_true, np.eye(3)[y_pred], num_classes=3)
    expected = np.zeros((3, 3), int)
    for t, p in zip(y_true, y_pred):
        expected[t, p] += 1
    np.testing.assert_array_equal(counts, expected)
    fig = plot.confusion_matrix(y_true, y_pred, class_names=["a", "b", "c"])
    main = image_axes(fig)[0]
    np.testing.assert_array_equal(main.images[0].get_array(), expected)
    assert [t.get_text() for t in main.get_xticklabels()] == ["a", "b", "c"]
    assert sorted(int(t.get_text()) for t in main.texts) == sorted(expected.ravel())
    assert "accuracy 0.6667" in main.get_title()


def test_confusion_matrix_normalized_rows_sum_to_one():
    y_true = np.array([0, 0, 0, 0, 1, 1])          # class 2 has no images: its row stays zeros
    y_pred = np.array([0, 0, 0, 1, 1, 2])
    fig = plot.confusion_matrix(y_true, y_pred, class_names=["a", "b", "c"], normalize=True)
    main = image_axes(fig)[0]
    shown = np.asarray(main.images[0].get_array())
    np.testing.assert_allclose(shown, [[0.75, 0.25, 0], [0, 0.5, 0.5], [0, 0, 0]])
    np.testing.assert_allclose(shown.sum(axis=1), [1, 1, 0])
    assert main.images[0].get_clim() == (0, 1)
    assert "0.75" in [t.get_text() for t in main.texts]
    assert "row-normalised" in main.get_title() and "accuracy 0.6667" in main.get_title()
    (bar,) = colorbars(fig)
    assert bar.get_ylabel() == "fraction of the true class"
    counts_bar, = colorbars(plot.confusion_matrix(y_true, y_pred, class_names=["a", "b", "c"]))
    assert counts_bar.get_ylabel() == "images"


def test_misclassified_shows_only_mistakes_with_both_labels():
    x = np.zeros((6, 28, 28), np.float32)
    y_true = np.array([0, 1, 2, 3, 4, 5])
    y_pred = np.array([0, 6, 2, 9, 4, 5])
    fig = plot.misclassified(x, y_true, y_pred)
    shown = image_axes(fig)
    assert len(shown) == 2
    assert shown[0].get_title() == "#1\ntrue: Trouser\npred: Shirt"
    assert shown[1].get_title() == "#3\ntrue: Dress\npred: Ankle boot"
    assert plot.misclassified(x, y_true, y_true).axes[0].texts[0].get_text() == "no mistakes"


def test_bad_image_shape_is_a_clear_error():
    with pytest.raises(ValueError, match="grey images"):
        plot.show_images(np.zeros((9, 28, 28, 3)), np.arange(9))


# ---------------------------------------------------------------------------
# Pictures of a model: a tiny real one
# ---------------------------------------------------------------------------
def tiny_cnn():
    from tinycnn.layers import Conv2D, Dense, Flatten, MaxPooling2D
    from tinycnn.models import Sequential
    from tinycnn.utils import set_random_seed
    set_random_seed(0)
    model = Sequential([
        Conv2D(6, (3, 3), activation="relu", input_shape=(12, 12, 1)),
        MaxPooling2D((2, 2)),
        Conv2D(4, (3, 3), activation="relu"),
        MaxPooling2D((2, 2)),
        Flatten(),
        Dense(10, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def test_activation_grid_rows_images_columns_conv_and_pool_layers(tmp_path):
    model = tiny_cnn()
    images = np.random.default_rng(1).uniform(size=(3, 12, 12, 1)).astype("float32")
    fig = plot.activation_grid(model, images, filter_index=1, row_labels=["a", "b", "c"],
                               save=tmp_path / "act.png")
    shown = image_axes(fig)
    assert len(shown) == 3 * 4                  # 3 images x (conv, pool, conv, pool)
    outputs = model.layer_outputs(images)
    # row 2, column 3 (the second pool) shows filter 1 of image 2's feature maps there
    ax = fig.axes[2 * 4 + 3]
    np.testing.assert_allclose(ax.images[0].get_array(), outputs[3][2, :, :, 1])
    assert ax.images[0].get_cmap().name == "inferno"
    assert [fig.axes[c].get_title().split("\n")[0] for c in range(4)] == \
        [model.layers[i].name for i in range(4)]
    assert fig.axes[4].get_ylabel() == "b"
    assert (tmp_path / "act.png").read_bytes()[:8] == PNG_MAGIC
    # choosing layers by index, and a filter that doesn't exist
    assert len(image_axes(plot.activation_grid(model, images[:1], layers=[0, 1]))) == 2
    with pytest.raises(ValueError, match="filter_index 5 is out of range"):
        plot.activation_grid(model, images, filter_index=5)


def test_activation_grid_has_a_colour_bar_per_layer_and_a_0_based_title():
    model = tiny_cnn()
    images = np.random.default_rng(1).uniform(size=(3, 12, 12, 1)).astype("float32")
    fig = plot.activation_grid(model, images, filter_index=1)
    assert len(colorbars(fig)) == 4                 # one per column (layer)
    assert fig.get_suptitle() == "filter index 1 (0-based: the 2nd filter) of each layer"
    outputs = model.layer_outputs(images)
    for column in range(4):                         # one colour scale per layer, from its maps
        maps = outputs[column][..., 1]
        for row in range(3):
            assert fig.axes[row * 4 + column].images[0].get_clim() == (maps.min(), maps.max())
    assert plot.activation_grid(model, images, filter_index=0).get_suptitle().startswith(
        "filter index 0 (0-based: the 1st filter)")
    assert [plot._ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 23, 101)] == \
        ["1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "23rd", "101st"]


def test_feature_maps_one_panel_per_channel_on_one_scale(tmp_path):
    model = tiny_cnn()
    image = np.random.default_rng(2).uniform(size=(12, 12, 1)).astype("float32")
    fig = plot.feature_maps(model, image, save=tmp_path / "maps.png")
    shown = image_axes(fig)
    assert len(shown) == 1 + 6                     # the input, then conv2d's 6 channels
    assert shown[0].get_title() == "input"
    np.testing.assert_array_equal(shown[0].images[0].get_array(), image[:, :, 0])
    maps = model.layer_outputs(image[None])[0][0]          # (10, 10, 6)
    assert [ax.get_title() for ax in shown[1:]] == [str(c) for c in range(6)]
    for channel, ax in enumerate(shown[1:]):
        np.testing.assert_allclose(ax.images[0].get_array(), maps[:, :, channel])
        assert ax.images[0].get_cmap().name == "inferno"
        assert ax.images[0].get_clim() == (maps.min(), maps.max())
    (bar,) = colorbars(fig)
    assert bar.get_ylabel() == "activation"
    assert fig.get_suptitle().startswith(f"{model.layers[0].name}: its 6 feature maps (10x10)")
    assert (tmp_path / "maps.png").read_bytes()[:8] == PNG_MAGIC
    # another layer, by name; one image given with its batch axis
    second_conv = plot.feature_maps(model, image[None], layer=model.layers[2].name)
    assert len(image_axes(second_conv)) == 1 + 4
    with pytest.raises(ValueError, match="not feature maps"):
        plot.feature_maps(model, image, layer=-1)
    with pytest.raises(ValueError, match="give one image"):
        plot.feature_maps(model, np.stack([image, image]))
    with pytest.raises(ValueError, match="feature_maps: no layer named 'conv9'"):
        plot.feature_maps(model, image, layer="conv9")
    from tinycnn.layers import Dense, Flatten
    from tinycnn.models import Sequential
    dense_only = Sequential([Flatten(input_shape=(12, 12, 1)), Dense(10, activation="softmax")])
    with pytest.raises(ValueError, match="has no Conv2D layer"):
        plot.feature_maps(dense_only, image)


def test_filters_one_panel_per_first_layer_filter_on_a_scale_centred_on_zero():
    model = tiny_cnn()
    fig = plot.filters(model)
    shown = image_axes(fig)
    kernel = model.layers[0].get_weights()[0]
    assert len(shown) == kernel.shape[-1] == 6
    np.testing.assert_allclose(shown[5].images[0].get_array(), kernel[:, :, 0, 5])
    limit = np.abs(kernel).max()
    for ax in shown:
        assert ax.images[0].get_cmap().name == plot.DIVERGING_CMAP == "RdBu_r"
        assert ax.images[0].get_clim() == pytest.approx((-limit, limit))
    assert [ax.get_title() for ax in shown] == [str(i) for i in range(6)]
    (bar,) = colorbars(fig)
    assert bar.get_ylabel() == "weight (white = 0)"
    assert "(0-based)" in fig.get_suptitle()


def test_most_confident_mistakes_surest_first_with_probabilities():
    x = np.random.default_rng(3).uniform(size=(5, 28, 28)).astype("float32")
    y_true = np.array([0, 1, 2, 3, 4])
    probabilities = np.full((5, 10), 0.0)
    probabilities[0, 0] = 1.0                                  # right
    probabilities[1, [1, 6]] = [0.3, 0.7]                      # wrong, 70% sure
    probabilities[2, [2, 9]] = [0.05, 0.95]                    # wrong, 95% sure
    probabilities[3, 3] = 1.0                                  # right
    probabilities[4, [4, 0]] = [0.4, 0.6]                      # wrong, 60% sure
    fig = plot.most_confident_mistakes(x, y_true, probabilities)
    shown = image_axes(fig)
    assert [ax.get_title() for ax in shown] == [
        "#2\npred: Ankle boot 95.0%\ntrue: Pullover 5.0%",
        "#1\npred: Shirt 70.0%\ntrue: Trouser 30.0%",
        "#4\npred: T-shirt/top 60.0%\ntrue: Coat 40.0%"]
    np.testing.assert_array_equal(shown[0].images[0].get_array(), x[2])
    assert fig.get_suptitle() == "The 3 most confident of 3 mistakes"
    assert len(image_axes(plot.most_confident_mistakes(x, y_true, probabilities, max_images=2))) == 2
    with pytest.raises(ValueError, match="must be probabilities.*model.predict"):
        plot.most_confident_mistakes(x, y_true, probabilities * 3)       # logits, not softmax
    with pytest.raises(ValueError, match="same length"):
        plot.most_confident_mistakes(x[:4], y_true, probabilities)


def test_percentages_never_round_to_a_certainty_the_softmax_did_not_give():
    assert [plot._percent(p) for p in (0.972, 0.99996, 0.9995, 1.0, 0.00004, 0.0, 0.0006)] == \
        ["97.2%", ">99.9%", ">99.9%", "100.0%", "<0.1%", "0.0%", "0.1%"]


def test_prediction_bars_one_bar_per_class_with_names():
    probabilities = np.array([0.05, 0.0, 0.1, 0.0, 0.0, 0.0, 0.7, 0.0, 0.15, 0.0], np.float32)
    fig = plot.prediction_bars(probabilities, true_label=0)
    (ax,) = fig.axes
    bars = ax.patches
    np.testing.assert_allclose([bar.get_width() for bar in bars], probabilities, rtol=1e-6)
    assert [t.get_text() for t in ax.get_yticklabels()] == \
        ["T-shirt/top (true)"] + list(plot.CLASS_NAMES[1:])
    import matplotlib.colors as mcolors
    assert [mcolors.same_color(bar.get_facecolor(), plot.TRAIN_COLOR) for bar in bars] == \
        [i == 6 for i in range(10)]                           # the predicted class stands out
    assert ax.get_title() == "predicted: Shirt (70.0%), true: T-shirt/top"
    assert "70.0%" in [t.get_text() for t in ax.texts]
    assert ax.yaxis_inverted()                                 # the first class on top
    image = np.random.default_rng(4).uniform(size=(28, 28, 1))
    with_image = plot.prediction_bars(probabilities[None], image=image)
    np.testing.assert_array_equal(image_axes(with_image)[0].images[0].get_array(), image[:, :, 0])
    with pytest.raises(ValueError, match="10 probabilities but 3 class names"):
        plot.prediction_bars(probabilities, class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="must be probabilities"):
        plot.prediction_bars(np.arange(10.0))


def test_im2col_rows_are_the_patches_read_row_by_row():
    image = np.random.default_rng(5).uniform(size=(6, 7)).astype("float32")
    rows = plot.im2col_rows(image)
    assert rows.shape == (4 * 5, 9)
    for r in (0, 6, 19):                                   # row r: the patch at (r // 5, r % 5)
        i, j = divmod(r, 5)
        np.testing.assert_array_equal(rows[r], image[i:i + 3, j:j + 3].ravel())


def test_im2col_picture_frames_the_patch_and_its_row():
    from matplotlib.patches import Rectangle
    image = np.arange(30).reshape(5, 6)
    fig = plot.im2col_picture(image, patch=(2, 1))
    image_ax, matrix_ax = image_axes(fig)
    np.testing.assert_array_equal(image_ax.images[0].get_array(), image)
    rows = np.asarray(matrix_ax.images[0].get_array())
    assert rows.shape == (3 * 4, 9)
    np.testing.assert_array_equal(rows, plot.im2col_rows(image))
    # the framed patch: top-left pixel (2, 1); the framed row: 2 * 4 + 1 = 9, the same values
    (patch_frame,) = [p for p in image_ax.patches if isinstance(p, Rectangle)]
    assert (patch_frame.get_x(), patch_frame.get_y()) == (0.5, 1.5)
    assert (patch_frame.get_width(), patch_frame.get_height()) == (3, 3)
    (row_frame,) = [p for p in matrix_ax.patches if isinstance(p, Rectangle)]
    assert (row_frame.get_y(), row_frame.get_width(), row_frame.get_height()) == (8.5, 9, 1)
    np.testing.assert_array_equal(rows[9], image[2:5, 1:4].ravel())
    assert matrix_ax.get_title().startswith("patch matrix (12 patches x 9): row 9 = that patch")
    assert "9 = 2 * 4 + 1" in matrix_ax.get_title()
    assert sorted(t.get_text() for t in image_ax.texts) == sorted(str(v) for v in range(30))
    # the default example: 0..24, the patch at (1, 1) is row 4
    default = plot.im2col_picture()
    assert "row 4 = that patch" in image_axes(default)[1].get_title()
    with pytest.raises(ValueError, match="3 to 8 pixels a side"):
        plot.im2col_picture(np.zeros((28, 28)))
    with pytest.raises(ValueError, match=r"patch \(3, 0\) does not fit.*rows 0..2"):
        plot.im2col_picture(image, patch=(3, 0))
    with pytest.raises(ValueError, match=r"patch must be \(row, column\)"):
        plot.im2col_picture(image, patch=(1, 1, 1))


def test_gradient_norms_one_line_per_layer_on_a_log_scale():
    norms = {"conv2d": [0.5, 0.4, 0.3], "dense": [10.0, 9.0, 8.5]}
    fig = plot.gradient_norms(norms)
    (ax,) = fig.axes
    assert [list(line.get_ydata()) for line in ax.get_lines()] == list(norms.values())
    assert [list(line.get_xdata()) for line in ax.get_lines()] == [[1, 2, 3]] * 2
    assert ax.get_yscale() == "log"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["conv2d", "dense"]
    assert ax.get_xlabel() == "training step (batch)"
    assert ax.get_title() == "Gradient norm per layer (log scale)"
    with pytest.raises(ValueError, match="nothing recorded"):
        plot.gradient_norms({"dense": []})
    with pytest.raises(ValueError, match="window must be a whole number"):
        plot.gradient_norms(norms, window=0)


def test_gradient_norms_of_many_steps_draw_a_running_mean_over_the_faint_steps():
    rng = np.random.default_rng(7)
    norms = {"conv2d": list(rng.uniform(0.1, 1.0, 500)), "dense": list(rng.uniform(1, 10, 500))}
    (ax,) = plot.gradient_norms(norms).axes                  # 500 steps: windows of 10
    lines = ax.get_lines()
    assert len(lines) == 4                                   # each layer: faint steps, bold mean
    faint, bold = lines[0], lines[1]
    assert list(faint.get_ydata()) == norms["conv2d"] and faint.get_alpha() < 1
    expected = [np.mean(norms["conv2d"][i:i + 10]) for i in range(491)]
    np.testing.assert_allclose(bold.get_ydata(), expected)
    assert list(bold.get_xdata()) == list(range(10, 501))   # each mean drawn at its window's last step
    assert faint.get_color() == bold.get_color()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["conv2d", "dense"]
    assert "mean of 10 steps" in ax.get_title()
    with pytest.raises(ValueError, match="expected a GradientNorms"):
        plot.gradient_norms([1.0, 2.0])


def test_gradient_norms_from_the_callback_use_its_steps():
    from tinycnn.callbacks import GradientNorms
    model = tiny_cnn()
    x = np.random.default_rng(6).uniform(size=(40, 12, 12, 1)).astype("float32")
    y = np.arange(40) % 10
    recorder = GradientNorms(every=2)
    model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[recorder])
    (ax,) = plot.gradient_norms(recorder).axes
    assert [line.get_label() for line in ax.get_lines()] == \
        [model.layers[i].name for i in (0, 2, 5)]            # the two convs and the dense layer
    assert list(ax.get_lines()[0].get_xdata()) == [1, 3, 5, 7, 9]
    assert list(ax.get_lines()[2].get_ydata()) == recorder.norms[model.layers[5].name]


def test_in_jupyters_inline_backend_a_returned_figure_shows_once(monkeypatch):
    # The inline backend draws every figure still open in pyplot when a cell ends, and the
    # cell's returned Figure draws again: there a figure leaves pyplot, yet renders and saves.
    import io
    import matplotlib.pyplot as plt
    fig = plot.performance([0.9, 0.91])
    assert plt.fignum_exists(fig.number)               # elsewhere pyplot keeps it, for show()
    monkeypatch.setattr(plot, "_pyplot_shows_every_figure_after_each_cell", lambda: True)
    fig = plot.performance([0.9, 0.91])
    assert fig not in [plt.figure(number) for number in plt.get_fignums()]
    png = io.BytesIO()
    fig.savefig(png, format="png")
    assert png.getvalue()[:8] == PNG_MAGIC


def test_the_inline_backend_is_recognised_by_its_name(monkeypatch):
    import matplotlib
    monkeypatch.setattr(matplotlib, "get_backend", lambda: "module://matplotlib_inline.backend_inline")
    assert plot._pyplot_shows_every_figure_after_each_cell()
    monkeypatch.setattr(matplotlib, "get_backend", lambda: "agg")
    assert not plot._pyplot_shows_every_figure_after_each_cell()


def test_class_names_are_the_datasets():
    from tinycnn.datasets import CLASS_NAMES
    assert tuple(plot.CLASS_NAMES) == tuple(CLASS_NAMES)
