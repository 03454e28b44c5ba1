"""Realism scores of generated faces (DESIGN §4).

- FID and KID on InceptionV3 pool features. The ImageNet weights are downloaded by Keras at
  first use, so these need the internet once (or a copied weights file). They use
  ``keras.applications.InceptionV3``, not the TF-slim graph of the original FID code, so the
  numbers rank models consistently but are not comparable with published FIDs.
- Offline scores: the face detection rate of a classical detector (dlib's HOG detector,
  or MTCNN from the ``deepface`` extra); the Fréchet distance between engine vectors of
  reconstructions and of real photos (``engine_frechet_distance``); sharpness (the variance
  of the Laplacian of the grey image) and contrast (the grey standard deviation), each best
  read as a ratio to real crops at the same resolution (``sharpness_ratio``,
  ``contrast_ratio``: a blur lowers both); and SSIM against the original photo
  (``mean_ssim``).

Detection settings, measured on 40 aligned faces-dev crops (150 px, padding 0.25) resized to
the training resolution of 64 px (area filter), against uniform noise and flat grey images:

| detector, setting                      | real 64 px | noise, flat | time per image |
|----------------------------------------|------------|-------------|----------------|
| dlib at 64 px, no upsampling           | 50 %       | 0 %         | 0.3 ms         |
| dlib at 64 px, upsample=1              | 97 %       | 0 %         | 2 ms           |
| dlib resized to 100 px (the default)   | 97 %       | 0 %         | 1 ms           |
| MTCNN at 64 px or 100 px, batched      | 100 %      | 0 %         | 7 ms           |

dlib's HOG window is 80 px, so a 64 px crop (face about 43 px wide) is too small without
help; resizing to ``DETECTION_SIZE`` makes the face about 70 px and the score independent of
the generator's resolution. The same 64 px faces blurred to 8 px and back (a "mean face") are
detected at most 8 % of the time by dlib (any setting above) but 63 % by MTCNN: MTCNN is the
more lenient judge.
"""

from __future__ import annotations

import functools
import importlib.util

import numpy as np

from vec2face_tf.evaluation import metrics

INCEPTION_SIZE = 299
INCEPTION_FEATURES = 2048
INCEPTION_WEIGHTS_FILE = "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"
INCEPTION_WEIGHTS_URL = ("https://storage.googleapis.com/tensorflow/keras-applications/"
                         f"inception_v3/{INCEPTION_WEIGHTS_FILE}")
DETECTORS = ("dlib", "mtcnn")
DETECTION_SIZE = 100  # Images are resized to this before detection (see the module table).
MTCNN_MISSING = "mtcnn not installed (pip install vec2face_tf[deepface])"
_MTCNN_BATCH = 32
_RESIZE_CHUNK = 512  # Images resized per call, to bound the float32 working memory.


class RealismError(RuntimeError):
    """A realism score cannot be computed (missing weights, a detector that fails)."""


def _validate_images(images, name: str = "images") -> np.ndarray:
    if not isinstance(images, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(images).__name__}")
    if images.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 RGB, got dtype {images.dtype}")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{name} must have shape [N, H, W, 3] (RGB), got {images.shape}")
    if 0 in images.shape:
        raise ValueError(f"{name} is empty, shape {images.shape}")
    return images


