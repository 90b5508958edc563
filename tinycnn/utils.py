"""Small helpers shared by the whole library: labels to one-hot, the random seed, the float
type, how many threads the fast engine uses, and files written whole or not at all."""
import contextlib
import os
import re
import tempfile
import time

import numpy as np

# ---------------------------------------------------------------------------
# Randomness: one Generator for everything (initialisation, shuffling, dropout...)
# ---------------------------------------------------------------------------
_rng = np.random.default_rng()


def set_random_seed(seed):
    """Seed everything random in tinycnn, as `keras.utils.set_random_seed` does.

    Two runs that call `set_random_seed(s)` first, then build and fit the same model
    on the same data, give bit-identical weights and history on the same machine.
    """
    global _rng
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"set_random_seed: seed must be a non-negative integer, got {seed!r}")
    _rng = np.random.default_rng(int(seed))
    np.random.seed(int(seed) % 2**32)   # for user code that still uses the legacy global state


def get_rng():
    """The library's random Generator (re-created by `set_random_seed`)."""
    return _rng


# ---------------------------------------------------------------------------
# The default float type of weights and activations
# ---------------------------------------------------------------------------
_floatx = "float32"


def floatx():
    """The default float type, 'float32' (like `keras.backend.floatx()`)."""
    return _floatx


def set_floatx(dtype):
    """Set the default float type of new layers: 'float32' or 'float64'."""
    global _floatx
    dtype = np.dtype(dtype).name
    if dtype not in ("float32", "float64"):
        raise ValueError(f"set_floatx: dtype must be 'float32' or 'float64', got {dtype!r}")
    _floatx = dtype


# ---------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------
def to_categorical(y, num_classes=None, dtype="float32"):
    """Integer class labels -> one-hot rows, as `keras.utils.to_categorical`.

    y: integer labels of any shape S, values in [0, num_classes).
    Returns an array of shape S + (num_classes,) (a trailing axis of size 1 in y is
    dropped first, as Keras does), with a 1 at each label and 0 elsewhere.
    """
    y = np.asarray(y)
    if y.size and not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.bool_) or not np.issubdtype(y.dtype, np.number):
            raise ValueError(f"to_categorical: labels must be integers, got dtype {y.dtype}")
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            bad = y[~np.isfinite(y) | (y != np.round(y))].ravel()[0]
            raise ValueError(f"to_categorical: labels must be whole numbers, found {bad!r}")
    if y.size and y.max() > np.iinfo(np.int64).max // 2:
        raise ValueError(f"to_categorical: label {y.max()} is too large to be a class index")
    y = y.astype(np.int64)
    if y.ndim > 1 and y.shape[-1] == 1:
        y = y.reshape(y.shape[:-1])
    if y.size and y.min() < 0:
        raise ValueError(f"to_categorical: labels must be >= 0, found {y.min()}")
    if num_classes is None:
        num_classes = int(y.max()) + 1 if y.size else 0
    else:
        if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 1:
            raise ValueError(f"to_categorical: num_classes must be a positive integer, got {num_classes!r}")
        num_classes = int(num_classes)
        if y.size and y.max() >= num_classes:
            raise ValueError(
                f"to_categorical: label {y.max()} is out of range for num_classes={num_classes} "
                f"(labels must lie in [0, {num_classes - 1}])")
    out = np.zeros(y.shape + (num_classes,), dtype=dtype)
    np.put_along_axis(out, y[..., None], 1, axis=-1)
    return out


# ---------------------------------------------------------------------------
# Threads: how many the fast engine uses
# ---------------------------------------------------------------------------
# The fast engine uses up to two threads while it trains and predicts
# (tinycnn.engines.fast.parallel): with two, each batch is cut in two halves that run side
# by side. The default is two threads where the process may use two cores or more, else
# one; set_num_threads(n) or the environment variable TINYCNN_NUM_THREADS chooses. More
# than two changes nothing yet. The reference engine always runs in the calling thread.
_num_threads = None


def set_num_threads(n):
    """Threads tinycnn uses in fit/evaluate/predict: 1, or 2 (and more) to cut batches in two halves.

    n: a positive int, or None to go back to the default (TINYCNN_NUM_THREADS, else 2 where
    the process may use 2 cores or more, else 1). Returns the setting before (an int, or None
    for the default), so a caller can put it back.
    """
    global _num_threads
    if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1):
        raise ValueError(f"set_num_threads: n must be a positive integer or None, got {n!r}")
    before, _num_threads = _num_threads, None if n is None else int(n)
    return before


