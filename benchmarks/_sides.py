"""One side (tinycnn, Keras or PyTorch) of the side-by-side comparison, in a process of its own.

`benchmarks/vs_keras.py` starts this script once per (side, model, repeat), so that each
side's memory (VmHWM, the process's peak resident set) is its own and neither library
warms the other's caches. It prints one JSON object on its last line of stdout.

    python3 benchmarks/_sides.py --side keras --model cnn_categorical --epochs 3

What it measures, in order (all wall-clock, time.perf_counter):
  import_s         importing the library (tensorflow + keras, tinycnn + its modules, or torch)
  rss_after_*      VmRSS after the imports and after loading + preparing the data
  epoch_s          each training epoch, timed by an epoch-begin/epoch-end callback inside one
                   `fit(..., epochs=E, batch_size=32, verbose=0)` call. Epoch 1 holds the
                   warm-up (TF tracing / numba compilation); the caller drops it.
                   PyTorch has no fit: a plain loop over shuffled batches of 32 (zero_grad,
                   forward, CrossEntropyLoss, backward, step), timed per epoch the same way
  peak_train_mb    VmHWM right after fit: the peak of the process up to then; for tinycnn
                   plus the private memory of its worker process (the second halves, Linux)
  predict_s        `predict` of the 10,000 test images: the first call (warm-up) and
                   `--predict-repeats` more
  test_acc         argmax of the last prediction against the test labels (same code both sides)

The data are read here from the Debian package's IDX files with the same few lines for both
sides, so the data arrays cost both processes the same memory.
"""
import argparse
import gzip
import json
import os
import sys
import time

import numpy as np

MODELS = ("cnn_categorical", "simple_dense", "cnn_sparse", "bn_dropout_cnn")
SIDES = ("tinycnn", "keras", "torch")
DATA_DIRS = ("/usr/share/datasets/fashion-mnist",
             os.path.expanduser("~/.keras/datasets/fashion-mnist"))


# ---------------------------------------------------------------------------
# Process facts
# ---------------------------------------------------------------------------
def proc_status_mb(field):
    """VmRSS / VmHWM / ... of this process in MB (10^6 bytes), from /proc/self/status."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6


def private_mb(pid):
    """Memory that process `pid` holds for itself alone (Private_Clean + Private_Dirty, MB), or 0."""
    total = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith(("Private_Clean:", "Private_Dirty:")):
                    total += int(line.split()[1])
    except OSError:
        pass
    return total * 1024 / 1e6


def openblas_info():
    """NumPy's OpenBLAS: the kernel it chose at run time (core name), its threads, its config."""
    info = {}
    try:
        import ctypes
        import glob
        libs = glob.glob(os.path.join(os.path.dirname(np.__file__), "..", "numpy.libs", "*openblas*"))
        if libs:
            lib = ctypes.CDLL(libs[0])
            for name, key in (("get_corename", "corename"), ("get_config", "config")):
                for sym in (f"scipy_openblas_{name}64_", f"scipy_openblas_{name}", f"openblas_{name}64_",
                            f"openblas_{name}"):
                    if hasattr(lib, sym):
                        fn = getattr(lib, sym)
                        fn.restype = ctypes.c_char_p
                        info[key] = fn().decode()
                        break
            for sym in ("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads",
                        "openblas_get_num_threads64_", "openblas_get_num_threads"):
                if hasattr(lib, sym):
                    info["threads"] = int(getattr(lib, sym)())
                    break
    except Exception as e:  # never let a fact-finding helper kill a benchmark
        info["error"] = repr(e)
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        info[var] = os.environ.get(var)
    return info


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor()


