"""How well a student stands in for the engine: agreement per face, and as an engine itself.

Used by ``benchmarks/student.py``; plain numpy over vectors, so any student (a live Keras model,
the exported SavedModel) and any engine can be compared.
"""

from __future__ import annotations

import numpy as np

from vec2face_tf.evaluation import metrics


def centred_cosines(student_vectors: np.ndarray, engine_vectors: np.ndarray,
                    center: np.ndarray) -> np.ndarray:
    """``cos(unit(unit(s) - m), unit(unit(f) - m))`` per row (numpy; see losses.centred_cosine).

    Args:
      student_vectors: float[N, D] (normalised here).
      engine_vectors: float[N, D] (normalised here).
      center: float[D], the mean engine vector of the training photos.
    """
    def centred(vectors):
        vectors = np.asarray(vectors, np.float64)
        vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors - np.asarray(center, np.float64)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)

    return np.sum(centred(student_vectors) * centred(engine_vectors), axis=1)


def agreement(student_vectors: np.ndarray, engine_vectors: np.ndarray,
              center: np.ndarray) -> dict:
    """Mean raw and centred cosine of a student with the engine on the same faces."""
    student = np.asarray(student_vectors, np.float64)
    engine = np.asarray(engine_vectors, np.float64)
    raw = np.sum(student * engine, axis=1) / (np.linalg.norm(student, axis=1)
                                              * np.linalg.norm(engine, axis=1))
    centred = centred_cosines(student, engine, center)
    return {"faces": int(len(student)), "raw_cosine": float(np.mean(raw)),
            "centred_cosine": float(np.mean(centred)),
            "centred_cosine_p10": float(np.percentile(centred, 10))}


def verification_at_fmr(vectors: np.ndarray, labels: np.ndarray, fmr: float = 1e-3) -> dict:
    """TAR at ``fmr`` of a set of vectors used as a face-recognition engine.

    The threshold comes from the same set's impostor pairs, so the student and the engine are
    each judged at their own operating point.
    """
    genuine, impostor = metrics.pair_scores(vectors, labels)
    threshold = metrics.threshold_at_fmr(impostor, fmr)
    return {"fmr": fmr, "threshold": threshold.value, "tar": metrics.success_rate(genuine,
                                                                                 threshold),
            "genuine_pairs": int(len(genuine)), "impostor_pairs": int(len(impostor))}
