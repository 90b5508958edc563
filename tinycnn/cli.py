"""The `tinycnn` command: the notebook's jobs from a shell.

    tinycnn data                                     where the data is, and whether it verifies
    tinycnn summary --model cnn_sparse               a zoo model's layers and parameter counts
    tinycnn train --model cnn_categorical --epochs 5 --out runs/cat
                                                     train on the real data, test, save model + plots
                                                     (--gradient-norms: also each layer's gradient norms)
    tinycnn evaluate runs/cat/model.npz              a saved model's test loss and accuracy
    tinycnn cv --model cnn_categorical --folds 5 --epochs 10 [--jobs 2]
                                                     k-fold cross-validation, curves and box plot
                                                     (--dask-local N, --scheduler tcp://HOST:PORT:
                                                     on a Dask cluster)
    tinycnn plot activations runs/cat/model.npz --images 0 7 26 --filter 1 --out act.png
    tinycnn plot feature-maps MODEL_FILE --image 0 --layer conv2d
                                                     every feature map of one layer, one image
    tinycnn plot filters|confusion|mistakes|confident-mistakes MODEL_FILE --out FILE.png
                                                     (confusion --normalize: rows sum to 1)
    tinycnn plot prediction MODEL_FILE --image 0     one image's probabilities as bars
    tinycnn plot im2col --patch 1 1                  how a 3x3 patch becomes one matrix row
    tinycnn plot images --out grid.png               the 3x3 grid of training images

Every command has --help. Mistakes (a bad argument, missing data, a bad model file) end
with one clear message on stderr and exit status 1 (2 for bad arguments), no traceback.
Set TINYCNN_DEBUG=1 to see the traceback anyway.

Training and prediction run on the fast engine (--engine fast, the default "auto" where
numba is there) or on the textbook passes themselves (--engine reference; tinycnn.engines).
The fast engine uses two threads where there are two cores or more: each batch of a
convolutional model is cut in two halves that run side by side. TINYCNN_NUM_THREADS=1
keeps everything in one thread (tinycnn.utils.set_num_threads).

Only argparse is imported up front, so `tinycnn --help` answers at once; numpy, numba
and matplotlib load when a command needs them.
"""
import argparse
import contextlib
import functools
import json
import math
import os
import sys
import time

MODEL_NAMES = ("cnn_categorical", "simple_dense", "cnn_sparse", "best")
MODEL_FILE_NAME = "model.npz"


