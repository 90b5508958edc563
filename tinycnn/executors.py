"""Where the folds of a cross-validation train: here, in local worker processes, or on a
Dask cluster, through any `concurrent.futures.Executor`.

`cross_validate` and `grid_search` (tinycnn.model_selection) cut their work into fold
jobs and hand them to `run_folds`:

    FoldJob        one fold to train: the model function, the fold's test indices, its
                   seed and settings; everything but the data
    run_fold       what a worker runs: train one FoldJob, return its score and history
    run_folds      the loop on this side: ship the data once, submit the jobs, collect each
                   fold as it finishes, retry a fold whose worker died, stop on Ctrl-C

Where the jobs go (`workers_for`):

    n_jobs=1, no executor      this process, one fold after the other
    n_jobs=k                   k local worker processes (one ProcessPoolExecutor each)
    executor=ProcessPoolExecutor(...), or anything with the same interface
    executor=distributed.Client(...) or its .get_executor()      a Dask cluster

The rules that make every one of them give the same numbers:

- A fold's result depends only on its data, its seed and its settings. Every fold sets
  its seed, trains with tinycnn in one thread (two threads cut each batch in two halves,
  which sums in another order), and runs alone in its process (the seed and the thread
  setting belong to the whole process).
- The training arrays go to each worker once: a memory-mapped file that local worker
  processes share, or Dask's scatter to every worker of a cluster. A job carries only
  the fold's test indices (its training set is every other sample) and the model function.

Security: the model function is pickled here (with cloudpickle, which sends a function
from your script, a notebook, a lambda or a closure whole) and unpickled on the workers.
That is code you pass in, like any function you call; nothing read from a file is ever
unpickled (model files are .npz with allow_pickle=False). Connect only to a Dask scheduler
you trust: its workers run whatever code they are sent.
"""
import contextlib
import os
import pickle
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
import warnings
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

import numpy as np

DASK_INSTALL_HINT = 'pip install "tinycnn[distributed]"'


# ---------------------------------------------------------------------------
# One fold: the job, and what a worker does with it
# ---------------------------------------------------------------------------
@dataclass
class FoldJob:
    """One fold to train: everything but the data.

    number: the fold's number, 1..k (what every message shows).
    test_index: (fold_size,) int64, the held-out samples; the fold trains on all the others.
    seed: set_random_seed(seed) runs before model_fn builds the model.
    model_fn: returns a compiled model; called as model_fn(**model_kwargs).
    epochs, batch_size: passed to fit.
    verbose: 2 shows fit's progress bar (on the worker's own output).
    point: which grid point the job belongs to (0 in a plain cross-validation).
    label: what messages put before "fold N" (a grid point's settings, e.g. "learning_rate=0.01: ").
    """
    number: int
    test_index: np.ndarray
    seed: int
    model_fn: object
    epochs: int
    batch_size: int
    verbose: int = 0
    model_kwargs: dict = field(default_factory=dict)
    point: int = 0
    label: str = ""

    @property
    def key(self):
        return (self.point, self.number)

    @property
    def name(self):
        return f"{self.label}fold {self.number}"


# One fold at a time in each process: set_random_seed, the thread setting and OpenBLAS's
# threads are process-wide, so two folds in two threads of one worker would disturb each other.
_ONE_FOLD_AT_A_TIME = threading.Lock()


def run_fold(data, job):
    """Train one fold on whatever worker runs this; never raises for the fold's own errors.

    data: (x, y) arrays, or a SharedArrays naming the memory-mapped files that hold them.
    job: a FoldJob, or the bytes of one pickled by this module (code the caller passed in).
    Returns {"score": test accuracy in [0, 1], "history": {key: [float per epoch]},
    "epoch": [int], "seconds": float}, or {"error": the traceback as text}.
    """
    with _ONE_FOLD_AT_A_TIME, _one_thread():
        try:
            if isinstance(job, bytes):
                job = pickle.loads(job)      # pickled by run_folds from the caller's own FoldJob
            x, y = data.open() if isinstance(data, SharedArrays) else data
            return train_fold(job, x, y)
        except Exception:               # (KeyboardInterrupt goes through: it stops the run)
            return {"error": traceback.format_exc()}


