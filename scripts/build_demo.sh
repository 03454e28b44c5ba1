#!/usr/bin/env bash
# Rebuilds the bundled demo model (vec2face_tf/demo/) from a finished training run:
#   bash scripts/build_demo.sh <model_dir> <faces folder>
# Exports the run's EMA generator (and its image student, when it has one) as SavedModels,
# evaluates the generator on the run's held-out identities of the faces folder, and copies the
# models, the training config and the evaluation report into the package.
#   bash scripts/build_demo.sh --student <model_dir> [<benchmark json>]
# replaces only the demo's student, with the image student of a --stage=student run, and its
# agreement report (benchmarks/student.py's JSON). Only models we trained ourselves belong there.
#   bash scripts/build_demo.sh --refresh
# re-exports the demo's own generator and student, weights unchanged, with this package's
# signatures (for example sample_float / embed_float, which query refinement needs).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${VENV:-.venv}/bin
demo=vec2face_tf/demo
if [ "${1:-}" = --student ]; then
  model_dir=${2:?usage: build_demo.sh --student <model_dir> [<benchmark json>]}
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  "$bin/vec2face-export" --model_dir="$model_dir" --export_base="$work/exports" \
    --model_name=demo --format=student
  rm -rf "$demo/student"
  cp -r "$work/exports/demo/student/1" "$demo/student"
  if [ -n "${3:-}" ]; then cp "$3" "$demo/student_report.json"; fi
  du -sh "$demo/student"
  exit 0
fi
if [ "${1:-}" = --refresh ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  "$bin/python" - "$demo" "$work" <<'PYTHON'
import os, sys
from vec2face_tf.export import savedmodel, student
demo, work = sys.argv[1], sys.argv[2]
generator, metadata = savedmodel.load_exported_generator(f"{demo}/model")
savedmodel.write_savedmodel(generator, metadata, work, "demo", version=1)
if os.path.isdir(f"{demo}/student"):
    model, student_metadata = student.load_exported_student(f"{demo}/student")
    student.write_student(model, student_metadata, work, "demo", version=1)
PYTHON
  rm -rf "$demo/model"
  cp -r "$work/demo/1" "$demo/model"
  if [ -d "$work/demo/student/1" ]; then
    rm -rf "$demo/student"
    cp -r "$work/demo/student/1" "$demo/student"
  fi
  du -sh "$demo/model" "$demo/student"
  exit 0
fi
model_dir=${1:?usage: build_demo.sh <model_dir> <faces folder>}
data=${2:?usage: build_demo.sh <model_dir> <faces folder>}
cache_dir=$("$bin/python" -c "import json,sys; print(json.load(open(sys.argv[1]))['cache_dir'])" "$model_dir/run.json")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$bin/vec2face-export" --model_dir="$model_dir" --export_base="$work/exports" \
  --model_name=demo --format=savedmodel
# The transfer matrix: the same faces scored by SFace (an engine the model never trained
# against) and dlib, each at its own thresholds on the same photos (TARGET_ENGINE= for none).
target=${TARGET_ENGINE-sface,dlib}
"$bin/vec2face-eval" --model="$work/exports/demo/1" --data="$data" --cache_dir="$cache_dir" \
  --out="$work/eval" ${target:+--target_engine="$target"}

rm -rf "$demo/model"
cp -r "$work/exports/demo/1" "$demo/model"
# A student the run loaded with --student_from stays as it is: re-exported from the run, it
# would carry the generator run's config instead of its own distillation's.
if [ -d "$work/exports/demo/student/1" ] && \
    ! grep -q "^student loaded from" "$model_dir/student.done" 2>/dev/null; then
  rm -rf "$demo/student"
  cp -r "$work/exports/demo/student/1" "$demo/student"
fi
cp "$model_dir/config.json" "$demo/config.json"
cp "$work/eval/grid.png" "$work/eval/scores.png" "$demo/"
# The report names the model by where it now lives, not the temporary export.
"$bin/python" - "$work/eval/report.json" "$demo" <<'PYTHON'
import json, pathlib, sys
from vec2face_tf.evaluation import suite
report = json.loads(pathlib.Path(sys.argv[1]).read_text())
report["model"] = "vec2face_tf/demo/model"
demo = pathlib.Path(sys.argv[2])
(demo / "report.json").write_text(json.dumps(report, indent=2) + "\n")
(demo / "report.md").write_text(suite.markdown_report(report))
PYTHON
du -sh "$demo/model"
