"""The fast engine's measured speed choices (tinycnn.engines.fast.tuning): the cache per
machine and its failures, TINYCNN_TUNING=off, the cut or plain products, the back-off
from halves when the second core is busy (parallel.Backoff), and the timed trials of halves
against whole batches (parallel.HalvesTrial). Each forced choice is held to
the reference engine."""
import json
import threading
import time
import warnings

import numpy as np
import pytest

from helpers import rel_error
from tinycnn import utils, zoo
from tinycnn import layers as L
from tinycnn.engines.fast import kernels, ops, parallel, tuning


@pytest.fixture
def tuning_on(monkeypatch, tmp_path):
    """Tuning on (conftest turns it off), with a cache file in a folder of this test's own, and
    no choices decided or warnings given yet in this process. -> the cache file's path."""
    path = tmp_path / "cache" / tuning.FILE_NAME
    monkeypatch.setenv("TINYCNN_TUNING", "on")
    monkeypatch.setenv("TINYCNN_TUNING_FILE", str(path))
    monkeypatch.setattr(tuning, "_decided", {})
    monkeypatch.setattr(tuning, "_warned", set())
    return path


class Measure:
    """A fake measurement: returns `value`, counts its calls."""

    def __init__(self, value=True):
        self.value, self.calls = value, 0

    def __call__(self):
        self.calls += 1
        return self.value


@pytest.fixture
def fake_choices(monkeypatch):
    """Two registered choices, "a" and "b" (safe default False), measured True."""
    measures = {"a": Measure(), "b": Measure()}
    for name, measure in measures.items():
        monkeypatch.setitem(tuning._registered, name, (measure, False))
    return measures


def forget_this_process(monkeypatch):
    """As a new process would start: nothing decided, nothing warned about."""
    monkeypatch.setattr(tuning, "_decided", {})
    monkeypatch.setattr(tuning, "_warned", set())


