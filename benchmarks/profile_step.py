"""Where one training step of each notebook model spends its time: per layer, per kernel.

    python3 benchmarks/profile_step.py                     # the three models, 150 steps each
    python3 benchmarks/profile_step.py --model cnn_sparse --steps 300 --cprofile

For each model (real data, batch 32, the zoo's model and optimizer):
  1. warm-up: fit on 2 batches (numba compiles here);
  2. the plain step time: `fit` over --steps batches, uninstrumented, divided by the steps,
     with tinycnn's default threads (two on 2+ cores: each batch in two halves side by side,
     tinycnn.engines.fast.parallel) and with one thread (TINYCNN_NUM_THREADS=1);
  3. the one-thread fit again with every layer's forward/backward (and backward_from_logits), every numba
     kernel in tinycnn.engines.fast.kernels, and the methods of the model's loss and optimizer objects
     wrapped in perf_counter timers. A kernel's time is also charged to the layer pass it
     ran in, so each layer pass splits into "numba kernels" and "the rest" (NumPy: the
     matrix products through OpenBLAS, sums, reshapes, Python);
  4. with --cprofile, cProfile over the same fit as a second view (top functions by own time).
All figures are milliseconds per training step (one batch). The per-layer split is taken
with one thread: with two, the halves' timers would overlap.

By default OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE are dropped (as in vs_keras.py); --blas-env
inherit keeps them. Writes DIR/profile_step.md (DIR: benchmarks/results/).
"""
import argparse
import collections
import cProfile
import functools
import io
import os
import pstats
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

if __name__ == "__main__":
    from _blas_env import reexec_without_blas_env
    reexec_without_blas_env()

import numpy as np  # noqa: E402

from _sides import MODELS, cpu_model, load_fashion_mnist, openblas_info, prepare, tinycnn_build  # noqa: E402


class Timers:
    """Accumulates seconds and calls per key; a stack says which layer pass is running."""

    def __init__(self):
        self.s = collections.defaultdict(float)
        self.n = collections.defaultdict(int)
        self.kernel_in = collections.defaultdict(float)   # layer pass -> seconds inside numba kernels
        self.stack = []
        self.patched = []                                  # (obj, attr, original, was_instance_attr)

    def wrap(self, obj, attr, key, is_layer_pass=False, is_kernel=False):
        """key: a string, or a function of the call's arguments that returns one."""
        orig = getattr(obj, attr)
        timers = self
        key_of = key if callable(key) else (lambda *a, **kw: key)

        @functools.wraps(orig)
        def timed(*a, **kw):
            key = key_of(*a, **kw)
            if is_layer_pass:
                timers.stack.append(key)
            t = time.perf_counter()
            try:
                return orig(*a, **kw)
            finally:
                dt = time.perf_counter() - t
                timers.s[key] += dt
                timers.n[key] += 1
                if is_layer_pass:
                    timers.stack.pop()
                if is_kernel and timers.stack:
                    timers.kernel_in[timers.stack[-1]] += dt

        self.patched.append((obj, attr, orig, attr in getattr(obj, "__dict__", {})))
        setattr(obj, attr, timed)

    def restore(self):
        for obj, attr, orig, was_instance in reversed(self.patched):
            if was_instance or isinstance(obj, type(sys)):
                setattr(obj, attr, orig)
            else:
                delattr(obj, attr)
        self.patched.clear()


def instrument(model, timers):
    import numba

    from tinycnn.engines.fast import kernels, ops

    def pass_name(op, *args, method):
        pool = f"+{op.pool.name}" if isinstance(op, ops.ConvReluPoolOp) else ""   # a conv and its pool in one op
        return f"{op.layer.name}{pool}.{method}"

    # the fast engine's ops (one per layer, or per fused Conv2D(relu) -> MaxPooling2D(2) pair)
    for cls in (ops.ConvOp, ops.PoolOp, ops.ConvReluPoolOp, ops.FlattenOp, ops.DenseOp, ops.ActivationOp, ops.LayerOp):
        for meth in ("forward", "backward", "backward_from_logits"):
            timers.wrap(cls, meth, functools.partial(pass_name, method=meth), is_layer_pass=True)
    dispatcher = getattr(numba.core.registry, "CPUDispatcher", ())
    for name in sorted(dir(kernels)):
        obj = getattr(kernels, name)
        if isinstance(obj, dispatcher):
            timers.wrap(kernels, name, f"kernel {name}", is_kernel=True)
    # the loss and optimizer objects the model holds (whatever their attribute names)
    for attr, obj in list(vars(model).items()):
        mod = type(obj).__module__ or ""
        if mod in ("tinycnn.losses", "tinycnn.optimizers"):
            kind = {"tinycnn.losses": "loss", "tinycnn.optimizers": "optimizer"}[mod]
            for meth in dir(type(obj)):
                if meth.startswith("_") or not callable(getattr(obj, meth, None)):
                    continue
                if meth in ("get_config", "from_config", "variables", "get_weights", "set_weights",
                            "update", "coefficients", "coefficients_for"):   # (inside apply_gradients)
                    continue
                timers.wrap(obj, meth, f"{kind} {type(obj).__name__}.{meth}")


def fit(model, x, y, bs):
    model.fit(x, y, epochs=1, batch_size=bs, shuffle=True, verbose=0)


