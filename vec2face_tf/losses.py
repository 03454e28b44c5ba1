"""DiBiGAN losses (DESIGN §1.6): pure functions over tensors, no Keras layers.

Every loss computes one value per example, in float32 (so mixed-precision inputs stay stable),
and then reduces it the way ``tf.distribute`` expects:

* ``reduction="none"``: the per-example values, shape ``[B]``;
* ``reduction="sum_over_batch_size"`` (default): the sum over the local batch divided by
  ``global_batch_size``. Left as ``None``, that is the local batch size times the number of
  replicas in sync (just the local batch size outside a strategy), the
  ``tf.nn.compute_average_loss`` convention. Summing the replicas' results then gives the same
  number as one device computing the mean of the whole global batch.

Cosines are taken after ``tf.math.l2_normalize``, whose epsilon keeps zero vectors finite in
value and gradient (a zero vector has cosine 0 with everything).
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

REDUCTIONS = ("none", "sum_over_batch_size")
ADVERSARIAL_KINDS = ("nonsaturating", "hinge")


def reduce_per_example(per_example_loss: tf.Tensor, reduction: str = "sum_over_batch_size",
                       global_batch_size: int | tf.Tensor | None = None) -> tf.Tensor:
    """Reduces per-example losses with the ``tf.nn.compute_average_loss`` convention.

    Args:
      per_example_loss: float[B], one loss value per example.
      reduction: ``"none"`` returns ``per_example_loss`` unchanged; ``"sum_over_batch_size"``
        returns ``sum(per_example_loss) / global_batch_size``.
      global_batch_size: integer divisor; ``None`` means the local batch size times the
        number of replicas in sync. Must be given explicitly when called in a strategy's
        cross-replica context.

    Returns:
      float[B] for ``reduction="none"``, otherwise a float scalar.

    Raises:
      ValueError: for an unknown ``reduction``.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; choose one of {REDUCTIONS}")
    if reduction == "none":
        return per_example_loss
    return tf.nn.compute_average_loss(per_example_loss, global_batch_size=global_batch_size)


def discriminator_adversarial_loss(real_logits: tf.Tensor, fake_logits: tf.Tensor,
                                   kind: str = "nonsaturating",
                                   reduction: str = "sum_over_batch_size",
                                   global_batch_size: int | tf.Tensor | None = None,
                                   ) -> tf.Tensor:
    """The discriminator's adversarial loss on a batch of real and a batch of fake images.

    ``nonsaturating``: ``softplus(-real) + softplus(fake)`` (the logistic GAN loss);
    ``hinge``: ``relu(1 - real) + relu(1 + fake)``. Logits with more than one value per
    example (a patch discriminator) are averaged per example first.

    Args:
      real_logits: float[B] or float[B, ...], discriminator logits on real images.
      fake_logits: float[B] or float[B, ...], discriminator logits on generated images; the
        same batch size as ``real_logits``.
      kind: ``"nonsaturating"`` or ``"hinge"``.
      reduction: see ``reduce_per_example``.
      global_batch_size: see ``reduce_per_example``.

    Returns:
      The loss, float[B] or a scalar depending on ``reduction``.

    Raises:
      ValueError: for an unknown ``kind`` or mismatched batch sizes.
    """
    _check_adversarial_kind(kind)
    real = _per_example_logits(real_logits, "real_logits")
    fake = _per_example_logits(fake_logits, "fake_logits")
    real, fake = _check_same_batch(real, fake, "real_logits", "fake_logits")
    if kind == "nonsaturating":
        per_example = tf.nn.softplus(-real) + tf.nn.softplus(fake)
    else:
        per_example = tf.nn.relu(1.0 - real) + tf.nn.relu(1.0 + fake)
    return reduce_per_example(per_example, reduction, global_batch_size)


