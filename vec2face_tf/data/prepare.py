"""The prepare step: align every photo once, embed it once, and store both in the cache.

The main process reads and hashes each file (cheap) and decides from the cache index what is
already done; only new content goes to the worker processes, which decode, align and embed.
Each worker builds its own FaceAligner and engine from their specs and runs on one thread, so
``workers=2`` uses both cores of a 2-core machine without oversubscription.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import multiprocessing
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator

import numpy as np

from vec2face_tf.config import CropSpec
from vec2face_tf.data.cache import (
    DEFAULT_CROP,
    DUPLICATE,
    CacheError,
    EmbeddingCache,
    FaceEntry,
    SkipEntry,
    content_hash,
)
from vec2face_tf.data.sources import (
    DEFAULT_MAX_PIXELS,
    UNREADABLE,
    FaceSource,
    decode_image,
    open_source,
)
from vec2face_tf.data.views import VIEWS_TABLE, render_view, view_key, view_params

ENGINE_ERROR = "engine_error"
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                     "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")


@dataclasses.dataclass
class PrepareStats:
    """What one prepare run did.

    Attributes:
      cache_dir: the engine/crop cache folder that was written.
      engine: the engine's name.
      seen: records taken from the source (after ``max_images``).
      embedded: photos aligned and embedded in this run.
      already_cached: records found in the cache, not decoded again.
      skipped: this run's skipped records by reason (decode reasons, ``no_face``,
        ``multiple_faces``, ``duplicate``, ``engine_error``).
      cache_faces: faces in the whole cache after the run.
      cache_skipped: skip records in the whole cache by reason.
      ignored_files: files in the source folder that are not photos by extension or place.
      seconds: wall time of the run, worker start-up included.
      startup_seconds: of which, until the engine was loaded and answering.
      views_embedded: augmented views embedded in this run (``views`` > 0).
      views_cached: views found in the cache, not embedded again.
      views_seconds: of ``seconds``, the time spent on views.
      cache_views: views in the whole cache after the run.
    """

    cache_dir: str
    engine: str
    seen: int = 0
    embedded: int = 0
    already_cached: int = 0
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)
    cache_faces: int = 0
    cache_skipped: dict[str, int] = dataclasses.field(default_factory=dict)
    ignored_files: int = 0
    seconds: float = 0.0
    startup_seconds: float = 0.0
    views_embedded: int = 0
    views_cached: int = 0
    views_seconds: float = 0.0
    cache_views: int = 0

    @property
    def processed(self) -> int:
        """Records that needed work in this run (embedded or skipped)."""
        return self.embedded + sum(self.skipped.values())

    @property
    def images_per_second(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        values.update(processed=self.processed, images_per_second=self.images_per_second)
        return values

    def summary(self) -> str:
        skipped = ", ".join(f"{k}={v}" for k, v in sorted(self.skipped.items())) or "none"
        views = (f"; views: {self.views_embedded} embedded, {self.views_cached} already cached "
                 f"({self.cache_views} in all, {self.views_seconds:.0f} s)"
                 if self.views_embedded or self.views_cached else "")
        return (f"{self.seen} photos: {self.embedded} embedded, {self.already_cached} already "
                f"cached, skipped {skipped}; {self.images_per_second:.1f} images/s; cache "
                f"{self.cache_dir} now holds {self.cache_faces} faces{views}")


@dataclasses.dataclass(frozen=True)
class _Task:
    hash: str
    key: str
    identity: str
    data: bytes


@dataclasses.dataclass(frozen=True)
class _ViewTask:
    hash: str
    key: str
    identity: str
    crop: np.ndarray


# Per-process state of a worker (or of the calling process when workers=0).
_WORKER: dict = {}


def _init_worker(engine_spec: str, engine_options: dict, crop: CropSpec, multiple_faces: str,
                 max_pixels: int, single_thread: bool) -> None:
    if single_thread:
        for variable in _THREAD_VARIABLES:
            os.environ[variable] = "1"
        # Ctrl-C goes to the whole process group; only the parent decides what to save.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        import cv2

        cv2.setNumThreads(1)
    from vec2face_tf.data.alignment import FaceAligner
    from vec2face_tf.engines import get_engine

    _WORKER["aligner"] = FaceAligner(crop, multiple_faces=multiple_faces)
    _WORKER["engine"] = get_engine(engine_spec, **engine_options)
    _WORKER["max_pixels"] = max_pixels


def _describe_engine() -> tuple[str, int]:
    engine = _WORKER["engine"]
    return engine.name, int(engine.dim)


def _process(tasks: list[_Task]) -> list[tuple[_Task, str, np.ndarray | None, np.ndarray | None]]:
    """Decodes, aligns and embeds a chunk; returns (task, reason, crop, vector) per task."""
    from vec2face_tf.data.alignment import OK
    from vec2face_tf.engines import EngineError

    aligner, engine = _WORKER["aligner"], _WORKER["engine"]
    outcomes: list = []
    aligned: list[int] = []
    for task in tasks:
        decoded = decode_image(task.data, _WORKER["max_pixels"])
        if decoded.rgb is None:
            outcomes.append((task, decoded.reason, None, None))
            continue
        result = aligner.align(decoded.rgb)
        if result.reason != OK or result.crop is None:
            outcomes.append((task, result.reason, None, None))
            continue
        aligned.append(len(outcomes))
        outcomes.append((task, "ok", result.crop, None))
    if not aligned:
        return outcomes
    crops = np.stack([outcomes[i][2] for i in aligned])
    try:
        vectors = engine.embed(crops)
    except EngineError:
        # One bad crop must not cost the batch: retry one by one to find it.
        vectors = []
        for crop in crops:
            try:
                vectors.append(engine.embed(crop[None])[0])
            except EngineError:
                vectors.append(None)
    for i, vector in zip(aligned, vectors):
        task, _, crop, _ = outcomes[i]
        outcomes[i] = ((task, "ok", crop, np.asarray(vector, np.float32)) if vector is not None
                       else (task, ENGINE_ERROR, None, None))
    return outcomes


def _embed_views(tasks: list[_ViewTask]) -> list[tuple[_ViewTask, str, np.ndarray | None,
                                                       np.ndarray | None]]:
    """Embeds already rendered views (no decoding or alignment); same outcomes as _process."""
    from vec2face_tf.engines import EngineError

    engine = _WORKER["engine"]
    try:
        vectors = list(engine.embed(np.stack([task.crop for task in tasks])))
    except EngineError:
        vectors = []
        for task in tasks:
            try:
                vectors.append(engine.embed(task.crop[None])[0])
            except EngineError:
                vectors.append(None)
    return [(task, "ok", task.crop, np.asarray(vector, np.float32)) if vector is not None
            else (task, ENGINE_ERROR, None, None) for task, vector in zip(tasks, vectors)]


class _Runner:
    """Runs chunks in worker processes (ordered, bounded) or in the calling process."""

    def __init__(self, workers: int, init_args: tuple):
        self.workers = workers
        self._executor = None
        if workers <= 0:
            _init_worker(*init_args, single_thread=False)
            return
        self._executor = concurrent.futures.ProcessPoolExecutor(
            max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker, initargs=(*init_args, True))
        self._pending: collections.deque = collections.deque()

    def describe(self) -> tuple[str, int]:
        if self._executor is None:
            return _describe_engine()
        # One call per worker, so every process starts and loads its models now, in parallel.
        try:
            answers = [self._executor.submit(_describe_engine) for _ in range(self.workers)]
            return [answer.result() for answer in answers][0]
        except concurrent.futures.process.BrokenProcessPool as error:
            raise RuntimeError(
                "prepare's worker processes died while starting. They are spawned, so a script "
                "that calls prepare() must do so under `if __name__ == '__main__':`; their "
                "own error is printed above") from error

    def run(self, chunks: Iterator[list], function: Callable = _process) -> Iterator[list]:
        """Yields ``function``'s outcomes for each chunk, in submission order."""
        if self._executor is None:
            for chunk in chunks:
                yield function(chunk)
            return
        window = 4 * self.workers  # Bounded, so a huge source is never read all at once.
        for chunk in chunks:
            self._pending.append(self._executor.submit(function, chunk))
            if len(self._pending) >= window:
                yield self._pending.popleft().result()
        while self._pending:
            yield self._pending.popleft().result()

    def close(self) -> None:
        if self._executor is not None:
            for future in self._pending:
                future.cancel()
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None


