"""Speed choices the fast engine makes by measuring them on the machine it runs on.

Which way of doing something is fastest depends on the CPU and on the BLAS kernel NumPy
picked for it: a cut that pays on one machine costs on another (benchmarks/README.md,
"Where the fast engine's thresholds come from"). So rather than constants, a choice is
measured the first time this process needs it, in a fraction of a second, and the answer
is kept in a small JSON file beside numba's cache of the kernels:

    {machine key: {choice name: value}}

The machine key (`machine_key`) is the CPU's model name, its vector instructions
(avx512f, avx2 or other), NumPy's version and its BLAS kernel. A choice cached under one
key is never used under another, so a cache copied to (or shared with) another machine is
measured again there.

    choice(name)            the value of a registered choice: cached in this process, else
                            read from the file, else measured (and written to the file)
    register(name, measure, default)    what measures a choice, and its safe default
    decide_all()            every registered choice now (a forked worker inherits them)
    median_times(ways, rounds)    what a measurement compares: each way's median time

Environment:
    TINYCNN_TUNING=off      measure nothing, read and write no file: every choice takes its
                            safe default (deterministic runs: the test suite sets it)
    TINYCNN_TUNING_FILE     the cache file to use instead of the one beside numba's cache

A cache that cannot be read, holds something else than the layout above, or cannot be
written never stops the engine: the choice is measured again (and the file rewritten where
possible), with one warning per process that names the file and what to do about it.
"""
import json
import os
import threading
import time
import warnings

import numpy as np

from tinycnn import utils


FILE_NAME = "tinycnn-tuning.json"
_registered = {}                # name -> (measure function, safe default)
_decided = {}                   # name -> value, this process's answers
_lock = threading.RLock()       # re-entrant: measuring one choice may need another (a conv's
                                # measurement runs matmul, which asks whether its cuts pay)
_warned = set()                 # cache files already warned about in this process


def enabled():
    """False when TINYCNN_TUNING is "off" (or "0", "no", "false"): safe defaults, no measuring."""
    return os.environ.get("TINYCNN_TUNING", "").strip().lower() not in ("off", "0", "no", "false")


def register(name, measure, default):
    """Make `name` a choice: measure() -> its value on this machine; `default` (of the same
    type) where measuring is off or fails."""
    _registered[name] = (measure, default)


def choice(name):
    """The value of choice `name` in this process (decided once, at the first call)."""
    value = _decided.get(name)
    if value is None:
        with _lock:
            if name not in _decided:
                _decided[name] = _decide(name)
            value = _decided[name]
    return value


def decide_all():
    """Decide every registered choice now (before a fork: the child then makes the same ones)."""
    for name in list(_registered):
        choice(name)


def _reset_after_fork():
    global _lock
    _lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def median_times(ways, rounds, calls=1):
    """{name: the median seconds of `calls` calls of ways[name]()} over `rounds` rounds.

    Each way is called once first (to warm the caches and BLAS's buffers); then each round
    times every way, in an order that flips from round to round, so that the machine's
    drift falls on all of them."""
    for run in ways.values():
        run()
    names = list(ways)
    times = {name: [] for name in names}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            start = time.perf_counter()
            for _ in range(calls):
                ways[name]()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(seconds)) for name, seconds in times.items()}


# ---------------------------------------------------------------------------
# Deciding: the file's value for this machine, else a measurement
# ---------------------------------------------------------------------------
def _decide(name):
    measure, default = _registered[name]
    if not enabled():
        return default
    path, key = cache_path(), machine_key()
    cache, problem = _read(path) if path else ({}, "cannot be placed: numba has no cache folder here")
    entry = cache.get(key, {})
    if name in entry:
        if type(entry[name]) is type(default):
            return entry[name]
        problem = problem or f"holds a {type(entry[name]).__name__} for {name!r}, not a {type(default).__name__}"
    try:
        value = measure()
    except Exception as error:                 # a choice must never stop the engine
        _warn_once(path, f"could not measure {name!r} ({error!r}); using its safe default")
        return default
    if type(value) is not type(default):
        return default
    if path:
        cache = _read(path)[0] or cache        # again: a choice decided while measuring wrote it
        cache.setdefault(key, {})[name] = value
        problem = _write(path, cache) or problem
    if problem:
        _warn_once(path, problem)
    return value


