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


# SAR-against-FMR curves: 1e-1 down to 1e-5, five points a decade.
CURVE_FMRS = tuple(float(f"{value:.3g}") for value in np.logspace(-1, -5, 21))


def sar_curve(impostor_scores: np.ndarray, attack_scores: dict[str, np.ndarray],
              fmrs: tuple[float, ...] = CURVE_FMRS) -> dict:
    """Success rates of each attack at every FMR the impostor pairs support.

    Args:
      impostor_scores: scores of pairs of different people (they set the thresholds).
      attack_scores: name -> the scores of that attack's pairs (e.g. reconstructions against
        their templates, or the engine's own genuine pairs).
      fmrs: the false-match rates to try; those the impostor pairs cannot support are left
        out (``thresholds_at_fmrs``).

    Returns:
      ``fmr`` and ``threshold`` (lists, in the order of ``fmrs``) and, for each attack, its
      success rate at each of those thresholds (``score > threshold``).
    """
    thresholds = thresholds_at_fmrs(impostor_scores, fmrs)
    curve = {"fmr": list(thresholds), "threshold": [t.value for t in thresholds.values()]}
    for name, scores in attack_scores.items():
        curve[name] = [success_rate(scores, t) for t in thresholds.values()]
    return curve


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


# Bootstrap resamples are drawn this many values at a time, to bound memory on 10^5 outcomes.
_BOOTSTRAP_CHUNK_VALUES = 4_000_000
# Up to this many distinct resampling units, the mean's bootstrap draws multinomial counts.
_MULTINOMIAL_MAX_KINDS = 256


def _as_finite_vector(values, name: str) -> np.ndarray:
    values = np.asarray(values)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {values.shape}")
    values = values.astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name} holds NaN or infinite values")
    return values


