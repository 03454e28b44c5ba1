#!/usr/bin/env bash
# The test command: sets up .venv, then ruff, pytest (all tests, slow ones included) and the
# Bazel fast unit tests. Tests that need ../shared/data/faces-dev skip without it, and fail
# instead when VEC2FACE_REQUIRE_DATA=1 (CI sets it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh

export VEC2FACE_FACES_DEV=${VEC2FACE_FACES_DEV:-$(cd .. && pwd)/shared/data/faces-dev}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}

echo "== ruff"
.venv/bin/ruff check .

echo "== pytest"
# pytest exits 5 when it collected no test; set -e turns that (like any failure) red.
.venv/bin/python -m pytest -q --durations=15 -m "not fault"

echo "== pytest -m fault (killed runs, bad data and vectors, full disks, locks)"
start=$(date +%s)
.venv/bin/python -m pytest -q --durations=10 -m fault
echo "fault tests: $(( $(date +%s) - start )) s"

echo "== bazel test (fast unit tests)"
if ! command -v bazel >/dev/null || [ ! -d /usr/share/bazel/rules/java ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      bazel-bootstrap bazel-rules-java >/dev/null
  elif [ "${CI:-}" = true ]; then
    echo "bazel-bootstrap and bazel-rules-java are required in CI" >&2; exit 1
  else
    echo "skipping bazel: install Debian's bazel-bootstrap and bazel-rules-java to run it"
    exit 0
  fi
fi
PATH="$PWD/.venv/bin:$PATH" bazel --output_user_root="${BAZEL_OUTPUT_ROOT:-$HOME/.cache/vec2face-bazel}" \
  test //:fast_tests --test_output=errors \
  --test_env=VEC2FACE_FACES_DEV="$VEC2FACE_FACES_DEV" \
  --test_env=VEC2FACE_REQUIRE_DATA="${VEC2FACE_REQUIRE_DATA:-0}" \
  --test_env=TF_CPP_MIN_LOG_LEVEL=2 --test_env=HOME="${HOME:-/tmp}"
