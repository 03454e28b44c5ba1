import sys

import numpy as np
import pytest

from vec2face_tf.evaluation import metrics, realism

REAL_CROPS = 12
RESOLUTION = 64  # The default training resolution: what reconstructions look like.


@pytest.fixture(scope="module")
def real_crops(faces_dev) -> np.ndarray:
    """12 aligned faces-dev crops (12 identities) at 64 px, resized as the training data."""
    import tensorflow as tf
    from PIL import Image

    from vec2face_tf.data.alignment import FaceAligner

    aligner = FaceAligner()
    crops = []
    for folder in sorted(d for d in faces_dev.iterdir() if d.is_dir())[::100]:
        photo = sorted(folder.glob("*.jpg"))[0]
        crop = aligner.align(np.asarray(Image.open(photo).convert("RGB"))).crop
        if crop is not None:
            crops.append(crop)
        if len(crops) == REAL_CROPS:
            break
    resized = tf.image.resize(np.stack(crops), (RESOLUTION, RESOLUTION), method="area",
                              antialias=True)
    return tf.cast(tf.round(resized), tf.uint8).numpy()


@pytest.fixture(scope="module")
def fake_images() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    shape = (REAL_CROPS, RESOLUTION, RESOLUTION, 3)
    return {"noise": rng.integers(0, 256, shape, dtype=np.uint8),
            "flat": np.full(shape, 128, np.uint8)}


def test_dlib_detects_real_crops_not_noise(real_crops, fake_images):
    real = realism.face_detection_rate(real_crops)
    assert real["n"] == REAL_CROPS and real["detector"] == "dlib"
    assert real["rate"] >= 0.9 and real["detected"] == round(real["rate"] * REAL_CROPS)
    assert real["mean_confidence"] > 0.5  # dlib's SVM margin; 0 is its threshold.
    for name, images in fake_images.items():
        fake = realism.face_detection_rate(images)
        assert fake["rate"] == 0.0, name
        assert np.isnan(fake["mean_confidence"])
    # Why the default resizes to 100 px: at 64 px the face is below dlib's 80 px HOG window.
    native = realism.face_detection_rate(real_crops, size=None)
    assert native["rate"] <= real["rate"] - 0.3
    upsampled = realism.face_detection_rate(real_crops, size=None, upsample=1)
    assert upsampled["rate"] >= 0.9


def test_mtcnn_detects_real_crops_not_noise(real_crops, fake_images):
    pytest.importorskip("mtcnn", reason="mtcnn is in the optional deepface extra")
    import keras

    real = realism.face_detection_rate(real_crops, detector="mtcnn")
    assert "unavailable" not in real
    assert real["rate"] >= 0.9 and 0.9 < real["mean_confidence"] <= 1.0
    for name, images in fake_images.items():
        assert realism.face_detection_rate(images, detector="mtcnn")["rate"] == 0.0, name
    # mtcnn ran in this process on Keras 3: Keras 2 (tf_keras) never loaded, Keras 3 still
    # builds and runs models.
    assert "tf_keras" not in sys.modules
    layer = keras.layers.Dense(2, kernel_initializer="ones")
    np.testing.assert_allclose(layer(np.ones((1, 3), np.float32)), [[3.0, 3.0]])


def test_missing_mtcnn_is_reported_not_raised(monkeypatch, fake_images):
    real_find_spec = realism.importlib.util.find_spec
    monkeypatch.setattr(realism.importlib.util, "find_spec",
                        lambda name, *args: None if name == "mtcnn" else real_find_spec(name))
    result = realism.face_detection_rate(fake_images["flat"], detector="mtcnn")
    assert result["unavailable"] == "mtcnn not installed (pip install vec2face_tf[deepface])"
    assert result["n"] == REAL_CROPS and result["detected"] == 0 and np.isnan(result["rate"])


def test_face_detection_rate_rejects_bad_input(fake_images):
    with pytest.raises(ValueError, match="detector must be one of"):
        realism.face_detection_rate(fake_images["flat"], detector="haar")
    with pytest.raises(ValueError, match="uint8 RGB, got dtype float32"):
        realism.face_detection_rate(fake_images["flat"].astype(np.float32))
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        realism.face_detection_rate(fake_images["flat"][0])
    with pytest.raises(ValueError, match="upsample"):
        realism.face_detection_rate(fake_images["flat"], upsample=-1)


