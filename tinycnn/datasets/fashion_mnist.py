"""Fashion-MNIST: find, download, verify and parse the four IDX files -> uint8 arrays.

    >>> from tinycnn.datasets import fashion_mnist
    >>> (x_train, y_train), (x_test, y_test) = fashion_mnist.load_data()
    >>> x_train.shape, x_train.dtype, y_train.shape        # exactly what Keras returns
    ((60000, 28, 28), dtype('uint8'), (60000,))
    >>> fashion_mnist.CLASS_NAMES[y_train[0]]
    'Ankle boot'

Where the files are looked for, in this order:

  1. the `path=` argument of `load_data`
  2. the `TINYCNN_DATA` environment variable
  3. /usr/share/datasets/fashion-mnist    (Debian/Ubuntu: apt-get install dataset-fashion-mnist)
  4. ~/.keras/datasets/fashion-mnist      (Keras's cache; $KERAS_HOME/datasets/... if set)
  5. $XDG_CACHE_HOME/tinycnn/fashion-mnist (tinycnn's own cache; default ~/.cache/tinycnn/...)

Each file may be gzipped (`train-images-idx3-ubyte.gz`) or not (`train-images-idx3-ubyte`);
when both are there the uncompressed one is used.

Which place is used, and what happens when something is wrong there:

  - A `path=` argument or `TINYCNN_DATA` is an explicit request: that folder is used, and
    if it does not hold all four good files you get a `DatasetError`. It never falls back
    to another place and never downloads.
  - Otherwise the first of places 3-5 that holds any of the four files is used. It must
    hold all four and each must verify, or you get a `DatasetError` naming the file.
  - A damaged file is never returned, never skipped in favour of a copy further down the
    list, and never deleted or overwritten: the error says which file and how to fix it.
    (You can always point `TINYCNN_DATA` at a good copy, since it comes first.)
  - If no place holds any file, the files are downloaded into tinycnn's cache (place 5)
    from the official mirror, or from `TINYCNN_MIRROR` if set, unless `download=False`.
    Files missing from tinycnn's own cache are downloaded too.

A download goes to a temporary file in the cache folder; all missing files are fetched
and verified first, and only then renamed into place (`os.replace`, atomic). After any
failure the temporary files are removed, so the cache only ever holds verified files. A
download killed outright (SIGKILL, a power cut) cannot remove its temporary file
`.partial-PID.XXXX.gz`; the next download removes it once its process is gone and it has
been untouched for 10 minutes (tinycnn.utils.STALE_AFTER_S).

A download gives up, with a DatasetError, on a mirror that is too slow: each connection
attempt and each read may wait DOWNLOAD_TIMEOUT_S (30 s), the whole download (all missing
files) may take DOWNLOAD_DEADLINE_S (30 minutes; $TINYCNN_DOWNLOAD_DEADLINE, in seconds),
and each file must arrive at DOWNLOAD_MIN_RATE bytes/s on average or more (20 kB/s;
$TINYCNN_DOWNLOAD_MIN_RATE, 0 for no minimum), counted once it has been downloading for
RATE_CHECK_AFTER_S (30 s).

Every file is verified on every load (decompressing train-images takes about 0.3 s here,
hashing its 47 MB about 0.03 s, so there is nothing worth caching):

  - the IDX magic number: 0x00000801 for labels, 0x00000803 for images (uint8, rank 1 or 3)
  - the dimensions: 60000 or 10000, then 28 x 28 for images
  - the payload length: exactly the product of the dimensions, no more, no less
  - the SHA-256 of the decompressed contents against the published values

The IDX format: a 4-byte big-endian magic number (two zero bytes, a type byte 0x08 for
uint8, a byte giving the rank), one big-endian uint32 per dimension, then the values.
"""
import gzip
import hashlib
import os
import sys
import time
import urllib.error
import urllib.request
import zlib
from http.client import HTTPException
from pathlib import Path

import numpy as np

from tinycnn.utils import remove_stale_temporaries, temporary_file

CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

LABELS_MAGIC = 0x00000801   # IDX, uint8, rank 1
IMAGES_MAGIC = 0x00000803   # IDX, uint8, rank 3

