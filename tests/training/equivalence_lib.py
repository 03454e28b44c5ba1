"""Shared pieces of the tf.distribute equivalence scripts: synthetic faces, a 3-step run."""

import keras
import numpy as np

from vec2face_tf.data import pipeline
from vec2face_tf.models import dibigan

DIM = 16
STEPS = 3


def synthetic_faces(config):
    rng = np.random.default_rng(0)
    identities, per_identity, res = 8, 3, config.data.resolution
    base = rng.integers(0, 256, (identities, 1, res, res, 3))
    jitter = rng.integers(-20, 21, (identities, per_identity, res, res, 3))
    crops = np.clip(base + jitter, 0, 255).astype(np.uint8).reshape(-1, res, res, 3)
    centres = rng.standard_normal((identities, 1, DIM))
    vectors = centres + 0.1 * rng.standard_normal((identities, per_identity, DIM))
    vectors = vectors.reshape(-1, DIM)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    labels = np.repeat(np.arange(identities), per_identity).astype(np.int32)
    names = np.array([f"id{i}" for i in range(identities)])
    hashes = np.array([f"h{i}" for i in range(len(labels))])
    return pipeline.Faces(crops, vectors.astype(np.float32), labels, names, hashes)


def run(strategy, config, faces, start_from=None):
    p, k = config.data.identities_per_batch, config.data.images_per_identity
    dataset = pipeline.distribute_dataset(strategy, faces, config.data.resolution, p, k, seed=0)
    first, _, _ = next(iter(pipeline.make_dataset(faces, config.data.resolution, p, k)))
    keras.utils.set_random_seed(0)
    with strategy.scope():
        parts = dibigan.build_parts(config, DIM)
        parts.flow(dibigan.flow_lib.BijectiveFlow.preprocess(first, 5, dequantize=False))
        variables = [v for model in (parts.flow, parts.student, parts.generator,
                                     parts.discriminator) for v in model.variables]
        if start_from is not None:  # initialisers draw differently under a strategy
            for variable, value in zip(variables, start_from, strict=True):
                variable.assign(value)
        initial = [v.numpy() for v in variables]
        gan = dibigan.DiBiGAN(parts, config, center=faces.embeddings.mean(0),
                              global_batch_size=p * k)
        gan.compile(d_optimizer=keras.optimizers.Adam(1e-3),
                    g_optimizer=keras.optimizers.Adam(1e-3, use_ema=True))
        gan.build_optimizers()
    history = gan.fit(dataset, epochs=STEPS, steps_per_epoch=1, verbose=0).history
    return ({name: [float(v) for v in values] for name, values in history.items()}, initial,
            [v.numpy() for v in parts.generator.trainable_variables])