def leftovers(folder):
    """Temporary files left in `folder` (utils.atomic_write's .NAME.PID.random.tmp)."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp")) if folder.is_dir() else []


# ---------------------------------------------------------------------------
# The cache
# ---------------------------------------------------------------------------
def test_a_choice_is_measured_once_per_machine_then_read_from_the_file(tuning_on, fake_choices, monkeypatch):
    assert tuning.choice("a") is True and fake_choices["a"].calls == 1
    assert json.loads(tuning_on.read_text()) == {tuning.machine_key(): {"a": True}}
    forget_this_process(monkeypatch)
    fake_choices["a"].value = False                      # a new measurement would say otherwise
    assert tuning.choice("a") is True and fake_choices["a"].calls == 1      # the file's answer
    assert tuning.choice("a") is True and fake_choices["a"].calls == 1


def test_a_choice_cached_under_another_machine_is_not_used_here(tuning_on, fake_choices, monkeypatch):
    real_key = tuning.machine_key()
    with monkeypatch.context() as patch:
        patch.setattr(tuning, "cpu_model", lambda: "Another CPU (cpu family 1, model 2)")
        other_key = tuning.machine_key()
        assert other_key != real_key
        assert tuning.choice("a") is True
    forget_this_process(monkeypatch)
    fake_choices["a"].value = False
    assert tuning.choice("a") is False and fake_choices["a"].calls == 2     # measured again here
    assert json.loads(tuning_on.read_text()) == {other_key: {"a": True}, real_key: {"a": False}}


def test_the_machine_key_names_the_cpu_its_vectors_numpy_and_blas():
    cpu, isa, numpy_version, blas = tuning.machine_key().split(" | ")
    assert cpu and isa in ("avx512f", "avx2", "other") and numpy_version == f"numpy {np.__version__}" and blas


def test_tuning_off_takes_the_safe_defaults_without_measuring(monkeypatch, tmp_path, fake_choices):
    path = tmp_path / "cache.json"
    monkeypatch.setenv("TINYCNN_TUNING", "off")
    monkeypatch.setenv("TINYCNN_TUNING_FILE", str(path))
    monkeypatch.setattr(tuning, "_decided", {})
    real = {way: tuning._registered[f"matmul_cut_{way}"] for way in kernels.CUTS}
    for way, (_, default) in real.items():
        monkeypatch.setitem(tuning._registered, f"matmul_cut_{way}", (Measure(), default))
    assert tuning.choice("a") is False and tuning.choice("b") is False
    assert [kernels.cut_pays(way) for way in kernels.CUTS] == [False] * len(kernels.CUTS)   # np.matmul
    assert all(tuning._registered[f"matmul_cut_{way}"][0].calls == 0 for way in kernels.CUTS)
    assert fake_choices["a"].calls == fake_choices["b"].calls == 0 and not path.exists()
    parallel.backoff.until, before = float("inf"), parallel.backoff.until
    try:
        assert parallel.halves_welcome()               # no back-off either
    finally:
        parallel.backoff.until = before


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


BAD_FILES = {
    "not JSON": lambda path, key: write(path, "{not json"),
    "a list": lambda path, key: write(path, "[1, 2]"),
    "a list for the machine": lambda path, key: write(path, json.dumps({key: [1]})),
    "a string for a choice": lambda path, key: write(path, json.dumps({key: {"a": "yes", "b": 1}})),
    "not UTF-8": lambda path, key: (path.parent.mkdir(parents=True), path.write_bytes(b"\xff\xfe{")),
    "unreadable (a folder)": lambda path, key: path.mkdir(parents=True),
}


@pytest.mark.parametrize("problem", sorted(BAD_FILES))
def test_a_bad_cache_file_warns_once_and_is_measured_again(tuning_on, fake_choices, monkeypatch, problem):
    BAD_FILES[problem](tuning_on, tuning.machine_key())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert tuning.choice("a") is True and tuning.choice("b") is True
    assert fake_choices["a"].calls == fake_choices["b"].calls == 1
    assert len(caught) == 1 and str(tuning_on) in str(caught[0].message), [str(w.message) for w in caught]
    assert "TINYCNN_TUNING" in str(caught[0].message)
    assert leftovers(tuning_on.parent) == []
    if tuning_on.is_file():                              # rewritten: the next process reads it quietly
        forget_this_process(monkeypatch)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert tuning.choice("a") is True and fake_choices["a"].calls == 1


@pytest.mark.parametrize("where", ["a file in the way", "read-only folder"])
def test_an_unwritable_cache_warns_once_and_measures(monkeypatch, tmp_path, fake_choices, where):
    monkeypatch.setenv("TINYCNN_TUNING", "on")
    forget_this_process(monkeypatch)
    if where == "a file in the way":
        (tmp_path / "blocker").write_text("")
        path = tmp_path / "blocker" / tuning.FILE_NAME
    else:
        folder = tmp_path / "read-only"
        folder.mkdir()
        path = folder / tuning.FILE_NAME
        real_atomic_write = tuning.utils.atomic_write     # (the tests may run as root, whom chmod won't stop)
        monkeypatch.setattr(tuning.utils, "atomic_write", lambda *a, **k: _read_only_folder(real_atomic_write, *a, **k))
    monkeypatch.setenv("TINYCNN_TUNING_FILE", str(path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert tuning.choice("a") is True and tuning.choice("b") is True
    assert len(caught) == 1 and str(path) in str(caught[0].message) and "written" in str(caught[0].message)
    assert fake_choices["a"].calls == fake_choices["b"].calls == 1
    assert not path.exists() and leftovers(path.parent) == []


def _read_only_folder(atomic_write, path, mode="wb"):
    """utils.atomic_write where the rename into place fails as in a read-only folder (after
    the temporary file was written: it must not be left behind)."""
    import contextlib
    import os

    @contextlib.contextmanager
    def failing():
        real_replace = os.replace

        def refuse(src, dst):
            raise PermissionError(13, "Permission denied", dst)
        os.replace = refuse
        try:
            with atomic_write(path, mode) as file:
                yield file
        finally:
            os.replace = real_replace
    return failing()


def test_a_failing_measurement_takes_the_safe_default(tuning_on, monkeypatch):
    def broken():
        raise RuntimeError("no timer")
    monkeypatch.setitem(tuning._registered, "c", (broken, False))
    with pytest.warns(RuntimeWarning, match="could not measure"):
        assert tuning.choice("c") is False


def test_the_product_measurement_is_short_and_says_yes_or_no():
    for way in kernels.CUTS:
        start = time.perf_counter()
        assert kernels.measure_cut(way) in (True, False)
        assert time.perf_counter() - start < 1.0          # (about 0.05 s; a busy machine is slower)


# ---------------------------------------------------------------------------
# Each forced choice held to the reference engine
# ---------------------------------------------------------------------------
def agree_with_reference(steps=3, batch_size=16, zoo_model="cnn_categorical"):
    """A zoo model on both engines, the same weights: predictions agree, and the weights
    after `steps` steps of its optimizer (tolerances of tests/test_engines.py). -> the fast model."""
    models = {}
    for name in ("reference", "fast"):
        utils.set_random_seed(7)
        model = zoo.get_spec(zoo_model).build()
        model.compile(model.optimizer, model.loss, engine=name)
        models[name] = model
    rng = np.random.default_rng(1)
    x = rng.random((steps * batch_size, 28, 28, 1)).astype(np.float32)
    labels = rng.integers(0, 10, len(x))
    y = labels if models["fast"].loss.sparse else utils.to_categorical(labels, 10)
    predictions = {name: m.predict(x, batch_size=batch_size, verbose=0) for name, m in models.items()}
    assert rel_error(predictions["fast"], predictions["reference"]) < 1e-5
    for model in models.values():
        model.fit(x, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(models["fast"].get_weights(), models["reference"].get_weights()):
        assert rel_error(a, b) < 1e-4
    return models["fast"]


@pytest.mark.parametrize("halves", [True, False], ids=["halves", "backed-off"])
@pytest.mark.parametrize("cut", [True, False], ids=["cut", "plain"])
def test_each_forced_choice_trains_as_the_reference(tuning_on, monkeypatch, cut, halves):
    for way in kernels.CUTS:
        monkeypatch.setitem(tuning._decided, f"matmul_cut_{way}", cut)
    ways = []
    for way, function in kernels.CUTS.items():
        monkeypatch.setitem(kernels.CUTS, way, lambda a, b, out, f=function, w=way: ways.append(w) or f(a, b, out))
    state = parallel.Backoff()
    state.record = lambda *args, **kwargs: None            # no real lateness decides this test
    state.until = -np.inf if halves else np.inf
    monkeypatch.setattr(parallel, "backoff", state)
    hand_overs = []
    run_both = parallel.run_both
    monkeypatch.setattr(parallel, "run_both", lambda first, second: hand_overs.append(1) or run_both(first, second))
    utils.set_num_threads(2)
    try:
        agree_with_reference()
    finally:
        utils.set_num_threads(None)
    assert bool(hand_overs) == halves
    assert (set(ways) == set(kernels.CUTS)) if cut else not ways


@pytest.mark.parametrize("winograd", [True, False], ids=["winograd", "im2col"])
def test_either_way_of_a_conv_trains_as_the_reference(tuning_on, monkeypatch, winograd):
    asked = []
    monkeypatch.setattr(ops, "winograd_pays", lambda *conv: asked.append(conv) or winograd)
    model = agree_with_reference(zoo_model="cnn_sparse")
    convs = [getattr(op, "conv", op) for op in model.engine.plans(model)[0]]
    convs = [op for op in convs if isinstance(op, ops.ConvOp)]
    assert [op.winograd for op in convs] == [False, winograd]         # the first conv has 1 channel
    assert ((13, 13, 64), 64, "valid") in asked


def test_a_conv_shape_is_measured_once_and_cached_under_its_shape(tuning_on, monkeypatch):
    measured = []
    monkeypatch.setattr(ops, "measure_winograd", lambda *conv: measured.append(conv) or False)
    for shape in [(9, 9, 16), (9, 9, 16), (7, 7, 16)]:
        layer = L.Conv2D(8, 3, padding="same")
        layer.build(shape)
        assert ops.ConvOp(layer, [np.zeros_like(p) for p in layer.params]).winograd is False
    assert measured == [((9, 9, 16), 8, "same"), ((7, 7, 16), 8, "same")]
    [choices] = json.loads(tuning_on.read_text()).values()
    assert choices == {"conv_winograd_9x9x16_8_same": False, "conv_winograd_7x7x16_8_same": False}


def test_the_conv_measurement_is_short_and_keeps_a_big_conv_small(monkeypatch):
    start = time.perf_counter()
    assert ops.measure_winograd((14, 14, 64), 64, "same") in (True, False)
    assert time.perf_counter() - start < 2.0              # (about 0.15 s; a busy machine is slower)
    layer = L.Conv2D(64, 3, padding="same")
    layer.build((14, 14, 64))
    per_image = max(ops.ConvOp(layer, [np.zeros_like(p) for p in layer.params], winograd=way).scratch_bytes_per_image()
                    for way in (True, False))
    monkeypatch.setattr(ops, "MEASURE_BYTES", 3 * per_image + 1)      # room for 3 images' scratch
    batches = []
    forward_linear = ops.ConvOp.forward_linear
    monkeypatch.setattr(ops.ConvOp, "forward_linear", lambda op, x, *a: batches.append(len(x)) or forward_linear(op, x, *a))
    ops.measure_winograd((14, 14, 64), 64, "same")
    assert batches and set(batches) == {3}


# ---------------------------------------------------------------------------
# The back-off
# ---------------------------------------------------------------------------
class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def back_off(state):
    """Feed `state` late hand-overs until it backs off."""
    for _ in range(parallel.LATE_IN_A_ROW - 1):
        state.record(0.002, 0.005, ran_it_here=False)
        assert state.halves_welcome()
    state.record(0.002, 0.0, ran_it_here=True)


def test_late_halves_send_the_engine_to_one_thread_for_a_growing_cool_down():
    clock = Clock()
    state = parallel.Backoff(clock)
    assert state.halves_welcome()
    for _ in range(3 * parallel.LATE_IN_A_ROW):              # on time (a short wait): halves stay
        state.record(0.002, 0.0005, ran_it_here=False)
    for _ in range(3 * parallel.LATE_IN_A_ROW):              # halves too short to judge
        state.record(parallel.MIN_HALF_SECONDS / 2, 1.0, ran_it_here=True)
    assert state.halves_welcome() and state.backoffs == 0
    back_off(state)
    assert not state.halves_welcome() and state.backoffs == 1
    clock.now += parallel.FIRST_COOL_DOWN - 0.01
    assert not state.halves_welcome()
    clock.now += 0.02
    assert state.halves_welcome()                             # the cool-down is over: halves again
    back_off(state)                                           # ... and still late: a longer one
    clock.now += parallel.FIRST_COOL_DOWN + 0.01
    assert not state.halves_welcome()
    clock.now += parallel.FIRST_COOL_DOWN
    assert state.halves_welcome()
    for k in range(2, 8):                                     # doubling, up to MAX_COOL_DOWN
        back_off(state)
        expected = min(parallel.FIRST_COOL_DOWN * 2 ** k, parallel.MAX_COOL_DOWN)
        assert state.until - clock.now == pytest.approx(expected)
        clock.now = state.until
    assert expected == parallel.MAX_COOL_DOWN
    for _ in range(parallel.CALM_IN_A_ROW):                   # a long calm spell: the next is short again
        state.record(0.002, 0.0, ran_it_here=False)
    back_off(state)
    assert state.until - clock.now == pytest.approx(parallel.FIRST_COOL_DOWN)


def test_one_on_time_hand_over_breaks_a_run_of_late_ones():
    state = parallel.Backoff(Clock())
    for _ in range(5):
        for _ in range(parallel.LATE_IN_A_ROW - 1):
            state.record(0.002, 0.005, ran_it_here=False)
        state.record(0.002, 0.0, ran_it_here=False)
    assert state.halves_welcome() and state.backoffs == 0


def test_run_both_reports_a_late_second_half(monkeypatch):
    state = parallel.Backoff()
    seen = []
    state.observe = seen.append
    monkeypatch.setattr(parallel, "backoff", state)
    assert parallel.run_both(lambda: time.sleep(0.002), lambda: time.sleep(0.03)) == (None, None)
    assert seen == [True]                                     # the caller waited 28 ms after its 2 ms

    release = threading.Event()                               # the worker busy elsewhere: the caller
    other = threading.Thread(target=parallel.run_both, args=(release.wait, release.wait))   # runs both
    other.start()
    time.sleep(0.2)
    try:
        parallel.run_both(lambda: time.sleep(0.002), lambda: None)
    finally:
        release.set()
        other.join(5)
    assert seen[1] is True


def test_the_engine_asks_whether_halves_are_welcome(tuning_on, monkeypatch):
    model = zoo.get_spec("cnn_categorical").build()
    model.compile(model.optimizer, model.loss, engine="fast")
    utils.set_num_threads(2)
    try:
        state = parallel.Backoff()
        monkeypatch.setattr(parallel, "backoff", state)
        assert model.engine._in_halves(model, 32)
        state.until = np.inf
        assert not model.engine._in_halves(model, 32)
    finally:
        utils.set_num_threads(None)


class FakeCpuTimes:
    """A stand-in for parallel.cpu_times on a machine of two cores: each call advances (idle,
    total) ticks by one step's worth, with `idle_share` of the ticks idle; None for a machine
    with no /proc/stat."""

    def __init__(self, idle_share):
        self.idle_share, self.idle, self.total = idle_share, 0, 0

    def __call__(self):
        if self.idle_share is None:
            return None
        self.total += 100
        self.idle += round(100 * self.idle_share)
        return self.idle, self.total, 2


def run_trial(trial, seconds_of, steps):
    """`steps` steps through `trial`, the halves' steps taking seconds_of[True] -> "H"/"W" per step."""
    ways = []
    for _ in range(steps):
        halves = trial.halves_now()
        trial.record(halves, seconds_of[halves])
        ways.append("H" if halves else "W")
    return "".join(ways)


