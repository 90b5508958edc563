"""The model file: one NumPy .npz archive that can never run code when it is read.

What is inside (every member a plain numeric array; no pickle, ever):
    header.npy    uint8 bytes of a UTF-8 JSON object:
                      {"format": "tinycnn-model", "version": 1, "kind": "model" or "weights",
                       "arrays": {member name: {"shape": [...], "dtype": "float32"}, ...},
                       ... what the model stores: architecture, compile settings, optimizer config}
    sha256.npy    uint8 (32,): SHA-256 over the header bytes and every array (name, dtype,
                  shape, bytes), so a damaged or edited file is detected before it is used
    <name>.npy    the arrays the header lists (weights, optimizer state), nothing else

`write_model_file` writes atomically: a temporary file in the same folder, flushed and
fsynced, then renamed over the target, so a crash leaves the old file or the new one,
never half of one. `read_model_file` checks everything (archive, members, no pickled
objects, format name and version, checksum, every array's dtype and shape) before it
returns anything, and raises ModelFileError, naming the file and the problem, otherwise.

The checksum detects accidents and casual edits; it is not a signature (whoever edits a
file can recompute it). Loading stays safe regardless: only numbers and JSON are read.
"""
import errno
import hashlib
import json
import os
import zipfile

import numpy as np

from tinycnn.utils import atomic_write, remove_interrupted_writes

FORMAT_NAME = "tinycnn-model"
FORMAT_VERSION = 1
HEADER = "header"
CHECKSUM = "sha256"
ALLOWED_DTYPES = ("float32", "float64", "int64", "int32", "uint8")
MAX_UNCOMPRESSED_BYTES = 8 * 2**30          # refuse archives that would inflate beyond 8 GiB


class ModelFileError(ValueError):
    """A file that is not a complete, untouched tinycnn model file (damaged, edited, foreign,
    or written by a newer tinycnn). Nothing is loaded when this is raised."""


def _digest(header_bytes, arrays):
    """SHA-256 over the header bytes, then each array (sorted by name): name, dtype, shape, bytes."""
    sha = hashlib.sha256()
    sha.update(FORMAT_NAME.encode() + b"\0" + header_bytes + b"\0")
    for name in sorted(arrays):
        array = np.asarray(arrays[name], order="C")
        sha.update(f"{name}\0{array.dtype.str}\0{list(array.shape)}\0".encode())
        sha.update(array.tobytes())
    return sha.digest()


