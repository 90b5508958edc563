"""tinycnn.utils: to_categorical (as Keras's, but strict about bad labels), the seed, floatx."""
import numpy as np
import pytest

from tinycnn import utils
from tinycnn.utils import to_categorical


def one_hot_by_hand(labels, num_classes):
    """Reference one-hot: row i of the identity matrix for label i."""
    return np.eye(num_classes, dtype=np.float32)[np.asarray(labels, dtype=np.int64)]


# ---------------------------------------------------------------------------
# to_categorical
# ---------------------------------------------------------------------------
def test_matches_the_identity_matrix_rows():
    labels = np.random.default_rng(0).integers(0, 10, size=500)
    got = to_categorical(labels, 10)
    assert got.shape == (500, 10) and got.dtype == np.float32
    np.testing.assert_array_equal(got, one_hot_by_hand(labels, 10))
    np.testing.assert_array_equal(got.argmax(axis=1), labels)


def test_num_classes_defaults_to_the_largest_label_plus_one():
    assert to_categorical([0, 3, 1]).shape == (3, 4)
    np.testing.assert_array_equal(to_categorical([2, 0]), [[0, 0, 1], [1, 0, 0]])


def test_a_larger_num_classes_adds_empty_columns():
    got = to_categorical([1, 0], num_classes=5)
    np.testing.assert_array_equal(got, one_hot_by_hand([1, 0], 5))
    assert got[:, 2:].sum() == 0


@pytest.mark.parametrize("shape, expected", [
    ((6, 1), (6, 4)),             # Keras drops a trailing axis of size 1
    ((2, 3), (2, 3, 4)),
    ((2, 3, 1), (2, 3, 4)),
    ((1,), (1, 4)),               # ... but not the only axis
    ((), (4,)),                   # a scalar label gives one row
])
def test_output_shape_is_the_label_shape_plus_classes(shape, expected):
    labels = np.random.default_rng(1).integers(0, 4, size=shape)
    got = to_categorical(labels, 4)
    assert got.shape == expected
    np.testing.assert_array_equal(got.argmax(axis=-1), labels.reshape(expected[:-1]))
    np.testing.assert_array_equal(got.sum(axis=-1), np.ones(expected[:-1]))


@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "uint8"])
def test_dtype_is_honoured(dtype):
    got = to_categorical([2, 1], 3, dtype=dtype)
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got, [[0, 0, 1], [0, 1, 0]])


def test_whole_float_labels_and_other_integer_types_are_accepted():
    expected = one_hot_by_hand([3, 0, 2], 4)
    for labels in (np.array([3.0, 0.0, 2.0]), np.array([3, 0, 2], dtype=np.uint8),
                   np.array([3, 0, 2], dtype=np.int16), [3, 0, 2]):
        np.testing.assert_array_equal(to_categorical(labels, 4), expected)


def test_empty_labels_give_an_empty_array():
    assert to_categorical(np.array([], dtype=np.int64), 3).shape == (0, 3)


def test_the_input_is_not_modified():
    labels = np.array([[1], [2]])
    to_categorical(labels, 3)
    np.testing.assert_array_equal(labels, [[1], [2]])


@pytest.mark.parametrize("labels, words", [
    ([0, -1, 2], "labels must be >= 0, found -1"),
    ([0, 1.5], "whole numbers, found"),
    ([0.0, np.nan], "whole numbers, found"),
    ([np.inf], "whole numbers, found"),
    (np.array([True, False]), "must be integers, got dtype bool"),
    (np.array(["1", "2"]), "must be integers"),
])
def test_bad_labels_are_a_clear_value_error(labels, words):
    with pytest.raises(ValueError, match="to_categorical") as caught:
        to_categorical(labels, 3)
    assert words in str(caught.value)


def test_a_label_out_of_range_names_it_and_the_range():
    with pytest.raises(ValueError) as caught:
        to_categorical([0, 9, 2], num_classes=5)
    assert "label 9" in str(caught.value) and "[0, 4]" in str(caught.value)