@pytest.fixture
def short_trials(monkeypatch):
    """Phases of a few steps: sensing 2 steps of 5 ms, warm-up 2, trials of 4 steps each way, settled 5."""
    monkeypatch.setattr(parallel, "SENSE_SECONDS", 0.009)
    monkeypatch.setattr(parallel, "WARM_UP_STEPS", 2)
    monkeypatch.setattr(parallel, "TRIAL_STEPS", 4)
    monkeypatch.setattr(parallel, "TRIAL_EVERY", 5)


@pytest.mark.parametrize("halves_quicker", [True, False], ids=["halves-quicker", "whole-quicker"])
def test_a_timed_trial_keeps_the_quicker_way_and_tries_again_later(short_trials, halves_quicker):
    seconds_of = {True: 0.004, False: 0.005} if halves_quicker else {True: 0.006, False: 0.005}
    trial = parallel.HalvesTrial(FakeCpuTimes(idle_share=0.5))      # one core of two idle
    kept = "H" if halves_quicker else "W"
    sense, trial_ways = "WW", "HWWHHWWH"                           # each way 4 times, in turns
    assert (run_trial(trial, seconds_of, 2 + 2 + 8 + 5 + 2 + 8 + 5)
            == sense + "HH" + trial_ways + kept * 5 + sense + trial_ways + kept * 5)
    assert trial.trials == 2 and trial.halves_pay == halves_quicker and trial.busy_verdicts == 0
    seconds_of = {True: 0.004, False: 0.005}                      # the machine changed: the next trial sees it
    assert run_trial(trial, seconds_of, 2 + 8 + 1) == sense + trial_ways + "H"


