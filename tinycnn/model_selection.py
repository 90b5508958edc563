"""K-fold cross-validation, as the machinelearningmastery Fashion-MNIST tutorial does it.

    >>> from tinycnn.model_selection import KFold, cross_validate
    >>> from tinycnn.zoo import cnn_categorical_model
    >>> result = cross_validate(cnn_categorical_model, x_train, y_train_onehot,
    ...                         n_splits=5, epochs=10, batch_size=32)
    > 91.200
    ...
    >>> result.scores       # one test accuracy per fold, in [0, 1]
    >>> result.histories    # one History per fold (.history has loss/accuracy/val_loss/val_accuracy)

`KFold` follows scikit-learn's `sklearn.model_selection.KFold` to the index, so the
folds here are the folds the tutorial used (for the same data order and random_state).
"""
import importlib
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

import numpy as np


# ---------------------------------------------------------------------------
# KFold: which samples go into which fold
# ---------------------------------------------------------------------------
class KFold:
    """Split n samples into `n_splits` consecutive folds (scikit-learn's rule).

    n_splits: number of folds, at least 2.
    shuffle: shuffle the sample indices once before cutting them into folds.
    random_state: only with shuffle=True. An int seeds `np.random.RandomState(int)`
        (so the folds are the same on every run and equal scikit-learn's);
        None uses NumPy's global RandomState (different folds each run).

    The rule: the first `n % n_splits` folds hold `n // n_splits + 1` samples, the
    others `n // n_splits`. Fold i is a contiguous slice of the (possibly shuffled)
    index list; its training set is every other sample. Both index arrays come out
    sorted ascending, as scikit-learn returns them.
    """

    def __init__(self, n_splits=5, shuffle=False, random_state=None):
        if isinstance(n_splits, bool) or not isinstance(n_splits, (int, np.integer)):
            raise ValueError(f"KFold: n_splits must be an integer, got {n_splits!r}")
        if n_splits < 2:
            raise ValueError(
                f"KFold: k-fold cross-validation needs at least one train/test split; "
                f"set n_splits=2 or more, got n_splits={n_splits}")
        if not isinstance(shuffle, bool):
            raise ValueError(f"KFold: shuffle must be True or False, got {shuffle!r}")
        if not shuffle and random_state is not None:
            raise ValueError(
                "KFold: random_state has no effect since shuffle is False; "
                "pass shuffle=True, or leave random_state=None")
        self.n_splits = int(n_splits)
        self.shuffle = shuffle
        self.random_state = random_state

    def get_n_splits(self, x=None, y=None, groups=None):
        """The number of folds (the arguments are ignored, as in scikit-learn)."""
        return self.n_splits

    def split(self, x, y=None, groups=None):
        """Yield (train_index, test_index) once per fold.

        x: any array of n samples along its first axis (only its length is used).
        Yields two int64 arrays, sorted ascending, that together hold 0..n-1 once each:
            train_index: shape (n - fold_size,)
            test_index:  shape (fold_size,)
        """
        n_samples = len(x)
        if self.n_splits > n_samples:
            raise ValueError(
                f"KFold: cannot have n_splits={self.n_splits} greater than the "
                f"number of samples n_samples={n_samples}; use fewer folds or more data")

        indices = np.arange(n_samples)
        if self.shuffle:
            _random_state(self.random_state).shuffle(indices)

        fold_sizes = np.full(self.n_splits, n_samples // self.n_splits, dtype=np.int64)
        fold_sizes[: n_samples % self.n_splits] += 1

        start = 0
        for fold_size in fold_sizes:
            stop = start + fold_size
            is_test = np.zeros(n_samples, dtype=bool)
            is_test[indices[start:stop]] = True
            train_index = np.flatnonzero(~is_test)
            test_index = np.flatnonzero(is_test)
            yield train_index, test_index
            start = stop

    def __repr__(self):
        return (f"KFold(n_splits={self.n_splits}, shuffle={self.shuffle}, "
                f"random_state={self.random_state!r})")


def _random_state(seed):
    """scikit-learn's check_random_state: None -> the global RandomState, int -> a new one."""
    if seed is None:
        return np.random.mtrand._rand
    if isinstance(seed, np.random.RandomState):
        return seed
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return np.random.RandomState(int(seed))
    raise ValueError(
        f"KFold: random_state must be None, an int or a numpy RandomState, got {seed!r}")


# ---------------------------------------------------------------------------
# cross_validate: one fresh model per fold
# ---------------------------------------------------------------------------
@dataclass
class CVResult:
    """What `cross_validate` returns.

    scores: one test accuracy per fold, in [0, 1] (the tutorial's `scores`).
    histories: one History per fold; `.history` maps 'loss', 'accuracy',
        'val_loss', 'val_accuracy' to one float per epoch.
    folds: (train_index, test_index) of each fold.
    """
    scores: list = field(default_factory=list)
    histories: list = field(default_factory=list)
    folds: list = field(default_factory=list)

    @property
    def mean(self):
        return float(np.mean(self.scores))

    @property
    def std(self):
        return float(np.std(self.scores))

    def __iter__(self):
        # So that `scores, histories = cross_validate(...)` works as in the tutorial.
        return iter((self.scores, self.histories))


def cross_validate(model_fn, x, y, n_splits=5, epochs=10, batch_size=32, random_state=1,
                   shuffle=True, n_jobs=1, verbose=1):
    """Train and score a fresh model on each of `n_splits` folds (the tutorial's evaluate_model).

    model_fn: a function with no arguments that returns a compiled model
        (e.g. `tinycnn.zoo.cnn_categorical_model`, or your own `define_model`).
    x: inputs, shape (N, ...) (e.g. (N, 28, 28, 1) float32 in [0, 1]).
    y: labels in the format the model's loss wants: (N, 10) one-hot or (N,) integers.
    n_splits, shuffle, random_state: the folds, as KFold(n_splits, shuffle, random_state).
    epochs, batch_size: passed to each fold's fit.
    random_state also seeds each fold's model: fold i calls set_random_seed(random_state + i)
        before building it.
    n_jobs: how many folds train at the same time (-1: one per CPU).
    verbose: 1 prints `> 91.200` per fold (its accuracy in percent), as the tutorial does;
        2 also shows each fold's progress bar; 0 prints nothing.

    Where the folds run: each fold trains in a fresh Python process with one thread
    (numba and BLAS), n_jobs of them at a time, so a fold's result depends only on its
    data and its seed: n_jobs=1 and n_jobs=5 give identical scores and histories.
    The worker imports model_fn by its module and name. A model_fn it cannot import
    (defined in the script you run or in a notebook, a lambda, a nested function)
    trains here instead, one fold after the other, with this process's threads; that
    needs n_jobs=1.

    Returns a CVResult (.scores, .histories, .folds, .mean, .std);
    `scores, histories = cross_validate(...)` also works.
    """
    if not callable(model_fn):
        raise ValueError(f"cross_validate: model_fn must be a function that returns a compiled "
                         f"model, got {model_fn!r}")
    if len(x) != len(y):
        raise ValueError(f"cross_validate: x and y must have the same number of samples, "
                         f"got {len(x)} and {len(y)}")
    if isinstance(random_state, bool) or not isinstance(random_state, (int, np.integer)) \
            or random_state < 0:
        raise ValueError(f"cross_validate: random_state must be a non-negative integer, "
                         f"got {random_state!r}")
    n_jobs = _resolve_n_jobs(n_jobs, n_splits)
    in_workers = _importable(model_fn)
    if not in_workers and n_jobs > 1:
        raise ValueError(
            f"cross_validate: n_jobs={n_jobs} needs a model_fn that worker processes can import, "
            f"but {model_fn!r} is defined in your script or notebook (or is a lambda or a nested "
            f"function); move it into a .py module next to your script and import it, "
            f"or use n_jobs=1")

    kfold = KFold(n_splits, shuffle=shuffle, random_state=int(random_state) if shuffle else None)
    folds = list(kfold.split(x))
    seeds = [int(random_state) + fold_number for fold_number in range(n_splits)]

    result = CVResult(folds=folds)
    if in_workers:
        outcomes = _run_in_workers(model_fn, x, y, folds, seeds, epochs, batch_size, n_jobs, verbose)
    else:
        outcomes = (_train_one_fold(model_fn, x, y, train_index, test_index, seed, epochs,
                                    batch_size, verbose)
                    for (train_index, test_index), seed in zip(folds, seeds))
    for score, history in outcomes:          # in fold order, each printed as soon as known
        _report(score, verbose)
        result.scores.append(score)
        result.histories.append(history)
    return result


def _report(score, verbose):
    if verbose:
        print("> %.3f" % (score * 100.0), flush=True)


def _resolve_n_jobs(n_jobs, n_splits):
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, (int, np.integer)) or n_jobs == 0 \
            or n_jobs < -1:
        raise ValueError(f"cross_validate: n_jobs must be a positive integer or -1 (one per CPU), "
                         f"got {n_jobs!r}")
    if n_jobs == -1:
        n_jobs = os.cpu_count() or 1
    return max(1, min(int(n_jobs), n_splits))