# ---------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------
def _int_at_least(minimum):
    """An argparse type: a whole number >= minimum, or a clear message."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {minimum} or more, got {value}")
        return value
    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _layer_name_or_index(text):
    """A layer given by its index (a whole number) or its name."""
    return int(text) if text.lstrip("-").isdigit() else text


def _jobs(text):
    value = int(text) if text.lstrip("-").isdigit() else None
    if value is None or value == 0 or value < -1:
        raise argparse.ArgumentTypeError(f"expected a positive number of processes or -1 "
                                         f"(one per CPU), got {text!r}")
    return value


def build_parser():
    parser = argparse.ArgumentParser(
        prog="tinycnn",
        description="Train and inspect the Fashion-MNIST notebook's CNNs with tinycnn.",
        epilog="Run `tinycnn COMMAND --help` for a command's options. Training uses two threads on two or "
               "more cores (each batch in two halves); TINYCNN_NUM_THREADS=1 keeps it to one.")
    parser.add_argument("--version", action="version", version=f"tinycnn {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    # tinycnn data
    data = commands.add_parser("data", help="where the Fashion-MNIST files are, and whether they verify",
                               description="Say where the Fashion-MNIST files are and whether they "
                                           "verify (never downloads). Exit status 1 if unusable.")
    data.add_argument("--path", help="look only in this folder (default: the usual places)")
    data.set_defaults(func=command_data)

    # tinycnn summary
    summary = commands.add_parser("summary", help="print a zoo model's layers and parameter counts",
                                  description="Print a zoo model's summary, as Keras's model.summary().")
    summary.add_argument("--model", choices=MODEL_NAMES, default="cnn_categorical",
                         help="which of the notebook's models (default: cnn_categorical)")
    summary.set_defaults(func=command_summary)

    # tinycnn train
    train = commands.add_parser(
        "train", help="train a zoo model on the real data, test it, save the model and plots",
        description="Train one of the notebook's models on the 60,000 training images, evaluate "
                    "it on the 10,000 test images, and save into --out: the model "
                    f"({MODEL_FILE_NAME}), history.json, results.json and the pictures.")
    _add_model_options(train, epochs=5)
    train.add_argument("--out", help="output folder (default: runs/MODEL); it must be new or "
                                     "empty, unless --overwrite is given")
    train.add_argument("--overwrite", action="store_true",
                       help="write into an --out folder that already holds files, replacing the "
                            "files of the same names (others are left as they are)")
    train.add_argument("--no-validation", action="store_true",
                       help="don't score the test set after each epoch (the curves then show "
                            "training only)")
    train.add_argument("--gradient-norms", action="store_true",
                       help="record each layer's gradient norm after every batch and save "
                            "gradient_norms.png (a little slower)")
    train.set_defaults(func=command_train)

    # tinycnn evaluate
    evaluate = commands.add_parser("evaluate", help="a saved model's loss and accuracy on the test set",
                                   description="Load a saved model and evaluate it on the test set.")
    evaluate.add_argument("model_file", metavar="MODEL_FILE", help="a file written by `tinycnn train` "
                                                                   "or model.save()")
    evaluate.add_argument("--limit", type=_positive_int, help="use only the first N test images")
    evaluate.add_argument("--batch-size", type=_positive_int, default=32, help="default: 32")
    _add_engine_option(evaluate)
    evaluate.set_defaults(func=command_evaluate)

    # tinycnn cv
    cv = commands.add_parser(
        "cv", help="k-fold cross-validation of a zoo model on the training set",
        description="K-fold cross-validation on the training set, as the machinelearningmastery "
                    "tutorial: a fresh model per fold, scored on that fold. Prints '> 91.200' per "
                    "fold, then the mean and standard deviation; saves the learning curves, "
                    "the box plot and cv.json into --out. The folds train here (--jobs: in local "
                    "processes) or on a Dask cluster; every place gives the same scores. A fold "
                    "whose worker dies is tried once more; Ctrl-C keeps the finished folds. Exit "
                    "status 1 when a fold has no score, 130 after Ctrl-C (cv.json is saved).")
    _add_model_options(cv, epochs=10)
    cv.add_argument("--folds", type=_positive_int, default=5, help="number of folds (default: 5)")
    where = cv.add_mutually_exclusive_group()
    where.add_argument("--jobs", type=_jobs, default=1,
                       help="folds trained at once, one local process each (default: 1; -1: one "
                            "per CPU)")
    where.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                       help="train the folds on the Dask cluster of this running scheduler "
                            "(needs Dask: pip install \"tinycnn[distributed]\")")
    where.add_argument("--dask-local", type=_positive_int, metavar="N",
                       help="start a Dask cluster of N worker processes on this machine and train "
                            "the folds there (needs Dask)")
    cv.add_argument("--out", help="output folder (default: runs/cv_MODEL)")
    cv.set_defaults(func=command_cv)

    # tinycnn plot ...
    plot = commands.add_parser("plot", help="draw a picture of a saved model or of the data",
                               description="Draw one of the notebook's pictures into a PNG.")
    pictures = plot.add_subparsers(dest="picture", metavar="PICTURE", required=True)

    activations = pictures.add_parser(
        "activations", help="one filter's activation maps in every conv/pool layer",
        description="The notebook's activation grid: rows are test images, columns the conv and "
                    "pool layers, showing one filter's output (colormap inferno).")
    activations.add_argument("model_file", metavar="MODEL_FILE")
    activations.add_argument("--images", type=_non_negative_int, nargs="+", default=[0, 7, 26],
                             help="test image indices, one row each (default: 0 7 26)")
    activations.add_argument("--filter", type=_non_negative_int, default=1, dest="filter_index",
                             help="which filter (channel) to show, counting from 0 "
                                  "(default: 1, the second)")
    activations.add_argument("--out", default="activations.png", help="default: activations.png")
    activations.set_defaults(func=command_plot_activations)

    maps = pictures.add_parser(
        "feature-maps", help="every feature map of one layer for one test image",
        description="One panel per channel of a conv or pool layer's output for one test image, "
                    "on one colour scale, beside the image.")
    maps.add_argument("model_file", metavar="MODEL_FILE")
    maps.add_argument("--image", type=_non_negative_int, default=0,
                      help="test image index (default: 0)")
    maps.add_argument("--layer", type=_layer_name_or_index,
                      help="the layer, by name (conv2d) or index from 0 (default: the first Conv2D)")
    maps.add_argument("--out", default="feature_maps.png", help="default: feature_maps.png")
    maps.set_defaults(func=command_plot_feature_maps)

    pictures_of_a_model = {}
    for name, helptext, func in (
            ("filters", "the first convolution's learned filters", command_plot_filters),
            ("confusion", "the confusion matrix on the test set", command_plot_confusion),
            ("mistakes", "misclassified test images with true and predicted labels",
             command_plot_mistakes),
            ("confident-mistakes", "the test images the model got wrong most confidently, with "
                                   "their probabilities", command_plot_confident_mistakes),
            ("prediction", "one test image's predicted probabilities as bars, one per class",
             command_plot_prediction)):
        picture = pictures.add_parser(name, help=helptext, description=f"Draw {helptext}.")
        picture.add_argument("model_file", metavar="MODEL_FILE")
        out_name = name.replace("-", "_")
        picture.add_argument("--out", default=f"{out_name}.png", help=f"default: {out_name}.png")
        picture.set_defaults(func=func)
        pictures_of_a_model[name] = picture
    pictures_of_a_model["confusion"].add_argument(
        "--normalize", action="store_true",
        help="divide each row by its total: fractions of each true class (rows sum to 1)")
    pictures_of_a_model["confident-mistakes"].add_argument(
        "--max-images", type=_positive_int, default=16, help="how many to show (default: 16)")
    pictures_of_a_model["prediction"].add_argument(
        "--image", type=_non_negative_int, default=0, help="test image index (default: 0)")

    im2col = pictures.add_parser(
        "im2col", help="how im2col turns a 3x3 patch into one row of the patch matrix",
        description="A 5x5 example image holding 0..24, one 3x3 patch framed, and the patch "
                    "matrix im2col makes of it with that patch's row framed.")
    im2col.add_argument("--patch", type=_non_negative_int, nargs=2, default=[1, 1],
                        metavar=("ROW", "COLUMN"),
                        help="the patch's top-left pixel, 0..2 each (default: 1 1)")
    im2col.add_argument("--out", default="im2col.png", help="default: im2col.png")
    im2col.set_defaults(func=command_plot_im2col)

    images = pictures.add_parser("images", help="the 3x3 grid of training images with class names",
                                 description="The notebook's first picture: 9 training images "
                                             "with their class names.")
    images.add_argument("--start", type=_non_negative_int, default=0,
                        help="index of the first image (default: 0)")
    images.add_argument("--out", default="images.png", help="default: images.png")
    images.set_defaults(func=command_plot_images)
    return parser


def _add_model_options(parser, epochs):
    parser.add_argument("--model", choices=MODEL_NAMES, default="cnn_categorical",
                        help="which of the notebook's models (default: cnn_categorical)")
    parser.add_argument("--epochs", type=_positive_int, default=None,
                        help=f"default: {epochs} (best: its recipe's 30)")
    parser.add_argument("--batch-size", type=_positive_int, default=None,
                        help="default: 32 (best: its recipe's 128)")
    parser.set_defaults(default_epochs=epochs)
    parser.add_argument("--limit", type=_positive_int,
                        help="use only the first N training (and test) images, for a quick run")
    parser.add_argument("--seed", type=_non_negative_int, default=1,
                        help="random seed for weights, shuffling and folds (default: 1)")
    parser.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1,
                        help="0 silent, 1 progress bar, 2 one line per epoch (default: 1)")
    _add_engine_option(parser)


def _fill_in_model_defaults(args):
    """--epochs and --batch-size where not given: the zoo model's recipe, else the command's defaults."""
    from tinycnn.zoo import get_spec
    spec = get_spec(args.model)
    if args.epochs is None:
        args.epochs = spec.epochs or args.default_epochs
    if args.batch_size is None:
        args.batch_size = spec.batch_size or 32


def _add_engine_option(parser):
    parser.add_argument("--engine", choices=("auto", "reference", "fast"), default=None,
                        help="what runs the batches: 'fast' (numba kernels, two cores), 'reference' "
                             "(the layers' own NumPy passes) or 'auto' (fast where numba is there; "
                             "the default, or $TINYCNN_ENGINE)")


def _version():
    from tinycnn import __version__
    return __version__


# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------
def command_data(args):
    from tinycnn.datasets import data_info, describe_data
    print(describe_data(args.path))
    return 0 if data_info(args.path)["ok"] else 1


def command_summary(args):
    from tinycnn.zoo import get_spec
    spec = get_spec(args.model)
    model = spec.build()
    if not model.built:
        model.build((None,) + spec.input_shape)    # simple_dense has no input_shape of its own
    model.summary()
    return 0


def command_train(args):
    from tinycnn.callbacks import GradientNorms
    from tinycnn.data import load_for_model
    from tinycnn.utils import set_random_seed
    from tinycnn.zoo import get_spec

    spec = get_spec(args.model)
    out = args.out or os.path.join("runs", args.model)
    if not args.overwrite:
        _refuse_earlier_results(out)                 # before the data is even loaded
    (x_train, y_train), (x_test, y_test) = load_for_model(args.model, limit=args.limit)
    out = _make_output_folder(out)
    print(f"{args.model}: {spec.description}")
    print(f"training on {len(x_train)} images, testing on {len(x_test)}; "
          f"epochs: {args.epochs}, batch size: {args.batch_size}, seed: {args.seed}")

    set_random_seed(args.seed)
    model = spec.build_for(args.epochs, args.batch_size, len(x_train))
    if not model.built:
        model.build((None,) + spec.input_shape)    # simple_dense has no input_shape of its own
    if args.verbose:
        model.summary()
    validation = None if args.no_validation else (x_test, y_test)
    recorder = GradientNorms() if args.gradient_norms else None
    start = time.perf_counter()
    history = model.fit(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
                        validation_data=validation, verbose=args.verbose,
                        callbacks=[recorder] if recorder else None)
    train_seconds = time.perf_counter() - start
    test_loss, test_accuracy = model.evaluate(x_test, y_test, batch_size=args.batch_size, verbose=0)
    print(f"test loss {test_loss:.4f} - test accuracy {test_accuracy:.4f} "
          f"(trained in {train_seconds:.1f} s, {train_seconds / args.epochs:.1f} s/epoch)")

    model_path = os.path.join(out, MODEL_FILE_NAME)
    model.save(model_path)
    write_json(os.path.join(out, "history.json"), _plain_history(history))
    write_json(os.path.join(out, "results.json"), {
        "model": args.model, "epochs": args.epochs, "batch_size": args.batch_size,
        "seed": args.seed, "train_images": len(x_train), "test_images": len(x_test),
        "test_loss": float(test_loss), "test_accuracy": float(test_accuracy),
        "train_seconds": round(train_seconds, 2),
    })

    saved = _save_model_pictures(model, x_test, y_test, out, history=history, gradient_norms=recorder)
    print(f"saved {model_path}, history.json, results.json and {', '.join(saved)} in {out}")
    return 0


def _save_model_pictures(model, x_test, y_test, out, history=None, gradient_norms=None):
    """The pictures of a trained model, saved into `out`; returns their file names."""
    from tinycnn import plot
    import matplotlib.pyplot as plt

    saved = []

    def keep(fig, name):
        plot.save_figure(fig, os.path.join(out, name))
        plt.close(fig)
        saved.append(name)

    if history is not None:
        keep(plot.learning_curves(history), "learning_curves.png")
    if gradient_norms is not None:
        keep(plot.gradient_norms(gradient_norms), "gradient_norms.png")
    predicted = model.predict(x_test, verbose=0).argmax(axis=1)
    true = y_test.argmax(axis=1) if y_test.ndim == 2 else y_test
    keep(plot.confusion_matrix(true, predicted), "confusion_matrix.png")
    keep(plot.misclassified(x_test, true, predicted), "misclassified.png")
    if any(type(layer).__name__ == "Conv2D" for layer in model.layers):
        rows = [i for i in (0, 7, 26) if i < len(x_test)]
        labels = [f"test {i}: {plot.CLASS_NAMES[true[i]]}" for i in rows]
        keep(plot.activation_grid(model, x_test[rows], filter_index=1, row_labels=labels),
             "activations.png")
        keep(plot.filters(model), "filters.png")
    return saved


def command_evaluate(args):
    model, x_test, y_test = _load_model_and_test_data(args.model_file, args.limit)
    loss, accuracy = model.evaluate(x_test, y_test, batch_size=args.batch_size, verbose=0)
    print(f"{args.model_file}: test loss {loss:.4f} - test accuracy {accuracy:.4f} "
          f"({len(x_test)} images)")
    return 0


def command_cv(args):
    with _dask_client(args) as client:           # first: a missing Dask or scheduler fails at once
        return _run_cv(args, client)


def _run_cv(args, client):
    """The cv command once its Dask client (or None) is ready; returns the exit status."""
    from tinycnn import plot
    from tinycnn.data import load_for_model
    from tinycnn.model_selection import cross_validate
    from tinycnn.zoo import get_spec

    spec = get_spec(args.model)
    (x_train, y_train), _ = load_for_model(args.model, limit=args.limit)
    out = _make_output_folder(args.out or os.path.join("runs", f"cv_{args.model}"))
    print(f"{args.folds}-fold cross-validation of {args.model} on {len(x_train)} training images; "
          f"epochs: {args.epochs}, batch size: {args.batch_size}")
    start = time.perf_counter()
    fold_images = len(x_train) * (args.folds - 1) // args.folds        # what each fold trains on
    build = functools.partial(spec.build_for, args.epochs, args.batch_size, fold_images)
    result = cross_validate(build, x_train, y_train, n_splits=args.folds, epochs=args.epochs,
                            batch_size=args.batch_size, random_state=args.seed,
                            n_jobs=args.jobs if client is None else 1, executor=client,
                            verbose=2 if args.verbose == 2 else 1)
    seconds = time.perf_counter() - start
    print("Accuracy: mean=%.3f std=%.3f, n=%d  (%.1f s)" % (result.mean * 100, result.std * 100,
                                                          len(result.scores), seconds))
    write_json(os.path.join(out, "cv.json"), {
        "model": args.model, "folds": args.folds, "epochs": args.epochs,
        "batch_size": args.batch_size, "seed": args.seed, "train_images": len(x_train),
        "scores": result.scores, "fold_numbers": result.fold_numbers,
        "mean": result.mean if result.scores else None, "std": result.std if result.scores else None,
        "partial": result.partial, "interrupted": result.interrupted,
        "missing": {str(number): problem for number, problem in result.missing.items()},
        "where": result.where, "data_bytes": result.data_bytes, "seconds": round(seconds, 2),
        "histories": [h.history for h in result.histories],
    })
    saved = ["cv.json"]
    if result.scores:
        import matplotlib.pyplot as plt
        for fig, name in ((plot.learning_curves(result.histories), "learning_curves.png"),
                          (plot.performance(result.scores), "performance.png")):
            plot.save_figure(fig, os.path.join(out, name))
            plt.close(fig)
            saved.append(name)
    print(f"saved {', '.join(saved)} in {out}")
    if result.interrupted:
        print("tinycnn cv: interrupted; cv.json holds the folds that finished", file=sys.stderr)
        return 130
    return 1 if result.partial else 0


@contextlib.contextmanager
def _dask_client(args):
    """None for --jobs; a Dask Client for --scheduler or --dask-local, closed after (with
    the cluster --dask-local started)."""
    if args.scheduler is None and args.dask_local is None:
        yield None
        return
    option = "--scheduler" if args.scheduler is not None else "--dask-local"
    try:
        import dask
        import distributed
    except ImportError:
        raise ValueError(f"{option} needs Dask, which is not installed; install it with "
                         f"pip install \"tinycnn[distributed]\"") from None
    if args.scheduler is not None:
        with distributed.Client(args.scheduler, timeout="10s") as client:
            yield client
        return
    # A fold whose worker dies is tried once more on another one, as --jobs does.
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}), _ctrl_c_ignored():
        cluster = distributed.LocalCluster(n_workers=args.dask_local, threads_per_worker=1,
                                           processes=True, host="127.0.0.1",
                                           dashboard_address="127.0.0.1:0")   # any free port
    with cluster, distributed.Client(cluster) as client:
        yield client


@contextlib.contextmanager
def _ctrl_c_ignored():
    """Ctrl-C ignored inside the block. Processes started here inherit that: Ctrl-C in the
    terminal reaches the whole process group, and it is this process's to handle (it cancels
    the folds, keeps the finished ones and closes the cluster), not each worker's."""
    import signal
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


