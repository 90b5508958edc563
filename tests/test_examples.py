"""Every example script runs headless in quick mode, exits 0 and writes its pictures."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# script -> (the PNGs it must write, a line its output must contain)
EXPECTED = {
    "01_look_at_the_data.py": (["images.png"], "train images: (60000, 28, 28) uint8"),
    "02_cnn_categorical.py": (["learning_curves.png", "gradient_norms.png", "im2col.png",
                               "feature_maps.png", "activations.png"], "test accuracy"),
    "03_simple_dense.py": (["learning_curves.png"], "test accuracy"),
    "04_cnn_sparse.py": (["learning_curves.png", "activations.png"], "test accuracy"),
    "05_cross_validation.py": (["learning_curves.png", "performance.png"], "Accuracy: mean="),
    "06_filters_confusion_mistakes.py": (["filters.png", "confusion_matrix.png",
                                          "confusion_matrix_normalized.png", "misclassified.png",
                                          "confident_mistakes.png", "prediction.png"],
                                         "test accuracy"),
    "07_beyond_the_notebook.py": (["ablation.png"], "| BN | dropout | augmentation |"),
}


# the scripts that print a summary, with the notebook's parameter counts, before they train
SUMMARIES = {"02_cnn_categorical.py": "Total params: 542,230", "03_simple_dense.py": "Total params: 101,770",
             "04_cnn_sparse.py": "Total params: 243,786"}

# the scripts that print fit's one line per epoch (05 prints one score per fold instead)
TRAINING_SCRIPTS = ("02_cnn_categorical.py", "03_simple_dense.py", "04_cnn_sparse.py",
                    "06_filters_confusion_mistakes.py")


def test_every_example_script_is_covered():
    assert sorted(p.name for p in EXAMPLES.glob("[0-9]*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_example_runs_in_quick_mode(script, tmp_path):
    pictures, expected_text = EXPECTED[script]
    env = {name: value for name, value in os.environ.items()     # headless, whatever the host has
           if name not in ("MPLBACKEND", "DISPLAY", "WAYLAND_DISPLAY")}
    env["OPENBLAS_NUM_THREADS"] = "1"       # 2 shared cores: one BLAS thread is far faster here
    done = subprocess.run([sys.executable, str(EXAMPLES / script), "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert expected_text in done.stdout
    for name in pictures:
        png = tmp_path / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{script} did not write {name}"
        assert png.stat().st_size > 5000                  # a real picture, not an empty canvas
    if script in TRAINING_SCRIPTS:                        # two epochs: the curves are lines, not dots
        assert "Epoch 2/2 - " in done.stdout and "Epoch 3/" not in done.stdout
    if script in SUMMARIES:                               # the model defined in the script is the notebook's
        assert done.stdout.index(SUMMARIES[script]) < done.stdout.index("Epoch 1/2 - ")
    if script == "01_look_at_the_data.py":
        assert "the first image (an Ankle boot)" in done.stdout
    if script == "05_cross_validation.py":
        fold_lines = [line for line in done.stdout.splitlines() if line.startswith("> ")]
        assert len(fold_lines) == 5
    if script == "07_beyond_the_notebook.py":       # the ablation table: all 8 variants, BN's layers counted
        table = [line for line in done.stdout.splitlines() if line.startswith("| ") and "BN" not in line]
        assert len(table) == 8
        params = {line.split(" | ")[0].strip("| ") + "bn": line.split(" | ")[3] for line in table}
        assert params["onbn"] != params["-bn"]
