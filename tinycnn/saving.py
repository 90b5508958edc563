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
never half of one (and the temporary file a killed save leaves is removed later, see
tinycnn.utils.STALE_AFTER_S).

`read_model_file` checks everything before it returns anything, and raises ModelFileError,
naming the file and the problem, for anything wrong. It reads the archive itself, in this
order, so that a hostile file can neither block it, nor make it allocate much memory, nor
make it run code:
    1. the path is a regular file (a FIFO or a device could block open() or read() forever)
    2. the zip directory: only .npy members, neither encrypted nor compressed other than by
       deflate, none reaching beyond the end of the file, and all of them together inflating
       to at most MAX_INFLATION_RATIO times their compressed size (no zip bomb)
    3. each member's .npy header alone: a numeric dtype (no pickled objects), and exactly as
       many bytes in the member as its shape needs
    4. the JSON header (at most MAX_HEADER_BYTES): format name and version, the list of arrays,
       and the weight shapes its architecture implies (expected_weight_shapes), all without
       building a model (only a layer class of the caller's own, passed as custom_objects, is
       built alone to learn its weights' shapes); a class that is neither tinycnn's nor the
       caller's is refused, never imported
    5. only then the arrays, in pieces of READ_PIECE_BYTES, and the checksum over everything.
So the memory a file can make tinycnn allocate is bounded by the file's own size (its arrays,
inflated by at most MAX_INFLATION_RATIO), and by nothing a header merely claims.

