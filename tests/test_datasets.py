"""Fashion-MNIST loader: the real data, damaged copies, the search order, data_info.

The real data comes from $TINYCNN_DATA if set, else Debian's dataset-fashion-mnist
package. Every other test runs in tmp_path with the default places pointed there, so
nothing depends on this machine's ~/.keras or ~/.cache.
"""
import gzip
import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import tinycnn.datasets
from tinycnn.datasets import fashion_mnist as fm
from tinycnn.datasets import DatasetError

# Published SHA-256 of the decompressed files (shared/REFERENCE.md, Fashion-MNIST's README).
PUBLISHED_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
NAMES = list(PUBLISHED_SHA256)
REAL_DIR = Path(os.environ.get("TINYCNN_DATA") or "/usr/share/datasets/fashion-mnist")


def real_file(name):
    """The real copy of `name` (plain or .gz) in REAL_DIR."""
    for candidate in (REAL_DIR / name, REAL_DIR / (name + ".gz")):
        if candidate.is_file():
            return candidate
    pytest.fail(f"the real Fashion-MNIST files are needed: {name} is not in {REAL_DIR}. "
                f"Install them (sudo apt-get install dataset-fashion-mnist) or set TINYCNN_DATA.")


def real_contents(name):
    """The decompressed bytes of the real file, read without tinycnn."""
    path = real_file(name)
    return gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()


@pytest.fixture(scope="module")
def real_data():
    return fm.load_data(path=REAL_DIR, download=False)


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Point every default place into tmp_path (none exists yet); returns tmp_path."""
    for variable in ("TINYCNN_DATA", "TINYCNN_MIRROR", "KERAS_HOME"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "debian")
    # Any download attempt would go to a closed port and fail loudly.
    monkeypatch.setenv("TINYCNN_MIRROR", "http://127.0.0.1:9")
    return tmp_path


def good_folder(folder, skip=()):
    """A folder of links to the real files (except the names in `skip`)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        if name not in skip:
            source = real_file(name)
            os.symlink(source, folder / source.name)
    return folder


def snapshot(path):
    """Something to compare before/after: the bytes of a file, or 'folder'."""
    return "folder" if path.is_dir() else path.read_bytes()


# ---------------------------------------------------------------------------
# The real data
# ---------------------------------------------------------------------------
def test_real_files_match_the_published_hashes():
    for name in NAMES:
        assert hashlib.sha256(real_contents(name)).hexdigest() == PUBLISHED_SHA256[name]
        assert fm.EXPECTED[name][2] == PUBLISHED_SHA256[name]


def test_shapes_and_dtypes_are_kerass(real_data):
    (x_train, y_train), (x_test, y_test) = real_data
    assert (x_train.shape, y_train.shape, x_test.shape, y_test.shape) == \
        ((60000, 28, 28), (60000,), (10000, 28, 28), (10000,))
    for array in (x_train, y_train, x_test, y_test):
        assert array.dtype == np.uint8
        assert array.flags.writeable and array.flags.c_contiguous


def test_every_class_has_6000_training_and_1000_test_images(real_data):
    (_, y_train), (_, y_test) = real_data
    assert np.bincount(y_train, minlength=10).tolist() == [6000] * 10
    assert np.bincount(y_test, minlength=10).tolist() == [1000] * 10
    assert len(fm.CLASS_NAMES) == 10 and len(set(fm.CLASS_NAMES)) == 10
    assert tinycnn.datasets.CLASS_NAMES is fm.CLASS_NAMES


def test_known_pixels_and_labels_match_the_raw_bytes(real_data):
    (x_train, y_train), (x_test, y_test) = real_data
    # Read the IDX bytes by offset arithmetic (16-byte image header, 8-byte label header).
    rng = np.random.default_rng(0)
    for images, labels, prefix, count in ((x_train, y_train, "train", 60000),
                                          (x_test, y_test, "t10k", 10000)):
        raw_images = real_contents(f"{prefix}-images-idx3-ubyte")
        raw_labels = real_contents(f"{prefix}-labels-idx1-ubyte")
        for index, row, col in zip(rng.integers(0, count, 25), rng.integers(0, 28, 25),
                                   rng.integers(0, 28, 25)):
            assert images[index, row, col] == raw_images[16 + index * 784 + row * 28 + col]
        for index in [0, 1, count - 1, *rng.integers(0, count, 10)]:
            assert labels[index] == raw_labels[8 + index]
    # Facts from the Keras tutorial: the first training image is an ankle boot, and the
    # first test labels are ankle boot, pullover, trouser, trouser, shirt.
    assert fm.CLASS_NAMES[y_train[0]] == "Ankle boot"
    assert [fm.CLASS_NAMES[label] for label in y_test[:5]] == \
        ["Ankle boot", "Pullover", "Trouser", "Trouser", "Shirt"]
    assert x_train.max() == 255 and x_train.min() == 0


