#!/bin/sh
# The project's test command: set up what the tests need, check lint and types, then run
# the whole suite (unit, hostile input, real wheels from PyPI on the packing side, the real
# Docker engine, network namespaces). Extra arguments go to pytest: scripts/test.sh -k hostile
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
sh "$here/scripts/setup.sh"
cd "$here"
python3 -m ruff check bundler tests bench examples
python3 -m mypy
exec python3 -m pytest "$@"
