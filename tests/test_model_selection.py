"""KFold against scikit-learn's rule (written out here on its own), and cross_validate."""
import numpy as np
import pytest

from tinycnn.model_selection import KFold, cross_validate


def sklearn_rule_folds(n, k, shuffle, random_state):
    """scikit-learn's KFold, restated: returns the list of test-index sets.

    Sizes: the first n % k folds have n // k + 1 samples, the rest n // k.
    Order: fold i is the i-th contiguous run of the index list, which is
    np.arange(n) shuffled in place by np.random.RandomState(random_state) when shuffle.
    """
    order = list(range(n))
    if shuffle:
        rs = np.random.RandomState(random_state)
        order = np.arange(n)
        rs.shuffle(order)
        order = list(order)
    sizes = [n // k + (1 if i < n % k else 0) for i in range(k)]
    folds, position = [], 0
    for size in sizes:
        folds.append(sorted(order[position:position + size]))
        position += size
    return folds


@pytest.mark.parametrize("n, k", [(10, 2), (10, 3), (17, 5), (5, 5), (103, 7)])
@pytest.mark.parametrize("shuffle, random_state", [(False, None), (True, 1), (True, 12345)])
def test_kfold_partitions_and_matches_sklearn_rule(n, k, shuffle, random_state):
    x = np.zeros((n, 3))
    splits = list(KFold(k, shuffle=shuffle, random_state=random_state).split(x))
    assert len(splits) == k == KFold(k).get_n_splits()
    expected = sklearn_rule_folds(n, k, shuffle, random_state)
    seen_in_test = []
    for (train, test), expected_test in zip(splits, expected):
        assert test.tolist() == expected_test
        # train and test are disjoint and together cover every sample
        assert not set(train) & set(test)
        assert sorted(set(train) | set(test)) == list(range(n))
        assert np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)   # sorted, as sklearn
        seen_in_test.extend(test.tolist())
    assert sorted(seen_in_test) == list(range(n))     # every sample is tested exactly once


def test_kfold_without_shuffle_is_contiguous_with_larger_first_folds():
    splits = list(KFold(3).split(np.arange(11)))
    assert [t.tolist() for _, t in splits] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]


def test_kfold_shuffle_with_int_seed_is_repeatable_and_seed_dependent():
    a = [t.tolist() for _, t in KFold(4, shuffle=True, random_state=3).split(range(40))]
    b = [t.tolist() for _, t in KFold(4, shuffle=True, random_state=3).split(range(40))]
    c = [t.tolist() for _, t in KFold(4, shuffle=True, random_state=4).split(range(40))]
    assert a == b
    assert a != c


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_splits=1), "n_splits=2 or more"),
    (dict(n_splits=2.5), "integer"),
    (dict(n_splits=3, random_state=1), "shuffle is False"),
])
def test_kfold_bad_settings_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        KFold(**kwargs)


def test_kfold_more_splits_than_samples_raises():
    with pytest.raises(ValueError, match="greater than the number of samples"):
        list(KFold(6).split(np.zeros(5)))


# ---------------------------------------------------------------------------
# cross_validate on a tiny model and tiny data (a few seconds)
# ---------------------------------------------------------------------------
def tiny_model():
    """A model small enough to train 3 folds in well under a second."""
    from tinycnn.layers import Conv2D, Dense, Flatten, MaxPooling2D
    from tinycnn.models import Sequential
    from tinycnn.optimizers import SGD
    model = Sequential([
        Conv2D(4, (3, 3), activation="relu", kernel_initializer="he_uniform",
               input_shape=(8, 8, 1)),
        MaxPooling2D((2, 2)),
        Flatten(),
        Dense(3, activation="softmax"),
    ])
    model.compile(optimizer=SGD(learning_rate=0.05, momentum=0.9),
                  loss="categorical_crossentropy", metrics=["accuracy"])
    return model


def tiny_data(n=90):
    """Three classes told apart by where a bright square is: learnable in one epoch."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=n)
    x = rng.uniform(0, 0.2, size=(n, 8, 8, 1)).astype("float32")
    for i, label in enumerate(labels):
        x[i, 2 * label:2 * label + 3, 2:5, 0] += 0.8
    y = np.eye(3, dtype="float32")[labels]
    return x, y


def test_cross_validate_prints_each_fold_and_returns_scores_and_histories(capsys):
    x, y = tiny_data()
    result = cross_validate(tiny_model, x, y, n_splits=3, epochs=2, batch_size=8, verbose=1)
    printed = capsys.readouterr().out.strip().splitlines()
    fold_lines = [line for line in printed if line.startswith("> ")]
    assert fold_lines == ["> %.3f" % (s * 100) for s in result.scores]
    assert len(result.scores) == len(result.histories) == len(result.folds) == 3
    for score, history in zip(result.scores, result.histories):
        assert 0.0 <= score <= 1.0
        assert set(history.history) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
        assert len(history.history["loss"]) == 2
        # the score is the accuracy on the fold's own test part, which is the validation data
        assert score == pytest.approx(history.history["val_accuracy"][-1], abs=1e-6)
    scores, histories = result        # the tutorial's unpacking
    assert scores == result.scores
    assert result.mean == pytest.approx(np.mean(scores))


def test_cross_validate_is_repeatable_and_parallel_equals_serial():
    x, y = tiny_data()
    serial = cross_validate(tiny_model, x, y, n_splits=3, epochs=2, batch_size=8, verbose=0)
    again = cross_validate(tiny_model, x, y, n_splits=3, epochs=2, batch_size=8, verbose=0)
    parallel = cross_validate(tiny_model, x, y, n_splits=3, epochs=2, batch_size=8,
                              n_jobs=2, verbose=0)
    assert serial.scores == again.scores
    assert serial.scores == parallel.scores
    for a, b in zip(serial.histories, parallel.histories):
        assert a.history == b.history


def test_a_model_fn_workers_cannot_import_runs_here_serially_only():
    x, y = tiny_data(60)
    build = lambda: tiny_model()          # noqa: E731  (a lambda: workers can't import it)
    result = cross_validate(build, x, y, n_splits=2, epochs=1, batch_size=8, verbose=0)
    assert len(result.scores) == 2 and all(0.0 <= s <= 1.0 for s in result.scores)
    with pytest.raises(ValueError, match="worker processes can import"):
        cross_validate(build, x, y, n_splits=2, epochs=1, n_jobs=2, verbose=0)


def broken_model():
    raise ValueError("deliberately broken model_fn")


def test_a_failing_worker_is_reported_not_hung(capfd):
    x, y = tiny_data(20)
    with pytest.raises(RuntimeError, match="fold 1 failed in its worker process"):
        cross_validate(broken_model, x, y, n_splits=2, epochs=1, n_jobs=2, verbose=0)
    assert "deliberately broken model_fn" in capfd.readouterr().err    # the worker's own error


def test_cross_validate_rejects_bad_input():
    x, y = tiny_data(12)
    with pytest.raises(ValueError, match="same number of samples"):
        cross_validate(tiny_model, x, y[:5], n_splits=2)
    with pytest.raises(ValueError, match="n_jobs"):
        cross_validate(tiny_model, x, y, n_splits=2, n_jobs=0)
