import numpy as np
import pytest

from vec2face_tf.evaluation import metrics


def test_pair_scores_golden():
    vectors = np.array([[1, 0], [1, 0], [0, 1], [0.6, 0.8]], np.float32)
    labels = np.array([0, 0, 1, 1])
    genuine, impostor = metrics.pair_scores(vectors, labels, block=3)
    # Genuine: (0,1) = 1.0, (2,3) = 0.8. Impostor: (0,2) 0, (0,3) 0.6, (1,2) 0, (1,3) 0.6.
    np.testing.assert_allclose(sorted(genuine), [0.8, 1.0], atol=1e-6)
    np.testing.assert_allclose(sorted(impostor), [0.0, 0.0, 0.6, 0.6], atol=1e-6)


def test_threshold_at_fmr_golden():
    # 1000 impostor scores 0.000, 0.001, ..., 0.999. FMR 1e-2 allows 10 false matches: the
    # threshold is the 11th highest score, 0.989, and exactly 10 scores lie above it.
    impostor = np.arange(1000) / 1000.0
    threshold = metrics.threshold_at_fmr(impostor, 1e-2)
    assert threshold.value == pytest.approx(0.989)
    assert threshold.false_matches == 10 and threshold.impostor_pairs == 1000
    assert metrics.success_rate(impostor, threshold) == pytest.approx(0.01)
    # A synthetic attack: 3 of 4 reconstructions score above 0.989.
    assert metrics.success_rate(np.array([0.99, 0.995, 1.0, 0.5]), threshold) == 0.75


def test_threshold_needs_enough_pairs():
    with pytest.raises(ValueError, match="FMR 0.001 needs >= 10000 impostor pairs, got 1000"):
        metrics.threshold_at_fmr(np.zeros(1000), 1e-3)
    supported = metrics.thresholds_at_fmrs(np.random.default_rng(0).random(20000))
    assert sorted(supported) == [1e-3, 1e-2]  # 1e-4 would need 10^5 pairs


def test_threshold_fmr_holds_on_random_scores():
    rng = np.random.default_rng(1)
    impostor = rng.normal(0.8, 0.05, 200_000)
    for fmr, threshold in metrics.thresholds_at_fmrs(impostor).items():
        assert np.mean(impostor > threshold.value) <= fmr
        # ... and it is the lowest such threshold: one step down lets too many through.
        lower = np.sort(impostor)[::-1][threshold.false_matches + 1]
        assert np.mean(impostor > lower) > fmr or lower == threshold.value


def test_nearest_neighbour_scores():
    gallery = np.array([[1, 0], [0, 1], [0.6, 0.8]], np.float32)
    probes = np.array([[0.8, 0.6], [0, 1]], np.float32)
    index, scores = metrics.nearest_neighbour_scores(probes, gallery)
    # Probe 0: cosines 0.8, 0.6, 0.96 -> gallery 2. Probe 1: 0, 1, 0.8 -> gallery 1.
    np.testing.assert_array_equal(index, [2, 1])
    np.testing.assert_allclose(scores, [0.96, 1.0], atol=1e-6)


def test_sar_with_ci_golden():
    # 1000 impostors 0.000 .. 0.999 put the FMR 1e-2 threshold at 0.989 (see above). Of 200
    # attacks, exactly 50 score 0.995 (pass) and 150 score 0.989 (equal to it: fail).
    threshold = metrics.threshold_at_fmr(np.arange(1000) / 1000.0, 1e-2)
    scores = np.concatenate([np.full(50, 0.995), np.full(150, 0.989)])
    result = metrics.sar_with_ci(scores, threshold)
    assert result["rate"] == 0.25 and result["n"] == 200
    # The binomial standard error is sqrt(0.25 * 0.75 / 200) = 0.0306: the 95 % interval is
    # about 0.25 -/+ 0.06.
    assert 0.17 < result["low"] < 0.21 and 0.29 < result["high"] < 0.33
    assert metrics.sar_with_ci(scores, threshold) == result  # Seeded.


def test_bootstrap_ci_covers_the_truth():
    # 100 simulated experiments of 200 Bernoulli(0.3) outcomes: a 95 % interval must cover
    # 0.3 about 95 times (>= 90 leaves room for the percentile method's small-sample bias).
    rng = np.random.default_rng(0)
    covered = 0
    for trial in range(100):
        low, high = metrics.bootstrap_ci(rng.random(200) < 0.3, seed=trial)
        covered += low <= 0.3 <= high
    assert covered >= 90
    # ... and it is no wider than it should be: 2 * 1.96 * sqrt(0.3 * 0.7 / 200) = 0.127.
    assert high - low == pytest.approx(0.127, abs=0.02)