def train_fold(job, x, y):
    """Build a fresh model with the fold's seed, fit it on the training part, score the
    test part (the tutorial's evaluate_model, for one fold). Returns run_fold's dict."""
    from tinycnn.utils import set_random_seed

    start = time.perf_counter()
    set_random_seed(job.seed)
    model = job.model_fn(**job.model_kwargs)
    is_train = np.ones(len(x), dtype=bool)
    is_train[job.test_index] = False
    train_index = np.flatnonzero(is_train)          # sorted, as KFold returns it
    x_train, y_train = x[train_index], y[train_index]
    x_test, y_test = x[job.test_index], y[job.test_index]
    history = model.fit(x_train, y_train, epochs=job.epochs, batch_size=job.batch_size,
                        validation_data=(x_test, y_test), verbose=1 if job.verbose >= 2 else 0)
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    return {"score": float(accuracy),
            "history": {key: [float(v) for v in series] for key, series in history.history.items()},
            "epoch": [int(e) for e in history.epoch],
            "seconds": time.perf_counter() - start}


@contextlib.contextmanager
def _one_thread():
    """tinycnn trains in one thread inside this block; its setting before is restored after."""
    from tinycnn import utils
    before = utils.set_num_threads(1)    # None unless set_num_threads had chosen a number
    try:
        yield
    finally:
        utils.set_num_threads(before)


# ---------------------------------------------------------------------------
# The data, written once where local worker processes can map it
# ---------------------------------------------------------------------------
class SharedArrays:
    """x and y as .npy files in a temporary folder, which each worker process maps once.

    Mapped read-only, the pages live once in the machine's memory whichever number of
    processes reads them. A job carries only the folder's name; remove() deletes it.
    """

    def __init__(self, x, y):
        self.folder = tempfile.mkdtemp(prefix="tinycnn-cv-")
        try:
            np.save(os.path.join(self.folder, "x.npy"), x)
            np.save(os.path.join(self.folder, "y.npy"), y)
        except BaseException:
            self.remove()
            raise

    def open(self):
        """(x, y) as read-only memory maps, opened once per process and kept for the next fold."""
        if _opened.get("folder") != self.folder:
            _opened.clear()           # one data set at a time: a worker never keeps an old one mapped
            _opened.update(folder=self.folder,
                           x=np.load(os.path.join(self.folder, "x.npy"), mmap_mode="r"),
                           y=np.load(os.path.join(self.folder, "y.npy"), mmap_mode="r"))
        return _opened["x"], _opened["y"]

    def remove(self):
        shutil.rmtree(self.folder, ignore_errors=True)


_opened = {}            # in a worker process: the SharedArrays it has mapped


# ---------------------------------------------------------------------------
# Pickling the jobs (cloudpickle if installed)
# ---------------------------------------------------------------------------
def cloudpickle_module():
    """The cloudpickle module, or None when it is not installed."""
    try:
        import cloudpickle
    except ImportError:
        return None
    return cloudpickle


def pickle_job(job):
    """The job as bytes for a worker (raises when its model_fn cannot be pickled).

    cloudpickle sends a function from an importable module by name (that module must be
    importable on the workers, as tinycnn must), and a function from your script or a
    notebook, a lambda or a closure whole. Without cloudpickle, only functions the workers
    can import by name travel (on Linux also those of the running script: the local worker
    processes are forked copies of this one).
    """
    cloudpickle = cloudpickle_module()
    return cloudpickle.dumps(job) if cloudpickle else pickle.dumps(job)


