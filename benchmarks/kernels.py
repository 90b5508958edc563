"""tinycnn's kernels and layers against their plain-NumPy twins and the machine's matrix product.

    python3 benchmarks/kernels.py              # all cases, batch 32 (the notebook's shapes)
    python3 benchmarks/kernels.py --quick      # fewer samples
    python3 benchmarks/kernels.py --only conv  # cases whose name contains "conv"

Three tables, all measured in this one process, medians of --samples timings (each timing
runs the call enough times to last >= --min-time seconds, after one warm-up call, which
also triggers numba's compilation):

1. The ceiling: NumPy's float32 matrix product (OpenBLAS) at 2048 x 2048 x 2048 and at the
   shapes of the notebook's products (each conv's im2col product, forward and the two
   backward ones; the dense layers), in GFLOP/s. That is what "as fast as the machine"
   means for each product.
2. Kernels: each kernel `tinycnn.engines.fast.kernels.foo` that has a twin `foo_numpy`, at the shapes
   the notebook's models give it, in ms, the speed-up over the twin, and GB/s moved (the
   bytes of the inputs read plus the outputs written, once: the numba kernels move data,
   they do few FLOPs). `matmul` (products cut into pieces) is there too, against one
   np.matmul: the same products as table 1.
3. Layers: Conv2D, MaxPooling2D, Dense forward and backward at the notebook's shapes,
   as tinycnn runs them, next to the same layer with every numba kernel swapped for its
   NumPy twin (the layer code unchanged), and the achieved GFLOP/s of the conv and dense
   layers (2 FLOP per multiply-add; backward counts dW and, where the layer needs it, dx).
   Backward is timed as forward + backward minus forward (a forward pass serves one backward).
   A conv that takes Winograd's way (cnn_sparse's second) is counted at its im2col product's
   FLOPs: the rate is what the plain product would need to reach to be as fast.

By default OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE are dropped before NumPy loads, as in
vs_keras.py (--blas-env inherit keeps them); the OpenBLAS kernel in use is printed.
Writes DIR/kernels.json and DIR/kernels.md (DIR: benchmarks/results/).
"""
import argparse
import datetime
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

if __name__ == "__main__":
    from _blas_env import reexec_without_blas_env
    reexec_without_blas_env()

import numpy as np  # noqa: E402

from _sides import cpu_model, openblas_info  # noqa: E402

N = 32  # batch


# ---------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------
def bench(fn, samples, min_time):
    """Median seconds per call of fn(): one warm-up call, then `samples` timings of a loop
    long enough to last min_time seconds."""
    fn()
    t = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t, 1e-7)
    loops = max(1, int(min_time / one))
    ts = []
    for _ in range(samples):
        t = time.perf_counter()
        for _ in range(loops):
            fn()
        ts.append((time.perf_counter() - t) / loops)
    return statistics.median(ts)


def rand(*shape, rng=np.random.default_rng(0)):
    return rng.standard_normal(shape, dtype=np.float32)


# ---------------------------------------------------------------------------
# The notebook's shapes
# ---------------------------------------------------------------------------
# (label, H, W, C, F, first layer?) for each conv; every conv is 3x3, stride 1, 'valid'
CONVS = [("cnn_categorical conv2d (28x28x1 -> 32)", 28, 28, 1, 32, True),
         ("cnn_sparse conv2d (28x28x1 -> 64)", 28, 28, 1, 64, True),
         ("cnn_sparse conv2d_1 (13x13x64 -> 64)", 13, 13, 64, 64, False)]
# (label, H, W, C) for each 2x2 pool
POOLS = [("cnn_categorical pool (26x26x32)", 26, 26, 32),
         ("cnn_sparse pool (26x26x64)", 26, 26, 64),
         ("cnn_sparse pool_1 (11x11x64)", 11, 11, 64)]