def prepare(source: FaceSource | str, engine_spec: str, cache_dir: str | os.PathLike,
            crop: CropSpec = DEFAULT_CROP, workers: int = 2, max_images: int = 0,
            batch_size: int = 8, shard_size: int = 256, max_pixels: int = DEFAULT_MAX_PIXELS,
            multiple_faces: str = "largest", engine_options: dict | None = None,
            progress: bool = True, views: int = 0) -> PrepareStats:
    """Aligns and embeds every photo of ``source`` once, writing the embedding cache.

    A rerun resumes: files whose key or content is already in the cache are not decoded
    again, and duplicate files are embedded once (the copies are recorded as ``duplicate``).
    Results are written in shards of ``shard_size``; Ctrl-C writes what is done first.
    Workers are spawned (not forked, which is unsafe after TensorFlow started threads), so a
    script calling this with ``workers > 0`` needs the ``if __name__ == "__main__":`` guard.

    Args:
      source: a FaceSource or a spec for ``open_source`` (folder, ``tfds:lfw``, ...).
      engine_spec: the engine spec for ``get_engine`` (``"dlib"``, ...).
      cache_dir: the cache root.
      crop: the aligned crop to produce.
      workers: worker processes (one thread each); 0 runs in the calling process.
      max_images: take only the first N records of the source (0 = all).
      batch_size: photos per worker task (and per engine batch).
      shard_size: records per cache shard; a killed run loses at most this many.
      max_pixels: photos above this many pixels are skipped as ``too_large``.
      multiple_faces: the aligner's policy, ``"largest"`` or ``"skip"``.
      engine_options: keyword options for ``get_engine``.
      progress: show a tqdm progress bar and print the summary.
      views: also embed this many augmented views of every cached face (``data.views``),
        into the cache's ``views`` table; views already there are not embedded again.

    Returns:
      The run's PrepareStats (also saved, with whole-cache counts, as stats.json).

    Raises:
      SourceError: for an unusable source.
      CacheError: when another run holds the cache's lock, or a cache file cannot be written
        (a full disk); the shards written before stay valid and a rerun resumes after them.
      ValueError: for bad numeric arguments.
    """
    if (workers < 0 or max_images < 0 or batch_size < 1 or shard_size < 1 or max_pixels < 1
            or views < 0):
        raise ValueError(f"need workers >= 0, max_images >= 0, batch_size >= 1, shard_size "
                         f">= 1, max_pixels >= 1, views >= 0; got {workers}, {max_images}, "
                         f"{batch_size}, {shard_size}, {max_pixels}, {views}")
    started = time.perf_counter()
    if isinstance(source, str):
        source = open_source(source)
    runner = _Runner(workers, (engine_spec, dict(engine_options or {}), crop, multiple_faces,
                               max_pixels))
    try:
        engine_name, dim = runner.describe()
        startup_seconds = time.perf_counter() - started
        cache = EmbeddingCache(cache_dir, engine_name, crop, dim=dim)
        with cache.lock():
            cache.write_meta(source_spec=source.spec,
                             source_root=str(source.root.resolve()) if source.root else None)
            stats = PrepareStats(cache_dir=str(cache.directory), engine=engine_name,
                                 ignored_files=len(source.ignored_files()),
                                 startup_seconds=startup_seconds)
            _run(source, cache, runner, stats, max_images, batch_size, shard_size, progress)
            if views:
                views_started = time.perf_counter()
                view_cache = EmbeddingCache(cache_dir, engine_name, crop, dim=dim,
                                            table=VIEWS_TABLE)
                view_cache.write_meta(source_spec=source.spec)
                _run_views(cache, view_cache, runner, stats, views, batch_size, shard_size,
                           progress)
                stats.views_seconds = time.perf_counter() - views_started
                stats.cache_views = sum(len(shard) for shard in _face_counts(view_cache))
            stats.seconds = time.perf_counter() - started
            stats.cache_skipped = cache.reason_counts()
            stats.cache_faces = sum(len(shard) for shard in _face_counts(cache))
            cache.write_stats({"last_run": stats.to_dict(), "faces": stats.cache_faces,
                               "skipped_by_reason": stats.cache_skipped,
                               "ignored_files": source.ignored_files()})
    finally:
        runner.close()
    if progress:
        print(stats.summary(), file=sys.stderr)
    return stats


