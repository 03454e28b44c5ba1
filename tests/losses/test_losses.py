"""Golden-value, invariant and robustness tests for vec2face_tf.losses."""

import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from vec2face_tf import losses


def _numpy(tensor):
    return np.asarray(tensor)


# --- reduction ------------------------------------------------------------------------------

def test_reduction_none_returns_per_example_and_default_divides_by_local_batch():
    per_example = tf.constant([1.0, 2.0, 6.0])
    np.testing.assert_allclose(losses.reduce_per_example(per_example, "none"), [1, 2, 6])
    # (1 + 2 + 6) / 3 = 3
    assert float(losses.reduce_per_example(per_example)) == pytest.approx(3.0)
    # (1 + 2 + 6) / 12 = 0.75: a replica's share of a global batch of 12
    assert float(losses.reduce_per_example(per_example, global_batch_size=12)) == \
        pytest.approx(0.75)


def test_unknown_reduction_is_named():
    with pytest.raises(ValueError, match="unknown reduction 'mean'"):
        losses.reduce_per_example(tf.constant([1.0]), "mean")


# --- adversarial ----------------------------------------------------------------------------

def test_discriminator_nonsaturating_golden():
    real, fake = tf.constant([0.0, 2.0]), tf.constant([0.0, -1.0])
    # row 0: softplus(0) + softplus(0) = 2 ln 2 = 1.3862944
    # row 1: softplus(-2) + softplus(-1) = ln(1 + e^-2) + ln(1 + e^-1)
    #        = 0.1269280 + 0.3132617 = 0.4401897; mean = 0.9132420
    per_example = losses.discriminator_adversarial_loss(real, fake, reduction="none")
    np.testing.assert_allclose(per_example, [1.3862944, 0.4401897], rtol=1e-6)
    assert float(losses.discriminator_adversarial_loss(real, fake)) == \
        pytest.approx(0.9132420, rel=1e-6)


def test_discriminator_hinge_golden_and_patch_logits_are_averaged():
    # row 0: relu(1 - 0.5) + relu(1 - 0.5) = 1; row 1: relu(1 - 2) + relu(1 + 1) = 2
    real, fake = tf.constant([0.5, 2.0]), tf.constant([-0.5, 1.0])
    per_example = losses.discriminator_adversarial_loss(real, fake, "hinge", reduction="none")
    np.testing.assert_allclose(per_example, [1.0, 2.0])
    # A [B, 2] patch output whose mean per row is the same logit gives the same loss.
    patch_real = tf.constant([[0.0, 1.0], [1.5, 2.5]])
    patch_fake = tf.constant([[-1.0, 0.0], [0.5, 1.5]])
    np.testing.assert_allclose(
        losses.discriminator_adversarial_loss(patch_real, patch_fake, "hinge",
                                              reduction="none"), [1.0, 2.0])


def test_generator_adversarial_golden():
    fake = tf.constant([0.0, -1.0])
    # softplus(0) = ln 2 = 0.6931472; softplus(1) = ln(1 + e) = 1.3132617
    np.testing.assert_allclose(losses.generator_adversarial_loss(fake, reduction="none"),
                               [0.6931472, 1.3132617], rtol=1e-6)
    # hinge: -fake = [0, 1], mean 0.5
    assert float(losses.generator_adversarial_loss(fake, "hinge")) == pytest.approx(0.5)


def test_nonsaturating_generator_gradient_pushes_fake_logits_up():
    fake = tf.Variable([-2.0, 0.0, 3.0])
    with tf.GradientTape() as tape:
        loss = losses.generator_adversarial_loss(fake)
    assert np.all(_numpy(tape.gradient(loss, fake)) < 0)


def test_adversarial_rejects_unknown_kind_and_batch_mismatch():
    with pytest.raises(ValueError, match="unknown adversarial loss kind 'wasserstein'"):
        losses.generator_adversarial_loss(tf.zeros([2]), "wasserstein")
    with pytest.raises(ValueError, match="unknown adversarial loss kind"):
        losses.discriminator_adversarial_loss(tf.zeros([2]), tf.zeros([2]), "lsgan")
    with pytest.raises(ValueError, match="same batch size, got 2 and 3"):
        losses.discriminator_adversarial_loss(tf.zeros([2]), tf.zeros([3]))
    with pytest.raises(ValueError, match="batch dimension"):
        losses.generator_adversarial_loss(tf.constant(1.0))


