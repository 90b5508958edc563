"""Run a benchmark script without this machine's OpenBLAS guard (see benchmarks/README.md).

Imports nothing but os and sys, so it can run before NumPy loads: OpenBLAS reads
OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE once, when NumPy is imported.
"""
import os
import sys


def reexec_without_blas_env():
    """Re-run this script without OPENBLAS_CORETYPE/L2_SIZE (unless `--blas-env inherit` was given)."""
    if "--blas-env" in sys.argv and "inherit" in sys.argv:
        return
    if os.environ.get("OPENBLAS_CORETYPE") or os.environ.get("OPENBLAS_L2_SIZE"):
        env = dict(os.environ)
        env.pop("OPENBLAS_CORETYPE", None)
        env.pop("OPENBLAS_L2_SIZE", None)
        os.execve(sys.executable, [sys.executable] + sys.argv, env)
