"""Small utilities shared by the tests (any test file may import them: `from helpers import ...`)."""
import os
import sys

import numpy as np


def installed_command():
    """The `tinycnn` command as the README runs it: the script pip put beside this Python
    (`.venv/bin/tinycnn`), found without PATH, which need not hold the virtual environment."""
    path = os.path.join(os.path.dirname(sys.executable), "tinycnn")
    assert os.access(path, os.X_OK), (f"no `tinycnn` command beside {sys.executable}; install the "
                                      f"package into this Python first: {sys.executable} -m pip install -e .")
    return [path]


def rel_error(a, b):
    """max |a - b| / max(max |a|, max |b|): the worst difference relative to the arrays' size.

    0 when both are all zeros. Arrays must have the same shape.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, f"shapes differ: {a.shape} vs {b.shape}"
    if a.size == 0:
        return 0.0
    scale = max(np.abs(a).max(), np.abs(b).max())
    return float(np.abs(a - b).max() / scale) if scale > 0 else 0.0


def distinct_values(rng, shape, gap=0.1):
    """An array of `shape` whose values are all different, at least `gap` apart (a shuffled ramp).

    For max pooling's gradient check: no ties, and no central-difference step can change a winner.
    """
    n = int(np.prod(shape))
    return (rng.permutation(n) - n / 2).reshape(shape) * gap


def one_hot(labels, classes, dtype=np.float64):
    """Integer labels (N,) -> one-hot rows (N, classes)."""
    out = np.zeros((len(labels), classes), dtype=dtype)
    out[np.arange(len(labels)), labels] = 1
    return out


def read_only_install(tmp_path, module_file, copy_name):
    """A read-only install of one module, for a subprocess: module_file copied into tmp_path
    as copy_name, with no writable __pycache__ beside it and NUMBA_CACHE_DIR and ~/.cache
    unusable, so numba finds nowhere to cache. -> the environment to run it in (cwd tmp_path)."""
    import shutil
    shutil.copy(module_file, tmp_path / copy_name)
    (tmp_path / "__pycache__").write_text("a file where numba wants a directory")
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")
    return dict(os.environ, NUMBA_CACHE_DIR=str(blocker / "cache"), XDG_CACHE_HOME=str(blocker / "xdg"),
                HOME=str(blocker / "home"), PYTHONDONTWRITEBYTECODE="1")
