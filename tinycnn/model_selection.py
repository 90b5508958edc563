"""K-fold cross-validation, as the machinelearningmastery Fashion-MNIST tutorial does it,
and grid searches over settings, on this machine's cores or a Dask cluster.

    >>> from tinycnn.model_selection import KFold, cross_validate, grid_search
    >>> from tinycnn.zoo import cnn_categorical_model
    >>> result = cross_validate(cnn_categorical_model, x_train, y_train_onehot,
    ...                         n_splits=5, epochs=10, batch_size=32, n_jobs=2)
    > 91.200
      [1/5] fold 1 done in 24.1 s
    ...
    >>> result.scores       # one test accuracy per fold, in [0, 1]
    >>> result.histories    # one History per fold (.history has loss/accuracy/val_loss/val_accuracy)
    >>> result.missing      # {} when every fold finished (else fold number -> why not)

    >>> from distributed import Client                  # pip install "tinycnn[distributed]"
    >>> result = cross_validate(define_model, x, y, executor=Client("tcp://HOST:8786"))
    >>> search = grid_search(define_model, {"learning_rate": [0.01, 0.001], "batch_size": [32, 64]},
    ...                      x, y, n_splits=5, epochs=10, n_jobs=2)
    >>> print(search); search.to_json("grid.json"); search.plot(save="grid.png")

`KFold` follows scikit-learn's `sklearn.model_selection.KFold` to the index, so the
folds here are the folds the tutorial used (for the same data order and random_state).
Where the folds train, and why every place gives the same numbers: tinycnn.executors.
"""
import itertools
import json
import os
import sys
from dataclasses import dataclass, field

import numpy as np

