"""Reading and checking what users invert: template vectors (``.npy`` / ``.json``) and photos
(files or ``skimage:<name>`` samples), aligned to a model's crop.

``vec2face-invert``, ``vec2face-eval`` and ``vec2face-audit`` read their inputs here, so a bad
input gets the same named error (``InputError``) whichever command read it. ``metadata`` is
always the model's ``vec2face.json`` (its ``engine``, ``embedding_dim`` and ``crop``).
"""

from __future__ import annotations

import inspect
import json
import os
import pathlib

import numpy as np

from vec2face_tf.export.contract import check_embeddings

SKIMAGE_PREFIX = "skimage:"
VECTOR_SUFFIXES = (".npy", ".json")
# Functions of skimage.data that are not images, or that download every dataset.
_SKIMAGE_NOT_IMAGES = ("download_all", "file_hash", "lbp_frontal_face_cascade_filename",
                       "data_dir")
_NPZ_MAGIC = b"PK\x03\x04"  # an .npz is a zip archive


class InputError(ValueError):
    """A template or photo that cannot be inverted: unreadable, malformed, of another engine
    or size, or a photo with no face."""


def load_vector(path: str | os.PathLike, metadata: dict) -> np.ndarray:
    """One raw template vector from a ``.npy`` or ``.json`` file, checked against the model.

    Args:
      path: ``.npy`` holding real numbers (any float or integer dtype, cast to float32)
        [D] or [1, D]; or ``.json`` holding a list of D numbers or ``{"embedding": [...],
        "engine": "<engine name>"}``.
      metadata: the model's ``vec2face.json``.

    Returns:
      float32[D], as given (not normalised).

    Raises:
      InputError: for a missing or unreadable file, an ``.npy`` of Python objects (never
        unpickled), another engine's vector, a wrong dtype or size, several rows, NaN/Inf,
        an all-zero vector or a norm out of range (see ``check_vector``).
    """
    path = pathlib.Path(path)
    suffix = path.suffix.lower()
    if suffix not in VECTOR_SUFFIXES:
        raise InputError(f"vector file {path} must end in .npy or .json, not "
                          f"{suffix or 'no extension'!r}")
    if not path.exists():
        raise InputError(f"vector file {path} does not exist")
    if not path.is_file():
        raise InputError(f"vector file {path} is not a file")
    if suffix == ".npy":
        values = _read_npy_vector(path, metadata)
    else:
        values, engine = _read_json_vector(path)
        if engine is not None and engine != metadata["engine"]:
            raise InputError(f"{path} holds a vector of engine {engine!r}, but this model "
                              f"inverts {metadata['engine']!r} vectors")
    return check_vector(values, metadata, str(path))


def _read_npy_vector(path: pathlib.Path, metadata: dict) -> np.ndarray:
    """The array of a ``.npy`` file, read only after its header shows real numbers of a
    template's shape.

    The header comes first so that an object array is refused without unpickling anything,
    and a forged shape allocates nothing (``np.load`` asks for 3.6 TiB for a header shape
    of 10^12 values).
    """
    try:
        with path.open("rb") as file:
            if file.read(len(_NPZ_MAGIC)) == _NPZ_MAGIC:
                raise InputError(f"{path} is an .npz archive, not a single .npy array")
            file.seek(0)
            version = np.lib.format.read_magic(file)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(file)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(file)
            else:
                raise InputError(f"{path} is a .npy file of format version "
                                  f"{version[0]}.{version[1]}; save the vector with np.save")
    except InputError:
        raise
    except (OSError, ValueError, EOFError) as error:
        raise InputError(f"cannot read {path} as a .npy array: {error}") from None
    if dtype.hasobject:
        raise InputError(f"{path} holds Python objects (dtype {dtype}), not numbers; it is "
                          "refused without unpickling")
    if dtype.kind not in "fiu":
        raise InputError(f"{path} must hold real numbers, got dtype {dtype}")
    _check_vector_shape(shape, metadata, str(path))
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise InputError(f"cannot read {path} as a .npy array: {error}") from None


