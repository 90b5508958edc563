"""Two threads for one batch (tinycnn.engines.fast.parallel): the hand-over, and the halves' maths
in the fast engine; the worker process that takes the second halves of long runs on Linux."""
import os
import threading
import time
import warnings

import numpy as np
import pytest

from helpers import rel_error
from tinycnn import utils
from tinycnn.engines.fast import parallel
from tinycnn.engines.fast.engine import Job
from tinycnn.layers import Conv2D, Dense, Flatten, MaxPooling2D
from tinycnn.models import Sequential
from tinycnn.optimizers import SGD, Adam, AdamW
from tinycnn.schedules import CosineDecay, OneCycle


class ThreadSetting:
    """threads(n) sets tinycnn's thread count; threads.calls counts the hand-overs (run_both calls)."""

    def __init__(self):
        self.calls = []

    def __call__(self, n):
        utils.set_num_threads(n)


@pytest.fixture
def threads(monkeypatch):
    """Set tinycnn's thread count inside a test; back to the default afterwards. The tests'
    models are tiny, so halves are made to pay at any size, and every hand-over is counted."""
    setting = ThreadSetting()
    monkeypatch.setattr(parallel, "MIN_MULTIPLY_ADDS", 0)
    monkeypatch.setattr(parallel, "MIN_PROCESS_BATCHES", 10 ** 9)   # the worker THREAD (processes: below)
    run_both = parallel.run_both
    monkeypatch.setattr(parallel, "run_both", lambda first, second: setting.calls.append(1) or run_both(first, second))
    yield setting
    utils.set_num_threads(None)


# ---------------------------------------------------------------------------
# run_both: who runs what
# ---------------------------------------------------------------------------
def test_run_both_returns_both_results_and_the_worker_takes_the_second():
    where = {}
    second_started = threading.Event()

    def first():
        second_started.wait(10)                         # give the worker all the time it needs
        where["first"] = threading.current_thread().name
        return 1

    def second():
        second_started.set()
        where["second"] = threading.current_thread().name
        return 2

    assert parallel.run_both(first, second) == (1, 2)
    assert where == {"first": threading.current_thread().name, "second": "tinycnn-worker"}


def test_run_both_does_not_wait_for_a_busy_worker():
    # A worker that cannot take the job (here: still busy with another caller's half, as when
    # another process holds its core) must not hold the caller up: the caller runs both.
    release = threading.Event()
    other = threading.Thread(target=parallel.run_both, args=(release.wait, release.wait))
    other.start()
    time.sleep(0.2)                                     # now the worker is stuck in release.wait
    try:
        names = parallel.run_both(lambda: threading.current_thread().name,
                                  lambda: threading.current_thread().name)
        assert names == (threading.current_thread().name,) * 2
    finally:
        release.set()
        other.join(5)
    assert not other.is_alive()


def _worker_names_in_a_child(queue):
    from tinycnn.engines.fast import parallel as child_parallel
    started = threading.Event()

    def first():
        started.wait(10)
        return threading.current_thread().name

    def second():
        started.set()
        return threading.current_thread().name

    queue.put(child_parallel.run_both(first, second))


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")   # Python 3.12+: this test forks on purpose
def test_a_forked_child_gets_a_worker_of_its_own():
    # fork copies the process but not its threads: the child must start its own worker.
    import multiprocessing
    parallel.run_both(lambda: None, lambda: None)              # the parent's worker exists
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_worker_names_in_a_child, args=(queue,))
    child.start()
    names = queue.get(timeout=30)
    child.join(30)
    assert names[1] == "tinycnn-worker" and names[0] != names[1]


def test_run_both_raises_either_error_and_keeps_the_callers_numpy_settings():
    with pytest.raises(ZeroDivisionError):
        parallel.run_both(lambda: 1, lambda: 1 / 0)
    with pytest.raises(KeyError):
        parallel.run_both(lambda: {}["missing"], lambda: 2)
    with np.errstate(over="ignore", invalid="raise"):   # np.errstate reaches the other thread too
        _, settings = parallel.run_both(lambda: None, np.geterr)
    assert settings["over"] == "ignore" and settings["invalid"] == "raise"