def _train_one_fold(model_fn, x, y, train_index, test_index, seed, epochs, batch_size, verbose):
    """Build a fresh model with a fixed seed, fit it on the training part, score the test part.

    Returns (test accuracy as a float in [0, 1], the fit's history as a FoldHistory).
    """
    from tinycnn.utils import set_random_seed

    set_random_seed(seed)
    model = model_fn()
    x_train, y_train = x[train_index], y[train_index]
    x_test, y_test = x[test_index], y[test_index]
    history = model.fit(x_train, y_train, epochs=epochs, batch_size=batch_size,
                        validation_data=(x_test, y_test), verbose=1 if verbose >= 2 else 0)
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    values = {key: [float(v) for v in series] for key, series in history.history.items()}
    return float(accuracy), FoldHistory(values, list(history.epoch))


class FoldHistory:
    """One fold's training history as plain numbers, like a History:
    `.history` maps 'loss', 'accuracy', 'val_loss', 'val_accuracy' to one float per epoch."""

    def __init__(self, history, epoch):
        self.history = history
        self.epoch = epoch

    def __repr__(self):
        return f"FoldHistory(epochs={len(self.epoch)}, keys={list(self.history)})"


# ---------------------------------------------------------------------------
# Worker processes
# ---------------------------------------------------------------------------
# Each fold runs as `python -m tinycnn.model_selection FOLDER FOLD` in a fresh interpreter:
# it never imports the script that called cross_validate (so scripts need no
# `if __name__ == "__main__":`), and its thread settings are in the environment before
# NumPy and numba load. The data goes through .npy files, the result comes back as JSON.

