"""Where face photos come from: identity folders and TFDS datasets, plus robust decoding.

A source yields ``FaceRecord``s in a deterministic order. Each record carries a stable key,
the identity name and a way to get the photo's encoded bytes; the bytes are what the cache
hashes, so a renamed or duplicated file is recognised by its content.

Specs accepted by ``open_source``:

* a folder ``<root>/<identity>/<image>`` (jpg/jpeg/png/bmp/webp, any case);
* ``tfds:lfw``: identity = the person's name (the ``label`` feature);
* ``tfds:celeb_a``: identity = ``identity/Identity_No`` (TFDS celeb_a >= 2.1.0 ships the
  official CelebA identity file); a version without that feature labels each photo as its
  own identity (``celeb_a-<index>``), which P x K sampling then samples with replacement.
"""

from __future__ import annotations

import abc
import dataclasses
import io
import os
import pathlib
import socket
import warnings
from collections.abc import Iterator

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# 40 Mpx is several times any real portrait; beyond it a decode risks gigabytes of memory.
DEFAULT_MAX_PIXELS = 40_000_000

# Reasons a photo is skipped before alignment (the aligner adds no_face / multiple_faces).
EMPTY_FILE = "empty_file"
NOT_AN_IMAGE = "not_an_image"
CORRUPT = "corrupt"
TOO_LARGE = "too_large"
UNREADABLE = "unreadable"
DECODE_REASONS = (EMPTY_FILE, NOT_AN_IMAGE, CORRUPT, TOO_LARGE, UNREADABLE)

TFDS_PREFIX = "tfds:"
SUPPORTED_TFDS = ("lfw", "celeb_a")
# Hosts each dataset downloads from; resolving them first turns an offline machine into a
# one-second error instead of ~205 s of urllib3 retries.
_TFDS_DOWNLOAD_HOSTS = {"lfw": ("ndownloader.figshare.com",),
                        "celeb_a": ("drive.google.com",)}


class SourceError(ValueError):
    """A data source that does not exist, is empty, or cannot be read or downloaded."""


@dataclasses.dataclass(frozen=True)
class FaceRecord:
    """One photo of a source.

    Attributes:
      key: stable identifier, the path relative to the source root (or ``<split>/<index>``
        for TFDS).
      identity: the person's name or id.
      path: the file on disk, for folder sources.
      data: the encoded bytes, for sources that are not files (TFDS).
    """

    key: str
    identity: str
    path: pathlib.Path | None = None
    data: bytes | None = None

    def read_bytes(self) -> bytes:
        """Returns the encoded photo. Raises OSError when the file cannot be read."""
        if self.data is not None:
            return self.data
        if self.path is None:
            raise SourceError(f"record {self.key!r} has neither a path nor data")
        return self.path.read_bytes()


class FaceSource(abc.ABC):
    """A deterministic, finite sequence of FaceRecords."""

    spec: str

    @abc.abstractmethod
    def records(self) -> Iterator[FaceRecord]:
        """Yields every record, always in the same order."""

    @property
    def root(self) -> pathlib.Path | None:
        """The folder that record keys are relative to, if the source is a folder."""
        return None

    def ignored_files(self) -> list[str]:
        """Files the source saw but does not offer as photos (wrong extension or place)."""
        return []