def resize_uint8(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 images resized to size x size (bilinear, antialiased), in chunks."""
    import tensorflow as tf

    if images.shape[1:3] == (size, size):
        return images
    resized = []
    for start in range(0, len(images), _RESIZE_CHUNK):
        chunk = tf.image.resize(images[start:start + _RESIZE_CHUNK], (size, size),
                                method="bilinear", antialias=True)
        resized.append(tf.cast(tf.round(tf.clip_by_value(chunk, 0, 255)), tf.uint8).numpy())
    return np.concatenate(resized)


class InceptionFeatures:
    """InceptionV3 average-pool features (2048-D) of uint8 RGB images of any size.

    Images are resized to 299 x 299 (bilinear, antialiased when shrinking) and scaled to
    [-1, 1] with ``keras.applications.inception_v3.preprocess_input``.
    """

    def __init__(self, weights: str | None = "imagenet", batch_size: int = 32):
        """Builds the network.

        Args:
          weights: ``"imagenet"`` (downloaded by Keras into ``$KERAS_HOME/models``, default
            ``~/.keras/models``, at first use), a path to the no-top weights file, or None for
            random weights (tests only: such features say nothing about realism).
          batch_size: images per forward pass.

        Raises:
          RealismError: when the ImageNet weights can be neither found nor downloaded.
          ValueError: for a batch size below 1.
        """
        import keras
        import tensorflow as tf

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        try:
            self._model = keras.applications.InceptionV3(include_top=False, pooling="avg",
                                                         weights=weights)
        except Exception as error:  # Keras raises a bare Exception for a failed download.
            if weights != "imagenet":
                raise
            raise RealismError(
                "FID/KID need the ImageNet InceptionV3 weights, which Keras downloads at first "
                f"use from {INCEPTION_WEIGHTS_URL} (this failed: {error}). Offline, fetch "
                f"that file elsewhere and copy it to ~/.keras/models/{INCEPTION_WEIGHTS_FILE} "
                "(or $KERAS_HOME/models/), or pass weights='/path/to/it.h5'; or skip FID/KID "
                "and use the offline realism scores (face_detection_rate, "
                "engine_frechet_distance).") from error
        preprocess = keras.applications.inception_v3.preprocess_input
        model = self._model

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
        def features(batch):
            resized = tf.image.resize(tf.cast(batch, tf.float32),
                                      (INCEPTION_SIZE, INCEPTION_SIZE), antialias=True)
            return model(preprocess(resized), training=False)

        self._features = features

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Features of ``images`` (uint8[N, H, W, 3] RGB) as float32[N, 2048]."""
        images = _validate_images(images)
        return np.concatenate([self._features(images[start:start + self.batch_size]).numpy()
                               for start in range(0, len(images), self.batch_size)])


def inception_distances(images_a: np.ndarray, images_b: np.ndarray,
                        extractor: InceptionFeatures | None = None, kid_subsets: int = 100,
                        kid_subset_size: int = 1000, seed: int = 0) -> dict:
    """FID and KID between two image sets (e.g. reconstructions and real crops).

    FID is biased upwards for small sets (use the same N when comparing models); KID is
    unbiased. Use thousands of images for FID to mean anything.

    Args:
      images_a, images_b: uint8[N, H, W, 3] RGB, N >= 2; sizes may differ.
      extractor: the feature network; None builds one with the ImageNet weights.
      kid_subsets, kid_subset_size, seed: as in ``metrics.kernel_inception_distance``.

    Returns:
      ``{"fid", "kid_mean", "kid_std", "n_a", "n_b"}``.

    Raises:
      RealismError: when the ImageNet weights are unavailable (see ``InceptionFeatures``).
    """
    images_a = _validate_images(images_a, "images_a")
    images_b = _validate_images(images_b, "images_b")
    extractor = extractor or InceptionFeatures()
    features_a, features_b = extractor(images_a), extractor(images_b)
    kid_mean, kid_std = metrics.kernel_inception_distance(
        features_a, features_b, subsets=kid_subsets, subset_size=kid_subset_size, seed=seed)
    return {"fid": metrics.frechet_distance(features_a, features_b), "kid_mean": kid_mean,
            "kid_std": kid_std, "n_a": len(images_a), "n_b": len(images_b)}


def engine_frechet_distance(reconstruction_vectors, real_vectors) -> float:
    """The Fréchet distance between engine vectors of reconstructions and of real photos.

    An offline realism score in the engine's own feature space: it is small when the
    reconstructions' vectors are distributed like real faces' (mean and spread), whatever
    their identity.

    Args:
      reconstruction_vectors: float[N, D] engine vectors of the reconstructions.
      real_vectors: float[M, D] engine vectors of real photos.

    Returns:
      ``metrics.frechet_distance`` of the two sets.
    """
    return metrics.frechet_distance(reconstruction_vectors, real_vectors)


# ITU-R BT.601 luma, as tf.image.rgb_to_grayscale.
_LUMA = np.array([0.2989, 0.5870, 0.1140], np.float64)
_LAPLACIAN = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], np.float64)