# One thread per worker: 2 folds on 2 cores run side by side instead of fighting over
# the cores (and one BLAS thread is much faster than several on a small, busy machine).
_ONE_THREAD = {
    "TINYCNN_NUM_THREADS": "1",
    "NUMBA_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


def _importable(model_fn):
    """True when a fresh Python process can import model_fn by its module and name."""
    module_name = getattr(model_fn, "__module__", None)
    qualname = getattr(model_fn, "__qualname__", "")
    if module_name in (None, "__main__") or "<" in qualname:     # script, notebook, lambda, nested
        return False
    found = sys.modules.get(module_name)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    return found is model_fn


def _run_in_workers(model_fn, x, y, folds, seeds, epochs, batch_size, n_jobs, verbose):
    """Train every fold in a worker process, n_jobs at a time; yield (score, FoldHistory)
    in fold order."""
    with tempfile.TemporaryDirectory(prefix="tinycnn-cv-") as folder:
        np.save(os.path.join(folder, "x.npy"), x)
        np.save(os.path.join(folder, "y.npy"), y)
        for fold, ((train_index, test_index), seed) in enumerate(zip(folds, seeds)):
            np.save(os.path.join(folder, f"train_index_{fold}.npy"), train_index)
            np.save(os.path.join(folder, f"test_index_{fold}.npy"), test_index)
            _write_json(os.path.join(folder, f"job_{fold}.json"), {
                "module": model_fn.__module__, "function": model_fn.__qualname__,
                "seed": seed, "epochs": epochs, "batch_size": batch_size, "verbose": verbose})

        env = dict(os.environ, **_ONE_THREAD)
        env["PYTHONPATH"] = os.pathsep.join(path or os.getcwd() for path in sys.path)
        running = {}                       # fold -> its process
        next_fold = 0
        try:
            for fold in range(len(folds)):
                while next_fold < len(folds) and len(running) < n_jobs:
                    running[next_fold] = subprocess.Popen(
                        [sys.executable, "-m", "tinycnn.model_selection", folder, str(next_fold)],
                        env=env)
                    next_fold += 1
                status = running.pop(fold).wait()
                if status != 0:
                    raise RuntimeError(f"cross_validate: fold {fold + 1} failed in its worker "
                                       f"process (exit status {status}); its error is above")
                with open(os.path.join(folder, f"result_{fold}.json")) as file:
                    outcome = json.load(file)
                yield outcome["score"], FoldHistory(outcome["history"], outcome["epoch"])
        finally:
            for process in running.values():         # an error or Ctrl-C: stop the others
                process.terminate()
                process.wait()


def _write_json(path, data):
    """Write JSON via a temporary file and a rename, so a reader never sees half a file."""
    with open(path + ".tmp", "w") as file:
        json.dump(data, file)
    os.replace(path + ".tmp", path)


def _worker_main(folder, fold):
    """The worker: read fold `fold`'s job from `folder`, train it, write result_FOLD.json."""
    with open(os.path.join(folder, f"job_{fold}.json")) as file:
        job = json.load(file)
    model_fn = importlib.import_module(job["module"])
    for part in job["function"].split("."):
        model_fn = getattr(model_fn, part)
    x = np.load(os.path.join(folder, "x.npy"), mmap_mode="r")
    y = np.load(os.path.join(folder, "y.npy"), mmap_mode="r")
    train_index = np.load(os.path.join(folder, f"train_index_{fold}.npy"))
    test_index = np.load(os.path.join(folder, f"test_index_{fold}.npy"))
    score, history = _train_one_fold(model_fn, x, y, train_index, test_index, job["seed"],
                                     job["epochs"], job["batch_size"], job["verbose"])
    _write_json(os.path.join(folder, f"result_{fold}.json"),
                {"score": score, "history": history.history, "epoch": history.epoch})


if __name__ == "__main__":
    _worker_main(sys.argv[1], int(sys.argv[2]))
