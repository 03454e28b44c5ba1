"""An engine's decision thresholds at fixed false-match rates, measured on real faces.

Thresholds are never hard-coded (DESIGN §4): they come from every impostor pair of a set of
real photos embedded by the engine, and travel with the counts that support them.
"""

from __future__ import annotations

import os

from vec2face_tf.config import CropSpec
from vec2face_tf.data import pipeline
from vec2face_tf.evaluation import metrics

FMRS = (1e-2, 1e-3, 1e-4)


def thresholds_as_json(thresholds: dict[float, metrics.Threshold]) -> dict:
    """``{"0.001": {"cosine", "impostor_pairs", "false_matches"}, ...}``, JSON-ready."""
    return {f"{fmr:g}": {"cosine": t.value, "impostor_pairs": t.impostor_pairs,
                         "false_matches": t.false_matches}
            for fmr, t in thresholds.items()}


def engine_thresholds(faces: pipeline.Faces, fmrs: tuple[float, ...] = FMRS) -> dict:
    """The thresholds at ``fmrs`` that the impostor pairs of ``faces`` support, as JSON.

    Returns:
      ``{"fmr": {...thresholds_as_json...}, "faces": N, "identities": K,
      "genuine_pairs": G}``; an FMR without ``MIN_FALSE_MATCHES / fmr`` impostor pairs is
      left out.
    """
    genuine, impostor = metrics.pair_scores(faces.embeddings, faces.labels)
    return {"fmr": thresholds_as_json(metrics.thresholds_at_fmrs(impostor, fmrs)),
            "faces": len(faces), "identities": int(faces.num_identities),
            "genuine_pairs": int(len(genuine))}


def cache_thresholds(cache_dir: str | os.PathLike, engine_name: str, crop: CropSpec,
                     fmrs: tuple[float, ...] = FMRS) -> dict:
    """``engine_thresholds`` of every face in an embedding cache."""
    return engine_thresholds(pipeline.load_faces(cache_dir, engine_name, crop), fmrs)
