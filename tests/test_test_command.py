"""The test command runs each test once: after Bazel's fast tests, pytest leaves them out."""

import importlib.util
import os
import pathlib
import subprocess
import sys

# By path: other folders have a conftest.py too, and `import conftest` may find theirs.
_spec = importlib.util.spec_from_file_location(
    "vec2face_tests_root_conftest", pathlib.Path(__file__).resolve().parent / "conftest.py")
_root_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_root_conftest)
BAZEL_RAN_FAST_TESTS = _root_conftest.BAZEL_RAN_FAST_TESTS
REPO_ROOT = _root_conftest.REPO_ROOT
files_bazel_leaves_to_pytest = _root_conftest.files_bazel_leaves_to_pytest


def test_the_pytest_only_list_is_read_from_build():
    files = files_bazel_leaves_to_pytest()
    assert "tests/test_disk_full.py" in files and "tests/training/test_kill_resume.py" in files
    assert all((REPO_ROOT / name).is_file() for name in files)


def _collected(path: str, bazel_ran: bool) -> tuple[int, int]:
    environment = {key: value for key, value in os.environ.items()
                   if key != BAZEL_RAN_FAST_TESTS}
    if bazel_ran:
        environment[BAZEL_RAN_FAST_TESTS] = "1"
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                           "-p", "no:cacheprovider", path], capture_output=True, text=True,
                          timeout=300, cwd=REPO_ROOT, env=environment)
    last = done.stdout.strip().splitlines()[-1]
    selected = int(last.split()[0].split("/")[0]) if last[0].isdigit() else 0
    deselected = int(last.split("(")[1].split()[0]) if "deselected" in last else 0
    return selected, deselected


def test_after_bazel_only_slow_fault_and_pytest_only_tests_are_collected():
    # tests/test_config.py: fast tests only, all run under Bazel.
    alone, _ = _collected("tests/test_config.py", bazel_ran=False)
    selected, deselected = _collected("tests/test_config.py", bazel_ran=True)
    assert alone > 5 and selected == 0 and deselected == alone
    # A PYTEST_ONLY file keeps every test.
    assert _collected("tests/test_disk_full.py", bazel_ran=True)[1] == 0
    assert pathlib.Path(REPO_ROOT / "tests/test_disk_full.py").is_file()
