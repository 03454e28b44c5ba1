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
cache_dir=$(.venv/bin/python -c "import json,sys; print(json.load(open(sys.argv[1]))['cache_dir'])" "$model_dir/run.json")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

.venv/bin/vec2face-export --model_dir="$model_dir" --export_base="$work/exports" \
  --model_name=demo --format=savedmodel
.venv/bin/vec2face-eval --model="$work/exports/demo/1" --data="$data" --cache_dir="$cache_dir" \
  --out="$work/eval"

demo=vec2face_tf/demo
rm -rf "$demo/model"
cp -r "$work/exports/demo/1" "$demo/model"
cp "$model_dir/config.json" "$demo/config.json"
cp "$work/eval/report.json" "$work/eval/report.md" "$work/eval/grid.png" "$work/eval/scores.png" "$demo/"
du -sh "$demo/model"