# ---------------------------------------------------------------------------
# The workers: this process, local processes, any executor, a Dask cluster
# ---------------------------------------------------------------------------
class Workers:
    """What run_folds needs from the place the folds run; each kind below fills it in.

    description: where the folds run, for messages ("2 local processes").
    capacity: how many jobs to keep submitted at once (None: all of them).
    retries_lost: whether a fold whose worker died can be tried again on a new one.
    job_bytes, jobs_sent: how many bytes the jobs sent took (the data not counted), how many.
    """
    description = ""
    capacity = None
    retries_lost = False

    def __init__(self):
        self.job_bytes = 0
        self.jobs_sent = 0
        self.data = None

    def ship(self, x, y):
        """Send the data once; returns how many bytes went (0: the workers use x and y here)."""
        self.data = (x, y)
        return 0

    def submit(self, job):
        """A concurrent.futures.Future of run_fold's dict for `job`."""
        raise NotImplementedError

    def pickled(self, job):
        job_bytes = pickle_job(job)
        self.job_bytes += len(job_bytes)
        self.jobs_sent += 1
        return job_bytes

    def is_lost(self, error):
        """True when a future's exception means the worker that ran it died."""
        return False

    def stop(self, futures):
        """Ctrl-C: cancel the futures not yet running; end the running ones where we can."""
        for future in futures:
            future.cancel()

    def close(self):
        """End what we started; remove temporary files."""


class ThisProcess(Workers):
    """The folds train in this process, one after the other (no pickling: any model_fn)."""
    description = "this process"
    capacity = 1

    def submit(self, job):
        future = Future()
        future.set_result(run_fold(self.data, job))   # Ctrl-C here stops the fold at once
        return future


class LocalProcesses(Workers):
    """n worker processes on this machine, each a one-process ProcessPoolExecutor.

    One pool per process, not one pool of n: a process that dies (killed, out of memory)
    breaks its pool, and a pool of its own says which fold it was running and leaves the
    other folds running; the fold is tried again in a new process. The processes are forked
    copies of this one on Linux (your script needs no `if __name__ == "__main__":`, and its
    functions are there), fresh interpreters elsewhere. Ctrl-C is this process's to handle.
    """
    retries_lost = True

    def __init__(self, n):
        super().__init__()
        self.capacity = n
        self.description = f"{n} local process{'es' if n > 1 else ''}"
        self.pools = [None] * n
        self.running = {}                       # future -> the slot of the pool it runs in

    def ship(self, x, y):
        self.data = SharedArrays(x, y)
        return x.nbytes + y.nbytes

    def submit(self, job):
        slot = self._free_slot()
        job_bytes = self.pickled(job)
        try:
            future = _submit_quietly(self.pools[slot], run_fold, self.data, job_bytes)
        except BrokenProcessPool:               # its process died: a new one in its place
            self.pools[slot].shutdown(wait=True)
            self.pools[slot] = _new_pool()
            future = _submit_quietly(self.pools[slot], run_fold, self.data, job_bytes)
        self.running[future] = slot
        return future

    def _free_slot(self):
        self.running = {future: slot for future, slot in self.running.items() if not future.done()}
        slot = next(slot for slot in range(len(self.pools)) if slot not in self.running.values())
        if self.pools[slot] is None:
            self.pools[slot] = _new_pool()
        return slot

    def is_lost(self, error):
        return isinstance(error, BrokenProcessPool)

    def stop(self, futures):
        for pool in self.pools:
            if pool is not None:
                _end_processes(pool)

    def close(self):
        for pool in self.pools:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        if self.data is not None:
            self.data.remove()


def _new_pool():
    """A ProcessPoolExecutor of one process: forked on Linux (a copy of this process, so
    the script is not run again), a fresh interpreter elsewhere."""
    import multiprocessing
    context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    return ProcessPoolExecutor(1, mp_context=context, initializer=_start_worker_process)