def test_engine_frechet_distance_against_the_closed_form_of_gaussians():
    # Two Gaussians with known diagonal covariances: the Fréchet distance is
    # ||mu_a - mu_b||^2 + sum_i (sigma_a_i - sigma_b_i)^2, here 0.09 + 0.04 * 16 = 0.73.
    rng = np.random.default_rng(1)
    dim = 16
    mean_a, mean_b = np.zeros(dim), np.r_[0.3, np.zeros(dim - 1)]
    sigma_a, sigma_b = np.full(dim, 0.25), np.full(dim, 0.05)
    closed_form = 0.3 ** 2 + dim * (0.25 - 0.05) ** 2
    sample_a = mean_a + rng.normal(size=(100_000, dim)) * sigma_a
    sample_b = mean_b + rng.normal(size=(100_000, dim)) * sigma_b
    assert realism.engine_frechet_distance(sample_a, sample_b) == pytest.approx(closed_form,
                                                                                rel=0.01)
    assert realism.engine_frechet_distance(sample_a, sample_a) == pytest.approx(0, abs=1e-9)


@pytest.fixture(scope="module")
def random_inception():
    """InceptionV3 with seeded random weights: the FID code path without the download."""
    import keras

    keras.utils.set_random_seed(0)
    return realism.InceptionFeatures(weights=None, batch_size=8)