def profile_model(name, steps, bs, use_cprofile, data):
    import tinycnn
    (xr, yr), _ = data
    x, y = prepare(name, xr[:steps * bs], yr[:steps * bs])
    tinycnn.utils.set_random_seed(0)
    model, _ = tinycnn_build(name)
    fit(model, x[:2 * bs], y[:2 * bs], bs)                     # warm-up / compile
    threads = tinycnn.utils.get_num_threads()
    t = time.perf_counter()
    fit(model, x, y, bs)
    plain = (time.perf_counter() - t) / steps

    tinycnn.utils.set_num_threads(1)
    timers = Timers()
    try:
        t = time.perf_counter()
        fit(model, x, y, bs)
        plain_one = (time.perf_counter() - t) / steps
        instrument(model, timers)
        t = time.perf_counter()
        fit(model, x, y, bs)
        timed_step = (time.perf_counter() - t) / steps
    finally:
        timers.restore()
        tinycnn.utils.set_num_threads(None)

    out = [f"### {name}: {plain * 1e3:.2f} ms per step plain with {threads} thread(s) "
           f"({plain * 60000 / bs:.1f} s per 60,000-image epoch); {plain_one * 1e3:.2f} ms with one thread, "
           f"{timed_step * 1e3:.2f} ms instrumented (one thread, below); {steps} steps of {bs}", "",
           "| layer pass | ms/step | % of step | in numba kernels ms | rest (NumPy/BLAS/Python) ms |",
           "|---|---|---|---|---|"]
    layer_total = 0.0
    passes = []                               # (label, key): each layer's passes, a fused pair's first
    for layer, after in zip(model.layers, model.layers[1:] + [None]):
        if after is not None:
            passes += [(f"{type(layer).__name__}+{type(after).__name__}", f"{layer.name}+{after.name}.{meth}")
                       for meth in ("forward", "backward")]
        passes += [(type(layer).__name__, f"{layer.name}.{meth}")
                   for meth in ("forward", "backward", "backward_from_logits")]
    for label, key in passes:
        if timers.n.get(key):
            ms = timers.s[key] / steps * 1e3
            kin = timers.kernel_in.get(key, 0.0) / steps * 1e3
            layer_total += ms
            out.append(f"| {label} {key} | {ms:.3f} | {100 * ms / (timed_step * 1e3):.0f}% | "
                       f"{kin:.3f} | {ms - kin:.3f} |")
    other = [(k, v) for k, v in timers.s.items() if k.startswith(("loss", "optimizer"))]
    other_ms = 0.0
    for k, v in sorted(other, key=lambda kv: -kv[1]):
        ms = v / steps * 1e3
        other_ms += ms
        out.append(f"| {k} | {ms:.3f} | {100 * ms / (timed_step * 1e3):.0f}% | | |")
    rest = timed_step * 1e3 - layer_total - other_ms
    out.append(f"| everything else in fit (batching, metrics, callbacks, Python) | {rest:.3f} | "
               f"{100 * rest / (timed_step * 1e3):.0f}% | | |")
    out += ["", "| numba kernel | calls/step | ms/step | % of step |", "|---|---|---|---|"]
    for k, v in sorted(((k, v) for k, v in timers.s.items() if k.startswith("kernel")), key=lambda kv: -kv[1]):
        ms = v / steps * 1e3
        out.append(f"| {k[7:]} | {timers.n[k] / steps:.1f} | {ms:.3f} | {100 * ms / (timed_step * 1e3):.0f}% |")

    if use_cprofile:
        prof = cProfile.Profile()
        prof.enable()
        fit(model, x, y, bs)
        prof.disable()
        buf = io.StringIO()
        st = pstats.Stats(prof, stream=buf).sort_stats("tottime")
        st.print_stats(18)
        out += ["", "cProfile, top functions by own time (whole fit, not per step):", "", "```",
                "\n".join(line for line in buf.getvalue().splitlines() if line.strip())[-4000:], "```"]
    return "\n".join(out), {"plain_step_s": plain, "threads": threads, "plain_one_thread_step_s": plain_one,
                            "instrumented_step_s": timed_step,
                            "timers": dict(timers.s), "calls": dict(timers.n)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", choices=MODELS)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--cprofile", action="store_true")
    p.add_argument("--blas-env", choices=("unset", "inherit"), default="unset")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    args = p.parse_args(argv)
    import numba
    data = load_fashion_mnist()
    ob = openblas_info()
    texts = []
    for name in args.model or MODELS:
        text, _ = profile_model(name, args.steps, args.batch_size, args.cprofile, data)
        print(text + "\n", flush=True)
        texts.append(text)
    try:
        layer = numba.threading_layer()
    except ValueError:
        layer = "not started"
    head = (f"profile of one training step, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {cpu_model()}, "
            f"{os.cpu_count()} cores (shared machine); OpenBLAS {ob.get('corename')} ({ob.get('threads')} threads); "
            f"numba {numba.__version__}, {numba.get_num_threads()} threads, threading layer {layer}; "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    print(head)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "profile_step.md"), "w") as f:
        f.write(f"Command: `python3 benchmarks/profile_step.py {' '.join(sys.argv[1:])}`\n\n{head}\n\n"
                + "\n\n".join(texts) + "\n")


if __name__ == "__main__":
    main()