The checksum detects accidents and casual edits; it is not a signature (whoever edits a
file can recompute it). Loading stays safe regardless: only numbers and JSON are read.
"""
import collections
import errno
import hashlib
import json
import math
import os
import stat
import struct
import zipfile
import zlib

import numpy as np

from tinycnn.utils import atomic_write, remove_interrupted_writes

FORMAT_NAME = "tinycnn-model"
FORMAT_VERSION = 1
HEADER = "header"
CHECKSUM = "sha256"
ALLOWED_DTYPES = ("float32", "float64", "int64", "int32", "uint8")
MAX_HEADER_BYTES = 2**20        # a header describes layers and settings: kilobytes, not megabytes
MAX_INFLATION_RATIO = 20        # float weights hardly compress (about 1.1x); far more is a zip bomb
READ_PIECE_BYTES = 2**20        # members are inflated and copied this much at a time
KERAS_EXTENSIONS = (".keras", ".h5", ".hdf5")   # Keras's file formats, which tinycnn never writes
# Zip members tinycnn reads: stored as they are (what np.savez writes), or deflated.
READABLE_COMPRESSION = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
ENCRYPTED_FLAGS = 0x0001 | 0x0040              # zip flag bits: encrypted, strongly encrypted
# What zipfile and NumPy's .npy header parser raise on damaged bytes: a flipped byte in a zip
# header can surface as any of these (an odd flag as NotImplementedError, a bad length as
# struct.error or OverflowError, a bad CRC as BadZipFile...). All mean "damaged".
DAMAGE_ERRORS = (zipfile.BadZipFile, EOFError, OSError, ValueError, NotImplementedError,
                 RuntimeError, struct.error, zlib.error, OverflowError, KeyError, IndexError)


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


def refuse_keras_file_name(path, where="save"):
    """Raise ValueError for a path ending in Keras's .keras, .h5 or .hdf5.

    tinycnn writes its own format, one .npz archive, which Keras cannot open: a file named
    "cnn.keras" holding it would only mislead whoever opens it with Keras. So the name is
    refused, as Keras refuses an extension it does not write, and the message gives the
    .npz name to use instead.
    """
    path = os.fspath(path)
    stem, extension = os.path.splitext(path)
    if extension.lower() in KERAS_EXTENSIONS:
        raise ValueError(f"{where}: {path!r} ends in {extension}, a Keras format, but tinycnn writes its "
                         f"own: one .npz archive (architecture, weights and optimizer state; no pickle) "
                         f"that Keras cannot open. Save to {stem + '.npz'!r} instead, and load it with "
                         f"tinycnn.models.load_model")


def write_model_file(path, header, arrays):
    """Write `header` (JSON-able dict) and `arrays` ({name: numeric array}) to `path`, atomically.

    The header gets "format", "version" and the "arrays" table added. Returns the path.
    A path ending in .keras or .h5 is refused (refuse_keras_file_name).
    """
    path = os.fspath(path)
    refuse_keras_file_name(path)
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


def read_model_file(path, kinds=("model", "weights"), custom_objects=None):
    """Read and fully check a file written by write_model_file -> (header dict, {name: array}).

    custom_objects: {class name: layer class} for layers of the caller's own that the
    architecture may hold (see load_model).
    Raises FileNotFoundError if there is no such file and ModelFileError for anything
    wrong with it: never returns a partly read file. See the module's docstring for the
    order of the checks.
    """
    path = os.fspath(path)

    def fail(problem):
        return ModelFileError(f"cannot load {path!r}: {problem}")

    remove_interrupted_writes(path)                  # what a save killed mid-write left beside it
    with _open_regular_file(path, fail) as file:
        first_bytes = file.read(8)
        if not first_bytes.startswith(b"PK"):
            raise fail(_what_is_it(first_bytes))
        file.seek(0)
        try:
            with zipfile.ZipFile(file) as archive:
                return _read_archive(archive, os.fstat(file.fileno()).st_size, kinds, custom_objects, fail)
        except ModelFileError:
            raise
        except DAMAGE_ERRORS as error:
            raise fail(f"the archive is damaged or truncated ({type(error).__name__}: {error})") from None


def _open_regular_file(path, fail):
    """`path` opened for reading in binary, if it is a regular file (or a link to one).

    A FIFO, a device or a socket could block open() or read() forever, so its type is
    checked with os.stat before it is opened, and again on the open descriptor (in case the
    path was swapped in between), which is opened with O_NONBLOCK so that even that cannot wait.
    """
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise FileNotFoundError(errno.ENOENT, "No such file (no model file there)", path) from None
    _require_regular_file(mode, fail)
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        _require_regular_file(os.fstat(descriptor).st_mode, fail)
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def _require_regular_file(mode, fail):
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISSOCK, "a socket"))
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in kinds if test(mode)), "not a regular file")
        raise fail(f"it is {kind}, not a tinycnn model file (a model file is a regular file)")


def _read_archive(archive, file_size, kinds, custom_objects, fail):
    """read_model_file's checks on an open zip archive, in the order of the module's docstring."""
    infos = archive.infolist()
    _check_members(infos, file_size, fail)
    members = {info.filename[:-len(".npy")]: info for info in infos}
    layouts = {name: _npy_layout(archive, info, fail) for name, info in members.items()}

    header_bytes = _read_header_bytes(archive, members, layouts, fail)
    header = _parse_header(header_bytes, fail)
    _check_array_list(header, layouts, fail)
    _check_architecture(header, layouts, custom_objects, fail)

    arrays = {name: _read_array(archive, members[name], layouts[name])
              for name in layouts if name not in (HEADER, CHECKSUM)}
    checksum = _read_array(archive, members[CHECKSUM], layouts[CHECKSUM]).tobytes()
    if _digest(header_bytes, arrays) != checksum:
        raise fail("its SHA-256 checksum does not match its contents: the file was damaged or "
                   "edited after it was written")
    if header.get("kind") == "weights" and "weights" not in kinds:
        raise fail("it holds only weights (written by save_weights); load them into a model of the "
                   "same architecture with model.load_weights(path)")
    if header.get("kind") not in kinds:
        raise fail(f"it holds {header.get('kind')!r}, expected one of {list(kinds)}")
    return header, arrays


def _check_members(infos, file_size, fail):
    """The zip directory: which members, how they are stored, and how much they inflate to."""
    names = [info.filename for info in infos]
    if "config.json" in names or "model.weights.h5" in names:
        raise fail("this is a Keras .keras archive; tinycnn cannot read Keras's files: rebuild the "
                   "model with tinycnn and copy the weights with set_weights")
    if HEADER + ".npy" not in names or CHECKSUM + ".npy" not in names:
        raise fail(f"it is a zip/.npz archive but not a tinycnn model file (members: {names[:8]})")
    unexpected = [name for name in names if not name.endswith(".npy")]
    unexpected += sorted(name for name, count in collections.Counter(names).items() if count > 1)
    if unexpected:
        raise fail(f"unexpected members in the archive (not .npy arrays, or twice): {unexpected[:8]}")
    for info in infos:
        name = info.filename
        if info.flag_bits & ENCRYPTED_FLAGS:
            raise fail(f"its member {name!r} is encrypted; tinycnn model files never are")
        if info.compress_type not in READABLE_COMPRESSION:
            raise fail(f"its member {name!r} uses compression method {info.compress_type}; tinycnn "
                       f"reads only stored (uncompressed) or deflated members")
        if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
            raise fail(f"its member {name!r} is stored uncompressed, yet its two sizes differ "
                       f"({info.compress_size} and {info.file_size} bytes)")
        if info.header_offset + info.compress_size > file_size:
            raise fail(f"its member {name!r} reaches beyond the end of the file: the file is truncated")
    compressed = sum(info.compress_size for info in infos)
    inflated = sum(info.file_size for info in infos)
    if compressed > file_size:
        raise fail(f"its members claim {compressed} bytes, more than the file's {file_size}")
    if inflated > MAX_INFLATION_RATIO * compressed:
        raise fail(f"its {compressed} bytes of members would inflate to {inflated} bytes, more than "
                   f"{MAX_INFLATION_RATIO} times as much: a zip bomb, or not a tinycnn model file "
                   f"(whose weights hardly compress)")


def _npy_layout(archive, info, fail):
    """(shape, dtype, data offset) of a member, from its .npy header alone (its data unread).

    The member must hold exactly the bytes that shape and dtype need: so what it claims is
    bounded by the member's size, which _check_members bounded by the file's.
    """
    name = info.filename
    with archive.open(info) as member:
        try:
            version = np.lib.format.read_magic(member)
        except ValueError:
            raise fail(f"its member {name!r} is not a .npy array") from None
        if version not in ((1, 0), (2, 0)):
            raise fail(f"its member {name!r} is a .npy array of format version {version}, which "
                       f"tinycnn does not read")
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        try:
            shape, fortran_order, dtype = read_header(member)
        except ValueError as error:
            raise fail(f"its member {name!r} has a damaged .npy header ({error})") from None
        offset = member.tell()
    if dtype.hasobject:
        raise fail("it holds a pickled Python object, which could run code; tinycnn refuses it "
                   "(a genuine tinycnn file holds only numeric arrays)")
    if dtype.name not in ALLOWED_DTYPES or fortran_order or any(size < 0 for size in shape):
        raise fail(f"its member {name!r} is a {dtype} array of shape {shape}"
                   f"{' in Fortran order' if fortran_order else ''}, which tinycnn never writes")
    needed = math.prod(shape) * dtype.itemsize
    if info.file_size != offset + needed:
        raise fail(f"its member {name!r} declares a {dtype} array of shape {shape} ({needed} bytes), "
                   f"but holds {info.file_size - offset} bytes of data")
    return shape, dtype, offset


def _read_array(archive, info, layout):
    """A member's array, inflated and copied READ_PIECE_BYTES at a time into its own memory."""
    shape, dtype, offset = layout
    array = np.empty(shape, dtype=dtype)
    memory = memoryview(array.reshape(-1).view(np.uint8))
    with archive.open(info) as member:
        member.read(offset)                          # the .npy header, checked by _npy_layout
        filled = 0
        while filled < len(memory):
            piece = member.read(min(READ_PIECE_BYTES, len(memory) - filled))
            if not piece:
                raise EOFError(f"member {info.filename!r} ends after {filled} of its {len(memory)} bytes")
            memory[filled:filled + len(piece)] = piece
            filled += len(piece)
    return array


