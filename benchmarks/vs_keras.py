"""tinycnn against Keras (and PyTorch), side by side: the notebook's three models and the
BN + Dropout CNN, real data, batch 32.

    python3 benchmarks/vs_keras.py                  # the notebook's three models, 3 epochs, 2 repeats
    python3 benchmarks/vs_keras.py --quick          # 200 steps an epoch, scaled to 60,000 images
    python3 benchmarks/vs_keras.py --model bn_dropout_cnn --epochs 3 --repeats 2
    python3 benchmarks/vs_keras.py --side tinycnn --side keras --side torch   # PyTorch too
    python3 benchmarks/vs_keras.py --variant blas1:OPENBLAS_NUM_THREADS=1   # a third side

Before the first run and after the last, it records the machine (benchmarks/_machine.py: CPU
model, ISA, BLAS library and kernel, versions) and times NumPy's float32 2048^2 product on
two threads. The FLOP floor of a model's epoch is its training FLOPs (benchmarks/_flops.py)
at the median of those rates; each tinycnn side is reported against it, and every ratio is
printed against the targets in TARGETS.

Each (side, model, repeat) is a process of its own (benchmarks/_sides.py), so peak memory
is that side's alone. Within a repeat the two sides run back to back and the order flips
from one repeat to the next (tinycnn, Keras, Keras, tinycnn, ...), so that the machine's
drift falls on both.

Per model and side it reports:
  s/epoch      median over epochs 2..E of each run (epoch 1 carries the warm-up: numba's
               compilation, TF's tracing), then the median over the repeats. In quick mode each
               epoch is the first --train-samples images and the time is scaled to 60,000.
  warm-up      epoch 1 minus that median (the first run's extra cost), reported apart
  test acc     after the same number of epochs on the same images, same seed
  predict      model.predict of the 10,000 test images, batch 32: the median of a few calls
               after a first (warm-up) call
  peak MB      VmHWM of the process right after fit (it includes the ~250 MB of data arrays
               that both sides hold), plus for tinycnn its worker process's private memory
               (Linux); also the RSS after the imports and after the data
and the ratios tinycnn / Keras of the medians, and the median of the per-repeat ratios.

OpenBLAS: this machine sets OPENBLAS_CORETYPE=Haswell and OPENBLAS_L2_SIZE (a guard for
old OpenBLAS builds), which halves NumPy's float32 matrix product on its AVX-512 cores.
By default both sides' processes run with the two unset (--blas-env unset), as a user's
machine would; --blas-env inherit keeps them. TensorFlow does not use OpenBLAS. Each
side's OpenBLAS kernel and thread settings are written into the results.

Writes DIR/vs_keras.json (every run, raw) and DIR/vs_keras.md (the table); DIR defaults to
benchmarks/results/ (git-ignored).
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _flops  # noqa: E402
import _machine  # noqa: E402
from _sides import MODELS, SIDES  # noqa: E402

FULL_EPOCH = 60000
NOTEBOOK_MODELS = ("cnn_categorical", "simple_dense", "cnn_sparse")     # the default models
# What tinycnn aims at, as ratios measured in one run: (model, what, baseline) -> at most.
# "epoch" is s/epoch, "predict" the 10,000 test images; "*" is every model.
TARGETS = {
    ("cnn_categorical", "epoch", "keras"): 0.25,
    ("cnn_sparse", "epoch", "keras"): 0.25,
    ("simple_dense", "epoch", "keras"): 0.15,
    ("bn_dropout_cnn", "epoch", "keras"): 0.4,
    ("*", "predict", "keras"): 0.3,
    ("cnn_categorical", "epoch", "torch"): 0.5,
    ("cnn_sparse", "epoch", "torch"): 0.5,
    ("simple_dense", "epoch", "torch"): 0.5,
    ("cnn_categorical", "epoch", "floor"): 2.0,
}
BASELINES = ("keras", "torch")


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def run_side(label, model, args, log, variant_env=None):
    """Run one side (label "keras", "tinycnn" or "tinycnn[NAME]" for a --variant) in its own process."""
    side = label.split("[")[0]
    cmd = [sys.executable, os.path.join(HERE, "_sides.py"), "--side", side, "--model", model,
           "--epochs", str(args.epochs), "--train-samples", str(args.train_samples),
           "--predict-repeats", str(args.predict_repeats), "--seed", str(args.seed),
           "--batch-size", str(args.batch_size), "--predict-batch-size", str(args.predict_batch_size)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow")
    if args.blas_env == "unset":
        env.pop("OPENBLAS_CORETYPE", None)
        env.pop("OPENBLAS_L2_SIZE", None)
    for kv in args.env or []:
        key, _, value = kv.partition("=")
        env[key] = value
    env.update(variant_env or {})
    load_before = os.getloadavg()[0]
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    log.write(f"\n===== {label} {model} rc={proc.returncode} {wall:.1f}s\n{proc.stderr}\n")
    log.flush()
    if proc.returncode != 0:
        print(f"  {label} {model}: FAILED (rc {proc.returncode}); last lines of its stderr:", file=sys.stderr)
        print("    " + "\n    ".join(proc.stderr.strip().splitlines()[-8:]), file=sys.stderr)
        return {"side": label, "model": model, "error": proc.stderr.strip().splitlines()[-1:] or ["?"],
                "process_s": wall}
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["process_s"] = wall
    res["side"], res["library"], res["variant_env"] = label, side, variant_env or {}
    res["load_before"], res["load_after"] = load_before, os.getloadavg()[0]
    scale = FULL_EPOCH / res["train_samples"]
    ep = res["epoch_s"]
    steady = ep[1:] if len(ep) > 1 else ep
    res["s_per_epoch"] = median(steady) * scale
    res["warmup_s"] = ep[0] - median(steady) if len(ep) > 1 else None
    res["predict_med_s"] = median(res["predict_s"]) if res["predict_s"] else res["predict_first_s"]
    print(f"  {label:16s} {model:16s} {res['s_per_epoch']:7.2f} s/epoch  acc {res['test_acc']:.4f}  "
          f"predict {res['predict_med_s']:.2f} s  peak {res['peak_train_mb']:.0f} MB  "
          f"(process {wall:.0f} s, load {load_before:.1f} -> {res['load_after']:.1f})", flush=True)
    return res


def summarize(runs, models, labels):
    summary = {}
    for m in models:
        s = {"ratio": {}}
        for side in labels:
            rs = [r for r in runs if r["model"] == m and r["side"] == side and "error" not in r]
            if not rs:
                s[side] = None
                continue
            s[side] = {
                "runs": len(rs),
                "s_per_epoch": median([r["s_per_epoch"] for r in rs]),
                "s_per_epoch_all": [round(r["s_per_epoch"], 3) for r in rs],
                "s_per_epoch_best": min(r["s_per_epoch"] for r in rs),
                "warmup_s": median([r["warmup_s"] for r in rs]),
                "test_acc": median([r["test_acc"] for r in rs]),
                "test_acc_all": [r["test_acc"] for r in rs],
                "predict_s": median([r["predict_med_s"] for r in rs]),
                "predict_first_s": median([r["predict_first_s"] for r in rs]),
                "peak_train_mb": median([r["peak_train_mb"] for r in rs]),
                "train_increment_mb": median([r["peak_train_mb"] - r["rss_after_data_mb"] for r in rs]),
                "rss_after_import_mb": median([r["rss_after_import_mb"] for r in rs]),
                "rss_after_data_mb": median([r["rss_after_data_mb"] for r in rs]),
                "import_s": median([r["import_s"] for r in rs]),
                "params": rs[0]["params"],
            }
        for base in BASELINES:
            k = s.get(base)
            for label in labels:
                t = s.get(label)
                if label in BASELINES or not t or not k:
                    continue
                ratio = lambda key: t[key] / k[key] if t[key] and k[key] else None  # noqa: E731
                rs = {key: ratio(key) for key in ("s_per_epoch", "s_per_epoch_best", "predict_s",
                                                  "peak_train_mb", "train_increment_mb", "import_s")}
                # ratios within a repeat (same moment of the machine), then their median
                paired = []
                for rep in sorted({r["repeat"] for r in runs if r["model"] == m}):
                    a = [r for r in runs if r["model"] == m and r["repeat"] == rep and "error" not in r]
                    ta = [r for r in a if r["side"] == label]
                    ka = [r for r in a if r["side"] == base]
                    if ta and ka:
                        paired.append(ta[0]["s_per_epoch"] / ka[0]["s_per_epoch"])
                rs["s_per_epoch_paired"] = [round(p, 3) for p in paired]
                s["ratio"][f"{label}/{base}"] = rs
        summary[m] = s
    return summary


def target_of(model, what, baseline):
    return TARGETS.get((model, what, baseline), TARGETS.get(("*", what, baseline)))


def floor_s_per_epoch(model, batch_size, gflops):
    """Seconds an epoch of 60,000 images would take if every training FLOP ran at `gflops`."""
    steps = -(-FULL_EPOCH // batch_size)
    return _flops.training_flops(model, batch_size) * steps / (gflops * 1e9)


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


def verdict(r, target):
    if r is None or target is None:
        return ""
    return f" ({'meets' if r <= target else 'misses'} <= {target:g})"


def table(summary, meta, sides):
    lines = [
        f"tinycnn vs {' and '.join(b for b in BASELINES if b in sides) or 'nothing'}, {meta['date']}, "
        f"{meta['cpu_count']} cores (shared machine, 1-min load average {meta['load_range'][0]:.1f} to "
        f"{meta['load_range'][1]:.1f}), batch {meta['batch_size']}, {meta['epochs']} epochs of "
        f"{meta['train_samples']} images" + (" (times scaled to 60,000)" if meta["train_samples"] < FULL_EPOCH else "")
        + f", {meta['repeats']} repeat(s), OpenBLAS env: {meta['blas_env']}"
        + (f", extra env: {' '.join(meta['extra_env'])}" if meta["extra_env"] else ""),
        "",
        *meta["machine_lines"],
        f"Floor: training FLOPs at {meta['floor_gflops']:.0f} GFLOP/s, the median float32 2048^2 matmul "
        f"rate of this run ({', '.join(f'{g:.0f}' for g in meta['matmul_gflops'])} GFLOP/s before/after)",
        "",
        "| model | side | s/epoch (median) | ms/step | best run | warm-up s | test acc | predict 10k s | peak MB (train) | MB added by training | import s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    steps = -(-FULL_EPOCH // meta["batch_size"])
    for m, s in summary.items():
        for side in sides:
            d = s.get(side)
            if not d:
                lines.append(f"| {m} | {side} | failed | | | | | | | | |")
                continue
            lines.append(
                f"| {m} | {side} | {d['s_per_epoch']:.2f} | {1000 * d['s_per_epoch'] / steps:.2f} | "
                f"{d['s_per_epoch_best']:.2f} | {fmt(d['warmup_s'], '.2f')} | {d['test_acc']:.4f} | "
                f"{d['predict_s']:.3f} | {d['peak_train_mb']:.0f} | {d['train_increment_mb']:.0f} | {d['import_s']:.2f} |")
        for name, r in s.get("ratio", {}).items():
            base = name.rsplit("/", 1)[1]
            lines.append(
                f"| {m} | **{name}** | **{r['s_per_epoch']:.2f}**{verdict(r['s_per_epoch'], target_of(m, 'epoch', base))}"
                f" paired {r['s_per_epoch_paired']} | | {fmt(r['s_per_epoch_best'], '.2f')} | | | **{fmt(r['predict_s'], '.2f')}**"
                f"{verdict(r['predict_s'], target_of(m, 'predict', base))} | {fmt(r['peak_train_mb'], '.2f')} | "
                f"{fmt(r['train_increment_mb'], '.2f')} | {fmt(r['import_s'], '.2f')} |")
        floor = floor_s_per_epoch(m, meta["batch_size"], meta["floor_gflops"])
        for side in sides:
            if side in BASELINES or not s.get(side):
                continue
            x = s[side]["s_per_epoch"] / floor
            lines.append(f"| {m} | {side}/floor | **{x:.1f}x**{verdict(x, target_of(m, 'epoch', 'floor'))} "
                         f"(floor {floor:.2f} s/epoch) | | | | | | | | |")
    if meta.get("variants"):
        lines += ["", "Variants (tinycnn with extra environment): " + "; ".join(
            f"tinycnn[{n}]: {' '.join(f'{k}={v}' for k, v in e.items())}" for n, e in meta["variants"].items())]
    lines += ["", "Thread settings: " + "; ".join(f"{k}: {v}" for k, v in meta["settings"].items())]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="epochs of 6,400 images (200 steps) scaled to 60,000; 3 epochs, 1 repeat, 2 predicts")
    p.add_argument("--model", action="append", choices=MODELS,
                   help="one model (repeat the option for several); default the notebook's three")
    p.add_argument("--side", action="append", choices=SIDES,
                   help="tinycnn, keras or torch (repeat for several); default tinycnn and keras")
    p.add_argument("--epochs", type=int, help="epochs per run (default 3; the first is the warm-up)")
    p.add_argument("--repeats", type=int, help="runs per side and model (default 2, quick 1)")
    p.add_argument("--train-samples", type=int, help="images per epoch (default 60,000, quick 6,400)")
    p.add_argument("--predict-repeats", type=int, help="timed predict calls after the first (default 3, quick 2)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--predict-batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--blas-env", choices=("unset", "inherit"), default="unset",
                   help="unset (default) or keep this machine's OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE in both sides")
    p.add_argument("--env", action="append", metavar="KEY=VALUE",
                   help="set this in both sides' environment (e.g. OMP_WAIT_POLICY=PASSIVE); repeatable")
    p.add_argument("--variant", action="append", metavar="NAME:KEY=VALUE[,KEY=VALUE]",
                   help="also run tinycnn with this extra environment, labelled tinycnn[NAME], in the same "
                        "alternation (e.g. blas1:OPENBLAS_NUM_THREADS=1); repeatable")
    p.add_argument("--out", default=os.path.join(HERE, "results"), help="folder for vs_keras.json/.md")
    args = p.parse_args(argv)
    args.epochs = args.epochs or 3
    args.repeats = args.repeats or (1 if args.quick else 2)
    args.train_samples = args.train_samples or (6400 if args.quick else FULL_EPOCH)
    args.predict_repeats = args.predict_repeats if args.predict_repeats is not None else (2 if args.quick else 3)
    models = args.model or list(NOTEBOOK_MODELS)
    sides = args.side or ["tinycnn", "keras"]
    variants = {}
    for v in args.variant or []:
        name, _, kvs = v.partition(":")
        variants[name] = dict(kv.split("=", 1) for kv in kvs.split(",") if kv)
    labels = []
    for side in sides:
        labels.append(side)
        if side == "tinycnn":
            labels += [f"tinycnn[{n}]" for n in variants]
    os.makedirs(args.out, exist_ok=True)

    started = datetime.datetime.now(datetime.timezone.utc)
    machine_before = _machine.machine_record(matmul=True)
    print("\n".join(_machine.describe(machine_before)), flush=True)
    runs = []
    with open(os.path.join(args.out, "vs_keras.log"), "w") as log:
        for m in models:
            print(f"{m}:", flush=True)
            for rep in range(args.repeats):
                order = labels if rep % 2 == 0 else labels[::-1]
                for label in order:
                    venv = variants.get(label[len("tinycnn["):-1]) if label.startswith("tinycnn[") else None
                    r = run_side(label, m, args, log, venv)
                    r["repeat"] = rep
                    runs.append(r)
    machine_after = _machine.machine_record(matmul=True)
    rates = [rec["matmul"]["gflops"] for rec in (machine_before, machine_after)]
    summary = summarize(runs, models, labels)
    settings = {}
    for side in labels:
        r = next((r for r in runs if r["side"] == side and "settings" in r), None)
        if r:
            st = dict(r["settings"])
            ob = st.pop("openblas", {})
            st["openblas_kernel"] = ob.get("corename")
            st["openblas_threads"] = ob.get("threads")
            settings[side] = st
    meta = {
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": machine_before["cpu_model"], "isa": machine_before["isa"], "cpu_count": os.cpu_count(),
        "machine": platform.platform(), "machine_record": machine_before,
        "machine_lines": _machine.describe(machine_before)[:3],
        "matmul_gflops": rates, "floor_gflops": statistics.median(rates),
        "python": platform.python_version(), "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
        "epochs": args.epochs, "repeats": args.repeats, "train_samples": args.train_samples,
        "batch_size": args.batch_size, "predict_batch_size": args.predict_batch_size,
        "blas_env": args.blas_env, "extra_env": args.env or [], "variants": variants, "settings": settings,
        "load_average_after": os.getloadavg(),
        "load_range": [min((r.get("load_before", 0) for r in runs), default=0),
                       max((r.get("load_after", 0) for r in runs), default=0)],
        "wall_s": (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds(),
    }
    md = table(summary, meta, labels)
    print()
    print(md)
    with open(os.path.join(args.out, "vs_keras.json"), "w") as f:
        json.dump({"meta": meta, "summary": summary, "runs": runs}, f, indent=1)
    with open(os.path.join(args.out, "vs_keras.md"), "w") as f:
        f.write(f"Command: `python3 benchmarks/{meta['command']}`\n\n" + md + "\n")
    print(f"\nwrote {os.path.join(args.out, 'vs_keras.json')} and vs_keras.md "
          f"({meta['wall_s']:.0f} s; load average after {meta['load_average_after'][0]:.1f})")
    return 0 if all("error" not in r for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