def command_plot_activations(args):
    from tinycnn import plot
    model, x_test, y_test = _load_model_and_test_data(args.model_file)
    if not any(type(layer).__name__ == "Conv2D" for layer in model.layers):
        raise ValueError(f"{args.model_file} has no Conv2D layer; activation maps need a "
                         f"convolutional model (cnn_categorical or cnn_sparse)")
    for index in args.images:
        _test_image_index(index, x_test, "--images")
    true = y_test.argmax(axis=1) if y_test.ndim == 2 else y_test
    labels = [f"test {i}: {plot.CLASS_NAMES[true[i]]}" for i in args.images]
    plot.activation_grid(model, x_test[args.images], filter_index=args.filter_index,
                         row_labels=labels, save=args.out)
    print(f"saved {args.out}")
    return 0


def _test_image_index(index, x_test, option="--image"):
    """index, checked to be one of the test set's images."""
    if index >= len(x_test):
        raise ValueError(f"{option}: index {index} is out of range; the test set has "
                         f"{len(x_test)} images (0..{len(x_test) - 1})")
    return index


def command_plot_feature_maps(args):
    from tinycnn import plot
    model, x_test, _ = _load_model_and_test_data(args.model_file)
    index = _test_image_index(args.image, x_test)
    plot.feature_maps(model, x_test[index], layer=args.layer, save=args.out)
    print(f"saved {args.out}")
    return 0


