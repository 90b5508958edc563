"""The model file: damaged, edited, foreign, too-new and pickle-crafted files are refused with
ModelFileError before anything is built; writes are atomic."""
import io
import json
import os
import zipfile

import numpy as np
import pytest

from tinycnn import saving, utils
from tinycnn.layers import Dense, Flatten
from tinycnn.models import ModelFileError, Sequential, load_model


@pytest.fixture
def saved(tmp_path):
    """A small compiled, trained model and the path it was saved to."""
    utils.set_random_seed(0)
    model = Sequential([Flatten(input_shape=(4, 4, 1)), Dense(5, activation="relu"), Dense(3, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
    model.fit(np.random.default_rng(0).random((12, 4, 4, 1), dtype=np.float32), np.arange(12) % 3, verbose=0)
    path = tmp_path / "model.npz"
    model.save(path)
    return model, path


def members_of(path):
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def write_zip(path, members):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def npy_bytes(array, allow_pickle=False):
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def test_file_holds_only_numeric_arrays_and_a_json_header(saved):
    model, path = saved
    with np.load(path, allow_pickle=False) as archive:
        assert set(archive.files) >= {"header", "sha256", "weight_0000", "optimizer_0000"}
        assert all(archive[name].dtype != object for name in archive.files)
        header = json.loads(archive["header"].tobytes())
    assert header["format"] == "tinycnn-model" and header["version"] == saving.FORMAT_VERSION
    assert header["model"]["layers"][1]["class_name"] == "Dense"
    assert header["compile"]["loss"] == "sparse_categorical_crossentropy"
    assert header["compile"]["optimizer"]["class_name"] == "Adam"


def test_truncated_file_is_refused(saved, tmp_path):
    _, path = saved
    data = path.read_bytes()
    for keep in (len(data) // 2, len(data) - 30, 10):
        cut = tmp_path / f"cut{keep}.npz"
        cut.write_bytes(data[:keep])
        with pytest.raises(ModelFileError, match="cannot load"):
            load_model(cut)


def test_edited_weight_is_caught_by_the_checksum(saved, tmp_path):
    _, path = saved
    members = members_of(path)
    with np.load(path) as archive:
        weight = archive["weight_0002"].copy()
    weight[0, 0] += 1e-3                       # a small, plausible edit with a valid zip around it
    members["weight_0002.npy"] = npy_bytes(weight)
    edited = tmp_path / "edited.npz"
    write_zip(edited, members)
    with pytest.raises(ModelFileError, match="checksum does not match"):
        load_model(edited)


def test_flipped_byte_is_caught(saved, tmp_path):
    _, path = saved
    data = bytearray(path.read_bytes())
    start = data.find(b"weight_0000.npy")
    data[start + 200] ^= 0xFF                  # inside the first weight's data
    flipped = tmp_path / "flipped.npz"
    flipped.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="cannot load"):
        load_model(flipped)


def test_edited_header_is_caught(saved, tmp_path):
    _, path = saved
    members = members_of(path)
    with np.load(path) as archive:
        header = json.loads(archive["header"].tobytes())
    header["model"]["layers"][1]["config"]["activation"] = "linear"   # same shapes, other model
    members["header.npy"] = npy_bytes(np.frombuffer(json.dumps(header).encode(), np.uint8))
    edited = tmp_path / "edited.npz"
    write_zip(edited, members)
    with pytest.raises(ModelFileError, match="checksum"):
        load_model(edited)


def test_newer_format_version_is_refused(saved, tmp_path, monkeypatch):
    model, _ = saved
    monkeypatch.setattr(saving, "FORMAT_VERSION", saving.FORMAT_VERSION + 1)
    model.save(tmp_path / "future.npz")
    monkeypatch.undo()
    with pytest.raises(ModelFileError, match="newer tinycnn .*version 2.*upgrade"):
        load_model(tmp_path / "future.npz")


@pytest.mark.parametrize("kind, content, message", [
    ("text", b"hello, I am a text file\n", "not a tinycnn model file"),
    ("empty", b"", "empty file"),
    ("h5", b"\x89HDF\r\n\x1a\n" + bytes(100), "HDF5 file"),
    ("npy", None, "single NumPy .npy array"),
    ("pickle", b"\x80\x04\x95" + bytes(20), "pickle"),
])
def test_foreign_files_are_refused(tmp_path, kind, content, message):
    path = tmp_path / f"foreign.{kind}"
    if content is None:
        np.save(path, np.arange(3))          # the name ends in .npy: np.save keeps it
    else:
        path.write_bytes(content)
    with pytest.raises(ModelFileError, match=message):
        load_model(path)


def test_foreign_archives_are_refused(tmp_path):
    plain = tmp_path / "arrays.npz"
    np.savez(plain, a=np.arange(3), b=np.ones(2))
    with pytest.raises(ModelFileError, match="not a tinycnn model file"):
        load_model(plain)
    keras = tmp_path / "model.keras"
    write_zip(keras, {"config.json": "{}", "metadata.json": "{}", "model.weights.h5": b"\x89HDF"})
    with pytest.raises(ModelFileError, match="Keras .keras archive"):
        load_model(keras)
    with pytest.raises(FileNotFoundError, match="No such file"):
        load_model(tmp_path / "missing.npz")
    with pytest.raises(ModelFileError, match="directory"):
        load_model(tmp_path)


class CreatesMarker:
    """Unpickling this object would call open(marker, "w"), creating the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("member", ["weight_0000.npy", "header.npy", "sha256.npy"])
def test_pickle_crafted_file_is_refused_without_running_it(saved, tmp_path, member):
    _, path = saved
    marker = tmp_path / "pwned"
    evil = np.empty(1, dtype=object)
    evil[0] = CreatesMarker(marker)
    members = members_of(path)
    members[member] = npy_bytes(evil, allow_pickle=True)
    crafted = tmp_path / "crafted.npz"
    write_zip(crafted, members)
    with pytest.raises(ModelFileError, match="pickled Python object"):
        load_model(crafted)
    assert not marker.exists()
    # the crafted member really is live: NumPy with pickles allowed would have run it
    with np.load(crafted, allow_pickle=True) as archive:
        archive[member[:-4]]
    assert marker.exists()


def test_wrong_kind_and_extra_members_are_refused(saved, tmp_path):
    model, path = saved
    model.save_weights(tmp_path / "weights.npz")
    with pytest.raises(ModelFileError, match=r"only weights.*model.load_weights\(path\)"):
        load_model(tmp_path / "weights.npz")
    members = members_of(path)
    members["extra.npy"] = npy_bytes(np.zeros(2))
    extra = tmp_path / "extra.npz"
    write_zip(extra, members)
    with pytest.raises(ModelFileError):
        load_model(extra)


def test_save_is_atomic_when_writing_fails(saved, tmp_path, monkeypatch):
    model, path = saved
    before = path.read_bytes()

    def broken_savez(file, **arrays):
        file.write(b"PK partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        model.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before                       # the old file is untouched
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]     # and no temporary file is left
    load_model(path)


def test_save_errors_name_the_path(saved, tmp_path):
    model, _ = saved
    with pytest.raises(FileNotFoundError, match="does not exist"):
        model.save(tmp_path / "no" / "such" / "model.npz")
    with pytest.raises(IsADirectoryError, match="is a directory"):
        model.save(tmp_path)


def test_saved_file_has_the_usual_permissions(saved):
    _, path = saved
    mask = os.umask(0)
    os.umask(mask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~mask


# ---------------------------------------------------------------------------
# An interrupted save: the temporary file it leaves is cleared by the next save or load
# ---------------------------------------------------------------------------
SAVE_UNTIL_KILLED = """
import sys, time
import numpy as np
from tinycnn import utils
from tinycnn.layers import Dense
from tinycnn.models import Sequential

def savez_that_hangs(file, **arrays):
    file.write(b"PK half a model")
    file.flush()
    print("writing", flush=True)
    time.sleep(60)                      # killed here, in the middle of the save

np.savez = savez_that_hangs
utils.set_random_seed(0)
Sequential([Dense(3, input_shape=(4,))]).save(sys.argv[1])
"""


def kill_while_saving(path):
    """Run a save of `path` in another process and SIGKILL it mid-write; returns what it left."""
    import select
    import signal
    import subprocess
    import sys
    child = subprocess.Popen([sys.executable, "-c", SAVE_UNTIL_KILLED, str(path)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([child.stdout], [], [], 60)
        assert ready and child.stdout.readline() == "writing\n", child.stderr.read()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        child.stdout.close()
        child.stderr.close()
    return sorted(name for name in os.listdir(path.parent) if name != path.name)


def make_old(path, seconds=3600):
    """Set a file's modification time `seconds` back, as if it had been left there long ago."""
    then = os.stat(path).st_mtime - seconds
    os.utime(path, (then, then))


def test_a_killed_save_leaves_the_old_file_and_its_temporary_file_is_cleared_later(saved):
    model, path = saved
    before = path.read_bytes()
    left = kill_while_saving(path)
    assert len(left) == 1 and left[0].startswith(".model.npz.") and left[0].endswith(".tmp")
    assert path.read_bytes() == before                       # the target was never touched
    stale = path.parent / left[0]
    make_old(stale)
    load_model(path)                                         # the next load clears it...
    assert sorted(os.listdir(path.parent)) == ["model.npz"]
    stale.write_bytes(b"PK half a model")
    make_old(stale)
    model.save(path)                                         # ...and so does the next save
    assert sorted(os.listdir(path.parent)) == ["model.npz"]


# ---------------------------------------------------------------------------
# Hostile files: every one is a ModelFileError naming the file, found before anything big is
# allocated; nothing else escapes, and nothing blocks
# ---------------------------------------------------------------------------
def central_entry(data, member):
    """The offset of `member`'s entry in the archive's central directory."""
    start = data.find(b"PK\x01\x02")
    while start != -1:
        name_length = int.from_bytes(data[start + 28:start + 30], "little")
        if data[start + 46:start + 46 + name_length] == member.encode():
            return start
        start = data.find(b"PK\x01\x02", start + 4)
    raise AssertionError(f"{member} is not in the central directory")


def patched_central_entry(path, member, field_offset, value):
    """The file's bytes with a 2-byte field of `member`'s central directory entry set to `value`."""
    data = bytearray(path.read_bytes())
    start = central_entry(data, member) + field_offset
    data[start:start + 2] = value.to_bytes(2, "little")
    return bytes(data)


FLAG_BITS, COMPRESSION_METHOD = 8, 10          # offsets in a central directory entry


def npy_header_only(shape, descr="<f4"):
    """The .npy header of an array of `shape` (magic, version, dict), without the array's data."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False,
                                                  "shape": shape})
    return buffer.getvalue()


def hostile_file(kind, path, tmp_path):
    """A damaged or hostile version of the saved model at `path`; returns the new file's path."""
    out = tmp_path / f"{kind}.npz"
    members = members_of(path)
    if kind == "encrypted member":
        out.write_bytes(patched_central_entry(path, "weight_0000.npy", FLAG_BITS, 0x0001))
    elif kind == "unknown compression":
        out.write_bytes(patched_central_entry(path, "weight_0000.npy", COMPRESSION_METHOD, 99))
    elif kind == "bzip2 members":
        with zipfile.ZipFile(out, "w", zipfile.ZIP_BZIP2) as archive:
            for name, data in members.items():
                archive.writestr(name, data)
    elif kind in ("raw header member", "raw weight member"):
        members["header.npy" if kind == "raw header member" else "weight_0000.npy"] = b"raw bytes"
        write_zip(out, members)
    elif kind == "header nested 200,000 deep":
        deep = b"[" * 200_000 + b"]" * 200_000
        members["header.npy"] = npy_bytes(np.frombuffer(deep, dtype=np.uint8))
        write_zip(out, members)
    elif kind == "object header":
        members["header.npy"] = npy_header_only((3,), descr="|O") + bytes(24)
        write_zip(out, members)
    return out


@pytest.mark.parametrize("kind, words", [
    ("encrypted member", "encrypted"),
    ("unknown compression", "compression method 99"),
    ("bzip2 members", "compression method 12"),
    ("raw header member", "'header.npy' is not a .npy array"),
    ("raw weight member", "'weight_0000.npy' is not a .npy array"),
    ("header nested 200,000 deep", "nested too deeply"),
    ("object header", "pickled Python object"),
])
def test_hostile_archives_are_a_model_file_error_naming_the_problem(saved, tmp_path, kind, words):
    _, path = saved
    hostile = hostile_file(kind, path, tmp_path)
    with pytest.raises(ModelFileError) as caught:
        load_model(hostile)
    assert str(hostile) in str(caught.value) and words in str(caught.value)
    assert caught.value.__cause__ is None


def test_flipped_bytes_anywhere_give_a_model_file_error_or_the_same_model(saved, tmp_path):
    """Every byte of the zip's directory and a seeded sample of all the others, flipped one at
    a time: either the file is refused with ModelFileError, or (a byte nothing depends on,
    such as a timestamp) it loads the very same weights. Nothing else ever comes out."""
    model, path = saved
    data = path.read_bytes()
    directory_start = data.find(b"PK\x01\x02")
    rng = np.random.default_rng(15)
    positions = list(range(directory_start, len(data)))
    positions += sorted(rng.choice(directory_start, size=400, replace=False).tolist())
    flipped = tmp_path / "flipped.npz"
    refused = loaded = 0
    for position in positions:
        damaged = bytearray(data)
        damaged[position] ^= int(rng.integers(1, 256))
        flipped.write_bytes(bytes(damaged))
        try:
            copy = load_model(flipped)
        except ModelFileError as error:
            assert str(flipped) in str(error)
            refused += 1
            continue
        for mine, theirs in zip(model.get_weights(), copy.get_weights(), strict=True):
            np.testing.assert_array_equal(mine, theirs)
        loaded += 1
    assert refused > loaded > 0


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_path_that_is_not_a_regular_file_is_refused_without_blocking(tmp_path, kind):
    import threading
    if kind == "fifo":
        path = tmp_path / "model.npz"
        os.mkfifo(path)                          # open() for reading waits for a writer
    else:
        path = "/dev/zero"                       # reading never ends
    outcome = []

    def load():
        try:
            load_model(path)
        except BaseException as error:
            outcome.append(error)

    reader = threading.Thread(target=load, daemon=True)
    reader.start()
    reader.join(timeout=30)
    if reader.is_alive():                        # stuck in open(): release it, then fail
        if kind == "fifo":
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail(f"load_model({str(path)!r}) blocked instead of refusing it")
    assert isinstance(outcome[0], ModelFileError), outcome
    assert str(path) in str(outcome[0])
    assert ("FIFO" if kind == "fifo" else "character device") in str(outcome[0])


def test_a_recompressed_model_file_still_loads(saved, tmp_path):
    """tinycnn writes its members uncompressed; a file whose members were deflated by another
    tool holds the same arrays and loads the same model (read in bounded pieces)."""
    model, path = saved
    deflated = tmp_path / "deflated.npz"
    with zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members_of(path).items():
            archive.writestr(name, data)
    copy = load_model(deflated)
    for mine, theirs in zip(model.get_weights(), copy.get_weights(), strict=True):
        np.testing.assert_array_equal(mine, theirs)
    assert copy.optimizer.get_config() == model.optimizer.get_config()


def test_an_edited_architecture_is_refused_before_the_model_is_built(saved, tmp_path, monkeypatch):
    """A header whose architecture does not fit its arrays, with a valid checksum (recomputed, as
    anyone can): refused from the shapes alone, before any layer creates its weights."""
    _, path = saved
    header, arrays = saving.read_model_file(path)
    header["model"]["layers"][1]["config"]["units"] = 6
    edited = tmp_path / "edited.npz"
    saving.write_model_file(edited, header, arrays)
    from tinycnn import layers
    monkeypatch.setattr(layers.Dense, "_create_params",
                        lambda self, shape: pytest.fail("a Dense layer was built"))
    with pytest.raises(ModelFileError) as caught:
        load_model(edited)
    message = str(caught.value)
    assert str(edited) in message and "(16, 6)" in message and "(16, 5)" in message


LOAD_WITH_LITTLE_MEMORY = """
import resource, sys
from tinycnn.models import ModelFileError, load_model
with open("/proc/self/status") as status:
    in_use = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
limit = in_use + 64 * 2**20              # from here on, at most 64 MiB more address space
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
try:
    load_model(sys.argv[1])
    print("loaded")
except BaseException as error:
    print(f"{type(error).__name__}: {error}")
"""


def load_with_little_memory(path):
    """What load_model(path) gives in a process that may allocate at most 64 MiB more."""
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-c", LOAD_WITH_LITTLE_MEMORY, str(path)],
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, OPENBLAS_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def write_zip_with_bomb(path, members, bomb_name, inflated_bytes):
    """An archive of `members` in which `bomb_name` is a deflated float32 array of zeros that
    inflates to `inflated_bytes` (about a thousandth of that on disk)."""
    zeros = bytes(2**20)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            if name != bomb_name:
                archive.writestr(name, data)
                continue
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(info, "w") as member:
                member.write(npy_header_only((inflated_bytes // 4,)))
                for _ in range(inflated_bytes // len(zeros)):
                    member.write(zeros)


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux's /proc")
@pytest.mark.parametrize("kind, words", [
    ("a 200-byte member claiming 4 TiB", "declares a float32 array of shape (1099511627776,)"),
    ("a zip bomb", "zip bomb"),
    ("a Dense of 10,000,000 units over small arrays", "implies weight 0 of shape (16, 10000000)"),
])
def test_sizes_are_checked_before_any_memory_is_spent(saved, tmp_path, kind, words):
    """Each file would make a loader that trusts it allocate far more than the 64 MiB the
    loading process is allowed (a MemoryError): it is refused from sizes alone."""
    _, path = saved
    members = members_of(path)
    hostile = tmp_path / "hostile.npz"
    if kind == "a 200-byte member claiming 4 TiB":
        members["weight_0000.npy"] = npy_header_only((2**40,)) + bytes(72)
        write_zip(hostile, members)
    elif kind == "a zip bomb":
        write_zip_with_bomb(hostile, members, "weight_0000.npy", 128 * 2**20)
        assert hostile.stat().st_size < 2**20
    else:                                    # with a valid checksum, recomputed as anyone can
        header, arrays = saving.read_model_file(path)
        header["model"]["layers"][1]["config"]["units"] = 10_000_000
        saving.write_model_file(hostile, header, arrays)
    outcome = load_with_little_memory(hostile)
    assert outcome.startswith(f"ModelFileError: cannot load {str(hostile)!r}"), outcome
    assert words in outcome


def every_layer_model():
    """A built model with every layer class tinycnn has, with and without biases (and a
    BatchNormalization with each of gamma and beta left out), and the augmentation layers first."""
    from tinycnn import layers
    model = Sequential([
        layers.RandomFlip(input_shape=(9, 8, 3)), layers.RandomTranslation(0.2, (-0.3, 0.1), fill_mode="nearest"),
        layers.RandomErasing(0.7, value="random"),
        layers.Conv2D(4, (3, 2), strides=(2, 1), padding="same", use_bias=False),
        layers.BatchNormalization(center=False), layers.ReLU(), layers.AveragePooling2D(2, 1, "same"),
        layers.Conv2D(5, 2, activation="relu"), layers.BatchNormalization(), layers.MaxPooling2D(2, strides=1),
        layers.Dropout(0.25), layers.GlobalAveragePooling2D(keepdims=True), layers.Flatten(),
        layers.Dense(7, use_bias=False), layers.BatchNormalization(scale=False), layers.Activation("relu"),
        layers.Dense(3), layers.Softmax()])
    assert {type(layer) for layer in model.layers} == set(layers.LAYER_CLASSES.values())
    return model


@pytest.mark.parametrize("name", ["every layer", "cnn_categorical", "simple_dense", "cnn_sparse"])
def test_expected_weight_shapes_are_those_a_built_model_has(name):
    from tinycnn import zoo
    if name == "every layer":
        model = every_layer_model()
    else:
        spec = zoo.get_spec(name)
        model = spec.build()
        if not model.built:
            model.build((None,) + spec.input_shape)
    assert saving.expected_weight_shapes(model.get_config()) == [w.shape for w in model.get_weights()]


# ---------------------------------------------------------------------------
# Layers of the caller's own: load_model(path, custom_objects={"Scale": Scale})
# ---------------------------------------------------------------------------
from tinycnn.layers import Layer      # noqa: E402  (here, beside the custom layer that needs it)


class Scale(Layer):
    """y = x * scale, one trainable scale per feature (starting at `initial`): a layer of a user's own."""

    def __init__(self, initial=2.0, **kwargs):
        super().__init__(**kwargs)
        self.initial = float(initial)

    def _create_params(self, input_shape):
        self.params = [np.full(input_shape[-1:], self.initial, dtype=self.dtype)]
        self.grads = [np.zeros_like(self.params[0])]

    def forward(self, x, training=False):
        self._x = self._check_input(x)
        return self._x * self.params[0]

    def backward(self, grad_out):
        grad_out = self._check_grad(grad_out)
        self.grads[0][...] = (grad_out * self._x).reshape(-1, self.params[0].size).sum(axis=0)
        return grad_out * self.params[0] if self.need_input_grad else None

    def get_config(self):
        config = super().get_config()
        config.update(initial=self.initial)
        return config


def scaled_model():
    """Flatten - Dense 8 - Scale - Dense 3 softmax on (4, 4) inputs, compiled with Adam."""
    model = Sequential([Flatten(input_shape=(4, 4)), Dense(8, activation="relu"), Scale(initial=1.5),
                        Dense(3, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


@pytest.fixture
def scaled(tmp_path):
    """(a trained scaled_model, its file, a few inputs)."""
    utils.set_random_seed(4)
    rng = np.random.default_rng(4)
    x, y = rng.random((64, 4, 4), dtype=np.float32), rng.integers(0, 3, 64)
    model = scaled_model()
    model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    path = tmp_path / "scaled.npz"
    model.save(path)
    return model, path, x


def test_a_custom_layer_loads_with_custom_objects(scaled):
    model, path, x = scaled
    assert not np.all(model.layers[2].params[0] == 1.5)            # its weight trained
    loaded = load_model(path, custom_objects={"Scale": Scale})
    assert type(loaded.layers[2]) is Scale and loaded.layers[2].initial == 1.5
    assert same_arrays(loaded.get_weights(), model.get_weights())
    assert np.array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert same_arrays(loaded.optimizer.get_state(), model.optimizer.get_state())


def same_arrays(a, b):
    return len(a) == len(b) and all(np.array_equal(u, v) for u, v in zip(a, b))


def test_a_custom_layer_without_custom_objects_is_refused_naming_custom_objects(scaled):
    _, path, _ = scaled
    with pytest.raises(ModelFileError) as caught:
        load_model(path)
    message = str(caught.value)
    assert str(path) in message and "unknown class 'Scale'" in message
    assert "custom_objects={'Scale': Scale}" in message


def test_custom_objects_must_be_layer_classes(scaled):
    _, path, _ = scaled
    with pytest.raises(ValueError, match=r"custom_objects\['Scale'\] must be a layer class"):
        load_model(path, custom_objects={"Scale": lambda **config: None})
    with pytest.raises(ValueError, match="must be a layer class"):
        load_model(path, custom_objects={"Scale": Scale(initial=1.0)})   # an instance, not the class


def test_expected_weight_shapes_of_a_custom_layer_leave_the_random_numbers_alone():
    model = scaled_model()
    utils.set_random_seed(9)
    before = utils.get_rng().bit_generator.state
    shapes = saving.expected_weight_shapes(model.get_config(), custom_objects={"Scale": Scale})
    assert shapes == [w.shape for w in model.get_weights()] == [(16, 8), (8,), (8,), (8, 3), (3,)]
    assert utils.get_rng().bit_generator.state == before
    with pytest.raises(saving.UnknownLayerError, match="custom_objects"):
        saving.expected_weight_shapes(model.get_config())


def test_load_weights_into_a_model_with_a_custom_layer(scaled):
    model, path, x = scaled
    utils.set_random_seed(5)
    fresh = scaled_model()
    fresh.load_weights(path)
    assert np.array_equal(fresh.predict(x, verbose=0), model.predict(x, verbose=0))


# ---------------------------------------------------------------------------
# Keras's file names: tinycnn writes .npz, and says so
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["cnn.keras", "cnn.h5", "cnn.weights.h5", "CNN.HDF5"])
def test_a_keras_file_name_is_refused_naming_the_npz_to_use(tmp_path, name):
    model = Sequential([Flatten(input_shape=(4, 4)), Dense(3)])
    target = tmp_path / name
    stem = str(target)[:-len(os.path.splitext(name)[1])]
    for save in (model.save, model.save_weights):
        with pytest.raises(ValueError, match="a Keras format, but tinycnn writes its own") as caught:
            save(target)
        assert repr(stem + ".npz") in str(caught.value)
    assert not os.listdir(tmp_path)                                # nothing written, not even a temporary
    from tinycnn.callbacks import ModelCheckpoint
    with pytest.raises(ValueError, match="ModelCheckpoint: .*\\.npz"):
        ModelCheckpoint(str(tmp_path / "best.keras"))
    model.save(tmp_path / "cnn.npz")                               # the name it suggests works
    assert load_model(tmp_path / "cnn.npz").count_params() == model.count_params()


def test_a_model_with_every_layer_round_trips_with_its_moving_statistics(tmp_path):
    utils.set_random_seed(50)
    model = every_layer_model()
    model.compile("adam", "sparse_categorical_crossentropy", engine="reference")
    rng = np.random.default_rng(50)
    x, y = rng.random((24, 9, 8, 3)).astype(np.float32), rng.integers(0, 3, 24)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    moving = [w for layer in model.layers for w in layer.non_trainable_params]
    assert len(moving) == 6 and not any(np.array_equal(m, np.zeros_like(m)) or np.array_equal(m, np.ones_like(m))
                                        for m in moving)      # trained away from their initial values
    model.save(tmp_path / "all.npz")
    loaded = load_model(tmp_path / "all.npz")
    assert [type(l) for l in loaded.layers] == [type(l) for l in model.layers]
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    for trained in (model, loaded):                           # and training goes on alike (same Dropout masks)
        utils.set_random_seed(51)
        trained.fit(x, y, batch_size=8, epochs=1, verbose=0)
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
