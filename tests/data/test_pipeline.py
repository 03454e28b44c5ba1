"""P x K tf.data pipeline: values, structure, determinism, identity splits, replica slices."""

import numpy as np
import pytest
import tensorflow as tf

from vec2face_tf.config import CropSpec
from vec2face_tf.data.cache import EmbeddingCache, FaceEntry
from vec2face_tf.data.pipeline import (
    Faces,
    load_faces,
    load_views,
    make_dataset,
    make_distillation_dataset,
    resize_faces,
    split_by_identity,
)

# Identity i has COUNTS[i] photos; identity 3 has fewer than K=3 (sampled with replacement).
COUNTS = [5, 4, 3, 2, 6, 3]
DIM = 8


def synthetic_faces(size: int = 8) -> Faces:
    labels = np.repeat(np.arange(len(COUNTS)), COUNTS).astype(np.int32)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(len(labels), DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    # Each crop's pixels encode its row, so a batch can be traced back to the rows it used.
    crops = np.broadcast_to(np.arange(len(labels), dtype=np.uint8)[:, None, None, None] * 7,
                            (len(labels), size, size, 3)).copy()
    return Faces(crops=crops, embeddings=vectors, labels=labels,
                 identity_names=np.array([f"person{i}" for i in range(len(COUNTS))]),
                 hashes=np.array([f"{i:064x}" for i in range(len(labels))]))


def batches(dataset, count):
    return [tuple(t.numpy() for t in element) for element in dataset.take(count)]


def rows_of(images):
    return np.round((images[:, 0, 0, 0] + 1) * 127.5 / 7).astype(int)


def test_batches_have_p_identities_with_k_images_each():
    faces = synthetic_faces()
    for images, embeddings, identities in batches(make_dataset(faces, 8, 4, 3, seed=1), 20):
        assert images.shape == (12, 8, 8, 3) and images.dtype == np.float32
        assert embeddings.shape == (12, DIM) and identities.dtype == np.int32
        assert images.min() >= -1 and images.max() <= 1
        np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1, atol=1e-6)
        blocks = identities.reshape(4, 3)
        assert np.all(blocks == blocks[:, :1]) and len(set(blocks[:, 0])) == 4
        rows = rows_of(images)
        np.testing.assert_array_equal(faces.labels[rows], identities)
        np.testing.assert_array_equal(faces.embeddings[rows], embeddings)
        for block, identity in zip(rows.reshape(4, 3), blocks[:, 0]):
            if COUNTS[identity] >= 3:
                assert len(set(block)) == 3  # Without replacement where possible.


def test_small_identities_are_sampled_with_replacement():
    faces = synthetic_faces()
    seen_small = 0
    for images, _, identities in batches(make_dataset(faces, 8, 6, 3, seed=0), 10):
        block = rows_of(images).reshape(6, 3)[list(identities[::3]).index(3)]
        assert set(block) <= {12, 13}  # The two photos of identity 3 (after 5 + 4 + 3 rows).
        seen_small += 1
    assert seen_small == 10


def test_same_seed_same_batches_other_seed_different():
    faces = synthetic_faces()
    first = batches(make_dataset(faces, 8, 4, 2, seed=3), 5)
    again = batches(make_dataset(faces, 8, 4, 2, seed=3), 5)
    other = batches(make_dataset(faces, 8, 4, 2, seed=4), 5)
    for a, b in zip(first, again):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(a[2], b[2]) for a, b in zip(first, other))
    assert not np.array_equal(first[0][2], first[1][2])  # Steps differ too.


def test_a_dataset_started_at_step_s_yields_the_batches_of_steps_s_and_on():
    faces = synthetic_faces()
    from_zero = batches(make_dataset(faces, 8, 4, 2, seed=3), 7)
    from_five = batches(make_dataset(faces, 8, 4, 2, seed=3, start_step=5), 2)
    for a, b in zip(from_zero[5:], from_five, strict=True):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="start_step must be >= 0, got -1"):
        make_dataset(faces, 8, 4, 2, start_step=-1)