def command_plot_filters(args):
    from tinycnn import plot
    from tinycnn.models import load_model
    plot.filters(load_model(args.model_file), save=args.out)
    print(f"saved {args.out}")
    return 0


def command_plot_confusion(args):
    from tinycnn import plot
    model, x_test, y_test = _load_model_and_test_data(args.model_file)
    true = y_test.argmax(axis=1) if y_test.ndim == 2 else y_test
    plot.confusion_matrix(true, model.predict(x_test, verbose=0).argmax(axis=1),
                          normalize=args.normalize, save=args.out)
    print(f"saved {args.out}")
    return 0


def command_plot_mistakes(args):
    from tinycnn import plot
    model, x_test, y_test = _load_model_and_test_data(args.model_file)
    true = y_test.argmax(axis=1) if y_test.ndim == 2 else y_test
    plot.misclassified(x_test, true, model.predict(x_test, verbose=0).argmax(axis=1), save=args.out)
    print(f"saved {args.out}")
    return 0


def command_plot_confident_mistakes(args):
    from tinycnn import plot
    model, x_test, y_test = _load_model_and_test_data(args.model_file)
    plot.most_confident_mistakes(x_test, y_test, model.predict(x_test, verbose=0),
                                 max_images=args.max_images, save=args.out)
    print(f"saved {args.out}")
    return 0


