"""Augmented views: a pure function of the photo, cached by content, embedded once."""

import hashlib
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from vec2face_tf.data.cache import EmbeddingCache
from vec2face_tf.data.prepare import prepare
from vec2face_tf.data.views import (
    VIEWS_TABLE,
    ViewParams,
    render_view,
    view_key,
    view_params,
)

HASH = "ab" * 32


def _crop(seed=0, size=150):
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_view_one_is_the_exact_mirror_and_the_others_are_seeded_by_photo_and_index():
    crop = _crop()
    assert view_params(HASH, 1) == ViewParams(mirror=True)
    np.testing.assert_array_equal(render_view(crop, view_params(HASH, 1)), crop[:, ::-1])
    assert view_params(HASH, 2) == view_params(HASH, 2)
    assert view_params(HASH, 2) != view_params(HASH, 3)
    assert view_params(HASH, 2) != view_params("cd" * 32, 2)
    first = render_view(crop, view_params(HASH, 2))
    np.testing.assert_array_equal(first, render_view(crop, view_params(HASH, 2)))
    assert first.shape == crop.shape and first.dtype == np.uint8
    assert np.abs(first.astype(int) - crop).mean() > 5  # a different image


def test_random_views_stay_within_their_stated_ranges():
    draws = [view_params(hashlib.sha256(str(i).encode()).hexdigest(), 2) for i in range(200)]
    assert all(-10 <= d.angle <= 10 and 0.9 <= d.scale <= 1.1 for d in draws)
    assert all(abs(d.shift_x) <= 0.05 and abs(d.shift_y) <= 0.05 for d in draws)
    assert all(0.8 <= d.contrast <= 1.2 and 0.7 <= d.saturation <= 1.3 for d in draws)
    assert 0.3 < np.mean([d.mirror for d in draws]) < 0.7


def test_colour_jitter_does_what_it_says_on_a_flat_grey_crop():
    grey = np.full((8, 8, 3), 100, np.uint8)
    np.testing.assert_array_equal(render_view(grey, ViewParams(brightness=20.0)), 120)
    # Contrast and saturation act on deviations, which a flat grey crop does not have.
    np.testing.assert_array_equal(render_view(grey, ViewParams(contrast=1.5, saturation=0.5)),
                                  100)
    # A shift of a quarter of the side by reflection keeps the values of a flat crop.
    np.testing.assert_array_equal(render_view(grey, ViewParams(shift_x=0.25)), 100)
    # Saturation 0 turns colour into its grey value (0.299 R + 0.587 G + 0.114 B).
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 200
    np.testing.assert_array_equal(render_view(red, ViewParams(saturation=0.0)), 60)


@pytest.mark.parametrize("args, message", [
    ((HASH, 0), "view index must be an int >= 1"),
    ((HASH, True), "view index must be an int >= 1"),
    (("not-hex", 2), "photo_hash must be a hex digest"),
])
def test_bad_view_arguments_are_refused(args, message):
    with pytest.raises(ValueError, match=message):
        view_params(*args)


def test_render_view_refuses_what_is_not_a_square_uint8_rgb_crop():
    with pytest.raises(ValueError, match="square uint8 RGB crop"):
        render_view(np.zeros((4, 5, 3), np.uint8), ViewParams())
    with pytest.raises(ValueError, match="square uint8 RGB crop"):
        render_view(np.zeros((4, 4, 3), np.float32), ViewParams())


def _link_photos(faces_dev, folder, identities: int, photos: int):
    """Links ``photos`` photos each of every 40th faces-dev identity that has that many."""
    folder.mkdir()
    chosen = [d for d in sorted(faces_dev.iterdir())
              if d.is_dir() and len(list(d.glob("*.jpg"))) >= photos][::40][:identities]
    for identity in chosen:
        (folder / identity.name).mkdir()
        for photo in sorted(identity.glob("*.jpg"))[:photos]:
            (folder / identity.name / photo.name).symlink_to(photo)
    return folder


