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


def test_filters_one_panel_per_first_layer_filter():
    model = tiny_cnn()
    fig = plot.filters(model)
    shown = image_axes(fig)
    kernel = model.layers[0].get_weights()[0]
    assert len(shown) == kernel.shape[-1] == 6
    np.testing.assert_allclose(shown[5].images[0].get_array(), kernel[:, :, 0, 5])


def test_class_names_are_the_datasets():
    from tinycnn.datasets import CLASS_NAMES
    assert tuple(plot.CLASS_NAMES) == tuple(CLASS_NAMES)