def _submit_quietly(pool, *args):
    """pool.submit(*args), without Python 3.12+'s warning that forking a process with threads
    may deadlock the child on a lock one of them held: the child only trains a fold."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*fork")
        return pool.submit(*args)


# One thread per worker: 2 folds on 2 cores run side by side instead of fighting over
# the cores (and one BLAS thread is much faster than several on a small, busy machine).
ONE_THREAD_ENVIRONMENT = {
    "TINYCNN_NUM_THREADS": "1",
    "NUMBA_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


def _start_worker_process():
    """Each local worker process first: one thread, and Ctrl-C left to the parent, which
    cancels the folds (else every worker would print its own KeyboardInterrupt)."""
    from tinycnn import utils
    os.environ.update(ONE_THREAD_ENVIRONMENT)
    utils.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _end_processes(pool):
    """End a ProcessPoolExecutor's processes now, running folds and all, and wait for them."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    if hasattr(pool, "terminate_workers"):        # Python 3.14+
        pool.terminate_workers()
    else:
        for process in processes:
            process.terminate()
    pool.shutdown(wait=True, cancel_futures=True)
    for process in processes:
        process.join()


class AnyExecutor(Workers):
    """A concurrent.futures.Executor you made: all jobs are submitted at once, it decides
    the order. The data goes as a memory-mapped file, so its workers must share this
    machine's disk (a ThreadPoolExecutor gets the arrays themselves, but gains nothing:
    its threads run one fold at a time, see run_fold).

    A lost worker is reported, not retried: a ProcessPoolExecutor is broken for good once
    one of its processes has died (n_jobs=k retries such a fold in a new process). Ctrl-C
    cancels the folds not yet started; the running ones end in their own time.
    """

    def __init__(self, executor):
        super().__init__()
        self.executor = executor
        self.threads = isinstance(executor, ThreadPoolExecutor)
        self.description = type(executor).__name__

    def ship(self, x, y):
        if self.threads:
            return super().ship(x, y)
        self.data = SharedArrays(x, y)
        return x.nbytes + y.nbytes

    def submit(self, job):
        return self.executor.submit(run_fold, self.data, job if self.threads else self.pickled(job))

    def is_lost(self, error):
        return isinstance(error, BrokenProcessPool)

    def close(self):
        if isinstance(self.data, SharedArrays):
            self.data.remove()


class DaskCluster(Workers):
    """A Dask cluster, through its Client. The data is scattered once to every worker
    (a copy on each, so losing a worker loses no data); Dask's scheduler moves the fold of a
    worker that dies to another one (up to `distributed.scheduler.allowed-failures` times)
    and then reports it lost (KilledWorker). Ctrl-C cancels the folds on the cluster: the
    scheduler drops them, and a fold already running ends unseen."""

    def __init__(self, client, executor=None):
        super().__init__()
        self.client = client
        self.executor = executor if executor is not None else client.get_executor()
        workers = len(client.nthreads())
        self.description = (f"the Dask cluster at {client.scheduler.address} "
                            f"({workers} worker{'s' if workers != 1 else ''})")

    def ship(self, x, y):
        # hash=False: new keys each run; with keys made from the contents, a second run on
        # the same data could ask for the copies the first run's close() is freeing
        self.data = self.client.scatter([x, y], broadcast=True, hash=False)
        return x.nbytes + y.nbytes

    def submit(self, job):
        return self.executor.submit(run_fold, self.data, self.pickled(job))

    def is_lost(self, error):
        return type(error).__name__ == "KilledWorker"

    def close(self):
        if self.data is not None:
            self.client.cancel(self.data)          # the workers free their copies


def dask_client(executor):
    """The distributed.Client behind `executor` (a Client, or what its get_executor()
    returns), else None."""
    if type(executor).__module__.split(".")[0] != "distributed":
        return None
    if hasattr(executor, "scatter") and hasattr(executor, "get_executor"):
        return executor
    return getattr(executor, "_client", None)     # a ClientExecutor keeps its Client there


def workers_for(n_jobs, executor):
    """The workers that run the folds: this process (n_jobs=1), n_jobs local processes,
    or the given executor (a Dask Client or its executor, or any concurrent.futures.Executor)."""
    if executor is None:
        return ThisProcess() if n_jobs == 1 else LocalProcesses(n_jobs)
    client = dask_client(executor)
    if client is not None:
        return DaskCluster(client, None if client is executor else executor)
    if not callable(getattr(executor, "submit", None)):
        raise ValueError(f"executor must be a concurrent.futures.Executor (anything with "
                         f"submit(fn, *args) -> Future) or a distributed.Client, got {executor!r}")
    return AnyExecutor(executor)


