"""Under CI=true, an importorskip of a missing dependency fails the run instead of skipping
(tests/conftest.py). Runs pytest on two throwaway test files with this repository's conftest."""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

CONFTEST = pathlib.Path(__file__).resolve().parent / "conftest.py"
MISSING = "vec2face_no_such_module"


@pytest.fixture
def project(tmp_path):
    shutil.copy(CONFTEST, tmp_path / "conftest.py")
    (tmp_path / "test_module_level.py").write_text(
        f"import pytest\npytest.importorskip({MISSING!r})\n\ndef test_a():\n    pass\n")
    (tmp_path / "test_in_a_test.py").write_text(
        f"import pytest\n\ndef test_b():\n    pytest.importorskip({MISSING!r})\n\n"
        "def test_c():\n    pass\n")
    return tmp_path


def _pytest(project, ci):
    environment = {key: value for key, value in os.environ.items() if key != "CI"}
    if ci:
        environment["CI"] = "true"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "--rootdir", str(project), "--continue-on-collection-errors",
                           str(project)], capture_output=True, text=True, timeout=120,
                          cwd=project, env=environment)


def test_outside_ci_a_missing_dependency_skips(project):
    done = _pytest(project, ci=False)
    assert done.returncode == 0, done.stdout
    assert "1 passed, 2 skipped" in done.stdout


def test_in_ci_a_missing_dependency_fails(project):
    done = _pytest(project, ci=True)
    assert done.returncode == 1, done.stdout
    assert "1 failed, 1 passed, 1 error" in done.stdout
    assert done.stdout.count("must be installed: this is a failure, not a skip") >= 2