def test_bootstrap_ci_continuous_and_other_statistics():
    rng = np.random.default_rng(1)
    values = rng.normal(0.5, 1.0, 400)  # Standard error of the mean 0.05.
    low, high = metrics.bootstrap_ci(values, resamples=1000)
    assert low < values.mean() < high
    assert high - low == pytest.approx(2 * 1.96 * 0.05, rel=0.15)
    # The median's bootstrap goes through the generic index path.
    low, high = metrics.bootstrap_ci(values, statistic=np.median, resamples=500)
    assert low < np.median(values) < high


def test_bootstrap_ci_paths_agree():
    # Binary outcomes take the multinomial path; with groups of one outcome each they still
    # do. Continuous outcomes shifted by a tiny jitter take the index path. Same interval.
    rng = np.random.default_rng(2)
    outcomes = rng.random(1000) < 0.4
    binary = metrics.bootstrap_ci(outcomes)
    singletons = metrics.bootstrap_ci(outcomes, groups=np.arange(1000), seed=5)
    jittered = metrics.bootstrap_ci(outcomes + rng.normal(0, 1e-6, 1000), resamples=1000)
    np.testing.assert_allclose(singletons, binary, atol=0.01)
    np.testing.assert_allclose(jittered, binary, atol=0.01)


def test_cluster_bootstrap_is_wider_for_correlated_groups():
    # 50 identities x 20 type-II pairs; within an identity every pair shares one outcome.
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(50), 20)
    outcomes = np.repeat(rng.random(50) < 0.3, 20)
    iid_low, iid_high = metrics.bootstrap_ci(outcomes)
    low, high = metrics.bootstrap_ci(outcomes, groups=groups)
    # iid pretends there are 1000 independent outcomes, clusters see 50: sqrt(20) x wider.
    assert (high - low) / (iid_high - iid_low) == pytest.approx(np.sqrt(20), rel=0.25)
    assert low <= outcomes.mean() <= high


def test_bootstrap_ci_rejects_bad_input():
    with pytest.raises(ValueError, match="non-empty 1-D"):
        metrics.bootstrap_ci([])
    with pytest.raises(ValueError, match="NaN"):
        metrics.bootstrap_ci([0.0, np.nan])
    with pytest.raises(ValueError, match="one label per outcome"):
        metrics.bootstrap_ci([0, 1, 1], groups=[0, 1])
    with pytest.raises(ValueError, match="only statistic=np.mean"):
        metrics.bootstrap_ci([0, 1], statistic=np.median, groups=[0, 1])
    with pytest.raises(ValueError, match="confidence"):
        metrics.bootstrap_ci([0, 1], confidence=95)