# ---------------------------------------------------------------------------
# The loop on this side
# ---------------------------------------------------------------------------
@dataclass
class FoldOutcome:
    """How one fold ended: with a score and a history, or with `problem` (why it has none)."""
    job: FoldJob
    score: float = None
    history: dict = None
    epoch: list = None
    seconds: float = None
    problem: str = None

    @property
    def ok(self):
        return self.problem is None


@dataclass
class FoldRun:
    """What run_folds returns: one FoldOutcome per finished (or failed) job, keyed by job.key;
    the keys of jobs that never ended (Ctrl-C); where they ran; the bytes of the data sent
    (once), and of the jobs sent (a retried job counts twice) and how many."""
    outcomes: dict
    cancelled: list
    interrupted: bool
    description: str
    data_bytes: int
    job_bytes: int
    jobs_sent: int


def run_folds(jobs, x, y, workers, on_outcome=None, verbose=1):
    """Run `jobs` on `workers`; call on_outcome(outcome, done, total) as each one ends.

    The data is shipped once before the first job. A fold whose worker died is tried once
    more on a new worker where `workers.retries_lost`. Ctrl-C cancels the jobs not yet
    finished, ends the running ones where they are ours, and returns what had finished
    (interrupted=True). Returns a FoldRun.
    """
    outcomes, queue, running, tries = {}, list(jobs), {}, {}
    interrupted = False
    data_bytes = 0
    try:
        data_bytes = workers.ship(x, y)
        while queue or running:
            while queue and (workers.capacity is None or len(running) < workers.capacity):
                job = queue.pop(0)
                tries[job.key] = tries.get(job.key, 0) + 1
                running[workers.submit(job)] = job
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in sorted(done, key=lambda f: running[f].key):
                job = running.pop(future)
                outcome = _outcome(future, job, workers, tries[job.key])
                if outcome is None:                                  # its worker died: again
                    if verbose:
                        print(f"{job.name}: its worker process died (killed, or out of memory); "
                              f"trying it again in a new process", file=sys.stderr, flush=True)
                    queue.insert(0, job)
                    continue
                outcomes[job.key] = outcome
                if on_outcome is not None:
                    on_outcome(outcome, len(outcomes), len(jobs))
    except KeyboardInterrupt:
        interrupted = True
        workers.stop(list(running))
    finally:
        workers.close()
    cancelled = [job.key for job in jobs if job.key not in outcomes]
    return FoldRun(outcomes, cancelled, interrupted, workers.description, data_bytes,
                   workers.job_bytes, workers.jobs_sent)


# A fold whose worker died is tried once more: a second death is taken as the fold's own
# doing (it needs more memory than a worker has), not bad luck, and reported.
TRIES_AFTER_A_LOST_WORKER = 1


def _outcome(future, job, workers, tries):
    """A finished future as a FoldOutcome; None when its worker died and it may try again."""
    try:
        result = future.result()
    except Exception as error:
        if workers.is_lost(error):
            if workers.retries_lost and tries <= TRIES_AFTER_A_LOST_WORKER:
                return None
            return FoldOutcome(job, problem=_lost_message(error, tries))
        return FoldOutcome(job, problem="".join(traceback.format_exception(error)))
    if "error" in result:
        return FoldOutcome(job, problem=result["error"])
    return FoldOutcome(job, result["score"], result["history"], result["epoch"], result["seconds"])


def _lost_message(error, tries):
    if type(error).__name__ == "KilledWorker":
        return f"lost: every Dask worker that ran it died ({error})"
    times = "twice" if tries == 2 else "once"
    return (f"lost: the worker process that ran it died {times} (killed, or out of memory), "
            f"{type(error).__name__}: {error}")

