"""Verification maths of the evaluation protocol (DESIGN §4): pair scores, thresholds at a
false-match rate, and attack success rates. Plain numpy; scores are cosines (higher = same).
"""

from __future__ import annotations

import dataclasses

import numpy as np

# FMR 1e-4 needs 10^5 impostor pairs (DESIGN §4): at least this many expected false matches.
MIN_FALSE_MATCHES = 10


@dataclasses.dataclass(frozen=True)
class Threshold:
    """A decision threshold: a pair matches when its score is strictly above ``value``."""

    fmr: float
    value: float
    impostor_pairs: int
    false_matches: int  # impostor pairs above ``value``; false_matches / impostor_pairs <= fmr


def pair_scores(embeddings: np.ndarray, labels: np.ndarray,
                block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Cosine scores of every genuine and every impostor pair (i < j).

    Args:
      embeddings: float[N, D] unit vectors.
      labels: int[N] identities.
      block: rows per block, to bound memory on large sets.

    Returns:
      (genuine float32[G], impostor float32[I]).
    """
    embeddings = np.asarray(embeddings, np.float32)
    labels = np.asarray(labels)
    if embeddings.ndim != 2 or len(embeddings) != len(labels):
        raise ValueError(f"embeddings {embeddings.shape} and labels {labels.shape} must be "
                         "[N, D] and [N]")
    genuine, impostor = [], []
    for start in range(0, len(embeddings), block):
        rows = slice(start, start + block)
        scores = embeddings[rows] @ embeddings.T
        upper = np.arange(start, start + scores.shape[0])[:, None] < np.arange(len(labels))
        same = labels[rows, None] == labels[None, :]
        genuine.append(scores[upper & same])
        impostor.append(scores[upper & ~same])
    return np.concatenate(genuine), np.concatenate(impostor)


def threshold_at_fmr(impostor_scores: np.ndarray, fmr: float) -> Threshold:
    """The lowest threshold whose false-match rate on ``impostor_scores`` is at most ``fmr``.

    Args:
      impostor_scores: scores of pairs of different people.
      fmr: the target false-match rate, in (0, 1).

    Returns:
      The Threshold; matching is ``score > value``.

    Raises:
      ValueError: when there are too few impostor pairs to estimate ``fmr`` (fewer than
        ``MIN_FALSE_MATCHES / fmr``).
    """
    scores = np.sort(np.asarray(impostor_scores, np.float64))[::-1]
    if not 0 < fmr < 1:
        raise ValueError(f"fmr must be in (0, 1), got {fmr}")
    needed = int(np.ceil(MIN_FALSE_MATCHES / fmr))
    if len(scores) < needed:
        raise ValueError(f"FMR {fmr:g} needs >= {needed} impostor pairs, got {len(scores)}")
    allowed = int(np.floor(fmr * len(scores)))
    value = float(scores[allowed])  # the (allowed+1)-th highest impostor score
    return Threshold(fmr=fmr, value=value, impostor_pairs=len(scores),
                     false_matches=int(np.sum(scores > value)))


def thresholds_at_fmrs(impostor_scores: np.ndarray,
                       fmrs: tuple[float, ...] = (1e-2, 1e-3, 1e-4)) -> dict[float, Threshold]:
    """Thresholds at every FMR the number of impostor pairs supports (others are left out)."""
    count = len(impostor_scores)
    return {fmr: threshold_at_fmr(impostor_scores, fmr) for fmr in fmrs
            if count >= np.ceil(MIN_FALSE_MATCHES / fmr)}


def success_rate(scores: np.ndarray, threshold: Threshold | float) -> float:
    """Fraction of attack scores that pass the threshold (score > threshold)."""
    value = threshold.value if isinstance(threshold, Threshold) else float(threshold)
    scores = np.asarray(scores)
    if scores.size == 0:
        raise ValueError("no scores to rate")
    return float(np.mean(scores > value))


def nearest_neighbour_scores(probe_embeddings: np.ndarray,
                             gallery_embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The nearest-neighbour baseline: the gallery photo whose vector is closest to each probe.

    Returns:
      (index int[N] of the closest gallery vector, its cosine float32[N]).
    """
    scores = np.asarray(probe_embeddings, np.float32) @ np.asarray(gallery_embeddings,
                                                                   np.float32).T
    index = np.argmax(scores, axis=1)
    return index, scores[np.arange(len(index)), index]