def test_a_busy_second_core_keeps_whole_batches_without_trying_halves(short_trials):
    """No idle core beside the one thread: the halves are not even tried. Once a core is idle
    again, the next sensing lets a trial decide."""
    cpu_times = FakeCpuTimes(idle_share=0.1)                       # 0.2 of 2 cores idle
    trial = parallel.HalvesTrial(cpu_times)
    seconds_of = {True: 0.004, False: 0.005}                       # halves would win a trial
    assert run_trial(trial, seconds_of, 3 * (2 + 5)) == "W" * 21
    assert trial.busy_verdicts == 3 and trial.trials == 0 and not trial.halves_pay
    cpu_times.idle_share = 0.45                                    # 0.9 of 2 cores idle
    assert run_trial(trial, seconds_of, 2 + 2 + 8 + 1) == "WW" + "HH" + "HWWHHWWH" + "H"
    assert trial.busy_verdicts == 3 and trial.trials == 1 and trial.halves_pay


def test_with_nothing_to_sense_the_timed_trial_decides(short_trials):
    trial = parallel.HalvesTrial(FakeCpuTimes(idle_share=None))
    assert run_trial(trial, {True: 0.004, False: 0.005}, 1 + 2 + 8 + 1) == "W" + "HH" + "HWWHHWWH" + "H"
    assert trial.trials == 1 and trial.halves_pay and trial.busy_verdicts == 0


