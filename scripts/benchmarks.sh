#!/usr/bin/env bash
# The speed benchmarks, each printing a table and writing benchmarks/results/*.json:
#   train_step.py  ceilings, FLOPs per step from the graph, naive eager vs fit vs each lever,
#                  tf.data headroom, refresh share, profiler top ops (about 10 min on 2 cores);
#   scaling.py     time per step and peak memory against batch and resolution, + PNG (6 min).
# They prepare a small dlib cache from ../shared/data/faces-dev on first use (1-2 min).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/python benchmarks/train_step.py --out=benchmarks/results/train_step.json
.venv/bin/python benchmarks/scaling.py --out=benchmarks/results/scaling.json \
  --plot=benchmarks/results/scaling.png
