"""Subnormal floats flushed to zero while the fast engine runs (tinycnn/engines/fast/denormals.py):
on inside fit on the calling thread and the worker thread, as they were after it; the
reference engine untouched."""
import numpy as np
import pytest

from tinycnn import callbacks, utils
from tinycnn import layers as L
from tinycnn.engines.fast import denormals, parallel
from tinycnn.models import Sequential

pytestmark = pytest.mark.skipif(not denormals.ON_X86, reason="MXCSR is x86's register")

SMALLEST_NORMAL = np.finfo(np.float32).tiny


def halved(value):
    """value / 2 in float32, computed in this thread (0 under flush-to-zero)."""
    return np.multiply(np.float32(value), np.float32(0.5))


class SeesTheFlags(callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        self.flags = denormals.flags_on()
        self.worker_flags = parallel.run_both(lambda: None, denormals.flags_on)[1]


def tiny_model(engine):
    model = Sequential([L.Conv2D(2, 3, activation="relu", input_shape=(6, 6, 1)), L.Flatten(), L.Dense(3, activation="softmax")])
    model.compile(optimizer="sgd", loss="categorical_crossentropy", engine=engine)
    return model


def test_a_fast_fit_flushes_to_zero_and_puts_the_register_back():
    assert not denormals.flags_on() and halved(SMALLEST_NORMAL) > 0       # NumPy's default: subnormals kept
    seen = SeesTheFlags()
    x, y = np.ones((4, 6, 6, 1), np.float32), np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]
    utils.set_num_threads(2)
    try:
        tiny_model("fast").fit(x, y, epochs=1, batch_size=4, verbose=0, callbacks=[seen])
    finally:
        utils.set_num_threads(None)
    assert seen.flags and seen.worker_flags
    assert not denormals.flags_on() and halved(SMALLEST_NORMAL) > 0


def test_the_reference_engine_keeps_subnormals():
    seen = SeesTheFlags()
    x, y = np.ones((4, 6, 6, 1), np.float32), np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]
    tiny_model("reference").fit(x, y, epochs=1, batch_size=4, verbose=0, callbacks=[seen])
    assert not seen.flags


def test_the_flags_flush_what_they_say():
    subnormal = np.frombuffer(np.uint32(1).tobytes(), np.float32)        # 1.4e-45, made without arithmetic
    with denormals.flushed_to_zero():
        assert denormals.flags_on()
        assert halved(SMALLEST_NORMAL) == 0                              # FTZ: a subnormal result is 0
        assert (subnormal * np.float32(1e30))[0] == 0                    # DAZ: a subnormal input is 0
    assert not denormals.flags_on()
    assert (subnormal * np.float32(1e30))[0] > 0 and halved(SMALLEST_NORMAL) > 0