@pytest.mark.parametrize("num_classes", [0, -3, 2.5, True, "3"])
def test_a_bad_num_classes_is_a_clear_value_error(num_classes):
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        to_categorical([0, 1], num_classes=num_classes)


# ---------------------------------------------------------------------------
# set_random_seed, get_rng
# ---------------------------------------------------------------------------
@pytest.fixture
def restore_randomness(monkeypatch):
    """Put the library's Generator and NumPy's legacy state back after the test."""
    monkeypatch.setattr(utils, "_rng", utils._rng)
    legacy_state = np.random.get_state()
    yield
    np.random.set_state(legacy_state)


def draws():
    """Draws from both sources of randomness set_random_seed controls."""
    return utils.get_rng().random(4), utils.get_rng().integers(0, 1000, 3), np.random.rand(2)


def test_the_same_seed_gives_the_same_draws(restore_randomness):
    utils.set_random_seed(1234)
    first = draws()
    utils.set_random_seed(1234)
    second = draws()
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_different_seeds_give_different_draws(restore_randomness):
    utils.set_random_seed(1)
    first = draws()
    utils.set_random_seed(2)
    second = draws()
    assert not np.array_equal(first[0], second[0])
    assert not np.array_equal(first[2], second[2])


def test_the_generator_is_numpys_default_rng_with_that_seed(restore_randomness):
    utils.set_random_seed(7)
    np.testing.assert_array_equal(utils.get_rng().random(5), np.random.default_rng(7).random(5))


def test_seeds_beyond_32_bits_work(restore_randomness):
    utils.set_random_seed(2**40 + 3)
    first = utils.get_rng().random(3)
    utils.set_random_seed(np.int64(2**40 + 3))
    np.testing.assert_array_equal(utils.get_rng().random(3), first)


@pytest.mark.parametrize("seed", [-1, True, 1.0, "1", None])
def test_a_bad_seed_is_a_clear_value_error(restore_randomness, seed):
    before = utils.get_rng()
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        utils.set_random_seed(seed)
    assert utils.get_rng() is before


# ---------------------------------------------------------------------------
# floatx
# ---------------------------------------------------------------------------
def test_floatx_defaults_to_float32_and_can_be_set(monkeypatch):
    monkeypatch.setattr(utils, "_floatx", utils._floatx)
    assert utils.floatx() == "float32"
    utils.set_floatx(np.float64)
    assert utils.floatx() == "float64"
    with pytest.raises(ValueError, match="'float32' or 'float64'"):
        utils.set_floatx("float16")
    assert utils.floatx() == "float64"


# ---------------------------------------------------------------------------
# BLAS threads during training
# ---------------------------------------------------------------------------
def test_set_num_threads_rejects_bad_counts_and_env_is_read(monkeypatch):
    from tinycnn import utils
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="positive integer or None"):
            utils.set_num_threads(bad)
    monkeypatch.setattr(utils, "_num_threads", None)
    monkeypatch.setenv("TINYCNN_NUM_THREADS", "1")
    assert utils.get_num_threads() == 1
    monkeypatch.setenv("TINYCNN_NUM_THREADS", "two")
    with pytest.raises(ValueError, match="TINYCNN_NUM_THREADS"):
        utils.get_num_threads()
    monkeypatch.delenv("TINYCNN_NUM_THREADS")
    monkeypatch.setattr(utils, "_usable_cores", lambda: 8)
    assert utils.get_num_threads() == 2                  # default: two threads where there are cores
    monkeypatch.setattr(utils, "_usable_cores", lambda: 1)
    assert utils.get_num_threads() == 1                  # and one on a single core
    utils.set_num_threads(3)
    assert utils.get_num_threads() == 3
    utils.set_num_threads(None)
    assert utils.get_num_threads() == 1