def test_bootstrap_ci_of_1e5_grouped_binary_outcomes_has_the_binomial_width():
    # Not timed (machines here are noisy; speed belongs in benchmarks): its values are checked.
    outcomes = np.random.default_rng(4).random(100_000) < 0.03
    low, high = metrics.bootstrap_ci(outcomes, groups=np.arange(100_000) // 3)
    assert low < outcomes.mean() < high
    # Independent outcomes: the mean of 100,000 has standard error sqrt(p (1 - p) / n) whatever
    # the grouping, so the 95 % interval spans about 2 x 1.96 of it.
    p = outcomes.mean()
    expected = 2 * 1.96 * np.sqrt(p * (1 - p) / outcomes.size)
    assert 0.85 * expected < high - low < 1.15 * expected


def test_verification_accuracy_separable_and_chance():
    rng = np.random.default_rng(5)
    separable = metrics.verification_accuracy(rng.uniform(0.9, 1.0, 3000),
                                              rng.uniform(0.0, 0.8, 3000))
    assert separable["mean"] == 1.0 and separable["std"] == 0.0
    assert len(separable["thresholds"]) == 10
    assert all(0.8 <= t <= 0.9 for t in separable["thresholds"])
    # Same distribution, 10x more impostors: balancing keeps chance at 0.5, not at 10/11
    # (what always answering "impostor" would score on the raw pairs).
    chance = metrics.verification_accuracy(rng.normal(size=2000), rng.normal(size=20000))
    assert chance["pairs_per_class"] == 2000
    assert chance["mean"] == pytest.approx(0.5, abs=0.03)


def test_verification_accuracy_golden():
    # Genuine ~ N(1, 1), impostor ~ N(-1, 1): the best threshold is 0 and the accuracy
    # Phi(1) = 0.8413.
    rng = np.random.default_rng(6)
    result = metrics.verification_accuracy(rng.normal(1, 1, 20000), rng.normal(-1, 1, 20000))
    assert result["mean"] == pytest.approx(0.8413, abs=0.01)
    assert np.all(np.abs(result["thresholds"]) < 0.1)
    assert 0 < result["std"] < 0.02
    with pytest.raises(ValueError, match="10 folds need >= 10 pairs of each class"):
        metrics.verification_accuracy(np.ones(5), np.zeros(100))


def test_frechet_distance_identical_and_golden_gaussians():
    rng = np.random.default_rng(7)
    features = rng.normal(size=(500, 16))
    assert metrics.frechet_distance(features, features) == pytest.approx(0, abs=1e-9)
    # Diagonal Gaussians: ||mu_a - mu_b||^2 + sum_i (sigma_a_i - sigma_b_i)^2.
    mean_a, mean_b = np.zeros(4), np.array([1.0, 0, 2, 0])
    variance_a, variance_b = np.array([1.0, 4, 9, 0]), np.array([4.0, 4, 1, 1])
    closed_form = 5 + np.sum((np.sqrt(variance_a) - np.sqrt(variance_b)) ** 2)  # 5 + 5 + 1
    assert metrics.frechet_distance_from_moments(
        mean_a, np.diag(variance_a), mean_b, np.diag(variance_b)) == pytest.approx(closed_form)
    # Samples of the same two Gaussians approach it.
    sample_a = mean_a + rng.normal(size=(200_000, 4)) * np.sqrt(variance_a)
    sample_b = mean_b + rng.normal(size=(200_000, 4)) * np.sqrt(variance_b)
    assert metrics.frechet_distance(sample_a, sample_b) == pytest.approx(closed_form, rel=0.01)


def test_frechet_distance_matches_sqrtm_and_handles_singular_covariances():
    from scipy import linalg

    rng = np.random.default_rng(8)
    a = rng.normal(size=(300, 8)) @ rng.normal(size=(8, 8))
    b = rng.normal(size=(300, 8)) @ rng.normal(size=(8, 8)) + 0.5
    mean_a, mean_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    reference = (np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b)
                 - 2 * np.trace(linalg.sqrtm(cov_a @ cov_b).real))
    assert metrics.frechet_distance(a, b) == pytest.approx(reference, rel=1e-8)
    # Fewer samples than dimensions (singular covariances, the FID-on-a-few-images case):
    # the data-factor route and the covariance route must agree.
    few_a, few_b = rng.normal(size=(6, 40)), rng.normal(size=(9, 40)) + 0.1
    via_moments = metrics.frechet_distance_from_moments(
        few_a.mean(0), np.cov(few_a, rowvar=False), few_b.mean(0), np.cov(few_b, rowvar=False))
    # (sqrt turns round-off in the zero eigenvalues into ~1e-8 each: rel 1e-6, not 1e-8.)
    assert metrics.frechet_distance(few_a, few_b) == pytest.approx(via_moments, rel=1e-6)
    assert metrics.frechet_distance(few_a, few_a) == pytest.approx(0, abs=1e-9)
    with pytest.raises(ValueError, match="feature sizes differ"):
        metrics.frechet_distance(few_a, few_b[:, :10])
    with pytest.raises(ValueError, match=r"\[N >= 2, D\]"):
        metrics.frechet_distance(few_a[:1], few_b)


def test_kernel_inception_distance():
    rng = np.random.default_rng(9)
    a, b = rng.normal(size=(400, 32)), rng.normal(size=(400, 32))
    same_mean, same_std = metrics.kernel_inception_distance(a, b, subsets=20, subset_size=200)
    assert abs(same_mean) < 3 * same_std + 1e-3  # Unbiased: ~0 for one distribution.
    shifted_mean, _ = metrics.kernel_inception_distance(a, b + 1.0, subsets=20,
                                                        subset_size=200)
    assert shifted_mean > 0.1 and shifted_mean > 20 * abs(same_mean)
    # Golden: one-dimensional sets {0, 0} and {1, 1}; k = (xy + 1)^3: k_xx = 1, k_yy = 8,
    # k_xy = 1, so MMD^2 = 1 + 8 - 2 = 7.
    mean, std = metrics.kernel_inception_distance(np.zeros((2, 1)), np.ones((2, 1)), subsets=3)
    assert mean == pytest.approx(7.0) and std == pytest.approx(0.0)


def test_sar_curve_golden():
    # 1,000 impostor scores 0.000 .. 0.999: at FMR f the threshold is the (floor(f n)+1)-th
    # highest, so 1e-1 -> 0.899, 1e-2 -> 0.989; 1e-3 needs 10^4 pairs and is left out.
    impostor = np.arange(1000) / 1000
    attack = np.array([0.5, 0.95, 0.995, 1.0])
    curve = metrics.sar_curve(impostor, {"attack": attack}, fmrs=(1e-1, 1e-2, 1e-3))
    assert curve["fmr"] == [1e-1, 1e-2]
    np.testing.assert_allclose(curve["threshold"], [0.899, 0.989])
    np.testing.assert_allclose(curve["attack"], [0.75, 0.5])
    assert metrics.CURVE_FMRS[0] == 0.1 and metrics.CURVE_FMRS[-1] == 1e-5
    assert len(metrics.CURVE_FMRS) == 21