def _read_json_vector(path: pathlib.Path) -> tuple[np.ndarray, str | None]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"cannot read {path} as JSON: {error}") from None
    engine = None
    if isinstance(document, dict):
        if "embedding" not in document:
            raise InputError(f"{path} must be a list of numbers or an object with an "
                              f"\"embedding\" list; its keys are {sorted(document)}")
        engine = document.get("engine")
        if engine is not None and not isinstance(engine, str):
            raise InputError(f"{path}: \"engine\" must be an engine name, got {engine!r}")
        document = document["embedding"]
    if not isinstance(document, list):
        raise InputError(f"{path}: the embedding must be a JSON list of numbers, got "
                          f"{type(document).__name__}")
    rows = document if document and all(isinstance(v, list) for v in document) else [document]
    for row in rows:
        for value in row:
            # bool is an int subclass: true/false would silently become 1/0.
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InputError(f"{path}: the embedding must hold only numbers, found "
                                  f"{value!r}")
    try:
        return np.asarray(document, dtype=np.float64), engine
    except OverflowError as error:
        raise InputError(f"{path}: the embedding holds an integer too large for a float "
                          f"({error})") from None
    except ValueError as error:
        raise InputError(f"{path}: the embedding rows have different lengths ({error})") \
            from None


def _check_vector_shape(shape: tuple[int, ...], metadata: dict, source: str) -> None:
    """Raises InputError unless ``shape`` is [D] or [1, D] for the model's D."""
    dim, engine = int(metadata["embedding_dim"]), metadata["engine"]
    if len(shape) == 2 and shape[0] != 1:
        raise InputError(f"{source} holds {shape[0]} vectors; invert one template at a time "
                          f"(a [{dim}] or [1, {dim}] vector)")
    if len(shape) not in (1, 2):
        raise InputError(f"{source} must be a [{dim}] or [1, {dim}] vector, got shape "
                          f"{tuple(shape)}")
    if shape[-1] != dim:
        raise InputError(f"vector has {shape[-1]} values but this model inverts {engine} "
                          f"vectors of D={dim}")


def check_vector(values: np.ndarray, metadata: dict, source: str = "vector") -> np.ndarray:
    """``values`` as float32[D] after the checks the SavedModel would fail less clearly.

    The rules are ``contract.check_embeddings``'s: any real dtype is cast to float32; bool,
    complex, strings and objects are refused, and so are NaN/Inf, an all-zero vector and a
    norm outside [``MIN_EMBEDDING_NORM``, ``MAX_EMBEDDING_NORM``].

    Raises:
      InputError: for a wrong shape or size, several rows, a non-numeric dtype, NaN/Inf,
        an all-zero vector or a norm out of range.
    """
    values = np.asarray(values)
    _check_vector_shape(values.shape, metadata, source)
    try:
        return check_embeddings(values.reshape(1, -1), int(metadata["embedding_dim"]),
                                name=source)[0]
    except ValueError as error:
        raise InputError(str(error)) from None


def load_photo(spec: str | os.PathLike) -> np.ndarray:
    """uint8[H, W, 3] RGB pixels of a photo file, or of ``skimage:<name>``.

    Raises:
      InputError: for a missing, unreadable or corrupt file, or an unknown sample name.
    """
    spec = str(spec)
    if spec.startswith(SKIMAGE_PREFIX):
        return _skimage_photo(spec[len(SKIMAGE_PREFIX):])
    from vec2face_tf.data.sources import EMPTY_FILE, NOT_AN_IMAGE, decode_image

    path = pathlib.Path(spec)
    if not path.exists():
        raise InputError(f"photo {path} does not exist")
    if not path.is_file():
        raise InputError(f"photo {path} is not a file")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise InputError(f"cannot read photo {path}: {error}") from None
    decoded = decode_image(data)
    if decoded.rgb is None:
        # PIL's own message for an unknown format names a BytesIO object, not the file.
        why = {NOT_AN_IMAGE: "not an image format that Pillow reads",
               EMPTY_FILE: "the file is empty"}.get(decoded.reason,
                                                    f"{decoded.reason}: {decoded.detail}")
        raise InputError(f"cannot decode photo {path}: {why}")
    return decoded.rgb


