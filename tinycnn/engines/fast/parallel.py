"""The fast engine's two cores for one batch: the batch is cut in two halves, one per core.

`tinycnn.engines.fast.engine.FastEngine` (its train_step and predict_step, and so fit,
evaluate and predict) uses this when tinycnn.utils.get_num_threads() is 2 or more and the
model is one where halves pay (`worth_halves`). The engine's first plan of ops
(`FastEngine.plans`, writing into the layers' own gradient arrays) takes the first half of
the batch; its second plan SHARES the weight arrays but has its own gradient arrays and
caches, and a worker thread runs the second half through it (or, for a long call on Linux,
a forked worker process: `WorkerProcess`, at the end of this file). In training each half
backpropagates its share of the whole batch's mean loss, (softmax - onehot) / N on its own
rows, so the two halves' gradients add up to the batch's gradient; the optimizer applies
that once, in two parts (`part_of`), one per thread or process. The numba kernels release
Python's GIL and NumPy's matrix products run one BLAS thread each (`blas_threads`), so
the two halves really run side by side.

Why halves rather than NumPy's own BLAS threads: a batch of 32 makes small matrix
products, and most of a step is not in them (im2col, pooling, ReLU, the optimizer are
single-threaded kernels). Cutting the batch shares ALL of the work between the cores, with
one hand-over per step instead of one per matrix product, so a step in halves beats a
step with two BLAS threads (benchmarks/README.md, "Where the fast engine's thresholds
come from").

Why it is safe on a busy machine: whichever thread is free first takes the second half. If
the worker thread does not get a core in time (another process holds it), the calling
thread runs both halves itself, one after the other, as one thread would: nothing waits
for a thread that is not running. (Two BLAS threads have no such way out: a product waits
for both, and a step takes many times longer while other programs hold the cores.)

Results do not depend on which thread or process runs a half: each half always goes
through the same ops (the first or the second plan) with the same single-threaded code.
They do differ in the last bits from one thread's whole-batch step, because the batch's
gradient is summed in two parts (and, where a convolution's patches are big, in pieces:
`rows_per_piece`).
"""
import builtins
import contextlib
import ctypes
import contextvars
import gc
import json
import math
import mmap
import os
import queue
import select
import signal
import struct
import sys
import threading
import time
import traceback
import warnings

import numpy as np

from tinycnn.engines.fast import denormals, tuning
from tinycnn.layers import Conv2D, Dense


# When halves pay. A Dense layer uses each weight once per image, so both halves read the
# whole weight matrix and their gradients must then be added: the copying costs what the
# second core saves. A convolution uses each weight at every pixel, and its work splits
# well once a batch is big enough to pay for the hand-over between the threads. So a batch
# goes in halves only if the model has a convolution and the batch's forward pass costs at
# least MIN_MULTIPLY_ADDS multiply-adds (benchmarks/README.md, "Where the fast engine's
# thresholds come from").
MIN_MULTIPLY_ADDS = 5_000_000


def multiply_adds(layer):
    """Forward multiply-adds per sample of a layer with a kernel (Conv2D, Dense); 0 for the others.

    Conv2D: OH*OW output pixels x (KH*KW*C*F) kernel values; Dense: the kernel's in*units.
    """
    kernel = getattr(layer, "kernel", None)
    if kernel is None or not layer.built:
        return 0
    return math.prod(layer.output_shape[:-1]) * kernel.size


def worth_halves(layers, batch_size):
    """True when a batch of `batch_size` should be cut in halves: the model has a convolution,
    and the batch costs at least MIN_MULTIPLY_ADDS multiply-adds forward (see above)."""
    if batch_size < 2 or not any(isinstance(layer, Conv2D) for layer in layers):
        return False
    return batch_size * sum(multiply_adds(layer) for layer in layers) >= MIN_MULTIPLY_ADDS


