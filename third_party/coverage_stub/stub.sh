#!/bin/sh
# Coverage is not collected offline; `bazel test` only needs these targets to exist.
echo "coverage tools are not available offline" >&2
exit 1