def _read(path):
    """(the cache {key: {name: value}}, None) or ({}, what is wrong with the file)."""
    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
    except FileNotFoundError:
        return {}, None
    except (OSError, ValueError) as error:      # unreadable, not UTF-8, not JSON
        return {}, f"cannot be read ({error})"
    if not isinstance(data, dict) or not all(isinstance(entry, dict) for entry in data.values()):
        return {}, "does not hold {machine: {choice: value}}"
    return data, None


def _write(path, cache):
    """Write the cache whole (utils.atomic_write: no half-written file, no temporary left);
    None, or what went wrong."""
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with utils.atomic_write(path, "w") as file:
            json.dump(cache, file, indent=1, sort_keys=True)
    except OSError as error:
        return f"cannot be written ({error})"
    return None


def _warn_once(path, problem):
    if path in _warned:
        return
    _warned.add(path)
    warnings.warn(f"tinycnn: the fast engine's tuning cache {path} {problem}, so its speed choices are "
                  "measured again in this process. To fix it, delete the file or make its folder writable, "
                  "or set TINYCNN_TUNING_FILE to a writable file (TINYCNN_TUNING=off: no measuring).",
                  RuntimeWarning, stacklevel=4)


# ---------------------------------------------------------------------------
# Where the cache lives, and which machine this is
# ---------------------------------------------------------------------------
def cache_path():
    """TINYCNN_TUNING_FILE, else FILE_NAME in the folder of numba's cache of the kernels
    (the __pycache__ beside kernels.py, or NUMBA_CACHE_DIR's); None if there is none."""
    if os.environ.get("TINYCNN_TUNING_FILE"):
        return os.environ["TINYCNN_TUNING_FILE"]
    from tinycnn.engines.fast import kernels       # (kernels registers its choices here)
    for kernel in vars(kernels).values():
        index = getattr(getattr(getattr(kernel, "_cache", None), "_cache_file", None), "_index_path", None)
        if isinstance(index, str):
            return os.path.join(os.path.dirname(index), FILE_NAME)
    folder = os.environ.get("NUMBA_CACHE_DIR")
    return os.path.join(folder, FILE_NAME) if folder else None


def machine_key():
    """"CPU model | ISA level | numpy version | BLAS kernel": what a choice depends on."""
    return " | ".join((cpu_model(), isa_level(), f"numpy {np.__version__}", blas_kernel()))


def _cpuinfo():
    """The first processor's fields in /proc/cpuinfo ({} where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as file:
            text = file.read().split("\n\n")[0]
    except OSError:
        return {}
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def cpu_model():
    """The CPU's model name, with its family and model numbers where /proc/cpuinfo gives them
    (a virtual machine may show only "AMD EPYC")."""
    info = _cpuinfo()
    name = info.get("model name")
    if name is None:
        import platform
        return platform.processor() or platform.machine() or "unknown"
    numbers = [f"{field} {info[field]}" for field in ("cpu family", "model") if field in info]
    return f"{name} ({', '.join(numbers)})" if numbers else name


def isa_level():
    """"avx512f", "avx2" or "other": the widest vectors the CPU offers (its /proc/cpuinfo flags,
    else LLVM's view of the host, which numba compiles for)."""
    flags = set(_cpuinfo().get("flags", "").split())
    if not flags:
        try:
            import llvmlite.binding
            flags = {name for name, on in llvmlite.binding.get_host_cpu_features().items() if on}
        except Exception:                      # (no llvmlite, an odd platform)
            flags = set()
    return next((level for level in ("avx512f", "avx2") if level in flags), "other")


def blas_kernel():
    """NumPy's BLAS (name and version from numpy.show_config) and, for OpenBLAS, the kernel
    it picked for this CPU at run time ("SkylakeX", "Haswell", "Zen"); "unknown" if NumPy
    does not say."""
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        name = f"{blas.get('name', 'unknown')} {blas.get('version', '')}".strip()
    except Exception:                          # (an older NumPy, another layout)
        name = "unknown"
    from tinycnn.engines.fast import parallel
    core = parallel.openblas_core_name()
    return f"{name} {core}" if core else name