# (label, in, out, activation, first layer?)
DENSES = [("cnn_categorical dense (5408 -> 100)", 5408, 100, "relu", False),
          ("cnn_categorical dense_1 (100 -> 10)", 100, 10, "softmax", False),
          ("simple_dense dense (784 -> 128)", 784, 128, "relu", False),
          ("cnn_sparse dense (1600 -> 128)", 1600, 128, "relu", False),
          ("cnn_sparse dense_1 (128 -> 10)", 128, 10, "softmax", False)]


def matmul_cases():
    cases = [("square 2048 x 2048 x 2048", 2048, 2048, 2048)]
    for label, h, w, c, f, first in CONVS:
        m, k = N * (h - 2) * (w - 2), 9 * c
        cases.append((f"{label}: forward cols @ W", m, k, f))
        cases.append((f"{label}: dW = cols.T @ dZ", k, m, f))
        if not first:
            cases.append((f"{label}: dcols = dZ @ W.T", m, f, k))
    for label, i, o, _, _ in DENSES[:1] + DENSES[2:4]:
        for rows in (N, N // 2):                         # a batch, and half a batch (tinycnn.engines.fast.parallel)
            batch = "" if rows == N else f", {rows} rows"
            cases.append((f"{label}: forward x @ W{batch}", rows, i, o))
            cases.append((f"{label}: dW = x.T @ dZ{batch}", i, rows, o))
            cases.append((f"{label}: dx = dZ @ W.T{batch}", rows, o, i))
    return cases


def matmul_operands(label, m, k, n):
    """Random a (m, k), b (k, n), transposed views where the layers' products use them."""
    a, b = rand(m, k), rand(k, n)
    if "cols.T" in label or "x.T" in label:
        a = rand(k, m).T
    elif "W.T" in label:
        b = rand(n, k).T
    return a, b


def kernel_cases(k):
    """name -> list of (label, args, bytes moved). Only kernels named here are measured."""
    from tinycnn.engines.fast.kernels import maxpool_forward_numpy
    cases = {}
    for label, h, w, c, f, first in CONVS:
        oh, ow = h - 2, w - 2
        x = rand(N, h, w, c)
        cols_bytes = N * oh * ow * 9 * c * 4
        cases.setdefault("im2col", []).append((label, (x, 3, 3, 1, 1, 0, 0, oh, ow), x.nbytes + cols_bytes))
        if not first:
            dcols = rand(N * oh * ow, 9 * c)
            cases.setdefault("col2im", []).append(
                (label, (dcols, N, h, w, c, 3, 3, 1, 1, 0, 0, oh, ow), dcols.nbytes + x.nbytes))
        if k.winograd_fits((3, 3), (1, 1), c):           # the conv takes Winograd's way instead
            th, tw = k.winograd_tiles(oh, ow)
            v_bytes, m_bytes = 16 * N * th * tw * c * 4, 16 * N * th * tw * f * 4
            cases.setdefault("winograd_input", []).append((label, (x, 0, 0, th, tw), x.nbytes + v_bytes))
            cases.setdefault("winograd_output", []).append(
                (label, (rand(16, N * th * tw, f), N, oh, ow, th, tw), m_bytes + N * oh * ow * f * 4))
            cases.setdefault("winograd_output_backward", []).append(
                (label, (rand(N, oh, ow, f), th, tw), m_bytes + N * oh * ow * f * 4))
            cases.setdefault("winograd_input_backward", []).append(
                (label, (rand(16, N * th * tw, c), N, h, w, 0, 0, th, tw), v_bytes + x.nbytes))
        z = rand(N * oh * ow, f)
        b = rand(f)
        cases.setdefault("bias_relu_", []).append((label, (z, b), 2 * z.nbytes))
        cases.setdefault("column_sums", []).append((label, (rand(N * oh * ow, f),), z.nbytes))
        y = np.maximum(rand(N * oh * ow, f), 0)
        cases.setdefault("relu_backward", []).append((label, (rand(N * oh * ow, f), y), 3 * y.nbytes))
    for label, h, w, c in POOLS:
        oh, ow = h // 2, w // 2
        x = rand(N, h, w, c)
        out_bytes = N * oh * ow * c * 8  # y float32 + argmax int32
        cases.setdefault("maxpool_forward", []).append((label, (x, 2, 2, 2, 2, 0, 0, oh, ow), x.nbytes + out_bytes))
        _, am = maxpool_forward_numpy(x, 2, 2, 2, 2, 0, 0, oh, ow)
        dy = rand(N, oh, ow, c)
        cases.setdefault("maxpool_backward", []).append((label, (dy, am, h, w), dy.nbytes + am.nbytes + x.nbytes))
        # the fused conv -> pool pair (ops.ConvReluPoolOp): z is the conv's output before its
        # bias, cropped to the windows (cnn_sparse's 11x11 -> 10x10)
        z, zh, zw = rand(N, 2 * oh, 2 * ow, c) - 0.5, 2 * oh, 2 * ow
        y, am2 = k.bias_relu_maxpool_2x2(z, rand(c))
        cases.setdefault("bias_relu_maxpool_2x2", []).append((label, (z, rand(c)), z.nbytes + out_bytes))
        cases.setdefault("maxpool_relu_backward_2x2", []).append(
            (label, (dy, am2, y, zh, zw), dy.nbytes + am2.nbytes + y.nbytes + z.nbytes))
    for label, m, kk, n in matmul_cases()[1:]:          # the layers' products, as the layers make them
        a, b = matmul_operands(label, m, kk, n)
        cases.setdefault("matmul", []).append((label, (a, b), 4 * (m * kk + kk * n + m * n)))
    for label, i, o, act, _ in DENSES:
        if act == "relu":
            z, b = rand(N, o), rand(o)
            cases.setdefault("bias_relu_", []).append((label, (z, b), 2 * z.nbytes))
        cases.setdefault("column_sums", []).append((label, (rand(N, o),), N * o * 4))
    return cases


# ---------------------------------------------------------------------------
# Layers, with the numba kernels or with their NumPy twins swapped in
# ---------------------------------------------------------------------------
class numpy_twins:
    """Context manager: every tinycnn.engines.fast.kernels.foo that has a foo_numpy is replaced by it."""

    def __enter__(self):
        import tinycnn.engines.fast.kernels as k
        self.k, self.saved = k, {}
        for name in dir(k):
            twin = getattr(k, name + "_numpy", None)
            if twin is not None and callable(getattr(k, name)):
                self.saved[name] = getattr(k, name)
                setattr(k, name, twin)
        return self

    def __exit__(self, *exc):
        for name, fn in self.saved.items():
            setattr(self.k, name, fn)


def layer_cases():
    """(label, the fast engine's op of a layer, x, grad_out, fwd FLOP, bwd FLOP)."""
    from tinycnn.engines.fast.ops import make_plan
    from tinycnn.layers import Conv2D, Dense, MaxPooling2D
    cases = []
    for label, h, w, c, f, first in CONVS:
        layer = Conv2D(f, (3, 3), activation="relu")
        layer.build((h, w, c))
        layer.need_input_grad = not first
        macs = N * (h - 2) * (w - 2) * 9 * c * f
        cases.append((label, layer, rand(N, h, w, c), rand(N, h - 2, w - 2, f), 2 * macs,
                      2 * macs * (1 if first else 2)))
    for label, h, w, c in POOLS:
        layer = MaxPooling2D((2, 2))
        layer.build((h, w, c))
        cases.append((label, layer, rand(N, h, w, c), rand(N, h // 2, w // 2, c), 0, 0))
    for label, i, o, act, first in DENSES:
        layer = Dense(o, activation=act)
        layer.build((i,))
        layer.need_input_grad = not first
        cases.append((label, layer, rand(N, i), rand(N, o), 2 * N * i * o, 2 * N * i * o * (1 if first else 2)))
    return [(label, make_plan([layer], [layer.grads])[0]) + rest for label, layer, *rest in cases]


def layer_backward(layer, g):
    if layer.outputs_softmax:
        return layer.backward_from_logits(g)
    return layer.backward(g)


# ---------------------------------------------------------------------------
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="3 samples of >= 5 ms (default 7 of >= 20 ms)")
    p.add_argument("--samples", type=int)
    p.add_argument("--min-time", type=float)
    p.add_argument("--only", help="run only cases whose label or kernel name contains this")
    p.add_argument("--blas-env", choices=("unset", "inherit"), default="unset")
    p.add_argument("--blas-threads", type=int, default=1,
                   help="OpenBLAS threads for the products (default 1: what fit/evaluate/predict use)")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    args = p.parse_args(argv)
    samples = args.samples or (3 if args.quick else 7)
    min_time = args.min_time or (0.005 if args.quick else 0.02)
    want = lambda *names: not args.only or any(args.only in n for n in names)  # noqa: E731

    import numba

    import tinycnn.engines.fast.kernels as k
    from tinycnn.engines.fast.parallel import blas_threads
    with blas_threads(args.blas_threads):
        measure(args, samples, min_time, want, k, numba)


def measure(args, samples, min_time, want, k, numba):
    """Tables 1-3 of the module docstring, printed and written to args.out."""
    res = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "cpu": cpu_model(), "cpu_count": os.cpu_count(), "openblas": openblas_info(),
           "numba_threads": numba.get_num_threads(), "batch": N, "samples": samples,
           "min_time": min_time, "matmul": [], "kernels": [], "layers": []}
    ob = res["openblas"]
    head = (f"tinycnn kernels, {res['date']}, {res['cpu']}, {res['cpu_count']} cores (shared machine); "
            f"OpenBLAS kernel {ob.get('corename')} ({ob.get('threads')} threads), numba {numba.__version__} "
            f"({res['numba_threads']} threads); batch {N}; median of {samples} samples of >= {min_time * 1e3:g} ms")
    print(head, flush=True)
    md = [head, ""]

    # 1. the ceiling
    md += ["| float32 matmul (NumPy/OpenBLAS) | M x K x N | ms | GFLOP/s |", "|---|---|---|---|"]
    for label, m, kk, n in matmul_cases():
        if not want(label, "matmul"):
            continue
        a, b = matmul_operands(label, m, kk, n)
        s = bench(lambda: a @ b, samples, min_time)
        g = 2 * m * kk * n / s / 1e9
        res["matmul"].append({"label": label, "m": m, "k": kk, "n": n, "s": s, "gflops": g})
        md.append(f"| {label} | {m} x {kk} x {n} | {s * 1e3:.3f} | {g:.0f} |")
        print(f"  matmul {label:60s} {s * 1e3:8.3f} ms {g:6.0f} GFLOP/s", flush=True)

    # 2. kernels against their twins
    md += ["", "| kernel | case | numba ms | NumPy twin ms | speed-up | numba GB/s |", "|---|---|---|---|---|---|"]
    cases = kernel_cases(k)
    twins = sorted(n for n in dir(k) if hasattr(k, n + "_numpy") and callable(getattr(k, n)))
    res["kernels_without_case"] = [n for n in twins if n not in cases]
    for name in twins:
        for label, fargs, nbytes in cases.get(name, []):
            if not want(label, name):
                continue
            fast, twin = getattr(k, name), getattr(k, name + "_numpy")
            s_fast = bench(lambda: fast(*fargs), samples, min_time)
            s_twin = bench(lambda: twin(*fargs), samples, min_time)
            res["kernels"].append({"kernel": name, "case": label, "numba_s": s_fast, "numpy_s": s_twin,
                                   "bytes": nbytes})
            md.append(f"| {name} | {label} | {s_fast * 1e3:.3f} | {s_twin * 1e3:.3f} | {s_twin / s_fast:.1f}x | "
                      f"{nbytes / s_fast / 1e9:.1f} |")
            print(f"  {name:18s} {label:40s} numba {s_fast * 1e3:8.3f} ms  twin {s_twin * 1e3:8.3f} ms "
                  f"({s_twin / s_fast:5.1f}x)", flush=True)
    if res["kernels_without_case"]:
        md.append(f"\nKernels with a twin but no case here yet: {', '.join(res['kernels_without_case'])}")

    # 2b. hand-over between the two thread pools: an OpenBLAS product, then a parallel numba
    # kernel, back to back, as every Conv2D/Dense forward does (matmul -> bias_relu_)
    try:
        layer_name = numba.threading_layer()
    except ValueError:
        layer_name = "not started"
    md += ["", f"Hand-over between OpenBLAS's threads and numba's ({layer_name} threading layer, "
           f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}): each pair run back to back in a loop.", "",
           "| shapes | matmul alone ms | bias_relu_ alone ms | matmul then bias_relu_ ms | NumPy matmul + maximum ms |",
           "|---|---|---|---|---|"]
    if want("handover", "bias_relu_") and hasattr(k, "bias_relu_"):
        for label, m, kk, n in (("dense 32 x 5408 -> 100", N, 5408, 100), ("conv 21632 x 9 -> 32", N * 26 * 26, 9, 32),
                                ("conv 3872 x 576 -> 64", N * 11 * 11, 576, 64)):
            a, b, bias = rand(m, kk), rand(kk, n), rand(n)
            z = rand(m, n)
            t_mm = bench(lambda: a @ b, samples, min_time)
            t_k = bench(lambda: k.bias_relu_(z, bias), samples, min_time)
            t_both = bench(lambda: k.bias_relu_(a @ b, bias), samples, min_time)
            t_np = bench(lambda: np.maximum(a @ b + bias, 0), samples, min_time)
            res.setdefault("handover", []).append({"case": label, "matmul_s": t_mm, "kernel_s": t_k,
                                                   "both_s": t_both, "numpy_s": t_np})
            md.append(f"| {label} | {t_mm * 1e3:.3f} | {t_k * 1e3:.3f} | {t_both * 1e3:.3f} | {t_np * 1e3:.3f} |")
            print(f"  hand-over {label:28s} matmul {t_mm * 1e3:.3f}  kernel {t_k * 1e3:.3f}  both {t_both * 1e3:.3f}"
                  f"  numpy {t_np * 1e3:.3f} ms", flush=True)

    # 3. layers
    md += ["", "| layer | pass | tinycnn ms | with NumPy twins ms | speed-up | tinycnn GFLOP/s |",
           "|---|---|---|---|---|---|"]
    for label, layer, x, g, ffl, bfl in layer_cases():
        if not want(label, type(layer).__name__.lower()):
            continue
        row = {"layer": label}
        for mode in ("tinycnn", "numpy"):
            ctx = numpy_twins() if mode == "numpy" else None
            if ctx:
                ctx.__enter__()
            try:
                fwd = bench(lambda: layer.forward(x, training=True), samples, min_time)
                both = bench(lambda: (layer.forward(x, training=True), layer_backward(layer, g)), samples, min_time)
                bwd = both - fwd           # each forward pass serves one backward pass (the layer contract)
            finally:
                if ctx:
                    ctx.__exit__(None, None, None)
            row[mode] = {"forward_s": fwd, "backward_s": bwd}
        res["layers"].append(row)
        for pas, key, fl in (("forward", "forward_s", ffl), ("backward", "backward_s", bfl)):
            t, tw = row["tinycnn"][key], row["numpy"][key]
            gf = f"{fl / t / 1e9:.0f}" if fl else "-"
            md.append(f"| {label} | {pas}{' (no dx)' if pas == 'backward' and not layer.need_input_grad else ''}"
                      f" | {t * 1e3:.3f} | {tw * 1e3:.3f} | {tw / t:.1f}x | {gf} |")
            print(f"  layer {label:42s} {pas:8s} {t * 1e3:8.3f} ms  twins {tw * 1e3:8.3f} ms  {gf} GFLOP/s",
                  flush=True)

    text = "\n".join(md)
    print()
    print(text)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "kernels.json"), "w") as f:
        json.dump(res, f, indent=1)
    with open(os.path.join(args.out, "kernels.md"), "w") as f:
        f.write(f"Command: `python3 benchmarks/kernels.py {' '.join(sys.argv[1:])}`\n\n{text}\n")


if __name__ == "__main__":
    main()
