"""A full disk while writing a checkpoint, an export or the embedding cache (issue 7, item 6).

Each test writes one good copy, fills the disk, and tries to write the next one at several
amounts of free space (from nothing to just short of, and then past, what the write needs).
After every trial the previous copy must be intact and loadable, a failed write must say
that the disk is full, and nothing half-written may be visible to a reader.

The disk is a real tmpfs of ``DISK_SIZE`` bytes where this process may mount one (root, or
CAP_SYS_ADMIN). Elsewhere the ``small_disk`` fixture injects ENOSPC instead, at the same
write paths the real disk fails in: Python's ``open`` (cache shards, json files, models.config,
TFLite files), TF's ``SaveV2`` op (checkpoint and SavedModel variables) and TF's
``atomic_write_string_to_file`` (``checkpoint`` pointer, saved_model.pb). Set
``VEC2FACE_DISK_FAULT=injected`` to force the injection; every test prints which one ran.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import io
import os
import pathlib
import subprocess

import numpy as np
import pytest
import tensorflow as tf

DISK_SIZE = 16 * 2**20
DISK_MODE_ENV = "VEC2FACE_DISK_FAULT"
PAGE = 4096
NO_SPACE = "No space left on device"


class SmallDisk:
    """A small filesystem that a test can fill up to a chosen amount of free space.

    Attributes:
      root: the folder to write into.
      mode: ``"tmpfs"`` (a real size-limited filesystem) or ``"injected"`` (ENOSPC raised by
        patched write functions once the bytes under ``root`` would pass the limit).
    """

    def __init__(self, root: pathlib.Path, mode: str):
        self.root = root
        self.mode = mode
        self.limit: int | None = None  # Injected mode: bytes allowed under root.
        self._filler = root / "filler.bin"

    def used(self) -> int:
        return sum(file.stat().st_size for file in self.root.rglob("*") if file.is_file())

    def free(self) -> int:
        if self.mode == "tmpfs":
            stats = os.statvfs(self.root)
            return stats.f_bavail * stats.f_frsize
        return DISK_SIZE - self.used() if self.limit is None else self.limit - self.used()

    def fill(self, leave: int) -> None:
        """Leaves about ``leave`` bytes free (whole pages on tmpfs)."""
        if self.mode == "injected":
            self.limit = self.used() + leave
            return
        block = b"\0" * 2**20
        with open(self._filler, "ab", buffering=0) as filler:
            while True:
                try:
                    if filler.write(block) < len(block):
                        continue  # A short write: the next one raises ENOSPC.
                except OSError as error:
                    if error.errno != errno.ENOSPC:
                        raise
                    break
        shrink = -(-max(0, leave - self.free()) // PAGE) * PAGE
        os.truncate(self._filler, max(0, self._filler.stat().st_size - shrink))
        assert leave <= self.free() < leave + 2 * PAGE, (leave, self.free())

    def unfill(self) -> None:
        self.limit = None
        self._filler.unlink(missing_ok=True)

    def contains(self, path) -> bool:
        try:
            return pathlib.Path(os.fsdecode(path)).resolve().is_relative_to(self.root)
        except (TypeError, ValueError):
            return False

    def would_overflow(self, size: int) -> bool:
        return self.limit is not None and self.used() + size > self.limit


class _GuardedFile:
    """A file opened for writing under an injected disk: a write past the limit fails."""

    def __init__(self, handle, disk: SmallDisk, path):
        self._handle, self._disk, self._path = handle, disk, os.fsdecode(path)

    def write(self, data):
        self._handle.flush()  # So that used() counts what this handle wrote so far.
        size = len(data.encode()) if isinstance(data, str) else memoryview(data).nbytes
        if self._disk.would_overflow(size):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self._path)
        return self._handle.write(data)

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self._handle.close()


def _inject_enospc(disk: SmallDisk, monkeypatch) -> None:
    """Patches the write paths that a real full disk makes fail (see the module docstring)."""
    from tensorflow.python.lib.io import file_io
    from tensorflow.python.ops import io_ops

    real_open, real_save_v2 = builtins.open, io_ops.save_v2
    real_atomic_write = file_io.atomic_write_string_to_file

    def guarded_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        writing = any(flag in mode for flag in "wax+")
        if writing and isinstance(file, (str, bytes, os.PathLike)) and disk.contains(file):
            return _GuardedFile(handle, disk, file)
        return handle

    def tf_no_space(path: str) -> tf.errors.ResourceExhaustedError:
        return tf.errors.ResourceExhaustedError(None, None, f"{path}; {NO_SPACE}")

    def save_v2(prefix, tensor_names, shape_and_slices, tensors, name=None):
        if tf.executing_eagerly():
            path = prefix.numpy().decode() if hasattr(prefix, "numpy") else str(prefix)
            size = sum(np.asarray(t() if callable(t) else t).nbytes for t in tensors)
            if disk.contains(path) and disk.would_overflow(size):
                os.makedirs(os.path.dirname(path), exist_ok=True)  # As TF leaves <prefix>_temp.
                raise tf_no_space(f"{path}.data-00000-of-00001.tempstate")
        return real_save_v2(prefix, tensor_names, shape_and_slices, tensors, name=name)

    def atomic_write(filename, contents, overwrite=True):
        if disk.contains(filename) and disk.would_overflow(len(contents)):
            raise tf_no_space(f"{filename}.tmp")
        return real_atomic_write(filename, contents, overwrite)

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(io, "open", guarded_open)  # pathlib's write_text/write_bytes
    monkeypatch.setattr(io_ops, "save_v2", save_v2)
    monkeypatch.setattr(file_io, "atomic_write_string_to_file", atomic_write)


@pytest.fixture
def small_disk(tmp_path, monkeypatch):
    """A ``SmallDisk``: a real tmpfs where mount works, else injected ENOSPC."""
    root = tmp_path / "disk"
    root.mkdir()
    mounted = False
    if os.environ.get(DISK_MODE_ENV, "tmpfs") != "injected":
        try:
            mounted = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE},mode=0755", "tmpfs",
                 str(root)], capture_output=True, timeout=30).returncode == 0
        except (OSError, subprocess.TimeoutExpired):  # No mount binary, or it hangs.
            mounted = False
    disk = SmallDisk(root.resolve(), "tmpfs" if mounted else "injected")
    if not mounted:
        _inject_enospc(disk, monkeypatch)
    print(f"\n[small_disk] {disk.mode} at {root}")
    try:
        yield disk
    finally:
        if mounted:
            subprocess.run(["umount", "--lazy", str(root)], check=True)


def file_digests(folder: pathlib.Path) -> dict[str, str]:
    return {file.relative_to(folder).as_posix(): hashlib.sha256(file.read_bytes()).hexdigest()
            for file in sorted(folder.rglob("*")) if file.is_file()}


# ----- (a) checkpoints -----

def _variables(parts) -> list[tf.Variable]:
    """The tf.Variables that ``dibigan.checkpoint_for`` saves, in its order."""
    return [v.value for name in ("flow", "student", "generator", "discriminator")
            for v in getattr(parts, name).variables]


def _snapshot(parts) -> list[np.ndarray]:
    return [v.numpy().copy() for v in _variables(parts)]


def _perturb(parts, seed: int) -> list[np.ndarray]:
    """Gives every float weight new random values; returns all the values."""
    rng = np.random.default_rng(seed)
    for variable in _variables(parts):
        if variable.dtype.is_floating:
            variable.assign(rng.standard_normal(variable.shape).astype(
                variable.dtype.as_numpy_dtype))
    return _snapshot(parts)


def _check_restores(parts, path: str, expected: list[np.ndarray]) -> None:
    from vec2face_tf.models import dibigan

    _perturb(parts, seed=999)  # So that a restore that does nothing cannot pass.
    dibigan.checkpoint_for(parts).restore(path).assert_consumed()
    for restored, saved in zip(_snapshot(parts), expected):
        np.testing.assert_array_equal(restored, saved)


@pytest.fixture(scope="module")
def smoke_parts():
    from vec2face_tf import config as config_lib
    from vec2face_tf.models import dibigan

    return dibigan.build_parts(config_lib.get_config("smoke"), embedding_dim=16)


@pytest.mark.fault
def test_a_checkpoint_on_a_full_disk_fails_and_the_previous_one_stays_usable(small_disk,
                                                                             smoke_parts):
    from vec2face_tf.models import dibigan

    directory = small_disk.root / "checkpoints"
    manager = tf.train.CheckpointManager(dibigan.checkpoint_for(smoke_parts), str(directory),
                                         max_to_keep=1)
    saved = {1: _perturb(smoke_parts, seed=1)}
    manager.save(checkpoint_number=1)
    data = (directory / "ckpt-1.data-00000-of-00001").stat().st_size
    index = (directory / "ckpt-1.index").stat().st_size
    page = lambda size: -(-size // PAGE) * PAGE  # noqa: E731
    # Nothing; a little; half the data; all but a page of it; data but not the index; data
    # and index but not the `checkpoint` pointer; and enough.
    budgets = [0, 64 * 1024, data // 2, page(data) - PAGE, page(data) + PAGE,
               page(data) + page(index), 2 * (data + index)]
    latest_number, failures, outcomes = 1, [], []
    for number, leave in enumerate(budgets, start=2):
        values = _perturb(smoke_parts, seed=number)
        small_disk.fill(leave)
        try:
            manager.save(checkpoint_number=number)
        except (tf.errors.OpError, OSError) as error:
            assert NO_SPACE in str(error), f"unclear error for a full disk: {error}"
            failures.append(number)
            outcomes.append(f"{leave} B free: failed")
        else:
            saved[number], latest_number = values, number
            outcomes.append(f"{leave} B free: saved")
        small_disk.unfill()
        latest = tf.train.latest_checkpoint(str(directory))
        assert latest == str(directory / f"ckpt-{latest_number}"), (leave, latest)
        _check_restores(smoke_parts, latest, saved[latest_number])
    print(f"[{small_disk.mode}] checkpoint trials: " + "; ".join(outcomes))
    assert failures and failures[0] == 2 and latest_number == len(budgets) + 1

    # What failed saves leave behind, measured on tmpfs (TF 2.21), none of it ever removed by
    # TF: a `ckpt-N_temp` folder per failure, holding the whole data file when only the
    # index did not fit; and when the merged index did not fit, `ckpt-N.data-*` moved into
    # place beside a zero-byte `ckpt-N.index`. The `checkpoint` pointer never names them, so
    # a resume is safe, but their space stays used.
    kept = {"checkpoint", f"ckpt-{latest_number}.index",
            f"ckpt-{latest_number}.data-00000-of-00001"}
    leftovers = {p.relative_to(directory).as_posix(): p.stat().st_size
                 for p in sorted(directory.rglob("*")) if p.name not in kept}
    print(f"[{small_disk.mode}] leftovers: {leftovers}")
    failed_names = {f"ckpt-{n}" for n in failures}
    for name in leftovers:
        assert name.split("/")[0].split("_temp")[0].split(".")[0] in failed_names, name
    pointer = (directory / "checkpoint").read_text()
    assert not any(name.split(".")[0] in pointer for name in leftovers if "_temp" not in name)


@pytest.mark.fault
def test_checkpoint_every_stops_training_with_the_checkpoint_to_resume_from(small_disk,
                                                                           smoke_parts):
    from vec2face_tf.models import dibigan
    from vec2face_tf.training.trainer import CheckpointEvery, TrainingError

    directory = small_disk.root / "checkpoints"
    manager = tf.train.CheckpointManager(dibigan.checkpoint_for(smoke_parts), str(directory),
                                         max_to_keep=3)
    step = tf.Variable(0, dtype=tf.int64)
    callback = CheckpointEvery(manager, step, every=2, offset=100)
    first = _perturb(smoke_parts, seed=1)
    step.assign(2)
    callback.on_train_batch_end(0)
    _perturb(smoke_parts, seed=2)
    step.assign(4)
    small_disk.fill(PAGE)
    with pytest.raises(TrainingError) as raised:
        callback.on_train_batch_end(1)
    message = str(raised.value)
    print(f"[{small_disk.mode}] CheckpointEvery on a full disk: {message}")
    assert message.startswith(f"could not write checkpoint 104 in {directory}: no space left "
                              "on the device (")
    assert "{{function_node" not in message and "tempstate" not in message
    # The one the rerun resumes from, and no debris of the failed write.
    assert f"the last complete checkpoint is {directory / 'ckpt-102'} and a rerun" in message
    assert not list(directory.glob("ckpt-104*"))
    small_disk.unfill()
    assert tf.train.latest_checkpoint(str(directory)) == str(directory / "ckpt-102")
    _check_restores(smoke_parts, str(directory / "ckpt-102"), first)

    third = _perturb(smoke_parts, seed=3)
    step.assign(6)
    callback.on_train_batch_end(2)  # Space again: training goes on checkpointing.
    assert tf.train.latest_checkpoint(str(directory)) == str(directory / "ckpt-106")
    _check_restores(smoke_parts, str(directory / "ckpt-106"), third)


# ----- (b) the export -----

@pytest.fixture(scope="module")
def smoke_generator(smoke_run):
    from vec2face_tf.export import savedmodel

    return savedmodel.load_run(smoke_run)


def _serve(version_dir: pathlib.Path, embedding: np.ndarray) -> np.ndarray:
    loaded = tf.saved_model.load(str(version_dir))
    return loaded.signatures["serving_default"](embedding=tf.constant(embedding))["image"].numpy()


def _check_published(model_base: pathlib.Path, versions: list[int]) -> None:
    """Exactly ``versions`` are visible, each complete, and no staging folder is left."""
    from vec2face_tf.export import savedmodel

    assert savedmodel.existing_versions(model_base) == versions
    for version in versions:
        folder = model_base / str(version)
        assert (folder / "saved_model.pb").is_file()
        assert (folder / "variables" / "variables.index").is_file()
        assert (folder / "assets" / savedmodel.METADATA_FILE).is_file()
    hidden = [p.name for p in model_base.parent.rglob(".*")]
    assert not hidden, f"staging left behind: {hidden}"


@pytest.mark.fault
def test_an_export_on_a_full_disk_publishes_nothing_and_keeps_the_previous_version(
        small_disk, smoke_run, smoke_generator):
    from vec2face_tf.export import exporter, savedmodel

    generator, metadata = smoke_generator
    base = small_disk.root / "exports"
    model_base = base / "smoke"
    savedmodel.write_savedmodel(generator, metadata, base, "smoke")
    embedding = np.random.default_rng(0).standard_normal((3, 128)).astype(np.float32)
    first_output = _serve(model_base / "1", embedding)
    first_files = file_digests(model_base / "1")
    config_text = (base / savedmodel.MODELS_CONFIG_FILE).read_bytes()
    pages = {name: -(-(model_base / "1" / name).stat().st_size // PAGE) * PAGE
             for name in first_files}
    variables = pages["variables/variables.data-00000-of-00001"]
    all_but_metadata = sum(pages.values()) - pages[f"assets/{savedmodel.METADATA_FILE}"]

    # The variables fit, saved_model.pb does not (TF's C++ writer).
    small_disk.fill(variables + 64 * 1024)
    with pytest.raises(savedmodel.ExportError, match="no space left on the device") as raised:
        exporter.export(smoke_run, base, "smoke", formats="savedmodel")
    print(f"[{small_disk.mode}] exporter.export on a full disk: {raised.value}")
    assert str(model_base / "2") in str(raised.value)
    small_disk.unfill()
    _check_published(model_base, [1])
    assert (base / savedmodel.MODELS_CONFIG_FILE).read_bytes() == config_text

    # Everything but vec2face.json fits (Python's write path); then enough.
    versions, outcomes = [1], []
    for leave in (all_but_metadata, 2 * sum(pages.values())):
        small_disk.fill(leave)
        try:
            exported = savedmodel.write_savedmodel(generator, metadata, base, "smoke")
        except savedmodel.ExportError as error:
            assert "no space left on the device" in str(error)
            cause = error.__cause__
            outcomes.append(f"{leave} B free: failed ({type(cause).__name__}: "
                            f"...{str(cause)[-70:]})")
        else:
            versions.append(exported.version)
            outcomes.append(f"{leave} B free: version {exported.version}")
        small_disk.unfill()
        _check_published(model_base, versions)
        assert (base / savedmodel.MODELS_CONFIG_FILE).read_bytes() == config_text
    print(f"[{small_disk.mode}] export trials: " + "; ".join(outcomes))
    # The last budget fits, and failures used up no version number.
    assert versions[-1] == len(versions) > 1

    assert file_digests(model_base / "1") == first_files
    np.testing.assert_array_equal(_serve(model_base / "1", embedding), first_output)
    np.testing.assert_array_equal(_serve(model_base / str(versions[-1]), embedding),
                                  first_output)


@pytest.mark.fault
def test_models_config_on_a_full_disk_is_left_as_it_was(small_disk):
    from vec2face_tf.export import savedmodel

    base = small_disk.root / "exports"

    def add_version(model: str, version: int) -> None:
        (base / model / str(version)).mkdir(parents=True)
        (base / model / str(version) / "saved_model.pb").write_bytes(b"")  # What listing reads.

    add_version("first", 1)
    before = savedmodel.write_models_config(base)
    add_version("first", 2)
    small_disk.fill(0)
    assert savedmodel.write_models_config(base) == before  # Nothing to write: cannot fail.
    small_disk.unfill()
    add_version("second", 1)
    small_disk.fill(0)
    with pytest.raises(savedmodel.ExportError, match="could not be updated: no space left"):
        savedmodel.write_models_config(base)
    small_disk.unfill()
    assert (base / savedmodel.MODELS_CONFIG_FILE).read_text() == before
    assert sorted(p.name for p in base.iterdir()) == ["first", "models.config", "second"]
    assert '"second"' in savedmodel.write_models_config(base)


@pytest.mark.fault
def test_a_tflite_file_on_a_full_disk_publishes_nothing(small_disk, smoke_export):
    from vec2face_tf.export import savedmodel, tflite

    out_dir = small_disk.root / "smoke" / "tflite" / "1"
    small_disk.fill(PAGE)
    with pytest.raises(savedmodel.ExportError, match="no space left on the device") as raised:
        tflite.write_tflite(smoke_export.path, out_dir, variants=["float32"])
    print(f"[{small_disk.mode}] write_tflite on a full disk: {raised.value}")
    small_disk.unfill()
    assert not out_dir.exists() and not list(out_dir.parent.iterdir())  # No staging either.
    files = tflite.write_tflite(smoke_export.path, out_dir, variants=["float32"])
    assert files["float32"].stat().st_size > 100_000


# ----- (c) the embedding cache -----

def _faces(start: int, count: int, size: int, dim: int):
    from vec2face_tf.data.cache import FaceEntry, content_hash

    rng = np.random.default_rng(start)
    entries = []
    for index in range(start, start + count):
        vector = rng.standard_normal(dim).astype(np.float32)
        entries.append(FaceEntry(content_hash(f"photo {index}".encode()), f"p{index % 5}/{index}",
                                 f"p{index % 5}", rng.integers(0, 256, (size, size, 3), np.uint8),
                                 vector / np.linalg.norm(vector)))
    return entries


@pytest.mark.fault
def test_a_cache_shard_on_a_full_disk_fails_clearly_and_keeps_the_earlier_shards(small_disk):
    from vec2face_tf.config import CropSpec
    from vec2face_tf.data.cache import CacheError, EmbeddingCache

    crop, dim, per_shard = CropSpec(size=64), 8, 20
    cache = EmbeddingCache(small_disk.root / "cache", "fake:engine", crop, dim=dim)
    cache.write_meta()
    for shard in range(2):
        cache.write_shard(_faces(shard * per_shard, per_shard, 64, dim), [])
    before = file_digests(cache.directory)
    shard_size = cache.shard_paths()[0].stat().st_size
    outcomes = []
    for leave in (0, PAGE, shard_size // 2, shard_size - 2 * PAGE):
        small_disk.fill(leave)
        with pytest.raises(CacheError, match="no space left on the device") as raised:
            cache.write_shard(_faces(2 * per_shard, per_shard, 64, dim), [])
        small_disk.unfill()
        outcomes.append(f"{leave} B free: failed")
        assert "shard-00002.npz" in str(raised.value)
        assert file_digests(cache.directory) == before  # No *.tmp, nothing changed.
        report = cache.verify()
        assert report.ok and report.shards == 2 and report.faces == 2 * per_shard
    print(f"[{small_disk.mode}] shard trials: " + "; ".join(outcomes)
          + f"\n[{small_disk.mode}] message: {raised.value}")
    small_disk.fill(2 * shard_size)
    cache.write_shard(_faces(2 * per_shard, per_shard, 64, dim), [])
    small_disk.unfill()
    assert cache.verify().faces == 3 * per_shard and not list(cache.directory.glob("*.tmp"))


@pytest.mark.fault
def test_prepare_on_a_full_disk_stops_clearly_and_the_rerun_resumes(small_disk, faces_dev,
                                                                     tmp_path):
    pytest.importorskip("dlib")
    from vec2face_tf.data.cache import CacheError, EmbeddingCache
    from vec2face_tf.data.prepare import prepare
    from vec2face_tf.data.sources import FolderSource

    data = tmp_path / "data"
    keys = []
    for record in FolderSource(faces_dev).records():
        if len(keys) == 8:
            break
        (data / record.identity).mkdir(parents=True, exist_ok=True)
        (data / record.key).symlink_to(record.path)
        keys.append(record.key)
    cache_dir = small_disk.root / "cache"
    shard_bytes = 2 * 150 * 150 * 3  # Two aligned crops per shard.
    small_disk.fill(3 * shard_bytes)
    with pytest.raises(CacheError, match="no space left on the device") as raised:
        prepare(str(data), "dlib", cache_dir, workers=0, batch_size=2, shard_size=2,
                progress=False)
    print(f"[{small_disk.mode}] prepare on a full disk: {raised.value}")
    small_disk.unfill()
    cache = EmbeddingCache(cache_dir, "dlib")
    written = cache.shard_paths()
    assert 1 <= len(written) <= 3 and not list(cache.directory.glob("*.tmp"))
    report = cache.verify()
    assert report.ok and report.faces == 2 * len(written)

    resumed = prepare(str(data), "dlib", cache_dir, workers=0, batch_size=2, shard_size=2,
                      progress=False)
    assert resumed.already_cached == 2 * len(written)
    assert resumed.embedded == 8 - 2 * len(written) and resumed.skipped == {}
    assert sorted(cache.load().keys.tolist()) == sorted(keys)  # Each photo exactly once.
    assert cache.verify().ok