def test_default_search_finds_the_debian_package_and_the_alias_works(isolated, monkeypatch):
    monkeypatch.setattr(fm, "DEBIAN_DIR", REAL_DIR)
    (x_train, y_train), _ = tinycnn.datasets.load_fashion_mnist(download=False)
    assert y_train[:5].tolist() == list(real_contents("train-labels-idx1-ubyte")[8:13])
    info = tinycnn.datasets.data_info()
    assert info["ok"] and info["directory"] == str(REAL_DIR)
    assert info["place"].startswith("Debian")
    assert not (isolated / "xdg-cache").exists()


def test_uncompressed_files_load_the_same_as_gzipped(tmp_path, real_data):
    folder = tmp_path / "plain"
    folder.mkdir()
    for name in NAMES:
        (folder / name).write_bytes(real_contents(name))
    plain = fm.load_data(path=folder)
    for got, expected in zip([*plain[0], *plain[1]], [*real_data[0], *real_data[1]]):
        np.testing.assert_array_equal(got, expected)


def test_each_call_returns_fresh_arrays(tmp_path):
    folder = good_folder(tmp_path / "data")
    first = fm.load_data(path=folder)
    second = fm.load_data(path=folder)
    first[1][1][:] = 0                      # y_test of the first call
    assert second[1][1][:5].tolist() == [9, 2, 1, 1, 6]


# ---------------------------------------------------------------------------
# Damaged copies: each is a clear DatasetError, and the file is left as it was
# ---------------------------------------------------------------------------
def _labels_with_header(magic, count, payload):
    return magic.to_bytes(4, "big") + count.to_bytes(4, "big") + payload


def _damage(kind):
    """(file name, bytes or 'folder') of a damaged train-labels file, and the expected words."""
    labels = real_contents("train-labels-idx1-ubyte")
    gz_bytes = gzip.compress(labels, mtime=0)
    name = "train-labels-idx1-ubyte"
    if kind == "truncated gzip":
        return name + ".gz", gz_bytes[: len(gz_bytes) // 2], "is truncated"
    if kind == "not gzip":
        return name + ".gz", b"<html>404 Not Found</html>\n", "is not a gzip file"
    if kind == "uncompressed named .gz":
        return name + ".gz", labels, "drop the .gz"
    if kind == "wrong magic":
        return name, _labels_with_header(0x12345678, 60000, labels[8:]), "wrong magic number"
    if kind == "wrong magic, gzipped":
        return name + ".gz", gzip.compress(b"\x00\x00\x09\x01" + labels[4:]), "wrong magic number"
    if kind == "images where labels belong":
        return name, real_contents("t10k-images-idx3-ubyte"), "rank 3"
    if kind == "wrong count":
        return name, _labels_with_header(0x801, 59999, labels[8:-1]), "wrong size"
    if kind == "payload too short":
        return name, labels[:-100], "is truncated"
    if kind == "payload too long":
        return name, labels + b"\x00", "is too long"
    if kind == "header only":
        return name, labels[:6], "is truncated"
    if kind == "one flipped byte":
        flipped = bytearray(labels)
        flipped[30000] ^= 0x01
        return name, bytes(flipped), "wrong checksum"
    if kind == "one flipped byte, gzipped":
        flipped = bytearray(labels)
        flipped[30000] ^= 0x01
        return name + ".gz", gzip.compress(bytes(flipped)), "wrong checksum"
    if kind == "empty":
        return name + ".gz", b"", "is empty"
    if kind == "folder":
        return name + ".gz", "folder", "is a folder"
    raise AssertionError(kind)


DAMAGES = ["truncated gzip", "not gzip", "uncompressed named .gz", "wrong magic",
           "wrong magic, gzipped", "images where labels belong", "wrong count",
           "payload too short", "payload too long", "header only", "one flipped byte",
           "one flipped byte, gzipped", "empty", "folder"]


@pytest.mark.parametrize("kind", DAMAGES)
def test_a_damaged_file_is_a_clear_error_and_is_left_alone(tmp_path, kind):
    folder = good_folder(tmp_path / "data", skip={"train-labels-idx1-ubyte"})
    file_name, contents, words = _damage(kind)
    damaged = folder / file_name
    if contents == "folder":
        damaged.mkdir()
    else:
        damaged.write_bytes(contents)
    before = snapshot(damaged)

    with pytest.raises(DatasetError) as caught:
        fm.load_data(path=folder)
    message = str(caught.value)
    assert str(damaged) in message and words in message
    assert "To fix it" in message and "will not use it" in message
    assert caught.value.path == str(damaged) and words in caught.value.problem
    # No low-level traceback is chained onto the user's screen; the cause is kept in .reason.
    error = caught.value
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)
    if kind == "truncated gzip":
        assert isinstance(error.reason, EOFError)
    assert snapshot(damaged) == before
    assert sorted(os.listdir(folder)) == sorted(
        [file_name] + [real_file(n).name for n in NAMES if n != "train-labels-idx1-ubyte"])

    info = fm.data_info(folder)
    assert not info["ok"] and info["error"] == message
    assert words in info["files"]["train-labels-idx1-ubyte"]["problem"]
    assert [info["files"][n]["ok"] for n in NAMES] == [True, False, True, True]


