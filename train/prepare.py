r"""Aligns and embeds a face dataset once, into the embedding cache that training reads.

  vec2face-prepare --data=/path/to/faces --cache_dir=/path/to/cache [--engine=dlib]
  vec2face-prepare --data=tfds:lfw --cache_dir=/path/to/cache
  vec2face-prepare --data=/path/to/faces --cache_dir=/path/to/cache --views=2

``--data`` is a folder ``<identity>/<image>`` or ``tfds:lfw`` / ``tfds:celeb_a``. Rerunning
resumes: only photos missing from the cache are processed.
"""

import json
import sys

from absl import app, flags

_DATA = flags.DEFINE_string("data", None, "Folder <identity>/<image>, or tfds:lfw / tfds:celeb_a.")
_ENGINE = flags.DEFINE_string("engine", "dlib", "Engine spec: dlib, deepface:<Model>, "
                              "savedmodel:<dir>, onnx:<file>.")
_CACHE_DIR = flags.DEFINE_string("cache_dir", None, "Root folder of the embedding cache.")
_WORKERS = flags.DEFINE_integer("workers", 2, "Worker processes, one thread each (0 = none).",
                                lower_bound=0)
_MAX_IMAGES = flags.DEFINE_integer("max_images", 0, "Use only the first N photos (0 = all).",
                                   lower_bound=0)
_MULTIPLE_FACES = flags.DEFINE_enum("multiple_faces", "largest", ["largest", "skip"],
                                    "Photos with several faces: align the largest, or skip.")
_TFDS_DATA_DIR = flags.DEFINE_string("tfds_data_dir", None, "TFDS data folder for tfds: data.")
_VIEWS = flags.DEFINE_integer("views", 0, "Also embed N augmented views of every face (mirror, "
                              "then random shift/scale/rotation/colour) for distilling the "
                              "student; a rerun embeds only views not yet cached.",
                              lower_bound=0)
_VERIFY = flags.DEFINE_bool("verify", True, "Check the cache's integrity after the run.")
flags.mark_flags_as_required(["data", "cache_dir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from vec2face_tf.data.cache import CacheError, EmbeddingCache
    from vec2face_tf.data.prepare import prepare
    from vec2face_tf.data.sources import TFDS_PREFIX, SourceError, open_source
    from vec2face_tf.engines import available_engines, parse_spec
    from vec2face_tf.engines.base import EngineError

    try:
        kind, _ = parse_spec(_ENGINE.value)
    except EngineError as error:
        sys.exit(f"error: {error}")
    if kind not in available_engines():
        sys.exit(f"error: unknown engine {_ENGINE.value!r}; known kinds: {available_engines()}")
    options = {}
    if _DATA.value.startswith(TFDS_PREFIX) and _TFDS_DATA_DIR.value:
        options["data_dir"] = _TFDS_DATA_DIR.value
    try:
        source = open_source(_DATA.value, **options)
        stats = prepare(source, _ENGINE.value, _CACHE_DIR.value, workers=_WORKERS.value,
                        max_images=_MAX_IMAGES.value, multiple_faces=_MULTIPLE_FACES.value,
                        views=_VIEWS.value)
    except (SourceError, CacheError, EngineError) as error:
        sys.exit(f"error: {error}")
    print(json.dumps(stats.to_dict(), indent=2, sort_keys=True))
    if _VERIFY.value:
        report = EmbeddingCache(_CACHE_DIR.value, stats.engine).verify()
        print(f"verify: {report.faces} faces, {report.skips} skip records, "
              f"{report.checked_files} files re-hashed, "
              f"{'OK' if report.ok else f'{len(report.problems)} problems'}")
        for problem in report.problems[:20]:
            print(f"  {problem}")
    print(f"cache: {stats.cache_dir} (stats in {stats.cache_dir}/stats.json)")


def run():
    app.run(main)


if __name__ == "__main__":
    run()
