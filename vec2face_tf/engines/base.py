"""The blackbox engine contract (DESIGN §3) shared by every engine."""

from __future__ import annotations

import abc

import numpy as np


class EngineError(RuntimeError):
    """A face-recognition engine was given bad input, or could not produce features."""


class Engine(abc.ABC):
    """A blackbox face-recognition engine: aligned RGB crops in, unit feature vectors out.

    Subclasses set ``name``, ``dim`` and ``input_size`` and implement ``_embed`` on a batch
    already validated and resized to ``input_size``. Engines are queried only; nothing in
    vec2face_tf ever differentiates through one.
    """

    name: str
    dim: int
    input_size: int

    def embed(self, images: np.ndarray) -> np.ndarray:
        """Embeds aligned face crops.

        Args:
          images: uint8[N, H, W, 3] RGB aligned crops (any square size; resized to
            ``input_size``).

        Returns:
          float32[N, dim], each row L2-normalised.

        Raises:
          EngineError: naming the problem, for a wrong dtype/shape, an empty batch, or an
            engine output that is not real numbers of shape [N, dim], not finite, or has
            zero norm.
        """
        images = validate_images(images)
        images = resize_images(images, self.input_size)
        raw = self._embed(images)
        vectors = np.asarray(raw)
        # A cast to float32 would turn bool into 0/1, drop imaginary parts with a warning,
        # and raise a bare ValueError on strings: name them instead.
        if vectors.dtype.kind not in "fiu":
            raise EngineError(f"engine {self.name!r} returned {type(raw).__name__} of dtype "
                              f"{vectors.dtype}, expected real numbers float32[N, {self.dim}]")
        if vectors.shape != (images.shape[0], self.dim):
            raise EngineError(f"engine {self.name!r} returned shape {vectors.shape}, expected "
                              f"{(images.shape[0], self.dim)}")
        return l2_normalize_rows(vectors, what=f"engine {self.name!r} output")

    @abc.abstractmethod
    def _embed(self, images: np.ndarray) -> np.ndarray:
        """Embeds a validated uint8[N, input_size, input_size, 3] batch (not normalised)."""

    def close(self) -> None:  # noqa: B027 - most engines hold nothing to release
        """Releases resources (worker processes, sessions). Safe to call twice."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name!r} dim={self.dim} " \
               f"input_size={self.input_size}>"


def check_options(kind: str, options: dict, known) -> None:
    """Raises EngineError naming any option that engine ``kind`` does not take."""
    unknown = set(options) - set(known)
    if unknown:
        raise EngineError(f"unknown option(s) for engine {kind!r}: {sorted(unknown)}; known: "
                          f"{sorted(known)}")


def validate_images(images: np.ndarray) -> np.ndarray:
    """Checks that ``images`` is a non-empty uint8[N, H, W, 3] batch; raises EngineError."""
    if not isinstance(images, np.ndarray):
        raise EngineError(f"images must be a numpy array, got {type(images).__name__}")
    if images.dtype != np.uint8:
        raise EngineError(f"images must be uint8 RGB aligned crops, got dtype {images.dtype}")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise EngineError(f"images must have shape [N, H, W, 3], got {images.shape}")
    if images.shape[0] == 0:
        raise EngineError("images is an empty batch (N = 0)")
    if images.shape[1] < 8 or images.shape[2] < 8:
        raise EngineError(f"images of {images.shape[1]}x{images.shape[2]} px are too small "
                          "to be face crops")
    return images


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Resizes a uint8 batch to size x size with area/bilinear filtering (no-op if equal)."""
    if images.shape[1] == size and images.shape[2] == size:
        return images
    import cv2

    return np.stack([cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA
                                if image.shape[0] > size else cv2.INTER_LINEAR)
                     for image in images])


def l2_normalize_rows(vectors: np.ndarray, what: str = "vectors") -> np.ndarray:
    """L2-normalises rows to float32; raises EngineError on non-finite values or a zero row.

    Any finite non-zero row of any real dtype and scale gives a unit row: the norm is taken
    in float64 after dividing each row by its largest magnitude, so neither squares that
    overflow (|x| > 1.8e19 in float32) nor squares that underflow (subnormal rows) can turn
    a row into zeros or Inf.
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    if not np.all(np.isfinite(vectors)):
        bad = np.where(~np.all(np.isfinite(vectors), axis=1))[0]
        raise EngineError(f"{what} has NaN or inf in rows {bad[:10].tolist()}")
    largest = np.max(np.abs(vectors), axis=1, keepdims=True)
    if np.any(largest == 0):
        bad = np.where(largest[:, 0] == 0)[0]
        raise EngineError(f"{what} has all-zero rows {bad[:10].tolist()}; they cannot be "
                          "normalised")
    scaled = vectors / largest
    return (scaled / np.linalg.norm(scaled, axis=1, keepdims=True)).astype(np.float32)