def _read_header_bytes(archive, members, layouts, fail):
    """The JSON header's bytes, after checking its and the checksum's .npy layout."""
    shape, dtype, _ = layouts[HEADER]
    if dtype != np.uint8 or len(shape) != 1:
        raise fail("its header is not a byte array")
    if shape[0] > MAX_HEADER_BYTES:
        raise fail(f"its header is {shape[0]} bytes long; a tinycnn header is at most "
                   f"{MAX_HEADER_BYTES} bytes")
    shape, dtype, _ = layouts[CHECKSUM]
    if dtype != np.uint8 or shape != (32,):
        raise fail("its checksum is not a 32-byte array")
    return _read_array(archive, members[HEADER], layouts[HEADER]).tobytes()


def _parse_header(header_bytes, fail):
    """The header's JSON object, with its format name and version checked."""
    try:
        header = json.loads(header_bytes.decode("utf-8"))
    except RecursionError:             # Python's JSON parser recurses once per level of nesting
        raise fail("its header is nested too deeply to be a tinycnn header") from None
    except (UnicodeDecodeError, ValueError) as error:   # ValueError: bad JSON, or a huge number
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
    return header


def _check_array_list(header, layouts, fail):
    """The header lists exactly the archive's arrays, with the dtypes and shapes they have."""
    table = header.get("arrays")
    arrays = set(layouts) - {HEADER, CHECKSUM}
    if not isinstance(table, dict) or set(table) != arrays:
        raise fail("its list of arrays does not match the archive's members")
    for name, spec in table.items():
        shape, dtype, _ = layouts[name]
        if not isinstance(spec, dict) or spec.get("dtype") != dtype.name \
                or spec.get("shape") != list(shape):
            raise fail(f"array {name!r} is {dtype} {shape}, the header says {str(spec)[:200]}")