def command_plot_prediction(args):
    from tinycnn import plot
    model, x_test, y_test = _load_model_and_test_data(args.model_file)
    index = _test_image_index(args.image, x_test)
    true = y_test.argmax(axis=1) if y_test.ndim == 2 else y_test
    probabilities = model.predict(x_test[index:index + 1], verbose=0)[0]      # (10,)
    plot.prediction_bars(probabilities, image=x_test[index], true_label=int(true[index]),
                         save=args.out)
    print(f"saved {args.out}")
    return 0


def command_plot_im2col(args):
    from tinycnn import plot
    plot.im2col_picture(patch=tuple(args.patch), save=args.out)
    print(f"saved {args.out}")
    return 0


def command_plot_images(args):
    from tinycnn import plot
    from tinycnn.data import load_dataset
    train_x, train_y, _, _ = load_dataset(one_hot_encode=False)
    if args.start + 9 > len(train_x):
        raise ValueError(f"--start {args.start}: the training set has {len(train_x)} images, "
                         f"so the 9 shown must start at {len(train_x) - 9} or before")
    plot.show_images(train_x, train_y, indices=range(args.start, args.start + 9), save=args.out)
    print(f"saved {args.out}")
    return 0


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------
def _make_output_folder(path):
    """Create the output folder before training, so a bad --out fails at once."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise OSError(f"cannot create the output folder {path!r}: {error.strerror or error}") from None
    if not os.access(path, os.W_OK):
        raise OSError(f"cannot write into the output folder {path!r}; choose another with --out")
    return path


def _refuse_earlier_results(path):
    """FileExistsError if the output folder `path` exists and holds anything: a run would
    silently replace the files of an earlier one. A new or empty folder is fine."""
    try:
        names = sorted(os.listdir(path))
    except (FileNotFoundError, NotADirectoryError):
        return                                       # _make_output_folder reports a bad path
    if names:
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        raise FileExistsError(f"the output folder {path!r} already holds files ({shown}); "
                              f"choose another --out, or pass --overwrite to replace them")


def _load_model_and_test_data(model_file, limit=None):
    """A saved model and the test set in the format it takes:
    x float32 (N,) + its input shape, y one-hot (N, 10) or integers (N,) as its loss wants."""
    from tinycnn.data import load_dataset, to_model_input
    from tinycnn.models import load_model

    model = load_model(model_file)
    input_shape = _input_shape(model)
    _require_image_input(model_file, input_shape)
    _, _, x_test, y_test = load_dataset(one_hot_encode=_wants_one_hot(model), limit=limit,
                                        add_channel_axis=False)
    x_test = to_model_input(x_test, input_shape)
    return model, x_test, y_test


def _require_image_input(model_file, input_shape):
    """The test images (28 x 28 pixels each) are reshaped to the model's input shape: that
    shape must hold 784 values, such as (28, 28, 1) or (28, 28)."""
    values = math.prod(input_shape)
    if values != 28 * 28:
        raise ValueError(f"{model_file} holds a model that takes inputs of shape "
                         f"{(None,) + input_shape} ({values} values each), but the Fashion-MNIST "
                         f"test images are 28 x 28 pixels (784 values each): use a model built for "
                         f"them, with input shape (None, 28, 28, 1) or (None, 28, 28)")


def _input_shape(model):
    """The per-sample input shape a built model takes, e.g. (28, 28, 1)."""
    shape = getattr(model, "input_shape", None)
    if shape is None:
        raise ValueError("the model file holds a model that was never built; "
                         "fit or build it before saving")
    return tuple(shape[1:]) if shape[0] is None else tuple(shape)


def _wants_one_hot(model):
    """True when the model's loss takes one-hot labels (categorical, not sparse)."""
    loss = getattr(model, "loss", None)
    name = loss if isinstance(loss, str) else getattr(loss, "name", type(loss).__name__)
    return "sparse" not in str(name).lower()


