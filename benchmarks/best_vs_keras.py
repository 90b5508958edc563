"""The `best` model's recipe trained by tinycnn and by Keras on the same machine, one after the other.

    python benchmarks/best_vs_keras.py                    # both sides, 30 epochs each (hours on 2 cores)
    python benchmarks/best_vs_keras.py --epochs 2         # a quick look at s/epoch
    python benchmarks/best_vs_keras.py --sides keras --epochs 30 --seed 2 --out keras_best.json
    python benchmarks/best_vs_keras.py --sides keras --threads 1   # one thread a side: two runs at once on 2 cores

The recipe is tinycnn.zoo.best_model's, written out in Keras: RandomFlip("horizontal"),
RandomTranslation(3/28, 3/28, fill_mode="constant"), RandomErasing(factor=p, scale=(0.02, 0.3),
fill_value=0) (Keras's RandomErasing, after the same paper), the same convs, BatchNormalization,
Dropout and Dense layers (the erasing probability p and the dropout rates are read from
tinycnn.zoo, so both sides train one recipe), AdamW(weight_decay=1e-4) on CosineDecay(2e-4 -> 2e-3 over 2 epochs,
then to 0), cross-entropy with label_smoothing=0.1, batch 128, all 60,000 training images.
The two libraries' random streams differ, so their accuracies agree only within seed noise.

Each side runs in a subprocess of its own and prints one JSON line per epoch (seconds, the
training loss, the test accuracy after that epoch; the final epoch's is the one to report:
nothing here picks an epoch by the test set), then the machine record (CPU, ISA, BLAS kernel,
the measured matmul rate: benchmarks/_machine.py).
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def keras_recipe(epochs, batch_size, train_images):
    import keras
    from keras import layers as K
    from tinycnn.zoo import BEST_DROPOUT_RATES, BEST_ERASING_PROBABILITY
    after_block_1, after_block_2, after_dense = BEST_DROPOUT_RATES
    steps_per_epoch = math.ceil(train_images / batch_size)
    warmup = min(2, epochs) * steps_per_epoch
    schedule = keras.optimizers.schedules.CosineDecay(
        2e-4, decay_steps=max(1, epochs * steps_per_epoch - warmup), warmup_target=2e-3, warmup_steps=warmup)

    def conv(filters):
        return [K.Conv2D(filters, 3, padding="same", use_bias=False), K.BatchNormalization(), K.ReLU()]

    model = keras.Sequential([
        keras.Input((28, 28, 1)),
        K.RandomFlip("horizontal"), K.RandomTranslation(3 / 28, 3 / 28, fill_mode="constant"),
        K.RandomErasing(factor=BEST_ERASING_PROBABILITY, scale=(0.02, 0.3), fill_value=0.0, value_range=(0, 1)),
        *conv(32), *conv(32), K.MaxPooling2D(2), K.Dropout(after_block_1),
        *conv(64), *conv(64), K.MaxPooling2D(2), K.Dropout(after_block_2),
        K.Flatten(), K.Dense(128, use_bias=False), K.BatchNormalization(), K.ReLU(), K.Dropout(after_dense),
        K.Dense(10, activation="softmax")])
    model.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=1e-4),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.1), metrics=["accuracy"])
    return model


def run_side(side, epochs, batch_size, seed, train_images=None, threads=None):
    """Train one side, printing a JSON line per epoch; returns nothing (the parent reads stdout).

    threads: None leaves each library its default; N caps Keras's two thread pools at N
    (tinycnn's and OpenBLAS's thread counts come from the environment the parent sets).
    """
    import numpy as np
    from _sides import load_fashion_mnist
    (x, y), (xt, yt) = load_fashion_mnist()
    x, y = x[:train_images], y[:train_images]           # None: all 60,000
    x = (x.astype("float32") / 255)[..., None]
    xt = (xt.astype("float32") / 255)[..., None]
    onehot, onehot_test = np.eye(10, dtype="float32")[y], np.eye(10, dtype="float32")[yt]
    if side == "keras":
        import keras
        if threads:
            import tensorflow as tf
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        keras.utils.set_random_seed(seed)
        model = keras_recipe(epochs, batch_size, len(x))
    else:
        import tinycnn
        from tinycnn import zoo
        tinycnn.utils.set_random_seed(seed)
        model = zoo.get_spec("best").build_for(epochs, batch_size, len(x))
    print(json.dumps({"side": side, "params": int(model.count_params())}), flush=True)
    for epoch in range(epochs):
        start = time.perf_counter()
        history = model.fit(x, onehot, batch_size=batch_size, epochs=epoch + 1, initial_epoch=epoch, verbose=0)
        seconds = time.perf_counter() - start
        _, accuracy = model.evaluate(xt, onehot_test, batch_size=1000, verbose=0)
        print(json.dumps({"side": side, "epoch": epoch + 1, "seconds": round(seconds, 2),
                          "loss": round(float(history.history["loss"][-1]), 4),
                          "test_accuracy": round(float(accuracy), 4)}), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sides", default="tinycnn,keras")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--train-images", type=int, help="train on the first N images only (a check that it runs)")
    parser.add_argument("--threads", type=int, help="threads per side (default: each library's own)")
    parser.add_argument("--out", help="write every JSON line and the machine record here")
    parser.add_argument("--side", help=argparse.SUPPRESS)          # internal: run one side here
    args = parser.parse_args()
    if args.side:
        run_side(args.side, args.epochs, args.batch_size, args.seed, args.train_images, args.threads)
        return
    from _machine import describe, machine_record
    lines = []
    for side in args.sides.split(","):
        command = [sys.executable, __file__, "--side", side, "--epochs", str(args.epochs),
                   "--batch-size", str(args.batch_size), "--seed", str(args.seed)]
        if args.train_images:
            command += ["--train-images", str(args.train_images)]
        environment = dict(os.environ)
        if args.threads:
            command += ["--threads", str(args.threads)]
            environment.update({name: str(args.threads) for name in
                                ("TINYCNN_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")})
        with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=environment) as child:
            for line in child.stdout:
                print(line, end="", flush=True)
                lines.append(json.loads(line))
        if child.returncode:
            sys.exit(f"best_vs_keras: the {side} side failed (exit {child.returncode})")
    record = machine_record()
    print("\n".join(describe(record)))
    for side in args.sides.split(","):
        epochs = [line for line in lines if line.get("side") == side and "epoch" in line]
        seconds = sorted(line["seconds"] for line in epochs)
        print(f"{side}: median {seconds[len(seconds) // 2]:.1f} s/epoch, final test accuracy "
              f"{epochs[-1]['test_accuracy']:.4f} after {len(epochs)} epochs")
    if args.out:
        with open(args.out, "w") as out:
            json.dump({"machine": record, "lines": lines}, out, indent=1)


if __name__ == "__main__":
    main()
