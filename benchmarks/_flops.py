"""The benchmark's models as plain layer lists, and what their shapes imply: parameters and
training FLOPs per step. No library is imported, so every side can be checked against it.

Each model is (input shape, layers), a layer one of
    ("conv", filters, kernel, padding)   square kernel, stride 1, "valid" or "same"
    ("dense", units)
    ("pool", size)                       max pooling, stride = size, "valid"
    ("bn",)  ("relu",)  ("dropout", rate)  ("flatten",)

Training FLOPs of one step (a multiply-add counts 2):
    forward     2 x multiply-adds of every conv and dense layer
    backward    2 x the same again for dW, and 2 x the same for dX, except for the first layer
                with weights, whose input needs no gradient
Pooling, batch normalisation, activations, dropout, the loss and the optimizer's update are
left out: they are memory-bound, a few per cent of these counts. cnn_categorical at batch 32
gives 128.9 MFLOP (../shared/REFERENCE.md), 4.03 MFLOP per image.
"""
import math

ARCHITECTURES = {
    "cnn_categorical": ((28, 28, 1), [
        ("conv", 32, 3, "valid"), ("pool", 2), ("flatten",), ("dense", 100), ("dense", 10)]),
    "simple_dense": ((28, 28), [("flatten",), ("dense", 128), ("dense", 10)]),
    "cnn_sparse": ((28, 28, 1), [
        ("conv", 64, 3, "valid"), ("pool", 2), ("conv", 64, 3, "valid"), ("pool", 2),
        ("flatten",), ("dense", 128), ("dense", 10)]),
    # two blocks of same-padded 3x3 convs (32-32, 64-64), each conv + BN + ReLU, each block
    # ending in 2x2 max pooling and Dropout(0.25); Dense 128 + BN + ReLU, Dropout(0.5), Dense 10
    "bn_dropout_cnn": ((28, 28, 1), [
        ("conv", 32, 3, "same"), ("bn",), ("relu",), ("conv", 32, 3, "same"), ("bn",), ("relu",),
        ("pool", 2), ("dropout", 0.25),
        ("conv", 64, 3, "same"), ("bn",), ("relu",), ("conv", 64, 3, "same"), ("bn",), ("relu",),
        ("pool", 2), ("dropout", 0.25),
        ("flatten",), ("dense", 128), ("bn",), ("relu",), ("dropout", 0.5), ("dense", 10)]),
}


def layer_table(name):
    """One row per layer: (layer, output shape, multiply-adds per image, params, trainable params)."""
    shape, layers = ARCHITECTURES[name]
    shape = tuple(shape)
    rows = []
    for layer in layers:
        kind = layer[0]
        macs = params = trainable = 0
        if kind == "conv":
            _, filters, k, padding = layer
            h, w, c = shape
            oh, ow = (h, w) if padding == "same" else (h - k + 1, w - k + 1)
            shape = (oh, ow, filters)
            macs = oh * ow * filters * k * k * c
            params = trainable = k * k * c * filters + filters
        elif kind == "dense":
            units = layer[1]
            (fan_in,) = shape
            shape = (units,)
            macs = fan_in * units
            params = trainable = fan_in * units + units
        elif kind == "pool":
            size = layer[1]
            shape = (shape[0] // size, shape[1] // size, shape[2])
        elif kind == "flatten":
            shape = (math.prod(shape),)
        elif kind == "bn":
            params, trainable = 4 * shape[-1], 2 * shape[-1]   # gamma, beta; moving mean, variance
        elif kind not in ("relu", "dropout"):
            raise ValueError(f"unknown layer {layer!r}")
        rows.append((layer, shape, macs, params, trainable))
    return rows


def param_count(name):
    """(all parameters, trainable ones): Keras's count_params() counts BN's moving statistics too."""
    rows = layer_table(name)
    return sum(r[3] for r in rows), sum(r[4] for r in rows)


def training_flops(name, batch_size=32):
    """FLOPs of one training step of `batch_size` images: forward, dW and (but the first layer) dX."""
    per_image = 0
    first = True
    for _, _, macs, _, _ in layer_table(name):
        if not macs:
            continue
        per_image += 2 * macs * (2 if first else 3)   # forward + dW (+ dX)
        first = False
    return per_image * batch_size


def predict_flops(name, n_images=10000):
    """Forward FLOPs of predicting `n_images`."""
    return 2 * sum(r[2] for r in layer_table(name)) * n_images


if __name__ == "__main__":
    for m in ARCHITECTURES:
        total, trainable = param_count(m)
        print(f"{m:16s} {training_flops(m) / 1e6:8.1f} MFLOP per training step of 32   "
              f"{total:,} params ({trainable:,} trainable)")