def _usable_cores():
    try:
        return len(os.sched_getaffinity(0))      # the cores this process may run on (Linux)
    except AttributeError:
        return os.cpu_count() or 1


def get_num_threads():
    """set_num_threads's value, else $TINYCNN_NUM_THREADS, else min(2, usable cores)."""
    if _num_threads is not None:
        return _num_threads
    value = os.environ.get("TINYCNN_NUM_THREADS", "")
    if value == "":
        return min(2, _usable_cores())
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"TINYCNN_NUM_THREADS must be a positive integer, got {value!r}")
    return int(value)


# ---------------------------------------------------------------------------
# Files: written whole or not at all
# ---------------------------------------------------------------------------
# A temporary file's name holds the PID of the process writing it: `PREFIX PID . random SUFFIX`.
# A process killed while writing (SIGKILL, a power cut) cannot remove its temporary file, so
# the next writer of the same kind removes it, once it is stale: its PID runs no process on
# this machine, and it was last written STALE_AFTER_S ago or more. (The age rule spares a
# writer on another machine that shares the folder, whose PID means nothing here.)
STALE_AFTER_S = 10 * 60


def temporary_file(folder, prefix, suffix):
    """A new, empty temporary file in `folder` named `prefix PID . random suffix` -> (fd, path)."""
    return tempfile.mkstemp(dir=folder, prefix=f"{prefix}{os.getpid()}.", suffix=suffix)


def remove_stale_temporaries(folder, prefix, suffix):
    """Remove the stale files that temporary_file(folder, prefix, suffix) made (see STALE_AFTER_S).

    Files of any other name, and temporary files whose writer may still run, are left alone.
    Returns the names removed. Never raises: a folder that cannot be read or written is skipped.
    """
    name_rule = re.compile(re.escape(prefix) + r"(\d+)\.[a-z0-9_]+" + re.escape(suffix))
    removed = []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                match = name_rule.fullmatch(entry.name)
                if match and _is_stale(entry, int(match[1])):
                    os.remove(entry.path)
                    removed.append(entry.name)
    except OSError:
        pass
    return removed


def _is_stale(entry, pid):
    """A regular file, untouched for STALE_AFTER_S, whose writer `pid` no longer runs here."""
    if not entry.is_file(follow_symlinks=False):
        return False
    age = time.time() - entry.stat(follow_symlinks=False).st_mtime
    return age >= STALE_AFTER_S and not _process_runs(pid)


def _process_runs(pid):
    """True if a process with this PID runs on this machine, or if we cannot tell."""
    if os.name != "posix":
        return True                      # (on Windows, os.kill(pid, 0) would stop the process)
    try:
        os.kill(pid, 0)                  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except OverflowError:
        return False                     # not a PID at all
    except OSError:
        return True                      # e.g. PermissionError: it runs, as another user
    return True


def _atomic_write_naming(path):
    """(folder, prefix, suffix) of atomic_write(path)'s temporary files: `.NAME.PID.random.tmp`."""
    folder = os.path.dirname(os.path.abspath(path))
    return folder, "." + os.path.basename(path) + ".", ".tmp"


def remove_interrupted_writes(path):
    """Remove the temporary files that interrupted atomic_write(path) calls left beside `path`
    (only stale ones: see STALE_AFTER_S). Saving and loading a model call it."""
    return remove_stale_temporaries(*_atomic_write_naming(path))


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """Write `path` through a temporary file beside it, renamed into place only on success.

        with atomic_write("model.npz") as file:
            file.write(...)

    Readers see the old file or the new one, never half of one: the data is flushed to disk,
    then os.replace swaps it in with one rename. On any error (Ctrl-C too) the temporary file
    is removed and `path` is left as it was. A process killed while writing leaves its
    temporary file `.NAME.PID.random.tmp`; a later atomic_write(path) removes it once stale.
    """
    path = os.fspath(path)
    remove_interrupted_writes(path)
    handle, temporary = temporary_file(*_atomic_write_naming(path))
    try:
        with os.fdopen(handle, mode) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)          # mkstemp makes it private (0600): the usual mode
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
