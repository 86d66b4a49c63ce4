#!/usr/bin/env bash
# Set up .venvs/test and run the test suite. Any failure, and a run that collects no tests, exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup_venv.sh .venvs/test "[test]"
# One torch thread per process: the tests' models are tiny, and on a 2-core machine more threads
# only contend (measured: a tiny-vlm step took 0.12 s with 1 thread, 0.5 s with 2 on a busy machine).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
status=0
python -m pytest -q --timeout=300 -p no:cacheprovider "$@" || status=$?
if [ "$status" -eq 5 ]; then
  echo "scripts/test.sh: pytest collected no tests; that is a failure, not a pass" >&2
fi
exit "$status"