# ---------------------------------------------------------------------------
# Data: the same bytes, the same preparation, for both sides
# ---------------------------------------------------------------------------
def _read_idx(path):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist():
    """(x_train, y_train), (x_test, y_test) as uint8, from the installed IDX files."""
    for d in DATA_DIRS:
        p = os.path.join(d, "train-images-idx3-ubyte.gz")
        if os.path.exists(p):
            get = lambda n: _read_idx(os.path.join(d, n))  # noqa: E731
            return ((get("train-images-idx3-ubyte.gz"), get("train-labels-idx1-ubyte.gz")),
                    (get("t10k-images-idx3-ubyte.gz"), get("t10k-labels-idx1-ubyte.gz")))
    sys.exit("Fashion-MNIST not found: apt-get install dataset-fashion-mnist "
             f"(looked in {', '.join(DATA_DIRS)})")


def prepare(model_name, x, y):
    """Pixels -> float32 in [0, 1]; (N,28,28,1) for the CNNs, (N,28,28) for simple_dense.
    Labels one-hot for cnn_categorical, integers otherwise (as the notebook does)."""
    x = x.astype(np.float32) / np.float32(255.0)
    if model_name != "simple_dense":
        x = x.reshape(-1, 28, 28, 1)
    if model_name == "cnn_categorical":
        onehot = np.zeros((len(y), 10), np.float32)
        onehot[np.arange(len(y)), y] = 1.0
        y = onehot
    else:
        y = y.astype(np.int64)
    return x, y


# ---------------------------------------------------------------------------
# Keras
# ---------------------------------------------------------------------------
def keras_import():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import tensorflow as tf  # noqa: F401
    import keras  # noqa: F401