def generator_adversarial_loss(fake_logits: tf.Tensor, kind: str = "nonsaturating",
                               reduction: str = "sum_over_batch_size",
                               global_batch_size: int | tf.Tensor | None = None) -> tf.Tensor:
    """The generator's adversarial loss: ``softplus(-fake)`` (nonsaturating) or ``-fake`` (hinge).

    Args:
      fake_logits: float[B] or float[B, ...], discriminator logits on generated images.
      kind: ``"nonsaturating"`` or ``"hinge"``.
      reduction: see ``reduce_per_example``.
      global_batch_size: see ``reduce_per_example``.

    Returns:
      The loss, float[B] or a scalar depending on ``reduction``.

    Raises:
      ValueError: for an unknown ``kind``.
    """
    _check_adversarial_kind(kind)
    fake = _per_example_logits(fake_logits, "fake_logits")
    if kind == "nonsaturating":
        per_example = tf.nn.softplus(-fake)
    else:
        per_example = -fake
    return reduce_per_example(per_example, reduction, global_batch_size)


def r1_penalty(real_gradients: tf.Tensor, gamma: float = 1.0,
               reduction: str = "sum_over_batch_size",
               global_batch_size: int | tf.Tensor | None = None) -> tf.Tensor:
    """R1 gradient penalty ``gamma / 2 * |dD(x)/dx|^2`` on real images (Mescheder et al. 2018).

    The caller computes the gradient of the discriminator's summed logits with respect to the
    real images (for example with ``tf.GradientTape``), so this stays a pure function.

    Args:
      real_gradients: float[B, ...], gradient of D's output with respect to each real image.
      gamma: multiplier; the default 1.0 gives ``0.5 * squared L2 norm`` per example.
      reduction: see ``reduce_per_example``.
      global_batch_size: see ``reduce_per_example``.

    Returns:
      The penalty, float[B] or a scalar depending on ``reduction``.

    Raises:
      ValueError: if ``real_gradients`` has no batch dimension.
    """
    gradients = _flatten_per_example(real_gradients, "real_gradients")
    per_example = 0.5 * gamma * tf.reduce_sum(tf.square(gradients), axis=1)
    return reduce_per_example(per_example, reduction, global_batch_size)


def bijective_distance(latents_a: Sequence[tf.Tensor], latents_b: Sequence[tf.Tensor],
                       level_weights: Sequence[float] | None = None) -> tf.Tensor:
    """The bijective metric ``d_H`` between matching rows of two batches of flow latents.

    ``d_H`` is the mean of the squared latent differences over every element of every level.
    With ``level_weights``, each element of level ``l`` counts ``w_l`` times in that mean:
    ``d_H = sum_l w_l * sum((a_l - b_l)^2) / sum_l w_l * n_l`` (``n_l`` elements per example
    in level ``l``), so equal weights give the plain mean.

    Args:
      latents_a: the flow's latent levels for batch A, each float[B, h, w, c] (any rank >= 2).
      latents_b: the same levels for batch B, with the same shapes.
      level_weights: one non-negative weight per level, not all zero; ``None`` or empty
        (``FlowConfig.level_weights`` default) means equal weights.

    Returns:
      float[B], the distance between row i of A and row i of B.

    Raises:
      ValueError: for mismatched levels or shapes, or bad weights.
    """
    flat_a, flat_b, normaliser = _weighted_flat_latents(latents_a, latents_b, level_weights)
    flat_a, flat_b = _check_same_batch(flat_a, flat_b, "latents_a", "latents_b")
    return tf.reduce_sum(tf.square(flat_a - flat_b), axis=1) / normaliser