def test_halves_and_the_second_halfs_plan():
    assert parallel.first_half_size(32) == 16
    assert parallel.first_half_size(5) == 3
    assert parallel.first_half_size(1) == 1
    model = Sequential([Flatten(input_shape=(4, 4, 1)), Dense(3)])
    model.compile("sgd", "categorical_crossentropy", engine="fast")
    first, second = model.engine.plans(model)
    for layer, op, twin in zip(model.layers, first, second):
        assert op.layer is layer and twin.layer is layer                      # the same weights
        assert op.grads is layer.grads                                        # the first half's: the layer's
        assert all(a is not b and a.shape == b.shape for a, b in zip(twin.grads, layer.grads))


# ---------------------------------------------------------------------------
# The model's step in halves
# ---------------------------------------------------------------------------
def tiny_cnn(dtype="float32", loss="categorical_crossentropy"):
    utils.set_random_seed(3)
    model = Sequential([Conv2D(4, 3, activation="relu", input_shape=(9, 9, 2), dtype=dtype),
                        MaxPooling2D(2, dtype=dtype), Flatten(dtype=dtype),
                        Dense(6, activation="relu", dtype=dtype), Dense(3, activation="softmax", dtype=dtype)])
    model.compile("sgd", loss, metrics=["accuracy"], engine="fast")
    return model


def winograd_cnn(dtype="float32"):
    """tiny_cnn with a second conv on 16 channels: a 3x3 stride-1 conv that takes Winograd's way."""
    utils.set_random_seed(3)
    model = Sequential([Conv2D(16, 3, activation="relu", input_shape=(9, 9, 2), dtype=dtype),
                        Conv2D(4, 3, activation="relu", dtype=dtype),
                        MaxPooling2D(2, dtype=dtype), Flatten(dtype=dtype),
                        Dense(6, activation="relu", dtype=dtype), Dense(3, activation="softmax", dtype=dtype)])
    model.compile("adam", "categorical_crossentropy", metrics=["accuracy"], engine="fast")
    assert model.engine.plans(model)[0][0].winograd is False and model.engine.plans(model)[0][1].conv.winograd
    return model


def batch(n, dtype, rng):
    x = rng.standard_normal((n, 9, 9, 2)).astype(dtype)
    labels = rng.integers(0, 3, n)
    return x, np.eye(3, dtype=dtype)[labels], labels


def whole_batch_gradient(model, x, y):
    """One forward and backward pass of the whole batch: (loss, probs, a copy of every gradient)."""
    engine = model.engine
    plan = engine.plans(model)[0]
    probs = engine._forward(plan, x, training=True)
    loss, grad = engine._loss_and_grad(model, y, probs, plan[-1])
    engine._backward(plan, grad)
    return loss, probs, [g.copy() for layer in model.layers for g in layer.grads]


def record_forward_rows(model, monkeypatch):
    """A list that gets the number of rows of every forward pass the model makes from now on."""
    rows_seen = []
    forward = model.engine._forward
    monkeypatch.setattr(model.engine, "_forward",
                        lambda plan, x, training=False: rows_seen.append(len(x)) or forward(plan, x, training))
    return rows_seen


@pytest.mark.parametrize("n", [2, 7, 32])
def test_halves_give_the_whole_batch_gradient_and_loss(threads, n):
    # In float64 the two halves' summed gradients equal one whole-batch backward pass to
    # rounding: each half backpropagates its share of the batch's MEAN loss.
    rng = np.random.default_rng(n)
    x, y, _ = batch(n, "float64", rng)
    model = tiny_cnn("float64")
    threads(1)
    loss, probs, expected = whole_batch_gradient(model, x, y)
    threads(2)
    loss_halves, probs_halves, _ = model.engine._train_in_halves(model, x, y)
    second_grads = [g for op in model.engine.plans(model)[1] for g in op.grads]
    got = [g + twin_g for g, twin_g in zip((g for layer in model.layers for g in layer.grads), second_grads)]
    assert abs(loss_halves - loss) < 1e-12
    assert rel_error(probs_halves, probs) < 1e-12
    for a, b in zip(got, expected):
        assert rel_error(a, b) < 1e-10


@pytest.mark.parametrize("make_model", [tiny_cnn, winograd_cnn])
def test_two_threads_train_like_one_and_repeat_bit_for_bit(threads, make_model):
    rng = np.random.default_rng(0)
    x, y, _ = batch(96, "float32", rng)
    runs = {}
    for count in (1, 2, 2):
        threads(count)
        model = make_model()
        history = model.fit(x, y, epochs=2, batch_size=32, verbose=0)
        runs.setdefault(count, []).append((model.get_weights(), history.history))
    assert len(threads.calls) == 2 * 2 * 3              # two 2-thread runs, 2 epochs of 3 batches, in halves
    (one, _), (two, again) = runs[1][0], runs[2]
    for a, b in zip(one, two[0]):
        assert rel_error(a, b) < 1e-5                   # the same training, up to float32 rounding
    for a, b in zip(two[0], again[0]):
        assert np.array_equal(a, b)                     # and the same bits every time
    assert two[1] == again[1]
    assert np.allclose(runs[1][0][1]["loss"], two[1]["loss"], rtol=1e-5)


