# Sourced by demo.sh and test.sh: create (or reuse) the virtual environment $1 and install amylum into it.
# torch is pinned and installed first so that pip resolves the CPU build (torch==2.13.0), never a
# multi-GB CUDA build pulled in as a dependency of the project.
set -euo pipefail
venv="$1"; extras="${2:-}"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if [ ! -x "$venv/bin/python" ]; then
  "$PYTHON" -m venv "$venv"
fi
# shellcheck disable=SC1091
. "$venv/bin/activate"
python -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
python -m pip install --quiet --disable-pip-version-check -e ".${extras}"