def _plain_history(history):
    return {key: [float(v) for v in values] for key, values in history.history.items()}


def write_json(path, data):
    """Write `data` as JSON to `path` via a temporary file and a rename (never half-written)."""
    from tinycnn.utils import atomic_write
    with atomic_write(path, "w") as file:
        json.dump(data, file, indent=2)
        file.write("\n")


def _is_user_error(error):
    """Errors that mean the user gave something wrong (a value, a file, missing data),
    as opposed to a bug in tinycnn: those get a message instead of a traceback."""
    user_error_names = ("DatasetError", "ModelFileError")
    if any(cls.__name__ in user_error_names for cls in type(error).__mro__):
        return True
    return isinstance(error, (ValueError, OSError))


def main(argv=None):
    """Run the `tinycnn` command with `argv` (default: sys.argv[1:]); return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if hasattr(args, "default_epochs"):
        _fill_in_model_defaults(args)
    engine_before = os.environ.get("TINYCNN_ENGINE")
    if getattr(args, "engine", None):        # what compile's engine="auto" means, here and in cv's workers
        os.environ["TINYCNN_ENGINE"] = args.engine
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("\ntinycnn: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if os.environ.get("TINYCNN_DEBUG") or not _is_user_error(error):
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"tinycnn {args.command}: error: {message}", file=sys.stderr)
        return 1
    finally:
        if engine_before is None:
            os.environ.pop("TINYCNN_ENGINE", None)
        else:
            os.environ["TINYCNN_ENGINE"] = engine_before


if __name__ == "__main__":
    sys.exit(main())