def test_evaluate_and_predict_in_halves_match_one_thread(threads):
    rng = np.random.default_rng(1)
    x, y, labels = batch(50, "float32", rng)
    model = tiny_cnn(loss="sparse_categorical_crossentropy")
    threads(1)
    probs_1, (loss_1, acc_1) = model.predict(x, batch_size=16, verbose=0), model.evaluate(x, labels, batch_size=16, verbose=0)
    threads(2)
    probs_2, (loss_2, acc_2) = model.predict(x, batch_size=16, verbose=0), model.evaluate(x, labels, batch_size=16, verbose=0)
    assert len(threads.calls) == 2 * 4                  # 4 batches each, all in halves
    assert rel_error(probs_1, probs_2) < 1e-6
    assert abs(loss_1 - loss_2) < 1e-6 and acc_1 == acc_2


@pytest.mark.parametrize("n_threads", [1, 2])
def test_predict_and_evaluate_in_pieces_match_whole_batches(threads, monkeypatch, n_threads):
    # Without training, a batch goes through the layers a few rows at a time (parallel.
    # rows_per_piece): the outputs, the loss (from the pieces' logits) and the accuracy are
    # those of whole batches.
    rng = np.random.default_rng(6)
    x, y, labels = batch(50, "float32", rng)
    model = tiny_cnn()
    threads(n_threads)
    monkeypatch.setattr(parallel, "PIECE_BYTES", 10 ** 12)
    whole = model.predict(x, batch_size=16, verbose=0), model.evaluate(x, y, batch_size=16, verbose=0)
    patches_per_image = 7 * 7 * 3 * 3 * 2 * 4                   # conv output pixels x kernel taps x 4 bytes
    monkeypatch.setattr(parallel, "PIECE_BYTES", 3 * patches_per_image)
    assert parallel.rows_per_piece(model.engine.plans(model)[0], 16) == 3
    rows_seen = record_forward_rows(model, monkeypatch)
    pieces = model.predict(x, batch_size=16, verbose=0), model.evaluate(x, y, batch_size=16, verbose=0)
    assert max(rows_seen) == 3 and sum(rows_seen) == 2 * 50
    assert rel_error(whole[0], pieces[0]) < 1e-6
    assert abs(whole[1][0] - pieces[1][0]) < 1e-6 and whole[1][1] == pieces[1][1]


def test_training_in_pieces_gives_the_whole_batch_gradient(threads, monkeypatch):
    # A half that goes through the layers in pieces (big patch matrices) adds the pieces'
    # gradients: in float64 the batch's gradient and loss to rounding.
    rng = np.random.default_rng(12)
    x, y, _ = batch(11, "float64", rng)
    model = tiny_cnn("float64")
    threads(1)
    loss, probs, expected = whole_batch_gradient(model, x, y)
    monkeypatch.setattr(parallel, "PIECE_BYTES", 2 * 7 * 7 * 3 * 3 * 2 * 8)    # 2 images of float64 patches
    rows_seen = record_forward_rows(model, monkeypatch)
    loss_sum, probs_pieces = model.engine._train_half(model, model.engine.plans(model)[0], x, y, len(x))
    assert rows_seen == [2, 2, 2, 2, 2, 1]
    assert abs(loss_sum / len(x) - loss) < 1e-12 and rel_error(probs_pieces, probs) < 1e-12
    for got, want in zip((g for layer in model.layers for g in layer.grads), expected):
        assert rel_error(got, want) < 1e-10