from tinycnn import executors


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

    scores: the test accuracy of each fold that finished, in [0, 1], in fold order
        (the tutorial's `scores`).
    histories: their FoldHistory, in the same order; `.history` maps 'loss', 'accuracy',
        'val_loss', 'val_accuracy' to one float per epoch.
    fold_numbers: which fold (1..k) each score and history belongs to.
    folds: (train_index, test_index) of every fold, finished or not (fold n is folds[n - 1]).
    missing: fold number -> why that fold has no score: the traceback of its error,
        "lost: ..." when its worker died, "cancelled" when Ctrl-C came first. Empty when
        every fold finished; `partial` is True otherwise.
    interrupted: True when Ctrl-C stopped the run.
    where: where the folds ran ("this process", "2 local processes", "the Dask cluster at ...").
    data_bytes: bytes of x and y sent to the workers, once for the whole run (0 when the
        folds ran in this process).
    job_bytes: bytes of the folds' jobs together (each: its test indices and the pickled model_fn).
    """
    scores: list = field(default_factory=list)
    histories: list = field(default_factory=list)
    folds: list = field(default_factory=list)
    fold_numbers: list = field(default_factory=list)
    missing: dict = field(default_factory=dict)
    interrupted: bool = False
    where: str = "this process"
    data_bytes: int = 0
    job_bytes: int = 0

    @property
    def partial(self):
        return bool(self.missing)

    @property
    def mean(self):
        return float(np.mean(self.scores)) if self.scores else float("nan")

    @property
    def std(self):
        return float(np.std(self.scores)) if self.scores else float("nan")

    def __iter__(self):
        # So that `scores, histories = cross_validate(...)` works as in the tutorial.
        return iter((self.scores, self.histories))


class FoldHistory:
    """One fold's training history as plain numbers, like a History:
    `.history` maps 'loss', 'accuracy', 'val_loss', 'val_accuracy' to one float per epoch."""

    def __init__(self, history, epoch):
        self.history = history
        self.epoch = epoch

    def __repr__(self):
        return f"FoldHistory(epochs={len(self.epoch)}, keys={list(self.history)})"


def cross_validate(model_fn, x, y, n_splits=5, epochs=10, batch_size=32, random_state=1,
                   shuffle=True, n_jobs=1, executor=None, verbose=1):
    """Train and score a fresh model on each of `n_splits` folds (the tutorial's evaluate_model).

    model_fn: a function with no arguments that returns a compiled model
        (e.g. `tinycnn.zoo.cnn_categorical_model`, or your own `define_model`).
    x: inputs, shape (N, ...) (e.g. (N, 28, 28, 1) float32 in [0, 1]).
    y: labels in the format the model's loss wants: (N, 10) one-hot or (N,) integers.
    n_splits, shuffle, random_state: the folds, as KFold(n_splits, shuffle, random_state).
    epochs, batch_size: passed to each fold's fit.
    random_state also seeds each fold's model: fold n calls set_random_seed(random_state + n - 1)
        before building it.
    n_jobs: how many folds train at the same time in local worker processes (-1: one per CPU);
        1 trains them here, one after the other.
    executor: instead of n_jobs, where the folds run: a `distributed.Client` (or its
        `.get_executor()`) for a Dask cluster, a `concurrent.futures.ProcessPoolExecutor`,
        or anything with the same interface.
    verbose: 1 prints `> 91.200` as each fold finishes (its accuracy in percent, as the
        tutorial does) and a progress line; 2 also shows each fold's progress bar
        (on the worker's output); 0 prints nothing.

    Same numbers wherever the folds run: a fold's result depends only on its data, its seed
    and its settings (each fold trains with tinycnn in one thread), so n_jobs=1, n_jobs=5
    and a Dask cluster give identical scores and histories.
    The data goes to the workers once (a memory-mapped file local processes share, Dask's
    scatter to a cluster); each fold sends only its test indices and model_fn.
    model_fn may be defined anywhere, in your script, a notebook, as a lambda or a closure:
    it is sent to the workers with cloudpickle (`pip install "tinycnn[distributed]"`).
    That is code you pass in; nothing read from a file is ever unpickled. Without
    cloudpickle, a model_fn the workers cannot import by name trains here, one fold after
    the other, and a message says so.

    Faults: a fold whose local worker process dies (killed, out of memory) is tried once
    more in a new process (a Dask scheduler does the same on another worker); a fold that
    raises prints its traceback with its number. Ctrl-C cancels the folds not yet finished.
    Either way the result holds the folds that finished, and `missing` names the others
    (`partial` is True). If no fold finished at all (and no Ctrl-C), RuntimeError.

    Returns a CVResult (.scores, .histories, .fold_numbers, .missing, .mean, .std, ...);
    `scores, histories = cross_validate(...)` also works.
    """
    x, y = _check_data("cross_validate", model_fn, x, y, random_state)
    folds = _kfold_splits(x, n_splits, shuffle, random_state)
    jobs = _fold_jobs(model_fn, folds, random_state, epochs, batch_size, verbose)
    workers = _choose_workers("cross_validate", n_jobs, executor, jobs, verbose)
    if verbose and not isinstance(workers, executors.ThisProcess):
        print(f"cross_validate: {len(jobs)} folds on {workers.description}", flush=True)

    def report(outcome, done, total):
        if verbose:
            _print_outcome(outcome, f"[{done}/{total}]", "cross_validate")

    run = executors.run_folds(jobs, x, y, workers, on_outcome=report, verbose=verbose)
    result = _cv_result(run, folds, point=0)
    if verbose:
        _print_ending("cross_validate", run, [f"fold {n}" for n in sorted(result.missing)], len(jobs))
    if not result.scores and not run.interrupted:
        number, problem = next(iter(result.missing.items()))
        raise RuntimeError(f"cross_validate: no fold finished; fold {number}: {problem}")
    return result


def _check_data(caller, model_fn, x, y, random_state):
    """x and y as arrays, after the checks every caller needs."""
    if not callable(model_fn):
        raise ValueError(f"{caller}: model_fn must be a function that returns a compiled "
                         f"model, got {model_fn!r}")
    x, y = np.asarray(x), np.asarray(y)
    if len(x) != len(y):
        raise ValueError(f"{caller}: x and y must have the same number of samples, "
                         f"got {len(x)} and {len(y)}")
    if isinstance(random_state, bool) or not isinstance(random_state, (int, np.integer)) \
            or random_state < 0:
        raise ValueError(f"{caller}: random_state must be a non-negative integer, "
                         f"got {random_state!r}")
    return x, y


def _kfold_splits(x, n_splits, shuffle, random_state):
    kfold = KFold(n_splits, shuffle=shuffle, random_state=int(random_state) if shuffle else None)
    return list(kfold.split(x))


def _fold_jobs(model_fn, folds, random_state, epochs, batch_size, verbose, model_kwargs=None,
               point=0, label=""):
    """One FoldJob per fold; fold n's seed is random_state + n - 1 (the same at every grid
    point, so that points differ only by their settings)."""
    return [executors.FoldJob(number=number, test_index=test_index,
                              seed=int(random_state) + number - 1, model_fn=model_fn,
                              epochs=epochs, batch_size=batch_size, verbose=verbose,
                              model_kwargs=dict(model_kwargs or {}), point=point, label=label)
            for number, (_, test_index) in enumerate(folds, start=1)]


def _choose_workers(caller, n_jobs, executor, jobs, verbose):
    """Where the jobs run (see tinycnn.executors.workers_for); this process, with a
    message, when n_jobs asked for processes but model_fn cannot be sent to them."""
    if executor is not None and n_jobs != 1:
        raise ValueError(f"{caller}: pass n_jobs or executor, not both (got n_jobs={n_jobs!r})")
    workers = executors.workers_for(_resolve_n_jobs(caller, n_jobs, len(jobs)), executor)
    if isinstance(workers, executors.ThisProcess) or getattr(workers, "threads", False):
        return workers
    problem = _unpicklable(jobs[0])
    if problem is None:
        return workers
    if executors.cloudpickle_module() is None:
        why = (f"model_fn {jobs[0].model_fn!r} cannot be sent to worker processes without "
               f"cloudpickle (install it: {executors.DASK_INSTALL_HINT}), or move it into a "
               f".py module they can import")
    else:
        why = f"model_fn {jobs[0].model_fn!r} cannot be pickled to send it to the workers: {problem}"
    if executor is not None:
        raise ValueError(f"{caller}: {why}")
    if verbose:
        print(f"{caller}: {why}; training the folds here, one after the other", file=sys.stderr,
              flush=True)
    return executors.ThisProcess()


def _unpicklable(job):
    """None if the job pickles, else what went wrong, in words."""
    try:
        executors.pickle_job(job)
    except Exception as error:        # pickle raises several kinds for a function it cannot take
        return f"{type(error).__name__}: {error}"
    return None


def _resolve_n_jobs(caller, n_jobs, n_tasks):
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, (int, np.integer)) or n_jobs == 0 \
            or n_jobs < -1:
        raise ValueError(f"{caller}: n_jobs must be a positive integer or -1 (one per CPU), "
                         f"got {n_jobs!r}")
    if n_jobs == -1:
        n_jobs = os.cpu_count() or 1
    return max(1, min(int(n_jobs), n_tasks))


def _cv_result(run, folds, point):
    """Grid point `point`'s outcomes in a FoldRun as a CVResult, in fold order."""
    result = CVResult(folds=folds, interrupted=run.interrupted, where=run.description,
                      data_bytes=run.data_bytes, job_bytes=run.job_bytes)
    for number in range(1, len(folds) + 1):
        outcome = run.outcomes.get((point, number))
        if outcome is None:
            result.missing[number] = "cancelled"
        elif not outcome.ok:
            result.missing[number] = outcome.problem
        else:
            result.scores.append(outcome.score)
            result.histories.append(FoldHistory(outcome.history, outcome.epoch))
            result.fold_numbers.append(number)
    return result


def _print_outcome(outcome, progress, caller):
    """A finished fold: the tutorial's '> 91.200' and a progress line; a failed one: its
    problem on stderr and a progress line."""
    if outcome.ok:
        print("> %.3f" % (outcome.score * 100.0), flush=True)
        print(f"  {progress} {outcome.job.name} done in {outcome.seconds:.1f} s", flush=True)
    else:
        _print_problem(outcome, progress, caller)


def _print_problem(outcome, progress, caller):
    print(f"{caller}: {outcome.job.name} has no score, it is left out of the result:\n"
          f"{outcome.problem.rstrip()}", file=sys.stderr, flush=True)
    print(f"  {progress} {outcome.job.name} failed: {_summary(outcome.problem)}", flush=True)


def _summary(problem):
    """One line of a problem: a traceback's last line (the error itself), else its first."""
    lines = [line for line in problem.strip().splitlines() if line.strip()]
    if not lines:
        return "unknown error"
    return lines[-1] if lines[0].startswith("Traceback") else lines[0]


def _print_ending(caller, run, missing, total):
    """What was sent, and which folds are missing (`missing`: their names), once the run is over."""
    if run.data_bytes:
        print(f"{caller}: ran on {run.description}; sent x and y once ({_size_text(run.data_bytes)}) "
              f"and {run.jobs_sent} jobs ({_size_text(run.job_bytes)}: test indices and model_fn)",
              flush=True)
    if run.interrupted:
        print(f"{caller}: interrupted: {len(run.outcomes)} of {total} folds ended, "
              f"{len(run.cancelled)} cancelled; the result holds the finished ones "
              f"(result.partial is True)", file=sys.stderr, flush=True)
    elif missing:
        print(f"{caller}: {total - len(missing)} of {total} folds finished; no score for "
              f"{', '.join(missing)} (see .missing)", file=sys.stderr, flush=True)


def _size_text(n):
    """A number of bytes for people: '812 B', '80.4 kB', '188.2 MB'."""
    if n < 1000:
        return f"{n} B"
    return f"{n / 1e3:.1f} kB" if n < 1e6 else f"{n / 1e6:.1f} MB"


# ---------------------------------------------------------------------------
# grid_search: cross-validate every combination of settings
# ---------------------------------------------------------------------------
FIT_SETTINGS = ("batch_size", "epochs")      # grid names that go to fit, not to model_fn


@dataclass
class GridSearchResult:
    """What `grid_search` returns.

    params: one dict per grid point, in the grid's order (e.g. {'learning_rate': 0.01,
        'batch_size': 32}).
    results: the CVResult of each point (scores, histories, missing folds...).
    interrupted: True when Ctrl-C stopped the search (the points it cut short are partial).

    `table()` is one row per point, `to_json()` the same as JSON, `plot()` a Figure of the
    scores, `str(result)` an aligned text table; `best_params` the point with the highest
    mean accuracy among those whose every fold finished.
    """
    params: list = field(default_factory=list)
    results: list = field(default_factory=list)
    interrupted: bool = False

    @property
    def best_index(self):
        complete = [i for i, r in enumerate(self.results) if not r.partial]
        return max(complete, key=lambda i: self.results[i].mean) if complete else None

    @property
    def best_params(self):
        return None if self.best_index is None else dict(self.params[self.best_index])

    def table(self):
        """One dict per point: its settings, then mean, std (accuracy in [0, 1]), scores,
        fold_numbers (of the scores) and missing (the numbers of the folds without one)."""
        return [dict(params, mean=result.mean, std=result.std, scores=list(result.scores),
                     fold_numbers=list(result.fold_numbers), missing=sorted(result.missing))
                for params, result in zip(self.params, self.results)]

    def to_json(self, path=None):
        """The table as JSON text (NaN for a point with no score); also written to `path` if given."""
        text = json.dumps({"param_names": list(self.params[0]) if self.params else [],
                           "interrupted": self.interrupted, "best": self.best_params,
                           "rows": self.table()}, indent=2, default=_plain_number)
        if path is not None:
            from tinycnn.utils import atomic_write
            with atomic_write(path, "w") as file:
                file.write(text + "\n")
        return text

    def plot(self, save=None):
        """A Figure of every point's fold scores, mean and standard deviation (see plot_grid_search)."""
        return plot_grid_search(self, save=save)

    def __str__(self):
        names = list(self.params[0]) if self.params else []
        rows = [[_setting_text(p[name]) for name in names]
                + ["%.3f" % (r.mean * 100), "%.3f" % (r.std * 100),
                   f"{len(r.scores)}/{len(r.folds)}"]
                for p, r in zip(self.params, self.results)]
        header = names + ["mean %", "std %", "folds"]
        widths = [max(len(row[i]) for row in rows + [header]) for i in range(len(header))]
        lines = ["  ".join(cell.rjust(width) for cell, width in zip(row, widths))
                 for row in [header] + rows]
        return "\n".join(lines)


def grid_search(model_fn, param_grid, x, y, n_splits=5, epochs=10, batch_size=32, random_state=1,
                shuffle=True, n_jobs=1, executor=None, verbose=1):
    """Cross-validate model_fn at every point of a grid of settings, all on the same workers.

    model_fn: returns a compiled model; it receives each point's settings as keyword
        arguments (all but batch_size and epochs):
            def define_model(learning_rate=0.01, filters=32): ...
    param_grid: {name: [values, ...]}; every combination is one point (the cross product,
        in the order of the dict and of its lists). `batch_size` and `epochs` go to fit,
        in place of the arguments of the same name; every other name goes to model_fn.
            grid_search(define_model, {"learning_rate": [0.01, 0.001], "batch_size": [32, 64]},
                        x, y, n_splits=5, epochs=10)
    x, y, n_splits, epochs, batch_size, random_state, shuffle, n_jobs, executor, verbose:
        as for cross_validate. Every point uses the same folds and the same seeds, so the
        points differ only by their settings; the data goes to the workers once for the
        whole grid, and the jobs of all the points share them.

    A point whose model_fn raises (a setting it cannot take) has its folds in `missing`;
    the other points go on. Ctrl-C returns what had finished.
    Returns a GridSearchResult (.table(), .to_json(), .plot(), .best_params).
    """
    x, y = _check_data("grid_search", model_fn, x, y, random_state)
    points = _grid_points(param_grid)
    folds = _kfold_splits(x, n_splits, shuffle, random_state)
    jobs = []
    for point, params in enumerate(points):
        fit_settings = {"epochs": epochs, "batch_size": batch_size}
        fit_settings.update({k: v for k, v in params.items() if k in FIT_SETTINGS})
        model_kwargs = {k: v for k, v in params.items() if k not in FIT_SETTINGS}
        jobs += _fold_jobs(model_fn, folds, random_state, fit_settings["epochs"],
                           fit_settings["batch_size"], verbose, model_kwargs, point,
                           label=_point_label(params) + ": ")
    workers = _choose_workers("grid_search", n_jobs, executor, jobs, verbose)
    if verbose:
        print(f"grid_search: {len(points)} points x {len(folds)} folds on {workers.description}",
              flush=True)

    ended = [[] for _ in points]          # each point's outcomes so far

    def report(outcome, done, total):
        mine = ended[outcome.job.point]
        mine.append(outcome)
        if verbose:
            label = _point_label(points[outcome.job.point])
            if outcome.ok:
                print(f"  [{done}/{total}] {outcome.job.name} > %.3f (%.1f s)"
                      % (outcome.score * 100.0, outcome.seconds), flush=True)
            else:
                _print_problem(outcome, f"[{done}/{total}]", "grid_search")
            if len(mine) == len(folds):
                scores = np.array([o.score for o in mine if o.ok]) * 100.0
                print(f"{label}: " + ("mean=%.3f std=%.3f, n=%d" % (scores.mean(), scores.std(), scores.size)
                                      if scores.size else "no fold finished"), flush=True)

    run = executors.run_folds(jobs, x, y, workers, on_outcome=report, verbose=verbose)
    result = GridSearchResult(params=points, interrupted=run.interrupted,
                              results=[_cv_result(run, folds, point) for point in range(len(points))])
    if verbose:
        missing = [job.name for job in jobs
                   if job.key in run.cancelled or not run.outcomes[job.key].ok]
        _print_ending("grid_search", run, missing, len(jobs))
        print(result, flush=True)
    return result


def _grid_points(param_grid):
    """The cross product of {name: [values]} as a list of {name: value}, in order."""
    if not isinstance(param_grid, dict) or not param_grid:
        raise ValueError(f"grid_search: param_grid must be a non-empty dict of "
                         f"{{name: [values]}}, got {param_grid!r}")
    for name, values in param_grid.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"grid_search: each name in param_grid must be a keyword "
                             f"argument name, got {name!r}")
        if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__") or not list(values):
            raise ValueError(f"grid_search: param_grid[{name!r}] must be a non-empty list of "
                             f"values, got {values!r}")
    names = list(param_grid)
    return [dict(zip(names, combination))
            for combination in itertools.product(*(list(param_grid[n]) for n in names))]


def _point_label(params):
    return ", ".join(f"{name}={_setting_text(value)}" for name, value in params.items())


def _setting_text(value):
    return f"{value:g}" if isinstance(value, float) else str(value)


def _plain_number(value):
    """JSON for what json cannot write itself: NumPy numbers and arrays."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write {value!r} as JSON")


def plot_grid_search(result, save=None):
    """Every grid point's fold scores (dots), mean and standard deviation (bar), in percent;
    the best point's label in bold.

    result: a GridSearchResult. save: a path to write a PNG (via a temporary file).
    Returns a matplotlib Figure (one axis, one tick per point).
    """
    from matplotlib.figure import Figure

    count = len(result.params)
    figure = Figure(figsize=(max(5.0, 1.3 * count + 1.5), 4.5))
    ax = figure.subplots()
    for i, cv in enumerate(result.results):
        percent = np.asarray(cv.scores, dtype=float) * 100.0
        ax.plot(np.full(percent.size, i), percent, "o", color="tab:blue", alpha=0.5)
        if percent.size:
            ax.errorbar(i, percent.mean(), yerr=percent.std(), fmt="_", color="tab:orange",
                        markersize=20, capsize=6, linewidth=2)
    ax.set_xticks(range(count))
    ax.set_xticklabels([_point_label(p).replace(", ", "\n") for p in result.params], fontsize=8)
    if result.best_index is not None:
        ax.get_xticklabels()[result.best_index].set_fontweight("bold")
    ax.set_xlim(-0.5, count - 0.5)
    ax.set_ylabel("fold accuracy (%)")
    folds = len(result.results[0].folds) if result.results else 0
    ax.set_title(f"Grid search: {folds}-fold accuracy per point (dots: folds, bar: mean ± std, "
                 f"bold: best)", fontsize=10)
    figure.tight_layout()
    if save is not None:
        from tinycnn.utils import atomic_write
        extension = os.path.splitext(os.fspath(save))[1].lstrip(".").lower() or "png"
        with atomic_write(save) as file:
            figure.savefig(file, format=extension, dpi=100)
    return figure
