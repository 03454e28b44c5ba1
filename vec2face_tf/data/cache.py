"""The embedding cache: aligned crops and engine vectors, keyed by photo content.

Layout: ``<cache_dir>/<engine slug>/<CropSpec.key>/`` holds ``meta.json`` (engine name, dim,
crop spec), ``stats.json`` (skip counts by reason) and ``shard-NNNNN.npz`` files. Each shard
holds two tables:

* faces: ``hashes`` (sha256 hex of the file bytes), ``keys``, ``identities``,
  ``crops`` uint8[n, S, S, 3], ``embeddings`` float32[n, D];
* skips: ``skip_hashes``, ``skip_keys``, ``skip_identities``, ``skip_reasons`` (decode
  failures, no/multiple faces, and ``duplicate`` for a file whose content is already cached).

Strings are fixed-width unicode arrays, so every shard loads with ``allow_pickle=False``.
A shard is written to a temporary file and ``os.replace``d into place: a killed run leaves at
most a ``*.tmp`` file, which is never read and is removed by the next run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import pathlib
import re
from collections import Counter
from collections.abc import Iterable, Iterator

import numpy as np

from vec2face_tf.config import CropSpec
from vec2face_tf.filesystem import exclusive_lock, free_space_text, is_out_of_space

DUPLICATE = "duplicate"
SHARD_PATTERN = "shard-*.npz"
DEFAULT_CROP = CropSpec()  # Frozen, so sharing it as a default is safe.
_FACE_FIELDS = ("hashes", "keys", "identities", "crops", "embeddings")
_SKIP_FIELDS = ("skip_hashes", "skip_keys", "skip_identities", "skip_reasons")


class CacheError(RuntimeError):
    """A cache that is locked, corrupt, or built for another engine or crop."""


def content_hash(data: bytes) -> str:
    """The sha256 hex digest that keys a photo in the cache."""
    return hashlib.sha256(data).hexdigest()


def engine_slug(engine_name: str) -> str:
    """A folder name for an engine: readable part plus a hash, since names may hold ``/``."""
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", engine_name).strip("_")[:40] or "engine"
    return f"{readable}-{hashlib.sha256(engine_name.encode()).hexdigest()[:8]}"


@dataclasses.dataclass
class FaceEntry:
    hash: str
    key: str
    identity: str
    crop: np.ndarray
    embedding: np.ndarray


@dataclasses.dataclass
class SkipEntry:
    hash: str
    key: str
    identity: str
    reason: str


@dataclasses.dataclass
class CacheContents:
    """Everything in a cache, concatenated over shards in shard order."""

    hashes: np.ndarray
    keys: np.ndarray
    identities: np.ndarray
    crops: np.ndarray
    embeddings: np.ndarray
    skip_hashes: np.ndarray
    skip_keys: np.ndarray
    skip_identities: np.ndarray
    skip_reasons: np.ndarray


@dataclasses.dataclass
class VerifyReport:
    """The outcome of ``EmbeddingCache.verify``; ``ok`` is True when no problem was found."""

    shards: int = 0
    faces: int = 0
    skips: int = 0
    checked_files: int = 0
    missing_files: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class EmbeddingCache:
    """One engine's and one crop's cache folder."""

    def __init__(self, cache_dir: str | os.PathLike, engine_name: str,
                 crop: CropSpec = DEFAULT_CROP, dim: int | None = None,
                 table: str | None = None):
        """Opens (without creating) the cache of ``engine_name`` and ``crop``.

        Args:
          cache_dir: the cache root shared by all engines and crops.
          engine_name: ``Engine.name`` of the engine whose vectors are cached.
          crop: the crop spec of the cached crops.
          dim: the engine's vector size; checked against meta.json when both are known.
          table: a named table beside the photos (``"views"``: augmented views of them), in
            a subfolder of the same layout; None is the photos themselves.

        Raises:
          CacheError: when the folder's meta.json names another engine, crop or dim.
        """
        self.root = pathlib.Path(cache_dir)
        self.engine_name = engine_name
        self.crop = crop
        self.directory = self.root / engine_slug(engine_name) / crop.key
        if table is not None:
            if not re.fullmatch(r"[a-z][a-z0-9_]*", table):
                raise CacheError(f"cache table name {table!r} must be lowercase letters, "
                                 "digits and _")
            self.directory = self.directory / table
        self.table = table
        self.dim = dim
        meta = self.read_meta()
        if meta is not None:
            if meta.get("engine") != engine_name or meta.get("crop") != dataclasses.asdict(crop):
                raise CacheError(f"cache {self.directory} was built for engine "
                                 f"{meta.get('engine')!r}, crop {meta.get('crop')}; not for "
                                 f"{engine_name!r}, {dataclasses.asdict(crop)}")
            if dim is not None and meta.get("dim") != dim:
                raise CacheError(f"cache {self.directory} holds {meta.get('dim')}-D vectors, "
                                 f"engine {engine_name!r} gives {dim}-D")
            self.dim = meta.get("dim")

    # ----- metadata -----
    def read_meta(self) -> dict | None:
        path = self.directory / "meta.json"
        return json.loads(path.read_text()) if path.exists() else None

    def write_meta(self, source_spec: str | None = None, source_root: str | None = None) -> None:
        """Creates the folder and records engine, dim, crop and the source it was built from."""
        self.directory.mkdir(parents=True, exist_ok=True)
        meta = self.read_meta() or {}
        meta.update(engine=self.engine_name, dim=self.dim, crop=dataclasses.asdict(self.crop))
        if source_spec is not None:
            meta["source"] = source_spec
        if source_root is not None:
            meta["source_root"] = source_root
        _atomic_write_text(self.directory / "meta.json", json.dumps(meta, indent=2))

    def write_stats(self, stats: dict) -> pathlib.Path:
        """Writes ``stats.json`` atomically and returns its path."""
        path = self.directory / "stats.json"
        _atomic_write_text(path, json.dumps(stats, indent=2, sort_keys=True))
        return path

    def read_stats(self) -> dict | None:
        path = self.directory / "stats.json"
        return json.loads(path.read_text()) if path.exists() else None

    # ----- locking -----
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Holds an exclusive lock on this cache for a prepare run.

        The lock is an OS file lock (``flock``), so a killed run never leaves it held.

        Raises:
          CacheError: when another process holds it, naming that process.
        """
        path = self.directory / "prepare.lock"

        def refuse(holder: str) -> CacheError:
            return CacheError(f"cache {self.directory} is locked by another prepare run "
                              f"({holder}); wait for it to finish or use another --cache_dir")

        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(exclusive_lock(path, refuse))
            except OSError as error:
                raise write_error(path, error) from error
            self._remove_partial_shards()
            yield

    def _remove_partial_shards(self) -> None:
        for leftover in self.directory.glob("*.tmp"):
            leftover.unlink(missing_ok=True)

    # ----- reading -----
    def shard_paths(self) -> list[pathlib.Path]:
        return sorted(self.directory.glob(SHARD_PATTERN))

    def index(self) -> tuple[dict[str, str], dict[str, str]]:
        """Returns (face hash -> key, skip key -> reason) without loading crops.

        Skip records are looked up by key and faces by hash: a resumed run skips a file whose
        key was already skipped, and any file whose content is already embedded.
        """
        face_hashes: dict[str, str] = {}
        skipped: dict[str, str] = {}
        for path in self.shard_paths():
            with np.load(path, allow_pickle=False) as shard:
                face_hashes.update(zip(shard["hashes"].tolist(), shard["keys"].tolist()))
                skipped.update(zip(shard["skip_keys"].tolist(),
                                   shard["skip_reasons"].tolist()))
        return face_hashes, skipped

    def skipped_content(self) -> dict[str, str]:
        """Content hash -> reason for photos skipped for what they contain (not duplicates)."""
        by_hash: dict[str, str] = {}
        for path in self.shard_paths():
            with np.load(path, allow_pickle=False) as shard:
                for digest, reason in zip(shard["skip_hashes"].tolist(),
                                          shard["skip_reasons"].tolist()):
                    if reason != DUPLICATE and digest:
                        by_hash[digest] = reason
        return by_hash

    def load(self) -> CacheContents:
        """Loads every shard.

        Raises:
          CacheError: when the cache is empty or a shard is unreadable.
        """
        paths = self.shard_paths()
        if not paths:
            raise CacheError(f"cache {self.directory} has no shards; run vec2face-prepare with "
                             f"engine {self.engine_name!r} first")
        parts: dict[str, list[np.ndarray]] = {name: [] for name in _FACE_FIELDS + _SKIP_FIELDS}
        for path in paths:
            try:
                with np.load(path, allow_pickle=False) as shard:
                    for name in parts:
                        parts[name].append(shard[name])
            except (OSError, ValueError, KeyError) as error:
                raise CacheError(f"cache shard {path} is unreadable: {error}") from error
        size = self.crop.size
        empty = {"crops": np.zeros((0, size, size, 3), np.uint8),
                 "embeddings": np.zeros((0, self.dim or 0), np.float32)}
        merged = {}
        for name, arrays in parts.items():
            arrays = [a for a in arrays if a.shape[0]]
            merged[name] = (np.concatenate(arrays) if arrays
                            else empty.get(name, np.zeros((0,), dtype="<U1")))
        return CacheContents(**merged)

    def reason_counts(self) -> dict[str, int]:
        """Skip records in the whole cache, counted by reason."""
        counts: Counter = Counter()
        for path in self.shard_paths():
            with np.load(path, allow_pickle=False) as shard:
                counts.update(shard["skip_reasons"].tolist())
        return dict(sorted(counts.items()))

    # ----- writing -----
    def write_shard(self, faces: list[FaceEntry], skips: list[SkipEntry]) -> pathlib.Path | None:
        """Writes one shard atomically; returns its path (None when there is nothing to write).

        Raises:
          CacheError: when a crop or vector has the wrong shape.
        """
        if not faces and not skips:
            return None
        size = self.crop.size
        crops = np.zeros((len(faces), size, size, 3), np.uint8)
        embeddings = np.zeros((len(faces), self.dim or 0), np.float32)
        for row, face in enumerate(faces):
            if face.crop.shape != (size, size, 3) or face.crop.dtype != np.uint8:
                raise CacheError(f"crop of {face.key!r} is {face.crop.dtype}{face.crop.shape}, "
                                 f"expected uint8{(size, size, 3)}")
            if face.embedding.shape != (self.dim,):
                raise CacheError(f"vector of {face.key!r} has shape {face.embedding.shape}, "
                                 f"expected ({self.dim},)")
            crops[row] = face.crop
            embeddings[row] = face.embedding
        arrays = {
            "hashes": _strings([f.hash for f in faces]),
            "keys": _strings([f.key for f in faces]),
            "identities": _strings([f.identity for f in faces]),
            "crops": crops,
            "embeddings": embeddings,
            "skip_hashes": _strings([s.hash for s in skips]),
            "skip_keys": _strings([s.key for s in skips]),
            "skip_identities": _strings([s.identity for s in skips]),
            "skip_reasons": _strings([s.reason for s in skips]),
        }
        self.directory.mkdir(parents=True, exist_ok=True)
        existing = [int(p.stem.split("-")[1]) for p in self.shard_paths()]
        final = self.directory / f"shard-{(max(existing) + 1 if existing else 0):05d}.npz"
        temporary = final.with_name(final.name + f".{os.getpid()}.tmp")
        try:
            with open(temporary, "wb") as handle:
                np.savez(handle, **arrays)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, final)
        except OSError as error:
            temporary.unlink(missing_ok=True)
            raise write_error(final, error, len(faces) + len(skips)) from error
        return final

    # ----- integrity -----
    def verify(self, source_root: str | os.PathLike | None = None) -> VerifyReport:
        """Checks the cache's integrity.

        Checks: every shard loads (without pickle) with consistent table lengths and shapes;
        no content hash is stored twice as a face; vectors are finite and unit length; and,
        where the source folder still exists, each record's stored hash matches its file.

        Args:
          source_root: the folder the keys are relative to; defaults to the one recorded in
            meta.json. Records whose file is gone are counted, not reported as problems.

        Returns:
          A VerifyReport listing every problem found.
        """
        report = VerifyReport()
        if source_root is None:
            source_root = (self.read_meta() or {}).get("source_root")
        root = pathlib.Path(source_root) if source_root else None
        seen: dict[str, str] = {}
        for path in self.shard_paths():
            report.shards += 1
            try:
                with np.load(path, allow_pickle=False) as shard:
                    tables = {name: shard[name] for name in _FACE_FIELDS + _SKIP_FIELDS}
            except Exception as error:  # Any failure to read means the shard is damaged.
                report.problems.append(f"{path.name}: unreadable ({error})")
                continue
            problems = _check_shard_tables(tables, self.crop.size, self.dim)
            report.problems.extend(f"{path.name}: {p}" for p in problems)
            if problems:
                continue
            report.faces += len(tables["hashes"])
            report.skips += len(tables["skip_hashes"])
            for digest, key in zip(tables["hashes"].tolist(), tables["keys"].tolist()):
                if digest in seen:
                    report.problems.append(f"{path.name}: hash {digest[:12]} of {key!r} is "
                                           f"already stored for {seen[digest]!r}")
                seen[digest] = key
            if root is None or not root.is_dir():
                continue
            for digest, key in _hash_key_pairs(tables):
                file = root / key
                if not digest:
                    continue  # A file that could not be read has no hash to compare.
                if not file.is_file():
                    report.missing_files += 1
                    continue
                report.checked_files += 1
                if content_hash(file.read_bytes()) != digest:
                    report.problems.append(f"{key!r} changed on disk since it was cached")
        return report


