"""Bad photos through the real vec2face-prepare binary (issue 7, item 4).

One folder mixes good faces-dev photos with every kind of bad file: truncated JPEGs, empty
files, PNGs with alpha, grey-scale photos, a 10000x10000 PNG, non-images named .jpg/.png,
photos without a face and composites of three faces. The binary must finish, count every
fault under its reason exactly (printed and in stats.json), embed the photos that are valid
(grey and alpha are: sources.decode_image turns grey into RGB and drops alpha), and the
training pipeline over the cache must never yield anything but the good faces.
"""

import dataclasses
import hashlib
import json
import os
import pathlib
import struct
import subprocess
import sys
import time
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("dlib")

BINARY = pathlib.Path(__file__).resolve().parents[2] / "train" / "prepare.py"
HUGE_SIDE = 10_000  # 100 Mpx, over sources.DEFAULT_MAX_PIXELS (40 Mpx).

# What the folder's faults must be counted as, under each --multiple_faces policy.
FAULT_COUNTS = {"corrupt": 2, "empty_file": 2, "no_face": 2, "not_an_image": 2,
                "too_large": 1}
COMPOSITES = 2
GOOD_IDENTITIES, GOOD_PER_IDENTITY = 3, 3


@dataclasses.dataclass
class BadFolder:
    """The injected folder and what each file in it should become.

    Attributes:
      root: the ``<identity>/<photo>`` folder.
      reasons: key -> the skip reason it must get (under ``--multiple_faces=largest``).
      good: keys of plain single-face photos.
      grey: grey copy key -> key of the photo it was made from.
      alpha: RGBA copy key -> key of the photo it was made from.
      composites: composite key -> the three single-face photos it is made of.
      hashes: key -> sha256 of the file's bytes (what the cache stores).
    """

    root: pathlib.Path
    reasons: dict[str, str]
    good: list[str]
    grey: dict[str, str]
    alpha: dict[str, str]
    composites: dict[str, list[pathlib.Path]]
    hashes: dict[str, str]

    @property
    def embedded_by_default(self) -> set[str]:
        return set(self.good) | set(self.grey) | set(self.alpha) | set(self.composites)