def test_pieces_only_for_big_scratch_arrays():
    # A 3x3 conv on 64 channels with stride 2 makes 13x13x64 -> 6x6 outputs x 576 taps, 83 KB
    # of patches per image: pieces of 30 images. cnn_sparse's second conv takes Winograd's way:
    # 6x6 tiles x 16 x 64 channels, 147 KB per image: 16 images (a half batch whole);
    # cnn_categorical's conv makes 24 KB of patches (a whole batch); no conv at all: a whole batch.
    from tinycnn import zoo
    from tinycnn.engines.fast import ops
    from tinycnn.layers import Conv2D

    def plan(layers):
        return ops.make_plan(layers, [layer.grads for layer in layers])

    strided = Sequential([Conv2D(64, 3, strides=2, input_shape=(13, 13, 64))])
    assert parallel.rows_per_piece(plan(strided.layers), 64) == parallel.PIECE_BYTES // (6 * 6 * 576 * 4) == 30
    sparse = plan(zoo.cnn_sparse_categorical_model().layers)
    assert sparse[1].conv.winograd and sparse[1].scratch_bytes_per_image() == 6 * 6 * 16 * 64 * 4
    assert parallel.rows_per_piece(sparse, 32) == parallel.PIECE_BYTES // (6 * 6 * 16 * 64 * 4) == 16
    assert parallel.rows_per_piece(sparse, 16) == 16
    assert parallel.rows_per_piece(plan(zoo.cnn_categorical_model().layers), 16) == 16
    assert parallel.rows_per_piece(plan(zoo.simple_dense_model().layers), 32) == 32


def test_a_nan_loss_in_one_half_still_skips_the_step(threads):
    threads(2)
    rng = np.random.default_rng(2)
    x, y, _ = batch(8, "float32", rng)
    model = tiny_cnn()
    before = model.get_weights()
    x[6] = 3e38                                         # in the second half only: its logits overflow
    with np.errstate(over="ignore", invalid="ignore"), pytest.warns(RuntimeWarning, match="loss is NaN"):
        model.train_on_batch(x, y)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def test_plans_follow_the_model_when_it_changes(threads):
    threads(2)
    rng = np.random.default_rng(4)
    model = tiny_cnn()
    x, y, _ = batch(8, "float32", rng)
    model.train_on_batch(x, y)
    plans = model.engine.plans(model)
    assert model.engine.plans(model) is plans           # made once
    model.pop()
    model.add(Dense(3, activation="softmax"))
    assert model.engine.plans(model) is not plans       # a new last layer: new plans
    model.compile("sgd", "categorical_crossentropy", engine="fast")
    model.train_on_batch(x, y)
    assert model.layers[-1].grads[0].any()              # the new layer learns in both halves


def test_halves_only_where_they_pay():
    # Convolutions with at least MIN_MULTIPLY_ADDS a batch: yes; Dense-only models and small
    # convolutions: no (measured: there the second thread costs more than it saves).
    from tinycnn import zoo
    assert parallel.worth_halves(zoo.cnn_categorical_model().layers, 32)          # 24 million
    assert parallel.worth_halves(zoo.cnn_sparse_categorical_model().layers, 32)   # 160 million
    assert not parallel.worth_halves(zoo.simple_dense_model().layers, 32)         # no convolution
    assert not parallel.worth_halves(zoo.cnn_categorical_model().layers, 4)       # too small a batch
    conv = Conv2D(32, 3, input_shape=(28, 28, 1))
    conv.build((28, 28, 1))
    assert parallel.multiply_adds(conv) == 26 * 26 * 3 * 3 * 32
    dense = Dense(100)
    dense.build((5408,))
    assert parallel.multiply_adds(dense) == 5408 * 100
    assert parallel.multiply_adds(Flatten()) == 0


# ---------------------------------------------------------------------------
# The worker process (Linux): the second halves of a long fit/evaluate/predict
# ---------------------------------------------------------------------------
needs_fork = pytest.mark.skipif(not parallel.can_fork(), reason="the worker process is forked (Linux only)")


@pytest.fixture
def workers(monkeypatch):
    """Count the worker processes started (their pids), and make any run long enough for one."""
    started = []

    class CountedWorker(parallel.WorkerProcess):
        def __init__(self, jobs):
            super().__init__(jobs)
            started.append(self.pid)

    monkeypatch.setattr(parallel, "WorkerProcess", CountedWorker)
    monkeypatch.setattr(parallel, "MIN_PROCESS_BATCHES", 0)
    return started


def until_the_worker_has_the_job(worker):
    """A first() for run_both that returns once the worker process has taken the job (else the
    caller, finding the job untaken, would run it itself)."""
    def wait():
        deadline = time.monotonic() + 30
        while worker._claim[1] != 1 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert worker._claim[1] == 1, "the worker process did not take the job"
        return "here"
    return wait


def assert_reaped(pid):
    with pytest.raises(ChildProcessError):          # waited for already: no process, no zombie
        os.waitpid(pid, os.WNOHANG)