# Forward passes (predict, evaluate; in training each half, its pieces' gradients added)
# go in pieces whose biggest scratch array (scratch_bytes_per_image: a Conv2D's im2col
# patches, OH*OW x KH*KW*C per image, or, where it takes Winograd's way
# (kernels.winograd_fits), its tiles V, 16 x TH*TW x C per image) stays under PIECE_BYTES:
# the products then read it back from the cache. Smaller pieces than that cost more in
# calls than they save, and a model with small scratch arrays is fastest in whole batches
# (or halves), where its Dense layers read their kernels once for all the rows. Pieces
# also keep a big convolution's peak memory down (benchmarks/README.md, "Where the fast
# engine's thresholds come from").
PIECE_BYTES = 2_500_000


def rows_per_piece(plan, rows):
    """How many of `rows` images one forward pass through `plan` (its ops) should take at a time (>= 1)."""
    biggest = max((op.scratch_bytes_per_image() for op in plan if hasattr(op, "scratch_bytes_per_image")),
                  default=0)
    if biggest == 0:
        return rows
    return max(1, min(rows, PIECE_BYTES // biggest))


# The optimizer's step in two parts (FastEngine._apply_gradients_in_halves): a parameter
# with fewer values than this is updated whole by the first part, and a model without a
# bigger one does the whole step in the caller. The step is memory-bound and quick per
# value, so splitting a smaller parameter costs more in hand-over than it saves
# (benchmarks/README.md, "Where the fast engine's thresholds come from").
MIN_SPLIT_VALUES = 65536


def part_of(shape, part):
    """The slice of a parameter's values (flattened) that part 0 or 1 of a shared optimizer step updates.

    The parameter is seen as rows of its last axis (a Dense kernel (in, units): its `in`
    rows); the parts meet at a row, so a Dense layer's part is its rows of dL/dkernel too
    (defers_kernel_grad)."""
    size = math.prod(shape)
    row = shape[-1] if len(shape) >= 2 else 1                   # a vector: each value a row
    middle = size if size < MIN_SPLIT_VALUES else size // row // 2 * row
    return slice(0, middle) if part == 0 else slice(middle, size)


def defers_kernel_grad(layer):
    """True for a layer whose dL/dkernel a step in halves computes once for the whole batch, in
    the optimizer's two parts, rather than once per half and then added up: a Dense layer
    with a big kernel (cnn_categorical's 5408 x 100). Its halves leave their input rows and
    dL/dz in shared buffers (DenseOp.deferred_rows); each part multiplies its rows of x^T
    by dZ for all the batch's rows at once. That saves writing, adding and reading back two
    copies of dL/dkernel (benchmarks/README.md, "Where the fast engine's thresholds come
    from")."""
    return (isinstance(layer, Dense) and layer.built and layer.kernel.size >= MIN_SPLIT_VALUES
            and len(layer.input_shape) == 1)      # one row per sample (not a Dense on feature maps)


def first_half_size(n):
    """Rows in the first half of a batch of n: the first half gets the odd row."""
    return (n + 1) // 2


# ---------------------------------------------------------------------------
# Backing off when the second core is taken
# ---------------------------------------------------------------------------
# The halves exist to use the second core. When another program holds it, the second half
# starts late or runs slowly, the caller waits for it (or runs it itself), and a step in
# halves takes longer than one thread's whole batch would (benchmarks/README.md, "Where the
# fast engine's thresholds come from"). So each hand-over (run_both, WorkerProcess.run_both)
# reports whether its second half was LATE: the caller ran it itself, or waited for it more
# than LATE_FRACTION of the time its own half took. (With two halves side by side, a wait
# of half the caller's own time is about where one thread would have been as fast.)
# After LATE_IN_A_ROW late hand-overs in a row, the engine runs whole batches in one thread
# (halves_welcome() is False) for a cool-down, then tries halves again; each back-off lasts
# twice as long as the one before (up to MAX_COOL_DOWN seconds), until CALM_IN_A_ROW
# hand-overs in a row are on time. Halves shorter than MIN_HALF_SECONDS are not judged:
# their hand-over's own cost, not a busy core, decides how long the caller waits.
LATE_FRACTION = 0.5
LATE_IN_A_ROW = 6
CALM_IN_A_ROW = 100
FIRST_COOL_DOWN = 2.0           # seconds
MAX_COOL_DOWN = 60.0
MIN_HALF_SECONDS = 0.0003


class Backoff:
    """Whether halves are welcome now, from how late the recent second halves were (see above)."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.late_in_a_row = self.calm_in_a_row = 0
        self.cool_down = FIRST_COOL_DOWN         # the next back-off's length
        self.until = -math.inf                   # one thread until then
        self.backoffs = 0                        # how many so far (for tests and benchmarks)

    def halves_welcome(self):
        return self.clock() >= self.until

    def record(self, own_seconds, waited_seconds, ran_it_here):
        """One hand-over: the caller's half took own_seconds, then it waited waited_seconds
        for the second half, or ran the second half itself (ran_it_here)."""
        if own_seconds < MIN_HALF_SECONDS:
            return
        self.observe(ran_it_here or waited_seconds > LATE_FRACTION * own_seconds)

    def observe(self, late):
        if not late:
            self.late_in_a_row = 0
            self.calm_in_a_row += 1
            if self.calm_in_a_row >= CALM_IN_A_ROW:
                self.cool_down = FIRST_COOL_DOWN
            return
        self.calm_in_a_row = 0
        self.late_in_a_row += 1
        if self.late_in_a_row >= LATE_IN_A_ROW:
            self.late_in_a_row = 0
            self.until = self.clock() + self.cool_down
            self.cool_down = min(2 * self.cool_down, MAX_COOL_DOWN)
            self.backoffs += 1


backoff = Backoff()             # one for the process: a busy core is the machine's, not a model's


def halves_welcome():
    """False while the engine should run whole batches in one thread (the second core has
    been busy: Backoff); always True where tuning is off (TINYCNN_TUNING=off)."""
    return backoff.halves_welcome() or not tuning.enabled()


# ---------------------------------------------------------------------------
# Whether halves pay at all: the idle cores sensed, the training steps timed
# ---------------------------------------------------------------------------
# Backoff sees a core that another program holds, but only after late halves have cost
# several steps; and it cannot see a machine where the halves are slower with both cores
# free: two cores that share a slow memory bus, or a model whose hand-overs cost more than
# the second core saves. Which machine is which depends on the CPU and on the moment
# (benchmarks/README.md, "Fast on every CPU"), so the engine decides for each model and
# batch size (HalvesTrial), in three phases that repeat:
#   1. Sense, in whole batches (one thread): is a core idle beside that thread? Over at
#      least SENSE_SECONDS of steps it reads how much of the time the process's cores were
#      idle (`cpu_times`, from /proc/stat; `HalvesTrial._sense`). Fewer than
#      SPARE_CORE_NEEDED idle cores means other programs hold them: halves would wait for
#      a core, and the engine keeps whole batches for TRIAL_EVERY steps without trying them.
#   2. Time: after WARM_UP_STEPS untimed steps in halves (before this trial object's first
#      trial only: the halves' buffers and the worker's first steps), TRIAL_STEPS steps each
#      way in the order halves, whole, whole, halves, halves, whole, ... (a drift of the
#      machine falls on both ways alike).
#   3. Keep the way whose median step was quicker for TRIAL_EVERY steps; then sense again.
# Each round so costs SENSE_SECONDS of whole batches, and where halves lose, their extra
# time on TRIAL_STEPS steps; on a busy machine no halves are run at all. The two ways compute
# the same step; they differ only in the last bits of the summed gradient (see the top of
# this file). Where /proc/stat cannot be read, a round senses for one step and the trial decides.
SENSE_SECONDS = 0.25
SPARE_CORE_NEEDED = 0.5
WARM_UP_STEPS = 4
TRIAL_STEPS = 8
TRIAL_EVERY = 500


def cpu_times(path="/proc/stat"):
    """(idle, total, cores): the time of the cores this process may run on, in /proc/stat's
    units (1/100 s), summed over those of them that /proc/stat lists, since boot, and how many
    it listed; None where it cannot be read (not Linux). Idle counts the idle and iowait
    columns, and nice: a program that gave way (nice > 0) leaves its core to ours. Total
    counts every column but the guest ones (already counted in user)."""
    try:
        allowed = {f"cpu{n}" for n in os.sched_getaffinity(0)}
        idle = total = cores = 0
        with open(path) as stat:
            for line in stat:
                name, *columns = line.split()
                if name in allowed:
                    user, nice, system, idle_, iowait, irq, softirq, steal = (int(c) for c in columns[:8])
                    idle += nice + idle_ + iowait
                    total += user + nice + system + idle_ + iowait + irq + softirq + steal
                    cores += 1
        return (idle, total, cores) if total else None
    except (OSError, ValueError, AttributeError):       # (a short line: ValueError on unpacking)
        return None


class HalvesTrial:
    """Whether the next training step of one model and batch size goes in halves (see above).
    The engine asks halves_now() before a step and tells record() how long it took.

    read_cpu_times: a function like cpu_times (the default), called before and after each
    sensing step."""

    def __init__(self, read_cpu_times=None):
        self.read_cpu_times = read_cpu_times or cpu_times
        self.sensing = True                      # phase 1 (True) or phases 2-3 (False)
        self.sensed = [0.0, 0, 0]                # seconds, idle and all ticks summed over this sensing's steps
        self.ticks_before = None                 # cpu_times at the start of the current sensing step
        self.warm_up_left = WARM_UP_STEPS
        self.settled_left = 0                    # steps left of phase 3 (0: in phase 1 or 2)
        self.times = {True: [], False: []}       # the current trial's step times, each way
        self.halves_pay = True                   # the latest verdict
        self.trials = 0                          # trials finished (for tests and benchmarks)
        self.busy_verdicts = 0                   # sensings that found no spare core (the same)

    def halves_now(self):
        if self.sensing:
            self.ticks_before = self.read_cpu_times()
            return False
        if self.settled_left > 0:
            return self.halves_pay
        if self.warm_up_left > 0:
            return True
        steps = len(self.times[True]) + len(self.times[False])      # of the current trial so far
        return steps % 4 in (0, 3)               # halves, whole, whole, halves, ...

    def record(self, halves, seconds):
        """A step took `seconds`, in halves or whole (as halves_now said)."""
        if self.sensing:
            self._sense(seconds)
        elif self.settled_left > 0:
            self.settled_left -= 1
            self.sensing = self.settled_left == 0
        elif self.warm_up_left > 0:              # warming up: not timed
            self.warm_up_left -= 1
        else:
            self.times[halves].append(seconds)
            if len(self.times[True]) + len(self.times[False]) == 2 * TRIAL_STEPS:
                self.halves_pay = float(np.median(self.times[True])) < float(np.median(self.times[False]))
                self.trials += 1
                self._settle()

    def _sense(self, seconds):
        """One sensing step took `seconds`: add its idle and all ticks; after SENSE_SECONDS, judge.
        idle share x cores = how many cores, on average, sat idle beside the one thread."""
        before, after = self.ticks_before, self.read_cpu_times()
        if before is None or after is None or before[2] != after[2]:
            self.sensed = [0.0, 0, 0]            # nothing to read (or the cores changed): the trial decides
            self.sensing = False
            return
        self.sensed[0] += seconds
        self.sensed[1] += max(0, after[0] - before[0])      # (a counter that went back: no ticks)
        self.sensed[2] += max(0, after[1] - before[1])
        if self.sensed[0] < SENSE_SECONDS:
            return
        _, idle_ticks, all_ticks = self.sensed
        self.sensed = [0.0, 0, 0]
        self.sensing = False
        if all_ticks > 0 and after[2] * idle_ticks / all_ticks < SPARE_CORE_NEEDED:
            self.halves_pay = False              # other programs hold the cores beside ours
            self.busy_verdicts += 1
            self._settle()

    def _settle(self):
        self.settled_left = TRIAL_EVERY
        self.times = {True: [], False: []}


# ---------------------------------------------------------------------------
# NumPy's BLAS threads
# ---------------------------------------------------------------------------
_openblas = []          # [(library, prefix, suffix)] once looked up; [None] where there is none


def _openblas_library():
    """(the OpenBLAS library NumPy loaded, its functions' prefix and suffix), or None (other BLAS, other OS)."""
    if not _openblas:
        _openblas.append(None)
        try:
            with open("/proc/self/maps") as maps:
                paths = sorted({line.split()[-1] for line in maps
                                if "openblas" in line.lower() and line.split()[-1].startswith("/")})
        except OSError:
            paths = []
        for path in paths:
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            for prefix, suffix in (("scipy_openblas", "64_"), ("scipy_openblas", ""),
                                   ("openblas", "64_"), ("openblas", "")):
                if (getattr(lib, f"{prefix}_set_num_threads{suffix}", None) is not None
                        and getattr(lib, f"{prefix}_get_num_threads{suffix}", None) is not None):
                    _openblas[0] = (lib, prefix, suffix)
                    return _openblas[0]
    return _openblas[0]


def _openblas_thread_functions():
    """OpenBLAS's set/get_num_threads from the library NumPy loaded, or None (other BLAS, other OS)."""
    found = _openblas_library()
    if found is None:
        return None
    lib, prefix, suffix = found
    return getattr(lib, f"{prefix}_set_num_threads{suffix}"), getattr(lib, f"{prefix}_get_num_threads{suffix}")


def openblas_core_name():
    """The kernel OpenBLAS picked for this CPU ("SkylakeX", "Haswell", "Zen"...), or None."""
    found = _openblas_library()
    if found is None:
        return None
    lib, prefix, suffix = found
    get_corename = getattr(lib, f"{prefix}_get_corename{suffix}", None)
    if get_corename is None:
        return None
    get_corename.restype = ctypes.c_char_p
    name = get_corename()
    return name.decode(errors="replace").strip() if name else None


@contextlib.contextmanager
def blas_threads(n=1):
    """Inside this block NumPy's OpenBLAS uses n threads (default 1); its setting is restored after.

    The fast engine runs each fit/evaluate/predict call inside blas_threads(): its own two
    halves share the work, and a matrix product with threads of its own would only wait for them.
    Does nothing where NumPy's BLAS is not OpenBLAS.
    """
    functions = _openblas_thread_functions()
    if functions is None:
        yield
        return
    set_threads, get_threads = functions
    before = get_threads()
    set_threads(int(n))
    try:
        yield
    finally:
        set_threads(before)


# ---------------------------------------------------------------------------
# Memory that a forked process shares
# ---------------------------------------------------------------------------
def shared_copy(array):
    """A copy of `array` in an anonymous shared memory map: a process forked later sees every
    change made to it in place, and its changes are seen here (an ordinary ndarray otherwise).

    The fast engine keeps the weights, gradients and optimizer slots in such memory while a
    worker process runs, so the worker works with the weights the optimizer has just
    updated, without copying them at each step.
    """
    array = np.asarray(array)
    shared = np.frombuffer(mmap.mmap(-1, max(array.nbytes, 1)), dtype=array.dtype, count=array.size)
    shared = shared.reshape(array.shape)
    shared[...] = array
    return shared


def is_shared(array):
    """True if `array` lives in memory made by shared_copy (not, for instance, in a deep copy of it)."""
    base = array
    while isinstance(base, np.ndarray):
        base = base.base
    return isinstance(base, memoryview) and isinstance(base.obj, mmap.mmap)


class _Job:
    """One function call that either the worker thread or the caller runs, exactly once."""

    def __init__(self, function):
        self.function = function
        self._claimed = threading.Lock()
        self._finished = threading.Event()
        self.result, self.error = None, None

    def claim(self):
        """True for the first thread that asks (it must then run the job), False afterwards."""
        return self._claimed.acquire(blocking=False)

    def run(self):
        try:
            self.result = self.function()
        except BaseException as error:          # handed to the caller by wait()
            self.error = error
        finally:
            self._finished.set()

    def wait_quietly(self):
        self._finished.wait()

    def wait(self):
        self._finished.wait()
        if self.error is not None:
            raise self.error
        return self.result


_jobs = queue.SimpleQueue()
_worker_started = threading.Lock()
_worker = []


def _forget_the_parents_worker():
    """In a child made by fork: a new queue and lock, and no worker yet. The parent's worker
    thread was waiting inside the queue when the process was copied; the copies of the queue
    and lock it held would never be released, since that thread does not exist here."""
    global _jobs, _worker_started
    _jobs, _worker_started = queue.SimpleQueue(), threading.Lock()
    _worker.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_the_parents_worker)


def _work_forever():
    denormals.turn_on()                          # this thread runs only the engine's halves
    while True:
        job = _jobs.get()
        if job.claim():                          # the caller may have taken it already
            job.run()


def _start_worker():
    """Start the worker thread once (and again in a child process made by fork, which has none)."""
    with _worker_started:
        if not _worker or not _worker[0].is_alive():
            denormals.flags_on()                 # (numba compiles or loads it here, not in the worker's first job)
            thread = threading.Thread(target=_work_forever, name="tinycnn-worker", daemon=True)
            thread.start()
            _worker[:] = [thread]


def run_both(first, second):
    """(first(), second()): first here, second in the worker thread if it is free in time.

    If the worker has not started `second` by the time `first` returns, this thread runs it
    too. An exception from either is raised here (after both have stopped). How late the
    second was goes to `backoff`.
    """
    _start_worker()
    context = contextvars.copy_context()         # the caller's settings, np.errstate among them
    job = _Job(lambda: context.run(second))
    _jobs.put(job)
    started = time.perf_counter()
    try:
        result = first()
    except BaseException:
        if not job.claim():                      # the worker is running it: let it finish first
            job.wait_quietly()
        raise
    own = time.perf_counter() - started
    if job.claim():                              # the worker never got to it: run it here
        job.run()
        backoff.record(own, 0.0, ran_it_here=True)
        return result, job.wait()
    job.wait_quietly()
    backoff.record(own, time.perf_counter() - started - own, ran_it_here=False)
    return result, job.wait()


# ---------------------------------------------------------------------------
# The second half in a process of its own (Linux)
# ---------------------------------------------------------------------------
# Two threads share Python's GIL: while one runs the Python between its kernels the other
# cannot, and handing the GIL over costs more; two processes have a GIL each. So on Linux,
# for a long call (fit, evaluate or predict of MIN_PROCESS_BATCHES batches or more), the
# second half goes to a forked copy of this process, one per call
# (FastEngine._worker_process_for). A fork costs more than one step gains from the
# process, so only a long call earns it back; a short one keeps the worker thread
# (benchmarks/README.md, "Where the fast engine's thresholds come from"). The copy sees the
# model as it was then: each call gets a new one, and a model changed during the call (by
# a callback) goes back to the worker thread.
# What the two processes share lives in shared memory made before the fork: the model's
# weights, gradients and optimizer slots (moved there for the call,
# engine._shared_model_arrays), the second plan's gradients (FastEngine.plans), and
# buffers for the half's inputs and outputs, the optimizer step's numbers and the big Dense
# layers' rows. The pipe carries only the job's number and sizes, and the reply.
MIN_PROCESS_BATCHES = 32
# Waking a process that sleeps on a pipe takes time, and a step would do it twice. So each
# side polls its pipe for up to POLL_SECONDS before it sleeps: the worker between jobs (the
# caller's loop between steps), the caller while the worker ends its half or part.
# Polling yields the core to any other program that wants it, so it pays on a busy
# machine too (benchmarks/README.md, "Where the fast engine's thresholds come from").
POLL_SECONDS = 0.002
_ERRSTATE_KEYS = ("divide", "over", "under", "invalid")       # NumPy's error settings, 3 bits each
_ERRSTATE_MODES = ("ignore", "warn", "raise", "call", "print", "log")
_parent_ends = set()        # this process's ends of the open workers' pipes (a new worker closes its copies)


def can_fork():
    """True where a worker process can be forked safely (Linux)."""
    return sys.platform.startswith("linux") and hasattr(os, "fork")


def _poll(fd, seconds):
    """Wait up to `seconds` for `fd` to have data, awake, giving the core away to anyone who
    wants it (sched_yield) on each round; the caller's read then finds the data waiting."""
    deadline = time.perf_counter() + seconds
    while not select.select([fd], [], [], 0)[0] and time.perf_counter() < deadline:
        os.sched_yield()


def _read_exactly(fd, size):
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            return None                      # the other end closed its pipe
        data += chunk
    return data


class WorkerProcess:
    """A forked process that runs jobs for this one: `run_both(first, job, rows, n)` runs
    first() here while `jobs[job](rows, n)` runs there.

    The jobs read their inputs from, and write their outputs to, shared arrays made before
    the fork. NumPy's error settings go along with each job; warnings and errors there are
    raised here. As with the worker thread, whoever is free first runs the job: if the
    worker has not started it by the time first() returns (another program holds its core),
    this process runs it itself, so a step never waits for a worker that has no core
    (benchmarks/README.md, "Where the fast engine's thresholds come from"). Ctrl-C reaches
    only this process; `close()` (or this process ending) ends the worker.
    """

    def __init__(self, jobs):
        import multiprocessing                             # (its Lock works in both processes after fork)
        self.jobs = list(jobs)
        # who runs job number self._claim[0]: self._claim[1] = 0 nobody yet, 1 the worker, 2 this process
        self._claim = shared_copy(np.zeros(2, np.int64))
        self._claim_lock = multiprocessing.get_context("fork").Lock()
        self._started = 0                                  # jobs started so far; the last one's number
        self._job = None
        tuning.decide_all()                                # the worker gets this process's choices
        command_read, self._command_write = os.pipe()
        self._reply_read, reply_write = os.pipe()
        with warnings.catch_warnings():
            # Python 3.12+ warns that forking a process with threads (OpenBLAS's pool, numba's,
            # the worker thread) may deadlock the child on a lock one of them held. The worker
            # only runs the jobs: NumPy, numba's compiled kernels and OpenBLAS, which resets
            # its pool at fork.
            warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*fork")
            self.pid = os.fork()
        if self.pid == 0:                                  # the worker
            os.close(self._command_write)
            os.close(self._reply_read)
            for fd in _parent_ends:                        # other workers' pipes: theirs to close,
                os.close(fd)                               # else they would never see the end
            self._serve(command_read, reply_write)         # never returns
        os.close(command_read)
        os.close(reply_write)
        _parent_ends.update((self._command_write, self._reply_read))

    def _claim_job(self, number, who):
        """True if job `number` was nobody's and is now `who`'s (1 the worker, 2 this process)."""
        with self._claim_lock:
            if self._claim[0] == number and self._claim[1] == 0:
                self._claim[1] = who
                return True
            return False

    # -- in the worker ------------------------------------------------------------------
    def _serve(self, command_read, reply_write):
        status = 0
        try:
            gc.freeze()            # the collector leaves the parent's objects alone: their pages stay shared
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent to handle
            while True:
                _poll(command_read, POLL_SECONDS)
                command = _read_exactly(command_read, 24)
                if command is None:                        # the parent closed the pipe: done
                    break
                number, job, rows, n, errstate = struct.unpack("<qiiii", command)
                if not self._claim_job(number, 1):         # the parent ran it already
                    os.write(reply_write, struct.pack("<qi", number, -1))
                    continue
                settings = {key: _ERRSTATE_MODES[(errstate >> (3 * i)) & 7]
                            for i, key in enumerate(_ERRSTATE_KEYS)}
                reply = {}
                try:
                    with np.errstate(**settings), warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        self.jobs[job](rows, n)
                    reply["warnings"] = [[str(w.message), w.category.__name__] for w in caught]
                except BaseException as error:                          # sent to the parent
                    reply["error"] = [type(error).__name__, str(error), traceback.format_exc()]
                data = json.dumps(reply).encode() if reply.get("error") or reply.get("warnings") else b""
                os.write(reply_write, struct.pack("<qi", number, len(data)) + data)
        except BaseException:
            status = 1
        finally:
            os._exit(status)                               # no atexit handlers, no buffers flushed twice

    # -- in this process ------------------------------------------------------------------
    def start(self, job, rows, n):
        """Start jobs[job](rows, n) in the worker; `finish()` ends it."""
        self._read_old_replies()
        errstate, settings = 0, np.geterr()
        for i, key in enumerate(_ERRSTATE_KEYS):
            mode = settings[key]
            errstate |= _ERRSTATE_MODES.index(mode if mode in _ERRSTATE_MODES else "warn") << (3 * i)
        self._started += 1
        with self._claim_lock:
            self._claim[:] = self._started, 0
        self._job = (job, rows, n)
        os.write(self._command_write, struct.pack("<qiiii", self._started, job, rows, n, errstate))

    def finish(self, run_late_job=True):
        """The job started last: run here if the worker has not started it (unless
        run_late_job is False: then it is dropped), else wait for the worker; the worker's
        warnings are issued here, its error raised here. -> (True if it ran here, seconds
        waited for the worker)."""
        if self._claim_job(self._started, 2):
            if run_late_job:
                job, rows, n = self._job
                self.jobs[job](rows, n)
            return True, 0.0
        started = time.perf_counter()
        _poll(self._reply_read, POLL_SECONDS)
        while True:
            number, data = self._read_reply()
            if number == self._started:
                break                                      # older replies: jobs this process ran
        waited = time.perf_counter() - started
        self._raise_the_workers(data)
        return False, waited

    def _raise_the_workers(self, data):
        """Issue the worker's warnings here, raise its error here (data: its reply's JSON, or None)."""
        if data is None:
            return
        reply = json.loads(data)
        for message, category in reply.get("warnings", []):
            category = getattr(builtins, category, None)
            warnings.warn(message, category if isinstance(category, type) and issubclass(category, Warning)
                          else RuntimeWarning, stacklevel=4)
        if "error" in reply:
            name, message, trace = reply["error"]
            error_type = getattr(builtins, name, None)
            if not (isinstance(error_type, type) and issubclass(error_type, Exception)):
                error_type = RuntimeError
            raise error_type(f"{message} (in tinycnn's worker process:\n{trace})")

    def _read_reply(self):
        """(job number, the reply's JSON bytes or None) from the worker."""
        header = _read_exactly(self._reply_read, 12)
        if header is None:
            raise RuntimeError("tinycnn: the worker process that runs the second half of each batch "
                               "stopped unexpectedly; set TINYCNN_NUM_THREADS=1 to train in one process")
        number, size = struct.unpack("<qi", header)
        return number, (_read_exactly(self._reply_read, size) if size > 0 else None)

    def _read_old_replies(self):
        """Read the replies waiting in the pipe (jobs this process ran), so it never fills up."""
        while select.select([self._reply_read], [], [], 0)[0]:
            self._read_reply()

    def run_both(self, first, job, rows, n):
        """first() here while jobs[job](rows, n) runs in the worker (or here, after first(),
        if the worker has not started it) -> first()'s result. How late the worker was goes
        to `backoff`."""
        self.start(job, rows, n)
        started = time.perf_counter()
        try:
            result = first()
        except BaseException:
            self.finish(run_late_job=False)    # the worker's job, if running, ends first: the next starts clean
            raise
        own = time.perf_counter() - started
        ran_it_here, waited = self.finish()
        backoff.record(own, waited, ran_it_here)      # how late the worker was
        return result

    def close(self):
        """End the worker (it sees its pipe close) and wait for it."""
        if self.pid is None:
            return
        _parent_ends.difference_update((self._command_write, self._reply_read))
        os.close(self._command_write)
        os.close(self._reply_read)
        os.waitpid(self.pid, 0)
        self.pid = None