def _skimage_photo(name: str) -> np.ndarray:
    import skimage.data
    import skimage.util

    function = getattr(skimage.data, name, None)
    takes_no_arguments = callable(function) and not any(
        parameter.default is inspect.Parameter.empty
        and parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD)
        for parameter in inspect.signature(function).parameters.values())
    if (name not in skimage.data.__all__ or name in _SKIMAGE_NOT_IMAGES
            or not takes_no_arguments):
        raise InputError(f"{SKIMAGE_PREFIX}{name} is not a scikit-image sample image; the one "
                          f"with a face is {SKIMAGE_PREFIX}astronaut")
    try:
        image = function()
    except Exception as error:  # noqa: BLE001 - some samples download and fail offline
        raise InputError(f"cannot load {SKIMAGE_PREFIX}{name}: {error}") from None
    if not isinstance(image, np.ndarray) or not (
            image.ndim == 2 or (image.ndim == 3 and image.shape[-1] in (3, 4))):
        raise InputError(f"{SKIMAGE_PREFIX}{name} is not a 2-D grey or colour image")
    image = skimage.util.img_as_ubyte(image)
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


def align_photo(photo: np.ndarray, metadata: dict, source: str) -> tuple[np.ndarray, int]:
    """The aligned crop of the largest face in ``photo`` and how many faces were found.

    Raises:
      InputError: when no face is found, or the model's crop spec cannot be produced.
    """
    from vec2face_tf.config import CropSpec
    from vec2face_tf.data.alignment import NO_FACE, FaceAligner
    from vec2face_tf.engines import EngineError

    try:
        crop = CropSpec(**metadata["crop"])
        aligner = FaceAligner(crop, multiple_faces="largest")
        result = aligner.align(photo)
    except (TypeError, ValueError, EngineError) as error:
        raise InputError(f"cannot align {source} to the model's crop {metadata['crop']}: "
                          f"{error}") from None
    if result.reason == NO_FACE:
        raise InputError(f"no face found in {source}")
    return result.crop, result.num_faces


def is_template_folder(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` is ``<identity>/<template>.npy|.json`` (templates, no photos)."""
    path = pathlib.Path(folder)
    if not path.is_dir():
        return False
    files = [item for item in path.glob("*/*") if item.is_file() and
             not item.name.startswith(".")]
    return bool(files) and any(item.suffix.lower() in VECTOR_SUFFIXES for item in files)


def load_template_folder(folder: str | os.PathLike, metadata: dict):
    """Every template of ``<identity>/<template>.npy|.json`` as ``pipeline.Faces``.

    The faces hold no photos (``crops`` is uint8[N, 0, 0, 3]); embeddings are the templates
    scaled to unit length, as engines give them; hashes are the files' SHA-256.

    Raises:
      InputError: for a file that is not a template (a photo among templates, say), or a
        template that ``load_vector`` refuses (another engine's, the wrong size, NaN...):
        the file is named, and nothing is skipped silently.
    """
    import hashlib

    from vec2face_tf.data.pipeline import Faces

    path = pathlib.Path(folder)
    vectors, identities, hashes = [], [], []
    for item in sorted(path.glob("*/*")):
        if not item.is_file() or item.name.startswith("."):
            continue
        if item.suffix.lower() not in VECTOR_SUFFIXES:
            raise InputError(f"{item} is not a template (.npy or .json): a template folder "
                              "holds templates only; give photos and templates as two folders")
        vector = load_vector(item, metadata)
        vectors.append(vector / np.linalg.norm(vector))
        identities.append(item.parent.name)
        hashes.append(hashlib.sha256(item.read_bytes()).hexdigest())
    if not vectors:
        raise InputError(f"{path} holds no <identity>/<template>.npy|.json files")
    names, labels = np.unique(np.array(identities), return_inverse=True)
    return Faces(crops=np.zeros((len(vectors), 0, 0, 3), np.uint8),
                 embeddings=np.stack(vectors).astype(np.float32),
                 labels=labels.astype(np.int32), identity_names=names,
                 hashes=np.array(hashes))