def test_resolution_is_applied_once_with_area_filter():
    faces = synthetic_faces(size=8)
    small = resize_faces(faces, 4)
    assert small.crops.shape[1:] == (4, 4, 3)
    np.testing.assert_array_equal(small.crops[:, 0, 0, 0], faces.crops[:, 0, 0, 0])
    images, _, _ = batches(make_dataset(faces, 4, 2, 2), 1)[0]
    assert images.shape == (4, 4, 4, 3)


def test_split_by_identity_is_disjoint_and_complete():
    faces = synthetic_faces()
    train, held_out = split_by_identity(faces, 2, seed=0)
    assert held_out.num_identities == 2 and train.num_identities == 4
    assert not set(train.identity_names) & set(held_out.identity_names)
    assert len(train) + len(held_out) == len(faces)
    assert not set(train.hashes) & set(held_out.hashes)
    for part in (train, held_out):
        names = part.identity_names[part.labels]
        original = dict(zip(faces.hashes, faces.identity_names[faces.labels]))
        assert all(original[h] == n for h, n in zip(part.hashes, names))
    again, _ = split_by_identity(faces, 2, seed=0)
    other, _ = split_by_identity(faces, 2, seed=5)
    assert list(again.identity_names) == list(train.identity_names)
    assert list(other.identity_names) != list(train.identity_names)
    with pytest.raises(ValueError, match="holdout_identities"):
        split_by_identity(faces, 6)


class FakeContext:
    """What distribute_datasets_from_function passes: pipeline i of M, R replicas in sync."""

    def __init__(self, num_input_pipelines, input_pipeline_id, num_replicas_in_sync):
        self.num_input_pipelines = num_input_pipelines
        self.input_pipeline_id = input_pipeline_id
        self.num_replicas_in_sync = num_replicas_in_sync


def test_each_input_pipeline_yields_its_replicas_slices_in_order():
    faces = synthetic_faces()
    global_batches = batches(make_dataset(faces, 8, 4, 2, seed=7), 3)
    # 4 replicas over 2 pipelines: pipeline 1 serves replicas 2 and 3 (one identity each).
    local = batches(make_dataset(faces, 8, 4, 2, seed=7, input_context=FakeContext(2, 1, 4)), 6)
    for step, whole in enumerate(global_batches):
        for replica in (2, 3):
            element = local[2 * step + (replica - 2)]
            for part, full in zip(element, whole):
                np.testing.assert_array_equal(part, full[replica * 2:(replica + 1) * 2])


def test_bad_sampling_arguments_are_refused():
    faces = synthetic_faces()
    with pytest.raises(ValueError, match="cannot be split into 3 replicas"):
        make_dataset(faces, 8, 4, 2, input_context=FakeContext(1, 0, 3))
    with pytest.raises(ValueError, match="only 6 identities"):
        make_dataset(faces, 8, 7, 2)
    with pytest.raises(ValueError, match="must be >= 1"):
        make_dataset(faces, 8, 2, 0)


def test_load_faces_from_a_cache(tmp_path):
    crop = CropSpec(size=12)
    cache = EmbeddingCache(tmp_path, "fake", crop, dim=2)
    cache.write_meta()
    entries = [FaceEntry(f"{i:064x}", f"{name}/{i}.jpg", name,
                         np.full((12, 12, 3), 10 * i, np.uint8),
                         np.array([np.cos(i), np.sin(i)], np.float32))
               for i, name in enumerate(["zoe", "adam", "zoe", "bea", "adam"])]
    cache.write_shard(entries[:3], [])
    cache.write_shard(entries[3:], [])
    faces = load_faces(tmp_path, "fake", crop)
    assert list(faces.identity_names) == ["adam", "bea", "zoe"]
    np.testing.assert_array_equal(faces.labels, [0, 0, 1, 2, 2])
    np.testing.assert_array_equal(faces.crops[:, 0, 0, 0], [10, 40, 30, 0, 20])
    assert faces.crops.shape == (5, 12, 12, 3) and faces.embeddings.dtype == np.float32
    kept = load_faces(tmp_path, "fake", crop, resolution=6, min_images_per_identity=2)
    assert list(kept.identity_names) == ["adam", "zoe"] and kept.crops.shape == (4, 6, 6, 3)
    with pytest.raises(ValueError, match="no identity"):
        load_faces(tmp_path, "fake", crop, min_images_per_identity=3)


