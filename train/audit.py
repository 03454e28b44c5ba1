r"""Writes one self-contained HTML audit of how much identity a generator leaks.

  vec2face-audit --data=photos --out=audit                 # the bundled demo and its engine
  vec2face-audit --model=exports/vec2face --data=photos --out=audit --max_identities=20
  vec2face-audit --data=photos --out=audit --target_engine=sface,dlib --queries=0,10,50

``--data`` is a folder ``<identity>/<image>`` with at least two photos for some people. The
report (``<out>/report.html``) holds the setup, the thresholds and how they were derived, SAR
against FMR and against engine queries, the transfer matrix, faces, and what the figures do
and do not show; the evaluation's own files (report.json, pictures) are in ``<out>/evaluation``.
"""

import sys

from absl import app, flags

_MODEL = flags.DEFINE_string("model", None, "Exported SavedModel (version folder or model base; "
                             "default: the bundled demo model).")
_DATA = flags.DEFINE_string("data", None, "Folder <identity>/<image>, or tfds:lfw.")
_OUT = flags.DEFINE_string("out", None, "Audit folder (report.html, evaluation/).")
_TARGET_ENGINE = flags.DEFINE_string("target_engine", "sface,dlib", "Engines that verify the "
                                     "same faces (the transfer matrix; the model's is added).")
_QUERIES = flags.DEFINE_string("queries", "0,5,10,25", "Refinement budgets (engine queries per "
                               "template) for SAR against queries; 0 for feed-forward only.")
_MAX_IDENTITIES = flags.DEFINE_integer("max_identities", 0, "Audit at most this many probe "
                                       "identities (0 = all): a quick look.", lower_bound=0)
_CACHE_DIR = flags.DEFINE_string("cache_dir", None, "Embedding cache (default "
                                 "<out>/evaluation/cache).")
_WORKERS = flags.DEFINE_integer("workers", 2, "Processes that align and embed.", lower_bound=0)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the baselines, bootstrap and refinement.")
_STUDENT = flags.DEFINE_string("student", None, "Student SavedModel that guides refinement "
                               "(default: the model's; 'none' for engine queries alone).")
flags.mark_flags_as_required(["data", "out"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from vec2face_tf import demo
    from vec2face_tf.evaluation import audit, suite

    try:
        path = audit.audit(
            _MODEL.value or demo.model_dir(), _DATA.value, _OUT.value,
            target_engine=_TARGET_ENGINE.value, queries=_QUERIES.value,
            max_identities=_MAX_IDENTITIES.value, cache_dir=_CACHE_DIR.value,
            workers=_WORKERS.value, seed=_SEED.value,
            student=False if _STUDENT.value == "none" else _STUDENT.value)
    except (audit.AuditError, *suite.expected_errors()) as error:
        sys.exit(f"error: {error}")
    print(f"audit: {path}")


def run():
    app.run(main)


if __name__ == "__main__":
    run()