def pairwise_bijective_distance(latents_a: Sequence[tf.Tensor], latents_b: Sequence[tf.Tensor],
                                level_weights: Sequence[float] | None = None) -> tf.Tensor:
    """``d_H`` (see ``bijective_distance``) between every row of A and every row of B.

    Computed as ``|a|^2 + |b|^2 - 2 a.b`` (one matmul, no [B_a, B_b, n] tensor), clipped at 0
    against rounding.

    Args:
      latents_a: latent levels of batch A, each float[B_a, h, w, c].
      latents_b: the same levels of batch B, each float[B_b, h, w, c].
      level_weights: as in ``bijective_distance``.

    Returns:
      float[B_a, B_b], entry (i, j) the distance between row i of A and row j of B.

    Raises:
      ValueError: for mismatched levels or shapes, or bad weights.
    """
    flat_a, flat_b, normaliser = _weighted_flat_latents(latents_a, latents_b, level_weights)
    squared_norms_a = tf.reduce_sum(tf.square(flat_a), axis=1, keepdims=True)
    squared_norms_b = tf.reduce_sum(tf.square(flat_b), axis=1, keepdims=True)
    cross = tf.matmul(flat_a, flat_b, transpose_b=True)
    squared = squared_norms_a - 2.0 * cross + tf.transpose(squared_norms_b)
    return tf.nn.relu(squared) / normaliser


def batch_hard_triplet_loss(reconstruction_latents: Sequence[tf.Tensor],
                            real_latents: Sequence[tf.Tensor], labels: tf.Tensor,
                            margin: float, real_labels: tf.Tensor | None = None,
                            level_weights: Sequence[float] | None = None,
                            reduction: str = "sum_over_batch_size",
                            global_batch_size: int | tf.Tensor | None = None) -> tf.Tensor:
    """Batch-hard triplet loss in ``d_H`` space: reconstructions anchored on real images.

    For reconstruction i of identity ``labels[i]``: ``d_pos`` is the largest ``d_H`` to a real
    image of the same identity, ``d_neg`` the smallest ``d_H`` to a real image of another
    identity, and ``loss_i = relu(d_pos - d_neg + margin)``.

    A row with no real image of its identity, or none of another identity, has no triplet:
    its loss is 0 (masked out, no gradient), and it still counts in the divisor of the
    ``sum_over_batch_size`` reduction. P x K identity sampling with P >= 2 and K >= 1 never
    produces such a row.

    Args:
      reconstruction_latents: flow latent levels of the reconstructions, each float[B, ...].
      real_latents: flow latent levels of the real images, each float[B_real, ...].
      labels: int[B], identity of each reconstruction.
      margin: the triplet margin (``LossConfig.triplet_margin``), >= 0.
      real_labels: int[B_real], identity of each real image; ``None`` means ``labels``
        (reconstruction i was made from real image i).
      level_weights: as in ``bijective_distance``.
      reduction: see ``reduce_per_example``.
      global_batch_size: see ``reduce_per_example``.

    Returns:
      The loss, float[B] or a scalar depending on ``reduction``.

    Raises:
      ValueError: for a negative margin, labels that are not rank 1, or mismatched shapes.
    """
    if margin < 0:
        raise ValueError(f"triplet margin must be >= 0, got {margin}")
    labels = _check_labels(labels, "labels")
    real_labels = labels if real_labels is None else _check_labels(real_labels, "real_labels")
    distances = pairwise_bijective_distance(reconstruction_latents, real_latents,
                                            level_weights)
    distances, labels = _check_same_batch(distances, labels, "reconstruction_latents",
                                          "labels")
    transposed, real_labels = _check_same_batch(tf.transpose(distances), real_labels,
                                                "real_latents", "real_labels")
    distances = tf.transpose(transposed)

    same_identity = tf.equal(labels[:, None], real_labels[None, :])
    # Distances are >= 0, so 0 is a neutral fill for the max and the row maximum for the min.
    hardest_positive = tf.reduce_max(tf.where(same_identity, distances, 0.0), axis=1)
    fill = tf.reduce_max(distances, axis=1, keepdims=True)
    hardest_negative = tf.reduce_min(tf.where(same_identity, fill, distances), axis=1)
    has_triplet = tf.logical_and(tf.reduce_any(same_identity, axis=1),
                                 tf.reduce_any(tf.logical_not(same_identity), axis=1))
    per_example = tf.where(has_triplet,
                           tf.nn.relu(hardest_positive - hardest_negative + margin), 0.0)
    return reduce_per_example(per_example, reduction, global_batch_size)


