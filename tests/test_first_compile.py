"""The first run on a machine with an empty numba cache says, once, that the kernels are
compiling; a run with the cache filled says nothing. Each run is a fresh process whose
NUMBA_CACHE_DIR is a temporary folder, so the real cache is neither used nor touched."""
import os
import subprocess
import sys

from tinycnn.engines.fast.engine import COMPILING_MESSAGE

# A small dense model trained, evaluated and used to predict: three calls on the fast engine,
# and few kernels to compile.
SCRIPT = """
import numpy as np
from tinycnn.layers import Dense, Flatten
from tinycnn.models import Sequential
from tinycnn.engines.fast import engine
model = Sequential([Flatten(input_shape=(4, 4)), Dense(3, activation="relu"), Dense(2, activation="softmax")])
model.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"], engine="fast")
x = np.random.default_rng(0).random((8, 4, 4), dtype=np.float32)
y = np.arange(8) % 2
print("cold before:", engine.kernel_cache_is_cold())
model.fit(x, y, epochs=2, batch_size=4, verbose=0)
model.evaluate(x, y, verbose=0)
model.predict(x, verbose=0)
print("cold after:", engine.kernel_cache_is_cold())
"""


def run_with_cache(cache_dir):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir), OPENBLAS_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_an_empty_cache_is_announced_once_and_a_filled_one_not_at_all(tmp_path):
    first = run_with_cache(tmp_path)
    assert "cold before: True" in first.stdout and "cold after: False" in first.stdout
    assert first.stderr.count(COMPILING_MESSAGE) == 1               # three calls, one line
    assert any(name.endswith(".nbi") for _, _, names in os.walk(tmp_path) for name in names)

    second = run_with_cache(tmp_path)                               # the cache the first run filled
    assert "cold before: False" in second.stdout
    assert COMPILING_MESSAGE not in second.stderr and "compiling" not in second.stderr