def test_blas_threads_sets_openblas_inside_and_restores_it_after():
    from tinycnn.engines.fast import parallel as utils
    functions = utils._openblas_thread_functions()
    assert functions is not None, "NumPy's wheels ship OpenBLAS: its thread functions should be found"
    set_threads, get_threads = functions
    set_threads(2)
    try:
        with utils.blas_threads():
            assert get_threads() == 1                # tinycnn's own threads share the work
        assert get_threads() == 2
        with utils.blas_threads(2):
            assert get_threads() == 2
        with pytest.raises(RuntimeError):
            with utils.blas_threads():
                raise RuntimeError("boom")
        assert get_threads() == 2                    # restored on the way out of an error too
    finally:
        set_threads(2)


@pytest.mark.parametrize("threads", [1, 2])
def test_fast_fit_and_predict_run_one_blas_thread_and_give_numpy_its_setting_back(monkeypatch, threads):
    from tinycnn import callbacks, layers, models, utils
    from tinycnn.engines.fast import parallel
    set_threads, get_threads = parallel._openblas_thread_functions()
    seen = []

    class Spy(callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(get_threads())

    utils.set_random_seed(0)
    model = models.Sequential([layers.Dense(4, activation="softmax", input_shape=(3,))])
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"], engine="fast")
    x, y = np.random.default_rng(0).random((20, 3)).astype("float32"), np.arange(20) % 4
    set_threads(2)
    try:
        monkeypatch.setenv("TINYCNN_NUM_THREADS", str(threads))
        model.fit(x, y, epochs=1, verbose=0, callbacks=[Spy()])
        assert seen == [1]
        assert get_threads() == 2                    # NumPy's own setting is back after fit
        model.predict(x, verbose=0)
        assert get_threads() == 2
    finally:
        set_threads(2)


# ---------------------------------------------------------------------------
# atomic_write
# ---------------------------------------------------------------------------
def test_atomic_write_replaces_whole_or_leaves_the_old_file(tmp_path):
    import os
    from tinycnn.utils import atomic_write
    path = tmp_path / "file.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(path, "w") as file:
            file.write("half of the new")
            raise RuntimeError("crash while writing")
    assert path.read_text() == "old"                              # untouched
    assert sorted(os.listdir(tmp_path)) == ["file.txt"]           # no temporary file left
    with atomic_write(path, "w") as file:
        file.write("new")
    assert path.read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["file.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert (path.stat().st_mode & 0o777) == (0o666 & ~umask)    # the usual mode, not mkstemp's 0600


def test_only_stale_temporary_files_of_the_same_naming_are_removed(tmp_path):
    import os
    import subprocess
    import sys
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
    gone = int(finished.stdout)                     # the PID of a process that has ended
    alive = os.getpid()

    def left_behind(name, pid, age_s):
        path = tmp_path / name.format(pid=pid)
        path.write_bytes(b"half")
        then = path.stat().st_mtime - age_s
        os.utime(path, (then, then))
        return path.name

    stale = left_behind(".model.npz.{pid}.abcd1234.tmp", gone, 3600)
    kept = [left_behind(".model.npz.{pid}.efgh5678.tmp", alive, 3600),       # its writer runs
            left_behind(".model.npz.{pid}.ijkl9012.tmp", gone, 5),           # written just now
            left_behind(".other.npz.{pid}.mnop3456.tmp", gone, 3600),        # another file's
            left_behind("model.npz.{pid}.qrst7890.tmp", gone, 3600),         # not our naming
            left_behind(".model.npz.{pid}.uvwx1234.tmp.bak", gone, 3600)]
    assert utils.remove_interrupted_writes(tmp_path / "model.npz") == [stale]
    assert sorted(os.listdir(tmp_path)) == sorted(kept)
    with utils.atomic_write(tmp_path / "other.npz") as file:                 # a write clears too
        file.write(b"new")
    assert sorted(os.listdir(tmp_path)) == sorted([name for name in kept if ".other." not in name]
                                                  + ["other.npz"])