def identity_loss(student_vectors: tf.Tensor, target_vectors: tf.Tensor,
                  center: tf.Tensor | None = None, reduction: str = "sum_over_batch_size",
                  global_batch_size: int | tf.Tensor | None = None) -> tf.Tensor:
    """Identity loss ``1 - cos(S(G(x, n)) - c, x - c)``; the inputs need not be unit vectors.

    The same angular measure as ``distillation_loss``, read the other way round: here the
    student judges a generated image against the vector it was generated from.

    Args:
      student_vectors: float[B, D], the student's features of generated images.
      target_vectors: float[B, D], the engine features the images were generated from.
      center: optional float[D] common component removed from both (see
        ``distillation_loss``).
      reduction: see ``reduce_per_example``.
      global_batch_size: see ``reduce_per_example``.

    Returns:
      The loss in [0, 2], float[B] or a scalar depending on ``reduction``.

    Raises:
      ValueError: for inputs that are not [B, D] with matching shapes.
    """
    return distillation_loss(student_vectors, target_vectors, center=center,
                             reduction=reduction, global_batch_size=global_batch_size)


def distillation_loss(student_vectors: tf.Tensor, teacher_vectors: tf.Tensor,
                      center: tf.Tensor | None = None, reduction: str = "sum_over_batch_size",
                      global_batch_size: int | tf.Tensor | None = None) -> tf.Tensor:
    """Angular distillation loss ``1 - cos(S(I) - c, F(I) - c)``.

    dlib vectors share a large common component (different people have a mean cosine of
    about 0.83), so the raw cosine is high for any face; subtracting that common ``center``
    from both sides leaves the part of the vector that carries the identity.

    Args:
      student_vectors: float[B, D], the student's outputs.
      teacher_vectors: float[B, D], the engine's features of the same images.
      center: optional float[D], subtracted from both before the cosine (for example the
        mean teacher vector of the training set).
      reduction: see ``reduce_per_example``.
      global_batch_size: see ``reduce_per_example``.

    Returns:
      The loss in [0, 2], float[B] or a scalar depending on ``reduction``.

    Raises:
      ValueError: for inputs that are not [B, D] with matching shapes, or a ``center`` that
        is not [D].
    """
    student = _as_float32(student_vectors)
    teacher = _as_float32(teacher_vectors)
    if center is not None:
        center = _as_float32(center)
        if center.shape.rank != 1 or not center.shape.is_compatible_with(teacher.shape[-1:]):
            raise ValueError(f"center must have shape [D] = {teacher.shape[-1:]}, got "
                             f"{center.shape}")
        student = student - center
        teacher = teacher - center
    per_example = 1.0 - _cosine(student, teacher, "student_vectors", "teacher_vectors")
    return reduce_per_example(per_example, reduction, global_batch_size)


def relational_cosine_loss(student_vectors: tf.Tensor, teacher_vectors: tf.Tensor,
                           center: tf.Tensor | None = None) -> tf.Tensor:
    """Relational distillation: match the batch's pairwise (centred) cosines.

    ``mean_{i != j} (cos(s_i - c, s_j - c) - cos(f_i - c, f_j - c))^2``. Where the angular
    loss matches each vector to its own teacher, this term matches how far apart the student
    puts two faces to how far apart the engine puts them, which is what a verification
    threshold reads.

    Args:
      student_vectors: float[B, D], the student's outputs, B >= 2.
      teacher_vectors: float[B, D], the engine's features of the same images.
      center: optional float[D], subtracted from both before the cosines.

    Returns:
      A float32 scalar in [0, 4]: the mean over the B (B - 1) ordered pairs of the batch.
      (Each replica computes it over its own share of a distributed batch.)

    Raises:
      ValueError: for inputs that are not [B, D] with matching shapes, or B < 2.
    """
    student = _as_float32(student_vectors)
    teacher = _as_float32(teacher_vectors)
    _check_compatible(student, teacher, "student_vectors", "teacher_vectors")
    if student.shape.rank != 2:
        raise ValueError(f"student_vectors must have shape [B, D], got {student.shape}")
    if student.shape[0] is not None and student.shape[0] < 2:
        raise ValueError("the relational loss needs at least 2 vectors per batch, got "
                         f"{student.shape[0]}")
    if center is not None:
        center = _as_float32(center)
        student, teacher = student - center, teacher - center
    student = tf.math.l2_normalize(student, axis=1)
    teacher = tf.math.l2_normalize(teacher, axis=1)
    difference = (tf.matmul(student, student, transpose_b=True)
                  - tf.matmul(teacher, teacher, transpose_b=True))
    batch = tf.cast(tf.shape(student)[0], tf.float32)
    # The diagonal is 1 - 1 = 0 up to rounding; it is left out of the count, not the sum.
    off_diagonal = 1.0 - tf.eye(tf.shape(student)[0])
    return tf.reduce_sum(tf.square(difference) * off_diagonal) / (batch * (batch - 1.0))