class FolderSource(FaceSource):
    """Photos laid out as ``<root>/<identity>/<image>``."""

    def __init__(self, root: str | os.PathLike):
        """Scans the folder.

        Args:
          root: the folder holding one sub-folder per identity.

        Raises:
          SourceError: when ``root`` is missing, not a folder, or holds no photo.
        """
        self._root = pathlib.Path(root)
        self.spec = str(self._root)
        if not self._root.exists():
            raise SourceError(f"data folder {self._root} does not exist")
        if not self._root.is_dir():
            raise SourceError(f"data path {self._root} is not a folder")
        self._records: list[FaceRecord] = []
        self._ignored: list[str] = []
        for entry in sorted(self._root.iterdir()):
            if entry.name.startswith("."):
                continue
            if not entry.is_dir():
                self._ignored.append(entry.name)
                continue
            for file in sorted(entry.rglob("*")):
                if not file.is_file() or file.name.startswith("."):
                    continue
                relative = file.relative_to(self._root).as_posix()
                if file.suffix.lower() in IMAGE_EXTENSIONS:
                    self._records.append(FaceRecord(key=relative, identity=entry.name,
                                                    path=file))
                else:
                    self._ignored.append(relative)
        if not self._records:
            raise SourceError(
                f"data folder {self._root} holds no photos: expected <identity>/<image> with "
                f"extensions {IMAGE_EXTENSIONS}")

    @property
    def root(self) -> pathlib.Path:
        return self._root

    def records(self) -> Iterator[FaceRecord]:
        return iter(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def ignored_files(self) -> list[str]:
        return list(self._ignored)


class TfdsSource(FaceSource):
    """A TFDS face dataset (``lfw`` or ``celeb_a``), read as encoded bytes (no decode)."""

    def __init__(self, name: str, split: str = "train", data_dir: str | None = None,
                 download: bool = True, check_network: bool = True):
        """Prepares the TFDS builder, downloading the data on first use.

        Args:
          name: ``"lfw"`` or ``"celeb_a"``.
          split: the TFDS split (``"train"``, ``"train[:10%]"``, ...).
          data_dir: TFDS data folder (TFDS's default when None).
          download: allow a download when the data is not prepared yet.
          check_network: before a download, resolve the dataset's download hosts, so that an
            offline machine fails in a second instead of after ~205 s of retries.

        Raises:
          SourceError: for an unsupported name, or data that is not prepared and cannot be
            downloaded (no network, download disabled, or a failed download).
        """
        if name not in SUPPORTED_TFDS:
            raise SourceError(f"unsupported TFDS dataset {name!r}; supported: "
                              f"{[TFDS_PREFIX + n for n in SUPPORTED_TFDS]}")
        import tensorflow_datasets as tfds  # Lazy: only tfds: specs pay for the import.

        self.name = name
        self.split = split
        self.spec = f"{TFDS_PREFIX}{name}"
        self._tfds = tfds
        self._builder = tfds.builder(name, data_dir=data_dir)
        if not _tfds_is_prepared(self._builder):
            where = self._builder.data_dir
            if not download:
                raise SourceError(f"TFDS dataset {name!r} is not prepared in {where} and "
                                  "download is disabled; prepare it on a machine with internet "
                                  "access (tfds build) or allow the download")
            if check_network:
                _check_download_hosts(name)
            try:
                self._builder.download_and_prepare()
            except Exception as error:  # Any download/extract failure reads the same to users.
                raise SourceError(f"could not download TFDS dataset {name!r} into {where}: "
                                  f"{type(error).__name__}: {error}") from error

    def records(self) -> Iterator[FaceRecord]:
        tfds = self._tfds
        dataset = self._builder.as_dataset(
            split=self.split, shuffle_files=False,
            decoders={"image": tfds.decode.SkipDecoding()})
        for index, example in enumerate(tfds.as_numpy(dataset)):
            yield FaceRecord(key=f"{self.split}/{index:07d}",
                             identity=self._identity(example, index),
                             data=bytes(example["image"]))

    def _identity(self, example: dict, index: int) -> str:
        if self.name == "lfw":
            label = example["label"]
            return label.decode("utf-8") if isinstance(label, bytes) else str(label)
        identity = example.get("identity")
        if isinstance(identity, dict) and "Identity_No" in identity:
            return f"celeb_a-{int(identity['Identity_No'])}"
        return f"celeb_a-image-{index:07d}"


def _tfds_is_prepared(builder) -> bool:
    try:
        return bool(builder.is_prepared())
    except Exception:  # Older/odd builders: let download_and_prepare decide.
        return False


def _check_download_hosts(name: str) -> None:
    for host in _TFDS_DOWNLOAD_HOSTS.get(name, ()):
        try:
            socket.getaddrinfo(host, 443)
        except OSError as error:
            raise SourceError(
                f"TFDS dataset {name!r} is not prepared and must be downloaded from {host}, "
                f"which cannot be reached ({error}); run once on a machine with internet access "
                "or pass a local folder <identity>/<image> instead") from error


def open_source(spec: str, **options) -> FaceSource:
    """Opens a source from its spec.

    Args:
      spec: a folder path, or ``"tfds:lfw"`` / ``"tfds:celeb_a"``.
      **options: for TFDS, ``split``, ``data_dir``, ``download``, ``check_network``.

    Returns:
      The FaceSource.

    Raises:
      SourceError: for a missing/empty folder, an unknown TFDS name or unusable TFDS data.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise SourceError(f"data spec must be a non-empty string, got {spec!r}")
    if spec.startswith(TFDS_PREFIX):
        return TfdsSource(spec[len(TFDS_PREFIX):], **options)
    if options:
        raise SourceError(f"folder sources take no options, got {sorted(options)}")
    return FolderSource(spec)


@dataclasses.dataclass(frozen=True)
class DecodeResult:
    """A decoded photo (uint8[H, W, 3] RGB) or the reason it could not be decoded."""

    rgb: np.ndarray | None
    reason: str  # "ok" or one of DECODE_REASONS
    detail: str = ""


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodeResult:
    """Decodes encoded photo bytes to RGB, classifying every failure.

    Grey-scale, palette, CMYK and 16-bit photos become RGB; alpha is dropped; EXIF rotation is
    applied. The pixel count is checked from the header, before the pixels are decoded.

    Args:
      data: the encoded file.
      max_pixels: photos with more pixels are skipped as ``too_large``.

    Returns:
      A DecodeResult with ``reason == "ok"`` and ``rgb`` set, or ``rgb=None`` and one of
      ``DECODE_REASONS``.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        return DecodeResult(None, EMPTY_FILE)
    try:
        with warnings.catch_warnings():
            # Our own max_pixels check replaces PIL's bomb warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                return DecodeResult(None, TOO_LARGE, f"{width}x{height} px > {max_pixels}")
            image.load()
            image = ImageOps.exif_transpose(image)
            rgb = _to_rgb(image)
    except Image.DecompressionBombError as error:
        return DecodeResult(None, TOO_LARGE, str(error))
    except UnidentifiedImageError as error:
        return DecodeResult(None, NOT_AN_IMAGE, str(error))
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        return DecodeResult(None, CORRUPT, f"{type(error).__name__}: {error}")
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        return DecodeResult(None, CORRUPT, f"empty image {rgb.shape}")
    return DecodeResult(np.ascontiguousarray(rgb), "ok")


def _to_rgb(image) -> np.ndarray:
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16-bit/float grey: scale the actual range to 8 bits instead of clipping at 255.
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) * (255.0 / (high - low)) if high > low else values * 0
        grey = np.round(scaled).astype(np.uint8)
        return np.stack([grey] * 3, axis=-1)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8)