def bootstrap_ci(outcomes, statistic=np.mean, confidence: float = 0.95, resamples: int = 2000,
                 seed: int = 0, groups=None) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of a statistic (by default a success rate).

    Without ``groups`` the outcomes are resampled one by one (iid). With ``groups`` whole
    groups are resampled (the cluster bootstrap): type-II pairs of one identity share the
    reconstruction and the person, so they are correlated, and an iid interval would be too
    narrow. The cluster statistic is the mean of the resampled groups' outcomes pooled, so it
    is only defined for ``statistic=np.mean``.

    The resamples are vectorised. For the mean, units (outcomes, or groups) with equal
    (sum, size) are interchangeable, so when there are few distinct kinds (binary outcomes have
    two) a resample is exactly a multinomial draw of how many units of each kind it holds:
    B x kinds numbers instead of B x n. Otherwise index matrices are drawn in chunks.

    Args:
      outcomes: 1-D numbers, e.g. booleans "this attack passed".
      statistic: ``f(values[B, n], axis=1) -> [B]``, like ``np.mean`` or ``np.median``.
      confidence: the interval's coverage, in (0, 1).
      resamples: the number of bootstrap resamples B.
      seed: seed of the resampling.
      groups: optional int[n] cluster labels (e.g. identities), one per outcome.

    Returns:
      (low, high), the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` percentiles of
      the resampled statistic.

    Raises:
      ValueError: for empty or non-finite outcomes, a bad confidence or resample count,
        groups of the wrong length, or groups with a statistic other than the mean.
    """
    values = _as_finite_vector(outcomes, "outcomes")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if int(resamples) != resamples or resamples < 1:
        raise ValueError(f"resamples must be a positive integer, got {resamples}")
    resamples = int(resamples)
    rng = np.random.default_rng(seed)
    if groups is not None:
        groups = np.asarray(groups)
        if groups.shape != values.shape:
            raise ValueError(f"groups {groups.shape} must have one label per outcome "
                             f"{values.shape}")
        if statistic is not np.mean:
            raise ValueError("the cluster bootstrap (groups=...) supports only "
                             "statistic=np.mean")
        _, group_index = np.unique(groups, return_inverse=True)
        group_sums = np.bincount(group_index, weights=values)
        group_sizes = np.bincount(group_index).astype(np.float64)
        stats = _resampled_ratios(group_sums, group_sizes, resamples, rng)
    elif statistic is np.mean:
        stats = _resampled_ratios(values, np.ones_like(values), resamples, rng)
    else:
        stats = np.concatenate([
            np.asarray(statistic(values[rng.integers(0, values.size, (rows, values.size),
                                                     dtype=np.int32)],
                                 axis=1), np.float64)
            for rows in _chunk_rows(resamples, values.size)])
    low, high = np.quantile(stats, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(low), float(high)


def _chunk_rows(resamples: int, width: int) -> list[int]:
    rows = max(1, _BOOTSTRAP_CHUNK_VALUES // width)
    return [min(rows, resamples - start) for start in range(0, resamples, rows)]


def _resampled_ratios(sums: np.ndarray, sizes: np.ndarray, resamples: int,
                      rng: np.random.Generator) -> np.ndarray:
    """``sum(sums[pick]) / sum(sizes[pick])`` for ``resamples`` uniform picks with replacement."""
    kinds, counts = np.unique(np.stack([sums, sizes], axis=1), axis=0, return_counts=True)
    if len(kinds) <= _MULTINOMIAL_MAX_KINDS:
        draws = rng.multinomial(sums.size, counts / sums.size, size=resamples)
        return (draws @ kinds[:, 0]) / (draws @ kinds[:, 1])
    ratios = []
    for rows in _chunk_rows(resamples, sums.size):
        pick = rng.integers(0, sums.size, (rows, sums.size), dtype=np.int32)
        ratios.append(sums[pick].sum(axis=1) / sizes[pick].sum(axis=1))
    return np.concatenate(ratios)


def sar_with_ci(scores, threshold: Threshold | float, groups=None, confidence: float = 0.95,
                resamples: int = 2000, seed: int = 0) -> dict:
    """A success rate with its bootstrap confidence interval.

    Args:
      scores: attack scores (cosines); an attack passes when its score is above the threshold.
      threshold: a Threshold or a plain value.
      groups: optional cluster labels, one per score (see ``bootstrap_ci``); pass the identity
        for type-II scores.
      confidence, resamples, seed: as in ``bootstrap_ci``.

    Returns:
      ``{"rate", "low", "high", "n"}``: the success rate, the interval, the number of scores.
    """
    scores = _as_finite_vector(scores, "scores")
    passed = scores > (threshold.value if isinstance(threshold, Threshold) else float(threshold))
    low, high = bootstrap_ci(passed, confidence=confidence, resamples=resamples, seed=seed,
                             groups=groups)
    return {"rate": float(passed.mean()), "low": low, "high": high, "n": int(passed.size)}


def verification_accuracy(genuine_scores, impostor_scores, folds: int = 10,
                          seed: int = 0) -> dict:
    """Verification accuracy under the LFW k-fold protocol.

    The pairs are split into ``folds`` folds; for each fold the threshold that maximises the
    accuracy on the other folds is applied to it. The LFW protocol uses equal numbers of
    genuine and impostor pairs, so the larger class is subsampled (seeded, without
    replacement) to the size of the smaller one, and each fold holds equally many of both
    (within one pair): a chance-level classifier then scores 0.5, whatever the raw ratio.
    Only scores are given, so the folds are random rather than identity-disjoint as in LFW's
    View 2; with many identities per fold the difference is small.

    Args:
      genuine_scores: scores of same-person pairs (higher = more alike).
      impostor_scores: scores of different-person pairs.
      folds: the number of folds (10 in LFW).
      seed: seed of the subsampling and the fold split.

    Returns:
      ``{"mean", "std", "thresholds", "accuracies", "pairs_per_class"}``: the mean and the
      (population, ``np.std``) standard deviation of the held-out fold accuracies, each fold's
      threshold (a pair matches when its score is above it) and accuracy, and the number of
      pairs per class used.

    Raises:
      ValueError: for non-finite scores, fewer than 2 folds, or fewer pairs of a class than
        folds.
    """
    genuine = _as_finite_vector(genuine_scores, "genuine_scores")
    impostor = _as_finite_vector(impostor_scores, "impostor_scores")
    if int(folds) != folds or folds < 2:
        raise ValueError(f"folds must be an integer >= 2, got {folds}")
    per_class = min(genuine.size, impostor.size)
    if per_class < folds:
        raise ValueError(f"{folds} folds need >= {folds} pairs of each class, got "
                         f"{genuine.size} genuine and {impostor.size} impostor")
    rng = np.random.default_rng(seed)
    genuine_folds = np.array_split(rng.permutation(genuine)[:per_class], folds)
    impostor_folds = np.array_split(rng.permutation(impostor)[:per_class], folds)
    thresholds, accuracies = [], []
    for held_out in range(folds):
        train_genuine = np.concatenate([f for i, f in enumerate(genuine_folds) if i != held_out])
        train_impostor = np.concatenate([f for i, f in enumerate(impostor_folds)
                                         if i != held_out])
        threshold = _best_threshold(train_genuine, train_impostor)
        correct = (np.sum(genuine_folds[held_out] > threshold)
                   + np.sum(impostor_folds[held_out] <= threshold))
        thresholds.append(threshold)
        accuracies.append(correct / (genuine_folds[held_out].size
                                     + impostor_folds[held_out].size))
    return {"mean": float(np.mean(accuracies)), "std": float(np.std(accuracies)),
            "thresholds": [float(t) for t in thresholds],
            "accuracies": [float(a) for a in accuracies], "pairs_per_class": int(per_class)}


def _best_threshold(genuine: np.ndarray, impostor: np.ndarray) -> float:
    """The accuracy-maximising threshold, at a midpoint between consecutive distinct scores.

    A midpoint (rather than a score itself) keeps the threshold away from the training
    scores, so a held-out fold is not decided by ties; among equally good midpoints, the
    lowest wins.
    """
    distinct = np.unique(np.concatenate([genuine, impostor]))
    candidates = np.concatenate([[distinct[0] - 1.0], (distinct[:-1] + distinct[1:]) / 2,
                                 [distinct[-1] + 1.0]])
    genuine_above = genuine.size - np.searchsorted(np.sort(genuine), candidates, side="right")
    impostor_at_or_below = np.searchsorted(np.sort(impostor), candidates, side="right")
    return float(candidates[np.argmax(genuine_above + impostor_at_or_below)])


def _as_feature_matrix(features, name: str) -> np.ndarray:
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[0] < 2 or features.shape[1] < 1:
        raise ValueError(f"{name} must be [N >= 2, D] features, got shape {features.shape}")
    features = features.astype(np.float64)
    if not np.all(np.isfinite(features)):
        raise ValueError(f"{name} holds NaN or infinite values")
    return features


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric PSD matrix; round-off negatives become 0."""
    eigenvalues, eigenvectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ eigenvectors.T


def _covariance_factor(features: np.ndarray) -> np.ndarray:
    """A matrix ``F`` with ``F.T @ F`` = the sample covariance of ``features``, the smaller one."""
    centred = features - features.mean(axis=0)
    count, dim = features.shape
    if count <= dim:
        return centred / np.sqrt(count - 1)
    return _psd_sqrt(centred.T @ centred / (count - 1))


def frechet_distance_from_moments(mean_a, covariance_a, mean_b, covariance_b) -> float:
    """The Fréchet (2-Wasserstein²) distance between two Gaussians.

    ``||mean_a - mean_b||² + tr(A) + tr(B) - 2 tr((A^½ B A^½)^½)``. The last trace equals
    ``tr((A B)^½)`` of the usual formula, but ``A^½ B A^½`` is symmetric PSD, so it is computed
    with ``eigh``: no complex round-off (the ``scipy.linalg.sqrtm(A @ B)`` route returns tiny
    imaginary parts and fails on singular covariances), and eigenvalues that round-off made
    slightly negative are clipped to 0. With singular covariances each zero eigenvalue still
    adds about ``sqrt(round-off)`` (~1e-8 relative); ``frechet_distance`` on the samples avoids
    that.

    Args:
      mean_a, mean_b: float[D] means.
      covariance_a, covariance_b: float[D, D] symmetric PSD covariances (singular is fine).

    Returns:
      The distance (>= 0).
    """
    mean_a, mean_b = (np.asarray(m, np.float64) for m in (mean_a, mean_b))
    covariance_a, covariance_b = (np.asarray(c, np.float64) for c in (covariance_a, covariance_b))
    dim = mean_a.shape[0] if mean_a.ndim == 1 else -1
    if (mean_b.shape != (dim,) or covariance_a.shape != (dim, dim)
            or covariance_b.shape != (dim, dim)):
        raise ValueError(f"means {mean_a.shape}, {mean_b.shape} and covariances "
                         f"{covariance_a.shape}, {covariance_b.shape} must be [D] and [D, D]")
    root_a = _psd_sqrt(covariance_a)
    cross = np.linalg.eigvalsh(root_a @ covariance_b @ root_a)
    trace_root = np.sum(np.sqrt(np.clip(cross, 0, None)))
    distance = (np.sum((mean_a - mean_b) ** 2) + np.trace(covariance_a)
                + np.trace(covariance_b) - 2 * trace_root)
    return float(max(distance, 0.0))


def frechet_distance(features_a, features_b) -> float:
    """The Fréchet distance between Gaussians fitted to two feature sets.

    FID when the features are Inception pool features; the offline "engine-vector Fréchet
    distance" when they are engine vectors of reconstructions and of real photos.

    ``tr((A B)^½)`` equals the nuclear norm (sum of singular values) of ``F_a @ F_b.T`` for
    any factors with ``F.T @ F`` = covariance. The factor is the centred data when there are
    fewer samples than dimensions (covariances of N < D samples are singular: the usual
    ``sqrtm`` route breaks there, this one is exact and costs an N_a x N_b SVD), and the
    symmetric square root of the covariance otherwise. Singular values are real and
    non-negative, so there are no imaginary parts to discard. Computed in float64.

    Args:
      features_a: float[N_a, D], N_a >= 2.
      features_b: float[N_b, D], N_b >= 2.

    Returns:
      The distance (>= 0; exactly 0 for identical sets up to round-off).

    Raises:
      ValueError: for fewer than 2 rows, different D, or non-finite values.
    """
    features_a = _as_feature_matrix(features_a, "features_a")
    features_b = _as_feature_matrix(features_b, "features_b")
    if features_a.shape[1] != features_b.shape[1]:
        raise ValueError(f"feature sizes differ: {features_a.shape[1]} and "
                         f"{features_b.shape[1]}")
    factor_a, factor_b = _covariance_factor(features_a), _covariance_factor(features_b)
    trace_root = np.sum(np.linalg.svd(factor_a @ factor_b.T, compute_uv=False))
    distance = (np.sum((features_a.mean(axis=0) - features_b.mean(axis=0)) ** 2)
                + np.sum(factor_a ** 2) + np.sum(factor_b ** 2) - 2 * trace_root)
    return float(max(distance, 0.0))


def kernel_inception_distance(features_a, features_b, subsets: int = 100,
                              subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """KID: the unbiased MMD² with the kernel ``k(x, y) = (x·y / D + 1)³`` (Bińkowski et al.
    2018), averaged over random subsets.

    Unlike FID it is unbiased, so it can be compared across sample sizes and is near 0 (it
    can be slightly negative) for two samples of one distribution.

    Args:
      features_a: float[N_a, D].
      features_b: float[N_b, D].
      subsets: the number of random subset pairs.
      subset_size: rows per subset, capped at ``min(N_a, N_b)``; each subset is drawn
        without replacement.
      seed: seed of the subset draws.

    Returns:
      (mean, std) of the per-subset MMD² estimates.

    Raises:
      ValueError: for fewer than 2 rows, different D, non-finite values or bad subset counts.
    """
    features_a = _as_feature_matrix(features_a, "features_a")
    features_b = _as_feature_matrix(features_b, "features_b")
    if features_a.shape[1] != features_b.shape[1]:
        raise ValueError(f"feature sizes differ: {features_a.shape[1]} and "
                         f"{features_b.shape[1]}")
    if subsets < 1 or subset_size < 2:
        raise ValueError(f"need subsets >= 1 and subset_size >= 2, got {subsets}, "
                         f"{subset_size}")
    size = min(subset_size, len(features_a), len(features_b))
    dim = features_a.shape[1]
    rng = np.random.default_rng(seed)
    estimates = []
    for _ in range(subsets):
        x = features_a[rng.choice(len(features_a), size, replace=False)]
        y = features_b[rng.choice(len(features_b), size, replace=False)]
        k_xx = (x @ x.T / dim + 1) ** 3
        k_yy = (y @ y.T / dim + 1) ** 3
        k_xy = (x @ y.T / dim + 1) ** 3
        within = ((k_xx.sum() - np.trace(k_xx)) + (k_yy.sum() - np.trace(k_yy))) / (
            size * (size - 1))
        estimates.append(within - 2 * k_xy.mean())
    return float(np.mean(estimates)), float(np.std(estimates))