def centred_cosine(student_vectors: tf.Tensor, teacher_vectors: tf.Tensor,
                   center: tf.Tensor) -> tf.Tensor:
    """``cos(unit(unit(s) - m), unit(unit(f) - m))`` per row: agreement beyond the mean face.

    Args:
      student_vectors: float[B, D] (normalised here).
      teacher_vectors: float[B, D] (normalised here).
      center: float[D], the mean engine vector of the training photos.

    Returns:
      float32[B].
    """
    student = tf.math.l2_normalize(_as_float32(student_vectors), axis=1)
    teacher = tf.math.l2_normalize(_as_float32(teacher_vectors), axis=1)
    center = _as_float32(center)
    return _cosine(student - center, teacher - center, "student_vectors", "teacher_vectors")


def l1_reconstruction_loss(generated: tf.Tensor, real: tf.Tensor,
                           reduction: str = "sum_over_batch_size",
                           global_batch_size: int | tf.Tensor | None = None) -> tf.Tensor:
    """Pixel L1 loss: the mean absolute difference per example.

    Args:
      generated: float[B, H, W, C], generated images.
      real: float[B, H, W, C], the real images, in the same value range.
      reduction: see ``reduce_per_example``.
      global_batch_size: see ``reduce_per_example``.

    Returns:
      The loss, float[B] or a scalar depending on ``reduction``.

    Raises:
      ValueError: for mismatched shapes.
    """
    generated = _flatten_per_example(generated, "generated")
    real = _flatten_per_example(real, "real")
    _check_compatible(generated, real, "generated", "real")
    generated, real = _check_same_batch(generated, real, "generated", "real")
    per_example = tf.reduce_mean(tf.abs(generated - real), axis=1)
    return reduce_per_example(per_example, reduction, global_batch_size)


def perceptual_loss(generated_features: Sequence[tf.Tensor], real_features: Sequence[tf.Tensor],
                    reduction: str = "sum_over_batch_size",
                    global_batch_size: int | tf.Tensor | None = None,
                    epsilon: float = 1e-6) -> tf.Tensor:
    """Feature-map L1 between generated and real faces, normalised per map and example.

    For each pair of maps ``(g_l, r_l)`` of one example the term is
    ``mean|g_l - r_l| / (mean|r_l| + epsilon)``: every map weighs alike whatever its
    activation scale. The terms are averaged over the maps. The real maps are treated as
    constants (no gradient reaches the real photo's branch).

    Args:
      generated_features: float[B, h_l, w_l, c_l] per map, of the generated faces (for
        example the student's stem and residual-block outputs).
      real_features: the same maps of the real photos, in the same order and shapes.
      reduction: see ``reduce_per_example``.
      global_batch_size: see ``reduce_per_example``.
      epsilon: keeps an all-zero real map finite.

    Returns:
      The loss, float[B] or a scalar depending on ``reduction``.

    Raises:
      ValueError: for no maps, a different number of maps, or mismatched shapes.
    """
    generated_features, real_features = list(generated_features), list(real_features)
    if not generated_features or len(generated_features) != len(real_features):
        raise ValueError(f"perceptual_loss needs the same, non-zero number of generated and "
                         f"real maps; got {len(generated_features)} and {len(real_features)}")
    terms = []
    for index, (generated, real) in enumerate(zip(generated_features, real_features)):
        generated = _flatten_per_example(generated, f"generated_features[{index}]")
        real = tf.stop_gradient(_flatten_per_example(real, f"real_features[{index}]"))
        _check_compatible(generated, real, f"generated_features[{index}]",
                          f"real_features[{index}]")
        generated, real = _check_same_batch(generated, real, f"generated_features[{index}]",
                                            f"real_features[{index}]")
        distance = tf.reduce_mean(tf.abs(generated - real), axis=1)
        terms.append(distance / (tf.reduce_mean(tf.abs(real), axis=1) + epsilon))
    per_example = tf.add_n(terms) / float(len(terms))
    return reduce_per_example(per_example, reduction, global_batch_size)


