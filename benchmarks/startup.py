"""tinycnn's start-up costs: import time, numba compilation with an empty and a warm cache.

    python3 benchmarks/startup.py              # 7 import runs each, 1 cold + 3 warm compile runs
    python3 benchmarks/startup.py --keras      # also `import tensorflow` / `import keras` for reference

1. Import: a fresh interpreter per run (`python3 -X importtime` is not used; the child times
   its own `import` with perf_counter), median of --runs. `import numpy` is shown as the
   baseline every tinycnn import pays.
2. Compilation: a fresh interpreter with NUMBA_CACHE_DIR set to a new empty temporary folder
   imports tinycnn, builds each of the notebook's three models, and times its first
   training step (fit on 32 images), then the same step again (the fastest of 5). The first
   step minus that steady step is the compilation (and first-call) cost. The same is done
   for the first predict call. Then --warm-runs more fresh interpreters with the same,
   now filled, cache directory: the warm-cache cost. All three models run in one process,
   in the order cnn_categorical, simple_dense, cnn_sparse, so a kernel shared by two models
   is compiled once, for the first.

Writes DIR/startup.json and DIR/startup.md (DIR defaults to benchmarks/results/).
"""
import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from _sides import MODELS, cpu_model  # noqa: E402

IMPORT_SNIPPET = """
import time
t = time.perf_counter()
{stmt}
print(repr(time.perf_counter() - t))
"""

COMPILE_CHILD = r"""
import json, os, statistics, sys, time
t0 = time.perf_counter()
import numpy as np
import tinycnn, tinycnn.layers, tinycnn.models
sys.path.insert(0, {here!r})
from _sides import tinycnn_build, prepare
out = {{"import_s": time.perf_counter() - t0, "models": {{}}}}
rng = np.random.default_rng(0)
for name in {models!r}:
    x8 = rng.integers(0, 256, size=(64, 28, 28), dtype=np.uint8)
    y8 = rng.integers(0, 10, size=64)
    x, y = prepare(name, x8, y8)
    t = time.perf_counter()
    tinycnn.utils.set_random_seed(0)
    model, _ = tinycnn_build(name)
    build_s = time.perf_counter() - t
    def step():
        t = time.perf_counter()
        model.fit(x[:32], y[:32], epochs=1, batch_size=32, verbose=0)
        return time.perf_counter() - t
    def pred():
        t = time.perf_counter()
        model.predict(x, batch_size=32)
        return time.perf_counter() - t
    first = step()
    steady = min(step() for _ in range(5))          # the fastest: compile is not under-estimated
    pfirst = pred()
    psteady = min(pred() for _ in range(5))
    out["models"][name] = dict(build_s=build_s, first_step_s=first, steady_step_s=steady,
                               compile_step_s=first - steady, first_predict_s=pfirst,
                               steady_predict_s=psteady, compile_predict_s=pfirst - psteady)
out["total_compile_s"] = sum(m["compile_step_s"] + m["compile_predict_s"] for m in out["models"].values())
out["total_s"] = time.perf_counter() - t0
try:
    import numba
    out["numba"] = numba.__version__
    out["cache_files"] = sum(len(f) for _, _, f in os.walk(os.environ["NUMBA_CACHE_DIR"]))
except Exception:
    pass
print(json.dumps(out))
"""


def child_env(args, **extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **extra)
    if args.blas_env == "unset":
        env.pop("OPENBLAS_CORETYPE", None)
        env.pop("OPENBLAS_L2_SIZE", None)
    return env


def time_import(stmt, runs, args):
    ts = []
    for _ in range(runs):
        p = subprocess.run([sys.executable, "-c", IMPORT_SNIPPET.format(stmt=stmt)], env=child_env(args),
                           capture_output=True, text=True, cwd=HERE)
        if p.returncode != 0:
            return {"error": p.stderr.strip().splitlines()[-1:]}
        ts.append(float(p.stdout.strip().splitlines()[-1]))
    return {"median_s": statistics.median(ts), "min_s": min(ts), "all_s": ts}