# ---------------------------------------------------------------------------
# The layer classes a file may name: tinycnn's own, and those the caller passes
# ---------------------------------------------------------------------------
class UnknownLayerError(ValueError):
    """An architecture names a layer class that is neither tinycnn's nor in custom_objects."""


def layer_classes(custom_objects=None):
    """{class name: class} a saved architecture may use: tinycnn's layers, then the caller's.

    custom_objects: {name: layer class}, as Keras's load_model takes it, for layers of your
    own (subclasses of tinycnn.layers.Layer). A file only ever makes layers of these classes:
    a name in a file is looked up here, never imported.
    """
    from tinycnn import layers as layers_module       # here: saving is imported by models
    classes = dict(layers_module.LAYER_CLASSES)
    for name, cls in (custom_objects or {}).items():
        if not (isinstance(cls, type) and issubclass(cls, layers_module.Layer)):
            raise ValueError(f"custom_objects[{name!r}] must be a layer class (a subclass of "
                             f"tinycnn.layers.Layer), got {cls!r}")
        classes[name] = cls
    return classes


def layer_class(entry, classes):
    """The class of one saved layer entry {"class_name": ..., "config": {...}}, or UnknownLayerError."""
    if not isinstance(entry, dict) or not isinstance(entry.get("config"), dict):
        raise UnknownLayerError(f"a layer entry must be {{'class_name': ..., 'config': {{...}}}}, "
                                f"got {str(entry)[:200]}")
    name = entry.get("class_name")
    if not isinstance(name, str) or name not in classes:
        shown = str(name)[:100]
        yours = shown if shown.isidentifier() else "YourLayer"
        raise UnknownLayerError(f"it holds a layer of unknown class {shown!r}; tinycnn knows {sorted(classes)}. "
                                f"If it is a layer class of your own, pass it: "
                                f"load_model(path, custom_objects={{{shown!r}: {yours}}})")
    return classes[name]