DIFF_AUGMENT_KINDS = ("color", "translation", "cutout")


def parse_diff_augment(spec: str) -> tuple[str, ...]:
    """The augmentations named in a ``losses.diff_augment`` spec ("" for none).

    Raises:
      ValueError: for a name that is not one of ``DIFF_AUGMENT_KINDS``.
    """
    kinds = tuple(part.strip() for part in spec.split(",") if part.strip())
    unknown = [kind for kind in kinds if kind not in DIFF_AUGMENT_KINDS]
    if unknown:
        raise ValueError(f"losses.diff_augment: unknown augmentation(s) {unknown}; choose "
                         f"from {DIFF_AUGMENT_KINDS}")
    return kinds


def diff_augment(images: tf.Tensor, kinds: Sequence[str], seed: tf.Tensor, first_row=0,
                 total_rows=None) -> tf.Tensor:
    """Differentiable augmentation of a critic's input (Zhao et al., 2020, "DiffAugment").

    The same random transform family is applied to real and generated images, and gradients
    flow through it to the generator, so the critic cannot memorise the few thousand real
    faces while the generator still learns the un-augmented distribution.

    * ``color``: per image, brightness +-0.5, saturation x[0, 2], contrast x[0.5, 1.5]
      (on images in [-1, 1]);
    * ``translation``: per image, an integer shift of up to 1/8 of the side, zero padded;
    * ``cutout``: per image, one zeroed square of half the side.

    Args:
      images: float[B, H, W, C] in [-1, 1].
      kinds: a subset of ``DIFF_AUGMENT_KINDS``, applied in that order.
      seed: int[2], the stateless seed (the same seed gives the same transforms).
      first_row: where ``images`` start in the batch they are part of (a replica's share of
        the global batch: ``replica index * B``).
      total_rows: that whole batch's size (default B). Transforms are drawn for all its rows
        and ``images`` get rows ``first_row:first_row + B``, so a batch split over replicas is
        augmented exactly as it would be whole.

    Returns:
      float32[B, H, W, C], the augmented images.
    """
    images = _as_float32(images)
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    total = batch if total_rows is None else tf.cast(total_rows, tf.int32)
    first_row = tf.cast(first_row, tf.int32)
    tf.debugging.assert_less_equal(first_row + batch, total, message=(
        "diff_augment: rows first_row:first_row + B lie outside total_rows"))

    def draw(tail, draw_seed, low, high, dtype=tf.float32):
        """This batch's rows of a uniform draw of shape [total_rows, *tail]."""
        values = tf.random.stateless_uniform([total, *tail], draw_seed, low, high, dtype)
        return values[first_row:first_row + batch]

    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=6)
    if "color" in kinds:
        def uniform(index, low, high):
            return draw([1, 1, 1], seeds[index], low, high)
        images = images + uniform(0, -0.5, 0.5)
        mean = tf.reduce_mean(images, axis=3, keepdims=True)
        images = (images - mean) * uniform(1, 0.0, 2.0) + mean
        mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
        images = (images - mean) * uniform(2, 0.5, 1.5) + mean
    if "translation" in kinds:
        images = _translate(images, draw, height, width, seeds[3])
    if "cutout" in kinds:
        images = _cutout(images, draw, height, width, seeds[4], seeds[5])
    return images


