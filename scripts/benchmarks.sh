#!/usr/bin/env bash
# The speed benchmarks, each printing a table and writing benchmarks/results/*.json:
#   train_step.py  ceilings, FLOPs per step from the graph, naive eager vs fit vs each lever,
#                  tf.data headroom, refresh share, profiler top ops (about 10 min on 2 cores);
#   scaling.py     time per step and peak memory against batch and resolution, + PNG (6 min);
#   refinement.py  query refinement's cost: dlib's batched query rate, render and student
#                  gradient time per engine call, seconds per refined template (about 6 min);
#   student.py     the image student's agreement with the engine on held-out people, as an
#                  engine, and against training minutes, beside the flow student at the same
#                  budget (10 min of flow training); needs a student run (STUDENT_RUN, default
#                  ~/vec2face-runs/student64; docs/results.md has the command, ~75 min).
# They prepare a small dlib cache from ../shared/data/faces-dev on first use (1-2 min).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/python benchmarks/train_step.py --out=benchmarks/results/train_step.json
.venv/bin/python benchmarks/scaling.py --out=benchmarks/results/scaling.json \
  --plot=benchmarks/results/scaling.png
.venv/bin/python benchmarks/refinement.py --out=benchmarks/results/refinement.json
student_run=${STUDENT_RUN:-$HOME/vec2face-runs/student64}
if [ -f "$student_run/student.done" ]; then
  .venv/bin/python benchmarks/student.py --run="$student_run" --flow_minutes=10 --size_sweep \
    --out=benchmarks/results/student.json --plot=docs/student_agreement.png
else
  echo "benchmarks/student.py skipped: no finished student run at $student_run (set STUDENT_RUN;" \
    "docs/results.md gives the command that trains one)"
fi