def _face_counts(cache: EmbeddingCache) -> Iterator[np.ndarray]:
    for path in cache.shard_paths():
        with np.load(path, allow_pickle=False) as shard:
            yield shard["hashes"]


def _run(source: FaceSource, cache: EmbeddingCache, runner: _Runner, stats: PrepareStats,
         max_images: int, batch_size: int, shard_size: int, progress: bool) -> None:
    from tqdm import tqdm

    face_hashes, skipped_keys = cache.index()
    skipped_content = cache.skipped_content()
    # Content sent to the workers -> copies of it met meanwhile. A copy's reason waits for the
    # original's outcome: a copy of an embedded photo is a duplicate, but a copy of a bad file
    # (two empty files, say) is as bad as the original, as it is on a resumed run.
    in_flight: dict[str, list[tuple[str, str]]] = {}
    faces: list[FaceEntry] = []
    skips: list[SkipEntry] = []
    counts: Counter = Counter()
    total = len(source) if hasattr(source, "__len__") else None
    if total is not None and max_images:
        total = min(total, max_images)
    bar = tqdm(total=total, unit="img", disable=not progress, dynamic_ncols=True)

    def skip(task_hash: str, key: str, identity: str, reason: str) -> None:
        skips.append(SkipEntry(task_hash, key, identity, reason))
        counts[reason] += 1

    write_failed = False

    def flush(force: bool = False) -> None:
        nonlocal write_failed
        if force or len(faces) + len(skips) >= shard_size:
            try:
                cache.write_shard(faces, skips)
            except CacheError:
                write_failed = True
                raise
            faces.clear()
            skips.clear()

    def chunks() -> Iterator[list[_Task]]:
        chunk: list[_Task] = []
        for index, record in enumerate(source.records()):
            if max_images and index >= max_images:
                break
            stats.seen += 1
            if record.key in skipped_keys:
                stats.already_cached += 1
                bar.update()
                continue
            try:
                data = record.read_bytes()
            except OSError:
                skip("", record.key, record.identity, UNREADABLE)
                bar.update()
                continue
            digest = content_hash(data)
            if face_hashes.get(digest) == record.key:
                stats.already_cached += 1
                bar.update()
            elif digest in in_flight:
                in_flight[digest].append((record.key, record.identity))
            elif digest in face_hashes:
                skip(digest, record.key, record.identity, DUPLICATE)
                bar.update()
            elif digest in skipped_content:
                skip(digest, record.key, record.identity, skipped_content[digest])
                bar.update()
            else:
                in_flight[digest] = []
                chunk.append(_Task(digest, record.key, record.identity, data))
                if len(chunk) >= batch_size:
                    yield chunk
                    chunk = []
        if chunk:
            yield chunk

    try:
        for outcomes in runner.run(chunks()):
            for task, reason, crop, vector in outcomes:
                if reason == "ok":
                    faces.append(FaceEntry(task.hash, task.key, task.identity, crop, vector))
                    face_hashes[task.hash] = task.key
                    stats.embedded += 1
                else:
                    skip(task.hash, task.key, task.identity, reason)
                copies = in_flight.pop(task.hash)
                for key, identity in copies:
                    skip(task.hash, key, identity, DUPLICATE if reason == "ok" else reason)
                bar.update(len(copies))
            bar.update(len(outcomes))
            bar.set_postfix(embedded=stats.embedded, skipped=sum(counts.values()))
            flush()
    finally:
        # Also on Ctrl-C: what is finished is saved, so the rerun resumes from here. After a
        # failed write (a full disk) a second try would only bury the first error.
        if not write_failed:
            flush(force=True)
        stats.skipped = dict(sorted(counts.items()))
        bar.close()


