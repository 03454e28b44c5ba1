#!/usr/bin/env bash
# The ablation table of docs/results.md (issue 22), rerun with one command:
#   bash scripts/ablation.sh [<out folder>]      (default ~/vec2face-runs/ablation)
# Six variants of the cpu64 recipe, each trained from the same seed on the same data for the
# same minutes (train.time_budget_minutes, stage 1 and stage 2 together), each on a core of
# its own (two side by side on a 2-core CPU), then exported and evaluated on the held-out
# identities: feed-forward on all of them (dlib, and SFace at its own thresholds), then with
# 50 engine queries on the first photo of 50 of them. Last, the table (train/ablation.py).
# On a 2-core CPU with MINUTES=25: about 3 x 28 min of training and 3 x 12 min of evaluation,
# ~2 h in all. Rerunning resumes: a spent budget adds no step, a finished report is kept.
# Environment: FACES, EXTRA (photo folders), CACHE, EXTRA_CACHE (their dlib caches), MINUTES,
# LANES (variants trained at once, default the core count, at most 6), VENV.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=$(mkdir -p "${1:-$HOME/vec2face-runs/ablation}" && cd "${1:-$HOME/vec2face-runs/ablation}" && pwd)
python=${VENV:-$repo/.venv}/bin/python
faces=${FACES:-/work/shared/data/faces-dev}
extra=${EXTRA:-/work/shared/data/faces-extra}
cache=${CACHE:-$out/cache}
extra_cache=${EXTRA_CACHE:-$out/cache-extra}
minutes=${MINUTES:-25}
lanes=${LANES:-$(nproc)}
lanes=$(( lanes > 6 ? 6 : (lanes < 1 ? 1 : lanes) ))
cores=$(( $(nproc) / lanes ))
student=$repo/vec2face_tf/demo/student

# Training reads its sources again while it runs (autograph): a frozen copy of the commit keeps
# edits in the work tree out of a running variant.
code=$out/code
if [ ! -d "$code" ]; then
  mkdir -p "$code.partial"
  git -C "$repo" archive HEAD | tar -x -C "$code.partial"
  git -C "$repo" rev-parse HEAD > "$code.partial/COMMIT"
  mv "$code.partial" "$code"
fi
export PYTHONPATH=$code

# The variants differ only in the flags after their name; everything else is shared. The
# recipe's phases are scaled to the budget: 100 flow steps where a variant uses a flow, 120
# critic-free steps, then the critic ramps in over 40 steps while the metric rises and the
# pixel term decays with tau 100.
common=(--data="$faces" --extra_data="$extra" --cache_dir="$cache" --extra_cache_dir="$extra_cache"
  --workers=1 --stage2_steps=100000 --config=train.time_budget_minutes="$minutes"
  --config=train.checkpoint_every=20 --config=train.monitor_every=0
  --config=train.ema_momentum=0.99 --config=schedule.regression_steps=120
  --config=schedule.critic_ramp=40 --config=schedule.tau=100)
declare -A variants=(
  [1-full]="--student_from=$student --stage1_steps=100"
  [2-no-metric]="--student_from=$student --stage1_steps=0 --config=schedule.metric_max=0"
  [3-constant-weights]="--student_from=$student --stage1_steps=100 --config=schedule.kind=none"
  [4-flow-student]="--stage1_steps=100 --config=student.kind=flow --config=losses.perceptual_weight=0"
  [5-no-identity]="--student_from=$student --stage1_steps=100 --config=schedule.identity_max=0 --config=losses.perceptual_weight=0"
  [6-regression-only]="--student_from=$student --stage1_steps=0 --config=schedule.regression_steps=100000"
)
names=(1-full 2-no-metric 3-constant-weights 4-flow-student 5-no-identity 6-regression-only)

train_variant() {  # <name> <cpu list>
  local name=$1 cpus=$2 tries
  # Lanes share the caches: a run that finds one locked by another lane's check waits and
  # resumes (a kill or a failed start loses no budget: minutes count per checkpoint).
  for tries in 1 2 3 4 5 6 7 8 9 10; do
    # shellcheck disable=SC2086  # the variant's flags are words
    if (cd "$code" && taskset -c "$cpus" "$python" train/train.py "${common[@]}" \
        --model_dir="$out/$name" ${variants[$name]}) >> "$out/$name.train.log" 2>&1; then
      return 0
    fi
    tail -n 3 "$out/$name.train.log" | grep -q "is locked by another prepare run" || return 1
    echo "$(date -u +%FT%TZ) $name: a cache is locked by another lane; retry $tries in 20 s"
    sleep 20
  done
  return 1
}

evaluate_variant() {  # <name> <cpu list>
  local name=$1 cpus=$2
  local model=$out/exports/$name/1
  (
    cd "$code"
    [ -d "$model" ] || taskset -c "$cpus" "$python" export/export.py --model_dir="$out/$name" \
      --export_base="$out/exports" --model_name="$name" --format=savedmodel
    [ -f "$out/$name/eval/report.json" ] || taskset -c "$cpus" "$python" train/evaluate.py \
      --model="$model" --data="$faces" --cache_dir="$cache" --out="$out/$name/eval" \
      --target_engine=sface,dlib --detectors=dlib --workers=0
    # Every variant is refined with the same guide (the demo's image student), so the row
    # measures the generator, not its student.
    [ -f "$out/$name/refined/report.json" ] || taskset -c "$cpus" "$python" train/evaluate.py \
      --model="$model" --data="$faces" --cache_dir="$cache" --out="$out/$name/refined" \
      --target_engine=sface --detectors=dlib --workers=0 --queries=50 \
      --max_probe_identities=50 --student="$student"
  ) >> "$out/$name.eval.log" 2>&1
}

lane() {  # <lane index>: trains its variants, then evaluates them, on its own cores
  local index=$1 cpus mine=()
  cpus=$(( index * cores ))-$(( index * cores + cores - 1 ))
  for i in "${!names[@]}"; do
    if (( i % lanes == index )); then mine+=("${names[$i]}"); fi
  done
  for name in "${mine[@]}"; do
    echo "$(date -u +%FT%TZ) lane $index (cpus $cpus): training $name"
    train_variant "$name" "$cpus"
  done
  for name in "${mine[@]}"; do
    echo "$(date -u +%FT%TZ) lane $index (cpus $cpus): evaluating $name"
    evaluate_variant "$name" "$cpus"
  done
}

started=$(date +%s)
echo "ablation: ${#names[@]} variants, $minutes min each, $lanes at once on $cores core(s) each; code $(cat "$code/COMMIT"); out $out"
pids=()
for (( index = 0; index < lanes; index++ )); do
  lane "$index" & pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
if (( status )); then echo "a lane failed: see $out/*.log" >&2; exit 1; fi
(cd "$code" && "$python" train/ablation.py --runs="$out" --variants="$(IFS=,; echo "${names[*]}")" \
  --out="$out/table")
echo "ablation: done in $(( ($(date +%s) - started) / 60 )) min"
