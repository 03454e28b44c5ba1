r"""Inverts one face template with an exported generator and shows the face.

  vec2face-invert --image=photo.jpg --out=inverted
  vec2face-invert --model=exports/vec2face --image=skimage:astronaut --out=inverted --samples=4
  vec2face-invert --model=exports/vec2face/3 --vector=template.npy --out=inverted

``--model`` is a SavedModel version folder or a model base (its latest version); without it,
the demo model bundled with the package. ``--vector`` is a ``.npy`` float[D] / [1, D], or a
``.json`` list of D numbers or ``{"embedding": [...], "engine": "dlib"}``. Writes
reconstruction.png, side_by_side.png, result.json (and samples.png with --samples) into --out,
and prints the engine cosine and PASS/FAIL at FMR 1e-3.

By default the face is then refined with up to --queries=100 engine queries (stopping once it
passes the threshold at FMR 1e-4): reconstruction.png is the refined face, feed_forward.png
the generator's own, refinement.png the cosine against the queries. This is the attack a
query-limited engine resists; --queries=0 gives the feed-forward face alone.
"""

import sys

from absl import app, flags

_MODEL = flags.DEFINE_string("model", None, "SavedModel version folder or model base (latest "
                             "version); default: the bundled demo model.")
_IMAGE = flags.DEFINE_string("image", None, "Photo to invert, or skimage:<name> (e.g. "
                             "skimage:astronaut).")
_VECTOR = flags.DEFINE_string("vector", None, "Template to invert: .npy or .json of the "
                              "model's engine.")
_OUT = flags.DEFINE_string("out", None, "Output folder (created).")
_SAMPLES = flags.DEFINE_integer("samples", 0, "Also draw this many faces at random noise.",
                                lower_bound=0)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the samples' noise and of the refinement.",
                             lower_bound=0)
_QUERIES = flags.DEFINE_integer(
    "queries", None, "Engine queries that query refinement may spend on the face (0: the "
    "generator's feed-forward face alone). Default: 100.", lower_bound=0)
_STOP_AT = flags.DEFINE_string("stop_at", None, "Stop refining once the face passes: "
                               "fmr=<rate> (the model's threshold + 0.005), cosine=<value>, or "
                               "none. Default: fmr=1e-4.")
_STUDENT = flags.DEFINE_string("student", None, "Student SavedModel that guides refinement "
                               "for free (default: the one exported with the model; 'none' "
                               "for engine queries alone).")
flags.mark_flags_as_required(["out"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from vec2face_tf.evaluation import invert

    try:
        student = _STUDENT.value
        result = invert.invert(
            _MODEL.value, _OUT.value, image=_IMAGE.value, vector=_VECTOR.value,
            samples=_SAMPLES.value, seed=_SEED.value,
            queries=invert.DEFAULT_QUERIES if _QUERIES.value is None else _QUERIES.value,
            stop_at=invert.DEFAULT_STOP_AT if _STOP_AT.value is None else _STOP_AT.value,
            student=False if student == "none" else student)
    except invert.InvertError as error:
        sys.exit(f"error: {error}")
    print(invert.summary(result))


def run():
    app.run(main)


if __name__ == "__main__":
    run()