def test_dataset_is_infinite_and_graph_friendly():
    dataset = make_dataset(synthetic_faces(), 8, 2, 2)
    assert dataset.cardinality() == tf.data.INFINITE_CARDINALITY
    spec = dataset.element_spec
    assert spec[0].shape == (4, 8, 8, 3) and spec[1].shape == (4, DIM) and spec[2].shape == (4,)


def _distillation_data(count=10):
    crops = np.broadcast_to(np.arange(count, dtype=np.uint8)[:, None, None, None] * 7,
                            (count, 4, 4, 3)).copy()
    vectors = np.eye(count, DIM, dtype=np.float32) + 0.1
    return crops, vectors


def test_distillation_batches_read_every_example_once_per_epoch():
    crops, vectors = _distillation_data(10)
    # 4 per batch over 10 examples: steps 0-4 are exactly two epochs.
    read = batches(make_distillation_dataset(crops, vectors, 4, seed=3), 5)
    rows = np.concatenate([rows_of(images) for images, _ in read])
    assert sorted(rows[:10]) == list(range(10)) and sorted(rows[10:]) == list(range(10))
    assert list(rows[:10]) != list(rows[10:])  # a fresh order each epoch
    for images, embeddings in read:
        assert images.dtype == np.float32 and images.min() >= -1 and images.max() <= 1
        np.testing.assert_array_equal(embeddings, vectors[rows_of(images)])


def test_distillation_batches_are_a_function_of_seed_and_step():
    crops, vectors = _distillation_data(10)
    whole = batches(make_distillation_dataset(crops, vectors, 4, seed=3), 6)
    resumed = batches(make_distillation_dataset(crops, vectors, 4, seed=3, start_step=4), 2)
    for a, b in zip(whole[4:], resumed):
        np.testing.assert_array_equal(a[0], b[0])
    other = batches(make_distillation_dataset(crops, vectors, 4, seed=4), 1)
    assert list(rows_of(other[0][0])) != list(rows_of(whole[0][0]))
    # Two replicas on one pipeline: consecutive halves of each global batch.
    local = batches(make_distillation_dataset(crops, vectors, 4, seed=3,
                                              input_context=FakeContext(1, 0, 2)), 4)
    for step in range(2):
        for replica in range(2):
            np.testing.assert_array_equal(local[2 * step + replica][0],
                                          whole[step][0][2 * replica:2 * replica + 2])


def test_bad_distillation_arguments_are_refused():
    crops, vectors = _distillation_data(4)
    with pytest.raises(ValueError, match="as many vectors as faces"):
        make_distillation_dataset(crops, vectors[:3], 2)
    with pytest.raises(ValueError, match="larger than the 4 faces"):
        make_distillation_dataset(crops, vectors, 8)
    with pytest.raises(ValueError, match="multiple of the 3 replicas"):
        make_distillation_dataset(crops, vectors, 4, input_context=FakeContext(1, 0, 3))


def test_load_views_reads_the_views_table_and_keeps_the_first_views(tmp_path):
    from vec2face_tf.data.views import VIEWS_TABLE, view_key

    crop = CropSpec(size=12)
    assert len(load_views(tmp_path, "fake", crop)) == 0  # none prepared yet
    cache = EmbeddingCache(tmp_path, "fake", crop, dim=2, table=VIEWS_TABLE)
    cache.write_meta()
    cache.write_shard([FaceEntry(f"{i:064x}", view_key(f"bea/{i // 3}.jpg", 1 + i % 3), "bea",
                                 np.full((12, 12, 3), i, np.uint8),
                                 np.array([1.0, 0.0], np.float32)) for i in range(6)], [])
    assert len(load_views(tmp_path, "fake", crop)) == 6
    first_two = load_views(tmp_path, "fake", crop, resolution=6, max_view=2)
    assert len(first_two) == 4 and first_two.crops.shape == (4, 6, 6, 3)
    assert list(first_two.identity_names) == ["bea"]
    # The photos' own table is a different folder: it does not see the views.
    with pytest.raises(Exception, match="no shards"):
        load_faces(tmp_path, "fake", crop)