def write_model_file(path, header, arrays):
    """Write `header` (JSON-able dict) and `arrays` ({name: numeric array}) to `path`, atomically.

    The header gets "format", "version" and the "arrays" table added. Returns the path.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot save to {path!r}: it is a directory; give a file name, "
                                f"e.g. {os.path.join(path, 'model.npz')!r}")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot save to {path!r}: the folder {directory!r} does not exist "
                                f"(create it first, e.g. os.makedirs({directory!r}))")
    arrays = {name: np.asarray(a, order="C") for name, a in arrays.items()}
    for name, array in arrays.items():
        if name in (HEADER, CHECKSUM) or not name.isidentifier():
            raise ValueError(f"write_model_file: bad array name {name!r}")
        if array.dtype.name not in ALLOWED_DTYPES:
            raise ValueError(f"write_model_file: array {name!r} has dtype {array.dtype}; "
                             f"only {', '.join(ALLOWED_DTYPES)} are stored")
    header = dict(header, format=FORMAT_NAME, version=FORMAT_VERSION,
                  arrays={name: {"shape": list(a.shape), "dtype": a.dtype.name} for name, a in arrays.items()})
    header_bytes = json.dumps(header, sort_keys=True, allow_nan=False).encode("utf-8")
    members = dict(arrays)
    members[HEADER] = np.frombuffer(header_bytes, dtype=np.uint8)
    members[CHECKSUM] = np.frombuffer(_digest(header_bytes, arrays), dtype=np.uint8)

    with atomic_write(path) as f:
        np.savez(f, **members)
    try:                                              # make the rename itself durable
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def _what_is_it(first_bytes):
    """A short description of a file that is not a zip archive, from its first bytes."""
    if first_bytes.startswith(b"\x89HDF\r\n\x1a\n"):
        return ("an HDF5 file (a Keras .h5 model?); tinycnn cannot read Keras's files: rebuild the "
                "model with tinycnn and copy the weights with set_weights")
    if first_bytes.startswith(b"\x93NUMPY"):
        return "a single NumPy .npy array, not a tinycnn model file"
    if first_bytes[:1] == b"\x80":
        return "a Python pickle; tinycnn never loads pickles, since loading one can run any code"
    if not first_bytes:
        return "an empty file"
    return "not a tinycnn model file (not an .npz archive)"


def read_model_file(path, kinds=("model", "weights")):
    """Read and fully check a file written by write_model_file -> (header dict, {name: array}).

    Raises FileNotFoundError if there is no such file and ModelFileError for anything
    wrong with it: never returns a partly read file.
    """
    path = os.fspath(path)
    remove_interrupted_writes(path)                  # what a save killed mid-write left beside it
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, "No such file (no model file there)", path)
    if os.path.isdir(path):
        raise ModelFileError(f"{path!r} is a directory, not a tinycnn model file")

    def fail(problem):
        return ModelFileError(f"cannot load {path!r}: {problem}")

    with open(path, "rb") as f:
        first_bytes = f.read(8)
    if not first_bytes.startswith(b"PK"):
        raise fail(_what_is_it(first_bytes))

    # The archive's table of contents, before any member is read.
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        raise fail(f"the archive is damaged or truncated ({error})") from None
    names = [info.filename for info in infos]
    if "config.json" in names or "model.weights.h5" in names:
        raise fail("this is a Keras .keras archive; tinycnn cannot read Keras's files: rebuild the "
                   "model with tinycnn and copy the weights with set_weights")
    if HEADER + ".npy" not in names or CHECKSUM + ".npy" not in names:
        raise fail(f"it is a zip/.npz archive but not a tinycnn model file (members: {names[:8]})")
    if sum(info.file_size for info in infos) > MAX_UNCOMPRESSED_BYTES:
        raise fail("the archive would inflate to more than 8 GiB; refusing to read it")
    if any(not name.endswith(".npy") for name in names) or len(set(names)) != len(names):
        raise fail(f"unexpected members in the archive: {names}")

    # Every member, as plain arrays: allow_pickle=False makes NumPy refuse object arrays
    # (pickled data) outright, without unpickling anything.
    members = {}
    try:
        with np.load(path, allow_pickle=False) as archive:
            for name in archive.files:
                members[name] = archive[name]
    except ValueError as error:
        if "pickle" in str(error).lower() or "object" in str(error).lower():
            raise fail("it holds a pickled Python object, which could run code; tinycnn refuses it "
                       "(a genuine tinycnn file holds only numeric arrays)") from None
        raise fail(f"a member could not be read ({error})") from None
    except (zipfile.BadZipFile, OSError, EOFError, KeyError) as error:
        raise fail(f"the archive is damaged or truncated ({error})") from None

    header_array, checksum = members.pop(HEADER), members.pop(CHECKSUM)
    if header_array.dtype != np.uint8 or header_array.ndim != 1:
        raise fail("its header is not a byte array")
    if checksum.dtype != np.uint8 or checksum.shape != (32,):
        raise fail("its checksum is not a 32-byte array")
    header_bytes = header_array.tobytes()
    try:
        header = json.loads(header_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise fail(f"its header is not valid JSON ({error})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise fail("it is an .npz archive, but not a tinycnn model file (wrong format name)")
    version = header.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise fail(f"its format version {version!r} is not a number")
    if version > FORMAT_VERSION:
        raise fail(f"it was written by a newer tinycnn (file format version {version}); this "
                   f"tinycnn reads version {FORMAT_VERSION}: upgrade tinycnn to load it")
    if version < 1:
        raise fail(f"unknown file format version {version}")
    if _digest(header_bytes, members) != checksum.tobytes():
        raise fail("its SHA-256 checksum does not match its contents: the file was damaged or "
                   "edited after it was written")
    if header.get("kind") == "weights" and "weights" not in kinds:
        raise fail("it holds only weights (written by save_weights); load them into a model of the "
                   "same architecture with model.load_weights(path)")
    if header.get("kind") not in kinds:
        raise fail(f"it holds {header.get('kind')!r}, expected one of {list(kinds)}")

    # The arrays the header lists, exactly, with the dtypes and shapes it says.
    table = header.get("arrays")
    if not isinstance(table, dict) or set(table) != set(members):
        raise fail("its list of arrays does not match the archive's members")
    for name, spec in table.items():
        array = members[name]
        if not isinstance(spec, dict) or spec.get("dtype") != array.dtype.name \
                or spec.get("shape") != list(array.shape):
            raise fail(f"array {name!r} is {array.dtype} {array.shape}, the header says {spec!r}")
        if array.dtype.name not in ALLOWED_DTYPES:
            raise fail(f"array {name!r} has dtype {array.dtype}, which tinycnn never writes")
    return header, members