@needs_fork
def test_worker_process_runs_jobs_in_another_process_on_shared_memory():
    shared = parallel.shared_copy(np.zeros(3))

    def job(rows, n):
        shared[:] = os.getpid(), rows, n

    worker = parallel.WorkerProcess([job])
    pid = worker.pid
    try:
        assert worker.run_both(until_the_worker_has_the_job(worker), 0, 5, 9) == "here"
        assert shared[0] == pid != os.getpid() and list(shared[1:]) == [5, 9]
    finally:
        worker.close()
    assert_reaped(pid)


@needs_fork
def test_worker_process_raises_its_errors_and_warnings_here_with_our_numpy_settings():
    shared = parallel.shared_copy(np.zeros(1))

    def fails(rows, n):
        raise ValueError(f"bad rows {rows}")

    def divides_by_zero(rows, n):
        np.log(np.zeros(1))

    def fine(rows, n):
        shared[0] = rows

    worker = parallel.WorkerProcess([fails, divides_by_zero, fine])
    there = until_the_worker_has_the_job(worker)
    try:
        with pytest.raises(ValueError, match="bad rows 5 .in tinycnn's worker process"):
            worker.run_both(there, 0, 5, 5)
        with np.errstate(divide="warn"), pytest.warns(RuntimeWarning, match="divide by zero"):
            worker.run_both(there, 1, 1, 1)
        with np.errstate(divide="raise"), pytest.raises(FloatingPointError):
            worker.run_both(there, 1, 1, 1)
        with np.errstate(divide="ignore"), warnings.catch_warnings():
            warnings.simplefilter("error")
            worker.run_both(there, 1, 1, 1)                  # ignored there too: no warning

        def fails_here():
            there()
            raise KeyError("x")

        with pytest.raises(KeyError):                        # an error here: the worker's job is
            worker.run_both(fails_here, 2, 7, 7)             # still waited for, so the next call
        worker.run_both(there, 2, 8, 8)                      # starts clean
        assert shared[0] == 8
    finally:
        worker.close()


@needs_fork
def test_a_late_worker_process_leaves_its_job_to_the_caller():
    # A worker that has not started its job when the caller's half is done (its core is
    # busy elsewhere; here: stopped) does not hold the caller up: the caller runs the job.
    import signal
    shared = parallel.shared_copy(np.zeros(2))

    def job(rows, n):
        shared[:] = os.getpid(), rows

    worker = parallel.WorkerProcess([job])
    try:
        os.kill(worker.pid, signal.SIGSTOP)
        for rows in range(1, 4):                              # three jobs while it is stopped
            worker.run_both(lambda: None, 0, rows, rows)
            assert list(shared) == [os.getpid(), rows]
        os.kill(worker.pid, signal.SIGCONT)
        worker.run_both(until_the_worker_has_the_job(worker), 0, 9, 9)   # it skips the three, takes this
        assert list(shared) == [worker.pid, 9]
    finally:
        os.kill(worker.pid, signal.SIGCONT)
        worker.close()


@needs_fork
def test_a_worker_process_that_dies_is_a_clear_error():
    worker = parallel.WorkerProcess([lambda rows, n: os._exit(3)])
    with pytest.raises(RuntimeError, match="worker process .* stopped unexpectedly"):
        worker.run_both(until_the_worker_has_the_job(worker), 0, 1, 1)
    worker.close()


def thread_then_process(monkeypatch, run):
    """[run() with the worker thread, run() with a worker process] (MIN_PROCESS_BATCHES switched)."""
    results = []
    for min_batches in (10 ** 9, 0):
        monkeypatch.setattr(parallel, "MIN_PROCESS_BATCHES", min_batches)
        results.append(run())
    return results


@needs_fork
@pytest.mark.parametrize("make_model", [tiny_cnn, winograd_cnn])
def test_a_worker_process_trains_evaluates_and_predicts_as_the_worker_thread(threads, monkeypatch, workers,
                                                                             make_model):
    # The same layer copies run the second halves in either: the same bits.
    threads(2)
    rng = np.random.default_rng(8)
    x, y, _ = batch(96, "float32", rng)
    def run():
        model = make_model()
        history = model.fit(x, y, epochs=2, batch_size=32, verbose=0, validation_data=(x[:40], y[:40]))
        result = (model.get_weights(), history.history, model.predict(x, batch_size=16, verbose=0),
                  model.evaluate(x, y, batch_size=16, verbose=0))
        assert model.engine._worker_run is None                  # gone with the call that made it
        return result

    runs = thread_then_process(monkeypatch, run)
    assert len(workers) == 3                                    # fit (and its validation), predict, evaluate
    for pid in workers:
        assert_reaped(pid)
    (weights_t, history_t, probs_t, eval_t), (weights_p, history_p, probs_p, eval_p) = runs
    for a, b in zip(weights_t, weights_p):
        assert np.array_equal(a, b)
    assert history_t == history_p and np.array_equal(probs_t, probs_p) and eval_t == eval_p


