#!/usr/bin/env bash
# Rebuilds the bundled demo model (vec2face_tf/demo/) from a finished training run:
#   bash scripts/build_demo.sh <model_dir> <faces folder>
# Exports the run's EMA generator as a SavedModel, evaluates it on the run's held-out
# identities of the faces folder, and copies the model, its training config and the
# evaluation report into the package. Only models we trained ourselves belong there.
set -euo pipefail
cd "$(dirname "$0")/.."
model_dir=${1:?usage: build_demo.sh <model_dir> <faces folder>}
data=${2:?usage: build_demo.sh <model_dir> <faces folder>}
bin=${VENV:-.venv}/bin
cache_dir=$("$bin/python" -c "import json,sys; print(json.load(open(sys.argv[1]))['cache_dir'])" "$model_dir/run.json")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$bin/vec2face-export" --model_dir="$model_dir" --export_base="$work/exports" \
  --model_name=demo --format=savedmodel
"$bin/vec2face-eval" --model="$work/exports/demo/1" --data="$data" --cache_dir="$cache_dir" \
  --out="$work/eval"

demo=vec2face_tf/demo
rm -rf "$demo/model"
cp -r "$work/exports/demo/1" "$demo/model"
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