def test_r1_penalty_golden():
    gradients = tf.reshape(tf.constant([3.0, 4.0, 1.0, 0.0]), [2, 1, 2, 1])
    # 0.5 * (9 + 16) = 12.5 and 0.5 * 1 = 0.5; gamma 10 gives 125 and 5 (mean 65)
    np.testing.assert_allclose(losses.r1_penalty(gradients, reduction="none"), [12.5, 0.5])
    assert float(losses.r1_penalty(gradients, gamma=10.0)) == pytest.approx(65.0)


# --- bijective metric ---------------------------------------------------------------------

def _two_level_latents():
    level_a = tf.reshape(tf.constant([1.0, 2.0]), [1, 1, 1, 2])
    level_b = tf.reshape(tf.constant([3.0]), [1, 1, 1, 1])
    return [level_a, level_b], [tf.zeros_like(level_a), tf.ones_like(level_b)]


def test_bijective_distance_golden_equal_and_level_weights():
    latents_a, latents_b = _two_level_latents()
    # level 0: (1-0)^2 + (2-0)^2 = 5 over 2 elements; level 1: (3-1)^2 = 4 over 1 element.
    # Equal weights: (5 + 4) / 3 = 3.
    np.testing.assert_allclose(losses.bijective_distance(latents_a, latents_b), [3.0])
    # Weights (1, 2): (1*5 + 2*4) / (1*2 + 2*1) = 13 / 4 = 3.25.
    np.testing.assert_allclose(losses.bijective_distance(latents_a, latents_b, (1.0, 2.0)),
                               [3.25], rtol=1e-6)
    # FlowConfig's empty tuple means equal weights.
    np.testing.assert_allclose(losses.bijective_distance(latents_a, latents_b, ()), [3.0])


def test_pairwise_distance_matches_rowwise_and_brute_force():
    rng = np.random.default_rng(0)
    latents_a = [rng.normal(size=(3, 4, 4, 2)).astype(np.float32),
                 rng.normal(size=(3, 2, 2, 4)).astype(np.float32)]
    latents_b = [rng.normal(size=(5, 4, 4, 2)).astype(np.float32),
                 rng.normal(size=(5, 2, 2, 4)).astype(np.float32)]
    weights = (0.5, 3.0)
    pairwise = _numpy(losses.pairwise_bijective_distance(latents_a, latents_b, weights))
    assert pairwise.shape == (3, 5)
    for i in range(3):
        for j in range(5):
            weighted = sum(w * np.sum((a[i] - b[j]) ** 2)
                           for w, a, b in zip(weights, latents_a, latents_b))
            expected = weighted / (0.5 * 32 + 3.0 * 16)
            assert pairwise[i, j] == pytest.approx(expected, rel=1e-4)
    rowwise = losses.bijective_distance([x[:3] for x in latents_b], latents_a, weights)
    np.testing.assert_allclose(np.diag(pairwise[:, :3]), rowwise, rtol=1e-4)


def test_pairwise_distance_of_a_batch_with_itself_has_zero_diagonal_and_is_symmetric():
    latents = [tf.random.stateless_normal([4, 4, 4, 3], seed=[1, 2]) * 100.0]
    distances = _numpy(losses.pairwise_bijective_distance(latents, latents))
    assert np.all(distances >= 0)
    np.testing.assert_allclose(np.diag(distances), 0.0, atol=1e-2)
    np.testing.assert_allclose(distances, distances.T, rtol=1e-5)


@pytest.mark.parametrize("latents_b, weights, message", [
    ([tf.zeros([1, 1, 1, 2])], None, "2 levels but latents_b has 1"),
    ([tf.zeros([1, 1, 1, 3]), tf.zeros([1, 1, 1, 1])], None, "per-example shape"),
    (None, (1.0,), "1 entries for 2 latent levels"),
    (None, (0.0, 0.0), "not all zero"),
    (None, (1.0, -1.0), "non-negative"),
    (None, (1.0, float("nan")), "non-negative"),
])
def test_bijective_distance_rejects_bad_levels_and_weights(latents_b, weights, message):
    latents_a, default_b = _two_level_latents()
    with pytest.raises(ValueError, match=message):
        losses.bijective_distance(latents_a, latents_b or default_b, weights)


def test_bijective_distance_rejects_a_bare_tensor_and_no_levels():
    with pytest.raises(ValueError, match="wrap it as"):
        losses.bijective_distance(tf.zeros([2, 3]), tf.zeros([2, 3]))
    with pytest.raises(ValueError, match="at least one latent level"):
        losses.bijective_distance([], [])


