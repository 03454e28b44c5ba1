r"""Writes the ablation table of variants trained and evaluated by scripts/ablation.sh.

  python train/ablation.py --runs=~/vec2face-runs/ablation \
      --variants=1-full,2-no-metric,6-regression-only --out=~/vec2face-runs/ablation/table

Reads <runs>/<variant>/ (training folder, eval/ and refined/ reports) and
<runs>/exports/<variant>/1, and writes ablation.md (two tables), ablation.json and grid.png
(the same templates' faces, one column per variant) into --out.
"""

import sys

from absl import app, flags

_RUNS = flags.DEFINE_string("runs", None, "Folder of the variants (scripts/ablation.sh's out).")
_VARIANTS = flags.DEFINE_list("variants", None, "Variant names, in table order.")
_OUT = flags.DEFINE_string("out", None, "Folder of ablation.md, ablation.json and grid.png.")
_GRID_FACES = flags.DEFINE_integer("grid_faces", 8, "Templates in the grid (0: no grid).",
                                   lower_bound=0)
_OTHER_ENGINE = flags.DEFINE_string("other_engine", "sface", "Transfer-matrix engine quoted "
                                    "beside the attacked engine.")
flags.mark_flags_as_required(["runs", "variants", "out"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from vec2face_tf.evaluation import ablation, suite

    try:
        result = ablation.write_ablation(_RUNS.value, _VARIANTS.value, _OUT.value,
                                         grid_faces=_GRID_FACES.value,
                                         other_engine=_OTHER_ENGINE.value)
    except (ablation.AblationError, *suite.expected_errors()) as error:
        sys.exit(f"error: {error}")
    print(ablation.table_markdown(result["variants"]))
    print(f"ablation: {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