def test_cpu_times_reads_the_idle_and_all_ticks_of_the_process_cores(tmp_path, monkeypatch):
    stat = tmp_path / "stat"
    stat.write_text("cpu  9 9 9 9 9 9 9 9 9 9\n"                  # the sum of all cores: not read
                    "cpu0 10 1 5 100 4 1 1 2 7 0\n"               # guest (7) is already in user
                    "cpu1 20 0 5 50 0 0 0 0 0 0\n"
                    "cpu2 30 0 0 900 0 0 0 0 0 0\n"               # not one of this process's cores
                    "intr 12345 0 0\n")
    monkeypatch.setattr(parallel.os, "sched_getaffinity", lambda pid: {0, 1, 5})   # cpu5: not listed
    assert parallel.cpu_times(str(stat)) == (1 + 100 + 4 + 50, 124 + 75, 2)
    assert parallel.cpu_times(str(tmp_path / "missing")) is None
    for bad in ("cpu0 ten 1 2 3 4 5 6 7\n", "cpu0 1 2 3\n", "cpu7 1 2 3 4 5 6 7 8\n"):
        stat.write_text(bad)
        assert parallel.cpu_times(str(stat)) is None, bad


def test_a_reading_lost_or_changed_mid_sensing_starts_the_next_sensing_afresh(short_trials):
    """A sensing step whose second reading fails, or lists other cores, ends that sensing and
    drops its ticks: the next sensing, after the trial and the settled steps, counts only its own."""
    readings = iter([(0, 100, 2), (0, 200, 2),            # a step with no idle core ...
                     (0, 200, 2), None])                  # ... then the reading fails
    trial = parallel.HalvesTrial(lambda: next(readings))
    run_trial(trial, {True: 0.004, False: 0.005}, 2)
    assert trial.sensed == [0.0, 0, 0] and not trial.sensing and trial.busy_verdicts == 0
    readings = iter([(0, 100, 2), (50, 200, 3)])          # a core more in the second reading
    trial = parallel.HalvesTrial(lambda: next(readings))
    run_trial(trial, {True: 0.004, False: 0.005}, 1)
    assert trial.sensed == [0.0, 0, 0] and not trial.sensing and trial.busy_verdicts == 0