def _view_keys(cache_dir):
    cache = EmbeddingCache(cache_dir, "dlib", table=VIEWS_TABLE)
    return sorted(cache.load().keys.tolist()) if cache.shard_paths() else []


def test_prepare_views_embeds_each_view_once_and_a_rerun_embeds_nothing(faces_dev, tmp_path,
                                                                        dlib):
    data = _link_photos(faces_dev, tmp_path / "data", 3, 2)
    stats = prepare(str(data), "dlib", tmp_path / "cache", workers=0, views=2, progress=False)
    assert stats.embedded == 6 and stats.views_embedded == 12 and stats.cache_views == 12
    photos = EmbeddingCache(tmp_path / "cache", "dlib").load()
    views = EmbeddingCache(tmp_path / "cache", "dlib", table=VIEWS_TABLE).load()
    assert sorted(views.keys.tolist()) == sorted(
        view_key(key, index) for key in photos.keys.tolist() for index in (1, 2))
    # Each cached vector is the engine's answer for the cached view itself.
    np.testing.assert_allclose(views.embeddings[:4], dlib.embed(views.crops[:4]), atol=1e-5)
    # The mirror is the same person to the engine; dlib's vector barely moves.
    by_key = dict(zip(views.keys.tolist(), views.embeddings))
    mirror_cosines = [float(by_key[view_key(key, 1)] @ vector)
                      for key, vector in zip(photos.keys.tolist(), photos.embeddings)]
    assert min(mirror_cosines) > 0.97  # measured 0.98-0.995 on faces-dev
    again = prepare(str(data), "dlib", tmp_path / "cache", workers=0, views=2, progress=False)
    assert again.views_embedded == 0 and again.views_cached == 12
    more = prepare(str(data), "dlib", tmp_path / "cache", workers=0, views=3, progress=False)
    assert more.views_embedded == 6 and more.views_cached == 12 and more.cache_views == 18
    assert EmbeddingCache(tmp_path / "cache", "dlib", table=VIEWS_TABLE).verify().ok


# The run writes its first shard of views (2 views), announces it in a file and waits there
# for the test's kill -9: the kill lands at the same point on a quiet or a loaded machine.
_KILLABLE_VIEWS = """
import pathlib, sys, time
from vec2face_tf.data import cache as cache_module
from vec2face_tf.data.prepare import prepare
original = cache_module.EmbeddingCache.write_shard
def write_then_wait(self, faces, skips):
    path = original(self, faces, skips)
    if self.table == "views" and faces:
        pathlib.Path(sys.argv[3]).write_text(str(path))
        while True:
            time.sleep(0.01)
    return path
cache_module.EmbeddingCache.write_shard = write_then_wait
prepare(sys.argv[1], "dlib", sys.argv[2], workers=0, batch_size=1, shard_size=2,
        progress=False, views=2)
"""


@pytest.mark.fault
def test_kill_9_while_embedding_views_then_resume_loses_nothing_and_repeats_nothing(
        faces_dev, tmp_path):
    data = _link_photos(faces_dev, tmp_path / "data", 4, 2)
    cache_dir, written = tmp_path / "cache", tmp_path / "written"
    process = subprocess.Popen([sys.executable, "-c", _KILLABLE_VIEWS, str(data),
                                str(cache_dir), str(written)],
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    try:
        deadline = time.monotonic() + 120
        while process.poll() is None and not written.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert written.exists(), "the run never wrote its first shard of views"
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
    before = _view_keys(cache_dir)
    assert len(before) == 2  # one shard of two views, then the kill
    resumed = prepare(str(data), "dlib", cache_dir, workers=0, views=2, progress=False)
    after = _view_keys(cache_dir)
    assert resumed.views_embedded == 14 and resumed.views_cached == 2
    assert len(after) == len(set(after)) == 16  # each view exactly once
    assert EmbeddingCache(cache_dir, "dlib", table=VIEWS_TABLE).verify().ok


def test_views_table_name_is_checked(tmp_path):
    from vec2face_tf.data.cache import CacheError

    with pytest.raises(CacheError, match="table name"):
        EmbeddingCache(tmp_path, "dlib", table="../x")