# name -> (magic number, shape, SHA-256 of the decompressed contents); see shared/REFERENCE.md
EXPECTED = {
    "train-images-idx3-ubyte": (IMAGES_MAGIC, (60000, 28, 28),
                                "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
    "train-labels-idx1-ubyte": (LABELS_MAGIC, (60000,),
                                "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
    "t10k-images-idx3-ubyte": (IMAGES_MAGIC, (10000, 28, 28),
                               "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
    "t10k-labels-idx1-ubyte": (LABELS_MAGIC, (10000,),
                               "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
}
FILE_NAMES = tuple(EXPECTED)
# The order load_data checks and downloads them in: labels first, so that a damaged small
# file or a bad mirror is reported at once, not after decompressing 47 MB of images.
SMALLEST_FIRST = ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte",
                  "t10k-images-idx3-ubyte", "train-images-idx3-ubyte")

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com"
DOWNLOAD_TIMEOUT_S = 30                 # per connection attempt and per read, not in total
# A mirror that sends a byte every few seconds never trips that timeout, so there are two
# more limits. The 30 MB of the four files at the minimum rate take 25 minutes: the
# deadline leaves room for that.
DOWNLOAD_DEADLINE_S = 30 * 60           # the whole download, all files ($TINYCNN_DOWNLOAD_DEADLINE)
DOWNLOAD_MIN_RATE = 20_000              # bytes/s per file on average ($TINYCNN_DOWNLOAD_MIN_RATE) ...
RATE_CHECK_AFTER_S = 30                 # ... once the file has been downloading this long
MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024   # the largest .gz is 26 MB: stop a runaway server
PARTIAL_PREFIX, PARTIAL_SUFFIX = ".partial-", ".gz"     # a download's temporary files

INSTALL_HINT = "install the Debian/Ubuntu package: sudo apt-get install dataset-fashion-mnist"
ENV_HINT = "set TINYCNN_DATA to a folder holding the four files (.gz or not)"


class DatasetError(OSError):
    """The dataset could not be found, downloaded or verified.

    The message names the file or places concerned, says what is wrong and how to fix it.
    `path` is the file (or folder) at fault, or None; `problem` is what is wrong with that
    file in a few words ("is empty (0 bytes)"), or None; `reason` is the low-level error
    (EOFError, zlib.error, HTTPError, ...) that revealed the problem, or None.
    """

    def __init__(self, message, path=None, problem=None, reason=None):
        super().__init__(message)
        self.path = None if path is None else str(path)
        self.problem = problem
        self.reason = reason


# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------
def load_data(path=None, download=True):
    """Load Fashion-MNIST as `keras.datasets.fashion_mnist.load_data()` does.

    path: a folder holding the four IDX files (gzipped or not); None searches the usual
          places (see the module docstring for the order and the rules).
    download: if no place holds the files, download them into tinycnn's cache.

    Returns `(x_train, y_train), (x_test, y_test)`, all uint8 and writable:
        x_train (60000, 28, 28) pixels 0-255, y_train (60000,) labels 0-9,
        x_test  (10000, 28, 28),              y_test  (10000,).
    Raises DatasetError (never returns unverified data) if the files are missing,
    damaged, or the download fails.
    """
    places = _search_places(path)
    place, found = _choose_place(places)

    if place is None:
        if not download:
            raise DatasetError(_not_found_message(places))
        place = places[-1]              # tinycnn's cache
        found = {}
    missing = [name for name in SMALLEST_FIRST if name not in found]
    if missing and not (place["kind"] == "cache" and download):
        raise DatasetError(_incomplete_message(place, found, missing, download), path=place["directory"])

    arrays = {}
    for name in SMALLEST_FIRST:                     # what is there must verify first
        if name in found:
            arrays[name] = _read_idx(found[name], name, fix=_fix_for_damaged(place, found[name]))
    if missing:                                     # only ever in tinycnn's own cache
        cache_dir = Path(place["directory"])
        try:
            _download(missing, cache_dir, _mirror())
        except DatasetError as error:
            if found:
                raise
            # Nothing anywhere: say where we looked before saying why the download failed.
            raise DatasetError(f"Fashion-MNIST was not found on this machine. Looked in, in order:\n"
                               f"{_places_list(places)}\nso tinycnn tried to download it. {error}",
                               path=error.path, problem=error.problem, reason=error.reason) from None
        for name in missing:
            file_path = cache_dir / (name + ".gz")
            arrays[name] = _read_idx(file_path, name, fix=_fix_for_damaged(place, file_path))
    return ((arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"]),
            (arrays["t10k-images-idx3-ubyte"], arrays["t10k-labels-idx1-ubyte"]))


def data_info(path=None):
    """Where the data is and whether it verifies; never downloads, never raises for bad data.

    Returns a dict:
        "ok": bool            all four files found in one place and verified
        "directory": str|None the folder that load_data would use (None if none)
        "place": str|None     which place that is, e.g. "Debian package dataset-fashion-mnist"
        "files": {name: {"path": str|None, "ok": bool, "problem": str|None,
                         "shape": tuple, "sha256": str}}   for each of the four files;
                              problem is "missing" or what is wrong, e.g. "is empty (0 bytes)"
        "searched": [{"place": str, "directory": str|None, "status": str}, ...] in order
        "error": str|None     what load_data(download=False) would say, if it would fail
        "cache": str          tinycnn's cache folder (where a download would go)
        "mirror": str         the address a download would use
    """
    places = _search_places(path)
    place, found = _choose_place(places)
    files = {}
    first_problem = None                            # the one load_data would raise
    for name in SMALLEST_FIRST:                     # load_data's order
        magic, shape, sha256 = EXPECTED[name]
        entry = {"path": None, "ok": False, "problem": None, "shape": shape, "sha256": sha256}
        if name not in found:
            entry["problem"] = "missing"
        else:
            entry["path"] = str(found[name])
            try:
                _read_idx(found[name], name, fix=_fix_for_damaged(place, found[name]))
                entry["ok"] = True
            except DatasetError as error:
                entry["problem"] = error.problem
                first_problem = first_problem or str(error)
        files[name] = entry
    files = {name: files[name] for name in FILE_NAMES}   # shown in Keras's order

    error = None
    if place is None:
        error = _not_found_message(places)
    elif len(found) < len(FILE_NAMES):
        missing = [name for name in FILE_NAMES if name not in found]
        error = _incomplete_message(place, found, missing, download=False)
    elif first_problem:
        error = first_problem

    try:
        mirror = _mirror()
    except DatasetError as bad_mirror:
        mirror = f"(invalid) {bad_mirror}"
    return {
        "ok": error is None,
        "directory": None if place is None else place["directory"],
        "place": None if place is None else place["label"],
        "files": files,
        "searched": [{"place": p["label"], "directory": p["directory"], "status": p["status"]}
                     for p in places],
        "error": error,
        "cache": str(_cache_dir()),
        "mirror": mirror,
    }


def describe_data(path=None):
    """A printable report of `data_info(path)`: where the data is, and whether it verified."""
    info = data_info(path)
    lines = []
    if info["ok"]:
        lines.append("Fashion-MNIST: OK, all four files verified (IDX header, size, SHA-256).")
    else:
        lines.append("Fashion-MNIST: NOT USABLE.")
    if info["directory"] is not None:
        lines.append(f"Using: {info['directory']}  ({info['place']})")
        for name, entry in info["files"].items():
            shape = " x ".join(str(n) for n in entry["shape"])
            status = "OK" if entry["ok"] else entry["problem"]
            shown = Path(entry["path"]).name if entry["path"] else name
            lines.append(f"  {shown:<28} {shape:<16} {status}")
    lines.append("Searched, in order:")
    for number, place in enumerate(info["searched"], start=1):
        where = f"{place['directory']}  [{place['status']}]" if place["directory"] else place["status"]
        lines.append(f"  {number}. {place['place']}: {where}")
    lines.append(f"Downloads go to {info['cache']} from {info['mirror']}")
    if info["error"]:
        lines.append("")
        lines.append(info["error"])
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Finding the files
# ---------------------------------------------------------------------------
def _keras_dir():
    """Keras's download folder for this dataset (Keras honours $KERAS_HOME)."""
    keras_home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(keras_home) / "datasets" / "fashion-mnist"


def _cache_dir():
    """tinycnn's own cache: $XDG_CACHE_HOME/tinycnn/fashion-mnist (default ~/.cache/...)."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path(os.path.expanduser("~")) / ".cache"
    return base / "tinycnn" / "fashion-mnist"


def _search_places(path):
    """The places to look in, in order: a list of dicts with label, directory, kind.

    kind is "explicit" (path= or TINYCNN_DATA: used even if empty), "default" or "cache".
    A given path= makes it the only place looked at.
    """
    if path is not None:
        if str(path).strip() == "":
            raise DatasetError("load_data: path= is an empty string; give the folder holding "
                               "the four Fashion-MNIST files, or leave it as None to search.")
        return [_place("path argument", Path(os.path.expanduser(path)), "explicit")]
    places = []
    env = os.environ.get("TINYCNN_DATA", "")
    if env.strip():
        places.append(_place("$TINYCNN_DATA", Path(os.path.expanduser(env)), "explicit"))
    else:
        places.append({"label": "$TINYCNN_DATA", "directory": None, "kind": "explicit",
                       "status": "not set"})
    places.append(_place("Debian package dataset-fashion-mnist", DEBIAN_DIR, "default"))
    places.append(_place("Keras's cache", _keras_dir(), "default"))
    places.append(_place("tinycnn's cache", _cache_dir(), "cache"))
    return places


def _place(label, directory, kind):
    """One place to look in, with a one-word-ish status of what is there."""
    if not directory.exists():
        status = "does not exist"
    elif not directory.is_dir():
        status = "not a folder"
    else:
        count = len(_find_files(directory))
        status = f"holds {count} of the 4 files" if count else "holds none of the files"
    return {"label": label, "directory": str(directory), "kind": kind, "status": status}


def _find_files(directory):
    """{name: Path} for each of the four files present in `directory` (plain or .gz).

    "Present" means something exists under that name, even a folder or a broken link:
    it is then reported as damaged rather than quietly ignored.
    """
    found = {}
    for name in FILE_NAMES:
        for candidate in (directory / name, directory / (name + ".gz")):
            if os.path.lexists(candidate):
                found[name] = candidate
                break
    return found


def _choose_place(places):
    """The place load_data uses and the files found there: (place, {name: Path}).

    An explicit place that is set is always chosen; otherwise the first place holding any
    of the files. (None, {}) if there is none.
    """
    for place in places:
        if place["directory"] is None:
            continue
        directory = Path(place["directory"])
        found = _find_files(directory) if directory.is_dir() else {}
        if place["kind"] == "explicit" or found:
            place["status"] = "used: " + place["status"]
            return place, found
    return None, {}


# ---------------------------------------------------------------------------
# Reading and verifying one IDX file
# ---------------------------------------------------------------------------
def _read_idx(path, name, fix, shown_as=None):
    """Read, verify and parse one IDX file -> uint8 array of EXPECTED[name]'s shape.

    path: the file (gzipped if and only if its name ends in .gz).
    fix: a sentence telling the user how to repair this file, added to every error.
    shown_as: how to name the file in error messages (default: its path).
    """
    magic, shape, sha256 = EXPECTED[name]
    shown = shown_as or str(path)
    gzipped = str(path).endswith(".gz")
    header_len = 4 + 4 * len(shape)
    expected_len = header_len + int(np.prod(shape))

    def damaged(problem, reason=None):
        return DatasetError(f"{shown} {problem}.\n{fix}", path=path, problem=problem, reason=reason)

    if os.path.isdir(path):
        raise damaged("is a folder, where the file should be")
    if not os.path.exists(path):
        raise damaged("is a broken link (it points to nothing)")
    try:
        size = os.path.getsize(path)
        if size == 0:
            raise damaged("is empty (0 bytes)")
        with open(path, "rb") as raw:
            start = raw.read(4)
        if gzipped and start[:2] != b"\x1f\x8b":
            hint = " (it looks like an uncompressed IDX file: drop the .gz from its name)" \
                if start[:3] == b"\x00\x00\x08" else ""
            raise damaged(f"is not a gzip file: it starts with bytes {start.hex(' ')}{hint}")
        opener = gzip.open if gzipped else open
        with opener(path, "rb") as f:
            data = f.read(expected_len + 1)     # +1 tells "too long" from "just right"
    except EOFError as error:
        raise damaged("is truncated: its gzip stream ends before the end of the data "
                      "(an interrupted download or copy?)", error) from None
    except (gzip.BadGzipFile, zlib.error) as error:
        raise damaged(f"is corrupt: gzip cannot decompress it ({error})", error) from None
    except OSError as error:
        if isinstance(error, DatasetError):
            raise
        raise damaged(f"cannot be read ({error.strerror or error})", error) from None

    what = "labels" if magic == LABELS_MAGIC else "images"
    if len(data) < 4:
        raise damaged(f"is truncated: only {len(data)} bytes, too short for an IDX header")
    if data[:3] != b"\x00\x00\x08":
        hint = " (it looks gzip-compressed: add .gz to its name)" if data[:2] == b"\x1f\x8b" else ""
        raise damaged(f"has the wrong magic number 0x{data[:4].hex()}, expected 0x{magic:08x} "
                      f"(IDX uint8 {what}): it is not an IDX file{hint}")
    rank = data[3]
    if rank != len(shape):
        raise damaged(f"has the wrong magic number 0x{data[:4].hex()} (rank {rank}), expected "
                      f"0x{magic:08x} (IDX uint8 {what}, rank {len(shape)}): wrong file?")
    if len(data) < header_len:
        raise damaged(f"is truncated: {len(data)} bytes, shorter than its {header_len}-byte header")
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(rank))
    if dims != shape:
        raise damaged(f"has the wrong size: its header says {' x '.join(map(str, dims))}, "
                      f"expected {' x '.join(map(str, shape))}")
    if len(data) < expected_len:
        raise damaged(f"is truncated: {len(data) - header_len} bytes of {what} after the header, "
                      f"expected {expected_len - header_len}")
    if len(data) > expected_len:
        raise damaged(f"is too long: more than the {expected_len - header_len} bytes of {what} "
                      f"its header announces")
    actual_sha256 = hashlib.sha256(data).hexdigest()
    if actual_sha256 != sha256:
        raise damaged(f"has the wrong checksum: the SHA-256 of its contents is {actual_sha256}, "
                      f"expected {sha256} (a corrupted copy, or not Fashion-MNIST)")
    # A copy, so the caller gets a writable array that does not pin the bytes object.
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(shape).copy()


# ---------------------------------------------------------------------------
# Error messages
# ---------------------------------------------------------------------------
def _fix_for_damaged(place, file_path):
    """How to repair a damaged file in `place` (a sentence for the error message)."""
    keep_out = "tinycnn will not use it, nor replace it for you."
    if place["kind"] == "explicit":
        return (f"{keep_out} To fix it: replace {file_path} with a good copy, or point "
                f"{'path=' if place['label'] == 'path argument' else 'TINYCNN_DATA'} "
                f"at a folder holding good copies.")
    if place["label"].startswith("Debian"):
        return (f"{keep_out} To fix it: sudo apt-get install --reinstall dataset-fashion-mnist, "
                f"or {ENV_HINT} (it is searched first).")
    return (f"{keep_out} To fix it: delete {file_path} (then tinycnn's cache is refilled by "
            f"download, or the next place in the search order is used), or {ENV_HINT} "
            f"(it is searched first).")


def _places_list(places):
    """The searched places as numbered lines."""
    return "\n".join(f"  {i}. {p['label']}: " + (f"{p['directory']}  [{p['status']}]" if p["directory"]
                                                  else p["status"])
                     for i, p in enumerate(places, start=1))


def _not_found_message(places):
    return (f"Fashion-MNIST was not found, and the download was not allowed (download=False). "
            f"Looked in, in order:\n"
            f"{_places_list(places)}\n"
            f"A folder should hold {', '.join(FILE_NAMES)} (each gzipped as .gz, or not).\n"
            f"To fix it, do one of:\n"
            f"  - {INSTALL_HINT}\n"
            f"  - {ENV_HINT}\n"
            f"  - allow the download: load_data(download=True) fetches them into "
            f"{places[-1]['directory']} (from {DEFAULT_MIRROR}; set TINYCNN_MIRROR to use another mirror)")


def _incomplete_message(place, found, missing, download):
    directory = place["directory"]
    if place["kind"] == "explicit" and not found:
        where = "path= argument" if place["label"] == "path argument" else "TINYCNN_DATA"
        problem = (f"the folder {directory} given by {where} {place['status'].replace('used: ', '')}: "
                   f"it should hold {', '.join(FILE_NAMES)} (each .gz or not)")
        fix = (f"point {where} at the folder that holds them, or unset it to search the usual "
               f"places ({INSTALL_HINT})")
    else:
        problem = (f"the folder {directory} ({place['label']}) is incomplete: it holds "
                   f"{', '.join(path.name for path in found.values())} but not {', '.join(missing)}")
        if place["kind"] == "cache":
            fix = "allow the download (download=True) to fetch the missing files, or " + ENV_HINT
        else:
            fix = (f"add the missing files there, or delete the folder so the next place in the "
                   f"search order is used, or {ENV_HINT} (it is searched first)")
    return f"Fashion-MNIST cannot be loaded: {problem}.\nTo fix it: {fix}."


# ---------------------------------------------------------------------------
# Downloading into tinycnn's cache
# ---------------------------------------------------------------------------
def _mirror():
    """The mirror's base address: $TINYCNN_MIRROR or the official one, without a trailing /."""
    mirror = os.environ.get("TINYCNN_MIRROR", "").strip() or DEFAULT_MIRROR
    if not mirror.startswith(("http://", "https://")):
        raise DatasetError(f"TINYCNN_MIRROR must be an http:// or https:// address, got {mirror!r}. "
                           f"To fix it: set it to e.g. {DEFAULT_MIRROR}, or unset it.")
    return mirror.rstrip("/")


def _download(names, cache_dir, mirror):
    """Download `names` (+ .gz) from `mirror` into `cache_dir`, all verified, or nothing.

    Each file goes to a temporary file in cache_dir and is verified there; only when every
    file has passed are they renamed into place. On any failure (or Ctrl-C) the temporary
    files are removed and a DatasetError says what went wrong. Stale temporary files of
    earlier, killed downloads are removed first.
    """
    limits = _DownloadLimits()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DatasetError(f"Cannot create tinycnn's cache folder {cache_dir} ({error.strerror or error}).\n"
                           f"To fix it: set XDG_CACHE_HOME to a writable folder, {INSTALL_HINT}, "
                           f"or {ENV_HINT}.", path=cache_dir, reason=error) from None
    remove_stale_temporaries(cache_dir, PARTIAL_PREFIX, PARTIAL_SUFFIX)
    fix = (f"Nothing was written to {cache_dir}. To fix it: check your connection and the mirror "
           f"address (TINYCNN_MIRROR, now {mirror}), or {INSTALL_HINT}, or {ENV_HINT}.")
    downloaded = {}                       # name -> temporary file, all removed unless renamed
    try:
        for name in names:
            url = f"{mirror}/{name}.gz"
            downloaded[name] = _fetch(url, cache_dir, fix, limits)
            _read_idx(downloaded[name], name, fix=fix, shown_as=f"The file downloaded from {url}")
        for name, temporary in list(downloaded.items()):
            os.replace(temporary, cache_dir / (name + ".gz"))
            del downloaded[name]
    finally:
        for temporary in downloaded.values():
            _remove_quietly(temporary)


def _fetch(url, directory, fix, limits):
    """Download `url` to a new temporary file `directory/.partial-PID.XXXX.gz`; returns its path.

    Raises DatasetError, leaving no file behind, on an HTTP error, a timeout, a broken
    connection, a body shorter than its Content-Length, a disk that cannot take it, or a
    download slower than `limits` (a _DownloadLimits) allow.
    """
    print(f"tinycnn: downloading {url} ...", file=sys.stderr, flush=True)
    descriptor, temporary = temporary_file(directory, PARTIAL_PREFIX, PARTIAL_SUFFIX)
    received = 0
    started = time.monotonic()
    try:
        with os.fdopen(descriptor, "wb") as out:
            with urllib.request.urlopen(url, timeout=limits.timeout()) as response:
                announced = response.headers.get("Content-Length")
                # read1: what has arrived, at once (read(n) would wait until n bytes are in)
                while chunk := response.read1(1 << 20):
                    received += len(chunk)
                    if received > MAX_DOWNLOAD_BYTES:
                        raise DatasetError(f"The download from {url} is larger than "
                                           f"{MAX_DOWNLOAD_BYTES} bytes: not a Fashion-MNIST file.\n{fix}")
                    out.write(chunk)
                    limits.check(url, received, started, fix)
            if announced is not None and announced.isdigit() and received != int(announced):
                raise DatasetError(f"The download from {url} is truncated: the connection closed after "
                                   f"{received} of {announced} bytes.\n{fix}")
            out.flush()
            os.fsync(out.fileno())
    except BaseException as error:
        _remove_quietly(temporary)
        if isinstance(error, urllib.error.HTTPError):
            error.close()                  # an HTTPError holds the connection open
        if isinstance(error, DatasetError) or not isinstance(error, Exception):
            raise                          # our own error, or Ctrl-C: pass it on as it is
        problem = limits.too_late(url, received) if limits.expired() else \
            _describe_network_error(url, error, received)
        raise DatasetError(f"{problem}.\n{fix}", path=url, reason=error) from None
    size = f"{received / 1e6:.1f} MB" if received >= 1e6 else f"{received / 1e3:.0f} kB"
    print(f"tinycnn: ... {size} received", file=sys.stderr, flush=True)
    return Path(temporary)


class _DownloadLimits:
    """The time limits of one download: a deadline for all its files, a minimum rate for each.

    Read from $TINYCNN_DOWNLOAD_DEADLINE and $TINYCNN_DOWNLOAD_MIN_RATE when it starts, else
    DOWNLOAD_DEADLINE_S and DOWNLOAD_MIN_RATE.
    """

    def __init__(self):
        self.seconds = _number_from_env("TINYCNN_DOWNLOAD_DEADLINE", DOWNLOAD_DEADLINE_S,
                                        "a number of seconds above 0", zero_allowed=False)
        self.min_rate = _number_from_env("TINYCNN_DOWNLOAD_MIN_RATE", DOWNLOAD_MIN_RATE,
                                         "a number of bytes per second (0 for no minimum)")
        self.deadline = time.monotonic() + self.seconds

    def expired(self):
        return time.monotonic() >= self.deadline

    def timeout(self):
        """The socket timeout of a connection: DOWNLOAD_TIMEOUT_S, less if the deadline is nearer."""
        return max(0.01, min(DOWNLOAD_TIMEOUT_S, self.deadline - time.monotonic()))

    def check(self, url, received, started, fix):
        """Raise DatasetError if the deadline has passed, or if the file that started at
        `started` (time.monotonic()) and has `received` bytes so far arrives too slowly."""
        if self.expired():
            raise DatasetError(f"{self.too_late(url, received)}.\n{fix}", path=url)
        elapsed = time.monotonic() - started
        if elapsed >= RATE_CHECK_AFTER_S and received < self.min_rate * elapsed:
            raise DatasetError(
                f"The download from {url} is too slow: {received} bytes in {elapsed:.1f} s "
                f"({received / elapsed:.0f} bytes/s), under the minimum of {self.min_rate:g} bytes/s "
                f"(TINYCNN_DOWNLOAD_MIN_RATE sets it; 0 turns it off).\n{fix}", path=url)

    def too_late(self, url, received):
        return (f"The download from {url} did not finish within the {self.seconds:g} s allowed "
                f"for the whole download ({received} bytes of this file had arrived; "
                f"TINYCNN_DOWNLOAD_DEADLINE sets the limit, in seconds)")


def _number_from_env(variable, default, what, zero_allowed=True):
    """The number in $variable (default if unset or empty); DatasetError if it is not `what`."""
    text = os.environ.get(variable, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (0 <= value < float("inf")) or (value == 0 and not zero_allowed):
        raise DatasetError(f"{variable} must be {what}, got {text!r}. To fix it: set it to e.g. "
                           f"{default}, or unset it.")
    return value


def _describe_network_error(url, error, received):
    """One sentence for what went wrong while fetching `url`."""
    if isinstance(error, urllib.error.HTTPError):
        return f"The mirror answered HTTP {error.code} {error.reason} for {url}"
    if isinstance(error, urllib.error.URLError):
        error = error.reason if isinstance(error.reason, BaseException) else error
        if isinstance(error, TimeoutError):
            return f"Connecting to {url} timed out after {DOWNLOAD_TIMEOUT_S} s"
        return f"Could not reach {url} ({getattr(error, 'strerror', None) or error})"
    if isinstance(error, TimeoutError):
        return f"The download from {url} timed out after {DOWNLOAD_TIMEOUT_S} s without data"
    if isinstance(error, (HTTPException, ConnectionError)):
        return (f"The connection to {url} broke off after {received} bytes "
                f"({type(error).__name__}: {error})")
    if isinstance(error, OSError):
        return f"Could not write the download of {url} to the cache ({error.strerror or error})"
    return f"The download from {url} failed ({type(error).__name__}: {error})"


def _remove_quietly(path):
    try:
        os.remove(path)
    except OSError:
        pass