# --- triplet ------------------------------------------------------------------------------

def test_batch_hard_triplet_golden():
    # One level, one value per example, so d_H is the squared difference.
    real = [tf.reshape(tf.constant([0.0, 2.0, 1.0, 4.0]), [4, 1, 1, 1])]
    reconstructions = [tf.reshape(tf.constant([0.0, 2.0, 1.0, 4.0]), [4, 1, 1, 1])]
    labels = tf.constant([0, 0, 1, 1])
    # distances row i = (r_i - x_j)^2:
    #   r=0: [0, 4, 1, 16]  pos max(0, 4) = 4, neg min(1, 16) = 1 -> 4 - 1 + 0.5 = 3.5
    #   r=2: [4, 0, 1, 4]   pos 4, neg min(1, 4) = 1             -> 3.5
    #   r=1: [1, 1, 0, 9]   pos max(0, 9) = 9, neg min(1, 1) = 1 -> 8.5
    #   r=4: [16, 4, 9, 0]  pos max(9, 0) = 9, neg min(16, 4) = 4 -> 5.5
    per_example = losses.batch_hard_triplet_loss(reconstructions, real, labels, margin=0.5,
                                                 reduction="none")
    np.testing.assert_allclose(per_example, [3.5, 3.5, 8.5, 5.5])
    # mean: 21 / 4 = 5.25; as one replica of a global batch of 8: 21 / 8 = 2.625
    assert float(losses.batch_hard_triplet_loss(reconstructions, real, labels, 0.5)) == \
        pytest.approx(5.25)
    assert float(losses.batch_hard_triplet_loss(reconstructions, real, labels, 0.5,
                                                global_batch_size=8)) == pytest.approx(2.625)


def test_batch_hard_triplet_is_zero_when_identities_are_well_separated():
    real = [tf.reshape(tf.constant([0.0, 0.1, 10.0, 10.1]), [4, 1])]
    loss = losses.batch_hard_triplet_loss(real, real, tf.constant([7, 7, 9, 9]), margin=1.0)
    assert float(loss) == 0.0


def test_batch_hard_triplet_masks_rows_without_positive_or_negative():
    real = [tf.reshape(tf.constant([0.0, 3.0]), [2, 1])]
    reconstructions = [tf.reshape(tf.constant([1.0, 1.0, 1.0]), [3, 1])]
    # Row 0 (id 0): pos (1-0)^2 = 1, neg (1-3)^2 = 4 -> relu(1 - 4 + 5) = 2.
    # Row 1 (id 2): no real image of id 2 -> masked to 0.
    # Row 2 (id 0): same as row 0 -> 2.
    # Then, against reals that are all id 0, rows 0 and 2 have no negative (and row 1 still
    # no positive): every row is masked, the loss is 0 and its gradient exactly 0.
    labels = tf.constant([0, 2, 0])
    per_example = losses.batch_hard_triplet_loss(reconstructions, real, labels, margin=5.0,
                                                 real_labels=tf.constant([0, 1]),
                                                 reduction="none")
    np.testing.assert_allclose(per_example, [2.0, 0.0, 2.0])
    variable = tf.Variable(reconstructions[0])
    with tf.GradientTape() as tape:
        loss = losses.batch_hard_triplet_loss([variable], real, labels, margin=5.0,
                                              real_labels=tf.constant([0, 0]))
    assert float(loss) == 0.0
    gradient = _numpy(tape.gradient(loss, variable))
    assert np.all(np.isfinite(gradient)) and np.all(gradient == 0)


def test_batch_hard_triplet_accepts_string_labels_and_rejects_bad_ones():
    real = [tf.reshape(tf.constant([0.0, 2.0]), [2, 1])]
    loss = losses.batch_hard_triplet_loss(real, real, tf.constant(["ann", "bob"]), margin=0.5,
                                          reduction="none")
    # each row: pos = 0 (itself), neg = 4 -> relu(0 - 4 + 0.5) = 0
    np.testing.assert_allclose(loss, [0.0, 0.0])
    with pytest.raises(ValueError, match="margin must be >= 0"):
        losses.batch_hard_triplet_loss(real, real, tf.constant([0, 1]), margin=-1.0)
    with pytest.raises(ValueError, match="integer or string"):
        losses.batch_hard_triplet_loss(real, real, tf.constant([0.0, 1.0]), margin=1.0)
    with pytest.raises(ValueError, match="rank-1"):
        losses.batch_hard_triplet_loss(real, real, tf.constant([[0, 1]]), margin=1.0)
    with pytest.raises(ValueError, match="reconstruction_latents and labels"):
        losses.batch_hard_triplet_loss(real, real, tf.constant([0, 1, 2]), margin=1.0)