def test_cpu_times_sees_this_process_keep_a_core_busy():
    """On Linux, the real reading: while this thread spins for 0.3 s, a core's worth of the
    ticks is not idle."""
    before = parallel.cpu_times()
    if before is None:
        pytest.skip("no /proc/stat on this system")
    started = time.perf_counter()
    while time.perf_counter() - started < 0.3 or parallel.cpu_times()[1] == before[1]:
        pass
    after = parallel.cpu_times()
    busy_cores = after[2] * (1 - (after[0] - before[0]) / (after[1] - before[1]))
    assert after[2] == before[2] >= 1 and busy_cores > 0.6


def test_the_engine_runs_whole_batches_where_its_trial_timed_halves_slower(tuning_on, monkeypatch):
    """Halves made 20 ms slower a step: after its trial the engine runs whole batches, then
    senses and tries again; the mixed steps train as the reference engine does."""
    from tinycnn.engines.fast.engine import FastEngine
    monkeypatch.setattr(parallel, "SENSE_SECONDS", 0.0)
    monkeypatch.setattr(parallel, "WARM_UP_STEPS", 1)
    monkeypatch.setattr(parallel, "TRIAL_STEPS", 2)
    monkeypatch.setattr(parallel, "TRIAL_EVERY", 3)
    monkeypatch.setattr(parallel, "cpu_times", FakeCpuTimes(idle_share=0.5))
    state = parallel.Backoff()
    state.record = lambda *args, **kwargs: None            # no real lateness decides this test
    monkeypatch.setattr(parallel, "backoff", state)
    ways = []
    in_halves, whole = FastEngine._train_step_in_halves, FastEngine._train_whole

    def slow_halves(self, model, x, y):
        ways.append("H")
        time.sleep(0.02)
        return in_halves(self, model, x, y)
    monkeypatch.setattr(FastEngine, "_train_step_in_halves", slow_halves)
    monkeypatch.setattr(FastEngine, "_train_whole", lambda self, *args: ways.append("W") or whole(self, *args))
    utils.set_num_threads(2)
    try:
        model = agree_with_reference(steps=12)
    finally:
        utils.set_num_threads(None)
    assert "".join(ways) == "W" + "H" + "HWWH" + "WWW" + "W" + "HW"
    [trial] = model.engine._trials.values()
    assert trial.trials == 1 and not trial.halves_pay


def test_a_measurement_that_needs_another_choice_does_not_wait_for_itself(tuning_on, monkeypatch):
    """Measuring one choice may need another (a conv's im2col products ask whether their cuts
    pay): a choice decided while another is being decided, in the same thread, must not
    deadlock, and both land in the cache file."""
    monkeypatch.setitem(tuning._registered, "inner", (Measure(), False))
    monkeypatch.setitem(tuning._registered, "outer", (lambda: tuning.choice("inner"), False))
    made = []
    thread = threading.Thread(target=lambda: made.append(tuning.choice("outer")), daemon=True)
    thread.start()
    thread.join(timeout=60)
    assert made == [True], "the outer choice waited for its own measurement"
    [choices] = json.loads(tuning_on.read_text()).values()
    assert choices == {"inner": True, "outer": True}
