"""tf.data pipelines over the embedding cache, with P x K identity sampling.

Every global batch holds P identities with K photos each (identity-major: rows
``[p*K:(p+1)*K]`` are identity p). It is a pure function of ``(seed, step)``, computed with
stateless random ops, so it is the same for any number of replicas: with R replicas, replica
r receives identities ``[r*P/R, (r+1)*P/R)`` of that global batch. Identities with fewer than
K photos are sampled with replacement; the others without.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow as tf

from vec2face_tf.config import CropSpec
from vec2face_tf.data.cache import DEFAULT_CROP, EmbeddingCache
from vec2face_tf.data.views import VIEWS_TABLE

_RESIZE_CHUNK = 512  # Crops resized per call, to bound the float32 working memory.


@dataclasses.dataclass(frozen=True)
class Faces:
    """Aligned faces with their engine vectors.

    Attributes:
      crops: uint8[N, S, S, 3] RGB aligned crops.
      embeddings: float32[N, D] unit vectors.
      labels: int32[N], indices into ``identity_names``.
      identity_names: str[num_identities], sorted.
      hashes: str[N] content hashes (the cache keys).
    """

    crops: np.ndarray
    embeddings: np.ndarray
    labels: np.ndarray
    identity_names: np.ndarray
    hashes: np.ndarray

    def __len__(self) -> int:
        return int(self.crops.shape[0])

    @property
    def num_identities(self) -> int:
        return int(self.identity_names.shape[0])

    @property
    def resolution(self) -> int:
        return int(self.crops.shape[1])


def load_faces(cache_dir: str | os.PathLike, engine_name: str, crop: CropSpec = DEFAULT_CROP,
               resolution: int | None = None, min_images_per_identity: int = 1) -> Faces:
    """Loads the cached faces of one engine and crop.

    Args:
      cache_dir: the cache root given to ``prepare``.
      engine_name: ``Engine.name`` of the engine.
      crop: the crop spec the cache was built with.
      resolution: resize the crops to this size once, here (None keeps the crop size).
      min_images_per_identity: drop identities with fewer photos.

    Returns:
      Faces sorted by identity name, then content hash.

    Raises:
      CacheError: for a missing or unreadable cache.
      ValueError: when no identity has ``min_images_per_identity`` photos.
    """
    contents = EmbeddingCache(cache_dir, engine_name, crop).load()
    names, labels, counts = np.unique(contents.identities, return_inverse=True,
                                      return_counts=True)
    keep = counts[labels] >= min_images_per_identity
    if not np.any(keep):
        raise ValueError(f"no identity in the cache has >= {min_images_per_identity} photos "
                         f"({len(contents.hashes)} faces, {len(names)} identities)")
    order = np.lexsort((contents.hashes[keep], contents.identities[keep]))
    kept = np.flatnonzero(keep)[order]
    faces = _relabel(contents.crops[kept], contents.embeddings[kept],
                     contents.identities[kept], contents.hashes[kept])
    return resize_faces(faces, resolution) if resolution else faces


def _relabel(crops, embeddings, identities, hashes) -> Faces:
    names, labels = np.unique(identities, return_inverse=True)
    return Faces(crops=crops, embeddings=embeddings.astype(np.float32),
                 labels=labels.astype(np.int32), identity_names=names, hashes=hashes)


def resize_faces(faces: Faces, resolution: int) -> Faces:
    """Returns ``faces`` with crops resized (area filter) to resolution x resolution."""
    if resolution < 1:
        raise ValueError(f"resolution must be >= 1, got {resolution}")
    if faces.resolution == resolution:
        return faces
    resized = []
    for start in range(0, len(faces), _RESIZE_CHUNK):
        chunk = tf.image.resize(faces.crops[start:start + _RESIZE_CHUNK],
                                (resolution, resolution), method="area", antialias=True)
        resized.append(tf.cast(tf.round(tf.clip_by_value(chunk, 0, 255)), tf.uint8).numpy())
    crops = (np.concatenate(resized) if resized
             else np.zeros((0, resolution, resolution, 3), np.uint8))
    return dataclasses.replace(faces, crops=crops)


def load_views(cache_dir: str | os.PathLike, engine_name: str, crop: CropSpec = DEFAULT_CROP,
               resolution: int | None = None, max_view: int | None = None) -> Faces:
    """Loads the cached augmented views (``prepare --views``) of one engine and crop.

    Args:
      cache_dir, engine_name, crop, resolution: as ``load_faces``.
      max_view: keep views 1..max_view of each photo (None: all that are cached).

    Returns:
      Faces whose identities are their photos' identities (an empty Faces when no view is
      cached).
    """
    cache = EmbeddingCache(cache_dir, engine_name, crop, table=VIEWS_TABLE)
    if not cache.shard_paths():
        size = resolution or crop.size
        return _relabel(np.zeros((0, size, size, 3), np.uint8),
                        np.zeros((0, cache.dim or 0), np.float32), np.zeros((0,), "<U1"),
                        np.zeros((0,), "<U1"))
    contents = cache.load()
    keep = np.ones(len(contents.keys), bool)
    if max_view is not None:
        indices = np.array([int(key.rsplit("#view", 1)[1]) for key in contents.keys.tolist()])
        keep = indices <= max_view
    faces = _relabel(contents.crops[keep], contents.embeddings[keep],
                     contents.identities[keep], contents.hashes[keep])
    return resize_faces(faces, resolution) if resolution else faces


def subset_identities(faces: Faces, identity_indices: np.ndarray) -> Faces:
    """Faces of the given identities only, relabelled 0..n-1 in name order."""
    rows = np.flatnonzero(np.isin(faces.labels, identity_indices))
    return _relabel(faces.crops[rows], faces.embeddings[rows],
                    faces.identity_names[faces.labels[rows]], faces.hashes[rows])


def split_by_identity(faces: Faces, holdout_identities: int, seed: int = 0
                      ) -> tuple[Faces, Faces]:
    """Splits into training and held-out faces with disjoint identities.

    Args:
      faces: the faces to split.
      holdout_identities: how many identities (chosen at random) to hold out.
      seed: the random seed of the choice.

    Returns:
      (train, held_out), each relabelled 0..n-1.

    Raises:
      ValueError: unless 0 < holdout_identities < faces.num_identities.
    """
    if not 0 < holdout_identities < faces.num_identities:
        raise ValueError(f"holdout_identities must be in (0, {faces.num_identities}) for "
                         f"{faces.num_identities} identities, got {holdout_identities}")
    permutation = np.random.default_rng(seed).permutation(faces.num_identities)
    held_out = np.sort(permutation[:holdout_identities])
    train = np.sort(permutation[holdout_identities:])
    return subset_identities(faces, train), subset_identities(faces, held_out)


def _check_sampling(faces: Faces, identities_per_batch: int, images_per_identity: int,
                    num_replicas: int) -> None:
    if identities_per_batch < 1 or images_per_identity < 1:
        raise ValueError(f"identities_per_batch (P) and images_per_identity (K) must be >= 1, "
                         f"got P={identities_per_batch}, K={images_per_identity}")
    if identities_per_batch > faces.num_identities:
        raise ValueError(f"P={identities_per_batch} identities per batch, but the faces hold "
                         f"only {faces.num_identities} identities")
    if identities_per_batch % num_replicas:
        raise ValueError(f"P={identities_per_batch} identities per batch cannot be split "
                         f"into {num_replicas} replicas with whole identities; choose P a "
                         f"multiple of {num_replicas}")


def _image_table(faces: Faces) -> tuple[np.ndarray, np.ndarray]:
    """[num_identities, max_count] row indices per identity (padded with 0) and counts."""
    counts = np.bincount(faces.labels, minlength=faces.num_identities)
    if np.any(counts == 0):
        raise ValueError("every identity name must have at least one face")
    table = np.zeros((faces.num_identities, int(counts.max())), np.int32)
    order = np.argsort(faces.labels, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    for identity, (start, count) in enumerate(zip(starts, counts)):
        table[identity, :count] = order[start:start + count]
    return table, counts.astype(np.int32)


def global_batch_indices(step: tf.Tensor, seed: int, table: tf.Tensor, counts: tf.Tensor,
                         identities_per_batch: int, images_per_identity: int) -> tf.Tensor:
    """Row indices int32[P*K] of the global batch at ``step`` (identity-major).

    Args:
      step: int64 scalar step.
      seed: the sampling seed.
      table: int32[I, M] rows of each identity, padded.
      counts: int32[I] photos per identity.
      identities_per_batch: P.
      images_per_identity: K.

    Returns:
      int32[P*K]: P distinct identities, K rows each (with replacement only where an
      identity has fewer than K photos).
    """
    step = tf.cast(step, tf.int64)
    identity_seed = tf.stack([tf.constant(seed, tf.int64), step * 2])
    image_seed = tf.stack([tf.constant(seed, tf.int64), step * 2 + 1])
    num_identities = tf.shape(counts)[0]
    identities = tf.argsort(tf.random.stateless_uniform([num_identities], identity_seed))
    identities = identities[:identities_per_batch]
    rows = tf.gather(table, identities)  # [P, M]
    chosen_counts = tf.gather(counts, identities)  # [P]
    width = tf.shape(table)[1]
    keys = tf.random.stateless_uniform([identities_per_batch, width], image_seed)
    # Padding sorts last, so the first K of the argsort are K distinct real photos.
    keys = tf.where(tf.range(width)[None, :] < chosen_counts[:, None], keys, 2.0)
    without_replacement = tf.argsort(keys, axis=1)[:, :images_per_identity]
    if images_per_identity > 1:
        # Columns beyond an identity's count repeat random photos of it (with replacement).
        draws = tf.random.stateless_uniform(
            [identities_per_batch, images_per_identity], image_seed + [0, 1 << 40])
        with_replacement = tf.cast(
            tf.floor(draws * tf.cast(chosen_counts[:, None], tf.float32)), tf.int32)
        with_replacement = tf.minimum(with_replacement, chosen_counts[:, None] - 1)
        if without_replacement.shape[1] < images_per_identity:
            padding = images_per_identity - without_replacement.shape[1]
            without_replacement = tf.pad(without_replacement, [[0, 0], [0, padding]])
        enough = chosen_counts[:, None] >= images_per_identity
        columns = tf.where(enough, without_replacement, with_replacement)
    else:
        columns = without_replacement
    return tf.reshape(tf.gather(rows, columns, batch_dims=1), [-1])


def make_dataset(faces: Faces, resolution: int, identities_per_batch: int,
                 images_per_identity: int, seed: int = 0,
                 input_context: tf.distribute.InputContext | None = None,
                 start_step: int = 0) -> tf.data.Dataset:
    """An infinite, deterministic dataset of P x K batches.

    Args:
      faces: the faces (crops are resized to ``resolution`` once, here, if needed).
      resolution: output image size.
      identities_per_batch: P, identities per global batch.
      images_per_identity: K, photos per identity (with replacement for smaller identities).
      seed: the sampling seed; the global batch at step s depends only on (seed, s).
      input_context: under ``distribute_datasets_from_function``; this pipeline then yields,
        for each step, the per-replica batches of its replicas in replica order.
      start_step: the step of the first batch, so that a resumed run reads the batches an
        uninterrupted one would.

    Returns:
      A dataset of ``(image float32[B, res, res, 3] in [-1, 1], embedding float32[B, D],
      identity int32[B])``, with B = P*K, or P*K/R per replica under ``input_context``.

    Raises:
      ValueError: for P or K < 1, P > identities, or P not divisible by the replica count.
    """
    num_replicas = input_context.num_replicas_in_sync if input_context else 1
    num_pipelines = input_context.num_input_pipelines if input_context else 1
    pipeline_id = input_context.input_pipeline_id if input_context else 0
    _check_sampling(faces, identities_per_batch, images_per_identity, num_replicas)
    if num_replicas % num_pipelines:
        raise ValueError(f"{num_replicas} replicas cannot be spread evenly over "
                         f"{num_pipelines} input pipelines")
    faces = resize_faces(faces, resolution)
    table, counts = _image_table(faces)
    table, counts = tf.constant(table), tf.constant(counts)
    crops = tf.constant(faces.crops)
    embeddings = tf.constant(faces.embeddings, tf.float32)
    labels = tf.constant(faces.labels, tf.int32)
    replicas_here = num_replicas // num_pipelines
    per_replica = identities_per_batch // num_replicas * images_per_identity
    first_row = pipeline_id * replicas_here * per_replica

    def rows_of_element(element):
        # Element e is local replica e % replicas_here at step e // replicas_here: the
        # distributed iterator hands consecutive elements to this pipeline's replicas in turn.
        step, local_replica = element // replicas_here, element % replicas_here
        indices = global_batch_indices(step, seed, table, counts, identities_per_batch,
                                       images_per_identity)
        start = first_row + tf.cast(local_replica, tf.int32) * per_replica
        return tf.reshape(indices[start:start + per_replica], [per_replica])

    def gather(rows):
        images = tf.cast(tf.gather(crops, rows), tf.float32) / 127.5 - 1.0
        return images, tf.gather(embeddings, rows), tf.gather(labels, rows)

    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")
    dataset = tf.data.Dataset.counter(start=start_step * replicas_here).map(
        lambda element: gather(rows_of_element(element)),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    options = tf.data.Options()
    options.deterministic = True
    return dataset.prefetch(tf.data.AUTOTUNE).with_options(options)


def distillation_batch_rows(step: tf.Tensor, seed: int, num_examples: int,
                            batch_size: int) -> tf.Tensor:
    """Row indices int64[batch_size] of the distillation batch at ``step``.

    The examples are read in epochs, each a fresh permutation drawn from ``(seed, epoch)``, so
    every example is seen once per epoch and the batch at a step depends on nothing else.
    """
    positions = tf.cast(step, tf.int64) * batch_size + tf.range(batch_size, dtype=tf.int64)
    epochs = positions // num_examples
    first_epoch = epochs[0]
    max_index = tf.fill([batch_size], tf.constant(num_examples - 1, tf.int64))

    def shuffled(epoch):
        # One seed of shape [2] for the whole vector (index_shuffle's [n, 2] form mis-pads).
        return tf.random.experimental.index_shuffle(
            positions % num_examples, tf.stack([tf.constant(seed, tf.int64), epoch]),
            max_index=max_index)

    # A batch spans at most two epochs when batch_size <= num_examples.
    return tf.where(epochs == first_epoch, shuffled(first_epoch), shuffled(first_epoch + 1))


def make_distillation_dataset(crops: np.ndarray, embeddings: np.ndarray, batch_size: int,
                              seed: int = 0, start_step: int = 0,
                              input_context: tf.distribute.InputContext | None = None
                              ) -> tf.data.Dataset:
    """An infinite, deterministic dataset of (face, teacher vector) batches for distillation.

    Args:
      crops: uint8[N, R, R, 3] faces at the training resolution (photos and views).
      embeddings: float32[N, D] their engine vectors.
      batch_size: the global batch size.
      seed: the sampling seed; the global batch at step s depends only on (seed, s).
      start_step: the step of the first batch (a resumed run reads on from there).
      input_context: under ``distribute_datasets_from_function``: this pipeline yields its
        replicas' consecutive slices of each global batch, in replica order.

    Returns:
      A dataset of ``(image float32[B, R, R, 3] in [-1, 1], embedding float32[B, D])``.

    Raises:
      ValueError: for an empty set, mismatched lengths, or a batch that the replicas cannot
        share evenly.
    """
    if len(crops) == 0 or len(crops) != len(embeddings):
        raise ValueError(f"distillation needs as many vectors as faces, at least one; got "
                         f"{len(crops)} faces and {len(embeddings)} vectors")
    if batch_size > len(crops):
        raise ValueError(f"the distillation batch {batch_size} is larger than the "
                         f"{len(crops)} faces to distil from")
    num_replicas = input_context.num_replicas_in_sync if input_context else 1
    num_pipelines = input_context.num_input_pipelines if input_context else 1
    pipeline_id = input_context.input_pipeline_id if input_context else 0
    if batch_size < 1 or batch_size % num_replicas:
        raise ValueError(f"the distillation batch {batch_size} must be a positive multiple of "
                         f"the {num_replicas} replicas")
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")
    replicas_here = num_replicas // num_pipelines
    per_replica = batch_size // num_replicas
    faces = tf.constant(crops)
    vectors = tf.constant(embeddings, tf.float32)

    def batch_of_element(element):
        step, local_replica = element // replicas_here, element % replicas_here
        rows = distillation_batch_rows(step, seed, len(crops), batch_size)
        start = (pipeline_id * replicas_here + local_replica) * per_replica
        rows = rows[start:start + per_replica]
        images = tf.cast(tf.gather(faces, rows), tf.float32) / 127.5 - 1.0
        return images, tf.gather(vectors, rows)

    dataset = tf.data.Dataset.counter(start=start_step * replicas_here).map(
        batch_of_element, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    options = tf.data.Options()
    options.deterministic = True
    return dataset.prefetch(tf.data.AUTOTUNE).with_options(options)


def distribute_dataset(strategy: tf.distribute.Strategy, faces: Faces, resolution: int,
                       identities_per_batch: int, images_per_identity: int, seed: int = 0,
                       start_step: int = 0):
    """The P x K dataset distributed over ``strategy``'s replicas.

    Each replica gets P/R whole identities of the global batch that ``make_dataset`` without
    a context would give at the same step, so results do not depend on the replica count.

    Args:
      strategy: any tf.distribute strategy.
      faces, resolution, identities_per_batch, images_per_identity, seed, start_step: as
        make_dataset.

    Returns:
      ``strategy.distribute_datasets_from_function(...)``'s distributed dataset.

    Raises:
      ValueError: when P is not a multiple of the number of replicas.
    """
    _check_sampling(faces, identities_per_batch, images_per_identity,
                    strategy.num_replicas_in_sync)
    faces = resize_faces(faces, resolution)  # Once, not in every pipeline.
    return strategy.distribute_datasets_from_function(
        lambda context: make_dataset(faces, resolution, identities_per_batch,
                                     images_per_identity, seed, input_context=context,
                                     start_step=start_step))