def grey(images: np.ndarray) -> np.ndarray:
    """float64[N, H, W] luma in [0, 255] of uint8 RGB images."""
    return _validate_images(images).astype(np.float64) @ _LUMA


def laplacian_variance(images: np.ndarray) -> np.ndarray:
    """float64[N]: the variance of each grey image's 4-neighbour Laplacian (a focus measure).

    The Laplacian is taken over interior pixels only ("valid"), so a border adds nothing.
    It is 0 for a flat image and largest for pixel-level detail.
    """
    luma = grey(images)
    if min(luma.shape[1:]) < 3:
        raise ValueError(f"images must be at least 3x3 for a Laplacian, got {images.shape}")
    height, width = luma.shape[1:]
    response = sum(_LAPLACIAN[dy, dx] * luma[:, dy:height - 2 + dy, dx:width - 2 + dx]
                   for dy in range(3) for dx in range(3) if _LAPLACIAN[dy, dx])
    return response.reshape(len(luma), -1).var(axis=1)


def grey_contrast(images: np.ndarray) -> np.ndarray:
    """float64[N]: the standard deviation of each grey image (RMS contrast, 0-255 scale)."""
    luma = grey(images)
    return luma.reshape(len(luma), -1).std(axis=1)


def _ratio(generated: np.ndarray, real: np.ndarray, measure) -> float:
    if generated.shape[1:3] != real.shape[1:3]:
        raise ValueError(f"compare images at one resolution: generated {generated.shape[1:3]}"
                         f", real {real.shape[1:3]} (resize_uint8 the real crops first)")
    reference = float(np.mean(measure(real)))
    if reference <= 0:
        raise ValueError("the real images are flat: their score is 0, so no ratio exists")
    return float(np.mean(measure(generated))) / reference


def sharpness_ratio(generated: np.ndarray, real: np.ndarray) -> float:
    """Mean Laplacian variance of ``generated`` over that of ``real`` (same resolution).

    1 for images as detailed as the real crops; a Gaussian blur of sigma 1 px takes a 64 px
    face crop to about 0.1.
    """
    return _ratio(generated, real, laplacian_variance)


def contrast_ratio(generated: np.ndarray, real: np.ndarray) -> float:
    """Mean grey standard deviation of ``generated`` over that of ``real``."""
    return _ratio(generated, real, grey_contrast)


def mean_ssim(generated: np.ndarray, originals: np.ndarray) -> float:
    """Mean SSIM (``tf.image.ssim``, 0-255, 7 px window) of each image against its original.

    Args:
      generated: uint8[N, H, W, 3].
      originals: uint8[N, H, W, 3], row i the photo that row i reconstructs.
    """
    import tensorflow as tf

    generated, originals = _validate_images(generated), _validate_images(originals, "originals")
    if generated.shape != originals.shape:
        raise ValueError(f"generated {generated.shape} and originals {originals.shape} must "
                         "have the same shape")
    scores = tf.image.ssim(tf.constant(generated), tf.constant(originals), max_val=255,
                           filter_size=7)
    return float(tf.reduce_mean(scores))


@functools.lru_cache(maxsize=1)
def _dlib_detector():
    import dlib

    return dlib.get_frontal_face_detector()