def keras_build(name):
    import keras
    from keras import layers
    if name == "cnn_categorical":
        model = keras.Sequential([
            keras.Input((28, 28, 1)),
            layers.Conv2D(32, (3, 3), activation="relu", kernel_initializer="he_uniform"),
            layers.MaxPooling2D((2, 2)),
            layers.Flatten(),
            layers.Dense(100, activation="relu", kernel_initializer="he_uniform"),
            layers.Dense(10, activation="softmax"),
        ])
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.01, momentum=0.9),
                      loss="categorical_crossentropy", metrics=["accuracy"])
    elif name == "simple_dense":
        model = keras.Sequential([
            keras.Input((28, 28)),
            layers.Flatten(),
            layers.Dense(128, activation="relu"),
            layers.Dense(10, activation="softmax"),
        ])
        model.compile(optimizer=keras.optimizers.Adam(),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    elif name == "cnn_sparse":
        model = keras.Sequential([
            keras.Input((28, 28, 1)),
            layers.Conv2D(64, (3, 3), activation="relu"),
            layers.MaxPooling2D((2, 2)),
            layers.Conv2D(64, (3, 3), activation="relu"),
            layers.MaxPooling2D((2, 2)),
            layers.Flatten(),
            layers.Dense(128, activation="relu"),
            layers.Dense(10, activation="softmax"),
        ])
        model.compile(optimizer=keras.optimizers.Adam(),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    elif name == "bn_dropout_cnn":
        def conv_block(filters):
            out = []
            for _ in range(2):
                out += [layers.Conv2D(filters, (3, 3), padding="same"), layers.BatchNormalization(), layers.ReLU()]
            return out + [layers.MaxPooling2D((2, 2)), layers.Dropout(0.25)]
        model = keras.Sequential([keras.Input((28, 28, 1))] + conv_block(32) + conv_block(64) + [
            layers.Flatten(),
            layers.Dense(128), layers.BatchNormalization(), layers.ReLU(),
            layers.Dropout(0.5),
            layers.Dense(10, activation="softmax"),
        ])
        model.compile(optimizer=keras.optimizers.Adam(),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    else:
        raise ValueError(name)
    return model


def keras_run(args, x, y, xt):
    import keras
    import tensorflow as tf
    keras.utils.set_random_seed(args.seed)
    model = keras_build(args.model)

    times = []

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self._t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self._t)

    t = time.perf_counter()
    hist = model.fit(x, y, epochs=args.epochs, batch_size=args.batch_size, shuffle=True,
                     verbose=0, callbacks=[EpochTimer()])
    fit_s = time.perf_counter() - t
    peak = proc_status_mb("VmHWM")
    predict = lambda: model.predict(xt, batch_size=args.predict_batch_size, verbose=0)  # noqa: E731
    threads = {"tf_intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
               "tf_inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
               "note": "0 = TensorFlow's default (one thread per core)",
               "keras": keras.__version__, "tensorflow": tf.__version__,
               "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on)")}
    return model.count_params(), times, fit_s, hist.history.get("loss", []), peak, predict, threads


# ---------------------------------------------------------------------------
# tinycnn
# ---------------------------------------------------------------------------
def tinycnn_import():
    import tinycnn  # noqa: F401
    import tinycnn.layers  # noqa: F401
    import tinycnn.models  # noqa: F401
    import tinycnn.optimizers  # noqa: F401


def tinycnn_build(name):
    """The notebook's model `name` from tinycnn's zoo (bn_dropout_cnn: built here), and how it was built."""
    if name == "bn_dropout_cnn":
        from tinycnn.layers import BatchNormalization, Conv2D, Dense, Dropout, Flatten, MaxPooling2D, ReLU
        from tinycnn.models import Sequential
        from tinycnn.optimizers import Adam

        def conv_block(filters, **first):
            out = []
            for _ in range(2):
                out += [Conv2D(filters, (3, 3), padding="same", **first), BatchNormalization(), ReLU()]
                first = {}
            return out + [MaxPooling2D((2, 2)), Dropout(0.25)]
        model = Sequential(conv_block(32, input_shape=(28, 28, 1)) + conv_block(64) + [
            Flatten(),
            Dense(128), BatchNormalization(), ReLU(),
            Dropout(0.5),
            Dense(10, activation="softmax"),
        ])
        model.compile(optimizer=Adam(), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        return model, "benchmarks/_sides.py tinycnn_build('bn_dropout_cnn')"
    import tinycnn.zoo as zoo
    return zoo.get_model(name), f"tinycnn.zoo.get_model({name!r})"


def tinycnn_run(args, x, y, xt):
    import inspect

    import tinycnn
    tinycnn.utils.set_random_seed(args.seed)
    model, built_by = tinycnn_build(args.model)
    times, worker_mb = [], []
    fit_params = inspect.signature(model.fit).parameters
    t = time.perf_counter()
    if "callbacks" in fit_params:
        Base = getattr(tinycnn.callbacks, "Callback", object)

        class EpochTimer(Base):
            def on_epoch_begin(self, epoch, logs=None):
                self._t = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                times.append(time.perf_counter() - self._t)
                engine = getattr(self.model, "engine", None)
                run = getattr(engine, "_worker_run", None) or getattr(self.model, "_session", None)
                if run is not None and run.worker is not None:       # tinycnn's worker process, if any
                    worker_mb.append(private_mb(run.worker.pid))

        hist = model.fit(x, y, epochs=args.epochs, batch_size=args.batch_size, shuffle=True,
                         verbose=0, callbacks=[EpochTimer()])
        how = "callback"
    else:  # no callbacks yet: one fit call per epoch
        losses = []
        for _ in range(args.epochs):
            t0 = time.perf_counter()
            h = model.fit(x, y, epochs=1, batch_size=args.batch_size, shuffle=True, verbose=0)
            times.append(time.perf_counter() - t0)
            losses += list(getattr(h, "history", {}).get("loss", []))
        hist = type("H", (), {"history": {"loss": losses}})()
        how = "one fit call per epoch"
    fit_s = time.perf_counter() - t
    if len(times) != args.epochs:
        raise RuntimeError(f"tinycnn's fit called the epoch callbacks {len(times)} times for {args.epochs} epochs")
    # tinycnn's worker process (Linux): its private memory counts too (what it shares with
    # this process, counted here already, does not); sampled at each epoch's end, when it
    # holds its half's caches and whatever its allocator kept
    peak = proc_status_mb("VmHWM") + max(worker_mb, default=0.0)
    pkw = {"verbose": 0} if "verbose" in inspect.signature(model.predict).parameters else {}
    predict = lambda: model.predict(xt, batch_size=args.predict_batch_size, **pkw)  # noqa: E731
    threads = {"timed_by": how, "built_by": built_by,
               "worker_process_private_mb": max(worker_mb, default=None)}
    try:
        import numba
        threads.update(numba_threads=numba.get_num_threads(), numba=numba.__version__,
                       numba_threading_layer=str(numba.config.THREADING_LAYER))
        try:
            threads["numba_threading_layer_used"] = numba.threading_layer()
        except (ValueError, RuntimeError):
            pass
    except ImportError:
        pass
    try:                    # how often the fast engine left its halves for a busy machine
        from tinycnn.engines.fast import parallel
        threads["halves_backoffs"] = parallel.backoff.backoffs
    except (ImportError, AttributeError):
        pass
    trials = getattr(getattr(model, "engine", None), "_trials", {})   # did the halves' timed trials pay?
    threads["halves_trials"] = {str(size): [trial.trials, trial.halves_pay, trial.busy_verdicts]
                                for size, trial in trials.items()}
    n_params = model.count_params() if hasattr(model, "count_params") else None
    return n_params, times, fit_s, hist.history.get("loss", []), peak, predict, threads


# ---------------------------------------------------------------------------
# PyTorch (optional: `pip install -e ".[torch]"`)
# ---------------------------------------------------------------------------
def torch_import():
    import torch  # noqa: F401
    import torch.nn  # noqa: F401


def torch_build(name):
    """The same model in PyTorch (NCHW), Keras's initializers, and its optimizer.

    No softmax layer: CrossEntropyLoss takes the logits (Keras too computes the loss from them);
    predict applies the softmax. BatchNorm: Keras's momentum 0.99 is PyTorch's 0.01, epsilon 1e-3.
    Adam with Keras's epsilon 1e-7. Parameters match Keras's count once BN's running mean and
    variance (buffers in PyTorch) are counted.
    """
    import torch
    from torch import nn

    def init(layer, how="glorot"):
        if how == "he":
            nn.init.kaiming_uniform_(layer.weight, nonlinearity="relu")   # sqrt(6 / fan_in)
        else:
            nn.init.xavier_uniform_(layer.weight)                          # sqrt(6 / (fan_in + fan_out))
        nn.init.zeros_(layer.bias)
        return layer

    if name == "cnn_categorical":
        model = nn.Sequential(init(nn.Conv2d(1, 32, 3), "he"), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                              init(nn.Linear(13 * 13 * 32, 100), "he"), nn.ReLU(), init(nn.Linear(100, 10)))
        return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    if name == "simple_dense":
        model = nn.Sequential(nn.Flatten(), init(nn.Linear(784, 128)), nn.ReLU(), init(nn.Linear(128, 10)))
    elif name == "cnn_sparse":
        model = nn.Sequential(init(nn.Conv2d(1, 64, 3)), nn.ReLU(), nn.MaxPool2d(2),
                              init(nn.Conv2d(64, 64, 3)), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                              init(nn.Linear(5 * 5 * 64, 128)), nn.ReLU(), init(nn.Linear(128, 10)))
    elif name == "bn_dropout_cnn":
        def block(cin, filters):
            out = []
            for c in (cin, filters):
                out += [init(nn.Conv2d(c, filters, 3, padding=1)),
                        nn.BatchNorm2d(filters, eps=1e-3, momentum=0.01), nn.ReLU()]
            return out + [nn.MaxPool2d(2), nn.Dropout(0.25)]
        model = nn.Sequential(*block(1, 32), *block(32, 64), nn.Flatten(),
                              init(nn.Linear(7 * 7 * 64, 128)), nn.BatchNorm1d(128, eps=1e-3, momentum=0.01),
                              nn.ReLU(), nn.Dropout(0.5), init(nn.Linear(128, 10)))
    else:
        raise ValueError(name)
    return model, torch.optim.Adam(model.parameters(), eps=1e-7)


def torch_run(args, x, y, xt):
    import torch
    from torch import nn
    torch.manual_seed(args.seed)
    model, opt = torch_build(args.model)
    to_nchw = lambda a: a.transpose(0, 3, 1, 2) if a.ndim == 4 else a  # noqa: E731
    X = torch.from_numpy(np.ascontiguousarray(to_nchw(x)))            # once, up front
    XT = torch.from_numpy(np.ascontiguousarray(to_nchw(xt)))
    Y = torch.from_numpy(y)               # one-hot float32 (class probabilities) or int64 labels
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(args.seed)
    n, bs = len(X), args.batch_size
    times, losses = [], []
    model.train()
    t = time.perf_counter()
    for _ in range(args.epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=gen)
        total = torch.zeros(())
        for i in range(0, n, bs):
            idx = perm[i:i + bs]
            xb, yb = X[idx], Y[idx]
            opt.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            total += loss.detach() * len(idx)
        times.append(time.perf_counter() - t0)
        losses.append(float(total) / n)
    fit_s = time.perf_counter() - t
    peak = proc_status_mb("VmHWM")

    def predict():
        model.eval()
        with torch.inference_mode():
            out = [torch.softmax(model(XT[i:i + args.predict_batch_size]), dim=1)
                   for i in range(0, len(XT), args.predict_batch_size)]
        return torch.cat(out).numpy()

    trainable = sum(p.numel() for p in model.parameters())
    stats = sum(b.numel() for name, b in model.named_buffers() if name.endswith(("running_mean", "running_var")))
    threads = {"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
               "torch_interop_threads": torch.get_num_interop_threads(),
               "cpu_capability": getattr(torch.backends.cpu, "get_cpu_capability", lambda: None)(),
               "mkldnn": torch.backends.mkldnn.is_available(), "trainable_params": trainable,
               "loop": "zero_grad, forward, CrossEntropyLoss, backward, step; NCHW tensors"}
    return trainable + stats, times, fit_s, losses, peak, predict, threads


# ---------------------------------------------------------------------------
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--side", choices=SIDES, required=True)
    p.add_argument("--model", choices=MODELS, required=True)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--train-samples", type=int, default=60000,
                   help="train on the first N images only (quick mode); times are scaled to 60,000")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--predict-batch-size", type=int, default=32)
    p.add_argument("--predict-repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args(argv)

    t = time.perf_counter()
    {"keras": keras_import, "tinycnn": tinycnn_import, "torch": torch_import}[args.side]()
    import_s = time.perf_counter() - t
    rss_import = proc_status_mb("VmRSS")

    (x, y), (xt, yt) = load_fashion_mnist()
    x, y = prepare(args.model, x[:args.train_samples], y[:args.train_samples])
    xt, _ = prepare(args.model, xt, yt)
    rss_data = proc_status_mb("VmRSS")

    run = {"keras": keras_run, "tinycnn": tinycnn_run, "torch": torch_run}[args.side]
    n_params, times, fit_s, losses, peak_train, predict, threads = run(args, x, y, xt)

    pred_times = []
    for _ in range(1 + args.predict_repeats):
        t = time.perf_counter()
        pred = np.asarray(predict())
        pred_times.append(time.perf_counter() - t)
    acc = float(np.mean(np.argmax(pred, axis=1) == yt))

    threads["openblas"] = openblas_info()
    threads["cpu_count"] = os.cpu_count()
    threads["affinity"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    out = {
        "side": args.side, "model": args.model, "epochs": args.epochs,
        "train_samples": len(x), "batch_size": args.batch_size, "seed": args.seed,
        "params": n_params, "import_s": import_s,
        "rss_after_import_mb": rss_import, "rss_after_data_mb": rss_data,
        "epoch_s": times, "fit_s": fit_s, "loss": [float(v) for v in losses],
        "peak_train_mb": peak_train, "peak_mb": proc_status_mb("VmHWM"),
        "predict_batch_size": args.predict_batch_size,
        "predict_first_s": pred_times[0], "predict_s": pred_times[1:],
        "test_acc": acc, "settings": threads, "cpu": cpu_model(), "python": sys.version.split()[0],
        "numpy": np.__version__,
    }
    line = "\n" + json.dumps(out)          # on a line of its own, whatever was printed before
    if args.out:
        with open(args.out, "w") as f:
            f.write(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
