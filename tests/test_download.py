"""Downloading Fashion-MNIST into tinycnn's cache, against a mirror on 127.0.0.1.

The test mirror is http.server in a thread on an ephemeral port, serving the real .gz
files (Debian's re-compressed copies: the contents hash the same as the official ones),
and counting requests. Each test gets its own, shut down afterwards.
"""
import gzip
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from tinycnn.datasets import fashion_mnist as fm
from tinycnn.datasets import DatasetError

NAMES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
REAL_DIR = Path(os.environ.get("TINYCNN_DATA") or "/usr/share/datasets/fashion-mnist")


def real_gz_bytes(name):
    """The real file as .gz bytes (compressing it if the real copy is not gzipped)."""
    if (REAL_DIR / (name + ".gz")).is_file():
        return (REAL_DIR / (name + ".gz")).read_bytes()
    if (REAL_DIR / name).is_file():
        return gzip.compress((REAL_DIR / name).read_bytes(), mtime=0)
    pytest.fail(f"the real Fashion-MNIST files are needed: {name} is not in {REAL_DIR}. "
                f"Install them (sudo apt-get install dataset-fashion-mnist) or set TINYCNN_DATA.")


class MirrorHandler(BaseHTTPRequestHandler):
    """Serves server.routes: path -> (behaviour, body); records every path asked for."""
    timeout = 5                      # seconds to wait for a request line

    def do_GET(self):
        self.server.requests.append(self.path)
        behaviour, body = self.server.routes.get(self.path, ("404", b""))
        if behaviour == "hang":
            self.server.release.wait(timeout=5)       # until the test ends, at most 5 s
            return
        if behaviour == "drip":      # announce the whole body, then send a byte every 50 ms
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            for byte in body[:100]:                   # at most 5 s, less if the test ends
                if self.server.release.wait(timeout=0.05):
                    return
                self.wfile.write(bytes([byte]))
            return
        if behaviour == "404":
            self.send_error(404, "Not Found")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if behaviour == "cut":       # announce the whole body, send half, hang up
            self.wfile.write(body[: len(body) // 2])
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass                          # a client that gave up: not the test's business


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A running test mirror with every real file; sets TINYCNN_MIRROR and isolates places."""
    for variable in ("TINYCNN_DATA", "KERAS_HOME", "http_proxy", "HTTP_PROXY", "all_proxy",
                     "ALL_PROXY"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "debian")
    monkeypatch.setattr(fm, "DOWNLOAD_TIMEOUT_S", 5)

    server = QuietServer(("127.0.0.1", 0), MirrorHandler)
    server.routes = {f"/fm/{name}.gz": ("file", real_gz_bytes(name)) for name in NAMES}
    server.requests = []
    server.release = threading.Event()
    server.cache = tmp_path / "xdg-cache" / "tinycnn" / "fashion-mnist"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    monkeypatch.setenv("TINYCNN_MIRROR", f"http://127.0.0.1:{server.server_address[1]}/fm/")
    server.url = f"http://127.0.0.1:{server.server_address[1]}/fm"
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_a_good_download_lands_in_the_cache_verified_and_is_then_reused(mirror, capsys):
    (x_train, y_train), (x_test, y_test) = fm.load_data()
    assert x_train.shape == (60000, 28, 28) and y_test.shape == (10000,)
    assert np.bincount(y_train).tolist() == [6000] * 10
    assert sorted(mirror.requests) == sorted(f"/fm/{name}.gz" for name in NAMES)
    assert "downloading" in capsys.readouterr().err
    # Exactly the four files, byte for byte what was served, and no temporary file.
    assert sorted(os.listdir(mirror.cache)) == sorted(name + ".gz" for name in NAMES)
    for name in NAMES:
        assert (mirror.cache / (name + ".gz")).read_bytes() == mirror.routes[f"/fm/{name}.gz"][1]
    info = fm.data_info()
    assert info["ok"] and info["place"] == "tinycnn's cache"

    # The second call reads the cache: the mirror is gone and nothing is asked for.
    mirror.shutdown()
    again = fm.load_data()
    np.testing.assert_array_equal(again[1][1], y_test)
    assert len(mirror.requests) == 4


def test_only_the_files_missing_from_the_cache_are_downloaded(mirror):
    mirror.cache.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte"):
        (mirror.cache / (name + ".gz")).write_bytes(real_gz_bytes(name))
    mirror.routes["/fm/t10k-labels-idx1-ubyte.gz"] = ("404", b"")
    with pytest.raises(DatasetError) as caught:
        fm.load_data()
    assert str(caught.value).startswith("The mirror answered HTTP 404")   # no "not found" preface
    assert len(os.listdir(mirror.cache)) == 2                           # the good ones stay
    mirror.routes["/fm/t10k-labels-idx1-ubyte.gz"] = ("file", real_gz_bytes("t10k-labels-idx1-ubyte"))
    mirror.requests.clear()
    fm.load_data()
    assert sorted(mirror.requests) == ["/fm/t10k-labels-idx1-ubyte.gz",
                                       "/fm/train-labels-idx1-ubyte.gz"]
    assert len(os.listdir(mirror.cache)) == 4


FAILURES = {
    # kind: (file to break, how the mirror serves it, words the error must contain)
    "404": ("t10k-labels-idx1-ubyte", ("404", b""), "HTTP 404"),
    "truncated body": ("train-images-idx3-ubyte", ("cut", None), "is truncated"),
    "short file": ("t10k-images-idx3-ubyte", ("short", None), "is truncated"),
    "an html page": ("train-labels-idx1-ubyte",
                     ("file", b"<html><body>Moved</body></html>"), "is not a gzip file"),
    "the wrong file": ("t10k-labels-idx1-ubyte", ("swap", None), "wrong size"),
    "one flipped byte": ("t10k-labels-idx1-ubyte", ("flip", None), "wrong checksum"),
    "a silent server": ("train-images-idx3-ubyte", ("hang", b""), "timed out"),
}


@pytest.mark.parametrize("kind", list(FAILURES))
def test_a_failed_download_is_a_clear_error_and_leaves_nothing(mirror, monkeypatch, kind):
    name, (behaviour, body), words = FAILURES[kind]
    route = f"/fm/{name}.gz"
    good = mirror.routes[route][1]
    if behaviour == "cut":
        body = good
    elif behaviour == "short":
        behaviour, body = "file", good[: len(good) - 1000]
    elif behaviour == "swap":
        behaviour, body = "file", real_gz_bytes("train-labels-idx1-ubyte")
    elif behaviour == "flip":
        contents = bytearray(gzip.decompress(good))
        contents[5000] ^= 0x80
        behaviour, body = "file", gzip.compress(bytes(contents))
    elif behaviour == "hang":
        monkeypatch.setattr(fm, "DOWNLOAD_TIMEOUT_S", 0.5)
    mirror.routes[route] = (behaviour, body)

    with pytest.raises(DatasetError) as caught:
        fm.load_data()
    message = str(caught.value)
    assert f"{mirror.url}/{name}.gz" in message and words in message
    assert f"Nothing was written to {mirror.cache}" in message
    assert "apt-get install dataset-fashion-mnist" in message and "TINYCNN_MIRROR" in message
    assert caught.value.__cause__ is None
    assert os.listdir(mirror.cache) == []          # no file, no temporary file
    assert route in mirror.requests


def test_an_interrupted_download_leaves_nothing(mirror, monkeypatch):
    real_read_idx = fm._read_idx

    def interrupt_on_the_third_file(path, name, fix, shown_as=None):
        if name == "t10k-images-idx3-ubyte":
            raise KeyboardInterrupt
        return real_read_idx(path, name, fix, shown_as)

    monkeypatch.setattr(fm, "_read_idx", interrupt_on_the_third_file)
    with pytest.raises(KeyboardInterrupt):
        fm.load_data()
    assert len(mirror.requests) == 3               # two labels files fetched, then images
    assert os.listdir(mirror.cache) == []


def test_an_unreachable_mirror_is_a_clear_error(mirror, monkeypatch):
    mirror.shutdown()
    mirror.server_close()                          # the port now refuses connections
    with pytest.raises(DatasetError) as caught:
        fm.load_data()
    message = str(caught.value)
    assert "Could not reach" in message and mirror.url in message
    # Nothing was found anywhere, so the places searched come first.
    assert "not found on this machine" in message and str(mirror.cache) in message
    assert str(fm.DEBIAN_DIR) in message and "TINYCNN_DATA: not set" in message
    assert os.listdir(mirror.cache) == []


def test_a_bad_mirror_address_is_refused(mirror, monkeypatch):
    monkeypatch.setenv("TINYCNN_MIRROR", "ftp://example.org/fashion")
    with pytest.raises(DatasetError, match="TINYCNN_MIRROR must be an http"):
        fm.load_data()
    assert mirror.requests == []


def test_download_false_and_data_info_never_touch_the_network(mirror):
    with pytest.raises(DatasetError, match="download=False"):
        fm.load_data(download=False)
    info = fm.data_info()
    report = fm.describe_data()
    assert not info["ok"] and info["mirror"] == mirror.url
    assert mirror.url in report and "NOT USABLE" in report
    assert mirror.requests == []
    assert not mirror.cache.exists()


def test_a_damaged_file_in_the_cache_is_not_replaced_by_a_download(mirror):
    mirror.cache.mkdir(parents=True)
    damaged = mirror.cache / "train-labels-idx1-ubyte.gz"
    damaged.write_bytes(real_gz_bytes("train-labels-idx1-ubyte")[:-20])
    with pytest.raises(DatasetError) as caught:
        fm.load_data()
    assert str(damaged) in str(caught.value) and "delete" in str(caught.value)
    assert mirror.requests == []
    assert damaged.read_bytes() == real_gz_bytes("train-labels-idx1-ubyte")[:-20]
    assert os.listdir(mirror.cache) == ["train-labels-idx1-ubyte.gz"]


# ---------------------------------------------------------------------------
# Impatience: a deadline for the whole download, a minimum rate for each file
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("limit", ["deadline", "minimum rate"])
def test_a_mirror_that_sends_a_byte_at_a_time_is_given_up(mirror, monkeypatch, limit):
    """The mirror sends the first file one byte every 50 ms: it would take half an hour, and
    each read succeeds well within the per-read timeout, so only these limits stop it."""
    route = "/fm/train-labels-idx1-ubyte.gz"                # the first file downloaded
    mirror.routes[route] = ("drip", mirror.routes[route][1])
    if limit == "deadline":
        monkeypatch.setenv("TINYCNN_DOWNLOAD_DEADLINE", "0.5")
        monkeypatch.setenv("TINYCNN_DOWNLOAD_MIN_RATE", "0")           # no rate limit
        words = ["did not finish within the 0.5 s", "TINYCNN_DOWNLOAD_DEADLINE"]
    else:
        monkeypatch.setenv("TINYCNN_DOWNLOAD_MIN_RATE", "10000")
        monkeypatch.setattr(fm, "RATE_CHECK_AFTER_S", 0.3)
        words = ["is too slow", "under the minimum of 10000 bytes/s", "TINYCNN_DOWNLOAD_MIN_RATE"]
    with pytest.raises(DatasetError) as caught:
        fm.load_data()
    message = str(caught.value)
    assert f"{mirror.url}/train-labels-idx1-ubyte.gz" in message
    assert all(word in message for word in words), message
    assert f"TINYCNN_MIRROR, now {mirror.url}" in message
    assert os.listdir(mirror.cache) == []
    assert mirror.requests == [route]


@pytest.mark.parametrize("variable, value", [("TINYCNN_DOWNLOAD_DEADLINE", "soon"),
                                             ("TINYCNN_DOWNLOAD_DEADLINE", "0"),
                                             ("TINYCNN_DOWNLOAD_MIN_RATE", "-5")])
def test_bad_download_limits_are_refused_before_any_download(mirror, monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(DatasetError, match=f"{variable} must be .*got '{value}'"):
        fm.load_data()
    assert mirror.requests == []


# ---------------------------------------------------------------------------
# A download killed midway: its partial file is cleared by a later download
# ---------------------------------------------------------------------------
DOWNLOAD_UNTIL_KILLED = """
import sys
from pathlib import Path
from tinycnn.datasets import fashion_mnist as fm
fm.DEBIAN_DIR = Path(sys.argv[1])
fm.load_data()
"""


def test_the_partial_file_of_a_killed_download_is_removed_by_a_later_download(mirror):
    route = "/fm/train-labels-idx1-ubyte.gz"
    good = mirror.routes[route][1]
    mirror.routes[route] = ("drip", good)
    child = subprocess.Popen([sys.executable, "-c", DOWNLOAD_UNTIL_KILLED, str(fm.DEBIAN_DIR)],
                             env=dict(os.environ), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        give_up = time.monotonic() + 60
        while not (mirror.cache.is_dir() and os.listdir(mirror.cache)):
            assert child.poll() is None and time.monotonic() < give_up, child.stderr.read()
            time.sleep(0.02)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        child.stderr.close()
    left = os.listdir(mirror.cache)
    assert len(left) == 1 and left[0].startswith(".partial-")           # what the kill left
    then = time.time() - 3600                                           # as if long ago
    os.utime(mirror.cache / left[0], (then, then))

    mirror.routes[route] = ("file", good)
    fm.load_data()
    assert sorted(os.listdir(mirror.cache)) == sorted(name + ".gz" for name in NAMES)