@pytest.fixture(scope="module")
def smooth_and_noise() -> tuple[np.ndarray, np.ndarray]:
    """8 smooth colour gradients and 8 noise images, 75 x 75 (resized to 299 inside)."""
    rng = np.random.default_rng(2)
    ramp = np.linspace(0, 1, 75)
    smooth = [np.stack([np.add.outer(a * ramp, b * ramp) * 120 + c for a, b, c in
                        rng.uniform(0, 1, (3, 3))], axis=-1) for _ in range(8)]
    smooth = np.clip(np.round(smooth), 0, 255).astype(np.uint8)
    return smooth, rng.integers(0, 256, (8, 75, 75, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def smooth_features(random_inception, smooth_and_noise) -> np.ndarray:
    return random_inception(smooth_and_noise[0])


@pytest.mark.slow  # About 5 s with the network build, on a 2-core CPU.
def test_inception_features_shape_and_determinism(random_inception, smooth_and_noise,
                                                  smooth_features):
    smooth, _ = smooth_and_noise
    assert smooth_features.shape == (8, realism.INCEPTION_FEATURES)
    assert smooth_features.dtype == np.float32
    assert np.all(np.isfinite(smooth_features)) and smooth_features.std() > 0
    assert not np.allclose(smooth_features[0], smooth_features[1])
    # A second call, in another batch (inference batch norm: a feature does not depend on
    # the rest of its batch), gives the same features.
    np.testing.assert_allclose(random_inception(smooth[5:]), smooth_features[5:], rtol=1e-4,
                               atol=1e-7)


@pytest.mark.slow  # About 5 s on a 2-core CPU.
def test_fid_and_kid_paths(random_inception, smooth_and_noise, smooth_features):
    smooth, noise = smooth_and_noise
    different = realism.inception_distances(smooth, noise, extractor=random_inception,
                                            kid_subsets=5)
    assert different["n_a"] == different["n_b"] == 8
    assert different["fid"] > 0 and different["kid_mean"] > 0
    assert different["fid"] == pytest.approx(
        metrics.frechet_distance(smooth_features, random_inception(noise)), rel=1e-6)
    # The same set in another order: FID 0, KID near 0 (the unbiased estimator on one sample
    # against itself is slightly negative: the cross term keeps the diagonal).
    assert metrics.frechet_distance(smooth_features, smooth_features[::-1]) < (
        1e-6 * different["fid"])
    same_kid, _ = metrics.kernel_inception_distance(smooth_features, smooth_features[::-1],
                                                    subsets=5)
    assert abs(same_kid) < different["kid_mean"] / 3


def test_missing_imagenet_weights_give_a_clear_error(monkeypatch):
    from keras.src.applications import inception_v3

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- "
                        "[Errno -2] Name or service not known")

    monkeypatch.setattr(inception_v3.file_utils, "get_file", offline)
    with pytest.raises(realism.RealismError,
                       match=r"(?s)FID/KID need the ImageNet InceptionV3 weights.*"
                             r"Name or service not known.*~/.keras/models/"
                             r"inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5.*"
                             r"face_detection_rate"):
        realism.InceptionFeatures()


# --- sharpness, contrast, SSIM ----------------------------------------------------------------

def _checkerboard(size=8, low=0, high=255):
    board = (np.add.outer(np.arange(size), np.arange(size)) % 2).astype(np.uint8)
    return np.repeat((low + board * (high - low))[None, :, :, None], 3, axis=-1).astype(
        np.uint8)


def test_laplacian_variance_and_contrast_golden_on_a_checkerboard():
    board = _checkerboard()
    # Each interior pixel's Laplacian is 4 x (neighbours - itself) = -+1020, half of each:
    # variance 1020^2 = 1,040,400. Half the pixels 0, half 255: grey std 127.5.
    assert realism.laplacian_variance(board)[0] == pytest.approx(1020.0 ** 2, rel=1e-3)
    assert realism.grey_contrast(board)[0] == pytest.approx(127.5, rel=1e-3)
    flat = np.full((2, 8, 8, 3), 77, np.uint8)
    np.testing.assert_allclose(realism.laplacian_variance(flat), 0.0, atol=1e-9)
    np.testing.assert_allclose(realism.grey_contrast(flat), 0.0, atol=1e-9)


def _blurred(images, sigma):
    import tensorflow as tf

    blurred = tf.image.resize(tf.image.resize(images, (images.shape[1] // sigma,) * 2,
                                              method="area", antialias=True),
                              images.shape[1:3], method="bilinear")
    return tf.cast(tf.round(tf.clip_by_value(blurred, 0, 255)), tf.uint8).numpy()


def test_blur_lowers_sharpness_and_contrast_scaling_is_read_back(real_crops):
    assert realism.sharpness_ratio(real_crops, real_crops) == pytest.approx(1.0)
    blurred = _blurred(real_crops, 4)
    assert realism.sharpness_ratio(blurred, real_crops) < 0.2
    assert realism.sharpness_ratio(_blurred(real_crops, 2), real_crops) > \
        realism.sharpness_ratio(blurred, real_crops)
    # Grey values pulled halfway to each image's mean halve its contrast and quarter its
    # Laplacian variance (both are linear in the pixels), up to uint8 rounding.
    pixels = real_crops.astype(np.float64)
    mean = pixels.mean(axis=(1, 2, 3), keepdims=True)
    halved = np.round(mean + 0.5 * (pixels - mean)).astype(np.uint8)
    assert realism.contrast_ratio(halved, real_crops) == pytest.approx(0.5, abs=0.01)
    assert realism.sharpness_ratio(halved, real_crops) == pytest.approx(0.25, abs=0.02)


def test_ssim_is_one_for_the_original_and_lower_for_a_blur_or_another_face(real_crops):
    assert realism.mean_ssim(real_crops, real_crops) == pytest.approx(1.0, abs=1e-6)
    blurred = realism.mean_ssim(_blurred(real_crops, 4), real_crops)
    shuffled = realism.mean_ssim(np.roll(real_crops, 1, axis=0), real_crops)
    assert shuffled < blurred < 0.95


def test_realism_ratios_reject_mismatched_or_flat_inputs(real_crops):
    with pytest.raises(ValueError, match="one resolution"):
        realism.sharpness_ratio(real_crops[:, :32, :32], real_crops)
    with pytest.raises(ValueError, match="flat"):
        realism.contrast_ratio(real_crops, np.full_like(real_crops, 9))
    with pytest.raises(ValueError, match="same shape"):
        realism.mean_ssim(real_crops[:2], real_crops[:3])
    with pytest.raises(ValueError, match="uint8"):
        realism.laplacian_variance(real_crops.astype(np.float32))