@needs_fork
def test_a_nan_loss_in_the_worker_processs_half_still_skips_the_step(threads, workers):
    threads(2)
    rng = np.random.default_rng(2)
    x, y, _ = batch(16, "float32", rng)
    after_one_step = tiny_cnn()
    after_one_step.fit(x[:8], y[:8], batch_size=8, shuffle=False, verbose=0)
    model = tiny_cnn()
    x[14] = 3e38                # the second batch (the worker process's), its second half: logits overflow
    with np.errstate(over="ignore", invalid="ignore"), pytest.warns(RuntimeWarning, match="loss became NaN"):
        model.fit(x, y, batch_size=8, shuffle=False, verbose=0)
    assert len(workers) == 1
    assert all(np.array_equal(a, b) for a, b in zip(after_one_step.get_weights(), model.get_weights()))


@needs_fork
def test_the_worker_process_ends_when_fit_fails(threads, workers):
    from tinycnn.callbacks import Callback

    class Fails(Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 1:                                  # the first batch with the worker process
                raise ZeroDivisionError("from a callback")

    threads(2)
    x, y, _ = batch(16, "float32", np.random.default_rng(5))
    model = tiny_cnn()
    with pytest.raises(ZeroDivisionError):
        model.fit(x, y, batch_size=8, verbose=0, callbacks=[Fails()])
    assert len(workers) == 1 and model.engine._worker_run is None
    assert_reaped(workers[0])


@needs_fork
def test_short_runs_keep_the_worker_thread(threads, monkeypatch, workers):
    # Forking costs about 3 ms: only runs of MIN_PROCESS_BATCHES batches or more get a process.
    threads(2)
    monkeypatch.setattr(parallel, "MIN_PROCESS_BATCHES", 4)
    x, y, _ = batch(24, "float32", np.random.default_rng(6))
    model = tiny_cnn()
    model.fit(x, y, batch_size=8, verbose=0)                 # 3 batches: the thread
    model.predict(x, batch_size=8, verbose=0)
    assert workers == [] and len(threads.calls) == 6
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)       # 6 batches: the first whole in this thread
    assert len(workers) == 1 and len(threads.calls) == 6     # (it loads the kernels), then a process


@needs_fork
def test_closing_a_worker_process_does_not_wait_on_a_younger_one():
    # A second worker is forked while the first is open: it must not keep the first's pipe
    # open (the first would never see its end, and close() would wait forever).
    first = parallel.WorkerProcess([lambda rows, n: None])
    second = parallel.WorkerProcess([lambda rows, n: None])
    try:
        closing = threading.Thread(target=first.close)
        closing.start()
        closing.join(timeout=20)
        assert not closing.is_alive(), "close() of the first worker hung"
    finally:
        second.close()


