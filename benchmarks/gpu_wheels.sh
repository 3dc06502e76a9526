#!/usr/bin/env bash
# Download, for the device machine's Python 3.12 (x86-64, manylinux), exactly the wheels gpulet
# needs there and its image lacks, into the git-ignored .device-wheels/, and check that they and
# the repository stay under the 64 MiB one device run may send. Which packages, and why those:
# benchmarks/gpu_check_steps/wheels.py (pyproject's dependencies and tests/gpu's, less the
# device image's packages, at the versions installed in this venv).
#
#   benchmarks/gpu_wheels.sh              # PYTHON=path/to/python to use another venv
#   benchmarks/gpu_wheels.sh --dry-run    # only list them
#
# Then the device run (the run tool; about 9.5 of the session's 15 device minutes):
#   carry: [".device-wheels"]   timeout_s: 480   command: the line this script prints last.
# The wheels install with --no-deps into /tmp/site (the device README's way): pip's resolver,
# judging the image's own packages, would stop the whole install on one it thought too old.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
"$PYTHON" benchmarks/gpu_check_steps/wheels.py --dest .device-wheels "$@"
case " $* " in *" --dry-run "*) exit 0 ;; esac
echo
echo "device command (run tool, carry [\".device-wheels\"], timeout_s 480):"
echo 'python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .device-wheels/*.whl && export PYTHONPATH=/tmp/site && PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out $OUT'