# --- cosine losses ------------------------------------------------------------------------

def test_identity_loss_golden_for_non_unit_inputs():
    student = tf.constant([[1.0, 0.0], [3.0, 4.0]])
    target = tf.constant([[0.0, 2.0], [4.0, 3.0]])
    # row 0: orthogonal -> 1 - 0 = 1; row 1: (12 + 12) / (5 * 5) = 0.96 -> 0.04; mean 0.52
    np.testing.assert_allclose(losses.identity_loss(student, target, reduction="none"),
                               [1.0, 0.04], rtol=1e-5)
    assert float(losses.identity_loss(student, target)) == pytest.approx(0.52, rel=1e-5)
    # scale invariance: 1 - cos is unchanged by positive scaling
    assert float(losses.identity_loss(student * 7.0, target * 0.01)) == \
        pytest.approx(0.52, rel=1e-5)


def test_distillation_loss_golden_with_and_without_center():
    student, teacher = tf.constant([[2.0, 1.0]]), tf.constant([[1.0, 2.0]])
    # raw: cos = (2 + 2) / (sqrt 5 * sqrt 5) = 0.8 -> 0.2
    assert float(losses.distillation_loss(student, teacher)) == pytest.approx(0.2, rel=1e-5)
    # centred on (1, 1): (1, 0) vs (0, 1) -> cos 0 -> 1
    assert float(losses.distillation_loss(student, teacher, center=tf.constant([1.0, 1.0]))) \
        == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"center must have shape \[D\]"):
        losses.distillation_loss(student, teacher, center=tf.constant([1.0, 1.0, 1.0]))


