"""What machine a benchmark ran on, and how fast its float32 matrix product is right now.

    python3 benchmarks/_machine.py            # prints the record as JSON on its last line
    python3 benchmarks/_machine.py --no-matmul

machine_record() gives:
  cpu_model, cpu_family, cpu_model_number, cpu_stepping   from /proc/cpuinfo
  isa            "AVX-512" if avx512f is among the CPU's flags, else "AVX2", else "generic"
  cores          os.cpu_count(); affinity: the cores this process may use
  blas           NumPy's BLAS: library, version, its kernel chosen at run time (threadpoolctl's
                 internal_api / architecture when threadpoolctl is installed, else OpenBLAS's
                 get_corename through ctypes), its threads, the build configuration from
                 numpy.show_config() (whose arch name is the build machine's, not this one's),
                 and OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE as this process saw them: OpenBLAS
                 reads them once, when NumPy is imported, and CORETYPE overrides its choice
  versions       python, numpy, numba, tensorflow, keras, torch (installed distributions; none
                 is imported, so "-" means not installed)
  matmul         float32 n x n @ n x n through NumPy at `threads` BLAS threads: one warm-up
                 product, then the median of `runs` timed ones, in GFLOP/s (2 n^3 / s)
"""
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time

KNOWN_ISAS = ("AVX-512", "AVX2", "generic")


def cpuinfo():
    """The first processor's fields of /proc/cpuinfo (an empty dict where there is none)."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def isa_of(flags):
    flags = set(flags.split()) if isinstance(flags, str) else set(flags)
    return "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "generic"


def _version(*dists):
    for d in dists:
        try:
            return importlib.metadata.version(d)
        except importlib.metadata.PackageNotFoundError:
            pass
    return "-"


def _openblas_lib():
    import ctypes
    import glob

    import numpy as np
    libs = glob.glob(os.path.join(os.path.dirname(np.__file__), "..", "numpy.libs", "*openblas*"))
    return ctypes.CDLL(libs[0]) if libs else None


def _openblas_call(lib, names, restype=None, *args):
    for stem in names:
        for sym in (f"scipy_openblas_{stem}64_", f"scipy_openblas_{stem}", f"openblas_{stem}64_",
                    f"openblas_{stem}"):
            if lib is not None and hasattr(lib, sym):
                fn = getattr(lib, sym)
                fn.restype = restype
                return fn(*args)
    raise AttributeError(names)


def blas_record():
    """NumPy's BLAS and the kernel it runs (see the module's docstring)."""
    import numpy as np
    rec = {"library": None, "version": None, "internal_api": None, "architecture": None,
           "threads": None, "build_config": None, "source": None}
    try:
        from threadpoolctl import threadpool_info
        for info in threadpool_info():
            if info.get("user_api") == "blas":
                rec.update(library=os.path.basename(info.get("filepath", "")), version=info.get("version"),
                           internal_api=info.get("internal_api"), architecture=info.get("architecture"),
                           threads=info.get("num_threads"), source="threadpoolctl")
                break
    except ImportError:
        pass
    try:
        deps = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        rec["build_config"] = deps.get("openblas configuration")
        rec["library"] = rec["library"] or deps.get("name")
        rec["version"] = rec["version"] or deps.get("version")
        if rec["internal_api"] is None and "openblas" in (deps.get("name") or ""):
            rec["internal_api"] = "openblas"
    except Exception as e:  # old NumPy: no mode="dicts"
        rec["build_config_error"] = repr(e)
    if rec["architecture"] is None:
        try:
            import ctypes
            lib = _openblas_lib()
            rec["architecture"] = _openblas_call(lib, ("get_corename",), ctypes.c_char_p).decode()
            rec["threads"] = int(_openblas_call(lib, ("get_num_threads",), ctypes.c_int))
            rec["source"] = "OpenBLAS get_corename (ctypes)"
        except Exception as e:
            rec["architecture_error"] = repr(e)
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        rec[var] = os.environ.get(var)
    return rec


class _BlasThreads:
    """Set NumPy's BLAS threads for a block (threadpoolctl, else OpenBLAS's own call)."""

    def __init__(self, n):
        self.n, self.undo = n, None

    def __enter__(self):
        try:
            from threadpoolctl import threadpool_limits
            self.undo = threadpool_limits(limits=self.n, user_api="blas")
            self.how = "threadpoolctl"
        except ImportError:
            import ctypes
            try:
                lib = _openblas_lib()
                before = int(_openblas_call(lib, ("get_num_threads",), ctypes.c_int))
                _openblas_call(lib, ("set_num_threads",), None, ctypes.c_int(self.n))
                self.undo = lambda: _openblas_call(lib, ("set_num_threads",), None, ctypes.c_int(before))
                self.how = "openblas_set_num_threads"
            except Exception:
                self.how = "unchanged (no way to set them)"
        return self

    def __exit__(self, *exc):
        if hasattr(self.undo, "restore_original_limits"):
            self.undo.restore_original_limits()
        elif callable(self.undo):
            self.undo()


def matmul_rate(n=2048, threads=2, runs=5):
    """float32 n x n matrix product through NumPy at `threads` BLAS threads: GFLOP/s of each run and the median."""
    import numpy as np
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), np.float32)
    with _BlasThreads(threads) as bt:
        np.matmul(a, b, out=out)                       # warm-up: threads start, pages fault in
        secs = []
        for _ in range(runs):
            t = time.perf_counter()
            np.matmul(a, b, out=out)
            secs.append(time.perf_counter() - t)
    rates = [2 * n ** 3 / s / 1e9 for s in secs]
    return {"n": n, "threads": threads, "threads_set_by": bt.how, "runs": runs,
            "gflops_all": [round(r, 1) for r in rates], "gflops": statistics.median(rates)}


def machine_record(matmul=True, n=2048, threads=2, runs=5):
    """The record described in the module's docstring (matmul=False leaves the product out)."""
    info = cpuinfo()
    rec = {
        "cpu_model": info.get("model name") or platform.processor() or platform.machine(),
        "cpu_vendor": info.get("vendor_id"),
        "cpu_family": int(info["cpu family"]) if info.get("cpu family", "").isdigit() else None,
        "cpu_model_number": int(info["model"]) if info.get("model", "").isdigit() else None,
        "cpu_stepping": int(info["stepping"]) if info.get("stepping", "").isdigit() else None,
        "isa": isa_of(info.get("flags", "")),
        "cores": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "blas": blas_record(),
        "versions": {"python": platform.python_version(), "numpy": _version("numpy"),
                     "numba": _version("numba"), "tensorflow": _version("tensorflow-cpu", "tensorflow"),
                     "keras": _version("keras"), "torch": _version("torch")},
        "platform": platform.platform(),
        "load_average": os.getloadavg(),
    }
    rec["matmul"] = matmul_rate(n, threads, runs) if matmul else None
    return rec


