"""The `tinycnn` command: help, a quick real run of each command, and clear errors."""
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import installed_command
from tinycnn.cli import build_parser, main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def headless_env(**extra):
    """This environment without a display, and with one BLAS thread (2 shared cores)."""
    env = {name: value for name, value in os.environ.items()
           if name not in ("MPLBACKEND", "DISPLAY", "WAYLAND_DISPLAY")}
    env["OPENBLAS_NUM_THREADS"] = "1"
    env.update(extra)
    return env


# ---------------------------------------------------------------------------
# --help everywhere
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [
    [], ["data"], ["summary"], ["train"], ["evaluate"], ["cv"], ["plot"],
    ["plot", "activations"], ["plot", "filters"], ["plot", "confusion"], ["plot", "mistakes"],
    ["plot", "images"], ["plot", "feature-maps"], ["plot", "confident-mistakes"],
    ["plot", "prediction"], ["plot", "im2col"],
])
def test_help_everywhere(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv + ["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: tinycnn" + "".join(" " + a for a in argv))


def test_defaults_are_the_notebooks():
    from tinycnn.cli import _fill_in_model_defaults
    args = build_parser().parse_args(["train"])
    _fill_in_model_defaults(args)
    assert (args.model, args.epochs, args.batch_size) == ("cnn_categorical", 5, 32)
    args = build_parser().parse_args(["cv"])
    _fill_in_model_defaults(args)
    assert (args.folds, args.epochs, args.batch_size, args.jobs) == (5, 10, 32, 1)
    args = build_parser().parse_args(["plot", "activations", "m.npz"])
    assert (args.images, args.filter_index) == ([0, 7, 26], 1)


# ---------------------------------------------------------------------------
# Bad arguments, missing data, bad model files: one line on stderr, non-zero exit
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["train", "--model", "resnet"], "invalid choice: 'resnet'"),
    (["train", "--epochs", "0"], "must be 1 or more"),
    (["train", "--batch-size", "ten"], "expected a whole number"),
    (["cv", "--jobs", "0"], "positive number of processes"),
    (["cv", "--jobs", "2", "--dask-local", "2"], "not allowed with argument --jobs"),
    (["cv", "--dask-local", "0"], "must be 1 or more"),
    (["plot", "activations", "m.npz", "--filter", "-1"], "must be 0 or more"),
    (["fly"], "invalid choice: 'fly'"),
])
def test_bad_arguments_exit_2_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_data_is_one_clear_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TINYCNN_DATA", str(tmp_path))          # an explicit, empty folder
    assert main(["train", "--limit", "100", "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tinycnn train: error: Fashion-MNIST cannot be loaded")
    assert "TINYCNN_DATA" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
    assert main(["data"]) == 1                                 # `tinycnn data` reports it too
    assert "NOT USABLE" in capsys.readouterr().out


def test_bad_output_folder_fails_before_training(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("")
    assert main(["train", "--limit", "100", "--out", str(a_file / "run")]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("tinycnn train: error: cannot create the output folder")
    assert "training on" not in captured.out                 # failed before any work


@pytest.mark.parametrize("content", [None, b"not a model at all"])
def test_bad_model_file_is_one_clear_line(tmp_path, capsys, content):
    path = tmp_path / "model.npz"
    if content is not None:
        path.write_bytes(content)
    assert main(["evaluate", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tinycnn evaluate: error: ")
    assert str(path) in err and len(err.strip().splitlines()) == 1     # names the file


@pytest.mark.parametrize("kind", ["encrypted member", "unknown compression", "raw header member",
                                  "header nested 200,000 deep"])
def test_hostile_model_files_are_one_clear_line(tmp_path, capsys, kind):
    from test_saving import hostile_file
    from tinycnn.layers import Dense, Flatten
    from tinycnn.models import Sequential
    model = Sequential([Flatten(input_shape=(28, 28)), Dense(10, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy", ["accuracy"])
    model.save(tmp_path / "model.npz")
    hostile = hostile_file(kind, tmp_path / "model.npz", tmp_path)
    assert main(["evaluate", str(hostile)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"tinycnn evaluate: error: cannot load {str(hostile)!r}: ")
    assert len(err.strip().splitlines()) == 1


def test_evaluate_says_which_input_shape_the_model_wants_and_what_the_data_has(tmp_path, capsys):
    from tinycnn.layers import Dense
    from tinycnn.models import Sequential
    model = Sequential([Dense(10, activation="softmax", input_shape=(10,))])
    model.compile("sgd", "categorical_crossentropy", ["accuracy"])
    model.save(tmp_path / "model.npz")
    assert main(["evaluate", str(tmp_path / "model.npz"), "--limit", "32"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"tinycnn evaluate: error: {tmp_path / 'model.npz'} ")
    assert "inputs of shape (None, 10)" in err and "28 x 28" in err
    assert len(err.strip().splitlines()) == 1


def test_train_refuses_an_output_folder_that_holds_files_unless_told_to_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    argv = ["train", "--model", "simple_dense", "--limit", "300", "--epochs", "1",
            "--no-validation", "--verbose", "0", "--out", str(out)]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith(f"tinycnn train: error: the output folder {str(out)!r} already "
                                   f"holds files (notes.txt)")
    assert "--overwrite" in captured.err and len(captured.err.strip().splitlines()) == 1
    assert "training on" not in captured.out                        # refused before any work
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert main(argv + ["--overwrite"]) == 0
    assert (out / "model.npz").is_file() and (out / "notes.txt").read_text() == "my notes"


def test_errors_through_the_installed_command_have_no_traceback(tmp_path):
    bad = tmp_path / "broken.npz"
    bad.write_bytes(b"\x00" * 100)
    for command in (installed_command(), [sys.executable, "-m", "tinycnn"]):
        done = subprocess.run(command + ["evaluate", str(bad)], capture_output=True, text=True,
                              env=headless_env(), timeout=120)
        assert done.returncode == 1
        assert "Traceback" not in done.stderr
        assert done.stderr.startswith("tinycnn evaluate: error: ")
    done = subprocess.run(installed_command() + ["train", "--limit", "50", "--out", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=120,
                          env=headless_env(TINYCNN_DATA=str(tmp_path / "nowhere")))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "Fashion-MNIST cannot be loaded" in done.stderr


# ---------------------------------------------------------------------------
# The commands, quickly, on the real data
# ---------------------------------------------------------------------------
def test_data_command_reports_ok(capsys):
    assert main(["data"]) == 0
    assert "OK, all four files verified" in capsys.readouterr().out


@pytest.mark.parametrize("name, total", [
    ("cnn_categorical", "542,230"), ("simple_dense", "101,770"), ("cnn_sparse", "243,786")])
def test_summary_shows_the_notebooks_parameter_counts(name, total, capsys):
    assert main(["summary", "--model", name]) == 0
    assert total in capsys.readouterr().out


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One quick `tinycnn train` through the installed command: 2,000 images, 1 epoch, into
    an existing, empty folder (which train may use without --overwrite)."""
    out = tmp_path_factory.mktemp("run")
    done = subprocess.run(installed_command() + ["train", "--model", "cnn_categorical", "--epochs", "1",
                           "--limit", "2000", "--out", str(out), "--verbose", "0"],
                          capture_output=True, text=True, env=headless_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done.stdout


def test_train_saves_model_history_results_and_pictures(trained_run):
    out, stdout = trained_run
    assert (out / "model.npz").stat().st_size > 100_000          # 542,230 float32 weights
    history = json.loads((out / "history.json").read_text())
    assert set(history) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(values) == 1 for values in history.values())
    results = json.loads((out / "results.json").read_text())
    assert results["train_images"] == results["test_images"] == 2000
    assert 0.5 < results["test_accuracy"] <= 1.0                  # learned something in 1 epoch
    assert f"test accuracy {results['test_accuracy']:.4f}" in stdout
    # the final validation score is the test score
    assert history["val_accuracy"][-1] == pytest.approx(results["test_accuracy"], abs=1e-6)
    for name in ("learning_curves.png", "confusion_matrix.png", "misclassified.png",
                 "activations.png", "filters.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC, name
    assert not [p for p in out.iterdir() if p.name.startswith(".")]       # no temporary files left


def test_evaluate_the_saved_model_gives_the_same_score(trained_run, capsys):
    out, _ = trained_run
    results = json.loads((out / "results.json").read_text())
    assert main(["evaluate", str(out / "model.npz"), "--limit", "2000"]) == 0
    printed = capsys.readouterr().out
    assert f"test accuracy {results['test_accuracy']:.4f}" in printed
    assert "(2000 images)" in printed


def test_plot_commands_write_pngs(trained_run, tmp_path, capsys):
    out, _ = trained_run
    model_file = str(out / "model.npz")
    picture = tmp_path / "act.png"
    assert main(["plot", "activations", model_file, "--images", "0", "7", "26",
                 "--filter", "1", "--out", str(picture)]) == 0
    assert picture.read_bytes()[:8] == PNG_MAGIC
    assert main(["plot", "filters", model_file, "--out", str(tmp_path / "f.png")]) == 0
    assert (tmp_path / "f.png").read_bytes()[:8] == PNG_MAGIC
    # a filter the model doesn't have, and an image index the test set doesn't have
    capsys.readouterr()
    assert main(["plot", "activations", model_file, "--filter", "99",
                 "--out", str(tmp_path / "x.png")]) == 1
    assert "filter_index 99 is out of range" in capsys.readouterr().err
    assert main(["plot", "activations", model_file, "--images", "10000",
                 "--out", str(tmp_path / "x.png")]) == 1
    assert "index 10000 is out of range" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_the_learners_plot_commands_write_pngs(trained_run, tmp_path, capsys):
    out, _ = trained_run
    model_file = str(out / "model.npz")
    for argv in (["feature-maps", model_file, "--image", "7", "--layer", "conv2d"],
                 ["feature-maps", model_file, "--layer", "1"],             # the pool, by index
                 ["confusion", model_file, "--normalize"],
                 ["confident-mistakes", model_file, "--max-images", "8"],
                 ["prediction", model_file, "--image", "26"],
                 ["im2col", "--patch", "2", "0"]):
        picture = tmp_path / (argv[0] + "-".join(argv[2:]) + ".png")
        assert main(["plot"] + argv + ["--out", str(picture)]) == 0, argv
        assert picture.read_bytes()[:8] == PNG_MAGIC, argv
        assert f"saved {picture}" in capsys.readouterr().out
    for argv, message in (
            (["feature-maps", model_file, "--layer", "dense"], "not feature maps"),
            (["feature-maps", model_file, "--layer", "conv9"], "no layer named 'conv9'"),
            (["prediction", model_file, "--image", "10000"], "--image: index 10000 is out of range"),
            (["im2col", "--patch", "3", "0"], "patch (3, 0) does not fit")):
        assert main(["plot"] + argv + ["--out", str(tmp_path / "x.png")]) == 1, argv
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_cv_command_quick(tmp_path, capsys):
    assert main(["cv", "--limit", "400", "--folds", "2", "--epochs", "1", "--out",
                 str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "cv.json").read_text())
    assert len(report["scores"]) == 2 and report["train_images"] == 400
    fold_lines = [line for line in printed.splitlines() if line.startswith("> ")]
    assert fold_lines == ["> %.3f" % (s * 100) for s in report["scores"]]
    assert "Accuracy: mean=%.3f std=%.3f, n=2" % (np.mean(report["scores"]) * 100,
                                                  np.std(report["scores"]) * 100) in printed
    for name in ("learning_curves.png", "performance.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC


def quick_cv(tmp_path, name, *where):
    """`tinycnn cv` on 400 images, 2 folds, 1 epoch, with `where` (e.g. --jobs 2) -> cv.json."""
    assert main(["cv", "--limit", "400", "--folds", "2", "--epochs", "1", *where,
                 "--out", str(tmp_path / name)]) == 0
    return json.loads((tmp_path / name / "cv.json").read_text())


def test_cv_jobs_gives_the_scores_of_one_process(tmp_path):
    serial, parallel = quick_cv(tmp_path, "serial"), quick_cv(tmp_path, "jobs", "--jobs", "2")
    assert parallel["scores"] == serial["scores"] and parallel["histories"] == serial["histories"]
    assert (serial["where"], parallel["where"]) == ("this process", "2 local processes")
    assert parallel["data_bytes"] > 0 and not parallel["partial"]


def test_cv_on_a_dask_cluster_gives_the_same_scores(tmp_path, dask_client, capsys):
    serial = quick_cv(tmp_path, "serial")
    on_scheduler = quick_cv(tmp_path, "scheduler", "--scheduler", dask_client.scheduler.address)
    local_cluster = quick_cv(tmp_path, "local", "--dask-local", "2")
    for report in (on_scheduler, local_cluster):
        assert report["scores"] == serial["scores"] and report["histories"] == serial["histories"]
        assert report["where"].startswith("the Dask cluster at tcp://127.0.0.1:")
        assert report["where"].endswith("(2 workers)")
    assert on_scheduler["where"] == f"the Dask cluster at {dask_client.scheduler.address} (2 workers)"
    assert "sent x and y once" in capsys.readouterr().out


@pytest.mark.parametrize("option", [["--scheduler", "tcp://127.0.0.1:8786"], ["--dask-local", "2"]])
def test_cv_dask_options_without_dask_say_how_to_install_it(option, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "distributed", None)        # `import distributed` fails
    assert main(["cv", *option, "--out", str(tmp_path / "cv")]) == 1
    message = capsys.readouterr().err
    assert f"{option[0]} needs Dask" in message and 'pip install "tinycnn[distributed]"' in message
    assert not (tmp_path / "cv").exists()                         # it stopped before anything else


def test_cv_with_a_failing_fold_saves_the_others_and_exits_1(tmp_path, monkeypatch, capsys):
    from tinycnn import zoo
    from tinycnn.utils import get_rng
    spec = zoo.get_spec("cnn_categorical")

    def fails_on_fold_2():
        if get_rng().bit_generator.seed_seq.entropy == 2:        # fold 2's seed (--seed 1)
            raise ValueError("deliberately broken for fold 2")
        return spec.build()

    monkeypatch.setattr(zoo, "get_spec", lambda name: dataclasses.replace(spec, build=fails_on_fold_2))
    assert main(["cv", "--limit", "400", "--folds", "3", "--epochs", "1",
                 "--out", str(tmp_path)]) == 1
    report = json.loads((tmp_path / "cv.json").read_text())
    assert report["fold_numbers"] == [1, 3] and report["partial"] and not report["interrupted"]
    assert list(report["missing"]) == ["2"] and "deliberately broken" in report["missing"]["2"]
    assert "fold 2 has no score" in capsys.readouterr().err
    assert (tmp_path / "performance.png").read_bytes()[:8] == PNG_MAGIC


def test_dense_model_run_has_no_conv_pictures_and_refuses_activation_maps(tmp_path, capsys):
    out = tmp_path / "dense"
    assert main(["train", "--model", "simple_dense", "--limit", "300", "--epochs", "1",
                 "--no-validation", "--verbose", "0", "--gradient-norms", "--out", str(out)]) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == ["confusion_matrix.png", "gradient_norms.png", "history.json",
                       "learning_curves.png", "misclassified.png", "model.npz", "results.json"]
    history = json.loads((out / "history.json").read_text())
    assert set(history) == {"loss", "accuracy"}                # --no-validation
    capsys.readouterr()
    assert main(["plot", "activations", str(out / "model.npz"), "--out",
                 str(tmp_path / "a.png")]) == 1
    assert "has no Conv2D layer" in capsys.readouterr().err
    assert main(["evaluate", str(out / "model.npz"), "--limit", "300"]) == 0   # (N, 28, 28) input
    results = json.loads((out / "results.json").read_text())
    assert f"test accuracy {results['test_accuracy']:.4f}" in capsys.readouterr().out


# ---------------------------------------------------------------------------
# The notebook's accuracy on the full data (minutes each: `pytest -m slow`)
# ---------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name, target", [
    ("cnn_categorical", 0.895), ("simple_dense", 0.865), ("cnn_sparse", 0.900)])
def test_full_training_reaches_the_notebooks_accuracy(name, target, tmp_path):
    done = subprocess.run(installed_command() + ["train", "--model", name, "--epochs", "5", "--out",
                           str(tmp_path), "--verbose", "0"],
                          capture_output=True, text=True, env=headless_env(), timeout=3600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["train_images"] == 60000 and results["test_images"] == 10000
    assert results["test_accuracy"] >= target


@pytest.mark.parametrize("argv, epochs, batch_size", [
    (["train", "--model", "best"], 30, 128),                       # the recipe's
    (["train", "--model", "best", "--epochs", "3"], 3, 128),
    (["train", "--model", "cnn_sparse"], 5, 32),                   # the command's own defaults
    (["cv", "--model", "cnn_categorical", "--batch-size", "64"], 10, 64),
])
def test_epochs_and_batch_size_default_to_the_models_recipe(argv, epochs, batch_size):
    from tinycnn import cli
    args = cli.build_parser().parse_args(argv)
    cli._fill_in_model_defaults(args)
    assert (args.epochs, args.batch_size) == (epochs, batch_size)
