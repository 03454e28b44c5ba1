"""Entry point of the Bazel py_test targets: runs pytest on the files given as arguments.

Bazel runs a test file as a script; pytest's fixtures and markers need pytest itself, so each
py_test calls this with its test file.
"""

import sys

import pytest

if __name__ == "__main__":
    sys.exit(pytest.main(sys.argv[1:]))