def _hash_key_pairs(tables: dict[str, np.ndarray]) -> Iterable[tuple[str, str]]:
    yield from zip(tables["hashes"].tolist(), tables["keys"].tolist())
    yield from zip(tables["skip_hashes"].tolist(), tables["skip_keys"].tolist())


def _check_shard_tables(tables: dict[str, np.ndarray], size: int, dim: int | None) -> list[str]:
    problems = []
    count = len(tables["hashes"])
    for name in ("keys", "identities", "crops", "embeddings"):
        if len(tables[name]) != count:
            problems.append(f"table {name} has {len(tables[name])} rows, hashes has {count}")
    skip_count = len(tables["skip_hashes"])
    for name in _SKIP_FIELDS[1:]:
        if len(tables[name]) != skip_count:
            problems.append(f"table {name} has {len(tables[name])} rows, expected {skip_count}")
    if problems:
        return problems
    if count and tables["crops"].shape[1:] != (size, size, 3):
        problems.append(f"crops have shape {tables['crops'].shape[1:]}, expected "
                        f"{(size, size, 3)}")
    embeddings = tables["embeddings"]
    if count and dim is not None and embeddings.shape[1:] != (dim,):
        problems.append(f"vectors have shape {embeddings.shape[1:]}, expected ({dim},)")
    elif count:
        norms = np.linalg.norm(embeddings, axis=1)
        if not np.all(np.isfinite(norms)) or np.max(np.abs(norms - 1)) > 1e-3:
            problems.append("vectors are not all finite unit vectors")
    return problems


def _strings(values: list[str]) -> np.ndarray:
    # Fixed-width unicode ("<U..."), never object arrays, so allow_pickle=False always works.
    return np.asarray(values, dtype=np.str_) if values else np.zeros((0,), dtype="<U1")


def _atomic_write_text(path: pathlib.Path, text: str) -> None:
    temporary = path.with_name(path.name + f".{os.getpid()}.tmp")
    try:
        temporary.write_text(text)
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise write_error(path, error) from error


def write_error(path: pathlib.Path, error: OSError, records: int = 0) -> CacheError:
    """The CacheError for a failed write of ``path``: what failed, why, and what is kept.

    A full disk gets its own wording (with the space left), because it is the common case
    and the fix, freeing space and rerunning, is safe: finished shards are never rewritten.
    """
    what = f"cache file {path.name}" + (f" ({records} records)" if records else "")
    reason = error.strerror or str(error)
    if is_out_of_space(error):
        reason = f"no space left on the device ({free_space_text(path.parent)})"
    return CacheError(f"could not write {what} in {path.parent}: {reason}. The cache's other "
                      "files are intact and no partial file was left; fix this and rerun "
                      "prepare, which resumes where it stopped")