def describe(rec):
    """The record in a few lines, for the console and the Markdown table."""
    b, v, mm = rec["blas"], rec["versions"], rec.get("matmul")
    kernel = b.get("architecture") or "?"
    core_env = b.get("OPENBLAS_CORETYPE")
    lines = [
        f"CPU: {rec['cpu_model']} (family {rec['cpu_family']}, model {rec['cpu_model_number']}, "
        f"stepping {rec['cpu_stepping']}), ISA {rec['isa']}, {rec['cores']} cores ({rec['affinity']} usable)",
        f"BLAS: {b.get('library')} {b.get('version')} ({b.get('internal_api')}), kernel {kernel}"
        f" [{b.get('source')}], {b.get('threads')} threads, OPENBLAS_CORETYPE="
        f"{core_env if core_env is not None else 'unset'}; build: {b.get('build_config')}",
        "Versions: " + ", ".join(f"{k} {x}" for k, x in v.items()),
    ]
    if mm:
        lines.append(f"float32 {mm['n']}x{mm['n']} matmul, {mm['threads']} threads: {mm['gflops']:.0f} GFLOP/s "
                     f"(median of {mm['runs']}: {mm['gflops_all']}; threads set by {mm['threads_set_by']})")
    return lines


def main(argv=None):
    import argparse
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--no-matmul", action="store_true")
    p.add_argument("--n", type=int, default=2048)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args(argv)
    rec = machine_record(not args.no_matmul, args.n, args.threads, args.runs)
    print("\n".join(describe(rec)), file=sys.stderr)
    print(json.dumps(rec))


if __name__ == "__main__":
    main()
