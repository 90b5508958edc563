"""KFold against scikit-learn's rule (written out here on its own), and cross_validate."""
import json

import numpy as np
import pytest

from tinycnn.model_selection import KFold, cross_validate, grid_search


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
try:
    import cloudpickle
except ImportError:
    cloudpickle = None

# make_model_fn's closures reach worker processes only through cloudpickle (the extra).
needs_cloudpickle = pytest.mark.skipif(
    cloudpickle is None,
    reason='cloudpickle is not installed: pip install -e ".[dev,distributed]" to send closures to workers')


def make_model_fn(misbehave_on_fold=None, how=None, folder=None, random_state=1):
    """A tiny model_fn, small enough to train 3 folds in well under a second.

    It is a closure, which cloudpickle sends whole: Dask's workers need not import this file.
    For fold `misbehave_on_fold` (it knows its fold by the seed cross_validate set for it,
    random_state + fold - 1), `how` is "raise" (a ValueError), "die" (it kills its own
    process, every time) or "die once" (only the first time: a marker file in `folder`).
    With `folder`, every call leaves a file call-FOLD-PID-N there.
    """
    def build(learning_rate=0.05, filters=4):
        import os
        import signal
        import time
        from tinycnn.layers import Conv2D, Dense, Flatten, MaxPooling2D
        from tinycnn.models import Sequential
        from tinycnn.optimizers import SGD
        from tinycnn.utils import get_rng

        fold = get_rng().bit_generator.seed_seq.entropy - random_state + 1
        if folder is not None:
            open(os.path.join(folder, f"call-{fold}-{os.getpid()}-{time.time_ns()}"), "w").close()
        if fold == misbehave_on_fold:
            if how == "raise":
                raise ValueError(f"deliberately broken for fold {fold}")
            if how == "die" or (how == "die once" and _first_time(os.path.join(folder, "died"))):
                os.kill(os.getpid(), signal.SIGKILL)
        model = Sequential([
            Conv2D(filters, (3, 3), activation="relu", kernel_initializer="he_uniform",
                   input_shape=(8, 8, 1)),
            MaxPooling2D((2, 2)),
            Flatten(),
            Dense(3, activation="softmax"),
        ])
        model.compile(optimizer=SGD(learning_rate=learning_rate, momentum=0.9),
                      loss="categorical_crossentropy", metrics=["accuracy"])
        return model

    def _first_time(marker):
        import os
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return False
        return True

    return build


tiny_model = make_model_fn()