# ---------------------------------------------------------------------------
# The weight shapes an architecture implies, without building it
# ---------------------------------------------------------------------------
def expected_weight_shapes(model_config, custom_objects=None):
    """The shapes of the weights a Sequential built from `model_config` (its get_config()) has,
    in get_weights's order, computed without building it: no weight is allocated.

    Each layer is created from its config (a constructor allocates nothing) and asked for its
    output shape (compute_output_shape), starting from the model's input shape. Of tinycnn's
    layers only Conv2D (kernel (kh, kw, in, filters), bias (filters,)), Dense (kernel
    (in, units), bias (units,)) and BatchNormalization (gamma, beta, moving_mean,
    moving_variance, each (channels,)) have weights. A layer class from custom_objects is the
    caller's own code, so it is built (on a saved random-number state, put back after) to
    learn its weights' shapes. Raises UnknownLayerError for a class that is neither, and
    ValueError (or whatever a layer's constructor raises for a bad config) if the
    architecture cannot be built.
    """
    from tinycnn import layers as layers_module
    classes = layer_classes(custom_objects)
    if not isinstance(model_config, dict) or not isinstance(model_config.get("layers"), list) \
            or not model_config["layers"]:
        raise ValueError("it has no model architecture")
    input_shape = model_config.get("build_input_shape")
    if input_shape is None:
        raise ValueError("the saved model was never built (no input shape)")
    if not isinstance(input_shape, list) or len(input_shape) < 2 or input_shape[0] is not None \
            or not all(_is_positive_int(size) for size in input_shape[1:]):
        raise ValueError(f"its input shape {input_shape!r} is not a list such as [null, 28, 28, 1]")
    shape = tuple(input_shape[1:])
    shapes = []
    for entry in model_config["layers"]:
        cls = layer_class(entry, classes)
        layer = cls.from_config(dict(entry["config"]))
        if layer.input_shape is not None and layer.input_shape != shape:
            raise ValueError(f"layer {layer.name!r} was given input_shape={layer.input_shape}, "
                             f"but its input has shape {shape}")
        if cls in layers_module.LAYER_CLASSES.values():
            output_shape = layer.compute_output_shape(shape)
            shapes.extend(_weight_shapes(layer, shape, layers_module))
        else:
            output_shape = _build_custom_layer(layer, shape)
            shapes.extend(p.shape for p in layer.params)
        shape = tuple(output_shape)
    return shapes


def _build_custom_layer(layer, input_shape):
    """Build a caller's layer to see its weights; the global random numbers stay as they were."""
    from tinycnn import utils
    rng_state = utils.get_rng().bit_generator.state
    try:
        return layer.build(input_shape)
    finally:
        utils.get_rng().bit_generator.state = rng_state


def _weight_shapes(layer, input_shape, layers_module):
    """The shapes of one of tinycnn's layers' weights for inputs of `input_shape` (as its build
    would make them)."""
    if isinstance(layer, layers_module.Conv2D):
        kernel, bias = tuple(layer.kernel_size) + (input_shape[-1], layer.filters), (layer.filters,)
    elif isinstance(layer, layers_module.Dense):
        kernel, bias = (input_shape[-1], layer.units), (layer.units,)
    elif isinstance(layer, layers_module.BatchNormalization):
        present = [layer.scale, layer.center, True, True]        # gamma, beta, moving_mean, moving_variance
        return [(input_shape[-1],) for is_there in present if is_there]
    else:
        return []                      # tinycnn's other layers have no weights
    return [kernel, bias] if layer.use_bias else [kernel]