def _translate(images, draw, height, width, seed):
    limit_y, limit_x = height // 8, width // 8
    offsets = draw([2], seed, -1.0, 1.0)
    shift_y = tf.cast(tf.round(offsets[:, 0] * tf.cast(limit_y, tf.float32)), tf.int32)
    shift_x = tf.cast(tf.round(offsets[:, 1] * tf.cast(limit_x, tf.float32)), tf.int32)
    # out[y, x] = in[y - shift_y, x - shift_x], zero outside: a gather on padded images.
    padded = tf.pad(images, [[0, 0], [limit_y, limit_y], [limit_x, limit_x], [0, 0]])
    rows = tf.range(height)[None, :] - shift_y[:, None] + limit_y
    cols = tf.range(width)[None, :] - shift_x[:, None] + limit_x
    images = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(images, cols, axis=2, batch_dims=1)


def _cutout(images, draw, height, width, seed_y, seed_x):
    size_y, size_x = height // 2, width // 2
    center_y = draw([1, 1], seed_y, 0, height, tf.int32)
    center_x = draw([1, 1], seed_x, 0, width, tf.int32)
    rows = tf.range(height)[None, :, None]
    cols = tf.range(width)[None, None, :]
    inside = ((tf.abs(rows - center_y) < (size_y + 1) // 2)
              & (tf.abs(cols - center_x) < (size_x + 1) // 2))
    return images * tf.cast(~inside, images.dtype)[..., None]


def _as_float32(values: tf.Tensor) -> tf.Tensor:
    return tf.cast(tf.convert_to_tensor(values), tf.float32)


def _check_adversarial_kind(kind: str) -> None:
    if kind not in ADVERSARIAL_KINDS:
        raise ValueError(f"unknown adversarial loss kind {kind!r}; choose one of "
                         f"{ADVERSARIAL_KINDS}")


def _flatten_per_example(values: tf.Tensor, name: str) -> tf.Tensor:
    """Reshapes float[B, ...] to float32[B, n]; a rank-1 input is one value per example."""
    values = _as_float32(values)
    rank = values.shape.rank
    if rank is None or rank == 0:
        raise ValueError(f"{name} must have a batch dimension, got shape {values.shape}")
    if rank == 1:
        return values[:, None]
    return tf.reshape(values, [tf.shape(values)[0], -1])


def _per_example_logits(logits: tf.Tensor, name: str) -> tf.Tensor:
    return tf.reduce_mean(_flatten_per_example(logits, name), axis=1)


def _check_compatible(a: tf.Tensor, b: tf.Tensor, name_a: str, name_b: str) -> None:
    if not a.shape.is_compatible_with(b.shape):
        raise ValueError(f"{name_a} and {name_b} must have the same shape, got {a.shape} and "
                         f"{b.shape}")


def _check_same_batch(a: tf.Tensor, b: tf.Tensor, name_a: str, name_b: str,
                      ) -> tuple[tf.Tensor, tf.Tensor]:
    """Checks that ``a`` and ``b`` have the same leading dimension.

    Statically known sizes are checked now (ValueError); otherwise the returned tensors depend
    on a run-time assertion (InvalidArgumentError), so a graph cannot use them before the
    check has run and fail first with a less helpful broadcasting error.
    """
    batch_a, batch_b = a.shape[0], b.shape[0]
    if batch_a is not None and batch_b is not None:
        if batch_a != batch_b:
            raise ValueError(f"{name_a} and {name_b} must have the same batch size, got "
                             f"{batch_a} and {batch_b}")
        return a, b
    check = tf.debugging.assert_equal(
        tf.shape(a)[0], tf.shape(b)[0],
        message=f"{name_a} and {name_b} must have the same batch size")
    with tf.control_dependencies([check] if check is not None else []):
        return tf.identity(a), tf.identity(b)


def _check_labels(labels: tf.Tensor, name: str) -> tf.Tensor:
    labels = tf.convert_to_tensor(labels)
    if labels.shape.rank != 1:
        raise ValueError(f"{name} must be a rank-1 tensor of identity ids, got shape "
                         f"{labels.shape}")
    if labels.dtype.is_floating:
        raise ValueError(f"{name} must hold integer or string identity ids, got {labels.dtype}")
    return labels


def _cosine(a: tf.Tensor, b: tf.Tensor, name_a: str, name_b: str) -> tf.Tensor:
    a = _as_float32(a)
    b = _as_float32(b)
    if a.shape.rank != 2:
        raise ValueError(f"{name_a} must have shape [B, D], got {a.shape}")
    _check_compatible(a, b, name_a, name_b)
    a, b = _check_same_batch(a, b, name_a, name_b)
    return tf.reduce_sum(tf.math.l2_normalize(a, axis=1) * tf.math.l2_normalize(b, axis=1),
                         axis=1)


def _weighted_flat_latents(latents_a: Sequence[tf.Tensor], latents_b: Sequence[tf.Tensor],
                           level_weights: Sequence[float] | None,
                           ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Concatenates the levels, each scaled by sqrt(w_l), so a plain squared Euclidean
    distance becomes the weighted sum; returns it with the divisor ``sum_l w_l * n_l``."""
    if isinstance(latents_a, tf.Tensor | tf.Variable) or \
            isinstance(latents_b, tf.Tensor | tf.Variable):
        raise ValueError("latents must be a list of latent levels (one tensor per level), "
                         "got a single tensor; wrap it as [latents]")
    latents_a, latents_b = list(latents_a), list(latents_b)
    if not latents_a:
        raise ValueError("latents must contain at least one latent level, got none")
    if len(latents_a) != len(latents_b):
        raise ValueError(f"latents_a has {len(latents_a)} levels but latents_b has "
                         f"{len(latents_b)}")
    if level_weights is None or len(level_weights) == 0:
        level_weights = [1.0] * len(latents_a)
    level_weights = [float(w) for w in level_weights]
    if len(level_weights) != len(latents_a):
        raise ValueError(f"level_weights has {len(level_weights)} entries for "
                         f"{len(latents_a)} latent levels")
    if any(not w >= 0 for w in level_weights) or not any(w > 0 for w in level_weights):
        raise ValueError(f"level_weights must be non-negative and not all zero, got "
                         f"{level_weights}")

    scaled_a, scaled_b, normaliser = [], [], 0.0
    for level, (level_a, level_b, weight) in enumerate(zip(latents_a, latents_b,
                                                           level_weights)):
        level_a = _as_float32(level_a)
        level_b = _as_float32(level_b)
        if level_a.shape.rank is None or level_a.shape.rank < 2:
            raise ValueError(f"latent level {level} must have shape [B, ...], got "
                             f"{level_a.shape}")
        if not level_a.shape[1:].is_compatible_with(level_b.shape[1:]):
            raise ValueError(f"latent level {level} has per-example shape {level_a.shape[1:]} "
                             f"in latents_a but {level_b.shape[1:]} in latents_b")
        elements = level_a.shape[1:].num_elements()
        if elements is None:
            raise ValueError(f"latent level {level} needs a static per-example shape, got "
                             f"{level_a.shape}")
        root_weight = weight ** 0.5
        scaled_a.append(root_weight * _flatten_per_example(level_a, f"latent level {level}"))
        scaled_b.append(root_weight * _flatten_per_example(level_b, f"latent level {level}"))
        normaliser += weight * elements
    return (tf.concat(scaled_a, axis=1), tf.concat(scaled_b, axis=1),
            tf.constant(normaliser, tf.float32))