def tiny_data(n=90, contrast=0.8):
    """Three classes told apart by where a bright square is: learnable in one epoch
    (with a low contrast, not perfectly: the folds' scores differ)."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=n)
    x = rng.uniform(0, 0.2 + 0.8 - contrast, size=(n, 8, 8, 1)).astype("float32")
    for i, label in enumerate(labels):
        x[i, 2 * label:2 * label + 3, 2:5, 0] += contrast
    y = np.eye(3, dtype="float32")[labels]
    return x, y


def calls(folder, fold):
    """How many times model_fn was called for `fold` (make_model_fn's files)."""
    return sum(1 for path in folder.iterdir() if path.name.startswith(f"call-{fold}-"))


def processes_left(folder):
    """The processes that called model_fn (make_model_fn's files) and still run."""
    pids = {int(path.name.split("-")[2]) for path in folder.glob("call-*")}
    assert pids
    return [pid for pid in pids if _alive(pid)]


def assert_same_folds(result, reference):
    """result's folds have the scores and histories of the same folds in reference."""
    by_fold = dict(zip(reference.fold_numbers, zip(reference.scores, reference.histories)))
    assert result.fold_numbers, "no fold finished"
    for number, score, history in zip(result.fold_numbers, result.scores, result.histories):
        assert score == by_fold[number][0], f"fold {number}"
        assert history.history == by_fold[number][1].history, f"fold {number}"


def test_cross_validate_prints_each_fold_and_returns_scores_and_histories(capsys):
    x, y = tiny_data()
    result = cross_validate(tiny_model, x, y, n_splits=3, epochs=2, batch_size=8, verbose=1)
    printed = capsys.readouterr().out.strip().splitlines()
    fold_lines = [line for line in printed if line.startswith("> ")]
    assert fold_lines == ["> %.3f" % (s * 100) for s in result.scores]
    progress = [line.split()[:3] for line in printed if line.strip().startswith("[")]
    assert progress == [["[1/3]", "fold", "1"], ["[2/3]", "fold", "2"], ["[3/3]", "fold", "3"]]
    assert len(result.scores) == len(result.histories) == len(result.folds) == 3
    assert result.fold_numbers == [1, 2, 3] and not result.partial and not result.interrupted
    for score, history in zip(result.scores, result.histories):
        assert 0.0 <= score <= 1.0
        assert set(history.history) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
        assert len(history.history["loss"]) == 2
        # the score is the accuracy on the fold's own test part, which is the validation data
        assert score == pytest.approx(history.history["val_accuracy"][-1], abs=1e-6)
    scores, histories = result        # the tutorial's unpacking
    assert scores == result.scores
    assert result.mean == pytest.approx(np.mean(scores))


@needs_cloudpickle
def test_every_local_executor_gives_identical_scores_and_histories():
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

    from tinycnn.utils import get_num_threads, set_num_threads

    x, y = tiny_data(240, contrast=0.3)
    model_fn = make_model_fn()          # a closure: sent whole to the processes by cloudpickle
    set_num_threads(2)                  # the caller's setting: each fold trains in one thread anyway
    try:
        serial = cross_validate(model_fn, x, y, n_splits=3, epochs=1, batch_size=8, verbose=0)
        assert get_num_threads() == 2
    finally:
        set_num_threads(None)
    assert len(set(serial.scores)) > 1              # folds that differ: a comparison that can fail
    spawn = multiprocessing.get_context("spawn")   # fresh interpreters, unlike n_jobs's forks
    with ProcessPoolExecutor(2, mp_context=spawn) as processes, ThreadPoolExecutor(2) as threads:
        others = {
            "n_jobs=2": cross_validate(model_fn, x, y, n_splits=3, epochs=1, batch_size=8,
                                       n_jobs=2, verbose=0),
            "ProcessPoolExecutor": cross_validate(model_fn, x, y, n_splits=3, epochs=1,
                                                  batch_size=8, executor=processes, verbose=0),
            "ThreadPoolExecutor": cross_validate(model_fn, x, y, n_splits=3, epochs=1,
                                                 batch_size=8, executor=threads, verbose=0),
        }
    again = cross_validate(model_fn, x, y, n_splits=3, epochs=1, batch_size=8, verbose=0)
    for name, result in [("again", again)] + list(others.items()):
        assert result.scores == serial.scores, name
        assert [h.history for h in result.histories] == [h.history for h in serial.histories], name
        assert result.fold_numbers == [1, 2, 3] and not result.partial, name
    assert others["n_jobs=2"].where == "2 local processes"
    # the data went once to processes, not at all to threads; a job is far smaller than the data
    assert serial.data_bytes == others["ThreadPoolExecutor"].data_bytes == 0
    for name in ("n_jobs=2", "ProcessPoolExecutor"):
        assert others[name].data_bytes == x.nbytes + y.nbytes
        assert 0 < others[name].job_bytes < others[name].data_bytes


def test_dask_cluster_gives_the_same_scores_and_histories(dask_client, capsys):
    x, y = tiny_data(240, contrast=0.3)
    model_fn = make_model_fn()
    serial = cross_validate(model_fn, x, y, n_splits=3, epochs=1, batch_size=8, verbose=0)
    with_client = cross_validate(model_fn, x, y, n_splits=3, epochs=1, batch_size=8,
                                 executor=dask_client, verbose=1)
    printed = capsys.readouterr().out
    with_executor = cross_validate(model_fn, x, y, n_splits=3, epochs=1, batch_size=8,
                                   executor=dask_client.get_executor(), verbose=0)
    for result in (with_client, with_executor):
        assert result.scores == serial.scores
        assert [h.history for h in result.histories] == [h.history for h in serial.histories]
        assert result.data_bytes == x.nbytes + y.nbytes
        assert result.where.startswith("the Dask cluster at tcp://127.0.0.1:")
    assert sorted(line for line in printed.splitlines() if line.startswith("> ")) == \
        sorted("> %.3f" % (s * 100) for s in serial.scores)
    assert "sent x and y once" in printed


SCRIPT_HEADER = '''
import json, os, sys, time
import json

import numpy as np
from tinycnn.model_selection import cross_validate

rng = np.random.default_rng(0)
labels = rng.integers(0, 3, size=120)
x = rng.uniform(0, 0.5, size=(120, 8, 8, 1)).astype("float32")
for i, label in enumerate(labels):
    x[i, 2 * label:2 * label + 3, 2:5, 0] += 0.3
y = np.eye(3, dtype="float32")[labels]
folder = sys.argv[1]


def tiny_model():
    from tinycnn.layers import Conv2D, Dense, Flatten
    from tinycnn.models import Sequential
    from tinycnn.optimizers import SGD
    model = Sequential([Conv2D(4, (3, 3), activation="relu", input_shape=(8, 8, 1)), Flatten(),
                        Dense(3, activation="softmax")])
    model.compile(optimizer=SGD(learning_rate=0.05, momentum=0.9),
                  loss="categorical_crossentropy", metrics=["accuracy"])
    return model
'''


def run_script(tmp_path, body, *, interrupt_after_first_fold=False):
    """Run SCRIPT_HEADER + body as a script (its own __main__) in a fresh Python, its
    temporary files in tmp_path/tmp; optionally Ctrl-C it (its whole process group, as a
    terminal does) once it has printed a fold's score. Returns (stdout, stderr, exit status)."""
    import os
    import signal
    import subprocess
    import sys
    import threading

    (tmp_path / "tmp").mkdir()
    script = tmp_path / "script.py"
    script.write_text(SCRIPT_HEADER + body)
    env = dict(os.environ, TMPDIR=str(tmp_path / "tmp"))
    process = subprocess.Popen([sys.executable, str(script), str(tmp_path)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    watchdog = threading.Timer(120, process.kill)          # a hung script fails, never hangs the suite
    watchdog.start()
    try:
        lines = []
        if interrupt_after_first_fold:
            for line in process.stdout:
                lines.append(line)
                if line.startswith("> "):
                    os.killpg(process.pid, signal.SIGINT)
                    break
        out, err = process.communicate()
    finally:
        watchdog.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()
    return "".join(lines) + out, err, process.returncode


def test_a_model_fn_defined_in_the_running_script_trains_in_worker_processes(tmp_path):
    # The script has no `if __name__ == "__main__":`: the workers must never run it again.
    out, err, status = run_script(tmp_path, '''
serial = cross_validate(tiny_model, x, y, n_splits=3, epochs=1, batch_size=8, verbose=0)
parallel = cross_validate(tiny_model, x, y, n_splits=3, epochs=1, batch_size=8, n_jobs=2, verbose=0)
print(json.dumps({"where": parallel.where, "same": serial.scores == parallel.scores and
                  [h.history for h in serial.histories] == [h.history for h in parallel.histories]}))
''')
    assert status == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report == {"where": "2 local processes", "same": True}
    assert not list((tmp_path / "tmp").iterdir())          # the shared data file is gone


def test_without_cloudpickle_a_lambda_trains_here_with_a_message(monkeypatch, capsys):
    from concurrent.futures import ProcessPoolExecutor

    from tinycnn import executors
    monkeypatch.setattr(executors, "cloudpickle_module", lambda: None)
    x, y = tiny_data(60)
    build = lambda: tiny_model()          # noqa: E731  (plain pickle cannot send a lambda)
    result = cross_validate(build, x, y, n_splits=2, epochs=1, batch_size=8, n_jobs=2)
    assert result.where == "this process" and result.fold_numbers == [1, 2]
    message = capsys.readouterr().err
    assert "without cloudpickle" in message and 'pip install "tinycnn[distributed]"' in message
    assert result.scores == cross_validate(tiny_model, x, y, n_splits=2, epochs=1, batch_size=8,
                                           verbose=0).scores
    with ProcessPoolExecutor(1) as executor:         # an executor asked for: an error, not a fallback
        with pytest.raises(ValueError, match="without cloudpickle"):
            cross_validate(build, x, y, n_splits=2, epochs=1, executor=executor, verbose=0)


@needs_cloudpickle
def test_a_worker_process_killed_mid_fold_is_replaced_and_the_fold_tried_again(tmp_path, capsys):
    x, y = tiny_data(120, contrast=0.3)
    reference = cross_validate(tiny_model, x, y, n_splits=3, epochs=1, batch_size=8, verbose=0)
    dies_once = make_model_fn(misbehave_on_fold=2, how="die once", folder=str(tmp_path))
    result = cross_validate(dies_once, x, y, n_splits=3, epochs=1, batch_size=8, n_jobs=2)
    assert (tmp_path / "died").exists() and calls(tmp_path, 2) == 2     # it did die, then ran again
    assert result.fold_numbers == [1, 2, 3] and not result.partial
    assert_same_folds(result, reference)
    assert "fold 2: its worker process died" in capsys.readouterr().err
    assert processes_left(tmp_path) == []


@needs_cloudpickle
def test_a_fold_whose_worker_dies_twice_is_reported_missing(tmp_path, capsys):
    x, y = tiny_data(120, contrast=0.3)
    reference = cross_validate(tiny_model, x, y, n_splits=3, epochs=1, batch_size=8, verbose=0)
    always_dies = make_model_fn(misbehave_on_fold=2, how="die", folder=str(tmp_path))
    result = cross_validate(always_dies, x, y, n_splits=3, epochs=1, batch_size=8, n_jobs=2)
    assert calls(tmp_path, 2) == 2                            # tried once more, not forever
    assert result.partial and not result.interrupted
    assert result.fold_numbers == [1, 3] and list(result.missing) == [2]
    assert "died twice" in result.missing[2]
    assert_same_folds(result, reference)
    assert "no score for fold 2" in capsys.readouterr().err
    assert processes_left(tmp_path) == []


@needs_cloudpickle
def test_a_process_pool_of_your_own_broken_by_a_dead_worker_loses_no_fold_silently(tmp_path):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    x, y = tiny_data(120)
    always_dies = make_model_fn(misbehave_on_fold=2, how="die", folder=str(tmp_path))
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as executor:
        result = cross_validate(always_dies, x, y, n_splits=3, epochs=1, batch_size=8,
                                executor=executor, verbose=0)
    assert result.fold_numbers == [1]              # fold 1 finished before fold 2 broke the pool
    assert sorted(result.missing) == [2, 3]
    assert all(problem.startswith("lost") for problem in result.missing.values())


def test_dask_moves_the_fold_of_a_killed_worker_to_another(fresh_dask_client, tmp_path):
    x, y = tiny_data(120, contrast=0.3)
    reference = cross_validate(tiny_model, x, y, n_splits=3, epochs=1, batch_size=8, verbose=0)
    dies_once = make_model_fn(misbehave_on_fold=2, how="die once", folder=str(tmp_path))
    result = cross_validate(dies_once, x, y, n_splits=3, epochs=1, batch_size=8,
                            executor=fresh_dask_client, verbose=0)
    assert (tmp_path / "died").exists() and calls(tmp_path, 2) == 2, sorted(p.name for p in tmp_path.iterdir())
    assert result.fold_numbers == [1, 2, 3] and not result.partial
    assert_same_folds(result, reference)


@pytest.mark.parametrize("n_jobs", [1, pytest.param(2, marks=needs_cloudpickle)])
def test_a_fold_that_raises_is_reported_with_its_number_and_traceback(n_jobs, capsys):
    x, y = tiny_data(120, contrast=0.3)
    reference = cross_validate(tiny_model, x, y, n_splits=3, epochs=1, batch_size=8, verbose=0)
    broken = make_model_fn(misbehave_on_fold=2, how="raise")
    result = cross_validate(broken, x, y, n_splits=3, epochs=1, batch_size=8, n_jobs=n_jobs)
    assert result.fold_numbers == [1, 3] and list(result.missing) == [2] and result.partial
    assert result.missing[2].startswith("Traceback")
    assert "ValueError: deliberately broken for fold 2" in result.missing[2]
    assert_same_folds(result, reference)
    err = capsys.readouterr().err
    assert "fold 2 has no score" in err and "deliberately broken for fold 2" in err
    assert result.mean == pytest.approx(np.mean(result.scores))


def broken_model():
    raise ValueError("deliberately broken model_fn")


def test_a_model_fn_that_always_fails_raises_with_its_error():
    x, y = tiny_data(20)
    with pytest.raises(RuntimeError, match="no fold finished; fold 1: Traceback") as error:
        cross_validate(broken_model, x, y, n_splits=2, epochs=1, n_jobs=2, verbose=0)
    assert "deliberately broken model_fn" in str(error.value)


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_ctrl_c_cancels_the_other_folds_and_returns_the_finished_one(tmp_path, n_jobs):
    # Every fold after the first sleeps in model_fn: it is still running (or waiting) when
    # Ctrl-C comes, right after the first fold's score.
    out, err, status = run_script(tmp_path, f'''
def define_model():
    open(os.path.join(folder, f"pid-{{os.getpid()}}"), "w").close()
    try:
        os.close(os.open(os.path.join(folder, "first"), os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        time.sleep(100)
    return tiny_model()

result = cross_validate(define_model, x, y, n_splits=4, epochs=1, batch_size=8, n_jobs={n_jobs})
print(json.dumps({{"interrupted": result.interrupted, "partial": result.partial,
                  "finished": result.fold_numbers, "missing": result.missing}}))
''', interrupt_after_first_fold=True)
    assert status == 0, err                       # cross_validate returned: the script went on
    report = json.loads(out.strip().splitlines()[-1])
    assert report["interrupted"] and report["partial"]
    assert len(report["finished"]) == 1
    assert sorted(int(n) for n in report["missing"]) == sorted({1, 2, 3, 4} - set(report["finished"]))
    assert set(report["missing"].values()) == {"cancelled"}
    assert "interrupted" in err
    pids = [int(path.name.split("-")[1]) for path in tmp_path.glob("pid-*")]
    assert pids and not [pid for pid in pids if _alive(pid)]       # no worker left behind
    assert not list((tmp_path / "tmp").iterdir())                   # no temporary file either


def _alive(pid):
    """True if process `pid` runs (a zombie, dead but not yet waited for, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@needs_cloudpickle
def test_local_processes_leave_no_temporary_file(tmp_path, monkeypatch):
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    x, y = tiny_data(60)
    cross_validate(tiny_model, x, y, n_splits=2, epochs=1, batch_size=8, n_jobs=2, verbose=0)
    cross_validate(make_model_fn(misbehave_on_fold=1, how="raise"), x, y, n_splits=2, epochs=1,
                   batch_size=8, n_jobs=2, verbose=0)
    assert list(tmp_path.iterdir()) == []


def test_cross_validate_rejects_bad_input():
    x, y = tiny_data(12)
    with pytest.raises(ValueError, match="same number of samples"):
        cross_validate(tiny_model, x, y[:5], n_splits=2)
    with pytest.raises(ValueError, match="n_jobs"):
        cross_validate(tiny_model, x, y, n_splits=2, n_jobs=0)
    with pytest.raises(ValueError, match="not both"):
        cross_validate(tiny_model, x, y, n_splits=2, n_jobs=2, executor=object())
    with pytest.raises(ValueError, match="concurrent.futures.Executor"):
        cross_validate(tiny_model, x, y, n_splits=2, executor=object())


# ---------------------------------------------------------------------------
# grid_search
# ---------------------------------------------------------------------------
@needs_cloudpickle
def test_grid_search_cross_validates_every_point_like_cross_validate(tmp_path, capsys):
    x, y = tiny_data(120, contrast=0.3)
    model_fn = make_model_fn()
    grid = {"learning_rate": [0.05, 0.005], "batch_size": [8, 16]}
    result = grid_search(model_fn, grid, x, y, n_splits=2, epochs=1, n_jobs=2)
    assert result.params == [{"learning_rate": 0.05, "batch_size": 8},
                             {"learning_rate": 0.05, "batch_size": 16},
                             {"learning_rate": 0.005, "batch_size": 8},
                             {"learning_rate": 0.005, "batch_size": 16}]
    for params, point in zip(result.params, result.results):
        alone = cross_validate(lambda: model_fn(learning_rate=params["learning_rate"]), x, y,
                               n_splits=2, epochs=1, batch_size=params["batch_size"], verbose=0)
        assert point.scores == alone.scores, params
        assert [h.history for h in point.histories] == [h.history for h in alone.histories]
    assert len({tuple(point.scores) for point in result.results}) > 1    # the settings matter
    means = [point.mean for point in result.results]
    assert result.best_params == result.params[int(np.argmax(means))]
    assert result.results[0].data_bytes == x.nbytes + y.nbytes           # once for the whole grid

    rows = json.loads(result.to_json(tmp_path / "grid.json"))["rows"]
    assert rows == json.loads((tmp_path / "grid.json").read_text())["rows"]
    assert [(row["learning_rate"], row["batch_size"], row["mean"]) for row in rows] == \
        [(p["learning_rate"], p["batch_size"], m) for p, m in zip(result.params, means)]
    assert all(row["missing"] == [] and row["fold_numbers"] == [1, 2] for row in rows)
    printed = capsys.readouterr().out
    assert "learning_rate=0.005, batch_size=16: mean=" in printed
    assert str(result).splitlines()[0].split() == ["learning_rate", "batch_size", "mean", "%",
                                                   "std", "%", "folds"]

    figure = result.plot(save=tmp_path / "grid.png")
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == \
        ["learning_rate=0.05\nbatch_size=8", "learning_rate=0.05\nbatch_size=16",
         "learning_rate=0.005\nbatch_size=8", "learning_rate=0.005\nbatch_size=16"]
    assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_grid_search_goes_on_past_a_point_that_fails():
    x, y = tiny_data(60)
    model_fn = make_model_fn()
    result = grid_search(model_fn, {"filters": [4, -1]}, x, y, n_splits=2, epochs=1,
                         batch_size=8, verbose=0)
    good, bad = result.results
    assert good.fold_numbers == [1, 2] and not good.partial
    assert bad.scores == [] and sorted(bad.missing) == [1, 2] and bad.partial
    assert result.best_params == {"filters": 4}
    assert json.loads(result.to_json())["rows"][1]["missing"] == [1, 2]


@pytest.mark.parametrize("grid, message", [
    ({}, "non-empty dict"),
    ({"learning_rate": []}, "non-empty list"),
    ({"learning_rate": "0.01"}, "non-empty list"),
    ({"not a name": [1]}, "keyword argument name"),
])
def test_grid_search_rejects_a_bad_grid(grid, message):
    x, y = tiny_data(12)
    with pytest.raises(ValueError, match=message):
        grid_search(tiny_model, grid, x, y, n_splits=2)
