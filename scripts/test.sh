#!/usr/bin/env bash
# The test command: sets up .venv, then ruff, Bazel's fast unit tests, pytest (the slow tests
# and the files Bazel leaves out; every test when Bazel is not installed) and the
# fault-injection tests. Each test runs once. Tests that need ../shared/data/faces-dev skip
# without it, and fail instead when VEC2FACE_REQUIRE_DATA=1 (CI sets it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh

export VEC2FACE_FACES_DEV=${VEC2FACE_FACES_DEV:-$(cd .. && pwd)/shared/data/faces-dev}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}

# Debian packages the tests use: Bazel, and Chromium (renders vec2face-audit's report).
apt_packages=()
if ! command -v bazel >/dev/null || [ ! -d /usr/share/bazel/rules/java ]; then
  apt_packages+=(bazel-bootstrap bazel-rules-java)
fi
if ! command -v chromium >/dev/null; then
  apt_packages+=(chromium fonts-dejavu-core)
fi
if [ ${#apt_packages[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== apt-get install ${apt_packages[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${apt_packages[@]}" >/dev/null
  elif [ "${CI:-}" = true ]; then
    echo "${apt_packages[*]} are required in CI (apt-get as root installs them)" >&2; exit 1
  else
    echo "not installed: ${apt_packages[*]} (the tests that need them skip, with a reason)"
  fi
fi

echo "== ruff"
.venv/bin/ruff check .

if command -v bazel >/dev/null && [ -d /usr/share/bazel/rules/java ]; then
  echo "== bazel test (fast unit tests)"
  start=$(date +%s)
  PATH="$PWD/.venv/bin:$PATH" bazel --output_user_root="${BAZEL_OUTPUT_ROOT:-$HOME/.cache/vec2face-bazel}" \
    test //:fast_tests --test_output=errors \
    --test_env=VEC2FACE_FACES_DEV="$VEC2FACE_FACES_DEV" \
    --test_env=VEC2FACE_REQUIRE_DATA="${VEC2FACE_REQUIRE_DATA:-0}" \
    --test_env=TF_CPP_MIN_LOG_LEVEL=2 --test_env=HOME="${HOME:-/tmp}"
  echo "bazel fast tests: $(( $(date +%s) - start )) s"
  # They passed: pytest leaves them out (tests/conftest.py) and runs the rest.
  export VEC2FACE_BAZEL_RAN_FAST_TESTS=1
else
  echo "skipping bazel: install Debian's bazel-bootstrap and bazel-rules-java to run it;"
  echo "pytest runs the fast tests instead"
fi

echo "== pytest"
# pytest exits 5 when it collected no test; set -e turns that (like any failure) red.
start=$(date +%s)
.venv/bin/python -m pytest -q --durations=15 -m "not fault"
echo "pytest: $(( $(date +%s) - start )) s"

echo "== pytest -m fault (killed runs, bad data and vectors, full disks, locks)"
start=$(date +%s)
.venv/bin/python -m pytest -q --durations=10 -m fault
echo "fault tests: $(( $(date +%s) - start )) s"
