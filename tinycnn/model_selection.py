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
import multiprocessing
import os
import pickle
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
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

    Where the folds run: each fold trains in a fresh worker process with one thread
    (numba and BLAS), n_jobs of them at a time, so a fold's result depends only on its
    data and seed: n_jobs=1 and n_jobs=5 give identical scores and histories. Worker
    processes import model_fn by name, and (on every OS) re-import the script you run,
    so a script that calls cross_validate must keep its code under
    `if __name__ == "__main__":`. A model_fn that workers cannot import (a lambda, a
    nested function, one defined in a notebook) is trained here instead, with this
    process's threads, and only with n_jobs=1.

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
    in_workers = _workers_can_import(model_fn)
    if not in_workers and n_jobs > 1:
        raise ValueError(
            f"cross_validate: worker processes cannot import model_fn {model_fn!r} (a lambda, "
            f"a nested function or a function defined in a notebook); define it at the top "
            f"level of a .py module, or use n_jobs=1")

    kfold = KFold(n_splits, shuffle=shuffle, random_state=int(random_state) if shuffle else None)
    folds = list(kfold.split(x))
    jobs = [(train_index, test_index, int(random_state) + fold_number)
            for fold_number, (train_index, test_index) in enumerate(folds)]
    settings = (model_fn, epochs, batch_size, verbose)

    result = CVResult(folds=folds)
    if in_workers:
        context = multiprocessing.get_context("spawn")
        with _single_threaded_children(), ProcessPoolExecutor(
                n_jobs, mp_context=context, initializer=_worker_start,
                initargs=(x, y, settings)) as pool:
            try:
                # map keeps the folds in order; each score is printed as soon as it is known.
                for score, history in pool.map(_worker_fold, jobs):
                    _report(score, verbose)
                    result.scores.append(score)
                    result.histories.append(history)
            except BrokenProcessPool:
                raise RuntimeError(
                    "cross_validate: a worker process failed to start. If you run a script, put "
                    "its code under `if __name__ == \"__main__\":` (each worker re-imports the "
                    "script); see the worker's error above.") from None
    else:
        for job in jobs:
            score, history = _train_one_fold(x, y, *job, *settings)
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


def _workers_can_import(model_fn):
    """True when a worker process can find model_fn by its module and name."""
    main = sys.modules.get("__main__")
    if getattr(model_fn, "__module__", None) == "__main__" and not getattr(main, "__file__", None):
        return False                      # defined in a notebook or an interactive session
    try:
        pickle.dumps(model_fn)            # functions pickle as "module.name": a lookup, no code
    except Exception:
        return False                      # a lambda or a nested function
    return True


# The thread settings of a worker process. They must be in the environment before
# NumPy and numba are imported there, which a freshly spawned process guarantees.
# (One thread each is also much faster than several on a small, busy machine: the
# threads of a multi-threaded BLAS spin while they wait for a core.)
_ONE_THREAD = {
    "NUMBA_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


class _single_threaded_children:
    """While active, processes started from here get one thread each."""

    def __enter__(self):
        self.saved = {name: os.environ.get(name) for name in _ONE_THREAD}
        os.environ.update(_ONE_THREAD)
        return self

    def __exit__(self, *exc):
        for name, value in self.saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        return False


# What a worker process holds: the whole data set and the settings, sent once per worker.
_worker_state = {}


def _worker_start(x, y, settings):
    _worker_state.update(x=x, y=y, settings=settings)


def _worker_fold(job):
    return _train_one_fold(_worker_state["x"], _worker_state["y"], *job, *_worker_state["settings"])


def _train_one_fold(x, y, train_index, test_index, seed, model_fn, epochs, batch_size, verbose):
    """Build a fresh model with a fixed seed, fit it on the training part, score the test part.

    Returns (test accuracy as a float in [0, 1], the fit's History as a FoldHistory).
    """
    from tinycnn.utils import set_random_seed

    set_random_seed(seed)
    model = model_fn()
    x_train, y_train = x[train_index], y[train_index]
    x_test, y_test = x[test_index], y[test_index]
    history = model.fit(x_train, y_train, epochs=epochs, batch_size=batch_size,
                        validation_data=(x_test, y_test), verbose=1 if verbose >= 2 else 0)
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    return float(accuracy), _portable_history(history)


class FoldHistory:
    """A fit's History reduced to plain numbers: `.history` (dict of per-epoch lists) and
    `.epoch`, so that it can come back from a worker process."""

    def __init__(self, history, epoch):
        self.history = history
        self.epoch = epoch

    def __repr__(self):
        return f"FoldHistory(epochs={len(self.epoch)}, keys={list(self.history)})"


def _portable_history(history):
    values = {key: [float(v) for v in series] for key, series in history.history.items()}
    epoch = list(getattr(history, "epoch", range(len(next(iter(values.values()), [])))))
    return FoldHistory(values, epoch)