def _is_positive_int(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_architecture(header, layouts, custom_objects, fail):
    """The weight arrays have exactly the shapes the header's architecture implies."""
    try:
        expected = expected_weight_shapes(header.get("model"), custom_objects)
    except UnknownLayerError as error:
        raise fail(str(error)) from None
    except Exception as error:         # a crafted config can make a layer's constructor raise anything
        raise fail(f"its architecture is invalid: {error}") from None
    count = sum(1 for name in layouts if name.startswith("weight_"))
    names = [f"weight_{i:04d}" for i in range(count)]
    if any(name not in layouts for name in names):
        raise fail(f"its weights are not numbered 0..{count - 1}")
    found = [layouts[name][0] for name in names]
    if len(found) != len(expected):
        raise fail(f"its architecture has {len(expected)} weight arrays, but the file holds "
                   f"{len(found)}: the file was damaged or edited after it was written")
    for index, (want, have) in enumerate(zip(expected, found)):
        if tuple(want) != tuple(have):
            raise fail(f"its architecture implies weight {index} of shape {tuple(want)}, but the "
                       f"file's weight {index} has shape {tuple(have)}: the file was damaged or "
                       f"edited after it was written")


# ---------------------------------------------------------------------------
# Loading a whole model
# ---------------------------------------------------------------------------
def weights_from(header, arrays, filepath):
    """The weight arrays of a checked file, in order."""
    count = sum(1 for name in arrays if name.startswith("weight_"))
    names = [f"weight_{i:04d}" for i in range(count)]
    if any(name not in arrays for name in names):
        raise ModelFileError(f"cannot load {filepath!r}: its weights are not numbered 0..{count - 1}")
    return [arrays[name] for name in names]


def load_model(filepath, compile=True, custom_objects=None):
    """Rebuild a model saved with model.save: same architecture, weights, compile settings and
    optimizer state. Raises tinycnn.models.ModelFileError (a ValueError) for a damaged, edited,
    foreign or too-new file; never returns a half-loaded model. Loading draws no random
    numbers (tinycnn.utils.get_rng() is left as it was), and never runs code from the file.

    custom_objects: {class name: class} for layers of your own, as in Keras:
    load_model("scaled.npz", custom_objects={"Scale": Scale}). Only these classes and
    tinycnn's own are ever made; a file that names any other class is refused, with a
    message saying to pass it here.
    """
    from tinycnn import optimizers as optimizers_module
    from tinycnn import utils
    from tinycnn.models import Sequential                # (models.py imports this module)
    layer_classes(custom_objects)                        # a bad custom_objects fails before any reading
    # read_model_file has checked the architecture (known classes, an input shape, the weights'
    # shapes) before reading any array
    header, arrays = read_model_file(filepath, kinds=("model",), custom_objects=custom_objects)

    def fail(problem):
        return ModelFileError(f"cannot load {filepath!r}: {problem}")

    config = header["model"]
    weights = weights_from(header, arrays, filepath)

    rng_state = utils.get_rng().bit_generator.state       # building draws initial weights...
    try:
        model = Sequential.from_config(config, custom_objects=custom_objects)
        model.set_weights(weights)                         # ...which are replaced at once
    except Exception as error:                             # a crafted file's odd config
        raise fail(f"its architecture or weights do not fit together ({error})") from None
    finally:
        utils.get_rng().bit_generator.state = rng_state    # so loading does not disturb the seed

    compile_config = header.get("compile")
    if compile and compile_config is not None:
        try:
            optimizer_config = compile_config["optimizer"]
            optimizer = optimizers_module.get(dict(optimizer_config["config"],
                                                   class_name=optimizer_config["class_name"]))
            count = int(header.get("optimizer_state_count", 0))
            state = [arrays[f"optimizer_{i:04d}"] for i in range(count)]
            if state:
                optimizer.set_state(state)
            model.compile(optimizer=optimizer, loss=compile_config["loss"],
                          metrics=compile_config.get("metrics") or None,
                          engine=compile_config.get("engine", "auto"))
            if optimizer.slots is not None:
                slot_shapes = [s.shape for slots in optimizer.slots for s in slots]
                param_shapes = [p.shape for p in model._trainable_params() for _ in optimizer.slot_names]
                if slot_shapes != param_shapes:
                    raise ValueError(f"optimizer state shapes {slot_shapes} do not match the weights")
        except Exception as error:
            raise fail(f"its compile settings or optimizer state are invalid ({error})") from None
    return model