def compile_run(cache_dir, models, args):
    code = COMPILE_CHILD.format(here=HERE, models=list(models))
    p = subprocess.run([sys.executable, "-c", code], env=child_env(args, NUMBA_CACHE_DIR=cache_dir),
                       capture_output=True, text=True, cwd=HERE)
    if p.returncode != 0:
        return {"error": p.stderr.strip().splitlines()[-5:]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=7, help="fresh interpreters per import statement")
    p.add_argument("--warm-runs", type=int, default=3, help="fresh interpreters with the filled cache")
    p.add_argument("--model", action="append", choices=MODELS, help="default all three")
    p.add_argument("--keras", action="store_true", help="also time importing tensorflow and keras")
    p.add_argument("--blas-env", choices=("unset", "inherit"), default="unset",
                   help="as in vs_keras.py: unset (default) or keep OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    args = p.parse_args(argv)
    models = args.model or list(MODELS)
    os.makedirs(args.out, exist_ok=True)

    res = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "cpu": cpu_model(), "cpu_count": os.cpu_count(), "imports": {}}
    stmts = ["pass", "import numpy", "import tinycnn", "import tinycnn.layers", "import tinycnn.models",
             "import tinycnn.layers, tinycnn.models, tinycnn.optimizers, tinycnn.losses"]
    if args.keras:
        stmts += ["import tensorflow", "import keras"]
    for stmt in stmts:
        r = time_import(stmt, args.runs, args)
        res["imports"][stmt] = r
        print(f"{stmt:75s} " + (f"{r['median_s']:.3f} s (median of {args.runs}; min {r['min_s']:.3f})"
                                 if "median_s" in r else f"FAILED {r['error']}"), flush=True)

    cache = tempfile.mkdtemp(prefix="tinycnn-numba-cache-")
    try:
        cold = compile_run(cache, models, args)
        warm = [compile_run(cache, models, args) for _ in range(args.warm_runs)]
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    res["cold"] = cold
    res["warm"] = warm

    lines = [f"tinycnn start-up, {res['date']}, {res['cpu']}, {res['cpu_count']} cores (shared machine)", "",
             "| import | median s | min s |", "|---|---|---|"]
    for stmt, r in res["imports"].items():
        lines.append(f"| `{stmt}` | " + (f"{r['median_s']:.3f} | {r['min_s']:.3f} |" if "median_s" in r else "failed | |"))
    lines += ["", "| numba cache | model | first step s | steady step s (fastest of 5) | compile (first - steady) s | "
              "first predict s | steady predict s |", "|---|---|---|---|---|---|---|"]
    good_warm = [w for w in warm if "error" not in w]
    for label, runs in (("empty", [cold] if "error" not in cold else []), ("warm (median)", good_warm)):
        if not runs:
            lines.append(f"| {label} | failed: {cold.get('error') if label == 'empty' else warm[:1]} | | | | | |")
            continue
        for m in models:
            md = lambda k: statistics.median(r["models"][m][k] for r in runs)  # noqa: E731
            lines.append(f"| {label} | {m} | {md('first_step_s'):.3f} | {md('steady_step_s'):.4f} | "
                         f"{md('compile_step_s'):.3f} | {md('first_predict_s'):.3f} | {md('steady_predict_s'):.4f} |")
        tot = statistics.median(r["total_compile_s"] for r in runs)
        imp = statistics.median(r["import_s"] for r in runs)
        lines.append(f"| {label} | **all three: compile {tot:.2f} s**, import in that process {imp:.2f} s, "
                     f"whole process {statistics.median(r['total_s'] for r in runs):.2f} s | | | | | |")
    res["targets"] = {"import tinycnn <= 0.5 s": res["imports"]["import tinycnn"].get("median_s"),
                      "cold compile <= 15 s": cold.get("total_compile_s"),
                      "warm compile <= 1 s": statistics.median(w["total_compile_s"] for w in good_warm)
                      if good_warm else None}
    lines += ["", "Targets (issue 6): " + "; ".join(
        f"{k}: {'-' if v is None else f'{v:.2f} s'}" for k, v in res["targets"].items())]
    md = "\n".join(lines)
    print()
    print(md)
    with open(os.path.join(args.out, "startup.json"), "w") as f:
        json.dump(res, f, indent=1)
    with open(os.path.join(args.out, "startup.md"), "w") as f:
        f.write(f"Command: `python3 benchmarks/startup.py {' '.join(sys.argv[1:])}`\n\n{md}\n")
    return 0 if "error" not in cold else 1


if __name__ == "__main__":
    sys.exit(main())
