"""The embedding cache: round trips, atomic shards, no pickle, lock, integrity checks."""

import dataclasses
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from vec2face_tf.config import CropSpec
from vec2face_tf.data.cache import (
    CacheError,
    EmbeddingCache,
    FaceEntry,
    SkipEntry,
    content_hash,
    engine_slug,
)

CROP = CropSpec(size=16)
DIM = 4


def face(index: int, identity: str = "alice") -> FaceEntry:
    vector = np.zeros(DIM, np.float32)
    vector[index % DIM] = 1.0
    return FaceEntry(hash=content_hash(f"photo {index}".encode()), key=f"{identity}/{index}.jpg",
                     identity=identity, crop=np.full((16, 16, 3), index, np.uint8),
                     embedding=vector)


def new_cache(tmp_path, engine="fake:model/v1") -> EmbeddingCache:
    cache = EmbeddingCache(tmp_path, engine, CROP, dim=DIM)
    cache.write_meta()
    return cache


def test_content_hash_is_sha256_of_the_bytes():
    assert content_hash(b"abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")


def test_engine_slug_is_a_safe_folder_name_that_separates_engines():
    slug = engine_slug("savedmodel:/models/x")
    assert "/" not in slug and ":" not in slug
    assert slug != engine_slug("savedmodel:/models/y")


def test_round_trip_of_faces_and_skips(tmp_path):
    cache = new_cache(tmp_path)
    cache.write_shard([face(0), face(1, "bob")],
                      [SkipEntry("h" * 64, "carol/x.jpg", "carol", "no_face")])
    cache.write_shard([face(2)], [])
    contents = cache.load()
    assert contents.keys.tolist() == ["alice/0.jpg", "bob/1.jpg", "alice/2.jpg"]
    assert contents.identities.tolist() == ["alice", "bob", "alice"]
    np.testing.assert_array_equal(contents.crops[:, 0, 0, 0], [0, 1, 2])
    np.testing.assert_array_equal(contents.embeddings[2], [0, 0, 1, 0])
    assert contents.skip_reasons.tolist() == ["no_face"]
    assert cache.reason_counts() == {"no_face": 1}
    face_hashes, skipped = cache.index()
    assert face_hashes[face(1).hash] == "bob/1.jpg"
    assert skipped == {"carol/x.jpg": "no_face"}


def test_shards_are_plain_npz_without_pickle(tmp_path):
    cache = new_cache(tmp_path)
    path = cache.write_shard([face(0)], [SkipEntry("", "a/b.jpg", "a", "unreadable")])
    with np.load(path, allow_pickle=False) as shard:
        for name in shard.files:
            assert shard[name].dtype != object, name
        assert shard["keys"].dtype.kind == "U"
    with zipfile.ZipFile(path) as archive:
        assert all(name.endswith(".npy") for name in archive.namelist())


def test_partial_shards_are_never_read_and_are_removed_under_the_lock(tmp_path):
    cache = new_cache(tmp_path)
    cache.write_shard([face(0)], [])
    # What a run killed in the middle of np.savez leaves behind.
    partial = cache.directory / "shard-00001.npz.123.tmp"
    partial.write_bytes(b"PK\x03\x04 half a zip")
    assert [p.name for p in cache.shard_paths()] == ["shard-00000.npz"]
    assert len(cache.load().hashes) == 1
    with cache.lock():
        assert not partial.exists()
    assert cache.verify().ok


def test_write_shard_leaves_no_temporary_file(tmp_path):
    cache = new_cache(tmp_path)
    cache.write_shard([face(0)], [])
    cache.write_shard([face(1)], [])
    assert sorted(p.name for p in cache.directory.iterdir()) == [
        "meta.json", "shard-00000.npz", "shard-00001.npz"]


def test_wrong_crop_or_vector_shape_is_refused(tmp_path):
    cache = new_cache(tmp_path)
    with pytest.raises(CacheError, match="crop of"):
        cache.write_shard([dataclasses.replace(face(0), crop=np.zeros((8, 8, 3), np.uint8))], [])
    with pytest.raises(CacheError, match="vector of"):
        cache.write_shard([dataclasses.replace(face(0), embedding=np.ones(3, np.float32))], [])
    assert cache.shard_paths() == []


def test_meta_mismatch_is_refused(tmp_path):
    new_cache(tmp_path)
    with pytest.raises(CacheError, match="-D vectors"):
        EmbeddingCache(tmp_path, "fake:model/v1", CROP, dim=DIM + 1)


def test_empty_cache_load_names_the_fix(tmp_path):
    with pytest.raises(CacheError, match="no shards; run vec2face-prepare"):
        EmbeddingCache(tmp_path, "dlib", CROP).load()


_TRY_LOCK = """
import sys
from vec2face_tf.config import CropSpec
from vec2face_tf.data.cache import CacheError, EmbeddingCache
try:
    with EmbeddingCache(sys.argv[1], "fake:model/v1", CropSpec(size=16)).lock():
        print("acquired")
except CacheError as error:
    print(error)
"""


def try_lock_elsewhere(cache_dir) -> str:
    """Tries the lock from another process (flock locks are per open file, across processes)."""
    return subprocess.run([sys.executable, "-c", _TRY_LOCK, str(cache_dir)], capture_output=True,
                          text=True, check=True, timeout=60).stdout.strip()


def test_lock_refuses_a_second_run_with_a_clear_message(tmp_path):
    cache = new_cache(tmp_path)
    with cache.lock():
        message = try_lock_elsewhere(tmp_path)
    assert "locked by another prepare run" in message and f"pid {os.getpid()}" in message
    assert try_lock_elsewhere(tmp_path) == "acquired"


def test_verify_finds_duplicates_changed_files_and_bad_shards(tmp_path):
    source = tmp_path / "src"
    (source / "alice").mkdir(parents=True)
    photo = source / "alice" / "0.jpg"
    photo.write_bytes(b"photo 0")
    cache = EmbeddingCache(tmp_path / "cache", "fake", CROP, dim=DIM)
    cache.write_meta(source_root=str(source))
    entry = dataclasses.replace(face(0), key="alice/0.jpg")
    cache.write_shard([entry], [])
    report = cache.verify()
    assert report.ok and report.checked_files == 1 and report.faces == 1

    photo.write_bytes(b"edited")
    cache.write_shard([entry], [])
    (cache.directory / "shard-00002.npz").write_bytes(b"not a zip")
    problems = cache.verify().problems
    assert sum("changed on disk" in p for p in problems) == 2
    assert sum("already stored" in p for p in problems) == 1
    assert sum("unreadable" in p for p in problems) == 1

    photo.unlink()
    report = cache.verify()
    assert report.missing_files == 2 and report.checked_files == 0