@pytest.mark.parametrize("loss_fn", [
    losses.identity_loss,
    losses.distillation_loss,
    lambda student, target: losses.distillation_loss(student, target, center=target[0]),
])
def test_cosine_losses_are_nan_safe_for_zero_vectors(loss_fn):
    student = tf.Variable([[0.0, 0.0, 0.0], [1.0, 2.0, 2.0]])
    target = tf.constant([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    with tf.GradientTape() as tape:
        loss = loss_fn(student, target)
    gradient = _numpy(tape.gradient(loss, student))
    assert np.isfinite(float(loss))
    assert np.all(np.isfinite(gradient))


def test_zero_vector_has_cosine_zero():
    np.testing.assert_allclose(
        losses.identity_loss(tf.zeros([2, 4]), tf.ones([2, 4]), reduction="none"), [1.0, 1.0])


def test_cosine_losses_reject_bad_shapes():
    with pytest.raises(ValueError, match=r"must have shape \[B, D\]"):
        losses.identity_loss(tf.zeros([4]), tf.zeros([4]))
    with pytest.raises(ValueError, match="same shape"):
        losses.identity_loss(tf.zeros([2, 4]), tf.zeros([2, 3]))


# --- L1 -----------------------------------------------------------------------------------

def test_l1_reconstruction_golden():
    generated = tf.reshape(tf.constant([1.0, 2.0, 0.0, 0.0]), [2, 1, 2, 1])
    real = tf.reshape(tf.constant([0.0, 0.0, 0.0, -4.0]), [2, 1, 2, 1])
    # row 0: (1 + 2) / 2 = 1.5; row 1: (0 + 4) / 2 = 2; mean 1.75
    np.testing.assert_allclose(losses.l1_reconstruction_loss(generated, real, reduction="none"),
                               [1.5, 2.0])
    assert float(losses.l1_reconstruction_loss(generated, real)) == pytest.approx(1.75)
    with pytest.raises(ValueError, match="same shape"):
        losses.l1_reconstruction_loss(generated, tf.zeros([2, 2, 2, 1]))


# --- graph mode and distribution ----------------------------------------------------------

def test_losses_trace_under_tf_function_with_unknown_batch_size():
    spec = tf.TensorSpec([None, 2, 2, 1], tf.float32)

    @tf.function(input_signature=[spec, spec, tf.TensorSpec([None], tf.int32)])
    def total(reconstructions, real, labels):
        vectors_a = tf.reshape(reconstructions, [-1, 4])
        vectors_b = tf.reshape(real, [-1, 4])
        return (losses.batch_hard_triplet_loss([reconstructions], [real], labels, 0.1)
                + losses.identity_loss(vectors_a, vectors_b)
                + losses.l1_reconstruction_loss(reconstructions, real)
                + losses.discriminator_adversarial_loss(vectors_a, vectors_b, "hinge"))

    rng = np.random.default_rng(3)
    reconstructions = rng.normal(size=(4, 2, 2, 1)).astype(np.float32)
    real = rng.normal(size=(4, 2, 2, 1)).astype(np.float32)
    labels = np.array([0, 0, 1, 1], np.int32)
    eager = (losses.batch_hard_triplet_loss([reconstructions], [real], labels, 0.1)
             + losses.identity_loss(reconstructions.reshape(4, 4), real.reshape(4, 4))
             + losses.l1_reconstruction_loss(reconstructions, real)
             + losses.discriminator_adversarial_loss(reconstructions.reshape(4, 4),
                                                     real.reshape(4, 4), "hinge"))
    assert float(total(reconstructions, real, labels)) == pytest.approx(float(eager), rel=1e-5)
    with pytest.raises(tf.errors.InvalidArgumentError, match="same batch size"):
        total(reconstructions, real[:3], labels)


_MIRRORED_SCRIPT = textwrap.dedent("""
    import numpy as np
    import tensorflow as tf
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0],
        [tf.config.LogicalDeviceConfiguration()] * 2)
    from vec2face_tf import losses

    real = np.array([0.3, -1.0, 2.0, 0.5], np.float32)
    fake = np.array([1.0, 0.0, -2.0, 0.7], np.float32)
    single = float(losses.discriminator_adversarial_loss(real, fake))
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    dataset = tf.data.Dataset.from_tensor_slices((real, fake)).batch(4)
    batch = next(iter(strategy.experimental_distribute_dataset(dataset)))

    @tf.function
    def replica_loss(real, fake):
        return losses.discriminator_adversarial_loss(real, fake)

    per_replica = strategy.run(replica_loss, args=batch)
    mirrored = float(strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None))
    print("REPLICAS", strategy.num_replicas_in_sync, "SINGLE", single, "MIRRORED", mirrored)
""")


def test_sum_over_replicas_equals_single_device_mean():
    result = subprocess.run([sys.executable, "-c", _MIRRORED_SCRIPT], capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    words = result.stdout.split()
    replicas = int(words[words.index("REPLICAS") + 1])
    single = float(words[words.index("SINGLE") + 1])
    mirrored = float(words[words.index("MIRRORED") + 1])
    assert replicas == 2
    expected = np.mean(np.log1p(np.exp(-np.array([0.3, -1.0, 2.0, 0.5])))
                       + np.log1p(np.exp(np.array([1.0, 0.0, -2.0, 0.7]))))
    assert single == pytest.approx(expected, rel=1e-6)
    assert mirrored == pytest.approx(single, rel=1e-6)
    assert math.isfinite(mirrored)


def test_identity_loss_with_center_golden():
    # Student (1, 1) and target (1, 0), centre (0, 1): centred vectors are (1, 0) and (1, -1),
    # cos = 1 / sqrt(2), loss = 1 - 0.70710678 = 0.29289322.
    loss = losses.identity_loss(tf.constant([[1.0, 1.0]]), tf.constant([[1.0, 0.0]]),
                                center=tf.constant([0.0, 1.0]), reduction="none")
    np.testing.assert_allclose(loss.numpy(), [0.29289322], atol=1e-6)


def test_relational_cosine_loss_golden():
    # Student pairs at 90 degrees, teacher pairs at 60 degrees (cos 0.5): every one of the
    # 2 ordered off-diagonal pairs differs by 0.5, so the loss is 0.25.
    student = tf.constant([[1.0, 0.0], [0.0, 2.0]])
    teacher = tf.constant([[1.0, 0.0], [0.5, np.sqrt(3) / 2]])
    assert float(losses.relational_cosine_loss(student, teacher)) == pytest.approx(0.25,
                                                                                   rel=1e-5)
    # Equal geometry, whatever the rotation between the two spaces: zero.
    rotation = np.array([[0.0, -1.0], [1.0, 0.0]], np.float32)
    assert float(losses.relational_cosine_loss(teacher @ rotation, teacher)) == \
        pytest.approx(0.0, abs=1e-6)
    # Three vectors, with a centre: hand-computed mean of the six squared differences.
    student = np.array([[2.0, 1.0], [1.0, 2.0], [1.0, 1.0]], np.float32)
    teacher = np.array([[1.0, 2.0], [2.0, 1.0], [2.0, 2.0]], np.float32)
    center = np.array([1.0, 1.0], np.float32)
    # Centred: student (1,0), (0,1), (0,0); teacher (0,1), (1,0), (1,1). A zero row
    # normalises to zero (cosine 0). Student cosines: s01 = 0, s02 = s12 = 0; teacher
    # cosines: t01 = 0, t02 = t12 = 1/sqrt(2); mean over 6 ordered pairs = 4 * 0.5 / 6.
    assert float(losses.relational_cosine_loss(student, teacher, center=center)) == \
        pytest.approx(4 * 0.5 / 6, rel=1e-5)
    with pytest.raises(ValueError, match="at least 2 vectors"):
        losses.relational_cosine_loss(student[:1], teacher[:1])


def test_centred_cosine_golden():
    # After normalising, (3, 4) -> (0.6, 0.8) and (4, 3) -> (0.8, 0.6); minus the centre
    # (0.6, 0.6) they are (0, 0.2) and (0.2, 0): orthogonal, so 0, while the raw cosine is
    # 0.96. Against itself, 1.
    student = tf.constant([[3.0, 4.0], [3.0, 4.0]])
    teacher = tf.constant([[4.0, 3.0], [30.0, 40.0]])
    np.testing.assert_allclose(
        losses.centred_cosine(student, teacher, tf.constant([0.6, 0.6])), [0.0, 1.0], atol=1e-6)


# --- perceptual -----------------------------------------------------------------------------

def _perceptual_maps():
    # Two maps, batch of 2; map 1 has two values per example, map 2 one.
    generated = [tf.constant([[[[0.0, -1.0]]], [[[2.0, 0.0]]]]), tf.constant([[2.0], [0.5]])]
    real = [tf.constant([[[[1.0, -1.0]]], [[[2.0, 2.0]]]]), tf.constant([[4.0], [0.5]])]
    return generated, real


def test_perceptual_loss_golden():
    generated, real = _perceptual_maps()
    # map 1: example 0 mean|g-r| = 0.5 over mean|r| = 1 -> 0.5; example 1: 1 / 2 -> 0.5
    # map 2: example 0: 2 / 4 -> 0.5; example 1: 0 / 0.5 -> 0
    # per example, the mean over maps: 0.5 and 0.25; over the batch 0.375
    np.testing.assert_allclose(losses.perceptual_loss(generated, real, reduction="none"),
                               [0.5, 0.25], rtol=1e-5)
    assert float(losses.perceptual_loss(generated, real)) == pytest.approx(0.375, rel=1e-5)
    assert float(losses.perceptual_loss(generated, real, global_batch_size=4)) == \
        pytest.approx(0.1875, rel=1e-5)


def test_perceptual_loss_is_scale_free_per_map_and_zero_for_equal_maps():
    generated, real = _perceptual_maps()
    scaled_generated = [generated[0] * 1000.0, generated[1]]
    scaled_real = [real[0] * 1000.0, real[1]]
    np.testing.assert_allclose(losses.perceptual_loss(scaled_generated, scaled_real, "none"),
                               losses.perceptual_loss(generated, real, "none"), rtol=1e-5)
    assert float(losses.perceptual_loss(real, real)) == 0.0


def test_perceptual_loss_gradient_reaches_the_generated_maps_only():
    generated, real = _perceptual_maps()
    generated = [tf.Variable(m) for m in generated]
    real = [tf.Variable(m) for m in real]
    with tf.GradientTape() as tape:
        loss = losses.perceptual_loss(generated, real)
    gradients = tape.gradient(loss, generated + real)
    assert all(g is not None and float(tf.reduce_sum(tf.abs(g))) > 0 for g in gradients[:2])
    assert all(g is None for g in gradients[2:])


def test_perceptual_loss_rejects_mismatched_maps():
    generated, real = _perceptual_maps()
    with pytest.raises(ValueError, match="same, non-zero number"):
        losses.perceptual_loss(generated, real[:1])
    with pytest.raises(ValueError, match="same, non-zero number"):
        losses.perceptual_loss([], [])
    with pytest.raises(ValueError):
        losses.perceptual_loss([generated[0]], [tf.zeros([2, 1, 1, 3])])


# --- DiffAugment ----------------------------------------------------------------------------

def test_diff_augment_spec_is_parsed_and_unknown_names_are_refused():
    assert losses.parse_diff_augment("") == ()
    assert losses.parse_diff_augment(" color, translation ") == ("color", "translation")
    with pytest.raises(ValueError, match="unknown augmentation"):
        losses.parse_diff_augment("color,flip")


def test_diff_augment_is_seeded_and_keeps_shape():
    images = tf.random.stateless_uniform([4, 16, 16, 3], [1, 2], -1.0, 1.0)
    kinds = losses.DIFF_AUGMENT_KINDS
    first = losses.diff_augment(images, kinds, tf.constant([3, 4]))
    again = losses.diff_augment(images, kinds, tf.constant([3, 4]))
    other = losses.diff_augment(images, kinds, tf.constant([3, 5]))
    assert first.shape == images.shape
    np.testing.assert_array_equal(first, again)
    assert float(tf.reduce_max(tf.abs(first - other))) > 0.1
    np.testing.assert_array_equal(losses.diff_augment(images, (), tf.constant([3, 4])), images)


def test_diff_augment_of_a_split_batch_is_the_whole_batch_augmented():
    # What each of two replicas computes for its half of a global batch of 6.
    images = tf.random.stateless_uniform([6, 16, 16, 3], [4, 2], -1.0, 1.0)
    kinds, seed = losses.DIFF_AUGMENT_KINDS, tf.constant([9, 1])
    whole = losses.diff_augment(images, kinds, seed)
    halves = [losses.diff_augment(images[first:first + 3], kinds, seed, first_row=first,
                                  total_rows=6) for first in (0, 3)]
    np.testing.assert_array_equal(np.concatenate(halves), whole)
    # Drawn for 3 rows only, the second half would repeat the first half's transforms.
    alone = losses.diff_augment(images[3:], kinds, seed)
    assert float(tf.reduce_max(tf.abs(alone - whole[3:]))) > 0.1
    with pytest.raises(tf.errors.InvalidArgumentError, match="outside total_rows"):
        losses.diff_augment(images[3:], kinds, seed, first_row=4, total_rows=6)


def test_diff_augment_translation_shifts_pixels_and_zero_pads():
    images = tf.reshape(tf.range(1, 1 + 2 * 16 * 16, dtype=tf.float32), [2, 16, 16, 1])
    shifted = np.asarray(losses.diff_augment(images, ("translation",), tf.constant([0, 7])))
    source = np.asarray(images)
    for row in range(2):
        # Every pixel is a pixel of the same image or zero, and a translation by at most
        # 16 // 8 = 2 pixels keeps at least (16 - 2)^2 of them.
        values = shifted[row][shifted[row] != 0]
        assert set(values.tolist()) <= set(source[row].ravel().tolist())
        assert values.size >= 14 * 14
        found = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                 if np.array_equal(shifted[row, 2:14, 2:14],
                                   source[row, 2 - dy:14 - dy, 2 - dx:14 - dx])]
        assert len(found) == 1


def test_diff_augment_cutout_zeroes_at_most_a_quarter_and_gradients_flow():
    images = tf.Variable(tf.ones([8, 16, 16, 3]))
    with tf.GradientTape() as tape:
        out = losses.diff_augment(images, ("cutout",), tf.constant([5, 6]))
        total = tf.reduce_sum(out)
    zeroed = np.mean(np.asarray(out) == 0.0, axis=(1, 2, 3))
    assert np.all(zeroed <= 0.25 + 1e-6) and np.all(zeroed > 0.0)
    gradient = np.asarray(tape.gradient(total, images))
    # d out / d in is 1 outside the square and 0 inside it.
    np.testing.assert_array_equal(gradient, np.asarray(out))


def test_diff_augment_color_changes_each_image_by_its_own_draw():
    images = tf.zeros([3, 8, 8, 3]) + tf.constant([0.1, 0.2, 0.3])
    out = np.asarray(losses.diff_augment(images, ("color",), tf.constant([9, 9])))
    brightness_shift = out.mean(axis=(1, 2, 3)) - 0.2
    assert np.all(np.abs(brightness_shift) <= 0.5 + 1e-5)
    assert len(set(np.round(brightness_shift, 5).tolist())) == 3
