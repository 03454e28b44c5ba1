"""Attack success of reconstructions against the engine, next to the baselines (DESIGN §4).

For held-out probes ``I`` with engine vectors ``x = F(I)``: the reconstruction ``G(x)`` is
embedded by the engine and scored against ``x`` (type I) and against the other photos of the
same person (type II). The nearest-neighbour baseline replaces ``G(x)`` by the training photo
whose vector is closest to ``x``; the random baseline by a random training photo. All use the
same thresholds, taken from impostor pairs of real photos.
"""

from __future__ import annotations

import numpy as np

from vec2face_tf.data.pipeline import Faces
from vec2face_tf.engines.base import Engine
from vec2face_tf.evaluation import metrics
from vec2face_tf.evaluation.thresholds import thresholds_as_json


def to_uint8(images) -> np.ndarray:
    """Images in [-1, 1] to uint8 RGB."""
    images = np.asarray(images, dtype=np.float32)
    return np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


def from_uint8(images) -> np.ndarray:
    """uint8 RGB images to float32 in [-1, 1], the generator's range (``to_uint8``'s inverse)."""
    return np.asarray(images).astype(np.float32) / 127.5 - 1.0


def reconstruct(generator, embeddings: np.ndarray, noise_dim: int,
                batch_size: int = 64) -> np.ndarray:
    """uint8 reconstructions ``G(x, 0)`` of unit vectors ``x``."""
    images = []
    for start in range(0, len(embeddings), batch_size):
        chunk = np.asarray(embeddings[start:start + batch_size], np.float32)
        noise = np.zeros((len(chunk), noise_dim), np.float32)
        images.append(to_uint8(generator([chunk, noise], training=False)))
    return np.concatenate(images)


def attack_scores(attack_vectors: np.ndarray, probe_vectors: np.ndarray,
                  labels: np.ndarray) -> dict:
    """Type I (against the probe's own vector) and type II (the person's other photos) scores.

    Returns:
      ``type1`` float[N], ``type2`` float[pairs], and the identity of each score
      (``type1_groups``, ``type2_groups``) for a bootstrap that resamples identities.
    """
    same = labels[:, None] == labels[None, :]
    np.fill_diagonal(same, False)
    rows, columns = np.nonzero(same)
    return {"type1": np.sum(attack_vectors * probe_vectors, axis=1),
            "type2": np.sum(attack_vectors[rows] * probe_vectors[columns], axis=1),
            "type1_groups": labels, "type2_groups": labels[rows]}


def attack_report(attack_vectors: np.ndarray, probes: Faces,
                  thresholds: dict[float, metrics.Threshold]) -> dict:
    """Mean cosine and SAR type I / II at each threshold for one attack."""
    scores = attack_scores(attack_vectors, probes.embeddings, probes.labels)
    type1, type2 = scores["type1"], scores["type2"]
    report = {"mean_cosine": float(type1.mean()), "median_cosine": float(np.median(type1)),
              "type1_pairs": int(type1.size), "type2_pairs": int(type2.size)}
    for fmr, threshold in thresholds.items():
        report[f"sar_type1@{fmr:g}"] = metrics.success_rate(type1, threshold)
        if type2.size:
            report[f"sar_type2@{fmr:g}"] = metrics.success_rate(type2, threshold)
    return report


def embed_in_batches(engine: Engine, images: np.ndarray, batch_size: int = 64,
                     progress: bool = False, what: str = "embed") -> np.ndarray:
    """``engine.embed`` over ``images`` in batches (a tqdm bar with ``progress``)."""
    from tqdm import tqdm

    batches = range(0, len(images), batch_size)
    return np.concatenate([engine.embed(images[start:start + batch_size])
                           for start in tqdm(batches, desc=what, disable=not progress,
                                             unit="batch")])


def evaluate_reconstructions(generator, engine: Engine, probes: Faces, gallery: Faces,
                             threshold_faces: Faces, noise_dim: int, seed: int = 0) -> dict:
    """Evaluates ``generator`` against ``engine`` on held-out ``probes``.

    Args:
      generator: maps ``[unit vectors, noise]`` to images in [-1, 1].
      engine: the engine the vectors came from.
      probes: held-out faces (identities never seen in training).
      gallery: the training faces (for the nearest-neighbour and random baselines).
      threshold_faces: real faces whose impostor pairs set the thresholds.
      noise_dim: the generator's noise size (noise is zero).
      seed: seed of the random baseline.

    Returns:
      A dict with the thresholds and one report per attack: ``reconstruction``,
      ``nearest_neighbour``, ``random_training_face``, plus the reconstructions' uint8 images
      and engine vectors under ``images`` / ``vectors`` (not JSON; pop them to save).
    """
    _, impostor = metrics.pair_scores(threshold_faces.embeddings, threshold_faces.labels)
    thresholds = metrics.thresholds_at_fmrs(impostor)
    images = reconstruct(generator, probes.embeddings, noise_dim)
    vectors = embed_in_batches(engine, images)
    nn_index, _ = metrics.nearest_neighbour_scores(probes.embeddings, gallery.embeddings)
    random_index = np.random.default_rng(seed).integers(0, len(gallery), len(probes))
    return {
        "thresholds": thresholds_as_json(thresholds),
        "probes": len(probes), "probe_identities": probes.num_identities,
        "gallery": len(gallery),
        "reconstruction": attack_report(vectors, probes, thresholds),
        "nearest_neighbour": attack_report(gallery.embeddings[nn_index], probes, thresholds),
        "random_training_face": attack_report(gallery.embeddings[random_index], probes,
                                              thresholds),
        "images": images, "vectors": vectors, "nearest_neighbour_index": nn_index,
    }


def comparison_grid(rows: np.ndarray, cosines: np.ndarray, titles: list[str],
                    threshold: float | None) -> np.ndarray:
    """Renders rows of images with their engine cosine and pass/fail at ``threshold``."""
    import io

    import matplotlib
    import tensorflow as tf

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    count, columns = rows.shape[:2]
    figure, axes = plt.subplots(count, columns, figsize=(columns * 1.3, count * 1.45),
                                squeeze=False)
    for row in range(count):
        for column in range(columns):
            axis = axes[row, column]
            axis.imshow(rows[row, column])
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(titles[column], fontsize=7)
            if column:
                passed = threshold is not None and cosines[row, column] > threshold
                mark = "" if threshold is None else (" pass" if passed else " fail")
                axis.set_xlabel(f"cos {cosines[row, column]:.3f}{mark}", fontsize=6,
                                color="green" if passed else "black")
    figure.tight_layout(pad=0.3)
    buffer = io.BytesIO()
    # "tight" keeps the titles and score labels of short grids inside the picture.
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight", pad_inches=0.05)
    plt.close(figure)
    return tf.io.decode_png(buffer.getvalue(), channels=3).numpy()


def neighbour_grid(real: np.ndarray, reconstructions: np.ndarray, neighbours: np.ndarray,
                   real_vectors: np.ndarray, reconstruction_vectors: np.ndarray,
                   neighbour_vectors: np.ndarray, threshold: float | None) -> np.ndarray:
    """Rows of [real | reconstruction | nearest neighbour], each attack's engine cosine with
    the real photo's vector and pass/fail at ``threshold`` under it."""
    cosines = np.stack([np.ones(len(real)),
                        np.sum(reconstruction_vectors * real_vectors, 1),
                        np.sum(neighbour_vectors * real_vectors, 1)], 1)
    return comparison_grid(np.stack([real, reconstructions, neighbours], 1), cosines,
                           ["real", "reconstruction", "nearest neighbour"], threshold)