@functools.lru_cache(maxsize=1)
def _mtcnn_detector():
    # mtcnn builds its networks with ``tf.keras``. In this process that is Keras 3 (only
    # deepface's worker sets TF_USE_LEGACY_KERAS), and mtcnn 1.0.0 works with it, measured:
    # no tf_keras is loaded and Keras 3 models in the same process are unaffected. So it runs
    # here, unlike deepface.
    from mtcnn import MTCNN

    return MTCNN(stages="face_and_landmarks_detection", device="CPU:0")


def _dlib_best_scores(images: np.ndarray, upsample: int, adjust_threshold: float) -> list:
    detector = _dlib_detector()
    best = []
    for image in images:
        _, scores, _ = detector.run(np.ascontiguousarray(image), upsample, adjust_threshold)
        best.append(max(scores) if len(scores) else None)
    return best


def _mtcnn_best_scores(images: np.ndarray) -> list:
    detector = _mtcnn_detector()
    best = []
    for start in range(0, len(images), _MTCNN_BATCH):
        chunk = list(images[start:start + _MTCNN_BATCH])
        faces = detector.detect_faces(chunk)
        if len(faces) != len(chunk):
            raise RealismError(f"mtcnn returned {len(faces)} results for {len(chunk)} images")
        best.extend(max(face["confidence"] for face in found) if found else None
                    for found in faces)
    return best


def face_detection_rate(images: np.ndarray, detector: str = "dlib",
                        size: int | None = DETECTION_SIZE, upsample: int = 0,
                        adjust_threshold: float = 0.0) -> dict:
    """The fraction of images in which a classical face detector finds a face.

    An offline realism score: real aligned crops are detected (97 % with dlib, 100 % with
    MTCNN, see the module table), noise and flat images never are.

    Args:
      images: uint8[N, H, W, 3] RGB aligned crops.
      detector: ``"dlib"`` (HOG + linear SVM) or ``"mtcnn"`` (the ``deepface`` extra).
      size: images are resized to size x size first (None keeps them as they are).
      upsample: dlib only: how many times dlib doubles the image before detecting.
      adjust_threshold: dlib only: added to the detector's threshold (0 is dlib's default).

    Returns:
      ``{"detector", "rate", "mean_confidence", "detected", "n"}``; ``mean_confidence`` is the
      mean of each detected image's best score (NaN when none is detected): dlib's SVM margin
      (unbounded; more is surer) or MTCNN's probability. When mtcnn is not installed, rate
      and mean_confidence are NaN and ``"unavailable"`` says why (not installed, or not
      importable), instead of an exception: an evaluation run keeps its other scores.

    Raises:
      ValueError: for bad images, an unknown detector, or a bad size or upsample.
    """
    images = _validate_images(images)
    if detector not in DETECTORS:
        raise ValueError(f"detector must be one of {DETECTORS}, got {detector!r}")
    if size is not None and (not isinstance(size, int) or size < 8):
        raise ValueError(f"size must be None or an int >= 8, got {size!r}")
    if not isinstance(upsample, int) or upsample < 0:
        raise ValueError(f"upsample must be an int >= 0, got {upsample!r}")
    result = {"detector": detector, "n": len(images)}
    unavailable = {**result, "rate": float("nan"), "mean_confidence": float("nan"),
                   "detected": 0}
    if detector == "mtcnn" and importlib.util.find_spec("mtcnn") is None:
        return {**unavailable, "unavailable": MTCNN_MISSING}
    if size is not None:
        images = resize_uint8(images, size)
    if detector == "dlib":
        best = _dlib_best_scores(images, upsample, adjust_threshold)
    else:
        try:
            best = _mtcnn_best_scores(images)
        except ImportError as error:  # E.g. TF_USE_LEGACY_KERAS=1 without tf-keras.
            return {**unavailable,
                    "unavailable": f"mtcnn is installed but cannot be imported: {error}"}
    found = [score for score in best if score is not None]
    return {**result, "rate": len(found) / len(best),
            "mean_confidence": float(np.mean(found)) if found else float("nan"),
            "detected": len(found)}
