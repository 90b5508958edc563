"""Subnormal floats flushed to zero while the fast engine computes a step
(tinycnn/engines/fast/denormals.py): on inside each step and in the worker thread, off again
after it (callbacks and the user's code see the register as it was), the reference engine
untouched, and a read-only install still importing."""
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from helpers import read_only_install
from tinycnn import callbacks
from tinycnn import layers as L
from tinycnn.engines.fast import denormals, parallel
from tinycnn.engines.fast.engine import FastEngine
from tinycnn.models import Sequential

pytestmark = pytest.mark.skipif(not denormals.ON_X86, reason="MXCSR is x86's register")

SMALLEST_NORMAL = np.finfo(np.float32).tiny
X, Y = np.ones((4, 6, 6, 1), np.float32), np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]


def halved(value):
    """value / 2 in float32, computed in this thread (0 under flush-to-zero)."""
    return np.multiply(np.float32(value), np.float32(0.5))


class SeesTheFlags(callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        self.flags_in_callback = denormals.flags_on()


def tiny_model(engine):
    model = Sequential([L.Conv2D(2, 3, activation="relu", input_shape=(6, 6, 1)), L.Flatten(),
                        L.Dense(3, activation="softmax")])
    model.compile(optimizer="sgd", loss="categorical_crossentropy", engine=engine)
    return model


def test_a_fast_step_flushes_to_zero_and_puts_the_flags_back(monkeypatch):
    seen, whole = [], FastEngine._train_whole
    monkeypatch.setattr(FastEngine, "_train_whole",
                        lambda self, *args: seen.append(denormals.flags_on()) or whole(self, *args))
    assert not denormals.flags_on() and halved(SMALLEST_NORMAL) > 0       # NumPy's default: subnormals kept
    callback = SeesTheFlags()
    tiny_model("fast").fit(X, Y, epochs=2, batch_size=2, verbose=0, callbacks=[callback])
    assert seen == [True] * 4
    assert not callback.flags_in_callback                                 # between steps: the user's register
    assert not denormals.flags_on() and halved(SMALLEST_NORMAL) > 0


def test_flags_the_user_set_stay_set_and_a_failing_step_restores_them(monkeypatch):
    model = tiny_model("fast")
    with denormals.flushed_to_zero():                                     # the user's own choice
        model.fit(X, Y, epochs=1, batch_size=2, verbose=0)
        assert denormals.flags_on()
    monkeypatch.setattr(FastEngine, "_train_whole", lambda self, *args: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        model.fit(X, Y, epochs=1, batch_size=2, verbose=0)
    assert not denormals.flags_on()


def test_the_worker_thread_flushes_as_the_calling_step_does():
    def second():
        return threading.current_thread().name, denormals.flags_on()
    for _ in range(20):                          # until the worker, not this thread, ran the second
        _, (thread, flags) = parallel.run_both(lambda: time.sleep(0.05), second)
        if thread == "tinycnn-worker":
            break
    assert thread == "tinycnn-worker" and flags


def test_the_reference_engine_keeps_subnormals():
    callback = SeesTheFlags()
    tiny_model("reference").fit(X, Y, epochs=1, batch_size=4, verbose=0, callbacks=[callback])
    assert not callback.flags_in_callback and not denormals.flags_on()


def test_the_flags_flush_what_they_say():
    subnormal = np.frombuffer(np.uint32(1).tobytes(), np.float32)        # 1.4e-45, made without arithmetic
    with denormals.flushed_to_zero():
        assert denormals.flags_on()
        assert halved(SMALLEST_NORMAL) == 0                              # FTZ: a subnormal result is 0
        assert (subnormal * np.float32(1e30))[0] == 0                    # DAZ: a subnormal input is 0
    assert not denormals.flags_on()
    assert (subnormal * np.float32(1e30))[0] > 0 and halved(SMALLEST_NORMAL) > 0


def test_it_imports_and_works_where_numba_cannot_write_a_cache(tmp_path):
    """A read-only install (as tests/test_kernels.py makes one): the module falls back to no cache."""
    env = read_only_install(tmp_path, denormals.__file__, "denormals_copy.py")
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path)] + sys.path)       # (it imports tinycnn's kernels)
    script = "import denormals_copy as D\nwith D.flushed_to_zero():\n    print(D.flags_on())\nprint(D.flags_on())"
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "False"]
