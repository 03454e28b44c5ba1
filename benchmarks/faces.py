"""The real aligned faces the training benchmarks feed: a dlib embedding cache, prepared on
first use from a small slice of faces-dev so that a fresh machine can run them offline."""

import os
import pathlib

from absl import flags

_DEFAULT_DATA = os.environ.get(
    "VEC2FACE_FACES_DEV",
    str(pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "faces-dev"))
DATA = flags.DEFINE_string("data", _DEFAULT_DATA, "Folder <identity>/<image> to prepare from.")
CACHE_DIR = flags.DEFINE_string(
    "cache_dir", str(pathlib.Path(__file__).resolve().parent / ".cache"),
    "dlib embedding cache; prepared from --data when it holds no faces yet.")
MAX_IMAGES = flags.DEFINE_integer(
    "max_images", 600, "Photos to prepare when the cache is empty (about a minute on 2 "
    "cores); speed does not depend on the count.", lower_bound=1)


def load(config, resolution: int):
    """The cached faces for ``config`` at ``resolution``, preparing the cache if needed."""
    from vec2face_tf.data import pipeline, prepare
    from vec2face_tf.data.cache import EmbeddingCache

    if not EmbeddingCache(CACHE_DIR.value, "dlib", config.crop).shard_paths():
        prepare.prepare(DATA.value, "dlib", CACHE_DIR.value, crop=config.crop, workers=0,
                        max_images=MAX_IMAGES.value)
    return pipeline.load_faces(CACHE_DIR.value, "dlib", config.crop, resolution=resolution,
                               min_images_per_identity=config.data.min_images_per_identity)