def _run_views(cache: EmbeddingCache, view_cache: EmbeddingCache, runner: _Runner,
               stats: PrepareStats, views: int, batch_size: int, shard_size: int,
               progress: bool) -> None:
    """Embeds views 1..``views`` of every face in ``cache`` that ``view_cache`` lacks.

    A view is rendered (cheap) before the cache is asked, because its content hash is its
    key; only views whose hash is new go to the engine. Shards are written as they fill and,
    on Ctrl-C, what is finished is written first, as for photos.
    """
    from tqdm import tqdm

    view_cache._remove_partial_shards()
    done, _ = view_cache.index()
    pending: list[FaceEntry] = []
    failed: Counter = Counter()
    bar = tqdm(total=sum(len(h) for h in _face_counts(cache)) * views, unit="view",
               disable=not progress, dynamic_ncols=True, desc="views")

    def chunks() -> Iterator[list[_ViewTask]]:
        chunk: list[_ViewTask] = []
        for path in cache.shard_paths():  # One shard in memory at a time.
            with np.load(path, allow_pickle=False) as shard:
                tables = {name: shard[name] for name in ("hashes", "keys", "identities",
                                                         "crops")}
            for photo_hash, key, identity, crop in zip(*tables.values()):
                for index in range(1, views + 1):
                    view = render_view(crop, view_params(str(photo_hash), index))
                    digest = content_hash(view.tobytes())
                    if digest in done:
                        stats.views_cached += 1
                        bar.update()
                        continue
                    done[digest] = view_key(str(key), index)
                    chunk.append(_ViewTask(digest, done[digest], str(identity), view))
                    if len(chunk) >= batch_size:
                        yield chunk
                        chunk = []
        if chunk:
            yield chunk

    write_failed = False
    try:
        for outcomes in runner.run(chunks(), _embed_views):
            for task, reason, view, vector in outcomes:
                if reason == "ok":
                    pending.append(FaceEntry(task.hash, task.key, task.identity, view, vector))
                    stats.views_embedded += 1
                else:
                    failed[reason] += 1
            bar.update(len(outcomes))
            bar.set_postfix(embedded=stats.views_embedded)
            if len(pending) >= shard_size:
                write_failed = True
                view_cache.write_shard(pending, [])
                write_failed = False
                pending.clear()
    finally:
        if not write_failed:
            view_cache.write_shard(pending, [])
        bar.close()
        for reason, count in failed.items():
            stats.skipped[f"view_{reason}"] = count