def test_with_two_damaged_files_data_info_reports_both_and_agrees_with_load_data(tmp_path):
    folder = good_folder(tmp_path / "data",
                         skip={"train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"})
    (folder / "train-images-idx3-ubyte.gz").write_bytes(b"")
    (folder / "t10k-labels-idx1-ubyte").mkdir()
    with pytest.raises(DatasetError) as caught:
        fm.load_data(path=folder)
    info = fm.data_info(folder)
    assert info["error"] == str(caught.value)
    assert info["files"]["train-images-idx3-ubyte"]["problem"] == "is empty (0 bytes)"
    assert "is a folder" in info["files"]["t10k-labels-idx1-ubyte"]["problem"]
    assert list(info["files"]) == NAMES


def test_describe_data_shows_what_is_wrong_with_which_file(tmp_path):
    folder = good_folder(tmp_path / "data", skip={"t10k-labels-idx1-ubyte"})
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b not really gzip")
    report = fm.describe_data(folder)
    assert report.startswith("Fashion-MNIST: NOT USABLE")
    line = next(line for line in report.splitlines() if line.strip().startswith("t10k-labels"))
    assert "is corrupt" in line or "is truncated" in line
    assert "To fix it" in report and str(folder) in report
    assert sum(line.rstrip().endswith(" OK") for line in report.splitlines()) == 3


