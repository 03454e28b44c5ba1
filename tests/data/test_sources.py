"""Face sources (identity folders, TFDS) and photo decoding with per-reason failures."""

import io
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from vec2face_tf.data import sources
from vec2face_tf.data.sources import (
    CORRUPT,
    EMPTY_FILE,
    NOT_AN_IMAGE,
    TOO_LARGE,
    FolderSource,
    SourceError,
    decode_image,
    open_source,
)


def encode(array: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format=fmt)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height but which has no pixel data at all."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + header
    pixels = b"IDAT" + b"\x78\x9c"  # The start of a zlib stream, then nothing.
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(header)) + chunk
            + struct.pack(">I", zlib.crc32(chunk)) + struct.pack(">I", 2) + pixels
            + struct.pack(">I", zlib.crc32(pixels)))


def test_folder_source_is_sorted_with_identity_labels(tmp_path):
    for relative in ["bob/b.PNG", "bob/a.jpg", "alice/z.jpeg", "alice/sub/y.webp",
                     "alice/notes.txt", "README.md", "carol/.hidden.jpg"]:
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    source = FolderSource(tmp_path)
    records = list(source.records())
    assert [r.key for r in records] == ["alice/sub/y.webp", "alice/z.jpeg", "bob/a.jpg",
                                       "bob/b.PNG"]
    assert [r.identity for r in records] == ["alice", "alice", "bob", "bob"]
    assert source.ignored_files() == ["README.md", "alice/notes.txt"]
    assert records[2].read_bytes() == b"x"
    assert [r.key for r in FolderSource(tmp_path).records()] == [r.key for r in records]


def test_folder_source_on_faces_dev(faces_dev):
    source = open_source(str(faces_dev))
    assert len(source) == 6459
    first = next(source.records())
    assert first.key.startswith(first.identity + "/") and first.key.endswith(".jpg")


def test_missing_or_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        open_source(str(tmp_path / "nope"))
    (tmp_path / "alice").mkdir()
    (tmp_path / "alice" / "notes.txt").write_text("hi")
    with pytest.raises(SourceError, match="holds no photos"):
        open_source(str(tmp_path))
    with pytest.raises(SourceError, match="non-empty"):
        open_source("")


def test_decode_grey_rgba_and_palette_become_rgb():
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8)
    result = decode_image(encode(grey))
    assert result.reason == "ok" and result.rgb.shape == (8, 8, 3)
    np.testing.assert_array_equal(result.rgb[..., 1], grey)

    rgba = np.zeros((6, 5, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 0
    result = decode_image(encode(rgba))
    assert result.rgb.shape == (6, 5, 3) and np.all(result.rgb[..., 0] == 200)

    sixteen_bit = np.array([[0, 1000], [2000, 4000]], np.uint16)
    result = decode_image(encode(sixteen_bit))
    np.testing.assert_array_equal(result.rgb[..., 0], [[0, 64], [128, 255]])


def test_decode_failures_are_classified():
    photo = encode(np.full((40, 40, 3), 90, np.uint8), fmt="JPEG")
    assert decode_image(b"").reason == EMPTY_FILE
    assert decode_image(b"this is a text file, not a photo").reason == NOT_AN_IMAGE
    assert decode_image(photo[: len(photo) // 2]).reason == CORRUPT
    assert decode_image(photo, max_pixels=1000).reason == TOO_LARGE
    assert decode_image(photo).reason == "ok"


def test_too_large_is_decided_from_the_header_alone():
    # 60,000 x 50,000 px would need 9 GB decoded; the header is enough to refuse it.
    assert decode_image(png_header_only(60_000, 50_000)).reason == TOO_LARGE
    # Just over the cap (below PIL's own bomb limit), decided by our check.
    result = decode_image(png_header_only(8_000, 5_001))
    assert result.reason == TOO_LARGE and result.detail == "8000x5001 px > 40000000"


def test_importing_sources_does_not_import_tfds():
    code = ("import sys, vec2face_tf.data.sources, vec2face_tf.data.prepare; "
            "print('tensorflow_datasets' in sys.modules)")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout
    assert output.strip() == "False"


def test_unsupported_tfds_name():
    with pytest.raises(SourceError, match="unsupported TFDS dataset 'mnist'"):
        open_source("tfds:mnist")


@pytest.fixture
def offline(monkeypatch):
    def no_dns(host, *args, **kwargs):
        raise OSError(f"[Errno -2] Name or service not known: {host}")

    monkeypatch.setattr(sources.socket, "getaddrinfo", no_dns)


def test_tfds_download_offline_fails_fast_with_a_clear_error(tmp_path, offline):
    with pytest.raises(SourceError, match="ndownloader.figshare.com.*cannot be reached"):
        open_source("tfds:lfw", data_dir=str(tmp_path))
    with pytest.raises(SourceError, match="download is disabled"):
        open_source("tfds:celeb_a", data_dir=str(tmp_path), download=False)


def test_tfds_lfw_with_mock_data(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=4):
        records = list(open_source("tfds:lfw", data_dir=str(tmp_path),
                                   check_network=False).records())
    assert [r.key for r in records] == [f"train/{i:07d}" for i in range(4)]
    assert all(isinstance(r.identity, str) and r.identity for r in records)
    decoded = decode_image(records[0].read_bytes())
    assert decoded.reason == "ok" and decoded.rgb.shape == (250, 250, 3)


def test_tfds_celeb_a_uses_its_identity_numbers(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=3):
        records = list(open_source("tfds:celeb_a", data_dir=str(tmp_path),
                                   check_network=False).records())
    assert len(records) == 3
    assert all(r.identity.startswith("celeb_a-") and r.identity[8:].isdigit() for r in records)
    assert decode_image(records[0].read_bytes()).rgb.shape == (218, 178, 3)