def huge_png(side: int) -> bytes:
    """A real, valid ``side`` x ``side`` 8-bit grey PNG (a horizontal ramp), streamed.

    Its rows are identical, so zlib shrinks 100 Mpx to well under a megabyte without the
    pixels ever being in memory at once.
    """

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))

    row = b"\x00" + bytes(x * 255 // (side - 1) for x in range(side))  # filter 0 + pixels
    compressor = zlib.compressobj(6)
    rows_per_block = 100
    blocks = [compressor.compress(row * rows_per_block) for _ in range(side // rows_per_block)]
    blocks.append(compressor.compress(row * (side % rows_per_block)))
    blocks.append(compressor.flush())
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit, grey, no interlace
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(blocks))
            + chunk(b"IEND", b""))


def single_face_photos(faces_dev: pathlib.Path, aligner, identities: int, per_identity: int,
                       skip: int = 0) -> list[list[pathlib.Path]]:
    """The first photos of faces-dev in which dlib finds exactly one face, grouped by person.

    Checking each photo first makes the expected counts exact by construction: a photo where
    the detector finds a second (background) face, or none, is simply not chosen.
    """
    from vec2face_tf.data.sources import decode_image

    chosen: list[list[pathlib.Path]] = []
    folders = [d for d in sorted(faces_dev.iterdir()) if d.is_dir()][skip:]
    for folder in folders:
        photos = [p for p in sorted(folder.glob("*.jpg"))
                  if aligner.align(decode_image(p.read_bytes()).rgb).num_faces == 1]
        if len(photos) >= per_identity:
            chosen.append(photos[:per_identity])
        if len(chosen) == identities:
            return chosen
    pytest.fail(f"faces-dev has fewer than {identities} identities with {per_identity} "
                "single-face photos")


@pytest.fixture(scope="module")
def aligner():
    from vec2face_tf.data.alignment import FaceAligner

    return FaceAligner()


@pytest.fixture(scope="module")
def bad_folder(faces_dev, aligner, tmp_path_factory) -> BadFolder:
    from skimage import data as skimage_data

    root = tmp_path_factory.mktemp("bad_data") / "data"
    good_sets = single_face_photos(faces_dev, aligner, GOOD_IDENTITIES, GOOD_PER_IDENTITY)
    reasons: dict[str, str] = {}
    good: list[str] = []
    for photos in good_sets:
        (root / photos[0].parent.name).mkdir(parents=True)
        for photo in photos:
            (root / photo.parent.name / photo.name).symlink_to(photo)  # Never copied.
            good.append(f"{photo.parent.name}/{photo.name}")

    # Valid photos in unusual formats, beside the photo each was made from.
    first, second = good_sets[0][0], good_sets[1][0]
    grey = {f"{first.parent.name}/grey_jpeg.jpg": first,
            f"{second.parent.name}/grey_png.png": second}
    for key, photo in grey.items():
        Image.open(photo).convert("L").save(root / key)
    alpha = {f"{first.parent.name}/alpha_ramp.png": good_sets[0][1],
             f"{second.parent.name}/alpha_transparent.png": good_sets[1][1]}
    for (key, photo), opacity in zip(alpha.items(), ("ramp", "zero")):
        rgba = Image.open(photo).convert("RGBA")
        width, height = rgba.size
        channel = (np.tile(np.linspace(0, 255, width, dtype=np.uint8), (height, 1))
                   if opacity == "ramp" else np.zeros((height, width), np.uint8))
        rgba.putalpha(Image.fromarray(channel))
        rgba.save(root / key)

    faults = root / "faults"
    faults.mkdir()
    photo_bytes = good_sets[2][0].read_bytes()
    injected = {
        "truncated_third.jpg": ("corrupt", photo_bytes[: len(photo_bytes) // 3]),
        "truncated_no_end_marker.jpg": ("corrupt", photo_bytes[:-2]),
        "zero.jpg": ("empty_file", b""),
        "zero.png": ("empty_file", b""),
        "text.jpg": ("not_an_image", b"this is a text file, not a photo\n" * 20),
        "noise.png": ("not_an_image", np.random.default_rng(0).bytes(4096)),
        "huge.png": ("too_large", huge_png(HUGE_SIDE)),
    }
    for name, (reason, payload) in injected.items():
        (faults / name).write_bytes(payload)
        reasons[f"faults/{name}"] = reason
    Image.fromarray(skimage_data.camera()).save(faults / "camera_no_face.png")
    Image.fromarray(skimage_data.coffee()).save(faults / "coffee_no_face.jpg")
    reasons["faults/camera_no_face.png"] = reasons["faults/coffee_no_face.jpg"] = "no_face"
    (faults / "notes.txt").write_text("not offered as a photo: wrong extension")

    # Three different people side by side, from identities not used above.
    others = single_face_photos(faces_dev, aligner, 3 * COMPOSITES, 1,
                                skip=_after(faces_dev, good_sets))
    (root / "crowd").mkdir()
    composites = {}
    for index, extension in zip(range(COMPOSITES), (".png", ".jpg")):
        people = [group[0] for group in others[3 * index: 3 * index + 3]]
        pixels = np.concatenate([np.asarray(Image.open(p).convert("RGB")) for p in people],
                                axis=1)
        assert aligner.align(pixels).num_faces == 3, "the composite must show three faces"
        key = f"crowd/three_people_{index}{extension}"
        Image.fromarray(pixels).save(root / key, quality=95)
        composites[key] = people

    assert sum(FAULT_COUNTS.values()) == len(reasons)
    hashes = {file.relative_to(root).as_posix(): hashlib.sha256(file.read_bytes()).hexdigest()
              for file in root.rglob("*") if file.is_file() and file.suffix != ".txt"}
    return BadFolder(root, reasons, good, {k: f"{v.parent.name}/{v.name}" for k, v in
                                           grey.items()},
                     {k: f"{v.parent.name}/{v.name}" for k, v in alpha.items()}, composites,
                     hashes)


def _after(faces_dev: pathlib.Path, good_sets: list[list[pathlib.Path]]) -> int:
    """The number of identity folders up to the last one ``good_sets`` used."""
    folders = [d for d in sorted(faces_dev.iterdir()) if d.is_dir()]
    return folders.index(good_sets[-1][0].parent) + 1


def run_prepare(data: pathlib.Path, cache_dir: pathlib.Path, *flags: str
                ) -> tuple[subprocess.CompletedProcess, dict, float]:
    """Runs vec2face-prepare; returns the process, its printed stats JSON and its wall time."""
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, str(BINARY), f"--data={data}", f"--cache_dir={cache_dir}", *flags],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    seconds = time.perf_counter() - started
    assert result.returncode == 0, result.stderr[-3000:]
    printed, _ = json.JSONDecoder().raw_decode(result.stdout[result.stdout.index("{"):])
    return result, printed, seconds


def check_counts(result, printed: dict, expected: dict[str, int], embedded: int,
                 seen: int) -> dict:
    """Checks the printed JSON, the printed summary and stats.json; returns stats.json."""
    assert printed["skipped"] == expected
    assert printed["embedded"] == embedded and printed["seen"] == seen
    assert printed["ignored_files"] == 1  # faults/notes.txt
    summary = ", ".join(f"{reason}={count}" for reason, count in sorted(expected.items()))
    assert f"skipped {summary};" in result.stderr
    assert "OK" in result.stdout.split("verify:")[1].splitlines()[0]
    saved = json.loads((pathlib.Path(printed["cache_dir"]) / "stats.json").read_text())
    assert saved["last_run"]["skipped"] == expected
    assert saved["skipped_by_reason"] == expected and saved["faces"] == embedded
    assert saved["ignored_files"] == ["faults/notes.txt"]
    return saved


@pytest.mark.fault
def test_default_policy_counts_every_fault_and_embeds_only_valid_photos(bad_folder, dlib,
                                                                         aligner, tmp_path,
                                                                         same_person_cosine):
    from vec2face_tf.data.cache import EmbeddingCache

    result, printed, seconds = run_prepare(bad_folder.root, tmp_path / "cache")
    print(f"vec2face-prepare (2 workers, largest) on {printed['seen']} files: {seconds:.1f} s")
    embedded = bad_folder.embedded_by_default
    check_counts(result, printed, FAULT_COUNTS, len(embedded), len(bad_folder.hashes))

    contents = EmbeddingCache(tmp_path / "cache", "dlib").load()
    by_key = {key: row for row, key in enumerate(contents.keys.tolist())}
    assert set(by_key) == embedded
    assert sorted(contents.skip_keys.tolist()) == sorted(bad_folder.reasons)
    assert dict(zip(contents.skip_keys.tolist(), contents.skip_reasons.tolist())) == \
        bad_folder.reasons
    for key, row in by_key.items():
        assert contents.hashes[row] == bad_folder.hashes[key]

    # Alpha is dropped, not blended: the crop and vector are those of the RGB photo itself.
    for key, original in bad_folder.alpha.items():
        np.testing.assert_array_equal(contents.crops[by_key[key]],
                                      contents.crops[by_key[original]])
        np.testing.assert_allclose(contents.embeddings[by_key[key]],
                                   contents.embeddings[by_key[original]], atol=1e-6)
    # Grey becomes grey RGB (three equal channels) of the same person (above dlib's threshold
    # at FMR 1e-3, measured on faces-dev's impostor pairs).
    for key, original in bad_folder.grey.items():
        crop = contents.crops[by_key[key]].astype(int)
        assert np.abs(crop[..., 0] - crop[..., 1]).max() <= 1
        assert np.abs(crop[..., 0] - crop[..., 2]).max() <= 1
        cosine = float(contents.embeddings[by_key[key]] @ contents.embeddings[by_key[original]])
        assert cosine > same_person_cosine, f"{key} is not the same person as {original}: " \
            f"cosine {cosine:.3f}"
    # "largest" keeps one of the three people of a composite, whole: its vector is that of
    # one source photo (the same pixels, so ~0 apart) and clearly not a blend of the others.
    for key, people in bad_folder.composites.items():
        crops = np.stack([aligner.align(np.asarray(Image.open(p).convert("RGB"))).crop
                          for p in people])
        distances = np.sort(np.linalg.norm(
            dlib.embed(crops) - contents.embeddings[by_key[key]], axis=1))
        assert distances[0] < 0.1 and distances[1] > 0.3, f"{key}: distances {distances}"

    check_pipeline_yields_only_good_faces(tmp_path / "cache", bad_folder, embedded)


@pytest.mark.fault
def test_skip_policy_counts_three_face_photos_as_multiple_faces(bad_folder, tmp_path):
    result, printed, seconds = run_prepare(bad_folder.root, tmp_path / "cache", "--workers=0",
                                           "--multiple_faces=skip")
    print(f"vec2face-prepare (in-process, skip) on {printed['seen']} files: {seconds:.1f} s")
    expected = {**FAULT_COUNTS, "multiple_faces": COMPOSITES}
    embedded = bad_folder.embedded_by_default - set(bad_folder.composites)
    check_counts(result, printed, expected, len(embedded), len(bad_folder.hashes))
    check_pipeline_yields_only_good_faces(tmp_path / "cache", bad_folder, embedded)


def check_pipeline_yields_only_good_faces(cache_dir: pathlib.Path, bad_folder: BadFolder,
                                          embedded: set[str], steps: int = 30) -> None:
    """Every sample make_dataset yields is a valid image and vector of an embedded photo."""
    from vec2face_tf.data import pipeline

    faces = pipeline.load_faces(cache_dir, "dlib")
    allowed = {bad_folder.hashes[key] for key in embedded}
    rejected = {bad_folder.hashes[key] for key in bad_folder.hashes if key not in embedded}
    assert set(faces.hashes.tolist()) == allowed and not allowed & rejected
    assert faces.num_identities == GOOD_IDENTITIES + (1 if embedded & set(
        bad_folder.composites) else 0)  # "faults" never becomes an identity.

    resolution, p, k = 32, 2, 3
    reference = pipeline.resize_faces(faces, resolution)
    reference_images = reference.crops.astype(np.float32) / 127.5 - 1.0
    dataset = pipeline.make_dataset(faces, resolution, p, k, seed=3)
    seen_rows: set[int] = set()
    for images, vectors, labels in dataset.take(steps).as_numpy_iterator():
        assert images.shape == (p * k, resolution, resolution, 3) and images.dtype == np.float32
        assert np.all(np.isfinite(images)) and images.min() >= -1.0 and images.max() <= 1.0
        assert np.all(images.std(axis=(1, 2, 3)) > 0.05)  # No blank stand-in for a bad file.
        assert vectors.shape == (p * k, 128) and np.all(np.isfinite(vectors))
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
        for image, vector, label in zip(images, vectors, labels):
            # Each sample is one stored face, whole: its vector, image and label agree. (An
            # alpha copy shares its original's crop and vector, so a match may be either.)
            rows = [row for row in np.flatnonzero(np.all(faces.embeddings == vector, axis=1))
                    if faces.labels[row] == label
                    and np.abs(reference_images[row] - image).max() < 1e-6]
            assert rows and all(faces.hashes[row] in allowed for row in rows)
            seen_rows.update(int(row) for row in rows)
    assert len(seen_rows) > len(faces) // 2  # The check covered most of the cache.


_DECODE_HUGE = """
import json, resource, sys, time
from vec2face_tf.data.sources import decode_image
data = open(sys.argv[1], "rb").read()
small = open(sys.argv[2], "rb").read()
assert decode_image(small).reason == "ok"  # Imports and one normal decode in the baseline.
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
result = decode_image(data)
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"reason": result.reason, "detail": result.detail, "seconds": seconds,
                  "growth_mib": (peak - baseline) / 1024}))
"""


@pytest.mark.fault
def test_a_10000_pixel_square_png_is_refused_from_its_header(bad_folder, tmp_path):
    """Decoding 100 Mpx would take ~1 s and ~1.1 GB (measured); the refusal takes neither."""
    result = subprocess.run(
        [sys.executable, "-c", _DECODE_HUGE, str(bad_folder.root / "faults" / "huge.png"),
         str(bad_folder.root / bad_folder.good[0])], capture_output=True, text=True,
        timeout=120, check=True)
    measured = json.loads(result.stdout)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(bad_folder.root / "faults" / "huge.png") as image:
            assert image.size == (HUGE_SIDE, HUGE_SIDE)  # A real, valid PNG of that size.
    print(f"huge.png refused in {measured['seconds'] * 1000:.2f} ms, peak RSS growth "
          f"{measured['growth_mib']:.1f} MiB")
    assert measured["reason"] == "too_large"
    assert measured["detail"].startswith(f"{HUGE_SIDE}x{HUGE_SIDE} px")
    assert measured["seconds"] < 0.1 and measured["growth_mib"] < 20