@needs_fork
def test_a_model_changed_by_a_callback_during_fit_leaves_the_worker_process(threads, workers):
    # The worker copied the model when it was forked; once a callback swaps the last layer,
    # the second halves go to the worker thread, and the new layer learns in both halves.
    from tinycnn.callbacks import Callback

    class SwapLastLayer(Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 2:
                self.model.pop()
                self.model.add(Dense(3, activation="softmax"))
                self.model.compile("sgd", "categorical_crossentropy")

    threads(2)
    x, y, _ = batch(48, "float32", np.random.default_rng(9))
    model = tiny_cnn()
    model.fit(x, y, batch_size=8, verbose=0, callbacks=[SwapLastLayer()])
    assert len(workers) == 1
    assert len(threads.calls) == 3                          # batches 4-6 in the worker thread
    assert model.layers[-1].grads[0].any() and model.layers[-1].built


@needs_fork
def test_the_model_keeps_its_own_arrays_around_a_worker_process(threads, workers):
    # For a call with a worker process the weights, gradients and slots move into shared
    # memory, and back when it ends: the arrays a user holds stay the model's and hold the
    # trained values; a deep copy trains on its own arrays, exactly as the original.
    import copy
    threads(2)
    x, y, _ = batch(48, "float32", np.random.default_rng(10))
    original = tiny_cnn()
    original.compile(SGD(0.05, momentum=0.9), "categorical_crossentropy", engine="fast")
    twin = copy.deepcopy(original)
    kernel = original.layers[0].kernel
    original.fit(x, y, batch_size=8, shuffle=False, verbose=0)
    twin.fit(x, y, batch_size=8, shuffle=False, verbose=0)
    assert len(workers) == 2
    assert original.layers[0].kernel is kernel and not parallel.is_shared(kernel)
    assert not any(parallel.is_shared(a) for layer in original.layers for a in layer.params + layer.grads)
    assert not any(parallel.is_shared(s) for slots in original.optimizer.slots for s in slots)
    assert not np.array_equal(kernel, copy.deepcopy(twin).layers[0].kernel * 0)
    for a, b in zip(original.get_weights() + original.optimizer.get_state(),
                    twin.get_weights() + twin.optimizer.get_state()):
        assert np.array_equal(a, b)


# ---------------------------------------------------------------------------
# The optimizer's step in two parts
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("min_values", [parallel.MIN_SPLIT_VALUES, 16])
def test_part_of_covers_every_value_once_and_cuts_at_a_row(monkeypatch, min_values):
    monkeypatch.setattr(parallel, "MIN_SPLIT_VALUES", min_values)
    for shape in [(1,), (15,), (100,), (65536,), (65537,), (5408, 100), (3, 3, 64, 64), (1600, 128), (7, 9)]:
        size, row = int(np.prod(shape)), (shape[-1] if len(shape) > 1 else 1)
        first, second = parallel.part_of(shape, 0), parallel.part_of(shape, 1)
        values = np.arange(size)
        assert np.array_equal(np.concatenate([values[first], values[second]]), values)
        assert first.stop % row == 0                              # a Dense kernel: whole rows each
        if size < min_values:
            assert first.stop == size                            # small: all in the first part
        else:
            assert abs(first.stop - size / 2) <= row


def optimizer_cnn(optimizer):
    """tiny_cnn with a given optimizer, and every parameter cut in two for the optimizer's step."""
    model = tiny_cnn()
    model.compile(optimizer, "categorical_crossentropy")
    return model


OPTIMIZERS = [lambda: SGD(0.05, momentum=0.9), lambda: SGD(0.05, momentum=0.9, nesterov=True),
              lambda: SGD(0.05), lambda: Adam(),
              lambda: SGD(CosineDecay(0.01, 6, warmup_target=0.05, warmup_steps=3), momentum=0.9, weight_decay=0.1),
              lambda: AdamW(OneCycle(0.01, 6), weight_decay=0.1)]


@pytest.mark.parametrize("make_optimizer", OPTIMIZERS)
def test_the_optimizer_step_in_two_parts_trains_like_one_thread(threads, monkeypatch, make_optimizer):
    # Two threads each complete the batch's gradient for a part of every parameter and apply
    # the rule to it (the Dense kernels' from both halves' rows at once): the same training as
    # one thread, to float32 rounding, and the same bits every time.
    monkeypatch.setattr(parallel, "MIN_SPLIT_VALUES", 16)
    x, y, _ = batch(96, "float32", np.random.default_rng(11))
    runs = []
    for count in (1, 2, 2):
        threads(count)
        model = optimizer_cnn(make_optimizer())
        history = model.fit(x, y, epochs=2, batch_size=32, verbose=0)
        assert [parallel.defers_kernel_grad(layer) for layer in model.layers] == [False] * 3 + [True] * 2
        runs.append((model.get_weights() + model.optimizer.get_state(), history.history))
    assert len(threads.calls) == 2 * (2 * 3 * 2)                    # each step: its halves, then its two parts
    for a, b in zip(runs[0][0], runs[1][0]):
        assert rel_error(a, b) < 1e-5
    for a, b in zip(runs[1][0], runs[2][0]):
        assert np.array_equal(a, b)
    assert runs[1][1] == runs[2][1]


@pytest.mark.parametrize("n", [2, 7, 32])
def test_a_step_in_halves_leaves_the_batch_gradient_in_every_layer(threads, monkeypatch, n):
    # float64, learning rate 0: after one step in halves, every layer's grads hold the whole
    # batch's gradient, the Dense kernels' computed from both halves' rows in the optimizer's step.
    monkeypatch.setattr(parallel, "MIN_SPLIT_VALUES", 16)
    x, y, _ = batch(n, "float64", np.random.default_rng(n + 1))
    model = tiny_cnn("float64")
    model.compile(SGD(0.0), "categorical_crossentropy")
    threads(1)
    loss, _, expected = whole_batch_gradient(model, x, y)
    for layer in model.layers:
        for g in layer.grads:
            g[...] = np.nan                                       # nothing left from before
    threads(2)
    assert model.engine._in_halves(model, n)
    loss_halves, _ = model.engine.train_step(model, x, y)
    assert abs(loss_halves - loss) < 1e-12
    got = [g for layer in model.layers for g in layer.grads]
    for a, b in zip(got, expected):
        assert rel_error(a, b) < 1e-10
    assert all(op.deferred_rows is None for plan in model.engine.plans(model) for op in plan
               if hasattr(op, "deferred_rows"))                  # nothing left set for a later step


@needs_fork
@pytest.mark.parametrize("make_optimizer", OPTIMIZERS[:4:3] + OPTIMIZERS[4:])
def test_the_worker_process_takes_its_part_of_the_optimizer_step(threads, monkeypatch, workers, make_optimizer):
    # The second part runs in the worker process on the shared gradients, weights, slots and
    # the Dense layers' rows: the same bits as with the worker thread.
    jobs = []
    run_both = parallel.WorkerProcess.run_both
    monkeypatch.setattr(parallel.WorkerProcess, "run_both",
                        lambda self, first, job, *a: jobs.append(job) or run_both(self, first, job, *a))
    monkeypatch.setattr(parallel, "MIN_SPLIT_VALUES", 16)
    threads(2)
    x, y, _ = batch(96, "float32", np.random.default_rng(12))
    def run():
        model = optimizer_cnn(make_optimizer())
        model.fit(x, y, epochs=2, batch_size=32, verbose=0)
        return model.get_weights() + model.optimizer.get_state()

    runs = thread_then_process(monkeypatch, run)
    assert jobs.count(Job.UPDATE_PART) == 5 and jobs.count(Job.TRAIN_HALF) == 5     # all but the first batch (before the fork)
    for a, b in zip(*runs):
        assert np.array_equal(a, b)


@needs_fork
def test_an_optimizer_state_restored_during_fit_keeps_its_step_out_of_the_worker_process(threads, monkeypatch,
                                                                                        workers):
    # set_state gives the optimizer new slot arrays, which the forked worker does not have: from
    # then on this process does the whole step, and training goes on exactly as with the thread.
    from tinycnn.callbacks import Callback

    class RestoreState(Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 2:
                self.model.optimizer.set_state(self.model.optimizer.get_state())

    monkeypatch.setattr(parallel, "MIN_SPLIT_VALUES", 16)
    threads(2)
    x, y, _ = batch(64, "float32", np.random.default_rng(13))
    def run():
        model = optimizer_cnn(SGD(0.05, momentum=0.9))
        model.fit(x, y, batch_size=8, shuffle=False, verbose=0, callbacks=[RestoreState()])
        return model.get_weights() + model.optimizer.get_state()

    runs = thread_then_process(monkeypatch, run)
    assert len(workers) == 1
    for a, b in zip(*runs):
        assert np.array_equal(a, b)


def test_a_dense_layer_on_feature_maps_keeps_its_own_kernel_gradient(threads, monkeypatch):
    # A Dense layer applied to (H, W, C) maps has H*W rows per sample: its dL/dkernel is not
    # left to the optimizer's step (whose buffers hold one row per sample), and training in
    # halves matches one thread.
    monkeypatch.setattr(parallel, "MIN_SPLIT_VALUES", 16)
    x, y, _ = batch(32, "float32", np.random.default_rng(14))
    runs = []
    for count in (1, 2):
        threads(count)
        utils.set_random_seed(3)
        model = Sequential([Conv2D(4, 3, activation="relu", input_shape=(9, 9, 2)), Dense(8, activation="relu"),
                            Flatten(), Dense(3, activation="softmax")])
        model.compile(SGD(0.05, momentum=0.9), "categorical_crossentropy")
        assert [parallel.defers_kernel_grad(layer) for layer in model.layers] == [False, False, False, True]
        model.fit(x, y, epochs=2, batch_size=16, verbose=0)
        runs.append(model.get_weights())
    for a, b in zip(*runs):
        assert rel_error(a, b) < 1e-5
