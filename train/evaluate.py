r"""Measures how much identity an exported generator recovers from an engine's templates.

  vec2face-eval --model=exports/vec2face/1 --data=/path/to/faces --engine=dlib --out=eval/
  vec2face-eval --data=../shared/data/faces-dev --out=eval/demo     # the bundled demo model
  vec2face-eval --data=../shared/data/faces-dev --out=eval/demo --target_engine=sface,dlib
  vec2face-eval --model=exports/vec2face --data=templates/ --out=eval/templates

Writes report.json, report.md, grid.png and scores.png into --out (DESIGN §4 protocol).
--data is photos (<identity>/<image>) or the model engine's templates
(<identity>/<template>.npy|.json; thresholds from their own impostor pairs). --target_engine
adds the transfer matrix: every listed engine scores the same faces at its own thresholds.
With --queries=0,25,50,100,200 it adds a row per budget of query refinement (one template per
probe identity; keep it affordable with --max_probe_identities), refinement_grid.png and
refinement.png.
"""

import sys

from absl import app, flags

_MODEL = flags.DEFINE_string("model", None, "Exported SavedModel (version folder or model base; "
                             "default: the bundled demo model).")
_DATA = flags.DEFINE_string("data", None, "Folder <identity>/<image>, or tfds:lfw / tfds:celeb_a.")
_ENGINE = flags.DEFINE_string("engine", None, "Engine (default and required: the model's).")
_TARGET_ENGINE = flags.DEFINE_string("target_engine", None, "Engines that also score the same "
                                     "faces, each at its own thresholds (the transfer matrix), "
                                     "e.g. sface,dlib.")
_OUT = flags.DEFINE_string("out", None, "Report folder.")
_CACHE_DIR = flags.DEFINE_string("cache_dir", None, "Embedding cache (default <out>/cache).")
_WORKERS = flags.DEFINE_integer("workers", 2, "Processes that align and embed.", lower_bound=0)
_MAX_PROBE_IDENTITIES = flags.DEFINE_integer("max_probe_identities", 0, "Evaluate at most this "
                                             "many probe identities (0 = all).", lower_bound=0)
_FID = flags.DEFINE_bool("fid", False, "Also FID/KID (downloads ImageNet InceptionV3 once).")
_DETECTORS = flags.DEFINE_list("detectors", "dlib,mtcnn", "Face detectors for realism.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the random baseline, bootstrap and folds.")
_QUERIES = flags.DEFINE_list("queries", [], "Also refine one template per probe identity with "
                             "each of these budgets of engine queries (e.g. 0,25,50,100,200) "
                             "and report a row per budget.")
_STOP_AT = flags.DEFINE_string("stop_at", "fmr=1e-4", "Refinement stops once a face passes: "
                               "fmr=<rate> (this run's threshold + 0.005), cosine=<value>, or "
                               "none.")
_STUDENT = flags.DEFINE_string("student", None, "Student SavedModel that guides refinement "
                               "(default: the model's; 'none' for engine queries alone).")
flags.mark_flags_as_required(["data", "out"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from vec2face_tf import demo
    from vec2face_tf.evaluation import suite

    try:
        report = suite.evaluate(
            _MODEL.value or demo.model_dir(), _DATA.value, _OUT.value,
            engine_spec=_ENGINE.value, target_engine=_TARGET_ENGINE.value,
            cache_dir=_CACHE_DIR.value, workers=_WORKERS.value,
            max_probe_identities=_MAX_PROBE_IDENTITIES.value, fid=_FID.value,
            detectors=tuple(_DETECTORS.value), seed=_SEED.value, queries=_QUERIES.value,
            stop_at=None if _STOP_AT.value.lower() == "none" else _STOP_AT.value,
            student=False if _STUDENT.value == "none" else _STUDENT.value)
    except suite.expected_errors() as error:
        sys.exit(f"error: {error}")
    print(suite.markdown_report(report))
    print(f"report: {_OUT.value}/report.md (and report.json, grid.png, scores.png)")


def run():
    app.run(main)


if __name__ == "__main__":
    run()