def test_a_corrupted_gzip_stream_is_a_clear_error(tmp_path):
    folder = good_folder(tmp_path / "data", skip={"train-labels-idx1-ubyte"})
    gz_bytes = bytearray(gzip.compress(real_contents("train-labels-idx1-ubyte"), mtime=0))
    gz_bytes[len(gz_bytes) // 2] ^= 0xFF      # inside the deflate stream
    damaged = folder / "train-labels-idx1-ubyte.gz"
    damaged.write_bytes(bytes(gz_bytes))
    with pytest.raises(DatasetError) as caught:
        fm.load_data(path=folder)
    message = str(caught.value)
    assert str(damaged) in message
    # Depending on where the flip lands, deflate fails, the gzip CRC fails, or the length
    # or the SHA-256 is off; whichever it is, it is named.
    assert any(words in message for words in
               ("is corrupt", "is truncated", "is too long", "wrong checksum"))
    assert damaged.read_bytes() == bytes(gz_bytes)


def test_a_damaged_copy_earlier_in_the_order_is_not_skipped(isolated, monkeypatch):
    # A good copy in the Debian place, a damaged one in TINYCNN_DATA (searched first).
    monkeypatch.setattr(fm, "DEBIAN_DIR", REAL_DIR)
    folder = good_folder(isolated / "mine", skip={"t10k-labels-idx1-ubyte"})
    (folder / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01" + b"\xff" * 10004)
    monkeypatch.setenv("TINYCNN_DATA", str(folder))
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte has the wrong size"):
        fm.load_data()


def test_a_damaged_keras_copy_is_neither_skipped_nor_replaced(isolated, monkeypatch):
    keras = good_folder(isolated / "home" / ".keras" / "datasets" / "fashion-mnist",
                        skip={"train-images-idx3-ubyte"})
    (keras / "train-images-idx3-ubyte.gz").write_bytes(b"")
    good_folder(isolated / "xdg-cache" / "tinycnn" / "fashion-mnist")   # a good copy later on
    with pytest.raises(DatasetError) as caught:
        fm.load_data(download=True)
    message = str(caught.value)
    assert str(keras / "train-images-idx3-ubyte.gz") + " is empty" in message
    assert "delete" in message and "TINYCNN_DATA" in message
    assert (keras / "train-images-idx3-ubyte.gz").read_bytes() == b""


def test_keras_home_is_honoured(isolated, monkeypatch):
    keras_home = isolated / "elsewhere"
    good_folder(keras_home / "datasets" / "fashion-mnist")
    monkeypatch.setenv("KERAS_HOME", str(keras_home))
    info = fm.data_info()
    assert info["ok"] and info["place"] == "Keras's cache"
    assert info["directory"] == str(keras_home / "datasets" / "fashion-mnist")


# ---------------------------------------------------------------------------
# Not found, incomplete, bad arguments
# ---------------------------------------------------------------------------
def test_not_found_anywhere_lists_every_place_and_the_fixes(isolated):
    with pytest.raises(DatasetError) as caught:
        fm.load_data(download=False)
    message = str(caught.value)
    for place in (isolated / "debian",
                  isolated / "home" / ".keras" / "datasets" / "fashion-mnist",
                  isolated / "xdg-cache" / "tinycnn" / "fashion-mnist"):
        assert str(place) in message
    assert "TINYCNN_DATA" in message and "not set" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "download=True" in message and "TINYCNN_MIRROR" in message
    assert not (isolated / "xdg-cache").exists()          # nothing created

    info = fm.data_info()
    assert not info["ok"] and info["directory"] is None and info["error"] == message
    assert [entry["status"] for entry in info["searched"]] == ["not set"] + ["does not exist"] * 3
    assert all(entry["problem"] == "missing" for entry in info["files"].values())
    assert "NOT USABLE" in fm.describe_data()


def test_xdg_cache_home_moves_the_cache(isolated, monkeypatch):
    assert fm.data_info()["cache"] == str(isolated / "xdg-cache" / "tinycnn" / "fashion-mnist")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert fm.data_info()["cache"] == str(isolated / "home" / ".cache" / "tinycnn" / "fashion-mnist")


@pytest.mark.parametrize("how", ["path argument", "TINYCNN_DATA"])
@pytest.mark.parametrize("state", ["missing", "empty folder", "a file"])
def test_an_explicit_place_without_the_files_is_an_error_not_a_fallback(
        isolated, monkeypatch, how, state):
    monkeypatch.setattr(fm, "DEBIAN_DIR", REAL_DIR)       # a good copy it must not fall back to
    target = isolated / "asked-for"
    if state == "empty folder":
        target.mkdir()
    elif state == "a file":
        target.write_bytes(b"not a folder")
    if how == "TINYCNN_DATA":
        monkeypatch.setenv("TINYCNN_DATA", str(target))
    with pytest.raises(DatasetError) as caught:
        fm.load_data(path=target if how == "path argument" else None)
    message = str(caught.value)
    assert str(target) in message
    assert ("path= argument" if how == "path argument" else "TINYCNN_DATA") in message
    assert {"missing": "does not exist", "empty folder": "holds none",
            "a file": "not a folder"}[state] in message
    assert fm.data_info(target if how == "path argument" else None)["error"] == message


def test_an_incomplete_folder_names_the_missing_files(isolated, monkeypatch):
    monkeypatch.setattr(fm, "DEBIAN_DIR", good_folder(isolated / "debian",
                                                      skip={"t10k-images-idx3-ubyte"}))
    with pytest.raises(DatasetError) as caught:
        fm.load_data()
    message = str(caught.value)
    assert "incomplete" in message and "but not t10k-images-idx3-ubyte" in message
    assert str(isolated / "debian") in message
    info = fm.data_info()
    assert info["files"]["t10k-images-idx3-ubyte"]["problem"] == "missing"
    assert info["files"]["train-images-idx3-ubyte"]["ok"]


def test_an_empty_path_string_is_refused():
    with pytest.raises(DatasetError, match="path= is an empty string"):
        fm.load_data(path="")


def test_dataset_error_can_be_caught_as_oserror(isolated):
    with pytest.raises(OSError):
        fm.load_data(download=False)
    assert issubclass(DatasetError, Exception) and tinycnn.datasets.DatasetError is DatasetError


def test_data_info_reports_a_good_folder(tmp_path):
    folder = good_folder(tmp_path / "data")
    info = fm.data_info(folder)
    assert info["ok"] and info["error"] is None and info["directory"] == str(folder)
    for name in NAMES:
        entry = info["files"][name]
        assert entry["ok"] and entry["problem"] is None
        assert Path(entry["path"]).parent == folder and entry["sha256"] == PUBLISHED_SHA256[name]
    assert info["searched"][0]["status"].startswith("used")
    report = fm.describe_data(folder)
    assert report.startswith("Fashion-MNIST: OK") and str(folder) in report
    assert "60000 x 28 x 28" in report


def test_importing_the_datasets_package_stays_light():
    import subprocess
    import sys
    code = ("import sys, tinycnn.datasets; "
            "print(sorted(m for m in ('numba', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
